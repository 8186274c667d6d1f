//! `baton bench`: the project's own benchmarks, printing a human summary or one JSON
//! object per line (`--json`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use baton_engine::{Engine, EventKind, JobSpec};
use baton_store::{Durability, SqliteOptions, SqliteStore};
use clap::{Args, Subcommand};
use serde_json::{Value, json};

#[derive(Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    bench: Bench,
    /// Print one JSON object per line instead of a summary.
    #[arg(long, global = true)]
    json: bool,
    /// The database file (default: a fresh file in a temporary folder).
    #[arg(long, global = true)]
    db: Option<PathBuf>,
    /// SQLite durability: full (survives power loss) or normal.
    #[arg(long, global = true, default_value = "full")]
    durability: Durability,
}

#[derive(Subcommand)]
enum Bench {
    /// No-op jobs through their whole life cycle: submit, claim, complete, all persisted.
    Throughput {
        #[arg(long, default_value_t = 100_000)]
        jobs: usize,
        /// Concurrency of the queue.
        #[arg(long, default_value_t = 256)]
        workers: usize,
        /// Jobs per submit call.
        #[arg(long, default_value_t = 100)]
        batch: usize,
        /// Concurrent submitting tasks.
        #[arg(long, default_value_t = 4)]
        submitters: usize,
    },
    /// Command jobs running `/bin/true`: spawn, supervise, reap, all persisted.
    Commands {
        #[arg(long, default_value_t = 5_000)]
        jobs: usize,
        /// Concurrency of the queue: processes running at once.
        #[arg(long, default_value_t = 16)]
        workers: usize,
        /// Jobs per submit call.
        #[arg(long, default_value_t = 100)]
        batch: usize,
        /// The program each job runs.
        #[arg(long, default_value = "/bin/true")]
        program: String,
    },
    /// Progress-event latency from a handler to SSE clients of `/api/events`.
    Events {
        /// Connected SSE clients; one run per value.
        #[arg(long, value_delimiter = ',', default_value = "100,1000")]
        subscribers: Vec<usize>,
        /// Progress events the handler reports.
        #[arg(long, default_value_t = 200)]
        events: usize,
        /// Pause between two events.
        #[arg(long, default_value = "5ms", value_parser = parse_duration)]
        gap: Duration,
    },
    /// A layered DAG of no-op jobs in one workflow: the engine's own time per job
    /// (`overhead_us_per_node`: total time less the handlers' time, per job).
    Workflow {
        #[arg(long, default_value_t = 10_000)]
        nodes: usize,
        /// Jobs per layer.
        #[arg(long, default_value_t = 100)]
        width: usize,
        /// Dependencies of each job on the layer before it.
        #[arg(long, default_value_t = 4)]
        fan_in: usize,
        /// Concurrency of the queue.
        #[arg(long, default_value_t = 256)]
        workers: usize,
    },
    /// Many stored schedules: how late fires are (`lateness_p99_ms`) and the engine's
    /// CPU while nothing is due (`idle_cpu_pct`).
    Scheduler {
        #[arg(long, default_value_t = 100_000)]
        schedules: usize,
        /// Schedules that fire during the run (intervals of --period, starts spread
        /// evenly); the others' next runs are hours away.
        #[arg(long, default_value_t = 1_000)]
        firing: usize,
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        period: Duration,
        /// Periods measured.
        #[arg(long, default_value_t = 2)]
        rounds: usize,
        /// The idle window the CPU is measured over.
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        idle: Duration,
        /// Schedules created at once.
        #[arg(long, default_value_t = 256)]
        concurrency: usize,
    },
    /// Submit-to-start latency on an idle engine.
    Latency {
        #[arg(long, default_value_t = 2_000)]
        samples: usize,
        /// Pause between samples, so the engine is idle at each submit.
        #[arg(long, default_value = "2ms", value_parser = parse_duration)]
        gap: Duration,
    },
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    baton_core::duration::parse(s)
}

pub async fn run(args: BenchArgs) -> Result<()> {
    let dir = tempfile::tempdir().context("cannot create a temporary folder")?;
    let db = args
        .db
        .clone()
        .unwrap_or_else(|| dir.path().join("bench.db"));
    let durability = match args.durability {
        Durability::Full => "full",
        Durability::Normal => "normal",
    };
    if let Bench::Events {
        subscribers,
        events,
        gap,
    } = &args.bench
    {
        if *events == 0 || subscribers.contains(&0) {
            bail!("--events and --subscribers must be at least 1");
        }
        crate::bench_fs::warn_if_tmpfs(&dir.path().join("events.db"));
        for n in subscribers {
            let file = dir.path().join(format!("events-{n}.db"));
            let report = crate::bench_events::run(file, args.durability, *n, *events, *gap).await?;
            if args.json {
                println!("{report}");
            } else {
                print_summary(&report);
            }
        }
        return Ok(());
    }
    let store = SqliteStore::open(SqliteOptions::new(&db).durability(args.durability))
        .with_context(|| format!("cannot open {}", db.display()))?;
    crate::bench_fs::warn_if_tmpfs(&db);
    // SQLite's own setting, read back on open: what the figures were measured with.
    let synchronous = baton_store::Store::synchronous(&store);
    let mut report = match args.bench {
        Bench::Events { .. } => unreachable!("handled above"),
        Bench::Throughput {
            jobs,
            workers,
            batch,
            submitters,
        } => {
            if jobs == 0 || workers == 0 || batch == 0 || submitters == 0 {
                bail!("--jobs, --workers, --batch and --submitters must be at least 1");
            }
            throughput(store, jobs, workers, batch, submitters, durability).await?
        }
        Bench::Commands {
            jobs,
            workers,
            batch,
            program,
        } => {
            if jobs == 0 || workers == 0 || batch == 0 {
                bail!("--jobs, --workers and --batch must be at least 1");
            }
            commands(store, jobs, workers, batch, &program, durability).await?
        }
        Bench::Workflow {
            nodes,
            width,
            fan_in,
            workers,
        } => {
            let settings = crate::bench_workflow::Settings {
                nodes,
                width,
                fan_in,
                workers,
            };
            crate::bench_workflow::run(store, settings, durability).await?
        }
        Bench::Scheduler {
            schedules,
            firing,
            period,
            rounds,
            idle,
            concurrency,
        } => {
            let settings = crate::bench_scheduler::Settings {
                schedules,
                firing,
                period,
                rounds,
                idle,
                concurrency,
            };
            crate::bench_scheduler::run(store, settings, durability).await?
        }
        Bench::Latency { samples, gap } => {
            if samples == 0 {
                bail!("--samples must be at least 1");
            }
            latency(store, samples, gap, durability).await?
        }
    };
    if let Value::Object(map) = &mut report {
        map.insert("synchronous".into(), json!(synchronous));
    }
    if args.json {
        println!("{report}");
    } else {
        print_summary(&report);
    }
    Ok(())
}

fn print_summary(report: &Value) {
    let Value::Object(map) = report else { return };
    println!(
        "bench {}",
        map.get("bench").and_then(Value::as_str).unwrap_or("?")
    );
    for (k, v) in map.iter().filter(|(k, _)| *k != "bench") {
        let shown = match v.as_f64() {
            Some(f) if f.fract() != 0.0 => format!("{f:.3}"),
            _ => v.to_string(),
        };
        println!("  {k:<22} {shown}");
    }
}

async fn throughput(
    store: SqliteStore,
    jobs: usize,
    workers: usize,
    batch: usize,
    submitters: usize,
    durability: &str,
) -> Result<Value> {
    let engine = Engine::builder()
        .store(Arc::new(store))
        .queue("default", workers)
        .handler("noop", |_ctx, _payload| async { Ok(Value::Null) })
        .build()
        .await?;
    let mut events = engine.subscribe();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for s in 0..submitters {
        let engine = engine.clone();
        let share = jobs / submitters + usize::from(s < jobs % submitters);
        tasks.push(tokio::spawn(async move {
            let mut left = share;
            while left > 0 {
                let n = left.min(batch);
                let specs = (0..n).map(|_| JobSpec::new("noop")).collect();
                engine.submit_many(specs).await?;
                left -= n;
            }
            anyhow::Ok(())
        }));
    }
    let waiter = tokio::spawn(async move {
        let mut done = 0usize;
        let mut first_start: Option<Instant> = None;
        while done < jobs {
            let Some(e) = events.next().await else { break };
            match e.kind {
                EventKind::Started if first_start.is_none() => first_start = Some(Instant::now()),
                EventKind::Completed => done += 1,
                EventKind::Failed => bail!("a job failed: {}", e.data),
                _ => {}
            }
        }
        Ok((done, first_start, Instant::now()))
    });
    for t in tasks {
        t.await??;
    }
    let submitted = started.elapsed();
    let (done, first_start, finished) = waiter.await??;
    if done < jobs {
        bail!("only {done} of {jobs} jobs completed");
    }
    let total = finished - started;
    let processing = finished - first_start.unwrap_or(started);
    engine.shutdown(Duration::from_secs(5)).await;
    Ok(json!({
        "bench": "throughput",
        "jobs": jobs,
        "workers": workers,
        "batch": batch,
        "submitters": submitters,
        "durability": durability,
        "submit_per_s": rate(jobs, submitted),
        "processing_per_s": rate(jobs, processing),
        "end_to_end_per_s": rate(jobs, total),
        "elapsed_ms": ms(total),
    }))
}

async fn commands(
    store: SqliteStore,
    jobs: usize,
    workers: usize,
    batch: usize,
    program: &str,
    durability: &str,
) -> Result<Value> {
    let engine = Engine::builder()
        .store(Arc::new(store))
        .queue("default", workers)
        .build()
        .await?;
    let mut events = engine.subscribe();
    let started = Instant::now();
    let submitter = {
        let engine = engine.clone();
        let program = program.to_owned();
        tokio::spawn(async move {
            let mut left = jobs;
            while left > 0 {
                let n = left.min(batch);
                let specs = (0..n)
                    .map(|_| JobSpec::command([program.as_str()]).max_attempts(1))
                    .collect();
                engine.submit_many(specs).await?;
                left -= n;
            }
            anyhow::Ok(())
        })
    };
    let mut done = 0usize;
    while done < jobs {
        let Some(e) = events.next().await else { break };
        match e.kind {
            EventKind::Completed => done += 1,
            EventKind::Failed => bail!("a command job failed: {}", e.data),
            _ => {}
        }
    }
    submitter.await??;
    let total = started.elapsed();
    if done < jobs {
        bail!("only {done} of {jobs} command jobs completed");
    }
    engine.shutdown(Duration::from_secs(5)).await;
    Ok(json!({
        "bench": "commands",
        "jobs": jobs,
        "workers": workers,
        "batch": batch,
        "program": program,
        "durability": durability,
        "jobs_per_s": rate(jobs, total),
        "elapsed_ms": ms(total),
    }))
}

async fn latency(
    store: SqliteStore,
    samples: usize,
    gap: Duration,
    durability: &str,
) -> Result<Value> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Instant>();
    let engine = Engine::builder()
        .store(Arc::new(store))
        .handler("mark", move |_ctx, _payload| {
            let _ = tx.send(Instant::now());
            async { Ok(Value::Null) }
        })
        .build()
        .await?;
    let mut submit_ack = Vec::with_capacity(samples);
    let mut to_start = Vec::with_capacity(samples);
    for _ in 0..samples {
        tokio::time::sleep(gap).await;
        let t0 = Instant::now();
        engine.submit(JobSpec::new("mark")).await?;
        let acked = t0.elapsed();
        let started = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .context("a job did not start within 10 s")?
            .context("the handler is gone")?;
        submit_ack.push(acked);
        to_start.push(started - t0);
    }
    engine.shutdown(Duration::from_secs(5)).await;
    to_start.sort();
    submit_ack.sort();
    Ok(json!({
        "bench": "latency",
        "samples": samples,
        "durability": durability,
        "p50_ms": ms(pct(&to_start, 0.50)),
        "p90_ms": ms(pct(&to_start, 0.90)),
        "p99_ms": ms(pct(&to_start, 0.99)),
        "max_ms": ms(*to_start.last().unwrap_or(&Duration::ZERO)),
        "submit_ack_p50_ms": ms(pct(&submit_ack, 0.50)),
        "submit_ack_p99_ms": ms(pct(&submit_ack, 0.99)),
    }))
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn rate(n: usize, d: Duration) -> f64 {
    (n as f64 / d.as_secs_f64().max(1e-9)).round()
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}
