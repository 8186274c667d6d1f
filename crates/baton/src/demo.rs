//! `baton serve --demo`: data for a newcomer to see every page of the dashboard alive
//! within a minute. Everything it makes is named `demo-...` and labelled `demo=true`;
//! loading it again replaces the pipeline and the schedule and keeps what exists.

use anyhow::{Context, Result};
use baton_engine::Engine;
use serde_json::json;

/// A step that reports progress, saves a checkpoint and takes `secs` seconds.
fn step(name: &str, secs: u32) -> serde_json::Value {
    let script = format!(
        "echo ::step {name}; i=0; while [ $i -lt {secs} ]; do i=$((i+1)); \
         echo \"::progress $((i*100/{secs}))% {name} $i/{secs}\"; echo \"{name}: item $i\"; \
         echo \"::checkpoint {{\\\"{name}\\\": $i}}\"; sleep 1; done"
    );
    json!({"name": name, "command": [script], "shell": true})
}

pub async fn load(engine: &Engine) -> Result<()> {
    let demo = json!({"demo": "true"});
    engine
        .put_pipeline(serde_json::from_value(json!({
            "id": "demo-etl",
            "description": "demo data: three steps that report progress and checkpoint",
            "steps": [step("extract", 8), step("transform", 6), step("load", 4)],
            "labels": demo,
        }))?)
        .await
        .context("the demo pipeline")?;
    engine
        .put_schedule(serde_json::from_value(json!({
            "id": "demo-every-minute",
            "job": {"kind": "pipeline", "pipeline": "demo-etl", "labels": demo},
            "trigger": {"type": "interval", "every": "1m"},
        }))?)
        .await
        .context("the demo schedule")?;
    let sleeper = |secs: u32| {
        json!({"kind": "command", "shell": true, "labels": demo, "command": [format!(
            "i=0; while [ $i -lt {secs} ]; do i=$((i+1)); echo \"::progress $((i*100/{secs}))%\"; sleep 1; done"
        )]})
    };
    let mut report = sleeper(3);
    report["depends_on"] = json!(["fetch", "enrich"]);
    let mut enrich = sleeper(6);
    enrich["depends_on"] = json!(["fetch"]);
    let mut parse = sleeper(4);
    parse["depends_on"] = json!(["fetch"]);
    let mut publish = sleeper(2);
    publish["depends_on"] = json!(["parse", "report"]);
    engine
        .submit_workflow(serde_json::from_value(json!({
            "id": "demo-workflow",
            "jobs": {"fetch": sleeper(4), "enrich": enrich, "parse": parse, "report": report, "publish": publish},
        }))?)
        .await
        .context("the demo workflow")?;
    engine
        .submit(serde_json::from_value(json!({
            "id": "demo-fails", "kind": "command", "labels": demo, "max_attempts": 2,
            "backoff": {"initial": "5s", "max": "5s"},
            "command": ["echo 'connecting to the demo database'; echo 'error: connection refused' >&2; exit 3"],
            "shell": true,
        }))?)
        .await
        .context("the demo job that fails")?;
    engine
        .submit(serde_json::from_value(json!({
            "id": "demo-pipeline-now", "kind": "pipeline", "pipeline": "demo-etl", "labels": demo,
        }))?)
        .await
        .context("the demo pipeline's first run")?;
    Ok(())
}
