//! Dependencies: what submit decides about a new job's edges, and what a job's end (or
//! its return from an end) does to the jobs that wait for it.
//!
//! An edge `child -> parent` waits (`status` 0) until the parent ends; then it is met
//! (1) or can never be (2). An awaiting job counts its waiting edges in
//! `deps_pending`. Whatever ends a job goes through `ops::transition`, which calls
//! [`after_transition`] in the same transaction: the write that meets a dependent's
//! last edge queues it, and a crash can never leave a met dependent waiting.
//!
//! Across servers, the dependencies of one job may end in concurrent transactions. Each
//! locks the dependent's row (`FOR UPDATE`) before it reads and lowers the count, so
//! they take turns and exactly one sees the count reach its end. A submit locks the
//! rows of the jobs its new job depends on (`FOR KEY SHARE`, which a transition's
//! `FOR UPDATE` waits for): a dependency that ends meanwhile either finds the new edges
//! or is seen ended by the submit. Cancellation runs down the graph through a work list
//! ([`Work::settling`]) rather than recursion, so a chain of any length cannot overflow
//! the stack.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;

use baton_core::{Condition, EdgeStatus, ErrorInfo, EventKind, Job, Millis, NewJob, State, state};
use serde_json::json;

use crate::Db;
use crate::ops::{self, Resume};
use crate::rows::{JobRow, get_job};
use crate::work::{Ending, Work};
use baton_store::{Changes, Error, Result, Transition};

/// What submit decided about a new job's dependencies before storing it.
#[derive(Default)]
pub struct Prepared {
    /// The state to create the job in, decided by its dependencies.
    pub state: Option<State>,
    /// Its waiting edges, stored with it.
    pub pending: i32,
    /// Its edges: the dependency's row key, the condition, the edge's status.
    edges: Vec<(i64, Condition, EdgeStatus)>,
    /// A dependency that ended so that the condition can never hold.
    broken: Option<(String, Condition, State)>,
}

/// The ids of the jobs a job depends on, oldest first, as a column of a query that
/// reads the table `jobs` (unaliased).
pub const DEPENDS_ON: &str = "ARRAY(SELECT p.id FROM edges e JOIN jobs p ON p.key = e.parent \
    WHERE e.child = jobs.key ORDER BY e.parent)";

/// Before a new job is stored: each dependency must exist; one that ended already is
/// decided now.
pub async fn prepare(w: &mut Work<'_>, new: &NewJob) -> Result<Prepared> {
    if new.depends_on.is_empty() {
        return Ok(Prepared::default());
    }
    let ids: Vec<&str> = new.depends_on.iter().map(|d| d.job.as_str()).collect();
    let rows =
        w.c.query(
            "SELECT id, key, state FROM jobs WHERE id = ANY($1) FOR KEY SHARE",
            &[&ids],
        )
        .await
        .db()?;
    let mut found: HashMap<String, (i64, State)> = HashMap::with_capacity(rows.len());
    for r in &rows {
        found.insert(r.get(0), (r.get(1), crate::rows::state(r.get(2))?));
    }
    let mut p = Prepared::default();
    for d in &new.depends_on {
        let Some(&(key, ended)) = found.get(&d.job) else {
            // Submit answers an existing client id with its job, as for any job (its
            // insert finds it); a workflow's job id taken elsewhere is refused there.
            if new.workflow_id.is_none()
                && w.c
                    .query_opt("SELECT 1 FROM jobs WHERE id = $1", &[&new.id.as_str()])
                    .await
                    .db()?
                    .is_some()
            {
                return Ok(Prepared::default());
            }
            return Err(Error::UnknownDependency {
                id: new.id.to_string(),
                dependency: d.job.clone(),
            });
        };
        let status = EdgeStatus::of(d.on, ended);
        match status {
            EdgeStatus::Waiting => p.pending += 1,
            EdgeStatus::Never if p.broken.is_none() => {
                p.broken = Some((d.job.clone(), d.on, ended));
            }
            _ => {}
        }
        p.edges.push((key, d.on, status));
    }
    p.state = Some(if p.pending == 0 && p.broken.is_none() {
        State::Queued
    } else {
        State::Awaiting
    });
    Ok(p)
}

/// The edges of a submit's new jobs, written together in one statement: before
/// anything in the submit reads edges (a transition, a job read back) and at its end.
#[derive(Default)]
pub struct NewEdges {
    child: Vec<i64>,
    parent: Vec<i64>,
    cond: Vec<&'static str>,
    status: Vec<i16>,
}

impl NewEdges {
    /// The edges of the new job with row key `key`.
    pub fn add(&mut self, key: i64, p: &Prepared) {
        for (parent, on, status) in &p.edges {
            self.child.push(key);
            self.parent.push(*parent);
            self.cond.push(on.as_str());
            self.status.push(status.as_i64() as i16);
        }
    }

    pub async fn write(&mut self, w: &mut Work<'_>) -> Result<()> {
        if self.child.is_empty() {
            return Ok(());
        }
        w.c.execute(
            "INSERT INTO edges (child, parent, cond, status) \
             SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::smallint[])",
            &[&self.child, &self.parent, &self.cond, &self.status],
        )
        .await
        .db()?;
        *self = NewEdges::default();
        Ok(())
    }
}

/// After the job's `job.submitted` event: cancels the job at once when a dependency
/// ended against its condition, and answers it as it is now. (It has no dependents
/// yet: the edges still to write do not matter to its cancellation.)
pub async fn settle_new(w: &mut Work<'_>, new: &NewJob, p: &Prepared, job: &mut Job) -> Result<()> {
    let Some((dependency, on, ended)) = &p.broken else {
        return Ok(());
    };
    cancel_upstream(w, new.id.as_str(), dependency, *on, *ended, new.created_at).await?;
    if let Some(row) = get_job(&*w.c, new.id.as_str()).await? {
        *job = row.job;
    }
    Ok(())
}

/// Called by `ops::transition` after a state change of a job that has dependents: a job
/// that ended settles its waiting dependents; a job that left an end (a retry) makes
/// the dependents that still await wait for it again.
pub async fn after_transition(
    w: &mut Work<'_>,
    key: i64,
    id: &str,
    from: State,
    to: State,
    now: Millis,
) -> Result<()> {
    if from.is_terminal() == to.is_terminal() {
        return Ok(());
    }
    let ending = Ending {
        key,
        id: id.to_owned(),
        to,
        now,
    };
    if let Some(list) = &mut w.settling {
        list.push(ending);
        return Ok(());
    }
    w.settling = Some(vec![ending]);
    let result = loop {
        let Some(next) = w.settling.as_mut().and_then(Vec::pop) else {
            break Ok(());
        };
        if let Err(e) = settle(w, next).await {
            break Err(e);
        }
    };
    w.settling = None;
    result
}

async fn settle(w: &mut Work<'_>, s: Ending) -> Result<()> {
    if !s.to.is_terminal() {
        w.c.execute(
            "WITH reopened AS ( \
               UPDATE edges SET status = 0 WHERE parent = $1 AND status <> 0 AND EXISTS \
               (SELECT 1 FROM jobs WHERE key = edges.child AND state = 'awaiting') \
               RETURNING child) \
             UPDATE jobs SET deps_pending = deps_pending + 1 FROM reopened \
             WHERE jobs.key = reopened.child",
            &[&s.key],
        )
        .await
        .db()?;
        return Ok(());
    }
    let met_if = |yes: bool| {
        if yes {
            EdgeStatus::Met
        } else {
            EdgeStatus::Never
        }
    };
    let (met_completed, met_failed) = (
        met_if(s.to == State::Completed),
        met_if(s.to == State::Failed),
    );
    // Only this write settles the job's edges: its row is locked by the transition.
    let rows =
        w.c.query(
            "WITH decided AS ( \
               UPDATE edges SET status = CASE cond WHEN 'completed' THEN $2::smallint \
                 WHEN 'failed' THEN $3::smallint ELSE 1 END \
               WHERE parent = $1 AND status = 0 RETURNING child, cond) \
             SELECT d.child, d.cond, j.workflow_id, j.id FROM decided d \
             JOIN jobs j ON j.key = d.child \
             ORDER BY d.child",
            &[
                &s.key,
                &(met_completed.as_i64() as i16),
                &(met_failed.as_i64() as i16),
            ],
        )
        .await
        .db()?;
    let mut paused: HashMap<String, bool> = HashMap::new();
    for r in &rows {
        let child: i64 = r.get(0);
        let cond: &str = r.get(1);
        let workflow: Option<String> = r.get(2);
        let id: &str = r.get(3);
        let on = Condition::parse(cond).ok_or_else(|| {
            Error::Internal(format!("stored dependency condition {cond:?} is not known"))
        })?;
        let status = match on {
            Condition::Completed => met_completed,
            Condition::Failed => met_failed,
            Condition::Finished => EdgeStatus::Met,
        };
        if status != EdgeStatus::Met {
            // The cancelling transition locks the job and leaves it unless it awaits.
            match cancel_upstream(w, id, &s.id, on, s.to, s.now).await {
                Ok(()) | Err(Error::Conflict { .. }) => {}
                Err(e) => return Err(e),
            }
            continue;
        }
        // The workflow's row is read under a share lock (before the job's, in the order
        // a workflow action takes them): a pause being written waits for this write or
        // is seen by it.
        let held = match &workflow {
            Some(wf) => match paused.get(wf) {
                Some(held) => *held,
                None => {
                    let held: bool =
                        w.c.query_opt(
                            "SELECT paused FROM workflows WHERE id = $1 FOR SHARE",
                            &[wf],
                        )
                        .await
                        .db()?
                        .is_some_and(|r| r.get(0));
                    paused.insert(wf.clone(), held);
                    held
                }
            },
            None => false,
        };
        // Locked before its count is read: dependencies of this job that end in
        // concurrent writes take turns here, and one of them sees the last edge met.
        let d =
            w.c.query_one(
                "SELECT state, deps_pending, queue, event_seq FROM jobs WHERE key = $1 FOR UPDATE",
                &[&child],
            )
            .await
            .db()?;
        if crate::rows::state(d.get(0))? != State::Awaiting {
            continue;
        }
        let pending: i32 = d.get(1);
        if pending > 1 || (pending == 1 && held) {
            // Not its last edge; or its last, but its workflow is paused: it stays
            // awaiting with nothing to wait for, and the resume queues it.
            w.c.execute(
                "UPDATE jobs SET deps_pending = deps_pending - 1 WHERE key = $1",
                &[&child],
            )
            .await
            .db()?;
        } else if pending == 1 {
            let queue: String = d.get(2);
            let event_seq: i64 = d.get(3);
            queue_dependent(w, child, id, &queue, workflow, event_seq, s.now).await?;
        }
    }
    Ok(())
}

/// Queues an awaiting job whose last edge was met: what `transition` would do, from
/// what [`settle`] read already. `deps_pending` counts only while the job awaits: it
/// is left as it is (a workflow pause that holds the job again resets it).
async fn queue_dependent(
    w: &mut Work<'_>,
    key: i64,
    id: &str,
    queue: &str,
    workflow: Option<String>,
    event_seq: i64,
    now: Millis,
) -> Result<()> {
    state::check(Some(State::Awaiting), State::Queued).map_err(|source| Error::Transition {
        id: id.to_owned(),
        source,
    })?;
    let event_seq = event_seq + 1;
    w.c.execute(
        "UPDATE jobs SET state = 'queued', updated_at = $2, event_seq = $3 WHERE key = $1",
        &[&key, &now, &event_seq],
    )
    .await
    .db()?;
    let mut data = json!({
        "reason": "dependencies",
        "queue": queue,
        "state": State::Queued,
        "from": State::Awaiting,
    });
    if let Some(wf) = workflow {
        data["workflow"] = json!(wf);
    }
    w.moved(queue, Some(State::Awaiting), State::Queued, now);
    w.event(
        Some((id, key)),
        event_seq as u64,
        EventKind::Queued,
        now,
        data,
    );
    Ok(())
}

/// Cancels an awaiting job whose dependency ended so that its condition can never
/// hold; its own dependents follow through [`after_transition`].
async fn cancel_upstream(
    w: &mut Work<'_>,
    id: &str,
    dependency: &str,
    on: Condition,
    ended: State,
    now: Millis,
) -> Result<()> {
    let wanted = match on {
        Condition::Completed => "complete",
        Condition::Failed => "fail",
        Condition::Finished => "end",
    };
    let e = ErrorInfo::new(
        "upstream_failed",
        format!("dependency {dependency:?} ended {ended}; this job runs only if it {wanted}s"),
    );
    let t = Transition::new(id, State::Cancelled, EventKind::Cancelled, now)
        .expect(&[State::Awaiting])
        .data(json!({"reason": "upstream_failed", "dependency": dependency, "on": on}))
        .changes(Changes {
            error: Some(e),
            ..Changes::default()
        });
    boxed_transition(w, &t).await?;
    Ok(())
}

type Boxed<'a, T> = Pin<Box<dyn Future<Output = Result<T>> + Send + 'a>>;

/// `ops::transition` behind a box: the transition of a dependent settles its own
/// dependents, which leads back here (once: the work list keeps it from going deeper),
/// and an async call cycle needs a box to have a size.
fn boxed_transition<'a>(w: &'a mut Work<'_>, t: &'a Transition) -> Boxed<'a, Option<JobRow>> {
    Box::pin(ops::transition(w, t, Resume::No, false))
}
