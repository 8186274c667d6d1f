//! `baton bench events`: how long a progress event takes from the handler that
//! reports it to SSE clients of `/api/events`, with many clients connected.

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use baton_engine::{Engine, EventKind, JobSpec};
use baton_server::{AppState, ServerOptions};
use baton_store::{Durability, SqliteOptions, SqliteStore};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, BufReader};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::bench_clients::{self, now_ns};
use crate::bench_proc::cpu_us;

pub struct Settings {
    pub subscribers: usize,
    pub events: usize,
    pub gap: Duration,
    /// The clients run in a child process instead of the engine's runtime.
    pub clients_process: bool,
    /// Threads of the clients' process.
    pub client_threads: usize,
}

pub async fn run(db: std::path::PathBuf, durability: Durability, s: Settings) -> Result<Value> {
    let store = SqliteStore::open(SqliteOptions::new(&db).durability(durability))
        .with_context(|| format!("cannot open {}", db.display()))?;
    let synchronous = baton_store::Store::synchronous(&store);
    let engine = Engine::builder()
        .store(Arc::new(store))
        .handler("emit", move |ctx, payload| async move {
            let n = payload["events"].as_u64().unwrap_or(100);
            let gap = Duration::from_micros(payload["gap_us"].as_u64().unwrap_or(1000));
            for i in 0..n {
                // The message carries the moment the handler reported it.
                ctx.progress(i as f64 / n as f64, now_ns().to_string())
                    .await?;
                tokio::time::sleep(gap).await;
            }
            Ok(Value::Null)
        })
        .build()
        .await?;
    let options = ServerOptions::default();
    let state = AppState::new(engine.clone(), &options).await?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let stop = CancellationToken::new();
    let server_stop = stop.clone();
    let server = tokio::spawn(async move {
        baton_server::serve(listener, state, &options, async move {
            server_stop.cancelled().await
        })
        .await
    });
    let measured = if s.clients_process {
        in_child(&engine, addr, &s).await
    } else {
        in_process(&engine, addr, &s).await
    };
    stop.cancel();
    let _ = server.await;
    engine.shutdown(Duration::from_secs(5)).await;
    let Measured {
        mut all,
        mut published,
        cpu_us: spent,
    } = measured?;
    if all.is_empty() || published.is_empty() {
        bail!("no progress event was measured");
    }
    all.sort_unstable();
    published.sort_unstable();
    Ok(json!({
        "bench": "events",
        "subscribers": s.subscribers,
        "clients": if s.clients_process { "process" } else { "in_process" },
        "client_threads": if s.clients_process { json!(s.client_threads) } else { Value::Null },
        "events": s.events,
        "gap_ms": ms(s.gap.as_nanos() as u64),
        "durability": match durability { Durability::Full => "full", Durability::Normal => "normal" },
        "synchronous": synchronous,
        "deliveries": all.len(),
        "p50_ms": ms(pct(&all, 0.50)),
        "p90_ms": ms(pct(&all, 0.90)),
        "p99_ms": ms(pct(&all, 0.99)),
        "max_ms": ms(*all.last().unwrap_or(&0)),
        "published_p50_ms": ms(pct(&published, 0.50)),
        "published_p99_ms": ms(pct(&published, 0.99)),
        "cpu_us_per_delivery": (spent as f64 / all.len() as f64 * 100.0).round() / 100.0,
    }))
}

/// Latencies in nanoseconds: of every delivery to a client, and of each event's
/// publication by the engine (its durable write) as an in-process subscriber sees it;
/// and the bench process's CPU time while the events went out.
struct Measured {
    all: Vec<u64>,
    published: Vec<u64>,
    cpu_us: u64,
}

async fn in_process(engine: &Engine, addr: std::net::SocketAddr, s: &Settings) -> Result<Measured> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Result<Vec<u64>>>();
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let deadline = tokio::time::Instant::now() + time_limit(s);
    for _ in 0..s.subscribers {
        let tx = tx.clone();
        let ready = ready_tx.clone();
        let events = s.events;
        tokio::spawn(async move {
            let _ = tx.send(bench_clients::subscribe(addr, events, ready).await);
        });
    }
    drop(tx);
    drop(ready_tx);
    for i in 0..s.subscribers {
        let opened = tokio::time::timeout(Duration::from_secs(30), ready_rx.recv())
            .await
            .context("subscribers did not connect in 30 s")?;
        if opened.is_none() {
            let why = match rx.recv().await {
                Some(Err(e)) => format!(": {e:#}"),
                _ => String::new(),
            };
            bail!(
                "only {i} of {} subscribers opened their stream{why}",
                s.subscribers
            );
        }
    }
    let cpu = cpu_us()?;
    let published = emit(engine, s).await?;
    let mut all = Vec::with_capacity(s.subscribers * s.events);
    let mut complete = 0;
    let mut failure = None;
    let collect = async {
        while let Some(l) = rx.recv().await {
            match l {
                Ok(l) => {
                    if l.len() >= s.events {
                        complete += 1;
                    }
                    all.extend(l);
                }
                Err(e) => failure = Some(format!("{e:#}")),
            }
        }
    };
    if tokio::time::timeout_at(deadline, collect).await.is_err() {
        failure.get_or_insert_with(|| {
            format!(
                "a client still waited for its events after {:?}",
                time_limit(s)
            )
        });
    }
    let spent = cpu_us()? - cpu;
    check_complete(complete, s, failure)?;
    Ok(Measured {
        all,
        published,
        cpu_us: spent,
    })
}

/// The clients in a child process (`baton bench-clients`), which reports every
/// delivery's latency on its stdout.
async fn in_child(engine: &Engine, addr: std::net::SocketAddr, s: &Settings) -> Result<Measured> {
    let exe = std::env::current_exe().context("cannot find the baton binary")?;
    let mut child = tokio::process::Command::new(exe)
        .args(["bench-clients", "--addr", &addr.to_string()])
        .args(["--clients", &s.subscribers.to_string()])
        .args(["--events", &s.events.to_string()])
        .args(["--timeout-s", &time_limit(s).as_secs().to_string()])
        .args(["--threads", &s.client_threads.to_string()])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("cannot start the clients process (baton bench-clients)")?;
    let mut out = BufReader::new(child.stdout.take().context("no stdout")?);
    let mut err = child.stderr.take().context("no stderr")?;
    let stderr = tokio::spawn(async move {
        let mut text = String::new();
        let _ = err.read_to_string(&mut text).await;
        text
    });
    let result = async {
        let ready =
            bench_clients::read_line(&mut out, Duration::from_secs(60), "its streams open").await?;
        if ready["ready"].as_u64() != Some(s.subscribers as u64) {
            bail!(
                "the clients process opened {} of {} streams",
                ready["ready"],
                s.subscribers
            );
        }
        let cpu = cpu_us()?;
        let published = emit(engine, s).await?;
        let wait = time_limit(s) + Duration::from_secs(10);
        let mut report = bench_clients::read_line(&mut out, wait, "its latencies").await?;
        let spent = cpu_us()? - cpu;
        let all: Vec<u64> = serde_json::from_value(report["latencies_ns"].take())
            .context("the clients process reported no latencies")?;
        let complete = report["complete"].as_u64().unwrap_or(0) as usize;
        check_complete(complete, s, report["error"].as_str().map(str::to_owned))?;
        Ok(Measured {
            all,
            published,
            cpu_us: spent,
        })
    }
    .await;
    match result {
        Ok(m) => {
            let status = child.wait().await?;
            if !status.success() {
                bail!("the clients process failed ({status})");
            }
            Ok(m)
        }
        Err(e) => {
            let _ = child.start_kill();
            let _ = child.wait().await;
            let text = stderr.await.unwrap_or_default();
            let tail = text.trim().lines().last().unwrap_or_default().to_owned();
            if tail.is_empty() {
                Err(e)
            } else {
                Err(e.context(tail))
            }
        }
    }
}

/// Runs the handler that reports `events` progress events, and returns when each was
/// published by the engine (after its durable write), relative to its report.
async fn emit(engine: &Engine, s: &Settings) -> Result<Vec<u64>> {
    let mut sub = engine.subscribe().await?;
    let expected = s.events;
    let published = tokio::spawn(async move {
        let mut seen = Vec::with_capacity(expected);
        while seen.len() < expected {
            let Some(e) = sub.next().await else { break };
            if e.kind != EventKind::Progress {
                continue;
            }
            let at = now_ns();
            if let Some(sent) = e.data["message"]
                .as_str()
                .and_then(|m| m.parse::<u64>().ok())
            {
                seen.push(at.saturating_sub(sent));
            }
        }
        seen
    });
    // Every stream is open; let the connections' own work settle first.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let job = engine
        .submit(
            JobSpec::new("emit")
                .payload(json!({"events": s.events, "gap_us": s.gap.as_micros() as u64})),
        )
        .await?;
    engine.wait(&job.job.id).await?;
    let published = tokio::time::timeout(Duration::from_secs(30), published)
        .await
        .context("the engine did not publish every progress event in 30 s")??;
    Ok(published)
}

/// How long the clients wait for all the events: twice the time the handler takes to
/// report them, and a minute.
fn time_limit(s: &Settings) -> Duration {
    Duration::from_secs(60) + s.gap * (2 * s.events as u32)
}

fn check_complete(complete: usize, s: &Settings, failure: Option<String>) -> Result<()> {
    if complete < s.subscribers {
        let why = failure.map_or(String::new(), |e| format!(" (a subscriber failed: {e})"));
        bail!(
            "only {complete} of {} subscribers received all {} events{why}",
            s.subscribers,
            s.events
        );
    }
    Ok(())
}

/// The `p` quantile of sorted values.
fn pct(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn ms(nanos: u64) -> f64 {
    (nanos as f64 / 1e3).round() / 1e3
}
