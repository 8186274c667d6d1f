//! The schedule endpoints' types (`/api/schedules`).

use serde::{Deserialize, Serialize};

pub use baton_core::schedule::{Misfire, Overlap, Schedule, ScheduleSpec, Trigger};
pub use baton_store::{FireAction, FireReason, FireRecord};

use crate::Job;

/// `GET /api/schedules`: by id.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ScheduleList {
    pub schedules: Vec<Schedule>,
    pub next_cursor: Option<String>,
    pub total: u64,
}

/// `GET /api/schedules/{id}/history`: the schedule's fires, newest first, each with
/// its job's outcome now.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ScheduleHistory {
    pub fires: Vec<FireRecord>,
    /// Pass as `cursor` for older fires.
    pub next_cursor: Option<String>,
}

/// `POST /api/schedules/{id}/trigger`: what the fire did.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Triggered {
    pub fire: FireRecord,
    /// The job it submitted; null when the overlap policy skipped it.
    pub job: Option<Job>,
    pub schedule: Schedule,
}

/// `DELETE /api/schedules/{id}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ScheduleDeleted {
    pub id: String,
    pub deleted: bool,
}

/// `POST /api/schedule-preview`: the next runs of a schedule spec, were it created now.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SchedulePreview {
    /// RFC 3339 times, soonest first; fewer than asked when the trigger has no more
    /// (`once`), none for `manual`.
    pub runs: Vec<String>,
}
