//! Reading schedules and their history out of rows.

use baton_core::schedule::ScheduleSpec;
use baton_core::{ErrorInfo, Schedule};
use rusqlite::{Connection, OptionalExtension, Row, params};

use super::codes::parse_state;
use crate::{
    Error, FireAction, FirePage, FireReason, FireRecord, Result, ScheduleFilter, SchedulePage,
    ScheduleTimer,
};

/// Every column a schedule row is read with, in the order [`read_schedule`] expects.
pub const SCHEDULE_COLUMNS: &str = "seq, id, spec, enabled, next_run, last_run, run_count, \
    version, created_at, updated_at, fire_seq, \
    (SELECT job_id FROM schedule_fires f WHERE f.schedule_id = schedules.id \
       AND f.job_id IS NOT NULL ORDER BY f.seq DESC LIMIT 1), \
    (SELECT state FROM jobs WHERE jobs.id = (SELECT job_id FROM schedule_fires f \
       WHERE f.schedule_id = schedules.id AND f.job_id IS NOT NULL ORDER BY f.seq DESC LIMIT 1))";

/// Active states: the jobs an overlap policy waits for. Written the same way as the
/// condition of the `jobs_schedule_active` index, so that SQLite uses it.
pub const ACTIVE: &str = "state NOT IN ('completed', 'failed', 'cancelled', 'deleted')";

/// A schedule row with the columns clients do not see.
pub struct ScheduleRow {
    pub schedule: Schedule,
    pub key: i64,
    pub fire_seq: u64,
}

/// A revision that never repeats: the row's key (never reused) and its version.
pub fn rev(key: i64, version: i64) -> u64 {
    ((key as u64) << 32) | (version as u64 & 0xffff_ffff)
}

fn conversion(i: usize, e: impl std::error::Error + Send + Sync + 'static) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, Box::new(e))
}

pub fn read_schedule(r: &Row<'_>) -> rusqlite::Result<ScheduleRow> {
    let key: i64 = r.get(0)?;
    let spec: String = r.get(2)?;
    let spec: ScheduleSpec = serde_json::from_str(&spec).map_err(|e| conversion(2, e))?;
    let schedule = Schedule {
        id: r.get(1)?,
        job: spec.job,
        timezone: spec.timezone.unwrap_or_else(|| "UTC".into()),
        trigger: spec.trigger,
        enabled: r.get(3)?,
        misfire: spec.misfire.unwrap_or_default(),
        misfire_limit: spec
            .misfire_limit
            .unwrap_or(baton_core::schedule::DEFAULT_MISFIRE_LIMIT),
        overlap: spec.overlap.unwrap_or_default(),
        next_run: r.get(4)?,
        last_run: r.get(5)?,
        run_count: r.get::<_, i64>(6)? as u64,
        last_job: match r.get::<_, Option<String>>(11)? {
            Some(id) => Some(baton_core::schedule::LastJob {
                id,
                state: r
                    .get::<_, Option<String>>(12)?
                    .map(|s| parse_state(&s))
                    .transpose()?,
            }),
            None => None,
        },
        created_at: r.get(8)?,
        updated_at: r.get(9)?,
        rev: rev(key, r.get(7)?),
    };
    Ok(ScheduleRow {
        schedule,
        key,
        fire_seq: r.get::<_, i64>(10)? as u64,
    })
}

pub fn schedule_row(conn: &Connection, id: &str) -> Result<Option<ScheduleRow>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {SCHEDULE_COLUMNS} FROM schedules WHERE id = ?1"
    ))?;
    Ok(stmt.query_row([id], read_schedule).optional()?)
}

pub fn schedule(conn: &Connection, id: &str) -> Result<Option<Schedule>> {
    Ok(schedule_row(conn, id)?.map(|r| r.schedule))
}

pub fn schedules(conn: &Connection, f: &ScheduleFilter) -> Result<SchedulePage> {
    let mut clauses: Vec<String> = vec!["1".into()];
    let mut args: Vec<rusqlite::types::Value> = Vec::new();
    if let Some(enabled) = f.enabled {
        clauses.push(format!("enabled = {}", i64::from(enabled)));
    }
    if let Some(t) = &f.text {
        args.push(format!("%{}%", t.replace('%', "\\%").replace('_', "\\_")).into());
        clauses.push(format!("id LIKE ?{} ESCAPE '\\'", args.len()));
    }
    let filter = clauses.join(" AND ");
    let total: i64 = conn.query_row(
        &format!("SELECT COUNT(*) FROM schedules WHERE {filter}"),
        rusqlite::params_from_iter(args.iter()),
        |r| r.get(0),
    )?;
    let mut page = filter;
    if let Some(c) = &f.cursor {
        args.push(c.clone().into());
        page.push_str(&format!(" AND id > ?{}", args.len()));
    }
    let limit = f.limit.clamp(1, 1000);
    let sql = format!(
        "SELECT {SCHEDULE_COLUMNS} FROM schedules WHERE {page} ORDER BY id LIMIT {}",
        limit + 1
    );
    let mut rows: Vec<Schedule> = conn
        .prepare(&sql)?
        .query_map(rusqlite::params_from_iter(args.iter()), read_schedule)?
        .map(|r| r.map(|r| r.schedule))
        .collect::<rusqlite::Result<_>>()?;
    let next_cursor = if rows.len() > limit {
        rows.truncate(limit);
        rows.last().map(|s| s.id.clone())
    } else {
        None
    };
    Ok(SchedulePage {
        schedules: rows,
        next_cursor,
        total: total as u64,
    })
}

pub fn history(conn: &Connection, id: &str, before: Option<u64>, limit: usize) -> Result<FirePage> {
    let limit = limit.clamp(1, 1000);
    let before = before.map_or(i64::MAX, |b| b.min(i64::MAX as u64) as i64);
    let mut stmt = conn.prepare_cached(
        "SELECT f.seq, f.scheduled_for, f.fired_at, f.reason, f.action, f.job_id, f.message, \
         j.state, j.error_code, j.error_message, j.started_at, j.finished_at \
         FROM schedule_fires f LEFT JOIN jobs j ON j.id = f.job_id \
         WHERE f.schedule_id = ?1 AND f.seq < ?2 ORDER BY f.seq DESC LIMIT ?3",
    )?;
    let mut fires: Vec<FireRecord> = stmt
        .query_map(params![id, before, (limit + 1) as i64], |r| {
            let reason: String = r.get(3)?;
            let action: String = r.get(4)?;
            let state: Option<String> = r.get(7)?;
            let code: Option<String> = r.get(8)?;
            let message: Option<String> = r.get(9)?;
            Ok(FireRecord {
                seq: r.get::<_, i64>(0)? as u64,
                schedule_id: id.to_owned(),
                scheduled_for: r.get(1)?,
                fired_at: r.get(2)?,
                reason: FireReason::parse(&reason).ok_or_else(|| {
                    conversion(3, Error::Internal(format!("unknown reason {reason:?}")))
                })?,
                action: FireAction::parse(&action).ok_or_else(|| {
                    conversion(4, Error::Internal(format!("unknown action {action:?}")))
                })?,
                job_id: r.get(5)?,
                message: r.get(6)?,
                outcome: state.as_deref().map(parse_state).transpose()?,
                error: code.map(|c| ErrorInfo::new(c, message.unwrap_or_default())),
                started_at: r.get(10)?,
                finished_at: r.get(11)?,
            })
        })?
        .collect::<rusqlite::Result<_>>()?;
    let next_cursor = if fires.len() > limit {
        fires.truncate(limit);
        fires.last().map(|f| f.seq.to_string())
    } else {
        None
    };
    Ok(FirePage { fires, next_cursor })
}

pub fn timers(conn: &Connection) -> Result<Vec<ScheduleTimer>> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, next_run, seq, version FROM schedules \
         WHERE enabled = 1 AND next_run IS NOT NULL",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok(ScheduleTimer {
            id: r.get(0)?,
            next_run: r.get(1)?,
            rev: rev(r.get(2)?, r.get(3)?),
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

pub fn awaiting(conn: &Connection) -> Result<Vec<String>> {
    let mut stmt = conn.prepare_cached(
        "SELECT DISTINCT schedule_id FROM jobs \
         WHERE state = 'awaiting' AND schedule_id IS NOT NULL ORDER BY schedule_id",
    )?;
    let rows = stmt.query_map([], |r| r.get(0))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}
