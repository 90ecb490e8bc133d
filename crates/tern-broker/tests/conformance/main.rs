//! Conformance tests of the broker against the numbered statements of MQTT 3.1.1
//! and 5.0, one module per chapter. Each test sends exact packets (or bytes) over
//! TCP to a broker on an ephemeral port and expects exact packets, exact bytes or
//! a close. Each test cites the statements it checks with their version tag
//! (`v3.1.1`, `v5`); docs/conformance.md traces them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../common/challenge.rs"]
mod challenge;
mod support;

mod acks;
mod connect;
mod cross_version;
mod delivery;
mod disconnect_auth;
mod publish;
mod shared;
mod subscribe;
mod transient;
mod websocket;
mod will;
