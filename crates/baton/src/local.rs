//! The synchronous fallback: `submit --wait` and `run --wait` with no server reachable
//! run the job in this process on the embedded store, with the same progress display.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Result, anyhow};
use baton_api::{EventKind, JobSpec, State};
use baton_engine::Engine;
use baton_store::{SqliteOptions, SqliteStore};

use crate::client::{self, exit};
use crate::config::{self, StoreUrl};

pub async fn run(spec: JobSpec, json: bool) -> Result<u8> {
    let config = config::load(&config::Flags::default(), &|k| std::env::var(k).ok())?;
    let path = match &config.store {
        StoreUrl::Sqlite(path) => path,
        StoreUrl::Postgres(_) => {
            return Err(anyhow!(
                "no server answered; a job runs here without one only on the embedded SQLite store, and the store is PostgreSQL: start `baton serve`"
            ));
        }
    };
    let store = SqliteStore::open(SqliteOptions::new(path).durability(config.durability))
        .map_err(|e| anyhow!("no server answered, and the embedded store cannot be used: {e}"))?;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map(|p| p.to_path_buf())
        .unwrap_or_else(|| ".".into());
    let mut builder =
        Engine::builder()
            .store(Arc::new(store))
            .resources(baton_engine::ResourceOptions {
                disk: Some(dir),
                ..config.resources.clone()
            });
    for (name, n) in &config.queues {
        builder = builder.queue(name, *n);
    }
    for name in &config.heavy_queues {
        builder = builder.heavy(name);
    }
    for dir in &config.pipelines_dirs {
        builder = builder.pipelines_dir(dir);
    }
    let engine = builder.build().await?;
    let mut events = engine.subscribe().await?;
    let submitted = engine.submit(spec).await?;
    let id = submitted.job.id.clone();
    if !json {
        eprintln!(
            "no server answered: running {id} here on {}",
            path.display()
        );
    }
    let mut drawn = false;
    let bars = client::draws_bars();
    loop {
        let Some(e) = events.next().await else { break };
        if e.job_id.as_deref() != Some(id.as_str()) {
            continue;
        }
        if !json {
            if e.kind == EventKind::Log {
                if drawn {
                    eprintln!();
                    drawn = false;
                }
                println!("{}", e.data["line"].as_str().unwrap_or(""));
            } else if bars && let Some(line) = client::progress_line(&e) {
                eprint!("\r\x1b[2K{line}");
                let _ = std::io::stderr().flush();
                drawn = true;
            }
        }
        if e.kind.is_terminal() {
            break;
        }
    }
    if drawn {
        eprintln!();
    }
    let job = engine.get(&id).await?;
    engine.shutdown(Duration::from_secs(10)).await;
    if json {
        println!("{}", serde_json::to_string(&job)?);
    } else {
        client::print_job(&job);
    }
    Ok(match job.state {
        State::Completed => exit::OK,
        State::Failed => exit::FAILED,
        _ => exit::CANCELLED,
    })
}
