//! A real `baton serve` child process for the benches that measure over HTTP.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use baton_store::Durability;

use crate::bench_proc;

pub struct Server {
    pub pid: u32,
    pub url: String,
    child: Option<Child>,
    log: PathBuf,
}

impl Server {
    /// Starts `baton serve` on a free loopback port with the store `db`; its log goes to
    /// `log_name` in `workdir`.
    pub fn start(
        db: &Path,
        workdir: &Path,
        durability: Durability,
        log_name: &str,
    ) -> Result<Server> {
        let exe = std::env::current_exe().context("cannot find the baton binary")?;
        let db =
            std::path::absolute(db).with_context(|| format!("cannot resolve {}", db.display()))?;
        let log = workdir.join(log_name);
        let stderr = std::fs::File::create(&log)
            .with_context(|| format!("cannot create {}", log.display()))?;
        let mut child = Command::new(exe)
            .current_dir(workdir)
            .args(["serve", "--listen", "127.0.0.1:0", "--store"])
            .arg(format!("sqlite://{}", db.display()))
            .args([
                "--durability",
                match durability {
                    Durability::Full => "full",
                    Durability::Normal => "normal",
                },
            ])
            .env_remove("BATON_CONFIG")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .context("cannot start baton serve")?;
        let pid = child.id();
        let mut out = BufReader::new(child.stdout.take().context("no stdout")?);
        let mut line = String::new();
        let mut server = Server {
            child: Some(child),
            pid,
            url: String::new(),
            log,
        };
        out.read_line(&mut line)
            .context("cannot read baton serve's first line")?;
        server.url = line
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .map(|w| w.trim_end_matches([',', ';']).to_owned())
            .ok_or_else(|| anyhow!("baton serve did not start: {line:?}. {}", server.log_tail()))?;
        // Keep reading, so the server can go on printing.
        std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
        Ok(server)
    }

    pub fn rss_mb(&self) -> Result<f64> {
        bench_proc::rss_mb_from(Path::new(&format!("/proc/{}/status", self.pid)))
    }

    /// SIGTERM, then the server's own graceful shutdown.
    pub fn stop(mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let pid = nix::unistd::Pid::from_raw(self.pid as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait()? {
                if !status.success() {
                    bail!("baton serve exited with {status}. {}", self.log_tail());
                }
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("baton serve did not stop within 30 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(10)..].join("\n");
        if tail.is_empty() {
            "the server logged nothing".into()
        } else {
            format!("the server's last log lines:\n{tail}")
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
