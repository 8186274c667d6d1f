//! `[security]` in baton.toml, through a real `baton serve` and the real CLI.

mod support;

use std::os::unix::fs::PermissionsExt;

use serde_json::Value;
use support::{baton, json, ok, start};

#[test]
fn a_served_commands_policy_refuses_the_shell_and_runs_an_allowed_program_with_a_secret() {
    let programs = tempfile::TempDir::new().unwrap();
    let tool = programs.path().join("tool");
    // Echoes the secret it receives, and writes it where the test can read it.
    std::fs::write(
        &tool,
        "#!/bin/sh\necho \"token: $TOKEN\"\nprintf %s \"$TOKEN\" > \"$0.out\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
    let secret = "tok-9f27c1d0e5";
    let server = start(Some(&format!(
        "[security]\ncommands = [{:?}]\nsecret_key = {:?}\nredact_env = true\n",
        format!("{}/*", programs.path().display()),
        "0f".repeat(32)
    )));
    let marker = server.dir.path().join("ran");

    let out = baton(
        &server,
        &[
            "submit",
            "--shell",
            "--",
            &format!("touch {}", marker.display()),
        ],
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("the commands policy") && stderr.contains("\"sh\""),
        "{stderr}"
    );
    let listed = json(&server, &["ls"]);
    assert_eq!(listed["jobs"].as_array().map(Vec::len), Some(0), "{listed}");
    assert!(!marker.exists());

    // The allowed program, with a secret env value (redact_env seals every value).
    let agent = ureq::Agent::new_with_defaults();
    let job: Value = agent
        .post(format!("{}/api/jobs", server.url))
        .send_json(serde_json::json!({
            "kind": "command",
            "command": [tool],
            "env": {"TOKEN": secret},
        }))
        .unwrap()
        .body_mut()
        .read_json()
        .unwrap();
    let id = job["id"].as_str().unwrap();
    ok(&baton(&server, &["wait", id]));
    let logs = ok(&baton(&server, &["logs", id]));
    assert!(logs.contains("token: ***"), "{logs}");
    assert!(!logs.contains(secret), "{logs}");
    assert_eq!(
        std::fs::read_to_string(format!("{}.out", tool.display())).unwrap(),
        secret
    );
    for entry in std::fs::read_dir(server.dir.path()).unwrap() {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        assert!(
            !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "{} holds the secret",
            path.display()
        );
    }
}
