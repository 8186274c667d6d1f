//! `baton bench workflow`: the engine's own cost per job of a large DAG: a layered
//! workflow of no-op handler jobs, each depending on several jobs of the layer before
//! (fan-in and fan-out), submitted in one write and run to the end.
//!
//! The handlers do nothing, so the whole time is the engine's: `overhead_us_per_node`
//! is the total time (submit, dependency settling, claims, handler calls, outcomes,
//! all persisted) divided by the number of jobs. Nothing is subtracted from it.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use baton_engine::{Engine, EventKind, JobSpec, WorkflowSpec};
use baton_store::SqliteStore;
use serde_json::{Value, json};

pub struct Settings {
    pub nodes: usize,
    /// Jobs per layer.
    pub width: usize,
    /// Dependencies of each job on the layer before it.
    pub fan_in: usize,
    pub workers: usize,
}

pub async fn run(store: SqliteStore, s: Settings, durability: &str) -> Result<Value> {
    if s.nodes == 0 || s.width == 0 || s.fan_in == 0 || s.workers == 0 {
        bail!("--nodes, --width, --fan-in and --workers must be at least 1");
    }
    let engine = Engine::builder()
        .store(Arc::new(store))
        .queue("default", s.workers)
        .handler("noop", |_ctx, _payload| async { Ok(Value::Null) })
        .build()
        .await?;
    let (spec, edges) = layered(&s);
    let count = crate::bench::WriteCount::start(&engine)?;
    let mut events = engine.subscribe().await?;
    let started = Instant::now();
    let out = engine.submit_workflow(spec).await?;
    let submitted = started.elapsed();
    if !out.created {
        bail!("workflow {} existed already", out.id);
    }
    // Only this workflow's jobs count (a reused --db may hold others that recovery
    // runs at the same time).
    let mut own: HashSet<&str> = out.names.values().map(String::as_str).collect();
    if own.len() != s.nodes {
        bail!("the workflow stored {} jobs, not {}", own.len(), s.nodes);
    }
    let mut done = 0usize;
    while done < s.nodes {
        let e = tokio::time::timeout(Duration::from_secs(120), events.next()).await;
        let Ok(Some(e)) = e else {
            bail!("only {done} of {} jobs completed within 120 s", s.nodes);
        };
        let Some(job) = e.job_id.as_deref() else {
            continue;
        };
        match e.kind {
            EventKind::Completed if own.remove(job) => done += 1,
            EventKind::Failed | EventKind::Cancelled if own.contains(job) => {
                bail!("job {job} did not complete: {}", e.data)
            }
            _ => {}
        }
    }
    let total = started.elapsed();
    let graph = engine.workflow(&out.id).await?;
    if graph.state != baton_engine::WorkflowState::Completed {
        bail!("the workflow ended {}", graph.state);
    }
    engine.shutdown(Duration::from_secs(5)).await;
    // Read once the store closed: the writer counts a batch after its callers heard.
    let d = count.delta();
    let (commits, writes) = (d.commits, d.writes);
    if d.statements == 0 {
        bail!("the store counted no statements: statements_per_node cannot be measured");
    }
    let per_node = |x: f64| (x / s.nodes as f64 * 10.0).round() / 10.0;
    Ok(json!({
        "bench": "workflow",
        "nodes": s.nodes,
        "edges": edges,
        "width": s.width,
        "fan_in": s.fan_in,
        "layers": s.nodes.div_ceil(s.width),
        "workers": s.workers,
        "durability": durability,
        "handler": "no-op",
        "overhead_is": "total engine time per job: submit, dependency settling, claim, handler call, outcome, all persisted",
        "submit_ms": ms(submitted),
        "store_commits": commits,
        "store_writes": writes,
        "total_ms": ms(total),
        "overhead_us_per_node": per_node(total.as_secs_f64() * 1e6),
        "writer_us_per_node": per_node(d.busy_ns as f64 / 1e3),
        "statements_per_node": per_node(d.statements as f64),
        "nodes_per_s": (s.nodes as f64 / total.as_secs_f64().max(1e-9)).round(),
    }))
}

/// Layers of `width` jobs; each job after the first layer depends on `fan_in` jobs of
/// the layer before, spread over it, so each job also has about `fan_in` dependents.
fn layered(s: &Settings) -> (WorkflowSpec, usize) {
    let name = |i: usize| format!("n{i:06}");
    let mut spec = WorkflowSpec::new();
    let mut edges = 0;
    for i in 0..s.nodes {
        let layer = i / s.width;
        let mut job = JobSpec::new("noop").max_attempts(1);
        if layer > 0 {
            let prev_start = (layer - 1) * s.width;
            let prev_len = s.width;
            let k = s.fan_in.min(prev_len);
            let pos = i % s.width;
            let step = prev_len / k;
            for j in 0..k {
                job = job.depends_on(name(prev_start + (pos + j * step) % prev_len));
                edges += 1;
            }
        }
        spec = spec.job(name(i), job);
    }
    (spec, edges)
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}
