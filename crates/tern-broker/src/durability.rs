//! The broker's seam to durable storage: the [`Durability`] trait, the typed [`Change`]s the
//! broker submits to it, and what an implementation hands back at start ([`Stored`]).
//!
//! The embedded redb store (`store/`) is the first implementation; a cluster backend writes the
//! same changes elsewhere. The broker submits each change while it holds the lock that orders it
//! (the session lock), so an implementation sees the changes of one session in the order they
//! happened, and makes them durable in the order of their [`Ticket`]s.
//!
//! ### The contract
//! - *Order*: a change is durable only when every change with a smaller ticket is.
//! - *Groups*: the changes submitted between [`Durability::group`] and
//!   [`Durability::end_group`] become durable together or not at all (a QoS 2 packet id and the
//!   copies routed for it).
//! - *Acknowledge after durability*: the broker sends a PUBACK/PUBREC, or delivers a stored
//!   message, only once [`Durability::durable`] has reached the ticket of the change behind it.
//! - *Failure*: once an implementation cannot keep data it says so ([`Durability::error`]) for
//!   good; the broker then refuses QoS 1/2 messages rather than acknowledge what is not kept.
//!
//! Inside the crate, `Persistence` is what the protocol handling calls: it decides which
//! sessions are kept (persistent ones) and is a no-op when the broker keeps nothing.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tern_proto::{PacketId, ProtocolVersion, QoS, SubscriptionOptions};

pub use crate::message::Message;
pub use crate::session::InflightState;
pub use crate::store::StoreError;

use crate::message::Outgoing;
use crate::session::SessionState;

/// The position of a change in the order of submission; durability advances in ticket order.
pub type Ticket = u64;

/// How far durability has got, and a way to wait for it to go further.
///
/// Waiters are woken in the order they started waiting (a tokio `Notify`), with no random
/// choice anywhere, so that a simulated run replays exactly (tokio's `watch` channel spreads
/// its receivers over several notifiers at random).
#[derive(Debug, Default)]
pub struct Progress {
    ticket: AtomicU64,
    failed: std::sync::atomic::AtomicBool,
    changed: tokio::sync::Notify,
}

impl Progress {
    /// Every change up to this ticket is durable.
    pub fn get(&self) -> Ticket {
        self.ticket.load(Ordering::Acquire)
    }

    /// Everything up to `ticket` is durable now.
    pub fn advance(&self, ticket: Ticket) {
        self.ticket.fetch_max(ticket, Ordering::AcqRel);
        self.changed.notify_waiters();
    }

    /// Nothing more will become durable: wake every waiter (they find the error).
    pub fn fail(&self) {
        self.failed.store(true, Ordering::Release);
        self.changed.notify_waiters();
    }

    /// Whether [`Progress::fail`] was called.
    pub fn has_failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    /// The next [`Progress::advance`] or [`Progress::fail`], whether or not it moves the
    /// progress (a backplane that finishes tickets out of order advances at each, see
    /// [`crate::backplane::Backplane::session_done`]). Enable it before looking at what it
    /// guards, so that a change in between is not missed.
    pub fn next_change(&self) -> tokio::sync::futures::Notified<'_> {
        self.changed.notified()
    }

    /// Wait until durability goes beyond `seen` (or fails).
    pub async fn wait_past(&self, seen: Ticket) {
        loop {
            let changed = self.changed.notified();
            let mut changed = std::pin::pin!(changed);
            // Registered before the check: an advance in between is not missed.
            changed.as_mut().enable();
            if self.get() > seen || self.has_failed() {
                return;
            }
            changed.await;
        }
    }
}

/// Changes that must be durable together (see [`Durability::group`]).
#[derive(Debug)]
#[must_use]
pub struct Group(Ticket);

impl Group {
    /// A group whose first change will get the ticket `first`.
    pub fn starting_at(first: Ticket) -> Group {
        Group(first)
    }

    /// The ticket of its first change.
    pub fn first(&self) -> Ticket {
        self.0
    }
}

/// One change to the durable state of the broker.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Change {
    /// Keep the retained message of its topic (replacing the one before).
    PutRetained(Arc<Message>),
    /// Forget the retained message of a topic.
    DelRetained(String),
    /// Keep (or replace) the durable part of a client's session.
    PutSession(Arc<str>, SessionSnapshot),
    /// Forget a session with its deliveries and QoS 2 packet ids.
    DelSession(Arc<str>),
    /// Keep (or replace, at a later stage) a delivery of a client's session.
    PutDelivery(Arc<str>, StoredDelivery),
    /// Forget a client's delivery by its sequence number (finished, expired or dropped).
    DelDelivery(Arc<str>, u64),
    /// Keep an incoming QoS 2 packet id awaiting PUBREL.
    PutQos2(Arc<str>, u16),
    /// Forget an incoming QoS 2 packet id (PUBREL came).
    DelQos2(Arc<str>, u16),
}

/// What is kept of a session between connections.
#[derive(Debug, Clone)]
pub struct SessionSnapshot {
    /// The protocol version of its last connection.
    pub version: ProtocolVersion,
    /// Session Expiry Interval in seconds (`u32::MAX`: never).
    pub expiry_interval: u32,
    /// When the client went away, in wall-clock milliseconds since the Unix epoch; 0 while
    /// connected.
    pub disconnected_at: u64,
    /// Full filter (with `$share/GROUP/`), options and subscription identifier.
    pub subscriptions: Vec<(String, SubscriptionOptions, Option<u32>)>,
    /// A will waiting for its delay: when it is due (wall ms) and the message.
    pub pending_will: Option<(u64, Arc<Message>)>,
}

/// A message queued for a session, or sent and not yet acknowledged.
#[derive(Debug, Clone)]
pub struct StoredDelivery {
    /// Its place in the session's order (unique per session, increasing).
    pub seq: u64,
    /// `None` while queued; the stage and packet id once sent.
    pub stage: Option<(InflightState, PacketId)>,
    /// The QoS of this delivery (the lower of the message's and the subscription's).
    pub qos: QoS,
    /// RETAIN as this subscriber gets it.
    pub retain: bool,
    /// Subscription identifiers of the matching subscriptions.
    pub subscription_ids: Vec<u32>,
    /// The shared subscription (`$share/GROUP/filter`) it came through.
    pub shared: Option<Arc<str>>,
    /// The message, shared by every delivery of it.
    pub message: Arc<Message>,
    /// The message's id: the same for every session's delivery of one message, so that an
    /// implementation stores the message once.
    pub message_id: u64,
}

/// A session on its way from one broker to another (a cluster node handing a session to the
/// node its client reconnected to): its durable part, its deliveries (in flight with their
/// stage and packet id, then queued, in order) and its incoming QoS 2 packet ids.
#[derive(Debug, Clone)]
pub struct Handover {
    /// Subscriptions, expiry and protocol version (no pending will: the reconnection cancels
    /// it, v5 [MQTT-3.1.3-9]).
    pub snapshot: SessionSnapshot,
    /// In flight first (in the order they were sent), then queued.
    pub deliveries: Vec<StoredDelivery>,
    /// Incoming QoS 2 packet ids awaiting PUBREL.
    pub qos2: Vec<u16>,
}

impl Handover {
    /// The handover as [`crate::Admin::hand_over`] gives it and a claim brings it in
    /// ([`crate::backplane::Backplane::claim`]): checksummed records.
    pub fn encode(&self) -> bytes::Bytes {
        crate::store::record::handover(self, crate::Clock::system().stamp())
    }

    /// Read a handover written by [`Handover::encode`].
    pub fn decode(raw: &[u8]) -> Result<Handover, String> {
        crate::store::record::read_handover(raw, crate::Clock::system().stamp()).map_err(|e| e.to_string())
    }
}

/// What an implementation holds when the broker starts.
#[derive(Debug, Default)]
pub struct Stored {
    /// Retained messages.
    pub retained: Vec<Arc<Message>>,
    /// Sessions, by client identifier.
    pub sessions: Vec<(Arc<str>, SessionSnapshot)>,
    /// Deliveries, in order of client identifier and then sequence number; deliveries of one
    /// message share its `Arc`.
    pub deliveries: Vec<(Arc<str>, StoredDelivery)>,
    /// Incoming QoS 2 packet ids awaiting PUBREL.
    pub qos2: Vec<(Arc<str>, u16)>,
    /// Queued deliveries left on disk, by client identifier (only from an implementation that
    /// [reads back](Durability::reads_back)): `deliveries` then holds, per session, its
    /// deliveries in flight and the first queued ones, and these are read when the queue
    /// drains.
    pub spilled: Vec<(Arc<str>, Spilled)>,
    /// Retained messages left on disk (only from an implementation that
    /// [reads back](Durability::reads_back)): `retained` then holds the first ones up to the
    /// retained cache's budget, and these are read with [`Durability::read_retained`] when
    /// needed.
    pub retained_on_disk: Vec<RetainedOnDisk>,
    /// The highest message id a stored delivery refers to, those left on disk included (new
    /// messages get higher ids); 0 when only `deliveries` tell.
    pub max_message_id: u64,
}

/// A retained message kept on disk and not in memory: what the index needs of it.
#[derive(Debug, Clone)]
pub struct RetainedOnDisk {
    /// Its topic.
    pub topic: String,
    /// The QoS it was published with.
    pub qos: QoS,
    /// Payload bytes.
    pub size: usize,
    /// When its Message Expiry Interval runs out.
    pub expires_at: Option<std::time::Instant>,
}

/// Queued deliveries of one session kept on disk and not in memory (see
/// [`Durability::read_queued`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Spilled {
    /// How many.
    pub count: u64,
    /// Their payload bytes (as stored).
    pub bytes: u64,
    /// Every one has a sequence number above this one.
    pub after: u64,
    /// The highest sequence number among them.
    pub last: u64,
}

/// Durable storage for the broker's state. See the module documentation for the contract.
pub trait Durability: Send + Sync + std::fmt::Debug {
    /// Queue `change`; returns its ticket.
    fn submit(&self, change: Change) -> Ticket;

    /// Open a group: what is submitted until [`Durability::end_group`] becomes durable together.
    fn group(&self) -> Group;

    /// Close a group; returns the ticket to wait for.
    fn end_group(&self, group: Group) -> Ticket;

    /// The ticket of the last change submitted so far.
    fn submitted(&self) -> Ticket;

    /// How far durability has got (every change up to its ticket is durable), to read and to
    /// wait on.
    fn progress(&self) -> &Progress;

    /// Every change up to this ticket is durable.
    fn durable(&self) -> Ticket {
        self.progress().get()
    }

    /// Why the implementation can no longer keep data, once that has happened.
    fn error(&self) -> Option<StoreError>;

    /// Make everything submitted durable and release the storage (blocking; at shutdown).
    fn close(&self);

    /// Whether queued deliveries can be read back while the broker runs
    /// ([`Durability::read_queued`]): then a session that is away keeps only a window of its
    /// queue in memory, and the rest waits on disk. `false` by default.
    fn reads_back(&self) -> bool {
        false
    }

    /// Up to `max` queued (not sent) deliveries of `client` whose sequence number is above
    /// `after`, in order, from what is durable. Blocking, and short: the broker asks for a
    /// few hundred at a time as a queue drains. Needed only where
    /// [`Durability::reads_back`] is `true`.
    fn read_queued(&self, client: &str, after: u64, max: usize) -> Result<Vec<StoredDelivery>, StoreError> {
        let _ = (client, after, max);
        Err(StoreError(
            "this storage does not read queued messages back".into(),
        ))
    }

    /// The retained message of `topic`, from what is durable. Blocking and short. Needed only
    /// where [`Durability::reads_back`] is `true`.
    fn read_retained(&self, topic: &str) -> Result<Option<Arc<Message>>, StoreError> {
        let _ = topic;
        Err(StoreError(
            "this storage does not read retained messages back".into(),
        ))
    }

    /// Bytes the storage takes on disk now, as far as it knows (0: unknown). The broker
    /// stops keeping messages for sessions that are away beyond `max_store_bytes`.
    fn disk_bytes(&self) -> u64 {
        0
    }
}

/// What the protocol handling asks of durable storage, in its own terms: keep a queued message,
/// keep a delivery at a stage, forget it, keep or forget a QoS 2 packet id, group the changes
/// of one PUBLISH, and say when acknowledgements may go out. A no-op without storage; only
/// sessions kept in the store (`st.persistent`) are written.
#[derive(Debug, Clone)]
pub(crate) struct Persistence {
    store: Option<Arc<dyn Durability>>,
    /// The next message id (ids are never reused: after a restart they follow the highest
    /// stored).
    next_message_id: Arc<AtomicU64>,
}

impl Persistence {
    /// Over `store`; `None` keeps nothing. Message ids start at `first_message_id`.
    pub fn new(store: Option<Arc<dyn Durability>>, first_message_id: u64) -> Persistence {
        Persistence {
            store,
            next_message_id: Arc::new(AtomicU64::new(first_message_id.max(1))),
        }
    }

    /// Whether anything is kept at all.
    pub fn enabled(&self) -> bool {
        self.store.is_some()
    }

    /// Whether queued messages can be read back (offline queues beyond memory then stay on
    /// disk; see [`Durability::reads_back`]).
    pub fn reads_back(&self) -> bool {
        self.store.as_ref().is_some_and(|s| s.reads_back())
    }

    /// See [`Durability::read_queued`].
    pub fn read_queued(
        &self,
        client: &str,
        after: u64,
        max: usize,
    ) -> Result<Vec<StoredDelivery>, StoreError> {
        match &self.store {
            Some(s) => s.read_queued(client, after, max),
            None => Ok(Vec::new()),
        }
    }

    /// See [`Durability::read_retained`].
    pub fn read_retained(&self, topic: &str) -> Result<Option<Arc<Message>>, StoreError> {
        match &self.store {
            Some(s) => s.read_retained(topic),
            None => Ok(None),
        }
    }

    /// See [`Durability::disk_bytes`].
    pub fn disk_bytes(&self) -> u64 {
        self.store.as_ref().map_or(0, |s| s.disk_bytes())
    }

    /// Whether storing has failed (then QoS 1/2 messages must be refused).
    pub fn failed(&self) -> bool {
        self.store.as_ref().is_some_and(|s| s.error().is_some())
    }

    /// Submit a change that is not about one session's queue (retained messages, session
    /// records); `None` without storage.
    pub fn submit(&self, change: Change) -> Option<Ticket> {
        self.store.as_ref().map(|s| s.submit(change))
    }

    /// Keep a QoS 1/2 message queued for `client`'s persistent session: it gets the session's
    /// next sequence number, and the ticket its delivery must wait for (`commit_seq`).
    pub fn put_queued(&self, st: &mut SessionState, client: &Arc<str>, out: &mut Outgoing) {
        self.put_queued_numbered(st, client, out, None);
    }

    /// [`Durability::put_queued`] under the store number `seq` when given (one of
    /// [`SessionState::numbers_between`]: for a message put before others in the queue)
    /// rather than the session's next.
    pub fn put_queued_numbered(
        &self,
        st: &mut SessionState,
        client: &Arc<str>,
        out: &mut Outgoing,
        seq: Option<u64>,
    ) {
        if let (Some(store), true, true) = (&self.store, st.persistent, out.qos != QoS::AtMostOnce) {
            out.seq = seq.unwrap_or_else(|| {
                st.next_seq += 1;
                st.next_seq - 1
            });
            out.commit_seq = store.submit(self.delivery(client, out, None));
        }
    }

    /// The change that keeps `out` for `client` at `stage`.
    fn delivery(
        &self,
        client: &Arc<str>,
        out: &Outgoing,
        stage: Option<(InflightState, PacketId)>,
    ) -> Change {
        let message_id = out
            .msg
            .stored
            .get_or_assign(|| self.next_message_id.fetch_add(1, Ordering::Relaxed));
        Change::PutDelivery(
            client.clone(),
            StoredDelivery {
                seq: out.seq,
                stage,
                qos: out.qos,
                retain: out.retain,
                subscription_ids: out.sub_ids.clone(),
                shared: out.shared.clone(),
                message: out.msg.clone(),
                message_id,
            },
        )
    }

    /// Keep a delivery of `client` at `stage` (it was sent with `packet_id`); whether
    /// anything was written.
    pub fn put_delivery(
        &self,
        persistent: bool,
        client: &Arc<str>,
        out: &Outgoing,
        stage: InflightState,
        packet_id: PacketId,
    ) -> bool {
        if let (Some(store), true, true) = (&self.store, persistent, out.seq != 0) {
            store.submit(self.delivery(client, out, Some((stage, packet_id))));
            return true;
        }
        false
    }

    /// Forget a finished (or dropped) delivery of `client`.
    pub fn forget_delivery(&self, persistent: bool, client: &Arc<str>, seq: u64) {
        if let (Some(store), true, true) = (&self.store, persistent, seq != 0) {
            store.submit(Change::DelDelivery(client.clone(), seq));
        }
    }

    /// Keep an incoming QoS 2 packet identifier awaiting PUBREL; whether it was written.
    pub fn put_qos2(&self, persistent: bool, client: &Arc<str>, id: PacketId) -> bool {
        if let (Some(store), true) = (&self.store, persistent) {
            store.submit(Change::PutQos2(client.clone(), id.get()));
            return true;
        }
        false
    }

    /// Forget an incoming QoS 2 packet identifier (PUBREL came); whether it was written.
    pub fn forget_qos2(&self, persistent: bool, client: &Arc<str>, id: PacketId) -> bool {
        if let (Some(store), true) = (&self.store, persistent) {
            store.submit(Change::DelQos2(client.clone(), id.get()));
            return true;
        }
        false
    }

    /// Open a group: what is submitted until [`Persistence::end_group`] is durable together or
    /// not at all (a QoS 2 packet identifier and the copies routed for it).
    pub fn group(&self) -> Option<Group> {
        self.store.as_ref().map(|s| s.group())
    }

    /// Close a group.
    pub fn end_group(&self, g: Option<Group>) {
        if let (Some(store), Some(g)) = (&self.store, g) {
            store.end_group(g);
        }
    }

    /// The highest change durable so far (`u64::MAX` without a store: everything is).
    pub fn committed(&self) -> Ticket {
        self.store.as_ref().map_or(u64::MAX, |s| s.durable())
    }

    /// Wait until more than `seen` is durable (forever without a store).
    pub async fn wait_past(&self, seen: Ticket) {
        match &self.store {
            Some(s) => s.progress().wait_past(seen).await,
            None => std::future::pending().await,
        }
    }

    /// Wait until everything submitted so far is durable.
    pub async fn wait_submitted(&self) -> Result<(), StoreError> {
        let Some(store) = &self.store else { return Ok(()) };
        let target = store.submitted();
        loop {
            if let Some(e) = store.error() {
                return Err(e);
            }
            let seen = store.durable();
            if seen >= target {
                return Ok(());
            }
            store.progress().wait_past(seen).await;
        }
    }

    /// Make everything durable and release the storage (blocking).
    pub fn close(&self) {
        if let Some(s) = &self.store {
            s.close();
        }
    }
}

/// The store changes of one session's protocol state (`tern_proto`'s [`Persist`]), as
/// [`Change`]s for the session of `client`; nothing is written for a session that is not
/// kept in the store. With a backplane that keeps QoS 2 deliveries
/// ([`Backplane::keeps_qos2`](crate::backplane::Backplane::keeps_qos2)), the stages of a
/// session that outlives its connection go there too, and `ticket` is the last one the
/// packet about to be written waits for.
///
/// [`Persist`]: tern_proto::session::server::Persist
pub(crate) struct SessionChanges<'a> {
    pub persistence: &'a Persistence,
    pub client: &'a Arc<str>,
    pub persistent: bool,
    /// The backplane, when it keeps this session's QoS 2 deliveries.
    pub qos2_elsewhere: Option<&'a Arc<dyn crate::backplane::Backplane>>,
    /// The backplane's ticket the next write waits for.
    pub ticket: Option<Ticket>,
    /// An incoming QoS 2 packet id that now awaits PUBREL, with the marks the backplane
    /// made for its message and the ticket its PUBREC waits for
    /// ([`Backplane::qos2_received`](crate::backplane::Backplane::qos2_received)).
    pub received: Option<(u16, Arc<crate::BackplaneMark>, Ticket)>,
}

impl SessionChanges<'_> {
    /// Forget the stored record of a delivery (dropped, expired or refused by the ACL).
    pub fn forget(&self, seq: u64) {
        self.persistence
            .forget_delivery(self.persistent, self.client, seq)
    }

    /// A QoS 2 delivery sent with `id` was given up before it went out.
    pub fn abandoned(&self, id: PacketId, out: &Outgoing) {
        self.forget(out.seq);
        if let (Some(b), QoS::ExactlyOnce) = (self.qos2_elsewhere, out.qos) {
            b.qos2_done(self.client, id.get());
        }
    }
}

impl tern_proto::session::server::Persist<Outgoing> for SessionChanges<'_> {
    fn qos2_received(&mut self, id: PacketId) -> bool {
        if let Some(b) = self.qos2_elsewhere {
            self.received = b
                .qos2_received(self.client, id.get())
                .map(|(mark, ticket)| (id.get(), mark, ticket));
        }
        self.persistence.put_qos2(self.persistent, self.client, id)
    }

    fn qos2_released(&mut self, id: PacketId) -> bool {
        if let Some(t) = self
            .qos2_elsewhere
            .and_then(|b| b.qos2_released(self.client, id.get()))
        {
            self.ticket = Some(self.ticket.map_or(t, |old| old.max(t)));
        }
        self.persistence.forget_qos2(self.persistent, self.client, id)
    }

    fn delivery_stage(&mut self, f: &tern_proto::session::InFlight<Outgoing>) -> bool {
        if let (Some(b), QoS::ExactlyOnce) = (self.qos2_elsewhere, f.message.qos) {
            let released = f.stage == InflightState::Released;
            if let Some(t) = b.qos2_stage(self.client, f.id.get(), released, &f.message.msg) {
                self.ticket = Some(self.ticket.map_or(t, |old| old.max(t)));
            }
        }
        self.persistence
            .put_delivery(self.persistent, self.client, &f.message, f.stage, f.id)
    }

    fn delivery_done(&mut self, f: &tern_proto::session::InFlight<Outgoing>) {
        let message = &f.message;
        if let Some(s) = &message.settle {
            s.done();
        }
        if let (Some(b), QoS::ExactlyOnce) = (self.qos2_elsewhere, message.qos) {
            b.qos2_done(self.client, f.id.get());
        }
        self.persistence
            .forget_delivery(self.persistent, self.client, message.seq)
    }

    fn persistent(&self) -> bool {
        self.persistent && self.persistence.enabled()
    }
}

/// A [`Durability`] in memory: changes become durable when released (at once by default), and
/// a crash forgets what was not. For tests and simulations of storage (acknowledgements held
/// back, a crash between any two changes, a restart from what was durable), and for embedding
/// programs that want the broker's persistence semantics without a disk.
#[derive(Debug, Default)]
pub struct InMemory {
    state: std::sync::Mutex<MemoryState>,
    durable: Progress,
}

#[derive(Debug, Default)]
struct MemoryState {
    /// Submitted, not durable yet, with their tickets.
    pending: std::collections::VecDeque<(Ticket, Change)>,
    submitted: Ticket,
    open_groups: Vec<Ticket>,
    /// Whether changes wait for [`InMemory::release`].
    held: bool,
    /// Between [`InMemory::crash`] and [`InMemory::restart`]: the broker that was using it is
    /// gone, and what it still submits is lost.
    crashed: bool,
    retained: std::collections::BTreeMap<String, Arc<Message>>,
    sessions: std::collections::BTreeMap<Arc<str>, SessionSnapshot>,
    deliveries: std::collections::BTreeMap<(Arc<str>, u64), StoredDelivery>,
    qos2: std::collections::BTreeSet<(Arc<str>, u16)>,
}

impl MemoryState {
    fn apply(&mut self, change: Change) {
        match change {
            Change::PutRetained(m) => {
                self.retained.insert(m.topic.to_string(), m);
            }
            Change::DelRetained(t) => {
                self.retained.remove(&t);
            }
            Change::PutSession(c, s) => {
                self.sessions.insert(c, s);
            }
            Change::DelSession(c) => {
                self.sessions.remove(&c);
                self.deliveries.retain(|(k, _), _| *k != c);
                self.qos2.retain(|(k, _)| *k != c);
            }
            Change::PutDelivery(c, d) => {
                self.deliveries.insert((c, d.seq), d);
            }
            Change::DelDelivery(c, seq) => {
                self.deliveries.remove(&(c, seq));
            }
            Change::PutQos2(c, id) => {
                self.qos2.insert((c, id));
            }
            Change::DelQos2(c, id) => {
                self.qos2.remove(&(c, id));
            }
        }
    }

    /// Apply what may become durable: up to the start of the oldest open group.
    fn release(&mut self) -> Ticket {
        let limit = self.open_groups.iter().min().map_or(self.submitted, |s| s - 1);
        while self.pending.front().is_some_and(|(t, _)| *t <= limit) {
            if let Some((_, c)) = self.pending.pop_front() {
                self.apply(c);
            }
        }
        self.pending.front().map_or(self.submitted, |(t, _)| t - 1)
    }
}

impl InMemory {
    /// Empty; changes are durable as soon as they are submitted (groups permitting).
    pub fn new() -> Arc<InMemory> {
        Arc::new(InMemory::default())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemoryState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Hold changes back until [`InMemory::release`] (`true`), or release them as they come.
    pub fn hold(&self, held: bool) {
        let mut st = self.lock();
        st.held = held;
        if !held {
            let t = st.release();
            self.durable.advance(t);
        }
    }

    /// Make what was submitted durable (up to the start of an open group).
    pub fn release(&self) {
        let t = self.lock().release();
        self.durable.advance(t);
    }

    /// Changes submitted and not durable yet.
    pub fn pending(&self) -> usize {
        self.lock().pending.len()
    }

    /// A power loss: what was not durable is gone, and so is the broker using it (what it
    /// submits until [`InMemory::restart`] is lost; it sees an error).
    pub fn crash(&self) {
        let mut st = self.lock();
        st.pending.clear();
        st.open_groups.clear();
        st.crashed = true;
        // Wake whoever waits for durability: they find the error.
        drop(st);
        self.durable.changed.notify_waiters();
    }

    /// Start again after a crash (or for the first time): changes are released as they come,
    /// and the broker gets what is durable.
    pub fn restart(&self) -> Stored {
        {
            let mut st = self.lock();
            st.crashed = false;
            st.held = false;
        }
        self.stored()
    }

    /// What is durable now, as a broker restarting on this storage gets it.
    pub fn stored(&self) -> Stored {
        let st = self.lock();
        Stored {
            retained: st.retained.values().cloned().collect(),
            sessions: st.sessions.iter().map(|(c, s)| (c.clone(), s.clone())).collect(),
            deliveries: st
                .deliveries
                .iter()
                .map(|((c, _), d)| (c.clone(), d.clone()))
                .collect(),
            qos2: st.qos2.iter().cloned().collect(),
            spilled: Vec::new(),
            retained_on_disk: Vec::new(),
            max_message_id: 0,
        }
    }
}

impl Durability for InMemory {
    fn submit(&self, change: Change) -> Ticket {
        let mut st = self.lock();
        st.submitted += 1;
        let t = st.submitted;
        if st.crashed {
            return t;
        }
        st.pending.push_back((t, change));
        if !st.held {
            let d = st.release();
            self.durable.advance(d);
        }
        t
    }

    fn group(&self) -> Group {
        let mut st = self.lock();
        let first = st.submitted + 1;
        st.open_groups.push(first);
        Group::starting_at(first)
    }

    fn end_group(&self, group: Group) -> Ticket {
        let mut st = self.lock();
        if let Some(i) = st.open_groups.iter().position(|&s| s == group.first()) {
            st.open_groups.swap_remove(i);
        }
        if !st.held {
            let d = st.release();
            self.durable.advance(d);
        }
        st.submitted
    }

    fn submitted(&self) -> Ticket {
        self.lock().submitted
    }

    fn progress(&self) -> &Progress {
        &self.durable
    }

    fn error(&self) -> Option<StoreError> {
        self.lock()
            .crashed
            .then(|| StoreError("the storage crashed (simulated)".into()))
    }

    fn close(&self) {}
}
