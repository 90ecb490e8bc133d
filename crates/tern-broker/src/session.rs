//! Sessions: the state that outlives a connection (subscriptions, queued and
//! in-flight messages, QoS 2 packet ids) and the registry that finds them by
//! client identifier.
//!
//! A [`SessionCell`] is shared between the registry, the router (for delivery)
//! and the connection attached to it, if any. Lock order: router, then
//! retained store, then a session; a session lock is never held across an
//! `.await` or while taking another lock.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tern_proto::{ProtocolVersion, QoS};
use tokio::sync::Notify;

use crate::clock::Clock;
use crate::message::Outgoing;

/// Where a QoS 1/2 delivery to the client stands (the window of the sans-IO session).
pub use tern_proto::session::Stage as InflightState;

/// The protocol state of a session that outlives its connections: the delivery window with
/// its packet identifiers, incoming QoS 2 identifiers, subscriptions.
pub(crate) type Protocol = tern_proto::session::server::ServerState<Outgoing>;

/// The connection attached to a session, as listed by the broker's admin API.
#[derive(Debug)]
pub(crate) struct Attached {
    /// The client's address.
    pub peer: std::net::SocketAddr,
    /// The authenticated user name, if any (own bytes, not a slice of the CONNECT).
    pub username: Option<tern_proto::ByteString>,
    /// The listener it came through.
    pub listener: Arc<crate::security::ListenerPolicy>,
    /// The keep-alive in force, in seconds.
    pub keep_alive: u16,
    /// When it connected, in milliseconds since the Unix epoch.
    pub connected_at_ms: u64,
}

/// Why a connection must stop using a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Takeover {
    /// The connection that was replaced.
    pub old_conn: u64,
    /// Whether the new connection ends the old session (Clean Start).
    pub session_ended: bool,
}

/// The mutable part of a session.
#[derive(Debug)]
pub(crate) struct SessionState {
    /// The connection currently attached, if any.
    pub conn_id: Option<u64>,
    /// Incremented on every attach and detach; timers check it before acting.
    pub generation: u64,
    pub version: ProtocolVersion,
    /// The in-flight window, incoming QoS 2 identifiers and subscriptions (full filter,
    /// with the `$share/g/` prefix, → options and subscription identifier).
    pub proto: Protocol,
    /// Messages waiting for the in-flight window or for the client to come back.
    pub queue: VecDeque<Outgoing>,
    /// The SUBSCRIBEs whose matching retained messages have not all entered the queue yet,
    /// oldest first: they are moved into it as it drains (`Core::stream_retained`), so that a
    /// filter matching more retained messages than the queue holds gets every one of them
    /// under flow control instead of losing the rest to the queue's limits. A cursor each,
    /// whatever the number of messages; allocated only while streaming.
    #[allow(
        clippy::box_collection,
        reason = "one pointer in every session; the deque only while streaming"
    )]
    pub retained: Option<Box<VecDeque<RetainedCursor>>>,
    /// Queued messages kept on disk only, after those in `queue` (see [`Spill`]). Allocated
    /// only while there are some.
    pub spill: Option<Box<Spill>>,
    /// Session Expiry Interval in seconds (`u32::MAX`: never).
    pub expiry_interval: u32,
    /// Messages dropped because the queue was full.
    pub dropped: u64,
    /// Payload bytes in `queue`.
    pub queued_bytes: usize,
    /// Set when a newer connection took this session over.
    pub takeover: Option<Takeover>,
    /// The session has ended; cells still held by someone must not be used.
    pub ended: bool,
    /// Wakes the attached connection.
    pub waker: Option<Arc<Notify>>,
    /// Who the attached connection is (`None` while offline).
    pub attached: Option<Arc<Attached>>,
    /// Set by an administrator's disconnect: the attached connection closes (5.0 DISCONNECT
    /// 0x98 Administrative action); `true` also ends the session.
    pub kicked: Option<bool>,
    /// The connection (its id) whose will another broker published (a cluster took this one
    /// for gone, [`crate::Admin::will_published_elsewhere`]): it closes, and its will is not
    /// published again.
    pub will_gone: Option<u64>,
    /// A will waiting for its Will Delay Interval (v5 section 3.1.3.2.2).
    pub pending_will: Option<Arc<crate::message::Message>>,
    /// When the pending will is due.
    pub pending_will_at: Option<std::time::Instant>,
    /// Whether the session is kept in the store (persistence on and expiry > 0).
    pub persistent: bool,
    /// Taken in from another broker ([`crate::Core`]'s `take_in`) whose rest has not come
    /// yet (or never came): it may lack messages, so how far back what it holds goes is not
    /// known (`Held::Unknown`).
    pub arriving: bool,
    /// Next sequence number for a stored message (the store keeps a session's queue in
    /// this order; [`FIRST_SEQ`], then up).
    pub next_seq: u64,
    /// Messages queued for the client so far (wrapping): a backplane tells by it which
    /// sessions got any since it last looked ([`crate::Admin::held_by_connected`]).
    pub queued_total: u64,
    /// Since when the queue is over its limits (publishers are being slowed).
    pub full_since: Option<std::time::Instant>,
    /// Limits of this session's queue in place of `max_queued_messages` /
    /// `max_queued_bytes` and the backpressure timeout (a bridge's outbox); kept while the
    /// broker runs.
    pub limits: Option<Box<QueueLimits>>,
}

/// A session's own queue limits ([`crate::Internal::set_queue_limits`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueLimits {
    /// Most messages queued (in memory, while its client is connected).
    pub max_messages: usize,
    /// Most payload bytes queued.
    pub max_bytes: usize,
    /// What a message that finds the queue full does.
    pub when_full: WhenFull,
}

/// What a message does that finds a session's queue full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhenFull {
    /// Its publisher waits (no PUBACK, its socket not read) until the queue is down to half,
    /// however long that takes; QoS 0 messages are dropped unless `backpressure_qos0`.
    Block,
    /// The oldest queued message is dropped (counted) to make room.
    DropOldest,
}

impl SessionState {
    /// A newer connection (here or on another broker) replaces the attached one: that one is
    /// told it was taken over (`session_ended`: the session ends with it) and is to be woken;
    /// the session has no connection now.
    pub fn take_over(&mut self, session_ended: bool) -> Option<Arc<Notify>> {
        let waker = self.conn_id.and_then(|old_conn| {
            self.takeover = Some(Takeover {
                old_conn,
                session_ended,
            });
            self.waker.take()
        });
        self.conn_id = None;
        waker
    }

    /// The queue's limits: the session's own, or the broker's; `None` for the broker's
    /// backpressure policy.
    fn queue_limits(&self, cfg: &crate::Config) -> (usize, usize, Option<WhenFull>) {
        match self.limits.as_deref() {
            Some(l) => (l.max_messages, l.max_bytes, Some(l.when_full)),
            None => (cfg.max_queued_messages, cfg.max_queued_bytes, None),
        }
    }

    /// Whether its client took nothing for `backpressure_timeout_ms` while its queue was
    /// full (a session that blocks, `own`, never is): nobody waits for it any more.
    fn stalled(&self, own: Option<WhenFull>, cfg: &crate::Config, clock: &Clock) -> bool {
        own != Some(WhenFull::Block)
            && self
                .full_since
                .is_some_and(|t| clock.now().saturating_duration_since(t) >= cfg.backpressure_timeout())
    }
}

/// The store number of a new session's first message. The numbers below are room for
/// messages put in front of its queue later ([`SessionState::numbers_between`]: a handout
/// its claimant gave up goes back to the front) that must come back in that order when the
/// broker restarts from its store, which queues a session's messages by number.
pub(crate) const FIRST_SEQ: u64 = 1 << 32;

/// Messages queued for a persistent session that are on disk and not in memory: while its
/// client is away and its queue is at its memory limits (`max_queued_messages`,
/// `max_queued_bytes`), further QoS 1/2 messages for it are only written to the store (as
/// every queued message of a persistent session is), up to `max_offline_messages` /
/// `max_offline_bytes`. Once some are on disk, every later QoS 1/2 message goes there too
/// (their order is kept), until the queue has drained them all: `Core::refill` reads them
/// back, a batch at a time, as the queue drains.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Spill {
    /// How many.
    pub count: u64,
    /// Their payload bytes.
    pub bytes: u64,
    /// Each has a sequence number above this one (the queue's last, when the spill began or
    /// was last read from).
    pub after: u64,
    /// The store ticket of the last one kept (0: all were durable at start-up).
    pub ticket: u64,
}

impl Spill {
    /// Whether one more message of `size` bytes may wait on disk: within
    /// `max_offline_messages`, `max_offline_bytes` and `max_store_bytes`.
    pub fn has_room(
        &self,
        size: u64,
        cfg: &crate::Config,
        durability: &crate::durability::Persistence,
    ) -> bool {
        self.count < cfg.max_offline_messages
            && self.bytes + size <= cfg.max_offline_bytes
            && durability.disk_bytes() < cfg.max_store_bytes
    }
}

/// Where a SUBSCRIBE is in sending the retained messages its filter matches (see
/// [`SessionState::retained`]): the index is read in topic order, a batch at a time.
#[derive(Debug)]
pub(crate) struct RetainedCursor {
    /// The filter, without a `$share/` prefix (valid).
    pub filter: Box<str>,
    /// The last topic taken; the next batch starts after it.
    pub after: Option<Box<str>>,
    /// The index's last version when the SUBSCRIBE was made: an entry with a later one was
    /// retained since, and reached the subscription as a live message.
    pub up_to: u64,
    /// The subscription's maximum QoS.
    pub qos: QoS,
    pub sub_id: Option<u32>,
}

/// A session shared between the registry, the router and its connection.
#[derive(Debug)]
pub(crate) struct SessionCell {
    pub client_id: Arc<str>,
    /// Creation order: sessions are locked in this order when a batch of deliveries is
    /// queued, so that a run does not depend on memory addresses (32 bits: it sits in the
    /// padding beside the flags below; after 2^32 sessions it wraps, which only changes that
    /// order).
    pub order: u32,
    state: Mutex<SessionState>,
    /// Notified when the queue drains below half its limits (publishers waiting on it).
    pub space: Notify,
    connected: AtomicBool,
    /// Whether retained messages are waiting to enter the queue (a hint read without the
    /// lock on every turn of the connection's loop).
    streaming: AtomicBool,
    /// Whether the queue is at half its limits or beyond, readable without the lock: a
    /// publisher batching its deliveries queues them at once when it is, so that
    /// backpressure stops it before the 2x margin runs out.
    near_full: AtomicBool,
}

impl SessionCell {
    pub fn new(client_id: Arc<str>, version: ProtocolVersion, receive_maximum: u16) -> SessionCell {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        SessionCell {
            client_id,
            order: NEXT.fetch_add(1, Ordering::Relaxed),
            state: Mutex::new(SessionState {
                conn_id: None,
                generation: 0,
                version,
                proto: Protocol::new(receive_maximum),
                queue: VecDeque::new(),
                retained: None,
                spill: None,
                expiry_interval: 0,
                dropped: 0,
                queued_bytes: 0,
                takeover: None,
                ended: false,
                waker: None,
                attached: None,
                kicked: None,
                will_gone: None,
                pending_will: None,
                pending_will_at: None,
                persistent: false,
                arriving: false,
                next_seq: FIRST_SEQ,
                queued_total: 0,
                full_since: None,
                limits: None,
            }),
            connected: AtomicBool::new(false),
            streaming: AtomicBool::new(false),
            space: Notify::new(),
            near_full: AtomicBool::new(false),
        }
    }

    /// Lock the state. A poisoned lock (a panic elsewhere) is recovered: the
    /// state is plain data whose invariants each method re-establishes.
    pub fn lock(&self) -> MutexGuard<'_, SessionState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    pub fn set_connected(&self, v: bool) {
        self.connected.store(v, Ordering::Relaxed)
    }

    /// Whether retained messages, or messages kept on disk, are waiting to enter the queue
    /// (a hint, read without the lock).
    pub fn is_streaming(&self) -> bool {
        self.streaming.load(Ordering::Relaxed)
    }

    /// Refresh [`SessionCell::is_streaming`] from the locked state.
    pub fn note_streaming(&self, st: &SessionState) {
        let streaming = st.retained.as_ref().is_some_and(|r| !r.is_empty()) || st.spill.is_some();
        self.streaming.store(streaming, Ordering::Relaxed)
    }

    /// Whether the queue was at half its limits or beyond when last looked at (a
    /// hint, read without the lock).
    pub fn is_near_full(&self) -> bool {
        self.near_full.load(Ordering::Relaxed)
    }

    /// Refresh the [`SessionCell::is_near_full`] hint from the locked state.
    pub fn note_fullness(&self, st: &SessionState, cfg: &crate::Config) {
        let (max_messages, max_bytes, _) = st.queue_limits(cfg);
        let near =
            st.full_since.is_some() || st.queue.len() >= max_messages / 2 || st.queued_bytes >= max_bytes / 2;
        self.near_full.store(near, Ordering::Relaxed)
    }

    /// Queue a message for this session.
    ///
    /// Drop policy: QoS 0 messages for an offline session are not queued unless
    /// `queue_qos0_offline`; a message that would take the queue beyond
    /// `max_queued_messages` or `max_queued_bytes` is queued with
    /// [`Enqueued::Pressure`] while the client is connected and draining (up to
    /// twice the limits), and otherwise dropped and counted in `dropped` (the
    /// newest is dropped, so what was queued first is delivered first).
    pub fn enqueue(&self, out: Outgoing, q: &Queueing<'_>) -> Enqueued {
        match self.enqueue_all(std::iter::once(out), q) {
            Offered { over_limit: 1.., .. } => Enqueued::OverLimit,
            Offered { dropped: 1.., .. } => Enqueued::Dropped,
            Offered { pressure: true, .. } => Enqueued::Pressure,
            _ => Enqueued::Queued,
        }
    }

    /// Queue several messages under one lock, in order.
    pub fn enqueue_all(&self, outs: impl Iterator<Item = Outgoing>, q: &Queueing<'_>) -> Offered {
        let cfg = q.config;
        let mut st = self.lock();
        let before = st.queued_bytes;
        let mut room = q.budget.room();
        let mut refused = 0;
        // Wake the connection only when the queue was empty: a connection leaves
        // messages queued only while it has reason to come back to them on its own
        // (a full in-flight window, a full write buffer, a store commit to wait for).
        // Waking it for every message of a fan-out made it spin on a full window.
        let was_empty = st.queue.is_empty();
        let mut offered = Offered::default();
        for out in outs {
            match self.enqueue_locked(&mut st, out, q, &mut room) {
                Enqueued::Dropped => offered.dropped += 1,
                Enqueued::OverLimit => {
                    offered.dropped += 1;
                    offered.over_limit += 1;
                }
                Enqueued::OverBudget => {
                    offered.dropped += 1;
                    refused += 1;
                }
                Enqueued::Pressure => offered.pressure = true,
                Enqueued::Queued => {}
            }
        }
        q.budget.grew(st.queued_bytes.saturating_sub(before));
        // Dropping the oldest can leave less queued than before.
        q.budget.shrank(before.saturating_sub(st.queued_bytes));
        q.budget.refused(refused, &self.client_id);
        self.note_fullness(&st, cfg);
        let waker = if was_empty && !st.queue.is_empty() {
            st.waker.clone()
        } else {
            None
        };
        drop(st);
        if let Some(w) = waker {
            w.notify_one();
        }
        offered
    }

    /// Queue one message; `room` is what is left of the broker-wide budget.
    fn enqueue_locked(
        &self,
        st: &mut SessionState,
        mut out: Outgoing,
        q: &Queueing<'_>,
        room: &mut usize,
    ) -> Enqueued {
        let (cfg, clock) = (q.config, q.clock);
        if st.ended {
            return Enqueued::Dropped;
        }
        if st.conn_id.is_none() && out.qos == QoS::AtMostOnce && !cfg.queue_qos0_offline {
            return Enqueued::Dropped;
        }
        let size = out.msg.payload.len();
        // A persistent session whose client is away keeps at most its memory limits in
        // memory, and only while all queues together are within `offline_cache_bytes`; the
        // rest of its QoS 1/2 messages only on disk (and, once some are there, all later ones
        // too, to keep their order). `room` is what the broker-wide budget has left, so the
        // bytes queued in memory now are its limit minus `room`.
        if out.qos != QoS::AtMostOnce
            && st.persistent
            && q.durability.reads_back()
            && (st.spill.is_some()
                || (st.conn_id.is_none()
                    && (st.queue.len() >= cfg.max_queued_messages
                        || st.queued_bytes + size > cfg.max_queued_bytes
                        || cfg.max_queued_bytes_total.saturating_sub(*room) + size
                            > cfg.offline_cache_bytes)))
        {
            return self.spill_locked(st, out, q);
        }
        // The broker-wide budget stops what piles up for clients that are away; a connected
        // client's queue drains and stays under its own limits (and backpressure), so live
        // traffic is never cut because offline sessions filled the budget.
        if size > *room && st.conn_id.is_none() {
            st.dropped += 1;
            return Enqueued::OverBudget;
        }
        let mut pressure = false;
        let (max_messages, max_bytes, own) = st.queue_limits(cfg);
        if own == Some(WhenFull::DropOldest) && st.conn_id.is_some() {
            // Make room by dropping the oldest (their store records too), then queue.
            while !st.queue.is_empty()
                && (st.queue.len() >= max_messages || st.queued_bytes + size > max_bytes)
            {
                if let Some(gone) = st.pop_queued() {
                    q.durability
                        .forget_delivery(st.persistent, &self.client_id, gone.seq);
                    *room = room.saturating_add(gone.msg.payload.len());
                }
                st.dropped += 1;
                if st.dropped.is_power_of_two() {
                    tracing::warn!(client_id = %self.client_id, dropped = st.dropped, "session queue full: dropping the oldest messages");
                }
            }
        } else if st.queue.len() >= max_messages || st.queued_bytes + size > max_bytes {
            // To a connected client that is draining: queue beyond the limit (up to twice
            // it) and tell the publisher to slow down, rather than drop what QoS 1/2
            // publishers were told is accepted (and, with backpressure_qos0, what QoS 0
            // publishers send faster than the subscriber reads). A client that does not
            // drain for backpressure_timeout_ms is treated as stalled: its messages are
            // dropped and nobody waits for it.
            // A session with `WhenFull::Block` waits as long as it takes.
            let within = (st.queue.len() < 2 * max_messages && st.queued_bytes + size <= 2 * max_bytes)
                || (q.stored_elsewhere && out.qos != QoS::AtMostOnce && size <= *room);
            let patient = (out.qos != QoS::AtMostOnce || cfg.backpressure_qos0)
                && st.conn_id.is_some()
                && within
                && (own == Some(WhenFull::Block)
                    || st.full_since.is_none_or(|t| {
                        clock.now().saturating_duration_since(t) < cfg.backpressure_timeout()
                    }));
            if !patient {
                st.dropped += 1;
                if st.dropped.is_power_of_two() {
                    tracing::warn!(client_id = %self.client_id, dropped = st.dropped, "session queue full: dropping messages");
                }
                return Enqueued::Dropped;
            }
            st.full_since.get_or_insert_with(|| clock.now());
            pressure = true;
        }
        st.queued_bytes += size;
        *room = room.saturating_sub(size);
        q.durability.put_queued(st, &self.client_id, &mut out);
        st.queue.push_back(out);
        st.queued_total = st.queued_total.wrapping_add(1);
        if pressure {
            Enqueued::Pressure
        } else {
            Enqueued::Queued
        }
    }

    /// Keep `out` on disk only (see [`Spill`]), within the offline limits.
    fn spill_locked(&self, st: &mut SessionState, mut out: Outgoing, q: &Queueing<'_>) -> Enqueued {
        if out.settle.is_some() && st.conn_id.is_some() {
            // A message a backplane brought for a shared subscription waits for its member's
            // acknowledgement in memory; on disk it would be given back (its settlement
            // dropped) and come again. Given back now, for another member. For a member that
            // is away (the source kept it for it), settled and kept on disk below.
            return Enqueued::Dropped;
        }
        let cfg = q.config;
        let size = out.msg.payload.len() as u64;
        let spill = st.spill.as_deref().copied().unwrap_or_default();
        if !spill.has_room(size, cfg, q.durability) {
            st.dropped += 1;
            if st.dropped.is_power_of_two() {
                tracing::warn!(
                    client_id = %self.client_id,
                    dropped = st.dropped,
                    on_disk = spill.count,
                    "offline session: max_offline_messages, max_offline_bytes or max_store_bytes reached; dropping messages"
                );
            }
            return Enqueued::OverLimit;
        }
        if let Some(s) = out.settle.take() {
            s.done();
        }
        q.durability.put_queued(st, &self.client_id, &mut out);
        let after = match st.spill.as_deref() {
            Some(s) => s.after,
            None => out.seq.saturating_sub(1),
        };
        st.spill = Some(Box::new(Spill {
            count: spill.count + 1,
            bytes: spill.bytes + size,
            after,
            ticket: out.commit_seq,
        }));
        self.note_streaming(st);
        Enqueued::Queued
    }

    /// Whether a publisher slowed down for this session may go on: its queue is
    /// below half the limits, or it is gone, offline or stalled.
    pub fn has_room(&self, cfg: &crate::Config, clock: &Clock) -> bool {
        let st = self.lock();
        let (max_messages, max_bytes, own) = st.queue_limits(cfg);
        st.ended
            || st.conn_id.is_none()
            || st.full_since.is_none()
            || st.stalled(own, cfg, clock)
            || (st.queue.len() <= max_messages / 2 && st.queued_bytes <= max_bytes / 2)
    }

    /// How many more QoS 0 messages of the size of those queued this session takes before
    /// new ones for it are dropped (twice its queue limits, as [`SessionCell::enqueue`]
    /// queues for a client that drains), and whether its queue is at half its limits or
    /// below, under one lock ([`crate::Room`]).
    pub fn room(&self, cfg: &crate::Config, clock: &Clock) -> crate::Room {
        let none = crate::Room {
            left: None,
            at_half: true,
        };
        if !cfg.backpressure_qos0 {
            return none;
        }
        let st = self.lock();
        let (max_messages, max_bytes, own) = st.queue_limits(cfg);
        if st.ended
            || st.conn_id.is_none()
            || own == Some(WhenFull::DropOldest)
            || st.stalled(own, cfg, clock)
        {
            return none;
        }
        let by_count = max_messages.saturating_mul(2).saturating_sub(st.queue.len());
        let size = st.queued_bytes.checked_div(st.queue.len()).unwrap_or(1).max(1);
        let by_bytes = max_bytes.saturating_mul(2).saturating_sub(st.queued_bytes) / size;
        crate::Room {
            left: Some(by_count.min(by_bytes)),
            at_half: st.queue.len() <= max_messages / 2 && st.queued_bytes <= max_bytes / 2,
        }
    }
}

/// What happened to a message offered to a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Enqueued {
    /// Queued.
    Queued,
    /// Queued beyond the limits: the publisher should wait for [`SessionCell::has_room`].
    Pressure,
    /// Dropped (counted).
    Dropped,
    /// Dropped (counted): the session's client is away and the session keeps no more
    /// (`max_offline_messages`, `max_offline_bytes`, `max_store_bytes`).
    OverLimit,
    /// Dropped: the broker-wide budget for queued bytes is exhausted (counted).
    OverBudget,
}

/// What became of messages offered to a session ([`SessionCell::enqueue_all`]).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Offered {
    /// Some went beyond the limits: the publisher should wait for [`SessionCell::has_room`].
    pub pressure: bool,
    /// How many were dropped (counted).
    pub dropped: u64,
    /// How many of those because the session keeps no more while its client is away.
    pub over_limit: u64,
}

/// What queueing a message for a session depends on.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Queueing<'a> {
    pub config: &'a crate::Config,
    pub durability: &'a crate::durability::Persistence,
    pub clock: &'a Clock,
    /// Bytes queued for all sessions together.
    pub budget: &'a crate::budget::QueueBudget,
    /// The messages come from a backplane that stored them (another node's QoS 1/2): their
    /// publishers cannot be slowed down from here, so a connected subscriber that is slow
    /// (not stalled) gets them queued beyond twice its limits, within the broker-wide budget,
    /// rather than dropped.
    pub stored_elsewhere: bool,
}

impl SessionState {
    /// Give back the memory the queue and the protocol state grew to while a client was
    /// connected (called when it leaves: thousands of sessions that are away would each keep
    /// a window's and a queue's worth of capacity).
    pub fn shrink(&mut self) {
        self.queue.shrink_to_fit();
        self.proto.shrink();
    }

    /// Store numbers, ascending, for `n` messages put into the queue at `at`, before
    /// others: below those of the messages after them (on disk too), above those before
    /// them, and none of those in flight (which a restart puts back in the window, apart
    /// from the queue), so that a restart from the store, which queues by number, keeps this
    /// order. `None`: nothing stored comes after `at` (they are numbered as usual, from
    /// `next_seq`), or there is no room between.
    pub fn numbers_between(&self, at: usize, n: usize) -> Option<Vec<u64>> {
        let above = self
            .queue
            .iter()
            .skip(at)
            .map(|o| o.seq)
            .filter(|&s| s != 0)
            .chain(self.spill.as_deref().map(|s| s.after.saturating_add(1)))
            .min()?;
        let below = self
            .queue
            .iter()
            .take(at)
            .map(|o| o.seq)
            .filter(|&s| s < above)
            .max()
            .unwrap_or(0);
        let taken: std::collections::HashSet<u64> = self
            .proto
            .inflight()
            .map(|f| f.message.seq)
            .filter(|&s| s > below && s < above)
            .collect();
        let mut numbers: Vec<u64> = (below + 1..above)
            .rev()
            .filter(|s| !taken.contains(s))
            .take(n)
            .collect();
        if numbers.len() < n {
            return None;
        }
        numbers.reverse();
        Some(numbers)
    }

    /// Whether anything stored comes after `at` in the queue (or on disk).
    pub fn stored_after(&self, at: usize) -> bool {
        self.spill.is_some() || self.queue.iter().skip(at).any(|o| o.seq != 0)
    }

    /// Take the next queued message.
    pub fn pop_queued(&mut self) -> Option<Outgoing> {
        let out = self.queue.pop_front()?;
        self.queued_bytes = self.queued_bytes.saturating_sub(out.msg.payload.len());
        if self.queue.is_empty() {
            self.full_since = None;
        }
        Some(out)
    }
}

/// Client identifier → session.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    /// Fx hashing: no per-process random seed, so iteration order depends only on what the
    /// map holds (reproducible simulations), and cheaper than SipHash for these keys.
    map: Mutex<rustc_hash::FxHashMap<Arc<str>, Arc<SessionCell>>>,
}

impl Registry {
    fn lock(&self) -> MutexGuard<'_, rustc_hash::FxHashMap<Arc<str>, Arc<SessionCell>>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every session (a snapshot: the registry is not locked while the caller uses them).
    pub fn all(&self) -> Vec<Arc<SessionCell>> {
        self.lock().values().cloned().collect()
    }

    /// Number of sessions.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn get(&self, client_id: &str) -> Option<Arc<SessionCell>> {
        self.lock().get(client_id).cloned()
    }

    pub fn insert(&self, cell: Arc<SessionCell>) -> Option<Arc<SessionCell>> {
        self.lock().insert(cell.client_id.clone(), cell)
    }

    /// Remove `cell` if it is still the registered session for its client id.
    pub fn remove_if_same(&self, cell: &Arc<SessionCell>) -> bool {
        let mut map = self.lock();
        match map.get(&cell.client_id) {
            Some(c) if Arc::ptr_eq(c, cell) => {
                map.remove(&cell.client_id);
                true
            }
            _ => false,
        }
    }
}
