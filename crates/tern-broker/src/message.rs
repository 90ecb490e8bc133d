//! The routed message: one reference-counted value shared by every subscriber.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tern_proto::codec::PublishProperties;
use tern_proto::{ByteString, Bytes, PacketId, ProtocolVersion, Publish, QoS};

/// An application message as the broker routes and stores it: one value shared by every
/// subscriber's delivery of it.
#[derive(Debug)]
pub struct Message {
    /// The topic name.
    pub topic: ByteString,
    /// The application payload.
    pub payload: Bytes,
    /// The QoS it was published with.
    pub qos: QoS,
    /// Whether it was published with RETAIN.
    pub retain: bool,
    /// Properties forwarded unchanged (topic alias and subscription identifiers removed).
    pub properties: PublishProperties,
    /// When the Message Expiry Interval runs out.
    pub expires_at: Option<Instant>,
    /// Client identifier of the publisher (for No Local), `None` for wills published on behalf of a session that is gone.
    pub publisher: Option<Arc<str>>,
    /// Its id in durable storage, once a persistent session queued it.
    pub(crate) stored: StoredId,
    /// When a client's PUBLISH of it was decoded (the delivery-latency metric); `None` for
    /// messages from elsewhere (wills, the API, the store).
    pub(crate) received_at: Option<Instant>,
    /// What a backplane knows of it (its id there and where it keeps it).
    pub(crate) mark: Mark,
    /// Where a backplane that brought it keeps it ([`Message::placed_at`]), packed as in
    /// [`BackplaneMark`]; 0: not known.
    pub(crate) placed: u64,
}

/// `(shard + 1) << 48 | sequence`, `None` beyond those ranges.
fn pack_position(shard: u16, sequence: u64) -> Option<u64> {
    (shard < u16::MAX && sequence < 1 << 48).then(|| (u64::from(shard) + 1) << 48 | sequence)
}

/// The position packed by [`pack_position`] (0: none).
fn unpack_position(p: u64) -> Option<(u16, u64)> {
    (p != 0).then(|| ((p >> 48) as u16 - 1, p & ((1 << 48) - 1)))
}

/// A backplane's marks on a message ([`BackplaneMark`]), made on first use and shared with
/// the copies of the message ([`Message::detached`]).
#[derive(Debug, Default)]
pub(crate) struct Mark(std::sync::OnceLock<Arc<BackplaneMark>>);

impl Mark {
    fn get(&self) -> Option<&Arc<BackplaneMark>> {
        self.0.get()
    }

    fn made(&self) -> &Arc<BackplaneMark> {
        self.0.get_or_init(Arc::default)
    }

    /// The same marks, for a copy of the message (made now when the message is QoS 2, the
    /// only messages a backplane marks, so that the copy and the original share them).
    fn shared(&self, qos: QoS) -> Mark {
        let m = Mark::default();
        let mine = match qos {
            QoS::ExactlyOnce => Some(self.made()),
            _ => self.get(),
        };
        if let Some(mine) = mine {
            let _ = m.0.set(mine.clone());
        }
        m
    }
}

/// What a backplane knows of a message: an id that is the same on every broker that has the
/// message (a cluster gives QoS 2 messages one, so that a node taking over a session can tell
/// which of the messages it reads back were delivered already), and where the backplane
/// stores it (shard and sequence), once known. Unset on one broker.
#[derive(Debug, Default)]
pub struct BackplaneMark {
    id: std::sync::OnceLock<(u64, u64)>,
    /// `(shard + 1) << 48 | sequence`; 0 while unknown.
    position: AtomicU64,
    /// A ticket of the backplane's own that must be reached before it stores the message
    /// (0: none).
    hold: AtomicU64,
    /// The backplane could not store it ([`BackplaneMark::refuse`]).
    refused: std::sync::atomic::AtomicBool,
}

impl BackplaneMark {
    /// The id a backplane gave the message, if any.
    pub fn id(&self) -> Option<(u64, u64)> {
        self.id.get().copied()
    }

    /// The id, given one by `fresh` if it has none yet.
    pub fn id_or(&self, fresh: impl FnOnce() -> (u64, u64)) -> (u64, u64) {
        *self.id.get_or_init(fresh)
    }

    /// The backplane stores the message only once its own `ticket` is reached (the cluster:
    /// the entry of the publisher's session lists the message's packet id first).
    pub fn hold_until(&self, ticket: u64) {
        self.hold.store(ticket, Ordering::Release);
    }

    /// The ticket set by [`BackplaneMark::hold_until`], if any.
    pub fn held_until(&self) -> Option<u64> {
        match self.hold.load(Ordering::Acquire) {
            0 => None,
            t => Some(t),
        }
    }

    /// Where the backplane keeps the message: shard (below 65,535) and sequence (below 2^48).
    pub fn position(&self) -> Option<(u16, u64)> {
        unpack_position(self.position.load(Ordering::Acquire))
    }

    /// The backplane could not store the message under its id, and never will: another
    /// broker took the publisher's session meanwhile and decided that the message was not
    /// stored (a cluster node taken for dead while cut off). Set before the backplane's
    /// progress passes the message: its PUBREC is then not sent, its packet id is
    /// forgotten, and the connection is closed (5.0: DISCONNECT 0x89), so that the client's
    /// resend is stored as a new message.
    pub fn refuse(&self) {
        self.refused.store(true, Ordering::Release);
    }

    /// Whether [`BackplaneMark::refuse`] was called.
    pub fn refused(&self) -> bool {
        self.refused.load(Ordering::Acquire)
    }
}

/// The id of a message's payload record in the store (0: not stored): every session that
/// queues the message refers to the one record.
#[derive(Debug, Default)]
pub(crate) struct StoredId(AtomicU64);

impl StoredId {
    /// The id, given one from `fresh` if it has none yet (two racing callers agree on one).
    pub fn get_or_assign(&self, fresh: impl FnOnce() -> u64) -> u64 {
        match self.0.load(Ordering::Relaxed) {
            0 => {
                let new = fresh();
                match self
                    .0
                    .compare_exchange(0, new, Ordering::Relaxed, Ordering::Relaxed)
                {
                    Ok(_) => new,
                    Err(current) => current,
                }
            }
            id => id,
        }
    }

    /// An id read back from the store.
    pub fn known(id: u64) -> StoredId {
        StoredId(AtomicU64::new(id))
    }
}

impl Message {
    /// The message as it reached this broker at `at` (from another node of a cluster, say):
    /// the delivery-latency metric runs from there, and a cluster tells from it how far back
    /// a session's unacknowledged messages go.
    pub fn arrived(mut self, at: Instant) -> Message {
        self.received_at = Some(at);
        self
    }

    /// When a client's PUBLISH of it was decoded, or [`Message::arrived`] said it reached
    /// this broker.
    pub fn received_at(&self) -> Option<Instant> {
        self.received_at
    }

    /// A message to `topic` with `payload`, no properties, no expiry and no publisher (for
    /// [`BrokerHandle::publish`](crate::BrokerHandle::publish)).
    pub fn new(topic: impl Into<ByteString>, payload: impl Into<Bytes>, qos: QoS, retain: bool) -> Message {
        Message {
            topic: topic.into(),
            payload: payload.into(),
            qos,
            retain,
            properties: PublishProperties::default(),
            expires_at: None,
            publisher: None,
            stored: StoredId::default(),
            received_at: None,
            mark: Mark::default(),
            placed: 0,
        }
    }

    /// Build from a received PUBLISH whose topic alias is already resolved.
    pub fn from_publish(p: Publish, topic: ByteString, publisher: Option<Arc<str>>, now: Instant) -> Message {
        let mut properties = p.properties;
        properties.topic_alias = None;
        properties.subscription_identifiers.clear();
        let expires_at = properties
            .message_expiry_interval
            .map(|s| now + Duration::from_secs(u64::from(s)));
        Message {
            topic,
            payload: p.payload,
            qos: p.qos,
            retain: p.retain,
            properties,
            expires_at,
            publisher,
            stored: StoredId::default(),
            received_at: Some(now),
            mark: Mark::default(),
            placed: 0,
        }
    }

    /// A copy that owns its bytes. A received message's topic, payload and
    /// properties are slices of the read buffer they arrived in (up to 64 KiB,
    /// shared with the other messages of that read) and keep all of it alive;
    /// what is kept for long, like a retained message, is copied out first.
    pub fn detached(&self) -> Message {
        Message {
            topic: ByteString::from(self.topic.to_string()),
            payload: Bytes::copy_from_slice(&self.payload),
            qos: self.qos,
            retain: self.retain,
            properties: self.properties.detached(),
            expires_at: self.expires_at,
            publisher: self.publisher.clone(),
            stored: StoredId::default(),
            received_at: None,
            // A copy is the same message to a backplane (its id, where it is stored).
            mark: self.mark.shared(self.qos),
            placed: self.placed,
        }
    }

    /// Whether its Message Expiry Interval has run out at `now`.
    pub fn is_expired(&self, now: Instant) -> bool {
        self.expires_at.is_some_and(|t| t <= now)
    }

    /// The id a backplane gave it ([`Message::backplane_id_or`]), if any.
    pub fn backplane_id(&self) -> Option<(u64, u64)> {
        self.mark.get()?.id()
    }

    /// Its backplane id, given it by `fresh` if it has none yet (of two racing callers, one
    /// gives it, and both get that one; its copies share it).
    pub fn backplane_id_or(&self, fresh: impl FnOnce() -> (u64, u64)) -> (u64, u64) {
        self.mark.made().id_or(fresh)
    }

    /// The message with marks its backplane made for it before it existed
    /// ([`crate::backplane::Backplane::qos2_received`]).
    pub fn with_backplane_mark(self, mark: Arc<BackplaneMark>) -> Message {
        let _ = self.mark.0.set(mark);
        self
    }

    /// The message with the backplane id it came with from another broker.
    pub fn with_backplane_id(self, id: (u64, u64)) -> Message {
        let _ = self.mark.made().id.set(id);
        self
    }

    /// The backplane's ticket its store waits for ([`BackplaneMark::hold_until`]), if any.
    pub fn backplane_hold(&self) -> Option<u64> {
        self.mark.get()?.held_until()
    }

    /// Where the backplane keeps it: shard (below 65,535) and sequence (below 2^48).
    pub fn backplane_position(&self) -> Option<(u16, u64)> {
        self.mark
            .get()
            .and_then(|m| m.position())
            .or_else(|| unpack_position(self.placed))
    }

    /// Say where the backplane keeps it (ignored beyond the ranges of
    /// [`Message::backplane_position`]); its copies see it too.
    pub fn set_backplane_position(&self, shard: u16, sequence: u64) {
        if let Some(p) = pack_position(shard, sequence) {
            self.mark.made().position.store(p, Ordering::Release);
        }
    }

    /// The message as a backplane brought it, from where it keeps it: shard (below 65,535)
    /// and sequence (below 2^48; ignored beyond). Without marks of its own (no allocation):
    /// a message read from a backplane's store has a place before anyone shares it. A
    /// session that holds such a message without an arrival time can still say how far
    /// back what it holds goes ([`crate::backplane::Held::Placed`]).
    pub fn placed_at(mut self, shard: u16, sequence: u64) -> Message {
        self.placed = pack_position(shard, sequence).unwrap_or(0);
        self
    }

    /// Its backplane marks (made now if it has none), to be read later without keeping the
    /// message (its payload) alive.
    pub fn backplane_mark(&self) -> Arc<BackplaneMark> {
        self.mark.made().clone()
    }
}

/// One message on its way to one session, with the per-subscriber decisions.
#[derive(Debug, Clone)]
pub(crate) struct Outgoing {
    pub msg: Arc<Message>,
    pub qos: QoS,
    pub retain: bool,
    pub sub_ids: Vec<u32>,
    /// The shared subscription (full `$share/g/filter`) this delivery came through.
    pub shared: Option<Arc<str>>,
    /// Sequence number of its record in the store (0: not stored).
    pub seq: u64,
    /// Store sequence number of the change that stored it: it is not sent before
    /// that change is committed, so a crash cannot make the broker deliver a QoS 2
    /// message twice (0: no wait).
    pub commit_seq: u64,
    /// For a message a backplane delivered to one member of a shared subscription
    /// ([`crate::Admin::deliver_shared`]): told when the delivery is finished.
    pub settle: Option<Arc<dyn Settlement>>,
}

/// The source of a message delivered to one member of a shared subscription by a backplane
/// ([`crate::backplane::Backplane::delivers_shared`]), waiting to hear that the delivery is
/// finished: [`Settlement::done`] is called when the member acknowledged it (PUBACK, PUBCOMP)
/// or, at QoS 0, when it was handed to the member. Dropped without `done` (the member's
/// session ended and no other member here took it, the message expired or was dropped), the
/// source should offer the message to another member.
pub trait Settlement: Send + Sync + std::fmt::Debug {
    /// The delivery is finished.
    fn done(&self);

    /// A QoS 2 delivery of it began: its PUBLISH goes out now, after everything it waits for
    /// is kept (the store's commit, the backplane's session write:
    /// [`Backplane::qos2_stage`]), so the member's session, wherever it is resumed, resends
    /// it. The member keeps it whatever happens to its connection, and no other member may
    /// get it (v5 [MQTT-4.8.2-4], [MQTT-4.8.2-5]). `done` is still called when the delivery
    /// is finished.
    ///
    /// [`Backplane::qos2_stage`]: crate::backplane::Backplane::qos2_stage
    fn started(&self) {}

    /// The member it goes to is away (its session outlives its connection): whether the
    /// source keeps the message unsettled (`done` when the member, back, has taken it; given
    /// back if the session ends or moves first) rather than settled now, when the session
    /// takes it. A source that offers the message to the group again if this broker dies
    /// says yes while it can afford to hold it; then the message is not lost with the
    /// broker. Default `false`. Asked once per message; a message the session can only keep
    /// on disk is settled then.
    fn keep_while_away(&self) -> bool {
        false
    }
}

impl Outgoing {
    /// A delivery read back from the store (queued, or at the stage it records).
    pub fn from_stored(d: crate::durability::StoredDelivery) -> Outgoing {
        Outgoing {
            msg: d.message,
            qos: d.qos,
            retain: d.retain,
            sub_ids: d.subscription_ids,
            shared: d.shared,
            seq: d.seq,
            commit_seq: 0,
            settle: None,
        }
    }

    /// The PUBLISH for a subscriber speaking `version`.
    ///
    /// For a 3.x subscriber the 5.0 properties are dropped (the one place where
    /// that happens); for 5.0 the remaining message expiry is forwarded
    /// ([MQTT-3.3.2-6]) and the subscription identifiers added ([MQTT-3.3.4-3]).
    pub fn to_publish(
        &self,
        version: ProtocolVersion,
        packet_id: Option<PacketId>,
        dup: bool,
        now: Instant,
    ) -> Publish {
        let mut p = Publish::new(self.msg.topic.clone(), self.msg.payload.clone());
        p.qos = self.qos;
        p.packet_id = packet_id;
        p.dup = dup;
        p.retain = self.retain;
        if version.is_v5() {
            p.properties = self.msg.properties.clone();
            if let Some(at) = self.msg.expires_at {
                let left = at.saturating_duration_since(now).as_secs();
                p.properties.message_expiry_interval = Some(u32::try_from(left).unwrap_or(u32::MAX));
            }
            p.properties.subscription_identifiers.clone_from(&self.sub_ids);
        }
        p
    }
}

impl tern_proto::session::Deliverable for Outgoing {
    fn qos(&self) -> QoS {
        self.qos
    }
}

impl tern_proto::session::server::Delivery for Outgoing {
    fn to_publish(
        &self,
        version: ProtocolVersion,
        packet_id: Option<PacketId>,
        dup: bool,
        now: Instant,
    ) -> Publish {
        Outgoing::to_publish(self, version, packet_id, dup, now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copy_of_a_qos2_message_shares_its_backplane_marks() {
        let m = Message::new("t", "p", QoS::ExactlyOnce, false);
        let copy = m.detached();
        // Given to the copy (a delivery to a session that is away), seen by the original (the
        // backplane's stream write), and the other way round.
        assert_eq!(copy.backplane_id_or(|| (1, 2)), (1, 2));
        assert_eq!(m.backplane_id_or(|| (3, 4)), (1, 2));
        m.set_backplane_position(2, 99);
        assert_eq!(copy.backplane_position(), Some((2, 99)));
        assert_eq!(copy.backplane_mark().position(), Some((2, 99)));
        // QoS 0/1 messages get no marks of their own when copied.
        let q1 = Message::new("t", "p", QoS::AtLeastOnce, false);
        assert_eq!(q1.detached().backplane_id(), None);
        assert!(q1.mark.get().is_none());
        // A place given when it was read from the backplane's store stays with its copies,
        // still without marks.
        let placed = Message::new("t", "p", QoS::AtLeastOnce, false).placed_at(1, 42);
        assert_eq!(placed.detached().backplane_position(), Some((1, 42)));
        assert!(placed.mark.get().is_none());
        assert_eq!(q1.placed_at(u16::MAX, 1).backplane_position(), None);
    }

    #[test]
    fn a_detached_message_keeps_no_read_buffer_alive() {
        let read = Bytes::from(b"a/topicpayload".to_vec());
        let mut p = Publish::new(ByteString::try_from(read.slice(0..7)).unwrap(), read.slice(7..));
        p.properties.correlation_data = Some(read.slice(0..1));
        let m = Message::from_publish(p.clone(), p.topic.clone(), None, Instant::now());
        let d = m.detached();
        assert_eq!(
            (&d.topic, &d.payload, &d.properties),
            (&m.topic, &m.payload, &m.properties)
        );
        let inside = |b: &[u8]| read.as_ptr_range().contains(&b.as_ptr());
        assert!(inside(&m.payload));
        assert!(!inside(&d.payload) && !inside(d.topic.as_bytes()));
        assert!(!inside(
            d.properties.correlation_data.as_deref().unwrap_or_default()
        ));
    }
}
