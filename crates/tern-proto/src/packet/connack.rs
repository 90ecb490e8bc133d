//! CONNACK (section 3.2).

use bytes::{BufMut, BytesMut};

use super::{v5_only, PacketType};
use crate::codec::properties::{ConnAckProperties, PropertySet};
use crate::codec::reader::Reader;
use crate::{DecodeError, EncodeError, ProtocolVersion, ReasonCode};

/// CONNACK: the server's answer to CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnAck {
    /// Session Present.
    pub session_present: bool,
    /// Reason code; for 3.1.1 it is carried as the closest return code
    /// ([`ReasonCode::to_v3_connack`]).
    pub reason_code: ReasonCode,
    /// CONNACK properties (5.0).
    pub properties: ConnAckProperties,
}

impl ConnAck {
    /// A CONNACK with no properties.
    pub fn new(reason_code: ReasonCode, session_present: bool) -> ConnAck {
        ConnAck {
            session_present,
            reason_code,
            properties: ConnAckProperties::default(),
        }
    }

    pub(crate) fn decode(r: &mut Reader, v: ProtocolVersion) -> Result<ConnAck, DecodeError> {
        let flags = r.u8("connect acknowledge flags")?;
        // [MQTT-3.2.2-1] bits 7-1 are reserved.
        if flags & 0xFE != 0 {
            return Err(DecodeError::InvalidFlags {
                packet: PacketType::ConnAck,
                flags,
            });
        }
        let code = r.u8("connect reason code")?;
        let (reason_code, properties) = if v.is_v5() {
            let rc = ReasonCode::from_u8(code).ok_or(DecodeError::UnknownReasonCode(code))?;
            if !rc.allowed_in(PacketType::ConnAck) {
                return Err(DecodeError::ReasonCodeNotAllowed {
                    code: rc,
                    packet: PacketType::ConnAck,
                });
            }
            (rc, ConnAckProperties::decode(r)?)
        } else {
            let rc = ReasonCode::from_v3_connack(code).ok_or(DecodeError::UnknownReturnCode(code))?;
            (rc, ConnAckProperties::default())
        };
        Ok(ConnAck {
            session_present: flags & 1 != 0,
            reason_code,
            properties,
        })
    }

    pub(crate) fn body_len(&self, v: ProtocolVersion) -> Result<usize, EncodeError> {
        v5_only(!self.properties.is_empty(), "CONNACK properties", v)?;
        Ok(2 + if v.is_v5() { self.properties.wire_len()? } else { 0 })
    }

    pub(crate) fn write(&self, v: ProtocolVersion, buf: &mut BytesMut) {
        buf.put_u8(self.session_present as u8);
        if v.is_v5() {
            buf.put_u8(self.reason_code.as_u8());
            let _ = self.properties.encode(buf);
        } else {
            buf.put_u8(self.reason_code.to_v3_connack());
        }
    }
}
