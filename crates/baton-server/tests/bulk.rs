//! `POST /api/jobs/bulk`: one control action on many jobs, through the whole router
//! over a real SQLite store.

mod common;

use axum::http::{Method, StatusCode};
use baton_core::JobSpec;
use baton_server::{AuthConfig, Role, ServerOptions, TokenEntry, hash_token};
use common::{Harness, harness, harness_with, token};
use serde_json::{Value, json};

/// Stores `n` echo jobs in `queue` in one write; their ids, in order.
async fn submit(h: &Harness, queue: &str, n: usize) -> Vec<String> {
    let specs: Vec<JobSpec> = (0..n)
        .map(|_| serde_json::from_value(json!({"kind": "echo", "queue": queue})).unwrap())
        .collect();
    let mut ids = Vec::with_capacity(n);
    for chunk in specs.chunks(1000) {
        let out = h.engine.submit_many(chunk.to_vec()).await.unwrap();
        ids.extend(out.into_iter().map(|s| s.job.id.to_string()));
    }
    ids
}

async fn pause_queue(h: &Harness, queue: &str) {
    let (status, body) = h
        .call(Method::POST, &format!("/api/queues/{queue}/pause"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

/// How many jobs the list filter `query` matches now.
async fn count(h: &Harness, query: &str) -> u64 {
    let (status, list) = h
        .call(Method::GET, &format!("/api/jobs?{query}&limit=1"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{list}");
    list["total"].as_u64().unwrap()
}

async fn bulk(h: &Harness, body: Value) -> (StatusCode, Value) {
    h.call(Method::POST, "/api/jobs/bulk", Some(body)).await
}

async fn bulk_as(h: &Harness, token: &str, body: Value) -> (StatusCode, Value) {
    let auth = format!("Bearer {token}");
    let (status, text) = h
        .raw(
            Method::POST,
            "/api/jobs/bulk",
            Some(body.to_string()),
            &[("authorization", &auth)],
        )
        .await;
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

async fn state(h: &Harness, id: &str) -> String {
    h.engine.get(id).await.unwrap().state.as_str().to_owned()
}

async fn event_types(h: &Harness, id: &str) -> Vec<String> {
    let (_, events) = h
        .call(Method::GET, &format!("/api/jobs/{id}/events"), None)
        .await;
    events["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn by_ids_illegal_transitions_and_unknown_ids_are_counted_and_not_applied() {
    let h = harness().await;
    pause_queue(&h, "other").await;
    let waiting = submit(&h, "other", 5).await;
    let finished = submit(&h, "default", 2).await;
    for id in &finished {
        h.wait_state(id, "completed").await;
    }
    let mut ids: Vec<&str> = waiting
        .iter()
        .chain(&finished)
        .map(String::as_str)
        .collect();
    ids.push("no-such-job");
    ids.push(&waiting[0]); // a repeated id counts once
    let (status, out) = bulk(&h, json!({"action": "cancel", "ids": ids})).await;
    assert_eq!(status, StatusCode::OK, "{out}");
    assert_eq!(out["action"], "cancel");
    assert_eq!(out["matched"], 8, "{out}");
    assert_eq!(out["done"], 5, "{out}");
    assert_eq!(
        out["refused"],
        json!({"illegal_transition": 2, "not_found": 1}),
        "{out}"
    );
    assert_eq!(out["capped"], false);
    assert_eq!(out["limit"], 100_000);
    let errors = out["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 3, "{out}");
    assert!(
        errors
            .iter()
            .any(|e| e["id"] == "no-such-job" && e["code"] == "not_found"),
        "{out}"
    );
    let illegal = errors
        .iter()
        .find(|e| e["code"] == "illegal_transition")
        .unwrap();
    assert!(
        illegal["message"].as_str().unwrap().contains("completed"),
        "the refusal says why: {illegal}"
    );
    for id in &waiting {
        assert_eq!(state(&h, id).await, "cancelled");
        assert!(
            event_types(&h, id)
                .await
                .contains(&"job.cancelled".to_owned())
        );
    }
    for id in &finished {
        assert_eq!(
            state(&h, id).await,
            "completed",
            "an illegal cancel is not applied"
        );
        assert!(
            !event_types(&h, id)
                .await
                .contains(&"job.cancelled".to_owned())
        );
    }

    // Retry the cancelled ones (and a completed one); the queue is paused, so they wait.
    let mut ids = waiting.clone();
    ids.push(finished[0].clone());
    let (status, out) = bulk(
        &h,
        json!({"action": "retry", "ids": ids, "from_checkpoint": true}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{out}");
    assert_eq!(
        (out["matched"].as_u64(), out["done"].as_u64()),
        (Some(6), Some(6)),
        "{out}"
    );
    for id in &waiting {
        assert_eq!(state(&h, id).await, "queued");
    }
    // A retry of a waiting job is illegal: counted, not applied.
    let (_, out) = bulk(&h, json!({"action": "retry", "ids": [waiting[0]]})).await;
    assert_eq!(out["done"], 0);
    assert_eq!(out["refused"], json!({"illegal_transition": 1}));
    assert_eq!(state(&h, &waiting[0]).await, "queued");
    // An empty list reaches nothing.
    let (status, out) = bulk(&h, json!({"action": "cancel", "ids": []})).await;
    assert_eq!(status, StatusCode::OK, "{out}");
    assert_eq!(
        (out["matched"].as_u64(), out["done"].as_u64()),
        (Some(0), Some(0))
    );
}

#[tokio::test]
async fn a_filter_whose_set_shrinks_as_it_acts_reaches_every_job_once() {
    let h = harness().await;
    pause_queue(&h, "other").await;
    let ids = submit(&h, "other", 2_500).await;
    // Jobs the filter does not match: another queue's, finished.
    let others = submit(&h, "default", 3).await;
    for id in &others {
        h.wait_state(id, "completed").await;
    }
    // A set that stays as it is (every retry refused) is walked once, page by page.
    let (status, out) = bulk(
        &h,
        json!({"action": "retry", "filter": {"state": "queued"}}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{out}");
    assert_eq!(out["matched"], 2_500, "{out}");
    assert_eq!(
        out["refused"],
        json!({"illegal_transition": 2_500}),
        "{out}"
    );
    assert_eq!(
        out["errors"].as_array().unwrap().len(),
        20,
        "the first 20 are quoted"
    );
    assert_eq!(count(&h, "state=queued&queue=other").await, 2_500);

    let (status, out) = bulk(
        &h,
        json!({"action": "cancel", "filter": {"state": "queued"}}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{out}");
    assert_eq!(out["matched"], 2_500, "{out}");
    assert_eq!(out["done"], 2_500, "{out}");
    assert_eq!(out["refused"], json!({}), "{out}");
    assert_eq!(out["capped"], false);
    assert_eq!(count(&h, "state=cancelled&queue=other").await, 2_500);
    assert_eq!(count(&h, "state=queued").await, 0);
    assert_eq!(count(&h, "state=completed&queue=default").await, 3);
    // Each was cancelled once: one job.cancelled event each.
    for id in ids.iter().step_by(97) {
        let events = event_types(&h, id).await;
        assert_eq!(
            events.iter().filter(|t| *t == "job.cancelled").count(),
            1,
            "{id}: {events:?}"
        );
    }

    // Retrying by state moves every job out of the filter too; an alias works.
    let (status, out) = bulk(
        &h,
        json!({"action": "retry", "filter": {"state": "stopped", "queue": "other"}}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{out}");
    assert_eq!(
        (out["matched"].as_u64(), out["done"].as_u64()),
        (Some(2_500), Some(2_500)),
        "{out}"
    );
    assert_eq!(count(&h, "state=queued&queue=other").await, 2_500);

    // Delete by label and kind: the filters of the list apply.
    let (status, out) = bulk(
        &h,
        json!({"action": "delete", "filter": {"queue": "default", "kind": "echo", "q": &others[0]}}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{out}");
    assert_eq!(
        (out["matched"].as_u64(), out["done"].as_u64()),
        (Some(1), Some(1)),
        "{out}"
    );
    assert_eq!(state(&h, &others[0]).await, "deleted");
    assert_eq!(state(&h, &others[1]).await, "completed");
}

#[tokio::test]
async fn a_filter_action_stops_at_the_bulk_limit_and_says_so() {
    let h = harness_with(ServerOptions {
        bulk_limit: 10,
        ..ServerOptions::default()
    })
    .await;
    pause_queue(&h, "other").await;
    let ids = submit(&h, "other", 25).await;
    let cancel = json!({"action": "cancel", "filter": {"state": "queued", "queue": "other"}});
    for (matched, capped, left) in [(10, true, 15), (10, true, 5), (5, false, 0)] {
        let (status, out) = bulk(&h, cancel.clone()).await;
        assert_eq!(status, StatusCode::OK, "{out}");
        assert_eq!(out["matched"], matched, "{out}");
        assert_eq!(out["done"], matched, "{out}");
        assert_eq!(out["capped"], capped, "{out}");
        assert_eq!(out["limit"], 10);
        assert_eq!(count(&h, "state=queued&queue=other").await, left);
    }
    // Exactly the limit matching is not capped.
    let (_, out) = bulk(
        &h,
        json!({"action": "retry", "filter": {"state": "cancelled"}}),
    )
    .await;
    assert_eq!(
        (out["matched"].as_u64(), out["capped"].as_bool()),
        (Some(10), Some(true))
    );
    let (_, out) = bulk(&h, cancel.clone()).await;
    assert_eq!(
        (out["matched"].as_u64(), out["capped"].as_bool()),
        (Some(10), Some(false))
    );
    // More ids than the limit: refused whole, nothing changed.
    let (status, out) = bulk(&h, json!({"action": "retry", "ids": ids[..11]})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{out}");
    assert!(
        out["error"]["message"]
            .as_str()
            .unwrap()
            .contains("11 ids given; at most 10"),
        "{out}"
    );
    assert_eq!(count(&h, "state=cancelled").await, 25);
}

#[tokio::test]
async fn pause_resume_and_stop_in_bulk() {
    let h = harness().await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        let (_, job) = h
            .call(Method::POST, "/api/jobs", Some(json!({"kind": "looper"})))
            .await;
        ids.push(job["id"].as_str().unwrap().to_owned());
    }
    for id in &ids {
        h.wait_state(id, "running").await;
    }
    let (_, out) = bulk(&h, json!({"action": "pause", "ids": ids})).await;
    assert_eq!(out["done"], 3, "{out}");
    for id in &ids {
        assert_eq!(state(&h, id).await, "paused");
    }
    let (_, out) = bulk(&h, json!({"action": "pause", "ids": ids})).await;
    assert_eq!(out["refused"], json!({"illegal_transition": 3}), "{out}");
    let (_, out) = bulk(
        &h,
        json!({"action": "resume", "filter": {"state": "paused"}}),
    )
    .await;
    assert_eq!(out["done"], 3, "{out}");
    for id in &ids {
        assert_eq!(state(&h, id).await, "running");
    }
    let (_, out) = bulk(&h, json!({"action": "stop", "ids": ids, "force": true})).await;
    assert_eq!(out["done"], 3, "{out}");
    for id in &ids {
        h.wait_state(id, "cancelled").await;
    }
}

#[tokio::test]
async fn bad_requests_are_refused_naming_the_problem_and_change_nothing() {
    let h = harness().await;
    pause_queue(&h, "other").await;
    let ids = submit(&h, "other", 2).await;
    let check = |body: Value, status: StatusCode, says: &'static str| {
        let h = h.clone();
        async move {
            let (got, out) = bulk(&h, body.clone()).await;
            assert_eq!(got, status, "{body}: {out}");
            let message = out["error"]["message"].as_str().unwrap_or_default();
            assert!(message.contains(says), "{body}: {message}");
        }
    };
    check(
        json!({"action": "explode", "ids": ids}),
        StatusCode::BAD_REQUEST,
        "invalid action \"explode\": expected one of cancel, retry, pause, resume, stop, delete",
    )
    .await;
    check(
        json!({"action": "cancel", "ids": ids, "filter": {"state": "queued"}}),
        StatusCode::BAD_REQUEST,
        "either ids or filter, not both",
    )
    .await;
    check(
        json!({"action": "cancel"}),
        StatusCode::BAD_REQUEST,
        "give the jobs to act on: ids",
    )
    .await;
    check(
        json!({"action": "cancel", "filter": {"state": "queued,bogus"}}),
        StatusCode::BAD_REQUEST,
        "invalid state \"bogus\"",
    )
    .await;
    check(
        json!({"action": "cancel", "filter": {"label": "nocolon"}}),
        StatusCode::BAD_REQUEST,
        "invalid label \"nocolon\": expected key:value",
    )
    .await;
    check(
        json!({"action": "cancel", "ids": [ids[0], "bad id/with slash"]}),
        StatusCode::BAD_REQUEST,
        "ids[1]: invalid job id",
    )
    .await;
    check(
        json!({"action": "cancel", "ids": ids, "from_checkpoint": true}),
        StatusCode::BAD_REQUEST,
        "from_checkpoint applies to the retry action only",
    )
    .await;
    check(
        json!({"action": "retry", "ids": ids, "force": false}),
        StatusCode::BAD_REQUEST,
        "force applies to the stop action only",
    )
    .await;
    check(
        json!({"action": "cancel", "filter": {"states": "queued"}}),
        StatusCode::UNPROCESSABLE_ENTITY,
        "unknown field `states`",
    )
    .await;
    check(
        json!({"action": "cancel", "ids": "all"}),
        StatusCode::UNPROCESSABLE_ENTITY,
        "ids",
    )
    .await;
    let (status, _) = h
        .raw(
            Method::POST,
            "/api/jobs/bulk",
            Some(r#"{"action": "cancel", "action": "delete", "ids": []}"#.into()),
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "a repeated key");
    for id in &ids {
        assert_eq!(state(&h, id).await, "queued", "nothing was changed");
    }
}

#[tokio::test]
async fn roles_decide_who_may_act_and_narrowed_tokens_reach_their_queues_only() {
    let mut narrowed = token("other-ops", Role::Operator);
    narrowed.queues = Some(vec!["other".into()]);
    let h = harness_with(ServerOptions {
        auth: AuthConfig {
            tokens: vec![
                token("viewer", Role::Viewer),
                token("operator", Role::Operator),
                token("admin", Role::Admin),
                narrowed,
                TokenEntry {
                    name: "other-admin".into(),
                    sha256: hash_token("other-admin-token"),
                    role: Role::Admin,
                    queues: Some(vec!["other".into()]),
                },
            ],
            jwt_secret: None,
        },
        ..ServerOptions::default()
    })
    .await;
    h.engine.pause_queue("other").await.unwrap();
    h.engine.pause_queue("default").await.unwrap();
    let mine = submit(&h, "other", 3).await;
    let theirs = submit(&h, "default", 2).await;
    let all: Vec<&String> = mine.iter().chain(&theirs).collect();

    // A viewer may not act at all; an operator may not delete.
    let (status, out) = bulk_as(&h, "viewer-token", json!({"action": "cancel", "ids": all})).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{out}");
    let (status, out) = bulk_as(
        &h,
        "operator-token",
        json!({"action": "delete", "filter": {"state": "queued"}}),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{out}");
    assert_eq!(
        out["error"]["message"],
        "the operator role may not delete jobs; it needs the admin role"
    );
    for id in &all {
        assert_eq!(state(&h, id).await, "queued", "nothing changed");
    }

    // A narrowed token: ids of other queues are refused one by one as forbidden.
    let (status, out) = bulk_as(
        &h,
        "other-ops-token",
        json!({"action": "cancel", "ids": all}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{out}");
    assert_eq!(out["done"], 3, "{out}");
    assert_eq!(out["refused"], json!({"forbidden": 2}), "{out}");
    for id in &mine {
        assert_eq!(state(&h, id).await, "cancelled");
    }
    for id in &theirs {
        assert_eq!(state(&h, id).await, "queued");
    }
    // A filter must name one of its queues.
    for filter in [json!({"state": "cancelled"}), json!({"queue": "default"})] {
        let (status, out) = bulk_as(
            &h,
            "other-ops-token",
            json!({"action": "retry", "filter": filter}),
        )
        .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{filter}: {out}");
        assert!(
            out["error"]["message"]
                .as_str()
                .unwrap()
                .contains("a bulk filter must name one of them in queue"),
            "{out}"
        );
    }
    let (status, out) = bulk_as(
        &h,
        "other-ops-token",
        json!({"action": "retry", "filter": {"queue": "other", "state": "cancelled"}}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{out}");
    assert_eq!(out["done"], 3, "{out}");
    // A narrowed admin deletes only its queue's jobs.
    let (status, out) = bulk_as(
        &h,
        "other-admin-token",
        json!({"action": "cancel", "ids": all}),
    )
    .await;
    assert_eq!(
        (status, out["done"].as_u64()),
        (StatusCode::OK, Some(3)),
        "{out}"
    );
    let (status, out) = bulk_as(
        &h,
        "other-admin-token",
        json!({"action": "delete", "ids": all}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{out}");
    assert_eq!(out["done"], 3, "{out}");
    assert_eq!(out["refused"], json!({"forbidden": 2}), "{out}");
    // The operator cancels; the admin deletes everything the filter matches.
    let (_, out) = bulk_as(
        &h,
        "operator-token",
        json!({"action": "cancel", "filter": {"queue": "default"}}),
    )
    .await;
    assert_eq!(out["done"], 2, "{out}");
    let (status, out) = bulk_as(
        &h,
        "admin-token",
        json!({"action": "delete", "filter": {"state": "cancelled"}}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{out}");
    assert_eq!(out["done"], 2, "{out}");
    for id in &all {
        assert_eq!(state(&h, id).await, "deleted");
    }
}
