//! `baton cancel|retry|pause|resume|stop|rm` on several jobs (ids or filter flags)
//! against a real `baton serve`.

mod support;

use support::{Refusal, Server, baton, json, ok, refused_at_start, start};
use tempfile::TempDir;

fn submit_queued(server: &Server, n: usize) -> Vec<String> {
    (0..n)
        .map(|_| {
            ok(&baton(server, &["submit", "--", "true"]))
                .trim()
                .to_owned()
        })
        .collect()
}

fn state(server: &Server, id: &str) -> String {
    json(server, &["show", id])["state"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn control_commands_take_several_ids_or_the_list_filters() {
    let server = start(Some("bulk_limit = 3\n"));
    ok(&baton(&server, &["queue", "pause", "default"]));
    let ids = submit_queued(&server, 5);
    let (a, b, c) = (&ids[0], &ids[1], &ids[2]);

    // Several ids: one bulk request, its counts printed.
    let out = ok(&baton(&server, &["cancel", a, b]));
    assert!(out.contains("cancel: 2 done of 2 matched"), "{out}");
    assert_eq!(state(&server, a), "cancelled");
    assert_eq!(state(&server, b), "cancelled");
    assert_eq!(state(&server, c), "queued");

    // A refusal is counted and named, and the exit code says something was refused.
    let refused = baton(&server, &["cancel", a, c]);
    assert_eq!(refused.status.code(), Some(1), "{}", stderr(&refused));
    let out = stdout(&refused);
    assert!(out.contains("cancel: 1 done of 2 matched"), "{out}");
    assert!(out.contains("refused 1: illegal_transition"), "{out}");
    assert!(out.contains(a.as_str()), "the refused job is named: {out}");
    assert_eq!(state(&server, c), "cancelled");

    // A filter, with --json: the API's answer.
    let out = json(&server, &["retry", "--state", "cancelled"]);
    assert_eq!(out["action"], "retry");
    assert_eq!(
        (out["matched"].as_u64(), out["done"].as_u64()),
        (Some(3), Some(3)),
        "{out}"
    );
    assert_eq!(out["capped"], false);
    for id in &ids {
        assert_eq!(state(&server, id), "queued");
    }

    // Past the server's bulk limit: the limit is said, the rest left as they are.
    let out = ok(&baton(&server, &["cancel", "--state", "queued"]));
    assert!(out.contains("cancel: 3 done of 3 matched"), "{out}");
    assert!(out.contains("bulk limit of 3"), "{out}");
    let out = json(
        &server,
        &["cancel", "--state", "queued", "--queue", "default"],
    );
    assert_eq!(
        (out["done"].as_u64(), out["capped"].as_bool()),
        (Some(2), Some(false)),
        "{out}"
    );

    // One id keeps the single-job answer.
    let out = ok(&baton(&server, &["retry", a]));
    assert!(out.contains(&format!("{a} queued")), "{out}");

    // Nothing named, or both ids and a filter: refused before any request.
    let none = baton(&server, &["cancel"]);
    assert_eq!(none.status.code(), Some(1));
    assert!(
        stderr(&none).contains("give the jobs to cancel"),
        "{}",
        stderr(&none)
    );
    let both = baton(&server, &["cancel", a, "--state", "queued"]);
    assert_eq!(both.status.code(), Some(1));
    assert!(stderr(&both).contains("not both"), "{}", stderr(&both));
    assert_eq!(state(&server, a), "queued");

    // Every job needs --all-matching; rm is the delete action.
    let out = json(&server, &["rm", "--all-matching"]);
    assert_eq!(out["action"], "delete");
    assert_eq!(
        (out["matched"].as_u64(), out["done"].as_u64()),
        (Some(3), Some(3)),
        "{out}"
    );
}

#[test]
fn bulk_delete_needs_the_admin_role() {
    let config = format!(
        "[auth]\ntokens = [\n  {{ name = \"ops\", sha256 = \"{}\", role = \"operator\" }},\n  {{ name = \"boss\", sha256 = \"{}\", role = \"admin\" }},\n]\n",
        baton_server::hash_token("ops-secret"),
        baton_server::hash_token("boss-secret"),
    );
    let server = start(Some(&config));
    let as_ops = |args: &[&str]| {
        let mut all = vec!["--token", "ops-secret"];
        all.extend_from_slice(args);
        baton(&server, &all)
    };
    ok(&as_ops(&["queue", "pause", "default"]));
    let ids: Vec<String> = (0..2)
        .map(|_| ok(&as_ops(&["submit", "--", "true"])).trim().to_owned())
        .collect();
    let out = ok(&as_ops(&["cancel", &ids[0], &ids[1]]));
    assert!(out.contains("2 done of 2"), "{out}");
    let denied = as_ops(&["rm", &ids[0], &ids[1]]);
    assert_eq!(denied.status.code(), Some(1));
    assert!(
        stderr(&denied).contains("the operator role may not delete jobs; it needs the admin role"),
        "{}",
        stderr(&denied)
    );
    let out = ok(&baton(
        &server,
        &["--token", "boss-secret", "rm", "--state", "cancelled"],
    ));
    assert!(out.contains("delete: 2 done of 2 matched"), "{out}");
}

#[test]
fn serve_refuses_a_bad_bulk_limit_at_start() {
    let dir = TempDir::new().unwrap();
    let cases: [Refusal; 3] = [
        (
            &["--bulk-limit", "0"],
            &[],
            "invalid setting --bulk-limit = \"0\": expected a whole number of at least 1",
        ),
        (
            &[],
            &[("BATON_BULK_LIMIT", "lots")],
            "invalid setting BATON_BULK_LIMIT = \"lots\"",
        ),
        (
            &["--config", "bulk.toml"],
            &[],
            "invalid setting bulk_limit in bulk.toml",
        ),
    ];
    std::fs::write(dir.path().join("bulk.toml"), "bulk_limit = 0\n").unwrap();
    refused_at_start(dir.path(), &cases);
}
