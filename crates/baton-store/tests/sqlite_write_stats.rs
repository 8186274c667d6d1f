//! The SQLite store's write counters (statements run, the writer's busy time) and the
//! floor the throughput bench compares the engine with: SQLite's own rate for the
//! same rows.

use std::sync::atomic::Ordering::Relaxed;

use baton_core::{JobSpec, Limits, NewJob};
use baton_store::conformance::T0;
use baton_store::sqlite::floor;
use baton_store::{Durability, Error, SqliteOptions, SqliteStore, Store, WriteStats};

fn new_job(spec: JobSpec) -> NewJob {
    spec.validate(T0, &Limits::default())
        .unwrap_or_else(|e| panic!("{e}"))
}

fn statements(stats: &WriteStats) -> u64 {
    stats.statements.load(Relaxed)
}

/// Every statement of a write counts, the transaction's own included: a heartbeat is
/// `BEGIN`, `SAVEPOINT`, its `UPDATE`, `RELEASE` and `COMMIT`; a job with three labels
/// costs three statements more than one without.
#[tokio::test]
async fn the_writer_counts_every_statement_it_runs() {
    let dir = tempfile::tempdir().expect("temp dir");
    let options = SqliteOptions::new(dir.path().join("baton.db")).count_statements(true);
    let store = SqliteStore::open(options).expect("open");
    let stats = store.write_stats().expect("write stats");

    let before = statements(&stats);
    store.heartbeat("server-a", T0).await.expect("heartbeat");
    // BEGIN, the UPDATE and COMMIT: a write alone in its transaction needs no savepoint.
    assert_eq!(
        statements(&stats) - before,
        3,
        "a heartbeat alone in its transaction"
    );

    let before = statements(&stats);
    store
        .submit(vec![new_job(JobSpec::new("task"))])
        .await
        .expect("submit");
    let plain = statements(&stats) - before;

    let labelled = JobSpec::new("task")
        .label("a", "1")
        .label("b", "2")
        .label("c", "3");
    let before = statements(&stats);
    store.submit(vec![new_job(labelled)]).await.expect("submit");
    let labelled = statements(&stats) - before;
    assert_eq!(
        labelled,
        plain + 3,
        "one INSERT per label ({plain} statements without labels)"
    );
    store.close().await;
}

/// Without the option the store counts no statement (and pays nothing for it).
#[tokio::test]
async fn statements_are_counted_only_when_asked() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SqliteStore::open(SqliteOptions::new(dir.path().join("baton.db"))).expect("open");
    let stats = store.write_stats().expect("write stats");
    store.heartbeat("server-a", T0).await.expect("heartbeat");
    store.close().await;
    assert_eq!(statements(&stats), 0);
    assert_eq!(stats.batches.load(Relaxed), 1);
}

/// The writer's busy time covers its commits, and each is counted once the store is
/// closed.
#[tokio::test]
async fn the_writer_s_busy_time_includes_its_commits() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SqliteStore::open(
        SqliteOptions::new(dir.path().join("baton.db")).durability(Durability::Full),
    )
    .expect("open");
    let stats = store.write_stats().expect("write stats");
    for _ in 0..10 {
        let jobs = (0..5).map(|_| new_job(JobSpec::new("task"))).collect();
        store.submit(jobs).await.expect("submit");
    }
    store.close().await;
    let busy = stats.busy_ns.load(Relaxed);
    let commit = stats.commit_ns.load(Relaxed);
    assert!(stats.batches.load(Relaxed) >= 10, "one commit per submit");
    assert!(commit > 0, "ten commits took no time");
    assert!(
        busy > commit,
        "busy {busy} ns must include the commits' {commit} ns and the statements before them"
    );
}

/// The floor writes each job's row, claim, completion and three events, in the
/// transactions it says it committed, into a database with the store's schema.
#[test]
fn the_floor_writes_every_job_s_rows_in_staggered_transactions() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("floor.db");
    let options = SqliteOptions::new(&path).durability(Durability::Normal);
    let f = floor(&options, 25, 10).expect("floor");
    assert_eq!(f.jobs, 25);
    // Three groups of inserts, each claimed and completed in the next two.
    assert_eq!(f.commits, 5);
    assert_eq!(
        f.statements,
        25 * 6 + 2 * 5,
        "six per job, BEGIN and COMMIT"
    );
    assert!(f.per_s() > 0.0);

    let conn = rusqlite::Connection::open(&path).expect("open");
    let count = |sql: &str| -> i64 { conn.query_row(sql, [], |r| r.get(0)).expect(sql) };
    assert_eq!(
        count("SELECT COUNT(*) FROM jobs WHERE state = 'completed' AND attempt = 1"),
        25
    );
    assert_eq!(count("SELECT COUNT(*) FROM events"), 75);
    assert_eq!(
        count("SELECT COUNT(DISTINCT job_key) FROM events WHERE type = 'job.started'"),
        25
    );
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .expect("journal mode");
    assert_eq!(mode, "wal");
    drop(conn);
    // The store opens it: the same schema, at its current version.
    let store = SqliteStore::open(options).expect("the store opens the floor's file");
    drop(store);
}

#[test]
fn the_floor_refuses_a_database_that_exists() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("baton.db");
    std::fs::write(&path, b"").expect("write");
    match floor(&SqliteOptions::new(&path), 10, 5) {
        Err(Error::Config(m)) => assert!(m.contains("fresh") && m.contains("baton.db"), "{m}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn the_floor_refuses_no_jobs_or_empty_commits() {
    let dir = tempfile::tempdir().expect("temp dir");
    for (jobs, per_commit) in [(0, 5), (10, 0)] {
        let options = SqliteOptions::new(dir.path().join(format!("f-{jobs}-{per_commit}.db")));
        match floor(&options, jobs, per_commit) {
            Err(Error::Config(m)) => assert!(m.contains("at least one"), "{m}"),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }
}
