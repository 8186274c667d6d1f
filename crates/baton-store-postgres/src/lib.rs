//! Baton's PostgreSQL store: the same [`Store`] as the embedded SQLite store, on a
//! database that several `baton serve` processes share.
//!
//! Each write is one transaction on a pooled connection, retried whole when the
//! database aborts it for a deadlock or a serialization failure. A job's row is locked
//! while a write changes it; claims take queued rows with `FOR NO KEY UPDATE SKIP
//! LOCKED`, so servers claiming one queue never wait on each other nor hand out a job
//! twice. Events get their public ids from the sequencer (see [`events`]), and a write
//! returns once its events are published, as in the SQLite store.

mod crash;
mod deps;
pub mod events;
mod limits;
mod ops;
mod pool;
mod prune;
mod read;
mod rows;
mod schedules;
mod schema;
mod search;
mod work;
mod workflows;

use std::str::FromStr;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use baton_core::{Event, EventKind, Job, Millis, NewJob};
use baton_store::{
    AppendLogs, Appended, Checkpoint, ClaimRequest, Claimed, Counts, Error, Fire, FireOutcome,
    FirePage, JobFilter, JobPage, Link, NewSchedule, NewWorkflow, Pipeline, ProcessRecord,
    Promoted, PruneRequest, Pruned, PutSchedule, RecoverRequest, Recovered, Released, Result,
    ScheduleFilter, SchedulePage, ScheduleTimer, ServerInfo, Settle, Settled, Span, StartNow,
    Store, Submitted, SubmittedWorkflow, ThroughputRow, Transition, Update, WorkflowAction,
    WorkflowChange, WorkflowFilter, WorkflowPage,
};
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;

use crate::events::Events;
use crate::ops::Resume;
use crate::pool::Pool;
use crate::work::Work;

pub use schema::VERSION as SCHEMA_VERSION;

/// Advisory lock classes (the second key is the schema's hash): migrations, and the
/// event sequencer's pass.
pub(crate) const LOCK_MIGRATE: i32 = 0x6261_0001;
pub(crate) const LOCK_SEQUENCE: i32 = 0x6261_0002;

/// How many times a write the database aborted (deadlock, serialization) is tried.
const WRITE_TRIES: u32 = 8;

/// Where and how to open a PostgreSQL store.
#[derive(Clone, Debug)]
pub struct PgOptions {
    /// A `postgres://` URL (or a libpq key-value string).
    pub url: String,
    /// The schema the tables live in (`search_path`); the connection's default when
    /// `None`. Several Baton stores can share a database in schemas of their own.
    pub schema: Option<String>,
    /// The most connections the store's writes and reads hold at once.
    pub connections: usize,
}

impl PgOptions {
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            schema: None,
            connections: 16,
        }
    }

    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = Some(schema.into());
        self
    }
}

/// The URL without its password, for messages.
pub(crate) fn redact(config: &tokio_postgres::Config) -> String {
    let host = config
        .get_hosts()
        .first()
        .map(|h| match h {
            tokio_postgres::config::Host::Tcp(name) => name.clone(),
            tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
        })
        .unwrap_or_else(|| "localhost".into());
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let user = config
        .get_user()
        .map(|u| format!("{u}@"))
        .unwrap_or_default();
    let db = config.get_dbname().unwrap_or_default();
    format!("postgres://{user}{host}:{port}/{db}")
}

/// A database error with its SQLSTATE, which tells a retryable abort from the rest.
pub(crate) fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(d) => format!("{} [SQLSTATE {}]", d.message(), d.code().code()),
        None => match std::error::Error::source(e) {
            Some(inner) => format!("{e}: {inner}"),
            None => e.to_string(),
        },
    }
}

/// `?` for database results: the error becomes the store's, naming the database's.
pub(crate) trait Db<T> {
    fn db(self) -> Result<T>;
}

impl<T> Db<T> for std::result::Result<T, tokio_postgres::Error> {
    fn db(self) -> Result<T> {
        self.map_err(|e| {
            let io = std::error::Error::source(&e)
                .is_some_and(|s| s.downcast_ref::<std::io::Error>().is_some());
            if e.is_closed()
                || io
                || e.code() == Some(&tokio_postgres::error::SqlState::ADMIN_SHUTDOWN)
            {
                // The connection broke (the database went away): try again later.
                Error::Unavailable(format!("PostgreSQL: {}", describe(&e)))
            } else {
                Error::Internal(format!("PostgreSQL: {}", describe(&e)))
            }
        })
    }
}

/// Whether the database aborted a write that may pass when tried again: a
/// serialization failure, a deadlock, or a unique key taken by a concurrent write
/// (the retry then finds its holder).
fn retryable(e: &Error) -> bool {
    matches!(e, Error::Internal(m)
        if m.ends_with("[SQLSTATE 40001]") || m.ends_with("[SQLSTATE 40P01]")
            || m.ends_with("[SQLSTATE 23505]"))
}

struct Inner {
    pool: Arc<Pool>,
    /// The concurrency limits claims obey.
    limits: std::sync::RwLock<Arc<[baton_core::ConcurrencyLimit]>>,
    /// Shared by this server's claims: see `limits.rs`.
    deep_scans: Arc<std::sync::Mutex<baton_store::turns::DeepScans>>,
    events: Arc<Events>,
    shown: String,
    stop: watch::Sender<bool>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

/// The PostgreSQL store. Cheap to clone: clones share the connections.
#[derive(Clone)]
pub struct PgStore {
    inner: Arc<Inner>,
}

/// Runs one write with retries: `$body` is evaluated with `$w` bound to a fresh
/// [`Work`] each try.
macro_rules! write {
    ($self:ident, |$w:ident| $body:expr) => {{
        let mut tries = 0;
        loop {
            tries += 1;
            let mut $w = Work::begin(&$self.inner.pool).await?;
            $w.limits = $self
                .inner
                .limits
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            $w.deep_scans = $self.inner.deep_scans.clone();
            let out = $body;
            match out {
                Ok(value) => match $w.commit(&$self.inner.events).await {
                    Ok(published) => {
                        let _ = published.await;
                        break Ok(value);
                    }
                    Err(e) if retryable(&e) && tries < WRITE_TRIES => continue,
                    Err(e) => break Err(e),
                },
                Err(e) => {
                    $w.rollback().await;
                    if retryable(&e) && tries < WRITE_TRIES {
                        continue;
                    }
                    break Err(e);
                }
            }
        }
    }};
}

impl PgStore {
    /// Connects, brings the schema up to date (under an advisory lock) and starts the
    /// event sequencer, tailer and listener. Must run inside a Tokio runtime.
    pub async fn open(options: PgOptions) -> Result<Self> {
        let config = tokio_postgres::Config::from_str(&options.url).map_err(|e| {
            Error::Config(format!(
                "invalid PostgreSQL URL {:?}: {e}",
                strip_password(&options.url)
            ))
        })?;
        let shown = redact(&config);
        let pool = Arc::new(Pool::new(
            config,
            options.schema.clone(),
            options.connections,
        ));
        let mut client = pool.connect().await?;
        let schema_name: String = match &options.schema {
            Some(name) => name.clone(),
            None => client
                .query_one("SELECT current_schema()", &[])
                .await
                .db()?
                .get::<_, Option<String>>(0)
                .ok_or_else(|| {
                    Error::Config(format!(
                        "{shown}: the connection's search_path names no schema that exists; \
                         create one or name one in the URL (options=-csearch_path=NAME)"
                    ))
                })?,
        };
        schema::migrate(&mut client, &schema_name, options.schema.is_some()).await?;
        let published = read::last_event_id(&client).await?;
        drop(client);
        let events = Arc::new(Events::new(published));
        let (stop, stopped) = watch::channel(false);
        let tasks = vec![
            tokio::spawn(events::sequencer(
                Arc::clone(&pool),
                Arc::clone(&events),
                stopped.clone(),
            )),
            tokio::spawn(events::tailer(
                Arc::clone(&pool),
                Arc::clone(&events),
                stopped.clone(),
            )),
            tokio::spawn(events::listener(
                Arc::clone(&pool),
                schema_name.clone(),
                Arc::clone(&events),
                stopped.clone(),
            )),
            tokio::spawn(events::hinter(
                Arc::clone(&pool),
                schema_name,
                Arc::clone(&events),
                stopped,
            )),
        ];
        // Events committed before this store opened (by a server that died before
        // they were sequenced) get their ids now.
        events.sequence.notify_one();
        Ok(Self {
            inner: Arc::new(Inner {
                pool,
                limits: std::sync::RwLock::new(Arc::from(Vec::new())),
                deep_scans: Arc::default(),
                events,
                shown,
                stop,
                tasks: Mutex::new(tasks),
            }),
        })
    }

    /// The database, as `postgres://user@host:port/db` (no password).
    pub fn shown(&self) -> &str {
        &self.inner.shown
    }
}

/// Removes a schema and everything in it (a bench's or a test's own).
pub async fn drop_schema(url: &str, schema: &str) -> Result<()> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .map_err(|e| Error::Unavailable(format!("PostgreSQL: {}", describe(&e))))?;
    tokio::spawn(conn);
    client
        .batch_execute(&format!(
            "DROP SCHEMA IF EXISTS \"{}\" CASCADE",
            schema.replace('"', "\"\"")
        ))
        .await
        .db()
}

/// Checks a PostgreSQL URL without connecting; the error names the URL without its
/// password.
pub fn check_url(url: &str) -> std::result::Result<(), String> {
    tokio_postgres::Config::from_str(url)
        .map(|_| ())
        .map_err(|e| format!("invalid PostgreSQL URL {:?}: {e}", strip_password(url)))
}

/// `url` with any password replaced, for a message about a URL that did not parse.
pub fn strip_password(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://")
        && let Some((creds, host)) = rest.split_once('@')
        && let Some((user, _)) = creds.split_once(':')
    {
        return format!("{scheme}://{user}:***@{host}");
    }
    url.to_owned()
}

fn with_runs(out: Vec<Submitted>) -> Vec<Submitted> {
    out
}

#[async_trait]
impl Store for PgStore {
    async fn submit(&self, jobs: Vec<NewJob>) -> Result<Vec<Submitted>> {
        write!(self, |w| ops::submit(&mut w, &jobs, None).await).map(with_runs)
    }

    async fn submit_and_start(&self, jobs: Vec<NewJob>, start: StartNow) -> Result<Vec<Submitted>> {
        write!(self, |w| ops::submit(&mut w, &jobs, Some(&start)).await).map(with_runs)
    }

    async fn claim(&self, req: ClaimRequest) -> Result<Vec<Claimed>> {
        write!(self, |w| ops::claim(&mut w, &req).await)
    }

    fn set_concurrency_limits(&self, limits: Vec<baton_core::ConcurrencyLimit>) {
        *self.inner.limits.write().unwrap_or_else(|e| e.into_inner()) = limits.into();
    }

    async fn concurrency_held(&self, limits: &[baton_core::ConcurrencyLimit]) -> Result<Vec<u64>> {
        let c = self.inner.pool.get().await?;
        limits::held(&c, limits).await
    }

    async fn transition(&self, t: Transition) -> Result<Job> {
        let row = write!(self, |w| ops::transition(&mut w, &t, Resume::No, true)
            .await)?;
        row.map(|r| r.job)
            .ok_or_else(|| Error::NotFound(t.job_id.clone()))
    }

    async fn record(&self, t: Transition) -> Result<()> {
        write!(self, |w| ops::transition(&mut w, &t, Resume::No, false)
            .await)
        .map(|_| ())
    }

    async fn settle(&self, s: Settle) -> Result<Settled> {
        write!(self, |w| ops::settle(&mut w, &s).await)
    }

    async fn update(&self, job_id: &str, fence: u64, now: Millis, update: Update) -> Result<()> {
        write!(self, |w| ops::update(&mut w, job_id, fence, now, &update)
            .await)
    }

    async fn promote_due(&self, now: Millis) -> Result<Promoted> {
        write!(self, |w| ops::promote(&mut w, now).await)
    }

    async fn recover(&self, req: RecoverRequest) -> Result<Vec<Recovered>> {
        write!(self, |w| ops::recover(&mut w, &req).await)
    }

    async fn release(&self, server_id: &str, now: Millis) -> Result<Vec<Recovered>> {
        write!(self, |w| ops::release(&mut w, server_id, now).await)
    }

    async fn register_server(&self, server: ServerInfo) -> Result<()> {
        write!(self, |w| ops::register_server(&mut w, &server).await)
    }

    async fn heartbeat(&self, server_id: &str, now: Millis) -> Result<()> {
        let c = self.inner.pool.get().await?;
        let n = c
            .execute(
                "UPDATE servers SET heartbeat_at = $2, alive_at = now() \
                 WHERE id = $1 AND stopped_at IS NULL",
                &[&server_id, &now],
            )
            .await
            .db()?;
        if n == 0 {
            // Another server found this one gone and recovered its attempts.
            return Err(Error::Declared(server_id.to_owned()));
        }
        Ok(())
    }

    async fn lead(&self, server_id: &str, ttl: std::time::Duration) -> Result<Option<u64>> {
        let c = self.inner.pool.get().await?;
        let row = c
            .query_opt(
                "INSERT INTO leader (one, server_id, term, expires_at) \
                 VALUES (true, $1, 1, now() + $2 * interval '1 millisecond') \
                 ON CONFLICT (one) DO UPDATE SET \
                   term = CASE WHEN leader.server_id = excluded.server_id THEN leader.term \
                     ELSE leader.term + 1 END, \
                   server_id = excluded.server_id, expires_at = excluded.expires_at \
                 WHERE leader.server_id = excluded.server_id OR leader.expires_at < now() \
                 RETURNING term",
                &[&server_id, &(ttl.as_millis() as f64)],
            )
            .await
            .db()?;
        Ok(row.map(|r| r.get::<_, i64>(0) as u64))
    }

    async fn gone_servers(&self, after: std::time::Duration) -> Result<Vec<String>> {
        let c = self.inner.pool.get().await?;
        let rows = c
            .query(
                "SELECT id FROM servers WHERE stopped_at IS NULL \
                 AND alive_at < now() - $1 * interval '1 millisecond' ORDER BY id",
                &[&(after.as_millis() as f64)],
            )
            .await
            .db()?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    async fn declare_gone(
        &self,
        server_id: &str,
        after: std::time::Duration,
        now: Millis,
    ) -> Result<bool> {
        write!(self, |w| ops::declare_gone(&mut w, server_id, after, now)
            .await)
    }

    async fn server_stopped(&self, server_id: &str, now: Millis) -> Result<()> {
        write!(self, |w| ops::server_stopped(&mut w, server_id, now).await)
    }

    async fn get(&self, id: &str) -> Result<Option<Job>> {
        let c = self.inner.pool.get().await?;
        Ok(rows::get_job(&*c, id).await?.map(|r| r.job))
    }

    async fn list(&self, filter: JobFilter) -> Result<JobPage> {
        let c = self.inner.pool.get().await?;
        read::list(&*c, &filter).await
    }

    async fn job_events(&self, job_id: &str, after_seq: u64, limit: usize) -> Result<Vec<Event>> {
        let c = self.inner.pool.get().await?;
        read::job_events(&*c, job_id, None, after_seq, limit).await
    }

    async fn job_events_of(
        &self,
        job_id: &str,
        kinds: &[EventKind],
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<Event>> {
        let c = self.inner.pool.get().await?;
        read::job_events(&*c, job_id, Some(kinds), after_seq, limit).await
    }

    async fn events_after(&self, after_id: u64, limit: usize) -> Result<Vec<Event>> {
        let c = self.inner.pool.get().await?;
        read::events_after(&*c, after_id, limit).await
    }

    async fn last_event_id(&self) -> Result<u64> {
        let c = self.inner.pool.get().await?;
        read::last_event_id(&*c).await
    }

    async fn events_pruned_upto(&self) -> Result<u64> {
        let c = self.inner.pool.get().await?;
        read::events_pruned_upto(&*c).await
    }

    async fn prune(&self, req: PruneRequest) -> Result<Pruned> {
        write!(self, |w| prune::prune(&mut w, &req).await)
    }

    async fn checkpoints(&self, job_id: &str) -> Result<Vec<Checkpoint>> {
        let c = self.inner.pool.get().await?;
        read::checkpoints(&*c, job_id).await
    }

    async fn servers(&self) -> Result<Vec<ServerInfo>> {
        let c = self.inner.pool.get().await?;
        read::servers(&*c).await
    }

    async fn counts(&self) -> Result<Counts> {
        let mut c = self.inner.pool.get().await?;
        read::counts(&mut c).await
    }

    async fn next_due(&self) -> Result<Option<Millis>> {
        let c = self.inner.pool.get().await?;
        read::next_due(&*c).await
    }

    async fn set_process(
        &self,
        job_id: &str,
        fence: u64,
        process: Option<baton_store::JobProcess>,
    ) -> Result<()> {
        write!(self, |w| ops::set_process(&mut w, job_id, fence, process)
            .await)
    }

    async fn processes(&self) -> Result<Vec<ProcessRecord>> {
        let c = self.inner.pool.get().await?;
        read::processes(&*c).await
    }

    async fn append_logs(&self, req: AppendLogs) -> Result<Appended> {
        write!(self, |w| ops::append_logs(&mut w, &req).await)
    }

    async fn logs(
        &self,
        job_id: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<baton_store::LogLine>> {
        let c = self.inner.pool.get().await?;
        read::logs(&*c, job_id, after, limit).await
    }

    async fn put_pipeline(&self, spec: baton_core::PipelineSpec, now: Millis) -> Result<Pipeline> {
        write!(self, |w| ops::put_pipeline(&mut w, &spec, now).await)
    }

    async fn pipeline(&self, id: &str) -> Result<Option<Pipeline>> {
        let c = self.inner.pool.get().await?;
        Ok(read::pipelines(&*c, Some(id)).await?.pop())
    }

    async fn pipelines(&self) -> Result<Vec<Pipeline>> {
        let c = self.inner.pool.get().await?;
        read::pipelines(&*c, None).await
    }

    async fn delete_pipeline(&self, id: &str) -> Result<bool> {
        let c = self.inner.pool.get().await?;
        let n = c
            .execute("DELETE FROM pipelines WHERE id = $1", &[&id])
            .await
            .db()?;
        Ok(n > 0)
    }

    async fn create_schedule(&self, schedule: NewSchedule) -> Result<PutSchedule> {
        write!(self, |w| schedules::put_schedule(&mut w, &schedule, false)
            .await)
    }

    async fn put_schedule(&self, schedule: NewSchedule) -> Result<PutSchedule> {
        write!(self, |w| schedules::put_schedule(&mut w, &schedule, true)
            .await)
    }

    async fn delete_schedule(&self, id: &str) -> Result<Option<baton_core::Schedule>> {
        write!(self, |w| schedules::delete_schedule(&mut w, id).await)
    }

    async fn set_schedule_enabled(
        &self,
        id: &str,
        enabled: bool,
        next_run: Option<Millis>,
        now: Millis,
    ) -> Result<Option<baton_core::Schedule>> {
        write!(self, |w| schedules::set_schedule_enabled(
            &mut w, id, enabled, next_run, now
        )
        .await)
    }

    async fn fire_schedule(&self, fire: Fire) -> Result<FireOutcome> {
        write!(self, |w| schedules::fire(&mut w, &fire).await)
    }

    async fn release_schedule(&self, id: &str, now: Millis) -> Result<Released> {
        write!(self, |w| schedules::release_schedule(&mut w, id, now).await)
    }

    async fn schedule(&self, id: &str) -> Result<Option<baton_core::Schedule>> {
        let c = self.inner.pool.get().await?;
        schedules::schedule(&*c, id).await
    }

    async fn schedules(&self, filter: ScheduleFilter) -> Result<SchedulePage> {
        let c = self.inner.pool.get().await?;
        schedules::schedules(&*c, &filter).await
    }

    async fn schedule_history(
        &self,
        id: &str,
        before: Option<u64>,
        limit: usize,
    ) -> Result<FirePage> {
        let c = self.inner.pool.get().await?;
        schedules::history(&*c, id, before, limit).await
    }

    async fn schedule_timers(&self) -> Result<Vec<ScheduleTimer>> {
        let c = self.inner.pool.get().await?;
        schedules::timers(&*c).await
    }

    async fn awaiting_schedules(&self) -> Result<Vec<String>> {
        let c = self.inner.pool.get().await?;
        schedules::awaiting(&*c).await
    }

    async fn submit_workflow(&self, workflow: NewWorkflow) -> Result<SubmittedWorkflow> {
        write!(self, |w| workflows::submit(&mut w, &workflow).await)
    }

    async fn workflow(&self, id: &str) -> Result<Option<baton_core::WorkflowGraph>> {
        let mut c = self.inner.pool.get().await?;
        workflows::graph(&mut c, id).await
    }

    async fn control_workflow(
        &self,
        id: &str,
        action: WorkflowAction,
        now: Millis,
    ) -> Result<WorkflowChange> {
        write!(self, |w| workflows::control(&mut w, id, action, now).await)
    }

    async fn dependencies(&self, job_id: &str) -> Result<Vec<Link>> {
        let c = self.inner.pool.get().await?;
        workflows::links(&*c, job_id, workflows::Side::Dependencies).await
    }

    async fn dependents(&self, job_id: &str) -> Result<Vec<Link>> {
        let c = self.inner.pool.get().await?;
        workflows::links(&*c, job_id, workflows::Side::Dependents).await
    }

    async fn workflows(&self, filter: WorkflowFilter) -> Result<WorkflowPage> {
        let mut c = self.inner.pool.get().await?;
        workflows::list(&mut c, &filter).await
    }

    async fn throughput(&self, span: Span, since: Millis) -> Result<Vec<ThroughputRow>> {
        let c = self.inner.pool.get().await?;
        read::throughput(&*c, span, since).await
    }

    async fn set_queue_paused(&self, queue: &str, paused: bool, now: Millis) -> Result<bool> {
        write!(self, |w| ops::set_queue_paused(&mut w, queue, paused, now)
            .await)
    }

    async fn note(&self, kind: EventKind, data: serde_json::Value, now: Millis) -> Result<()> {
        write!(self, |w| {
            w.event(None, 0, kind, now, data.clone());
            Ok::<(), baton_store::Error>(())
        })
    }

    async fn paused_queues(&self) -> Result<Vec<String>> {
        let c = self.inner.pool.get().await?;
        let rows = c
            .query("SELECT name FROM queues WHERE paused ORDER BY name", &[])
            .await
            .db()?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    fn shared(&self) -> bool {
        true
    }

    fn queue_hints(&self) -> Option<broadcast::Receiver<String>> {
        Some(self.inner.events.hints.subscribe())
    }

    fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.inner.events.bus.subscribe()
    }

    async fn verify(&self) -> Result<()> {
        let mut c = self.inner.pool.get().await?;
        read::verify(&mut c).await
    }

    async fn close(&self) {
        let _ = self.inner.stop.send(true);
        let tasks: Vec<JoinHandle<()>> = self
            .inner
            .tasks
            .lock()
            .map(|mut t| std::mem::take(&mut *t))
            .unwrap_or_default();
        for t in tasks {
            let _ = t.await;
        }
        self.inner.pool.close();
    }
}
