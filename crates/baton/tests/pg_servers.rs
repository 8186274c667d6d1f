//! Two real `baton serve` processes on one PostgreSQL database: jobs submitted to one
//! run on both, each once, and a stop sent to one server ends a job that the other
//! runs.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use support::{json, ok, start_on};
use tempfile::TempDir;

/// The test database (see `scripts/test`) and a schema of its own for this test, in
/// a URL that `baton serve` takes.
fn database() -> (String, String) {
    let url = std::env::var("BATON_TEST_POSTGRES").unwrap_or_else(|_| {
        panic!("BATON_TEST_POSTGRES is not set: run the tests with `bash scripts/test`, which starts PostgreSQL and creates a test database")
    });
    let schema = format!("serve_{}", std::process::id());
    psql(
        &url,
        &format!("DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}"),
    );
    let sep = if url.contains('?') { '&' } else { '?' };
    (format!("{url}{sep}options=-csearch_path%3D{schema}"), url)
}

fn psql(url: &str, sql: &str) -> String {
    let out = Command::new("psql")
        .args([url, "-qAtc", sql])
        .output()
        .expect("psql runs");
    assert!(
        out.status.success(),
        "{sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn two_servers_share_the_queue_and_a_stop_reaches_the_server_that_runs_the_job() {
    let (store, _) = database();
    let config = "[queues]\ndefault = 2\n";
    let a = start_on(TempDir::new().unwrap(), &store, Some(config));
    let b = start_on(TempDir::new().unwrap(), &store, Some(config));
    let schema = format!("serve_{}", std::process::id());
    let db = std::env::var("BATON_TEST_POSTGRES").unwrap();
    let q = |sql: &str| psql(&db, &format!("SET search_path TO {schema}; {sql}"));

    // Twelve jobs submitted to A alone: B learns of them and takes its share.
    for _ in 0..12 {
        ok(&support::baton(
            &a,
            &["submit", "--shell", "--", "sleep 0.3"],
        ));
    }
    wait_for("the twelve jobs to complete", || {
        q("SELECT COUNT(*) FROM jobs WHERE state = 'completed'") == "12"
    });
    assert_eq!(
        q("SELECT COUNT(DISTINCT server_id) || ' ' || MAX(attempt) FROM jobs"),
        "2 1",
        "both servers ran jobs, each job once"
    );

    // A long job, stopped through the server that does not run it.
    let job = json(&b, &["submit", "--shell", "--", "sleep 60"]);
    let id = job["id"].as_str().expect("id").to_owned();
    let state = || {
        q(&format!(
            "SELECT state || ' ' || COALESCE(pgid, 0) FROM jobs WHERE id = '{id}'"
        ))
    };
    wait_for("the job to run with its process", || {
        let s = state();
        s.starts_with("running ") && !s.ends_with(" 0")
    });
    let pgid = q(&format!("SELECT pgid FROM jobs WHERE id = '{id}'"));
    let runner = q(&format!(
        "SELECT url FROM servers WHERE id = (SELECT server_id FROM jobs WHERE id = '{id}')"
    ));
    let other = if runner == a.url { &b } else { &a };
    assert_ne!(runner, other.url);
    ok(&support::baton(other, &["stop", &id]));
    wait_for("the stopped job to end", || {
        q(&format!("SELECT state FROM jobs WHERE id = '{id}'")) == "cancelled"
    });
    wait_for("the job's process to be gone", || {
        !std::path::Path::new(&format!("/proc/{pgid}")).exists()
            || std::fs::read_to_string(format!("/proc/{pgid}/stat"))
                .map(|s| s.contains(") Z "))
                .unwrap_or(true)
    });
}
