//! CONNECT (section 3.1).

use bytes::{BufMut, Bytes, BytesMut};
use bytestring::ByteString;

use super::v5_only;
use crate::codec::properties::{ConnectProperties, PropertySet, WillProperties};
use crate::codec::reader::Reader;
use crate::codec::writer::{field_len, put_field};
use crate::{DecodeError, EncodeError, ProtocolVersion, QoS};

/// The Will Message of a CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Will {
    /// Will Topic.
    pub topic: ByteString,
    /// Will Payload.
    pub payload: Bytes,
    /// Will QoS.
    pub qos: QoS,
    /// Will Retain.
    pub retain: bool,
    /// Will Properties (5.0).
    pub properties: WillProperties,
}

/// CONNECT: the first packet a client sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    /// Protocol version, from the protocol name and level. It decides how the
    /// packet itself is encoded.
    pub protocol_version: ProtocolVersion,
    /// Clean Session (3.x) / Clean Start (5.0).
    pub clean_start: bool,
    /// Keep Alive in seconds (0 disables it).
    pub keep_alive: u16,
    /// Client Identifier (may be empty).
    pub client_id: ByteString,
    /// Will Message.
    pub will: Option<Will>,
    /// User Name.
    pub username: Option<ByteString>,
    /// Password (binary data).
    pub password: Option<Bytes>,
    /// CONNECT properties (5.0).
    pub properties: ConnectProperties,
    /// A bridge connecting (3.1 and 3.1.1 only): the protocol level carries its top bit
    /// (0x83, 0x84), as Mosquitto's bridges send with `try_private`. A server that knows
    /// the convention does not send a bridge back what it published, keeps the RETAIN flag
    /// as published, and can tell that its messages came over a bridge.
    pub bridge: bool,
}

impl Connect {
    /// A CONNECT with the given version and client id, clean start, keep-alive 60 s.
    pub fn new(protocol_version: ProtocolVersion, client_id: impl Into<ByteString>) -> Connect {
        Connect {
            protocol_version,
            clean_start: true,
            keep_alive: 60,
            client_id: client_id.into(),
            will: None,
            username: None,
            password: None,
            properties: ConnectProperties::default(),
            bridge: false,
        }
    }

    pub(crate) fn decode(r: &mut Reader) -> Result<Connect, DecodeError> {
        let name = r.string("protocol name")?;
        let level = r.u8("protocol level")?;
        // The bridge bit (see `Connect::bridge`), for the versions before 5.0.
        let bridge = level & 0x80 != 0 && matches!(level & 0x7F, 3 | 4);
        let level = if bridge { level & 0x7F } else { level };
        let protocol_version = match ProtocolVersion::from_name_and_level(&name, level) {
            Some(v) => v,
            None if &*name == "MQTT" || &*name == "MQIsdp" => {
                return Err(DecodeError::UnsupportedProtocolLevel(level))
            }
            None => return Err(DecodeError::InvalidProtocolName),
        };
        let flags = r.u8("connect flags")?;
        // [MQTT-3.1.2-3]
        if flags & 0x01 != 0 {
            return Err(DecodeError::ReservedConnectFlag);
        }
        let has_username = flags & 0x80 != 0;
        let has_password = flags & 0x40 != 0;
        let will_retain = flags & 0x20 != 0;
        let will_qos_bits = (flags >> 3) & 0x03;
        let has_will = flags & 0x04 != 0;
        let clean_start = flags & 0x02 != 0;
        // [MQTT-3.1.2-11], [MQTT-3.1.2-13], [MQTT-3.1.2-15]
        if !has_will && (will_qos_bits != 0 || will_retain) {
            return Err(DecodeError::InvalidWillFlags);
        }
        // [MQTT-3.1.2-14]
        let will_qos = QoS::from_bits(will_qos_bits).ok_or(DecodeError::InvalidWillFlags)?;
        // [MQTT-3.1.2-22] (3.1.1 only; 5.0 allows a password without a user name)
        if !protocol_version.is_v5() && has_password && !has_username {
            return Err(DecodeError::PasswordWithoutUsername);
        }
        let keep_alive = r.u16("keep alive")?;
        let properties = if protocol_version.is_v5() {
            ConnectProperties::decode(r)?
        } else {
            ConnectProperties::default()
        };
        let client_id = r.string("client identifier")?;
        let will = if has_will {
            let properties = if protocol_version.is_v5() {
                WillProperties::decode(r)?
            } else {
                WillProperties::default()
            };
            let topic = r.string("will topic")?;
            let payload = r.binary("will payload")?;
            Some(Will {
                topic,
                payload,
                qos: will_qos,
                retain: will_retain,
                properties,
            })
        } else {
            None
        };
        // [MQTT-3.1.3-11] user name is a UTF-8 string; the password is binary.
        let username = if has_username {
            Some(r.string("user name")?)
        } else {
            None
        };
        let password = if has_password {
            Some(r.binary("password")?)
        } else {
            None
        };
        Ok(Connect {
            protocol_version,
            clean_start,
            keep_alive,
            client_id,
            will,
            username,
            password,
            properties,
            bridge,
        })
    }

    pub(crate) fn body_len(&self) -> Result<usize, EncodeError> {
        let v = self.protocol_version;
        v5_only(!self.properties.is_empty(), "CONNECT properties", v)?;
        if !v.is_v5() && self.password.is_some() && self.username.is_none() {
            return Err(EncodeError::Invalid(
                "3.1.1 password without user name ([MQTT-3.1.2-22])",
            ));
        }
        let mut n = field_len(v.protocol_name().len(), "protocol name")? + 1 + 1 + 2;
        if v.is_v5() {
            n += self.properties.wire_len()?;
        }
        n += field_len(self.client_id.len(), "client identifier")?;
        if let Some(w) = &self.will {
            v5_only(!w.properties.is_empty(), "will properties", v)?;
            if v.is_v5() {
                n += w.properties.wire_len()?;
            }
            n += field_len(w.topic.len(), "will topic")? + field_len(w.payload.len(), "will payload")?;
        }
        if let Some(u) = &self.username {
            n += field_len(u.len(), "user name")?;
        }
        if let Some(p) = &self.password {
            n += field_len(p.len(), "password")?;
        }
        Ok(n)
    }

    pub(crate) fn write(&self, buf: &mut BytesMut) {
        let v = self.protocol_version;
        put_field(buf, v.protocol_name().as_bytes());
        buf.put_u8(v.level() | if self.bridge && !v.is_v5() { 0x80 } else { 0 });
        let mut flags = 0u8;
        if self.username.is_some() {
            flags |= 0x80;
        }
        if self.password.is_some() {
            flags |= 0x40;
        }
        if let Some(w) = &self.will {
            flags |= 0x04 | (w.qos.as_u8() << 3);
            if w.retain {
                flags |= 0x20;
            }
        }
        if self.clean_start {
            flags |= 0x02;
        }
        buf.put_u8(flags);
        buf.put_u16(self.keep_alive);
        if v.is_v5() {
            let _ = self.properties.encode(buf);
        }
        put_field(buf, self.client_id.as_bytes());
        if let Some(w) = &self.will {
            if v.is_v5() {
                let _ = w.properties.encode(buf);
            }
            put_field(buf, w.topic.as_bytes());
            put_field(buf, &w.payload);
        }
        if let Some(u) = &self.username {
            put_field(buf, u.as_bytes());
        }
        if let Some(p) = &self.password {
            put_field(buf, p);
        }
    }
}
