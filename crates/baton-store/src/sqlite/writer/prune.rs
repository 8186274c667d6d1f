//! Retention, inside the writer: finished jobs past their queue's retention are removed
//! with everything stored about them, a batch a write, so that other writes run between
//! the batches and a busy store stops growing.
//!
//! A job is removed when it is finished (completed, failed, cancelled or deleted), it
//! ended and last changed before its queue's cutoff, and no unfinished job depends on
//! it (a dependent still needs its state and result). The newest job is kept: SQLite
//! would give its key again to the next job, under the search index's mark. Events of no
//! job (a server's, a queue's, a schedule's) go by the default retention. The newest
//! event id removed is kept in `prune_mark`: ids are never given twice, and a reader
//! resuming before it learns that it may have missed events.

use std::collections::{BTreeMap, BTreeSet};

use baton_core::State;
use rusqlite::params;

use super::Writer;
use crate::sqlite::codes::parse_state;
use crate::{PruneRequest, Pruned, Result};

/// A job chosen for removal.
struct Doomed {
    key: i64,
    id: String,
    state: State,
    labels: Option<String>,
    workflow: Option<String>,
}

impl Writer {
    pub(super) fn prune(&mut self, req: &PruneRequest) -> Result<Pruned> {
        let limit = req.limit.max(1);
        let mut pruned = Pruned::default();
        let mut newest_event = 0i64;
        let newest_job: i64 = self
            .conn
            .prepare_cached("SELECT COALESCE(MAX(seq), 0) FROM jobs")?
            .query_row([], |r| r.get(0))?;
        let queues: Vec<String> = self
            .conn
            .prepare_cached("SELECT DISTINCT queue FROM job_counts WHERE n > 0")?
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        let mut counts: BTreeMap<(String, State), i64> = BTreeMap::new();
        let mut workflows: BTreeSet<String> = BTreeSet::new();
        for queue in queues {
            let left = limit - pruned.jobs as usize;
            if left == 0 {
                break;
            }
            let Some(retention) = req.retention_of(&queue) else {
                continue;
            };
            let cutoff = req.now.saturating_sub(retention);
            let doomed = self.doomed(&queue, cutoff, newest_job, left)?;
            for d in doomed {
                let (events, newest) = self.remove_job(&d)?;
                newest_event = newest_event.max(newest);
                pruned.events += events;
                pruned.jobs += 1;
                *counts.entry((queue.clone(), d.state)).or_default() += 1;
                if let Some(w) = d.workflow {
                    workflows.insert(w);
                }
            }
        }
        let mut stmt = self
            .conn
            .prepare_cached("UPDATE job_counts SET n = n - ?3 WHERE queue = ?1 AND state = ?2")?;
        for ((queue, state), n) in &counts {
            stmt.execute(params![queue, state.as_str(), n])?;
        }
        drop(stmt);
        let mut stmt = self.conn.prepare_cached(
            "DELETE FROM workflows WHERE id = ?1 \
             AND NOT EXISTS (SELECT 1 FROM jobs WHERE workflow_id = ?1)",
        )?;
        for id in &workflows {
            stmt.execute([id])?;
        }
        drop(stmt);
        let mut unowned = 0;
        if let Some(retention) = req.retention {
            let ids: Vec<i64> = self
                .conn
                .prepare_cached(
                    "DELETE FROM events WHERE id IN (SELECT id FROM events \
                     WHERE job_key IS NULL AND at < ?1 ORDER BY at LIMIT ?2) RETURNING id",
                )?
                .query_map(
                    params![req.now.saturating_sub(retention), limit as i64],
                    |r| r.get(0),
                )?
                .collect::<rusqlite::Result<_>>()?;
            unowned = ids.len();
            pruned.events += ids.len() as u64;
            newest_event = ids.into_iter().fold(newest_event, i64::max);
        }
        if newest_event > 0 {
            self.conn
                .prepare_cached("UPDATE prune_mark SET events_upto = MAX(events_upto, ?1)")?
                .execute([newest_event])?;
        }
        pruned.more = pruned.jobs as usize == limit || unowned == limit;
        Ok(pruned)
    }

    /// Up to `limit` finished jobs of `queue` that ended and last changed before
    /// `cutoff`, oldest first, none of them the newest job nor one an unfinished job
    /// depends on.
    fn doomed(
        &mut self,
        queue: &str,
        cutoff: baton_core::Millis,
        newest: i64,
        limit: usize,
    ) -> Result<Vec<Doomed>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT seq, id, state, labels, workflow_id FROM jobs INDEXED BY jobs_retention \
             WHERE queue = ?1 AND finished_at < ?2 AND updated_at < ?2 AND seq < ?3 \
             AND state IN ('completed', 'failed', 'cancelled', 'deleted') \
             AND NOT EXISTS (SELECT 1 FROM deps JOIN jobs AS child ON child.seq = deps.child \
                 WHERE deps.parent = jobs.seq \
                 AND child.state NOT IN ('completed', 'failed', 'cancelled', 'deleted')) \
             ORDER BY finished_at LIMIT ?4",
        )?;
        let rows = stmt.query_map(params![queue, cutoff, newest, limit as i64], |r| {
            let state: String = r.get(2)?;
            Ok(Doomed {
                key: r.get(0)?,
                id: r.get(1)?,
                state: parse_state(&state)?,
                labels: r.get(3)?,
                workflow: r.get(4)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Removes one job and everything stored about it; how many events it had, and the
    /// newest one's id.
    fn remove_job(&mut self, d: &Doomed) -> Result<(u64, i64)> {
        let ids: Vec<i64> = self
            .conn
            .prepare_cached("DELETE FROM events WHERE job_key = ?1 RETURNING id")?
            .query_map([d.key], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        self.conn
            .prepare_cached("DELETE FROM logs WHERE job_key = ?1")?
            .execute([d.key])?;
        self.conn
            .prepare_cached("DELETE FROM checkpoints WHERE job_id = ?1")?
            .execute([d.id.as_str()])?;
        if let Some(labels) = &d.labels {
            let labels: BTreeMap<String, String> = serde_json::from_str(labels)
                .map_err(|e| crate::Error::Internal(format!("job {:?}: labels: {e}", d.id)))?;
            let mut stmt = self.conn.prepare_cached(
                "DELETE FROM job_labels WHERE key = ?1 AND value = ?2 AND job = ?3",
            )?;
            for (k, v) in &labels {
                stmt.execute(params![k, v, d.key])?;
            }
        }
        self.conn
            .prepare_cached("DELETE FROM deps WHERE child = ?1")?
            .execute([d.key])?;
        self.conn
            .prepare_cached("DELETE FROM deps WHERE parent = ?1")?
            .execute([d.key])?;
        self.conn
            .prepare_cached("DELETE FROM jobs WHERE seq = ?1")?
            .execute([d.key])?;
        Ok((ids.len() as u64, ids.into_iter().max().unwrap_or(0)))
    }
}
