//! Reading dependencies and workflows: edges seen from either end, a workflow's graph
//! with its states, and the paused queues.

use std::collections::BTreeMap;

use baton_core::{
    ErrorInfo, WorkflowEdge, WorkflowGraph, WorkflowNode, WorkflowState, WorkflowSummary,
};
use rusqlite::{Connection, OptionalExtension};

use super::codes::{condition_of, edge_status, json, parse_state};
use crate::{Error, Link, Result, WorkflowFilter, WorkflowPage};

/// Which end of its edges a job is looked at from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The jobs it depends on.
    Dependencies,
    /// The jobs that depend on it.
    Dependents,
}

/// The ids of the jobs the job with row key `key` depends on, oldest first.
pub fn depends_on(conn: &Connection, key: i64) -> Result<Vec<String>> {
    let mut stmt = conn.prepare_cached(
        "SELECT p.id FROM deps d JOIN jobs p ON p.seq = d.parent WHERE d.child = ?1 \
         ORDER BY d.parent",
    )?;
    let ids = stmt.query_map([key], |r| r.get(0))?;
    Ok(ids.collect::<rusqlite::Result<_>>()?)
}

/// A job's edges from `side`: the job at the other end with its state and outcome.
pub fn links(conn: &Connection, id: &str, side: Side) -> Result<Vec<Link>> {
    let key: Option<(i64, Option<String>)> = conn
        .prepare_cached("SELECT seq, workflow_id FROM jobs WHERE id = ?1")?
        .query_row([id], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let Some((key, workflow)) = key else {
        return Err(Error::NotFound(id.to_owned()));
    };
    let sql = match side {
        Side::Dependencies => {
            "SELECT o.id, o.workflow_id, o.workflow_name, d.cond, d.status, o.state, o.result, \
             o.error_code, o.error_message FROM deps d JOIN jobs o ON o.seq = d.parent \
             WHERE d.child = ?1 ORDER BY d.parent"
        }
        Side::Dependents => {
            "SELECT o.id, o.workflow_id, o.workflow_name, d.cond, d.status, o.state, o.result, \
             o.error_code, o.error_message FROM deps d JOIN jobs o ON o.seq = d.child \
             WHERE d.parent = ?1 ORDER BY d.child"
        }
    };
    let mut stmt = conn.prepare_cached(sql)?;
    let rows = stmt.query_map([key], |r| {
        let other_workflow: Option<String> = r.get(1)?;
        let name: Option<String> = r.get(2)?;
        let state: String = r.get(5)?;
        let result: Option<String> = r.get(6)?;
        let code: Option<String> = r.get(7)?;
        let message: Option<String> = r.get(8)?;
        Ok(Link {
            job_id: r.get(0)?,
            // A name means something only inside its own workflow.
            name: name.filter(|_| other_workflow.is_some() && other_workflow == workflow),
            on: condition_of(r.get(3)?)?,
            status: edge_status(r.get(4)?)?,
            state: parse_state(&state)?,
            result: json("result", result)?,
            error: code.map(|c| ErrorInfo::new(c, message.unwrap_or_default())),
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// A workflow's graph: its jobs (oldest first) with their states, and its edges.
pub fn workflow(conn: &Connection, id: &str) -> Result<Option<WorkflowGraph>> {
    let found: Option<(bool, i64)> = conn
        .prepare_cached("SELECT paused, created_at FROM workflows WHERE id = ?1")?
        .query_row([id], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let Some((paused, created_at)) = found else {
        return Ok(None);
    };
    let mut nodes = Vec::new();
    let mut names = BTreeMap::new();
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    {
        let mut stmt = conn.prepare_cached(
            "SELECT id, workflow_name, kind, queue, state, progress, attempt, started_at, \
             finished_at, error_code, error_message FROM jobs WHERE workflow_id = ?1 ORDER BY seq",
        )?;
        let rows = stmt.query_map([id], |r| {
            let state: String = r.get(4)?;
            let code: Option<String> = r.get(9)?;
            let message: Option<String> = r.get(10)?;
            Ok(WorkflowNode {
                id: r.get(0)?,
                name: r.get(1)?,
                kind: r.get(2)?,
                queue: r.get(3)?,
                state: parse_state(&state)?,
                progress: r.get(5)?,
                attempt: r.get(6)?,
                started_at: r.get(7)?,
                finished_at: r.get(8)?,
                error: code.map(|c| ErrorInfo::new(c, message.unwrap_or_default())),
            })
        })?;
        for node in rows {
            let node = node?;
            if let Some(name) = &node.name {
                names.insert(name.clone(), node.id.clone());
            }
            *counts.entry(node.state.as_str().to_owned()).or_default() += 1;
            nodes.push(node);
        }
    }
    let edges = {
        let mut stmt = conn.prepare_cached(
            "SELECT p.id, c.id, d.cond, d.status FROM jobs c \
             JOIN deps d ON d.child = c.seq JOIN jobs p ON p.seq = d.parent \
             WHERE c.workflow_id = ?1 ORDER BY d.child, d.parent",
        )?;
        let rows = stmt.query_map([id], |r| {
            Ok(WorkflowEdge {
                from: r.get(0)?,
                to: r.get(1)?,
                on: condition_of(r.get(2)?)?,
                status: edge_status(r.get(3)?)?,
            })
        })?;
        rows.collect::<rusqlite::Result<Vec<_>>>()?
    };
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
/// counted by state. The cursor is the last row's `created_at:id`. Counting reads each
/// listed workflow's jobs through `jobs_workflow`: a page costs its workflows' jobs.
pub fn workflows(conn: &Connection, f: &WorkflowFilter) -> Result<WorkflowPage> {
    let after = match &f.cursor {
        None => None,
        Some(c) => {
            Some(parse_cursor(c).ok_or_else(|| Error::Config(format!("invalid cursor {c:?}")))?)
        }
    };
    let limit = f.limit.clamp(1, 1000);
    // The first page starts past every creation time.
    let (at, id) = after.unwrap_or((i64::MAX, String::new()));
    let mut rows: Vec<(String, bool, i64)> = conn
        .prepare_cached(
            "SELECT id, paused, created_at FROM workflows \
             WHERE created_at < ?1 OR (created_at = ?1 AND id < ?2) \
             ORDER BY created_at DESC, id DESC LIMIT ?3",
        )?
        .query_map(rusqlite::params![at, id, limit as i64 + 1], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })?
        .collect::<rusqlite::Result<_>>()?;
    let next_cursor = if rows.len() > limit {
        rows.truncate(limit);
        rows.last().map(|(id, _, at)| format!("{at}:{id}"))
    } else {
        None
    };
    let mut count = conn
        .prepare_cached("SELECT state, COUNT(*) FROM jobs WHERE workflow_id = ?1 GROUP BY state")?;
    let mut workflows = Vec::with_capacity(rows.len());
    for (id, paused, created_at) in rows {
        let mut counts: BTreeMap<String, u64> = BTreeMap::new();
        let mut states = Vec::new();
        let found =
            count.query_map([&id], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
        for row in found {
            let (state, n) = row?;
            states.push(parse_state(&state)?);
            counts.insert(state, n as u64);
        }
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

/// `created_at:id`, as [`workflows`] writes it.
fn parse_cursor(c: &str) -> Option<(i64, String)> {
    let (at, id) = c.split_once(':')?;
    Some((at.parse().ok()?, id.to_owned()))
}

pub fn paused_queues(conn: &Connection) -> Result<Vec<String>> {
    let mut stmt = conn.prepare_cached("SELECT name FROM queues WHERE paused ORDER BY name")?;
    let names = stmt.query_map([], |r| r.get(0))?;
    Ok(names.collect::<rusqlite::Result<_>>()?)
}
