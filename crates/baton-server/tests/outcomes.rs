//! `/metrics` counts the outcome writes that failed and were tried again.

#[path = "../../baton-engine/tests/support/flaky_store.rs"]
mod flaky_store;

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::Request;
use baton_engine::{Engine, JobSpec, State};
use baton_server::{AppState, ServerOptions, router};
use baton_store::{Error, SqliteOptions, SqliteStore};
use flaky_store::FlakyStore;
use http_body_util::BodyExt;
use serde_json::json;
use tempfile::TempDir;
use tower::ServiceExt;

#[tokio::test]
async fn metrics_count_outcome_write_retries() {
    let dir = TempDir::new().unwrap();
    let sqlite = SqliteStore::open(SqliteOptions::new(dir.path().join("baton.db"))).unwrap();
    let flaky = FlakyStore::new(Arc::new(sqlite));
    let engine = Engine::builder()
        .store(flaky.clone())
        .handler("echo", |_ctx, payload| async move { Ok(payload) })
        .build()
        .await
        .unwrap();
    let options = ServerOptions::default();
    let app = router(
        AppState::new(engine.clone(), &options).await.unwrap(),
        &options,
    );
    let metric = |text: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix("baton_outcome_write_retries_total "))
            .unwrap_or_else(|| panic!("no retry counter in /metrics:\n{text}"))
            .parse()
            .unwrap()
    };
    let scrape = || async {
        let response = app
            .clone()
            .oneshot(Request::get("/metrics").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(body.to_vec()).unwrap()
    };
    assert_eq!(metric(&scrape().await), 0);

    flaky
        .fail_outcomes(4, Error::Internal("disk I/O error".into()))
        .await;
    let id = engine
        .submit(JobSpec::new("echo").payload(json!("done")))
        .await
        .unwrap()
        .job
        .id;
    let job = tokio::time::timeout(Duration::from_secs(20), engine.wait(&id))
        .await
        .expect("the job ends")
        .unwrap();
    assert_eq!(job.state, State::Completed);
    assert_eq!(job.result, Some(json!("done")));
    let text = scrape().await;
    assert!(
        text.contains("# TYPE baton_outcome_write_retries_total counter"),
        "{text}"
    );
    assert_eq!(metric(&text), 4);
}
