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

baton_store::store_conformance_tests!(@each fresh();
    submit_claim_complete,
    settle_records_outcomes_and_refills_their_slots,
    claim_takes_higher_priority_first_then_fifo_within_its_queue,
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
    checkpoints_resume_the_next_claim,
    recover_requeues_executing_jobs,
    recover_manual_leaves_jobs_crashed,
    recover_fails_a_job_after_max_recoveries,
    recover_records_what_the_crash_cost,
    recovery_of_a_server_leaves_other_servers_attempts_alone,
    servers_register_heartbeat_and_stop,
    counts_by_queue_and_state,
    list_totals_are_exact_by_state_and_queue_and_capped_otherwise,
    submit_and_start_runs_new_jobs_in_one_write,
    release_hands_back_only_this_servers_jobs,
    logs_are_appended_paged_and_bounded,
    logs_from_a_stale_attempt_are_refused,
    processes_of_executing_jobs_are_listed_and_cleared_by_recovery,
    pipelines_are_stored_replaced_listed_and_deleted,
    a_unique_key_has_one_active_holder,
    queues_pause_and_resume_with_events,
    throughput_is_counted_per_second_and_minute_by_the_ending_write,
    schedules_are_created_replaced_listed_and_deleted,
    fire_submits_jobs_and_moves_the_schedule_in_one_write,
    overlap_skip_and_queue_decide_on_active_jobs,
    history_pages_newest_first_with_job_outcomes,
    fires_skip_a_job_whose_unique_key_is_held,
    dependents_are_queued_in_the_write_that_ends_their_last_dependency,
    a_fan_in_job_is_queued_once_when_its_dependencies_end_together,
    dependents_of_dependencies_that_end_in_one_write_are_settled_once,
    a_dependency_on_an_unknown_job_is_refused_without_writing,
    conditions_decide_whether_a_dependent_runs,
    a_dependency_that_ended_already_is_decided_at_submit,
    cancellation_runs_down_a_long_chain,
    workflows_are_stored_whole_and_read_back_as_graphs,
    a_paused_workflow_starts_nothing_until_resumed,
    a_workflow_retries_its_failed_part_and_cancels_as_a_whole,
    workflows_are_listed_newest_first_with_their_counts,
);

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
