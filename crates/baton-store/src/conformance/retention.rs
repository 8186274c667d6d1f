//! Conformance tests for retention: which jobs and events [`Store::prune`] removes, and
//! what it must never remove.

use std::collections::BTreeMap;
use std::sync::Arc;

use baton_core::{EventKind, JobSpec, Millis, State};
use serde_json::json;

use super::{T0, all_events, checkpoint, claim_one, events_of, get, list, submit};
use crate::{
    AppendLogs, Changes, JobFilter, NewWorkflow, PruneRequest, Pruned, Store, Transition,
    WorkflowFilter,
};

const HOUR: Millis = 3_600_000;
const DAY: Millis = 24 * HOUR;

/// A job alone in its queue (`q-<id>` unless given), so that a test can run exactly it.
fn job(id: &str) -> JobSpec {
    JobSpec::new("task").id(id).queue(format!("q-{id}"))
}

/// Claims the job of `queue` and moves it to `to` at `now`.
async fn end(s: &dyn Store, queue: &str, to: State, now: Millis) -> String {
    let c = claim_one(s, queue, now - 1).await;
    let kind = match to {
        State::Completed => EventKind::Completed,
        State::Failed => EventKind::Failed,
        _ => EventKind::Cancelled,
    };
    s.transition(Transition::new(c.job.id.clone(), to, kind, now).fence(c.fence))
        .await
        .expect("end");
    c.job.id
}

fn prune_at(now: Millis, limit: usize) -> PruneRequest {
    PruneRequest {
        now,
        retention: Some(DAY),
        queues: BTreeMap::from([
            ("audit".to_owned(), Some(30 * DAY)),
            ("forever".to_owned(), None),
        ]),
        limit,
        after: None,
    }
}

/// Finished jobs past their queue's retention go with their events, logs,
/// checkpoints, labels and counts; unfinished jobs, younger ones, jobs of queues kept
/// longer or for ever, a job an unfinished job depends on, a job changed lately and the
/// newest job stay; events of no job go by age; a reader that resumes within the
/// retention misses nothing.
pub async fn prune_removes_finished_jobs_past_their_retention_and_nothing_else(
    store: Arc<dyn Store>,
) {
    let s = &*store;
    // Old and finished: pruned.
    submit(s, job("done").label("team", "growth"), T0).await;
    let c = claim_one(s, "q-done", T0 + 1).await;
    s.update("done", c.fence, T0 + 2, checkpoint(1, "fetch"))
        .await
        .expect("checkpoint");
    s.append_logs(AppendLogs {
        job_id: "done".into(),
        fence: c.fence,
        now: T0 + 3,
        lines: vec![("stdout".into(), "fetched".into())],
        max_lines: 100,
    })
    .await
    .expect("logs");
    s.transition(
        Transition::new("done", State::Completed, EventKind::Completed, T0 + 4)
            .fence(c.fence)
            .changes(Changes {
                result: Some(json!({"pages": 1})),
                ..Changes::default()
            }),
    )
    .await
    .expect("complete");
    submit(s, job("failed"), T0).await;
    end(s, "q-failed", State::Failed, T0 + 5).await;
    submit(s, job("cancelled"), T0).await;
    s.transition(Transition::new(
        "cancelled",
        State::Cancelled,
        EventKind::Cancelled,
        T0 + 6,
    ))
    .await
    .expect("cancel");
    // Old but unfinished: kept.
    submit(s, job("queued"), T0).await;
    submit(s, job("running"), T0).await;
    claim_one(s, "q-running", T0 + 7).await;
    // Old and finished, but kept: a longer retention, none, an unfinished dependent.
    submit(s, job("audited").queue("audit"), T0).await;
    end(s, "audit", State::Completed, T0 + 8).await;
    submit(s, job("kept").queue("forever"), T0).await;
    end(s, "forever", State::Completed, T0 + 9).await;
    submit(s, job("parent"), T0).await;
    end(s, "q-parent", State::Completed, T0 + 10).await;
    submit(
        s,
        job("child").depends_on("parent").depends_on("running"),
        T0 + 11,
    )
    .await;
    // Finished long ago, deleted lately: kept until the deletion is old too.
    submit(s, job("deleted"), T0).await;
    end(s, "q-deleted", State::Completed, T0 + 12).await;
    s.transition(Transition::new(
        "deleted",
        State::Deleted,
        EventKind::Deleted,
        T0 + DAY + 12 * HOUR,
    ))
    .await
    .expect("delete");
    // A queue's events (no job's): the old one goes, the recent one stays.
    s.set_queue_paused("q-queued", true, T0 + 13)
        .await
        .expect("pause");
    // Finished within the retention: kept.
    submit(s, job("recent"), T0 + DAY + 6 * HOUR).await;
    end(s, "q-recent", State::Completed, T0 + DAY + 7 * HOUR).await;
    s.set_queue_paused("q-queued", false, T0 + DAY + 8 * HOUR)
        .await
        .expect("resume");
    let recent_from = all_events(s)
        .await
        .iter()
        .find(|e| e.job_id.as_deref() == Some("recent"))
        .expect("recent's first event")
        .id
        - 1;
    // The newest job is old and finished, and still kept.
    submit(s, job("newest"), T0).await;
    end(s, "q-newest", State::Completed, T0 + 14).await;

    let before = all_events(s).await;
    let after_recent = s.events_after(recent_from, 1000).await.expect("events");
    let last_id = s.last_event_id().await.expect("last id");
    let doomed_ids: Vec<u64> = before
        .iter()
        .filter(|e| {
            matches!(e.job_id.as_deref(), Some("done" | "failed" | "cancelled"))
                || (e.job_id.is_none() && e.at < T0 + DAY)
        })
        .map(|e| e.id)
        .collect();
    assert_eq!(s.events_pruned_upto().await.expect("mark"), 0);

    let now = T0 + 2 * DAY;
    let pruned = s.prune(prune_at(now, 100)).await.expect("prune");
    assert_eq!(
        pruned,
        Pruned {
            jobs: 3,
            events: doomed_ids.len() as u64,
            fires: 0,
            more: false,
            next: None,
        }
    );
    for gone in ["done", "failed", "cancelled"] {
        assert_eq!(s.get(gone).await.expect("get"), None, "{gone} is pruned");
        assert!(events_of(s, gone).await.is_empty(), "{gone}'s events");
    }
    assert!(s.checkpoints("done").await.expect("checkpoints").is_empty());
    assert!(s.logs("done", 0, 100).await.expect("logs").is_empty());
    let by_label = list(
        s,
        JobFilter {
            label: Some(("team".into(), "growth".into())),
            ..JobFilter::default()
        },
        10,
    )
    .await;
    assert!(by_label.jobs.is_empty(), "its label no longer lists it");
    let by_text = list(
        s,
        JobFilter {
            text: Some("done".into()),
            ..JobFilter::default()
        },
        10,
    )
    .await;
    assert!(by_text.jobs.is_empty(), "a search no longer finds it");
    for kept in [
        "queued", "running", "audited", "kept", "parent", "child", "deleted", "recent", "newest",
    ] {
        assert!(s.get(kept).await.expect("get").is_some(), "{kept} is kept");
        assert!(!events_of(s, kept).await.is_empty(), "{kept}'s events");
    }
    let after: Vec<u64> = all_events(s).await.iter().map(|e| e.id).collect();
    let expected: Vec<u64> = before
        .iter()
        .map(|e| e.id)
        .filter(|id| !doomed_ids.contains(id))
        .collect();
    assert_eq!(after, expected, "exactly the doomed events are gone");
    assert_eq!(
        s.events_after(recent_from, 1000).await.expect("events"),
        after_recent,
        "a reader resuming within the retention misses nothing"
    );
    assert_eq!(
        s.events_pruned_upto().await.expect("mark"),
        *doomed_ids.iter().max().expect("some pruned")
    );
    assert_eq!(s.last_event_id().await.expect("last id"), last_id);
    let counts = s.counts().await.expect("counts");
    assert_eq!(counts.total(State::Failed), 0);
    assert_eq!(counts.total(State::Cancelled), 0);
    assert_eq!(
        counts.total(State::Completed),
        5,
        "audited, kept, parent, recent and newest"
    );

    // Pruning again at the same time finds nothing; once the dependent ends, its
    // parent goes too, and the deleted job once its deletion is a day old.
    assert_eq!(
        s.prune(prune_at(now, 100)).await.expect("prune"),
        Pruned::default()
    );
    s.transition(Transition::new(
        "child",
        State::Cancelled,
        EventKind::Cancelled,
        now,
    ))
    .await
    .expect("cancel child");
    let later = s.prune(prune_at(now + DAY + 1, 100)).await.expect("prune");
    assert_eq!(
        later.jobs, 4,
        "parent, child, deleted and recent: {later:?}"
    );
    assert!(s.get("parent").await.expect("get").is_none());
    assert!(
        s.get("newest").await.expect("get").is_some(),
        "still the newest"
    );
}

/// Pruning works in batches of the limit, says when more may be due, never gives an
/// event id twice, and takes a workflow away with its last job.
pub async fn prune_works_in_batches_and_takes_a_workflow_with_its_last_job(store: Arc<dyn Store>) {
    let s = &*store;
    for i in 0..7 {
        submit(s, job(&format!("j{i}")).queue("batch"), T0).await;
        end(s, "batch", State::Completed, T0 + 10 + i).await;
    }
    let wf = |id: &str, name: &str| {
        let mut j = super::new_job(
            JobSpec::new("task")
                .id(format!("{id}.{name}"))
                .queue(format!("q-{id}.{name}")),
            T0,
        );
        j.workflow_id = Some(id.into());
        j.workflow_name = Some(name.into());
        j
    };
    for id in ["w-done", "w-open"] {
        let mut b = wf(id, "b");
        b.depends_on = vec![baton_core::Dependency {
            job: format!("{id}.a"),
            on: baton_core::Condition::Completed,
        }];
        s.submit_workflow(NewWorkflow {
            id: id.into(),
            now: T0,
            jobs: vec![wf(id, "a"), b],
        })
        .await
        .expect("workflow");
        end(s, &format!("q-{id}.a"), State::Completed, T0 + 20).await;
    }
    end(s, "q-w-done.b", State::Completed, T0 + 21).await;
    submit(s, job("last"), T0 + 22).await;

    let now = T0 + 2 * DAY;
    let mut rounds = Vec::new();
    let mut after = None;
    loop {
        let p = s
            .prune(PruneRequest {
                after,
                ..prune_at(now, 3)
            })
            .await
            .expect("prune");
        assert!(p.jobs <= 3, "{p:?}");
        rounds.push(p.jobs);
        if !p.more {
            break;
        }
        after = p.next;
    }
    assert_eq!(
        rounds.iter().sum::<u64>(),
        9,
        "seven jobs and w-done's two: {rounds:?}"
    );
    assert!(rounds.len() >= 3, "{rounds:?}");
    assert_eq!(s.workflow("w-done").await.expect("workflow"), None);
    let open = s.workflow("w-open").await.expect("workflow").expect("kept");
    assert_eq!(
        open.nodes.len(),
        2,
        "its finished parent stays for its dependent"
    );
    let listed = s
        .workflows(WorkflowFilter::default())
        .await
        .expect("workflows");
    assert_eq!(
        listed
            .workflows
            .iter()
            .map(|w| w.id.as_str())
            .collect::<Vec<_>>(),
        ["w-open"]
    );

    // The next event's id is past every pruned one.
    let upto = s.events_pruned_upto().await.expect("mark");
    assert!(upto > 0);
    submit(s, job("after"), now).await;
    let first = events_of(s, "after").await[0].id;
    assert!(first > upto, "event {first} after pruned {upto}");
    assert_eq!(get(s, "after").await.state, State::Queued);
}

/// Jobs kept by a longer retention that ended first do not stop pruning: a round goes
/// past them, a bounded number a call, to the jobs that are due, and says where it
/// stopped so that the next call goes on from there.
pub async fn prune_goes_past_jobs_it_keeps_to_the_jobs_that_are_due(store: Arc<dyn Store>) {
    let s = &*store;
    for i in 0..20 {
        submit(s, job(&format!("audit-{i}")).queue("audit"), T0).await;
        end(s, "audit", State::Completed, T0 + 10 + i).await;
    }
    for i in 0..3 {
        submit(s, job(&format!("due-{i}")).queue("plain"), T0).await;
        end(s, "plain", State::Completed, T0 + 100 + i).await;
    }
    submit(s, job("last"), T0 + 200).await;
    let now = T0 + 2 * DAY;
    let (mut calls, mut pruned, mut after) = (0, 0, None);
    loop {
        calls += 1;
        let p = s
            .prune(PruneRequest {
                after,
                ..prune_at(now, 1)
            })
            .await
            .expect("prune");
        pruned += p.jobs;
        if !p.more {
            assert_eq!(p.next, None);
            break;
        }
        let next = p.next.expect("where to go on from");
        if let Some(prev) = after {
            assert!(
                (next.finished_at, next.key) > (prev.finished_at, prev.key),
                "{next:?} after {prev:?}"
            );
        }
        after = Some(next);
        assert!(calls < 50, "the round ends");
    }
    assert_eq!(pruned, 3);
    assert!(calls >= 6, "a call looks at a few jobs only: {calls}");
    for i in 0..3 {
        assert!(s.get(&format!("due-{i}")).await.expect("get").is_none());
    }
    assert_eq!(
        s.counts().await.expect("counts").total(State::Completed),
        20,
        "the audited jobs stay"
    );
    // A new round looks again from the start, and finds nothing due.
    let again = s.prune(prune_at(now, 100)).await.expect("prune");
    assert_eq!((again.jobs, again.more), (0, false));
}

/// A workflow goes whole or not at all: a retry of a finished workflow runs its failed
/// and cancelled jobs again on its edges, so a job of it past a short retention stays
/// while another of it is kept longer, and the retry still waits on it.
pub async fn prune_takes_a_workflow_whole_or_not_at_all(store: Arc<dyn Store>) {
    let s = &*store;
    let mut a = super::new_job(JobSpec::new("task").id("w.a").queue("short"), T0);
    a.workflow_id = Some("w".into());
    a.workflow_name = Some("a".into());
    let mut b = super::new_job(
        JobSpec::new("task")
            .id("w.b")
            .queue("audit")
            .depends_on("w.a"),
        T0,
    );
    b.workflow_id = Some("w".into());
    b.workflow_name = Some("b".into());
    s.submit_workflow(NewWorkflow {
        id: "w".into(),
        now: T0,
        jobs: vec![a, b],
    })
    .await
    .expect("workflow");
    end(s, "short", State::Failed, T0 + 10).await;
    assert_eq!(
        get(s, "w.b").await.state,
        State::Cancelled,
        "its dependency failed"
    );
    submit(s, job("last"), T0 + 20).await;

    // `short` keeps a day, `audit` thirty: two days on, w.a alone is past its own.
    let p = s.prune(prune_at(T0 + 2 * DAY, 100)).await.expect("prune");
    assert_eq!(p.jobs, 0, "{p:?}");
    assert!(s.get("w.a").await.expect("get").is_some());
    let retried = s
        .control_workflow(
            "w",
            crate::WorkflowAction::Retry {
                from_checkpoint: false,
            },
            T0 + 2 * DAY,
        )
        .await
        .expect("retry");
    assert_eq!(retried.queues, ["short"]);
    assert_eq!(get(s, "w.a").await.state, State::Queued);
    assert_eq!(
        get(s, "w.b").await.state,
        State::Awaiting,
        "it waits for w.a again"
    );
    end(s, "short", State::Failed, T0 + 2 * DAY + 1).await;

    // Once every job of it is past its own retention, it goes whole, in one write.
    let p = s.prune(prune_at(T0 + 40 * DAY, 1)).await.expect("prune");
    assert_eq!(p.jobs, 2, "both jobs, past the limit of one: {p:?}");
    assert_eq!(s.workflow("w").await.expect("workflow"), None);
}
