//! The crash test with command jobs: a child process runs the engine with a command job
//! and a pipeline, each with a process tree, and is killed with SIGKILL. The engine
//! started again on the same database must kill every process left from before the
//! crash (and say so in the recovery events), and resume the pipeline at the step it
//! was in.
//!
//! The child is this test binary re-executed to run only `child_mode`, as in
//! `tests/crash.rs`; it reports on stdout with `BATON ...` lines.

mod support;

use std::collections::BTreeSet;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::Spawned;

use baton_engine::{Engine, EventKind, JobSpec, State, StepSpec, proc_stat};
use baton_store::{SqliteOptions, SqliteStore, Store};
use serde_json::json;

const CHILD_ENV: &str = "BATON_COMMAND_CRASH_CHILD";
const DIR_ENV: &str = "BATON_COMMAND_CRASH_DIR";

#[test]
fn child_mode() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let dir = PathBuf::from(dir);
    runtime().block_on(async move {
        let engine = start_engine(&dir).await;
        let mut events = engine.subscribe().await.expect("subscribe");
        engine.submit(command_job(&dir)).await.expect("submit");
        engine.submit(pipeline_job(&dir)).await.expect("submit");
        while let Some(e) = events.next().await {
            if e.kind == EventKind::Checkpoint {
                println!(
                    "BATON checkpoint {} {}",
                    e.job_id.as_deref().unwrap_or("?"),
                    e.data["checkpoint"]
                );
            }
        }
    });
}

#[test]
fn after_sigkill_no_job_process_survives_and_the_pipeline_resumes_at_its_step() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();

    // 1. The child runs both jobs until each has its process tree up and recorded.
    let mut child = Spawned::start(&[(CHILD_ENV, d.as_os_str()), (DIR_ENV, d.as_os_str())]);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = BTreeSet::new();
    while seen.len() < 2 {
        let line = child
            .next_line(deadline)
            .expect("the child ended or stalled before both jobs checkpointed");
        let words: Vec<&str> = line.split_whitespace().collect();
        // The command's first checkpoint, and step b's own checkpoint, come after the
        // engine recorded their process groups.
        match words.as_slice() {
            ["checkpoint", "cmd", data] if data.contains("started") => {
                seen.insert("cmd");
            }
            ["checkpoint", "pipe", data] if data.contains("in_b") => {
                seen.insert("pipe");
            }
            _ => {}
        }
    }
    let cmd = pids(&d.join("cmd.pids"), deadline);
    let pipe = pids(&d.join("pipe.pids"), deadline);
    let all: Vec<u32> = cmd.iter().chain(&pipe).copied().collect();
    let status = child.kill();
    assert_eq!(status.signal(), Some(9), "the child was killed by SIGKILL");
    std::thread::sleep(Duration::from_millis(100));
    for p in &all {
        assert!(!is_dead(*p), "process {p} outlived the engine (an orphan)");
    }

    let rt = runtime();
    rt.block_on(async {
        // 2. The store recorded each job's process group: its leader's pid.
        let store = SqliteStore::open(SqliteOptions::new(d.join("baton.db"))).unwrap();
        let recorded: BTreeSet<(String, i32)> = store
            .processes()
            .await
            .unwrap()
            .into_iter()
            .map(|r| (r.job_id, r.process.pgid))
            .collect();
        let expected: BTreeSet<(String, i32)> = [
            ("cmd".to_string(), cmd[0] as i32),
            ("pipe".to_string(), pipe[0] as i32),
        ]
        .into();
        assert_eq!(recorded, expected);
        store.close().await;
        drop(store);

        // 3. A new engine kills them before it recovers the jobs.
        let engine = start_engine(d).await;
        for p in &all {
            let dead_by = Instant::now() + Duration::from_secs(5);
            while !is_dead(*p) {
                assert!(
                    Instant::now() < dead_by,
                    "process {p} from before the crash still runs"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        for (id, pgid) in [("cmd", cmd[0]), ("pipe", pipe[0])] {
            let job = tokio::time::timeout(Duration::from_secs(20), engine.wait(id))
                .await
                .unwrap_or_else(|_| panic!("job {id} did not finish after the restart"))
                .unwrap();
            assert_eq!(job.state, State::Completed, "{id}: {:?}", job.error);
            assert_eq!(job.recoveries, 1, "{id}");
            let events = engine.events(id, 0).await.unwrap();
            for kind in [EventKind::Crashed, EventKind::Recovered] {
                let e = events.iter().find(|e| e.kind == kind).unwrap();
                assert_eq!(e.data["killed_pgids"], json!([pgid]), "{id}: {kind}");
            }
        }
        let cmd_job = engine.get("cmd").await.unwrap();
        assert_eq!(cmd_job.result, Some(json!("resumed")));
        let pipe_job = engine.get("pipe").await.unwrap();
        assert_eq!(
            pipe_job.result,
            Some(json!({"steps": {"a": null, "b": "resumed at b", "c": null}}))
        );
        engine.shutdown(Duration::from_secs(5)).await;
    });
    // Step a ran once, before the crash; b ran again from its step; then c.
    assert_eq!(
        std::fs::read_to_string(d.join("steps.log")).unwrap(),
        "a\nb\nb\nc\n"
    );
}

fn command_job(dir: &Path) -> JobSpec {
    let script = format!(
        r#"if [ -n "$BATON_CHECKPOINT" ]; then echo '::result "resumed"'; exit 0; fi
echo '::checkpoint {{"started": true}}'
sleep 300 & echo $$ $! > '{}'
wait"#,
        dir.join("cmd.pids").display()
    );
    JobSpec::shell_command(script).id("cmd").max_attempts(1)
}

fn pipeline_job(dir: &Path) -> JobSpec {
    let log = dir.join("steps.log");
    let log = log.display();
    let step = |name: &str, script: String| StepSpec::new(name, &[&script]).shell(true);
    JobSpec::pipeline_steps(vec![
        step("a", format!("echo a >> '{log}'")),
        step(
            "b",
            format!(
                r#"echo b >> '{log}'
if [ -n "$BATON_RESUME_STEP" ]; then echo "::result \"resumed at $BATON_RESUME_STEP\""; exit 0; fi
echo '::checkpoint {{"in_b": true}}'
sleep 300 & echo $$ $! > '{}'
wait"#,
                dir.join("pipe.pids").display()
            ),
        ),
        step("c", format!("echo c >> '{log}'")),
    ])
    .id("pipe")
    .max_attempts(1)
}

async fn start_engine(dir: &Path) -> Engine {
    let store = SqliteStore::open(SqliteOptions::new(dir.join("baton.db"))).expect("open");
    Engine::builder()
        .store(Arc::new(store))
        .queue("default", 4)
        .build()
        .await
        .expect("the engine starts")
}

fn is_dead(pid: u32) -> bool {
    proc_stat(pid).is_none_or(|s| s.state == 'Z')
}

/// The pids a job's script wrote: its shell and the shell's sleeping child.
fn pids(path: &Path, deadline: Instant) -> Vec<u32> {
    loop {
        if let Ok(text) = std::fs::read_to_string(path)
            && text.ends_with('\n')
        {
            return text
                .split_whitespace()
                .map(|p| p.parse().unwrap())
                .collect();
        }
        assert!(
            Instant::now() < deadline,
            "{} was not written",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A process group recorded by a server on another host names nothing on this machine:
/// a restarted engine leaves the process with that id alone, says so in the recovery
/// events, and still recovers the job.
#[test]
fn a_process_recorded_on_another_host_is_left_alone() {
    use std::os::unix::process::CommandExt;
    runtime().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let mut bystander = std::process::Command::new("sleep")
            .arg("30")
            .process_group(0)
            .spawn()
            .expect("spawn sleep");
        let pid = bystander.id();
        let start_time = proc_stat(pid).expect("its stat").start_time;

        let store = SqliteStore::open(SqliteOptions::new(dir.path().join("baton.db"))).unwrap();
        let now = 1_800_000_000_000;
        store
            .register_server(baton_store::ServerInfo {
                id: "srv-far".into(),
                host: "another-machine".into(),
                pid: 1,
                url: None,
                started_at: now,
                heartbeat_at: now,
                stopped_at: None,
                queues: vec!["default".into()],
                workers: 1,
            })
            .await
            .unwrap();
        let spec = JobSpec::command(["true"]).id("far");
        store
            .submit(vec![spec.validate(now, &Default::default()).unwrap()])
            .await
            .unwrap();
        let c = store
            .claim(baton_store::ClaimRequest {
                queue: "default".into(),
                limit: 1,
                server_id: "srv-far".into(),
                now,
                kinds: None,
            })
            .await
            .unwrap()
            .remove(0);
        let process = baton_store::JobProcess {
            pgid: pid as i32,
            start_time,
        };
        store
            .set_process("far", c.fence, Some(process))
            .await
            .unwrap();
        store.close().await;
        drop(store);

        let engine = start_engine(dir.path()).await;
        let job = tokio::time::timeout(Duration::from_secs(20), engine.wait("far"))
            .await
            .expect("the job finishes after recovery")
            .unwrap();
        assert_eq!(job.state, State::Completed);
        assert!(!is_dead(pid), "the process on this machine was not killed");
        let events = engine.events("far", 0).await.unwrap();
        let crashed = events
            .iter()
            .find(|e| e.kind == EventKind::Crashed)
            .unwrap();
        assert_eq!(crashed.data["killed_pgids"], json!([]));
        let note = crashed.data["cleanup"].as_str().unwrap_or_default();
        assert!(note.contains("ran on host another-machine"), "{note}");
        engine.shutdown(Duration::from_secs(5)).await;
        let _ = bystander.kill();
        let _ = bystander.wait();
    });
}
