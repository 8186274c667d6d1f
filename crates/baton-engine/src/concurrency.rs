//! Concurrency limits by label or kind across queues, on the engine's side: the
//! store enforces them in its claims (see `baton_store::Store::claim`); the engine
//! wakes the queues a limit may hold when a slot frees, so that they claim again
//! (and keep their place in line), and tells why a queued job waits.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use baton_core::concurrency::LimitUse;
use baton_core::{ConcurrencyLimit, EventKind, Job, State};
use tokio::sync::broadcast::error::RecvError;

use crate::Result;
use crate::engine::{Engine, Inner};

/// How often the queues claim again while limits are set, even with no event: they
/// keep their place in line at a full limit (see `baton_store::turns::TURN_TTL`), and
/// find slots that other servers freed.
const RECLAIM: Duration = Duration::from_secs(1);

/// Whether an event frees a slot its job held.
fn frees_a_slot(kind: EventKind) -> bool {
    matches!(
        kind,
        EventKind::Completed
            | EventKind::Failed
            | EventKind::Cancelled
            | EventKind::Crashed
            | EventKind::Retrying
            | EventKind::Deleted
    )
}

/// While limits are set: wakes every queue (and remote worker) when an attempt ends
/// anywhere on the store, and every [`RECLAIM`].
pub(crate) async fn wake_on_freed_slots(inner: Arc<Inner>) {
    if inner.concurrency.is_empty() {
        return;
    }
    let mut events = inner.store.subscribe();
    let wake = || {
        for q in inner.queues.values() {
            q.backlog.store(true, Ordering::SeqCst);
            q.wake.notify_one();
        }
        inner.remote.wake_all();
    };
    loop {
        tokio::select! {
            e = events.recv() => match e {
                Ok(e) if frees_a_slot(e.kind) => wake(),
                Ok(_) => {}
                Err(RecvError::Lagged(_)) => wake(),
                Err(RecvError::Closed) => return,
            },
            _ = tokio::time::sleep(RECLAIM) => wake(),
            _ = inner.shutdown.cancelled() => return,
        }
    }
}

impl Engine {
    /// The concurrency limits this engine claims under.
    pub fn concurrency_limits(&self) -> &[ConcurrencyLimit] {
        &self.inner.concurrency
    }

    /// Each limit with the number of its slots held now.
    pub async fn concurrency_use(&self) -> Result<Vec<LimitUse>> {
        let limits = &self.inner.concurrency;
        let held = self.inner.store.concurrency_held(limits).await?;
        Ok(limits
            .iter()
            .zip(held)
            .map(|(l, held)| {
                let (label, kind) = match &l.scope {
                    baton_core::LimitScope::Label { key, value } => {
                        (Some(format!("{key}:{value}")), None)
                    }
                    baton_core::LimitScope::Kind(k) => (None, Some(k.clone())),
                };
                LimitUse {
                    name: l.name(),
                    label,
                    kind,
                    max: l.max,
                    held,
                }
            })
            .collect())
    }

    /// Why a queued job waits, when a full concurrency limit holds it:
    /// `concurrency limit source:alfabeta (2/2)`.
    pub async fn waiting_for(&self, job: &Job) -> Result<Option<String>> {
        if job.state != State::Queued {
            return Ok(None);
        }
        let covering: Vec<ConcurrencyLimit> = self
            .inner
            .concurrency
            .iter()
            .filter(|l| l.covers(&job.kind, &job.labels))
            .cloned()
            .collect();
        if covering.is_empty() {
            return Ok(None);
        }
        let held = self.inner.store.concurrency_held(&covering).await?;
        Ok(covering
            .iter()
            .zip(held)
            .find(|(l, held)| *held >= u64::from(l.max))
            .map(|(l, held)| l.waiting_for(held)))
    }
}
