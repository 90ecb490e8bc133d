//! The adversarial suite: each attack of the resilience issue, scaled down to run in seconds
//! on two cores (a few hundred sockets, limits set small so that they are actually reached).
//!
//! Every attack runs against a broker on port 0 with a [`support::Canary`]: a subscriber and
//! a publisher doing QoS 1 round trips throughout, which must receive every message the broker
//! acknowledged. What is asserted is the broker's own accounting ([`tern_broker::BrokerStats`]
//! sampled throughout, [`tern_broker::BrokerHandle::sessions`]): bytes held in partial packets
//! under `max_partial_bytes`, queues under twice their limits, sessions under `max_sessions`,
//! attackers closed and counted; never how long anything took. Where the broker's clock decides
//! (packet stall, stalled subscriber, session expiry) the test advances a manual clock; the
//! CONNECT deadline runs on the runtime's timer, set to a second.
//!
//! The full-size runs of the same attacks, with Mosquitto beside Tern, are `bench/adversarial.py`
//! (figures in `bench/RESULTS.md`, "Adversarial suite at full size").
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

mod malformed;
mod offline_flood;
mod oversize;
mod partial_connect;
mod partial_publish;
mod session_flood;
mod slow_consumer;
mod slowloris;
mod subscription_flood;
mod topic_alias;
mod websocket;
mod will_flood;
