//! The SQLite store under injected faults (feature `faults`): a write that fails part
//! way leaves no trace and publishes nothing, and the other writes of its group commit
//! still land.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use baton_core::{Event, EventKind, JobSpec, Limits, Millis, NewJob, State};
use baton_store::conformance::T0;
use baton_store::sqlite::Faults;
use baton_store::{ClaimRequest, Error, SqliteOptions, SqliteStore, Store, Transition};
use tokio::sync::broadcast;

const SERVER: &str = "server-a";

fn open(path: &Path, faults: &Faults) -> SqliteStore {
    let mut options = SqliteOptions::new(path);
    options.faults = faults.clone();
    SqliteStore::open(options).unwrap_or_else(|e| panic!("open: {e}"))
}

fn new_job(spec: JobSpec) -> NewJob {
    spec.validate(T0, &Limits::default())
        .unwrap_or_else(|e| panic!("{e}"))
}

/// A job in a queue of its own name, so that a test claims exactly that job.
fn job(id: &str) -> JobSpec {
    JobSpec::new("task").id(id).queue(format!("q-{id}"))
}

async fn submit(store: &SqliteStore, spec: JobSpec) {
    store.submit(vec![new_job(spec)]).await.expect("submit");
}

async fn claim(store: &SqliteStore, id: &str, now: Millis) -> u64 {
    let mut claimed = store
        .claim(ClaimRequest {
            queue: format!("q-{id}"),
            limit: 1,
            server_id: SERVER.into(),
            now,
            kinds: None,
        })
        .await
        .expect("claim");
    assert_eq!(claimed.len(), 1, "claim {id}");
    claimed.remove(0).fence
}

async fn state(store: &SqliteStore, id: &str) -> State {
    store
        .get(id)
        .await
        .expect("get")
        .unwrap_or_else(|| panic!("job {id} is missing"))
        .state
}

async fn last_event_id(store: &SqliteStore) -> u64 {
    store
        .events_after(0, 100_000)
        .await
        .expect("events")
        .last()
        .map_or(0, |e| e.id)
}

/// What the live stream published so far.
fn published(rx: &mut broadcast::Receiver<Arc<Event>>) -> Vec<Event> {
    let mut out = Vec::new();
    while let Ok(e) = rx.try_recv() {
        out.push((*e).clone());
    }
    out
}

fn described(events: &[Event]) -> Vec<(String, EventKind)> {
    events
        .iter()
        .map(|e| (e.job_id.clone().unwrap_or_default(), e.kind))
        .collect()
}

/// A job with five dependents ends; settling the third fails. The ending job's
/// transition is refused whole: it still runs, no dependent moved, no event of it is
/// stored or published. A submit that shared its group commit lands all the same, and
/// event ids stay dense once the job ends for real.
#[tokio::test]
async fn a_failure_while_settling_a_fan_out_refuses_the_whole_transition() {
    let dir = tempfile::tempdir().expect("temp dir");
    let faults = Faults::default();
    let store = open(&dir.path().join("baton.db"), &faults);
    submit(&store, job("parent")).await;
    let children: Vec<String> = (1..=5).map(|i| format!("child-{i}")).collect();
    for child in &children {
        submit(&store, job(child).depends_on("parent")).await;
    }
    let fence = claim(&store, "parent", T0 + 1).await;
    let mark = last_event_id(&store).await;
    let mut live = store.subscribe();

    faults.fail_dependent(3);
    // A slow batch first, so that the two writes below queue up behind it and are
    // committed together in the next one.
    faults.slow_batches(Duration::from_millis(300));
    let stats = store.write_stats().expect("write stats");
    let batches = stats.batches.load(Ordering::SeqCst);
    let slow = tokio::spawn({
        let store = store.clone();
        async move { store.heartbeat(SERVER, T0 + 2).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let complete = store.transition(
        Transition::new("parent", State::Completed, EventKind::Completed, T0 + 3).fence(fence),
    );
    let other = store.submit(vec![new_job(job("other"))]);
    let (complete, other) = tokio::join!(complete, other);
    slow.await.expect("join").expect("heartbeat");
    faults.slow_batches(Duration::ZERO);
    assert_eq!(
        stats.batches.load(Ordering::SeqCst) - batches,
        2,
        "the transition and the submit were meant to share one group commit"
    );

    match complete {
        Err(Error::Conflict { id, .. }) => assert_eq!(id, "child-3"),
        other => panic!("expected the injected conflict, got {other:?}"),
    }
    assert_eq!(state(&store, "parent").await, State::Running);
    for child in &children {
        assert_eq!(state(&store, child).await, State::Awaiting, "{child}");
    }
    let stored = store.events_after(mark, 1000).await.expect("events");
    assert_eq!(
        described(&stored),
        [("other".to_owned(), EventKind::Submitted)],
        "only the submit's event is stored"
    );
    assert_eq!(
        described(&published(&mut live)),
        described(&stored),
        "only the submit's event is published"
    );
    other.expect("the submit in the same batch commits");
    assert_eq!(state(&store, "other").await, State::Queued);

    // The same transition, without the fault, lands whole.
    store
        .transition(
            Transition::new("parent", State::Completed, EventKind::Completed, T0 + 4).fence(fence),
        )
        .await
        .expect("complete");
    for child in &children {
        assert_eq!(state(&store, child).await, State::Queued, "{child}");
    }
    let stored = store.events_after(mark, 1000).await.expect("events");
    let ids: Vec<u64> = stored.iter().map(|e| e.id).collect();
    let dense: Vec<u64> = (mark + 1..=mark + stored.len() as u64).collect();
    assert_eq!(ids, dense, "event ids have no gap");
    assert_eq!(described(&published(&mut live)), described(&stored[1..]));
    store.close().await;
}

/// Shutdown hands back a server's jobs in one write: one running job goes back to its
/// queue, then a stopping job with dependents ends and settling one of them fails. The
/// release is refused whole: the first job was not handed back either.
#[tokio::test]
async fn a_failure_half_way_through_a_release_leaves_every_job_as_it_was() {
    let dir = tempfile::tempdir().expect("temp dir");
    let faults = Faults::default();
    let store = open(&dir.path().join("baton.db"), &faults);
    submit(&store, job("first")).await;
    submit(&store, job("stopped")).await;
    submit(&store, job("child-1").depends_on("stopped")).await;
    submit(&store, job("child-2").depends_on("stopped")).await;
    claim(&store, "first", T0 + 1).await;
    claim(&store, "stopped", T0 + 1).await;
    store
        .transition(Transition::new(
            "stopped",
            State::Stopping,
            EventKind::Stopping,
            T0 + 2,
        ))
        .await
        .expect("stop");
    let mark = last_event_id(&store).await;
    let mut live = store.subscribe();
    let counts_before = store.counts().await.expect("counts").rows;

    faults.fail_dependent(2);
    let refused = store.release(SERVER, T0 + 3).await;
    assert!(
        matches!(&refused, Err(Error::Conflict { id, .. }) if id == "child-2"),
        "{refused:?}"
    );
    assert_eq!(state(&store, "first").await, State::Running);
    assert_eq!(state(&store, "stopped").await, State::Stopping);
    assert_eq!(state(&store, "child-1").await, State::Awaiting);
    assert_eq!(state(&store, "child-2").await, State::Awaiting);
    assert!(
        store
            .events_after(mark, 100)
            .await
            .expect("events")
            .is_empty()
    );
    assert!(published(&mut live).is_empty());
    // The kept counts went back with the rows.
    assert_eq!(store.counts().await.expect("counts").rows, counts_before);

    // Without the fault the same release lands whole.
    let released = store.release(SERVER, T0 + 4).await.expect("release");
    assert_eq!(released.len(), 2);
    let counts = store.counts().await.expect("counts").rows;
    let of = |state: State| {
        counts
            .iter()
            .filter(|(_, s, _)| *s == state)
            .map(|r| r.2)
            .sum::<u64>()
    };
    assert_eq!(
        (of(State::Queued), of(State::Cancelled), of(State::Running)),
        (1, 3, 0)
    );
    assert_eq!(state(&store, "first").await, State::Queued);
    assert_eq!(state(&store, "stopped").await, State::Cancelled);
    assert_eq!(state(&store, "child-1").await, State::Cancelled);
    assert_eq!(state(&store, "child-2").await, State::Cancelled);
    store.close().await;
}

/// A full writer queue refuses a submit at once with `Overloaded`, and refuses it
/// whole; a write that finishes work already taken (here a worker's outcome) waits for
/// room instead and lands.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_write_queue_refuses_submits_and_lets_outcomes_wait() {
    const QUEUE: usize = 8;
    let dir = tempfile::tempdir().expect("temp dir");
    let faults = Faults::default();
    let mut options = SqliteOptions::new(dir.path().join("baton.db")).write_queue(QUEUE);
    options.faults = faults.clone();
    let store = SqliteStore::open(options).unwrap_or_else(|e| panic!("open: {e}"));
    submit(&store, job("running")).await;
    let fence = claim(&store, "running", T0 + 1).await;

    faults.slow_batches(Duration::from_millis(200));
    // One write for the writer to sleep on, then enough to fill its queue.
    let mut flood = Vec::new();
    for i in 0..=QUEUE {
        let store = store.clone();
        flood.push(tokio::spawn(async move {
            store
                .submit(vec![new_job(job(&format!("flood-{i}")))])
                .await
        }));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(store.queued_writes(), QUEUE);
    let refused = store.submit(vec![new_job(job("refused"))]).await;
    assert_eq!(refused, Err(Error::Overloaded { queued: QUEUE }));
    assert_eq!(
        refused.unwrap_err().to_string(),
        format!("the store is overloaded: {QUEUE} writes are queued; retry shortly")
    );
    let outcome = store.record(
        Transition::new("running", State::Completed, EventKind::Completed, T0 + 2).fence(fence),
    );
    let outcome = tokio::time::timeout(Duration::from_secs(30), outcome).await;
    outcome
        .expect("the outcome waits for room, then lands")
        .expect("the outcome is stored");
    faults.slow_batches(Duration::ZERO);
    for task in flood {
        task.await.expect("join").expect("a queued submit lands");
    }
    assert_eq!(state(&store, "running").await, State::Completed);
    assert_eq!(store.get("refused").await.expect("get"), None);
    assert!(store.queued_writes() <= QUEUE);
    store.close().await;
}

/// The read pool is fixed: however many reads run at once, the store holds the writer's
/// connection and `readers` read connections to its database, and a read waits for a
/// free one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reads_wait_for_a_connection_of_the_fixed_pool() {
    const READERS: usize = 2;
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("baton.db");
    let faults = Faults::default();
    let mut options = SqliteOptions::new(&path).readers(READERS);
    options.faults = faults.clone();
    let store = SqliteStore::open(options).unwrap_or_else(|e| panic!("open: {e}"));
    submit(&store, job("job-1")).await;
    let files = || open_files(&path);
    assert_eq!(files(), 1 + READERS, "the pool opens with the store");

    faults.slow_reads(Duration::from_millis(20));
    let watching = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let watcher = std::thread::spawn({
        let (watching, path) = (watching.clone(), path.clone());
        move || {
            let mut most = 0;
            while watching.load(Ordering::SeqCst) {
                most = most.max(open_files(&path));
                std::thread::sleep(Duration::from_millis(2));
            }
            most
        }
    });
    let started = std::time::Instant::now();
    let reads: Vec<_> = (0..40)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { store.get("job-1").await })
        })
        .collect();
    for read in reads {
        let job = read.await.expect("join").expect("read");
        assert_eq!(job.map(|j| j.id).as_deref(), Some("job-1"));
    }
    let took = started.elapsed();
    watching.store(false, Ordering::SeqCst);
    let most = watcher.join().expect("watcher");
    assert_eq!(most, 1 + READERS, "connections open to the database");
    // 40 reads of 20 ms each through 2 connections take at least 400 ms.
    assert!(took >= Duration::from_millis(390), "{took:?}");
    store.close().await;
}

/// How many files this process holds open on the database itself (not its WAL).
fn open_files(db: &Path) -> usize {
    let db = std::fs::canonicalize(db).expect("canonical path");
    std::fs::read_dir("/proc/self/fd")
        .expect("read /proc/self/fd")
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|target| *target == db)
        .count()
}

/// SQLite's own `synchronous` is read back on open; a store that does not run at the
/// level its durability asks for refuses to open, naming both.
#[tokio::test]
async fn a_store_whose_synchronous_is_not_the_asked_durability_refuses_to_open() {
    let dir = tempfile::tempdir().expect("temp dir");
    let faults = Faults::default();
    faults.force_synchronous("off");
    let mut options = SqliteOptions::new(dir.path().join("baton.db"));
    options.faults = faults;
    match SqliteStore::open(options) {
        Err(Error::Config(message)) => {
            assert!(message.contains("synchronous=off"), "{message}");
            assert!(message.contains("synchronous=full"), "{message}");
            assert!(message.contains("baton.db"), "{message}");
        }
        Err(other) => panic!("expected a configuration error, got {other}"),
        Ok(_) => panic!("opened a store whose commits would not be durable"),
    }
}
