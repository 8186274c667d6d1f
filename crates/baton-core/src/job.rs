use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::state::State;
use crate::time::{Millis, opt_rfc3339, rfc3339};

/// A job as stored and as clients see it (DESIGN.md section 6). Every field is present;
/// fields without a value are `null`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Job {
    pub id: String,
    pub kind: String,
    pub queue: String,
    pub priority: i32,
    pub state: State,
    pub progress: Option<f64>,
    pub message: Option<String>,
    pub step: Option<String>,
    pub attempt: u32,
    pub max_attempts: u32,
    pub labels: BTreeMap<String, String>,
    pub depends_on: Vec<String>,
    pub workflow_id: Option<String>,
    pub schedule_id: Option<String>,
    #[serde(with = "rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Millis,
    #[serde(with = "opt_rfc3339")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub run_at: Option<Millis>,
    #[serde(with = "opt_rfc3339")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub started_at: Option<Millis>,
    #[serde(with = "opt_rfc3339")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub finished_at: Option<Millis>,
    pub result: Option<Value>,
    pub error: Option<ErrorInfo>,
    pub payload: Option<Value>,
    /// How many times the job was recovered after a crash.
    pub recoveries: u32,
    pub max_recoveries: u32,
    #[serde(with = "rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: Millis,
}

/// Why a job failed or was cancelled.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorInfo {
    pub code: String,
    pub message: String,
}

impl ErrorInfo {
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            code: code.into(),
            message: message.into(),
        }
    }
}
