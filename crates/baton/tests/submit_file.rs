//! `baton submit --file`: job specs from a file or standard input, sent in batches to a
//! real `baton serve`.

mod support;

use std::io::Write;
use std::process::{Command, Stdio};

use support::{BIN, Server, baton, json, ok, start};

fn spec(i: usize) -> String {
    format!(
        r#"{{"id": "file-{i}", "kind": "command", "command": ["true"], "labels": {{"n": "{i}"}}}}"#
    )
}

fn total(server: &Server) -> u64 {
    json(server, &["stats"])["total"].as_u64().unwrap()
}

#[test]
fn a_file_is_sent_in_batches_and_its_ids_printed() {
    let server = start(None);
    // Blank lines are skipped; line numbers still count them.
    let mut text = String::new();
    for i in 0..25 {
        text.push_str(&spec(i));
        text.push('\n');
        if i % 7 == 0 {
            text.push_str("   \n");
        }
    }
    let file = server.dir.path().join("jobs.jsonl");
    std::fs::write(&file, &text).unwrap();
    let out = baton(
        &server,
        &[
            "submit",
            "--file",
            file.to_str().unwrap(),
            "--batch-size",
            "10",
        ],
    );
    let stdout = ok(&out);
    let ids: Vec<&str> = stdout.lines().collect();
    let expected: Vec<String> = (0..25).map(|i| format!("file-{i}")).collect();
    assert_eq!(ids, expected);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("submitted 25 jobs in 3 batches: 25 created, 0 existed already"),
        "{stderr}"
    );
    assert!(
        !stderr.contains('\x1b'),
        "no bar off a terminal: {stderr:?}"
    );
    assert_eq!(total(&server), 25);
    assert_eq!(json(&server, &["show", "file-24"])["labels"]["n"], "24");

    // Again, with --json: the jobs, each one that existed answered as it is.
    let out = baton(
        &server,
        &["--json", "submit", "--file", file.to_str().unwrap()],
    );
    let jobs: Vec<serde_json::Value> = ok(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(jobs.len(), 25);
    assert_eq!(jobs[3]["id"], "file-3");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("0 created, 25 existed already"), "{stderr}");
    assert_eq!(total(&server), 25);
}

#[test]
fn specs_can_come_from_standard_input() {
    let server = start(None);
    let mut child = Command::new(BIN)
        .current_dir(server.dir.path())
        .args(["--server", &server.url, "submit", "--file", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    for i in 0..3 {
        writeln!(stdin, "{}", spec(i)).unwrap();
    }
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        ok(&out).lines().collect::<Vec<_>>(),
        ["file-0", "file-1", "file-2"]
    );
    assert_eq!(total(&server), 3);
}

#[test]
fn a_bad_line_is_named_before_anything_is_sent() {
    let server = start(None);
    let file = server.dir.path().join("bad.jsonl");
    std::fs::write(
        &file,
        format!(
            "{}\n\n{{\"kind\": \"command\", \"comand\": [\"true\"]}}\n{}\n",
            spec(0),
            spec(1)
        ),
    )
    .unwrap();
    let out = baton(&server, &["submit", "--file", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("line 3 of ") && stderr.contains("comand"),
        "{stderr}"
    );
    assert_eq!(total(&server), 0, "nothing was sent");

    let out = baton(&server, &["submit", "--file", "missing.jsonl"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read missing.jsonl"));
}

#[test]
fn a_refused_batch_stops_and_says_what_was_stored() {
    let server = start(None);
    let mut lines: Vec<String> = (0..25).map(spec).collect();
    // Line 15 (index 4 of the second batch) asks for a delay that is no duration.
    lines[14] = r#"{"kind": "command", "command": ["true"], "delay": "soon"}"#.into();
    let file = server.dir.path().join("jobs.jsonl");
    std::fs::write(&file, lines.join("\n")).unwrap();
    let out = baton(
        &server,
        &[
            "submit",
            "--file",
            file.to_str().unwrap(),
            "--batch-size",
            "10",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("line 15 was refused (422): invalid job spec: jobs[4].delay"),
        "{stderr}"
    );
    assert!(stderr.contains("10 jobs were stored before it"), "{stderr}");
    // The first batch's ids were printed as it was stored.
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 10);
    assert_eq!(total(&server), 10);

    let out = baton(
        &server,
        &[
            "submit",
            "--file",
            file.to_str().unwrap(),
            "--batch-size",
            "0",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid --batch-size 0"));
}
