//! `baton serve`'s Host and Origin settings, through the real binary: refused at start
//! when malformed, and applied to requests sent byte for byte over TCP.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;

use support::{Refusal, baton, ok, refused_at_start, start};
use tempfile::TempDir;

#[test]
fn serve_refuses_bad_allowed_hosts_and_cors_origins_at_start() {
    let dir = TempDir::new().unwrap();
    std::fs::write(
        dir.path().join("origins.toml"),
        "cors_origins = [\"app.example\"]\n",
    )
    .unwrap();
    let cases: [Refusal; 4] = [
        (
            &["--allowed-host", "http://baton.lan"],
            &[],
            "invalid setting --allowed-host: \"http://baton.lan\": expected a host name or an IP address",
        ),
        (
            &[],
            &[("BATON_ALLOWED_HOSTS", "baton.lan:7700")],
            "invalid setting BATON_ALLOWED_HOSTS: \"baton.lan:7700\"",
        ),
        (
            &["--cors-origin", "null"],
            &[],
            "invalid setting --cors-origin: \"null\": expected an origin",
        ),
        (
            &["--config", "origins.toml"],
            &[],
            "invalid setting cors_origins in origins.toml: \"app.example\"",
        ),
    ];
    refused_at_start(dir.path(), &cases);
}

/// Sends a request as written; the answer's status line and body.
fn send(url: &str, head: &str, body: &str) -> String {
    let addr = url.trim_start_matches("http://");
    let mut tcp = TcpStream::connect(addr).unwrap();
    let text = format!(
        "{}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        head.replace('\n', "\r\n"),
        body.len()
    );
    tcp.write_all(text.as_bytes()).unwrap();
    let mut answer = String::new();
    tcp.read_to_string(&mut answer).unwrap();
    answer
}

#[test]
fn serve_applies_allowed_hosts_and_cors_origins() {
    let server = start(Some(
        "allowed_hosts = [\"baton.lan\"]\ncors_origins = [\"https://app.example\"]\n",
    ));
    let file = server.dir.path().join("pwned");
    let job = format!(
        r#"{{"kind": "command", "command": ["sh", "-c", "touch '{}'"]}}"#,
        file.display()
    );
    let post = |host: &str, origin: Option<&str>| {
        let origin = origin.map(|o| format!("\nOrigin: {o}")).unwrap_or_default();
        send(
            &server.url,
            &format!(
                "POST /api/jobs HTTP/1.1\nHost: {host}\nContent-Type: application/json{origin}"
            ),
            &job,
        )
    };
    let answer = post("attacker.example", None);
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    assert!(answer.contains("allowed_hosts"), "{answer}");
    let answer = post("baton.lan", Some("http://evil.example"));
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    assert!(answer.contains("cors_origins"), "{answer}");
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(!file.exists(), "a refused job ran");
    let listed = support::json(&server, &["ls"]);
    assert_eq!(
        listed["jobs"],
        serde_json::json!([]),
        "a refused job exists"
    );

    // The listed name and the listed origin are served; the CLI (no Origin) too.
    let answer = post("baton.lan:7700", Some("https://app.example"));
    assert!(answer.starts_with("HTTP/1.1 201"), "{answer}");
    ok(&baton(&server, &["stats"]));
}
