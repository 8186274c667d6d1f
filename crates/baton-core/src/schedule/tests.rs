use super::*;
use proptest::prelude::*;
use serde_json::json;

fn ms(s: &str) -> Millis {
    time::parse_rfc3339(s).unwrap_or_else(|| panic!("bad time {s}"))
}

/// A time as the zone's clock shows it, with its offset: DST is visible.
fn local(tz: &str, t: Millis) -> String {
    let tz: Tz = tz.parse().unwrap();
    time::to_datetime(t)
        .with_timezone(&tz)
        .format("%Y-%m-%dT%H:%M:%S%:z")
        .to_string()
}

fn plan_of(trigger: Trigger, tz: &str, created_at: Millis) -> Plan {
    ScheduleSpec::new(trigger)
        .timezone(tz)
        .plan(created_at)
        .unwrap_or_else(|e| panic!("{e}"))
}

/// The next runs after `from`, in the zone's local time.
fn check(trigger: Trigger, tz: &str, from: &str, expected: &[&str]) {
    let plan = plan_of(trigger.clone(), tz, ms(from));
    let mut t = ms(from);
    let mut got = Vec::new();
    for _ in 0..expected.len() {
        match plan.next_after(t) {
            Some(next) => {
                got.push(local(tz, next));
                t = next;
            }
            None => break,
        }
    }
    assert_eq!(got, expected, "{trigger:?} in {tz} from {from}");
}

#[test]
fn daily_and_weekly() {
    check(
        Trigger::daily(2, 0),
        "UTC",
        "2026-01-01T00:00:00Z",
        &["2026-01-01T02:00:00+00:00", "2026-01-02T02:00:00+00:00"],
    );
    // From exactly the slot: strictly after it.
    check(
        Trigger::daily(2, 0),
        "UTC",
        "2026-01-01T02:00:00Z",
        &["2026-01-02T02:00:00+00:00"],
    );
    check(
        Trigger::weekly(&[Weekday::Fri, Weekday::Mon], 9, 0),
        "Europe/London",
        "2026-03-26T12:00:00Z",
        &[
            "2026-03-27T09:00:00+00:00",
            // The clocks went forward on Sunday the 29th: still nine on the clock.
            "2026-03-30T09:00:00+01:00",
            "2026-04-03T09:00:00+01:00",
        ],
    );
}

#[test]
fn spring_forward_runs_a_skipped_time_once_after_the_gap() {
    // New York: 2026-03-08 02:00 EST becomes 03:00 EDT.
    check(
        Trigger::daily(2, 30),
        "America/New_York",
        "2026-03-06T12:00:00-05:00",
        &[
            "2026-03-07T02:30:00-05:00",
            "2026-03-08T03:00:00-04:00",
            "2026-03-09T02:30:00-04:00",
        ],
    );
    // London: 2026-03-29 01:00 GMT becomes 02:00 BST.
    check(
        Trigger::daily(1, 30),
        "Europe/London",
        "2026-03-28T12:00:00Z",
        &["2026-03-29T02:00:00+01:00", "2026-03-30T01:30:00+01:00"],
    );
    // A wildcard fires once for the whole lost hour, then goes on.
    check(
        Trigger::cron("*/15 * * * *"),
        "America/New_York",
        "2026-03-08T01:40:00-05:00",
        &[
            "2026-03-08T01:45:00-05:00",
            "2026-03-08T03:00:00-04:00",
            "2026-03-08T03:15:00-04:00",
        ],
    );
    check(
        Trigger::cron("0 * * * *"),
        "Europe/London",
        "2026-03-29T00:30:00Z",
        &["2026-03-29T02:00:00+01:00", "2026-03-29T03:00:00+01:00"],
    );
}

#[test]
fn fall_back_fires_a_fixed_time_once_and_wildcards_twice() {
    // New York: 2026-11-01 02:00 EDT becomes 01:00 EST; 01:00-02:00 happens twice.
    check(
        Trigger::daily(1, 30),
        "America/New_York",
        "2026-10-31T12:00:00-04:00",
        &["2026-11-01T01:30:00-04:00", "2026-11-02T01:30:00-05:00"],
    );
    // London: 2026-10-25 02:00 BST becomes 01:00 GMT.
    check(
        Trigger::daily(1, 30),
        "Europe/London",
        "2026-10-24T12:00:00+01:00",
        &["2026-10-25T01:30:00+01:00", "2026-10-26T01:30:00+00:00"],
    );
    check(
        Trigger::cron("0 1 * * *"),
        "Europe/London",
        "2026-10-24T12:00:00+01:00",
        &["2026-10-25T01:00:00+01:00", "2026-10-26T01:00:00+00:00"],
    );
    // Fixed times of day, several: each once (no `*` in the time fields).
    check(
        Trigger::cron("0,30 1 * * *"),
        "Europe/London",
        "2026-10-24T12:00:00+01:00",
        &[
            "2026-10-25T01:00:00+01:00",
            "2026-10-25T01:30:00+01:00",
            "2026-10-26T01:00:00+00:00",
        ],
    );
    // A step in the minutes asks for every half hour of both 01:00 hours.
    check(
        Trigger::cron("*/30 1 * * *"),
        "Europe/London",
        "2026-10-24T12:00:00+01:00",
        &[
            "2026-10-25T01:00:00+01:00",
            "2026-10-25T01:30:00+01:00",
            "2026-10-25T01:00:00+00:00",
            "2026-10-25T01:30:00+00:00",
            "2026-10-26T01:00:00+00:00",
        ],
    );
    // From inside the repeated hour, second pass: the fixed time is behind.
    check(
        Trigger::daily(1, 30),
        "Europe/London",
        "2026-10-25T01:10:00+00:00",
        &["2026-10-26T01:30:00+00:00"],
    );
    // A cron that asks for every half hour gets every real half hour.
    check(
        Trigger::cron("*/30 * * * *"),
        "Europe/London",
        "2026-10-25T00:40:00+01:00",
        &[
            "2026-10-25T01:00:00+01:00",
            "2026-10-25T01:30:00+01:00",
            "2026-10-25T01:00:00+00:00",
            "2026-10-25T01:30:00+00:00",
            "2026-10-25T02:00:00+00:00",
        ],
    );
    // From late in the first pass, the second pass still comes first.
    check(
        Trigger::cron("*/30 * * * *"),
        "Europe/London",
        "2026-10-25T01:40:00+01:00",
        &[
            "2026-10-25T01:00:00+00:00",
            "2026-10-25T01:30:00+00:00",
            "2026-10-25T02:00:00+00:00",
        ],
    );
    check(
        Trigger::cron("30 * * * *"),
        "America/New_York",
        "2026-11-01T00:00:00-04:00",
        &[
            "2026-11-01T00:30:00-04:00",
            "2026-11-01T01:30:00-04:00",
            "2026-11-01T01:30:00-05:00",
            "2026-11-01T02:30:00-05:00",
        ],
    );
}

#[test]
fn month_ends_and_leap_days() {
    check(
        Trigger::cron("0 0 31 * *"),
        "UTC",
        "2026-01-31T00:00:00Z",
        &[
            "2026-03-31T00:00:00+00:00",
            "2026-05-31T00:00:00+00:00",
            "2026-07-31T00:00:00+00:00",
        ],
    );
    check(
        Trigger::cron("0 12 L * *"),
        "UTC",
        "2028-01-15T00:00:00Z",
        &[
            "2028-01-31T12:00:00+00:00",
            "2028-02-29T12:00:00+00:00",
            "2028-03-31T12:00:00+00:00",
        ],
    );
    check(
        Trigger::cron("0 0 29 2 *"),
        "Europe/London",
        "2025-03-01T00:00:00Z",
        &["2028-02-29T00:00:00+00:00", "2032-02-29T00:00:00+00:00"],
    );
    check(
        Trigger::cron("0 6 1 * *"),
        "America/New_York",
        "2026-12-15T00:00:00Z",
        &["2027-01-01T06:00:00-05:00", "2027-02-01T06:00:00-05:00"],
    );
}

#[test]
fn cron_fields_names_steps_and_seconds() {
    check(
        Trigger::cron("*/20 * * * * *"),
        "UTC",
        "2026-01-01T00:00:05Z",
        &[
            "2026-01-01T00:00:20+00:00",
            "2026-01-01T00:00:40+00:00",
            "2026-01-01T00:01:00+00:00",
        ],
    );
    check(
        Trigger::cron("0 9 * JAN MON-FRI"),
        "UTC",
        "2026-01-02T10:00:00Z",
        &["2026-01-05T09:00:00+00:00", "2026-01-06T09:00:00+00:00"],
    );
    check(
        Trigger::cron("@daily"),
        "Asia/Kolkata",
        "2026-01-01T00:00:00Z",
        &["2026-01-02T00:00:00+05:30"],
    );
}

#[test]
fn intervals_are_anchored_and_ignore_the_zone() {
    // Without start_at: one interval after creation, then every interval.
    check(
        Trigger::every(Duration::from_secs(6 * 3600)),
        "UTC",
        "2026-01-01T00:00:00Z",
        &["2026-01-01T06:00:00+00:00", "2026-01-01T12:00:00+00:00"],
    );
    check(
        Trigger::every_from(Duration::from_secs(6 * 3600), ms("2026-01-01T00:15:00Z")),
        "UTC",
        "2025-12-31T00:00:00Z",
        &["2026-01-01T00:15:00+00:00", "2026-01-01T06:15:00+00:00"],
    );
    // Anchored: asked late, it keeps its phase instead of drifting.
    check(
        Trigger::every_from(Duration::from_secs(3600), ms("2026-01-01T00:15:00Z")),
        "UTC",
        "2026-01-03T07:59:00Z",
        &["2026-01-03T08:15:00+00:00"],
    );
    // Absolute time: 24 hours across a DST change is 13:00 on the clock.
    check(
        Trigger::every_from(Duration::from_secs(86_400), ms("2026-03-07T12:00:00-05:00")),
        "America/New_York",
        "2026-03-07T12:00:00-05:00",
        &["2026-03-08T13:00:00-04:00"],
    );
    let created = ms("2026-01-01T00:00:00Z");
    let plan = plan_of(Trigger::every(Duration::from_secs(60)), "UTC", created);
    assert_eq!(plan.first_run(created), Some(created + 60_000));
    let start = ms("2026-01-01T00:00:00Z");
    let plan = plan_of(
        Trigger::every_from(Duration::from_secs(60), start),
        "UTC",
        start,
    );
    assert_eq!(plan.first_run(start), Some(start), "start_at now fires now");
}

#[test]
fn once_and_manual() {
    let at = ms("2026-05-01T10:00:00Z");
    check(
        Trigger::once(at),
        "UTC",
        "2026-01-01T00:00:00Z",
        &["2026-05-01T10:00:00+00:00"],
    );
    let plan = plan_of(Trigger::once(at), "UTC", 0);
    assert_eq!(plan.next_after(at), None, "a once fires once");
    assert_eq!(plan.first_run(at + 1000), Some(at), "a passed once is due");
    let plan = plan_of(Trigger::Manual, "UTC", 0);
    assert_eq!(plan.first_run(at), None);
    assert_eq!(plan.next_after(at), None);
}

const HOUR: Millis = 3_600_000;
const GRACE: Duration = DEFAULT_MISFIRE_GRACE;

fn fire(at: Millis) -> DueFire {
    DueFire {
        at,
        catch_up: false,
    }
}

fn catch_up(at: Millis) -> DueFire {
    DueFire { at, catch_up: true }
}

#[test]
fn due_applies_the_misfire_policy_after_downtime() {
    let n = ms("2026-01-01T01:00:00Z");
    let hourly = plan_of(Trigger::every_from(Duration::from_secs(3600), n), "UTC", n);
    let check = |now: Millis, misfire: Misfire, limit: u32, fires: &[DueFire], next: Millis| {
        let due = hourly.due(n, now, misfire, limit, GRACE);
        assert_eq!(due.fires, fires, "now {} {misfire:?}", local("UTC", now));
        assert_eq!(due.next_run, Some(next), "now {}", local("UTC", now));
    };
    // Not yet due.
    assert_eq!(hourly.due(n, n - 1, Misfire::RunOnce, 10, GRACE).fires, []);
    // On time (a little late, within the grace): every policy fires it.
    for m in [Misfire::Skip, Misfire::RunOnce, Misfire::RunAll] {
        check(n + 10, m, 10, &[fire(n)], n + HOUR);
    }
    // Down from before 01:00 until 06:30: six runs missed (01:00 to 06:00).
    let now = n + 5 * HOUR + HOUR / 2;
    check(now, Misfire::Skip, 10, &[], n + 6 * HOUR);
    check(
        now,
        Misfire::RunOnce,
        10,
        &[catch_up(n + 5 * HOUR)],
        n + 6 * HOUR,
    );
    check(
        now,
        Misfire::RunAll,
        3,
        &[
            catch_up(n + 3 * HOUR),
            catch_up(n + 4 * HOUR),
            catch_up(n + 5 * HOUR),
        ],
        n + 6 * HOUR,
    );
    let all: Vec<DueFire> = (0..6).map(|k| catch_up(n + k * HOUR)).collect();
    check(now, Misfire::RunAll, 100, &all, n + 6 * HOUR);
    assert_eq!(hourly.due(n, now, Misfire::Skip, 10, GRACE).dropped, 6);
    assert_eq!(hourly.due(n, now, Misfire::RunAll, 3, GRACE).dropped, 3);
    // Back 10 s after 06:00: that run is on time and stands in for run_once's catch-up.
    let now = n + 5 * HOUR + 10_000;
    check(
        now,
        Misfire::RunOnce,
        10,
        &[fire(n + 5 * HOUR)],
        n + 6 * HOUR,
    );
    check(now, Misfire::Skip, 10, &[fire(n + 5 * HOUR)], n + 6 * HOUR);
    let mut all: Vec<DueFire> = (0..5).map(|k| catch_up(n + k * HOUR)).collect();
    all.push(fire(n + 5 * HOUR));
    check(now, Misfire::RunAll, 100, &all, n + 6 * HOUR);
}

#[test]
fn due_handles_once_and_frequent_triggers() {
    let at = ms("2026-01-01T01:00:00Z");
    let once = plan_of(Trigger::once(at), "UTC", 0);
    let due = once.due(at, at + 3 * HOUR, Misfire::RunOnce, 10, GRACE);
    assert_eq!((due.fires, due.next_run), (vec![catch_up(at)], None));
    let due = once.due(at, at + 3 * HOUR, Misfire::Skip, 10, GRACE);
    assert_eq!((due.fires, due.next_run), (vec![], None));

    // A per-second cron found three seconds late fires each second it passed.
    let every_second = plan_of(Trigger::cron("* * * * * *"), "UTC", 0);
    let due = every_second.due(at, at + 3000, Misfire::Skip, 10, GRACE);
    assert_eq!(
        due.fires,
        (0..4).map(|k| fire(at + k * 1000)).collect::<Vec<_>>()
    );
    assert_eq!(due.next_run, Some(at + 4000));

    // A year down: the catch-up costs what it keeps, not what was missed.
    let t0 = std::time::Instant::now();
    let now = at + 365 * 24 * HOUR;
    let due = every_second.due(at, now, Misfire::RunAll, 5, GRACE);
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    let missed: Vec<DueFire> = due.fires.iter().filter(|f| f.catch_up).copied().collect();
    assert_eq!(missed.len(), 5);
    assert_eq!(
        missed[4].at,
        now - 60_000 - 1000,
        "the latest missed second"
    );
    assert_eq!(due.fires.len(), 5 + 61, "and the last minute on time");
}

fn invalid(spec: serde_json::Value, field: &str, part: &str) {
    let parsed: Result<ScheduleSpec, _> = serde_json::from_value(spec.clone());
    let err = match parsed {
        Err(e) => {
            let m = e.to_string();
            assert!(m.contains(part), "{spec}: {m} lacks {part}");
            return;
        }
        Ok(s) => s
            .validate(ms("2026-01-01T00:00:00Z"), &Limits::default())
            .expect_err(&spec.to_string()),
    };
    assert_eq!(err.field, field, "{spec}: {err}");
    assert!(err.to_string().contains(part), "{spec}: {err} lacks {part}");
}

#[test]
fn bad_schedules_name_the_field_and_the_value() {
    let job = json!({"kind": "report"});
    let with = |trigger: serde_json::Value| json!({"job": job, "trigger": trigger});
    invalid(
        with(json!({"type": "cron", "expr": "*/61 * * * *"})),
        "trigger.expr",
        "invalid cron expression \"*/61 * * * *\": minute step 61 is out of range",
    );
    invalid(
        with(json!({"type": "cron", "expr": "0 25 * * *"})),
        "trigger.expr",
        "invalid cron expression \"0 25 * * *\": hour 25 is out of range (0-23)",
    );
    invalid(
        with(json!({"type": "cron", "expr": "* * * *"})),
        "trigger.expr",
        "expected 5 fields",
    );
    invalid(
        with(json!({"type": "cron", "expr": "0 0 * * FUNDAY"})),
        "trigger.expr",
        "invalid cron expression \"0 0 * * FUNDAY\"",
    );
    invalid(
        with(json!({"type": "cron", "expr": "0 0 31 2 *"})),
        "trigger.expr",
        "never matches",
    );
    invalid(
        with(json!({"type": "cron", "expr": ""})),
        "trigger.expr",
        "empty",
    );
    invalid(
        json!({"job": job, "trigger": {"type": "daily", "hour": 2}, "timezone": "Mars/Olympus"}),
        "timezone",
        "unknown time zone \"Mars/Olympus\"",
    );
    invalid(
        with(json!({"type": "interval", "every": "0s"})),
        "trigger.every",
        "\"0s\" is zero",
    );
    invalid(
        with(json!({"type": "interval", "every": "10ms"})),
        "trigger.every",
        "shorter than",
    );
    invalid(
        with(json!({"type": "interval", "every": "often"})),
        "trigger.every",
        "not a duration",
    );
    invalid(
        with(json!({"type": "interval", "every": "1h", "start_at": "soon"})),
        "trigger.start_at",
        "RFC 3339",
    );
    invalid(
        with(json!({"type": "daily", "hour": 24})),
        "trigger.hour",
        "24 is out of range",
    );
    invalid(
        with(json!({"type": "daily", "hour": 2, "minute": 60})),
        "trigger.minute",
        "60 is out of range",
    );
    invalid(
        with(json!({"type": "weekly", "days": ["mon", "caturday"], "hour": 9})),
        "trigger.days[1]",
        "\"caturday\" is not a day",
    );
    invalid(
        with(json!({"type": "weekly", "days": [], "hour": 9})),
        "trigger.days",
        "at least one day",
    );
    invalid(
        with(json!({"type": "once", "at": "tomorrow"})),
        "trigger.at",
        "RFC 3339",
    );
    invalid(
        with(json!({"type": "hourly"})),
        "",
        "unknown variant `hourly`",
    );
    invalid(
        with(json!({"type": "daily", "hour": 2, "second": 5})),
        "",
        "unknown field `second`",
    );
    invalid(
        json!({"job": {"kind": ""}, "trigger": {"type": "manual"}}),
        "job.kind",
        "must not be empty",
    );
    invalid(
        json!({"job": {"kind": "x", "id": "fixed"}, "trigger": {"type": "manual"}}),
        "job.id",
        "leave job.id out",
    );
    invalid(
        json!({"job": {"kind": "x", "run_at": "2026-01-01T00:00:00Z"}, "trigger": {"type": "manual"}}),
        "job.run_at",
        "job.delay",
    );
    invalid(
        json!({"id": "a b", "job": job, "trigger": {"type": "manual"}}),
        "id",
        "' '",
    );
    invalid(
        json!({"job": job, "trigger": {"type": "manual"}, "misfire_limit": 0}),
        "misfire_limit",
        "out of range",
    );
    invalid(
        json!({"job": job, "trigger": {"type": "manual"}, "misfire": "sometimes"}),
        "",
        "unknown variant `sometimes`",
    );
}

#[test]
fn validation_fills_in_defaults_and_normalizes() {
    let spec: ScheduleSpec = serde_json::from_value(json!({
        "id": "alfabeta-daily",
        "job": {"kind": "pipeline", "pipeline": "alfabeta"},
        "timezone": "Europe/London",
        "trigger": {"type": "weekly", "days": ["Friday", "mon", "MON"], "hour": 9},
    }))
    .unwrap();
    let v = spec
        .validate(ms("2026-01-01T00:00:00Z"), &Limits::default())
        .unwrap();
    assert_eq!(
        serde_json::to_value(&v).unwrap(),
        json!({
            "id": "alfabeta-daily",
            "job": {"kind": "pipeline", "pipeline": "alfabeta"},
            "timezone": "Europe/London",
            "trigger": {"type": "weekly", "days": ["mon", "fri"], "hour": 9, "minute": 0},
            "enabled": true,
            "misfire": "run_once",
            "misfire_limit": 100,
            "overlap": "allow",
        })
    );
    let v = ScheduleSpec::daily(2, 0)
        .job(JobSpec::new("x"))
        .validate(0, &Limits::default())
        .unwrap();
    assert_eq!(v.timezone.as_deref(), Some("UTC"));
    assert!(v.id.is_some(), "an id is generated");
    // The Rust helpers build the wire shape.
    assert_eq!(
        serde_json::to_value(Trigger::every_from(Duration::from_secs(21_600), 0)).unwrap(),
        json!({"type": "interval", "every": "6h", "start_at": "1970-01-01T00:00:00.000Z"})
    );
    assert_eq!(
        serde_json::to_value(Trigger::weekly(&[Weekday::Mon], 9, 30)).unwrap(),
        json!({"type": "weekly", "days": ["mon"], "hour": 9, "minute": 30})
    );
}

const ZONES: &[&str] = &[
    "UTC",
    "Europe/London",
    "America/New_York",
    "Australia/Lord_Howe",
    "Australia/Sydney",
    "America/Santiago",
    "Asia/Kolkata",
];

const CRONS: &[&str] = &[
    "*/15 * * * *",
    "30 * * * *",
    "0 1 * * *",
    "30 2 * * *",
    "0 0 L * *",
    "0 9 * * MON-FRI",
    "*/20 * * * * *",
    "15 0-3 * * *",
    "0,30 1,2 * * *",
    "*/10 1 * * *",
];

fn trigger_strategy() -> impl Strategy<Value = Trigger> {
    prop_oneof![
        (0..CRONS.len()).prop_map(|i| Trigger::cron(CRONS[i])),
        (0u32..24, 0u32..60).prop_map(|(h, m)| Trigger::daily(h, m)),
        (1u64..200_000)
            .prop_map(|s| Trigger::every_from(Duration::from_secs(s), 1_600_000_000_000)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Next runs strictly increase, whatever the trigger, zone and start.
    #[test]
    fn next_runs_strictly_increase(
        trigger in trigger_strategy(),
        zone in 0..ZONES.len(),
        start in 1_577_836_800_000i64..2_082_758_400_000,
    ) {
        let plan = plan_of(trigger.clone(), ZONES[zone], 0);
        let mut t = start;
        for _ in 0..50 {
            let next = plan.next_after(t);
            prop_assert!(next.is_some(), "{trigger:?} stopped after {t}");
            let next = next.unwrap();
            prop_assert!(next > t, "{trigger:?} in {}: {} after {}", ZONES[zone], next, t);
            t = next;
        }
    }

    /// A daily trigger fires exactly once on each day of a year, DST or not.
    #[test]
    fn daily_fires_once_a_day(
        hour in 0u32..24,
        minute in 0u32..60,
        zone in 0..ZONES.len(),
        year in 2020i32..2035,
    ) {
        let tz: Tz = ZONES[zone].parse().unwrap();
        let plan = plan_of(Trigger::daily(hour, minute), ZONES[zone], 0);
        let start = tz.with_ymd_and_hms(year, 1, 1, 0, 0, 0).earliest().unwrap().timestamp_millis();
        let end = tz.with_ymd_and_hms(year + 1, 1, 1, 0, 0, 0).earliest().unwrap().timestamp_millis();
        let mut days = std::collections::BTreeSet::new();
        let mut t = start - 1;
        let mut n = 0;
        while let Some(next) = plan.next_after(t) {
            if next >= end { break; }
            days.insert(civil(&tz, next).date());
            n += 1;
            t = next;
        }
        let expected = if chrono::NaiveDate::from_ymd_opt(year, 2, 29).is_some() { 366 } else { 365 };
        prop_assert_eq!(n, expected);
        prop_assert_eq!(days.len(), expected);
    }
}
