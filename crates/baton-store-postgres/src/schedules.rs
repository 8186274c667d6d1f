//! Schedules: their writes and reads. A fire is one write: its jobs, its history rows,
//! its `schedule.fired` events and the schedule's new next run commit together or not
//! at all. The schedule's row is locked (`FOR UPDATE`) before its revision is checked,
//! so two servers firing one schedule take turns, and the second finds the revision
//! the first made and is refused.

use baton_core::schedule::{LastJob, Overlap, ScheduleSpec};
use baton_core::{ErrorInfo, EventKind, Job, Millis, NewJob, Schedule, State};
use serde_json::{Value, json};
use tokio_postgres::{GenericClient, Row};

use crate::Db;
use crate::ops::{self, Resume};
use crate::rows::state;
use crate::work::Work;
use baton_store::{
    Error, Fire, FireAction, FireOutcome, FirePage, FireReason, FireRecord, Fired, NewSchedule,
    PutSchedule, Released, Result, ScheduleFilter, SchedulePage, ScheduleTimer, Transition,
};

/// Every column a schedule row is read with, in the order [`read_schedule`] expects;
/// the last two are its newest job and that job's state.
const SCHEDULE_COLUMNS: &str = "key, id, spec, enabled, next_run, last_run, run_count, \
    version, created_at, updated_at, fire_seq, \
    (SELECT job_id FROM schedule_fires f WHERE f.schedule_id = schedules.id \
       AND f.job_id IS NOT NULL ORDER BY f.seq DESC LIMIT 1), \
    (SELECT state FROM jobs WHERE jobs.id = (SELECT job_id FROM schedule_fires f \
       WHERE f.schedule_id = schedules.id AND f.job_id IS NOT NULL ORDER BY f.seq DESC LIMIT 1))";

/// Active states: the jobs an overlap policy waits for. Written as the condition of
/// the `jobs_schedule_active` index, so that the planner can use it.
const ACTIVE: &str = "state NOT IN ('completed', 'failed', 'cancelled', 'deleted')";

/// A schedule row with the columns clients do not see.
struct ScheduleRow {
    schedule: Schedule,
    key: i64,
    fire_seq: u64,
}

/// A revision that never repeats: the row's key (never reused) and its version.
fn rev(key: i64, version: i64) -> u64 {
    ((key as u64) << 32) | (version as u64 & 0xffff_ffff)
}

fn read_schedule(r: &Row) -> Result<ScheduleRow> {
    let key: i64 = r.get(0);
    let id: String = r.get(1);
    let spec: ScheduleSpec = serde_json::from_value(r.get::<_, Value>(2)).map_err(|e| {
        Error::Internal(format!(
            "the stored spec of schedule {id:?} cannot be read: {e}"
        ))
    })?;
    let last_job = match r.get::<_, Option<String>>(11) {
        Some(job) => Some(LastJob {
            id: job,
            state: r.get::<_, Option<&str>>(12).map(state).transpose()?,
        }),
        None => None,
    };
    let schedule = Schedule {
        id,
        job: spec.job,
        timezone: spec.timezone.unwrap_or_else(|| "UTC".into()),
        trigger: spec.trigger,
        enabled: r.get(3),
        misfire: spec.misfire.unwrap_or_default(),
        misfire_limit: spec
            .misfire_limit
            .unwrap_or(baton_core::schedule::DEFAULT_MISFIRE_LIMIT),
        overlap: spec.overlap.unwrap_or_default(),
        next_run: r.get(4),
        last_run: r.get(5),
        run_count: r.get::<_, i64>(6) as u64,
        last_job,
        created_at: r.get(8),
        updated_at: r.get(9),
        rev: rev(key, r.get(7)),
    };
    Ok(ScheduleRow {
        schedule,
        key,
        fire_seq: r.get::<_, i64>(10) as u64,
    })
}

async fn schedule_row(c: &impl GenericClient, id: &str) -> Result<Option<ScheduleRow>> {
    let row = c
        .query_opt(
            &format!("SELECT {SCHEDULE_COLUMNS} FROM schedules WHERE id = $1"),
            &[&id],
        )
        .await
        .db()?;
    row.as_ref().map(read_schedule).transpose()
}

/// Locks the schedule's row until the write ends, then reads it in a statement of its
/// own: one that waited for the lock sees what the write before it committed (its
/// fires too, not only the row).
async fn locked(w: &mut Work<'_>, id: &str) -> Result<Option<ScheduleRow>> {
    let found =
        w.c.query_opt("SELECT key FROM schedules WHERE id = $1 FOR UPDATE", &[&id])
            .await
            .db()?;
    if found.is_none() {
        return Ok(None);
    }
    schedule_row(&*w.c, id).await
}

async fn schedule_now(w: &Work<'_>, id: &str) -> Result<Schedule> {
    schedule_row(&*w.c, id)
        .await?
        .map(|r| r.schedule)
        .ok_or_else(|| Error::Internal(format!("schedule {id:?} vanished in its write")))
}

pub async fn put_schedule(w: &mut Work<'_>, s: &NewSchedule, replace: bool) -> Result<PutSchedule> {
    let id = s
        .spec
        .id
        .clone()
        .ok_or_else(|| Error::Internal("a schedule to store has no id".into()))?;
    let enabled = s.spec.enabled.unwrap_or(true);
    // The id and the enabled flag live in their own columns.
    let mut stored = s.spec.clone();
    stored.id = None;
    stored.enabled = None;
    let spec = serde_json::to_value(&stored)
        .map_err(|e| Error::Internal(format!("cannot encode schedule {id:?}: {e}")))?;
    let existing = locked(w, &id).await?;
    match &existing {
        Some(row) if !replace => {
            return Ok(PutSchedule {
                schedule: row.schedule.clone(),
                created: false,
            });
        }
        Some(row) => {
            // Putting the same timing again must not move (or repeat) a run: the next
            // run stays, decided under the row's lock where no fire can slip in.
            let old = &row.schedule;
            let same_timing = old.enabled == enabled
                && old.trigger == s.spec.trigger
                && Some(&old.timezone) == s.spec.timezone.as_ref();
            let next_run = if same_timing {
                old.next_run
            } else {
                s.next_run
            };
            w.c.execute(
                "UPDATE schedules SET spec = $2, enabled = $3, next_run = $4, \
                 version = version + 1, updated_at = $5 WHERE key = $1",
                &[&row.key, &spec, &enabled, &next_run, &s.now],
            )
            .await
            .db()?;
        }
        None => {
            // Two creates of one id at once: the second waits on the unique index and
            // fails with a unique violation, and its retry finds the first's row.
            w.c.execute(
                "INSERT INTO schedules (id, spec, enabled, next_run, created_at, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $5)",
                &[&id, &spec, &enabled, &s.next_run, &s.now],
            )
            .await
            .db()?;
        }
    }
    Ok(PutSchedule {
        schedule: schedule_now(w, &id).await?,
        created: existing.is_none(),
    })
}

pub async fn delete_schedule(w: &mut Work<'_>, id: &str) -> Result<Option<Schedule>> {
    let Some(row) = locked(w, id).await? else {
        return Ok(None);
    };
    w.c.execute("DELETE FROM schedules WHERE key = $1", &[&row.key])
        .await
        .db()?;
    w.c.execute("DELETE FROM schedule_fires WHERE schedule_id = $1", &[&id])
        .await
        .db()?;
    Ok(Some(row.schedule))
}

pub async fn set_schedule_enabled(
    w: &mut Work<'_>,
    id: &str,
    enabled: bool,
    next_run: Option<Millis>,
    now: Millis,
) -> Result<Option<Schedule>> {
    let n =
        w.c.execute(
            "UPDATE schedules SET enabled = $2, next_run = $3, version = version + 1, \
             updated_at = $4 WHERE id = $1",
            &[&id, &enabled, &next_run.filter(|_| enabled), &now],
        )
        .await
        .db()?;
    if n == 0 {
        return Ok(None);
    }
    schedule_now(w, id).await.map(Some)
}

pub async fn fire(w: &mut Work<'_>, f: &Fire) -> Result<FireOutcome> {
    let Some(ScheduleRow {
        schedule,
        key,
        fire_seq,
    }) = locked(w, &f.schedule_id).await?
    else {
        return Ok(FireOutcome::Stale(None));
    };
    if let Some(rev) = f.rev
        && (rev != schedule.rev || !schedule.enabled)
    {
        return Ok(FireOutcome::Stale(Some(schedule)));
    }
    let id = schedule.id.as_str();
    let mut fire_seq = fire_seq;
    let mut run_count = schedule.run_count;
    let mut last_run = schedule.last_run;
    let mut records = Vec::with_capacity(f.slots.len());
    let mut jobs = Vec::new();
    for slot in &f.slots {
        fire_seq += 1;
        let (action, job, message) = match &slot.job {
            Err(why) => (FireAction::Error, None, Some(why.clone())),
            Ok(new) => {
                // Decided on what the store holds now, under the schedule's lock: a
                // fire or release of this schedule on another server waits for it.
                let active = match schedule.overlap {
                    Overlap::Allow => None,
                    Overlap::Skip | Overlap::Queue => first_active(w, id).await?,
                };
                match (schedule.overlap, active) {
                    (Overlap::Skip, Some((other, state))) => (
                        FireAction::Skipped,
                        None,
                        Some(format!(
                            "skipped: job {other:?} of this schedule is still {state}"
                        )),
                    ),
                    (Overlap::Queue, Some((other, state))) => {
                        let mut waiting = new.clone();
                        waiting.state = State::Awaiting;
                        waiting.run_at = None;
                        let note =
                            format!("awaits the end of job {other:?} of this schedule ({state})");
                        submit_for(w, id, &waiting, Some(note)).await?
                    }
                    _ => submit_for(w, id, new, None).await?,
                }
            }
        };
        if job.is_some() {
            run_count += 1;
            last_run = Some(f.now);
        }
        let job_id = job.as_ref().map(|j| j.id.clone());
        w.c.execute(
            "INSERT INTO schedule_fires (schedule_id, seq, scheduled_for, fired_at, reason, \
             action, job_id, message) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            &[
                &id,
                &(fire_seq as i64),
                &slot.scheduled_for,
                &f.now,
                &slot.reason.as_str(),
                &action.as_str(),
                &job_id,
                &message,
            ],
        )
        .await
        .db()?;
        w.event(
            None,
            0,
            EventKind::ScheduleFired,
            f.now,
            json!({
                "schedule_id": id,
                "fire": fire_seq,
                "scheduled_for": baton_core::time::to_rfc3339(slot.scheduled_for),
                "reason": slot.reason,
                "action": action,
                "job_id": job_id,
                "state": job.as_ref().map(|j| j.state),
                "message": message,
            }),
        );
        records.push(FireRecord {
            seq: fire_seq,
            schedule_id: id.to_owned(),
            scheduled_for: slot.scheduled_for,
            fired_at: f.now,
            reason: slot.reason,
            action,
            job_id,
            outcome: job.as_ref().map(|j| j.state),
            error: None,
            started_at: None,
            finished_at: None,
            message,
        });
        jobs.extend(job);
    }
    // A fire by hand leaves the next run where the timer has it.
    let timed = f.rev.is_some();
    w.c.execute(
        "UPDATE schedules SET next_run = CASE WHEN $2 THEN $3 ELSE next_run END, \
         last_run = $4, run_count = $5, fire_seq = $6, version = version + 1 WHERE key = $1",
        &[
            &key,
            &timed,
            &f.next_run,
            &last_run,
            &(run_count as i64),
            &(fire_seq as i64),
        ],
    )
    .await
    .db()?;
    Ok(FireOutcome::Fired(Fired {
        schedule: schedule_now(w, id).await?,
        records,
        jobs,
    }))
}

/// Queues the oldest of the schedule's awaiting jobs once none of its jobs executes
/// or waits to. Under the schedule's lock (when it still exists), so that two servers
/// releasing at once queue one job, not two.
pub async fn release_schedule(w: &mut Work<'_>, id: &str, now: Millis) -> Result<Released> {
    w.c.query_opt("SELECT key FROM schedules WHERE id = $1 FOR UPDATE", &[&id])
        .await
        .db()?;
    let active: Vec<(String, String)> =
        w.c.query(
            &format!("SELECT id, state FROM jobs WHERE schedule_id = $1 AND {ACTIVE} ORDER BY key"),
            &[&id],
        )
        .await
        .db()?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    if let Some((running, _)) = active.iter().find(|(_, s)| s != "awaiting") {
        return Ok(Released {
            job: None,
            waiting_on: Some(running.clone()),
        });
    }
    let Some((first, _)) = active.first() else {
        return Ok(Released::default());
    };
    let t = Transition::new(first.clone(), State::Queued, EventKind::Queued, now)
        .expect(&[State::Awaiting])
        .data(json!({"reason": "the schedule's earlier job ended", "schedule_id": id}));
    let job = ops::transition(w, &t, Resume::No, true)
        .await?
        .map(|r| r.job);
    Ok(Released {
        job,
        waiting_on: (active.len() > 1).then(|| first.clone()),
    })
}

/// The oldest active job of a schedule, and its state.
async fn first_active(w: &Work<'_>, id: &str) -> Result<Option<(String, State)>> {
    let found =
        w.c.query_opt(
            &format!(
                "SELECT id, state FROM jobs WHERE schedule_id = $1 AND {ACTIVE} \
                 ORDER BY key LIMIT 1"
            ),
            &[&id],
        )
        .await
        .db()?;
    match found {
        Some(r) => Ok(Some((r.get(0), state(r.get(1))?))),
        None => Ok(None),
    }
}

/// Submits a schedule's job (the same write as any submit, with its event and count)
/// and marks it as the schedule's. A submit refused for the job's own reasons (its
/// unique key is held) skips the fire instead of failing it, leaving no trace; a
/// database error fails the whole write, which is then tried again or refused.
async fn submit_for(
    w: &mut Work<'_>,
    schedule_id: &str,
    new: &NewJob,
    note: Option<String>,
) -> Result<(FireAction, Option<Job>, Option<String>)> {
    let mark = w.savepoint().await?;
    let submitted = match ops::submit(w, std::slice::from_ref(new), None).await {
        Ok(mut out) => {
            w.end_savepoint(mark, true).await?;
            out.pop()
        }
        Err(e @ Error::Internal(_)) => return Err(e),
        Err(e) => {
            w.end_savepoint(mark, false).await?;
            return Ok((FireAction::Skipped, None, Some(format!("skipped: {e}"))));
        }
    };
    let mut job = match submitted {
        Some(s) if s.created => s.job,
        // Its unique key is held and the policy returns the holder: that job is not
        // this schedule's to claim.
        Some(s) => {
            let why = format!("skipped: job {:?} holds the job's unique key", s.job.id);
            return Ok((FireAction::Skipped, None, Some(why)));
        }
        None => return Err(Error::Internal("submit returned nothing".into())),
    };
    w.c.execute(
        "UPDATE jobs SET schedule_id = $2 WHERE id = $1",
        &[&job.id, &schedule_id],
    )
    .await
    .db()?;
    job.schedule_id = Some(schedule_id.to_owned());
    Ok((FireAction::Created, Some(job), note))
}

pub async fn schedule(c: &impl GenericClient, id: &str) -> Result<Option<Schedule>> {
    Ok(schedule_row(c, id).await?.map(|r| r.schedule))
}

/// A page of schedules by id. The text matches anywhere in the id, ASCII letters in
/// either case, as SQLite's `LIKE` does.
pub async fn schedules(c: &impl GenericClient, f: &ScheduleFilter) -> Result<SchedulePage> {
    let pattern = f.text.as_ref().map(|t| {
        format!(
            "%{}%",
            t.replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_")
        )
    });
    let filter = "($1::boolean IS NULL OR enabled = $1) \
                  AND ($2::text IS NULL OR id ILIKE $2 ESCAPE '\\')";
    let total: i64 = c
        .query_one(
            &format!("SELECT COUNT(*) FROM schedules WHERE {filter}"),
            &[&f.enabled, &pattern],
        )
        .await
        .db()?
        .get(0);
    let limit = f.limit.clamp(1, 1000);
    let rows = c
        .query(
            &format!(
                "SELECT {SCHEDULE_COLUMNS} FROM schedules WHERE {filter} \
                 AND ($3::text IS NULL OR id > $3) ORDER BY id LIMIT $4"
            ),
            &[&f.enabled, &pattern, &f.cursor, &((limit + 1) as i64)],
        )
        .await
        .db()?;
    let mut schedules: Vec<Schedule> = rows
        .iter()
        .map(|r| read_schedule(r).map(|r| r.schedule))
        .collect::<Result<_>>()?;
    let next_cursor = if schedules.len() > limit {
        schedules.truncate(limit);
        schedules.last().map(|s| s.id.clone())
    } else {
        None
    };
    Ok(SchedulePage {
        schedules,
        next_cursor,
        total: total as u64,
    })
}

/// A page of a schedule's fires, newest first, each with its job as it is now.
pub async fn history(
    c: &impl GenericClient,
    id: &str,
    before: Option<u64>,
    limit: usize,
) -> Result<FirePage> {
    let limit = limit.clamp(1, 1000);
    let before = before.map_or(i64::MAX, |b| b.min(i64::MAX as u64) as i64);
    let rows = c
        .query(
            "SELECT f.seq, f.scheduled_for, f.fired_at, f.reason, f.action, f.job_id, \
             f.message, j.state, j.error_code, j.error_message, j.started_at, j.finished_at \
             FROM schedule_fires f LEFT JOIN jobs j ON j.id = f.job_id \
             WHERE f.schedule_id = $1 AND f.seq < $2 ORDER BY f.seq DESC LIMIT $3",
            &[&id, &before, &((limit + 1) as i64)],
        )
        .await
        .db()?;
    let mut fires = rows
        .iter()
        .map(|r| {
            let reason: &str = r.get(3);
            let action: &str = r.get(4);
            let code: Option<String> = r.get(8);
            let message: Option<String> = r.get(9);
            Ok(FireRecord {
                seq: r.get::<_, i64>(0) as u64,
                schedule_id: id.to_owned(),
                scheduled_for: r.get(1),
                fired_at: r.get(2),
                reason: FireReason::parse(reason).ok_or_else(|| {
                    Error::Internal(format!("stored fire reason {reason:?} is not known"))
                })?,
                action: FireAction::parse(action).ok_or_else(|| {
                    Error::Internal(format!("stored fire action {action:?} is not known"))
                })?,
                job_id: r.get(5),
                message: r.get(6),
                outcome: r.get::<_, Option<&str>>(7).map(state).transpose()?,
                error: code.map(|c| ErrorInfo::new(c, message.unwrap_or_default())),
                started_at: r.get(10),
                finished_at: r.get(11),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let next_cursor = if fires.len() > limit {
        fires.truncate(limit);
        fires.last().map(|f| f.seq.to_string())
    } else {
        None
    };
    Ok(FirePage { fires, next_cursor })
}

pub async fn timers(c: &impl GenericClient) -> Result<Vec<ScheduleTimer>> {
    let rows = c
        .query(
            "SELECT id, next_run, key, version FROM schedules \
             WHERE enabled AND next_run IS NOT NULL",
            &[],
        )
        .await
        .db()?;
    Ok(rows
        .iter()
        .map(|r| ScheduleTimer {
            id: r.get(0),
            next_run: r.get(1),
            rev: rev(r.get(2), r.get(3)),
        })
        .collect())
}

pub async fn awaiting(c: &impl GenericClient) -> Result<Vec<String>> {
    let rows = c
        .query(
            "SELECT DISTINCT schedule_id FROM jobs \
             WHERE state = 'awaiting' AND schedule_id IS NOT NULL",
            &[],
        )
        .await
        .db()?;
    // By their bytes, as the schedules are listed.
    let mut ids: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    ids.sort();
    Ok(ids)
}
