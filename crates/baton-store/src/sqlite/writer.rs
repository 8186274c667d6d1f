//! The writer thread: the only connection that writes. It takes every write queued
//! while it was busy and commits them together (group commit), so one fsync serves
//! many writers; events are published after the commit made them durable.

use std::sync::Arc;

use baton_core::{ErrorInfo, Event, EventKind, Millis, NewJob, State, state};
use rusqlite::{Connection, OptionalExtension, params};
use serde_json::{Value, json};
use tokio::sync::mpsc::{Receiver, error::TryRecvError};
use tokio::sync::{broadcast, oneshot};

use super::rows::{JOB_COLUMNS, JobRow, read_job};
use crate::{
    AppendLogs, Appended, ClaimRequest, Claimed, Error, JobProcess, Pipeline, Promoted,
    RecoverRequest, Recovered, Result, ServerInfo, StartNow, Submitted, Transition, Update,
};

mod deps;
mod prune;
mod schedules;

/// The most writes committed in one transaction.
const MAX_BATCH: usize = 4096;
/// The most scheduled jobs queued by one promotion.
const PROMOTE_BATCH: i64 = 10_000;

pub enum Op {
    Submit(Vec<NewJob>, Option<StartNow>),
    Claim(ClaimRequest),
    /// Outcomes and the claim that refills their slots (see [`crate::Store::settle`]).
    Settle(crate::Settle),
    Transition(Transition),
    /// A transition whose caller does not need the job back.
    Record(Transition),
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
    SetProcess {
        job_id: String,
        fence: u64,
        process: Option<JobProcess>,
    },
    AppendLogs(AppendLogs),
    PutPipeline(Box<baton_core::PipelineSpec>, Millis),
    DeletePipeline(String),
    SubmitWorkflow(Box<crate::NewWorkflow>),
    ControlWorkflow {
        id: String,
        action: crate::WorkflowAction,
        now: Millis,
    },
    SetQueuePaused {
        queue: String,
        paused: bool,
        now: Millis,
    },
    /// An event of no job (see [`crate::Store::note`]).
    Note {
        kind: EventKind,
        data: Value,
        now: Millis,
    },
    CreateSchedule(Box<crate::NewSchedule>),
    PutSchedule(Box<crate::NewSchedule>),
    DeleteSchedule(String),
    EnableSchedule {
        id: String,
        enabled: bool,
        next_run: Option<Millis>,
        now: Millis,
    },
    FireSchedule(Box<crate::Fire>),
    ReleaseSchedule(String, Millis),
    /// Removes finished jobs past their retention (see [`crate::Store::prune`]).
    Prune(crate::PruneRequest),
    /// Indexes the next jobs for the list's text search (see [`Writer::index_text`]);
    /// `Output::Bool(true)` once none is left.
    IndexText,
}

/// What [`Writer::mark`] notes: the events and moves recorded so far.
#[derive(Clone, Copy)]
struct Mark {
    events: usize,
    moves: usize,
    next_event_id: u64,
}

/// An event's row beside what [`Event`] holds: the job's row key and the data as text.
struct EventRow {
    key: Option<i64>,
    text: String,
}

/// A multi-row `INSERT` made in three sizes (the most rows, 8 and 1), so that a few
/// cached statements insert any number of rows.
pub(super) struct MultiInsert {
    most: usize,
    sql: [String; 3],
}

impl MultiInsert {
    /// `head` is the statement up to `VALUES`; `row` one row's placeholders.
    pub(super) fn new(head: &str, row: &str, most: usize) -> Self {
        let sql = [most, 8, 1].map(|n| format!("{head} VALUES {}", vec![row; n].join(", ")));
        MultiInsert { most, sql }
    }

    /// The rows, from `at` of `total`, that the next statement inserts, and its SQL.
    pub(super) fn next(&self, at: usize, total: usize) -> (usize, &str) {
        let left = total - at;
        if left >= self.most {
            (self.most, &self.sql[0])
        } else if left >= 8 {
            (8, &self.sql[1])
        } else {
            (1, &self.sql[2])
        }
    }
}

/// `INSERT INTO events`, up to 32 rows a statement.
fn event_insert() -> &'static MultiInsert {
    static SQL: std::sync::OnceLock<MultiInsert> = std::sync::OnceLock::new();
    SQL.get_or_init(|| {
        MultiInsert::new(
            "INSERT INTO events (id, job_key, job_id, seq, type, at, data)",
            "(?, ?, ?, ?, ?, ?, ?)",
            32,
        )
    })
}

/// The most jobs indexed for search by one write: a search that finds the index
/// behind catches it up in writes of this size, with other writes between them.
const INDEX_TEXT_BATCH: i64 = 5_000;
/// The most jobs indexed at once while the writer has nothing else to do: small, so
/// that a write that arrives meanwhile waits little.
const INDEX_TEXT_IDLE: i64 = 256;

pub enum Output {
    Submitted(Vec<Submitted>),
    Claimed(Vec<Claimed>),
    Settled(crate::Settled),
    Job(Box<baton_core::Job>),
    Unit,
    Promoted(Promoted),
    Recovered(Vec<Recovered>),
    Appended(Appended),
    Pipeline(Box<Pipeline>),
    Bool(bool),
    Workflow(Box<crate::SubmittedWorkflow>),
    WorkflowChange(Box<crate::WorkflowChange>),
    PutSchedule(Box<crate::PutSchedule>),
    Schedule(Option<Box<baton_core::Schedule>>),
    Fired(Box<crate::FireOutcome>),
    Released(Box<crate::Released>),
    Pruned(crate::Pruned),
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
    /// The rows of `events` still to be inserted (one per event, in step with it):
    /// written by a few multi-row statements just before the transaction commits.
    event_rows: Vec<EventRow>,
    bus: broadcast::Sender<Arc<Event>>,
    claim_sql: std::collections::HashMap<(String, Option<Vec<String>>), String>,
    counters: Arc<crate::WriteStats>,
    /// While dependents are being settled: the jobs whose end (or reopening) still has
    /// to reach their dependents. See `deps.rs`.
    settling: Option<Vec<deps::Settle>>,
    /// The jobs stored by the submit being applied, by id, with their row key and
    /// state: their dependents in the same batch find them without a read.
    fresh: std::collections::HashMap<String, (i64, State)>,
    /// The edges of the jobs stored by the submit being applied (child, parent,
    /// condition, status), inserted together by `write_edges`.
    new_edges: Vec<[i64; 4]>,
    /// Whether any job ever had a dependency (`None` until first asked): a store that
    /// holds no edges skips looking for dependents when a job ends.
    has_edges: Option<bool>,
    /// Set when the open transaction can no longer be trusted (a savepoint statement
    /// failed): the batch is retried write by write.
    lost: bool,
    /// Changes of the jobs per queue and state made by the open transaction, with
    /// their time, written to `job_counts` (and, for jobs that completed or failed, to
    /// `throughput`) just before it commits: a handful of rows however many jobs moved.
    /// A savepoint rolled back drops its own.
    moves: Vec<(String, Option<State>, State, Millis)>,
    /// The newest minute `throughput` was pruned at: it is pruned once a minute.
    pruned: Millis,
    /// Whether jobs may be waiting to be indexed for search: set by every batch,
    /// cleared when the writer, idle, finds none left.
    text_behind: bool,
    /// The durability the store runs at (`PRAGMA synchronous`, set when it opened),
    /// restored after an idle indexing transaction.
    synchronous: i64,
    /// The concurrency limits claims obey (set through the store).
    limits: super::limits::Shared,
    /// The queues waiting in line at each limit.
    turns: crate::turns::Turns,
    /// When each queue's claim last looked through the whole queue past a full
    /// limit's jobs.
    deep_scans: crate::turns::DeepScans,
    #[cfg(feature = "faults")]
    pub faults: super::Faults,
}

impl Writer {
    /// `counters` are the writer's (see [`crate::WriteStats`]); the caller may have set
    /// `conn` to count its statements there.
    pub fn new(
        conn: Connection,
        bus: broadcast::Sender<Arc<Event>>,
        counters: Arc<crate::WriteStats>,
        limits: super::limits::Shared,
    ) -> Result<Self> {
        // Past the newest event pruned too: an id is never given twice.
        let last = super::rows::last_event_id(&conn)?;
        let synchronous: i64 = conn.query_row("PRAGMA synchronous", [], |r| r.get(0))?;
        Ok(Self {
            conn,
            next_event_id: last + 1,
            events: Vec::new(),
            event_rows: Vec::new(),
            bus,
            claim_sql: std::collections::HashMap::new(),
            counters,
            settling: None,
            fresh: std::collections::HashMap::new(),
            new_edges: Vec::new(),
            has_edges: None,
            lost: false,
            moves: Vec::new(),
            pruned: Millis::MIN,
            text_behind: true,
            synchronous,
            limits,
            turns: crate::turns::Turns::default(),
            deep_scans: crate::turns::DeepScans::default(),
            #[cfg(feature = "faults")]
            faults: super::Faults::default(),
        })
    }

    pub fn run(mut self, mut rx: Receiver<Msg>) {
        use std::sync::atomic::Ordering::Relaxed;
        use std::time::Instant;
        let mut batch: Vec<Request> = Vec::new();
        let mut close: Option<std::sync::mpsc::Sender<()>> = None;
        loop {
            // With nothing to write, new jobs are indexed for search, a few at a time.
            let first = if self.text_behind {
                match rx.try_recv() {
                    Ok(msg) => Some(msg),
                    Err(TryRecvError::Empty) => {
                        let started = Instant::now();
                        self.counters.indexing.store(true, Relaxed);
                        self.index_text_idle();
                        self.counters.indexing.store(false, Relaxed);
                        self.counters.index_ns.fetch_add(nanos(started), Relaxed);
                        continue;
                    }
                    Err(TryRecvError::Disconnected) => None,
                }
            } else {
                rx.blocking_recv()
            };
            match first {
                Some(Msg::Request(r)) => batch.push(r),
                Some(Msg::Close(ack)) => close = Some(ack),
                None => break,
            }
            while close.is_none() && batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(Msg::Request(r)) => batch.push(r),
                    Ok(Msg::Close(ack)) => close = Some(ack),
                    Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
                }
            }
            if !batch.is_empty() {
                #[cfg(feature = "faults")]
                if let Some(delay) = self.faults.batch_delay() {
                    std::thread::sleep(delay);
                }
                let started = Instant::now();
                self.commit_batch(&mut batch);
                self.counters.busy_ns.fetch_add(nanos(started), Relaxed);
                self.text_behind = true;
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

    /// Indexes for search the next jobs (at most `limit`) after `job_text_mark.upto`
    /// and moves the mark past them, in the open transaction; true when none was left.
    /// The index is derived from the jobs' rows: it can be behind, never wrong (the
    /// triggers keep the jobs under the mark in step).
    fn index_text(&mut self, limit: i64) -> Result<bool> {
        let upto: i64 = self
            .conn
            .prepare_cached("SELECT upto FROM job_text_mark")?
            .query_row([], |r| r.get(0))?;
        let end: Option<i64> = self
            .conn
            .prepare_cached(
                "SELECT MAX(seq) FROM (SELECT seq FROM jobs WHERE seq > ?1 ORDER BY seq LIMIT ?2)",
            )?
            .query_row(params![upto, limit], |r| r.get(0))?;
        let Some(end) = end else {
            return Ok(true);
        };
        self.conn
            .prepare_cached(
                "INSERT INTO job_text (rowid, body) \
                 SELECT seq, body FROM job_text_source WHERE seq > ?1 AND seq <= ?2",
            )?
            .execute(params![upto, end])?;
        self.conn
            .prepare_cached("UPDATE job_text_mark SET upto = ?1")?
            .execute([end])?;
        Ok(false)
    }

    /// A few jobs indexed while the writer is idle, in a transaction of their own
    /// committed without waiting for the disk: the index is derived data, and the
    /// next durable commit carries it to the disk with the rest.
    fn index_text_idle(&mut self) {
        let run = |w: &mut Self| -> Result<bool> {
            w.conn
                .execute_batch("PRAGMA synchronous = NORMAL; BEGIN IMMEDIATE")?;
            let done = w.index_text(INDEX_TEXT_IDLE);
            let end = if done.is_ok() { "COMMIT" } else { "ROLLBACK" };
            let ended = w.conn.execute_batch(end);
            w.conn
                .execute_batch(&format!("PRAGMA synchronous = {}", w.synchronous))?;
            ended?;
            done
        };
        match run(self) {
            Ok(done) => self.text_behind = !done,
            Err(e) => {
                // A search still catches the index up itself; the writer tries again
                // after its next write.
                tracing::warn!(error = %e, "cannot index jobs for search");
                if !self.conn.is_autocommit() {
                    let _ = self.conn.execute_batch("ROLLBACK");
                }
                self.text_behind = false;
            }
        }
    }

    /// The counters this writer keeps, for metrics.
    pub fn counters(&self) -> Arc<crate::WriteStats> {
        self.counters.clone()
    }

    fn commit_batch(&mut self, batch: &mut Vec<Request>) {
        use std::sync::atomic::Ordering::Relaxed;
        self.counters.batches.fetch_add(1, Relaxed);
        self.counters.writes.fetch_add(batch.len() as u64, Relaxed);
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
                self.event_rows.clear();
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
                            self.event_rows.clear();
                            self.next_event_id = mark;
                            let _ = one.pop().map(|r| r.reply.send(Err(e)));
                        }
                    }
                }
            }
        }
    }

    /// Applies writes in one transaction, each in its own savepoint (see [`Self::savepoint`]):
    /// a write that fails leaves no trace and the others commit. `Err` when the
    /// transaction itself is lost (SQLite rolls it back on a full disk or an IO error) or
    /// cannot commit: then nothing of the batch was written.
    fn apply_all(&mut self, batch: &[Request]) -> Result<Vec<Result<Output>>> {
        self.moves.clear();
        self.conn.prepare_cached("BEGIN IMMEDIATE")?.execute([])?;
        self.lost = false;
        // A write alone in its transaction needs no savepoint: when it fails, the whole
        // transaction is rolled back instead.
        if let [req] = batch {
            let mark = self.mark();
            let out = self.apply(&req.op);
            if out.is_err() {
                let _ = self.conn.execute_batch("ROLLBACK");
                self.forget_since(mark);
                if self.lost {
                    return Err(out.err().unwrap_or(Error::Closed));
                }
                return Ok(vec![out]);
            }
            return self.finish_transaction(vec![out]);
        }
        let mut outputs = Vec::with_capacity(batch.len());
        for req in batch {
            let out = self.savepoint(|w| w.apply(&req.op));
            if self.lost || self.conn.is_autocommit() {
                let _ = self.conn.execute_batch("ROLLBACK");
                return Err(match out {
                    Err(e) => e,
                    Ok(_) => Error::Internal("the write's transaction was rolled back".into()),
                });
            }
            outputs.push(out);
        }
        self.finish_transaction(outputs)
    }

    /// Writes the transaction's events and counts and commits it.
    fn finish_transaction(&mut self, outputs: Vec<Result<Output>>) -> Result<Vec<Result<Output>>> {
        if let Err(e) = self.write_events().and_then(|()| self.write_counts()) {
            let _ = self.conn.execute_batch("ROLLBACK");
            return Err(e);
        }
        let started = std::time::Instant::now();
        let committed = self.conn.prepare_cached("COMMIT")?.execute([]);
        self.counters
            .commit_ns
            .fetch_add(nanos(started), std::sync::atomic::Ordering::Relaxed);
        if let Err(e) = committed {
            let _ = self.conn.execute_batch("ROLLBACK");
            return Err(e.into());
        }
        Ok(outputs)
    }

    /// Runs `f` in a savepoint. This is the one place that makes a write all-or-nothing:
    /// every operation of a batch runs through it, so an error from any depth (a
    /// dependent's transition, a recovery loop half done, a refused submit) rolls back
    /// all the operation wrote and drops the events it recorded, which are therefore
    /// never published. A schedule's fire also uses it around each job it submits, to
    /// skip that job alone. When the savepoint cannot be rolled back, the transaction is
    /// marked lost and the batch retried write by write.
    pub(super) fn savepoint<T>(&mut self, f: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        let mark = self.mark();
        if let Err(e) = self
            .conn
            .prepare_cached("SAVEPOINT op")
            .and_then(|mut s| s.execute([]))
        {
            self.lost = true;
            return Err(e.into());
        }
        let result = f(self);
        if result.is_ok() {
            match self
                .conn
                .prepare_cached("RELEASE op")
                .and_then(|mut s| s.execute([]))
            {
                Ok(_) => return result,
                Err(e) => {
                    self.lost = true;
                    return Err(e.into());
                }
            }
        }
        self.forget_since(mark);
        let undone = self
            .conn
            .prepare_cached("ROLLBACK TO op")
            .and_then(|mut s| s.execute([]))
            .and_then(|_| self.conn.prepare_cached("RELEASE op")?.execute([]));
        if undone.is_err() {
            self.lost = true;
        }
        result
    }

    /// Where the events and moves recorded so far end, to forget what a write that
    /// is rolled back recorded after it.
    fn mark(&self) -> Mark {
        Mark {
            events: self.events.len(),
            moves: self.moves.len(),
            next_event_id: self.next_event_id,
        }
    }

    /// Forgets the events and moves recorded after `mark`, by a write rolled back.
    fn forget_since(&mut self, mark: Mark) {
        self.events.truncate(mark.events);
        self.event_rows.truncate(mark.events);
        self.moves.truncate(mark.moves);
        self.next_event_id = mark.next_event_id;
        // What the write stored is gone: its jobs cannot be found by a later one.
        self.fresh.clear();
        self.new_edges.clear();
    }

    /// Records that a job of `queue` left `from` (none: it is new) for `to` at `at`.
    pub(super) fn moved(&mut self, queue: String, from: Option<State>, to: State, at: Millis) {
        self.moves.push((queue, from, to, at));
    }

    /// Adds the transaction's moves to `job_counts`, one row per queue and state.
    fn write_counts(&mut self) -> Result<()> {
        if self.moves.is_empty() {
            return Ok(());
        }
        let mut sums: std::collections::BTreeMap<(&str, State), i64> = Default::default();
        for (queue, from, to, _) in &self.moves {
            if let Some(from) = from {
                *sums.entry((queue.as_str(), *from)).or_default() -= 1;
            }
            *sums.entry((queue.as_str(), *to)).or_default() += 1;
        }
        let mut stmt = self.conn.prepare_cached(
            "INSERT INTO job_counts (queue, state, n) VALUES (?1, ?2, ?3) \
             ON CONFLICT (queue, state) DO UPDATE SET n = n + excluded.n",
        )?;
        for ((queue, state), n) in sums {
            if n != 0 {
                stmt.execute(params![queue, state.as_str(), n])?;
            }
        }
        drop(stmt);
        self.write_throughput()?;
        self.moves.clear();
        Ok(())
    }

    /// Adds the transaction's completions and failures to `throughput`, one row per
    /// queue and bucket of each span, and prunes buckets past their span's keep once a
    /// minute (by the time of the writes, the engine's clock).
    fn write_throughput(&mut self) -> Result<()> {
        use crate::Span;
        let mut sums: std::collections::BTreeMap<(i64, Millis, &str), (i64, i64)> =
            Default::default();
        let mut newest = Millis::MIN;
        for (queue, _, to, at) in &self.moves {
            let failed = match to {
                State::Completed => false,
                State::Failed => true,
                _ => continue,
            };
            newest = newest.max(*at);
            for span in [Span::Second, Span::Minute] {
                let size = span.millis();
                let n = sums
                    .entry((size, at.div_euclid(size) * size, queue.as_str()))
                    .or_default();
                if failed {
                    n.1 += 1;
                } else {
                    n.0 += 1;
                }
            }
        }
        if sums.is_empty() {
            return Ok(());
        }
        let mut stmt = self.conn.prepare_cached(
            "INSERT INTO throughput (span, at, queue, completed, failed) VALUES (?1, ?2, ?3, ?4, ?5) \
             ON CONFLICT (span, at, queue) DO UPDATE SET completed = completed + excluded.completed, \
             failed = failed + excluded.failed",
        )?;
        for ((span, at, queue), (completed, failed)) in sums {
            stmt.execute(params![span, at, queue, completed, failed])?;
        }
        drop(stmt);
        let minute = newest.div_euclid(60_000) * 60_000;
        if minute > self.pruned {
            // Cut at whole minutes, so that a minute's seconds are all kept or all gone.
            let mut prune = self
                .conn
                .prepare_cached("DELETE FROM throughput WHERE span = ?1 AND at < ?2")?;
            for span in [Span::Second, Span::Minute] {
                prune.execute(params![span.millis(), minute - span.kept()])?;
            }
            self.pruned = minute;
        }
        Ok(())
    }

    /// Inserts the transaction's events, many rows a statement.
    fn write_events(&mut self) -> Result<()> {
        let mut rows = std::mem::take(&mut self.event_rows);
        let mut at = 0;
        let result = (|| -> Result<()> {
            while at < rows.len() {
                let (n, sql) = event_insert().next(at, rows.len());
                let mut stmt = self.conn.prepare_cached(sql)?;
                let mut i = 1;
                for (row, e) in rows[at..at + n].iter().zip(&self.events[at..at + n]) {
                    stmt.raw_bind_parameter(i, e.id as i64)?;
                    stmt.raw_bind_parameter(i + 1, row.key)?;
                    stmt.raw_bind_parameter(i + 2, e.job_id.as_deref())?;
                    stmt.raw_bind_parameter(i + 3, e.seq as i64)?;
                    stmt.raw_bind_parameter(i + 4, e.kind.as_str())?;
                    stmt.raw_bind_parameter(i + 5, e.at)?;
                    stmt.raw_bind_parameter(i + 6, row.text.as_str())?;
                    i += 7;
                }
                stmt.raw_execute()?;
                at += n;
            }
            Ok(())
        })();
        rows.clear();
        self.event_rows = rows;
        result
    }

    fn publish(&mut self) {
        self.event_rows.clear();
        for e in self.events.drain(..) {
            let _ = self.bus.send(Arc::new(e));
        }
    }

    fn apply(&mut self, op: &Op) -> Result<Output> {
        match op {
            Op::Submit(jobs, start) => self.submit(jobs, start.as_ref()).map(Output::Submitted),
            Op::SubmitWorkflow(wf) => self
                .submit_workflow(wf)
                .map(|s| Output::Workflow(Box::new(s))),
            Op::ControlWorkflow { id, action, now } => self
                .control_workflow(id, *action, *now)
                .map(|c| Output::WorkflowChange(Box::new(c))),
            Op::SetQueuePaused { queue, paused, now } => self
                .set_queue_paused(queue, *paused, *now)
                .map(Output::Bool),
            Op::Note { kind, data, now } => self
                .event(None, 0, *kind, *now, data.clone())
                .map(|()| Output::Unit),
            Op::Claim(req) => self.claim(req).map(Output::Claimed),
            Op::Settle(s) => self.settle_outcomes(s).map(Output::Settled),
            Op::Transition(t) => match self.transition(t, Resume::No, true)? {
                Some(row) => Ok(Output::Job(Box::new(row.job))),
                None => Err(Error::NotFound(t.job_id.clone())),
            },
            Op::Record(t) => self.transition(t, Resume::No, false).map(|_| Output::Unit),
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
            Op::IndexText => self.index_text(INDEX_TEXT_BATCH).map(Output::Bool),
            Op::Prune(req) => self.prune(req).map(Output::Pruned),
            Op::Heartbeat(id, now) => {
                self.conn
                    .prepare_cached("UPDATE servers SET heartbeat_at = ?2 WHERE id = ?1")?
                    .execute(params![id, now])?;
                Ok(Output::Unit)
            }
            Op::SetProcess {
                job_id,
                fence,
                process,
            } => {
                let (key, ..) = self.fenced(job_id, *fence)?;
                self.conn
                    .prepare_cached("UPDATE jobs SET pgid = ?2, proc_start = ?3 WHERE seq = ?1")?
                    .execute(params![
                        key,
                        process.map(|p| p.pgid),
                        process.map(|p| p.start_time as i64)
                    ])?;
                Ok(Output::Unit)
            }
            Op::AppendLogs(req) => self.append_logs(req).map(Output::Appended),
            Op::PutPipeline(spec, now) => self
                .put_pipeline(spec, *now)
                .map(|p| Output::Pipeline(Box::new(p))),
            Op::DeletePipeline(id) => {
                let n = self
                    .conn
                    .prepare_cached("DELETE FROM pipelines WHERE id = ?1")?
                    .execute([id])?;
                Ok(Output::Bool(n > 0))
            }
            Op::CreateSchedule(s) => self
                .put_schedule(s, false)
                .map(|p| Output::PutSchedule(Box::new(p))),
            Op::PutSchedule(s) => self
                .put_schedule(s, true)
                .map(|p| Output::PutSchedule(Box::new(p))),
            Op::DeleteSchedule(id) => self
                .delete_schedule(id)
                .map(|s| Output::Schedule(s.map(Box::new))),
            Op::EnableSchedule {
                id,
                enabled,
                next_run,
                now,
            } => self
                .set_schedule_enabled(id, *enabled, *next_run, *now)
                .map(|s| Output::Schedule(s.map(Box::new))),
            Op::FireSchedule(f) => self.fire(f).map(|o| Output::Fired(Box::new(o))),
            Op::ReleaseSchedule(id, now) => self
                .release_schedule(id, *now)
                .map(|r| Output::Released(Box::new(r))),
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

    /// Records an event; `job` is the job's id and its row key.
    fn event(
        &mut self,
        job: Option<(&str, i64)>,
        seq: u64,
        kind: EventKind,
        at: Millis,
        data: Value,
    ) -> Result<()> {
        let id = self.next_event_id;
        let text = json_text(&data);
        let (job_id, job_key) = match job {
            Some((id, key)) => (Some(id), Some(key)),
            None => (None, None),
        };
        // Events are found by the job's integer key: cheaper to index than its id.
        self.event_rows.push(EventRow { key: job_key, text });
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
        self.fresh.clear();
        // Check every job before storing any: a refused batch must leave no trace.
        for new in jobs {
            state::check(None, new.state).map_err(|source| Error::Transition {
                id: new.id.to_string(),
                source,
            })?;
        }
        let mut started = 0usize;
        let limits = super::limits::current(&self.limits);
        let mut out = Vec::with_capacity(jobs.len());
        for new in jobs {
            // Dependencies and unique keys are decided before the job is stored.
            let prepared = self.prepare_new(new)?;
            if let Some(job) = prepared.existing {
                out.push(Submitted {
                    job: *job,
                    created: false,
                    claimed: None,
                });
                continue;
            }
            let adjusted;
            let new = match prepared.state {
                Some(state) => {
                    adjusted = NewJob {
                        state,
                        ..new.clone()
                    };
                    &adjusted
                }
                None => new,
            };
            let labels = if new.labels.is_empty() {
                None
            } else {
                Some(serde_json::to_string(&new.labels).unwrap_or_default())
            };
            // Started at once when the caller has a free worker for it.
            // A job a concurrency limit covers waits for a claim, which takes turns.
            let start_now = start.filter(|s| {
                new.state == State::Queued
                    && started < s.max
                    && !limits.iter().any(|l| l.covers(&new.kind, &new.labels))
            });
            let inserted = self
                .conn
                .prepare_cached(
                    "INSERT INTO jobs (id, kind, queue, priority, state, payload, exec, labels, \
                     max_attempts, backoff_initial_ms, backoff_max_ms, timeout_ms, grace_ms, \
                     max_recoveries, event_seq, created_at, run_at, updated_at, \
                     attempt, fence, started_at, server_id, \
                     deps_pending, unique_key, workflow_id, workflow_name) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?17, ?15, ?16, ?15, \
                     ?18, ?18, ?19, ?20, ?21, ?22, ?23, ?24) ON CONFLICT (id) DO NOTHING",
                )?
                .execute(params![
                    new.id.as_str(),
                    new.kind,
                    new.queue,
                    new.priority,
                    if start_now.is_some() { "running" } else { new.state.as_str() },
                    new.payload.as_ref().map(json_text),
                    new.exec.as_ref().map(json_text),
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
                    prepared.pending(),
                    new.unique_key,
                    new.workflow_id,
                    new.workflow_name,
                ])?;
            if inserted == 1 {
                let state = if start_now.is_some() {
                    State::Running
                } else {
                    new.state
                };
                self.moved(new.queue.clone(), None, state, new.created_at);
            }
            if inserted == 0 {
                if new.workflow_id.is_some() {
                    // A workflow's jobs are its own: an id taken elsewhere is refused.
                    return Err(Error::JobExists(new.id.to_string()));
                }
                let existing = self
                    .job_row(new.id.as_str())?
                    .ok_or_else(|| Error::NotFound(new.id.to_string()))?;
                out.push(Submitted {
                    job: existing.job,
                    created: false,
                    claimed: None,
                });
                continue;
            }
            let key = self.conn.last_insert_rowid();
            self.store_links(key, new, &prepared)?;
            if !new.labels.is_empty() {
                let mut stmt = self.conn.prepare_cached(
                    "INSERT INTO job_labels (key, value, job) VALUES (?1, ?2, ?3)",
                )?;
                for (k, v) in &new.labels {
                    stmt.execute(params![k, v, key])?;
                }
            }
            self.event(
                Some((new.id.as_str(), key)),
                1,
                EventKind::Submitted,
                new.created_at,
                crate::new_job::submitted_data(new),
            )?;
            // Runs are described by the caller's side (`SqliteStore::submit`), off
            // this thread.
            let mut job = crate::new_job::submitted_job(new, baton_core::Runs::default());
            let claimed = match start_now {
                None => None,
                Some(s) => {
                    let (claimed, data) =
                        crate::new_job::start_at_submit(&mut job, new, &s.server_id)?;
                    started += 1;
                    self.event(
                        Some((new.id.as_str(), key)),
                        2,
                        EventKind::Started,
                        new.created_at,
                        data,
                    )?;
                    Some(claimed)
                }
            };
            out.push(Submitted {
                job,
                created: true,
                claimed,
            });
            if let Some(last) = out.last_mut() {
                self.settle_new(new, &prepared, &mut last.job)?;
            }
        }
        self.write_edges()?;
        Ok(out)
    }

    fn claim(&mut self, req: &ClaimRequest) -> Result<Vec<Claimed>> {
        state::check(Some(State::Queued), State::Running).map_err(|source| Error::Transition {
            id: String::new(),
            source,
        })?;
        let limits = super::limits::current(&self.limits);
        let claimed: Vec<JobRow> = if limits.is_empty() {
            // The queue is written into the SQL, not bound: SQLite recompiles a statement
            // whenever a new value is bound to a parameter that it compared against a
            // partial index's condition, which would happen on every claim.
            // The kinds likewise (a claimer's kinds are the same on every claim).
            let key = (req.queue.clone(), req.kinds.clone());
            let sql = self.claim_sql.entry(key).or_insert_with(|| {
                format!(
                    "SELECT {JOB_COLUMNS} {} ORDER BY priority DESC, seq",
                    claim_from_where(req)
                )
            });
            // No LIMIT parameter either (a bound LIMIT also recompiles): rows stream from
            // the index, and reading stops after `limit`.
            let mut stmt = self.conn.prepare_cached(sql)?;
            stmt.query_map([], read_job)?
                .take(req.limit)
                .collect::<rusqlite::Result<_>>()?
        } else {
            self.claim_within(req, &limits)?
        };
        let mut claimed = claimed;
        {
            let mut update = self.conn.prepare_cached(
                "UPDATE jobs SET state = 'running', fence = ?2, attempt = ?3, started_at = ?4, \
                 updated_at = ?4, server_id = ?5, event_seq = ?6 WHERE seq = ?1",
            )?;
            for row in &mut claimed {
                self.moves.push((
                    row.job.queue.clone(),
                    Some(State::Queued),
                    State::Running,
                    req.now,
                ));
                row.fence += 1;
                row.event_seq += 1;
                row.job.attempt += 1;
                row.job.state = State::Running;
                row.job.started_at = Some(req.now);
                row.job.updated_at = req.now;
                update.execute(params![
                    row.seq,
                    row.fence as i64,
                    row.job.attempt,
                    req.now,
                    req.server_id,
                    row.event_seq as i64
                ])?;
            }
        }
        let mut out = Vec::with_capacity(claimed.len());
        for row in claimed {
            let mut data = json!({"state": "running", "from": "queued", "attempt": row.job.attempt, "server_id": req.server_id});
            if let Some(w) = &row.job.workflow_id {
                data["workflow"] = json!(w);
            }
            // The attempt resumes from the job's last checkpoint: which one.
            if row.checkpoint.is_some() {
                let last: Option<(i64, Option<String>)> = self
                    .conn
                    .prepare_cached(
                        "SELECT seq, step FROM checkpoints WHERE job_id = ?1 \
                         ORDER BY seq DESC LIMIT 1",
                    )?
                    .query_row([&row.job.id], |r| Ok((r.get(0)?, r.get(1)?)))
                    .optional()?;
                if let Some((seq, step)) = last {
                    data["checkpoint"] = json!({"seq": seq, "step": step});
                }
            }
            self.event(
                Some((&row.job.id, row.seq)),
                row.event_seq,
                EventKind::Started,
                req.now,
                data,
            )?;
            out.push(row);
        }
        // The database returns rows in no set order; workers start the most urgent first.
        out.sort_by(|a, b| b.job.priority.cmp(&a.job.priority).then(a.seq.cmp(&b.seq)));
        Ok(out.into_iter().map(JobRow::into_claimed).collect())
    }

    /// The jobs a claim takes when concurrency limits are set: those of a limit with
    /// no room for this queue are passed over (by the SQL while it has none, one by one
    /// when it runs out during the read), and the queue's place in line at each limit
    /// is kept (see [`crate::turns`]).
    fn claim_within(
        &mut self,
        req: &ClaimRequest,
        limits: &[baton_core::ConcurrencyLimit],
    ) -> Result<Vec<JobRow>> {
        let held = super::limits::held(&self.conn, limits)?;
        let room: Vec<u64> = limits
            .iter()
            .zip(&held)
            .map(|(l, h)| self.turns.room(l, *h, &req.queue, req.now))
            .collect();
        let mut pick = crate::turns::Picking::new(room);
        let from_where = claim_from_where(req);
        let mut taken: Vec<JobRow> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        loop {
            let exclude: String = pick
                .full(limits)
                .map(|l| format!(" AND NOT {}", super::limits::covered(l)))
                .collect();
            let sql = if exclude.is_empty() || self.deep_scans.due(&req.queue, req.now) {
                format!("SELECT {JOB_COLUMNS} {from_where}{exclude} ORDER BY priority DESC, seq")
            } else {
                // Past a full limit's jobs, only the queue's first jobs are looked at
                // (see `DeepScans`).
                format!(
                    "SELECT {JOB_COLUMNS} FROM (SELECT * {from_where} \
                     ORDER BY priority DESC, seq LIMIT {}) AS jobs WHERE 1{exclude} \
                     ORDER BY priority DESC, seq",
                    crate::turns::WINDOW
                )
            };
            let mut ran_out = false;
            let mut stmt = self.conn.prepare_cached(&sql)?;
            let mut rows = stmt.query([])?;
            while taken.len() < req.limit && !ran_out {
                let Some(row) = rows.next()? else { break };
                let row = read_job(row)?;
                // The rows taken by an earlier read come again (they are still queued).
                if seen.insert(row.seq) {
                    ran_out = pick.take(limits, &row.job.kind, &row.job.labels);
                    taken.push(row);
                }
            }
            if !ran_out || taken.len() >= req.limit {
                break;
            }
        }
        // A queue that took a slot leaves the line (it joins its end when it next finds
        // the limit full). One that the limit kept from a job waits in line, even when
        // other jobs filled its slots: it would have started that job first. One with
        // nothing the limit covers leaves the line.
        for (i, l) in limits.iter().enumerate() {
            if pick.took[i] {
                self.turns.leave(l, &req.queue);
            } else if pick.closed[i] && super::limits::has_covered(&self.conn, &from_where, l)? {
                self.turns.wait(l, &req.queue, req.now);
            } else {
                self.turns.leave(l, &req.queue);
            }
        }
        Ok(taken)
    }

    /// Each outcome in a savepoint of its own, so that one refused (a stale fencing
    /// token) leaves the others; then the claim, with a slot for each attempt that ended.
    fn settle_outcomes(&mut self, s: &crate::Settle) -> Result<crate::Settled> {
        let mut outcomes = Vec::with_capacity(s.outcomes.len());
        // Most often every outcome lands: all of them in one savepoint first (each
        // savepoint copies every page it changes into SQLite's statement journal once),
        // and one by one only when one of them is refused.
        if s.outcomes.len() > 1 {
            let together = self.savepoint(|w| {
                for t in s.outcomes.iter().flat_map(|o| o.iter()) {
                    w.transition(t, Resume::No, false)?;
                }
                Ok(())
            });
            if self.lost {
                return Err(Error::Internal(
                    "the write's transaction was rolled back".into(),
                ));
            }
            if together.is_ok() {
                outcomes.resize_with(s.outcomes.len(), || Ok(()));
            }
        }
        for transitions in s.outcomes.iter().skip(outcomes.len()) {
            outcomes.push(self.savepoint(|w| {
                for t in transitions.iter() {
                    w.transition(t, Resume::No, false)?;
                }
                Ok(())
            }));
            if self.lost {
                return Err(Error::Internal(
                    "the write's transaction was rolled back".into(),
                ));
            }
        }
        let mut settled = crate::Settled {
            outcomes,
            claimed: Vec::new(),
        };
        if let Some(claim) = &s.claim {
            let limit = claim.limit + settled.freed();
            if limit > 0 {
                settled.claimed = self.claim(&ClaimRequest {
                    limit,
                    ..claim.clone()
                })?;
            }
        }
        Ok(settled)
    }

    /// Moves one job to `t.to` and records its event. The job is read back only when
    /// `read_back` is set: workers reporting an outcome do not need it.
    fn transition(
        &mut self,
        t: &Transition,
        resume: Resume,
        read_back: bool,
    ) -> Result<Option<JobRow>> {
        // Its dependents are found by their edges.
        self.write_edges()?;
        let found: Option<(i64, String, i64, i64, String, Option<String>)> = self
            .conn
            .prepare_cached(
                "SELECT seq, state, fence, event_seq, queue, workflow_id FROM jobs WHERE id = ?1",
            )?
            .query_row([&t.job_id], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                ))
            })
            .optional()?;
        let Some((key, from, fence, event_seq, queue, workflow)) = found else {
            return Err(Error::NotFound(t.job_id.clone()));
        };
        let from = super::codes::parse_state(&from)?;
        if let Some(expected) = t.fence
            && (fence as u64 != expected || !from.is_executing())
        {
            return Err(Error::StaleFence {
                id: t.job_id.clone(),
                fence: expected,
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
        let event_seq = event_seq as u64 + 1;
        // What a transition changes, in one statement; the CASEs keep what it leaves.
        // A manual retry (`budget`) starts a fresh attempt budget and clears the last
        // outcome; completing clears an earlier attempt's error.
        self.conn
            .prepare_cached(
                "UPDATE jobs SET state = ?2, updated_at = ?3, event_seq = ?4, \
                 attempt_base = CASE WHEN ?5 THEN attempt ELSE attempt_base END, \
                 result = CASE WHEN ?6 IS NOT NULL THEN ?6 WHEN ?5 THEN NULL ELSE result END, \
                 error_code = CASE WHEN ?7 IS NOT NULL THEN ?7 WHEN ?5 OR ?11 THEN NULL ELSE error_code END, \
                 error_message = CASE WHEN ?7 IS NOT NULL THEN ?8 WHEN ?5 OR ?11 THEN NULL ELSE error_message END, \
                 run_at = CASE WHEN ?9 THEN ?10 ELSE run_at END, \
                 finished_at = CASE WHEN ?12 THEN COALESCE(finished_at, ?3) WHEN ?5 THEN NULL ELSE finished_at END, \
                 progress = CASE WHEN ?11 THEN 1.0 WHEN ?5 THEN NULL ELSE progress END, \
                 message = CASE WHEN ?5 THEN NULL ELSE message END, \
                 step = CASE WHEN ?5 THEN NULL ELSE step END, \
                 checkpoint = CASE WHEN ?13 THEN NULL ELSE checkpoint END, \
                 attempt = MAX(attempt - ?14, 0), \
                 recoveries = recoveries + ?15 \
                 WHERE seq = ?1",
            )?
            .execute(params![
                key,
                t.to.as_str(),
                t.now,
                event_seq as i64,
                c.new_attempt_budget,
                c.result.as_ref().map(json_text),
                c.error.as_ref().map(|e| e.code.as_str()),
                c.error.as_ref().map(|e| e.message.as_str()),
                t.to == State::Scheduled,
                c.run_at,
                t.to == State::Completed,
                t.to.is_terminal(),
                c.clear_checkpoint,
                // The next claim continues the interrupted attempt: give its number back.
                i64::from(resume != Resume::No),
                i64::from(resume == Resume::AfterCrash),
            ])?;
        if let Some(usage) = &c.usage {
            // Only an attempt whose processes were measured has one: other jobs'
            // transitions skip this statement.
            self.conn
                .prepare_cached("UPDATE jobs SET usage = ?2 WHERE seq = ?1")?
                .execute(params![key, json_text(&json!(usage))])?;
        }
        self.moved(queue, Some(from), t.to, t.now);
        let mut data = t.data.clone();
        if let Value::Object(map) = &mut data {
            map.insert("state".into(), json!(t.to));
            map.insert("from".into(), json!(from));
            if let Some(w) = workflow {
                map.insert("workflow".into(), json!(w));
            }
        }
        self.event(Some((&t.job_id, key)), event_seq, t.event, t.now, data)?;
        // Its dependents learn of its end in this same write.
        self.after_transition(key, &t.job_id, from, t.to, t.now)?;
        if read_back {
            Ok(self.job_row(&t.job_id)?)
        } else {
            Ok(None)
        }
    }

    /// The job's row key, event sequence and attempt, if the attempt holding `fence`
    /// still executes it.
    fn fenced(&mut self, job_id: &str, fence: u64) -> Result<(i64, u64, u32)> {
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
        let state = super::codes::parse_state(&state)?;
        if row_fence as u64 != fence || !state.is_executing() {
            return Err(Error::StaleFence {
                id: job_id.to_owned(),
                fence,
            });
        }
        Ok((seq, event_seq as u64, attempt))
    }

    fn append_logs(&mut self, req: &AppendLogs) -> Result<Appended> {
        let (key, event_seq, attempt) = self.fenced(&req.job_id, req.fence)?;
        let (count, full): (i64, bool) = self
            .conn
            .prepare_cached("SELECT log_lines, log_full FROM jobs WHERE seq = ?1")?
            .query_row([key], |r| Ok((r.get(0)?, r.get(1)?)))?;
        if full {
            return Ok(Appended {
                stored: 0,
                full: true,
            });
        }
        let count = count as u64;
        let room = req.max_lines.saturating_sub(count) as usize;
        let take = room.min(req.lines.len());
        let mut lines: Vec<(&str, std::borrow::Cow<'_, str>, Value)> = req.lines[..take]
            .iter()
            .map(|(stream, line)| (stream.as_str(), line.as_str().into(), Value::Null))
            .collect();
        let overflow = take < req.lines.len();
        if overflow {
            let marker = format!(
                "log truncated: the job printed more than {} lines; later lines are not kept",
                req.max_lines
            );
            lines.push(("baton", marker.into(), json!(true)));
        }
        let mut seq = count;
        let mut event_seq = event_seq;
        for (stream, line, truncated) in &lines {
            seq += 1;
            event_seq += 1;
            self.conn
                .prepare_cached(
                    "INSERT INTO logs (job_key, seq, attempt, stream, line, at) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )?
                .execute(params![key, seq as i64, attempt, stream, line, req.now])?;
            let mut data = json!({"stream": stream, "line": line, "seq": seq});
            if truncated.as_bool() == Some(true) {
                data["truncated"] = json!(true);
            }
            self.event(
                Some((&req.job_id, key)),
                event_seq,
                EventKind::Log,
                req.now,
                data,
            )?;
        }
        self.conn
            .prepare_cached(
                "UPDATE jobs SET log_lines = ?2, log_full = ?3, event_seq = ?4 WHERE seq = ?1",
            )?
            .execute(params![key, seq as i64, overflow, event_seq as i64])?;
        Ok(Appended {
            stored: take,
            full: overflow,
        })
    }

    fn put_pipeline(&mut self, spec: &baton_core::PipelineSpec, now: Millis) -> Result<Pipeline> {
        let text = serde_json::to_string(spec)
            .map_err(|e| Error::Internal(format!("cannot encode pipeline {:?}: {e}", spec.id)))?;
        let created_at: Millis = self
            .conn
            .prepare_cached(
                "INSERT INTO pipelines (id, spec, created_at, updated_at) VALUES (?1, ?2, ?3, ?3) \
                 ON CONFLICT (id) DO UPDATE SET spec = excluded.spec, updated_at = excluded.updated_at \
                 RETURNING created_at",
            )?
            .query_row(params![spec.id, text, now], |r| r.get(0))?;
        Ok(Pipeline {
            spec: spec.clone(),
            created_at,
            updated_at: now,
        })
    }

    fn update(&mut self, job_id: &str, fence: u64, now: Millis, update: &Update) -> Result<()> {
        let (seq, event_seq, attempt) = self.fenced(job_id, fence)?;
        let event_seq = event_seq + 1;
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
                let text = json_text(data);
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
            Update::Usage(usage) => {
                let data = json!(usage);
                self.conn
                    .prepare_cached("UPDATE jobs SET usage = ?2, event_seq = ?3 WHERE seq = ?1")?
                    .execute(params![seq, json_text(&data), event_seq as i64])?;
                (EventKind::Usage, data)
            }
        };
        self.event(Some((job_id, seq)), event_seq, kind, now, data)
    }

    fn promote(&mut self, now: Millis) -> Result<Promoted> {
        state::check(Some(State::Scheduled), State::Queued).map_err(|source| {
            Error::Transition {
                id: String::new(),
                source,
            }
        })?;
        let promoted: Vec<(String, String, i64, i64, Option<String>)> = {
            let mut stmt = self.conn.prepare_cached(
                "UPDATE jobs SET state = 'queued', updated_at = ?1, event_seq = event_seq + 1 \
                 WHERE seq IN (SELECT seq FROM jobs WHERE state = 'scheduled' AND run_at <= ?1 \
                 ORDER BY run_at LIMIT ?2) RETURNING id, queue, event_seq, seq, workflow_id",
            )?;
            stmt.query_map(params![now, PROMOTE_BATCH], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })?
            .collect::<rusqlite::Result<_>>()?
        };
        for (_, queue, _, _, _) in &promoted {
            self.moved(queue.clone(), Some(State::Scheduled), State::Queued, now);
        }
        let mut queues: Vec<String> = Vec::new();
        for (id, queue, seq, key, workflow) in &promoted {
            let mut data = json!({"state": "queued", "from": "scheduled"});
            if let Some(w) = workflow {
                data["workflow"] = json!(w);
            }
            self.event(Some((id, *key)), *seq as u64, EventKind::Queued, now, data)?;
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
                "SELECT {JOB_COLUMNS} FROM jobs WHERE state IN ('running', 'paused', 'stopping') \
                 AND (?1 IS NULL OR server_id = ?1) \
                 AND (?2 IS NULL OR id IN (SELECT value FROM json_each(?2))) ORDER BY seq"
            ))?;
            let jobs = req.jobs.as_ref().map(|j| json!(j).to_string());
            stmt.query_map(params![req.server_id.as_deref(), jobs], read_job)?
                .collect::<rusqlite::Result<_>>()?
        };
        // The processes of these jobs are gone (the engine killed what was left): a
        // later recovery must not look for them again.
        self.conn
            .prepare_cached(
                "UPDATE jobs SET pgid = NULL, proc_start = NULL \
                 WHERE state IN ('running', 'paused', 'stopping') AND pgid IS NOT NULL \
                 AND (?1 IS NULL OR server_id = ?1) \
                 AND (?2 IS NULL OR id IN (SELECT value FROM json_each(?2)))",
            )?
            .execute(params![
                req.server_id.as_deref(),
                req.jobs.as_ref().map(|j| json!(j).to_string())
            ])?;
        let mut out = Vec::with_capacity(stranded.len());
        for row in stranded {
            let was = row.job.state;
            let id = row.job.id.clone();
            let cleanup = req.cleanup.get(&id);
            let with_cleanup = |mut data: Value| {
                if let (Value::Object(map), Some(Value::Object(extra))) = (&mut data, cleanup) {
                    map.extend(extra.clone());
                }
                data
            };
            let t = |to, event| Transition::new(id.clone(), to, event, req.now);
            let mut crashed = super::crash::facts(&self.conn, row.seq, &id)?;
            crashed.insert(
                "reason".into(),
                json!("the engine stopped while the job ran"),
            );
            crashed.insert("was".into(), json!(was));
            self.transition(
                &t(State::Crashed, EventKind::Crashed).data(with_cleanup(Value::Object(crashed))),
                Resume::No,
                false,
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
                    false,
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
                    false,
                )?;
                State::Failed
            } else if req.manual {
                State::Crashed
            } else {
                self.transition(
                    &t(State::Queued, EventKind::Recovered).data(with_cleanup(json!({
                        "from_checkpoint": row.checkpoint.is_some(),
                        "recoveries": row.job.recoveries + 1,
                    }))),
                    Resume::AfterCrash,
                    false,
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
                self.transition(&t, Resume::No, false)?;
                State::Cancelled
            } else {
                if was == State::Paused {
                    let t = Transition::new(id.clone(), State::Running, EventKind::Resumed, now)
                        .data(json!({"reason": "shutdown"}));
                    self.transition(&t, Resume::No, false)?;
                }
                let t = Transition::new(id.clone(), State::Queued, EventKind::Queued, now).data(
                    json!({"reason": "shutdown", "from_checkpoint": row.checkpoint.is_some()}),
                );
                self.transition(&t, Resume::AfterShutdown, false)?;
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

fn nanos(since: std::time::Instant) -> u64 {
    u64::try_from(since.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// A JSON value's text for a column. `serde_json::to_string` writes into one buffer
/// sized up front; `Value`'s `Display` goes through `fmt::Write` piece by piece and
/// regrows its string, which showed as a tenth of the writer's time in a batch submit.
pub(super) fn json_text(v: &Value) -> String {
    serde_json::to_string(v).unwrap_or_default()
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

/// The `FROM jobs WHERE ...` of a claim: the queue's queued jobs, of the claimer's kinds.
/// The queue and kinds are written into the SQL, not bound (see `Writer::claim`).
fn claim_from_where(req: &ClaimRequest) -> String {
    let kinds = match &req.kinds {
        None => String::new(),
        Some(kinds) => format!(
            " AND kind IN ({})",
            kinds
                .iter()
                .map(|k| format!("'{}'", k.replace('\'', "''")))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    format!(
        "FROM jobs WHERE queue = '{}' AND state = 'queued'{kinds}",
        req.queue.replace('\'', "''")
    )
}
