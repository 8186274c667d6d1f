#![allow(dead_code)]

pub mod chromium;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use baton_engine::{Engine, JobError};
use baton_server::{AppState, ServerOptions, router};
use baton_store::{SqliteOptions, SqliteStore};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tempfile::TempDir;
use tower::ServiceExt;

#[derive(Clone)]
pub struct Harness {
    pub app: Router,
    pub engine: Engine,
    pub state: AppState,
    _dir: Arc<TempDir>,
}

pub async fn harness() -> Harness {
    harness_with(ServerOptions::default()).await
}

pub async fn test_engine(dir: &TempDir) -> Engine {
    let store = SqliteStore::open(SqliteOptions::new(dir.path().join("baton.db"))).unwrap();
    Engine::builder()
        .store(Arc::new(store))
        .queue("other", 4)
        .handler("echo", |_ctx, payload| async move { Ok(payload) })
        .handler("fail", |_ctx, _p| async move {
            Err::<Value, _>(JobError::fatal("boom"))
        })
        .handler("looper", |ctx, p| async move {
            // Progress every `every_ms` (5 unless the payload says).
            let every = p["every_ms"].as_u64().unwrap_or(5);
            let mut i = 0u64;
            loop {
                i += 1;
                ctx.progress(((i % 100) as f64) / 100.0, format!("round {i}"))
                    .await?;
                tokio::time::sleep(Duration::from_millis(every)).await;
            }
        })
        .handler("steps", |ctx, _p| async move {
            for i in 1..=3 {
                ctx.step(format!("s{i}")).await?;
                ctx.checkpoint(json!({"done": i})).await?;
            }
            Ok(json!("done"))
        })
        .build()
        .await
        .unwrap()
}

pub async fn harness_with(options: ServerOptions) -> Harness {
    harness_in(TempDir::new().unwrap(), options).await
}

/// A harness on the database already in `dir` (its engine recovers what it finds).
pub async fn harness_in(dir: TempDir, options: ServerOptions) -> Harness {
    let engine = test_engine(&dir).await;
    harness_of(engine, dir, options).await
}

/// A harness over an engine the test built, on a store in `dir`.
pub async fn harness_of(engine: Engine, dir: TempDir, options: ServerOptions) -> Harness {
    let state = AppState::new(engine.clone(), &options)
        .await
        .expect("start the server's state");
    Harness {
        app: router(state.clone(), &options),
        engine,
        state,
        _dir: Arc::new(dir),
    }
}

impl Harness {
    pub async fn raw_with_headers(
        &self,
        method: Method,
        uri: &str,
        body: Option<String>,
        headers: &[(&str, &str)],
    ) -> (StatusCode, String, HeaderMap) {
        let mut req = Request::builder().method(method).uri(uri);
        let has_type = headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("content-type"));
        if body.is_some() && !has_type {
            req = req.header("content-type", "application/json");
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req
            .body(body.map(Body::from).unwrap_or_else(Body::empty))
            .unwrap();
        let response = self.app.clone().oneshot(req).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (
            status,
            String::from_utf8_lossy(&bytes).into_owned(),
            headers,
        )
    }

    pub async fn raw(
        &self,
        method: Method,
        uri: &str,
        body: Option<String>,
        headers: &[(&str, &str)],
    ) -> (StatusCode, String) {
        let (s, t, _) = self.raw_with_headers(method, uri, body, headers).await;
        (s, t)
    }

    pub async fn call(
        &self,
        method: Method,
        uri: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let (status, text) = self
            .raw(method, uri, body.map(|b| b.to_string()), &[])
            .await;
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    pub async fn call_as(&self, method: Method, uri: &str, token: &str) -> (StatusCode, Value) {
        let auth = format!("Bearer {token}");
        let (status, text) = self
            .raw(method, uri, None, &[("authorization", &auth)])
            .await;
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// The job once it has ended (`/wait` with a 20 s timeout), checked to be 200.
    pub async fn finished(&self, id: &str) -> Value {
        let (status, job) = self
            .call(
                Method::GET,
                &format!("/api/jobs/{id}/wait?timeout=20s"),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{job}");
        job
    }

    pub async fn wait_state(&self, id: &str, state: &str) {
        tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                let job = self.engine.get(id).await.unwrap();
                if job.state.as_str() == state {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{id} never became {state}"));
    }
}

/// Serves the harness's state over real HTTP on a free loopback port, with `options`.
pub async fn serve(h: &Harness, options: ServerOptions) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let state = h.state.clone();
    tokio::spawn(async move {
        baton_server::serve(listener, state, &options, std::future::pending()).await
    });
    addr
}

/// Sends `request` (its head without the final blank line; `Connection: close` and the
/// body's length are added) over a new TCP connection, byte for byte as written, so
/// that headers such as `Host` are exactly what the test says; the status and the
/// whole answer.
pub async fn http(addr: std::net::SocketAddr, request: &str, body: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = request.trim_end();
    let length = if body.is_empty() && !head.starts_with("POST") && !head.starts_with("PUT") {
        String::new()
    } else {
        format!("Content-Length: {}\r\n", body.len())
    };
    let close = if head.contains("HTTP/1.0") {
        ""
    } else {
        "Connection: close\r\n"
    };
    let text = format!(
        "{}\r\n{length}{close}\r\n{body}",
        head.replace('\n', "\r\n")
    );
    tcp.write_all(text.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), tcp.read_to_end(&mut answer))
        .await
        .expect("an answer within 20 s")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {answer:?}"));
    (status, answer)
}

/// A writer that keeps what the log says.
#[derive(Clone, Default)]
pub struct Captured(pub std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Everything this thread logs, at every level, from now until the guard drops.
pub fn capture_log() -> (Captured, tracing::subscriber::DefaultGuard) {
    // With one subscriber registered, tracing asks the *calling thread's* subscriber
    // whether a call site is wanted and caches the answer: a call site first reached by
    // another test's server thread (which has none) would stay off for this test too.
    // A second, idle subscriber that lives for the whole run makes it ask all of them.
    static IDLE: std::sync::OnceLock<tracing::Dispatch> = std::sync::OnceLock::new();
    IDLE.get_or_init(|| tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default()));
    let log = Captured::default();
    let writer = log.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    (log, tracing::subscriber::set_default(subscriber))
}

/// A token named `name` whose secret is `{name}-token`, for every queue.
pub fn token(name: &str, role: baton_server::Role) -> baton_server::TokenEntry {
    baton_server::TokenEntry {
        name: name.into(),
        sha256: baton_server::hash_token(&format!("{name}-token")),
        role,
        queues: None,
    }
}
