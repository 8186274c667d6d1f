//! SSE over real HTTP/1.1 connections, read chunk by chunk as the server wrote them:
//! frames that are ready together leave in one chunk and still read as separate
//! events, with their ids, in order; an idle stream gets comment lines; a stream holds
//! its place under `max_streams` until it closes; open streams end when the server
//! shuts down.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use baton_core::JobSpec;
use baton_server::ServerOptions;
use common::{harness_with, serve};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// An SSE client over HTTP/1.1 that reads the chunked body one chunk at a time.
struct Client {
    tcp: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    /// Opens `path` and reads the answer's head; `recv_buffer` makes the socket's
    /// receive buffer small, so that the server soon cannot write more.
    async fn open(addr: SocketAddr, path: &str, recv_buffer: Option<u32>) -> (Client, u16) {
        let socket = TcpSocket::new_v4().unwrap();
        if let Some(size) = recv_buffer {
            socket.set_recv_buffer_size(size).unwrap();
        }
        let mut tcp = socket.connect(addr).await.unwrap();
        let head =
            format!("GET {path} HTTP/1.1\r\nhost: localhost\r\naccept: text/event-stream\r\n\r\n");
        tcp.write_all(head.as_bytes()).await.unwrap();
        let mut client = Client {
            tcp,
            buf: Vec::new(),
        };
        let head = client.until(b"\r\n\r\n").await.expect("an answer's head");
        let head = String::from_utf8(head).unwrap();
        let status = head[9..12].parse().unwrap();
        if status == 200 {
            assert!(
                head.to_ascii_lowercase()
                    .contains("transfer-encoding: chunked"),
                "{head}"
            );
        }
        (client, status)
    }

    /// The bytes up to and including `end`, or `None` when the connection closes first.
    async fn until(&mut self, end: &[u8]) -> Option<Vec<u8>> {
        loop {
            if let Some(at) = self.buf.windows(end.len()).position(|w| w == end) {
                return Some(self.buf.drain(..at + end.len()).collect());
            }
            let mut more = [0u8; 16 * 1024];
            let n = tokio::time::timeout(Duration::from_secs(10), self.tcp.read(&mut more))
                .await
                .expect("the server went silent for 10 s")
                .unwrap_or(0);
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&more[..n]);
        }
    }

    /// The next chunk of the body as the server wrote it, or `None` at its end.
    async fn chunk(&mut self) -> Option<Vec<u8>> {
        let size = self.until(b"\r\n").await?;
        let size = std::str::from_utf8(&size[..size.len() - 2]).unwrap();
        let size = usize::from_str_radix(size.trim(), 16).unwrap();
        if size == 0 {
            return None;
        }
        while self.buf.len() < size + 2 {
            let mut more = [0u8; 16 * 1024];
            let n = tokio::time::timeout(Duration::from_secs(10), self.tcp.read(&mut more))
                .await
                .expect("the server went silent for 10 s mid-chunk")
                .unwrap();
            assert!(n > 0, "the connection closed mid-chunk");
            self.buf.extend_from_slice(&more[..n]);
        }
        let chunk: Vec<u8> = self.buf.drain(..size).collect();
        assert_eq!(self.buf.drain(..2).collect::<Vec<u8>>(), b"\r\n");
        Some(chunk)
    }
}

/// The SSE frames of one chunk: (id, type, data) for events, `None` for a comment.
/// A chunk holds whole frames only.
fn frames(chunk: &[u8]) -> Vec<Option<(u64, String, Value)>> {
    let text = std::str::from_utf8(chunk).unwrap();
    assert!(
        text.ends_with("\n\n"),
        "a chunk ends with a whole frame: {text:?}"
    );
    let mut out = Vec::new();
    for frame in text[..text.len() - 2].split("\n\n") {
        if frame.starts_with(':') {
            out.push(None);
            continue;
        }
        let lines: Vec<&str> = frame.lines().collect();
        let [id, kind, data] = lines[..] else {
            panic!("a frame of an id, a type and one data line: {frame:?}");
        };
        let id: u64 = id.strip_prefix("id: ").unwrap().parse().unwrap();
        let kind = kind.strip_prefix("event: ").unwrap().to_owned();
        let data: Value = serde_json::from_str(data.strip_prefix("data: ").unwrap()).unwrap();
        out.push(Some((id, kind, data)));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_ready_together_leave_in_one_chunk_and_read_as_events_in_order() {
    let options = ServerOptions::default();
    let h = harness_with(options.clone()).await;
    let addr = serve(&h, options).await;
    let store = h.engine.store().clone();
    let start = store.last_event_id().await.unwrap();
    // A client that reads nothing while the burst goes out: the server can write little
    // to it, and the frames wait in the server until it reads.
    let (mut client, status) =
        Client::open(addr, &format!("/api/events?after={start}"), Some(4096)).await;
    assert_eq!(status, 200);
    for _ in 0..4 {
        let specs = (0..500)
            .map(|i| {
                JobSpec::new("echo")
                    .payload(serde_json::json!({"n": i}))
                    .delay(Duration::from_secs(3600))
            })
            .collect();
        h.engine.submit_many(specs).await.unwrap();
    }
    let end = store.last_event_id().await.unwrap();
    let logged = store.events_after(start, 10_000).await.unwrap();
    assert!(logged.len() >= 2000, "{} events logged", logged.len());
    assert_eq!(logged.last().unwrap().id, end);

    let mut seen = Vec::new();
    let mut most = 0;
    while seen.last().is_none_or(|(id, _)| *id < end) {
        let chunk = client.chunk().await.expect("the stream goes on");
        let frames = frames(&chunk);
        most = most.max(frames.len());
        for (id, kind, data) in frames.into_iter().flatten() {
            assert_eq!(data["id"], id, "the frame's id is its event's");
            assert_eq!(
                data["type"],
                kind.as_str(),
                "the frame's type is its event's"
            );
            // Anything the engine logs after the burst is not compared.
            if id <= end {
                seen.push((id, kind));
            }
        }
    }
    let expected: Vec<(u64, String)> = logged
        .iter()
        .map(|e| (e.id, e.kind.as_str().to_owned()))
        .collect();
    assert_eq!(seen.len(), expected.len(), "every event once");
    assert!(seen == expected, "the log's events, in order");
    assert!(
        most > 1,
        "frames that waited together went out in one chunk"
    );
}

#[tokio::test]
async fn an_idle_stream_gets_comment_lines_and_then_its_events() {
    let options = ServerOptions {
        sse_keep_alive: Duration::from_millis(300),
        ..ServerOptions::default()
    };
    let h = harness_with(options.clone()).await;
    let addr = serve(&h, options).await;
    let (mut client, status) = Client::open(addr, "/api/events", None).await;
    assert_eq!(status, 200);
    // Nothing happens: a comment comes (after 150 to 300 ms), alone in its chunk.
    let t0 = std::time::Instant::now();
    loop {
        let chunk = client.chunk().await.expect("the stream goes on");
        if chunk == b":\n\n" {
            break;
        }
        assert!(frames(&chunk).iter().all(Option::is_some), "{chunk:?}");
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "no comment line in 5 s"
        );
    }
    let job = h.engine.submit(JobSpec::new("echo")).await.unwrap().job;
    let id = loop {
        let chunk = client.chunk().await.expect("the stream goes on");
        let event = frames(&chunk).into_iter().flatten().next();
        if let Some((id, kind, data)) = event {
            assert_eq!(kind, "job.submitted");
            assert_eq!(data["job_id"], job.id.as_str());
            break id;
        }
    };
    assert!(id > 0);
}

#[tokio::test]
async fn an_sse_stream_holds_its_place_until_it_closes() {
    let options = ServerOptions {
        max_streams: 1,
        ..ServerOptions::default()
    };
    let h = harness_with(options.clone()).await;
    let addr = serve(&h, options).await;
    let (first, status) = Client::open(addr, "/api/events", None).await;
    assert_eq!(status, 200);
    let (_, status) = Client::open(addr, "/api/events", None).await;
    assert_eq!(status, 503, "the one place is taken");
    drop(first);
    let t0 = std::time::Instant::now();
    loop {
        let (_second, status) = Client::open(addr, "/api/events", None).await;
        if status == 200 {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the closed stream kept its place"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn open_streams_end_when_the_server_shuts_down() {
    let options = ServerOptions::default();
    let h = harness_with(options.clone()).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let state = h.state.clone();
    let server = tokio::spawn(async move {
        baton_server::serve(listener, state, &options, async move {
            let _ = stopped.await;
        })
        .await
    });
    let (mut client, status) = Client::open(addr, "/api/events", None).await;
    assert_eq!(status, 200);
    h.engine.submit(JobSpec::new("echo")).await.unwrap();
    let chunk = client.chunk().await.expect("the stream goes on");
    assert!(!frames(&chunk).is_empty());
    stop.send(()).unwrap();
    loop {
        // Whatever was published before is sent; then the body ends.
        if client.chunk().await.is_none() {
            break;
        }
    }
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("the server returns once its streams ended")
        .unwrap()
        .unwrap();
}
