//! `/api/schedules` in process: the wire shape, every operation, the history with job
//! outcomes, refused input (422 naming the field), and the roles that may use them.

mod common;

use std::time::Duration;

use axum::http::{Method, StatusCode};
use baton_server::{AuthConfig, Role, ServerOptions};
use common::{harness, harness_with, token};
use serde_json::{Value, json};

fn daily() -> Value {
    json!({
        "id": "alfabeta-daily",
        "job": {"kind": "echo", "payload": {"source": "alfabeta"}, "labels": {"team": "data"}},
        "timezone": "Europe/London",
        "trigger": {"type": "cron", "expr": "0 2 * * *"},
    })
}

#[tokio::test]
async fn create_read_list_replace_pause_resume_trigger_and_delete() {
    let h = harness().await;
    let (status, s) = h.call(Method::POST, "/api/schedules", Some(daily())).await;
    assert_eq!(status, StatusCode::CREATED, "{s}");
    for field in [
        "id",
        "job",
        "timezone",
        "trigger",
        "enabled",
        "misfire",
        "misfire_limit",
        "overlap",
        "next_run",
        "last_run",
        "run_count",
        "created_at",
        "updated_at",
    ] {
        assert!(s.get(field).is_some(), "the schedule lacks {field}: {s}");
    }
    assert_eq!(s["id"], "alfabeta-daily");
    assert_eq!(s["trigger"], json!({"type": "cron", "expr": "0 2 * * *"}));
    assert_eq!(s["timezone"], "Europe/London");
    assert_eq!(
        (&s["enabled"], &s["misfire"], &s["overlap"]),
        (&json!(true), &json!("run_once"), &json!("allow"))
    );
    assert_eq!((&s["last_run"], &s["run_count"]), (&Value::Null, &json!(0)));
    let next = s["next_run"].as_str().unwrap();
    assert!(
        next.ends_with("T02:00:00.000Z") || next.ends_with("T01:00:00.000Z"),
        "02:00 in London: {next}"
    );
    assert_eq!(s["job"]["payload"], json!({"source": "alfabeta"}));

    let (status, again) = h.call(Method::POST, "/api/schedules", Some(daily())).await;
    assert_eq!(status, StatusCode::CONFLICT, "{again}");
    assert_eq!(again["error"]["code"], "conflict");
    assert!(
        again["error"]["message"]
            .as_str()
            .unwrap()
            .contains("\"alfabeta-daily\" exists already"),
        "{again}"
    );

    let (status, shown) = h
        .call(Method::GET, "/api/schedules/alfabeta-daily", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(shown, s);

    // PUT replaces (200) or creates (201); the body's id must match the path's.
    let mut weekly = daily();
    weekly["trigger"] = json!({"type": "weekly", "days": ["mon", "fri"], "hour": 9, "minute": 30});
    let (status, replaced) = h
        .call(Method::PUT, "/api/schedules/alfabeta-daily", Some(weekly))
        .await;
    assert_eq!(status, StatusCode::OK, "{replaced}");
    assert_eq!(replaced["trigger"]["days"], json!(["mon", "fri"]));
    assert_eq!(replaced["created_at"], s["created_at"]);
    let (status, created) = h
        .call(
            Method::PUT,
            "/api/schedules/hourly",
            Some(json!({
                "job": {"kind": "echo", "queue": "other"},
                "trigger": {"type": "interval", "every": "1h"},
                "overlap": "skip",
                "misfire": "run_all",
                "misfire_limit": 5,
            })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["id"], "hourly");
    assert_eq!(created["timezone"], "UTC");
    assert_eq!(created["misfire_limit"], 5);
    let (status, mismatch) = h
        .call(
            Method::PUT,
            "/api/schedules/other-id",
            Some(json!({"id": "hourly", "job": {"kind": "echo"}, "trigger": {"type": "manual"}})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{mismatch}");

    let (status, list) = h.call(Method::GET, "/api/schedules?limit=1", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["total"], 2);
    assert_eq!(list["schedules"][0]["id"], "alfabeta-daily");
    let cursor = list["next_cursor"].as_str().unwrap().to_owned();
    let (_, rest) = h
        .call(
            Method::GET,
            &format!("/api/schedules?limit=1&cursor={cursor}"),
            None,
        )
        .await;
    assert_eq!(rest["schedules"][0]["id"], "hourly");
    assert_eq!(rest["next_cursor"], Value::Null);

    // Pause, trigger by hand while paused, resume.
    let (status, paused) = h
        .call(Method::POST, "/api/schedules/alfabeta-daily/pause", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (&paused["enabled"], &paused["next_run"]),
        (&json!(false), &Value::Null)
    );
    let (_, only_paused) = h
        .call(Method::GET, "/api/schedules?enabled=false", None)
        .await;
    assert_eq!(only_paused["total"], 1);

    let (status, fired) = h
        .call(Method::POST, "/api/schedules/alfabeta-daily/trigger", None)
        .await;
    assert_eq!(status, StatusCode::CREATED, "{fired}");
    assert_eq!(fired["fire"]["reason"], "manual");
    assert_eq!(fired["fire"]["action"], "created");
    assert_eq!(fired["fire"]["seq"], 1);
    assert_eq!(fired["job"]["schedule_id"], "alfabeta-daily");
    assert_eq!(fired["job"]["labels"], json!({"team": "data"}));
    assert_eq!(fired["schedule"]["run_count"], 1);
    let job_id = fired["job"]["id"].as_str().unwrap().to_owned();
    assert_eq!(fired["fire"]["job_id"], job_id.as_str());
    let done = h.finished(&job_id).await;
    assert_eq!(done["state"], "completed");
    assert_eq!(done["result"], json!({"source": "alfabeta"}));

    let (status, history) = h
        .call(Method::GET, "/api/schedules/alfabeta-daily/history", None)
        .await;
    assert_eq!(status, StatusCode::OK, "{history}");
    let fire = &history["fires"][0];
    assert_eq!(fire["job_id"], job_id.as_str());
    assert_eq!(fire["outcome"], "completed");
    assert_eq!(fire["reason"], "manual");
    assert!(fire["finished_at"].is_string(), "{fire}");
    assert_eq!(history["next_cursor"], Value::Null);

    let (_, jobs) = h
        .call(Method::GET, "/api/jobs?schedule=alfabeta-daily", None)
        .await;
    assert_eq!(jobs["total"], 1);
    assert_eq!(jobs["jobs"][0]["id"], job_id.as_str());

    let (status, resumed) = h
        .call(Method::POST, "/api/schedules/alfabeta-daily/resume", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(resumed["enabled"], true);
    assert!(resumed["next_run"].is_string());

    let (status, deleted) = h
        .call(Method::DELETE, "/api/schedules/alfabeta-daily", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(deleted, json!({"id": "alfabeta-daily", "deleted": true}));
    let (status, gone) = h
        .call(Method::GET, "/api/schedules/alfabeta-daily", None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(gone["error"]["code"], "not_found");
    assert_eq!(
        gone["error"]["message"],
        "schedule \"alfabeta-daily\" not found"
    );
    let (_, jobs) = h
        .call(Method::GET, "/api/jobs?schedule=alfabeta-daily", None)
        .await;
    assert_eq!(jobs["total"], 1, "its jobs stay");
}

#[tokio::test]
async fn an_interval_schedule_fires_on_the_real_clock() {
    let h = harness().await;
    let (status, s) = h
        .call(
            Method::POST,
            "/api/schedules",
            Some(json!({"id": "every-second", "job": {"kind": "echo"}, "trigger": {"type": "interval", "every": "1s"}})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{s}");
    let history = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let (_, history) = h
                .call(Method::GET, "/api/schedules/every-second/history", None)
                .await;
            if history["fires"].as_array().unwrap().len() >= 2 {
                return history;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("two fires within 20 s");
    let fires = history["fires"].as_array().unwrap();
    // Newest first, one second apart, each with its job.
    let at = |f: &Value| baton_core::time::parse_rfc3339(f["scheduled_for"].as_str().unwrap());
    assert_eq!(at(&fires[0]).unwrap() - at(&fires[1]).unwrap(), 1000);
    for f in fires {
        assert_eq!(f["reason"], "schedule");
        h.finished(f["job_id"].as_str().unwrap()).await;
    }
    h.call(Method::DELETE, "/api/schedules/every-second", None)
        .await;
}

#[tokio::test]
async fn bad_schedules_are_refused_with_422_naming_the_field() {
    let h = harness().await;
    let check = |body: Value, code: &'static str, part: &'static str| {
        let h = h.clone();
        async move {
            let (status, out) = h
                .call(Method::POST, "/api/schedules", Some(body.clone()))
                .await;
            assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {out}");
            assert_eq!(out["error"]["code"], code, "{out}");
            let message = out["error"]["message"].as_str().unwrap();
            assert!(message.contains(part), "{body}: {message} lacks {part}");
        }
    };
    let job = json!({"kind": "echo"});
    check(
        json!({"job": job, "trigger": {"type": "cron", "expr": "*/61 * * * *"}}),
        "invalid_spec",
        "invalid schedule: trigger.expr: invalid cron expression \"*/61 * * * *\": minute step 61 is out of range (1-60)",
    )
    .await;
    check(
        json!({"job": job, "timezone": "Mars/Olympus", "trigger": {"type": "daily", "hour": 2}}),
        "invalid_spec",
        "invalid schedule: timezone: unknown time zone \"Mars/Olympus\"",
    )
    .await;
    check(
        json!({"job": job, "trigger": {"type": "interval", "every": "0s"}}),
        "invalid_spec",
        "invalid schedule: trigger.every: \"0s\" is zero",
    )
    .await;
    check(
        json!({"job": {"kind": "nobody"}, "trigger": {"type": "manual"}}),
        "invalid_spec",
        "invalid schedule: job.kind: no handler is registered for \"nobody\"",
    )
    .await;
    check(
        json!({"job": job, "trigger": {"type": "daily", "hour": 25}}),
        "invalid_spec",
        "trigger.hour: 25 is out of range",
    )
    .await;
    check(
        json!({"job": job, "trigger": {"type": "fortnightly"}}),
        "invalid_request",
        "unknown variant `fortnightly`",
    )
    .await;
    check(
        json!({"job": job, "trigger": {"type": "manual"}, "overlap": "sometimes"}),
        "invalid_request",
        "unknown variant `sometimes`",
    )
    .await;
    let (status, _) = h
        .raw(Method::POST, "/api/schedules", Some("{oops".into()), &[])
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    for (uri, status) in [
        ("/api/schedules/ghost", StatusCode::NOT_FOUND),
        ("/api/schedules/ghost/history", StatusCode::NOT_FOUND),
        ("/api/schedules/a%20b", StatusCode::BAD_REQUEST),
        ("/api/schedules?limit=0", StatusCode::BAD_REQUEST),
        ("/api/schedules?colour=red", StatusCode::BAD_REQUEST),
    ] {
        let (got, out) = h.call(Method::GET, uri, None).await;
        assert_eq!(got, status, "{uri}: {out}");
    }
    for action in ["trigger", "pause", "resume"] {
        let (got, _) = h
            .call(
                Method::POST,
                &format!("/api/schedules/ghost/{action}"),
                None,
            )
            .await;
        assert_eq!(got, StatusCode::NOT_FOUND, "{action}");
    }
    let (got, _) = h.call(Method::DELETE, "/api/schedules/ghost", None).await;
    assert_eq!(got, StatusCode::NOT_FOUND);
    let (_, list) = h.call(Method::GET, "/api/schedules", None).await;
    assert_eq!(list["total"], 0, "nothing was stored");
}

#[tokio::test]
async fn schedules_are_in_the_openapi_document() {
    let h = harness().await;
    let (status, doc) = h.call(Method::GET, "/api/openapi.json", None).await;
    assert_eq!(status, StatusCode::OK);
    for path in [
        "/api/schedules",
        "/api/schedules/{id}",
        "/api/schedules/{id}/trigger",
        "/api/schedules/{id}/pause",
        "/api/schedules/{id}/resume",
        "/api/schedules/{id}/history",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} is documented");
    }
    assert!(doc["paths"]["/api/schedules/{id}"]["put"].is_object());
    assert!(doc["components"]["schemas"]["ScheduleSpec"].is_object());
}

#[tokio::test]
async fn viewers_read_operators_trigger_admins_manage() {
    let h = harness_with(ServerOptions {
        auth: AuthConfig {
            tokens: vec![
                token("viewer", Role::Viewer),
                token("operator", Role::Operator),
                token("admin", Role::Admin),
            ],
            jwt_secret: None,
        },
        ..ServerOptions::default()
    })
    .await;
    let call = |method: Method, uri: &'static str, body: Option<Value>, who: &'static str| {
        let h = h.clone();
        async move {
            let auth = format!("Bearer {who}-token");
            let (status, _) = h
                .raw(
                    method,
                    uri,
                    body.map(|b| b.to_string()),
                    &[("authorization", &auth)],
                )
                .await;
            status
        }
    };
    let spec = json!({"id": "s", "job": {"kind": "echo"}, "trigger": {"type": "manual"}});
    for who in ["viewer", "operator"] {
        assert_eq!(
            call(Method::POST, "/api/schedules", Some(spec.clone()), who).await,
            StatusCode::FORBIDDEN,
            "{who} cannot create"
        );
    }
    assert_eq!(
        call(Method::POST, "/api/schedules", Some(spec), "admin").await,
        StatusCode::CREATED
    );
    assert_eq!(
        call(Method::GET, "/api/schedules/s", None, "viewer").await,
        StatusCode::OK
    );
    assert_eq!(
        call(Method::POST, "/api/schedules/s/trigger", None, "viewer").await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        call(Method::POST, "/api/schedules/s/trigger", None, "operator").await,
        StatusCode::CREATED
    );
    assert_eq!(
        call(Method::POST, "/api/schedules/s/pause", None, "operator").await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        call(Method::DELETE, "/api/schedules/s", None, "admin").await,
        StatusCode::OK
    );
}

#[tokio::test]
async fn a_preview_gives_the_next_runs_and_stores_nothing() {
    let options = ServerOptions {
        auth: AuthConfig {
            tokens: vec![token("watcher", Role::Viewer)],
            ..AuthConfig::default()
        },
        ..ServerOptions::default()
    };
    let h = harness_with(options).await;
    let auth = [("authorization", "Bearer watcher-token")];
    let (status, body) = h
        .raw(
            Method::POST,
            "/api/schedule-preview?count=3",
            Some(daily().to_string()),
            &auth,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let runs: Vec<chrono::DateTime<chrono::Utc>> =
        serde_json::from_str::<Value>(&body).unwrap()["runs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_str().unwrap().parse().unwrap())
            .collect();
    assert_eq!(runs.len(), 3);
    let london: chrono_tz::Tz = "Europe/London".parse().unwrap();
    for (i, run) in runs.iter().enumerate() {
        let local = run.with_timezone(&london);
        assert_eq!(local.format("%H:%M").to_string(), "02:00", "{run}");
        assert!(*run > chrono::Utc::now());
        if i > 0 {
            assert!(*run > runs[i - 1]);
        }
    }
    // A manual schedule has no runs; a once one has one.
    let mut manual = daily();
    manual["trigger"] = json!({"type": "manual"});
    let (_, body) = h
        .raw(
            Method::POST,
            "/api/schedule-preview",
            Some(manual.to_string()),
            &auth,
        )
        .await;
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["runs"],
        json!([])
    );
    // Bad input: the field, as a create names it; a bad count.
    let mut bad = daily();
    bad["trigger"] = json!({"type": "cron", "expr": "61 * * * *"});
    let (status, body) = h
        .raw(
            Method::POST,
            "/api/schedule-preview",
            Some(bad.to_string()),
            &auth,
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(body.contains("trigger.expr"), "{body}");
    for count in ["0", "101", "x"] {
        let (status, body) = h
            .raw(
                Method::POST,
                &format!("/api/schedule-preview?count={count}"),
                Some(daily().to_string()),
                &auth,
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{count}: {body}");
    }
    // Nothing was stored.
    let (_, list) = h
        .call_as(Method::GET, "/api/schedules", "watcher-token")
        .await;
    assert_eq!(list["total"], 0, "{list}");
}
