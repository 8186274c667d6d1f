//! Schedules in the store: what the scheduler writes (each fire is one atomic write
//! with its jobs, its history and its events) and what clients read.

use baton_core::schedule::ScheduleSpec;
use baton_core::time::{opt_rfc3339, rfc3339};
use baton_core::{ErrorInfo, Job, Millis, NewJob, Schedule, State};
use serde::{Deserialize, Serialize};

/// A schedule to create or replace.
#[derive(Clone, Debug, PartialEq)]
pub struct NewSchedule {
    /// As validated: defaults filled in, `id` set.
    pub spec: ScheduleSpec,
    /// Its first run; `None` for a manual or disabled schedule.
    pub next_run: Option<Millis>,
    pub now: Millis,
}

/// The result of creating or replacing a schedule.
#[derive(Clone, Debug, PartialEq)]
pub struct PutSchedule {
    pub schedule: Schedule,
    /// False when it existed: `create_schedule` left it as it was, `put_schedule`
    /// replaced it.
    pub created: bool,
}

/// Why a schedule fired.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FireReason {
    /// Its time came.
    Schedule,
    /// A run missed while the engine was down, made up by the misfire policy.
    CatchUp,
    /// Triggered by hand.
    Manual,
}

/// What a fire did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FireAction {
    /// It submitted a job (`awaiting` behind the schedule's active job with overlap
    /// `queue`).
    Created,
    /// Overlap `skip`: the schedule's previous job was still active.
    Skipped,
    /// No job could be made (the `message` says why); the schedule moved on.
    Error,
}

impl FireReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FireReason::Schedule => "schedule",
            FireReason::CatchUp => "catch_up",
            FireReason::Manual => "manual",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            FireReason::Schedule,
            FireReason::CatchUp,
            FireReason::Manual,
        ]
        .into_iter()
        .find(|r| r.as_str() == s)
    }
}

impl FireAction {
    pub fn as_str(self) -> &'static str {
        match self {
            FireAction::Created => "created",
            FireAction::Skipped => "skipped",
            FireAction::Error => "error",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [FireAction::Created, FireAction::Skipped, FireAction::Error]
            .into_iter()
            .find(|a| a.as_str() == s)
    }
}

/// One write that fires a schedule.
#[derive(Clone, Debug)]
pub struct Fire {
    pub schedule_id: String,
    /// A timed fire: refused, writing nothing, unless the schedule is still at this
    /// revision and enabled, so that a fire is never made twice from the same state.
    /// `None`: a fire by hand, at any revision, enabled or not; it leaves `next_run`.
    pub rev: Option<u64>,
    /// Oldest first.
    pub slots: Vec<FireSlot>,
    /// With `rev`: the schedule's next run after these fires.
    pub next_run: Option<Millis>,
    pub now: Millis,
}

#[derive(Clone, Debug)]
pub struct FireSlot {
    /// The slot this fire stands for.
    pub scheduled_for: Millis,
    pub reason: FireReason,
    /// The job to submit, or why none could be made (its kind is no longer served, its
    /// stored pipeline is gone).
    pub job: Result<NewJob, String>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum FireOutcome {
    Fired(Fired),
    /// Nothing was written: the schedule changed since the fire's revision, was
    /// disabled (it is returned as it is now), or is gone (`None`).
    Stale(Option<Schedule>),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Fired {
    /// The schedule after the fire.
    pub schedule: Schedule,
    /// One per slot, in order.
    pub records: Vec<FireRecord>,
    /// The jobs submitted.
    pub jobs: Vec<Job>,
}

/// One fire in a schedule's history, with the outcome of its job as it is now.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FireRecord {
    /// Counts the schedule's fires from 1.
    pub seq: u64,
    pub schedule_id: String,
    #[serde(with = "rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub scheduled_for: Millis,
    #[serde(with = "rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub fired_at: Millis,
    pub reason: FireReason,
    pub action: FireAction,
    pub job_id: Option<String>,
    /// The job's state now; null without a job (or once the job is purged).
    pub outcome: Option<State>,
    /// The job's error, if it failed or was cancelled.
    pub error: Option<ErrorInfo>,
    #[serde(with = "opt_rfc3339")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub started_at: Option<Millis>,
    #[serde(with = "opt_rfc3339")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub finished_at: Option<Millis>,
    /// Why it was skipped or failed, or what its job waits for.
    pub message: Option<String>,
}

/// The result of [`Store::release_schedule`](crate::Store::release_schedule).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Released {
    /// The awaiting job queued now, if one was.
    pub job: Option<Job>,
    /// The active job that the schedule's awaiting jobs wait for now: when it ends,
    /// release again. `None` when nothing awaits.
    pub waiting_on: Option<String>,
}

#[derive(Clone, Debug, Default)]
pub struct ScheduleFilter {
    pub enabled: Option<bool>,
    /// Matches the id.
    pub text: Option<String>,
    pub limit: usize,
    /// The last id of the previous page (schedules are listed by id).
    pub cursor: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct SchedulePage {
    pub schedules: Vec<Schedule>,
    pub next_cursor: Option<String>,
    pub total: u64,
}

/// A page of a schedule's history, newest first.
#[derive(Clone, Debug, PartialEq)]
pub struct FirePage {
    pub fires: Vec<FireRecord>,
    /// Pass as `before` for older fires.
    pub next_cursor: Option<String>,
}

/// An enabled schedule's next run: what the scheduler sleeps on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScheduleTimer {
    pub id: String,
    pub next_run: Millis,
    pub rev: u64,
}
