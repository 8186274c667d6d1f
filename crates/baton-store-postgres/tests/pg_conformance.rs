//! The store conformance suite on PostgreSQL: each test on a schema of its own in the
//! database named by `BATON_TEST_POSTGRES` (`scripts/test` creates a fresh database
//! and sets it).

use std::sync::Arc;

use baton_store::Store;

mod common;

use common::Schema;

async fn fresh() -> (Arc<dyn Store>, Schema) {
    let schema = Schema::new();
    (Arc::new(schema.open().await), schema)
}

baton_store::store_conformance_tests!(fresh());

/// Two servers on one database fire the same schedule at the same revision at once:
/// one fire is made, the other is refused as stale, every time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_fires_of_one_schedule_fire_it_once() {
    use baton_core::JobSpec;
    use baton_core::schedule::ScheduleSpec;
    use baton_store::{Fire, FireOutcome, FireReason, FireSlot, JobFilter, NewSchedule};

    const T0: baton_core::Millis = 1_700_000_000_000;
    const MINUTE: baton_core::Millis = 60_000;
    const ROUNDS: u64 = 20;

    let (a, schema) = fresh().await;
    let b: Arc<dyn Store> = Arc::new(schema.open().await);
    let spec = ScheduleSpec::every(std::time::Duration::from_secs(60))
        .id("tick")
        .job(JobSpec::new("report"))
        .validate(T0, &baton_core::Limits::default())
        .expect("valid spec");
    let mut sched = a
        .create_schedule(NewSchedule {
            spec,
            next_run: Some(T0 + MINUTE),
            now: T0,
        })
        .await
        .expect("create")
        .schedule;
    for round in 0..ROUNDS {
        let at = sched.next_run.expect("a next run");
        let now = at + 1;
        let fire = |store: Arc<dyn Store>| {
            let fire = Fire {
                schedule_id: "tick".into(),
                rev: Some(sched.rev),
                slots: vec![FireSlot {
                    scheduled_for: at,
                    reason: FireReason::Schedule,
                    job: Ok(JobSpec::new("report")
                        .validate(now, &baton_core::Limits::default())
                        .expect("valid job")),
                }],
                next_run: Some(at + MINUTE),
                now,
            };
            tokio::spawn(async move { store.fire_schedule(fire).await })
        };
        let (x, y) = (fire(Arc::clone(&a)), fire(Arc::clone(&b)));
        let outcomes = [
            x.await.expect("join").expect("fire"),
            y.await.expect("join").expect("fire"),
        ];
        let fired: Vec<_> = outcomes
            .iter()
            .filter_map(|o| match o {
                FireOutcome::Fired(f) => Some(f),
                FireOutcome::Stale(_) => None,
            })
            .collect();
        assert_eq!(fired.len(), 1, "round {round}: one fire of two");
        sched = fired[0].schedule.clone();
        assert_eq!(sched.run_count, round + 1);
        for o in &outcomes {
            if let FireOutcome::Stale(seen) = o {
                assert_eq!(
                    seen.as_ref(),
                    Some(&sched),
                    "refused with the fire it lost to"
                );
            }
        }
    }
    let jobs = a
        .list(JobFilter {
            schedule: Some("tick".into()),
            limit: 100,
            ..JobFilter::default()
        })
        .await
        .expect("list");
    assert_eq!(jobs.total, ROUNDS);
    let history = b
        .schedule_history("tick", None, 100)
        .await
        .expect("history");
    assert_eq!(history.fires.len() as u64, ROUNDS);
    a.verify().await.expect("the counts match the rows");
    b.close().await;
    a.close().await;
}

/// Two servers prune one database at once, batch after batch: every job past its
/// retention goes once, with its events, logs and checkpoints, and is counted out once;
/// unfinished jobs, jobs changed lately and the newest job stay; the pruned mark is the
/// newest event removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_pruning_at_once_remove_each_job_once() {
    use baton_core::{EventKind, JobSpec, Limits, Millis, State};
    use baton_store::{AppendLogs, ClaimRequest, PruneRequest, Transition, Update};

    const T0: Millis = 1_700_000_000_000;
    const DAY: Millis = 24 * 3_600_000;
    const JOBS: usize = 40;

    let (a, schema) = fresh().await;
    let b: Arc<dyn Store> = Arc::new(schema.open().await);
    let submit = |id: String, queue: &str| {
        let job = JobSpec::new("task")
            .id(id)
            .queue(queue)
            .validate(T0, &Limits::default())
            .expect("valid job");
        let a = Arc::clone(&a);
        async move { a.submit(vec![job]).await.expect("submit") }
    };
    let claim = |queue: &str, now: Millis| {
        let a = Arc::clone(&a);
        let queue = queue.to_owned();
        async move {
            a.claim(ClaimRequest {
                queue,
                limit: 1,
                server_id: "s1".into(),
                now,
                kinds: None,
            })
            .await
            .expect("claim")
            .remove(0)
        }
    };
    for i in 0..JOBS {
        submit(format!("old-{i}"), "batch").await;
        let c = claim("batch", T0 + 1).await;
        if i == 0 {
            a.update(
                &c.job.id,
                c.fence,
                T0 + 2,
                Update::Checkpoint {
                    data: serde_json::json!({"page": 1}),
                    step: None,
                },
            )
            .await
            .expect("checkpoint");
            a.append_logs(AppendLogs {
                job_id: c.job.id.clone(),
                fence: c.fence,
                now: T0 + 3,
                lines: vec![("stdout".into(), "fetched".into())],
                max_lines: 100,
            })
            .await
            .expect("logs");
        }
        let (to, kind) = if i % 2 == 0 {
            (State::Completed, EventKind::Completed)
        } else {
            (State::Failed, EventKind::Failed)
        };
        a.transition(Transition::new(c.job.id, to, kind, T0 + 10 + i as Millis).fence(c.fence))
            .await
            .expect("end");
    }
    // Kept: unfinished, deleted lately, the newest.
    submit("waiting".into(), "batch").await;
    submit("deleted".into(), "other").await;
    let c = claim("other", T0 + 1).await;
    a.transition(
        Transition::new("deleted", State::Completed, EventKind::Completed, T0 + 5).fence(c.fence),
    )
    .await
    .expect("complete");
    a.transition(Transition::new(
        "deleted",
        State::Deleted,
        EventKind::Deleted,
        T0 + 2 * DAY,
    ))
    .await
    .expect("delete");
    // A queue's event (no job's), old: it goes.
    a.set_queue_paused("other", true, T0 + 6)
        .await
        .expect("pause");
    submit("newest".into(), "other").await;
    let newest = claim("other", T0 + 1).await;
    a.transition(
        Transition::new("newest", State::Completed, EventKind::Completed, T0 + 7)
            .fence(newest.fence),
    )
    .await
    .expect("complete");

    let before = a.events_after(0, 100_000).await.expect("events");
    let doomed: Vec<u64> = before
        .iter()
        .filter(|e| {
            e.job_id.as_deref().is_some_and(|id| id.starts_with("old-"))
                || (e.job_id.is_none() && e.at < T0 + DAY)
        })
        .map(|e| e.id)
        .collect();
    let now = T0 + 2 * DAY + 1;
    let round = |store: Arc<dyn Store>| {
        tokio::spawn(async move {
            let (mut jobs, mut events, mut after) = (0, 0, None);
            loop {
                let p = store
                    .prune(PruneRequest {
                        now,
                        retention: Some(DAY),
                        limit: 5,
                        after,
                        ..PruneRequest::default()
                    })
                    .await
                    .expect("prune");
                assert!(p.jobs <= 5, "{p:?}");
                jobs += p.jobs;
                events += p.events;
                if !p.more {
                    return (jobs, events);
                }
                after = p.next;
            }
        })
    };
    let (x, y) = (round(Arc::clone(&a)), round(Arc::clone(&b)));
    let (x, y) = (x.await.expect("join"), y.await.expect("join"));
    assert_eq!(x.0 + y.0, JOBS as u64, "each job once: {x:?} {y:?}");
    assert_eq!(
        x.1 + y.1,
        doomed.len() as u64,
        "each event once: {x:?} {y:?}"
    );

    let after: Vec<u64> = a
        .events_after(0, 100_000)
        .await
        .expect("events")
        .iter()
        .map(|e| e.id)
        .collect();
    let kept: Vec<u64> = before
        .iter()
        .map(|e| e.id)
        .filter(|id| !doomed.contains(id))
        .collect();
    assert_eq!(after, kept, "exactly the doomed events are gone");
    assert_eq!(
        b.events_pruned_upto().await.expect("mark"),
        *doomed.iter().max().expect("some pruned")
    );
    assert_eq!(a.get("old-0").await.expect("get"), None);
    assert!(
        a.checkpoints("old-0")
            .await
            .expect("checkpoints")
            .is_empty()
    );
    assert!(a.logs("old-0", 0, 10).await.expect("logs").is_empty());
    for id in ["waiting", "deleted", "newest"] {
        assert!(a.get(id).await.expect("get").is_some(), "{id} is kept");
    }
    let counts = b.counts().await.expect("counts");
    assert_eq!(counts.total(State::Failed), 0);
    assert_eq!(counts.total(State::Completed), 1, "the newest");
    assert_eq!(counts.total(State::Queued), 1);
    a.verify().await.expect("the counts match the rows");
    b.close().await;
    a.close().await;
}
