//! `baton bench bulk`: one `POST /api/jobs/bulk` cancelling every queued job by a
//! filter, over real HTTP to a server in this process: the time the answer took
//! (`bulk_ms`), and how many store commits carried the transitions.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use baton_engine::{Engine, JobSpec};
use baton_server::ServerOptions;
use baton_store::SqliteStore;
use serde_json::{Value, json};

pub async fn run(store: SqliteStore, jobs: usize, durability: &str) -> Result<Value> {
    if jobs == 0 {
        bail!("--jobs must be at least 1");
    }
    let engine = Engine::builder()
        .store(Arc::new(store))
        .queue("bulk", 16)
        .handler("noop", |_ctx, _payload| async { Ok(Value::Null) })
        .build()
        .await?;
    // Nothing starts: every job stays queued until the bulk action reaches it.
    engine.pause_queue("bulk").await?;
    let started = Instant::now();
    let mut ids = crate::bench::job_ids(jobs);
    while !ids.is_empty() {
        let rest = ids.split_off(ids.len().min(1000));
        let specs = ids
            .iter()
            .map(|id| JobSpec::new("noop").id(id.as_str()).queue("bulk"))
            .collect();
        engine.submit_many(specs).await?;
        ids = rest;
    }
    let submitted = started.elapsed();

    let options = ServerOptions {
        bulk_limit: jobs,
        ..ServerOptions::default()
    };
    let server = crate::bench::InProcess::start(&engine, options).await?;
    let addr = server.addr;
    let count = crate::bench::WriteCount::start(&engine)?;
    let started = Instant::now();
    let answer: Value = tokio::task::spawn_blocking(move || -> Result<Value> {
        let body = json!({"action": "cancel", "filter": {"state": "queued", "queue": "bulk"}});
        let mut response = ureq::post(format!("http://{addr}/api/jobs/bulk"))
            .send_json(&body)
            .context("POST /api/jobs/bulk")?;
        Ok(response.body_mut().read_json()?)
    })
    .await??;
    let took = started.elapsed();
    let (commits, writes) = count.since();
    if answer["done"].as_u64() != Some(jobs as u64) {
        bail!("the bulk cancel did not cancel every job: {answer}");
    }
    server.stop().await;
    engine.shutdown(Duration::from_secs(5)).await;
    Ok(json!({
        "bench": "bulk",
        "action": "cancel",
        "jobs": jobs,
        "durability": durability,
        "selection": "filter state=queued, queue=bulk (paused)",
        "submit_ms": crate::bench::ms(submitted),
        "bulk_ms": crate::bench::ms(took),
        "jobs_per_s": (jobs as f64 / took.as_secs_f64().max(1e-9)).round(),
        "store_commits": commits,
        "store_writes": writes,
    }))
}
