//! Figures for the metrics endpoint beyond the `$SYS` counters of `broker_core::Counters`.
//!
//! Nothing here is touched per message on the publish path: refusals are counted per refused
//! connection, accepted connections per accept, store commits per commit (on the store's
//! writer thread), messages without subscribers only when a message reaches nobody, and
//! publisher slow-downs only when a subscriber is over its limits.
//! Everything else ([`crate::Admin::metrics`]) is read when the endpoint is scraped.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Counters kept by the broker core for the metrics endpoint.
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    /// Connections refused by the listener: `max_connect_rate`.
    pub refused_rate: AtomicU64,
    /// Connections refused by the listener: `max_connections`.
    pub refused_busy: AtomicU64,
    /// Messages published by clients that matched no subscription.
    pub no_subscribers: AtomicU64,
    /// Times a publisher was told to wait for a subscriber over its queue limits (once per
    /// publisher batch and subscriber; only while one is over).
    pub slowdowns: AtomicU64,
    /// Connections accepted per listener (its name, `tcp 127.0.0.1:1883`).
    pub accepted: Mutex<Vec<(String, Arc<AtomicU64>)>>,
}

impl Metrics {
    /// The counter of accepted connections of listener `name`, created on first use.
    pub fn listener(&self, name: &str) -> Arc<AtomicU64> {
        let mut all = self.accepted.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, c)) = all.iter().find(|(n, _)| n == name) {
            return c.clone();
        }
        let c = Arc::new(AtomicU64::new(0));
        all.push((name.to_string(), c.clone()));
        c
    }
}

/// Upper bounds of the commit-duration histogram, in seconds.
pub const COMMIT_BUCKETS: [f64; 12] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

/// A histogram of fixed buckets in atomics: observing is a few relaxed additions, no lock.
#[derive(Debug)]
pub(crate) struct AtomicHistogram {
    bounds: &'static [f64],
    /// One counter per bound, plus +Inf (not cumulative).
    counts: Vec<AtomicU64>,
    sum_nanos: AtomicU64,
}

impl AtomicHistogram {
    pub fn new(bounds: &'static [f64]) -> AtomicHistogram {
        AtomicHistogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_nanos: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = self
            .bounds
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(self.bounds.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_nanos
            .fetch_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut cumulative = 0;
        let mut buckets = Vec::with_capacity(self.bounds.len() + 1);
        for (i, c) in self.counts.iter().enumerate() {
            cumulative += c.load(Ordering::Relaxed);
            buckets.push((self.bounds.get(i).copied().unwrap_or(f64::INFINITY), cumulative));
        }
        HistogramSnapshot {
            sum: self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9,
            count: cumulative,
            buckets,
        }
    }
}

/// A histogram as read at one moment.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct HistogramSnapshot {
    /// Sum of the observations (seconds).
    pub sum: f64,
    /// Number of observations.
    pub count: u64,
    /// (upper bound, cumulative count), the last bound +Inf.
    pub buckets: Vec<(f64, u64)>,
}

/// What the embedded store's writer thread counts: commits, changes per commit, and the time
/// of each commit (with `sync = "always"`, mostly the fsync).
#[derive(Debug)]
pub(crate) struct StoreMetrics {
    pub commits: AtomicU64,
    pub changes: AtomicU64,
    pub duration: AtomicHistogram,
}

impl Default for StoreMetrics {
    fn default() -> Self {
        StoreMetrics {
            commits: AtomicU64::new(0),
            changes: AtomicU64::new(0),
            duration: AtomicHistogram::new(&COMMIT_BUCKETS),
        }
    }
}

impl StoreMetrics {
    /// Hook for the writer thread: one commit of `changes` changes took `d`.
    pub fn commit(&self, changes: usize, d: Duration) {
        self.commits.fetch_add(1, Ordering::Relaxed);
        self.changes.fetch_add(changes as u64, Ordering::Relaxed);
        self.duration.observe(d);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_end_with_inf() {
        let h = AtomicHistogram::new(&COMMIT_BUCKETS);
        h.observe(Duration::from_micros(50));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(2));
        let s = h.snapshot();
        assert_eq!(s.count, 3);
        assert_eq!(s.buckets[0], (0.0001, 1));
        assert_eq!(s.buckets.last().copied(), Some((f64::INFINITY, 3)));
        assert_eq!(s.buckets[5], (0.005, 2));
        assert!((s.sum - 2.00305).abs() < 1e-9);
    }
}
