//! Retention, inside the writer: finished jobs past their queue's retention are removed
//! with everything stored about them, a batch a write, so that other writes run between
//! the batches and a busy store stops growing.
//!
//! A job is removed when it is finished (completed, failed, cancelled or deleted), it
//! ended and last changed before its queue's cutoff, and no unfinished job depends on
//! it (a dependent still needs its state and result). Jobs are looked at in end order
//! through `jobs_finished` (the list's index: retention adds none to the jobs a
//! completion writes), up to the latest cutoff of any queue; a write looks at a bounded
//! number and says where it stopped, so that jobs kept by a longer retention are looked
//! at once a round, not once a write. The newest job is kept: SQLite
//! would give its key again to the next job, under the search index's mark. Events of no
//! job (a server's, a queue's, a schedule's) and schedules' fires (all but each
//! schedule's newest) go by the default retention. The newest
//! event id removed is kept in `prune_mark`: ids are never given twice, and a reader
//! resuming before it learns that it may have missed events.

use std::collections::{BTreeMap, BTreeSet};

use baton_core::{Millis, State};
use rusqlite::params;

use super::Writer;
use crate::sqlite::codes::parse_state;
use crate::{PruneCursor, PruneRequest, Pruned, Result};

/// The columns [`read_looked`] reads.
const LOOKED: &str = "seq, id, queue, state, labels, workflow_id, finished_at, updated_at";

/// A job looked at for removal, with its end (if it ended) and its last change.
type Looked = (Doomed, Option<Millis>, Millis);

fn read_looked(r: &rusqlite::Row<'_>) -> rusqlite::Result<Looked> {
    let state: String = r.get(3)?;
    Ok((
        Doomed {
            key: r.get(0)?,
            id: r.get(1)?,
            queue: r.get(2)?,
            state: parse_state(&state)?,
            labels: r.get(4)?,
            workflow: r.get(5)?,
        },
        r.get(6)?,
        r.get(7)?,
    ))
}

/// A job chosen for removal.
struct Doomed {
    key: i64,
    id: String,
    queue: String,
    state: State,
    labels: Option<String>,
    workflow: Option<String>,
}

/// How many finished jobs one write looks at, per job it may remove: jobs kept (a
/// longer retention, a recent change, an unfinished dependent) cost a look, bounded.
const LOOKS_PER_JOB: usize = 4;

impl Writer {
    pub(super) fn prune(&mut self, req: &PruneRequest) -> Result<Pruned> {
        let limit = req.limit.max(1);
        let mut pruned = Pruned::default();
        let mut newest_event = 0i64;
        let mut counts: BTreeMap<(String, State), i64> = BTreeMap::new();
        let mut workflows: BTreeSet<String> = BTreeSet::new();
        let (doomed, next) = self.doomed(req, limit)?;
        pruned.next = next;
        for d in doomed {
            let (events, newest) = self.remove_job(&d)?;
            newest_event = newest_event.max(newest);
            pruned.events += events;
            pruned.jobs += 1;
            *counts.entry((d.queue, d.state)).or_default() += 1;
            if let Some(w) = d.workflow {
                workflows.insert(w);
            }
        }
        // An upsert: a job that reached its state in this same transaction has its count
        // still among the writer's moves, added at the commit.
        let mut stmt = self.conn.prepare_cached(
            "INSERT INTO job_counts (queue, state, n) VALUES (?1, ?2, -?3) \
             ON CONFLICT (queue, state) DO UPDATE SET n = n + excluded.n",
        )?;
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
            // A schedule's history keeps its newest fire: its last run stays known.
            pruned.fires = self
                .conn
                .prepare_cached(
                    "DELETE FROM schedule_fires WHERE (schedule_id, seq) IN \
                     (SELECT schedule_id, seq FROM schedule_fires AS f \
                      WHERE fired_at < ?1 AND seq < (SELECT MAX(seq) FROM schedule_fires \
                          WHERE schedule_id = f.schedule_id) \
                      ORDER BY fired_at LIMIT ?2)",
                )?
                .execute(params![req.now.saturating_sub(retention), limit as i64])?
                as u64;
        }
        if newest_event > 0 {
            self.conn
                .prepare_cached("UPDATE prune_mark SET events_upto = MAX(events_upto, ?1)")?
                .execute([newest_event])?;
        }
        pruned.more = pruned.next.is_some() || unowned == limit || pruned.fires as usize == limit;
        Ok(pruned)
    }

    /// Up to `limit` finished jobs past their queue's retention, oldest end first,
    /// after `req.after`: each ended and last changed before its queue's cutoff, none of
    /// them the newest job nor one an unfinished job depends on. Looks at no more than
    /// [`LOOKS_PER_JOB`] jobs a job it may remove; with them, where to go on from
    /// (`None` once every job that ended before the latest cutoff was looked at).
    fn doomed(
        &mut self,
        req: &PruneRequest,
        limit: usize,
    ) -> Result<(Vec<Doomed>, Option<PruneCursor>)> {
        // The latest cutoff of any queue: no job that ended after it can go.
        let shortest = req
            .queues
            .values()
            .chain([&req.retention])
            .flatten()
            .min()
            .copied();
        let Some(shortest) = shortest else {
            return Ok((Vec::new(), None));
        };
        let latest_cutoff = req.now.saturating_sub(shortest);
        let newest: i64 = self
            .conn
            .prepare_cached("SELECT COALESCE(MAX(seq), 0) FROM jobs")?
            .query_row([], |r| r.get(0))?;
        let after = req.after.unwrap_or(PruneCursor {
            finished_at: Millis::MIN,
            key: 0,
        });
        let looks = limit.saturating_mul(LOOKS_PER_JOB);
        let seen: Vec<Looked> = {
            let mut stmt = self.conn.prepare_cached(&format!(
                "SELECT {LOOKED} FROM jobs INDEXED BY jobs_finished \
                 WHERE finished_at < ?1 AND (finished_at, seq) > (?2, ?3) \
                 ORDER BY finished_at, seq LIMIT ?4"
            ))?;
            let rows = stmt.query_map(
                params![latest_cutoff, after.finished_at, after.key, looks as i64],
                read_looked,
            )?;
            rows.collect::<rusqlite::Result<_>>()?
        };
        let scanned_all = seen.len() < looks;
        let mut doomed = Vec::new();
        // Workflows decided in this call: a workflow goes whole or not at all.
        let mut workflows: BTreeSet<String> = BTreeSet::new();
        let mut last = None;
        for (d, finished_at, updated_at) in seen {
            // Read through `finished_at < ?1`: never null here.
            let finished_at = finished_at.unwrap_or(Millis::MIN);
            last = Some(PruneCursor {
                finished_at,
                key: d.key,
            });
            match d.workflow.clone() {
                Some(w) => {
                    if !workflows.insert(w.clone()) {
                        continue;
                    }
                    if let Some(all) = self.whole_workflow_due(&w, req, newest)? {
                        doomed.extend(all);
                    }
                }
                None => {
                    if !due(req, &d, finished_at, updated_at, newest)
                        || self.needed_by_a_dependent(d.key)?
                    {
                        continue;
                    }
                    doomed.push(d);
                }
            }
            if doomed.len() >= limit {
                return Ok((doomed, last));
            }
        }
        Ok((doomed, if scanned_all { None } else { last }))
    }

    /// Every job of workflow `id` when all of them are due (and none is needed by an
    /// unfinished job outside it); otherwise none. A workflow is removed whole: a
    /// retry of a finished workflow runs its failed and cancelled jobs again, waiting
    /// on its edges, so a part of it cannot go before the rest.
    fn whole_workflow_due(
        &mut self,
        id: &str,
        req: &PruneRequest,
        newest: i64,
    ) -> Result<Option<Vec<Doomed>>> {
        let jobs: Vec<Looked> = {
            let mut stmt = self
                .conn
                .prepare_cached(&format!("SELECT {LOOKED} FROM jobs WHERE workflow_id = ?1"))?;
            let rows = stmt.query_map([id], read_looked)?;
            rows.collect::<rusqlite::Result<_>>()?
        };
        for (d, finished_at, updated_at) in &jobs {
            let Some(finished_at) = finished_at else {
                return Ok(None);
            };
            if !due(req, d, *finished_at, *updated_at, newest) {
                return Ok(None);
            }
        }
        // Dependents inside the workflow are finished (every job of it is); one outside
        // it may still wait.
        for (d, _, _) in &jobs {
            if self.needed_by_a_dependent(d.key)? {
                return Ok(None);
            }
        }
        Ok(Some(jobs.into_iter().map(|(d, _, _)| d).collect()))
    }

    /// Whether an unfinished job depends on the job with row key `key`.
    fn needed_by_a_dependent(&mut self, key: i64) -> Result<bool> {
        if !self.has_edges()? {
            return Ok(false);
        }
        Ok(self
            .conn
            .prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM deps JOIN jobs AS child ON child.seq = deps.child \
                 WHERE deps.parent = ?1 \
                 AND child.state NOT IN ('completed', 'failed', 'cancelled', 'deleted'))",
            )?
            .query_row([key], |r| r.get(0))?)
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

/// Whether a job is past its queue's retention: finished, ended and last changed before
/// its queue's cutoff, and not the newest job.
fn due(
    req: &PruneRequest,
    d: &Doomed,
    finished_at: Millis,
    updated_at: Millis,
    newest: i64,
) -> bool {
    let Some(retention) = req.retention_of(&d.queue) else {
        return false;
    };
    let cutoff = req.now.saturating_sub(retention);
    d.state.is_terminal() && finished_at < cutoff && updated_at < cutoff && d.key < newest
}
