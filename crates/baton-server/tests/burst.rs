//! No event is lost to a burst: with the store's live buffer at 16 events, real SSE
//! clients over HTTP, a WebSocket client and the `/metrics` counters see every one of
//! 100,000 events, once, in order.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use baton_api::{WsMessage, WsRequest};
use baton_engine::{Engine, JobSpec};
use baton_server::{AppState, ServerOptions};
use baton_store::{SqliteOptions, SqliteStore, Store};
use futures::{SinkExt, StreamExt};
use tempfile::TempDir;
use tokio_tungstenite::tungstenite::Message;

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

async fn serve(engine: &Engine) -> SocketAddr {
    let options = ServerOptions::default();
    let state = AppState::new(engine.clone(), &options).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        baton_server::serve(listener, state, &options, std::future::pending()).await
    });
    addr
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(180)))
        .build()
        .into()
}

/// A real SSE client on its own thread. It says when it is connected, then reads
/// either all along or only once told where the burst ends (`idle`: meanwhile the
/// server cannot write to it and its stream falls behind), and returns the event ids
/// up to that end.
fn sse_client(
    addr: SocketAddr,
    idle: bool,
) -> (
    mpsc::Receiver<()>,
    mpsc::Sender<u64>,
    std::thread::JoinHandle<Vec<u64>>,
) {
    let (connected_tx, connected) = mpsc::channel();
    let (end_tx, end_rx) = mpsc::channel::<u64>();
    let handle = std::thread::spawn(move || {
        let response = agent()
            .get(format!("http://{addr}/api/events"))
            .header("Accept", "text/event-stream")
            .call()
            .expect("the event stream opens");
        assert_eq!(response.status(), 200);
        connected_tx.send(()).unwrap();
        let mut end = if idle {
            Some(end_rx.recv().unwrap())
        } else {
            None
        };
        let mut ids = Vec::new();
        for line in BufReader::new(response.into_body().into_reader()).lines() {
            let line = line.expect("the stream goes on");
            let Some(id) = line.strip_prefix("id:") else {
                continue;
            };
            let id: u64 = id.trim().parse().expect("a numeric event id");
            ids.push(id);
            if end.is_none() {
                end = end_rx.try_recv().ok();
            }
            if end.is_some_and(|end| id >= end) {
                return ids;
            }
        }
        panic!("the stream ended after {} events", ids.len());
    });
    (connected, end_tx, handle)
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

/// The value of an unlabelled metric in `/metrics`, fetched over HTTP.
async fn metric(addr: SocketAddr, name: &str) -> u64 {
    let name = name.to_owned();
    tokio::task::spawn_blocking(move || {
        let text = agent()
            .get(format!("http://{addr}/metrics"))
            .call()
            .expect("/metrics answers")
            .into_body()
            .read_to_string()
            .unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no {name} in /metrics:\n{text}"))
            .trim()
            .parse()
            .unwrap()
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_and_websocket_clients_and_metrics_see_every_event_of_a_burst() {
    let dir = TempDir::new().unwrap();
    let engine = engine_with_tiny_buffer(&dir).await;
    let store = engine.store().clone();
    let start = store.last_event_id().await.unwrap();
    let addr = serve(&engine).await;

    let (idle_connected, idle_end, idle) = sse_client(addr, true);
    let (reading_connected, reading_end, reading) = sse_client(addr, false);
    idle_connected.recv().unwrap();
    reading_connected.recv().unwrap();
    // A WebSocket client that subscribes to everything, then reads nothing until the
    // burst is over.
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/api/ws"))
        .await
        .unwrap();
    let subscribe = WsRequest::Subscribe {
        job: None,
        after: None,
    };
    let text = serde_json::to_string(&subscribe).unwrap();
    ws.send(Message::Text(text.into())).await.unwrap();
    let reply = ws.next().await.unwrap().unwrap();
    let reply: WsMessage = serde_json::from_str(reply.to_text().unwrap()).unwrap();
    assert_eq!(reply, WsMessage::Subscribed { job: None });
    assert_eq!(metric(addr, "baton_event_subscribers").await, 3);

    for _ in 0..BURST / BATCH {
        let specs = (0..BATCH)
            .map(|_| JobSpec::new("echo").delay(Duration::from_secs(3600)))
            .collect();
        engine.submit_many(specs).await.unwrap();
    }
    let end = store.last_event_id().await.unwrap();
    let expected = logged_ids(&store, start, end).await;
    assert_eq!(expected.len(), BURST, "one event per job submitted");
    // One more event after the burst: both read up to it, which shows them live again
    // (and wakes a client that read everything before it knew where the burst ended).
    idle_end.send(end + 1).unwrap();
    reading_end.send(end + 1).unwrap();
    let after = JobSpec::new("echo").delay(Duration::from_secs(3600));
    engine.submit(after).await.unwrap();
    let mut expected = expected;
    expected.push(end + 1);

    let seen = tokio::task::spawn_blocking(move || idle.join().unwrap())
        .await
        .unwrap();
    assert_eq!(
        seen.len(),
        BURST + 1,
        "the idle client got every event once"
    );
    assert!(
        seen == expected,
        "the idle client got the log's ids, in order"
    );
    let seen = tokio::task::spawn_blocking(move || reading.join().unwrap())
        .await
        .unwrap();
    assert_eq!(
        seen.len(),
        BURST + 1,
        "the reading client got every event once"
    );
    assert!(
        seen == expected,
        "the reading client got the log's ids, in order"
    );
    let mut seen = Vec::new();
    while seen.last().is_none_or(|l| *l < end + 1) {
        let msg = tokio::time::timeout(Duration::from_secs(60), ws.next())
            .await
            .expect("a WebSocket message within a minute")
            .expect("the socket stays open")
            .unwrap();
        if let Message::Text(t) = msg
            && let WsMessage::Event { event } = serde_json::from_str(&t).unwrap()
        {
            seen.push(event.id);
        }
    }
    assert_eq!(
        seen.len(),
        BURST + 1,
        "the WebSocket client got every event once"
    );
    assert!(
        seen == expected,
        "the WebSocket client got the log's ids, in order"
    );

    // The counters follow the same events: each one counted, once.
    let deadline = Instant::now() + Duration::from_secs(60);
    while metric(addr, "baton_jobs_submitted_total").await < BURST as u64 + 1 {
        assert!(
            Instant::now() < deadline,
            "the submitted counter stopped at {} of {BURST} + 1",
            metric(addr, "baton_jobs_submitted_total").await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        metric(addr, "baton_jobs_submitted_total").await,
        BURST as u64 + 1
    );
    assert_eq!(metric(addr, "baton_events_total").await, BURST as u64 + 1);
}
