//! Interoperability: clients nobody here wrote, against the Tern broker.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod browser;
mod mosquitto_clients;
mod paho;
mod paho_suites;
