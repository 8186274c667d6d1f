//! The request and response types of Baton's HTTP API (DESIGN.md section 6), shared by
//! the server and the CLI so that both speak exactly the same shapes.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

mod batch;
mod bulk;
mod schedules;
pub use batch::*;
pub use bulk::*;
pub use schedules::*;

pub use baton_core::PipelineSpec;
pub use baton_core::{Condition, WorkflowGraph, WorkflowSpec, WorkflowState, WorkflowSummary};
pub use baton_core::{ErrorInfo, Event, EventKind, Job, JobSpec, State};
pub use baton_store::{Checkpoint, Link, LogLine, ServerInfo};

/// Every error answer: `{"error": {"code": "...", "message": "..."}}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    pub code: String,
    pub message: String,
    /// For a refused batch (`POST /api/jobs/batch`): the index of the job that was
    /// refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<usize>,
    /// The field of the spec that was refused, when one is to blame (`command`,
    /// `depends_on[0]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl ErrorDetail {
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            code: code.into(),
            message: message.into(),
            index: None,
            field: None,
        }
    }
}

/// `GET /api/jobs`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JobList {
    pub jobs: Vec<Job>,
    pub next_cursor: Option<String>,
    /// Jobs matching the filter; a lower bound when `total_exact` is false.
    pub total: u64,
    /// False when the filter (a kind, label, text, workflow or schedule) matched more
    /// than 10,000 jobs and counting stopped there: `total` is then "at least".
    #[serde(default = "exact")]
    pub total_exact: bool,
}

fn exact() -> bool {
    true
}

/// `POST /api/jobs/status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StatusRequest {
    pub ids: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StatusResponse {
    pub jobs: Vec<Job>,
    pub missing: Vec<String>,
}

/// `GET /api/jobs/{id}/events` as JSON.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EventList {
    pub events: Vec<Event>,
}

/// `GET /api/jobs/{id}/checkpoints`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CheckpointList {
    pub checkpoints: Vec<Checkpoint>,
}

/// `GET /api/throughput`: jobs completed and failed per bucket, oldest first; the first
/// bucket starts at `since`, the last holds now and ends at `end`. The store counts
/// them in the write that ends each job, so they survive a restart.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Throughput {
    pub window: String,
    pub bucket_seconds: u32,
    pub end: String,
    pub since: String,
    pub completed: Vec<u32>,
    pub failed: Vec<u32>,
}

/// `GET /api/whoami`: who the request's token names. Without auth every request is
/// `anonymous` with the `admin` role.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WhoAmI {
    /// Whether the server asks for tokens.
    pub auth: bool,
    pub name: String,
    /// `viewer`, `operator` or `admin`.
    pub role: String,
    /// The queues the role is narrowed to, when it is.
    pub queues: Option<Vec<String>>,
    /// What the server's configuration says to the dashboard it serves.
    #[serde(default)]
    pub dashboard: DashboardSettings,
}

/// The dashboard's settings from `baton.toml`'s `[dashboard]` table.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DashboardSettings {
    /// A running job with no progress, step, output or log line for this long is
    /// marked stalled (`stalled_after`, 2 minutes unless set).
    pub stalled_after_ms: u64,
}

/// `GET /api/jobs/{id}/attempts`: oldest first.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AttemptList {
    pub attempts: Vec<baton_core::Attempt>,
}

/// `GET /api/jobs/{id}/logs`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LogList {
    pub lines: Vec<LogLine>,
    /// Pass as `after` to read the lines that follow.
    pub next: u64,
}

/// `GET /api/pipelines`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PipelineList {
    #[schema(value_type = Vec<baton_store::Pipeline>)]
    pub pipelines: Vec<serde_json::Value>,
}

/// `GET /api/stats`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Stats {
    /// Jobs per state, every state present.
    pub states: BTreeMap<String, u64>,
    /// Jobs per queue and state.
    pub queues: BTreeMap<String, BTreeMap<String, u64>>,
    pub total: u64,
    /// The id of the last event these counts include: a client that follows
    /// `/api/events` applies only the events after it.
    pub event_id: u64,
    /// Jobs that reached each terminal state since this server started.
    pub since_start: BTreeMap<String, u64>,
    /// The store's durability as the database reports it (SQLite's `PRAGMA
    /// synchronous`, read back when the store opened): `full` survives a power loss,
    /// `normal` a crash of Baton only. Absent for a store without the setting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub synchronous: Option<String>,
}

/// `GET /api/servers`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ServerList {
    pub servers: Vec<ServerInfo>,
}

/// A remote worker connected to this server (`/api/workers/ws`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WorkerInfo {
    pub id: String,
    pub name: String,
    /// The kinds it serves.
    pub kinds: Vec<String>,
    /// The queues it takes jobs from.
    pub queues: Vec<String>,
    /// How many attempts it takes at once.
    pub slots: usize,
    /// The jobs it runs now.
    pub running: Vec<String>,
    /// RFC 3339.
    pub connected_at: String,
}

/// `GET /api/workers`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WorkerList {
    pub workers: Vec<WorkerInfo>,
}

/// `GET /api/queues`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct QueueList {
    pub queues: Vec<QueueInfo>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct QueueInfo {
    pub name: String,
    pub concurrency: Option<usize>,
    pub running: usize,
    pub counts: BTreeMap<String, u64>,
    /// Paused: it starts no new jobs until resumed.
    #[serde(default)]
    pub paused: bool,
    /// Heavy: admission control holds it while a resource threshold is crossed.
    #[serde(default)]
    pub heavy: bool,
    /// Why it starts no new jobs now that it is heavy and a threshold is crossed
    /// (`memory 93 % > 90 %`); null when it is not held.
    #[serde(default)]
    pub held: Option<String>,
}

/// `POST /api/workflows`: the workflow's id and each local name's job id.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WorkflowSubmitted {
    pub id: String,
    pub jobs: BTreeMap<String, String>,
}

/// `GET /api/workflows`: workflows, newest first.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WorkflowList {
    pub workflows: Vec<WorkflowSummary>,
    /// Pass as `cursor` for the next (older) page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// `GET /api/jobs/{id}/dependencies` and `/dependents`: the jobs at the other end of
/// a job's edges, with their states.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LinkList {
    pub jobs: Vec<Link>,
}

/// What the WebSocket at `/api/ws` accepts, one JSON object per text message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum WsRequest {
    /// Subscribe to a job's events, or to every event when `job` is absent; with
    /// `after`, first replays the stored events after that global event id.
    Subscribe {
        #[serde(default)]
        job: Option<String>,
        #[serde(default)]
        after: Option<u64>,
    },
    Unsubscribe {
        #[serde(default)]
        job: Option<String>,
    },
    /// A control command; the reply carries the same `id`.
    Control {
        #[serde(default)]
        id: Option<String>,
        action: ControlAction,
        job: String,
        #[serde(default)]
        force: bool,
        #[serde(default)]
        from_checkpoint: bool,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ControlAction {
    Pause,
    Resume,
    Stop,
    Cancel,
    Retry,
    Delete,
}

/// What the WebSocket sends.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum WsMessage {
    Event {
        event: Event,
    },
    Reply {
        id: Option<String>,
        ok: bool,
        #[serde(skip_serializing_if = "Option::is_none", default)]
        job: Option<Box<Job>>,
        #[serde(skip_serializing_if = "Option::is_none", default)]
        error: Option<ErrorDetail>,
    },
    Subscribed {
        job: Option<String>,
    },
    Unsubscribed {
        job: Option<String>,
    },
    Error {
        error: ErrorDetail,
    },
    /// Sent first by a subscription that resumes after `after` when retention removed
    /// events up to `pruned_upto`: some it had not seen may be gone, so a view built
    /// from events should be read again.
    Pruned {
        after: u64,
        pruned_upto: u64,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ws_requests_parse() {
        let r: WsRequest = serde_json::from_str(r#"{"op":"subscribe","after":7}"#).unwrap();
        assert_eq!(
            r,
            WsRequest::Subscribe {
                job: None,
                after: Some(7)
            }
        );
        let r: WsRequest = serde_json::from_str(
            r#"{"op":"control","id":"1","action":"stop","job":"j","force":true}"#,
        )
        .unwrap();
        assert!(matches!(
            r,
            WsRequest::Control {
                action: ControlAction::Stop,
                force: true,
                ..
            }
        ));
        assert!(serde_json::from_str::<WsRequest>(r#"{"op":"dance"}"#).is_err());
    }
}
