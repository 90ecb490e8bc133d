//! A cursor over one packet's bytes; every string and binary field it returns
//! is a slice of the packet buffer, not a copy.

use bytes::{Buf, Bytes};
use bytestring::ByteString;

use super::varint::{self, VarInt};
use crate::packet::PacketType;
use crate::{DecodeError, PacketId};

/// Reads the fields of one packet body.
pub(crate) struct Reader {
    buf: Bytes,
}

impl Reader {
    pub(crate) fn new(buf: Bytes) -> Reader {
        Reader { buf }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    pub(crate) fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        if self.buf.is_empty() {
            return Err(DecodeError::Truncated(what));
        }
        Ok(self.buf.get_u8())
    }

    pub(crate) fn u16(&mut self, what: &'static str) -> Result<u16, DecodeError> {
        if self.buf.len() < 2 {
            return Err(DecodeError::Truncated(what));
        }
        Ok(self.buf.get_u16())
    }

    pub(crate) fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        if self.buf.len() < 4 {
            return Err(DecodeError::Truncated(what));
        }
        Ok(self.buf.get_u32())
    }

    pub(crate) fn varint(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        match varint::read(&self.buf)? {
            VarInt::Complete(v, n) => {
                self.buf.advance(n);
                Ok(v)
            }
            VarInt::Incomplete => Err(DecodeError::Truncated(what)),
        }
    }

    pub(crate) fn packet_id(&mut self) -> Result<PacketId, DecodeError> {
        PacketId::new(self.u16("packet identifier")?).ok_or(DecodeError::ZeroPacketId)
    }

    /// The next `n` bytes, as a slice of the packet.
    pub(crate) fn take(&mut self, n: usize, what: &'static str) -> Result<Bytes, DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError::Truncated(what));
        }
        Ok(self.buf.split_to(n))
    }

    /// Binary Data: a two-byte length and that many bytes.
    pub(crate) fn binary(&mut self, what: &'static str) -> Result<Bytes, DecodeError> {
        let n = self.u16(what)? as usize;
        self.take(n, what)
    }

    /// UTF-8 Encoded String: well-formed, no U+0000 ([MQTT-1.5.4-1], [MQTT-1.5.4-2]).
    /// Surrogate code points are ill-formed UTF-8 and rejected by the same check.
    /// A BOM is kept as it is ([MQTT-1.5.4-3]).
    pub(crate) fn string(&mut self, what: &'static str) -> Result<ByteString, DecodeError> {
        let raw = self.binary(what)?;
        to_string(raw)
    }

    /// Everything left.
    pub(crate) fn rest(&mut self) -> Bytes {
        std::mem::take(&mut self.buf)
    }

    /// Fail unless every byte was consumed.
    pub(crate) fn finish(&self, packet: PacketType) -> Result<(), DecodeError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::TrailingBytes(self.buf.len(), packet))
        }
    }
}

/// Validate bytes as an MQTT UTF-8 string.
pub(crate) fn to_string(raw: Bytes) -> Result<ByteString, DecodeError> {
    if raw.contains(&0) {
        return Err(DecodeError::NullCharacter);
    }
    ByteString::try_from(raw).map_err(|_| DecodeError::InvalidUtf8)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(bytes: &'static [u8]) -> Result<ByteString, DecodeError> {
        Reader::new(Bytes::from_static(bytes)).string("test")
    }

    #[test]
    fn strings_follow_section_1_5_4() {
        assert_eq!(s(b"\x00\x03abc").map(|s| s.to_string()), Ok("abc".into()));
        // v3.1.1 [MQTT-1.5.3-1] / v5 [MQTT-1.5.4-1] ill-formed: C3 28, lone continuation, truncated sequence, overlong C0 80
        for bad in [
            &b"\x00\x02\xC3\x28"[..],
            b"\x00\x01\x80",
            b"\x00\x02\xE2\x82",
            b"\x00\x02\xC0\x80",
        ] {
            assert_eq!(
                Reader::new(Bytes::from_static(bad)).string("t"),
                Err(DecodeError::InvalidUtf8)
            );
        }
        // v3.1.1 [MQTT-1.5.3-1] / v5 [MQTT-1.5.4-1] surrogate U+D800 encoded as ED A0 80
        assert_eq!(s(b"\x00\x03\xED\xA0\x80"), Err(DecodeError::InvalidUtf8));
        // v3.1.1 [MQTT-1.5.3-2] / v5 [MQTT-1.5.4-2] U+0000
        assert_eq!(s(b"\x00\x03a\x00b"), Err(DecodeError::NullCharacter));
        // v3.1.1 [MQTT-1.5.3-3] / v5 [MQTT-1.5.4-3] a BOM is not stripped
        assert_eq!(s(b"\x00\x04\xEF\xBB\xBFa").map(|s| s.len()), Ok(4));
        // Length beyond the packet.
        assert_eq!(s(b"\x00\x05ab"), Err(DecodeError::Truncated("test")));
    }
}
