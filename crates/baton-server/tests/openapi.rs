//! The OpenAPI document tells the truth: for a table of representative requests, the
//! status each one is answered with is listed for its operation, with the error body
//! the document promises. A new status, or a status moved, fails here until the
//! document says so.

mod common;

use axum::http::{Method, StatusCode};
use baton_server::{AuthConfig, Role, ServerOptions};
use common::{Harness, harness_with, token};
use serde_json::{Value, json};

/// One request and the status it must be answered with.
struct Case {
    method: Method,
    /// The operation's path in the document.
    template: &'static str,
    uri: String,
    body: Option<String>,
    headers: Vec<(&'static str, String)>,
    expected: StatusCode,
}

fn case(method: Method, template: &'static str, uri: &str, expected: u16) -> Case {
    Case {
        method,
        template,
        uri: uri.into(),
        body: None,
        headers: Vec::new(),
        expected: StatusCode::from_u16(expected).unwrap(),
    }
}

impl Case {
    fn body(mut self, body: impl Into<String>) -> Case {
        self.body = Some(body.into());
        self
    }

    fn header(mut self, name: &'static str, value: impl Into<String>) -> Case {
        self.headers.push((name, value.into()));
        self
    }
}

async fn document(h: &Harness) -> Value {
    let (status, doc) = h.call(Method::GET, "/api/openapi.json", None).await;
    assert_eq!(status, StatusCode::OK);
    doc
}

/// A response object of the document, following a `$ref` into its components.
fn resolve<'a>(doc: &'a Value, response: &'a Value) -> &'a Value {
    match response["$ref"].as_str() {
        Some(r) => {
            let name = r
                .strip_prefix("#/components/responses/")
                .unwrap_or_else(|| panic!("unexpected $ref {r}"));
            &doc["components"]["responses"][name]
        }
        None => response,
    }
}

/// Sends the request, checks its status, and checks that the document lists that
/// status for the operation, with the shared error body for an error.
async fn check(h: &Harness, doc: &Value, c: Case) {
    let headers: Vec<(&str, &str)> = c.headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (status, text, response_headers) = h
        .raw_with_headers(c.method.clone(), &c.uri, c.body.clone(), &headers)
        .await;
    let what = format!("{} {}", c.method, c.uri);
    assert_eq!(status, c.expected, "{what}: {text}");
    let method = c.method.as_str().to_lowercase();
    let op = &doc["paths"][c.template][&method];
    assert!(op.is_object(), "{method} {} is not documented", c.template);
    let code = status.as_u16().to_string();
    let documented = op["responses"].get(&code).unwrap_or_else(|| {
        panic!(
            "{what} answered {code}, which the document does not list for {method} {} (it lists {:?})",
            c.template,
            op["responses"].as_object().unwrap().keys().collect::<Vec<_>>()
        )
    });
    if status.is_client_error() || status.is_server_error() {
        let documented = resolve(doc, documented);
        assert_eq!(
            documented["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/ErrorBody",
            "{what}: the {code} of {method} {} is not documented as an ErrorBody",
            c.template
        );
        assert_eq!(
            response_headers["content-type"], "application/json",
            "{what}: {text}"
        );
        let body: Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{what}: {e}: {text}"));
        assert!(body["error"]["code"].is_string(), "{what}: {body}");
        assert!(body["error"]["message"].is_string(), "{what}: {body}");
        for name in documented["headers"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, _)| k)
        {
            if matches!(name.as_str(), "WWW-Authenticate") {
                assert!(
                    response_headers.contains_key(name.as_str()),
                    "{what}: no {name} header"
                );
            }
        }
    }
}

#[tokio::test]
async fn answered_statuses_are_documented() {
    let h = harness_with(ServerOptions {
        body_limit: 4096,
        ..ServerOptions::default()
    })
    .await;
    let doc = document(&h).await;
    let (status, job) = h
        .call(Method::POST, "/api/jobs", Some(json!({"kind": "echo"})))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let done = job["id"].as_str().unwrap().to_owned();
    h.wait_state(&done, "completed").await;
    let (status, _) = h
        .call(
            Method::POST,
            "/api/schedules",
            Some(json!({"id": "s", "job": {"kind": "echo"}, "trigger": {"type": "manual"}})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);

    let too_many_ids = json!({"ids": vec!["x"; 1001]}).to_string();
    let too_big = json!({"kind": "echo", "payload": "x".repeat(5000)}).to_string();
    let cases = [
        // Malformed ids, queries and headers.
        case(Method::GET, "/api/jobs/{id}", "/api/jobs/bad%20id", 400),
        case(Method::GET, "/api/jobs/{id}", "/api/jobs/%FF", 400),
        case(
            Method::POST,
            "/api/jobs/{id}/pause",
            "/api/jobs/a%2Fb/pause",
            400,
        ),
        case(
            Method::GET,
            "/api/workflows/{id}",
            "/api/workflows/bad%20id",
            400,
        ),
        case(
            Method::GET,
            "/api/schedules/{id}",
            "/api/schedules/bad%20id",
            400,
        ),
        case(Method::GET, "/api/jobs", "/api/jobs?unknown=1", 400),
        case(Method::GET, "/api/jobs", "/api/jobs?limit=0", 400),
        case(
            Method::GET,
            "/api/jobs/{id}/logs",
            "/api/jobs/x/logs?limit=abc",
            400,
        ),
        case(
            Method::POST,
            "/api/jobs/{id}/stop",
            "/api/jobs/x/stop?force=maybe",
            400,
        ),
        case(
            Method::GET,
            "/api/schedules",
            "/api/schedules?enabled=perhaps",
            400,
        ),
        case(
            Method::GET,
            "/api/events",
            "/api/events?types=job.bogus",
            400,
        ),
        case(Method::GET, "/api/workflows", "/api/workflows", 200),
        case(
            Method::GET,
            "/api/workflows",
            "/api/workflows?cursor=nope",
            400,
        ),
        case(
            Method::GET,
            "/api/jobs/{id}/events",
            "/api/jobs/x/events",
            404,
        ),
        case(
            Method::GET,
            "/api/jobs/{id}/events",
            &format!("/api/jobs/{done}/events"),
            400,
        )
        .header("accept", "text/event-stream")
        .header("last-event-id", "not-a-number"),
        case(
            Method::GET,
            "/api/jobs/{id}/wait",
            "/api/jobs/x/wait?timeout=1h",
            400,
        ),
        // Bodies: not JSON, malformed, the wrong shape, too big, too many ids.
        case(Method::POST, "/api/jobs", "/api/jobs", 415)
            .body(r#"{"kind": "echo"}"#)
            .header("content-type", "text/plain"),
        case(Method::POST, "/api/jobs", "/api/jobs", 400).body("{"),
        case(Method::POST, "/api/jobs", "/api/jobs", 422).body(r#"{"kind": 5}"#),
        case(Method::POST, "/api/jobs", "/api/jobs", 422).body(r#"{"kind": "no-such-kind"}"#),
        case(Method::POST, "/api/jobs", "/api/jobs", 413).body(too_big),
        case(Method::POST, "/api/jobs/status", "/api/jobs/status", 400).body(too_many_ids),
        case(Method::POST, "/api/jobs/bulk", "/api/jobs/bulk", 200)
            .body(r#"{"action": "cancel", "ids": ["no-such-job"]}"#),
        case(Method::POST, "/api/jobs/bulk", "/api/jobs/bulk", 400)
            .body(r#"{"action": "cancel", "filter": {"state": "bogus"}}"#),
        case(Method::POST, "/api/jobs/bulk", "/api/jobs/bulk", 422)
            .body(r#"{"action": "cancel", "ids": 5}"#),
        case(Method::POST, "/api/jobs/bulk", "/api/jobs/bulk", 415)
            .body("{}")
            .header("content-type", "text/plain"),
        case(Method::POST, "/api/jobs/batch", "/api/jobs/batch", 400).body(r#"{"jobs": []}"#),
        case(Method::POST, "/api/jobs/batch", "/api/jobs/batch", 422)
            .body(r#"{"jobs": [{"kind": "echo"}, {"kind": "no-such-kind"}]}"#),
        case(Method::POST, "/api/jobs/batch", "/api/jobs/batch", 201)
            .body(r#"{"jobs": [{"id": "batched", "kind": "echo"}]}"#),
        case(Method::POST, "/api/jobs/batch", "/api/jobs/batch", 200)
            .body(r#"{"jobs": [{"id": "batched", "kind": "echo"}]}"#),
        case(Method::POST, "/api/workflows", "/api/workflows", 415)
            .body("{}")
            .header("content-type", "application/x-www-form-urlencoded"),
        case(Method::PUT, "/api/pipelines/{id}", "/api/pipelines/p", 422)
            .body(r#"{"id": "q", "steps": [{"name": "a", "command": ["true"]}]}"#),
        // Unknown things.
        case(Method::GET, "/api/jobs/{id}", "/api/jobs/no-such-job", 404),
        case(
            Method::POST,
            "/api/jobs/{id}/pause",
            "/api/jobs/no-such-job/pause",
            404,
        ),
        case(
            Method::DELETE,
            "/api/jobs/{id}",
            "/api/jobs/no-such-job",
            404,
        ),
        case(
            Method::GET,
            "/api/jobs/{id}/checkpoints",
            "/api/jobs/no-such-job/checkpoints",
            404,
        ),
        case(
            Method::GET,
            "/api/jobs/{id}/dependents",
            "/api/jobs/no-such-job/dependents",
            404,
        ),
        case(
            Method::GET,
            "/api/workflows/{id}",
            "/api/workflows/no-such-workflow",
            404,
        ),
        case(
            Method::POST,
            "/api/workflows/{id}/cancel",
            "/api/workflows/no-such-workflow/cancel",
            404,
        ),
        case(
            Method::GET,
            "/api/schedules/{id}",
            "/api/schedules/no-such-schedule",
            404,
        ),
        case(
            Method::POST,
            "/api/schedules/{id}/trigger",
            "/api/schedules/no-such-schedule/trigger",
            404,
        ),
        case(
            Method::GET,
            "/api/pipelines/{id}",
            "/api/pipelines/no-such-pipeline",
            404,
        ),
        case(
            Method::DELETE,
            "/api/pipelines/{id}",
            "/api/pipelines/no-such-pipeline",
            404,
        ),
        case(
            Method::POST,
            "/api/queues/{name}/pause",
            "/api/queues/no-such-queue/pause",
            404,
        ),
        // Illegal transitions and conflicts.
        case(
            Method::POST,
            "/api/jobs/{id}/pause",
            &format!("/api/jobs/{done}/pause"),
            409,
        ),
        case(
            Method::POST,
            "/api/jobs/{id}/cancel",
            &format!("/api/jobs/{done}/cancel"),
            409,
        ),
        case(Method::POST, "/api/schedules", "/api/schedules", 409)
            .body(r#"{"id": "s", "job": {"kind": "echo"}, "trigger": {"type": "manual"}}"#),
        case(
            Method::PATCH,
            "/api/jobs/{id}/cancel",
            &format!("/api/jobs/{done}/cancel"),
            409,
        ),
        // And what succeeds.
        case(Method::PUT, "/api/pipelines/{id}", "/api/pipelines/p", 200)
            .body(r#"{"steps": [{"name": "a", "command": ["true"]}]}"#),
        case(Method::GET, "/api/pipelines/{id}", "/api/pipelines/p", 200),
        case(
            Method::GET,
            "/api/jobs/{id}",
            &format!("/api/jobs/{done}"),
            200,
        ),
        case(
            Method::GET,
            "/api/jobs/{id}/wait",
            &format!("/api/jobs/{done}/wait"),
            200,
        ),
        case(Method::GET, "/healthz", "/healthz", 200),
    ];
    for c in cases {
        check(&h, &doc, c).await;
    }
}

#[tokio::test]
async fn auth_and_rate_limit_statuses_are_documented() {
    let h = harness_with(ServerOptions {
        auth: AuthConfig {
            tokens: vec![
                token("viewer", Role::Viewer),
                token("operator", Role::Operator),
            ],
            jwt_secret: None,
        },
        submit_rate: 1,
        submit_burst: 1,
        ..ServerOptions::default()
    })
    .await;
    let (status, doc) = h
        .call_as(Method::GET, "/api/openapi.json", "viewer-token")
        .await;
    assert_eq!(status, StatusCode::OK);
    let viewer = "Bearer viewer-token";
    let operator = "Bearer operator-token";
    let submit = r#"{"kind": "echo"}"#;
    let cases = [
        case(Method::GET, "/api/jobs", "/api/jobs", 401),
        case(Method::GET, "/api/stats", "/api/stats", 401).header("authorization", "Bearer wrong"),
        case(Method::POST, "/api/jobs", "/api/jobs", 403)
            .body(submit)
            .header("authorization", viewer),
        case(Method::DELETE, "/api/jobs/{id}", "/api/jobs/x", 403)
            .header("authorization", operator),
        case(Method::POST, "/api/jobs/bulk", "/api/jobs/bulk", 403)
            .body(r#"{"action": "cancel", "ids": []}"#)
            .header("authorization", viewer),
        case(Method::POST, "/api/jobs/bulk", "/api/jobs/bulk", 403)
            .body(r#"{"action": "delete", "ids": []}"#)
            .header("authorization", operator),
        case(Method::POST, "/api/jobs/bulk", "/api/jobs/bulk", 401)
            .body(r#"{"action": "cancel", "ids": []}"#),
        case(Method::PUT, "/api/schedules/{id}", "/api/schedules/x", 403)
            .body("{}")
            .header("authorization", operator),
        case(Method::POST, "/api/jobs", "/api/jobs", 201)
            .body(submit)
            .header("authorization", operator),
        case(Method::POST, "/api/jobs", "/api/jobs", 429)
            .body(submit)
            .header("authorization", operator),
        case(Method::POST, "/api/jobs/batch", "/api/jobs/batch", 429)
            .body(r#"{"jobs": [{"kind": "echo"}]}"#)
            .header("authorization", operator),
        case(Method::POST, "/api/jobs/batch", "/api/jobs/batch", 403)
            .body(r#"{"jobs": [{"kind": "echo"}]}"#)
            .header("authorization", viewer),
        case(Method::GET, "/healthz", "/healthz", 200),
        case(Method::GET, "/api/jobs", "/api/jobs", 403).header("host", "attacker.example"),
        case(
            Method::POST,
            "/api/jobs/{id}/pause",
            "/api/jobs/x/pause",
            403,
        )
        .header("origin", "http://evil.example"),
    ];
    for c in cases {
        check(&h, &doc, c).await;
    }
    // Ten failed authentications (one above), then 429.
    for _ in 0..9 {
        let (status, _) = h.call_as(Method::GET, "/api/jobs", "wrong").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    check(
        &h,
        &doc,
        case(Method::GET, "/api/jobs", "/api/jobs", 429).header("authorization", viewer),
    )
    .await;
    for path in ["/api/jobs", "/api/jobs/batch"] {
        let rate_limited = resolve(&doc, &doc["paths"][path]["post"]["responses"]["429"]);
        assert!(
            rate_limited["headers"]["Retry-After"].is_object(),
            "{path}: {rate_limited}"
        );
    }
    // Health checks need no token and take any Host.
    let health = &doc["paths"]["/healthz"]["get"]["responses"];
    assert!(
        ["401", "403", "429"]
            .iter()
            .all(|s| health.get(s).is_none()),
        "{health}"
    );
}

/// The document's own rules: unique operation ids, an error body for every error,
/// and the statuses every operation shares.
#[tokio::test]
async fn every_operation_documents_its_errors() {
    let h = harness_with(ServerOptions::default()).await;
    let doc = document(&h).await;
    let mut ids = std::collections::HashSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let id = op["operationId"]
                .as_str()
                .unwrap_or_else(|| panic!("{method} {path}: no operationId"));
            assert!(ids.insert(id.to_owned()), "operationId {id} is used twice");
            let responses = op["responses"].as_object().unwrap();
            assert!(responses.contains_key("503"), "{method} {path}: no 503");
            if op.get("requestBody").is_some() {
                for s in ["400", "408", "413", "415", "422"] {
                    assert!(responses.contains_key(s), "{method} {path}: no {s}");
                }
            }
            if path.contains('{') {
                assert!(responses.contains_key("400"), "{method} {path}: no 400");
                // Everything taken by id can be unknown, but a PUT creates it.
                if method != "put" {
                    assert!(responses.contains_key("404"), "{method} {path}: no 404");
                }
            }
            for (code, response) in responses {
                if code.starts_with('4') || code.starts_with('5') {
                    let response = resolve(&doc, response);
                    assert_eq!(
                        response["content"]["application/json"]["schema"]["$ref"],
                        "#/components/schemas/ErrorBody",
                        "{method} {path}: its {code} is not an ErrorBody"
                    );
                }
            }
        }
    }
    let error = &doc["components"]["schemas"]["ErrorBody"];
    assert_eq!(error["required"], json!(["error"]), "{error}");
}

/// A stored pipeline, as `GET` and `PUT /api/pipelines/{id}` answer it, matches its
/// schema: one object with the spec's fields and its times, not an `allOf` whose first
/// part refuses the times.
#[tokio::test]
async fn a_stored_pipeline_matches_its_schema() {
    let h = harness_with(ServerOptions::default()).await;
    let doc = document(&h).await;
    let schema = &doc["components"]["schemas"]["Pipeline"];
    assert_eq!(schema["type"], "object", "{schema}");
    assert!(schema.get("allOf").is_none(), "{schema}");
    let (status, stored) = h
        .call(
            Method::PUT,
            "/api/pipelines/etl",
            Some(json!({"steps": [{"name": "a", "command": ["true"]}]})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{stored}");
    let properties = schema["properties"].as_object().unwrap();
    for key in stored.as_object().unwrap().keys() {
        assert!(properties.contains_key(key), "{key} is not in {schema}");
    }
    let required: Vec<&str> = schema["required"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for key in ["steps", "created_at", "updated_at"] {
        assert!(required.contains(&key), "{key} is not required: {schema}");
    }
    assert_eq!(schema["additionalProperties"], json!(false), "{schema}");
}
