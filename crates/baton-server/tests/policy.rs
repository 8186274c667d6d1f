//! What may run (the commands policy) and secret env values, through the HTTP API over
//! a real SQLite file and real processes.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use baton_engine::{CommandPolicy, Engine, SecretKey, Security};
use baton_server::{AppState, ServerOptions, router};
use baton_store::{SqliteOptions, SqliteStore};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tempfile::TempDir;
use tower::ServiceExt;

struct Server {
    app: Router,
    engine: Engine,
}

async fn serve(db: &Path, security: Security) -> Server {
    let store = SqliteStore::open(SqliteOptions::new(db)).unwrap();
    let engine = Engine::builder()
        .store(Arc::new(store))
        .security(security)
        .build()
        .await
        .unwrap();
    let options = ServerOptions::default();
    let state = AppState::new(engine.clone(), &options).await.unwrap();
    Server {
        app: router(state, &options),
        engine,
    }
}

impl Server {
    async fn call(&self, method: Method, uri: &str, body: Option<Value>) -> (StatusCode, Value) {
        let mut req = Request::builder().method(method).uri(uri);
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        let req = req
            .body(body.map_or_else(Body::empty, |b| Body::from(b.to_string())))
            .unwrap();
        let response = self.app.clone().oneshot(req).await.unwrap();
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn job_count(&self) -> usize {
        let (status, list) = self.call(Method::GET, "/api/jobs", None).await;
        assert_eq!(status, StatusCode::OK, "{list}");
        list["jobs"].as_array().unwrap().len()
    }

    async fn wait(&self, id: &str) -> Value {
        let (status, job) = self
            .call(
                Method::GET,
                &format!("/api/jobs/{id}/wait?timeout=20s"),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{job}");
        job
    }
}

/// An executable script at `path` that runs `body` with /bin/sh.
fn script(path: &Path, body: &str) {
    std::fs::write(path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// A folder of allowed programs, and a policy that allows exactly its files.
fn allowed_folder(dir: &Path) -> (PathBuf, CommandPolicy) {
    let allowed = dir.join("allowed");
    std::fs::create_dir(&allowed).unwrap();
    let policy = CommandPolicy::from_list(&[format!("{}/*", allowed.display())]).unwrap();
    (allowed, policy)
}

fn which(name: &str) -> PathBuf {
    std::env::var("PATH")
        .unwrap()
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{name} is not in PATH"))
}

#[tokio::test]
async fn the_commands_policy_refuses_a_disallowed_program_with_403_and_stores_nothing() {
    let dir = TempDir::new().unwrap();
    let (allowed, policy) = allowed_folder(dir.path());
    let marker = dir.path().join("ran");
    let ok = allowed.join("ok");
    script(&ok, &format!("echo hello; touch {}.ok", marker.display()));
    // A symlink planted in the allowed folder that leads to the shell.
    std::os::unix::fs::symlink(which("sh"), allowed.join("sneaky")).unwrap();
    let s = serve(
        &dir.path().join("baton.db"),
        Security {
            commands: policy,
            ..Security::default()
        },
    )
    .await;
    let touch = format!("touch {}", marker.display());
    let attempts = [
        // The shell, named, by path, and through `shell: true`.
        json!({"kind": "command", "command": ["sh", "-c", touch]}),
        json!({"kind": "command", "command": [which("sh"), "-c", touch]}),
        json!({"kind": "command", "command": [touch], "shell": true}),
        // A name that PATH (the job's own) would find in a folder it controls.
        json!({"kind": "command", "command": ["sh", "-c", touch],
               "env": {"PATH": format!("{}:/usr/bin:/bin", allowed.display())}}),
        // A symlink in the allowed folder that resolves outside it.
        json!({"kind": "command", "command": [allowed.join("sneaky"), "-c", touch]}),
        // A relative path climbing out of the allowed folder.
        json!({"kind": "command", "command": ["../../../../../../../bin/sh", "-c", touch],
               "cwd": allowed}),
        // An allowed program made to load other code.
        json!({"kind": "command", "command": [&ok], "env": {"LD_PRELOAD": "/tmp/evil.so"}}),
        // A bash script made to run a command substitution before its first line.
        json!({"kind": "command", "command": [&ok], "env": {"BASH_ENV": format!("$({touch})")}}),
        json!({"kind": "command", "command": [&ok],
               "env": {"BASH_FUNC_echo%%": format!("() {{ {touch}; }}")}}),
    ];
    for spec in attempts {
        let (status, body) = s.call(Method::POST, "/api/jobs", Some(spec.clone())).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{spec} -> {body}");
        assert_eq!(body["error"]["code"], "command_not_allowed", "{body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("the commands policy")
                && message.contains(&allowed.display().to_string()),
            "the message names the policy: {message}"
        );
    }
    // Named: the executable as written and the file it resolves to.
    let (_, body) = s
        .call(
            Method::POST,
            "/api/jobs",
            Some(json!({"kind": "command", "command": [allowed.join("sneaky")]})),
        )
        .await;
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("sneaky") && message.contains("resolved to"),
        "{message}"
    );
    assert_eq!(s.job_count().await, 0, "a refused spec writes nothing");
    // A workflow holding one disallowed job is refused whole.
    let (status, body) = s
        .call(
            Method::POST,
            "/api/workflows",
            Some(json!({"jobs": {
                "a": {"kind": "command", "command": [&ok]},
                "b": {"kind": "command", "command": ["sh", "-c", touch], "depends_on": ["a"]},
            }})),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(s.job_count().await, 0);

    // The allowed program runs, by path and by name through the job's PATH.
    for spec in [
        json!({"kind": "command", "command": [&ok]}),
        json!({"kind": "command", "command": ["ok"],
               "env": {"PATH": format!("{}:/usr/bin:/bin", allowed.display())}}),
    ] {
        let (status, job) = s.call(Method::POST, "/api/jobs", Some(spec.clone())).await;
        assert_eq!(status, StatusCode::CREATED, "{spec} -> {job}");
        let done = s.wait(job["id"].as_str().unwrap()).await;
        assert_eq!(done["state"], "completed", "{done}");
    }
    assert!(Path::new(&format!("{}.ok", marker.display())).exists());
    assert!(!marker.exists(), "no refused command ran");
    s.engine.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn pipeline_steps_are_held_to_the_commands_policy() {
    let dir = TempDir::new().unwrap();
    let (allowed, policy) = allowed_folder(dir.path());
    let marker = dir.path().join("ran");
    let ok = allowed.join("ok");
    script(&ok, "echo step");
    let s = serve(
        &dir.path().join("baton.db"),
        Security {
            commands: policy,
            ..Security::default()
        },
    )
    .await;
    let touch = format!("touch {}", marker.display());
    // Inline steps: the second runs the shell.
    let (status, body) = s
        .call(
            Method::POST,
            "/api/jobs",
            Some(json!({"kind": "pipeline", "steps": [
                {"name": "one", "command": [&ok]},
                {"name": "two", "command": [touch], "shell": true},
            ]})),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["error"]["code"], "command_not_allowed");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("\"sh\""),
        "{body}"
    );
    // A step's own env cannot point PATH at another shell either.
    let (status, body) = s
        .call(
            Method::POST,
            "/api/jobs",
            Some(json!({"kind": "pipeline", "steps": [
                {"name": "one", "command": ["ok"], "env": {"PATH": allowed}},
                {"name": "two", "command": ["touch", marker]},
            ]})),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    // A stored pipeline's steps are checked when a job of it is submitted.
    let (status, body) = s
        .call(
            Method::PUT,
            "/api/pipelines/nightly",
            Some(json!({"steps": [
                {"name": "one", "command": [&ok]},
                {"name": "two", "command": ["touch", marker]},
            ]})),
        )
        .await;
    assert!(status.is_success(), "{body}");
    let (status, body) = s
        .call(
            Method::POST,
            "/api/jobs",
            Some(json!({"kind": "pipeline", "pipeline": "nightly"})),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("touch"),
        "{body}"
    );
    assert_eq!(s.job_count().await, 0);
    // Every step allowed: the pipeline runs.
    let (status, job) = s
        .call(
            Method::POST,
            "/api/jobs",
            Some(json!({"kind": "pipeline", "steps": [
                {"name": "one", "command": [&ok]},
                {"name": "two", "command": ["ok"], "env": {"PATH": allowed}},
            ]})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{job}");
    let done = s.wait(job["id"].as_str().unwrap()).await;
    assert_eq!(done["state"], "completed", "{done}");
    assert!(!marker.exists());
    s.engine.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_job_stored_before_the_policy_changed_fails_without_running() {
    let dir = TempDir::new().unwrap();
    let db = dir.path().join("baton.db");
    let marker = dir.path().join("ran");
    // Stored under "any", in a paused queue so that it does not start.
    let s = serve(&db, Security::default()).await;
    let (status, _) = s
        .call(Method::POST, "/api/queues/default/pause", None)
        .await;
    assert!(status.is_success());
    let (status, job) = s
        .call(
            Method::POST,
            "/api/jobs",
            Some(json!({"kind": "command", "command": ["touch", marker]})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{job}");
    let id = job["id"].as_str().unwrap().to_owned();
    s.engine.shutdown(Duration::from_secs(5)).await;
    drop(s);

    // The server restarts with nothing allowed.
    let s = serve(
        &db,
        Security {
            commands: CommandPolicy::Nothing,
            ..Security::default()
        },
    )
    .await;
    let (status, _) = s
        .call(Method::POST, "/api/queues/default/resume", None)
        .await;
    assert!(status.is_success());
    let done = s.wait(&id).await;
    assert_eq!(done["state"], "failed", "{done}");
    assert_eq!(done["error"]["code"], "command_not_allowed", "{done}");
    let message = done["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("\"none\"") && message.contains("touch"),
        "{message}"
    );
    assert_eq!(done["attempt"], 1, "not retried: {done}");
    assert!(!marker.exists(), "the process never ran");
    s.engine.shutdown(Duration::from_secs(5)).await;
}

const SECRET: &str = "s3cr3t-Value-4c8e1f";

/// The files of `dir` (the database, its WAL, ...), read raw, that hold `needle`.
fn files_containing(dir: &Path, needle: &str) -> Vec<PathBuf> {
    let mut hits = Vec::new();
    let mut seen = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if !path.is_file() {
            continue;
        }
        seen += 1;
        let bytes = std::fs::read(&path).unwrap();
        if bytes.windows(needle.len()).any(|w| w == needle.as_bytes()) {
            hits.push(path);
        }
    }
    assert!(seen >= 1, "the database was read");
    hits
}

/// While the server runs, the latest writes are in the WAL: both files are read.
fn assert_not_in_database_or_wal(dir: &Path) {
    assert!(
        dir.join("baton.db-wal").is_file(),
        "the WAL is there to be read"
    );
    assert_eq!(files_containing(dir, SECRET), Vec::<PathBuf>::new());
}

fn key() -> SecretKey {
    SecretKey::from_bytes([0x5a; 32])
}

/// Any program may run; secrets are sealed with [`key`].
fn with_key() -> Security {
    Security {
        secret_key: Some(key()),
        ..Security::default()
    }
}

#[tokio::test]
async fn a_secret_env_value_reaches_the_process_and_nothing_else() {
    let store_dir = TempDir::new().unwrap();
    let out_dir = TempDir::new().unwrap();
    let received = out_dir.path().join("received");
    let s = serve(&store_dir.path().join("baton.db"), with_key()).await;
    // The process echoes the secret to stdout, in a directive, and to stderr before
    // failing; it writes it to a file to show that it received it.
    let script = r#"
        printf %s "$API_KEY" > "$OUT"
        echo "the key is $API_KEY."
        echo "::progress 0.5 using $API_KEY"
        echo "::output $API_KEY"
        echo "::result {\"key\": \"$API_KEY\"}"
        echo "bad key $API_KEY" >&2
        exit 3
    "#;
    let (status, job) = s
        .call(
            Method::POST,
            "/api/jobs",
            Some(json!({
                "kind": "command",
                "command": [script],
                "shell": true,
                "max_attempts": 1,
                "env": {"API_KEY": {"secret": SECRET}, "OUT": received},
            })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{job}");
    assert!(!job.to_string().contains(SECRET), "{job}");
    let id = job["id"].as_str().unwrap();
    let done = s.wait(id).await;
    assert_eq!(done["state"], "failed", "{done}");
    assert_eq!(
        std::fs::read_to_string(&received).unwrap(),
        SECRET,
        "the process received it"
    );

    let (_, job) = s.call(Method::GET, &format!("/api/jobs/{id}"), None).await;
    assert!(!job.to_string().contains(SECRET), "the job object: {job}");
    assert!(
        job["error"]["message"]
            .as_str()
            .unwrap()
            .contains("bad key ***"),
        "the stderr quoted in the error is masked: {job}"
    );
    let (_, logs) = s
        .call(Method::GET, &format!("/api/jobs/{id}/logs"), None)
        .await;
    assert!(!logs.to_string().contains(SECRET), "the logs: {logs}");
    let lines: Vec<&str> = logs["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["line"].as_str().unwrap_or_default())
        .collect();
    assert!(lines.contains(&"the key is ***."), "{lines:?}");
    assert!(lines.contains(&"bad key ***"), "{lines:?}");
    let (_, events) = s
        .call(Method::GET, &format!("/api/jobs/{id}/events"), None)
        .await;
    assert!(!events.to_string().contains(SECRET), "the events: {events}");
    assert!(events.to_string().contains("using ***"), "{events}");
    // A workflow's jobs keep their secrets sealed the same way.
    let from_workflow = out_dir.path().join("from-workflow");
    let (status, wf) = s
        .call(
            Method::POST,
            "/api/workflows",
            Some(json!({"jobs": {"only": {
                "kind": "command",
                "command": ["printf %s \"$API_KEY\" > \"$OUT\""],
                "shell": true,
                "env": {"API_KEY": {"secret": SECRET}, "OUT": from_workflow},
            }}})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{wf}");
    assert!(!wf.to_string().contains(SECRET));
    let done = s.wait(wf["jobs"]["only"].as_str().unwrap()).await;
    assert_eq!(done["state"], "completed", "{done}");
    assert_eq!(std::fs::read_to_string(&from_workflow).unwrap(), SECRET);
    assert_not_in_database_or_wal(store_dir.path());
    s.engine.shutdown(Duration::from_secs(5)).await;
    drop(s);
    assert_eq!(
        files_containing(store_dir.path(), SECRET),
        Vec::<PathBuf>::new()
    );
}

#[tokio::test]
async fn redact_env_seals_every_value_and_a_retry_still_receives_them() {
    let store_dir = TempDir::new().unwrap();
    let out_dir = TempDir::new().unwrap();
    let received = out_dir.path().join("received");
    let s = serve(
        &store_dir.path().join("baton.db"),
        Security {
            secret_key: Some(key()),
            redact_env: true,
            ..Security::default()
        },
    )
    .await;
    let (status, job) = s
        .call(
            Method::POST,
            "/api/jobs",
            Some(json!({
                "kind": "command",
                "command": ["printf %s \"$PLAIN\" >> \"$OUT\"; echo \"$PLAIN\""],
                "shell": true,
                "env": {"PLAIN": SECRET, "OUT": received},
            })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{job}");
    let id = job["id"].as_str().unwrap();
    assert_eq!(s.wait(id).await["state"], "completed");
    let (status, _) = s
        .call(Method::POST, &format!("/api/jobs/{id}/retry"), None)
        .await;
    assert!(status.is_success());
    assert_eq!(s.wait(id).await["state"], "completed");
    assert_eq!(
        std::fs::read_to_string(&received).unwrap(),
        format!("{SECRET}{SECRET}"),
        "both attempts received the value"
    );
    let (_, logs) = s
        .call(Method::GET, &format!("/api/jobs/{id}/logs"), None)
        .await;
    assert!(!logs.to_string().contains(SECRET), "{logs}");
    // A pipeline step's own variables are sealed too.
    let step_out = out_dir.path().join("step");
    let (status, job) = s
        .call(
            Method::POST,
            "/api/jobs",
            Some(json!({"kind": "pipeline", "steps": [{
                "name": "one",
                "command": ["printf %s \"$STEP_VALUE\" > \"$STEP_OUT\"; echo \"$STEP_VALUE\""],
                "shell": true,
                "env": {"STEP_VALUE": SECRET, "STEP_OUT": step_out},
            }]})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{job}");
    let id = job["id"].as_str().unwrap();
    assert_eq!(s.wait(id).await["state"], "completed");
    assert_eq!(std::fs::read_to_string(&step_out).unwrap(), SECRET);
    let (_, logs) = s
        .call(Method::GET, &format!("/api/jobs/{id}/logs"), None)
        .await;
    assert!(!logs.to_string().contains(SECRET), "{logs}");
    assert_not_in_database_or_wal(store_dir.path());
    s.engine.shutdown(Duration::from_secs(5)).await;
    drop(s);
    assert_eq!(
        files_containing(store_dir.path(), SECRET),
        Vec::<PathBuf>::new()
    );
}

#[tokio::test]
async fn secrets_are_refused_without_a_key_and_sealed_values_from_clients_are_refused() {
    let dir = TempDir::new().unwrap();
    let s = serve(&dir.path().join("baton.db"), Security::default()).await;
    let (status, body) = s
        .call(
            Method::POST,
            "/api/jobs",
            Some(json!({"kind": "command", "command": ["true"],
                        "env": {"API_KEY": {"secret": SECRET}}})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("env.API_KEY") && message.contains("secret_key"),
        "{message}"
    );
    assert!(!message.contains(SECRET));
    assert_eq!(s.job_count().await, 0);
    assert_not_in_database_or_wal(dir.path());
    s.engine.shutdown(Duration::from_secs(5)).await;
    drop(s);
    assert_eq!(files_containing(dir.path(), SECRET), Vec::<PathBuf>::new());

    // With a key: a sealed value copied from elsewhere is not opened for a client.
    let dir = TempDir::new().unwrap();
    let s = serve(&dir.path().join("baton.db"), with_key()).await;
    let (status, body) = s
        .call(
            Method::POST,
            "/api/jobs",
            Some(json!({"kind": "command", "command": ["env"],
                        "env": {"API_KEY": {"sealed": key().seal(SECRET)}}})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("sealed value is made by the server"),
        "{body}"
    );
    assert_eq!(s.job_count().await, 0);
    s.engine.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_schedule_template_keeps_its_secret_sealed_and_its_jobs_receive_it() {
    let store_dir = TempDir::new().unwrap();
    let out_dir = TempDir::new().unwrap();
    let received = out_dir.path().join("received");
    let s = serve(&store_dir.path().join("baton.db"), with_key()).await;
    let (status, body) = s
        .call(
            Method::PUT,
            "/api/schedules/nightly",
            Some(json!({
                "id": "nightly",
                "trigger": {"type": "manual"},
                "job": {"kind": "command", "command": ["printf %s \"$K\" > \"$OUT\""],
                        "shell": true, "env": {"K": {"secret": SECRET}, "OUT": received}},
            })),
        )
        .await;
    assert!(status.is_success(), "{body}");
    assert!(!body.to_string().contains(SECRET), "{body}");
    let (_, shown) = s.call(Method::GET, "/api/schedules/nightly", None).await;
    assert!(!shown.to_string().contains(SECRET), "{shown}");
    let (status, fired) = s
        .call(Method::POST, "/api/schedules/nightly/trigger", None)
        .await;
    assert!(status.is_success(), "{fired}");
    let id = fired["job"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("a job was submitted: {fired}"));
    assert_eq!(s.wait(id).await["state"], "completed");
    assert_eq!(std::fs::read_to_string(&received).unwrap(), SECRET);
    assert_not_in_database_or_wal(store_dir.path());
    s.engine.shutdown(Duration::from_secs(5)).await;
    drop(s);
    assert_eq!(
        files_containing(store_dir.path(), SECRET),
        Vec::<PathBuf>::new()
    );
}

#[tokio::test]
async fn a_token_narrowed_to_a_queue_changes_only_that_queues_jobs() {
    use baton_server::{AuthConfig, Role, TokenEntry, hash_token};
    let dir = TempDir::new().unwrap();
    let store = SqliteStore::open(SqliteOptions::new(dir.path().join("baton.db"))).unwrap();
    let engine = Engine::builder()
        .store(Arc::new(store))
        .queue("media", 2)
        .handler("sleep", |ctx, _p| async move {
            loop {
                ctx.pause_point().await?;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .build()
        .await
        .unwrap();
    let options = ServerOptions {
        auth: AuthConfig {
            tokens: vec![
                TokenEntry {
                    name: "media-ops".into(),
                    sha256: hash_token("media-token"),
                    role: Role::Operator,
                    queues: Some(vec!["media".into()]),
                },
                TokenEntry {
                    name: "me".into(),
                    sha256: hash_token("admin-token"),
                    role: Role::Admin,
                    queues: None,
                },
            ],
            jwt_secret: None,
        },
        ..ServerOptions::default()
    };
    let state = AppState::new(engine.clone(), &options).await.unwrap();
    let app = router(state.clone(), &options);
    let call = |method: Method, uri: String, token: &'static str, body: Option<Value>| {
        let app = app.clone();
        async move {
            let mut req = Request::builder()
                .method(method)
                .uri(uri)
                .header("authorization", format!("Bearer {token}"));
            if body.is_some() {
                req = req.header("content-type", "application/json");
            }
            let req = req
                .body(body.map_or_else(Body::empty, |b| Body::from(b.to_string())))
                .unwrap();
            let response = app.oneshot(req).await.unwrap();
            let status = response.status();
            let bytes = response.into_body().collect().await.unwrap().to_bytes();
            (
                status,
                serde_json::from_slice::<Value>(&bytes).unwrap_or(Value::Null),
            )
        }
    };
    let media = "media-token";
    // Its own queue: submit and control.
    let (status, job) = call(
        Method::POST,
        "/api/jobs".into(),
        media,
        Some(json!({"kind": "sleep", "queue": "media"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{job}");
    let mine = job["id"].as_str().unwrap().to_owned();
    // Another queue (named, or the default by leaving it out): 403, nothing stored.
    for spec in [
        json!({"kind": "sleep", "queue": "default"}),
        json!({"kind": "sleep"}),
    ] {
        let (status, body) = call(Method::POST, "/api/jobs".into(), media, Some(spec)).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("limited to queues [\"media\"]") && message.contains("\"default\""),
            "{message}"
        );
    }
    // Replacing a unique key's holder would cancel a job of any queue.
    let (status, body) = call(
        Method::POST,
        "/api/jobs".into(),
        media,
        Some(json!({"kind": "sleep", "queue": "media", "unique_key": "k", "unique_policy": "replace"})),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (_, list) = call(Method::GET, "/api/jobs".into(), media, None).await;
    assert_eq!(
        list["jobs"].as_array().unwrap().len(),
        1,
        "reads see all; one stored"
    );
    // A job of another queue, submitted by an admin: the narrowed token may read it,
    // not change it, over HTTP.
    let (_, theirs) = call(
        Method::POST,
        "/api/jobs".into(),
        "admin-token",
        Some(json!({"kind": "sleep"})),
    )
    .await;
    let theirs = theirs["id"].as_str().unwrap().to_owned();
    let (status, _) = call(Method::GET, format!("/api/jobs/{theirs}"), media, None).await;
    assert_eq!(status, StatusCode::OK);
    for action in ["pause", "stop", "cancel"] {
        let (status, body) = call(
            Method::POST,
            format!("/api/jobs/{theirs}/{action}"),
            media,
            None,
        )
        .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{action}: {body}");
    }
    let (status, _) = call(
        Method::POST,
        "/api/queues/default/pause".into(),
        media,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // Workflows span queues: refused whole.
    let (status, body) = call(
        Method::POST,
        "/api/workflows".into(),
        media,
        Some(json!({"jobs": {"a": {"kind": "sleep", "queue": "media"}}})),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    // And not over the WebSocket either.
    {
        use baton_api::{ControlAction, WsMessage, WsRequest};
        use futures::{SinkExt, StreamExt};
        use tokio_tungstenite::tungstenite::Message;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let served = options.clone();
        tokio::spawn(async move {
            baton_server::serve(listener, state, &served, std::future::pending()).await
        });
        let (mut ws, _) =
            tokio_tungstenite::connect_async(format!("ws://{addr}/api/ws?token={media}"))
                .await
                .unwrap();
        let request = WsRequest::Control {
            id: Some("c1".into()),
            action: ControlAction::Cancel,
            job: theirs.clone(),
            force: false,
            from_checkpoint: false,
        };
        ws.send(Message::Text(
            serde_json::to_string(&request).unwrap().into(),
        ))
        .await
        .unwrap();
        let reply = loop {
            let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
                .await
                .expect("a reply")
                .unwrap()
                .unwrap();
            if let Message::Text(t) = msg
                && let Ok(m @ WsMessage::Reply { .. }) = serde_json::from_str::<WsMessage>(&t)
            {
                break m;
            }
        };
        let WsMessage::Reply { ok, error, .. } = reply else {
            unreachable!()
        };
        assert!(!ok);
        let error = error.unwrap();
        assert_eq!(error.code, "forbidden");
        assert!(
            error.message.contains("limited to queues"),
            "{}",
            error.message
        );
    }
    let state = engine.get(&theirs).await.unwrap().state;
    assert!(
        matches!(state.as_str(), "queued" | "running"),
        "the other queue's job was not changed: {state}"
    );
    // Its own job it controls.
    let (status, body) = call(
        Method::POST,
        format!("/api/jobs/{mine}/cancel"),
        media,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _) = call(Method::POST, "/api/queues/media/pause".into(), media, None).await;
    assert_eq!(status, StatusCode::OK);
    engine.shutdown(Duration::from_millis(200)).await;
}
