//! What every store answers for a job it has just stored: the job, its
//! `job.submitted` event's data, and, when the submit starts it at once, its claim.

use baton_core::{Job, NewJob, Runs, State, state};
use serde_json::{Value, json};

use crate::{Claimed, Error, Result};

/// The data of a new job's `job.submitted` event.
pub fn submitted_data(new: &NewJob) -> Value {
    let mut data = json!({
        "state": new.state,
        "kind": new.kind,
        "queue": new.queue,
        "priority": new.priority,
    });
    if let Some(wf) = &new.workflow_id {
        data["workflow"] = json!(wf);
    }
    if let Some(at) = new.run_at {
        data["run_at"] = json!(baton_core::time::to_rfc3339(at));
    }
    data
}

/// A job as its submit stored it; `runs` as the caller describes it.
pub fn submitted_job(new: &NewJob, runs: Runs) -> Job {
    Job {
        id: new.id.to_string(),
        kind: new.kind.clone(),
        queue: new.queue.clone(),
        priority: new.priority,
        state: new.state,
        progress: None,
        message: None,
        step: None,
        attempt: 0,
        max_attempts: new.max_attempts,
        labels: new.labels.clone(),
        depends_on: new.depends_on.iter().map(|d| d.job.clone()).collect(),
        workflow_id: new.workflow_id.clone(),
        schedule_id: None,
        created_at: new.created_at,
        run_at: new.run_at,
        started_at: None,
        finished_at: None,
        result: None,
        error: None,
        payload: new.payload.clone(),
        recoveries: 0,
        max_recoveries: new.max_recoveries,
        updated_at: new.created_at,
        usage: None,
        waiting_for: None,
        runs,
    }
}

/// Starts a job in the write that stores it (`submit_and_start`): `job` becomes its
/// first attempt, running on `server_id`; answers its claim and its `job.started`
/// event's data.
pub fn start_at_submit(job: &mut Job, new: &NewJob, server_id: &str) -> Result<(Claimed, Value)> {
    state::check(Some(State::Queued), State::Running).map_err(|source| Error::Transition {
        id: new.id.to_string(),
        source,
    })?;
    job.state = State::Running;
    job.attempt = 1;
    job.started_at = Some(new.created_at);
    let claimed = Claimed {
        job: job.clone(),
        fence: 1,
        checkpoint: None,
        exec: new.exec.clone(),
        backoff: new.backoff,
        timeout: new.timeout,
        grace: new.grace,
        retries_left: new.max_attempts.saturating_sub(1),
    };
    let data = json!({"state": "running", "from": "queued", "attempt": 1, "server_id": server_id});
    Ok((claimed, data))
}
