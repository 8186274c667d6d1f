//! Events: a job's events as JSON, and live streams over SSE that resume from the
//! stored log after a disconnect (`Last-Event-ID`).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use baton_api::EventList;
use baton_core::{Event, EventKind};
use bytes::BytesMut;
use futures::Stream;
use serde::Deserialize;
use tokio::sync::{OwnedSemaphorePermit, broadcast};
use tokio_util::sync::CancellationToken;

use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::jobs::{ApiPath, ApiQuery, job_id};
use crate::limit::StreamPermit;
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
    permit: Option<Extension<StreamPermit>>,
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
        return Ok(sse_response(feed, permit));
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
    permit: Option<Extension<StreamPermit>>,
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
    Ok(sse_response(feed, permit))
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

/// An SSE response of what the feed yields (see [`sse_stream`]). The stream keeps
/// its permit (crate::limit) until it ends.
fn sse_response(feed: Feed, permit: Option<Extension<StreamPermit>>) -> Response {
    let permit = permit.and_then(|Extension(p)| p.take());
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(sse_stream(feed, permit)),
    )
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

/// A [`Filter`] as a stream applies it to every event: the types as one set of bits,
/// so that a stream's test touches nothing beyond itself.
struct Matcher {
    job: Option<String>,
    kinds: u64,
}

const _: () = assert!(EventKind::ALL.len() <= 64, "event types as bits of a u64");

impl Matcher {
    fn new(filter: Filter) -> Matcher {
        let kinds = match &filter.kinds {
            None => u64::MAX,
            Some(kinds) => kinds.iter().fold(0, |bits, k| bits | bit(*k)),
        };
        Matcher {
            job: filter.job,
            kinds,
        }
    }

    fn matches(&self, job_id: Option<&str>, kind: EventKind) -> bool {
        self.kinds & bit(kind) != 0 && self.job.as_deref().is_none_or(|j| job_id == Some(j))
    }
}

fn bit(kind: EventKind) -> u64 {
    1 << (kind as u32)
}

/// An event serialized once, as the SSE frame that every stream sends: its `id:`,
/// `event:` and `data:` lines and the blank line that ends it.
pub(crate) struct Frame {
    pub id: u64,
    pub job_id: Option<String>,
    pub kind: EventKind,
    sse: Bytes,
    /// Where the event's JSON starts in `sse`; it ends before the closing blank line.
    json_at: usize,
}

impl Frame {
    pub(crate) fn new(e: &Event) -> Frame {
        let mut buf = Vec::with_capacity(256);
        let _ = write!(buf, "id: {}\nevent: {}\ndata: ", e.id, e.kind.as_str());
        let json_at = buf.len();
        // JSON text never holds a raw line break, so the event is one `data:` line.
        if serde_json::to_writer(&mut buf, e).is_err() {
            buf.truncate(json_at);
        }
        buf.extend_from_slice(b"\n\n");
        Frame {
            id: e.id,
            job_id: e.job_id.clone(),
            kind: e.kind,
            sse: Bytes::from(buf),
            json_at,
        }
    }

    /// The event as JSON.
    pub fn json(&self) -> &str {
        std::str::from_utf8(&self.sse[self.json_at..self.sse.len() - 2]).unwrap_or_default()
    }
}

/// Fans the engine's events out to the streams: one subscription to the engine and
/// one serialization per event, however many clients follow. The subscription never
/// skips, so the hub sends every event, in order.
///
/// The hub is the one hop between the store's writer and the streams: the writer
/// wakes the hub once per event, and the hub wakes every stream; each stream's
/// connection task then writes the shared frame itself. The hub also keeps idle
/// streams alive: every half [`ServerOptions::sse_keep_alive`] it sends a tick, and a
/// stream that sent nothing since the tick before writes a comment line, so that no
/// stream needs a timer of its own.
///
/// [`ServerOptions::sse_keep_alive`]: crate::ServerOptions::sse_keep_alive
pub(crate) struct Hub {
    /// The sender lives in the hub's task: when the server drains, the task ends and
    /// so does every live stream, without each stream waiting on the drain signal.
    tx: broadcast::WeakSender<Live>,
    /// The id of the last frame sent: a stream that has just read it knows that no
    /// other is waiting, without asking the channel.
    last_sent: AtomicU64,
}

/// What the hub sends to the streams.
#[derive(Clone)]
enum Live {
    Frame(Arc<Frame>),
    Tick,
}

/// Frames the hub keeps for streams that are a little behind; one further behind
/// reads the store.
const HUB_BUFFER: usize = 16_384;

impl Hub {
    pub async fn start(
        engine: &baton_engine::Engine,
        draining: CancellationToken,
        keep_alive: Duration,
    ) -> Result<Arc<Hub>, baton_engine::Error> {
        let (tx, _) = broadcast::channel(HUB_BUFFER);
        let hub = Arc::new(Hub {
            tx: tx.downgrade(),
            last_sent: AtomicU64::new(0),
        });
        let mut sub = engine.subscribe().await?;
        let shared = hub.clone();
        let fan_out = async move {
            let half = (keep_alive / 2).max(Duration::from_millis(1));
            let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + half, half);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let e = tokio::select! {
                    e = sub.next() => e,
                    _ = ticks.tick() => {
                        let _ = tx.send(Live::Tick);
                        continue;
                    }
                    _ = draining.cancelled() => None,
                };
                let Some(e) = e else { return };
                let frame = Arc::new(Frame::new(&e));
                // Before the send: a stream that reads this frame and finds it the
                // last sent may be wrong only by waiting for the next one.
                shared.last_sent.store(frame.id, Ordering::Release);
                // No stream listening is fine: nobody needed this frame.
                let _ = tx.send(Live::Frame(frame));
            }
        };
        run_apart(fan_out);
        Ok(hub)
    }

    fn subscribe(&self) -> broadcast::Receiver<Live> {
        match self.tx.upgrade() {
            Some(tx) => tx.subscribe(),
            // The server is draining: a stream opened now ends at once.
            None => broadcast::channel(1).1,
        }
    }
}

/// Runs the hub on a thread of its own. On the runtime's workers its wake by the
/// store's writer would wait behind the streams' tasks that its previous event woke
/// (a thousand of them take milliseconds): then every event would reach the streams
/// one by one, each wave of writes after the last. Apart, it publishes each event at
/// once, and a stream that is still writing finds the frames that came meanwhile and
/// sends them in one write. Falls back to a task when no thread can start.
fn run_apart(fan_out: impl Future<Output = ()> + Send + 'static) {
    let job = Arc::new(std::sync::Mutex::new(Some(Box::pin(fan_out))));
    let take = |job: &std::sync::Mutex<Option<_>>| job.lock().ok().and_then(|mut j| j.take());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    let started = match runtime {
        Ok(runtime) => {
            let mine = job.clone();
            std::thread::Builder::new()
                .name("baton-events".into())
                .spawn(move || {
                    if let Some(f) = take(&mine) {
                        runtime.block_on(f);
                    }
                })
                .map_err(|e| e.to_string())
        }
        Err(e) => Err(e.to_string()),
    };
    if let Err(e) = started {
        tracing::warn!(error = %e, "cannot start the event fan-out's thread; it runs as a task");
        if let Some(f) = take(&job) {
            tokio::spawn(f);
        }
    }
}

/// Stored events then live ones, each once, in order, with nothing skipped. A stream
/// that falls behind the live fan-out reads what it missed from the store, page by
/// page until caught up, so it never slows the engine or other streams.
pub(crate) struct Feed {
    state: AppState,
    live: broadcast::Receiver<Live>,
    filter: Matcher,
    /// A frame went out since the hub's last tick.
    busy: bool,
    backlog: VecDeque<Event>,
    /// A job's history still to send (job id, its last seq sent): its events up to
    /// `last`, the position when the stream began.
    history: Option<(String, u64)>,
    /// The live fan-out lagged (or the stream resumes from a point): read the stored
    /// events after `last`, page by page, until a page comes back short.
    catching_up: bool,
    /// Every event up to this id was sent or filtered out.
    last: u64,
    /// Said next: retention removed events after the stream's position, up to a later
    /// id (`after`, `pruned_upto`).
    pruned: Option<(u64, u64)>,
    /// The store's newest pruned event id when last read: a prune while the stream
    /// reads stored events may remove some it has not sent.
    pruned_upto: u64,
    _guard: SubscriberGuard,
}

/// What a feed yields.
pub(crate) enum Next {
    Frame(Arc<Frame>),
    /// No frame went out for a while (between two of the hub's ticks).
    Idle,
    /// Events after the resume point `after`, up to `pruned_upto`, may have been
    /// removed by retention.
    Pruned {
        after: u64,
        pruned_upto: u64,
    },
}

impl Feed {
    pub async fn new(state: AppState, start: Start, filter: Filter) -> ApiResult<Feed> {
        // Subscribe before reading the store's position: a later event reaches the
        // fan-out after this, so it arrives live (or the stream lags and reads it).
        let live = state.hub.subscribe();
        let position = || async {
            state
                .engine
                .store()
                .last_event_id()
                .await
                .map_err(|e| ApiError::from(baton_engine::Error::from(e)))
        };
        let pruned_upto = state
            .engine
            .store()
            .events_pruned_upto()
            .await
            .map_err(|e| ApiError::from(baton_engine::Error::from(e)))?;
        let mut pruned = None;
        let (last, catching_up, history) = match start {
            Start::Live => (position().await?, false, None),
            Start::After(id) => {
                if id < pruned_upto {
                    pruned = Some((id, pruned_upto));
                }
                (id, true, None)
            }
            Start::JobHistory => {
                let job = filter.job.clone().unwrap_or_default();
                (position().await?, false, Some((job, 0)))
            }
        };
        let guard = state.metrics.subscriber();
        Ok(Feed {
            live,
            filter: Matcher::new(filter),
            busy: false,
            backlog: VecDeque::new(),
            history,
            catching_up,
            last,
            pruned,
            pruned_upto,
            _guard: guard,
            state,
        })
    }

    /// The next frame, [`Next::Idle`] when nothing went out for a while, or `None`
    /// when the server is shutting down.
    pub async fn next(&mut self) -> Option<Next> {
        if let Some((after, pruned_upto)) = self.pruned.take() {
            return Some(Next::Pruned { after, pruned_upto });
        }
        let mut failures = 0u32;
        loop {
            if let Some(e) = self.backlog.pop_front() {
                if self.filter.matches(e.job_id.as_deref(), e.kind) {
                    return Some(self.sent(Arc::new(Frame::new(&e))));
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
                let from = self.last;
                match store.events_after(from, PAGE).await {
                    Ok(page) => {
                        self.catching_up = page.len() == PAGE;
                        if let Some(e) = page.last() {
                            self.last = e.id;
                        }
                        self.backlog.extend(page);
                        // Read after the page: a prune that removed events past `from`
                        // before the page was read is told before the page goes out.
                        match store.events_pruned_upto().await {
                            Ok(upto) if upto > self.pruned_upto => {
                                self.pruned_upto = upto;
                                if upto > from {
                                    return Some(Next::Pruned {
                                        after: from,
                                        pruned_upto: upto,
                                    });
                                }
                                Ok(())
                            }
                            Ok(_) => Ok(()),
                            Err(e) => Err(e),
                        }
                    }
                    Err(e) => Err(e),
                }
            } else {
                // The hub's sender ends with the server's draining, and so does this.
                match self.live.recv().await {
                    Ok(Live::Frame(f)) => match self.take(f) {
                        Some(f) => return Some(self.sent(f)),
                        None => continue,
                    },
                    Ok(Live::Tick) => {
                        if std::mem::take(&mut self.busy) {
                            continue;
                        }
                        return Some(Next::Idle);
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        // Read the gap from the store, then carry on live.
                        self.catching_up = true;
                        continue;
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
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

    fn sent(&mut self, f: Arc<Frame>) -> Next {
        self.busy = true;
        Next::Frame(f)
    }

    /// The next frame if it is here already (read from the store, or sent live),
    /// without waiting; `None` when the next needs a wait or a read of the store.
    fn ready(&mut self) -> Option<Arc<Frame>> {
        loop {
            if let Some(e) = self.backlog.pop_front() {
                if self.filter.matches(e.job_id.as_deref(), e.kind) {
                    return Some(Arc::new(Frame::new(&e)));
                }
                continue;
            }
            if self.history.is_some()
                || self.catching_up
                || self.last >= self.state.hub.last_sent.load(Ordering::Acquire)
            {
                return None;
            }
            match self.live.try_recv() {
                Ok(Live::Frame(f)) => {
                    if let Some(f) = self.take(f) {
                        return Some(f);
                    }
                }
                // The chunk being gathered goes out after this tick: the stream was
                // not idle since it (`busy` is set by the chunk's first frame).
                Ok(Live::Tick) => {}
                Err(broadcast::error::TryRecvError::Lagged(_)) => {
                    self.catching_up = true;
                    return None;
                }
                // Empty, or closed: `next` waits, or ends.
                Err(_) => return None,
            }
        }
    }

    /// A live frame, unless it was sent already (the stream resumed past it) or the
    /// filter drops it.
    fn take(&mut self, f: Arc<Frame>) -> Option<Arc<Frame>> {
        if f.id <= self.last {
            return None;
        }
        self.last = f.id;
        self.filter
            .matches(f.job_id.as_deref(), f.kind)
            .then_some(f)
    }

    /// The next frames as one chunk: the next frame, and after it every frame that is
    /// ready too (up to about [`CHUNK`] bytes), so that frames that arrive together
    /// leave in one write. A lone frame is the hub's shared bytes, not a copy.
    pub async fn next_chunk(&mut self) -> Option<Bytes> {
        let first = match self.next().await? {
            Next::Frame(f) => f,
            Next::Idle => return Some(Bytes::from_static(b":\n\n")),
            // No `id:` line: the client's resume point stays its last event's.
            Next::Pruned { after, pruned_upto } => {
                return Some(Bytes::from(format!(
                    "event: events.pruned\ndata: {{\"after\":{after},\"pruned_upto\":{pruned_upto}}}\n\n"
                )));
            }
        };
        let Some(second) = self.ready() else {
            return Some(first.sse.clone());
        };
        let mut chunk = BytesMut::with_capacity(2 * (first.sse.len() + second.sse.len()));
        chunk.extend_from_slice(&first.sse);
        chunk.extend_from_slice(&second.sse);
        while chunk.len() < CHUNK {
            let Some(f) = self.ready() else { break };
            chunk.extend_from_slice(&f.sse);
        }
        Some(chunk.freeze())
    }
}

/// The most bytes of frames one chunk gathers (it may pass it by one frame).
const CHUNK: usize = 64 * 1024;

/// An SSE stream of what the feed yields, in chunks of whole frames, with a comment
/// line (`:`) when it was idle for a while, so that proxies keep the connection open.
fn sse_stream(
    feed: Feed,
    permit: Option<OwnedSemaphorePermit>,
) -> impl Stream<Item = Result<Bytes, Infallible>> + Send + 'static {
    futures::stream::unfold((feed, permit), |(mut feed, permit)| async move {
        let chunk = feed.next_chunk().await?;
        Some((Ok(chunk), (feed, permit)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: u64, job: &str, kind: EventKind) -> Event {
        Event {
            id,
            job_id: Some(job.into()),
            seq: 3,
            kind,
            at: 1_700_000_000_000,
            data: serde_json::json!({"progress": 0.5, "message": "a\nb \"c\""}),
        }
    }

    #[test]
    fn a_frame_is_its_event_as_one_sse_frame() {
        let e = event(42, "j1", EventKind::Progress);
        let f = Frame::new(&e);
        let json = serde_json::to_string(&e).unwrap();
        assert_eq!(
            f.sse,
            format!("id: 42\nevent: job.progress\ndata: {json}\n\n").as_bytes()
        );
        // A line break in the event stays escaped: the frame has one data line.
        assert_eq!(f.sse.iter().filter(|b| **b == b'\n').count(), 4);
        assert_eq!(f.json(), json);
        let back: Event = serde_json::from_str(f.json()).unwrap();
        assert_eq!(back.id, 42);
        assert_eq!(back.data, e.data);
    }

    #[test]
    fn a_filter_lets_through_only_its_types_and_job() {
        let check = |filter: Filter, job: &str, kind: EventKind, expected: bool| {
            let m = Matcher::new(filter);
            assert_eq!(m.matches(Some(job), kind), expected, "{job} {kind:?}");
        };
        let types = || Some(vec![EventKind::Progress, EventKind::Completed]);
        let all = |job: Option<&str>| Filter {
            job: job.map(str::to_owned),
            kinds: None,
        };
        for kind in EventKind::ALL {
            check(all(None), "j1", *kind, true);
            let wanted = matches!(kind, EventKind::Progress | EventKind::Completed);
            let typed = Filter {
                job: None,
                kinds: types(),
            };
            check(typed, "j1", *kind, wanted);
            let both = Filter {
                job: Some("j1".into()),
                kinds: types(),
            };
            check(both, "j2", *kind, false);
        }
        check(all(Some("j1")), "j1", EventKind::Log, true);
        check(all(Some("j1")), "j2", EventKind::Log, false);
        let none = Filter {
            job: None,
            kinds: Some(Vec::new()),
        };
        check(none, "j1", EventKind::Progress, false);
    }
}
