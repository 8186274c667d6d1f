//! The job list's budget: every list shape the dashboard asks for reads through an
//! index, so that a page reads as many rows at 20,000 jobs as at 2,000 (and so at a
//! million). Checked on real SQLite files by SQLite's own counter of the virtual
//! machine's steps and by the query plan, not by a clock.

use std::collections::BTreeMap;

use baton_core::State;
use rusqlite::{Connection, StatementStatus, params};

use super::list::page_sql;
use crate::{JobFilter, JobSort, list::JobCursor};

/// Jobs of each state that are rare: the oldest, and the only ones of their kind,
/// queue, label, workflow, schedule and error. A read that scans for them instead of
/// looking them up reads every newer job first.
const RARE_PER_STATE: usize = 10;

#[test]
fn every_list_shape_reads_as_many_rows_at_20000_jobs_as_at_2000() {
    let dir = tempfile::tempdir().unwrap();
    let small = store_with(&dir.path().join("small.db"), 2_000);
    let large = store_with(&dir.path().join("large.db"), 20_000);
    let failures = over_budget(&small, &large);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn the_check_fails_when_an_index_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let small = store_with(&dir.path().join("small.db"), 2_000);
    let large = store_with(&dir.path().join("large.db"), 20_000);
    for index in ["jobs_kind", "jobs_queue", "jobs_finished", "jobs_state"] {
        for conn in [&small, &large] {
            conn.execute_batch(&format!("SAVEPOINT s; DROP INDEX {index};"))
                .unwrap();
        }
        let failures = over_budget(&small, &large);
        assert!(
            !failures.is_empty(),
            "without {index} no list shape went over its budget"
        );
        for conn in [&small, &large] {
            conn.execute_batch("ROLLBACK TO s; RELEASE s;").unwrap();
        }
    }
}

/// The shapes whose page reads more rows in `large` than in `small` (beyond noise),
/// or whose plan sorts or scans the jobs table.
fn over_budget(small: &Connection, large: &Connection) -> Vec<String> {
    let mut failures = Vec::new();
    for (name, filter) in shapes(large) {
        let mut cursor = None;
        for page in 1..=2 {
            let f = JobFilter {
                cursor: cursor.clone(),
                ..filter.clone()
            };
            let (steps_small, _) = run(small, &f);
            let (steps_large, next) = run(large, &f);
            let plan = plan(large, &f);
            if steps_large > steps_small * 3 / 2 + 200 {
                failures.push(format!(
                    "{name} page {page}: {steps_small} steps at 2,000 jobs, {steps_large} at 20,000; plan {plan}"
                ));
            }
            let scans = plan.contains("SCAN jobs") && !name.starts_with("all");
            let sorts_all = plan.contains("TEMP B-TREE") && !name.contains("sorted few");
            if scans || sorts_all {
                failures.push(format!("{name} page {page}: plan {plan}"));
            }
            cursor = next;
            if cursor.is_none() {
                break;
            }
        }
    }
    failures
}

/// What the dashboard lists: everything, each state, a queue, a kind, a label, a
/// workflow, a schedule, text (an id's end, a kind, a label, an error word), each
/// order, and a rare state ordered by a time.
fn shapes(conn: &Connection) -> Vec<(String, JobFilter)> {
    let base = JobFilter {
        limit: 4,
        ..JobFilter::default()
    };
    let with = |f: JobFilter| JobFilter { limit: 4, ..f };
    let mut out = Vec::new();
    for sort in JobSort::ALL {
        out.push((
            format!("all by {sort}"),
            JobFilter {
                sort,
                ..base.clone()
            },
        ));
    }
    for state in State::ALL {
        out.push((
            format!("state {state}"),
            with(JobFilter {
                states: vec![state],
                ..JobFilter::default()
            }),
        ));
    }
    for sort in [JobSort::Started, JobSort::Finished] {
        out.push((
            format!("sorted few: text by {sort}"),
            with(JobFilter {
                text: Some("quasar".into()),
                sort,
                ..JobFilter::default()
            }),
        ));
        out.push((
            format!("sorted few: failed by {sort}"),
            with(JobFilter {
                states: vec![State::Failed],
                sort,
                ..JobFilter::default()
            }),
        ));
    }
    let rare_id: String = conn
        .query_row(
            "SELECT id FROM jobs ORDER BY seq LIMIT 1 OFFSET 3",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let id_end = rare_id[rare_id.len() - 6..].to_owned();
    let one = |name: &str, f: JobFilter| (name.to_owned(), with(f));
    out.extend([
        one(
            "queue",
            JobFilter {
                queue: Some("rare-q".into()),
                ..JobFilter::default()
            },
        ),
        one(
            "kind",
            JobFilter {
                kind: Some("rare-kind".into()),
                ..JobFilter::default()
            },
        ),
        one(
            "label",
            JobFilter {
                label: Some(("tier".into(), "gold".into())),
                ..JobFilter::default()
            },
        ),
        one(
            "workflow",
            JobFilter {
                workflow: Some("w-rare".into()),
                ..JobFilter::default()
            },
        ),
        one(
            "schedule",
            JobFilter {
                schedule: Some("s-rare".into()),
                ..JobFilter::default()
            },
        ),
        one(
            "text id end",
            JobFilter {
                text: Some(id_end),
                ..JobFilter::default()
            },
        ),
        one(
            "text kind",
            JobFilter {
                text: Some("rare-kind".into()),
                ..JobFilter::default()
            },
        ),
        one(
            "text label",
            JobFilter {
                text: Some("tier=gold".into()),
                ..JobFilter::default()
            },
        ),
        one(
            "text error",
            JobFilter {
                text: Some("quasar".into()),
                ..JobFilter::default()
            },
        ),
    ]);
    out
}

/// Runs a page's statement to its end: SQLite's count of virtual-machine steps (every
/// row visited costs some), and the cursor of the next page.
fn run(conn: &Connection, f: &JobFilter) -> (i32, Option<String>) {
    let (sql, args) = page_sql(conn, f).unwrap();
    let mut stmt = conn.prepare(&sql).unwrap();
    let mut rows = stmt.query(rusqlite::params_from_iter(args.iter())).unwrap();
    let mut last = None;
    let mut n = 0;
    while let Some(row) = rows.next().unwrap() {
        n += 1;
        if n <= f.limit {
            let seq: i64 = row.get("seq").unwrap();
            let key: Option<i64> = match f.sort {
                JobSort::Created => None,
                JobSort::Started => row.get("started_at").unwrap(),
                JobSort::Finished => row.get("finished_at").unwrap(),
            };
            last = Some(
                JobCursor {
                    sort: f.sort,
                    key,
                    seq,
                }
                .to_string(),
            );
        }
    }
    drop(rows);
    let steps = stmt.get_status(StatementStatus::VmStep);
    (steps, if n > f.limit { last } else { None })
}

fn plan(conn: &Connection, f: &JobFilter) -> String {
    let (sql, args) = page_sql(conn, f).unwrap();
    let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
    let rows = stmt
        .query_map(rusqlite::params_from_iter(args.iter()), |r| {
            r.get::<_, String>(3)
        })
        .unwrap();
    rows.map(Result::unwrap).collect::<Vec<_>>().join("; ")
}

/// A store file of `jobs` jobs: the rare ones first (the oldest), then common ones,
/// written straight into the tables (the writer's own work is the conformance
/// suite's to check; here only the reads count). The text index fills by its
/// triggers.
fn store_with(path: &std::path::Path, jobs: usize) -> Connection {
    let mut conn = Connection::open(path).unwrap();
    super::schema::migrate(&mut conn).unwrap();
    let tx = conn.transaction().unwrap();
    {
        let mut insert = tx
            .prepare(
                "INSERT INTO jobs (seq, id, kind, queue, priority, state, labels, max_attempts, \
                 backoff_initial_ms, backoff_max_ms, grace_ms, max_recoveries, created_at, \
                 updated_at, started_at, finished_at, error_code, error_message, workflow_id, \
                 schedule_id) \
                 VALUES (?1, ?2, ?3, ?4, 0, ?5, ?6, 1, 1000, 60000, 1000, 3, ?7, ?7, ?8, ?9, \
                 ?10, ?11, ?12, ?13)",
            )
            .unwrap();
        let mut label = tx
            .prepare("INSERT INTO job_labels (key, value, job) VALUES (?1, ?2, ?3)")
            .unwrap();
        let rare = RARE_PER_STATE * State::ALL.len();
        for i in 0..jobs {
            let seq = i as i64 + 1;
            let id = format!(
                "{:08x}-{:012x}",
                i,
                (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 16
            );
            let created = 1_700_000_000_000 + seq * 10;
            let (kind, queue, state, labels) = if i < rare {
                let state = State::ALL[i % State::ALL.len()];
                ("rare-kind", "rare-q", state, ("tier", "gold".to_owned()))
            } else {
                (
                    "bulk",
                    "default",
                    State::Completed,
                    ("source", format!("s{}", i % 5)),
                )
            };
            let started = !matches!(state, State::Scheduled | State::Awaiting | State::Queued);
            let finished = state.is_terminal();
            let failed = state == State::Failed;
            let rare_only = |v: &'static str| (i < rare).then_some(v);
            let json_labels =
                serde_json::to_string(&BTreeMap::from([(labels.0, &labels.1)])).unwrap();
            insert
                .execute(params![
                    seq,
                    id,
                    kind,
                    queue,
                    state.as_str(),
                    json_labels,
                    created,
                    started.then_some(created + 1),
                    finished.then_some(created + 2),
                    failed.then_some("E_QUASAR"),
                    failed.then_some("the quasar exploded"),
                    rare_only("w-rare"),
                    rare_only("s-rare"),
                ])
                .unwrap();
            label.execute(params![labels.0, labels.1, seq]).unwrap();
        }
    }
    // The counts, and the search index caught up as the writer does when idle.
    tx.execute_batch(
        "INSERT INTO job_counts (queue, state, n) \
         SELECT queue, state, COUNT(*) FROM jobs GROUP BY queue, state; \
         INSERT INTO job_text (rowid, body) SELECT seq, body FROM job_text_source \
           WHERE seq > (SELECT upto FROM job_text_mark); \
         UPDATE job_text_mark SET upto = (SELECT MAX(seq) FROM jobs);",
    )
    .unwrap();
    tx.commit().unwrap();
    conn
}

#[test]
fn verify_finds_text_that_the_index_missed() {
    let dir = tempfile::tempdir().unwrap();
    let conn = store_with(&dir.path().join("text.db"), 50);
    super::rows::verify_text(&conn).expect("the triggers kept the index");
    conn.execute_batch(
        "PRAGMA query_only = 0; DROP TRIGGER job_text_reindex; \
         UPDATE jobs SET error_code = 'E_NEW', error_message = 'brand new words' WHERE seq = 5;",
    )
    .unwrap();
    let e = super::rows::verify_text(&conn).unwrap_err().to_string();
    assert!(e.contains("job_text and the jobs' text differ"), "{e}");
}
