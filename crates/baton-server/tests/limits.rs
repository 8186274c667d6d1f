//! Back-pressure at the door, over real HTTP: the bound on requests in progress and the
//! separate bound on open streams each answer 503 with `Retry-After` once reached,
//! without one starving the other; probes answer under load. The control socket bounds
//! the size of a message.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use baton_server::ServerOptions;
use common::{harness_with, serve};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends `head` (and `body`) and reads up to the end of the response head.
async fn open(addr: SocketAddr, head: &str, body: &[u8]) -> (TcpStream, u16, String) {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(head.as_bytes()).await.unwrap();
    tcp.write_all(body).await.unwrap();
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    while !got.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut byte))
            .await
            .expect("a response head within 10 s")
            .unwrap();
        assert!(
            n > 0,
            "closed before the head: {}",
            String::from_utf8_lossy(&got)
        );
        got.push(byte[0]);
    }
    let head = String::from_utf8(got).unwrap().to_ascii_lowercase();
    let status = head[9..12].parse().unwrap();
    (tcp, status, head)
}

/// A whole request: status, head (lowercase) and body.
async fn call(addr: SocketAddr, method: &str, path: &str) -> (u16, String, String) {
    let head = format!("{method} {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n");
    let (mut tcp, status, head) = open(addr, &head, b"").await;
    let mut body = String::new();
    tokio::time::timeout(Duration::from_secs(10), tcp.read_to_string(&mut body))
        .await
        .expect("the body within 10 s")
        .unwrap();
    (status, head, body)
}

fn assert_overloaded(status: u16, head: &str, body: &str, limit: &str) {
    assert_eq!(status, 503, "{head}{body}");
    assert!(head.contains("retry-after: 1\r\n"), "{head}");
    let body: Value = serde_json::from_str(body).unwrap();
    assert_eq!(body["error"]["code"], "overloaded", "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains(limit), "{message} does not name {limit}");
}

#[tokio::test]
async fn past_the_request_limit_requests_are_answered_503_with_retry_after() {
    let options = ServerOptions {
        max_requests: 2,
        max_streams: 2,
        ..ServerOptions::default()
    };
    let h = harness_with(options.clone()).await;
    let addr = serve(&h, options).await;

    // Two submits whose bodies arrive slowly are in progress: the limit is reached.
    let body = br#"{"kind": "echo", "payload": "slow"}"#;
    let head = format!(
        "POST /api/jobs HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    let mut slow = Vec::new();
    for _ in 0..2 {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(head.as_bytes()).await.unwrap();
        tcp.write_all(&body[..5]).await.unwrap();
        slow.push(tcp);
    }
    // The handlers are waiting for the bodies; give the server the moment to get there.
    let t0 = std::time::Instant::now();
    let (status, head, text) = loop {
        let answer = call(addr, "GET", "/api/stats").await;
        if answer.0 == 503 || t0.elapsed() > Duration::from_secs(10) {
            break answer;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_overloaded(status, &head, &text, "max_requests");
    let (status, _, text) = call(addr, "POST", "/api/jobs").await;
    assert_eq!(status, 503, "{text}");
    // Probes answer anyway, and so do streams, which have their own limit.
    assert_eq!(call(addr, "GET", "/healthz").await.0, 200);
    assert_eq!(call(addr, "GET", "/readyz").await.0, 200);
    let (_sse, status, _) = open(
        addr,
        "GET /api/events HTTP/1.1\r\nhost: localhost\r\naccept: text/event-stream\r\n\r\n",
        b"",
    )
    .await;
    assert_eq!(status, 200);

    // Once the bodies arrive, the submits succeed and the server takes requests again.
    for mut tcp in slow {
        tcp.write_all(&body[5..]).await.unwrap();
        let mut answer = String::new();
        tcp.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 201"), "{answer}");
    }
    let (status, _, text) = call(addr, "GET", "/api/stats").await;
    assert_eq!(status, 200, "{text}");
    let (_, metrics) = h.call(axum::http::Method::GET, "/metrics", None).await;
    let metrics = metrics.as_str().unwrap().to_owned();
    assert!(
        metrics.contains("baton_http_requests_total{status=\"503\"} 2"),
        "503s are counted: {metrics}"
    );
}

#[tokio::test]
async fn past_the_stream_limit_streams_are_answered_503_and_requests_go_on() {
    let options = ServerOptions {
        max_requests: 1,
        max_streams: 3,
        ..ServerOptions::default()
    };
    let h = harness_with(options.clone()).await;
    let addr = serve(&h, options).await;
    let job = h
        .engine
        .submit(baton_core::JobSpec::new("looper"))
        .await
        .unwrap()
        .job;
    h.wait_state(&job.id, "running").await;
    // A long-poll that answers at once when it is let in: a probe of the stream limit.
    let probe = format!("/api/jobs/{}/wait?timeout=10ms", job.id);

    // An SSE stream, a WebSocket and a long-poll hold the three stream permits.
    let (_sse, status, _) = open(
        addr,
        "GET /api/events HTTP/1.1\r\nhost: localhost\r\n\r\n",
        b"",
    )
    .await;
    assert_eq!(status, 200);
    let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/api/ws"))
        .await
        .unwrap();
    let poll = format!(
        "GET /api/jobs/{}/wait?timeout=2s HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n",
        job.id
    );
    let mut poll_tcp = TcpStream::connect(addr).await.unwrap();
    poll_tcp.write_all(poll.as_bytes()).await.unwrap();
    let t0 = std::time::Instant::now();
    let (status, head, text) = loop {
        let answer = call(addr, "GET", &probe).await;
        if answer.0 == 503 || t0.elapsed() > Duration::from_secs(10) {
            break answer;
        }
    };
    assert_overloaded(status, &head, &text, "max_streams");
    let (_, status, _) = open(
        addr,
        "GET /api/events HTTP/1.1\r\nhost: localhost\r\n\r\n",
        b"",
    )
    .await;
    assert_eq!(status, 503, "an SSE stream past the limit");
    match tokio_tungstenite::connect_async(format!("ws://{addr}/api/ws")).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 503),
        other => panic!("a WebSocket past the limit: {:?}", other.map(|_| ())),
    }
    // Streams, however long they last, do not hold requests out: with a request
    // limit of one, requests one after the other are all answered.
    for _ in 0..10 {
        let (status, _, text) = call(addr, "GET", "/api/jobs").await;
        assert_eq!(status, 200, "{text}");
    }

    // When the long-poll answers (its timeout) and the WebSocket closes, their permits
    // are free again.
    let mut answer = String::new();
    tokio::time::timeout(
        Duration::from_secs(10),
        poll_tcp.read_to_string(&mut answer),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let (status, _, text) = call(addr, "GET", &probe).await;
    assert_eq!(status, 200, "{text}");
    drop(ws);
    let t0 = std::time::Instant::now();
    let mut streams = Vec::new();
    while streams.len() < 2 {
        let (tcp, status, _) = open(
            addr,
            "GET /api/events HTTP/1.1\r\nhost: localhost\r\n\r\n",
            b"",
        )
        .await;
        if status == 200 {
            streams.push(tcp);
        } else {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "the WebSocket's permit was kept"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    h.engine.cancel(&job.id).await.unwrap();
}

#[tokio::test]
async fn a_body_that_does_not_arrive_in_time_is_answered_408_and_frees_its_place() {
    let options = ServerOptions {
        max_requests: 1,
        body_timeout: Duration::from_millis(500),
        ..ServerOptions::default()
    };
    let h = harness_with(options.clone()).await;
    let addr = serve(&h, options).await;
    let head = "POST /api/jobs HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ncontent-length: 100\r\nconnection: close\r\n\r\n";
    let t0 = std::time::Instant::now();
    let mut slow = TcpStream::connect(addr).await.unwrap();
    slow.write_all(head.as_bytes()).await.unwrap();
    slow.write_all(b"{\"kind\": ").await.unwrap();
    // The one place is taken while the body trickles in...
    let (status, _, text) = loop {
        let answer = call(addr, "GET", "/api/stats").await;
        if answer.0 == 503 || t0.elapsed() > Duration::from_secs(10) {
            break answer;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(status, 503, "{text}");
    // ...until the body timeout answers it.
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(10), slow.read_to_string(&mut answer))
        .await
        .unwrap()
        .unwrap();
    assert!(t0.elapsed() >= Duration::from_millis(500));
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("\"request_timeout\""), "{answer}");
    assert!(
        answer.contains("did not arrive within 500ms (body_timeout)"),
        "{answer}"
    );
    let (status, _, text) = call(addr, "GET", "/api/stats").await;
    assert_eq!(status, 200, "{text}");
    let (_, jobs) = h.call(axum::http::Method::GET, "/api/jobs", None).await;
    assert_eq!(jobs["jobs"], serde_json::json!([]));
}

#[tokio::test]
async fn the_control_socket_refuses_a_large_message_and_closes_on_a_huge_one() {
    use futures::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    let h = harness_with(ServerOptions::default()).await;
    let addr = serve(&h, ServerOptions::default()).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/api/ws"))
        .await
        .unwrap();

    // Over 64 KiB: an error that says so; the socket still takes commands.
    let big = format!(
        r#"{{"op": "subscribe", "job": "{}"}}"#,
        "j".repeat(100 * 1024)
    );
    ws.send(Message::Text(big.into())).await.unwrap();
    let answer = recv(&mut ws).await.expect("an answer");
    assert_eq!(answer["error"]["code"], "too_large", "{answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("is more than the 65536 bytes this socket takes"),
        "{answer}"
    );
    ws.send(Message::Text(r#"{"op": "subscribe"}"#.into()))
        .await
        .unwrap();
    assert_eq!(
        recv(&mut ws).await.expect("an answer")["type"],
        "subscribed"
    );

    // Far over it (here 8 MiB): the connection is closed before the message is held.
    let huge = "x".repeat(8 << 20);
    let _ = ws.send(Message::Text(huge.into())).await;
    assert!(recv(&mut ws).await.is_none(), "the socket is still open");
    let (status, _, _) = call(addr, "GET", "/readyz").await;
    assert_eq!(status, 200);
}

/// The next JSON message of a socket, or `None` once it is closed.
async fn recv(
    ws: &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
) -> Option<Value> {
    use futures::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("an answer within 10 s");
        match msg {
            Some(Ok(Message::Text(t))) => return Some(serde_json::from_str(&t).unwrap()),
            Some(Ok(Message::Close(_)) | Err(_)) | None => return None,
            Some(Ok(_)) => continue,
        }
    }
}
