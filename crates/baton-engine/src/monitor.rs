//! The machine monitor: samples CPU, memory, the load, this process and the store's
//! disk every `sample_every` (a second by default) and hands each sample to admission
//! control (`admission.rs`), which also keeps the last one for `/api/resources`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use baton_core::Millis;
use sysinfo::{ProcessRefreshKind, ProcessesToUpdate, System};

use crate::admission::Reading;
use crate::engine::Inner;

/// One sample of the machine.
#[derive(Clone, Debug, PartialEq)]
pub struct MachineSample {
    pub at: Millis,
    /// The whole machine's CPU use, 0 to 100.
    pub cpu_pct: f32,
    pub memory_used_bytes: u64,
    pub memory_total_bytes: u64,
    /// This process's resident memory and CPU use (100 is one core).
    pub process_rss_bytes: u64,
    pub process_cpu_pct: f32,
    /// The filesystem of the store's folder; `None` when it is not watched or cannot
    /// be read. Available is what a process without root's reserve may still write;
    /// used is what files take.
    pub disk_available_bytes: Option<u64>,
    pub disk_used_bytes: Option<u64>,
    pub disk_total_bytes: Option<u64>,
    /// The one-minute load average.
    pub load_1m: f64,
}

impl MachineSample {
    /// What the thresholds are held against.
    pub fn reading(&self) -> Reading {
        let pct = |part: u64, whole: u64| (whole > 0).then(|| part as f64 * 100.0 / whole as f64);
        Reading {
            memory_pct: pct(self.memory_used_bytes, self.memory_total_bytes),
            // As `df` counts it: space reserved for root is neither free nor used, and
            // a filesystem with a large reserve would otherwise look fuller than it is.
            disk_free_pct: match (self.disk_available_bytes, self.disk_used_bytes) {
                (Some(free), Some(used)) => pct(free, free + used),
                _ => None,
            },
            load: Some(self.load_1m),
        }
    }
}

/// Samples until shutdown; the first sample is taken at once.
pub(crate) async fn run(inner: Arc<Inner>, every: Duration) {
    let disk = inner.pressure.options().disk.clone();
    let mut sampler = Some(Sampler::new(disk));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = inner.shutdown.cancelled() => return,
        }
        let Some(mut s) = sampler.take() else { return };
        let now = inner.clock.now();
        // Reading /proc and the filesystem is blocking IO.
        let Ok((s, sample)) = tokio::task::spawn_blocking(move || {
            let sample = s.sample(now);
            (s, sample)
        })
        .await
        else {
            tracing::warn!("the machine monitor's sampler panicked; no more samples");
            return;
        };
        sampler = Some(s);
        inner.pressure.record_sample(sample);
    }
}

struct Sampler {
    system: System,
    disk: Option<PathBuf>,
    pid: sysinfo::Pid,
}

impl Sampler {
    fn new(disk: Option<PathBuf>) -> Sampler {
        Sampler {
            system: System::new(),
            disk,
            pid: sysinfo::Pid::from_u32(std::process::id()),
        }
    }

    // statvfs's counts are u64 on Linux and narrower elsewhere.
    #[allow(clippy::unnecessary_cast)]
    fn sample(&mut self, at: Millis) -> MachineSample {
        self.system.refresh_cpu_usage();
        self.system.refresh_memory();
        self.system.refresh_processes_specifics(
            ProcessesToUpdate::Some(&[self.pid]),
            false,
            ProcessRefreshKind::nothing().with_memory().with_cpu(),
        );
        let process = self.system.process(self.pid);
        let disk = self.disk.as_deref().and_then(|dir| {
            nix::sys::statvfs::statvfs(dir)
                .map_err(|e| tracing::debug!(dir = %dir.display(), error = %e, "cannot read the store's disk"))
                .ok()
        });
        let fragment = |s: &nix::sys::statvfs::Statvfs| s.fragment_size() as u64;
        MachineSample {
            at,
            cpu_pct: self.system.global_cpu_usage(),
            memory_used_bytes: self.system.used_memory(),
            memory_total_bytes: self.system.total_memory(),
            process_rss_bytes: process.map_or(0, |p| p.memory()),
            process_cpu_pct: process.map_or(0.0, |p| p.cpu_usage()),
            disk_available_bytes: disk
                .as_ref()
                .map(|s| s.blocks_available() as u64 * fragment(s)),
            disk_used_bytes: disk
                .as_ref()
                .map(|s| (s.blocks() as u64).saturating_sub(s.blocks_free() as u64) * fragment(s)),
            disk_total_bytes: disk.as_ref().map(|s| s.blocks() as u64 * fragment(s)),
            load_1m: System::load_average().one,
        }
    }
}
