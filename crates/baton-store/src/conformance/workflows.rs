//! Conformance tests for dependencies, workflows, unique keys and paused queues.

use std::collections::BTreeMap;
use std::sync::Arc;

use baton_core::{
    Condition, EdgeStatus, EventKind, Job, JobSpec, Millis, NewJob, State, UniquePolicy,
    WorkflowState,
};
use serde_json::json;

use super::{T0, all_events, claim_one, events_of, get, kinds, new_job, submit};
use crate::{
    Changes, Error, JobFilter, NewWorkflow, Store, Transition, WorkflowAction, WorkflowFilter,
};

/// A job in a queue of its own name, so that a test can run exactly that job.
fn job(id: &str) -> JobSpec {
    JobSpec::new("task").id(id).queue(format!("q-{id}"))
}

/// Runs a queued job to `to` (completed or failed) as a worker would.
async fn finish(s: &dyn Store, id: &str, to: State, now: Millis) {
    let c = claim_one(s, &format!("q-{id}"), now).await;
    assert_eq!(c.job.id, id);
    let event = if to == State::Completed {
        EventKind::Completed
    } else {
        EventKind::Failed
    };
    let changes = if to == State::Completed {
        Changes {
            result: Some(json!({"from": id})),
            ..Changes::default()
        }
    } else {
        Changes {
            error: Some(baton_core::ErrorInfo::new("handler_error", "boom")),
            ..Changes::default()
        }
    };
    s.record(
        Transition::new(id, to, event, now + 1)
            .fence(c.fence)
            .changes(changes),
    )
    .await
    .unwrap_or_else(|e| panic!("finish {id}: {e}"));
}

async fn cancel(s: &dyn Store, id: &str, now: Millis) -> Job {
    s.transition(
        Transition::new(id, State::Cancelled, EventKind::Cancelled, now)
            .data(json!({"reason": "cancelled"})),
    )
    .await
    .unwrap_or_else(|e| panic!("cancel {id}: {e}"))
}

async fn state(s: &dyn Store, id: &str) -> State {
    get(s, id).await.state
}

fn count(events: &[baton_core::Event], kind: EventKind) -> usize {
    events.iter().filter(|e| e.kind == kind).count()
}

/// A diamond: `d` waits for `b` and `c`, which wait for `a`. Each job is queued in the
/// very write that completes its last dependency, with its `job.queued` event right
/// after that dependency's `job.completed`.
pub async fn dependents_are_queued_in_the_write_that_ends_their_last_dependency(
    store: Arc<dyn Store>,
) {
    let s = &*store;
    submit(s, job("a"), T0).await;
    let b = submit(s, job("b").depends_on("a"), T0).await;
    submit(s, job("c").depends_on("a"), T0).await;
    let d = submit(s, job("d").depends_on("b").depends_on("c"), T0).await;
    assert_eq!(b.state, State::Awaiting);
    assert_eq!(b.depends_on, ["a"]);
    assert_eq!(d.state, State::Awaiting);
    assert_eq!(d.depends_on, ["b", "c"]);
    assert_eq!(
        get(s, "d").await.depends_on,
        ["b", "c"],
        "get reads the edges back"
    );
    assert_eq!(
        kinds(&events_of(s, "d").await),
        [EventKind::Submitted],
        "a job that waits is submitted awaiting"
    );
    assert_eq!(events_of(s, "d").await[0].data["state"], "awaiting");

    finish(s, "a", State::Completed, T0 + 10).await;
    assert_eq!(
        (state(s, "b").await, state(s, "c").await),
        (State::Queued, State::Queued)
    );
    assert_eq!(state(s, "d").await, State::Awaiting);
    finish(s, "b", State::Completed, T0 + 20).await;
    assert_eq!(state(s, "d").await, State::Awaiting, "c has not ended yet");
    finish(s, "c", State::Completed, T0 + 30).await;
    assert_eq!(state(s, "d").await, State::Queued);

    let log = all_events(s).await;
    let at = |id: &str, kind: EventKind| {
        log.iter()
            .position(|e| e.job_id.as_deref() == Some(id) && e.kind == kind)
            .unwrap_or_else(|| panic!("{id} has {kind}"))
    };
    assert_eq!(
        at("d", EventKind::Queued),
        at("c", EventKind::Completed) + 1
    );
    let queued = &log[at("d", EventKind::Queued)];
    assert_eq!(queued.data["reason"], "dependencies");
    assert_eq!(queued.data["from"], "awaiting");
    assert_eq!(queued.data["queue"], "q-d");
    assert_eq!(queued.at, T0 + 31);

    let links = s.dependencies("d").await.expect("dependencies");
    let summary: Vec<_> = links
        .iter()
        .map(|l| (l.job_id.as_str(), l.on, l.status, l.state, l.result.clone()))
        .collect();
    assert_eq!(
        summary,
        [
            (
                "b",
                Condition::Completed,
                EdgeStatus::Met,
                State::Completed,
                Some(json!({"from": "b"}))
            ),
            (
                "c",
                Condition::Completed,
                EdgeStatus::Met,
                State::Completed,
                Some(json!({"from": "c"}))
            ),
        ]
    );
    let dependents: Vec<String> = s
        .dependents("a")
        .await
        .expect("dependents")
        .into_iter()
        .map(|l| l.job_id)
        .collect();
    assert_eq!(dependents, ["b", "c"]);
    assert!(matches!(
        s.dependents("nobody").await,
        Err(Error::NotFound(id)) if id == "nobody"
    ));
}

/// A thousand dependencies end together, in concurrent writes that the store commits
/// in groups: the fan-in job is queued exactly once, by the last of them.
pub async fn a_fan_in_job_is_queued_once_when_its_dependencies_end_together(store: Arc<dyn Store>) {
    let s = &*store;
    let n = 1000;
    let parents: Vec<NewJob> = (0..n).map(|i| new_job(job(&format!("p{i}")), T0)).collect();
    s.submit(parents).await.expect("submit parents");
    let mut fan_in = job("sink");
    for i in 0..n {
        fan_in = fan_in.depends_on(format!("p{i}"));
    }
    let sink = submit(s, fan_in, T0).await;
    assert_eq!(sink.depends_on.len(), n);
    let mut claimed = Vec::new();
    for i in 0..n {
        claimed.push(claim_one(s, &format!("q-p{i}"), T0 + 1).await);
    }
    let mut tasks = Vec::new();
    for c in claimed {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store
                .record(
                    Transition::new(
                        c.job.id.clone(),
                        State::Completed,
                        EventKind::Completed,
                        T0 + 2,
                    )
                    .fence(c.fence),
                )
                .await
        }));
    }
    for t in tasks {
        t.await.expect("task").expect("complete");
    }
    let events = events_of(s, "sink").await;
    assert_eq!(kinds(&events), [EventKind::Submitted, EventKind::Queued]);
    assert_eq!(state(s, "sink").await, State::Queued);
    let met = s.dependencies("sink").await.expect("dependencies");
    assert!(met.iter().all(|l| l.status == EdgeStatus::Met));
}

/// Five dependencies end in one write (a worker's settle of five outcomes). A job
/// that waits for all five is queued once, right after the last of them completes; a
/// job that needed one of them to fail is cancelled right after it completes, and its
/// own dependent with it; a job that still waits for another stays awaiting with the
/// edge met.
pub async fn dependents_of_dependencies_that_end_in_one_write_are_settled_once(
    store: Arc<dyn Store>,
) {
    let s = &*store;
    let parents: Vec<String> = (0..5).map(|i| format!("fan-{i}")).collect();
    let spec = |id: &str| JobSpec::new("task").id(id).queue("q-fan");
    s.submit(parents.iter().map(|p| new_job(spec(p), T0)).collect())
        .await
        .expect("submit parents");
    let mut all = job("all");
    for p in &parents {
        all = all.depends_on(p.as_str());
    }
    submit(s, all, T0).await;
    submit(
        s,
        job("on-failure")
            .depends_on(parents[0].as_str())
            .depends_on_when(parents[1].as_str(), Condition::Failed),
        T0,
    )
    .await;
    submit(s, job("after-on-failure").depends_on("on-failure"), T0).await;
    submit(s, job("later"), T0).await;
    submit(
        s,
        job("partial")
            .depends_on(parents[2].as_str())
            .depends_on("later"),
        T0,
    )
    .await;

    let claimed = super::claim(s, "q-fan", parents.len(), T0 + 1).await;
    assert_eq!(claimed.len(), parents.len());
    let outcomes = claimed
        .iter()
        .map(|c| {
            vec![
                Transition::new(
                    c.job.id.as_str(),
                    State::Completed,
                    EventKind::Completed,
                    T0 + 2,
                )
                .fence(c.fence),
            ]
            .into()
        })
        .collect();
    let settled = s
        .settle(crate::Settle {
            outcomes,
            claim: None,
        })
        .await
        .expect("settle");
    assert!(settled.outcomes.iter().all(Result::is_ok), "{settled:?}");

    assert_eq!(
        kinds(&events_of(s, "all").await),
        [EventKind::Submitted, EventKind::Queued],
        "queued once"
    );
    assert_eq!(state(s, "all").await, State::Queued);
    let log = all_events(s).await;
    let at = |id: &str, kind: EventKind| {
        log.iter()
            .position(|e| e.job_id.as_deref() == Some(id) && e.kind == kind)
            .unwrap_or_else(|| panic!("{id} has {kind}"))
    };
    let last = claimed.last().expect("claimed").job.id.as_str();
    assert_eq!(
        at("all", EventKind::Queued),
        at(last, EventKind::Completed) + 1,
        "queued right after the last dependency completed"
    );
    assert_eq!(
        at("on-failure", EventKind::Cancelled),
        at(&parents[1], EventKind::Completed) + 1,
        "cancelled right after the dependency that had to fail completed"
    );
    let cancelled = get(s, "on-failure").await;
    assert_eq!(cancelled.state, State::Cancelled);
    assert_eq!(cancelled.error.expect("error").code, "upstream_failed");
    assert_eq!(state(s, "after-on-failure").await, State::Cancelled);
    assert_eq!(state(s, "partial").await, State::Awaiting);
    let links = s.dependencies("partial").await.expect("dependencies");
    let statuses: Vec<_> = links
        .iter()
        .map(|l| (l.job_id.as_str(), l.status))
        .collect();
    assert_eq!(
        statuses,
        [
            (parents[2].as_str(), EdgeStatus::Met),
            ("later", EdgeStatus::Waiting)
        ]
    );
    finish(s, "later", State::Completed, T0 + 3).await;
    assert_eq!(state(s, "partial").await, State::Queued);
}

/// A dependency on a job that does not exist is refused, naming it, and the whole
/// batch leaves no trace.
pub async fn a_dependency_on_an_unknown_job_is_refused_without_writing(store: Arc<dyn Store>) {
    let s = &*store;
    let before = all_events(s).await;
    let batch = vec![
        new_job(job("first"), T0),
        new_job(job("second").depends_on("first"), T0),
        new_job(job("third").depends_on("ghost"), T0),
    ];
    match s.submit(batch).await {
        Err(Error::UnknownDependency { id, dependency }) => {
            assert_eq!((id.as_str(), dependency.as_str()), ("third", "ghost"));
        }
        other => panic!("expected UnknownDependency, got {other:?}"),
    }
    for id in ["first", "second", "third"] {
        assert_eq!(s.get(id).await.expect("get"), None, "{id} was not stored");
    }
    assert_eq!(all_events(s).await, before);
    // The store still works, and the same jobs without the bad edge go in.
    let ok = s
        .submit(vec![
            new_job(job("first"), T0),
            new_job(job("second").depends_on("first"), T0),
        ])
        .await
        .expect("submit");
    assert_eq!(ok.len(), 2);
}

/// Each condition against each way a dependency can end: the dependent is queued, or
/// cancelled with `upstream_failed`, and its own dependents follow, each with an event.
pub async fn conditions_decide_whether_a_dependent_runs(store: Arc<dyn Store>) {
    let s = &*store;
    let cases = [
        (State::Completed, Condition::Completed, State::Queued),
        (State::Completed, Condition::Failed, State::Cancelled),
        (State::Completed, Condition::Finished, State::Queued),
        (State::Failed, Condition::Completed, State::Cancelled),
        (State::Failed, Condition::Failed, State::Queued),
        (State::Failed, Condition::Finished, State::Queued),
        (State::Cancelled, Condition::Completed, State::Cancelled),
        (State::Cancelled, Condition::Failed, State::Cancelled),
        (State::Cancelled, Condition::Finished, State::Queued),
    ];
    for (i, (ends, on, expected)) in cases.into_iter().enumerate() {
        let (p, c, g) = (format!("p{i}"), format!("c{i}"), format!("g{i}"));
        submit(s, job(&p), T0).await;
        submit(s, job(&c).depends_on_when(&p, on), T0).await;
        submit(s, job(&g).depends_on(&c), T0).await;
        match ends {
            State::Cancelled => {
                cancel(s, &p, T0 + 10).await;
            }
            to => finish(s, &p, to, T0 + 10).await,
        }
        let child = get(s, &c).await;
        assert_eq!(child.state, expected, "{p} {ends}, {c} on {on:?}");
        if expected == State::Cancelled {
            let error = child.error.expect("an error");
            assert_eq!(error.code, "upstream_failed");
            assert!(
                error.message.contains(&format!("{p:?}")),
                "{}",
                error.message
            );
            let last = events_of(s, &c).await.pop().expect("events");
            assert_eq!(last.kind, EventKind::Cancelled);
            assert_eq!(last.data["reason"], "upstream_failed");
            assert_eq!(last.data["dependency"], p.as_str());
            // The grandchild needed its parent to complete: it is cancelled too.
            let grand = get(s, &g).await;
            assert_eq!(grand.state, State::Cancelled, "{g}");
            assert_eq!(grand.error.expect("error").code, "upstream_failed");
            assert_eq!(
                kinds(&events_of(s, &g).await),
                [EventKind::Submitted, EventKind::Cancelled]
            );
        } else {
            assert_eq!(state(s, &g).await, State::Awaiting, "{g}");
        }
    }
    // A continuation runs after a failure, and then its own dependents run.
    finish(s, "c4", State::Completed, T0 + 20).await;
    assert_eq!(state(s, "g4").await, State::Queued);
}

/// A dependency that has ended when its dependent is submitted is decided at once.
pub async fn a_dependency_that_ended_already_is_decided_at_submit(store: Arc<dyn Store>) {
    let s = &*store;
    submit(s, job("ok"), T0).await;
    finish(s, "ok", State::Completed, T0 + 1).await;
    submit(s, job("bad"), T0).await;
    finish(s, "bad", State::Failed, T0 + 1).await;

    let ready = submit(s, job("after-ok").depends_on("ok"), T0 + 5).await;
    assert_eq!(ready.state, State::Queued);
    assert_eq!(
        kinds(&events_of(s, "after-ok").await),
        [EventKind::Submitted]
    );

    let dead = submit(s, job("after-bad").depends_on("bad"), T0 + 5).await;
    assert_eq!(
        dead.state,
        State::Cancelled,
        "submit answers the job as it is now"
    );
    assert_eq!(dead.error.expect("error").code, "upstream_failed");
    assert_eq!(
        kinds(&events_of(s, "after-bad").await),
        [EventKind::Submitted, EventKind::Cancelled]
    );

    let handler = submit(
        s,
        job("on-bad").depends_on_when("bad", Condition::Failed),
        T0 + 5,
    )
    .await;
    assert_eq!(handler.state, State::Queued);
    let mixed = submit(
        s,
        job("mixed").depends_on("ok").depends_on("after-ok"),
        T0 + 6,
    )
    .await;
    assert_eq!(mixed.state, State::Awaiting, "one dependency still waits");
}

/// A failure at the head of a long chain cancels every job down the chain, each with
/// its own event, in the same write.
pub async fn cancellation_runs_down_a_long_chain(store: Arc<dyn Store>) {
    let s = &*store;
    let n = 5000;
    let mut batch = vec![new_job(job("n0"), T0)];
    for i in 1..n {
        batch.push(new_job(
            JobSpec::new("task")
                .id(format!("n{i}"))
                .depends_on(format!("n{}", i - 1)),
            T0,
        ));
    }
    s.submit(batch).await.expect("submit the chain");
    finish(s, "n0", State::Failed, T0 + 10).await;
    let page = s
        .list(JobFilter {
            states: vec![State::Cancelled],
            limit: 1000,
            ..JobFilter::default()
        })
        .await
        .expect("list");
    assert_eq!(page.total, (n - 1) as u64);
    let last = get(s, &format!("n{}", n - 1)).await;
    assert_eq!(last.state, State::Cancelled);
    assert!(
        last.error
            .expect("error")
            .message
            .contains(&format!("\"n{}\"", n - 2)),
        "each job names the dependency that failed it"
    );
    let log = all_events(s).await;
    assert_eq!(count(&log, EventKind::Cancelled), n - 1);
}

/// At most one active job holds a unique key; each policy decides a second submit.
pub async fn a_unique_key_has_one_active_holder(store: Arc<dyn Store>) {
    let s = &*store;
    let first = submit(s, job("r1").unique("report:7", UniquePolicy::Reject), T0).await;
    assert_eq!(first.state, State::Queued);

    match s
        .submit(vec![new_job(
            job("r2").unique("report:7", UniquePolicy::Reject),
            T0,
        )])
        .await
    {
        Err(e @ Error::UniqueHeld { .. }) => {
            let text = e.to_string();
            assert!(
                text.contains("\"report:7\"") && text.contains("\"r1\""),
                "{text}"
            );
        }
        other => panic!("expected UniqueHeld, got {other:?}"),
    }
    assert_eq!(s.get("r2").await.expect("get"), None);

    let out = s
        .submit(vec![new_job(
            job("r3").unique("report:7", UniquePolicy::ReturnExisting),
            T0,
        )])
        .await
        .expect("submit");
    assert!(!out[0].created);
    assert_eq!(out[0].job.id, "r1");
    assert_eq!(s.get("r3").await.expect("get"), None);

    let out = s
        .submit(vec![new_job(
            job("r4").unique("report:7", UniquePolicy::Replace),
            T0 + 5,
        )])
        .await
        .expect("submit");
    assert!(out[0].created);
    let old = get(s, "r1").await;
    assert_eq!(old.state, State::Cancelled);
    let last = events_of(s, "r1").await.pop().expect("events");
    assert_eq!(last.data["reason"], "replaced");
    assert_eq!(last.data["replaced_by"], "r4");

    // A key whose holder ended is free again.
    finish(s, "r4", State::Completed, T0 + 10).await;
    submit(
        s,
        job("r5").unique("report:7", UniquePolicy::Reject),
        T0 + 20,
    )
    .await;

    // Concurrent submits: exactly one holder.
    let mut tasks = Vec::new();
    for i in 0..50 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store
                .submit(vec![new_job(
                    job(&format!("race-{i}")).unique("race", UniquePolicy::Reject),
                    T0,
                )])
                .await
        }));
    }
    let mut created = 0;
    for t in tasks {
        match t.await.expect("task") {
            Ok(out) => {
                assert!(out[0].created);
                created += 1;
            }
            Err(Error::UniqueHeld { key, .. }) => assert_eq!(key, "race"),
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(created, 1, "exactly one submit holds the key");
}

fn workflow_job(wf: &str, name: &str, spec: JobSpec) -> NewJob {
    let mut j = new_job(
        spec.id(format!("{wf}.{name}"))
            .queue(format!("q-{wf}.{name}")),
        T0,
    );
    j.workflow_id = Some(wf.into());
    j.workflow_name = Some(name.into());
    j
}

fn diamond(wf: &str) -> NewWorkflow {
    let id = |n: &str| format!("{wf}.{n}");
    NewWorkflow {
        id: wf.into(),
        now: T0,
        jobs: vec![
            workflow_job(wf, "a", JobSpec::new("task")),
            workflow_job(wf, "b", JobSpec::new("task").depends_on(id("a"))),
            workflow_job(wf, "c", JobSpec::new("task").depends_on(id("a"))),
            workflow_job(
                wf,
                "d",
                JobSpec::new("task").depends_on(id("b")).depends_on(id("c")),
            ),
        ],
    }
}

/// A workflow is stored all or nothing, is idempotent by id, and reads back as a graph.
pub async fn workflows_are_stored_whole_and_read_back_as_graphs(store: Arc<dyn Store>) {
    let s = &*store;
    let mut bad = diamond("w1");
    bad.jobs.push(workflow_job(
        "w1",
        "e",
        JobSpec::new("task").depends_on("ghost"),
    ));
    let before = all_events(s).await;
    assert!(matches!(
        s.submit_workflow(bad).await,
        Err(Error::UnknownDependency { dependency, .. }) if dependency == "ghost"
    ));
    assert_eq!(s.workflow("w1").await.expect("workflow"), None);
    assert_eq!(s.get("w1.a").await.expect("get"), None);
    assert_eq!(
        all_events(s).await,
        before,
        "a refused workflow leaves no trace"
    );

    let out = s.submit_workflow(diamond("w1")).await.expect("submit");
    assert!(out.created);
    let names: BTreeMap<String, String> = ["a", "b", "c", "d"]
        .iter()
        .map(|n| (n.to_string(), format!("w1.{n}")))
        .collect();
    assert_eq!(out.names, names);
    assert_eq!(out.jobs.len(), 4);
    assert_eq!(out.jobs[3].workflow_id.as_deref(), Some("w1"));
    assert_eq!(get(s, "w1.d").await.workflow_id.as_deref(), Some("w1"));

    let again = s.submit_workflow(diamond("w1")).await.expect("resubmit");
    assert!(!again.created);
    assert_eq!(again.names, names);

    // A job id that exists already cannot join another workflow.
    let mut clash = diamond("w2");
    clash.jobs[0].id = baton_core::JobId::from_trusted("w1.a".into());
    assert!(matches!(s.submit_workflow(clash).await, Err(Error::JobExists(id)) if id == "w1.a"));
    assert_eq!(s.workflow("w2").await.expect("workflow"), None);

    let g = s.workflow("w1").await.expect("workflow").expect("found");
    assert_eq!(g.state, WorkflowState::Pending);
    assert_eq!(g.jobs, names);
    assert_eq!(g.nodes.len(), 4);
    assert_eq!(g.nodes[0].name.as_deref(), Some("a"));
    assert_eq!(g.nodes[0].state, State::Queued);
    let edges: Vec<(&str, &str, EdgeStatus)> = g
        .edges
        .iter()
        .map(|e| (e.from.as_str(), e.to.as_str(), e.status))
        .collect();
    assert_eq!(
        edges,
        [
            ("w1.a", "w1.b", EdgeStatus::Waiting),
            ("w1.a", "w1.c", EdgeStatus::Waiting),
            ("w1.b", "w1.d", EdgeStatus::Waiting),
            ("w1.c", "w1.d", EdgeStatus::Waiting),
        ]
    );
    finish(s, "w1.a", State::Completed, T0 + 1).await;
    let g = s.workflow("w1").await.expect("workflow").expect("found");
    assert_eq!(g.state, WorkflowState::Running);
    assert_eq!(g.edges[0].status, EdgeStatus::Met);
    assert_eq!(g.counts.get("queued"), Some(&2));
    let page = s
        .list(JobFilter {
            workflow: Some("w1".into()),
            limit: 10,
            ..JobFilter::default()
        })
        .await
        .expect("list");
    assert_eq!(page.total, 4);
    for id in ["w1.b", "w1.c"] {
        finish(s, id, State::Completed, T0 + 2).await;
    }
    finish(s, "w1.d", State::Completed, T0 + 3).await;
    let g = s.workflow("w1").await.expect("workflow").expect("found");
    assert_eq!(g.state, WorkflowState::Completed);
}

/// Pause holds a workflow's queued jobs and those whose dependencies end meanwhile;
/// resume queues them; both are refused when they make no sense.
pub async fn a_paused_workflow_starts_nothing_until_resumed(store: Arc<dyn Store>) {
    let s = &*store;
    s.submit_workflow(diamond("w")).await.expect("submit");
    let held = s
        .control_workflow("w", WorkflowAction::Hold, T0 + 1)
        .await
        .expect("hold");
    assert!(held.executing.is_empty());
    assert_eq!(state(s, "w.a").await, State::Awaiting);
    let last = events_of(s, "w.a").await.pop().expect("events");
    assert_eq!(last.kind, EventKind::Awaiting);
    assert_eq!(last.data["reason"], "workflow_paused");
    let g = s.workflow("w").await.expect("read").expect("found");
    assert_eq!((g.state, g.paused), (WorkflowState::Paused, true));
    assert!(matches!(
        s.control_workflow("w", WorkflowAction::Hold, T0 + 2).await,
        Err(Error::WorkflowIllegal {
            action: "pause",
            ..
        })
    ));

    let released = s
        .control_workflow("w", WorkflowAction::Release, T0 + 3)
        .await
        .expect("release");
    assert_eq!(released.queues, ["q-w.a"]);
    assert_eq!(state(s, "w.a").await, State::Queued);
    // A job that runs goes on while paused; its dependents are held.
    let c = claim_one(s, "q-w.a", T0 + 4).await;
    let held = s
        .control_workflow("w", WorkflowAction::Hold, T0 + 5)
        .await
        .expect("hold");
    assert_eq!(held.executing, [("w.a".to_string(), State::Running)]);
    s.record(Transition::new("w.a", State::Completed, EventKind::Completed, T0 + 6).fence(c.fence))
        .await
        .expect("complete");
    assert_eq!(state(s, "w.b").await, State::Awaiting, "held while paused");
    let released = s
        .control_workflow("w", WorkflowAction::Release, T0 + 7)
        .await
        .expect("release");
    assert_eq!(released.queues, ["q-w.b", "q-w.c"]);
    assert_eq!(
        state(s, "w.d").await,
        State::Awaiting,
        "d still waits for b and c"
    );
    assert!(matches!(
        s.control_workflow("w", WorkflowAction::Release, T0 + 8)
            .await,
        Err(Error::WorkflowIllegal {
            action: "resume",
            ..
        })
    ));
    assert!(matches!(
        s.control_workflow("nope", WorkflowAction::Hold, T0).await,
        Err(Error::WorkflowNotFound(id)) if id == "nope"
    ));
}

/// Retry runs the failed job again and the jobs cancelled because of it, each after
/// its dependencies; cancel ends what waits.
pub async fn a_workflow_retries_its_failed_part_and_cancels_as_a_whole(store: Arc<dyn Store>) {
    let s = &*store;
    s.submit_workflow(diamond("w")).await.expect("submit");
    finish(s, "w.a", State::Completed, T0 + 1).await;
    finish(s, "w.b", State::Failed, T0 + 2).await;
    finish(s, "w.c", State::Completed, T0 + 3).await;
    assert_eq!(state(s, "w.d").await, State::Cancelled);
    let g = s.workflow("w").await.expect("read").expect("found");
    assert_eq!(g.state, WorkflowState::Failed);
    assert!(matches!(
        s.control_workflow("w", WorkflowAction::Hold, T0).await,
        Err(Error::WorkflowIllegal { .. })
    ));

    let retried = s
        .control_workflow(
            "w",
            WorkflowAction::Retry {
                from_checkpoint: false,
            },
            T0 + 10,
        )
        .await
        .expect("retry");
    assert_eq!(retried.queues, ["q-w.b"]);
    let b = get(s, "w.b").await;
    assert_eq!((b.state, b.error.clone()), (State::Queued, None));
    assert_eq!(
        state(s, "w.a").await,
        State::Completed,
        "completed jobs do not run again"
    );
    let d = get(s, "w.d").await;
    assert_eq!((d.state, d.error), (State::Awaiting, None));
    assert_eq!(
        events_of(s, "w.d").await.pop().expect("events").data["reason"],
        "workflow_retry"
    );
    finish(s, "w.b", State::Completed, T0 + 11).await;
    assert_eq!(state(s, "w.d").await, State::Queued);
    finish(s, "w.d", State::Completed, T0 + 12).await;
    assert_eq!(
        s.workflow("w").await.expect("read").expect("found").state,
        WorkflowState::Completed
    );
    assert!(matches!(
        s.control_workflow(
            "w",
            WorkflowAction::Retry {
                from_checkpoint: false
            },
            T0 + 13
        )
        .await,
        Err(Error::WorkflowIllegal {
            action: "retry",
            ..
        })
    ));

    s.submit_workflow(diamond("x")).await.expect("submit");
    let c = claim_one(s, "q-x.a", T0 + 1).await;
    let cancelled = s
        .control_workflow("x", WorkflowAction::Cancel, T0 + 2)
        .await
        .expect("cancel");
    assert_eq!(cancelled.executing, [("x.a".to_string(), State::Running)]);
    for id in ["x.b", "x.c", "x.d"] {
        let j = get(s, id).await;
        assert_eq!(j.state, State::Cancelled, "{id}");
        assert_eq!(
            j.error.expect("error").code,
            "cancelled",
            "{id} was cancelled by a user"
        );
    }
    assert_eq!(
        state(s, "x.a").await,
        State::Running,
        "the caller stops what runs"
    );
    s.record(Transition::new("x.a", State::Cancelled, EventKind::Cancelled, T0 + 3).fence(c.fence))
        .await
        .expect("stopped");
    assert_eq!(
        s.workflow("x").await.expect("read").expect("found").state,
        WorkflowState::Cancelled
    );
}

/// A paused queue is stored with its events; pausing twice changes nothing.
pub async fn queues_pause_and_resume_with_events(store: Arc<dyn Store>) {
    let s = &*store;
    assert!(s.paused_queues().await.expect("paused").is_empty());
    assert!(s.set_queue_paused("media", true, T0).await.expect("pause"));
    assert!(
        !s.set_queue_paused("media", true, T0 + 1)
            .await
            .expect("again")
    );
    assert_eq!(s.paused_queues().await.expect("paused"), ["media"]);
    assert!(
        s.set_queue_paused("media", false, T0 + 2)
            .await
            .expect("resume")
    );
    assert!(
        !s.set_queue_paused("other", false, T0 + 3)
            .await
            .expect("noop")
    );
    assert!(s.paused_queues().await.expect("paused").is_empty());
    let log = all_events(s).await;
    let queue_events: Vec<(EventKind, Option<String>, serde_json::Value)> = log
        .iter()
        .map(|e| (e.kind, e.job_id.clone(), e.data.clone()))
        .collect();
    assert_eq!(
        queue_events,
        [
            (EventKind::QueuePaused, None, json!({"queue": "media"})),
            (EventKind::QueueResumed, None, json!({"queue": "media"})),
        ]
    );
}

/// Workflows are listed newest first (the id breaks a tie), a page at a time, each with
/// its jobs counted by state and its state derived from them; a job's events name its
/// workflow, so a list can follow its counts live.
pub async fn workflows_are_listed_newest_first_with_their_counts(store: Arc<dyn Store>) {
    let s = &*store;
    let at = |wf: &str, now: Millis| NewWorkflow { now, ..diamond(wf) };
    s.submit_workflow(at("w1", T0)).await.expect("w1");
    s.submit_workflow(at("w2", T0 + 10)).await.expect("w2");
    s.submit_workflow(at("w3", T0 + 10)).await.expect("w3");
    finish(s, "w2.a", State::Completed, T0 + 20).await;
    let list = |limit, cursor| s.workflows(WorkflowFilter { limit, cursor });

    let first = list(2, None).await.expect("list");
    let ids: Vec<&str> = first.workflows.iter().map(|w| w.id.as_str()).collect();
    assert_eq!(ids, ["w3", "w2"]);
    let w2 = &first.workflows[1];
    assert_eq!(
        (w2.state, w2.paused, w2.created_at, w2.jobs),
        (WorkflowState::Running, false, T0 + 10, 4)
    );
    let counts: BTreeMap<String, u64> = [("completed", 1), ("queued", 2), ("awaiting", 1)]
        .map(|(k, n)| (k.to_string(), n))
        .into();
    assert_eq!(w2.counts, counts);
    assert_eq!(first.workflows[0].state, WorkflowState::Pending);

    let rest = list(2, first.next_cursor.clone())
        .await
        .expect("second page");
    let ids: Vec<&str> = rest.workflows.iter().map(|w| w.id.as_str()).collect();
    assert_eq!((ids, rest.next_cursor), (vec!["w1"], None));
    assert_eq!(list(10, None).await.expect("all").workflows.len(), 3);

    for bad in ["", "nope", "12:", ":w1", "x:w1"] {
        let refused = list(2, Some(bad.into())).await;
        // An empty id after the colon is a position like any other; the rest are not.
        if bad == "12:" {
            assert_eq!(
                refused.expect("a cursor before every id").workflows.len(),
                0
            );
            continue;
        }
        assert!(
            matches!(&refused, Err(Error::Config(m)) if m.contains("invalid cursor")),
            "{bad}: {refused:?}"
        );
    }

    for e in events_of(s, "w2.a").await {
        if e.data.get("state").is_some() {
            assert_eq!(e.data["workflow"], "w2", "{e:?}");
        }
    }
    let plain = submit(s, job("plain"), T0).await;
    assert!(
        events_of(s, &plain.id).await[0]
            .data
            .get("workflow")
            .is_none()
    );
}
