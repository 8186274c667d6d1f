//! The engine driven through its Rust API, on real SQLite files.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use baton_engine::{
    Engine, EngineBuilder, ErrorCode, EventKind, JobError, JobSpec, ManualClock, State,
};
use baton_store::{SqliteOptions, SqliteStore, Store};
use serde_json::{Value, json};
use tempfile::TempDir;

const T0: i64 = 1_800_000_000_000;

fn store(dir: &TempDir) -> Arc<dyn Store> {
    Arc::new(SqliteStore::open(SqliteOptions::new(dir.path().join("baton.db"))).unwrap())
}

fn builder(dir: &TempDir) -> EngineBuilder {
    Engine::builder()
        .store(store(dir))
        .handler("echo", |_ctx, payload| async move { Ok(payload) })
        .handler("fail", |_ctx, _payload| async move {
            Err::<Value, _>(JobError::new("boom"))
        })
        .handler("fatal", |_ctx, _payload| async move {
            Err::<Value, _>(JobError::fatal("bad input"))
        })
        // Loops through pause points until stopped; reports progress each round.
        .handler("looper", |ctx, _payload| async move {
            let mut i = 0u64;
            loop {
                i += 1;
                ctx.progress(0.1, format!("round {i}")).await?;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
}

async fn within<F: std::future::Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(20), f)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

async fn wait_state(engine: &Engine, id: &str, state: State) {
    within(&format!("{id} to be {state}"), async {
        loop {
            if engine.get(id).await.unwrap().state == state {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
}

/// Submits `n` echo jobs (payloads 0 to n - 1), one at a time; their ids.
async fn submit_echoes(engine: &Engine, n: u64) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        let spec = JobSpec::new("echo").payload(json!(i));
        ids.push(engine.submit(spec).await.unwrap().job.id);
    }
    ids
}

async fn event_kinds(engine: &Engine, id: &str) -> Vec<EventKind> {
    engine
        .events(id, 0)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.kind)
        .collect()
}

#[tokio::test]
async fn a_job_runs_to_completion_with_its_result() {
    let dir = TempDir::new().unwrap();
    let engine = builder(&dir).build().await.unwrap();
    let sub = engine
        .submit(
            JobSpec::new("echo")
                .payload(json!({"n": 1}))
                .label("source", "test"),
        )
        .await
        .unwrap();
    assert!(sub.created);
    let job = within("completion", engine.wait(&sub.job.id))
        .await
        .unwrap();
    assert_eq!(job.state, State::Completed);
    assert_eq!(job.result, Some(json!({"n": 1})));
    assert_eq!(job.attempt, 1);
    assert_eq!(job.labels["source"], "test");
    assert!(job.finished_at.is_some() && job.started_at.is_some());
    assert_eq!(
        event_kinds(&engine, &job.id).await,
        vec![
            EventKind::Submitted,
            EventKind::Started,
            EventKind::Completed
        ]
    );
    engine.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn resubmitting_a_client_id_returns_the_existing_job() {
    let dir = TempDir::new().unwrap();
    let engine = builder(&dir).build().await.unwrap();
    let a = engine
        .submit(JobSpec::new("echo").id("order-1"))
        .await
        .unwrap();
    let b = engine
        .submit(JobSpec::new("echo").id("order-1").payload(json!("other")))
        .await
        .unwrap();
    assert!(a.created && !b.created);
    assert_eq!(b.job.id, "order-1");
    assert_eq!(b.job.payload, None, "the first submission is kept");
    let page = engine.list(Default::default()).await.unwrap();
    assert_eq!(page.total, 1);
}

#[tokio::test]
async fn bad_input_is_refused_and_nothing_is_written() {
    let dir = TempDir::new().unwrap();
    let engine = builder(&dir)
        .limits(baton_core::Limits {
            max_payload_bytes: 64,
            ..Default::default()
        })
        .build()
        .await
        .unwrap();
    let cases = [
        (
            JobSpec::new("nope"),
            "no handler is registered for \"nope\"",
        ),
        (
            JobSpec::new("echo").queue("ghost"),
            "unknown queue \"ghost\"",
        ),
        (
            JobSpec {
                delay: Some("-5s".into()),
                ..JobSpec::new("echo")
            },
            "delay: \"-5s\" is negative",
        ),
        (
            JobSpec::new("echo").payload(json!({"blob": "x".repeat(100)})),
            "payload: is 111 bytes; the limit is 64 bytes",
        ),
        (
            JobSpec::new("echo").id("has space"),
            "id: \"has space\" contains ' '",
        ),
        (
            JobSpec::new("echo").max_attempts(0),
            "max_attempts: must be at least 1",
        ),
    ];
    for (spec, message) in cases {
        let err = engine.submit(spec).await.unwrap_err();
        assert_eq!(err.code(), ErrorCode::InvalidSpec, "{err}");
        assert!(err.to_string().contains(message), "{err} lacks {message}");
    }
    // A batch with one bad spec stores none of them.
    let err = engine
        .submit_many(vec![JobSpec::new("echo"), JobSpec::new("nope")])
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::InvalidSpec);
    assert_eq!(engine.list(Default::default()).await.unwrap().total, 0);
    assert!(
        engine
            .store()
            .events_after(0, 100)
            .await
            .unwrap()
            .iter()
            .all(|e| e.job_id.is_none())
    );
}

#[tokio::test]
async fn priorities_order_work_within_a_queue() {
    let dir = TempDir::new().unwrap();
    let order = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = order.clone();
    let clock = ManualClock::new(T0);
    let engine = builder(&dir)
        .clock(Arc::new(clock.clone()))
        .queue("default", 1)
        .handler("record", move |_ctx, p| {
            let seen = seen.clone();
            async move {
                seen.lock().unwrap().push(p.as_i64().unwrap());
                Ok(Value::Null)
            }
        })
        .build()
        .await
        .unwrap();
    // Submitted while delayed, so that all are queued at the same instant.
    let mut ids = Vec::new();
    for (p, prio) in [(1, 0), (2, 10), (3, -5), (4, 10), (5, 3)] {
        let spec = JobSpec::new("record")
            .payload(json!(p))
            .priority(prio)
            .delay(Duration::from_secs(1));
        ids.push(engine.submit(spec).await.unwrap().job.id);
    }
    clock.advance(Duration::from_secs(1));
    for id in &ids {
        within("completion", engine.wait(id)).await.unwrap();
    }
    assert_eq!(*order.lock().unwrap(), vec![2, 4, 5, 1, 3]);
}

#[tokio::test]
async fn delayed_jobs_wait_for_their_time_without_sleeping() {
    let dir = TempDir::new().unwrap();
    let clock = ManualClock::new(T0);
    let engine = builder(&dir)
        .clock(Arc::new(clock.clone()))
        .build()
        .await
        .unwrap();
    let job = engine
        .submit(JobSpec::new("echo").delay(Duration::from_secs(3600)))
        .await
        .unwrap()
        .job;
    assert_eq!(job.state, State::Scheduled);
    assert_eq!(job.run_at, Some(T0 + 3_600_000));
    tokio::time::sleep(Duration::from_millis(100)).await;
    clock.advance(Duration::from_secs(3599));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(engine.get(&job.id).await.unwrap().state, State::Scheduled);
    clock.advance(Duration::from_secs(1));
    let done = within("the delayed job", engine.wait(&job.id))
        .await
        .unwrap();
    assert_eq!(done.state, State::Completed);
    assert_eq!(
        event_kinds(&engine, &job.id).await,
        vec![
            EventKind::Submitted,
            EventKind::Queued,
            EventKind::Started,
            EventKind::Completed
        ]
    );
}

#[tokio::test]
async fn failures_retry_with_backoff_then_fail() {
    let dir = TempDir::new().unwrap();
    let clock = ManualClock::new(T0);
    let engine = builder(&dir)
        .clock(Arc::new(clock.clone()))
        .build()
        .await
        .unwrap();
    let spec = JobSpec::new("fail")
        .max_attempts(3)
        .backoff(Duration::from_secs(10), Duration::from_secs(60));
    let id = engine.submit(spec).await.unwrap().job.id;

    // Attempt 1 fails; the retry waits between 5 s and 10 s (half of it is jitter).
    wait_state(&engine, &id, State::Scheduled).await;
    let job = engine.get(&id).await.unwrap();
    let wait1 = job.run_at.unwrap() - T0;
    assert!(
        (5_000..=10_000).contains(&wait1),
        "first backoff {wait1} ms"
    );
    assert_eq!(job.attempt, 1);
    assert_eq!(job.error.as_ref().unwrap().message, "boom");

    clock.advance(Duration::from_millis(wait1 as u64));
    within("attempt 2", async {
        while engine.get(&id).await.unwrap().attempt < 2 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    wait_state(&engine, &id, State::Scheduled).await;
    let job = engine.get(&id).await.unwrap();
    let wait2 = job.run_at.unwrap() - clock_now(&clock);
    assert!(
        (10_000..=20_000).contains(&wait2),
        "second backoff {wait2} ms"
    );

    clock.advance(Duration::from_millis(wait2 as u64));
    let job = within("the final failure", engine.wait(&id)).await.unwrap();
    assert_eq!(job.state, State::Failed);
    assert_eq!(job.attempt, 3);
    assert_eq!(job.error.unwrap().code, "handler_error");
    let kinds = event_kinds(&engine, &id).await;
    assert_eq!(
        kinds.iter().filter(|k| **k == EventKind::Retrying).count(),
        2
    );
    assert_eq!(kinds.last(), Some(&EventKind::Failed));
}

fn clock_now(clock: &ManualClock) -> i64 {
    use baton_engine::Clock;
    clock.now()
}

#[tokio::test]
async fn fatal_errors_are_not_retried() {
    let dir = TempDir::new().unwrap();
    let engine = builder(&dir).build().await.unwrap();
    let id = engine
        .submit(JobSpec::new("fatal").max_attempts(5))
        .await
        .unwrap()
        .job
        .id;
    let job = within("failure", engine.wait(&id)).await.unwrap();
    assert_eq!(job.state, State::Failed);
    assert_eq!(job.attempt, 1);
}

#[tokio::test]
async fn timeouts_fail_the_attempt() {
    let dir = TempDir::new().unwrap();
    let engine = builder(&dir)
        .handler("slow", |_ctx, _p| async {
            tokio::time::sleep(Duration::from_secs(60)).await;
            Ok(Value::Null)
        })
        .build()
        .await
        .unwrap();
    let spec = JobSpec::new("slow")
        .timeout(Duration::from_millis(100))
        .max_attempts(1);
    let id = engine.submit(spec).await.unwrap().job.id;
    let job = within("timeout", engine.wait(&id)).await.unwrap();
    assert_eq!(job.state, State::Failed);
    let e = job.error.unwrap();
    assert_eq!(
        (e.code.as_str(), e.message.as_str()),
        ("timeout", "timed out after 100ms")
    );
}

#[tokio::test]
async fn pause_blocks_the_handler_and_resume_continues_it() {
    let dir = TempDir::new().unwrap();
    let rounds = Arc::new(AtomicU32::new(0));
    let counter = rounds.clone();
    let engine = builder(&dir)
        .handler("counter", move |ctx, _p| {
            let counter = counter.clone();
            async move {
                for i in 0..40 {
                    counter.fetch_add(1, Ordering::SeqCst);
                    ctx.progress(i as f64 / 40.0, "counting").await?;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Ok(json!("counted"))
            }
        })
        .build()
        .await
        .unwrap();
    let id = engine.submit(JobSpec::new("counter")).await.unwrap().job.id;
    within("some rounds", async {
        while rounds.load(Ordering::SeqCst) < 3 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await;
    let job = engine.pause(&id).await.unwrap();
    assert_eq!(job.state, State::Paused);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let frozen = rounds.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(
        rounds.load(Ordering::SeqCst),
        frozen,
        "the handler went on while paused"
    );
    assert!(frozen < 40);

    // Pausing twice is refused with a clear error.
    let err = engine.pause(&id).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::IllegalTransition);
    assert!(err.to_string().contains("it is paused"), "{err}");

    let job = engine.resume(&id).await.unwrap();
    assert_eq!(job.state, State::Running);
    let job = within("completion", engine.wait(&id)).await.unwrap();
    assert_eq!(job.state, State::Completed);
    assert_eq!(rounds.load(Ordering::SeqCst), 40);
    let kinds = event_kinds(&engine, &id).await;
    let paused = kinds.iter().position(|k| *k == EventKind::Paused).unwrap();
    let resumed = kinds.iter().position(|k| *k == EventKind::Resumed).unwrap();
    assert!(paused < resumed);
}

#[tokio::test]
async fn graceful_stop_fires_the_token_and_cancels() {
    let dir = TempDir::new().unwrap();
    let engine = builder(&dir).build().await.unwrap();
    let id = engine.submit(JobSpec::new("looper")).await.unwrap().job.id;
    wait_state(&engine, &id, State::Running).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let job = engine.stop(&id, false).await.unwrap();
    assert_eq!(job.state, State::Stopping);
    let job = within("cancellation", engine.wait(&id)).await.unwrap();
    assert_eq!(job.state, State::Cancelled);
    assert_eq!(job.error.unwrap().code, "cancelled");
    let kinds = event_kinds(&engine, &id).await;
    let stopping = kinds
        .iter()
        .position(|k| *k == EventKind::Stopping)
        .unwrap();
    assert!(stopping < kinds.len() - 1, "{kinds:?}");
    assert_eq!(kinds.last(), Some(&EventKind::Cancelled), "{kinds:?}");
    assert_eq!(engine.running_jobs(), Vec::<String>::new());
}

#[tokio::test]
async fn a_handler_that_ignores_stop_is_aborted_after_its_grace() {
    let dir = TempDir::new().unwrap();
    let engine = builder(&dir)
        .handler("stubborn", |_ctx, _p| async {
            tokio::time::sleep(Duration::from_secs(120)).await;
            Ok(Value::Null)
        })
        .build()
        .await
        .unwrap();
    let id = engine
        .submit(JobSpec::new("stubborn").grace(Duration::from_millis(200)))
        .await
        .unwrap()
        .job
        .id;
    wait_state(&engine, &id, State::Running).await;
    let started = std::time::Instant::now();
    engine.stop(&id, false).await.unwrap();
    let job = within("cancellation", engine.wait(&id)).await.unwrap();
    assert_eq!(job.state, State::Cancelled);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(190) && took < Duration::from_secs(5),
        "{took:?}"
    );
}

#[tokio::test]
async fn force_stop_aborts_at_once_even_when_paused() {
    let dir = TempDir::new().unwrap();
    let engine = builder(&dir).build().await.unwrap();
    let id = engine.submit(JobSpec::new("looper")).await.unwrap().job.id;
    wait_state(&engine, &id, State::Running).await;
    engine.pause(&id).await.unwrap();
    let job = engine.stop(&id, true).await.unwrap();
    assert_eq!(job.state, State::Cancelled);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(engine.running_jobs().is_empty());
    // Nothing the aborted attempt did afterwards changed the outcome.
    let job = engine.get(&id).await.unwrap();
    assert_eq!(job.state, State::Cancelled);
    let kinds = event_kinds(&engine, &id).await;
    assert_eq!(kinds.last(), Some(&EventKind::Cancelled));
}

#[tokio::test]
async fn cancel_retry_and_delete() {
    let dir = TempDir::new().unwrap();
    let clock = ManualClock::new(T0);
    let engine = builder(&dir).clock(Arc::new(clock)).build().await.unwrap();

    // A waiting job is cancelled at once.
    let id = engine
        .submit(JobSpec::new("echo").delay(Duration::from_secs(60)))
        .await
        .unwrap()
        .job
        .id;
    let job = engine.cancel(&id).await.unwrap();
    assert_eq!(job.state, State::Cancelled);

    // Retry runs it again with a fresh budget; attempt keeps counting.
    let job = engine.retry(&id, false).await.unwrap();
    assert_eq!(job.state, State::Queued);
    let job = within("the retried job", engine.wait(&id)).await.unwrap();
    assert_eq!(job.state, State::Completed);
    assert_eq!(job.attempt, 1);

    // A completed job cannot be cancelled, can be retried, then deleted.
    let err = engine.cancel(&id).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::IllegalTransition);
    assert!(err.to_string().contains("completed"), "{err}");
    engine.retry(&id, false).await.unwrap();
    let job = within("the second run", engine.wait(&id)).await.unwrap();
    assert_eq!(job.attempt, 2);
    let job = engine.delete(&id).await.unwrap();
    assert_eq!(job.state, State::Deleted);
    assert_eq!(engine.list(Default::default()).await.unwrap().total, 0);

    // Unknown ids are 404s.
    let err = engine.pause("missing").await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::NotFound);
    assert!(err.to_string().contains("\"missing\" not found"), "{err}");
}

#[tokio::test]
async fn retry_from_checkpoint_resumes_where_the_job_left_off() {
    let dir = TempDir::new().unwrap();
    let engine = builder(&dir)
        .handler("resumable", |ctx, _p| async move {
            let start = ctx
                .last_checkpoint()
                .and_then(|c| c["next"].as_u64())
                .unwrap_or(0);
            for i in start..5 {
                if i == 3 && ctx.attempt() == 1 {
                    return Err(JobError::fatal("step 3 broke"));
                }
                ctx.step(format!("s{i}")).await?;
                ctx.checkpoint(json!({"next": i + 1})).await?;
            }
            Ok(json!({"started_at": start}))
        })
        .build()
        .await
        .unwrap();
    let id = engine
        .submit(JobSpec::new("resumable"))
        .await
        .unwrap()
        .job
        .id;
    let job = within("failure", engine.wait(&id)).await.unwrap();
    assert_eq!(job.state, State::Failed);
    let cps = engine.checkpoints(&id).await.unwrap();
    assert_eq!(cps.len(), 3);
    assert_eq!(cps[2].data, json!({"next": 3}));
    assert_eq!(cps[2].step.as_deref(), Some("s2"));

    engine.retry(&id, true).await.unwrap();
    let job = within("completion", engine.wait(&id)).await.unwrap();
    assert_eq!(job.result, Some(json!({"started_at": 3})));

    engine.retry(&id, false).await.unwrap();
    let job = within("completion", engine.wait(&id)).await.unwrap();
    assert_eq!(job.result, Some(json!({"started_at": 0})));
}

#[tokio::test]
async fn subscribers_see_every_event_in_order() {
    let dir = TempDir::new().unwrap();
    let engine = builder(&dir).build().await.unwrap();
    let mut sub = engine.subscribe().await.expect("subscribe");
    let mut ids = submit_echoes(&engine, 20).await;
    let mut completed = Vec::new();
    let mut last_id = 0;
    while completed.len() < 20 {
        let e = within("events", sub.next()).await.unwrap();
        assert!(e.id > last_id, "global ids increase");
        last_id = e.id;
        if e.kind == EventKind::Completed {
            completed.push(e.job_id.clone().unwrap());
        }
    }
    completed.sort();
    ids.sort();
    assert_eq!(completed, ids, "each job's completion, once");
}

#[tokio::test]
async fn a_second_engine_on_the_same_file_is_refused() {
    let dir = TempDir::new().unwrap();
    let _engine = builder(&dir).build().await.unwrap();
    let err = SqliteStore::open(SqliteOptions::new(dir.path().join("baton.db")))
        .err()
        .expect("refused");
    let msg = err.to_string();
    assert!(msg.contains("is owned by another Baton engine"), "{msg}");
    assert!(
        msg.contains(&format!("pid {}", std::process::id())),
        "{msg}"
    );
}

#[tokio::test]
async fn servers_are_recorded_with_heartbeats() {
    let dir = TempDir::new().unwrap();
    let engine = builder(&dir)
        .heartbeat(Duration::from_millis(50))
        .queue("emails", 4)
        .build()
        .await
        .unwrap();
    let first = engine.store().servers().await.unwrap();
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].pid, std::process::id());
    assert_eq!(
        first[0].queues,
        vec!["default".to_string(), "emails".to_string()]
    );
    assert_eq!(first[0].workers, 20);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let later = engine.store().servers().await.unwrap();
    assert!(later[0].heartbeat_at > first[0].heartbeat_at);
    engine.shutdown(Duration::from_secs(1)).await;
}

/// Counts live handler futures: dropped (finished or aborted) means gone.
struct Alive(Arc<AtomicU32>);

impl Drop for Alive {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[tokio::test]
async fn a_stop_right_after_submit_still_reaches_the_handler() {
    let dir = TempDir::new().unwrap();
    let alive = Arc::new(AtomicU32::new(0));
    let count = alive.clone();
    let engine = builder(&dir)
        .handler("stubborn", move |_ctx, _p| {
            count.fetch_add(1, Ordering::SeqCst);
            let guard = Alive(count.clone());
            async move {
                let _guard = guard;
                tokio::time::sleep(Duration::from_secs(120)).await;
                Ok(Value::Null)
            }
        })
        .build()
        .await
        .unwrap();
    for force in [false, true] {
        for _ in 0..20 {
            // With idle workers the job is running when submit returns.
            let id = engine
                .submit(JobSpec::new("stubborn").grace(Duration::from_millis(50)))
                .await
                .unwrap()
                .job
                .id;
            if force {
                // A job that has not started yet is cancelled instead.
                match engine.stop(&id, true).await {
                    Err(baton_engine::Error::Illegal { .. }) => {
                        engine.cancel(&id).await.unwrap();
                    }
                    other => {
                        other.unwrap();
                    }
                }
            } else {
                engine.cancel(&id).await.unwrap();
            }
            let job = within("cancellation", engine.wait(&id)).await.unwrap();
            assert_eq!(job.state, State::Cancelled);
        }
    }
    within("every handler to be gone", async {
        while alive.load(Ordering::SeqCst) > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(engine.running_jobs().is_empty());
}

/// A slot freed by a returning handler is filled by the write that records its
/// outcome ("complete and claim"): the queue never runs more handlers than its
/// concurrency, nor holds more jobs `running` in the store, while jobs are submitted
/// and finish all the time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn complete_and_claim_keeps_the_queues_concurrency_limit() {
    use std::sync::atomic::AtomicUsize;
    const LIMIT: usize = 4;
    const JOBS: usize = 600;
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir);
    let inside = Arc::new(AtomicUsize::new(0));
    let most_inside = Arc::new(AtomicUsize::new(0));
    let (i, m) = (inside.clone(), most_inside.clone());
    let engine = Engine::builder()
        .store(store.clone())
        .queue("narrow", LIMIT)
        .handler("count", move |ctx, payload| {
            let (inside, most) = (i.clone(), m.clone());
            async move {
                let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                // Some return at once, some after a pause, some fail and retry.
                match payload["n"].as_u64().unwrap_or(0) % 3 {
                    0 => {}
                    1 => tokio::time::sleep(Duration::from_millis(1)).await,
                    _ => tokio::task::yield_now().await,
                }
                inside.fetch_sub(1, Ordering::SeqCst);
                if payload["n"].as_u64().unwrap_or(0) % 10 == 0 && ctx.attempt() == 1 {
                    return Err(JobError::new("once more"));
                }
                Ok(Value::Null)
            }
        })
        .build()
        .await
        .unwrap();
    // The store's own count of running jobs, sampled while the queue works.
    let sampling = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = tokio::spawn({
        let (store, sampling) = (store.clone(), sampling.clone());
        async move {
            let mut most = 0;
            while sampling.load(Ordering::SeqCst) {
                let counts = store.counts().await.unwrap();
                let running: u64 = counts
                    .rows
                    .iter()
                    .filter(|(q, s, _)| q == "narrow" && *s == State::Running)
                    .map(|r| r.2)
                    .sum();
                most = most.max(running);
                tokio::task::yield_now().await;
            }
            most
        }
    });
    let mut ids = Vec::new();
    for chunk in (0..JOBS).collect::<Vec<_>>().chunks(20) {
        let specs = chunk
            .iter()
            .map(|n| {
                JobSpec::new("count")
                    .queue("narrow")
                    .max_attempts(2)
                    .backoff(Duration::ZERO, Duration::ZERO)
                    .payload(json!({ "n": n }))
            })
            .collect();
        for s in engine.submit_many(specs).await.unwrap() {
            ids.push(s.job.id);
        }
        tokio::task::yield_now().await;
    }
    for id in &ids {
        let job = within("every job to finish", engine.wait(id))
            .await
            .unwrap();
        assert_eq!(job.state, State::Completed, "{id}: {:?}", job.error);
    }
    sampling.store(false, Ordering::SeqCst);
    let most_running = sampler.await.unwrap();
    assert!(
        most_inside.load(Ordering::SeqCst) <= LIMIT,
        "{} handlers ran at once in a queue of {LIMIT}",
        most_inside.load(Ordering::SeqCst)
    );
    assert!(
        most_running <= LIMIT as u64,
        "the store held {most_running} jobs running in a queue of {LIMIT}"
    );
    // And the queue was used: its slots were filled, not left idle.
    assert_eq!(most_inside.load(Ordering::SeqCst), LIMIT);
    engine.store().verify().await.unwrap();
    engine.shutdown(Duration::from_secs(5)).await;
}

/// Shutdown waits for outcomes in flight: jobs whose handlers return while the engine
/// shuts down are recorded as completed, once, and nothing runs again at the next
/// start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_records_the_outcomes_of_handlers_that_return_during_it() {
    let dir = tempfile::tempdir().unwrap();
    let runs = Arc::new(AtomicU32::new(0));
    let r = runs.clone();
    let engine = Engine::builder()
        .store(store(&dir))
        .queue("default", 8)
        .handler("slow", move |_ctx, payload| {
            let runs = r.clone();
            async move {
                runs.fetch_add(1, Ordering::SeqCst);
                let ms = payload["ms"].as_u64().unwrap_or(0);
                tokio::time::sleep(Duration::from_millis(ms)).await;
                Ok(json!("done"))
            }
        })
        .build()
        .await
        .unwrap();
    // Handlers that return just before, during and well after the shutdown begins.
    let specs = (0..8)
        .map(|i| {
            JobSpec::new("slow")
                .id(format!("s{i}"))
                .payload(json!({"ms": i * 40}))
        })
        .collect();
    engine.submit_many(specs).await.unwrap();
    within("every job to start", async {
        while engine.running_jobs().len() + (runs.load(Ordering::SeqCst) as usize) < 8 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(60)).await;
    engine.shutdown(Duration::from_secs(10)).await;
    assert_eq!(runs.load(Ordering::SeqCst), 8);

    let again = Arc::new(AtomicU32::new(0));
    let a = again.clone();
    let engine = Engine::builder()
        .store(store(&dir))
        .handler("slow", move |_ctx, _payload| {
            a.fetch_add(1, Ordering::SeqCst);
            async move { Ok(json!("again")) }
        })
        .build()
        .await
        .unwrap();
    for i in 0..8 {
        let job = engine.get(&format!("s{i}")).await.unwrap();
        assert_eq!(job.state, State::Completed, "s{i}: {:?}", job.error);
        assert_eq!(job.result, Some(json!("done")), "s{i}");
        let kinds = event_kinds(&engine, &job.id).await;
        assert_eq!(
            kinds,
            [
                EventKind::Submitted,
                EventKind::Started,
                EventKind::Completed
            ],
            "s{i}"
        );
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        again.load(Ordering::SeqCst),
        0,
        "a job ran again after the restart"
    );
    engine.shutdown(Duration::from_secs(5)).await;
}

/// The engine prunes finished jobs once their queue's retention has passed, in batches,
/// and leaves running jobs and queues kept longer alone.
#[tokio::test]
async fn retention_prunes_finished_jobs_past_their_queues_retention() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let day = Duration::from_secs(24 * 3600);
    let engine = builder(&dir)
        .clock(Arc::new(clock.clone()))
        .queue("audit", 1)
        .retention(baton_engine::Retention {
            keep: Some(day),
            queues: [("audit".to_owned(), Some(30 * day))].into(),
            every: Duration::from_millis(20),
            batch: 3,
        })
        .build()
        .await
        .unwrap();
    let done = submit_echoes(&engine, 10).await;
    let audited = engine
        .submit(JobSpec::new("echo").queue("audit"))
        .await
        .unwrap()
        .job
        .id;
    for id in done.iter().chain([&audited]) {
        wait_state(&engine, id, State::Completed).await;
    }
    let looper = engine.submit(JobSpec::new("looper")).await.unwrap().job.id;
    wait_state(&engine, &looper, State::Running).await;

    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(engine.pruned(), (0, 0), "nothing is a day old yet");
    clock.advance(2 * day);
    within("the default queue's jobs to be pruned", async {
        while engine.pruned().0 < 10 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    for id in &done {
        let e = engine.get(id).await.unwrap_err();
        assert_eq!(e.code(), ErrorCode::NotFound, "{id}: {e}");
    }
    assert!(
        engine.pruned().1 >= 30,
        "their events too: {:?}",
        engine.pruned()
    );
    assert_eq!(engine.get(&audited).await.unwrap().state, State::Completed);
    assert_eq!(engine.get(&looper).await.unwrap().state, State::Running);
    assert_eq!(engine.pruned().0, 10);
    engine.cancel(&looper).await.unwrap();
    engine.shutdown(Duration::from_secs(5)).await;
}
