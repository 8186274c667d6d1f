//! `baton`: the command-line entry point.

mod bench;
mod bench_bulk;
mod bench_clients;
mod bench_dashboard;
mod bench_events;
mod bench_fs;
mod bench_pg;
mod bench_proc;
mod bench_resources;
mod bench_scale;
mod bench_scheduler;
mod bench_server;
mod bench_soak;
mod bench_submit;
mod bench_sustained;
mod bench_workers;
mod bench_workflow;
mod bulk_cli;
mod client;
mod config;
mod daemon;
mod demo;
mod local;
mod schedule;
mod serve;
mod submit_file;
mod unix_http;
mod workflow_cli;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use baton_api::{Job, JobList, ServerList, Stats, StatusRequest};
use clap::{Parser, Subcommand};
use serde_json::Value;
use tracing_subscriber::EnvFilter;

use crate::client::{Client, Exit, exit};

#[derive(Parser)]
#[command(
    name = "baton",
    version,
    about = "Baton: one engine for background jobs"
)]
struct Cli {
    /// The server that client commands talk to: http://HOST:PORT, https://HOST:PORT,
    /// or unix:///path/baton.sock.
    #[arg(
        long,
        global = true,
        env = "BATON_SERVER",
        default_value = "http://127.0.0.1:7700"
    )]
    server: String,
    /// Bearer token for a server with auth.
    #[arg(long, global = true, env = "BATON_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// PEM certificate(s) to trust for an https:// server, instead of the usual roots
    /// (e.g. the certificate of a private CA, or the server's own).
    #[arg(long, global = true, env = "BATON_CA", value_name = "FILE")]
    ca: Option<PathBuf>,
    /// Print the API's JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the engine with its API and dashboard.
    Serve {
        /// Address to listen on: 127.0.0.1:7700, or unix:///path/baton.sock for a
        /// socket file; may repeat [default: 127.0.0.1:7700; env BATON_LISTEN, comma
        /// separated].
        #[arg(long)]
        listen: Vec<String>,
        /// Group given access to the unix socket (mode 0660 instead of 0600) [env
        /// BATON_SOCKET_GROUP].
        #[arg(long, value_name = "GROUP")]
        socket_group: Option<String>,
        /// PEM certificate chain; with --tls-key, TCP listeners speak HTTPS only [env
        /// BATON_TLS_CERT].
        #[arg(long, value_name = "FILE")]
        tls_cert: Option<PathBuf>,
        /// PEM private key of --tls-cert [env BATON_TLS_KEY].
        #[arg(long, value_name = "FILE")]
        tls_key: Option<PathBuf>,
        /// Store URL: sqlite://baton.db or sqlite:///abs/path.db [env BATON_STORE].
        #[arg(long)]
        store: Option<String>,
        /// Configuration file [default: ./baton.toml when present; env BATON_CONFIG].
        #[arg(long)]
        config: Option<PathBuf>,
        /// SQLite durability: full or normal [env BATON_DURABILITY].
        #[arg(long)]
        durability: Option<String>,
        /// Allow listening beyond this machine without TLS or without auth [env
        /// BATON_ALLOW_INSECURE_REMOTE].
        #[arg(long)]
        allow_insecure_remote: bool,
        /// The older name of --allow-insecure-remote.
        #[arg(long, hide = true)]
        allow_remote: bool,
        /// Requests worked on at once; past it, 503 with Retry-After [default: 512; env
        /// BATON_MAX_REQUESTS].
        #[arg(long, value_name = "N")]
        max_requests: Option<String>,
        /// SSE streams, WebSockets and /wait long-polls open at once; past it, 503
        /// [default: 4096; env BATON_MAX_STREAMS].
        #[arg(long, value_name = "N")]
        max_streams: Option<String>,
        /// The most jobs one bulk action reaches (ids given, or jobs a filter
        /// matches) [default: 100000; env BATON_BULK_LIMIT].
        #[arg(long, value_name = "N")]
        bulk_limit: Option<String>,
        /// A name (or address) the server may be reached by besides loopback and its
        /// listen address; repeat for more; `*` for any [env BATON_ALLOWED_HOSTS,
        /// comma-separated].
        #[arg(long = "allowed-host", value_name = "HOST")]
        allowed_hosts: Vec<String>,
        /// An origin (https://app.example) besides the server's own that may read,
        /// change state and open the WebSocket; repeat for more [env
        /// BATON_CORS_ORIGINS, comma-separated].
        #[arg(long = "cors-origin", value_name = "ORIGIN")]
        cors_origins: Vec<String>,
        /// Open the dashboard in a browser once serving ($BROWSER, else xdg-open or
        /// open).
        #[arg(long)]
        open: bool,
        /// Load demo data (named demo-..., labelled demo=true): a pipeline, a schedule
        /// every minute, a workflow and a job that fails.
        #[arg(long)]
        demo: bool,
    },
    /// Run `baton serve` in the background (pid file and log file).
    Daemon {
        #[command(subcommand)]
        command: DaemonCommand,
        /// The pid file.
        #[arg(long, global = true, default_value = "baton.pid")]
        pid_file: PathBuf,
        /// The log file.
        #[arg(long, global = true, default_value = "baton.log")]
        log_file: PathBuf,
    },
    /// Submit a job: a command after --, a stored pipeline, or a handler kind.
    Submit {
        #[arg(long)]
        kind: Option<String>,
        #[arg(long)]
        pipeline: Option<String>,
        /// Run the command through `sh -c`.
        #[arg(long)]
        shell: bool,
        /// JSON payload for a handler.
        #[arg(long)]
        payload: Option<String>,
        #[arg(long)]
        queue: Option<String>,
        #[arg(long, allow_hyphen_values = true)]
        priority: Option<i32>,
        /// Start after this delay (e.g. 30s, 10m).
        #[arg(long)]
        after: Option<String>,
        /// Retries after a failure (max_attempts - 1).
        #[arg(long)]
        retries: Option<u32>,
        /// A client id; submitting it again returns the existing job.
        #[arg(long)]
        id: Option<String>,
        /// A label, key=value; may repeat.
        #[arg(long = "label")]
        labels: Vec<String>,
        /// Run once this job has completed; may repeat.
        #[arg(long = "depends-on", value_name = "ID")]
        depends_on: Vec<String>,
        /// At most one active job holds this key.
        #[arg(long)]
        unique_key: Option<String>,
        /// What a second job with the key does: reject, return_existing or replace.
        #[arg(long)]
        unique_policy: Option<String>,
        /// Wait for the job, with a progress bar, and exit with its outcome.
        #[arg(long)]
        wait: bool,
        /// Submit the job specs of a file instead, one JSON object a line (`-`: standard
        /// input), in batches of --batch-size, each stored all or none.
        #[arg(long, value_name = "FILE", conflicts_with_all = ["wait", "kind", "pipeline", "command"])]
        file: Option<PathBuf>,
        /// Jobs per request with --file (1 to 10000).
        #[arg(long, default_value_t = 1000, requires = "file")]
        batch_size: usize,
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// Run a stored pipeline.
    Run {
        pipeline: String,
        #[arg(long)]
        queue: Option<String>,
        #[arg(long, allow_hyphen_values = true)]
        priority: Option<i32>,
        /// Wait with a progress bar; runs here when no server answers.
        #[arg(long)]
        wait: bool,
    },
    /// Stored pipeline definitions.
    Pipeline {
        #[command(subcommand)]
        command: PipelineCommand,
    },
    /// A job's captured output; -f follows it live.
    Logs {
        id: String,
        #[arg(short, long)]
        follow: bool,
    },
    /// List jobs.
    Ls {
        #[arg(long)]
        state: Option<String>,
        #[arg(long)]
        queue: Option<String>,
        #[arg(long)]
        kind: Option<String>,
        /// key:value
        #[arg(long)]
        label: Option<String>,
        /// Words to look for in ids, kinds, labels and errors (all terms must match; a
        /// term of 3 characters or more also matches words starting with it).
        #[arg(short, long)]
        q: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// The next_cursor of the previous page (of the same --sort).
        #[arg(long)]
        cursor: Option<String>,
        /// Newest first by: created, started (only started jobs) or finished (only
        /// finished jobs).
        #[arg(long, value_parser = ["created", "started", "finished"])]
        sort: Option<String>,
        /// Add a column with what each job runs (its command, or its pipeline's steps).
        #[arg(long)]
        command: bool,
    },
    /// Show one job: what it runs, its state and its attempts.
    Show { id: String },
    /// A job's attempts: server, times, outcome, exit code, the checkpoint it resumed from.
    Attempts { id: String },
    /// Wait for a job to finish (exit 0 completed, 1 failed, 2 cancelled, 124 timeout).
    Wait {
        id: String,
        #[arg(long, value_parser = parse_duration)]
        timeout: Option<std::time::Duration>,
    },
    /// Pause running jobs (a handler at its next pause point; a command gets SIGSTOP).
    Pause {
        #[command(flatten)]
        jobs: bulk_cli::Targets,
    },
    /// Resume paused jobs.
    Resume {
        #[command(flatten)]
        jobs: bulk_cli::Targets,
    },
    /// Stop running jobs (SIGTERM, then SIGKILL after their grace; --force at once).
    Stop {
        #[command(flatten)]
        jobs: bulk_cli::Targets,
        #[arg(long)]
        force: bool,
    },
    /// Cancel jobs that have not ended (running ones are stopped gracefully).
    Cancel {
        #[command(flatten)]
        jobs: bulk_cli::Targets,
    },
    /// Run finished jobs again.
    Retry {
        #[command(flatten)]
        jobs: bulk_cli::Targets,
        #[arg(long)]
        from_checkpoint: bool,
    },
    /// Delete jobs (the admin role).
    Rm {
        #[command(flatten)]
        jobs: bulk_cli::Targets,
    },
    /// A job's events (`baton events ID`); -f follows them live, or every job's
    /// without an ID.
    Events {
        /// The job (the same as --job).
        #[arg(value_name = "ID", conflicts_with = "job")]
        id: Option<String>,
        /// Keep printing events as they happen.
        #[arg(short, long)]
        follow: bool,
        /// The job.
        #[arg(long, value_name = "ID")]
        job: Option<String>,
        /// Start after this global event id.
        #[arg(long)]
        after: Option<u64>,
    },
    /// Counts per state.
    Stats,
    /// Servers with their heartbeats.
    Servers,
    /// Batch status of several jobs.
    Status { ids: Vec<String> },
    /// Tokens for `[auth]` in baton.toml.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Workflows: DAGs of jobs submitted together.
    Workflow {
        #[command(subcommand)]
        command: workflow_cli::WorkflowCommand,
    },
    /// Queues: list (the default), pause, resume.
    #[command(visible_alias = "queues")]
    Queue {
        #[command(subcommand)]
        command: Option<workflow_cli::QueueCommand>,
    },
    /// Schedules: list, show, add, rm, pause, resume, trigger, history.
    Schedule {
        #[command(subcommand)]
        command: schedule::ScheduleCommand,
    },
    /// Measure the engine: throughput, latency, commands, events, workflow, scheduler,
    /// soak.
    Bench(bench::BenchArgs),
    /// The SSE clients of `baton bench events --clients-process`.
    #[command(hide = true)]
    BenchClients(bench_clients::ClientsArgs),
}

#[derive(Subcommand)]
enum PipelineCommand {
    /// List the stored pipelines with their steps.
    Ls,
    /// Show one pipeline's definition.
    Show { id: String },
    /// Store a definition from a TOML or JSON file (its id, or the file name).
    Put { file: PathBuf },
    /// Delete a stored pipeline.
    Rm { id: String },
}

#[derive(Subcommand)]
enum DaemonCommand {
    /// Start the server in the background; takes `baton serve`'s options.
    Start {
        #[arg(long)]
        listen: Option<String>,
        #[arg(long)]
        store: Option<String>,
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long)]
        durability: Option<String>,
        #[arg(long)]
        allow_remote: bool,
    },
    /// Stop it gracefully (SIGTERM; running jobs finish or are handed back).
    Stop {
        #[arg(long, default_value = "60s", value_parser = parse_duration)]
        timeout: std::time::Duration,
    },
    /// Whether it runs, its workers and jobs, and the last log lines.
    Status,
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Make a random token and print it with the line to add to baton.toml.
    New {
        #[arg(long)]
        name: String,
        /// viewer, operator or admin.
        #[arg(long)]
        role: String,
    },
}

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    baton_core::duration::parse(s)
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            let code = e.downcast_ref::<Exit>().map_or(exit::FAILED, |x| x.code);
            ExitCode::from(code)
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

fn run(cli: Cli) -> Result<u8> {
    let client = || Client::connect(&cli.server, cli.token.clone(), cli.json, cli.ca.as_deref());
    match cli.command {
        Command::Serve {
            listen,
            socket_group,
            tls_cert,
            tls_key,
            store,
            config,
            durability,
            allow_insecure_remote,
            allow_remote,
            max_requests,
            max_streams,
            bulk_limit,
            allowed_hosts,
            cors_origins,
            open,
            demo,
        } => {
            let flags = config::Flags {
                config,
                listen,
                socket_group,
                tls_cert,
                tls_key,
                allow_insecure_remote,
                store,
                durability,
                allow_remote,
                max_requests,
                max_streams,
                bulk_limit,
                allowed_hosts,
                cors_origins,
            };
            runtime()?.block_on(serve::run(flags, open, demo))?;
            Ok(exit::OK)
        }
        Command::Daemon {
            command,
            pid_file,
            log_file,
        } => {
            let files = daemon::Files {
                pid: pid_file,
                log: log_file,
            };
            match command {
                DaemonCommand::Start {
                    listen,
                    store,
                    config,
                    durability,
                    allow_remote,
                } => {
                    let mut args = Vec::new();
                    let mut server = cli.server.clone();
                    if let Some(l) = listen {
                        server = if l.starts_with("unix://") {
                            l.clone()
                        } else {
                            format!("http://{l}")
                        };
                        args.extend(["--listen".to_string(), l]);
                    }
                    if let Some(s) = store {
                        args.extend(["--store".to_string(), s]);
                    }
                    if let Some(c) = config {
                        args.extend(["--config".to_string(), c.display().to_string()]);
                    }
                    if let Some(d) = durability {
                        args.extend(["--durability".to_string(), d]);
                    }
                    if allow_remote {
                        args.push("--allow-remote".into());
                    }
                    daemon::start(&files, &args, &server)?;
                    Ok(exit::OK)
                }
                DaemonCommand::Stop { timeout } => {
                    daemon::stop(&files, timeout)?;
                    Ok(exit::OK)
                }
                DaemonCommand::Status => daemon::status(&files, &client()?),
            }
        }
        Command::Workflow { command } => workflow_cli::workflow(&client()?, command),
        Command::Queue { command } => workflow_cli::queue(
            &client()?,
            command.unwrap_or(workflow_cli::QueueCommand::Ls),
        ),
        Command::Schedule { command } => schedule::run(&client()?, command),
        Command::Bench(args) => {
            runtime()?.block_on(bench::run(args))?;
            Ok(exit::OK)
        }
        Command::BenchClients(args) => {
            let runtime = match args.threads {
                0 | 1 => tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?,
                n => tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(n)
                    .enable_all()
                    .build()?,
            };
            runtime.block_on(bench_clients::run_process(args))?;
            Ok(exit::OK)
        }
        Command::Submit {
            kind,
            pipeline,
            shell,
            payload,
            queue,
            priority,
            after,
            retries,
            id,
            labels,
            depends_on,
            unique_key,
            unique_policy,
            wait,
            file,
            batch_size,
            command,
        } => {
            if let Some(file) = file {
                return submit_file::run(&client()?, &file, batch_size);
            }
            let mut spec = client::submit_spec(
                kind, command, shell, pipeline, payload, queue, priority, after, retries, id,
                labels,
            )?;
            if !depends_on.is_empty() {
                spec.depends_on = Some(depends_on.into_iter().map(Value::String).collect());
            }
            spec.unique_key = unique_key;
            spec.unique_policy = unique_policy;
            submit(&client()?, spec, wait)
        }
        Command::Run {
            pipeline,
            queue,
            priority,
            wait,
        } => {
            let mut spec = baton_api::JobSpec::new("pipeline");
            spec.pipeline = Some(pipeline);
            spec.queue = queue;
            spec.priority = priority;
            submit(&client()?, spec, wait)
        }
        Command::Pipeline { command } => {
            let c = client()?;
            match command {
                PipelineCommand::Ls => {
                    let list: baton_api::PipelineList = c.call("GET", "/api/pipelines", None)?;
                    if c.json {
                        c.print_json(&list);
                    } else {
                        for p in &list.pipelines {
                            let steps: Vec<&str> = p["steps"]
                                .as_array()
                                .map(|s| s.iter().filter_map(|s| s["name"].as_str()).collect())
                                .unwrap_or_default();
                            println!(
                                "{:<24} {}",
                                p["id"].as_str().unwrap_or("?"),
                                steps.join(" -> ")
                            );
                        }
                    }
                }
                PipelineCommand::Show { id } => {
                    let p: Value =
                        c.call("GET", &format!("/api/pipelines/{}", encode(&id)), None)?;
                    println!(
                        "{}",
                        if c.json {
                            p.to_string()
                        } else {
                            serde_json::to_string_pretty(&p)?
                        }
                    );
                }
                PipelineCommand::Put { file } => {
                    let text = std::fs::read_to_string(&file)
                        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?;
                    let mut spec: Value = if file.extension().is_some_and(|e| e == "json") {
                        serde_json::from_str(&text)
                            .map_err(|e| anyhow::anyhow!("invalid {}: {e}", file.display()))?
                    } else {
                        let t: toml::Value = toml::from_str(&text).map_err(|e| {
                            anyhow::anyhow!("invalid {}: {}", file.display(), e.to_string().trim())
                        })?;
                        serde_json::to_value(t)?
                    };
                    let id = match spec["id"].as_str() {
                        Some(id) => id.to_owned(),
                        None => {
                            let stem = file
                                .file_stem()
                                .and_then(|s| s.to_str())
                                .unwrap_or("pipeline")
                                .to_owned();
                            spec["id"] = Value::String(stem.clone());
                            stem
                        }
                    };
                    let p: Value = c.call(
                        "PUT",
                        &format!("/api/pipelines/{}", encode(&id)),
                        Some(&spec),
                    )?;
                    if c.json {
                        c.print_json(&p)
                    } else {
                        println!("stored pipeline {id}")
                    }
                }
                PipelineCommand::Rm { id } => {
                    let _: Value =
                        c.call("DELETE", &format!("/api/pipelines/{}", encode(&id)), None)?;
                    if !c.json {
                        println!("deleted pipeline {id}");
                    }
                }
            }
            Ok(exit::OK)
        }
        Command::Logs { id, follow } => {
            let c = client()?;
            if follow {
                c.follow(&format!("/api/jobs/{}/events", encode(&id)), |e| {
                    if e.kind == baton_api::EventKind::Log {
                        if c.json {
                            c.print_json(&e.data);
                        } else {
                            println!("{}", e.data["line"].as_str().unwrap_or(""));
                        }
                    }
                    Ok(!e.kind.is_terminal())
                })?;
                return Ok(exit::OK);
            }
            let mut after = 0;
            loop {
                let page: baton_api::LogList = c.call(
                    "GET",
                    &format!("/api/jobs/{}/logs?after={after}&limit=1000", encode(&id)),
                    None,
                )?;
                for l in &page.lines {
                    if c.json {
                        c.print_json(l)
                    } else {
                        println!("{}", l.line)
                    }
                }
                if page.lines.len() < 1000 {
                    break;
                }
                after = page.next;
            }
            Ok(exit::OK)
        }
        Command::Ls {
            state,
            queue,
            kind,
            label,
            q,
            limit,
            cursor,
            sort,
            command,
        } => {
            let c = client()?;
            let mut query = vec![format!("limit={limit}")];
            for (k, v) in [
                ("state", state),
                ("queue", queue),
                ("kind", kind),
                ("label", label),
                ("q", q),
                ("cursor", cursor),
                ("sort", sort),
            ] {
                if let Some(v) = v {
                    query.push(format!("{k}={}", encode(&v)));
                }
            }
            let list: JobList = c.call("GET", &format!("/api/jobs?{}", query.join("&")), None)?;
            if c.json {
                c.print_json(&list);
            } else {
                client::print_jobs(&list, command);
            }
            Ok(exit::OK)
        }
        Command::Show { id } => {
            let c = client()?;
            let job: Job = c.call("GET", &format!("/api/jobs/{}", encode(&id)), None)?;
            if c.json {
                c.print_json(&job);
            } else {
                client::print_job(&job);
                if job.recoveries > 0 || job.state == baton_core::State::Crashed {
                    let list: baton_api::EventList =
                        c.call("GET", &format!("/api/jobs/{}/events", encode(&id)), None)?;
                    let crash = list
                        .events
                        .iter()
                        .rev()
                        .find(|e| e.kind == baton_api::EventKind::Crashed);
                    if let Some(e) = crash {
                        println!();
                        client::print_crash(e);
                    }
                }
                let list: baton_api::AttemptList =
                    c.call("GET", &format!("/api/jobs/{}/attempts", encode(&id)), None)?;
                if !list.attempts.is_empty() {
                    println!();
                    client::print_attempts(&list.attempts);
                }
            }
            Ok(exit::OK)
        }
        Command::Attempts { id } => {
            let c = client()?;
            let list: baton_api::AttemptList =
                c.call("GET", &format!("/api/jobs/{}/attempts", encode(&id)), None)?;
            if c.json {
                c.print_json(&list);
            } else {
                client::print_attempts(&list.attempts);
            }
            Ok(exit::OK)
        }
        Command::Wait { id, timeout } => client::wait(&client()?, &id, timeout, false),
        Command::Pause { jobs } => control(&client()?, jobs, "pause", None, None),
        Command::Resume { jobs } => control(&client()?, jobs, "resume", None, None),
        Command::Stop { jobs, force } => control(&client()?, jobs, "stop", Some(force), None),
        Command::Cancel { jobs } => control(&client()?, jobs, "cancel", None, None),
        Command::Retry {
            jobs,
            from_checkpoint,
        } => control(&client()?, jobs, "retry", None, Some(from_checkpoint)),
        Command::Rm { jobs } => control(&client()?, jobs, "delete", None, None),
        Command::Events {
            id,
            follow,
            job,
            after,
        } => {
            let c = client()?;
            let job = id.or(job);
            if !follow {
                let id = job.ok_or_else(|| {
                    anyhow::anyhow!("events without -f need a job: baton events ID")
                })?;
                let list: baton_api::EventList = c.call(
                    "GET",
                    &format!(
                        "/api/jobs/{}/events?after={}",
                        encode(&id),
                        after.unwrap_or(0)
                    ),
                    None,
                )?;
                for e in &list.events {
                    if c.json {
                        c.print_json(e)
                    } else {
                        client::print_event(e)
                    }
                }
                return Ok(exit::OK);
            }
            let mut query = Vec::new();
            if let Some(j) = job {
                query.push(format!("job={}", encode(&j)));
            }
            if let Some(a) = after {
                query.push(format!("after={a}"));
            }
            c.follow(&format!("/api/events?{}", query.join("&")), |e| {
                if c.json {
                    c.print_json(&e)
                } else {
                    client::print_event(&e)
                }
                Ok(true)
            })?;
            Ok(exit::OK)
        }
        Command::Stats => show::<Stats>(&client()?, "/api/stats", client::print_stats),
        Command::Servers => show::<ServerList>(&client()?, "/api/servers", client::print_servers),
        Command::Status { ids } => {
            let c = client()?;
            let body = serde_json::to_value(StatusRequest { ids })?;
            let out: baton_api::StatusResponse = c.call("POST", "/api/jobs/status", Some(&body))?;
            if c.json {
                c.print_json(&out);
            } else {
                for j in &out.jobs {
                    println!("{:<38} {}", j.id, j.state);
                }
                for m in &out.missing {
                    println!("{m:<38} missing");
                }
            }
            Ok(exit::OK)
        }
        Command::Token {
            command: TokenCommand::New { name, role },
        } => {
            if !matches!(role.as_str(), "viewer" | "operator" | "admin") {
                anyhow::bail!("invalid --role {role:?}: expected viewer, operator or admin");
            }
            let mut bytes = [0u8; 24];
            getrandom_fill(&mut bytes)?;
            let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            println!("token (give it to the client; it is not stored): {token}");
            println!("add to baton.toml under [auth]:");
            println!(
                "tokens = [{{ name = {name:?}, sha256 = \"{}\", role = \"{role}\" }}]",
                baton_server::hash_token(&token)
            );
            Ok(exit::OK)
        }
    }
}

/// Submits a job; with `--wait` and no server reachable, runs it in this process.
fn submit(c: &Client, spec: baton_api::JobSpec, wait: bool) -> Result<u8> {
    let body = serde_json::to_value(&spec)?;
    let job: Job = match c.call("POST", "/api/jobs", Some(&body)) {
        Ok(job) => job,
        Err(e)
            if wait
                && e.downcast_ref::<Exit>()
                    .is_some_and(|x| x.code == exit::UNREACHABLE) =>
        {
            return runtime()?.block_on(local::run(spec, c.json));
        }
        Err(e) => return Err(e),
    };
    if wait {
        if !c.json {
            eprintln!("submitted {}", job.id);
        }
        return client::wait(c, &job.id, None, false);
    }
    if c.json {
        c.print_json(&job);
    } else {
        println!("{}", job.id);
    }
    Ok(exit::OK)
}

/// Reads one resource and prints it as a table, or as JSON with `--json`.
fn show<T: serde::de::DeserializeOwned + serde::Serialize>(
    c: &Client,
    path: &str,
    table: fn(&T),
) -> Result<u8> {
    let value: T = c.call("GET", path, None)?;
    if c.json {
        c.print_json(&value);
    } else {
        table(&value);
    }
    Ok(exit::OK)
}

/// A control command: one job through its own endpoint, several (ids or a filter)
/// through the bulk endpoint.
fn control(
    c: &Client,
    jobs: bulk_cli::Targets,
    action: &str,
    force: Option<bool>,
    from_checkpoint: Option<bool>,
) -> Result<u8> {
    let id = match jobs.plan(action, force, from_checkpoint)? {
        bulk_cli::Plan::Bulk(request) => return bulk_cli::run(c, &request),
        bulk_cli::Plan::One(id) => encode(&id),
    };
    let (method, path) = match action {
        "delete" => ("DELETE", format!("/api/jobs/{id}")),
        "stop" if force == Some(true) => ("POST", format!("/api/jobs/{id}/stop?force=true")),
        "retry" if from_checkpoint == Some(true) => {
            ("POST", format!("/api/jobs/{id}/retry?from_checkpoint=true"))
        }
        _ => ("POST", format!("/api/jobs/{id}/{action}")),
    };
    let job: Job = c.call(method, &path, None::<&Value>)?;
    report(c, &job);
    Ok(exit::OK)
}

fn report(c: &Client, job: &Job) {
    if c.json {
        c.print_json(job);
    } else {
        println!("{} {}", job.id, job.state);
    }
}

/// Percent-encodes a query or path value.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b':' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn getrandom_fill(buf: &mut [u8]) -> Result<()> {
    use std::io::Read;
    std::fs::File::open("/dev/urandom")?.read_exact(buf)?;
    Ok(())
}
