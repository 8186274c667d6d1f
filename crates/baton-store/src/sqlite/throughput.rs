//! Reading `throughput` (kept by the writer, see `Writer::write_throughput`) and
//! checking it.

use rusqlite::Connection;

use baton_core::Millis;

use crate::{Error, Result, Span, ThroughputRow};

pub fn read(conn: &Connection, span: Span, since: Millis) -> Result<Vec<ThroughputRow>> {
    let mut stmt = conn.prepare_cached(
        "SELECT at, queue, completed, failed FROM throughput WHERE span = ?1 AND at >= ?2 \
         ORDER BY at, queue",
    )?;
    let rows = stmt.query_map(rusqlite::params![span.millis(), since], |r| {
        Ok(ThroughputRow {
            at: r.get(0)?,
            queue: r.get(1)?,
            completed: r.get::<_, i64>(2)? as u64,
            failed: r.get::<_, i64>(3)? as u64,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// The two spans are written from the same notes: every minute whose seconds are kept
/// (pruning cuts at whole minutes) holds exactly the sum of its seconds, and no count
/// is negative or zero in both columns.
pub fn verify(conn: &Connection) -> Result<()> {
    let odd: Vec<(Millis, String, i64, i64, i64, i64)> = {
        let mut stmt = conn.prepare(
            "SELECT m.at, m.queue, m.completed, m.failed, s.completed, s.failed FROM throughput m \
             JOIN (SELECT at / 60000 * 60000 AS minute, queue, SUM(completed) AS completed, \
                   SUM(failed) AS failed FROM throughput WHERE span = 1000 GROUP BY 1, 2) s \
               ON s.minute = m.at AND s.queue = m.queue \
             WHERE m.span = 60000 AND (m.completed != s.completed OR m.failed != s.failed)",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
            ))
        })?;
        rows.collect::<rusqlite::Result<_>>()?
    };
    if let Some((at, queue, c, f, sc, sf)) = odd.first() {
        return Err(Error::Internal(format!(
            "throughput of queue {queue:?} in the minute at {at}: {c} completed and {f} failed, \
             but its seconds sum to {sc} and {sf}"
        )));
    }
    let orphans: i64 = conn.query_row(
        "SELECT COUNT(*) FROM throughput s WHERE span = 1000 AND NOT EXISTS \
         (SELECT 1 FROM throughput m WHERE m.span = 60000 AND m.at = s.at / 60000 * 60000 \
          AND m.queue = s.queue)",
        [],
        |r| r.get(0),
    )?;
    let bad: i64 = conn.query_row(
        "SELECT COUNT(*) FROM throughput WHERE completed < 0 OR failed < 0 \
         OR completed + failed = 0 OR span NOT IN (1000, 60000) OR at % span != 0",
        [],
        |r| r.get(0),
    )?;
    if orphans != 0 || bad != 0 {
        return Err(Error::Internal(format!(
            "throughput holds {orphans} seconds without their minute and {bad} invalid rows"
        )));
    }
    Ok(())
}
