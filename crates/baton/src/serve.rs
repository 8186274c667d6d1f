//! `baton serve`: the engine with its API on the embedded SQLite store.

use std::sync::Arc;

use anyhow::{Context, Result};
use baton_engine::Engine;
use baton_server::{AppState, ServerOptions};
use baton_store::{SqliteOptions, SqliteStore};
use tokio::net::TcpListener;

use crate::config::{self, Flags, StoreUrl};

pub async fn run(flags: Flags) -> Result<()> {
    let config = config::load(&flags, &|k| std::env::var(k).ok())?;
    let StoreUrl::Sqlite(path) = &config.store;
    let store = SqliteStore::open(SqliteOptions::new(path).durability(config.durability))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let addr = listener.local_addr()?;
    let url = format!("http://{addr}");
    store.set_holder(&url).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut builder = Engine::builder()
        .store(Arc::new(store))
        .url(&url)
        .security(config.security.clone());
    for (name, concurrency) in &config.queues {
        builder = builder.queue(name, *concurrency);
    }
    for dir in &config.pipelines_dirs {
        builder = builder.pipelines_dir(dir);
    }
    if let Some(n) = config.max_log_lines {
        builder = builder.max_log_lines(n);
    }
    // Recovery of jobs left by a crash happens here, before anything is served, so
    // /readyz answers only once it is done.
    let engine = builder.build().await?;
    let options = ServerOptions {
        auth: config.auth.clone(),
        cors_origins: config.cors_origins.clone(),
        body_limit: config.body_limit,
        submit_rate: config.submit_rate,
        submit_burst: config.submit_burst,
        max_requests: config.max_requests,
        max_streams: config.max_streams,
        body_timeout: config.body_timeout,
        data_dir: Some(
            path.parent()
                .filter(|p| !p.as_os_str().is_empty())
                .map(|p| p.to_path_buf())
                .unwrap_or_else(|| ".".into()),
        ),
    };
    if !addr.ip().is_loopback() && !options.auth.enabled() {
        tracing::warn!(%addr, "listening beyond this machine without auth: anyone who can reach it controls your jobs");
    }
    let state = AppState::new(engine.clone(), &options).await?;
    say(format_args!(
        "baton {} serving on {url} (store {}, durability {:?}); API {url}/api/jobs, events {url}/api/events",
        env!("CARGO_PKG_VERSION"),
        path.display(),
        config.durability
    ));
    baton_server::serve(listener, state, &options, shutdown_signal()).await?;
    println!(
        "shutting down: letting running jobs finish (up to {:?})",
        config.shutdown_timeout
    );
    engine.shutdown(config.shutdown_timeout).await;
    say(format_args!("stopped"));
    Ok(())
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
