//! Dependencies, unique keys, workflows and paused queues, inside the writer.
//!
//! An edge `child -> parent` waits (`status` 0) until the parent ends; then it is met
//! (1) or can never be (2). A job counts its waiting edges in `deps_pending`. Whatever
//! ends a job (a worker's outcome, a user's cancel, crash recovery) goes through
//! `transition`, which calls [`Writer::after_transition`] in the same transaction: the
//! job that met a dependent's last edge queues it in that write, so a dependent is
//! queued exactly once however many of its dependencies end together, and a crash can
//! never leave a met dependent waiting. Cancellation runs down the graph through a work
//! list rather than recursion, so a chain of any length cannot overflow the stack.
//! Settling a job costs a read of its dependents, one update of their edges and one
//! single-row update per dependent whose edge was met (see [`Writer::settle`]).

use baton_core::{
    Condition, EdgeStatus, ErrorInfo, EventKind, Job, Millis, NewJob, State, UniquePolicy,
    WorkflowState, state,
};
use rusqlite::{OptionalExtension, params};
use serde_json::{Value, json};

use super::{MultiInsert, Resume, Writer};
use crate::sqlite::codes::{condition_code, condition_of, parse_state};
use crate::sqlite::rows::{self, get_job};
use crate::{
    Changes, Error, NewWorkflow, Result, SubmittedWorkflow, Transition, WorkflowAction,
    WorkflowChange,
};

/// A job whose end (or return from an end) its dependents have still to hear of.
pub(crate) struct Settle {
    key: i64,
    id: String,
    to: State,
    now: Millis,
}

/// A dependent whose edge waits for a job that just ended, as [`Writer::settle`]
/// reads it.
struct Dependent {
    key: i64,
    cond: i64,
    state: String,
    pending: i64,
    id: String,
    queue: String,
    workflow: Option<String>,
    event_seq: i64,
    paused: bool,
}

/// What submit decided about a new job before storing it.
#[derive(Default)]
pub(crate) struct Prepared {
    /// Answer with this job instead of storing the new one (`return_existing`).
    pub existing: Option<Box<Job>>,
    /// The state to create the job in, decided by its dependencies.
    pub state: Option<State>,
    /// Whether the job needs more than the plain insert: edges, a unique key, a
    /// workflow.
    extra: bool,
    /// Its edges: the dependency's key and id, the condition, the edge's status.
    edges: Vec<(i64, String, Condition, EdgeStatus)>,
    pending: i64,
    /// A dependency that ended so that the condition can never hold.
    broken: Option<(String, Condition, State)>,
}

impl Prepared {
    /// The job's waiting edges, stored with it.
    pub(crate) fn pending(&self) -> i64 {
        self.pending
    }
}

/// `INSERT INTO deps`, up to 64 rows a statement (see [`Writer::write_edges`]).
fn edge_insert() -> &'static MultiInsert {
    static SQL: std::sync::OnceLock<MultiInsert> = std::sync::OnceLock::new();
    SQL.get_or_init(|| {
        MultiInsert::new(
            "INSERT OR FAIL INTO deps (child, parent, cond, status)",
            "(?, ?, ?, ?)",
            64,
        )
    })
}

const ACTIVE: &str = "state NOT IN ('completed', 'failed', 'cancelled', 'deleted')";

impl Writer {
    /// Before a new job is stored: resolves its dependencies (each must exist; one
    /// that ended already is decided now) and its unique key.
    pub(super) fn prepare_new(&mut self, new: &NewJob) -> Result<Prepared> {
        if new.depends_on.is_empty() && new.unique_key.is_none() && new.workflow_id.is_none() {
            return Ok(Prepared::default());
        }
        // Submit answers an existing client id with its job, as for any job; a
        // workflow's job finds out at its insert (which refuses a taken id), and saves
        // this read.
        if new.workflow_id.is_none() {
            let exists = self
                .conn
                .prepare_cached("SELECT 1 FROM jobs WHERE id = ?1")?
                .query_row([new.id.as_str()], |_| Ok(()))
                .optional()?
                .is_some();
            if exists {
                return Ok(Prepared::default());
            }
        }
        let mut p = Prepared {
            extra: true,
            ..Prepared::default()
        };
        if let Some(key) = &new.unique_key
            && let Some(holder) = self.unique_holder(key)?
        {
            match new.unique_policy {
                UniquePolicy::Reject => {
                    return Err(Error::UniqueHeld {
                        key: key.clone(),
                        holder: holder.id,
                        state: holder.state,
                    });
                }
                UniquePolicy::ReturnExisting => {
                    p.existing = Some(Box::new(holder));
                    return Ok(p);
                }
                UniquePolicy::Replace => {
                    let e = ErrorInfo::new(
                        "cancelled",
                        format!(
                            "replaced by job {:?} with the same unique key",
                            new.id.as_str()
                        ),
                    );
                    let t = Transition::new(
                        holder.id.clone(),
                        State::Cancelled,
                        EventKind::Cancelled,
                        new.created_at,
                    )
                    .data(json!({"reason": "replaced", "replaced_by": new.id.as_str()}))
                    .changes(Changes {
                        error: Some(e),
                        ..Changes::default()
                    });
                    self.transition(&t, Resume::No, false)?;
                }
            }
        }
        for d in &new.depends_on {
            let parent = match self.fresh.get(&d.job) {
                Some(found) => Some(*found),
                None => self
                    .conn
                    .prepare_cached("SELECT seq, state FROM jobs WHERE id = ?1")?
                    .query_row([&d.job], |r| {
                        let state: String = r.get(1)?;
                        Ok((r.get(0)?, parse_state(&state)?))
                    })
                    .optional()?,
            };
            let Some((key, state)) = parent else {
                return Err(Error::UnknownDependency {
                    id: new.id.to_string(),
                    dependency: d.job.clone(),
                });
            };
            let status = EdgeStatus::of(d.on, state);
            match status {
                EdgeStatus::Waiting => p.pending += 1,
                EdgeStatus::Never if p.broken.is_none() => {
                    p.broken = Some((d.job.clone(), d.on, state));
                }
                _ => {}
            }
            p.edges.push((key, d.job.clone(), d.on, status));
        }
        if !new.depends_on.is_empty() {
            p.state = Some(if p.pending == 0 && p.broken.is_none() {
                State::Queued
            } else {
                State::Awaiting
            });
        }
        Ok(p)
    }

    /// After the insert (which stored the pending count, unique key and workflow):
    /// the job's edges.
    pub(super) fn store_links(&mut self, key: i64, new: &NewJob, p: &Prepared) -> Result<()> {
        self.fresh.insert(new.id.to_string(), (key, new.state));
        if p.edges.is_empty() {
            return Ok(());
        }
        // Set before the edges are: a rolled-back batch leaves it set, which only
        // costs a look.
        self.has_edges = Some(true);
        for (parent, _, on, status) in &p.edges {
            self.new_edges
                .push([key, *parent, condition_code(*on), status.as_i64()]);
        }
        Ok(())
    }

    /// Inserts the edges stored by [`Self::store_links`] so far, many rows a
    /// statement. Called before anything reads edges while a submit is applied (a
    /// transition, a job read back) and at its end.
    pub(super) fn write_edges(&mut self) -> Result<()> {
        let edges = std::mem::take(&mut self.new_edges);
        let mut at = 0;
        let result = (|| -> Result<()> {
            while at < edges.len() {
                let (n, sql) = edge_insert().next(at, edges.len());
                let mut stmt = self.conn.prepare_cached(sql)?;
                for (i, value) in edges[at..at + n].iter().flatten().enumerate() {
                    stmt.raw_bind_parameter(i + 1, value)?;
                }
                stmt.raw_execute()?;
                at += n;
            }
            Ok(())
        })();
        // The buffer keeps its room for the next submit.
        self.new_edges = edges;
        self.new_edges.clear();
        result
    }

    /// A job as stored, edges included (see [`Self::write_edges`]).
    pub(super) fn job_row(&mut self, id: &str) -> Result<Option<rows::JobRow>> {
        self.write_edges()?;
        get_job(&self.conn, id)
    }

    /// After the job's `job.submitted` event: fills in what the plain insert does not
    /// know, and cancels the job at once when a dependency ended against its condition.
    pub(super) fn settle_new(&mut self, new: &NewJob, p: &Prepared, job: &mut Job) -> Result<()> {
        if !p.extra {
            return Ok(());
        }
        job.depends_on = new.depends_on.iter().map(|d| d.job.clone()).collect();
        job.workflow_id = new.workflow_id.clone();
        if let Some((dependency, on, state)) = &p.broken {
            self.cancel_upstream(new.id.as_str(), dependency, *on, *state, new.created_at)?;
            if let Some(row) = self.job_row(new.id.as_str())? {
                *job = row.job;
            }
        }
        Ok(())
    }

    /// Called by `transition` after every state change: a job that ended settles its
    /// waiting dependents; a job that left an end (a retry) makes the dependents that
    /// still wait wait for it again.
    pub(super) fn after_transition(
        &mut self,
        key: i64,
        id: &str,
        from: State,
        to: State,
        now: Millis,
    ) -> Result<()> {
        if let Some(fresh) = self.fresh.get_mut(id) {
            fresh.1 = to;
        }
        if from.is_terminal() == to.is_terminal() || !self.has_edges()? {
            return Ok(());
        }
        let settle = Settle {
            key,
            id: id.to_owned(),
            to,
            now,
        };
        if let Some(queue) = &mut self.settling {
            queue.push(settle);
            return Ok(());
        }
        self.settling = Some(vec![settle]);
        let result = loop {
            let Some(next) = self.settling.as_mut().and_then(Vec::pop) else {
                break Ok(());
            };
            if let Err(e) = self.settle(next) {
                break Err(e);
            }
        };
        self.settling = None;
        result
    }

    fn settle(&mut self, s: Settle) -> Result<()> {
        if !s.to.is_terminal() {
            let children: Vec<i64> = {
                let mut stmt = self.conn.prepare_cached(
                    "UPDATE deps SET status = 0 WHERE parent = ?1 AND status != 0 AND EXISTS \
                     (SELECT 1 FROM jobs WHERE seq = deps.child AND state = 'awaiting') \
                     RETURNING child",
                )?;
                stmt.query_map([s.key], |r| r.get(0))?
                    .collect::<rusqlite::Result<_>>()?
            };
            let mut bump = self
                .conn
                .prepare_cached("UPDATE jobs SET deps_pending = deps_pending + 1 WHERE seq = ?1")?;
            for child in children {
                bump.execute([child])?;
            }
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
        // One read finds the waiting edges with all their dependents' writes need: the
        // dependent's state, count, event sequence and whether its workflow is paused.
        // Then one update decides the edges, and each dependent whose edge was met
        // costs one single-row update. (Set-based updates of the dependents were
        // slower: SQLite builds a temporary table for `IN (...)` and for `RETURNING`.)
        // `+?1`: in a join, SQLite's planner notes `parent = ?1` as a value that may
        // change the plan, and a cached statement whose bindings are cleared is then
        // compiled again on every use; the unary plus hides the parameter from it and
        // still lets the index on `parent` serve.
        let edges: Vec<Dependent> = {
            let mut stmt = self.conn.prepare_cached(
                "SELECT d.child, d.cond, j.state, j.deps_pending, j.id, j.queue, j.workflow_id, \
                 j.event_seq, COALESCE(w.paused, 0) \
                 FROM deps d JOIN jobs j ON j.seq = d.child \
                 LEFT JOIN workflows w ON w.id = j.workflow_id \
                 WHERE d.parent = +?1 AND d.status = 0 ORDER BY d.child",
            )?;
            stmt.query_map([s.key], |r| {
                Ok(Dependent {
                    key: r.get(0)?,
                    cond: r.get(1)?,
                    state: r.get(2)?,
                    pending: r.get(3)?,
                    id: r.get(4)?,
                    queue: r.get(5)?,
                    workflow: r.get(6)?,
                    event_seq: r.get(7)?,
                    paused: r.get(8)?,
                })
            })?
            .collect::<rusqlite::Result<_>>()?
        };
        if edges.is_empty() {
            return Ok(());
        }
        // A statement that fails part way leaves the rows it changed to the savepoint
        // around the write, which undoes all of it: `OR FAIL` spares SQLite a journal
        // of its own for the statement.
        self.conn
            .prepare_cached(
                "UPDATE OR FAIL deps SET status = CASE cond WHEN 0 THEN ?2 WHEN 1 THEN ?3 ELSE 1 END \
                 WHERE parent = ?1 AND status = 0",
            )?
            .execute(params![s.key, met_completed.as_i64(), met_failed.as_i64()])?;
        for d in edges {
            let on = condition_of(d.cond)?;
            let status = match on {
                Condition::Completed => met_completed,
                Condition::Failed => met_failed,
                Condition::Finished => EdgeStatus::Met,
            };
            if parse_state(&d.state)? != State::Awaiting {
                continue;
            }
            if status != EdgeStatus::Met {
                self.dependent_fault(&d.id)?;
                self.cancel_upstream(&d.id, &s.id, on, s.to, s.now)?;
            } else if d.pending > 1 || (d.pending == 1 && d.paused) {
                // Not its last edge; or its last, but its workflow is paused: it stays
                // awaiting with nothing to wait for, and the release queues it.
                self.conn
                    .prepare_cached(
                        "UPDATE jobs SET deps_pending = deps_pending - 1 WHERE seq = ?1",
                    )?
                    .execute([d.key])?;
            } else if d.pending == 1 {
                self.dependent_fault(&d.id)?;
                self.queue_dependent(d, s.now)?;
            }
        }
        Ok(())
    }

    /// Queues an awaiting job whose last edge was met: what `transition` would do,
    /// from what [`Self::settle`] read already. `deps_pending` counts only while the
    /// job awaits: it is left at 1 (a workflow pause that holds it again resets it).
    fn queue_dependent(&mut self, d: Dependent, now: Millis) -> Result<()> {
        state::check(Some(State::Awaiting), State::Queued).map_err(|source| Error::Transition {
            id: d.id.clone(),
            source,
        })?;
        let event_seq = d.event_seq + 1;
        self.conn
            .prepare_cached(
                "UPDATE jobs SET state = 'queued', updated_at = ?2, event_seq = ?3 WHERE seq = ?1",
            )?
            .execute(params![d.key, now, event_seq])?;
        if let Some(fresh) = self.fresh.get_mut(&d.id) {
            fresh.1 = State::Queued;
        }
        let mut data = json!({"reason": "dependencies", "queue": d.queue});
        if let Value::Object(map) = &mut data {
            map.insert("state".into(), json!(State::Queued));
            map.insert("from".into(), json!(State::Awaiting));
            if let Some(w) = d.workflow {
                map.insert("workflow".into(), json!(w));
            }
        }
        self.moved(d.queue, Some(State::Awaiting), State::Queued, now);
        self.event(
            Some((&d.id, d.key)),
            event_seq as u64,
            EventKind::Queued,
            now,
            data,
        )
    }

    /// Cancels an awaiting job whose dependency ended so that its condition can never
    /// hold; its own dependents follow through `after_transition`.
    fn cancel_upstream(
        &mut self,
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
            .data(json!({"reason": "upstream_failed", "dependency": dependency, "on": on}))
            .changes(Changes {
                error: Some(e),
                ..Changes::default()
            });
        self.transition(&t, Resume::No, false)?;
        Ok(())
    }

    /// A fault injected by a test (feature `faults`) in the middle of settling.
    #[cfg(feature = "faults")]
    fn dependent_fault(&self, id: &str) -> Result<()> {
        if self.faults.dependent_fails() {
            return Err(Error::Conflict {
                id: id.to_owned(),
                actual: State::Awaiting,
                expected: "a dependent that does not fail (a fault injected by a test)".into(),
            });
        }
        Ok(())
    }

    #[cfg(not(feature = "faults"))]
    #[inline(always)]
    fn dependent_fault(&self, _id: &str) -> Result<()> {
        Ok(())
    }

    pub(super) fn has_edges(&mut self) -> Result<bool> {
        if let Some(known) = self.has_edges {
            return Ok(known);
        }
        let any: bool = self
            .conn
            .prepare_cached("SELECT EXISTS (SELECT 1 FROM deps)")?
            .query_row([], |r| r.get(0))?;
        self.has_edges = Some(any);
        Ok(any)
    }

    fn unique_holder(&mut self, key: &str) -> Result<Option<Job>> {
        let holder: Option<String> = self
            .conn
            .prepare_cached(&format!(
                "SELECT id FROM jobs WHERE unique_key = ?1 AND {ACTIVE}"
            ))?
            .query_row([key], |r| r.get(0))
            .optional()?;
        match holder {
            Some(id) => Ok(self.job_row(&id)?.map(|r| r.job)),
            None => Ok(None),
        }
    }

    pub(super) fn submit_workflow(&mut self, wf: &NewWorkflow) -> Result<SubmittedWorkflow> {
        let exists = self
            .conn
            .prepare_cached("SELECT 1 FROM workflows WHERE id = ?1")?
            .query_row([&wf.id], |_| Ok(()))
            .optional()?
            .is_some();
        if exists {
            let (names, jobs) = workflow_jobs(&self.conn, &wf.id)?;
            return Ok(SubmittedWorkflow {
                id: wf.id.clone(),
                created: false,
                names,
                jobs,
            });
        }
        self.conn
            .prepare_cached(
                "INSERT INTO workflows (id, paused, created_at, updated_at) VALUES (?1, 0, ?2, ?2)",
            )?
            .execute(params![wf.id, wf.now])?;
        let out = self.submit(&wf.jobs, None)?;
        let names = wf
            .jobs
            .iter()
            .filter_map(|j| Some((j.workflow_name.clone()?, j.id.to_string())))
            .collect();
        Ok(SubmittedWorkflow {
            id: wf.id.clone(),
            created: true,
            names,
            jobs: out.into_iter().map(|s| s.job).collect(),
        })
    }

    pub(super) fn control_workflow(
        &mut self,
        id: &str,
        action: WorkflowAction,
        now: Millis,
    ) -> Result<WorkflowChange> {
        let paused: Option<bool> = self
            .conn
            .prepare_cached("SELECT paused FROM workflows WHERE id = ?1")?
            .query_row([id], |r| r.get(0))
            .optional()?;
        let Some(paused) = paused else {
            return Err(Error::WorkflowNotFound(id.to_owned()));
        };
        // Every job of the workflow, parents before children (insertion order).
        let jobs: Vec<(i64, String, State, String, i64)> = {
            let mut stmt = self.conn.prepare_cached(
                "SELECT seq, id, state, queue, deps_pending FROM jobs WHERE workflow_id = ?1 \
                 ORDER BY seq",
            )?;
            stmt.query_map([id], |r| {
                let state: String = r.get(2)?;
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    parse_state(&state)?,
                    r.get(3)?,
                    r.get(4)?,
                ))
            })?
            .collect::<rusqlite::Result<_>>()?
        };
        let state = WorkflowState::derive(paused, jobs.iter().map(|j| j.2));
        let illegal = |reason: String| Error::WorkflowIllegal {
            id: id.to_owned(),
            action: action.as_str(),
            reason,
        };
        let mut change = WorkflowChange::default();
        let executing = |states: &[State]| -> Vec<(String, State)> {
            jobs.iter()
                .filter(|j| states.contains(&j.2))
                .map(|j| (j.1.clone(), j.2))
                .collect()
        };
        match action {
            WorkflowAction::Hold => {
                if paused {
                    return Err(illegal("it is paused already".into()));
                }
                if state.is_terminal() {
                    return Err(illegal(format!("it is {state}")));
                }
                self.set_workflow_paused(id, true, now)?;
                for (key, job, s, _, _) in &jobs {
                    if *s == State::Queued {
                        // Its dependencies are met: nothing to count until released.
                        self.conn
                            .prepare_cached("UPDATE jobs SET deps_pending = 0 WHERE seq = ?1")?
                            .execute([key])?;
                        let t = Transition::new(job, State::Awaiting, EventKind::Awaiting, now)
                            .expect(&[State::Queued])
                            .data(json!({"reason": "workflow_paused", "workflow_id": id}));
                        self.transition(&t, Resume::No, false)?;
                    }
                }
                change.executing = executing(&[State::Running]);
            }
            WorkflowAction::Release => {
                if !paused {
                    return Err(illegal("it is not paused".into()));
                }
                self.set_workflow_paused(id, false, now)?;
                for (_, job, s, queue, pending) in &jobs {
                    if *s == State::Awaiting && *pending <= 0 {
                        let t = Transition::new(job, State::Queued, EventKind::Queued, now)
                            .expect(&[State::Awaiting])
                            .data(json!({"reason": "workflow_resumed", "queue": queue}));
                        self.transition(&t, Resume::No, false)?;
                        if !change.queues.contains(queue) {
                            change.queues.push(queue.clone());
                        }
                    }
                }
                change.executing = executing(&[State::Paused]);
            }
            WorkflowAction::Cancel => {
                if state.is_terminal() {
                    return Err(illegal(format!("it is {state}")));
                }
                let waiting = [
                    State::Awaiting,
                    State::Queued,
                    State::Scheduled,
                    State::Crashed,
                ];
                // Children first, so that each job says a user cancelled it rather
                // than that its dependency did.
                for (_, job, s, _, _) in jobs.iter().rev() {
                    if !waiting.contains(s) {
                        continue;
                    }
                    let t = Transition::new(job, State::Cancelled, EventKind::Cancelled, now)
                        .expect(&waiting)
                        .data(json!({"reason": "cancelled", "workflow_id": id}))
                        .changes(Changes {
                            error: Some(ErrorInfo::new("cancelled", "cancelled by a user")),
                            ..Changes::default()
                        });
                    match self.transition(&t, Resume::No, false) {
                        Ok(_) | Err(Error::Conflict { .. }) => {}
                        Err(e) => return Err(e),
                    }
                }
                change.executing = executing(&[State::Running, State::Paused, State::Stopping]);
            }
            WorkflowAction::Retry { from_checkpoint } => {
                let retried: std::collections::HashSet<i64> = jobs
                    .iter()
                    .filter(|j| matches!(j.2, State::Failed | State::Cancelled))
                    .map(|j| j.0)
                    .collect();
                if retried.is_empty() {
                    return Err(illegal("it has no failed or cancelled jobs".into()));
                }
                let mut skipped = std::collections::HashSet::new();
                for (key, job, s, queue, _) in &jobs {
                    if !retried.contains(key) {
                        continue;
                    }
                    match self.retry_in_workflow(
                        *key,
                        job,
                        *s,
                        &retried,
                        &skipped,
                        paused,
                        from_checkpoint,
                        now,
                    )? {
                        Some(State::Queued) => {
                            if !change.queues.contains(queue) {
                                change.queues.push(queue.clone());
                            }
                        }
                        Some(_) => {}
                        None => {
                            skipped.insert(*key);
                        }
                    }
                }
            }
        }
        Ok(change)
    }

    /// Retries one failed or cancelled job of a workflow: its edges are decided again
    /// (an edge to a job retried with it waits), and it is queued, or awaits what it
    /// still waits for. `None`: one of its dependencies ended against its condition and
    /// is not retried, so it cannot run and stays as it is.
    #[allow(clippy::too_many_arguments)]
    fn retry_in_workflow(
        &mut self,
        key: i64,
        id: &str,
        state: State,
        retried: &std::collections::HashSet<i64>,
        skipped: &std::collections::HashSet<i64>,
        paused: bool,
        from_checkpoint: bool,
        now: Millis,
    ) -> Result<Option<State>> {
        let edges: Vec<(i64, i64, State)> = {
            let mut stmt = self.conn.prepare_cached(
                "SELECT d.parent, d.cond, p.state FROM deps d JOIN jobs p ON p.seq = d.parent \
                 WHERE d.child = ?1",
            )?;
            stmt.query_map([key], |r| {
                let state: String = r.get(2)?;
                Ok((r.get(0)?, r.get(1)?, parse_state(&state)?))
            })?
            .collect::<rusqlite::Result<_>>()?
        };
        let mut statuses = Vec::with_capacity(edges.len());
        for (parent, cond, pstate) in &edges {
            let status = if retried.contains(parent) && !skipped.contains(parent) {
                EdgeStatus::Waiting
            } else {
                EdgeStatus::of(condition_of(*cond)?, *pstate)
            };
            if status == EdgeStatus::Never {
                return Ok(None);
            }
            statuses.push((*parent, status));
        }
        let pending = statuses
            .iter()
            .filter(|(_, s)| *s == EdgeStatus::Waiting)
            .count() as i64;
        {
            let mut update = self
                .conn
                .prepare_cached("UPDATE deps SET status = ?3 WHERE child = ?1 AND parent = ?2")?;
            for (parent, status) in &statuses {
                update.execute(params![key, parent, status.as_i64()])?;
            }
        }
        self.conn
            .prepare_cached("UPDATE jobs SET deps_pending = ?2 WHERE seq = ?1")?
            .execute(params![key, pending])?;
        let (to, event) = if pending == 0 && !paused {
            (State::Queued, EventKind::Queued)
        } else {
            (State::Awaiting, EventKind::Awaiting)
        };
        let t = Transition::new(id, to, event, now)
            .expect(&[state])
            .data(json!({"reason": "workflow_retry", "from_checkpoint": from_checkpoint}))
            .changes(Changes {
                new_attempt_budget: true,
                clear_checkpoint: !from_checkpoint,
                ..Changes::default()
            });
        self.transition(&t, Resume::No, false)?;
        Ok(Some(to))
    }

    fn set_workflow_paused(&mut self, id: &str, paused: bool, now: Millis) -> Result<()> {
        self.conn
            .prepare_cached("UPDATE workflows SET paused = ?2, updated_at = ?3 WHERE id = ?1")?
            .execute(params![id, paused, now])?;
        Ok(())
    }

    pub(super) fn set_queue_paused(
        &mut self,
        queue: &str,
        paused: bool,
        now: Millis,
    ) -> Result<bool> {
        let current: Option<bool> = self
            .conn
            .prepare_cached("SELECT paused FROM queues WHERE name = ?1")?
            .query_row([queue], |r| r.get(0))
            .optional()?;
        if current.unwrap_or(false) == paused {
            return Ok(false);
        }
        self.conn
            .prepare_cached(
                "INSERT INTO queues (name, paused, updated_at) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (name) DO UPDATE SET paused = excluded.paused, \
                 updated_at = excluded.updated_at",
            )?
            .execute(params![queue, paused, now])?;
        let kind = if paused {
            EventKind::QueuePaused
        } else {
            EventKind::QueueResumed
        };
        self.event(None, 0, kind, now, json!({"queue": queue}))?;
        Ok(true)
    }
}

/// A workflow's jobs in insertion order, and its names.
pub(crate) fn workflow_jobs(
    conn: &rusqlite::Connection,
    id: &str,
) -> Result<(std::collections::BTreeMap<String, String>, Vec<Job>)> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {}, workflow_name FROM jobs WHERE workflow_id = ?1 ORDER BY seq",
        rows::JOB_COLUMNS
    ))?;
    let n = rows::JOB_COLUMNS.split(',').count();
    let mut names = std::collections::BTreeMap::new();
    let mut jobs = Vec::new();
    let found = stmt.query_map([id], |r| {
        let row = rows::read_job(r)?;
        let name: Option<String> = r.get(n)?;
        Ok((row, name))
    })?;
    for f in found {
        let (row, name) = f?;
        if let Some(name) = name {
            names.insert(name, row.job.id.clone());
        }
        jobs.push(row.job);
    }
    Ok((names, jobs))
}
