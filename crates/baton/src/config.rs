//! `baton serve` configuration: `baton.toml`, then `BATON_*` variables, then flags.
//! Every setting is checked at start; a bad one is refused with its name.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use baton_engine::{CommandPolicy, SecretKey, Security};
use baton_server::{AuthConfig, TokenEntry};
use baton_store::Durability;
use serde::Deserialize;

mod concurrency;
mod resources;

/// The file as written; every key optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// One address or a list: `127.0.0.1:7700`, `unix:///run/baton/baton.sock`.
    pub listen: Option<OneOrMany>,
    /// The group given access (mode 0660) to the unix socket; without it, 0600.
    pub socket_group: Option<String>,
    /// PEM certificate chain: with `tls_key`, TCP listeners speak HTTPS only.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// Listen beyond loopback without TLS or auth.
    pub allow_insecure_remote: Option<bool>,
    pub store: Option<String>,
    pub durability: Option<String>,
    pub allow_remote: Option<bool>,
    pub cors_origins: Option<Vec<String>>,
    /// Names besides loopback and the listen address that requests may reach.
    pub allowed_hosts: Option<Vec<String>>,
    pub body_limit_bytes: Option<usize>,
    pub submit_rate: Option<u32>,
    pub submit_burst: Option<u32>,
    /// Requests worked on at once (503 past it).
    pub max_requests: Option<usize>,
    /// Streams (SSE, WebSocket, long-polls) open at once (503 past it).
    pub max_streams: Option<usize>,
    /// The most jobs one bulk action reaches.
    pub bulk_limit: Option<usize>,
    /// The longest a request body may take to arrive.
    pub body_timeout: Option<String>,
    pub shutdown_timeout: Option<String>,
    /// How often the server writes its heartbeat; on a shared store (PostgreSQL) a
    /// server that misses three is taken for gone and its jobs are recovered.
    pub heartbeat: Option<String>,
    /// Folders of pipeline definitions (one TOML file each), loaded at start.
    pub pipelines_dirs: Option<Vec<PathBuf>>,
    /// The most log lines kept per job.
    pub max_log_lines: Option<u64>,
    /// Kinds served by remote workers that clients may submit while no worker that
    /// serves them is connected (their jobs wait queued).
    pub remote_kinds: Option<Vec<String>>,
    /// Queue name to its concurrency, or to a table (`{ concurrency = 2, heavy = true }`).
    pub queues: Option<BTreeMap<String, toml::Value>>,
    /// How long finished jobs and their events are kept (`"7d"`, or `"off"`).
    pub retention: Option<String>,
    /// Queue name to its own retention.
    pub queue_retention: Option<BTreeMap<String, String>>,
    pub auth: Option<FileAuth>,
    pub security: Option<FileSecurity>,
    pub dashboard: Option<FileDashboard>,
    pub resources: Option<resources::FileResources>,
    pub limits: Option<FileLimits>,
    /// At most so many jobs with a label, or of a kind, running at once across queues.
    pub concurrency_limits: Option<Vec<concurrency::FileLimit>>,
}

/// `[limits]`: how command and pipeline jobs' processes are measured and held to
/// their resource limits, and each queue's default limits.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileLimits {
    /// `"auto"` (cgroups where possible, else rlimits), `"cgroup"` or `"rlimit"`.
    pub mechanism: Option<String>,
    /// How often running jobs' processes are measured and checked (`"1s"`).
    pub sample_every: Option<String>,
    /// The least time between two `job.usage` events of one job (`"5s"`).
    pub usage_event_every: Option<String>,
    /// Queue name to the default limits of its command and pipeline jobs.
    pub queues: Option<BTreeMap<String, baton_core::ResourceLimits>>,
}

/// `[dashboard]`: how the dashboard the server serves shows jobs.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileDashboard {
    /// A running job with no progress, step, output or log line for this long is
    /// marked stalled (`"2m"`).
    pub stalled_after: Option<String>,
}

/// `[security]`: what jobs may run and how secret env values are kept.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSecurity {
    /// `"any"`, `"none"`, or a list of absolute paths and patterns.
    pub commands: Option<CommandsSetting>,
    /// 32 bytes, as 64 hex digits or base64.
    pub secret_key: Option<String>,
    /// A file holding the key.
    pub secret_key_file: Option<PathBuf>,
    /// Every env value of a job is secret.
    pub redact_env: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum CommandsSetting {
    Word(String),
    List(Vec<String>),
}

/// A setting given as one value or a list.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

/// Where `baton serve` answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    Tcp(SocketAddr),
    /// A unix socket file: no network port; access by file permissions.
    Unix(PathBuf),
}

impl Listen {
    pub fn parse(text: &str) -> Result<Listen, String> {
        if let Some(path) = text.strip_prefix("unix://") {
            if path.is_empty() {
                return Err(format!(
                    "{text:?} names no socket file (e.g. unix:///run/baton/baton.sock)"
                ));
            }
            return Ok(Listen::Unix(PathBuf::from(path)));
        }
        text.parse().map(Listen::Tcp).map_err(|_| {
            format!("{text:?}: expected an address like 127.0.0.1:7700 or unix:///path/baton.sock")
        })
    }
}

impl std::fmt::Display for Listen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Listen::Tcp(a) => write!(f, "{a}"),
            Listen::Unix(p) => write!(f, "unix://{}", p.display()),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileAuth {
    #[serde(default)]
    pub tokens: Vec<TokenEntry>,
    pub jwt_secret: Option<String>,
}

/// Flags given on the command line (they win over everything).
#[derive(Debug, Default, Clone)]
pub struct Flags {
    pub config: Option<PathBuf>,
    /// Every `--listen` given; empty: not set on the command line.
    pub listen: Vec<String>,
    pub socket_group: Option<String>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub allow_insecure_remote: bool,
    pub store: Option<String>,
    pub durability: Option<String>,
    pub allow_remote: bool,
    pub max_requests: Option<String>,
    pub max_streams: Option<String>,
    pub bulk_limit: Option<String>,
    /// `--allowed-host`, each given.
    pub allowed_hosts: Vec<String>,
    /// `--cors-origin`, each given.
    pub cors_origins: Vec<String>,
}

/// The checked configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// At least one; TCP, unix sockets, or both.
    pub listen: Vec<Listen>,
    /// The group id given the unix socket (mode 0660); `None`: mode 0600.
    pub socket_group: Option<u32>,
    /// When set, every TCP listener speaks TLS.
    pub tls: Option<baton_server::TlsConfig>,
    pub store: StoreUrl,
    pub durability: Durability,
    pub cors_origins: Vec<String>,
    pub allowed_hosts: Vec<String>,
    pub body_limit: usize,
    pub submit_rate: u32,
    pub submit_burst: u32,
    pub max_requests: usize,
    pub max_streams: usize,
    pub bulk_limit: usize,
    pub body_timeout: Duration,
    pub shutdown_timeout: Duration,
    pub heartbeat: Duration,
    pub queues: BTreeMap<String, usize>,
    /// Queues that admission control holds while a resource threshold is crossed.
    pub heavy_queues: Vec<String>,
    /// Concurrency limits by label or kind across queues.
    pub concurrency_limits: Vec<baton_engine::ConcurrencyLimit>,
    /// The machine monitor and admission control (`[resources]`); the disk is the
    /// store's, set by `serve`.
    pub resources: baton_engine::ResourceOptions,
    pub auth: AuthConfig,
    pub pipelines_dirs: Vec<PathBuf>,
    pub max_log_lines: Option<u64>,
    pub remote_kinds: Vec<String>,
    pub security: Security,
    pub stalled_after: Duration,
    pub retention: baton_engine::Retention,
    pub usage: baton_engine::UsageOptions,
    pub queue_limits: BTreeMap<String, baton_core::ResourceLimits>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreUrl {
    Sqlite(PathBuf),
    /// A PostgreSQL database that several servers may share (`postgres://...`).
    Postgres(String),
}

impl StoreUrl {
    pub fn parse(url: &str) -> Result<StoreUrl, String> {
        if let Some(path) = url.strip_prefix("sqlite://") {
            if path.is_empty() {
                return Err(format!("{url:?} names no file (e.g. sqlite://baton.db)"));
            }
            return Ok(StoreUrl::Sqlite(PathBuf::from(path)));
        }
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            baton_store_postgres::check_url(url)?;
            return Ok(StoreUrl::Postgres(url.to_owned()));
        }
        Err(format!(
            "{url:?} is not a store URL (expected sqlite://baton.db or sqlite:///abs/path.db)"
        ))
    }
}

/// Reads the configuration: the file (`--config`, `BATON_CONFIG`, or `baton.toml` if
/// present), then the environment, then flags.
pub fn load(flags: &Flags, env: &dyn Fn(&str) -> Option<String>) -> Result<Config> {
    let (file, path) = match flags
        .config
        .clone()
        .or_else(|| env("BATON_CONFIG").map(PathBuf::from))
    {
        Some(path) => (read_file(&path)?, Some(path)),
        None if Path::new("baton.toml").exists() => {
            let path = PathBuf::from("baton.toml");
            (read_file(&path)?, Some(path))
        }
        None => (FileConfig::default(), None),
    };
    let source = |key: &str| match &path {
        Some(p) => format!("{key} in {}", p.display()),
        None => key.to_owned(),
    };

    let (listen_texts, listen_named) = if !flags.listen.is_empty() {
        (flags.listen.clone(), "--listen".to_owned())
    } else if let Some(v) = env("BATON_LISTEN") {
        (
            v.split(',').map(|s| s.trim().to_owned()).collect(),
            "BATON_LISTEN".to_owned(),
        )
    } else if let Some(v) = file.listen.clone() {
        (v.into_vec(), source("listen"))
    } else {
        (vec!["127.0.0.1:7700".into()], "listen".to_owned())
    };
    if listen_texts.is_empty() {
        bail!("invalid setting {listen_named}: it lists no address");
    }
    let mut listen = Vec::new();
    for text in &listen_texts {
        let l = Listen::parse(text)
            .map_err(|m| anyhow::anyhow!("invalid setting {listen_named} = {m}"))?;
        if listen.contains(&l) {
            bail!("invalid setting {listen_named}: {text:?} is listed twice");
        }
        listen.push(l);
    }
    let has_socket = listen.iter().any(|l| matches!(l, Listen::Unix(_)));
    let socket_group = match setting(
        "socket_group",
        flags.socket_group.clone(),
        "BATON_SOCKET_GROUP",
        env,
        file.socket_group.clone(),
        &source,
    ) {
        None => None,
        Some((_, named)) if !has_socket => {
            bail!(
                "invalid setting {named}: it applies to a unix:// listen address, and none is set"
            )
        }
        Some((name, named)) => Some(
            group_id(&name)
                .map_err(|m| anyhow::anyhow!("invalid setting {named} = {name:?}: {m}"))?,
        ),
    };
    let tls_cert = setting(
        "tls_cert",
        flags.tls_cert.as_ref().map(|p| p.display().to_string()),
        "BATON_TLS_CERT",
        env,
        file.tls_cert.as_ref().map(|p| p.display().to_string()),
        &source,
    );
    let tls_key = setting(
        "tls_key",
        flags.tls_key.as_ref().map(|p| p.display().to_string()),
        "BATON_TLS_KEY",
        env,
        file.tls_key.as_ref().map(|p| p.display().to_string()),
        &source,
    );
    let tls = match (tls_cert, tls_key) {
        (None, None) => None,
        (Some((cert, _)), Some((key, _))) => Some(
            baton_server::TlsConfig::load(Path::new(&cert), Path::new(&key))
                .map_err(|e| anyhow::anyhow!("{e}"))?,
        ),
        (Some((_, named)), None) => bail!(
            "invalid setting {named}: tls_key is missing; give both tls_cert and tls_key (PEM files), or neither"
        ),
        (None, Some((_, named))) => bail!(
            "invalid setting {named}: tls_cert is missing; give both tls_cert and tls_key (PEM files), or neither"
        ),
    };
    let store_text = flags
        .store
        .clone()
        .or_else(|| env("BATON_STORE"))
        .or(file.store.clone())
        .unwrap_or_else(|| "sqlite://baton.db".into());
    let store =
        StoreUrl::parse(&store_text).map_err(|m| anyhow::anyhow!("invalid setting store = {m}"))?;
    let durability_text = flags
        .durability
        .clone()
        .or_else(|| env("BATON_DURABILITY"))
        .or(file.durability.clone())
        .unwrap_or_else(|| "full".into());
    let durability: Durability = durability_text
        .parse()
        .map_err(|m| anyhow::anyhow!("invalid setting durability: {m}"))?;
    // `allow_remote` is the older name of `allow_insecure_remote`.
    let allow_insecure_remote = flags.allow_insecure_remote
        || flags.allow_remote
        || match env("BATON_ALLOW_INSECURE_REMOTE") {
            Some(v) => parse_bool("BATON_ALLOW_INSECURE_REMOTE", &v)?,
            None => file.allow_insecure_remote.unwrap_or(false),
        }
        || match env("BATON_ALLOW_REMOTE") {
            Some(v) => parse_bool("BATON_ALLOW_REMOTE", &v)?,
            None => file.allow_remote.unwrap_or(false),
        };
    let max_requests = limit_setting(
        "max_requests",
        flags.max_requests.as_deref(),
        "BATON_MAX_REQUESTS",
        env,
        file.max_requests,
        &source,
    )?
    .unwrap_or(baton_server::DEFAULT_MAX_REQUESTS);
    let max_streams = limit_setting(
        "max_streams",
        flags.max_streams.as_deref(),
        "BATON_MAX_STREAMS",
        env,
        file.max_streams,
        &source,
    )?
    .unwrap_or(baton_server::DEFAULT_MAX_STREAMS);
    let bulk_limit = limit_setting(
        "bulk_limit",
        flags.bulk_limit.as_deref(),
        "BATON_BULK_LIMIT",
        env,
        file.bulk_limit,
        &source,
    )?
    .unwrap_or(baton_server::DEFAULT_BULK_LIMIT);
    let body_timeout = match env("BATON_BODY_TIMEOUT")
        .map(|v| (v, "BATON_BODY_TIMEOUT".to_owned()))
        .or_else(|| {
            file.body_timeout
                .clone()
                .map(|v| (v, source("body_timeout")))
        }) {
        None => baton_server::DEFAULT_BODY_TIMEOUT,
        Some((text, named)) => positive_duration(&text)
            .map_err(|m| anyhow::anyhow!("invalid setting {named} = {text:?}: {m}"))?,
    };
    let shutdown_timeout = match file.shutdown_timeout.as_deref() {
        None => Duration::from_secs(30),
        Some(t) => baton_core::duration::parse(t)
            .map_err(|m| anyhow::anyhow!("invalid setting {}: {m}", source("shutdown_timeout")))?,
    };
    let heartbeat = match env("BATON_HEARTBEAT")
        .map(|v| (v, "BATON_HEARTBEAT".to_owned()))
        .or_else(|| file.heartbeat.clone().map(|v| (v, source("heartbeat"))))
    {
        None => Duration::from_secs(5),
        Some((text, named)) => positive_duration(&text)
            .map_err(|m| anyhow::anyhow!("invalid setting {named} = {text:?}: {m}"))?,
    };
    let (queues, heavy_queues) = resources::queues(file.queues.as_ref(), &source)?;
    let concurrency_limits = concurrency::limits(file.concurrency_limits, &source)?;
    let resources = resources::resources(file.resources, &source)?;
    for dir in file.pipelines_dirs.iter().flatten() {
        if !dir.is_dir() {
            bail!(
                "invalid setting {}: {} is not a folder",
                source("pipelines_dirs"),
                dir.display()
            );
        }
    }
    if file.max_log_lines == Some(0) {
        bail!(
            "invalid setting {}: must be at least 1",
            source("max_log_lines")
        );
    }
    let allowed_hosts = list_setting(
        "allowed_hosts",
        &flags.allowed_hosts,
        "BATON_ALLOWED_HOSTS",
        env,
        file.allowed_hosts.clone(),
        &source,
        |h| {
            (h == "*" || baton_server::normalize_host(h).is_some())
                .then_some(())
                .ok_or("expected a host name or an IP address, without scheme or port")
        },
    )?;
    let cors_origins = list_setting(
        "cors_origins",
        &flags.cors_origins,
        "BATON_CORS_ORIGINS",
        env,
        file.cors_origins.clone(),
        &source,
        |o| {
            (o == "*" || baton_server::normalize_origin(o).is_some())
                .then_some(())
                .ok_or("expected an origin like https://app.example or http://localhost:3000 (scheme, host and port only)")
        },
    )?;
    let mut auth = AuthConfig::default();
    if let Some(a) = file.auth {
        for t in &a.tokens {
            if t.sha256.len() != 64 || !t.sha256.chars().all(|c| c.is_ascii_hexdigit()) {
                bail!(
                    "invalid setting {}: token {:?} needs sha256 = the 64 hex digits of the token's SHA-256 (see `baton token new`)",
                    source("auth.tokens"),
                    t.name
                );
            }
        }
        for t in &a.tokens {
            for q in t.queues.iter().flatten() {
                if q != baton_core::spec::DEFAULT_QUEUE && !queues.contains_key(q) {
                    bail!(
                        "invalid setting {}: token {:?} is limited to queue {q:?}, which is not configured in [queues]",
                        source("auth.tokens"),
                        t.name
                    );
                }
            }
        }
        auth.tokens = a.tokens;
        auth.jwt_secret = a.jwt_secret;
    }
    if let Some(secret) = env("BATON_JWT_SECRET") {
        auth.jwt_secret = Some(secret);
    }
    if auth.jwt_secret.as_deref().is_some_and(|s| s.len() < 16) {
        bail!("invalid setting jwt_secret: it must be at least 16 characters long");
    }
    for l in &listen {
        let Listen::Tcp(addr) = l else { continue };
        if addr.ip().is_loopback() || allow_insecure_remote {
            continue;
        }
        let missing = match (tls.is_some(), auth.enabled()) {
            (true, true) => continue,
            (false, false) => "TLS and auth",
            (false, true) => "TLS",
            (true, false) => "auth",
        };
        bail!(
            "refusing to listen on {addr} without {missing}: anyone on the network could read and control jobs; configure tls_cert and tls_key, and [auth] tokens, or pass --allow-insecure-remote (BATON_ALLOW_INSECURE_REMOTE=true) to do it anyway"
        );
    }
    let security = security_settings(file.security.unwrap_or_default(), env, &source)?;
    let stalled_after = match file.dashboard.and_then(|d| d.stalled_after) {
        None => baton_server::DEFAULT_STALLED_AFTER,
        Some(text) => positive_duration(&text).map_err(|m| {
            anyhow::anyhow!(
                "invalid setting {} = {text:?}: {m}",
                source("dashboard.stalled_after")
            )
        })?,
    };
    let mut retention = baton_engine::Retention::default();
    if let Some((text, named)) = env("BATON_RETENTION")
        .map(|v| (v, "BATON_RETENTION".to_owned()))
        .or_else(|| file.retention.clone().map(|v| (v, source("retention"))))
    {
        retention.keep = parse_retention(&text)
            .map_err(|m| anyhow::anyhow!("invalid setting {named} = {text:?}: {m}"))?;
    }
    for (queue, text) in file.queue_retention.iter().flatten() {
        let keep = parse_retention(text).map_err(|m| {
            anyhow::anyhow!(
                "invalid setting {} for queue {queue:?} = {text:?}: {m}",
                source("queue_retention")
            )
        })?;
        retention.queues.insert(queue.clone(), keep);
    }
    let (usage, queue_limits) =
        limits_settings(file.limits.unwrap_or_default(), &queues, env, &source)?;
    Ok(Config {
        listen,
        socket_group,
        tls,
        store,
        durability,
        cors_origins,
        allowed_hosts,
        body_limit: file.body_limit_bytes.unwrap_or(2 * 1024 * 1024),
        submit_rate: file.submit_rate.unwrap_or(0),
        submit_burst: file.submit_burst.unwrap_or(100),
        max_requests,
        max_streams,
        bulk_limit,
        body_timeout,
        shutdown_timeout,
        heartbeat,
        queues,
        heavy_queues,
        concurrency_limits,
        resources,
        auth,
        pipelines_dirs: file.pipelines_dirs.unwrap_or_default(),
        max_log_lines: file.max_log_lines,
        remote_kinds: file.remote_kinds.unwrap_or_default(),
        security,
        stalled_after,
        retention,
        usage,
        queue_limits,
    })
}

/// `[limits]`, with `BATON_LIMITS_MECHANISM` over its `mechanism`.
fn limits_settings(
    file: FileLimits,
    queues: &BTreeMap<String, usize>,
    env: &dyn Fn(&str) -> Option<String>,
    source: &dyn Fn(&str) -> String,
) -> Result<(
    baton_engine::UsageOptions,
    BTreeMap<String, baton_core::ResourceLimits>,
)> {
    let mut usage = baton_engine::UsageOptions::default();
    if let Some((text, named)) = env("BATON_LIMITS_MECHANISM")
        .map(|v| (v, "BATON_LIMITS_MECHANISM".to_owned()))
        .or_else(|| file.mechanism.map(|v| (v, source("limits.mechanism"))))
    {
        usage.mechanism = baton_engine::LimitsMechanism::parse(text.trim()).ok_or_else(|| {
            anyhow::anyhow!(
                "invalid setting {named} = {text:?}: expected \"auto\", \"cgroup\" or \"rlimit\""
            )
        })?;
    }
    let duration = |text: &str, key: &str| -> Result<Duration> {
        match positive_duration(text) {
            Ok(d) if d >= Duration::from_millis(10) => Ok(d),
            Ok(_) => bail!(
                "invalid setting {} = {text:?}: must be at least 10ms",
                source(key)
            ),
            Err(m) => bail!("invalid setting {} = {text:?}: {m}", source(key)),
        }
    };
    if let Some(t) = &file.sample_every {
        usage.sample_every = duration(t, "limits.sample_every")?;
    }
    if let Some(t) = &file.usage_event_every {
        usage.event_every = duration(t, "limits.usage_event_every")?;
    }
    let mut queue_limits = BTreeMap::new();
    for (queue, limits) in file.queues.unwrap_or_default() {
        if queue != baton_core::spec::DEFAULT_QUEUE && !queues.contains_key(&queue) {
            bail!(
                "invalid setting {}: queue {queue:?} is not configured in [queues]",
                source(&format!("limits.queues.{queue}"))
            );
        }
        limits
            .parse(&format!("limits.queues.{queue}"))
            .map_err(|e| anyhow::anyhow!("invalid setting {}: {}", source(&e.field), e.message))?;
        queue_limits.insert(queue, limits);
    }
    Ok((usage, queue_limits))
}

/// A retention: a duration longer than 0s, or `off` (kept for ever).
fn parse_retention(text: &str) -> Result<Option<Duration>, String> {
    if matches!(text.trim(), "off" | "never") {
        return Ok(None);
    }
    positive_duration(text)
        .map(Some)
        .map_err(|m| format!("{m}, or \"off\" to keep finished jobs"))
}

/// A duration longer than 0s.
fn positive_duration(text: &str) -> Result<Duration, String> {
    match baton_core::duration::parse(text) {
        Ok(d) if !d.is_zero() => Ok(d),
        Ok(_) => Err("must be longer than 0s".into()),
        Err(m) => Err(m),
    }
}

/// `[security]`, with `BATON_COMMANDS` (`any`, `none` or a comma-separated list),
/// `BATON_SECRET_KEY`, `BATON_SECRET_KEY_FILE` and `BATON_REDACT_ENV` over it.
fn security_settings(
    file: FileSecurity,
    env: &dyn Fn(&str) -> Option<String>,
    source: &dyn Fn(&str) -> String,
) -> Result<Security> {
    let commands = match (env("BATON_COMMANDS"), file.commands) {
        (Some(text), _) => {
            let named = "BATON_COMMANDS";
            let text = text.trim();
            let policy = if text == "any" || text == "none" {
                CommandPolicy::from_word(text)
            } else {
                let list: Vec<String> = text
                    .split(',')
                    .map(|p| p.trim().to_owned())
                    .filter(|p| !p.is_empty())
                    .collect();
                CommandPolicy::from_list(&list)
            };
            policy.map_err(|m| anyhow::anyhow!("invalid setting {named}: {m}"))?
        }
        (None, Some(CommandsSetting::Word(w))) => CommandPolicy::from_word(&w)
            .map_err(|m| anyhow::anyhow!("invalid setting {}: {m}", source("security.commands")))?,
        (None, Some(CommandsSetting::List(list))) => CommandPolicy::from_list(&list)
            .map_err(|m| anyhow::anyhow!("invalid setting {}: {m}", source("security.commands")))?,
        (None, None) => CommandPolicy::Any,
    };
    let redact_env = match env("BATON_REDACT_ENV") {
        Some(v) => parse_bool("BATON_REDACT_ENV", &v)?,
        None => file.redact_env.unwrap_or(false),
    };
    let key_text = env("BATON_SECRET_KEY")
        .map(|k| (k, "BATON_SECRET_KEY".to_owned()))
        .or_else(|| file.secret_key.map(|k| (k, source("security.secret_key"))));
    let key_file = env("BATON_SECRET_KEY_FILE")
        .map(|f| (PathBuf::from(f), "BATON_SECRET_KEY_FILE".to_owned()))
        .or_else(|| {
            file.secret_key_file
                .map(|f| (f, source("security.secret_key_file")))
        });
    let secret_key = match (key_text, key_file) {
        (Some((_, a)), Some((_, b))) => {
            bail!("invalid setting {a}: give either a secret key or a key file ({b}), not both")
        }
        (Some((text, named)), None) => Some(
            SecretKey::parse(&text)
                .map_err(|m| anyhow::anyhow!("invalid setting {named}: the key {m}"))?,
        ),
        (None, Some((path, named))) => {
            let text = std::fs::read_to_string(&path).map_err(|e| {
                anyhow::anyhow!(
                    "invalid setting {named}: cannot read {}: {e}",
                    path.display()
                )
            })?;
            Some(SecretKey::parse(&text).map_err(|m| {
                anyhow::anyhow!("invalid setting {named}: the key in {} {m}", path.display())
            })?)
        }
        (None, None) => None,
    };
    if redact_env && secret_key.is_none() {
        bail!(
            "invalid setting redact_env: it needs a secret key to seal the values with (set security.secret_key or security.secret_key_file)"
        );
    }
    Ok(Security {
        commands,
        secret_key,
        redact_env,
    })
}

fn read_file(path: &Path) -> Result<FileConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the configuration file {}", path.display()))?;
    toml::from_str(&text).map_err(|e| {
        anyhow::anyhow!(
            "invalid configuration file {}: {}",
            path.display(),
            e.to_string().trim()
        )
    })
}

/// A bound of at least 1 from `--flag`, then `ENV`, then the file; `None` when none
/// sets it.
fn limit_setting(
    key: &str,
    flag: Option<&str>,
    env_name: &str,
    env: &dyn Fn(&str) -> Option<String>,
    file: Option<usize>,
    source: &dyn Fn(&str) -> String,
) -> Result<Option<usize>> {
    let (value, named) = if let Some(v) = flag {
        (v.to_owned(), format!("--{}", key.replace('_', "-")))
    } else if let Some(v) = env(env_name) {
        (v, env_name.to_owned())
    } else if let Some(n) = file {
        (n.to_string(), source(key))
    } else {
        return Ok(None);
    };
    match value.trim().parse::<usize>() {
        Ok(n) if n >= 1 => Ok(Some(n)),
        _ => bail!("invalid setting {named} = {value:?}: expected a whole number of at least 1"),
    }
}

/// A text setting from `--flag`, then `ENV`, then the file, with the name to quote
/// when it is wrong.
fn setting(
    key: &str,
    flag: Option<String>,
    env_name: &str,
    env: &dyn Fn(&str) -> Option<String>,
    file: Option<String>,
    source: &dyn Fn(&str) -> String,
) -> Option<(String, String)> {
    if let Some(v) = flag {
        Some((v, format!("--{}", key.replace('_', "-"))))
    } else if let Some(v) = env(env_name) {
        Some((v, env_name.to_owned()))
    } else {
        file.map(|v| (v, source(key)))
    }
}

/// A group name or number, as the system knows it.
fn group_id(name: &str) -> Result<u32, String> {
    if let Ok(gid) = name.parse::<u32>() {
        return Ok(gid);
    }
    match nix::unistd::Group::from_name(name) {
        Ok(Some(g)) => Ok(g.gid.as_raw()),
        Ok(None) => Err("no such group".into()),
        Err(e) => Err(format!("cannot look the group up: {e}")),
    }
}

/// A list from `--flag` (given once per value), then `ENV` (comma-separated), then the
/// file; each value checked by `check`.
#[allow(clippy::too_many_arguments)]
fn list_setting(
    key: &str,
    flags: &[String],
    env_name: &str,
    env: &dyn Fn(&str) -> Option<String>,
    file: Option<Vec<String>>,
    source: &dyn Fn(&str) -> String,
    check: impl Fn(&str) -> Result<(), &'static str>,
) -> Result<Vec<String>> {
    let (values, named) = if !flags.is_empty() {
        let flag = match key {
            "allowed_hosts" => "--allowed-host".to_owned(),
            "cors_origins" => "--cors-origin".to_owned(),
            other => format!("--{}", other.replace('_', "-")),
        };
        (flags.to_vec(), flag)
    } else if let Some(v) = env(env_name) {
        let values = v
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        (values, env_name.to_owned())
    } else if let Some(v) = file {
        (v, source(key))
    } else {
        return Ok(Vec::new());
    };
    for v in &values {
        if let Err(m) = check(v.trim()) {
            bail!("invalid setting {named}: {v:?}: {m}");
        }
    }
    Ok(values.into_iter().map(|v| v.trim().to_owned()).collect())
}

fn parse_bool(name: &str, v: &str) -> Result<bool> {
    match v {
        "1" | "true" | "yes" => Ok(true),
        "0" | "false" | "no" | "" => Ok(false),
        other => bail!("invalid setting {name}={other:?}: expected true or false"),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn load_with(
        file: Option<&str>,
        env: &[(&str, &str)],
        flags: Flags,
    ) -> Result<Config> {
        let dir = tempfile::tempdir().unwrap();
        let mut flags = flags;
        if let Some(text) = file {
            let path = dir.path().join("baton.toml");
            std::fs::write(&path, text).unwrap();
            flags.config = Some(path);
        }
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        load(&flags, &|k| {
            env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
        })
    }

    #[test]
    fn defaults() {
        let c = load_with(None, &[], Flags::default()).unwrap();
        assert_eq!(c.listen, [Listen::Tcp("127.0.0.1:7700".parse().unwrap())]);
        assert!(c.tls.is_none());
        assert_eq!(c.socket_group, None);
        assert_eq!(c.store, StoreUrl::Sqlite("baton.db".into()));
        assert_eq!(c.durability, Durability::Full);
    }

    #[test]
    fn flags_beat_env_beat_file() {
        let file = "listen = \"127.0.0.1:1\"\nstore = \"sqlite:///tmp/a.db\"";
        let c = load_with(Some(file), &[], Flags::default()).unwrap();
        assert_eq!(port(&c), 1);
        let c = load_with(
            Some(file),
            &[("BATON_LISTEN", "127.0.0.1:2")],
            Flags::default(),
        )
        .unwrap();
        assert_eq!(port(&c), 2);
        let flags = Flags {
            listen: vec!["127.0.0.1:3".into()],
            ..Flags::default()
        };
        let c = load_with(Some(file), &[("BATON_LISTEN", "127.0.0.1:2")], flags).unwrap();
        assert_eq!(port(&c), 3);
        assert_eq!(c.store, StoreUrl::Sqlite("/tmp/a.db".into()));
    }

    fn port(c: &Config) -> u16 {
        match &c.listen[..] {
            [Listen::Tcp(a)] => a.port(),
            other => panic!("{other:?}"),
        }
    }

    pub(crate) fn refused(file: Option<&str>, env: &[(&str, &str)], part: &str) {
        let e = load_with(file, env, Flags::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains(part), "{e} lacks {part}");
    }

    #[test]
    fn security_settings_are_read_and_bad_ones_named() {
        let c = load_with(None, &[], Flags::default()).unwrap();
        assert_eq!(
            c.security.commands,
            CommandPolicy::Any,
            "\"any\" by default"
        );
        assert!(c.security.secret_key.is_none() && !c.security.redact_env);
        let c = load_with(
            Some("[security]\ncommands = \"none\""),
            &[],
            Flags::default(),
        )
        .unwrap();
        assert_eq!(c.security.commands, CommandPolicy::Nothing);
        let c = load_with(
            Some("[security]\ncommands = \"none\""),
            &[("BATON_COMMANDS", "/usr/bin/env, /opt/jobs/*")],
            Flags::default(),
        )
        .unwrap();
        assert_eq!(
            c.security.commands,
            CommandPolicy::from_list(&["/usr/bin/env".into(), "/opt/jobs/*".into()]).unwrap()
        );
        let dir = tempfile::tempdir().unwrap();
        let key_file = dir.path().join("key");
        std::fs::write(&key_file, format!("{}\n", "ab".repeat(32))).unwrap();
        let c = load_with(
            Some(&format!(
                "[security]\nsecret_key_file = {:?}\nredact_env = true",
                key_file.display().to_string()
            )),
            &[],
            Flags::default(),
        )
        .unwrap();
        let key = c.security.secret_key.expect("the key file is read");
        assert!(key.open(&key.seal("x")).is_ok());
        assert!(c.security.redact_env);

        refused(
            Some("[security]\ncommands = \"some\""),
            &[],
            "invalid setting security.commands in",
        );
        refused(
            Some("[security]\ncommands = [\"python3\"]"),
            &[],
            "\"python3\" is not an absolute path",
        );
        refused(
            None,
            &[("BATON_COMMANDS", "bin/sh")],
            "invalid setting BATON_COMMANDS",
        );
        refused(
            Some("[security]\nsecret_key = \"abcd\""),
            &[],
            "invalid setting security.secret_key in",
        );
        refused(
            None,
            &[("BATON_SECRET_KEY", &"ab".repeat(16))],
            "invalid setting BATON_SECRET_KEY: the key is 32 hex digits long",
        );
        refused(
            None,
            &[("BATON_SECRET_KEY_FILE", "/nonexistent/key")],
            "invalid setting BATON_SECRET_KEY_FILE: cannot read /nonexistent/key",
        );
        refused(
            Some("[security]\nredact_env = true"),
            &[],
            "invalid setting redact_env: it needs a secret key",
        );
        refused(
            None,
            &[
                ("BATON_SECRET_KEY", &"ab".repeat(32)),
                ("BATON_SECRET_KEY_FILE", "/k"),
            ],
            "not both",
        );
        refused(
            Some("[security]\ncolour = 1"),
            &[],
            "unknown field `colour`",
        );
        let token = format!("sha256 = \"{}\", role = \"operator\"", "a".repeat(64));
        refused(
            Some(&format!(
                "[auth]\ntokens = [{{ name = \"ci\", {token}, queues = [\"media\"] }}]"
            )),
            &[],
            "token \"ci\" is limited to queue \"media\", which is not configured in [queues]",
        );
        let c = load_with(
            Some(&format!(
                "[queues]\nmedia = 2\n[auth]\ntokens = [{{ name = \"ci\", {token}, queues = [\"media\"] }}]"
            )),
            &[],
            Flags::default(),
        )
        .unwrap();
        assert_eq!(c.auth.tokens[0].queues, Some(vec!["media".to_owned()]));
    }

    #[test]
    fn limits_settings_are_read_and_bad_ones_named() {
        let c = load_with(None, &[], Flags::default()).unwrap();
        assert_eq!(c.usage.mechanism, baton_engine::LimitsMechanism::Auto);
        assert_eq!(c.usage.sample_every, Duration::from_secs(1));
        assert_eq!(c.usage.event_every, Duration::from_secs(5));
        assert!(c.queue_limits.is_empty());
        let file = "[queues]\nmedia = 2\n[limits]\nmechanism = \"cgroup\"\nsample_every = \"500ms\"\nusage_event_every = \"10s\"\n[limits.queues.media]\nmemory = \"2GB\"\ncpus = 2\n[limits.queues.default]\ncpu_time = \"1h\"";
        let c = load_with(Some(file), &[], Flags::default()).unwrap();
        assert_eq!(c.usage.mechanism, baton_engine::LimitsMechanism::Cgroup);
        assert_eq!(c.usage.sample_every, Duration::from_millis(500));
        assert_eq!(c.usage.event_every, Duration::from_secs(10));
        assert_eq!(c.queue_limits["media"].memory.as_deref(), Some("2GB"));
        assert_eq!(c.queue_limits["media"].cpus, Some(2.0));
        assert_eq!(c.queue_limits["default"].cpu_time.as_deref(), Some("1h"));
        let c = load_with(
            Some(file),
            &[("BATON_LIMITS_MECHANISM", "rlimit")],
            Flags::default(),
        )
        .unwrap();
        assert_eq!(c.usage.mechanism, baton_engine::LimitsMechanism::Rlimit);

        refused(
            Some("[limits]\nmechanism = \"kernel\""),
            &[],
            "invalid setting limits.mechanism in",
        );
        refused(
            None,
            &[("BATON_LIMITS_MECHANISM", "cgroups")],
            "invalid setting BATON_LIMITS_MECHANISM = \"cgroups\": expected \"auto\", \"cgroup\" or \"rlimit\"",
        );
        refused(
            Some("[limits]\nsample_every = \"1ms\""),
            &[],
            "limits.sample_every in",
        );
        refused(
            Some("[limits]\nusage_event_every = \"soon\""),
            &[],
            "limits.usage_event_every in",
        );
        refused(
            Some("[limits.queues.media]\nmemory = \"1GB\""),
            &[],
            "queue \"media\" is not configured in [queues]",
        );
        refused(
            Some("[limits.queues.default]\nmemory = \"lots\""),
            &[],
            "invalid setting limits.queues.default.memory in",
        );
        refused(
            Some("[limits.queues.default]\ncpus = -1"),
            &[],
            "limits.queues.default.cpus in",
        );
        refused(
            Some("[limits.queues.default]\nmemroy = \"1GB\""),
            &[],
            "unknown field `memroy`",
        );
    }

    #[test]
    fn bad_settings_are_named() {
        refused(
            Some("listen = \"nowhere\""),
            &[],
            "invalid setting listen in",
        );
        refused(Some("colour = \"red\""), &[], "unknown field `colour`");
        refused(
            Some("store = \"redis://x\""),
            &[],
            "invalid setting store = \"redis://x\" is not a store URL",
        );
        refused(
            None,
            &[("BATON_STORE", "postgres://ada:secret@db:notaport/x")],
            "invalid PostgreSQL URL \"postgres://ada:***@db:notaport/x\"",
        );
        refused(
            None,
            &[("BATON_DURABILITY", "maybe")],
            "invalid durability \"maybe\"",
        );
        refused(Some("shutdown_timeout = \"soon\""), &[], "shutdown_timeout");
        refused(
            Some("heartbeat = \"0s\""),
            &[],
            "invalid setting heartbeat in",
        );
        refused(
            None,
            &[("BATON_HEARTBEAT", "often")],
            "invalid setting BATON_HEARTBEAT = \"often\"",
        );
        refused(
            Some("[queues]\nemails = 0"),
            &[],
            "queue \"emails\" needs a concurrency",
        );
        refused(
            Some("[auth]\ntokens = [{name = \"a\", sha256 = \"xyz\", role = \"admin\"}]"),
            &[],
            "64 hex digits",
        );
        refused(
            Some("[auth]\ntokens = [{name = \"a\", sha256 = \"xyz\", role = \"boss\"}]"),
            &[],
            "unknown variant `boss`",
        );
        refused(
            None,
            &[("BATON_LISTEN", "0.0.0.0:7700")],
            "refusing to listen on 0.0.0.0:7700 without TLS and auth",
        );
        refused(
            None,
            &[("BATON_ALLOW_REMOTE", "perhaps")],
            "BATON_ALLOW_REMOTE",
        );
    }

    #[test]
    fn request_and_stream_limits_come_from_flags_env_or_file() {
        let c = load_with(None, &[], Flags::default()).unwrap();
        assert_eq!(
            (c.max_requests, c.max_streams),
            (
                baton_server::DEFAULT_MAX_REQUESTS,
                baton_server::DEFAULT_MAX_STREAMS
            )
        );
        let file = "max_requests = 64\nmax_streams = 100";
        let c = load_with(Some(file), &[], Flags::default()).unwrap();
        assert_eq!((c.max_requests, c.max_streams), (64, 100));
        let env = [("BATON_MAX_REQUESTS", "32"), ("BATON_MAX_STREAMS", "50")];
        let c = load_with(Some(file), &env, Flags::default()).unwrap();
        assert_eq!((c.max_requests, c.max_streams), (32, 50));
        let flags = Flags {
            max_requests: Some("16".into()),
            max_streams: Some("20".into()),
            ..Flags::default()
        };
        let c = load_with(Some(file), &env, flags).unwrap();
        assert_eq!((c.max_requests, c.max_streams), (16, 20));
    }

    #[test]
    fn retention_comes_from_env_or_file_per_queue_and_bad_values_are_named() {
        let day = Duration::from_secs(24 * 3600);
        let c = load_with(None, &[], Flags::default()).unwrap();
        assert_eq!(c.retention.keep, Some(7 * day), "a week by default");
        assert!(c.retention.queues.is_empty());
        let file = "retention = \"2d\"\n[queue_retention]\naudit = \"90d\"\nscratch = \"1h\"\nledger = \"off\"";
        let c = load_with(Some(file), &[], Flags::default()).unwrap();
        assert_eq!(c.retention.keep, Some(2 * day));
        assert_eq!(c.retention.of("audit"), Some(90 * day));
        assert_eq!(c.retention.of("scratch"), Some(Duration::from_secs(3600)));
        assert_eq!(c.retention.of("ledger"), None, "kept for ever");
        assert_eq!(c.retention.of("default"), Some(2 * day));
        let c = load_with(Some(file), &[("BATON_RETENTION", "off")], Flags::default()).unwrap();
        assert_eq!(c.retention.keep, None);
        assert_eq!(c.retention.of("scratch"), Some(Duration::from_secs(3600)));
        refused(
            Some("retention = \"0s\""),
            &[],
            "invalid setting retention in",
        );
        refused(
            None,
            &[("BATON_RETENTION", "a while")],
            "invalid setting BATON_RETENTION = \"a while\"",
        );
        refused(
            Some("[queue_retention]\naudit = \"soon\""),
            &[],
            "for queue \"audit\" = \"soon\"",
        );
    }

    #[test]
    fn the_bulk_limit_comes_from_flags_env_or_file_and_is_checked() {
        let c = load_with(None, &[], Flags::default()).unwrap();
        assert_eq!(c.bulk_limit, baton_server::DEFAULT_BULK_LIMIT);
        let file = "bulk_limit = 500";
        assert_eq!(
            load_with(Some(file), &[], Flags::default())
                .unwrap()
                .bulk_limit,
            500
        );
        let env = [("BATON_BULK_LIMIT", "50")];
        assert_eq!(
            load_with(Some(file), &env, Flags::default())
                .unwrap()
                .bulk_limit,
            50
        );
        let flags = Flags {
            bulk_limit: Some("10".into()),
            ..Flags::default()
        };
        assert_eq!(load_with(Some(file), &env, flags).unwrap().bulk_limit, 10);
        refused(Some("bulk_limit = 0"), &[], "invalid setting bulk_limit in");
        refused(
            None,
            &[("BATON_BULK_LIMIT", "all")],
            "invalid setting BATON_BULK_LIMIT = \"all\": expected a whole number of at least 1",
        );
        let flags = Flags {
            bulk_limit: Some("-1".into()),
            ..Flags::default()
        };
        let e = load_with(None, &[], flags).unwrap_err().to_string();
        assert!(e.contains("invalid setting --bulk-limit = \"-1\""), "{e}");
    }

    #[test]
    fn the_dashboards_stall_time_comes_from_the_file_and_is_checked() {
        let c = load_with(None, &[], Flags::default()).unwrap();
        assert_eq!(c.stalled_after, baton_server::DEFAULT_STALLED_AFTER);
        let file = "[dashboard]\nstalled_after = \"90s\"";
        let c = load_with(Some(file), &[], Flags::default()).unwrap();
        assert_eq!(c.stalled_after, Duration::from_secs(90));
        refused(
            Some("[dashboard]\nstalled_after = \"0s\""),
            &[],
            "dashboard.stalled_after in",
        );
        refused(
            Some("[dashboard]\nstalled_after = \"soon\""),
            &[],
            "invalid setting dashboard.stalled_after in",
        );
        refused(
            Some("[dashboard]\nstall = \"1m\""),
            &[],
            "unknown field `stall`",
        );
    }

    #[test]
    fn the_body_timeout_comes_from_env_or_file_and_is_checked() {
        let c = load_with(None, &[], Flags::default()).unwrap();
        assert_eq!(c.body_timeout, baton_server::DEFAULT_BODY_TIMEOUT);
        let file = "body_timeout = \"5s\"";
        let c = load_with(Some(file), &[], Flags::default()).unwrap();
        assert_eq!(c.body_timeout, Duration::from_secs(5));
        let c = load_with(
            Some(file),
            &[("BATON_BODY_TIMEOUT", "250ms")],
            Flags::default(),
        )
        .unwrap();
        assert_eq!(c.body_timeout, Duration::from_millis(250));
        refused(Some("body_timeout = \"0s\""), &[], "body_timeout in");
        refused(Some("body_timeout = \"0s\""), &[], "must be longer than 0s");
        refused(
            None,
            &[("BATON_BODY_TIMEOUT", "soon")],
            "invalid setting BATON_BODY_TIMEOUT = \"soon\"",
        );
    }

    #[test]
    fn bad_request_and_stream_limits_are_named() {
        refused(
            Some("max_requests = 0"),
            &[],
            "invalid setting max_requests in",
        );
        refused(Some("max_streams = 0"), &[], "max_streams in");
        refused(Some("max_streams = -4"), &[], "max_streams");
        refused(
            None,
            &[("BATON_MAX_REQUESTS", "lots")],
            "invalid setting BATON_MAX_REQUESTS = \"lots\": expected a whole number of at least 1",
        );
        refused(
            None,
            &[("BATON_MAX_STREAMS", "0")],
            "invalid setting BATON_MAX_STREAMS = \"0\"",
        );
        let flags = Flags {
            max_streams: Some("1.5".into()),
            ..Flags::default()
        };
        let e = load_with(None, &[], flags).unwrap_err().to_string();
        assert!(e.contains("invalid setting --max-streams = \"1.5\""), "{e}");
    }

    #[test]
    fn allowed_hosts_and_cors_origins_come_from_flags_env_or_file() {
        let c = load_with(None, &[], Flags::default()).unwrap();
        assert!(c.allowed_hosts.is_empty() && c.cors_origins.is_empty());
        let file = "allowed_hosts = [\"baton.lan\"]\ncors_origins = [\"https://app.example\"]";
        let c = load_with(Some(file), &[], Flags::default()).unwrap();
        assert_eq!(c.allowed_hosts, ["baton.lan"]);
        assert_eq!(c.cors_origins, ["https://app.example"]);
        let env = [
            ("BATON_ALLOWED_HOSTS", "a.lan, 10.0.0.2,[fd00::1]"),
            ("BATON_CORS_ORIGINS", "http://localhost:3000"),
        ];
        let c = load_with(Some(file), &env, Flags::default()).unwrap();
        assert_eq!(c.allowed_hosts, ["a.lan", "10.0.0.2", "[fd00::1]"]);
        assert_eq!(c.cors_origins, ["http://localhost:3000"]);
        let flags = Flags {
            allowed_hosts: vec!["b.lan".into(), "*".into()],
            cors_origins: vec!["*".into()],
            ..Flags::default()
        };
        let c = load_with(Some(file), &env, flags).unwrap();
        assert_eq!(c.allowed_hosts, ["b.lan", "*"]);
        assert_eq!(c.cors_origins, ["*"]);
    }

    #[test]
    fn bad_allowed_hosts_and_cors_origins_are_named() {
        refused(
            Some("allowed_hosts = [\"http://baton.lan\"]"),
            &[],
            "invalid setting allowed_hosts in",
        );
        refused(
            None,
            &[("BATON_ALLOWED_HOSTS", "baton.lan:7700")],
            "invalid setting BATON_ALLOWED_HOSTS: \"baton.lan:7700\": expected a host name or an IP address",
        );
        refused(
            Some("cors_origins = [\"app.example\"]"),
            &[],
            "invalid setting cors_origins in",
        );
        refused(
            None,
            &[("BATON_CORS_ORIGINS", "https://app.example/path")],
            "invalid setting BATON_CORS_ORIGINS: \"https://app.example/path\": expected an origin",
        );
        let flags = Flags {
            cors_origins: vec!["null".into()],
            ..Flags::default()
        };
        let e = load_with(None, &[], flags).unwrap_err().to_string();
        assert!(e.contains("invalid setting --cors-origin: \"null\""), "{e}");
        let flags = Flags {
            allowed_hosts: vec!["bad host".into()],
            ..Flags::default()
        };
        let e = load_with(None, &[], flags).unwrap_err().to_string();
        assert!(
            e.contains("invalid setting --allowed-host: \"bad host\""),
            "{e}"
        );
    }

    #[test]
    fn listen_takes_tcp_addresses_and_unix_sockets_one_or_many() {
        let file = "listen = [\"127.0.0.1:1\", \"unix:///run/baton/baton.sock\"]";
        let c = load_with(Some(file), &[], Flags::default()).unwrap();
        assert_eq!(
            c.listen,
            [
                Listen::Tcp("127.0.0.1:1".parse().unwrap()),
                Listen::Unix("/run/baton/baton.sock".into())
            ]
        );
        let env = [("BATON_LISTEN", "unix://baton.sock, 127.0.0.1:2")];
        let c = load_with(Some(file), &env, Flags::default()).unwrap();
        assert_eq!(
            c.listen,
            [
                Listen::Unix("baton.sock".into()),
                Listen::Tcp("127.0.0.1:2".parse().unwrap())
            ]
        );
        let flags = Flags {
            listen: vec!["unix:///tmp/b.sock".into()],
            ..Flags::default()
        };
        let c = load_with(Some(file), &env, flags).unwrap();
        assert_eq!(c.listen, [Listen::Unix("/tmp/b.sock".into())]);
        refused(Some("listen = \"unix://\""), &[], "names no socket file");
        refused(Some("listen = []"), &[], "it lists no address");
        refused(
            None,
            &[("BATON_LISTEN", "127.0.0.1:1,127.0.0.1:1")],
            "invalid setting BATON_LISTEN: \"127.0.0.1:1\" is listed twice",
        );
        refused(
            None,
            &[("BATON_LISTEN", "127.0.0.1:1,nowhere")],
            "invalid setting BATON_LISTEN = \"nowhere\": expected an address like 127.0.0.1:7700 or unix:///path/baton.sock",
        );
    }

    #[test]
    fn the_socket_group_is_resolved_and_needs_a_socket() {
        let unix = "listen = \"unix:///tmp/b.sock\"\n";
        let c = load_with(
            Some(&format!("{unix}socket_group = \"root\"")),
            &[],
            Flags::default(),
        )
        .unwrap();
        assert_eq!(c.socket_group, Some(0));
        let c = load_with(
            Some(unix),
            &[("BATON_SOCKET_GROUP", "4242")],
            Flags::default(),
        )
        .unwrap();
        assert_eq!(c.socket_group, Some(4242));
        refused(
            Some(&format!("{unix}socket_group = \"no-such-group-here\"")),
            &[],
            "invalid setting socket_group in",
        );
        refused(
            Some(&format!("{unix}socket_group = \"no-such-group-here\"")),
            &[],
            "= \"no-such-group-here\": no such group",
        );
        refused(
            None,
            &[("BATON_SOCKET_GROUP", "root")],
            "invalid setting BATON_SOCKET_GROUP: it applies to a unix:// listen address, and none is set",
        );
    }

    /// A self-signed certificate and its key, written in `dir`.
    fn cert_files(dir: &Path) -> (PathBuf, PathBuf) {
        let made = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&cert, made.cert.pem()).unwrap();
        std::fs::write(&key, made.signing_key.serialize_pem()).unwrap();
        (cert, key)
    }

    #[test]
    fn tls_needs_a_readable_certificate_and_key_both() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = cert_files(dir.path());
        let (c, k) = (cert.display().to_string(), key.display().to_string());
        let both = [
            ("BATON_TLS_CERT", c.as_str()),
            ("BATON_TLS_KEY", k.as_str()),
        ];
        assert!(
            load_with(None, &both, Flags::default())
                .unwrap()
                .tls
                .is_some()
        );
        let file = format!("tls_cert = {c:?}\ntls_key = {k:?}");
        assert!(
            load_with(Some(&file), &[], Flags::default())
                .unwrap()
                .tls
                .is_some()
        );

        refused(
            None,
            &[("BATON_TLS_CERT", &c)],
            "invalid setting BATON_TLS_CERT: tls_key is missing; give both tls_cert and tls_key",
        );
        refused(
            Some(&format!("tls_key = {k:?}")),
            &[],
            "tls_cert is missing",
        );
        let flags = Flags {
            tls_cert: Some(cert.clone()),
            ..Flags::default()
        };
        let e = load_with(None, &[], flags).unwrap_err().to_string();
        assert!(
            e.contains("invalid setting --tls-cert: tls_key is missing"),
            "{e}"
        );

        let gone = dir.path().join("gone.pem").display().to_string();
        refused(
            None,
            &[("BATON_TLS_CERT", &gone), ("BATON_TLS_KEY", &k)],
            &format!("cannot read tls_cert {gone}"),
        );
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate\n").unwrap();
        let junk = junk.display().to_string();
        refused(
            None,
            &[("BATON_TLS_CERT", &junk), ("BATON_TLS_KEY", &k)],
            &format!("invalid tls_cert {junk}: it holds no PEM certificate"),
        );
        refused(
            None,
            &[("BATON_TLS_CERT", &c), ("BATON_TLS_KEY", &junk)],
            &format!("invalid tls_key {junk}: it holds no PEM private key"),
        );
        // A key that is not the certificate's.
        let other = tempfile::tempdir().unwrap();
        let (_, other_key) = cert_files(other.path());
        let other_key = other_key.display().to_string();
        refused(
            None,
            &[("BATON_TLS_CERT", &c), ("BATON_TLS_KEY", &other_key)],
            "cannot be used together",
        );
    }

    #[test]
    fn beyond_loopback_needs_tls_and_auth_or_consent() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = cert_files(dir.path());
        let tls = format!(
            "listen = \"0.0.0.0:7700\"\ntls_cert = {:?}\ntls_key = {:?}\n",
            cert.display().to_string(),
            key.display().to_string()
        );
        let auth = format!(
            "[auth]\ntokens = [{{name = \"ci\", sha256 = \"{}\", role = \"operator\"}}]\n",
            baton_server::hash_token("t")
        );
        assert!(load_with(Some(&format!("{tls}{auth}")), &[], Flags::default()).is_ok());
        refused(
            Some(&tls),
            &[],
            "refusing to listen on 0.0.0.0:7700 without auth: anyone on the network could read and control jobs; configure tls_cert and tls_key, and [auth] tokens, or pass --allow-insecure-remote (BATON_ALLOW_INSECURE_REMOTE=true) to do it anyway",
        );
        refused(
            Some(&format!("listen = \"0.0.0.0:7700\"\n{auth}")),
            &[],
            "refusing to listen on 0.0.0.0:7700 without TLS:",
        );
        refused(
            Some("listen = [\"127.0.0.1:7700\", \"[::]:7701\"]"),
            &[],
            "refusing to listen on [::]:7701 without TLS and auth",
        );
        // A unix socket is no network listener.
        assert!(
            load_with(
                Some("listen = \"unix:///tmp/b.sock\""),
                &[],
                Flags::default()
            )
            .is_ok()
        );
        let remote = [("BATON_LISTEN", "0.0.0.0:7700")];
        for consent in [
            ("BATON_ALLOW_INSECURE_REMOTE", "true"),
            ("BATON_ALLOW_REMOTE", "true"),
        ] {
            assert!(load_with(None, &[remote[0], consent], Flags::default()).is_ok());
        }
        assert!(
            load_with(
                Some("allow_insecure_remote = true"),
                &remote,
                Flags::default()
            )
            .is_ok()
        );
        let flags = Flags {
            allow_insecure_remote: true,
            ..Flags::default()
        };
        assert!(load_with(None, &remote, flags).is_ok());
        refused(
            None,
            &[("BATON_ALLOW_INSECURE_REMOTE", "perhaps")],
            "invalid setting BATON_ALLOW_INSECURE_REMOTE=\"perhaps\"",
        );
    }
}
