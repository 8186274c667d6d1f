//! The writer thread: the only connection that writes. It takes every write queued
//! while it was busy and commits them together (group commit), so one fsync serves
//! many writers; events are published after the commit made them durable.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, TryRecvError};

use baton_core::{ErrorInfo, Event, EventKind, Millis, NewJob, State, state};
use rusqlite::{Connection, OptionalExtension, params};
use serde_json::{Value, json};
use tokio::sync::{broadcast, oneshot};

use super::rows::{self, JOB_COLUMNS, JobRow, get_job, read_job};
use crate::{
    ClaimRequest, Claimed, Error, Promoted, RecoverRequest, Recovered, Result, ServerInfo,
    StartNow, Submitted, Transition, Update,
};

/// The most writes committed in one transaction.
const MAX_BATCH: usize = 4096;
/// The most scheduled jobs queued by one promotion.
const PROMOTE_BATCH: i64 = 10_000;

pub enum Op {
    Submit(Vec<NewJob>, Option<StartNow>),
    Claim(ClaimRequest),
    Transition(Transition),
    Update {
        job_id: String,
        fence: u64,
        now: Millis,
        update: Update,
    },
    Promote(Millis),
    Recover(RecoverRequest),
    Release(String, Millis),
    RegisterServer(ServerInfo),
    Heartbeat(String, Millis),
    ServerStopped(String, Millis),
}

pub enum Output {
    Submitted(Vec<Submitted>),
    Claimed(Vec<Claimed>),
    Job(Box<baton_core::Job>),
    Unit,
    Promoted(Promoted),
    Recovered(Vec<Recovered>),
}

pub struct Request {
    pub op: Op,
    pub reply: oneshot::Sender<Result<Output>>,
}

// Requests are the hot path; boxing them would cost an allocation per write.
#[allow(clippy::large_enum_variant)]
pub enum Msg {
    Request(Request),
    /// Finish what is queued, then stop; the sender is told when done.
    Close(std::sync::mpsc::Sender<()>),
}

pub struct Writer {
    conn: Connection,
    next_event_id: u64,
    events: Vec<Event>,
    bus: broadcast::Sender<Arc<Event>>,
}

impl Writer {
    pub fn new(conn: Connection, bus: broadcast::Sender<Arc<Event>>) -> Result<Self> {
        let last: i64 =
            conn.query_row("SELECT COALESCE(MAX(id), 0) FROM events", [], |r| r.get(0))?;
        Ok(Self {
            conn,
            next_event_id: last as u64 + 1,
            events: Vec::new(),
            bus,
        })
    }

    pub fn run(mut self, rx: Receiver<Msg>) {
        let mut batch: Vec<Request> = Vec::new();
        let mut close: Option<std::sync::mpsc::Sender<()>> = None;
        loop {
            match rx.recv() {
                Ok(Msg::Request(r)) => batch.push(r),
                Ok(Msg::Close(ack)) => close = Some(ack),
                Err(_) => break,
            }
            while close.is_none() && batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(Msg::Request(r)) => batch.push(r),
                    Ok(Msg::Close(ack)) => close = Some(ack),
                    Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
                }
            }
            if !batch.is_empty() {
                self.commit_batch(&mut batch);
            }
            if let Some(ack) = close.take() {
                // Drain whatever raced with the close request.
                while let Ok(Msg::Request(r)) = rx.try_recv() {
                    let _ = r.reply.send(Err(Error::Closed));
                }
                let _ = self.conn.execute_batch("PRAGMA wal_checkpoint(PASSIVE)");
                let _ = ack.send(());
                return;
            }
        }
    }

    fn commit_batch(&mut self, batch: &mut Vec<Request>) {
        let first_event_id = self.next_event_id;
        match self.apply_all(batch) {
            Ok(outputs) => {
                // Subscribers hear of a write no later than its caller does.
                self.publish();
                for (req, out) in batch.drain(..).zip(outputs) {
                    let _ = req.reply.send(out);
                }
            }
            Err(e) => {
                // Something failed below the level of one write (disk full, IO): retry
                // each write alone, so that one bad write does not fail the others.
                tracing::warn!(error = %e, writes = batch.len(), "group commit failed; retrying writes one by one");
                self.events.clear();
                self.next_event_id = first_event_id;
                for req in batch.drain(..) {
                    let mut one = vec![req];
                    let mark = self.next_event_id;
                    match self.apply_all(&one) {
                        Ok(mut out) => {
                            self.publish();
                            let _ = one
                                .pop()
                                .map(|r| r.reply.send(out.pop().unwrap_or(Err(Error::Closed))));
                        }
                        Err(e) => {
                            self.events.clear();
                            self.next_event_id = mark;
                            let _ = one.pop().map(|r| r.reply.send(Err(e)));
                        }
                    }
                }
            }
        }
    }

    /// Applies writes in one transaction. A write refused for its own reasons (a bad
    /// transition, a stale fence) is checked before it writes anything, so it leaves no
    /// trace and the others commit; an error from SQLite aborts the whole transaction.
    fn apply_all(&mut self, batch: &[Request]) -> Result<Vec<Result<Output>>> {
        self.conn.prepare_cached("BEGIN IMMEDIATE")?.execute([])?;
        let mut outputs = Vec::with_capacity(batch.len());
        for req in batch {
            match self.apply(&req.op) {
                Err(Error::Internal(msg)) => {
                    let _ = self.conn.execute_batch("ROLLBACK");
                    return Err(Error::Internal(msg));
                }
                other => outputs.push(other),
            }
        }
        if let Err(e) = self.conn.prepare_cached("COMMIT")?.execute([]) {
            let _ = self.conn.execute_batch("ROLLBACK");
            return Err(e.into());
        }
        Ok(outputs)
    }

    fn publish(&mut self) {
        for e in self.events.drain(..) {
            let _ = self.bus.send(Arc::new(e));
        }
    }

    fn apply(&mut self, op: &Op) -> Result<Output> {
        match op {
            Op::Submit(jobs, start) => self.submit(jobs, start.as_ref()).map(Output::Submitted),
            Op::Claim(req) => self.claim(req).map(Output::Claimed),
            Op::Transition(t) => self
                .transition(t, Resume::No)
                .map(|row| Output::Job(Box::new(row.job))),
            Op::Update {
                job_id,
                fence,
                now,
                update,
            } => self
                .update(job_id, *fence, *now, update)
                .map(|()| Output::Unit),
            Op::Promote(now) => self.promote(*now).map(Output::Promoted),
            Op::Recover(req) => self.recover(req).map(Output::Recovered),
            Op::Release(server, now) => self.release(server, *now).map(Output::Recovered),
            Op::RegisterServer(s) => self.register_server(s).map(|()| Output::Unit),
            Op::Heartbeat(id, now) => {
                self.conn
                    .prepare_cached("UPDATE servers SET heartbeat_at = ?2 WHERE id = ?1")?
                    .execute(params![id, now])?;
                Ok(Output::Unit)
            }
            Op::ServerStopped(id, now) => {
                self.conn
                    .prepare_cached(
                        "UPDATE servers SET stopped_at = ?2, heartbeat_at = ?2 WHERE id = ?1",
                    )?
                    .execute(params![id, now])?;
                self.event(
                    None,
                    0,
                    EventKind::ServerDown,
                    *now,
                    json!({"server_id": id}),
                )?;
                Ok(Output::Unit)
            }
        }
    }

    fn event(
        &mut self,
        job_id: Option<&str>,
        seq: u64,
        kind: EventKind,
        at: Millis,
        data: Value,
    ) -> Result<()> {
        let id = self.next_event_id;
        let text = data.to_string();
        self.conn
            .prepare_cached(
                "INSERT INTO events (id, job_id, seq, type, at, data) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(params![id as i64, job_id, seq as i64, kind.as_str(), at, text])?;
        self.next_event_id += 1;
        self.events.push(Event {
            id,
            job_id: job_id.map(str::to_owned),
            seq,
            kind,
            at,
            data,
        });
        Ok(())
    }

    fn submit(&mut self, jobs: &[NewJob], start: Option<&StartNow>) -> Result<Vec<Submitted>> {
        // Check every job before storing any: a refused batch must leave no trace.
        for new in jobs {
            state::check(None, new.state).map_err(|source| Error::Transition {
                id: new.id.to_string(),
                source,
            })?;
        }
        let mut started = 0usize;
        let mut out = Vec::with_capacity(jobs.len());
        for new in jobs {
            let labels = if new.labels.is_empty() {
                None
            } else {
                Some(serde_json::to_string(&new.labels).unwrap_or_default())
            };
            // Started at once when the caller has a free worker for it.
            let start_now = start.filter(|s| new.state == State::Queued && started < s.max);
            let inserted = self
                .conn
                .prepare_cached(
                    "INSERT INTO jobs (id, kind, queue, priority, state, payload, exec, labels, \
                     max_attempts, backoff_initial_ms, backoff_max_ms, timeout_ms, grace_ms, \
                     max_recoveries, event_seq, created_at, run_at, updated_at, \
                     attempt, fence, started_at, server_id) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?17, ?15, ?16, ?15, \
                     ?18, ?18, ?19, ?20) ON CONFLICT (id) DO NOTHING",
                )?
                .execute(params![
                    new.id.as_str(),
                    new.kind,
                    new.queue,
                    new.priority,
                    if start_now.is_some() { "running" } else { new.state.as_str() },
                    new.payload.as_ref().map(|p| p.to_string()),
                    new.exec.as_ref().map(|p| p.to_string()),
                    labels,
                    new.max_attempts,
                    new.backoff.initial.as_millis() as i64,
                    new.backoff.max.as_millis() as i64,
                    new.timeout.map(|t| t.as_millis() as i64),
                    new.grace.as_millis() as i64,
                    new.max_recoveries,
                    new.created_at,
                    new.run_at,
                    if start_now.is_some() { 2 } else { 1 },
                    u32::from(start_now.is_some()),
                    start_now.map(|_| new.created_at),
                    start_now.map(|s| s.server_id.as_str()),
                ])?;
            if inserted == 0 {
                let existing = get_job(&self.conn, new.id.as_str())?
                    .ok_or_else(|| Error::NotFound(new.id.to_string()))?;
                out.push(Submitted {
                    job: existing.job,
                    created: false,
                    claimed: None,
                });
                continue;
            }
            let mut data = json!({
                "state": new.state,
                "kind": new.kind,
                "queue": new.queue,
                "priority": new.priority,
            });
            if let Some(at) = new.run_at {
                data["run_at"] = json!(baton_core::time::to_rfc3339(at));
            }
            self.event(
                Some(new.id.as_str()),
                1,
                EventKind::Submitted,
                new.created_at,
                data,
            )?;
            let mut job = baton_core::Job {
                id: new.id.to_string(),
                kind: new.kind.clone(),
                queue: new.queue.clone(),
                priority: new.priority,
                state: new.state,
                progress: None,
                message: None,
                step: None,
                attempt: 0,
                max_attempts: new.max_attempts,
                labels: new.labels.clone(),
                depends_on: Vec::new(),
                workflow_id: None,
                schedule_id: None,
                created_at: new.created_at,
                run_at: new.run_at,
                started_at: None,
                finished_at: None,
                result: None,
                error: None,
                payload: new.payload.clone(),
                recoveries: 0,
                max_recoveries: new.max_recoveries,
                updated_at: new.created_at,
            };
            let claimed = match start_now {
                None => None,
                Some(s) => {
                    state::check(Some(State::Queued), State::Running).map_err(|source| {
                        Error::Transition {
                            id: new.id.to_string(),
                            source,
                        }
                    })?;
                    started += 1;
                    job.state = State::Running;
                    job.attempt = 1;
                    job.started_at = Some(new.created_at);
                    self.event(
                        Some(new.id.as_str()),
                        2,
                        EventKind::Started,
                        new.created_at,
                        json!({"state": "running", "from": "queued", "attempt": 1, "server_id": s.server_id}),
                    )?;
                    Some(Claimed {
                        job: job.clone(),
                        fence: 1,
                        checkpoint: None,
                        exec: new.exec.clone(),
                        backoff: new.backoff,
                        timeout: new.timeout,
                        grace: new.grace,
                        retries_left: new.max_attempts.saturating_sub(1),
                    })
                }
            };
            out.push(Submitted {
                job,
                created: true,
                claimed,
            });
        }
        Ok(out)
    }

    fn claim(&mut self, req: &ClaimRequest) -> Result<Vec<Claimed>> {
        state::check(Some(State::Queued), State::Running).map_err(|source| Error::Transition {
            id: String::new(),
            source,
        })?;
        let claimed: Vec<JobRow> = {
            let mut stmt = self.conn.prepare_cached(&format!(
                "UPDATE jobs SET state = 'running', fence = fence + 1, attempt = attempt + 1, \
                 started_at = ?1, updated_at = ?1, server_id = ?2, event_seq = event_seq + 1 \
                 WHERE seq IN (SELECT seq FROM jobs WHERE queue = ?3 AND state = 'queued' \
                 ORDER BY priority DESC, seq LIMIT ?4) RETURNING {JOB_COLUMNS}"
            ))?;
            stmt.query_map(
                params![req.now, req.server_id, req.queue, req.limit as i64],
                read_job,
            )?
            .collect::<rusqlite::Result<_>>()?
        };
        let mut out = Vec::with_capacity(claimed.len());
        for row in claimed {
            self.event(
                Some(&row.job.id),
                row.event_seq,
                EventKind::Started,
                req.now,
                json!({"state": "running", "attempt": row.job.attempt, "server_id": req.server_id}),
            )?;
            out.push(row);
        }
        // The database returns rows in no set order; workers start the most urgent first.
        out.sort_by(|a, b| b.job.priority.cmp(&a.job.priority).then(a.seq.cmp(&b.seq)));
        Ok(out.into_iter().map(JobRow::into_claimed).collect())
    }

    fn transition(&mut self, t: &Transition, resume: Resume) -> Result<JobRow> {
        let mut row =
            get_job(&self.conn, &t.job_id)?.ok_or_else(|| Error::NotFound(t.job_id.clone()))?;
        let from = row.job.state;
        if let Some(fence) = t.fence
            && (row.fence != fence || !from.is_executing())
        {
            return Err(Error::StaleFence {
                id: t.job_id.clone(),
                fence,
            });
        }
        if let Some(expect) = &t.expect
            && !expect.contains(&from)
        {
            let names: Vec<&str> = expect.iter().map(|s| s.as_str()).collect();
            return Err(Error::Conflict {
                id: t.job_id.clone(),
                actual: from,
                expected: names.join(" or "),
            });
        }
        state::check(Some(from), t.to).map_err(|source| Error::Transition {
            id: t.job_id.clone(),
            source,
        })?;

        let c = &t.changes;
        let job = &mut row.job;
        job.state = t.to;
        job.updated_at = t.now;
        if c.new_attempt_budget {
            row.attempt_base = job.attempt;
            job.result = None;
            job.error = None;
            job.finished_at = None;
            job.progress = None;
            job.message = None;
            job.step = None;
        }
        if resume != Resume::No {
            // The next claim continues this attempt: give its number back.
            job.attempt = job.attempt.saturating_sub(1);
        }
        if resume == Resume::AfterCrash {
            job.recoveries += 1;
        }
        if let Some(r) = &c.result {
            job.result = Some(r.clone());
        }
        if let Some(e) = &c.error {
            job.error = Some(e.clone());
        }
        if t.to == State::Scheduled {
            job.run_at = c.run_at;
        }
        if t.to.is_terminal() {
            job.finished_at.get_or_insert(t.now);
        }
        if t.to == State::Completed {
            job.progress = Some(1.0);
            // A job that succeeded did not fail: an earlier attempt's error goes.
            if c.error.is_none() {
                job.error = None;
            }
        }
        if c.clear_checkpoint {
            row.checkpoint = None;
        }
        row.event_seq += 1;
        let result_text = job.result.as_ref().map(|v| v.to_string());
        self.conn
            .prepare_cached(
                "UPDATE jobs SET state = ?2, updated_at = ?3, event_seq = ?4, result = ?5, \
                 error_code = ?6, error_message = ?7, run_at = ?8, finished_at = ?9, \
                 attempt_base = ?10, checkpoint = CASE WHEN ?11 THEN NULL ELSE checkpoint END, \
                 progress = ?12, message = ?13, step = ?14, attempt = ?15, recoveries = ?16 \
                 WHERE seq = ?1",
            )?
            .execute(params![
                row.seq,
                t.to.as_str(),
                t.now,
                row.event_seq as i64,
                result_text,
                job.error.as_ref().map(|e| e.code.as_str()),
                job.error.as_ref().map(|e| e.message.as_str()),
                job.run_at,
                job.finished_at,
                row.attempt_base,
                c.clear_checkpoint,
                job.progress,
                job.message,
                job.step,
                job.attempt,
                job.recoveries,
            ])?;
        let mut data = t.data.clone();
        if let Value::Object(map) = &mut data {
            map.insert("state".into(), json!(t.to));
            map.insert("from".into(), json!(from));
        }
        let id = row.job.id.clone();
        self.event(Some(&id), row.event_seq, t.event, t.now, data)?;
        Ok(row)
    }

    fn update(&mut self, job_id: &str, fence: u64, now: Millis, update: &Update) -> Result<()> {
        let found: Option<(i64, String, i64, i64, u32)> = self
            .conn
            .prepare_cached("SELECT seq, state, fence, event_seq, attempt FROM jobs WHERE id = ?1")?
            .query_row([job_id], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })
            .optional()?;
        let Some((seq, state, row_fence, event_seq, attempt)) = found else {
            return Err(Error::NotFound(job_id.to_owned()));
        };
        let state = rows::parse_state(&state)?;
        if row_fence as u64 != fence || !state.is_executing() {
            return Err(Error::StaleFence {
                id: job_id.to_owned(),
                fence,
            });
        }
        let event_seq = event_seq as u64 + 1;
        let (kind, data) = match update {
            Update::Progress { fraction, message } => {
                self.conn
                    .prepare_cached(
                        "UPDATE jobs SET progress = COALESCE(?2, progress), message = ?3, \
                         event_seq = ?4, updated_at = ?5 WHERE seq = ?1",
                    )?
                    .execute(params![seq, fraction, message, event_seq as i64, now])?;
                (
                    EventKind::Progress,
                    json!({"progress": fraction, "message": message}),
                )
            }
            Update::Step(name) => {
                self.conn
                    .prepare_cached(
                        "UPDATE jobs SET step = ?2, event_seq = ?3, updated_at = ?4 WHERE seq = ?1",
                    )?
                    .execute(params![seq, name, event_seq as i64, now])?;
                (EventKind::Step, json!({"step": name}))
            }
            Update::Output(text) => {
                self.conn
                    .prepare_cached("UPDATE jobs SET event_seq = ?2 WHERE seq = ?1")?
                    .execute(params![seq, event_seq as i64])?;
                (EventKind::Output, json!({"text": text}))
            }
            Update::Checkpoint { data, step } => {
                let text = data.to_string();
                self.conn
                    .prepare_cached(
                        "UPDATE jobs SET checkpoint = ?2, event_seq = ?3, updated_at = ?4 WHERE seq = ?1",
                    )?
                    .execute(params![seq, text, event_seq as i64, now])?;
                self.conn
                    .prepare_cached(
                        "INSERT INTO checkpoints (job_id, seq, attempt, step, data, at) \
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    )?
                    .execute(params![job_id, event_seq as i64, attempt, step, text, now])?;
                (
                    EventKind::Checkpoint,
                    json!({"checkpoint": data, "step": step, "attempt": attempt}),
                )
            }
        };
        self.event(Some(job_id), event_seq, kind, now, data)
    }

    fn promote(&mut self, now: Millis) -> Result<Promoted> {
        state::check(Some(State::Scheduled), State::Queued).map_err(|source| {
            Error::Transition {
                id: String::new(),
                source,
            }
        })?;
        let promoted: Vec<(String, String, i64)> = {
            let mut stmt = self.conn.prepare_cached(
                "UPDATE jobs SET state = 'queued', updated_at = ?1, event_seq = event_seq + 1 \
                 WHERE seq IN (SELECT seq FROM jobs WHERE state = 'scheduled' AND run_at <= ?1 \
                 ORDER BY run_at LIMIT ?2) RETURNING id, queue, event_seq",
            )?;
            stmt.query_map(params![now, PROMOTE_BATCH], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })?
            .collect::<rusqlite::Result<_>>()?
        };
        let mut queues: Vec<String> = Vec::new();
        for (id, queue, seq) in &promoted {
            self.event(
                Some(id),
                *seq as u64,
                EventKind::Queued,
                now,
                json!({"state": "queued", "from": "scheduled"}),
            )?;
            if !queues.contains(queue) {
                queues.push(queue.clone());
            }
        }
        let next_due = if promoted.len() as i64 >= PROMOTE_BATCH {
            Some(now)
        } else {
            rows_next_due(&self.conn)?
        };
        Ok(Promoted {
            queues,
            count: promoted.len(),
            next_due,
        })
    }

    fn recover(&mut self, req: &RecoverRequest) -> Result<Vec<Recovered>> {
        let stranded: Vec<JobRow> = {
            let mut stmt = self.conn.prepare_cached(&format!(
                "SELECT {JOB_COLUMNS} FROM jobs WHERE state IN ('running', 'paused', 'stopping') ORDER BY seq"
            ))?;
            stmt.query_map([], read_job)?
                .collect::<rusqlite::Result<_>>()?
        };
        let mut out = Vec::with_capacity(stranded.len());
        for row in stranded {
            let was = row.job.state;
            let id = row.job.id.clone();
            let t = |to, event| Transition::new(id.clone(), to, event, req.now);
            self.transition(
                &t(State::Crashed, EventKind::Crashed)
                    .data(json!({"reason": "the engine stopped while the job ran", "was": was})),
                Resume::No,
            )?;
            let now = if was == State::Stopping {
                let e = ErrorInfo::new(
                    "cancelled",
                    "stopped by a user; the engine stopped while the job wound down",
                );
                self.transition(
                    &t(State::Cancelled, EventKind::Cancelled)
                        .data(json!({"reason": "stopped"}))
                        .changes(crate::Changes {
                            error: Some(e),
                            ..Default::default()
                        }),
                    Resume::No,
                )?;
                State::Cancelled
            } else if row.job.recoveries >= row.job.max_recoveries {
                let e = ErrorInfo::new(
                    "crashed",
                    format!(
                        "the job was recovered after a crash {} times (max_recoveries is {})",
                        row.job.recoveries, row.job.max_recoveries
                    ),
                );
                self.transition(
                    &t(State::Failed, EventKind::Failed)
                        .data(json!({"error": e}))
                        .changes(crate::Changes {
                            error: Some(e.clone()),
                            ..Default::default()
                        }),
                    Resume::No,
                )?;
                State::Failed
            } else if req.manual {
                State::Crashed
            } else {
                self.transition(
                    &t(State::Queued, EventKind::Recovered).data(json!({
                        "from_checkpoint": row.checkpoint.is_some(),
                        "recoveries": row.job.recoveries + 1,
                    })),
                    Resume::AfterCrash,
                )?;
                State::Queued
            };
            out.push(Recovered {
                job_id: id,
                queue: row.job.queue,
                was,
                now,
            });
        }
        Ok(out)
    }

    /// At shutdown: this server's running and paused jobs go back to the queue to
    /// continue from their checkpoints (no crash is counted); stopping jobs end.
    fn release(&mut self, server_id: &str, now: Millis) -> Result<Vec<Recovered>> {
        let held: Vec<JobRow> = {
            let mut stmt = self.conn.prepare_cached(&format!(
                "SELECT {JOB_COLUMNS} FROM jobs WHERE state IN ('running', 'paused', 'stopping') \
                 AND server_id = ?1 ORDER BY seq"
            ))?;
            stmt.query_map([server_id], read_job)?
                .collect::<rusqlite::Result<_>>()?
        };
        let mut out = Vec::with_capacity(held.len());
        for row in held {
            let was = row.job.state;
            let id = row.job.id.clone();
            let now_state = if was == State::Stopping {
                let e = ErrorInfo::new("cancelled", "stopped by a user");
                let t = Transition::new(id.clone(), State::Cancelled, EventKind::Cancelled, now)
                    .data(json!({"reason": "stopped"}))
                    .changes(crate::Changes {
                        error: Some(e),
                        ..Default::default()
                    });
                self.transition(&t, Resume::No)?;
                State::Cancelled
            } else {
                if was == State::Paused {
                    let t = Transition::new(id.clone(), State::Running, EventKind::Resumed, now)
                        .data(json!({"reason": "shutdown"}));
                    self.transition(&t, Resume::No)?;
                }
                let t = Transition::new(id.clone(), State::Queued, EventKind::Queued, now).data(
                    json!({"reason": "shutdown", "from_checkpoint": row.checkpoint.is_some()}),
                );
                self.transition(&t, Resume::AfterShutdown)?;
                State::Queued
            };
            out.push(Recovered {
                job_id: id,
                queue: row.job.queue,
                was,
                now: now_state,
            });
        }
        Ok(out)
    }

    fn register_server(&mut self, s: &ServerInfo) -> Result<()> {
        self.conn
            .prepare_cached(
                "INSERT OR REPLACE INTO servers (id, host, pid, url, started_at, heartbeat_at, \
                 stopped_at, queues, workers) VALUES (?1, ?2, ?3, ?4, ?5, ?6, NULL, ?7, ?8)",
            )?
            .execute(params![
                s.id,
                s.host,
                s.pid,
                s.url,
                s.started_at,
                s.heartbeat_at,
                serde_json::to_string(&s.queues).unwrap_or_default(),
                s.workers,
            ])?;
        self.event(
            None,
            0,
            EventKind::ServerUp,
            s.started_at,
            json!({"server_id": s.id, "host": s.host, "pid": s.pid}),
        )
    }
}

pub fn rows_next_due(conn: &Connection) -> Result<Option<Millis>> {
    Ok(conn
        .prepare_cached("SELECT MIN(run_at) FROM jobs WHERE state = 'scheduled'")?
        .query_row([], |r| r.get(0))?)
}

/// Whether a transition back to `queued` continues the interrupted attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Resume {
    No,
    /// Recovery after a crash: counts towards `max_recoveries`.
    AfterCrash,
    /// A shutdown handed the job back: not a crash.
    AfterShutdown,
}
