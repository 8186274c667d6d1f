//! The embedded SQLite store: WAL, one writer thread with group commit, a pool of read
//! connections, and a lock file so that one engine at a time owns the database.

pub(crate) mod codes;
mod crash;
#[cfg(feature = "faults")]
mod faults;
mod floor;
mod graph;
mod limits;
mod list;
#[cfg(test)]
mod list_plan;
mod rows;
mod schedule_rows;
mod schema;
mod statements;
mod throughput;
mod writer;

use std::fs::{File, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use baton_core::{Event, EventKind, Job, Millis, NewJob};
use rusqlite::{Connection, OpenFlags};
use tokio::sync::{broadcast, oneshot};

use self::writer::{Msg, Op, Output, Request, Writer};
use crate::{
    AppendLogs, Appended, ClaimRequest, Claimed, Counts, Error, JobFilter, JobPage, JobProcess,
    LogLine, Pipeline, ProcessRecord, Promoted, RecoverRequest, Recovered, Result, ServerInfo,
    StartNow, Store, Submitted, Transition, Update,
};

#[cfg(feature = "faults")]
pub use faults::Faults;
pub use floor::{Floor, floor};
pub use schema::VERSION as SCHEMA_VERSION;

/// How hard a commit works to survive a power loss.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// `synchronous=FULL`: a commit survives a power loss.
    #[default]
    Full,
    /// `synchronous=NORMAL`: survives a crash of Baton, but a power loss may lose the
    /// last commits.
    Normal,
}

impl Durability {
    /// The `PRAGMA synchronous` level it asks SQLite for, as SQLite names it.
    pub fn as_str(self) -> &'static str {
        match self {
            Durability::Full => "full",
            Durability::Normal => "normal",
        }
    }
}

/// The writer connection's `PRAGMA synchronous`, read back from SQLite: the level its
/// commits really run at. Anything but what `durability` asked for is refused.
fn check_synchronous(conn: &Connection, o: &SqliteOptions) -> Result<&'static str> {
    let level: i64 = conn.query_row("PRAGMA synchronous", [], |r| r.get(0))?;
    let actual = match level {
        0 => "off",
        1 => "normal",
        2 => "full",
        3 => "extra",
        _ => "unknown",
    };
    if actual != o.durability.as_str() {
        return Err(Error::Config(format!(
            "store {}: SQLite runs with synchronous={actual} (level {level}), not the \
             synchronous={} that durability {:?} asked for",
            o.path.display(),
            o.durability.as_str(),
            o.durability.as_str()
        )));
    }
    Ok(actual)
}

impl std::str::FromStr for Durability {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "full" => Ok(Durability::Full),
            "normal" => Ok(Durability::Normal),
            other => Err(format!(
                "invalid durability {other:?}: expected \"full\" or \"normal\""
            )),
        }
    }
}

#[derive(Clone, Debug)]
pub struct SqliteOptions {
    pub path: PathBuf,
    pub durability: Durability,
    /// Read connections: a fixed pool, opened with the store; a read waits for a free
    /// one.
    pub readers: usize,
    /// Writes queued for the writer thread at most. When the queue is full a submit
    /// fails at once with [`Error::Overloaded`]; other writes (a worker's outcome, a
    /// heartbeat) wait for room, so that none is lost.
    pub write_queue: usize,
    pub busy_timeout: Duration,
    /// Events buffered for live subscribers before a slow one must catch up from the store.
    pub event_buffer: usize,
    /// Count the SQL statements the writer runs ([`crate::WriteStats::statements`]);
    /// off by default: it costs the writer a few percent.
    pub count_statements: bool,
    /// Faults a test injects (feature `faults`).
    #[cfg(feature = "faults")]
    pub faults: Faults,
}

impl SqliteOptions {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            durability: Durability::Full,
            readers: 4,
            write_queue: 10_000,
            busy_timeout: Duration::from_secs(5),
            event_buffer: 65_536,
            count_statements: false,
            #[cfg(feature = "faults")]
            faults: Faults::default(),
        }
    }

    pub fn durability(mut self, d: Durability) -> Self {
        self.durability = d;
        self
    }

    pub fn readers(mut self, n: usize) -> Self {
        self.readers = n;
        self
    }

    pub fn write_queue(mut self, capacity: usize) -> Self {
        self.write_queue = capacity;
        self
    }

    pub fn count_statements(mut self, on: bool) -> Self {
        self.count_statements = on;
        self
    }
}

/// The SQLite store. Cheap to clone.
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    tx: tokio::sync::mpsc::Sender<Msg>,
    readers: Mutex<Vec<Connection>>,
    /// One permit per read connection: a read holds one while it uses a connection.
    free_readers: tokio::sync::Semaphore,
    bus: broadcast::Sender<Arc<Event>>,
    lock: Mutex<File>,
    closed: Mutex<bool>,
    counters: Arc<crate::WriteStats>,
    /// The writer's `PRAGMA synchronous`, as read back on open.
    synchronous: &'static str,
    /// The concurrency limits claims obey, shared with the writer.
    limits: limits::Shared,
    #[cfg(feature = "faults")]
    faults: Faults,
}

impl SqliteStore {
    /// Opens (or creates) the database, takes its lock and migrates it.
    pub fn open(options: SqliteOptions) -> Result<Self> {
        let path = options.path.clone();
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir).map_err(|e| {
                Error::Config(format!("cannot create the folder {}: {e}", dir.display()))
            })?;
        }
        let lock = take_lock(&path)?;
        let mut conn = Connection::open(&path)
            .map_err(|e| Error::Config(format!("cannot open store {}: {e}", path.display())))?;
        configure(&conn, &options, true)?;
        let synchronous = check_synchronous(&conn, &options)?;
        schema::migrate(&mut conn)?;
        let (bus, _) = broadcast::channel(options.event_buffer.max(16));
        let counters = Arc::<crate::WriteStats>::default();
        if options.count_statements {
            statements::count(&mut conn, counters.clone())?;
        }
        let limits = limits::Shared::default();
        #[allow(unused_mut)]
        let mut writer = Writer::new(conn, bus.clone(), counters, limits.clone())?;
        #[cfg(feature = "faults")]
        {
            writer.faults = options.faults.clone();
        }
        let counters = writer.counters();
        let readers = (0..options.readers.max(1))
            .map(|_| open_reader(&options))
            .collect::<Result<Vec<_>>>()?;
        let (tx, rx) = tokio::sync::mpsc::channel(options.write_queue.max(1));
        std::thread::Builder::new()
            .name("baton-sqlite-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| Error::Internal(format!("cannot start the writer thread: {e}")))?;
        Ok(Self {
            inner: Arc::new(Inner {
                path,
                tx,
                free_readers: tokio::sync::Semaphore::new(readers.len()),
                readers: Mutex::new(readers),
                bus,
                lock: Mutex::new(lock),
                closed: Mutex::new(false),
                counters,
                synchronous,
                limits,
                #[cfg(feature = "faults")]
                faults: options.faults.clone(),
            }),
        })
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Records who holds the store (shown to a second engine that is refused).
    pub fn set_holder(&self, url: &str) -> Result<()> {
        let mut f = self.inner.lock.lock().map_err(|_| Error::Closed)?;
        write_holder(&mut f, Some(url))
    }

    /// Writes queued for the writer now (never more than `write_queue`).
    pub fn queued_writes(&self) -> usize {
        self.inner.tx.max_capacity() - self.inner.tx.capacity()
    }

    async fn write(&self, op: Op) -> Result<Output> {
        let (reply, rx) = oneshot::channel();
        // New work is refused when the queue is full; what finishes work already taken
        // (an outcome, a heartbeat, a claim) waits for room instead.
        let fail_fast = matches!(op, Op::Submit(..) | Op::SubmitWorkflow(_));
        let msg = Msg::Request(Request { op, reply });
        if fail_fast {
            use tokio::sync::mpsc::error::TrySendError;
            self.inner.tx.try_send(msg).map_err(|e| match e {
                TrySendError::Full(_) => Error::Overloaded {
                    queued: self.inner.tx.max_capacity(),
                },
                TrySendError::Closed(_) => Error::Closed,
            })?;
        } else {
            self.inner.tx.send(msg).await.map_err(|_| Error::Closed)?;
        }
        rx.await.map_err(|_| Error::Closed)?
    }

    async fn read<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        // Wait (without holding a thread) for a free connection of the fixed pool.
        let permit = self
            .inner
            .free_readers
            .acquire()
            .await
            .map_err(|_| Error::Closed)?;
        let inner = self.inner.clone();
        let result = tokio::task::spawn_blocking(move || {
            let conn = inner
                .readers
                .lock()
                .map_err(|_| Error::Internal("the read pool is poisoned".into()))?
                .pop()
                .ok_or_else(|| Error::Internal("no free read connection".into()))?;
            let conn = Lent {
                pool: &inner.readers,
                conn: Some(conn),
            };
            #[cfg(feature = "faults")]
            if let Some(delay) = inner.faults.read_delay() {
                std::thread::sleep(delay);
            }
            f(conn.get())
        })
        .await
        .map_err(|e| Error::Internal(format!("read task failed: {e}")));
        drop(permit);
        result?
    }
}

/// A read connection lent out of the pool; it goes back when dropped, even when the
/// read panics.
struct Lent<'a> {
    pool: &'a Mutex<Vec<Connection>>,
    conn: Option<Connection>,
}

impl Lent<'_> {
    fn get(&self) -> &Connection {
        self.conn
            .as_ref()
            .expect("a lent connection is present until dropped")
    }
}

impl Drop for Lent<'_> {
    fn drop(&mut self) {
        if let (Some(conn), Ok(mut pool)) = (self.conn.take(), self.pool.lock()) {
            pool.push(conn);
        }
    }
}

fn open_reader(o: &SqliteOptions) -> Result<Connection> {
    let c = Connection::open_with_flags(
        &o.path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| Error::Config(format!("cannot open store {}: {e}", o.path.display())))?;
    configure(&c, o, false)?;
    Ok(c)
}

fn configure(conn: &Connection, o: &SqliteOptions, writer: bool) -> Result<()> {
    conn.busy_timeout(o.busy_timeout)?;
    if writer {
        let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(Error::Config(format!(
                "store {} cannot use write-ahead logging (journal mode is {mode})",
                o.path.display()
            )));
        }
        conn.execute_batch(&format!(
            "PRAGMA synchronous = {}; PRAGMA cache_size = -2000; PRAGMA temp_store = MEMORY;",
            o.durability.as_str()
        ))?;
        #[cfg(feature = "faults")]
        if let Some(level) = o.faults.forced_synchronous() {
            conn.execute_batch(&format!("PRAGMA synchronous = {level}"))?;
        }
    } else {
        conn.execute_batch("PRAGMA query_only = 1; PRAGMA cache_size = -8000;")?;
    }
    conn.set_prepared_statement_cache_capacity(64);
    Ok(())
}

fn lock_path(db: &Path) -> PathBuf {
    let mut name = db.file_name().unwrap_or_default().to_os_string();
    name.push(".lock");
    db.with_file_name(name)
}

fn take_lock(db: &Path) -> Result<File> {
    let path = lock_path(db);
    let mut file = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| Error::Config(format!("cannot open lock file {}: {e}", path.display())))?;
    match file.try_lock() {
        Ok(()) => {
            write_holder(&mut file, None)?;
            Ok(file)
        }
        Err(TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim();
            Err(Error::Owned {
                store: db.display().to_string(),
                holder: if holder.is_empty() {
                    "holder unknown".into()
                } else {
                    holder.to_owned()
                },
            })
        }
        Err(TryLockError::Error(e)) => Err(Error::Config(format!(
            "cannot lock {}: {e}",
            path.display()
        ))),
    }
}

fn write_holder(file: &mut File, url: Option<&str>) -> Result<()> {
    let mut text = format!("pid {}", std::process::id());
    if let Some(url) = url {
        text.push_str(&format!(", {url}"));
    }
    let io = |e: std::io::Error| Error::Internal(format!("cannot write the lock file: {e}"));
    file.set_len(0).map_err(io)?;
    file.rewind().map_err(io)?;
    file.write_all(text.as_bytes()).map_err(io)?;
    Ok(())
}

macro_rules! expect_output {
    ($out:expr, $variant:ident) => {
        match $out? {
            Output::$variant(v) => Ok(v),
            _ => Err(Error::Internal("unexpected writer output".into())),
        }
    };
}

/// What each new job runs, described here rather than on the writer thread, which
/// every write waits for.
fn describe(jobs: &[NewJob]) -> Vec<baton_core::Runs> {
    jobs.iter()
        .map(|j| baton_core::Runs::describe(j.exec.as_ref(), j.timeout, j.grace, j.backoff))
        .collect()
}

/// Gives the jobs a submit created their description (in the order they were given;
/// a job that existed was read back whole).
fn with_runs(mut out: Vec<Submitted>, runs: Vec<baton_core::Runs>) -> Vec<Submitted> {
    for (s, runs) in out.iter_mut().zip(runs) {
        if s.created {
            if let Some(c) = &mut s.claimed {
                c.job.runs = runs.clone();
            }
            s.job.runs = runs;
        }
    }
    out
}

#[async_trait]
impl Store for SqliteStore {
    async fn submit(&self, jobs: Vec<NewJob>) -> Result<Vec<Submitted>> {
        let runs = describe(&jobs);
        let out = expect_output!(self.write(Op::Submit(jobs, None)).await, Submitted)?;
        Ok(with_runs(out, runs))
    }

    async fn submit_and_start(&self, jobs: Vec<NewJob>, start: StartNow) -> Result<Vec<Submitted>> {
        let runs = describe(&jobs);
        let out = expect_output!(self.write(Op::Submit(jobs, Some(start))).await, Submitted)?;
        Ok(with_runs(out, runs))
    }

    async fn claim(&self, req: ClaimRequest) -> Result<Vec<Claimed>> {
        expect_output!(self.write(Op::Claim(req)).await, Claimed)
    }

    fn set_concurrency_limits(&self, limits: Vec<baton_core::ConcurrencyLimit>) {
        *self.inner.limits.write().unwrap_or_else(|e| e.into_inner()) = limits.into();
    }

    async fn concurrency_held(&self, limits: &[baton_core::ConcurrencyLimit]) -> Result<Vec<u64>> {
        let limits = limits.to_vec();
        self.read(move |conn| limits::held(conn, &limits)).await
    }

    async fn transition(&self, t: Transition) -> Result<Job> {
        expect_output!(self.write(Op::Transition(t)).await, Job).map(|b| *b)
    }

    async fn record(&self, t: Transition) -> Result<()> {
        self.write(Op::Record(t)).await.map(|_| ())
    }

    async fn settle(&self, s: crate::Settle) -> Result<crate::Settled> {
        expect_output!(self.write(Op::Settle(s)).await, Settled)
    }

    async fn update(&self, job_id: &str, fence: u64, now: Millis, update: Update) -> Result<()> {
        let op = Op::Update {
            job_id: job_id.to_owned(),
            fence,
            now,
            update,
        };
        match self.write(op).await? {
            Output::Unit => Ok(()),
            _ => Err(Error::Internal("unexpected writer output".into())),
        }
    }

    async fn promote_due(&self, now: Millis) -> Result<Promoted> {
        expect_output!(self.write(Op::Promote(now)).await, Promoted)
    }

    async fn recover(&self, req: RecoverRequest) -> Result<Vec<Recovered>> {
        expect_output!(self.write(Op::Recover(req)).await, Recovered)
    }

    async fn release(&self, server_id: &str, now: Millis) -> Result<Vec<Recovered>> {
        expect_output!(
            self.write(Op::Release(server_id.to_owned(), now)).await,
            Recovered
        )
    }

    async fn register_server(&self, server: ServerInfo) -> Result<()> {
        self.write(Op::RegisterServer(server)).await.map(|_| ())
    }

    async fn heartbeat(&self, server_id: &str, now: Millis) -> Result<()> {
        self.write(Op::Heartbeat(server_id.to_owned(), now))
            .await
            .map(|_| ())
    }

    async fn server_stopped(&self, server_id: &str, now: Millis) -> Result<()> {
        self.write(Op::ServerStopped(server_id.to_owned(), now))
            .await
            .map(|_| ())
    }

    async fn get(&self, id: &str) -> Result<Option<Job>> {
        let id = id.to_owned();
        self.read(move |c| Ok(rows::get_job(c, &id)?.map(|r| r.job)))
            .await
    }

    async fn list(&self, filter: JobFilter) -> Result<JobPage> {
        if filter.text.is_some() {
            // The search index is kept behind the writes: bring it up to date first.
            while !matches!(self.write(Op::IndexText).await?, Output::Bool(true)) {}
        }
        self.read(move |c| list::list(c, &filter)).await
    }

    async fn job_events(&self, job_id: &str, after_seq: u64, limit: usize) -> Result<Vec<Event>> {
        let id = job_id.to_owned();
        self.read(move |c| rows::job_events(c, &id, after_seq, limit))
            .await
    }

    async fn job_events_of(
        &self,
        job_id: &str,
        kinds: &[EventKind],
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<Event>> {
        let id = job_id.to_owned();
        let kinds = kinds.to_vec();
        self.read(move |c| rows::job_events_of(c, &id, &kinds, after_seq, limit))
            .await
    }

    async fn verify(&self) -> Result<()> {
        self.read(|c| {
            rows::verify_counts(c)?;
            throughput::verify(c)
        })
        .await
    }

    async fn events_after(&self, after_id: u64, limit: usize) -> Result<Vec<Event>> {
        self.read(move |c| rows::events_after(c, after_id, limit))
            .await
    }

    async fn last_event_id(&self) -> Result<u64> {
        self.read(rows::last_event_id).await
    }

    async fn events_pruned_upto(&self) -> Result<u64> {
        self.read(rows::events_pruned_upto).await
    }

    async fn prune(&self, req: crate::PruneRequest) -> Result<crate::Pruned> {
        expect_output!(self.write(Op::Prune(req)).await, Pruned)
    }

    async fn checkpoints(&self, job_id: &str) -> Result<Vec<crate::Checkpoint>> {
        let id = job_id.to_owned();
        self.read(move |c| rows::checkpoints(c, &id)).await
    }

    async fn servers(&self) -> Result<Vec<ServerInfo>> {
        self.read(rows::servers).await
    }

    async fn counts(&self) -> Result<Counts> {
        self.read(rows::counts).await
    }

    async fn next_due(&self) -> Result<Option<Millis>> {
        self.read(writer::rows_next_due).await
    }

    async fn set_process(
        &self,
        job_id: &str,
        fence: u64,
        process: Option<JobProcess>,
    ) -> Result<()> {
        let op = Op::SetProcess {
            job_id: job_id.to_owned(),
            fence,
            process,
        };
        self.write(op).await.map(|_| ())
    }

    async fn processes(&self) -> Result<Vec<ProcessRecord>> {
        self.read(rows::processes).await
    }

    async fn append_logs(&self, req: AppendLogs) -> Result<Appended> {
        expect_output!(self.write(Op::AppendLogs(req)).await, Appended)
    }

    async fn logs(&self, job_id: &str, after: u64, limit: usize) -> Result<Vec<LogLine>> {
        let id = job_id.to_owned();
        self.read(move |c| rows::logs(c, &id, after, limit)).await
    }

    async fn put_pipeline(&self, spec: baton_core::PipelineSpec, now: Millis) -> Result<Pipeline> {
        expect_output!(
            self.write(Op::PutPipeline(Box::new(spec), now)).await,
            Pipeline
        )
        .map(|p| *p)
    }

    async fn pipeline(&self, id: &str) -> Result<Option<Pipeline>> {
        let id = id.to_owned();
        self.read(move |c| rows::pipeline(c, &id)).await
    }

    async fn pipelines(&self) -> Result<Vec<Pipeline>> {
        self.read(rows::pipelines).await
    }

    async fn delete_pipeline(&self, id: &str) -> Result<bool> {
        expect_output!(self.write(Op::DeletePipeline(id.to_owned())).await, Bool)
    }

    async fn create_schedule(&self, schedule: crate::NewSchedule) -> Result<crate::PutSchedule> {
        expect_output!(
            self.write(Op::CreateSchedule(Box::new(schedule))).await,
            PutSchedule
        )
        .map(|p| *p)
    }

    async fn put_schedule(&self, schedule: crate::NewSchedule) -> Result<crate::PutSchedule> {
        expect_output!(
            self.write(Op::PutSchedule(Box::new(schedule))).await,
            PutSchedule
        )
        .map(|p| *p)
    }

    async fn delete_schedule(&self, id: &str) -> Result<Option<baton_core::Schedule>> {
        expect_output!(
            self.write(Op::DeleteSchedule(id.to_owned())).await,
            Schedule
        )
        .map(|s| s.map(|s| *s))
    }

    async fn set_schedule_enabled(
        &self,
        id: &str,
        enabled: bool,
        next_run: Option<Millis>,
        now: Millis,
    ) -> Result<Option<baton_core::Schedule>> {
        let op = Op::EnableSchedule {
            id: id.to_owned(),
            enabled,
            next_run,
            now,
        };
        expect_output!(self.write(op).await, Schedule).map(|s| s.map(|s| *s))
    }

    async fn fire_schedule(&self, fire: crate::Fire) -> Result<crate::FireOutcome> {
        expect_output!(self.write(Op::FireSchedule(Box::new(fire))).await, Fired).map(|f| *f)
    }

    async fn release_schedule(&self, id: &str, now: Millis) -> Result<crate::Released> {
        expect_output!(
            self.write(Op::ReleaseSchedule(id.to_owned(), now)).await,
            Released
        )
        .map(|r| *r)
    }

    async fn schedule(&self, id: &str) -> Result<Option<baton_core::Schedule>> {
        let id = id.to_owned();
        self.read(move |c| schedule_rows::schedule(c, &id)).await
    }

    async fn schedules(&self, filter: crate::ScheduleFilter) -> Result<crate::SchedulePage> {
        self.read(move |c| schedule_rows::schedules(c, &filter))
            .await
    }

    async fn schedule_history(
        &self,
        id: &str,
        before: Option<u64>,
        limit: usize,
    ) -> Result<crate::FirePage> {
        let id = id.to_owned();
        self.read(move |c| schedule_rows::history(c, &id, before, limit))
            .await
    }

    async fn schedule_timers(&self) -> Result<Vec<crate::ScheduleTimer>> {
        self.read(schedule_rows::timers).await
    }

    async fn awaiting_schedules(&self) -> Result<Vec<String>> {
        self.read(schedule_rows::awaiting).await
    }

    async fn submit_workflow(
        &self,
        workflow: crate::NewWorkflow,
    ) -> Result<crate::SubmittedWorkflow> {
        expect_output!(
            self.write(Op::SubmitWorkflow(Box::new(workflow))).await,
            Workflow
        )
        .map(|w| *w)
    }

    async fn workflow(&self, id: &str) -> Result<Option<baton_core::WorkflowGraph>> {
        let id = id.to_owned();
        self.read(move |c| graph::workflow(c, &id)).await
    }

    async fn control_workflow(
        &self,
        id: &str,
        action: crate::WorkflowAction,
        now: Millis,
    ) -> Result<crate::WorkflowChange> {
        let op = Op::ControlWorkflow {
            id: id.to_owned(),
            action,
            now,
        };
        expect_output!(self.write(op).await, WorkflowChange).map(|c| *c)
    }

    async fn workflows(&self, filter: crate::WorkflowFilter) -> Result<crate::WorkflowPage> {
        self.read(move |c| graph::workflows(c, &filter)).await
    }

    async fn throughput(
        &self,
        span: crate::Span,
        since: Millis,
    ) -> Result<Vec<crate::ThroughputRow>> {
        self.read(move |c| throughput::read(c, span, since)).await
    }

    async fn dependencies(&self, job_id: &str) -> Result<Vec<crate::Link>> {
        let id = job_id.to_owned();
        self.read(move |c| graph::links(c, &id, graph::Side::Dependencies))
            .await
    }

    async fn dependents(&self, job_id: &str) -> Result<Vec<crate::Link>> {
        let id = job_id.to_owned();
        self.read(move |c| graph::links(c, &id, graph::Side::Dependents))
            .await
    }

    async fn set_queue_paused(&self, queue: &str, paused: bool, now: Millis) -> Result<bool> {
        let op = Op::SetQueuePaused {
            queue: queue.to_owned(),
            paused,
            now,
        };
        expect_output!(self.write(op).await, Bool)
    }

    async fn paused_queues(&self) -> Result<Vec<String>> {
        self.read(graph::paused_queues).await
    }

    async fn note(&self, kind: EventKind, data: serde_json::Value, now: Millis) -> Result<()> {
        let op = Op::Note { kind, data, now };
        self.write(op).await.map(|_| ())
    }

    fn synchronous(&self) -> Option<&'static str> {
        Some(self.inner.synchronous)
    }

    fn write_stats(&self) -> Option<Arc<crate::WriteStats>> {
        Some(self.inner.counters.clone())
    }

    fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.inner.bus.subscribe()
    }

    async fn close(&self) {
        {
            let Ok(mut closed) = self.inner.closed.lock() else {
                return;
            };
            if *closed {
                return;
            }
            *closed = true;
        }
        let (ack, done) = std::sync::mpsc::channel();
        if self.inner.tx.send(Msg::Close(ack)).await.is_ok() {
            let _ = tokio::task::spawn_blocking(move || done.recv()).await;
        }
        // Nothing writes any more: let the next engine take the database, even while
        // handles to this closed store (a subscription, an engine clone) are alive.
        if let Ok(lock) = self.inner.lock.lock() {
            let _ = lock.unlock();
        }
    }
}
