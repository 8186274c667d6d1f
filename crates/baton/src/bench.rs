//! `baton bench`: the project's own benchmarks, printing a human summary or one JSON
//! object per line (`--json`).

use std::collections::HashSet;
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
    /// Run on a PostgreSQL database instead (`postgres://...`; throughput and latency),
    /// in a schema of the bench's own, dropped afterwards.
    #[arg(long, global = true)]
    store: Option<String>,
    /// With --store: how many servers (engines with connections of their own) share it.
    #[arg(long, global = true, default_value_t = 1)]
    servers: usize,
}

#[derive(Subcommand)]
enum Bench {
    /// No-op jobs through their whole life cycle: submit, claim, complete, all persisted;
    /// then the same rows written by bare SQLite statements, committed as often
    /// (`floor_per_s`).
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
        /// Run for this long without pause instead of a fixed number of jobs, with
        /// retention on, sampling throughput and the database's size.
        #[arg(long, value_parser = parse_duration)]
        duration: Option<Duration>,
        /// With --duration: how long finished jobs are kept.
        #[arg(long, default_value = "1m", value_parser = parse_duration)]
        retention: Duration,
        /// With --duration: how often the engine prunes.
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        prune_every: Duration,
        /// With --duration: the time between two samples.
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        sample: Duration,
        /// With --duration: the most jobs submitted and not yet completed.
        #[arg(long, default_value_t = 10_000)]
        backlog: usize,
        /// Holds the jobs to a concurrency limit of this many on their kind, across
        /// queues: what enforcing one costs (at --workers or more it never binds; under
        /// it, it is what runs at once). SQLite, without --duration.
        #[arg(long)]
        kind_limit: Option<u32>,
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
        /// Run the clients in a child process (`baton bench-clients`), so that they do
        /// not share the engine's runtime.
        #[arg(long)]
        clients_process: bool,
        /// Threads of the clients' process (with --clients-process).
        #[arg(long, default_value_t = 2)]
        client_threads: usize,
    },
    /// A layered DAG of no-op jobs in one workflow: the engine's time per job
    /// (`overhead_us_per_node`: the total time divided by the jobs; the handlers do
    /// nothing, so all of it is the engine's).
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
    /// Sustained load on a real `baton serve` child: 100 SSE clients, a mix of command,
    /// pipeline and workflow jobs at 70 % of the measured capacity; fails unless every
    /// client received every event, memory stayed flat and the queue did not grow.
    Soak {
        /// How long the load lasts (after the capacity probe).
        #[arg(long, default_value = "10m", value_parser = parse_duration)]
        duration: Duration,
        /// Jobs per second to submit (default: --load-pct of the measured capacity).
        #[arg(long)]
        rate: Option<f64>,
        /// The share of the measured capacity to submit, in percent.
        #[arg(long, default_value_t = 70.0)]
        load_pct: f64,
        /// How long the capacity is measured for (flat out, before the soak).
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        probe: Duration,
        /// Connected SSE clients of `/api/events`.
        #[arg(long, default_value_t = 100)]
        clients: usize,
        /// Threads submitting over HTTP.
        #[arg(long, default_value_t = 16)]
        submitters: usize,
        /// The most the server's resident memory may grow during the soak, in MB.
        #[arg(long, default_value_t = 64.0)]
        max_growth_mb: f64,
    },
    /// Jobs stored per second over HTTP by a real `baton serve` (queue paused): one per
    /// `POST /api/jobs`, and in batches through `POST /api/jobs/batch`.
    Submit {
        /// Jobs sent one per request.
        #[arg(long, default_value_t = 20_000)]
        single_jobs: usize,
        /// Jobs sent in batches.
        #[arg(long, default_value_t = 200_000)]
        batch_jobs: usize,
        /// Jobs per batch request.
        #[arg(long, default_value_t = 1_000)]
        batch_size: usize,
        /// Client threads sending at once.
        #[arg(long, default_value_t = 8)]
        threads: usize,
    },
    /// The dashboard's queries at a million jobs: the first page of the job list, its
    /// filters (state, label, kind and queue, text) and the counts per state, as the
    /// store answers them.
    Dashboard {
        /// Jobs in the store (a reused --db is filled up to this many).
        #[arg(long, default_value_t = 1_000_000)]
        jobs: usize,
        /// Times each query runs.
        #[arg(long, default_value_t = 20)]
        samples: usize,
    },
    /// One `POST /api/jobs/bulk` cancelling every queued job of a paused queue by a
    /// filter, over HTTP: the time of the answer (`bulk_ms`).
    Bulk {
        #[arg(long, default_value_t = 10_000)]
        jobs: usize,
    },
    /// Claim time per job, the job list and the counts at growing numbers of finished
    /// jobs in the table; then a restart over many queued jobs in a process of its own
    /// (`ready_ms`, `rss_mb`).
    Scale {
        /// Finished jobs in the table at each measurement (a reused --db is filled up
        /// to each).
        #[arg(long, value_delimiter = ',', default_value = "0,100000,1000000")]
        sizes: Vec<usize>,
        /// Queued jobs the restart is measured over (0: no restart).
        #[arg(long, default_value_t = 1_000_000)]
        queued: usize,
        /// Times each query runs.
        #[arg(long, default_value_t = 20)]
        samples: usize,
        /// The restart's own process (started by the bench).
        #[arg(long, hide = true)]
        restart_child: bool,
    },
    /// No-op jobs through one remote worker over the worker protocol (a real
    /// WebSocket on loopback): jobs a second, and submit-to-start through the worker.
    Workers {
        #[arg(long, default_value_t = 20_000)]
        jobs: usize,
        /// The worker's slots.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// Jobs per submit call.
        #[arg(long, default_value_t = 100)]
        batch: usize,
        /// Submit-to-start samples, one job at a time.
        #[arg(long, default_value_t = 500)]
        samples: usize,
    },
    /// The usage sampler's own CPU time with many running command jobs (`sleep 600`,
    /// each its own process group): `sampler_cpu_pct`, a share of one core.
    Resources {
        /// Sleeping jobs running at once.
        #[arg(long, default_value_t = 100)]
        jobs: usize,
        /// How long the sampler is measured, once every job is measured.
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        duration: Duration,
        /// The sampler's interval.
        #[arg(long, default_value = "1s", value_parser = parse_duration)]
        sample_every: Duration,
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
    if let Some(url) = &args.store {
        let report = run_postgres(url, &args).await?;
        emit(&report, args.json);
        return Ok(());
    }
    if args.servers != 1 {
        bail!("--servers needs --store postgres://...: the embedded store has one server");
    }
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
        clients_process,
        client_threads,
    } = &args.bench
    {
        if *events == 0 || subscribers.contains(&0) || *client_threads == 0 {
            bail!("--events, --subscribers and --client-threads must be at least 1");
        }
        crate::bench_fs::warn_if_tmpfs(&dir.path().join("events.db"));
        for n in subscribers {
            let file = dir.path().join(format!("events-{n}.db"));
            let settings = crate::bench_events::Settings {
                subscribers: *n,
                events: *events,
                gap: *gap,
                clients_process: *clients_process,
                client_threads: *client_threads,
            };
            let report = crate::bench_events::run(file, args.durability, settings).await?;
            emit(&report, args.json);
        }
        return Ok(());
    }
    if let Bench::Soak {
        duration,
        rate,
        load_pct,
        probe,
        clients,
        submitters,
        max_growth_mb,
    } = args.bench
    {
        let settings = crate::bench_soak::Settings {
            duration,
            rate,
            load_pct,
            probe,
            clients,
            submitters,
            max_growth_mb,
        };
        let report = crate::bench_soak::run(db, dir.path(), args.durability, settings).await?;
        emit(&report, args.json);
        let failures = crate::bench_soak::failures(&report);
        if !failures.is_empty() {
            bail!("the soak failed: {}", failures.join("; "));
        }
        return Ok(());
    }
    if let Bench::Submit {
        single_jobs,
        batch_jobs,
        batch_size,
        threads,
    } = args.bench
    {
        let settings = crate::bench_submit::Settings {
            single_jobs,
            batch_jobs,
            batch_size,
            threads,
        };
        crate::bench_fs::warn_if_tmpfs(&db);
        let report = crate::bench_submit::run(&db, dir.path(), args.durability, settings).await?;
        emit(&report, args.json);
        return Ok(());
    }
    if let Bench::Scale {
        sizes,
        queued,
        samples,
        restart_child,
    } = args.bench
    {
        if restart_child {
            return crate::bench_scale::restart_child(&db, args.durability).await;
        }
        if samples == 0 || !sizes.is_sorted() {
            bail!("--samples must be at least 1, and --sizes ascending");
        }
        crate::bench_fs::warn_if_tmpfs(&db);
        let settings = crate::bench_scale::Settings {
            sizes,
            queued,
            samples,
        };
        let mut report = crate::bench_scale::run(&db, args.durability, settings).await?;
        report["durability"] = json!(durability);
        emit(&report, args.json);
        return Ok(());
    }
    // Benches count the writer's statements (per-job figures); a store serving jobs
    // does not, to spare the writer the trace.
    let options = SqliteOptions::new(&db)
        .durability(args.durability)
        .count_statements(true);
    let store =
        SqliteStore::open(options).with_context(|| format!("cannot open {}", db.display()))?;
    crate::bench_fs::warn_if_tmpfs(&db);
    // SQLite's own setting, read back on open: what the figures were measured with.
    let synchronous = baton_store::Store::synchronous(&store);
    let mut report = match args.bench {
        Bench::Events { .. } | Bench::Soak { .. } | Bench::Submit { .. } | Bench::Scale { .. } => {
            unreachable!("handled above")
        }
        Bench::Throughput {
            jobs,
            workers,
            batch,
            submitters,
            duration,
            retention,
            prune_every,
            sample,
            backlog,
            kind_limit,
        } => {
            if jobs == 0 || workers == 0 || batch == 0 || submitters == 0 {
                bail!("--jobs, --workers, --batch and --submitters must be at least 1");
            }
            if kind_limit == Some(0) {
                bail!("--kind-limit must be at least 1");
            }
            if kind_limit.is_some() && duration.is_some() {
                bail!("--kind-limit is measured by a run of --jobs, not with --duration");
            }
            match duration {
                Some(duration) => {
                    if retention.is_zero() || prune_every.is_zero() {
                        bail!("--retention and --prune-every must be longer than 0s");
                    }
                    let settings = crate::bench_sustained::Settings {
                        duration,
                        retention,
                        prune_every,
                        sample,
                        workers,
                        batch,
                        submitters,
                        backlog,
                    };
                    let mut report = crate::bench_sustained::run(store, settings).await?;
                    report["durability"] = json!(durability);
                    report
                }
                None => {
                    let shape = Shape {
                        jobs,
                        workers,
                        batch,
                        submitters,
                        kind_limit,
                    };
                    throughput(store, shape, args.durability).await?
                }
            }
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
        Bench::Dashboard { jobs, samples } => {
            if jobs == 0 || samples == 0 {
                bail!("--jobs and --samples must be at least 1");
            }
            let settings = crate::bench_dashboard::Settings { jobs, samples };
            crate::bench_dashboard::run(store, settings, durability).await?
        }
        Bench::Bulk { jobs } => crate::bench_bulk::run(store, jobs, durability).await?,
        Bench::Workers {
            jobs,
            concurrency,
            batch,
            samples,
        } => {
            let settings = crate::bench_workers::Settings {
                jobs,
                concurrency,
                batch,
                samples,
            };
            crate::bench_workers::run(store, settings, durability).await?
        }
        Bench::Latency { samples, gap } => {
            if samples == 0 {
                bail!("--samples must be at least 1");
            }
            latency(store, samples, gap, durability).await?
        }
        Bench::Resources {
            jobs,
            duration,
            sample_every,
        } => {
            let settings = crate::bench_resources::Settings {
                jobs,
                duration,
                sample_every,
            };
            crate::bench_resources::run(store, settings, durability).await?
        }
    };
    if let Value::Object(map) = &mut report {
        map.insert("synchronous".into(), json!(synchronous));
    }
    emit(&report, args.json);
    Ok(())
}

/// `throughput` and `latency` on PostgreSQL; the other benches are SQLite's.
async fn run_postgres(url: &str, args: &BenchArgs) -> Result<Value> {
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        bail!("--store takes a postgres:// URL (the embedded store is the default)");
    }
    baton_store_postgres::check_url(url).map_err(anyhow::Error::msg)?;
    if args.servers == 0 {
        bail!("--servers must be at least 1");
    }
    match &args.bench {
        Bench::Throughput {
            jobs,
            workers,
            batch,
            submitters,
            duration: None,
            kind_limit: None,
            ..
        } => {
            if *jobs == 0 || *workers == 0 || *batch == 0 || *submitters == 0 {
                bail!("--jobs, --workers, --batch and --submitters must be at least 1");
            }
            crate::bench_pg::throughput(url, args.servers, *jobs, *workers, *batch, *submitters)
                .await
        }
        Bench::Latency { samples, gap } => {
            if *samples == 0 {
                bail!("--samples must be at least 1");
            }
            crate::bench_pg::latency(url, args.servers, *samples, *gap).await
        }
        Bench::Throughput {
            kind_limit: Some(_),
            ..
        } => bail!("--kind-limit is measured on the embedded store only"),
        _ => bail!(
            "this bench runs on the embedded store only; on PostgreSQL: throughput (without --duration) and latency"
        ),
    }
}

/// Prints a report: its JSON line with `--json`, a summary otherwise.
fn emit(report: &Value, json: bool) {
    if json {
        println!("{report}");
    } else {
        print_summary(report);
    }
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

/// What [`drive`] saw.
pub(crate) struct Run {
    pub started: Instant,
    /// How long the submits took.
    pub submitted: Duration,
    pub done: usize,
    /// When the first `job.started` of the bench's jobs came.
    pub first_start: Option<Instant>,
    /// When the last completion came.
    pub finished: Instant,
    /// Servers named by the jobs' `job.started` events.
    pub servers: usize,
}

impl Run {
    /// The first start, once every job completed; an error naming what is missing.
    pub fn check(&self, jobs: usize) -> Result<Instant> {
        if self.done < jobs {
            bail!("only {} of {jobs} jobs completed", self.done);
        }
        self.first_start
            .context("no job.started event came for the bench's jobs")
    }
}

/// Submits `jobs` no-op jobs (kind `noop`) from `submitters` tasks, `batch` a call,
/// spread over `engines` in turn, and follows `engines[0]`'s events until each has
/// completed (or a job failed).
pub(crate) async fn drive(
    engines: &[Engine],
    jobs: usize,
    batch: usize,
    submitters: usize,
) -> Result<Run> {
    // The bench's own job ids, chosen up front: a reused --db may hold jobs that
    // recovery runs at the same time, and those must not count.
    let ids = job_ids(jobs);
    let own: Arc<HashSet<String>> = Arc::new(ids.iter().cloned().collect());
    let mut events = engines[0].subscribe().await?;
    let started = Instant::now();
    let mut tasks = Vec::new();
    let mut rest = ids.as_slice();
    for s in 0..submitters {
        let engine = engines[s % engines.len()].clone();
        let share = jobs / submitters + usize::from(s < jobs % submitters);
        let (mine, others) = rest.split_at(share);
        rest = others;
        let mine = mine.to_vec();
        tasks.push(tokio::spawn(async move {
            for chunk in mine.chunks(batch) {
                let specs = chunk.iter().map(|id| JobSpec::new("noop").id(id)).collect();
                engine.submit_many(specs).await?;
            }
            anyhow::Ok(())
        }));
    }
    let waiter = tokio::spawn(async move {
        let mut done = 0usize;
        let mut servers: HashSet<String> = HashSet::new();
        let mut first_start: Option<Instant> = None;
        while done < jobs {
            let Some(e) = events.next().await else { break };
            if !e.job_id.as_ref().is_some_and(|id| own.contains(id)) {
                continue;
            }
            match e.kind {
                EventKind::Started => {
                    first_start.get_or_insert_with(Instant::now);
                    if let Some(s) = e.data["server_id"].as_str() {
                        servers.insert(s.to_owned());
                    }
                }
                EventKind::Completed => done += 1,
                EventKind::Failed => bail!("a job failed: {}", e.data),
                _ => {}
            }
        }
        Ok((done, first_start, Instant::now(), servers.len()))
    });
    for t in tasks {
        t.await??;
    }
    let submitted = started.elapsed();
    let (done, first_start, finished, servers) = waiter.await??;
    Ok(Run {
        started,
        submitted,
        done,
        first_start,
        finished,
        servers,
    })
}

/// The throughput bench: no-op jobs through their whole life, then the same rows
/// written by bare SQLite statements ([`baton_store::sqlite::floor`]) beside the
/// store's file, so that each run shows the engine next to SQLite's own limit.
/// What `bench throughput` runs.
struct Shape {
    jobs: usize,
    workers: usize,
    batch: usize,
    submitters: usize,
    /// A concurrency limit on the jobs' kind.
    kind_limit: Option<u32>,
}

async fn throughput(store: SqliteStore, shape: Shape, durability: Durability) -> Result<Value> {
    let Shape {
        jobs,
        workers,
        batch,
        submitters,
        kind_limit,
    } = shape;
    let db = store.path().to_owned();
    let mut builder = Engine::builder()
        .store(Arc::new(store))
        .queue("default", workers)
        .handler("noop", |_ctx, _payload| async { Ok(Value::Null) });
    if let Some(max) = kind_limit {
        builder = builder.concurrency_limit(baton_engine::ConcurrencyLimit::kind("noop", max));
    }
    let engine = builder.build().await?;
    let count = WriteCount::start(&engine)?;
    let run = drive(std::slice::from_ref(&engine), jobs, batch, submitters).await?;
    let first_start = run.check(jobs)?;
    let (started, submitted, finished) = (run.started, run.submitted, run.finished);
    let total = finished - started;
    let processing = finished - first_start;
    engine.shutdown(Duration::from_secs(5)).await;
    // Read once the store is closed: its writer has finished every batch.
    let w = count.delta();
    if w.commits == 0 {
        bail!(
            "the store committed nothing during the bench: no batch size to measure the floor with"
        );
    }
    if w.statements == 0 {
        bail!(
            "the store counted no SQL statements for statements_per_job (count_statements is off)"
        );
    }
    let per_commit = (jobs as f64 / w.commits as f64).round().max(1.0) as usize;
    let floor = measure_floor(&db, durability, jobs, per_commit).await?;
    let per_job = |n: u64| (n as f64 / jobs as f64 * 100.0).round() / 100.0;
    let us_per_job = |ns: u64| (ns as f64 / 1e3 / jobs as f64 * 100.0).round() / 100.0;
    Ok(json!({
        "bench": "throughput",
        "jobs": jobs,
        "workers": workers,
        "batch": batch,
        "submitters": submitters,
        "kind_limit": kind_limit,
        "durability": durability.as_str(),
        "submit_per_s": rate(jobs, submitted),
        "processing_per_s": rate(jobs, processing),
        "end_to_end_per_s": rate(jobs, total),
        "elapsed_ms": ms(total),
        "store_commits": w.commits,
        "store_writes": w.writes,
        "jobs_per_commit": (jobs as f64 / w.commits as f64 * 10.0).round() / 10.0,
        "writer_us_per_job": us_per_job(w.busy_ns),
        "writer_commit_us_per_job": us_per_job(w.commit_ns),
        "writer_busy_pct": (w.busy_ns as f64 / total.as_nanos() as f64 * 1000.0).round() / 10.0,
        "writer_index_us_per_job": us_per_job(w.index_ns),
        "statements_per_job": per_job(w.statements),
        "floor_per_s": floor.per_s().round(),
        "floor_commits": floor.commits,
        "floor_jobs_per_commit": per_commit,
        "floor_statements_per_job": per_job(floor.statements),
    }))
}

/// SQLite's own rate for the bench's rows ([`baton_store::sqlite::floor`]), on a
/// fresh file in a temporary folder beside `db` (the same file system), removed after.
async fn measure_floor(
    db: &std::path::Path,
    durability: Durability,
    jobs: usize,
    per_commit: usize,
) -> Result<baton_store::sqlite::Floor> {
    let parent = db
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let dir = tempfile::Builder::new()
        .prefix(".baton-floor-")
        .tempdir_in(parent)
        .with_context(|| {
            format!(
                "cannot measure the SQLite floor: cannot create a folder in {}",
                parent.display()
            )
        })?;
    let options = SqliteOptions::new(dir.path().join("floor.db")).durability(durability);
    let floor =
        tokio::task::spawn_blocking(move || baton_store::sqlite::floor(&options, jobs, per_commit))
            .await
            .context("the SQLite floor's thread failed")?
            .context("cannot measure the SQLite floor")?;
    drop(dir);
    Ok(floor)
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
    let ids = job_ids(jobs);
    let own: HashSet<String> = ids.iter().cloned().collect();
    let mut events = engine.subscribe().await?;
    let started = Instant::now();
    let submitter = {
        let engine = engine.clone();
        let program = program.to_owned();
        tokio::spawn(async move {
            for chunk in ids.chunks(batch) {
                let specs = chunk
                    .iter()
                    .map(|id| JobSpec::command([program.as_str()]).id(id).max_attempts(1))
                    .collect();
                engine.submit_many(specs).await?;
            }
            anyhow::Ok(())
        })
    };
    let mut done = 0usize;
    while done < jobs {
        let Some(e) = events.next().await else { break };
        if !e.job_id.as_ref().is_some_and(|id| own.contains(id)) {
            continue;
        }
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
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(String, Instant)>();
    let engine = Engine::builder()
        .store(Arc::new(store))
        .handler("mark", move |ctx, _payload| {
            let _ = tx.send((ctx.job_id().to_owned(), Instant::now()));
            async { Ok(Value::Null) }
        })
        .build()
        .await?;
    let mut submit_ack = Vec::with_capacity(samples);
    let mut to_start = Vec::with_capacity(samples);
    for _ in 0..samples {
        tokio::time::sleep(gap).await;
        let t0 = Instant::now();
        let id = engine.submit(JobSpec::new("mark")).await?.job.id;
        let acked = t0.elapsed();
        // A reused --db may hold `mark` jobs of an earlier run: only this one counts.
        let started = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match rx.recv().await {
                    Some((job, at)) if job == id => return Some(at),
                    Some(_) => continue,
                    None => return None,
                }
            }
        })
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
        "max_ms": ms(pct(&to_start, 1.0)),
        "submit_ack_p50_ms": ms(pct(&submit_ack, 0.50)),
        "submit_ack_p99_ms": ms(pct(&submit_ack, 0.99)),
    }))
}

/// The `p` quantile of a sorted, non-empty list (every caller checks that its list
/// has at least one sample).
pub(crate) fn pct(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

/// The store's write counters from the moment it was made, for a bench's
/// `store_commits`, `store_writes` and the writer's cost; an error when the store keeps
/// no counters.
pub(crate) struct WriteCount {
    stats: Arc<baton_store::WriteStats>,
    start: Writes,
}

/// What the store's writer did: commits, the writes they held, its busy time (with
/// the part spent committing), its time indexing for search while idle, and its SQL
/// statements (those of idle indexing apart).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Writes {
    pub commits: u64,
    pub writes: u64,
    pub busy_ns: u64,
    pub commit_ns: u64,
    pub index_ns: u64,
    pub statements: u64,
}

impl WriteCount {
    pub(crate) fn start(engine: &Engine) -> Result<Self> {
        let stats = engine
            .store()
            .write_stats()
            .context("the store keeps no write counters for store_commits and store_writes")?;
        let start = Self::read(&stats);
        Ok(Self { stats, start })
    }

    fn read(stats: &baton_store::WriteStats) -> Writes {
        use std::sync::atomic::Ordering::Relaxed;
        Writes {
            commits: stats.batches.load(Relaxed),
            writes: stats.writes.load(Relaxed),
            busy_ns: stats.busy_ns.load(Relaxed),
            commit_ns: stats.commit_ns.load(Relaxed),
            index_ns: stats.index_ns.load(Relaxed),
            statements: stats.statements.load(Relaxed),
        }
    }

    /// Commits and writes since the start.
    pub(crate) fn since(&self) -> (u64, u64) {
        let d = self.delta();
        (d.commits, d.writes)
    }

    /// Everything counted since the start. The writer adds a batch's time once the
    /// batch is done, after its callers heard back: read after the store closed for
    /// the last batch to count.
    pub(crate) fn delta(&self) -> Writes {
        let (now, s) = (Self::read(&self.stats), self.start);
        Writes {
            commits: now.commits - s.commits,
            writes: now.writes - s.writes,
            busy_ns: now.busy_ns - s.busy_ns,
            commit_ns: now.commit_ns - s.commit_ns,
            index_ns: now.index_ns - s.index_ns,
            statements: now.statements - s.statements,
        }
    }
}

pub(crate) fn job_ids(n: usize) -> Vec<String> {
    (0..n)
        .map(|_| baton_core::JobId::generate().to_string())
        .collect()
}

pub(crate) fn rate(n: usize, d: Duration) -> f64 {
    (n as f64 / d.as_secs_f64().max(1e-9)).round()
}

pub(crate) fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// A server for `engine` on a free loopback port, in this process, for the benches
/// that go through real HTTP; it stops when [`InProcess::stop`] is called.
pub(crate) struct InProcess {
    pub addr: std::net::SocketAddr,
    stop: tokio_util::sync::CancellationToken,
    served: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl InProcess {
    pub(crate) async fn start(
        engine: &baton_engine::Engine,
        options: baton_server::ServerOptions,
    ) -> Result<InProcess> {
        let state = baton_server::AppState::new(engine.clone(), &options).await?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let stop = tokio_util::sync::CancellationToken::new();
        let served = {
            let stop = stop.clone();
            tokio::spawn(async move {
                baton_server::serve(listener, state, &options, stop.cancelled_owned()).await
            })
        };
        Ok(InProcess { addr, stop, served })
    }

    pub(crate) async fn stop(self) {
        self.stop.cancel();
        let _ = self.served.await;
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use baton_core::State;
    use baton_core::spec::Limits;
    use baton_store::{JobFilter, Store};

    use super::*;

    /// Queued `noop` jobs left in the database by an earlier run: the bench's engine
    /// runs them too (FIFO, ahead of the bench's own jobs).
    async fn leave_jobs(db: &std::path::Path, n: usize) -> HashSet<String> {
        let store = SqliteStore::open(SqliteOptions::new(db)).unwrap();
        let now = chrono::Utc::now().timestamp_millis();
        let jobs: Vec<_> = (0..n)
            .map(|_| {
                JobSpec::new("noop")
                    .validate(now, &Limits::default())
                    .unwrap()
            })
            .collect();
        let out = store.submit(jobs).await.unwrap();
        store.close().await;
        out.into_iter().map(|s| s.job.id).collect()
    }

    async fn queued_ids(db: &std::path::Path) -> HashSet<String> {
        let store = SqliteStore::open(SqliteOptions::new(db)).unwrap();
        let filter = JobFilter {
            states: vec![State::Queued, State::Running],
            limit: 10_000,
            ..JobFilter::default()
        };
        let page = store.list(filter).await.unwrap();
        store.close().await;
        page.jobs.into_iter().map(|j| j.id).collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn throughput_on_a_reused_db_counts_only_its_own_jobs() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("bench.db");
        let leftovers = leave_jobs(&db, 400).await;
        let options = SqliteOptions::new(&db)
            .durability(Durability::Normal)
            .count_statements(true);
        let store = SqliteStore::open(options).unwrap();
        // One worker: the 400 older jobs run first; 20 completions of theirs must not
        // end the bench.
        let report = throughput(store, shape(20, 1, 10, 2), Durability::Normal)
            .await
            .unwrap();
        assert_eq!(report["jobs"], 20);
        assert!(report["end_to_end_per_s"].as_f64().unwrap() > 0.0);
        let unfinished: Vec<String> = queued_ids(&db)
            .await
            .into_iter()
            .filter(|id| !leftovers.contains(id))
            .collect();
        assert!(
            unfinished.is_empty(),
            "the bench ended before its own jobs: {unfinished:?}"
        );
    }

    /// Each run reports the writer's cost per job and SQLite's own rate for the same
    /// rows, measured, not defaulted.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn throughput_reports_the_writer_s_cost_and_the_sqlite_floor() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("bench.db");
        let options = SqliteOptions::new(&db)
            .durability(Durability::Normal)
            .count_statements(true);
        let store = SqliteStore::open(options).unwrap();
        let report = throughput(store, shape(200, 8, 50, 2), Durability::Normal)
            .await
            .unwrap();
        let figure = |key: &str| {
            report[key]
                .as_f64()
                .unwrap_or_else(|| panic!("no {key} in {report}"))
        };
        // A job's insert, claim and completion, each with its event, at the least.
        assert!(figure("statements_per_job") >= 3.0, "{report}");
        assert!(figure("writer_us_per_job") > 0.0, "{report}");
        assert!(
            figure("writer_commit_us_per_job") <= figure("writer_us_per_job"),
            "committing is part of the writer's busy time: {report}"
        );
        assert!(figure("floor_per_s") > 0.0, "{report}");
        assert!(figure("store_commits") >= 1.0, "{report}");
        assert_eq!(
            figure("floor_jobs_per_commit"),
            (200.0 / figure("store_commits")).round().max(1.0),
            "the floor commits as often as the engine did: {report}"
        );
        let expected = 6.0 + 2.0 * figure("floor_commits") / 200.0;
        assert!(
            (figure("floor_statements_per_job") - expected).abs() < 0.01,
            "six row writes per job and a BEGIN and COMMIT per transaction: {report}"
        );
        // The floor's file is gone; the bench's own database is all that is left.
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| name.starts_with(".baton-floor"))
            .collect();
        assert!(left.is_empty(), "the floor's folder stayed: {left:?}");
    }

    fn shape(jobs: usize, workers: usize, batch: usize, submitters: usize) -> Shape {
        Shape {
            jobs,
            workers,
            batch,
            submitters,
            kind_limit: None,
        }
    }

    /// Under a kind limit every job still runs once, and the report says the limit.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn throughput_under_a_kind_limit_runs_every_job_and_names_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let options = SqliteOptions::new(dir.path().join("bench.db"))
            .durability(Durability::Normal)
            .count_statements(true);
        let store = SqliteStore::open(options).unwrap();
        let report = throughput(
            store,
            Shape {
                kind_limit: Some(2),
                ..shape(200, 8, 50, 2)
            },
            Durability::Normal,
        )
        .await
        .unwrap();
        assert_eq!(report["kind_limit"], 2, "{report}");
        assert_eq!(report["jobs"], 200, "{report}");
        assert!(report["end_to_end_per_s"].as_f64().unwrap() > 0.0);
    }

    /// A store that does not count its statements fails the bench rather than
    /// printing zero statements a job.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn throughput_without_statement_counts_fails_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let options =
            SqliteOptions::new(dir.path().join("bench.db")).durability(Durability::Normal);
        let store = SqliteStore::open(options).unwrap();
        let err = throughput(store, shape(20, 4, 10, 1), Durability::Normal)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("no SQL statements"), "{err:#}");
    }

    /// A floor that cannot be measured fails the bench with the reason.
    #[tokio::test]
    async fn a_floor_that_cannot_be_measured_fails_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-folder");
        std::fs::write(&file, b"").unwrap();
        let err = measure_floor(&file.join("bench.db"), Durability::Full, 10, 5)
            .await
            .unwrap_err();
        let text = format!("{err:#}");
        assert!(
            text.contains("cannot measure the SQLite floor") && text.contains("not-a-folder"),
            "{text}"
        );
    }
}
