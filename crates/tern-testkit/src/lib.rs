//! Test support for Tern (not published).
//!
//! - [`conformance`]: the checker behind `tests/conformance_map.rs`, which keeps
//!   `docs/conformance.md` (one row per normative statement of MQTT 3.1.1 and
//!   5.0) in agreement with the statements the tests cite.
//! - [`raw`]: a raw MQTT peer over TCP that sends exact packets or bytes and
//!   expects exact packets, bytes or a close, as a client of a broker or as a
//!   scripted fake server for a client.
//! - [`nats`]: a NATS JetStream cluster of 1 or 3 `nats-server` processes on free loopback
//!   ports, stopped by PID, for the cluster-mode tests.
//! - [`pki`]: a test CA with a server certificate and a client certificate, as PEM files.
//! - [`relay`]: a TCP relay that can be cut, to put a peer out of reach while it runs.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test support: a failed expectation is a test failure"
)]

pub mod conformance;
pub mod nats;
pub mod pki;
pub mod raw;
pub mod relay;
