//! What an engine does on a store that several engines share (PostgreSQL): it learns
//! of jobs another server made ready, and obeys a pause, resume or stop that another
//! server's API wrote for a job that this one runs.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use baton_core::{EventKind, State};
use tokio::sync::broadcast::error::RecvError;

use crate::engine::Inner;
use crate::run::Ctl;

/// How often every queue looks for ready jobs without a hint (one may be lost).
const POLL: Duration = Duration::from_secs(1);

/// Wakes a queue's dispatcher when any server hints that it has ready jobs, and
/// every queue each [`POLL`].
pub(crate) async fn wake_on_hints(inner: Arc<Inner>) {
    let Some(mut hints) = inner.store.queue_hints() else {
        return;
    };
    let wake = |name: Option<&str>| {
        for (queue_name, q) in &inner.queues {
            if name.is_none_or(|n| n == queue_name) {
                q.backlog.store(true, Ordering::SeqCst);
                q.wake.notify_one();
            }
        }
        match name {
            Some(name) => inner.remote.wake(name),
            None => inner.remote.wake_all(),
        }
    };
    loop {
        tokio::select! {
            hint = hints.recv() => match hint {
                Ok(queue) => wake(Some(&queue)),
                Err(RecvError::Lagged(_)) => wake(None),
                Err(RecvError::Closed) => return,
            },
            _ = tokio::time::sleep(POLL) => wake(None),
            _ = inner.shutdown.cancelled() => return,
        }
    }
}

/// Applies to the attempts this engine runs the controls that reach the store from
/// any server: the events say what was written, the attempt's handle does it.
pub(crate) async fn obey_controls(inner: Arc<Inner>) {
    let mut events = inner.store.subscribe();
    loop {
        let e = tokio::select! {
            e = events.recv() => match e {
                Ok(e) => e,
                Err(RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "the control listener lagged; some controls from other servers may wait for the job's next write");
                    continue;
                }
                Err(RecvError::Closed) => return,
            },
            _ = inner.shutdown.cancelled() => return,
        };
        let Some(id) = e.job_id.as_deref() else {
            continue;
        };
        let Some(h) = inner.handle_parts(id) else {
            continue;
        };
        match e.kind {
            EventKind::Paused => {
                h.ctl.send_if_modified(|c| {
                    let change = *c == Ctl::Run;
                    if change {
                        *c = Ctl::Pause;
                    }
                    change
                });
            }
            EventKind::Resumed => {
                h.ctl.send_if_modified(|c| {
                    let change = *c == Ctl::Pause;
                    if change {
                        *c = Ctl::Run;
                    }
                    change
                });
            }
            EventKind::Stopping if !h.cancel.is_cancelled() => {
                h.ctl.send_replace(Ctl::Stop);
                h.cancel.cancel();
                let inner = inner.clone();
                let id = id.to_owned();
                tokio::spawn(async move {
                    tokio::time::sleep(h.grace).await;
                    if inner.handle_parts(&id).is_some() {
                        tracing::info!(job_id = %id, "grace period over; aborting the job");
                        let _ = inner.force_stop(&id, State::Stopping).await;
                    }
                });
            }
            EventKind::Cancelled => inner.kill(id),
            _ => {}
        }
    }
}
