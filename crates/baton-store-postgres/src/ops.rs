//! The writes, each applied inside one [`Work`] (a transaction). A job's row is locked
//! (`FOR UPDATE`) before its state is read and changed, so two servers writing one
//! job take turns; claims skip rows another claim holds.

use std::sync::Arc;

use baton_core::{ErrorInfo, EventKind, Millis, NewJob, State, UniquePolicy, state};
use serde_json::{Value, json};

use crate::Db;
use crate::rows::{JOB_COLUMNS, JobRow, get_job, read_job};
use crate::work::Work;
use baton_store::{
    AppendLogs, Appended, Changes, ClaimRequest, Claimed, Error, JobProcess, Pipeline, Promoted,
    RecoverRequest, Recovered, Result, ServerInfo, Settle, Settled, StartNow, Submitted,
    Transition, Update,
};

/// The most scheduled jobs queued by one promotion.
const PROMOTE_BATCH: i64 = 10_000;

/// Whether a transition back to `queued` continues the interrupted attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resume {
    No,
    /// Recovery after a crash: counts towards `max_recoveries`.
    AfterCrash,
    /// A shutdown handed the job back: not a crash.
    AfterShutdown,
}

fn transition_error(id: &str, source: baton_core::TransitionError) -> Error {
    Error::Transition {
        id: id.to_owned(),
        source,
    }
}

pub async fn submit(
    w: &mut Work<'_>,
    jobs: &[NewJob],
    start: Option<&StartNow>,
) -> Result<Vec<Submitted>> {
    // Check every job before storing any: a refused batch must leave no trace.
    for new in jobs {
        state::check(None, new.state).map_err(|e| transition_error(new.id.as_str(), e))?;
    }
    if jobs.len() > 1
        && jobs
            .iter()
            .all(|j| j.unique_key.is_none() && j.depends_on.is_empty() && j.workflow_id.is_none())
    {
        return submit_plain(w, jobs, start).await;
    }
    let mut started = 0usize;
    let mut out = Vec::with_capacity(jobs.len());
    let mut edges = crate::deps::NewEdges::default();
    for new in jobs {
        if let Some(key) = &new.unique_key
            && let Some(existing) = unique(w, new, key, &mut edges).await?
        {
            out.push(existing);
            continue;
        }
        // Its dependencies decide the state it starts in.
        let prepared = crate::deps::prepare(w, new).await?;
        let adjusted;
        let new = match prepared.state {
            Some(state) => {
                adjusted = NewJob {
                    state,
                    ..new.clone()
                };
                &adjusted
            }
            None => new,
        };
        // A job a concurrency limit covers waits for a claim, which takes turns.
        let start_now = start.filter(|s| {
            new.state == State::Queued
                && started < s.max
                && !w.limits.iter().any(|l| l.covers(&new.kind, &new.labels))
        });
        let labels = (!new.labels.is_empty()).then(|| json!(new.labels));
        let running = start_now.is_some();
        // The id first: a taken one (a job of any state, or a concurrent submit's)
        // leaves the job unwritten.
        let fresh =
            w.c.execute(
                "INSERT INTO job_ids (id) VALUES ($1) ON CONFLICT DO NOTHING",
                &[&new.id.as_str()],
            )
            .await
            .db()?
                == 1;
        let row = if !fresh {
            None
        } else {
            w.c.query_opt(
                "INSERT INTO jobs (id, kind, queue, priority, state, payload, exec, labels, \
                 max_attempts, backoff_initial_ms, backoff_max_ms, timeout_ms, grace_ms, \
                 max_recoveries, event_seq, created_at, run_at, updated_at, \
                 attempt, fence, started_at, server_id, unique_key, search, \
                 deps_pending, workflow_id, workflow_name) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, \
                 $17, $16, $18::bigint, $18::bigint, $19, $20, $21, $22::text::tsvector, \
                 $23, $24, $25) RETURNING key",
                &[
                    &new.id.as_str(),
                    &new.kind,
                    &new.queue,
                    &new.priority,
                    &if running {
                        "running"
                    } else {
                        new.state.as_str()
                    },
                    &new.payload,
                    &new.exec,
                    &labels,
                    &(new.max_attempts as i32),
                    &(new.backoff.initial.as_millis() as i64),
                    &(new.backoff.max.as_millis() as i64),
                    &new.timeout.map(|t| t.as_millis() as i64),
                    &(new.grace.as_millis() as i64),
                    &(new.max_recoveries as i32),
                    &if running { 2i64 } else { 1i64 },
                    &new.created_at,
                    &new.run_at,
                    &i64::from(running),
                    &start_now.map(|_| new.created_at),
                    &start_now.map(|s| s.server_id.as_str()),
                    &new.unique_key,
                    &crate::search::vector(new.id.as_str(), &new.kind, &new.labels, None),
                    &prepared.pending,
                    &new.workflow_id,
                    &new.workflow_name,
                ],
            )
            .await
            .db()?
        };
        let Some(row) = row else {
            if new.workflow_id.is_some() {
                // A workflow's jobs are its own: an id taken elsewhere is refused.
                return Err(Error::JobExists(new.id.to_string()));
            }
            edges.write(w).await?;
            let existing = get_job(&*w.c, new.id.as_str())
                .await?
                .ok_or_else(|| Error::NotFound(new.id.to_string()))?;
            out.push(Submitted {
                job: existing.job,
                created: false,
                claimed: None,
            });
            continue;
        };
        let key: i64 = row.get(0);
        edges.add(key, &prepared);
        let (mut job, claimed) = created(w, new, key, start_now)?;
        if claimed.is_some() {
            started += 1;
        }
        crate::deps::settle_new(w, new, &prepared, &mut job).await?;
        out.push(Submitted {
            job,
            created: true,
            claimed,
        });
    }
    edges.write(w).await?;
    Ok(out)
}

/// Jobs with no unique key, dependency or workflow: inserted by one statement from
/// arrays, whatever their number. An id that exists already (or comes twice) is
/// answered with the stored job, as one by one.
async fn submit_plain(
    w: &mut Work<'_>,
    jobs: &[NewJob],
    start: Option<&StartNow>,
) -> Result<Vec<Submitted>> {
    let n = jobs.len();
    let ids: Vec<&str> = jobs.iter().map(|j| j.id.as_str()).collect();
    // Ids stored already are answered, not started: they take no start's place.
    let mut seen: std::collections::HashSet<String> = match start {
        None => Default::default(),
        Some(_) => {
            w.c.query("SELECT id FROM jobs WHERE id = ANY ($1)", &[&ids])
                .await
                .db()?
                .iter()
                .map(|r| r.get(0))
                .collect()
        }
    };
    let mut starting = Vec::with_capacity(n);
    let mut started = 0;
    for new in jobs {
        let first = seen.insert(new.id.to_string());
        let s = start.filter(|s| {
            first
                && new.state == State::Queued
                && started < s.max
                && !w.limits.iter().any(|l| l.covers(&new.kind, &new.labels))
        });
        started += usize::from(s.is_some());
        starting.push(s);
    }
    let running = |i: usize| starting[i].is_some();
    let kinds: Vec<&str> = jobs.iter().map(|j| j.kind.as_str()).collect();
    let queues: Vec<&str> = jobs.iter().map(|j| j.queue.as_str()).collect();
    let priorities: Vec<i32> = jobs.iter().map(|j| j.priority).collect();
    let states: Vec<&str> = (0..n)
        .map(|i| {
            if running(i) {
                "running"
            } else {
                jobs[i].state.as_str()
            }
        })
        .collect();
    let payloads: Vec<Option<&Value>> = jobs.iter().map(|j| j.payload.as_ref()).collect();
    let execs: Vec<Option<&Value>> = jobs.iter().map(|j| j.exec.as_ref()).collect();
    let labels: Vec<Option<Value>> = jobs
        .iter()
        .map(|j| (!j.labels.is_empty()).then(|| json!(j.labels)))
        .collect();
    let max_attempts: Vec<i32> = jobs.iter().map(|j| j.max_attempts as i32).collect();
    let initial: Vec<i64> = jobs
        .iter()
        .map(|j| j.backoff.initial.as_millis() as i64)
        .collect();
    let most: Vec<i64> = jobs
        .iter()
        .map(|j| j.backoff.max.as_millis() as i64)
        .collect();
    let timeouts: Vec<Option<i64>> = jobs
        .iter()
        .map(|j| j.timeout.map(|t| t.as_millis() as i64))
        .collect();
    let graces: Vec<i64> = jobs.iter().map(|j| j.grace.as_millis() as i64).collect();
    let recoveries: Vec<i32> = jobs.iter().map(|j| j.max_recoveries as i32).collect();
    let seqs: Vec<i64> = (0..n).map(|i| if running(i) { 2 } else { 1 }).collect();
    let created_at: Vec<i64> = jobs.iter().map(|j| j.created_at).collect();
    let run_at: Vec<Option<i64>> = jobs.iter().map(|j| j.run_at).collect();
    let attempts: Vec<i64> = (0..n).map(|i| i64::from(running(i))).collect();
    let started_at: Vec<Option<i64>> = (0..n)
        .map(|i| running(i).then_some(jobs[i].created_at))
        .collect();
    let servers: Vec<Option<&str>> = starting
        .iter()
        .map(|s| s.map(|s| s.server_id.as_str()))
        .collect();
    let searches: Vec<String> = jobs
        .iter()
        .map(|j| crate::search::vector(j.id.as_str(), &j.kind, &j.labels, None))
        .collect();
    let rows =
        w.c.query(
            // The ids go first; the jobs whose ids were free are written, the first
            // of each id in the batch.
            "WITH v AS (SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::int[], \
               $5::text[], $6::jsonb[], $7::jsonb[], $8::jsonb[], $9::int[], $10::bigint[], \
               $11::bigint[], $12::bigint[], $13::bigint[], $14::int[], $15::bigint[], \
               $16::bigint[], $17::bigint[], $18::bigint[], $19::bigint[], $20::text[], \
               $21::text[]) \
               WITH ORDINALITY AS v (id, kind, queue, priority, state, payload, exec, labels, \
               max_attempts, initial, most, timeout, grace, recoveries, seq, created_at, \
               run_at, attempt, started_at, server_id, search, ord)), \
             fresh AS (INSERT INTO job_ids (id) SELECT id FROM v ORDER BY ord \
               ON CONFLICT DO NOTHING RETURNING id) \
             INSERT INTO jobs (id, kind, queue, priority, state, payload, exec, labels, \
             max_attempts, backoff_initial_ms, backoff_max_ms, timeout_ms, grace_ms, \
             max_recoveries, event_seq, created_at, run_at, updated_at, attempt, fence, \
             started_at, server_id, search) \
             SELECT id, kind, queue, priority, state, payload, exec, labels, max_attempts, \
               initial, most, timeout, grace, recoveries, seq, created_at, run_at, created_at, \
               attempt, attempt, started_at, server_id, search::tsvector \
             FROM (SELECT DISTINCT ON (v.id) v.* FROM v JOIN fresh USING (id) \
               ORDER BY v.id, v.ord) AS first \
             ORDER BY ord RETURNING id, key",
            &[
                &ids,
                &kinds,
                &queues,
                &priorities,
                &states,
                &payloads,
                &execs,
                &labels,
                &max_attempts,
                &initial,
                &most,
                &timeouts,
                &graces,
                &recoveries,
                &seqs,
                &created_at,
                &run_at,
                &attempts,
                &started_at,
                &servers,
                &searches,
            ],
        )
        .await
        .db()?;
    let mut keys: std::collections::HashMap<String, i64> =
        rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    let mut out = Vec::with_capacity(n);
    for (i, new) in jobs.iter().enumerate() {
        // The first of an id that this statement inserted; later ones find it.
        match keys.remove(new.id.as_str()) {
            Some(key) => {
                let (job, claimed) = created(w, new, key, starting[i])?;
                out.push(Submitted {
                    job,
                    created: true,
                    claimed,
                });
            }
            None => {
                let existing = get_job(&*w.c, new.id.as_str())
                    .await?
                    .ok_or_else(|| Error::NotFound(new.id.to_string()))?;
                out.push(Submitted {
                    job: existing.job,
                    created: false,
                    claimed: None,
                });
            }
        }
    }
    Ok(out)
}

/// Records a job just inserted (key `key`): its count, its `job.submitted` event,
/// and its start when `start` is set (its `job.started`), and answers with the job as
/// stored and, when started, its claim.
fn created(
    w: &mut Work<'_>,
    new: &NewJob,
    key: i64,
    start: Option<&StartNow>,
) -> Result<(baton_core::Job, Option<Claimed>)> {
    let start_now = start;
    let running = start_now.is_some();
    w.moved(
        &new.queue,
        None,
        if running { State::Running } else { new.state },
        new.created_at,
    );
    w.event(
        Some((new.id.as_str(), key)),
        1,
        EventKind::Submitted,
        new.created_at,
        baton_store::new_job::submitted_data(new),
    );
    let runs = baton_core::Runs::describe(new.exec.as_ref(), new.timeout, new.grace, new.backoff);
    let mut job = baton_store::new_job::submitted_job(new, runs);
    let claimed = match start_now {
        None => None,
        Some(s) => {
            let (claimed, data) =
                baton_store::new_job::start_at_submit(&mut job, new, &s.server_id)?;
            w.event(
                Some((new.id.as_str(), key)),
                2,
                EventKind::Started,
                new.created_at,
                data,
            );
            Some(claimed)
        }
    };
    Ok((job, claimed))
}

/// A new job's unique key held by an active job: refused, answered with the holder,
/// or the holder cancelled, by the job's policy. `Some` answers the submit.
async fn unique(
    w: &mut Work<'_>,
    new: &NewJob,
    key: &str,
    edges: &mut crate::deps::NewEdges,
) -> Result<Option<Submitted>> {
    // A holder it replaces settles its dependents, which may be jobs of this submit.
    edges.write(w).await?;
    if let Some(existing) = get_job(&*w.c, new.id.as_str()).await? {
        return Ok(Some(Submitted {
            job: existing.job,
            created: false,
            claimed: None,
        }));
    }
    let holder =
        w.c.query_opt(
            &format!(
                "SELECT {JOB_COLUMNS} FROM jobs WHERE unique_key = $1 \
                 AND state NOT IN ('completed', 'failed', 'cancelled', 'deleted') FOR UPDATE"
            ),
            &[&key],
        )
        .await
        .db()?;
    let Some(holder) = holder.as_ref().map(read_job).transpose()? else {
        return Ok(None);
    };
    match new.unique_policy {
        UniquePolicy::Reject => Err(Error::UniqueHeld {
            key: key.to_owned(),
            holder: holder.job.id,
            state: holder.job.state,
        }),
        UniquePolicy::ReturnExisting => Ok(Some(Submitted {
            job: holder.job,
            created: false,
            claimed: None,
        })),
        UniquePolicy::Replace => {
            let e = ErrorInfo::new(
                "cancelled",
                format!(
                    "replaced by job {:?} with the same unique key",
                    new.id.as_str()
                ),
            );
            let t = Transition::new(
                holder.job.id.clone(),
                State::Cancelled,
                EventKind::Cancelled,
                new.created_at,
            )
            .data(json!({"reason": "replaced", "replaced_by": new.id.as_str()}))
            .changes(Changes {
                error: Some(e),
                ..Changes::default()
            });
            transition(w, &t, Resume::No, false).await?;
            Ok(None)
        }
    }
}

/// Moves up to `limit` queued jobs of the queue to `running`: the rows are picked
/// by priority and age from the partial index of queued jobs and locked, skipping
/// rows another claim holds, and updated in one statement. With concurrency limits
/// set, a claim whose first jobs include one that a limit covers picks under the
/// limits' lock ([`crate::limits::pick`]); any other passes over every covered job.
pub async fn claim(w: &mut Work<'_>, req: &ClaimRequest) -> Result<Vec<Claimed>> {
    state::check(Some(State::Queued), State::Running).map_err(|e| transition_error("", e))?;
    let limits = w.limits.clone();
    let columns = JOB_COLUMNS
        .split(", ")
        .map(|c| format!("jobs.{c}"))
        .collect::<Vec<_>>()
        .join(", ");
    let update = "UPDATE jobs SET state = 'running', fence = fence + 1, attempt = attempt + 1, \
                  started_at = $3, updated_at = $3, server_id = $4, event_seq = event_seq + 1 \
                  FROM picked WHERE jobs.key = picked.key";
    let base: [&(dyn tokio_postgres::types::ToSql + Sync); 5] = [
        &req.queue,
        &(req.limit as i64),
        &req.now,
        &req.server_id,
        &req.kinds,
    ];
    let rows = if !limits.is_empty() && crate::limits::meets_covered(w, req, &limits).await? {
        let keys = crate::limits::pick(w, req, &limits).await?;
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        w.c.query(
            &format!(
                "WITH picked AS MATERIALIZED ( \
                   SELECT key FROM jobs WHERE key = ANY ($2) AND queue = $1 \
                   AND state = 'queued' FOR NO KEY UPDATE SKIP LOCKED) \
                 {update} RETURNING {columns}"
            ),
            &[&req.queue, &keys, &req.now, &req.server_id],
        )
        .await
        .db()?
    } else {
        let mut args = base.to_vec();
        let mut exclude = String::new();
        let params: Vec<crate::limits::Param> = limits
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let (cond, p) = crate::limits::covered(l, 6 + i);
                exclude.push_str(&format!(" AND NOT ({cond})"));
                p
            })
            .collect();
        for p in &params {
            args.push(p.as_ref());
        }
        w.c.query(
            &format!(
                "WITH picked AS MATERIALIZED ( \
                   SELECT key FROM jobs WHERE queue = $1 AND state = 'queued' \
                   AND ($5::text[] IS NULL OR kind = ANY ($5)){exclude} \
                   ORDER BY priority DESC, key LIMIT $2 FOR NO KEY UPDATE SKIP LOCKED) \
                 {update} RETURNING {columns}"
            ),
            &args,
        )
        .await
        .db()?
    };
    let mut claimed: Vec<JobRow> = rows.iter().map(read_job).collect::<Result<_>>()?;
    // Workers start the most urgent first.
    claimed.sort_by(|a, b| b.job.priority.cmp(&a.job.priority).then(a.key.cmp(&b.key)));
    for row in &claimed {
        w.moved(&row.job.queue, Some(State::Queued), State::Running, req.now);
        let mut data = json!({"state": "running", "from": "queued", "attempt": row.job.attempt, "server_id": req.server_id});
        if let Some(wf) = &row.job.workflow_id {
            data["workflow"] = json!(wf);
        }
        // The attempt resumes from the job's last checkpoint: which one.
        if row.checkpoint.is_some()
            && let Some(last) = w
                .c
                .query_opt(
                    "SELECT seq, step FROM checkpoints WHERE job_key = $1 ORDER BY seq DESC LIMIT 1",
                    &[&row.key],
                )
                .await
                .db()?
        {
            let seq: i64 = last.get(0);
            let step: Option<String> = last.get(1);
            data["checkpoint"] = json!({"seq": seq, "step": step});
        }
        w.event(
            Some((&row.job.id, row.key)),
            row.event_seq,
            EventKind::Started,
            req.now,
            data,
        );
    }
    Ok(claimed.into_iter().map(JobRow::into_claimed).collect())
}

/// Each outcome in a savepoint of its own, so that one refused (a stale fencing
/// token) leaves the others; then the claim, with a slot for each attempt that ended.
pub async fn settle(w: &mut Work<'_>, s: &Settle) -> Result<Settled> {
    let mut outcomes = Vec::with_capacity(s.outcomes.len());
    if s.outcomes.len() > 1 && settle_together(w, &s.outcomes).await? {
        outcomes.resize_with(s.outcomes.len(), || Ok(()));
    }
    for transitions in s.outcomes.iter().skip(outcomes.len()) {
        let mark = w.savepoint().await?;
        let mut result = Ok(());
        for t in transitions.iter() {
            if let Err(e) = transition(w, t, Resume::No, false).await {
                result = Err(e);
                break;
            }
        }
        w.end_savepoint(mark, result.is_ok()).await?;
        outcomes.push(result);
    }
    let mut settled = Settled {
        outcomes,
        claimed: Vec::new(),
    };
    if let Some(claim_req) = &s.claim {
        let limit = claim_req.limit + settled.freed();
        if limit > 0 {
            settled.claimed = claim(
                w,
                &ClaimRequest {
                    limit,
                    ..claim_req.clone()
                },
            )
            .await?;
        }
    }
    Ok(settled)
}

/// The usual settle, written in three statements whatever its size: every outcome
/// one transition by its attempt (a fencing token, no expected state) of a job that
/// no other job depends on. The jobs' rows are locked together (in key order, as
/// every batch takes them, so two servers' batches do not deadlock), checked, and
/// changed by one `UPDATE` from arrays. False, having changed nothing, when an outcome
/// does not fit or would be refused: the caller then writes them one by one.
async fn settle_together(w: &mut Work<'_>, outcomes: &[Arc<[Transition]>]) -> Result<bool> {
    let mut ts: Vec<&Transition> = Vec::with_capacity(outcomes.len());
    for o in outcomes {
        match &o[..] {
            [t] if t.fence.is_some() && t.expect.is_none() && !t.changes.new_attempt_budget => {
                ts.push(t)
            }
            _ => return Ok(false),
        }
    }
    let ids: Vec<&str> = ts.iter().map(|t| t.job_id.as_str()).collect();
    let rows =
        w.c.query(
            "SELECT id, key, state, fence, event_seq, queue, workflow_id, kind, labels, \
             EXISTS (SELECT 1 FROM edges WHERE parent = jobs.key) \
             FROM jobs WHERE id = ANY ($1) ORDER BY key FOR UPDATE",
            &[&ids],
        )
        .await
        .db()?;
    let found: std::collections::HashMap<String, &tokio_postgres::Row> =
        rows.iter().map(|r| (r.get::<_, String>(0), r)).collect();
    if found.len() != ts.len() {
        return Ok(false); // a job missing, or one job twice
    }
    let n = ts.len();
    let mut keys = Vec::with_capacity(n);
    let mut states = Vec::with_capacity(n);
    let mut nows = Vec::with_capacity(n);
    let mut seqs = Vec::with_capacity(n);
    let mut results: Vec<Option<Value>> = Vec::with_capacity(n);
    let mut codes: Vec<Option<&str>> = Vec::with_capacity(n);
    let mut messages: Vec<Option<&str>> = Vec::with_capacity(n);
    let mut scheduled = Vec::with_capacity(n);
    let mut run_ats = Vec::with_capacity(n);
    let mut completed = Vec::with_capacity(n);
    let mut terminal = Vec::with_capacity(n);
    let mut clear = Vec::with_capacity(n);
    let mut searches: Vec<Option<String>> = Vec::with_capacity(n);
    let mut usages: Vec<Option<Value>> = Vec::with_capacity(n);
    let mut checked = Vec::with_capacity(n);
    for t in &ts {
        let r = found[&t.job_id];
        let from = crate::rows::state(r.get(2))?;
        let fence: i64 = r.get(3);
        let has_dependents: bool = r.get(9);
        if has_dependents
            || Some(fence as u64) != t.fence
            || !from.is_executing()
            || state::check(Some(from), t.to).is_err()
        {
            return Ok(false);
        }
        let c = &t.changes;
        let search = (c.error.is_some() || t.to == State::Completed).then(|| {
            let labels: std::collections::BTreeMap<String, String> = r
                .get::<_, Option<Value>>(8)
                .and_then(|v| serde_json::from_value(v).ok())
                .unwrap_or_default();
            crate::search::vector(&t.job_id, r.get(7), &labels, c.error.as_ref())
        });
        let key: i64 = r.get(1);
        let seq = r.get::<_, i64>(4) + 1;
        keys.push(key);
        states.push(t.to.as_str());
        nows.push(t.now);
        seqs.push(seq);
        results.push(c.result.clone());
        codes.push(c.error.as_ref().map(|e| e.code.as_str()));
        messages.push(c.error.as_ref().map(|e| e.message.as_str()));
        scheduled.push(t.to == State::Scheduled);
        run_ats.push(c.run_at);
        completed.push(t.to == State::Completed);
        terminal.push(t.to.is_terminal());
        clear.push(c.clear_checkpoint);
        searches.push(search);
        usages.push(c.usage.as_ref().map(|u| json!(u)));
        checked.push((
            key,
            from,
            seq,
            r.get::<_, String>(5),
            r.get::<_, Option<String>>(6),
        ));
    }
    // The same changes as `transition`'s statement (no new attempt budget, no resume).
    w.c.execute(
        "UPDATE jobs SET state = v.state, updated_at = v.now, event_seq = v.seq, \
         result = COALESCE(v.result, jobs.result), \
         error_code = CASE WHEN v.code IS NOT NULL THEN v.code WHEN v.completed THEN NULL ELSE jobs.error_code END, \
         error_message = CASE WHEN v.code IS NOT NULL THEN v.message WHEN v.completed THEN NULL ELSE jobs.error_message END, \
         run_at = CASE WHEN v.scheduled THEN v.run_at ELSE jobs.run_at END, \
         finished_at = CASE WHEN v.terminal THEN COALESCE(jobs.finished_at, v.now) ELSE jobs.finished_at END, \
         progress = CASE WHEN v.completed THEN 1.0 ELSE jobs.progress END, \
         checkpoint = CASE WHEN v.clear THEN NULL ELSE jobs.checkpoint END, \
         search = COALESCE(v.search::tsvector, jobs.search), \
         usage = COALESCE(v.usage, jobs.usage) \
         FROM unnest($1::bigint[], $2::text[], $3::bigint[], $4::bigint[], $5::jsonb[], \
           $6::text[], $7::text[], $8::bool[], $9::bigint[], $10::bool[], $11::bool[], \
           $12::bool[], $13::text[], $14::jsonb[]) \
           AS v (key, state, now, seq, result, code, message, scheduled, run_at, completed, \
           terminal, clear, search, usage) \
         WHERE jobs.key = v.key",
        &[
            &keys, &states, &nows, &seqs, &results, &codes, &messages, &scheduled, &run_ats,
            &completed, &terminal, &clear, &searches, &usages,
        ],
    )
    .await
    .db()?;
    for (t, (key, from, seq, queue, workflow)) in ts.iter().zip(checked) {
        w.moved(&queue, Some(from), t.to, t.now);
        let mut data = t.data.clone();
        if let Value::Object(map) = &mut data {
            map.insert("state".into(), json!(t.to));
            map.insert("from".into(), json!(from));
            if let Some(wf) = workflow {
                map.insert("workflow".into(), json!(wf));
            }
        }
        w.event(Some((&t.job_id, key)), seq as u64, t.event, t.now, data);
    }
    Ok(true)
}

/// Moves one job to `t.to` and records its event. The job is read back only when
/// `read_back` is set.
pub async fn transition(
    w: &mut Work<'_>,
    t: &Transition,
    resume: Resume,
    read_back: bool,
) -> Result<Option<JobRow>> {
    let found =
        w.c.query_opt(
            "SELECT key, state, fence, event_seq, queue, workflow_id, kind, labels FROM jobs \
             WHERE id = $1 FOR UPDATE",
            &[&t.job_id],
        )
        .await
        .db()?;
    let Some(found) = found else {
        return Err(Error::NotFound(t.job_id.clone()));
    };
    let key: i64 = found.get(0);
    let from = crate::rows::state(found.get(1))?;
    let fence: i64 = found.get(2);
    let event_seq: i64 = found.get(3);
    let queue: String = found.get(4);
    let workflow: Option<String> = found.get(5);
    if let Some(expected) = t.fence
        && (fence as u64 != expected || !from.is_executing())
    {
        return Err(Error::StaleFence {
            id: t.job_id.clone(),
            fence: expected,
        });
    }
    if let Some(expect) = &t.expect
        && !expect.contains(&from)
    {
        let names: Vec<&str> = expect.iter().map(|s| s.as_str()).collect();
        return Err(Error::Conflict {
            id: t.job_id.clone(),
            actual: from,
            expected: names.join(" or "),
        });
    }
    state::check(Some(from), t.to).map_err(|e| transition_error(&t.job_id, e))?;

    let c = &t.changes;
    let event_seq = event_seq + 1;
    // The error is a part of what the search finds: its words follow it.
    let clears = c.new_attempt_budget || t.to == State::Completed;
    let search = (c.error.is_some() || clears).then(|| {
        let labels: std::collections::BTreeMap<String, String> = found
            .get::<_, Option<Value>>(7)
            .and_then(|v| serde_json::from_value(v).ok())
            .unwrap_or_default();
        crate::search::vector(&t.job_id, found.get(6), &labels, c.error.as_ref())
    });
    // What a transition changes, in one statement; the CASEs keep what it leaves.
    // A manual retry (`budget`) starts a fresh attempt budget and clears the last
    // outcome; completing clears an earlier attempt's error.
    // It returns whether the job has dependents, read after the row was locked: no
    // edge to it can appear until this write ends (see `deps.rs`).
    let dependents: bool = w.c.query_one(
        "UPDATE jobs SET state = $2, updated_at = $3, event_seq = $4, \
         attempt_base = CASE WHEN $5 THEN attempt ELSE attempt_base END, \
         result = CASE WHEN $6::jsonb IS NOT NULL THEN $6 WHEN $5 THEN NULL ELSE result END, \
         error_code = CASE WHEN $7::text IS NOT NULL THEN $7 WHEN $5 OR $11 THEN NULL ELSE error_code END, \
         error_message = CASE WHEN $7::text IS NOT NULL THEN $8 WHEN $5 OR $11 THEN NULL ELSE error_message END, \
         run_at = CASE WHEN $9 THEN $10 ELSE run_at END, \
         finished_at = CASE WHEN $12 THEN COALESCE(finished_at, $3) WHEN $5 THEN NULL ELSE finished_at END, \
         progress = CASE WHEN $11 THEN 1.0 WHEN $5 THEN NULL ELSE progress END, \
         message = CASE WHEN $5 THEN NULL ELSE message END, \
         step = CASE WHEN $5 THEN NULL ELSE step END, \
         checkpoint = CASE WHEN $13 THEN NULL ELSE checkpoint END, \
         attempt = GREATEST(attempt - $14, 0), \
         recoveries = recoveries + $15, \
         search = COALESCE($16::text::tsvector, search), \
         usage = COALESCE($17::jsonb, usage) \
         WHERE key = $1 RETURNING EXISTS (SELECT 1 FROM edges WHERE parent = $1)",
        &[
            &key,
            &t.to.as_str(),
            &t.now,
            &event_seq,
            &c.new_attempt_budget,
            &c.result,
            &c.error.as_ref().map(|e| e.code.as_str()),
            &c.error.as_ref().map(|e| e.message.as_str()),
            &(t.to == State::Scheduled),
            &c.run_at,
            &(t.to == State::Completed),
            &t.to.is_terminal(),
            &c.clear_checkpoint,
            // The next claim continues the interrupted attempt: give its number back.
            &i32::from(resume != Resume::No),
            &i32::from(resume == Resume::AfterCrash),
            &search,
            &c.usage.as_ref().map(|u| json!(u)),
        ],
    )
    .await
    .db()?
    .get(0);
    w.moved(&queue, Some(from), t.to, t.now);
    let mut data = t.data.clone();
    if let Value::Object(map) = &mut data {
        map.insert("state".into(), json!(t.to));
        map.insert("from".into(), json!(from));
        if let Some(wf) = workflow {
            map.insert("workflow".into(), json!(wf));
        }
    }
    w.event(
        Some((&t.job_id, key)),
        event_seq as u64,
        t.event,
        t.now,
        data,
    );
    // Its dependents learn of its end in this same write.
    if dependents {
        crate::deps::after_transition(w, key, &t.job_id, from, t.to, t.now).await?;
    }
    if read_back {
        get_job(&*w.c, &t.job_id).await
    } else {
        Ok(None)
    }
}

/// The job's row key, event sequence and attempt, if the attempt holding `fence`
/// still executes it; the row stays locked until the write ends.
pub async fn fenced(w: &mut Work<'_>, job_id: &str, fence: u64) -> Result<(i64, u64, u32)> {
    let found =
        w.c.query_opt(
            "SELECT key, state, fence, event_seq, attempt FROM jobs WHERE id = $1 FOR UPDATE",
            &[&job_id],
        )
        .await
        .db()?;
    let Some(r) = found else {
        return Err(Error::NotFound(job_id.to_owned()));
    };
    let state = crate::rows::state(r.get(1))?;
    if r.get::<_, i64>(2) as u64 != fence || !state.is_executing() {
        return Err(Error::StaleFence {
            id: job_id.to_owned(),
            fence,
        });
    }
    Ok((
        r.get(0),
        r.get::<_, i64>(3) as u64,
        r.get::<_, i32>(4) as u32,
    ))
}

pub async fn update(
    w: &mut Work<'_>,
    job_id: &str,
    fence: u64,
    now: Millis,
    update: &Update,
) -> Result<()> {
    let (key, event_seq, attempt) = fenced(w, job_id, fence).await?;
    let seq = (event_seq + 1) as i64;
    let (kind, data) = match update {
        Update::Progress { fraction, message } => {
            w.c.execute(
                "UPDATE jobs SET progress = COALESCE($2, progress), message = $3, \
                 event_seq = $4, updated_at = $5 WHERE key = $1",
                &[&key, fraction, message, &seq, &now],
            )
            .await
            .db()?;
            (
                EventKind::Progress,
                json!({"progress": fraction, "message": message}),
            )
        }
        Update::Step(name) => {
            w.c.execute(
                "UPDATE jobs SET step = $2, event_seq = $3, updated_at = $4 WHERE key = $1",
                &[&key, name, &seq, &now],
            )
            .await
            .db()?;
            (EventKind::Step, json!({"step": name}))
        }
        Update::Output(text) => {
            w.c.execute(
                "UPDATE jobs SET event_seq = $2 WHERE key = $1",
                &[&key, &seq],
            )
            .await
            .db()?;
            (EventKind::Output, json!({"text": text}))
        }
        Update::Checkpoint { data, step } => {
            w.c.execute(
                "UPDATE jobs SET checkpoint = $2, event_seq = $3, updated_at = $4 WHERE key = $1",
                &[&key, data, &seq, &now],
            )
            .await
            .db()?;
            w.c.execute(
                "INSERT INTO checkpoints (job_key, seq, attempt, step, data, at) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
                &[&key, &seq, &(attempt as i32), step, data, &now],
            )
            .await
            .db()?;
            (
                EventKind::Checkpoint,
                json!({"checkpoint": data, "step": step, "attempt": attempt}),
            )
        }
        Update::Usage(usage) => {
            let data = json!(usage);
            w.c.execute(
                "UPDATE jobs SET usage = $2, event_seq = $3 WHERE key = $1",
                &[&key, &data, &seq],
            )
            .await
            .db()?;
            (EventKind::Usage, data)
        }
    };
    w.event(Some((job_id, key)), seq as u64, kind, now, data);
    Ok(())
}

pub async fn append_logs(w: &mut Work<'_>, req: &AppendLogs) -> Result<Appended> {
    let (key, event_seq, attempt) = fenced(w, &req.job_id, req.fence).await?;
    let r =
        w.c.query_one(
            "SELECT log_lines, log_full FROM jobs WHERE key = $1",
            &[&key],
        )
        .await
        .db()?;
    let (count, full): (i64, bool) = (r.get(0), r.get(1));
    if full {
        return Ok(Appended {
            stored: 0,
            full: true,
        });
    }
    let count = count as u64;
    let room = req.max_lines.saturating_sub(count) as usize;
    let take = room.min(req.lines.len());
    let mut lines: Vec<(String, String, bool)> = req.lines[..take]
        .iter()
        .map(|(stream, line)| (stream.clone(), line.clone(), false))
        .collect();
    let overflow = take < req.lines.len();
    if overflow {
        lines.push((
            "baton".into(),
            format!(
                "log truncated: the job printed more than {} lines; later lines are not kept",
                req.max_lines
            ),
            true,
        ));
    }
    let (mut seqs, mut streams, mut texts) = (Vec::new(), Vec::new(), Vec::new());
    let mut seq = count as i64;
    let mut event_seq = event_seq;
    for (stream, line, truncated) in &lines {
        seq += 1;
        event_seq += 1;
        seqs.push(seq);
        streams.push(stream.as_str());
        texts.push(line.as_str());
        let mut data = json!({"stream": stream, "line": line, "seq": seq});
        if *truncated {
            data["truncated"] = json!(true);
        }
        w.event(
            Some((&req.job_id, key)),
            event_seq,
            EventKind::Log,
            req.now,
            data,
        );
    }
    w.c.execute(
        "INSERT INTO logs (job_key, seq, attempt, stream, line, at) \
         SELECT $1, s, $2, st, l, $3 FROM unnest($4::bigint[], $5::text[], $6::text[]) AS x (s, st, l)",
        &[&key, &(attempt as i32), &req.now, &seqs, &streams, &texts],
    )
    .await
    .db()?;
    w.c.execute(
        "UPDATE jobs SET log_lines = $2, log_full = $3, event_seq = $4 WHERE key = $1",
        &[&key, &seq, &overflow, &(event_seq as i64)],
    )
    .await
    .db()?;
    Ok(Appended {
        stored: take,
        full: overflow,
    })
}

pub async fn set_process(
    w: &mut Work<'_>,
    job_id: &str,
    fence: u64,
    process: Option<JobProcess>,
) -> Result<()> {
    let (key, ..) = fenced(w, job_id, fence).await?;
    w.c.execute(
        "UPDATE jobs SET pgid = $2, proc_start = $3 WHERE key = $1",
        &[
            &key,
            &process.map(|p| p.pgid),
            &process.map(|p| p.start_time as i64),
        ],
    )
    .await
    .db()?;
    Ok(())
}

pub async fn put_pipeline(
    w: &mut Work<'_>,
    spec: &baton_core::PipelineSpec,
    now: Millis,
) -> Result<Pipeline> {
    let text = serde_json::to_value(spec)
        .map_err(|e| Error::Internal(format!("cannot encode pipeline {:?}: {e}", spec.id)))?;
    let created_at: Millis =
        w.c.query_one(
            "INSERT INTO pipelines (id, spec, created_at, updated_at) VALUES ($1, $2, $3, $3) \
             ON CONFLICT (id) DO UPDATE SET spec = excluded.spec, updated_at = excluded.updated_at \
             RETURNING created_at",
            &[&spec.id, &text, &now],
        )
        .await
        .db()?
        .get(0);
    Ok(Pipeline {
        spec: spec.clone(),
        created_at,
        updated_at: now,
    })
}

pub async fn promote(w: &mut Work<'_>, now: Millis) -> Result<Promoted> {
    state::check(Some(State::Scheduled), State::Queued).map_err(|e| transition_error("", e))?;
    let rows =
        w.c.query(
            "WITH due AS MATERIALIZED ( \
               SELECT key FROM jobs WHERE state = 'scheduled' AND run_at <= $1 \
               ORDER BY run_at LIMIT $2 FOR NO KEY UPDATE SKIP LOCKED) \
             UPDATE jobs SET state = 'queued', updated_at = $1, event_seq = event_seq + 1 \
             FROM due WHERE jobs.key = due.key \
             RETURNING jobs.id, jobs.queue, jobs.event_seq, jobs.key, jobs.workflow_id",
            &[&now, &PROMOTE_BATCH],
        )
        .await
        .db()?;
    let mut queues: Vec<String> = Vec::new();
    for r in &rows {
        let (id, queue, seq, key, workflow): (String, String, i64, i64, Option<String>) =
            (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4));
        w.moved(&queue, Some(State::Scheduled), State::Queued, now);
        let mut data = json!({"state": "queued", "from": "scheduled"});
        if let Some(wf) = workflow {
            data["workflow"] = json!(wf);
        }
        w.event(Some((&id, key)), seq as u64, EventKind::Queued, now, data);
        if !queues.contains(&queue) {
            queues.push(queue);
        }
    }
    let next_due = if rows.len() as i64 >= PROMOTE_BATCH {
        Some(now)
    } else {
        crate::read::next_due(&*w.c).await?
    };
    Ok(Promoted {
        queues,
        count: rows.len(),
        next_due,
    })
}

pub async fn recover(w: &mut Work<'_>, req: &RecoverRequest) -> Result<Vec<Recovered>> {
    let rows =
        w.c.query(
            &format!(
                "SELECT {JOB_COLUMNS} FROM jobs WHERE state IN ('running', 'paused', 'stopping') \
                 AND ($1::text IS NULL OR server_id = $1) \
                 AND ($2::text[] IS NULL OR id = ANY ($2)) ORDER BY key FOR UPDATE"
            ),
            &[&req.server_id, &req.jobs],
        )
        .await
        .db()?;
    let stranded: Vec<JobRow> = rows.iter().map(read_job).collect::<Result<_>>()?;
    // The processes of these jobs are gone (the engine killed what was left): a
    // later recovery must not look for them again.
    w.c.execute(
        "UPDATE jobs SET pgid = NULL, proc_start = NULL \
         WHERE state IN ('running', 'paused', 'stopping') AND pgid IS NOT NULL \
         AND ($1::text IS NULL OR server_id = $1) AND ($2::text[] IS NULL OR id = ANY ($2))",
        &[&req.server_id, &req.jobs],
    )
    .await
    .db()?;
    let mut out = Vec::with_capacity(stranded.len());
    for row in stranded {
        let was = row.job.state;
        let id = row.job.id.clone();
        let cleanup = req.cleanup.get(&id);
        let with_cleanup = |mut data: Value| {
            if let (Value::Object(map), Some(Value::Object(extra))) = (&mut data, cleanup) {
                map.extend(extra.clone());
            }
            data
        };
        let t = |to, event| Transition::new(id.clone(), to, event, req.now);
        let mut crashed = crate::crash::facts(w, row.key, &row).await?;
        crashed.insert(
            "reason".into(),
            json!("the engine stopped while the job ran"),
        );
        crashed.insert("was".into(), json!(was));
        transition(
            w,
            &t(State::Crashed, EventKind::Crashed).data(with_cleanup(Value::Object(crashed))),
            Resume::No,
            false,
        )
        .await?;
        let now = if was == State::Stopping {
            let e = ErrorInfo::new(
                "cancelled",
                "stopped by a user; the engine stopped while the job wound down",
            );
            let cancel = t(State::Cancelled, EventKind::Cancelled)
                .data(json!({"reason": "stopped"}))
                .changes(Changes {
                    error: Some(e),
                    ..Default::default()
                });
            transition(w, &cancel, Resume::No, false).await?;
            State::Cancelled
        } else if row.job.recoveries >= row.job.max_recoveries {
            let e = ErrorInfo::new(
                "crashed",
                format!(
                    "the job was recovered after a crash {} times (max_recoveries is {})",
                    row.job.recoveries, row.job.max_recoveries
                ),
            );
            let fail = t(State::Failed, EventKind::Failed)
                .data(json!({"error": e}))
                .changes(Changes {
                    error: Some(e.clone()),
                    ..Default::default()
                });
            transition(w, &fail, Resume::No, false).await?;
            State::Failed
        } else if req.manual {
            State::Crashed
        } else {
            let queue = t(State::Queued, EventKind::Recovered).data(with_cleanup(json!({
                "from_checkpoint": row.checkpoint.is_some(),
                "recoveries": row.job.recoveries + 1,
            })));
            transition(w, &queue, Resume::AfterCrash, false).await?;
            State::Queued
        };
        out.push(Recovered {
            job_id: id,
            queue: row.job.queue,
            was,
            now,
        });
    }
    Ok(out)
}

/// At shutdown: this server's running and paused jobs go back to the queue to
/// continue from their checkpoints (no crash is counted); stopping jobs end.
pub async fn release(w: &mut Work<'_>, server_id: &str, now: Millis) -> Result<Vec<Recovered>> {
    let rows =
        w.c.query(
            &format!(
                "SELECT {JOB_COLUMNS} FROM jobs WHERE state IN ('running', 'paused', 'stopping') \
                 AND server_id = $1 ORDER BY key FOR UPDATE"
            ),
            &[&server_id],
        )
        .await
        .db()?;
    let held: Vec<JobRow> = rows.iter().map(read_job).collect::<Result<_>>()?;
    let mut out = Vec::with_capacity(held.len());
    for row in held {
        let was = row.job.state;
        let id = row.job.id.clone();
        let now_state = if was == State::Stopping {
            let e = ErrorInfo::new("cancelled", "stopped by a user");
            let t = Transition::new(id.clone(), State::Cancelled, EventKind::Cancelled, now)
                .data(json!({"reason": "stopped"}))
                .changes(Changes {
                    error: Some(e),
                    ..Default::default()
                });
            transition(w, &t, Resume::No, false).await?;
            State::Cancelled
        } else {
            if was == State::Paused {
                let t = Transition::new(id.clone(), State::Running, EventKind::Resumed, now)
                    .data(json!({"reason": "shutdown"}));
                transition(w, &t, Resume::No, false).await?;
            }
            let t = Transition::new(id.clone(), State::Queued, EventKind::Queued, now)
                .data(json!({"reason": "shutdown", "from_checkpoint": row.checkpoint.is_some()}));
            transition(w, &t, Resume::AfterShutdown, false).await?;
            State::Queued
        };
        out.push(Recovered {
            job_id: id,
            queue: row.job.queue,
            was,
            now: now_state,
        });
    }
    Ok(out)
}

pub async fn register_server(w: &mut Work<'_>, s: &ServerInfo) -> Result<()> {
    w.c.execute(
        "INSERT INTO servers (id, host, pid, url, started_at, heartbeat_at, stopped_at, queues, \
         workers) VALUES ($1, $2, $3, $4, $5, $6, NULL, $7, $8) \
         ON CONFLICT (id) DO UPDATE SET host = excluded.host, pid = excluded.pid, \
         url = excluded.url, started_at = excluded.started_at, \
         heartbeat_at = excluded.heartbeat_at, stopped_at = NULL, queues = excluded.queues, \
         workers = excluded.workers, alive_at = now()",
        &[
            &s.id,
            &s.host,
            &(s.pid as i32),
            &s.url,
            &s.started_at,
            &s.heartbeat_at,
            &json!(s.queues),
            &(s.workers as i32),
        ],
    )
    .await
    .db()?;
    w.event(
        None,
        0,
        EventKind::ServerUp,
        s.started_at,
        json!({"server_id": s.id, "host": s.host, "pid": s.pid}),
    );
    Ok(())
}

pub async fn server_stopped(w: &mut Work<'_>, id: &str, now: Millis) -> Result<()> {
    w.c.execute(
        "UPDATE servers SET stopped_at = $2, heartbeat_at = $2 WHERE id = $1",
        &[&id, &now],
    )
    .await
    .db()?;
    w.event(
        None,
        0,
        EventKind::ServerDown,
        now,
        json!({"server_id": id}),
    );
    Ok(())
}

pub async fn declare_gone(
    w: &mut Work<'_>,
    id: &str,
    after: std::time::Duration,
    now: Millis,
) -> Result<bool> {
    let n =
        w.c.execute(
            "UPDATE servers SET stopped_at = $2, heartbeat_at = $2 \
             WHERE id = $1 AND stopped_at IS NULL \
             AND alive_at < now() - $3 * interval '1 millisecond'",
            &[&id, &now, &(after.as_millis() as f64)],
        )
        .await
        .db()?;
    if n == 0 {
        return Ok(false);
    }
    w.event(
        None,
        0,
        EventKind::ServerDown,
        now,
        json!({"server_id": id}),
    );
    Ok(true)
}

pub async fn set_queue_paused(
    w: &mut Work<'_>,
    queue: &str,
    paused: bool,
    now: Millis,
) -> Result<bool> {
    let was: Option<bool> =
        w.c.query_opt(
            "SELECT paused FROM queues WHERE name = $1 FOR UPDATE",
            &[&queue],
        )
        .await
        .db()?
        .map(|r| r.get(0));
    if was.unwrap_or(false) == paused {
        return Ok(false);
    }
    w.c.execute(
        "INSERT INTO queues (name, paused, updated_at) VALUES ($1, $2, $3) \
         ON CONFLICT (name) DO UPDATE SET paused = excluded.paused, updated_at = excluded.updated_at",
        &[&queue, &paused, &now],
    )
    .await
    .db()?;
    let kind = if paused {
        EventKind::QueuePaused
    } else {
        EventKind::QueueResumed
    };
    w.event(None, 0, kind, now, json!({"queue": queue}));
    Ok(true)
}
