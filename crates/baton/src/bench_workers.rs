//! `baton bench workers`: no-op jobs through one remote worker over the worker
//! protocol (`/api/workers/ws`, real WebSocket on loopback, a server in this process).
//! The worker completes each job as soon as it arrives, so the figures are the
//! engine's and the protocol's cost: jobs a second end to end with `--concurrency`
//! slots, and submit-to-start through the worker (from the submit's call to the job
//! reaching the worker) on an idle engine.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use baton_core::State;
use baton_engine::{Engine, JobSpec};
use baton_server::ServerOptions;
use baton_store::SqliteStore;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

pub struct Settings {
    pub jobs: usize,
    pub concurrency: usize,
    pub batch: usize,
    pub samples: usize,
}

/// When each job was handed to the worker.
type Arrivals = Arc<Mutex<HashMap<String, Instant>>>;

pub async fn run(store: SqliteStore, s: Settings, durability: &str) -> Result<Value> {
    if s.jobs == 0 || s.concurrency == 0 || s.batch == 0 || s.samples == 0 {
        bail!("--jobs, --concurrency, --batch and --samples must be at least 1");
    }
    let engine = Engine::builder()
        .store(Arc::new(store))
        .queue("default", 1)
        .remote_kinds(["noop"])
        .build()
        .await?;
    let server = crate::bench::InProcess::start(&engine, ServerOptions::default()).await?;
    let addr = server.addr;
    let arrivals: Arrivals = Arc::default();
    let worker = tokio::spawn(work(
        format!("ws://{addr}/api/workers/ws"),
        s.concurrency,
        arrivals.clone(),
    ));

    // Throughput: every job submitted in batches while the worker drains them.
    let started = Instant::now();
    let ids = crate::bench::job_ids(s.jobs);
    for chunk in ids.chunks(s.batch) {
        let specs = chunk
            .iter()
            .map(|id| JobSpec::new("noop").id(id.as_str()))
            .collect();
        engine.submit_many(specs).await?;
    }
    wait_completed(&engine, s.jobs, &worker).await?;
    let elapsed = started.elapsed();

    // Latency: one job at a time on an idle engine.
    let mut delays = Vec::with_capacity(s.samples);
    for n in 0..s.samples {
        let id = format!("latency-{n}");
        let submitted = Instant::now();
        engine.submit(JobSpec::new("noop").id(id.as_str())).await?;
        let arrived = loop {
            if let Some(at) = arrivals
                .lock()
                .map_err(|_| anyhow::anyhow!("poisoned"))?
                .get(&id)
            {
                break *at;
            }
            if worker.is_finished() {
                bail!("the bench's worker stopped");
            }
            if submitted.elapsed() > Duration::from_secs(10) {
                bail!("job {id} did not reach the worker within 10 s");
            }
            tokio::time::sleep(Duration::from_micros(200)).await;
        };
        delays.push(arrived.saturating_duration_since(submitted));
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    wait_completed(&engine, s.jobs + s.samples, &worker).await?;
    delays.sort_unstable();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let pick = |q: f64| ms(delays[((delays.len() - 1) as f64 * q).round() as usize]);
    worker.abort();
    server.stop().await;
    engine.shutdown(Duration::from_secs(5)).await;
    Ok(json!({
        "bench": "workers",
        "jobs": s.jobs,
        "concurrency": s.concurrency,
        "batch": s.batch,
        "elapsed_ms": ms(elapsed),
        "end_to_end_per_s": (s.jobs as f64 / elapsed.as_secs_f64()).round(),
        "samples": s.samples,
        "submit_to_start_p50_ms": pick(0.5),
        "submit_to_start_p99_ms": pick(0.99),
        "submit_to_start_max_ms": ms(*delays.last().unwrap_or(&Duration::ZERO)),
        "durability": durability,
        "store": "sqlite",
    }))
}

/// Waits until `n` jobs have completed; fails when the worker stopped first.
async fn wait_completed(
    engine: &Engine,
    n: usize,
    worker: &tokio::task::JoinHandle<Result<()>>,
) -> Result<()> {
    loop {
        let counts = engine.store().counts().await?;
        if counts.total(State::Completed) as usize >= n {
            return Ok(());
        }
        if worker.is_finished() {
            bail!("the bench's worker stopped before every job completed");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The worker: completes each job it is handed at once.
async fn work(url: String, slots: usize, arrivals: Arrivals) -> Result<()> {
    let (ws, _) = tokio_tungstenite::connect_async(&url)
        .await
        .with_context(|| format!("cannot connect a worker to {url}"))?;
    let (mut tx, mut rx) = ws.split();
    let hello = json!({"op": "hello", "name": "bench", "kinds": ["noop"], "slots": slots});
    tx.send(Message::Text(hello.to_string().into())).await?;
    while let Some(msg) = rx.next().await {
        let text = match msg? {
            Message::Text(t) => t,
            Message::Close(_) => break,
            _ => continue,
        };
        let m: Value = serde_json::from_str(&text)?;
        match m["type"].as_str() {
            Some("job") => {
                let id = m["job"]["id"].as_str().unwrap_or_default().to_owned();
                let done =
                    json!({"op": "complete", "job": id, "token": m["token"], "result": null});
                if let Ok(mut a) = arrivals.lock() {
                    a.insert(id, Instant::now());
                }
                tx.send(Message::Text(done.to_string().into())).await?;
            }
            Some("error") => bail!("the server refused a message of the bench's worker: {m}"),
            _ => {}
        }
    }
    bail!("the server closed the worker's connection")
}
