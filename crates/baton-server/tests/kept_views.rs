//! What the store keeps for the dashboard's views: the throughput chart's counts, which
//! survive a restart, and the workflow list, paged newest first and tried as an
//! attacker would.

mod common;

use std::time::Duration;

use axum::Router;
use axum::http::{Method, StatusCode};
use baton_server::{AppState, AuthConfig, Role, ServerOptions, router};
use common::{harness, harness_with, test_engine, token};
use serde_json::{Value, json};
use tempfile::TempDir;
use tower::ServiceExt;

/// A server over the database in `dir`, as `baton serve` would start it.
async fn start(dir: &TempDir) -> (Router, baton_engine::Engine) {
    let engine = test_engine(dir).await;
    let options = ServerOptions::default();
    let state = AppState::new(engine.clone(), &options)
        .await
        .expect("the server's state");
    (router(state, &options), engine)
}

async fn get(app: &Router, uri: &str) -> (StatusCode, Value) {
    let req = axum::http::Request::get(uri)
        .body(axum::body::Body::empty())
        .unwrap();
    let res = app.clone().oneshot(req).await.unwrap();
    let status = res.status();
    let bytes = http_body_util::BodyExt::collect(res.into_body())
        .await
        .unwrap()
        .to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

fn sum(v: &Value, key: &str) -> u64 {
    v[key]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_u64().unwrap())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chart_still_shows_jobs_that_ended_before_a_restart() {
    let dir = TempDir::new().unwrap();
    let (_, engine) = start(&dir).await;
    let mut ids = Vec::new();
    for kind in ["echo", "echo", "echo", "fail"] {
        let spec = serde_json::from_value(json!({"kind": kind, "max_attempts": 1})).unwrap();
        ids.push(engine.submit(spec).await.unwrap().job.id);
    }
    for id in &ids {
        tokio::time::timeout(Duration::from_secs(20), engine.wait(id))
            .await
            .expect("the job ends")
            .unwrap();
    }
    engine.shutdown(Duration::from_secs(5)).await;

    // A new server on the same database: nothing it saw, all the store kept.
    let (app, engine) = start(&dir).await;
    for window in ["15m", "1h", "1d"] {
        let (status, chart) = get(&app, &format!("/api/throughput?window={window}")).await;
        assert_eq!(status, StatusCode::OK, "{chart}");
        assert_eq!(
            (sum(&chart, "completed"), sum(&chart, "failed")),
            (3, 1),
            "{window}: {chart}"
        );
        let buckets = chart["completed"].as_array().unwrap().len();
        assert_eq!(
            buckets,
            [900, 60, 1440][["15m", "1h", "1d"]
                .iter()
                .position(|w| *w == window)
                .unwrap()]
        );
        // The jobs ended just now: in the last bucket or the one before.
        let last: u64 = chart["completed"].as_array().unwrap()[buckets - 2..]
            .iter()
            .map(|n| n.as_u64().unwrap())
            .sum();
        assert_eq!(last, 3, "{window}: {chart}");
    }
    let (status, refused) = get(&app, "/api/throughput?window=2h").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains("\"2h\""),
        "{refused}"
    );
    engine.shutdown(Duration::from_secs(5)).await;
}

fn workflow(id: &str) -> Value {
    json!({"id": id, "jobs": {
        "a": {"kind": "echo"},
        "b": {"kind": "echo", "depends_on": ["a"]},
        "c": {"kind": "fail", "max_attempts": 1, "depends_on": ["a"]}
    }})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workflows_are_listed_newest_first_a_page_at_a_time() {
    let h = harness().await;
    for id in ["w1", "w2", "w3"] {
        let (status, made) = h
            .call(Method::POST, "/api/workflows", Some(workflow(id)))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{made}");
        // Created in different milliseconds, so that the order is by time.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (status, page) = h.call(Method::GET, "/api/workflows?limit=2", None).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let ids: Vec<&str> = page["workflows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["w3", "w2"]);
    let cursor = page["next_cursor"].as_str().unwrap().to_owned();
    let (_, rest) = h
        .call(
            Method::GET,
            &format!("/api/workflows?limit=2&cursor={cursor}"),
            None,
        )
        .await;
    assert_eq!(rest["workflows"][0]["id"], "w1", "{rest}");
    assert!(rest["next_cursor"].is_null(), "{rest}");

    // Once its jobs end, a workflow's counts and state say so.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let w1 = loop {
        let (_, rest) = h
            .call(
                Method::GET,
                &format!("/api/workflows?cursor={cursor}"),
                None,
            )
            .await;
        let w1 = rest["workflows"][0].clone();
        if w1["state"] == "failed" {
            break w1;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "w1 never failed: {w1}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(w1["jobs"], 3, "{w1}");
    assert_eq!(w1["counts"], json!({"completed": 2, "failed": 1}), "{w1}");
    assert!(w1["created_at"].as_str().unwrap().ends_with('Z'), "{w1}");

    for (query, what) in [
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("limit=ten", "limit"),
        ("cursor=nope", "cursor"),
        ("cursor=x:w1", "cursor"),
        ("sort=old", "sort"),
    ] {
        let (status, refused) = h
            .call(Method::GET, &format!("/api/workflows?{query}"), None)
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {refused}");
        let message = refused["error"]["message"].as_str().unwrap();
        assert!(message.contains(what), "{query}: {message}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_workflow_list_needs_a_token_and_a_viewer_may_read_it() {
    let h = harness_with(ServerOptions {
        auth: AuthConfig {
            tokens: vec![token("watcher", Role::Viewer)],
            ..AuthConfig::default()
        },
        ..ServerOptions::default()
    })
    .await;
    h.engine
        .submit_workflow(serde_json::from_value(workflow("w1")).unwrap())
        .await
        .unwrap();
    let (status, _) = h.call(Method::GET, "/api/workflows", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = h
        .call_as(Method::GET, "/api/workflows", "stale-token")
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, list) = h
        .call_as(Method::GET, "/api/workflows", "watcher-token")
        .await;
    assert_eq!(status, StatusCode::OK, "{list}");
    assert_eq!(list["workflows"][0]["id"], "w1");
    // Reading is all a viewer does: it may not submit one.
    let (status, _) = h
        .raw(
            Method::POST,
            "/api/workflows",
            Some(workflow("w2").to_string()),
            &[("authorization", "Bearer watcher-token")],
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}
