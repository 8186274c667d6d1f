//! Baton's HTTP server: the REST API, realtime streams (SSE and WebSocket), auth,
//! metrics and health, over an [`Engine`]. Only this crate knows HTTP.

mod auth;
mod batch;
mod bulk;
mod dashboard;
mod error;
mod events;
mod guard;
mod jobs;
mod json;
mod limit;
mod listen;
mod meta;
mod resources;
mod schedules;
mod workers;
mod workflows;
pub use workers::{HEARTBEAT as DEFAULT_WORKER_HEARTBEAT, MAX_MESSAGE as MAX_WORKER_MESSAGE};
mod ws;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use baton_engine::Engine;
use tokio::net::TcpListener;
use tower_http::cors::{AllowOrigin, CorsLayer};

pub use auth::{AuthConfig, Role, TokenEntry, hash_token, sign_jwt};
pub use bulk::DEFAULT_BULK_LIMIT;
pub use error::{ApiError, ApiResult};
pub use guard::{Peer, normalize_host, normalize_origin};
pub use limit::{DEFAULT_BODY_TIMEOUT, DEFAULT_MAX_REQUESTS, DEFAULT_MAX_STREAMS};
pub use listen::{
    ListenError, Listener, SocketFile, TlsConfig, TlsListener, UnixPeer, bind_unix, serve_all,
};
pub use meta::Metrics;

/// How the server behaves; see `baton serve` for where each setting comes from.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    pub auth: AuthConfig,
    /// Origins other than the server's own that may read (CORS), change state and
    /// open the WebSocket; empty: none; `*`: any origin.
    pub cors_origins: Vec<String>,
    /// Names (or addresses) besides loopback and the listen address that requests may
    /// give as their `Host`; `*`: any.
    pub allowed_hosts: Vec<String>,
    /// The largest request body, in bytes.
    pub body_limit: usize,
    /// Job submissions per second and client; 0: unlimited.
    pub submit_rate: u32,
    /// Submissions a client may burst above the rate.
    pub submit_burst: u32,
    /// Requests worked on at once; past it a request is answered 503 at once.
    pub max_requests: usize,
    /// Streams (SSE, WebSocket, `/wait` long-polls) open at once; past it, 503.
    pub max_streams: usize,
    /// The longest a request body may take to arrive (408 past it), so that slow
    /// uploads cannot hold the request permits for ever.
    pub body_timeout: Duration,
    /// The most jobs one bulk action (`POST /api/jobs/bulk`) reaches: ids given, or
    /// jobs a filter matches.
    pub bulk_limit: usize,
    /// How long a running job may go without progress, step, output or a log line
    /// before the dashboard marks it stalled (`[dashboard] stalled_after`).
    pub stalled_after: Duration,
    /// The longest an SSE stream stays silent: an idle stream gets a comment line
    /// (`:`) after between half this and this, so that proxies keep it open.
    pub sse_keep_alive: Duration,
    /// How often a remote worker is pinged; one silent for three of these loses its
    /// attempts (default [`DEFAULT_WORKER_HEARTBEAT`]).
    pub worker_heartbeat: Duration,
}

/// The dashboard's default for [`ServerOptions::stalled_after`].
pub const DEFAULT_STALLED_AFTER: Duration = Duration::from_secs(120);

/// The default of [`ServerOptions::sse_keep_alive`].
pub const DEFAULT_SSE_KEEP_ALIVE: Duration = Duration::from_secs(15);

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            auth: AuthConfig::default(),
            cors_origins: Vec::new(),
            allowed_hosts: Vec::new(),
            body_limit: 2 * 1024 * 1024,
            submit_rate: 0,
            submit_burst: 100,
            max_requests: DEFAULT_MAX_REQUESTS,
            max_streams: DEFAULT_MAX_STREAMS,
            body_timeout: DEFAULT_BODY_TIMEOUT,
            bulk_limit: DEFAULT_BULK_LIMIT,
            stalled_after: DEFAULT_STALLED_AFTER,
            sse_keep_alive: DEFAULT_SSE_KEEP_ALIVE,
            worker_heartbeat: DEFAULT_WORKER_HEARTBEAT,
        }
    }
}

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub engine: Engine,
    pub metrics: Arc<Metrics>,
    pub(crate) hub: Arc<events::Hub>,
    pub(crate) resources: Arc<resources::Resources>,
    pub(crate) auth: Arc<auth::Auth>,
    pub(crate) guard: Arc<guard::Guard>,
    pub(crate) limits: Arc<limit::Limits>,
    pub(crate) body_timeout: Duration,
    pub(crate) bulk_limit: usize,
    pub(crate) stalled_after: Duration,
    pub(crate) worker_heartbeat: Duration,
    pub(crate) ready: Arc<std::sync::atomic::AtomicBool>,
}

impl AppState {
    /// Starts the metrics and the event fan-out, each following the engine's events
    /// from now on; fails only when the store cannot say where its event log ends.
    pub async fn new(engine: Engine, options: &ServerOptions) -> Result<Self, baton_engine::Error> {
        let metrics = Metrics::start(&engine).await?;
        let hub =
            events::Hub::start(&engine, metrics.draining.clone(), options.sse_keep_alive).await?;
        let resources = resources::Resources::start(engine.clone(), metrics.draining.clone());
        let auth = Arc::new(auth::Auth::new(options));
        auth::Auth::prune_in_background(&auth, metrics.draining.clone());
        Ok(Self {
            engine,
            metrics,
            hub,
            resources,
            auth,
            guard: Arc::new(guard::Guard::new(
                &options.allowed_hosts,
                &options.cors_origins,
            )),
            limits: Arc::new(limit::Limits::new(
                options.max_requests,
                options.max_streams,
            )),
            body_timeout: options.body_timeout,
            bulk_limit: options.bulk_limit.max(1),
            stalled_after: options.stalled_after,
            worker_heartbeat: options.worker_heartbeat,
            ready: Arc::new(std::sync::atomic::AtomicBool::new(true)),
        })
    }
}

/// The whole API as a router, ready to serve or to test with `oneshot`.
pub fn router(state: AppState, options: &ServerOptions) -> Router {
    let api = Router::new()
        .route("/api/jobs", post(jobs::submit).get(jobs::list))
        .route("/api/jobs/status", post(jobs::status))
        .route("/api/jobs/batch", post(batch::submit_batch))
        .route("/api/jobs/bulk", post(bulk::bulk))
        .route("/api/jobs/{id}", get(jobs::show).delete(jobs::delete))
        .route("/api/jobs/{id}/wait", get(jobs::wait))
        .route("/api/jobs/{id}/pause", post(jobs::pause))
        .route("/api/jobs/{id}/resume", post(jobs::resume))
        .route("/api/jobs/{id}/stop", post(jobs::stop))
        .route("/api/jobs/{id}/retry", post(jobs::retry))
        .route(
            "/api/jobs/{id}/cancel",
            post(jobs::cancel).patch(jobs::cancel_patch),
        )
        .route("/api/jobs/{id}/events", get(events::job_events))
        .route("/api/jobs/{id}/attempts", get(jobs::attempts))
        .route("/api/jobs/{id}/checkpoints", get(jobs::checkpoints))
        .route("/api/jobs/{id}/logs", get(jobs::logs))
        .route("/api/jobs/{id}/dependencies", get(workflows::dependencies))
        .route("/api/jobs/{id}/dependents", get(workflows::dependents))
        .route(
            "/api/workflows",
            post(workflows::submit).get(workflows::list),
        )
        .route("/api/workflows/{id}", get(workflows::show))
        .route("/api/workflows/{id}/pause", post(workflows::pause))
        .route("/api/workflows/{id}/resume", post(workflows::resume))
        .route("/api/workflows/{id}/retry", post(workflows::retry))
        .route("/api/workflows/{id}/cancel", post(workflows::cancel))
        .route("/api/queues/{name}/pause", post(workflows::pause_queue))
        .route("/api/queues/{name}/resume", post(workflows::resume_queue))
        .route(
            "/api/schedules",
            get(schedules::list).post(schedules::create),
        )
        .route(
            "/api/schedules/{id}",
            get(schedules::show)
                .put(schedules::put)
                .delete(schedules::delete),
        )
        .route("/api/schedule-preview", post(schedules::preview))
        .route("/api/schedules/{id}/trigger", post(schedules::trigger))
        .route("/api/schedules/{id}/pause", post(schedules::pause))
        .route("/api/schedules/{id}/resume", post(schedules::resume))
        .route("/api/schedules/{id}/history", get(schedules::history))
        .route("/api/pipelines", get(jobs::pipelines))
        .route(
            "/api/pipelines/{id}",
            get(jobs::pipeline)
                .put(jobs::put_pipeline)
                .delete(jobs::delete_pipeline),
        )
        .route("/api/events", get(events::all_events))
        .route("/api/ws", get(ws::upgrade))
        .route("/api/workers", get(workers::list))
        .route("/api/workers/ws", get(workers::upgrade))
        .route("/api/stats", get(meta::stats))
        .route("/api/servers", get(meta::servers))
        .route("/api/queues", get(meta::queues))
        .route("/api/resources", get(resources::resources))
        .route("/api/openapi.json", get(meta::openapi))
        .route("/metrics", get(meta::metrics))
        .route("/", get(dashboard::index))
        .route("/ui/{name}", get(dashboard::asset))
        .route("/api/whoami", get(meta::whoami))
        .route("/api/throughput", get(meta::throughput))
        .route("/healthz", get(meta::healthz))
        .route("/readyz", get(meta::readyz))
        .fallback(meta::not_found)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::middleware,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            limit::middleware,
        ))
        // Before the limits and auth, so that a refused request holds no permit and
        // counts as no failed authentication; inside `observe`, so that it is logged.
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            guard::middleware,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            meta::observe,
        ))
        .layer(DefaultBodyLimit::max(options.body_limit))
        .with_state(state);
    let api = match cors_layer(&options.cors_origins) {
        Some(cors) => api.layer(cors),
        None => api,
    };
    api.layer(axum::middleware::from_fn(auth::take_query_token))
        .layer(axum::middleware::from_fn(guard::headers))
        .layer(axum::middleware::from_fn(guard::close_after_refusal))
        .layer(axum::middleware::from_fn(guard::peer))
}

fn cors_layer(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        // The configuration checked each origin; a browser sends it without a final `/`.
        AllowOrigin::list(
            origins
                .iter()
                .filter_map(|o| o.trim().trim_end_matches('/').parse().ok()),
        )
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods(tower_http::cors::Any)
            .allow_headers(tower_http::cors::Any)
            .max_age(Duration::from_secs(3600)),
    )
}

/// Serves until `shutdown` completes, then stops accepting, lets streams drain, and
/// returns; the caller shuts the engine down after.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    options: &ServerOptions,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_all(vec![Listener::Tcp(listener)], state, options, shutdown).await
}

/// The OpenAPI document served at `/api/openapi.json`.
pub fn openapi_json() -> String {
    openapi::document()
}

mod openapi;
