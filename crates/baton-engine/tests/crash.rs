//! Crash tests. A child process runs the engine on a file database and is killed with
//! SIGKILL mid-run; an engine started again on the same file must lose no acknowledged
//! job, finish every job exactly once, resume checkpointed jobs after their last
//! checkpoint, and not charge the crash to the job's attempts.
//!
//! The child is this test binary itself, re-executed to run only `child_mode` with
//! `BATON_CRASH_CHILD` set (this works under `cargo test` and `cargo nextest`); without
//! the variable `child_mode` passes at once. The child reports on stdout, one
//! `BATON ...` line per fact, and every handler appends the steps it begins to a log
//! file, so the parent knows what ran before and after the kill.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::fs::File;
use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::Spawned;

use baton_engine::{
    Checkpoint, Engine, Event, EventKind, Job, JobContext, JobError, JobFilter, JobSpec, State,
};
use baton_store::{Durability, SqliteOptions, SqliteStore, Store};
use serde_json::{Value, json};

const CHILD_ENV: &str = "BATON_CRASH_CHILD";
const DB_ENV: &str = "BATON_CRASH_DB";
const LOG_ENV: &str = "BATON_CRASH_LOG";

/// Jobs the bulk child submits (the kill usually lands before it submitted them all):
/// every third one checkpoints its steps.
const JOBS: usize = 4000;
const BATCH: usize = 25;
/// Pause between submit batches, so that jobs run while others are still submitted.
const SUBMIT_PACE: Duration = Duration::from_millis(5);
const STEPS: u64 = 5;
const WORKERS: usize = 16;
/// Every `SLOW_EVERY`th job is a checkpointing job with slow steps; the kill lands just
/// after one of them saved a checkpoint, so interrupted checkpointed jobs always exist.
const SLOW_EVERY: usize = 45;
const SLOW_MS: u64 = 40;
/// Jobs that must be done before the kill.
const KILL_AFTER_DONE: usize = 900;

/// Runs the child side when re-executed by a parent test; a no-op otherwise.
#[test]
fn child_mode() {
    let Ok(mode) = std::env::var(CHILD_ENV) else {
        return;
    };
    let db = PathBuf::from(std::env::var(DB_ENV).expect("BATON_CRASH_DB is set"));
    let log = PathBuf::from(std::env::var(LOG_ENV).expect("BATON_CRASH_LOG is set"));
    runtime().block_on(async move {
        match mode.as_str() {
            "bulk" => bulk_child(&db, &log).await,
            "hang" => hang_child(&db, &log).await,
            "unsettled" => unsettled_child(&db, &log).await,
            other => panic!("unknown child mode {other:?}"),
        }
    });
}

#[test]
fn sigkill_mid_run_loses_no_job_and_resumes_from_checkpoints() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("baton.db");
    let log = dir.path().join("steps.log");

    // 1. The child submits and runs jobs; kill it mid-run, just after a slow
    // checkpointing job saved a checkpoint.
    let mut child = Spawned::start(&[
        (CHILD_ENV, OsStr::new("bulk")),
        (DB_ENV, db.as_os_str()),
        (LOG_ENV, log.as_os_str()),
    ]);
    let mut acked: BTreeSet<String> = BTreeSet::new();
    let mut done = 0usize;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let line = child.next_line(deadline).unwrap_or_else(|| {
            panic!("the child ended or stalled before the kill point ({done} jobs done)")
        });
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["acked", id] => {
                acked.insert(id.to_string());
            }
            ["done", _] => done += 1,
            ["checkpointed", _, step, pause]
                if done >= KILL_AFTER_DONE
                    && *pause == SLOW_MS.to_string()
                    && step.parse::<u64>().unwrap() <= STEPS - 2 =>
            {
                break;
            }
            _ => {}
        }
    }
    let status = child.kill();
    assert_eq!(status.signal(), Some(9), "the child was killed by SIGKILL");
    // Acknowledgements the child printed before it died are still in the pipe.
    for line in child.rest() {
        if let ["acked", id] = line.split_whitespace().collect::<Vec<_>>().as_slice() {
            acked.insert(id.to_string());
        }
    }
    let killed_at = started.elapsed();

    let rt = runtime();
    // 2. What the database holds right after the kill, before anything recovers it.
    let before = rt.block_on(snapshot(&db));
    for id in &acked {
        assert!(
            before.contains_key(id),
            "acknowledged job {id} is missing after the kill"
        );
    }
    let running_at_kill: BTreeSet<&String> = before
        .iter()
        .filter(|(_, s)| s.job.state == State::Running)
        .map(|(id, _)| id)
        .collect();
    let completed_at_kill = before
        .values()
        .filter(|s| s.job.state == State::Completed)
        .count();
    let queued_at_kill = before
        .values()
        .filter(|s| s.job.state == State::Queued)
        .count();
    let interrupted_after_checkpoint = before
        .values()
        .filter(|s| s.job.state == State::Running && !s.checkpoints.is_empty())
        .count();
    assert!(
        completed_at_kill >= KILL_AFTER_DONE / 2,
        "jobs had completed before the kill: {completed_at_kill}"
    );
    assert!(queued_at_kill > 0, "jobs were still waiting at the kill");
    assert!(
        interrupted_after_checkpoint > 0,
        "a checkpointing job was interrupted after a checkpoint"
    );

    // 3. Start the engine again on the same file and let it finish.
    let after = rt.block_on(async {
        let engine = start_engine(&db, Witness::new(&log, "after", false)).await;
        let mut after = BTreeMap::new();
        for id in before.keys() {
            let job = tokio::time::timeout(Duration::from_secs(30), engine.wait(id))
                .await
                .unwrap_or_else(|_| panic!("job {id} did not finish after the restart"))
                .unwrap();
            let events = engine.events(id, 0).await.unwrap();
            let checkpoints = engine.checkpoints(id).await.unwrap();
            after.insert(
                id.clone(),
                Finished {
                    job,
                    events,
                    checkpoints,
                },
            );
        }
        engine.shutdown(Duration::from_secs(5)).await;
        after
    });
    let ran = read_step_log(&log);

    // 4. Every job ended exactly once, completed, and resumed where it was.
    for (id, seen) in &before {
        let f = &after[id];
        let job = &f.job;
        assert_eq!(job.state, State::Completed, "job {id}: {:?}", job.error);
        assert_eq!(job.error, None, "job {id}");
        let was_running = running_at_kill.contains(id);
        let lifecycle = lifecycle(&f.events);
        let expected: &[EventKind] = if was_running {
            &[
                EventKind::Submitted,
                EventKind::Started,
                EventKind::Crashed,
                EventKind::Recovered,
                EventKind::Started,
                EventKind::Completed,
            ]
        } else {
            &[
                EventKind::Submitted,
                EventKind::Started,
                EventKind::Completed,
            ]
        };
        assert_eq!(lifecycle, expected, "job {id}: its events");
        // The crash did not use up an attempt: max_attempts is 1 and it still ran.
        assert_eq!((job.attempt, job.max_attempts), (1, 1), "job {id}: attempt");
        assert_eq!(
            job.result.as_ref().unwrap()["attempt"],
            json!(1),
            "job {id}: the attempt its handler saw"
        );
        assert_eq!(
            job.recoveries,
            u32::from(was_running),
            "job {id}: recoveries"
        );

        let before_steps = ran.get(&("before".into(), id.clone())).cloned();
        let after_steps = ran.get(&("after".into(), id.clone())).cloned();
        let all_steps: Vec<u64> = if job.kind == "steps" {
            (1..=STEPS).collect()
        } else {
            vec![0]
        };
        if seen.job.state == State::Completed {
            assert_eq!(before_steps, Some(all_steps), "job {id}: steps begun");
            assert_eq!(
                after_steps, None,
                "job {id} completed before the kill ran again"
            );
            assert_eq!(f.checkpoints, seen.checkpoints, "job {id}: checkpoints");
            continue;
        }
        if job.kind != "steps" {
            if !was_running {
                assert_eq!(before_steps, None, "job {id} ran before it was claimed");
            }
            assert_eq!(
                after_steps,
                Some(all_steps),
                "job {id} ran once after the restart"
            );
            continue;
        }

        // A checkpointing job: the restart skips the steps checkpointed before the kill.
        let last = seen.checkpoints.last().map_or(0, |c| done_step(id, c));
        let result = job.result.as_ref().unwrap();
        let rest: Vec<u64> = (last + 1..=STEPS).collect();
        assert_eq!(
            result["resumed_from"],
            json!(last),
            "job {id}: resumed from"
        );
        assert_eq!(
            result["executed"],
            json!(rest),
            "job {id}: steps after the kill"
        );
        assert_eq!(
            after_steps.unwrap_or_default(),
            rest,
            "job {id}: steps begun after the kill"
        );
        let before_steps = before_steps.unwrap_or_default();
        let finished: Vec<u64> = (1..=last).collect();
        let with_current: Vec<u64> = (1..=(last + 1).min(STEPS)).collect();
        assert!(
            before_steps == finished || (was_running && before_steps == with_current),
            "job {id}: before the kill it began {before_steps:?} and checkpointed {last}"
        );
        // The checkpoints from before the kill survived, and each step saved one once.
        assert_eq!(
            f.checkpoints.get(..seen.checkpoints.len()),
            Some(&seen.checkpoints[..]),
            "job {id}: checkpoints saved before the kill"
        );
        let steps: Vec<u64> = f.checkpoints.iter().map(|c| done_step(id, c)).collect();
        assert_eq!(
            steps,
            (1..=STEPS).collect::<Vec<_>>(),
            "job {id}: checkpoints"
        );
        if was_running {
            let recovered = f
                .events
                .iter()
                .find(|e| e.kind == EventKind::Recovered)
                .unwrap();
            assert_eq!(
                recovered.data["from_checkpoint"],
                json!(last > 0),
                "job {id}: recovered event"
            );
        }
    }

    eprintln!(
        "crash test: {} jobs stored ({} acknowledged), killed after {:.1?} with {} completed, \
         {} running ({} after a checkpoint), {} queued; finished after {:.1?}",
        before.len(),
        acked.len(),
        killed_at,
        completed_at_kill,
        running_at_kill.len(),
        interrupted_after_checkpoint,
        queued_at_kill,
        started.elapsed()
    );
}

#[test]
fn shutdown_past_its_timeout_leaves_the_job_to_resume_from_its_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("baton.db");
    let log = dir.path().join("steps.log");
    let id = "graceful";
    runtime().block_on(async {
        let engine = start_engine(&db, Witness::new(&log, "first", false)).await;
        // Kept across the restart, as a UI would keep its stream open: a live
        // subscription must not keep the shut-down engine's database locked.
        let mut stream = engine.subscribe().await.expect("subscribe");
        let spec = JobSpec::new("steps")
            .id(id)
            .max_attempts(1)
            .payload(json!({"pause_ms": 1, "stall_run": "first", "stall_at": 3}));
        engine.submit(spec).await.unwrap();
        tokio::time::timeout(Duration::from_secs(10), async {
            while let Some(e) = stream.next().await {
                if e.job_id.as_deref() == Some(id)
                    && e.kind == EventKind::Checkpoint
                    && e.data["checkpoint"]["done"] == json!(2)
                {
                    return;
                }
            }
        })
        .await
        .expect("the job saved its second checkpoint");

        // Step 3 stalls for a minute; shutdown gives it 300 ms.
        let t = Instant::now();
        engine.shutdown(Duration::from_millis(300)).await;
        let took = t.elapsed();
        assert!(
            took < Duration::from_secs(3),
            "shutdown(300ms) returned after {took:?}"
        );

        // The first engine and its subscription are still in scope.
        let first = engine;
        let engine = start_engine(&db, Witness::new(&log, "second", false)).await;
        let job = tokio::time::timeout(Duration::from_secs(10), engine.wait(id))
            .await
            .expect("the job finished after the restart")
            .unwrap();
        assert_eq!(job.state, State::Completed, "{:?}", job.error);
        let result = job.result.clone().unwrap();
        assert_eq!(result["resumed_from"], json!(2), "{result}");
        assert_eq!(result["executed"], json!([3, 4, 5]), "{result}");
        // A shutdown is not a crash: the job was handed back, and no recovery counted.
        assert_eq!((job.attempt, job.recoveries), (1, 0));
        let events = engine.events(id, 0).await.unwrap();
        assert_eq!(
            lifecycle(&events),
            [
                EventKind::Submitted,
                EventKind::Started,
                EventKind::Queued,
                EventKind::Started,
                EventKind::Completed,
            ]
        );
        let handed_back = events.iter().find(|e| e.kind == EventKind::Queued).unwrap();
        assert_eq!(handed_back.data["reason"], "shutdown");
        assert_eq!(handed_back.data["from_checkpoint"], true);
        let checkpoints = engine.checkpoints(id).await.unwrap();
        let steps: Vec<u64> = checkpoints.iter().map(|c| done_step(id, c)).collect();
        assert_eq!(steps, [1, 2, 3, 4, 5]);
        engine.shutdown(Duration::from_secs(5)).await;
        drop((first, stream));
    });
    let ran = read_step_log(&log);
    let first = &ran[&("first".to_string(), id.to_string())];
    assert!(
        first == &[1, 2, 3] || first == &[1, 2],
        "before the shutdown it began {first:?}"
    );
    assert_eq!(ran[&("second".to_string(), id.to_string())], [3, 4, 5]);
}

#[test]
fn a_job_that_keeps_killing_its_engine_fails_with_code_crashed() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("baton.db");
    let log = dir.path().join("steps.log");
    // max_recoveries is 2: the job runs three times, and the third crash fails it.
    for round in 1..=3 {
        let mut child = Spawned::start(&[
            (CHILD_ENV, OsStr::new("hang")),
            (DB_ENV, db.as_os_str()),
            (LOG_ENV, log.as_os_str()),
        ]);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let line = child
                .next_line(deadline)
                .unwrap_or_else(|| panic!("round {round}: the job did not start"));
            if line.starts_with("running hang ") {
                break;
            }
        }
        let status = child.kill();
        assert_eq!(status.signal(), Some(9), "round {round}: killed by SIGKILL");
    }

    runtime().block_on(async {
        let engine = start_engine(&db, Witness::new(&log, "parent", false)).await;
        let job = tokio::time::timeout(Duration::from_secs(10), engine.wait("hang"))
            .await
            .expect("the job is terminal after the restart")
            .unwrap();
        assert_eq!(job.state, State::Failed);
        let error = job.error.clone().expect("the job has an error");
        assert_eq!(error.code, "crashed", "{error:?}");
        assert_eq!((job.attempt, job.recoveries), (1, 2));
        let events = engine.events("hang", 0).await.unwrap();
        use EventKind::*;
        assert_eq!(
            lifecycle(&events),
            [
                Submitted, Started, Crashed, Recovered, Started, Crashed, Recovered, Started,
                Crashed, Failed,
            ]
        );
        let failed = events.iter().find(|e| e.kind == Failed).unwrap();
        assert_eq!(failed.data["error"]["code"], json!("crashed"));
        engine.shutdown(Duration::from_secs(5)).await;
    });
    let ran = read_step_log(&log);
    assert_eq!(
        ran.get(&("child".into(), "hang".into())),
        Some(&vec![0, 0, 0]),
        "the job ran once in each child"
    );
    assert_eq!(
        ran.get(&("parent".into(), "hang".into())),
        None,
        "the job ran after it failed"
    );
}

/// A worker's slot frees when its handler returns, and the outcome waits for the
/// writer's next commit: a crash in between runs the job again, and it is completed
/// once, with its completion published only after the commit that made it durable.
#[test]
fn a_crash_between_a_handlers_return_and_its_commit_runs_the_job_again_once() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("baton.db");
    let log = dir.path().join("steps.log");
    let mut child = Spawned::start(&[
        (CHILD_ENV, OsStr::new("unsettled")),
        (DB_ENV, db.as_os_str()),
        (LOG_ENV, log.as_os_str()),
    ]);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let line = child
            .next_line(deadline)
            .expect("the handler did not return");
        if line == "returning quick 1" {
            break;
        }
    }
    // The outcome is held before its commit (the writer is slowed on purpose): give
    // it time to be published, which it must not be.
    std::thread::sleep(Duration::from_millis(500));
    let status = child.kill();
    assert_eq!(status.signal(), Some(9));
    let seen = child.rest();
    assert!(
        !seen.iter().any(|l| l.starts_with("event ")),
        "an event was published before its commit: {seen:?}"
    );

    runtime().block_on(async {
        let w = Witness::new(&log, "parent", false);
        let store = SqliteStore::open(SqliteOptions::new(&db)).expect("open the store");
        let engine = Engine::builder()
            .store(Arc::new(store))
            .handler("quick", move |ctx, _| {
                let w = w.clone();
                async move {
                    w.began(ctx.job_id(), 0);
                    Ok(json!({ "attempt": ctx.attempt() }))
                }
            })
            .build()
            .await
            .expect("the engine starts");
        let job = tokio::time::timeout(Duration::from_secs(10), engine.wait("quick"))
            .await
            .expect("the job finished after the restart")
            .unwrap();
        assert_eq!(job.state, State::Completed, "{:?}", job.error);
        // The crash is not charged to the job's attempts.
        assert_eq!((job.attempt, job.recoveries), (1, 1));
        let events = engine.events("quick", 0).await.unwrap();
        use EventKind::*;
        assert_eq!(
            lifecycle(&events),
            [Submitted, Started, Crashed, Recovered, Started, Completed]
        );
        engine.shutdown(Duration::from_secs(5)).await;
    });
    let ran = read_step_log(&log);
    assert_eq!(ran.get(&("child".into(), "quick".into())), Some(&vec![0]));
    assert_eq!(ran.get(&("parent".into(), "quick".into())), Some(&vec![0]));
}

// ---------------------------------------------------------------------------------
// The child side.

async fn bulk_child(db: &Path, log: &Path) {
    let w = Witness::new(log, "before", true);
    let engine = start_engine(db, w.clone()).await;
    let indexes: Vec<usize> = (0..JOBS).collect();
    for chunk in indexes.chunks(BATCH) {
        let specs = chunk.iter().map(|&i| bulk_spec(i)).collect();
        let submitted = engine.submit_many(specs).await.expect("submit");
        for s in submitted {
            w.say(format_args!("acked {}", s.job.id));
        }
        tokio::time::sleep(SUBMIT_PACE).await;
    }
    // The parent kills this process long before.
    tokio::time::sleep(Duration::from_secs(60)).await;
}

async fn hang_child(db: &Path, log: &Path) {
    let w = Witness::new(log, "child", true);
    let engine = start_engine(db, w).await;
    // The first child creates the job; later ones find it recovered and running.
    let spec = JobSpec::new("hang")
        .id("hang")
        .max_attempts(1)
        .max_recoveries(2);
    engine.submit(spec).await.expect("submit");
    tokio::time::sleep(Duration::from_secs(60)).await;
}

/// Runs one job whose handler, as it returns, slows the writer down for a minute: its
/// outcome is still waiting to be committed when the parent kills this process.
async fn unsettled_child(db: &Path, log: &Path) {
    let w = Witness::new(log, "child", true);
    let faults = baton_store::sqlite::Faults::default();
    let mut options = SqliteOptions::new(db).durability(Durability::Full);
    options.faults = faults.clone();
    let store = SqliteStore::open(options).expect("open the store");
    let seen = w.clone();
    let engine = Engine::builder()
        .store(Arc::new(store))
        .handler("quick", move |ctx, _| {
            let (w, faults) = (seen.clone(), faults.clone());
            async move {
                w.began(ctx.job_id(), 0);
                faults.slow_batches(Duration::from_secs(60));
                w.say(format_args!("returning {} {}", ctx.job_id(), ctx.attempt()));
                Ok(Value::Null)
            }
        })
        .build()
        .await
        .expect("the engine starts");
    let mut stream = engine.subscribe().await.expect("subscribe");
    engine
        .submit(JobSpec::new("quick").id("quick").max_attempts(1))
        .await
        .expect("submit");
    while let Some(e) = stream.next().await {
        if matches!(e.kind, EventKind::Completed | EventKind::Failed) {
            w.say(format_args!("event {} {:?}", e.kind, e.job_id));
        }
    }
}

fn bulk_spec(i: usize) -> JobSpec {
    let id = format!("job-{i:04}");
    if i.is_multiple_of(3) {
        let pause = if i.is_multiple_of(SLOW_EVERY) {
            SLOW_MS
        } else {
            1 + (i % 4) as u64
        };
        JobSpec::new("steps")
            .id(id)
            .max_attempts(1)
            .payload(json!({"pause_ms": pause}))
    } else {
        JobSpec::new("noop")
            .id(id)
            .max_attempts(1)
            .payload(json!({"sleep_ms": i % 4}))
    }
}

// ---------------------------------------------------------------------------------
// Handlers and the engine, the same in the child and in the parent.

async fn start_engine(db: &Path, w: Arc<Witness>) -> Engine {
    let store = SqliteStore::open(SqliteOptions::new(db).durability(Durability::Full))
        .expect("open the store");
    // What the promise rests on, as SQLite itself reports it.
    assert_eq!(store.synchronous(), Some("full"));
    let (w1, w2, w3) = (w.clone(), w.clone(), w);
    Engine::builder()
        .store(Arc::new(store))
        .queue("default", WORKERS)
        .handler("steps", move |ctx, payload| steps(ctx, payload, w1.clone()))
        .handler("noop", move |ctx, payload| noop(ctx, payload, w2.clone()))
        .handler("hang", move |ctx, _| hang(ctx, w3.clone()))
        .build()
        .await
        .expect("the engine starts")
}

/// Five steps, each checkpointed; a resumed run skips the steps already saved.
async fn steps(ctx: JobContext, payload: Value, w: Arc<Witness>) -> Result<Value, JobError> {
    let resumed_from = ctx
        .last_checkpoint()
        .and_then(|c| c["done"].as_u64())
        .unwrap_or(0);
    let pause = payload["pause_ms"].as_u64().unwrap_or(1);
    let stall_at = (payload["stall_run"].as_str() == Some(w.run.as_str()))
        .then(|| payload["stall_at"].as_u64())
        .flatten();
    let mut executed = Vec::new();
    for step in resumed_from + 1..=STEPS {
        w.began(ctx.job_id(), step);
        executed.push(step);
        let pause = if stall_at == Some(step) {
            60_000
        } else {
            pause
        };
        tokio::time::sleep(Duration::from_millis(pause)).await;
        ctx.checkpoint(json!({ "done": step })).await?;
        w.say(format_args!("checkpointed {} {step} {pause}", ctx.job_id()));
    }
    w.say(format_args!("done {}", ctx.job_id()));
    Ok(json!({
        "resumed_from": resumed_from,
        "executed": executed,
        "attempt": ctx.attempt(),
    }))
}

async fn noop(ctx: JobContext, payload: Value, w: Arc<Witness>) -> Result<Value, JobError> {
    w.began(ctx.job_id(), 0);
    let ms = payload["sleep_ms"].as_u64().unwrap_or(0);
    if ms > 0 {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    w.say(format_args!("done {}", ctx.job_id()));
    Ok(json!({ "attempt": ctx.attempt() }))
}

/// Says it runs and never returns: only a crash ends it.
async fn hang(ctx: JobContext, w: Arc<Witness>) -> Result<Value, JobError> {
    w.began(ctx.job_id(), 0);
    w.say(format_args!("running {} {}", ctx.job_id(), ctx.attempt()));
    std::future::pending().await
}

/// What handlers leave behind for the parent: the steps they begin, appended to a log
/// file that survives the kill, and (in a child) `BATON ...` lines on stdout.
struct Witness {
    run: String,
    log: Mutex<File>,
    report: bool,
}

impl Witness {
    fn new(path: &Path, run: &str, report: bool) -> Arc<Self> {
        let log = File::options()
            .create(true)
            .append(true)
            .open(path)
            .expect("open the step log");
        Arc::new(Self {
            run: run.into(),
            log: Mutex::new(log),
            report,
        })
    }

    fn began(&self, job: &str, step: u64) {
        let line = format!("{} {job} {step}\n", self.run);
        let mut log = self.log.lock().unwrap();
        log.write_all(line.as_bytes())
            .expect("append to the step log");
    }

    fn say(&self, what: std::fmt::Arguments<'_>) {
        if self.report {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "BATON {what}");
            let _ = out.flush();
        }
    }
}

// ---------------------------------------------------------------------------------
// The parent side.

struct Seen {
    job: Job,
    checkpoints: Vec<Checkpoint>,
}

struct Finished {
    job: Job,
    events: Vec<Event>,
    checkpoints: Vec<Checkpoint>,
}

/// Every job and its checkpoints, read straight from the store.
async fn snapshot(db: &Path) -> BTreeMap<String, Seen> {
    let store = SqliteStore::open(SqliteOptions::new(db)).expect("open the store after the kill");
    let mut out = BTreeMap::new();
    let mut cursor = None;
    loop {
        let page = store
            .list(JobFilter {
                limit: 1000,
                cursor,
                ..JobFilter::default()
            })
            .await
            .unwrap();
        for job in page.jobs {
            let checkpoints = store.checkpoints(&job.id).await.unwrap();
            out.insert(job.id.clone(), Seen { job, checkpoints });
        }
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    store.close().await;
    out
}

/// (run, job id) → the steps begun, in order.
fn read_step_log(path: &Path) -> BTreeMap<(String, String), Vec<u64>> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut out: BTreeMap<(String, String), Vec<u64>> = BTreeMap::new();
    for line in text.lines() {
        let mut words = line.split(' ');
        let (Some(run), Some(id), Some(step), None) =
            (words.next(), words.next(), words.next(), words.next())
        else {
            panic!("torn line in the step log: {line:?}");
        };
        out.entry((run.into(), id.into()))
            .or_default()
            .push(step.parse().unwrap());
    }
    out
}

/// The job's state changes, without the checkpoints between them.
fn lifecycle(events: &[Event]) -> Vec<EventKind> {
    events
        .iter()
        .map(|e| e.kind)
        .filter(|k| *k != EventKind::Checkpoint)
        .collect()
}

fn done_step(id: &str, c: &Checkpoint) -> u64 {
    c.data["done"]
        .as_u64()
        .unwrap_or_else(|| panic!("job {id}: checkpoint {:?}", c.data))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap()
}
