//! `baton serve` configuration: `baton.toml`, then `BATON_*` variables, then flags.
//! Every setting is checked at start; a bad one is refused with its name.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use baton_server::{AuthConfig, TokenEntry};
use baton_store::Durability;
use serde::Deserialize;

/// The file as written; every key optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<String>,
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
    /// The longest a request body may take to arrive.
    pub body_timeout: Option<String>,
    pub shutdown_timeout: Option<String>,
    /// Folders of pipeline definitions (one TOML file each), loaded at start.
    pub pipelines_dirs: Option<Vec<PathBuf>>,
    /// The most log lines kept per job.
    pub max_log_lines: Option<u64>,
    /// Queue name to concurrency.
    pub queues: Option<BTreeMap<String, usize>>,
    pub auth: Option<FileAuth>,
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
    pub listen: Option<String>,
    pub store: Option<String>,
    pub durability: Option<String>,
    pub allow_remote: bool,
    pub max_requests: Option<String>,
    pub max_streams: Option<String>,
    /// `--allowed-host`, each given.
    pub allowed_hosts: Vec<String>,
    /// `--cors-origin`, each given.
    pub cors_origins: Vec<String>,
}

/// The checked configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub store: StoreUrl,
    pub durability: Durability,
    pub cors_origins: Vec<String>,
    pub allowed_hosts: Vec<String>,
    pub body_limit: usize,
    pub submit_rate: u32,
    pub submit_burst: u32,
    pub max_requests: usize,
    pub max_streams: usize,
    pub body_timeout: Duration,
    pub shutdown_timeout: Duration,
    pub queues: BTreeMap<String, usize>,
    pub auth: AuthConfig,
    pub pipelines_dirs: Vec<PathBuf>,
    pub max_log_lines: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreUrl {
    Sqlite(PathBuf),
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
            return Err(format!(
                "{url:?}: the PostgreSQL store is not available in this version; use sqlite://"
            ));
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

    let listen_text = flags
        .listen
        .clone()
        .or_else(|| env("BATON_LISTEN"))
        .or(file.listen.clone())
        .unwrap_or_else(|| "127.0.0.1:7700".into());
    let listen: SocketAddr = listen_text.parse().map_err(|_| {
        anyhow::anyhow!(
            "invalid setting listen = {listen_text:?}: expected an address like 127.0.0.1:7700"
        )
    })?;
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
    let allow_remote = flags.allow_remote
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
    let body_timeout = match env("BATON_BODY_TIMEOUT")
        .map(|v| (v, "BATON_BODY_TIMEOUT".to_owned()))
        .or_else(|| {
            file.body_timeout
                .clone()
                .map(|v| (v, source("body_timeout")))
        }) {
        None => baton_server::DEFAULT_BODY_TIMEOUT,
        Some((text, named)) => match baton_core::duration::parse(&text) {
            Ok(d) if !d.is_zero() => d,
            Ok(_) => bail!("invalid setting {named} = {text:?}: must be longer than 0s"),
            Err(m) => bail!("invalid setting {named} = {text:?}: {m}"),
        },
    };
    let shutdown_timeout = match file.shutdown_timeout.as_deref() {
        None => Duration::from_secs(30),
        Some(t) => baton_core::duration::parse(t)
            .map_err(|m| anyhow::anyhow!("invalid setting {}: {m}", source("shutdown_timeout")))?,
    };
    let queues = file.queues.clone().unwrap_or_default();
    for (name, n) in &queues {
        if *n == 0 {
            bail!(
                "invalid setting {}: queue {name:?} needs a concurrency of at least 1",
                source("queues")
            );
        }
    }
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
        auth.tokens = a.tokens;
        auth.jwt_secret = a.jwt_secret;
    }
    if let Some(secret) = env("BATON_JWT_SECRET") {
        auth.jwt_secret = Some(secret);
    }
    if auth.jwt_secret.as_deref().is_some_and(|s| s.len() < 16) {
        bail!("invalid setting jwt_secret: it must be at least 16 characters long");
    }
    if !listen.ip().is_loopback() && !auth.enabled() && !allow_remote {
        bail!(
            "refusing to listen on {listen} without auth: anyone on the network could control jobs; configure [auth] tokens, or pass --allow-remote (BATON_ALLOW_REMOTE=true) to do it anyway"
        );
    }
    Ok(Config {
        listen,
        store,
        durability,
        cors_origins,
        allowed_hosts,
        body_limit: file.body_limit_bytes.unwrap_or(2 * 1024 * 1024),
        submit_rate: file.submit_rate.unwrap_or(0),
        submit_burst: file.submit_burst.unwrap_or(100),
        max_requests,
        max_streams,
        body_timeout,
        shutdown_timeout,
        queues,
        auth,
        pipelines_dirs: file.pipelines_dirs.unwrap_or_default(),
        max_log_lines: file.max_log_lines,
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
mod tests {
    use super::*;

    fn load_with(file: Option<&str>, env: &[(&str, &str)], flags: Flags) -> Result<Config> {
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
        assert_eq!(c.listen.to_string(), "127.0.0.1:7700");
        assert_eq!(c.store, StoreUrl::Sqlite("baton.db".into()));
        assert_eq!(c.durability, Durability::Full);
    }

    #[test]
    fn flags_beat_env_beat_file() {
        let file = "listen = \"127.0.0.1:1\"\nstore = \"sqlite:///tmp/a.db\"";
        let c = load_with(Some(file), &[], Flags::default()).unwrap();
        assert_eq!(c.listen.port(), 1);
        let c = load_with(
            Some(file),
            &[("BATON_LISTEN", "127.0.0.1:2")],
            Flags::default(),
        )
        .unwrap();
        assert_eq!(c.listen.port(), 2);
        let flags = Flags {
            listen: Some("127.0.0.1:3".into()),
            ..Flags::default()
        };
        let c = load_with(Some(file), &[("BATON_LISTEN", "127.0.0.1:2")], flags).unwrap();
        assert_eq!(c.listen.port(), 3);
        assert_eq!(c.store, StoreUrl::Sqlite("/tmp/a.db".into()));
    }

    fn refused(file: Option<&str>, env: &[(&str, &str)], part: &str) {
        let e = load_with(file, env, Flags::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains(part), "{e} lacks {part}");
    }

    #[test]
    fn bad_settings_are_named() {
        refused(
            Some("listen = \"nowhere\""),
            &[],
            "invalid setting listen = \"nowhere\"",
        );
        refused(Some("colour = \"red\""), &[], "unknown field `colour`");
        refused(
            Some("store = \"redis://x\""),
            &[],
            "invalid setting store = \"redis://x\" is not a store URL",
        );
        refused(
            None,
            &[("BATON_STORE", "postgres://db")],
            "PostgreSQL store is not available",
        );
        refused(
            None,
            &[("BATON_DURABILITY", "maybe")],
            "invalid durability \"maybe\"",
        );
        refused(Some("shutdown_timeout = \"soon\""), &[], "shutdown_timeout");
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
            "refusing to listen on 0.0.0.0:7700 without auth",
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
    fn remote_binds_need_auth_or_consent() {
        let c = load_with(
            None,
            &[
                ("BATON_LISTEN", "0.0.0.0:7700"),
                ("BATON_ALLOW_REMOTE", "true"),
            ],
            Flags::default(),
        );
        assert!(c.is_ok());
        let file = format!(
            "listen = \"0.0.0.0:7700\"\n[auth]\ntokens = [{{name = \"ci\", sha256 = \"{}\", role = \"operator\"}}]",
            baton_server::hash_token("t")
        );
        assert!(load_with(Some(&file), &[], Flags::default()).is_ok());
    }
}
