//! `/api/resources`: CPU, memory and disk now and over the last minutes, the limits
//! they are held against, and the alerts that are raised.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use baton_core::Millis;
use serde::Serialize;
use sysinfo::{Disks, ProcessRefreshKind, ProcessesToUpdate, System};
use tokio_util::sync::CancellationToken;

use crate::AppState;

/// Seconds between samples.
const EVERY: Duration = Duration::from_secs(5);
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
    /// This server's own resident memory and CPU use (100 is one core).
    pub process_rss_bytes: u64,
    pub process_cpu_pct: f32,
    /// The filesystem that holds the store.
    pub disk_available_bytes: u64,
    pub disk_total_bytes: u64,
}

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct Limits {
    pub cpu_pct: f32,
    pub memory_pct: f32,
    /// An alert is raised below this share of free disk.
    pub disk_free_pct: f32,
}

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct Alert {
    pub resource: String,
    pub message: String,
}

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct ResourcesResponse {
    pub now: Option<Sample>,
    /// Oldest first, one sample every 5 s.
    pub history: Vec<Sample>,
    pub limits: Limits,
    pub alerts: Vec<Alert>,
    /// How command and pipeline jobs' resource limits are enforced on this server.
    pub job_limits: JobLimitsInfo,
}

/// The mechanism that holds jobs to their `limits`, and how it holds each one.
#[derive(Clone, Debug, Default, Serialize, utoipa::ToSchema)]
pub struct JobLimitsInfo {
    /// `"cgroup v2"`, `"cgroup v1"` (a cgroup per job with limits), or `"rlimit"`
    /// (`setrlimit` and the sampler killing a job's process group).
    pub mechanism: String,
    pub memory: String,
    pub cpu_time: String,
    pub cpus: String,
    /// `cpus` is held only by a cgroup's CPU quota.
    pub cpus_enforced: bool,
    /// The folders jobs' cgroups are made in.
    pub cgroups: Option<String>,
    /// Why cgroups are not used, when they are not.
    pub cgroups_unavailable: Option<String>,
    /// How often running jobs' processes are measured and checked (`"1s"`).
    pub sample_every: String,
    /// The least time between two `job.usage` events of a job (`"5s"`).
    pub usage_event_every: String,
}

impl From<baton_engine::LimitsReport> for JobLimitsInfo {
    fn from(r: baton_engine::LimitsReport) -> Self {
        Self {
            mechanism: r.mechanism,
            memory: r.memory,
            cpu_time: r.cpu_time,
            cpus: r.cpus,
            cpus_enforced: r.cpus_enforced,
            cgroups: r.cgroups,
            cgroups_unavailable: r.cgroups_unavailable,
            sample_every: baton_core::duration::format(r.sample_every),
            usage_event_every: baton_core::duration::format(r.event_every),
        }
    }
}

pub struct Resources {
    samples: Mutex<VecDeque<Sample>>,
    limits: Limits,
}

impl Resources {
    /// Samples every few seconds until `stop` fires; `data_dir` names the disk to watch.
    pub fn start(data_dir: Option<PathBuf>, stop: CancellationToken) -> Arc<Resources> {
        let resources = Arc::new(Resources {
            samples: Mutex::new(VecDeque::with_capacity(KEEP)),
            limits: Limits {
                cpu_pct: 95.0,
                memory_pct: 90.0,
                disk_free_pct: 5.0,
            },
        });
        let r = resources.clone();
        tokio::spawn(async move {
            let sampler = Arc::new(Mutex::new(Sampler::new(data_dir)));
            let mut tick = tokio::time::interval(EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stop.cancelled() => return,
                }
                let s = sampler.clone();
                // Reading /proc is blocking IO.
                let Ok(sample) =
                    tokio::task::spawn_blocking(move || s.lock().map(|mut s| s.sample()).ok())
                        .await
                else {
                    continue;
                };
                if let (Some(sample), Ok(mut samples)) = (sample, r.samples.lock()) {
                    if samples.len() == KEEP {
                        samples.pop_front();
                    }
                    samples.push_back(sample);
                }
            }
        });
        resources
    }

    pub fn snapshot(&self) -> ResourcesResponse {
        let history: Vec<Sample> = self
            .samples
            .lock()
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default();
        let now = history.last().cloned();
        let mut alerts = Vec::new();
        if let Some(n) = &now {
            let l = &self.limits;
            if n.cpu_pct > l.cpu_pct {
                alerts.push(Alert {
                    resource: "cpu".into(),
                    message: format!("CPU use is {:.0}% (limit {:.0}%)", n.cpu_pct, l.cpu_pct),
                });
            }
            if n.memory_total_bytes > 0 {
                let pct = n.memory_used_bytes as f32 * 100.0 / n.memory_total_bytes as f32;
                if pct > l.memory_pct {
                    alerts.push(Alert {
                        resource: "memory".into(),
                        message: format!("memory use is {pct:.0}% (limit {:.0}%)", l.memory_pct),
                    });
                }
            }
            if n.disk_total_bytes > 0 {
                let free = n.disk_available_bytes as f32 * 100.0 / n.disk_total_bytes as f32;
                if free < l.disk_free_pct {
                    alerts.push(Alert {
                        resource: "disk".into(),
                        message: format!(
                            "only {free:.1}% of the store's disk is free (limit {:.0}%)",
                            l.disk_free_pct
                        ),
                    });
                }
            }
        }
        ResourcesResponse {
            now,
            history,
            limits: self.limits.clone(),
            alerts,
            job_limits: JobLimitsInfo::default(),
        }
    }
}

struct Sampler {
    system: System,
    disks: Disks,
    data_dir: Option<PathBuf>,
    pid: sysinfo::Pid,
}

impl Sampler {
    fn new(data_dir: Option<PathBuf>) -> Sampler {
        Sampler {
            system: System::new(),
            disks: Disks::new_with_refreshed_list(),
            data_dir: data_dir.and_then(|d| d.canonicalize().ok()),
            pid: sysinfo::Pid::from_u32(std::process::id()),
        }
    }

    fn sample(&mut self) -> Sample {
        self.system.refresh_cpu_usage();
        self.system.refresh_memory();
        self.system.refresh_processes_specifics(
            ProcessesToUpdate::Some(&[self.pid]),
            false,
            ProcessRefreshKind::nothing().with_memory().with_cpu(),
        );
        self.disks.refresh(true);
        let process = self.system.process(self.pid);
        // The disk whose mount point is the longest prefix of the store's folder.
        let disk = self.data_dir.as_ref().and_then(|dir| {
            self.disks
                .iter()
                .filter(|d| dir.starts_with(d.mount_point()))
                .max_by_key(|d| d.mount_point().as_os_str().len())
        });
        Sample {
            at: chrono::Utc::now().timestamp_millis(),
            cpu_pct: self.system.global_cpu_usage(),
            memory_used_bytes: self.system.used_memory(),
            memory_total_bytes: self.system.total_memory(),
            process_rss_bytes: process.map_or(0, |p| p.memory()),
            process_cpu_pct: process.map_or(0.0, |p| p.cpu_usage()),
            disk_available_bytes: disk.map_or(0, |d| d.available_space()),
            disk_total_bytes: disk.map_or(0, |d| d.total_space()),
        }
    }
}

#[utoipa::path(get, operation_id = "resources", path = "/api/resources", tag = "meta",
    responses((status = 200, body = ResourcesResponse)))]
pub async fn resources(State(s): State<AppState>) -> Json<ResourcesResponse> {
    let mut r = s.resources.snapshot();
    r.job_limits = s.engine.limits_report().into();
    Json(r)
}
