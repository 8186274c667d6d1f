//! The edges between jobs: the condition a dependent waits for, an edge of a spec's
//! `depends_on`, how far an edge is, and the policy for a held unique key. A leaf
//! module (it knows only job states): `spec` parses these and `workflow` draws them.

use serde::{Deserialize, Serialize};

use crate::state::State;

/// The most dependencies one job may have.
pub const MAX_DEPENDENCIES: usize = 10_000;
/// When a dependent may run, given how its dependency ended.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Condition {
    /// The dependency completed (the default).
    #[default]
    Completed,
    /// The dependency failed for good: an error handler.
    Failed,
    /// The dependency ended in any way: a continuation.
    Finished,
}

impl Condition {
    pub fn as_str(self) -> &'static str {
        match self {
            Condition::Completed => "completed",
            Condition::Failed => "failed",
            Condition::Finished => "finished",
        }
    }

    pub fn parse(s: &str) -> Option<Condition> {
        match s {
            "completed" => Some(Condition::Completed),
            "failed" => Some(Condition::Failed),
            "finished" => Some(Condition::Finished),
            _ => None,
        }
    }

    /// Whether a dependency that ended in `state` meets the condition; `None` while it
    /// has not ended.
    pub fn holds(self, state: State) -> Option<bool> {
        if !state.is_terminal() {
            return None;
        }
        Some(match self {
            Condition::Completed => state == State::Completed,
            Condition::Failed => state == State::Failed,
            Condition::Finished => true,
        })
    }
}

/// One edge of a job spec's `depends_on`: the job it waits for and the condition.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dependency {
    pub job: String,
    #[serde(default)]
    pub on: Condition,
}

impl Dependency {
    pub fn new(job: impl Into<String>, on: Condition) -> Self {
        Self {
            job: job.into(),
            on,
        }
    }
}

/// How far an edge is: its dependency has not ended, it ended meeting the condition,
/// or it ended so that the condition can never hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EdgeStatus {
    Waiting,
    Met,
    Never,
}

impl EdgeStatus {
    pub fn as_i64(self) -> i64 {
        match self {
            EdgeStatus::Waiting => 0,
            EdgeStatus::Met => 1,
            EdgeStatus::Never => 2,
        }
    }

    /// The status stored as `v`; `None` for a code that is not one.
    pub fn from_i64(v: i64) -> Option<EdgeStatus> {
        match v {
            0 => Some(EdgeStatus::Waiting),
            1 => Some(EdgeStatus::Met),
            2 => Some(EdgeStatus::Never),
            _ => None,
        }
    }

    /// The status of an edge whose dependency is in `state` now.
    pub fn of(on: Condition, state: State) -> EdgeStatus {
        match on.holds(state) {
            None => EdgeStatus::Waiting,
            Some(true) => EdgeStatus::Met,
            Some(false) => EdgeStatus::Never,
        }
    }
}

/// What to do when a job is submitted while an active (not terminal) job holds its
/// `unique_key`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum UniquePolicy {
    /// Refuse the new job, naming the holder.
    #[default]
    Reject,
    /// Answer with the holder instead of a new job.
    ReturnExisting,
    /// Cancel the holder (stopping it at once if it runs) and store the new job.
    Replace,
}

impl UniquePolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            UniquePolicy::Reject => "reject",
            UniquePolicy::ReturnExisting => "return_existing",
            UniquePolicy::Replace => "replace",
        }
    }

    pub fn parse(s: &str) -> Option<UniquePolicy> {
        match s {
            "reject" => Some(UniquePolicy::Reject),
            "return_existing" => Some(UniquePolicy::ReturnExisting),
            "replace" => Some(UniquePolicy::Replace),
            _ => None,
        }
    }
}
