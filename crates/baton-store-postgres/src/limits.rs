//! Concurrency limits on PostgreSQL, which several servers claim from at once. A
//! claim that meets a job a limit covers takes one advisory lock (held until its
//! transaction ends) before it counts the jobs holding the limit's slots and picks:
//! two servers never both see the last free slot. A claim that meets no such job
//! takes no lock. The queues' places in line at each limit (see
//! [`baton_store::turns`]) are rows of `limit_turns`, read and written under the same
//! lock.

use std::collections::BTreeMap;

use baton_core::{ConcurrencyLimit, LimitScope, Millis};
use baton_store::turns::{Picking, TURN_TTL, WINDOW, free_slots};
use baton_store::{ClaimRequest, Result};
use serde_json::{Value, json};

use crate::Db;
use crate::work::Work;

/// The advisory lock a claim takes before it picks jobs a limit covers.
pub(crate) const LOCK_LIMITS: i32 = 0x6261_0003;

/// How many of the jobs each limit covers are running, paused or stopping.
pub async fn held(c: &tokio_postgres::Client, limits: &[ConcurrencyLimit]) -> Result<Vec<u64>> {
    let mut counts = vec![0u64; limits.len()];
    if limits.is_empty() {
        return Ok(counts);
    }
    let rows = c
        .query(
            "SELECT kind, labels FROM jobs_live WHERE state IN ('running', 'paused', 'stopping')",
            &[],
        )
        .await
        .db()?;
    for row in rows {
        let kind: String = row.get(0);
        let labels = labels_of(row.get(1))?;
        for (l, n) in limits.iter().zip(counts.iter_mut()) {
            if l.covers(&kind, &labels) {
                *n += 1;
            }
        }
    }
    Ok(counts)
}

/// A job's stored labels; an unreadable value is an error, never "no labels" (which
/// would let the job past its limits).
fn labels_of(stored: Option<Value>) -> Result<BTreeMap<String, String>> {
    match stored {
        None => Ok(BTreeMap::new()),
        Some(v) => serde_json::from_value(v.clone()).map_err(|e| {
            baton_store::Error::Internal(format!("stored labels {v} cannot be read: {e}"))
        }),
    }
}

/// Whether the first `limit` jobs a claim would take hold one that a limit covers.
pub async fn meets_covered(
    w: &mut Work<'_>,
    req: &ClaimRequest,
    limits: &[ConcurrencyLimit],
) -> Result<bool> {
    let rows =
        w.c.query(
            "SELECT kind, labels FROM jobs_live WHERE queue = $1 AND state = 'queued' \
             AND ($2::text[] IS NULL OR kind = ANY ($2)) ORDER BY priority DESC, key LIMIT $3",
            &[&req.queue, &req.kinds, &(req.limit as i64)],
        )
        .await
        .db()?;
    for row in &rows {
        let kind: String = row.get(0);
        let labels = labels_of(row.get(1))?;
        if limits.iter().any(|l| l.covers(&kind, &labels)) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// A parameter of a condition on a limit.
pub type Param = Box<dyn tokio_postgres::types::ToSql + Sync + Send>;

/// A condition on `jobs` that holds for the jobs the limit covers, with its parameter
/// (`$n`).
pub fn covered(limit: &ConcurrencyLimit, n: usize) -> (String, Param) {
    match &limit.scope {
        LimitScope::Kind(kind) => (format!("kind = ${n}"), Box::new(kind.clone())),
        LimitScope::Label { key, value } => (
            format!("COALESCE(labels @> ${n}, false)"),
            Box::new(json!({ key: value })),
        ),
    }
}

/// The keys of the jobs the claim takes, in order, with the limits honoured and the
/// queue's place in line kept. Runs under [`LOCK_LIMITS`].
pub async fn pick(
    w: &mut Work<'_>,
    req: &ClaimRequest,
    limits: &[ConcurrencyLimit],
) -> Result<Vec<i64>> {
    w.c.execute("SELECT pg_advisory_xact_lock($1, 0)", &[&LOCK_LIMITS])
        .await
        .db()?;
    w.c.execute(
        "DELETE FROM limit_turns WHERE seen < $1",
        &[&(req.now - TURN_TTL)],
    )
    .await
    .db()?;
    let held = held(&w.c, limits).await?;
    let mut room = Vec::with_capacity(limits.len());
    for (l, h) in limits.iter().zip(&held) {
        let line: Vec<String> =
            w.c.query(
                "SELECT queue FROM limit_turns WHERE scope = $1 ORDER BY place",
                &[&l.name()],
            )
            .await
            .db()?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let ahead = line
            .iter()
            .position(|q| *q == req.queue)
            .unwrap_or(line.len()) as u64;
        room.push(free_slots(l, *h, ahead));
    }
    let mut pick = Picking::new(room);
    let base = "FROM jobs_live WHERE queue = $1 AND state = 'queued' \
                AND ($2::text[] IS NULL OR kind = ANY ($2))";
    let mut taken: Vec<i64> = Vec::new();
    // As in the SQLite store's `claim_within` (see `Picking`).
    loop {
        let mut params: Vec<Param> = Vec::new();
        let mut exclude = String::new();
        for l in pick.full(limits) {
            let (cond, p) = covered(l, params.len() + 3);
            exclude.push_str(&format!(" AND NOT ({cond})"));
            params.push(p);
        }
        let deep = exclude.is_empty()
            || w.deep_scans
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .due(&req.queue, req.now);
        let mut sql = if deep {
            format!("SELECT key, kind, labels {base}{exclude}")
        } else {
            // Past a full limit's jobs only the queue's first jobs are looked at (see
            // `DeepScans`).
            format!(
                "SELECT key, kind, labels FROM (SELECT key, kind, labels, priority {base} \
                 ORDER BY priority DESC, key LIMIT {WINDOW}) AS jobs_live WHERE true{exclude}"
            )
        };
        let reach = (req.limit + taken.len()) as i64;
        sql.push_str(&format!(" ORDER BY priority DESC, key LIMIT {reach}"));
        let mut args: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
            vec![&req.queue, &req.kinds];
        for p in &params {
            args.push(p.as_ref());
        }
        let rows = w.c.query(&sql, &args).await.db()?;
        let mut ran_out = false;
        for row in rows {
            if taken.len() >= req.limit || ran_out {
                break;
            }
            let key: i64 = row.get(0);
            // The rows taken by an earlier read come again (they are still queued).
            if taken.contains(&key) {
                continue;
            }
            let kind: String = row.get(1);
            let labels = labels_of(row.get(2))?;
            ran_out = pick.take(limits, &kind, &labels);
            taken.push(key);
        }
        if !ran_out || taken.len() >= req.limit {
            break;
        }
    }
    // As the SQLite store does (see its `claim_within`): a queue that took a slot
    // leaves the line; one the limit kept from a job waits in line; one with nothing
    // the limit covers leaves it.
    for (i, l) in limits.iter().enumerate() {
        if pick.took[i] {
            leave(w, l, &req.queue).await?;
        } else if pick.closed[i] && has_covered(w, base, req, l).await? {
            wait(w, l, &req.queue, req.now).await?;
        } else {
            leave(w, l, &req.queue).await?;
        }
    }
    Ok(taken)
}

async fn has_covered(
    w: &mut Work<'_>,
    base: &str,
    req: &ClaimRequest,
    l: &ConcurrencyLimit,
) -> Result<bool> {
    let (cond, p) = covered(l, 3);
    let row =
        w.c.query_one(
            &format!("SELECT EXISTS (SELECT 1 {base} AND {cond})"),
            &[&req.queue, &req.kinds, p.as_ref()],
        )
        .await
        .db()?;
    Ok(row.get(0))
}

async fn wait(w: &mut Work<'_>, l: &ConcurrencyLimit, queue: &str, now: Millis) -> Result<()> {
    w.c.execute(
        "INSERT INTO limit_turns (scope, queue, seen) VALUES ($1, $2, $3) \
         ON CONFLICT (scope, queue) DO UPDATE SET seen = EXCLUDED.seen",
        &[&l.name(), &queue, &now],
    )
    .await
    .db()?;
    Ok(())
}

async fn leave(w: &mut Work<'_>, l: &ConcurrencyLimit, queue: &str) -> Result<()> {
    w.c.execute(
        "DELETE FROM limit_turns WHERE scope = $1 AND queue = $2",
        &[&l.name(), &queue],
    )
    .await
    .db()?;
    Ok(())
}
