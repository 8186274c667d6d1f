//! Concurrency limits by label and kind across queues, through a running engine:
//! never more than the limit running (read from the event log), queues served in
//! turn rather than one after the other, a queued job saying what it waits for, and
//! a remote worker held to the same limits.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use baton_engine::{
    ConcurrencyLimit, Engine, Event, EventKind, JobSpec, Report, State, ToWorker, WorkerHello,
};
use baton_store::{SqliteOptions, SqliteStore};
use serde_json::json;
use tempfile::TempDir;
use tokio::sync::Semaphore;

async fn engine(dir: &TempDir, limits: &[ConcurrencyLimit], gate: Arc<Semaphore>) -> Engine {
    let store = SqliteStore::open(SqliteOptions::new(dir.path().join("baton.db"))).unwrap();
    let mut b = Engine::builder()
        .store(Arc::new(store))
        .queue("a", 4)
        .queue("b", 4)
        .queue("c", 4)
        .remote_kinds(["render"])
        .handler("work", |_ctx, _payload| async move {
            tokio::time::sleep(Duration::from_millis(3)).await;
            Ok(json!("done"))
        })
        .handler("slow", move |_ctx, _payload| {
            let gate = gate.clone();
            async move {
                gate.acquire().await.expect("the gate is open").forget();
                Ok(json!("done"))
            }
        });
    for l in limits {
        b = b.concurrency_limit(l.clone());
    }
    b.build().await.unwrap()
}

/// The next job handed to the worker, if one comes within `wait`.
async fn next(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<ToWorker>,
    wait: Duration,
) -> Result<(String, u64), tokio::time::error::Elapsed> {
    tokio::time::timeout(wait, async {
        loop {
            if let Some(ToWorker::Job { job, token, .. }) = rx.recv().await {
                return (job.id, token);
            }
        }
    })
    .await
}

async fn all_events(engine: &Engine) -> Vec<Event> {
    let mut out: Vec<Event> = Vec::new();
    loop {
        let after = out.last().map_or(0, |e| e.id);
        let page = engine.store().events_after(after, 1000).await.unwrap();
        if page.is_empty() {
            return out;
        }
        out.extend(page);
    }
}

/// 200 jobs across three queues, 150 with the label `source:alfabeta` (limit 2): in
/// the event log never more than two of them run at once, both slots are used, every
/// job completes once, and the queues take turns: each of them starts labelled jobs
/// among the first twelve, where without turns the first queue would take them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_label_limit_holds_across_three_queues_which_take_turns() {
    let dir = TempDir::new().unwrap();
    let limit = ConcurrencyLimit::label("source", "alfabeta", 2);
    let engine = engine(&dir, &[limit], Arc::new(Semaphore::new(0))).await;
    // Every job is in its queue before any starts.
    for q in ["a", "b", "c"] {
        engine.pause_queue(q).await.unwrap();
    }
    let mut ids = Vec::new();
    for q in ["a", "b", "c"] {
        for n in 0..50 {
            let id = format!("{q}-x-{n}");
            engine
                .submit(
                    JobSpec::new("work")
                        .id(&id)
                        .queue(q)
                        .label("source", "alfabeta"),
                )
                .await
                .unwrap();
            ids.push(id);
        }
    }
    for n in 0..50 {
        let id = format!("free-{n}");
        let q = ["a", "b", "c"][n % 3];
        engine
            .submit(JobSpec::new("work").id(&id).queue(q))
            .await
            .unwrap();
        ids.push(id);
    }
    for q in ["a", "b", "c"] {
        engine.resume_queue(q).await.unwrap();
    }
    for id in &ids {
        let job = tokio::time::timeout(Duration::from_secs(60), engine.wait(id))
            .await
            .unwrap_or_else(|_| panic!("{id} ends"))
            .unwrap();
        assert_eq!(job.state, State::Completed, "{id}");
        assert_eq!(job.attempt, 1, "{id} ran once");
    }
    let events = all_events(&engine).await;
    let labelled = |id: &str| id.contains("-x-");
    let mut running: i64 = 0;
    let mut most = 0;
    let mut starts: Vec<String> = Vec::new();
    let mut started: HashMap<String, usize> = HashMap::new();
    for e in &events {
        let Some(id) = e.job_id.as_deref() else {
            continue;
        };
        if !labelled(id) {
            continue;
        }
        match e.kind {
            EventKind::Started => {
                running += 1;
                most = most.max(running);
                *started.entry(id.to_owned()).or_default() += 1;
                starts.push(id[..1].to_owned());
            }
            EventKind::Completed | EventKind::Failed | EventKind::Cancelled => running -= 1,
            _ => {}
        }
    }
    assert!(
        most <= 2,
        "{most} labelled jobs ran at once; the limit is 2"
    );
    assert_eq!(most, 2, "both slots were used");
    assert_eq!(started.len(), 150);
    assert!(started.values().all(|n| *n == 1), "each started once");
    let mut first: BTreeMap<&str, usize> = BTreeMap::new();
    for q in &starts[..12] {
        *first.entry(q.as_str()).or_default() += 1;
    }
    assert_eq!(first.len(), 3, "the first 12 labelled starts: {first:?}");
    assert!(first.values().all(|n| *n >= 2), "{first:?}");
    engine.shutdown(Duration::from_secs(5)).await;
}

/// A queued job held by a full limit says so, a kind limit holds a remote worker's
/// jobs too, and the job starts once a slot frees.
#[tokio::test]
async fn a_waiting_job_says_which_limit_holds_it_and_a_remote_worker_obeys_the_limit() {
    let dir = TempDir::new().unwrap();
    let gate = Arc::new(Semaphore::new(0));
    let limits = [
        ConcurrencyLimit::label("source", "alfabeta", 2),
        ConcurrencyLimit::kind("render", 1),
    ];
    let engine = engine(&dir, &limits, gate.clone()).await;
    for (id, q) in [("s1", "a"), ("s2", "b"), ("s3", "c")] {
        engine
            .submit(
                JobSpec::new("slow")
                    .id(id)
                    .queue(q)
                    .label("source", "alfabeta"),
            )
            .await
            .unwrap();
    }
    let (session, mut rx) = engine
        .connect_worker(WorkerHello {
            name: "gpu".into(),
            kinds: vec!["render".into()],
            queues: vec!["a".into()],
            slots: 4,
        })
        .expect("the worker connects");
    for id in ["r1", "r2"] {
        engine
            .submit(JobSpec::new("render").id(id).queue("a"))
            .await
            .unwrap();
    }
    let (first, token) = next(&mut rx, Duration::from_secs(10))
        .await
        .expect("one render job is handed over");
    // The second waits for the first: the worker's slots are free, the limit is not.
    assert!(next(&mut rx, Duration::from_millis(1500)).await.is_err());
    let second = if first == "r1" { "r2" } else { "r1" };
    let waiting = engine.get(second).await.unwrap();
    assert_eq!(waiting.state, State::Queued);
    assert_eq!(
        engine.waiting_for(&waiting).await.unwrap().as_deref(),
        Some("concurrency limit kind render (1/1)")
    );
    // Two of the three labelled jobs run; the third says what it waits for.
    let mut queued = Vec::new();
    for id in ["s1", "s2", "s3"] {
        let job = engine.get(id).await.unwrap();
        if job.state == State::Queued {
            queued.push(job);
        }
    }
    assert_eq!(queued.len(), 1, "{queued:?}");
    assert_eq!(
        engine.waiting_for(&queued[0]).await.unwrap().as_deref(),
        Some("concurrency limit source:alfabeta (2/2)")
    );
    let uses = engine.concurrency_use().await.unwrap();
    assert_eq!(
        uses.iter()
            .map(|u| (u.name.as_str(), u.held))
            .collect::<Vec<_>>(),
        [("source:alfabeta", 2), ("kind render", 1)]
    );

    session
        .report(&first, token, Report::Complete(json!("rendered")))
        .unwrap()
        .await
        .unwrap();
    let (got, _) = next(&mut rx, Duration::from_secs(10))
        .await
        .expect("the second render job follows once the first ended");
    assert_eq!(got, second);
    gate.add_permits(1);
    let third = queued[0].id.clone();
    let job = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let job = engine.get(&third).await.unwrap();
            if job.state != State::Queued {
                return job;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the third labelled job starts once a slot frees");
    assert_ne!(job.state, State::Queued);
    assert_eq!(engine.waiting_for(&job).await.unwrap(), None);
    gate.add_permits(10);
    engine.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn bad_limits_are_refused_when_the_engine_is_built() {
    let dir = TempDir::new().unwrap();
    let store = SqliteStore::open(SqliteOptions::new(dir.path().join("baton.db"))).unwrap();
    let err = Engine::builder()
        .store(Arc::new(store))
        .concurrency_limit(ConcurrencyLimit::label("source", "alfabeta", 0))
        .build()
        .await
        .err()
        .expect("a limit of 0 is refused");
    assert!(err.to_string().contains("source:alfabeta"), "{err}");
}
