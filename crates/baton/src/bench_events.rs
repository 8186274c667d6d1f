//! `baton bench events`: how long a progress event takes from the handler that
//! reports it to SSE clients of `/api/events`, with many clients connected.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use baton_engine::{Engine, JobSpec};
use baton_server::{AppState, ServerOptions};
use baton_store::{Durability, SqliteOptions, SqliteStore};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub async fn run(
    db: std::path::PathBuf,
    durability: Durability,
    subscribers: usize,
    events: usize,
    gap: Duration,
) -> Result<Value> {
    let store = SqliteStore::open(SqliteOptions::new(&db).durability(durability))
        .with_context(|| format!("cannot open {}", db.display()))?;
    let synchronous = baton_store::Store::synchronous(&store);
    let base = Instant::now();
    let engine = Engine::builder()
        .store(Arc::new(store))
        .handler("emit", move |ctx, payload| async move {
            let n = payload["events"].as_u64().unwrap_or(100);
            let gap = Duration::from_micros(payload["gap_us"].as_u64().unwrap_or(1000));
            for i in 0..n {
                // The message carries the moment the handler reported it.
                let sent = base.elapsed().as_nanos().to_string();
                ctx.progress(i as f64 / n as f64, sent).await?;
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
    let stop = tokio_util_cancel();
    let server_stop = stop.clone();
    let server = tokio::spawn(async move {
        baton_server::serve(listener, state, &options, async move {
            server_stop.cancelled().await
        })
        .await
    });

    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Result<Vec<Duration>>>();
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    for _ in 0..subscribers {
        let tx = tx.clone();
        let ready = ready_tx.clone();
        tokio::spawn(async move {
            let _ = tx.send(subscribe(addr, events, base, ready).await);
        });
    }
    drop(tx);
    drop(ready_tx);
    for _ in 0..subscribers {
        tokio::time::timeout(Duration::from_secs(30), ready_rx.recv())
            .await
            .context("subscribers did not connect in 30 s")?;
    }
    // Every stream is registered with the server before the first event.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let job = engine
        .submit(
            JobSpec::new("emit")
                .payload(json!({"events": events, "gap_us": gap.as_micros() as u64})),
        )
        .await?;
    engine.wait(&job.job.id).await?;
    let mut all = Vec::with_capacity(subscribers * events);
    let mut complete = 0;
    let mut failure = None;
    while let Ok(Some(l)) = tokio::time::timeout(Duration::from_secs(30), rx.recv()).await {
        match l {
            Ok(l) => {
                if l.len() == events {
                    complete += 1;
                }
                all.extend(l);
            }
            Err(e) => failure = Some(e),
        }
    }
    stop.cancel();
    let _ = server.await;
    engine.shutdown(Duration::from_secs(5)).await;
    if complete < subscribers {
        let why = failure.map_or(String::new(), |e| format!(" (a subscriber failed: {e:#})"));
        bail!("only {complete} of {subscribers} subscribers received all {events} events{why}");
    }
    all.sort();
    let pct = |p: f64| {
        let i = ((all.len() as f64 * p).ceil() as usize).clamp(1, all.len()) - 1;
        ms(all[i])
    };
    Ok(json!({
        "bench": "events",
        "subscribers": subscribers,
        "events": events,
        "gap_ms": ms(gap),
        "durability": match durability { Durability::Full => "full", Durability::Normal => "normal" },
        "synchronous": synchronous,
        "deliveries": all.len(),
        "p50_ms": pct(0.50),
        "p90_ms": pct(0.90),
        "p99_ms": pct(0.99),
        "max_ms": ms(*all.last().unwrap_or(&Duration::ZERO)),
    }))
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

fn tokio_util_cancel() -> tokio_util::sync::CancellationToken {
    tokio_util::sync::CancellationToken::new()
}

/// One SSE client over plain HTTP/1.0 (the body ends with the connection, no chunks).
async fn subscribe(
    addr: std::net::SocketAddr,
    events: usize,
    base: Instant,
    ready: tokio::sync::mpsc::UnboundedSender<()>,
) -> Result<Vec<Duration>> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(
        b"GET /api/events?types=job.progress HTTP/1.0\r\nAccept: text/event-stream\r\n\r\n",
    )
    .await?;
    let _ = ready.send(());
    let mut buf = Vec::with_capacity(64 * 1024);
    let mut chunk = [0u8; 16 * 1024];
    let mut latencies = Vec::with_capacity(events);
    let mut scanned = 0;
    while latencies.len() < events {
        let n = tokio::time::timeout(Duration::from_secs(30), s.read(&mut chunk)).await??;
        if n == 0 {
            break;
        }
        let received = base.elapsed();
        buf.extend_from_slice(&chunk[..n]);
        while let Some(end) = buf[scanned..].iter().position(|b| *b == b'\n') {
            let line = &buf[scanned..scanned + end];
            scanned += end + 1;
            // The clients share the machine with the server: read only the send time
            // out of the frame instead of parsing it whole.
            if line.starts_with(b"data: ")
                && let Some(sent) = sent_at(line)
            {
                latencies.push(received.saturating_sub(sent));
            }
        }
        if scanned > 32 * 1024 {
            buf.drain(..scanned);
            scanned = 0;
        }
    }
    Ok(latencies)
}

fn sent_at(line: &[u8]) -> Option<Duration> {
    const KEY: &[u8] = b"\"message\":\"";
    let at = line.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    let digits = line[at..].iter().take_while(|b| b.is_ascii_digit()).count();
    let nanos: u64 = std::str::from_utf8(&line[at..at + digits])
        .ok()?
        .parse()
        .ok()?;
    Some(Duration::from_nanos(nanos))
}
