//! What a running handler sees: [`JobContext`], and the error it returns, [`JobError`].

use std::fmt;
use std::sync::Arc;

use baton_store::Update;
use serde_json::Value;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::run::{Ctl, RunEnv};

/// A handler's failure. Plain errors (anything that implements `std::error::Error`
/// converts with `?`) are retried while attempts remain; [`JobError::fatal`] is not.
#[derive(Clone, PartialEq, Eq)]
pub struct JobError {
    code: String,
    message: String,
    retryable: bool,
    exit: Option<Exit>,
}

/// How the process of a command or pipeline job ended, when it ended badly.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    /// The signal's name (`SIGKILL`).
    Signal(String),
}

impl JobError {
    /// A failure worth retrying (code `handler_error`).
    pub fn new(message: impl Into<String>) -> Self {
        Self::with_code("handler_error", message)
    }

    /// A failure that no retry can fix.
    pub fn fatal(message: impl Into<String>) -> Self {
        Self {
            retryable: false,
            ..Self::new(message)
        }
    }

    pub fn with_code(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            code: code.into(),
            message: message.into(),
            retryable: true,
            exit: None,
        }
    }

    /// A failure with its own code that no retry can fix (a missing program).
    pub fn fatal_with_code(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            retryable: false,
            ..Self::with_code(code, message)
        }
    }

    /// The same error, its message prefixed (`step "fetch": ...`).
    pub(crate) fn prefixed(mut self, prefix: &str) -> Self {
        self.message = format!("{prefix}{}", self.message);
        self
    }

    /// Returned by pause points once the job is being stopped.
    pub fn stopped() -> Self {
        Self {
            code: "cancelled".into(),
            message: "the job was stopped".into(),
            retryable: false,
            exit: None,
        }
    }

    /// The same error, with how the job's process ended.
    pub(crate) fn with_exit(mut self, exit: Option<Exit>) -> Self {
        self.exit = exit;
        self
    }

    /// How the job's process ended (command and pipeline kinds).
    pub fn exit(&self) -> Option<&Exit> {
        self.exit.as_ref()
    }

    pub fn code(&self) -> &str {
        &self.code
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    pub fn is_retryable(&self) -> bool {
        self.retryable
    }

    pub(crate) fn info(&self) -> baton_core::ErrorInfo {
        baton_core::ErrorInfo::new(self.code.clone(), self.message.clone())
    }

    /// The data of the event that records this failure: the error, and the exit code
    /// or signal of the process when there was one.
    pub(crate) fn event_data(&self) -> serde_json::Map<String, Value> {
        let mut data = serde_json::Map::new();
        data.insert("error".into(), serde_json::json!(self.info()));
        match &self.exit {
            Some(Exit::Code(code)) => {
                data.insert("exit_code".into(), Value::from(*code));
            }
            Some(Exit::Signal(name)) => {
                data.insert("signal".into(), Value::String(name.clone()));
            }
            None => {}
        }
        data
    }
}

impl<E: std::error::Error + Send + Sync + 'static> From<E> for JobError {
    fn from(e: E) -> Self {
        JobError::new(e.to_string())
    }
}

impl fmt::Display for JobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl fmt::Debug for JobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "JobError({self})")
    }
}

/// Handed to a handler for one attempt of one job. Cheap to clone.
#[derive(Clone)]
pub struct JobContext {
    inner: Arc<CtxInner>,
}

pub(crate) struct CtxInner {
    /// What the attempt may use of the engine, and no more.
    pub run: RunEnv,
    pub kind: String,
    pub queue: String,
    pub attempt: u32,
    pub checkpoint: Option<Value>,
    pub step: std::sync::Mutex<Option<String>>,
    /// What a command or pipeline job executes (the spec's `exec`).
    pub exec: Option<Value>,
    pub timeout: Option<std::time::Duration>,
    pub grace: std::time::Duration,
    /// The step the job was in when its last attempt ended.
    pub resume_step: Option<String>,
}

impl JobContext {
    pub(crate) fn new(inner: CtxInner) -> Self {
        Self {
            inner: Arc::new(inner),
        }
    }

    pub fn job_id(&self) -> &str {
        &self.inner.run.job_id
    }

    pub fn kind(&self) -> &str {
        &self.inner.kind
    }

    pub fn queue(&self) -> &str {
        &self.inner.queue
    }

    /// The attempt number, from 1. A run resumed after a crash keeps its number.
    pub fn attempt(&self) -> u32 {
        self.inner.attempt
    }

    /// The checkpoint this attempt resumes from, if any.
    pub fn last_checkpoint(&self) -> Option<&Value> {
        self.inner.checkpoint.as_ref()
    }

    /// Fires when the job is being stopped; a handler that waits on something else can
    /// `select!` on it.
    pub fn cancellation(&self) -> &CancellationToken {
        &self.inner.run.cancel
    }

    pub fn is_stopping(&self) -> bool {
        self.inner.run.cancel.is_cancelled()
    }

    /// Reports progress (a fraction from 0 to 1) and a message; a pause point.
    pub async fn progress(
        &self,
        fraction: f64,
        message: impl Into<String>,
    ) -> Result<(), JobError> {
        let fraction = if fraction.is_nan() {
            None
        } else {
            Some(fraction.clamp(0.0, 1.0))
        };
        let message = Some(message.into()).filter(|m| !m.is_empty());
        self.record(Update::Progress { fraction, message }).await?;
        self.pause_point().await
    }

    /// Names the step the job is in now.
    pub async fn step(&self, name: impl Into<String>) -> Result<(), JobError> {
        let name = name.into();
        if let Ok(mut s) = self.inner.step.lock() {
            *s = Some(name.clone());
        }
        self.record(Update::Step(name)).await?;
        self.pause_point().await
    }

    /// Streams a piece of output (for example model tokens) to subscribers.
    pub async fn output(&self, text: impl Into<String>) -> Result<(), JobError> {
        self.record(Update::Output(text.into())).await
    }

    /// Saves a checkpoint; it is durable when this returns. A pause point.
    pub async fn checkpoint(&self, data: Value) -> Result<(), JobError> {
        let step = self.inner.step.lock().ok().and_then(|s| s.clone());
        self.record(Update::Checkpoint { data, step }).await?;
        self.pause_point().await
    }

    /// The outcomes of the jobs this one depends on, keyed by each one's local name in
    /// the workflow (or its id outside one): state, result and error. Read when
    /// called; empty for a job without dependencies.
    pub async fn parent_results(
        &self,
    ) -> Result<std::collections::BTreeMap<String, baton_store::Link>, JobError> {
        let links = self
            .inner
            .run
            .store
            .dependencies(&self.inner.run.job_id)
            .await
            .map_err(|e| JobError::new(format!("cannot read the parent results: {e}")))?;
        Ok(links
            .into_iter()
            .map(|l| (l.name.clone().unwrap_or_else(|| l.job_id.clone()), l))
            .collect())
    }

    /// The result of the dependency named `name` (its local name in the workflow, or
    /// its id), when it has one.
    pub async fn parent_result(&self, name: &str) -> Result<Option<Value>, JobError> {
        Ok(self
            .parent_results()
            .await?
            .remove(name)
            .and_then(|l| l.result))
    }

    /// Blocks while the job is paused; returns an error once it is being stopped.
    pub async fn pause_point(&self) -> Result<(), JobError> {
        let mut ctl = self.inner.run.ctl.clone();
        loop {
            let now = *ctl.borrow_and_update();
            match now {
                Ctl::Run => return Ok(()),
                Ctl::Stop => return Err(JobError::stopped()),
                Ctl::Pause => {}
            }
            if ctl.changed().await.is_err() {
                return Err(JobError::stopped());
            }
        }
    }

    /// The control intent as it changes: command jobs turn it into signals.
    pub(crate) fn control(&self) -> watch::Receiver<Ctl> {
        self.inner.run.ctl.clone()
    }

    pub(crate) fn security(&self) -> &crate::Security {
        &self.inner.run.security
    }

    pub(crate) fn exec(&self) -> Option<&Value> {
        self.inner.exec.as_ref()
    }

    pub(crate) fn timeout(&self) -> Option<std::time::Duration> {
        self.inner.timeout
    }

    pub(crate) fn grace(&self) -> std::time::Duration {
        self.inner.grace
    }

    pub(crate) fn resume_step(&self) -> Option<&str> {
        self.inner.resume_step.as_deref()
    }

    /// Names the current step (for the checkpoints that follow) without a pause point.
    pub(crate) fn set_step(&self, name: &str) {
        if let Ok(mut s) = self.inner.step.lock() {
            *s = Some(name.to_owned());
        }
    }

    pub(crate) fn current_step(&self) -> Option<String> {
        self.inner.step.lock().ok().and_then(|s| s.clone())
    }

    /// Records an update without a pause point: a command job's process is paused by a
    /// signal, not by waiting here.
    pub(crate) async fn record_update(&self, update: Update) -> Result<(), JobError> {
        self.record(update).await
    }

    pub(crate) async fn append_logs(
        &self,
        lines: Vec<(String, String)>,
    ) -> Result<baton_store::Appended, baton_store::Error> {
        let run = &self.inner.run;
        run.store
            .append_logs(baton_store::AppendLogs {
                job_id: run.job_id.clone(),
                fence: run.fence,
                now: run.clock.now(),
                lines,
                max_lines: run.max_log_lines,
            })
            .await
    }

    /// Starts measuring this attempt's processes under `limits` (see `usage.rs`).
    pub(crate) fn track(
        &self,
        limits: baton_core::JobLimits,
    ) -> std::io::Result<crate::usage::Tracked> {
        let run = &self.inner.run;
        run.meter
            .track(&run.job_id, run.fence, self.inner.attempt, limits)
    }

    pub(crate) async fn set_process(
        &self,
        process: Option<baton_store::JobProcess>,
    ) -> Result<(), baton_store::Error> {
        let run = &self.inner.run;
        run.store.set_process(&run.job_id, run.fence, process).await
    }

    async fn record(&self, update: Update) -> Result<(), JobError> {
        let run = &self.inner.run;
        let now = run.clock.now();
        match run.store.update(&run.job_id, run.fence, now, update).await {
            Ok(()) => Ok(()),
            Err(baton_store::Error::StaleFence { .. }) => Err(JobError {
                code: "cancelled".into(),
                message: "this attempt no longer holds the job".into(),
                retryable: false,
                exit: None,
            }),
            Err(e) => Err(JobError::new(format!("cannot record: {e}"))),
        }
    }
}
