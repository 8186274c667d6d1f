//! `baton bench throughput --duration D`: no-op jobs submitted and run without pause
//! for a while, with retention pruning what finished longer ago than `--retention`.
//! A sample every `--sample` gives the jobs completed per second since the previous
//! one, the database's size on disk (with its write-ahead log) and the jobs it holds,
//! so that a run shows whether throughput stays flat and the file stops growing once
//! pruning runs.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use baton_engine::{Engine, EventKind, JobSpec, Retention};
use baton_store::SqliteStore;
use serde_json::{Value, json};
use tokio::sync::Semaphore;

pub struct Settings {
    pub duration: Duration,
    pub retention: Duration,
    /// How often the engine prunes.
    pub prune_every: Duration,
    pub sample: Duration,
    pub workers: usize,
    pub batch: usize,
    pub submitters: usize,
    /// The most jobs submitted and not yet completed: submitters wait past it, so that
    /// the queue's backlog (not retention) never decides the file's size.
    pub backlog: usize,
}

pub async fn run(store: SqliteStore, s: Settings) -> Result<Value> {
    if s.sample.is_zero() || s.sample > s.duration {
        bail!("--sample must be longer than 0s and at most --duration");
    }
    if s.backlog < s.batch {
        bail!("the backlog must hold at least one batch");
    }
    let db = store.path().to_owned();
    let engine = Engine::builder()
        .store(Arc::new(store))
        .queue("default", s.workers)
        .handler("noop", |_ctx, _payload| async { Ok(Value::Null) })
        .retention(Retention {
            keep: Some(s.retention),
            every: s.prune_every,
            ..Retention::default()
        })
        .build()
        .await?;
    // The run's own jobs, by a prefix of their ids: a reused --db may hold others.
    let prefix = format!("sustained-{}", baton_core::JobId::generate());
    let completed = Arc::new(AtomicU64::new(0));
    let room = Arc::new(Semaphore::new(s.backlog));
    let stop = tokio_util::sync::CancellationToken::new();
    let mut events = engine.subscribe().await?;
    let counter = {
        let (completed, room, prefix) = (completed.clone(), room.clone(), prefix.clone());
        tokio::spawn(async move {
            while let Some(e) = events.next().await {
                if !e
                    .job_id
                    .as_deref()
                    .is_some_and(|id| id.starts_with(&prefix))
                {
                    continue;
                }
                match e.kind {
                    EventKind::Completed => {
                        completed.fetch_add(1, Ordering::Relaxed);
                        room.add_permits(1);
                    }
                    EventKind::Failed => bail!("a job failed: {}", e.data),
                    _ => {}
                }
            }
            anyhow::Ok(())
        })
    };
    let next_id = Arc::new(AtomicU64::new(0));
    let mut submitters = Vec::new();
    for _ in 0..s.submitters {
        let (engine, room, stop, prefix, next_id) = (
            engine.clone(),
            room.clone(),
            stop.clone(),
            prefix.clone(),
            next_id.clone(),
        );
        let batch = s.batch;
        submitters.push(tokio::spawn(async move {
            loop {
                let permits = tokio::select! {
                    p = room.acquire_many(batch as u32) => p?,
                    _ = stop.cancelled() => return anyhow::Ok(()),
                };
                permits.forget();
                let first = next_id.fetch_add(batch as u64, Ordering::Relaxed);
                let specs = (first..first + batch as u64)
                    .map(|n| JobSpec::new("noop").id(format!("{prefix}-{n}")))
                    .collect();
                engine.submit_many(specs).await?;
            }
        }));
    }

    let started = Instant::now();
    let mut samples = Vec::new();
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + s.sample, s.sample);
    let (mut last_done, mut last_at) = (0u64, started);
    while started.elapsed() < s.duration {
        tick.tick().await;
        let done = completed.load(Ordering::Relaxed);
        let now = Instant::now();
        let per_s = (done - last_done) as f64 / (now - last_at).as_secs_f64();
        let stored = engine.store().counts().await?.all();
        samples.push(json!({
            "at_s": (now - started).as_secs_f64().round(),
            "per_s": per_s.round(),
            "db_mb": mb(file_size(&db)?),
            "jobs_stored": stored,
            "pruned_jobs": engine.pruned().0,
        }));
        (last_done, last_at) = (done, now);
    }
    stop.cancel();
    for t in submitters {
        t.await??;
    }
    let elapsed = started.elapsed();
    let total = completed.load(Ordering::Relaxed);
    engine.shutdown(Duration::from_secs(10)).await;
    counter.abort();
    if total == 0 {
        bail!(
            "no job completed in {:?}: no throughput to report",
            s.duration
        );
    }
    let rates: Vec<f64> = samples.iter().filter_map(|v| v["per_s"].as_f64()).collect();
    let sizes: Vec<f64> = samples.iter().filter_map(|v| v["db_mb"].as_f64()).collect();
    let half = rates.len() / 2;
    let mean = |xs: &[f64]| xs.iter().sum::<f64>() / xs.len().max(1) as f64;
    let (pruned_jobs, pruned_events) = engine.pruned();
    let (prune_writes, prune_time) = engine.prune_writes();
    let prune_ms_per_write = if prune_writes == 0 {
        Value::Null
    } else {
        json!((prune_time.as_secs_f64() * 1e3 / prune_writes as f64 * 100.0).round() / 100.0)
    };
    Ok(json!({
        "bench": "throughput",
        "mode": "sustained",
        "duration_s": s.duration.as_secs(),
        "retention_s": s.retention.as_secs(),
        "prune_every_s": s.prune_every.as_secs(),
        "workers": s.workers,
        "batch": s.batch,
        "submitters": s.submitters,
        "jobs": total,
        "end_to_end_per_s": (total as f64 / elapsed.as_secs_f64()).round(),
        "first_half_per_s": mean(&rates[..half]).round(),
        "second_half_per_s": mean(&rates[half..]).round(),
        "min_sample_per_s": rates.iter().cloned().fold(f64::INFINITY, f64::min),
        "db_mb_at_half": sizes.get(half.saturating_sub(1)).copied().unwrap_or(0.0),
        "db_mb_end": sizes.last().copied().unwrap_or(0.0),
        "db_mb_max": sizes.iter().cloned().fold(0.0, f64::max),
        "pruned_jobs": pruned_jobs,
        "pruned_events": pruned_events,
        "prune_writes": prune_writes,
        "prune_ms_per_write": prune_ms_per_write,
        "samples": samples,
    }))
}

/// The database's bytes on disk: the file and its write-ahead log.
fn file_size(db: &std::path::Path) -> Result<u64> {
    let main = std::fs::metadata(db)
        .with_context(|| format!("cannot read the size of {}", db.display()))?
        .len();
    let mut wal = db.as_os_str().to_owned();
    wal.push("-wal");
    let wal = std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
    Ok(main + wal)
}

fn mb(bytes: u64) -> f64 {
    (bytes as f64 / 1e6 * 10.0).round() / 10.0
}

#[cfg(test)]
mod tests {
    use baton_store::{Durability, SqliteOptions};

    use super::*;

    fn settings(duration: Duration) -> Settings {
        Settings {
            duration,
            retention: Duration::from_millis(500),
            prune_every: Duration::from_millis(200),
            sample: Duration::from_secs(1),
            workers: 16,
            batch: 50,
            submitters: 2,
            backlog: 1_000,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_sustained_run_samples_throughput_and_size_and_prunes_past_retention() {
        let dir = tempfile::tempdir().unwrap();
        let options =
            SqliteOptions::new(dir.path().join("bench.db")).durability(Durability::Normal);
        let store = SqliteStore::open(options).unwrap();
        let report = run(store, settings(Duration::from_secs(4))).await.unwrap();
        let samples = report["samples"].as_array().unwrap();
        assert_eq!(samples.len(), 4, "{report}");
        assert!(report["jobs"].as_u64().unwrap() > 0, "{report}");
        assert!(report["end_to_end_per_s"].as_f64().unwrap() > 0.0);
        assert!(samples.iter().all(|s| s["db_mb"].as_f64().unwrap() > 0.0));
        let pruned = report["pruned_jobs"].as_u64().unwrap();
        assert!(
            pruned > 0,
            "jobs older than half a second were pruned: {report}"
        );
        assert!(report["prune_writes"].as_u64().unwrap() > 0, "{report}");
        assert!(
            report["prune_ms_per_write"].as_f64().unwrap() > 0.0,
            "{report}"
        );
        let stored = samples.last().unwrap()["jobs_stored"].as_u64().unwrap();
        assert!(
            stored < report["jobs"].as_u64().unwrap(),
            "the store holds fewer jobs than ran: {report}"
        );
    }

    #[tokio::test]
    async fn a_sample_longer_than_the_run_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(SqliteOptions::new(dir.path().join("bench.db"))).unwrap();
        let mut s = settings(Duration::from_secs(1));
        s.sample = Duration::from_secs(2);
        let e = run(store, s).await.unwrap_err().to_string();
        assert!(e.contains("--sample"), "{e}");
    }
}
