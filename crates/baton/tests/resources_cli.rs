//! Admission control in a real `baton serve` with its real machine monitor: thresholds
//! set so that this machine crosses them, a heavy queue from `[queues]` that holds
//! while a light one runs, a store disk "too full" that refuses submissions with 507,
//! and bad `[resources]` settings refused at start by name.

mod support;

use std::time::{Duration, Instant};

use serde_json::Value;
use support::{Refusal, Server, baton, get, json, ok, refused_at_start, start};
use tempfile::TempDir;

/// Waits for the monitor's first sample.
fn sampled(server: &Server) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = get(server, "/api/resources");
        if !r["now"].is_null() {
            return r;
        }
        assert!(Instant::now() < deadline, "no sample: {r}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_heavy_queue_holds_while_the_machine_crosses_a_threshold_and_a_light_one_runs() {
    // Any machine uses more than 0.01 % of its memory.
    let server = start(Some(
        "[queues]\ndefault = 4\nmedia = { concurrency = 2, heavy = true }\n\
         [resources]\nmemory_above = 0.01\nsample_every = \"200ms\"\n",
    ));
    let resources = sampled(&server);
    assert_eq!(resources["limits"]["memory_pct"], 0.01, "{resources}");
    assert!(
        resources["now"]["disk_total_bytes"].as_u64().unwrap() > 0,
        "the SQLite store's disk is watched: {resources}"
    );
    let held = resources["held"].as_str().unwrap_or_default();
    assert!(
        held.starts_with("memory ") && held.ends_with(" % > 0.01 %"),
        "{resources}"
    );
    assert_eq!(resources["alerts"][0]["resource"], "memory");

    let queues = json(&server, &["queue", "ls"]);
    let media = queues["queues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["name"] == "media")
        .cloned()
        .unwrap();
    assert_eq!(media["heavy"], true);
    assert_eq!(media["held"], held, "{queues}");
    let listed = ok(&baton(&server, &["queue", "ls"]));
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with("media") && l.contains("held: memory ")),
        "{listed}"
    );

    let heavy = json(&server, &["submit", "--queue", "media", "--", "true"]);
    let light = json(&server, &["submit", "--wait", "--", "true"]);
    assert_eq!(light["state"], "completed", "the light queue runs: {light}");
    std::thread::sleep(Duration::from_millis(500));
    let heavy = json(&server, &["show", heavy["id"].as_str().unwrap()]);
    assert_eq!(heavy["state"], "queued", "the heavy queue holds: {heavy}");
}

#[test]
fn a_store_disk_under_its_threshold_refuses_submissions_with_507() {
    // No disk this test runs on is 99.99 % free.
    let server = start(Some(
        "[resources]\ndisk_free_below = 99.99\nsample_every = \"200ms\"\n",
    ));
    sampled(&server);
    let out = baton(&server, &["submit", "--", "true"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "accepted: {err}");
    assert!(
        err.contains("insufficient storage: the store's disk (")
            && err.contains("under disk_free_below = 99.99 %"),
        "{err}"
    );
    let jobs = json(&server, &["ls"]);
    assert_eq!(jobs["total"], 0, "nothing was written: {jobs}");
}

#[test]
fn serve_refuses_bad_resource_settings_at_start_by_name() {
    let dir = TempDir::new().unwrap();
    let files = [
        ("memory.toml", "[resources]\nmemory_above = 150\n"),
        ("load.toml", "[resources]\nload_above = \"lots\"\n"),
        ("every.toml", "[resources]\nsample_every = \"1ms\"\n"),
        ("heavy.toml", "[queues]\nmedia = { heavy = true }\n"),
    ];
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    let cases: [Refusal; 4] = [
        (
            &["--config", "memory.toml"],
            &[],
            "invalid setting resources.memory_above in memory.toml: 150 is not a percentage",
        ),
        (
            &["--config", "load.toml"],
            &[],
            "invalid setting resources.load_above in load.toml = \"lots\"",
        ),
        (
            &["--config", "every.toml"],
            &[],
            "invalid setting resources.sample_every in every.toml: 1ms is too short",
        ),
        (
            &["--config", "heavy.toml"],
            &[],
            "invalid setting queues.media in heavy.toml: queue \"media\" needs a concurrency",
        ),
    ];
    refused_at_start(dir.path(), &cases);
}
