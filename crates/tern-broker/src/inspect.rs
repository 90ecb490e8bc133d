//! What an embedding program or an admin API sees of the broker's sessions, and the
//! administrator's disconnect: [`SessionInfo`] snapshots, [`BrokerHandle::sessions`],
//! [`BrokerHandle::session`] and [`BrokerHandle::disconnect`](crate::BrokerHandle::disconnect).
//!
//! A snapshot is taken under each session's lock in turn, never all at once: a listing is
//! consistent per session, not across sessions.
//!
//! [`BrokerHandle::sessions`]: crate::BrokerHandle::sessions
//! [`BrokerHandle::session`]: crate::BrokerHandle::session

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tern_proto::{ProtocolVersion, SubscriptionOptions};

use std::sync::atomic::Ordering;

use crate::session::SessionCell;
use crate::shared::Shared;

/// Broker-wide counters and the state of its budgets, read at one moment (each value on its
/// own: they are not taken under one lock). The `$SYS/broker/...` topics publish the same.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct Stats {
    /// Connections accepted since start.
    pub connections_total: u64,
    /// Clients connected now.
    pub connected: u64,
    /// Sessions, connected or not.
    pub sessions: usize,
    /// Subscriptions, all sessions together.
    pub subscriptions: usize,
    /// Retained messages.
    pub retained: usize,
    /// PUBLISH packets received from clients.
    pub messages_received: u64,
    /// PUBLISH packets sent to clients.
    pub messages_sent: u64,
    /// Messages not queued for a session (its queue full, the broker-wide budget exhausted).
    pub messages_dropped: u64,
    /// Payload bytes queued for all sessions together (limit: `max_queued_bytes_total`).
    pub queued_bytes: usize,
    /// Messages not queued because `max_queued_bytes_total` was reached.
    pub dropped_over_budget: u64,
    /// Connections closed because the budget for partial packets ran out.
    pub evicted: u64,
}

/// A session: a connected client, or a persistent session waiting for its client.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SessionInfo {
    /// The client identifier.
    pub client_id: String,
    /// The protocol version of its last connection.
    pub protocol_version: ProtocolVersion,
    /// The connection attached now; `None` while the client is offline.
    pub connection: Option<ConnectionInfo>,
    /// Seconds the session outlives its connection (0: it ends with it; `u32::MAX`: never
    /// expires).
    pub expiry_interval: u32,
    /// Its subscriptions, by filter (with the `$share/GROUP/` prefix for shared ones).
    pub subscriptions: Vec<SubscriptionInfo>,
    /// QoS 1/2 messages sent to the client and not yet acknowledged.
    pub inflight: usize,
    /// Messages waiting to be sent.
    pub queued: usize,
    /// Payload bytes of the queued messages.
    pub queued_bytes: usize,
    /// Messages dropped because its queue was full, since the session began.
    pub dropped: u64,
    /// Whether a will waits for its delay (offline sessions only).
    pub will_pending: bool,
}

/// The connection attached to a session.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ConnectionInfo {
    /// The client's address.
    pub peer: SocketAddr,
    /// The authenticated user name, if any.
    pub username: Option<String>,
    /// The listener it came through: kind and bound address (`tcp 127.0.0.1:1883`).
    pub listener: String,
    /// The keep-alive in force, in seconds (0: none).
    pub keep_alive: u16,
    /// When it connected.
    pub connected_at: SystemTime,
}

/// One subscription of a session.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SubscriptionInfo {
    /// The topic filter as subscribed (with `$share/GROUP/` for a shared subscription).
    pub filter: String,
    /// Maximum QoS, No Local, Retain As Published, Retain Handling.
    pub options: SubscriptionOptions,
    /// The 5.0 Subscription Identifier, if one was given.
    pub identifier: Option<u32>,
}

impl Shared {
    /// Every session, sorted by client identifier.
    pub(crate) fn session_infos(&self) -> Vec<SessionInfo> {
        let mut all: Vec<SessionInfo> = self.sessions.all().iter().filter_map(|c| info(c)).collect();
        all.sort_by(|a, b| a.client_id.cmp(&b.client_id));
        all
    }

    /// The session of `client_id`, if there is one.
    pub(crate) fn session_info(&self, client_id: &str) -> Option<SessionInfo> {
        self.sessions.get(client_id).and_then(|c| info(&c))
    }

    /// An administrator's disconnect: the attached connection, if any, is closed (5.0:
    /// DISCONNECT 0x98 Administrative action; the will is published as for any close the
    /// client did not ask for); with `discard_session` the session ends too, at once if
    /// the client is offline. Returns whether the client had a session.
    pub(crate) fn disconnect_client(&self, client_id: &str, discard_session: bool) -> bool {
        let Some(cell) = self.sessions.get(client_id) else {
            return false;
        };
        // A connection that is attached (its waker may not be set yet, in the moment after
        // attaching) sees the flag when woken or when its loop starts.
        let (attached, waker) = {
            let mut st = cell.lock();
            if st.ended {
                return false;
            }
            if st.conn_id.is_some() {
                st.kicked = Some(discard_session);
            }
            (st.conn_id.is_some(), st.waker.clone())
        };
        match (attached, waker) {
            (true, Some(w)) => w.notify_one(),
            (true, None) => {}
            (false, _) if discard_session => self.end_session(&cell),
            (false, _) => {}
        }
        tracing::info!(client_id, discard_session, "disconnected by an administrator");
        true
    }
}

fn info(cell: &SessionCell) -> Option<SessionInfo> {
    let st = cell.lock();
    if st.ended {
        return None;
    }
    let connection = st.conn_id.and(st.attached.as_ref()).map(|a| ConnectionInfo {
        peer: a.peer,
        username: a.username.as_deref().map(str::to_string),
        listener: a.listener.name.to_string(),
        keep_alive: a.keep_alive,
        connected_at: UNIX_EPOCH + Duration::from_millis(a.connected_at_ms),
    });
    let mut subscriptions: Vec<SubscriptionInfo> = st
        .subscriptions
        .iter()
        .map(|(filter, (options, identifier))| SubscriptionInfo {
            filter: filter.clone(),
            options: *options,
            identifier: *identifier,
        })
        .collect();
    subscriptions.sort_by(|a, b| a.filter.cmp(&b.filter));
    Some(SessionInfo {
        client_id: cell.client_id.to_string(),
        protocol_version: st.version,
        connection,
        expiry_interval: st.expiry_interval,
        subscriptions,
        inflight: st.inflight.len(),
        queued: st.queue.len(),
        queued_bytes: st.queued_bytes,
        dropped: st.dropped,
        will_pending: st.pending_will.is_some(),
    })
}

impl Shared {
    /// The broker's counters now.
    pub(crate) fn stats(&self) -> Stats {
        let c = &self.counters;
        let (subscriptions, retained) = self.sizes();
        Stats {
            connections_total: c.connections.load(Ordering::Relaxed),
            connected: c.connected.load(Ordering::Relaxed),
            sessions: self.sessions.len(),
            subscriptions,
            retained,
            messages_received: c.messages_in.load(Ordering::Relaxed),
            messages_sent: c.messages_out.load(Ordering::Relaxed),
            messages_dropped: c.messages_dropped.load(Ordering::Relaxed),
            queued_bytes: self.queued.used(),
            dropped_over_budget: self.queued.refusals(),
            evicted: self.partial.evictions(),
        }
    }
}
