//! Schedules: the wire shape of `POST /api/schedules`, its validation, and the
//! next-run maths. Pure like the rest of the crate: every function takes `now`.
//!
//! Wall-clock triggers (`daily`, `weekly`, `cron`) are matched on the local civil time
//! of the schedule's time zone, and civil times map back to instants with these rules
//! for daylight-saving changes:
//! - a civil time skipped by a spring-forward gap fires once, at the first instant
//!   after the gap (a 02:30 daily job in New York runs at 03:00 that day);
//! - a civil time repeated by a fall-back fold fires once, at its first occurrence,
//!   when the trigger names fixed times of day (`daily`, `weekly`, `0 1 * * *`,
//!   `0,30 1 * * *`: no `*` in the second, minute and hour fields, Vixie cron's rule); a
//!   trigger with a `*` there (`*/15 * * * *`, `30 * * * *`) fires on both occurrences,
//!   because real time passes twice.
//!
//! `interval` triggers count absolute time from their anchor and ignore the zone.

use std::collections::VecDeque;
use std::str::FromStr;
use std::time::Duration;

use chrono::{LocalResult, NaiveDateTime, Offset, TimeZone, Timelike};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds};
use serde::{Deserialize, Serialize};

pub use chrono::Weekday;

use crate::duration;
use crate::id::JobId;
use crate::spec::{JobSpec, Limits};
use crate::time::{self, Millis, opt_rfc3339, rfc3339};

/// How late a fire may be and still count as on time; older slots are missed and
/// follow the schedule's [`Misfire`] policy.
pub const DEFAULT_MISFIRE_GRACE: Duration = Duration::from_secs(60);
/// `misfire_limit` unless given: the most missed runs `run_all` makes up.
pub const DEFAULT_MISFIRE_LIMIT: u32 = 100;
pub const MAX_MISFIRE_LIMIT: u32 = 10_000;
/// The shortest interval: a schedule is not a busy loop.
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);
/// On-time runs fired in one go (a per-second cron found a few seconds late).
const MAX_ON_TIME: usize = 1000;
/// Larger than any daylight-saving shift (Lord Howe's is 30 minutes, most are an hour).
const MAX_SHIFT_MS: i64 = 3 * 3_600_000;
/// Bounds the walks over slots, so that a pathological trigger cannot spin.
const MAX_WALK: usize = 100_000;
/// Missed slots are counted (for the record) up to this many.
const MAX_COUNTED: u64 = 1000;

/// A schedule as clients send it (DESIGN.md section 6). Only `job` and `trigger` are
/// required.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScheduleSpec {
    /// Generated (UUIDv7) when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The job each fire submits: any job spec but `id` and `run_at`.
    pub job: JobSpec,
    /// An IANA time zone for wall-clock triggers; `UTC` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    pub trigger: Trigger,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub misfire: Option<Misfire>,
    /// With `misfire: run_all`: the most missed runs made up (the latest ones).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub misfire_limit: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overlap: Option<Overlap>,
}

/// When a schedule fires.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Trigger {
    /// Once, at an RFC 3339 time.
    Once { at: String },
    /// Every `every` (a duration such as `6h`), counted from `start_at` (the first
    /// fire) or, without it, from the schedule's creation (first fire one interval
    /// later), so that it does not drift.
    Interval {
        every: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        start_at: Option<String>,
    },
    /// Every day at `hour:minute` in the schedule's time zone.
    Daily {
        hour: u32,
        #[serde(default)]
        minute: u32,
    },
    /// On the given days (`mon` ... `sun`) at `hour:minute`.
    Weekly {
        days: Vec<String>,
        hour: u32,
        #[serde(default)]
        minute: u32,
    },
    /// A cron expression: five fields, or six with seconds first; names such as `MON`
    /// and `JAN`, steps such as `*/15`, and `@daily`-style nicknames.
    Cron { expr: String },
    /// Fires only when triggered by hand.
    #[default]
    Manual,
}

/// What a schedule does about runs it missed (the engine was down).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Misfire {
    /// Drop them and wait for the next time.
    Skip,
    /// One catch-up run for all of them.
    #[default]
    RunOnce,
    /// A run for each, the latest `misfire_limit` of them.
    RunAll,
}

/// What a fire does while the schedule's previous job is still active.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Overlap {
    /// Submit the new job anyway.
    #[default]
    Allow,
    /// Submit nothing; the history and a `schedule.fired` event say why.
    Skip,
    /// Submit the job `awaiting`; it is queued when the jobs before it end.
    Queue,
}

impl Misfire {
    pub fn as_str(self) -> &'static str {
        match self {
            Misfire::Skip => "skip",
            Misfire::RunOnce => "run_once",
            Misfire::RunAll => "run_all",
        }
    }
}

impl Overlap {
    pub fn as_str(self) -> &'static str {
        match self {
            Overlap::Allow => "allow",
            Overlap::Skip => "skip",
            Overlap::Queue => "queue",
        }
    }
}

/// A schedule that failed validation: the field and what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid schedule: {field}: {message}")]
pub struct ScheduleError {
    pub field: String,
    pub message: String,
}

impl ScheduleError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// The job of a schedule's last run, and how it stands.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LastJob {
    pub id: String,
    pub state: Option<crate::State>,
}

/// A stored schedule as clients see it: the spec with its defaults filled in, and its
/// state. Every field is present.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Schedule {
    pub id: String,
    pub job: JobSpec,
    pub timezone: String,
    pub trigger: Trigger,
    pub enabled: bool,
    pub misfire: Misfire,
    pub misfire_limit: u32,
    pub overlap: Overlap,
    /// When it fires next; null when disabled, `manual`, or a `once` that fired.
    #[serde(with = "opt_rfc3339")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub next_run: Option<Millis>,
    /// When it last submitted a job.
    #[serde(with = "opt_rfc3339")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub last_run: Option<Millis>,
    /// Jobs it submitted.
    pub run_count: u64,
    /// The job its last run submitted and that job's state now (`state` null once the
    /// job is gone); null before a first run.
    #[serde(default)]
    pub last_job: Option<LastJob>,
    #[serde(with = "rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Millis,
    #[serde(with = "rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: Millis,
    /// Changes with every write of the schedule (and never repeats, even for a
    /// schedule deleted and created again): a fire computed from an older revision is
    /// refused.
    #[serde(skip)]
    pub rev: u64,
}

impl Schedule {
    /// The spec that would create this schedule again.
    pub fn spec(&self) -> ScheduleSpec {
        ScheduleSpec {
            id: Some(self.id.clone()),
            job: self.job.clone(),
            timezone: Some(self.timezone.clone()),
            trigger: self.trigger.clone(),
            enabled: Some(self.enabled),
            misfire: Some(self.misfire),
            misfire_limit: Some(self.misfire_limit),
            overlap: Some(self.overlap),
        }
    }

    /// The next-run maths of this schedule.
    pub fn plan(&self) -> Result<Plan, ScheduleError> {
        self.spec().plan(self.created_at)
    }
}

impl Trigger {
    pub fn once(at: Millis) -> Self {
        Trigger::Once {
            at: time::to_rfc3339(at),
        }
    }

    /// Every `every`, the first one interval after the schedule is created.
    pub fn every(every: Duration) -> Self {
        Trigger::Interval {
            every: duration::format(every),
            start_at: None,
        }
    }

    /// Every `every`, the first at `start_at`.
    pub fn every_from(every: Duration, start_at: Millis) -> Self {
        Trigger::Interval {
            every: duration::format(every),
            start_at: Some(time::to_rfc3339(start_at)),
        }
    }

    pub fn daily(hour: u32, minute: u32) -> Self {
        Trigger::Daily { hour, minute }
    }

    pub fn weekly(days: &[Weekday], hour: u32, minute: u32) -> Self {
        Trigger::Weekly {
            days: days.iter().map(|d| day_name(*d).to_owned()).collect(),
            hour,
            minute,
        }
    }

    pub fn cron(expr: impl Into<String>) -> Self {
        Trigger::Cron { expr: expr.into() }
    }

    pub fn manual() -> Self {
        Trigger::Manual
    }
}

impl ScheduleSpec {
    /// A schedule with `trigger`; give it a job with [`ScheduleSpec::job`].
    pub fn new(trigger: Trigger) -> Self {
        Self {
            trigger,
            ..Self::default()
        }
    }

    /// Every day at `hour:minute` (in UTC unless [`ScheduleSpec::timezone`] says).
    pub fn daily(hour: u32, minute: u32) -> Self {
        Self::new(Trigger::daily(hour, minute))
    }

    pub fn weekly(days: &[Weekday], hour: u32, minute: u32) -> Self {
        Self::new(Trigger::weekly(days, hour, minute))
    }

    pub fn cron(expr: impl Into<String>) -> Self {
        Self::new(Trigger::cron(expr))
    }

    pub fn every(every: Duration) -> Self {
        Self::new(Trigger::every(every))
    }

    pub fn every_from(every: Duration, start_at: Millis) -> Self {
        Self::new(Trigger::every_from(every, start_at))
    }

    pub fn once(at: Millis) -> Self {
        Self::new(Trigger::once(at))
    }

    pub fn manual() -> Self {
        Self::new(Trigger::Manual)
    }

    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }

    pub fn job(mut self, job: JobSpec) -> Self {
        self.job = job;
        self
    }

    pub fn timezone(mut self, tz: impl Into<String>) -> Self {
        self.timezone = Some(tz.into());
        self
    }

    pub fn enabled(mut self, enabled: bool) -> Self {
        self.enabled = Some(enabled);
        self
    }

    pub fn misfire(mut self, misfire: Misfire) -> Self {
        self.misfire = Some(misfire);
        self
    }

    pub fn misfire_limit(mut self, limit: u32) -> Self {
        self.misfire_limit = Some(limit);
        self
    }

    pub fn overlap(mut self, overlap: Overlap) -> Self {
        self.overlap = Some(overlap);
        self
    }

    /// Checks every field and returns the spec with its defaults filled in and its
    /// names normalized (what is stored). Errors name the field:
    /// `invalid schedule: trigger.expr: invalid cron expression "*/61 * * * *": ...`.
    pub fn validate(&self, now: Millis, limits: &Limits) -> Result<ScheduleSpec, ScheduleError> {
        let id = match &self.id {
            Some(id) => JobId::parse(id)
                .map_err(|m| ScheduleError::new("id", m))?
                .to_string(),
            None => JobId::generate().to_string(),
        };
        if self.job.id.is_some() {
            return Err(ScheduleError::new(
                "job.id",
                "each fire submits a new job with its own id; leave job.id out",
            ));
        }
        if self.job.run_at.is_some() {
            return Err(ScheduleError::new(
                "job.run_at",
                "a fixed run_at would be the same for every fire; use job.delay or the trigger",
            ));
        }
        self.job
            .validate(now, limits)
            .map_err(|e| ScheduleError::new(format!("job.{}", e.field), e.message))?;
        let tz = parse_tz(self.timezone.as_deref())?;
        let limit = self.misfire_limit.unwrap_or(DEFAULT_MISFIRE_LIMIT);
        if !(1..=MAX_MISFIRE_LIMIT).contains(&limit) {
            return Err(ScheduleError::new(
                "misfire_limit",
                format!("{limit} is out of range; give 1 to {MAX_MISFIRE_LIMIT}"),
            ));
        }
        let trigger = normalize_trigger(&self.trigger)?;
        let spec = ScheduleSpec {
            id: Some(id),
            job: self.job.clone(),
            timezone: Some(tz.name().to_owned()),
            trigger,
            enabled: Some(self.enabled.unwrap_or(true)),
            misfire: Some(self.misfire.unwrap_or_default()),
            misfire_limit: Some(limit),
            overlap: Some(self.overlap.unwrap_or_default()),
        };
        let plan = spec.plan(now)?;
        if let Trigger::Cron { expr } = &spec.trigger
            && plan.next_after(now).is_none()
        {
            return Err(ScheduleError::new(
                "trigger.expr",
                format!("invalid cron expression {expr:?}: it never matches a date"),
            ));
        }
        Ok(spec)
    }

    /// The next-run maths of this spec, for a schedule created at `created_at` (the
    /// anchor of an interval without `start_at`).
    pub fn plan(&self, created_at: Millis) -> Result<Plan, ScheduleError> {
        let tz = parse_tz(self.timezone.as_deref())?;
        let rule = match &self.trigger {
            Trigger::Once { at } => Rule::Once(parse_time("trigger.at", at)?),
            Trigger::Interval { every, start_at } => {
                let every = parse_every(every)?;
                let first = match start_at {
                    Some(s) => parse_time("trigger.start_at", s)?,
                    None => created_at.saturating_add(every),
                };
                Rule::Interval { first, every }
            }
            Trigger::Daily { hour, minute } => {
                check_clock(*hour, *minute)?;
                calendar(&format!("{minute} {hour} * * *"))
                    .map_err(|m| ScheduleError::new("trigger", m))?
            }
            Trigger::Weekly { days, hour, minute } => {
                check_clock(*hour, *minute)?;
                let days = parse_days(days)?;
                let names: Vec<&str> = days.iter().map(|d| day_name(*d)).collect();
                calendar(&format!("{minute} {hour} * * {}", names.join(",")))
                    .map_err(|m| ScheduleError::new("trigger", m))?
            }
            Trigger::Cron { expr } => calendar(expr).map_err(|m| {
                ScheduleError::new(
                    "trigger.expr",
                    format!("invalid cron expression {expr:?}: {m}"),
                )
            })?,
            Trigger::Manual => Rule::Manual,
        };
        Ok(Plan { tz, rule })
    }
}

/// A schedule's trigger compiled for next-run maths.
#[derive(Clone, Debug)]
pub struct Plan {
    tz: Tz,
    rule: Rule,
}

#[derive(Clone, Debug)]
enum Rule {
    Once(Millis),
    Interval {
        first: Millis,
        every: Millis,
    },
    /// Matched on civil time; `fixed` when the time of day is one fixed value (fires
    /// once in a fold).
    Calendar {
        cron: Box<Cron>,
        fixed: bool,
    },
    Manual,
}

/// What a schedule should fire now: see [`Plan::due`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Due {
    /// Oldest first.
    pub fires: Vec<DueFire>,
    /// The schedule's next run after these fires.
    pub next_run: Option<Millis>,
    /// Missed slots that the misfire policy dropped (counted up to 1,000).
    pub dropped: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DueFire {
    /// The slot this fire stands for.
    pub at: Millis,
    /// A missed slot made up after downtime.
    pub catch_up: bool,
}

impl Plan {
    /// The first run of a schedule created (or enabled) at `now`: a `once` trigger's
    /// time even if it has passed (it is then due at once, as a missed run), an
    /// interval's `start_at` if it is `now`, otherwise the first slot after `now`.
    pub fn first_run(&self, now: Millis) -> Option<Millis> {
        match &self.rule {
            Rule::Once(at) => Some(*at),
            Rule::Interval { .. } => self.next_after(now.saturating_sub(1)),
            _ => self.next_after(now),
        }
    }

    /// The first slot strictly after `t`; `None` when there is none.
    pub fn next_after(&self, t: Millis) -> Option<Millis> {
        match &self.rule {
            Rule::Once(at) => (*at > t).then_some(*at),
            Rule::Interval { first, every } => {
                if t < *first {
                    return Some(*first);
                }
                let k = (t - first) / every + 1;
                k.checked_mul(*every)?.checked_add(*first)
            }
            Rule::Calendar { cron, fixed } => self.calendar_next(cron, *fixed, t),
            Rule::Manual => None,
        }
    }

    /// What to fire for a schedule whose next run is `next_run`, at `now`. Slots no
    /// older than `grace` are on time and all fire; older ones were missed and follow
    /// `misfire`: `skip` drops them, `run_once` fires the latest of them once (unless an
    /// on-time fire stands in for it), `run_all` fires the latest `limit` of them.
    pub fn due(
        &self,
        next_run: Millis,
        now: Millis,
        misfire: Misfire,
        limit: u32,
        grace: Duration,
    ) -> Due {
        if next_run > now {
            return Due {
                fires: Vec::new(),
                next_run: Some(next_run),
                dropped: 0,
            };
        }
        let late = now.saturating_sub(grace.as_millis() as Millis);
        let mut on_time = Vec::new();
        let mut t = next_run.max(late).saturating_sub(1);
        while on_time.len() < MAX_ON_TIME {
            match self.next_after(t) {
                Some(s) if s <= now => {
                    on_time.push(s);
                    t = s;
                }
                _ => break,
            }
        }
        let mut fires = Vec::new();
        let mut dropped = 0;
        if next_run < late {
            let keep = match misfire {
                Misfire::Skip => 0,
                Misfire::RunOnce if on_time.is_empty() => 1,
                Misfire::RunOnce => 0,
                Misfire::RunAll => limit.max(1) as usize,
            };
            let missed = self.last_slots(next_run, late - 1, keep);
            dropped = self
                .count_slots(next_run, late - 1, MAX_COUNTED)
                .saturating_sub(missed.len() as u64);
            fires.extend(missed.into_iter().map(|at| DueFire { at, catch_up: true }));
        }
        let next_run = if on_time.len() >= MAX_ON_TIME {
            // More on-time slots than one go takes: the rest are due at once.
            on_time.last().and_then(|s| self.next_after(*s))
        } else {
            self.next_after(now)
        };
        fires.extend(on_time.into_iter().map(|at| DueFire {
            at,
            catch_up: false,
        }));
        Due {
            fires,
            next_run,
            dropped,
        }
    }

    /// The last `n` slots in `[first, end]`, oldest first. Gallops back from `end`, so
    /// that a long downtime of a frequent trigger costs what the kept slots cost, not
    /// what was missed.
    fn last_slots(&self, first: Millis, end: Millis, n: usize) -> Vec<Millis> {
        if end < first || n == 0 {
            return Vec::new();
        }
        let whole = end.saturating_sub(first).saturating_add(1);
        let mut span: Millis = 1000;
        loop {
            let span_now = span.min(whole);
            let mut kept: VecDeque<Millis> = VecDeque::with_capacity(n.min(1024));
            let mut t = end.saturating_sub(span_now);
            for _ in 0..MAX_WALK {
                match self.next_after(t) {
                    Some(s) if s <= end => {
                        if kept.len() == n {
                            kept.pop_front();
                        }
                        kept.push_back(s);
                        t = s;
                    }
                    _ => break,
                }
            }
            if kept.len() >= n || span_now >= whole {
                return kept.into();
            }
            span = span.saturating_mul(16);
        }
    }

    /// How many slots `[first, end]` holds, counted up to `cap`.
    fn count_slots(&self, first: Millis, end: Millis, cap: u64) -> u64 {
        if end < first {
            return 0;
        }
        if let Rule::Interval { first: f, every } = &self.rule {
            let from = first.max(*f);
            if end < from {
                return 0;
            }
            // Slots are f + k * every: count those from `from` to `end`.
            let k0 = (from - f + every - 1) / every;
            let k1 = (end - f) / every;
            return ((k1 - k0 + 1).max(0) as u64).min(cap);
        }
        let mut n = 0;
        let mut t = first.saturating_sub(1);
        while n < cap {
            match self.next_after(t) {
                Some(s) if s <= end => {
                    n += 1;
                    t = s;
                }
                _ => break,
            }
        }
        n
    }

    fn calendar_next(&self, cron: &Cron, fixed: bool, a: Millis) -> Option<Millis> {
        let tz = &self.tz;
        let mut best: Option<Millis> = None;
        // Civil times after the civil time of `a`: the first that names an instant
        // after `a` wins (a fixed-time slot in the second half of a fold names only
        // its first occurrence, which may lie behind).
        let mut c = floor_second(civil(tz, a));
        for _ in 0..1000 {
            c = cron.find_next_occurrence(&c, false).ok()?;
            if let Some(i) = instants(tz, c, fixed).into_iter().find(|i| *i > a) {
                best = Some(i);
                break;
            }
        }
        // A fold just ahead repeats civil times the walk above has left behind; a
        // wildcard trigger fires on their second occurrence too.
        if !fixed && let Some((f, len, after)) = fold_ahead(tz, a) {
            let start = civil(tz, f);
            if let Ok(c) = cron.find_next_occurrence(&start, true)
                && c < start + chrono::Duration::milliseconds(len)
            {
                let i = c.and_utc().timestamp_millis() - after;
                if i > a && best.is_none_or(|b| i < b) {
                    best = Some(i);
                }
            }
        }
        best
    }
}

fn parse_tz(name: Option<&str>) -> Result<Tz, ScheduleError> {
    let name = name.unwrap_or("UTC");
    Tz::from_str(name).map_err(|_| {
        ScheduleError::new(
            "timezone",
            format!(
                "unknown time zone {name:?}; use an IANA name such as \"Europe/London\" or \"UTC\""
            ),
        )
    })
}

fn parse_time(field: &str, s: &str) -> Result<Millis, ScheduleError> {
    time::parse_rfc3339(s).ok_or_else(|| {
        ScheduleError::new(
            field,
            format!("{s:?} is not an RFC 3339 time (e.g. 2026-01-31T02:00:00Z)"),
        )
    })
}

fn parse_every(s: &str) -> Result<Millis, ScheduleError> {
    let d = duration::parse(s).map_err(|m| ScheduleError::new("trigger.every", m))?;
    if d.is_zero() {
        return Err(ScheduleError::new(
            "trigger.every",
            format!(
                "{s:?} is zero; an interval must be at least {}",
                duration::format(MIN_INTERVAL)
            ),
        ));
    }
    if d < MIN_INTERVAL {
        return Err(ScheduleError::new(
            "trigger.every",
            format!(
                "{s:?} is shorter than the shortest interval, {}",
                duration::format(MIN_INTERVAL)
            ),
        ));
    }
    Ok(d.as_millis() as Millis)
}

fn check_clock(hour: u32, minute: u32) -> Result<(), ScheduleError> {
    if hour > 23 {
        return Err(ScheduleError::new(
            "trigger.hour",
            format!("{hour} is out of range; give 0 to 23"),
        ));
    }
    if minute > 59 {
        return Err(ScheduleError::new(
            "trigger.minute",
            format!("{minute} is out of range; give 0 to 59"),
        ));
    }
    Ok(())
}

const DAYS: [Weekday; 7] = [
    Weekday::Mon,
    Weekday::Tue,
    Weekday::Wed,
    Weekday::Thu,
    Weekday::Fri,
    Weekday::Sat,
    Weekday::Sun,
];

fn day_name(d: Weekday) -> &'static str {
    match d {
        Weekday::Mon => "mon",
        Weekday::Tue => "tue",
        Weekday::Wed => "wed",
        Weekday::Thu => "thu",
        Weekday::Fri => "fri",
        Weekday::Sat => "sat",
        Weekday::Sun => "sun",
    }
}

/// Day names, in week order without repeats; accepts `mon` and `monday` in any case.
fn parse_days(days: &[String]) -> Result<Vec<Weekday>, ScheduleError> {
    if days.is_empty() {
        return Err(ScheduleError::new(
            "trigger.days",
            "must name at least one day",
        ));
    }
    let mut out = Vec::new();
    for (i, d) in days.iter().enumerate() {
        let lower = d.trim().to_ascii_lowercase();
        let day = DAYS
            .iter()
            .find(|w| lower == day_name(**w) || lower == full_day_name(**w))
            .ok_or_else(|| {
                ScheduleError::new(
                    format!("trigger.days[{i}]"),
                    format!("{d:?} is not a day; use mon, tue, wed, thu, fri, sat or sun"),
                )
            })?;
        if !out.contains(day) {
            out.push(*day);
        }
    }
    out.sort_by_key(|d| d.num_days_from_monday());
    Ok(out)
}

fn full_day_name(d: Weekday) -> &'static str {
    match d {
        Weekday::Mon => "monday",
        Weekday::Tue => "tuesday",
        Weekday::Wed => "wednesday",
        Weekday::Thu => "thursday",
        Weekday::Fri => "friday",
        Weekday::Sat => "saturday",
        Weekday::Sun => "sunday",
    }
}

/// The trigger as stored: times in canonical RFC 3339, days in week order.
fn normalize_trigger(t: &Trigger) -> Result<Trigger, ScheduleError> {
    Ok(match t {
        Trigger::Once { at } => Trigger::Once {
            at: time::to_rfc3339(parse_time("trigger.at", at)?),
        },
        Trigger::Interval { every, start_at } => {
            parse_every(every)?;
            Trigger::Interval {
                every: every.trim().to_owned(),
                start_at: match start_at {
                    Some(s) => Some(time::to_rfc3339(parse_time("trigger.start_at", s)?)),
                    None => None,
                },
            }
        }
        Trigger::Weekly { days, hour, minute } => {
            check_clock(*hour, *minute)?;
            Trigger::Weekly {
                days: parse_days(days)?
                    .into_iter()
                    .map(|d| day_name(d).to_owned())
                    .collect(),
                hour: *hour,
                minute: *minute,
            }
        }
        Trigger::Cron { expr } => Trigger::Cron {
            expr: expr.split_whitespace().collect::<Vec<_>>().join(" "),
        },
        other => other.clone(),
    })
}

/// Parses a cron expression (five fields, or six with seconds first) into a rule.
fn calendar(expr: &str) -> Result<Rule, String> {
    check_cron_fields(expr)?;
    let cron = CronParser::builder()
        .seconds(Seconds::Optional)
        .build()
        .parse(expr.trim())
        .map_err(|e| cron_message(&e.to_string()))?;
    let fixed = fixed_time(expr);
    Ok(Rule::Calendar {
        cron: Box::new(cron),
        fixed,
    })
}

/// Whether a cron expression names fixed times of day: no `*` (or `?`) in its second,
/// minute and hour fields. Such a time repeated by a fall-back fold fires once; Vixie
/// cron decides the same way.
fn fixed_time(expr: &str) -> bool {
    let expr = expr.trim();
    if expr.starts_with('@') {
        return !expr.eq_ignore_ascii_case("@hourly");
    }
    let fields: Vec<&str> = expr.split_whitespace().collect();
    let time = if fields.len() == 6 {
        &fields[..3]
    } else {
        &fields[..2.min(fields.len())]
    };
    !time.iter().any(|f| f.contains('*') || f.contains('?'))
}

/// Checks field counts, numbers and steps, to name the field that is wrong; the parser
/// checks the rest.
fn check_cron_fields(expr: &str) -> Result<(), String> {
    let expr = expr.trim();
    if expr.is_empty() {
        return Err("it is empty".into());
    }
    if expr.starts_with('@') {
        return Ok(());
    }
    const FIVE: [(&str, u32, u32); 5] = [
        ("minute", 0, 59),
        ("hour", 0, 23),
        ("day of month", 1, 31),
        ("month", 1, 12),
        ("day of week", 0, 7),
    ];
    let fields: Vec<&str> = expr.split_whitespace().collect();
    let names: Vec<(&str, u32, u32)> = match fields.len() {
        5 => FIVE.to_vec(),
        6 => std::iter::once(("second", 0, 59)).chain(FIVE).collect(),
        n => {
            return Err(format!(
                "expected 5 fields (minute hour day-of-month month day-of-week) or 6 with seconds first, found {n}"
            ));
        }
    };
    for (field, (name, lo, hi)) in fields.iter().zip(names) {
        for part in field.split(',') {
            let (range, step) = match part.split_once('/') {
                Some((r, s)) => (r, Some(s)),
                None => (part, None),
            };
            if let Some(s) = step {
                let most = hi - lo + 1;
                match s.parse::<u32>() {
                    Ok(n) if (1..=most).contains(&n) => {}
                    Ok(n) => {
                        return Err(format!("{name} step {n} is out of range (1-{most})"));
                    }
                    Err(_) => return Err(format!("{name} step {s:?} is not a number")),
                }
            }
            for v in range.trim_start_matches('+').split('-') {
                if let Ok(n) = v.parse::<u32>()
                    && !(lo..=hi).contains(&n)
                {
                    return Err(format!("{name} {n} is out of range ({lo}-{hi})"));
                }
            }
        }
    }
    Ok(())
}

/// The parser's message in the house style: lowercase, no trailing period.
fn cron_message(m: &str) -> String {
    let m = m
        .trim_start_matches("Component error: ")
        .trim_start_matches("Invalid pattern: ")
        .trim_end_matches('.');
    let mut chars = m.chars();
    match chars.next() {
        Some(c) => c.to_lowercase().chain(chars).collect(),
        None => "not a cron expression".into(),
    }
}

fn civil(tz: &Tz, t: Millis) -> NaiveDateTime {
    time::to_datetime(t).with_timezone(tz).naive_local()
}

fn floor_second(c: NaiveDateTime) -> NaiveDateTime {
    c.with_nanosecond(0).unwrap_or(c)
}

fn offset_ms(tz: &Tz, t: Millis) -> Millis {
    let utc = time::to_datetime(t).naive_utc();
    tz.offset_from_utc_datetime(&utc).fix().local_minus_utc() as Millis * 1000
}

/// The instants a civil time names: one; the first of a fold's two (a fixed time of
/// day) or both (a wildcard); or, in a gap, the first instant after it.
fn instants(tz: &Tz, c: NaiveDateTime, fixed: bool) -> Vec<Millis> {
    match tz.from_local_datetime(&c) {
        LocalResult::Single(d) => vec![d.timestamp_millis()],
        LocalResult::Ambiguous(e, _) if fixed => vec![e.timestamp_millis()],
        LocalResult::Ambiguous(e, l) => vec![e.timestamp_millis(), l.timestamp_millis()],
        LocalResult::None => {
            // Instants before the gap show civil times before `c`, those after it civil
            // times after: the first instant whose civil time passes `c` ends the gap.
            let naive = c.and_utc().timestamp_millis();
            let guess = naive - offset_ms(tz, naive);
            let (mut lo, mut hi) = (guess - MAX_SHIFT_MS, guess + MAX_SHIFT_MS);
            while hi - lo > 1 {
                let mid = lo + (hi - lo) / 2;
                if civil(tz, mid) > c {
                    hi = mid;
                } else {
                    lo = mid;
                }
            }
            vec![hi]
        }
    }
}

/// A clock change back within the next few hours after `a`: the instant it happens,
/// how long the repeated civil range is, and the offset after it.
fn fold_ahead(tz: &Tz, a: Millis) -> Option<(Millis, Millis, Millis)> {
    let before = offset_ms(tz, a);
    let after = offset_ms(tz, a + MAX_SHIFT_MS);
    if after >= before {
        return None;
    }
    let (mut lo, mut hi) = (a, a + MAX_SHIFT_MS);
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if offset_ms(tz, mid) < before {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    Some((hi, before - after, after))
}

#[cfg(test)]
mod tests;
