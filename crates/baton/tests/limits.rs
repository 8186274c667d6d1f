//! Resource limits and usage through a real `baton serve` and its HTTP API: `[limits]`
//! in `baton.toml` (the mechanism, the sampler's interval, a queue's default limits),
//! bad limits refused with 422 naming the field, a job past its memory limit failing
//! with `memory_limit`, the usage in the job, its attempts and `/metrics`, and
//! `GET /api/resources` naming the mechanism in force. The cgroup run uses the cgroups
//! of this machine and fails, saying why, when there are none.

mod support;

use serde_json::{Value, json};
use support::{Refusal, Server, baton, ok, refused_at_start, start};

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into()
}

fn get(server: &Server, path: &str) -> (u16, String) {
    let mut r = agent().get(format!("{}{path}", server.url)).call().unwrap();
    (r.status().as_u16(), r.body_mut().read_to_string().unwrap())
}

fn get_json(server: &Server, path: &str) -> Value {
    let (status, body) = get(server, path);
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap()
}

fn submit(server: &Server, spec: Value) -> (u16, Value) {
    let mut r = agent()
        .post(format!("{}/api/jobs", server.url))
        .send_json(&spec)
        .unwrap();
    (r.status().as_u16(), r.body_mut().read_json().unwrap())
}

fn wait(server: &Server, id: &str) -> Value {
    let job = get_json(server, &format!("/api/jobs/{id}/wait?timeout=30s"));
    assert!(
        matches!(job["state"].as_str(), Some("completed" | "failed")),
        "{job}"
    );
    job
}

/// About `mb` MB of written memory, held for `secs` seconds.
fn hold_memory(mb: u32, secs: u32) -> Value {
    json!([
        "perl",
        "-e",
        format!("my $x = 'a' x ({mb} * 1000 * 1000); sleep {secs}")
    ])
}

const RLIMIT: &str = r#"
[queues]
heavy = 2

[limits]
mechanism = "rlimit"
sample_every = "100ms"
usage_event_every = "300ms"

[limits.queues.heavy]
memory = "40MB"
"#;

#[test]
fn bad_limits_are_refused_with_422_naming_the_field() {
    let server = start(Some(RLIMIT));
    for (limits, field, part) in [
        (
            json!({"memory": "lots"}),
            "limits.memory",
            "\"lots\" is not an amount of memory",
        ),
        (
            json!({"memory": "512mb"}),
            "limits.memory",
            "unknown unit \"mb\"",
        ),
        (
            json!({"cpu_time": "forever"}),
            "limits.cpu_time",
            "is not a duration",
        ),
        (json!({"cpus": 0}), "limits.cpus", "not a positive number"),
        (json!({"cpus": 10000}), "limits.cpus", "out of range"),
    ] {
        let (status, body) = submit(
            &server,
            json!({"kind": "command", "command": ["true"], "limits": limits}),
        );
        assert_eq!(status, 422, "{limits}: {body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(
            message.contains(field) && message.contains(part),
            "{limits}: {message}"
        );
    }
    let (status, body) = submit(
        &server,
        json!({"kind": "command", "command": ["true"], "limits": {"memroy": "1GB"}}),
    );
    assert_eq!(status, 422, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("memroy"),
        "{body}"
    );
    let (status, body) = submit(
        &server,
        json!({"kind": "pipeline", "steps": [{"name": "a", "command": ["true"]}],
               "limits": {"cpus": -1}}),
    );
    assert_eq!(status, 422, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("limits.cpus"),
        "{body}"
    );
}

#[test]
fn rlimit_a_queues_memory_limit_fails_a_job_that_passes_it_and_usage_is_reported() {
    let server = start(Some(RLIMIT));
    let resources = get_json(&server, "/api/resources");
    let limits = &resources["job_limits"];
    assert_eq!(limits["mechanism"], "rlimit", "{limits}");
    assert_eq!(limits["cpus_enforced"], false);
    assert_eq!(limits["sample_every"], "100ms");
    assert!(
        limits["cgroups_unavailable"]
            .as_str()
            .unwrap()
            .contains("\"rlimit\" is configured"),
        "{limits}"
    );

    // A job of the heavy queue takes its memory limit; it holds 150 MB.
    let (status, job) = submit(
        &server,
        json!({"kind": "command", "queue": "heavy", "command": hold_memory(150, 30)}),
    );
    assert_eq!(status, 201, "{job}");
    assert_eq!(
        job["limits"],
        json!({"memory": "40MB"}),
        "the queue's default"
    );
    let id = job["id"].as_str().unwrap().to_owned();
    let done = wait(&server, &id);
    assert_eq!(done["state"], "failed", "{done}");
    assert_eq!(done["error"]["code"], "memory_limit", "{done}");
    let message = done["error"]["message"].as_str().unwrap();
    assert!(message.contains(" MB used, limit 40 MB"), "{message}");
    assert!(
        done["usage"]["peak_rss_bytes"].as_u64().unwrap() > 40_000_000,
        "{done}"
    );
    // The CLI shows them too.
    let shown = ok(&baton(&server, &["show", &id]));
    assert!(shown.contains("memory 40MB"), "{shown}");
    assert!(shown.contains("attempt 1: "), "{shown}");
    assert!(shown.contains("memory_limit: "), "{shown}");

    // A job within its limits completes, with its usage in the job and its attempt,
    // and job.usage events while it ran.
    let (_, job) = submit(
        &server,
        json!({"kind": "command", "command": hold_memory(20, 1),
               "limits": {"memory": "100MB", "cpu_time": "30s"}}),
    );
    let ok_id = job["id"].as_str().unwrap().to_owned();
    let done = wait(&server, &ok_id);
    assert_eq!(done["state"], "completed", "{done}");
    assert_eq!(
        done["limits"],
        json!({"memory": "100MB", "cpu_time": "30s"})
    );
    let usage = &done["usage"];
    assert_eq!(usage["attempt"], 1, "{usage}");
    assert!(
        usage["peak_rss_bytes"].as_u64().unwrap() >= 20_000_000,
        "{usage}"
    );
    let attempts = get_json(&server, &format!("/api/jobs/{ok_id}/attempts"));
    assert_eq!(&attempts["attempts"][0]["usage"], usage, "{attempts}");
    let events = get_json(&server, &format!("/api/jobs/{ok_id}/events"));
    let kinds: Vec<&str> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert!(kinds.contains(&"job.usage"), "{kinds:?}");

    let (status, metrics) = get(&server, "/metrics");
    assert_eq!(status, 200);
    assert!(
        metrics.contains("baton_job_limit_kills_total{limit=\"memory\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("baton_job_cpu_seconds_total "),
        "{metrics}"
    );
    assert!(
        metrics.contains("baton_usage_sampler_cpu_seconds_total "),
        "{metrics}"
    );
}

#[test]
fn cgroup_a_job_past_its_memory_limit_fails_and_resources_name_the_cgroup_version() {
    let server = start(Some(
        "[limits]\nmechanism = \"cgroup\"\nsample_every = \"100ms\"\n",
    ));
    let resources = get_json(&server, "/api/resources");
    let limits = &resources["job_limits"];
    let mechanism = limits["mechanism"].as_str().unwrap_or_default();
    // A server that cannot use cgroups refuses to start with mechanism "cgroup"; so
    // this is a cgroup server, of the version this machine offers.
    assert!(mechanism.starts_with("cgroup v"), "{limits}");
    println!("cgroup test on {mechanism}: {}", limits["cgroups"]);
    assert_eq!(limits["cpus_enforced"], true);
    let (_, job) = submit(
        &server,
        json!({"kind": "command", "command": hold_memory(150, 30),
               "limits": {"memory": "50MB", "cpus": 1}}),
    );
    let id = job["id"].as_str().unwrap().to_owned();
    let done = wait(&server, &id);
    assert_eq!(done["error"]["code"], "memory_limit", "{done}");
    assert!(
        done["error"]["message"]
            .as_str()
            .unwrap()
            .contains("limit 50 MB; the kernel stopped the job at its cgroup's memory limit"),
        "{done}"
    );
}

#[test]
fn serve_refuses_bad_limits_settings_at_start() {
    let dir = tempfile::TempDir::new().unwrap();
    std::fs::write(
        dir.path().join("limits.toml"),
        "[limits.queues.default]\nmemory = \"1 gallon\"\n",
    )
    .unwrap();
    let cases: [Refusal; 2] = [
        (
            &[],
            &[("BATON_LIMITS_MECHANISM", "magic")],
            "invalid setting BATON_LIMITS_MECHANISM = \"magic\"",
        ),
        (
            &["--config", "limits.toml"],
            &[],
            "invalid setting limits.queues.default.memory in limits.toml",
        ),
    ];
    refused_at_start(dir.path(), &cases);
}
