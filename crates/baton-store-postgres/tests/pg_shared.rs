//! What only a store that several servers share must do: one gap-free order of
//! events that every server publishes alike, claims that never hand a job out twice
//! across servers, migrations that servers starting together apply once, a fan-in job
//! queued once when servers end its dependencies together, and errors that name the
//! database without its password.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use baton_core::{Event, EventKind, JobSpec, Limits, Millis, NewJob, State};
use baton_store::{ClaimRequest, Error, Store, Transition};
use baton_store_postgres::{PgOptions, PgStore};
use common::Schema;

const T0: Millis = 1_700_000_000_000;

fn job(id: &str) -> NewJob {
    JobSpec::new("work")
        .id(id)
        .validate(T0, &Limits::default())
        .expect("valid job")
}

/// Reads a subscriber until it has the event `last`.
async fn receive_upto(
    rx: &mut tokio::sync::broadcast::Receiver<Arc<Event>>,
    last: u64,
) -> Vec<Event> {
    let mut out = Vec::new();
    while out.last().is_none_or(|e: &Event| e.id < last) {
        let e = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("events keep coming")
            .expect("the subscriber did not lag");
        out.push((*e).clone());
    }
    out
}

/// Eight workers on two servers submit, claim and complete 200 jobs of one queue at
/// once: every job runs once, and both servers publish the same events in the same
/// order, ids 1, 2, 3... with no gap, each job's events in its own order, exactly as
/// the store reads them back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_servers_publish_one_gap_free_order_of_concurrent_writes() {
    let schema = Schema::new();
    let (a, b) = (schema.open().await, schema.open().await);
    let (mut ra, mut rb) = (a.subscribe(), b.subscribe());
    let mut workers = tokio::task::JoinSet::new();
    for w in 0..8 {
        let s = if w % 2 == 0 { a.clone() } else { b.clone() };
        workers.spawn(async move {
            let mut ran = Vec::new();
            for n in 0..25 {
                s.submit(vec![job(&format!("j-{w}-{n}"))])
                    .await
                    .expect("submit");
            }
            loop {
                let claimed = s
                    .claim(ClaimRequest {
                        queue: "default".into(),
                        limit: 3,
                        server_id: format!("server-{}", w % 2),
                        now: T0 + 1,
                        kinds: None,
                    })
                    .await
                    .expect("claim");
                if claimed.is_empty() {
                    break;
                }
                for c in claimed {
                    s.record(
                        Transition::new(&c.job.id, State::Completed, EventKind::Completed, T0 + 2)
                            .fence(c.fence),
                    )
                    .await
                    .expect("a claimed job is this worker's alone");
                    ran.push(c.job.id);
                }
            }
            ran
        });
    }
    let mut ran = Vec::new();
    while let Some(r) = workers.join_next().await {
        ran.extend(r.expect("worker"));
    }
    // A worker that found the queue empty before the others submitted left jobs.
    loop {
        let claimed = a
            .claim(ClaimRequest {
                queue: "default".into(),
                limit: 50,
                server_id: "server-0".into(),
                now: T0 + 3,
                kinds: None,
            })
            .await
            .expect("claim");
        if claimed.is_empty() {
            break;
        }
        for c in claimed {
            a.record(
                Transition::new(&c.job.id, State::Completed, EventKind::Completed, T0 + 4)
                    .fence(c.fence),
            )
            .await
            .expect("complete");
            ran.push(c.job.id);
        }
    }
    let unique: BTreeSet<&String> = ran.iter().collect();
    assert_eq!((ran.len(), unique.len()), (200, 200), "each job ran once");

    let last = a.last_event_id().await.expect("last id");
    assert_eq!(last, 600, "submitted, started and completed for each job");
    let (seen_a, seen_b) = (
        receive_upto(&mut ra, last).await,
        receive_upto(&mut rb, last).await,
    );
    let ids: Vec<u64> = seen_a.iter().map(|e| e.id).collect();
    assert_eq!(
        ids,
        (1..=last).collect::<Vec<_>>(),
        "ids from 1 with no gap"
    );
    assert_eq!(seen_a, seen_b, "both servers publish the same order");
    let mut stored = Vec::new();
    while stored.len() < last as usize {
        let page = b
            .events_after(stored.len() as u64, 250)
            .await
            .expect("events_after");
        assert!(!page.is_empty());
        stored.extend(page);
    }
    assert_eq!(stored, seen_a, "what is read back is what was published");
    let mut per_job: BTreeMap<String, u64> = BTreeMap::new();
    for e in &seen_a {
        let job = e.job_id.clone().expect("a job's event");
        let before = per_job.insert(job.clone(), e.seq).unwrap_or(0);
        assert_eq!(e.seq, before + 1, "job {job}'s events in its own order");
    }
    a.verify().await.expect("counts match rows");
    a.close().await;
    b.close().await;
}

/// A transaction still running holds back the ids of every later one, so that its
/// events are not given an id behind theirs: a write waits for its events' ids, then
/// the older transaction's events come first, and no id is skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_transaction_delays_later_ids_and_leaves_no_gap() {
    let schema = Schema::new();
    let s = schema.open().await;
    let slow = schema.connect().await;
    slow.batch_execute(
        "BEGIN; INSERT INTO events (job_key, job_id, job_seq, type, at, data) \
         VALUES (NULL, NULL, 0, 'queue.paused', 1, '{\"queue\": \"slow\"}')",
    )
    .await
    .expect("a slow transaction writes an event");
    let s2 = s.clone();
    let submit = tokio::spawn(async move { s2.submit(vec![job("later")]).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !submit.is_finished(),
        "the write waits: its events cannot have ids before the older transaction's"
    );
    assert!(
        s.events_after(0, 10).await.expect("read").is_empty(),
        "no id is given past a transaction still running"
    );
    slow.batch_execute("COMMIT").await.expect("commit");
    tokio::time::timeout(Duration::from_secs(5), submit)
        .await
        .expect("the write returns once the older transaction ended")
        .expect("task")
        .expect("submit");
    let log = s.events_after(0, 10).await.expect("read");
    let got: Vec<(u64, EventKind)> = log.iter().map(|e| (e.id, e.kind)).collect();
    assert_eq!(
        got,
        [(1, EventKind::QueuePaused), (2, EventKind::Submitted)],
        "the older transaction's event first, then the write's, no gap"
    );
    s.close().await;
}

/// Three servers starting at once on a new schema: the migrations run once, under
/// the advisory lock, and all three open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_starting_together_migrate_once() {
    let schema = Schema::new();
    let (a, b, c) = tokio::join!(schema.open(), schema.open(), schema.open());
    let version: i64 = schema
        .connect()
        .await
        .query_one("SELECT version FROM baton_schema", &[])
        .await
        .expect("version")
        .get(0);
    assert_eq!(version, baton_store_postgres::SCHEMA_VERSION);
    for s in [a, b, c] {
        s.submit(vec![job(&format!("x-{}", s.shown().len()))])
            .await
            .expect("each server writes");
        s.close().await;
    }
}

/// An unreachable database is an error at open that names it without its password;
/// a database written by a newer Baton is refused, not changed.
#[tokio::test]
async fn bad_databases_are_refused_with_a_clear_error() {
    let err = PgStore::open(PgOptions::new("postgres://ada:s3cret@127.0.0.1:1/jobs"))
        .await
        .err()
        .expect("nothing listens on port 1");
    let text = err.to_string();
    assert!(
        matches!(err, Error::Unavailable(_)) && text.contains("postgres://ada@127.0.0.1:1/jobs"),
        "{text}"
    );
    assert!(
        !text.contains("s3cret"),
        "the password is never shown: {text}"
    );

    let err = PgStore::open(PgOptions::new("postgres://ada:s3cret@[bad"))
        .await
        .err()
        .expect("not a URL");
    assert!(!err.to_string().contains("s3cret"), "{err}");

    let schema = Schema::new();
    schema.open().await.close().await;
    schema
        .connect()
        .await
        .batch_execute("UPDATE baton_schema SET version = 999")
        .await
        .expect("pretend a newer Baton wrote it");
    let err = PgStore::open(PgOptions::new(common::url()).schema(schema.0.clone()))
        .await
        .err()
        .expect("a newer schema is refused");
    assert!(
        err.to_string()
            .contains("schema version 999, newer than this Baton knows"),
        "{err}"
    );
}

/// Two servers complete the dependencies of one fan-in job at once, each write on a
/// connection of its own: each locks the fan-in job's row before it counts, so the
/// job is queued exactly once, by the write that met its last edge, every time.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fan_in_job_is_queued_once_when_two_servers_end_its_dependencies_together() {
    const ROUNDS: usize = 20;
    const FAN: usize = 8;
    let schema = Schema::new();
    let (a, b) = (schema.open().await, schema.open().await);
    for round in 0..ROUNDS {
        let queue = format!("round-{round}");
        let parents: Vec<String> = (0..FAN).map(|i| format!("r{round}-p{i}")).collect();
        a.submit(
            parents
                .iter()
                .map(|p| {
                    JobSpec::new("work")
                        .id(p.as_str())
                        .queue(queue.as_str())
                        .validate(T0, &Limits::default())
                        .expect("valid job")
                })
                .collect(),
        )
        .await
        .expect("submit the dependencies");
        let sink = format!("r{round}-sink");
        let mut spec = JobSpec::new("work").id(sink.as_str());
        for p in &parents {
            spec = spec.depends_on(p.as_str());
        }
        let submitted = b
            .submit(vec![
                spec.validate(T0, &Limits::default()).expect("valid job"),
            ])
            .await
            .expect("submit the fan-in job");
        assert_eq!(submitted[0].job.state, State::Awaiting);
        let claimed = a
            .claim(ClaimRequest {
                queue: queue.clone(),
                limit: FAN,
                server_id: "server-a".into(),
                now: T0 + 1,
                kinds: None,
            })
            .await
            .expect("claim");
        assert_eq!(claimed.len(), FAN);
        let mut ends = tokio::task::JoinSet::new();
        for (i, c) in claimed.into_iter().enumerate() {
            let s = if i % 2 == 0 { a.clone() } else { b.clone() };
            ends.spawn(async move {
                s.record(
                    Transition::new(&c.job.id, State::Completed, EventKind::Completed, T0 + 2)
                        .fence(c.fence),
                )
                .await
            });
        }
        while let Some(end) = ends.join_next().await {
            end.expect("task").expect("complete");
        }
        let events = a.job_events(&sink, 0, 100).await.expect("events");
        let kinds: Vec<EventKind> = events.iter().map(|e| e.kind).collect();
        assert_eq!(
            kinds,
            [EventKind::Submitted, EventKind::Queued],
            "round {round}: queued once"
        );
        assert_eq!(
            b.get(&sink).await.expect("get").expect("found").state,
            State::Queued,
            "round {round}"
        );
        let links = b.dependencies(&sink).await.expect("dependencies");
        assert_eq!(links.len(), FAN);
        assert!(
            links
                .iter()
                .all(|l| l.status == baton_core::EdgeStatus::Met),
            "round {round}: every edge met"
        );
    }
    a.verify().await.expect("counts match rows");
    b.verify().await.expect("counts match rows");
    a.close().await;
    b.close().await;
}

/// The ids of the jobs in one partition of `jobs`, sorted.
async fn partition(client: &tokio_postgres::Client, table: &str) -> Vec<String> {
    client
        .query(&format!("SELECT id FROM {table} ORDER BY id"), &[])
        .await
        .expect("read a partition")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// The hot table holds only jobs that have not ended: the write that ends a job moves
/// it to `jobs_done`, a retry brings it back, its id stays taken while it is kept
/// (a submit of it, alone or in a batch, returns the ended job) and is free again once
/// retention removed it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ended_jobs_leave_the_hot_table_and_keep_their_ids_until_pruned() {
    let schema = Schema::new();
    let s = schema.open().await;
    let sql = schema.connect().await;
    s.submit(vec![job("a"), job("b"), job("c")])
        .await
        .expect("submit");
    let claimed = s
        .claim(ClaimRequest {
            queue: "default".into(),
            limit: 3,
            server_id: "server-0".into(),
            now: T0 + 1,
            kinds: None,
        })
        .await
        .expect("claim");
    assert_eq!(claimed.len(), 3);
    let fence = |id: &str| claimed.iter().find(|c| c.job.id == id).unwrap().fence;
    s.record(
        Transition::new("a", State::Completed, EventKind::Completed, T0 + 2).fence(fence("a")),
    )
    .await
    .expect("complete a");
    s.record(Transition::new("b", State::Failed, EventKind::Failed, T0 + 2).fence(fence("b")))
        .await
        .expect("fail b");
    assert_eq!(partition(&sql, "jobs_live").await, ["c"]);
    assert_eq!(partition(&sql, "jobs_done").await, ["a", "b"]);

    // An ended job's id is still taken, for a batch and for a single submit.
    let again = s
        .submit(vec![job("a"), job("d"), job("d")])
        .await
        .expect("submit again");
    let created: Vec<(String, bool, State)> = again
        .iter()
        .map(|r| (r.job.id.to_string(), r.created, r.job.state))
        .collect();
    assert_eq!(
        created,
        [
            ("a".into(), false, State::Completed),
            ("d".into(), true, State::Queued),
            ("d".into(), false, State::Queued),
        ]
    );
    let single = s.submit(vec![job("b")]).await.expect("submit b again");
    assert!(!single[0].created);
    assert_eq!(single[0].job.state, State::Failed);

    // A retry brings the failed job back to the hot table.
    s.transition(
        Transition::new("b", State::Queued, EventKind::Queued, T0 + 3).expect(&[State::Failed]),
    )
    .await
    .expect("retry b");
    assert_eq!(partition(&sql, "jobs_live").await, ["b", "c", "d"]);
    assert_eq!(partition(&sql, "jobs_done").await, ["a"]);
    assert_eq!(s.get("b").await.unwrap().unwrap().state, State::Queued);

    // Retention removes the ended job and frees its id.
    let day = 86_400_000;
    let pruned = s
        .prune(baton_store::PruneRequest {
            now: T0 + 2 * day,
            retention: Some(day),
            queues: BTreeMap::new(),
            limit: 100,
            after: None,
        })
        .await
        .expect("prune");
    assert_eq!(pruned.jobs, 1);
    assert!(partition(&sql, "jobs_done").await.is_empty());
    let fresh = s.submit(vec![job("a")]).await.expect("submit a anew");
    assert!(fresh[0].created, "a pruned job's id can be used again");
    assert_eq!(fresh[0].job.state, State::Queued);
}

/// A server found gone is marked down only if it is still gone when marked: one that
/// wrote a heartbeat since is left alone, a gone one is marked once (`server.down`),
/// and its own next heartbeat learns that it was declared down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_is_declared_down_only_while_it_is_still_gone() {
    let schema = Schema::new();
    let s = schema.open().await;
    let sql = schema.connect().await;
    for id in ["slow", "dead"] {
        s.register_server(baton_store::ServerInfo {
            id: id.into(),
            host: "host-1".into(),
            pid: 1,
            url: None,
            started_at: T0,
            heartbeat_at: T0,
            stopped_at: None,
            queues: vec!["default".into()],
            workers: 1,
        })
        .await
        .expect("register");
    }
    // Both missed their heartbeats by the database's clock.
    sql.execute(
        "UPDATE servers SET alive_at = now() - interval '1 minute'",
        &[],
    )
    .await
    .expect("age the heartbeats");
    let after = Duration::from_secs(15);
    let gone = s.gone_servers(after).await.expect("gone servers");
    assert_eq!(gone, ["dead", "slow"]);
    // One of them comes back before the leader gets to it.
    s.heartbeat("slow", T0 + 1).await.expect("a late heartbeat");
    assert!(
        !s.declare_gone("slow", after, T0 + 2)
            .await
            .expect("declare slow")
    );
    assert!(
        s.declare_gone("dead", after, T0 + 2)
            .await
            .expect("declare dead")
    );
    assert!(
        !s.declare_gone("dead", after, T0 + 3)
            .await
            .expect("declare again"),
        "a server is marked down once"
    );
    assert!(matches!(
        s.heartbeat("dead", T0 + 4).await,
        Err(Error::Declared(id)) if id == "dead"
    ));
    s.heartbeat("slow", T0 + 4)
        .await
        .expect("the live one beats on");
    let downs: Vec<String> = s
        .events_after(0, 100)
        .await
        .expect("events")
        .into_iter()
        .filter(|e| e.kind == EventKind::ServerDown)
        .map(|e| e.data["server_id"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(downs, ["dead"]);
}

/// Six workers on two servers claim from three queues whose jobs all carry a label
/// limited to 3 at once: never more than 3 run together (the count each worker keeps
/// is at most the store's, as it rises after a claim commits and falls before an
/// outcome does), every job runs once, and every queue is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_servers_never_run_more_than_a_concurrency_limit_together() {
    use std::sync::atomic::{AtomicI64, Ordering};
    let schema = Schema::new();
    let (a, b) = (schema.open().await, schema.open().await);
    let limit = baton_core::ConcurrencyLimit::label("source", "x", 3);
    a.set_concurrency_limits(vec![limit.clone()]);
    b.set_concurrency_limits(vec![limit.clone()]);
    let mut jobs = Vec::new();
    for q in 0..3 {
        for n in 0..20 {
            jobs.push(
                JobSpec::new("work")
                    .id(format!("q{q}-{n}"))
                    .queue(format!("q{q}"))
                    .label("source", "x")
                    .validate(T0, &Limits::default())
                    .expect("valid job"),
            );
        }
    }
    a.submit(jobs).await.expect("submit");
    let running = Arc::new(AtomicI64::new(0));
    let most = Arc::new(AtomicI64::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for w in 0..6 {
        let s = if w % 2 == 0 { a.clone() } else { b.clone() };
        let (running, most) = (running.clone(), most.clone());
        let queue = format!("q{}", w % 3);
        workers.spawn(async move {
            let mut ran = Vec::new();
            let mut idle = 0;
            while idle < 200 {
                let claimed = s
                    .claim(ClaimRequest {
                        queue: queue.clone(),
                        limit: 2,
                        server_id: format!("server-{w}"),
                        now: wall(),
                        kinds: None,
                    })
                    .await
                    .expect("claim");
                if claimed.is_empty() {
                    idle += 1;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                }
                let now = running.fetch_add(claimed.len() as i64, Ordering::SeqCst)
                    + claimed.len() as i64;
                most.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(5)).await;
                for c in claimed {
                    running.fetch_sub(1, Ordering::SeqCst);
                    s.record(
                        Transition::new(&c.job.id, State::Completed, EventKind::Completed, wall())
                            .fence(c.fence),
                    )
                    .await
                    .expect("complete");
                    ran.push(c.job.id);
                }
            }
            (queue, ran)
        });
    }
    let mut ran: BTreeMap<String, usize> = BTreeMap::new();
    let mut all = BTreeSet::new();
    while let Some(done) = workers.join_next().await {
        let (queue, ids) = done.expect("worker");
        *ran.entry(queue).or_default() += ids.len();
        for id in ids {
            assert!(all.insert(id.clone()), "{id} ran twice");
        }
    }
    assert_eq!(all.len(), 60, "every job ran");
    assert_eq!(ran.len(), 3, "{ran:?}");
    let most = most.load(Ordering::SeqCst);
    assert!(most <= 3, "{most} covered jobs ran at once; the limit is 3");
    assert!(most >= 2, "the limit's slots were used together ({most})");
    assert_eq!(a.concurrency_held(&[limit]).await.expect("held"), [0]);
}

/// Now, in milliseconds since the epoch.
fn wall() -> Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("a clock after 1970")
        .as_millis() as Millis
}
