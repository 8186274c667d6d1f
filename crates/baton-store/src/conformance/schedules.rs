//! Conformance: schedules, their fires and their history.

use std::sync::Arc;
use std::time::Duration;

use baton_core::schedule::{Overlap, ScheduleSpec, Trigger};
use baton_core::{EventKind, JobSpec, Limits, Millis, Schedule, State};
use serde_json::json;

use super::{T0, all_events, claim_one, get, list, new_job};
use crate::{
    Changes, Fire, FireAction, FireOutcome, FireReason, FireSlot, Fired, JobFilter, NewSchedule,
    ScheduleFilter, Store, Transition,
};

const MINUTE: Millis = 60_000;

/// Validates a spec and computes its first run, as the engine does.
fn new_schedule(spec: ScheduleSpec, now: Millis) -> NewSchedule {
    let spec = spec
        .validate(now, &Limits::default())
        .unwrap_or_else(|e| panic!("{e}"));
    let plan = spec.plan(now).unwrap_or_else(|e| panic!("{e}"));
    let next_run = if spec.enabled == Some(false) {
        None
    } else {
        plan.first_run(now)
    };
    NewSchedule {
        spec,
        next_run,
        now,
    }
}

fn every_minute(id: &str) -> ScheduleSpec {
    ScheduleSpec::every(Duration::from_secs(60))
        .id(id)
        .job(JobSpec::new("report").label("source", "schedule"))
}

async fn create(s: &dyn Store, spec: ScheduleSpec, now: Millis) -> Schedule {
    let put = s
        .create_schedule(new_schedule(spec, now))
        .await
        .expect("create schedule");
    assert!(put.created, "{} is new", put.schedule.id);
    put.schedule
}

async fn schedule(s: &dyn Store, id: &str) -> Schedule {
    s.schedule(id)
        .await
        .expect("schedule")
        .unwrap_or_else(|| panic!("schedule {id} exists"))
}

/// One slot with the schedule's job, built at `now`.
fn slot(sched: &Schedule, at: Millis, reason: FireReason, now: Millis) -> FireSlot {
    FireSlot {
        scheduled_for: at,
        reason,
        job: Ok(new_job(sched.job.clone(), now)),
    }
}

/// A timed fire of the schedule's next run, moving it one interval on.
async fn fire_next(s: &dyn Store, sched: &Schedule, now: Millis) -> Fired {
    let at = sched.next_run.expect("a next run");
    let fire = Fire {
        schedule_id: sched.id.clone(),
        rev: Some(sched.rev),
        slots: vec![slot(sched, at, FireReason::Schedule, now)],
        next_run: Some(at + MINUTE),
        now,
    };
    match s.fire_schedule(fire).await.expect("fire") {
        FireOutcome::Fired(f) => f,
        other => panic!("fire refused: {other:?}"),
    }
}

async fn fire_by_hand(s: &dyn Store, sched: &Schedule, now: Millis) -> Fired {
    let fire = Fire {
        schedule_id: sched.id.clone(),
        rev: None,
        slots: vec![slot(sched, now, FireReason::Manual, now)],
        next_run: None,
        now,
    };
    match s.fire_schedule(fire).await.expect("fire") {
        FireOutcome::Fired(f) => f,
        other => panic!("fire refused: {other:?}"),
    }
}

async fn complete(s: &dyn Store, queue: &str, id: &str, now: Millis) {
    let c = claim_one(s, queue, now).await;
    assert_eq!(c.job.id, id, "the job claimed");
    s.transition(
        Transition::new(id, State::Completed, EventKind::Completed, now + 1)
            .fence(c.fence)
            .changes(Changes {
                result: Some(json!({"ok": true})),
                ..Changes::default()
            }),
    )
    .await
    .expect("complete");
}

/// Create, create again, replace, list, disable, enable, delete: what each leaves.
pub async fn schedules_are_created_replaced_listed_and_deleted(store: Arc<dyn Store>) {
    let s = &*store;
    let spec = every_minute("report-1").timezone("Europe/London");
    let a = create(s, spec.clone(), T0).await;
    assert_eq!(a.id, "report-1");
    assert_eq!(a.timezone, "Europe/London");
    assert!(a.enabled);
    assert_eq!(a.next_run, Some(T0 + MINUTE), "one interval after creation");
    assert_eq!((a.last_run, a.run_count), (None, 0));
    assert_eq!((a.created_at, a.updated_at), (T0, T0));
    assert_eq!(a.job, JobSpec::new("report").label("source", "schedule"));
    assert_eq!(
        a.trigger,
        Trigger::Interval {
            every: "1m".into(),
            start_at: None
        }
    );
    assert_eq!(schedule(s, "report-1").await, a, "read back as created");

    // Creating it again changes nothing.
    let again = s
        .create_schedule(new_schedule(spec.clone().timezone("UTC"), T0 + 5))
        .await
        .expect("create again");
    assert!(!again.created);
    assert_eq!(again.schedule, a);

    // Replacing keeps when it was created, takes the new spec and next run.
    let replaced = s
        .put_schedule(new_schedule(
            ScheduleSpec::daily(2, 0)
                .id("report-1")
                .job(JobSpec::new("report")),
            T0 + 10,
        ))
        .await
        .expect("put");
    assert!(!replaced.created);
    let b = replaced.schedule;
    assert_eq!(b.trigger, Trigger::daily(2, 0));
    assert_eq!(b.timezone, "UTC");
    assert_eq!((b.created_at, b.updated_at), (T0, T0 + 10));
    assert_ne!(b.rev, a.rev, "a replace is a new revision");
    assert_ne!(b.next_run, a.next_run);
    // The same timing again: the next run stays, whatever the caller computed.
    let same = s
        .put_schedule(NewSchedule {
            next_run: Some(T0 + 999_999),
            ..new_schedule(
                ScheduleSpec::daily(2, 0)
                    .id("report-1")
                    .job(JobSpec::new("report").priority(3)),
                T0 + 15,
            )
        })
        .await
        .expect("put same timing")
        .schedule;
    assert_eq!(same.next_run, b.next_run);
    assert_eq!(same.job.priority, Some(3), "the new job template");
    let b = same;
    let created = s
        .put_schedule(new_schedule(every_minute("report-2"), T0 + 20))
        .await
        .expect("put new");
    assert!(created.created);
    create(s, every_minute("backup").enabled(false), T0 + 30).await;

    let page = s
        .schedules(ScheduleFilter {
            limit: 2,
            ..ScheduleFilter::default()
        })
        .await
        .expect("list");
    let ids: Vec<&str> = page.schedules.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids, ["backup", "report-1"], "by id");
    assert_eq!(page.total, 3);
    let rest = s
        .schedules(ScheduleFilter {
            limit: 2,
            cursor: page.next_cursor.clone(),
            ..ScheduleFilter::default()
        })
        .await
        .expect("next page");
    let ids: Vec<&str> = rest.schedules.iter().map(|s| s.id.as_str()).collect();
    assert_eq!((ids, rest.next_cursor), (vec!["report-2"], None));
    let disabled = s
        .schedules(ScheduleFilter {
            enabled: Some(false),
            limit: 10,
            ..ScheduleFilter::default()
        })
        .await
        .expect("list disabled");
    assert_eq!(disabled.total, 1);
    assert_eq!(disabled.schedules[0].id, "backup");
    assert_eq!(
        disabled.schedules[0].next_run, None,
        "disabled: no next run"
    );
    let text = s
        .schedules(ScheduleFilter {
            text: Some("port".into()),
            limit: 10,
            ..ScheduleFilter::default()
        })
        .await
        .expect("search");
    assert_eq!(text.total, 2);

    // Timers: what a scheduler sleeps on.
    let mut timers = s.schedule_timers().await.expect("timers");
    timers.sort_by(|x, y| x.id.cmp(&y.id));
    let r2 = schedule(s, "report-2").await;
    assert_eq!(
        timers
            .iter()
            .map(|t| (t.id.as_str(), t.next_run, t.rev))
            .collect::<Vec<_>>(),
        [
            ("report-1", b.next_run.unwrap(), b.rev),
            ("report-2", r2.next_run.unwrap(), r2.rev)
        ]
    );

    let off = s
        .set_schedule_enabled("report-2", false, Some(T0 + 99), T0 + 40)
        .await
        .expect("disable")
        .expect("exists");
    assert!(!off.enabled);
    assert_eq!(off.next_run, None, "a disabled schedule has no next run");
    assert_eq!(off.updated_at, T0 + 40);
    assert_ne!(off.rev, r2.rev);
    let on = s
        .set_schedule_enabled("report-2", true, Some(T0 + 2 * MINUTE), T0 + 50)
        .await
        .expect("enable")
        .expect("exists");
    assert!(on.enabled);
    assert_eq!(on.next_run, Some(T0 + 2 * MINUTE));
    assert_eq!(
        s.set_schedule_enabled("nope", true, None, T0)
            .await
            .expect("enable missing"),
        None
    );

    let deleted = s
        .delete_schedule("report-2")
        .await
        .expect("delete")
        .expect("it existed");
    assert_eq!(deleted.id, "report-2");
    assert_eq!(s.delete_schedule("report-2").await.expect("again"), None);
    assert_eq!(s.schedule("report-2").await.expect("get"), None);
    // Created again under the same id: a revision the old one never had.
    let reborn = create(s, every_minute("report-2"), T0 + 60).await;
    assert_ne!(reborn.rev, on.rev);
    assert_ne!(reborn.rev, r2.rev);
}

/// A fire submits the schedule's job and moves the schedule in one write; a fire from
/// an older revision, or of a disabled schedule, writes nothing.
pub async fn fire_submits_jobs_and_moves_the_schedule_in_one_write(store: Arc<dyn Store>) {
    let s = &*store;
    let sched = create(s, every_minute("tick"), T0).await;
    let n = sched.next_run.unwrap();
    let mut live = s.subscribe();
    let fired = fire_next(s, &sched, n + 3).await;
    assert_eq!(fired.jobs.len(), 1);
    let job = &fired.jobs[0];
    assert_eq!(job.schedule_id.as_deref(), Some("tick"));
    assert_eq!(job.kind, "report");
    assert_eq!(job.state, State::Queued);
    assert_eq!(job.created_at, n + 3);
    assert_eq!(get(s, &job.id).await.schedule_id.as_deref(), Some("tick"));
    let after = &fired.schedule;
    assert_eq!(after.next_run, Some(n + MINUTE));
    assert_eq!(after.last_run, Some(n + 3));
    assert_eq!(after.run_count, 1);
    assert_ne!(after.rev, sched.rev);
    assert_eq!(&schedule(s, "tick").await, after);
    let rec = &fired.records[0];
    assert_eq!(
        (
            rec.seq,
            rec.scheduled_for,
            rec.fired_at,
            rec.reason,
            rec.action
        ),
        (1, n, n + 3, FireReason::Schedule, FireAction::Created)
    );
    assert_eq!(rec.job_id.as_deref(), Some(job.id.as_str()));
    assert_eq!(rec.outcome, Some(State::Queued));

    // The fire's events, published once durable: the job's submit, then the fire.
    let e1 = super::next_live(&mut live).await;
    let e2 = super::next_live(&mut live).await;
    assert_eq!(
        (e1.kind, e1.job_id.as_deref()),
        (EventKind::Submitted, Some(job.id.as_str()))
    );
    assert_eq!(
        (e2.kind, e2.job_id.as_deref()),
        (EventKind::ScheduleFired, None)
    );
    assert_eq!(e2.data["schedule_id"], "tick");
    assert_eq!(e2.data["job_id"], job.id.as_str());
    assert_eq!(e2.data["action"], "created");
    assert_eq!(e2.data["reason"], "schedule");
    assert_eq!(e2.data["fire"], 1);
    assert_eq!(
        e2.data["scheduled_for"],
        baton_core::time::to_rfc3339(n).as_str()
    );
    let log = all_events(s).await;
    assert!(
        log.contains(&e1) && log.contains(&e2),
        "stored as published"
    );

    // The same fire again (a crash and a retry, a second scheduler): refused, nothing
    // written.
    let events_before = all_events(s).await.len();
    let stale = s
        .fire_schedule(Fire {
            schedule_id: "tick".into(),
            rev: Some(sched.rev),
            slots: vec![slot(&sched, n, FireReason::Schedule, n + 4)],
            next_run: Some(n + MINUTE),
            now: n + 4,
        })
        .await
        .expect("stale fire");
    assert_eq!(stale, FireOutcome::Stale(Some(after.clone())));
    assert_eq!(all_events(s).await.len(), events_before);
    let by_schedule = JobFilter {
        schedule: Some("tick".into()),
        ..JobFilter::default()
    };
    assert_eq!(list(s, by_schedule.clone(), 100).await.total, 1);

    // By hand: fires at any revision and leaves the next run.
    let manual = fire_by_hand(s, after, n + 10).await;
    assert_eq!(manual.schedule.next_run, Some(n + MINUTE));
    assert_eq!(manual.schedule.run_count, 2);
    assert_eq!(manual.schedule.last_run, Some(n + 10));
    assert_eq!(manual.records[0].reason, FireReason::Manual);
    let page = list(s, by_schedule.clone(), 100).await;
    assert_eq!(page.total, 2);
    assert!(
        page.jobs
            .iter()
            .all(|j| j.schedule_id.as_deref() == Some("tick"))
    );
    assert_eq!(
        list(
            s,
            JobFilter {
                schedule: Some("other".into()),
                ..JobFilter::default()
            },
            100
        )
        .await
        .total,
        0
    );

    // Several slots in one fire (catch-up after downtime), one with a job that could
    // not be made: every slot is recorded, the schedule moves past all of them.
    let sched = manual.schedule;
    let at = sched.next_run.unwrap();
    let fired = s
        .fire_schedule(Fire {
            schedule_id: "tick".into(),
            rev: Some(sched.rev),
            slots: vec![
                slot(&sched, at, FireReason::CatchUp, at + 10 * MINUTE),
                FireSlot {
                    scheduled_for: at + MINUTE,
                    reason: FireReason::CatchUp,
                    job: Err("no handler is registered for kind \"report\"".into()),
                },
                slot(
                    &sched,
                    at + 9 * MINUTE,
                    FireReason::CatchUp,
                    at + 10 * MINUTE,
                ),
            ],
            next_run: Some(at + 10 * MINUTE),
            now: at + 10 * MINUTE,
        })
        .await
        .expect("fire");
    let FireOutcome::Fired(fired) = fired else {
        panic!("refused: {fired:?}")
    };
    assert_eq!(fired.jobs.len(), 2);
    let actions: Vec<FireAction> = fired.records.iter().map(|r| r.action).collect();
    assert_eq!(
        actions,
        [FireAction::Created, FireAction::Error, FireAction::Created]
    );
    assert_eq!(
        fired.records.iter().map(|r| r.seq).collect::<Vec<_>>(),
        [3, 4, 5]
    );
    assert!(
        fired.records[1]
            .message
            .as_deref()
            .unwrap()
            .contains("no handler")
    );
    assert_eq!(fired.schedule.run_count, 4, "the error made no job");
    assert_eq!(fired.schedule.next_run, Some(at + 10 * MINUTE));

    // Disabled: a timed fire is refused; gone: refused with nothing to show.
    let off = s
        .set_schedule_enabled("tick", false, None, at + 11 * MINUTE)
        .await
        .unwrap()
        .unwrap();
    let refused = s
        .fire_schedule(Fire {
            schedule_id: "tick".into(),
            rev: Some(off.rev),
            slots: vec![slot(&off, at, FireReason::Schedule, at)],
            next_run: None,
            now: at + 12 * MINUTE,
        })
        .await
        .expect("fire disabled");
    assert!(matches!(refused, FireOutcome::Stale(Some(ref s)) if !s.enabled));
    s.delete_schedule("tick").await.unwrap();
    let gone = s
        .fire_schedule(Fire {
            schedule_id: "tick".into(),
            rev: None,
            slots: vec![slot(&off, at, FireReason::Manual, at)],
            next_run: None,
            now: at + 13 * MINUTE,
        })
        .await
        .expect("fire gone");
    assert_eq!(gone, FireOutcome::Stale(None));
    assert_eq!(list(s, by_schedule, 100).await.total, 4, "its jobs stay");
}

/// Overlap `skip` submits nothing while the schedule's last job is active; `queue`
/// submits it awaiting, and a release queues awaiting jobs one at a time.
pub async fn overlap_skip_and_queue_decide_on_active_jobs(store: Arc<dyn Store>) {
    let s = &*store;
    let t = T0 + MINUTE;

    let skip = create(s, every_minute("skipper").overlap(Overlap::Skip), T0).await;
    let first = fire_next(s, &skip, t).await;
    let job1 = first.jobs[0].id.clone();
    let second = fire_next(s, &first.schedule, t + MINUTE).await;
    assert!(second.jobs.is_empty(), "skipped");
    let rec = &second.records[0];
    assert_eq!(rec.action, FireAction::Skipped);
    assert_eq!(rec.job_id, None);
    let message = rec.message.clone().unwrap();
    assert!(
        message.contains(&job1) && message.contains("queued"),
        "{message}"
    );
    assert_eq!(second.schedule.run_count, 1, "a skip is not a run");
    assert_eq!(
        second.schedule.next_run,
        Some(t + 2 * MINUTE),
        "but it moves on"
    );
    complete(s, "default", &job1, t + MINUTE + 1).await;
    let third = fire_next(s, &second.schedule, t + 2 * MINUTE).await;
    assert_eq!(third.jobs.len(), 1, "the last job ended: a new one");

    let queue = create(s, every_minute("queuer").overlap(Overlap::Queue), T0).await;
    let q1 = fire_next(s, &queue, t).await;
    // The skipper's third job is in the same queue: take it out of the way.
    complete(s, "default", &third.jobs[0].id, t + 1).await;
    let a = q1.jobs[0].clone();
    assert_eq!(a.state, State::Queued);
    let q2 = fire_next(s, &q1.schedule, t + MINUTE).await;
    let b = q2.jobs[0].clone();
    assert_eq!(b.state, State::Awaiting, "waits behind the active job");
    assert_eq!(b.schedule_id.as_deref(), Some("queuer"));
    assert!(q2.records[0].message.as_deref().unwrap().contains(&a.id));
    let q3 = fire_next(s, &q2.schedule, t + 2 * MINUTE).await;
    let c = q3.jobs[0].clone();
    assert_eq!(c.state, State::Awaiting);
    assert_eq!(q3.schedule.run_count, 3);
    assert_eq!(
        s.awaiting_schedules().await.expect("awaiting"),
        vec!["queuer".to_string()]
    );

    // While the first is active, a release changes nothing and names it.
    let r = s.release_schedule("queuer", t + 3 * MINUTE).await.unwrap();
    assert_eq!(
        (r.job, r.waiting_on.as_deref()),
        (None, Some(a.id.as_str()))
    );
    complete(s, "default", &a.id, t + 3 * MINUTE).await;
    let r = s.release_schedule("queuer", t + 4 * MINUTE).await.unwrap();
    let released = r.job.expect("the next one is queued");
    assert_eq!(released.id, b.id);
    assert_eq!(released.state, State::Queued);
    assert_eq!(r.waiting_on.as_deref(), Some(b.id.as_str()));
    assert_eq!(get(s, &c.id).await.state, State::Awaiting, "one at a time");
    let events = super::events_of(s, &b.id).await;
    assert_eq!(
        events.iter().map(|e| e.kind).collect::<Vec<_>>(),
        [EventKind::Submitted, EventKind::Queued]
    );
    assert_eq!(events[0].data["state"], "awaiting");
    assert_eq!(events[1].data["from"], "awaiting");

    // A job that fails ends too: the next goes.
    let claimed = claim_one(s, "default", t + 5 * MINUTE).await;
    assert_eq!(claimed.job.id, b.id);
    s.transition(
        Transition::new(&b.id, State::Failed, EventKind::Failed, t + 5 * MINUTE)
            .fence(claimed.fence),
    )
    .await
    .unwrap();
    let r = s.release_schedule("queuer", t + 6 * MINUTE).await.unwrap();
    assert_eq!(r.job.map(|j| j.id), Some(c.id.clone()));
    assert_eq!(r.waiting_on, None, "nothing else awaits");
    assert!(s.awaiting_schedules().await.unwrap().is_empty());
    let r = s.release_schedule("queuer", t + 7 * MINUTE).await.unwrap();
    assert_eq!((r.job, r.waiting_on), (None, Some(c.id.clone())));
}

/// The history pages newest first, each fire with its job's outcome as it is now.
pub async fn history_pages_newest_first_with_job_outcomes(store: Arc<dyn Store>) {
    let s = &*store;
    let mut sched = create(s, every_minute("hist"), T0).await;
    let mut jobs = Vec::new();
    for i in 0..5 {
        let fired = fire_next(s, &sched, T0 + (i + 1) * MINUTE).await;
        jobs.push(fired.jobs[0].id.clone());
        sched = fired.schedule;
    }
    complete(s, "default", &jobs[0], T0 + 10 * MINUTE).await;
    let c = claim_one(s, "default", T0 + 11 * MINUTE).await;
    s.transition(
        Transition::new(&jobs[1], State::Failed, EventKind::Failed, T0 + 12 * MINUTE)
            .fence(c.fence)
            .changes(Changes {
                error: Some(baton_core::ErrorInfo::new(
                    "exit_code",
                    "exited with code 3",
                )),
                ..Changes::default()
            }),
    )
    .await
    .unwrap();

    let page = s.schedule_history("hist", None, 2).await.expect("history");
    assert_eq!(page.fires.iter().map(|f| f.seq).collect::<Vec<_>>(), [5, 4]);
    assert_eq!(page.fires[0].outcome, Some(State::Queued));
    assert_eq!(page.fires[0].scheduled_for, T0 + 5 * MINUTE);
    let cursor: u64 = page.next_cursor.clone().unwrap().parse().unwrap();
    let page = s
        .schedule_history("hist", Some(cursor), 2)
        .await
        .expect("page 2");
    assert_eq!(page.fires.iter().map(|f| f.seq).collect::<Vec<_>>(), [3, 2]);
    let failed = &page.fires[1];
    assert_eq!(failed.job_id.as_deref(), Some(jobs[1].as_str()));
    assert_eq!(failed.outcome, Some(State::Failed));
    assert_eq!(failed.error.as_ref().unwrap().code, "exit_code");
    assert_eq!(failed.started_at, Some(T0 + 11 * MINUTE));
    assert_eq!(failed.finished_at, Some(T0 + 12 * MINUTE));
    let cursor: u64 = page.next_cursor.clone().unwrap().parse().unwrap();
    let page = s
        .schedule_history("hist", Some(cursor), 2)
        .await
        .expect("page 3");
    assert_eq!(page.fires.len(), 1);
    let done = &page.fires[0];
    assert_eq!((done.seq, done.outcome), (1, Some(State::Completed)));
    assert_eq!(done.error, None);
    assert_eq!(page.next_cursor, None);
    assert!(
        s.schedule_history("nope", None, 10)
            .await
            .unwrap()
            .fires
            .is_empty()
    );
    // Deleting the schedule deletes its history; a new one with its id starts afresh.
    s.delete_schedule("hist").await.unwrap();
    create(s, every_minute("hist"), T0 + 20 * MINUTE).await;
    assert!(
        s.schedule_history("hist", None, 10)
            .await
            .unwrap()
            .fires
            .is_empty()
    );
}

/// A job whose unique key is held is not submitted: the fire is recorded as skipped,
/// the holder is left alone, and the rest of the fire goes through.
pub async fn fires_skip_a_job_whose_unique_key_is_held(store: Arc<dyn Store>) {
    let s = &*store;
    for (id, policy) in [
        ("reject", baton_core::UniquePolicy::Reject),
        ("existing", baton_core::UniquePolicy::ReturnExisting),
    ] {
        let spec = ScheduleSpec::every(Duration::from_secs(60))
            .id(id)
            .job(JobSpec::new("report").unique(format!("nightly-{id}"), policy));
        let sched = create(s, spec, T0).await;
        let first = fire_next(s, &sched, T0 + MINUTE).await;
        assert_eq!(first.jobs.len(), 1);
        let holder = first.jobs[0].id.clone();
        let second = fire_next(s, &first.schedule, T0 + 2 * MINUTE).await;
        assert!(second.jobs.is_empty(), "{id}: no second job");
        let rec = &second.records[0];
        assert_eq!(rec.action, FireAction::Skipped, "{id}");
        let message = rec.message.clone().unwrap();
        assert!(message.contains(&holder), "{id}: {message}");
        assert_eq!(
            second.schedule.next_run,
            Some(T0 + 3 * MINUTE),
            "{id} moves on"
        );
        assert_eq!(second.schedule.run_count, 1);
        let held = get(s, &holder).await;
        assert_eq!(held.state, State::Queued, "{id}: the holder is untouched");
        assert_eq!(held.schedule_id.as_deref(), Some(id));
    }
}

/// Retention removes a schedule's fires older than the default retention, all but its
/// newest, so that its history stops growing and its last run stays known.
pub async fn prune_keeps_a_schedules_newest_fire(store: Arc<dyn Store>) {
    let s = &*store;
    let mut sched = create(s, every_minute("tick"), T0).await;
    for i in 0..4 {
        sched = fire_next(s, &sched, T0 + (i + 1) * MINUTE).await.schedule;
    }
    let day = 24 * 60 * MINUTE;
    let mut recent = create(s, every_minute("recent"), T0).await;
    recent = fire_next(s, &recent, T0 + day + MINUTE).await.schedule;
    fire_next(s, &recent, T0 + day + 2 * MINUTE).await;
    let prune = |now| crate::PruneRequest {
        now,
        retention: Some(day),
        limit: 2,
        ..crate::PruneRequest::default()
    };
    let mut fires = 0;
    loop {
        let p = s.prune(prune(T0 + day + 10 * MINUTE)).await.expect("prune");
        fires += p.fires;
        if !p.more {
            break;
        }
    }
    assert_eq!(fires, 3, "tick's three older fires");
    let history = s.schedule_history("tick", None, 10).await.expect("history");
    assert_eq!(
        history.fires.iter().map(|f| f.seq).collect::<Vec<_>>(),
        [4],
        "the newest fire stays"
    );
    let history = s
        .schedule_history("recent", None, 10)
        .await
        .expect("history");
    assert_eq!(history.fires.len(), 2, "fires within the retention stay");
}
