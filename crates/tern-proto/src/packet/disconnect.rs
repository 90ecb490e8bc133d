//! DISCONNECT (section 3.14).

use bytes::{BufMut, BytesMut};

use super::{v5_only, PacketType};
use crate::codec::properties::{DisconnectProperties, PropertySet};
use crate::codec::reader::Reader;
use crate::{DecodeError, EncodeError, ProtocolVersion, ReasonCode};

/// DISCONNECT: 3.x has no body; 5.0 carries a reason code and properties,
/// both omitted on the wire for Normal disconnection without properties.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Disconnect {
    /// Reason code (5.0).
    pub reason_code: Option<ReasonCode>,
    /// Properties (5.0).
    pub properties: DisconnectProperties,
}

impl Disconnect {
    /// A DISCONNECT with a reason code and no properties.
    pub fn with_reason(reason_code: ReasonCode) -> Disconnect {
        Disconnect {
            reason_code: Some(reason_code),
            properties: DisconnectProperties::default(),
        }
    }

    /// The reason code, Normal disconnection when absent.
    pub fn reason(&self) -> ReasonCode {
        self.reason_code.unwrap_or(ReasonCode::NORMAL_DISCONNECTION)
    }

    pub(crate) fn decode(r: &mut Reader, v: ProtocolVersion) -> Result<Disconnect, DecodeError> {
        let mut d = Disconnect::default();
        if v.is_v5() && !r.is_empty() {
            let b = r.u8("reason code")?;
            let rc = ReasonCode::from_u8(b).ok_or(DecodeError::UnknownReasonCode(b))?;
            if !rc.allowed_in(PacketType::Disconnect) {
                return Err(DecodeError::ReasonCodeNotAllowed {
                    code: rc,
                    packet: PacketType::Disconnect,
                });
            }
            d.reason_code = Some(rc);
            if !r.is_empty() {
                d.properties = DisconnectProperties::decode(r)?;
            }
        }
        Ok(d)
    }

    pub(crate) fn body_len(&self, v: ProtocolVersion) -> Result<usize, EncodeError> {
        v5_only(self.reason_code.is_some(), "DISCONNECT reason code", v)?;
        v5_only(!self.properties.is_empty(), "DISCONNECT properties", v)?;
        if !self.properties.is_empty() {
            Ok(1 + self.properties.wire_len()?)
        } else {
            Ok(self.reason_code.is_some() as usize)
        }
    }

    pub(crate) fn write(&self, v: ProtocolVersion, buf: &mut BytesMut) {
        if v.is_v5() && (self.reason_code.is_some() || !self.properties.is_empty()) {
            buf.put_u8(self.reason().as_u8());
            if !self.properties.is_empty() {
                let _ = self.properties.encode(buf);
            }
        }
    }
}
