//! Workflows, dependencies, unique keys and queue pause over HTTP, in process.

mod common;

use axum::http::{Method, StatusCode};
use common::harness;
use serde_json::{Value, json};

#[tokio::test]
async fn a_workflow_is_submitted_read_and_listed() {
    let h = harness().await;
    let body = json!({"id": "nightly", "jobs": {
        "fetch": {"kind": "echo", "payload": {"rows": 3}},
        "load": {"kind": "echo", "depends_on": ["fetch"]},
        "report": {"kind": "echo", "depends_on": [{"job": "load", "on": "finished"}]},
    }});
    let (status, out) = h
        .call(Method::POST, "/api/workflows", Some(body.clone()))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{out}");
    assert_eq!(out["id"], "nightly");
    let jobs = out["jobs"].as_object().unwrap();
    assert_eq!(jobs.keys().collect::<Vec<_>>(), ["fetch", "load", "report"]);
    let id = |n: &str| out["jobs"][n].as_str().unwrap().to_owned();

    let (status, again) = h.call(Method::POST, "/api/workflows", Some(body)).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "the same id again answers the workflow"
    );
    assert_eq!(again, out);

    h.wait_state(&id("report"), "completed").await;
    let (status, graph) = h.call(Method::GET, "/api/workflows/nightly", None).await;
    assert_eq!(status, StatusCode::OK, "{graph}");
    assert_eq!(graph["state"], "completed");
    assert_eq!(graph["paused"], false);
    assert_eq!(graph["counts"]["completed"], 3);
    assert_eq!(graph["jobs"]["load"], id("load"));
    assert_eq!(graph["nodes"].as_array().unwrap().len(), 3);
    assert_eq!(graph["nodes"][0]["name"], "fetch");
    assert_eq!(graph["nodes"][0]["state"], "completed");
    assert_eq!(
        graph["edges"],
        json!([
            {"from": id("fetch"), "to": id("load"), "on": "completed", "status": "met"},
            {"from": id("load"), "to": id("report"), "on": "finished", "status": "met"},
        ])
    );

    let (_, list) = h
        .call(Method::GET, "/api/jobs?workflow=nightly&limit=10", None)
        .await;
    assert_eq!(list["total"], 3, "{list}");
    let (_, job) = h
        .call(Method::GET, &format!("/api/jobs/{}", id("load")), None)
        .await;
    assert_eq!(job["workflow_id"], "nightly");
    assert_eq!(job["depends_on"], json!([id("fetch")]));

    let (status, deps) = h
        .call(
            Method::GET,
            &format!("/api/jobs/{}/dependencies", id("load")),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(deps["jobs"][0]["name"], "fetch");
    assert_eq!(deps["jobs"][0]["result"], json!({"rows": 3}));
    let (_, dependents) = h
        .call(
            Method::GET,
            &format!("/api/jobs/{}/dependents", id("load")),
            None,
        )
        .await;
    assert_eq!(dependents["jobs"][0]["job_id"], id("report"));
    assert_eq!(dependents["jobs"][0]["on"], "finished");
    let (status, _) = h
        .call(Method::GET, "/api/jobs/nobody/dependents", None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let (_, doc) = h.call(Method::GET, "/api/openapi.json", None).await;
    for path in [
        "/api/workflows",
        "/api/workflows/{id}",
        "/api/workflows/{id}/retry",
        "/api/queues/{name}/pause",
        "/api/jobs/{id}/dependents",
    ] {
        assert!(doc["paths"].get(path).is_some(), "openapi lacks {path}");
    }
}

fn error_of(body: &Value) -> (&str, &str) {
    (
        body["error"]["code"].as_str().unwrap_or(""),
        body["error"]["message"].as_str().unwrap_or(""),
    )
}

#[tokio::test]
async fn bad_workflows_and_dependencies_are_refused_with_422() {
    let h = harness().await;
    let cases = [
        (
            json!({"jobs": {"a": {"kind": "echo", "depends_on": ["a"]}}}),
            "cycle: a -> a",
        ),
        (
            json!({"jobs": {
                "a": {"kind": "echo", "depends_on": ["c"]},
                "b": {"kind": "echo", "depends_on": ["a"]},
                "c": {"kind": "echo", "depends_on": ["b"]},
            }}),
            "cycle: a -> b -> c -> a",
        ),
        (
            json!({"jobs": {"a": {"kind": "echo", "depends_on": ["ghost"]}}}),
            "\"ghost\"",
        ),
        (
            json!({"jobs": {"a": {"kind": "echo", "depends_on": [{"job": "b", "on": "later"}]}, "b": {"kind": "echo"}}}),
            "jobs.a.depends_on[0].on",
        ),
        (
            json!({"jobs": {"a": {"kind": "nope"}}}),
            "no handler is registered for \"nope\"",
        ),
        (json!({"jobs": {}}), "at least one job"),
    ];
    for (body, part) in cases {
        let (status, out) = h
            .call(Method::POST, "/api/workflows", Some(body.clone()))
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {out}");
        let (code, message) = error_of(&out);
        assert_eq!(code, "invalid_spec", "{out}");
        assert!(message.contains(part), "{message} lacks {part}");
    }
    let (status, out) = h
        .call(
            Method::POST,
            "/api/workflows",
            Some(json!({"jobs": {"a": {"kind": "echo", "colour": "red"}}})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{out}");
    let (status, out) = h
        .call(
            Method::POST,
            "/api/jobs",
            Some(json!({"kind": "echo", "depends_on": ["ghost"]})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        error_of(&out)
            .1
            .contains("depends on \"ghost\", which does not exist"),
        "{out}"
    );
    let (_, list) = h.call(Method::GET, "/api/jobs", None).await;
    assert_eq!(list["total"], 0, "nothing was stored");
    let (status, _) = h.call(Method::GET, "/api/workflows/nope", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = h
        .call(Method::GET, "/api/workflows/has%20space", None)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn workflow_control_answers_409_when_it_makes_no_sense() {
    let h = harness().await;
    let (status, out) = h
        .call(
            Method::POST,
            "/api/workflows",
            Some(json!({"id": "w", "jobs": {
                "spin": {"kind": "looper"},
                "after": {"kind": "echo", "depends_on": ["spin"]},
            }})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let spin = out["jobs"]["spin"].as_str().unwrap().to_owned();
    let after = out["jobs"]["after"].as_str().unwrap().to_owned();
    h.wait_state(&spin, "running").await;

    let (status, g) = h.call(Method::POST, "/api/workflows/w/pause", None).await;
    assert_eq!(status, StatusCode::OK, "{g}");
    assert_eq!(g["state"], "paused");
    h.wait_state(&spin, "paused").await;
    let (status, out) = h.call(Method::POST, "/api/workflows/w/pause", None).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(error_of(&out).0, "illegal_transition");
    assert!(
        error_of(&out).1.contains("cannot pause workflow \"w\""),
        "{out}"
    );
    let (status, g) = h.call(Method::POST, "/api/workflows/w/resume", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(g["state"], "running");
    let (status, _) = h.call(Method::POST, "/api/workflows/w/resume", None).await;
    assert_eq!(status, StatusCode::CONFLICT);
    let (status, _) = h.call(Method::POST, "/api/workflows/w/retry", None).await;
    assert_eq!(status, StatusCode::CONFLICT, "nothing failed yet");

    let (status, _) = h.call(Method::POST, "/api/workflows/w/cancel", None).await;
    assert_eq!(status, StatusCode::OK);
    h.wait_state(&spin, "cancelled").await;
    h.wait_state(&after, "cancelled").await;
    let (_, g) = h.call(Method::GET, "/api/workflows/w", None).await;
    assert_eq!(g["state"], "cancelled");
    let (status, _) = h.call(Method::POST, "/api/workflows/w/cancel", None).await;
    assert_eq!(status, StatusCode::CONFLICT);

    // Retry runs the cancelled part again; the looper is cancelled again at once.
    let (status, g) = h
        .call(
            Method::POST,
            "/api/workflows/w/retry?from_checkpoint=true",
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{g}");
    // The answer reads the graph after the retry's write; a dispatcher may have claimed
    // the looper in between.
    assert!(g["state"] == "pending" || g["state"] == "running", "{g}");
    h.wait_state(&spin, "running").await;
    let (_, job) = h
        .call(Method::GET, &format!("/api/jobs/{after}"), None)
        .await;
    assert_eq!(job["state"], "awaiting");
    let (status, _) = h.call(Method::POST, "/api/workflows/w/cancel", None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = h
        .call(Method::POST, "/api/workflows/nope/pause", None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_unique_key_conflict_names_its_holder() {
    let h = harness().await;
    let spec = json!({"kind": "looper", "id": "sync-1", "unique_key": "sync:acme"});
    let (status, _) = h.call(Method::POST, "/api/jobs", Some(spec)).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, out) = h
        .call(
            Method::POST,
            "/api/jobs",
            Some(json!({"kind": "looper", "unique_key": "sync:acme"})),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{out}");
    let (code, message) = error_of(&out);
    assert_eq!(code, "conflict");
    assert!(
        message.contains("\"sync-1\"") && message.contains("\"sync:acme\""),
        "{message}"
    );
    let (status, out) = h
        .call(
            Method::POST,
            "/api/jobs",
            Some(json!({"kind": "looper", "unique_key": "sync:acme", "unique_policy": "return_existing"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "the holder is answered");
    assert_eq!(out["id"], "sync-1");
    let (status, out) = h
        .call(
            Method::POST,
            "/api/jobs",
            Some(json!({"kind": "echo", "unique_key": "sync:acme", "unique_policy": "replace"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{out}");
    h.wait_state("sync-1", "cancelled").await;
    let (status, out) = h
        .call(
            Method::POST,
            "/api/jobs",
            Some(json!({"kind": "echo", "unique_policy": "replace"})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{out}");
}

#[tokio::test]
async fn queues_are_paused_and_resumed() {
    let h = harness().await;
    let (status, q) = h.call(Method::POST, "/api/queues/other/pause", None).await;
    assert_eq!(status, StatusCode::OK, "{q}");
    assert_eq!(q["paused"], true);
    assert_eq!(q["name"], "other");
    let (_, job) = h
        .call(
            Method::POST,
            "/api/jobs",
            Some(json!({"kind": "echo", "queue": "other"})),
        )
        .await;
    let id = job["id"].as_str().unwrap().to_owned();
    let (_, list) = h.call(Method::GET, "/api/queues", None).await;
    let other = list["queues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["name"] == "other")
        .unwrap()
        .clone();
    assert_eq!(other["paused"], true);
    let default = list["queues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["name"] == "default")
        .unwrap()
        .clone();
    assert_eq!(default["paused"], false);
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let (_, job) = h.call(Method::GET, &format!("/api/jobs/{id}"), None).await;
    assert_eq!(job["state"], "queued", "a paused queue starts nothing");
    let (status, q) = h.call(Method::POST, "/api/queues/other/resume", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(q["paused"], false);
    h.wait_state(&id, "completed").await;
    let (status, out) = h.call(Method::POST, "/api/queues/ghost/pause", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(error_of(&out).1.contains("\"ghost\""), "{out}");
}
