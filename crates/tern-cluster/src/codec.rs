//! A broker [`Message`] as a NATS message and back: the payload is the MQTT payload as it is
//! (NATS applications can read Tern's traffic); what else MQTT carries goes in headers.
//!
//! | Header | Value |
//! |---|---|
//! | `Tern-Q` | the QoS it was published with (`0`, `1`, `2`) |
//! | `Tern-R` | `1` when published with RETAIN |
//! | `Tern-N` | the node it was published on (a node skips its own messages: they reached its sessions already) |
//! | `Tern-O` | the publisher's client id, base64 (5.0 No Local on other nodes) |
//! | `Tern-X` | when the 5.0 Message Expiry Interval runs out, Unix milliseconds |
//! | `Tern-P` | the other 5.0 PUBLISH properties, base64 of a 5.0 PUBLISH packet that carries only them |
//! | `Nats-Msg-Id` | (QoS 2 messages and retained writes) `node:run:count`, the run a random number the node drew at start: a retried publish is stored once, and a QoS 2 message's id ([`Message::backplane_id`]) is `(run, count)` on every node |

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_nats::HeaderMap;
use base64::Engine as _;
use bytes::{Bytes, BytesMut};
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
    h.insert(QOS, qos_digit(msg.qos));
    if msg.retain {
        h.insert(RETAIN, "1");
    }
    h.insert(NODE, node);
    if let Some(p) = &msg.publisher {
        h.insert(ORIGIN, B64.encode(p.as_bytes()).as_str());
    }
    if let Some(at) = msg.expires_at {
        let left = at.saturating_duration_since(Instant::now());
        h.insert(EXPIRY, (wall_ms() + left.as_millis() as u64).to_string().as_str());
    }
    let mut props = msg.properties.clone();
    props.message_expiry_interval = None;
    if !props.is_empty() {
        let mut p = Publish::new("p", Bytes::new());
        p.properties = props;
        let mut buf = BytesMut::new();
        if Packet::Publish(p).encode(ProtocolVersion::V5, &mut buf).is_ok() {
            h.insert(PROPS, B64.encode(&buf).as_str());
        }
    }
    h
}

fn qos_digit(q: QoS) -> &'static str {
    match q {
        QoS::AtMostOnce => "0",
        QoS::AtLeastOnce => "1",
        QoS::ExactlyOnce => "2",
    }
}

/// The node a NATS message came from.
pub fn node_of(h: Option<&HeaderMap>) -> Option<&str> {
    h?.get(NODE).map(|v| v.as_str())
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
    if h.get(VOID).is_some() {
        return Err(CodecError::Void);
    }
    let topic = crate::topic::decode_subject(prefix, subject)?;
    let qos = match h.get(QOS).map(|v| v.as_str()) {
        Some("0") => QoS::AtMostOnce,
        Some("1") => QoS::AtLeastOnce,
        Some("2") => QoS::ExactlyOnce,
        _ => return Err(CodecError::Header(QOS)),
    };
    let retain = h.get(RETAIN).is_some_and(|v| v.as_str() == "1");
    let mut msg = Message::new(topic, payload, qos, retain);
    if let Some(o) = h.get(ORIGIN) {
        let id = B64.decode(o.as_str()).map_err(|_| CodecError::Header(ORIGIN))?;
        let id = String::from_utf8(id).map_err(|_| CodecError::Header(ORIGIN))?;
        msg.publisher = Some(Arc::from(id));
    }
    if let Some(p) = h.get(PROPS) {
        let bytes = B64.decode(p.as_str()).map_err(|_| CodecError::Header(PROPS))?;
        let mut buf = BytesMut::from(&bytes[..]);
        match tern_proto::decode(&mut buf, ProtocolVersion::V5, u32::MAX) {
            Ok(tern_proto::Decoded::Packet(Packet::Publish(p))) => msg.properties = p.properties,
            _ => return Err(CodecError::Header(PROPS)),
        }
    }
    if let Some(x) = h.get(EXPIRY) {
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

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn a_message_without_qos_header_is_refused() {
        let h = HeaderMap::new();
        assert!(decode("", "u.a", Some(&h), Bytes::new()).is_err());
    }
}
