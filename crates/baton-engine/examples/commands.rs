//! Command and pipeline jobs (README, "Command and pipeline jobs"):
//! `cargo run -p baton-engine --example commands`.

use std::sync::Arc;
use std::time::Duration;

use baton_engine::{Engine, EventKind, JobSpec, PipelineSpec, StepSpec};
use baton_store::{SqliteOptions, SqliteStore};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join(format!("baton-example-{}", std::process::id()));
    let store = SqliteStore::open(SqliteOptions::new(dir.join("baton.db")))?;
    let engine = Engine::builder().store(Arc::new(store)).build().await?;

    let mut events = engine.subscribe().await?;
    tokio::spawn(async move {
        while let Some(e) = events.next().await {
            if matches!(
                e.kind,
                EventKind::Progress | EventKind::Log | EventKind::Step
            ) {
                println!("{} {}", e.kind, e.data);
            }
        }
    });

    // A command that reports progress, a step, a checkpoint and a result on stdout.
    let script = r#"
echo "::step download"
for i in 1 2 3 4; do echo "::progress $((i * 25))% chunk $i"; done
echo "::progress halfway"   # malformed: kept as a log line, with a warning
echo '::checkpoint {"chunks": 4}'
echo "a log line for $BATON_JOB_ID"
echo '::result {"chunks": 4}'
"#;
    let job = engine
        .submit(JobSpec::shell_command(script).timeout(Duration::from_secs(60)))
        .await?;
    let done = engine.wait(&job.job.id).await?;
    println!("command: {} {:?}", done.state, done.result);

    // A stored pipeline, run by id; each step is a process, checkpointed when done.
    engine
        .put_pipeline(PipelineSpec::new(
            "hello",
            vec![
                StepSpec::new("greet", &["echo", "hello"]),
                StepSpec::new("count", &["echo '::result 3'"])
                    .shell(true)
                    .retries(1),
            ],
        ))
        .await?;
    let job = engine.submit(JobSpec::stored_pipeline("hello")).await?;
    let done = engine.wait(&job.job.id).await?;
    println!("pipeline: {} {:?}", done.state, done.result);

    engine.shutdown(Duration::from_secs(5)).await;
    let _ = std::fs::remove_dir_all(dir);
    Ok(())
}
