//! Back-pressure over real HTTP: when the store's write queue is full, `POST /api/jobs`
//! answers 503 with `Retry-After` and the code `overloaded`, and every job answered 201
//! is stored. The writer is slowed on purpose (the store's `faults` feature).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use baton_engine::Engine;
use baton_server::{AppState, ServerOptions};
use baton_store::sqlite::Faults;
use baton_store::{SqliteOptions, SqliteStore, Store};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const REQUESTS: usize = 400;
const QUEUE: usize = 16;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn submits_beyond_the_write_queue_answer_503_with_retry_after() {
    flood(None).await;
}

/// A batch is one write: refused whole with the same 503, or stored whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn batches_beyond_the_write_queue_answer_503_and_store_nothing() {
    flood(Some(5)).await;
}

/// `REQUESTS` submits at once against a slowed writer: single jobs, or batches of
/// `batch` jobs.
async fn flood(batch: Option<usize>) {
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
    let server = ServerOptions::default();
    let state = AppState::new(engine.clone(), &server)
        .await
        .unwrap_or_else(|e| panic!("state: {e}"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    tokio::spawn(async move {
        baton_server::serve(
            listener,
            state,
            &ServerOptions::default(),
            std::future::pending(),
        )
        .await
    });

    faults.slow_batches(Duration::from_millis(20));
    let requests: Vec<_> = (0..REQUESTS)
        .map(|i| {
            tokio::spawn(async move {
                let (ids, path, body) = match batch {
                    None => {
                        let id = format!("job-{i}");
                        let body = json!({"kind": "noop", "id": id}).to_string();
                        (vec![id], "/api/jobs", body)
                    }
                    Some(n) => {
                        let ids: Vec<String> = (0..n).map(|k| format!("job-{i}-{k}")).collect();
                        let jobs: Vec<Value> = ids
                            .iter()
                            .map(|id| json!({"kind": "noop", "id": id}))
                            .collect();
                        (ids, "/api/jobs/batch", json!({ "jobs": jobs }).to_string())
                    }
                };
                (ids, post(addr, path, &body).await)
            })
        })
        .collect();
    let mut accepted = HashSet::new();
    let mut overloaded = 0;
    for request in requests {
        let (ids, (status, headers, body)) = tokio::time::timeout(Duration::from_secs(60), request)
            .await
            .expect("every request is answered")
            .expect("join");
        match status {
            201 => accepted.extend(ids),
            503 => {
                assert!(
                    headers.contains(&("retry-after".into(), "1".into())),
                    "{headers:?}"
                );
                let body: Value = serde_json::from_str(&body).expect("a JSON error body");
                assert_eq!(body["error"]["code"], "overloaded", "{body}");
                let message = body["error"]["message"].as_str().unwrap_or_default();
                assert!(message.contains("retry shortly"), "{message}");
                overloaded += 1;
            }
            other => panic!("{ids:?}: unexpected status {other}: {body}"),
        }
    }
    faults.slow_batches(Duration::ZERO);
    assert!(overloaded > 0, "no request found the queue full");
    assert!(!accepted.is_empty(), "no request was accepted");
    let per_request = batch.unwrap_or(1);
    assert_eq!(accepted.len() / per_request + overloaded, REQUESTS);
    for id in &accepted {
        assert!(store.get(id).await.expect("get").is_some(), "{id} was lost");
    }
    let total: u64 = store
        .counts()
        .await
        .expect("counts")
        .rows
        .iter()
        .map(|r| r.2)
        .sum();
    assert_eq!(
        total as usize,
        accepted.len(),
        "a refused submit was stored"
    );
    engine.shutdown(Duration::from_secs(5)).await;
}

/// One HTTP/1.1 request on its own connection: the status, the headers (names in lower
/// case) and the body.
async fn post(
    addr: std::net::SocketAddr,
    path: &str,
    body: &str,
) -> (u16, Vec<(String, String)>, String) {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    tcp.write_all(request.as_bytes()).await.expect("send");
    let mut answer = String::new();
    tcp.read_to_string(&mut answer).await.expect("receive");
    let (head, body) = answer.split_once("\r\n\r\n").expect("a head and a body");
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    let headers = lines
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_ascii_lowercase(), v.to_owned()))
        .collect();
    (status, headers, body.to_owned())
}
