//! Retention: the engine prunes finished jobs past their queue's retention, a batch a
//! write, on a timer.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use baton_core::Millis;
use baton_store::{PruneCursor, PruneRequest};

use crate::engine::Inner;

/// How long finished jobs (and their events) are kept, and how pruning runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Retention {
    /// Queues not in `queues` keep finished jobs this long; `None`: for ever.
    pub keep: Option<Duration>,
    /// Queues with a retention of their own (`None`: for ever).
    pub queues: BTreeMap<String, Option<Duration>>,
    /// How often the engine looks for jobs to prune.
    pub every: Duration,
    /// The most jobs one write removes: other writes run between batches, and a
    /// commit that holds a batch is the longer for it (about 5 ms for 100 jobs).
    pub batch: usize,
}

/// Finished jobs are kept a week unless configured.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

impl Default for Retention {
    fn default() -> Self {
        Retention {
            keep: Some(DEFAULT_RETENTION),
            queues: BTreeMap::new(),
            every: Duration::from_secs(60),
            batch: 100,
        }
    }
}

impl Retention {
    /// The retention of `queue`.
    pub fn of(&self, queue: &str) -> Option<Duration> {
        match self.queues.get(queue) {
            Some(own) => *own,
            None => self.keep,
        }
    }

    fn request(&self, now: Millis, after: Option<PruneCursor>) -> PruneRequest {
        let millis = |d: Option<Duration>| d.map(|d| d.as_millis().min(i64::MAX as u128) as Millis);
        PruneRequest {
            now,
            retention: millis(self.keep),
            queues: self
                .queues
                .iter()
                .map(|(q, keep)| (q.clone(), millis(*keep)))
                .collect(),
            limit: self.batch.max(1),
            after,
        }
    }
}

/// What pruning removed since the engine started.
#[derive(Debug, Default)]
pub(crate) struct PruneCounters {
    pub jobs: AtomicU64,
    pub events: AtomicU64,
    /// Prune writes, and the time they took from request to answer.
    pub writes: AtomicU64,
    pub write_ns: AtomicU64,
}

/// Prunes every `retention.every` until shutdown; each batch is its own write, and the
/// task pauses between them as long as the last one took, so that a backlog (the
/// first round after a long stop, or a lowered retention) takes at most about half
/// of the writer's time while it is worked off.
pub(crate) async fn run(inner: Arc<Inner>, retention: Retention) {
    if retention.keep.is_none() && retention.queues.values().all(Option::is_none) {
        return;
    }
    let start = tokio::time::Instant::now() + retention.every;
    let mut tick = tokio::time::interval_at(start, retention.every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = inner.shutdown.cancelled() => return,
        }
        // On a shared store the leader prunes for every server.
        if !inner.leading.load(Ordering::SeqCst) {
            continue;
        }
        prune_due(&inner, &retention).await;
    }
}

/// Prunes what is due now, batch after batch.
pub(crate) async fn prune_due(inner: &Inner, retention: &Retention) {
    // Each write goes on where the last one stopped looking.
    let mut after = None;
    loop {
        if inner.shutdown.is_cancelled() {
            return;
        }
        let req = retention.request(inner.clock.now(), after);
        let started = std::time::Instant::now();
        let result = inner.store.prune(req).await;
        inner.pruned.writes.fetch_add(1, Ordering::Relaxed);
        inner.pruned.write_ns.fetch_add(
            started.elapsed().as_nanos().min(u64::MAX as u128) as u64,
            Ordering::Relaxed,
        );
        match result {
            Ok(p) => {
                inner.pruned.jobs.fetch_add(p.jobs, Ordering::Relaxed);
                inner.pruned.events.fetch_add(p.events, Ordering::Relaxed);
                if p.jobs > 0 || p.events > 0 {
                    tracing::debug!(jobs = p.jobs, events = p.events, "pruned past retention");
                }
                if !p.more {
                    return;
                }
                after = p.next;
                tokio::select! {
                    _ = tokio::time::sleep(started.elapsed()) => {}
                    _ = inner.shutdown.cancelled() => return,
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "pruning failed; trying again at the next round");
                return;
            }
        }
    }
}
