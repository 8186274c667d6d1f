//! `/api/resources`: CPU, memory, load and disk now and over the last minutes, from
//! the engine's machine monitor, with the thresholds of admission control and the ones
//! crossed now.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::extract::State;
use baton_core::Millis;
use baton_engine::{Engine, MachineSample, Resource};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::AppState;

/// Milliseconds between the samples kept in the history.
const EVERY_MS: Millis = 5_000;
/// Samples kept: ten minutes.
const KEEP: usize = 120;

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct Sample {
    #[serde(with = "baton_core::time::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub at: Millis,
    /// The whole machine's CPU use, 0 to 100.
    pub cpu_pct: f32,
    pub memory_used_bytes: u64,
    pub memory_total_bytes: u64,
    /// The one-minute load average.
    pub load_1m: f64,
    /// This server's own resident memory and CPU use (100 is one core).
    pub process_rss_bytes: u64,
    pub process_cpu_pct: f32,
    /// The filesystem that holds the store (0 when it is not watched: a PostgreSQL
    /// store).
    pub disk_available_bytes: u64,
    /// What files take on it; `disk_free_below` counts available against available
    /// and used, as `df` does (root's reserve is neither).
    pub disk_used_bytes: u64,
    pub disk_total_bytes: u64,
}

impl From<&MachineSample> for Sample {
    fn from(s: &MachineSample) -> Self {
        Sample {
            at: s.at,
            cpu_pct: s.cpu_pct,
            memory_used_bytes: s.memory_used_bytes,
            memory_total_bytes: s.memory_total_bytes,
            load_1m: s.load_1m,
            process_rss_bytes: s.process_rss_bytes,
            process_cpu_pct: s.process_cpu_pct,
            disk_available_bytes: s.disk_available_bytes.unwrap_or(0),
            disk_used_bytes: s.disk_used_bytes.unwrap_or(0),
            disk_total_bytes: s.disk_total_bytes.unwrap_or(0),
        }
    }
}

/// The thresholds of admission control (`[resources]` in `baton.toml`); null: not
/// watched.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct Limits {
    /// Used memory above this percentage crosses.
    pub memory_pct: Option<f64>,
    /// Free space on the store's disk below this percentage crosses (and refuses new
    /// jobs with 507).
    pub disk_free_pct: Option<f64>,
    /// A one-minute load average above this crosses.
    pub load: Option<f64>,
}

/// A threshold crossed now.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct Alert {
    /// `memory`, `disk` or `load`.
    pub resource: String,
    /// The last reading (percent, or the load).
    pub value: Option<f64>,
    pub threshold: f64,
    /// `memory 93 % > 90 %`
    pub message: String,
}

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct ResourcesResponse {
    pub now: Option<Sample>,
    /// Oldest first, one sample every 5 s.
    pub history: Vec<Sample>,
    pub limits: Limits,
    pub alerts: Vec<Alert>,
    /// Why heavy queues start no new jobs now; null when they run.
    pub held: Option<String>,
    /// How command and pipeline jobs' resource limits are enforced on this server.
    pub job_limits: baton_core::LimitsReport,
    /// The concurrency limits across queues (`concurrency_limits` in `baton.toml`),
    /// with the slots each holds now.
    pub concurrency_limits: Vec<baton_core::concurrency::LimitUse>,
}

pub struct Resources {
    engine: Engine,
    samples: Mutex<VecDeque<Sample>>,
}

impl Resources {
    /// Keeps a sample of the engine's monitor every 5 s until `stop` fires.
    pub fn start(engine: Engine, stop: CancellationToken) -> Arc<Resources> {
        let resources = Arc::new(Resources {
            engine: engine.clone(),
            samples: Mutex::new(VecDeque::with_capacity(KEEP)),
        });
        let r = resources.clone();
        let mut rx = engine.pressure().samples();
        tokio::spawn(async move {
            loop {
                let sample = rx.borrow_and_update().clone();
                if let Some(sample) = sample {
                    r.keep(Sample::from(&*sample));
                }
                tokio::select! {
                    changed = rx.changed() => if changed.is_err() { return },
                    _ = stop.cancelled() => return,
                }
            }
        });
        resources
    }

    fn keep(&self, sample: Sample) {
        let Ok(mut samples) = self.samples.lock() else {
            return;
        };
        if samples
            .back()
            .is_some_and(|last| sample.at - last.at < EVERY_MS)
        {
            return;
        }
        if samples.len() == KEEP {
            samples.pop_front();
        }
        samples.push_back(sample);
    }

    pub fn snapshot(&self) -> ResourcesResponse {
        let pressure = self.engine.pressure();
        // The latest sample goes into the history first, as the keeping task would (it
        // may not have run yet): the history never lags the sample shown as `now`.
        let latest = pressure.samples().borrow().as_deref().map(Sample::from);
        if let Some(sample) = &latest {
            self.keep(sample.clone());
        }
        let history: Vec<Sample> = self
            .samples
            .lock()
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default();
        let now = latest.or_else(|| history.last().cloned());
        let gauges = pressure.gauges();
        let limit = |r: Resource| gauges.iter().find(|g| g.resource == r).map(|g| g.threshold);
        let alerts = gauges
            .iter()
            .filter(|g| g.crossed)
            .map(|g| Alert {
                resource: g.resource.as_str().to_owned(),
                value: g.value,
                threshold: g.threshold,
                message: g.message.clone().unwrap_or_default(),
            })
            .collect();
        ResourcesResponse {
            now,
            history,
            limits: Limits {
                memory_pct: limit(Resource::Memory),
                disk_free_pct: limit(Resource::Disk),
                load: limit(Resource::Load),
            },
            alerts,
            held: pressure.held(),
            job_limits: baton_core::LimitsReport::default(),
            concurrency_limits: Vec::new(),
        }
    }
}

#[utoipa::path(get, operation_id = "resources", path = "/api/resources", tag = "meta",
    responses((status = 200, body = ResourcesResponse),
        (status = 503, description = "the store cannot be read", body = baton_api::ErrorBody)))]
pub async fn resources(
    State(s): State<AppState>,
) -> crate::error::ApiResult<Json<ResourcesResponse>> {
    let mut r = s.resources.snapshot();
    r.job_limits = s.engine.limits_report();
    r.concurrency_limits = s.engine.concurrency_use().await?;
    Ok(Json(r))
}
