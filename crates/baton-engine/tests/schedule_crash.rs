//! Crash test for the scheduler: a child process runs an engine whose schedules fire
//! every second, and is killed with SIGKILL just after a fire, while the other
//! schedules of that second are firing. An engine started again on the same file must
//! have lost no fire and made none twice: each schedule's history is every second from
//! its first slot to its last, once, each with its job.
//!
//! The child is this test binary itself, re-executed to run only `child_mode` with
//! `BATON_SCHED_CRASH_CHILD` set (as in `crash.rs`); it reports each fire it saw
//! committed on stdout as a `BATON fired ...` line.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::Spawned;

use baton_engine::{
    Engine, EventKind, FireAction, JobFilter, Misfire, ScheduleFilter, ScheduleSpec, Trigger,
};
use baton_store::{SqliteOptions, SqliteStore, Store};
use serde_json::Value;

const CHILD_ENV: &str = "BATON_SCHED_CRASH_CHILD";
const DB_ENV: &str = "BATON_SCHED_CRASH_DB";
const SCHEDULES: usize = 20;
/// Fires seen before the kill.
const KILL_AFTER: usize = 3 * SCHEDULES + 7;
const SECOND: i64 = 1000;

#[test]
fn child_mode() {
    if std::env::var(CHILD_ENV).is_err() {
        return;
    }
    let db = PathBuf::from(std::env::var(DB_ENV).expect("BATON_SCHED_CRASH_DB is set"));
    runtime().block_on(async move {
        let engine = start_engine(&db).await;
        let mut events = engine.subscribe().await.expect("subscribe");
        for i in 0..SCHEDULES {
            engine
                .create_schedule(
                    ScheduleSpec::new(Trigger::cron("* * * * * *"))
                        .id(format!("s{i:02}"))
                        .job(baton_engine::JobSpec::new("tick"))
                        .misfire(Misfire::RunAll)
                        .misfire_limit(1000),
                )
                .await
                .expect("create");
        }
        println!("BATON ready");
        while let Some(e) = events.next().await {
            if e.kind == EventKind::ScheduleFired {
                println!(
                    "BATON fired {} {} {}",
                    e.data["schedule_id"].as_str().unwrap_or("?"),
                    e.data["scheduled_for"].as_str().unwrap_or("?"),
                    e.data["job_id"].as_str().unwrap_or("-"),
                );
            }
        }
    });
}

#[test]
fn sigkill_between_fires_loses_no_fire_and_doubles_none() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("baton.db");

    let mut child = Spawned::start(&[(CHILD_ENV, OsStr::new("1")), (DB_ENV, db.as_os_str())]);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut reported: Vec<(String, String)> = Vec::new();
    loop {
        let line = child
            .next_line(deadline)
            .unwrap_or_else(|| panic!("the child stalled ({} fires seen)", reported.len()));
        let words: Vec<&str> = line.split_whitespace().collect();
        if let ["fired", schedule, at, _job] = words.as_slice() {
            reported.push((schedule.to_string(), at.to_string()));
            if reported.len() >= KILL_AFTER {
                break;
            }
        }
    }
    let status = child.kill();
    assert_eq!(status.signal(), Some(9), "the child was killed by SIGKILL");
    for line in child.rest() {
        if let ["fired", schedule, at, _] = line.split_whitespace().collect::<Vec<_>>().as_slice() {
            reported.push((schedule.to_string(), at.to_string()));
        }
    }

    let rt = runtime();
    // Right after the kill: every fire the child saw is durable, with its job.
    let before = rt.block_on(async {
        let store = SqliteStore::open(SqliteOptions::new(&db)).expect("open after the kill");
        let seen = check_consistent(&store).await;
        store.close().await;
        seen
    });
    for (schedule, at) in &reported {
        let at = baton_core::time::parse_rfc3339(at).unwrap();
        assert!(
            before.get(schedule).is_some_and(|s| s.contains(&at)),
            "fire {schedule} {at} was reported but is not in the store"
        );
    }
    let last_before: BTreeMap<String, i64> = before
        .iter()
        .map(|(s, slots)| (s.clone(), *slots.last().unwrap()))
        .collect();

    // Start again; let every schedule fire at least twice more, then stop.
    rt.block_on(async {
        let engine = start_engine(&db).await;
        let mut events = engine.subscribe().await.expect("subscribe");
        let mut after: BTreeMap<String, usize> = BTreeMap::new();
        let until = Instant::now() + Duration::from_secs(20);
        while after.len() < SCHEDULES || after.values().any(|n| *n < 2) {
            let e = tokio::time::timeout_at(until.into(), events.next())
                .await
                .expect("fires after the restart")
                .expect("events");
            if e.kind == EventKind::ScheduleFired {
                *after
                    .entry(e.data["schedule_id"].as_str().unwrap().to_owned())
                    .or_default() += 1;
            }
        }
        engine.shutdown(Duration::from_secs(5)).await;
    });
    let after = rt.block_on(async {
        let store = SqliteStore::open(SqliteOptions::new(&db)).expect("open at the end");
        let seen = check_consistent(&store).await;
        store.close().await;
        seen
    });
    assert_eq!(after.len(), SCHEDULES);
    for (schedule, slots) in &after {
        // Every second once: nothing lost across the kill and the downtime, nothing
        // fired twice.
        for pair in slots.windows(2) {
            assert_eq!(
                pair[1] - pair[0],
                SECOND,
                "{schedule}: {} then {}",
                baton_core::time::to_rfc3339(pair[0]),
                baton_core::time::to_rfc3339(pair[1])
            );
        }
        assert!(
            *slots.last().unwrap() > last_before[schedule],
            "{schedule} fired after the restart"
        );
    }
}

/// Checks that the history and the jobs agree (each created fire has its job, each job
/// of a schedule its fire, the counts match) and returns each schedule's fired slots.
async fn check_consistent(store: &SqliteStore) -> BTreeMap<String, Vec<i64>> {
    let mut out = BTreeMap::new();
    let page = store
        .schedules(ScheduleFilter {
            limit: 1000,
            ..ScheduleFilter::default()
        })
        .await
        .unwrap();
    for s in page.schedules {
        let history = store.schedule_history(&s.id, None, 1000).await.unwrap();
        let jobs = store
            .list(JobFilter {
                schedule: Some(s.id.clone()),
                limit: 1000,
                ..JobFilter::default()
            })
            .await
            .unwrap();
        let job_ids: BTreeSet<&str> = jobs.jobs.iter().map(|j| j.id.as_str()).collect();
        let mut slots: Vec<i64> = history.fires.iter().map(|f| f.scheduled_for).collect();
        slots.sort_unstable();
        let unique: BTreeSet<i64> = slots.iter().copied().collect();
        assert_eq!(unique.len(), slots.len(), "{}: a slot fired twice", s.id);
        for f in &history.fires {
            assert_eq!(f.action, FireAction::Created, "{}: {f:?}", s.id);
            let job = f.job_id.as_deref().unwrap();
            assert!(
                job_ids.contains(job),
                "{}: fire {} lost its job",
                s.id,
                f.seq
            );
        }
        assert_eq!(
            jobs.total as usize,
            history.fires.len(),
            "{}: a job without its fire",
            s.id
        );
        assert_eq!(s.run_count as usize, history.fires.len(), "{}", s.id);
        assert!(s.next_run.unwrap() > *slots.last().unwrap(), "{}", s.id);
        out.insert(s.id, slots);
    }
    out
}

async fn start_engine(db: &Path) -> Engine {
    let store = SqliteStore::open(SqliteOptions::new(db)).expect("open the store");
    Engine::builder()
        .store(Arc::new(store))
        .handler("tick", |_ctx, _p| async move { Ok(Value::Null) })
        .build()
        .await
        .expect("start the engine")
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}
