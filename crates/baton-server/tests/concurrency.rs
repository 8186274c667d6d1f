//! Concurrency limits across queues through the HTTP API and the dashboard: a queued
//! job held by a full limit says why in `GET /api/jobs/{id}`, `/api/resources` shows
//! each limit's use, and in Chromium the job page and the queues page follow the
//! limit live as its slot frees.

mod common;

use std::sync::Arc;
use std::time::Duration;

use axum::http::{Method, StatusCode};
use baton_engine::{ConcurrencyLimit, Engine};
use baton_server::ServerOptions;
use baton_store::{SqliteOptions, SqliteStore};
use common::{Harness, harness_of, serve};
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::sync::Semaphore;

/// `slow` jobs run until the gate lets each one through; jobs labelled
/// `source:alfabeta` run one at a time across the queues `a` and `b`.
async fn harness(gate: Arc<Semaphore>) -> Harness {
    let dir = TempDir::new().unwrap();
    let store = SqliteStore::open(SqliteOptions::new(dir.path().join("baton.db"))).unwrap();
    let engine = Engine::builder()
        .store(Arc::new(store))
        .queue("a", 2)
        .queue("b", 2)
        .concurrency_limit(ConcurrencyLimit::label("source", "alfabeta", 1))
        .handler("slow", move |_ctx, _payload| {
            let gate = gate.clone();
            async move {
                gate.acquire().await.expect("the gate is open").forget();
                Ok(json!("done"))
            }
        })
        .build()
        .await
        .unwrap();
    harness_of(engine, dir, ServerOptions::default()).await
}

async fn submit(h: &Harness, id: &str, queue: &str) {
    let (status, body) = h
        .call(
            Method::POST,
            "/api/jobs",
            Some(
                json!({"id": id, "kind": "slow", "queue": queue, "labels": {"source": "alfabeta"}}),
            ),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}

async fn job(h: &Harness, id: &str) -> Value {
    let (status, body) = h.call(Method::GET, &format!("/api/jobs/{id}"), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

async fn until_state(h: &Harness, id: &str, state: &str) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let j = job(h, id).await;
        if j["state"] == state {
            return j;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{id} never {state}: {j}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_held_job_says_which_limit_holds_it_and_resources_show_the_limits_use() {
    let gate = Arc::new(Semaphore::new(0));
    let h = harness(gate.clone()).await;
    submit(&h, "first", "a").await;
    until_state(&h, "first", "running").await;
    submit(&h, "second", "b").await;
    let held = job(&h, "second").await;
    assert_eq!(held["state"], "queued", "{held}");
    assert_eq!(
        held["waiting_for"],
        "concurrency limit source:alfabeta (1/1)"
    );
    let running = job(&h, "first").await;
    assert!(running.get("waiting_for").is_none(), "{running}");
    let (status, resources) = h.call(Method::GET, "/api/resources", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        resources["concurrency_limits"],
        json!([{"name": "source:alfabeta", "label": "source:alfabeta", "max": 1, "held": 1}])
    );
    gate.add_permits(1);
    let started = until_state(&h, "second", "running").await;
    assert!(started.get("waiting_for").is_none(), "{started}");
    gate.add_permits(1);
    until_state(&h, "second", "completed").await;
    let (_, resources) = h.call(Method::GET, "/api/resources", None).await;
    assert_eq!(resources["concurrency_limits"][0]["held"], 0, "{resources}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_what_a_job_waits_for_and_each_limits_use_live() {
    let gate = Arc::new(Semaphore::new(0));
    let h = harness(gate.clone()).await;
    submit(&h, "first", "a").await;
    until_state(&h, "first", "running").await;
    submit(&h, "second", "b").await;
    let addr = serve(&h, ServerOptions::default()).await;
    let mut browser = common::chromium::Browser::start().await;

    browser
        .open(&format!("http://127.0.0.1:{}/#/queues", addr.port()))
        .await;
    browser.wait_live().await;
    let cell =
        "document.querySelector('tr[data-limit=\"source:alfabeta\"] [data-held]')?.textContent";
    browser
        .wait_for("the limit, full", &format!("{cell} === '1 / 1'"))
        .await;

    browser
        .evaluate("(location.hash = '#/jobs/second', '1')")
        .await;
    let waiting = browser
        .wait_for(
            "what the job waits for",
            "document.querySelector('#job-waiting')?.textContent",
        )
        .await;
    assert_eq!(waiting, "concurrency limit source:alfabeta (1/1)");
    gate.add_permits(1);
    browser
        .wait_for(
            "the job started and no longer waiting, without a reload",
            "!document.querySelector('#job-waiting') && document.querySelector('#job-state')?.textContent.includes('running')",
        )
        .await;

    browser.evaluate("(location.hash = '#/queues', '1')").await;
    browser
        .wait_for("the limit, still full", &format!("{cell} === '1 / 1'"))
        .await;
    gate.add_permits(1);
    browser
        .wait_for(
            "the slot freed, without a reload",
            &format!("{cell} === '0 / 1'"),
        )
        .await;
    browser.close().await;
}
