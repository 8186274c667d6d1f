//! Counting the SQL statements a connection runs, for the benches' per-job figures.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use rusqlite::Connection;
use rusqlite::trace::{TraceEvent, TraceEventCodes};

use crate::{Result, WriteStats};

/// Counts every statement `conn` starts in `counters.statements` (in
/// `index_statements` while `counters.indexing` is set), by SQLite's own statement
/// trace: one call as each statement begins to run, so every `BEGIN`, `SAVEPOINT`,
/// `RELEASE` and `COMMIT` counts. A trigger's body and the statements SQLite runs
/// inside another (a search index's own tables) come as SQL comments (`-- ...`) and do
/// not. Each call costs a pass over the statement's text (the trace hands it over as
/// a string): about 3 % of the writer's time in the throughput bench, which is why it
/// is an option.
pub(super) fn count(conn: &mut Connection, counters: Arc<WriteStats>) -> Result<()> {
    conn.trace_v2(
        TraceEventCodes::SQLITE_TRACE_STMT,
        Some(move |e: TraceEvent<'_>| {
            if let TraceEvent::Stmt(_, sql) = e
                && !sql.starts_with("--")
            {
                let n = if counters.indexing.load(Relaxed) {
                    &counters.index_statements
                } else {
                    &counters.statements
                };
                n.fetch_add(1, Relaxed);
            }
        }),
    )?;
    Ok(())
}
