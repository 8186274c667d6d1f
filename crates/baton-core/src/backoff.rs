use std::time::Duration;

use rand::RngExt;

/// Exponential backoff with jitter: the n-th retry waits `initial * 2^(n-1)`, capped at
/// `max`, of which the upper half is random so that retries of many jobs spread out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(300),
        }
    }
}

impl Backoff {
    /// The cap before jitter for the retry after `failed_attempt` (1-based).
    pub fn ceiling(&self, failed_attempt: u32) -> Duration {
        let exp = failed_attempt.saturating_sub(1).min(40);
        let ms = (self.initial.as_millis() as u64).saturating_mul(1u64 << exp);
        Duration::from_millis(ms).min(self.max)
    }

    /// The delay before the retry after `failed_attempt`, with jitter in `[ceiling/2, ceiling]`.
    pub fn delay(&self, failed_attempt: u32) -> Duration {
        let ceiling = self.ceiling(failed_attempt).as_millis() as u64;
        let half = ceiling / 2;
        let jitter = if ceiling > half {
            rand::rng().random_range(0..=ceiling - half)
        } else {
            0
        };
        Duration::from_millis(half + jitter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_exponentially_and_caps() {
        let b = Backoff {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(10),
        };
        assert_eq!(b.ceiling(1), Duration::from_secs(1));
        assert_eq!(b.ceiling(2), Duration::from_secs(2));
        assert_eq!(b.ceiling(3), Duration::from_secs(4));
        assert_eq!(b.ceiling(5), Duration::from_secs(10));
        assert_eq!(b.ceiling(1000), Duration::from_secs(10));
        for attempt in 1..8 {
            let d = b.delay(attempt);
            assert!(
                d <= b.ceiling(attempt) && d >= b.ceiling(attempt) / 2,
                "{d:?}"
            );
        }
    }
}
