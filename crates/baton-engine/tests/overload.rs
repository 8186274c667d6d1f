//! Back-pressure: a flood of submits against a writer slowed on purpose (the store's
//! `faults` feature). Every submit is answered, accepted or refused as overloaded; the
//! writer's queue never holds more than its capacity; and every accepted job is stored
//! and runs to its end, because a worker's outcome waits for room instead of failing.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use baton_engine::{Engine, Error, ErrorCode, JobSpec, State};
use baton_store::sqlite::Faults;
use baton_store::{JobFilter, SqliteOptions, SqliteStore, Store};
use serde_json::Value;

const SUBMITS: usize = 20_000;
const QUEUE: usize = 500;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flood_of_submits_is_answered_bounded_and_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().expect("temp dir");
    let faults = Faults::default();
    let mut options = SqliteOptions::new(dir.path().join("baton.db")).write_queue(QUEUE);
    options.faults = faults.clone();
    let store = SqliteStore::open(options).unwrap_or_else(|e| panic!("open: {e}"));
    let engine = Engine::builder()
        .store(Arc::new(store.clone()))
        .handler("noop", |_ctx, _payload| async move { Ok(Value::Null) })
        .build()
        .await
        .unwrap_or_else(|e| panic!("build: {e}"));
    faults.slow_batches(Duration::from_millis(5));

    // The writer's queue, sampled while the flood runs.
    let flooding = Arc::new(AtomicBool::new(true));
    let most_queued = Arc::new(AtomicUsize::new(0));
    let sampler = tokio::spawn({
        let (store, flooding, most) = (store.clone(), flooding.clone(), most_queued.clone());
        async move {
            while flooding.load(Ordering::SeqCst) {
                most.fetch_max(store.queued_writes(), Ordering::SeqCst);
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
        }
    });
    let tasks: Vec<_> = (0..SUBMITS)
        .map(|i| {
            let engine = engine.clone();
            tokio::spawn(async move {
                let id = format!("job-{i}");
                (id.clone(), engine.submit(JobSpec::new("noop").id(id)).await)
            })
        })
        .collect();
    let mut accepted = HashSet::new();
    let mut refused = HashSet::new();
    for task in tasks {
        let (id, answer) = tokio::time::timeout(Duration::from_secs(120), task)
            .await
            .expect("every submit is answered")
            .expect("join");
        match answer {
            Ok(s) => {
                assert!(s.created, "{id}");
                accepted.insert(id);
            }
            Err(e) => {
                assert_eq!(e.code(), ErrorCode::Overloaded, "{e}");
                assert!(matches!(e, Error::Overloaded { queued: QUEUE }), "{e:?}");
                assert!(e.to_string().contains("overloaded"), "{e}");
                refused.insert(id);
            }
        }
    }
    flooding.store(false, Ordering::SeqCst);
    sampler.await.expect("sampler");
    eprintln!(
        "{} accepted, {} refused as overloaded, at most {} writes queued",
        accepted.len(),
        refused.len(),
        most_queued.load(Ordering::SeqCst)
    );
    assert_eq!(accepted.len() + refused.len(), SUBMITS);
    assert!(
        !refused.is_empty(),
        "the slowed writer never filled its queue"
    );
    assert!(!accepted.is_empty(), "no submit was accepted");
    let most = most_queued.load(Ordering::SeqCst);
    assert!(most <= QUEUE, "{most} writes queued, more than {QUEUE}");
    assert!(most > 0, "the queue was never seen holding a write");

    // Every acknowledged job is stored and runs to the end (its outcome waited for
    // room); no refused one is.
    faults.slow_batches(Duration::ZERO);
    tokio::time::timeout(Duration::from_secs(120), async {
        loop {
            let counts = store.counts().await.expect("counts");
            let done: u64 = counts
                .rows
                .iter()
                .filter(|(_, s, _)| *s == State::Completed)
                .map(|(_, _, n)| n)
                .sum();
            if done as usize == accepted.len() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("every accepted job completes");
    let mut stored = HashSet::new();
    let mut filter = JobFilter {
        limit: 1000,
        ..JobFilter::default()
    };
    loop {
        let page = store.list(filter.clone()).await.expect("list");
        for job in &page.jobs {
            assert_eq!(job.state, State::Completed, "{}", job.id);
            stored.insert(job.id.clone());
        }
        match page.next_cursor {
            Some(cursor) => filter.cursor = Some(cursor),
            None => break,
        }
    }
    assert_eq!(stored, accepted);
    engine.shutdown(Duration::from_secs(5)).await;
}
