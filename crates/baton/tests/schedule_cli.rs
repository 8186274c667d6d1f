//! `baton schedule ...` against a real `baton serve` on a free loopback port.

mod support;

use support::{baton, json, ok, start};

#[test]
fn add_list_show_trigger_history_pause_resume_and_remove() {
    let server = start(None);
    let out = ok(&baton(
        &server,
        &[
            "schedule",
            "add",
            "nightly",
            "--daily",
            "02:30",
            "--tz",
            "America/New_York",
            "--overlap",
            "skip",
            "--label",
            "team=ops",
            "--",
            "sh",
            "-c",
            "echo ::result 7",
        ],
    ));
    assert!(out.starts_with("nightly\n"), "{out}");
    assert!(out.contains("next run 20"), "{out}");

    let s = json(&server, &["schedule", "show", "nightly"]);
    assert_eq!(s["trigger"]["type"], "daily");
    assert_eq!(
        (
            s["trigger"]["hour"].as_u64(),
            s["trigger"]["minute"].as_u64()
        ),
        (Some(2), Some(30))
    );
    assert_eq!(s["timezone"], "America/New_York");
    assert_eq!(s["overlap"], "skip");
    assert_eq!(
        s["job"]["command"],
        serde_json::json!(["sh", "-c", "echo ::result 7"])
    );
    assert_eq!(s["job"]["labels"]["team"], "ops");

    // From a TOML file, and refused input names the field (exit 1).
    std::fs::write(
        server.dir.path().join("hourly.toml"),
        "id = \"hourly\"\nmisfire = \"run_all\"\n[trigger]\ntype = \"cron\"\nexpr = \"0 * * * *\"\n[job]\nkind = \"command\"\ncommand = [\"true\"]\n",
    )
    .unwrap();
    ok(&baton(
        &server,
        &["schedule", "add", "--file", "hourly.toml"],
    ));
    let bad = baton(
        &server,
        &[
            "schedule",
            "add",
            "bad",
            "--cron",
            "*/61 * * * *",
            "--",
            "true",
        ],
    );
    assert_eq!(bad.status.code(), Some(1));
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("invalid cron expression \"*/61 * * * *\": minute step 61 is out of range"),
        "{err}"
    );
    let dup = baton(
        &server,
        &["schedule", "add", "hourly", "--manual", "--", "true"],
    );
    assert_eq!(dup.status.code(), Some(1), "an id taken");
    ok(&baton(
        &server,
        &[
            "schedule",
            "add",
            "hourly",
            "--replace",
            "--every",
            "6h",
            "--",
            "true",
        ],
    ));

    let table = ok(&baton(&server, &["schedule", "ls"]));
    assert!(
        table.contains("nightly") && table.contains("daily 02:30"),
        "{table}"
    );
    assert!(
        table.contains("hourly") && table.contains("every 6h"),
        "{table}"
    );
    assert!(table.contains("2 of 2 schedules"), "{table}");

    // Fire by hand and wait: exit 0 when its job completed.
    let fired = baton(&server, &["schedule", "trigger", "nightly", "--wait"]);
    ok(&fired);
    let history = json(&server, &["schedule", "history", "nightly"]);
    let fire = &history["fires"][0];
    assert_eq!(fire["reason"], "manual");
    assert_eq!(fire["outcome"], "completed");
    let table = ok(&baton(&server, &["schedule", "history", "nightly"]));
    assert!(
        table.contains("manual") && table.contains("completed"),
        "{table}"
    );
    let jobs = json(&server, &["ls", "--limit", "10"]);
    assert_eq!(jobs["jobs"][0]["schedule_id"], "nightly");

    let paused = ok(&baton(&server, &["schedule", "pause", "nightly"]));
    assert!(paused.contains("nightly paused; next run -"), "{paused}");
    let only = json(&server, &["schedule", "ls", "--paused"]);
    assert_eq!(only["total"], 1);
    let resumed = ok(&baton(&server, &["schedule", "resume", "nightly"]));
    assert!(
        resumed.contains("nightly enabled; next run 20"),
        "{resumed}"
    );

    ok(&baton(&server, &["schedule", "rm", "nightly"]));
    let gone = baton(&server, &["schedule", "show", "nightly"]);
    assert_eq!(gone.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&gone.stderr).contains("schedule \"nightly\" not found"),
        "{}",
        String::from_utf8_lossy(&gone.stderr)
    );
}
