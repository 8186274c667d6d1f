//! The reads: each one statement (or one snapshot) on a pooled connection.

use baton_core::{Event, EventKind, Millis};
use tokio_postgres::GenericClient;
use tokio_postgres::types::ToSql;

use crate::Db;
use crate::rows::{EVENT_COLUMNS, JOB_COLUMNS, read_event, read_events, state};
use baton_store::{
    Checkpoint, Counts, Error, JobCursor, JobFilter, JobPage, JobProcess, JobSort, LIST_COUNT_CAP,
    LogLine, Pipeline, ProcessRecord, Result, ServerInfo, Span, ThroughputRow,
};

pub async fn next_due(c: &impl GenericClient) -> Result<Option<Millis>> {
    Ok(c.query_one(
        "SELECT MIN(run_at) FROM jobs WHERE state = 'scheduled'",
        &[],
    )
    .await
    .db()?
    .get(0))
}

pub async fn job_events(
    c: &impl GenericClient,
    job_id: &str,
    kinds: Option<&[EventKind]>,
    after: u64,
    limit: usize,
) -> Result<Vec<Event>> {
    let names: Option<Vec<&str>> = kinds.map(|k| k.iter().map(|k| k.as_str()).collect());
    let rows = c
        .query(
            &format!(
                "SELECT {EVENT_COLUMNS} FROM events \
                 WHERE job_key = (SELECT key FROM jobs WHERE id = $1) AND job_seq > $2 \
                 AND id IS NOT NULL AND ($3::text[] IS NULL OR type = ANY ($3)) \
                 ORDER BY job_seq LIMIT $4"
            ),
            &[&job_id, &(after as i64), &names, &clamp(limit)],
        )
        .await
        .db()?;
    read_events(&rows)
}

fn clamp(limit: usize) -> i64 {
    limit.min(i64::MAX as usize) as i64
}

pub async fn events_after(c: &impl GenericClient, after: u64, limit: usize) -> Result<Vec<Event>> {
    let rows = c
        .query(
            &format!("SELECT {EVENT_COLUMNS} FROM events WHERE id > $1 ORDER BY id LIMIT $2"),
            &[&(after as i64), &clamp(limit)],
        )
        .await
        .db()?;
    rows.iter().map(read_event).collect()
}

pub async fn last_event_id(c: &impl GenericClient) -> Result<u64> {
    let upto: i64 = c
        .query_one("SELECT upto FROM sequence_mark", &[])
        .await
        .db()?
        .get(0);
    Ok(upto as u64)
}

pub async fn events_pruned_upto(c: &impl GenericClient) -> Result<u64> {
    let upto: i64 = c
        .query_one("SELECT pruned_upto FROM sequence_mark", &[])
        .await
        .db()?
        .get(0);
    Ok(upto as u64)
}

pub async fn checkpoints(c: &impl GenericClient, job_id: &str) -> Result<Vec<Checkpoint>> {
    let rows = c
        .query(
            "SELECT seq, attempt, step, data, at FROM checkpoints \
             WHERE job_key = (SELECT key FROM jobs WHERE id = $1) ORDER BY seq",
            &[&job_id],
        )
        .await
        .db()?;
    Ok(rows
        .iter()
        .map(|r| Checkpoint {
            seq: r.get::<_, i64>(0) as u64,
            attempt: r.get::<_, i32>(1) as u32,
            step: r.get(2),
            data: r.get(3),
            at: r.get(4),
        })
        .collect())
}

pub async fn servers(c: &impl GenericClient) -> Result<Vec<ServerInfo>> {
    let rows = c
        .query(
            "SELECT id, host, pid, url, started_at, heartbeat_at, stopped_at, queues, workers \
             FROM servers ORDER BY started_at DESC, id",
            &[],
        )
        .await
        .db()?;
    rows.iter()
        .map(|r| {
            let queues: serde_json::Value = r.get(7);
            Ok(ServerInfo {
                id: r.get(0),
                host: r.get(1),
                pid: r.get::<_, i32>(2) as u32,
                url: r.get(3),
                started_at: r.get(4),
                heartbeat_at: r.get(5),
                stopped_at: r.get(6),
                queues: serde_json::from_value(queues.clone()).map_err(|e| {
                    Error::Internal(format!("stored server queues {queues} cannot be read: {e}"))
                })?,
                workers: r.get::<_, i32>(8) as u32,
            })
        })
        .collect()
}

/// The counts and the last event they include, from one snapshot: the changes of
/// the transactions below the sequencer's horizon, whose events all have ids up to
/// its mark (a transaction committed but not yet sequenced is counted by neither).
pub async fn counts(c: &mut tokio_postgres::Client) -> Result<Counts> {
    let tx = c
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .db()?;
    let mark = tx
        .query_one("SELECT upto, horizon::text FROM sequence_mark", &[])
        .await
        .db()?;
    let (upto, horizon): (i64, String) = (mark.get(0), mark.get(1));
    let rows = tx
        .query(
            "SELECT queue, state, SUM(n)::bigint FROM job_counts WHERE xid < $1::text::xid8 \
             GROUP BY queue, state HAVING SUM(n) > 0 ORDER BY queue, state",
            &[&horizon],
        )
        .await
        .db()?;
    tx.commit().await.db()?;
    Ok(Counts {
        rows: rows
            .iter()
            .map(|r| Ok((r.get(0), state(r.get(1))?, r.get::<_, i64>(2) as u64)))
            .collect::<Result<_>>()?,
        last_event: upto as u64,
    })
}

/// Compares the kept counts with the jobs' rows, in one snapshot.
pub async fn verify(c: &mut tokio_postgres::Client) -> Result<()> {
    let tx = c
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .db()?;
    let read = |rows: Vec<tokio_postgres::Row>| -> Vec<(String, String, i64)> {
        rows.iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect()
    };
    let kept = read(
        tx.query(
            "SELECT queue, state, SUM(n)::bigint FROM job_counts GROUP BY queue, state \
             HAVING SUM(n) <> 0 ORDER BY queue, state",
            &[],
        )
        .await
        .db()?,
    );
    let real = read(
        tx.query(
            "SELECT queue, state, COUNT(*) FROM jobs GROUP BY queue, state ORDER BY queue, state",
            &[],
        )
        .await
        .db()?,
    );
    tx.commit().await.db()?;
    if kept != real {
        return Err(Error::Internal(format!(
            "job_counts {kept:?} differ from the jobs' rows {real:?}"
        )));
    }
    Ok(())
}

pub async fn processes(c: &impl GenericClient) -> Result<Vec<ProcessRecord>> {
    let rows = c
        .query(
            "SELECT jobs.id, pgid, proc_start, server_id, servers.host \
             FROM jobs LEFT JOIN servers ON servers.id = jobs.server_id \
             WHERE state IN ('running', 'paused', 'stopping') AND pgid IS NOT NULL ORDER BY key",
            &[],
        )
        .await
        .db()?;
    Ok(rows
        .iter()
        .map(|r| ProcessRecord {
            job_id: r.get(0),
            process: JobProcess {
                pgid: r.get(1),
                start_time: r.get::<_, Option<i64>>(2).unwrap_or(0) as u64,
            },
            server_id: r.get(3),
            host: r.get(4),
        })
        .collect())
}

pub async fn logs(
    c: &impl GenericClient,
    job_id: &str,
    after: u64,
    limit: usize,
) -> Result<Vec<LogLine>> {
    let rows = c
        .query(
            "SELECT seq, attempt, stream, line, at FROM logs \
             WHERE job_key = (SELECT key FROM jobs WHERE id = $1) AND seq > $2 ORDER BY seq LIMIT $3",
            &[&job_id, &(after as i64), &clamp(limit)],
        )
        .await
        .db()?;
    Ok(rows
        .iter()
        .map(|r| LogLine {
            seq: r.get::<_, i64>(0) as u64,
            attempt: r.get::<_, i32>(1) as u32,
            stream: r.get(2),
            line: r.get(3),
            at: r.get(4),
        })
        .collect())
}

fn read_pipeline(r: &tokio_postgres::Row) -> Result<Pipeline> {
    let spec: serde_json::Value = r.get(0);
    Ok(Pipeline {
        spec: serde_json::from_value(spec)
            .map_err(|e| Error::Internal(format!("a stored pipeline cannot be read: {e}")))?,
        created_at: r.get(1),
        updated_at: r.get(2),
    })
}

pub async fn pipelines(c: &impl GenericClient, id: Option<&str>) -> Result<Vec<Pipeline>> {
    let rows = c
        .query(
            "SELECT spec, created_at, updated_at FROM pipelines \
             WHERE $1::text IS NULL OR id = $1 ORDER BY id",
            &[&id],
        )
        .await
        .db()?;
    rows.iter().map(read_pipeline).collect()
}

pub async fn throughput(
    c: &impl GenericClient,
    span: Span,
    since: Millis,
) -> Result<Vec<ThroughputRow>> {
    let rows = c
        .query(
            "SELECT at, queue, SUM(completed)::bigint, SUM(failed)::bigint FROM throughput \
             WHERE span = $1 AND at >= $2 \
             AND at >= (SELECT MAX(at) FROM throughput WHERE span = $1) / 60000 * 60000 - $3 \
             GROUP BY at, queue ORDER BY at, queue",
            &[&span.millis(), &since, &span.kept()],
        )
        .await
        .db()?;
    Ok(rows
        .iter()
        .map(|r| ThroughputRow {
            at: r.get(0),
            queue: r.get(1),
            completed: r.get::<_, i64>(2) as u64,
            failed: r.get::<_, i64>(3) as u64,
        })
        .collect())
}

/// A page of jobs, newest first by the filter's sort, with its total.
pub async fn list(c: &impl GenericClient, f: &JobFilter) -> Result<JobPage> {
    let mut wheres: Vec<String> = Vec::new();
    let mut params: Vec<Box<dyn ToSql + Sync + Send>> = Vec::new();
    let bind = |v: Box<dyn ToSql + Sync + Send>, params: &mut Vec<_>| {
        params.push(v);
        format!("${}", params.len())
    };
    if f.states.is_empty() {
        wheres.push("state <> 'deleted'".into());
    } else {
        let names: Vec<String> = f.states.iter().map(|s| s.as_str().to_owned()).collect();
        let p = bind(Box::new(names), &mut params);
        wheres.push(format!("state = ANY ({p})"));
    }
    let mut exact = true;
    if let Some(q) = &f.queue {
        let p = bind(Box::new(q.clone()), &mut params);
        wheres.push(format!("queue = {p}"));
    }
    if let Some(k) = &f.kind {
        exact = false;
        let p = bind(Box::new(k.clone()), &mut params);
        wheres.push(format!("kind = {p}"));
    }
    if let Some((k, v)) = &f.label {
        exact = false;
        let p = bind(Box::new(serde_json::json!({ k: v })), &mut params);
        wheres.push(format!("labels @> {p}"));
    }
    if let Some(text) = &f.text {
        exact = false;
        let terms = baton_store::search_terms(text).map_err(Error::Config)?;
        let p = bind(Box::new(crate::search::query(&terms)), &mut params);
        wheres.push(format!("search @@ {p}::text::tsquery"));
    }
    if let Some(w) = &f.workflow {
        exact = false;
        let p = bind(Box::new(w.clone()), &mut params);
        wheres.push(format!("workflow_id = {p}"));
    }
    if let Some(s) = &f.schedule {
        exact = false;
        let p = bind(Box::new(s.clone()), &mut params);
        wheres.push(format!("schedule_id = {p}"));
    }
    let time = match f.sort {
        JobSort::Created => None,
        JobSort::Started => Some("started_at"),
        JobSort::Finished => Some("finished_at"),
    };
    if let Some(t) = time {
        wheres.push(format!("{t} IS NOT NULL"));
    }
    let filter = wheres.join(" AND ");
    let count_params: Vec<&(dyn ToSql + Sync)> = params
        .iter()
        .map(|p| p.as_ref() as &(dyn ToSql + Sync))
        .collect();
    let total: i64 = if exact {
        c.query_one(
            &format!("SELECT COUNT(*) FROM jobs WHERE {filter}"),
            &count_params,
        )
        .await
        .db()?
        .get(0)
    } else {
        c.query_one(
            &format!(
                "SELECT COUNT(*) FROM (SELECT 1 FROM jobs WHERE {filter} LIMIT {}) AS capped",
                LIST_COUNT_CAP + 1
            ),
            &count_params,
        )
        .await
        .db()?
        .get(0)
    };
    let (total, total_exact) = if exact || total as u64 <= LIST_COUNT_CAP {
        (total as u64, true)
    } else {
        (LIST_COUNT_CAP, false)
    };
    let mut page_wheres = vec![filter];
    if let Some(text) = &f.cursor {
        let cursor = JobCursor::parse(text, f.sort).map_err(Error::Config)?;
        let p = bind(Box::new(cursor.seq), &mut params);
        match (time, cursor.key) {
            (Some(t), Some(at)) => {
                let q = bind(Box::new(at), &mut params);
                page_wheres.push(format!("({t}, key) < ({q}, {p})"));
            }
            _ => page_wheres.push(format!("key < {p}")),
        }
    }
    let order = match time {
        Some(t) => format!("{t} DESC, key DESC"),
        None => "key DESC".into(),
    };
    let limit = f.limit.max(1);
    let sql = format!(
        "SELECT {JOB_COLUMNS}, {} FROM jobs WHERE {} ORDER BY {order} LIMIT {}",
        crate::deps::DEPENDS_ON,
        page_wheres.join(" AND "),
        limit + 1
    );
    let page_params: Vec<&(dyn ToSql + Sync)> = params
        .iter()
        .map(|p| p.as_ref() as &(dyn ToSql + Sync))
        .collect();
    let rows = c.query(&sql, &page_params).await.db()?;
    let mut jobs: Vec<crate::rows::JobRow> = rows
        .iter()
        .map(crate::rows::read_job_with_deps)
        .collect::<Result<_>>()?;
    let next_cursor = if jobs.len() > limit {
        jobs.truncate(limit);
        jobs.last().map(|last| {
            let key = match f.sort {
                JobSort::Created => None,
                JobSort::Started => last.job.started_at,
                JobSort::Finished => last.job.finished_at,
            };
            JobCursor {
                sort: f.sort,
                key,
                seq: last.key,
            }
            .to_string()
        })
    } else {
        None
    };
    Ok(JobPage {
        jobs: jobs.into_iter().map(|r| r.job).collect(),
        next_cursor,
        total,
        total_exact,
    })
}
