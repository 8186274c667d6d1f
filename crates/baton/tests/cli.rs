//! A real `baton serve` process on a free loopback port, driven by the real CLI.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use support::{BIN, Refusal, Server, baton, json, ok, refused_at_start, start};
use tempfile::TempDir;

fn wait_for_state(server: &Server, id: &str, state: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if json(server, &["show", id])["state"] == state {
            return;
        }
        assert!(Instant::now() < deadline, "{id} never became {state}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn submit_wait_show_logs_and_list() {
    let server = start(None);
    let script = "echo ::step fetch; echo ::progress 0.5 half; echo first line; echo ::checkpoint '{\"page\": 2}'; echo second line >&2; echo ::result '{\"rows\": 7}'";
    let id = ok(&baton(
        &server,
        &["submit", "--label", "source=cli", "--", "sh", "-c", script],
    ))
    .trim()
    .to_owned();
    assert_eq!(id.len(), 36, "{id}");
    let waited = baton(&server, &["wait", &id]);
    assert_eq!(waited.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&waited.stdout).contains("completed"));
    let job = json(&server, &["show", &id]);
    assert_eq!(job["state"], "completed");
    assert_eq!(job["result"], serde_json::json!({"rows": 7}));
    assert_eq!(job["step"], "fetch");
    assert_eq!(job["labels"]["source"], "cli");
    // stdout and stderr are separate pipes: each line once, in no set order.
    let logs = ok(&baton(&server, &["logs", &id]));
    let mut lines: Vec<&str> = logs.lines().collect();
    lines.sort();
    assert_eq!(lines, vec!["first line", "second line"]);
    let list = json(&server, &["ls", "--state", "completed"]);
    assert_eq!(list["total"], 1);
    let finished = json(&server, &["ls", "--sort", "finished", "-q", "source:cli"]);
    assert_eq!(finished["jobs"][0]["id"], id.as_str(), "{finished}");
    let refused = baton(&server, &["ls", "--sort", "oldest"]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("oldest"),
        "{refused:?}"
    );
    let table = ok(&baton(&server, &["ls"]));
    assert!(
        table.contains(&id) && table.contains("completed"),
        "{table}"
    );
    let stats = json(&server, &["stats"]);
    assert_eq!(stats["states"]["completed"], 1);
    let events = ok(&baton(&server, &["events", "--job", &id]));
    assert!(
        events.contains("job.checkpoint") && events.contains("job.completed"),
        "{events}"
    );
    let servers = ok(&baton(&server, &["servers"]));
    assert!(
        servers.contains(&server.child.id().to_string()),
        "{servers}"
    );
}

#[test]
fn show_ls_and_attempts_tell_what_a_job_runs_and_how_each_attempt_ended() {
    let server = start(None);
    // The first attempt saves a checkpoint and is killed with its server; the second
    // resumes from it and completes.
    let script = r#"if [ -n "$BATON_CHECKPOINT" ]; then echo "::result $BATON_CHECKPOINT"; exit 0; fi; echo '::checkpoint {"page": 4}'; sleep 60"#;
    let id = ok(&baton(
        &server,
        &["submit", "--id", "crawl", "--", "sh", "-c", script],
    ))
    .trim()
    .to_owned();
    wait_for_state(&server, &id, "running");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ok(&baton(&server, &["events", &id])).contains("job.checkpoint") {
        assert!(Instant::now() < deadline, "no checkpoint saved");
        std::thread::sleep(Duration::from_millis(20));
    }
    let first_server = json(&server, &["servers"])["servers"][0]["id"].clone();
    let server = server.crash_and_restart();
    let waited = baton(&server, &["wait", &id]);
    assert_eq!(waited.status.code(), Some(0), "{waited:?}");
    assert_eq!(
        json(&server, &["show", &id])["result"],
        serde_json::json!({"page": 4})
    );

    let attempts = json(&server, &["attempts", &id])["attempts"].clone();
    let a = attempts.as_array().unwrap();
    assert_eq!(a.len(), 2, "{attempts}");
    assert_eq!(
        (&a[0]["attempt"], &a[0]["outcome"]),
        (&serde_json::json!(1), &serde_json::json!("crashed"))
    );
    assert_eq!(a[0]["server_id"], first_server);
    assert_eq!(a[0]["resumed_from"], serde_json::Value::Null);
    assert_eq!(
        (&a[1]["attempt"], &a[1]["outcome"], &a[1]["exit_code"]),
        (
            &serde_json::json!(1),
            &serde_json::json!("completed"),
            &serde_json::json!(0)
        )
    );
    assert_ne!(
        a[1]["server_id"], first_server,
        "the second attempt ran on the restarted server"
    );
    // A crash does not use up an attempt: the second run goes on with the first.
    assert_eq!(a[1]["continued"], true);
    assert_eq!(json(&server, &["show", &id])["attempt"], 1);
    // It resumed from the checkpoint that the first run saved: its event's seq.
    let events = ok(&baton(&server, &["--json", "events", &id]));
    let saved: Vec<serde_json::Value> = events
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|e| e["type"] == "job.checkpoint")
        .collect();
    assert_eq!(saved.len(), 1, "{events}");
    assert_eq!(a[1]["resumed_from"]["seq"], saved[0]["seq"]);

    // People read the same in tables.
    let table = ok(&baton(&server, &["attempts", &id]));
    assert!(
        table.contains("crashed")
            && table.contains("completed")
            && table.contains(&format!("cp {}", saved[0]["seq"])),
        "{table}"
    );
    let shown = ok(&baton(&server, &["show", &id]));
    assert!(shown.contains("command      sh -c 'if [ -n"), "{shown}");
    assert!(shown.contains("grace 10s"), "{shown}");
    assert!(
        shown.contains("crashed"),
        "attempts follow the job: {shown}"
    );
    let listed = ok(&baton(&server, &["ls", "--command"]));
    assert!(
        listed.contains("COMMAND") && listed.contains("sh -c 'if"),
        "{listed}"
    );
    assert!(!ok(&baton(&server, &["ls"])).contains("COMMAND"));
    let missing = baton(&server, &["attempts", "nope"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("not found"),
        "{missing:?}"
    );
}

/// A `baton serve` killed with SIGKILL while a command job runs: after the restart
/// the job's `job.crashed` event (API and `baton show`) names the dead server and its
/// last heartbeat, the last checkpoint and what ran after it.
#[test]
fn a_crash_tells_the_dead_server_the_checkpoint_and_what_was_lost() {
    let server = start(None);
    let script = r#"echo '::checkpoint {"page": 1}'; echo '::checkpoint {"page": 2}'; echo '::progress 0.5'; echo '::step parse'; echo '::output half'; echo one; echo two; echo ready; sleep 60"#;
    let id = ok(&baton(
        &server,
        &["submit", "--id", "lost", "--", "sh", "-c", script],
    ))
    .trim()
    .to_owned();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ok(&baton(&server, &["logs", &id])).contains("ready") {
        assert!(Instant::now() < deadline, "the job never printed ready");
        std::thread::sleep(Duration::from_millis(20));
    }
    let dead = json(&server, &["servers"])["servers"][0]["id"].clone();
    let server = server.crash_and_restart();
    let events: Vec<serde_json::Value> = ok(&baton(&server, &["--json", "events", &id]))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let of =
        |t: &str| -> Vec<&serde_json::Value> { events.iter().filter(|e| e["type"] == t).collect() };
    let crashed = *of("job.crashed").first().expect("a job.crashed event");
    let d = &crashed["data"];
    let servers = json(&server, &["servers"]);
    let old = servers["servers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == dead)
        .expect("the dead server is still listed");
    assert_eq!(d["server_id"], dead);
    assert_eq!(d["heartbeat_at"], old["heartbeat_at"]);
    assert!(d["heartbeat_at"].as_str().unwrap() <= crashed["at"].as_str().unwrap());
    // The recovered attempt may have run and saved again since: the last one before.
    let before = |e: &&&serde_json::Value| e["seq"].as_u64() < crashed["seq"].as_u64();
    let last = *of("job.checkpoint")
        .iter()
        .rev()
        .find(before)
        .expect("checkpoints");
    assert_eq!(d["checkpoint"]["seq"], last["seq"]);
    assert_eq!(d["checkpoint"]["at"], last["at"]);
    assert_eq!(d["checkpoint"]["attempt"], 1);
    assert_eq!(
        d["since_checkpoint"],
        serde_json::json!({"from_seq": last["seq"], "progress": 1, "steps": 1, "output": 1, "log_lines": 3}),
        "{crashed}"
    );
    let shown = ok(&baton(&server, &["show", &id]));
    assert!(
        shown.contains(&format!(
            "dead server  {}, last heartbeat",
            dead.as_str().unwrap()
        )) && shown.contains(&format!("checkpoint   seq {} at", last["seq"]))
            && shown.contains("1 progress, 1 step, 1 output and 3 log events"),
        "{shown}"
    );
    // The recovered attempt sleeps again: end it rather than leave it to the kill.
    ok(&baton(&server, &["cancel", &id]));
}

#[test]
fn pause_resume_and_stop_from_the_cli() {
    let server = start(None);
    let id = ok(&baton(
        &server,
        &[
            "submit",
            "--",
            "sh",
            "-c",
            "while true; do echo tick; sleep 0.05; done",
        ],
    ))
    .trim()
    .to_owned();
    wait_for_state(&server, &id, "running");
    assert!(ok(&baton(&server, &["pause", &id])).contains("paused"));
    assert_eq!(json(&server, &["show", &id])["state"], "paused");
    let again = baton(&server, &["pause", &id]);
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("it is paused"));
    assert!(ok(&baton(&server, &["resume", &id])).contains("running"));
    assert!(ok(&baton(&server, &["stop", "--force", &id])).contains("cancelled"));
    let waited = baton(&server, &["wait", &id]);
    assert_eq!(waited.status.code(), Some(2), "cancelled jobs exit 2");
}

#[test]
fn exit_codes_scripts_can_use() {
    let server = start(None);
    let failed = baton(
        &server,
        &["submit", "--wait", "--retries", "0", "--", "false"],
    );
    assert_eq!(failed.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&failed.stdout).contains("exit_code"));
    let missing = baton(&server, &["show", "nope"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("job \"nope\" not found"));
    let bad = baton(&server, &["submit", "--kind", "nothing-serves-this"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("no handler is registered"));
    let id = ok(&baton(&server, &["submit", "--", "sleep", "5"]))
        .trim()
        .to_owned();
    let timed_out = baton(&server, &["wait", &id, "--timeout", "300ms"]);
    assert_eq!(timed_out.status.code(), Some(124));
    let unreachable = Command::new(BIN)
        .args(["--server", "http://127.0.0.1:9", "ls"])
        .output()
        .unwrap();
    assert_eq!(unreachable.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&unreachable.stderr).contains("cannot reach the Baton server"));
}

#[test]
fn sigterm_shuts_down_gracefully_and_hands_running_jobs_back() {
    let mut server = start(Some("shutdown_timeout = \"500ms\"\n"));
    let id = ok(&baton(&server, &["submit", "--", "sleep", "30"]))
        .trim()
        .to_owned();
    wait_for_state(&server, &id, "running");
    let t0 = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(server.child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = server.child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
    // The job waits in the queue for the next start; the database is free again.
    let db = server.dir.path().join("baton.db");
    let state = read_state(&db, &id);
    assert_eq!(state, "queued");
}

fn read_state(db: &Path, id: &str) -> String {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        use baton_store::Store;
        let store = baton_store::SqliteStore::open(baton_store::SqliteOptions::new(db)).unwrap();
        let job = store.get(id).await.unwrap().unwrap();
        store.close().await;
        job.state.to_string()
    })
}

#[test]
fn daemon_start_status_stop() {
    let dir = TempDir::new().unwrap();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let listen = format!("127.0.0.1:{port}");
    let url = format!("http://{listen}");
    let run = |args: &[&str]| {
        Command::new(BIN)
            .current_dir(dir.path())
            .args(["--server", &url])
            .args(args)
            .output()
            .unwrap()
    };
    let started = run(&[
        "daemon",
        "start",
        "--listen",
        &listen,
        "--store",
        "sqlite://d.db",
    ]);
    let text = ok(&started);
    assert!(text.contains("baton started"), "{text}");
    assert!(dir.path().join("baton.pid").exists());
    let again = run(&["daemon", "start", "--listen", &listen]);
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("already running"));
    let status = ok(&run(&["daemon", "status"]));
    assert!(
        status.contains("running, pid") && status.contains("workers"),
        "{status}"
    );
    assert!(status.contains("last lines of baton.log"), "{status}");
    let stopped = ok(&run(&["daemon", "stop"]));
    assert!(stopped.contains("baton stopped"), "{stopped}");
    assert!(!dir.path().join("baton.pid").exists());
    let status = run(&["daemon", "status"]);
    assert_eq!(status.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&status.stdout).contains("not running"));
}

#[test]
fn workflows_and_queues_from_the_cli() {
    let server = start(None);
    let dir = server.dir.path();
    std::fs::write(
        dir.join("nightly.json"),
        r#"{"id": "nightly", "jobs": {
            "fetch": {"kind": "command", "command": ["sh", "-c", "echo ::result 7"]},
            "load": {"kind": "command", "command": ["sh", "-c", "cat \"$BATON_PARENT_RESULTS\""],
                     "depends_on": ["fetch"]},
            "report": {"kind": "command", "command": ["true"], "depends_on": [{"job": "load", "on": "finished"}]}
        }}"#,
    )
    .unwrap();
    let out = ok(&baton(
        &server,
        &["workflow", "submit", "nightly.json", "--wait"],
    ));
    assert!(out.contains("workflow nightly: completed"), "{out}");
    assert!(
        out.contains("report") && out.contains("load (finished)"),
        "{out}"
    );
    let graph = json(&server, &["workflow", "show", "nightly"]);
    assert_eq!(graph["state"], "completed");
    assert_eq!(graph["edges"].as_array().unwrap().len(), 2);
    let load = graph["jobs"]["load"].as_str().unwrap().to_owned();
    // Listed, newest first, with its jobs counted.
    let table = ok(&baton(&server, &["workflow", "ls"]));
    let row = table
        .lines()
        .find(|l| l.starts_with("nightly "))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(
        row.contains("completed") && row.contains("3 completed"),
        "{table}"
    );
    let list = json(&server, &["workflow", "ls", "--limit", "1"]);
    assert_eq!(list["workflows"][0]["id"], "nightly", "{list}");
    assert_eq!(list["workflows"][0]["counts"]["completed"], 3, "{list}");
    let logs = ok(&baton(&server, &["logs", &load]));
    assert!(
        logs.contains("\"fetch\"") && logs.contains("\"result\": 7"),
        "{logs}"
    );

    std::fs::write(
        dir.join("loop.toml"),
        "[jobs.a]\nkind = \"command\"\ncommand = [\"true\"]\ndepends_on = [\"b\"]\n\n\
         [jobs.b]\nkind = \"command\"\ncommand = [\"true\"]\ndepends_on = [\"a\"]\n",
    )
    .unwrap();
    let refused = baton(&server, &["workflow", "submit", "loop.toml"]);
    assert_eq!(refused.status.code(), Some(1));
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("cycle: a -> b -> a"), "{err}");

    let q = json(&server, &["queue", "pause", "default"]);
    assert_eq!(q["paused"], true);
    let id = ok(&baton(&server, &["submit", "--", "true"]))
        .trim()
        .to_owned();
    let after = ok(&baton(
        &server,
        &["submit", "--depends-on", &id, "--", "true"],
    ))
    .trim()
    .to_owned();
    assert_eq!(json(&server, &["show", &after])["state"], "awaiting");
    let table = ok(&baton(&server, &["queue", "ls"]));
    assert!(table.contains("paused"), "{table}");
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(json(&server, &["show", &id])["state"], "queued");
    ok(&baton(&server, &["queue", "resume", "default"]));
    wait_for_state(&server, &after, "completed");
    let dup = baton(
        &server,
        &["submit", "--unique-key", "k", "--", "sleep", "5"],
    );
    ok(&dup);
    let again = baton(
        &server,
        &["submit", "--unique-key", "k", "--", "sleep", "5"],
    );
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("unique key \"k\""));
}

/// A job that reports progress and a step, so that a terminal would get a bar.
fn progress_job(server: &Server) -> String {
    let script = "echo ::progress 0.25 quarter; sleep 0.3; echo ::step second; echo ::progress 0.75; sleep 0.3";
    ok(&baton(server, &["submit", "--", "sh", "-c", script]))
        .trim()
        .to_owned()
}

#[test]
fn wait_off_a_terminal_prints_no_escape_codes() {
    let server = start(None);
    // Output captured by pipes, as in `baton wait ID | cat`.
    let id = progress_job(&server);
    let waited = baton(&server, &["wait", &id]);
    let stdout = ok(&waited);
    let stderr = String::from_utf8_lossy(&waited.stderr);
    assert!(stdout.contains("completed"), "{stdout}");
    assert!(
        !stdout.contains('\x1b') && !stderr.contains('\x1b'),
        "stdout: {stdout:?}\nstderr: {stderr:?}"
    );
    let submitted = baton(
        &server,
        &[
            "submit",
            "--wait",
            "--",
            "sh",
            "-c",
            "echo ::progress 0.5; sleep 0.3",
        ],
    );
    let stdout = ok(&submitted);
    let stderr = String::from_utf8_lossy(&submitted.stderr);
    assert!(
        !stdout.contains('\x1b') && !stderr.contains('\x1b'),
        "stdout: {stdout:?}\nstderr: {stderr:?}"
    );
}

#[test]
fn wait_on_a_terminal_draws_the_bar() {
    let server = start(None);
    let id = progress_job(&server);
    // `script` runs the command on a pseudo-terminal and copies what it draws.
    let line = format!("{BIN} --server {} wait {id}", server.url);
    let out = Command::new("script")
        .args(["-qec", &line, "/dev/null"])
        .env_remove("BATON_SERVER")
        .output()
        .expect("script (util-linux) runs a command on a pseudo-terminal");
    let drawn = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{drawn}");
    assert!(
        drawn.contains("\x1b[2K") && drawn.contains("75%"),
        "{drawn:?}"
    );
}

#[test]
fn events_takes_the_job_as_an_argument() {
    let server = start(None);
    let id = ok(&baton(&server, &["submit", "--wait", "--", "true"]))
        .lines()
        .find_map(|l| l.strip_prefix("id").map(|v| v.trim().to_owned()))
        .unwrap();
    let by_arg = ok(&baton(&server, &["events", &id]));
    assert!(
        by_arg.contains("job.submitted") && by_arg.contains("job.completed"),
        "{by_arg}"
    );
    assert_eq!(by_arg, ok(&baton(&server, &["events", "--job", &id])));
    let both = baton(&server, &["events", &id, "--job", &id]);
    assert_eq!(
        both.status.code(),
        Some(2),
        "clap refuses a job given twice"
    );
    assert!(String::from_utf8_lossy(&both.stderr).contains("cannot be used with"));
    let none = baton(&server, &["events"]);
    assert_eq!(none.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&none.stderr)
            .contains("events without -f need a job: baton events ID")
    );
}

#[test]
fn queues_and_queue_ls_are_one_command() {
    let server = start(None);
    let ls = ok(&baton(&server, &["queue", "ls"]));
    assert!(ls.contains("QUEUE") && ls.contains("default"), "{ls}");
    assert_eq!(ok(&baton(&server, &["queues"])), ls);
    assert_eq!(ok(&baton(&server, &["queue"])), ls);
    assert_eq!(json(&server, &["queues"]), json(&server, &["queue", "ls"]));
}

/// The subcommands a help page lists, each with its help line (empty when it has none).
fn listed(help: &str) -> Vec<(String, String)> {
    help.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .map(|l| {
            let l = l.trim();
            let (name, text) = l.split_once(' ').unwrap_or((l, ""));
            (name.to_owned(), text.trim().to_owned())
        })
        .filter(|(name, _)| name != "help")
        .collect()
}

#[test]
fn help_gives_every_subcommand_a_line_and_names_no_design_document() {
    let help = |path: &[String]| {
        let out = Command::new(BIN).args(path).arg("--help").output().unwrap();
        assert!(out.status.success(), "{path:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let top = Command::new(BIN).arg("help").output().unwrap();
    let top = String::from_utf8_lossy(&top.stdout).into_owned();
    let names: Vec<String> = listed(&top).into_iter().map(|(n, _)| n).collect();
    for expected in ["pause", "resume", "cancel", "events", "queue", "bench"] {
        assert!(names.iter().any(|n| n == expected), "{expected}: {top}");
    }
    assert!(
        !names.iter().any(|n| n == "queues"),
        "an alias, not a second command: {top}"
    );
    let mut pages = vec![(Vec::<String>::new(), top)];
    let mut seen = 0;
    while let Some((path, page)) = pages.pop() {
        seen += 1;
        assert!(
            !page.contains("DESIGN"),
            "{path:?} names a design document:\n{page}"
        );
        for (name, text) in listed(&page) {
            assert!(
                !text.is_empty(),
                "`baton {} {name}` has no help line",
                path.join(" ")
            );
            let mut sub = path.clone();
            sub.push(name);
            let page = help(&sub);
            pages.push((sub, page));
        }
    }
    assert!(seen > 40, "only {seen} help pages");
}

#[test]
fn serve_refuses_a_bad_request_or_stream_limit_at_start() {
    let dir = TempDir::new().unwrap();
    let cases: [Refusal; 3] = [
        (
            &["--max-requests", "0"],
            &[],
            "invalid setting --max-requests = \"0\": expected a whole number of at least 1",
        ),
        (
            &[],
            &[("BATON_MAX_STREAMS", "many")],
            "invalid setting BATON_MAX_STREAMS = \"many\"",
        ),
        (
            &["--config", "limits.toml"],
            &[],
            "invalid setting max_streams in limits.toml",
        ),
    ];
    std::fs::write(dir.path().join("limits.toml"), "max_streams = 0\n").unwrap();
    refused_at_start(dir.path(), &cases);
}

#[test]
fn serve_open_starts_the_browser_on_the_dashboard_or_says_why_not() {
    use std::io::{BufRead, BufReader};
    let dir = TempDir::new().unwrap();
    let opened = dir.path().join("opened.txt");
    let browser = dir.path().join("browser.sh");
    std::fs::write(
        &browser,
        format!("#!/bin/sh\necho \"$1\" > {}\n", opened.display()),
    )
    .unwrap();
    std::fs::set_permissions(
        &browser,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let start = |browser: &str| {
        let mut child = Command::new(BIN)
            .current_dir(dir.path())
            .args(["serve", "--listen", "127.0.0.1:0", "--open"])
            .env("BROWSER", browser)
            .env_remove("BATON_SERVER")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let url = line
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .unwrap()
            .to_owned();
        (child, url)
    };
    let (mut child, url) = start(browser.to_str().unwrap());
    let deadline = Instant::now() + Duration::from_secs(10);
    while !opened.exists() {
        assert!(Instant::now() < deadline, "the browser was not started");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(
        std::fs::read_to_string(&opened).unwrap().trim(),
        format!("{url}/")
    );
    child.kill().unwrap();
    child.wait().unwrap();

    // A browser that cannot start is said, with the address; the server serves on.
    let (mut child, url) = start("/nonexistent/browser");
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut said = String::new();
    stderr.read_line(&mut said).unwrap();
    assert!(
        said.contains("cannot open a browser") && said.contains(&format!("{url}/")),
        "{said}"
    );
    assert!(child.try_wait().unwrap().is_none(), "the server goes on");
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn serve_demo_loads_a_pipeline_a_schedule_a_workflow_and_a_failing_job() {
    use std::io::{BufRead, BufReader};
    let dir = TempDir::new().unwrap();
    let mut child = Command::new(BIN)
        .current_dir(dir.path())
        .args(["serve", "--listen", "127.0.0.1:0", "--demo"])
        .env_remove("BATON_SERVER")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap()
        .to_owned();
    let mut said = String::new();
    out.read_line(&mut said).unwrap();
    assert!(said.starts_with("demo data loaded"), "{said}");
    let server = Server { child, url, dir };
    let pipelines = json(&server, &["pipeline", "ls"]);
    assert_eq!(pipelines["pipelines"][0]["id"], "demo-etl");
    let schedule = json(&server, &["schedule", "show", "demo-every-minute"]);
    assert!(schedule["next_run"].is_string(), "{schedule}");
    let workflow = json(&server, &["workflow", "show", "demo-workflow"]);
    assert_eq!(workflow["nodes"].as_array().unwrap().len(), 5);
    let demo = json(&server, &["ls", "--label", "demo:true", "--limit", "100"]);
    assert!(demo["total"].as_u64().unwrap() >= 7, "{demo}");
    // The pipeline reports progress within seconds; the failing job fails.
    wait_for_state(&server, "demo-pipeline-now", "running");
    let deadline = Instant::now() + Duration::from_secs(20);
    while json(&server, &["show", "demo-pipeline-now"])["progress"].is_null() {
        assert!(
            Instant::now() < deadline,
            "no progress from the demo pipeline"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    wait_for_state(&server, "demo-fails", "failed");
    let failed = json(&server, &["show", "demo-fails"]);
    assert_eq!(failed["error"]["code"], "exit_code");
}
