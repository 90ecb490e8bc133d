//! One task per connection: read → decode → handle; session queue → encode →
//! write; one keep-alive deadline; close with the right reason code.
//!
//! The task owns the socket and the connection-scoped state (topic aliases,
//! will, keep-alive). Session state lives in the shared [`SessionCell`] so it
//! survives the connection.

mod connect;
mod handle;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tern_proto::session::alias::{AliasUse, InboundAliases, OutboundAliases};

use bytes::BytesMut;
use tern_proto::codec::{Decoded, Decoder};
use tern_proto::{ByteString, Disconnect, Packet, ProtocolVersion, ReasonCode, Violation};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::Notify;

use crate::broker_core::Core;
use crate::clock::Wait;
use crate::message::Message;
use crate::scheduler::Due;
use crate::session::{Attached, InflightState, SessionCell, Takeover};

/// Most bytes encoded into the write buffer before it is flushed.
const WRITE_BATCH: usize = 64 * 1024;

/// A batch of deliveries taken from a session queue; kept per worker thread so that
/// [`Conn::pump`] does not allocate one per call (taken and put back within the
/// call, with no `.await` in between).
type Batch = Vec<(crate::message::Outgoing, Option<tern_proto::PacketId>)>;

/// Largest batch capacity kept for reuse.
const MAX_KEPT_BATCH: usize = 4096;

thread_local! {
    static BATCH: std::cell::Cell<Batch> = const { std::cell::Cell::new(Vec::new()) };
}

/// Topic aliases of one connection (v5 section 3.3.2.3.4): the same components as the
/// client's session (tern_proto::session::alias), the least recently used alias reassigned
/// when all are taken.
#[derive(Debug, Default)]
pub(crate) struct Aliases {
    /// Set by the client (bounded by our Topic Alias Maximum).
    pub inbound: InboundAliases,
    /// For messages we send (bounded by the client's Topic Alias Maximum).
    pub outbound: OutboundAliases,
}

impl Aliases {
    /// Both directions, with their maxima.
    pub fn new(ours: u16, clients: u16) -> Box<Aliases> {
        let mut a = Box::<Aliases>::default();
        a.inbound.reset(ours);
        a.outbound.reset(clients);
        a
    }
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
}

/// A connection after a successful CONNECT.
pub(crate) struct Conn {
    shared: Arc<Core>,
    cell: Arc<SessionCell>,
    conn_id: u64,
    version: ProtocolVersion,
    client_id: Arc<str>,
    /// Peer address, user name, listener (shared with the session, for the admin API).
    info: Arc<Attached>,
    waker: Arc<Notify>,
    will: Option<WillState>,
    /// Session Expiry Interval given in CONNECT (for the DISCONNECT rule of v5 3.14.2.2.2).
    connect_expiry: u32,
    /// Topic aliases in both directions; allocated on first use (3.1.1 clients, and
    /// most 5.0 ones, never use them).
    aliases: Option<Box<Aliases>>,
    /// The client's Topic Alias Maximum (0: no aliases towards it).
    pub(super) client_alias_maximum: u16,
    /// The client's Maximum Packet Size, as last read from its session.
    client_max_packet_size: u32,
    /// Request Problem Information (v5 [MQTT-3.1.2-29]): reason strings on acknowledgements.
    pub(super) problem_information: bool,
    out: BytesMut,
    decoder: Decoder,
    /// The enhanced authentication method of CONNECT, and a re-authentication in progress.
    pub(super) auth_method: Option<ByteString>,
    /// Store changes were made that must be committed before the next write
    /// (acknowledgements wait for them).
    pub(super) needs_commit: bool,
    /// The queue's head waits for a store commit.
    waiting_for_commit: bool,
    /// The durable ticket when the queue was last looked at (a commit wait waits past it).
    seen_commit: u64,
    /// Subscriber sessions over their queue limits: this client's socket is not
    /// read until they have room (backpressure instead of loss for QoS 1/2).
    pub(super) pressure: Vec<Arc<SessionCell>>,
    /// Messages routed from the packets being decoded, not yet queued (see
    /// [`crate::broker_core::Core::publish_deferred`]).
    pub(super) pending: crate::broker_core::Deliveries,
    /// Payload bytes in `pending`.
    pub(super) pending_bytes: usize,
    /// Messages routed into `pending` (counted in `messages_in` when it is queued).
    pub(super) pending_messages: u64,
    /// PUBACKs received and not yet applied (see `handle.rs`, `apply_pubacks`).
    pub(super) pubacks: Vec<tern_proto::PacketId>,
    pub(super) reauth: Option<Box<dyn crate::AuthExchange>>,
    /// This connection's share of the budget for partial packets, while its packet in
    /// progress is large enough to count.
    partial: Option<crate::budget::Claim>,
}

impl Conn {
    #[allow(clippy::too_many_arguments, reason = "built once, from the CONNECT phase")]
    fn new(
        shared: Arc<Core>,
        cell: Arc<SessionCell>,
        conn_id: u64,
        version: ProtocolVersion,
        client_id: Arc<str>,
        info: Arc<Attached>,
        waker: Arc<Notify>,
        will: Option<WillState>,
        connect_expiry: u32,
    ) -> Conn {
        let decoder = Decoder::new(version, shared.config.max_packet_size);
        Conn {
            shared,
            cell,
            conn_id,
            version,
            client_id,
            waker,
            info,
            will,
            connect_expiry,
            aliases: None,
            client_alias_maximum: 0,
            problem_information: true,
            client_max_packet_size: u32::MAX,
            out: BytesMut::new(),
            decoder,
            auth_method: None,
            needs_commit: false,
            waiting_for_commit: false,
            seen_commit: 0,
            pressure: Vec::new(),
            pending: Vec::new(),
            pending_bytes: 0,
            pending_messages: 0,
            pubacks: Vec::new(),
            reauth: None,
            partial: None,
        }
    }

    fn send(&mut self, mut packet: Packet) {
        // 5.0: a Reason String or User Property the client's Maximum Packet Size has no room
        // for is left out (v5 [MQTT-3.9.2-1], [MQTT-3.14.2-3] and the like).
        if self.version.is_v5() && packet.has_diagnostics() {
            let max = self.cell.lock().client_max_packet_size;
            packet.fit_within(self.version, max);
        }
        if let Err(e) = packet.encode(self.version, &mut self.out) {
            tracing::warn!(client_id = %self.client_id, "cannot encode {:?}: {e}", packet.packet_type());
        }
    }

    /// Resend unacknowledged deliveries in their original order, PUBLISH with DUP
    /// or PUBREL ([MQTT-4.4.0-1]).
    fn resend_inflight(&mut self, now: Instant) -> Result<(), Close> {
        let packets: Vec<Packet> = {
            let st = self.cell.lock();
            self.check_attached(&st)?;
            // The stages resent here may have been reached by the connection before this one
            // and not be durable yet: resend only once they are, or a crash could make the
            // broker resend a PUBLISH the client already released (found by tern-sim).
            if st.persistent && !st.inflight.is_empty() {
                self.needs_commit = true;
            }
            st.inflight
                .iter()
                .map(|i| match i.state {
                    InflightState::Published => {
                        Packet::Publish(i.out.to_publish(self.version, Some(i.packet_id), true, now))
                    }
                    InflightState::Released => Packet::PubRel(tern_proto::Ack::new(i.packet_id)),
                })
                .collect()
        };
        for p in packets {
            self.send(p);
        }
        Ok(())
    }

    /// An administrator's disconnect aimed at this connection, if one came.
    fn take_kick(&self) -> Option<bool> {
        let mut st = self.cell.lock();
        if st.conn_id == Some(self.conn_id) {
            st.kicked.take()
        } else {
            None
        }
    }

    fn check_attached(&self, st: &crate::session::SessionState) -> Result<(), Close> {
        if st.conn_id == Some(self.conn_id) {
            return Ok(());
        }
        let t = st.takeover.filter(|t| t.old_conn == self.conn_id);
        Err(Close::TakenOver(t.unwrap_or(Takeover {
            old_conn: self.conn_id,
            session_ended: true,
        })))
    }

    /// Move queued messages into the write buffer while the in-flight window has
    /// room; `Ok(true)` when more are waiting for buffer space.
    ///
    /// Two phases: messages are taken from the queue (and recorded as in flight)
    /// under the session lock, then encoded without it, so publishers enqueueing
    /// for this session wait only for the short first phase.
    fn pump(&mut self, now: Instant) -> Result<bool, Close> {
        let cell = self.cell.clone();
        let (mut batch, more) = {
            let mut st = cell.lock();
            self.check_attached(&st)?;
            self.take_batch(&mut st, now)
        };
        let mut sent = 0u64;
        // A dropped QoS 1/2 message frees its in-flight slot, and no acknowledgement
        // will come for it: the caller must pump again rather than wait.
        let mut freed = false;
        for (out, packet_id) in batch.drain(..) {
            let mut publish = out.to_publish(self.version, packet_id, false, now);
            let new_alias = self.apply_outbound_alias(&mut publish);
            let mark = self.out.len();
            // [MQTT-3.1.2-25]: never send a packet above the client's Maximum Packet Size.
            let fits = match publish.encode(self.version, &mut self.out) {
                Ok(n) => n as u64 <= u64::from(self.client_max_packet_size),
                Err(_) => false,
            };
            if !fits {
                self.out.truncate(mark);
                if let (Some(alias), Some(a)) = (new_alias, self.aliases.as_mut()) {
                    a.outbound.forget(alias);
                }
                tracing::debug!(client_id = %self.client_id, "message dropped: larger than the client's maximum packet size");
                let mut st = cell.lock();
                if let Some(id) = packet_id {
                    if let Some(i) = st.find_inflight(id) {
                        st.remove_inflight(i);
                        freed = true;
                    }
                }
                self.forget(&st, out.seq);
                continue;
            }
            sent += 1;
        }
        if batch.capacity() <= MAX_KEPT_BATCH {
            BATCH.with(|b| b.set(batch));
        }
        self.shared
            .counters
            .messages_out
            .fetch_add(sent, std::sync::atomic::Ordering::Relaxed);
        Ok(more || freed)
    }

    /// The first phase of [`Conn::pump`]: take what may be sent now, allocate packet
    /// ids and record QoS 1/2 deliveries as in flight (and in the store).
    fn take_batch(&mut self, st: &mut crate::session::SessionState, now: Instant) -> (Batch, bool) {
        let window = usize::from(st.client_receive_maximum.min(self.shared.config.max_inflight));
        self.client_max_packet_size = st.client_max_packet_size;
        let committed = self.shared.durability.committed();
        self.seen_commit = committed;
        let acl = self.shared.security.acl();
        self.waiting_for_commit = false;
        let was_full = st.full_since.is_some();
        let queued_before = st.queued_bytes;
        let mut batch = BATCH.with(|b| b.take());
        let mut budget = WRITE_BATCH.saturating_sub(self.out.len());
        let mut more = false;
        while let Some(front) = st.queue.front() {
            if budget == 0 {
                more = true;
                break;
            }
            if front.commit_seq > committed {
                // Not durable yet: sending it now could lead to a second delivery after a crash.
                self.waiting_for_commit = true;
                break;
            }
            if front.msg.is_expired(now) {
                // [MQTT-3.3.2-5]: an expired message is not delivered.
                if let Some(gone) = st.pop_queued() {
                    self.forget(st, gone.seq);
                }
                continue;
            }
            // The ACL may not let this client receive the topic (checked at delivery, so a
            // reloaded ACL also stops live and resumed subscriptions).
            if let Some(acl) = &acl {
                let action = crate::security::Action::Receive;
                if !acl.allows(
                    action,
                    self.info.username.as_deref(),
                    &self.client_id,
                    &front.msg.topic,
                ) {
                    if let Some(gone) = st.pop_queued() {
                        self.forget(st, gone.seq);
                    }
                    continue;
                }
            }
            let needs_id = front.qos != tern_proto::QoS::AtMostOnce;
            if needs_id && st.inflight.len() >= window {
                break;
            }
            let Some(out) = st.pop_queued() else { break };
            budget = budget.saturating_sub(out.msg.payload.len() + out.msg.topic.len() + 8);
            let packet_id = if needs_id { st.allocate_packet_id() } else { None };
            if let Some(packet_id) = packet_id {
                self.shared.durability.put_delivery(
                    st,
                    &self.client_id,
                    &out,
                    InflightState::Published,
                    packet_id,
                );
                // A QoS 2 delivery goes out only once its packet id is durable: after a crash
                // the broker must resend it with that id [MQTT-4.4.0-1], or the client, which
                // deduplicates by packet id until PUBREL, takes it for a new message.
                if out.qos == tern_proto::QoS::ExactlyOnce && st.persistent && out.seq != 0 {
                    self.needs_commit = true;
                }
                st.push_inflight(crate::session::Inflight {
                    packet_id,
                    out: out.clone(),
                    state: InflightState::Published,
                });
            }
            batch.push((out, packet_id));
        }
        // The subscriber made progress: it is slow, not stalled, so the stall clock restarts;
        // publishers slowed down for it may go on once it is under half its limits. (Taking
        // the last message clears `full_since` too: `was_full` makes sure they are told.)
        if !batch.is_empty() && was_full {
            st.full_since = Some(now);
            if st.queue.len() <= self.shared.config.max_queued_messages / 2 {
                st.full_since = None;
                self.cell.space.notify_waiters();
            }
        }
        self.shared
            .queued
            .shrank(queued_before.saturating_sub(st.queued_bytes));
        self.cell.note_fullness(st, &self.shared.config);
        (batch, more)
    }

    /// Use a topic alias towards the client when it allows them: the first use of a
    /// topic sends it with a new alias, later uses send only the alias.
    /// Returns the alias when this call set it (to undo if the packet is not sent).
    fn apply_outbound_alias(&mut self, p: &mut tern_proto::Publish) -> Option<u16> {
        if self.client_alias_maximum == 0 {
            return None;
        }
        let (ours, clients) = (self.shared.config.topic_alias_maximum, self.client_alias_maximum);
        let aliases = self.aliases.get_or_insert_with(|| Aliases::new(ours, clients));
        match aliases.outbound.assign(&p.topic) {
            AliasUse::None => None,
            AliasUse::Reuse(alias) => {
                p.properties.topic_alias = Some(alias);
                p.topic = ByteString::new();
                None
            }
            AliasUse::Set(alias) => {
                p.properties.topic_alias = Some(alias);
                Some(alias)
            }
        }
    }

    /// When a packet in progress (what is left in `buf`) has waited too long for its next byte.
    fn stall_deadline(&self, buf: &BytesMut, last_rx: Instant) -> Option<Instant> {
        match self.shared.config.packet_stall_timeout() {
            Some(t) if !buf.is_empty() => Some(last_rx + t),
            _ => None,
        }
    }

    fn deadline(&self, last_rx: Instant) -> Option<Instant> {
        // One and a half times the keep-alive in force (section 3.1.2.10); read from the
        // connection's shared description rather than kept twice.
        let secs = self.info.keep_alive;
        (secs != 0).then(|| last_rx + Duration::from_millis(u64::from(secs) * 1500))
    }

    async fn drive<S: AsyncRead + AsyncWrite + Unpin>(&mut self, io: &mut S, buf: &mut BytesMut) -> Close {
        let now = self.shared.clock.now();
        if let Err(c) = self.resend_inflight(now) {
            return c;
        }
        // Keep-alive and the stall timer run on the broker's clock (a test's ManualClock
        // passes them at once); only the slowed publisher's poll uses the runtime's clock.
        let mut last_rx = self.shared.clock.now();
        let mut read_hint = MIN_READ;
        // The durability the commit waits below are on (an Arc, not a borrow of self).
        let shared = self.shared.clone();
        // Shutdown wakes every attached connection through its waker; one that attached
        // after that sees the flag here.
        if self.shared.is_shutting_down() {
            return Close::Shutdown;
        }
        if let Some(discard) = self.take_kick() {
            return Close::Kicked { discard };
        }
        // Bytes that arrived together with CONNECT.
        if let Err(c) = self.decode_all(buf) {
            return c;
        }
        loop {
            let more = match self.pump(self.shared.clock.now()) {
                Ok(more) => more,
                Err(c) => return c,
            };
            if let Err(c) = self.commit().await {
                return c;
            }
            if !self.out.is_empty() {
                if let Err(e) = write_flush(io, &self.out).await {
                    return Close::Transport(format!("write failed: {e}"));
                }
                crate::listener::count(&self.shared.counters.bytes_out, self.out.len());
                self.out.clear();
                // Give back a buffer that a burst made large.
                if self.out.capacity() > 4 * WRITE_BATCH {
                    self.out = BytesMut::new();
                }
            }
            let deadline = self.deadline(last_rx);
            reserve_for_read(buf, read_hint);
            let cfg = &self.shared.config;
            let clock = &self.shared.clock;
            self.pressure.retain(|c| !c.has_room(cfg, clock));
            if self.pressure.is_empty() && !buf.is_empty() {
                // Packets left buffered while this client was slowed down. If any were
                // handled (acknowledgements may have opened the in-flight window), go
                // round again to pump; a partial packet alone waits for more bytes.
                let before = buf.len();
                if let Err(c) = self.decode_all(buf) {
                    return c;
                }
                if buf.len() != before {
                    continue;
                }
            }
            // What is left in the buffer counts against the broker-wide budget for partial
            // packets once it is large (nothing to do for the small remainders of most reads).
            if buf.len() >= crate::budget::TRACKED || self.partial.is_some() {
                // The memory held is the buffer's capacity, not only the bytes in it.
                let held = if buf.len() >= crate::budget::TRACKED {
                    buf.capacity()
                } else {
                    0
                };
                self.shared.partial.hold(&mut self.partial, held, &self.waker);
                if crate::budget::evicted(&self.partial) {
                    return Close::Evicted;
                }
            }
            let slowed = self.pressure.first().cloned();
            // What is left in the buffer here is a packet in progress: it may wait for its
            // next byte only so long, keep-alive or not.
            let stall = self.stall_deadline(buf, last_rx);
            let deadline = match (deadline, stall) {
                (Some(d), Some(s)) => Some(d.min(s)),
                (d, s) => d.or(s),
            };
            // A slowed-down client's socket is not read, so its keep-alive cannot be
            // judged: the clock stops while it waits and starts again after.
            let deadline = if slowed.is_some() {
                last_rx = self.shared.clock.now();
                None
            } else {
                deadline
            };
            // While slowed down, look at the subscriber's queue again at least every 20 ms
            // (the wake-up on its `space` can come before this task waits for it); otherwise
            // wait for the deadline on the broker's clock.
            let wait = match (&slowed, deadline) {
                (Some(_), _) => Wait::Until(tokio::time::Instant::now() + ROOM_POLL),
                (None, Some(d)) => self.shared.clock.wait_until(d),
                (None, None) => Wait::Never,
            };
            // The futures of this select! live in every connection's task, idle ones
            // included: each branch is kept small (the commit wait, needed only with a
            // store, is boxed when it is used).
            tokio::select! {
                biased;
                r = io.read_buf(buf), if slowed.is_none() => match r {
                    Ok(0) => return Close::Transport("peer closed the connection".into()),
                    Ok(n) => {
                        // Double the next read when this one filled the space, shrink after small ones.
                        read_hint = if n >= read_hint { (read_hint * 2).min(MAX_READ) } else { (read_hint / 2).max(n).max(MIN_READ) };
                        crate::listener::count(&self.shared.counters.bytes_in, n);
                        last_rx = self.shared.clock.now();
                        if let Err(c) = self.decode_all(buf) {
                            return c;
                        }
                    }
                    Err(e) => return Close::Transport(format!("read failed: {e}")),
                },
                _ = self.waker.notified() => {
                    if self.shared.is_shutting_down() {
                        return Close::Shutdown;
                    }
                    if let Some(discard) = self.take_kick() {
                        return Close::Kicked { discard };
                    }
                    if crate::budget::evicted(&self.partial) {
                        return Close::Evicted;
                    }
                }
                _ = wait_commit(&shared.durability, self.seen_commit), if self.waiting_for_commit => {}
                _ = wait_room(slowed.as_deref()), if slowed.is_some() => {}
                _ = wait.wait() => {
                    let now = self.shared.clock.now();
                    if slowed.is_none() && self.stall_deadline(buf, last_rx).is_some_and(|s| now >= s) {
                        return Close::Stalled;
                    }
                    if deadline.is_some_and(|d| now >= d) {
                        return Close::KeepAliveTimeout;
                    }
                }
                _ = std::future::ready(()), if more => {}
            }
        }
    }

    /// Wait until the store changes made so far are committed, so that the
    /// acknowledgements in `out` promise nothing the store does not hold.
    async fn commit(&mut self) -> Result<(), Close> {
        if !std::mem::take(&mut self.needs_commit) {
            return Ok(());
        }
        if let Err(e) = self.shared.durability.wait_submitted().await {
            // Nothing that is not stored is acknowledged: drop the pending acknowledgements.
            self.out.clear();
            return Err(Close::Violation(Violation::StorageFailed(e.to_string())));
        }
        // A newer connection may have taken the session over meanwhile: then nothing of it
        // goes out here any more (its deliveries are resent there) [MQTT-3.1.4-3].
        let attached = {
            let st = self.cell.lock();
            self.check_attached(&st)
        };
        if let Err(c) = attached {
            self.out.clear();
            return Err(c);
        }
        Ok(())
    }

    /// Handle the complete packets in `buf`; stops early (leaving the rest buffered)
    /// while a subscriber this client publishes to is over its queue limits.
    fn decode_all(&mut self, buf: &mut BytesMut) -> Result<(), Close> {
        let r = self.decode_packets(buf);
        // Whatever was accepted or acknowledged before an error counts all the same.
        self.deliver_pending();
        let acks = self.apply_pubacks();
        r.and(acks)
    }

    fn decode_packets(&mut self, buf: &mut BytesMut) -> Result<(), Close> {
        loop {
            if !self.pressure.is_empty() {
                return Ok(());
            }
            match self.decoder.decode(buf) {
                Ok(Decoded::Packet(p)) => self.on_packet(p, self.shared.clock.now())?,
                Ok(Decoded::NeedMore(_)) => return Ok(()),
                Err(e) => return Err(Close::Violation(e.into())),
            }
        }
    }

    async fn finish<S: AsyncWrite + Unpin>(mut self, io: &mut S, close: Close) -> bool {
        self.log_close(&close);
        // 5.0: tell the client why, where the server initiates the close (section 4.13).
        let code = match &close {
            Close::Violation(v) => Some(v.reason_code()),
            Close::KeepAliveTimeout => Some(ReasonCode::KeepAliveTimeout),
            Close::TakenOver(_) => Some(ReasonCode::SessionTakenOver),
            Close::Shutdown => Some(ReasonCode::ServerShuttingDown),
            Close::NotAuthorized => Some(ReasonCode::NotAuthorized),
            Close::Kicked { .. } => Some(self.shared.security.kick_reason(&self.client_id)),
            Close::Evicted => Some(ReasonCode::QuotaExceeded),
            _ => None,
        };
        // Acknowledgements already encoded go out first, then the DISCONNECT.
        if let (true, Some(rc)) = (self.version.is_v5(), code) {
            let mut d = Disconnect::with_reason(rc);
            if let Close::Violation(v) = &close {
                d.properties.reason_string = Some(v.to_string().into());
            }
            self.send(Packet::Disconnect(d));
        }
        if !self.out.is_empty() && !matches!(close, Close::Transport(_)) {
            let _ = tokio::time::timeout(Duration::from_secs(1), write_flush(io, &self.out)).await;
        }
        // The peer may still be writing; whether to wait for it before closing (see
        // [`close_politely`]). Not after its own DISCONNECT or a broken socket.
        let linger = !matches!(close, Close::Transport(_) | Close::ClientDisconnect { .. });
        self.detach(close);
        linger
    }

    /// One log event for the end of the connection, with the fields of every connection event
    /// (client id, peer address, listener, protocol version, user name).
    fn log_close(&self, close: &Close) {
        let peer = self.info.peer;
        let client_id = &*self.client_id;
        let listener = &*self.info.listener.name;
        let version = self.version;
        let username = self.info.username.as_deref().unwrap_or("");
        macro_rules! event {
            ($level:ident, $($rest:tt)+) => {
                tracing::$level!(%peer, client_id, listener, %version, username, $($rest)+)
            };
        }
        match close {
            Close::ClientDisconnect { .. } => event!(info, "client disconnected"),
            Close::Violation(v) => event!(warn, reason = %v.reason_code(), "closing connection: {v}"),
            Close::KeepAliveTimeout => event!(info, "keep-alive timeout"),
            Close::TakenOver(_) => event!(info, "session taken over by a new connection"),
            Close::Transport(why) => event!(info, "connection lost: {why}"),
            Close::Shutdown => event!(info, "closing: server shutting down"),
            Close::NotAuthorized => event!(warn, "re-authentication failed"),
            Close::Kicked { discard } => event!(info, discard, "disconnected by an administrator"),
            Close::Stalled => event!(warn, "closing connection: a packet in progress stalled"),
            Close::Evicted => event!(
                warn,
                "closing connection: the budget for partial packets (max_partial_bytes) ran out and its packet in progress was among the oldest"
            ),
        }
    }

    /// Leave the session and decide about the will ([MQTT-3.1.2-8], [MQTT-3.1.2-10]).
    fn detach(mut self, close: Close) {
        self.shared
            .counters
            .connected
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        let will = self.will.take();
        if matches!(close, Close::Shutdown) {
            // Nobody is left to receive the will; a persistent session is written
            // as disconnected now, so that its expiry runs from here after a restart.
            {
                let mut st = self.cell.lock();
                if st.conn_id != Some(self.conn_id) {
                    return;
                }
                st.conn_id = None;
                st.waker = None;
                st.attached = None;
            }
            self.shared.persist_session(&self.cell, true);
            return;
        }
        if let Close::TakenOver(t) = close {
            if let Some(w) = will {
                let expiry = self.cell.lock().expiry_interval;
                if w.delay == 0 || t.session_ended || expiry == 0 {
                    self.shared.publish_will(&w.message);
                }
            }
            return;
        }
        let publish_will = !matches!(close, Close::ClientDisconnect { with_will: false });
        let mut discard = matches!(close, Close::Kicked { discard: true });
        let now = self.shared.clock.now();
        let (expiry, generation) = {
            let mut st = self.cell.lock();
            if st.conn_id != Some(self.conn_id) {
                return;
            }
            // An administrator asked to discard the session, and the client left first.
            discard |= st.kicked.take() == Some(true);
            st.conn_id = None;
            st.waker = None;
            st.attached = None;
            st.generation += 1;
            (st.expiry_interval, st.generation)
        };
        self.cell.set_connected(false);
        if let (true, Some(w)) = (publish_will, will) {
            if w.delay == 0 || expiry == 0 {
                self.shared.publish_will(&w.message);
            } else {
                let at = now + Duration::from_secs(u64::from(w.delay.min(expiry)));
                {
                    let mut st = self.cell.lock();
                    st.pending_will = Some(w.message.clone());
                    st.pending_will_at = Some(at);
                }
                self.shared
                    .scheduler
                    .schedule(at, Due::Will, &self.cell, generation);
            }
        }
        if expiry == 0 || discard {
            self.shared.end_session(&self.cell);
        } else {
            self.shared.persist_session(&self.cell, true);
            if expiry != u32::MAX {
                let at = now + Duration::from_secs(u64::from(expiry));
                self.shared
                    .scheduler
                    .schedule(at, Due::Expiry, &self.cell, generation);
            }
        }
    }
}

/// Longest wait before a publisher slowed down for a subscriber looks at its queue again.
const ROOM_POLL: Duration = Duration::from_millis(20);

/// Wake when a slowed-for session may have room (re-checked by the caller, which
/// also polls every [`ROOM_POLL`]).
async fn wait_room(cell: Option<&SessionCell>) {
    match cell {
        // Boxed when first polled, like the commit wait: only slowed-down publishers need it.
        Some(c) => Box::pin(c.space.notified()).await,
        None => std::future::pending().await,
    }
}

/// Wait for the store's next commit. Boxed when first polled: select! creates this
/// future on every turn, and inline its state would sit in every connection's task.
async fn wait_commit(durability: &crate::durability::Persistence, seen: u64) {
    Box::pin(durability.wait_past(seen)).await
}

/// Make room for the next read, sized by how much the last reads brought (`hint`):
/// a busy connection reads up to 64 KiB at a time, an idle one keeps only a small
/// buffer (an empty buffer more than twice the size wanted is given back).
fn reserve_for_read(buf: &mut BytesMut, hint: usize) {
    if buf.is_empty() && buf.capacity() > 2 * hint.max(MIN_READ) {
        *buf = BytesMut::new();
    }
    let want = hint.clamp(MIN_READ, MAX_READ);
    if buf.capacity() - buf.len() < want / 2 {
        buf.reserve(want);
    }
}

/// Smallest and largest read sizes.
const MIN_READ: usize = 64;
const MAX_READ: usize = 64 * 1024;

/// Serve one accepted connection until it closes.
///
/// A plain function returning an `async move` block rather than an `async fn`: an
/// `async fn` keeps its arguments twice in its future (as passed, and as locals),
/// the block captures them once.
#[allow(
    clippy::manual_async_fn,
    reason = "an async fn would keep its arguments twice in every connection's task"
)]
pub(crate) fn serve<S>(
    mut io: S,
    peer: SocketAddr,
    shared: Arc<Core>,
    origin: crate::security::Origin,
) -> impl std::future::Future<Output = ()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    async move {
        // Buffers start empty and grow on demand: an idle connection holds no buffer space.
        let mut buf = BytesMut::new();
        // This future lives in the task of every connection, idle ones included, so it is
        // kept small: the phases before and after `drive` are boxed (their timers and the
        // authentication exchange need room only for a moment), and so is the `Conn`
        // (inline, the compiler keeps two copies of it: the phase's result and the local).
        let opened = Box::pin(async {
            let connect = connect::read_connect(&mut io, &mut buf, &shared).await?;
            connect::accept(&mut io, &mut buf, connect, &shared, peer, &origin)
                .await
                .map(Box::new)
        })
        .await;
        let mut conn = match opened {
            Ok(c) => c,
            Err(r) => {
                let answered = matches!(r, connect::Refused::Answered(..));
                log_refused(peer, &origin, r);
                return Box::pin(close_politely(&mut io, &mut buf, answered)).await;
            }
        };
        let close = conn.drive(&mut io, &mut buf).await;
        // What is left unread is of no use now: a buffer that a large packet grew (an evicted
        // or stalled one) is given back before the last writes, not after.
        if buf.capacity() > MAX_READ {
            buf = BytesMut::new();
        }
        let linger = Box::pin((*conn).finish(&mut io, close)).await;
        Box::pin(close_politely(&mut io, &mut buf, linger)).await;
    }
}

/// Longest time a closing connection keeps reading (and discarding) what its peer still sends.
pub(crate) const LINGER: Duration = Duration::from_secs(2);

/// Close after the last packet (a refusing CONNACK, a DISCONNECT with its reason code) has
/// been written: shut the write side down, then, with `linger`, read and discard whatever the
/// peer still sends until it closes too, for at most [`LINGER`].
///
/// Closing a socket with unread input makes the kernel answer with a reset, which can destroy
/// the last packet before the peer reads it, and a peer that is still writing (a PUBREL for an
/// earlier PUBREC, say) would see a broken pipe instead of the reason code. Reading uses `buf`
/// (cleared before each read, and replaced by a small one if a large packet had grown it), and
/// a peer that never stops writing holds the socket for [`LINGER`] at most.
pub(crate) async fn close_politely<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
    buf: &mut BytesMut,
    linger: bool,
) {
    let _ = tokio::time::timeout(Duration::from_secs(1), io.shutdown()).await;
    if !linger {
        return;
    }
    let deadline = tokio::time::Instant::now() + LINGER;
    // A buffer that a large packet made large is given back first: thousands of closing
    // connections (an attack cut short) must not keep their buffers while they linger.
    if buf.capacity() > 4 * MIN_LINGER_READ {
        *buf = BytesMut::new();
    }
    if buf.capacity() < MIN_LINGER_READ {
        buf.reserve(MIN_LINGER_READ);
    }
    loop {
        buf.clear();
        match tokio::time::timeout_at(deadline, io.read_buf(buf)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => return,
        }
    }
}

/// Read size while lingering.
const MIN_LINGER_READ: usize = 4096;

/// Write and flush: TLS and WebSocket streams hold bytes back until flushed.
pub(crate) async fn write_flush<S: AsyncWrite + Unpin>(io: &mut S, data: &[u8]) -> std::io::Result<()> {
    io.write_all(data).await?;
    io.flush().await
}

fn log_refused(peer: SocketAddr, origin: &crate::security::Origin, r: connect::Refused) {
    let listener = &*origin.policy.name;
    match r {
        connect::Refused::Silent(why) => {
            tracing::info!(%peer, listener, "connection closed before CONNACK: {why}")
        }
        connect::Refused::Answered(rc, why) => {
            tracing::info!(%peer, listener, reason = %rc, "connection refused: {why}")
        }
    }
}
