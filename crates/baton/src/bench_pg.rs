//! `baton bench throughput` and `baton bench latency` with `--store postgres://...`:
//! the same jobs and figures as on SQLite, through one or several servers (engines
//! with their own connections, sequencer and event tailer) on one database, in a
//! schema of the bench's own that is dropped afterwards.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use baton_core::{EventKind, JobSpec};
use baton_engine::Engine;
use baton_store_postgres::{PgOptions, PgStore};
use serde_json::{Value, json};

use crate::bench::{ms, pct, rate};

/// The bench's schema on the database, dropped when the bench ends.
struct Schema {
    url: String,
    name: String,
}

impl Schema {
    fn new(url: &str) -> Schema {
        Schema {
            url: url.to_owned(),
            name: format!("baton_bench_{}", std::process::id()),
        }
    }

    /// A server: a store (connections, sequencer, tailer) of its own on the schema.
    async fn open(&self) -> Result<PgStore> {
        PgStore::open(PgOptions::new(&self.url).schema(self.name.clone()))
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))
    }

    async fn drop_schema(&self) -> Result<()> {
        baton_store_postgres::drop_schema(&self.url, &self.name)
            .await
            .map_err(|e| anyhow::anyhow!("cannot drop the bench's schema: {e}"))
    }
}

/// When a `mark` job's handler reported its progress: (job id, the instant before the
/// report was written).
type Marks = tokio::sync::mpsc::UnboundedSender<(String, Instant)>;

async fn servers(schema: &Schema, n: usize, workers: usize, marks: Marks) -> Result<Vec<Engine>> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let store = schema.open().await?;
        let marks = marks.clone();
        out.push(
            Engine::builder()
                .store(Arc::new(store))
                .queue("default", workers)
                .handler("noop", |_ctx, _payload| async { Ok(Value::Null) })
                .handler("mark", move |ctx, _payload| {
                    let marks = marks.clone();
                    async move {
                        let _ = marks.send((ctx.job_id().to_owned(), Instant::now()));
                        ctx.progress(0.5, "mark").await?;
                        Ok(Value::Null)
                    }
                })
                .build()
                .await?,
        );
    }
    Ok(out)
}

/// No-op jobs through their whole life cycle, submitted to the servers in turn and
/// run by all of them; done when the first server has seen every completion.
pub async fn throughput(
    url: &str,
    servers_n: usize,
    jobs: usize,
    workers: usize,
    batch: usize,
    submitters: usize,
) -> Result<Value> {
    let schema = Schema::new(url);
    let _ = schema.drop_schema().await;
    let (marks, _) = tokio::sync::mpsc::unbounded_channel();
    let engines = servers(&schema, servers_n, workers, marks).await?;
    let run = crate::bench::drive(&engines, jobs, batch, submitters).await;
    for e in &engines {
        e.shutdown(Duration::from_secs(5)).await;
    }
    schema.drop_schema().await?;
    let run = run?;
    let first_start = run.check(jobs)?;
    let (started, submitted, finished) = (run.started, run.submitted, run.finished);
    let ran_on = run.servers;
    let total = finished - started;
    Ok(json!({
        "bench": "throughput",
        "store": "postgres",
        "servers": servers_n,
        "servers_that_ran_jobs": ran_on,
        "jobs": jobs,
        "workers": workers,
        "batch": batch,
        "submitters": submitters,
        "submit_per_s": rate(jobs, submitted),
        "processing_per_s": rate(jobs, finished - first_start),
        "end_to_end_per_s": rate(jobs, total),
        "elapsed_ms": ms(total),
    }))
}

/// Submit-to-start on an idle server, and, with two servers or more, the delay of a
/// progress event from the handler that reports it on one server to a subscriber of
/// another (`cross_server_event_*`).
pub async fn latency(url: &str, servers_n: usize, samples: usize, gap: Duration) -> Result<Value> {
    let schema = Schema::new(url);
    let _ = schema.drop_schema().await;
    let (marks, mut marked) = tokio::sync::mpsc::unbounded_channel();
    let engines = servers(&schema, servers_n, 16, marks).await?;
    let submitter = engines[0].clone();
    let watcher = engines.last().expect("at least one server").clone();
    let mut own = submitter.subscribe().await?;
    let mut other = watcher.subscribe().await?;
    let mut to_start = Vec::with_capacity(samples);
    let mut submit_ack = Vec::with_capacity(samples);
    let mut cross = Vec::with_capacity(samples);
    for _ in 0..samples {
        tokio::time::sleep(gap).await;
        let t0 = Instant::now();
        let id = submitter.submit(JobSpec::new("mark")).await?.job.id;
        submit_ack.push(t0.elapsed());
        // Whichever server runs the job, its start reaches the submitting server.
        let started = wait(&mut own, &id, EventKind::Started)
            .await
            .context("a job did not start within 10 s")?;
        to_start.push(started - t0);
        let reported = loop {
            match marked.recv().await {
                Some((job, at)) if job == id => break at,
                Some(_) => continue,
                None => bail!("the handlers are gone"),
            }
        };
        wait(&mut own, &id, EventKind::Progress)
            .await
            .context("no progress event within 10 s")?;
        if servers_n > 1 {
            // From the handler's report (on whichever server ran it) to a subscriber
            // of the last server: the write, its ids, the hint and the other's read.
            let seen = wait(&mut other, &id, EventKind::Progress)
                .await
                .context("the other server saw no progress event within 10 s")?;
            cross.push(seen.saturating_duration_since(reported));
        }
    }
    for e in &engines {
        e.shutdown(Duration::from_secs(5)).await;
    }
    schema.drop_schema().await?;
    to_start.sort();
    submit_ack.sort();
    cross.sort();
    let mut report = json!({
        "bench": "latency",
        "store": "postgres",
        "servers": servers_n,
        "samples": samples,
        "p50_ms": ms(pct(&to_start, 0.50)),
        "p90_ms": ms(pct(&to_start, 0.90)),
        "p99_ms": ms(pct(&to_start, 0.99)),
        "max_ms": ms(pct(&to_start, 1.0)),
        "submit_ack_p50_ms": ms(pct(&submit_ack, 0.50)),
        "submit_ack_p99_ms": ms(pct(&submit_ack, 0.99)),
    });
    if !cross.is_empty() {
        report["cross_server_event_p50_ms"] = json!(ms(pct(&cross, 0.50)));
        report["cross_server_event_p99_ms"] = json!(ms(pct(&cross, 0.99)));
    }
    Ok(report)
}

/// When the next event of `kind` for job `id` arrives (`None`: not within 10 s).
async fn wait(rx: &mut baton_engine::Subscription, id: &str, kind: EventKind) -> Option<Instant> {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match rx.next().await {
                Some(e) if e.job_id.as_deref() == Some(id) && e.kind == kind => {
                    return Some(Instant::now());
                }
                Some(_) => continue,
                None => return None,
            }
        }
    })
    .await
    .ok()
    .flatten()
}
