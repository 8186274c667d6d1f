//! The job list: filters, orders and keyset pages, each read through an index so that
//! a page costs the same at a thousand jobs as at a million (`tests/list_plan.rs`
//! holds every shape to that).

use rusqlite::Connection;
use rusqlite::types::Value;

use super::rows::{JOB_COLUMNS, JobRow, read_job};
use crate::{Error, JobCursor, JobFilter, JobPage, JobSort, Result, is_prefix_term, search_terms};

const COUNT_CAP: i64 = crate::LIST_COUNT_CAP as i64;

pub fn list(conn: &Connection, f: &JobFilter) -> Result<JobPage> {
    let q = Query::build(conn, f)?;
    let (total, total_exact) = q.total(conn, f)?;
    let limit = f.limit.clamp(1, 1000);
    let (sql, args) = q.page(f, limit)?;
    let mut stmt = conn.prepare(&sql)?;
    let mut rows: Vec<JobRow> = stmt
        .query_map(rusqlite::params_from_iter(args.iter()), read_job)?
        .collect::<rusqlite::Result<_>>()?;
    let next_cursor = if rows.len() > limit {
        rows.truncate(limit);
        rows.last().map(|r| cursor_after(f.sort, r).to_string())
    } else {
        None
    };
    for row in &mut rows {
        row.job.depends_on = super::graph::depends_on(conn, row.seq)?;
    }
    Ok(JobPage {
        jobs: rows.into_iter().map(|r| r.job).collect(),
        next_cursor,
        total: total as u64,
        total_exact,
    })
}

/// The statement of one page of `f` (for the plan checks: what [`list`] runs).
#[cfg(test)]
pub fn page_sql(conn: &Connection, f: &JobFilter) -> Result<(String, Vec<Value>)> {
    Query::build(conn, f)?.page(f, f.limit.clamp(1, 1000))
}

/// The SQL of a filter: the tables it reads, its conditions and their arguments.
struct Query {
    from: String,
    clauses: Vec<String>,
    args: Vec<Value>,
    /// The row key that a `created` page is ordered and cut by: that of the table
    /// that drives the read (the text index's or the label index's, when filtered by
    /// them), so that the read follows that index in order and stops after a page.
    key: &'static str,
}

impl Query {
    fn build(conn: &Connection, f: &JobFilter) -> Result<Self> {
        let mut q = Query {
            from: "jobs".into(),
            clauses: Vec::new(),
            args: Vec::new(),
            key: "jobs.seq",
        };
        // Ordered by a time, the time's index drives the read, and the kind and queue
        // indexes (`+` turns them off) would only give jobs to sort. States are
        // counted: a few thousand jobs are read through the state index and sorted,
        // more are found along the time's index, where they are not rare.
        let time_drives = time_column(f.sort).is_some();
        let states_drive = time_drives && few_in_states(conn, &f.states)?;
        let col = |name: &str| {
            if time_drives && !(states_drive && name == "state") {
                format!("+jobs.{name}")
            } else {
                name.to_owned()
            }
        };
        if f.states.is_empty() {
            q.clauses.push(format!("{} != 'deleted'", col("state")));
        } else {
            q.clauses
                .push(format!("{} IN ({})", col("state"), quoted(&f.states)));
        }
        if let Some(text) = &f.text {
            let terms = search_terms(text).map_err(Error::Config)?;
            let fts = fts_query(&terms);
            // In a time order, many matches (read once from the index) are looked up
            // along the time's index (`+`: not the other way round, which sorts them
            // all); a few thousand are read and sorted.
            if time_drives && !few_text_matches(conn, &fts)? {
                q.bind(
                    "+jobs.seq IN (SELECT rowid FROM job_text WHERE job_text MATCH ?)",
                    fts,
                );
            } else {
                q.from = "job_text JOIN jobs ON jobs.seq = job_text.rowid".into();
                q.key = "job_text.rowid";
                q.bind("job_text MATCH ?", fts);
            }
        }
        if let Some((k, v)) = &f.label {
            // Kept by the submit (schema version 6): the matching jobs, not every label.
            if q.key == "jobs.seq" {
                q.from = "job_labels JOIN jobs ON jobs.seq = job_labels.job".into();
                q.key = "job_labels.job";
                q.bind("job_labels.key = ?", k.clone());
                q.bind("job_labels.value = ?", v.clone());
            } else {
                q.args.push(k.clone().into());
                q.args.push(v.clone().into());
                let n = q.args.len();
                q.clauses.push(format!(
                    "jobs.seq IN (SELECT job FROM job_labels WHERE key = ?{} AND value = ?{n})",
                    n - 1
                ));
            }
        }
        if let Some(v) = &f.queue {
            q.bind(&format!("{} = ?", col("queue")), v.clone());
        }
        if let Some(v) = &f.kind {
            q.bind(&format!("{} = ?", col("kind")), v.clone());
        }
        if let Some(v) = &f.schedule {
            q.bind("jobs.schedule_id = ?", v.clone());
        }
        if let Some(v) = &f.workflow {
            q.bind("jobs.workflow_id = ?", v.clone());
        }
        if let Some(time) = time_column(f.sort) {
            let off = if states_drive { "+" } else { "" };
            q.clauses.push(format!("{off}{time} IS NOT NULL"));
        }
        Ok(q)
    }

    /// Adds a condition whose one `?` takes `value`.
    fn bind(&mut self, clause: &str, value: String) {
        self.args.push(value.into());
        self.clauses
            .push(clause.replace('?', &format!("?{}", self.args.len())));
    }

    /// The jobs matching the filter: exact from the kept counts for a list by
    /// creation filtered by states and a queue only; otherwise counted up to
    /// COUNT_CAP matches, and past it the total says it is a lower bound.
    fn total(&self, conn: &Connection, f: &JobFilter) -> Result<(i64, bool)> {
        let by_counts = f.sort == JobSort::Created
            && f.kind.is_none()
            && f.label.is_none()
            && f.text.is_none()
            && f.workflow.is_none()
            && f.schedule.is_none();
        if by_counts {
            let mut sql = String::from("SELECT COALESCE(SUM(n), 0) FROM job_counts WHERE ");
            sql.push_str(&self.clauses[0]);
            let mut args: Vec<Value> = Vec::new();
            if let Some(q) = &f.queue {
                args.push(q.clone().into());
                sql.push_str(" AND queue = ?1");
            }
            let n: i64 =
                conn.query_row(&sql, rusqlite::params_from_iter(args.iter()), |r| r.get(0))?;
            return Ok((n, true));
        }
        let n: i64 = conn.query_row(
            &format!(
                "SELECT COUNT(*) FROM (SELECT 1 FROM {} WHERE {} LIMIT {})",
                self.from,
                self.clauses.join(" AND "),
                COUNT_CAP + 1
            ),
            rusqlite::params_from_iter(self.args.iter()),
            |r| r.get(0),
        )?;
        Ok((n.min(COUNT_CAP), n <= COUNT_CAP))
    }

    /// One page after the filter's cursor, and one job more to tell whether another
    /// page follows.
    fn page(mut self, f: &JobFilter, limit: usize) -> Result<(String, Vec<Value>)> {
        let cursor = f
            .cursor
            .as_deref()
            .map(|c| JobCursor::parse(c, f.sort).map_err(Error::Config))
            .transpose()?;
        let order = match time_column(f.sort) {
            None => {
                if let Some(c) = cursor {
                    self.args.push(c.seq.into());
                    let n = self.args.len();
                    self.clauses.push(format!("{} < ?{n}", self.key));
                }
                format!("{} DESC", self.key)
            }
            Some(time) => {
                if let Some(c) = cursor {
                    self.args.push(c.key.unwrap_or_default().into());
                    self.args.push(c.seq.into());
                    let n = self.args.len();
                    self.clauses
                        .push(format!("({time}, jobs.seq) < (?{}, ?{n})", n - 1));
                }
                format!("{time} DESC, jobs.seq DESC")
            }
        };
        let sql = format!(
            "SELECT {JOB_COLUMNS} FROM {} WHERE {} ORDER BY {order} LIMIT {}",
            self.from,
            self.clauses.join(" AND "),
            limit + 1
        );
        Ok((sql, self.args))
    }
}

/// At most this many jobs in the filtered states, or matching a text, are read and
/// sorted by a time.
const SORTED_CAP: i64 = 5_000;

/// Whether an FTS query matches few enough jobs to sort (counted up to the cap).
fn few_text_matches(conn: &Connection, fts: &str) -> Result<bool> {
    let n: i64 = conn.query_row(
        &format!(
            "SELECT COUNT(*) FROM (SELECT 1 FROM job_text WHERE job_text MATCH ?1 LIMIT {})",
            SORTED_CAP + 1
        ),
        [fts],
        |r| r.get(0),
    )?;
    Ok(n <= SORTED_CAP)
}

/// Whether the jobs in `states` (from the kept counts) are few enough to sort.
fn few_in_states(conn: &Connection, states: &[crate::State]) -> Result<bool> {
    if states.is_empty() {
        return Ok(false);
    }
    let n: i64 = conn.query_row(
        &format!(
            "SELECT COALESCE(SUM(n), 0) FROM job_counts WHERE state IN ({})",
            quoted(states)
        ),
        [],
        |r| r.get(0),
    )?;
    Ok(n <= SORTED_CAP)
}

/// The states as SQL strings (Baton's own names), comma separated.
fn quoted(states: &[crate::State]) -> String {
    let names: Vec<String> = states.iter().map(|s| format!("'{}'", s.as_str())).collect();
    names.join(", ")
}

fn time_column(sort: JobSort) -> Option<&'static str> {
    match sort {
        JobSort::Created => None,
        JobSort::Started => Some("jobs.started_at"),
        JobSort::Finished => Some("jobs.finished_at"),
    }
}

/// Each term as an FTS5 string (double quotes doubled), so that whatever the user
/// typed, quotes, `*`, `-`, `:` or `OR`, is words to find, never query syntax; its
/// last word is a prefix when long enough (`"source:alf"*`). Terms are ANDed.
fn fts_query(terms: &[&str]) -> String {
    let quoted: Vec<String> = terms
        .iter()
        .map(|t| {
            let star = if is_prefix_term(t) { "*" } else { "" };
            format!("\"{}\"{star}", t.replace('"', "\"\""))
        })
        .collect();
    quoted.join(" ")
}

fn cursor_after(sort: JobSort, row: &JobRow) -> JobCursor {
    let key = match sort {
        JobSort::Created => None,
        JobSort::Started => row.job.started_at,
        JobSort::Finished => row.job.finished_at,
    };
    JobCursor {
        sort,
        key,
        seq: row.seq,
    }
}
