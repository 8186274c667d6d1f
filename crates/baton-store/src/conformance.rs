//! The conformance suite: what every [`Store`](crate::Store) must do. Each test is an
//! async function taking a fresh store; [`store_conformance_tests!`] turns them into
//! `#[tokio::test]`s for one store.
//!
//! ```text
//! async fn fresh() -> (Arc<dyn Store>, tempfile::TempDir) {
//!     let dir = tempfile::tempdir().unwrap();
//!     let store = SqliteStore::open(SqliteOptions::new(dir.path().join("baton.db"))).unwrap();
//!     (Arc::new(store), dir)
//! }
//!
//! baton_store::store_conformance_tests!(fresh());
//! ```
//!
//! Every test uses fixed times (milliseconds from [`T0`]) and never sleeps; a test
//! asserts what a user of the store would notice: states, attempts, times, results,
//! errors and the event log.

use std::sync::Arc;
use std::time::Duration;

use baton_core::{
    ErrorInfo, Event, EventKind, Job, JobSpec, Limits, Millis, NewJob, State, TransitionError,
};
use serde_json::json;
use tokio::sync::broadcast;

use crate::{
    AppendLogs, Appended, Changes, Checkpoint, ClaimRequest, Claimed, Error, JobFilter, JobPage,
    JobProcess, ProcessRecord, RecoverRequest, Recovered, ServerInfo, StartNow, Store, Transition,
    Update,
};

/// Expands to one `#[tokio::test]` per conformance test, each on a fresh store.
///
/// `$make` is an expression, evaluated once per test, whose `.await` gives
/// `(Arc<dyn Store>, guard)`: the guard (a temporary folder, a database to drop) lives
/// until the test ends. The calling crate needs `tokio` with `macros` and `rt`.
#[macro_export]
macro_rules! store_conformance_tests {
    (@each $make:expr; $($test:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $test() {
                let (store, _guard): (::std::sync::Arc<dyn $crate::Store>, _) = $make.await;
                $crate::conformance::$test(::std::sync::Arc::clone(&store)).await;
                // Whatever the test did, the kept counts still match the rows.
                $crate::Store::verify(&*store).await.expect("the store's counts match its rows");
                $crate::Store::close(&*store).await;
            }
        )*
    };
    ($make:expr) => {
        $crate::store_conformance_tests!(@each $make;
            submit_claim_complete,
            settle_records_outcomes_and_refills_their_slots,
            claim_takes_higher_priority_first_then_fifo_within_its_queue,
            claim_takes_only_the_kinds_asked_for,
            concurrent_claims_never_hand_out_a_job_twice,
            delayed_jobs_wait_for_run_at,
            retry_after_backoff_counts_attempts,
            stale_fence_is_refused_without_writing,
            submit_is_idempotent,
            list_paginates_and_filters,
            list_text_finds_ids_kinds_labels_and_errors,
            list_orders_page_every_job_once_while_jobs_arrive,
            events_are_gapless_and_match_the_live_stream,
            illegal_transitions_are_refused_without_writing,
            expect_is_compare_and_set,
            updates_record_progress_step_and_output,
            usage_is_kept_with_its_events_and_the_end_of_the_attempt,
            checkpoints_resume_the_next_claim,
            recover_requeues_executing_jobs,
            recover_manual_leaves_jobs_crashed,
            recover_fails_a_job_after_max_recoveries,
            recover_records_what_the_crash_cost,
            recovery_of_a_server_leaves_other_servers_attempts_alone,
            recovery_of_named_jobs_leaves_the_servers_other_attempts_alone,
            servers_register_heartbeat_and_stop,
            notes_are_events_of_no_job,
            counts_by_queue_and_state,
            list_totals_are_exact_by_state_and_queue_and_capped_otherwise,
            submit_and_start_runs_new_jobs_in_one_write,
            release_hands_back_only_this_servers_jobs,
            logs_are_appended_paged_and_bounded,
            logs_from_a_stale_attempt_are_refused,
            processes_of_executing_jobs_are_listed_and_cleared_by_recovery,
            pipelines_are_stored_replaced_listed_and_deleted,
            dependents_are_queued_in_the_write_that_ends_their_last_dependency,
            a_fan_in_job_is_queued_once_when_its_dependencies_end_together,
            dependents_of_dependencies_that_end_in_one_write_are_settled_once,
            a_dependency_on_an_unknown_job_is_refused_without_writing,
            conditions_decide_whether_a_dependent_runs,
            a_dependency_that_ended_already_is_decided_at_submit,
            cancellation_runs_down_a_long_chain,
            a_unique_key_has_one_active_holder,
            workflows_are_stored_whole_and_read_back_as_graphs,
            a_paused_workflow_starts_nothing_until_resumed,
            a_workflow_retries_its_failed_part_and_cancels_as_a_whole,
            queues_pause_and_resume_with_events,
            schedules_are_created_replaced_listed_and_deleted,
            fire_submits_jobs_and_moves_the_schedule_in_one_write,
            overlap_skip_and_queue_decide_on_active_jobs,
            history_pages_newest_first_with_job_outcomes,
            fires_skip_a_job_whose_unique_key_is_held,
            workflows_are_listed_newest_first_with_their_counts,
            throughput_is_counted_per_second_and_minute_by_the_ending_write,
            prune_removes_finished_jobs_past_their_retention_and_nothing_else,
            prune_works_in_batches_and_takes_a_workflow_with_its_last_job,
            prune_goes_past_jobs_it_keeps_to_the_jobs_that_are_due,
            prune_takes_a_workflow_whole_or_not_at_all,
            prune_keeps_a_schedules_newest_fire,
            concurrency_limits_hold_covered_jobs_across_queues,
            a_freed_limit_slot_goes_to_the_queue_waiting_in_line,
            submit_and_start_leaves_covered_jobs_to_a_claim,
            a_claim_takes_other_jobs_past_a_full_limits_backlog,
            a_job_behind_a_long_full_backlog_starts_within_a_second,
        );
    };
}

mod schedules;
pub use schedules::*;

mod workflows;
pub use workflows::*;

mod throughput;
pub use throughput::*;

mod search;
pub use search::*;

mod retention;
pub use retention::*;

mod limits;
pub use limits::*;

/// The time every test starts at.
pub const T0: Millis = 1_700_000_000_000;

const SERVER: &str = "server-a";

/// A job is submitted, claimed and completed: what the job and its events say at each
/// step, and what the worker is handed.
pub async fn submit_claim_complete(store: Arc<dyn Store>) {
    let s = &*store;
    let spec = JobSpec::new("email")
        .id("job-1")
        .payload(json!({"to": "ada@example.com"}))
        .label("team", "growth")
        .timeout(Duration::from_secs(60))
        .grace(Duration::from_secs(5))
        .backoff(Duration::from_secs(2), Duration::from_secs(60));
    let submitted = s.submit(vec![new_job(spec, T0)]).await.expect("submit");
    assert_eq!(submitted.len(), 1);
    assert!(submitted[0].created);
    let job = &submitted[0].job;
    assert_eq!(job.id, "job-1");
    assert_eq!(job.kind, "email");
    assert_eq!(job.queue, "default");
    assert_eq!(job.state, State::Queued);
    assert_eq!(job.attempt, 0);
    assert_eq!(job.max_attempts, 3);
    assert_eq!(job.payload, Some(json!({"to": "ada@example.com"})));
    assert_eq!(job.labels.get("team").map(String::as_str), Some("growth"));
    assert_eq!(job.created_at, T0);
    assert_eq!(
        (job.started_at, job.finished_at, &job.result, &job.error),
        (None, None, &None, &None)
    );
    assert_eq!(&get(s, "job-1").await, job, "get answers what submit did");

    let c = claim_one(s, "default", T0 + 10).await;
    assert_eq!(c.job.id, "job-1");
    assert_eq!(c.job.state, State::Running);
    assert_eq!(c.job.attempt, 1);
    assert_eq!(c.job.started_at, Some(T0 + 10));
    assert_eq!(c.job.finished_at, None);
    assert_eq!(c.job.payload, Some(json!({"to": "ada@example.com"})));
    assert_eq!(c.checkpoint, None);
    assert_eq!(c.retries_left, 2, "three attempts, this is the first");
    assert_eq!(c.timeout, Some(Duration::from_secs(60)));
    assert_eq!(c.grace, Duration::from_secs(5));
    assert_eq!(c.backoff.initial, Duration::from_secs(2));
    assert_eq!(c.backoff.max, Duration::from_secs(60));
    assert_eq!(c.exec, None);
    let running = get(s, "job-1").await;
    assert_eq!((running.state, running.attempt), (State::Running, 1));
    assert!(
        claim(s, "default", 10, T0 + 11).await.is_empty(),
        "a running job is not claimed again"
    );

    let done = s
        .transition(
            Transition::new("job-1", State::Completed, EventKind::Completed, T0 + 20)
                .fence(c.fence)
                .changes(Changes {
                    result: Some(json!({"sent": true})),
                    ..Changes::default()
                }),
        )
        .await
        .expect("complete");
    assert_eq!(done.state, State::Completed);
    assert_eq!(done.result, Some(json!({"sent": true})));
    assert_eq!(done.finished_at, Some(T0 + 20));
    assert_eq!(done.started_at, Some(T0 + 10));
    assert_eq!(done.attempt, 1);
    assert_eq!(done.error, None);
    assert_eq!(done.progress, Some(1.0), "a completed job is at 100%");
    assert_eq!(get(s, "job-1").await, done);

    let events = events_of(s, "job-1").await;
    assert_eq!(
        kinds(&events),
        [
            EventKind::Submitted,
            EventKind::Started,
            EventKind::Completed
        ]
    );
    assert_eq!(seqs(&events), [1, 2, 3]);
    assert_eq!(
        events.iter().map(|e| e.at).collect::<Vec<_>>(),
        [T0, T0 + 10, T0 + 20]
    );
    for (e, state) in events.iter().zip(["queued", "running", "completed"]) {
        assert_eq!(e.job_id.as_deref(), Some("job-1"));
        assert_eq!(e.data["state"], state, "{e:?}");
    }

    // What a command job executes reaches its worker as given.
    let command = JobSpec {
        command: Some(vec!["echo".into(), "hi".into()]),
        ..JobSpec::new("command").id("cmd-1").queue("shell")
    };
    submit(s, command, T0 + 30).await;
    let c = claim_one(s, "shell", T0 + 31).await;
    assert_eq!(c.exec, Some(json!({"command": ["echo", "hi"]})));

    let counts = s.counts().await.expect("counts");
    assert_eq!(counts.total(State::Completed), 1);
    assert_eq!(counts.total(State::Running), 1);
    assert_eq!(counts.total(State::Queued), 0);
}

/// Recovery of named jobs (a remote worker's, when its connection dropped) crashes
/// and queues again only those attempts of the server; its other attempts run on.
pub async fn recovery_of_named_jobs_leaves_the_servers_other_attempts_alone(store: Arc<dyn Store>) {
    let s = &*store;
    for id in ["held-1", "held-2", "other"] {
        submit(s, JobSpec::new("work").id(id), T0).await;
    }
    let claimed = claim(s, "default", 3, T0 + 1).await;
    assert_eq!(claimed.len(), 3);
    let recovered = s
        .recover(RecoverRequest {
            now: T0 + 10,
            server_id: Some(SERVER.into()),
            jobs: Some(vec!["held-1".into(), "held-2".into(), "nobody".into()]),
            manual: false,
            cleanup: std::collections::BTreeMap::from([(
                "held-1".to_owned(),
                json!({"reason": "the worker's connection dropped"}),
            )]),
        })
        .await
        .expect("recover");
    let mut ids: Vec<&str> = recovered.iter().map(|r| r.job_id.as_str()).collect();
    ids.sort_unstable();
    assert_eq!(ids, ["held-1", "held-2"]);
    assert_eq!(get(s, "held-1").await.state, State::Queued);
    assert_eq!(get(s, "held-2").await.state, State::Queued);
    assert_eq!(get(s, "other").await.state, State::Running);
    let crashed = events_of(s, "held-1").await;
    let crash = crashed
        .iter()
        .find(|e| e.kind == EventKind::Crashed)
        .expect("a crash event");
    assert_eq!(crash.data["reason"], "the worker's connection dropped");
    // The other attempt's token still holds.
    let other = claimed.iter().find(|c| c.job.id == "other").expect("other");
    s.record(
        Transition::new("other", State::Completed, EventKind::Completed, T0 + 11)
            .fence(other.fence),
    )
    .await
    .expect("the other attempt completes");
}

/// Recovery of one dead server's attempts leaves another server's alone: their jobs
/// stay running with their processes, and their fencing tokens still hold.
pub async fn recovery_of_a_server_leaves_other_servers_attempts_alone(store: Arc<dyn Store>) {
    let s = &*store;
    for id in ["server-a", "server-b"] {
        let mut info = server(id, T0);
        info.host = format!("host-of-{id}");
        s.register_server(info).await.expect("register");
    }
    let mut fences = std::collections::BTreeMap::new();
    for (job, by) in [("job-a", "server-a"), ("job-b", "server-b")] {
        submit(s, JobSpec::command(["true"]).id(job), T0).await;
        let c = s
            .claim(ClaimRequest {
                queue: "default".into(),
                limit: 1,
                server_id: by.into(),
                now: T0 + 1,
                kinds: None,
            })
            .await
            .expect("claim")
            .remove(0);
        assert_eq!(c.job.id, job);
        s.set_process(
            job,
            c.fence,
            Some(JobProcess {
                pgid: 4000,
                start_time: 1,
            }),
        )
        .await
        .expect("set process");
        fences.insert(job, c.fence);
    }
    let hosts: Vec<(String, Option<String>, Option<String>)> = s
        .processes()
        .await
        .expect("processes")
        .into_iter()
        .map(|r| (r.job_id, r.server_id, r.host))
        .collect();
    assert_eq!(
        hosts,
        [
            (
                "job-a".into(),
                Some("server-a".into()),
                Some("host-of-server-a".into())
            ),
            (
                "job-b".into(),
                Some("server-b".into()),
                Some("host-of-server-b".into())
            ),
        ]
    );

    let recovered = s
        .recover(RecoverRequest {
            now: T0 + 10,
            server_id: Some("server-a".into()),
            jobs: None,
            ..RecoverRequest::default()
        })
        .await
        .expect("recover");
    assert_eq!(
        recovered
            .iter()
            .map(|r| r.job_id.as_str())
            .collect::<Vec<_>>(),
        ["job-a"]
    );
    assert_eq!(get(s, "job-a").await.state, State::Queued);
    let b = get(s, "job-b").await;
    assert_eq!(
        (b.state, b.attempt),
        (State::Running, 1),
        "the live server's job"
    );
    assert_eq!(
        s.processes()
            .await
            .expect("processes")
            .iter()
            .map(|r| r.job_id.as_str())
            .collect::<Vec<_>>(),
        ["job-b"]
    );
    s.update("job-b", fences["job-b"], T0 + 11, progress(0.5))
        .await
        .expect("the live attempt's token still holds");
    assert!(matches!(
        s.update("job-a", fences["job-a"], T0 + 11, progress(0.5))
            .await,
        Err(Error::StaleFence { .. })
    ));
}

/// A claim for some kinds takes only jobs of those kinds, by priority and age among
/// them, and leaves the others queued for a claimer that has their handlers.
pub async fn claim_takes_only_the_kinds_asked_for(store: Arc<dyn Store>) {
    let s = &*store;
    for (i, (id, kind, priority)) in [
        ("scrape-1", "scrape", 0),
        ("local-1", "work", 10),
        ("scrape-2", "scrape", 5),
        ("crawl-1", "crawl", 0),
        ("local-2", "work", 0),
    ]
    .into_iter()
    .enumerate()
    {
        submit(
            s,
            JobSpec::new(kind).id(id).priority(priority),
            T0 + i as Millis,
        )
        .await;
    }
    let by_kinds = |kinds: &[&str], limit| ClaimRequest {
        queue: "default".into(),
        limit,
        server_id: SERVER.into(),
        now: T0 + 100,
        kinds: Some(kinds.iter().map(|k| (*k).to_owned()).collect()),
    };
    let remote = s
        .claim(by_kinds(&["scrape", "crawl"], 10))
        .await
        .expect("claim");
    assert_eq!(ids(&remote), ["scrape-2", "scrape-1", "crawl-1"]);
    assert_eq!(get(s, "local-1").await.state, State::Queued);
    assert!(
        s.claim(by_kinds(&["scrape"], 10))
            .await
            .expect("claim")
            .is_empty()
    );
    assert!(s.claim(by_kinds(&[], 10)).await.expect("claim").is_empty());
    let local = s.claim(by_kinds(&["work"], 10)).await.expect("claim");
    assert_eq!(ids(&local), ["local-1", "local-2"]);
}

/// Higher priorities are claimed first, equal priorities in submission order, and a
/// claim only takes jobs of its own queue.
pub async fn claim_takes_higher_priority_first_then_fifo_within_its_queue(store: Arc<dyn Store>) {
    let s = &*store;
    let jobs = [
        ("low-1", 0),
        ("high-1", 10),
        ("neg-1", -5),
        ("low-2", 0),
        ("high-2", 10),
        ("mid-1", 5),
    ];
    for (i, (id, priority)) in jobs.into_iter().enumerate() {
        let spec = JobSpec::new("work").id(id).priority(priority);
        submit(s, spec, T0 + i as Millis).await;
    }
    submit(
        s,
        JobSpec::new("work")
            .id("other-1")
            .queue("other")
            .priority(100),
        T0 + 10,
    )
    .await;

    let first = claim(s, "default", 1, T0 + 100).await;
    assert_eq!(ids(&first), ["high-1"]);
    let rest = claim(s, "default", 10, T0 + 101).await;
    assert_eq!(ids(&rest), ["high-2", "mid-1", "low-1", "low-2", "neg-1"]);
    assert!(rest.iter().all(|c| c.job.queue == "default"));
    assert_eq!(
        get(s, "other-1").await.state,
        State::Queued,
        "another queue's job is left alone"
    );
    assert_eq!(ids(&claim(s, "other", 10, T0 + 102).await), ["other-1"]);
    assert!(claim(s, "nobody", 10, T0 + 103).await.is_empty());

    // Jobs submitted together keep their order.
    let batch: Vec<NewJob> = ["batch-1", "batch-2", "batch-3"]
        .into_iter()
        .map(|id| new_job(JobSpec::new("work").id(id).queue("fifo"), T0 + 200))
        .collect();
    s.submit(batch).await.expect("submit");
    assert_eq!(
        ids(&claim(s, "fifo", 10, T0 + 201).await),
        ["batch-1", "batch-2", "batch-3"]
    );
}

/// Workers claiming at the same time never get the same job.
pub async fn concurrent_claims_never_hand_out_a_job_twice(store: Arc<dyn Store>) {
    let jobs: Vec<NewJob> = (0..40)
        .map(|i| new_job(JobSpec::new("work").id(format!("job-{i:02}")), T0))
        .collect();
    store.submit(jobs).await.expect("submit");

    let workers: Vec<_> = (0..8)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut got = Vec::new();
                loop {
                    let req = ClaimRequest {
                        queue: "default".into(),
                        limit: 3,
                        server_id: format!("server-{w}"),
                        now: T0 + 1,
                        kinds: None,
                    };
                    let claimed = store.claim(req).await.expect("claim");
                    if claimed.is_empty() {
                        return got;
                    }
                    got.extend(claimed.into_iter().map(|c| (c.job.id, c.job.attempt)));
                }
            })
        })
        .collect();
    let mut all = Vec::new();
    for w in workers {
        all.extend(w.await.expect("worker task"));
    }
    all.sort();
    let expected: Vec<(String, u32)> = (0..40).map(|i| (format!("job-{i:02}"), 1)).collect();
    assert_eq!(all, expected, "each job claimed exactly once, as attempt 1");
    let counts = store.counts().await.expect("counts");
    assert_eq!(counts.total(State::Running), 40);
    assert_eq!(counts.total(State::Queued), 0);
}

/// A delayed job is not claimable until `promote_due` passes its `run_at`, and
/// `next_due` names the earliest one waiting.
pub async fn delayed_jobs_wait_for_run_at(store: Arc<dyn Store>) {
    let s = &*store;
    let later = submit(
        s,
        JobSpec::new("report")
            .id("later")
            .queue("reports")
            .run_at(T0 + 5_000),
        T0,
    )
    .await;
    assert_eq!(later.state, State::Scheduled);
    assert_eq!(later.run_at, Some(T0 + 5_000));
    let soon = submit(
        s,
        JobSpec::new("email")
            .id("soon")
            .delay(Duration::from_secs(2)),
        T0,
    )
    .await;
    assert_eq!(soon.state, State::Scheduled);
    assert_eq!(soon.run_at, Some(T0 + 2_000));
    assert_eq!(s.next_due().await.expect("next_due"), Some(T0 + 2_000));
    assert!(claim(s, "default", 10, T0 + 10_000).await.is_empty());
    assert!(claim(s, "reports", 10, T0 + 10_000).await.is_empty());

    let p = s.promote_due(T0 + 1_999).await.expect("promote");
    assert_eq!(p.count, 0, "nothing is due a millisecond early");
    assert!(p.queues.is_empty());
    assert_eq!(p.next_due, Some(T0 + 2_000));
    assert!(claim(s, "default", 10, T0 + 1_999).await.is_empty());

    let p = s.promote_due(T0 + 2_000).await.expect("promote");
    assert_eq!(p.count, 1);
    assert_eq!(p.queues, ["default"]);
    assert_eq!(p.next_due, Some(T0 + 5_000));
    assert_eq!(get(s, "soon").await.state, State::Queued);
    assert_eq!(get(s, "later").await.state, State::Scheduled);
    assert_eq!(ids(&claim(s, "default", 10, T0 + 2_001).await), ["soon"]);
    assert!(claim(s, "reports", 10, T0 + 2_001).await.is_empty());
    assert_eq!(s.next_due().await.expect("next_due"), Some(T0 + 5_000));

    let p = s.promote_due(T0 + 9_000).await.expect("promote");
    assert_eq!(p.count, 1);
    assert_eq!(p.queues, ["reports"]);
    assert_eq!(p.next_due, None);
    assert_eq!(s.next_due().await.expect("next_due"), None);
    assert_eq!(ids(&claim(s, "reports", 10, T0 + 9_001).await), ["later"]);
    assert_eq!(s.promote_due(T0 + 9_002).await.expect("promote").count, 0);

    assert_eq!(
        kinds(&events_of(s, "soon").await),
        [EventKind::Submitted, EventKind::Queued, EventKind::Started]
    );
}

/// A failed attempt retried after a backoff (running -> scheduled) or at once
/// (running -> queued) runs again as the next attempt, until attempts run out.
pub async fn retry_after_backoff_counts_attempts(store: Arc<dyn Store>) {
    let s = &*store;
    submit(s, JobSpec::new("sync").id("flaky").max_attempts(3), T0).await;
    let c1 = claim_one(s, "default", T0 + 10).await;
    assert_eq!((c1.job.attempt, c1.retries_left), (1, 2));

    let reset = ErrorInfo::new("handler_error", "connection reset");
    let job = s
        .transition(
            Transition::new("flaky", State::Scheduled, EventKind::Retrying, T0 + 20)
                .fence(c1.fence)
                .changes(Changes {
                    error: Some(reset.clone()),
                    run_at: Some(T0 + 1_020),
                    ..Changes::default()
                }),
        )
        .await
        .expect("retry later");
    assert_eq!(job.state, State::Scheduled);
    assert_eq!(job.run_at, Some(T0 + 1_020));
    assert_eq!(job.error, Some(reset.clone()), "why the attempt failed");
    assert_eq!(job.attempt, 1);
    assert_eq!(job.finished_at, None);
    assert_eq!(s.next_due().await.expect("next_due"), Some(T0 + 1_020));
    assert!(
        claim(s, "default", 10, T0 + 5_000).await.is_empty(),
        "not claimable before it is promoted"
    );
    assert_eq!(s.promote_due(T0 + 1_019).await.expect("promote").count, 0);
    assert_eq!(s.promote_due(T0 + 1_020).await.expect("promote").count, 1);

    let c2 = claim_one(s, "default", T0 + 1_030).await;
    assert_eq!((c2.job.attempt, c2.retries_left), (2, 1));
    assert_ne!(c2.fence, c1.fence, "each attempt has its own fencing token");

    let job = s
        .transition(
            Transition::new("flaky", State::Queued, EventKind::Retrying, T0 + 1_040)
                .fence(c2.fence)
                .changes(Changes {
                    error: Some(reset.clone()),
                    ..Changes::default()
                }),
        )
        .await
        .expect("retry at once");
    assert_eq!(job.state, State::Queued);
    let c3 = claim_one(s, "default", T0 + 1_050).await;
    assert_eq!((c3.job.attempt, c3.retries_left), (3, 0));

    let done = s
        .transition(
            Transition::new("flaky", State::Completed, EventKind::Completed, T0 + 1_060)
                .fence(c3.fence)
                .changes(Changes {
                    result: Some(json!("ok")),
                    ..Changes::default()
                }),
        )
        .await
        .expect("complete");
    assert_eq!(done.state, State::Completed);
    assert_eq!(done.attempt, 3);
    assert_eq!(done.result, Some(json!("ok")));
    assert_eq!(
        done.error, None,
        "a job that succeeded in the end shows no error"
    );
    assert_eq!(get(s, "flaky").await, done);
    let events = events_of(s, "flaky").await;
    assert_eq!(
        kinds(&events),
        [
            EventKind::Submitted,
            EventKind::Started,
            EventKind::Retrying,
            EventKind::Queued,
            EventKind::Started,
            EventKind::Retrying,
            EventKind::Started,
            EventKind::Completed,
        ]
    );
    assert_eq!(seqs(&events), (1..=8).collect::<Vec<_>>());

    // The last attempt fails for good.
    submit(s, JobSpec::new("sync").id("doomed").max_attempts(1), T0).await;
    let c = claim_one(s, "default", T0 + 2_000).await;
    assert_eq!((c.job.attempt, c.retries_left), (1, 0));
    let failed = s
        .transition(
            Transition::new("doomed", State::Failed, EventKind::Failed, T0 + 2_010)
                .fence(c.fence)
                .changes(Changes {
                    error: Some(reset.clone()),
                    ..Changes::default()
                }),
        )
        .await
        .expect("fail");
    assert_eq!(failed.state, State::Failed);
    assert_eq!(failed.error, Some(reset));
    assert_eq!(failed.finished_at, Some(T0 + 2_010));
}

/// After a job was recovered and claimed again, the first attempt's fencing token is
/// refused for every write, and the refusals leave no trace.
pub async fn stale_fence_is_refused_without_writing(store: Arc<dyn Store>) {
    let s = &*store;
    submit(s, JobSpec::new("work").id("job-1"), T0).await;
    let first = claim_one(s, "default", T0 + 10).await;
    s.update("job-1", first.fence, T0 + 11, progress(0.25))
        .await
        .expect("the live fence is accepted");

    let recovered = s
        .recover(RecoverRequest {
            server_id: None,
            jobs: None,
            now: T0 + 100,
            manual: false,
            cleanup: Default::default(),
        })
        .await
        .expect("recover");
    assert_eq!(recovered.len(), 1);
    let stale = |fence| Error::StaleFence {
        id: "job-1".into(),
        fence,
    };
    // Between the recovery and the next claim nobody holds the job.
    assert_eq!(
        s.update("job-1", first.fence, T0 + 150, progress(0.3))
            .await,
        Err(stale(first.fence))
    );

    let second = claim_one(s, "default", T0 + 200).await;
    assert_ne!(second.fence, first.fence);
    assert_eq!(second.job.attempt, 1, "the crash did not use up an attempt");

    let mut rx = s.subscribe();
    let before = snapshot(s, "job-1").await;
    let updates = [
        progress(0.5),
        Update::Step("upload".into()),
        Update::Output("late output".into()),
        Update::Checkpoint {
            data: json!({"page": 9}),
            step: None,
        },
    ];
    for update in updates {
        assert_eq!(
            s.update("job-1", first.fence, T0 + 300, update.clone())
                .await,
            Err(stale(first.fence)),
            "{update:?}"
        );
    }
    let transitions = [
        (State::Completed, EventKind::Completed),
        (State::Failed, EventKind::Failed),
        (State::Queued, EventKind::Retrying),
        (State::Paused, EventKind::Paused),
        (State::Cancelled, EventKind::Cancelled),
    ];
    for (to, kind) in transitions {
        let t = Transition::new("job-1", to, kind, T0 + 300).fence(first.fence);
        assert_eq!(s.transition(t).await, Err(stale(first.fence)), "{to}");
    }
    assert_eq!(
        snapshot(s, "job-1").await,
        before,
        "a stale fence writes nothing"
    );

    // The current holder still owns the job.
    let done = s
        .transition(
            Transition::new("job-1", State::Completed, EventKind::Completed, T0 + 400)
                .fence(second.fence),
        )
        .await
        .expect("the current fence is accepted");
    assert_eq!(done.state, State::Completed);
    assert_live_events_are_logged(s, &mut rx, |e| e.kind == EventKind::Completed).await;
    // A finished job is held by nobody: even the last token is stale now.
    assert_eq!(
        s.update("job-1", second.fence, T0 + 500, progress(1.0))
            .await,
        Err(stale(second.fence))
    );
}

/// A running attempt's usage is the job's `usage`, each write with a `job.usage`
/// event; the usage an outcome carries is kept with it (in a batch of outcomes too),
/// a later transition without one leaves it, and a stale attempt's is refused.
pub async fn usage_is_kept_with_its_events_and_the_end_of_the_attempt(store: Arc<dyn Store>) {
    let s = &*store;
    let limits = baton_core::ResourceLimits {
        memory: Some("512MB".into()),
        cpu_time: Some("10m".into()),
        cpus: Some(1.5),
    };
    for id in ["u1", "u2", "u3"] {
        let spec = JobSpec::command(["sleep", "1"])
            .id(id)
            .limits(limits.clone());
        submit(s, spec, T0).await;
    }
    let fresh = get(s, "u1").await;
    assert_eq!(fresh.usage, None, "nothing measured yet");
    assert_eq!(
        fresh.runs.limits,
        Some(limits.clone()),
        "the job shows its limits"
    );
    let running = claim(s, "default", 3, T0 + 10).await;
    let usage = |attempt: u32, cpu_ms: u64, at: Millis| baton_core::Usage {
        attempt,
        cpu_ms,
        rss_bytes: 40_000_000,
        peak_rss_bytes: 60_000_000,
        at,
    };
    let mut rx = s.subscribe();
    s.update(
        "u1",
        running[0].fence,
        T0 + 20,
        Update::Usage(usage(1, 150, T0 + 20)),
    )
    .await
    .expect("usage of the running attempt");
    assert_eq!(get(s, "u1").await.usage, Some(usage(1, 150, T0 + 20)));
    assert_live_events_are_logged(s, &mut rx, |e| e.kind == EventKind::Usage).await;
    let logged = events_of(s, "u1").await;
    let last = logged.last().expect("events");
    assert_eq!(
        (last.kind, &last.data),
        (EventKind::Usage, &json!(usage(1, 150, T0 + 20)))
    );
    let attempt_events = s
        .job_events_of("u1", baton_core::attempt::ATTEMPT_EVENTS, 0, 100)
        .await
        .expect("attempt events");
    assert!(
        attempt_events.iter().any(|e| e.kind == EventKind::Usage),
        "the attempts' fold reads usage events: {:?}",
        kinds(&attempt_events)
    );

    // Outcomes written together each keep their own usage; one without keeps none.
    let end = |c: &Claimed, u: Option<baton_core::Usage>| -> Arc<[Transition]> {
        vec![
            Transition::new(c.job.id.as_str(), State::Failed, EventKind::Failed, T0 + 30)
                .fence(c.fence)
                .changes(Changes {
                    error: Some(ErrorInfo::new("memory_limit", "612 MB used, limit 512 MB")),
                    usage: u,
                    ..Changes::default()
                }),
        ]
        .into()
    };
    let settled = s
        .settle(crate::Settle {
            outcomes: vec![
                end(&running[0], Some(usage(1, 900, T0 + 30))),
                end(&running[1], Some(usage(1, 5, T0 + 30))),
                end(&running[2], None),
            ],
            claim: None,
        })
        .await
        .expect("settle");
    assert!(settled.outcomes.iter().all(Result::is_ok), "{settled:?}");
    assert_eq!(get(s, "u1").await.usage, Some(usage(1, 900, T0 + 30)));
    assert_eq!(get(s, "u2").await.usage, Some(usage(1, 5, T0 + 30)));
    assert_eq!(get(s, "u3").await.usage, None);
    let listed = list(s, JobFilter::default(), 10).await;
    let u1 = listed
        .jobs
        .iter()
        .find(|j| j.id == "u1")
        .expect("u1 listed");
    assert_eq!(
        u1.usage,
        Some(usage(1, 900, T0 + 30)),
        "lists show usage too"
    );

    // A manual retry keeps the last attempt's usage until the next one is measured.
    s.transition(
        Transition::new("u1", State::Queued, EventKind::Queued, T0 + 40).changes(Changes {
            new_attempt_budget: true,
            ..Changes::default()
        }),
    )
    .await
    .expect("retry");
    assert_eq!(get(s, "u1").await.usage, Some(usage(1, 900, T0 + 30)));
    let before = snapshot(s, "u1").await;
    assert_eq!(
        s.update(
            "u1",
            running[0].fence,
            T0 + 50,
            Update::Usage(usage(1, 1, T0 + 50))
        )
        .await,
        Err(Error::StaleFence {
            id: "u1".into(),
            fence: running[0].fence
        })
    );
    assert_eq!(
        snapshot(s, "u1").await,
        before,
        "a stale usage writes nothing"
    );
}

/// Submitting a job id that exists returns the existing job as it is now, and stores
/// nothing more.
pub async fn submit_is_idempotent(store: Arc<dyn Store>) {
    let s = &*store;
    let first = submit(
        s,
        JobSpec::new("invoice")
            .id("order-7")
            .priority(1)
            .payload(json!({"n": 1})),
        T0,
    )
    .await;
    let again = s
        .submit(vec![new_job(
            JobSpec::new("receipt")
                .id("order-7")
                .priority(9)
                .payload(json!({"n": 2})),
            T0 + 50,
        )])
        .await
        .expect("resubmit");
    assert_eq!(again.len(), 1);
    assert!(!again[0].created);
    assert_eq!(again[0].job, first, "the existing job, unchanged");
    assert_eq!(get(s, "order-7").await, first);
    assert_eq!(list(s, JobFilter::default(), 100).await.total, 1);
    assert_eq!(events_of(s, "order-7").await.len(), 1);
    assert_eq!(all_events(s).await.len(), 1);

    // The same id twice in one batch: one job.
    let both = s
        .submit(vec![
            new_job(JobSpec::new("a").id("twin"), T0 + 60),
            new_job(JobSpec::new("b").id("twin"), T0 + 60),
        ])
        .await
        .expect("submit twins");
    assert_eq!(
        both.iter().map(|b| b.created).collect::<Vec<_>>(),
        [true, false]
    );
    assert_eq!(both[1].job, both[0].job);
    assert_eq!(both[1].job.kind, "a");
    assert_eq!(events_of(s, "twin").await.len(), 1);

    // Resubmitting a job that has moved on answers it as it is now.
    assert_eq!(ids(&claim(s, "default", 1, T0 + 70).await), ["order-7"]);
    let again = s
        .submit(vec![new_job(
            JobSpec::new("invoice").id("order-7"),
            T0 + 80,
        )])
        .await
        .expect("resubmit");
    assert!(!again[0].created);
    assert_eq!(again[0].job.state, State::Running);
    assert_eq!(again[0].job.attempt, 1);
    assert_eq!(
        kinds(&events_of(s, "order-7").await),
        [EventKind::Submitted, EventKind::Started]
    );
    assert_eq!(list(s, JobFilter::default(), 100).await.total, 2);
}

/// `list` pages newest first with a stable cursor, counts the matches, filters by
/// state, queue, kind, label and text, and leaves deleted jobs out unless asked.
pub async fn list_paginates_and_filters(store: Arc<dyn Store>) {
    let s = &*store;
    let jobs = [
        ("inv-1", "invoice", "billing", Some(("team", "red"))),
        ("inv-2", "invoice", "billing", Some(("team", "blue"))),
        ("img_1", "resize", "media", Some(("team", "red"))),
        ("img-2", "resize", "media", None),
        ("mail-1", "email", "default", Some(("team", "red"))),
        ("mail-2", "email", "default", Some(("campaign", "spring"))),
        ("mail-3", "email", "default", None),
        ("mail-4", "email", "default", None),
    ];
    for (i, (id, kind, queue, label)) in jobs.into_iter().enumerate() {
        let mut spec = JobSpec::new(kind).id(id).queue(queue);
        if let Some((k, v)) = label {
            spec = spec.label(k, v);
        }
        submit(s, spec, T0 + i as Millis).await;
    }
    let to = |id: &str, state, kind| Transition::new(id, state, kind, T0 + 50);
    s.transition(to("mail-3", State::Deleted, EventKind::Deleted))
        .await
        .expect("delete");
    s.transition(to("mail-4", State::Cancelled, EventKind::Cancelled))
        .await
        .expect("cancel");

    let page1 = list(s, JobFilter::default(), 3).await;
    assert_eq!(ids_of(&page1), ["mail-4", "mail-2", "mail-1"]);
    assert_eq!(page1.total, 7, "every job but the deleted one");
    assert!(page1.next_cursor.is_some());
    // A job submitted while a user pages does not shift the pages.
    submit(s, JobSpec::new("email").id("late-1"), T0 + 100).await;
    let page2 = list(s, page(JobFilter::default(), &page1), 3).await;
    assert_eq!(ids_of(&page2), ["img-2", "img_1", "inv-2"]);
    assert_eq!(page2.total, 8);
    let page3 = list(s, page(JobFilter::default(), &page2), 3).await;
    assert_eq!(ids_of(&page3), ["inv-1"]);
    assert_eq!(page3.next_cursor, None, "the last page says so");

    // Pages that end exactly at the last job.
    let a = list(s, JobFilter::default(), 4).await;
    let b = list(s, page(JobFilter::default(), &a), 4).await;
    let mut walked = ids_of(&a);
    walked.extend(ids_of(&b));
    assert_eq!(
        walked,
        [
            "late-1", "mail-4", "mail-2", "mail-1", "img-2", "img_1", "inv-2", "inv-1"
        ]
    );
    assert_eq!(b.next_cursor, None);

    let check = |filter: JobFilter, expected: &'static [&'static str]| async move {
        let p = list(s, filter.clone(), 100).await;
        assert_eq!(ids_of(&p), expected, "{filter:?}");
        assert_eq!(p.total, expected.len() as u64, "{filter:?}");
        assert_eq!(p.next_cursor, None, "{filter:?}");
    };
    let states = |states: &[State]| JobFilter {
        states: states.to_vec(),
        ..JobFilter::default()
    };
    check(states(&[State::Cancelled]), &["mail-4"]).await;
    check(states(&[State::Deleted]), &["mail-3"]).await;
    check(
        states(&[State::Cancelled, State::Deleted]),
        &["mail-4", "mail-3"],
    )
    .await;
    check(
        states(&[State::Queued]),
        &[
            "late-1", "mail-2", "mail-1", "img-2", "img_1", "inv-2", "inv-1",
        ],
    )
    .await;
    check(
        JobFilter {
            queue: Some("billing".into()),
            ..JobFilter::default()
        },
        &["inv-2", "inv-1"],
    )
    .await;
    check(
        JobFilter {
            kind: Some("resize".into()),
            ..JobFilter::default()
        },
        &["img-2", "img_1"],
    )
    .await;
    check(
        JobFilter {
            label: Some(("team".into(), "red".into())),
            ..JobFilter::default()
        },
        &["mail-1", "img_1", "inv-1"],
    )
    .await;
    let text = |t: &str| JobFilter {
        text: Some(t.into()),
        ..JobFilter::default()
    };
    check(text("inv"), &["inv-2", "inv-1"]).await;
    check(text("spring"), &["mail-2"]).await;
    check(text("resize"), &["img-2", "img_1"]).await;
    check(text("img_"), &["img-2", "img_1"]).await; // `_` and `-` part words alike
    check(text("nothing-like-it"), &[]).await;
    check(
        JobFilter {
            queue: Some("default".into()),
            kind: Some("email".into()),
            label: Some(("team".into(), "red".into())),
            states: vec![State::Queued],
            ..JobFilter::default()
        },
        &["mail-1"],
    )
    .await;
}

/// Global event ids rise by one with no gaps across jobs, each job's events are
/// numbered 1, 2, 3..., and reading the log agrees with what subscribers saw live.
pub async fn events_are_gapless_and_match_the_live_stream(store: Arc<dyn Store>) {
    let s = &*store;
    let mut rx = s.subscribe();
    assert_eq!(s.last_event_id().await.expect("last_event_id"), 0);
    s.register_server(server("srv-1", T0))
        .await
        .expect("register");
    s.submit(vec![
        new_job(JobSpec::new("work").id("a"), T0 + 1),
        new_job(JobSpec::new("work").id("b"), T0 + 1),
    ])
    .await
    .expect("submit");
    submit(s, JobSpec::new("work").id("c"), T0 + 2).await;
    let claimed = claim(s, "default", 2, T0 + 3).await;
    assert_eq!(ids(&claimed), ["a", "b"]);
    let (fa, fb) = (claimed[0].fence, claimed[1].fence);
    s.update("a", fa, T0 + 4, progress(0.5))
        .await
        .expect("progress");
    s.update("b", fb, T0 + 5, Update::Step("fetch".into()))
        .await
        .expect("step");
    s.transition(Transition::new("a", State::Completed, EventKind::Completed, T0 + 6).fence(fa))
        .await
        .expect("complete");
    s.update(
        "b",
        fb,
        T0 + 7,
        Update::Checkpoint {
            data: json!({"page": 2}),
            step: Some("fetch".into()),
        },
    )
    .await
    .expect("checkpoint");
    let fc = claim_one(s, "default", T0 + 8).await.fence;
    s.update("c", fc, T0 + 9, Update::Output("hello".into()))
        .await
        .expect("output");
    s.transition(
        Transition::new("b", State::Failed, EventKind::Failed, T0 + 10)
            .fence(fb)
            .changes(Changes {
                error: Some(ErrorInfo::new("handler_error", "boom")),
                ..Changes::default()
            }),
    )
    .await
    .expect("fail");
    s.transition(Transition::new("c", State::Cancelled, EventKind::Cancelled, T0 + 11).fence(fc))
        .await
        .expect("cancel");
    s.server_stopped("srv-1", T0 + 12).await.expect("stopped");

    let log = all_events(s).await;
    assert_eq!(log.len(), 15, "{log:#?}");
    for w in log.windows(2) {
        assert_eq!(w[1].id, w[0].id + 1, "global ids have no gaps: {w:?}");
    }
    for (id, n) in [("a", 4), ("b", 5), ("c", 4)] {
        let events = events_of(s, id).await;
        assert_eq!(seqs(&events), (1..=n).collect::<Vec<_>>(), "job {id}");
        let in_log: Vec<Event> = log
            .iter()
            .filter(|e| e.job_id.as_deref() == Some(id))
            .cloned()
            .collect();
        assert_eq!(events, in_log, "job {id}: its events, as in the global log");
    }
    let others: Vec<&Event> = log.iter().filter(|e| e.job_id.is_none()).collect();
    assert_eq!(
        others.iter().map(|e| (e.kind, e.seq)).collect::<Vec<_>>(),
        [(EventKind::ServerUp, 0), (EventKind::ServerDown, 0)]
    );

    assert_eq!(
        s.last_event_id().await.expect("last_event_id"),
        log[14].id,
        "the last committed event"
    );

    // Reading from a point.
    let mid = log[7].id;
    assert_eq!(
        s.events_after(mid, 1_000).await.expect("events_after"),
        log[8..]
    );
    assert_eq!(
        s.events_after(mid, 2).await.expect("events_after"),
        log[8..10]
    );
    assert!(
        s.events_after(log[14].id, 10)
            .await
            .expect("events_after")
            .is_empty()
    );
    let b = events_of(s, "b").await;
    assert_eq!(
        s.job_events("b", 2, 1_000).await.expect("job_events"),
        b[2..]
    );
    assert_eq!(s.job_events("b", 1, 1).await.expect("job_events"), b[1..2]);
    assert!(
        s.job_events("b", 5, 10)
            .await
            .expect("job_events")
            .is_empty()
    );

    // What a subscriber saw live is the log, in order.
    let mut live = Vec::new();
    for _ in 0..log.len() {
        live.push((*next_live(&mut rx).await).clone());
    }
    assert_eq!(live, log);
    assert!(matches!(
        rx.try_recv(),
        Err(broadcast::error::TryRecvError::Empty)
    ));
}

/// A transition the state machine does not allow is refused with
/// [`Error::Transition`] and writes nothing; so is a batch submit with a job in a state
/// no job starts in.
pub async fn illegal_transitions_are_refused_without_writing(store: Arc<dyn Store>) {
    let s = &*store;
    submit(s, JobSpec::new("work").id("done"), T0).await;
    let c = claim_one(s, "default", T0 + 1).await;
    s.transition(
        Transition::new("done", State::Completed, EventKind::Completed, T0 + 2).fence(c.fence),
    )
    .await
    .expect("complete");
    submit(s, JobSpec::new("work").id("running"), T0 + 3).await;
    claim_one(s, "default", T0 + 4).await;
    submit(s, JobSpec::new("work").id("queued"), T0 + 5).await;
    submit(
        s,
        JobSpec::new("work").id("delayed").run_at(T0 + 60_000),
        T0 + 6,
    )
    .await;

    let cases = [
        ("queued", State::Completed),
        ("queued", State::Paused),
        ("queued", State::Scheduled),
        ("delayed", State::Running),
        ("delayed", State::Completed),
        ("running", State::Running),
        ("running", State::Awaiting),
        ("done", State::Running),
        ("done", State::Failed),
        ("done", State::Crashed),
    ];
    for (id, to) in cases {
        let before = snapshot(s, id).await;
        let from = before.0.as_ref().map(|j| j.state);
        let r = s
            .transition(Transition::new(id, to, event_for(to), T0 + 100))
            .await;
        assert_eq!(
            r,
            Err(Error::Transition {
                id: id.into(),
                source: TransitionError { from, to },
            }),
            "{id} -> {to}"
        );
        assert_eq!(
            snapshot(s, id).await,
            before,
            "{id} -> {to} wrote something"
        );
    }

    assert_eq!(
        s.transition(Transition::new(
            "ghost",
            State::Cancelled,
            EventKind::Cancelled,
            T0
        ))
        .await,
        Err(Error::NotFound("ghost".into()))
    );

    // A batch is all or nothing: the good job is not stored beside the bad one.
    let mut rx = s.subscribe();
    let log = all_events(s).await;
    let good = new_job(JobSpec::new("work").id("good"), T0 + 200);
    let mut bad = new_job(JobSpec::new("work").id("bad"), T0 + 200);
    bad.state = State::Running;
    assert_eq!(
        s.submit(vec![good, bad]).await,
        Err(Error::Transition {
            id: "bad".into(),
            source: TransitionError {
                from: None,
                to: State::Running,
            },
        })
    );
    assert_eq!(s.get("good").await.expect("get"), None);
    assert_eq!(s.get("bad").await.expect("get"), None);
    assert_eq!(all_events(s).await, log);
    submit(s, JobSpec::new("work").id("after"), T0 + 300).await;
    assert_live_events_are_logged(s, &mut rx, |e| e.job_id.as_deref() == Some("after")).await;
}

/// `expect` makes a transition a compare-and-set: a job no longer in an expected
/// state is refused with [`Error::Conflict`] and left as it is.
pub async fn expect_is_compare_and_set(store: Arc<dyn Store>) {
    let s = &*store;
    submit(s, JobSpec::new("work").id("job-1"), T0).await;
    let before = snapshot(s, "job-1").await;
    let r = s
        .transition(
            Transition::new("job-1", State::Cancelled, EventKind::Cancelled, T0 + 5)
                .expect(&[State::Scheduled, State::Awaiting]),
        )
        .await;
    match r {
        Err(Error::Conflict {
            id,
            actual,
            expected,
        }) => {
            assert_eq!((id.as_str(), actual), ("job-1", State::Queued));
            assert!(
                expected.contains("scheduled") && expected.contains("awaiting"),
                "{expected}"
            );
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert_eq!(snapshot(s, "job-1").await, before);

    // Two people act on the job they both saw queued: the second one loses.
    let cancelled = s
        .transition(
            Transition::new("job-1", State::Cancelled, EventKind::Cancelled, T0 + 10)
                .expect(&[State::Queued]),
        )
        .await
        .expect("first cancel");
    assert_eq!(cancelled.state, State::Cancelled);
    let before = snapshot(s, "job-1").await;
    let r = s
        .transition(
            Transition::new("job-1", State::Deleted, EventKind::Deleted, T0 + 11)
                .expect(&[State::Queued]),
        )
        .await;
    assert!(
        matches!(&r, Err(Error::Conflict { id, actual: State::Cancelled, .. }) if id == "job-1"),
        "{r:?}"
    );
    assert_eq!(snapshot(s, "job-1").await, before);

    let deleted = s
        .transition(
            Transition::new("job-1", State::Deleted, EventKind::Deleted, T0 + 12)
                .expect(&[State::Cancelled]),
        )
        .await
        .expect("delete what is cancelled");
    assert_eq!(deleted.state, State::Deleted);
}

/// A running job's progress, step and output show on the job and in its events.
pub async fn updates_record_progress_step_and_output(store: Arc<dyn Store>) {
    let s = &*store;
    submit(s, JobSpec::new("work").id("job-1"), T0).await;
    let fence = claim_one(s, "default", T0 + 1).await.fence;
    s.update(
        "job-1",
        fence,
        T0 + 2,
        Update::Progress {
            fraction: Some(0.5),
            message: Some("half way".into()),
        },
    )
    .await
    .expect("progress");
    let job = get(s, "job-1").await;
    assert_eq!(job.progress, Some(0.5));
    assert_eq!(job.message.as_deref(), Some("half way"));

    s.update("job-1", fence, T0 + 3, Update::Step("upload".into()))
        .await
        .expect("step");
    assert_eq!(get(s, "job-1").await.step.as_deref(), Some("upload"));
    s.update("job-1", fence, T0 + 4, Update::Output("token".into()))
        .await
        .expect("output");
    s.update(
        "job-1",
        fence,
        T0 + 5,
        Update::Progress {
            fraction: None,
            message: Some("still uploading".into()),
        },
    )
    .await
    .expect("message only");
    let job = get(s, "job-1").await;
    assert_eq!(
        job.progress,
        Some(0.5),
        "a message without a fraction keeps the progress"
    );
    assert_eq!(job.message.as_deref(), Some("still uploading"));
    assert_eq!(job.step.as_deref(), Some("upload"));
    assert_eq!(job.state, State::Running);

    let events = events_of(s, "job-1").await;
    assert_eq!(
        kinds(&events),
        [
            EventKind::Submitted,
            EventKind::Started,
            EventKind::Progress,
            EventKind::Step,
            EventKind::Output,
            EventKind::Progress,
        ]
    );
    assert_eq!(events[2].data["progress"], 0.5);
    assert_eq!(events[2].data["message"], "half way");
    assert_eq!(events[3].data["step"], "upload");
    assert_eq!(events[4].data["text"], "token");
    assert_eq!(events[5].data["message"], "still uploading");
    assert_eq!(
        events[2..].iter().map(|e| e.at).collect::<Vec<_>>(),
        [T0 + 2, T0 + 3, T0 + 4, T0 + 5]
    );
}

/// Checkpoints are listed, and the next claim of the job (a retry, or a manual retry
/// from the checkpoint) starts from the last one; a retry from scratch does not.
pub async fn checkpoints_resume_the_next_claim(store: Arc<dyn Store>) {
    let s = &*store;
    submit(s, JobSpec::new("crawl").id("crawl").max_attempts(3), T0).await;
    let c1 = claim_one(s, "default", T0 + 1).await;
    assert_eq!(c1.checkpoint, None);
    for (page, at) in [(1, T0 + 10), (2, T0 + 20)] {
        s.update("crawl", c1.fence, at, checkpoint(page, "fetch"))
            .await
            .expect("checkpoint");
    }
    let cps = checkpoints(s, "crawl").await;
    assert_eq!(
        cps.iter()
            .map(|c| (c.data.clone(), c.step.as_deref(), c.attempt, c.at))
            .collect::<Vec<_>>(),
        [
            (json!({"page": 1}), Some("fetch"), 1, T0 + 10),
            (json!({"page": 2}), Some("fetch"), 1, T0 + 20),
        ]
    );
    assert!(cps[0].seq < cps[1].seq);

    s.transition(
        Transition::new("crawl", State::Queued, EventKind::Retrying, T0 + 30).fence(c1.fence),
    )
    .await
    .expect("retry");
    let c2 = claim_one(s, "default", T0 + 31).await;
    assert_eq!(c2.checkpoint, Some(json!({"page": 2})));
    assert_eq!(c2.job.attempt, 2);
    s.update("crawl", c2.fence, T0 + 40, checkpoint(3, "parse"))
        .await
        .expect("checkpoint");
    let cps = checkpoints(s, "crawl").await;
    assert_eq!(cps.len(), 3);
    assert_eq!(
        (&cps[2].data, cps[2].step.as_deref(), cps[2].attempt),
        (&json!({"page": 3}), Some("parse"), 2)
    );
    s.transition(
        Transition::new("crawl", State::Completed, EventKind::Completed, T0 + 50)
            .fence(c2.fence)
            .changes(Changes {
                result: Some(json!({"pages": 3})),
                ..Changes::default()
            }),
    )
    .await
    .expect("complete");

    // A manual retry from the checkpoint: a fresh attempt budget, the count goes on.
    let job = s
        .transition(
            Transition::new("crawl", State::Queued, EventKind::Queued, T0 + 60)
                .expect(&[State::Completed])
                .changes(Changes {
                    new_attempt_budget: true,
                    ..Changes::default()
                }),
        )
        .await
        .expect("manual retry");
    assert_eq!(job.state, State::Queued);
    assert_eq!(
        (&job.result, &job.error, job.finished_at),
        (&None, &None, None)
    );
    let c3 = claim_one(s, "default", T0 + 61).await;
    assert_eq!(c3.checkpoint, Some(json!({"page": 3})));
    assert_eq!((c3.job.attempt, c3.retries_left), (3, 2));
    s.transition(
        Transition::new("crawl", State::Failed, EventKind::Failed, T0 + 70)
            .fence(c3.fence)
            .changes(Changes {
                error: Some(ErrorInfo::new("handler_error", "parse error")),
                ..Changes::default()
            }),
    )
    .await
    .expect("fail");

    // A manual retry from scratch.
    s.transition(
        Transition::new("crawl", State::Queued, EventKind::Queued, T0 + 80)
            .expect(&[State::Failed])
            .changes(Changes {
                new_attempt_budget: true,
                clear_checkpoint: true,
                ..Changes::default()
            }),
    )
    .await
    .expect("retry from scratch");
    let c4 = claim_one(s, "default", T0 + 81).await;
    assert_eq!(c4.checkpoint, None);
    assert_eq!((c4.job.attempt, c4.retries_left), (4, 2));

    let saved: Vec<_> = events_of(s, "crawl")
        .await
        .into_iter()
        .filter(|e| e.kind == EventKind::Checkpoint)
        .map(|e| e.data["checkpoint"].clone())
        .collect();
    assert_eq!(
        saved,
        [json!({"page": 1}), json!({"page": 2}), json!({"page": 3})]
    );

    // Each start names the checkpoint it resumed from; the one from scratch none.
    let starts = s
        .job_events_of("crawl", &[EventKind::Started], 0, 100)
        .await
        .expect("starts");
    assert!(starts.iter().all(|e| e.kind == EventKind::Started));
    // Like every change of state, a start says where the job came from.
    assert!(
        starts.iter().all(|e| e.data["from"] == "queued"),
        "{starts:?}"
    );
    assert!(starts.windows(2).all(|w| w[0].seq < w[1].seq));
    let resumed: Vec<_> = starts
        .iter()
        .map(|e| (e.data["attempt"].clone(), e.data.get("checkpoint").cloned()))
        .collect();
    assert_eq!(
        resumed,
        [
            (json!(1), None),
            (json!(2), Some(json!({"seq": cps[1].seq, "step": "fetch"}))),
            (json!(3), Some(json!({"seq": cps[2].seq, "step": "parse"}))),
            (json!(4), None),
        ]
    );
    // Kinds filter, `after` pages on the job's own order.
    let ends = s
        .job_events_of(
            "crawl",
            &[EventKind::Completed, EventKind::Failed],
            starts[1].seq,
            100,
        )
        .await
        .expect("ends");
    assert_eq!(
        ends.iter().map(|e| e.kind).collect::<Vec<_>>(),
        [EventKind::Completed, EventKind::Failed]
    );
    let first = s
        .job_events_of("crawl", &[EventKind::Started], 0, 1)
        .await
        .expect("page");
    assert_eq!(first.len(), 1);
    assert!(
        s.job_events_of("nope", &[EventKind::Started], 0, 10)
            .await
            .expect("unknown job")
            .is_empty()
    );
}

/// Recovery after a crash: running and paused jobs become `crashed` and then
/// `queued` again without using up an attempt, resuming from their checkpoint; a job
/// that was stopping is cancelled; other jobs are left alone.
pub async fn recover_requeues_executing_jobs(store: Arc<dyn Store>) {
    let s = &*store;
    for id in ["run", "pause", "stop", "done"] {
        submit(s, JobSpec::new("work").id(id), T0).await;
    }
    let claimed = claim(s, "default", 4, T0 + 1).await;
    assert_eq!(ids(&claimed), ["run", "pause", "stop", "done"]);
    let fence = |i: usize| claimed[i].fence;
    s.update("run", fence(0), T0 + 2, checkpoint(7, "fetch"))
        .await
        .expect("checkpoint");
    s.transition(
        Transition::new("pause", State::Paused, EventKind::Paused, T0 + 3).fence(fence(1)),
    )
    .await
    .expect("pause");
    s.transition(
        Transition::new("stop", State::Stopping, EventKind::Stopping, T0 + 4).fence(fence(2)),
    )
    .await
    .expect("stop");
    s.transition(
        Transition::new("done", State::Completed, EventKind::Completed, T0 + 5).fence(fence(3)),
    )
    .await
    .expect("complete");
    submit(s, JobSpec::new("work").id("wait"), T0 + 6).await;
    let untouched = [snapshot_job(s, "done").await, snapshot_job(s, "wait").await];

    let mut recovered = s
        .recover(RecoverRequest {
            server_id: None,
            jobs: None,
            now: T0 + 100,
            manual: false,
            cleanup: Default::default(),
        })
        .await
        .expect("recover");
    recovered.sort_by(|a, b| a.job_id.cmp(&b.job_id));
    let r = |id: &str, was, now| Recovered {
        job_id: id.into(),
        queue: "default".into(),
        was,
        now,
    };
    assert_eq!(
        recovered,
        [
            r("pause", State::Paused, State::Queued),
            r("run", State::Running, State::Queued),
            r("stop", State::Stopping, State::Cancelled),
        ]
    );

    for id in ["run", "pause"] {
        let job = get(s, id).await;
        assert_eq!(job.state, State::Queued, "{id}");
        assert_eq!(job.recoveries, 1, "{id}");
        assert_eq!(job.finished_at, None, "{id}");
        let events = events_of(s, id).await;
        let tail = &events[events.len() - 2..];
        assert_eq!(
            kinds(tail),
            [EventKind::Crashed, EventKind::Recovered],
            "{id}"
        );
        assert!(tail.iter().all(|e| e.at == T0 + 100));
        assert_eq!(tail[0].data["state"], "crashed");
        assert_eq!(tail[1].data["state"], "queued");
    }
    let stop = get(s, "stop").await;
    assert_eq!(stop.state, State::Cancelled);
    assert_eq!(stop.finished_at, Some(T0 + 100));
    let events = events_of(s, "stop").await;
    assert_eq!(
        kinds(&events[events.len() - 2..]),
        [EventKind::Crashed, EventKind::Cancelled]
    );
    assert_eq!(
        [snapshot_job(s, "done").await, snapshot_job(s, "wait").await],
        untouched
    );
    assert!(
        s.recover(RecoverRequest {
            server_id: None,
            jobs: None,
            now: T0 + 150,
            manual: false,
            cleanup: Default::default()
        })
        .await
        .expect("recover")
        .is_empty(),
        "nothing left to recover"
    );

    // The crash did not use up an attempt, and the job resumes from its checkpoint.
    let again = claim(s, "default", 10, T0 + 200).await;
    assert_eq!(ids(&again), ["run", "pause", "wait"]);
    assert_eq!((again[0].job.attempt, again[0].retries_left), (1, 2));
    assert_eq!(again[0].checkpoint, Some(json!({"page": 7})));
    assert_eq!(again[1].job.attempt, 1);
}

/// With manual recovery a crashed job waits for a person, who can queue it again.
pub async fn recover_manual_leaves_jobs_crashed(store: Arc<dyn Store>) {
    let s = &*store;
    submit(s, JobSpec::new("work").id("job-1"), T0).await;
    claim_one(s, "default", T0 + 1).await;
    let recovered = s
        .recover(RecoverRequest {
            server_id: None,
            jobs: None,
            now: T0 + 100,
            manual: true,
            cleanup: Default::default(),
        })
        .await
        .expect("recover");
    assert_eq!(
        recovered,
        [Recovered {
            job_id: "job-1".into(),
            queue: "default".into(),
            was: State::Running,
            now: State::Crashed,
        }]
    );
    let job = get(s, "job-1").await;
    assert_eq!(job.state, State::Crashed);
    assert_eq!(job.finished_at, None);
    assert_eq!(
        events_of(s, "job-1").await.last().map(|e| e.kind),
        Some(EventKind::Crashed)
    );
    assert!(claim(s, "default", 10, T0 + 101).await.is_empty());
    assert!(
        s.recover(RecoverRequest {
            server_id: None,
            jobs: None,
            now: T0 + 102,
            manual: true,
            cleanup: Default::default()
        })
        .await
        .expect("recover")
        .is_empty(),
        "a crashed job is not crashed again"
    );

    s.transition(
        Transition::new("job-1", State::Queued, EventKind::Recovered, T0 + 200)
            .expect(&[State::Crashed]),
    )
    .await
    .expect("a person queues it again");
    assert_eq!(ids(&claim(s, "default", 10, T0 + 201).await), ["job-1"]);
}

/// A `job.crashed` event says which server ran the job and its last heartbeat, the
/// job's last sign of life, its last checkpoint and what the attempt did after it.
pub async fn recover_records_what_the_crash_cost(store: Arc<dyn Store>) {
    let s = &*store;
    s.register_server(server(SERVER, T0))
        .await
        .expect("register");
    s.heartbeat(SERVER, T0 + 40).await.expect("heartbeat");
    submit(s, JobSpec::command(["true"]).id("saved"), T0).await;
    submit(s, JobSpec::new("work").id("bare"), T0).await;
    let c = claim(s, "default", 2, T0 + 1).await;
    let (saved, bare) = (c[0].fence, c[1].fence);
    s.update("saved", saved, T0 + 2, progress(0.1))
        .await
        .expect("progress");
    s.update("saved", saved, T0 + 3, checkpoint(1, "fetch"))
        .await
        .expect("checkpoint");
    s.update("saved", saved, T0 + 4, checkpoint(2, "fetch"))
        .await
        .expect("checkpoint");
    s.update("saved", saved, T0 + 5, progress(0.2))
        .await
        .expect("progress");
    s.update("saved", saved, T0 + 6, progress(0.3))
        .await
        .expect("progress");
    s.update("saved", saved, T0 + 7, Update::Step("parse".into()))
        .await
        .expect("step");
    s.update("saved", saved, T0 + 8, Update::Output("half".into()))
        .await
        .expect("output");
    s.append_logs(AppendLogs {
        job_id: "saved".into(),
        fence: saved,
        now: T0 + 9,
        lines: vec![("stdout".into(), "a".into()), ("stderr".into(), "b".into())],
        max_lines: 100,
    })
    .await
    .expect("append");
    s.update("bare", bare, T0 + 10, progress(0.5))
        .await
        .expect("progress");

    s.recover(RecoverRequest {
        server_id: None,
        jobs: None,
        now: T0 + 100,
        manual: false,
        cleanup: Default::default(),
    })
    .await
    .expect("recover");
    let crashed = |events: Vec<Event>| {
        events
            .into_iter()
            .find(|e| e.kind == EventKind::Crashed)
            .expect("a job.crashed event")
            .data
    };
    let at = |ms| json!(baton_core::time::to_rfc3339(ms));
    let d = crashed(events_of(s, "saved").await);
    assert_eq!(d["server_id"], SERVER);
    assert_eq!(d["heartbeat_at"], at(T0 + 40));
    assert_eq!(d["last_event_at"], at(T0 + 9));
    let cp = events_of(s, "saved").await;
    let cp_seq = cp
        .iter()
        .filter(|e| e.kind == EventKind::Checkpoint)
        .map(|e| e.seq)
        .max();
    assert_eq!(
        d["checkpoint"],
        json!({"seq": cp_seq, "at": at(T0 + 4), "attempt": 1})
    );
    assert_eq!(
        d["since_checkpoint"],
        json!({"from_seq": cp_seq, "progress": 2, "steps": 1, "output": 1, "log_lines": 2})
    );
    assert_eq!(
        (d["reason"].is_string(), &d["was"]),
        (true, &json!("running"))
    );

    let d = crashed(events_of(s, "bare").await);
    assert_eq!(d["checkpoint"], serde_json::Value::Null, "it wrote none");
    assert_eq!(
        d["since_checkpoint"]["progress"], 1,
        "counted from the attempt's start"
    );
    assert_eq!(d["last_event_at"], at(T0 + 10));
}

/// A job recovered `max_recoveries` times fails at its next crash with error code
/// `crashed`, so a job that kills its server cannot loop forever.
pub async fn recover_fails_a_job_after_max_recoveries(store: Arc<dyn Store>) {
    let s = &*store;
    let crash = |now| RecoverRequest {
        server_id: None,
        jobs: None,
        now,
        manual: false,
        cleanup: Default::default(),
    };
    submit(s, JobSpec::new("work").id("fragile").max_recoveries(1), T0).await;
    claim_one(s, "default", T0 + 1).await;
    let r = s.recover(crash(T0 + 10)).await.expect("recover");
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].now, State::Queued);
    assert_eq!(get(s, "fragile").await.recoveries, 1);

    claim_one(s, "default", T0 + 20).await;
    let r = s.recover(crash(T0 + 30)).await.expect("recover");
    assert_eq!(r.len(), 1);
    assert_eq!((r[0].was, r[0].now), (State::Running, State::Failed));
    let job = get(s, "fragile").await;
    assert_eq!(job.state, State::Failed);
    assert_eq!(job.error.as_ref().map(|e| e.code.as_str()), Some("crashed"));
    assert_eq!(job.finished_at, Some(T0 + 30));
    assert_eq!(
        kinds(&events_of(s, "fragile").await),
        [
            EventKind::Submitted,
            EventKind::Started,
            EventKind::Crashed,
            EventKind::Recovered,
            EventKind::Started,
            EventKind::Crashed,
            EventKind::Failed,
        ]
    );
    assert!(claim(s, "default", 10, T0 + 40).await.is_empty());

    submit(
        s,
        JobSpec::new("work").id("glass").max_recoveries(0),
        T0 + 50,
    )
    .await;
    claim_one(s, "default", T0 + 51).await;
    let r = s.recover(crash(T0 + 60)).await.expect("recover");
    assert_eq!(r.iter().map(|r| r.now).collect::<Vec<_>>(), [State::Failed]);
    let job = get(s, "glass").await;
    assert_eq!(job.error.as_ref().map(|e| e.code.as_str()), Some("crashed"));
}

/// An event of no job (a resource alert) is stored in the log, in order with the
/// rest, and published live once durable, with its data as given.
pub async fn notes_are_events_of_no_job(store: Arc<dyn Store>) {
    let s = &*store;
    let mut rx = s.subscribe();
    s.register_server(server("srv-1", T0))
        .await
        .expect("register");
    let data = json!({"resource": "memory", "value": 93.5, "threshold": 90.0,
        "message": "memory 93.5 % > 90 %", "server_id": "srv-1"});
    s.note(EventKind::ResourceAlert, data.clone(), T0 + 1)
        .await
        .expect("note the alert");
    s.note(
        EventKind::ResourceCleared,
        json!({"resource": "memory"}),
        T0 + 2,
    )
    .await
    .expect("note the clear");
    let log = all_events(s).await;
    assert_eq!(
        log.iter()
            .map(|e| (e.kind, e.job_id.clone(), e.seq, e.at))
            .collect::<Vec<_>>(),
        [
            (EventKind::ServerUp, None, 0, T0),
            (EventKind::ResourceAlert, None, 0, T0 + 1),
            (EventKind::ResourceCleared, None, 0, T0 + 2),
        ]
    );
    assert_eq!(log[1].data, data);
    let mut live = Vec::new();
    while let Ok(e) = rx.try_recv() {
        live.push((*e).clone());
    }
    assert_eq!(live, log, "published as stored");
}

/// Servers register, heartbeat and stop; each is listed as it last said, and their
/// coming and going are events.
pub async fn servers_register_heartbeat_and_stop(store: Arc<dyn Store>) {
    let s = &*store;
    assert!(s.servers().await.expect("servers").is_empty());
    let a = ServerInfo {
        url: Some("http://127.0.0.1:7700".into()),
        queues: vec!["default".into(), "mail".into()],
        workers: 16,
        ..server("srv-a", T0)
    };
    let b = server("srv-b", T0 + 5);
    s.register_server(a.clone()).await.expect("register a");
    s.register_server(b.clone()).await.expect("register b");
    assert_eq!(find_server(s, "srv-a").await, a);
    assert_eq!(find_server(s, "srv-b").await, b);

    s.heartbeat("srv-a", T0 + 1_000).await.expect("heartbeat");
    assert_eq!(find_server(s, "srv-a").await.heartbeat_at, T0 + 1_000);
    assert_eq!(find_server(s, "srv-b").await, b);

    s.server_stopped("srv-a", T0 + 2_000)
        .await
        .expect("stopped");
    assert_eq!(find_server(s, "srv-a").await.stopped_at, Some(T0 + 2_000));
    assert_eq!(find_server(s, "srv-b").await.stopped_at, None);

    // A server that starts again under its id is live again.
    let a2 = ServerInfo {
        started_at: T0 + 3_000,
        heartbeat_at: T0 + 3_000,
        ..a.clone()
    };
    s.register_server(a2.clone()).await.expect("register again");
    assert_eq!(find_server(s, "srv-a").await, a2);
    assert_eq!(s.servers().await.expect("servers").len(), 2);

    let log = all_events(s).await;
    assert_eq!(
        log.iter()
            .map(|e| (e.kind, e.job_id.clone(), e.data["server_id"].clone()))
            .collect::<Vec<_>>(),
        [
            (EventKind::ServerUp, None, json!("srv-a")),
            (EventKind::ServerUp, None, json!("srv-b")),
            (EventKind::ServerDown, None, json!("srv-a")),
            (EventKind::ServerUp, None, json!("srv-a")),
        ]
    );
}

/// Counts by queue and state, deleted jobs included.
/// A list filtered by states and a queue counts exactly (from the kept counts); one
/// filtered by more counts up to [`crate::LIST_COUNT_CAP`] and says when it stopped.
/// Outcomes and the claim that refills their slots, in one write: an outcome with a
/// stale fencing token is refused alone, the others land with their events, and the
/// claim takes a slot for each outcome that ended its attempt, refused or not.
pub async fn settle_records_outcomes_and_refills_their_slots(store: Arc<dyn Store>) {
    let s = &*store;
    for i in 0..6 {
        submit(s, JobSpec::new("work").id(format!("w{i}")), T0 + i).await;
    }
    let running = claim(s, "default", 3, T0 + 10).await;
    let ids: Vec<String> = running.iter().map(|c| c.job.id.to_string()).collect();
    assert_eq!(ids, ["w0", "w1", "w2"]);
    let done = |c: &Claimed, fence: u64| -> Arc<[Transition]> {
        vec![
            Transition::new(
                c.job.id.as_str(),
                State::Completed,
                EventKind::Completed,
                T0 + 20,
            )
            .fence(fence)
            .changes(Changes {
                result: Some(json!({"by": c.job.id.as_str()})),
                ..Changes::default()
            }),
        ]
        .into()
    };
    let settle = crate::Settle {
        outcomes: vec![
            done(&running[0], running[0].fence),
            done(&running[1], running[1].fence + 7),
            done(&running[2], running[2].fence),
        ],
        claim: Some(ClaimRequest {
            queue: "default".into(),
            limit: 0,
            server_id: SERVER.into(),
            now: T0 + 20,
            kinds: None,
        }),
    };
    let settled = s.settle(settle).await.expect("settle");
    assert!(settled.outcomes[0].is_ok(), "{:?}", settled.outcomes[0]);
    assert!(
        matches!(settled.outcomes[1], Err(Error::StaleFence { .. })),
        "{:?}",
        settled.outcomes[1]
    );
    assert!(settled.outcomes[2].is_ok(), "{:?}", settled.outcomes[2]);
    assert_eq!(settled.freed(), 3);
    let claimed: Vec<String> = settled
        .claimed
        .iter()
        .map(|c| c.job.id.to_string())
        .collect();
    assert_eq!(claimed, ["w3", "w4", "w5"], "a slot for each ended attempt");
    assert_eq!(get(s, "w0").await.state, State::Completed);
    assert_eq!(get(s, "w0").await.result, Some(json!({"by": "w0"})));
    assert_eq!(
        get(s, "w1").await.state,
        State::Running,
        "the refused one is untouched"
    );
    assert_eq!(get(s, "w2").await.state, State::Completed);
    let completed: Vec<Option<String>> = all_events(s)
        .await
        .into_iter()
        .filter(|e| e.kind == EventKind::Completed)
        .map(|e| e.job_id)
        .collect();
    assert_eq!(completed, [Some("w0".into()), Some("w2".into())]);

    // All landing together; no claim asked for.
    let settle = crate::Settle {
        outcomes: settled.claimed.iter().map(|c| done(c, c.fence)).collect(),
        claim: None,
    };
    let again = s.settle(settle).await.expect("settle");
    assert!(
        again.outcomes.iter().all(Result::is_ok),
        "{:?}",
        again.outcomes
    );
    assert!(again.claimed.is_empty());
    for id in ["w3", "w4", "w5"] {
        assert_eq!(get(s, id).await.state, State::Completed, "{id}");
    }
}

pub async fn list_totals_are_exact_by_state_and_queue_and_capped_otherwise(store: Arc<dyn Store>) {
    let s = &*store;
    let cap = crate::LIST_COUNT_CAP as usize;
    let jobs: Vec<NewJob> = (0..cap + 5)
        .map(|i| {
            new_job(
                JobSpec::new(if i % 2 == 0 { "even" } else { "odd" })
                    .id(format!("j{i}"))
                    .label("batch", "big"),
                T0,
            )
        })
        .collect();
    s.submit(jobs).await.expect("submit");
    submit(s, JobSpec::new("odd").id("media-1").queue("media"), T0).await;
    let page = |f: JobFilter| async move { list(s, f, 10).await };
    let all = page(JobFilter::default()).await;
    assert_eq!((all.total, all.total_exact), (cap as u64 + 6, true));
    let queued = page(JobFilter {
        states: vec![State::Queued],
        queue: Some("media".into()),
        ..JobFilter::default()
    })
    .await;
    assert_eq!((queued.total, queued.total_exact), (1, true));
    let none = page(JobFilter {
        states: vec![State::Failed],
        ..JobFilter::default()
    })
    .await;
    assert_eq!((none.total, none.total_exact), (0, true));
    // Under the cap, another filter counts exactly; past it, it says "at least".
    let odd = page(JobFilter {
        kind: Some("odd".into()),
        ..JobFilter::default()
    })
    .await;
    assert_eq!((odd.total, odd.total_exact), ((cap / 2 + 3) as u64, true));
    let labelled = page(JobFilter {
        label: Some(("batch".into(), "big".into())),
        ..JobFilter::default()
    })
    .await;
    assert_eq!((labelled.total, labelled.total_exact), (cap as u64, false));
    assert_eq!(labelled.jobs.len(), 10);
    // A job that moves on is counted where it is now.
    let c = claim_one(s, "media", T0 + 1).await;
    s.transition(
        Transition::new("media-1", State::Completed, EventKind::Completed, T0 + 2).fence(c.fence),
    )
    .await
    .expect("complete");
    let done = page(JobFilter {
        states: vec![State::Completed],
        ..JobFilter::default()
    })
    .await;
    assert_eq!((done.total, done.total_exact), (1, true));
}

pub async fn counts_by_queue_and_state(store: Arc<dyn Store>) {
    let s = &*store;
    assert!(
        nonzero_counts(s).await.is_empty(),
        "an empty store counts nothing"
    );
    submit(s, JobSpec::new("work").id("c"), T0).await;
    submit(s, JobSpec::new("work").id("d"), T0).await;
    let claimed = claim(s, "default", 2, T0 + 1).await;
    s.transition(
        Transition::new("d", State::Completed, EventKind::Completed, T0 + 2)
            .fence(claimed[1].fence),
    )
    .await
    .expect("complete");
    submit(s, JobSpec::new("work").id("a"), T0 + 3).await;
    submit(s, JobSpec::new("work").id("b"), T0 + 3).await;
    submit(
        s,
        JobSpec::new("mail")
            .id("e")
            .queue("mail")
            .delay(Duration::from_secs(60)),
        T0 + 4,
    )
    .await;
    submit(s, JobSpec::new("mail").id("f").queue("mail"), T0 + 4).await;
    s.transition(Transition::new(
        "f",
        State::Deleted,
        EventKind::Deleted,
        T0 + 5,
    ))
    .await
    .expect("delete");

    assert_eq!(
        nonzero_counts(s).await,
        [
            ("default".to_owned(), State::Queued, 2),
            ("default".to_owned(), State::Running, 1),
            ("default".to_owned(), State::Completed, 1),
            ("mail".to_owned(), State::Scheduled, 1),
            ("mail".to_owned(), State::Deleted, 1),
        ]
    );
    let counts = s.counts().await.expect("counts");
    assert_eq!(counts.total(State::Queued), 2);
    assert_eq!(counts.total(State::Deleted), 1);
    assert_eq!(counts.total(State::Failed), 0);
}

/// Jobs submitted with free workers start in the same write: `running` with attempt 1
/// and fence 1, with both events; the rest queue, and delayed jobs stay scheduled.
pub async fn submit_and_start_runs_new_jobs_in_one_write(store: Arc<dyn Store>) {
    let s = &*store;
    let existing = submit(s, JobSpec::new("work").id("old"), T0).await;
    let specs = vec![
        JobSpec::new("work").id("a"),
        JobSpec::new("work").id("old"),
        JobSpec::new("work")
            .id("later")
            .delay(Duration::from_secs(5)),
        JobSpec::new("work").id("b"),
        JobSpec::new("work").id("c"),
    ];
    let jobs = specs.into_iter().map(|spec| new_job(spec, T0)).collect();
    let start = StartNow {
        server_id: SERVER.into(),
        max: 2,
    };
    let out = s
        .submit_and_start(jobs, start)
        .await
        .expect("submit_and_start");
    let started: Vec<&str> = out
        .iter()
        .filter_map(|o| o.claimed.as_ref().map(|c| c.job.id.as_str()))
        .collect();
    assert_eq!(started, vec!["a", "b"]);
    assert!(
        !out[1].created && out[1].claimed.is_none(),
        "an existing id is returned, not started"
    );
    assert_eq!(out[1].job, existing);
    assert_eq!(out[2].job.state, State::Scheduled);
    let a = out[0].claimed.clone().unwrap();
    assert_eq!(
        (a.fence, a.job.attempt, a.job.state),
        (1, 1, State::Running)
    );
    assert_eq!(a.retries_left, 2);
    let stored = get(s, "a").await;
    assert_eq!(stored.state, State::Running);
    assert_eq!(stored.attempt, 1);
    assert_eq!(stored.started_at, Some(T0));
    let kinds: Vec<EventKind> = events_of(s, "a")
        .await
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(kinds, vec![EventKind::Submitted, EventKind::Started]);
    assert_eq!(get(s, "c").await.state, State::Queued);

    // The started attempt holds the job like a claimed one.
    s.transition(Transition::new("a", State::Completed, EventKind::Completed, T0 + 1).fence(1))
        .await
        .expect("complete with the attempt's fence");
    assert_eq!(get(s, "a").await.state, State::Completed);
    // What was not started is claimed in order: the old job first, then c.
    let ids: Vec<String> = claim(s, "default", 10, T0 + 2)
        .await
        .into_iter()
        .map(|c| c.job.id)
        .collect();
    assert_eq!(ids, vec!["old".to_string(), "c".to_string()]);
}

/// Shutdown hands this server's jobs back to the queue without counting a crash.
pub async fn release_hands_back_only_this_servers_jobs(store: Arc<dyn Store>) {
    let s = &*store;
    for id in ["a", "b", "c"] {
        submit(s, JobSpec::new("work").id(id), T0).await;
    }
    let mine = claim(s, "default", 2, T0 + 1).await;
    assert_eq!(mine.len(), 2);
    let other = s
        .claim(ClaimRequest {
            queue: "default".into(),
            limit: 1,
            server_id: "server-b".into(),
            now: T0 + 1,
            kinds: None,
        })
        .await
        .unwrap();
    assert_eq!(other[0].job.id, "c");
    s.update(
        "a",
        mine[0].fence,
        T0 + 2,
        Update::Checkpoint {
            data: json!({"page": 3}),
            step: None,
        },
    )
    .await
    .unwrap();
    s.transition(Transition::new(
        "b",
        State::Paused,
        EventKind::Paused,
        T0 + 2,
    ))
    .await
    .unwrap();

    let released = s.release(SERVER, T0 + 3).await.expect("release");
    let mut ids: Vec<&str> = released.iter().map(|r| r.job_id.as_str()).collect();
    ids.sort();
    assert_eq!(ids, vec!["a", "b"]);
    assert!(released.iter().all(|r| r.now == State::Queued));
    for id in ["a", "b"] {
        let job = get(s, id).await;
        assert_eq!(
            (job.state, job.attempt, job.recoveries),
            (State::Queued, 0, 0),
            "{id}"
        );
        let last = events_of(s, id).await.pop().unwrap();
        assert_eq!(last.kind, EventKind::Queued);
        assert_eq!(last.data["reason"], "shutdown");
    }
    assert_eq!(
        get(s, "c").await.state,
        State::Running,
        "another server's job is left alone"
    );
    let again = claim_one(s, "default", T0 + 4).await;
    assert_eq!(again.job.id, "a");
    assert_eq!(again.job.attempt, 1, "the interrupted attempt continues");
    assert_eq!(again.checkpoint, Some(json!({"page": 3})));
}

/// Log lines are stored in order with their stream and attempt, each a `job.log` event;
/// past the bound one marker line is kept and everything later is dropped.
pub async fn logs_are_appended_paged_and_bounded(store: Arc<dyn Store>) {
    let s = &*store;
    submit(s, JobSpec::command(["true"]).id("job-1"), T0).await;
    let c = claim_one(s, "default", T0 + 1).await;
    let append = |lines: &[(&str, &str)], now| AppendLogs {
        job_id: "job-1".into(),
        fence: c.fence,
        now,
        lines: lines
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect(),
        max_lines: 5,
    };
    let a = s
        .append_logs(append(&[("stdout", "one"), ("stderr", "two")], T0 + 2))
        .await
        .expect("append");
    assert_eq!(
        a,
        Appended {
            stored: 2,
            full: false
        }
    );
    let a = s
        .append_logs(append(
            &[
                ("stdout", "three"),
                ("stdout", "four"),
                ("stdout", "five"),
                ("stdout", "six"),
            ],
            T0 + 3,
        ))
        .await
        .expect("append past the bound");
    assert_eq!(
        a,
        Appended {
            stored: 3,
            full: true
        }
    );
    let a = s
        .append_logs(append(&[("stdout", "seven")], T0 + 4))
        .await
        .expect("append to a full log");
    assert_eq!(
        a,
        Appended {
            stored: 0,
            full: true
        }
    );

    let all = s.logs("job-1", 0, 100).await.expect("logs");
    let lines: Vec<(&str, &str)> = all
        .iter()
        .map(|l| (l.stream.as_str(), l.line.as_str()))
        .collect();
    assert_eq!(
        &lines[..5],
        &[
            ("stdout", "one"),
            ("stderr", "two"),
            ("stdout", "three"),
            ("stdout", "four"),
            ("stdout", "five")
        ]
    );
    assert_eq!(
        all.len(),
        6,
        "five lines and one truncation marker: {lines:?}"
    );
    assert_eq!(all[5].stream, "baton");
    assert!(all[5].line.contains("truncated"), "{:?}", all[5]);
    assert_eq!(
        all.iter().map(|l| l.seq).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5, 6]
    );
    assert!(all.iter().all(|l| l.attempt == 1));
    assert_eq!((all[0].at, all[2].at), (T0 + 2, T0 + 3));

    // Paging: after a seq, at most limit lines.
    let page = s.logs("job-1", 2, 2).await.expect("logs page");
    assert_eq!(
        page.iter().map(|l| l.line.as_str()).collect::<Vec<_>>(),
        ["three", "four"]
    );
    assert!(s.logs("job-1", 6, 10).await.expect("logs").is_empty());
    assert!(s.logs("no-such-job", 0, 10).await.expect("logs").is_empty());

    // Each stored line (and the marker) is one job.log event, in order.
    let events = events_of(s, "job-1").await;
    let logged: Vec<&Event> = events.iter().filter(|e| e.kind == EventKind::Log).collect();
    assert_eq!(logged.len(), 6);
    assert_eq!(logged[1].data["stream"], "stderr");
    assert_eq!(logged[1].data["line"], "two");
    assert_eq!(logged[1].data["seq"], 2);
    assert_eq!(logged[5].data["truncated"], true);
    assert_eq!(
        seqs(&events),
        (1..=events.len() as u64).collect::<Vec<_>>(),
        "the job's events stay gapless"
    );
}

pub async fn logs_from_a_stale_attempt_are_refused(store: Arc<dyn Store>) {
    let s = &*store;
    submit(s, JobSpec::command(["true"]).id("job-1"), T0).await;
    let c = claim_one(s, "default", T0 + 1).await;
    let req = AppendLogs {
        job_id: "job-1".into(),
        fence: c.fence + 1,
        now: T0 + 2,
        lines: vec![("stdout".into(), "late".into())],
        max_lines: 100,
    };
    match s.append_logs(req).await {
        Err(Error::StaleFence { .. }) => {}
        other => panic!("expected StaleFence, got {other:?}"),
    }
    match s
        .set_process(
            "job-1",
            c.fence + 1,
            Some(JobProcess {
                pgid: 42,
                start_time: 7,
            }),
        )
        .await
    {
        Err(Error::StaleFence { .. }) => {}
        other => panic!("expected StaleFence, got {other:?}"),
    }
    assert!(s.logs("job-1", 0, 10).await.expect("logs").is_empty());
    assert!(s.processes().await.expect("processes").is_empty());
}

/// The process group of a running attempt is listed until recovery has dealt with it;
/// recovery puts what the engine cleaned up into the job's events.
pub async fn processes_of_executing_jobs_are_listed_and_cleared_by_recovery(store: Arc<dyn Store>) {
    let s = &*store;
    s.register_server(server(SERVER, T0))
        .await
        .expect("register");
    submit(s, JobSpec::command(["true"]).id("job-1"), T0).await;
    submit(s, JobSpec::command(["true"]).id("job-2"), T0).await;
    let claimed = claim(s, "default", 2, T0 + 1).await;
    let p = |pgid| JobProcess {
        pgid,
        start_time: 1000 + pgid as u64,
    };
    for (c, pgid) in claimed.iter().zip([100, 200]) {
        s.set_process(&c.job.id, c.fence, Some(p(pgid)))
            .await
            .expect("set process");
    }
    // The second job finished: its process is no longer of interest.
    let second = claimed.iter().find(|c| c.job.id == "job-2").unwrap();
    s.record(
        Transition::new("job-2", State::Completed, EventKind::Completed, T0 + 2)
            .fence(second.fence),
    )
    .await
    .expect("complete");
    let first = claimed.iter().find(|c| c.job.id == "job-1").unwrap();
    s.set_process("job-1", first.fence, Some(p(101)))
        .await
        .expect("a new step's process replaces the old");
    assert_eq!(
        s.processes().await.expect("processes"),
        [ProcessRecord {
            job_id: "job-1".into(),
            process: p(101),
            server_id: Some(SERVER.into()),
            host: Some("host-1".into()),
        }]
    );

    let mut cleanup = std::collections::BTreeMap::new();
    cleanup.insert("job-1".to_string(), json!({"killed_pgids": [101]}));
    s.recover(RecoverRequest {
        server_id: None,
        jobs: None,
        now: T0 + 10,
        manual: false,
        cleanup,
    })
    .await
    .expect("recover");
    assert!(s.processes().await.expect("processes").is_empty());
    let events = events_of(s, "job-1").await;
    let crashed = events
        .iter()
        .find(|e| e.kind == EventKind::Crashed)
        .unwrap();
    assert_eq!(crashed.data["killed_pgids"], json!([101]));
    assert_eq!(crashed.data["state"], "crashed");
    let recovered = events
        .iter()
        .find(|e| e.kind == EventKind::Recovered)
        .unwrap();
    assert_eq!(recovered.data["killed_pgids"], json!([101]));
    assert_eq!(recovered.data["recoveries"], 1);
}

pub async fn pipelines_are_stored_replaced_listed_and_deleted(store: Arc<dyn Store>) {
    use baton_core::{PipelineSpec, StepSpec};
    let s = &*store;
    assert_eq!(s.pipeline("alfabeta").await.expect("get"), None);
    let mut spec = PipelineSpec::new(
        "alfabeta",
        vec![
            StepSpec::new("fetch", &["fetch.sh"]).retries(2),
            StepSpec::new("load", &["load.sh"]),
        ],
    );
    spec.queue = Some("scrapers".into());
    let put = s.put_pipeline(spec.clone(), T0).await.expect("put");
    assert_eq!((put.created_at, put.updated_at), (T0, T0));
    assert_eq!(put.spec, spec);
    let got = s.pipeline("alfabeta").await.expect("get").expect("stored");
    assert_eq!(got, put);

    spec.priority = Some(4);
    let replaced = s.put_pipeline(spec.clone(), T0 + 5).await.expect("replace");
    assert_eq!((replaced.created_at, replaced.updated_at), (T0, T0 + 5));
    assert_eq!(
        s.pipeline("alfabeta")
            .await
            .expect("get")
            .unwrap()
            .spec
            .priority,
        Some(4)
    );
    s.put_pipeline(
        PipelineSpec::new("a-first", vec![StepSpec::new("x", &["true"])]),
        T0,
    )
    .await
    .expect("put");
    let ids: Vec<String> = s
        .pipelines()
        .await
        .expect("list")
        .into_iter()
        .map(|p| p.spec.id)
        .collect();
    assert_eq!(ids, ["a-first", "alfabeta"]);
    assert!(s.delete_pipeline("alfabeta").await.expect("delete"));
    assert!(!s.delete_pipeline("alfabeta").await.expect("delete again"));
    assert_eq!(s.pipeline("alfabeta").await.expect("get"), None);
}

fn new_job(spec: JobSpec, now: Millis) -> NewJob {
    spec.validate(now, &Limits::default())
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Submits one new job and returns it.
async fn submit(s: &dyn Store, spec: JobSpec, now: Millis) -> Job {
    let mut out = s.submit(vec![new_job(spec, now)]).await.expect("submit");
    assert_eq!(out.len(), 1);
    let submitted = out.remove(0);
    assert!(submitted.created, "{} is new", submitted.job.id);
    submitted.job
}

async fn claim(s: &dyn Store, queue: &str, limit: usize, now: Millis) -> Vec<Claimed> {
    s.claim(ClaimRequest {
        queue: queue.into(),
        limit,
        server_id: SERVER.into(),
        now,
        kinds: None,
    })
    .await
    .expect("claim")
}

async fn claim_one(s: &dyn Store, queue: &str, now: Millis) -> Claimed {
    let mut claimed = claim(s, queue, 1, now).await;
    assert_eq!(claimed.len(), 1, "one job to claim in {queue}");
    claimed.remove(0)
}

async fn get(s: &dyn Store, id: &str) -> Job {
    s.get(id)
        .await
        .expect("get")
        .unwrap_or_else(|| panic!("job {id} exists"))
}

async fn list(s: &dyn Store, filter: JobFilter, limit: usize) -> JobPage {
    s.list(JobFilter { limit, ..filter }).await.expect("list")
}

/// The filter for the page after `prev`.
fn page(filter: JobFilter, prev: &JobPage) -> JobFilter {
    JobFilter {
        cursor: Some(prev.next_cursor.clone().expect("a next page")),
        ..filter
    }
}

async fn events_of(s: &dyn Store, id: &str) -> Vec<Event> {
    s.job_events(id, 0, 10_000).await.expect("job_events")
}

async fn all_events(s: &dyn Store) -> Vec<Event> {
    s.events_after(0, 100_000).await.expect("events_after")
}

async fn checkpoints(s: &dyn Store, id: &str) -> Vec<Checkpoint> {
    s.checkpoints(id).await.expect("checkpoints")
}

/// The job, the whole event log and the job's checkpoints: what a refused write must
/// leave as it was.
async fn snapshot(s: &dyn Store, id: &str) -> (Option<Job>, Vec<Event>, Vec<Checkpoint>) {
    (
        s.get(id).await.expect("get"),
        all_events(s).await,
        checkpoints(s, id).await,
    )
}

/// The job and its own events.
async fn snapshot_job(s: &dyn Store, id: &str) -> (Job, Vec<Event>) {
    (get(s, id).await, events_of(s, id).await)
}

async fn next_live(rx: &mut broadcast::Receiver<Arc<Event>>) -> Arc<Event> {
    match tokio::time::timeout(Duration::from_secs(10), rx.recv()).await {
        Ok(Ok(e)) => e,
        Ok(Err(e)) => panic!("live events: {e}"),
        Err(_) => panic!("no live event within 10 s"),
    }
}

/// Receives live events up to the first that `last` accepts, and checks that each is
/// in the store's log: a refused write must not publish an event it did not store.
/// (A subscriber may still get events of writes that returned just before it
/// subscribed; readers skip those by id.)
async fn assert_live_events_are_logged(
    s: &dyn Store,
    rx: &mut broadcast::Receiver<Arc<Event>>,
    last: impl Fn(&Event) -> bool,
) {
    let mut live = Vec::new();
    loop {
        let e = next_live(rx).await;
        let done = last(&e);
        live.push(e);
        if done {
            break;
        }
    }
    let log = all_events(s).await;
    for e in live {
        assert!(log.contains(&e), "published but not stored: {e:?}");
    }
}

async fn find_server(s: &dyn Store, id: &str) -> ServerInfo {
    s.servers()
        .await
        .expect("servers")
        .into_iter()
        .find(|x| x.id == id)
        .unwrap_or_else(|| panic!("server {id} is listed"))
}

async fn nonzero_counts(s: &dyn Store) -> Vec<(String, State, u64)> {
    let mut rows: Vec<_> = s
        .counts()
        .await
        .expect("counts")
        .rows
        .into_iter()
        .filter(|(_, _, n)| *n > 0)
        .collect();
    rows.sort();
    rows
}

fn server(id: &str, now: Millis) -> ServerInfo {
    ServerInfo {
        id: id.into(),
        host: "host-1".into(),
        pid: 4242,
        url: None,
        started_at: now,
        heartbeat_at: now,
        stopped_at: None,
        queues: vec!["default".into()],
        workers: 4,
    }
}

fn progress(fraction: f64) -> Update {
    Update::Progress {
        fraction: Some(fraction),
        message: None,
    }
}

fn checkpoint(page: u32, step: &str) -> Update {
    Update::Checkpoint {
        data: json!({"page": page}),
        step: Some(step.into()),
    }
}

fn event_for(to: State) -> EventKind {
    match to {
        State::Scheduled => EventKind::Scheduled,
        State::Awaiting => EventKind::Awaiting,
        State::Queued => EventKind::Queued,
        State::Running => EventKind::Started,
        State::Paused => EventKind::Paused,
        State::Stopping => EventKind::Stopping,
        State::Crashed => EventKind::Crashed,
        State::Completed => EventKind::Completed,
        State::Failed => EventKind::Failed,
        State::Cancelled => EventKind::Cancelled,
        State::Deleted => EventKind::Deleted,
    }
}

fn ids(claimed: &[Claimed]) -> Vec<&str> {
    claimed.iter().map(|c| c.job.id.as_str()).collect()
}

fn ids_of(page: &JobPage) -> Vec<&str> {
    page.jobs.iter().map(|j| j.id.as_str()).collect()
}

fn kinds(events: &[Event]) -> Vec<EventKind> {
    events.iter().map(|e| e.kind).collect()
}

fn seqs(events: &[Event]) -> Vec<u64> {
    events.iter().map(|e| e.seq).collect()
}
