//! `POST /api/jobs/batch` over real HTTP, on a real SQLite file: one write or none,
//! refusals that name the job, and every door an attacker could try.

mod common;

use baton_server::{AuthConfig, Role, ServerOptions, TokenEntry, hash_token};
use common::{Harness, harness_with, serve, token};
use serde_json::{Value, json};
use std::net::SocketAddr;

/// Sends `body` to `path` over HTTP; the status and the JSON answer.
async fn post(addr: SocketAddr, path: &str, token: Option<&str>, body: String) -> (u16, Value) {
    let url = format!("http://{addr}{path}");
    let token = token.map(str::to_owned);
    tokio::task::spawn_blocking(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let mut req = agent.post(&url).header("content-type", "application/json");
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let mut answer = req.send(body).unwrap();
        let status = answer.status().as_u16();
        let text = answer.body_mut().read_to_string().unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    })
    .await
    .unwrap()
}

async fn get(addr: SocketAddr, path: &str) -> Value {
    let url = format!("http://{addr}{path}");
    tokio::task::spawn_blocking(move || {
        let mut answer = ureq::get(&url).call().unwrap();
        serde_json::from_str(&answer.body_mut().read_to_string().unwrap()).unwrap()
    })
    .await
    .unwrap()
}

fn batch(specs: Vec<Value>) -> String {
    json!({ "jobs": specs }).to_string()
}

async fn server(options: ServerOptions) -> (Harness, SocketAddr) {
    let h = harness_with(options.clone()).await;
    let addr = serve(&h, options).await;
    (h, addr)
}

/// How many jobs the store holds, whatever their state.
async fn stored(addr: SocketAddr) -> u64 {
    get(addr, "/api/stats").await["total"].as_u64().unwrap()
}

#[tokio::test]
async fn ten_thousand_jobs_are_stored_in_one_write() {
    let (h, addr) = server(ServerOptions::default()).await;
    // Held, so that nothing but the batch writes events meanwhile.
    h.engine.pause_queue("default").await.unwrap();
    let before = h.engine.store().last_event_id().await.unwrap();
    let specs = (0..10_000)
        .map(|i| json!({"id": format!("load-{i}"), "kind": "echo", "payload": {"n": i}}))
        .collect();
    let (status, answer) = post(addr, "/api/jobs/batch", None, batch(specs)).await;
    assert_eq!(status, 201, "{answer}");
    let jobs = answer["jobs"].as_array().unwrap();
    let created = answer["created"].as_array().unwrap();
    assert_eq!(jobs.len(), 10_000);
    assert_eq!(created.len(), 10_000);
    for (i, job) in jobs.iter().enumerate() {
        assert_eq!(job["id"], format!("load-{i}"), "the answer keeps the order");
        assert_eq!(job["state"], "queued");
        assert_eq!(created[i], true);
    }
    let list = get(addr, "/api/jobs?state=queued&limit=1").await;
    assert_eq!(list["total"], 10_000);
    // One write: the 10,000 job.submitted events are one unbroken run of the global
    // log, in the order of the batch, all at the same instant.
    let events = h.engine.store().events_after(before, 20_000).await.unwrap();
    assert_eq!(events.len(), 10_000, "nothing but the batch wrote events");
    let at = events[0].at;
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e.id, before + 1 + i as u64);
        assert_eq!(e.kind.as_str(), "job.submitted");
        assert_eq!(e.job_id.as_deref(), Some(format!("load-{i}").as_str()));
        assert_eq!(e.at, at);
    }
}

#[tokio::test]
async fn one_bad_spec_stores_none_and_is_named() {
    let (_h, addr) = server(ServerOptions::default()).await;
    let mut specs: Vec<Value> = (0..100)
        .map(|i| json!({"id": format!("ok-{i}"), "kind": "echo"}))
        .collect();
    specs[57] = json!({"id": "bad", "kind": "echo", "delay": "soon"});
    let (status, answer) = post(addr, "/api/jobs/batch", None, batch(specs.clone())).await;
    assert_eq!(status, 422, "{answer}");
    let error = &answer["error"];
    assert_eq!(error["code"], "invalid_spec");
    assert_eq!(error["index"], 57);
    assert_eq!(error["field"], "delay");
    let message = error["message"].as_str().unwrap();
    assert!(
        message.starts_with("invalid job spec: jobs[57].delay: ") && message.contains("soon"),
        "{message}"
    );
    assert_eq!(stored(addr).await, 0, "nothing of the batch is stored");

    // An unknown kind and a job of an unknown queue name their field too.
    specs[57] = json!({"kind": "nope"});
    let (status, answer) = post(addr, "/api/jobs/batch", None, batch(specs.clone())).await;
    assert_eq!(status, 422, "{answer}");
    assert_eq!(answer["error"]["index"], 57);
    assert_eq!(answer["error"]["field"], "kind");
    specs[57] = json!({"kind": "echo", "queue": "nowhere"});
    let (_, answer) = post(addr, "/api/jobs/batch", None, batch(specs.clone())).await;
    assert_eq!(answer["error"]["field"], "queue", "{answer}");

    // A field of the wrong shape is refused by the parser, which names the path.
    specs[57] = json!({"kind": "echo", "priority": "high"});
    let (status, answer) = post(addr, "/api/jobs/batch", None, batch(specs.clone())).await;
    assert_eq!(status, 422, "{answer}");
    let message = answer["error"]["message"].as_str().unwrap();
    assert!(message.contains("jobs[57].priority"), "{message}");
    assert_eq!(stored(addr).await, 0);

    // A dependency on no job at all: named by the store, and still nothing stored.
    specs[57] = json!({"id": "orphan", "kind": "echo", "depends_on": ["ghost"]});
    let (status, answer) = post(addr, "/api/jobs/batch", None, batch(specs)).await;
    assert_eq!(status, 422, "{answer}");
    assert_eq!(answer["error"]["index"], 57);
    assert_eq!(answer["error"]["field"], "depends_on");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("\"ghost\""),
        "{answer}"
    );
    assert_eq!(stored(addr).await, 0);
}

#[tokio::test]
async fn client_ids_answer_the_existing_job() {
    let (h, addr) = server(ServerOptions::default()).await;
    h.engine.pause_queue("default").await.unwrap();
    let first = batch(vec![
        json!({"id": "a", "kind": "echo", "payload": 1}),
        json!({"id": "b", "kind": "echo", "payload": 2}),
    ]);
    let (status, one) = post(addr, "/api/jobs/batch", None, first.clone()).await;
    assert_eq!(status, 201, "{one}");
    // A second batch that repeats "b": the existing job, as it is.
    let second = batch(vec![
        json!({"id": "b", "kind": "echo", "payload": "changed"}),
        json!({"id": "c", "kind": "echo"}),
    ]);
    let (status, two) = post(addr, "/api/jobs/batch", None, second).await;
    assert_eq!(status, 201, "{two}");
    assert_eq!(two["created"], json!([false, true]));
    assert_eq!(two["jobs"][0]["id"], "b");
    assert_eq!(two["jobs"][0]["created_at"], one["jobs"][1]["created_at"]);
    assert_eq!(two["jobs"][0]["payload"], one["jobs"][1]["payload"]);
    // The whole first batch again (a client's retry): nothing new, 200.
    let (status, again) = post(addr, "/api/jobs/batch", None, first).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["created"], json!([false, false]));
    assert_eq!(stored(addr).await, 3);

    // The same id twice in one batch is a mistake, not a retry: refused, named.
    let twice = batch(vec![
        json!({"id": "d", "kind": "echo"}),
        json!({"id": "e", "kind": "echo"}),
        json!({"id": "d", "kind": "echo"}),
    ]);
    let (status, answer) = post(addr, "/api/jobs/batch", None, twice).await;
    assert_eq!(status, 422, "{answer}");
    assert_eq!(answer["error"]["index"], 2);
    assert_eq!(answer["error"]["field"], "id");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("jobs[2].id: \"d\" is also the id of jobs[0]"),
        "{answer}"
    );
    assert_eq!(stored(addr).await, 3);
}

#[tokio::test]
async fn a_job_may_depend_on_an_earlier_job_of_its_batch() {
    let (h, addr) = server(ServerOptions::default()).await;
    let specs = vec![
        json!({"id": "fetch", "kind": "echo", "payload": "page"}),
        json!({"id": "parse", "kind": "echo", "depends_on": ["fetch"]}),
        json!({"id": "store", "kind": "echo", "depends_on": [{"job": "parse", "on": "completed"}]}),
    ];
    let (status, answer) = post(addr, "/api/jobs/batch", None, batch(specs)).await;
    assert_eq!(status, 201, "{answer}");
    assert_eq!(answer["jobs"][1]["depends_on"], json!(["fetch"]));
    h.wait_state("store", "completed").await;
    let fetch = h.engine.get("fetch").await.unwrap();
    let parse = h.engine.get("parse").await.unwrap();
    let store = h.engine.get("store").await.unwrap();
    assert!(parse.started_at.unwrap() >= fetch.finished_at.unwrap());
    assert!(store.started_at.unwrap() >= parse.finished_at.unwrap());

    // A dependency on a later job of the batch (or on itself) is refused.
    let specs = vec![
        json!({"id": "x", "kind": "echo", "depends_on": ["y"]}),
        json!({"id": "y", "kind": "echo"}),
    ];
    let (status, answer) = post(addr, "/api/jobs/batch", None, batch(specs)).await;
    assert_eq!(status, 422, "{answer}");
    assert_eq!(answer["error"]["index"], 0);
    assert_eq!(answer["error"]["field"], "depends_on[0]");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("later in the batch"),
        "{answer}"
    );
    let (status, answer) = post(
        addr,
        "/api/jobs/batch",
        None,
        batch(vec![
            json!({"id": "self", "kind": "echo", "depends_on": ["self"]}),
        ]),
    )
    .await;
    assert_eq!(status, 422, "{answer}");
    assert_eq!(stored(addr).await, 3);
}

#[tokio::test]
async fn batch_size_and_body_bounds() {
    let (_h, addr) = server(ServerOptions::default()).await;
    let (status, answer) = post(addr, "/api/jobs/batch", None, batch(vec![])).await;
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("empty")
    );
    let specs = (0..10_001).map(|_| json!({"kind": "echo"})).collect();
    let (status, answer) = post(addr, "/api/jobs/batch", None, batch(specs)).await;
    assert_eq!(status, 400, "{answer}");
    let message = answer["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("10001") && message.contains("10000"),
        "{message}"
    );
    let (status, answer) = post(addr, "/api/jobs/batch", None, "{\"jobs\": {}}".into()).await;
    assert_eq!(status, 422, "{answer}");
    let (status, answer) = post(addr, "/api/jobs/batch", None, "[".into()).await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(stored(addr).await, 0);

    // The server's body_limit holds for batches too.
    let (_h, addr) = server(ServerOptions {
        body_limit: 4096,
        ..ServerOptions::default()
    })
    .await;
    let specs = (0..100)
        .map(|i| json!({"kind": "echo", "payload": format!("{i:0>64}")}))
        .collect();
    let (status, answer) = post(addr, "/api/jobs/batch", None, batch(specs)).await;
    assert_eq!(status, 413, "{answer}");
    assert_eq!(stored(addr).await, 0);
}

fn narrowed(name: &str, queue: &str) -> TokenEntry {
    TokenEntry {
        name: name.into(),
        sha256: hash_token(&format!("{name}-token")),
        role: Role::Operator,
        queues: Some(vec![queue.into()]),
    }
}

#[tokio::test]
async fn roles_and_queue_scoped_tokens() {
    let options = ServerOptions {
        auth: AuthConfig {
            tokens: vec![
                token("viewer", Role::Viewer),
                token("ops", Role::Operator),
                narrowed("other-ops", "other"),
            ],
            jwt_secret: None,
        },
        ..ServerOptions::default()
    };
    let (_h, addr) = server(options).await;
    let specs = || {
        batch(vec![
            json!({"kind": "echo", "queue": "other"}),
            json!({"kind": "echo", "queue": "other"}),
        ])
    };
    let (status, answer) = post(addr, "/api/jobs/batch", None, specs()).await;
    assert_eq!(status, 401, "{answer}");
    let (status, answer) = post(addr, "/api/jobs/batch", Some("viewer-token"), specs()).await;
    assert_eq!(status, 403, "{answer}");
    // A token narrowed to "other": its own queue passes...
    let (status, answer) = post(addr, "/api/jobs/batch", Some("other-ops-token"), specs()).await;
    assert_eq!(status, 201, "{answer}");
    // ...but one job for another queue (here the default one, by leaving it out)
    // refuses the whole batch, naming that job.
    let mixed = batch(vec![
        json!({"id": "mine", "kind": "echo", "queue": "other"}),
        json!({"id": "theirs", "kind": "echo"}),
    ]);
    let (status, answer) = post(addr, "/api/jobs/batch", Some("other-ops-token"), mixed).await;
    assert_eq!(status, 403, "{answer}");
    assert_eq!(answer["error"]["index"], 1);
    let message = answer["error"]["message"].as_str().unwrap();
    assert!(
        message.starts_with("jobs[1]: ") && message.contains("\"default\""),
        "{message}"
    );
    let replace = batch(vec![
        json!({"kind": "echo", "queue": "other", "unique_key": "k", "unique_policy": "replace"}),
    ]);
    let (status, answer) = post(addr, "/api/jobs/batch", Some("other-ops-token"), replace).await;
    assert_eq!(status, 403, "{answer}");
    // An operator for every queue may.
    let (status, answer) = post(
        addr,
        "/api/jobs/batch",
        Some("ops-token"),
        batch(vec![json!({"id": "theirs", "kind": "echo"})]),
    )
    .await;
    assert_eq!(status, 201, "{answer}");
    let url = format!("http://{addr}/api/stats");
    let total = tokio::task::spawn_blocking(move || {
        let mut a = ureq::get(&url)
            .header("authorization", "Bearer viewer-token")
            .call()
            .unwrap();
        serde_json::from_str::<Value>(&a.body_mut().read_to_string().unwrap()).unwrap()["total"]
            .as_u64()
            .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(total, 3, "the refused batches stored nothing");
}

#[tokio::test]
async fn the_rate_limit_counts_every_job_of_a_batch() {
    let (_h, addr) = server(ServerOptions {
        submit_rate: 1,
        submit_burst: 10,
        ..ServerOptions::default()
    })
    .await;
    let jobs = |n: usize| batch((0..n).map(|_| json!({"kind": "echo"})).collect());
    let started = std::time::Instant::now();
    let (status, answer) = post(addr, "/api/jobs/batch", None, jobs(8)).await;
    assert_eq!(status, 201, "{answer}");
    // 8 of the 10 are spent: a batch of 5 is refused whole, as 5 single submits
    // would be after the second.
    let (status, answer) = post(addr, "/api/jobs/batch", None, jobs(5)).await;
    assert_eq!(status, 429, "{answer}");
    assert_eq!(answer["error"]["code"], "rate_limited");
    assert_eq!(stored(addr).await, 8);
    // More jobs than the burst can never pass: said so, rather than "retry".
    let (status, answer) = post(addr, "/api/jobs/batch", None, jobs(11)).await;
    assert_eq!(status, 429, "{answer}");
    let message = answer["error"]["message"].as_str().unwrap();
    assert!(message.contains("burst of 10"), "{message}");
    // Single submits and batches share the allowance: after the batch of 8, two
    // single submits pass (plus one per second since), then 429.
    let mut passed = 0;
    loop {
        let (status, answer) =
            post(addr, "/api/jobs", None, json!({"kind": "echo"}).to_string()).await;
        match status {
            201 => passed += 1,
            429 => break,
            _ => panic!("{status} {answer}"),
        }
        assert!(passed <= 20, "the limit never answered 429");
    }
    let refilled = started.elapsed().as_secs() + 1;
    assert!(
        passed >= 2 && passed <= 2 + refilled,
        "{passed} single submits passed"
    );
}
