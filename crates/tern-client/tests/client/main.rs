//! Integration tests of tern-client: against our broker (in process, port 0),
//! against Mosquitto, and against a scripted hostile server.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod broker;
mod conformance;
mod hostile;
mod mosquitto;
mod reconnect;
mod support;
