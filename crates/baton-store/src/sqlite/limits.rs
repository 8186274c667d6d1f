//! Concurrency limits in SQLite: what the jobs holding a slot count, and the parts of
//! the claim's SQL that pass over the jobs of a full limit. The writer is the only
//! one to claim, so a count read in its transaction stays true until it claims.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use baton_core::{ConcurrencyLimit, LimitScope};
use rusqlite::Connection;

use crate::Result;

/// The limits in force, shared by the store (which sets them) and its writer.
pub type Shared = Arc<RwLock<Arc<[ConcurrencyLimit]>>>;

pub fn current(shared: &Shared) -> Arc<[ConcurrencyLimit]> {
    shared.read().unwrap_or_else(|e| e.into_inner()).clone()
}

/// How many of the jobs each limit covers are running, paused or stopping.
pub fn held(conn: &Connection, limits: &[ConcurrencyLimit]) -> Result<Vec<u64>> {
    let mut counts = vec![0u64; limits.len()];
    if limits.is_empty() {
        return Ok(counts);
    }
    let labelled = limits
        .iter()
        .any(|l| matches!(l.scope, LimitScope::Label { .. }));
    let mut stmt = conn.prepare_cached(
        "SELECT kind, labels FROM jobs WHERE state IN ('running', 'paused', 'stopping')",
    )?;
    let mut rows = stmt.query([])?;
    while let Some(row) = rows.next()? {
        let kind: String = row.get(0)?;
        let labels: Option<String> = if labelled { row.get(1)? } else { None };
        // An unreadable value is an error, never "no labels": that would undercount.
        let labels: BTreeMap<String, String> = match labels {
            Some(text) => serde_json::from_str(&text).map_err(|e| {
                crate::Error::Internal(format!("stored labels {text} cannot be read: {e}"))
            })?,
            None => BTreeMap::new(),
        };
        for (l, n) in limits.iter().zip(counts.iter_mut()) {
            if l.covers(&kind, &labels) {
                *n += 1;
            }
        }
    }
    Ok(counts)
}

fn quoted(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// A condition (on `jobs`) that holds for the jobs the limit covers.
pub fn covered(limit: &ConcurrencyLimit) -> String {
    match &limit.scope {
        LimitScope::Kind(kind) => format!("jobs.kind = {}", quoted(kind)),
        LimitScope::Label { key, value } => format!(
            "EXISTS (SELECT 1 FROM job_labels WHERE job_labels.key = {} \
             AND job_labels.value = {} AND job_labels.job = jobs.seq)",
            quoted(key),
            quoted(value)
        ),
    }
}

/// Whether the queue has a queued job the limit covers (of the claimer's kinds, when
/// it names them).
/// `from_where` is the claim's `FROM jobs WHERE ...`.
pub fn has_covered(conn: &Connection, from_where: &str, limit: &ConcurrencyLimit) -> Result<bool> {
    let sql = format!(
        "SELECT EXISTS (SELECT 1 {from_where} AND {})",
        covered(limit)
    );
    Ok(conn.prepare_cached(&sql)?.query_row([], |r| r.get(0))?)
}
