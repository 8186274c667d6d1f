//! Baton's stores: the [`Store`] trait that the engine talks to, the embedded SQLite
//! store, and the conformance suite that every store runs.

pub mod conformance;
pub mod list;
pub mod new_job;
pub mod schedule;
pub mod sqlite;
pub mod turns;
pub mod workflow;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use baton_core::{
    Backoff, ErrorInfo, Event, EventKind, Job, Millis, NewJob, State, TransitionError,
};
use serde_json::Value;
use tokio::sync::broadcast;

pub use list::{JobCursor, JobSort, PREFIX_MIN_CHARS, is_prefix_term, search_terms};
pub use schedule::{
    Fire, FireAction, FireOutcome, FirePage, FireReason, FireRecord, FireSlot, Fired, NewSchedule,
    PutSchedule, Released, ScheduleFilter, SchedulePage, ScheduleTimer,
};
pub use sqlite::{Durability, SqliteOptions, SqliteStore};
pub use workflow::{
    Link, NewWorkflow, SubmittedWorkflow, WorkflowAction, WorkflowChange, WorkflowFilter,
    WorkflowPage,
};

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum Error {
    #[error("job {0:?} not found")]
    NotFound(String),
    #[error("job {id:?}: {source}")]
    Transition {
        id: String,
        #[source]
        source: TransitionError,
    },
    #[error("job {id:?} is {actual}, not {expected}")]
    Conflict {
        id: String,
        actual: State,
        expected: String,
    },
    #[error("job {id:?} is no longer held by this attempt (fencing token {fence} is stale)")]
    StaleFence { id: String, fence: u64 },
    #[error("store {store} is owned by another Baton engine ({holder})")]
    Owned { store: String, holder: String },
    /// A server of a shared store was declared down (its heartbeats stopped) and its
    /// attempts were recovered elsewhere: it must stop what it runs.
    #[error("server {0} was declared down by another server and its jobs recovered elsewhere")]
    Declared(String),
    #[error("invalid store: {0}")]
    Config(String),
    #[error("the store is closed")]
    Closed,
    /// The database cannot be reached now (a shared store's server is down or
    /// unreachable); the same write may pass later.
    #[error("the store is unavailable: {0}")]
    Unavailable(String),
    /// The writer's queue is full: the caller should retry shortly.
    #[error("the store is overloaded: {queued} writes are queued; retry shortly")]
    Overloaded { queued: usize },
    #[error("store error: {0}")]
    Internal(String),
    #[error("job {id:?} depends on {dependency:?}, which does not exist")]
    UnknownDependency { id: String, dependency: String },
    #[error("unique key {key:?} is held by job {holder:?} ({state})")]
    UniqueHeld {
        key: String,
        holder: String,
        state: State,
    },
    #[error("job {0:?} exists already")]
    JobExists(String),
    #[error("workflow {0:?} not found")]
    WorkflowNotFound(String),
    #[error("cannot {action} workflow {id:?}: {reason}")]
    WorkflowIllegal {
        id: String,
        action: &'static str,
        reason: String,
    },
}

impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Self {
        // A stored value Baton does not know: its own message names it.
        if let rusqlite::Error::FromSqlConversionFailure(_, _, inner) = &e
            && let Some(bad) = inner.downcast_ref::<sqlite::codes::Unreadable>()
        {
            return Error::Internal(bad.to_string());
        }
        Error::Internal(e.to_string())
    }
}

impl Error {
    /// Whether the store refused the write for good (a stale fencing token, a job that
    /// moved on or is gone, a closed store): trying the same write again cannot help.
    /// Other errors (IO, a full disk, an overloaded writer) may pass when retried.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            Error::StaleFence { .. }
                | Error::NotFound(_)
                | Error::Transition { .. }
                | Error::Conflict { .. }
                | Error::Closed
                | Error::Owned { .. }
                | Error::Declared(_)
                | Error::Config(_)
        )
    }
}

/// Finished attempts' outcomes and a queue's next claim, written together by
/// [`Store::settle`]: the slots the outcomes free are filled in the same write.
#[derive(Clone, Debug, Default)]
pub struct Settle {
    /// Each attempt's outcome: its transitions (with their fencing tokens), applied in
    /// order, all or none.
    pub outcomes: Vec<Arc<[Transition]>>,
    /// Claimed after the outcomes. Its `limit` counts the slots free without them; each
    /// outcome that ends its attempt (written, or refused for good) adds one.
    pub claim: Option<ClaimRequest>,
}

/// What [`Store::settle`] did: each outcome's result, in order, and the jobs claimed.
#[derive(Debug)]
pub struct Settled {
    pub outcomes: Vec<Result<()>>,
    pub claimed: Vec<Claimed>,
}

impl Settled {
    /// How many outcomes ended their attempt's hold on a slot: written, or refused for
    /// good. The others may be retried.
    pub fn freed(&self) -> usize {
        self.outcomes
            .iter()
            .filter(|r| r.as_ref().err().is_none_or(Error::is_refusal))
            .count()
    }
}

/// Which finished jobs [`Store::prune`] removes: those of each queue whose end (and
/// last change) is older than its queue's retention.
#[derive(Clone, Debug, Default)]
pub struct PruneRequest {
    pub now: Millis,
    /// The retention of a queue not in `queues`; `None` keeps its jobs for ever.
    pub retention: Option<Millis>,
    /// Queues with a retention of their own (`None`: kept for ever).
    pub queues: std::collections::BTreeMap<String, Option<Millis>>,
    /// The most jobs removed by this call; the caller calls again while
    /// [`Pruned::more`] says so, and other writes run between the calls.
    pub limit: usize,
    /// Where the previous call of this round stopped looking ([`Pruned::next`]): jobs
    /// it looked at and kept are not looked at again until the next round.
    pub after: Option<PruneCursor>,
}

/// A place in the finished jobs, by end time and row key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PruneCursor {
    pub finished_at: Millis,
    pub key: i64,
}

impl PruneRequest {
    /// The retention of `queue`.
    pub fn retention_of(&self, queue: &str) -> Option<Millis> {
        match self.queues.get(queue) {
            Some(own) => *own,
            None => self.retention,
        }
    }
}

/// What [`Store::prune`] removed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pruned {
    pub jobs: u64,
    pub events: u64,
    /// Schedules' fires past the default retention (each schedule keeps its newest).
    pub fires: u64,
    /// The limit was reached: more may be due.
    pub more: bool,
    /// Where to go on from: the next call's [`PruneRequest::after`].
    pub next: Option<PruneCursor>,
}

/// The result of submitting one job.
#[derive(Clone, Debug, PartialEq)]
pub struct Submitted {
    pub job: Job,
    /// False when a job with the same id existed already; `job` is that job.
    pub created: bool,
    /// Set when the job was started at once (see [`Store::submit_and_start`]).
    pub claimed: Option<Claimed>,
}

/// Start up to `max` of the submitted queued jobs at once, on `server_id`.
#[derive(Clone, Debug)]
pub struct StartNow {
    pub server_id: String,
    pub max: usize,
}

#[derive(Clone, Debug)]
pub struct ClaimRequest {
    pub queue: String,
    pub limit: usize,
    /// The engine, or the remote worker, that the attempts are for.
    pub server_id: String,
    pub now: Millis,
    /// Only jobs of these kinds (the ones the claimer has handlers for); `None`: any.
    pub kinds: Option<Vec<String>>,
}

/// A job handed to a worker: everything it needs to run the attempt.
#[derive(Clone, Debug, PartialEq)]
pub struct Claimed {
    pub job: Job,
    /// The attempt's fencing token; every write of the worker carries it.
    pub fence: u64,
    /// The checkpoint to resume from, if any.
    pub checkpoint: Option<Value>,
    pub exec: Option<Value>,
    pub backoff: Backoff,
    pub timeout: Option<Duration>,
    pub grace: Duration,
    /// Attempts left after this one before the job fails for good.
    pub retries_left: u32,
}

/// A state change with its event: one atomic write.
#[derive(Clone, Debug)]
pub struct Transition {
    pub job_id: String,
    pub to: State,
    /// Worker writes carry their fencing token; a stale one is refused.
    pub fence: Option<u64>,
    /// When set, the job must be in one of these states (compare and set).
    pub expect: Option<Vec<State>>,
    pub event: EventKind,
    pub data: Value,
    pub changes: Changes,
    pub now: Millis,
}

impl Transition {
    pub fn new(job_id: impl Into<String>, to: State, event: EventKind, now: Millis) -> Self {
        Self {
            job_id: job_id.into(),
            to,
            fence: None,
            expect: None,
            event,
            data: Value::Object(Default::default()),
            changes: Changes::default(),
            now,
        }
    }

    pub fn fence(mut self, fence: u64) -> Self {
        self.fence = Some(fence);
        self
    }

    pub fn expect(mut self, states: &[State]) -> Self {
        self.expect = Some(states.to_vec());
        self
    }

    pub fn data(mut self, data: Value) -> Self {
        self.data = data;
        self
    }

    pub fn changes(mut self, changes: Changes) -> Self {
        self.changes = changes;
        self
    }
}

/// What a transition changes besides the state.
#[derive(Clone, Debug, Default)]
pub struct Changes {
    pub result: Option<Value>,
    pub error: Option<ErrorInfo>,
    pub run_at: Option<Millis>,
    /// A manual retry: a fresh attempt budget; clears result, error and finish time.
    pub new_attempt_budget: bool,
    /// Forget the last checkpoint (a retry that starts from scratch).
    pub clear_checkpoint: bool,
    /// What the ending attempt's processes used, kept as the job's `usage`.
    pub usage: Option<baton_core::Usage>,
}

/// Data a running attempt records without changing state; each is also an event.
#[derive(Clone, Debug, PartialEq)]
pub enum Update {
    Progress {
        fraction: Option<f64>,
        message: Option<String>,
    },
    Step(String),
    Output(String),
    Checkpoint {
        data: Value,
        step: Option<String>,
    },
    /// What the attempt's processes use now: kept as the job's `usage`, with a
    /// `job.usage` event.
    Usage(baton_core::Usage),
}

/// Outcome of moving due `scheduled` jobs to `queued`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Promoted {
    /// Queues that received jobs.
    pub queues: Vec<String>,
    pub count: usize,
    /// The earliest `run_at` still waiting.
    pub next_due: Option<Millis>,
}

/// What crash recovery did to one job.
#[derive(Clone, Debug, PartialEq)]
pub struct Recovered {
    pub job_id: String,
    pub queue: String,
    pub was: State,
    pub now: State,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct RecoverRequest {
    pub now: Millis,
    /// The dead server whose attempts are recovered. `None`: every executing attempt,
    /// for a store that one engine owns (it holds the store's lock, so whatever ran
    /// before it belongs to an engine that is gone). A store shared by several servers
    /// recovers only the named server's attempts, never a live one's.
    pub server_id: Option<String>,
    /// Only the attempts of these jobs (those a remote worker held when its
    /// connection dropped); `None`: every attempt of the server.
    pub jobs: Option<Vec<String>>,
    /// Leave crashed jobs for a person instead of queueing them again.
    pub manual: bool,
    /// What the engine cleaned up for a job before recovering it (for example the
    /// process groups it killed), by job id: merged into its `job.crashed` and
    /// `job.recovered` events.
    pub cleanup: std::collections::BTreeMap<String, Value>,
}

/// The OS process group a command job's current process runs in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct JobProcess {
    /// The process group id (the leader's pid).
    pub pgid: i32,
    /// The leader's start time (field 22 of `/proc/PID/stat`, clock ticks since boot),
    /// so that a reused pid is never mistaken for the job's process.
    pub start_time: u64,
}

/// A process group recorded for a job that is executing (`running`, `paused` or
/// `stopping`) according to the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessRecord {
    pub job_id: String,
    pub process: JobProcess,
    /// The server whose attempt started it, and that server's host (when the server is
    /// known): a process group id means something only on its own machine.
    pub server_id: Option<String>,
    pub host: Option<String>,
}

/// Log lines captured from a job's process, appended by its attempt.
#[derive(Clone, Debug, PartialEq)]
pub struct AppendLogs {
    pub job_id: String,
    pub fence: u64,
    pub now: Millis,
    /// `(stream, line)`: the stream is `stdout`, `stderr` or `baton` (the engine's own
    /// remarks, such as a malformed directive).
    pub lines: Vec<(String, String)>,
    /// The most lines kept for the job; past it one marker line says the log was
    /// truncated, and later lines are dropped.
    pub max_lines: u64,
}

/// What an append kept.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Appended {
    pub stored: usize,
    /// The job's log is full: later lines will be dropped.
    pub full: bool,
}

/// One captured log line. `seq` counts from 1 per job.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct LogLine {
    pub seq: u64,
    pub attempt: u32,
    pub stream: String,
    pub line: String,
    #[serde(with = "baton_core::time::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub at: Millis,
}

/// A stored pipeline definition.
#[derive(Clone, Debug, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub struct Pipeline {
    #[serde(flatten)]
    pub spec: baton_core::PipelineSpec,
    #[serde(with = "baton_core::time::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Millis,
    #[serde(with = "baton_core::time::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: Millis,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ServerInfo {
    pub id: String,
    pub host: String,
    pub pid: u32,
    pub url: Option<String>,
    #[serde(with = "baton_core::time::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub started_at: Millis,
    #[serde(with = "baton_core::time::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub heartbeat_at: Millis,
    #[serde(with = "baton_core::time::opt_rfc3339")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub stopped_at: Option<Millis>,
    pub queues: Vec<String>,
    pub workers: u32,
}

#[derive(Clone, Debug, Default)]
pub struct JobFilter {
    /// Empty: every state but `deleted`.
    pub states: Vec<State>,
    pub queue: Option<String>,
    pub kind: Option<String>,
    pub label: Option<(String, String)>,
    /// Terms (see [`search_terms`]) that each match words of the id (or its last 4, 6
    /// or 8 characters), kind, a label (`key:value` or `key=value`) or the error
    /// (code and message).
    pub text: Option<String>,
    pub limit: usize,
    /// A [`JobCursor`] of the same sort, as a previous page wrote it.
    pub cursor: Option<String>,
    pub sort: JobSort,
    /// Jobs of this workflow.
    pub workflow: Option<String>,
    /// Jobs submitted by this schedule.
    pub schedule: Option<String>,
}

/// Past this many matches, a list filtered by more than states and a queue stops
/// counting: its total is then a lower bound (`JobPage::total_exact` is false), since
/// counting further would read every job.
pub const LIST_COUNT_CAP: u64 = 10_000;

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct JobPage {
    pub jobs: Vec<Job>,
    pub next_cursor: Option<String>,
    /// Jobs matching the filter, or, when `total_exact` is false, a lower bound.
    pub total: u64,
    /// False when counting stopped at a cap: there are at least `total`.
    pub total_exact: bool,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Checkpoint {
    pub seq: u64,
    pub attempt: u32,
    pub step: Option<String>,
    pub data: Value,
    #[serde(with = "baton_core::time::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub at: Millis,
}

/// Job counts by queue and state.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Counts {
    pub rows: Vec<(String, State, u64)>,
    /// The id of the last event these counts include (read with them, in one
    /// snapshot): a reader that follows the stream applies only the events after it.
    pub last_event: u64,
}

impl Counts {
    /// Every job, whatever its state.
    pub fn all(&self) -> u64 {
        self.rows.iter().map(|r| r.2).sum()
    }

    pub fn total(&self, state: State) -> u64 {
        self.rows
            .iter()
            .filter(|(_, s, _)| *s == state)
            .map(|(_, _, n)| n)
            .sum()
    }
}

/// The width of a bucket of [`Store::throughput`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Span {
    /// One second; kept for [`SECONDS_KEPT`].
    Second,
    /// One minute; kept for [`MINUTES_KEPT`].
    Minute,
}

impl Span {
    pub fn millis(self) -> Millis {
        match self {
            Span::Second => 1000,
            Span::Minute => 60_000,
        }
    }

    /// How far back buckets of this width are kept.
    pub fn kept(self) -> Millis {
        match self {
            Span::Second => SECONDS_KEPT,
            Span::Minute => MINUTES_KEPT,
        }
    }
}

/// Per-second counts are kept for 15 minutes (the chart's live window)...
pub const SECONDS_KEPT: Millis = 15 * 60_000;
/// ...and per-minute counts for a day (its longest).
pub const MINUTES_KEPT: Millis = 24 * 60 * 60_000;

/// Jobs of one queue that completed and failed within one bucket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ThroughputRow {
    /// The bucket's start.
    pub at: Millis,
    pub queue: String,
    pub completed: u64,
    pub failed: u64,
}

/// How many transactions a store committed, and how many writes they held (their
/// ratio is how well group commit batches), and what they cost its writer.
#[derive(Debug, Default)]
pub struct WriteStats {
    pub batches: std::sync::atomic::AtomicU64,
    pub writes: std::sync::atomic::AtomicU64,
    /// Nanoseconds the writer spent applying and committing batches (the commit's
    /// disk writes and fsync included), not waiting for work.
    pub busy_ns: std::sync::atomic::AtomicU64,
    /// The part of `busy_ns` spent in the batches' `COMMIT`: writing the log and
    /// waiting for the disk.
    pub commit_ns: std::sync::atomic::AtomicU64,
    /// Nanoseconds the writer spent indexing jobs for search with no write waiting
    /// (not in `busy_ns`).
    pub index_ns: std::sync::atomic::AtomicU64,
    /// SQL statements the writer ran, when the store counts them (the SQLite store's
    /// `count_statements` option; zero otherwise): each run of a statement, every
    /// `BEGIN`, `SAVEPOINT`, `RELEASE` and `COMMIT` included, not the bodies of
    /// triggers nor the statements SQLite runs inside another.
    pub statements: std::sync::atomic::AtomicU64,
    /// SQL statements the writer ran indexing for search with no write waiting (not in
    /// `statements`).
    pub index_statements: std::sync::atomic::AtomicU64,
    /// Set while the writer indexes with no write waiting: the statements it runs then
    /// count in `index_statements`.
    pub(crate) indexing: std::sync::atomic::AtomicBool,
}

/// A job store. Every write is atomic together with its events; events are published
/// to subscribers once durable.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Stores new jobs; a job whose id exists already is returned as it is.
    async fn submit(&self, jobs: Vec<NewJob>) -> Result<Vec<Submitted>>;
    /// Like `submit`, but up to `start.max` of the new queued jobs go straight to
    /// `running` on `start.server_id` in the same write (both events are recorded), for
    /// a caller that has idle workers and no backlog: one write instead of two.
    async fn submit_and_start(&self, jobs: Vec<NewJob>, start: StartNow) -> Result<Vec<Submitted>>;
    /// Moves up to `limit` queued jobs of a queue to `running`, highest priority first,
    /// each with a new fencing token. A job covered by a concurrency limit (see
    /// [`Store::set_concurrency_limits`]) is passed over while the limit is full or
    /// other queues wait their turn at it ([`turns`]).
    async fn claim(&self, req: ClaimRequest) -> Result<Vec<Claimed>>;
    /// Sets the concurrency limits that claims obey from now on, across every queue.
    /// Engines sharing a store set the same ones. A job that a limit covers is never
    /// started by [`Store::submit_and_start`]: it waits for a claim.
    fn set_concurrency_limits(&self, limits: Vec<baton_core::ConcurrencyLimit>);
    /// How many of the jobs each limit covers hold a slot now (`running`, `paused` or
    /// `stopping`), in the order given.
    async fn concurrency_held(&self, limits: &[baton_core::ConcurrencyLimit]) -> Result<Vec<u64>>;
    async fn transition(&self, t: Transition) -> Result<Job>;
    /// The same write as `transition`, for a caller that does not need the job back (a
    /// worker reporting an attempt's outcome).
    async fn record(&self, t: Transition) -> Result<()>;
    /// Records attempts' outcomes and claims their replacements in one write ("complete
    /// and claim"): a worker's slot is filled again by the same commit that frees it.
    /// Each outcome is all or none on its own; the claim runs after them. Events are
    /// published once the write is durable, as for every write.
    async fn settle(&self, s: Settle) -> Result<Settled> {
        let mut outcomes = Vec::with_capacity(s.outcomes.len());
        for transitions in s.outcomes {
            let mut result = Ok(());
            for t in transitions.iter() {
                result = self.record(t.clone()).await;
                if result.is_err() {
                    break;
                }
            }
            outcomes.push(result);
        }
        let mut settled = Settled {
            outcomes,
            claimed: Vec::new(),
        };
        if let Some(mut claim) = s.claim {
            claim.limit += settled.freed();
            if claim.limit > 0 {
                settled.claimed = self.claim(claim).await?;
            }
        }
        Ok(settled)
    }
    async fn update(&self, job_id: &str, fence: u64, now: Millis, update: Update) -> Result<()>;
    /// Queues every `scheduled` job whose time has come.
    async fn promote_due(&self, now: Millis) -> Result<Promoted>;
    /// At start: every job left `running`, `paused` or `stopping` becomes `crashed`, then
    /// queued again from its last checkpoint (or kept for a person, or failed).
    async fn recover(&self, req: RecoverRequest) -> Result<Vec<Recovered>>;
    /// At shutdown: every job this server still executes goes back to `queued`, to
    /// continue from its last checkpoint without counting a crash (`job.queued` with
    /// reason `shutdown`); a job being stopped ends `cancelled`.
    async fn release(&self, server_id: &str, now: Millis) -> Result<Vec<Recovered>>;
    async fn register_server(&self, server: ServerInfo) -> Result<()>;
    async fn heartbeat(&self, server_id: &str, now: Millis) -> Result<()>;
    async fn server_stopped(&self, server_id: &str, now: Millis) -> Result<()>;

    async fn get(&self, id: &str) -> Result<Option<Job>>;
    async fn list(&self, filter: JobFilter) -> Result<JobPage>;
    async fn job_events(&self, job_id: &str, after_seq: u64, limit: usize) -> Result<Vec<Event>>;
    /// The job's events of these kinds only, in the job's order after `after_seq`.
    async fn job_events_of(
        &self,
        job_id: &str,
        kinds: &[EventKind],
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<Event>>;
    async fn events_after(&self, after_id: u64, limit: usize) -> Result<Vec<Event>>;
    /// The id of the last committed event (0 when there is none). Every event with a
    /// greater id is published after this call began: a subscriber that subscribes first
    /// and reads this next misses nothing between the store and the live stream.
    async fn last_event_id(&self) -> Result<u64>;
    /// The newest event id removed by retention (0 when none was): a reader resuming
    /// after an older id may have missed events that are gone.
    async fn events_pruned_upto(&self) -> Result<u64>;
    /// Removes finished jobs past their queue's retention, with their events, logs,
    /// checkpoints, labels and edges, and events of no job and schedules' fires (all
    /// but each schedule's newest) older than the default retention; at most `limit` jobs (and as many such events) a call. Never an
    /// unfinished job, nor a finished one that an unfinished job depends on.
    async fn prune(&self, req: PruneRequest) -> Result<Pruned>;
    async fn checkpoints(&self, job_id: &str) -> Result<Vec<Checkpoint>>;
    async fn servers(&self) -> Result<Vec<ServerInfo>>;
    async fn counts(&self) -> Result<Counts>;
    async fn next_due(&self) -> Result<Option<Millis>>;

    /// Records the process group that the attempt holding `fence` runs now (or none).
    async fn set_process(
        &self,
        job_id: &str,
        fence: u64,
        process: Option<JobProcess>,
    ) -> Result<()>;
    /// The process groups recorded for executing jobs: at start, before `recover`, the
    /// engine kills those a crash left behind.
    async fn processes(&self) -> Result<Vec<ProcessRecord>>;
    /// Appends log lines, each also a `job.log` event; bounded per job by `max_lines`.
    async fn append_logs(&self, req: AppendLogs) -> Result<Appended>;
    /// A job's log lines with `seq` greater than `after`, oldest first.
    async fn logs(&self, job_id: &str, after: u64, limit: usize) -> Result<Vec<LogLine>>;

    /// Creates or replaces a pipeline definition (validated by the caller).
    async fn put_pipeline(&self, spec: baton_core::PipelineSpec, now: Millis) -> Result<Pipeline>;
    async fn pipeline(&self, id: &str) -> Result<Option<Pipeline>>;
    /// Every stored pipeline, by id.
    async fn pipelines(&self) -> Result<Vec<Pipeline>>;
    /// Removes a definition; false when there was none. Jobs that ran it keep their steps.
    async fn delete_pipeline(&self, id: &str) -> Result<bool>;

    /// Creates a schedule; one with its id that exists already is returned unchanged,
    /// with `created` false.
    async fn create_schedule(&self, schedule: NewSchedule) -> Result<PutSchedule>;
    /// Creates or replaces a schedule. A replaced schedule keeps its creation time, its
    /// runs (`last_run`, `run_count`) and its history, and its next run when the
    /// replace leaves its trigger, time zone and enabled flag as they were.
    async fn put_schedule(&self, schedule: NewSchedule) -> Result<PutSchedule>;
    /// Removes a schedule and its history (the jobs it submitted stay); `None` when
    /// there was none.
    async fn delete_schedule(&self, id: &str) -> Result<Option<baton_core::Schedule>>;
    /// Enables a schedule with its next run, or disables it (`next_run` is then `None`).
    async fn set_schedule_enabled(
        &self,
        id: &str,
        enabled: bool,
        next_run: Option<Millis>,
        now: Millis,
    ) -> Result<Option<baton_core::Schedule>>;
    /// Fires a schedule in one atomic write: submits each slot's job (or skips it, or
    /// submits it `awaiting`, by the schedule's overlap policy, deciding on the jobs
    /// in the store at that moment), records each fire in the history with a
    /// `schedule.fired` event, and moves `next_run`, `last_run` and `run_count`. A
    /// crash loses or doubles no fire: either all of it is durable or none.
    async fn fire_schedule(&self, fire: Fire) -> Result<FireOutcome>;
    /// Queues the oldest `awaiting` job of a schedule once no other job of it is
    /// active (overlap `queue`).
    async fn release_schedule(&self, id: &str, now: Millis) -> Result<Released>;
    async fn schedule(&self, id: &str) -> Result<Option<baton_core::Schedule>>;
    /// Schedules by id, paginated.
    async fn schedules(&self, filter: ScheduleFilter) -> Result<SchedulePage>;
    /// A schedule's fires, newest first, each with its job's outcome now; `before` is
    /// a fire `seq` (the page's cursor).
    async fn schedule_history(
        &self,
        id: &str,
        before: Option<u64>,
        limit: usize,
    ) -> Result<FirePage>;
    /// Every enabled schedule with a next run: what a scheduler sleeps on.
    async fn schedule_timers(&self) -> Result<Vec<ScheduleTimer>>;
    /// Schedules with `awaiting` jobs (overlap `queue`).
    async fn awaiting_schedules(&self) -> Result<Vec<String>>;

    /// Stores a workflow's jobs and edges in one atomic write, all or nothing; a
    /// workflow whose id exists already is returned as it is.
    async fn submit_workflow(&self, workflow: NewWorkflow) -> Result<SubmittedWorkflow>;
    /// A workflow with its jobs and edges; `None` when there is none of that id.
    async fn workflow(&self, id: &str) -> Result<Option<baton_core::WorkflowGraph>>;
    /// Pauses, resumes, retries or cancels a workflow's jobs in one atomic write.
    async fn control_workflow(
        &self,
        id: &str,
        action: WorkflowAction,
        now: Millis,
    ) -> Result<WorkflowChange>;
    /// The jobs `job_id` depends on, in the order it lists them.
    async fn dependencies(&self, job_id: &str) -> Result<Vec<Link>>;
    /// The jobs that depend on `job_id`, oldest first.
    async fn dependents(&self, job_id: &str) -> Result<Vec<Link>>;
    /// Workflows, newest first, each with its jobs counted by state, a page at a time.
    async fn workflows(&self, filter: WorkflowFilter) -> Result<WorkflowPage>;
    /// Jobs completed and failed per bucket of `span` and queue, from `since` on (bucket
    /// starts at or after it), oldest first. Counted by the write that ends each job, so
    /// they survive a restart; buckets older than `span.kept()` before the newest end
    /// are pruned.
    async fn throughput(&self, span: Span, since: Millis) -> Result<Vec<ThroughputRow>>;
    /// Pauses or resumes a queue (stored, so it survives a restart), with a
    /// `queue.paused` or `queue.resumed` event; false when it was so already.
    async fn set_queue_paused(&self, queue: &str, paused: bool, now: Millis) -> Result<bool>;
    /// The queues that are paused.
    async fn paused_queues(&self) -> Result<Vec<String>>;
    /// Records an event of no job (`resource.alert`, `resource.cleared`) in a write of
    /// its own; returns once it is durable and published.
    async fn note(&self, kind: EventKind, data: serde_json::Value, now: Millis) -> Result<()>;

    /// Committed events, live. A receiver that lags reads the rest with `events_after`.
    fn subscribe(&self) -> broadcast::Receiver<Arc<Event>>;

    /// Takes or renews the leader lease of a shared store for `server_id`, for `ttl`
    /// of the database's time: `Some(term)` while this server leads, the term growing
    /// each time the lease changes hands. The leader does the work that one server
    /// does for all (the rescue of dead servers' jobs). A store one engine owns: that
    /// engine always leads, in term 1.
    async fn lead(&self, server_id: &str, ttl: Duration) -> Result<Option<u64>> {
        let _ = (server_id, ttl);
        Ok(Some(1))
    }

    /// The servers of a shared store that are not stopped and whose last heartbeat is
    /// older than `after` by the database's clock: gone, their attempts to recover.
    /// Empty for a store one engine owns.
    async fn gone_servers(&self, after: Duration) -> Result<Vec<String>> {
        let _ = after;
        Ok(Vec::new())
    }

    /// Marks a server of a shared store down (`server.down`) if it is still gone: not
    /// stopped, and its last heartbeat older than `after` by the database's clock.
    /// Returns whether it did; only then are its attempts recovered. The check and the
    /// mark are one write, which a heartbeat of that server waits for or follows: a
    /// server that wrote a heartbeat since it was found gone is left alone, and one
    /// marked down finds it out at its next heartbeat ([`Error::Declared`]). False
    /// for a store one engine owns.
    async fn declare_gone(&self, server_id: &str, after: Duration, now: Millis) -> Result<bool> {
        let _ = (server_id, after, now);
        Ok(false)
    }

    /// Whether several engines may share the store at once (a database server): an
    /// engine starting on it then recovers only the attempts of servers that are gone
    /// (stopped heartbeats), never a live one's. False for a store one engine owns.
    fn shared(&self) -> bool {
        false
    }

    /// On a shared store: the names of queues that received ready jobs through any
    /// engine on the store (hints, coalesced; one may be lost, so a listener also
    /// looks now and then). `None` for a store one engine owns.
    fn queue_hints(&self) -> Option<broadcast::Receiver<String>> {
        None
    }

    /// Counters of the store's writes, for metrics; `None` when it keeps none.
    fn write_stats(&self) -> Option<Arc<WriteStats>> {
        None
    }
    /// How hard a commit works to survive a power loss, as the database itself reports
    /// it (SQLite's `PRAGMA synchronous` read back on open: `"full"` or `"normal"`);
    /// `None` for a store without such a setting.
    fn synchronous(&self) -> Option<&'static str> {
        None
    }
    /// Flushes and stops the store's background work.
    /// Checks what the store keeps beside its rows (counts) against the rows
    /// themselves; an error names the difference. For tests and diagnosis.
    async fn verify(&self) -> Result<()> {
        Ok(())
    }

    async fn close(&self);
}
