//! `baton bench dashboard`: the job list, its filters and the counts, at a million
//! jobs, as the store answers them (the server's time, without the network).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use baton_engine::{Engine, JobError, JobFilter, JobSpec, State};
use baton_store::{SqliteStore, Store};
use serde_json::{Value, json};

pub struct Settings {
    /// Jobs in the store (filled up to this many when there are fewer).
    pub jobs: usize,
    /// Times each query runs.
    pub samples: usize,
}

const SOURCES: usize = 50;
const KINDS: [&str; 4] = ["scrape", "encode", "report", "email"];

pub async fn run(store: SqliteStore, s: Settings, durability: &str) -> Result<Value> {
    let store: Arc<dyn Store> = Arc::new(store);
    let filled = fill(&store, s.jobs).await?;
    let total = store.counts().await?.all();
    if (total as usize) < s.jobs {
        bail!(
            "the store holds {total} jobs after filling, fewer than {}",
            s.jobs
        );
    }
    let filters: Vec<(&str, JobFilter)> = vec![
        ("list", JobFilter::default()),
        (
            "state",
            JobFilter {
                states: vec![State::Failed],
                ..JobFilter::default()
            },
        ),
        (
            "label",
            JobFilter {
                label: Some(("source".into(), "s7".into())),
                ..JobFilter::default()
            },
        ),
        (
            "kind_queue",
            JobFilter {
                kind: Some("encode".into()),
                queue: Some("media".into()),
                ..JobFilter::default()
            },
        ),
        (
            "text",
            JobFilter {
                text: Some("s42".into()),
                ..JobFilter::default()
            },
        ),
    ];
    let mut out = serde_json::Map::new();
    let mut worst_filter = 0.0f64;
    let mut list_ms = 0.0;
    for (name, mut filter) in filters {
        filter.limit = 50;
        let mut times = Vec::with_capacity(s.samples);
        let mut found = 0;
        for _ in 0..s.samples {
            let t = Instant::now();
            let page = store.list(filter.clone()).await?;
            times.push(t.elapsed());
            found = page.jobs.len();
        }
        if found == 0 {
            bail!(
                "the {name} query found no job: the filled store does not match the bench's queries"
            );
        }
        times.sort();
        let p50 = ms(times[times.len() / 2]);
        out.insert(format!("{name}_p50_ms"), json!(p50));
        out.insert(format!("{name}_max_ms"), json!(ms(times[times.len() - 1])));
        if name == "list" {
            list_ms = p50;
        } else {
            worst_filter = worst_filter.max(p50);
        }
    }
    let mut times = Vec::with_capacity(s.samples);
    for _ in 0..s.samples {
        let t = Instant::now();
        let counts = store.counts().await?;
        times.push(t.elapsed());
        if counts.rows.is_empty() {
            bail!("the counts say the store is empty");
        }
    }
    times.sort();
    let count_ms = ms(times[times.len() / 2]);
    let mut report = json!({
        "bench": "dashboard",
        "jobs": total,
        "samples": s.samples,
        "durability": durability,
        "filled": filled,
        "list_ms": list_ms,
        "filter_ms": worst_filter,
        "count_ms": count_ms,
    });
    if let Value::Object(map) = &mut report {
        map.extend(out);
    }
    store.close().await;
    Ok(report)
}

/// Fills the store to `jobs` through the engine: a mix of kinds, queues and labels; a
/// tenth failed with an error, most completed, some queued in a paused queue.
async fn fill(store: &Arc<dyn Store>, jobs: usize) -> Result<usize> {
    let have: usize = store
        .counts()
        .await?
        .rows
        .iter()
        .map(|r| r.2 as usize)
        .sum();
    if have >= jobs {
        return Ok(0);
    }
    let missing = jobs - have;
    let mut builder = Engine::builder()
        .store(Arc::clone(store))
        .queue("default", 256)
        .queue("media", 256)
        .queue("data", 256)
        .queue("backlog", 1);
    for kind in KINDS {
        builder = builder.handler(kind, |_ctx, payload: Value| async move {
            let n = payload["n"].as_u64().unwrap_or(0);
            if n % 10 == 3 {
                return Err(JobError::fatal(format!("timeout fetching page {n}")));
            }
            Ok(Value::Null)
        });
    }
    let engine = builder.build().await?;
    engine.pause_queue("backlog").await?;
    let started = Instant::now();
    let mut submitted = 0usize;
    let batch = 2_000;
    let mut tasks = tokio::task::JoinSet::new();
    while submitted < missing {
        let n = batch.min(missing - submitted);
        let base = have + submitted;
        let engine = engine.clone();
        tasks.spawn(async move {
            let specs = (base..base + n)
                .map(|i| {
                    let queue = match i % 20 {
                        0 => "backlog",
                        1..=6 => "media",
                        7..=10 => "data",
                        _ => "default",
                    };
                    JobSpec::new(KINDS[i % KINDS.len()])
                        .queue(queue)
                        .label("source", format!("s{}", i % SOURCES))
                        .payload(json!({"n": i}))
                        .max_attempts(1)
                })
                .collect();
            engine.submit_many(specs).await
        });
        submitted += n;
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
    // Everything outside the paused queue runs to its end.
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let counts = store.counts().await?;
        let open = counts.total(State::Queued) + counts.total(State::Running);
        let parked: u64 = counts
            .rows
            .iter()
            .filter(|(q, s, _)| q == "backlog" && *s == State::Queued)
            .map(|r| r.2)
            .sum();
        if open <= parked {
            break;
        }
        if Instant::now() > deadline {
            bail!("filling the store: {open} jobs still open after 10 minutes");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    engine.shutdown(Duration::from_secs(10)).await;
    eprintln!(
        "filled {missing} jobs in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(missing)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
