//! Dependencies, workflows, unique keys and paused queues, driven through the engine's
//! Rust API on real SQLite files.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use baton_engine::{
    Condition, Engine, EngineBuilder, ErrorCode, EventKind, JobError, JobSpec, State, UniquePolicy,
    WorkflowSpec, WorkflowState,
};
use baton_store::{Durability, SqliteOptions, SqliteStore, Store};
use proptest::prelude::*;
use serde_json::{Value, json};
use tempfile::TempDir;

fn store(dir: &TempDir) -> Arc<dyn Store> {
    let options = SqliteOptions::new(dir.path().join("baton.db")).durability(Durability::Normal);
    Arc::new(SqliteStore::open(options).unwrap())
}

fn builder(dir: &TempDir) -> EngineBuilder {
    Engine::builder()
        .store(store(dir))
        .handler("echo", |_ctx, payload| async move { Ok(payload) })
        .handler("fail", |_ctx, _payload| async move {
            Err::<Value, _>(JobError::fatal("boom"))
        })
        .handler("parents", |ctx, _payload| async move {
            let parents = ctx.parent_results().await?;
            Ok(serde_json::to_value(parents)?)
        })
}

async fn within<F: std::future::Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(60), f)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// Waits until every job of the workflow has ended.
async fn wait_workflow(engine: &Engine, id: &str) -> baton_engine::WorkflowGraph {
    let graph = engine.workflow(id).await.unwrap();
    for node in &graph.nodes {
        within(&node.id, engine.wait(&node.id)).await.unwrap();
    }
    engine.workflow(id).await.unwrap()
}

/// The global event id of a job's first event of `kind`.
async fn event_id(engine: &Engine, job: &str, kind: EventKind) -> Option<u64> {
    engine
        .events(job, 0)
        .await
        .unwrap()
        .into_iter()
        .find(|e| e.kind == kind)
        .map(|e| e.id)
}

async fn ended_at(engine: &Engine, job: &str) -> u64 {
    engine
        .events(job, 0)
        .await
        .unwrap()
        .into_iter()
        .find(|e| e.kind.is_terminal())
        .map(|e| e.id)
        .unwrap_or_else(|| panic!("{job} ended"))
}

#[tokio::test]
async fn a_diamond_runs_in_dependency_order_and_passes_results() {
    let dir = TempDir::new().unwrap();
    let engine = builder(&dir).build().await.unwrap();
    let wf = WorkflowSpec::new()
        .id("diamond")
        .job("a", JobSpec::new("echo").payload(json!({"rows": 7})))
        .job(
            "b",
            JobSpec::new("echo").payload(json!("b")).depends_on("a"),
        )
        .job(
            "c",
            JobSpec::new("echo").payload(json!("c")).depends_on("a"),
        )
        .job("d", JobSpec::new("parents").depends_on("b").depends_on("c"));
    let out = engine.submit_workflow(wf.clone()).await.unwrap();
    assert!(out.created);
    assert_eq!(out.names.keys().collect::<Vec<_>>(), ["a", "b", "c", "d"]);
    let graph = wait_workflow(&engine, "diamond").await;
    assert_eq!(graph.state, WorkflowState::Completed);
    let id = |n: &str| out.names[n].clone();
    for (before, after) in [("a", "b"), ("a", "c"), ("b", "d"), ("c", "d")] {
        let started = event_id(&engine, &id(after), EventKind::Started)
            .await
            .unwrap();
        assert!(
            ended_at(&engine, &id(before)).await < started,
            "{after} started before {before} ended"
        );
    }
    let d = engine.get(&id("d")).await.unwrap();
    let result = d.result.unwrap();
    assert_eq!(result["b"]["result"], "b", "{result}");
    assert_eq!(result["c"]["state"], "completed");
    assert_eq!(result["c"]["job_id"], id("c"));
    assert_eq!(d.depends_on, [id("b"), id("c")]);
    assert_eq!(d.workflow_id.as_deref(), Some("diamond"));

    let again = engine.submit_workflow(wf).await.unwrap();
    assert!(
        !again.created,
        "the same workflow id again returns the workflow"
    );
    assert_eq!(again.names, out.names);
    let dependents = engine.dependents(&id("a")).await.unwrap();
    assert_eq!(dependents.len(), 2);
    assert_eq!(dependents[0].name.as_deref(), Some("b"));
    engine.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn fan_out_to_a_thousand_and_fan_in_from_a_thousand() {
    let dir = TempDir::new().unwrap();
    let sink_runs = Arc::new(AtomicUsize::new(0));
    let runs = sink_runs.clone();
    let engine = builder(&dir)
        .queue("default", 64)
        .handler("sink", move |ctx, _payload| {
            let runs = runs.clone();
            async move {
                runs.fetch_add(1, Ordering::SeqCst);
                Ok(json!(ctx.parent_results().await?.len()))
            }
        })
        .build()
        .await
        .unwrap();
    let n = 1000;
    let mut wf = WorkflowSpec::new()
        .id("fan")
        .job("root", JobSpec::new("echo"));
    let mut sink = JobSpec::new("sink");
    for i in 0..n {
        let name = format!("leaf{i:04}");
        wf = wf.job(&name, JobSpec::new("echo").depends_on("root"));
        sink = sink.depends_on(name);
    }
    let wf = wf.job("sink", sink);
    let out = engine.submit_workflow(wf).await.unwrap();
    let sink_id = out.names["sink"].clone();
    let done = within("the sink", engine.wait(&sink_id)).await.unwrap();
    assert_eq!(done.state, State::Completed);
    assert_eq!(done.result, Some(json!(n)));
    assert_eq!(sink_runs.load(Ordering::SeqCst), 1);
    let started = event_id(&engine, &sink_id, EventKind::Started)
        .await
        .unwrap();
    let graph = engine.workflow("fan").await.unwrap();
    assert_eq!(graph.state, WorkflowState::Completed);
    assert_eq!(graph.nodes.len(), n + 2);
    assert_eq!(graph.edges.len(), 2 * n);
    for node in &graph.nodes {
        if node.id != sink_id {
            assert!(ended_at(&engine, &node.id).await < started);
        }
    }
    engine.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_long_chain_runs_link_by_link() {
    let dir = TempDir::new().unwrap();
    let order = Arc::new(Mutex::new(Vec::new()));
    let seen = order.clone();
    let engine = builder(&dir)
        .queue("default", 8)
        .handler("link", move |_ctx, payload| {
            let seen = seen.clone();
            async move {
                seen.lock().unwrap().push(payload.as_u64().unwrap());
                Ok(Value::Null)
            }
        })
        .build()
        .await
        .unwrap();
    let n = 500u64;
    let mut wf = WorkflowSpec::new().id("chain");
    for i in 0..n {
        let mut spec = JobSpec::new("link").payload(json!(i));
        if i > 0 {
            spec = spec.depends_on(format!("n{:04}", i - 1));
        }
        wf = wf.job(format!("n{i:04}"), spec);
    }
    let out = engine.submit_workflow(wf).await.unwrap();
    within("the chain", engine.wait(&out.names["n0499"]))
        .await
        .unwrap();
    assert_eq!(*order.lock().unwrap(), (0..n).collect::<Vec<_>>());
    engine.shutdown(Duration::from_secs(5)).await;
}

/// Many parents finish at the same instant on many workers, run after run: the job
/// that waits for all of them runs exactly once each time.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fan_in_job_runs_once_when_its_parents_finish_together() {
    let dir = TempDir::new().unwrap();
    let parents = 64;
    let gate = Arc::new(tokio::sync::Barrier::new(parents));
    let sink_runs: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let runs = sink_runs.clone();
    let engine = builder(&dir)
        .queue("default", parents + 8)
        .handler("together", move |_ctx, _payload| {
            let gate = gate.clone();
            async move {
                gate.wait().await;
                Ok(Value::Null)
            }
        })
        .handler("sink", move |ctx, _payload| {
            let runs = runs.clone();
            async move {
                *runs
                    .lock()
                    .unwrap()
                    .entry(ctx.job_id().to_owned())
                    .or_default() += 1;
                Ok(Value::Null)
            }
        })
        .build()
        .await
        .unwrap();
    for run in 0..20 {
        let mut wf = WorkflowSpec::new().id(format!("run{run}"));
        let mut sink = JobSpec::new("sink");
        for i in 0..parents {
            wf = wf.job(format!("p{i}"), JobSpec::new("together"));
            sink = sink.depends_on(format!("p{i}"));
        }
        let out = engine.submit_workflow(wf.job("sink", sink)).await.unwrap();
        let done = within("the sink", engine.wait(&out.names["sink"]))
            .await
            .unwrap();
        assert_eq!(done.state, State::Completed);
        let events = engine.events(&done.id, 0).await.unwrap();
        let queued = events
            .iter()
            .filter(|e| e.kind == EventKind::Queued)
            .count();
        let started = events
            .iter()
            .filter(|e| e.kind == EventKind::Started)
            .count();
        assert_eq!((queued, started), (1, 1), "run {run}");
    }
    // The last sink may still be recording its run: wait for the engine to go idle.
    within("idle", async {
        while !engine.running_jobs().is_empty() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    let runs = sink_runs.lock().unwrap().clone();
    assert_eq!(runs.len(), 20);
    assert!(runs.values().all(|n| *n == 1), "{runs:?}");
    engine.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn cycles_are_refused_by_name_and_nothing_is_written() {
    let dir = TempDir::new().unwrap();
    let engine = builder(&dir).build().await.unwrap();
    let e = |deps: &[&str]| {
        let mut spec = JobSpec::new("echo");
        for d in deps {
            spec = spec.depends_on(*d);
        }
        spec
    };
    let mut long = WorkflowSpec::new();
    for i in 0..50 {
        long = long.job(format!("s{i:02}"), e(&[&format!("s{:02}", (i + 1) % 50)]));
    }
    let long_cycle: Vec<String> = std::iter::once("s00".to_string())
        .chain((1..50).rev().map(|i| format!("s{i:02}")))
        .chain(std::iter::once("s00".to_string()))
        .collect();
    let cases = [
        (
            WorkflowSpec::new().job("a", e(&["a"])).job("b", e(&[])),
            "a -> a".to_string(),
        ),
        (
            WorkflowSpec::new()
                .job("a", e(&["b"]))
                .job("b", e(&["a"]))
                .job("c", e(&["a"])),
            "a -> b -> a".to_string(),
        ),
        (long, long_cycle.join(" -> ")),
    ];
    for (wf, cycle) in cases {
        let err = engine.submit_workflow(wf).await.unwrap_err();
        assert_eq!(err.code(), ErrorCode::InvalidSpec);
        assert!(
            err.to_string().contains(&format!("cycle: {cycle}")),
            "{err} lacks {cycle}"
        );
    }
    // An unknown dependency is refused too, naming it.
    let err = engine
        .submit_workflow(
            WorkflowSpec::new()
                .job("a", e(&[]))
                .job("b", e(&["a", "ghost"])),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::InvalidSpec);
    assert!(err.to_string().contains("\"ghost\""), "{err}");
    assert_eq!(engine.list(Default::default()).await.unwrap().total, 0);
    assert!(
        engine
            .store()
            .events_after(0, 100)
            .await
            .unwrap()
            .iter()
            .all(|e| e.job_id.is_none()),
        "no job event was written"
    );
    engine.shutdown(Duration::from_secs(5)).await;
}

/// A failure with each condition: `completed` dependents are cancelled with
/// `upstream_failed` (and theirs after them), a `failed` handler and a `finished`
/// continuation run.
#[tokio::test]
async fn a_failure_reaches_each_condition() {
    let dir = TempDir::new().unwrap();
    let engine = builder(&dir).build().await.unwrap();
    let wf = WorkflowSpec::new()
        .id("oops")
        .job("a", JobSpec::new("fail").max_attempts(1))
        .job("needs_a", JobSpec::new("echo").depends_on("a"))
        .job("after_needs_a", JobSpec::new("echo").depends_on("needs_a"))
        .job(
            "on_failure",
            JobSpec::new("parents").depends_on_when("a", Condition::Failed),
        )
        .job(
            "cleanup",
            JobSpec::new("echo")
                .payload(json!("cleaned"))
                .depends_on_when("a", Condition::Finished),
        )
        .job("after_cleanup", JobSpec::new("echo").depends_on("cleanup"));
    let out = engine.submit_workflow(wf).await.unwrap();
    let graph = wait_workflow(&engine, "oops").await;
    assert_eq!(graph.state, WorkflowState::Failed);
    let job = |n: &str| {
        let engine = engine.clone();
        let id = out.names[n].clone();
        async move { engine.get(&id).await.unwrap() }
    };
    assert_eq!(job("a").await.state, State::Failed);
    for n in ["needs_a", "after_needs_a"] {
        let j = job(n).await;
        assert_eq!(j.state, State::Cancelled, "{n}");
        assert_eq!(j.error.unwrap().code, "upstream_failed", "{n}");
        let kinds: Vec<EventKind> = engine
            .events(&j.id, 0)
            .await
            .unwrap()
            .iter()
            .map(|e| e.kind)
            .collect();
        assert_eq!(kinds, [EventKind::Submitted, EventKind::Cancelled], "{n}");
    }
    let handler = job("on_failure").await;
    assert_eq!(handler.state, State::Completed);
    assert_eq!(handler.result.unwrap()["a"]["error"]["message"], "boom");
    assert_eq!(job("cleanup").await.result, Some(json!("cleaned")));
    assert_eq!(job("after_cleanup").await.state, State::Completed);
    engine.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_submits_of_a_unique_key_leave_one_holder() {
    let dir = TempDir::new().unwrap();
    let gate = Arc::new(tokio::sync::Notify::new());
    let wait = gate.clone();
    let engine = builder(&dir)
        .handler("hold", move |_ctx, _payload| {
            let wait = wait.clone();
            async move {
                wait.notified().await;
                Ok(Value::Null)
            }
        })
        .build()
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for i in 0..100 {
        let engine = engine.clone();
        tasks.push(tokio::spawn(async move {
            engine
                .submit(
                    JobSpec::new("hold")
                        .id(format!("nightly-{i}"))
                        .unique("nightly-report", UniquePolicy::Reject),
                )
                .await
        }));
    }
    let mut holders = Vec::new();
    for t in tasks {
        match t.await.unwrap() {
            Ok(s) => holders.push(s.job.id),
            Err(e) => {
                assert_eq!(e.code(), ErrorCode::Conflict, "{e}");
                assert!(e.to_string().contains("\"nightly-report\""), "{e}");
            }
        }
    }
    assert_eq!(holders.len(), 1, "{holders:?}");
    // return_existing answers with the holder; replace cancels it, stopping its run.
    let existing = engine
        .submit(JobSpec::new("hold").unique("nightly-report", UniquePolicy::ReturnExisting))
        .await
        .unwrap();
    assert!(!existing.created);
    assert_eq!(existing.job.id, holders[0]);
    within("the holder to run", async {
        while engine.running_jobs() != holders {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    let replacement = engine
        .submit(JobSpec::new("echo").unique("nightly-report", UniquePolicy::Replace))
        .await
        .unwrap();
    assert!(replacement.created);
    let old = engine.wait(&holders[0]).await.unwrap();
    assert_eq!(old.state, State::Cancelled);
    within("the replaced run to stop", async {
        while engine.running_jobs().contains(&holders[0]) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    let done = within("the replacement", engine.wait(&replacement.job.id))
        .await
        .unwrap();
    assert_eq!(done.state, State::Completed);
    gate.notify_waiters();
    engine.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_paused_queue_starts_nothing_even_after_a_restart() {
    let dir = TempDir::new().unwrap();
    let engine = builder(&dir).queue("media", 2).build().await.unwrap();
    let status = engine.pause_queue("media").await.unwrap();
    assert!(status.paused);
    let job = engine
        .submit(JobSpec::new("echo").queue("media").payload(json!(1)))
        .await
        .unwrap();
    let other = engine.submit(JobSpec::new("echo")).await.unwrap();
    within("the other queue", engine.wait(&other.job.id))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(engine.get(&job.job.id).await.unwrap().state, State::Queued);
    let err = engine.pause_queue("ghost").await.unwrap_err();
    assert!(err.to_string().contains("\"ghost\""), "{err}");
    engine.shutdown(Duration::from_secs(5)).await;

    let engine = builder(&dir).queue("media", 2).build().await.unwrap();
    let media = engine
        .queue_states()
        .into_iter()
        .find(|q| q.name == "media")
        .unwrap();
    assert!(media.paused, "the pause survives a restart");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(engine.get(&job.job.id).await.unwrap().state, State::Queued);
    assert!(!engine.resume_queue("media").await.unwrap().paused);
    let done = within("the job", engine.wait(&job.job.id)).await.unwrap();
    assert_eq!(done.state, State::Completed);
    let kinds: Vec<(EventKind, Value)> = engine
        .store()
        .events_after(0, 1000)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| matches!(e.kind, EventKind::QueuePaused | EventKind::QueueResumed))
        .map(|e| (e.kind, e.data))
        .collect();
    assert_eq!(
        kinds,
        [
            (EventKind::QueuePaused, json!({"queue": "media"})),
            (EventKind::QueueResumed, json!({"queue": "media"})),
        ]
    );
    engine.shutdown(Duration::from_secs(5)).await;
}

/// Pause holds a workflow (its running job pauses, nothing new starts), resume goes
/// on, retry runs only the failed part, cancel ends it.
#[tokio::test]
async fn a_workflow_is_paused_resumed_retried_and_cancelled_as_a_whole() {
    let dir = TempDir::new().unwrap();
    let flaky_runs = Arc::new(AtomicUsize::new(0));
    let flaky = flaky_runs.clone();
    let engine = builder(&dir)
        .handler("step", |ctx, _payload| async move {
            for i in 0..40 {
                ctx.progress(i as f64 / 40.0, "working").await?;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Ok(json!("stepped"))
        })
        .handler("flaky", move |_ctx, _payload| {
            let flaky = flaky.clone();
            async move {
                if flaky.fetch_add(1, Ordering::SeqCst) == 0 {
                    Err(JobError::fatal("first run fails"))
                } else {
                    Ok(json!("fine"))
                }
            }
        })
        .build()
        .await
        .unwrap();
    let out = engine
        .submit_workflow(
            WorkflowSpec::new()
                .id("w")
                .job("slow", JobSpec::new("step"))
                .job("next", JobSpec::new("echo").depends_on("slow"))
                .job("flaky", JobSpec::new("flaky").depends_on("next"))
                .job("last", JobSpec::new("echo").depends_on("flaky"))
                .job("done_anyway", JobSpec::new("echo").depends_on("next")),
        )
        .await
        .unwrap();
    let id = |n: &str| out.names[n].clone();
    within("slow to run", async {
        while engine.get(&id("slow")).await.unwrap().state != State::Running {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await;
    let paused = engine.pause_workflow("w").await.unwrap();
    assert_eq!(paused.state, WorkflowState::Paused);
    assert_eq!(engine.get(&id("slow")).await.unwrap().state, State::Paused);
    let err = engine.pause_workflow("w").await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::IllegalTransition);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        engine.get(&id("next")).await.unwrap().state,
        State::Awaiting
    );

    let resumed = engine.resume_workflow("w").await.unwrap();
    assert_eq!(resumed.state, WorkflowState::Running);
    let graph = wait_workflow(&engine, "w").await;
    assert_eq!(graph.state, WorkflowState::Failed);
    assert_eq!(
        engine.get(&id("last")).await.unwrap().state,
        State::Cancelled
    );
    assert_eq!(
        engine.get(&id("done_anyway")).await.unwrap().state,
        State::Completed
    );

    let retried = engine.retry_workflow("w", false).await.unwrap();
    assert_ne!(retried.state, WorkflowState::Failed);
    let graph = wait_workflow(&engine, "w").await;
    assert_eq!(graph.state, WorkflowState::Completed);
    assert_eq!(flaky_runs.load(Ordering::SeqCst), 2);
    let slow_starts = engine
        .events(&id("slow"), 0)
        .await
        .unwrap()
        .iter()
        .filter(|e| e.kind == EventKind::Started)
        .count();
    assert_eq!(slow_starts, 1, "a completed job does not run again");
    let err = engine.retry_workflow("w", false).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::IllegalTransition);

    let out = engine
        .submit_workflow(
            WorkflowSpec::new()
                .id("x")
                .job("slow", JobSpec::new("step"))
                .job("next", JobSpec::new("echo").depends_on("slow")),
        )
        .await
        .unwrap();
    within("slow to run", async {
        while engine.get(&out.names["slow"]).await.unwrap().state != State::Running {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await;
    engine.cancel_workflow("x").await.unwrap();
    let graph = wait_workflow(&engine, "x").await;
    assert_eq!(graph.state, WorkflowState::Cancelled);
    let next = engine.get(&out.names["next"]).await.unwrap();
    assert_eq!(next.error.unwrap().code, "cancelled");
    let err = engine.cancel_workflow("x").await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::IllegalTransition);
    let err = engine.workflow("nope").await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::NotFound);
    engine.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn command_jobs_read_their_parents_results_from_a_file() {
    let dir = TempDir::new().unwrap();
    let engine = builder(&dir).build().await.unwrap();
    let script = r#"echo "file $BATON_PARENT_RESULTS"; printf '::result %s\n' "$(tr -d '\n' < "$BATON_PARENT_RESULTS")""#;
    let out = engine
        .submit_workflow(
            WorkflowSpec::new()
                .job("count", JobSpec::new("echo").payload(json!({"rows": 7})))
                .job("report", JobSpec::shell_command(script).depends_on("count")),
        )
        .await
        .unwrap();
    let done = within("the command", engine.wait(&out.names["report"]))
        .await
        .unwrap();
    assert_eq!(done.state, State::Completed, "{:?}", done.error);
    let result = done.result.unwrap();
    assert_eq!(result["count"]["result"], json!({"rows": 7}), "{result}");
    assert_eq!(result["count"]["state"], "completed");
    let logs = engine.logs(&done.id, 0, 100).await.unwrap();
    let path = logs
        .iter()
        .find_map(|l| l.line.strip_prefix("file "))
        .expect("the script printed the file's path");
    assert!(
        !std::path::Path::new(path).exists(),
        "{path} is removed after the run"
    );

    // A command without dependencies gets no such variable.
    let plain = engine
        .submit(JobSpec::shell_command(
            r#"printf '::result "%s"\n' "${BATON_PARENT_RESULTS:-none}""#,
        ))
        .await
        .unwrap();
    let plain = within("the command", engine.wait(&plain.job.id))
        .await
        .unwrap();
    assert_eq!(plain.result, Some(json!("none")));
    engine.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn plain_jobs_depend_on_jobs_by_id() {
    let dir = TempDir::new().unwrap();
    let engine = builder(&dir).build().await.unwrap();
    let err = engine
        .submit(JobSpec::new("echo").depends_on("ghost"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::InvalidSpec);
    assert!(err.to_string().contains("\"ghost\""), "{err}");
    let a = engine
        .submit(JobSpec::new("echo").id("a").payload(json!(1)))
        .await
        .unwrap();
    let b = engine
        .submit(JobSpec::new("parents").id("b").depends_on(&a.job.id))
        .await
        .unwrap();
    let done = within("b", engine.wait(&b.job.id)).await.unwrap();
    assert_eq!(
        done.result.unwrap()["a"]["result"],
        1,
        "keyed by id outside a workflow"
    );
    engine.shutdown(Duration::from_secs(5)).await;
}

/// A random DAG: edges go from lower to higher index, each with a condition; some
/// jobs fail. What each job should end as follows from its parents' ends.
#[derive(Clone, Debug)]
struct Dag {
    fails: Vec<bool>,
    edges: Vec<(usize, usize, Condition)>,
}

fn dag() -> impl Strategy<Value = Dag> {
    (2usize..16).prop_flat_map(|n| {
        let fails = proptest::collection::vec(proptest::bool::weighted(0.2), n);
        let edges = proptest::collection::vec(
            (
                0..n,
                0..n,
                prop_oneof![
                    6 => Just(Condition::Completed),
                    1 => Just(Condition::Failed),
                    1 => Just(Condition::Finished),
                ],
            ),
            0..(n * 2),
        )
        .prop_map(|raw| {
            let mut seen = std::collections::BTreeSet::new();
            raw.into_iter()
                .filter_map(|(a, b, on)| {
                    let (p, c) = (a.min(b), a.max(b));
                    (p != c && seen.insert((p, c))).then_some((p, c, on))
                })
                .collect::<Vec<_>>()
        });
        (fails, edges).prop_map(|(fails, edges)| Dag { fails, edges })
    })
}

impl Dag {
    fn expected(&self) -> Vec<State> {
        let mut out: Vec<State> = Vec::with_capacity(self.fails.len());
        for (i, fails) in self.fails.iter().enumerate() {
            let blocked = self
                .edges
                .iter()
                .filter(|(_, c, _)| *c == i)
                .any(|(p, _, on)| on.holds(out[*p]) == Some(false));
            out.push(if blocked {
                State::Cancelled
            } else if *fails {
                State::Failed
            } else {
                State::Completed
            });
        }
        out
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn random_dags_run_every_job_after_its_parents_and_end(dag in dag()) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let dir = TempDir::new().unwrap();
            let engine = builder(&dir).queue("default", 4).build().await.unwrap();
            let name = |i: usize| format!("n{i:02}");
            let mut wf = WorkflowSpec::new().id("dag");
            for (i, fails) in dag.fails.iter().enumerate() {
                let mut spec = JobSpec::new(if *fails { "fail" } else { "echo" }).max_attempts(1);
                for (p, _, on) in dag.edges.iter().filter(|(_, c, _)| *c == i) {
                    spec = spec.depends_on_when(name(*p), *on);
                }
                wf = wf.job(name(i), spec);
            }
            let out = engine.submit_workflow(wf).await.unwrap();
            let graph = wait_workflow(&engine, "dag").await;
            assert!(!graph.state.is_terminal() || graph.nodes.iter().all(|n| n.state.is_terminal()));
            let expected = dag.expected();
            for (i, want) in expected.iter().enumerate() {
                let job = engine.get(&out.names[&name(i)]).await.unwrap();
                assert_eq!(job.state, *want, "{} in {dag:?}", name(i));
            }
            // Every job that ran started after each of its parents ended.
            let mut ends = BTreeMap::new();
            for i in 0..dag.fails.len() {
                ends.insert(i, ended_at(&engine, &out.names[&name(i)]).await);
            }
            for (p, c, _) in &dag.edges {
                if let Some(started) = event_id(&engine, &out.names[&name(*c)], EventKind::Started).await {
                    assert!(ends[p] < started, "{} ran before {} ended", name(*c), name(*p));
                }
            }
            engine.shutdown(Duration::from_secs(5)).await;
        });
    }
}
