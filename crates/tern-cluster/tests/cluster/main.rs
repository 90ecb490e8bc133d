//! Cluster mode against real NATS servers (see nats.rs): nodes are in-process brokers with a
//! `tern_cluster::Cluster` backplane; clients are raw MQTT peers.

mod delivery;
mod guard;
mod node;
mod retained;
mod topic;
