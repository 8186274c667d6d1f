//! SQLite's own limit for the rows of a no-op job's life: what the throughput bench
//! prints beside the engine's figures (`floor_per_s`).

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use baton_core::{JobId, JobSpec, Limits};
use rusqlite::{Connection, params};

use super::{SqliteOptions, check_synchronous, configure, schema};
use crate::{Error, Result, WriteStats};

/// What [`floor`] measured.
#[derive(Clone, Debug)]
pub struct Floor {
    pub jobs: usize,
    /// Transactions committed, each waiting for the disk as the store's do.
    pub commits: u64,
    /// SQL statements run, counted as the writer counts its own (every `BEGIN` and
    /// `COMMIT` included).
    pub statements: u64,
    /// From the first `BEGIN` to the last `COMMIT`.
    pub elapsed: Duration,
}

impl Floor {
    pub fn per_s(&self) -> f64 {
        self.jobs as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Writes the rows of `jobs` no-op jobs' whole lives with bare SQLite statements on
/// one connection and one thread, into a fresh database at `options.path` opened as
/// the store opens its writer (write-ahead log, `synchronous` per
/// `options.durability`, the same cache) and made with the store's own schema, so
/// that every index a row write maintains is the same.
///
/// Per job it does what the engine cannot avoid: insert the job's row, set it
/// running (the claim), set it completed, and insert its three events (submitted,
/// started, completed): six single-row statements, each prepared once. Nothing else:
/// no savepoints, no reads, no counts per queue, no search index.
///
/// The rows are committed in as many transactions as the engine committed for the
/// same jobs (`per_commit` jobs per transaction, the engine's jobs over its commits):
/// with durability every commit waits for the disk, and how many jobs share a
/// commit is the group commit's doing, set by the load. At equal commits both pay the
/// same waits for the disk, so the distance between the two is the engine's own work
/// per job. A job's three row changes go to three consecutive transactions (inserted
/// in one, claimed in the next, completed in the one after), as in the engine, where
/// they are separate writes: each transaction carries inserts, claims and completions
/// of different jobs, and a row's page reaches the log up to three times, not once.
/// That makes `jobs / per_commit + 2` transactions.
///
/// Refuses a file that exists: the floor's rows must not mix with a store's.
pub fn floor(options: &SqliteOptions, jobs: usize, per_commit: usize) -> Result<Floor> {
    if jobs == 0 || per_commit == 0 {
        return Err(Error::Config(format!(
            "the floor needs at least one job and one job per commit (got {jobs} jobs, {per_commit} per commit)"
        )));
    }
    let path = &options.path;
    if path.exists() {
        return Err(Error::Config(format!(
            "the floor needs a fresh database file; {} exists",
            path.display()
        )));
    }
    let mut conn = Connection::open(path)
        .map_err(|e| Error::Config(format!("cannot open {}: {e}", path.display())))?;
    configure(&conn, options, true)?;
    check_synchronous(&conn, options)?;
    schema::migrate(&mut conn)?;
    let counters = Arc::new(WriteStats::default());
    super::statements::count(&mut conn, counters.clone())?;
    let statements = || counters.statements.load(Relaxed);

    // The rows a no-op job of the default queue has, as the engine writes them.
    let now = || chrono::Utc::now().timestamp_millis();
    let job = JobSpec::new("noop")
        .validate(now(), &Limits::default())
        .map_err(|e| Error::Internal(format!("cannot make the floor's job: {e}")))?;
    let submitted = serde_json::json!({
        "state": job.state, "kind": job.kind, "queue": job.queue, "priority": job.priority,
    })
    .to_string();
    let server = "floor";
    let started =
        serde_json::json!({"state": "running", "from": "queued", "attempt": 1, "server_id": server})
            .to_string();
    let ids: Vec<String> = (0..jobs).map(|_| JobId::generate().to_string()).collect();
    let groups: Vec<&[String]> = ids.chunks(per_commit).collect();
    let mut keys: Vec<Vec<i64>> = Vec::with_capacity(groups.len());
    let mut event_id = 0i64;
    let mut commits = 0u64;
    let statements_before = statements();
    let t0 = Instant::now();
    for t in 0..groups.len() + 2 {
        conn.prepare_cached("BEGIN IMMEDIATE")?.execute([])?;
        let at = now();
        let mut event =
            |conn: &Connection, key: i64, id: &str, seq: i64, kind: &str, data: &str| {
                event_id += 1;
                conn.prepare_cached(
                    "INSERT INTO events (id, job_key, job_id, seq, type, at, data) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )?
                .execute(params![event_id, key, id, seq, kind, at, data])
            };
        if let Some(group) = groups.get(t) {
            let mut inserted = Vec::with_capacity(group.len());
            for id in *group {
                conn.prepare_cached(
                    "INSERT INTO jobs (id, kind, queue, priority, state, max_attempts, \
                     backoff_initial_ms, backoff_max_ms, timeout_ms, grace_ms, max_recoveries, \
                     event_seq, created_at, updated_at, attempt, fence) \
                     VALUES (?1, ?2, ?3, ?4, 'queued', ?5, ?6, ?7, ?8, ?9, ?10, 1, ?11, ?11, 0, 0)",
                )?
                .execute(params![
                    id,
                    job.kind,
                    job.queue,
                    job.priority,
                    job.max_attempts,
                    job.backoff.initial.as_millis() as i64,
                    job.backoff.max.as_millis() as i64,
                    job.timeout.map(|d| d.as_millis() as i64),
                    job.grace.as_millis() as i64,
                    job.max_recoveries,
                    at,
                ])?;
                let key = conn.last_insert_rowid();
                event(&conn, key, id, 1, "job.submitted", &submitted)?;
                inserted.push(key);
            }
            keys.push(inserted);
        }
        if let Some(claim) = t.checked_sub(1).and_then(|g| groups.get(g)) {
            for (id, key) in claim.iter().zip(&keys[t - 1]) {
                conn.prepare_cached(
                    "UPDATE jobs SET state = 'running', fence = 1, attempt = 1, started_at = ?2, \
                     updated_at = ?2, server_id = ?3, event_seq = 2 WHERE seq = ?1",
                )?
                .execute(params![key, at, server])?;
                event(&conn, *key, id, 2, "job.started", &started)?;
            }
        }
        if let Some(done) = t.checked_sub(2).and_then(|g| groups.get(g)) {
            for (id, key) in done.iter().zip(&keys[t - 2]) {
                conn.prepare_cached(
                    "UPDATE jobs SET state = 'completed', result = 'null', progress = 1.0, \
                     finished_at = ?2, updated_at = ?2, event_seq = 3 WHERE seq = ?1",
                )?
                .execute(params![key, at])?;
                event(&conn, *key, id, 3, "job.completed", COMPLETED)?;
            }
        }
        conn.prepare_cached("COMMIT")?.execute([])?;
        commits += 1;
    }
    let elapsed = t0.elapsed();
    let statements = statements() - statements_before;
    let done: i64 = conn.query_row(
        "SELECT COUNT(*) FROM jobs WHERE state = 'completed'",
        [],
        |r| r.get(0),
    )?;
    if done as usize != jobs {
        return Err(Error::Internal(format!(
            "the floor completed {done} of its {jobs} jobs"
        )));
    }
    Ok(Floor {
        jobs,
        commits,
        statements,
        elapsed,
    })
}

/// A no-op job's completion event, as the engine records it.
const COMPLETED: &str = r#"{"ran_ms":0,"state":"completed","from":"running"}"#;
