//! Command and pipeline jobs with real processes: control by signals, directives,
//! logs, pipelines with checkpointed steps, stored pipelines, bad input and timeouts.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use baton_engine::{
    Engine, EngineBuilder, Event, EventKind, Job, JobSpec, PipelineSpec, State, StepSpec, proc_stat,
};
use baton_store::{SqliteOptions, SqliteStore, Store};
use serde_json::{Value, json};
use tempfile::TempDir;

fn builder(dir: &TempDir) -> EngineBuilder {
    let store: Arc<dyn Store> =
        Arc::new(SqliteStore::open(SqliteOptions::new(dir.path().join("baton.db"))).unwrap());
    Engine::builder().store(store).queue("default", 8)
}

async fn engine(dir: &TempDir) -> Engine {
    builder(dir).build().await.unwrap()
}

async fn within<F: std::future::Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(20), f)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

async fn finished(engine: &Engine, id: &str) -> Job {
    within(&format!("job {id} to finish"), engine.wait(id))
        .await
        .unwrap()
}

/// Waits until `path` exists (written by a job's process) and returns its text.
async fn file(path: &Path) -> String {
    within(&format!("{} to be written", path.display()), async {
        loop {
            if let Ok(text) = std::fs::read_to_string(path)
                && text.ends_with('\n')
            {
                return text;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
}

async fn pid_in(path: &Path) -> u32 {
    file(path).await.trim().parse().unwrap()
}

/// Gone, or a zombie waiting for a parent that is not ours to reap it.
fn is_dead(pid: u32) -> bool {
    proc_stat(pid).is_none_or(|s| s.state == 'Z')
}

async fn until_dead(pid: u32) {
    within(&format!("process {pid} to die"), async {
        while !is_dead(pid) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
}

async fn events(engine: &Engine, id: &str) -> Vec<Event> {
    engine.events(id, 0).await.unwrap()
}

fn of_kind(events: &[Event], kind: EventKind) -> Vec<&Event> {
    events.iter().filter(|e| e.kind == kind).collect()
}

fn sh(script: &str) -> JobSpec {
    JobSpec::shell_command(script)
}

fn quote(p: &Path) -> String {
    format!("'{}'", p.display())
}

#[tokio::test]
async fn a_command_gets_its_environment_and_completes_with_its_result() {
    let dir = TempDir::new().unwrap();
    let engine = engine(&dir).await;
    let work = dir.path().join("work");
    std::fs::create_dir(&work).unwrap();
    let script = r#"printf '::result {"id":"%s","attempt":"%s","queue":"%s","greeting":"%s","cwd":"%s","checkpoint":"%s"}\n' "$BATON_JOB_ID" "$BATON_ATTEMPT" "$BATON_QUEUE" "$GREETING" "$(pwd)" "${BATON_CHECKPOINT-unset}""#;
    let job = engine
        .submit(
            sh(script)
                .id("env-1")
                .env("GREETING", "hello")
                // Baton's own variables cannot be set by the spec.
                .env("BATON_JOB_ID", "fake")
                .cwd(work.to_str().unwrap()),
        )
        .await
        .unwrap();
    let done = finished(&engine, &job.job.id).await;
    assert_eq!(done.state, State::Completed, "{:?}", done.error);
    assert_eq!(
        done.result,
        Some(json!({
            "id": "env-1", "attempt": "1", "queue": "default", "greeting": "hello",
            "cwd": work.canonicalize().unwrap().display().to_string(), "checkpoint": "unset",
        }))
    );

    // Without a shell, argv goes to the program as it is; no ::result means null.
    let job = engine
        .submit(JobSpec::command(["echo", "$HOME", "two words"]))
        .await
        .unwrap();
    let done = finished(&engine, &job.job.id).await;
    assert_eq!(
        (done.state, done.result),
        (State::Completed, Some(Value::Null))
    );
    let logs = engine.logs(&job.job.id, 0, 10).await.unwrap();
    assert_eq!(logs.len(), 1);
    assert_eq!(
        (logs[0].stream.as_str(), logs[0].line.as_str()),
        ("stdout", "$HOME two words")
    );
    engine.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn directives_become_events_and_stored_state_and_bad_ones_are_logged() {
    let dir = TempDir::new().unwrap();
    let engine = engine(&dir).await;
    let mut live = engine.subscribe().await.expect("subscribe");
    let script = r#"
echo "starting"
echo "::progress 0.25 fetching page 3"
echo "::step products"
echo '::checkpoint {"page": 3}'
echo "::output token-1"
echo "warning on stderr" >&2
echo "::progress 50%"
echo "::progress lots"
echo "::checkpoint {broken"
echo "::step"
echo "::not-a-directive"
echo '::result {"rows": 1200}'
"#;
    let job = engine.submit(sh(script).id("dir-1")).await.unwrap();
    let done = finished(&engine, &job.job.id).await;
    assert_eq!(done.state, State::Completed, "{:?}", done.error);
    assert_eq!(done.result, Some(json!({"rows": 1200})));
    assert_eq!(done.step.as_deref(), Some("products"));
    assert_eq!(done.progress, Some(1.0));

    let ev = events(&engine, "dir-1").await;
    let progress: Vec<(Value, Value)> = of_kind(&ev, EventKind::Progress)
        .iter()
        .map(|e| (e.data["progress"].clone(), e.data["message"].clone()))
        .collect();
    assert_eq!(
        progress,
        [
            (json!(0.25), json!("fetching page 3")),
            (json!(0.5), Value::Null)
        ]
    );
    let steps = of_kind(&ev, EventKind::Step);
    assert_eq!(steps.len(), 1);
    assert_eq!(steps[0].data["step"], "products");
    let outputs = of_kind(&ev, EventKind::Output);
    assert_eq!(outputs.len(), 1);
    assert_eq!(outputs[0].data["text"], "token-1");
    let checkpoints = engine.checkpoints("dir-1").await.unwrap();
    assert_eq!(checkpoints.len(), 1);
    assert_eq!(checkpoints[0].data, json!({"page": 3}));
    assert_eq!(checkpoints[0].step.as_deref(), Some("products"));

    // Every other line is a log line; a malformed directive is one too, with a warning.
    let logs = engine.logs("dir-1", 0, 100).await.unwrap();
    let of = |stream: &str| -> Vec<String> {
        logs.iter()
            .filter(|l| l.stream == stream)
            .map(|l| l.line.clone())
            .collect()
    };
    assert_eq!(
        of("stdout"),
        [
            "starting",
            "::progress lots",
            "::checkpoint {broken",
            "::step",
            "::not-a-directive"
        ]
    );
    assert_eq!(of("stderr"), ["warning on stderr"]);
    let warnings = of("baton");
    assert_eq!(warnings.len(), 3, "{warnings:?}");
    assert!(warnings[0].contains("malformed directive") && warnings[0].contains("\"lots\""));
    assert!(warnings[1].contains("::checkpoint expects JSON"));
    assert!(warnings[2].contains("::step expects a step name"));
    let logged = of_kind(&ev, EventKind::Log);
    assert_eq!(logged.len(), logs.len(), "each log line is a job.log event");
    assert!(
        logged
            .iter()
            .any(|e| e.data["stream"] == "stderr" && e.data["line"] == "warning on stderr")
    );

    // The same events reached a live subscriber, in order.
    let mut seen = Vec::new();
    within("the live events", async {
        while let Some(e) = live.next().await {
            if e.job_id.as_deref() == Some("dir-1") {
                seen.push(e.kind);
                if e.kind == EventKind::Completed {
                    break;
                }
            }
        }
    })
    .await;
    assert_eq!(seen, ev.iter().map(|e| e.kind).collect::<Vec<_>>());
    engine.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn pause_stops_the_process_and_resume_lets_it_finish() {
    let dir = TempDir::new().unwrap();
    let engine = engine(&dir).await;
    let pidfile = dir.path().join("pid");
    let go = dir.path().join("go");
    // Busy: burns CPU until the file `go` appears.
    let script = format!(
        "echo $$ > {}; while [ ! -e {} ]; do :; done; echo '::result \"done\"'",
        quote(&pidfile),
        quote(&go)
    );
    let job = engine.submit(sh(&script)).await.unwrap();
    let id = job.job.id.clone();
    let pid = pid_in(&pidfile).await;
    assert!(matches!(proc_stat(pid).unwrap().state, 'R' | 'S'));

    engine.pause(&id).await.unwrap();
    within("the process to stop", async {
        while proc_stat(pid).unwrap().state != 'T' {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    let cpu = proc_stat(pid).unwrap().cpu_ticks;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let stat = proc_stat(pid).unwrap();
    assert_eq!(stat.state, 'T', "still stopped");
    assert_eq!(stat.cpu_ticks, cpu, "no CPU time used while paused");
    assert_eq!(engine.get(&id).await.unwrap().state, State::Paused);

    engine.resume(&id).await.unwrap();
    within("the process to run again", async {
        while proc_stat(pid).unwrap().state == 'T' {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    within("the process to use CPU again", async {
        while proc_stat(pid).unwrap().cpu_ticks == cpu {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    std::fs::write(&go, "").unwrap();
    let done = finished(&engine, &id).await;
    assert_eq!(done.state, State::Completed, "{:?}", done.error);
    assert_eq!(done.result, Some(json!("done")));
    let kinds: Vec<EventKind> = events(&engine, &id).await.iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds,
        [
            EventKind::Submitted,
            EventKind::Started,
            EventKind::Paused,
            EventKind::Resumed,
            EventKind::Completed
        ]
    );
    engine.shutdown(Duration::from_secs(5)).await;
}

/// A shell that starts a sleeping grandchild and waits; writes both pids.
fn tree(dir: &TempDir, name: &str, ignore_term: bool) -> (JobSpec, std::path::PathBuf) {
    let pids = dir.path().join(name);
    let trap = if ignore_term { "trap '' TERM; " } else { "" };
    let script = format!("{trap}sleep 300 & echo $$ $! > {}; wait", quote(&pids));
    (sh(&script), pids)
}

async fn tree_pids(path: &Path) -> Vec<u32> {
    file(path)
        .await
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect()
}

#[tokio::test]
async fn stop_kills_the_whole_process_tree() {
    let dir = TempDir::new().unwrap();
    let engine = engine(&dir).await;

    // Graceful: SIGTERM reaches the shell and its grandchild.
    let (spec, path) = tree(&dir, "graceful", false);
    let job = engine
        .submit(spec.grace(Duration::from_secs(30)))
        .await
        .unwrap();
    let pids = tree_pids(&path).await;
    assert!(pids.iter().all(|p| !is_dead(*p)));
    let t = Instant::now();
    engine.stop(&job.job.id, false).await.unwrap();
    let done = finished(&engine, &job.job.id).await;
    assert!(t.elapsed() < Duration::from_secs(10), "SIGTERM ended it");
    assert_eq!(done.state, State::Cancelled);
    for p in &pids {
        until_dead(*p).await;
    }

    // A shell that ignores SIGTERM is killed once the grace period is over.
    let (spec, path) = tree(&dir, "stubborn", true);
    let job = engine
        .submit(spec.grace(Duration::from_millis(500)))
        .await
        .unwrap();
    let pids = tree_pids(&path).await;
    let t = Instant::now();
    engine.stop(&job.job.id, false).await.unwrap();
    let done = finished(&engine, &job.job.id).await;
    assert!(
        t.elapsed() >= Duration::from_millis(450),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(done.state, State::Cancelled);
    for p in &pids {
        until_dead(*p).await;
    }

    // A paused tree is stopped too (SIGTERM, then SIGCONT so it can act on it).
    let (spec, path) = tree(&dir, "paused", false);
    let job = engine
        .submit(spec.grace(Duration::from_secs(30)))
        .await
        .unwrap();
    let pids = tree_pids(&path).await;
    engine.pause(&job.job.id).await.unwrap();
    engine.stop(&job.job.id, false).await.unwrap();
    let done = finished(&engine, &job.job.id).await;
    assert_eq!(done.state, State::Cancelled);
    for p in &pids {
        until_dead(*p).await;
    }
    engine.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn force_stop_kills_at_once() {
    let dir = TempDir::new().unwrap();
    let engine = engine(&dir).await;
    let (spec, path) = tree(&dir, "force", true);
    let job = engine
        .submit(spec.grace(Duration::from_secs(60)))
        .await
        .unwrap();
    let pids = tree_pids(&path).await;
    let t = Instant::now();
    let stopped = engine.stop(&job.job.id, true).await.unwrap();
    assert_eq!(stopped.state, State::Cancelled);
    for p in &pids {
        until_dead(*p).await;
    }
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "force stop took {:?}",
        t.elapsed()
    );
    engine.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn exit_codes_signals_and_timeouts_fail_the_job() {
    let dir = TempDir::new().unwrap();
    let engine = engine(&dir).await;

    let job = engine
        .submit(sh("echo first >&2; echo 'the disk is full' >&2; exit 3").max_attempts(1))
        .await
        .unwrap();
    let done = finished(&engine, &job.job.id).await;
    assert_eq!(done.state, State::Failed);
    let e = done.error.unwrap();
    assert_eq!(e.code, "exit_code");
    assert!(e.message.contains("exited with code 3"), "{}", e.message);
    assert!(
        e.message.contains("first\nthe disk is full"),
        "{}",
        e.message
    );

    let job = engine
        .submit(sh("kill -KILL $$").max_attempts(1))
        .await
        .unwrap();
    let done = finished(&engine, &job.job.id).await;
    let e = done.error.unwrap();
    assert_eq!((done.state, e.code.as_str()), (State::Failed, "signal"));
    assert!(e.message.contains("killed by SIGKILL"), "{}", e.message);

    // A timeout stops the process like a stop, and fails the attempt with code
    // timeout; the job is retried while attempts remain.
    let pids = dir.path().join("timeout-pids");
    let script = format!("sleep 300 & echo $$ $! >> {}; wait", quote(&pids));
    let job = engine
        .submit(
            sh(&script)
                .timeout(Duration::from_millis(300))
                .max_attempts(2)
                .backoff(Duration::ZERO, Duration::ZERO),
        )
        .await
        .unwrap();
    let done = finished(&engine, &job.job.id).await;
    assert_eq!(done.state, State::Failed);
    assert_eq!(done.attempt, 2);
    let e = done.error.unwrap();
    assert_eq!(e.code, "timeout");
    assert!(e.message.contains("timed out after 300ms"), "{}", e.message);
    let ev = events(&engine, &job.job.id).await;
    assert_eq!(of_kind(&ev, EventKind::Retrying).len(), 1);
    let text = std::fs::read_to_string(&pids).unwrap();
    let all: Vec<u32> = text
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    assert_eq!(all.len(), 4, "two attempts, two processes each: {text}");
    for p in all {
        until_dead(p).await;
    }

    // One that ignores SIGTERM is killed after the grace period.
    let job = engine
        .submit(
            sh("trap '' TERM; sleep 300 & wait; wait")
                .timeout(Duration::from_millis(200))
                .grace(Duration::from_millis(200))
                .max_attempts(1),
        )
        .await
        .unwrap();
    let done = finished(&engine, &job.job.id).await;
    let e = done.error.unwrap();
    assert_eq!(e.code, "timeout");
    assert!(e.message.contains("SIGKILL"), "{}", e.message);
    engine.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn bad_programs_and_folders_fail_with_a_clear_error_and_no_retry() {
    let dir = TempDir::new().unwrap();
    let engine = engine(&dir).await;
    let not_exec = dir.path().join("script.sh");
    std::fs::write(&not_exec, "#!/bin/sh\necho hi\n").unwrap();
    let missing_dir = dir.path().join("no-such-folder");
    let cases: Vec<(JobSpec, String)> = vec![
        (
            JobSpec::command(["no-such-program-baton"]),
            "cannot run \"no-such-program-baton\": program not found in PATH".into(),
        ),
        (
            JobSpec::command(["/no/such/file"]),
            "cannot run \"/no/such/file\": no such file".into(),
        ),
        (
            JobSpec::command([not_exec.to_str().unwrap()]),
            format!(
                "cannot run {:?}: permission denied",
                not_exec.display().to_string()
            ),
        ),
        (
            JobSpec::command(["true"]).cwd(missing_dir.to_str().unwrap()),
            format!(
                "working directory {:?} does not exist",
                missing_dir.display().to_string()
            ),
        ),
        (
            JobSpec::pipeline_steps(vec![
                StepSpec::new("ok", &["true"]),
                StepSpec::new("bad", &["no-such-program-baton"]).retries(3),
            ]),
            "step \"bad\": cannot run \"no-such-program-baton\"".into(),
        ),
    ];
    for (spec, message) in cases {
        let job = engine.submit(spec.max_attempts(3)).await.unwrap();
        let done = finished(&engine, &job.job.id).await;
        assert_eq!(done.state, State::Failed, "{message}");
        let e = done.error.unwrap();
        assert_eq!(e.code, "spawn_failed", "{e:?}");
        assert!(
            e.message.contains(&message),
            "{:?} lacks {message:?}",
            e.message
        );
        assert_eq!(done.attempt, 1, "not retried: {message}");
    }

    // Invalid specs are refused at submit, naming the field.
    let err = engine
        .submit(JobSpec::command(Vec::<String>::new()))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("command: must name a program"),
        "{err}"
    );
    let err = engine
        .submit(JobSpec::stored_pipeline("no-such-pipeline"))
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("pipeline: no stored pipeline is named \"no-such-pipeline\""),
        "{err}"
    );
    engine.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn logs_are_bounded_per_job_and_paged() {
    let dir = TempDir::new().unwrap();
    let engine = builder(&dir).max_log_lines(50).build().await.unwrap();
    let job = engine
        .submit(sh(
            "i=1; while [ $i -le 2000 ]; do echo line $i; i=$((i+1)); done; echo '::result 1'",
        ))
        .await
        .unwrap();
    let id = job.job.id;
    let done = finished(&engine, &id).await;
    assert_eq!(done.state, State::Completed, "{:?}", done.error);
    assert_eq!(
        done.result,
        Some(json!(1)),
        "directives still count when the log is full"
    );
    let logs = engine.logs(&id, 0, 1000).await.unwrap();
    assert_eq!(logs.len(), 51, "fifty lines and the marker");
    assert_eq!(logs[0].line, "line 1");
    assert_eq!(logs[49].line, "line 50");
    assert_eq!(logs[50].stream, "baton");
    assert!(logs[50].line.contains("truncated"), "{}", logs[50].line);
    let page = engine.logs(&id, 10, 5).await.unwrap();
    let lines: Vec<&str> = page.iter().map(|l| l.line.as_str()).collect();
    assert_eq!(
        lines,
        ["line 11", "line 12", "line 13", "line 14", "line 15"]
    );
    let ev = events(&engine, &id).await;
    assert_eq!(of_kind(&ev, EventKind::Log).len(), 51);
    engine.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_retried_command_resumes_from_its_checkpoint() {
    let dir = TempDir::new().unwrap();
    let engine = engine(&dir).await;
    let script = r#"
if [ -n "$BATON_CHECKPOINT" ]; then
  printf '::result {"checkpoint": %s, "step": "%s", "attempt": %s}\n' "$BATON_CHECKPOINT" "$BATON_RESUME_STEP" "$BATON_ATTEMPT"
  exit 0
fi
echo "::step pages"
echo '::checkpoint {"page": 7}'
exit 1
"#;
    let job = engine
        .submit(
            sh(script)
                .max_attempts(2)
                .backoff(Duration::ZERO, Duration::ZERO),
        )
        .await
        .unwrap();
    let done = finished(&engine, &job.job.id).await;
    assert_eq!(done.state, State::Completed, "{:?}", done.error);
    assert_eq!(
        done.result,
        Some(json!({"checkpoint": {"page": 7}, "step": "pages", "attempt": 2}))
    );
    engine.shutdown(Duration::from_secs(5)).await;
}

/// Three steps appending to a file; the second fails the first time it runs.
fn three_steps(dir: &TempDir, retries: u32) -> (Vec<StepSpec>, std::path::PathBuf) {
    let log = dir.path().join(format!("steps-{retries}.log"));
    let marker = dir.path().join(format!("failed-once-{retries}"));
    let step = |name: &str, extra: &str| {
        StepSpec::new(name, &[&format!("echo {name} >> {}; {extra}", quote(&log))]).shell(true)
    };
    let fail_once = format!(
        "if [ ! -e {m} ]; then touch {m}; echo 'two failed' >&2; exit 4; fi; echo '::result \"two\"'",
        m = quote(&marker)
    );
    (
        vec![
            step("one", "echo '::progress 0.5 halfway'; echo '::result 1'"),
            step("two", &fail_once).retries(retries),
            step("three", "true"),
        ],
        log,
    )
}

#[tokio::test]
async fn a_retried_pipeline_starts_at_the_failed_step() {
    let dir = TempDir::new().unwrap();
    let engine = engine(&dir).await;

    // The job's second attempt skips step one: its checkpoint says it is done.
    let (steps, log) = three_steps(&dir, 0);
    let job = engine
        .submit(
            JobSpec::pipeline_steps(steps)
                .max_attempts(2)
                .backoff(Duration::ZERO, Duration::ZERO),
        )
        .await
        .unwrap();
    let id = job.job.id;
    let done = finished(&engine, &id).await;
    assert_eq!(done.state, State::Completed, "{:?}", done.error);
    assert_eq!(
        std::fs::read_to_string(&log).unwrap(),
        "one\ntwo\ntwo\nthree\n"
    );
    assert_eq!(done.attempt, 2);
    assert_eq!(
        done.result,
        Some(json!({"steps": {"one": 1, "two": "two", "three": null}}))
    );
    let ev = events(&engine, &id).await;
    let retrying = of_kind(&ev, EventKind::Retrying);
    assert_eq!(retrying.len(), 1);
    assert_eq!(retrying[0].data["error"]["code"], "exit_code");
    assert!(
        retrying[0].data["error"]["message"]
            .as_str()
            .unwrap()
            .contains("step \"two\": exited with code 4; last lines of stderr:\ntwo failed")
    );
    let steps: Vec<&str> = of_kind(&ev, EventKind::Step)
        .iter()
        .map(|e| e.data["step"].as_str().unwrap())
        .collect();
    assert_eq!(steps, ["one", "two", "two", "three"]);
    // Step one's halfway is a quarter... of a third of the pipeline.
    assert!(
        of_kind(&ev, EventKind::Progress)
            .iter()
            .any(|e| e.data["progress"] == json!(0.5 / 3.0) && e.data["message"] == "halfway")
    );
    let checkpoints = engine.checkpoints(&id).await.unwrap();
    let completed: Vec<Value> = checkpoints
        .iter()
        .map(|c| c.data["completed_steps"].clone())
        .collect();
    assert_eq!(
        completed,
        [
            json!(["one"]),
            json!(["one", "two"]),
            json!(["one", "two", "three"])
        ]
    );

    // A step's own retries run it again within the same attempt.
    let (steps, log) = three_steps(&dir, 1);
    let job = engine
        .submit(JobSpec::pipeline_steps(steps).max_attempts(1))
        .await
        .unwrap();
    let done = finished(&engine, &job.job.id).await;
    assert_eq!(done.state, State::Completed, "{:?}", done.error);
    assert_eq!(done.attempt, 1);
    assert_eq!(
        std::fs::read_to_string(&log).unwrap(),
        "one\ntwo\ntwo\nthree\n"
    );
    let logs = engine.logs(&job.job.id, 0, 100).await.unwrap();
    assert!(
        logs.iter()
            .any(|l| l.stream == "baton" && l.line.contains("step \"two\" failed")),
        "{logs:?}"
    );
    engine.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn pausing_a_pipeline_holds_the_next_step() {
    let dir = TempDir::new().unwrap();
    let engine = engine(&dir).await;
    let pidfile = dir.path().join("pid");
    let go = dir.path().join("go");
    let second = dir.path().join("second-ran");
    let steps = vec![
        StepSpec::new(
            "first",
            &[&format!(
                "echo $$ > {}; while [ ! -e {} ]; do sleep 0.02; done",
                quote(&pidfile),
                quote(&go)
            )],
        )
        .shell(true),
        StepSpec::new("second", &[&format!("touch {}", quote(&second))]).shell(true),
    ];
    let job = engine.submit(JobSpec::pipeline_steps(steps)).await.unwrap();
    let id = job.job.id;
    let pid = pid_in(&pidfile).await;
    engine.pause(&id).await.unwrap();
    within("the step to stop", async {
        while proc_stat(pid).unwrap().state != 'T' {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    // Let the first step finish behind the engine's back while the job stays paused:
    // the pipeline must not start the second step.
    std::fs::write(&go, "").unwrap();
    nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGCONT,
    )
    .unwrap();
    until_dead(pid).await;
    within("the first step's checkpoint", async {
        while engine.checkpoints(&id).await.unwrap().is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!second.exists(), "the second step waits while paused");
    let job = engine.get(&id).await.unwrap();
    assert_eq!(
        (job.state, job.step.as_deref()),
        (State::Paused, Some("first"))
    );

    engine.resume(&id).await.unwrap();
    let done = finished(&engine, &id).await;
    assert_eq!(done.state, State::Completed, "{:?}", done.error);
    assert!(second.exists());
    engine.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn stored_pipelines_supply_steps_and_defaults_at_submit() {
    let dir = TempDir::new().unwrap();
    let folder = dir.path().join("pipelines");
    std::fs::create_dir(&folder).unwrap();
    std::fs::write(
        folder.join("alfabeta.toml"),
        r#"
queue = "scrapers"
priority = 5
max_attempts = 4

[labels]
source = "alfabeta"

[env]
WHO = "alfabeta"

[[steps]]
name = "fetch"
command = ["echo \"::result \\\"$WHO $BATON_STEP\\\"\""]
shell = true
timeout = "1m"
retries = 2

[[steps]]
name = "load"
command = ["true"]
"#,
    )
    .unwrap();
    let engine = builder(&dir)
        .queue("scrapers", 2)
        .pipelines_dir(&folder)
        .build()
        .await
        .unwrap();
    let stored = engine.pipeline("alfabeta").await.unwrap().expect("loaded");
    assert_eq!(stored.spec.steps.len(), 2);
    assert_eq!(stored.spec.steps[0].retries, Some(2));

    let job = engine
        .submit(JobSpec::stored_pipeline("alfabeta").label("run", "test"))
        .await
        .unwrap();
    assert_eq!(job.job.queue, "scrapers");
    assert_eq!(job.job.priority, 5);
    assert_eq!(job.job.max_attempts, 4);
    assert_eq!(job.job.labels["source"], "alfabeta");
    assert_eq!(job.job.labels["run"], "test");
    let done = finished(&engine, &job.job.id).await;
    assert_eq!(done.state, State::Completed, "{:?}", done.error);
    assert_eq!(
        done.result,
        Some(json!({"steps": {"fetch": "alfabeta fetch", "load": null}}))
    );

    // Managed through the API: put, list, replace, delete.
    let spec = PipelineSpec::new("quick", vec![StepSpec::new("only", &["true"])]);
    engine.put_pipeline(spec).await.unwrap();
    let ids: Vec<String> = engine
        .pipelines()
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.spec.id)
        .collect();
    assert_eq!(ids, ["alfabeta", "quick"]);
    let bad = PipelineSpec::new("bad", vec![StepSpec::new("x", &[])]);
    let err = engine.put_pipeline(bad).await.unwrap_err();
    assert!(err.to_string().contains("steps[0].command"), "{err}");
    let elsewhere = PipelineSpec {
        queue: Some("nowhere".into()),
        ..PipelineSpec::new("elsewhere", vec![StepSpec::new("x", &["true"])])
    };
    let err = engine.put_pipeline(elsewhere).await.unwrap_err();
    assert!(err.to_string().contains("nowhere"), "{err}");
    assert!(engine.delete_pipeline("quick").await.unwrap());
    assert!(engine.pipeline("quick").await.unwrap().is_none());
    // A job of a deleted pipeline keeps its steps; new submits are refused.
    assert!(engine.delete_pipeline("alfabeta").await.unwrap());
    assert!(
        engine
            .submit(JobSpec::stored_pipeline("alfabeta"))
            .await
            .is_err()
    );
    engine.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn an_invalid_pipeline_file_is_refused_at_start() {
    let dir = TempDir::new().unwrap();
    let folder = dir.path().join("pipelines");
    std::fs::create_dir(&folder).unwrap();
    std::fs::write(
        folder.join("broken.toml"),
        "[[steps]]\nname = \"fetch\"\ncommand = [\"x\"]\ntimeout = \"forever\"\n",
    )
    .unwrap();
    let err = match builder(&dir).pipelines_dir(&folder).build().await {
        Err(e) => e.to_string(),
        Ok(_) => panic!("an invalid pipeline file was accepted"),
    };
    assert!(err.contains("broken.toml"), "{err}");
    assert!(err.contains("steps[0].timeout"), "{err}");
}
