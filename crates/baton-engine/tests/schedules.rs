//! The scheduler in the engine: fires on a manual clock (no test sleeps for the time a
//! schedule waits), misfire policies after a simulated downtime, overlap policies,
//! pause, resume, trigger, delete, restart, and refused input.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use baton_engine::{
    Engine, Error, ErrorCode, Event, EventKind, FireAction, FireReason, FireRecord, JobFilter,
    JobSpec, ManualClock, Misfire, Overlap, Schedule, ScheduleFilter, ScheduleSpec, State, Trigger,
};
use baton_store::{SqliteOptions, SqliteStore, Store};
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::sync::{Semaphore, broadcast};

/// 2026-01-01T00:00:00Z
const T0: i64 = 1_767_225_600_000;
const MINUTE: Duration = Duration::from_secs(60);
const HOUR: i64 = 3_600_000;

struct Harness {
    engine: Engine,
    clock: ManualClock,
    /// Taken from the store before the engine starts: fires made at start are in it.
    events: broadcast::Receiver<Arc<Event>>,
    /// Permits for `hold` jobs: each finishes when given one.
    gate: Arc<Semaphore>,
}

async fn start(db: &Path, now: i64) -> Harness {
    let clock = ManualClock::new(now);
    let gate = Arc::new(Semaphore::new(0));
    let g = gate.clone();
    let store = SqliteStore::open(SqliteOptions::new(db)).unwrap();
    let events = store.subscribe();
    let engine = Engine::builder()
        .store(Arc::new(store))
        .clock(Arc::new(clock.clone()))
        .queue("reports", 4)
        .handler("report", |ctx, payload| async move {
            Ok(json!({"job": ctx.job_id(), "payload": payload}))
        })
        .handler("hold", move |_ctx, _payload| {
            let g = g.clone();
            async move {
                g.acquire().await.unwrap().forget();
                Ok(Value::Null)
            }
        })
        .build()
        .await
        .unwrap();
    Harness {
        engine,
        clock,
        events,
        gate,
    }
}

async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(20), f)
        .await
        .unwrap_or_else(|_| panic!("{what}: not within 20 s"))
}

impl Harness {
    /// The next `schedule.fired` event's data.
    async fn fired(&mut self) -> Value {
        within("a schedule.fired event", async {
            loop {
                let e = self.events.recv().await.expect("events");
                if e.kind == EventKind::ScheduleFired {
                    return e.data.clone();
                }
            }
        })
        .await
    }

    /// The next `n` fires' data.
    async fn fires(&mut self, n: usize) -> Vec<Value> {
        let mut out = Vec::new();
        for _ in 0..n {
            out.push(self.fired().await);
        }
        out
    }

    /// Gives the scheduler time to act on something that should not fire.
    async fn settle(&self) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    async fn history(&self, id: &str) -> Vec<FireRecord> {
        let mut page = self.engine.schedule_history(id, None, 1000).await.unwrap();
        page.fires.reverse();
        page.fires
    }

    async fn wait_state(&self, id: &str, state: State) {
        within(&format!("job {id} {state}"), async {
            loop {
                if self.engine.get(id).await.unwrap().state == state {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
    }
}

fn report(id: &str, trigger: Trigger) -> ScheduleSpec {
    ScheduleSpec::new(trigger).id(id).job(
        JobSpec::new("report")
            .queue("reports")
            .payload(json!({"n": 1})),
    )
}

#[tokio::test]
async fn an_interval_schedule_fires_each_interval_and_its_jobs_run() {
    let dir = TempDir::new().unwrap();
    let mut h = start(&dir.path().join("baton.db"), T0).await;
    let s = h
        .engine
        .create_schedule(report("tick", Trigger::every(MINUTE)))
        .await
        .unwrap();
    assert_eq!(s.next_run, Some(T0 + 60_000), "one interval after creation");
    h.clock.advance(Duration::from_secs(59));
    h.settle().await;
    assert!(h.history("tick").await.is_empty(), "not before its time");

    h.clock.advance(Duration::from_secs(1));
    let fired = h.fired().await;
    assert_eq!(fired["schedule_id"], "tick");
    assert_eq!(fired["reason"], "schedule");
    assert_eq!(fired["scheduled_for"], "2026-01-01T00:01:00.000Z");
    let job_id = fired["job_id"].as_str().unwrap().to_owned();
    let job = within("the job", h.engine.wait(&job_id)).await.unwrap();
    assert_eq!(job.state, State::Completed);
    assert_eq!(job.schedule_id.as_deref(), Some("tick"));
    assert_eq!(job.queue, "reports");
    assert_eq!(job.result.unwrap()["payload"], json!({"n": 1}));

    h.clock.advance(MINUTE);
    let second = h.fired().await;
    assert_eq!(second["scheduled_for"], "2026-01-01T00:02:00.000Z");
    within(
        "the second job",
        h.engine.wait(second["job_id"].as_str().unwrap()),
    )
    .await
    .unwrap();
    let s = h.engine.schedule("tick").await.unwrap();
    assert_eq!(s.run_count, 2);
    assert_eq!(s.last_run, Some(T0 + 120_000));
    assert_eq!(s.next_run, Some(T0 + 180_000));
    let history = h.history("tick").await;
    assert_eq!(history.len(), 2);
    assert!(history.iter().all(|f| f.outcome == Some(State::Completed)));
    assert_eq!(history[0].job_id.as_deref(), Some(job_id.as_str()));
    let jobs = h
        .engine
        .list(JobFilter {
            schedule: Some("tick".into()),
            limit: 100,
            ..JobFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(jobs.total, 2);
}

#[tokio::test]
async fn calendar_schedules_fire_in_their_time_zone() {
    let dir = TempDir::new().unwrap();
    // 2026-03-07 12:00 in New York; the clocks go forward on the 8th at 02:00.
    let start_at = T0 + (65 * 24 + 17) * HOUR;
    let mut h = start(&dir.path().join("baton.db"), start_at).await;
    let s = h
        .engine
        .create_schedule(
            ScheduleSpec::daily(2, 30)
                .id("ny")
                .timezone("America/New_York")
                .job(JobSpec::new("report").queue("reports")),
        )
        .await
        .unwrap();
    let first = s.next_run.unwrap();
    assert_eq!(
        baton_core::time::to_rfc3339(first),
        "2026-03-08T07:00:00.000Z"
    );
    h.clock.set(first);
    let fired = h.fired().await;
    assert_eq!(fired["scheduled_for"], "2026-03-08T07:00:00.000Z");
    let s = h.engine.schedule("ny").await.unwrap();
    // 02:30 EDT on the 9th.
    assert_eq!(
        s.next_run.map(baton_core::time::to_rfc3339).as_deref(),
        Some("2026-03-09T06:30:00.000Z")
    );
}

#[tokio::test]
async fn schedules_and_history_survive_a_restart_and_misfires_follow_their_policy() {
    let dir = TempDir::new().unwrap();
    let db = dir.path().join("baton.db");
    let hourly = |id: &str, misfire: Misfire| {
        report(
            id,
            Trigger::every_from(Duration::from_secs(3600), T0 + HOUR),
        )
        .misfire(misfire)
    };
    {
        let mut h = start(&db, T0).await;
        h.engine
            .create_schedule(hourly("skip", Misfire::Skip))
            .await
            .unwrap();
        h.engine
            .create_schedule(hourly("once", Misfire::RunOnce))
            .await
            .unwrap();
        h.engine
            .create_schedule(hourly("all", Misfire::RunAll).misfire_limit(3))
            .await
            .unwrap();
        h.engine
            .create_schedule(hourly("all-unbounded", Misfire::RunAll))
            .await
            .unwrap();
        h.clock.set(T0 + HOUR);
        let fires = h.fires(4).await;
        for f in &fires {
            within("first jobs", h.engine.wait(f["job_id"].as_str().unwrap()))
                .await
                .unwrap();
        }
        h.engine.shutdown(Duration::from_secs(5)).await;
    }
    // Down from 01:00 to 06:30: the runs of 02:00 to 06:00 (five) were missed.
    let mut h = start(&db, T0 + 6 * HOUR + HOUR / 2).await;
    let fires = h.fires(1 + 3 + 5).await;
    h.settle().await;
    let mut by_schedule = std::collections::BTreeMap::<String, Vec<String>>::new();
    for f in &fires {
        assert_eq!(f["reason"], "catch_up", "{f}");
        by_schedule
            .entry(f["schedule_id"].as_str().unwrap().into())
            .or_default()
            .push(f["scheduled_for"].as_str().unwrap().into());
    }
    assert_eq!(by_schedule.get("skip"), None, "skip makes nothing up");
    assert_eq!(by_schedule["once"], ["2026-01-01T06:00:00.000Z"]);
    assert_eq!(
        by_schedule["all"],
        [
            "2026-01-01T04:00:00.000Z",
            "2026-01-01T05:00:00.000Z",
            "2026-01-01T06:00:00.000Z"
        ]
    );
    assert_eq!(by_schedule["all-unbounded"].len(), 5);
    for id in ["skip", "once", "all", "all-unbounded"] {
        let s = h.engine.schedule(id).await.unwrap();
        assert_eq!(s.next_run, Some(T0 + 7 * HOUR), "{id} goes on from now");
        let history = h.history(id).await;
        assert_eq!(
            history[0].scheduled_for,
            T0 + HOUR,
            "{id}: history survived"
        );
        assert_eq!(history[0].outcome, Some(State::Completed));
        assert_eq!(history[0].reason, FireReason::Schedule);
        assert_eq!(s.run_count as usize, history.len());
    }
    assert_eq!(h.history("all-unbounded").await.len(), 6);
    // Back to normal: the next hour fires on time.
    h.clock.set(T0 + 7 * HOUR);
    let fires = h.fires(4).await;
    assert!(fires.iter().all(|f| f["reason"] == "schedule"));
}

#[tokio::test]
async fn overlap_policies_decide_while_the_previous_job_runs() {
    let dir = TempDir::new().unwrap();
    let mut h = start(&dir.path().join("baton.db"), T0).await;
    let hold = |id: &str, overlap: Overlap| {
        ScheduleSpec::every(MINUTE)
            .id(id)
            .job(JobSpec::new("hold").queue("reports"))
            .overlap(overlap)
    };
    for (id, overlap) in [
        ("allow", Overlap::Allow),
        ("skip", Overlap::Skip),
        ("queue", Overlap::Queue),
    ] {
        h.engine.create_schedule(hold(id, overlap)).await.unwrap();
    }
    h.clock.advance(MINUTE);
    let first: Vec<Value> = h.fires(3).await;
    for f in &first {
        h.wait_state(f["job_id"].as_str().unwrap(), State::Running)
            .await;
    }
    h.clock.advance(MINUTE);
    let second = h.fires(3).await;
    let by = |id: &str| {
        second
            .iter()
            .find(|f| f["schedule_id"] == id)
            .unwrap()
            .clone()
    };
    assert_eq!(by("allow")["action"], "created");
    assert_eq!(by("allow")["state"], "queued");
    let skipped = by("skip");
    assert_eq!(skipped["action"], "skipped");
    assert_eq!(skipped["job_id"], Value::Null);
    assert!(
        skipped["message"]
            .as_str()
            .unwrap()
            .contains("is still running"),
        "{skipped}"
    );
    let queued = by("queue");
    assert_eq!(queued["action"], "created");
    assert_eq!(queued["state"], "awaiting");
    let waiting = queued["job_id"].as_str().unwrap().to_owned();
    h.settle().await;
    assert_eq!(h.engine.get(&waiting).await.unwrap().state, State::Awaiting);

    // Let every job end (a permit each, whoever takes them first): the awaiting one is
    // queued only once the job before it has ended.
    let first_queue_job = first.iter().find(|f| f["schedule_id"] == "queue").unwrap()["job_id"]
        .as_str()
        .unwrap()
        .to_owned();
    h.gate.add_permits(5);
    let before = within("first of queue", h.engine.wait(&first_queue_job))
        .await
        .unwrap();
    let done = within("the awaiting job", h.engine.wait(&waiting))
        .await
        .unwrap();
    assert_eq!(done.state, State::Completed);
    assert!(
        done.started_at.unwrap() >= before.finished_at.unwrap(),
        "started {:?}, the one before ended {:?}",
        done.started_at,
        before.finished_at
    );
    let events: Vec<EventKind> = h
        .engine
        .events(&waiting, 0)
        .await
        .unwrap()
        .iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(
        events,
        [
            EventKind::Submitted,
            EventKind::Queued,
            EventKind::Started,
            EventKind::Completed
        ]
    );
    let history = h.history("skip").await;
    assert_eq!(
        history.iter().map(|f| f.action).collect::<Vec<_>>(),
        [FireAction::Created, FireAction::Skipped]
    );
    assert_eq!(h.engine.schedule("skip").await.unwrap().run_count, 1);
    h.gate.add_permits(100);
}

#[tokio::test]
async fn awaiting_jobs_are_released_after_a_restart() {
    let dir = TempDir::new().unwrap();
    let db = dir.path().join("baton.db");
    let waiting;
    {
        let mut h = start(&db, T0).await;
        h.engine
            .create_schedule(
                ScheduleSpec::manual()
                    .id("q")
                    .job(JobSpec::new("hold").queue("reports"))
                    .overlap(Overlap::Queue),
            )
            .await
            .unwrap();
        let first = h.engine.trigger_schedule("q").await.unwrap();
        h.wait_state(&first.jobs[0].id, State::Running).await;
        let second = h.engine.trigger_schedule("q").await.unwrap();
        waiting = second.jobs[0].id.clone();
        assert_eq!(second.jobs[0].state, State::Awaiting);
        assert_eq!(second.records[0].reason, FireReason::Manual);
        let _ = h.fires(2).await;
        // Stop with the first still running: it is handed back and runs again later.
        h.engine.shutdown(Duration::from_millis(100)).await;
    }
    let h = start(&db, T0 + 1000).await;
    h.gate.add_permits(1);
    h.wait_state(&waiting, State::Running).await;
    h.gate.add_permits(1);
    within("the awaiting job", h.engine.wait(&waiting))
        .await
        .unwrap();
}

#[tokio::test]
async fn pause_resume_trigger_and_delete() {
    let dir = TempDir::new().unwrap();
    let mut h = start(&dir.path().join("baton.db"), T0).await;
    h.engine
        .create_schedule(report("p", Trigger::every(MINUTE)))
        .await
        .unwrap();
    let paused = h.engine.pause_schedule("p").await.unwrap();
    assert!(!paused.enabled);
    assert_eq!(paused.next_run, None);
    h.clock.advance(3 * MINUTE);
    h.settle().await;
    assert!(
        h.history("p").await.is_empty(),
        "a paused schedule does not fire"
    );

    // By hand, paused or not.
    let fired = h.engine.trigger_schedule("p").await.unwrap();
    assert_eq!(fired.records[0].reason, FireReason::Manual);
    assert_eq!(fired.schedule.run_count, 1);
    assert_eq!(fired.schedule.next_run, None, "still paused");
    within("the job", h.engine.wait(&fired.jobs[0].id))
        .await
        .unwrap();
    let _ = h.fired().await;

    let resumed = h.engine.resume_schedule("p").await.unwrap();
    assert!(resumed.enabled);
    // No catch-up of the paused minutes: the next slot after now (03:00 + 1 min).
    assert_eq!(resumed.next_run, Some(T0 + 4 * 60_000));
    h.clock.advance(MINUTE);
    let f = h.fired().await;
    assert_eq!(f["scheduled_for"], "2026-01-01T00:04:00.000Z");
    assert_eq!(f["reason"], "schedule");

    // A manual schedule fires only by hand.
    let m = h
        .engine
        .create_schedule(report("m", Trigger::Manual))
        .await
        .unwrap();
    assert_eq!(m.next_run, None);

    let deleted = h.engine.delete_schedule("p").await.unwrap();
    assert_eq!(deleted.id, "p");
    h.clock.advance(10 * MINUTE);
    h.settle().await;
    assert!(matches!(
        h.engine.schedule("p").await,
        Err(Error::ScheduleNotFound(_))
    ));
    assert!(matches!(
        h.engine.schedule_history("p", None, 10).await,
        Err(Error::ScheduleNotFound(_))
    ));
    let jobs = h
        .engine
        .list(JobFilter {
            schedule: Some("p".into()),
            limit: 10,
            ..JobFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(jobs.total, 2, "its jobs stay");
    let page = h
        .engine
        .schedules(ScheduleFilter {
            limit: 10,
            ..ScheduleFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(
        page.schedules
            .iter()
            .map(|s: &Schedule| s.id.as_str())
            .collect::<Vec<_>>(),
        ["m"]
    );
}

#[tokio::test]
async fn changes_wake_the_scheduler_and_a_put_of_the_same_spec_keeps_the_cadence() {
    let dir = TempDir::new().unwrap();
    let mut h = start(&dir.path().join("baton.db"), T0).await;
    // Far away first: the scheduler sleeps until then ...
    h.engine
        .create_schedule(report("later", Trigger::daily(12, 0)))
        .await
        .unwrap();
    h.settle().await;
    // ... and a new, earlier schedule wakes it.
    h.engine
        .create_schedule(report("soon", Trigger::once(T0 + 1000)))
        .await
        .unwrap();
    h.clock.advance(Duration::from_secs(1));
    let f = h.fired().await;
    assert_eq!(f["schedule_id"], "soon");
    assert_eq!(h.engine.schedule("soon").await.unwrap().next_run, None);

    // Moving a schedule earlier wakes it too.
    let put = h
        .engine
        .put_schedule(report("later", Trigger::every(MINUTE)))
        .await
        .unwrap();
    assert!(!put.created);
    assert_eq!(
        put.schedule.next_run,
        Some(T0 + 60_000),
        "anchored to the schedule's creation"
    );
    // Putting the same spec again does not move the next run.
    h.clock.advance(Duration::from_secs(30));
    let again = h
        .engine
        .put_schedule(report("later", Trigger::every(MINUTE)))
        .await
        .unwrap();
    assert_eq!(again.schedule.next_run, Some(T0 + 60_000));
    h.clock.advance(Duration::from_secs(30));
    let f = h.fired().await;
    assert_eq!(f["schedule_id"], "later");
    assert_eq!(f["scheduled_for"], "2026-01-01T00:01:00.000Z");
}

#[tokio::test]
async fn bad_schedules_are_refused_with_the_field_named() {
    let dir = TempDir::new().unwrap();
    let h = start(&dir.path().join("baton.db"), T0).await;
    let refused = |r: Result<Schedule, Error>| match r {
        Err(e) => {
            assert_eq!(e.code(), ErrorCode::InvalidSpec, "{e}");
            e.to_string()
        }
        Ok(s) => panic!("accepted {s:?}"),
    };
    let m = refused(
        h.engine
            .create_schedule(report("c", Trigger::cron("*/61 * * * *")))
            .await,
    );
    assert_eq!(
        m,
        "invalid schedule: trigger.expr: invalid cron expression \"*/61 * * * *\": minute step 61 is out of range (1-60)"
    );
    let m = refused(
        h.engine
            .create_schedule(report("z", Trigger::daily(2, 0)).timezone("Europe/Lndon"))
            .await,
    );
    assert!(
        m.starts_with("invalid schedule: timezone: unknown time zone \"Europe/Lndon\""),
        "{m}"
    );
    let m = refused(
        h.engine
            .create_schedule(report("i", Trigger::every(Duration::ZERO)))
            .await,
    );
    assert!(
        m.starts_with("invalid schedule: trigger.every: \"0ms\" is zero"),
        "{m}"
    );
    let m = refused(
        h.engine
            .create_schedule(ScheduleSpec::daily(1, 0).id("k").job(JobSpec::new("nope")))
            .await,
    );
    assert!(
        m.starts_with("invalid schedule: job.kind: no handler is registered for \"nope\""),
        "{m}"
    );
    let m = refused(
        h.engine
            .create_schedule(
                ScheduleSpec::daily(1, 0)
                    .id("q")
                    .job(JobSpec::new("report").queue("elsewhere")),
            )
            .await,
    );
    assert!(m.contains("job.queue: unknown queue \"elsewhere\""), "{m}");
    let m = refused(
        h.engine
            .create_schedule(
                ScheduleSpec::daily(1, 0)
                    .id("p")
                    .job(JobSpec::stored_pipeline("missing")),
            )
            .await,
    );
    assert!(
        m.contains("job.pipeline: no stored pipeline is named \"missing\""),
        "{m}"
    );
    assert!(
        h.engine
            .schedules(ScheduleFilter {
                limit: 10,
                ..ScheduleFilter::default()
            })
            .await
            .unwrap()
            .schedules
            .is_empty(),
        "nothing was stored"
    );

    h.engine
        .create_schedule(report("dup", Trigger::Manual))
        .await
        .unwrap();
    match h
        .engine
        .create_schedule(report("dup", Trigger::daily(1, 0)))
        .await
    {
        Err(e @ Error::ScheduleExists(_)) => assert_eq!(e.code(), ErrorCode::Conflict),
        other => panic!("expected ScheduleExists, got {other:?}"),
    }
    for r in [
        h.engine.pause_schedule("ghost").await,
        h.engine.resume_schedule("ghost").await,
        h.engine.delete_schedule("ghost").await,
    ] {
        assert!(matches!(r, Err(Error::ScheduleNotFound(_))), "{r:?}");
    }
    assert!(matches!(
        h.engine.trigger_schedule("ghost").await,
        Err(Error::ScheduleNotFound(_))
    ));
}
