//! Reading jobs, events and the rest out of rows, strictly: a stored value Baton does
//! not know is an error naming it, never a default.

use std::collections::BTreeMap;
use std::time::Duration;

use baton_core::{Backoff, ErrorInfo, Event, EventKind, Job, Runs, State};
use serde_json::Value;
use tokio_postgres::{GenericClient, Row};

use crate::Db;
use baton_store::{Claimed, Error, Result};

/// Every column a job row is read with, in the order [`read_job`] expects.
pub const JOB_COLUMNS: &str = "id, kind, queue, priority, state, progress, message, step, \
    attempt, max_attempts, labels, workflow_id, schedule_id, created_at, run_at, started_at, \
    finished_at, result, error_code, error_message, payload, recoveries, max_recoveries, \
    updated_at, fence, event_seq, checkpoint, exec, backoff_initial_ms, backoff_max_ms, \
    timeout_ms, grace_ms, attempt_base, key, usage";

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
    pub key: i64,
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

pub fn state(s: &str) -> Result<State> {
    State::parse(s).ok_or_else(|| Error::Internal(format!("stored job state {s:?} is not known")))
}

pub fn event_kind(s: &str) -> Result<EventKind> {
    EventKind::parse(s)
        .ok_or_else(|| Error::Internal(format!("stored event type {s:?} is not known")))
}

fn ms(v: i64) -> Duration {
    Duration::from_millis(v.max(0) as u64)
}

pub fn read_job(r: &Row) -> Result<JobRow> {
    let labels: BTreeMap<String, String> = match r.get::<_, Option<Value>>(10) {
        None => BTreeMap::new(),
        Some(v) => serde_json::from_value(v.clone())
            .map_err(|e| Error::Internal(format!("stored labels {v} cannot be read: {e}")))?,
    };
    let error_code: Option<String> = r.get(18);
    let error_message: Option<String> = r.get(19);
    let exec: Option<Value> = r.get(27);
    let backoff = Backoff {
        initial: ms(r.get(28)),
        max: ms(r.get(29)),
    };
    let timeout = r.get::<_, Option<i64>>(30).map(ms);
    let grace = ms(r.get(31));
    let job =
        Job {
            id: r.get(0),
            kind: r.get(1),
            queue: r.get(2),
            priority: r.get(3),
            state: state(r.get(4))?,
            progress: r.get(5),
            message: r.get(6),
            step: r.get(7),
            attempt: r.get::<_, i32>(8) as u32,
            max_attempts: r.get::<_, i32>(9) as u32,
            labels,
            depends_on: Vec::new(),
            workflow_id: r.get(11),
            schedule_id: r.get(12),
            created_at: r.get(13),
            run_at: r.get(14),
            started_at: r.get(15),
            finished_at: r.get(16),
            result: r.get(17),
            error: error_code.map(|code| ErrorInfo::new(code, error_message.unwrap_or_default())),
            payload: r.get(20),
            recoveries: r.get::<_, i32>(21) as u32,
            max_recoveries: r.get::<_, i32>(22) as u32,
            updated_at: r.get(23),
            usage: match r.get::<_, Option<Value>>(34) {
                None => None,
                Some(v) => Some(serde_json::from_value(v.clone()).map_err(|e| {
                    Error::Internal(format!("stored usage {v} cannot be read: {e}"))
                })?),
            },
            waiting_for: None,
            runs: Runs::describe(exec.as_ref(), timeout, grace, backoff),
        };
    Ok(JobRow {
        job,
        fence: r.get::<_, i64>(24) as u64,
        event_seq: r.get::<_, i64>(25) as u64,
        checkpoint: r.get(26),
        exec,
        backoff,
        timeout,
        grace,
        attempt_base: r.get::<_, i32>(32) as u32,
        key: r.get(33),
    })
}

/// A job with the ids of the jobs it depends on, read with [`JOB_COLUMNS`] followed
/// by `deps::DEPENDS_ON`.
pub fn read_job_with_deps(r: &Row) -> Result<JobRow> {
    let mut row = read_job(r)?;
    row.job.depends_on = r.get(JOB_COLUMNS.split(", ").count());
    Ok(row)
}

pub async fn get_job(c: &impl GenericClient, id: &str) -> Result<Option<JobRow>> {
    let row = c
        .query_opt(
            &format!(
                "SELECT {JOB_COLUMNS}, {} FROM jobs WHERE id = $1",
                crate::deps::DEPENDS_ON
            ),
            &[&id],
        )
        .await
        .db()?;
    row.as_ref().map(read_job_with_deps).transpose()
}

pub const EVENT_COLUMNS: &str = "id, job_id, job_seq, type, at, data";

pub fn read_event(r: &Row) -> Result<Event> {
    Ok(Event {
        id: r.get::<_, i64>(0) as u64,
        job_id: r.get(1),
        seq: r.get::<_, i64>(2) as u64,
        kind: event_kind(r.get(3))?,
        at: r.get(4),
        data: r.get(5),
    })
}

pub fn read_events(rows: &[Row]) -> Result<Vec<Event>> {
    rows.iter().map(read_event).collect()
}
