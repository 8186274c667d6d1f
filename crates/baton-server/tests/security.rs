//! The attacks a web page or a guesser can make on a local server, made for real: DNS
//! rebinding (a forged `Host`), cross-site requests and WebSocket hijacking (a foreign
//! `Origin`, also from a page in Chromium), forged JWTs and token guessing.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Method, Request, StatusCode};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use baton_api::{ControlAction, WsMessage, WsRequest};
use baton_server::{AuthConfig, Role, ServerOptions, TokenEntry, hash_token, sign_jwt};
use common::chromium::Browser;
use common::{Harness, capture_log, harness_with, http, serve};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tower::ServiceExt;

/// A job whose only effect is to create `file`.
fn touch_job(file: &Path) -> String {
    json!({"kind": "command", "command": ["sh", "-c", format!("touch '{}'", file.display())]})
        .to_string()
}

async fn job_count(h: &Harness) -> usize {
    let (status, list) = h.call(Method::GET, "/api/jobs", None).await;
    assert_eq!(status, StatusCode::OK);
    list["jobs"].as_array().unwrap().len()
}

async fn appears(file: &Path) -> bool {
    for _ in 0..200 {
        if file.exists() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test]
async fn a_forged_host_is_refused_and_runs_nothing() {
    let h = harness_with(ServerOptions::default()).await;
    let addr = serve(&h, ServerOptions::default()).await;
    let port = addr.port();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pwned");
    let job = touch_job(&file);

    // A page on attacker.example, rebound to 127.0.0.1, sends its own name as Host.
    for host in [
        format!("attacker.example:{port}"),
        "attacker.example".to_owned(),
        format!("127.0.0.1.nip.io:{port}"),
        format!("localhost.attacker.example:{port}"),
        format!("192.0.2.1:{port}"),
    ] {
        let (status, answer) = http(
            addr,
            &format!("POST /api/jobs HTTP/1.1\nHost: {host}\nContent-Type: application/json"),
            &job,
        )
        .await;
        assert_eq!(status, 403, "{host}: {answer}");
        assert!(answer.contains("allowed_hosts"), "{answer}");
        assert!(answer.contains(&format!("host \\\"{host}\\\"")), "{answer}");
        // Nor may it read.
        let (status, _) = http(addr, &format!("GET /api/jobs HTTP/1.1\nHost: {host}"), "").await;
        assert_eq!(status, 403, "{host}");
    }
    // Not from a browser, but the same request by other means: an absolute URI names
    // the server it is for whatever the Host header says, and two Host headers are one
    // too many.
    let (status, answer) = http(
        addr,
        &format!(
            "POST http://attacker.example:{port}/api/jobs HTTP/1.1\nHost: localhost:{port}\nContent-Type: application/json"
        ),
        &job,
    )
    .await;
    assert_eq!(status, 403, "{answer}");
    assert!(answer.contains("host \\\"attacker.example"), "{answer}");
    for hosts in [
        format!("Host: localhost:{port}\nHost: attacker.example"),
        format!("Host: attacker.example\nHost: localhost:{port}"),
    ] {
        let (status, answer) = http(
            addr,
            &format!("POST /api/jobs HTTP/1.1\n{hosts}\nContent-Type: application/json"),
            &job,
        )
        .await;
        assert_eq!(status, 400, "{answer}");
        assert!(answer.contains("more than one Host header"), "{answer}");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!file.exists(), "a refused job ran");
    assert_eq!(job_count(&h).await, 0, "a refused job was created");
    // An absolute URI to a loopback name is served like any request.
    let (status, answer) = http(
        addr,
        &format!("GET http://localhost:{port}/api/jobs HTTP/1.1\nHost: localhost:{port}"),
        "",
    )
    .await;
    assert_eq!(status, 200, "{answer}");

    // Probes answer whatever the name.
    let (status, _) = http(addr, "GET /healthz HTTP/1.1\nHost: lb.internal", "").await;
    assert_eq!(status, 200);
    // HTTP/1.0 without Host: not a browser, served.
    let (status, answer) = http(addr, "GET /api/jobs HTTP/1.0", "").await;
    assert_eq!(status, 200, "{answer}");

    // Loopback names and addresses are served: the same job runs.
    for host in [
        format!("127.0.0.1:{port}"),
        format!("[::1]:{port}"),
        "127.1.2.3".to_owned(),
    ] {
        let (status, _) = http(addr, &format!("GET /api/jobs HTTP/1.1\nHost: {host}"), "").await;
        assert_eq!(status, 200, "{host}");
    }
    let (status, answer) = http(
        addr,
        &format!("POST /api/jobs HTTP/1.1\nHost: localhost:{port}\nContent-Type: application/json"),
        &job,
    )
    .await;
    assert_eq!(status, 201, "{answer}");
    assert!(appears(&file).await, "the allowed job did not run");
}

#[tokio::test]
async fn allowed_hosts_lets_a_name_in() {
    let options = ServerOptions {
        allowed_hosts: vec!["baton.lan".into()],
        ..ServerOptions::default()
    };
    let h = harness_with(options.clone()).await;
    let addr = serve(&h, options).await;
    let (status, answer) = http(addr, "GET /api/jobs HTTP/1.1\nHost: Baton.LAN:7700", "").await;
    assert_eq!(status, 200, "{answer}");
    let (status, _) = http(addr, "GET /api/jobs HTTP/1.1\nHost: other.lan", "").await;
    assert_eq!(status, 403);
    let any = ServerOptions {
        allowed_hosts: vec!["*".into()],
        ..ServerOptions::default()
    };
    let h = harness_with(any.clone()).await;
    let addr = serve(&h, any).await;
    let (status, _) = http(addr, "GET /api/jobs HTTP/1.1\nHost: other.lan", "").await;
    assert_eq!(status, 200, "`*` turns the check off");
}

/// Opens `/api/ws` with these headers; the socket or the refusal's status and body.
async fn open_ws(
    addr: SocketAddr,
    headers: &[(&str, &str)],
) -> Result<
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    (u16, String),
> {
    let mut req = format!("ws://{addr}/api/ws").into_client_request().unwrap();
    for (k, v) in headers {
        req.headers_mut().insert(
            axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            axum::http::HeaderValue::from_str(v).unwrap(),
        );
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => Err((
            r.status().as_u16(),
            String::from_utf8_lossy(r.body().as_deref().unwrap_or_default()).into_owned(),
        )),
        Err(e) => panic!("{e}"),
    }
}

async fn running_looper(h: &Harness) -> String {
    let job = h
        .engine
        .submit(baton_core::JobSpec::new("looper"))
        .await
        .unwrap()
        .job;
    h.wait_state(&job.id, "running").await;
    job.id
}

fn cancel_message(job: &str) -> Message {
    let request = WsRequest::Control {
        id: Some("c1".into()),
        action: ControlAction::Cancel,
        job: job.into(),
        force: false,
        from_checkpoint: false,
    };
    Message::Text(serde_json::to_string(&request).unwrap().into())
}

async fn reply(
    ws: &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
) -> WsMessage {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a message")
            .unwrap()
            .unwrap();
        if let Message::Text(t) = msg
            && let m @ WsMessage::Reply { .. } = serde_json::from_str(&t).unwrap()
        {
            return m;
        }
    }
}

#[tokio::test]
async fn a_websocket_from_a_foreign_origin_is_refused() {
    let h = harness_with(ServerOptions::default()).await;
    let addr = serve(&h, ServerOptions::default()).await;
    let job = running_looper(&h).await;

    for origin in [
        "http://evil.example",
        "http://127.0.0.1:1",
        "http://localhost",
        "null",
    ] {
        let (status, body) = open_ws(addr, &[("origin", origin)]).await.err().unwrap();
        assert_eq!(status, 403, "{origin}");
        assert!(body.contains("cors_origins"), "{body}");
    }
    assert_eq!(h.engine.get(&job).await.unwrap().state.as_str(), "running");

    // A socket without Origin (not a browser) is served.
    let mut ws = open_ws(addr, &[]).await.unwrap();
    ws.close(None).await.unwrap();
    // From the server's own origin the socket works and controls the job.
    let own = format!("http://{addr}");
    let mut ws = open_ws(addr, &[("origin", &own)]).await.unwrap();
    ws.send(cancel_message(&job)).await.unwrap();
    match reply(&mut ws).await {
        WsMessage::Reply { ok: true, .. } => {}
        other => panic!("{other:?}"),
    }
    h.wait_state(&job, "cancelled").await;
}

#[tokio::test]
async fn a_state_change_from_a_foreign_origin_is_refused() {
    let h = harness_with(ServerOptions::default()).await;
    let addr = serve(&h, ServerOptions::default()).await;
    let port = addr.port();
    let job = running_looper(&h).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pwned");
    let host = format!("Host: 127.0.0.1:{port}");

    // What a page elsewhere can send without a preflight, and the rest.
    let (status, answer) = http(
        addr,
        &format!("POST /api/jobs HTTP/1.1\n{host}\nOrigin: http://evil.example\nContent-Type: application/json"),
        &touch_job(&file),
    )
    .await;
    assert_eq!(status, 403, "{answer}");
    assert!(answer.contains("cors_origins"), "{answer}");
    assert!(answer.contains("\\\"http://evil.example\\\""), "{answer}");
    for (method, path) in [
        ("POST", format!("/api/jobs/{job}/cancel")),
        ("PATCH", format!("/api/jobs/{job}/cancel")),
        ("POST", format!("/api/jobs/{job}/pause")),
        ("DELETE", format!("/api/jobs/{job}")),
        ("PUT", "/api/pipelines/p".to_owned()),
    ] {
        let (status, answer) = http(
            addr,
            &format!("{method} {path} HTTP/1.1\n{host}\nOrigin: http://evil.example"),
            "",
        )
        .await;
        assert_eq!(status, 403, "{method} {path}: {answer}");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!file.exists(), "a refused job ran");
    assert_eq!(job_count(&h).await, 1, "only the looper exists");
    assert_eq!(h.engine.get(&job).await.unwrap().state.as_str(), "running");

    // Reads are left to CORS: served, with no header that lets the page see them.
    let (status, answer) = http(
        addr,
        &format!("GET /api/jobs HTTP/1.1\n{host}\nOrigin: http://evil.example"),
        "",
    )
    .await;
    assert_eq!(status, 200);
    assert!(
        !answer
            .to_ascii_lowercase()
            .contains("access-control-allow-origin"),
        "{answer}"
    );
    // The server's own origin may.
    let (status, answer) = http(
        addr,
        &format!("POST /api/jobs/{job}/cancel HTTP/1.1\n{host}\nOrigin: http://127.0.0.1:{port}"),
        "",
    )
    .await;
    assert_eq!(status, 200, "{answer}");
}

#[tokio::test]
async fn a_configured_cors_origin_may_change_state() {
    let options = ServerOptions {
        cors_origins: vec!["http://app.example:8080".into()],
        ..ServerOptions::default()
    };
    let h = harness_with(options.clone()).await;
    let addr = serve(&h, options).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("made");
    let host = format!("Host: 127.0.0.1:{}", addr.port());

    // The preflight a browser sends first, then the request.
    let (status, answer) = http(
        addr,
        &format!("OPTIONS /api/jobs HTTP/1.1\n{host}\nOrigin: http://app.example:8080\nAccess-Control-Request-Method: POST\nAccess-Control-Request-Headers: content-type"),
        "",
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert!(
        answer
            .to_ascii_lowercase()
            .contains("access-control-allow-origin: http://app.example:8080"),
        "{answer}"
    );
    let (status, answer) = http(
        addr,
        &format!("POST /api/jobs HTTP/1.1\n{host}\nOrigin: http://app.example:8080\nContent-Type: application/json"),
        &touch_job(&file),
    )
    .await;
    assert_eq!(status, 201, "{answer}");
    assert!(
        answer
            .to_ascii_lowercase()
            .contains("access-control-allow-origin: http://app.example:8080"),
        "{answer}"
    );
    assert!(appears(&file).await, "the allowed job did not run");
    // Its WebSocket too; another origin still not.
    let mut ws = open_ws(addr, &[("origin", "http://app.example:8080")])
        .await
        .unwrap();
    ws.close(None).await.unwrap();
    let (status, _) = http(
        addr,
        &format!("POST /api/jobs HTTP/1.1\n{host}\nOrigin: http://app.example:8081\nContent-Type: application/json"),
        &touch_job(&file),
    )
    .await;
    assert_eq!(status, 403);
    assert_eq!(job_count(&h).await, 1);
}

/// The page another local site serves: it tries the WebSocket and a fetch against
/// Baton, as any site the user visits could.
fn evil_page(baton: SocketAddr, job: &str) -> String {
    let cancel = serde_json::to_string(&WsRequest::Control {
        id: Some("x".into()),
        action: ControlAction::Cancel,
        job: job.into(),
        force: false,
        from_checkpoint: false,
    })
    .unwrap();
    format!(
        r#"<!doctype html><html><body><script>
window.attack = async () => {{
  const ws = await new Promise(resolve => {{
    const ws = new WebSocket('ws://{baton}/api/ws');
    ws.onopen = () => {{ ws.send({cancel:?}); setTimeout(() => resolve('opened'), 500); }};
    ws.onerror = () => resolve('refused');
  }});
  // A "simple" request: no preflight, so without the check it would cancel the job.
  const cancel = await fetch('http://{baton}/api/jobs/{job}/cancel', {{method: 'POST', mode: 'no-cors'}})
    .then(r => r.type, e => 'error: ' + e);
  const submit = await fetch('http://{baton}/api/jobs', {{
    method: 'POST', mode: 'no-cors', headers: {{'content-type': 'text/plain'}},
    body: JSON.stringify({{kind: 'echo', id: 'from-evil'}}),
  }}).then(r => r.type, e => 'error: ' + e);
  // A CORS request: the page may not read what Baton says.
  const read = await fetch('http://{baton}/api/jobs').then(r => r.status, e => 'blocked');
  return JSON.stringify({{ws, cancel, submit, read, origin: location.origin}});
}};
</script></body></html>"#
    )
}

#[tokio::test]
async fn a_page_from_another_local_port_cannot_command_baton_in_chromium() {
    let h = harness_with(ServerOptions::default()).await;
    let baton = serve(&h, ServerOptions::default()).await;
    let job = running_looper(&h).await;

    // The other site: a page on another 127.0.0.1 port, with what it sees of Baton.
    let page = evil_page(baton, &job);
    let evil = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let evil_addr = evil.local_addr().unwrap();
    let app = axum::Router::new().route(
        "/",
        axum::routing::get(move || {
            let page = page.clone();
            async move { axum::response::Html(page) }
        }),
    );
    tokio::spawn(async move { axum::serve(evil, app).await });

    let mut browser = Browser::start().await;
    browser.open(&format!("http://{evil_addr}/")).await;
    let out = browser.evaluate("window.attack()").await;
    browser.close().await;

    assert_eq!(out["origin"], format!("http://{evil_addr}"), "{out}");
    assert_eq!(out["ws"], "refused", "{out}");
    // The fetches were sent (opaque answers), and refused by Baton.
    assert_eq!(out["cancel"], "opaque", "{out}");
    assert_eq!(out["submit"], "opaque", "{out}");
    assert_eq!(out["read"], "blocked", "{out}");
    assert_eq!(
        h.engine.get(&job).await.unwrap().state.as_str(),
        "running",
        "the page changed the job"
    );
    assert!(
        h.engine.get("from-evil").await.is_err(),
        "the page made a job"
    );
    h.engine.cancel(&job).await.unwrap();
}

const SECRET: &str = "a-secret-of-32-characters-or-so!";

fn jwt_options() -> ServerOptions {
    ServerOptions {
        auth: AuthConfig {
            tokens: vec![TokenEntry {
                name: "ci".into(),
                sha256: hash_token("ci-token"),
                role: Role::Operator,
                queues: None,
            }],
            jwt_secret: Some(SECRET.into()),
        },
        ..ServerOptions::default()
    }
}

fn b64(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(v.to_string())
}

#[tokio::test]
async fn forged_jwts_are_refused() {
    let h = harness_with(jwt_options()).await;
    let exp = chrono::Utc::now().timestamp() + 600;
    let good = sign_jwt(
        &json!({"sub": "me", "role": "viewer", "exp": exp}),
        SECRET.as_bytes(),
    );
    let (status, _) = h.call_as(Method::GET, "/api/jobs", &good).await;
    assert_eq!(status, StatusCode::OK, "the control token works");

    let admin = json!({"sub": "me", "role": "admin", "exp": exp});
    let (_, payload, signature) = {
        let mut parts = good.split('.');
        (
            parts.next().unwrap().to_owned(),
            parts.next().unwrap().to_owned(),
            parts.next().unwrap().to_owned(),
        )
    };
    // The same HMAC over another header: only the alg differs.
    let hmac_with = |header: &Value, claims: &Value| {
        let h = b64(header);
        let p = b64(claims);
        use hmac::{Hmac, KeyInit, Mac};
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
        mac.update(format!("{h}.{p}").as_bytes());
        format!(
            "{h}.{p}.{}",
            URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
        )
    };
    let mut flipped = signature.clone().into_bytes();
    let last = flipped.len() - 2;
    flipped[last] = if flipped[last] == b'A' { b'B' } else { b'A' };
    let forged = [
        (
            "alg none",
            format!(
                "{}.{}.",
                b64(&json!({"alg": "none", "typ": "JWT"})),
                b64(&admin)
            ),
        ),
        (
            "alg None, with a signature",
            format!(
                "{}.{}.{signature}",
                b64(&json!({"alg": "None"})),
                b64(&admin)
            ),
        ),
        (
            "alg HS512",
            hmac_with(&json!({"alg": "HS512", "typ": "JWT"}), &admin),
        ),
        ("alg hs256", hmac_with(&json!({"alg": "hs256"}), &admin)),
        ("no alg", hmac_with(&json!({"typ": "JWT"}), &admin)),
        (
            "a tampered signature",
            format!(
                "{}.{payload}.{}",
                good.split('.').next().unwrap(),
                String::from_utf8(flipped).unwrap()
            ),
        ),
        (
            "a payload raised to admin under the old signature",
            format!(
                "{}.{}.{signature}",
                good.split('.').next().unwrap(),
                b64(&admin)
            ),
        ),
        (
            "signed with another secret",
            sign_jwt(&admin, b"another-secret-of-32-characters"),
        ),
    ];
    for (what, token) in &forged {
        let (status, body) = h.call_as(Method::GET, "/api/jobs", token).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{what}: {body}");
        assert_eq!(body["error"]["message"], "invalid token", "{what}");
    }
    // The right HMAC under the right alg is accepted: the refusals above are the alg's.
    let (status, _) = h
        .call_as(
            Method::DELETE,
            "/api/jobs/none",
            &hmac_with(&json!({"alg": "HS256"}), &admin),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "an admin may delete");
}

async fn as_client(
    h: &Harness,
    ip: [u8; 4],
    uri: &str,
    token: &str,
) -> (StatusCode, Value, Option<String>) {
    let mut req = Request::builder()
        .uri(uri)
        .header("authorization", format!("Bearer {token}"))
        .body(Body::empty())
        .unwrap();
    req.extensions_mut()
        .insert(ConnectInfo(SocketAddr::from((ip, 40000))));
    let response = h.app.clone().oneshot(req).await.unwrap();
    let status = response.status();
    let retry = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    let bytes = http_body_util::BodyExt::collect(response.into_body())
        .await
        .unwrap()
        .to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        retry,
    )
}

#[tokio::test]
async fn repeated_bad_tokens_get_429() {
    let h = harness_with(jwt_options()).await;
    let guesser = [203, 0, 113, 7];
    // Requests without a token guess nothing and are not counted.
    for _ in 0..15 {
        let (status, _) = h.call(Method::GET, "/api/jobs", None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    for i in 0..10 {
        let (status, body, _) = as_client(&h, guesser, "/api/jobs", &format!("guess-{i}")).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "guess {i}: {body}");
    }
    // The eleventh is refused before its token is looked at, right or wrong, and in
    // the query too.
    for (uri, token) in [
        ("/api/jobs", "guess-10"),
        ("/api/jobs", "ci-token"),
        ("/api/stats?token=ci-token", ""),
    ] {
        let (status, body, retry) = as_client(&h, guesser, uri, token).await;
        assert_eq!(
            status,
            StatusCode::TOO_MANY_REQUESTS,
            "{uri} {token}: {body}"
        );
        assert_eq!(body["error"]["code"], "rate_limited");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("too many failed authentications"),
            "{body}"
        );
        let retry: u64 = retry.expect("Retry-After").parse().unwrap();
        assert!((1..=60).contains(&retry), "{retry}");
    }
    // Another client is not held back.
    let (status, _, _) = as_client(&h, [198, 51, 100, 1], "/api/jobs", "ci-token").await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test(flavor = "current_thread")]
async fn refused_requests_are_logged_without_their_tokens() {
    let (log, _guard) = capture_log();
    let h = harness_with(jwt_options()).await;
    let secret_jwt = sign_jwt(&json!({"role": "admin"}), SECRET.as_bytes());
    for (uri, headers) in [
        (
            "/api/jobs?token=ci-token",
            vec![("host", "attacker.example")],
        ),
        (
            "/api/jobs/x/cancel?token=ci-token",
            vec![("origin", "http://evil.example")],
        ),
        (
            "/api/jobs/x/cancel",
            vec![("authorization", "Bearer ci-token")],
        ),
        ("/api/jobs?token=wrong-token", vec![]),
    ] {
        h.raw(Method::POST, uri, None, &headers).await;
    }
    let auth = format!("Bearer {secret_jwt}");
    h.raw(Method::GET, "/api/ws", None, &[("authorization", &auth)])
        .await;
    let text = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
    assert!(text.contains("status=403"), "refusals are logged: {text}");
    assert!(text.contains("/api/jobs/x/cancel"), "{text}");
    for secret in [
        "ci-token",
        "wrong-token",
        "token=",
        secret_jwt.as_str(),
        "Bearer",
    ] {
        assert!(!text.contains(secret), "{secret} is in the log:\n{text}");
    }
}

#[tokio::test]
async fn every_answer_tells_the_browser_not_to_run_frame_or_sniff_it() {
    let h = harness_with(ServerOptions::default()).await;
    let addr = serve(&h, ServerOptions::default()).await;
    for request in [
        "GET /api/jobs HTTP/1.1\nHost: localhost",
        "GET /api/jobs/nope HTTP/1.1\nHost: localhost",
        "GET /api/jobs HTTP/1.1\nHost: attacker.example",
        "GET /healthz HTTP/1.1\nHost: localhost",
    ] {
        let (_, answer) = http(addr, request, "").await;
        let head = answer
            .split("\r\n\r\n")
            .next()
            .unwrap()
            .to_ascii_lowercase();
        for line in [
            "content-security-policy: default-src 'none'; frame-ancestors 'none'",
            "x-content-type-options: nosniff",
            "referrer-policy: no-referrer",
            "x-frame-options: deny",
        ] {
            assert!(head.contains(line), "{request}: no {line:?} in\n{head}");
        }
    }
}

/// One answer read from `tcp`: its head (lowercase) and body, by its Content-Length.
async fn read_answer(tcp: &mut tokio::net::TcpStream) -> (String, String) {
    use tokio::io::AsyncReadExt;
    let mut bytes = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&bytes[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .map_or(0, |n| n.trim().parse().unwrap());
            if bytes.len() >= end + 4 + length {
                let body = String::from_utf8_lossy(&bytes[end + 4..end + 4 + length]).into_owned();
                return (head, body);
            }
        }
        let n = tokio::time::timeout(Duration::from_secs(20), tcp.read(&mut buf))
            .await
            .expect("an answer within 20 s")
            .unwrap();
        assert!(n > 0, "the connection closed before a whole answer came");
        bytes.extend_from_slice(&buf[..n]);
    }
}

#[tokio::test]
async fn a_request_refused_before_its_body_came_tells_the_client_to_reconnect() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let h = harness_with(jwt_options()).await;
    let addr = serve(&h, jwt_options()).await;

    // A keep-alive client writes a submit's head first and its body after (as HTTP
    // libraries do); the server refuses it on the head alone, without the token.
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let body = r#"{"kind": "command", "command": ["true"]}"#;
    let head = format!(
        "POST /api/jobs HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    let (head, answer) = read_answer(&mut tcp).await;
    assert!(head.starts_with("http/1.1 401"), "{head}\n{answer}");
    // The connection cannot carry another request, and the answer says so: a client
    // that reused it would see its next request fail.
    assert!(head.contains("connection: close"), "{head}");
    let _ = tcp.write_all(body.as_bytes()).await;
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(20), tcp.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "the server kept the connection open");

    // A refused request without a body leaves the connection usable, and open.
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    for _ in 0..2 {
        tcp.write_all(b"GET /api/jobs HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await
            .unwrap();
        let (head, answer) = read_answer(&mut tcp).await;
        assert!(head.starts_with("http/1.1 401"), "{head}\n{answer}");
        assert!(!head.contains("connection: close"), "{head}");
    }
    // So does an accepted submit.
    let submit = format!(
        "POST /api/jobs HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer ci-token\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    tcp.write_all(submit.as_bytes()).await.unwrap();
    let (head, answer) = read_answer(&mut tcp).await;
    assert!(head.starts_with("http/1.1 201"), "{head}\n{answer}");
    assert!(!head.contains("connection: close"), "{head}");
}
