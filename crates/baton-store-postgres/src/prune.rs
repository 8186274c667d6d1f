//! Retention: finished jobs past their queue's retention are removed with everything
//! stored about them (events, logs, checkpoints), a batch a write, so that other writes
//! run between the batches and a busy database stops growing.
//!
//! A job is removed when it is finished (completed, failed, cancelled or deleted), it
//! ended and last changed before its queue's cutoff, no unfinished job depends on it (a
//! dependent still needs its state and result), and it is not the newest job (as in
//! the SQLite store). A workflow goes whole or not at all. Jobs are looked at in end
//! order through `jobs_finished` (the list's index: retention adds none to the rows a
//! completion writes), up to the latest cutoff of any queue; a write looks at a bounded
//! number and says where it stopped, so that jobs kept by a longer retention are looked
//! at once a round, not once a write. Events of no job and schedules' fires (all but
//! each schedule's newest) go by the default retention.
//!
//! Every server prunes, so two writes may choose the same jobs: the chosen rows are
//! locked (`SKIP LOCKED`: a row another write holds is being changed, or pruned, and is
//! left to the next round) and read again before they go. Only events that have their
//! public id are removed: a job with events still waiting for the sequencer stays until
//! they have theirs. The newest event id removed is kept in `sequence_mark.pruned_upto`:
//! a reader resuming before it learns that it may have missed events.

use std::collections::{BTreeMap, BTreeSet};

use baton_core::{Millis, State};
use tokio_postgres::Row;

use crate::Db;
use crate::rows::state;
use crate::work::Work;
use baton_store::{PruneCursor, PruneRequest, Pruned, Result};

/// The columns [`Looked::read`] reads.
const LOOKED: &str = "key, queue, state, workflow_id, finished_at, updated_at";

/// How many finished jobs one write looks at, per job it may remove: jobs kept (a
/// longer retention, a recent change) cost a look, bounded.
const LOOKS_PER_JOB: usize = 4;

/// Removes up to `req.limit` finished jobs past their retention (a workflow may take
/// it past the limit: it goes whole), then events of no job and schedules' fires past
/// the default retention.
pub async fn prune(w: &mut Work<'_>, req: &PruneRequest) -> Result<Pruned> {
    let limit = req.limit.max(1);
    let mut pruned = Pruned::default();
    let (chosen, next) = doomed(w, req, limit).await?;
    pruned.next = next;
    let doomed = lock(w, req, chosen).await?;
    let mut newest_event: i64 = 0;
    if !doomed.is_empty() {
        let keys: Vec<i64> = doomed.iter().map(|d| d.key).collect();
        let ids: Vec<Option<i64>> =
            w.c.query(
                "DELETE FROM events WHERE job_key = ANY ($1) RETURNING id",
                &[&keys],
            )
            .await
            .db()?
            .iter()
            .map(|r| r.get(0))
            .collect();
        pruned.events += ids.len() as u64;
        newest_event = ids.into_iter().flatten().fold(newest_event, i64::max);
        for table in ["logs", "checkpoints"] {
            w.c.execute(
                &format!("DELETE FROM {table} WHERE job_key = ANY ($1)"),
                &[&keys],
            )
            .await
            .db()?;
        }
        w.c.execute(
            "DELETE FROM edges WHERE child = ANY ($1) OR parent = ANY ($1)",
            &[&keys],
        )
        .await
        .db()?;
        w.c.execute(
            "WITH gone AS (DELETE FROM jobs WHERE key = ANY ($1) RETURNING id) \
             DELETE FROM job_ids WHERE id IN (SELECT id FROM gone)",
            &[&keys],
        )
        .await
        .db()?;
        // A workflow whose last jobs went goes too.
        let workflows: Vec<&str> = doomed
            .iter()
            .filter_map(|d| d.workflow.as_deref())
            .collect();
        if !workflows.is_empty() {
            w.c.execute(
                "DELETE FROM workflows WHERE id = ANY ($1) \
                 AND NOT EXISTS (SELECT 1 FROM jobs WHERE jobs.workflow_id = workflows.id)",
                &[&workflows],
            )
            .await
            .db()?;
        }
        for d in &doomed {
            w.removed(&d.queue, d.state, req.now);
        }
        pruned.jobs = doomed.len() as u64;
    }
    let (mut unowned, mut fires) = (0, 0);
    if let Some(retention) = req.retention {
        let cutoff = req.now.saturating_sub(retention);
        let ids: Vec<i64> =
            w.c.query(
                "DELETE FROM events WHERE lid IN (SELECT lid FROM events \
                 WHERE job_key IS NULL AND at < $1 AND id IS NOT NULL ORDER BY at LIMIT $2) \
                 RETURNING id",
                &[&cutoff, &(limit as i64)],
            )
            .await
            .db()?
            .iter()
            .map(|r| r.get(0))
            .collect();
        unowned = ids.len();
        pruned.events += unowned as u64;
        newest_event = ids.into_iter().fold(newest_event, i64::max);
        // A schedule's history keeps its newest fire: its last run stays known.
        fires =
            w.c.execute(
                "DELETE FROM schedule_fires WHERE (schedule_id, seq) IN \
                 (SELECT schedule_id, seq FROM schedule_fires AS f \
                  WHERE fired_at < $1 AND seq < (SELECT MAX(seq) FROM schedule_fires \
                      WHERE schedule_id = f.schedule_id) \
                  ORDER BY fired_at LIMIT $2)",
                &[&cutoff, &(limit as i64)],
            )
            .await
            .db()? as usize;
        pruned.fires = fires as u64;
    }
    // Last: the sequencer updates this row on each pass, and waits for this write
    // from here to its commit.
    if newest_event > 0 {
        w.c.execute(
            "UPDATE sequence_mark SET pruned_upto = GREATEST(pruned_upto, $1)",
            &[&newest_event],
        )
        .await
        .db()?;
    }
    pruned.more = pruned.next.is_some() || unowned == limit || fires == limit;
    Ok(pruned)
}

/// A finished job looked at for removal.
struct Looked {
    key: i64,
    queue: String,
    state: State,
    workflow: Option<String>,
    finished_at: Option<Millis>,
    updated_at: Millis,
}

impl Looked {
    fn read(r: &Row) -> Result<Self> {
        Ok(Self {
            key: r.get(0),
            queue: r.get(1),
            state: state(r.get(2))?,
            workflow: r.get(3),
            finished_at: r.get(4),
            updated_at: r.get(5),
        })
    }

    /// Whether the job is past its queue's retention: finished, ended and last changed
    /// before its queue's cutoff, and not the newest job.
    fn due(&self, req: &PruneRequest, newest: i64) -> bool {
        let Some(retention) = req.retention_of(&self.queue) else {
            return false;
        };
        let cutoff = req.now.saturating_sub(retention);
        self.state.is_terminal()
            && self.finished_at.is_some_and(|at| at < cutoff)
            && self.updated_at < cutoff
            && self.key < newest
    }
}

fn read_all(rows: &[Row]) -> Result<Vec<Looked>> {
    rows.iter().map(Looked::read).collect()
}

async fn newest(w: &mut Work<'_>) -> Result<i64> {
    Ok(w.c
        .query_one("SELECT COALESCE(MAX(key), 0) FROM jobs", &[])
        .await
        .db()?
        .get(0))
}

/// Up to `limit` finished jobs past their queue's retention, oldest end first, after
/// `req.after` (a workflow's jobs all together, or none of them). Looks at no more than
/// [`LOOKS_PER_JOB`] jobs a job it may remove; with them, where to go on from (`None`
/// once every job that ended before the latest cutoff was looked at).
async fn doomed(
    w: &mut Work<'_>,
    req: &PruneRequest,
    limit: usize,
) -> Result<(Vec<Looked>, Option<PruneCursor>)> {
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
    let newest = newest(w).await?;
    let after = req.after.unwrap_or(PruneCursor {
        finished_at: Millis::MIN,
        key: 0,
    });
    let looks = limit.saturating_mul(LOOKS_PER_JOB);
    let rows =
        w.c.query(
            &format!(
                "SELECT {LOOKED} FROM jobs \
                 WHERE finished_at < $1 AND (finished_at, key) > ($2, $3) \
                 ORDER BY finished_at, key LIMIT $4"
            ),
            &[
                &latest_cutoff,
                &after.finished_at,
                &after.key,
                &(looks.min(i64::MAX as usize) as i64),
            ],
        )
        .await
        .db()?;
    let seen = read_all(&rows)?;
    let scanned_all = seen.len() < looks;
    let mut doomed = Vec::new();
    // Workflows decided in this call: a workflow goes whole or not at all.
    let mut workflows: BTreeSet<String> = BTreeSet::new();
    let mut last = None;
    for d in seen {
        last = Some(PruneCursor {
            // Read through `finished_at < $1`: never null here.
            finished_at: d.finished_at.unwrap_or(Millis::MIN),
            key: d.key,
        });
        match &d.workflow {
            Some(wf) => {
                if !workflows.insert(wf.clone()) {
                    continue;
                }
                let rows =
                    w.c.query(
                        &format!("SELECT {LOOKED} FROM jobs WHERE workflow_id = $1"),
                        &[wf],
                    )
                    .await
                    .db()?;
                let all = read_all(&rows)?;
                if !all.iter().all(|j| j.due(req, newest)) {
                    continue;
                }
                doomed.extend(all);
            }
            None => {
                if !d.due(req, newest) {
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

/// Locks the chosen jobs and keeps those still due: a job another write changed since
/// it was read (a retry, a deletion) may no longer be, one that another write holds is
/// being changed (or pruned by another server), one with events still waiting for
/// their ids would leave them behind, and one that an unfinished job depends on is
/// still needed. A workflow with a job kept is kept whole.
async fn lock(w: &mut Work<'_>, req: &PruneRequest, chosen: Vec<Looked>) -> Result<Vec<Looked>> {
    if chosen.is_empty() {
        return Ok(chosen);
    }
    let keys: Vec<i64> = chosen.iter().map(|d| d.key).collect();
    let rows =
        w.c.query(
            &format!(
                "SELECT {LOOKED} FROM jobs WHERE key = ANY ($1) ORDER BY key \
                 FOR UPDATE SKIP LOCKED"
            ),
            &[&keys],
        )
        .await
        .db()?;
    let mut locked: BTreeMap<i64, Looked> =
        read_all(&rows)?.into_iter().map(|d| (d.key, d)).collect();
    let unsequenced: BTreeSet<i64> =
        w.c.query(
            "SELECT DISTINCT job_key FROM events WHERE job_key = ANY ($1) AND id IS NULL",
            &[&keys],
        )
        .await
        .db()?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let needed = needed_by_a_dependent(w, &keys).await?;
    let newest = newest(w).await?;
    let keep = |d: &Looked, now: Option<&Looked>| {
        now.is_none_or(|now| {
            !now.due(req, newest)
                || now.workflow != d.workflow
                || unsequenced.contains(&d.key)
                || needed.contains(&d.key)
        })
    };
    let kept_workflows: BTreeSet<String> = chosen
        .iter()
        .filter(|d| keep(d, locked.get(&d.key)))
        .filter_map(|d| d.workflow.clone())
        .collect();
    Ok(chosen
        .into_iter()
        .filter_map(|d| {
            let now = locked.remove(&d.key)?;
            let gone = !keep(&d, Some(&now))
                && d.workflow
                    .as_ref()
                    .is_none_or(|wf| !kept_workflows.contains(wf));
            gone.then_some(now)
        })
        .collect())
}

/// The jobs of `keys` that an unfinished job depends on. Read after their rows are
/// locked: a submit that adds an edge to one of them holds a key-share lock on it
/// until it commits, so its edge is seen here or the submit finds the job gone.
async fn needed_by_a_dependent(w: &mut Work<'_>, keys: &[i64]) -> Result<BTreeSet<i64>> {
    let rows =
        w.c.query(
            "SELECT DISTINCT edges.parent FROM edges JOIN jobs ON jobs.key = edges.child \
             WHERE edges.parent = ANY ($1) \
             AND jobs.state NOT IN ('completed', 'failed', 'cancelled', 'deleted')",
            &[&keys],
        )
        .await
        .db()?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}
