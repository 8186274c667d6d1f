//! Realtime: SSE with Last-Event-ID resume, and the WebSocket with a sequence number
//! and control commands.

mod common;

use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request};
use baton_api::{ControlAction, WsMessage, WsRequest};
use common::harness;
use futures::{SinkExt, StreamExt};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tower::ServiceExt;

/// Reads SSE frames from a response body: (id, type, data).
struct SseReader {
    body: Body,
    buf: String,
}

impl SseReader {
    async fn next(&mut self) -> (u64, String, Value) {
        let (id, kind, data) = self.next_frame().await;
        (id.unwrap_or_else(|| panic!("{kind} has an id")), kind, data)
    }

    /// The next frame with an event type or an id (keep-alive comments are skipped).
    async fn next_frame(&mut self) -> (Option<u64>, String, Value) {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let frame: String = self.buf.drain(..end + 2).collect();
                let (mut id, mut kind, mut data) = (None, String::new(), String::new());
                for line in frame.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        id = v.trim().parse().ok();
                    } else if let Some(v) = line.strip_prefix("event:") {
                        kind = v.trim().to_owned();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim_start());
                    }
                }
                // Keep-alive comments have neither.
                if id.is_some() || !kind.is_empty() {
                    return (id, kind, serde_json::from_str(&data).unwrap());
                }
                continue;
            }
            let frame = tokio::time::timeout(Duration::from_secs(10), self.body.frame())
                .await
                .expect("an SSE frame in time")
                .expect("the stream goes on")
                .unwrap();
            if let Ok(data) = frame.into_data() {
                self.buf.push_str(&String::from_utf8_lossy(&data));
            }
        }
    }
}

async fn open(h: &common::Harness, uri: &str, last: Option<u64>) -> SseReader {
    let mut req = Request::builder()
        .method(Method::GET)
        .uri(uri)
        .header("accept", "text/event-stream");
    if let Some(l) = last {
        req = req.header("last-event-id", l.to_string());
    }
    let response = h
        .app
        .clone()
        .oneshot(req.body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    SseReader {
        body: response.into_body(),
        buf: String::new(),
    }
}

#[tokio::test]
async fn sse_resumes_from_last_event_id_without_gaps_or_duplicates() {
    let h = harness().await;
    let mut first = open(&h, "/api/events", None).await;
    let (_, a) = h
        .call(
            Method::POST,
            "/api/jobs",
            Some(json!({"kind": "echo", "id": "a"})),
        )
        .await;
    assert_eq!(a["id"], "a");
    // Read until job a completed: submitted, started, completed (in whatever writes).
    let mut seen = Vec::new();
    loop {
        let (id, kind, data) = first.next().await;
        assert_eq!(data["id"], id, "the SSE id is the event's global id");
        assert_eq!(data["type"], kind);
        seen.push(id);
        if kind == "job.completed" {
            break;
        }
    }
    let last = *seen.last().unwrap();
    drop(first);

    // While disconnected, more happens.
    for id in ["b", "c"] {
        h.call(
            Method::POST,
            "/api/jobs",
            Some(json!({"kind": "echo", "id": id})),
        )
        .await;
        h.call(
            Method::GET,
            &format!("/api/jobs/{id}/wait?timeout=10s"),
            None,
        )
        .await;
    }
    let stored = h.engine.store().events_after(last, 1000).await.unwrap();
    let missed: Vec<u64> = stored.iter().map(|e| e.id).collect();
    assert!(missed.len() >= 6, "{missed:?}");

    let mut again = open(&h, "/api/events", Some(last)).await;
    let mut got = Vec::new();
    while got.len() < missed.len() {
        got.push(again.next().await.0);
    }
    assert_eq!(got, missed, "exactly the missed events, in order");
    // Then live ones.
    h.call(
        Method::POST,
        "/api/jobs",
        Some(json!({"kind": "echo", "id": "d"})),
    )
    .await;
    let (id, kind, data) = again.next().await;
    assert_eq!(id, missed.last().unwrap() + 1);
    assert_eq!(kind, "job.submitted");
    assert_eq!(data["job_id"], "d");
}

#[tokio::test]
async fn a_job_stream_starts_with_its_history_then_goes_live() {
    let h = harness().await;
    let (_, job) = h
        .call(Method::POST, "/api/jobs", Some(json!({"kind": "looper"})))
        .await;
    let id = job["id"].as_str().unwrap().to_owned();
    h.wait_state(&id, "running").await;
    let mut stream = open(&h, &format!("/api/jobs/{id}/events"), None).await;
    let (_, kind, data) = stream.next().await;
    assert_eq!(
        (kind.as_str(), data["seq"].as_u64()),
        ("job.submitted", Some(1))
    );
    let mut last_seq = 1;
    let mut progress = 0;
    while progress < 5 {
        let (_, kind, data) = stream.next().await;
        let seq = data["seq"].as_u64().unwrap();
        assert_eq!(seq, last_seq + 1, "per-job seq without gaps");
        last_seq = seq;
        assert_eq!(data["job_id"], id.as_str());
        if kind == "job.progress" {
            progress += 1;
        }
    }
    h.call(
        Method::POST,
        &format!("/api/jobs/{id}/stop?force=true"),
        None,
    )
    .await;
    loop {
        let (_, kind, _) = stream.next().await;
        if kind == "job.cancelled" {
            break;
        }
    }
}

#[tokio::test]
async fn websocket_subscribes_resumes_and_controls() {
    let h = harness().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let state = h.state.clone();
    tokio::spawn(async move {
        baton_server::serve(listener, state, &Default::default(), std::future::pending()).await
    });
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/api/ws"))
        .await
        .unwrap();
    let send = |r: WsRequest| Message::Text(serde_json::to_string(&r).unwrap().into());
    async fn recv(
        ws: &mut (
                 impl futures::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>>
                 + Unpin
             ),
    ) -> WsMessage {
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
                .await
                .expect("a message")
                .unwrap()
                .unwrap();
            if let Message::Text(t) = msg {
                return serde_json::from_str(&t).unwrap();
            }
        }
    }

    ws.send(send(WsRequest::Subscribe {
        job: None,
        after: None,
    }))
    .await
    .unwrap();
    assert_eq!(recv(&mut ws).await, WsMessage::Subscribed { job: None });
    let (_, job) = h
        .call(Method::POST, "/api/jobs", Some(json!({"kind": "looper"})))
        .await;
    let id = job["id"].as_str().unwrap().to_owned();
    let mut last;
    loop {
        if let WsMessage::Event { event } = recv(&mut ws).await {
            last = event.id;
            if event.kind == baton_api::EventKind::Progress {
                break;
            }
        }
    }
    // A control command gets its reply.
    ws.send(send(WsRequest::Control {
        id: Some("c1".into()),
        action: ControlAction::Pause,
        job: id.clone(),
        force: false,
        from_checkpoint: false,
    }))
    .await
    .unwrap();
    let reply = loop {
        if let m @ WsMessage::Reply { .. } = recv(&mut ws).await {
            break m;
        }
    };
    match reply {
        WsMessage::Reply {
            id: Some(rid),
            ok: true,
            job: Some(job),
            ..
        } => {
            assert_eq!(rid, "c1");
            assert_eq!(job.state, baton_api::State::Paused);
        }
        other => panic!("{other:?}"),
    }
    ws.send(send(WsRequest::Control {
        id: Some("c2".into()),
        action: ControlAction::Pause,
        job: id.clone(),
        force: false,
        from_checkpoint: false,
    }))
    .await
    .unwrap();
    let reply = loop {
        if let m @ WsMessage::Reply { .. } = recv(&mut ws).await {
            break m;
        }
    };
    match reply {
        WsMessage::Reply {
            ok: false,
            error: Some(e),
            ..
        } => assert_eq!(e.code, "illegal_transition"),
        other => panic!("{other:?}"),
    }
    drop(ws);

    // Things happen while no socket listens; a new one resumes from the last id seen.
    h.call(
        Method::POST,
        &format!("/api/jobs/{id}/stop?force=true"),
        None,
    )
    .await;
    let stored = h.engine.store().events_after(last, 1000).await.unwrap();
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/api/ws"))
        .await
        .unwrap();
    ws.send(send(WsRequest::Subscribe {
        job: Some(id.clone()),
        after: Some(last),
    }))
    .await
    .unwrap();
    assert_eq!(
        recv(&mut ws).await,
        WsMessage::Subscribed {
            job: Some(id.clone())
        }
    );
    let mut got = Vec::new();
    while got.len() < stored.len() {
        if let WsMessage::Event { event } = recv(&mut ws).await {
            got.push(event.id);
        }
    }
    assert_eq!(got, stored.iter().map(|e| e.id).collect::<Vec<_>>());
    ws.send(Message::Text("{\"op\": \"dance\"}".into()))
        .await
        .unwrap();
    match recv(&mut ws).await {
        WsMessage::Error { error } => {
            assert!(error.message.contains("invalid message"), "{error:?}")
        }
        other => panic!("{other:?}"),
    }
    // A repeated key is refused, not read as its last value: the job stays running.
    let twice = format!(
        r#"{{"op": "control", "id": "c9", "action": "pause", "job": "{id}", "job": "nope"}}"#
    );
    ws.send(Message::Text(twice.into())).await.unwrap();
    match recv(&mut ws).await {
        WsMessage::Error { error } => {
            assert_eq!(error.code, "bad_request");
            assert_eq!(
                error.message,
                r#"invalid message: duplicate key "job" at the top level"#
            );
        }
        other => panic!("{other:?}"),
    }
}

/// A stream that resumes before events retention removed says so first, with no id
/// (the client's resume point stays its own), then sends what is left; one that resumes
/// after them is told nothing. The WebSocket does the same with a `pruned` message.
#[tokio::test]
async fn a_stream_resuming_before_pruned_events_is_told_so_first() {
    let h = harness().await;
    finish_old_and_newest(&h).await;
    let store = h.engine.store();
    let upto = prune_a_month_on(&h).await;
    let kept = store.events_after(0, 100).await.unwrap();
    assert!(kept.iter().all(|e| e.job_id.as_deref() != Some("old")));

    let mut sse = open(&h, "/api/events", Some(0)).await;
    let (id, kind, data) = sse.next_frame().await;
    assert_eq!((id, kind.as_str()), (None, "events.pruned"));
    assert_eq!(data, json!({"after": 0, "pruned_upto": upto}));
    let mut got = Vec::new();
    while got.len() < kept.len() {
        got.push(sse.next().await.0);
    }
    assert_eq!(got, kept.iter().map(|e| e.id).collect::<Vec<_>>());

    let mut sse = open(&h, "/api/events", Some(upto)).await;
    h.call(
        Method::POST,
        "/api/jobs",
        Some(json!({"kind": "echo", "id": "later"})),
    )
    .await;
    let (id, kind, _) = sse.next_frame().await;
    assert!(
        id.is_some_and(|id| id > upto),
        "{kind} first: nothing to say"
    );

    // The WebSocket.
    let addr = common::serve(&h, baton_server::ServerOptions::default()).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/api/ws"))
        .await
        .unwrap();
    let subscribe = serde_json::to_string(&WsRequest::Subscribe {
        job: None,
        after: Some(0),
    })
    .unwrap();
    ws.send(Message::Text(subscribe.into())).await.unwrap();
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let Some(Ok(Message::Text(t))) = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a message in time")
        else {
            continue;
        };
        seen.push(serde_json::from_str::<WsMessage>(&t).unwrap());
    }
    assert!(
        seen.contains(&WsMessage::Pruned {
            after: 0,
            pruned_upto: upto
        }),
        "{seen:?}"
    );
}

/// A prune that lands while a resumed stream still reads stored events is told too:
/// the stream was opened before anything was pruned, and reads after the prune.
#[tokio::test]
async fn a_prune_during_a_streams_catch_up_is_told_before_what_is_left() {
    let h = harness().await;
    finish_old_and_newest(&h).await;
    let store = h.engine.store();
    assert_eq!(store.events_pruned_upto().await.unwrap(), 0);
    let mut sse = open(&h, "/api/events", Some(0)).await;
    let upto = prune_a_month_on(&h).await;
    let (id, kind, data) = sse.next_frame().await;
    assert_eq!((id, kind.as_str()), (None, "events.pruned"));
    assert_eq!(data, json!({"after": 0, "pruned_upto": upto}));
    let kept = store.events_after(0, 100).await.unwrap();
    let mut got = Vec::new();
    while got.len() < kept.len() {
        got.push(sse.next().await.0);
    }
    assert_eq!(got, kept.iter().map(|e| e.id).collect::<Vec<_>>());
}

/// Runs two echo jobs to their end: `old`, then `newest` (the newest job, never pruned).
async fn finish_old_and_newest(h: &common::Harness) {
    for id in ["old", "newest"] {
        h.call(
            Method::POST,
            "/api/jobs",
            Some(json!({"kind": "echo", "id": id})),
        )
        .await;
        h.finished(id).await;
    }
}

/// Prunes as a month from now with a day's retention: `old` goes. The newest event id
/// pruned.
async fn prune_a_month_on(h: &common::Harness) -> u64 {
    use baton_engine::Clock;
    let store = h.engine.store();
    let day = 86_400_000;
    let pruned = store
        .prune(baton_store::PruneRequest {
            now: baton_engine::SystemClock.now() + 30 * day,
            retention: Some(day),
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(pruned.jobs, 1, "old goes; newest stays as the newest job");
    let upto = store.events_pruned_upto().await.unwrap();
    assert!(upto > 0);
    upto
}
