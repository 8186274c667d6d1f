//! Back-pressure at the door: a bound on the requests being worked on and another on
//! the streams held open. Past either, a request is answered at once with 503 and
//! `Retry-After` instead of waiting in a queue that could grow without end.
//!
//! The two bounds are separate so that neither kind starves the other: a request holds
//! its permit only while its handler runs (until the response head is ready), so the
//! SSE streams, WebSockets and `/wait` long-polls, which last minutes, hold a *stream*
//! permit instead, for as long as they are open. Many streams cannot lock out
//! submits, and a burst of submits cannot refuse a dashboard its stream beyond its own
//! limit. `/healthz` and `/readyz` are outside both, so probes answer under load.

use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::AppState;
use crate::error::ApiError;

/// The default bound on requests being worked on at once.
pub const DEFAULT_MAX_REQUESTS: usize = 512;
/// The default bound on streams (SSE, WebSocket, long-polls) open at once.
pub const DEFAULT_MAX_STREAMS: usize = 4096;
/// The default time a request body may take to arrive.
pub const DEFAULT_BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

pub struct Limits {
    requests: Arc<Semaphore>,
    max_requests: usize,
    streams: Arc<Semaphore>,
    max_streams: usize,
}

impl Limits {
    pub fn new(max_requests: usize, max_streams: usize) -> Self {
        // Zero would refuse everything; the configuration refuses it, this guards the API.
        let max_requests = max_requests.max(1);
        let max_streams = max_streams.max(1);
        Self {
            requests: Arc::new(Semaphore::new(max_requests)),
            max_requests,
            streams: Arc::new(Semaphore::new(max_streams)),
            max_streams,
        }
    }
}

/// A stream's permit, handed to the handler through the request's extensions so that a
/// WebSocket session or an SSE stream can keep it for its life; what the handler leaves
/// is kept by the response body.
#[derive(Clone)]
pub struct StreamPermit(Arc<Mutex<Option<OwnedSemaphorePermit>>>);

impl StreamPermit {
    pub fn take(&self) -> Option<OwnedSemaphorePermit> {
        self.0.lock().ok()?.take()
    }
}

/// Whether a request opens something that stays open: an event stream, a WebSocket or
/// a long-poll.
fn is_stream(req: &Request) -> bool {
    if req.method() != Method::GET {
        return false;
    }
    let path = req.uri().path();
    if matches!(path, "/api/events" | "/api/ws") {
        return true;
    }
    let Some(rest) = path.strip_prefix("/api/jobs/") else {
        return false;
    };
    if rest.ends_with("/wait") {
        return true;
    }
    rest.ends_with("/events")
        && req
            .headers()
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("text/event-stream"))
}

pub async fn middleware(State(s): State<AppState>, mut req: Request, next: Next) -> Response {
    if matches!(req.uri().path(), "/healthz" | "/readyz") {
        return next.run(req).await;
    }
    let limits = &s.limits;
    if !is_stream(&req) {
        let Ok(_permit) = limits.requests.try_acquire() else {
            return overloaded(format!(
                "the server is busy: {} requests are in progress, its limit (max_requests); retry in 1 s",
                limits.max_requests
            ));
        };
        return next.run(req).await;
    }
    let Ok(permit) = limits.streams.clone().try_acquire_owned() else {
        return overloaded(format!(
            "the server is busy: {} streams are open, its limit (max_streams); retry in 1 s",
            limits.max_streams
        ));
    };
    let slot = StreamPermit(Arc::new(Mutex::new(Some(permit))));
    req.extensions_mut().insert(slot.clone());
    let response = next.run(req).await;
    match slot.take() {
        // The body of an SSE stream (or of a long-poll's answer) keeps the permit.
        Some(permit) => response.map(|body| {
            Body::from_stream(body.into_data_stream().map(move |chunk| {
                let _held = &permit;
                chunk
            }))
        }),
        // A WebSocket session or an SSE stream took it.
        None => response,
    }
}

fn overloaded(message: String) -> Response {
    let mut response =
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "overloaded", message).into_response();
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    response
}
