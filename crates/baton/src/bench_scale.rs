//! `baton bench scale`: whether the engine's costs stay flat as the store grows. At
//! each size of finished jobs in the table it times a claim (per job), the job list and
//! the counts; then it fills a queue with queued jobs and starts an engine over them in
//! a process of its own, reporting how long it takes to be ready and its memory.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use baton_core::{EventKind, Job};
use baton_engine::{Clock, Engine, JobFilter, JobSpec, State, SystemClock};
use baton_store::{ClaimRequest, SqliteOptions, SqliteStore, Store, Transition};
use serde_json::{Value, json};

pub struct Settings {
    /// Finished jobs in the table at each measurement, ascending.
    pub sizes: Vec<usize>,
    /// Queued jobs the restart is measured over (0: not measured).
    pub queued: usize,
    pub samples: usize,
}

/// Jobs claimed (and then completed) at each size.
const PROBE: usize = 5_000;
/// Jobs a claim takes at once, as a dispatcher does with free slots.
const CLAIM_BATCH: usize = 64;
/// The queue the restart is measured over.
const HELD: &str = "held";
/// What the child prints before its report, so the parent finds the report.
const REPORT: &str = "scale-child ";

pub async fn run(db: &Path, durability: baton_store::Durability, s: Settings) -> Result<Value> {
    let store = SqliteStore::open(SqliteOptions::new(db).durability(durability))
        .with_context(|| format!("cannot open {}", db.display()))?;
    let store: Arc<dyn Store> = Arc::new(store);
    let engine = Engine::builder()
        .store(store.clone())
        .queue("default", 256)
        .queue("probe", 1)
        .queue(HELD, 16)
        .handler("noop", |_ctx, _payload| async { Ok(Value::Null) })
        .build()
        .await?;
    engine.pause_queue("probe").await?;
    let mut rows = Vec::new();
    for &size in &s.sizes {
        fill_finished(&engine, size).await?;
        let finished = finished(store.as_ref()).await?;
        let claim_us = claim_per_job(&engine, store.as_ref()).await?;
        let list_ms = p50(s.samples, || async {
            let page = store
                .list(JobFilter {
                    limit: 50,
                    ..JobFilter::default()
                })
                .await?;
            if page.jobs.is_empty() {
                bail!("the job list is empty at {size} finished jobs");
            }
            Ok(())
        })
        .await?;
        let stats_ms = p50(s.samples, || async {
            store.counts().await?;
            Ok(())
        })
        .await?;
        rows.push(json!({
            "finished": finished,
            "claim_us_per_job": claim_us,
            "list_ms": list_ms,
            "stats_ms": stats_ms,
        }));
    }
    let mut report = json!({
        "bench": "scale",
        "sizes": rows,
    });
    if s.queued > 0 {
        fill_queued(&engine, s.queued).await?;
        engine.shutdown(Duration::from_secs(10)).await;
        drop(engine);
        store.close().await;
        drop(store);
        let child = restart_in_child(db, durability).await?;
        report["queued"] = json!(s.queued);
        for key in ["ready_ms", "rss_mb", "rss_after_claims_mb"] {
            report[key] = child[key].clone();
        }
    } else {
        engine.shutdown(Duration::from_secs(10)).await;
    }
    Ok(report)
}

async fn finished(store: &dyn Store) -> Result<u64> {
    let c = store.counts().await?;
    Ok(c.total(State::Completed) + c.total(State::Failed) + c.total(State::Cancelled))
}

/// Runs no-op jobs through the engine until the table holds `size` finished jobs.
async fn fill_finished(engine: &Engine, size: usize) -> Result<()> {
    let have = finished(engine.store().as_ref()).await? as usize;
    if have >= size {
        return Ok(());
    }
    let started = Instant::now();
    let mut events = engine.subscribe().await?;
    let missing = size - have;
    let submit = {
        let engine = engine.clone();
        tokio::spawn(async move {
            let mut left = missing;
            while left > 0 {
                let n = left.min(1_000);
                let specs = (0..n).map(|_| JobSpec::new("noop")).collect();
                engine.submit_many(specs).await?;
                left -= n;
            }
            anyhow::Ok(())
        })
    };
    let mut done = 0;
    while done < missing {
        let e = tokio::time::timeout(Duration::from_secs(60), events.next())
            .await
            .context("filling the store: no job ended for a minute")?
            .context("the event stream ended")?;
        match e.kind {
            EventKind::Completed => done += 1,
            EventKind::Failed => bail!("a filling job failed: {}", e.data),
            _ => {}
        }
    }
    submit.await??;
    eprintln!(
        "filled to {size} finished jobs in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Submits jobs to the paused probe queue, claims them in batches straight from the
/// store and times the claims alone; then completes them, so that nothing is left
/// running.
async fn claim_per_job(engine: &Engine, store: &dyn Store) -> Result<f64> {
    let specs: Vec<JobSpec> = (0..PROBE)
        .map(|_| JobSpec::new("noop").queue("probe"))
        .collect();
    for chunk in specs.chunks(1_000) {
        engine.submit_many(chunk.to_vec()).await?;
    }
    let server = engine.server().id.clone();
    let mut claimed: Vec<(Job, u64)> = Vec::with_capacity(PROBE);
    let mut busy = Duration::ZERO;
    loop {
        let now = SystemClock.now();
        let req = ClaimRequest {
            queue: "probe".into(),
            limit: CLAIM_BATCH,
            server_id: server.clone(),
            now,
            kinds: None,
        };
        let t = Instant::now();
        let got = store.claim(req).await?;
        busy += t.elapsed();
        if got.is_empty() {
            break;
        }
        claimed.extend(got.into_iter().map(|c| (c.job, c.fence)));
    }
    if claimed.len() != PROBE {
        bail!(
            "claimed {} of the {PROBE} probe jobs: the probe queue held others",
            claimed.len()
        );
    }
    let mut writes = tokio::task::JoinSet::new();
    for (job, fence) in claimed {
        let store = engine.store().clone();
        writes.spawn(async move {
            let now = SystemClock.now();
            store
                .record(
                    Transition::new(job.id, State::Completed, EventKind::Completed, now)
                        .fence(fence),
                )
                .await
        });
    }
    while let Some(r) = writes.join_next().await {
        r??;
    }
    Ok(busy.as_secs_f64() * 1e6 / PROBE as f64)
}

/// Submits `n` jobs to the held queue while it is paused.
async fn fill_queued(engine: &Engine, n: usize) -> Result<()> {
    engine.pause_queue(HELD).await?;
    let started = Instant::now();
    let mut left = n;
    let mut tasks = tokio::task::JoinSet::new();
    while left > 0 {
        let k = left.min(2_000);
        left -= k;
        let engine = engine.clone();
        tasks.spawn(async move {
            let specs = (0..k).map(|_| JobSpec::new("noop").queue(HELD)).collect();
            engine.submit_many(specs).await
        });
        while tasks.len() >= 4 {
            tasks
                .join_next()
                .await
                .context("a submit task vanished")???;
        }
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    eprintln!(
        "queued {n} jobs in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Starts this program again to open the store and build an engine over the queued
/// jobs, as a restart would, and reads its report.
async fn restart_in_child(db: &Path, durability: baton_store::Durability) -> Result<Value> {
    let exe = std::env::current_exe().context("cannot find the baton executable")?;
    let durability = match durability {
        baton_store::Durability::Full => "full",
        baton_store::Durability::Normal => "normal",
    };
    let out = tokio::process::Command::new(exe)
        .args([
            "bench",
            "scale",
            "--restart-child",
            "--durability",
            durability,
            "--db",
        ])
        .arg(db)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .output()
        .await
        .context("cannot start the restart's process")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix(REPORT))
        .with_context(|| {
            format!(
                "the restart's process reported nothing (exit {}): {stdout}",
                out.status
            )
        })?;
    let report: Value = serde_json::from_str(line).context("the restart's report")?;
    if let Some(e) = report["error"].as_str() {
        bail!("the restart failed: {e}");
    }
    Ok(report)
}

/// The child side of [`restart_in_child`]: opens the store, builds the engine with the
/// held queue resumed (16 workers that wait), and reports the time to ready and the
/// process's resident memory, at once and after the workers have claimed.
pub async fn restart_child(db: &Path, durability: baton_store::Durability) -> Result<()> {
    let report = match restart(db, durability).await {
        Ok(v) => v,
        Err(e) => json!({ "error": format!("{e:#}") }),
    };
    println!("{REPORT}{report}");
    // The workers never return: end here, as a crash would; nothing is lost.
    std::process::exit(0);
}

async fn restart(db: &Path, durability: baton_store::Durability) -> Result<Value> {
    let started = Instant::now();
    let store = SqliteStore::open(SqliteOptions::new(db).durability(durability))
        .with_context(|| format!("cannot open {}", db.display()))?;
    let engine = Engine::builder()
        .store(Arc::new(store))
        .queue("default", 256)
        .queue("probe", 1)
        .queue(HELD, 16)
        .handler("noop", |_ctx, _payload| std::future::pending())
        .build()
        .await?;
    let queued = engine.store().counts().await?.total(State::Queued);
    let ready = started.elapsed();
    let rss = rss_mb()?;
    engine.resume_queue(HELD).await?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while engine.running_jobs().len() < 16 {
        if Instant::now() > deadline {
            bail!("the held queue's workers did not start in 10 s");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    Ok(json!({
        "queued": queued,
        "ready_ms": ready.as_secs_f64() * 1e3,
        "rss_mb": rss,
        "rss_after_claims_mb": rss_mb()?,
    }))
}

/// The process's resident memory, from `/proc/self/status`.
fn rss_mb() -> Result<f64> {
    let status =
        std::fs::read_to_string("/proc/self/status").context("cannot read /proc/self/status")?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("/proc/self/status has no VmRSS")?;
    Ok(kb / 1024.0)
}

async fn p50<F, Fut>(samples: usize, mut f: F) -> Result<f64>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let mut times = Vec::with_capacity(samples);
    for _ in 0..samples {
        let t = Instant::now();
        f().await?;
        times.push(t.elapsed());
    }
    times.sort();
    Ok(times[times.len() / 2].as_secs_f64() * 1e3)
}
