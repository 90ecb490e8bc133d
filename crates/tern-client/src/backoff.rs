//! Reconnection policy: exponential backoff with jitter.

use std::time::Duration;

/// When and how often to reconnect after a connection is lost.
///
/// The n-th attempt in a row waits a random time between half and all of
/// `min_delay × 2^(n-1)`, capped at `max_delay`; the count starts again after
/// a successful connection. Jitter keeps many clients from reconnecting in step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reconnect {
    pub(crate) enabled: bool,
    pub(crate) min_delay: Duration,
    pub(crate) max_delay: Duration,
}

impl Default for Reconnect {
    fn default() -> Self {
        Reconnect {
            enabled: true,
            min_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(30),
        }
    }
}

impl Reconnect {
    /// Never reconnect: the client stops when its connection ends.
    pub fn disabled() -> Reconnect {
        Reconnect {
            enabled: false,
            ..Reconnect::default()
        }
    }

    /// Reconnect with delays growing from `min` to `max`.
    pub fn with_delays(min: Duration, max: Duration) -> Reconnect {
        Reconnect {
            enabled: true,
            min_delay: min,
            max_delay: max.max(min),
        }
    }

    /// Whether reconnection is on.
    pub fn is_enabled(&self) -> bool {
        self.enabled
    }

    /// The delay before attempt `attempt` (1-based) in a row, jitter included: for a
    /// program that retries a first connection itself (a bridge does).
    pub fn delay_before(&self, attempt: u32) -> Duration {
        self.delay(attempt, random())
    }

    /// The delay before attempt `attempt` (1-based), with `random` in `0..=u64::MAX`
    /// choosing the jitter.
    pub(crate) fn delay(&self, attempt: u32, random: u64) -> Duration {
        let shift = attempt.saturating_sub(1).min(20);
        let base = self.min_delay.saturating_mul(1u32 << shift).min(self.max_delay);
        let half = base / 2;
        let nanos = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX);
        let jitter = if nanos == 0 { 0 } else { random % (nanos + 1) };
        half + Duration::from_nanos(jitter)
    }
}

/// A random number from the standard library's per-process hashing keys.
pub(crate) fn random() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_exponentially_with_bounded_jitter() {
        let r = Reconnect::with_delays(Duration::from_millis(100), Duration::from_secs(1));
        for attempt in 1..=8u32 {
            let base = Duration::from_millis(100 * (1 << (attempt - 1))).min(Duration::from_secs(1));
            for random in [0, 1, u64::MAX / 3, u64::MAX] {
                let d = r.delay(attempt, random);
                assert!(
                    d >= base / 2 && d <= base,
                    "attempt {attempt}: {d:?} not in [{:?}, {base:?}]",
                    base / 2
                );
            }
        }
        assert_eq!(r.delay(1, 0), Duration::from_millis(50));
        assert_eq!(r.delay(40, 0), Duration::from_millis(500));
    }
}
