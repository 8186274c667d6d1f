//! Stored pipeline definitions: named steps with the defaults of the jobs that run them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::spec::{BackoffSpec, EnvValue, JobSpec, KIND_PIPELINE, SpecError, StepSpec, check_name};

/// A pipeline definition as stored, sent to `PUT /api/pipelines/{id}` or written in a
/// TOML file. Submitting `{"kind": "pipeline", "pipeline": id}` copies its steps into
/// the job, and its defaults where the job spec leaves a field out.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PipelineSpec {
    /// Empty in a TOML file: the file's name (without `.toml`) is the id.
    #[serde(default)]
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub steps: Vec<StepSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    /// Retries of a step that sets none of its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<BackoffSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// Resource limits of the jobs that run it; a job's own fields win.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<crate::ResourceLimits>,
}

impl PipelineSpec {
    pub fn new(id: impl Into<String>, steps: Vec<StepSpec>) -> Self {
        Self {
            id: id.into(),
            steps,
            ..Self::default()
        }
    }

    /// Checks every field; errors name the field as a job spec would (`steps[1].command`).
    pub fn validate(&self, limits: &crate::Limits) -> Result<(), SpecError> {
        check_name("id", &self.id, 128)?;
        if let Some(d) = &self.description
            && d.len() > 4096
        {
            return Err(SpecError::new("description", "is longer than 4096 bytes"));
        }
        // A job that uses every default is what the definition promises to run.
        self.resolve(&JobSpec::new(KIND_PIPELINE))
            .validate(0, limits)
            .map(|_| ())
    }

    /// The job spec that runs this pipeline: `job`'s fields win over the defaults;
    /// labels and environment are merged (the job's value wins for a key in both).
    pub fn resolve(&self, job: &JobSpec) -> JobSpec {
        let merge = |base: &Option<BTreeMap<String, String>>,
                     over: &Option<BTreeMap<String, String>>| {
            match (base, over) {
                (None, None) => None,
                _ => {
                    let mut m = base.clone().unwrap_or_default();
                    m.extend(over.clone().unwrap_or_default());
                    Some(m)
                }
            }
        };
        let steps = self
            .steps
            .iter()
            .map(|s| StepSpec {
                retries: s.retries.or(self.retries),
                ..s.clone()
            })
            .collect();
        JobSpec {
            kind: KIND_PIPELINE.into(),
            pipeline: None,
            steps: Some(steps),
            queue: job.queue.clone().or_else(|| self.queue.clone()),
            priority: job.priority.or(self.priority),
            max_attempts: job.max_attempts.or(self.max_attempts),
            backoff: job.backoff.clone().or_else(|| self.backoff.clone()),
            timeout: job.timeout.clone().or_else(|| self.timeout.clone()),
            grace: job.grace.clone().or_else(|| self.grace.clone()),
            labels: merge(&self.labels, &job.labels),
            env: match (&self.env, &job.env) {
                (None, None) => None,
                (base, over) => {
                    let mut m: BTreeMap<String, EnvValue> = base
                        .iter()
                        .flatten()
                        .map(|(k, v)| (k.clone(), EnvValue::Plain(v.clone())))
                        .collect();
                    m.extend(over.clone().unwrap_or_default());
                    Some(m)
                }
            },
            cwd: job.cwd.clone().or_else(|| self.cwd.clone()),
            limits: match (&job.limits, &self.limits) {
                (Some(own), Some(def)) => Some(own.or(def)),
                (own, def) => own.clone().or_else(|| def.clone()),
            },
            ..job.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Limits;
    use serde_json::json;

    fn check(def: serde_json::Value, field: &str, part: &str) {
        let spec: PipelineSpec = serde_json::from_value(def.clone()).expect("parses");
        let err = spec
            .validate(&Limits::default())
            .expect_err(&def.to_string());
        assert_eq!(err.field, field, "{def}: {err}");
        assert!(err.message.contains(part), "{def}: {err} lacks {part}");
    }

    #[test]
    fn bad_definitions_name_the_field() {
        let step = json!({"name": "a", "command": ["true"]});
        check(json!({"id": "", "steps": [step]}), "id", "empty");
        check(json!({"id": "a b", "steps": [step]}), "id", "' '");
        check(json!({"id": "p", "steps": []}), "steps", "empty");
        check(
            json!({"id": "p", "steps": [{"name": "a", "command": []}]}),
            "steps[0].command",
            "program",
        );
        check(
            json!({"id": "p", "steps": [step], "queue": "a/b"}),
            "queue",
            "'/'",
        );
        check(
            json!({"id": "p", "steps": [step], "max_attempts": 0}),
            "max_attempts",
            "at least 1",
        );
        check(
            json!({"id": "p", "steps": [step], "retries": 1000}),
            "steps[0].retries",
            "limit",
        );
        check(
            json!({"id": "p", "steps": [step], "timeout": "soon"}),
            "timeout",
            "not a duration",
        );
    }

    #[test]
    fn a_job_overrides_the_defaults() {
        let def = PipelineSpec {
            queue: Some("scrapers".into()),
            priority: Some(3),
            max_attempts: Some(5),
            retries: Some(2),
            labels: Some([("source".to_string(), "alfabeta".to_string())].into()),
            env: Some([("A".to_string(), "1".to_string())].into()),
            ..PipelineSpec::new(
                "alfabeta",
                vec![
                    StepSpec::new("fetch", &["true"]),
                    StepSpec::new("load", &["true"]).retries(0),
                ],
            )
        };
        def.validate(&Limits::default()).expect("valid");
        let job = JobSpec::stored_pipeline("alfabeta")
            .priority(9)
            .label("run", "manual")
            .env("A", "2");
        let resolved = def.resolve(&job);
        assert_eq!(resolved.pipeline, None);
        let retries: Vec<Option<u32>> = resolved
            .steps
            .as_ref()
            .unwrap()
            .iter()
            .map(|s| s.retries)
            .collect();
        assert_eq!(
            retries,
            [Some(2), Some(0)],
            "the default fills only steps without their own"
        );
        assert_eq!(resolved.queue.as_deref(), Some("scrapers"));
        assert_eq!(resolved.priority, Some(9));
        assert_eq!(resolved.max_attempts, Some(5));
        let labels = resolved.labels.clone().unwrap();
        assert_eq!(labels["source"], "alfabeta");
        assert_eq!(labels["run"], "manual");
        assert_eq!(resolved.env.clone().unwrap()["A"], "2".into());
        let new = resolved.validate(0, &Limits::default()).expect("valid job");
        assert_eq!(new.max_attempts, 5);
    }
}
