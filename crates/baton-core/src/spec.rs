//! The job spec as clients send it, and its validation into a [`NewJob`].

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::backoff::Backoff;
use crate::dependency::{Condition, Dependency, MAX_DEPENDENCIES, UniquePolicy};
use crate::duration;
use crate::id::{JobId, is_id_char};
use crate::resources::ResourceLimits;
use crate::state::State;
use crate::time::{self, Millis};

/// A job spec: DESIGN.md section 6's wire shape. Every field but `kind` is optional.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shell: Option<bool>,
    /// Variables for the process: a value is a string, or `{"secret": "..."}` for one
    /// that is stored encrypted, passed to the process and never shown again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<BTreeMap<String, EnvValue>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps: Option<Vec<StepSpec>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pipeline: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<BackoffSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_recoveries: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub depends_on: Option<Vec<Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unique_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unique_policy: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    /// Resource limits of a command or pipeline job's processes (memory, CPU time,
    /// CPUs); a field left out takes its queue's default, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<ResourceLimits>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StepSpec {
    pub name: String,
    pub command: Vec<String>,
    /// Runs `sh -c command[0]` (the rest of `command` become `$1`, `$2`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shell: Option<bool>,
    /// Added to the job's environment for this step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<BTreeMap<String, String>>,
    /// The step's working folder; the job's `cwd` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// Times the step runs again at once when it fails, before the job's attempt fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
}

impl StepSpec {
    pub fn new(name: impl Into<String>, command: &[&str]) -> Self {
        Self {
            name: name.into(),
            command: command.iter().map(|s| s.to_string()).collect(),
            ..Self::default()
        }
    }

    pub fn shell(mut self, shell: bool) -> Self {
        self.shell = Some(shell);
        self
    }

    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(duration::format(timeout));
        self
    }

    pub fn retries(mut self, n: u32) -> Self {
        self.retries = Some(n);
        self
    }

    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env
            .get_or_insert_with(BTreeMap::new)
            .insert(key.into(), value.into());
        self
    }
}

/// A job's environment value: plain text, a secret as the client sends it, or a
/// secret as the engine stores it (sealed; only the engine makes these).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum EnvValue {
    Plain(String),
    Secret(SecretValue),
    Sealed(SealedValue),
}

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SecretValue {
    pub secret: String,
}

impl std::fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretValue(***)")
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SealedValue {
    pub sealed: String,
}

impl From<String> for EnvValue {
    fn from(v: String) -> Self {
        EnvValue::Plain(v)
    }
}

impl From<&str> for EnvValue {
    fn from(v: &str) -> Self {
        EnvValue::Plain(v.to_owned())
    }
}

impl EnvValue {
    /// A secret value, as a client sends it.
    pub fn secret(value: impl Into<String>) -> Self {
        EnvValue::Secret(SecretValue {
            secret: value.into(),
        })
    }
}

/// The most times a step may be retried within one attempt.
pub const MAX_STEP_RETRIES: u32 = 100;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BackoffSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<String>,
}

/// A spec that failed validation: the field and what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid job spec: {field}: {message}")]
pub struct SpecError {
    pub field: String,
    pub message: String,
}

impl SpecError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Bounds that validation enforces.
#[derive(Clone, Debug)]
pub struct Limits {
    /// The largest payload, in bytes of its JSON text.
    pub max_payload_bytes: usize,
    pub max_labels: usize,
    pub default_max_attempts: u32,
    pub default_grace: Duration,
    pub default_max_recoveries: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_payload_bytes: 1024 * 1024,
            max_labels: 64,
            default_max_attempts: 3,
            default_grace: Duration::from_secs(10),
            default_max_recoveries: 20,
        }
    }
}

/// A validated job, ready to be stored.
#[derive(Clone, Debug, PartialEq)]
pub struct NewJob {
    pub id: JobId,
    pub kind: String,
    pub queue: String,
    pub priority: i32,
    /// `queued`, or `scheduled` when `run_at` is in the future.
    pub state: State,
    pub run_at: Option<Millis>,
    pub payload: Option<Value>,
    /// What a command or pipeline job executes (command, shell, env, cwd, steps,
    /// pipeline), kept as given.
    pub exec: Option<Value>,
    pub labels: BTreeMap<String, String>,
    pub max_attempts: u32,
    pub backoff: Backoff,
    pub timeout: Option<Duration>,
    pub grace: Duration,
    pub max_recoveries: u32,
    pub created_at: Millis,
    /// The jobs this one waits for; not empty makes the job `awaiting`.
    pub depends_on: Vec<Dependency>,
    pub unique_key: Option<String>,
    pub unique_policy: UniquePolicy,
    /// Set by a workflow submit: the workflow's id and the job's local name in it.
    pub workflow_id: Option<String>,
    pub workflow_name: Option<String>,
}

impl NewJob {
    /// Makes the job wait for `deps` (job ids): `awaiting` when there are any. Refused
    /// with a delay or `run_at`: an awaiting job is queued when its dependencies end,
    /// and has no time of its own to wait for.
    pub fn with_dependencies(mut self, deps: Vec<Dependency>) -> Result<NewJob, SpecError> {
        if deps.is_empty() {
            return Ok(self);
        }
        for (i, d) in deps.iter().enumerate() {
            JobId::parse(&d.job).map_err(|m| SpecError::new(format!("depends_on[{i}]"), m))?;
        }
        if self.run_at.is_some() {
            return Err(SpecError::new(
                "depends_on",
                "cannot be combined with delay or run_at",
            ));
        }
        self.state = State::Awaiting;
        self.depends_on = deps;
        Ok(self)
    }
}

pub const KIND_COMMAND: &str = "command";
pub const KIND_PIPELINE: &str = "pipeline";
pub const DEFAULT_QUEUE: &str = "default";

impl JobSpec {
    /// A spec for a job of `kind` (a handler name, `command` or `pipeline`).
    pub fn new(kind: impl Into<String>) -> Self {
        Self {
            kind: kind.into(),
            ..Self::default()
        }
    }

    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }

    pub fn payload(mut self, payload: Value) -> Self {
        self.payload = Some(payload);
        self
    }

    pub fn queue(mut self, queue: impl Into<String>) -> Self {
        self.queue = Some(queue.into());
        self
    }

    pub fn priority(mut self, priority: i32) -> Self {
        self.priority = Some(priority);
        self
    }

    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = Some(duration::format(delay));
        self
    }

    pub fn run_at(mut self, at: Millis) -> Self {
        self.run_at = Some(time::to_rfc3339(at));
        self
    }

    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = Some(n);
        self
    }

    pub fn backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.backoff = Some(BackoffSpec {
            initial: Some(duration::format(initial)),
            max: Some(duration::format(max)),
        });
        self
    }

    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(duration::format(timeout));
        self
    }

    pub fn grace(mut self, grace: Duration) -> Self {
        self.grace = Some(duration::format(grace));
        self
    }

    pub fn max_recoveries(mut self, n: u32) -> Self {
        self.max_recoveries = Some(n);
        self
    }

    pub fn label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.labels
            .get_or_insert_with(BTreeMap::new)
            .insert(key.into(), value.into());
        self
    }

    /// Limits the resources of the job's processes (kinds `command` and `pipeline`).
    pub fn limits(mut self, limits: ResourceLimits) -> Self {
        self.limits = Some(limits);
        self
    }

    /// A `command` job running `argv` (no shell).
    pub fn command<S: Into<String>>(argv: impl IntoIterator<Item = S>) -> Self {
        Self {
            kind: KIND_COMMAND.into(),
            command: Some(argv.into_iter().map(Into::into).collect()),
            ..Self::default()
        }
    }

    /// A `command` job running `sh -c script`.
    pub fn shell_command(script: impl Into<String>) -> Self {
        Self {
            shell: Some(true),
            ..Self::command([script.into()])
        }
    }

    /// A `pipeline` job with inline steps.
    pub fn pipeline_steps(steps: Vec<StepSpec>) -> Self {
        Self {
            kind: KIND_PIPELINE.into(),
            steps: Some(steps),
            ..Self::default()
        }
    }

    /// A `pipeline` job running the stored pipeline `id`.
    pub fn stored_pipeline(id: impl Into<String>) -> Self {
        Self {
            kind: KIND_PIPELINE.into(),
            pipeline: Some(id.into()),
            ..Self::default()
        }
    }

    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env
            .get_or_insert_with(BTreeMap::new)
            .insert(key.into(), EnvValue::Plain(value.into()));
        self
    }

    /// A variable whose value is secret: stored encrypted, never shown again.
    pub fn secret_env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env
            .get_or_insert_with(BTreeMap::new)
            .insert(key.into(), EnvValue::secret(value));
        self
    }

    pub fn cwd(mut self, cwd: impl Into<String>) -> Self {
        self.cwd = Some(cwd.into());
        self
    }

    /// Waits for job `id` (a workflow's local name, inside a workflow) to complete.
    pub fn depends_on(self, id: impl Into<String>) -> Self {
        self.depends_on_when(id, Condition::Completed)
    }

    /// Waits for job `id` to end so that `on` holds.
    pub fn depends_on_when(mut self, id: impl Into<String>, on: Condition) -> Self {
        let entry = match on {
            Condition::Completed => Value::String(id.into()),
            on => serde_json::json!({"job": id.into(), "on": on.as_str()}),
        };
        self.depends_on.get_or_insert_with(Vec::new).push(entry);
        self
    }

    /// At most one active job holds `key`; `policy` says what a second submit does.
    pub fn unique(mut self, key: impl Into<String>, policy: UniquePolicy) -> Self {
        self.unique_key = Some(key.into());
        self.unique_policy = Some(policy.as_str().into());
        self
    }

    /// Checks every field and resolves defaults, `delay` and `run_at` against `now`.
    pub fn validate(&self, now: Millis, limits: &Limits) -> Result<NewJob, SpecError> {
        let id = match &self.id {
            Some(id) => JobId::parse(id).map_err(|m| SpecError::new("id", m))?,
            None => JobId::generate(),
        };
        check_name("kind", &self.kind, 128)?;
        let queue = self.queue.clone().unwrap_or_else(|| DEFAULT_QUEUE.into());
        check_name("queue", &queue, 64)?;

        let run_at = match (&self.delay, &self.run_at) {
            (Some(_), Some(_)) => {
                return Err(SpecError::new(
                    "delay",
                    "give either delay or run_at, not both",
                ));
            }
            (Some(d), None) => {
                let d = duration::parse(d).map_err(|m| SpecError::new("delay", m))?;
                Some(now.saturating_add(d.as_millis() as i64))
            }
            (None, Some(at)) => Some(time::parse_rfc3339(at).ok_or_else(|| {
                SpecError::new(
                    "run_at",
                    format!("{at:?} is not an RFC 3339 time (e.g. 2026-01-31T02:00:00Z)"),
                )
            })?),
            (None, None) => None,
        };
        let state = match run_at {
            Some(at) if at > now => State::Scheduled,
            _ => State::Queued,
        };

        let max_attempts = self.max_attempts.unwrap_or(limits.default_max_attempts);
        if max_attempts == 0 {
            return Err(SpecError::new("max_attempts", "must be at least 1"));
        }
        let mut backoff = Backoff::default();
        if let Some(b) = &self.backoff {
            if let Some(s) = &b.initial {
                backoff.initial =
                    duration::parse(s).map_err(|m| SpecError::new("backoff.initial", m))?;
            }
            if let Some(s) = &b.max {
                backoff.max = duration::parse(s).map_err(|m| SpecError::new("backoff.max", m))?;
            }
            if backoff.max < backoff.initial {
                return Err(SpecError::new(
                    "backoff.max",
                    format!(
                        "{} is less than backoff.initial {}",
                        duration::format(backoff.max),
                        duration::format(backoff.initial)
                    ),
                ));
            }
        }
        let timeout = match &self.timeout {
            Some(s) => {
                let d = duration::parse(s).map_err(|m| SpecError::new("timeout", m))?;
                if d.is_zero() {
                    return Err(SpecError::new("timeout", "must be more than zero"));
                }
                Some(d)
            }
            None => None,
        };
        let grace = match &self.grace {
            Some(s) => duration::parse(s).map_err(|m| SpecError::new("grace", m))?,
            None => limits.default_grace,
        };

        let payload_len = match &self.payload {
            Some(p) => serde_json::to_string(p).map(|s| s.len()).unwrap_or(0),
            None => 0,
        };
        if payload_len > limits.max_payload_bytes {
            return Err(SpecError::new(
                "payload",
                format!(
                    "is {payload_len} bytes; the limit is {} bytes",
                    limits.max_payload_bytes
                ),
            ));
        }

        let labels = self.labels.clone().unwrap_or_default();
        if labels.len() > limits.max_labels {
            return Err(SpecError::new(
                "labels",
                format!(
                    "has {} labels; at most {} are allowed",
                    labels.len(),
                    limits.max_labels
                ),
            ));
        }
        for (k, v) in &labels {
            check_name("labels", k, 64)
                .map_err(|e| SpecError::new(format!("labels.{k}"), e.message))?;
            if v.len() > 512 {
                return Err(SpecError::new(
                    format!("labels.{k}"),
                    "value is longer than 512 bytes",
                ));
            }
        }

        let depends_on = parse_depends_on("depends_on", self.depends_on.as_deref().unwrap_or(&[]))?;
        let unique_policy = match &self.unique_policy {
            None => UniquePolicy::default(),
            Some(_) if self.unique_key.is_none() => {
                return Err(SpecError::new(
                    "unique_policy",
                    "needs a unique_key to apply to",
                ));
            }
            Some(p) => UniquePolicy::parse(p).ok_or_else(|| {
                SpecError::new(
                    "unique_policy",
                    format!("{p:?} is not a policy; expected \"reject\", \"return_existing\" or \"replace\""),
                )
            })?,
        };
        if let Some(key) = &self.unique_key {
            if key.is_empty() {
                return Err(SpecError::new("unique_key", "must not be empty"));
            }
            if key.len() > 512 {
                return Err(SpecError::new(
                    "unique_key",
                    format!("is {} bytes long; at most 512 are allowed", key.len()),
                ));
            }
            if key.chars().any(char::is_control) {
                return Err(SpecError::new(
                    "unique_key",
                    format!("{key:?} contains a control character"),
                ));
            }
        }

        let exec = self.validate_exec()?;
        NewJob {
            id,
            kind: self.kind.clone(),
            queue,
            priority: self.priority.unwrap_or(0),
            state,
            run_at,
            payload: self.payload.clone(),
            exec,
            labels,
            max_attempts,
            backoff,
            timeout,
            grace,
            max_recoveries: self.max_recoveries.unwrap_or(limits.default_max_recoveries),
            created_at: now,
            depends_on: Vec::new(),
            unique_key: self.unique_key.clone(),
            unique_policy,
            workflow_id: None,
            workflow_name: None,
        }
        .with_dependencies(depends_on)
    }

    fn validate_exec(&self) -> Result<Option<Value>, SpecError> {
        let is_command = self.kind == KIND_COMMAND;
        let is_pipeline = self.kind == KIND_PIPELINE;
        let only = |field: &str, kinds: &str| {
            SpecError::new(field, format!("is only allowed for kind {kinds}"))
        };
        if !is_command {
            if self.command.is_some() {
                return Err(only("command", "command"));
            }
            if self.shell.is_some() {
                return Err(only("shell", "command"));
            }
        }
        if !is_command && !is_pipeline {
            if self.env.is_some() {
                return Err(only("env", "command or pipeline"));
            }
            if self.limits.is_some() {
                return Err(only("limits", "command or pipeline"));
            }
            if self.cwd.is_some() {
                return Err(only("cwd", "command or pipeline"));
            }
        }
        if !is_pipeline {
            if self.steps.is_some() {
                return Err(only("steps", "pipeline"));
            }
            if self.pipeline.is_some() {
                return Err(only("pipeline", "pipeline"));
            }
        }
        if is_command {
            match &self.command {
                None => return Err(SpecError::new("command", "is required for kind command")),
                Some(argv) if argv.is_empty() || argv[0].is_empty() => {
                    return Err(SpecError::new("command", "must name a program"));
                }
                Some(_) => {}
            }
        }
        if is_pipeline {
            match (&self.steps, &self.pipeline) {
                (None, None) => {
                    return Err(SpecError::new(
                        "steps",
                        "a pipeline job needs steps or the id of a stored pipeline",
                    ));
                }
                (Some(_), Some(_)) => {
                    return Err(SpecError::new(
                        "steps",
                        "give either steps or pipeline, not both",
                    ));
                }
                (Some(steps), None) => check_steps(steps)?,
                (None, Some(p)) => check_name("pipeline", p, 128)?,
            }
        }
        if let Some(cwd) = &self.cwd
            && cwd.is_empty()
        {
            return Err(SpecError::new("cwd", "must not be empty"));
        }
        if let Some(env) = &self.env {
            let plain = env.iter().map(|(k, v)| match v {
                EnvValue::Plain(v) => (k, v.as_str()),
                EnvValue::Secret(s) => (k, s.secret.as_str()),
                EnvValue::Sealed(_) => (k, ""),
            });
            check_env_pairs("env", plain)?;
        }
        if !is_command && !is_pipeline {
            return Ok(None);
        }
        let mut exec = serde_json::Map::new();
        let mut put = |k: &str, v: Value| {
            exec.insert(k.into(), v);
        };
        if let Some(c) = &self.command {
            put("command", serde_json::json!(c));
        }
        if let Some(s) = self.shell {
            put("shell", Value::Bool(s));
        }
        if let Some(e) = &self.env {
            put("env", serde_json::json!(e));
        }
        if let Some(c) = &self.cwd {
            put("cwd", Value::String(c.clone()));
        }
        if let Some(s) = &self.steps {
            put("steps", serde_json::to_value(s).unwrap_or(Value::Null));
        }
        if let Some(p) = &self.pipeline {
            put("pipeline", Value::String(p.clone()));
        }
        if let Some(l) = &self.limits {
            l.parse("limits")?;
            if !l.is_empty() {
                put("limits", serde_json::to_value(l).unwrap_or(Value::Null));
            }
        }
        Ok(Some(Value::Object(exec)))
    }
}

/// Checks a pipeline's steps: names unique (a resumed pipeline skips completed steps
/// by name), programs named, durations and retries valid.
pub(crate) fn check_steps(steps: &[StepSpec]) -> Result<(), SpecError> {
    if steps.is_empty() {
        return Err(SpecError::new("steps", "must not be empty"));
    }
    for (i, step) in steps.iter().enumerate() {
        check_name(&format!("steps[{i}].name"), &step.name, 128)?;
        if steps[..i].iter().any(|s| s.name == step.name) {
            return Err(SpecError::new(
                format!("steps[{i}].name"),
                format!(
                    "{:?} is used by an earlier step; step names must be unique",
                    step.name
                ),
            ));
        }
        if step.command.is_empty() || step.command[0].is_empty() {
            return Err(SpecError::new(
                format!("steps[{i}].command"),
                "must name a program",
            ));
        }
        if let Some(t) = &step.timeout {
            let d =
                duration::parse(t).map_err(|m| SpecError::new(format!("steps[{i}].timeout"), m))?;
            if d.is_zero() {
                return Err(SpecError::new(
                    format!("steps[{i}].timeout"),
                    "must be more than zero",
                ));
            }
        }
        if let Some(r) = step.retries
            && r > MAX_STEP_RETRIES
        {
            return Err(SpecError::new(
                format!("steps[{i}].retries"),
                format!("{r} is more than the limit of {MAX_STEP_RETRIES}"),
            ));
        }
        if let Some(cwd) = &step.cwd
            && cwd.is_empty()
        {
            return Err(SpecError::new(
                format!("steps[{i}].cwd"),
                "must not be empty",
            ));
        }
        if let Some(env) = &step.env {
            check_env_pairs(
                &format!("steps[{i}].env"),
                env.iter().map(|(k, v)| (k, v.as_str())),
            )?;
        }
    }
    Ok(())
}

/// Environment variable names: non-empty, no `=` or NUL (the OS cannot pass them).
fn check_env_pairs<'a>(
    field: &str,
    env: impl Iterator<Item = (&'a String, &'a str)>,
) -> Result<(), SpecError> {
    for (k, v) in env {
        if k.is_empty() || k.contains('=') || k.contains('\0') {
            return Err(SpecError::new(
                field,
                format!("{k:?} is not a valid environment variable name"),
            ));
        }
        if v.contains('\0') {
            return Err(SpecError::new(
                format!("{field}.{k}"),
                "contains a NUL character",
            ));
        }
    }
    Ok(())
}

/// Parses a spec's `depends_on`: each entry a job id, or `{"job": id, "on": condition}`.
/// `field` names the list in errors.
pub fn parse_depends_on(field: &str, entries: &[Value]) -> Result<Vec<Dependency>, SpecError> {
    if entries.len() > MAX_DEPENDENCIES {
        return Err(SpecError::new(
            field,
            format!(
                "has {} dependencies; at most {MAX_DEPENDENCIES} are allowed",
                entries.len()
            ),
        ));
    }
    let mut out: Vec<Dependency> = Vec::with_capacity(entries.len());
    for (i, entry) in entries.iter().enumerate() {
        let at = || format!("{field}[{i}]");
        let dep = match entry {
            Value::String(id) => Dependency::new(id.clone(), Condition::Completed),
            Value::Object(map) => {
                if let Some(k) = map.keys().find(|k| *k != "job" && *k != "on") {
                    return Err(SpecError::new(
                        at(),
                        format!("unknown field {k:?}; expected \"job\" and \"on\""),
                    ));
                }
                let job = match map.get("job") {
                    Some(Value::String(id)) => id.clone(),
                    _ => return Err(SpecError::new(at(), "needs \"job\": the id it depends on")),
                };
                let on = match map.get("on") {
                    None | Some(Value::Null) => Condition::Completed,
                    Some(Value::String(s)) => Condition::parse(s).ok_or_else(|| {
                        SpecError::new(
                            format!("{}.on", at()),
                            format!("{s:?} is not a condition; expected \"completed\", \"failed\" or \"finished\""),
                        )
                    })?,
                    Some(other) => {
                        return Err(SpecError::new(
                            format!("{}.on", at()),
                            format!("{other} is not a condition; expected \"completed\", \"failed\" or \"finished\""),
                        ));
                    }
                };
                Dependency::new(job, on)
            }
            other => {
                return Err(SpecError::new(
                    at(),
                    format!("{other} is neither a job id nor {{\"job\": id, \"on\": condition}}"),
                ));
            }
        };
        if dep.job.is_empty() {
            return Err(SpecError::new(at(), "the job id must not be empty"));
        }
        out.push(dep);
    }
    let mut seen = std::collections::HashSet::with_capacity(out.len());
    for (i, dep) in out.iter().enumerate() {
        if !seen.insert(dep.job.as_str()) {
            return Err(SpecError::new(
                format!("{field}[{i}]"),
                format!("{:?} is listed twice", dep.job),
            ));
        }
    }
    Ok(out)
}

/// Names (kinds, queues, label keys) use letters, digits, `.`, `_`, `:` and `-`.
pub(crate) fn check_name(field: &str, value: &str, max: usize) -> Result<(), SpecError> {
    if value.is_empty() {
        return Err(SpecError::new(field, "must not be empty"));
    }
    if value.len() > max {
        return Err(SpecError::new(
            field,
            format!(
                "is {} characters long; at most {max} are allowed",
                value.len()
            ),
        ));
    }
    if let Some(c) = value.chars().find(|c| !is_id_char(*c)) {
        return Err(SpecError::new(
            field,
            format!("{value:?} contains {c:?}; use letters, digits, '.', '_', ':' and '-'"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const NOW: Millis = 1_700_000_000_000;

    fn check(spec: serde_json::Value, field: &str, part: &str) {
        let result: Result<JobSpec, _> = serde_json::from_value(spec.clone());
        let err = match result {
            Err(e) => {
                let msg = e.to_string();
                assert!(msg.contains(part), "{spec}: {msg} lacks {part}");
                return;
            }
            Ok(s) => s
                .validate(NOW, &Limits::default())
                .expect_err(&spec.to_string()),
        };
        assert_eq!(err.field, field, "{spec}: {err}");
        assert!(err.message.contains(part), "{spec}: {err} lacks {part}");
    }

    #[test]
    fn bad_specs_name_the_field() {
        check(json!({"kind": ""}), "kind", "empty");
        check(json!({"kind": "a b"}), "kind", "' '");
        check(json!({"kind": "x", "id": ""}), "id", "empty");
        check(json!({"kind": "x", "queue": "q/1"}), "queue", "'/'");
        check(json!({"kind": "x", "delay": "-5s"}), "delay", "negative");
        check(
            json!({"kind": "x", "limits": {"memory": "1GB"}}),
            "limits",
            "only allowed for kind command or pipeline",
        );
        check(
            json!({"kind": "command", "command": ["true"], "limits": {"memory": "lots"}}),
            "limits.memory",
            "\"lots\" is not an amount of memory",
        );
        check(
            json!({"kind": "command", "command": ["true"], "limits": {"cpus": 0}}),
            "limits.cpus",
            "positive",
        );
        check(
            json!({"kind": "command", "command": ["true"], "limits": {"memroy": "1GB"}}),
            "",
            "unknown field `memroy`",
        );
        check(
            json!({"kind": "x", "delay": "soon"}),
            "delay",
            "not a duration",
        );
        check(
            json!({"kind": "x", "delay": "1s", "run_at": "2030-01-01T00:00:00Z"}),
            "delay",
            "not both",
        );
        check(
            json!({"kind": "x", "run_at": "tomorrow"}),
            "run_at",
            "RFC 3339",
        );
        check(
            json!({"kind": "x", "max_attempts": 0}),
            "max_attempts",
            "at least 1",
        );
        check(
            json!({"kind": "x", "backoff": {"initial": "10s", "max": "1s"}}),
            "backoff.max",
            "less than",
        );
        check(
            json!({"kind": "x", "backoff": {"initial": "x"}}),
            "backoff.initial",
            "not a duration",
        );
        check(
            json!({"kind": "x", "timeout": "0s"}),
            "timeout",
            "more than zero",
        );
        check(json!({"kind": "x", "grace": "1y"}), "grace", "unknown unit");
        check(
            json!({"kind": "x", "labels": {"bad key": "v"}}),
            "labels.bad key",
            "' '",
        );
        check(
            json!({"kind": "x", "command": ["ls"]}),
            "command",
            "only allowed",
        );
        check(json!({"kind": "command"}), "command", "required");
        check(
            json!({"kind": "command", "command": []}),
            "command",
            "program",
        );
        check(json!({"kind": "pipeline"}), "steps", "needs steps");
        check(json!({"kind": "pipeline", "steps": []}), "steps", "empty");
        check(
            json!({"kind": "pipeline", "steps": [{"name": "a", "command": ["x"], "timeout": "-1s"}]}),
            "steps[0].timeout",
            "negative",
        );
        check(
            json!({"kind": "pipeline", "steps": [{"name": "a", "command": ["x"]}, {"name": "a", "command": ["y"]}]}),
            "steps[1].name",
            "unique",
        );
        check(
            json!({"kind": "pipeline", "steps": [{"name": "a", "command": ["x"], "retries": 1000}]}),
            "steps[0].retries",
            "limit",
        );
        check(
            json!({"kind": "pipeline", "steps": [{"name": "a", "command": [""]}]}),
            "steps[0].command",
            "program",
        );
        check(
            json!({"kind": "command", "command": ["x"], "env": {"A=B": "c"}}),
            "env",
            "not a valid",
        );
        check(
            json!({"kind": "command", "command": ["x"], "cwd": ""}),
            "cwd",
            "empty",
        );
        check(
            json!({"kind": "x", "depends_on": ["a", {"job": "a"}]}),
            "depends_on[1]",
            "twice",
        );
        check(
            json!({"kind": "x", "depends_on": ["a b"]}),
            "depends_on[0]",
            "' '",
        );
        check(
            json!({"kind": "x", "depends_on": [{"job": "a", "on": "done"}]}),
            "depends_on[0].on",
            "not a condition",
        );
        check(
            json!({"kind": "x", "depends_on": [{"job": "a", "when": "failed"}]}),
            "depends_on[0]",
            "unknown field",
        );
        check(
            json!({"kind": "x", "depends_on": ["a"], "delay": "5s"}),
            "depends_on",
            "delay or run_at",
        );
        check(
            json!({"kind": "x", "unique_policy": "replace"}),
            "unique_policy",
            "needs a unique_key",
        );
        check(
            json!({"kind": "x", "unique_key": "k", "unique_policy": "sometimes"}),
            "unique_policy",
            "not a policy",
        );
        check(
            json!({"kind": "x", "unique_key": ""}),
            "unique_key",
            "empty",
        );
        check(
            json!({"kind": "x", "colour": "red"}),
            "",
            "unknown field `colour`",
        );
        check(json!({"kind": "x", "priority": "high"}), "", "invalid type");
    }

    #[test]
    fn oversize_payloads_are_refused() {
        let limits = Limits {
            max_payload_bytes: 100,
            ..Limits::default()
        };
        let spec = JobSpec::new("x").payload(json!({"blob": "a".repeat(200)}));
        let err = spec.validate(NOW, &limits).unwrap_err();
        assert_eq!(err.field, "payload");
        assert!(err.message.contains("limit is 100 bytes"), "{err}");
    }

    #[test]
    fn defaults_and_delays_resolve() {
        let job = JobSpec::new("email")
            .validate(NOW, &Limits::default())
            .unwrap();
        assert_eq!(job.queue, "default");
        assert_eq!(job.state, State::Queued);
        assert_eq!(job.max_attempts, 3);
        assert_eq!(job.run_at, None);

        let job = JobSpec::new("email")
            .delay(Duration::from_secs(30))
            .validate(NOW, &Limits::default())
            .unwrap();
        assert_eq!(job.state, State::Scheduled);
        assert_eq!(job.run_at, Some(NOW + 30_000));

        // A run_at in the past queues at once.
        let job = JobSpec::new("email")
            .run_at(NOW - 1000)
            .validate(NOW, &Limits::default())
            .unwrap();
        assert_eq!(job.state, State::Queued);
    }

    #[test]
    fn dependencies_make_a_job_await() {
        let job = JobSpec::new("x")
            .depends_on("a")
            .depends_on_when("b", Condition::Finished)
            .unique("report:7", UniquePolicy::Replace)
            .validate(NOW, &Limits::default())
            .unwrap();
        assert_eq!(job.state, State::Awaiting);
        assert_eq!(
            job.depends_on,
            vec![
                Dependency::new("a", Condition::Completed),
                Dependency::new("b", Condition::Finished)
            ]
        );
        assert_eq!(job.unique_key.as_deref(), Some("report:7"));
        assert_eq!(job.unique_policy, UniquePolicy::Replace);
        let plain = JobSpec::new("x").validate(NOW, &Limits::default()).unwrap();
        assert!(plain.depends_on.is_empty());
        assert_eq!(plain.unique_policy, UniquePolicy::Reject);
    }

    #[test]
    fn client_ids_are_kept() {
        let job = JobSpec::new("x")
            .id("order-7")
            .validate(NOW, &Limits::default())
            .unwrap();
        assert_eq!(job.id.as_str(), "order-7");
    }
}
