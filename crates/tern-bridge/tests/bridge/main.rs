//! Integration tests of the bridges: real remotes (the Mosquitto broker, another Tern broker
//! in process), loopback only, ephemeral ports.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod access;
mod limits;
mod loops;
mod mosquitto;
mod mosquitto_bridge;
mod outage;
mod restart;
mod status;
mod support;
mod transports;
