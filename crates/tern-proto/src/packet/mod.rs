//! The packet model: one struct per packet shape, shared by all protocol versions.
//!
//! Fields that exist only in MQTT 5.0 (properties, reason codes) are part of the
//! same structs. Decoding for 3.x leaves them at their defaults; encoding a
//! 5.0-only value for 3.x is an [`EncodeError::NotInVersion`] rather than
//! silence.

mod ack;
mod auth;
mod connack;
mod connect;
mod disconnect;
mod publish;
mod suback;
mod subscribe;

pub use ack::Ack;
pub use auth::Auth;
pub use connack::ConnAck;
pub use connect::{Connect, Will};
pub use disconnect::Disconnect;
pub use publish::Publish;
pub use suback::{SubAck, UnsubAck};
pub use subscribe::{RetainHandling, Subscribe, SubscriptionOptions, Unsubscribe};

use bytes::{BufMut, Bytes, BytesMut};

use crate::codec::reader::Reader;
use crate::codec::varint;
use crate::{ByteString, DecodeError, EncodeError, ProtocolVersion};

/// The control packet types (fixed header bits 7-4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum PacketType {
    /// 1: client request to connect.
    Connect = 1,
    /// 2: connect acknowledgement.
    ConnAck = 2,
    /// 3: publish message.
    Publish = 3,
    /// 4: publish acknowledgement (QoS 1).
    PubAck = 4,
    /// 5: publish received (QoS 2, part 1).
    PubRec = 5,
    /// 6: publish release (QoS 2, part 2).
    PubRel = 6,
    /// 7: publish complete (QoS 2, part 3).
    PubComp = 7,
    /// 8: subscribe request.
    Subscribe = 8,
    /// 9: subscribe acknowledgement.
    SubAck = 9,
    /// 10: unsubscribe request.
    Unsubscribe = 10,
    /// 11: unsubscribe acknowledgement.
    UnsubAck = 11,
    /// 12: ping request.
    PingReq = 12,
    /// 13: ping response.
    PingResp = 13,
    /// 14: disconnect notification.
    Disconnect = 14,
    /// 15: authentication exchange (MQTT 5.0 only).
    Auth = 15,
}

impl PacketType {
    /// The type for the high nibble of the first byte; AUTH only for 5.0.
    pub fn from_nibble(n: u8, version: ProtocolVersion) -> Option<PacketType> {
        use PacketType::*;
        Some(match n {
            1 => Connect,
            2 => ConnAck,
            3 => Publish,
            4 => PubAck,
            5 => PubRec,
            6 => PubRel,
            7 => PubComp,
            8 => Subscribe,
            9 => SubAck,
            10 => Unsubscribe,
            11 => UnsubAck,
            12 => PingReq,
            13 => PingResp,
            14 => Disconnect,
            15 if version.is_v5() => Auth,
            _ => return None,
        })
    }

    /// The fixed-header flags every packet of this type carries, or `None` for
    /// PUBLISH whose flags are DUP, QoS and RETAIN ([MQTT-2.2.2-1], [MQTT-3.6.1-1],
    /// [MQTT-3.8.1-1], [MQTT-3.10.1-1]).
    pub fn required_flags(self) -> Option<u8> {
        match self {
            PacketType::Publish => None,
            PacketType::PubRel | PacketType::Subscribe | PacketType::Unsubscribe => Some(0b0010),
            _ => Some(0),
        }
    }
}

/// One MQTT control packet of any version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    /// CONNECT.
    Connect(Box<Connect>),
    /// CONNACK.
    ConnAck(ConnAck),
    /// PUBLISH.
    Publish(Publish),
    /// PUBACK.
    PubAck(Ack),
    /// PUBREC.
    PubRec(Ack),
    /// PUBREL.
    PubRel(Ack),
    /// PUBCOMP.
    PubComp(Ack),
    /// SUBSCRIBE.
    Subscribe(Subscribe),
    /// SUBACK.
    SubAck(SubAck),
    /// UNSUBSCRIBE.
    Unsubscribe(Unsubscribe),
    /// UNSUBACK.
    UnsubAck(UnsubAck),
    /// PINGREQ.
    PingReq,
    /// PINGRESP.
    PingResp,
    /// DISCONNECT.
    Disconnect(Disconnect),
    /// AUTH (MQTT 5.0 only).
    Auth(Auth),
}

impl Packet {
    /// The packet's type.
    pub fn packet_type(&self) -> PacketType {
        match self {
            Packet::Connect(_) => PacketType::Connect,
            Packet::ConnAck(_) => PacketType::ConnAck,
            Packet::Publish(_) => PacketType::Publish,
            Packet::PubAck(_) => PacketType::PubAck,
            Packet::PubRec(_) => PacketType::PubRec,
            Packet::PubRel(_) => PacketType::PubRel,
            Packet::PubComp(_) => PacketType::PubComp,
            Packet::Subscribe(_) => PacketType::Subscribe,
            Packet::SubAck(_) => PacketType::SubAck,
            Packet::Unsubscribe(_) => PacketType::Unsubscribe,
            Packet::UnsubAck(_) => PacketType::UnsubAck,
            Packet::PingReq => PacketType::PingReq,
            Packet::PingResp => PacketType::PingResp,
            Packet::Disconnect(_) => PacketType::Disconnect,
            Packet::Auth(_) => PacketType::Auth,
        }
    }

    /// Decode a packet body whose fixed header has been checked.
    ///
    /// A CONNECT is decoded with the version its own protocol level names.
    pub(crate) fn decode_body(
        packet_type: PacketType,
        flags: u8,
        body: Bytes,
        version: ProtocolVersion,
    ) -> Result<Packet, DecodeError> {
        let mut r = Reader::new(body);
        let v = version;
        let packet = match packet_type {
            PacketType::Connect => Packet::Connect(Box::new(Connect::decode(&mut r)?)),
            PacketType::ConnAck => Packet::ConnAck(ConnAck::decode(&mut r, v)?),
            PacketType::Publish => Packet::Publish(Publish::decode(flags, &mut r, v)?),
            PacketType::PubAck => Packet::PubAck(Ack::decode(packet_type, &mut r, v)?),
            PacketType::PubRec => Packet::PubRec(Ack::decode(packet_type, &mut r, v)?),
            PacketType::PubRel => Packet::PubRel(Ack::decode(packet_type, &mut r, v)?),
            PacketType::PubComp => Packet::PubComp(Ack::decode(packet_type, &mut r, v)?),
            PacketType::Subscribe => Packet::Subscribe(Subscribe::decode(&mut r, v)?),
            PacketType::SubAck => Packet::SubAck(SubAck::decode(&mut r, v)?),
            PacketType::Unsubscribe => Packet::Unsubscribe(Unsubscribe::decode(&mut r, v)?),
            PacketType::UnsubAck => Packet::UnsubAck(UnsubAck::decode(&mut r, v)?),
            PacketType::PingReq => Packet::PingReq,
            PacketType::PingResp => Packet::PingResp,
            PacketType::Disconnect => Packet::Disconnect(Disconnect::decode(&mut r, v)?),
            PacketType::Auth => Packet::Auth(Auth::decode(&mut r)?),
        };
        r.finish(packet_type)?;
        Ok(packet)
    }

    /// The first byte of the fixed header.
    fn first_byte(&self) -> u8 {
        let t = self.packet_type();
        let flags = match self {
            Packet::Publish(p) => p.flags(),
            _ => t.required_flags().unwrap_or(0),
        };
        ((t as u8) << 4) | flags
    }

    /// Remaining length (everything after the fixed header) for `version`,
    /// checking that the packet can be expressed in that version.
    pub fn body_len(&self, version: ProtocolVersion) -> Result<usize, EncodeError> {
        let v = version;
        match self {
            Packet::Connect(p) => p.body_len(),
            Packet::ConnAck(p) => p.body_len(v),
            Packet::Publish(p) => p.body_len(v),
            Packet::PubAck(p) | Packet::PubRec(p) | Packet::PubRel(p) | Packet::PubComp(p) => p.body_len(v),
            Packet::Subscribe(p) => p.body_len(v),
            Packet::SubAck(p) => p.body_len(v),
            Packet::Unsubscribe(p) => p.body_len(v),
            Packet::UnsubAck(p) => p.body_len(v),
            Packet::PingReq | Packet::PingResp => Ok(0),
            Packet::Disconnect(p) => p.body_len(v),
            Packet::Auth(p) => p.body_len(v),
        }
    }

    /// Whether the packet carries a Reason String or User Properties that
    /// [`Packet::fit_within`] may leave out.
    pub fn has_diagnostics(&self) -> bool {
        match self.diagnostics() {
            Some((reason, user)) => reason.is_some() || !user.is_empty(),
            None => false,
        }
    }

    /// Make the packet fit in `max` bytes by leaving out what a 5.0 sender must drop
    /// rather than exceed the receiver's Maximum Packet Size: the Reason String first,
    /// then the User Properties, of CONNACK, PUBACK, PUBREC, PUBREL, PUBCOMP, SUBACK,
    /// UNSUBACK, DISCONNECT and AUTH (v5 [MQTT-3.2.2-19], [MQTT-3.4.2-2],
    /// [MQTT-3.9.2-1], [MQTT-3.14.2-3] and the like). Other packets are left as they
    /// are. Returns whether the packet fits now.
    pub fn fit_within(&mut self, version: ProtocolVersion, max: u32) -> bool {
        let fits = |p: &Packet| p.encoded_len(version).is_ok_and(|n| n as u64 <= u64::from(max));
        if fits(self) {
            return true;
        }
        if let Some((reason, _)) = self.diagnostics_mut() {
            *reason = None;
        }
        if fits(self) {
            return true;
        }
        if let Some((_, user)) = self.diagnostics_mut() {
            user.clear();
        }
        fits(self)
    }

    #[allow(clippy::type_complexity, reason = "a pair of two property fields")]
    fn diagnostics(&self) -> Option<(&Option<ByteString>, &Vec<(ByteString, ByteString)>)> {
        match self {
            Packet::ConnAck(p) => Some((&p.properties.reason_string, &p.properties.user_properties)),
            Packet::PubAck(p) | Packet::PubRec(p) | Packet::PubRel(p) | Packet::PubComp(p) => {
                Some((&p.properties.reason_string, &p.properties.user_properties))
            }
            Packet::SubAck(p) => Some((&p.properties.reason_string, &p.properties.user_properties)),
            Packet::UnsubAck(p) => Some((&p.properties.reason_string, &p.properties.user_properties)),
            Packet::Disconnect(p) => Some((&p.properties.reason_string, &p.properties.user_properties)),
            Packet::Auth(p) => Some((&p.properties.reason_string, &p.properties.user_properties)),
            _ => None,
        }
    }

    #[allow(clippy::type_complexity, reason = "a pair of two property fields")]
    fn diagnostics_mut(&mut self) -> Option<(&mut Option<ByteString>, &mut Vec<(ByteString, ByteString)>)> {
        match self {
            Packet::ConnAck(p) => Some((&mut p.properties.reason_string, &mut p.properties.user_properties)),
            Packet::PubAck(p) | Packet::PubRec(p) | Packet::PubRel(p) | Packet::PubComp(p) => {
                Some((&mut p.properties.reason_string, &mut p.properties.user_properties))
            }
            Packet::SubAck(p) => Some((&mut p.properties.reason_string, &mut p.properties.user_properties)),
            Packet::UnsubAck(p) => Some((&mut p.properties.reason_string, &mut p.properties.user_properties)),
            Packet::Disconnect(p) => {
                Some((&mut p.properties.reason_string, &mut p.properties.user_properties))
            }
            Packet::Auth(p) => Some((&mut p.properties.reason_string, &mut p.properties.user_properties)),
            _ => None,
        }
    }

    /// Total encoded size for `version`, fixed header included.
    pub fn encoded_len(&self, version: ProtocolVersion) -> Result<usize, EncodeError> {
        let body = self.body_len(version)?;
        if body > varint::MAX_VARINT as usize {
            return Err(EncodeError::TooLarge(body));
        }
        Ok(1 + varint::len(body as u32) + body)
    }

    /// Append the packet, encoded for `version`, to `buf`.
    ///
    /// The exact size is computed first, so `buf` grows at most once and
    /// nothing is written when an error is returned.
    pub fn encode(&self, version: ProtocolVersion, buf: &mut BytesMut) -> Result<(), EncodeError> {
        let v = version;
        frame(
            self.first_byte(),
            self.body_len(version)?,
            buf,
            |buf| match self {
                Packet::Connect(p) => p.write(buf),
                Packet::ConnAck(p) => p.write(v, buf),
                Packet::Publish(p) => p.write(v, buf),
                Packet::PubAck(p) | Packet::PubRec(p) | Packet::PubRel(p) | Packet::PubComp(p) => {
                    p.write(v, buf)
                }
                Packet::Subscribe(p) => p.write(v, buf),
                Packet::SubAck(p) => p.write(v, buf),
                Packet::Unsubscribe(p) => p.write(v, buf),
                Packet::UnsubAck(p) => p.write(v, buf),
                Packet::PingReq | Packet::PingResp => {}
                Packet::Disconnect(p) => p.write(v, buf),
                Packet::Auth(p) => p.write(buf),
            },
        )
        .map(|_| ())
    }
}

/// Append a fixed header (`first_byte`, Remaining Length `body`) and the body that
/// `write` puts; returns the bytes appended. Nothing is written on error.
pub(crate) fn frame(
    first_byte: u8,
    body: usize,
    buf: &mut BytesMut,
    write: impl FnOnce(&mut BytesMut),
) -> Result<usize, EncodeError> {
    if body > varint::MAX_VARINT as usize {
        return Err(EncodeError::TooLarge(body));
    }
    let total = 1 + varint::len(body as u32) + body;
    buf.reserve(total);
    buf.put_u8(first_byte);
    varint::write(body as u32, buf);
    let start = buf.len();
    write(buf);
    debug_assert_eq!(
        buf.len() - start,
        body,
        "body_len disagrees with write for packet type {}",
        first_byte >> 4
    );
    Ok(total)
}

/// Fail with [`EncodeError::NotInVersion`] when `present` and `version` is 3.x.
pub(crate) fn v5_only(
    present: bool,
    what: &'static str,
    version: ProtocolVersion,
) -> Result<(), EncodeError> {
    if present && !version.is_v5() {
        Err(EncodeError::NotInVersion(what, version))
    } else {
        Ok(())
    }
}
