//! What a crash cost a job: the facts a `job.crashed` event records beside its reason,
//! read in the recovery's transaction before the job's state changes.

use baton_core::time::to_rfc3339;
use baton_core::{EventKind, Millis};
use rusqlite::{Connection, OptionalExtension, params};
use serde_json::{Map, Value, json};

use crate::Result;

/// `server_id` and `heartbeat_at` (the server that ran the job and its last
/// heartbeat, when known: the engine died after it), `last_event_at` (the job's last
/// sign of life), `checkpoint` (`{seq, at, attempt}` of the last one, or null) and
/// `since_checkpoint` (the progress, step, output and log events of the attempt after
/// that checkpoint, or after the attempt's start when it wrote none: the work a
/// resume repeats).
pub fn facts(conn: &Connection, job_key: i64, job_id: &str) -> Result<Map<String, Value>> {
    let mut out = Map::new();
    let (server_id, event_seq, attempt): (Option<String>, i64, i64) = conn
        .prepare_cached("SELECT server_id, event_seq, attempt FROM jobs WHERE seq = ?1")?
        .query_row([job_key], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
    if let Some(server) = server_id {
        let heartbeat: Option<Millis> = conn
            .prepare_cached("SELECT heartbeat_at FROM servers WHERE id = ?1")?
            .query_row([&server], |r| r.get(0))
            .optional()?;
        if let Some(at) = heartbeat {
            out.insert("heartbeat_at".into(), json!(to_rfc3339(at)));
        }
        out.insert("server_id".into(), json!(server));
    }
    let last_event: Option<Millis> = conn
        .prepare_cached("SELECT at FROM events WHERE job_key = ?1 AND seq = ?2")?
        .query_row(params![job_key, event_seq], |r| r.get(0))
        .optional()?;
    if let Some(at) = last_event {
        out.insert("last_event_at".into(), json!(to_rfc3339(at)));
    }
    let checkpoint: Option<(i64, Millis, i64)> = conn
        .prepare_cached(
            "SELECT seq, at, attempt FROM checkpoints WHERE job_id = ?1 ORDER BY seq DESC LIMIT 1",
        )?
        .query_row([job_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .optional()?;
    out.insert(
        "checkpoint".into(),
        checkpoint.map_or(
            Value::Null,
            |(seq, at, attempt)| json!({"seq": seq, "at": to_rfc3339(at), "attempt": attempt}),
        ),
    );
    let started: i64 = conn
        .prepare_cached(
            "SELECT COALESCE(MAX(seq), 0) FROM events WHERE job_key = ?1 AND type = ?2",
        )?
        .query_row(params![job_key, EventKind::Started.as_str()], |r| r.get(0))?;
    let from = match checkpoint {
        Some((seq, _, by)) if by == attempt && seq > started => seq,
        _ => started,
    };
    let mut since =
        json!({"from_seq": from, "progress": 0, "steps": 0, "output": 0, "log_lines": 0});
    let mut stmt = conn.prepare_cached(
        "SELECT type, COUNT(*) FROM events WHERE job_key = ?1 AND seq > ?2 \
         AND type IN ('job.progress', 'job.step', 'job.output', 'job.log') GROUP BY type",
    )?;
    let counts = stmt.query_map(params![job_key, from], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
    })?;
    for row in counts {
        let (kind, n) = row?;
        let field = match kind.as_str() {
            "job.progress" => "progress",
            "job.step" => "steps",
            "job.output" => "output",
            _ => "log_lines",
        };
        since[field] = json!(n);
    }
    out.insert("since_checkpoint".into(), since);
    Ok(out)
}
