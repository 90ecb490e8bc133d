//! What the HTTP endpoint shows of the broker's bridges (`[[bridge]]` tables, crate
//! `tern-bridge`): their state in `/metrics` and at `GET /api/v1/bridges`. The bridges start
//! after the endpoint, so the program hands their reports over through a [`BridgeSlot`] once
//! they run; until then, and without bridges, there is nothing to show.

use std::sync::{Arc, OnceLock};

use serde::Serialize;

/// One bridge as the endpoint shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BridgeReport {
    /// The bridge's name.
    pub name: String,
    /// The remote's URL.
    pub remote: String,
    /// Whether it is connected to the remote now.
    pub connected: bool,
    /// The last connection error or refusal, if any.
    pub last_error: Option<String>,
    /// Connection attempts that failed since the last connection (0 while connected).
    pub reconnect_attempts: u64,
    /// While disconnected: milliseconds to wait before the next attempt (0 while connected).
    pub backoff_ms: u64,
    /// Messages forwarded to the remote (acknowledged by it at QoS 1/2), since start.
    pub forwarded: u64,
    /// Messages from the remote published locally, since start.
    pub received: u64,
    /// Messages the remote refused (an error code) or no rule matched, since start.
    pub dropped: u64,
    /// Messages waiting in the outbox (queued and in flight).
    pub outbox_messages: u64,
    /// Their payload bytes.
    pub outbox_bytes: u64,
    /// Messages the outbox dropped while full, since start.
    pub outbox_dropped: u64,
}

/// Where the endpoint finds the bridges' reports: set once, by the program that runs them.
#[derive(Clone, Default)]
pub struct BridgeSlot(Arc<OnceLock<Source>>);

type Source = Arc<dyn Fn() -> Vec<BridgeReport> + Send + Sync>;

impl std::fmt::Debug for BridgeSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BridgeSlot")
            .field("set", &self.0.get().is_some())
            .finish()
    }
}

impl BridgeSlot {
    /// Give the endpoint the bridges' reports, read at each scrape or request. A second call
    /// is ignored.
    pub fn set(&self, reports: impl Fn() -> Vec<BridgeReport> + Send + Sync + 'static) {
        let _ = self.0.set(Arc::new(reports));
    }

    /// The reports now (none before [`BridgeSlot::set`]).
    pub(crate) fn reports(&self) -> Vec<BridgeReport> {
        self.0.get().map(|f| f()).unwrap_or_default()
    }
}
