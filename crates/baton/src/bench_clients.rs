//! The SSE clients of `baton bench events`: tasks in the bench's own process, or a
//! child process (`--clients-process`: the hidden `baton bench-clients`) so that the
//! clients do not share the engine's runtime.
//!
//! Each progress event carries the moment its handler reported it, read from
//! `CLOCK_MONOTONIC`, which every process on the machine shares; a client reads the
//! same clock when a frame arrives.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long a client waits for the server's answer before it gives up.
const SILENCE: Duration = Duration::from_secs(30);

/// The machine's monotonic clock in nanoseconds, the same in every process.
pub fn now_ns() -> u64 {
    // Linux always has this clock; without it no latency could be measured at all.
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .expect("CLOCK_MONOTONIC cannot be read");
    t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
}

/// One SSE client of `/api/events?types=job.progress` over plain HTTP/1.0 (the body
/// ends with the connection, no chunks). It signals `ready` once the server has
/// answered (the stream is registered by then) and returns the latency of each of
/// `events` progress events, in nanoseconds. It has no timer of its own (the clients
/// share the machine with the server): its caller waits for it up to a deadline.
pub async fn subscribe(
    addr: SocketAddr,
    events: usize,
    ready: tokio::sync::mpsc::UnboundedSender<()>,
) -> Result<Vec<u64>> {
    let mut s = TcpStream::connect(addr)
        .await
        .with_context(|| format!("cannot connect to {addr}"))?;
    s.set_nodelay(true)?;
    s.write_all(
        b"GET /api/events?types=job.progress HTTP/1.0\r\nAccept: text/event-stream\r\n\r\n",
    )
    .await?;
    let mut buf = Vec::with_capacity(READ);
    // The answer's head first: a stream the server refused is an error, not silence.
    let body_at = loop {
        buf.reserve(READ);
        let n = tokio::time::timeout(SILENCE, s.read_buf(&mut buf))
            .await
            .with_context(|| format!("the server did not answer in {SILENCE:?}"))??;
        if n == 0 {
            bail!("the server closed the connection before answering");
        }
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]);
            let status = head.lines().next().unwrap_or_default();
            if status.split_whitespace().nth(1) != Some("200") {
                bail!("the server refused the stream: {status}");
            }
            break end + 4;
        }
        if buf.len() > 64 * 1024 {
            bail!("the server's answer has no end of its head");
        }
    };
    let _ = ready.send(());
    let mut latencies = Vec::with_capacity(events);
    match read_events(&mut s, buf, body_at, events, &mut latencies).await {
        Ok(()) => Ok(latencies),
        Err(e) => Err(e.context(format!("after {} of {events} events", latencies.len()))),
    }
}

/// Bytes a client asks for at each read.
const READ: usize = 16 * 1024;

async fn read_events(
    s: &mut TcpStream,
    mut buf: Vec<u8>,
    mut scanned: usize,
    events: usize,
    latencies: &mut Vec<u64>,
) -> Result<()> {
    // The bytes of the head's last read arrived with it.
    let mut received = now_ns();
    loop {
        while let Some(end) = buf[scanned..].iter().position(|b| *b == b'\n') {
            let line = &buf[scanned..scanned + end];
            scanned += end + 1;
            // Read only the send time out of the frame instead of parsing it whole.
            if line.starts_with(b"data: ") {
                let sent = sent_at(line).context("a progress event without its send time")?;
                latencies.push(received.saturating_sub(sent));
            }
        }
        if latencies.len() >= events {
            return Ok(());
        }
        if scanned > 32 * 1024 {
            buf.drain(..scanned);
            scanned = 0;
        }
        buf.reserve(READ);
        if s.read_buf(&mut buf).await? == 0 {
            bail!("the server closed the stream");
        }
        // One reading of the clock for every frame of this read: they arrived together.
        received = now_ns();
    }
}

/// The send time a progress frame's message carries.
fn sent_at(line: &[u8]) -> Option<u64> {
    const KEY: &[u8] = b"\"message\":\"";
    let at = line.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    let digits = line[at..].iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&line[at..at + digits])
        .ok()?
        .parse()
        .ok()
}

#[derive(Args)]
pub struct ClientsArgs {
    /// The server's address (HOST:PORT).
    #[arg(long)]
    addr: SocketAddr,
    /// SSE clients to connect.
    #[arg(long)]
    clients: usize,
    /// Progress events each client waits for.
    #[arg(long)]
    events: usize,
    /// How long the clients wait for all their events, in seconds.
    #[arg(long, default_value_t = 60)]
    timeout_s: u64,
    /// Threads the clients run on.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
}

/// `baton bench-clients`: connects the clients, prints `{"ready": N}` once every
/// stream is open, then one line with every delivery's latency
/// (`{"latencies_ns": [...], "complete": K, "error": ...}`) once each client has its
/// events or has failed. Fails (non-zero) when a client cannot open its stream.
pub async fn run_process(args: ClientsArgs) -> Result<()> {
    if args.clients == 0 || args.events == 0 {
        bail!("--clients and --events must be at least 1");
    }
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Result<Vec<u64>>>();
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(args.timeout_s);
    for _ in 0..args.clients {
        let tx = tx.clone();
        let ready = ready_tx.clone();
        let (addr, events) = (args.addr, args.events);
        tokio::spawn(async move {
            let _ = tx.send(subscribe(addr, events, ready).await);
        });
    }
    drop(tx);
    drop(ready_tx);
    let mut stdout = tokio::io::stdout();
    let mut ready = 0;
    let mut results = Vec::with_capacity(args.clients);
    while ready < args.clients {
        tokio::select! {
            r = ready_rx.recv() => match r {
                Some(()) => ready += 1,
                None => break,
            },
            // A client that ends before it is ready failed to open its stream.
            Some(r) = rx.recv() => {
                match r {
                    Err(e) => {
                        return Err(e.context(format!("{ready} of {} streams open", args.clients)));
                    }
                    ok => results.push(ok),
                }
            }
        }
    }
    if ready < args.clients {
        // Every client ended before its stream opened (each drops its readiness before
        // it reports): the first failure says why.
        while let Some(r) = rx.recv().await {
            match r {
                Err(e) => {
                    return Err(e.context(format!("{ready} of {} streams open", args.clients)));
                }
                ok => results.push(ok),
            }
        }
    }
    stdout
        .write_all(format!("{}\n", json!({ "ready": ready })).as_bytes())
        .await?;
    stdout.flush().await?;
    let collect = async {
        while let Some(r) = rx.recv().await {
            results.push(r);
        }
    };
    let late = tokio::time::timeout_at(deadline, collect).await.is_err();
    let mut latencies = Vec::with_capacity(args.clients * args.events);
    let mut complete = 0;
    let mut error = late.then(|| {
        format!(
            "{} of {} clients still waited for their events after {} s",
            args.clients - results.len(),
            args.clients,
            args.timeout_s
        )
    });
    for r in results {
        match r {
            Ok(l) => {
                if l.len() >= args.events {
                    complete += 1;
                }
                latencies.extend(l);
            }
            Err(e) => error = Some(format!("{e:#}")),
        }
    }
    let report = json!({ "latencies_ns": latencies, "complete": complete, "error": error });
    stdout.write_all(format!("{report}\n").as_bytes()).await?;
    stdout.flush().await?;
    Ok(())
}

/// Reads one JSON line of a clients process.
pub async fn read_line<R: tokio::io::AsyncBufRead + Unpin>(
    out: &mut R,
    wait: Duration,
    what: &str,
) -> Result<serde_json::Value> {
    let mut line = String::new();
    let n = tokio::time::timeout(wait, out.read_line(&mut line))
        .await
        .with_context(|| format!("the clients process did not report {what} in {wait:?}"))??;
    if n == 0 {
        bail!("the clients process ended before it reported {what}");
    }
    serde_json::from_str(&line)
        .with_context(|| format!("the clients process reported {what} as {line:?}"))
}
