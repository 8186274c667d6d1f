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
    read_delay_us: AtomicU64,
    fail_dependent_in: AtomicUsize,
    synchronous: std::sync::Mutex<Option<&'static str>>,
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

    /// The store sets this `PRAGMA synchronous` level behind the one its durability
    /// asks for, before reading it back on open (as a build of SQLite that ignored the
    /// setting would).
    pub fn force_synchronous(&self, level: &'static str) {
        if let Ok(mut s) = self.inner.synchronous.lock() {
            *s = Some(level);
        }
    }

    pub(crate) fn forced_synchronous(&self) -> Option<&'static str> {
        self.inner.synchronous.lock().ok().and_then(|s| *s)
    }

    /// Each read holds its connection this long more.
    pub fn slow_reads(&self, delay: Duration) {
        self.inner
            .read_delay_us
            .store(delay.as_micros() as u64, Ordering::SeqCst);
    }

    pub(crate) fn batch_delay(&self) -> Option<Duration> {
        delay(&self.inner.batch_delay_us)
    }

    pub(crate) fn read_delay(&self) -> Option<Duration> {
        delay(&self.inner.read_delay_us)
    }

    /// Whether settling this dependent fails (counts down an armed fault).
    pub(crate) fn dependent_fails(&self) -> bool {
        self.inner
            .fail_dependent_in
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok_and(|before| before == 1)
    }
}

fn delay(us: &AtomicU64) -> Option<Duration> {
    match us.load(Ordering::SeqCst) {
        0 => None,
        us => Some(Duration::from_micros(us)),
    }
}
