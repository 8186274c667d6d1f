//! Concurrency limits across queues in a real `baton serve`: set in `baton.toml`, a
//! second labelled job waits while the first runs in another queue and says why in
//! `baton show` and `GET /api/jobs/{id}`, `/api/resources` shows the limit's use, the
//! job starts once the slot frees, and bad settings are refused at start by name.

mod support;

use std::time::{Duration, Instant};

use serde_json::Value;
use support::{Refusal, baton, get, json, ok, refused_at_start, start};
use tempfile::TempDir;

fn state_of(server: &support::Server, id: &str) -> Value {
    json(server, &["show", id])
}

#[test]
fn a_job_held_by_a_label_limit_says_why_and_starts_once_the_slot_frees() {
    let server = start(Some(
        "concurrency_limits = [{label = \"source:alfabeta\", max = 1}, {kind = \"render\", max = 3}]\n\
         [queues]\ndefault = 4\nscrape = 4\n",
    ));
    let first = json(
        &server,
        &["submit", "--label", "source=alfabeta", "--", "sleep", "30"],
    );
    let first = first["id"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(10);
    while state_of(&server, &first)["state"] != "running" {
        assert!(Instant::now() < deadline, "the first job never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    let second = json(
        &server,
        &[
            "submit",
            "--queue",
            "scrape",
            "--label",
            "source=alfabeta",
            "--",
            "true",
        ],
    );
    let second = second["id"].as_str().unwrap().to_owned();
    // Another queue with free slots, and a job without the label, run meanwhile.
    let free = json(
        &server,
        &["submit", "--queue", "scrape", "--wait", "--", "true"],
    );
    assert_eq!(free["state"], "completed", "{free}");
    let held = state_of(&server, &second);
    assert_eq!(held["state"], "queued", "{held}");
    assert_eq!(
        held["waiting_for"], "concurrency limit source:alfabeta (1/1)",
        "{held}"
    );
    let shown = ok(&baton(&server, &["show", &second]));
    assert!(
        shown.lines().any(|l| l.starts_with("waiting for")
            && l.ends_with("concurrency limit source:alfabeta (1/1)")),
        "{shown}"
    );
    let resources = get(&server, "/api/resources");
    let limits = &resources["concurrency_limits"];
    assert_eq!(limits[0]["name"], "source:alfabeta", "{resources}");
    assert_eq!(limits[0]["label"], "source:alfabeta", "{resources}");
    assert_eq!(
        (limits[0]["max"].as_u64(), limits[0]["held"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(limits[1]["name"], "kind render", "{resources}");
    assert_eq!(limits[1]["held"], 0, "{resources}");

    ok(&baton(&server, &["cancel", &first]));
    ok(&baton(&server, &["wait", &second, "--timeout", "20s"]));
    let done = state_of(&server, &second);
    assert_eq!(done["state"], "completed", "{done}");
    assert!(
        done.get("waiting_for").is_none() || done["waiting_for"].is_null(),
        "{done}"
    );
}

#[test]
fn serve_refuses_bad_concurrency_limits_at_start() {
    let dir = TempDir::new().unwrap();
    let files = [
        (
            "label.toml",
            "concurrency_limits = [{label = \"alfabeta\", max = 2}]\n",
        ),
        (
            "max.toml",
            "concurrency_limits = [{kind = \"render\", max = 0}]\n",
        ),
    ];
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    let cases: [Refusal; 2] = [
        (
            &["--config", "label.toml"],
            &[],
            "invalid setting concurrency_limits[0] in label.toml: label \"alfabeta\" must be written key:value",
        ),
        (
            &["--config", "max.toml"],
            &[],
            "invalid setting concurrency_limits[0] in max.toml: max = 0; it must be at least 1",
        ),
    ];
    refused_at_start(dir.path(), &cases);
}
