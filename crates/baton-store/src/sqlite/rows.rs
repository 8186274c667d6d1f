//! Reading jobs, events and the rest out of rows.

use std::collections::BTreeMap;
use std::time::Duration;

use baton_core::{Backoff, ErrorInfo, Event, Job, Runs};
use rusqlite::{Connection, OptionalExtension, Row, params};
use serde_json::Value;

use super::codes::{event_kind, json, json_as, parse_state};
use crate::{
    Checkpoint, Claimed, Counts, Error, JobProcess, LogLine, Pipeline, ProcessRecord, Result,
    ServerInfo,
};

/// Every column a job row is read with, in the order [`read_job`] expects.
pub const JOB_COLUMNS: &str = "id, kind, queue, priority, state, progress, message, step, \
    attempt, max_attempts, labels, workflow_id, schedule_id, created_at, run_at, started_at, \
    finished_at, result, error_code, error_message, payload, recoveries, max_recoveries, \
    updated_at, fence, event_seq, checkpoint, exec, backoff_initial_ms, backoff_max_ms, \
    timeout_ms, grace_ms, attempt_base, seq, usage";

/// A job row with the columns that clients do not see.
pub struct JobRow {
    pub job: Job,
    pub fence: u64,
    pub event_seq: u64,
    pub checkpoint: Option<Value>,
    pub exec: Option<Value>,
    pub backoff: Backoff,
    pub timeout: Option<Duration>,
    pub grace: Duration,
    pub attempt_base: u32,
    pub seq: i64,
}

impl JobRow {
    pub fn into_claimed(self) -> Claimed {
        let used = self.job.attempt.saturating_sub(self.attempt_base);
        Claimed {
            retries_left: self.job.max_attempts.saturating_sub(used),
            fence: self.fence,
            checkpoint: self.checkpoint,
            exec: self.exec,
            backoff: self.backoff,
            timeout: self.timeout,
            grace: self.grace,
            job: self.job,
        }
    }
}

pub fn read_job(r: &Row<'_>) -> rusqlite::Result<JobRow> {
    let labels: BTreeMap<String, String> = json_as("labels", r.get(10)?)?.unwrap_or_default();
    let error_code: Option<String> = r.get(18)?;
    let error_message: Option<String> = r.get(19)?;
    let state: String = r.get(4)?;
    let mut job = Job {
        id: r.get(0)?,
        kind: r.get(1)?,
        queue: r.get(2)?,
        priority: r.get(3)?,
        state: parse_state(&state)?,
        progress: r.get(5)?,
        message: r.get(6)?,
        step: r.get(7)?,
        attempt: r.get(8)?,
        max_attempts: r.get(9)?,
        labels,
        depends_on: Vec::new(),
        workflow_id: r.get(11)?,
        schedule_id: r.get(12)?,
        created_at: r.get(13)?,
        run_at: r.get(14)?,
        started_at: r.get(15)?,
        finished_at: r.get(16)?,
        result: json("result", r.get(17)?)?,
        error: error_code.map(|code| ErrorInfo::new(code, error_message.unwrap_or_default())),
        payload: json("payload", r.get(20)?)?,
        recoveries: r.get(21)?,
        max_recoveries: r.get(22)?,
        updated_at: r.get(23)?,
        usage: json_as("usage", r.get(34)?)?,
        waiting_for: None,
        runs: Runs::default(),
    };
    let timeout_ms: Option<i64> = r.get(30)?;
    let exec = json("exec", r.get(27)?)?;
    let backoff = Backoff {
        initial: Duration::from_millis(r.get::<_, i64>(28)? as u64),
        max: Duration::from_millis(r.get::<_, i64>(29)? as u64),
    };
    let timeout = timeout_ms.map(|ms| Duration::from_millis(ms as u64));
    let grace = Duration::from_millis(r.get::<_, i64>(31)? as u64);
    job.runs = Runs::describe(exec.as_ref(), timeout, grace, backoff);
    Ok(JobRow {
        job,
        fence: r.get::<_, i64>(24)? as u64,
        event_seq: r.get::<_, i64>(25)? as u64,
        checkpoint: json("checkpoint", r.get(26)?)?,
        exec,
        backoff,
        timeout,
        grace,
        attempt_base: r.get(32)?,
        seq: r.get(33)?,
    })
}

pub fn get_job(conn: &Connection, id: &str) -> Result<Option<JobRow>> {
    let mut stmt = conn.prepare_cached(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?1"))?;
    let mut row = stmt.query_row([id], read_job).optional()?;
    if let Some(row) = &mut row {
        row.job.depends_on = super::graph::depends_on(conn, row.seq)?;
    }
    Ok(row)
}

pub const EVENT_COLUMNS: &str = "id, job_id, seq, type, at, data";

pub fn read_event(r: &Row<'_>) -> rusqlite::Result<Event> {
    let kind: String = r.get(3)?;
    let data: String = r.get(5)?;
    Ok(Event {
        id: r.get::<_, i64>(0)? as u64,
        job_id: r.get(1)?,
        seq: r.get::<_, i64>(2)? as u64,
        kind: event_kind(&kind)?,
        at: r.get(4)?,
        data: json("event data", Some(data))?.unwrap_or(Value::Null),
    })
}

pub fn job_events(conn: &Connection, job_id: &str, after: u64, limit: usize) -> Result<Vec<Event>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {EVENT_COLUMNS} FROM events \
         WHERE job_key = (SELECT seq FROM jobs WHERE id = ?1) AND seq > ?2 ORDER BY seq LIMIT ?3"
    ))?;
    let rows = stmt.query_map(params![job_id, after as i64, limit as i64], read_event)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

pub fn job_events_of(
    conn: &Connection,
    job_id: &str,
    kinds: &[baton_core::EventKind],
    after: u64,
    limit: usize,
) -> Result<Vec<Event>> {
    // The kinds are Baton's own names, written into the SQL: one statement per set.
    let names: Vec<String> = kinds.iter().map(|k| format!("'{}'", k.as_str())).collect();
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {EVENT_COLUMNS} FROM events \
         WHERE job_key = (SELECT seq FROM jobs WHERE id = ?1) AND seq > ?2 \
         AND type IN ({}) ORDER BY seq LIMIT ?3",
        names.join(", ")
    ))?;
    let rows = stmt.query_map(params![job_id, after as i64, limit as i64], read_event)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

pub fn events_after(conn: &Connection, after: u64, limit: usize) -> Result<Vec<Event>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {EVENT_COLUMNS} FROM events WHERE id > ?1 ORDER BY id LIMIT ?2"
    ))?;
    let rows = stmt.query_map(params![after as i64, limit as i64], read_event)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

pub fn last_event_id(conn: &Connection) -> Result<u64> {
    let id: i64 = conn
        .prepare_cached(
            "SELECT MAX(COALESCE((SELECT MAX(id) FROM events), 0), \
             (SELECT events_upto FROM prune_mark))",
        )?
        .query_row([], |r| r.get(0))?;
    Ok(id as u64)
}

pub fn events_pruned_upto(conn: &Connection) -> Result<u64> {
    let id: i64 = conn
        .prepare_cached("SELECT events_upto FROM prune_mark")?
        .query_row([], |r| r.get(0))?;
    Ok(id as u64)
}

pub fn checkpoints(conn: &Connection, job_id: &str) -> Result<Vec<Checkpoint>> {
    let mut stmt = conn.prepare_cached(
        "SELECT seq, attempt, step, data, at FROM checkpoints WHERE job_id = ?1 ORDER BY seq",
    )?;
    let rows = stmt.query_map([job_id], |r| {
        let data: String = r.get(3)?;
        Ok(Checkpoint {
            seq: r.get::<_, i64>(0)? as u64,
            attempt: r.get(1)?,
            step: r.get(2)?,
            data: json("checkpoint", Some(data))?.unwrap_or(Value::Null),
            at: r.get(4)?,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

pub fn servers(conn: &Connection) -> Result<Vec<ServerInfo>> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, host, pid, url, started_at, heartbeat_at, stopped_at, queues, workers \
         FROM servers ORDER BY started_at DESC",
    )?;
    let rows = stmt.query_map([], |r| {
        let queues: String = r.get(7)?;
        Ok(ServerInfo {
            id: r.get(0)?,
            host: r.get(1)?,
            pid: r.get(2)?,
            url: r.get(3)?,
            started_at: r.get(4)?,
            heartbeat_at: r.get(5)?,
            stopped_at: r.get(6)?,
            queues: serde_json::from_str(&queues).unwrap_or_default(),
            workers: r.get(8)?,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

pub fn counts(conn: &Connection) -> Result<Counts> {
    // One snapshot for the counts and the last event they include.
    let tx = conn.unchecked_transaction()?;
    // Kept by the writer with each change of state (schema version 5).
    let rows = {
        let mut stmt = tx.prepare_cached(
            "SELECT queue, state, n FROM job_counts WHERE n > 0 ORDER BY queue, state",
        )?;
        let rows = stmt.query_map([], |r| {
            let state: String = r.get(1)?;
            Ok((r.get(0)?, parse_state(&state)?, r.get::<_, i64>(2)? as u64))
        })?;
        rows.collect::<rusqlite::Result<_>>()?
    };
    let last_event: i64 =
        tx.query_row("SELECT COALESCE(MAX(id), 0) FROM events", [], |r| r.get(0))?;
    Ok(Counts {
        rows,
        last_event: last_event as u64,
    })
}

/// Compares `job_counts`, `job_labels` and the text index `job_text` with the jobs'
/// rows (full scans).
pub fn verify_counts(conn: &Connection) -> Result<()> {
    let read = |sql: &str| -> Result<Vec<(String, String, i64)>> {
        let mut stmt = conn.prepare(sql)?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    };
    let kept = read("SELECT queue, state, n FROM job_counts WHERE n != 0 ORDER BY queue, state")?;
    let real = read(
        "SELECT queue, state, COUNT(*) FROM jobs GROUP BY queue, state ORDER BY queue, state",
    )?;
    if kept != real {
        return Err(Error::Internal(format!(
            "job_counts {kept:?} differ from the jobs' rows {real:?}"
        )));
    }
    let stray: i64 = conn.query_row(
        "SELECT (SELECT COUNT(*) FROM (SELECT key, value, job FROM job_labels EXCEPT \
           SELECT l.key, l.value, jobs.seq FROM jobs, json_each(jobs.labels) AS l)) + \
         (SELECT COUNT(*) FROM (SELECT l.key, l.value, jobs.seq FROM jobs, json_each(jobs.labels) AS l \
           EXCEPT SELECT key, value, job FROM job_labels))",
        [],
        |r| r.get(0),
    )?;
    if stray != 0 {
        return Err(Error::Internal(format!(
            "job_labels and the jobs' labels differ in {stray} entries"
        )));
    }
    verify_text(conn)
}

/// Compares the text index with one built afresh from the text of the jobs it has
/// reached (`job_text_mark`): every term at every place in every job, both ways
/// (FTS5's own check against external content cannot read a view). A temporary
/// table: the reader lifts `query_only` for it.
pub(super) fn verify_text(conn: &Connection) -> Result<()> {
    conn.execute_batch("PRAGMA query_only = 0")?;
    // FTS5's own check first (it asks for the write lock); then the comparison in one
    // snapshot, so that the writer indexing more jobs meanwhile (moving the mark)
    // cannot make the index and the text it is compared with disagree.
    let compared = conn
        .execute_batch("INSERT INTO job_text (job_text) VALUES ('integrity-check')")
        .and_then(|()| {
            conn.execute_batch(
                "BEGIN;
             CREATE VIRTUAL TABLE temp.job_text_fresh USING fts5 (body, tokenize = 'unicode61');
             INSERT INTO temp.job_text_fresh (rowid, body) SELECT seq, body FROM job_text_source
                 WHERE seq <= (SELECT upto FROM job_text_mark);
             CREATE VIRTUAL TABLE temp.job_text_kept_terms USING fts5vocab (main, job_text, instance);
             CREATE VIRTUAL TABLE temp.job_text_fresh_terms USING fts5vocab (temp, job_text_fresh, instance);",
            )
        })
        .and_then(|()| {
            conn.query_row(
                "SELECT (SELECT COUNT(*) FROM (SELECT term, doc, offset FROM job_text_kept_terms                    EXCEPT SELECT term, doc, offset FROM job_text_fresh_terms)) +                  (SELECT COUNT(*) FROM (SELECT term, doc, offset FROM job_text_fresh_terms                    EXCEPT SELECT term, doc, offset FROM job_text_kept_terms))",
                [],
                |r| r.get::<_, i64>(0),
            )
        });
    if !conn.is_autocommit() {
        let _ = conn.execute_batch("COMMIT");
    }
    let dropped = conn.execute_batch(
        "DROP TABLE IF EXISTS temp.job_text_kept_terms;
         DROP TABLE IF EXISTS temp.job_text_fresh_terms;
         DROP TABLE IF EXISTS temp.job_text_fresh;
         PRAGMA query_only = 1;",
    );
    let stray = compared.map_err(|e| Error::Internal(format!("checking job_text: {e}")))?;
    dropped?;
    if stray != 0 {
        return Err(Error::Internal(format!(
            "job_text and the jobs' text differ in {stray} terms"
        )));
    }
    Ok(())
}

pub fn processes(conn: &Connection) -> Result<Vec<ProcessRecord>> {
    let mut stmt = conn.prepare_cached(
        "SELECT jobs.id, pgid, proc_start, server_id, servers.host \
         FROM jobs LEFT JOIN servers ON servers.id = jobs.server_id \
         WHERE state IN ('running', 'paused', 'stopping') AND pgid IS NOT NULL ORDER BY seq",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok(ProcessRecord {
            job_id: r.get(0)?,
            process: JobProcess {
                pgid: r.get(1)?,
                start_time: r.get::<_, Option<i64>>(2)?.unwrap_or(0) as u64,
            },
            server_id: r.get(3)?,
            host: r.get(4)?,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

pub fn logs(conn: &Connection, job_id: &str, after: u64, limit: usize) -> Result<Vec<LogLine>> {
    let mut stmt = conn.prepare_cached(
        "SELECT seq, attempt, stream, line, at FROM logs \
         WHERE job_key = (SELECT seq FROM jobs WHERE id = ?1) AND seq > ?2 ORDER BY seq LIMIT ?3",
    )?;
    let rows = stmt.query_map(
        params![job_id, after as i64, limit.min(i64::MAX as usize) as i64],
        |r| {
            Ok(LogLine {
                seq: r.get::<_, i64>(0)? as u64,
                attempt: r.get(1)?,
                stream: r.get(2)?,
                line: r.get(3)?,
                at: r.get(4)?,
            })
        },
    )?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

fn read_pipeline(r: &Row<'_>) -> rusqlite::Result<Pipeline> {
    let text: String = r.get(0)?;
    let spec = serde_json::from_str(&text).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
    })?;
    Ok(Pipeline {
        spec,
        created_at: r.get(1)?,
        updated_at: r.get(2)?,
    })
}

pub fn pipeline(conn: &Connection, id: &str) -> Result<Option<Pipeline>> {
    let mut stmt =
        conn.prepare_cached("SELECT spec, created_at, updated_at FROM pipelines WHERE id = ?1")?;
    Ok(stmt.query_row([id], read_pipeline).optional()?)
}

pub fn pipelines(conn: &Connection) -> Result<Vec<Pipeline>> {
    let mut stmt =
        conn.prepare_cached("SELECT spec, created_at, updated_at FROM pipelines ORDER BY id")?;
    let rows = stmt.query_map([], read_pipeline)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}
