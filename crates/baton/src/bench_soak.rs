//! `baton bench soak`: a real `baton serve` child process under sustained load.
//!
//! The bench starts `baton serve` on a loopback port and connects SSE clients to
//! `/api/events`, each resuming from one event id (`Last-Event-ID`). It measures the
//! server's capacity for a mix of command, pipeline and workflow jobs submitted over
//! HTTP (unless `--rate` gives it), then submits the same mix at a share of that
//! capacity for the whole duration, sampling the server's resident memory and the
//! queued jobs every second. At the end it waits for the queue to drain, stops the
//! server, reads the event log from the store and checks that every client received
//! every stored event of the period exactly once. The bench fails when a client missed
//! an event, the memory grew past its bound, the queue grew, a job failed or the load
//! could not be applied.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use baton_store::{Durability, SqliteOptions, SqliteStore, Store};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::bench_proc;
use crate::bench_server::Server;
use crate::client::Client;

pub struct Settings {
    pub duration: Duration,
    /// Jobs per second to submit; measured when absent.
    pub rate: Option<f64>,
    /// The share of the measured capacity to submit, in percent.
    pub load_pct: f64,
    /// How long the capacity is measured for.
    pub probe: Duration,
    pub clients: usize,
    /// Threads that submit over HTTP.
    pub submitters: usize,
    /// The most the server's resident memory may grow from the start of the soak to
    /// its end.
    pub max_growth_mb: f64,
}

/// How long the queue may take to drain once the load stops, and clients to catch up.
const DRAIN: Duration = Duration::from_secs(120);

pub async fn run(
    db: PathBuf,
    workdir: &Path,
    durability: Durability,
    s: Settings,
) -> Result<Value> {
    if s.clients == 0 || s.submitters == 0 {
        bail!("--clients and --submitters must be at least 1");
    }
    if s.duration < Duration::from_secs(1) {
        bail!("--duration must be at least 1s");
    }
    if !(s.load_pct > 0.0 && s.load_pct <= 100.0) {
        bail!(
            "--load-pct must be above 0 and at most 100, not {}",
            s.load_pct
        );
    }
    if s.rate.is_some_and(|r| r.is_nan() || r <= 0.0) {
        bail!("--rate must be above 0");
    }
    if s.rate.is_none() && s.probe < Duration::from_secs(3) {
        bail!("--probe must be at least 3s (the first 2 s warm up)");
    }
    let server = Server::start(&db, workdir, durability, "soak-server.log")?;
    let url = server.url.clone();
    let api = Client::new(&url, None, false)?;

    // Where the clients start: the last event of a job that ended before they connect.
    let start_id = blocking({
        let api = api.clone();
        move || marker(&api)
    })
    .await?;
    let (end_tx, end_rx) = watch::channel(None::<u64>);
    let addr: SocketAddr = url
        .trim_start_matches("http://")
        .parse()
        .with_context(|| format!("the server printed an unexpected URL {url}"))?;
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(s.clients);
    let mut clients = Vec::with_capacity(s.clients);
    for _ in 0..s.clients {
        clients.push(tokio::spawn(follow(
            addr,
            start_id,
            end_rx.clone(),
            ready_tx.clone(),
        )));
    }
    drop(ready_tx);
    for connected in 0..s.clients {
        tokio::time::timeout(Duration::from_secs(30), ready_rx.recv())
            .await
            .ok()
            .flatten()
            .with_context(|| {
                format!(
                    "only {connected} of {} SSE clients connected in 30 s",
                    s.clients
                )
            })?;
    }
    let rss_start = server.rss_mb()?;

    let orchestrated = blocking({
        let api = api.clone();
        let pid = server.pid;
        let settings = Load {
            duration: s.duration,
            rate: s.rate,
            load_pct: s.load_pct,
            probe: s.probe,
            submitters: s.submitters,
        };
        move || load(&api, pid, settings)
    })
    .await;
    let load = match orchestrated {
        Ok(l) => l,
        Err(e) => return Err(e.context(server.log_tail())),
    };

    // Where the clients stop: the last event of a job that ended after the drain.
    let end_id = blocking({
        let api = api.clone();
        move || marker(&api)
    })
    .await?;
    let _ = end_tx.send(Some(end_id));
    let mut received = Vec::with_capacity(s.clients);
    let deadline = tokio::time::Instant::now() + DRAIN;
    for mut c in clients {
        let got = match tokio::time::timeout_at(deadline, &mut c).await {
            Ok(Ok(got)) => got,
            Ok(Err(e)) => Received::failed(format!("the client task failed: {e}")),
            Err(_) => {
                c.abort();
                Received::failed(format!(
                    "a client did not reach event {end_id} within {} s",
                    DRAIN.as_secs()
                ))
            }
        };
        received.push(got);
    }
    server.stop()?;

    let stored = stored_ids(&db, durability, start_id, end_id).await?;
    let mut missing = 0u64;
    let mut extra = 0u64;
    let mut duplicates = 0u64;
    let mut out_of_order = 0u64;
    let mut deliveries = 0u64;
    let mut complete = 0usize;
    let mut errors = Vec::new();
    for r in &mut received {
        // Events after the end marker (the server's own shutdown) are not compared.
        r.ids.keep_below(end_id - start_id);
        let (m, x) = r.ids.compare(&stored);
        missing += m;
        extra += x;
        duplicates += r.duplicates;
        out_of_order += r.out_of_order;
        deliveries += r.count;
        if m == 0 && x == 0 && r.duplicates == 0 && r.out_of_order == 0 && r.error.is_none() {
            complete += 1;
        }
        if let Some(e) = &r.error
            && errors.len() < 3
        {
            errors.push(e.clone());
        }
    }
    let rate = load.rate;
    let growth = load.rss_end - load.rss_soak_start;
    // The queue may hold a few seconds of work at any moment (a workflow's jobs arrive
    // together), never a backlog that the server cannot work off.
    let queue_bound = (rate * 5.0).max(100.0).round() as u64;
    let report = json!({
        "bench": "soak",
        "duration_s": s.duration.as_secs_f64(),
        "clients": s.clients,
        "submitters": s.submitters,
        "mix": "command /bin/true, command sh -c 'echo ::progress 0.5', 2-step pipeline, 4-job workflow (fan-out and fan-in)",
        "durability": match durability { Durability::Full => "full", Durability::Normal => "normal" },
        "capacity_per_s": load.capacity.map(|c| c.round()),
        "load_pct": s.load_pct,
        "target_per_s": (rate * 10.0).round() / 10.0,
        "submitted": load.submitted,
        "submitted_per_s": (load.submitted as f64 / s.duration.as_secs_f64()).round(),
        "completed": load.completed,
        "jobs_per_s": (load.completed as f64 / s.duration.as_secs_f64()).round(),
        "failed": load.failed,
        "rss_start_mb": rss_start,
        "rss_soak_start_mb": load.rss_soak_start,
        "rss_end_mb": load.rss_end,
        "rss_max_mb": load.rss_max,
        "rss_growth_mb": (growth * 10.0).round() / 10.0,
        "rss_growth_bound_mb": s.max_growth_mb,
        "rss_trend_mb": load.trend.iter().map(|t| t.0).collect::<Vec<_>>(),
        "queued_trend": load.trend.iter().map(|t| t.1).collect::<Vec<_>>(),
        "queued_start": load.queued_start,
        "queued_end": load.queued_end,
        "queued_max": load.queued_max,
        "queued_bound": queue_bound,
        "drain_ms": load.drain.as_millis() as u64,
        "events": stored.len,
        "deliveries": deliveries,
        "clients_complete": complete,
        "missing_events": missing,
        "duplicate_events": duplicates,
        "unknown_events": extra,
        "out_of_order_events": out_of_order,
        "client_errors": errors,
    });
    Ok(report)
}

/// Why a soak report fails the bench; empty when it passes.
pub fn failures(r: &Value) -> Vec<String> {
    let n = |key: &str| r[key].as_f64().unwrap_or(f64::NAN);
    let mut out = Vec::new();
    let (clients, complete) = (n("clients"), n("clients_complete"));
    if !at_most(clients, complete) {
        let mut why = format!(
            "{} of {} SSE clients did not receive every one of the {} events exactly once ({} missing, {} duplicated, {} not in the store, {} out of order)",
            clients - complete,
            clients,
            n("events"),
            n("missing_events"),
            n("duplicate_events"),
            n("unknown_events"),
            n("out_of_order_events"),
        );
        for e in r["client_errors"].as_array().into_iter().flatten() {
            why.push_str(&format!("; {}", e.as_str().unwrap_or_default()));
        }
        out.push(why);
    }
    let growth = n("rss_growth_mb");
    if !at_most(growth, n("rss_growth_bound_mb")) {
        out.push(format!(
            "the server's memory grew by {growth:.1} MB ({:.1} to {:.1} MB), more than the bound of {} MB",
            n("rss_soak_start_mb"),
            n("rss_end_mb"),
            n("rss_growth_bound_mb")
        ));
    }
    if !at_most(n("queued_end"), n("queued_bound")) {
        out.push(format!(
            "{} jobs were queued at the end, more than the bound of {} (5 s of work): the queue grew",
            n("queued_end"),
            n("queued_bound")
        ));
    }
    if !at_most(n("failed"), 0.0) {
        out.push(format!("{} jobs failed", n("failed")));
    }
    let wanted = n("target_per_s") * n("duration_s");
    if !at_most(wanted * 0.9, n("submitted")) {
        out.push(format!(
            "only {} jobs were submitted, under 90 % of the target {}/s for {} s: the load was not applied",
            n("submitted"),
            n("target_per_s"),
            n("duration_s")
        ));
    }
    out
}

/// `a <= b`, false when either is not a number (a figure missing from the report).
fn at_most(a: f64, b: f64) -> bool {
    a <= b
}

/// Runs a job to its end and answers the global id of its last event.
fn marker(api: &Client) -> Result<u64> {
    let job: Value = api.call(
        "POST",
        "/api/jobs",
        Some(&json!({"kind": "command", "command": ["/bin/true"], "max_attempts": 1})),
    )?;
    let id = job["id"].as_str().context("the submit answered no id")?;
    let done: Value = api.call("GET", &format!("/api/jobs/{id}/wait?timeout=60s"), None)?;
    if done["state"] != "completed" {
        bail!("the marker job {id} ended {}", done["state"]);
    }
    let events: Value = api.call("GET", &format!("/api/jobs/{id}/events"), None)?;
    events["events"]
        .as_array()
        .and_then(|e| e.iter().filter_map(|e| e["id"].as_u64()).max())
        .with_context(|| format!("the marker job {id} has no events"))
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await?
}

// ---------------------------------------------------------------------------------
// The load.

struct Load {
    duration: Duration,
    rate: Option<f64>,
    load_pct: f64,
    probe: Duration,
    submitters: usize,
}

struct Loaded {
    /// The server's RSS and the queued jobs at 0 %, 10 %, ... 100 % of the soak.
    trend: Vec<(f64, u64)>,
    capacity: Option<f64>,
    rate: f64,
    submitted: u64,
    completed: u64,
    failed: u64,
    rss_soak_start: f64,
    rss_end: f64,
    rss_max: f64,
    queued_start: u64,
    queued_end: u64,
    queued_max: u64,
    drain: Duration,
}

/// One unit of the mix: what to post and how many jobs it holds.
fn unit(i: u64) -> (&'static str, Value, u64) {
    let command = |argv: &[&str]| json!({"kind": "command", "command": argv, "max_attempts": 1});
    let progress = ["sh", "-c", "echo ::progress 0.5"];
    match i % 4 {
        0 => ("/api/jobs", command(&["/bin/true"]), 1),
        1 => ("/api/jobs", command(&progress), 1),
        2 => (
            "/api/jobs",
            json!({"kind": "pipeline", "max_attempts": 1, "steps": [
                {"name": "first", "command": ["/bin/true"]},
                {"name": "second", "command": progress},
            ]}),
            1,
        ),
        _ => {
            let mut d = command(&progress);
            d["depends_on"] = json!(["b", "c"]);
            let mut b = command(&["/bin/true"]);
            b["depends_on"] = json!(["a"]);
            (
                "/api/workflows",
                json!({"jobs": {"a": command(&["/bin/true"]), "b": b.clone(), "c": b, "d": d}}),
                4,
            )
        }
    }
}

/// The store's job counts, from `/api/stats`.
#[derive(Clone, Copy, Default)]
struct Counts {
    waiting: u64,
    queued: u64,
    completed: u64,
    failed: u64,
}

fn counts(api: &Client) -> Result<Counts> {
    let stats: Value = api.call("GET", "/api/stats", None)?;
    let n = |state: &str| -> Result<u64> {
        stats["states"][state]
            .as_u64()
            .with_context(|| format!("/api/stats has no count of {state} jobs"))
    };
    Ok(Counts {
        waiting: n("queued")? + n("running")? + n("awaiting")? + n("scheduled")?,
        queued: n("queued")?,
        completed: n("completed")?,
        failed: n("failed")? + n("cancelled")? + n("crashed")?,
    })
}

/// Submitting threads: flat out (with at most `backlog` jobs not yet ended) when
/// `rate` is `None`, else paced at `rate` jobs per second together.
struct Submitters {
    stop: Arc<AtomicBool>,
    submitted: Arc<AtomicU64>,
    threads: Vec<std::thread::JoinHandle<Result<()>>>,
}

impl Submitters {
    fn start(api: &Client, n: usize, rate: Option<f64>, ended: Arc<AtomicU64>) -> Submitters {
        let stop = Arc::new(AtomicBool::new(false));
        let submitted = Arc::new(AtomicU64::new(0));
        let mut threads = Vec::with_capacity(n);
        for t in 0..n {
            let (api, stop, submitted, ended) =
                (api.clone(), stop.clone(), submitted.clone(), ended.clone());
            threads.push(std::thread::spawn(move || {
                let began = Instant::now();
                let mut mine = 0u64;
                // Each thread goes through the whole mix, so that the mix is the same
                // flat out and paced.
                let mut i = t as u64;
                while !stop.load(Ordering::Relaxed) {
                    let (path, body, jobs) = unit(i);
                    i += 1;
                    match rate {
                        Some(rate) => {
                            // This thread's share of the rate: its next unit is due when
                            // its jobs so far fit the schedule.
                            let due =
                                began + Duration::from_secs_f64(mine as f64 * n as f64 / rate);
                            while !stop.load(Ordering::Relaxed) {
                                let now = Instant::now();
                                if due <= now {
                                    break;
                                }
                                std::thread::sleep((due - now).min(Duration::from_millis(100)));
                            }
                        }
                        None => {
                            while submitted.load(Ordering::Relaxed)
                                > ended.load(Ordering::Relaxed) + 2_000
                                && !stop.load(Ordering::Relaxed)
                            {
                                std::thread::sleep(Duration::from_millis(5));
                            }
                        }
                    }
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let _: Value = api
                        .call("POST", path, Some(&body))
                        .with_context(|| format!("cannot submit to {path}"))?;
                    mine += jobs;
                    submitted.fetch_add(jobs, Ordering::Relaxed);
                }
                Ok(())
            }));
        }
        Submitters {
            stop,
            submitted,
            threads,
        }
    }

    fn finish(self) -> Result<u64> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join()
                .map_err(|_| anyhow!("a submitting thread panicked"))??;
        }
        Ok(self.submitted.load(Ordering::Relaxed))
    }
}

fn load(api: &Client, pid: u32, s: Load) -> Result<Loaded> {
    let status = PathBuf::from(format!("/proc/{pid}/status"));
    let base = counts(api)?;
    let ended = Arc::new(AtomicU64::new(0));

    let capacity = match s.rate {
        Some(_) => None,
        None => {
            let subs = Submitters::start(api, s.submitters, None, ended.clone());
            let began = Instant::now();
            let warm = Duration::from_secs(2);
            let mut first: Option<(Instant, u64)> = None;
            let mut last = (began, 0);
            while began.elapsed() < s.probe {
                std::thread::sleep(Duration::from_millis(250));
                let c = counts(api)?;
                let done = c.completed + c.failed - base.completed - base.failed;
                ended.store(done, Ordering::Relaxed);
                if began.elapsed() >= warm && first.is_none() {
                    first = Some((Instant::now(), done));
                }
                last = (Instant::now(), done);
            }
            subs.finish()?;
            let (t0, c0) = first.context("the capacity probe ended before its warm-up")?;
            let window = last.0 - t0;
            let capacity = (last.1 - c0) as f64 / window.as_secs_f64().max(1e-9);
            if capacity <= 0.0 {
                bail!("no job completed while the capacity was measured");
            }
            drain(api)?;
            Some(capacity)
        }
    };
    let rate = s
        .rate
        .unwrap_or_else(|| capacity.unwrap_or(0.0) * s.load_pct / 100.0);

    let before = counts(api)?;
    let rss_soak_start = bench_proc::rss_mb_from(&status)?;
    let mut rss_max = rss_soak_start;
    let queued_start = before.queued;
    let mut queued_max = queued_start;
    let subs = Submitters::start(api, s.submitters, Some(rate), ended);
    let began = Instant::now();
    let mut next = began;
    let mut rss_end = rss_soak_start;
    let mut queued_end = queued_start;
    let mut samples = vec![(rss_soak_start, queued_start)];
    while began.elapsed() < s.duration {
        next += Duration::from_secs(1);
        let now = Instant::now();
        let wake = next.min(began + s.duration);
        if wake > now {
            std::thread::sleep(wake - now);
        }
        let rss = bench_proc::rss_mb_from(&status)?;
        let c = counts(api)?;
        rss_max = rss_max.max(rss);
        queued_max = queued_max.max(c.queued);
        rss_end = rss;
        queued_end = c.queued;
        samples.push((rss, c.queued));
    }
    let submitted = subs.finish()?;
    let ended_at = Instant::now();
    let after = drain(api)?;
    let drain_took = ended_at.elapsed();
    // Eleven points from the start to the end, for the trend.
    let trend: Vec<(f64, u64)> = (0..=10)
        .map(|i| samples[i * (samples.len() - 1) / 10])
        .collect();
    Ok(Loaded {
        trend,
        capacity,
        rate,
        submitted,
        completed: after.completed - before.completed,
        failed: after.failed - before.failed,
        rss_soak_start,
        rss_end,
        rss_max,
        queued_start,
        queued_end,
        queued_max,
        drain: drain_took,
    })
}

/// Waits until no job is waiting or running.
fn drain(api: &Client) -> Result<Counts> {
    let deadline = Instant::now() + DRAIN;
    loop {
        let c = counts(api)?;
        if c.waiting == 0 {
            return Ok(c);
        }
        if Instant::now() > deadline {
            bail!(
                "{} jobs were still waiting or running {} s after the load stopped",
                c.waiting,
                DRAIN.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

// ---------------------------------------------------------------------------------
// The clients and the event log.

/// Event ids after a start id, as bits.
#[derive(Default)]
struct IdSet {
    bits: Vec<u64>,
    len: u64,
}

impl IdSet {
    /// Adds `offset` (the id less the start id, less one); false if it was there.
    fn insert(&mut self, offset: u64) -> bool {
        let (word, bit) = ((offset / 64) as usize, offset % 64);
        if word >= self.bits.len() {
            self.bits.resize(word + 1, 0);
        }
        let had = self.bits[word] & (1 << bit) != 0;
        self.bits[word] |= 1 << bit;
        if !had {
            self.len += 1;
        }
        !had
    }

    /// Drops the offsets from `n` on.
    fn keep_below(&mut self, n: u64) {
        let words = n.div_ceil(64) as usize;
        self.bits.truncate(words);
        if !n.is_multiple_of(64)
            && let Some(w) = self.bits.get_mut(words - 1)
        {
            *w &= (1u64 << (n % 64)) - 1;
        }
        self.len = self.bits.iter().map(|w| u64::from(w.count_ones())).sum();
    }

    /// Ids of `expected` not here, and ids here not in `expected`.
    fn compare(&self, expected: &IdSet) -> (u64, u64) {
        let n = self.bits.len().max(expected.bits.len());
        let (mut missing, mut extra) = (0u64, 0u64);
        for i in 0..n {
            let have = self.bits.get(i).copied().unwrap_or(0);
            let want = expected.bits.get(i).copied().unwrap_or(0);
            missing += u64::from((want & !have).count_ones());
            extra += u64::from((have & !want).count_ones());
        }
        (missing, extra)
    }
}

#[derive(Default)]
struct Received {
    ids: IdSet,
    count: u64,
    duplicates: u64,
    out_of_order: u64,
    error: Option<String>,
}

impl Received {
    fn failed(error: String) -> Received {
        Received {
            error: Some(error),
            ..Received::default()
        }
    }
}

/// One SSE client of `/api/events` from `start` on, over plain HTTP/1.0 (the body ends
/// with the connection, no chunks), reading until it has seen the end id once known.
async fn follow(
    addr: SocketAddr,
    start: u64,
    mut end: watch::Receiver<Option<u64>>,
    ready: tokio::sync::mpsc::Sender<()>,
) -> Received {
    let mut got = Received::default();
    if let Err(e) = read_stream(addr, start, &mut end, ready, &mut got).await {
        got.error = Some(format!("{e:#}"));
    }
    got
}

async fn read_stream(
    addr: SocketAddr,
    start: u64,
    end: &mut watch::Receiver<Option<u64>>,
    ready: tokio::sync::mpsc::Sender<()>,
    got: &mut Received,
) -> Result<()> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(
        format!(
            "GET /api/events HTTP/1.0\r\nAccept: text/event-stream\r\nLast-Event-ID: {start}\r\n\r\n"
        )
        .as_bytes(),
    )
    .await?;
    let mut buf = Vec::with_capacity(64 * 1024);
    let mut chunk = vec![0u8; 64 * 1024];
    let mut scanned = 0;
    let mut headers_done = false;
    let mut last = start;
    loop {
        if let Some(e) = *end.borrow()
            && last >= e
        {
            return Ok(());
        }
        let n = tokio::select! {
            n = s.read(&mut chunk) => n?,
            changed = end.changed() => {
                if changed.is_err() {
                    bail!("the bench stopped before the end id was known");
                }
                continue;
            }
        };
        if n == 0 {
            bail!("the server closed the stream after event {last}");
        }
        buf.extend_from_slice(&chunk[..n]);
        if !headers_done {
            let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                continue;
            };
            let head = String::from_utf8_lossy(&buf[..at]).into_owned();
            if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
                bail!(
                    "the server answered {:?}",
                    head.lines().next().unwrap_or("")
                );
            }
            buf.drain(..at + 4);
            headers_done = true;
            let _ = ready.send(()).await;
        }
        while let Some(nl) = buf[scanned..].iter().position(|b| *b == b'\n') {
            let line = &buf[scanned..scanned + nl];
            scanned += nl + 1;
            let Some(id) = line.strip_prefix(b"id: ") else {
                continue;
            };
            let id: u64 = std::str::from_utf8(id)
                .ok()
                .and_then(|t| t.trim().parse().ok())
                .with_context(|| {
                    format!(
                        "an event id that is not a number: {:?}",
                        String::from_utf8_lossy(id)
                    )
                })?;
            got.count += 1;
            if id <= last {
                got.out_of_order += 1;
            }
            last = last.max(id);
            if id > start && !got.ids.insert(id - start - 1) {
                got.duplicates += 1;
            }
        }
        if scanned > 32 * 1024 {
            buf.drain(..scanned);
            scanned = 0;
        }
    }
}

/// The ids of the stored events after `start` up to `end`, read from the store once
/// the server has stopped.
async fn stored_ids(db: &Path, durability: Durability, start: u64, end: u64) -> Result<IdSet> {
    let store = SqliteStore::open(SqliteOptions::new(db).durability(durability))
        .with_context(|| format!("cannot open {} after the soak", db.display()))?;
    let mut ids = IdSet::default();
    let mut after = start;
    'pages: loop {
        let page = store.events_after(after, 10_000).await?;
        if page.is_empty() {
            break;
        }
        for e in &page {
            if e.id > end {
                break 'pages;
            }
            ids.insert(e.id - start - 1);
            after = e.id;
        }
    }
    store.close().await;
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn passing() -> Value {
        json!({"clients": 100, "clients_complete": 100, "events": 5000, "missing_events": 0,
            "duplicate_events": 0, "unknown_events": 0, "out_of_order_events": 0,
            "client_errors": [], "rss_growth_mb": 3.5, "rss_growth_bound_mb": 64.0,
            "rss_soak_start_mb": 40.0, "rss_end_mb": 43.5, "queued_end": 12,
            "queued_bound": 500, "failed": 0, "target_per_s": 100.0, "duration_s": 10.0,
            "submitted": 998})
    }

    #[test]
    fn a_soak_fails_for_each_broken_promise() {
        assert_eq!(failures(&passing()), Vec::<String>::new());
        let check = |changes: Value, expected: &str| {
            let mut r = passing();
            for (k, v) in changes.as_object().unwrap() {
                r[k] = v.clone();
            }
            let f = failures(&r);
            assert!(f.len() == 1 && f[0].contains(expected), "{changes}: {f:?}");
        };
        check(
            json!({"clients_complete": 99, "missing_events": 3,
                "client_errors": ["the server closed the stream after event 7"]}),
            "1 of 100 SSE clients did not receive every one of the 5000 events exactly once (3 missing, 0 duplicated, 0 not in the store, 0 out of order); the server closed the stream after event 7",
        );
        check(
            json!({"rss_growth_mb": 80.2, "rss_end_mb": 120.2}),
            "the server's memory grew by 80.2 MB (40.0 to 120.2 MB), more than the bound of 64 MB",
        );
        check(
            json!({"queued_end": 501}),
            "501 jobs were queued at the end",
        );
        check(json!({"failed": 2}), "2 jobs failed");
        check(json!({"submitted": 899}), "only 899 jobs were submitted");
        // A figure missing from the report is a failure, not a pass.
        check(
            json!({"clients_complete": null}),
            "SSE clients did not receive",
        );
    }

    #[test]
    fn id_sets_count_what_is_missing_and_what_is_extra() {
        let mut want = IdSet::default();
        let mut have = IdSet::default();
        for i in [0, 1, 2, 63, 64, 200] {
            want.insert(i);
        }
        for i in [0, 2, 63, 64, 300] {
            assert!(have.insert(i));
        }
        assert!(!have.insert(2));
        assert_eq!(have.len, 5);
        assert_eq!(have.compare(&want), (2, 1));
        assert_eq!(want.compare(&want), (0, 0));
        // Offsets from 65 on (here 200 and 300) are past the end and not compared.
        have.keep_below(65);
        want.keep_below(65);
        assert_eq!((have.len, want.len), (4, 5));
        assert_eq!(have.compare(&want), (1, 0));
    }
}
