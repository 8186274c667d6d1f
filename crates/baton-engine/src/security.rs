//! What a server lets jobs do: the commands policy and secret env values, applied to a
//! job's `exec` at submit (before anything is stored) and again at spawn (a job stored
//! before the policy changed runs under the policy of today).
//!
//! In a stored `exec`, a secret value is `{"sealed": "v1:..."}`; the plain text exists
//! only in the request that brought it and in the process that receives it.

use serde_json::{Map, Value};

use crate::policy::{CommandPolicy, Refused};
use crate::secrets::SecretKey;
use baton_core::{EnvValue, JobSpec, SpecError};

/// The security settings of an engine.
#[derive(Clone, Debug, Default)]
pub struct Security {
    pub commands: CommandPolicy,
    /// Seals secret env values; without one, a secret env is refused.
    pub secret_key: Option<SecretKey>,
    /// Every env value is treated as secret.
    pub redact_env: bool,
}

/// Where a job's spec comes from: a client may not hand in sealed values (only this
/// server makes them, and a sealed value copied from elsewhere must not be opened
/// into a process the copier controls); a stored schedule template holds them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Origin {
    Client,
    Stored,
}

/// Why a job's `exec` is refused.
#[derive(Debug)]
pub(crate) enum Refusal {
    Spec(SpecError),
    Policy(Refused),
}

/// An `exec` opened for a run: secret values in clear, and the list of them (longest
/// first) to mask in what the process prints.
pub(crate) struct Opened {
    pub exec: Value,
    pub secrets: Vec<String>,
}

impl Security {
    /// At submit: seals the secret values of `exec` in place and checks every program
    /// it would run against the commands policy.
    pub(crate) fn admit(&self, exec: &mut Value, origin: Origin) -> Result<(), Refusal> {
        let Value::Object(exec) = exec else {
            return Ok(());
        };
        let job_env = self.seal_env(exec.get_mut("env"), "env", origin)?;
        let mut step_envs = Vec::new();
        if let Some(Value::Array(steps)) = exec.get_mut("steps") {
            for (i, step) in steps.iter_mut().enumerate() {
                let field = format!("steps[{i}].env");
                step_envs.push(self.seal_env(step.get_mut("env"), &field, origin)?);
            }
        }
        self.check_programs(exec, &job_env, &step_envs)
            .map_err(Refusal::Policy)
    }

    /// For a schedule's job template, which is stored as written: its secret values
    /// (every value with `redact_env`) sealed in place, so that neither the template
    /// nor the jobs it makes hold them in clear.
    pub(crate) fn seal_template(&self, job: &mut JobSpec) -> Result<(), Refusal> {
        if let Some(env) = &mut job.env {
            let mut value = serde_json::to_value(&*env).unwrap_or(Value::Null);
            self.seal_env(Some(&mut value), "job.env", Origin::Client)?;
            *env = serde_json::from_value(value)
                .map_err(|e| spec("job.env", format!("cannot be sealed: {e}")))?;
        }
        if self.redact_env
            && let Some(steps) = &job.steps
            && let Some(i) = steps.iter().position(|s| s.env.is_some())
        {
            return Err(spec(
                format!("job.steps[{i}].env"),
                "redact_env is on and a schedule's step variables cannot be sealed; set them in the job's env",
            ));
        }
        Ok(())
    }

    /// At spawn: the `exec` with its sealed values opened, after the same policy check
    /// as at submit (the policy may have changed since).
    pub(crate) fn open(&self, exec: &Value) -> Result<Opened, Refusal> {
        let mut exec = exec.clone();
        let mut secrets = Vec::new();
        let Value::Object(map) = &mut exec else {
            return Ok(Opened { exec, secrets });
        };
        let job_env = self.open_env(map.get_mut("env"), "env", &mut secrets)?;
        let mut step_envs = Vec::new();
        if let Some(Value::Array(steps)) = map.get_mut("steps") {
            for (i, step) in steps.iter_mut().enumerate() {
                let field = format!("steps[{i}].env");
                step_envs.push(self.open_env(step.get_mut("env"), &field, &mut secrets)?);
            }
        }
        self.check_programs(map, &job_env, &step_envs)
            .map_err(Refusal::Policy)?;
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        secrets.dedup();
        Ok(Opened { exec, secrets })
    }

    /// Replaces secret values (every value with `redact_env`) by sealed ones; returns
    /// the variables in clear, for finding programs through a `PATH` the job sets.
    fn seal_env(
        &self,
        env: Option<&mut Value>,
        field: &str,
        origin: Origin,
    ) -> Result<Vec<(String, String)>, Refusal> {
        let mut clear = Vec::new();
        let Some(Value::Object(env)) = env else {
            return Ok(clear);
        };
        for (name, v) in env.iter_mut() {
            let value: EnvValue = serde_json::from_value(v.clone()).map_err(|_| {
                spec(
                    format!("{field}.{name}"),
                    "must be a string or {\"secret\": \"...\"}",
                )
            })?;
            let (text, seal) = match value {
                EnvValue::Plain(s) => (s, self.redact_env),
                EnvValue::Secret(s) => (s.secret, true),
                EnvValue::Sealed(s) => {
                    if origin == Origin::Client {
                        return Err(spec(
                            format!("{field}.{name}"),
                            "a sealed value is made by the server; send the value as {\"secret\": \"...\"}",
                        ));
                    }
                    let text = self.open_one(&s.sealed, field, name)?;
                    clear.push((name.clone(), text));
                    continue;
                }
            };
            if seal {
                let Some(key) = &self.secret_key else {
                    return Err(spec(
                        format!("{field}.{name}"),
                        "is secret, but this server has no secret_key (set secret_key or secret_key_file); it is not stored in clear",
                    ));
                };
                *v = sealed(key.seal(&text));
            }
            clear.push((name.clone(), text));
        }
        Ok(clear)
    }

    /// Opens the sealed values of one env object in place; notes every opened value.
    fn open_env(
        &self,
        env: Option<&mut Value>,
        field: &str,
        secrets: &mut Vec<String>,
    ) -> Result<Vec<(String, String)>, Refusal> {
        let mut clear = Vec::new();
        let Some(Value::Object(env)) = env else {
            return Ok(clear);
        };
        for (name, v) in env.iter_mut() {
            let text = match v {
                Value::String(s) => s.clone(),
                Value::Object(o) => match o.get("sealed").and_then(Value::as_str) {
                    Some(s) => {
                        let text = self.open_one(s, field, name)?;
                        secrets.push(text.clone());
                        *v = Value::String(text.clone());
                        text
                    }
                    None => {
                        return Err(spec(
                            format!("{field}.{name}"),
                            "is stored neither as a string nor sealed",
                        ));
                    }
                },
                _ => {
                    return Err(spec(format!("{field}.{name}"), "is not a string"));
                }
            };
            clear.push((name.clone(), text));
        }
        Ok(clear)
    }

    fn open_one(&self, sealed: &str, field: &str, name: &str) -> Result<String, Refusal> {
        let Some(key) = &self.secret_key else {
            return Err(spec(
                format!("{field}.{name}"),
                "is sealed, but this server has no secret_key to open it",
            ));
        };
        key.open(sealed)
            .map_err(|why| spec(format!("{field}.{name}"), why))
    }

    /// Checks the program of a command job, or of every step of a pipeline job.
    fn check_programs(
        &self,
        exec: &Map<String, Value>,
        job_env: &[(String, String)],
        step_envs: &[Vec<(String, String)>],
    ) -> Result<(), Refused> {
        if self.commands.is_any() {
            return Ok(());
        }
        let cwd = exec.get("cwd").and_then(Value::as_str);
        self.commands
            .check_env(job_env.iter().map(|(k, _)| k.as_str()))?;
        if let Some(argv0) = program_of(exec) {
            self.commands.check(&argv0, job_env, cwd)?;
        }
        if let Some(Value::Array(steps)) = exec.get("steps") {
            for (i, step) in steps.iter().enumerate() {
                let Some(step) = step.as_object() else {
                    continue;
                };
                let own = step_envs.get(i).map(Vec::as_slice).unwrap_or_default();
                self.commands
                    .check_env(own.iter().map(|(k, _)| k.as_str()))?;
                let mut env = job_env.to_vec();
                env.extend(own.iter().cloned());
                let step_cwd = step.get("cwd").and_then(Value::as_str).or(cwd);
                if let Some(argv0) = program_of(step) {
                    self.commands.check(&argv0, &env, step_cwd)?;
                }
            }
        }
        Ok(())
    }
}

/// The program a command (or a step) runs: `sh` for a shell command.
fn program_of(exec: &Map<String, Value>) -> Option<String> {
    if exec.get("shell").and_then(Value::as_bool) == Some(true) {
        return Some("sh".into());
    }
    exec.get("command")?
        .as_array()?
        .first()?
        .as_str()
        .map(str::to_owned)
}

fn sealed(text: String) -> Value {
    let mut m = Map::new();
    m.insert("sealed".into(), Value::String(text));
    Value::Object(m)
}

fn spec(field: impl Into<String>, message: impl Into<String>) -> Refusal {
    Refusal::Spec(SpecError::new(field, message))
}

impl From<Refusal> for crate::Error {
    fn from(r: Refusal) -> Self {
        match r {
            Refusal::Spec(e) => crate::Error::Spec(e),
            Refusal::Policy(r) => crate::Error::CommandNotAllowed(r.message),
        }
    }
}
