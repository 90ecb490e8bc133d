//! SUBSCRIBE and UNSUBSCRIBE (sections 3.8 and 3.10).
//!
//! Topic filters are decoded as UTF-8 strings but their wildcard placement is
//! not checked here: a 5.0 server answers a bad filter with SUBACK 0x8F for that
//! filter alone, so the decision belongs to the receiver
//! ([`crate::topic::parse_filter`]).

use bytes::{BufMut, BytesMut};
use bytestring::ByteString;

use super::v5_only;
use crate::codec::properties::{PropertySet, SubscribeProperties, UnsubscribeProperties};
use crate::codec::reader::Reader;
use crate::codec::writer::{field_len, put_field};
use crate::{DecodeError, EncodeError, PacketId, ProtocolVersion, QoS};

/// When retained messages are sent for a new subscription (5.0 section 3.8.3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum RetainHandling {
    /// 0: send retained messages at the time of the subscribe.
    #[default]
    SendAtSubscribe = 0,
    /// 1: send them only if the subscription did not exist yet.
    SendIfNew = 1,
    /// 2: do not send retained messages.
    DoNotSend = 2,
}

/// Subscription options (the byte after each filter).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct SubscriptionOptions {
    /// Maximum QoS.
    pub qos: QoS,
    /// No Local (5.0): do not send this client its own messages.
    pub no_local: bool,
    /// Retain As Published (5.0): keep the RETAIN flag when forwarding.
    pub retain_as_published: bool,
    /// Retain Handling (5.0).
    pub retain_handling: RetainHandling,
}

impl SubscriptionOptions {
    /// Options with only a maximum QoS.
    pub fn qos(qos: QoS) -> SubscriptionOptions {
        SubscriptionOptions {
            qos,
            ..Default::default()
        }
    }

    fn decode(b: u8, v: ProtocolVersion) -> Result<SubscriptionOptions, DecodeError> {
        let reserved = if v.is_v5() { 0xC0 } else { 0xFC };
        // v3.1.1 [MQTT-3.8.3-4] (printed 3-8.3-4), v5 [MQTT-3.8.3-5]
        if b & reserved != 0 {
            return Err(DecodeError::InvalidSubscriptionOptions);
        }
        // QoS 3: malformed in 3.1.1 (v3.1.1 [MQTT-3.8.3-4]), a Protocol Error in 5.0 (section 3.8.3.1).
        let qos = QoS::from_bits(b & 0x03).ok_or(if v.is_v5() {
            DecodeError::InvalidSubscriptionQoS
        } else {
            DecodeError::InvalidQoS
        })?;
        let retain_handling = match (b >> 4) & 0x03 {
            0 => RetainHandling::SendAtSubscribe,
            1 => RetainHandling::SendIfNew,
            2 => RetainHandling::DoNotSend,
            _ => return Err(DecodeError::InvalidRetainHandling),
        };
        Ok(SubscriptionOptions {
            qos,
            no_local: b & 0x04 != 0,
            retain_as_published: b & 0x08 != 0,
            retain_handling,
        })
    }

    fn is_v3(&self) -> bool {
        !self.no_local && !self.retain_as_published && self.retain_handling == RetainHandling::SendAtSubscribe
    }

    fn byte(&self) -> u8 {
        self.qos.as_u8()
            | (self.no_local as u8) << 2
            | (self.retain_as_published as u8) << 3
            | (self.retain_handling as u8) << 4
    }
}

/// SUBSCRIBE: one or more topic filters with options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe {
    /// Packet Identifier.
    pub packet_id: PacketId,
    /// SUBSCRIBE properties (5.0).
    pub properties: SubscribeProperties,
    /// Topic filters and their options, at least one.
    pub filters: Vec<(ByteString, SubscriptionOptions)>,
}

impl Subscribe {
    pub(crate) fn decode(r: &mut Reader, v: ProtocolVersion) -> Result<Subscribe, DecodeError> {
        let packet_id = r.packet_id()?;
        let properties = if v.is_v5() {
            SubscribeProperties::decode(r)?
        } else {
            SubscribeProperties::default()
        };
        let mut filters = Vec::new();
        while !r.is_empty() {
            let filter = r.string("topic filter")?;
            let options = SubscriptionOptions::decode(r.u8("subscription options")?, v)?;
            // [MQTT-3.8.3-4]
            if options.no_local && filter.starts_with("$share/") {
                return Err(DecodeError::NoLocalOnSharedSubscription);
            }
            filters.push((filter, options));
        }
        // [MQTT-3.8.3-3] (3.1.1), [MQTT-3.8.3-2] (5.0)
        if filters.is_empty() {
            return Err(DecodeError::EmptySubscribe);
        }
        Ok(Subscribe {
            packet_id,
            properties,
            filters,
        })
    }

    pub(crate) fn body_len(&self, v: ProtocolVersion) -> Result<usize, EncodeError> {
        if self.filters.is_empty() {
            return Err(EncodeError::Invalid("SUBSCRIBE without topic filters"));
        }
        v5_only(!self.properties.is_empty(), "SUBSCRIBE properties", v)?;
        let mut n = 2 + if v.is_v5() { self.properties.wire_len()? } else { 0 };
        for (f, o) in &self.filters {
            v5_only(!o.is_v3(), "subscription options other than QoS", v)?;
            n += field_len(f.len(), "topic filter")? + 1;
        }
        Ok(n)
    }

    pub(crate) fn write(&self, v: ProtocolVersion, buf: &mut BytesMut) {
        buf.put_u16(self.packet_id.get());
        if v.is_v5() {
            let _ = self.properties.encode(buf);
        }
        for (f, o) in &self.filters {
            put_field(buf, f.as_bytes());
            buf.put_u8(o.byte());
        }
    }
}

/// UNSUBSCRIBE: one or more topic filters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsubscribe {
    /// Packet Identifier.
    pub packet_id: PacketId,
    /// UNSUBSCRIBE properties (5.0).
    pub properties: UnsubscribeProperties,
    /// Topic filters, at least one.
    pub filters: Vec<ByteString>,
}

impl Unsubscribe {
    pub(crate) fn decode(r: &mut Reader, v: ProtocolVersion) -> Result<Unsubscribe, DecodeError> {
        let packet_id = r.packet_id()?;
        let properties = if v.is_v5() {
            UnsubscribeProperties::decode(r)?
        } else {
            UnsubscribeProperties::default()
        };
        let mut filters = Vec::new();
        while !r.is_empty() {
            filters.push(r.string("topic filter")?);
        }
        // [MQTT-3.10.3-2]
        if filters.is_empty() {
            return Err(DecodeError::EmptyUnsubscribe);
        }
        Ok(Unsubscribe {
            packet_id,
            properties,
            filters,
        })
    }

    pub(crate) fn body_len(&self, v: ProtocolVersion) -> Result<usize, EncodeError> {
        if self.filters.is_empty() {
            return Err(EncodeError::Invalid("UNSUBSCRIBE without topic filters"));
        }
        v5_only(!self.properties.is_empty(), "UNSUBSCRIBE properties", v)?;
        let mut n = 2 + if v.is_v5() { self.properties.wire_len()? } else { 0 };
        for f in &self.filters {
            n += field_len(f.len(), "topic filter")?;
        }
        Ok(n)
    }

    pub(crate) fn write(&self, v: ProtocolVersion, buf: &mut BytesMut) {
        buf.put_u16(self.packet_id.get());
        if v.is_v5() {
            let _ = self.properties.encode(buf);
        }
        for f in &self.filters {
            put_field(buf, f.as_bytes());
        }
    }
}
