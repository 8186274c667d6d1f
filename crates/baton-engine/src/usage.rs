//! The usage sampler: one thread for the whole engine that, while command or pipeline
//! jobs run, reads `/proc` once a tick, adds up each job's process group (CPU time of
//! its processes and of the children they waited for, resident memory), keeps each
//! job's last and peak values, checks its limits, and writes a `job.usage` event at
//! most every `event_every` per job. A job with a cgroup has its CPU time read from
//! the kernel instead, which also counts processes that already ended.
//!
//! The thread starts with the first tracked job and ends when none is left: an idle
//! engine has no sampler. What it costs is measured on itself (its thread's CPU time,
//! `CLOCK_THREAD_CPUTIME_ID`), for `baton bench resources` and `/metrics`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use baton_core::{JobLimits, Millis, Usage};
use baton_store::{Store, Update};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

use crate::cgroup::JobGroup;
use crate::clock::Clock;
use crate::limits::{Enforcer, LimitHit, LimitsReport, UsageOptions, cpu_rlimit};
use crate::procfs::{GroupTotals, page_size, scan_groups, ticks_per_second};
use crate::spawn_hook::SpawnHook;

/// What the sampler has done and measured since the engine started (`/metrics`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UsageStats {
    /// Attempts whose processes are measured now.
    pub jobs: usize,
    /// Their resident memory together at the last tick, in bytes.
    pub rss_bytes: u64,
    /// CPU time measured in jobs' processes since the engine started, in ms.
    pub cpu_ms: u64,
    /// Jobs killed for passing their memory limit, and their CPU-time limit.
    pub memory_kills: u64,
    pub cpu_kills: u64,
    /// Ticks the sampler ran.
    pub ticks: u64,
    /// CPU time of the sampler's own thread, in nanoseconds.
    pub sampler_cpu_ns: u64,
    /// Processes it read, over all ticks.
    pub processes_read: u64,
}

/// The engine's sampler (cheap to share).
pub(crate) struct Meter {
    shared: Arc<Shared>,
}

struct Shared {
    every: Duration,
    event_every: Duration,
    enforcer: Enforcer,
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    runtime: tokio::runtime::Handle,
    jobs: Mutex<Jobs>,
    /// Each ended attempt's last usage, until its outcome takes it.
    ended: Mutex<HashMap<(String, u64), Usage>>,
    stats: Stats,
    page: u64,
    ticks_per_s: u64,
}

#[derive(Default)]
struct Jobs {
    /// By job id: an engine runs one attempt of a job at a time.
    map: HashMap<String, Arc<Entry>>,
    /// The sampler's thread runs.
    sampling: bool,
}

#[derive(Default)]
struct Stats {
    rss_bytes: AtomicU64,
    cpu_ms: AtomicU64,
    memory_kills: AtomicU64,
    cpu_kills: AtomicU64,
    ticks: AtomicU64,
    sampler_cpu_ns: AtomicU64,
    processes_read: AtomicU64,
}

/// One attempt's measurements.
struct Entry {
    job_id: String,
    fence: u64,
    attempt: u32,
    limits: JobLimits,
    group: Option<JobGroup>,
    started: Instant,
    state: Mutex<EntryState>,
}

#[derive(Default)]
struct EntryState {
    /// The process group running now (a pipeline runs one per step).
    pgid: Option<i32>,
    /// CPU time of the groups of earlier steps (without a cgroup).
    carried_ms: u64,
    /// The most CPU time seen in the current group.
    group_ms: u64,
    cpu_ms: u64,
    rss: u64,
    peak: u64,
    /// When it was last measured; `None` before the first measurement.
    at: Option<Millis>,
    published: Option<Instant>,
    hit: Option<LimitHit>,
}

impl Entry {
    fn lock(&self) -> MutexGuard<'_, EntryState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn usage(&self, st: &EntryState) -> Option<Usage> {
        Some(Usage {
            attempt: self.attempt,
            cpu_ms: st.cpu_ms,
            rss_bytes: st.rss,
            peak_rss_bytes: st.peak,
            at: st.at?,
        })
    }

    /// Kills every process of the attempt: its process group, and with a cgroup every
    /// process in it.
    fn kill(&self, pgid: Option<i32>) {
        if let Some(pgid) = pgid.filter(|p| *p > 1) {
            let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
        }
        if let Some(g) = &self.group {
            g.kill_all();
        }
    }
}

impl Meter {
    pub(crate) fn new(
        options: &UsageOptions,
        enforcer: Enforcer,
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
    ) -> Meter {
        Meter {
            shared: Arc::new(Shared {
                every: options.sample_every,
                event_every: options.event_every,
                enforcer,
                store,
                clock,
                runtime: tokio::runtime::Handle::current(),
                jobs: Mutex::default(),
                ended: Mutex::default(),
                stats: Stats::default(),
                page: page_size(),
                ticks_per_s: ticks_per_second(),
            }),
        }
    }

    /// Starts measuring an attempt; with limits and cgroups, makes its group. The
    /// returned handle ends the measurement when dropped.
    pub(crate) fn track(
        &self,
        job_id: &str,
        fence: u64,
        attempt: u32,
        limits: JobLimits,
    ) -> std::io::Result<Tracked> {
        let group = match self.shared.enforcer.cgroups() {
            Some(c) if !limits.is_empty() => Some(c.create(&limits)?),
            _ => None,
        };
        let entry = Arc::new(Entry {
            job_id: job_id.to_owned(),
            fence,
            attempt,
            limits,
            group,
            started: Instant::now(),
            state: Mutex::default(),
        });
        let start = {
            let mut jobs = self.shared.lock();
            jobs.map.insert(job_id.to_owned(), entry.clone());
            !std::mem::replace(&mut jobs.sampling, true)
        };
        if start {
            let shared = self.shared.clone();
            let spawned = std::thread::Builder::new()
                .name("baton-usage".into())
                .spawn(move || sample(shared));
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start the usage sampler");
                self.shared.lock().sampling = false;
            }
        }
        Ok(Tracked {
            shared: self.shared.clone(),
            entry,
        })
    }

    /// The latest measurement of the job's attempt running here, if any.
    pub(crate) fn live(&self, job_id: &str) -> Option<Usage> {
        let entry = self.shared.lock().map.get(job_id).cloned()?;
        let st = entry.lock();
        entry.usage(&st)
    }

    /// The last measurement of an ended attempt, for its outcome (taken once).
    pub(crate) fn take_final(&self, job_id: &str, fence: u64) -> Option<Usage> {
        self.shared
            .ended
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&(job_id.to_owned(), fence))
    }

    pub(crate) fn stats(&self) -> UsageStats {
        let s = &self.shared.stats;
        UsageStats {
            jobs: self.shared.lock().map.len(),
            rss_bytes: s.rss_bytes.load(Ordering::Relaxed),
            cpu_ms: s.cpu_ms.load(Ordering::Relaxed),
            memory_kills: s.memory_kills.load(Ordering::Relaxed),
            cpu_kills: s.cpu_kills.load(Ordering::Relaxed),
            ticks: s.ticks.load(Ordering::Relaxed),
            sampler_cpu_ns: s.sampler_cpu_ns.load(Ordering::Relaxed),
            processes_read: s.processes_read.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn report(&self) -> LimitsReport {
        self.shared
            .enforcer
            .report(self.shared.every, self.shared.event_every)
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Jobs> {
        self.jobs.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One attempt under measurement; dropping it ends the measurement, keeps its last
/// usage for the outcome, and removes its cgroup.
pub(crate) struct Tracked {
    shared: Arc<Shared>,
    entry: Arc<Entry>,
}

impl Tracked {
    pub(crate) fn limits(&self) -> &JobLimits {
        &self.entry.limits
    }

    /// Whether `cpus` is asked for and cannot be enforced here.
    pub(crate) fn cpus_unenforced(&self) -> bool {
        self.entry.limits.cpus.is_some() && self.entry.group.is_none()
    }

    /// What the next process of the attempt must do before its program runs: enter
    /// the job's cgroup, or take an `RLIMIT_CPU` for the CPU time the job has left.
    /// `None` for a job without limits, which keeps the fast spawn path.
    pub(crate) fn spawn_hook(&self) -> Option<SpawnHook> {
        let mut hook = SpawnHook::default();
        match &self.entry.group {
            Some(g) => hook.procs = g.procs_files(),
            None => {
                if let Some(limit) = self.entry.limits.cpu_time {
                    let used = Duration::from_millis(self.entry.lock().cpu_ms);
                    hook.cpu_limit = Some(cpu_rlimit(limit.saturating_sub(used)));
                }
            }
        }
        (!hook.is_empty()).then_some(hook)
    }

    /// The attempt's process group runs now: the sampler measures it from its next
    /// tick.
    pub(crate) fn started(&self, pgid: i32) {
        let mut st = self.entry.lock();
        st.carried_ms += st.group_ms;
        st.group_ms = 0;
        st.pgid = Some(pgid);
    }

    /// The group's leader has exited (`signal` killed it, if one did): the group is
    /// no longer measured. Returns the limit the attempt passed, if it did: seen by
    /// the sampler, by the kernel (an OOM kill in its cgroup), or by `RLIMIT_CPU`.
    pub(crate) fn process_ended(&self, signal: Option<i32>) -> Option<LimitHit> {
        let entry = &self.entry;
        let group_cpu = entry.group.as_ref().and_then(JobGroup::cpu_ms);
        if let Some(g) = &entry.group {
            // As with the process group: when the main process ends, so does the rest
            // of the cgroup (a process that left the group with `setsid` too).
            g.kill_all();
        }
        let mut st = entry.lock();
        st.pgid = None;
        if let Some(ms) = group_cpu
            && ms > st.cpu_ms
        {
            self.shared
                .stats
                .cpu_ms
                .fetch_add(ms - st.cpu_ms, Ordering::Relaxed);
            st.cpu_ms = ms;
            st.at = Some(self.shared.clock.now());
        }
        if st.hit.is_none() {
            st.hit = check(entry, &st, true, &self.shared.stats);
        }
        if st.hit.is_none()
            && signal == Some(Signal::SIGXCPU as i32)
            && let Some(limit) = entry.limits.cpu_time
        {
            self.shared.stats.cpu_kills.fetch_add(1, Ordering::Relaxed);
            st.hit = Some(LimitHit::Cpu {
                used: Duration::from_millis(st.cpu_ms).max(limit),
                limit,
            });
        }
        st.hit
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        let entry = &self.entry;
        {
            let mut jobs = self.shared.lock();
            if jobs
                .map
                .get(&entry.job_id)
                .is_some_and(|e| Arc::ptr_eq(e, entry))
            {
                jobs.map.remove(&entry.job_id);
            }
        }
        let usage = entry.usage(&entry.lock());
        if let Some(usage) = usage {
            self.shared
                .ended
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert((entry.job_id.clone(), entry.fence), usage);
        }
        if entry.group.as_ref().is_some_and(|g| !g.try_remove()) {
            // The group's last processes are still being reaped: wait for them off the
            // runtime's threads.
            let entry = entry.clone();
            self.shared.runtime.spawn_blocking(move || {
                if let Some(g) = &entry.group {
                    g.remove();
                }
            });
        }
    }
}

/// Whether the attempt passed a limit, from what was measured last, and kills its
/// processes if so. `ended`: its process has exited; then only the kernel's OOM kill
/// counts (it may be what ended it): a process that ended by itself between two
/// samples was not stopped by a limit.
fn check(entry: &Entry, st: &EntryState, ended: bool, stats: &Stats) -> Option<LimitHit> {
    let limits = &entry.limits;
    let hit = if let Some(limit) = limits.memory
        && let Some(g) = &entry.group
        && g.oom_kills() > 0
    {
        Some(LimitHit::Memory {
            used: g.memory_peak().unwrap_or(limit).max(st.peak),
            limit,
            by_kernel: true,
        })
    } else if ended {
        None
    } else if let Some(limit) = limits.memory
        && entry.group.is_none()
        && st.rss > limit
    {
        Some(LimitHit::Memory {
            used: st.rss,
            limit,
            by_kernel: false,
        })
    } else if let Some(limit) = limits.cpu_time
        && Duration::from_millis(st.cpu_ms) > limit
    {
        Some(LimitHit::Cpu {
            used: Duration::from_millis(st.cpu_ms),
            limit,
        })
    } else {
        None
    };
    if let Some(h) = &hit {
        let counter = match h {
            LimitHit::Memory { .. } => &stats.memory_kills,
            LimitHit::Cpu { .. } => &stats.cpu_kills,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        if !ended {
            tracing::info!(job_id = %entry.job_id, limit = ?h, "the job passed a limit; killing its processes");
            entry.kill(st.pgid);
        }
    }
    hit
}

/// The sampler's thread: a tick every `every` while any attempt is tracked.
fn sample(shared: Arc<Shared>) {
    let mut groups: HashMap<i32, GroupTotals> = HashMap::new();
    let mut buf = Vec::with_capacity(1024);
    let mut next = Instant::now() + shared.every;
    loop {
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
        next += shared.every;
        // A tick that ran long does not make the next ones run back to back.
        if next < Instant::now() {
            next = Instant::now() + shared.every;
        }
        let cpu0 = thread_cpu_ns();
        let entries: Vec<Arc<Entry>> = {
            let mut jobs = shared.lock();
            if jobs.map.is_empty() {
                jobs.sampling = false;
                return;
            }
            jobs.map.values().cloned().collect()
        };
        tick(&shared, &entries, &mut groups, &mut buf);
        let stats = &shared.stats;
        stats.ticks.fetch_add(1, Ordering::Relaxed);
        if let (Some(a), Some(b)) = (cpu0, thread_cpu_ns()) {
            stats
                .sampler_cpu_ns
                .fetch_add(b.saturating_sub(a), Ordering::Relaxed);
        }
    }
}

fn tick(
    shared: &Shared,
    entries: &[Arc<Entry>],
    groups: &mut HashMap<i32, GroupTotals>,
    buf: &mut Vec<u8>,
) {
    groups.clear();
    for e in entries {
        if let Some(pgid) = e.lock().pgid {
            groups.insert(pgid, GroupTotals::default());
        }
    }
    if groups.is_empty() {
        return;
    }
    let read = scan_groups(groups, buf);
    shared
        .stats
        .processes_read
        .fetch_add(read as u64, Ordering::Relaxed);
    let now = shared.clock.now();
    let mut rss_total = 0;
    let mut publish = Vec::new();
    for e in entries {
        // Read before the entry's lock: a cgroup's files are the kernel's.
        let group_cpu = e.group.as_ref().and_then(JobGroup::cpu_ms);
        let mut st = e.lock();
        let Some(pgid) = st.pgid else { continue };
        let totals = groups.get(&pgid).copied().unwrap_or_default();
        if totals.processes > 0 {
            let ms = totals.cpu_ticks * 1000 / shared.ticks_per_s;
            st.group_ms = st.group_ms.max(ms);
            st.rss = totals.rss_pages * shared.page;
            st.peak = st.peak.max(st.rss);
        }
        // CPU time never goes back: a process reaped by one outside the job takes its
        // time with it.
        let cpu = group_cpu.unwrap_or(st.carried_ms + st.group_ms);
        if cpu > st.cpu_ms {
            shared
                .stats
                .cpu_ms
                .fetch_add(cpu - st.cpu_ms, Ordering::Relaxed);
            st.cpu_ms = cpu;
        }
        st.at = Some(now);
        rss_total += st.rss;
        if st.hit.is_none() {
            st.hit = check(e, &st, false, &shared.stats);
        }
        let since = st.published.unwrap_or(e.started);
        if since.elapsed() >= shared.event_every
            && let Some(u) = e.usage(&st)
        {
            st.published = Some(Instant::now());
            publish.push((e.job_id.clone(), e.fence, u));
        }
    }
    shared.stats.rss_bytes.store(rss_total, Ordering::Relaxed);
    for (job_id, fence, usage) in publish {
        let store = shared.store.clone();
        let at = usage.at;
        shared.runtime.spawn(async move {
            // A stale token means the attempt ended meanwhile: its outcome carries it.
            if let Err(e) = store.update(&job_id, fence, at, Update::Usage(usage)).await
                && !e.is_refusal()
            {
                tracing::debug!(job_id = %job_id, error = %e, "cannot record a job's usage");
            }
        });
    }
}

/// This thread's CPU time, in nanoseconds.
fn thread_cpu_ns() -> Option<u64> {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID).ok()?;
    Some(t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
}
