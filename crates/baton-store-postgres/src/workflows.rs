//! Workflows: stored whole in one write, controlled as a whole in one write, and read
//! back as graphs and lists; and a job's edges seen from either end.
//!
//! A workflow action locks the workflow's row (`FOR UPDATE`) before it reads its jobs;
//! a dependency's end reads the row under a share lock before it queues a dependent
//! (see `deps.rs`), so a pause and a dependent's release never cross.

use std::collections::{BTreeMap, HashSet};

use baton_core::{
    Condition, EdgeStatus, ErrorInfo, EventKind, Job, Millis, State, WorkflowEdge, WorkflowGraph,
    WorkflowNode, WorkflowState, WorkflowSummary,
};
use serde_json::json;
use tokio_postgres::GenericClient;

use crate::Db;
use crate::deps::DEPENDS_ON;
use crate::ops::{self, Resume};
use crate::rows::{JOB_COLUMNS, read_job_with_deps, state};
use crate::work::Work;
use baton_store::{
    Changes, Error, Link, NewWorkflow, Result, SubmittedWorkflow, Transition, WorkflowAction,
    WorkflowChange, WorkflowFilter, WorkflowPage,
};

/// Which end of its edges a job is looked at from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The jobs it depends on.
    Dependencies,
    /// The jobs that depend on it.
    Dependents,
}

/// Stores a workflow and its jobs, or answers with the workflow stored under its id.
/// A job refused refuses the whole write.
pub async fn submit(w: &mut Work<'_>, wf: &NewWorkflow) -> Result<SubmittedWorkflow> {
    // A concurrent submit of the same id waits here for the other's write, then finds
    // its workflow.
    let created =
        w.c.query_opt(
            "INSERT INTO workflows (id, paused, created_at, updated_at) \
             VALUES ($1, false, $2, $2) ON CONFLICT (id) DO NOTHING RETURNING id",
            &[&wf.id, &wf.now],
        )
        .await
        .db()?
        .is_some();
    if !created {
        let (names, jobs) = jobs_of(&*w.c, &wf.id).await?;
        return Ok(SubmittedWorkflow {
            id: wf.id.clone(),
            created: false,
            names,
            jobs,
        });
    }
    let out = ops::submit(w, &wf.jobs, None).await?;
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

/// A job of a workflow as an action reads it.
struct Member {
    key: i64,
    id: String,
    state: State,
    queue: String,
    pending: i32,
}

/// Pauses, resumes, retries or cancels a whole workflow in one write.
pub async fn control(
    w: &mut Work<'_>,
    id: &str,
    action: WorkflowAction,
    now: Millis,
) -> Result<WorkflowChange> {
    let paused: Option<bool> =
        w.c.query_opt(
            "SELECT paused FROM workflows WHERE id = $1 FOR UPDATE",
            &[&id],
        )
        .await
        .db()?
        .map(|r| r.get(0));
    let Some(paused) = paused else {
        return Err(Error::WorkflowNotFound(id.to_owned()));
    };
    // Every job of the workflow, parents before children (insertion order).
    let rows =
        w.c.query(
            "SELECT key, id, state, queue, deps_pending FROM jobs WHERE workflow_id = $1 \
             ORDER BY key",
            &[&id],
        )
        .await
        .db()?;
    let jobs: Vec<Member> = rows
        .iter()
        .map(|r| {
            Ok(Member {
                key: r.get(0),
                id: r.get(1),
                state: state(r.get(2))?,
                queue: r.get(3),
                pending: r.get(4),
            })
        })
        .collect::<Result<_>>()?;
    let derived = WorkflowState::derive(paused, jobs.iter().map(|j| j.state));
    let illegal = |reason: String| Error::WorkflowIllegal {
        id: id.to_owned(),
        action: action.as_str(),
        reason,
    };
    let executing = |states: &[State]| -> Vec<(String, State)> {
        jobs.iter()
            .filter(|j| states.contains(&j.state))
            .map(|j| (j.id.clone(), j.state))
            .collect()
    };
    let mut change = WorkflowChange::default();
    match action {
        WorkflowAction::Hold => {
            if paused {
                return Err(illegal("it is paused already".into()));
            }
            if derived.is_terminal() {
                return Err(illegal(format!("it is {derived}")));
            }
            set_paused(w, id, true, now).await?;
            for j in jobs.iter().filter(|j| j.state == State::Queued) {
                // Its dependencies are met: nothing to count until released.
                w.c.execute("UPDATE jobs SET deps_pending = 0 WHERE key = $1", &[&j.key])
                    .await
                    .db()?;
                let t = Transition::new(&j.id, State::Awaiting, EventKind::Awaiting, now)
                    .expect(&[State::Queued])
                    .data(json!({"reason": "workflow_paused", "workflow_id": id}));
                ops::transition(w, &t, Resume::No, false).await?;
            }
            change.executing = executing(&[State::Running]);
        }
        WorkflowAction::Release => {
            if !paused {
                return Err(illegal("it is not paused".into()));
            }
            set_paused(w, id, false, now).await?;
            for j in &jobs {
                if j.state == State::Awaiting && j.pending <= 0 {
                    let t = Transition::new(&j.id, State::Queued, EventKind::Queued, now)
                        .expect(&[State::Awaiting])
                        .data(json!({"reason": "workflow_resumed", "queue": j.queue}));
                    ops::transition(w, &t, Resume::No, false).await?;
                    if !change.queues.contains(&j.queue) {
                        change.queues.push(j.queue.clone());
                    }
                }
            }
            change.executing = executing(&[State::Paused]);
        }
        WorkflowAction::Cancel => {
            if derived.is_terminal() {
                return Err(illegal(format!("it is {derived}")));
            }
            let waiting = [
                State::Awaiting,
                State::Queued,
                State::Scheduled,
                State::Crashed,
            ];
            // Children first, so that each job says a user cancelled it rather than
            // that its dependency did.
            for j in jobs.iter().rev().filter(|j| waiting.contains(&j.state)) {
                let t = Transition::new(&j.id, State::Cancelled, EventKind::Cancelled, now)
                    .expect(&waiting)
                    .data(json!({"reason": "cancelled", "workflow_id": id}))
                    .changes(Changes {
                        error: Some(ErrorInfo::new("cancelled", "cancelled by a user")),
                        ..Changes::default()
                    });
                match ops::transition(w, &t, Resume::No, false).await {
                    Ok(_) | Err(Error::Conflict { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
            change.executing = executing(&[State::Running, State::Paused, State::Stopping]);
        }
        WorkflowAction::Retry { from_checkpoint } => {
            let retried: HashSet<i64> = jobs
                .iter()
                .filter(|j| matches!(j.state, State::Failed | State::Cancelled))
                .map(|j| j.key)
                .collect();
            if retried.is_empty() {
                return Err(illegal("it has no failed or cancelled jobs".into()));
            }
            let mut skipped = HashSet::new();
            for j in jobs.iter().filter(|j| retried.contains(&j.key)) {
                let retry = Retry {
                    retried: &retried,
                    skipped: &skipped,
                    paused,
                    from_checkpoint,
                    now,
                };
                match retry_one(w, j, retry).await? {
                    Some(State::Queued) => {
                        if !change.queues.contains(&j.queue) {
                            change.queues.push(j.queue.clone());
                        }
                    }
                    Some(_) => {}
                    None => {
                        skipped.insert(j.key);
                    }
                }
            }
        }
    }
    Ok(change)
}

/// What a workflow retry knows while it retries its jobs one by one.
struct Retry<'a> {
    retried: &'a HashSet<i64>,
    /// Retried jobs that cannot run: edges to them are decided as they stand.
    skipped: &'a HashSet<i64>,
    paused: bool,
    from_checkpoint: bool,
    now: Millis,
}

/// Retries one failed or cancelled job of a workflow: its edges are decided again (an
/// edge to a job retried with it waits), and it is queued, or awaits what it still
/// waits for. `None`: one of its dependencies ended against its condition and is not
/// retried, so it cannot run and stays as it is.
async fn retry_one(w: &mut Work<'_>, j: &Member, r: Retry<'_>) -> Result<Option<State>> {
    // Its dependencies' rows are locked as in a submit: one that ends meanwhile finds
    // the edges as this retry leaves them, or is seen ended.
    let rows =
        w.c.query(
            "SELECT e.parent, e.cond, p.state FROM edges e JOIN jobs p ON p.key = e.parent \
             WHERE e.child = $1 FOR KEY SHARE OF p",
            &[&j.key],
        )
        .await
        .db()?;
    let mut parents = Vec::with_capacity(rows.len());
    let mut statuses = Vec::with_capacity(rows.len());
    for row in &rows {
        let parent: i64 = row.get(0);
        let status = if r.retried.contains(&parent) && !r.skipped.contains(&parent) {
            EdgeStatus::Waiting
        } else {
            EdgeStatus::of(condition(row.get(1))?, state(row.get(2))?)
        };
        if status == EdgeStatus::Never {
            return Ok(None);
        }
        parents.push(parent);
        statuses.push(status.as_i64() as i16);
    }
    let pending = statuses
        .iter()
        .filter(|s| **s == EdgeStatus::Waiting.as_i64() as i16)
        .count() as i32;
    w.c.execute(
        "UPDATE edges SET status = s FROM unnest($2::bigint[], $3::smallint[]) AS x (p, s) \
         WHERE child = $1 AND parent = x.p",
        &[&j.key, &parents, &statuses],
    )
    .await
    .db()?;
    w.c.execute(
        "UPDATE jobs SET deps_pending = $2 WHERE key = $1",
        &[&j.key, &pending],
    )
    .await
    .db()?;
    let (to, event) = if pending == 0 && !r.paused {
        (State::Queued, EventKind::Queued)
    } else {
        (State::Awaiting, EventKind::Awaiting)
    };
    let t = Transition::new(&j.id, to, event, r.now)
        .expect(&[j.state])
        .data(json!({"reason": "workflow_retry", "from_checkpoint": r.from_checkpoint}))
        .changes(Changes {
            new_attempt_budget: true,
            clear_checkpoint: !r.from_checkpoint,
            ..Changes::default()
        });
    ops::transition(w, &t, Resume::No, false).await?;
    Ok(Some(to))
}

async fn set_paused(w: &mut Work<'_>, id: &str, paused: bool, now: Millis) -> Result<()> {
    w.c.execute(
        "UPDATE workflows SET paused = $2, updated_at = $3 WHERE id = $1",
        &[&id, &paused, &now],
    )
    .await
    .db()?;
    Ok(())
}

fn condition(s: &str) -> Result<Condition> {
    Condition::parse(s)
        .ok_or_else(|| Error::Internal(format!("stored dependency condition {s:?} is not known")))
}

fn edge_status(v: i16) -> Result<EdgeStatus> {
    EdgeStatus::from_i64(i64::from(v))
        .ok_or_else(|| Error::Internal(format!("stored edge status {v} is not known")))
}

/// A workflow's jobs in insertion order, and its names.
async fn jobs_of(c: &impl GenericClient, id: &str) -> Result<(BTreeMap<String, String>, Vec<Job>)> {
    let rows = c
        .query(
            &format!(
                "SELECT {JOB_COLUMNS}, {DEPENDS_ON}, workflow_name FROM jobs \
                 WHERE workflow_id = $1 ORDER BY key"
            ),
            &[&id],
        )
        .await
        .db()?;
    let name_at = JOB_COLUMNS.split(", ").count() + 1;
    let mut names = BTreeMap::new();
    let mut jobs = Vec::with_capacity(rows.len());
    for r in &rows {
        let row = read_job_with_deps(r)?;
        if let Some(name) = r.get::<_, Option<String>>(name_at) {
            names.insert(name, row.job.id.clone());
        }
        jobs.push(row.job);
    }
    Ok((names, jobs))
}

/// A job's edges from `side`: the job at the other end with its state and outcome.
pub async fn links(c: &impl GenericClient, id: &str, side: Side) -> Result<Vec<Link>> {
    let found = c
        .query_opt("SELECT key, workflow_id FROM jobs WHERE id = $1", &[&id])
        .await
        .db()?;
    let Some(found) = found else {
        return Err(Error::NotFound(id.to_owned()));
    };
    let (key, workflow): (i64, Option<String>) = (found.get(0), found.get(1));
    let sql = match side {
        Side::Dependencies => {
            "SELECT o.id, o.workflow_id, o.workflow_name, e.cond, e.status, o.state, o.result, \
             o.error_code, o.error_message FROM edges e JOIN jobs o ON o.key = e.parent \
             WHERE e.child = $1 ORDER BY e.parent"
        }
        Side::Dependents => {
            "SELECT o.id, o.workflow_id, o.workflow_name, e.cond, e.status, o.state, o.result, \
             o.error_code, o.error_message FROM edges e JOIN jobs o ON o.key = e.child \
             WHERE e.parent = $1 ORDER BY e.child"
        }
    };
    let rows = c.query(sql, &[&key]).await.db()?;
    rows.iter()
        .map(|r| {
            let other: Option<String> = r.get(1);
            let name: Option<String> = r.get(2);
            let code: Option<String> = r.get(7);
            let message: Option<String> = r.get(8);
            Ok(Link {
                job_id: r.get(0),
                // A name means something only inside its own workflow.
                name: name.filter(|_| other.is_some() && other == workflow),
                on: condition(r.get(3))?,
                status: edge_status(r.get(4))?,
                state: state(r.get(5))?,
                result: r.get(6),
                error: code.map(|c| ErrorInfo::new(c, message.unwrap_or_default())),
            })
        })
        .collect()
}

/// A workflow's graph: its jobs (oldest first) with their states, and its edges.
pub async fn graph(c: &mut tokio_postgres::Client, id: &str) -> Result<Option<WorkflowGraph>> {
    // One snapshot: the nodes and edges are read as one write left them.
    let tx = c
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .db()?;
    let found = tx
        .query_opt(
            "SELECT paused, created_at FROM workflows WHERE id = $1",
            &[&id],
        )
        .await
        .db()?;
    let Some(found) = found else {
        return Ok(None);
    };
    let (paused, created_at): (bool, Millis) = (found.get(0), found.get(1));
    let rows = tx
        .query(
            "SELECT id, workflow_name, kind, queue, state, progress, attempt, started_at, \
             finished_at, error_code, error_message FROM jobs WHERE workflow_id = $1 \
             ORDER BY key",
            &[&id],
        )
        .await
        .db()?;
    let mut nodes = Vec::with_capacity(rows.len());
    let mut names = BTreeMap::new();
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    for r in &rows {
        let code: Option<String> = r.get(9);
        let message: Option<String> = r.get(10);
        let node = WorkflowNode {
            id: r.get(0),
            name: r.get(1),
            kind: r.get(2),
            queue: r.get(3),
            state: state(r.get(4))?,
            progress: r.get(5),
            attempt: r.get::<_, i32>(6) as u32,
            started_at: r.get(7),
            finished_at: r.get(8),
            error: code.map(|c| ErrorInfo::new(c, message.unwrap_or_default())),
        };
        if let Some(name) = &node.name {
            names.insert(name.clone(), node.id.clone());
        }
        *counts.entry(node.state.as_str().to_owned()).or_default() += 1;
        nodes.push(node);
    }
    let rows = tx
        .query(
            "SELECT p.id, c.id, e.cond, e.status FROM jobs c \
             JOIN edges e ON e.child = c.key JOIN jobs p ON p.key = e.parent \
             WHERE c.workflow_id = $1 ORDER BY e.child, e.parent",
            &[&id],
        )
        .await
        .db()?;
    let edges = rows
        .iter()
        .map(|r| {
            Ok(WorkflowEdge {
                from: r.get(0),
                to: r.get(1),
                on: condition(r.get(2))?,
                status: edge_status(r.get(3))?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    tx.commit().await.db()?;
    Ok(Some(WorkflowGraph {
        id: id.to_owned(),
        state: WorkflowState::derive(paused, nodes.iter().map(|n| n.state)),
        paused,
        created_at,
        counts,
        jobs: names,
        nodes,
        edges,
    }))
}

/// A page of workflows, newest first (by creation, then id), each with its jobs
/// counted by state. The cursor is the last row's `created_at:id`.
pub async fn list(c: &mut tokio_postgres::Client, f: &WorkflowFilter) -> Result<WorkflowPage> {
    let after = match &f.cursor {
        None => None,
        Some(text) => Some(
            parse_cursor(text).ok_or_else(|| Error::Config(format!("invalid cursor {text:?}")))?,
        ),
    };
    let limit = f.limit.clamp(1, 1000);
    // The first page starts past every creation time.
    let (at, after_id) = after.unwrap_or((i64::MAX, String::new()));
    let tx = c
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .db()?;
    let rows = tx
        .query(
            "SELECT id, paused, created_at FROM workflows \
             WHERE created_at < $1 OR (created_at = $1 AND id < $2) \
             ORDER BY created_at DESC, id DESC LIMIT $3",
            &[&at, &after_id, &(limit as i64 + 1)],
        )
        .await
        .db()?;
    let mut found: Vec<(String, bool, Millis)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let next_cursor = if found.len() > limit {
        found.truncate(limit);
        found.last().map(|(id, _, at)| format!("{at}:{id}"))
    } else {
        None
    };
    let ids: Vec<&str> = found.iter().map(|w| w.0.as_str()).collect();
    let rows = tx
        .query(
            "SELECT workflow_id, state, COUNT(*) FROM jobs WHERE workflow_id = ANY($1) \
             GROUP BY workflow_id, state",
            &[&ids],
        )
        .await
        .db()?;
    tx.commit().await.db()?;
    let mut counted: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    for r in &rows {
        let n: i64 = r.get(2);
        counted
            .entry(r.get(0))
            .or_default()
            .insert(r.get(1), n as u64);
    }
    let mut workflows = Vec::with_capacity(found.len());
    for (id, paused, created_at) in found {
        let counts = counted.remove(&id).unwrap_or_default();
        let states = counts
            .keys()
            .map(|s| state(s))
            .collect::<Result<Vec<_>>>()?;
        workflows.push(WorkflowSummary {
            state: WorkflowState::derive(paused, states),
            jobs: counts.values().sum(),
            id,
            paused,
            created_at,
            counts,
        });
    }
    Ok(WorkflowPage {
        workflows,
        next_cursor,
    })
}

/// `created_at:id`, as [`list`] writes it.
fn parse_cursor(c: &str) -> Option<(i64, String)> {
    let (at, id) = c.split_once(':')?;
    Some((at.parse().ok()?, id.to_owned()))
}
