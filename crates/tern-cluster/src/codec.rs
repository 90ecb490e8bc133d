//! A broker [`Message`] as a NATS message and back: the payload is the MQTT payload as it is
//! (NATS applications can read Tern's traffic), except in a pack; what else MQTT carries
//! goes in headers.
//!
//! QoS 0 messages that wait together to be handed to NATS and differ only in their payload
//! (one publisher, one topic, no properties) travel as one NATS message, a pack
//! ([`pack`], header `Tern-K`): what core NATS costs is paid per NATS message, not per byte.
//! `cluster.qos0_pack = 1` turns packs off. QoS 1 messages that wait together to be stored
//! and differ only in their payload are stored as one pack in their publisher's shard stream
//! ([`packable_stored`]; `cluster.qos1_pack = 1` turns those off): JetStream's cost is per
//! stored message too. A stored pack's messages share its stream sequence.
//!
//! | Header | Value |
//! |---|---|
//! | `Tern-Q` | the QoS it was published with (`0`, `1`, `2`) |
//! | `Tern-R` | `1` when published with RETAIN |
//! | `Tern-N` | the node it was published on (a node skips its own messages: they reached its sessions already) |
//! | `Tern-O` | the publisher's client id, base64 (5.0 No Local on other nodes) |
//! | `Tern-X` | when the 5.0 Message Expiry Interval runs out, Unix milliseconds |
//! | `Tern-P` | the other 5.0 PUBLISH properties, base64 of a 5.0 PUBLISH packet that carries only them |
//! | `Tern-K` | (QoS 0, and stored QoS 1) the NATS message is a pack of this many messages ([`pack`]) |
//! | `Tern-S` | (stored QoS 1/2 messages and packs) `run.n`: the run of its node and its number among that run's first attempts to store in its shard, in the order they went out: readers put a run's messages back in that order where JetStream stored a later one first (`order.rs`) |
//! | `Tern-C` | (QoS 0 of a client) `run.conn.count`: the run of its node (a random number drawn at start), the publishing connection's id there and how many QoS 0 messages it had published with this one (a pack's last), for flow control (`flow.rs`) |
//! | `Nats-Msg-Id` | (QoS 2 messages and retained writes) `node:run:count`, the run a random number the node drew at start: a retried publish is stored once, and a QoS 2 message's id ([`Message::backplane_id`]) is `(run, count)` on every node |

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_nats::HeaderMap;
use base64::Engine as _;
use bytes::{Bytes, BytesMut};
use tern_broker::backplane::Sent;
use tern_broker::Message;
use tern_proto::{Packet, ProtocolVersion, Publish, QoS};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// Header names.
pub const QOS: &str = "Tern-Q";
/// RETAIN flag.
pub const RETAIN: &str = "Tern-R";
/// Node of origin.
pub const NODE: &str = "Tern-N";
/// Publisher's client id.
pub const ORIGIN: &str = "Tern-O";
/// Expiry deadline.
pub const EXPIRY: &str = "Tern-X";
/// The other 5.0 properties.
pub const PROPS: &str = "Tern-P";
/// A placeholder, not a message (stored to learn whether a message id is taken, see
/// `sessions.rs`, `Directory::stored`): never delivered.
pub const VOID: &str = "Tern-V";

/// The number of messages in a pack ([`pack`]).
pub const PACK: &str = "Tern-K";
/// A client's QoS 0 message's number among its connection's ([`set_sent`]).
pub const SENT: &str = "Tern-C";
/// A stored message's number among its node's first attempts to its shard ([`set_order`]).
pub const ORDER: &str = "Tern-S";
/// Messages in one pack, at most (`cluster.qos0_pack` says how many a node packs).
pub const PACK_MAX: usize = 1024;
/// Payload bytes of one pack, at most (with the lengths; the sender also keeps a pack with
/// its headers within NATS' `max_payload`, [`pack_room`]): a larger message travels alone.
pub const PACK_BYTES: usize = 64 * 1024;

/// The header names as NATS header names, made without allocating (a `&str` name is copied
/// into a new name at every `get` and `insert`).
mod names {
    use async_nats::header::HeaderName;

    pub const QOS: HeaderName = HeaderName::from_static(super::QOS);
    pub const RETAIN: HeaderName = HeaderName::from_static(super::RETAIN);
    pub const NODE: HeaderName = HeaderName::from_static(super::NODE);
    pub const ORIGIN: HeaderName = HeaderName::from_static(super::ORIGIN);
    pub const EXPIRY: HeaderName = HeaderName::from_static(super::EXPIRY);
    pub const PROPS: HeaderName = HeaderName::from_static(super::PROPS);
    pub const VOID: HeaderName = HeaderName::from_static(super::VOID);
    pub const PACK: HeaderName = HeaderName::from_static(super::PACK);
    pub const SENT: HeaderName = HeaderName::from_static(super::SENT);
    pub const ORDER: HeaderName = HeaderName::from_static(super::ORDER);
}

/// Why a NATS message is not a Tern message.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// A header is missing or has a value Tern never writes.
    #[error("header {0}: missing or not as Tern writes it")]
    Header(&'static str),
    /// The subject is not an encoded topic.
    #[error(transparent)]
    Subject(#[from] crate::topic::DecodeError),
    /// A placeholder ([`VOID`]), not a message.
    #[error("a placeholder, not a message")]
    Void,
    /// A pack ([`PACK`]) whose payload does not hold as many messages as it says.
    #[error("a pack whose payload does not hold the messages its header counts")]
    Pack,
}

/// Wall-clock milliseconds since the Unix epoch.
pub fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The headers of `msg` published on `node`.
pub fn headers(msg: &Message, node: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(names::QOS, qos_digit(msg.qos));
    if msg.retain {
        h.insert(names::RETAIN, "1");
    }
    h.insert(names::NODE, node);
    if let Some(p) = &msg.publisher {
        h.insert(names::ORIGIN, B64.encode(p.as_bytes()).as_str());
    }
    if let Some(at) = msg.expires_at {
        let left = at.saturating_duration_since(Instant::now());
        h.insert(
            names::EXPIRY,
            (wall_ms() + left.as_millis() as u64).to_string().as_str(),
        );
    }
    let mut props = msg.properties.clone();
    props.message_expiry_interval = None;
    if !props.is_empty() {
        let mut p = Publish::new("p", Bytes::new());
        p.properties = props;
        let mut buf = BytesMut::new();
        if Packet::Publish(p).encode(ProtocolVersion::V5, &mut buf).is_ok() {
            h.insert(names::PROPS, B64.encode(&buf).as_str());
        }
    }
    h
}

/// Whether `next` may travel in one pack with `first`: both QoS 0 and not retained, from
/// the same publisher to the same topic, without properties or expiry (the pack's headers
/// say what holds for every message in it).
pub fn packable(first: &Message, next: &Message) -> bool {
    let plain = |m: &Message| {
        m.qos == QoS::AtMostOnce && !m.retain && m.expires_at.is_none() && m.properties.is_empty()
    };
    plain(first) && plain(next) && first.topic == next.topic && first.publisher == next.publisher
}

/// Whether `msg` may be stored in one pack with others of its publisher to its topic (the
/// store task checks those): QoS 1 and not retained, without properties or expiry, as
/// [`packable`] has it for QoS 0. QoS 2 messages are stored alone: each has its own
/// `Nats-Msg-Id` and place, which exactly-once delivery across nodes relies on.
pub fn packable_stored(msg: &Message) -> bool {
    msg.qos == QoS::AtLeastOnce && !msg.retain && msg.expires_at.is_none() && msg.properties.is_empty()
}

/// The bytes a pack whose first message has `headers` may carry (with the lengths) within
/// NATS' `max_payload`: [`PACK_BYTES`] at most, less what the headers (and the [`PACK`]
/// header still to come) take on the wire.
pub fn pack_room(headers: &HeaderMap, max_payload: usize) -> usize {
    // As NATS writes them: "NATS/1.0\r\n", "<name>: <value>\r\n" each, "\r\n".
    let mut wire = 12 + PACK.len() + 4 + 4;
    for (name, values) in headers.iter() {
        for v in values {
            wire += AsRef::<str>::as_ref(name).len() + 4 + v.as_str().len();
        }
    }
    max_payload.saturating_sub(wire).min(PACK_BYTES)
}

/// The payload of a pack of `payloads`, written into `buf`: each payload after its length
/// (4 bytes, big endian). The pack's headers are those of its first message ([`headers`])
/// with [`PACK`] set to how many there are.
pub fn pack<'a>(payloads: impl IntoIterator<Item = &'a Bytes>, buf: &mut BytesMut) -> Bytes {
    for p in payloads {
        buf.reserve(4 + p.len());
        buf.extend_from_slice(&(p.len() as u32).to_be_bytes());
        buf.extend_from_slice(p);
    }
    buf.split().freeze()
}

/// The `n` payloads of a pack, in order, without copying them.
pub fn unpack(payload: &Bytes, n: usize) -> Result<Vec<Bytes>, CodecError> {
    let mut parts = Vec::with_capacity(n);
    let mut at = 0;
    while at < payload.len() {
        let len = payload
            .get(at..at + 4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
            .ok_or(CodecError::Pack)?;
        let end = (at + 4)
            .checked_add(len)
            .filter(|&e| e <= payload.len())
            .ok_or(CodecError::Pack)?;
        if parts.len() == n {
            return Err(CodecError::Pack);
        }
        parts.push(payload.slice(at + 4..end));
        at = end;
    }
    if parts.len() != n {
        return Err(CodecError::Pack);
    }
    Ok(parts)
}

fn qos_digit(q: QoS) -> &'static str {
    match q {
        QoS::AtMostOnce => "0",
        QoS::AtLeastOnce => "1",
        QoS::ExactlyOnce => "2",
    }
}

/// What a flow control word says of one connection (`flow.rs`): the run of its node, its
/// id there, and how far it may go (`None`: as far as it likes).
pub type FlowLine = (u64, u64, Option<u64>);

/// Connections one flow control word names at most (more lines are not read).
pub const FLOW_LINES: usize = 512;

/// A node's name as it may travel in a header or a word: a subject token (letters, digits,
/// `-`, `_`, as `cluster.node_name` allows), 64 bytes at most.
pub fn valid_node(node: &str) -> bool {
    !node.is_empty()
        && node.len() <= 64
        && node
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A flow control word from node `me`: its name on the first line, then per connection
/// `run conn up_to`, or `run conn -` (as far as it likes).
pub fn flow_word(me: &str, lines: &[FlowLine]) -> String {
    use std::fmt::Write as _;
    let mut word = String::from(me);
    for (run, conn, up_to) in lines {
        let _ = match up_to {
            Some(n) => write!(word, "\n{run} {conn} {n}"),
            None => write!(word, "\n{run} {conn} -"),
        };
    }
    word
}

/// A flow control word ([`flow_word`]) as another node sent it: the node, and what it says
/// of at most [`FLOW_LINES`] connections (lines that are not `run conn up_to` or
/// `run conn -` left out); `None` when it does not start with a node's name.
pub fn parse_flow_word(word: &[u8]) -> Option<(&str, Vec<FlowLine>)> {
    let text = std::str::from_utf8(word).ok()?;
    let mut lines = text.split('\n');
    let node = lines.next().filter(|n| valid_node(n))?;
    let said = lines
        .take(FLOW_LINES)
        .filter_map(|l| {
            let mut parts = l.split(' ');
            let run = parts.next()?.parse().ok()?;
            let conn = parts.next()?.parse().ok()?;
            let up_to = match parts.next()? {
                "-" => None,
                n => Some(n.parse().ok()?),
            };
            parts.next().is_none().then_some((run, conn, up_to))
        })
        .collect();
    Some((node, said))
}

/// The node a NATS message came from.
pub fn node_of(h: Option<&HeaderMap>) -> Option<&str> {
    h?.get(names::NODE).map(|v| v.as_str())
}

/// The publisher of a NATS message as its `Tern-O` header has it (base64 of the client id).
pub fn origin_of(h: &HeaderMap) -> Option<&str> {
    h.get(names::ORIGIN).map(|v| v.as_str())
}

/// Say which of its connection's QoS 0 messages this one is (the last, for a pack), and
/// the node's `run`.
pub fn set_sent(h: &mut HeaderMap, run: u64, sent: Sent) {
    h.insert(
        names::SENT,
        format!("{run}.{}.{}", sent.conn_id, sent.count).as_str(),
    );
}

/// The run and the number [`set_sent`] wrote, if they are.
pub fn sent_of(h: &HeaderMap) -> Option<(u64, Sent)> {
    let mut parts = h.get(names::SENT)?.as_str().split('.');
    let run = parts.next()?.parse().ok()?;
    let sent = Sent {
        conn_id: parts.next()?.parse().ok()?,
        count: parts.next()?.parse().ok()?,
    };
    parts.next().is_none().then_some((run, sent))
}

/// Say that this stored message is number `n` among the first attempts of the node's `run`
/// to its shard (`order.rs`).
pub fn set_order(h: &mut HeaderMap, run: u64, n: u64) {
    h.insert(names::ORDER, format!("{run}.{n}").as_str());
}

/// The run and number [`set_order`] wrote, if they are.
pub fn order_of(h: Option<&HeaderMap>) -> Option<(u64, u64)> {
    let (run, n) = h?.get(names::ORDER)?.as_str().split_once('.')?;
    Some((run.parse().ok()?, n.parse().ok()?))
}

/// The `Nats-Msg-Id` of the message with `id` published on `node`.
pub fn message_id(node: &str, id: (u64, u64)) -> String {
    format!("{node}:{}:{}", id.0, id.1)
}

/// The message id a `Nats-Msg-Id` header carries (see [`message_id`]).
pub fn id_of(h: Option<&HeaderMap>) -> Option<(u64, u64)> {
    let v = h?.get(async_nats::header::NATS_MESSAGE_ID)?;
    let mut parts = v.as_str().rsplitn(3, ':');
    let count = parts.next()?.parse().ok()?;
    let run = parts.next()?.parse().ok()?;
    parts.next()?;
    Some((run, count))
}

/// The message a node published as `subject` (under `prefix`) with `headers` and `payload`.
pub fn decode(
    prefix: &str,
    subject: &str,
    headers: Option<&HeaderMap>,
    payload: Bytes,
) -> Result<Message, CodecError> {
    let empty = HeaderMap::new();
    let h = headers.unwrap_or(&empty);
    if h.get(names::VOID).is_some() {
        return Err(CodecError::Void);
    }
    let topic = crate::topic::decode_subject(prefix, subject)?;
    let qos = match h.get(names::QOS).map(|v| v.as_str()) {
        Some("0") => QoS::AtMostOnce,
        Some("1") => QoS::AtLeastOnce,
        Some("2") => QoS::ExactlyOnce,
        _ => return Err(CodecError::Header(QOS)),
    };
    let retain = h.get(names::RETAIN).is_some_and(|v| v.as_str() == "1");
    let mut msg = Message::new(topic, payload, qos, retain);
    if let Some(o) = h.get(names::ORIGIN) {
        let id = B64.decode(o.as_str()).map_err(|_| CodecError::Header(ORIGIN))?;
        let id = String::from_utf8(id).map_err(|_| CodecError::Header(ORIGIN))?;
        msg.publisher = Some(Arc::from(id));
    }
    if let Some(p) = h.get(names::PROPS) {
        let bytes = B64.decode(p.as_str()).map_err(|_| CodecError::Header(PROPS))?;
        let mut buf = BytesMut::from(&bytes[..]);
        match tern_proto::decode(&mut buf, ProtocolVersion::V5, u32::MAX) {
            Ok(tern_proto::Decoded::Packet(Packet::Publish(p))) => msg.properties = p.properties,
            _ => return Err(CodecError::Header(PROPS)),
        }
    }
    if let Some(x) = h.get(names::EXPIRY) {
        let at: u64 = x.as_str().parse().map_err(|_| CodecError::Header(EXPIRY))?;
        let left = Duration::from_millis(at.saturating_sub(wall_ms()));
        msg.expires_at = Some(Instant::now() + left);
        // Delivery writes the interval that is left (from `expires_at`).
        msg.properties.message_expiry_interval = Some(left.as_secs() as u32);
    }
    if qos == QoS::ExactlyOnce {
        if let Some(id) = id_of(Some(h)) {
            msg = msg.with_backplane_id(id);
        }
    }
    Ok(msg)
}

/// How many messages a NATS message carries, as its headers say (1 unless a pack says more;
/// a pack's payload is checked when it is decoded).
pub fn count(headers: Option<&HeaderMap>) -> usize {
    headers
        .and_then(|h| h.get(names::PACK))
        .and_then(|n| n.as_str().parse().ok())
        .map_or(1, |n: usize| n.clamp(1, PACK_MAX))
}

/// The messages a NATS message carries, in order: one, or a pack's ([`PACK`]), the first
/// apart (a lone message costs no `Vec`).
pub fn decode_all(
    prefix: &str,
    subject: &str,
    headers: Option<&HeaderMap>,
    payload: Bytes,
) -> Result<(Message, Vec<Message>), CodecError> {
    let Some(n) = headers.and_then(|h| h.get(names::PACK)) else {
        return decode(prefix, subject, headers, payload).map(|m| (m, Vec::new()));
    };
    let n: usize = n
        .as_str()
        .parse()
        .ok()
        .filter(|n| (1..=PACK_MAX).contains(n))
        .ok_or(CodecError::Header(PACK))?;
    let first = decode(prefix, subject, headers, Bytes::new())?;
    // As Tern packs them (`packable`, `packable_stored`): QoS 0 or 1, not retained, without
    // properties or expiry (properties copied to each of a pack's messages would multiply
    // what one NATS message can make a node hold).
    if first.qos == QoS::ExactlyOnce
        || first.retain
        || !first.properties.is_empty()
        || first.expires_at.is_some()
    {
        return Err(CodecError::Header(PACK));
    }
    let like = |payload: Bytes| {
        let mut m = Message::new(first.topic.clone(), payload, first.qos, false);
        m.publisher = first.publisher.clone();
        m
    };
    let mut parts = unpack(&payload, n)?.into_iter();
    let head = like(parts.next().ok_or(CodecError::Pack)?);
    Ok((head, parts.map(like).collect()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flow_words_come_back_and_bad_ones_are_refused() {
        let lines = vec![(9, 7, Some(120)), (9, 8, None), (u64::MAX, 0, Some(u64::MAX))];
        let word = flow_word("tern-b", &lines);
        assert_eq!(parse_flow_word(word.as_bytes()), Some(("tern-b", lines)));
        let (node, said) =
            parse_flow_word(b"tern-b\n9 7 120\n9 8 -\nbad line\n9 9 x\n1 2 3 4\n9 10\n\n1 +2 3")
                .expect("a word");
        assert_eq!(node, "tern-b");
        assert_eq!(said, vec![(9, 7, Some(120)), (9, 8, None), (1, 2, Some(3))]);
        assert!(parse_flow_word(b"").is_none());
        assert!(parse_flow_word(b"a.b\n1 2 3").is_none(), "not a node name");
        assert!(parse_flow_word(&[0xff, 0xfe]).is_none());
        let many = flow_word(
            "b",
            &(0..2 * FLOW_LINES as u64)
                .map(|i| (1, i, Some(1)))
                .collect::<Vec<_>>(),
        );
        assert_eq!(
            parse_flow_word(many.as_bytes()).expect("a word").1.len(),
            FLOW_LINES
        );
    }

    #[test]
    fn a_qos0_messages_number_comes_back_and_a_malformed_one_is_none() {
        let mut h = HeaderMap::new();
        let sent = Sent {
            conn_id: 12,
            count: u64::MAX,
        };
        set_sent(&mut h, 7, sent);
        assert_eq!(sent_of(&h), Some((7, sent)));
        for bad in ["", "1.2", "1.2.3.4", "a.2.3", "1..3", "-1.2.3"] {
            let mut h = HeaderMap::new();
            h.insert(SENT, bad);
            assert_eq!(sent_of(&h), None, "{bad:?}");
        }
        assert_eq!(sent_of(&HeaderMap::new()), None);
    }

    #[test]
    fn a_stored_messages_order_comes_back_and_a_malformed_one_is_none() {
        let mut h = HeaderMap::new();
        set_order(&mut h, u64::MAX, 41);
        assert_eq!(order_of(Some(&h)), Some((u64::MAX, 41)));
        for bad in ["", "1", "1.2.3", "a.2", "1.", ".2", "-1.2"] {
            let mut h = HeaderMap::new();
            h.insert(ORDER, bad);
            assert_eq!(order_of(Some(&h)), None, "{bad:?}");
        }
        assert_eq!(order_of(Some(&HeaderMap::new())), None);
        assert_eq!(order_of(None), None);
    }

    proptest::proptest! {
        /// Any value in a `Tern-S` header (from NATS: anyone may publish on Tern's subjects)
        /// is read or refused, never a panic; what is read is written back the same.
        #[test]
        fn any_order_header_is_read_or_refused(value in "[ -~]{0,48}", run: u64, n: u64) {
            let mut h = HeaderMap::new();
            h.insert(ORDER, value.as_str());
            if let Some((r, k)) = order_of(Some(&h)) {
                let mut again = HeaderMap::new();
                set_order(&mut again, r, k);
                proptest::prop_assert_eq!(order_of(Some(&again)), Some((r, k)));
            }
            let mut h = HeaderMap::new();
            set_order(&mut h, run, n);
            proptest::prop_assert_eq!(order_of(Some(&h)), Some((run, n)));
        }
    }

    #[test]
    fn a_message_with_every_property_comes_back_the_same() {
        let mut m = Message::new(
            "a b/$x/ö",
            Bytes::from_static(b"\0payload"),
            QoS::ExactlyOnce,
            true,
        );
        m.publisher = Some(Arc::from("client\r\n id"));
        m.properties.content_type = Some("text/plain".into());
        m.properties.response_topic = Some("r/t".into());
        m.properties.correlation_data = Some(Bytes::from_static(b"\x01\x02"));
        m.properties.payload_format_indicator = Some(1);
        m.properties.user_properties.push(("k".into(), "v".into()));
        m.properties.message_expiry_interval = Some(100);
        m.expires_at = Some(Instant::now() + Duration::from_secs(100));
        let h = headers(&m, "n1");
        let subject = crate::topic::encode_topic("tern.t", &m.topic);
        let back = decode("tern.t", &subject, Some(&h), m.payload.clone()).expect("decodes");
        assert_eq!(back.topic, m.topic);
        assert_eq!(back.payload, m.payload);
        assert_eq!((back.qos, back.retain), (m.qos, m.retain));
        assert_eq!(back.publisher, m.publisher);
        assert_eq!(back.properties.content_type, m.properties.content_type);
        assert_eq!(back.properties.response_topic, m.properties.response_topic);
        assert_eq!(back.properties.correlation_data, m.properties.correlation_data);
        assert_eq!(back.properties.payload_format_indicator, Some(1));
        assert_eq!(back.properties.user_properties, m.properties.user_properties);
        let left = back.properties.message_expiry_interval.expect("expiry");
        assert!((98..=100).contains(&left), "{left}");
        assert_eq!(node_of(Some(&h)), Some("n1"));
    }

    #[test]
    fn a_qos2_message_keeps_its_id_on_every_node() {
        let m = Message::new("t", Bytes::new(), QoS::ExactlyOnce, false);
        let mut h = headers(&m, "node:with:colons");
        let id = (u64::MAX, 7);
        h.insert(
            async_nats::header::NATS_MESSAGE_ID,
            message_id("node:with:colons", id).as_str(),
        );
        let subject = crate::topic::encode_topic("tern.t", "t");
        let back = decode("tern.t", &subject, Some(&h), Bytes::new()).expect("decodes");
        assert_eq!(back.backplane_id(), Some(id));
        h.insert(async_nats::header::NATS_MESSAGE_ID, "no id");
        let back = decode("tern.t", &subject, Some(&h), Bytes::new()).expect("decodes");
        assert_eq!(back.backplane_id(), None, "an id Tern did not write is no id");
    }

    #[test]
    fn a_placeholder_is_never_taken_for_a_message() {
        // Even with every header of a message: the placeholder's mark wins.
        let m = Message::new("t", Bytes::new(), QoS::ExactlyOnce, false);
        let mut h = headers(&m, "n1");
        h.insert(VOID, "1");
        let subject = crate::topic::encode_topic("tern.t", "$tern/void");
        assert!(matches!(
            decode("tern.t", &subject, Some(&h), Bytes::new()),
            Err(CodecError::Void)
        ));
    }

    fn plain(topic: &str, payload: &'static [u8], publisher: &str) -> Message {
        let mut m = Message::new(topic, Bytes::from_static(payload), QoS::AtMostOnce, false);
        m.publisher = Some(Arc::from(publisher));
        m
    }

    #[test]
    fn only_plain_qos0_messages_of_one_publisher_to_one_topic_are_packed() {
        let a = plain("t/1", b"a", "p");
        assert!(packable(&a, &plain("t/1", b"other payload", "p")));
        assert!(!packable(&a, &plain("t/2", b"a", "p")), "another topic");
        assert!(!packable(&a, &plain("t/1", b"a", "q")), "another publisher");
        let mut b = plain("t/1", b"a", "p");
        b.qos = QoS::AtLeastOnce;
        assert!(!packable(&a, &b), "QoS 1");
        let mut b = plain("t/1", b"a", "p");
        b.retain = true;
        assert!(!packable(&a, &b), "retained");
        let mut b = plain("t/1", b"a", "p");
        b.properties.content_type = Some("text/plain".into());
        assert!(!packable(&a, &b) && !packable(&b, &a), "properties");
        let mut b = plain("t/1", b"a", "p");
        b.expires_at = Some(Instant::now() + Duration::from_secs(5));
        assert!(!packable(&a, &b) && !packable(&b, &a), "expiry");
        // Stored packs: plain QoS 1 only (the store task checks publisher and topic).
        let q = |f: fn(&mut Message)| {
            let mut m = plain("t/1", b"a", "p");
            m.qos = QoS::AtLeastOnce;
            f(&mut m);
            packable_stored(&m)
        };
        assert!(q(|_| {}));
        assert!(!q(|m| m.qos = QoS::ExactlyOnce), "QoS 2");
        assert!(!q(|m| m.qos = QoS::AtMostOnce), "QoS 0");
        assert!(!q(|m| m.retain = true), "retained");
        assert!(!q(|m| m.properties.content_type = Some("x".into())), "properties");
        assert!(!q(|m| m.expires_at = Some(Instant::now())), "expiry");
    }

    #[test]
    fn a_pack_comes_back_as_its_messages_in_order() {
        let ms = [
            plain("a b/$x", b"", "p"),
            plain("a b/$x", b"\0\xff two", "p"),
            plain("a b/$x", b"3", "p"),
        ];
        let mut h = headers(&ms[0], "n1");
        h.insert(PACK, "3");
        assert_eq!(count(Some(&h)), 3);
        let payload = pack(ms.iter().map(|m| &m.payload), &mut BytesMut::new());
        let subject = crate::topic::encode_topic("tern.t", "a b/$x");
        let (first, rest) = decode_all("tern.t", &subject, Some(&h), payload).expect("decodes");
        let back: Vec<Message> = std::iter::once(first).chain(rest).collect();
        assert_eq!(back.len(), 3);
        for (b, m) in back.iter().zip(&ms) {
            assert_eq!(
                (&b.topic, &b.payload, b.qos, b.retain),
                (&m.topic, &m.payload, m.qos, m.retain)
            );
            assert_eq!(b.publisher, m.publisher);
        }
        // A stored QoS 1 pack: its messages are QoS 1.
        let mut q1 = plain("a b/$x", b"", "p");
        q1.qos = QoS::AtLeastOnce;
        assert!(packable_stored(&q1) && !packable_stored(&ms[0]));
        let mut h1 = headers(&q1, "n1");
        h1.insert(PACK, "3");
        let payload = pack(ms.iter().map(|m| &m.payload), &mut BytesMut::new());
        let (first, rest) = decode_all("tern.t", &subject, Some(&h1), payload).expect("decodes");
        assert_eq!(rest.len(), 2);
        assert!(std::iter::once(&first)
            .chain(&rest)
            .all(|m| m.qos == QoS::AtLeastOnce && m.publisher == q1.publisher));
        assert_eq!(&rest[0].payload[..], b"\0\xff two");
        // A lone message is not a pack: its payload is the message's.
        let h = headers(&ms[1], "n1");
        let (one, rest) = decode_all("tern.t", &subject, Some(&h), ms[1].payload.clone()).expect("decodes");
        assert_eq!((one.payload, rest.len()), (ms[1].payload.clone(), 0));
    }

    #[test]
    fn a_pack_that_does_not_hold_what_it_counts_is_refused() {
        let m = plain("t", b"", "p");
        let subject = crate::topic::encode_topic("tern.t", "t");
        let two = pack(
            [Bytes::from_static(b"ab"), Bytes::from_static(b"c")].iter(),
            &mut BytesMut::new(),
        );
        let decode_as = |n: &str, payload: &Bytes| {
            let mut h = headers(&m, "n1");
            h.insert(PACK, n);
            decode_all("tern.t", &subject, Some(&h), payload.clone()).map(|(_, rest)| rest.len() + 1)
        };
        assert_eq!(decode_as("2", &two).ok(), Some(2));
        for n in ["1", "3", "0", "1025", "-1", "two", ""] {
            assert!(decode_as(n, &two).is_err(), "count {n:?}");
        }
        for cut in [1, 3, 4, 5, two.len() - 1] {
            assert!(decode_as("2", &two.slice(..cut)).is_err(), "cut at {cut}");
        }
        let mut long = BytesMut::from(&two[..]);
        long.extend_from_slice(&[0, 0, 0]);
        assert!(
            decode_as("2", &long.freeze()).is_err(),
            "bytes after the last message"
        );
        let huge = Bytes::from_static(&[0xff, 0xff, 0xff, 0xff, 1]);
        assert!(decode_as("1", &huge).is_err(), "a length beyond the payload");
        // Only QoS 0 and 1 messages that are not retained, without properties or expiry, are
        // packed: a pack with any of those in its headers is refused.
        let mut props = Message::new("t", Bytes::new(), QoS::AtMostOnce, false);
        props.properties.user_properties.push(("k".into(), "v".into()));
        let mut expiring = Message::new("t", Bytes::new(), QoS::AtMostOnce, false);
        expiring.expires_at = Some(Instant::now() + Duration::from_secs(60));
        for q in [
            Message::new("t", Bytes::new(), QoS::ExactlyOnce, false),
            Message::new("t", Bytes::new(), QoS::AtLeastOnce, true),
            Message::new("t", Bytes::new(), QoS::AtMostOnce, true),
            props,
            expiring,
        ] {
            let mut h = headers(&q, "n1");
            h.insert(PACK, "2");
            assert!(decode_all("tern.t", &subject, Some(&h), two.clone()).is_err());
        }
    }

    #[test]
    fn a_pack_with_its_headers_stays_within_max_payload() {
        let mut m = plain("t", b"", "a client id of some length");
        m.publisher = Some(Arc::from("x".repeat(300)));
        let h = headers(&m, "node-a");
        assert_eq!(pack_room(&h, 1 << 20), PACK_BYTES);
        let room = pack_room(&h, 4096);
        let mut with_count = h.clone();
        with_count.insert(PACK, PACK_MAX.to_string().as_str());
        let wire: usize = 12
            + with_count
                .iter()
                .map(|(n, vs)| {
                    vs.iter()
                        .map(|v| AsRef::<str>::as_ref(n).len() + 4 + v.as_str().len())
                        .sum::<usize>()
                })
                .sum::<usize>();
        assert!(room + wire <= 4096, "{room} + {wire}");
        assert!(room > 3000, "{room}: the headers take about 450 bytes");
        assert_eq!(pack_room(&h, 100), 0);
    }

    #[test]
    fn a_message_without_qos_header_is_refused() {
        let h = HeaderMap::new();
        assert!(decode("", "u.a", Some(&h), Bytes::new()).is_err());
    }
}
