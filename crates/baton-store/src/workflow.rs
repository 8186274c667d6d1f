//! Dependencies and workflows in the store: what a workflow submit writes, what a
//! control of a whole workflow changes, and the edges read back.

use std::collections::BTreeMap;

use baton_core::{Condition, EdgeStatus, ErrorInfo, Job, Millis, NewJob, State, WorkflowSummary};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A workflow to store in one atomic write: its jobs in an order where each comes
/// after the jobs it depends on, each with `workflow_id` and `workflow_name` set and
/// its dependencies given by job id.
#[derive(Clone, Debug, PartialEq)]
pub struct NewWorkflow {
    pub id: String,
    pub jobs: Vec<NewJob>,
    pub now: Millis,
}

/// What a workflow submit stored, or found.
#[derive(Clone, Debug, PartialEq)]
pub struct SubmittedWorkflow {
    pub id: String,
    /// False when a workflow with this id existed already; `jobs` are its jobs.
    pub created: bool,
    /// Local name to job id.
    pub names: BTreeMap<String, String>,
    pub jobs: Vec<Job>,
}

/// An action on a whole workflow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkflowAction {
    /// Pause: nothing new starts; its queued jobs wait (`awaiting`) until released.
    Hold,
    /// Resume: jobs whose dependencies are met are queued.
    Release,
    /// Runs the failed and cancelled jobs again, each once the jobs it depends on have
    /// ended as it needs; jobs that can never run (a dependency ended against their
    /// condition and is not retried) stay as they are.
    Retry { from_checkpoint: bool },
    /// Cancels every job that waits; the executing ones are left to the caller, which
    /// stops them.
    Cancel,
}

impl WorkflowAction {
    pub fn as_str(self) -> &'static str {
        match self {
            WorkflowAction::Hold => "pause",
            WorkflowAction::Release => "resume",
            WorkflowAction::Retry { .. } => "retry",
            WorkflowAction::Cancel => "cancel",
        }
    }
}

/// What an action on a workflow did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WorkflowChange {
    /// Queues that received jobs.
    pub queues: Vec<String>,
    /// Jobs of the workflow executing now (running, paused or stopping), which the
    /// engine pauses, resumes or stops.
    pub executing: Vec<(String, State)>,
}

/// One edge seen from one of its ends: the job at the other end, the condition and
/// how far the edge is, and that job's state and outcome.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Link {
    pub job_id: String,
    /// The job's local name when it is in the same workflow.
    pub name: Option<String>,
    pub on: Condition,
    pub status: EdgeStatus,
    pub state: State,
    pub result: Option<Value>,
    pub error: Option<ErrorInfo>,
}

/// A page of the workflow list: newest first.
#[derive(Clone, Debug, Default)]
pub struct WorkflowFilter {
    /// 1 to 1000.
    pub limit: usize,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct WorkflowPage {
    pub workflows: Vec<WorkflowSummary>,
    /// Where the next (older) page starts; `None` on the last page.
    pub next_cursor: Option<String>,
}
