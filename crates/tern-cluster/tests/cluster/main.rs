//! Cluster mode against real NATS servers (see nats.rs): nodes are in-process brokers with a
//! `tern_cluster::Cluster` backplane; clients are raw MQTT peers.

mod delivery;
mod guard;
mod nats;
mod node;
mod topic;

/// A number no other call in this process returns.
pub fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}
