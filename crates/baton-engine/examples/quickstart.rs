//! The README's example: `cargo run -p baton-engine --example quickstart`.

use std::sync::Arc;
use std::time::Duration;

use baton_engine::{Engine, JobError, JobSpec};
use baton_store::{SqliteOptions, SqliteStore};
use serde_json::json;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let store = SqliteStore::open(SqliteOptions::new("baton.db"))?;
    let engine = Engine::builder()
        .store(Arc::new(store))
        .queue("default", 8)
        .handler("scrape", |ctx, payload| async move {
            // Resume where the last attempt stopped.
            let start = ctx
                .last_checkpoint()
                .and_then(|c| c["page"].as_u64())
                .unwrap_or(0);
            for page in start..10 {
                ctx.step(format!("page {page}")).await?; // pause point
                ctx.progress(page as f64 / 10.0, "fetching").await?;
                if payload["fail"] == true {
                    return Err(JobError::new("site is down")); // retried with backoff
                }
                ctx.checkpoint(json!({"page": page + 1})).await?; // durable on return
            }
            Ok(json!({"pages": 10}))
        })
        .build()
        .await?; // recovers jobs left running by a crash first

    let job = engine
        .submit(
            JobSpec::new("scrape")
                .payload(json!({"site": "example.org"}))
                .priority(5)
                .max_attempts(3)
                .backoff(Duration::from_secs(1), Duration::from_secs(60))
                .label("source", "alfabeta"),
        )
        .await?; // returns once the job is durable

    let mut events = engine.subscribe().await?; // live events, no polling
    tokio::spawn(async move {
        while let Some(e) = events.next().await {
            println!("{} {} {}", e.id, e.kind, e.data);
        }
    });

    engine.pause(&job.job.id).await.ok(); // the handler blocks at its next pause point
    engine.resume(&job.job.id).await.ok();
    let done = engine.wait(&job.job.id).await?;
    println!("{:?} {:?}", done.state, done.result);
    engine.shutdown(Duration::from_secs(10)).await;
    Ok(())
}
