use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::backoff::Backoff;
use crate::duration;
use crate::resources::{ResourceLimits, Usage};
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
    /// What the job's processes used (command and pipeline kinds): CPU time and
    /// resident memory, now and at their peak, of the attempt named in it; `null`
    /// until a first measurement.
    pub usage: Option<Usage>,
    /// Why a queued job has not started although its queue may have room: the
    /// concurrency limit across queues that is full (`concurrency limit
    /// source:alfabeta (2/2)`). Given by `GET /api/jobs/{id}` only; absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_for: Option<String>,
    /// What the job runs, and its time limits and retry backoff.
    #[serde(flatten)]
    pub runs: Runs,
}

/// What a job runs: the program of a command job, the steps of a pipeline job, and
/// the limits every job has. Environment values are never shown, only their names.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Runs {
    /// The program and its arguments (kind `command`); `null` for other kinds.
    pub command: Option<Vec<String>>,
    /// Whether `command[0]` runs through `sh -c` (kind `command`).
    pub shell: Option<bool>,
    /// The working folder of a command or pipeline job, when set.
    pub cwd: Option<String>,
    /// The names of the job's environment variables; their values are never returned.
    pub env: Option<Vec<String>>,
    /// The steps of a pipeline job (a stored pipeline's as they were when it was submitted).
    pub steps: Option<Vec<StepInfo>>,
    /// The stored pipeline the job was made from.
    pub pipeline: Option<String>,
    /// How long one attempt may run (`"1h"`), when limited.
    pub timeout: Option<String>,
    /// How long a stopped job has to wind down before it is killed (`"10s"`).
    pub grace: String,
    /// The wait before each retry.
    pub backoff: BackoffInfo,
    /// The resource limits of a command or pipeline job's processes, as given (with
    /// its queue's defaults for the fields it left out); `null` when it has none.
    pub limits: Option<ResourceLimits>,
}

/// One step of a pipeline job as clients see it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StepInfo {
    pub name: String,
    pub command: Vec<String>,
    pub shell: bool,
    pub cwd: Option<String>,
    /// The names of the step's own environment variables.
    pub env: Option<Vec<String>>,
    pub timeout: Option<String>,
    pub retries: Option<u32>,
}

/// A job's retry backoff as durations (`{"initial": "1s", "max": "5m"}`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BackoffInfo {
    pub initial: String,
    pub max: String,
}

impl Runs {
    /// Describes a stored job: `exec` is what a command or pipeline job executes, as
    /// [`crate::JobSpec::validate`] made it.
    pub fn describe(
        exec: Option<&Value>,
        timeout: Option<Duration>,
        grace: Duration,
        backoff: Backoff,
    ) -> Self {
        let exec = exec.and_then(Value::as_object);
        let field = |k: &str| exec.and_then(|e| e.get(k));
        let string = |k: &str| field(k).and_then(Value::as_str).map(str::to_owned);
        Self {
            command: field("command").map(strings),
            shell: field("command")
                .map(|_| field("shell").and_then(Value::as_bool).unwrap_or(false)),
            cwd: string("cwd"),
            env: field("env").and_then(names),
            steps: field("steps").and_then(Value::as_array).map(|steps| {
                steps
                    .iter()
                    .map(|s| StepInfo {
                        name: s["name"].as_str().unwrap_or_default().to_owned(),
                        command: strings(&s["command"]),
                        shell: s["shell"].as_bool().unwrap_or(false),
                        cwd: s["cwd"].as_str().map(str::to_owned),
                        env: names(&s["env"]),
                        timeout: s["timeout"].as_str().map(str::to_owned),
                        retries: s["retries"].as_u64().map(|n| n as u32),
                    })
                    .collect()
            }),
            pipeline: string("pipeline"),
            timeout: timeout.map(duration::format),
            grace: duration::format(grace),
            backoff: BackoffInfo {
                initial: duration::format(backoff.initial),
                max: duration::format(backoff.max),
            },
            limits: field("limits").and_then(|l| serde_json::from_value(l.clone()).ok()),
        }
    }
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// The keys of an environment object, sorted; never its values.
fn names(v: &Value) -> Option<Vec<String>> {
    v.as_object().map(|m| {
        let mut keys: Vec<String> = m.keys().cloned().collect();
        keys.sort();
        keys
    })
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
