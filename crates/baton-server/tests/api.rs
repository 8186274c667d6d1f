//! Every endpoint and every error code, in process (`tower::ServiceExt::oneshot`).

mod common;

use axum::http::{Method, StatusCode};
use baton_server::{AuthConfig, Role, ServerOptions, sign_jwt};
use common::{Harness, harness, harness_with, token};
use serde_json::{Value, json};

#[tokio::test]
async fn submit_show_list_and_resubmit() {
    let h = harness().await;
    let (status, job) = h.call(Method::POST, "/api/jobs", Some(json!({"kind": "echo", "id": "order-1", "payload": {"n": 1}, "labels": {"source": "shop"}}))).await;
    assert_eq!(status, StatusCode::CREATED, "{job}");
    assert_eq!(job["id"], "order-1");
    for field in [
        "id",
        "kind",
        "queue",
        "priority",
        "state",
        "progress",
        "message",
        "step",
        "attempt",
        "max_attempts",
        "labels",
        "depends_on",
        "workflow_id",
        "schedule_id",
        "created_at",
        "run_at",
        "started_at",
        "finished_at",
        "result",
        "error",
    ] {
        assert!(job.get(field).is_some(), "job lacks {field}: {job}");
    }
    let (status, again) = h
        .call(
            Method::POST,
            "/api/jobs",
            Some(json!({"kind": "echo", "id": "order-1"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(again["created_at"], job["created_at"]);

    let (status, done) = h
        .call(Method::GET, "/api/jobs/order-1/wait?timeout=10s", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(done["state"], "completed");
    assert_eq!(done["result"], json!({"n": 1}));

    let (_, shown) = h.call(Method::GET, "/api/jobs/order-1", None).await;
    assert_eq!(shown["state"], "completed");

    for i in 0..5 {
        h.call(
            Method::POST,
            "/api/jobs",
            Some(json!({"kind": "echo", "queue": "other", "labels": {"n": i.to_string()}})),
        )
        .await;
    }
    let (status, list) = h
        .call(Method::GET, "/api/jobs?queue=other&limit=2", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["total"], 5);
    assert_eq!(list["jobs"].as_array().unwrap().len(), 2);
    let cursor = list["next_cursor"].as_str().unwrap().to_owned();
    let (_, next) = h
        .call(
            Method::GET,
            &format!("/api/jobs?queue=other&limit=2&cursor={cursor}"),
            None,
        )
        .await;
    assert_eq!(next["jobs"].as_array().unwrap().len(), 2);
    assert_ne!(next["jobs"][0]["id"], list["jobs"][0]["id"]);
    let (_, by_label) = h
        .call(Method::GET, "/api/jobs?label=source:shop", None)
        .await;
    assert_eq!(by_label["total"], 1);
    let (_, by_alias) = h
        .call(
            Method::GET,
            "/api/jobs?state=succeeded,pending,processing",
            None,
        )
        .await;
    assert!(by_alias["total"].as_u64().unwrap() >= 1);
    let (_, by_text) = h.call(Method::GET, "/api/jobs?q=order", None).await;
    assert_eq!(by_text["total"], 1);
    // FTS5 syntax in the text is words to find: never an error.
    for (q, total) in [
        ("%22order", 1),
        ("order%20AND%20x-y", 0),
        ("NEAR(ord", 0),
        ("ord*", 1),
        ("-ord", 1),
        ("id:order", 0),
        ("order-1", 1),
    ] {
        let (status, body) = h.call(Method::GET, &format!("/api/jobs?q={q}"), None).await;
        assert_eq!(status, StatusCode::OK, "q={q}: {body}");
        assert_eq!(body["total"], total, "q={q}: {body}");
    }
    // By the end time: only finished jobs, and a cursor of that order pages on.
    let (_, others) = h.call(Method::GET, "/api/jobs?queue=other", None).await;
    for job in others["jobs"].as_array().unwrap() {
        let path = format!("/api/jobs/{}/wait?timeout=10s", job["id"].as_str().unwrap());
        let (_, done) = h.call(Method::GET, &path, None).await;
        assert_eq!(done["state"], "completed", "{done}");
    }
    let (status, finished) = h.call(Method::GET, "/api/jobs?sort=finished", None).await;
    assert_eq!(status, StatusCode::OK, "{finished}");
    let finished = finished["jobs"].as_array().unwrap();
    assert_eq!(finished.len(), 6, "{finished:?}");
    assert!(finished.iter().all(|j| !j["finished_at"].is_null()));
    let (_, started) = h
        .call(Method::GET, "/api/jobs?sort=started&limit=1", None)
        .await;
    let cursor = started["next_cursor"].as_str().expect("more started jobs");
    assert!(cursor.starts_with("started."), "{cursor}");
    let (status, next) = h
        .call(
            Method::GET,
            &format!("/api/jobs?sort=started&limit=1&cursor={cursor}"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{next}");
    assert_ne!(next["jobs"][0]["id"], started["jobs"][0]["id"]);
}

#[tokio::test]
async fn batch_status_and_long_poll_timeout() {
    let h = harness().await;
    let (_, job) = h
        .call(Method::POST, "/api/jobs", Some(json!({"kind": "looper"})))
        .await;
    let id = job["id"].as_str().unwrap();
    let (status, out) = h
        .call(
            Method::POST,
            "/api/jobs/status",
            Some(json!({"ids": [id, "nope", "bad id"]})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(out["jobs"][0]["id"], id);
    assert_eq!(out["missing"], json!(["nope", "bad id"]));

    let t0 = std::time::Instant::now();
    let (status, waited) = h
        .call(
            Method::GET,
            &format!("/api/jobs/{id}/wait?timeout=300ms"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(t0.elapsed() >= std::time::Duration::from_millis(250));
    assert_eq!(
        waited["state"], "running",
        "the state says the job is not done"
    );
    h.call(
        Method::POST,
        &format!("/api/jobs/{id}/stop?force=true"),
        None,
    )
    .await;
}

#[tokio::test]
async fn control_endpoints() {
    let h = harness().await;
    let (_, job) = h
        .call(Method::POST, "/api/jobs", Some(json!({"kind": "looper"})))
        .await;
    let id = job["id"].as_str().unwrap().to_owned();
    h.wait_state(&id, "running").await;
    let (status, j) = h
        .call(Method::POST, &format!("/api/jobs/{id}/pause"), None)
        .await;
    assert_eq!(
        (status, j["state"].as_str()),
        (StatusCode::OK, Some("paused"))
    );
    let (status, e) = h
        .call(Method::POST, &format!("/api/jobs/{id}/pause"), None)
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(e["error"]["code"], "illegal_transition");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("it is paused")
    );
    let (status, j) = h
        .call(Method::POST, &format!("/api/jobs/{id}/resume"), None)
        .await;
    assert_eq!(
        (status, j["state"].as_str()),
        (StatusCode::OK, Some("running"))
    );
    let (status, j) = h
        .call(Method::POST, &format!("/api/jobs/{id}/stop"), None)
        .await;
    assert_eq!(
        (status, j["state"].as_str()),
        (StatusCode::OK, Some("stopping"))
    );
    h.wait_state(&id, "cancelled").await;
    let (status, j) = h
        .call(
            Method::POST,
            &format!("/api/jobs/{id}/retry?from_checkpoint=true"),
            None,
        )
        .await;
    assert_eq!(
        (status, j["state"].as_str()),
        (StatusCode::OK, Some("queued"))
    );
    h.wait_state(&id, "running").await;
    let (status, _) = h
        .call(Method::DELETE, &format!("/api/jobs/{id}"), None)
        .await;
    assert_eq!(
        status,
        StatusCode::CONFLICT,
        "a running job cannot be deleted"
    );
    // The seed's cancel path.
    let (status, j) = h
        .call(Method::PATCH, &format!("/api/jobs/{id}/cancel"), None)
        .await;
    assert_eq!(
        (status, j["state"].as_str()),
        (StatusCode::OK, Some("stopping"))
    );
    h.wait_state(&id, "cancelled").await;
    let (status, j) = h
        .call(Method::DELETE, &format!("/api/jobs/{id}"), None)
        .await;
    assert_eq!(
        (status, j["state"].as_str()),
        (StatusCode::OK, Some("deleted"))
    );

    let (_, delayed) = h
        .call(
            Method::POST,
            "/api/jobs",
            Some(json!({"kind": "echo", "delay": "1h"})),
        )
        .await;
    let did = delayed["id"].as_str().unwrap();
    let (status, j) = h
        .call(Method::POST, &format!("/api/jobs/{did}/cancel"), None)
        .await;
    assert_eq!(
        (status, j["state"].as_str()),
        (StatusCode::OK, Some("cancelled"))
    );
}

#[tokio::test]
async fn events_and_checkpoints_as_json() {
    let h = harness().await;
    let (_, job) = h
        .call(Method::POST, "/api/jobs", Some(json!({"kind": "steps"})))
        .await;
    let id = job["id"].as_str().unwrap();
    h.call(
        Method::GET,
        &format!("/api/jobs/{id}/wait?timeout=10s"),
        None,
    )
    .await;
    let (status, events) = h
        .call(Method::GET, &format!("/api/jobs/{id}/events"), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let events = events["events"].as_array().unwrap().clone();
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
    assert_eq!(events[0]["type"], "job.submitted");
    assert_eq!(events.last().unwrap()["type"], "job.completed");
    let (_, after) = h
        .call(Method::GET, &format!("/api/jobs/{id}/events?after=2"), None)
        .await;
    assert_eq!(after["events"][0]["seq"], 3);
    let (status, cps) = h
        .call(Method::GET, &format!("/api/jobs/{id}/checkpoints"), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(cps["checkpoints"].as_array().unwrap().len(), 3);
    assert_eq!(cps["checkpoints"][2]["data"], json!({"done": 3}));
}

#[tokio::test]
async fn stats_servers_queues_health_and_metrics() {
    let h = harness().await;
    h.call(
        Method::POST,
        "/api/jobs",
        Some(json!({"kind": "echo", "id": "a"})),
    )
    .await;
    h.call(Method::GET, "/api/jobs/a/wait?timeout=10s", None)
        .await;
    let (status, stats) = h.call(Method::GET, "/api/stats", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(stats["states"]["completed"], 1);
    assert_eq!(stats["states"]["failed"], 0);
    assert_eq!(stats["queues"]["default"]["completed"], 1);
    assert_eq!(stats["synchronous"], "full");
    // The counts are as of the job's last event: its completion.
    let (_, events) = h.call(Method::GET, "/api/jobs/a/events", None).await;
    let last = events["events"].as_array().unwrap().last().unwrap()["id"].clone();
    assert_eq!(stats["event_id"], last, "{stats}");
    let (_, servers) = h.call(Method::GET, "/api/servers", None).await;
    assert_eq!(servers["servers"][0]["pid"], std::process::id());
    let (_, queues) = h.call(Method::GET, "/api/queues", None).await;
    let names: Vec<&str> = queues["queues"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["default", "other"]);
    assert_eq!(
        h.call(Method::GET, "/healthz", None).await.0,
        StatusCode::OK
    );
    assert_eq!(h.call(Method::GET, "/readyz", None).await.0, StatusCode::OK);
    // The counters follow the event stream, which may still be delivering the
    // completion that the store already shows: wait for it, briefly.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let text = loop {
        let (status, text) = h.raw(Method::GET, "/metrics", None, &[]).await;
        assert_eq!(status, StatusCode::OK);
        if text.contains("baton_jobs_completed_total 1") || std::time::Instant::now() > deadline {
            break text;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    };
    assert!(
        text.contains("baton_jobs{queue=\"default\",state=\"completed\"} 1"),
        "{text}"
    );
    assert!(text.contains("baton_jobs_completed_total 1"), "{text}");
    assert!(
        text.contains("baton_job_duration_seconds_count 1"),
        "{text}"
    );
    assert!(
        text.contains("baton_queue_latency_seconds_count 1"),
        "{text}"
    );
    assert!(text.contains("baton_event_subscribers 0"), "{text}");
    assert!(text.contains("baton_pruned_jobs_total 0"), "{text}");
    assert!(text.contains("baton_pruned_events_total 0"), "{text}");
}

#[tokio::test]
async fn bad_requests_each_get_a_status_and_a_message() {
    let h = harness_with(ServerOptions {
        body_limit: 4096,
        ..ServerOptions::default()
    })
    .await;
    h.call(
        Method::POST,
        "/api/jobs",
        Some(json!({"kind": "echo", "id": "done"})),
    )
    .await;
    h.call(Method::GET, "/api/jobs/done/wait?timeout=10s", None)
        .await;
    let big = json!({"kind": "echo", "payload": "x".repeat(10_000)}).to_string();
    let cases: Vec<Case> = vec![
        (
            Method::POST,
            "/api/jobs",
            Some("{\"kind\": ".into()),
            &[],
            StatusCode::BAD_REQUEST,
            "malformed_json",
            "EOF while parsing",
        ),
        (
            Method::POST,
            "/api/jobs",
            Some(r#"{"kind": "echo", "colour": "red"}"#.into()),
            &[],
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
            "unknown field `colour`",
        ),
        (
            Method::POST,
            "/api/jobs",
            Some(r#"{"kind": "echo", "priority": "high"}"#.into()),
            &[],
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
            "priority: invalid type",
        ),
        (
            Method::POST,
            "/api/jobs",
            Some(r#"{"kind": "nope"}"#.into()),
            &[],
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_spec",
            "no handler is registered for \"nope\"",
        ),
        (
            Method::POST,
            "/api/jobs",
            Some(r#"{"kind": "echo", "delay": "-5s"}"#.into()),
            &[],
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_spec",
            "delay: \"-5s\" is negative",
        ),
        (
            Method::POST,
            "/api/jobs",
            Some(big),
            &[],
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            "length limit",
        ),
        (
            Method::POST,
            "/api/jobs",
            Some(r#"{"kind": "echo"}"#.into()),
            &[("content-type", "text/plain")],
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "application/json",
        ),
        (
            Method::GET,
            "/api/jobs/has%20space",
            None,
            &[],
            StatusCode::BAD_REQUEST,
            "bad_request",
            "invalid job id",
        ),
        (
            Method::GET,
            "/api/jobs/missing",
            None,
            &[],
            StatusCode::NOT_FOUND,
            "not_found",
            "job \"missing\" not found",
        ),
        (
            Method::GET,
            "/api/jobs?state=sleeping",
            None,
            &[],
            StatusCode::BAD_REQUEST,
            "bad_request",
            "invalid state \"sleeping\"",
        ),
        (
            Method::GET,
            "/api/jobs?limit=1001",
            None,
            &[],
            StatusCode::BAD_REQUEST,
            "bad_request",
            "from 1 to 1000",
        ),
        (
            Method::GET,
            "/api/jobs?label=nocolon",
            None,
            &[],
            StatusCode::BAD_REQUEST,
            "bad_request",
            "expected key:value",
        ),
        (
            Method::GET,
            "/api/jobs?cursor=abc",
            None,
            &[],
            StatusCode::BAD_REQUEST,
            "bad_request",
            "invalid cursor",
        ),
        (
            Method::GET,
            "/api/jobs?sort=oldest",
            None,
            &[],
            StatusCode::BAD_REQUEST,
            "bad_request",
            "invalid sort \"oldest\": expected created, started or finished",
        ),
        (
            Method::GET,
            "/api/jobs?sort=finished&cursor=created.12",
            None,
            &[],
            StatusCode::BAD_REQUEST,
            "bad_request",
            "cursor \"created.12\" belongs to sort=created, not sort=finished",
        ),
        (
            Method::GET,
            "/api/jobs?q=order%20*-*",
            None,
            &[],
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
            "search term \"*-*\" has no letter or digit: the search finds words",
        ),
        (
            Method::GET,
            "/api/jobs?colour=red",
            None,
            &[],
            StatusCode::BAD_REQUEST,
            "bad_request",
            "unknown field `colour`",
        ),
        (
            Method::GET,
            "/api/jobs/done/wait?timeout=forever",
            None,
            &[],
            StatusCode::BAD_REQUEST,
            "bad_request",
            "invalid timeout",
        ),
        (
            Method::GET,
            "/api/jobs/done/wait?timeout=1h",
            None,
            &[],
            StatusCode::BAD_REQUEST,
            "bad_request",
            "longer than the limit",
        ),
        (
            Method::POST,
            "/api/jobs/done/pause",
            None,
            &[],
            StatusCode::CONFLICT,
            "illegal_transition",
            "cannot pause job \"done\": it is completed",
        ),
        (
            Method::POST,
            "/api/jobs/done/stop?force=maybe",
            None,
            &[],
            StatusCode::BAD_REQUEST,
            "bad_request",
            "invalid force \"maybe\"",
        ),
        (
            Method::POST,
            "/api/jobs/done/cancel",
            None,
            &[],
            StatusCode::CONFLICT,
            "illegal_transition",
            "cannot move a job from completed to cancelled",
        ),
        (
            Method::POST,
            "/api/jobs/status",
            Some(r#"{"ids": "a"}"#.into()),
            &[],
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
            "invalid type",
        ),
        (
            Method::GET,
            "/api/events",
            None,
            &[("last-event-id", "yesterday")],
            StatusCode::BAD_REQUEST,
            "bad_request",
            "invalid Last-Event-ID",
        ),
        (
            Method::GET,
            "/api/events?types=job.dance",
            None,
            &[],
            StatusCode::BAD_REQUEST,
            "bad_request",
            "invalid event type \"job.dance\"",
        ),
        (
            Method::GET,
            "/api/nothing",
            None,
            &[],
            StatusCode::NOT_FOUND,
            "not_found",
            "no such endpoint",
        ),
    ];
    for (method, uri, body, headers, status, code, part) in cases {
        let (got, text) = h.raw(method.clone(), uri, body, headers).await;
        let v: Value = serde_json::from_str(&text)
            .unwrap_or_else(|_| panic!("{method} {uri}: not JSON: {text}"));
        assert_eq!(got, status, "{method} {uri}: {text}");
        assert_eq!(v["error"]["code"], code, "{method} {uri}: {text}");
        let message = v["error"]["message"].as_str().unwrap();
        assert!(
            message.contains(part),
            "{method} {uri}: {message:?} lacks {part:?}"
        );
    }
    // Nothing above reached the store.
    let (_, list) = h.call(Method::GET, "/api/jobs", None).await;
    assert_eq!(list["total"], 1);
}

/// A bad request: method, path, body, headers, then the status, code and part of the
/// message expected.
type Case = (
    Method,
    &'static str,
    Option<String>,
    &'static [(&'static str, &'static str)],
    StatusCode,
    &'static str,
    &'static str,
);

fn auth_options() -> ServerOptions {
    ServerOptions {
        auth: AuthConfig {
            tokens: vec![
                token("viewer", Role::Viewer),
                token("operator", Role::Operator),
                token("admin", Role::Admin),
            ],
            jwt_secret: Some("a-secret-of-enough-length".into()),
        },
        ..ServerOptions::default()
    }
}

#[tokio::test]
async fn roles_are_allowed_and_refused_where_they_should_be() {
    let h = harness_with(auth_options()).await;
    let bearer = |t: &str| format!("Bearer {t}");
    let submit = r#"{"kind": "echo"}"#.to_string();
    let check = |h: &Harness,
                 method: Method,
                 uri: &'static str,
                 body: Option<String>,
                 token: Option<String>,
                 want: StatusCode| {
        let h = h.clone();
        async move {
            let auth = token.map(|t| bearer(&t));
            let headers: Vec<(&str, &str)> = match &auth {
                Some(a) => vec![("authorization", a.as_str())],
                None => vec![],
            };
            let (got, text) = h.raw(method.clone(), uri, body, &headers).await;
            assert_eq!(got, want, "{method} {uri}: {text}");
            text
        }
    };
    let text = check(
        &h,
        Method::GET,
        "/api/jobs",
        None,
        None,
        StatusCode::UNAUTHORIZED,
    )
    .await;
    assert!(text.contains("missing bearer token"), "{text}");
    let text = check(
        &h,
        Method::GET,
        "/api/jobs",
        None,
        Some("wrong".into()),
        StatusCode::UNAUTHORIZED,
    )
    .await;
    assert!(text.contains("invalid token"), "{text}");
    check(&h, Method::GET, "/healthz", None, None, StatusCode::OK).await;
    check(
        &h,
        Method::GET,
        "/api/jobs",
        None,
        Some("viewer-token".into()),
        StatusCode::OK,
    )
    .await;
    let text = check(
        &h,
        Method::POST,
        "/api/jobs",
        Some(submit.clone()),
        Some("viewer-token".into()),
        StatusCode::FORBIDDEN,
    )
    .await;
    assert!(
        text.contains("the viewer role may not POST /api/jobs; it needs the operator role"),
        "{text}"
    );
    let created = check(
        &h,
        Method::POST,
        "/api/jobs",
        Some(submit.clone()),
        Some("operator-token".into()),
        StatusCode::CREATED,
    )
    .await;
    let id = serde_json::from_str::<Value>(&created).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    h.call_as(
        Method::GET,
        &format!("/api/jobs/{id}/wait?timeout=10s"),
        "viewer-token",
    )
    .await;
    let uri: &'static str = Box::leak(format!("/api/jobs/{id}").into_boxed_str());
    check(
        &h,
        Method::DELETE,
        uri,
        None,
        Some("operator-token".into()),
        StatusCode::FORBIDDEN,
    )
    .await;
    check(
        &h,
        Method::DELETE,
        uri,
        None,
        Some("admin-token".into()),
        StatusCode::OK,
    )
    .await;

    // JWTs signed with the configured secret carry their role.
    let exp = chrono::Utc::now().timestamp() + 60;
    let jwt = sign_jwt(
        &json!({"sub": "ci", "role": "operator", "exp": exp}),
        b"a-secret-of-enough-length",
    );
    check(
        &h,
        Method::POST,
        "/api/jobs",
        Some(submit.clone()),
        Some(jwt),
        StatusCode::CREATED,
    )
    .await;
    let forged = sign_jwt(
        &json!({"sub": "ci", "role": "admin", "exp": exp}),
        b"another-secret-entirely",
    );
    check(
        &h,
        Method::GET,
        "/api/jobs",
        None,
        Some(forged),
        StatusCode::UNAUTHORIZED,
    )
    .await;
}

#[tokio::test]
async fn job_creation_is_rate_limited_per_client() {
    let h = harness_with(ServerOptions {
        submit_rate: 1,
        submit_burst: 3,
        ..ServerOptions::default()
    })
    .await;
    for _ in 0..3 {
        let (status, _) = h
            .call(Method::POST, "/api/jobs", Some(json!({"kind": "echo"})))
            .await;
        assert_eq!(status, StatusCode::CREATED);
    }
    let (status, text, headers) = h
        .raw_with_headers(
            Method::POST,
            "/api/jobs",
            Some(json!({"kind": "echo"}).to_string()),
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{text}");
    assert!(text.contains("rate_limited"), "{text}");
    let retry_after: u64 = headers
        .get("retry-after")
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry_after), "{retry_after}");
    // Reads are not limited.
    assert_eq!(
        h.call(Method::GET, "/api/jobs", None).await.0,
        StatusCode::OK
    );
}

#[tokio::test]
async fn openapi_document_lists_the_endpoints() {
    let h = harness().await;
    let (status, doc) = h.call(Method::GET, "/api/openapi.json", None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(doc["openapi"].as_str().unwrap().starts_with('3'), "{doc}");
    let paths = doc["paths"].as_object().unwrap();
    for p in [
        "/api/jobs",
        "/api/jobs/{id}",
        "/api/jobs/{id}/pause",
        "/api/jobs/{id}/wait",
        "/api/jobs/status",
        "/api/events",
        "/api/stats",
    ] {
        assert!(
            paths.contains_key(p),
            "{p} missing from {:?}",
            paths.keys().collect::<Vec<_>>()
        );
    }
    assert!(doc["components"]["schemas"]["JobSpec"].is_object());
}

#[tokio::test]
async fn resources_now_history_limits() {
    let dir = tempfile::TempDir::new().unwrap();
    let store = baton_store::SqliteStore::open(baton_store::SqliteOptions::new(
        dir.path().join("baton.db"),
    ))
    .unwrap();
    let engine = baton_engine::Engine::builder()
        .store(std::sync::Arc::new(store))
        .resources(baton_engine::ResourceOptions {
            disk: Some(dir.path().to_path_buf()),
            ..baton_engine::ResourceOptions::default()
        })
        .build()
        .await
        .unwrap();
    let h = common::harness_of(engine, dir, ServerOptions::default()).await;
    // The first sample is taken at start.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let body = loop {
        let (status, body) = h.call(Method::GET, "/api/resources", None).await;
        assert_eq!(status, StatusCode::OK);
        if !body["now"].is_null() {
            break body;
        }
        assert!(std::time::Instant::now() < deadline, "no sample: {body}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let now = &body["now"];
    assert!(now["memory_total_bytes"].as_u64().unwrap() > 0, "{now}");
    assert!(
        now["memory_used_bytes"].as_u64().unwrap() <= now["memory_total_bytes"].as_u64().unwrap()
    );
    assert!(now["process_rss_bytes"].as_u64().unwrap() > 0, "{now}");
    assert!(
        now["disk_total_bytes"].as_u64().unwrap() > 0,
        "the store's disk: {now}"
    );
    assert!(now["load_1m"].as_f64().unwrap() >= 0.0, "{now}");
    assert!(!body["history"].as_array().unwrap().is_empty());
    assert_eq!(body["limits"]["memory_pct"], 90.0);
    assert_eq!(body["limits"]["disk_free_pct"], 5.0);
    assert!(body["limits"]["load"].is_null(), "not watched by default");
    assert!(body["alerts"].is_array());
}

#[tokio::test]
async fn logs_and_pipelines_endpoints() {
    let h = harness().await;
    let (status, job) = h
        .call(
            Method::POST,
            "/api/jobs",
            Some(json!({"kind": "command", "command": ["sh", "-c", "for i in 1 2 3 4 5; do echo line $i; done"]})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{job}");
    let id = job["id"].as_str().unwrap();
    h.call(
        Method::GET,
        &format!("/api/jobs/{id}/wait?timeout=10s"),
        None,
    )
    .await;
    let (status, logs) = h
        .call(Method::GET, &format!("/api/jobs/{id}/logs?limit=2"), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let lines: Vec<&str> = logs["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["line"].as_str().unwrap())
        .collect();
    assert_eq!(lines, vec!["line 1", "line 2"]);
    let next = logs["next"].as_u64().unwrap();
    let (_, rest) = h
        .call(
            Method::GET,
            &format!("/api/jobs/{id}/logs?after={next}"),
            None,
        )
        .await;
    assert_eq!(rest["lines"].as_array().unwrap().len(), 3);
    let (status, e) = h
        .call(Method::GET, &format!("/api/jobs/{id}/logs?limit=0"), None)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{e}");

    let def = json!({"steps": [{"name": "a", "command": ["true"]}, {"name": "b", "command": ["true"]}], "labels": {"team": "data"}});
    let (status, stored) = h
        .call(Method::PUT, "/api/pipelines/nightly", Some(def))
        .await;
    assert_eq!(status, StatusCode::OK, "{stored}");
    assert_eq!(stored["id"], "nightly");
    let (_, list) = h.call(Method::GET, "/api/pipelines", None).await;
    assert_eq!(list["pipelines"][0]["id"], "nightly");
    let (status, job) = h
        .call(
            Method::POST,
            "/api/jobs",
            Some(json!({"kind": "pipeline", "pipeline": "nightly"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{job}");
    let (_, done) = h
        .call(
            Method::GET,
            &format!("/api/jobs/{}/wait?timeout=10s", job["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(done["state"], "completed", "{done}");
    assert_eq!(done["labels"]["team"], "data");
    let (status, e) = h
        .call(
            Method::PUT,
            "/api/pipelines/other",
            Some(json!({"id": "nightly", "steps": []})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{e}");
    let (status, e) = h
        .call(
            Method::PUT,
            "/api/pipelines/bad",
            Some(json!({"steps": []})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{e}");
    let (status, _) = h.call(Method::DELETE, "/api/pipelines/nightly", None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, e) = h.call(Method::GET, "/api/pipelines/nightly", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("pipeline \"nightly\" not found")
    );
    let (status, _) = h
        .call(
            Method::POST,
            "/api/jobs",
            Some(json!({"kind": "pipeline", "pipeline": "nightly"})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);

    let (_, text) = h.raw(Method::GET, "/metrics", None, &[]).await;
    let batches: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("baton_store_write_batches_total "))
        .unwrap()
        .parse()
        .unwrap();
    let writes: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("baton_store_writes_total "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(batches > 0 && writes >= batches, "{batches} {writes}");
}

#[tokio::test]
async fn cors_allows_the_configured_origins_only() {
    let h = harness_with(ServerOptions {
        cors_origins: vec!["http://localhost:5173".into()],
        ..ServerOptions::default()
    })
    .await;
    let preflight = [
        ("origin", "http://localhost:5173"),
        ("access-control-request-method", "POST"),
    ];
    let (_, _, headers) = h
        .raw_with_headers(Method::OPTIONS, "/api/jobs", None, &preflight)
        .await;
    assert_eq!(
        headers["access-control-allow-origin"],
        "http://localhost:5173"
    );
    let (_, _, headers) = h
        .raw_with_headers(
            Method::GET,
            "/api/jobs",
            None,
            &[("origin", "http://evil.example")],
        )
        .await;
    assert!(headers.get("access-control-allow-origin").is_none());
    // Without configured origins, no CORS headers at all.
    let plain = harness().await;
    let (_, _, headers) = plain
        .raw_with_headers(
            Method::GET,
            "/api/jobs",
            None,
            &[("origin", "http://localhost:5173")],
        )
        .await;
    assert!(headers.get("access-control-allow-origin").is_none());
}

#[tokio::test]
async fn a_repeated_key_in_any_body_is_refused_with_400_naming_it() {
    let h = harness().await;
    let cases: [(Method, &str, &str, &str); 8] = [
        (
            Method::POST,
            "/api/jobs",
            r#"{"kind": "echo", "kind": "fail"}"#,
            r#"duplicate key "kind" at the top level"#,
        ),
        (
            Method::POST,
            "/api/jobs",
            r#"{"kind": "echo", "payload": {"rows": [{"n": 1, "n": 2}]}}"#,
            r#"duplicate key "n" at payload.rows[0]"#,
        ),
        (
            Method::POST,
            "/api/workflows",
            r#"{"id": "twice", "jobs": {"a": {"kind": "echo"}, "a": {"kind": "fail"}}}"#,
            r#"duplicate key "a" at jobs"#,
        ),
        (
            Method::POST,
            "/api/schedules",
            r#"{"id": "s", "job": {"kind": "echo", "labels": {"t": "x", "t": "y"}},
                "trigger": {"type": "cron", "expr": "0 2 * * *"}}"#,
            r#"duplicate key "t" at job.labels"#,
        ),
        (
            Method::PUT,
            "/api/schedules/s",
            r#"{"job": {"kind": "echo"}, "trigger": {"type": "cron", "expr": "0 2 * * *", "expr": "0 3 * * *"}}"#,
            r#"duplicate key "expr" at trigger"#,
        ),
        (
            Method::PUT,
            "/api/pipelines/p",
            r#"{"steps": [{"name": "a", "command": ["true"], "name": "b"}]}"#,
            r#"duplicate key "name" at steps[0]"#,
        ),
        (
            Method::POST,
            "/api/jobs/status",
            r#"{"ids": ["x"], "ids": ["y"]}"#,
            r#"duplicate key "ids" at the top level"#,
        ),
        // An escaped key is the same key.
        (
            Method::POST,
            "/api/jobs",
            r#"{"kind": "echo", "labels": {"team": "a", "te\u0061m": "b"}}"#,
            r#"duplicate key "team" at labels"#,
        ),
    ];
    for (method, uri, body, want) in cases {
        let (status, out) = h.raw(method.clone(), uri, Some(body.into()), &[]).await;
        let out: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(status, StatusCode::BAD_REQUEST, "{method} {uri}: {out}");
        assert_eq!(out["error"]["code"], "bad_request", "{out}");
        assert_eq!(out["error"]["message"], want, "{method} {uri}");
    }
    // Nothing was stored: no workflow, no job, no schedule, no pipeline.
    let (status, _) = h.call(Method::GET, "/api/workflows/twice", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, jobs) = h.call(Method::GET, "/api/jobs", None).await;
    assert_eq!(jobs["jobs"], json!([]), "{jobs}");
    let (status, _) = h.call(Method::GET, "/api/schedules/s", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = h.call(Method::GET, "/api/pipelines/p", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // The same workflow without the repeat is taken.
    let (status, out) = h
        .raw(
            Method::POST,
            "/api/workflows",
            Some(
                r#"{"id": "twice", "jobs": {"a": {"kind": "echo"}, "b": {"kind": "echo"}}}"#.into(),
            ),
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{out}");
}

/// `/api/whoami` names the caller and carries the dashboard's settings to whoever may
/// read; without a valid token it answers 401 like every other endpoint.
#[tokio::test]
async fn whoami_names_the_caller_and_carries_the_dashboards_settings() {
    let h = harness_with(ServerOptions {
        stalled_after: std::time::Duration::from_secs(90),
        ..auth_options()
    })
    .await;
    let (status, me) = h.call_as(Method::GET, "/api/whoami", "viewer-token").await;
    assert_eq!(status, StatusCode::OK, "{me}");
    assert_eq!(
        me,
        json!({"auth": true, "name": "viewer", "role": "viewer", "queues": null,
            "dashboard": {"stalled_after_ms": 90000}})
    );
    for bad in ["", "not-a-token"] {
        let (status, body) = h.call_as(Method::GET, "/api/whoami", bad).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{bad:?}: {body}");
    }
    let (status, me) = harness().await.call(Method::GET, "/api/whoami", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        me["dashboard"]["stalled_after_ms"], 120_000,
        "two minutes unless set"
    );
}
