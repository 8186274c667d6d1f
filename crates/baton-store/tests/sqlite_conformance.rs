//! The store conformance suite on SQLite, and what only the SQLite store does: its
//! lock file, reopening a database, durability modes and schema versions.

use std::path::Path;
use std::sync::Arc;

use baton_core::{EventKind, JobSpec, Limits, Millis, NewJob, State};
use baton_store::conformance::T0;
use baton_store::{ClaimRequest, Durability, Error, SqliteOptions, SqliteStore, Store, Transition};
use serde_json::json;
use tempfile::TempDir;

/// A store on a new database in its own temporary folder, removed when the test ends.
async fn fresh() -> (Arc<dyn Store>, TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open(&dir.path().join("baton.db")).expect("open a new store");
    (Arc::new(store), dir)
}

baton_store::store_conformance_tests!(fresh());

#[tokio::test]
async fn a_second_open_is_refused_and_names_the_holder() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("baton.db");
    let first = open(&path).expect("open");
    let pid = format!("pid {}", std::process::id());

    match open(&path) {
        Err(Error::Owned { store: p, holder }) => {
            assert_eq!(p, path.display().to_string());
            assert!(holder.contains(&pid), "{holder}");
        }
        Err(other) => panic!("expected Owned, got {other}"),
        Ok(_) => panic!("a second engine opened a store in use"),
    }
    first
        .set_holder("http://127.0.0.1:7700")
        .expect("set holder");
    let message = match open(&path) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("a second engine opened a store in use"),
    };
    assert!(message.contains(&pid), "{message}");
    assert!(message.contains("http://127.0.0.1:7700"), "{message}");

    // The refusal did not disturb the holder.
    first.submit(vec![job("job-1", T0)]).await.expect("submit");
    first.close().await;
    drop(first);
    let again = open(&path).expect("the lock is free once the holder is gone");
    assert!(again.get("job-1").await.expect("get").is_some());
    again.close().await;
}

#[tokio::test]
async fn jobs_and_events_survive_a_reopen() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("baton.db");
    let store = open(&path).expect("open");
    store
        .submit(vec![
            job("job-1", T0),
            new_job(JobSpec::new("work").id("later").run_at(T0 + 60_000), T0),
        ])
        .await
        .expect("submit");
    let claimed = store
        .claim(claim_req(T0 + 1))
        .await
        .expect("claim")
        .remove(0);
    store
        .transition(
            Transition::new("job-1", State::Completed, EventKind::Completed, T0 + 2)
                .fence(claimed.fence)
                .changes(baton_store::Changes {
                    result: Some(json!({"ok": true})),
                    ..Default::default()
                }),
        )
        .await
        .expect("complete");
    let job_before = store.get("job-1").await.expect("get");
    let events_before = store.events_after(0, 100).await.expect("events");
    store.close().await;
    drop(store);

    let store = open(&path).expect("reopen");
    assert_eq!(store.get("job-1").await.expect("get"), job_before);
    assert_eq!(
        store.get("later").await.expect("get").map(|j| j.state),
        Some(State::Scheduled)
    );
    assert_eq!(store.next_due().await.expect("next_due"), Some(T0 + 60_000));
    assert_eq!(
        store.events_after(0, 100).await.expect("events"),
        events_before
    );

    // New events continue the numbering: a reader's last id stays meaningful.
    store
        .submit(vec![job("job-2", T0 + 3)])
        .await
        .expect("submit");
    let all = store.events_after(0, 100).await.expect("events");
    assert_eq!(all.len(), events_before.len() + 1);
    assert_eq!(
        all.last().map(|e| e.id),
        events_before.last().map(|e| e.id + 1)
    );
    store.close().await;

    let conn = rusqlite::Connection::open(&path).expect("open with rusqlite");
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .expect("user_version");
    assert_eq!(version, baton_store::sqlite::SCHEMA_VERSION);
}

/// When retention pruned the newest events, a reopened store still numbers new events
/// after them: a reader resuming with an old id never takes a new event for one it saw.
#[tokio::test]
async fn event_ids_are_never_given_twice_after_the_newest_were_pruned() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("baton.db");
    let store = open(&path).expect("open");
    store
        .set_queue_paused("emails", true, T0)
        .await
        .expect("pause");
    store
        .set_queue_paused("emails", false, T0 + 1)
        .await
        .expect("resume");
    let last = store.last_event_id().await.expect("last id");
    assert!(last >= 2);
    let day = 86_400_000;
    let pruned = store
        .prune(baton_store::PruneRequest {
            now: T0 + 2 * day,
            retention: Some(day),
            limit: 100,
            ..Default::default()
        })
        .await
        .expect("prune");
    assert_eq!(pruned.events, last, "every event was of no job and old");
    assert!(store.events_after(0, 100).await.expect("events").is_empty());
    assert_eq!(store.events_pruned_upto().await.expect("mark"), last);
    assert_eq!(store.last_event_id().await.expect("last id"), last);
    store.close().await;
    drop(store);

    let store = open(&path).expect("reopen");
    assert_eq!(store.last_event_id().await.expect("last id"), last);
    store
        .submit(vec![job("job-1", T0 + 2 * day)])
        .await
        .expect("submit");
    let all = store.events_after(0, 100).await.expect("events");
    assert_eq!(all.iter().map(|e| e.id).collect::<Vec<_>>(), [last + 1]);
    store.close().await;
}

#[tokio::test]
async fn the_upgrade_to_kept_throughput_counts_the_jobs_that_ended_within_a_day() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("baton.db");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as Millis;
    let store = open(&path).expect("open");
    // Two jobs end now, one two days ago (past the day kept).
    for (id, at, to) in [
        ("new-ok", now, State::Completed),
        ("new-bad", now, State::Failed),
        ("old", now - 2 * 86_400_000, State::Completed),
    ] {
        store.submit(vec![job(id, at - 2)]).await.expect("submit");
        let c = store
            .claim(claim_req(at - 1))
            .await
            .expect("claim")
            .remove(0);
        let kind = if to == State::Failed {
            EventKind::Failed
        } else {
            EventKind::Completed
        };
        store
            .record(Transition::new(id, to, kind, at).fence(c.fence))
            .await
            .expect("end");
    }
    store.close().await;
    drop(store);
    // As a Baton of schema 7 left it: no throughput table, no retention (schema 9),
    // no usage (schema 10).
    let conn = rusqlite::Connection::open(&path).expect("open with rusqlite");
    conn.execute_batch(
        "DROP TABLE throughput; DROP INDEX workflows_created; DROP INDEX events_unowned; \
         DROP INDEX schedule_fires_at; DROP TABLE prune_mark; ALTER TABLE jobs DROP COLUMN usage; \
         PRAGMA user_version = 7;",
    )
    .expect("downgrade");
    drop(conn);

    let store = open(&path).expect("upgrade");
    let minutes = store
        .throughput(baton_store::Span::Minute, 0)
        .await
        .expect("minutes");
    let sums = |rows: &[baton_store::ThroughputRow]| {
        rows.iter()
            .fold((0, 0), |(c, f), r| (c + r.completed, f + r.failed))
    };
    assert_eq!(sums(&minutes), (1, 1), "{minutes:?}");
    assert_eq!(minutes[0].at, now / 60_000 * 60_000);
    let seconds = store
        .throughput(baton_store::Span::Second, 0)
        .await
        .expect("seconds");
    assert_eq!(sums(&seconds), (1, 1), "{seconds:?}");
    store
        .verify()
        .await
        .expect("the filled counts are consistent");
    store.close().await;
}

#[tokio::test]
async fn a_database_from_a_newer_baton_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("baton.db");
    rusqlite::Connection::open(&path)
        .expect("create")
        .execute_batch("PRAGMA user_version = 999;")
        .expect("set version");
    match open(&path) {
        Err(Error::Config(message)) => {
            assert!(message.contains("999"), "{message}");
            assert!(message.contains("upgrade Baton"), "{message}");
        }
        Err(other) => panic!("expected a configuration error, got {other}"),
        Ok(_) => panic!("opened a database of a newer schema"),
    }
}

#[tokio::test]
async fn durability_normal_opens_and_works() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("baton.db");
    let store = SqliteStore::open(SqliteOptions::new(&path).durability(Durability::Normal))
        .unwrap_or_else(|e| panic!("open: {e}"));
    assert_eq!(store.synchronous(), Some("normal"));
    store.submit(vec![job("job-1", T0)]).await.expect("submit");
    let claimed = store
        .claim(claim_req(T0 + 1))
        .await
        .expect("claim")
        .remove(0);
    let done = store
        .transition(
            Transition::new("job-1", State::Completed, EventKind::Completed, T0 + 2)
                .fence(claimed.fence),
        )
        .await
        .expect("complete");
    assert_eq!(done.state, State::Completed);
    store.close().await;
    drop(store);

    let store = open(&path).expect("reopen with full durability");
    assert_eq!(store.synchronous(), Some("full"));
    assert_eq!(
        store.get("job-1").await.expect("get").map(|j| j.state),
        Some(State::Completed)
    );
    store.close().await;
}

#[tokio::test]
async fn a_closed_store_refuses_writes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open(&dir.path().join("baton.db")).expect("open");
    store.close().await;
    assert_eq!(
        store.submit(vec![job("job-1", T0)]).await,
        Err(Error::Closed)
    );
    store.close().await;
}

fn open(path: &Path) -> Result<SqliteStore, Error> {
    SqliteStore::open(SqliteOptions::new(path))
}

fn new_job(spec: JobSpec, now: Millis) -> NewJob {
    spec.validate(now, &Limits::default())
        .unwrap_or_else(|e| panic!("{e}"))
}

fn job(id: &str, now: Millis) -> NewJob {
    new_job(JobSpec::new("work").id(id), now)
}

fn claim_req(now: Millis) -> ClaimRequest {
    ClaimRequest {
        queue: "default".into(),
        limit: 1,
        server_id: "server-a".into(),
        now,
        kinds: None,
    }
}

/// A stored state, condition, edge status, event type or JSON value that Baton does not
/// know (a row damaged, or written by a newer Baton) fails the read with an error that
/// names it; it is never read as some default.
#[tokio::test]
async fn a_stored_value_that_is_not_known_fails_the_read_naming_it() {
    async fn check(corrupt: &str, expected: &str) {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("baton.db");
        let store = open(&path).expect("open");
        store
            .submit(vec![
                job("parent", T0),
                new_job(JobSpec::new("work").id("child").depends_on("parent"), T0),
            ])
            .await
            .expect("submit");
        rusqlite::Connection::open(&path)
            .expect("open with rusqlite")
            .execute_batch(corrupt)
            .expect("corrupt a row");
        let reads = [
            ("get", store.get("child").await.map(|_| ())),
            (
                "dependencies",
                store.dependencies("child").await.map(|_| ()),
            ),
            ("dependents", store.dependents("parent").await.map(|_| ())),
            ("events", store.events_after(0, 100).await.map(|_| ())),
            ("list", store.list(Default::default()).await.map(|_| ())),
        ];
        let failed: Vec<String> = reads
            .into_iter()
            .filter_map(|(what, r)| match r {
                Err(Error::Internal(message)) => Some(format!("{what}: {message}")),
                Err(other) => panic!("{what}: expected an internal error, got {other:?}"),
                Ok(()) => None,
            })
            .collect();
        assert!(!failed.is_empty(), "{corrupt}: every read succeeded");
        for message in &failed {
            assert!(message.contains(expected), "{corrupt}: {message}");
        }
        store.close().await;
    }
    check(
        "UPDATE jobs SET state = 'bogus' WHERE id = 'child'",
        "stored job state \"bogus\" is not known",
    )
    .await;
    check(
        "UPDATE deps SET cond = 7",
        "stored dependency condition code 7 is not known",
    )
    .await;
    check(
        "UPDATE deps SET status = 9",
        "stored dependency status code 9 is not known",
    )
    .await;
    check(
        "UPDATE events SET type = 'job.bogus' WHERE id = 1",
        "stored event type \"job.bogus\" is not known",
    )
    .await;
    check(
        "UPDATE jobs SET payload = '{not json' WHERE id = 'child'",
        "stored payload \"{not json\" cannot be read",
    )
    .await;
}

/// A dependent whose stored condition is not known stops the job it depends on from
/// ending, whole: the error names the code, and nothing of the transition is written.
#[tokio::test]
async fn an_unknown_condition_refuses_the_transition_that_would_settle_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("baton.db");
    let store = open(&path).expect("open");
    store
        .submit(vec![
            job("parent", T0),
            new_job(
                JobSpec::new("work")
                    .id("child")
                    .queue("other")
                    .depends_on("parent"),
                T0,
            ),
        ])
        .await
        .expect("submit");
    let claimed = store
        .claim(claim_req(T0 + 1))
        .await
        .expect("claim")
        .remove(0);
    rusqlite::Connection::open(&path)
        .expect("open with rusqlite")
        .execute_batch("UPDATE deps SET cond = 7")
        .expect("corrupt the edge");
    let before = store.events_after(0, 100).await.expect("events");
    let refused = store
        .transition(
            Transition::new("parent", State::Completed, EventKind::Completed, T0 + 2)
                .fence(claimed.fence),
        )
        .await;
    match refused {
        Err(Error::Internal(message)) => assert!(
            message.contains("stored dependency condition code 7 is not known"),
            "{message}"
        ),
        other => panic!("expected the unknown condition to refuse the write, got {other:?}"),
    }
    assert_eq!(
        store.get("parent").await.expect("get").map(|j| j.state),
        Some(State::Running)
    );
    assert_eq!(store.events_after(0, 100).await.expect("events"), before);
    store.close().await;
}

/// New jobs are indexed for search behind the writes: by the writer when it has
/// nothing else to do, without a search asking for it, and with nothing left out.
#[tokio::test]
async fn the_idle_writer_indexes_new_jobs_for_search() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("baton.db");
    let store = open(&path).expect("open");
    let jobs: Vec<NewJob> = (0..2_000).map(|i| job(&format!("idx-{i}"), T0)).collect();
    store.submit(jobs).await.expect("submit");
    let watch = rusqlite::Connection::open(&path).expect("open with rusqlite");
    let read = || -> (i64, i64) {
        watch
            .query_row(
                "SELECT (SELECT upto FROM job_text_mark), (SELECT MAX(seq) FROM jobs)",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while read().0 < read().1 {
        assert!(
            std::time::Instant::now() < deadline,
            "the idle writer indexed only up to {:?}",
            read()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let indexed: i64 = watch
        .query_row(
            "SELECT COUNT(*) FROM job_text WHERE job_text MATCH 'idx'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(indexed, 2_000);
    store.verify().await.expect("the index matches the jobs");
}
