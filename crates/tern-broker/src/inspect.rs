//! What an embedding program or an admin API sees of the broker's sessions, and the
//! administrator's disconnect: [`SessionInfo`] snapshots, [`BrokerHandle::sessions`],
//! [`BrokerHandle::session`] and [`BrokerHandle::disconnect`](crate::BrokerHandle::disconnect).
//!
//! A snapshot is taken under each session's lock in turn, never all at once: a listing is
//! consistent per session, not across sessions.
//!
//! [`BrokerStats`] adds up what the broker holds (connections, sessions, queued and
//! partially received bytes) and what it counted, behind [`BrokerHandle::stats`].
//!
//! [`BrokerHandle::sessions`]: crate::BrokerHandle::sessions
//! [`BrokerHandle::stats`]: crate::BrokerHandle::stats
//! [`BrokerHandle::session`]: crate::BrokerHandle::session

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tern_proto::{ProtocolVersion, SubscriptionOptions};

use crate::broker_core::Core;
use crate::session::SessionCell;

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
    /// Of the queued messages, those kept on disk only (a session whose client is away,
    /// beyond its memory limits; see `max_offline_messages`), and their payload bytes. Not
    /// counted in `queued` and `queued_bytes`.
    pub on_disk: (u64, u64),
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

/// What a running broker holds now, and what it has counted since it started: the figures
/// its limits bound (`max_connections`, `max_sessions`, `max_partial_bytes`, the queue limits).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct BrokerStats {
    /// Sockets being served now, before and after CONNECT (at most `max_connections`).
    pub connections_open: usize,
    /// Clients connected now (after a successful CONNACK).
    pub clients_connected: u64,
    /// Connections accepted since start (those refused at the connection limit not counted).
    pub connections_total: u64,
    /// Sessions, connected or not (at most `max_sessions`).
    pub sessions: usize,
    /// Subscriptions of all sessions together.
    pub subscriptions: usize,
    /// Bytes held now in packets in progress, as the budget counts them (partial packets
    /// above 16 KiB, by buffer capacity; at most `max_partial_bytes`).
    pub partial_bytes: usize,
    /// Connections closed since start because the budget for partial packets ran out.
    pub partial_evictions: u64,
    /// Messages waiting in session queues now, all sessions together.
    pub queued_messages: usize,
    /// Payload bytes of those messages.
    pub queued_bytes: usize,
    /// The longest queue of any one session, in messages (at most twice
    /// `max_queued_messages`).
    pub largest_queue: usize,
    /// The largest queue of any one session, in payload bytes (at most twice
    /// `max_queued_bytes`).
    pub largest_queue_bytes: usize,
    /// QoS 1/2 messages sent and not yet acknowledged, all sessions together.
    pub inflight: usize,
    /// PUBLISH packets received since start (wills included).
    pub messages_received: u64,
    /// PUBLISH packets sent since start.
    pub messages_sent: u64,
    /// Messages not queued since start (a full queue, or the broker-wide budget).
    pub messages_dropped: u64,
    /// Of those, messages not queued because `max_queued_bytes_total` was reached.
    pub dropped_over_budget: u64,
    /// Retained messages.
    pub retained: usize,
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

impl Core {
    /// The broker's figures now; `connections_open` comes from the listeners' limit.
    pub(crate) fn stats(&self, connections_open: usize) -> BrokerStats {
        let c = &self.counters;
        let (subscriptions, retained) = self.sizes();
        let mut stats = BrokerStats {
            connections_open,
            clients_connected: c.connected.load(Ordering::Relaxed),
            connections_total: c.connections.load(Ordering::Relaxed),
            subscriptions,
            partial_bytes: self.partial.held(),
            partial_evictions: self.partial.evictions(),
            messages_received: c.messages_in.load(Ordering::Relaxed),
            messages_sent: c.messages_out.load(Ordering::Relaxed),
            messages_dropped: c.messages_dropped.load(Ordering::Relaxed),
            dropped_over_budget: self.queued.refusals(),
            retained,
            ..BrokerStats::default()
        };
        // One session lock at a time, as for the session listing.
        for cell in self.sessions.all() {
            let st = cell.lock();
            if st.ended {
                continue;
            }
            stats.sessions += 1;
            stats.queued_messages += st.queue.len();
            stats.queued_bytes += st.queued_bytes;
            stats.largest_queue = stats.largest_queue.max(st.queue.len());
            stats.largest_queue_bytes = stats.largest_queue_bytes.max(st.queued_bytes);
            stats.inflight += st.proto.inflight_len();
        }
        stats
    }

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

    /// Another broker published the will of connection `conn_id` of `client_id`: that
    /// connection, if it is still the one attached, closes and its will is not published
    /// again. Returns whether it was attached.
    pub(crate) fn will_published_elsewhere(&self, client_id: &str, conn_id: u64) -> bool {
        let Some(cell) = self.sessions.get(client_id) else {
            return false;
        };
        let waker = {
            let mut st = cell.lock();
            if st.ended || st.conn_id != Some(conn_id) {
                return false;
            }
            st.will_gone = Some(conn_id);
            st.waker.clone()
        };
        // One not woken yet sees the flag when its loop starts.
        if let Some(w) = waker {
            w.notify_one();
        }
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
        .proto
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
        inflight: st.proto.inflight_len(),
        queued: st.queue.len(),
        queued_bytes: st.queued_bytes,
        on_disk: st.spill.as_deref().map_or((0, 0), |s| (s.count, s.bytes)),
        dropped: st.dropped,
        will_pending: st.pending_will.is_some(),
    })
}
