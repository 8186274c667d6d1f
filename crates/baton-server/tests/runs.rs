//! What a job runs, as the job object shows it, and its attempts
//! (`GET /api/jobs/{id}/attempts`).

mod common;

use axum::http::{Method, StatusCode};
use common::{Harness, harness};
use serde_json::{Value, json};

const PLAIN: &str = "plain-value-7c41d";
const STEP_VALUE: &str = "step-value-90b2e";

async fn submit(h: &Harness, spec: Value) -> Value {
    let (status, job) = h.call(Method::POST, "/api/jobs", Some(spec)).await;
    assert_eq!(status, StatusCode::CREATED, "{job}");
    job
}

async fn attempts(h: &Harness, id: &str) -> Vec<Value> {
    let (status, body) = h
        .call(Method::GET, &format!("/api/jobs/{id}/attempts"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["attempts"].as_array().expect("attempts").clone()
}

#[tokio::test]
async fn each_kind_of_job_shows_what_it_runs_and_never_an_env_value() {
    let h = harness().await;
    let command = submit(
        &h,
        json!({"kind": "command", "id": "cmd", "command": ["sh", "-c", "echo $TOKEN_A >/dev/null"],
               "env": {"TOKEN_B": PLAIN, "TOKEN_A": PLAIN}, "cwd": "/tmp", "timeout": "90s",
               "grace": "3s", "backoff": {"initial": "2s", "max": "1m"}}),
    )
    .await;
    let inline = submit(
        &h,
        json!({"kind": "pipeline", "id": "inline",
               "steps": [{"name": "fetch", "command": ["true"], "env": {"STEP_KEY": STEP_VALUE}, "timeout": "10m"},
                         {"name": "load", "command": ["echo loaded"], "shell": true, "retries": 2}]}),
    )
    .await;
    let (status, _) = h
        .call(
            Method::PUT,
            "/api/pipelines/nightly",
            Some(json!({"steps": [{"name": "a", "command": ["true"]}]})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let stored = submit(
        &h,
        json!({"kind": "pipeline", "id": "stored", "pipeline": "nightly"}),
    )
    .await;
    let handler = submit(
        &h,
        json!({"kind": "echo", "id": "handler", "payload": {"n": 1}}),
    )
    .await;

    // The submit answer already shows it.
    assert_eq!(
        command["command"],
        json!(["sh", "-c", "echo $TOKEN_A >/dev/null"])
    );
    for id in ["cmd", "inline", "stored", "handler"] {
        h.finished(id).await;
    }
    let (_, command) = h.call(Method::GET, "/api/jobs/cmd", None).await;
    assert_eq!(
        command["command"],
        json!(["sh", "-c", "echo $TOKEN_A >/dev/null"])
    );
    assert_eq!(command["shell"], false);
    assert_eq!(command["cwd"], "/tmp");
    assert_eq!(
        command["env"],
        json!(["TOKEN_A", "TOKEN_B"]),
        "names, sorted"
    );
    assert_eq!(
        (&command["timeout"], &command["grace"], &command["backoff"]),
        (
            &json!("90s"),
            &json!("3s"),
            &json!({"initial": "2s", "max": "1m"})
        )
    );
    assert_eq!(
        (&command["steps"], &command["pipeline"]),
        (&Value::Null, &Value::Null)
    );

    let (_, inline_now) = h.call(Method::GET, "/api/jobs/inline", None).await;
    assert_eq!(inline_now["steps"], inline["steps"]);
    assert_eq!(
        inline_now["steps"],
        json!([
            {"name": "fetch", "command": ["true"], "shell": false, "cwd": null, "env": ["STEP_KEY"], "timeout": "10m", "retries": null},
            {"name": "load", "command": ["echo loaded"], "shell": true, "cwd": null, "env": null, "timeout": null, "retries": 2}
        ])
    );
    assert_eq!(
        (&inline_now["command"], &inline_now["pipeline"]),
        (&Value::Null, &Value::Null)
    );

    // A stored pipeline's job: its id and the steps it was given when submitted.
    let (_, stored_now) = h.call(Method::GET, "/api/jobs/stored", None).await;
    assert_eq!(stored_now["pipeline"], "nightly");
    assert_eq!(stored_now["steps"][0]["name"], "a");
    assert_eq!(stored["pipeline"], "nightly");

    // A handler job runs no program, but has a grace period and a backoff.
    let (_, handler_now) = h.call(Method::GET, "/api/jobs/handler", None).await;
    for field in [
        "command", "shell", "cwd", "env", "steps", "pipeline", "timeout",
    ] {
        assert_eq!(handler_now[field], Value::Null, "{field}: {handler_now}");
    }
    assert_eq!(handler_now["grace"], "10s");
    assert_eq!(
        handler_now["backoff"],
        json!({"initial": "1s", "max": "5m"})
    );
    assert_eq!(handler["kind"], "echo");

    // No answer about these jobs carries an env value.
    let answers = [
        h.raw(Method::GET, "/api/jobs/cmd", None, &[]).await.1,
        h.raw(Method::GET, "/api/jobs/inline", None, &[]).await.1,
        h.raw(Method::GET, "/api/jobs?limit=100", None, &[]).await.1,
        h.raw(Method::GET, "/api/jobs?kind=command", None, &[])
            .await
            .1,
        h.raw(Method::GET, "/api/jobs/cmd/events", None, &[])
            .await
            .1,
        h.raw(Method::GET, "/api/jobs/inline/events", None, &[])
            .await
            .1,
        h.raw(Method::GET, "/api/jobs/cmd/attempts", None, &[])
            .await
            .1,
        h.raw(Method::GET, "/api/jobs/cmd/wait?timeout=1s", None, &[])
            .await
            .1,
        h.raw(
            Method::POST,
            "/api/jobs/status",
            Some(json!({"ids": ["cmd", "inline"]}).to_string()),
            &[],
        )
        .await
        .1,
        // Resubmitting answers the stored job.
        h.raw(
            Method::POST,
            "/api/jobs",
            Some(
                json!({"kind": "command", "id": "cmd", "command": ["true"], "env": {"X": PLAIN}})
                    .to_string(),
            ),
            &[],
        )
        .await
        .1,
    ];
    for body in answers {
        assert!(!body.contains(PLAIN), "an env value leaked: {body}");
        assert!(
            !body.contains(STEP_VALUE),
            "a step's env value leaked: {body}"
        );
    }
    // The document describes the new fields.
    let (_, doc) = h.call(Method::GET, "/api/openapi.json", None).await;
    let runs = &doc["components"]["schemas"]["Runs"]["properties"];
    for field in [
        "command", "shell", "cwd", "env", "steps", "pipeline", "timeout", "grace", "backoff",
    ] {
        assert!(
            runs.get(field).is_some(),
            "the Runs schema lacks {field}: {runs}"
        );
    }
    assert!(
        doc["components"]["schemas"]["Job"]
            .to_string()
            .contains("#/components/schemas/Runs"),
        "the Job schema does not include Runs"
    );
}

#[tokio::test]
async fn attempts_after_retries_show_exit_codes_signals_and_servers() {
    let h = harness().await;
    let server = h.engine.server().id.clone();
    submit(
        &h,
        json!({"kind": "command", "id": "exits", "command": ["sh", "-c", "echo nope >&2; exit 3"],
               "max_attempts": 2, "backoff": {"initial": "1ms", "max": "1ms"}}),
    )
    .await;
    let job = h.finished("exits").await;
    assert_eq!(job["state"], "failed");
    let a = attempts(&h, "exits").await;
    assert_eq!(a.len(), 2, "{a:?}");
    for (i, attempt) in a.iter().enumerate() {
        assert_eq!(attempt["attempt"], i + 1);
        assert_eq!(attempt["outcome"], "failed");
        assert_eq!(attempt["exit_code"], 3);
        assert_eq!(attempt["signal"], Value::Null);
        assert_eq!(attempt["error"]["code"], "exit_code");
        assert_eq!(attempt["server_id"], server.as_str());
        assert_eq!(attempt["resumed_from"], Value::Null);
        assert!(
            attempt["finished_at"].as_str().unwrap() >= attempt["started_at"].as_str().unwrap()
        );
    }
    assert_eq!(
        (&a[0]["retried"], &a[1]["retried"]),
        (&json!(true), &json!(false))
    );

    // A manual retry is one more attempt, numbered on.
    let (status, _) = h.call(Method::POST, "/api/jobs/exits/retry", None).await;
    assert_eq!(status, StatusCode::OK);
    h.finished("exits").await;
    h.wait_state("exits", "failed").await;
    let a = attempts(&h, "exits").await;
    assert_eq!(
        a.iter()
            .map(|a| a["attempt"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [1, 2, 3, 4]
    );

    // Killed by a signal; then one that completes: exit code 0.
    submit(&h, json!({"kind": "command", "id": "killed", "command": ["sh", "-c", "kill -9 $$"], "max_attempts": 1})).await;
    h.finished("killed").await;
    let a = attempts(&h, "killed").await;
    assert_eq!(
        (&a[0]["signal"], &a[0]["exit_code"], &a[0]["outcome"]),
        (&json!("SIGKILL"), &Value::Null, &json!("failed"))
    );
    submit(
        &h,
        json!({"kind": "command", "id": "fine", "command": ["true"]}),
    )
    .await;
    h.finished("fine").await;
    let a = attempts(&h, "fine").await;
    assert_eq!(
        (&a[0]["outcome"], &a[0]["exit_code"], &a[0]["error"]),
        (&json!("completed"), &json!(0), &Value::Null)
    );

    // A handler job has attempts but no exit code; a job not started has none.
    submit(&h, json!({"kind": "echo", "id": "echoed"})).await;
    h.finished("echoed").await;
    let a = attempts(&h, "echoed").await;
    assert_eq!(
        (&a[0]["outcome"], &a[0]["exit_code"]),
        (&json!("completed"), &Value::Null)
    );
    submit(&h, json!({"kind": "echo", "id": "later", "delay": "1h"})).await;
    assert!(attempts(&h, "later").await.is_empty());

    // A running attempt has no outcome yet; a stop ends it as cancelled.
    submit(&h, json!({"kind": "looper", "id": "loop"})).await;
    h.wait_state("loop", "running").await;
    let a = attempts(&h, "loop").await;
    assert_eq!(
        (&a[0]["outcome"], &a[0]["finished_at"]),
        (&Value::Null, &Value::Null)
    );
    let (status, _) = h
        .call(Method::POST, "/api/jobs/loop/stop?force=true", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    h.wait_state("loop", "cancelled").await;
    let a = attempts(&h, "loop").await;
    assert_eq!(a[0]["outcome"], "cancelled");
    assert_eq!(a[0]["error"]["message"], "force stopped by a user");
}

#[tokio::test]
async fn attempts_of_an_unknown_or_invalid_job_are_refused() {
    let h = harness().await;
    let (status, e) = h.call(Method::GET, "/api/jobs/nope/attempts", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{e}");
    assert_eq!(e["error"]["code"], "not_found");
    let (status, e) = h.call(Method::GET, "/api/jobs/a%20b/attempts", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{e}");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("invalid job id"),
        "{e}"
    );
}

#[tokio::test]
async fn throughput_counts_completed_and_failed_jobs_per_bucket() {
    let h = harness().await;
    for i in 0..4 {
        submit(&h, json!({"kind": "echo", "id": format!("ok-{i}")})).await;
    }
    submit(&h, json!({"kind": "fail", "id": "bad"})).await;
    for id in ["ok-0", "ok-1", "ok-2", "ok-3", "bad"] {
        h.finished(id).await;
    }
    // The metrics follow the stream a moment behind the store.
    let mut rates = Value::Null;
    for _ in 0..200 {
        let (status, body) = h.call(Method::GET, "/api/throughput", None).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        rates = body;
        let sum = |k: &str| {
            rates[k]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap())
                .sum::<u64>()
        };
        if sum("completed") == 4 && sum("failed") == 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(
        (rates["window"].as_str(), rates["bucket_seconds"].as_u64()),
        (Some("15m"), Some(1))
    );
    assert_eq!(rates["completed"].as_array().unwrap().len(), 900);
    let sum = |v: &Value| {
        v.as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .sum::<u64>()
    };
    assert_eq!(
        (sum(&rates["completed"]), sum(&rates["failed"])),
        (4, 1),
        "{rates}"
    );
    let (_, day) = h.call(Method::GET, "/api/throughput?window=1d", None).await;
    assert_eq!(
        (
            day["bucket_seconds"].as_u64(),
            day["completed"].as_array().unwrap().len()
        ),
        (Some(60), 1440)
    );
    assert_eq!(sum(&day["completed"]), 4);
    let (status, e) = h.call(Method::GET, "/api/throughput?window=2h", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("15m, 1h or 1d"),
        "{e}"
    );
}

#[tokio::test]
async fn jobs_made_by_a_schedule_or_a_batch_show_what_they_run_in_the_answer() {
    let h = harness().await;
    let (status, _) = h
        .call(
            Method::POST,
            "/api/schedules",
            Some(json!({"id": "nightly", "trigger": {"type": "manual"},
                "job": {"kind": "command", "command": ["echo", "hi"], "env": {"K": PLAIN}, "timeout": "5m"}})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, fired) = h
        .call(Method::POST, "/api/schedules/nightly/trigger", None)
        .await;
    assert_eq!(status, StatusCode::CREATED, "{fired}");
    assert_eq!(fired["job"]["command"], json!(["echo", "hi"]));
    assert_eq!(
        (&fired["job"]["env"], &fired["job"]["timeout"]),
        (&json!(["K"]), &json!("5m"))
    );
    assert!(!fired["job"].to_string().contains(PLAIN));
    let (status, batch) = h
        .call(
            Method::POST,
            "/api/jobs/batch",
            Some(json!({"jobs": [{"kind": "command", "command": ["true"], "grace": "2s"}, {"kind": "echo"}]})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{batch}");
    assert_eq!(batch["jobs"][0]["command"], json!(["true"]));
    assert_eq!(batch["jobs"][0]["grace"], "2s");
    assert_eq!(
        (&batch["jobs"][1]["command"], &batch["jobs"][1]["grace"]),
        (&Value::Null, &json!("10s"))
    );
}
