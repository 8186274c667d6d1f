//! The writer's schedule writes. A fire is one write: its jobs, its history rows, its
//! `schedule.fired` events and the schedule's new next run commit together or not at
//! all, and a timed fire is refused unless the schedule is still at the revision the
//! fire was computed from.

use baton_core::schedule::Overlap;
use baton_core::{EventKind, Job, Millis, NewJob, Schedule, State};
use rusqlite::{OptionalExtension, params};
use serde_json::json;

use super::super::schedule_rows::{self, ACTIVE, ScheduleRow};
use super::{Resume, Writer};
use crate::{
    Error, Fire, FireAction, FireOutcome, FireRecord, Fired, NewSchedule, PutSchedule, Released,
    Result, Transition,
};

impl Writer {
    pub(super) fn put_schedule(&mut self, s: &NewSchedule, replace: bool) -> Result<PutSchedule> {
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
        let text = serde_json::to_string(&stored)
            .map_err(|e| Error::Internal(format!("cannot encode schedule {id:?}: {e}")))?;
        let existing = schedule_rows::schedule_row(&self.conn, &id)?;
        match &existing {
            Some(_) if !replace => {
                return Ok(PutSchedule {
                    schedule: self.schedule_now(&id)?,
                    created: false,
                });
            }
            Some(row) => {
                // Putting the same timing again must not move (or repeat) a run: the
                // next run stays, decided here where no fire can slip in between.
                let old = &row.schedule;
                let same_timing = old.enabled == enabled
                    && old.trigger == s.spec.trigger
                    && Some(&old.timezone) == s.spec.timezone.as_ref();
                let next_run = if same_timing {
                    old.next_run
                } else {
                    s.next_run
                };
                self.conn
                    .prepare_cached(
                        "UPDATE schedules SET spec = ?2, enabled = ?3, next_run = ?4, \
                         version = version + 1, updated_at = ?5 WHERE seq = ?1",
                    )?
                    .execute(params![row.key, text, enabled, next_run, s.now])?;
            }
            None => {
                self.conn
                    .prepare_cached(
                        "INSERT INTO schedules (id, spec, enabled, next_run, created_at, updated_at) \
                         VALUES (?1, ?2, ?3, ?4, ?5, ?5)",
                    )?
                    .execute(params![id, text, enabled, s.next_run, s.now])?;
            }
        }
        Ok(PutSchedule {
            schedule: self.schedule_now(&id)?,
            created: existing.is_none(),
        })
    }

    pub(super) fn delete_schedule(&mut self, id: &str) -> Result<Option<Schedule>> {
        let Some(row) = schedule_rows::schedule_row(&self.conn, id)? else {
            return Ok(None);
        };
        self.conn
            .prepare_cached("DELETE FROM schedules WHERE seq = ?1")?
            .execute([row.key])?;
        self.conn
            .prepare_cached("DELETE FROM schedule_fires WHERE schedule_id = ?1")?
            .execute([id])?;
        Ok(Some(row.schedule))
    }

    pub(super) fn set_schedule_enabled(
        &mut self,
        id: &str,
        enabled: bool,
        next_run: Option<Millis>,
        now: Millis,
    ) -> Result<Option<Schedule>> {
        let n = self
            .conn
            .prepare_cached(
                "UPDATE schedules SET enabled = ?2, next_run = ?3, version = version + 1, \
                 updated_at = ?4 WHERE id = ?1",
            )?
            .execute(params![id, enabled, next_run.filter(|_| enabled), now])?;
        if n == 0 {
            return Ok(None);
        }
        self.schedule_now(id).map(Some)
    }

    pub(super) fn fire(&mut self, f: &Fire) -> Result<FireOutcome> {
        let Some(ScheduleRow {
            schedule,
            key,
            fire_seq,
        }) = schedule_rows::schedule_row(&self.conn, &f.schedule_id)?
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
                    // Decided on what the store holds now, inside the write: no other
                    // write can slip in between the look and the submit.
                    let active = match schedule.overlap {
                        Overlap::Allow => None,
                        Overlap::Skip | Overlap::Queue => self.first_active(id)?,
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
                            let note = format!(
                                "awaits the end of job {other:?} of this schedule ({state})"
                            );
                            self.submit_for(id, &waiting, Some(note))?
                        }
                        _ => self.submit_for(id, new, None)?,
                    }
                }
            };
            if job.is_some() {
                run_count += 1;
                last_run = Some(f.now);
            }
            let job_id = job.as_ref().map(|j| j.id.clone());
            self.conn
                .prepare_cached(
                    "INSERT INTO schedule_fires (schedule_id, seq, scheduled_for, fired_at, \
                     reason, action, job_id, message) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                )?
                .execute(params![
                    id,
                    fire_seq as i64,
                    slot.scheduled_for,
                    f.now,
                    slot.reason.as_str(),
                    action.as_str(),
                    job_id,
                    message,
                ])?;
            self.event(
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
            )?;
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
        let timed = f.rev.is_some();
        self.conn
            .prepare_cached(
                "UPDATE schedules SET next_run = CASE WHEN ?2 THEN ?3 ELSE next_run END, \
                 last_run = ?4, run_count = ?5, fire_seq = ?6, version = version + 1 \
                 WHERE seq = ?1",
            )?
            .execute(params![
                key,
                timed,
                f.next_run,
                last_run,
                run_count as i64,
                fire_seq as i64
            ])?;
        Ok(FireOutcome::Fired(Fired {
            schedule: self.schedule_now(id)?,
            records,
            jobs,
        }))
    }

    pub(super) fn release_schedule(&mut self, id: &str, now: Millis) -> Result<Released> {
        let active: Vec<(String, String)> = {
            let mut stmt = self.conn.prepare_cached(&format!(
                "SELECT id, state FROM jobs WHERE schedule_id = ?1 AND {ACTIVE} ORDER BY seq"
            ))?;
            stmt.query_map([id], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<rusqlite::Result<_>>()?
        };
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
        let job = self.transition(&t, Resume::No, true)?.map(|r| r.job);
        Ok(Released {
            job,
            waiting_on: (active.len() > 1).then(|| first.clone()),
        })
    }

    /// The oldest active job of a schedule, and its state.
    fn first_active(&mut self, id: &str) -> Result<Option<(String, State)>> {
        let found: Option<(String, String)> = self
            .conn
            .prepare_cached(&format!(
                "SELECT id, state FROM jobs WHERE schedule_id = ?1 AND {ACTIVE} ORDER BY seq LIMIT 1"
            ))?
            .query_row([id], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        Ok(match found {
            Some((job, state)) => Some((job, super::super::codes::parse_state(&state)?)),
            None => None,
        })
    }

    /// Submits a schedule's job (the same write as any submit, with its event) and
    /// marks it as the schedule's. A submit refused for the job's own reasons (its
    /// unique key is held) skips the fire instead of failing it, leaving no trace.
    fn submit_for(
        &mut self,
        schedule_id: &str,
        new: &NewJob,
        note: Option<String>,
    ) -> Result<(FireAction, Option<Job>, Option<String>)> {
        let submitted = self.savepoint(|w| w.submit(std::slice::from_ref(new), None));
        let submitted = match submitted {
            Ok(mut out) => out.pop(),
            Err(e @ Error::Internal(_)) => return Err(e),
            Err(e) => return Ok((FireAction::Skipped, None, Some(format!("skipped: {e}")))),
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
        self.conn
            .prepare_cached("UPDATE jobs SET schedule_id = ?2 WHERE id = ?1")?
            .execute(params![job.id, schedule_id])?;
        job.schedule_id = Some(schedule_id.to_owned());
        job.runs =
            baton_core::Runs::describe(new.exec.as_ref(), new.timeout, new.grace, new.backoff);
        Ok((FireAction::Created, Some(job), note))
    }

    fn schedule_now(&self, id: &str) -> Result<Schedule> {
        schedule_rows::schedule(&self.conn, id)?
            .ok_or_else(|| Error::Internal(format!("schedule {id:?} vanished in its write")))
    }
}
