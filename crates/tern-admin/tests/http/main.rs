//! The HTTP endpoint over real sockets: the admin API and its security rules, `/metrics`
//! scraped by a real Prometheus server, the dashboard in headless Chromium, live traces.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod api;
mod dashboard;
mod prometheus;
mod support;
mod trace;
