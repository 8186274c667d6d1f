//! Faults a test can inject into the SQLite store (feature `faults`): a writer slowed
//! on purpose, and a dependent whose settling fails. Off unless armed; the feature is
//! for tests only and is not compiled into the binary.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

/// A cheap-to-clone handle: arm it through the clone kept by the test.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    inner: Arc<Armed>,
}

#[derive(Debug, Default)]
struct Armed {
    batch_delay_us: AtomicU64,
    fail_dependent_in: AtomicUsize,
}

impl Faults {
    /// The writer sleeps this long before committing each batch (zero: not at all).
    pub fn slow_batches(&self, delay: Duration) {
        self.inner
            .batch_delay_us
            .store(delay.as_micros() as u64, Ordering::SeqCst);
    }

    /// The `n`th dependent settled from now on (queued or cancelled because a
    /// dependency ended) fails with a conflict, once.
    pub fn fail_dependent(&self, n: usize) {
        self.inner.fail_dependent_in.store(n, Ordering::SeqCst);
    }

    pub(crate) fn batch_delay(&self) -> Option<Duration> {
        match self.inner.batch_delay_us.load(Ordering::SeqCst) {
            0 => None,
            us => Some(Duration::from_micros(us)),
        }
    }

    /// Whether settling this dependent fails (counts down an armed fault).
    pub(crate) fn dependent_fails(&self) -> bool {
        self.inner
            .fail_dependent_in
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok_and(|before| before == 1)
    }
}
