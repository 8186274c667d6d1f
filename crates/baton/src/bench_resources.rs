//! `baton bench resources`: what the usage sampler costs with many running jobs.
//!
//! It starts `jobs` command jobs that sleep (`sleep 600`, each its own process group),
//! waits until the sampler measures every one of them, and then measures for
//! `duration`: the CPU time of the sampler's own thread (read by the thread itself
//! with `CLOCK_THREAD_CPUTIME_ID` around each tick) as a share of one core
//! (`sampler_cpu_pct`), its time per tick, the processes it reads per tick, and the
//! whole engine's CPU time over the same window (`engine_cpu_pct`: the sampler, the
//! `job.usage` writes and events it causes, and everything else an engine with that
//! many sleeping jobs does). A figure that cannot be measured fails the bench.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use baton_engine::{Engine, EventKind, JobSpec, UsageOptions};
use baton_store::SqliteStore;
use serde_json::{Value, json};

use crate::bench_proc;

pub struct Settings {
    pub jobs: usize,
    pub duration: Duration,
    pub sample_every: Duration,
}

pub async fn run(store: SqliteStore, s: Settings, durability: &str) -> Result<Value> {
    if s.jobs == 0 {
        bail!("--jobs must be at least 1");
    }
    if s.duration < Duration::from_secs(1) || s.sample_every.is_zero() {
        bail!("--duration must be at least 1s, and --sample-every more than 0s");
    }
    let engine = Engine::builder()
        .store(Arc::new(store))
        .queue("default", s.jobs)
        .usage(UsageOptions {
            sample_every: s.sample_every,
            ..UsageOptions::default()
        })
        .build()
        .await?;
    let result = measure(&engine, &s).await;
    // The sleepers are the bench's: none outlives it.
    for id in engine.running_jobs() {
        let _ = engine.stop(&id, true).await;
    }
    engine.shutdown(Duration::from_secs(10)).await;
    let mut report = result?;
    report["durability"] = json!(durability);
    Ok(report)
}

async fn measure(engine: &Engine, s: &Settings) -> Result<Value> {
    let specs = (0..s.jobs)
        .map(|_| JobSpec::command(["sleep", "600"]).max_attempts(1))
        .collect();
    engine.submit_many(specs).await?;
    // Every job measured at least once: its process group exists and was read.
    let deadline = Instant::now() + Duration::from_secs(30) + s.sample_every * 3;
    loop {
        let running = engine.running_jobs();
        let mut measured = 0;
        for id in &running {
            if engine.get(id).await?.usage.is_some() {
                measured += 1;
            }
        }
        if measured == s.jobs {
            break;
        }
        if Instant::now() > deadline {
            let stats = engine.usage_stats();
            bail!(
                "only {measured} of {} sleeping jobs were measured after 30 s ({} running, the sampler ran {} ticks); the sampler reads /proc/<pid>/stat, which this bench needs",
                s.jobs,
                running.len(),
                stats.ticks
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut events = engine.subscribe().await?;
    let before = engine.usage_stats();
    let cpu_before = bench_proc::cpu_us()?;
    let t0 = Instant::now();
    let mut usage_events = 0u64;
    let window = tokio::time::sleep(s.duration);
    tokio::pin!(window);
    loop {
        tokio::select! {
            _ = &mut window => break,
            e = events.next() => match e {
                Some(e) if e.kind == EventKind::Usage => usage_events += 1,
                Some(_) => {}
                None => bail!("the engine's event stream ended during the bench"),
            },
        }
    }
    let elapsed = t0.elapsed();
    let after = engine.usage_stats();
    let cpu_after = bench_proc::cpu_us()?;
    let ticks = after.ticks - before.ticks;
    if ticks == 0 {
        bail!(
            "the sampler did not tick in {} with {} jobs running",
            baton_core::duration::format(s.duration),
            after.jobs
        );
    }
    let sampler_ns = after.sampler_cpu_ns - before.sampler_cpu_ns;
    if sampler_ns == 0 {
        bail!(
            "the sampler's thread CPU time did not move over {ticks} ticks: this system does not report CLOCK_THREAD_CPUTIME_ID"
        );
    }
    if after.jobs != s.jobs {
        bail!(
            "{} of {} jobs were measured at the end: some sleeping job ended during the bench",
            after.jobs,
            s.jobs
        );
    }
    let pct = |ns: f64| (ns / elapsed.as_nanos() as f64 * 100.0 * 1000.0).round() / 1000.0;
    let processes = (after.processes_read - before.processes_read) as f64 / ticks as f64;
    Ok(json!({
        "bench": "resources",
        "jobs": s.jobs,
        "sample_every": baton_core::duration::format(s.sample_every),
        "duration_s": elapsed.as_secs_f64(),
        "ticks": ticks,
        "processes_per_tick": processes.round(),
        "sampler_cpu_pct": pct(sampler_ns as f64),
        "sampler_tick_us": (sampler_ns as f64 / ticks as f64 / 1000.0).round(),
        "engine_cpu_pct": pct(cpu_after.saturating_sub(cpu_before) as f64 * 1000.0),
        "usage_events_per_s": (usage_events as f64 / elapsed.as_secs_f64() * 10.0).round() / 10.0,
        "rss_of_jobs_mb": (after.rss_bytes as f64 / 1e6).round(),
    }))
}
