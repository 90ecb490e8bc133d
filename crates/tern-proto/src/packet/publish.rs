//! PUBLISH (section 3.3).

use bytes::{BufMut, Bytes, BytesMut};
use bytestring::ByteString;

use super::v5_only;
use crate::codec::properties::{PropertySet, PublishProperties};
use crate::codec::reader::Reader;
use crate::codec::writer::{field_len, put_field};
use crate::topic::{validate_topic_name, TopicError};
use crate::{DecodeError, EncodeError, PacketId, ProtocolVersion, QoS};

/// PUBLISH: an application message.
///
/// `topic` and `payload` are slices of the buffer the packet was decoded from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    /// DUP flag: this may be a re-delivery.
    pub dup: bool,
    /// Quality of service.
    pub qos: QoS,
    /// RETAIN flag.
    pub retain: bool,
    /// Topic Name (empty in 5.0 when a Topic Alias stands for it).
    pub topic: ByteString,
    /// Packet Identifier, present exactly when QoS > 0.
    pub packet_id: Option<PacketId>,
    /// PUBLISH properties (5.0).
    pub properties: PublishProperties,
    /// Application payload.
    pub payload: Bytes,
}

impl Publish {
    /// A QoS 0 PUBLISH without properties.
    pub fn new(topic: impl Into<ByteString>, payload: impl Into<Bytes>) -> Publish {
        Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: topic.into(),
            packet_id: None,
            properties: PublishProperties::default(),
            payload: payload.into(),
        }
    }

    /// Append this PUBLISH, encoded for `version`, to `buf`; returns the bytes
    /// appended. The same as [`crate::Packet::encode`] of `Packet::Publish`, without
    /// moving the PUBLISH into a [`crate::Packet`] first.
    ///
    /// ```
    /// use tern_proto::{Packet, ProtocolVersion, Publish};
    /// let p = Publish::new("a/b", "hi");
    /// let mut direct = bytes::BytesMut::new();
    /// let n = p.encode(ProtocolVersion::V5, &mut direct).unwrap();
    /// let mut wrapped = bytes::BytesMut::new();
    /// Packet::Publish(p).encode(ProtocolVersion::V5, &mut wrapped).unwrap();
    /// assert_eq!((n, direct), (wrapped.len(), wrapped));
    /// ```
    pub fn encode(&self, version: ProtocolVersion, buf: &mut BytesMut) -> Result<usize, EncodeError> {
        let first = ((crate::PacketType::Publish as u8) << 4) | self.flags();
        super::frame(first, self.body_len(version)?, buf, |buf| {
            self.write(version, buf)
        })
    }

    pub(crate) fn flags(&self) -> u8 {
        ((self.dup as u8) << 3) | (self.qos.as_u8() << 1) | self.retain as u8
    }

    pub(crate) fn decode(flags: u8, r: &mut Reader, v: ProtocolVersion) -> Result<Publish, DecodeError> {
        // [MQTT-3.3.1-4]
        let qos = QoS::from_bits((flags >> 1) & 0x03).ok_or(DecodeError::InvalidQoS)?;
        let dup = flags & 0x08 != 0;
        // [MQTT-3.3.1-2]
        if dup && qos == QoS::AtMostOnce {
            return Err(DecodeError::DupOnQoS0);
        }
        let topic = r.string("topic name")?;
        let packet_id = if qos == QoS::AtMostOnce {
            None
        } else {
            Some(r.packet_id()?)
        };
        let properties = if v.is_v5() {
            PublishProperties::decode(r)?
        } else {
            PublishProperties::default()
        };
        if topic.is_empty() {
            // v5 section 3.3.2.3.4: an empty topic needs a Topic Alias; 3.1.1 [MQTT-4.7.3-1].
            if properties.topic_alias.is_none() {
                return Err(DecodeError::InvalidTopic(TopicError::Empty));
            }
        } else {
            // [MQTT-3.3.2-2]
            validate_topic_name(&topic).map_err(DecodeError::InvalidTopic)?;
        }
        let payload = r.rest();
        Ok(Publish {
            dup,
            qos,
            retain: flags & 0x01 != 0,
            topic,
            packet_id,
            properties,
            payload,
        })
    }

    pub(crate) fn body_len(&self, v: ProtocolVersion) -> Result<usize, EncodeError> {
        if self.packet_id.is_some() != (self.qos != QoS::AtMostOnce) {
            return Err(EncodeError::PacketIdMismatch(self.qos));
        }
        v5_only(!self.properties.is_empty(), "PUBLISH properties", v)?;
        let mut n = field_len(self.topic.len(), "topic name")? + self.payload.len();
        if self.packet_id.is_some() {
            n += 2;
        }
        if v.is_v5() {
            n += self.properties.wire_len()?;
        }
        Ok(n)
    }

    pub(crate) fn write(&self, v: ProtocolVersion, buf: &mut BytesMut) {
        put_field(buf, self.topic.as_bytes());
        if let Some(id) = self.packet_id {
            buf.put_u16(id.get());
        }
        if v.is_v5() {
            let _ = self.properties.encode(buf);
        }
        buf.put_slice(&self.payload);
    }
}
