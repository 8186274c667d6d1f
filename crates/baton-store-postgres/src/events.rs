//! One global order of events across every server on the database.
//!
//! A write inserts its events with the id of its transaction (`xid`) and no public id.
//! The sequencer gives ids, dense and in one order, to the events of transactions that
//! are older than every transaction still running (`xid` below the snapshot's `xmin`):
//! no transaction can commit an event before them any more, so no id is ever given
//! behind one already given (a slow transaction delays the ids after it rather than
//! leaving a gap). Within a pass the order is `(xid, lid)`, except that each job's
//! events keep the job's own order: two transactions that wrote one job are always
//! ordered in one pass (the later one waited for the earlier's row lock, so the
//! earlier could not be below the horizon alone). One server sequences: the one that
//! holds the sequencer's session-level advisory lock, for as long as its connection
//! lives; the others hint it when their writes wait and take the lock when it is
//! free. The writes themselves take no global lock.
//!
//! Each server's tailer reads the sequenced events in id order and publishes them to
//! its subscribers; a write returns once its own events are published, so a reader
//! sees its events (with their ids) as soon as the write is done.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use baton_core::Event;
use tokio::sync::{Notify, broadcast, oneshot, watch};
use tokio_postgres::{AsyncMessage, Client};

use crate::pool::Pool;
use crate::rows::read_event;
use crate::{Db, LOCK_SEQUENCE};
use baton_store::Result;

/// The channel of the hint sent after the sequencer gave ids (payload: the schema).
pub const CHANNEL: &str = "baton_events";
/// The channel of the hint to the sequencer that a write of another server waits
/// for ids (payload: the schema).
pub const PENDING: &str = "baton_pending";
/// The channel of the hint that a queue has ready jobs (payload: `schema/queue`).
pub const QUEUES: &str = "baton_queues";
/// The least time between two hints of one server.
const HINT_EVERY: Duration = Duration::from_millis(50);
/// The most events one tailer read publishes.
const TAIL_BATCH: i64 = 2000;
/// How often the sequencer and the tailer look without a hint.
const POLL: Duration = Duration::from_secs(1);
/// How often a server whose writes wait for ids, and that does not sequence, tells
/// the sequencer again and tries to take its place (a hint may be lost, the holder
/// may be gone).
const FALLBACK: Duration = Duration::from_millis(50);

struct Waiter {
    left: AtomicUsize,
    done: Mutex<Option<oneshot::Sender<()>>>,
}

pub struct Events {
    pub bus: broadcast::Sender<Arc<Event>>,
    waiting: Mutex<HashMap<i64, Arc<Waiter>>>,
    /// Wakes the sequencer: a write committed events.
    pub sequence: Notify,
    /// This server holds the sequencer's lock.
    pub holder: std::sync::atomic::AtomicBool,
    /// Wakes the tailer: ids were given.
    pub tail: Notify,
    /// The last id published to subscribers.
    pub published: AtomicU64,
    /// Queues given ready jobs by this server's writes, not yet hinted to the others.
    readied: Mutex<std::collections::BTreeSet<String>>,
    hint: Notify,
    /// Queues with ready jobs, as hinted by any server (this one included).
    pub hints: broadcast::Sender<String>,
}

impl Events {
    pub fn new(published: u64) -> Self {
        Self {
            bus: broadcast::channel(16_384).0,
            waiting: Mutex::new(HashMap::new()),
            sequence: Notify::new(),
            holder: std::sync::atomic::AtomicBool::new(false),
            tail: Notify::new(),
            published: AtomicU64::new(published),
            readied: Mutex::new(Default::default()),
            hint: Notify::new(),
            hints: broadcast::channel(1024).0,
        }
    }

    /// Notes queues that a committed write gave ready jobs: the hinter tells the other
    /// servers, after the commit and coalesced.
    pub fn hint(&self, queues: std::collections::BTreeSet<String>) {
        if let Ok(mut r) = self.readied.lock() {
            r.extend(queues);
        }
        self.hint.notify_one();
    }

    /// A receiver told once every event of `lids` (inserted, not yet committed) is
    /// published.
    pub fn expect(&self, lids: &[i64]) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        if lids.is_empty() {
            let _ = tx.send(());
            return rx;
        }
        let waiter = Arc::new(Waiter {
            left: AtomicUsize::new(lids.len()),
            done: Mutex::new(Some(tx)),
        });
        if let Ok(mut map) = self.waiting.lock() {
            for lid in lids {
                map.insert(*lid, Arc::clone(&waiter));
            }
        }
        rx
    }

    /// Whether writes of this server wait for their events' ids.
    fn waits(&self) -> bool {
        self.waiting.lock().is_ok_and(|m| !m.is_empty())
    }

    /// Forgets the events of a write that did not commit.
    pub fn forget(&self, lids: &[i64]) {
        if let Ok(mut map) = self.waiting.lock() {
            for lid in lids {
                map.remove(lid);
            }
        }
    }

    fn publish(&self, lid: i64, event: Event) {
        let id = event.id;
        let _ = self.bus.send(Arc::new(event));
        self.published.store(id, Ordering::Release);
        let waiter = self.waiting.lock().ok().and_then(|mut m| m.remove(&lid));
        if let Some(w) = waiter
            && w.left.fetch_sub(1, Ordering::AcqRel) == 1
            && let Some(tx) = w.done.lock().ok().and_then(|mut d| d.take())
        {
            let _ = tx.send(());
        }
    }
}

/// One pass: gives ids to the events below the horizon, in one statement. The caller
/// holds the sequencer's lock, taken before this statement's snapshot (a snapshot
/// from before the lock could miss what the previous holder gave). Returns whether
/// committed events are left without an id (their transactions are not yet below
/// the horizon).
///
/// The places go by `(xid, lid)`; the `slots` and `owners` steps then hand each
/// job's places to its events in the job's order (the k-th place of a job to its
/// k-th event). Statements in `WITH` that change rows run whether or not the rest
/// reads them; `notified` is read so that it runs.
async fn pass(c: &Client) -> Result<bool> {
    let row = c
        .query_one(
            "WITH h AS MATERIALIZED ( \
               SELECT pg_snapshot_xmin(pg_current_snapshot()) AS xmin), \
             todo AS MATERIALIZED ( \
               SELECT e.lid, e.job_key, e.job_seq, \
                 row_number() OVER (ORDER BY e.xid, e.lid) AS place \
               FROM events e, h WHERE e.id IS NULL AND e.xid < h.xmin), \
             slots AS ( \
               SELECT job_key, place, \
                 row_number() OVER (PARTITION BY job_key ORDER BY place) AS k \
               FROM todo WHERE job_key IS NOT NULL), \
             owners AS ( \
               SELECT lid, job_key, \
                 row_number() OVER (PARTITION BY job_key ORDER BY job_seq, lid) AS k \
               FROM todo WHERE job_key IS NOT NULL), \
             assigned AS ( \
               SELECT o.lid, s.place FROM owners o JOIN slots s USING (job_key, k) \
               UNION ALL SELECT lid, place FROM todo WHERE job_key IS NULL), \
             mark AS MATERIALIZED (SELECT upto FROM sequence_mark), \
             given AS ( \
               UPDATE events SET id = mark.upto + a.place FROM assigned a, mark \
               WHERE events.lid = a.lid RETURNING 1), \
             n AS (SELECT COUNT(*) AS n FROM todo), \
             notified AS (SELECT pg_notify($1, current_schema()) FROM n WHERE n.n > 0) \
             UPDATE sequence_mark SET upto = upto + n.n, horizon = GREATEST(horizon, h.xmin) \
             FROM n, h \
             RETURNING n.n, (SELECT COUNT(*) FROM notified), \
               EXISTS (SELECT 1 FROM events WHERE id IS NULL AND xid >= h.xmin)",
            &[&CHANNEL],
        )
        .await
        .db()?;
    Ok(row.get(2))
}

/// Tries to become the sequencer: takes the session-level lock that the sequencer
/// holds for as long as its connection lives. When the lock is taken by another
/// server and this one has writes waiting for ids, the holder is told (`PENDING`),
/// in the same statement.
async fn take_or_tell(c: &Client, waiting: bool) -> Result<bool> {
    let row = c
        .query_one(
            "WITH l AS MATERIALIZED ( \
               SELECT pg_try_advisory_lock($1, hashtext(current_schema())) AS got) \
             SELECT got, (SELECT COUNT(pg_notify($2, current_schema())) FROM l \
               WHERE NOT l.got AND $3) FROM l",
            &[&LOCK_SEQUENCE, &PENDING, &waiting],
        )
        .await
        .db()?;
    Ok(row.get(0))
}

/// The sequencer of this server: one server on the database holds the sequencer's
/// lock and gives ids; the others tell it when their writes wait, and take the lock
/// when it is free (its holder's connection went: the server stopped or died).
///
/// The holder runs a pass when woken (its own commits, another server's `PENDING`
/// hint) and every [`POLL`], and again 1 ms later while committed events wait for
/// the horizon. A server without the lock tries it, and tells the holder, on each of
/// its own commits, every [`FALLBACK`] while its writes wait, and every [`POLL`].
pub async fn sequencer(pool: Arc<Pool>, events: Arc<Events>, mut stop: watch::Receiver<bool>) {
    let mut client: Option<Client> = None;
    let mut again = false;
    loop {
        if !again {
            let idle = if events.holder.load(Ordering::Acquire) || !events.waits() {
                POLL
            } else {
                FALLBACK
            };
            tokio::select! {
                _ = events.sequence.notified() => {}
                _ = tokio::time::sleep(idle) => {}
                _ = stop.changed() => return,
            }
        } else {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        if *stop.borrow() {
            return;
        }
        if client.as_ref().is_none_or(Client::is_closed) {
            // A new connection holds no lock.
            events.holder.store(false, Ordering::Release);
            client = match pool.connect().await {
                Ok(c) => Some(c),
                Err(e) => {
                    tracing::warn!(error = %e, "the event sequencer cannot connect; retrying");
                    again = false;
                    continue;
                }
            };
        }
        let Some(c) = client.as_ref() else { continue };
        if !events.holder.load(Ordering::Acquire) {
            match take_or_tell(c, events.waits()).await {
                Ok(true) => {
                    tracing::debug!("this server sequences the events");
                    events.holder.store(true, Ordering::Release);
                }
                Ok(false) => {
                    again = false;
                    continue;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "the event sequencer cannot take its lock; retrying");
                    again = false;
                    continue;
                }
            }
        }
        match pass(c).await {
            Ok(left) => {
                again = left;
                events.tail.notify_one();
            }
            Err(e) => {
                tracing::warn!(error = %e, "an event sequencer pass failed; retrying");
                again = false;
            }
        }
    }
}

/// Publishes the sequenced events in id order, when woken (and every [`POLL`]).
pub async fn tailer(pool: Arc<Pool>, events: Arc<Events>, mut stop: watch::Receiver<bool>) {
    let mut client: Option<Client> = None;
    let mut more = false;
    loop {
        if !more {
            tokio::select! {
                _ = events.tail.notified() => {}
                _ = tokio::time::sleep(POLL) => {}
                _ = stop.changed() => return,
            }
        }
        if *stop.borrow() {
            return;
        }
        if client.as_ref().is_none_or(Client::is_closed) {
            client = match pool.connect().await {
                Ok(c) => Some(c),
                Err(e) => {
                    tracing::warn!(error = %e, "the event tailer cannot connect; retrying");
                    more = false;
                    continue;
                }
            };
        }
        let Some(c) = client.as_ref() else { continue };
        let after = events.published.load(Ordering::Acquire) as i64;
        let rows = c
            .query(
                "SELECT id, job_id, job_seq, type, at, data, lid FROM events \
                 WHERE id > $1 ORDER BY id LIMIT $2",
                &[&after, &TAIL_BATCH],
            )
            .await;
        match rows {
            Ok(rows) => {
                more = rows.len() as i64 == TAIL_BATCH;
                for r in &rows {
                    match read_event(r) {
                        Ok(e) => events.publish(r.get(6), e),
                        Err(e) => {
                            tracing::error!(error = %e, "a stored event cannot be read");
                            more = false;
                            break;
                        }
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "the event tailer's read failed; retrying");
                more = false;
            }
        }
    }
}

/// Listens for other servers' hints on a connection of its own: ids were given.
pub async fn listener(
    pool: Arc<Pool>,
    schema: String,
    events: Arc<Events>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let (client, mut connection) = match pool.connect_raw().await {
            Ok(pair) => pair,
            Err(e) => {
                tracing::warn!(error = %e, "the event listener cannot connect; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(POLL) => continue,
                    _ = stop.changed() => return,
                }
            }
        };
        let listen = async {
            loop {
                match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                    Some(Ok(AsyncMessage::Notification(n))) => {
                        if n.channel() == CHANNEL && n.payload() == schema {
                            events.tail.notify_one();
                        } else if n.channel() == PENDING
                            && n.payload() == schema
                            && events.holder.load(Ordering::Acquire)
                        {
                            events.sequence.notify_one();
                        } else if n.channel() == QUEUES
                            && let Some((s, queue)) = n.payload().split_once('/')
                            && s == schema
                        {
                            let _ = events.hints.send(queue.to_owned());
                        }
                    }
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => return,
                }
            }
        };
        let sql = format!("LISTEN {CHANNEL}; LISTEN {PENDING}; LISTEN {QUEUES}");
        let subscribe = client.batch_execute(&sql);
        tokio::select! {
            _ = async { let _ = subscribe.await; std::future::pending::<()>().await } => {}
            () = listen => {}
            _ = stop.changed() => return,
        }
        // The connection ended: a hint may have been lost, so look now.
        events.tail.notify_one();
    }
}

/// Sends the queues' hints (one `NOTIFY` each, after the writes committed), at most
/// once per [`HINT_EVERY`], however many writes readied them meanwhile.
pub async fn hinter(
    pool: Arc<Pool>,
    schema: String,
    events: Arc<Events>,
    mut stop: watch::Receiver<bool>,
) {
    let mut client: Option<Client> = None;
    loop {
        tokio::select! {
            _ = events.hint.notified() => {}
            _ = stop.changed() => return,
        }
        let queues: Vec<String> = events
            .readied
            .lock()
            .map(|mut r| std::mem::take(&mut *r).into_iter().collect())
            .unwrap_or_default();
        if queues.is_empty() {
            continue;
        }
        if client.as_ref().is_none_or(Client::is_closed) {
            client = pool.connect().await.ok();
        }
        if let Some(c) = client.as_ref() {
            let payloads: Vec<String> = queues.iter().map(|q| format!("{schema}/{q}")).collect();
            if let Err(e) = c
                .execute(
                    "SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p",
                    &[&QUEUES, &payloads],
                )
                .await
            {
                // The others find the jobs by their slow poll.
                tracing::debug!(error = %e, "a queue hint was not sent");
            }
        }
        tokio::time::sleep(HINT_EVERY).await;
    }
}

/// Notes a write's commit: its events wait for the sequencer.
pub fn committed(events: &Events) {
    events.sequence.notify_one();
}

pub type Published = oneshot::Receiver<()>;
