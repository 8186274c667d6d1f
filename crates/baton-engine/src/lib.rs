//! Baton's engine: workers that claim and run jobs, live control, retries, delayed
//! jobs, crash recovery and the event stream, over any [`baton_store::Store`].
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use baton_engine::{Engine, JobSpec};
//! use baton_store::{SqliteOptions, SqliteStore};
//! use serde_json::json;
//!
//! let store = SqliteStore::open(SqliteOptions::new("baton.db"))?;
//! let engine = Engine::builder()
//!     .store(Arc::new(store))
//!     .queue("default", 8)
//!     .handler("resize", |ctx, payload| async move {
//!         ctx.progress(0.5, "halfway").await?;
//!         Ok(json!({"resized": payload["file"]}))
//!     })
//!     .build()
//!     .await?;
//! let job = engine.submit(JobSpec::new("resize").payload(json!({"file": "a.png"}))).await?;
//! let done = engine.wait(&job.job.id).await?;
//! println!("{:?}", done.result);
//! # Ok(()) }
//! ```

mod admission;
mod cgroup;
mod clock;
mod command;
mod concurrency;
mod context;
mod engine;
mod error;
mod limits;
mod monitor;
mod pipelines;
mod policy;
mod procfs;
mod remote;
mod retention;
mod run;
mod scheduler;
mod secrets;
mod security;
mod shared;
mod spawn_hook;
mod usage;

pub use admission::{Gauge, Pressure, Reading, Resource, ResourceOptions};
pub use baton_core::concurrency::LimitUse;
pub use baton_core::schedule::{Misfire, Overlap, Schedule, ScheduleSpec, Trigger, Weekday};
pub use baton_core::{ConcurrencyLimit, LimitScope};
pub use baton_core::{
    Condition, EdgeStatus, UniquePolicy, WorkflowEdge, WorkflowGraph, WorkflowNode, WorkflowSpec,
    WorkflowState,
};
pub use baton_core::{
    EnvValue, ErrorInfo, Event, EventKind, Job, JobSpec, PipelineSpec, ResourceLimits, State,
    StepSpec, Usage,
};
pub use baton_store::{
    Checkpoint, Counts, FireAction, FirePage, FireReason, FireRecord, Fired, JobFilter, JobPage,
    LogLine, Pipeline, PutSchedule, ScheduleFilter, SchedulePage, ServerInfo, Submitted,
};
pub use baton_store::{Link, SubmittedWorkflow};
pub use clock::{Clock, ManualClock, SystemClock};
pub use context::{Exit, JobContext, JobError};
pub use engine::QueueStatus;
pub use engine::{DEFAULT_MAX_LOG_LINES, Engine, EngineBuilder, Recovery, Subscription};
pub use error::{Error, ErrorCode};
pub use limits::{
    DEFAULT_EVENT_EVERY, DEFAULT_SAMPLE_EVERY, LimitsMechanism, LimitsReport, UsageOptions,
};
pub use monitor::MachineSample;
pub use policy::CommandPolicy;
pub use procfs::{ProcStat, proc_stat};
pub use remote::{
    Answer, MAX_SLOTS, Refused, RemoteAction, Report, ToWorker, WorkerHello, WorkerInfo,
    WorkerSession,
};
pub use retention::{DEFAULT_RETENTION, Retention};
pub use secrets::SecretKey;
pub use security::Security;
pub use usage::UsageStats;

pub type Result<T, E = Error> = std::result::Result<T, E>;
/// A handler's input.
pub type Payload = serde_json::Value;
