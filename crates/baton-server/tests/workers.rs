//! Remote workers over `/api/workers/ws` (DESIGN section 11), against a real server on
//! loopback: a worker runs a job and reports on it, control reaches it, a dropped
//! connection's job is recovered on another worker from its last checkpoint, and
//! every misuse of the protocol is refused with an error that names it, changing
//! nothing.

mod common;

use std::time::Duration;

use axum::http::{Method, StatusCode};
use baton_server::ServerOptions;
use common::{Harness, harness, harness_with, serve};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A worker as a test drives it: raw protocol messages.
struct Worker {
    ws: Socket,
    id: String,
}

impl Worker {
    /// A connection whose first message is `first`, before any answer is read.
    async fn open(addr: std::net::SocketAddr, first: Value) -> Worker {
        Worker::open_as(addr, None, first).await
    }

    /// The same, with `Authorization: Bearer <token>` when a token is given.
    async fn open_as(addr: std::net::SocketAddr, token: Option<&str>, first: Value) -> Worker {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut request = format!("ws://{addr}/api/workers/ws")
            .into_client_request()
            .unwrap();
        if let Some(token) = token {
            request
                .headers_mut()
                .insert("authorization", format!("Bearer {token}").parse().unwrap());
        }
        let (mut ws, _) = tokio_tungstenite::connect_async(request)
            .await
            .expect("connect");
        ws.send(Message::Text(first.to_string().into()))
            .await
            .unwrap();
        Worker {
            ws,
            id: String::new(),
        }
    }

    async fn connect(addr: std::net::SocketAddr, hello: Value) -> Worker {
        let mut w = Worker::open(addr, hello).await;
        let welcome = w.recv().await;
        assert_eq!(welcome["type"], "welcome", "{welcome}");
        w.id = welcome["worker"].as_str().unwrap().to_owned();
        w
    }

    async fn scraper(addr: std::net::SocketAddr, slots: usize) -> Worker {
        Worker::connect(
            addr,
            json!({"op": "hello", "name": "py-1", "kinds": ["scrape"], "queues": ["default"], "slots": slots}),
        )
        .await
    }

    async fn send(&mut self, msg: Value) {
        self.ws
            .send(Message::Text(msg.to_string().into()))
            .await
            .unwrap();
    }

    /// The next JSON message (pings are answered by the library).
    async fn recv(&mut self) -> Value {
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(10), self.ws.next())
                .await
                .expect("a message within 10 s")
                .expect("the socket is open")
                .expect("a readable message");
            match msg {
                Message::Text(t) => return serde_json::from_str(&t).unwrap(),
                Message::Close(frame) => {
                    return json!({"type": "closed", "frame": format!("{frame:?}")});
                }
                _ => continue,
            }
        }
    }

    async fn recv_type(&mut self, kind: &str) -> Value {
        loop {
            let m = self.recv().await;
            if m["type"] == kind {
                return m;
            }
            assert_ne!(m["type"], "closed", "closed while waiting for {kind}");
        }
    }
}

async fn submit(h: &Harness, spec: Value) -> String {
    let (status, body) = h.call(Method::POST, "/api/jobs", Some(spec)).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body["id"].as_str().unwrap().to_owned()
}

async fn job(h: &Harness, id: &str) -> Value {
    h.call(Method::GET, &format!("/api/jobs/{id}"), None)
        .await
        .1
}

async fn wait_state(h: &Harness, id: &str, state: &str) -> Value {
    for _ in 0..500 {
        let j = job(h, id).await;
        if j["state"] == state {
            return j;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{id} never became {state}: {}", job(h, id).await);
}

async fn kinds_of(h: &Harness, id: &str) -> Vec<String> {
    let (_, events) = h
        .call(Method::GET, &format!("/api/jobs/{id}/events"), None)
        .await;
    events["events"]
        .as_array()
        .or(events.as_array())
        .expect("events")
        .iter()
        .map(|e| e["type"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[tokio::test]
async fn a_worker_runs_a_job_reports_on_it_and_its_outcome_is_the_jobs() {
    let h = harness().await;
    let addr = serve(&h, Default::default()).await;
    // Before any worker serves it, the kind is unknown.
    let (status, body) = h
        .call(Method::POST, "/api/jobs", Some(json!({"kind": "scrape"})))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");

    let mut w = Worker::scraper(addr, 2).await;
    let id = submit(
        &h,
        json!({"kind": "scrape", "payload": {"url": "https://a.example"}}),
    )
    .await;
    let got = w.recv_type("job").await;
    assert_eq!(got["job"]["id"], id.as_str());
    assert_eq!(got["job"]["payload"]["url"], "https://a.example");
    assert_eq!(got["checkpoint"], Value::Null);
    let token = got["token"].as_u64().unwrap();

    let (_, workers) = h.call(Method::GET, "/api/workers", None).await;
    assert_eq!(workers["workers"][0]["id"], w.id.as_str());
    assert_eq!(workers["workers"][0]["kinds"], json!(["scrape"]));
    assert_eq!(workers["workers"][0]["slots"], 2);
    assert_eq!(workers["workers"][0]["running"], json!([id]));

    w.send(
        json!({"op": "progress", "job": id, "token": token, "fraction": 0.5, "message": "half"}),
    )
    .await;
    w.send(json!({"op": "step", "job": id, "token": token, "name": "fetch"}))
        .await;
    w.send(json!({"op": "log", "job": id, "token": token, "text": "fetched 3 pages"}))
        .await;
    w.send(json!({"op": "checkpoint", "job": id, "token": token, "data": {"page": 3}, "ref": 7}))
        .await;
    let ack = w.recv_type("ack").await;
    assert_eq!(ack["ref"], 7);
    assert_eq!(ack["job"], id.as_str());
    let (_, cps) = h
        .call(Method::GET, &format!("/api/jobs/{id}/checkpoints"), None)
        .await;
    assert!(cps.to_string().contains("\"page\":3"), "{cps}");

    w.send(
        json!({"op": "complete", "job": id, "token": token, "result": {"pages": 3}, "ref": "done"}),
    )
    .await;
    assert_eq!(w.recv_type("ack").await["ref"], "done");
    let done = wait_state(&h, &id, "completed").await;
    assert_eq!(done["result"], json!({"pages": 3}));
    assert_eq!(done["step"], "fetch");
    let kinds = kinds_of(&h, &id).await;
    assert_eq!(
        kinds,
        [
            "job.submitted",
            "job.started",
            "job.progress",
            "job.step",
            "job.log",
            "job.checkpoint",
            "job.completed"
        ]
    );
    let (_, logs) = h
        .call(Method::GET, &format!("/api/jobs/{id}/logs"), None)
        .await;
    assert!(logs.to_string().contains("fetched 3 pages"), "{logs}");
    let (_, workers) = h.call(Method::GET, "/api/workers", None).await;
    assert_eq!(workers["workers"][0]["running"], json!([]));

    // A failure with a traceback: not retryable, so the job fails with it.
    let id = submit(&h, json!({"kind": "scrape", "max_attempts": 3})).await;
    let got = w.recv_type("job").await;
    let token = got["token"].as_u64().unwrap();
    w.send(json!({"op": "fail", "job": id, "token": token,
        "error": {"message": "ValueError: bad page", "retryable": false, "traceback": "Traceback (most recent call last): ..."}}))
        .await;
    let failed = wait_state(&h, &id, "failed").await;
    assert!(
        failed["error"]["message"]
            .as_str()
            .unwrap()
            .contains("ValueError: bad page\nTraceback"),
        "{failed}"
    );
}

#[tokio::test]
async fn pause_resume_and_stop_reach_the_worker_that_holds_the_job() {
    let h = harness().await;
    let addr = serve(&h, Default::default()).await;
    let mut w = Worker::scraper(addr, 1).await;
    let id = submit(&h, json!({"kind": "scrape"})).await;
    let token = w.recv_type("job").await["token"].as_u64().unwrap();

    let (status, _) = h
        .call(Method::POST, &format!("/api/jobs/{id}/pause"), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let c = w.recv_type("control").await;
    assert_eq!(
        (c["job"].as_str(), c["action"].as_str()),
        (Some(id.as_str()), Some("pause"))
    );
    assert_eq!(job(&h, &id).await["state"], "paused");
    h.call(Method::POST, &format!("/api/jobs/{id}/resume"), None)
        .await;
    assert_eq!(w.recv_type("control").await["action"], "resume");
    h.call(Method::POST, &format!("/api/jobs/{id}/stop"), None)
        .await;
    let c = w.recv_type("control").await;
    assert_eq!(
        (c["action"].as_str(), c["force"].as_bool()),
        (Some("stop"), Some(false))
    );
    // The worker's handler gives up at its pause point.
    w.send(json!({"op": "fail", "job": id, "token": token, "error": {"message": "stopped"}}))
        .await;
    wait_state(&h, &id, "cancelled").await;

    // A force stop ends the attempt at once and tells the worker.
    let id = submit(&h, json!({"kind": "scrape"})).await;
    let token = w.recv_type("job").await["token"].as_u64().unwrap();
    h.call(
        Method::POST,
        &format!("/api/jobs/{id}/stop?force=true"),
        None,
    )
    .await;
    let c = w.recv_type("control").await;
    assert_eq!(
        (c["action"].as_str(), c["force"].as_bool()),
        (Some("stop"), Some(true))
    );
    wait_state(&h, &id, "cancelled").await;
    // What the worker sends after it is refused: the attempt is over.
    w.send(json!({"op": "complete", "job": id, "token": token, "result": 1}))
        .await;
    let e = w.recv_type("error").await;
    assert_eq!(e["code"], "not_held", "{e}");
    assert_eq!(job(&h, &id).await["state"], "cancelled");
}

#[tokio::test]
async fn a_dropped_workers_job_resumes_from_its_checkpoint_on_another_and_late_reports_are_refused()
{
    let h = harness().await;
    let addr = serve(&h, Default::default()).await;
    let mut first = Worker::scraper(addr, 1).await;
    let id = submit(&h, json!({"kind": "scrape", "max_recoveries": 3})).await;
    let token = first.recv_type("job").await["token"].as_u64().unwrap();
    first
        .send(json!({"op": "checkpoint", "job": id, "token": token, "data": {"cursor": 40}}))
        .await;
    first.recv_type("ack").await;
    // The worker process dies: its connection drops without a word.
    drop(first);

    let mut second = Worker::scraper(addr, 1).await;
    let got = second.recv_type("job").await;
    assert_eq!(got["job"]["id"], id.as_str());
    assert_eq!(got["checkpoint"], json!({"cursor": 40}), "{got}");
    let token2 = got["token"].as_u64().unwrap();
    assert!(token2 > token, "a new attempt has a new token");
    let kinds = kinds_of(&h, &id).await;
    assert!(
        kinds.ends_with(&[
            "job.crashed".into(),
            "job.recovered".into(),
            "job.started".into()
        ]),
        "{kinds:?}"
    );
    let (_, events) = h
        .call(Method::GET, &format!("/api/jobs/{id}/events"), None)
        .await;
    assert!(events.to_string().contains("disconnected"), "{events}");

    // The first worker comes back and reports on its old attempt: refused.
    let mut late = Worker::scraper(addr, 1).await;
    late.send(json!({"op": "complete", "job": id, "token": token, "result": "late"}))
        .await;
    assert_eq!(late.recv_type("error").await["code"], "not_held");
    // The holder with a stale token: refused too.
    second
        .send(json!({"op": "complete", "job": id, "token": token, "result": "stale"}))
        .await;
    let e = second.recv_type("error").await;
    assert_eq!(e["code"], "stale_token", "{e}");
    assert_eq!(job(&h, &id).await["state"], "running");
    second
        .send(json!({"op": "complete", "job": id, "token": token2, "result": {"from": 40}}))
        .await;
    let done = wait_state(&h, &id, "completed").await;
    assert_eq!(done["result"], json!({"from": 40}));
}

#[tokio::test]
async fn a_worker_that_stops_answering_loses_its_job_after_three_heartbeats() {
    let beat = Duration::from_millis(200);
    let h = harness_with(ServerOptions {
        worker_heartbeat: beat,
        ..Default::default()
    })
    .await;
    let addr = serve(&h, Default::default()).await;
    let mut hung = Worker::scraper(addr, 1).await;
    let id = submit(&h, json!({"kind": "scrape", "max_recoveries": 3})).await;
    let token = hung.recv_type("job").await["token"].as_u64().unwrap();
    hung.send(json!({"op": "checkpoint", "job": id, "token": token, "data": {"cursor": 7}}))
        .await;
    hung.recv_type("ack").await;
    // The worker hangs: it reads nothing, so it answers no ping. Its connection stays
    // open, yet after three heartbeats its job is recovered for another worker.
    let hung_at = std::time::Instant::now();
    let mut other = Worker::scraper(addr, 1).await;
    let got = other.recv_type("job").await;
    let lost_after = hung_at.elapsed();
    assert_eq!(got["job"]["id"], id.as_str());
    assert_eq!(got["checkpoint"], json!({"cursor": 7}), "{got}");
    assert!(
        lost_after >= beat * 3 && lost_after < beat * 3 + Duration::from_secs(3),
        "recovered after {lost_after:?} with a {beat:?} heartbeat"
    );
    let (_, events) = h
        .call(Method::GET, &format!("/api/jobs/{id}/events"), None)
        .await;
    let crashed = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "job.crashed")
        .unwrap_or_else(|| panic!("no job.crashed: {events}"));
    assert!(
        crashed.to_string().contains(&hung.id),
        "the crash names the worker: {crashed}"
    );

    // The server closed the hung worker's socket, after telling it why: reading again,
    // it finds the error and the close, or (its library first flushing the pongs it
    // owes) a broken pipe.
    let mut heard = Vec::new();
    while let Some(Ok(msg)) = tokio::time::timeout(Duration::from_secs(5), hung.ws.next())
        .await
        .expect("the hung worker's socket ends")
    {
        if let Message::Text(t) = msg {
            heard.push(t.to_string());
        }
    }
    assert!(
        heard.iter().all(|t| !t.contains("\"type\":\"job\"")),
        "no job for the hung worker: {heard:?}"
    );
    assert!(
        heard.is_empty() || heard.iter().any(|t| t.contains("heartbeat_missed")),
        "{heard:?}"
    );
    // Its late outcome never lands: the job stays the other worker's.
    let (_, workers) = h.call(Method::GET, "/api/workers", None).await;
    assert_eq!(workers["workers"].as_array().unwrap().len(), 1, "{workers}");
    assert_eq!(workers["workers"][0]["id"], other.id.as_str());
    other
        .send(json!({"op": "complete", "job": id, "token": got["token"], "result": "done"}))
        .await;
    assert_eq!(wait_state(&h, &id, "completed").await["result"], "done");
}

#[tokio::test]
async fn protocol_misuse_is_refused_with_an_error_that_names_it() {
    let h = harness().await;
    let addr = serve(&h, Default::default()).await;

    // No hello first.
    let mut w = Worker::open(addr, json!({"op": "ready", "slots": 2})).await;
    let e = w.recv().await;
    assert_eq!(e["code"], "bad_message");
    assert!(e["message"].as_str().unwrap().contains("hello"), "{e}");
    assert_eq!(w.recv().await["type"], "closed");

    // A hello for a kind the server runs itself, or with no kinds, or no slots.
    for (hello, says) in [
        (
            json!({"op": "hello", "kinds": ["command"]}),
            "run by the server itself",
        ),
        (json!({"op": "hello", "kinds": []}), "at least one kind"),
        (
            json!({"op": "hello", "kinds": ["scrape"], "slots": 0}),
            "slots",
        ),
    ] {
        let mut w = Worker::open(addr, hello).await;
        let e = w.recv().await;
        assert_eq!(e["code"], "invalid_hello", "{e}");
        assert!(e["message"].as_str().unwrap().contains(says), "{e}");
    }
    assert_eq!(
        h.engine.workers().len(),
        0,
        "no refused hello left a worker"
    );

    let mut w = Worker::scraper(addr, 1).await;
    let id = submit(&h, json!({"kind": "scrape"})).await;
    let token = w.recv_type("job").await["token"].as_u64().unwrap();
    for (msg, code) in [
        (json!({"op": "dance"}), "bad_message"),
        (json!({"op": "progress", "job": id}), "bad_message"),
        (
            json!({"op": "progress", "job": "someone-else", "token": token}),
            "not_held",
        ),
        (
            json!({"op": "progress", "job": id, "token": token + 100}),
            "stale_token",
        ),
        (json!({"op": "hello", "kinds": ["scrape"]}), "bad_message"),
    ] {
        w.send(msg.clone()).await;
        let e = w.recv_type("error").await;
        assert_eq!(e["code"], code, "{msg} -> {e}");
    }
    w.ws.send(Message::Text(
        "{\"op\": \"heartbeat\", \"op\": \"ready\"}".into(),
    ))
    .await
    .unwrap();
    assert!(
        w.recv_type("error").await["message"]
            .as_str()
            .unwrap()
            .contains("duplicate")
    );
    // Nothing changed: the job runs, with no progress.
    let j = job(&h, &id).await;
    assert_eq!(j["state"], "running");
    assert_eq!(j["progress"], Value::Null);

    // An oversize message: refused and the connection closed; the job is recovered.
    let big = "x".repeat(baton_server::MAX_WORKER_MESSAGE + 1);
    w.send(json!({"op": "output", "job": id, "token": token, "text": big}))
        .await;
    let e = w.recv_type("error").await;
    assert_eq!(e["code"], "too_large", "{e}");
    assert_eq!(w.recv().await["type"], "closed");
    let j = wait_state(&h, &id, "queued").await;
    assert_eq!(j["recoveries"], 1, "{j}");

    // A binary frame.
    let mut w = Worker::scraper(addr, 1).await;
    w.recv_type("job").await;
    w.ws.send(Message::Binary(vec![1, 2, 3].into()))
        .await
        .unwrap();
    assert_eq!(w.recv_type("error").await["code"], "bad_message");
}

#[tokio::test]
async fn a_workflow_job_on_a_worker_is_handed_its_parents_outcomes_and_dependencies() {
    let h = harness().await;
    let addr = serve(&h, Default::default()).await;
    let mut w = Worker::scraper(addr, 1).await;
    let (status, flow) = h
        .call(
            Method::POST,
            "/api/workflows",
            Some(json!({"jobs": {
                "fetch": {"kind": "scrape"},
                "parse": {"kind": "scrape", "depends_on": ["fetch"]},
            }})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{flow}");
    let fetch = flow["jobs"]["fetch"].as_str().unwrap().to_owned();
    let got = w.recv_type("job").await;
    assert_eq!(got["job"]["id"], fetch.as_str());
    assert_eq!(got["parents"], json!({}));
    let token = got["token"].as_u64().unwrap();
    w.send(json!({"op": "complete", "job": fetch, "token": token, "result": {"pages": 3}}))
        .await;

    let got = w.recv_type("job").await;
    assert_eq!(got["job"]["id"], flow["jobs"]["parse"]);
    assert_eq!(got["job"]["depends_on"], json!([fetch]), "{got}");
    let parent = &got["parents"]["fetch"];
    assert_eq!(parent["job_id"], fetch.as_str(), "{got}");
    assert_eq!(parent["state"], "completed");
    assert_eq!(parent["result"], json!({"pages": 3}));
}

#[tokio::test]
async fn a_token_narrowed_to_queues_serves_only_those_queues_as_a_worker() {
    use baton_server::{AuthConfig, Role, ServerOptions, TokenEntry, hash_token};
    let options = ServerOptions {
        auth: AuthConfig {
            tokens: vec![
                common::token("admin", Role::Admin),
                TokenEntry {
                    name: "other-ops".into(),
                    sha256: hash_token("other-token"),
                    role: Role::Operator,
                    queues: Some(vec!["other".into()]),
                },
            ],
            jwt_secret: None,
        },
        ..ServerOptions::default()
    };
    let h = common::harness_with(options.clone()).await;
    let addr = serve(&h, options).await;
    let hello = |queues: Value| json!({"op": "hello", "name": "narrow", "kinds": ["scrape"], "queues": queues, "slots": 4});
    let workers = || async {
        let (status, list) = h.call_as(Method::GET, "/api/workers", "admin-token").await;
        assert_eq!(status, StatusCode::OK, "{list}");
        list["workers"].as_array().unwrap().len()
    };

    // A queue beside its own: refused, naming the token's queues, and never listed.
    for queues in [json!(["other", "default"]), json!(["default"])] {
        let mut w = Worker::open_as(addr, Some("other-token"), hello(queues)).await;
        let refused = w.recv().await;
        assert_eq!(refused["code"], "invalid_hello", "{refused}");
        assert_eq!(
            refused["message"],
            r#"token "other-ops" is limited to queues ["other"]; queue "default" is not one of them"#
        );
        assert_eq!(w.recv().await["type"], "closed");
        assert_eq!(workers().await, 0);
    }
    // A hello that names no queue asks for `default`, which it is not given either.
    let mut w = Worker::open_as(
        addr,
        Some("other-token"),
        json!({"op": "hello", "kinds": ["scrape"]}),
    )
    .await;
    assert_eq!(w.recv().await["code"], "invalid_hello");

    // Its own queue: welcomed, and handed that queue's jobs only.
    let mut w = Worker::open_as(addr, Some("other-token"), hello(json!(["other"]))).await;
    assert_eq!(w.recv().await["type"], "welcome");
    let submit_as_admin = |queue: &'static str| {
        let h = &h;
        async move {
            let body = json!({"kind": "scrape", "queue": queue}).to_string();
            let (status, text) = h
                .raw(
                    Method::POST,
                    "/api/jobs",
                    Some(body),
                    &[("authorization", "Bearer admin-token")],
                )
                .await;
            assert_eq!(status, StatusCode::CREATED, "{text}");
            serde_json::from_str::<Value>(&text).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_owned()
        }
    };
    let elsewhere = submit_as_admin("default").await;
    let mine = submit_as_admin("other").await;
    let got = w.recv_type("job").await;
    assert_eq!(got["job"]["id"], mine.as_str(), "{got}");
    let (_, job) = h
        .call_as(
            Method::GET,
            &format!("/api/jobs/{elsewhere}"),
            "admin-token",
        )
        .await;
    assert_eq!(job["state"], "queued", "{job}");
}
