//! A subscription never skips: with a live buffer of 16 events, subscribers that fall
//! far behind a burst of 100,000 events still see every event once, in order, then
//! carry on live.

use std::sync::Arc;
use std::time::Duration;

use baton_engine::{Engine, EventKind, JobSpec, Subscription};
use baton_store::{SqliteOptions, SqliteStore, Store};
use tempfile::TempDir;

const BURST: usize = 100_000;
const BATCH: usize = 1_000;

async fn engine_with_tiny_buffer(dir: &TempDir) -> Engine {
    let mut options = SqliteOptions::new(dir.path().join("baton.db"));
    options.event_buffer = 16;
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(options).unwrap());
    Engine::builder()
        .store(store)
        .handler("echo", |_ctx, payload| async move { Ok(payload) })
        .build()
        .await
        .unwrap()
}

/// 100,000 jobs due in an hour: one `job.submitted` event each, written in batches
/// far faster than anyone reads them.
async fn burst(engine: &Engine) {
    for _ in 0..BURST / BATCH {
        let specs = (0..BATCH)
            .map(|_| JobSpec::new("echo").delay(Duration::from_secs(3600)))
            .collect();
        engine.submit_many(specs).await.unwrap();
    }
}

/// Every id in the store's log after `after`, up to and including `end`.
async fn logged_ids(store: &Arc<dyn Store>, after: u64, end: u64) -> Vec<u64> {
    let mut ids = Vec::new();
    let mut last = after;
    while last < end {
        let page = store.events_after(last, 10_000).await.unwrap();
        assert!(!page.is_empty(), "the log ends at {last}, before {end}");
        for e in page {
            if e.id <= end {
                ids.push(e.id);
            }
            last = e.id;
        }
    }
    ids
}

/// Reads until the event with id `end`, with a pause now and then when `slow`.
async fn read_until(sub: &mut Subscription, end: u64, slow: bool) -> Vec<u64> {
    let mut ids = Vec::new();
    loop {
        let e = tokio::time::timeout(Duration::from_secs(60), sub.next())
            .await
            .expect("an event within a minute")
            .expect("the engine is open");
        ids.push(e.id);
        if slow && ids.len().is_multiple_of(500) {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        if e.id >= end {
            return ids;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_behind_a_burst_see_every_event_once_in_order() {
    let dir = TempDir::new().unwrap();
    let engine = engine_with_tiny_buffer(&dir).await;
    let store = engine.store().clone();
    let start = store.last_event_id().await.unwrap();

    // One reads nothing until the burst is over; one reads all along, slower than the
    // burst, so it falls behind again and again.
    let mut idle = engine.subscribe().await.unwrap();
    let mut reading = engine.subscribe().await.unwrap();
    let (end_tx, mut end_rx) = tokio::sync::watch::channel(None::<u64>);
    let reader = tokio::spawn(async move {
        let mut ids: Vec<u64> = Vec::new();
        loop {
            let end = *end_rx.borrow_and_update();
            if let (Some(end), Some(last)) = (end, ids.last())
                && *last >= end
            {
                return (ids, reading);
            }
            tokio::select! {
                e = reading.next() => {
                    ids.push(e.expect("the engine is open").id);
                    if ids.len().is_multiple_of(500) {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                }
                _ = end_rx.changed() => {}
            }
        }
    });

    burst(&engine).await;
    let end = store.last_event_id().await.unwrap();
    end_tx.send(Some(end)).unwrap();
    let expected = logged_ids(&store, start, end).await;
    assert_eq!(expected.len(), BURST, "one event per job submitted");

    let seen = read_until(&mut idle, end, false).await;
    assert_eq!(
        seen.len(),
        BURST,
        "the idle subscriber saw every event once"
    );
    assert!(
        seen == expected,
        "the idle subscriber saw the log's ids, in order"
    );

    let (seen, mut reading) = reader.await.unwrap();
    assert_eq!(
        seen.len(),
        BURST,
        "the reading subscriber saw every event once"
    );
    assert!(
        seen == expected,
        "the reading subscriber saw the log's ids, in order"
    );

    // Caught up, both carry on live with the next event and nothing before it again.
    let next = engine.submit(JobSpec::new("echo")).await.unwrap().job.id;
    for sub in [&mut idle, &mut reading] {
        let e = tokio::time::timeout(Duration::from_secs(20), sub.next())
            .await
            .expect("a live event")
            .unwrap();
        assert_eq!(e.id, end + 1);
        assert_eq!(e.job_id.as_deref(), Some(next.as_str()));
        assert_eq!(e.kind, EventKind::Submitted);
    }
    engine.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_subscription_starts_at_the_last_committed_event() {
    let dir = TempDir::new().unwrap();
    let engine = engine_with_tiny_buffer(&dir).await;
    let before = engine.submit(JobSpec::new("echo")).await.unwrap().job.id;
    engine.wait(&before).await.unwrap();
    let mut sub = engine.subscribe().await.unwrap();
    assert_eq!(
        sub.position(),
        engine.store().last_event_id().await.unwrap(),
        "a new subscription stands at the end of the log"
    );
    // A burst before the first read: the subscription lags at once, and reads from
    // where it was made, not from the start of the log nor from the end of the burst.
    for _ in 0..3 {
        let specs: Vec<JobSpec> = (0..100)
            .map(|_| JobSpec::new("echo").delay(Duration::from_secs(3600)))
            .collect();
        engine.submit_many(specs).await.unwrap();
    }
    let end = engine.store().last_event_id().await.unwrap();
    let expected = logged_ids(engine.store(), sub.position(), end).await;
    assert_eq!(expected.len(), 300);
    let seen = read_until(&mut sub, end, false).await;
    assert!(
        seen == expected,
        "the 300 events after the subscription, in order"
    );
    engine.shutdown(Duration::from_secs(5)).await;
}
