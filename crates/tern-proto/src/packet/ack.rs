//! PUBACK, PUBREC, PUBREL and PUBCOMP: one shape, four packet types
//! (sections 3.4 to 3.7).

use bytes::{BufMut, BytesMut};

use super::{v5_only, PacketType};
use crate::codec::properties::{AckProperties, PropertySet};
use crate::codec::reader::Reader;
use crate::{DecodeError, EncodeError, PacketId, ProtocolVersion, ReasonCode};

/// The body of PUBACK, PUBREC, PUBREL and PUBCOMP.
///
/// In 5.0 the reason code and properties are omitted on the wire when the code
/// is Success and there are no properties (remaining length 2, the same bytes
/// as 3.1.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    /// Packet Identifier of the PUBLISH being acknowledged.
    pub packet_id: PacketId,
    /// Reason code (5.0; always Success for 3.x).
    pub reason_code: ReasonCode,
    /// Properties (5.0).
    pub properties: AckProperties,
}

impl Ack {
    /// A successful acknowledgement.
    pub fn new(packet_id: PacketId) -> Ack {
        Ack {
            packet_id,
            reason_code: ReasonCode::Success,
            properties: AckProperties::default(),
        }
    }

    /// An acknowledgement with a reason code.
    pub fn with_reason(packet_id: PacketId, reason_code: ReasonCode) -> Ack {
        Ack {
            packet_id,
            reason_code,
            properties: AckProperties::default(),
        }
    }

    pub(crate) fn decode(t: PacketType, r: &mut Reader, v: ProtocolVersion) -> Result<Ack, DecodeError> {
        let packet_id = r.packet_id()?;
        let mut ack = Ack::new(packet_id);
        if v.is_v5() && !r.is_empty() {
            let code = r.u8("reason code")?;
            let rc = ReasonCode::from_u8(code).ok_or(DecodeError::UnknownReasonCode(code))?;
            if !rc.allowed_in(t) {
                return Err(DecodeError::ReasonCodeNotAllowed { code: rc, packet: t });
            }
            ack.reason_code = rc;
            if !r.is_empty() {
                ack.properties = AckProperties::decode(r)?;
            }
        }
        Ok(ack)
    }

    pub(crate) fn body_len(&self, v: ProtocolVersion) -> Result<usize, EncodeError> {
        v5_only(
            self.reason_code != ReasonCode::Success,
            "acknowledgement reason code",
            v,
        )?;
        v5_only(!self.properties.is_empty(), "acknowledgement properties", v)?;
        if !self.properties.is_empty() {
            Ok(3 + self.properties.wire_len()?)
        } else if self.reason_code != ReasonCode::Success {
            Ok(3)
        } else {
            Ok(2)
        }
    }

    pub(crate) fn write(&self, v: ProtocolVersion, buf: &mut BytesMut) {
        buf.put_u16(self.packet_id.get());
        if v.is_v5() && (self.reason_code != ReasonCode::Success || !self.properties.is_empty()) {
            buf.put_u8(self.reason_code.as_u8());
            if !self.properties.is_empty() {
                let _ = self.properties.encode(buf);
            }
        }
    }
}
