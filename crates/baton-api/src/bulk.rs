//! `POST /api/jobs/bulk`: one control action on many jobs.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::ControlAction;

/// The list filters of `GET /api/jobs`, as a JSON object: each written as in the
/// query string (`state` comma separated, aliases accepted; `label` as `key:value`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ListFilter {
    /// States, comma separated; aliases accepted. Absent: every state but `deleted`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// `key:value`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// Words in the id, kind, labels (`key:value` or `key=value`) or error: terms
    /// separated by spaces, all of which must match (see `GET /api/jobs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub q: Option<String>,
    /// Jobs of this workflow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow: Option<String>,
    /// Jobs submitted by this schedule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
}

/// One action on the jobs named by `ids`, or on every job `filter` matches (up to the
/// server's `bulk_limit`); exactly one of the two.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BulkRequest {
    /// `cancel`, `retry`, `pause`, `resume`, `stop` or `delete` (the admin role).
    #[schema(value_type = ControlAction)]
    pub action: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ids: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<ListFilter>,
    /// `retry` only: start from each job's last checkpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_checkpoint: Option<bool>,
    /// `stop` only: kill at once instead of a graceful stop.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub force: Option<bool>,
}

/// What a bulk action reached: `matched = done + the sum of refused`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BulkResponse {
    pub action: ControlAction,
    /// The jobs the action was tried on: the distinct ids given, or the jobs the
    /// filter matched, up to `limit`.
    pub matched: u64,
    /// Jobs the action was applied to (each emitted its usual event).
    pub done: u64,
    /// Jobs left untouched, counted by the error code a single-job call would have
    /// answered: `illegal_transition`, `not_found`, `forbidden`, ...
    pub refused: BTreeMap<String, u64>,
    /// More jobs matched the filter than `limit`; the rest were not touched.
    pub capped: bool,
    /// The most jobs one bulk action reaches (the server's `bulk_limit`).
    pub limit: u64,
    /// The first refusals (at most 20), each with its job and message.
    pub errors: Vec<BulkRefusal>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BulkRefusal {
    pub id: String,
    pub code: String,
    pub message: String,
}
