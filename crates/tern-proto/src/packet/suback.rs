//! SUBACK and UNSUBACK (sections 3.9 and 3.11): a packet identifier and a list
//! of reason codes, one per filter.

use bytes::{BufMut, BytesMut};

use super::{v5_only, PacketType};
use crate::codec::properties::{AckProperties, PropertySet};
use crate::codec::reader::Reader;
use crate::{DecodeError, EncodeError, PacketId, ProtocolVersion, ReasonCode};

/// SUBACK: one reason code per topic filter of the SUBSCRIBE.
///
/// For 3.1.1 each code is carried as its return code (granted QoS, or 0x80 for
/// any failure: [`ReasonCode::to_v3_suback`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubAck {
    /// Packet Identifier of the SUBSCRIBE.
    pub packet_id: PacketId,
    /// Properties (5.0).
    pub properties: AckProperties,
    /// One code per filter, in order.
    pub reason_codes: Vec<ReasonCode>,
}

/// UNSUBACK: 5.0 carries one reason code per filter; 3.1.1 carries none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsubAck {
    /// Packet Identifier of the UNSUBSCRIBE.
    pub packet_id: PacketId,
    /// Properties (5.0).
    pub properties: AckProperties,
    /// One code per filter, in order (5.0 only; empty for 3.x).
    pub reason_codes: Vec<ReasonCode>,
}

fn decode_codes(r: &mut Reader, t: PacketType, v: ProtocolVersion) -> Result<Vec<ReasonCode>, DecodeError> {
    let mut codes = Vec::with_capacity(r.remaining());
    while !r.is_empty() {
        let b = r.u8("reason code")?;
        let rc = if v.is_v5() {
            let rc = ReasonCode::from_u8(b).ok_or(DecodeError::UnknownReasonCode(b))?;
            if !rc.allowed_in(t) {
                return Err(DecodeError::ReasonCodeNotAllowed { code: rc, packet: t });
            }
            rc
        } else {
            // [MQTT-3.9.3-2] 3.1.1 SUBACK return codes other than 0x00, 0x01, 0x02, 0x80 are reserved.
            ReasonCode::from_v3_suback(b).ok_or(DecodeError::UnknownReturnCode(b))?
        };
        codes.push(rc);
    }
    Ok(codes)
}

impl SubAck {
    pub(crate) fn decode(r: &mut Reader, v: ProtocolVersion) -> Result<SubAck, DecodeError> {
        let packet_id = r.packet_id()?;
        let properties = if v.is_v5() {
            AckProperties::decode(r)?
        } else {
            AckProperties::default()
        };
        let reason_codes = decode_codes(r, PacketType::SubAck, v)?;
        Ok(SubAck {
            packet_id,
            properties,
            reason_codes,
        })
    }

    pub(crate) fn body_len(&self, v: ProtocolVersion) -> Result<usize, EncodeError> {
        v5_only(!self.properties.is_empty(), "SUBACK properties", v)?;
        Ok(2 + self.reason_codes.len() + if v.is_v5() { self.properties.wire_len()? } else { 0 })
    }

    pub(crate) fn write(&self, v: ProtocolVersion, buf: &mut BytesMut) {
        buf.put_u16(self.packet_id.get());
        if v.is_v5() {
            let _ = self.properties.encode(buf);
            buf.extend(self.reason_codes.iter().map(|c| c.as_u8()));
        } else {
            buf.extend(self.reason_codes.iter().map(|c| c.to_v3_suback()));
        }
    }
}

impl UnsubAck {
    pub(crate) fn decode(r: &mut Reader, v: ProtocolVersion) -> Result<UnsubAck, DecodeError> {
        let packet_id = r.packet_id()?;
        if !v.is_v5() {
            return Ok(UnsubAck {
                packet_id,
                properties: AckProperties::default(),
                reason_codes: Vec::new(),
            });
        }
        let properties = AckProperties::decode(r)?;
        let reason_codes = decode_codes(r, PacketType::UnsubAck, v)?;
        Ok(UnsubAck {
            packet_id,
            properties,
            reason_codes,
        })
    }

    pub(crate) fn body_len(&self, v: ProtocolVersion) -> Result<usize, EncodeError> {
        v5_only(!self.properties.is_empty(), "UNSUBACK properties", v)?;
        v5_only(!self.reason_codes.is_empty(), "UNSUBACK reason codes", v)?;
        Ok(2 + if v.is_v5() {
            self.properties.wire_len()? + self.reason_codes.len()
        } else {
            0
        })
    }

    pub(crate) fn write(&self, v: ProtocolVersion, buf: &mut BytesMut) {
        buf.put_u16(self.packet_id.get());
        if v.is_v5() {
            let _ = self.properties.encode(buf);
            buf.extend(self.reason_codes.iter().map(|c| c.as_u8()));
        }
    }
}
