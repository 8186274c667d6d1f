//! Admission control over HTTP, with injected readings: `GET /api/queues` says why a
//! heavy queue holds, `/api/resources` and `/metrics` show the crossing, the alert
//! reaches an SSE client, and a low store disk answers submissions 507 without
//! writing anything.

mod common;

use std::sync::Arc;
use std::time::Duration;

use axum::http::{Method, StatusCode};
use baton_engine::{Engine, Reading, ResourceOptions};
use baton_server::ServerOptions;
use baton_store::{SqliteOptions, SqliteStore};
use common::{Harness, harness_of, serve};
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn harness() -> Harness {
    let dir = TempDir::new().unwrap();
    let store = SqliteStore::open(SqliteOptions::new(dir.path().join("baton.db"))).unwrap();
    let engine = Engine::builder()
        .store(Arc::new(store))
        .queue("media", 2)
        .heavy("media")
        .resources(ResourceOptions {
            sample_every: None,
            disk: Some(dir.path().to_path_buf()),
            clear_after: Duration::from_millis(200),
            ..ResourceOptions::default()
        })
        .handler("work", |_ctx, payload| async move { Ok(payload) })
        .build()
        .await
        .unwrap();
    harness_of(engine, dir, ServerOptions::default()).await
}

async fn queue(h: &Harness, name: &str) -> Value {
    let (status, body) = h.call(Method::GET, "/api/queues", None).await;
    assert_eq!(status, StatusCode::OK);
    body["queues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["name"] == name)
        .unwrap_or_else(|| panic!("no queue {name} in {body}"))
        .clone()
}

async fn job_count(h: &Harness) -> u64 {
    let (status, body) = h.call(Method::GET, "/api/jobs", None).await;
    assert_eq!(status, StatusCode::OK);
    body["total"].as_u64().unwrap()
}

#[tokio::test]
async fn queues_say_why_a_heavy_queue_is_held_and_resources_show_the_crossing() {
    let h = harness().await;
    let addr = serve(&h, ServerOptions::default()).await;
    // A live SSE client, open before the crossing.
    let mut sse = tokio::net::TcpStream::connect(addr).await.unwrap();
    sse.write_all(
        b"GET /api/events HTTP/1.1\r\nhost: localhost\r\naccept: text/event-stream\r\n\r\n",
    )
    .await
    .unwrap();
    let mut seen = Vec::new();
    read_until(&mut sse, &mut seen, "\r\n\r\n").await;

    let media = queue(&h, "media").await;
    assert_eq!(media["heavy"], true);
    assert!(media["held"].is_null(), "{media}");

    h.engine.pressure().inject(Reading {
        memory_pct: Some(93.0),
        ..Reading::default()
    });
    let media = queue(&h, "media").await;
    assert_eq!(media["held"], "memory 93 % > 90 %", "{media}");
    let default = queue(&h, "default").await;
    assert_eq!(default["heavy"], false);
    assert!(
        default["held"].is_null(),
        "a light queue is not held: {default}"
    );

    let (status, job) = h
        .call(
            Method::POST,
            "/api/jobs",
            Some(json!({"id": "m", "kind": "work", "queue": "media"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "accepted, only held: {job}");
    let (_, light) = h
        .call(Method::POST, "/api/jobs", Some(json!({"kind": "work"})))
        .await;
    let light = h.finished(light["id"].as_str().unwrap()).await;
    assert_eq!(light["state"], "completed");
    assert_eq!(h.engine.get("m").await.unwrap().state.as_str(), "queued");

    let (status, resources) = h.call(Method::GET, "/api/resources", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(resources["held"], "memory 93 % > 90 %", "{resources}");
    assert_eq!(
        resources["alerts"],
        json!([{"resource": "memory", "value": 93.0, "threshold": 90.0,
            "message": "memory 93 % > 90 %"}])
    );
    let (_, metrics) = h.raw(Method::GET, "/metrics", None, &[]).await;
    assert!(
        metrics.contains("baton_resource_crossed{resource=\"memory\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("baton_resource_crossed{resource=\"disk\"} 0"));

    read_until(&mut sse, &mut seen, "event: resource.alert").await;

    h.engine.pressure().inject(Reading {
        memory_pct: Some(60.0),
        ..Reading::default()
    });
    let m = h.finished("m").await;
    assert_eq!(m["state"], "completed", "the hold lifted: {m}");
    assert!(queue(&h, "media").await["held"].is_null());
    let text = read_until(&mut sse, &mut seen, "event: resource.cleared").await;
    let alert = text
        .lines()
        .skip_while(|l| *l != "event: resource.alert")
        .find_map(|l| l.strip_prefix("data: "))
        .expect("the alert's data");
    let alert: Value = serde_json::from_str(alert).unwrap();
    assert_eq!(alert["job_id"], Value::Null);
    assert_eq!(alert["data"]["message"], "memory 93 % > 90 %");
}

#[tokio::test]
async fn a_low_store_disk_answers_submissions_507_and_writes_nothing() {
    let h = harness().await;
    let (status, _) = h
        .call(Method::POST, "/api/jobs", Some(json!({"kind": "work"})))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let before = job_count(&h).await;

    h.engine.pressure().inject(Reading {
        disk_free_pct: Some(2.5),
        ..Reading::default()
    });
    let work = json!({"kind": "work"});
    for (path, body) in [
        ("/api/jobs", work.clone()),
        (
            "/api/jobs/batch",
            json!({"jobs": [work.clone(), work.clone()]}),
        ),
        (
            "/api/workflows",
            json!({"id": "wf", "jobs": {"a": work.clone()}}),
        ),
    ] {
        let (status, body) = h.call(Method::POST, path, Some(body)).await;
        assert_eq!(status, StatusCode::INSUFFICIENT_STORAGE, "{path}: {body}");
        assert_eq!(body["error"]["code"], "insufficient_storage", "{body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("has 2.5 % free, under disk_free_below = 5 %"),
            "{path}: the disk's free space and the threshold: {message}"
        );
    }
    assert_eq!(job_count(&h).await, before, "nothing was written");
    let (status, _) = h.call(Method::GET, "/api/workflows/wf", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // Reads and controls still answer.
    let (status, _) = h.call(Method::GET, "/api/queues", None).await;
    assert_eq!(status, StatusCode::OK);

    // The document lists the answer for each submission.
    let (_, doc) = h.call(Method::GET, "/api/openapi.json", None).await;
    for path in ["/api/jobs", "/api/jobs/batch", "/api/workflows"] {
        assert!(
            doc["paths"][path]["post"]["responses"]["507"].is_object(),
            "{path} documents 507"
        );
    }

    h.engine.pressure().inject(Reading {
        disk_free_pct: Some(30.0),
        ..Reading::default()
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = h
            .call(Method::POST, "/api/jobs", Some(json!({"kind": "work"})))
            .await;
        if status == StatusCode::CREATED {
            break;
        }
        assert_eq!(status, StatusCode::INSUFFICIENT_STORAGE, "{body}");
        assert!(std::time::Instant::now() < deadline, "still refused");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(job_count(&h).await, before + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboards_queues_page_shows_a_hold_as_it_begins_and_ends() {
    let h = harness().await;
    let addr = serve(&h, ServerOptions::default()).await;
    let mut browser = common::chromium::Browser::start().await;
    browser
        .open(&format!("http://127.0.0.1:{}/#/queues", addr.port()))
        .await;
    browser.wait_live().await;
    let state = "document.querySelector('tr[data-queue=media] [data-held]')?.textContent";
    let shown = browser.wait_for("the queues", state).await;
    assert_eq!(shown, "running (heavy)");

    h.engine.pressure().inject(Reading {
        memory_pct: Some(93.0),
        ..Reading::default()
    });
    browser
        .wait_for(
            "the hold, without a reload",
            &format!("{state} === 'held: memory 93 % > 90 %'"),
        )
        .await;
    h.engine.pressure().inject(Reading {
        memory_pct: Some(60.0),
        ..Reading::default()
    });
    browser
        .wait_for(
            "the hold lifted, without a reload",
            &format!("{state} === 'running (heavy)'"),
        )
        .await;
    browser.close().await;
}

/// Reads the stream until `want` has arrived; everything read so far, as text.
async fn read_until(tcp: &mut tokio::net::TcpStream, seen: &mut Vec<u8>, want: &str) -> String {
    loop {
        let text = String::from_utf8_lossy(seen).into_owned();
        if text.contains(want) {
            return text;
        }
        let mut more = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut more))
            .await
            .unwrap_or_else(|_| panic!("no {want:?} within 10 s: {text}"))
            .unwrap();
        assert!(n > 0, "the stream closed before {want:?}: {text}");
        seen.extend_from_slice(&more[..n]);
    }
}
