//! The scheduler: fires schedules when their time comes, and the engine's schedule API.
//!
//! One task keeps every enabled schedule's next run in a min-heap and sleeps, through
//! the engine's [`Clock`](crate::Clock), until the earliest; it never scans all
//! schedules. Every API call that changes a schedule updates the heap and wakes the
//! task. A fire reads the schedule, works out what is due (the misfire policy after
//! downtime), and makes one store write that submits the jobs and moves the schedule
//! on, refused if the schedule changed meanwhile: a crash between fires loses or
//! doubles nothing, because the next start reads `next_run` from the store.
//!
//! Overlap `queue` leaves jobs `awaiting` behind the schedule's active one; the task
//! then follows the event stream (only while such jobs exist) and releases the next
//! when the active one ends.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use baton_core::schedule::{DEFAULT_MISFIRE_GRACE, ScheduleSpec};
use baton_core::{JobSpec, Millis, NewJob, Schedule, ScheduleError, State, Trigger};
use baton_store::{
    Fire, FireOutcome, FirePage, FireReason, FireSlot, Fired, NewSchedule, PutSchedule,
    ScheduleFilter, SchedulePage,
};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::sync::{Notify, broadcast};

use crate::{Engine, Error, Result};

/// Fires under way at once; more due schedules wait their turn.
const MAX_IN_FLIGHT: usize = 256;
/// How long a fire that failed in the store waits before it is tried again.
const RETRY: Millis = 1000;

/// The heap of next runs, shared by the task and the API.
#[derive(Default)]
pub(crate) struct Timers {
    state: Mutex<Heap>,
    /// Schedules whose awaiting jobs an API call left for the task to release.
    releases: Mutex<Vec<String>>,
    wake: Notify,
}

#[derive(Default)]
struct Heap {
    /// `(next run, revision, id)`; entries that no longer match `current` are skipped
    /// when they come up.
    heap: BinaryHeap<Reverse<(Millis, u64, Arc<str>)>>,
    /// What the scheduler knows of each schedule: its next run (`None`: nothing to
    /// fire) at its latest revision seen.
    current: HashMap<Arc<str>, (Option<Millis>, u64)>,
}

impl Heap {
    /// Records a schedule's next run at revision `rev`, unless a later revision is
    /// known already (an API call and a fire can report out of order).
    fn set(&mut self, id: &str, next_run: Option<Millis>, rev: u64) -> bool {
        if let Some(known) = self.current.get(id)
            && (known.1 > rev || *known == (next_run, rev))
        {
            // Older than what is known, or known already (a reload): one heap entry.
            return false;
        }
        let id: Arc<str> = match self.current.get_key_value(id) {
            Some((k, _)) => k.clone(),
            None => Arc::from(id),
        };
        self.current.insert(id.clone(), (next_run, rev));
        if let Some(at) = next_run {
            self.heap.push(Reverse((at, rev, id)));
        }
        // Replaced entries stay in the heap until they come up; rebuild before they
        // outnumber the live ones.
        if self.heap.len() > 2 * self.current.len() + 1024 {
            self.heap = self
                .current
                .iter()
                .filter_map(|(id, (at, rev))| at.map(|at| Reverse((at, *rev, id.clone()))))
                .collect();
        }
        true
    }

    fn is_live(&self, at: Millis, rev: u64, id: &str) -> bool {
        self.current.get(id) == Some(&(Some(at), rev))
    }

    /// Takes up to `max` schedules due at `now`.
    fn pop_due(&mut self, now: Millis, max: usize) -> Vec<(Arc<str>, u64)> {
        let mut due = Vec::new();
        while due.len() < max {
            match self.heap.peek() {
                Some(Reverse((at, _, _))) if *at <= now => {}
                _ => break,
            }
            let Some(Reverse((at, rev, id))) = self.heap.pop() else {
                break;
            };
            if self.is_live(at, rev, &id) {
                // Until the fire reports, nothing else fires it.
                self.current.insert(id.clone(), (None, rev));
                due.push((id, rev));
            }
        }
        due
    }

    /// The earliest live next run.
    fn earliest(&mut self) -> Option<Millis> {
        while let Some(Reverse((at, rev, id))) = self.heap.peek() {
            if self.is_live(*at, *rev, id) {
                return Some(*at);
            }
            self.heap.pop();
        }
        None
    }
}

impl Timers {
    fn set(&self, id: &str, next_run: Option<Millis>, rev: u64) {
        let changed = self
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .set(id, next_run, rev);
        if changed {
            self.wake.notify_one();
        }
    }

    fn track(&self, s: &Schedule) {
        self.set(&s.id, s.enabled.then_some(s.next_run).flatten(), s.rev);
    }

    fn request_release(&self, schedule: String) {
        self.releases
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(schedule);
        self.wake.notify_one();
    }

    fn take_releases(&self) -> Vec<String> {
        std::mem::take(&mut *self.releases.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// What one fire task reports back to the loop.
struct Report {
    id: Arc<str>,
    /// The schedule's next run and revision as the fire left them (`None`: gone).
    next: Option<(Option<Millis>, u64)>,
    /// Schedules whose awaiting jobs need a release.
    release: Option<String>,
}

/// The scheduler task: runs until the engine shuts down.
pub(crate) async fn run(engine: Engine) {
    let inner = engine.inner.clone();
    let timers = &inner.schedules;
    let mut waits = Waits::default();
    loop {
        match inner.store.schedule_timers().await {
            Ok(list) => {
                let count = list.len();
                for t in list {
                    timers.set(&t.id, Some(t.next_run), t.rev);
                }
                tracing::debug!(schedules = count, "scheduler loaded its timers");
                break;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot read the schedules; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = inner.shutdown.cancelled() => return,
                }
            }
        }
    }
    // Jobs left awaiting by overlap `queue` before a restart: their turn may have come.
    match inner.store.awaiting_schedules().await {
        Ok(ids) => waits.pending.extend(ids),
        Err(e) => tracing::error!(error = %e, "cannot read schedules with awaiting jobs"),
    }

    let mut fires = FuturesUnordered::new();
    let mut releases = FuturesUnordered::new();
    // On a shared store, schedules made or changed through another server reach this
    // one's heap by a reload every second, and the leader fires what is due (a server
    // that lost the lease without knowing it yet may fire too: the store's revision
    // check lets one fire of a run through and refuses the others).
    let shared = inner.store.shared();
    let mut reload = tokio::time::interval(Duration::from_secs(1));
    reload.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let now = inner.clock.now();
        // A server that does not lead keeps its timers and looks again at the reload.
        let firing = inner.leading.load(Ordering::SeqCst);
        let (due, earliest) = {
            let mut heap = timers.state.lock().unwrap_or_else(|e| e.into_inner());
            let due = if firing {
                heap.pop_due(now, MAX_IN_FLIGHT.saturating_sub(fires.len()))
            } else {
                Vec::new()
            };
            (due, heap.earliest().filter(|_| firing))
        };
        for (id, rev) in due {
            fires.push(fire_due(engine.clone(), id, rev));
        }
        waits.pending.extend(timers.take_releases());
        for id in waits.pending.drain(..) {
            releases.push(release(engine.clone(), id));
        }
        let sleep = match earliest {
            Some(at) if fires.len() < MAX_IN_FLIGHT => inner.clock.sleep_until(at),
            _ => Box::pin(std::future::pending()),
        };
        tokio::select! {
            Some(report) = fires.next(), if !fires.is_empty() => {
                let report: Report = report;
                match report.next {
                    Some((next_run, rev)) => timers.set(&report.id, next_run, rev),
                    None => {
                        let mut heap = timers.state.lock().unwrap_or_else(|e| e.into_inner());
                        heap.current.remove(&report.id);
                    }
                }
                waits.pending.extend(report.release);
            }
            Some((schedule, waiting_on)) = releases.next(), if !releases.is_empty() => {
                waits.watch(&engine, schedule, waiting_on).await;
            }
            event = waits.next_event(), if waits.listening() => {
                waits.on_event(&engine, event).await;
            }
            _ = sleep => {}
            _ = timers.wake.notified() => {}
            _ = reload.tick(), if shared => {
                match inner.store.schedule_timers().await {
                    Ok(list) => {
                        for t in list {
                            timers.set(&t.id, Some(t.next_run), t.rev);
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot reload the schedules"),
                }
            }
            _ = inner.shutdown.cancelled() => return,
        }
    }
}

/// Fires one schedule whose time came (by the heap, at revision `rev`).
async fn fire_due(engine: Engine, id: Arc<str>, rev: u64) -> Report {
    let report = |next, release| Report {
        id: id.clone(),
        next,
        release,
    };
    match try_fire(&engine, &id, rev).await {
        Ok(report_next) => report(report_next.0, report_next.1),
        Err(e) => {
            tracing::error!(schedule_id = %id, error = %e, "cannot fire the schedule; retrying");
            let retry = engine.inner.clock.now() + RETRY;
            report(Some((Some(retry), rev)), None)
        }
    }
}

type Next = Option<(Option<Millis>, u64)>;

async fn try_fire(engine: &Engine, id: &str, rev: u64) -> Result<(Next, Option<String>)> {
    let inner = &engine.inner;
    let Some(s) = inner.store.schedule(id).await? else {
        return Ok((None, None));
    };
    let next_run = match s.next_run {
        Some(at) if s.enabled && s.rev == rev => at,
        // Changed since the heap learnt of it: go by what the store says now.
        _ => {
            return Ok((
                Some((s.enabled.then_some(s.next_run).flatten(), s.rev)),
                None,
            ));
        }
    };
    let plan = match s.plan() {
        Ok(p) => p,
        Err(e) => {
            // A schedule this build cannot read (a time zone gone from its database):
            // leave it alone rather than fire it wrongly.
            tracing::error!(schedule_id = %id, error = %e, "cannot plan the schedule; it will not fire");
            return Ok((Some((None, s.rev)), None));
        }
    };
    let now = inner.clock.now();
    let due = plan.due(
        next_run,
        now,
        s.misfire,
        s.misfire_limit,
        DEFAULT_MISFIRE_GRACE,
    );
    if due.fires.is_empty() && due.next_run == Some(next_run) {
        // Woken early (the clock moved back): nothing is due yet.
        return Ok((Some((Some(next_run), s.rev)), None));
    }
    let mut slots = Vec::with_capacity(due.fires.len());
    for f in &due.fires {
        slots.push(FireSlot {
            scheduled_for: f.at,
            reason: if f.catch_up {
                FireReason::CatchUp
            } else {
                FireReason::Schedule
            },
            job: engine
                .schedule_job(&s.job, now)
                .await
                .map_err(|e| e.to_string()),
        });
    }
    if due.dropped > 0 {
        tracing::info!(schedule_id = %id, dropped = due.dropped, misfire = s.misfire.as_str(), "runs missed while the engine was down are not made up");
    }
    let fire = Fire {
        schedule_id: id.to_owned(),
        rev: Some(s.rev),
        slots,
        next_run: due.next_run,
        now,
    };
    match inner.store.fire_schedule(fire).await? {
        FireOutcome::Fired(fired) => {
            let release = after_fire(engine, &fired);
            let s = &fired.schedule;
            Ok((
                Some((s.enabled.then_some(s.next_run).flatten(), s.rev)),
                release,
            ))
        }
        FireOutcome::Stale(Some(s)) => Ok((
            Some((s.enabled.then_some(s.next_run).flatten(), s.rev)),
            None,
        )),
        FireOutcome::Stale(None) => Ok((None, None)),
    }
}

/// Wakes the queues of the jobs a fire submitted and logs it; returns the schedule
/// when it left jobs awaiting.
fn after_fire(engine: &Engine, fired: &Fired) -> Option<String> {
    let id = &fired.schedule.id;
    for r in &fired.records {
        tracing::info!(
            schedule_id = %id,
            fire = r.seq,
            scheduled_for = %baton_core::time::to_rfc3339(r.scheduled_for),
            reason = r.reason.as_str(),
            action = r.action.as_str(),
            job_id = r.job_id.as_deref().unwrap_or(""),
            message = r.message.as_deref().unwrap_or(""),
            "schedule fired"
        );
    }
    let mut awaiting = false;
    for job in &fired.jobs {
        engine.inner.job_became(job);
        awaiting |= job.state == State::Awaiting;
    }
    awaiting.then(|| id.clone())
}

/// Queues the schedule's next awaiting job if its turn came; returns what it waits on.
async fn release(engine: Engine, schedule: String) -> (String, Option<String>) {
    let now = engine.inner.clock.now();
    match engine.inner.store.release_schedule(&schedule, now).await {
        Ok(r) => {
            if let Some(job) = &r.job {
                tracing::info!(schedule_id = %schedule, job_id = %job.id, "queued the schedule's next job: the one before it ended");
                engine.inner.job_became(job);
            }
            (schedule, r.waiting_on)
        }
        Err(e) => {
            tracing::error!(schedule_id = %schedule, error = %e, "cannot release the schedule's awaiting job");
            // Try again on the next event about the job it waits on, or the next fire.
            (schedule, None)
        }
    }
}

/// Active jobs that a schedule's awaiting jobs wait for, and the event stream that
/// says when they end. The stream is open only while there is something to wait for.
#[derive(Default)]
struct Waits {
    /// job id → schedule id
    on: HashMap<String, String>,
    events: Option<broadcast::Receiver<Arc<baton_core::Event>>>,
    /// Schedules to release next.
    pending: Vec<String>,
}

impl Waits {
    fn listening(&self) -> bool {
        self.events.is_some()
    }

    async fn next_event(
        &mut self,
    ) -> std::result::Result<Arc<baton_core::Event>, broadcast::error::RecvError> {
        match &mut self.events {
            Some(rx) => rx.recv().await,
            None => std::future::pending().await,
        }
    }

    async fn watch(&mut self, engine: &Engine, schedule: String, waiting_on: Option<String>) {
        let Some(job) = waiting_on else {
            self.on.retain(|_, s| *s != schedule);
            self.close_if_idle();
            return;
        };
        self.on.insert(job.clone(), schedule.clone());
        if self.events.is_none() {
            self.events = Some(engine.inner.store.subscribe());
        }
        // It may have ended before the stream opened.
        if let Ok(Some(j)) = engine.inner.store.get(&job).await
            && j.state.is_terminal()
        {
            self.on.remove(&job);
            self.pending.push(schedule);
        }
    }

    async fn on_event(
        &mut self,
        engine: &Engine,
        event: std::result::Result<Arc<baton_core::Event>, broadcast::error::RecvError>,
    ) {
        match event {
            Ok(e) if e.kind.is_terminal() => {
                if let Some(schedule) = e.job_id.as_ref().and_then(|j| self.on.remove(j)) {
                    self.pending.push(schedule);
                }
            }
            Ok(_) => {}
            Err(broadcast::error::RecvError::Lagged(_)) => {
                // Missed events: ask the store about every job waited on.
                let jobs: Vec<String> = self.on.keys().cloned().collect();
                for job in jobs {
                    let ended = match engine.inner.store.get(&job).await {
                        Ok(Some(j)) => j.state.is_terminal(),
                        Ok(None) => true,
                        Err(_) => false,
                    };
                    if ended && let Some(schedule) = self.on.remove(&job) {
                        self.pending.push(schedule);
                    }
                }
            }
            Err(broadcast::error::RecvError::Closed) => self.events = None,
        }
        self.close_if_idle();
    }

    fn close_if_idle(&mut self) {
        if self.on.is_empty() {
            self.events = None;
        }
    }
}

impl Engine {
    /// Creates a schedule; an id that exists already is refused
    /// ([`Error::ScheduleExists`]). Its first run follows the trigger.
    /// The next `count` runs a schedule with this spec would have if it were created
    /// now, after the same checks as a create; nothing is stored.
    pub async fn preview_schedule(&self, spec: ScheduleSpec, count: usize) -> Result<Vec<Millis>> {
        let (spec, now) = self.check_schedule(spec).await?;
        let plan = spec.plan(now)?;
        let mut runs = Vec::with_capacity(count);
        let mut next = plan.first_run(now);
        while let Some(at) = next {
            if runs.len() == count {
                break;
            }
            runs.push(at);
            next = plan.next_after(at);
        }
        Ok(runs)
    }

    pub async fn create_schedule(&self, spec: ScheduleSpec) -> Result<Schedule> {
        let (spec, now) = self.check_schedule(spec).await?;
        let plan = spec.plan(now)?;
        let next_run = if spec.enabled == Some(false) {
            None
        } else {
            plan.first_run(now)
        };
        let id = spec.id.clone().unwrap_or_default();
        let put = self
            .inner
            .store
            .create_schedule(NewSchedule {
                spec,
                next_run,
                now,
            })
            .await?;
        if !put.created {
            return Err(Error::ScheduleExists(id));
        }
        self.inner.schedules.track(&put.schedule);
        tracing::info!(schedule_id = %id, next_run = ?put.schedule.next_run.map(baton_core::time::to_rfc3339), "schedule created");
        Ok(put.schedule)
    }

    /// Creates a schedule or replaces the one with its id. A replaced schedule keeps
    /// its history, its runs and its creation time (an interval without `start_at`
    /// stays anchored there); it keeps its next run too when its trigger, time zone
    /// and enabled flag did not change (the store decides that in the write), so that
    /// putting the same spec again changes nothing.
    pub async fn put_schedule(&self, spec: ScheduleSpec) -> Result<PutSchedule> {
        let (spec, now) = self.check_schedule(spec).await?;
        let id = spec.id.clone().unwrap_or_default();
        let existing = self.inner.store.schedule(&id).await?;
        let created_at = existing.as_ref().map_or(now, |e| e.created_at);
        let plan = spec.plan(created_at)?;
        let next_run = if spec.enabled == Some(false) {
            None
        } else {
            plan.first_run(now)
        };
        let put = self
            .inner
            .store
            .put_schedule(NewSchedule {
                spec,
                next_run,
                now,
            })
            .await?;
        self.inner.schedules.track(&put.schedule);
        tracing::info!(schedule_id = %id, created = put.created, next_run = ?put.schedule.next_run.map(baton_core::time::to_rfc3339), "schedule stored");
        Ok(put)
    }

    pub async fn schedule(&self, id: &str) -> Result<Schedule> {
        self.inner
            .store
            .schedule(id)
            .await?
            .ok_or_else(|| Error::ScheduleNotFound(id.into()))
    }

    /// Schedules by id, paginated.
    pub async fn schedules(&self, filter: ScheduleFilter) -> Result<SchedulePage> {
        Ok(self.inner.store.schedules(filter).await?)
    }

    /// Removes a schedule and its history. The jobs it submitted stay; awaiting ones
    /// are still queued in turn.
    pub async fn delete_schedule(&self, id: &str) -> Result<Schedule> {
        let gone = self
            .inner
            .store
            .delete_schedule(id)
            .await?
            .ok_or_else(|| Error::ScheduleNotFound(id.into()))?;
        self.inner.schedules.set(id, None, gone.rev);
        tracing::info!(schedule_id = %id, "schedule deleted");
        Ok(gone)
    }

    /// Disables a schedule: it fires only by hand until resumed.
    pub async fn pause_schedule(&self, id: &str) -> Result<Schedule> {
        let s = self.schedule(id).await?;
        if !s.enabled {
            return Ok(s);
        }
        let now = self.inner.clock.now();
        let s = self
            .inner
            .store
            .set_schedule_enabled(id, false, None, now)
            .await?
            .ok_or_else(|| Error::ScheduleNotFound(id.into()))?;
        self.inner.schedules.track(&s);
        Ok(s)
    }

    /// Enables a schedule again. It does not make up what it missed while paused: its
    /// next run is the trigger's next after now (a `once` whose time passed is due at
    /// once, as a missed run).
    pub async fn resume_schedule(&self, id: &str) -> Result<Schedule> {
        let s = self.schedule(id).await?;
        if s.enabled {
            return Ok(s);
        }
        let now = self.inner.clock.now();
        let plan = s.plan()?;
        let next_run = match s.trigger {
            Trigger::Once { .. } => plan.first_run(now),
            _ => plan.next_after(now),
        };
        let s = self
            .inner
            .store
            .set_schedule_enabled(id, true, next_run, now)
            .await?
            .ok_or_else(|| Error::ScheduleNotFound(id.into()))?;
        self.inner.schedules.track(&s);
        Ok(s)
    }

    /// Fires a schedule now, by hand, whatever its trigger and even when paused; its
    /// next run stays. The overlap policy applies. Returns the fire: its record, its
    /// job (if one was submitted) and the schedule after it.
    pub async fn trigger_schedule(&self, id: &str) -> Result<Fired> {
        let s = self.schedule(id).await?;
        let now = self.inner.clock.now();
        let job = self.schedule_job(&s.job, now).await?;
        let fire = Fire {
            schedule_id: id.to_owned(),
            rev: None,
            slots: vec![FireSlot {
                scheduled_for: now,
                reason: FireReason::Manual,
                job: Ok(job),
            }],
            next_run: None,
            now,
        };
        match self.inner.store.fire_schedule(fire).await? {
            FireOutcome::Fired(fired) => {
                if let Some(schedule) = after_fire(self, &fired) {
                    self.inner.schedules.request_release(schedule);
                }
                self.inner.schedules.track(&fired.schedule);
                Ok(fired)
            }
            FireOutcome::Stale(_) => Err(Error::ScheduleNotFound(id.into())),
        }
    }

    /// A schedule's fires, newest first, each with its job's outcome; `before` is the
    /// previous page's cursor.
    pub async fn schedule_history(
        &self,
        id: &str,
        before: Option<u64>,
        limit: usize,
    ) -> Result<FirePage> {
        self.schedule(id).await?;
        Ok(self.inner.store.schedule_history(id, before, limit).await?)
    }

    /// Validates a spec (off the async threads: a cron that never matches takes a
    /// while to prove so) and checks that its job could be submitted here.
    async fn check_schedule(&self, spec: ScheduleSpec) -> Result<(ScheduleSpec, Millis)> {
        if self.inner.shutdown.is_cancelled() {
            return Err(Error::ShuttingDown);
        }
        if spec.job.depends_on.as_ref().is_some_and(|d| !d.is_empty()) {
            return Err(ScheduleError::new(
                "job.depends_on",
                "a schedule's jobs cannot depend on fixed jobs; use overlap \"queue\" to run them one after another",
            )
            .into());
        }
        let now = self.inner.clock.now();
        let limits = self.inner.limits.clone();
        let spec = tokio::task::spawn_blocking(move || spec.validate(now, &limits))
            .await
            .map_err(|e| Error::Config(format!("validation task failed: {e}")))??;
        let mut spec = spec;
        self.inner.security.seal_template(&mut spec.job)?;
        self.schedule_job(&spec.job, now)
            .await
            .map_err(|e| match e {
                Error::Spec(e) => ScheduleError::new(format!("job.{}", e.field), e.message).into(),
                Error::UnknownKind { kind, known } => ScheduleError::new(
                    "job.kind",
                    format!("no handler is registered for {kind:?} (registered: {known})"),
                )
                .into(),
                Error::UnknownQueue { queue, known } => ScheduleError::new(
                    "job.queue",
                    format!("unknown queue {queue:?} (configured: {known})"),
                )
                .into(),
                other => other,
            })?;
        Ok((spec, now))
    }

    /// The job a schedule submits now: its template resolved as a submit would (a
    /// stored pipeline's steps and defaults copied in), checked against this engine's
    /// handlers and queues.
    async fn schedule_job(&self, template: &JobSpec, now: Millis) -> Result<NewJob> {
        // The template's secrets were sealed when it was stored.
        self.new_job(template, now, crate::security::Origin::Stored)
            .await
    }
}
