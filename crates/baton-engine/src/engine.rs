use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use baton_core::spec::{KIND_COMMAND, KIND_PIPELINE};
use baton_core::{EventKind, Job, JobSpec, Limits, Millis, PipelineSpec, SpecError, State};
use baton_store::{
    Changes, ClaimRequest, Claimed, JobFilter, JobPage, LogLine, Pipeline, RecoverRequest,
    ServerInfo, StartNow, Store, Submitted, Transition,
};
use futures::future::BoxFuture;
use serde_json::{Value, json};
use tokio::sync::{Notify, broadcast, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::clock::{Clock, SystemClock};
use crate::context::{CtxInner, JobContext, JobError};
use crate::run::{Ctl, RunEnv};
use crate::security::{Origin, Security};
use crate::{Error, Result};

mod workflows;
pub use workflows::QueueStatus;

type HandlerFn =
    Arc<dyn Fn(JobContext, Value) -> BoxFuture<'static, Result<Value, JobError>> + Send + Sync>;

/// What happens at start to jobs that were running when the engine stopped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Recovery {
    /// Queue them again, from their last checkpoint.
    #[default]
    Auto,
    /// Leave them `crashed` until a person retries them.
    Manual,
}

/// Configures and starts an [`Engine`].
pub struct EngineBuilder {
    store: Option<Arc<dyn Store>>,
    queues: Vec<(String, usize)>,
    handlers: HashMap<String, HandlerFn>,
    clock: Arc<dyn Clock>,
    limits: Limits,
    recovery: Recovery,
    heartbeat: Duration,
    url: Option<String>,
    max_log_lines: u64,
    pipeline_dirs: Vec<std::path::PathBuf>,
    pipelines: Vec<PipelineSpec>,
    security: Security,
    retention: crate::Retention,
    remote_kinds: Vec<String>,
    resources: crate::ResourceOptions,
    heavy: std::collections::BTreeSet<String>,
    usage: crate::UsageOptions,
    queue_limits: HashMap<String, baton_core::ResourceLimits>,
    concurrency: Vec<baton_core::ConcurrencyLimit>,
}

/// The most log lines kept per job unless configured.
pub const DEFAULT_MAX_LOG_LINES: u64 = 10_000;

/// The engine. Cheap to clone; every clone drives the same workers.
#[derive(Clone)]
pub struct Engine {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub store: Arc<dyn Store>,
    /// The concurrency limits across queues that this engine's claims obey.
    pub(crate) concurrency: Vec<baton_core::ConcurrencyLimit>,
    pub clock: Arc<dyn Clock>,
    handlers: HashMap<String, HandlerFn>,
    pub(crate) queues: BTreeMap<String, Arc<QueueState>>,
    pub(crate) limits: Limits,
    server: ServerInfo,
    running: Mutex<HashMap<String, RunHandle>>,
    /// Notified each time an attempt is registered in `running`, and each time a
    /// claim ends.
    registered: Notify,
    /// This engine's claims under way: from just before the store is asked until the
    /// attempts it returned are registered in `running`.
    claims: Mutex<Claims>,
    /// The earliest `run_at` of a job scheduled since the timer last looked.
    pending_due: Mutex<Option<Millis>>,
    timer: Notify,
    pub(crate) shutdown: CancellationToken,
    /// False while the store does not take this server's heartbeats.
    healthy: std::sync::atomic::AtomicBool,
    /// On a shared store: this server holds the leader lease (as of its last
    /// heartbeat), so it fires schedules and prunes. A store one engine owns has no
    /// other server: it is always true there.
    pub(crate) leading: std::sync::atomic::AtomicBool,
    /// Attempts (job id, fencing token) stopped because this server lost the store:
    /// they record no outcome.
    dropped: Mutex<std::collections::HashSet<(String, u64)>>,
    recovery: Recovery,
    /// Fires when shutdown gives up waiting: aborted attempts then write nothing, and
    /// outcome writes stop retrying.
    abandoning: CancellationToken,
    /// Outcome writes that failed and were tried again.
    outcome_write_retries: AtomicU64,
    pub(crate) tasks: TaskTracker,
    pub(crate) background: TaskTracker,
    /// Log lines kept per job (command and pipeline jobs).
    pub max_log_lines: u64,
    /// Kinds whose handler enforces the job's timeout itself (commands stop their
    /// process gracefully); the engine does not abort them when it passes.
    self_timed: HashSet<String>,
    /// The scheduler's timers (see `scheduler.rs`).
    pub(crate) schedules: crate::scheduler::Timers,
    /// The commands policy and the secret key.
    pub(crate) security: Arc<Security>,
    /// What retention removed.
    pub(crate) pruned: crate::retention::PruneCounters,
    /// Remote workers and the kinds they may serve.
    pub(crate) remote: crate::remote::Registry,
    /// The kinds this engine runs itself, sorted: its claims take only those.
    native: Vec<String>,
    /// Admission control: while a threshold is crossed heavy queues claim nothing.
    pub(crate) pressure: crate::Pressure,
    /// Measures running jobs' processes and holds them to their limits.
    pub(crate) meter: Arc<crate::usage::Meter>,
    /// Default resource limits of command and pipeline jobs, by queue.
    queue_limits: HashMap<String, baton_core::ResourceLimits>,
}

/// Claims under way, each by the number it was given in order.
#[derive(Default)]
struct Claims {
    next: u64,
    open: std::collections::BTreeSet<u64>,
}

/// A claim under way (see [`Inner::claiming`]); dropped once its attempts are
/// registered, or once it failed.
pub(crate) struct Claiming {
    inner: Arc<Inner>,
    n: u64,
}

impl Drop for Claiming {
    fn drop(&mut self) {
        self.inner
            .claims
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .open
            .remove(&self.n);
        self.inner.registered.notify_waiters();
    }
}

pub(crate) struct QueueState {
    name: String,
    concurrency: usize,
    running: AtomicUsize,
    /// Jobs may be waiting in the store for this queue; while so, new jobs queue behind
    /// them instead of starting at once.
    pub(crate) backlog: AtomicBool,
    pub(crate) wake: Notify,
    /// Paused by a user (stored): the dispatcher claims nothing until resumed.
    paused: AtomicBool,
    /// Held by admission control while a resource threshold is crossed.
    heavy: bool,
    /// Outcomes of attempts whose handlers returned, waiting for the dispatcher to write
    /// them together with the claim that fills their slots.
    outcomes: Mutex<PendingOutcomes>,
}

#[derive(Default)]
pub(crate) struct PendingOutcomes {
    pub(crate) list: Vec<PendingOutcome>,
    /// Set when the dispatcher has stopped (shutdown): outcomes are written directly.
    pub(crate) closed: bool,
}

pub(crate) struct PendingOutcome {
    pub(crate) transitions: Arc<[Transition]>,
    /// Told the outcome's result once written. A result that ends the attempt (written,
    /// or refused for good) also freed the slot: the dispatcher gave it to a new job.
    pub(crate) reply: tokio::sync::oneshot::Sender<std::result::Result<(), baton_store::Error>>,
}

impl QueueState {
    /// Takes up to `want` free worker slots; returns how many it took.
    fn reserve(&self, want: usize) -> usize {
        let mut busy = self.running.load(Ordering::SeqCst);
        loop {
            let take = want.min(self.concurrency.saturating_sub(busy));
            if take == 0 {
                return 0;
            }
            match self.running.compare_exchange(
                busy,
                busy + take,
                Ordering::SeqCst,
                Ordering::SeqCst,
            ) {
                Ok(_) => return take,
                Err(now) => busy = now,
            }
        }
    }

    fn release(&self, n: usize) {
        self.running.fetch_sub(n, Ordering::SeqCst);
        self.wake.notify_one();
    }
}

/// What control needs of a registered attempt.
pub(crate) struct HandleParts {
    pub(crate) ctl: watch::Sender<Ctl>,
    pub(crate) cancel: CancellationToken,
    pub(crate) grace: Duration,
}

struct RunHandle {
    fence: u64,
    ctl: watch::Sender<Ctl>,
    cancel: CancellationToken,
    /// Fires to abort the attempt's task (force stop, end of grace, shutdown).
    kill: CancellationToken,
    grace: Duration,
}

pub(crate) enum Outcome {
    Done(Result<Value, JobError>),
    Panicked(String),
    Aborted,
    TimedOut(Duration),
}

impl Engine {
    pub fn builder() -> EngineBuilder {
        EngineBuilder {
            store: None,
            queues: Vec::new(),
            handlers: HashMap::new(),
            clock: Arc::new(SystemClock),
            limits: Limits::default(),
            recovery: Recovery::Auto,
            heartbeat: Duration::from_secs(5),
            url: None,
            max_log_lines: DEFAULT_MAX_LOG_LINES,
            pipeline_dirs: Vec::new(),
            pipelines: Vec::new(),
            security: Security::default(),
            retention: crate::Retention::default(),
            remote_kinds: Vec::new(),
            resources: crate::ResourceOptions::default(),
            heavy: Default::default(),
            usage: crate::UsageOptions::default(),
            queue_limits: HashMap::new(),
            concurrency: Vec::new(),
        }
    }
}

impl EngineBuilder {
    pub fn store(mut self, store: Arc<dyn Store>) -> Self {
        self.store = Some(store);
        self
    }

    /// Adds a queue with its concurrency. The `default` queue (16) exists unless set.
    pub fn queue(mut self, name: impl Into<String>, concurrency: usize) -> Self {
        let name = name.into();
        self.queues.retain(|(n, _)| *n != name);
        self.queues.push((name, concurrency));
        self
    }

    /// Adds a concurrency limit across queues: at most `limit.max` of the jobs it
    /// covers (by label or kind) run at once, whatever their queue, on every server
    /// sharing the store. Queues take turns at a full limit.
    pub fn concurrency_limit(mut self, limit: baton_core::ConcurrencyLimit) -> Self {
        self.concurrency.push(limit);
        self
    }

    /// Marks a configured queue heavy: it starts no new job while a resource threshold
    /// is crossed (see [`EngineBuilder::resources`]).
    pub fn heavy(mut self, name: impl Into<String>) -> Self {
        self.heavy.insert(name.into());
        self
    }

    /// What the machine monitor samples, how often, and the thresholds of admission
    /// control (default: [`crate::ResourceOptions::default`]).
    pub fn resources(mut self, options: crate::ResourceOptions) -> Self {
        self.resources = options;
        self
    }

    /// Registers the handler for jobs of `kind`.
    pub fn handler<F, Fut>(mut self, kind: impl Into<String>, f: F) -> Self
    where
        F: Fn(JobContext, Value) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Value, JobError>> + Send + 'static,
    {
        let f: HandlerFn = Arc::new(move |ctx, payload| Box::pin(f(ctx, payload)));
        self.handlers.insert(kind.into(), f);
        self
    }

    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    pub fn recovery(mut self, recovery: Recovery) -> Self {
        self.recovery = recovery;
        self
    }

    pub fn heartbeat(mut self, every: Duration) -> Self {
        self.heartbeat = every;
        self
    }

    /// The URL this engine is reached at, shown in its server record.
    pub fn url(mut self, url: impl Into<String>) -> Self {
        self.url = Some(url.into());
        self
    }

    /// The most log lines kept per command or pipeline job (default 10,000); past it
    /// one line marks the log truncated and later lines are dropped.
    pub fn max_log_lines(mut self, n: u64) -> Self {
        self.max_log_lines = n;
        self
    }

    /// Loads every `*.toml` file of `dir` as a pipeline definition at build (the
    /// file's name is the id unless it sets `id`); an invalid file fails the build
    /// with an error naming the file and the field.
    pub fn pipelines_dir(mut self, dir: impl Into<std::path::PathBuf>) -> Self {
        self.pipeline_dirs.push(dir.into());
        self
    }

    /// What jobs may run and how secret env values are kept (default: any program,
    /// no secret key, so secret values are refused).
    pub fn security(mut self, security: Security) -> Self {
        self.security = security;
        self
    }

    /// How long finished jobs are kept (default: a week for every queue) and how
    /// pruning runs.
    pub fn retention(mut self, retention: crate::Retention) -> Self {
        self.retention = retention;
        self
    }

    /// Kinds that clients may submit before a remote worker that serves them is
    /// connected: their jobs wait `queued` for one. (A kind a connected worker
    /// announced is accepted anyway.)
    pub fn remote_kinds(mut self, kinds: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.remote_kinds.extend(kinds.into_iter().map(Into::into));
        self
    }

    /// How running jobs' processes are measured and their limits enforced (default:
    /// every second, a `job.usage` event at most every 5 s per job, cgroups where this
    /// server can make them).
    pub fn usage(mut self, options: crate::UsageOptions) -> Self {
        self.usage = options;
        self
    }

    /// Default resource limits of the command and pipeline jobs of `queue`: each field
    /// a job's spec leaves out is taken from here when the job is submitted.
    pub fn queue_limits(
        mut self,
        queue: impl Into<String>,
        limits: baton_core::ResourceLimits,
    ) -> Self {
        self.queue_limits.insert(queue.into(), limits);
        self
    }

    /// Stores a pipeline definition at build.
    pub fn pipeline(mut self, spec: PipelineSpec) -> Self {
        self.pipelines.push(spec);
        self
    }

    /// Recovers jobs left running by a previous run, registers the server and starts
    /// the workers.
    pub async fn build(self) -> Result<Engine> {
        let store = self
            .store
            .ok_or_else(|| Error::Config("no store was given".into()))?;
        let pressure = crate::Pressure::new(self.resources)
            .map_err(|m| Error::Config(format!("resources: {m}")))?;
        let mut queues = BTreeMap::new();
        let mut configured = self.queues;
        if !configured
            .iter()
            .any(|(n, _)| n == baton_core::spec::DEFAULT_QUEUE)
        {
            configured.push((baton_core::spec::DEFAULT_QUEUE.into(), 16));
        }
        for (name, concurrency) in configured {
            if concurrency == 0 {
                return Err(Error::Config(format!(
                    "queue {name:?}: concurrency must be at least 1"
                )));
            }
            let heavy = self.heavy.contains(&name);
            queues.insert(
                name.clone(),
                Arc::new(QueueState {
                    name,
                    concurrency,
                    running: AtomicUsize::new(0),
                    // Until a claim finds the queue empty, assume jobs wait in it.
                    backlog: AtomicBool::new(true),
                    wake: Notify::new(),
                    paused: AtomicBool::new(false),
                    heavy,
                    outcomes: Mutex::default(),
                }),
            );
        }
        if let Some(name) = self.heavy.iter().find(|n| !queues.contains_key(*n)) {
            return Err(Error::Config(format!(
                "heavy queue {name:?} is not configured"
            )));
        }
        baton_core::concurrency::check_limits(&self.concurrency).map_err(Error::Config)?;
        let mut handlers = self.handlers;
        let mut self_timed = HashSet::new();
        if !handlers.contains_key(KIND_COMMAND) {
            let f: HandlerFn =
                Arc::new(|ctx, payload| Box::pin(crate::command::run_command(ctx, payload)));
            handlers.insert(KIND_COMMAND.into(), f);
            self_timed.insert(KIND_COMMAND.to_string());
        }
        if !handlers.contains_key(KIND_PIPELINE) {
            let f: HandlerFn =
                Arc::new(|ctx, payload| Box::pin(crate::command::run_pipeline(ctx, payload)));
            handlers.insert(KIND_PIPELINE.into(), f);
            self_timed.insert(KIND_PIPELINE.to_string());
        }
        for (queue, limits) in &self.queue_limits {
            if !queues.contains_key(queue) {
                return Err(Error::Config(format!(
                    "limits of queue {queue:?}: the queue is not configured"
                )));
            }
            limits
                .parse("limits")
                .map_err(|e| Error::Config(format!("limits of queue {queue:?}: {e}")))?;
        }
        if self.usage.sample_every.is_zero() || self.usage.event_every.is_zero() {
            return Err(Error::Config(
                "usage: sample_every and event_every must be more than zero".into(),
            ));
        }
        let mechanism = self.usage.mechanism;
        // Finding cgroups reads and writes a few files.
        let enforcer = tokio::task::spawn_blocking(move || crate::limits::Enforcer::choose(mechanism))
            .await
            .map_err(|e| Error::Config(format!("cannot look for cgroups: {e}")))?
            .map_err(|why| {
                Error::Config(format!(
                    "limits mechanism \"cgroup\" is configured, but this server cannot use cgroups: {why}"
                ))
            })?;
        let mut pipelines = self.pipelines;
        for dir in &self.pipeline_dirs {
            pipelines.extend(crate::pipelines::load_dir(dir)?);
        }
        for p in &pipelines {
            p.validate(&self.limits)
                .map_err(|e| Error::Config(format!("pipeline {:?}: {e}", p.id)))?;
            let queue = p
                .queue
                .as_deref()
                .unwrap_or(baton_core::spec::DEFAULT_QUEUE);
            if !queues.contains_key(queue) {
                return Err(Error::Config(format!(
                    "pipeline {:?}: queue {queue:?} is not configured",
                    p.id
                )));
            }
        }
        let now = self.clock.now();
        let host = hostname();
        let server = ServerInfo {
            id: uuid_v7(),
            host: host.clone(),
            pid: std::process::id(),
            url: self.url,
            started_at: now,
            heartbeat_at: now,
            stopped_at: None,
            queues: queues.keys().cloned().collect(),
            workers: queues.values().map(|q| q.concurrency as u32).sum(),
        };
        for p in pipelines {
            store.put_pipeline(p, now).await?;
        }
        // Processes of jobs that ran when the engine died are still running: end them
        // before their jobs are queued again.
        let recovered = if store.shared() {
            // Other servers may be running on this store: only the attempts of those
            // whose heartbeats stopped (three missed) are recovered.
            let after = self.heartbeat * 3;
            let mut gone = Vec::new();
            for id in store.gone_servers(after).await? {
                if store.declare_gone(&id, after, now).await? {
                    gone.push(id);
                }
            }
            let cleanup = crate::command::kill_stranded(&*store, &host, Some(&gone)).await?;
            let mut recovered = Vec::new();
            for id in &gone {
                recovered.extend(
                    store
                        .recover(RecoverRequest {
                            server_id: Some(id.clone()),
                            jobs: None,
                            now,
                            manual: self.recovery == Recovery::Manual,
                            cleanup: cleanup.clone(),
                        })
                        .await?,
                );
            }
            recovered
        } else {
            let cleanup = crate::command::kill_stranded(&*store, &host, None).await?;
            store
                .recover(RecoverRequest {
                    server_id: None,
                    jobs: None,
                    now,
                    manual: self.recovery == Recovery::Manual,
                    cleanup,
                })
                .await?
        };
        for r in &recovered {
            tracing::info!(job_id = %r.job_id, queue = %r.queue, was = %r.was, now = %r.now, "recovered job after a crash");
        }
        for name in store.paused_queues().await? {
            if let Some(q) = queues.get(&name) {
                q.paused.store(true, Ordering::SeqCst);
            }
        }
        store.register_server(server.clone()).await?;
        store.set_concurrency_limits(self.concurrency.clone());
        let shared = store.shared();
        if let Some(kind) = self.remote_kinds.iter().find(|k| handlers.contains_key(*k)) {
            return Err(Error::Config(format!(
                "remote_kinds: {kind:?} is run by this server itself"
            )));
        }
        let mut native: Vec<String> = handlers.keys().cloned().collect();
        native.sort_unstable();
        let meter = Arc::new(crate::usage::Meter::new(
            &self.usage,
            enforcer,
            store.clone(),
            self.clock.clone(),
        ));
        let inner = Arc::new(Inner {
            meter,
            queue_limits: self.queue_limits,
            store,
            clock: self.clock,
            handlers,
            queues,
            limits: self.limits,
            server,
            running: Mutex::new(HashMap::new()),
            registered: Notify::new(),
            claims: Mutex::new(Claims::default()),
            pending_due: Mutex::new(None),
            timer: Notify::new(),
            shutdown: CancellationToken::new(),
            healthy: std::sync::atomic::AtomicBool::new(true),
            leading: std::sync::atomic::AtomicBool::new(!shared),
            dropped: Mutex::new(Default::default()),
            recovery: self.recovery,
            abandoning: CancellationToken::new(),
            outcome_write_retries: AtomicU64::new(0),
            tasks: TaskTracker::new(),
            background: TaskTracker::new(),
            max_log_lines: self.max_log_lines,
            self_timed,
            schedules: crate::scheduler::Timers::default(),
            security: Arc::new(self.security),
            pruned: Default::default(),
            remote: crate::remote::Registry::new(self.remote_kinds),
            native,
            pressure,
            concurrency: self.concurrency,
        });
        for q in inner.queues.values() {
            inner.background.spawn(dispatch(inner.clone(), q.clone()));
        }
        inner.background.spawn(timer(inner.clone()));
        inner
            .background
            .spawn(crate::concurrency::wake_on_freed_slots(inner.clone()));
        inner.background.spawn(crate::admission::run(inner.clone()));
        if let Some(every) = inner.pressure.options().sample_every {
            inner
                .background
                .spawn(crate::monitor::run(inner.clone(), every));
        }
        if inner.store.shared() {
            inner
                .background
                .spawn(crate::shared::wake_on_hints(inner.clone()));
            inner
                .background
                .spawn(crate::shared::obey_controls(inner.clone()));
        }
        inner.background.spawn(crate::scheduler::run(Engine {
            inner: inner.clone(),
        }));
        inner
            .background
            .spawn(workflows::react(inner.clone(), inner.store.subscribe()));
        inner
            .background
            .spawn(heartbeat(inner.clone(), self.heartbeat));
        inner
            .background
            .spawn(crate::retention::run(inner.clone(), self.retention));
        // Anything scheduled before the restart needs the timer to know about it.
        *inner.pending_due.lock().unwrap_or_else(|e| e.into_inner()) = Some(Millis::MIN);
        inner.timer.notify_one();
        Ok(Engine { inner })
    }
}

impl Engine {
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    pub fn server(&self) -> &ServerInfo {
        &self.inner.server
    }

    /// Admission control: the thresholds, the last readings, why heavy queues are
    /// held; and where tests inject readings.
    pub fn pressure(&self) -> &crate::Pressure {
        &self.inner.pressure
    }

    /// Stores a job and returns once it is durable. Submitting an id that exists returns
    /// the existing job (`created` is false).
    pub async fn submit(&self, spec: JobSpec) -> Result<Submitted> {
        let mut out = self.submit_many(vec![spec]).await?;
        out.pop()
            .ok_or_else(|| Error::Config("submit returned nothing".into()))
    }

    /// Stores several jobs in one atomic write; all are validated first, and none is
    /// stored if one is invalid.
    pub async fn submit_many(&self, specs: Vec<JobSpec>) -> Result<Vec<Submitted>> {
        self.inner.accepting()?;
        let now = self.inner.clock.now();
        let mut jobs = Vec::with_capacity(specs.len());
        for spec in &specs {
            jobs.push(self.new_job(spec, now, Origin::Client).await?);
        }
        self.store_new(jobs).await
    }

    /// Stores a client's batch in one atomic write, as [`Engine::submit_many`] does,
    /// and names the job to blame when it is refused ([`Error::InBatch`]: its index,
    /// and its field when one is at fault). Within a batch each job's id must be new
    /// to the batch, and a dependency on another job of the batch must name one given
    /// before it.
    pub async fn submit_batch(&self, specs: Vec<JobSpec>) -> Result<Vec<Submitted>> {
        self.inner.accepting()?;
        let now = self.inner.clock.now();
        let mut jobs = Vec::with_capacity(specs.len());
        // The client ids of the batch, each at its first index.
        let mut given: HashMap<&str, usize> = HashMap::with_capacity(specs.len());
        for (index, spec) in specs.iter().enumerate() {
            if let Some(id) = spec.id.as_deref() {
                given.entry(id).or_insert(index);
            }
        }
        let mut at: HashMap<String, usize> = HashMap::with_capacity(specs.len());
        for (index, spec) in specs.iter().enumerate() {
            let job = self
                .new_job(spec, now, Origin::Client)
                .await
                .map_err(|e| Error::in_batch(index, e))?;
            if let Some(&first) = given.get(job.id.as_str())
                && first != index
            {
                return Err(Error::in_batch(
                    index,
                    SpecError::new(
                        "id",
                        format!("{:?} is also the id of jobs[{first}]", job.id.as_str()),
                    )
                    .into(),
                ));
            }
            for (k, d) in job.depends_on.iter().enumerate() {
                if let Some(&later) = given.get(d.job.as_str())
                    && later >= index
                {
                    let why = if later == index {
                        "a job cannot depend on itself".to_owned()
                    } else {
                        format!(
                            "{:?} is jobs[{later}], later in the batch; a job may depend only on jobs given before it",
                            d.job
                        )
                    };
                    return Err(Error::in_batch(
                        index,
                        SpecError::new(format!("depends_on[{k}]"), why).into(),
                    ));
                }
            }
            at.insert(job.id.to_string(), index);
            jobs.push(job);
        }
        self.store_new(jobs).await.map_err(|e| match e.job_id() {
            Some(id) => match at.get(id) {
                Some(&index) => Error::in_batch(index, e),
                None => e,
            },
            None => e,
        })
    }

    /// A spec validated and admitted, ready to store: a stored pipeline's steps and
    /// defaults copied in, kind and queue checked, the commands policy applied and
    /// secrets sealed (`origin` says whether they came from a client or were sealed
    /// already, as a schedule's template's were).
    pub(crate) async fn new_job(
        &self,
        spec: &JobSpec,
        now: Millis,
        origin: Origin,
    ) -> Result<baton_core::NewJob> {
        let mut job = match self.stored_pipeline_of(spec).await? {
            Some((id, resolved)) => {
                let mut job = resolved.validate(now, &self.inner.limits)?;
                if let Some(Value::Object(exec)) = &mut job.exec {
                    exec.insert("pipeline".into(), Value::String(id));
                }
                job
            }
            None => spec.validate(now, &self.inner.limits)?,
        };
        self.check_kind_and_queue(&job.kind, &job.queue)?;
        self.admit(&mut job, origin)?;
        Ok(job)
    }

    /// Stores validated jobs in one write, starting some at once when their queue has
    /// idle workers.
    async fn store_new(&self, jobs: Vec<baton_core::NewJob>) -> Result<Vec<Submitted>> {
        // With idle workers and nothing waiting in the queue, the jobs start in the same
        // write that stores them: one commit instead of two between submit and start.
        let queue = match jobs.first() {
            Some(first) if jobs.iter().all(|j| j.queue == first.queue) => {
                self.inner.queues.get(&first.queue).cloned()
            }
            _ => None,
        };
        let ready = jobs.iter().filter(|j| j.state == State::Queued).count();
        // A remote worker's job waits for the worker's claim.
        let native = jobs.iter().all(|j| self.inner.is_native(&j.kind));
        let reserved = match &queue {
            Some(_) if !native => 0,
            Some(q) if !q.backlog.load(Ordering::SeqCst) && !self.inner.holds(q) => {
                q.reserve(ready)
            }
            _ => 0,
        };
        let claiming = (reserved > 0).then(|| self.inner.claiming());
        let out = if reserved > 0 {
            let start = StartNow {
                server_id: self.inner.server.id.clone(),
                max: reserved,
            };
            match self.inner.store.submit_and_start(jobs, start).await {
                Ok(out) => out,
                Err(e) => {
                    if let Some(q) = &queue {
                        q.release(reserved);
                    }
                    return Err(e.into());
                }
            }
        } else {
            self.inner.store.submit(jobs).await?
        };
        let mut started = 0;
        for s in &out {
            match (&s.claimed, &queue) {
                (Some(claimed), Some(q)) => {
                    started += 1;
                    self.inner
                        .tasks
                        .spawn(start_run(&self.inner, q.clone(), claimed.clone()));
                }
                _ if s.created => self.inner.job_became(&s.job),
                _ => {}
            }
        }
        drop(claiming);
        if let Some(q) = &queue
            && reserved > started
        {
            q.release(reserved - started);
        }
        Ok(out)
    }

    /// Checks a validated job against the commands policy and seals its secret env
    /// values, before anything is stored.
    pub(crate) fn admit(&self, job: &mut baton_core::NewJob, origin: Origin) -> Result<()> {
        if let Some(exec) = &mut job.exec {
            self.inner.security.admit(exec, origin)?;
            if let (Some(defaults), Value::Object(exec)) =
                (self.inner.queue_limits.get(&job.queue), exec)
            {
                // The queue's defaults fill what the job's limits leave out, and the job
                // keeps the result: it shows the limits it runs under.
                let own: baton_core::ResourceLimits = match exec.get("limits") {
                    Some(l) => serde_json::from_value(l.clone())
                        .map_err(|e| SpecError::new("limits", e.to_string()))?,
                    None => Default::default(),
                };
                let merged = own.or(defaults);
                if !merged.is_empty() {
                    exec.insert("limits".into(), json!(merged));
                }
            }
        }
        Ok(())
    }

    /// For a job of a stored pipeline: its id and the spec with the definition's steps
    /// and defaults filled in, resolved now so that later edits do not change it.
    pub(crate) async fn stored_pipeline_of(
        &self,
        spec: &JobSpec,
    ) -> Result<Option<(String, JobSpec)>> {
        let (KIND_PIPELINE, Some(id), None) = (
            spec.kind.as_str(),
            spec.pipeline.as_ref(),
            spec.steps.as_ref(),
        ) else {
            return Ok(None);
        };
        let Some(def) = self.inner.store.pipeline(id).await? else {
            return Err(
                SpecError::new("pipeline", format!("no stored pipeline is named {id:?}")).into(),
            );
        };
        Ok(Some((id.clone(), def.spec.resolve(spec))))
    }

    /// Stores (or replaces) a pipeline definition after checking it.
    pub async fn put_pipeline(&self, spec: PipelineSpec) -> Result<Pipeline> {
        spec.validate(&self.inner.limits)?;
        let queue = spec
            .queue
            .as_deref()
            .unwrap_or(baton_core::spec::DEFAULT_QUEUE);
        self.check_kind_and_queue(KIND_PIPELINE, queue)?;
        let now = self.inner.clock.now();
        Ok(self.inner.store.put_pipeline(spec, now).await?)
    }

    /// A stored pipeline definition; `None` when there is none of that id.
    pub async fn pipeline(&self, id: &str) -> Result<Option<Pipeline>> {
        Ok(self.inner.store.pipeline(id).await?)
    }

    /// Every stored pipeline definition, by id.
    pub async fn pipelines(&self) -> Result<Vec<Pipeline>> {
        Ok(self.inner.store.pipelines().await?)
    }

    /// Removes a pipeline definition; false when there was none. Jobs that ran it keep
    /// their steps.
    pub async fn delete_pipeline(&self, id: &str) -> Result<bool> {
        Ok(self.inner.store.delete_pipeline(id).await?)
    }

    /// A job's captured log lines with `seq` after `after`, at most `limit`.
    pub async fn logs(&self, id: &str, after: u64, limit: usize) -> Result<Vec<LogLine>> {
        self.get(id).await?;
        Ok(self.inner.store.logs(id, after, limit).await?)
    }

    pub(crate) fn check_kind_and_queue(&self, kind: &str, queue: &str) -> Result<()> {
        let remote = !self.inner.handlers.contains_key(kind);
        if remote && !self.inner.remote.serves_kind(kind) {
            let mut known: Vec<String> = self.inner.handlers.keys().cloned().collect();
            known.extend(self.inner.remote.kinds());
            known.sort_unstable();
            return Err(Error::UnknownKind {
                kind: kind.into(),
                known: if known.is_empty() {
                    "none".into()
                } else {
                    known.join(", ")
                },
            });
        }
        let served = remote && self.inner.remote.serves_queue(queue);
        if !served && !self.inner.queues.contains_key(queue) {
            let known: Vec<&str> = self.inner.queues.keys().map(String::as_str).collect();
            return Err(Error::UnknownQueue {
                queue: queue.into(),
                known: known.join(", "),
            });
        }
        Ok(())
    }

    /// A job. While this engine runs it, `usage` is the sampler's latest measurement,
    /// which the store has at most `event_every` later.
    pub async fn get(&self, id: &str) -> Result<Job> {
        let mut job = self
            .inner
            .store
            .get(id)
            .await?
            .ok_or_else(|| Error::Store(baton_store::Error::NotFound(id.into())))?;
        if job.state.is_executing()
            && let Some(live) = self.inner.meter.live(id)
        {
            job.usage = Some(live);
        }
        Ok(job)
    }

    /// What the usage sampler measured and did since the engine started.
    pub fn usage_stats(&self) -> crate::UsageStats {
        self.inner.meter.stats()
    }

    /// How job limits are enforced on this server.
    pub fn limits_report(&self) -> crate::LimitsReport {
        self.inner.meter.report()
    }

    pub async fn list(&self, filter: JobFilter) -> Result<JobPage> {
        Ok(self.inner.store.list(filter).await?)
    }

    /// A job's events after its own sequence number `after`.
    pub async fn events(&self, id: &str, after: u64) -> Result<Vec<baton_core::Event>> {
        self.get(id).await?;
        Ok(self.inner.store.job_events(id, after, 10_000).await?)
    }

    /// The job's attempts, oldest first, read from its events.
    pub async fn attempts(&self, id: &str) -> Result<Vec<baton_core::Attempt>> {
        let job = self.get(id).await?;
        const PAGE: usize = 1000;
        let mut events = Vec::new();
        loop {
            let after = events.last().map_or(0, |e: &baton_core::Event| e.seq);
            let page = self
                .inner
                .store
                .job_events_of(id, baton_core::attempt::ATTEMPT_EVENTS, after, PAGE)
                .await?;
            let full = page.len() == PAGE;
            events.extend(page);
            if !full {
                break;
            }
        }
        let runs_process = matches!(job.kind.as_str(), KIND_COMMAND | KIND_PIPELINE);
        Ok(baton_core::attempt::from_events(&events, runs_process))
    }

    pub async fn checkpoints(&self, id: &str) -> Result<Vec<baton_store::Checkpoint>> {
        self.get(id).await?;
        Ok(self.inner.store.checkpoints(id).await?)
    }

    /// Live events from now on (every event committed after this call), without
    /// polling. A subscriber that falls behind reads what it missed from the store,
    /// however much, so it sees every event once, in order.
    pub async fn subscribe(&self) -> Result<Subscription> {
        // Subscribe before reading the position: an event committed after the read is
        // published after it, so it reaches the receiver (or the receiver lags and the
        // store has it).
        let rx = self.inner.store.subscribe();
        let last = self.inner.store.last_event_id().await?;
        Ok(Subscription {
            rx,
            store: self.inner.store.clone(),
            last,
            catching_up: false,
            backlog: VecDeque::new(),
        })
    }

    /// Waits until the job is in a terminal state and returns it.
    pub async fn wait(&self, id: &str) -> Result<Job> {
        let mut rx = self.inner.store.subscribe();
        loop {
            let job = self.get(id).await?;
            if job.state.is_terminal() {
                return Ok(job);
            }
            loop {
                match rx.recv().await {
                    Ok(e) if e.kind.is_terminal() && e.job_id.as_deref() == Some(id) => break,
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(_)) => break,
                    Err(broadcast::error::RecvError::Closed) => {
                        return Err(Error::Store(baton_store::Error::Closed));
                    }
                }
            }
        }
    }

    /// Pauses a running job: its handler blocks at its next pause point.
    pub async fn pause(&self, id: &str) -> Result<Job> {
        let job = self.get(id).await?;
        if job.state != State::Running {
            return Err(illegal(id, "pause", job.state));
        }
        let now = self.inner.clock.now();
        let job = self
            .inner
            .store
            .transition(
                Transition::new(id, State::Paused, EventKind::Paused, now)
                    .expect(&[State::Running]),
            )
            .await?;
        if let Some(h) = self.inner.registered_handle(id).await {
            h.ctl.send_replace(Ctl::Pause);
        }
        Ok(job)
    }

    /// Resumes a paused job.
    pub async fn resume(&self, id: &str) -> Result<Job> {
        let job = self.get(id).await?;
        if job.state != State::Paused {
            return Err(illegal(id, "resume", job.state));
        }
        let now = self.inner.clock.now();
        let job = self
            .inner
            .store
            .transition(
                Transition::new(id, State::Running, EventKind::Resumed, now)
                    .expect(&[State::Paused]),
            )
            .await?;
        if let Some(h) = self.inner.registered_handle(id).await {
            h.ctl.send_replace(Ctl::Run);
        }
        Ok(job)
    }

    /// Stops a running or paused job. Graceful: the handler's cancellation token fires
    /// and it has its grace period to return. Force: its task is aborted at once.
    pub async fn stop(&self, id: &str, force: bool) -> Result<Job> {
        let job = self.get(id).await?;
        if !job.state.is_executing() {
            return Err(illegal(id, "stop", job.state));
        }
        if force {
            return self.inner.force_stop(id, job.state).await;
        }
        if job.state == State::Stopping {
            return Ok(job);
        }
        let now = self.inner.clock.now();
        let (grace, handle) = match self.inner.registered_handle(id).await {
            Some(h) => (h.grace, Some((h.ctl, h.cancel))),
            None => (Duration::ZERO, None),
        };
        let job = self
            .inner
            .store
            .transition(
                Transition::new(id, State::Stopping, EventKind::Stopping, now)
                    .expect(&[State::Running, State::Paused])
                    .data(json!({"grace_ms": grace.as_millis() as u64})),
            )
            .await?;
        if let Some((ctl, cancel)) = handle {
            ctl.send_replace(Ctl::Stop);
            cancel.cancel();
            let inner = self.inner.clone();
            let id = id.to_owned();
            tokio::spawn(async move {
                tokio::time::sleep(grace).await;
                let still = inner.running_handle(&id).is_some();
                if still {
                    tracing::info!(job_id = %id, "grace period over; aborting the job");
                    let _ = inner.force_stop(&id, State::Stopping).await;
                }
            });
        } else if !self.inner.store.shared() {
            // Nobody runs it here (its worker is gone): end it now.
            return self.inner.force_stop(id, State::Stopping).await;
        }
        // On a shared store another server may run it: that server sees the
        // `job.stopping` event and stops its attempt (`shared::obey_controls`); a dead
        // server's attempt ends when the server is recovered.
        Ok(job)
    }

    /// Cancels a job: a waiting job at once, a running one by a graceful stop.
    pub async fn cancel(&self, id: &str) -> Result<Job> {
        // The job may move on (a worker claims it) between reading and writing: decide
        // again from its new state.
        let mut tries = 0;
        loop {
            tries += 1;
            let job = self.get(id).await?;
            let result = match job.state {
                State::Running | State::Paused => self.stop(id, false).await,
                State::Stopping => Ok(job),
                s => {
                    let now = self.inner.clock.now();
                    let t = Transition::new(id, State::Cancelled, EventKind::Cancelled, now)
                        .expect(&[s])
                        .data(json!({"reason": "cancelled"}))
                        .changes(Changes {
                            error: Some(baton_core::ErrorInfo::new(
                                "cancelled",
                                "cancelled by a user",
                            )),
                            ..Changes::default()
                        });
                    self.inner.store.transition(t).await.map_err(Error::from)
                }
            };
            match result {
                Err(Error::Store(baton_store::Error::Conflict { .. })) if tries < 5 => continue,
                other => return other,
            }
        }
    }

    /// Runs a finished (or crashed) job again with a fresh attempt budget, from its last
    /// checkpoint when asked.
    pub async fn retry(&self, id: &str, from_checkpoint: bool) -> Result<Job> {
        let job = self.get(id).await?;
        let now = self.inner.clock.now();
        let t = Transition::new(id, State::Queued, EventKind::Queued, now)
            .expect(&[job.state])
            .data(json!({"reason": "retry", "from_checkpoint": from_checkpoint}))
            .changes(Changes {
                new_attempt_budget: true,
                clear_checkpoint: !from_checkpoint,
                ..Changes::default()
            });
        let job = self.inner.store.transition(t).await?;
        self.inner.job_became(&job);
        Ok(job)
    }

    /// Marks a job deleted (kept until purged).
    pub async fn delete(&self, id: &str) -> Result<Job> {
        let job = self.get(id).await?;
        let now = self.inner.clock.now();
        let t = Transition::new(id, State::Deleted, EventKind::Deleted, now).expect(&[job.state]);
        Ok(self.inner.store.transition(t).await?)
    }

    /// The queues this engine serves: name, concurrency and jobs running now.
    pub fn queues(&self) -> Vec<(String, usize, usize)> {
        self.inner
            .queues
            .values()
            .map(|q| {
                (
                    q.name.clone(),
                    q.concurrency,
                    q.running.load(Ordering::SeqCst),
                )
            })
            .collect()
    }

    /// Outcome writes that failed and were tried again since the engine started.
    pub fn outcome_write_retries(&self) -> u64 {
        self.inner.outcome_write_retries.load(Ordering::Relaxed)
    }

    /// Jobs this engine is executing now.
    /// Jobs and events removed by retention since the engine started.
    pub fn pruned(&self) -> (u64, u64) {
        (
            self.inner.pruned.jobs.load(Ordering::Relaxed),
            self.inner.pruned.events.load(Ordering::Relaxed),
        )
    }

    /// Retention's writes since the engine started, and their total time from request
    /// to answer (the writer's queue included).
    pub fn prune_writes(&self) -> (u64, Duration) {
        (
            self.inner.pruned.writes.load(Ordering::Relaxed),
            Duration::from_nanos(self.inner.pruned.write_ns.load(Ordering::Relaxed)),
        )
    }

    /// False while the store does not take this server's heartbeats (a shared store
    /// that cannot be reached): `/readyz` then says the server is not ready.
    pub fn healthy(&self) -> bool {
        self.inner.healthy.load(Ordering::SeqCst)
    }

    /// Whether this server does the work only one server may do: it holds the leader
    /// lease of a shared store (as of its last heartbeat), or owns its store alone.
    pub fn leading(&self) -> bool {
        self.inner.leading.load(Ordering::SeqCst)
    }

    pub fn running_jobs(&self) -> Vec<String> {
        let running = self.inner.running.lock().unwrap_or_else(|e| e.into_inner());
        running.keys().cloned().collect()
    }

    /// Stops claiming, lets running jobs finish for up to `timeout`, then stops them and
    /// leaves them to be queued again, and closes the store.
    pub async fn shutdown(&self, timeout: Duration) {
        let inner = &self.inner;
        inner.shutdown.cancel();
        inner.background.close();
        inner.background.wait().await;
        inner.tasks.close();
        if tokio::time::timeout(timeout, inner.tasks.wait())
            .await
            .is_err()
        {
            inner.abandoning.cancel();
            let handles: Vec<CancellationToken> = {
                let running = inner.running.lock().unwrap_or_else(|e| e.into_inner());
                running.values().map(|h| h.kill.clone()).collect()
            };
            tracing::warn!(
                jobs = handles.len(),
                "jobs still running at shutdown; they will resume at the next start"
            );
            for h in handles {
                h.cancel();
            }
            let _ = tokio::time::timeout(Duration::from_secs(5), inner.tasks.wait()).await;
            let now = inner.clock.now();
            if let Err(e) = inner.store.release(&inner.server.id, now).await {
                tracing::error!(error = %e, "cannot requeue the jobs stopped at shutdown");
            }
        }
        let now = inner.clock.now();
        let _ = inner.store.server_stopped(&inner.server.id, now).await;
        inner.store.close().await;
    }
}

fn illegal(id: &str, action: &'static str, state: State) -> Error {
    Error::Illegal {
        id: id.into(),
        action,
        state,
    }
}

impl Inner {
    /// Marks a claim under way until the guard is dropped.
    pub(crate) fn claiming(self: &Arc<Self>) -> Claiming {
        let mut claims = self.claims.lock().unwrap_or_else(|e| e.into_inner());
        let n = claims.next;
        claims.next += 1;
        claims.open.insert(n);
        Claiming {
            inner: self.clone(),
            n,
        }
    }

    /// The attempt this engine runs for the job. The store may say `running` a moment
    /// before the worker that claimed it has registered the attempt (the claim's reply
    /// is still on its way): wait a little for it rather than take the job for orphaned.
    /// Only a claim of this engine already under way can be that one (a later claim
    /// finds the job running): with none, the job runs elsewhere (another server, on
    /// a shared store) or nowhere, and the answer comes at once.
    async fn registered_handle(&self, id: &str) -> Option<HandleParts> {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(500);
        let before = self.claims.lock().unwrap_or_else(|e| e.into_inner()).next;
        loop {
            let registered = self.registered.notified();
            tokio::pin!(registered);
            registered.as_mut().enable();
            // Read before looking: a claim that ended before this read has registered
            // its attempts.
            let waiting = self
                .claims
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .open
                .first()
                .is_some_and(|n| *n < before);
            {
                let running = self.running.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(h) = running.get(id) {
                    return Some(HandleParts {
                        ctl: h.ctl.clone(),
                        cancel: h.cancel.clone(),
                        grace: h.grace,
                    });
                }
            }
            if !waiting || tokio::time::timeout_at(deadline, registered).await.is_err() {
                return None;
            }
        }
    }

    /// The controls of an attempt this engine runs, if it runs one of the job.
    pub(crate) fn handle_parts(&self, id: &str) -> Option<HandleParts> {
        let running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        running.get(id).map(|h| HandleParts {
            ctl: h.ctl.clone(),
            cancel: h.cancel.clone(),
            grace: h.grace,
        })
    }

    /// Aborts every attempt this engine runs, which then record no outcome (their jobs
    /// are recovered instead); how many.
    fn kill_all(&self) -> usize {
        let running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        let mut dropped = self.dropped.lock().unwrap_or_else(|e| e.into_inner());
        for (id, h) in running.iter() {
            dropped.insert((id.clone(), h.fence));
            h.kill.cancel();
        }
        running.len()
    }

    /// Aborts the attempt this engine runs of the job, if any.
    pub(crate) fn kill(&self, id: &str) {
        let running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(h) = running.get(id) {
            h.kill.cancel();
        }
    }

    fn running_handle(&self, id: &str) -> Option<watch::Sender<Ctl>> {
        let running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        running.get(id).map(|h| h.ctl.clone())
    }

    /// Wakes whoever must act on a job that just became queued or scheduled.
    pub(crate) fn job_became(&self, job: &Job) {
        self.job_is(job.state, &job.queue, job.run_at);
    }

    pub(crate) fn job_is(&self, state: State, queue: &str, run_at: Option<Millis>) {
        match state {
            State::Queued => {
                if let Some(q) = self.queues.get(queue) {
                    q.backlog.store(true, Ordering::SeqCst);
                    q.wake.notify_one();
                }
                self.remote.wake(queue);
            }
            State::Scheduled => {
                if let Some(at) = run_at {
                    self.schedule_wake(at);
                }
            }
            _ => {}
        }
    }

    fn schedule_wake(&self, at: Millis) {
        let mut pending = self.pending_due.lock().unwrap_or_else(|e| e.into_inner());
        *pending = Some(pending.map_or(at, |p| p.min(at)));
        drop(pending);
        self.timer.notify_one();
    }

    pub(crate) async fn force_stop(self: &Arc<Self>, id: &str, state: State) -> Result<Job> {
        let now = self.clock.now();
        let t = Transition::new(id, State::Cancelled, EventKind::Cancelled, now)
            .expect(&[state, State::Running, State::Paused, State::Stopping])
            .data(json!({"reason": "stopped", "force": true}))
            .changes(Changes {
                error: Some(baton_core::ErrorInfo::new("cancelled", "stopped by a user")),
                ..Changes::default()
            });
        let job = match self.store.transition(t).await {
            Ok(job) => job,
            Err(e) => {
                // The attempt ended cancelled meanwhile (its runner, a remote worker or
                // this server's recovery, got there first): what was asked is done.
                match self.store.get(id).await {
                    Ok(Some(job)) if job.state == State::Cancelled => return Ok(job),
                    _ => return Err(e.into()),
                }
            }
        };
        let handle = {
            let running = self.running.lock().unwrap_or_else(|e| e.into_inner());
            running.get(id).map(|h| h.kill.clone())
        };
        if let Some(kill) = handle {
            kill.cancel();
        }
        Ok(job)
    }
}

/// One per queue: writes the outcomes of attempts that ended together with the claim
/// of the jobs that take their slots (one commit frees a slot and fills it again), and
/// claims while the queue has free slots; sleeps until a job is submitted, a slot frees
/// up or an outcome waits.
async fn dispatch(inner: Arc<Inner>, queue: Arc<QueueState>) {
    loop {
        let closing = inner.shutdown.is_cancelled();
        let pending = {
            let mut p = queue.outcomes.lock().unwrap_or_else(|e| e.into_inner());
            // At shutdown no job is claimed; the outcomes that arrive later are
            // written by their own tasks.
            p.closed = closing;
            std::mem::take(&mut p.list)
        };
        let free = queue
            .concurrency
            .saturating_sub(queue.running.load(Ordering::SeqCst));
        // While the store does not take this server's heartbeats nothing is claimed:
        // the attempts may be stopped and recovered (see `heartbeat`).
        let claim = !closing && !inner.holds(&queue) && inner.healthy.load(Ordering::SeqCst);
        if pending.is_empty() {
            if closing {
                return;
            }
            if free == 0 || !claim {
                tokio::select! {
                    _ = queue.wake.notified() => continue,
                    _ = inner.shutdown.cancelled() => continue,
                }
            }
        }
        // The claim takes the slots free now, and the store adds the slot of each
        // outcome that ends its attempt: those pass to the claimed jobs directly.
        let reserved = if claim { queue.reserve(1024) } else { 0 };
        let settle = baton_store::Settle {
            outcomes: pending.iter().map(|p| p.transitions.clone()).collect(),
            claim: claim.then(|| ClaimRequest {
                queue: queue.name.clone(),
                limit: reserved,
                server_id: inner.server.id.clone(),
                now: inner.clock.now(),
                kinds: Some(inner.native.clone()),
            }),
        };
        let had_outcomes = !pending.is_empty();
        let claiming = claim.then(|| inner.claiming());
        match inner.store.settle(settle).await {
            Ok(settled) => {
                let freed = settled.freed();
                for (p, result) in pending.into_iter().zip(settled.outcomes) {
                    let _ = p.reply.send(result);
                }
                let taken = reserved + if claim { freed } else { 0 };
                let filled = settled.claimed.len();
                if taken > 0 {
                    queue.backlog.store(filled >= taken, Ordering::SeqCst);
                }
                // Ended attempts' slots not refilled, and reserved ones left empty.
                let unused = if claim {
                    taken - filled.min(taken)
                } else {
                    freed
                };
                queue.running.fetch_sub(unused, Ordering::SeqCst);
                let started = settled.claimed.len();
                for job in settled.claimed {
                    inner.tasks.spawn(start_run(&inner, queue.clone(), job));
                }
                drop(claiming);
                if started > 0 {
                    // Let the jobs just started run first: those that return at once
                    // join the next write together, rather than split over two.
                    tokio::task::yield_now().await;
                }
                if claim && filled < taken && !had_outcomes {
                    // Nothing is ready: sleep until a job is submitted or an outcome waits.
                    tokio::select! {
                        _ = queue.wake.notified() => {}
                        _ = inner.shutdown.cancelled() => {}
                    }
                }
            }
            Err(e) => {
                drop(claiming);
                queue.running.fetch_sub(reserved, Ordering::SeqCst);
                // The outcomes' tasks write them on their own, retrying.
                for p in pending {
                    let _ = p.reply.send(Err(e.clone()));
                }
                tracing::error!(queue = %queue.name, error = %e, "cannot claim jobs; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                    _ = inner.shutdown.cancelled() => {}
                }
            }
        }
    }
}

/// Registers a claimed attempt before anything else can see it running, so that a
/// control request that arrives at once finds it, then returns the task that runs it.
fn start_run(
    inner: &Arc<Inner>,
    queue: Arc<QueueState>,
    claimed: Claimed,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let run = register_attempt(inner, &claimed);
    run_job(inner.clone(), queue, claimed, run)
}

/// Registers a claimed attempt in `running`, where control requests find it.
pub(crate) fn register_attempt(inner: &Arc<Inner>, claimed: &Claimed) -> Run {
    let (ctl_tx, ctl_rx) = watch::channel(Ctl::Run);
    let cancel = CancellationToken::new();
    let kill = CancellationToken::new();
    inner
        .running
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(
            claimed.job.id.clone(),
            RunHandle {
                fence: claimed.fence,
                ctl: ctl_tx.clone(),
                cancel: cancel.clone(),
                kill: kill.clone(),
                grace: claimed.grace,
            },
        );
    inner.registered.notify_waiters();
    Run {
        ctl_tx,
        ctl_rx,
        cancel,
        kill,
    }
}

pub(crate) struct Run {
    pub ctl_tx: watch::Sender<Ctl>,
    pub ctl_rx: watch::Receiver<Ctl>,
    pub cancel: CancellationToken,
    pub kill: CancellationToken,
}

impl Inner {
    /// Whether this engine runs jobs of the kind itself.
    pub(crate) fn is_native(&self, kind: &str) -> bool {
        self.handlers.contains_key(kind)
    }

    pub(crate) fn server_id(&self) -> &str {
        &self.server.id
    }

    pub(crate) fn recovery(&self) -> Recovery {
        self.recovery
    }

    /// False while the store does not take this server's heartbeats: nothing is
    /// claimed.
    pub(crate) fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::SeqCst)
    }

    /// Whether a queue this engine knows is paused.
    pub(crate) fn queue_paused(&self, queue: &str) -> bool {
        self.queues
            .get(queue)
            .is_some_and(|q| q.paused.load(Ordering::SeqCst))
    }

    /// Whether a queue this engine knows is heavy and held by admission control.
    pub(crate) fn queue_held(&self, queue: &str) -> bool {
        self.queues
            .get(queue)
            .is_some_and(|q| q.heavy && self.pressure.is_held())
    }

    /// Whether the queue starts no new job now: paused by a user, or heavy and held.
    fn holds(&self, q: &QueueState) -> bool {
        q.paused.load(Ordering::SeqCst) || (q.heavy && self.pressure.is_held())
    }

    /// Wakes the dispatchers (and remote workers) of heavy queues: the hold was lifted.
    pub(crate) fn wake_heavy(&self) {
        for q in self.queues.values().filter(|q| q.heavy) {
            q.backlog.store(true, Ordering::SeqCst);
            q.wake.notify_one();
            self.remote.wake(&q.name);
        }
    }

    /// Whether new jobs are accepted now: not at shutdown, nor while the store's disk
    /// is low.
    pub(crate) fn accepting(&self) -> Result<()> {
        if self.shutdown.is_cancelled() {
            return Err(Error::ShuttingDown);
        }
        match self.pressure.refusal() {
            Some(why) => Err(Error::InsufficientStorage(why)),
            None => Ok(()),
        }
    }

    pub(crate) fn server_info(&self) -> &ServerInfo {
        &self.server
    }

    /// Forgets an ended attempt: control requests no longer find it.
    pub(crate) fn unregister(&self, id: &str, fence: u64) {
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        if running.get(id).is_some_and(|h| h.fence == fence) {
            running.remove(id);
        }
    }

    /// Whether the attempt was stopped because its runner is gone (this server lost
    /// the store, or the remote worker its connection): it records no outcome.
    pub(crate) fn take_dropped(&self, id: &str, fence: u64) -> bool {
        self.dropped
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&(id.to_owned(), fence))
    }

    /// Marks attempts as dropped (see [`Inner::take_dropped`]).
    pub(crate) fn drop_attempts(&self, attempts: &[(String, u64)]) {
        let mut dropped = self.dropped.lock().unwrap_or_else(|e| e.into_inner());
        dropped.extend(attempts.iter().cloned());
    }

    /// Whether an attempt of the job with this token is registered here.
    pub(crate) fn is_running(&self, id: &str, fence: u64) -> bool {
        let running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        running.get(id).is_some_and(|h| h.fence == fence)
    }
}

async fn run_job(inner: Arc<Inner>, queue: Arc<QueueState>, claimed: Claimed, run: Run) {
    let id = claimed.job.id.clone();
    let Run {
        ctl_tx,
        ctl_rx,
        cancel,
        kill,
    } = run;
    let outcome = match inner.handlers.get(&claimed.job.kind).cloned() {
        None => Outcome::Done(Err(JobError::fatal(format!(
            "no handler is registered for kind {:?} on this server",
            claimed.job.kind
        )))),
        Some(handler) => {
            let ctx = JobContext::new(CtxInner {
                run: RunEnv {
                    store: inner.store.clone(),
                    clock: inner.clock.clone(),
                    job_id: id.clone(),
                    fence: claimed.fence,
                    ctl: ctl_rx,
                    cancel: cancel.clone(),
                    max_log_lines: inner.max_log_lines,
                    security: inner.security.clone(),
                    meter: inner.meter.clone(),
                },
                kind: claimed.job.kind.clone(),
                queue: claimed.job.queue.clone(),
                attempt: claimed.job.attempt,
                checkpoint: claimed.checkpoint.clone(),
                step: Mutex::new(claimed.job.step.clone()),
                exec: claimed.exec.clone(),
                timeout: claimed.timeout,
                grace: claimed.grace,
                resume_step: claimed.job.step.clone(),
            });
            let payload = claimed.job.payload.clone().unwrap_or(Value::Null);
            let mut task = tokio::spawn(handler(ctx, payload));
            let abort = task.abort_handle();
            let limit = if inner.self_timed.contains(&claimed.job.kind) {
                None
            } else {
                claimed.timeout
            };
            let finished = async {
                match limit {
                    Some(limit) => tokio::time::timeout(limit, &mut task).await.ok(),
                    None => Some((&mut task).await),
                }
            };
            // A force stop aborts the handler's task wherever it is.
            let ended = tokio::select! {
                j = finished => Some(j),
                _ = kill.cancelled() => None,
            };
            let joined = match ended {
                Some(Some(j)) => Some(j),
                Some(None) => {
                    abort.abort();
                    None
                }
                None => {
                    abort.abort();
                    Some(task.await)
                }
            };
            match joined {
                None => Outcome::TimedOut(claimed.timeout.unwrap_or_default()),
                Some(Ok(r)) => Outcome::Done(r),
                Some(Err(e)) if e.is_cancelled() => Outcome::Aborted,
                Some(Err(e)) => Outcome::Panicked(panic_message(e)),
            }
        }
    };
    {
        let mut running = inner.running.lock().unwrap_or_else(|e| e.into_inner());
        if running.get(&id).is_some_and(|h| h.fence == claimed.fence) {
            running.remove(&id);
        }
    }
    // The slot stays taken until the outcome is recorded (or refused): no more work
    // starts than can be recorded. The dispatcher frees it when it writes the outcome.
    let mut freed = false;
    // An attempt stopped because this server lost the store writes nothing: its job
    // is recovered (here or by another server), not ended.
    let dropped = inner
        .dropped
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&(id.clone(), claimed.fence));
    if dropped || inner.abandoning.is_cancelled() {
        inner.meter.take_final(&id, claimed.fence);
    }
    if !inner.abandoning.is_cancelled() && !dropped {
        let intent = *ctl_tx.borrow();
        let (transitions, requeued) = outcome_of(&inner, &claimed, intent, outcome);
        let written = match hand_over(&queue.outcomes, &queue.wake, transitions.clone()).await {
            Some(Ok(())) => {
                freed = true;
                Ok(())
            }
            Some(Err(e)) if e.is_refusal() => {
                freed = true;
                Err(e.into())
            }
            // Not written: this task writes it, retrying, and then frees the slot.
            failed => {
                if let Some(Err(e)) = failed {
                    tracing::warn!(job_id = %id, error = %e,
                        "cannot record the job's outcome; retrying");
                    inner.outcome_write_retries.fetch_add(1, Ordering::Relaxed);
                }
                Outcomes { inner: &inner }.record_all(&transitions).await
            }
        };
        match written {
            Ok(()) => {
                if let Some((to, run_at)) = requeued {
                    inner.job_is(to, &claimed.job.queue, run_at);
                }
            }
            // A stale fence means a user ended the attempt (force stop) first.
            Err(Error::Store(baton_store::Error::StaleFence { .. })) => {}
            Err(e) => {
                tracing::error!(job_id = %id, error = %e, "cannot record the job's outcome");
            }
        }
    }
    if !freed {
        queue.running.fetch_sub(1, Ordering::SeqCst);
    }
    queue.wake.notify_one();
}

/// Gives an outcome to the queue's dispatcher, to be written with its next claim, and
/// waits for its result; `None` when the dispatcher has stopped or dropped it.
pub(crate) async fn hand_over(
    outcomes: &Mutex<PendingOutcomes>,
    wake: &Notify,
    transitions: Arc<[Transition]>,
) -> Option<std::result::Result<(), baton_store::Error>> {
    let (reply, result) = tokio::sync::oneshot::channel();
    {
        let mut p = outcomes.lock().unwrap_or_else(|e| e.into_inner());
        if p.closed {
            return None;
        }
        p.list.push(PendingOutcome { transitions, reply });
    }
    wake.notify_one();
    result.await.ok()
}

/// How long the attempt ran, for its completion event (the dashboard tells of a long
/// job's end).
fn ran(c: &Claimed, now: Millis) -> Value {
    match c.job.started_at {
        Some(at) => json!({ "ran_ms": (now - at).max(0) }),
        None => json!({}),
    }
}

/// Where a job that goes back to wait waits: its state and, when scheduled, its time.
pub(crate) type Requeued = (State, Option<Millis>);

/// What an attempt's end writes: its transitions, in order, and where the job waits
/// when it goes back to wait (a retry).
pub(crate) fn outcome_of(
    inner: &Arc<Inner>,
    c: &Claimed,
    intent: Ctl,
    outcome: Outcome,
) -> (Arc<[Transition]>, Option<Requeued>) {
    let (mut out, requeued) = outcome_transitions(inner, c, intent, outcome);
    // What the attempt's processes used goes with its end: the job keeps it, and the
    // event carries it into the attempt's history.
    if let Some(usage) = inner.meter.take_final(&c.job.id, c.fence)
        && let Some(last) = out.last_mut()
    {
        if let Value::Object(data) = &mut last.data {
            data.insert("usage".into(), json!(usage));
        }
        last.changes.usage = Some(usage);
    }
    (out.into(), requeued)
}

fn outcome_transitions(
    inner: &Arc<Inner>,
    c: &Claimed,
    intent: Ctl,
    outcome: Outcome,
) -> (Vec<Transition>, Option<Requeued>) {
    let id = c.job.id.as_str();
    let now = inner.clock.now();
    let t = |to, event| Transition::new(id, to, event, now).fence(c.fence);
    let mut out = Vec::with_capacity(2);
    if intent == Ctl::Pause {
        // The handler returned without reaching a pause point: it is running again.
        out.push(t(State::Running, EventKind::Resumed).data(json!({"reason": "finished"})));
    }
    let aborted = matches!(outcome, Outcome::Aborted);
    let error = match outcome {
        Outcome::Done(Ok(result)) => {
            out.push(
                t(State::Completed, EventKind::Completed)
                    .data(ran(c, now))
                    .changes(Changes {
                        result: Some(result),
                        ..Changes::default()
                    }),
            );
            return (out, None);
        }
        Outcome::Done(Err(e)) => e,
        Outcome::Aborted => JobError::stopped(),
        Outcome::Panicked(msg) => JobError::new(format!("the handler panicked: {msg}")),
        Outcome::TimedOut(limit) => JobError::with_code(
            "timeout",
            format!("timed out after {}", baton_core::duration::format(limit)),
        ),
    };
    if intent == Ctl::Stop || aborted {
        let info = baton_core::ErrorInfo::new("cancelled", "stopped by a user");
        out.push(
            t(State::Cancelled, EventKind::Cancelled)
                .data(json!({"reason": "stopped"}))
                .changes(Changes {
                    error: Some(info),
                    ..Changes::default()
                }),
        );
        return (out, None);
    }
    let info = error.info();
    if error.is_retryable() && c.retries_left > 0 {
        let delay = c.backoff.delay(c.job.attempt);
        let run_at = now + delay.as_millis() as i64;
        let mut data = error.event_data();
        data.insert("attempt".into(), json!(c.job.attempt));
        data.insert("run_at".into(), json!(baton_core::time::to_rfc3339(run_at)));
        let (to, run_at) = if delay.is_zero() {
            (State::Queued, None)
        } else {
            (State::Scheduled, Some(run_at))
        };
        out.push(
            t(to, EventKind::Retrying)
                .data(Value::Object(data))
                .changes(Changes {
                    error: Some(info),
                    run_at,
                    ..Changes::default()
                }),
        );
        return (out, Some((to, run_at)));
    }
    out.push(
        t(State::Failed, EventKind::Failed)
            .data(Value::Object(error.event_data()))
            .changes(Changes {
                error: Some(info),
                ..Changes::default()
            }),
    );
    (out, None)
}

/// Writes an attempt's outcome, trying again (same transition, same fencing token)
/// after a failure until it lands, the store refuses it for good, or shutdown gives up.
pub(crate) struct Outcomes<'a> {
    pub inner: &'a Arc<Inner>,
}

impl Outcomes<'_> {
    pub(crate) async fn record_all(&self, transitions: &[Transition]) -> Result<()> {
        for t in transitions {
            self.record(t.clone()).await?;
        }
        Ok(())
    }

    async fn record(&self, t: Transition) -> Result<()> {
        let mut attempt: u32 = 0;
        loop {
            attempt += 1;
            let e = match self.inner.store.record(t.clone()).await {
                Ok(()) => {
                    if attempt > 1 {
                        tracing::info!(job_id = %t.job_id, attempt, "recorded the job's outcome");
                    }
                    return Ok(());
                }
                Err(e) if !outcome_write_may_succeed_later(&e) => return Err(e.into()),
                Err(e) => e,
            };
            tracing::warn!(job_id = %t.job_id, attempt, error = %e,
                "cannot record the job's outcome; retrying");
            let pause = OUTCOME_RETRY_FIRST
                .saturating_mul(1 << (attempt - 1).min(8))
                .min(OUTCOME_RETRY_MAX);
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = self.inner.abandoning.cancelled() => {
                    tracing::error!(job_id = %t.job_id, attempt, error = %e,
                        "shutdown gave up recording the job's outcome; it runs again at the next start");
                    return Err(e.into());
                }
            }
            self.inner
                .outcome_write_retries
                .fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The pause before the first retry of an outcome write; it doubles up to the most.
const OUTCOME_RETRY_FIRST: Duration = Duration::from_millis(20);
const OUTCOME_RETRY_MAX: Duration = Duration::from_secs(2);

/// Whether an outcome write that failed may land when tried again: a refusal (a stale
/// fencing token, a job that moved on or is gone, a closed store) is final.
fn outcome_write_may_succeed_later(e: &baton_store::Error) -> bool {
    !e.is_refusal()
}

/// Queues delayed jobs and retries when their time comes: sleeps until the earliest
/// `run_at`, or until a new one arrives.
async fn timer(inner: Arc<Inner>) {
    let mut earliest: Option<Millis> = None;
    loop {
        if let Some(p) = inner
            .pending_due
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            earliest = Some(earliest.map_or(p, |e| e.min(p)));
        }
        let now = inner.clock.now();
        if let Some(at) = earliest
            && at <= now
        {
            match inner.store.promote_due(now).await {
                Ok(p) => {
                    earliest = p.next_due;
                    for name in &p.queues {
                        if let Some(q) = inner.queues.get(name) {
                            q.backlog.store(true, Ordering::SeqCst);
                            q.wake.notify_one();
                        }
                        inner.remote.wake(name);
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot queue due jobs; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                        _ = inner.shutdown.cancelled() => return,
                    }
                }
            }
            continue;
        }
        let sleep = match earliest {
            Some(at) => inner.clock.sleep_until(at),
            None => Box::pin(std::future::pending()),
        };
        tokio::select! {
            _ = sleep => {}
            _ = inner.timer.notified() => {}
            _ = inner.shutdown.cancelled() => return,
        }
    }
}

async fn heartbeat(inner: Arc<Inner>, every: Duration) {
    // The first tick is at once: on a shared store the lease is taken (and gone
    // servers looked for) as the server starts, not a period later.
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // A server is gone once three heartbeats are missed (by the database's clock).
    let gone_after = every * 3;
    let mut failing_since: Option<tokio::time::Instant> = None;
    // Attempts were stopped while heartbeats failed: their jobs are recovered when
    // the store answers again, unless another server did it meanwhile.
    let mut stopped = false;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = inner.shutdown.cancelled() => return,
        }
        let now = inner.clock.now();
        // A heartbeat that does not land within a period (the database or this
        // server's connections too busy) counts as failed: the others go by the time
        // of the last one that landed.
        let beat = tokio::time::timeout(every, inner.store.heartbeat(&inner.server.id, now))
            .await
            .unwrap_or_else(|_| {
                Err(baton_store::Error::Unavailable(format!(
                    "the heartbeat took longer than {every:?}"
                )))
            });
        match beat {
            Ok(()) => {
                if stopped && recover_own(&inner, now).await.is_err() {
                    continue;
                }
                stopped = false;
                failing_since = None;
                if !inner.healthy.swap(true, Ordering::SeqCst) {
                    for q in inner.queues.values() {
                        q.backlog.store(true, Ordering::SeqCst);
                        q.wake.notify_one();
                    }
                }
            }
            Err(baton_store::Error::Declared(_)) => {
                // Another server found this one gone and recovered its attempts: what
                // runs here now runs beside their new attempts. Stop it (its late
                // writes carry stale fencing tokens and are refused), then come back
                // as a live server.
                tracing::error!(
                    "this server was declared down and its jobs recovered elsewhere; stopping its attempts"
                );
                inner.kill_all();
                let mut server = inner.server.clone();
                server.started_at = now;
                server.heartbeat_at = now;
                if let Err(e) = inner.store.register_server(server).await {
                    tracing::warn!(error = %e, "cannot register again");
                }
            }
            Err(e) => {
                inner.healthy.store(false, Ordering::SeqCst);
                if inner.store.shared() {
                    // Another server takes the lease once it expires.
                    inner.leading.store(false, Ordering::SeqCst);
                }
                let since = *failing_since.get_or_insert_with(tokio::time::Instant::now);
                tracing::warn!(error = %e, "heartbeat failed");
                if inner.store.shared() && since.elapsed() >= gone_after && inner.kill_all() > 0 {
                    // The others take this server for gone and recover its attempts:
                    // it must not run them beside their replacements.
                    stopped = true;
                    tracing::error!(
                        "no heartbeat for {gone_after:?}: stopped this server's attempts, which are recovered elsewhere"
                    );
                }
                continue;
            }
        }
        if inner.store.shared() {
            rescue(&inner, gone_after, now).await;
        }
    }
}

/// After this server stopped its attempts for lack of heartbeats and the store
/// answers again: once the stopped attempts' tasks have ended (nothing was claimed
/// meanwhile), the jobs still held under this server's id are recovered, from their
/// checkpoints, as a gone server's would be.
async fn recover_own(inner: &Arc<Inner>, now: Millis) -> crate::Result<()> {
    // The stopped attempts end, and outcomes of attempts that ended on their own
    // while the store was away land first (their jobs are not recovered then).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !inner.tasks.is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let recovered = inner
        .store
        .recover(RecoverRequest {
            server_id: Some(inner.server.id.clone()),
            jobs: None,
            now,
            manual: inner.recovery == Recovery::Manual,
            cleanup: Default::default(),
        })
        .await?;
    tracing::warn!(
        jobs = recovered.len(),
        "the store answers again; recovered the jobs whose attempts were stopped"
    );
    Ok(())
}

/// On a shared store, the leader recovers the attempts of the servers that are gone:
/// their processes on this machine are killed, their jobs crash and are queued again
/// from their last checkpoints, and each is marked down (`server.down`).
async fn rescue(inner: &Arc<Inner>, gone_after: Duration, now: Millis) {
    let result = async {
        let lead = inner.store.lead(&inner.server.id, gone_after).await;
        let leading = matches!(lead, Ok(Some(_)));
        if inner.leading.swap(leading, Ordering::SeqCst) != leading {
            tracing::info!(leading, "leader lease changed hands");
        }
        if !leading {
            return lead.map(|_| ()).map_err(Into::into);
        }
        let mut gone = Vec::new();
        for id in inner.store.gone_servers(gone_after).await? {
            // This server is alive (it just wrote its heartbeat), however late it was;
            // another is marked down only if it is still gone when marked.
            if id != inner.server.id && inner.store.declare_gone(&id, gone_after, now).await? {
                gone.push(id);
            }
        }
        if gone.is_empty() {
            return Ok(());
        }
        let cleanup =
            crate::command::kill_stranded(&*inner.store, &inner.server.host, Some(&gone)).await?;
        for id in &gone {
            let recovered = inner
                .store
                .recover(RecoverRequest {
                    server_id: Some(id.clone()),
                    jobs: None,
                    now,
                    manual: inner.recovery == Recovery::Manual,
                    cleanup: cleanup.clone(),
                })
                .await?;
            tracing::warn!(server_id = %id, jobs = recovered.len(), "a server is gone; recovered its jobs");
            for r in &recovered {
                if let Some(q) = inner.queues.get(&r.queue) {
                    q.backlog.store(true, Ordering::SeqCst);
                    q.wake.notify_one();
                }
                inner.remote.wake(&r.queue);
            }
        }
        Ok::<(), crate::Error>(())
    }
    .await;
    if let Err(e) = result {
        tracing::warn!(error = %e, "cannot recover the jobs of gone servers; trying again");
    }
}

/// Events read from the store per page while a subscription catches up.
const CATCH_UP_PAGE: usize = 10_000;

/// A live event stream; see [`Engine::subscribe`].
///
/// It never skips: it knows the id of the last event it handed out (at first, the
/// store's last committed event when it was made), and when its live receiver falls
/// behind it reads the store after that id, page by page, until a page comes back
/// short, then carries on live, dropping what it already handed out.
pub struct Subscription {
    rx: broadcast::Receiver<Arc<baton_core::Event>>,
    store: Arc<dyn Store>,
    /// Every event up to this id was handed out (or came before the subscription).
    last: u64,
    /// The live receiver lagged: read the store after `last` until caught up.
    catching_up: bool,
    backlog: VecDeque<baton_core::Event>,
}

impl Subscription {
    /// The next event; `None` once the engine has closed.
    pub async fn next(&mut self) -> Option<Arc<baton_core::Event>> {
        let mut failures = 0u32;
        loop {
            if let Some(e) = self.backlog.pop_front() {
                self.last = e.id;
                return Some(Arc::new(e));
            }
            if self.catching_up {
                match self.store.events_after(self.last, CATCH_UP_PAGE).await {
                    Ok(page) => {
                        failures = 0;
                        self.catching_up = page.len() == CATCH_UP_PAGE;
                        self.backlog.extend(page);
                    }
                    Err(baton_store::Error::Closed) => return None,
                    Err(e) => {
                        // Going on live would skip the gap: wait and read again.
                        failures += 1;
                        tracing::warn!(after = self.last, attempt = failures, error = %e,
                            "cannot read missed events for a subscriber; retrying");
                        let pause = Duration::from_millis(50 << failures.min(6));
                        tokio::time::sleep(pause).await;
                    }
                }
                continue;
            }
            match self.rx.recv().await {
                Ok(e) => {
                    if e.id <= self.last {
                        continue;
                    }
                    self.last = e.id;
                    return Some(e);
                }
                Err(broadcast::error::RecvError::Lagged(_)) => self.catching_up = true,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }

    /// The id of the last event handed out, or of the store's last committed event
    /// when the subscription was made and has handed out nothing yet.
    pub fn position(&self) -> u64 {
        self.last
    }
}

fn panic_message(e: tokio::task::JoinError) -> String {
    match e.try_into_panic() {
        Ok(p) => p
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into()),
        Err(e) => e.to_string(),
    }
}

pub(crate) fn uuid_v7() -> String {
    baton_core::JobId::generate().to_string()
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".into())
}
