//! `baton bench dashboard`: the job list, its filters and the counts, at a million
//! jobs, as the store answers them (the server's time, without the network).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use baton_engine::{Engine, JobError, JobFilter, JobSpec, State};
use baton_store::{JobSort, SqliteStore, Store};
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
    // An id of the store's (its last six characters are what a person copies).
    let newest = store
        .list(JobFilter {
            limit: 1,
            ..JobFilter::default()
        })
        .await?;
    let id = newest
        .jobs
        .first()
        .context("the store lists no job")?
        .id
        .to_string();
    let id_end = id[id.len().saturating_sub(6)..].to_owned();
    let mut out = serde_json::Map::new();
    let mut worst_filter = 0.0f64;
    let mut list_ms = 0.0;
    for (name, mut filter) in queries(&id_end) {
        filter.limit = 50;
        // The first page, then the page after it through its cursor.
        let (p50, max, page) = time_list(&store, &filter, s.samples).await?;
        if page.jobs.is_empty() {
            bail!(
                "the {name} query found no job: the filled store does not match the bench's queries"
            );
        }
        out.insert(format!("{name}_p50_ms"), json!(p50));
        out.insert(format!("{name}_max_ms"), json!(max));
        out.insert(format!("{name}_total"), json!(page.total));
        out.insert(format!("{name}_total_exact"), json!(page.total_exact));
        worst_filter = worst_filter.max(p50);
        if name == "list" {
            list_ms = p50;
        }
        if let Some(cursor) = page.next_cursor {
            filter.cursor = Some(cursor);
            let (p50, max, _) = time_list(&store, &filter, s.samples).await?;
            out.insert(format!("{name}_page2_p50_ms"), json!(p50));
            out.insert(format!("{name}_page2_max_ms"), json!(max));
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
        "worst_list_ms": worst_filter,
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

/// What the dashboard asks for: everything, by state, label, kind and queue, text (an
/// id's end, a kind, a label, an error word), each order, and failed jobs by end.
fn queries(id_end: &str) -> Vec<(&'static str, JobFilter)> {
    let f = JobFilter::default;
    let text = |t: &str| JobFilter {
        text: Some(t.into()),
        ..f()
    };
    vec![
        ("list", f()),
        (
            "state",
            JobFilter {
                states: vec![State::Failed],
                ..f()
            },
        ),
        (
            "label",
            JobFilter {
                label: Some(("source".into(), "s7".into())),
                ..f()
            },
        ),
        (
            "kind_queue",
            JobFilter {
                kind: Some("encode".into()),
                queue: Some("media".into()),
                ..f()
            },
        ),
        ("text_id", text(id_end)),
        ("text_kind", text("encode")),
        ("text_label", text("source:s42")),
        ("text_error", text("timeout")),
        (
            "sort_started",
            JobFilter {
                sort: JobSort::Started,
                ..f()
            },
        ),
        (
            "sort_finished",
            JobFilter {
                sort: JobSort::Finished,
                ..f()
            },
        ),
        (
            "failed_by_finished",
            JobFilter {
                states: vec![State::Failed],
                sort: JobSort::Finished,
                ..f()
            },
        ),
        (
            "text_error_by_finished",
            JobFilter {
                sort: JobSort::Finished,
                ..text("timeout")
            },
        ),
    ]
}

/// The median and the slowest of `samples` reads of one page, and the page.
async fn time_list(
    store: &Arc<dyn Store>,
    filter: &JobFilter,
    samples: usize,
) -> Result<(f64, f64, baton_store::JobPage)> {
    let mut times = Vec::with_capacity(samples);
    let mut page = None;
    for _ in 0..samples {
        let t = Instant::now();
        page = Some(store.list(filter.clone()).await?);
        times.push(t.elapsed());
    }
    times.sort();
    let page = page.context("no sample was taken")?;
    Ok((ms(times[times.len() / 2]), ms(times[times.len() - 1]), page))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
