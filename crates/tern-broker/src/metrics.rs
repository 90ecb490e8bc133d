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
#[derive(Debug)]
pub(crate) struct Metrics {
    /// PUBLISH packets received from clients and sent, by QoS, with their payload bytes, in
    /// per-thread stripes (see [`Striped`]): added once per read and once per write batch.
    pub traffic: Striped,
    /// Deliveries dropped because the message expired in the queue ([MQTT-3.3.2-5]).
    pub dropped_expired: AtomicU64,
    /// Deliveries dropped because they exceed the client's Maximum Packet Size ([MQTT-3.1.2-25]).
    pub dropped_too_large: AtomicU64,
    /// Deliveries the ACL does not let the client receive.
    pub dropped_acl_receive: AtomicU64,
    /// PUBLISH packets the ACL refused ([MQTT-3.3.5-2]).
    pub dropped_acl_publish: AtomicU64,
    /// Connections accepted after CONNECT since start, by protocol version (3.1, 3.1.1, 5.0).
    pub connections_by_version: [AtomicU64; 3],
    /// From a client's PUBLISH being decoded to a copy of it being written to a subscriber,
    /// sampled: the first delivery of each write batch that carries a client's message.
    pub delivery_latency: AtomicHistogram,
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

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics {
            traffic: Striped::new(),
            dropped_expired: AtomicU64::new(0),
            dropped_too_large: AtomicU64::new(0),
            dropped_acl_receive: AtomicU64::new(0),
            dropped_acl_publish: AtomicU64::new(0),
            connections_by_version: Default::default(),
            delivery_latency: AtomicHistogram::new(&LATENCY_BUCKETS),
            refused_rate: AtomicU64::new(0),
            refused_busy: AtomicU64::new(0),
            no_subscribers: AtomicU64::new(0),
            slowdowns: AtomicU64::new(0),
            accepted: Mutex::default(),
        }
    }
}

/// Offsets in a [`Striped`] slot: received messages and bytes by QoS, then sent.
pub(crate) const RECEIVED: usize = 0;
pub(crate) const SENT: usize = 6;

/// Most stripes: threads beyond share them (a runtime has a worker per core).
const STRIPES: usize = 16;

/// One stripe, alone on its cache lines.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Stripe([AtomicU64; 12]);

/// Counters split by thread: each thread adds to its own stripe, so that connections on
/// different cores never write the same cache line for them (a shared counter bumped once
/// per write batch cost fan-out throughput measurably); reading sums the stripes.
#[derive(Debug)]
pub(crate) struct Striped(Box<[Stripe]>);

thread_local! {
    static STRIPE: usize = {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        (NEXT.fetch_add(1, Ordering::Relaxed) as usize) % STRIPES
    };
}

impl Striped {
    fn new() -> Striped {
        Striped((0..STRIPES).map(|_| Stripe::default()).collect())
    }

    /// Add (messages, bytes) by QoS at `offset` ([`RECEIVED`] or [`SENT`]).
    pub fn add(&self, offset: usize, counts: &[(u64, u64); 3]) {
        let stripe = &self.0[STRIPE.with(|s| *s)].0;
        for (i, &(n, bytes)) in counts.iter().enumerate() {
            if n > 0 {
                stripe[offset + 2 * i].fetch_add(n, Ordering::Relaxed);
                stripe[offset + 2 * i + 1].fetch_add(bytes, Ordering::Relaxed);
            }
        }
    }

    /// (messages, bytes) by QoS at `offset`, summed over the stripes.
    pub fn read(&self, offset: usize) -> [(u64, u64); 3] {
        let mut out = [(0, 0); 3];
        for stripe in self.0.iter() {
            for (i, o) in out.iter_mut().enumerate() {
                o.0 += stripe.0[offset + 2 * i].load(Ordering::Relaxed);
                o.1 += stripe.0[offset + 2 * i + 1].load(Ordering::Relaxed);
            }
        }
        out
    }
}

/// Upper bounds of the delivery-latency histogram, in seconds.
pub const LATENCY_BUCKETS: [f64; 12] = [
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.01, 0.05, 0.25, 1.0,
];

/// Index of a QoS in the per-QoS arrays.
pub(crate) fn qos_index(qos: tern_proto::QoS) -> usize {
    usize::from(qos.as_u8()).min(2)
}

impl Metrics {
    /// Count a connection accepted after CONNECT.
    pub fn connected(&self, version: tern_proto::ProtocolVersion) {
        let i = match version {
            tern_proto::ProtocolVersion::V3_1 => 0,
            tern_proto::ProtocolVersion::V3_1_1 => 1,
            tern_proto::ProtocolVersion::V5 => 2,
        };
        self.connections_by_version[i].fetch_add(1, Ordering::Relaxed);
    }

    /// Add the counts of PUBLISH packets sent in one write batch.
    pub fn sent(&self, counts: &[(u64, u64); 3]) {
        self.traffic.add(SENT, counts);
    }

    /// Add the counts of PUBLISH packets received in one read.
    pub fn received(&self, counts: &[(u64, u64); 3]) {
        self.traffic.add(RECEIVED, counts);
    }

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
