//! Exponential backoff with equal jitter, for every retry loop of the
//! crate (PostgreSQL reconnects, REST history pages, feed reconnects):
//! the `n`-th retry waits between half and all of `initial × 2^n`, capped,
//! so clients retrying in lock step after an outage do not come back
//! together and get refused together again.
//!
//! ```
//! use std::time::Duration;
//! use stockanomaly::backoff::Backoff;
//!
//! let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
//! let d = b.delay(3); // 800 ms before jitter
//! assert!(d >= Duration::from_millis(400) && d <= Duration::from_millis(800));
//! assert!(b.delay(30) <= Duration::from_secs(1));
//! ```

use std::time::Duration;

use rand::{Rng, SeedableRng};

/// Delays of a retry loop (see the module documentation).
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    rng: rand_chacha::ChaCha8Rng,
}

impl Backoff {
    /// Delays from `initial` (before jitter), doubling, at most `max`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Backoff {
            initial,
            max,
            rng: rand_chacha::ChaCha8Rng::from_os_rng(),
        }
    }

    /// The delay before retry number `retry` (0 for the first):
    /// `initial × 2^retry`, capped at the maximum, then between half and
    /// all of it.
    pub fn delay(&mut self, retry: u32) -> Duration {
        let exp = self
            .initial
            .saturating_mul(1u32 << retry.min(20))
            .min(self.max);
        exp / 2 + exp.mul_f64(self.rng.random::<f64>() / 2.0)
    }

    /// The longest delay.
    pub fn max(&self) -> Duration {
        self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_with_jitter_and_stay_capped() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let mut seen = std::collections::BTreeSet::new();
        for retry in 0..30u32 {
            let full = Duration::from_millis(100)
                .saturating_mul(1 << retry.min(20))
                .min(Duration::from_secs(2));
            for _ in 0..20 {
                let d = b.delay(retry);
                assert!(d >= full / 2 && d <= full, "{retry}: {d:?}");
                seen.insert(d);
            }
        }
        assert!(seen.len() > 100, "jittered: {} distinct delays", seen.len());
    }
}
