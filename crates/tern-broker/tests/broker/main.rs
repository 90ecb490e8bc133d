//! Broker integration tests over real sockets on ephemeral ports. Each test
//! cites the normative statement it checks.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../common/challenge.rs"]
mod challenge;
mod harness;

mod admin;
mod close;
mod connect;
mod features;
mod limits;
mod persistence;
mod publish;
mod retain;
mod session;
mod subscribe;
mod v5;
mod will;
