//! [`Admin`]: what an operator's endpoint (the `tern-admin` HTTP server, or an embedding
//! program's own) may read and do on a running broker: sessions and clients, retained
//! messages, publish, reload, readiness, the figures behind `/metrics`, and live traces.
//!
//! A cheap clone of handles to the broker core; it never holds the broker alive past a
//! shutdown in any way that matters (a disconnect or publish then reaches nobody).
//! Listings lock one session at a time (see `inspect.rs`); scraping the metrics walks the
//! sessions once and the retained messages once, under their read locks, off the publish path.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tern_proto::topic::TopicError;
use tern_proto::ProtocolVersion;

use crate::broker_core::Core;
use crate::metrics::HistogramSnapshot;
use crate::trace::TraceReceiver;
use crate::{BrokerStats, Config, ListenerKind, Message, SecurityHandle, SessionInfo};

/// Operator access to a running broker (see the module documentation): from
/// [`crate::Broker::admin`] or [`crate::BrokerHandle::admin`].
#[derive(Debug, Clone)]
pub struct Admin {
    core: Arc<Core>,
    limits: crate::listener::Limits,
    listeners: Arc<[(ListenerKind, SocketAddr)]>,
}

/// A session of this broker that messages from outside took to half its queue limits or
/// beyond ([`Admin::route_all_pressed`]). On one broker their publisher would now wait for it; a
/// backplane whose publishers are elsewhere holds them back with [`PressedSession::room`].
#[derive(Clone)]
pub struct PressedSession {
    cell: Arc<crate::session::SessionCell>,
    core: Arc<Core>,
}

impl PressedSession {
    /// Its [`Room`] now (looked at under the session's lock once).
    pub fn room(&self) -> Room {
        self.cell.room(&self.core.config, &self.core.clock)
    }

    /// Whether `other` is the same session.
    pub fn same(&self, other: &PressedSession) -> bool {
        Arc::ptr_eq(&self.cell, &other.cell)
    }

    /// A number that tells this session from the others while it is held (its address).
    pub fn key(&self) -> usize {
        Arc::as_ptr(&self.cell) as usize
    }
}

/// What room a [`PressedSession`] has for more QoS 0 messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Room {
    /// How many more (of the size of those it has queued) it takes before new ones for it
    /// are dropped (twice its queue limits); `None` when no QoS 0 publisher need wait for it
    /// any more: it ended, its client is away, it drops its oldest messages instead,
    /// `backpressure_qos0` is off, or its client took nothing for `backpressure_timeout_ms`
    /// (taken for stalled, and then dropped for, as on one broker).
    pub left: Option<usize>,
    /// Its queue is at half its limits or below (when one broker lets a publisher held for
    /// it go on); `true` when `left` is `None`.
    pub at_half: bool,
}

impl std::fmt::Debug for PressedSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("PressedSession")
            .field(&self.cell.client_id)
            .finish()
    }
}

/// The figures behind `/metrics`, read at one moment.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct MetricsSnapshot {
    /// Sessions, queues, in-flight messages and the `$SYS` counters.
    pub stats: BrokerStats,
    /// Clients connected now, by listener name and protocol version ("3.1", "3.1.1", "5.0").
    pub connections: Vec<(String, &'static str, u64)>,
    /// Connections accepted since start, by listener name.
    pub accepted: Vec<(String, u64)>,
    /// Sessions with a connection attached.
    pub sessions_online: u64,
    /// Sessions waiting for their client.
    pub sessions_offline: u64,
    /// Distinct `$share` groups (group name and filter).
    pub shared_groups: u64,
    /// Payload bytes of the retained messages.
    pub retained_bytes: u64,
    /// Memory of the retained messages held in memory (payloads, topics and the messages'
    /// structures; `retained_cache_bytes` bounds it with a store).
    pub retained_resident_bytes: u64,
    /// Connections refused by the listeners at `max_connect_rate`.
    pub refused_rate: u64,
    /// Connections refused by the listeners at `max_connections`.
    pub refused_busy: u64,
    /// Clients refused for failed authentication.
    pub auth_failures: u64,
    /// Messages from clients that matched no subscription.
    pub no_subscribers: u64,
    /// Times a publisher was told to wait for a subscriber over its queue limits.
    pub publisher_slowdowns: u64,
    /// Payload bytes received in packets, all connections.
    pub bytes_received: u64,
    /// Bytes sent, all connections.
    pub bytes_sent: u64,
    /// Store commits, changes committed and commit durations, with the embedded store.
    pub store: Option<StoreSnapshot>,
    /// PUBLISH packets received from clients by QoS 0, 1, 2: (messages, payload bytes).
    pub received_by_qos: [(u64, u64); 3],
    /// PUBLISH packets sent by QoS 0, 1, 2: (messages, payload bytes).
    pub sent_by_qos: [(u64, u64); 3],
    /// Deliveries dropped because the message expired in the queue.
    pub dropped_expired: u64,
    /// Deliveries dropped because they exceed the client's Maximum Packet Size.
    pub dropped_too_large: u64,
    /// Deliveries the ACL did not let the client receive.
    pub dropped_acl_receive: u64,
    /// PUBLISH packets the ACL refused.
    pub dropped_acl_publish: u64,
    /// Connections accepted after CONNECT since start, by protocol version.
    pub connects_by_version: [(&'static str, u64); 3],
    /// From a client's PUBLISH being decoded to a copy being written (sampled per write batch).
    pub delivery_latency: HistogramSnapshot,
}

/// The embedded store's figures.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct StoreSnapshot {
    /// Commits since start.
    pub commits: u64,
    /// Changes committed since start (their ratio to `commits` is the batch size).
    pub changes: u64,
    /// Duration of each commit (with `sync = "always"`, mostly its fsync), in seconds.
    pub commit_seconds: HistogramSnapshot,
}

/// Why [`Admin::ready`] says no.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotReady {
    /// The broker is shutting down.
    ShuttingDown,
    /// The store failed; QoS 1/2 messages are refused.
    StoreFailed,
}

impl std::fmt::Display for NotReady {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NotReady::ShuttingDown => "the broker is shutting down",
            NotReady::StoreFailed => "the store failed: QoS 1/2 messages are refused",
        })
    }
}

fn version_name(v: ProtocolVersion) -> &'static str {
    if v.is_v5() {
        "5.0"
    } else if v == ProtocolVersion::V3_1_1 {
        "3.1.1"
    } else {
        "3.1"
    }
}

impl Admin {
    pub(crate) fn new(
        core: Arc<Core>,
        limits: crate::listener::Limits,
        listeners: Vec<(ListenerKind, SocketAddr)>,
    ) -> Admin {
        Admin {
            core,
            limits,
            listeners: listeners.into(),
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.core.config
    }

    /// Each bound listener's kind and address.
    pub fn listeners(&self) -> &[(ListenerKind, SocketAddr)] {
        &self.listeners
    }

    /// Time since the broker started.
    pub fn uptime(&self) -> Duration {
        self.core.started.elapsed()
    }

    /// Reload the password and ACL files; count authentication failures.
    pub fn security(&self) -> SecurityHandle {
        SecurityHandle(self.core.security.clone())
    }

    /// Whether `password` is `user`'s in the password file in force (PBKDF2: slow on
    /// purpose; call it off the runtime's worker threads). False without a password file.
    pub fn check_password(&self, user: &str, password: &[u8]) -> bool {
        self.core
            .security
            .passwords()
            .is_some_and(|p| p.verify(user, password))
    }

    /// See [`crate::BrokerHandle::stats`].
    pub fn stats(&self) -> BrokerStats {
        self.core.stats(self.limits.active())
    }

    /// See [`crate::BrokerHandle::sessions`].
    pub fn sessions(&self) -> Vec<SessionInfo> {
        self.core.session_infos()
    }

    /// See [`crate::BrokerHandle::session`].
    pub fn session(&self, client_id: &str) -> Option<SessionInfo> {
        self.core.session_info(client_id)
    }

    /// See [`crate::BrokerHandle::disconnect`].
    pub fn disconnect(&self, client_id: &str, discard_session: bool) -> bool {
        self.core.disconnect_client(client_id, discard_session)
    }

    /// Another broker published the will of the connection `conn_id` of `client_id` (a
    /// cluster took this node for gone while it was cut off): that connection, if still
    /// attached, is closed (5.0: DISCONNECT 0x89 Server busy, with a Reason String) and its
    /// will is not published again when it ends. Its client may connect again, with a
    /// will armed anew. Returns whether that connection was attached.
    pub fn will_published_elsewhere(&self, client_id: &str, conn_id: u64) -> bool {
        self.core.will_published_elsewhere(client_id, conn_id)
    }

    /// Give the session of `client_id` up to another broker, which a client reconnected to
    /// (see [`HandOff`](crate::HandOff)); its connection here, if any, is told it was taken
    /// over (5.0: DISCONNECT 0x8E Session taken over).
    pub fn hand_over(&self, client_id: &str, clean_start: bool) -> crate::HandOff {
        self.core.hand_over(client_id, clean_start)
    }

    /// The deliveries that reached a session given up by [`Admin::hand_over`] since then, and
    /// the session removed from this broker for good (quietly: no will; it lives on
    /// elsewhere). `generation`: the one [`HandOff::Moved`](crate::HandOff::Moved) gave
    /// (`None`: any offline session of the client). `None` when no such session is here.
    pub fn hand_over_rest(&self, client_id: &str, generation: Option<u64>) -> Option<bytes::Bytes> {
        self.core.hand_over_rest(client_id, generation)
    }

    /// How far back the messages held by each connected session that outlives its
    /// connection go (queued, or sent and not acknowledged), with how many messages were
    /// queued for it so far (a wrapping count: one that changed got some since). Blocking:
    /// it looks at every session under its lock.
    pub fn held_by_connected(&self) -> Vec<(Arc<str>, crate::backplane::Held, u64)> {
        self.core.held_by_connected()
    }

    /// How far back the messages the session of `client_id` holds go (`None`: it has no
    /// session here).
    pub fn held(&self, client_id: &str) -> Option<crate::backplane::Held> {
        self.core.held_by(client_id)
    }

    /// What the broker's backplane counts (a cluster node's figures), for the metrics
    /// endpoint; empty without one.
    pub fn backplane_figures(&self) -> Vec<crate::backplane::Figure> {
        self.core
            .backplane
            .as_ref()
            .map(|b| b.figures())
            .unwrap_or_default()
    }

    /// Where the backplane keeps the messages the session of `client_id` holds through its
    /// ordinary subscriptions (shard, sequence), those whose place is known: in flight,
    /// queued, and kept on disk. Blocking: it reads the store.
    pub fn places_held(&self, client_id: &str) -> std::collections::HashSet<(u16, u64)> {
        self.core.places_held(client_id)
    }

    /// Forget the incoming QoS 2 `packet_id` the session of `client_id` awaits a PUBREL for
    /// (a cluster node restarted from its store learns that the message was never stored in
    /// the cluster: the client's resend must be taken as new); whether it was there.
    pub fn forget_incoming_qos2(&self, client_id: &str, packet_id: u16) -> bool {
        self.core.forget_incoming_qos2(client_id, packet_id)
    }

    /// Await a PUBREL for the incoming QoS 2 `packet_id` of the session of `client_id` (a
    /// cluster node restarted from its store learns that the cluster stored the message,
    /// though the store had not kept the id yet when the node died: the client's resend must
    /// be answered, not stored again); whether the session is there.
    pub fn remember_incoming_qos2(&self, client_id: &str, packet_id: u16) -> bool {
        self.core.remember_incoming_qos2(client_id, packet_id)
    }

    /// Queue the deliveries of `raw` (a [`Handover`](crate::durability::Handover)) for the
    /// session of `client_id`, after what it holds (`front`: before), and wait until they are
    /// in the store; how many were added (expired ones are left out).
    pub async fn add_deliveries(&self, client_id: &str, raw: &[u8], front: bool) -> Result<usize, String> {
        let at = front.then_some(0);
        let n = self
            .core
            .take_in_rest(client_id, raw, at)
            .map_err(|e| format!("deliveries for {client_id:?} not added: {e}"))?;
        self.core
            .durability
            .wait_submitted()
            .await
            .map_err(|e| format!("deliveries for {client_id:?} not stored: {e}"))?;
        Ok(n)
    }

    /// See [`crate::BrokerHandle::publish`].
    pub fn publish(&self, message: Message) -> Result<usize, TopicError> {
        self.core.publish_from_outside(message, true)
    }

    /// Publish as a client of this broker would (the admin API's publish): to this
    /// broker's sessions, kept if retained, and handed to the backplane, so that in a
    /// cluster it reaches every node. A QoS 1/2 message is stored by the backplane before
    /// this returns, as a client's PUBACK waits for it. Returns how many sessions of this
    /// broker it reached.
    pub async fn publish_everywhere(&self, message: Message) -> Result<usize, PublishError> {
        let (reached, ticket) = self.core.publish_from_api(message)?;
        if let (Some(ticket), Some(b)) = (ticket, &self.core.backplane) {
            if let Some(progress) = b.progress() {
                let limit = b.ack_timeout();
                if !crate::connection::reached(progress, ticket, limit).await || progress.get() < ticket {
                    return Err(PublishError::NotStored(limit));
                }
            }
        }
        Ok(reached)
    }

    /// Like [`Admin::publish`], for a message the caller also hands to the backplane (a
    /// cluster publishing a dead node's will): shared subscriptions are left to a backplane
    /// that delivers them ([`Backplane::delivers_shared`](crate::backplane::Backplane::delivers_shared)).
    pub fn publish_beside_backplane(&self, message: Message) -> Result<usize, TopicError> {
        let local_shared = !self.core.shared_elsewhere;
        self.core.publish_from_outside(message, local_shared)
    }

    /// Deliver a message from elsewhere to this broker's sessions like [`Admin::publish`],
    /// but without keeping it as the retained message of its topic even if RETAIN is set:
    /// for a cluster, whose retained messages arrive apart ([`Admin::set_retained`]).
    pub fn route(&self, message: Message) -> Result<usize, TopicError> {
        self.core.route_from_outside(message)
    }

    /// [`Admin::route`] for several messages at once, in order: each session is locked, and
    /// its connection woken, once for all of them. A message whose topic is not a valid
    /// topic name is left out (its error is in the result, by position). The QoS 1/2
    /// messages among them are taken as stored elsewhere (another node's): a slow subscriber,
    /// whose publisher cannot be slowed down from here, gets them queued beyond twice its
    /// limits, within the broker-wide `max_queued_bytes_total`, rather than dropped.
    pub fn route_all(&self, messages: impl IntoIterator<Item = Message>) -> Vec<Result<usize, TopicError>> {
        self.core.route_all_from_outside(messages, None)
    }

    /// [`Admin::route_all`], and the sessions these messages took to half their queue
    /// limits or beyond are added to `pressed`, each with the publisher
    /// ([`Message::publisher`]) of the messages queued for it then, one pair each (at most
    /// 1,024 pairs a call): whoever brought them holds those publishers back to the room
    /// the sessions have ([`PressedSession::room`]), as one broker holds a publisher back
    /// for a full queue.
    pub fn route_all_pressed(
        &self,
        messages: impl IntoIterator<Item = Message>,
        pressed: &mut Vec<(PressedSession, Arc<str>)>,
    ) -> Vec<Result<usize, TopicError>> {
        let mut cells = Vec::new();
        let results = self.core.route_all_from_outside(messages, Some(&mut cells));
        pressed.extend(cells.into_iter().map(|(cell, p)| {
            (
                PressedSession {
                    cell,
                    core: self.core.clone(),
                },
                p,
            )
        }));
        results
    }

    /// Deliver `message`, which a backplane that delivers shared subscriptions itself
    /// ([`Backplane::delivers_shared`](crate::backplane::Backplane::delivers_shared)) brought
    /// for the shared subscription `full_filter` (`$share/GROUP/FILTER`), to one member of the
    /// group on this broker: a connected member, or with `offline_ok` any member. `settle` is
    /// told when the member has acknowledged it (at once for a member subscribed at QoS 0),
    /// and dropped without being told when the delivery is abandoned.
    pub fn deliver_shared(
        &self,
        full_filter: &str,
        message: Message,
        settle: Option<Arc<dyn crate::Settlement>>,
        offline_ok: bool,
    ) -> Result<crate::SharedDelivery, TopicError> {
        tern_proto::topic::validate_topic_name(&message.topic)?;
        Ok(self
            .core
            .deliver_shared(full_filter, Arc::new(message), settle, offline_ok))
    }

    /// [`Admin::deliver_shared`], adding to `pressed` the member with the message's
    /// publisher when the message took the member to half its queue limits or beyond (see
    /// [`Admin::route_all_pressed`]).
    pub fn deliver_shared_pressed(
        &self,
        full_filter: &str,
        message: Message,
        settle: Option<Arc<dyn crate::Settlement>>,
        offline_ok: bool,
        pressed: &mut Vec<(PressedSession, Arc<str>)>,
    ) -> Result<crate::SharedDelivery, TopicError> {
        tern_proto::topic::validate_topic_name(&message.topic)?;
        let mut cells = Vec::new();
        let delivered = self.core.deliver_shared_with(
            full_filter,
            Arc::new(message),
            settle,
            offline_ok,
            Some(&mut cells),
        );
        for (cell, p) in cells {
            if pressed.len() < crate::broker_core::MAX_PRESSED
                && !pressed
                    .iter()
                    .any(|(c, q)| Arc::ptr_eq(&c.cell, &cell) && *q == p)
            {
                let core = self.core.clone();
                pressed.push((PressedSession { cell, core }, p));
            }
        }
        Ok(delivered)
    }

    /// Keep `message` as the retained message of its topic (an empty payload deletes it)
    /// without delivering it to anyone; returns `false` when `max_retained` is reached.
    pub fn set_retained(&self, message: Message) -> Result<bool, TopicError> {
        tern_proto::topic::validate_topic_name(&message.topic)?;
        Ok(self.core.retain(&Arc::new(message)))
    }

    /// The retained messages whose topic matches `filter`, sorted by topic: how many there
    /// are, and those from `offset`, at most `limit` (messages kept on disk only are read for
    /// the page alone).
    pub fn retained(
        &self,
        filter: &str,
        offset: usize,
        limit: usize,
    ) -> Result<(usize, Vec<Arc<Message>>), TopicError> {
        tern_proto::topic::parse_filter(filter)?;
        let (total, topics) = self.core.retained_topics(filter, offset, limit);
        let page = topics.iter().filter_map(|t| self.core.retained_get(t)).collect();
        Ok((total, page))
    }

    /// The topics clients published on recently that match `filter`, sorted by topic, with
    /// when each was last seen and a sample of its traffic; those not seen for `within` are
    /// left out. Empty when the broker keeps none (`http.recent_topics = 0`, or no HTTP
    /// endpoint).
    pub fn recent_topics(
        &self,
        filter: &str,
        within: std::time::Duration,
    ) -> Result<Vec<crate::SeenTopic>, TopicError> {
        tern_proto::topic::parse_filter(filter)?;
        Ok(self
            .core
            .recent
            .as_ref()
            .map(|r| r.matching(filter, within))
            .unwrap_or_default())
    }

    /// The retained message of `topic`.
    pub fn retained_message(&self, topic: &str) -> Option<Arc<Message>> {
        self.core.retained_get(topic)
    }

    /// Delete the retained message of `topic` (subscribers are not told). Returns whether
    /// there was one.
    pub fn delete_retained(&self, topic: &str) -> bool {
        if self.core.retained_get(topic).is_none() {
            return false;
        }
        let empty = Arc::new(Message::new(
            topic.to_string(),
            bytes::Bytes::new(),
            tern_proto::QoS::AtMostOnce,
            true,
        ));
        self.core.retain(&empty);
        true
    }

    /// [`Admin::delete_retained`] (the admin API's), and in a cluster on every node
    /// ([`Backplane::retained_deleted`](crate::backplane::Backplane::retained_deleted)).
    pub fn delete_retained_everywhere(&self, topic: &str) -> bool {
        let here = self.delete_retained(topic);
        // Deleted on the other nodes even when this one had no copy (its `max_retained` full).
        if let Some(b) = &self.core.backplane {
            b.retained_deleted(topic);
        }
        here
    }

    /// Whether the broker serves: listeners bound (always, for an `Admin`), the store
    /// working, not shutting down.
    pub fn ready(&self) -> Result<(), NotReady> {
        if self.core.is_shutting_down() {
            return Err(NotReady::ShuttingDown);
        }
        if self.core.durability.failed() {
            return Err(NotReady::StoreFailed);
        }
        Ok(())
    }

    /// Trace `client_id`'s packets from now until the receiver is dropped.
    pub fn trace(&self, client_id: &str) -> TraceReceiver {
        self.core.trace.subscribe(client_id)
    }

    /// Watch the messages routed on topics matching `filter` until the receiver is dropped.
    /// `filter` is a topic filter without `$share/`; the error says what is wrong with it.
    pub fn watch(&self, filter: &str) -> Result<crate::watch::WatchReceiver, String> {
        if filter.starts_with("$share/") {
            return Err("a watch sees every message: give the filter without $share/GROUP/".into());
        }
        tern_proto::topic::validate_topic_filter(filter).map_err(|e| e.to_string())?;
        Ok(self.core.watch.subscribe(filter))
    }

    /// The figures behind `/metrics` (walks the sessions and the retained messages once).
    pub fn metrics(&self) -> MetricsSnapshot {
        let core = &self.core;
        let c = &core.counters;
        let m = &core.metrics;
        let mut s = MetricsSnapshot {
            stats: self.stats(),
            refused_rate: m.refused_rate.load(Ordering::Relaxed),
            refused_busy: m.refused_busy.load(Ordering::Relaxed),
            auth_failures: core.security.failures(),
            no_subscribers: m.no_subscribers.load(Ordering::Relaxed),
            publisher_slowdowns: m.slowdowns.load(Ordering::Relaxed),
            bytes_received: c.bytes_in.load(Ordering::Relaxed),
            bytes_sent: c.bytes_out.load(Ordering::Relaxed),
            dropped_expired: m.dropped_expired.load(Ordering::Relaxed),
            dropped_too_large: m.dropped_too_large.load(Ordering::Relaxed),
            dropped_acl_receive: m.dropped_acl_receive.load(Ordering::Relaxed),
            dropped_acl_publish: m.dropped_acl_publish.load(Ordering::Relaxed),
            delivery_latency: m.delivery_latency.snapshot(),
            ..MetricsSnapshot::default()
        };
        s.received_by_qos = m.traffic.read(crate::metrics::RECEIVED);
        s.sent_by_qos = m.traffic.read(crate::metrics::SENT);
        for (i, version) in ["3.1", "3.1.1", "5.0"].into_iter().enumerate() {
            s.connects_by_version[i] = (version, m.connections_by_version[i].load(Ordering::Relaxed));
        }
        s.accepted = m
            .accepted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(n, c)| (n.clone(), c.load(Ordering::Relaxed)))
            .collect();
        let mut groups = std::collections::BTreeSet::new();
        for info in core.session_infos() {
            match &info.connection {
                Some(conn) => {
                    s.sessions_online += 1;
                    let v = version_name(info.protocol_version);
                    match s
                        .connections
                        .iter_mut()
                        .find(|(l, ver, _)| *l == conn.listener && *ver == v)
                    {
                        Some((_, _, n)) => *n += 1,
                        None => s.connections.push((conn.listener.clone(), v, 1)),
                    }
                }
                None => s.sessions_offline += 1,
            }
            for sub in &info.subscriptions {
                if let Some(rest) = sub.filter.strip_prefix("$share/") {
                    groups.insert(rest.to_string());
                }
            }
        }
        s.shared_groups = groups.len() as u64;
        // `#` does not match topics beginning with `$` ([MQTT-4.7.2-1]); `$SYS` apart.
        let ((all, resident), (sys, _)) = (core.retained_bytes("#"), core.retained_bytes("$SYS/#"));
        s.retained_bytes = all + sys;
        s.retained_resident_bytes = resident;
        s.store = core.store_metrics.as_ref().map(|st| StoreSnapshot {
            commits: st.commits.load(Ordering::Relaxed),
            changes: st.changes.load(Ordering::Relaxed),
            commit_seconds: st.duration.snapshot(),
        });
        s
    }
}

/// Why [`Admin::publish_everywhere`] did not publish.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    /// The topic is not a valid topic name.
    #[error(transparent)]
    Topic(#[from] TopicError),
    /// The backplane (a cluster) did not store the QoS 1/2 message in time; it may still be
    /// stored later.
    #[error("the cluster did not store the message within {0:?}")]
    NotStored(Duration),
}

impl Core {
    /// The admin API's publish ([`Admin::publish_everywhere`]): counted, kept if retained,
    /// routed here (shared subscriptions left to a backplane that delivers them) and handed
    /// to the backplane; with the backplane's ticket to wait for, for QoS 1/2.
    fn publish_from_api(
        &self,
        message: Message,
    ) -> Result<(usize, Option<crate::durability::Ticket>), TopicError> {
        let msg = self.take_from_outside(message)?;
        let reached = self.publish_beside_backplane(&msg);
        let ticket = self.backplane.as_ref().and_then(|b| {
            b.published(&msg);
            (msg.qos != tern_proto::QoS::AtMostOnce).then(|| b.submitted())
        });
        Ok((reached, ticket))
    }

    /// A message from outside the MQTT listeners (a cluster, a bridge, the admin API):
    /// counted as received, kept if retained, routed, not handed to the backplane.
    pub(crate) fn publish_from_outside(
        &self,
        message: Message,
        local_shared: bool,
    ) -> Result<usize, TopicError> {
        let msg = self.take_from_outside(message)?;
        Ok(if local_shared {
            self.publish_internal(&msg)
        } else {
            self.publish_beside_backplane(&msg)
        })
    }

    /// A message from outside the MQTT listeners, checked, counted as received and kept if
    /// retained, ready to route.
    fn take_from_outside(&self, message: Message) -> Result<Arc<Message>, TopicError> {
        tern_proto::topic::validate_topic_name(&message.topic)?;
        let msg = Arc::new(message);
        self.counters.messages_in.fetch_add(1, Ordering::Relaxed);
        if msg.retain && !self.retain(&msg) {
            tracing::warn!(topic = %msg.topic, "retained store full (max_retained); message not retained");
        }
        Ok(msg)
    }

    /// Like [`Core::publish_from_outside`], but never kept as retained, and leaving shared
    /// subscriptions to a backplane that delivers them.
    pub(crate) fn route_from_outside(&self, message: Message) -> Result<usize, TopicError> {
        tern_proto::topic::validate_topic_name(&message.topic)?;
        self.counters.messages_in.fetch_add(1, Ordering::Relaxed);
        Ok(self.publish_beside_backplane(&Arc::new(message)))
    }

    /// [`Core::route_from_outside`] for a batch (see [`Admin::route_all`]).
    pub(crate) fn route_all_from_outside(
        &self,
        messages: impl IntoIterator<Item = Message>,
        pressed: Option<&mut Vec<(Arc<crate::session::SessionCell>, Arc<str>)>>,
    ) -> Vec<Result<usize, TopicError>> {
        let mut results = Vec::new();
        // The topic checked last: a run of messages to one topic (a pack's) is checked once.
        let mut checked: Option<tern_proto::ByteString> = None;
        let reached = self.route_batch(
            messages.into_iter().filter_map(|message| {
                let again = checked.as_ref() == Some(&message.topic);
                let valid = if again {
                    Ok(())
                } else {
                    tern_proto::topic::validate_topic_name(&message.topic)
                };
                match valid {
                    Ok(()) => {
                        if !again {
                            checked = Some(message.topic.clone());
                        }
                        results.push(Ok(0));
                        Some((results.len() - 1, Arc::new(message)))
                    }
                    Err(e) => {
                        results.push(Err(e));
                        None
                    }
                }
            }),
            pressed,
        );
        for (i, n) in reached {
            results[i] = Ok(n);
        }
        let routed = results.iter().filter(|r| r.is_ok()).count();
        self.counters
            .messages_in
            .fetch_add(routed as u64, Ordering::Relaxed);
        results
    }
}
