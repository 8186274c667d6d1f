//! Time as the engine sees it. Production uses the system clock; tests use a
//! [`ManualClock`] to make delays and backoff happen without sleeping.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use baton_core::Millis;
use futures::future::BoxFuture;
use tokio::sync::Notify;

pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> Millis;
    /// Completes once `now() >= at`.
    fn sleep_until(&self, at: Millis) -> BoxFuture<'static, ()>;
}

#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Millis {
        chrono::Utc::now().timestamp_millis()
    }

    fn sleep_until(&self, at: Millis) -> BoxFuture<'static, ()> {
        let wait = (at - self.now()).max(0) as u64;
        Box::pin(tokio::time::sleep(Duration::from_millis(wait)))
    }
}

/// A clock that only moves when told to.
#[derive(Clone, Debug)]
pub struct ManualClock {
    inner: Arc<ManualInner>,
}

#[derive(Debug)]
struct ManualInner {
    now: AtomicI64,
    moved: Notify,
}

impl ManualClock {
    pub fn new(start: Millis) -> Self {
        Self {
            inner: Arc::new(ManualInner {
                now: AtomicI64::new(start),
                moved: Notify::new(),
            }),
        }
    }

    pub fn advance(&self, by: Duration) {
        self.inner
            .now
            .fetch_add(by.as_millis() as i64, Ordering::SeqCst);
        self.inner.moved.notify_waiters();
    }

    pub fn set(&self, at: Millis) {
        self.inner.now.store(at, Ordering::SeqCst);
        self.inner.moved.notify_waiters();
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Millis {
        self.inner.now.load(Ordering::SeqCst)
    }

    fn sleep_until(&self, at: Millis) -> BoxFuture<'static, ()> {
        let inner = self.inner.clone();
        Box::pin(async move {
            loop {
                let moved = inner.moved.notified();
                tokio::pin!(moved);
                moved.as_mut().enable();
                if inner.now.load(Ordering::SeqCst) >= at {
                    return;
                }
                moved.await;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn manual_clock_wakes_sleepers_when_advanced() {
        let clock = ManualClock::new(1_000);
        let sleeper = tokio::spawn(clock.sleep_until(31_000));
        tokio::task::yield_now().await;
        clock.advance(Duration::from_secs(10));
        tokio::task::yield_now().await;
        assert!(!sleeper.is_finished());
        clock.advance(Duration::from_secs(20));
        tokio::time::timeout(Duration::from_secs(5), sleeper)
            .await
            .expect("woken")
            .unwrap();
    }
}
