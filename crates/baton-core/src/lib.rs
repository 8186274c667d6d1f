//! Baton's job model: ids, specs and their validation, the state machine, events,
//! retry maths and schedule maths. Pure: no IO, no clocks, no threads.

pub mod attempt;
pub mod backoff;
pub mod concurrency;
pub mod dependency;
pub mod duration;
pub mod event;
pub mod id;
pub mod job;
pub mod pipeline;
pub mod resources;
pub mod schedule;
pub mod spec;
pub mod state;
pub mod time;
pub mod workflow;

pub use attempt::{Attempt, CheckpointRef, Outcome};
pub use backoff::Backoff;
pub use concurrency::{ConcurrencyLimit, LimitScope};
pub use dependency::{Condition, Dependency, EdgeStatus, UniquePolicy};
pub use event::{Event, EventKind};
pub use id::JobId;
pub use job::{BackoffInfo, ErrorInfo, Job, Runs, StepInfo};
pub use pipeline::PipelineSpec;
pub use resources::{JobLimits, LimitsReport, ResourceLimits, Usage};
pub use schedule::{Misfire, Overlap, Schedule, ScheduleError, ScheduleSpec, Trigger};
pub use spec::{EnvValue, JobSpec, Limits, NewJob, SealedValue, SecretValue, SpecError, StepSpec};
pub use state::{State, TransitionError};
pub use time::Millis;
pub use workflow::{
    WorkflowEdge, WorkflowGraph, WorkflowNode, WorkflowSpec, WorkflowState, WorkflowSummary,
};
