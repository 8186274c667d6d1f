//! One write: a transaction on a pooled connection, with the events and count
//! changes it makes, written just before it commits.

use std::sync::Arc;

use baton_core::{EventKind, Millis, State};
use serde_json::Value;

use crate::Db;
use crate::events::{Events, Published, committed};
use crate::pool::{Conn, Pool};
use baton_store::{Result, Span};

struct NewEvent {
    job_key: Option<i64>,
    job_id: Option<String>,
    job_seq: i64,
    kind: EventKind,
    at: Millis,
    data: Value,
}

/// Where a write stood when a savepoint began: what rolling back to it forgets.
pub struct Mark {
    name: String,
    events: usize,
    moves: usize,
}

/// A job that ended (or left an end) in this write, whose dependents have still to
/// hear of it (see `deps.rs`).
pub struct Ending {
    pub key: i64,
    pub id: String,
    pub to: State,
    pub now: Millis,
}

pub struct Work<'p> {
    pub c: Conn<'p>,
    events: Vec<NewEvent>,
    /// Jobs that moved: queue, from (none: new), to (none: removed), when.
    moves: Vec<(String, Option<State>, Option<State>, Millis)>,
    savepoints: u32,
    /// While dependents are being settled: the endings still to settle, a work list
    /// rather than recursion, so that a chain of any length cannot overflow the stack.
    pub settling: Option<Vec<Ending>>,
    /// The concurrency limits in force for this write's claims and starts.
    pub limits: Arc<[baton_core::ConcurrencyLimit]>,
    /// When each queue's claim on this server last looked through the whole queue
    /// past a full limit's jobs (see `limits.rs`).
    pub deep_scans: Arc<std::sync::Mutex<baton_store::turns::DeepScans>>,
}

impl<'p> Work<'p> {
    pub async fn begin(pool: &'p Pool) -> Result<Work<'p>> {
        let mut c = pool.get().await?;
        c.batch_execute("BEGIN").await.db()?;
        c.in_transaction = true;
        Ok(Work {
            c,
            events: Vec::new(),
            moves: Vec::new(),
            savepoints: 0,
            settling: None,
            limits: Arc::from(Vec::new()),
            deep_scans: Arc::default(),
        })
    }

    /// Records an event; `job` is the job's id and its row key.
    pub fn event(
        &mut self,
        job: Option<(&str, i64)>,
        seq: u64,
        kind: EventKind,
        at: Millis,
        data: Value,
    ) {
        self.events.push(NewEvent {
            job_key: job.map(|j| j.1),
            job_id: job.map(|j| j.0.to_owned()),
            job_seq: seq as i64,
            kind,
            at,
            data,
        });
    }

    /// Records that a job of `queue` left `from` (none: it is new) for `to` at `at`.
    pub fn moved(&mut self, queue: &str, from: Option<State>, to: State, at: Millis) {
        self.moves.push((queue.to_owned(), from, Some(to), at));
    }

    /// Records that a job of `queue` in state `from` was removed.
    pub fn removed(&mut self, queue: &str, from: State, at: Millis) {
        self.moves.push((queue.to_owned(), Some(from), None, at));
    }

    /// The queues that this write gave ready jobs.
    fn readied(&self) -> std::collections::BTreeSet<String> {
        self.moves
            .iter()
            .filter(|m| m.2 == Some(State::Queued))
            .map(|m| m.0.clone())
            .collect()
    }

    pub async fn savepoint(&mut self) -> Result<Mark> {
        self.savepoints += 1;
        let name = format!("s{}", self.savepoints);
        self.c
            .batch_execute(&format!("SAVEPOINT {name}"))
            .await
            .db()?;
        Ok(Mark {
            name,
            events: self.events.len(),
            moves: self.moves.len(),
        })
    }

    /// Ends a savepoint: kept when `keep`, else rolled back with what was recorded
    /// after it.
    pub async fn end_savepoint(&mut self, mark: Mark, keep: bool) -> Result<()> {
        if keep {
            return self
                .c
                .batch_execute(&format!("RELEASE SAVEPOINT {}", mark.name))
                .await
                .db();
        }
        self.events.truncate(mark.events);
        self.moves.truncate(mark.moves);
        self.c
            .batch_execute(&format!("ROLLBACK TO SAVEPOINT {}", mark.name))
            .await
            .db()
    }

    /// Writes the events and counts and commits; the receiver is told once the
    /// events are published.
    pub async fn commit(mut self, events: &Events) -> Result<Published> {
        let readied = self.readied();
        let lids = self.write_events().await?;
        let published = events.expect(&lids);
        let done = async {
            self.write_counts().await?;
            self.c.batch_execute("COMMIT").await.db()
        }
        .await;
        if let Err(e) = done {
            events.forget(&lids);
            return Err(e);
        }
        self.c.in_transaction = false;
        if !lids.is_empty() {
            committed(events);
        }
        if !readied.is_empty() {
            events.hint(readied);
        }
        Ok(published)
    }

    pub async fn rollback(mut self) {
        if self.c.batch_execute("ROLLBACK").await.is_ok() {
            self.c.in_transaction = false;
        }
    }

    async fn write_events(&mut self) -> Result<Vec<i64>> {
        if self.events.is_empty() {
            return Ok(Vec::new());
        }
        let n = self.events.len();
        let mut keys = Vec::with_capacity(n);
        let mut ids = Vec::with_capacity(n);
        let mut seqs = Vec::with_capacity(n);
        let mut kinds = Vec::with_capacity(n);
        let mut ats = Vec::with_capacity(n);
        let mut data = Vec::with_capacity(n);
        for e in self.events.drain(..) {
            keys.push(e.job_key);
            ids.push(e.job_id);
            seqs.push(e.job_seq);
            kinds.push(e.kind.as_str());
            ats.push(e.at);
            data.push(e.data);
        }
        // `WITH ORDINALITY`: the rows keep the order the write recorded them in.
        let rows = self
            .c
            .query(
                "INSERT INTO events (job_key, job_id, job_seq, type, at, data) \
                 SELECT k, i, s, t, a, d FROM unnest($1::bigint[], $2::text[], $3::bigint[], \
                 $4::text[], $5::bigint[], $6::jsonb[]) WITH ORDINALITY AS e (k, i, s, t, a, d, o) \
                 ORDER BY o RETURNING lid",
                &[&keys, &ids, &seqs, &kinds, &ats, &data],
            )
            .await
            .db()?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// Appends the write's moves to `job_counts` and its completions and failures to
    /// `throughput`, one row per queue and state (and bucket).
    async fn write_counts(&mut self) -> Result<()> {
        if self.moves.is_empty() {
            return Ok(());
        }
        // Keyed also by whether the change is a removal. A removal (retention) has no
        // event, so no sequencer pass waits for it and the horizon may pass it a
        // second later: it is counted as soon as it commits instead (xid 0). Its job's
        // own changes are counted already: a job goes only once its events have their
        // ids, given under a horizon past the writes that made them.
        let mut sums: std::collections::BTreeMap<(&str, State, bool), i64> = Default::default();
        let mut buckets: std::collections::BTreeMap<(i64, Millis, &str), (i64, i64)> =
            Default::default();
        for (queue, from, to, at) in &self.moves {
            if let Some(from) = from {
                *sums
                    .entry((queue.as_str(), *from, to.is_none()))
                    .or_default() -= 1;
            }
            let Some(to) = to else { continue };
            *sums.entry((queue.as_str(), *to, false)).or_default() += 1;
            let failed = match to {
                State::Completed => false,
                State::Failed => true,
                _ => continue,
            };
            for span in [Span::Second, Span::Minute] {
                let size = span.millis();
                let n = buckets
                    .entry((size, at.div_euclid(size) * size, queue.as_str()))
                    .or_default();
                if failed {
                    n.1 += 1;
                } else {
                    n.0 += 1;
                }
            }
        }
        let (mut queues, mut states, mut ns, mut removals) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for ((queue, state, removal), n) in sums {
            if n != 0 {
                queues.push(queue);
                states.push(state.as_str());
                ns.push(n);
                removals.push(removal);
            }
        }
        if !ns.is_empty() {
            self.c
                .execute(
                    "INSERT INTO job_counts (queue, state, n, xid) \
                     SELECT q, s, n, CASE WHEN r THEN '0'::xid8 ELSE pg_current_xact_id() END \
                     FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bool[]) \
                     AS c (q, s, n, r)",
                    &[&queues, &states, &ns, &removals],
                )
                .await
                .db()?;
        }
        if !buckets.is_empty() {
            let (mut spans, mut ats, mut queues, mut done, mut failed) =
                (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
            for ((span, at, queue), (c, f)) in buckets {
                spans.push(span);
                ats.push(at);
                queues.push(queue);
                done.push(c);
                failed.push(f);
            }
            self.c
                .execute(
                    "INSERT INTO throughput (span, at, queue, completed, failed) \
                     SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::bigint[], \
                     $5::bigint[])",
                    &[&spans, &ats, &queues, &done, &failed],
                )
                .await
                .db()?;
        }
        self.moves.clear();
        Ok(())
    }
}
