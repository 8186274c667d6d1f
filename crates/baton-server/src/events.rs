//! Events: a job's events as JSON, and live streams over SSE that resume from the
//! stored log after a disconnect (`Last-Event-ID`).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{self, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use baton_api::EventList;
use baton_core::{Event, EventKind};
use futures::Stream;
use serde::Deserialize;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::jobs::{ApiPath, ApiQuery, job_id};
use crate::meta::SubscriberGuard;

/// Events read from the store per page when a client catches up.
const PAGE: usize = 1000;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobEventsQuery {
    after: Option<u64>,
}

#[utoipa::path(get, operation_id = "job_events", path = "/api/jobs/{id}/events", tag = "events",
    params(("id" = String, Path), ("after" = Option<u64>, Query, description = "per-job seq (JSON)"),
        ("Last-Event-ID" = Option<u64>, Header, description = "global id to resume an SSE stream")),
    responses((status = 200, description = "JSON, or SSE with Accept: text/event-stream", body = baton_api::EventList),
        (status = 400, description = "an invalid id, after or Last-Event-ID", body = baton_api::ErrorBody),
        (status = 404, description = "no such job", body = baton_api::ErrorBody)))]
pub async fn job_events(
    State(s): State<AppState>,
    ApiPath(id): ApiPath<String>,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<JobEventsQuery>,
) -> ApiResult<Response> {
    let id = job_id(&id)?.to_owned();
    if wants_sse(&headers) {
        s.engine.get(&id).await?;
        let start = match last_event_id(&headers)? {
            Some(last) => Start::After(last),
            None => Start::JobHistory,
        };
        let filter = Filter {
            job: Some(id),
            kinds: None,
        };
        let feed = Feed::new(s, start, filter).await?;
        return Ok(sse_response(stream(feed)));
    }
    let events = s.engine.events(&id, q.after.unwrap_or(0)).await?;
    Ok(Json(EventList { events }).into_response())
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllEventsQuery {
    /// Replay stored events after this global id first.
    after: Option<u64>,
    /// Only this job's events.
    job: Option<String>,
    /// Only these types, comma separated (`job.progress,job.completed`).
    types: Option<String>,
}

#[utoipa::path(get, operation_id = "events", path = "/api/events", tag = "events",
    params(("after" = Option<u64>, Query), ("job" = Option<String>, Query),
        ("types" = Option<String>, Query, description = "event types, comma separated"),
        ("Last-Event-ID" = Option<u64>, Header)),
    responses((status = 200, description = "an SSE stream of events", content_type = "text/event-stream", body = baton_core::Event),
        (status = 400, description = "an invalid after, job, types or Last-Event-ID", body = baton_api::ErrorBody)))]
pub async fn all_events(
    State(s): State<AppState>,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<AllEventsQuery>,
) -> ApiResult<Response> {
    let start = match (last_event_id(&headers)?, q.after) {
        (Some(last), _) | (None, Some(last)) => Start::After(last),
        (None, None) => Start::Live,
    };
    if let Some(job) = &q.job {
        job_id(job)?;
    }
    let kinds = match q.types.as_deref().filter(|t| !t.is_empty()) {
        None => None,
        Some(list) => {
            let mut kinds = Vec::new();
            for name in list.split(',') {
                kinds.push(EventKind::parse(name.trim()).ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "invalid event type {name:?} (e.g. job.progress)"
                    ))
                })?);
            }
            Some(kinds)
        }
    };
    let filter = Filter { job: q.job, kinds };
    let feed = Feed::new(s, start, filter).await?;
    Ok(sse_response(stream(feed)))
}

fn wants_sse(headers: &HeaderMap) -> bool {
    headers
        .get(axum::http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/event-stream"))
}

fn last_event_id(headers: &HeaderMap) -> ApiResult<Option<u64>> {
    match headers.get("last-event-id") {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .map(Some)
            .ok_or_else(|| ApiError::bad_request("invalid Last-Event-ID: expected an event id")),
    }
}

fn sse_response(
    stream: impl Stream<Item = Result<sse::Event, Infallible>> + Send + 'static,
) -> Response {
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

pub(crate) enum Start {
    /// Only what happens from now on.
    Live,
    /// The stored events after this global id, then live ones.
    After(u64),
    /// The filtered job's whole history, then live events.
    JobHistory,
}

#[derive(Clone)]
pub(crate) struct Filter {
    pub job: Option<String>,
    pub kinds: Option<Vec<EventKind>>,
}

impl Filter {
    pub fn matches(&self, job_id: Option<&str>, kind: EventKind) -> bool {
        self.job.as_deref().is_none_or(|j| job_id == Some(j))
            && self.kinds.as_ref().is_none_or(|k| k.contains(&kind))
    }
}

/// An event serialized once, for every stream that sends it.
pub(crate) struct Frame {
    pub id: u64,
    pub job_id: Option<String>,
    pub kind: EventKind,
    pub json: String,
}

impl Frame {
    fn new(e: &Event) -> Frame {
        Frame {
            id: e.id,
            job_id: e.job_id.clone(),
            kind: e.kind,
            json: serde_json::to_string(e).unwrap_or_default(),
        }
    }
}

/// Fans the engine's events out to the streams: one subscription to the engine and
/// one serialization per event, however many clients follow. The subscription never
/// skips, so the hub sends every event, in order.
pub(crate) struct Hub {
    tx: broadcast::Sender<Arc<Frame>>,
}

/// Frames the hub keeps for streams that are a little behind; one further behind
/// reads the store.
const HUB_BUFFER: usize = 16_384;

impl Hub {
    pub async fn start(
        engine: &baton_engine::Engine,
        draining: CancellationToken,
    ) -> Result<Arc<Hub>, baton_engine::Error> {
        let (tx, _) = broadcast::channel(HUB_BUFFER);
        let hub = Arc::new(Hub { tx: tx.clone() });
        let mut sub = engine.subscribe().await?;
        tokio::spawn(async move {
            loop {
                let e = tokio::select! {
                    e = sub.next() => e,
                    _ = draining.cancelled() => None,
                };
                let Some(e) = e else { return };
                // No stream listening is fine: nobody needed this frame.
                let _ = tx.send(Arc::new(Frame::new(&e)));
            }
        });
        Ok(hub)
    }
}

/// Stored events then live ones, each once, in order, with nothing skipped. A stream
/// that falls behind the live fan-out reads what it missed from the store, page by
/// page until caught up, so it never slows the engine or other streams.
pub(crate) struct Feed {
    state: AppState,
    live: broadcast::Receiver<Arc<Frame>>,
    filter: Filter,
    backlog: VecDeque<Event>,
    /// A job's history still to send (job id, its last seq sent): its events up to
    /// `last`, the position when the stream began.
    history: Option<(String, u64)>,
    /// The live fan-out lagged (or the stream resumes from a point): read the stored
    /// events after `last`, page by page, until a page comes back short.
    catching_up: bool,
    /// Every event up to this id was sent or filtered out.
    last: u64,
    _guard: SubscriberGuard,
}

impl Feed {
    pub async fn new(state: AppState, start: Start, filter: Filter) -> ApiResult<Feed> {
        // Subscribe before reading the store's position: a later event reaches the
        // fan-out after this, so it arrives live (or the stream lags and reads it).
        let live = state.hub.tx.subscribe();
        let position = || async {
            state
                .engine
                .store()
                .last_event_id()
                .await
                .map_err(|e| ApiError::from(baton_engine::Error::from(e)))
        };
        let (last, catching_up, history) = match start {
            Start::Live => (position().await?, false, None),
            Start::After(id) => (id, true, None),
            Start::JobHistory => {
                let job = filter.job.clone().unwrap_or_default();
                (position().await?, false, Some((job, 0)))
            }
        };
        let guard = state.metrics.subscriber();
        Ok(Feed {
            live,
            filter,
            backlog: VecDeque::new(),
            history,
            catching_up,
            last,
            _guard: guard,
            state,
        })
    }

    /// The next frame, or `None` when the server is shutting down.
    pub async fn next(&mut self) -> Option<Arc<Frame>> {
        let mut failures = 0u32;
        loop {
            if let Some(e) = self.backlog.pop_front() {
                if self.filter.matches(e.job_id.as_deref(), e.kind) {
                    return Some(Arc::new(Frame::new(&e)));
                }
                continue;
            }
            let read = if let Some((job, seq)) = &self.history {
                let (job, seq) = (job.clone(), *seq);
                let store = self.state.engine.store();
                match store.job_events(&job, seq, PAGE).await {
                    Ok(page) => {
                        let full = page.len() == PAGE;
                        let end = self.last;
                        let before: Vec<Event> = page.into_iter().filter(|e| e.id <= end).collect();
                        let more = full && before.len() == PAGE;
                        self.history = match before.last() {
                            Some(e) if more => Some((job, e.seq)),
                            _ => None,
                        };
                        self.backlog.extend(before);
                        Ok(())
                    }
                    Err(e) => Err(e),
                }
            } else if self.catching_up {
                let store = self.state.engine.store();
                match store.events_after(self.last, PAGE).await {
                    Ok(page) => {
                        self.catching_up = page.len() == PAGE;
                        if let Some(e) = page.last() {
                            self.last = e.id;
                        }
                        self.backlog.extend(page);
                        Ok(())
                    }
                    Err(e) => Err(e),
                }
            } else {
                let next = tokio::select! {
                    f = self.live.recv() => f,
                    _ = self.state.metrics.draining.cancelled() => return None,
                };
                let f = match next {
                    Ok(f) => f,
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        // Read the gap from the store, then carry on live.
                        self.catching_up = true;
                        continue;
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                };
                if f.id <= self.last {
                    continue;
                }
                self.last = f.id;
                if self.filter.matches(f.job_id.as_deref(), f.kind) {
                    return Some(f);
                }
                continue;
            };
            match read {
                Ok(()) => failures = 0,
                Err(e) => {
                    // Going on without the stored events would skip them: read again.
                    failures += 1;
                    tracing::warn!(after = self.last, attempt = failures, error = %e,
                        "cannot read stored events for a stream; retrying");
                    let pause = Duration::from_millis(50 << failures.min(6));
                    tokio::select! {
                        _ = tokio::time::sleep(pause) => {}
                        _ = self.state.metrics.draining.cancelled() => return None,
                    }
                }
            }
        }
    }
}

/// An SSE stream of what the feed yields.
pub(crate) fn stream(
    feed: Feed,
) -> impl Stream<Item = Result<sse::Event, Infallible>> + Send + 'static {
    futures::stream::unfold(feed, |mut feed| async move {
        let f = feed.next().await?;
        let frame = sse::Event::default()
            .id(f.id.to_string())
            .event(f.kind.as_str())
            .data(&f.json);
        Some((Ok(frame), feed))
    })
}
