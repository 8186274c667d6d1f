//! Remote workers: processes anywhere that serve handler kinds over a connection (the
//! server's `/api/workers/ws`, DESIGN section 11).
//!
//! A connected worker has a dispatcher of its own: while it has free slots it claims
//! jobs of its kinds from its queues, for this server (the attempts are this server's
//! in the store, so a server that dies takes its workers' attempts with it into
//! recovery), and hands each to the worker with its fencing token. Each attempt is
//! registered like a local one, so pause, resume, stop and cancel reach it the same
//! way; its task turns the control intent into messages to the worker and the
//! worker's reports into the store's fenced writes. A worker whose connection drops
//! loses its attempts: they record no outcome and are recovered (crashed, then queued
//! again from their last checkpoint), and its late reports find no attempt.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use baton_core::{Job, Millis, State};
use baton_store::{AppendLogs, ClaimRequest, Claimed, Link, RecoverRequest, Update};
use serde_json::{Value, json};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::context::JobError;
use crate::engine::{
    Inner, Outcome, Outcomes, PendingOutcome, PendingOutcomes, Run, hand_over, outcome_of,
    register_attempt,
};
use crate::run::Ctl;
use crate::{Engine, Error, Recovery, Result};

/// How often a worker's dispatcher looks for jobs without a wake-up.
const POLL: Duration = Duration::from_secs(1);
/// The most slots one worker may offer.
pub const MAX_SLOTS: usize = 10_000;

/// What a worker says when it connects.
#[derive(Clone, Debug)]
pub struct WorkerHello {
    pub name: String,
    pub kinds: Vec<String>,
    pub queues: Vec<String>,
    pub slots: usize,
}

/// A connected worker, as `GET /api/workers` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerInfo {
    pub id: String,
    pub name: String,
    pub kinds: Vec<String>,
    pub queues: Vec<String>,
    pub slots: usize,
    /// The jobs it runs now.
    pub running: Vec<String>,
    /// When it connected, RFC 3339.
    pub connected_at: String,
}

/// What the engine tells a worker.
#[derive(Debug)]
pub enum ToWorker {
    /// An attempt to run: the job, its fencing token, the checkpoint it resumes from
    /// and the outcomes of the jobs it depends on (by local name, or id).
    Job {
        job: Box<Job>,
        token: u64,
        checkpoint: Option<Value>,
        parents: BTreeMap<String, Link>,
    },
    /// A control request for an attempt the worker holds.
    Control {
        job: String,
        action: RemoteAction,
        force: bool,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RemoteAction {
    Pause,
    Resume,
    Stop,
}

impl RemoteAction {
    pub fn as_str(self) -> &'static str {
        match self {
            RemoteAction::Pause => "pause",
            RemoteAction::Resume => "resume",
            RemoteAction::Stop => "stop",
        }
    }
}

/// What a worker reports about an attempt it holds.
#[derive(Clone, Debug)]
pub enum Report {
    Progress {
        fraction: Option<f64>,
        message: Option<String>,
    },
    Step(String),
    Output(String),
    Log(String),
    /// Durable when the report is answered.
    Checkpoint(Value),
    Complete(Value),
    Fail {
        message: String,
        retryable: bool,
    },
}

/// Why a worker's report was refused; nothing was written.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("this worker holds no attempt of job {0:?}")]
    NotHeld(String),
    #[error("token {token} is not the token of this worker's attempt of job {job:?}")]
    StaleToken { job: String, token: u64 },
    #[error("{0}")]
    Store(String),
}

impl Refused {
    /// The error code a worker sees.
    pub fn code(&self) -> &'static str {
        match self {
            Refused::NotHeld(_) => "not_held",
            Refused::StaleToken { .. } => "stale_token",
            Refused::Store(_) => "store_error",
        }
    }
}

type Reply = oneshot::Sender<std::result::Result<(), Refused>>;

/// The answer to a report: `Ok` once it is durable.
pub struct Answer {
    job: String,
    rx: oneshot::Receiver<std::result::Result<(), Refused>>,
}

impl std::future::Future for Answer {
    type Output = std::result::Result<(), Refused>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.rx)
            .poll(cx)
            .map(|r| r.unwrap_or_else(|_| Err(Refused::NotHeld(self.job.clone()))))
    }
}

/// An attempt a worker holds: its token and the way to its task.
struct Held {
    fence: u64,
    reports: mpsc::UnboundedSender<(Report, Reply)>,
}

struct Worker {
    id: String,
    name: String,
    kinds: Vec<String>,
    queues: Vec<String>,
    slots: AtomicUsize,
    connected_at: Millis,
    held: Mutex<HashMap<String, Held>>,
    to_worker: mpsc::UnboundedSender<ToWorker>,
    wake: Notify,
    closed: CancellationToken,
    /// Outcomes of attempts the worker finished, waiting for its dispatcher to write
    /// them together with the claim that refills their slots.
    outcomes: Mutex<PendingOutcomes>,
}

impl Worker {
    fn held_count(&self) -> usize {
        self.held.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    fn info(&self) -> WorkerInfo {
        let mut running: Vec<String> = self
            .held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .cloned()
            .collect();
        running.sort_unstable();
        WorkerInfo {
            id: self.id.clone(),
            name: self.name.clone(),
            kinds: self.kinds.clone(),
            queues: self.queues.clone(),
            slots: self.slots.load(Ordering::SeqCst),
            running,
            connected_at: baton_core::time::to_rfc3339(self.connected_at),
        }
    }
}

/// The workers connected to this engine, and the kinds that `baton.toml` lets clients
/// submit for workers that are not connected yet.
#[derive(Default)]
pub(crate) struct Registry {
    workers: Mutex<BTreeMap<String, Arc<Worker>>>,
    configured: HashSet<String>,
}

impl Registry {
    pub(crate) fn new(configured: impl IntoIterator<Item = String>) -> Self {
        Self {
            workers: Mutex::new(BTreeMap::new()),
            configured: configured.into_iter().collect(),
        }
    }

    fn workers(&self) -> Vec<Arc<Worker>> {
        self.workers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// A job of this kind is accepted for a remote worker: one connected announced it,
    /// or the configuration names it.
    pub(crate) fn serves_kind(&self, kind: &str) -> bool {
        self.configured.contains(kind)
            || self
                .workers()
                .iter()
                .any(|w| w.kinds.iter().any(|k| k == kind))
    }

    /// A connected worker serves this queue.
    pub(crate) fn serves_queue(&self, queue: &str) -> bool {
        self.workers()
            .iter()
            .any(|w| w.queues.iter().any(|q| q == queue))
    }

    /// The kinds remote workers may serve, for the refusal of an unknown kind.
    pub(crate) fn kinds(&self) -> Vec<String> {
        let mut kinds: Vec<String> = self.configured.iter().cloned().collect();
        for w in self.workers() {
            kinds.extend(w.kinds.iter().cloned());
        }
        kinds.sort_unstable();
        kinds.dedup();
        kinds
    }

    /// Jobs may be ready in this queue: the workers that serve it look.
    pub(crate) fn wake(&self, queue: &str) {
        for w in self.workers() {
            if w.queues.iter().any(|q| q == queue) {
                w.wake.notify_one();
            }
        }
    }

    /// Every worker looks (a hint that may concern any queue was lost).
    pub(crate) fn wake_all(&self) {
        for w in self.workers() {
            w.wake.notify_one();
        }
    }
}

/// A worker's connection to the engine. Dropping it disconnects the worker: the
/// attempts it holds are recovered.
pub struct WorkerSession {
    inner: Arc<Inner>,
    worker: Arc<Worker>,
}

impl Engine {
    /// Connects a remote worker. It serves `hello.kinds` from `hello.queues` with
    /// `hello.slots` attempts at once; what the engine has for it arrives on the
    /// returned receiver.
    pub fn connect_worker(
        &self,
        hello: WorkerHello,
    ) -> Result<(WorkerSession, mpsc::UnboundedReceiver<ToWorker>)> {
        let inner = &self.inner;
        let invalid = |m: String| Err(Error::Worker(m));
        if hello.kinds.is_empty() {
            return invalid("kinds: a worker serves at least one kind".into());
        }
        for kind in &hello.kinds {
            if kind.is_empty() || kind.len() > 200 {
                return invalid(format!("kinds: {kind:?} is not a kind name"));
            }
            if inner.is_native(kind) {
                return invalid(format!(
                    "kinds: {kind:?} is run by the server itself and cannot be served by a worker"
                ));
            }
        }
        if hello.queues.is_empty() {
            return invalid("queues: a worker serves at least one queue".into());
        }
        if let Some(q) = hello.queues.iter().find(|q| q.is_empty() || q.len() > 200) {
            return invalid(format!("queues: {q:?} is not a queue name"));
        }
        if hello.slots == 0 || hello.slots > MAX_SLOTS {
            return invalid(format!(
                "slots: {} is not between 1 and {MAX_SLOTS}",
                hello.slots
            ));
        }
        if inner.shutdown.is_cancelled() {
            return Err(Error::ShuttingDown);
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let worker = Arc::new(Worker {
            id: format!("worker-{}", crate::engine::uuid_v7()),
            name: hello.name,
            kinds: hello.kinds,
            queues: hello.queues,
            slots: AtomicUsize::new(hello.slots),
            connected_at: inner.clock.now(),
            held: Mutex::new(HashMap::new()),
            to_worker: tx,
            wake: Notify::new(),
            closed: CancellationToken::new(),
            outcomes: Mutex::default(),
        });
        inner
            .remote
            .workers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(worker.id.clone(), worker.clone());
        tracing::info!(worker = %worker.id, name = %worker.name, kinds = ?worker.kinds,
            queues = ?worker.queues, slots = hello.slots, "a worker connected");
        inner
            .background
            .spawn(dispatch(inner.clone(), worker.clone()));
        Ok((
            WorkerSession {
                inner: inner.clone(),
                worker,
            },
            rx,
        ))
    }

    /// The connected workers, by id.
    pub fn workers(&self) -> Vec<WorkerInfo> {
        self.inner
            .remote
            .workers()
            .iter()
            .map(|w| w.info())
            .collect()
    }
}

impl WorkerSession {
    pub fn id(&self) -> &str {
        &self.worker.id
    }

    /// Hands a report about an attempt this worker holds to the attempt, which writes
    /// it with the attempt's token; the answer comes once it is durable (or refused,
    /// writing nothing). Reports are written in the order they are handed over, so a
    /// worker's messages may be answered concurrently.
    pub fn report(
        &self,
        job: &str,
        token: u64,
        report: Report,
    ) -> std::result::Result<Answer, Refused> {
        let held = self.worker.held.lock().unwrap_or_else(|e| e.into_inner());
        let reports = match held.get(job) {
            None => return Err(Refused::NotHeld(job.to_owned())),
            Some(h) if h.fence != token => {
                return Err(Refused::StaleToken {
                    job: job.to_owned(),
                    token,
                });
            }
            Some(h) => &h.reports,
        };
        let (reply, answer) = oneshot::channel();
        reports
            .send((report, reply))
            .map_err(|_| Refused::NotHeld(job.to_owned()))?;
        Ok(Answer {
            job: job.to_owned(),
            rx: answer,
        })
    }

    /// Changes how many attempts the worker takes at once.
    pub fn set_slots(&self, slots: usize) -> Result<()> {
        if slots > MAX_SLOTS {
            return Err(Error::Worker(format!(
                "slots: {slots} is not between 0 and {MAX_SLOTS}"
            )));
        }
        self.worker.slots.store(slots, Ordering::SeqCst);
        self.worker.wake.notify_one();
        Ok(())
    }
}

impl Drop for WorkerSession {
    fn drop(&mut self) {
        self.worker.closed.cancel();
        self.inner
            .remote
            .workers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.worker.id);
        let inner = self.inner.clone();
        let worker = self.worker.clone();
        self.inner.background.spawn(lost(inner, worker));
    }
}

/// After a worker's connection dropped: its attempts end without an outcome, and
/// their jobs are recovered from their last checkpoints (on another worker).
async fn lost(inner: Arc<Inner>, worker: Arc<Worker>) {
    let held: Vec<(String, u64)> = worker
        .held
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .drain()
        .map(|(id, h)| (id, h.fence))
        .collect();
    tracing::warn!(worker = %worker.id, name = %worker.name, attempts = held.len(),
        "a worker disconnected");
    if held.is_empty() {
        return;
    }
    inner.drop_attempts(&held);
    // The attempts' tasks see their report channels close and end, writing nothing.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while held.iter().any(|(id, fence)| inner.is_running(id, *fence))
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let reason = json!({
        "reason": format!("worker {:?} ({}) disconnected", worker.name, worker.id),
        "worker": worker.id,
    });
    let request = RecoverRequest {
        now: inner.clock.now(),
        server_id: Some(inner.server_id().to_owned()),
        jobs: Some(held.iter().map(|(id, _)| id.clone()).collect()),
        manual: inner.recovery() == Recovery::Manual,
        cleanup: held
            .iter()
            .map(|(id, _)| (id.clone(), reason.clone()))
            .collect(),
    };
    let mut tries = 0;
    loop {
        match inner.store.recover(request.clone()).await {
            Ok(recovered) => {
                for r in recovered {
                    if r.now == State::Queued {
                        inner.job_is(State::Queued, &r.queue, None);
                    }
                }
                return;
            }
            Err(e) if tries < 50 && !inner.shutdown.is_cancelled() => {
                tries += 1;
                tracing::warn!(error = %e, "cannot recover a lost worker's jobs; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => {
                // The next start (or the server's own recovery) takes them.
                tracing::error!(error = %e, "cannot recover a lost worker's jobs");
                return;
            }
        }
    }
}

/// A worker's dispatcher: writes the outcomes of the attempts it finished together with
/// the claim that refills their slots (one write frees a slot and fills it again, as a
/// queue's dispatcher does for local handlers), and claims jobs of its kinds from its
/// queues while it has free slots.
async fn dispatch(inner: Arc<Inner>, worker: Arc<Worker>) {
    let kinds = Some(worker.kinds.clone());
    loop {
        if worker.closed.is_cancelled() || inner.shutdown.is_cancelled() {
            // The outcomes still waiting, and those that come later, are written by
            // their attempts' tasks.
            let mut p = worker.outcomes.lock().unwrap_or_else(|e| e.into_inner());
            p.closed = true;
            p.list.clear();
            return;
        }
        let mut pending = std::mem::take(
            &mut worker
                .outcomes
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .list,
        );
        // Slots held by attempts whose outcomes are pending count as taken: the store
        // hands each one that the write ends back to the claim. A worker holding more
        // than its slots (it lowered them) takes nothing until it is below them again.
        let slots = worker.slots.load(Ordering::SeqCst);
        let held = worker.held_count();
        let mut free = slots.saturating_sub(held);
        let claim = inner.is_healthy() && held <= slots;
        let mut started = 0;
        let mut failed = false;
        for queue in &worker.queues {
            let claim_here = claim && !inner.queue_paused(queue) && !inner.queue_held(queue);
            if pending.is_empty() && (free == 0 || !claim_here) {
                continue;
            }
            let outcomes: Vec<_> = pending.iter().map(|p| p.transitions.clone()).collect();
            let claiming = claim_here.then(|| inner.claiming());
            let settled = inner
                .store
                .settle(baton_store::Settle {
                    outcomes,
                    claim: claim_here.then(|| ClaimRequest {
                        queue: queue.clone(),
                        limit: free,
                        server_id: inner.server_id().to_owned(),
                        now: inner.clock.now(),
                        kinds: kinds.clone(),
                    }),
                })
                .await;
            drop(claiming);
            match settled {
                Ok(settled) => {
                    let freed = settled.freed();
                    release(&worker, &pending, &settled.outcomes);
                    for (p, result) in pending.drain(..).zip(settled.outcomes) {
                        let _ = p.reply.send(result);
                    }
                    if claim_here {
                        free += freed;
                    }
                    for c in settled.claimed {
                        free = free.saturating_sub(1);
                        started += 1;
                        start(&inner, &worker, c);
                    }
                }
                Err(e) => {
                    // The outcomes' tasks write them on their own, retrying.
                    for p in pending.drain(..) {
                        let _ = p.reply.send(Err(e.clone()));
                    }
                    tracing::error!(worker = %worker.id, queue = %queue, error = %e,
                        "cannot claim jobs for a worker; retrying");
                    failed = true;
                    break;
                }
            }
        }
        if !pending.is_empty() {
            // No queue took a claim (all paused, or the store unhealthy): the outcomes
            // are written alone.
            let outcomes: Vec<_> = pending.iter().map(|p| p.transitions.clone()).collect();
            let written = inner
                .store
                .settle(baton_store::Settle {
                    outcomes,
                    claim: None,
                })
                .await;
            match written {
                Ok(settled) => {
                    release(&worker, &pending, &settled.outcomes);
                    for (p, result) in pending.drain(..).zip(settled.outcomes) {
                        let _ = p.reply.send(result);
                    }
                }
                Err(e) => {
                    for p in pending.drain(..) {
                        let _ = p.reply.send(Err(e.clone()));
                    }
                    failed = true;
                }
            }
        }
        if failed {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                _ = worker.closed.cancelled() => {}
                _ = inner.shutdown.cancelled() => {}
            }
            continue;
        }
        if started > 0 {
            // Let the attempts just handed over report first: those that end at once
            // join the next write together, rather than split over two.
            tokio::task::yield_now().await;
            if free > 0 {
                // More may be ready.
                continue;
            }
        }
        if !worker
            .outcomes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .list
            .is_empty()
        {
            continue;
        }
        tokio::select! {
            _ = worker.wake.notified() => {}
            _ = tokio::time::sleep(POLL) => {}
            _ = worker.closed.cancelled() => {}
            _ = inner.shutdown.cancelled() => {}
        }
    }
}

/// The attempts whose outcomes a write ended (written, or refused for good) no longer
/// hold their slots: the claim of the same write may have refilled them.
fn release(
    worker: &Worker,
    pending: &[PendingOutcome],
    results: &[std::result::Result<(), baton_store::Error>],
) {
    let mut held = worker.held.lock().unwrap_or_else(|e| e.into_inner());
    for (p, result) in pending.iter().zip(results) {
        if result.as_ref().err().is_some_and(|e| !e.is_refusal()) {
            continue;
        }
        if let Some(t) = p.transitions.first()
            && held
                .get(&t.job_id)
                .is_some_and(|h| Some(h.fence) == t.fence)
        {
            held.remove(&t.job_id);
        }
    }
}

/// Registers a claimed attempt and starts the task that runs it on the worker.
fn start(inner: &Arc<Inner>, worker: &Arc<Worker>, claimed: Claimed) {
    let run = register_attempt(inner, &claimed);
    let (reports_tx, reports) = mpsc::unbounded_channel();
    worker
        .held
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(
            claimed.job.id.clone(),
            Held {
                fence: claimed.fence,
                reports: reports_tx,
            },
        );
    inner.tasks.spawn(attempt(
        inner.clone(),
        worker.clone(),
        claimed,
        run,
        reports,
    ));
}

/// How an attempt on a worker ended.
enum Ended {
    Outcome(Outcome, Option<Reply>),
    /// The worker's connection dropped: nothing is written here (see [`lost`]).
    Lost,
}

/// One attempt on a worker: hands the job over, relays control, writes the reports.
async fn attempt(
    inner: Arc<Inner>,
    worker: Arc<Worker>,
    claimed: Claimed,
    run: Run,
    mut reports: mpsc::UnboundedReceiver<(Report, Reply)>,
) {
    let id = claimed.job.id.clone();
    let fence = claimed.fence;
    // A claimed job does not carry its dependencies: they are read here (as a local
    // handler's `parent_results` reads them), for the worker's `parents` and the job's
    // `depends_on`.
    let mut job = claimed.job.clone();
    // A job whose parents' results cannot be read is not handed over without them:
    // the attempt fails (and is retried while attempts remain), saying why.
    let parents: std::result::Result<BTreeMap<String, Link>, String> =
        match inner.store.dependencies(&id).await {
            Ok(links) => {
                if job.depends_on.is_empty() {
                    job.depends_on = links.iter().map(|l| l.job_id.clone()).collect();
                }
                Ok(links
                    .into_iter()
                    .map(|l| (l.name.clone().unwrap_or_else(|| l.job_id.clone()), l))
                    .collect())
            }
            Err(e) => Err(format!("cannot read the parent results: {e}")),
        };
    let unread = parents.as_ref().err().cloned();
    let handed = match parents {
        Ok(parents) => worker
            .to_worker
            .send(ToWorker::Job {
                job: Box::new(job),
                token: fence,
                checkpoint: claimed.checkpoint.clone(),
                parents,
            })
            .is_ok(),
        Err(_) => true,
    };
    let send = |action, force| {
        let _ = worker.to_worker.send(ToWorker::Control {
            job: id.clone(),
            action,
            force,
        });
    };
    let mut ctl = run.ctl_rx.clone();
    let mut step = claimed.job.step.clone();
    let timeout = claimed.timeout;
    let deadline = async {
        match timeout {
            Some(t) => tokio::time::sleep(t).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(deadline);
    let ended = if let Some(why) = unread {
        Ended::Outcome(Outcome::Done(Err(JobError::new(why))), None)
    } else if !handed {
        Ended::Lost
    } else {
        loop {
            tokio::select! {
                r = reports.recv() => match r {
                    None => break Ended::Lost,
                    Some((Report::Complete(result), reply)) => {
                        break Ended::Outcome(Outcome::Done(Ok(result)), Some(reply));
                    }
                    Some((Report::Fail { message, retryable }, reply)) => {
                        let error = if retryable {
                            JobError::new(message)
                        } else {
                            JobError::fatal(message)
                        };
                        break Ended::Outcome(Outcome::Done(Err(error)), Some(reply));
                    }
                    Some((report, reply)) => {
                        let written = write(&inner, &claimed, &mut step, report).await;
                        let _ = reply.send(written);
                    }
                },
                changed = ctl.changed() => {
                    if changed.is_err() {
                        continue;
                    }
                    let now = *ctl.borrow_and_update();
                    match now {
                        Ctl::Pause => send(RemoteAction::Pause, false),
                        Ctl::Run => send(RemoteAction::Resume, false),
                        Ctl::Stop => send(RemoteAction::Stop, false),
                    }
                }
                _ = run.kill.cancelled() => {
                    send(RemoteAction::Stop, true);
                    break Ended::Outcome(Outcome::Aborted, None);
                }
                _ = &mut deadline => {
                    send(RemoteAction::Stop, true);
                    break Ended::Outcome(Outcome::TimedOut(timeout.unwrap_or_default()), None);
                }
            }
        }
    };
    inner.unregister(&id, fence);
    let dropped = inner.take_dropped(&id, fence);
    if let Ended::Outcome(outcome, reply) = ended
        && !dropped
    {
        let intent = *run.ctl_tx.borrow();
        let (transitions, requeued) = outcome_of(&inner, &claimed, intent, outcome);
        // Written by the worker's dispatcher with its next claim; by this task, retrying,
        // when the dispatcher has stopped or the write failed for a reason that may pass.
        let written = match hand_over(&worker.outcomes, &worker.wake, transitions.clone()).await {
            Some(Ok(())) => Ok(()),
            Some(Err(e)) if e.is_refusal() => Err(e.into()),
            failed => {
                if let Some(Err(e)) = failed {
                    tracing::warn!(job_id = %id, error = %e,
                        "cannot record the job's outcome; retrying");
                }
                Outcomes { inner: &inner }.record_all(&transitions).await
            }
        };
        if let (Ok(()), Some((to, run_at))) = (&written, requeued) {
            inner.job_is(to, &claimed.job.queue, run_at);
        }
        if let Some(reply) = reply {
            let _ = reply.send(written.map_err(|e| refusal(&id, fence, e)));
        }
    }
    let mut held = worker.held.lock().unwrap_or_else(|e| e.into_inner());
    if held.get(&id).is_some_and(|h| h.fence == fence) {
        held.remove(&id);
    }
    drop(held);
    // A slot is free.
    worker.wake.notify_one();
}

/// Writes a report other than the outcome, with the attempt's token.
async fn write(
    inner: &Inner,
    claimed: &Claimed,
    step: &mut Option<String>,
    report: Report,
) -> std::result::Result<(), Refused> {
    let id = claimed.job.id.as_str();
    let now = inner.clock.now();
    let update = match report {
        Report::Progress { fraction, message } => Update::Progress {
            fraction: fraction.filter(|f| !f.is_nan()).map(|f| f.clamp(0.0, 1.0)),
            message: message.filter(|m| !m.is_empty()),
        },
        Report::Step(name) => {
            *step = Some(name.clone());
            Update::Step(name)
        }
        Report::Output(text) => Update::Output(text),
        Report::Checkpoint(data) => Update::Checkpoint {
            data,
            step: step.clone(),
        },
        Report::Log(text) => {
            return inner
                .store
                .append_logs(AppendLogs {
                    job_id: id.to_owned(),
                    fence: claimed.fence,
                    now,
                    lines: vec![("stdout".into(), text)],
                    max_lines: inner.max_log_lines,
                })
                .await
                .map(|_| ())
                .map_err(|e| refusal(id, claimed.fence, e.into()));
        }
        Report::Complete(_) | Report::Fail { .. } => return Ok(()),
    };
    inner
        .store
        .update(id, claimed.fence, now, update)
        .await
        .map_err(|e| refusal(id, claimed.fence, e.into()))
}

fn refusal(job: &str, token: u64, e: Error) -> Refused {
    match e {
        Error::Store(baton_store::Error::StaleFence { .. }) => Refused::StaleToken {
            job: job.to_owned(),
            token,
        },
        e => Refused::Store(e.to_string()),
    }
}
