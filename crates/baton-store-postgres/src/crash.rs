//! What a crash cost a job: the facts a `job.crashed` event records beside its reason,
//! read in the recovery's transaction before the job's state changes (the same facts
//! as the SQLite store's; see its `crash` module).

use baton_core::EventKind;
use baton_core::time::to_rfc3339;
use serde_json::{Map, Value, json};

use crate::Db;
use crate::rows::JobRow;
use crate::work::Work;
use baton_store::Result;

pub async fn facts(w: &mut Work<'_>, job_key: i64, row: &JobRow) -> Result<Map<String, Value>> {
    let mut out = Map::new();
    let r =
        w.c.query_one(
            "SELECT jobs.server_id, servers.heartbeat_at FROM jobs \
             LEFT JOIN servers ON servers.id = jobs.server_id WHERE jobs.key = $1",
            &[&job_key],
        )
        .await
        .db()?;
    let (server, heartbeat): (Option<String>, Option<i64>) = (r.get(0), r.get(1));
    if let Some(server) = server {
        if let Some(at) = heartbeat {
            out.insert("heartbeat_at".into(), json!(to_rfc3339(at)));
        }
        out.insert("server_id".into(), json!(server));
    }
    let last_event =
        w.c.query_opt(
            "SELECT at FROM events WHERE job_key = $1 AND job_seq = $2",
            &[&job_key, &(row.event_seq as i64)],
        )
        .await
        .db()?;
    if let Some(r) = last_event {
        out.insert("last_event_at".into(), json!(to_rfc3339(r.get(0))));
    }
    let checkpoint =
        w.c.query_opt(
            "SELECT seq, at, attempt FROM checkpoints WHERE job_key = $1 ORDER BY seq DESC LIMIT 1",
            &[&job_key],
        )
        .await
        .db()?
        .map(|r| (r.get::<_, i64>(0), r.get::<_, i64>(1), r.get::<_, i32>(2)));
    out.insert(
        "checkpoint".into(),
        checkpoint.map_or(
            Value::Null,
            |(seq, at, attempt)| json!({"seq": seq, "at": to_rfc3339(at), "attempt": attempt}),
        ),
    );
    let started: i64 =
        w.c.query_one(
            "SELECT COALESCE(MAX(job_seq), 0) FROM events WHERE job_key = $1 AND type = $2",
            &[&job_key, &EventKind::Started.as_str()],
        )
        .await
        .db()?
        .get(0);
    let from = match checkpoint {
        Some((seq, _, by)) if by as u32 == row.job.attempt && seq > started => seq,
        _ => started,
    };
    let mut since =
        json!({"from_seq": from, "progress": 0, "steps": 0, "output": 0, "log_lines": 0});
    let counts =
        w.c.query(
            "SELECT type, COUNT(*) FROM events WHERE job_key = $1 AND job_seq > $2 \
             AND type IN ('job.progress', 'job.step', 'job.output', 'job.log') GROUP BY type",
            &[&job_key, &from],
        )
        .await
        .db()?;
    for r in counts {
        let (kind, n): (String, i64) = (r.get(0), r.get(1));
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
