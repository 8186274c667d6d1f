//! `baton serve`: the engine with its API on the embedded SQLite store.

use std::sync::Arc;

use anyhow::{Context, Result};
use baton_engine::Engine;
use baton_server::{AppState, Listener, ServerOptions, TlsListener};
use baton_store::{SqliteOptions, SqliteStore, Store};
use baton_store_postgres::{PgOptions, PgStore};
use tokio::net::TcpListener;

use crate::config::{self, Flags, Listen, StoreUrl};

pub async fn run(flags: Flags, open: bool, demo: bool) -> Result<()> {
    let config = config::load(&flags, &|k| std::env::var(k).ok())?;
    // Every listener is bound first, so that a taken address or socket path is
    // refused before the store is touched.
    let mut listeners = Vec::new();
    let mut sockets = Vec::new();
    let mut urls = Vec::new();
    for l in &config.listen {
        match l {
            Listen::Tcp(want) => {
                let tcp = TcpListener::bind(want)
                    .await
                    .with_context(|| format!("cannot listen on {want}"))?;
                let addr = tcp.local_addr()?;
                if !addr.ip().is_loopback() && (config.tls.is_none() || !config.auth.enabled()) {
                    tracing::warn!(%addr, "listening beyond this machine without TLS or without auth: whoever can reach it may read or control your jobs");
                }
                match &config.tls {
                    Some(tls) => {
                        urls.push(format!("https://{addr}"));
                        listeners.push(Listener::Tls(TlsListener::new(tcp, tls)?));
                    }
                    None => {
                        urls.push(format!("http://{addr}"));
                        listeners.push(Listener::Tcp(tcp));
                    }
                }
            }
            Listen::Unix(path) => {
                let (unix, file) = baton_server::bind_unix(path, config.socket_group)?;
                urls.push(format!("unix://{}", path.display()));
                listeners.push(Listener::Unix(unix));
                sockets.push(file);
            }
        }
    }
    let url = urls[0].clone();
    let (store, shown, data_dir): (Arc<dyn Store>, String, Option<std::path::PathBuf>) =
        match &config.store {
            StoreUrl::Sqlite(path) => {
                let store =
                    SqliteStore::open(SqliteOptions::new(path).durability(config.durability))
                        .map_err(|e| anyhow::anyhow!("{e}"))?;
                store.set_holder(&url).map_err(|e| anyhow::anyhow!("{e}"))?;
                let dir = path
                    .parent()
                    .filter(|p| !p.as_os_str().is_empty())
                    .map(|p| p.to_path_buf())
                    .unwrap_or_else(|| ".".into());
                (Arc::new(store), path.display().to_string(), Some(dir))
            }
            StoreUrl::Postgres(url) => {
                let store = PgStore::open(PgOptions::new(url))
                    .await
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                let shown = store.shown().to_owned();
                (Arc::new(store), shown, None)
            }
        };
    // The disk watched is the SQLite database's; a PostgreSQL store's disk is the
    // database server's, which this machine cannot see.
    let resources = baton_engine::ResourceOptions {
        disk: data_dir,
        ..config.resources.clone()
    };
    let mut builder = Engine::builder()
        .store(store)
        .url(&url)
        .resources(resources)
        .security(config.security.clone())
        .heartbeat(config.heartbeat)
        .retention(config.retention.clone());
    for (name, concurrency) in &config.queues {
        builder = builder.queue(name, *concurrency);
    }
    for name in &config.heavy_queues {
        builder = builder.heavy(name);
    }
    for limit in &config.concurrency_limits {
        builder = builder.concurrency_limit(limit.clone());
    }
    for dir in &config.pipelines_dirs {
        builder = builder.pipelines_dir(dir);
    }
    if let Some(n) = config.max_log_lines {
        builder = builder.max_log_lines(n);
    }
    builder = builder.remote_kinds(config.remote_kinds.iter().cloned());
    builder = builder.usage(config.usage.clone());
    for (queue, limits) in &config.queue_limits {
        builder = builder.queue_limits(queue, limits.clone());
    }
    // Recovery of jobs left by a crash happens here, before anything is served, so
    // /readyz answers only once it is done.
    let engine = builder.build().await?;
    let options = ServerOptions {
        auth: config.auth.clone(),
        cors_origins: config.cors_origins.clone(),
        allowed_hosts: config.allowed_hosts.clone(),
        body_limit: config.body_limit,
        submit_rate: config.submit_rate,
        submit_burst: config.submit_burst,
        max_requests: config.max_requests,
        max_streams: config.max_streams,
        body_timeout: config.body_timeout,
        bulk_limit: config.bulk_limit,
        stalled_after: config.stalled_after,
        ..ServerOptions::default()
    };
    if demo {
        crate::demo::load(&engine).await?;
    }
    let state = AppState::new(engine.clone(), &options).await?;
    let api = urls
        .iter()
        .find(|u| u.starts_with("http"))
        .map(|u| format!("; API {u}/api/jobs, events {u}/api/events"))
        .unwrap_or_default();
    say(format_args!(
        "baton {} serving on {} (store {}, durability {:?}){api}",
        env!("CARGO_PKG_VERSION"),
        urls.join(" and "),
        shown,
        config.durability
    ));
    if demo {
        say(format_args!(
            "demo data loaded: pipeline demo-etl, schedule demo-every-minute, workflow demo-workflow, job demo-fails (all named demo-... and labelled demo=true)"
        ));
    }
    if open {
        open_dashboard(&urls);
    }
    baton_server::serve_all(listeners, state, &options, shutdown_signal()).await?;
    // The socket files go as soon as nothing answers on them.
    drop(sockets);
    println!(
        "shutting down: letting running jobs finish (up to {:?})",
        config.shutdown_timeout
    );
    engine.shutdown(config.shutdown_timeout).await;
    say(format_args!("stopped"));
    Ok(())
}

/// `--open`: the dashboard of the first TCP listener in the person's browser
/// (`$BROWSER`, else the desktop's opener). A browser that cannot be started is said,
/// with the address to open by hand; serving goes on.
fn open_dashboard(urls: &[String]) {
    let Some(url) = urls.iter().find(|u| u.starts_with("http")) else {
        eprintln!(
            "warning: --open needs a TCP listener; the dashboard is not served on a unix socket to a browser"
        );
        return;
    };
    let url = format!("{url}/");
    let opener = std::env::var("BROWSER")
        .ok()
        .filter(|b| !b.trim().is_empty())
        .unwrap_or_else(|| {
            if cfg!(target_os = "macos") {
                "open".into()
            } else {
                "xdg-open".into()
            }
        });
    match std::process::Command::new(&opener)
        .arg(&url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
    {
        Ok(mut child) => {
            // Reaped in the background: an opener exits at once or runs on.
            std::thread::spawn(move || child.wait());
        }
        Err(e) => eprintln!("warning: cannot open a browser with {opener:?} ({e}); open {url}"),
    }
}

/// Prints a line; a closed stdout (a daemon's reader went away) is not an error.
fn say(line: std::fmt::Arguments<'_>) {
    use std::io::Write as _;
    let mut out = std::io::stdout();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM");
            std::future::pending::<()>().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
