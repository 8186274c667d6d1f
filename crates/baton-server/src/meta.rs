//! Health, readiness, stats, servers, queues, Prometheus metrics and request logs.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use axum::Json;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use baton_api::{QueueInfo, QueueList, ServerList, Stats};
use baton_core::{EventKind, Millis, State as JobState};
use baton_engine::Engine;
use baton_store::Span;
use tokio_util::sync::CancellationToken;

use crate::AppState;
use crate::error::{ApiError, ApiResult};

/// Upper bounds of the duration histograms, in seconds.
const BUCKETS: [f64; 12] = [
    0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 60.0, 300.0, 3600.0,
];

/// Counters the server keeps, fed by the engine's event stream.
pub struct Metrics {
    started: Instant,
    events: AtomicU64,
    by_kind: HashMap<EventKind, AtomicU64>,
    subscribers: AtomicUsize,
    requests: std::sync::Mutex<BTreeMap<u16, u64>>,
    durations: Histogram,
    queue_latency: Histogram,
    /// Fires when the server stops: streams end, long-polls answer.
    pub draining: CancellationToken,
}

struct Histogram {
    counts: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    /// Sum in microseconds.
    sum_us: AtomicU64,
}

impl Histogram {
    fn new() -> Self {
        Self {
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            count: AtomicU64::new(0),
            sum_us: AtomicU64::new(0),
        }
    }

    fn observe(&self, ms: Millis) {
        let secs = ms.max(0) as f64 / 1000.0;
        for (i, upper) in BUCKETS.iter().enumerate() {
            if secs <= *upper {
                self.counts[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_us
            .fetch_add(ms.max(0) as u64 * 1000, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (i, upper) in BUCKETS.iter().enumerate() {
            let n = self.counts[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{upper}\"}} {n}");
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let sum = self.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {count}");
    }
}

/// Counts a live stream while it exists.
pub struct SubscriberGuard(Arc<Metrics>);

impl Drop for SubscriberGuard {
    fn drop(&mut self) {
        self.0.subscribers.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Metrics {
    /// Starts counting the engine's events from now on.
    pub async fn start(engine: &Engine) -> Result<Arc<Metrics>, baton_engine::Error> {
        let metrics = Arc::new(Metrics {
            started: Instant::now(),
            events: AtomicU64::new(0),
            by_kind: EventKind::ALL
                .iter()
                .map(|k| (*k, AtomicU64::new(0)))
                .collect(),
            subscribers: AtomicUsize::new(0),
            requests: std::sync::Mutex::new(BTreeMap::new()),
            durations: Histogram::new(),
            queue_latency: Histogram::new(),
            draining: CancellationToken::new(),
        });
        let m = metrics.clone();
        // Never skips an event, however far behind the counting falls.
        let mut sub = engine.subscribe().await?;
        tokio::spawn(async move {
            // When each job was submitted and started, to time queueing and running.
            let mut submitted: HashMap<String, Millis> = HashMap::new();
            let mut started: HashMap<String, Millis> = HashMap::new();
            loop {
                let e = tokio::select! {
                    e = sub.next() => e,
                    _ = m.draining.cancelled() => None,
                };
                let Some(e) = e else { return };
                m.events.fetch_add(1, Ordering::Relaxed);
                if let Some(c) = m.by_kind.get(&e.kind) {
                    c.fetch_add(1, Ordering::Relaxed);
                }
                let Some(id) = e.job_id.clone() else { continue };
                match e.kind {
                    EventKind::Submitted | EventKind::Queued | EventKind::Recovered => {
                        submitted.insert(id, e.at);
                    }
                    EventKind::Started => {
                        if let Some(at) = submitted.remove(&id) {
                            m.queue_latency.observe(e.at - at);
                        }
                        started.insert(id, e.at);
                    }
                    k if k.is_terminal() || k == EventKind::Retrying => {
                        submitted.remove(&id);
                        if let Some(at) = started.remove(&id) {
                            m.durations.observe(e.at - at);
                        }
                    }
                    _ => {}
                }
                // Jobs that never finish must not grow these forever.
                if submitted.len() > 200_000 {
                    submitted.clear();
                }
                if started.len() > 200_000 {
                    started.clear();
                }
            }
        });
        Ok(metrics)
    }

    pub fn subscriber(self: &Arc<Self>) -> SubscriberGuard {
        self.subscribers.fetch_add(1, Ordering::Relaxed);
        SubscriberGuard(self.clone())
    }

    pub fn subscribers(&self) -> usize {
        self.subscribers.load(Ordering::Relaxed)
    }

    fn count(&self, kind: EventKind) -> u64 {
        self.by_kind
            .get(&kind)
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }
}

/// Logs every request with its status and time, and counts statuses.
pub async fn observe(State(s): State<AppState>, req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let t0 = Instant::now();
    let response = next.run(req).await;
    let status = response.status().as_u16();
    if let Ok(mut counts) = s.metrics.requests.lock() {
        *counts.entry(status).or_default() += 1;
    }
    tracing::info!(%method, path, status, ms = t0.elapsed().as_secs_f64() * 1e3, "request");
    response
}

#[utoipa::path(get, operation_id = "healthz", path = "/healthz", tag = "meta", responses((status = 200, description = "alive")))]
pub async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok"}))
}

#[utoipa::path(get, operation_id = "readyz", path = "/readyz", tag = "meta", responses((status = 200, description = "ready"), (status = 503, body = baton_api::ErrorBody)))]
pub async fn readyz(State(s): State<AppState>) -> Response {
    if s.ready.load(Ordering::SeqCst) && !s.metrics.draining.is_cancelled() && s.engine.healthy() {
        Json(serde_json::json!({"status": "ready"})).into_response()
    } else {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the server is not ready",
        )
        .into_response()
    }
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThroughputQuery {
    window: Option<String>,
}

#[utoipa::path(get, operation_id = "throughput", path = "/api/throughput", tag = "meta",
    params(("window" = Option<String>, Query, description = "15m (per second, the default), 1h or 1d (per minute)")),
    responses((status = 200, description = "jobs completed and failed per bucket, oldest first, as the store counted them (they survive a restart)", body = baton_api::Throughput),
        (status = 400, description = "an unknown window", body = baton_api::ErrorBody)))]
pub async fn throughput(
    State(s): State<AppState>,
    crate::jobs::ApiQuery(q): crate::jobs::ApiQuery<ThroughputQuery>,
) -> ApiResult<Json<baton_api::Throughput>> {
    let window = q.window.unwrap_or_else(|| "15m".into());
    let (span, count) = match window.as_str() {
        "15m" => (Span::Second, 900),
        "1h" => (Span::Minute, 60),
        "1d" => (Span::Minute, 1440),
        other => {
            return Err(ApiError::bad_request(format!(
                "invalid window {other:?}: expected 15m, 1h or 1d"
            )));
        }
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as Millis);
    let size = span.millis();
    let end = (now.div_euclid(size) + 1) * size;
    let first = end - count as Millis * size;
    let rows = s
        .engine
        .store()
        .throughput(span, first)
        .await
        .map_err(baton_engine::Error::from)?;
    let mut completed = vec![0u32; count];
    let mut failed = vec![0u32; count];
    for r in rows {
        // Rows past `end` (a clock that moved back) are not in the window.
        if let Some(i) = usize::try_from((r.at - first) / size)
            .ok()
            .filter(|i| *i < count)
        {
            completed[i] = completed[i].saturating_add(r.completed as u32);
            failed[i] = failed[i].saturating_add(r.failed as u32);
        }
    }
    Ok(Json(baton_api::Throughput {
        window,
        bucket_seconds: (size / 1000) as u32,
        end: baton_core::time::to_rfc3339(end),
        since: baton_core::time::to_rfc3339(first),
        completed,
        failed,
    }))
}

#[utoipa::path(get, operation_id = "whoami", path = "/api/whoami", tag = "meta",
    responses((status = 200, description = "who the request's token names, its role, and the dashboard's settings", body = baton_api::WhoAmI)))]
pub async fn whoami(
    State(s): State<AppState>,
    caller: Option<axum::Extension<crate::auth::Caller>>,
) -> Json<baton_api::WhoAmI> {
    let auth = s.auth.config.enabled();
    let (name, role, queues) = match caller {
        Some(axum::Extension(c)) => (c.name, c.role.as_str().to_owned(), c.queues),
        None => ("anonymous".into(), "admin".into(), None),
    };
    Json(baton_api::WhoAmI {
        auth,
        name,
        role,
        queues,
        dashboard: baton_api::DashboardSettings {
            stalled_after_ms: s.stalled_after.as_millis() as u64,
        },
    })
}

pub async fn not_found() -> ApiError {
    ApiError::not_found("no such endpoint")
}

#[utoipa::path(get, operation_id = "stats", path = "/api/stats", tag = "meta", responses((status = 200, body = baton_api::Stats)))]
pub async fn stats(State(s): State<AppState>) -> ApiResult<Json<Stats>> {
    let counts = s
        .engine
        .store()
        .counts()
        .await
        .map_err(baton_engine::Error::from)?;
    let mut stats = Stats {
        synchronous: s.engine.store().synchronous().map(str::to_owned),
        event_id: counts.last_event,
        ..Stats::default()
    };
    for state in JobState::ALL {
        stats.states.insert(state.as_str().into(), 0);
    }
    for (queue, state, n) in counts.rows {
        *stats.states.entry(state.as_str().into()).or_default() += n;
        *stats
            .queues
            .entry(queue)
            .or_default()
            .entry(state.as_str().into())
            .or_default() += n;
        stats.total += n;
    }
    for kind in [
        EventKind::Completed,
        EventKind::Failed,
        EventKind::Cancelled,
    ] {
        let name = kind.as_str().trim_start_matches("job.");
        stats.since_start.insert(name.into(), s.metrics.count(kind));
    }
    Ok(Json(stats))
}

#[utoipa::path(get, operation_id = "list_servers", path = "/api/servers", tag = "meta", responses((status = 200, body = baton_api::ServerList)))]
pub async fn servers(State(s): State<AppState>) -> ApiResult<Json<ServerList>> {
    let servers = s
        .engine
        .store()
        .servers()
        .await
        .map_err(baton_engine::Error::from)?;
    Ok(Json(ServerList { servers }))
}

#[utoipa::path(get, operation_id = "list_queues", path = "/api/queues", tag = "meta", responses((status = 200, body = baton_api::QueueList)))]
pub async fn queues(State(s): State<AppState>) -> ApiResult<Json<QueueList>> {
    let counts = s
        .engine
        .store()
        .counts()
        .await
        .map_err(baton_engine::Error::from)?;
    let mut queues: BTreeMap<String, QueueInfo> = BTreeMap::new();
    for q in s.engine.queue_states() {
        queues.insert(
            q.name.clone(),
            QueueInfo {
                name: q.name,
                concurrency: Some(q.concurrency),
                running: q.running,
                counts: BTreeMap::new(),
                paused: q.paused,
                heavy: q.heavy,
                held: q.held,
            },
        );
    }
    for (queue, state, n) in counts.rows {
        queues
            .entry(queue.clone())
            .or_insert_with(|| QueueInfo {
                name: queue,
                concurrency: None,
                running: 0,
                counts: BTreeMap::new(),
                paused: false,
                heavy: false,
                held: None,
            })
            .counts
            .insert(state.as_str().into(), n);
    }
    Ok(Json(QueueList {
        queues: queues.into_values().collect(),
    }))
}

#[utoipa::path(get, operation_id = "metrics", path = "/metrics", tag = "meta", responses((status = 200, description = "Prometheus text", content_type = "text/plain")))]
pub async fn metrics(State(s): State<AppState>) -> ApiResult<Response> {
    let counts = s
        .engine
        .store()
        .counts()
        .await
        .map_err(baton_engine::Error::from)?;
    let m = &s.metrics;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# HELP baton_jobs Jobs in the store by queue and state.\n# TYPE baton_jobs gauge"
    );
    for (queue, state, n) in &counts.rows {
        let _ = writeln!(out, "baton_jobs{{queue=\"{queue}\",state=\"{state}\"}} {n}");
    }
    for (kind, name, help) in [
        (EventKind::Submitted, "submitted", "Jobs submitted"),
        (EventKind::Started, "started", "Attempts started"),
        (EventKind::Completed, "completed", "Jobs completed"),
        (EventKind::Failed, "failed", "Jobs failed for good"),
        (
            EventKind::Retrying,
            "retried",
            "Attempts that failed and will be retried",
        ),
        (
            EventKind::Cancelled,
            "cancelled",
            "Jobs cancelled or stopped",
        ),
        (
            EventKind::Recovered,
            "recovered",
            "Jobs recovered after a crash",
        ),
    ] {
        let help = format!("{help} since the server started.");
        metric(
            &mut out,
            &format!("baton_jobs_{name}_total"),
            "counter",
            &help,
            m.count(kind),
        );
    }
    if let Some(w) = s.engine.store().write_stats() {
        let batches = w.batches.load(Ordering::Relaxed);
        let writes = w.writes.load(Ordering::Relaxed);
        metric(
            &mut out,
            "baton_store_write_batches_total",
            "counter",
            "Transactions committed by the store (group commits).",
            batches,
        );
        metric(
            &mut out,
            "baton_store_writes_total",
            "counter",
            "Writes committed by the store, in those transactions.",
            writes,
        );
    }
    m.durations.render(
        &mut out,
        "baton_job_duration_seconds",
        "Time from an attempt's start to its end.",
    );
    m.queue_latency.render(
        &mut out,
        "baton_queue_latency_seconds",
        "Time from queued to started.",
    );
    metric(
        &mut out,
        "baton_event_subscribers",
        "gauge",
        "Open event streams (SSE and WebSocket).",
        m.subscribers(),
    );
    metric(
        &mut out,
        "baton_events_total",
        "counter",
        "Events published since the server started.",
        m.events.load(Ordering::Relaxed),
    );
    metric(
        &mut out,
        "baton_outcome_write_retries_total",
        "counter",
        "Writes of a job's outcome that failed and were tried again.",
        s.engine.outcome_write_retries(),
    );
    let _ = writeln!(
        out,
        "# HELP baton_resource_crossed Whether each watched resource threshold is crossed now (1): heavy queues are then held.\n# TYPE baton_resource_crossed gauge"
    );
    for g in s.engine.pressure().gauges() {
        let _ = writeln!(
            out,
            "baton_resource_crossed{{resource=\"{}\"}} {}",
            g.resource.as_str(),
            u8::from(g.crossed)
        );
    }
    metric(
        &mut out,
        "baton_resource_alerts_total",
        "counter",
        "resource.alert events since the server started.",
        m.count(EventKind::ResourceAlert),
    );
    let (pruned_jobs, pruned_events) = s.engine.pruned();
    metric(
        &mut out,
        "baton_pruned_jobs_total",
        "counter",
        "Finished jobs removed by retention since the server started.",
        pruned_jobs,
    );
    metric(
        &mut out,
        "baton_pruned_events_total",
        "counter",
        "Events removed by retention since the server started.",
        pruned_events,
    );
    // Jobs' processes, as the usage sampler measures them: totals of this server's
    // running jobs, not a series per job (job ids would make the series unbounded;
    // a job's own usage is in the job, its attempts and its `job.usage` events).
    let usage = s.engine.usage_stats();
    metric(
        &mut out,
        "baton_job_processes",
        "gauge",
        "Running command and pipeline jobs whose processes this server measures.",
        usage.jobs,
    );
    metric(
        &mut out,
        "baton_job_rss_bytes",
        "gauge",
        "Resident memory of the processes of this server's running jobs, together, at the last sample.",
        usage.rss_bytes,
    );
    metric(
        &mut out,
        "baton_job_cpu_seconds_total",
        "counter",
        "CPU time measured in the processes of this server's jobs since it started.",
        usage.cpu_ms as f64 / 1000.0,
    );
    let _ = writeln!(
        out,
        "# HELP baton_job_limit_kills_total Jobs killed for passing a resource limit, by limit.
# TYPE baton_job_limit_kills_total counter
baton_job_limit_kills_total{{limit=\"memory\"}} {}
baton_job_limit_kills_total{{limit=\"cpu_time\"}} {}",
        usage.memory_kills, usage.cpu_kills
    );
    metric(
        &mut out,
        "baton_usage_sampler_cpu_seconds_total",
        "counter",
        "CPU time of the usage sampler's own thread since the server started.",
        usage.sampler_cpu_ns as f64 / 1e9,
    );
    metric(
        &mut out,
        "baton_uptime_seconds",
        "gauge",
        "Seconds since the server started.",
        m.started.elapsed().as_secs(),
    );
    let _ = writeln!(
        out,
        "# HELP baton_http_requests_total HTTP requests answered, by status.\n# TYPE baton_http_requests_total counter"
    );
    if let Ok(reqs) = m.requests.lock() {
        for (status, n) in reqs.iter() {
            let _ = writeln!(out, "baton_http_requests_total{{status=\"{status}\"}} {n}");
        }
    }
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response())
}

/// One Prometheus metric without labels: its help, type and value.
fn metric(out: &mut String, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
    );
}

pub async fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        crate::openapi_json(),
    )
        .into_response()
}
