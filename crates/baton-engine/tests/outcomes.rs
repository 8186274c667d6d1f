//! An attempt's outcome is not lost to a failing write: the worker tries again, with
//! the same fencing token, until it lands; a refusal is final; shutdown ends the tries.

#[path = "support/flaky_store.rs"]
mod flaky_store;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use baton_engine::{Engine, EventKind, JobSpec, State};
use baton_store::{Error, SqliteOptions, SqliteStore};
use flaky_store::FlakyStore;
use serde_json::json;
use tempfile::TempDir;

async fn engine(dir: &TempDir) -> (Engine, Arc<FlakyStore>) {
    let sqlite = SqliteStore::open(SqliteOptions::new(dir.path().join("baton.db"))).unwrap();
    let flaky = FlakyStore::new(Arc::new(sqlite));
    let engine = Engine::builder()
        .store(flaky.clone())
        .queue("one", 1)
        .handler("echo", |_ctx, payload| async move { Ok(payload) })
        .build()
        .await
        .unwrap();
    (engine, flaky)
}

async fn within<F: std::future::Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(20), f)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// The id of the job's first event of `kind`.
async fn event_id(engine: &Engine, job: &str, kind: EventKind) -> u64 {
    let events = engine.events(job, 0).await.unwrap();
    events
        .iter()
        .find(|e| e.kind == kind)
        .unwrap_or_else(|| panic!("no {kind} event for {job}: {events:?}"))
        .id
}

#[tokio::test]
async fn a_failed_outcome_write_is_retried_until_it_lands() {
    let dir = TempDir::new().unwrap();
    let (engine, flaky) = engine(&dir).await;
    flaky
        .fail_outcomes(3, Error::Internal("disk I/O error".into()))
        .await;
    let a = engine
        .submit(JobSpec::new("echo").queue("one").payload(json!({"n": 1})))
        .await
        .unwrap()
        .job
        .id;
    let b = engine
        .submit(JobSpec::new("echo").queue("one").payload(json!({"n": 2})))
        .await
        .unwrap()
        .job
        .id;

    let job = within("job a", engine.wait(&a)).await.unwrap();
    assert_eq!(job.state, State::Completed);
    assert_eq!(job.result, Some(json!({"n": 1})));
    assert_eq!(job.attempt, 1, "it ran once");
    assert_eq!(flaky.refused.load(Ordering::SeqCst), 3);
    assert_eq!(engine.outcome_write_retries(), 3);
    let kinds: Vec<EventKind> = engine
        .events(&a, 0)
        .await
        .unwrap()
        .iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(
        kinds,
        [
            EventKind::Submitted,
            EventKind::Started,
            EventKind::Completed
        ]
    );

    // The queue's one slot stayed taken while a's outcome was retried: b started after.
    let job = within("job b", engine.wait(&b)).await.unwrap();
    assert_eq!(job.result, Some(json!({"n": 2})));
    assert!(
        event_id(&engine, &b, EventKind::Started).await
            > event_id(&engine, &a, EventKind::Completed).await,
        "b started only once a's outcome was recorded"
    );
    engine.shutdown(Duration::from_secs(5)).await;

    // After a restart, nothing runs again.
    let (engine, _flaky) = self::engine(&dir).await;
    assert_eq!(engine.get(&a).await.unwrap().state, State::Completed);
    assert_eq!(engine.get(&a).await.unwrap().attempt, 1);
    engine.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_refused_outcome_is_not_retried() {
    let dir = TempDir::new().unwrap();
    let (engine, flaky) = engine(&dir).await;
    // The attempt's token is stale (a user ended it first): trying again cannot help.
    let stale = Error::StaleFence {
        id: "a".into(),
        fence: 1,
    };
    flaky.fail_outcomes(1, stale).await;
    engine
        .submit(JobSpec::new("echo").id("a").queue("one"))
        .await
        .unwrap();
    let b = engine
        .submit(JobSpec::new("echo").queue("one").payload(json!("b")))
        .await
        .unwrap()
        .job
        .id;
    // The slot is freed at once: b runs.
    let job = within("job b", engine.wait(&b)).await.unwrap();
    assert_eq!(job.result, Some(json!("b")));
    assert_eq!(flaky.refused.load(Ordering::SeqCst), 1);
    assert_eq!(engine.outcome_write_retries(), 0);
    engine.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn shutdown_ends_the_retries_and_the_job_runs_again_at_the_next_start() {
    let dir = TempDir::new().unwrap();
    let (engine, flaky) = engine(&dir).await;
    flaky
        .fail_outcomes(u32::MAX, Error::Internal("disk I/O error".into()))
        .await;
    let a = engine
        .submit(JobSpec::new("echo").queue("one").payload(json!("a")))
        .await
        .unwrap()
        .job
        .id;
    within("a few failed tries", async {
        while flaky.refused.load(Ordering::SeqCst) < 3 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert_eq!(engine.get(&a).await.unwrap().state, State::Running);
    let asked = Instant::now();
    engine.shutdown(Duration::from_millis(300)).await;
    assert!(
        asked.elapsed() < Duration::from_secs(3),
        "shutdown waited {:?}",
        asked.elapsed()
    );

    // Its outcome never landed: the next start runs it again, and this time it lands.
    let (engine, _flaky) = self::engine(&dir).await;
    let job = within("job a again", engine.wait(&a)).await.unwrap();
    assert_eq!(job.state, State::Completed);
    assert_eq!(job.result, Some(json!("a")));
    engine.shutdown(Duration::from_secs(5)).await;
}
