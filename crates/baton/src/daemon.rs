//! `baton daemon start|stop|status`: `baton serve` in the background, with a pid file
//! and a log file.

use std::fs::OpenOptions;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::client::Client;

pub struct Files {
    pub pid: PathBuf,
    pub log: PathBuf,
}

fn read_pid(path: &Path) -> Option<i32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn alive(pid: i32) -> bool {
    kill(Pid::from_raw(pid), None).is_ok()
}

/// Starts `baton serve` detached; returns once it answers on `/readyz`.
pub fn start(files: &Files, serve_args: &[String], server_url: &str) -> Result<()> {
    if let Some(pid) = read_pid(&files.pid)
        && alive(pid)
    {
        bail!(
            "baton is already running (pid {pid}, pid file {})",
            files.pid.display()
        );
    }
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&files.log)
        .with_context(|| format!("cannot open the log file {}", files.log.display()))?;
    let exe = std::env::current_exe().context("cannot find the baton executable")?;
    let mut cmd = Command::new(exe);
    cmd.arg("serve")
        .args(serve_args)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // Its own process group: a Ctrl-C in this terminal does not reach it.
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut child = cmd.spawn().context("cannot start baton serve")?;
    let pid = child.id();
    std::fs::write(&files.pid, format!("{pid}\n"))
        .with_context(|| format!("cannot write the pid file {}", files.pid.display()))?;
    let client = Client::new(server_url, None, false)?;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(status) = child.try_wait()? {
            let _ = std::fs::remove_file(&files.pid);
            bail!(
                "baton serve exited at start ({status}); the last lines of {}:\n{}",
                files.log.display(),
                tail(&files.log, 10).join("\n")
            );
        }
        if client
            .call::<serde_json::Value>("GET", "/readyz", None)
            .is_ok()
        {
            println!(
                "baton started (pid {pid}) at {server_url}; log {}",
                files.log.display()
            );
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "baton serve (pid {pid}) did not become ready at {server_url} within 15 s; see {}",
                files.log.display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Sends SIGTERM and waits for the server to finish its graceful shutdown.
pub fn stop(files: &Files, timeout: Duration) -> Result<()> {
    let pid = read_pid(&files.pid).ok_or_else(|| {
        anyhow!(
            "baton is not running (no pid file at {})",
            files.pid.display()
        )
    })?;
    if !alive(pid) {
        let _ = std::fs::remove_file(&files.pid);
        bail!(
            "baton is not running (pid {pid} from {} is gone)",
            files.pid.display()
        );
    }
    kill(Pid::from_raw(pid), Signal::SIGTERM).context("cannot signal the server")?;
    let deadline = Instant::now() + timeout;
    while alive(pid) {
        if Instant::now() > deadline {
            bail!(
                "baton (pid {pid}) is still shutting down after {timeout:?}; it lets running jobs finish first"
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = std::fs::remove_file(&files.pid);
    println!("baton stopped (pid {pid})");
    Ok(())
}

pub fn status(files: &Files, client: &Client) -> Result<u8> {
    let pid = read_pid(&files.pid).filter(|p| alive(*p));
    match pid {
        None => println!("not running (pid file {})", files.pid.display()),
        Some(pid) => println!("running, pid {pid}"),
    }
    if pid.is_some() {
        match client.call::<baton_api::ServerList>("GET", "/api/servers", None) {
            Ok(list) => {
                for s in list.servers.iter().filter(|s| s.stopped_at.is_none()) {
                    println!(
                        "server {} on {} (pid {}): {} workers, queues {}, heartbeat {}",
                        s.id,
                        s.host,
                        s.pid,
                        s.workers,
                        s.queues.join(", "),
                        baton_core::time::to_rfc3339(s.heartbeat_at)
                    );
                }
            }
            Err(e) => println!("the API does not answer: {e}"),
        }
        if let Ok(stats) = client.call::<baton_api::Stats>("GET", "/api/stats", None) {
            let n = |s: &str| stats.states.get(s).copied().unwrap_or(0);
            println!(
                "jobs: {} running, {} paused, {} queued, {} scheduled, {} completed, {} failed",
                n("running"),
                n("paused"),
                n("queued"),
                n("scheduled"),
                n("completed"),
                n("failed")
            );
        }
    }
    let lines = tail(&files.log, 10);
    if !lines.is_empty() {
        println!("last lines of {}:", files.log.display());
        for l in lines {
            println!("  {l}");
        }
    }
    Ok(if pid.is_some() { 0 } else { 3 })
}

fn tail(path: &Path, n: usize) -> Vec<String> {
    let Ok(f) = std::fs::File::open(path) else {
        return Vec::new();
    };
    let lines: Vec<String> = BufReader::new(f).lines().map_while(Result::ok).collect();
    lines[lines.len().saturating_sub(n)..].to_vec()
}
