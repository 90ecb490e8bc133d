//! AUTH (5.0 section 3.15).

use bytes::{BufMut, BytesMut};

use super::PacketType;
use crate::codec::properties::{AuthProperties, PropertySet};
use crate::codec::reader::Reader;
use crate::{DecodeError, EncodeError, ProtocolVersion, ReasonCode};

/// AUTH: a step of enhanced authentication (5.0 only).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Auth {
    /// Reason code (Success, Continue authentication, Re-authenticate); absent
    /// on the wire means Success.
    pub reason_code: Option<ReasonCode>,
    /// Properties.
    pub properties: AuthProperties,
}

impl Auth {
    pub(crate) fn decode(r: &mut Reader) -> Result<Auth, DecodeError> {
        let mut a = Auth::default();
        if !r.is_empty() {
            let b = r.u8("reason code")?;
            let rc = ReasonCode::from_u8(b).ok_or(DecodeError::UnknownReasonCode(b))?;
            if !rc.allowed_in(PacketType::Auth) {
                return Err(DecodeError::ReasonCodeNotAllowed {
                    code: rc,
                    packet: PacketType::Auth,
                });
            }
            a.reason_code = Some(rc);
            if !r.is_empty() {
                a.properties = AuthProperties::decode(r)?;
            }
        }
        Ok(a)
    }

    pub(crate) fn body_len(&self, v: ProtocolVersion) -> Result<usize, EncodeError> {
        if !v.is_v5() {
            return Err(EncodeError::NotInVersion("AUTH", v));
        }
        if !self.properties.is_empty() {
            Ok(1 + self.properties.wire_len()?)
        } else {
            Ok(self.reason_code.is_some() as usize)
        }
    }

    pub(crate) fn write(&self, buf: &mut BytesMut) {
        if self.reason_code.is_some() || !self.properties.is_empty() {
            buf.put_u8(self.reason_code.unwrap_or(ReasonCode::Success).as_u8());
            if !self.properties.is_empty() {
                let _ = self.properties.encode(buf);
            }
        }
    }
}
