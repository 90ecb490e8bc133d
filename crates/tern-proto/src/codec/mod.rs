//! The incremental decoder and the fixed header.
//!
//! [`Decoder::decode`] looks at the front of a read buffer. Until a whole packet
//! is there it consumes nothing and says how many more bytes it needs at least;
//! the packet size limit is checked as soon as the Remaining Length is known,
//! before the body is buffered. A complete packet is split off the buffer
//! without copying and its string and binary fields are slices of it.

pub(crate) mod properties;
pub(crate) mod reader;
pub(crate) mod varint;
pub(crate) mod writer;

use bytes::BytesMut;

use crate::packet::{Packet, PacketType};
use crate::{DecodeError, ProtocolVersion};

pub use properties::{
    AckProperties, AuthProperties, ConnAckProperties, ConnectProperties, DisconnectProperties, PropertyId,
    PublishProperties, SubscribeProperties, UnsubscribeProperties, WillProperties, ALL_PROPERTY_IDS,
};
pub use varint::MAX_VARINT;

/// The largest packet MQTT can express: 1 + 4 header bytes + 268,435,455.
pub const MAX_PACKET_SIZE: u32 = 268_435_460;

/// What [`Decoder::decode`] found at the front of the buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(
    clippy::large_enum_variant,
    reason = "NeedMore is transient; boxing would allocate per packet"
)]
pub enum Decoded {
    /// A whole packet, now removed from the buffer.
    Packet(Packet),
    /// The buffer holds part of a packet; at least this many more bytes are needed.
    /// Nothing was consumed.
    NeedMore(usize),
}

/// A checked fixed header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FixedHeader {
    /// Packet type.
    pub packet_type: PacketType,
    /// The four flag bits.
    pub flags: u8,
    /// Remaining Length.
    pub remaining_length: u32,
    /// Bytes taken by the fixed header itself (2 to 5).
    pub header_len: usize,
}

impl FixedHeader {
    /// Size of the whole packet.
    pub fn packet_size(&self) -> usize {
        self.header_len + self.remaining_length as usize
    }
}

/// Check the first byte: a known packet type for this version with the flags it requires.
fn check_first_byte(b: u8, version: ProtocolVersion) -> Result<(PacketType, u8), DecodeError> {
    let packet_type =
        PacketType::from_nibble(b >> 4, version).ok_or(DecodeError::InvalidPacketType(b >> 4))?;
    let flags = b & 0x0F;
    match packet_type.required_flags() {
        Some(required) if required != flags => Err(DecodeError::InvalidFlags {
            packet: packet_type,
            flags,
        }),
        // [MQTT-3.3.1-4]
        None if (flags >> 1) & 0x03 == 3 => Err(DecodeError::InvalidQoS),
        _ => Ok((packet_type, flags)),
    }
}

/// Parse a fixed header from the front of `bytes`; `Ok(None)` when more bytes are needed.
pub fn parse_fixed_header(
    bytes: &[u8],
    version: ProtocolVersion,
) -> Result<Option<FixedHeader>, DecodeError> {
    let Some(&first) = bytes.first() else {
        return Ok(None);
    };
    let (packet_type, flags) = check_first_byte(first, version)?;
    match varint::read(&bytes[1..])? {
        varint::VarInt::Complete(remaining_length, n) => Ok(Some(FixedHeader {
            packet_type,
            flags,
            remaining_length,
            header_len: 1 + n,
        })),
        varint::VarInt::Incomplete => Ok(None),
    }
}

/// Decodes packets of one connection.
///
/// Created with the version to expect; a server starts with any version and
/// calls [`Decoder::set_version`] once CONNECT told it which one the client speaks
/// (a CONNECT is always decoded by its own protocol level).
#[derive(Debug, Clone)]
pub struct Decoder {
    version: ProtocolVersion,
    max_packet_size: u32,
}

impl Decoder {
    /// A decoder for `version` that refuses packets larger than `max_packet_size` bytes.
    pub fn new(version: ProtocolVersion, max_packet_size: u32) -> Decoder {
        Decoder {
            version,
            max_packet_size,
        }
    }

    /// The version packets are decoded as.
    pub fn version(&self) -> ProtocolVersion {
        self.version
    }

    /// Change the version (after CONNECT).
    pub fn set_version(&mut self, version: ProtocolVersion) {
        self.version = version;
    }

    /// The largest packet accepted, in bytes, fixed header included.
    pub fn max_packet_size(&self) -> u32 {
        self.max_packet_size
    }

    /// Change the largest packet accepted.
    pub fn set_max_packet_size(&mut self, max: u32) {
        self.max_packet_size = max;
    }

    /// Decode the packet at the front of `buf`, if it is all there.
    ///
    /// On [`Decoded::Packet`] the packet's bytes are removed from `buf`; on
    /// [`Decoded::NeedMore`] and on error `buf` is left as it was. After an error
    /// the stream cannot be resynchronised: close the connection, sending the
    /// error's [`DecodeError::reason_code`] first where the version allows.
    pub fn decode(&self, buf: &mut BytesMut) -> Result<Decoded, DecodeError> {
        let Some(header) = parse_fixed_header(buf, self.version)? else {
            return Ok(Decoded::NeedMore(if buf.is_empty() { 2 } else { 1 }));
        };
        let size = header.packet_size();
        if size as u64 > u64::from(self.max_packet_size) {
            return Err(DecodeError::PacketTooLarge {
                size: size as u64,
                max: self.max_packet_size,
            });
        }
        if buf.len() < size {
            return Ok(Decoded::NeedMore(size - buf.len()));
        }
        let frame = buf.split_to(size).freeze();
        let body = frame.slice(header.header_len..);
        match Packet::decode_body(header.packet_type, header.flags, body, self.version) {
            Ok(p) => Ok(Decoded::Packet(p)),
            Err(e) => {
                // Put the bytes back so the buffer is as it was (a copy, on the error path only).
                let rest = std::mem::take(buf);
                buf.reserve(frame.len() + rest.len());
                buf.extend_from_slice(&frame);
                buf.extend_from_slice(&rest);
                Err(e)
            }
        }
    }
}

/// Decode one packet from the front of `buf` (see [`Decoder::decode`]).
pub fn decode(
    buf: &mut BytesMut,
    version: ProtocolVersion,
    max_packet_size: u32,
) -> Result<Decoded, DecodeError> {
    Decoder::new(version, max_packet_size).decode(buf)
}
