//! Workflows, dependencies and paused queues in the engine: submitting a DAG of jobs
//! under local names, controlling it as a whole, reading its graph, and the task that
//! acts on what the store decided inside its writes.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use baton_core::{
    Dependency, JobId, JobSpec, Millis, NewJob, SpecError, WorkflowGraph, WorkflowSpec,
};
use baton_store::{Link, NewWorkflow, SubmittedWorkflow, WorkflowAction, WorkflowChange};
use serde_json::Value;
use tokio::sync::broadcast;

use super::{Engine, Inner};
use crate::{Error, EventKind, Result, State};

/// A queue as the engine runs it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct QueueStatus {
    pub name: String,
    pub concurrency: usize,
    /// Jobs of this queue running on this engine now.
    pub running: usize,
    pub paused: bool,
    /// Held by admission control when crossed thresholds hold it back.
    pub heavy: bool,
    /// Why it starts no new job while it is heavy and a threshold is crossed
    /// (`memory 93 % > 90 %`).
    pub held: Option<String>,
}

impl Engine {
    /// Stores a workflow: its jobs under their local names, with `depends_on` naming
    /// other jobs of the workflow (or ids of jobs stored already), in one atomic write.
    /// A cycle is refused with its path (`a -> b -> c -> a`), an unknown dependency
    /// with its id; nothing is stored then. Submitting a workflow id that exists returns
    /// that workflow (`created` is false).
    pub async fn submit_workflow(&self, spec: WorkflowSpec) -> Result<SubmittedWorkflow> {
        self.inner.accepting()?;
        let plan = spec.plan()?;
        let now = self.inner.clock.now();
        let workflow_id = match &spec.id {
            Some(id) => id.clone(),
            None => JobId::generate().to_string(),
        };
        // Ids first, so that edges can name them.
        let mut ids: BTreeMap<&str, String> = BTreeMap::new();
        let mut taken: BTreeMap<String, &str> = BTreeMap::new();
        for (name, job) in &spec.jobs {
            let id = match &job.id {
                Some(id) => JobId::parse(id)
                    .map_err(|m| SpecError::new(format!("jobs.{name}.id"), m))?
                    .to_string(),
                None => JobId::generate().to_string(),
            };
            if let Some(other) = taken.insert(id.clone(), name) {
                return Err(SpecError::new(
                    format!("jobs.{name}.id"),
                    format!("{id:?} is also the id of job {other:?}"),
                )
                .into());
            }
            ids.insert(name, id);
        }
        let mut jobs = Vec::with_capacity(plan.len());
        for (name, deps) in plan {
            let mut job = spec.jobs[&name].clone();
            job.id = Some(ids[name.as_str()].clone());
            // Local names become ids here, without another round through JSON.
            job.depends_on = None;
            let deps = deps
                .into_iter()
                .map(|d| Dependency {
                    job: ids.get(d.job.as_str()).cloned().unwrap_or(d.job),
                    on: d.on,
                })
                .collect();
            let in_workflow = |e: Error| match e {
                Error::Spec(e) => Error::Spec(SpecError::new(
                    format!("jobs.{name}.{}", e.field),
                    e.message,
                )),
                other => other,
            };
            let mut new = self
                .prepare(&job, now)
                .await
                .and_then(|new| Ok(new.with_dependencies(deps)?))
                .map_err(in_workflow)?;
            new.workflow_id = Some(workflow_id.clone());
            new.workflow_name = Some(name);
            jobs.push(new);
        }
        let out = self
            .inner
            .store
            .submit_workflow(NewWorkflow {
                id: workflow_id,
                jobs,
                now,
            })
            .await?;
        if out.created {
            let mut woken = BTreeSet::new();
            for job in &out.jobs {
                if job.state != State::Queued || woken.insert(job.queue.as_str()) {
                    self.inner.job_became(job);
                }
            }
            tracing::info!(workflow_id = %out.id, jobs = out.jobs.len(), "workflow submitted");
        }
        Ok(out)
    }

    /// A workflow's jobs with their states and its edges with their conditions.
    pub async fn workflow(&self, id: &str) -> Result<WorkflowGraph> {
        self.inner
            .store
            .workflow(id)
            .await?
            .ok_or_else(|| Error::Store(baton_store::Error::WorkflowNotFound(id.into())))
    }

    /// Pauses a workflow: its running jobs pause at their next pause point, and nothing
    /// of it starts until it is resumed.
    pub async fn pause_workflow(&self, id: &str) -> Result<WorkflowGraph> {
        let change = self.control_workflow(id, WorkflowAction::Hold).await?;
        for (job, _) in &change.executing {
            self.tolerate(self.pause(job).await)?;
        }
        self.workflow(id).await
    }

    /// Resumes a paused workflow: its jobs whose dependencies are met are queued and
    /// its paused jobs resume.
    pub async fn resume_workflow(&self, id: &str) -> Result<WorkflowGraph> {
        let change = self.control_workflow(id, WorkflowAction::Release).await?;
        for (job, _) in &change.executing {
            self.tolerate(self.resume(job).await)?;
        }
        self.workflow(id).await
    }

    /// Runs the failed and cancelled jobs of a workflow again, each once the jobs it
    /// depends on have ended; completed jobs are not run again.
    pub async fn retry_workflow(&self, id: &str, from_checkpoint: bool) -> Result<WorkflowGraph> {
        self.control_workflow(id, WorkflowAction::Retry { from_checkpoint })
            .await?;
        self.workflow(id).await
    }

    /// Cancels a workflow: its waiting jobs at once, its running ones by a graceful stop.
    pub async fn cancel_workflow(&self, id: &str) -> Result<WorkflowGraph> {
        let change = self.control_workflow(id, WorkflowAction::Cancel).await?;
        for (job, _) in &change.executing {
            self.tolerate(self.cancel(job).await)?;
        }
        self.workflow(id).await
    }

    /// The jobs `id` depends on, with their states and results.
    pub async fn dependencies(&self, id: &str) -> Result<Vec<Link>> {
        Ok(self.inner.store.dependencies(id).await?)
    }

    /// The jobs that depend on `id`, with their states.
    pub async fn dependents(&self, id: &str) -> Result<Vec<Link>> {
        Ok(self.inner.store.dependents(id).await?)
    }

    /// Pauses a queue: it starts no new jobs (running ones go on) until resumed, also
    /// after a restart. Pausing a paused queue changes nothing.
    pub async fn pause_queue(&self, name: &str) -> Result<QueueStatus> {
        self.set_queue_paused(name, true).await
    }

    /// Resumes a paused queue.
    pub async fn resume_queue(&self, name: &str) -> Result<QueueStatus> {
        self.set_queue_paused(name, false).await
    }

    /// The queues this engine serves, with their state.
    pub fn queue_states(&self) -> Vec<QueueStatus> {
        self.inner
            .queues
            .values()
            .map(|q| status(&self.inner, q))
            .collect()
    }

    async fn set_queue_paused(&self, name: &str, paused: bool) -> Result<QueueStatus> {
        let Some(q) = self.inner.queues.get(name) else {
            let known: Vec<&str> = self.inner.queues.keys().map(String::as_str).collect();
            return Err(Error::UnknownQueue {
                queue: name.into(),
                known: known.join(", "),
            });
        };
        // The flag first: a dispatcher that looks now already holds back.
        let was = q.paused.swap(paused, Ordering::SeqCst);
        let now = self.inner.clock.now();
        if let Err(e) = self.inner.store.set_queue_paused(name, paused, now).await {
            q.paused.store(was, Ordering::SeqCst);
            return Err(e.into());
        }
        if !paused {
            q.backlog.store(true, Ordering::SeqCst);
            q.wake.notify_one();
            self.inner.remote.wake(name);
        }
        tracing::info!(queue = %name, paused, "queue {}", if paused { "paused" } else { "resumed" });
        Ok(status(&self.inner, q))
    }

    async fn control_workflow(&self, id: &str, action: WorkflowAction) -> Result<WorkflowChange> {
        let now = self.inner.clock.now();
        let change = self.inner.store.control_workflow(id, action, now).await?;
        for queue in &change.queues {
            self.inner.wake_queue(queue);
        }
        tracing::info!(workflow_id = %id, action = action.as_str(), "workflow control");
        Ok(change)
    }

    /// A job that moved on between the store's answer and this call is left as it is.
    fn tolerate<T>(&self, r: Result<T>) -> Result<()> {
        match r {
            Ok(_)
            | Err(Error::Illegal { .. })
            | Err(Error::Store(baton_store::Error::Conflict { .. }))
            | Err(Error::Store(baton_store::Error::Transition { .. })) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Validates one job spec as `submit` does (stored pipelines resolved, kind and
    /// queue checked).
    async fn prepare(&self, spec: &JobSpec, now: Millis) -> Result<NewJob> {
        self.new_job(spec, now, crate::security::Origin::Client)
            .await
    }
}

impl Inner {
    fn wake_queue(&self, name: &str) {
        if let Some(q) = self.queues.get(name) {
            q.backlog.store(true, Ordering::SeqCst);
            q.wake.notify_one();
        }
        self.remote.wake(name);
    }
}

fn status(inner: &Inner, q: &super::QueueState) -> QueueStatus {
    QueueStatus {
        name: q.name.clone(),
        concurrency: q.concurrency,
        running: q.running.load(Ordering::SeqCst),
        paused: q.paused.load(Ordering::SeqCst),
        heavy: q.heavy,
        held: if q.heavy { inner.pressure.held() } else { None },
    }
}

/// Acts on what the store decided inside its writes: a job queued because its last
/// dependency ended wakes its queue's dispatcher, and a job the store cancelled while
/// this engine runs it (a unique key replaced it) is stopped. Wakes on events only.
pub(super) async fn react(inner: Arc<Inner>, mut rx: broadcast::Receiver<Arc<baton_core::Event>>) {
    loop {
        let event = tokio::select! {
            e = rx.recv() => e,
            _ = inner.shutdown.cancelled() => return,
        };
        match event {
            Ok(e) => match e.kind {
                EventKind::Queued => {
                    if let Some(queue) = e.data.get("queue").and_then(Value::as_str) {
                        inner.wake_queue(queue);
                    }
                }
                EventKind::Cancelled => {
                    let Some(id) = e.job_id.as_deref() else {
                        continue;
                    };
                    let kill = {
                        let running = inner.running.lock().unwrap_or_else(|p| p.into_inner());
                        running.get(id).map(|h| h.kill.clone())
                    };
                    if let Some(kill) = kill {
                        tracing::info!(job_id = %id, reason = %e.data["reason"], "the job was cancelled in the store; stopping it");
                        kill.cancel();
                    }
                }
                _ => {}
            },
            // Missed events may have queued jobs anywhere: every dispatcher looks.
            Err(broadcast::error::RecvError::Lagged(_)) => {
                for name in inner.queues.keys() {
                    inner.wake_queue(name);
                }
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}
