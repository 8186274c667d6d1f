//! `remote_kinds` in `baton.toml`: a kind that remote workers serve is accepted before
//! any of them connects, and its jobs wait queued (the server's own workers never take
//! them); a kind the server runs itself cannot be declared remote.

mod support;

use std::process::Command;
use std::time::Duration;

use support::{BIN, baton, json, ok, start};

#[test]
fn a_remote_kind_is_accepted_and_waits_for_a_worker() {
    let server = start(Some("remote_kinds = [\"scrape\"]\n"));
    let id = ok(&baton(
        &server,
        &[
            "submit",
            "--kind",
            "scrape",
            "--id",
            "s-1",
            "--payload",
            "{\"url\": \"https://a.example\"}",
        ],
    ))
    .trim()
    .to_owned();
    assert!(id.contains("s-1"), "{id}");
    let id = "s-1";
    std::thread::sleep(Duration::from_millis(300));
    let job = json(&server, &["show", id]);
    assert_eq!(job["state"], "queued", "{job}");
    // Another kind is still refused, naming the remote one among the known kinds.
    let out = baton(&server, &["submit", "--kind", "paint"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("paint") && err.contains("scrape"), "{err}");
    let workers = ureq::get(format!("{}/api/workers", server.url))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    assert_eq!(workers, "{\"workers\":[]}");
}

#[test]
fn a_kind_the_server_runs_cannot_be_remote() {
    let dir = tempfile::TempDir::new().unwrap();
    std::fs::write(
        dir.path().join("baton.toml"),
        "remote_kinds = [\"command\"]\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .current_dir(dir.path())
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env_remove("BATON_SERVER")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("remote_kinds") && err.contains("command"),
        "{err}"
    );
}
