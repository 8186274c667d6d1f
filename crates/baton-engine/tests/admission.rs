//! Admission control with injected readings: heavy queues hold and say why while a
//! threshold is crossed, light queues and running jobs go on, the hold lifts after the
//! clear time, a flapping reading alerts once, and a low store disk refuses new jobs
//! without writing anything.

use std::sync::Arc;
use std::time::{Duration, Instant};

use baton_engine::{
    Engine, ErrorCode, EventKind, JobSpec, Reading, ResourceOptions, State, ToWorker, WorkerHello,
    WorkflowSpec,
};
use baton_store::{SqliteOptions, SqliteStore};
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::sync::Semaphore;

const CLEAR_AFTER: Duration = Duration::from_millis(400);

fn options() -> ResourceOptions {
    ResourceOptions {
        // Readings come from the test alone.
        sample_every: None,
        memory_above: Some(90.0),
        disk_free_below: Some(5.0),
        load_above: Some(4.0),
        clear_after: CLEAR_AFTER,
        min_alert_interval: Duration::ZERO,
        ..ResourceOptions::default()
    }
}

/// Queues `media` and `ml` are heavy, `default` is not. `slow` jobs run until the gate
/// lets each one through.
async fn engine(dir: &TempDir, gate: Arc<Semaphore>) -> Engine {
    let store = SqliteStore::open(SqliteOptions::new(dir.path().join("baton.db"))).unwrap();
    Engine::builder()
        .store(Arc::new(store))
        .queue("media", 2)
        .queue("ml", 2)
        .heavy("media")
        .heavy("ml")
        .resources(options())
        .remote_kinds(["render"])
        .handler("work", |_ctx, payload| async move { Ok(payload) })
        .handler("slow", move |_ctx, _payload| {
            let gate = gate.clone();
            async move {
                gate.acquire().await.expect("the gate is open").forget();
                Ok(json!("done"))
            }
        })
        .build()
        .await
        .unwrap()
}

fn memory(pct: f64) -> Reading {
    Reading {
        memory_pct: Some(pct),
        ..Reading::default()
    }
}

fn disk(free_pct: f64) -> Reading {
    Reading {
        disk_free_pct: Some(free_pct),
        ..Reading::default()
    }
}

fn held(engine: &Engine, queue: &str) -> Option<String> {
    engine
        .queue_states()
        .into_iter()
        .find(|q| q.name == queue)
        .unwrap_or_else(|| panic!("no queue {queue}"))
        .held
}

async fn state(engine: &Engine, id: &str) -> State {
    engine.get(id).await.unwrap().state
}

async fn wait_until_running(engine: &Engine, id: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while state(engine, id).await != State::Running {
        assert!(Instant::now() < deadline, "{id} never started");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The resource events in the log, each as (type, resource, data).
async fn resource_events(engine: &Engine) -> Vec<(EventKind, String, Value)> {
    engine
        .store()
        .events_after(0, 100_000)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| {
            matches!(
                e.kind,
                EventKind::ResourceAlert | EventKind::ResourceCleared
            )
        })
        .map(|e| {
            let resource = e.data["resource"].as_str().unwrap_or_default().to_owned();
            (e.kind, resource, e.data)
        })
        .collect()
}

/// Waits until the log holds `n` resource events (they are written behind the
/// reading that causes them).
async fn wait_for_resource_events(engine: &Engine, n: usize) -> Vec<(EventKind, String, Value)> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let events = resource_events(engine).await;
        if events.len() >= n {
            return events;
        }
        assert!(
            Instant::now() < deadline,
            "{n} resource events expected: {events:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn heavy_queues_hold_and_say_why_light_ones_run_and_both_resume_after_the_hold_time() {
    let dir = TempDir::new().unwrap();
    let gate = Arc::new(Semaphore::new(0));
    let engine = engine(&dir, gate.clone()).await;
    // A heavy job already running when the pressure comes.
    engine
        .submit(JobSpec::new("slow").id("running").queue("media"))
        .await
        .unwrap();
    wait_until_running(&engine, "running").await;

    engine.pressure().inject(memory(93.0));
    for queue in ["media", "ml"] {
        assert_eq!(
            held(&engine, queue).as_deref(),
            Some("memory 93 % > 90 %"),
            "{queue} says why it holds"
        );
    }
    assert_eq!(held(&engine, "default"), None, "a light queue is not held");
    for (id, queue) in [("m", "media"), ("l", "ml"), ("d", "default")] {
        engine
            .submit(JobSpec::new("work").id(id).queue(queue))
            .await
            .unwrap();
    }
    let light = engine.wait("d").await.unwrap();
    assert_eq!(light.state, State::Completed, "the light queue runs");

    // Running jobs are never touched: the heavy one finishes during the hold, and its
    // slot is not given to a held job.
    assert_eq!(state(&engine, "running").await, State::Running);
    gate.add_permits(1);
    assert_eq!(
        engine.wait("running").await.unwrap().state,
        State::Completed
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(state(&engine, "m").await, State::Queued, "held");
    assert_eq!(state(&engine, "l").await, State::Queued, "held");

    // Back under the threshold: held until the readings have stayed down for the
    // clear time, then both heavy queues start their jobs.
    let low = Instant::now();
    engine.pressure().inject(memory(70.0));
    let why = held(&engine, "media").expect("still held until the clear time");
    assert_eq!(
        why,
        "memory 70 % (was > 90 %, clears after 400ms under 85.5 %)"
    );
    for id in ["m", "l"] {
        assert_eq!(engine.wait(id).await.unwrap().state, State::Completed);
    }
    assert!(
        low.elapsed() >= CLEAR_AFTER,
        "resumed {:?} after the reading fell",
        low.elapsed()
    );
    assert_eq!(held(&engine, "media"), None);

    let events = wait_for_resource_events(&engine, 2).await;
    let kinds: Vec<(EventKind, &str)> = events.iter().map(|(k, r, _)| (*k, r.as_str())).collect();
    assert_eq!(
        kinds,
        [
            (EventKind::ResourceAlert, "memory"),
            (EventKind::ResourceCleared, "memory")
        ]
    );
    let alert = &events[0].2;
    assert_eq!(alert["value"], 93.0);
    assert_eq!(alert["threshold"], 90.0);
    assert_eq!(alert["message"], "memory 93 % > 90 %");
    assert_eq!(alert["server_id"], json!(engine.server().id));
    assert_eq!(events[1].2["value"], 70.0);
    engine.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_held_heavy_queue_holds_for_remote_workers_too() {
    let dir = TempDir::new().unwrap();
    let engine = engine(&dir, Arc::new(Semaphore::new(0))).await;
    let (_session, mut rx) = engine
        .connect_worker(WorkerHello {
            name: "gpu".into(),
            kinds: vec!["render".into()],
            queues: vec!["media".into()],
            slots: 2,
        })
        .expect("the worker connects");
    engine.pressure().inject(Reading {
        load: Some(6.5),
        ..Reading::default()
    });
    assert_eq!(held(&engine, "media").as_deref(), Some("load 6.5 > 4"));
    engine
        .submit(JobSpec::new("render").id("r").queue("media"))
        .await
        .unwrap();
    // The worker looks every second on its own: two looks see nothing to take.
    let early = tokio::time::timeout(Duration::from_millis(2_500), async {
        loop {
            if let Some(ToWorker::Job { job, .. }) = rx.recv().await {
                return job.id;
            }
        }
    })
    .await;
    assert!(early.is_err(), "handed over while held: {early:?}");
    assert_eq!(state(&engine, "r").await, State::Queued);

    engine.pressure().inject(Reading {
        load: Some(1.0),
        ..Reading::default()
    });
    let handed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Some(ToWorker::Job { job, .. }) = rx.recv().await {
                return job.id;
            }
        }
    })
    .await
    .expect("handed over once the hold lifted");
    assert_eq!(handed, "r");
}

#[tokio::test]
async fn a_flapping_reading_alerts_once_and_clears_once() {
    let dir = TempDir::new().unwrap();
    let engine = engine(&dir, Arc::new(Semaphore::new(0))).await;
    // Around the threshold for a while: one crossing, never cleared, since 89 is not
    // under 85.5 (90 less 5 %).
    for i in 0..40 {
        engine
            .pressure()
            .inject(memory(if i % 2 == 0 { 91.0 } else { 89.0 }));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(held(&engine, "media").is_some());
    // Dips under the margin shorter than the clear time do not clear it either.
    for _ in 0..5 {
        engine.pressure().inject(memory(80.0));
        tokio::time::sleep(Duration::from_millis(50)).await;
        engine.pressure().inject(memory(91.0));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    engine.pressure().inject(memory(80.0));
    let events = wait_for_resource_events(&engine, 2).await;
    // Nothing more comes.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let events_after = resource_events(&engine).await;
    assert_eq!(events_after.len(), events.len(), "{events_after:?}");
    let kinds: Vec<EventKind> = events_after.iter().map(|(k, _, _)| *k).collect();
    assert_eq!(
        kinds,
        [EventKind::ResourceAlert, EventKind::ResourceCleared],
        "{events_after:?}"
    );
    assert_eq!(held(&engine, "media"), None);
}

#[tokio::test]
async fn a_low_store_disk_refuses_new_jobs_and_writes_nothing() {
    let dir = TempDir::new().unwrap();
    let engine = engine(&dir, Arc::new(Semaphore::new(0))).await;
    engine
        .submit(JobSpec::new("work").id("before"))
        .await
        .unwrap();
    let jobs_before = engine.list(Default::default()).await.unwrap().total;

    engine.pressure().inject(disk(3.0));
    let refused = [
        engine.submit(JobSpec::new("work").id("one")).await.err(),
        engine
            .submit_batch(vec![JobSpec::new("work").id("two")])
            .await
            .err(),
        engine
            .submit_workflow(WorkflowSpec {
                id: Some("wf".into()),
                jobs: [("a".to_owned(), JobSpec::new("work"))].into(),
            })
            .await
            .err(),
    ];
    for e in refused {
        let e = e.expect("refused");
        assert_eq!(e.code(), ErrorCode::InsufficientStorage, "{e}");
        let text = e.to_string();
        assert!(
            text.contains("the store's disk has 3 % free, under disk_free_below = 5 %"),
            "{text}"
        );
    }
    assert_eq!(
        engine.list(Default::default()).await.unwrap().total,
        jobs_before,
        "nothing was written"
    );
    assert!(
        engine.workflow("wf").await.is_err(),
        "no workflow was stored"
    );
    // Light queues still run what they hold: the disk only stops new submissions.
    assert_eq!(held(&engine, "default"), None);

    engine.pressure().inject(disk(40.0));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match engine.submit(JobSpec::new("work").id("after")).await {
            Ok(_) => break,
            Err(e) => {
                assert_eq!(e.code(), ErrorCode::InsufficientStorage, "{e}");
                assert!(Instant::now() < deadline, "still refused: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    assert_eq!(engine.wait("after").await.unwrap().state, State::Completed);
}

#[tokio::test]
async fn bad_resource_options_and_unknown_heavy_queues_are_refused_at_build() {
    let dir = TempDir::new().unwrap();
    let build = |options: ResourceOptions, heavy: &'static str| {
        // A database each: a refused build may still hold its store's lock a moment.
        let store =
            SqliteStore::open(SqliteOptions::new(dir.path().join(format!("{heavy}.db")))).unwrap();
        async move {
            Engine::builder()
                .store(Arc::new(store))
                .queue("media", 1)
                .heavy(heavy)
                .resources(options)
                .build()
                .await
                .err()
                .map(|e| e.to_string())
        }
    };
    let e = build(
        ResourceOptions {
            memory_above: Some(150.0),
            ..options()
        },
        "media",
    )
    .await;
    assert!(
        e.as_deref()
            .is_some_and(|e| e.contains("resources: memory_above: 150")),
        "{e:?}"
    );
    let e = build(options(), "video").await;
    assert!(
        e.as_deref()
            .is_some_and(|e| e.contains("heavy queue \"video\" is not configured")),
        "{e:?}"
    );
}
