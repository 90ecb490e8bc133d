//! Versioned, checksummed on-disk records. Messages are stored in the
//! tern-proto 5.0 PUBLISH encoding, so properties need no second format.
//!
//! Every value is `[version u8][crc32 of the rest u32 BE][body]`; a record whose
//! checksum or version does not match is reported as corrupt, never guessed at.
//!
//! A message queued for sessions is stored once, as a payload record, and each session's
//! queued record refers to it by id (version 2 of the queued record). Version 1 queued
//! records, written before, carry the message inline; they are still read.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::clock::Stamp;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tern_proto::codec::{Decoded, Decoder, MAX_PACKET_SIZE};
use tern_proto::{ByteString, Packet, PacketId, ProtocolVersion, Publish, QoS, SubscriptionOptions};

use crate::durability::{Handover, SessionSnapshot, StoredDelivery};
use crate::message::Message;
use crate::session::InflightState;

const VERSION: u8 = 1;
/// Queued records that refer to a payload record.
const QUEUED_BY_REF: u8 = 2;

/// A record that cannot be read back.
#[derive(Debug, thiserror::Error)]
#[error("corrupt record: {0}")]
pub struct Corrupt(pub &'static str);

fn seal(body: BytesMut) -> Bytes {
    seal_as(VERSION, body)
}

fn seal_as(version: u8, body: BytesMut) -> Bytes {
    let mut out = BytesMut::with_capacity(body.len() + 5);
    out.put_u8(version);
    out.put_u32(crc32fast::hash(&body));
    out.extend_from_slice(&body);
    out.freeze()
}

fn open(raw: &[u8]) -> Result<Bytes, Corrupt> {
    match open_any(raw)? {
        (VERSION, b) => Ok(b),
        _ => Err(Corrupt("unknown record version")),
    }
}

/// The version and body of a record of any version.
fn open_any(raw: &[u8]) -> Result<(u8, Bytes), Corrupt> {
    if raw.len() < 5 {
        return Err(Corrupt("record shorter than its header"));
    }
    let crc = u32::from_be_bytes([raw[1], raw[2], raw[3], raw[4]]);
    if crc32fast::hash(&raw[5..]) != crc {
        return Err(Corrupt("checksum mismatch"));
    }
    Ok((raw[0], Bytes::copy_from_slice(&raw[5..])))
}

/// Wall-clock milliseconds for an `Instant` deadline (0: none), so remaining
/// times can be recomputed after a restart.
pub fn to_wall(at: Option<Instant>, now: Stamp) -> u64 {
    let Some(at) = at else { return 0 };
    let left = u64::try_from(at.saturating_duration_since(now.now).as_millis()).unwrap_or(u64::MAX);
    now.wall_ms.saturating_add(left).max(1)
}

/// The `Instant` for a stored wall-clock time (0: none); past times become `now`.
pub fn from_wall(ms: u64, now: Stamp) -> Option<Instant> {
    if ms == 0 {
        return None;
    }
    Some(now.now + Duration::from_millis(ms.saturating_sub(now.wall_ms)))
}

fn put_str(b: &mut BytesMut, s: &str) {
    b.put_u32(s.len() as u32);
    b.put_slice(s.as_bytes());
}

fn get_str(b: &mut Bytes) -> Result<String, Corrupt> {
    let n = get_u32(b)? as usize;
    if b.remaining() < n {
        return Err(Corrupt("string past the end"));
    }
    String::from_utf8(b.split_to(n).to_vec()).map_err(|_| Corrupt("string is not UTF-8"))
}

fn get_u8(b: &mut Bytes) -> Result<u8, Corrupt> {
    if b.remaining() < 1 {
        return Err(Corrupt("truncated"));
    }
    Ok(b.get_u8())
}

fn get_u16(b: &mut Bytes) -> Result<u16, Corrupt> {
    if b.remaining() < 2 {
        return Err(Corrupt("truncated"));
    }
    Ok(b.get_u16())
}

fn get_u32(b: &mut Bytes) -> Result<u32, Corrupt> {
    if b.remaining() < 4 {
        return Err(Corrupt("truncated"));
    }
    Ok(b.get_u32())
}

fn get_u64(b: &mut Bytes) -> Result<u64, Corrupt> {
    if b.remaining() < 8 {
        return Err(Corrupt("truncated"));
    }
    Ok(b.get_u64())
}

/// Append a message: expiry (wall ms), publisher, then the PUBLISH (5.0 encoding, length-prefixed).
fn put_message(b: &mut BytesMut, m: &Message, now: Stamp) {
    b.put_u64(to_wall(m.expires_at, now));
    put_str(b, m.publisher.as_deref().unwrap_or(""));
    let mut p = Publish::new(m.topic.clone(), m.payload.clone());
    p.retain = m.retain;
    p.properties = m.properties.clone();
    // QoS is kept apart: a stored PUBLISH has no packet identifier.
    b.put_u8(m.qos.as_u8());
    let mut enc = BytesMut::new();
    let _ = Packet::Publish(p).encode(ProtocolVersion::V5, &mut enc);
    b.put_u32(enc.len() as u32);
    b.extend_from_slice(&enc);
}

fn get_message(b: &mut Bytes, now: Stamp) -> Result<Message, Corrupt> {
    let expires = get_u64(b)?;
    let publisher = get_str(b)?;
    let qos = QoS::from_bits(get_u8(b)?).ok_or(Corrupt("bad QoS"))?;
    let n = get_u32(b)? as usize;
    if b.remaining() < n {
        return Err(Corrupt("message past the end"));
    }
    let mut raw = BytesMut::from(&b.split_to(n)[..]);
    let p = match Decoder::new(ProtocolVersion::V5, MAX_PACKET_SIZE).decode(&mut raw) {
        Ok(Decoded::Packet(Packet::Publish(p))) => p,
        _ => return Err(Corrupt("stored PUBLISH does not decode")),
    };
    Ok(Message {
        // Its own bytes: a slice would keep the whole record (the payload with it) alive for
        // as long as the topic is held, e.g. by a retained entry whose message left memory.
        topic: ByteString::from(p.topic.to_string()),
        payload: p.payload,
        qos,
        retain: p.retain,
        properties: p.properties,
        expires_at: from_wall(expires, now),
        publisher: (!publisher.is_empty()).then(|| Arc::from(publisher.as_str())),
        stored: Default::default(),
        received_at: None,
        mark: Default::default(),
        placed: 0,
    })
}

/// A retained message.
pub fn retained(m: &Message, now: Stamp) -> Bytes {
    let mut b = BytesMut::new();
    put_message(&mut b, m, now);
    seal(b)
}

/// Read a retained message.
pub fn read_retained(raw: &[u8], now: Stamp) -> Result<Message, Corrupt> {
    let mut b = open(raw)?;
    get_message(&mut b, now)
}

/// A message stored once for every session that queues it, with what a backplane knows of
/// it (see [`read_payload`]).
pub fn payload(m: &Message, now: Stamp) -> Bytes {
    let mut b = BytesMut::new();
    put_message(&mut b, m, now);
    put_marks(&mut b, m);
    seal(b)
}

/// Marks of [`put_marks`] that follow.
const HAS_ID: u8 = 1;
const HAS_PLACE: u8 = 2;

/// Added after the first version (a reader from before stops before it): a byte saying
/// which follow, then the message's backplane id and where the backplane keeps it (shard,
/// sequence), when known. So a broker restarted from its store gives a QoS 2 delivery in
/// flight the id it had, and a cluster node that recovers the session after that broker
/// dies again finds its message by that id (before, it got a new one: a shared group's
/// message was then lost, and any other one read again). One byte on a single broker.
fn put_marks(b: &mut BytesMut, m: &Message) {
    let id = m.backplane_id();
    let place = m.backplane_position();
    b.put_u8(if id.is_some() { HAS_ID } else { 0 } | if place.is_some() { HAS_PLACE } else { 0 });
    if let Some((hi, lo)) = id {
        b.put_u64(hi);
        b.put_u64(lo);
    }
    if let Some((k, seq)) = place {
        b.put_u16(k);
        b.put_u64(seq);
    }
}

/// `m` with the marks of [`put_marks`] read from `b`, if there are any.
fn get_marks(b: &mut Bytes, m: Message) -> Result<Message, Corrupt> {
    if !b.has_remaining() {
        return Ok(m);
    }
    let which = get_u8(b)?;
    let mut m = m;
    if which & HAS_ID != 0 {
        let id = (get_u64(b)?, get_u64(b)?);
        m = m.with_backplane_id(id);
    }
    if which & HAS_PLACE != 0 {
        let (k, seq) = (get_u16(b)?, get_u64(b)?);
        m = placed(m, k, seq);
    }
    Ok(m)
}

/// `m`, kept by the backplane at `seq` of shard `k` (a payload record's or a handover's
/// place). A QoS 2 message's marks say it too: a delivered one leaves the cluster's entry
/// once the floor is past it.
fn placed(m: Message, k: u16, seq: u64) -> Message {
    if m.qos == tern_proto::QoS::ExactlyOnce {
        m.set_backplane_position(k, seq);
    }
    m.placed_at(k, seq)
}

/// Read a payload record (one written before the marks were added has none).
pub fn read_payload(raw: &[u8], now: Stamp) -> Result<Message, Corrupt> {
    let mut b = open(raw)?;
    let m = get_message(&mut b, now)?;
    get_marks(&mut b, m)
}

/// A message of a handover, without marks: a handover says them in sections of its own.
fn handed_payload(m: &Message, now: Stamp) -> Bytes {
    let mut b = BytesMut::new();
    put_message(&mut b, m, now);
    seal(b)
}

/// A message held for a session: where it stands, the delivery's own decisions, then the
/// id of the payload record holding the message.
pub fn queued(d: &StoredDelivery) -> Bytes {
    let mut b = BytesMut::with_capacity(32);
    match d.stage {
        None => {
            b.put_u8(0);
            b.put_u16(0);
        }
        Some((InflightState::Published, id)) => {
            b.put_u8(1);
            b.put_u16(id.get());
        }
        Some((InflightState::Released, id)) => {
            b.put_u8(2);
            b.put_u16(id.get());
        }
    }
    b.put_u8(d.qos.as_u8());
    b.put_u8(d.retain as u8);
    b.put_u16(d.subscription_ids.len() as u16);
    for id in &d.subscription_ids {
        b.put_u32(*id);
    }
    put_str(&mut b, d.shared.as_deref().unwrap_or(""));
    b.put_u64(d.message_id);
    seal_as(QUEUED_BY_REF, b)
}

/// The payload id a queued record refers to, read without checking the rest (the store's
/// writer keeps its reference counts with it); `None` for an inline (version 1) record.
pub fn queued_payload_id(raw: &[u8]) -> Option<u64> {
    match raw.first() {
        Some(&QUEUED_BY_REF) if raw.len() >= 13 => {
            let tail: [u8; 8] = raw[raw.len() - 8..].try_into().ok()?;
            Some(u64::from_be_bytes(tail))
        }
        _ => None,
    }
}

/// Read the delivery `seq` of a session; `payload` finds the message of a record that refers
/// to one (`None`: no such payload record).
pub fn read_queued(
    raw: &[u8],
    seq: u64,
    now: Stamp,
    payload: impl FnOnce(u64) -> Option<Arc<Message>>,
) -> Result<StoredDelivery, Corrupt> {
    let (version, mut b) = open_any(raw)?;
    if version != VERSION && version != QUEUED_BY_REF {
        return Err(Corrupt("unknown record version"));
    }
    let state = get_u8(&mut b)?;
    let id = PacketId::new(get_u16(&mut b)?);
    let stage = match (state, id) {
        (0, _) => None,
        (1, Some(id)) => Some((InflightState::Published, id)),
        (2, Some(id)) => Some((InflightState::Released, id)),
        _ => return Err(Corrupt("bad delivery state")),
    };
    let qos = QoS::from_bits(get_u8(&mut b)?).ok_or(Corrupt("bad QoS"))?;
    let retain = get_u8(&mut b)? != 0;
    let n = get_u16(&mut b)?;
    let mut subscription_ids = Vec::with_capacity(n.into());
    for _ in 0..n {
        subscription_ids.push(get_u32(&mut b)?);
    }
    let shared = get_str(&mut b)?;
    let (message, message_id) = if version == QUEUED_BY_REF {
        let id = get_u64(&mut b)?;
        let m = payload(id).ok_or(Corrupt("queued message refers to a missing payload"))?;
        (m, id)
    } else {
        // Written inline before payloads were stored once: it gets an id when next written.
        (Arc::new(get_message(&mut b, now)?), 0)
    };
    Ok(StoredDelivery {
        seq,
        stage,
        qos,
        retain,
        subscription_ids,
        shared: (!shared.is_empty()).then(|| Arc::from(shared.as_str())),
        message,
        message_id,
    })
}

fn options_byte(o: &SubscriptionOptions) -> u8 {
    o.qos.as_u8()
        | (o.no_local as u8) << 2
        | (o.retain_as_published as u8) << 3
        | (o.retain_handling as u8) << 4
}

fn options_from(b: u8) -> Result<SubscriptionOptions, Corrupt> {
    use tern_proto::RetainHandling::*;
    Ok(SubscriptionOptions {
        qos: QoS::from_bits(b & 3).ok_or(Corrupt("bad subscription QoS"))?,
        no_local: b & 4 != 0,
        retain_as_published: b & 8 != 0,
        retain_handling: match (b >> 4) & 3 {
            0 => SendAtSubscribe,
            1 => SendIfNew,
            2 => DoNotSend,
            _ => return Err(Corrupt("bad retain handling")),
        },
    })
}

/// Encode a session record.
pub fn session(s: &SessionSnapshot, now: Stamp) -> Bytes {
    let mut b = BytesMut::new();
    b.put_u8(s.version.level());
    b.put_u32(s.expiry_interval);
    b.put_u64(s.disconnected_at);
    b.put_u32(s.subscriptions.len() as u32);
    for (f, o, id) in &s.subscriptions {
        put_str(&mut b, f);
        b.put_u8(options_byte(o));
        b.put_u32(id.unwrap_or(0));
    }
    match &s.pending_will {
        None => b.put_u8(0),
        Some((at, m)) => {
            b.put_u8(1);
            b.put_u64(*at);
            put_message(&mut b, m, now);
        }
    }
    seal(b)
}

/// Read a session record.
pub fn read_session(raw: &[u8], now: Stamp) -> Result<SessionSnapshot, Corrupt> {
    let mut b = open(raw)?;
    let version = match get_u8(&mut b)? {
        3 => ProtocolVersion::V3_1,
        4 => ProtocolVersion::V3_1_1,
        5 => ProtocolVersion::V5,
        _ => return Err(Corrupt("bad protocol level")),
    };
    let expiry_interval = get_u32(&mut b)?;
    let disconnected_at = get_u64(&mut b)?;
    let n = get_u32(&mut b)?;
    let mut subscriptions = Vec::new();
    for _ in 0..n {
        let f = get_str(&mut b)?;
        let o = options_from(get_u8(&mut b)?)?;
        let id = get_u32(&mut b)?;
        subscriptions.push((f, o, (id != 0).then_some(id)));
    }
    let pending_will = match get_u8(&mut b)? {
        0 => None,
        _ => {
            let at = get_u64(&mut b)?;
            Some((at, Arc::new(get_message(&mut b, now)?)))
        }
    };
    Ok(SessionSnapshot {
        version,
        expiry_interval,
        disconnected_at,
        subscriptions,
        pending_will,
    })
}

/// Encode a session handed to another broker: the session record, the messages (each
/// once), the deliveries referring to them by index, the QoS 2 packet ids.
pub fn handover(h: &Handover, now: Stamp) -> Bytes {
    let mut b = BytesMut::new();
    let session = session(&h.snapshot, now);
    b.put_u32(session.len() as u32);
    b.extend_from_slice(&session);
    // One copy of each message, in order of first use.
    let mut index: std::collections::HashMap<*const Message, u64> = std::collections::HashMap::new();
    let mut messages: Vec<&Arc<Message>> = Vec::new();
    let mut deliveries = Vec::with_capacity(h.deliveries.len());
    for d in &h.deliveries {
        let i = *index.entry(Arc::as_ptr(&d.message)).or_insert_with(|| {
            messages.push(&d.message);
            messages.len() as u64 - 1
        });
        let mut by_index = d.clone();
        by_index.message_id = i;
        deliveries.push(by_index);
    }
    b.put_u32(messages.len() as u32);
    for m in &messages {
        let raw = handed_payload(m, now);
        b.put_u32(raw.len() as u32);
        b.extend_from_slice(&raw);
    }
    b.put_u32(deliveries.len() as u32);
    for d in &deliveries {
        b.put_u64(d.seq);
        let raw = queued(d);
        b.put_u32(raw.len() as u32);
        b.extend_from_slice(&raw);
    }
    b.put_u32(h.qos2.len() as u32);
    for id in &h.qos2 {
        b.put_u16(*id);
    }
    // Added after the first version (a reader of that version stops before it): the
    // messages' backplane ids, so that the broker taking the session in can tell the
    // backplane which messages its deliveries in flight are.
    b.put_u32(messages.len() as u32);
    for m in &messages {
        let (hi, lo) = m.backplane_id().unwrap_or((0, 0));
        b.put_u64(hi);
        b.put_u64(lo);
    }
    // Added after the ids (a reader from before stops before it): where the backplane
    // keeps each message (shard + 1, sequence; 0: not known), so that the broker taking the
    // session in can say how far back its messages go without their arrival times.
    b.put_u32(messages.len() as u32);
    for m in &messages {
        match m.backplane_position() {
            Some((k, seq)) => {
                b.put_u16(k + 1);
                b.put_u64(seq);
            }
            None => {
                b.put_u16(0);
                b.put_u64(0);
            }
        }
    }
    seal(b)
}

/// Read a session written by [`handover`].
pub fn read_handover(raw: &[u8], now: Stamp) -> Result<Handover, Corrupt> {
    let mut b = open(raw)?;
    let snapshot = read_session(&get_chunk(&mut b)?, now)?;
    let n = get_u32(&mut b)?;
    let mut messages = Vec::with_capacity((n as usize).min(b.remaining()));
    for _ in 0..n {
        messages.push(read_payload(&get_chunk(&mut b)?, now)?);
    }
    // The ids come last; the deliveries refer to the messages once they are shared.
    let (sections, mut tail) = {
        let mut rest = b.clone();
        let skip = |r: &mut Bytes| -> Result<(), Corrupt> {
            let n = get_u32(r)?;
            for _ in 0..n {
                get_u64(r)?;
                get_chunk(r)?;
            }
            let n = get_u32(r)? as usize;
            if r.remaining() < 2 * n {
                return Err(Corrupt("truncated"));
            }
            r.advance(2 * n);
            Ok(())
        };
        skip(&mut rest)?;
        (b, rest)
    };
    b = sections;
    if tail.remaining() >= 4 && get_u32(&mut tail)? as usize == messages.len() {
        let taken = std::mem::take(&mut messages);
        for m in taken {
            let id = (get_u64(&mut tail)?, get_u64(&mut tail)?);
            messages.push(if id == (0, 0) { m } else { m.with_backplane_id(id) });
        }
        if tail.remaining() >= 4 && get_u32(&mut tail)? as usize == messages.len() {
            let taken = std::mem::take(&mut messages);
            for m in taken {
                let (k, seq) = (get_u16(&mut tail)?, get_u64(&mut tail)?);
                messages.push(match k {
                    0 => m,
                    k => placed(m, k - 1, seq),
                });
            }
        }
    }
    let messages: Vec<Arc<Message>> = messages.into_iter().map(Arc::new).collect();
    let n = get_u32(&mut b)?;
    let mut deliveries = Vec::with_capacity((n as usize).min(b.remaining()));
    for _ in 0..n {
        let seq = get_u64(&mut b)?;
        let raw = get_chunk(&mut b)?;
        let d = read_queued(&raw, seq, now, |i| {
            usize::try_from(i).ok().and_then(|i| messages.get(i)).cloned()
        })?;
        deliveries.push(d);
    }
    let n = get_u32(&mut b)?;
    let mut qos2 = Vec::with_capacity((n as usize).min(b.remaining()));
    for _ in 0..n {
        qos2.push(get_u16(&mut b)?);
    }
    Ok(Handover {
        snapshot,
        deliveries,
        qos2,
    })
}

/// A length-prefixed part of a record.
fn get_chunk(b: &mut Bytes) -> Result<Bytes, Corrupt> {
    let n = get_u32(b)? as usize;
    if b.remaining() < n {
        return Err(Corrupt("truncated"));
    }
    Ok(b.split_to(n))
}

/// The key of a message: client id, a zero byte (never part of an MQTT string), and the sequence number.
pub fn message_key(client_id: &str, seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(client_id.len() + 9);
    k.extend_from_slice(client_id.as_bytes());
    k.push(0);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// The key of an incoming QoS 2 packet id.
pub fn qos2_key(client_id: &str, id: u16) -> Vec<u8> {
    let mut k = Vec::with_capacity(client_id.len() + 3);
    k.extend_from_slice(client_id.as_bytes());
    k.push(0);
    k.extend_from_slice(&id.to_be_bytes());
    k
}

/// Split a message or QoS 2 key into client id and the number after it.
pub fn split_key(k: &[u8]) -> Result<(ByteString, u64), Corrupt> {
    let pos = k
        .iter()
        .position(|&b| b == 0)
        .ok_or(Corrupt("key without separator"))?;
    let id = std::str::from_utf8(&k[..pos]).map_err(|_| Corrupt("client id is not UTF-8"))?;
    let mut n = 0u64;
    for &b in &k[pos + 1..] {
        n = (n << 8) | u64::from(b);
    }
    Ok((ByteString::from(id), n))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg() -> Message {
        let properties = tern_proto::codec::PublishProperties {
            user_properties: vec![("a".into(), "b".into())],
            ..Default::default()
        };
        Message {
            topic: "t/1".into(),
            payload: Bytes::from_static(b"payload"),
            qos: QoS::ExactlyOnce,
            retain: true,
            properties,
            expires_at: None,
            publisher: Some(Arc::from("pub")),
            stored: Default::default(),
            received_at: None,
            mark: Default::default(),
            placed: 0,
        }
    }

    #[test]
    fn records_round_trip() {
        let now = crate::clock::Clock::system().stamp();
        let id = PacketId::new(7).unwrap();
        let d = StoredDelivery {
            seq: 4,
            stage: Some((InflightState::Released, id)),
            qos: QoS::AtLeastOnce,
            retain: false,
            subscription_ids: vec![3, 9],
            shared: Some(Arc::from("$share/g/t")),
            message: Arc::new(msg()),
            message_id: 42,
        };
        let raw = queued(&d);
        assert_eq!(queued_payload_id(&raw), Some(42));
        let back = read_queued(&raw, 4, now, |p| (p == 42).then(|| d.message.clone())).unwrap();
        assert_eq!(back.stage, Some((InflightState::Released, id)));
        assert_eq!(back.subscription_ids, vec![3, 9]);
        assert_eq!(back.shared.as_deref(), Some("$share/g/t"));
        assert_eq!((back.seq, back.message_id), (4, 42));
        assert!(Arc::ptr_eq(&back.message, &d.message));
        assert!(
            read_queued(&raw, 4, now, |_| None).is_err(),
            "a missing payload is corruption"
        );
        let m = read_payload(&payload(&d.message, now), now).unwrap();
        assert_eq!(m.payload, d.message.payload);
        assert_eq!(m.properties, d.message.properties);
        assert_eq!(m.publisher.as_deref(), Some("pub"));
    }

    #[test]
    fn a_payload_keeps_its_backplane_id_and_place_and_one_without_them_is_read() {
        let now = crate::clock::Clock::system().stamp();
        let mut q2 = msg();
        q2.qos = QoS::ExactlyOnce;
        let tagged = q2.with_backplane_id((5, 77)).placed_at(1, 300);
        let back = read_payload(&payload(&tagged, now), now).unwrap();
        assert_eq!(back.backplane_id(), Some((5, 77)));
        assert_eq!(back.backplane_position(), Some((1, 300)));
        assert_eq!(
            back.backplane_mark().position(),
            Some((1, 300)),
            "a QoS 2 message's marks"
        );
        let id_only = read_payload(&payload(&msg().with_backplane_id((1, 2)), now), now).unwrap();
        assert_eq!(
            (id_only.backplane_id(), id_only.backplane_position()),
            (Some((1, 2)), None)
        );
        // A single broker's: one byte more than before, and nothing known.
        let plain = payload(&msg(), now);
        assert_eq!(plain.len(), handed_payload(&msg(), now).len() + 1);
        let back = read_payload(&plain, now).unwrap();
        assert_eq!((back.backplane_id(), back.backplane_position()), (None, None));
        // Written before the marks were added.
        let old = read_payload(&handed_payload(&tagged, now), now).unwrap();
        assert_eq!((old.backplane_id(), old.backplane_position()), (None, None));
        assert_eq!(old.payload, tagged.payload);
        // Cut marks are corrupt, not misread.
        let raw = payload(&tagged, now);
        let mut body = open(&raw).unwrap();
        body.truncate(body.len() - 3);
        assert!(read_payload(&seal(BytesMut::from(&body[..])), now).is_err());
    }

    #[test]
    fn a_handover_keeps_its_messages_backplane_ids_and_places_and_one_without_them_is_read() {
        let now = crate::clock::Clock::system().stamp();
        let tagged = Arc::new(msg().with_backplane_id((5, 77)).placed_at(1, 300));
        let plain = Arc::new(msg());
        let delivery = |seq: u64, message: &Arc<Message>, stage| StoredDelivery {
            seq,
            stage,
            qos: QoS::ExactlyOnce,
            retain: false,
            subscription_ids: Vec::new(),
            shared: None,
            message: message.clone(),
            message_id: 0,
        };
        let h = Handover {
            snapshot: SessionSnapshot {
                version: ProtocolVersion::V5,
                expiry_interval: 60,
                disconnected_at: 0,
                subscriptions: Vec::new(),
                pending_will: None,
            },
            deliveries: vec![
                delivery(
                    1,
                    &tagged,
                    Some((InflightState::Published, PacketId::new(3).unwrap())),
                ),
                delivery(2, &plain, None),
                delivery(3, &tagged, None),
            ],
            qos2: vec![9],
        };
        let raw = handover(&h, now);
        let back = read_handover(&raw, now).unwrap();
        let ids: Vec<_> = back.deliveries.iter().map(|d| d.message.backplane_id()).collect();
        assert_eq!(ids, vec![Some((5, 77)), None, Some((5, 77))]);
        let places: Vec<_> = back
            .deliveries
            .iter()
            .map(|d| d.message.backplane_position())
            .collect();
        assert_eq!(places, vec![Some((1, 300)), None, Some((1, 300))]);
        assert!(Arc::ptr_eq(
            &back.deliveries[0].message,
            &back.deliveries[2].message
        ));
        assert_eq!(back.qos2, vec![9]);
        // Written before the places were added: the same without its last section.
        let mut body = open(&raw).unwrap();
        body.truncate(body.len() - 4 - 2 * 10);
        let old = read_handover(&seal(BytesMut::from(&body[..])), now).unwrap();
        assert_eq!(old.deliveries[0].message.backplane_id(), Some((5, 77)));
        assert!(old
            .deliveries
            .iter()
            .all(|d| d.message.backplane_position().is_none()));
        // Written before the ids were added: without the two last sections.
        body.truncate(body.len() - 4 - 2 * 16);
        let old = read_handover(&seal(BytesMut::from(&body[..])), now).unwrap();
        assert_eq!(old.deliveries.len(), 3);
        assert!(old.deliveries.iter().all(|d| d.message.backplane_id().is_none()));
        assert_eq!(old.qos2, vec![9]);
    }

    #[test]
    fn inline_queued_records_of_version_1_are_still_read() {
        // Written by Tern before payloads were stored once: the message follows the delivery.
        let now = crate::clock::Clock::system().stamp();
        let mut b = BytesMut::new();
        b.put_u8(1);
        b.put_u16(5);
        b.put_u8(1);
        b.put_u8(0);
        b.put_u16(0);
        put_str(&mut b, "");
        put_message(&mut b, &msg(), now);
        let raw = seal(b);
        assert_eq!(queued_payload_id(&raw), None);
        let back = read_queued(&raw, 1, now, |_| None).unwrap();
        assert_eq!(back.stage.map(|s| s.1.get()), Some(5));
        assert_eq!(&back.message.payload[..], b"payload");
        assert_eq!(back.message_id, 0, "it gets an id when next written");
    }

    #[test]
    fn corruption_is_detected() {
        let now = crate::clock::Clock::system().stamp();
        let mut raw = retained(&msg(), now).to_vec();
        assert!(read_retained(&raw, now).is_ok());
        let last = raw.len() - 1;
        raw[last] ^= 1;
        assert!(read_retained(&raw, now).is_err());
        assert!(read_retained(&raw[..3], now).is_err());
        assert!(read_session(b"\x09\x00\x00\x00\x00", now).is_err());
    }

    #[test]
    fn keys_split_back() {
        let (id, n) = split_key(&message_key("dev/1", 42)).unwrap();
        assert_eq!((&id[..], n), ("dev/1", 42));
    }
}
