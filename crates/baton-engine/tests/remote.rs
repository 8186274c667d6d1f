//! Remote workers through the engine's API, on a store that fails on purpose: a job
//! whose parents' results cannot be read is not handed over without them, and an
//! outcome whose write fails is written again until it lands, once.

#[path = "support/flaky_store.rs"]
mod flaky_store;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use baton_engine::{Engine, JobSpec, Report, State, ToWorker, WorkerHello, WorkerSession};
use baton_store::{Error, SqliteOptions, SqliteStore};
use flaky_store::FlakyStore;
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::sync::mpsc::UnboundedReceiver;

async fn engine(dir: &TempDir) -> (Engine, Arc<FlakyStore>) {
    let sqlite = SqliteStore::open(SqliteOptions::new(dir.path().join("baton.db"))).unwrap();
    let flaky = FlakyStore::new(Arc::new(sqlite));
    let engine = Engine::builder()
        .store(flaky.clone())
        .handler("echo", |_ctx, payload| async move { Ok(payload) })
        .remote_kinds(["scrape"])
        .build()
        .await
        .unwrap();
    (engine, flaky)
}

fn worker(engine: &Engine) -> (WorkerSession, UnboundedReceiver<ToWorker>) {
    engine
        .connect_worker(WorkerHello {
            name: "test".into(),
            kinds: vec!["scrape".into()],
            queues: vec!["default".into()],
            slots: 4,
        })
        .expect("the worker connects")
}

/// The next job handed to the worker: its id, token and parents.
async fn next_job(rx: &mut UnboundedReceiver<ToWorker>) -> (String, u64, Value) {
    loop {
        let got = tokio::time::timeout(Duration::from_secs(20), rx.recv())
            .await
            .expect("a job within 20 s")
            .expect("the worker is connected");
        if let ToWorker::Job {
            job,
            token,
            parents,
            ..
        } = got
        {
            return (job.id, token, serde_json::to_value(parents).unwrap());
        }
    }
}

#[tokio::test]
async fn a_job_whose_parents_cannot_be_read_fails_its_attempt_saying_why_and_is_retried() {
    let dir = TempDir::new().unwrap();
    let (engine, flaky) = engine(&dir).await;
    engine
        .submit(
            JobSpec::new("echo")
                .id("fetch")
                .payload(json!({"pages": 3})),
        )
        .await
        .unwrap();
    engine
        .submit(
            JobSpec::new("scrape")
                .id("parse")
                .depends_on("fetch")
                .max_attempts(2)
                .backoff(Duration::from_millis(10), Duration::from_millis(10)),
        )
        .await
        .unwrap();
    assert_eq!(engine.wait("fetch").await.unwrap().state, State::Completed);
    flaky.fail_dependency_reads(1);

    let (session, mut rx) = worker(&engine);
    // The first attempt is never handed over: its parents could not be read.
    let (id, token, parents) = next_job(&mut rx).await;
    assert_eq!(id, "parse");
    assert_eq!(parents["fetch"]["job_id"], "fetch", "{parents}");
    assert_eq!(parents["fetch"]["result"], json!({"pages": 3}), "{parents}");
    let attempts = engine.attempts("parse").await.unwrap();
    assert_eq!(attempts.len(), 2, "{attempts:?}");
    let first = serde_json::to_string(&attempts[0]).unwrap();
    assert!(
        first.contains("cannot read the parent results") && first.contains("disk I/O error"),
        "the first attempt says why it failed: {first}"
    );

    session
        .report(&id, token, Report::Complete(json!("parsed")))
        .unwrap()
        .await
        .unwrap();
    let job = engine.wait("parse").await.unwrap();
    assert_eq!(job.state, State::Completed);
    assert_eq!(job.attempt, 2);
}

#[tokio::test]
async fn a_remote_outcome_whose_write_fails_is_written_again_until_it_lands() {
    let dir = TempDir::new().unwrap();
    let (engine, flaky) = engine(&dir).await;
    let (session, mut rx) = worker(&engine);
    engine.submit(JobSpec::new("scrape").id("a")).await.unwrap();
    let (id, token, _) = next_job(&mut rx).await;
    flaky
        .fail_outcomes(3, Error::Internal("disk I/O error".into()))
        .await;
    // The worker's answer comes once the outcome is durable, after the failed writes.
    session
        .report(&id, token, Report::Complete(json!({"ok": true})))
        .unwrap()
        .await
        .expect("the outcome lands");
    assert_eq!(flaky.refused.load(Ordering::SeqCst), 3);
    let job = engine.get("a").await.unwrap();
    assert_eq!(job.state, State::Completed);
    assert_eq!(job.result, Some(json!({"ok": true})));
    assert_eq!(job.attempt, 1, "it ran once");
    let completed = engine
        .events("a", 0)
        .await
        .unwrap()
        .iter()
        .filter(|e| e.kind == baton_engine::EventKind::Completed)
        .count();
    assert_eq!(completed, 1);
    // The worker's slot is free again: the next job reaches it.
    engine.submit(JobSpec::new("scrape").id("b")).await.unwrap();
    assert_eq!(next_job(&mut rx).await.0, "b");
}
