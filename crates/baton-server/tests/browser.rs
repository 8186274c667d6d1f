//! Auth for browsers: `?token=` on every endpoint, through a real server, a WebSocket
//! client and Chromium's own EventSource (driven over the DevTools protocol).

mod common;

use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use baton_api::{ControlAction, WsMessage, WsRequest};
use baton_server::{AuthConfig, Role, ServerOptions};
use common::chromium::Browser;
use common::{Harness, capture_log, harness_with, serve, token};
use futures::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;
use tower::ServiceExt;

fn auth_options() -> ServerOptions {
    ServerOptions {
        auth: AuthConfig {
            tokens: vec![
                token("viewer", Role::Viewer),
                token("operator", Role::Operator),
                token("admin", Role::Admin),
            ],
            jwt_secret: None,
        },
        ..ServerOptions::default()
    }
}

/// The status and content type of a request; the body is not read (streams never end).
async fn head(h: &Harness, method: Method, uri: &str, body: Option<&str>) -> (StatusCode, String) {
    let mut req = Request::builder().method(method).uri(uri);
    if body.is_some() {
        req = req.header("content-type", "application/json");
    }
    let req = req
        .body(body.map_or_else(Body::empty, |b| Body::from(b.to_owned())))
        .unwrap();
    let response = h.app.clone().oneshot(req).await.unwrap();
    let kind = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    (response.status(), kind)
}

#[tokio::test]
async fn a_query_token_is_taken_by_every_endpoint_and_checked_like_a_header() {
    let h = harness_with(auth_options()).await;
    let submit = r#"{"kind": "echo", "id": "q1"}"#;
    // Endpoints whose query is parsed strictly take the token beside their own fields.
    let cases: [(Method, &str, Option<&str>, StatusCode); 12] = [
        (
            Method::GET,
            "/api/jobs?token=viewer-token",
            None,
            StatusCode::OK,
        ),
        (
            Method::GET,
            "/api/jobs?state=queued&token=viewer-token&limit=5",
            None,
            StatusCode::OK,
        ),
        (
            Method::GET,
            "/api/events?token=viewer-token",
            None,
            StatusCode::OK,
        ),
        (
            Method::GET,
            "/api/events?after=0&token=viewer-token&types=job.completed",
            None,
            StatusCode::OK,
        ),
        (
            Method::GET,
            "/api/stats?token=viewer-token",
            None,
            StatusCode::OK,
        ),
        (
            Method::GET,
            "/metrics?token=viewer-token",
            None,
            StatusCode::OK,
        ),
        (
            Method::POST,
            "/api/jobs?token=viewer-token",
            Some(submit),
            StatusCode::FORBIDDEN,
        ),
        (
            Method::POST,
            "/api/jobs?token=operator-token",
            Some(submit),
            StatusCode::CREATED,
        ),
        (
            Method::GET,
            "/api/jobs/q1/wait?timeout=10s&token=viewer-token",
            None,
            StatusCode::OK,
        ),
        (
            Method::GET,
            "/api/jobs?token=stale-token",
            None,
            StatusCode::UNAUTHORIZED,
        ),
        (
            Method::GET,
            "/api/events?token=",
            None,
            StatusCode::UNAUTHORIZED,
        ),
        (
            Method::DELETE,
            "/api/jobs/q1?token=operator-token",
            None,
            StatusCode::FORBIDDEN,
        ),
    ];
    for (method, uri, body, want) in cases {
        let (status, kind) = head(&h, method.clone(), uri, body).await;
        assert_eq!(status, want, "{method} {uri}");
        if uri.starts_with("/api/events") && want == StatusCode::OK {
            assert_eq!(kind, "text/event-stream", "{uri}");
        }
    }
    // The query still means what it says once the token is gone.
    let (status, text) = h
        .raw(
            Method::GET,
            "/api/jobs?token=viewer-token&state=sleeping",
            None,
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{text}");
    assert!(text.contains("sleeping"), "{text}");
    let (status, text) = h
        .raw(
            Method::GET,
            "/api/jobs?token=viewer-token&colour=red",
            None,
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{text}");
    assert!(text.contains("unknown field `colour`"), "{text}");
    // Without auth a token is taken (and ignored) as well.
    let open = harness_with(ServerOptions::default()).await;
    let (status, _) = head(&open, Method::GET, "/api/jobs?token=anything", None).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test(flavor = "current_thread")]
async fn a_query_token_never_reaches_the_log() {
    let (log, _guard) = capture_log();
    let h = harness_with(auth_options()).await;
    for uri in [
        "/api/jobs?state=queued&token=viewer-token",
        "/api/jobs?token=stale-token",
        "/api/nowhere?token=viewer-token",
    ] {
        h.raw(Method::GET, uri, None, &[]).await;
    }
    h.raw(
        Method::POST,
        "/api/jobs?token=viewer-token",
        Some(r#"{"kind": "echo"}"#.into()),
        &[],
    )
    .await;
    let text = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
    assert!(text.contains("request"), "requests are logged: {text}");
    assert!(text.contains("/api/jobs"), "{text}");
    for secret in ["viewer-token", "stale-token", "token="] {
        assert!(!text.contains(secret), "{secret} is in the log:\n{text}");
    }
}

async fn recv(
    ws: &mut (
             impl futures::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin
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

async fn reply(
    ws: &mut (
             impl futures::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin
         ),
) -> WsMessage {
    loop {
        if let m @ WsMessage::Reply { .. } = recv(ws).await {
            return m;
        }
    }
}

#[tokio::test]
async fn a_websocket_authenticates_with_a_query_token() {
    let h = harness_with(auth_options()).await;
    let addr = serve(&h, auth_options()).await;
    let url = |token: &str| format!("ws://{addr}/api/ws?token={token}");
    let send = |r: WsRequest| Message::Text(serde_json::to_string(&r).unwrap().into());

    // No token, a stale one: the handshake is refused with 401.
    for url in [format!("ws://{addr}/api/ws"), url("stale-token")] {
        match tokio_tungstenite::connect_async(&url).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(r)) => {
                assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{url}")
            }
            Err(e) => panic!("{url}: {e}"),
            Ok(_) => panic!("{url} was accepted"),
        }
    }

    let job = h
        .engine
        .submit(baton_core::JobSpec::new("looper"))
        .await
        .unwrap()
        .job;
    h.wait_state(&job.id, "running").await;
    let pause = |id: &str| WsRequest::Control {
        id: Some(id.into()),
        action: ControlAction::Pause,
        job: job.id.clone(),
        force: false,
        from_checkpoint: false,
    };

    // A viewer follows the job, and may not control it.
    let (mut viewer, _) = tokio_tungstenite::connect_async(url("viewer-token"))
        .await
        .unwrap();
    viewer
        .send(send(WsRequest::Subscribe {
            job: Some(job.id.clone()),
            after: Some(0),
        }))
        .await
        .unwrap();
    assert_eq!(
        recv(&mut viewer).await,
        WsMessage::Subscribed {
            job: Some(job.id.clone())
        }
    );
    match recv(&mut viewer).await {
        WsMessage::Event { event } => assert_eq!(event.job_id.as_deref(), Some(job.id.as_str())),
        other => panic!("{other:?}"),
    }
    viewer.send(send(pause("v1"))).await.unwrap();
    match reply(&mut viewer).await {
        WsMessage::Reply {
            id: Some(id),
            ok: false,
            error: Some(e),
            ..
        } => {
            assert_eq!(id, "v1");
            assert_eq!(e.code, "forbidden", "{e:?}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        h.engine.get(&job.id).await.unwrap().state.as_str(),
        "running"
    );

    // An operator may.
    let (mut operator, _) = tokio_tungstenite::connect_async(url("operator-token"))
        .await
        .unwrap();
    operator.send(send(pause("o1"))).await.unwrap();
    match reply(&mut operator).await {
        WsMessage::Reply {
            ok: true,
            job: Some(j),
            ..
        } => assert_eq!(j.state, baton_api::State::Paused),
        other => panic!("{other:?}"),
    }
    h.engine.cancel(&job.id).await.unwrap();
}

/// What the page runs: follows every event with an EventSource authenticated by
/// `?token=`, submits a job through the API, waits for the job's completion on the
/// stream, then tries a stale token and a viewer's submit.
const SCRIPT: &str = r#"
(async () => {
  const timeout = (ms, what) => new Promise((_, reject) =>
    setTimeout(() => reject(new Error('timed out: ' + what)), ms));
  const seen = [];
  const es = new EventSource('/api/events?after=0&token=viewer-token');
  const completed = new Promise(resolve => {
    for (const type of ['job.submitted', 'job.queued', 'job.started', 'job.completed']) {
      es.addEventListener(type, e => {
        const event = JSON.parse(e.data);
        if (event.job_id !== 'from-browser') return;
        seen.push(event.type);
        if (event.type === 'job.completed') resolve(event);
      });
    }
  });
  await Promise.race([
    new Promise((resolve, reject) => {
      es.onopen = resolve;
      es.onerror = () => reject(new Error('stream failed, readyState ' + es.readyState));
    }),
    timeout(20000, 'open the stream'),
  ]);
  const submit = body => fetch('/api/jobs?token=' + body.token, {
    method: 'POST',
    headers: {'content-type': 'application/json'},
    body: JSON.stringify(body.spec),
  });
  const created = await submit({token: 'operator-token',
    spec: {kind: 'echo', id: 'from-browser', payload: {from: 'chromium'}}});
  const done = await Promise.race([completed, timeout(20000, 'job.completed on the stream')]);
  es.close();
  const stale = await Promise.race([
    new Promise(resolve => {
      const bad = new EventSource('/api/events?token=stale-token');
      bad.onopen = () => { bad.close(); resolve('opened'); };
      bad.onerror = () => { const s = bad.readyState; bad.close(); resolve(s); };
    }),
    timeout(20000, 'a stale token refused'),
  ]);
  const staleStatus = (await fetch('/api/jobs?token=stale-token')).status;
  const viewer = await submit({token: 'viewer-token', spec: {kind: 'echo'}});
  return JSON.stringify({
    created: created.status,
    seen,
    completedId: done.id,
    stale,
    staleStatus,
    viewerSubmit: viewer.status,
  });
})()
"#;

#[tokio::test]
async fn chromium_streams_events_with_a_query_token() {
    let h = harness_with(auth_options()).await;
    let addr = serve(&h, auth_options()).await;
    let mut browser = Browser::start().await;
    // A page of the server's own origin (no auth on /healthz), so that the script's
    // relative URLs reach the server without CORS. The API's own answers forbid
    // scripts any connection (`default-src 'none'`); the page stands in for one of
    // the server's own that allows them, so the test lifts that policy.
    browser.bypass_csp().await;
    browser.open(&format!("http://{addr}/healthz")).await;
    let out = browser.evaluate(SCRIPT).await;
    browser.close().await;

    assert_eq!(out["created"], 201, "{out}");
    assert_eq!(
        out["seen"],
        json!(["job.submitted", "job.started", "job.completed"]),
        "{out}"
    );
    // EventSource gives up on a 401: readyState CLOSED (2).
    assert_eq!(out["stale"], 2, "{out}");
    assert_eq!(out["staleStatus"], 401, "{out}");
    assert_eq!(out["viewerSubmit"], 403, "{out}");
    let job = h.engine.get("from-browser").await.unwrap();
    assert_eq!(job.state.as_str(), "completed");
    assert_eq!(job.result, Some(json!({"from": "chromium"})));
}
