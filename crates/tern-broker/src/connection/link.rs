//! The broker's side of one connection's session: what the sans-IO
//! [`ServerSession`](tern_proto::session::server::ServerSession) asks of the broker
//! ([`ServerHost`]), carried out on the core (routing, subscriptions, the ACL, the store).
//! No protocol rule lives here: each method does one thing the session decided.

use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;
use tern_proto::session::server::{
    AuthAnswer, Note, Permission, Persist, Refused, Routed, ServerHost, ServerState, SessionClose,
};
use tern_proto::{ByteString, Packet, ProtocolVersion, Publish, QoS, SubscriptionOptions, Violation};
use tokio::sync::Notify;

use crate::broker_core::Core;
use crate::durability::SessionChanges;
use crate::message::{Message, Outgoing};
use crate::router::SubEntry;
use crate::security::Action;
use crate::session::{Attached, SessionCell, SessionState, Takeover};

thread_local! {
    /// PUBLISH packets received by QoS (messages, payload bytes) since the last flush: counted
    /// per thread while a read is decoded and added to the shared counters once per read
    /// ([`Link::deliver_pending`]), so that the publish path touches no shared cache line per
    /// message for them. Decoding a read never awaits, so a task stays on one thread meanwhile.
    static RECEIVED: std::cell::Cell<[(u64, u64); 3]> = const { std::cell::Cell::new([(0, 0); 3]) };
}

/// The will of this connection.
#[derive(Debug)]
pub(crate) struct WillState {
    pub message: Arc<Message>,
    /// Will Delay Interval in seconds.
    pub delay: u32,
}

/// How a connection ends.
#[derive(Debug)]
pub(crate) enum Close {
    /// The client sent DISCONNECT; `with_will` for reason 0x04 ([MQTT-3.14.4-3]).
    ClientDisconnect { with_will: bool },
    /// The client broke a rule (or the store failed): send DISCONNECT with
    /// [`Violation::reason_code`] and the message as Reason String (5.0), and close.
    Violation(Violation),
    /// No packet within 1.5 × keep-alive ([MQTT-3.1.2-24]).
    KeepAliveTimeout,
    /// A newer connection took the session over.
    TakenOver(Takeover),
    /// The peer closed the socket or it failed.
    Transport(String),
    /// The broker is shutting down (v5 DISCONNECT 0x8B).
    Shutdown,
    /// Re-authentication failed (v5 DISCONNECT 0x87).
    NotAuthorized,
    /// An administrator disconnected the client (v5 DISCONNECT 0x98); `discard` also
    /// ends its session.
    Kicked { discard: bool },
    /// No byte of a packet in progress for `packet_stall_timeout_secs`.
    Stalled,
    /// Its packet in progress was among the oldest when the broker-wide budget for partial
    /// packets ran out (v5 DISCONNECT 0x97 Quota exceeded).
    Evicted,
    /// Another broker published its will (a cluster took this one for gone; v5 DISCONNECT
    /// 0x89 Server busy): the will is not published again.
    WillGone,
    /// The backplane did not store its messages in time (v5 DISCONNECT 0x89 Server busy);
    /// the acknowledgements waiting for it are not sent.
    Busy(String),
}

impl From<SessionClose> for Close {
    fn from(c: SessionClose) -> Close {
        match c {
            SessionClose::Disconnect { with_will } => Close::ClientDisconnect { with_will },
            SessionClose::Violation(v) => Close::Violation(v),
            SessionClose::KeepAliveTimeout => Close::KeepAliveTimeout,
            SessionClose::NotAuthorized => Close::NotAuthorized,
        }
    }
}

/// What the connection holds besides its [`ServerSession`](tern_proto::session::server::ServerSession).
pub(crate) struct Link {
    pub core: Arc<Core>,
    pub cell: Arc<SessionCell>,
    pub conn_id: u64,
    pub version: ProtocolVersion,
    pub client_id: Arc<str>,
    /// Peer address, user name, listener (shared with the session, for the admin API).
    pub info: Arc<Attached>,
    pub waker: Arc<Notify>,
    pub will: Option<WillState>,
    /// Encoded packets waiting to be written.
    pub out: BytesMut,
    /// Store changes were made that must be committed before the next write
    /// (acknowledgements wait for them).
    pub needs_commit: bool,
    /// The backplane's ticket for this session's entry after a SUBSCRIBE/UNSUBSCRIBE: the
    /// SUBACK/UNSUBACK waits for it ([`crate::backplane::Backplane::sessions_progress`]).
    pub session_ticket: Option<crate::durability::Ticket>,
    /// Shared messages whose QoS 2 delivery began in `out`: told once it may be written
    /// ([`crate::Settlement::started`]).
    pub begun: Vec<Arc<dyn crate::Settlement>>,
    /// The queue's head waits for a store commit.
    pub waiting_for_commit: bool,
    /// The durable ticket when the queue was last looked at (a commit wait waits past it).
    pub seen_commit: u64,
    /// Subscriber sessions over their queue limits: this client's socket is not
    /// read until they have room (backpressure instead of loss for QoS 1/2).
    pub pressure: Vec<Arc<SessionCell>>,
    /// The backplane was congested after this connection's last QoS 0 publish: it is not
    /// read until the backplane has room ([`crate::backplane::Backplane::congested`]).
    pub backplane_slowed: bool,
    /// What [`Backplane::holds_from`] answered for this connection, and the
    /// [`Backplane::holds_epoch`] it stands for (`u64::MAX` before it was asked).
    ///
    /// [`Backplane::holds_from`]: crate::backplane::Backplane::holds_from
    /// [`Backplane::holds_epoch`]: crate::backplane::Backplane::holds_epoch
    pub holds_from: u64,
    pub holds_epoch: u64,
    /// QoS 0 messages this connection has handed to the backplane
    /// ([`crate::backplane::Sent`]).
    pub qos0_sent: u64,
    /// Messages routed from the packets being decoded, not yet queued (see
    /// [`crate::broker_core::Core::publish_deferred`]).
    pub pending: crate::broker_core::Deliveries,
    /// QoS 0 messages for the backplane, handed over with `pending`
    /// ([`crate::broker_core::Core::hand_later`]).
    pub qos0_later: Vec<(Arc<Message>, crate::backplane::Sent)>,
    /// Payload bytes in `pending`.
    pub pending_bytes: usize,
    /// Messages routed into `pending` (counted in `messages_in` when it is queued).
    pub pending_messages: u64,
    /// The store group of the QoS 2 PUBLISH being handled.
    pub group: Option<crate::durability::Group>,
    /// The packet id of the QoS 2 PUBLISH being handled, the marks the backplane made for
    /// its message and the ticket its PUBREC waits for
    /// ([`crate::backplane::Backplane::qos2_received`]).
    pub qos2_received: Option<(u16, Arc<crate::BackplaneMark>, crate::durability::Ticket)>,
    /// The incoming QoS 2 messages since the last commit that carry the backplane's marks,
    /// by packet id: a PUBREC is not sent for one the backplane refused
    /// ([`crate::BackplaneMark::refused`]).
    pub qos2_marked: Vec<(u16, Arc<crate::BackplaneMark>)>,
    /// A re-authentication exchange in progress.
    pub reauth: Option<Box<dyn crate::AuthExchange>>,
    /// This connection's share of the budget for partial packets, while its packet in
    /// progress is large enough to count.
    pub partial: Option<crate::budget::Claim>,
    /// The HTTP hook's answers for the packet being handled (`auth.http.acl_url`), asked
    /// before the packet went to the session: (action, topic or filter, answer).
    pub acl_answers: Vec<(Action, Box<str>, Option<bool>)>,
}

impl Link {
    /// Whether this connection still holds its session.
    pub fn check_attached(&self, st: &SessionState) -> Result<(), Close> {
        if st.conn_id == Some(self.conn_id) {
            return Ok(());
        }
        let t = st.takeover.filter(|t| t.old_conn == self.conn_id);
        Err(Close::TakenOver(t.unwrap_or(Takeover {
            old_conn: self.conn_id,
            session_ended: true,
        })))
    }

    /// Forget the incoming QoS 2 packet `ids` whose messages the backplane refused
    /// ([`crate::BackplaneMark::refused`]), here and in the backplane's record, while this
    /// connection still holds the session: a successor's ids are its own (one of them may
    /// be the same message stored since, through another broker).
    pub fn forget_refused(&self, ids: &[u16]) {
        let (persistent, forgotten) = {
            let mut st = self.cell.lock();
            if st.ended || self.check_attached(&st).is_err() {
                return;
            }
            let forgotten: Vec<tern_proto::PacketId> = ids
                .iter()
                .filter_map(|id| tern_proto::PacketId::new(*id))
                .filter(|id| st.proto.forget_qos2(*id))
                .collect();
            (st.persistent, forgotten)
        };
        for id in forgotten {
            self.core.durability.forget_qos2(persistent, &self.client_id, id);
            // The id is free again, as after a PUBREL (nothing waits for the write).
            if let Some(b) = self.core.backplane.as_ref().filter(|_| self.core.qos2_elsewhere) {
                let _ = b.qos2_released(&self.client_id, id.get());
            }
        }
    }

    /// The store changes of the locked session state (`outlives`: the session outlives its
    /// connection, a Session Expiry Interval above 0).
    pub fn changes<'a>(&'a self, persistent: bool, outlives: bool) -> SessionChanges<'a> {
        SessionChanges {
            persistence: &self.core.durability,
            client: &self.client_id,
            persistent,
            qos2_elsewhere: self
                .core
                .backplane
                .as_ref()
                .filter(|_| outlives && self.core.qos2_elsewhere),
            ticket: None,
            received: None,
        }
    }

    /// The packets about to be written wait for the backplane's `ticket` too.
    pub fn wait_for_session(&mut self, ticket: Option<crate::durability::Ticket>) {
        if let Some(t) = ticket {
            self.session_ticket = Some(self.session_ticket.map_or(t, |old| old.max(t)));
        }
    }

    fn route_message(&mut self, msg: &Arc<Message>) -> Routed {
        let mut sent = None;
        if let (Some(b), QoS::AtMostOnce) = (&self.core.backplane, msg.qos) {
            // QoS 0 is not held by acknowledgements: the backplane's queue slows the client,
            // and so do subscribers elsewhere that have no room for more of its messages.
            self.qos0_sent += 1;
            let s = crate::backplane::Sent {
                conn_id: self.conn_id,
                count: self.qos0_sent,
            };
            // Asked when it may hold: asking costs the cluster's QoS 0 publishers a lock, a map
            // lookup and a clock read each, and the answer seldom changes.
            if !self.backplane_slowed {
                let epoch = b.holds_epoch();
                if epoch != self.holds_epoch {
                    self.holds_from = b.holds_from(self.conn_id);
                    self.holds_epoch = epoch;
                }
                self.backplane_slowed = (self.qos0_sent.is_multiple_of(crate::backplane::QOS0_ASK_EVERY)
                    && b.congested())
                    || (self.qos0_sent >= self.holds_from && b.holds_back(s));
            }
            sent = Some(s);
        }
        if msg.retain && !self.core.retain(msg) {
            tracing::warn!(client_id = %self.client_id, topic = %msg.topic, "retained store full (max_retained); message not retained");
        }
        if self.core.durability.enabled() {
            // Queued at once: the store groups a QoS 2 packet id with the copies routed
            // for it, so they must be submitted inside the group.
            return self.core.publish(msg, &mut self.pressure, sent);
        }
        let start = self.pending.len();
        let n = self
            .core
            .publish_deferred(msg, &mut self.pending, sent, &mut self.qos0_later);
        self.pending_bytes += n * msg.payload.len();
        self.pending_messages += 1;
        let cfg = &self.core.config;
        let full = self.pending.len() >= self.core.deliver_batch
            || self.pending_bytes >= cfg.max_queued_bytes / 4
            || self.pending[start..].iter().any(|(cell, _)| cell.is_near_full());
        if full {
            self.deliver_pending();
        }
        // Deferred only without a store, where no session keeps messages on disk and none
        // drops one for its offline limits.
        self.core.reached(n)
    }

    /// Queue the deliveries collected from the packets decoded so far (before any
    /// acknowledgement for them is written, and before backpressure is checked).
    pub fn deliver_pending(&mut self) {
        if !self.pending.is_empty() {
            self.core.deliver_all(&mut self.pending, Some(&mut self.pressure));
        }
        self.core.hand_later(&mut self.qos0_later);
        self.pending_bytes = 0;
        let received = RECEIVED.with(|r| r.replace([(0, 0); 3]));
        if received != [(0, 0); 3] {
            self.core.metrics.received(&received);
            if let Some(recent) = &self.core.recent {
                recent.flush();
            }
        }
        if self.pending_messages > 0 {
            let n = std::mem::take(&mut self.pending_messages);
            self.core
                .counters
                .messages_in
                .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        }
        // An idle connection keeps no batch space (a busy one allocates once per read).
        if self.pending.capacity() > 64 {
            self.pending = Vec::new();
        }
        if self.qos0_later.capacity() > 64 {
            self.qos0_later = Vec::new();
        }
    }
}

impl ServerHost for Link {
    type Message = Outgoing;
    type Close = Close;

    fn transmit(&mut self, packet: &Packet) {
        if let Err(e) = packet.encode(self.version, &mut self.out) {
            tracing::warn!(client_id = %self.client_id, "cannot encode {:?}: {e}", packet.packet_type());
        }
    }

    fn allows(&mut self, permission: Permission, topic: &str) -> bool {
        let action = match permission {
            Permission::Publish => Action::Publish,
            Permission::Subscribe => Action::Subscribe,
        };
        let user = self.info.username.as_deref();
        let security = &self.core.security;
        if self.acl_answers.is_empty() {
            return security.allows(action, user, &self.client_id, topic);
        }
        let answer = self
            .acl_answers
            .iter()
            .find(|(a, t, _)| *a == action && **t == *topic)
            .map(|(_, _, answer)| *answer);
        match answer {
            Some(answer) => security.allows_given(action, user, &self.client_id, topic, answer),
            // Every question of the packet was asked; one not asked is not allowed.
            None => false,
        }
    }

    fn with_state<R>(
        &mut self,
        f: impl FnOnce(&mut ServerState<Outgoing>, &mut dyn Persist<Outgoing>) -> R,
    ) -> Result<R, Close> {
        let cell = self.cell.clone();
        let mut st = cell.lock();
        self.check_attached(&st)?;
        let SessionState {
            proto,
            persistent,
            expiry_interval,
            ..
        } = &mut *st;
        let mut changes = self.changes(*persistent, *expiry_interval > 0);
        let r = f(proto, &mut changes);
        let (ticket, received) = (changes.ticket, changes.received.take());
        drop(st);
        self.wait_for_session(ticket);
        if received.is_some() {
            self.qos2_received = received;
        }
        Ok(r)
    }

    fn route(&mut self, publish: Publish, topic: ByteString, now: Instant) -> Routed {
        let (i, bytes) = (
            crate::metrics::qos_index(publish.qos),
            publish.payload.len() as u64,
        );
        RECEIVED.with(|r| {
            let mut counts = r.get();
            counts[i].0 += 1;
            counts[i].1 += bytes;
            r.set(counts);
        });
        let publish_id = publish.packet_id.map(|id| id.get());
        let mut msg = Message::from_publish(publish, topic, Some(self.client_id.clone()), now);
        // The QoS 2 packet id the session took for this message (it outlives its connection,
        // and the backplane keeps its QoS 2 state): the message carries the backplane's marks.
        if let Some((packet_id, mark, ticket)) = self.qos2_received.take() {
            if publish_id == Some(packet_id) {
                self.qos2_marked.push((packet_id, mark.clone()));
                msg = msg.with_backplane_mark(mark);
                self.wait_for_session(Some(ticket));
            }
        }
        let msg = Arc::new(msg);
        if let Some(recent) = &self.core.recent {
            recent.note(&msg);
        }
        self.route_message(&msg)
    }

    fn begin_group(&mut self) {
        self.group = self.core.durability.group();
    }

    fn end_group(&mut self) {
        self.core.durability.end_group(self.group.take());
    }

    fn storage_failed(&self) -> bool {
        self.core.durability.failed()
    }

    fn ack_when_durable(&mut self) {
        self.needs_commit = true;
    }

    fn subscribe(
        &mut self,
        full_filter: &str,
        share_group: Option<&str>,
        options: SubscriptionOptions,
        id: Option<u32>,
    ) -> Result<bool, Refused> {
        let entry = SubEntry {
            options,
            id,
            session: self.cell.clone(),
            shared: share_group.map(|_| Arc::from(full_filter)),
        };
        self.core.subscribe(full_filter, &self.cell, entry).map_err(|e| {
            tracing::warn!(client_id = %self.client_id, filter = full_filter, "subscription refused: {e}");
            Refused
        })
    }

    fn unsubscribe(&mut self, full_filter: &str) {
        self.core.unsubscribe(full_filter, &self.cell);
    }

    fn send_retained(&mut self, filter: &str, qos: QoS, id: Option<u32>, now: Instant) {
        // What this client published before the SUBSCRIBE is queued first, in order.
        self.deliver_pending();
        self.core.send_retained(filter, &self.cell, qos, id, now);
    }

    fn subscriptions_changed(&mut self) {
        let ticket = self.core.save_session(&self.cell, false, true);
        self.wait_for_session(ticket);
    }

    fn set_session_expiry(&mut self, secs: u32) {
        // Only while this connection still holds the session: a DISCONNECT handled after a
        // new connection took the session over must not shorten the new one's expiry.
        let mut st = self.cell.lock();
        if st.conn_id == Some(self.conn_id) {
            st.expiry_interval = secs;
        }
    }

    fn reauthenticate(&mut self, method: &str, begin: bool, data: Option<&[u8]>) -> AuthAnswer {
        if begin {
            let Some(auth) = self.core.authenticators.iter().find(|x| x.method() == method) else {
                return AuthAnswer::Failure;
            };
            self.reauth = Some(auth.begin(&self.client_id, self.info.username.as_deref()));
        }
        let Some(ex) = self.reauth.as_mut() else {
            return AuthAnswer::Failure;
        };
        match ex.step(data) {
            crate::AuthStep::Continue(d) => AuthAnswer::Continue(d),
            crate::AuthStep::Success(d) => {
                self.reauth = None;
                AuthAnswer::Success(d)
            }
            crate::AuthStep::Failure => {
                self.reauth = None;
                AuthAnswer::Failure
            }
        }
    }

    fn note(&mut self, note: Note<'_>) {
        let client_id = &*self.client_id;
        let cfg = &self.core.config;
        match note {
            Note::PublishDenied(topic) => {
                self.core
                    .metrics
                    .dropped_acl_publish
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::info!(client_id, %topic, "PUBLISH denied by the ACL")
            }
            Note::SubscribeDenied(filter) => {
                tracing::info!(client_id, %filter, "SUBSCRIBE denied by the ACL")
            }
            Note::InvalidFilter(filter) => tracing::debug!(client_id, %filter, "invalid topic filter"),
            Note::SubscriptionsRefused {
                count,
                wildcard: false,
            } => tracing::info!(
                client_id,
                refused = count,
                limit = cfg.max_subscriptions_per_client,
                "SUBSCRIBE refused: max_subscriptions_per_client reached"
            ),
            Note::SubscriptionsRefused {
                count,
                wildcard: true,
            } => tracing::info!(
                client_id,
                refused = count,
                limit = cfg.max_wildcard_subscriptions_per_client,
                "SUBSCRIBE refused: max_wildcard_subscriptions_per_client reached"
            ),
            Note::UnknownAck(id) => tracing::debug!(
                client_id,
                id = id.get(),
                "acknowledgement for an unknown packet id"
            ),
        }
    }
}
