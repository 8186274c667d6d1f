//! The CLI as a client of `baton serve`: the same JSON shapes as the API, human
//! tables by default and `--json` for scripts.

use std::io::{BufRead, BufReader, IsTerminal, Write};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use baton_api::{
    ErrorBody, Event, EventKind, Job, JobList, JobSpec, QueueList, ServerList, State, Stats,
};
use serde::de::DeserializeOwned;
use serde_json::Value;
use ureq::tls::{Certificate, RootCerts, TlsConfig, TlsProvider};

/// Exit codes scripts can rely on.
pub mod exit {
    pub const OK: u8 = 0;
    /// The request failed, or the job waited for failed.
    pub const FAILED: u8 = 1;
    /// The job waited for was cancelled or deleted.
    pub const CANCELLED: u8 = 2;
    /// No server answered at the address.
    pub const UNREACHABLE: u8 = 3;
    /// `wait` gave up before the job finished.
    pub const TIMEOUT: u8 = 124;
}

/// A failure with the exit code it should end the process with.
#[derive(Debug)]
pub struct Exit {
    pub code: u8,
    pub message: String,
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Exit {}

/// An API error answer: its status and body.
#[derive(Debug)]
pub struct Refusal {
    pub status: u16,
    pub error: baton_api::ErrorDetail,
}

#[derive(Clone)]
pub struct Client {
    /// Where requests go: the server's URL, or `http://localhost` over a unix socket.
    base: String,
    /// The server as the user named it, for messages.
    server: String,
    token: Option<String>,
    agent: ureq::Agent,
    pub json: bool,
}

impl Client {
    pub fn new(server: &str, token: Option<String>, json: bool) -> Result<Client> {
        Client::connect(server, token, json, None)
    }

    /// A client of `server`: `http://`, `https://` (verified with the usual roots, or
    /// only with the certificates in `ca`), or `unix:///path/baton.sock`.
    pub fn connect(
        server: &str,
        token: Option<String>,
        json: bool,
        ca: Option<&Path>,
    ) -> Result<Client> {
        let server = server.trim_end_matches('/').to_owned();
        let config = ureq::Agent::config_builder().http_status_as_error(false);
        let (base, agent) = if let Some(path) = server.strip_prefix("unix://") {
            if path.is_empty() {
                return Err(anyhow!(
                    "invalid server {server:?}: expected a socket path like unix:///run/baton/baton.sock"
                ));
            }
            // The host is only what the server sees in `Host`: a loopback name.
            let agent = ureq::Agent::with_parts(
                config.proxy(None).build(),
                crate::unix_http::UnixConnector { path: path.into() },
                ureq::unversioned::resolver::DefaultResolver::default(),
            );
            ("http://localhost".to_owned(), agent)
        } else if server.starts_with("https://") {
            let roots = match ca {
                None => RootCerts::WebPki,
                Some(file) => RootCerts::new_with_certs(&read_ca(file)?),
            };
            let tls = TlsConfig::builder()
                .provider(TlsProvider::Rustls)
                .root_certs(roots)
                .build();
            (server.clone(), config.tls_config(tls).build().into())
        } else if server.starts_with("http://") {
            (server.clone(), config.build().into())
        } else {
            return Err(anyhow!(
                "invalid server {server:?}: expected a URL like http://127.0.0.1:7700, https://host:7700 or unix:///path/baton.sock"
            ));
        };
        Ok(Client {
            base,
            server,
            token,
            agent,
            json,
        })
    }

    fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<ureq::http::Response<ureq::Body>> {
        let url = format!("{}{path}", self.base);
        let auth = self.token.as_ref().map(|t| format!("Bearer {t}"));
        macro_rules! with_auth {
            ($req:expr) => {{
                let r = $req;
                match &auth {
                    Some(a) => r.header("Authorization", a),
                    None => r,
                }
            }};
        }
        let sent = match (method, body) {
            ("GET", _) => with_auth!(self.agent.get(&url)).call(),
            ("DELETE", _) => with_auth!(self.agent.delete(&url)).call(),
            ("POST", Some(b)) => with_auth!(self.agent.post(&url)).send_json(b),
            ("POST", None) => with_auth!(self.agent.post(&url)).send_empty(),
            ("PATCH", _) => with_auth!(self.agent.patch(&url)).send_empty(),
            ("PUT", Some(b)) => with_auth!(self.agent.put(&url)).send_json(b),
            _ => return Err(anyhow!("unsupported method {method}")),
        };
        sent.map_err(|e| self.unreachable(e))
    }

    fn unreachable(&self, e: ureq::Error) -> anyhow::Error {
        // A server that answered but could not be trusted is not "unreachable": that
        // exit code lets `submit --wait` run the job here instead.
        let tls = match &e {
            ureq::Error::Rustls(tls) => Some(tls),
            // The handshake runs inside the connection's reads and writes.
            ureq::Error::Io(io) => io
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>()),
            _ => None,
        };
        if let Some(tls) = tls {
            let hint = match tls {
                rustls::Error::InvalidCertificate(_) => {
                    "; its certificate is not trusted: pass --ca FILE (or BATON_CA) with the certificate of the authority that signed it"
                }
                _ => "",
            };
            return anyhow::Error::new(Exit {
                code: exit::FAILED,
                message: format!(
                    "cannot talk to the Baton server at {} securely: {tls}{hint}",
                    self.server
                ),
            });
        }
        anyhow::Error::new(Exit {
            code: exit::UNREACHABLE,
            message: format!("cannot reach the Baton server at {}: {e}", self.server),
        })
    }

    /// Sends a request and reads the JSON answer, turning API errors into messages.
    pub fn call<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<T> {
        let mut response = self.request(method, path, body)?;
        let status = response.status();
        let text = response
            .body_mut()
            .read_to_string()
            .context("cannot read the answer")?;
        if !status.is_success() {
            return Err(api_error(status, &text));
        }
        serde_json::from_str(&text)
            .with_context(|| format!("unexpected answer from the server: {text}"))
    }

    /// Like [`Client::call`], but an answer of the API's error shape comes back as
    /// `Ok(Err(..))`, for callers that act on its fields (a refused batch's index).
    pub fn call_or_refusal<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<std::result::Result<T, Refusal>> {
        let mut response = self.request(method, path, body)?;
        let status = response.status();
        let text = response
            .body_mut()
            .read_to_string()
            .context("cannot read the answer")?;
        if !status.is_success() {
            return match serde_json::from_str::<ErrorBody>(&text) {
                Ok(body) => Ok(Err(Refusal {
                    status: status.as_u16(),
                    error: body.error,
                })),
                Err(_) => Err(api_error(status, &text)),
            };
        }
        serde_json::from_str(&text)
            .map(Ok)
            .with_context(|| format!("unexpected answer from the server: {text}"))
    }

    /// Follows a server-sent event stream, calling `each` until it returns false.
    pub fn follow(&self, path: &str, each: impl FnMut(Event) -> Result<bool>) -> Result<()> {
        self.follow_for(path, None, each)
    }

    /// Like `follow`, but gives up quietly after `timeout`.
    pub fn follow_for(
        &self,
        path: &str,
        timeout: Option<Duration>,
        mut each: impl FnMut(Event) -> Result<bool>,
    ) -> Result<()> {
        let url = format!("{}{path}", self.base);
        let started = std::time::Instant::now();
        let mut req = self.agent.get(&url).header("Accept", "text/event-stream");
        if let Some(t) = timeout {
            req = req.config().timeout_global(Some(t)).build();
        }
        if let Some(t) = &self.token {
            req = req.header("Authorization", format!("Bearer {t}"));
        }
        let response = req.call().map_err(|e| self.unreachable(e))?;
        if !response.status().is_success() {
            let status = response.status();
            let text = response.into_body().read_to_string().unwrap_or_default();
            return Err(api_error(status, &text));
        }
        let reader = BufReader::new(response.into_body().into_reader());
        let mut data = String::new();
        let mut name = String::new();
        for line in reader.lines() {
            let line = match line {
                Ok(l) => l,
                Err(_) if timeout.is_some_and(|t| started.elapsed() >= t) => return Ok(()),
                Err(e) => return Err(anyhow!("the event stream broke off: {e}")),
            };
            if let Some(d) = line.strip_prefix("data:") {
                data.push_str(d.trim_start());
            } else if let Some(n) = line.strip_prefix("event:") {
                name = n.trim().to_owned();
            } else if line.is_empty() && !data.is_empty() {
                if std::mem::take(&mut name) == "events.pruned" {
                    let notice: Value = serde_json::from_str(&data).unwrap_or_default();
                    eprintln!(
                        "note: retention removed events up to id {}; some after {} may be missing",
                        notice["pruned_upto"], notice["after"]
                    );
                    data.clear();
                    continue;
                }
                let event: Event = serde_json::from_str(&data).context("unexpected event")?;
                data.clear();
                if !each(event)? {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    pub fn print_json(&self, value: &impl serde::Serialize) {
        println!("{}", serde_json::to_string(value).unwrap_or_default());
    }
}

/// The certificates of a `--ca` file.
fn read_ca(file: &Path) -> Result<Vec<Certificate<'static>>> {
    let pem =
        std::fs::read(file).with_context(|| format!("cannot read --ca {}", file.display()))?;
    let mut certs = Vec::new();
    for item in ureq::tls::parse_pem(&pem) {
        let item = item.map_err(|e| anyhow!("invalid --ca {}: {e}", file.display()))?;
        if let ureq::tls::PemItem::Certificate(c) = item {
            certs.push(c);
        }
    }
    if certs.is_empty() {
        return Err(anyhow!(
            "invalid --ca {}: it holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
            file.display()
        ));
    }
    Ok(certs)
}

/// The API's error message, or what the server said when it is not the API's shape.
fn api_error(status: ureq::http::StatusCode, text: &str) -> anyhow::Error {
    let message = serde_json::from_str::<ErrorBody>(text)
        .map(|e| e.error.message)
        .unwrap_or_else(|_| format!("the server answered {status}: {text}"));
    anyhow::Error::new(Exit {
        code: exit::FAILED,
        message,
    })
}

pub fn print_job(job: &Job) {
    let row = |k: &str, v: String| println!("{k:<12} {v}");
    row("id", job.id.clone());
    row("kind", job.kind.clone());
    row(
        "queue",
        format!("{} (priority {})", job.queue, job.priority),
    );
    let runs = &job.runs;
    if let Some(command) = &runs.command {
        let shell = if runs.shell == Some(true) {
            " (sh -c)"
        } else {
            ""
        };
        row("command", format!("{}{shell}", argv(command)));
    }
    if let Some(p) = &runs.pipeline {
        row("pipeline", p.clone());
    }
    for (i, step) in runs.steps.iter().flatten().enumerate() {
        let shell = if step.shell { " (sh -c)" } else { "" };
        row(
            if i == 0 { "steps" } else { "" },
            format!("{}. {}: {}{shell}", i + 1, step.name, argv(&step.command)),
        );
    }
    if let Some(cwd) = &runs.cwd {
        row("cwd", cwd.clone());
    }
    if let Some(env) = &runs.env {
        row("env", env.join(" "));
    }
    row(
        "timing",
        format!(
            "timeout {}, grace {}, backoff {} to {}",
            runs.timeout.as_deref().unwrap_or("none"),
            runs.grace,
            runs.backoff.initial,
            runs.backoff.max
        ),
    );
    row("state", job.state.to_string());
    if let Some(why) = &job.waiting_for {
        row("waiting for", why.clone());
    }
    if let Some(p) = job.progress {
        row(
            "progress",
            format!(
                "{:.0}%{}",
                p * 100.0,
                job.message
                    .as_deref()
                    .map(|m| format!(" {m}"))
                    .unwrap_or_default()
            ),
        );
    }
    if let Some(s) = &job.step {
        row("step", s.clone());
    }
    row(
        "attempt",
        format!("{} of {}", job.attempt, job.max_attempts),
    );
    for (k, v) in &job.labels {
        row("label", format!("{k}={v}"));
    }
    row("created", baton_core::time::to_rfc3339(job.created_at));
    if let Some(t) = job.run_at {
        row("run at", baton_core::time::to_rfc3339(t));
    }
    if let Some(t) = job.started_at {
        row("started", baton_core::time::to_rfc3339(t));
    }
    if let Some(t) = job.finished_at {
        row("finished", baton_core::time::to_rfc3339(t));
    }
    if let Some(l) = &job.runs.limits {
        let mut parts = Vec::new();
        if let Some(m) = &l.memory {
            parts.push(format!("memory {m}"));
        }
        if let Some(c) = &l.cpu_time {
            parts.push(format!("cpu_time {c}"));
        }
        if let Some(c) = l.cpus {
            parts.push(format!("cpus {c}"));
        }
        row("limits", parts.join(", "));
    }
    if let Some(u) = &job.usage {
        row(
            "usage",
            format!(
                "attempt {}: {:.1} s CPU, {} resident, peak {}",
                u.attempt,
                u.cpu_ms as f64 / 1000.0,
                baton_core::resources::format_bytes(u.rss_bytes),
                baton_core::resources::format_bytes(u.peak_rss_bytes)
            ),
        );
    }
    if let Some(r) = &job.result {
        row("result", r.to_string());
    }
    if let Some(e) = &job.error {
        row("error", format!("{}: {}", e.code, e.message));
    }
}

/// A command line as a person would type it: arguments with spaces or quotes quoted.
fn argv(args: &[String]) -> String {
    args.iter()
        .map(|a| {
            if !a.is_empty()
                && a.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@%+".contains(c))
            {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', "'\\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// What a job runs, in one line: its command, its stored pipeline, or its steps.
fn runs_of(job: &Job) -> String {
    let runs = &job.runs;
    if let Some(c) = &runs.command {
        return argv(c);
    }
    if let Some(p) = &runs.pipeline {
        return format!("pipeline {p}");
    }
    if let Some(steps) = &runs.steps {
        let names: Vec<&str> = steps.iter().map(|s| s.name.as_str()).collect();
        return format!("steps {}", names.join(", "));
    }
    "-".into()
}

/// The last crash of a job, from its `job.crashed` event: when and why, the server
/// that died and its last heartbeat, the last checkpoint and what ran after it.
pub fn print_crash(e: &baton_core::Event) {
    let d = &e.data;
    let text = |v: &serde_json::Value| v.as_str().unwrap_or("-").to_owned();
    let row = |k: &str, v: String| println!("{k:<12} {v}");
    row(
        "crashed",
        format!(
            "{} (was {}): {}",
            baton_core::time::to_rfc3339(e.at),
            text(&d["was"]),
            text(&d["reason"])
        ),
    );
    if d["server_id"].is_string() {
        row(
            "dead server",
            format!(
                "{}, last heartbeat {}",
                text(&d["server_id"]),
                text(&d["heartbeat_at"])
            ),
        );
    }
    if d["last_event_at"].is_string() {
        row("last event", text(&d["last_event_at"]));
    }
    let cp = &d["checkpoint"];
    row(
        "checkpoint",
        if cp.is_object() {
            format!(
                "seq {} at {} (attempt {})",
                cp["seq"],
                text(&cp["at"]),
                cp["attempt"]
            )
        } else {
            "none".into()
        },
    );
    let lost = &d["since_checkpoint"];
    if lost.is_object() {
        let n = |k: &str| lost[k].as_u64().unwrap_or(0);
        row(
            "since then",
            format!(
                "{} progress, {} step, {} output and {} log events (from seq {}) {}",
                n("progress"),
                n("steps"),
                n("output"),
                n("log_lines"),
                n("from_seq"),
                if cp.is_object() {
                    "to redo from the checkpoint"
                } else {
                    "to redo from the start"
                }
            ),
        );
    }
}

pub fn print_attempts(attempts: &[baton_core::Attempt]) {
    println!(
        "{:>7}  {:<8} {:<24} {:<24} {:<11} {:<9} {:<10} ERROR",
        "ATTEMPT", "SERVER", "STARTED", "FINISHED", "OUTCOME", "EXIT", "RESUMED"
    );
    for a in attempts {
        let outcome = a.outcome.map_or("running".into(), |o| {
            serde_json::to_value(o)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default()
        });
        let exit = match (a.exit_code, &a.signal) {
            (Some(code), _) => code.to_string(),
            (None, Some(signal)) => signal.clone(),
            (None, None) => "-".into(),
        };
        let resumed = a
            .resumed_from
            .as_ref()
            .map_or("-".into(), |c| format!("cp {}", c.seq));
        println!(
            "{:>7}  {:<8} {:<24} {:<24} {:<11} {:<9} {:<10} {}",
            a.attempt,
            a.server_id
                .as_deref()
                .map_or("-".into(), |s| s.chars().take(8).collect::<String>()),
            baton_core::time::to_rfc3339(a.started_at),
            a.finished_at
                .map_or("-".into(), baton_core::time::to_rfc3339),
            outcome,
            exit,
            resumed,
            a.error.as_ref().map_or(String::new(), |e| format!(
                "{}: {}",
                e.code,
                first_line(&e.message)
            ))
        );
    }
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or_default()
}

pub fn print_jobs(list: &JobList, command: bool) {
    println!(
        "{:<38} {:<14} {:<10} {:<10} {:>5} {:>7}  {}",
        "ID",
        "KIND",
        "QUEUE",
        "STATE",
        "PROG",
        "ATTEMPT",
        if command {
            format!("{:<24} COMMAND", "CREATED")
        } else {
            "CREATED".into()
        }
    );
    for j in &list.jobs {
        let progress = j
            .progress
            .map(|p| format!("{:.0}%", p * 100.0))
            .unwrap_or_else(|| "-".into());
        let created = baton_core::time::to_rfc3339(j.created_at);
        println!(
            "{:<38} {:<14} {:<10} {:<10} {:>5} {:>7}  {}",
            j.id,
            clip(&j.kind, 14),
            clip(&j.queue, 10),
            j.state.as_str(),
            progress,
            format!("{}/{}", j.attempt, j.max_attempts),
            if command {
                format!("{created:<24} {}", clip(&runs_of(j), 60))
            } else {
                created
            }
        );
    }
    let more = list
        .next_cursor
        .as_deref()
        .map(|c| format!("; more with --cursor {c}"))
        .unwrap_or_default();
    let plus = if list.total_exact { "" } else { "+" };
    println!("{} of {}{plus} jobs{more}", list.jobs.len(), list.total);
}

fn clip(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_owned()
    } else {
        let mut out: String = s.chars().take(n - 1).collect();
        out.push('…');
        out
    }
}

pub fn print_stats(s: &Stats) {
    for (state, n) in &s.states {
        println!("{state:<10} {n}");
    }
    println!("{:<10} {}", "total", s.total);
}

pub fn print_servers(list: &ServerList) {
    println!(
        "{:<38} {:<16} {:>7} {:>7}  {:<24} HEARTBEAT",
        "ID", "HOST", "PID", "WORKERS", "QUEUES"
    );
    for s in &list.servers {
        let state = if s.stopped_at.is_some() {
            " (stopped)"
        } else {
            ""
        };
        println!(
            "{:<38} {:<16} {:>7} {:>7}  {:<24} {}{state}",
            s.id,
            clip(&s.host, 16),
            s.pid,
            s.workers,
            clip(&s.queues.join(","), 24),
            baton_core::time::to_rfc3339(s.heartbeat_at)
        );
    }
}

pub fn print_queues(list: &QueueList) {
    println!(
        "{:<16} {:>11} {:>8} {:>8} {:>10} {:>8}  STATE",
        "QUEUE", "CONCURRENCY", "RUNNING", "QUEUED", "COMPLETED", "FAILED"
    );
    for q in &list.queues {
        let n = |s: &str| q.counts.get(s).copied().unwrap_or(0);
        println!(
            "{:<16} {:>11} {:>8} {:>8} {:>10} {:>8}  {}",
            clip(&q.name, 16),
            q.concurrency
                .map(|c| c.to_string())
                .unwrap_or_else(|| "-".into()),
            q.running,
            n("queued"),
            n("completed"),
            n("failed"),
            queue_state(q)
        );
    }
}

/// `paused`, `held: memory 93 % > 90 %` (a heavy queue under pressure), or `running`.
pub fn queue_state(q: &baton_api::QueueInfo) -> String {
    match (&q.held, q.paused) {
        (_, true) => "paused".into(),
        (Some(why), false) => format!("held: {why}"),
        (None, false) => "running".into(),
    }
}

pub fn print_event(e: &Event) {
    println!(
        "{:>8} {} {:<38} {:<16} {}",
        e.id,
        baton_core::time::to_rfc3339(e.at),
        e.job_id.as_deref().unwrap_or("-"),
        e.kind.as_str(),
        e.data
    );
}

/// Whether to draw progress bars (escape codes on stderr): only when both stdout and
/// stderr are terminals, so that `baton wait ID | cat` or a script's capture gets
/// plain text.
pub fn draws_bars() -> bool {
    std::io::stdout().is_terminal() && std::io::stderr().is_terminal()
}

/// Waits for a job, drawing a progress bar on stderr from its live events when it
/// runs on a terminal.
pub fn wait(client: &Client, id: &str, timeout: Option<Duration>, quiet: bool) -> Result<u8> {
    let path = format!("/api/jobs/{id}/events");
    let mut last_line = String::new();
    let draw = !quiet && !client.json && draws_bars();
    let result = client.follow_for(&path, timeout, |e| {
        if draw
            && let Some(line) = progress_line(&e)
            && line != last_line
        {
            eprint!("\r\x1b[2K{line}");
            let _ = std::io::stderr().flush();
            last_line = line;
        }
        Ok(!e.kind.is_terminal())
    });
    if draw && !last_line.is_empty() {
        eprintln!();
    }
    result?;
    let job: Job = client.call("GET", &format!("/api/jobs/{id}"), None)?;
    if client.json {
        client.print_json(&job);
    } else if !quiet {
        print_job(&job);
    }
    Ok(match job.state {
        State::Completed => exit::OK,
        State::Failed => exit::FAILED,
        State::Cancelled | State::Deleted => exit::CANCELLED,
        _ => exit::TIMEOUT,
    })
}

pub fn progress_line(e: &Event) -> Option<String> {
    match e.kind {
        EventKind::Progress => {
            let p = e.data["progress"].as_f64().unwrap_or(0.0).clamp(0.0, 1.0);
            let filled = (p * 30.0).round() as usize;
            let message = e.data["message"].as_str().unwrap_or("");
            Some(format!(
                "[{}{}] {:>3.0}% {message}",
                "#".repeat(filled),
                ".".repeat(30 - filled),
                p * 100.0
            ))
        }
        EventKind::Step => Some(format!("step {}", e.data["step"].as_str().unwrap_or("?"))),
        EventKind::Output => e.data["text"].as_str().map(|t| format!("> {t}")),
        EventKind::Log | EventKind::Checkpoint => None,
        k => Some(k.as_str().trim_start_matches("job.").to_owned()),
    }
}

/// Builds a job spec from `submit`'s flags.
#[allow(clippy::too_many_arguments)]
pub fn submit_spec(
    kind: Option<String>,
    command: Vec<String>,
    shell: bool,
    pipeline: Option<String>,
    payload: Option<String>,
    queue: Option<String>,
    priority: Option<i32>,
    after: Option<String>,
    retries: Option<u32>,
    id: Option<String>,
    labels: Vec<String>,
) -> Result<JobSpec> {
    let kind = match (&kind, command.is_empty(), &pipeline) {
        (Some(k), true, None) => k.clone(),
        (None, false, None) => "command".into(),
        (None, true, Some(_)) => "pipeline".into(),
        (None, true, None) => {
            return Err(anyhow!(
                "nothing to run: give a command after --, --pipeline ID, or --kind NAME"
            ));
        }
        _ => {
            return Err(anyhow!(
                "give only one of: a command after --, --pipeline, --kind"
            ));
        }
    };
    let mut spec = JobSpec::new(kind);
    if !command.is_empty() {
        spec.command = Some(command);
        if shell {
            spec.shell = Some(true);
        }
    }
    spec.pipeline = pipeline;
    if let Some(p) = payload {
        spec.payload =
            Some(serde_json::from_str(&p).map_err(|e| anyhow!("invalid --payload: {e}"))?);
    }
    spec.queue = queue;
    spec.priority = priority;
    spec.delay = after;
    spec.max_attempts = retries.map(|r| r + 1);
    spec.id = id;
    for l in labels {
        let (k, v) = l
            .split_once('=')
            .ok_or_else(|| anyhow!("invalid --label {l:?}: expected key=value"))?;
        spec = spec.label(k, v);
    }
    Ok(spec)
}
