//! Cluster mode against real NATS servers (`tern_testkit::nats`): nodes are in-process brokers with a
//! `tern_cluster::Cluster` backplane; clients are raw MQTT peers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod auth;
mod codec;
mod delivery;
mod guard;
mod node;
mod options;
mod order;
mod partition;
mod retained;
mod sessions;
mod shares;
mod sys;
mod topic;
mod wills;
