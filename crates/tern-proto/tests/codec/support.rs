//! Helpers shared by the test modules: decode/encode wrappers with the codec's
//! buffer contract checked on every call, a tiny wire builder that is
//! independent of the library's encoder, and a deterministic PRNG.

use bytes::BytesMut;
use tern_proto::codec::MAX_PACKET_SIZE;
use tern_proto::{DecodeError, Decoded, Decoder, Packet, ProtocolVersion, ReasonCode};

pub const V3_1: ProtocolVersion = ProtocolVersion::V3_1;
pub const V3_1_1: ProtocolVersion = ProtocolVersion::V3_1_1;
pub const V5: ProtocolVersion = ProtocolVersion::V5;

/// Every version the codec speaks.
pub const ALL_VERSIONS: [ProtocolVersion; 3] = [V3_1, V3_1_1, V5];

/// Decode `bytes`, which must hold exactly one packet, with no size limit to speak of.
///
/// Checks the buffer contract: a packet consumes all of `bytes`; an error
/// leaves the buffer as it was. `NeedMore` is a test failure here.
pub fn decode_one(v: ProtocolVersion, bytes: &[u8]) -> Result<Packet, DecodeError> {
    let mut buf = BytesMut::from(bytes);
    match Decoder::new(v, MAX_PACKET_SIZE).decode(&mut buf) {
        Ok(Decoded::Packet(p)) => {
            assert!(
                buf.is_empty(),
                "{} bytes left after {:?}",
                buf.len(),
                p.packet_type()
            );
            Ok(p)
        }
        Ok(Decoded::NeedMore(n)) => panic!("vector {bytes:02X?} is incomplete for {v}: needs {n} more"),
        Err(e) => {
            assert_eq!(&buf[..], bytes, "the buffer changed on error {e:?}");
            Err(e)
        }
    }
}

/// Encode `p` for `v`, checking that [`Packet::encoded_len`] is the number of bytes written.
pub fn encode(v: ProtocolVersion, p: &Packet) -> Vec<u8> {
    let mut buf = BytesMut::new();
    p.encode(v, &mut buf)
        .unwrap_or_else(|e| panic!("encode {p:?} for {v}: {e}"));
    assert_eq!(p.encoded_len(v), Ok(buf.len()), "encoded_len of {p:?}");
    buf.to_vec()
}

/// `bytes` decodes to `expected` and `expected` encodes to exactly `bytes`.
#[track_caller]
pub fn assert_vector(v: ProtocolVersion, bytes: &[u8], expected: &Packet) {
    assert_eq!(decode_one(v, bytes).as_ref(), Ok(expected), "decode for {v}");
    assert_eq!(encode(v, expected), bytes, "encode for {v}");
}

/// `bytes` is refused with exactly `err`, which maps to the reason code `rc`.
#[track_caller]
pub fn assert_rejected(v: ProtocolVersion, bytes: &[u8], err: DecodeError, rc: ReasonCode) {
    let got = decode_one(v, bytes);
    assert_eq!(got, Err(err), "decode {bytes:02X?} for {v}");
    if let Err(e) = got {
        assert_eq!(e.reason_code(), rc, "reason code of {e:?}");
    }
}

/// Shorthand for a Malformed Packet (0x81) rejection.
#[track_caller]
pub fn assert_malformed(v: ProtocolVersion, bytes: &[u8], err: DecodeError) {
    assert_rejected(v, bytes, err, ReasonCode::MalformedPacket);
}

/// Shorthand for a Protocol Error (0x82) rejection.
#[track_caller]
pub fn assert_protocol_error(v: ProtocolVersion, bytes: &[u8], err: DecodeError) {
    assert_rejected(v, bytes, err, ReasonCode::ProtocolError);
}

/// A Variable Byte Integer, written out here rather than by the library.
pub fn varint(mut n: u32) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        out.push(b);
        if n == 0 {
            return out;
        }
    }
}

/// A whole packet: first byte, Remaining Length, body.
pub fn frame(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    out.extend(varint(body.len() as u32));
    out.extend_from_slice(body);
    out
}

/// A two-byte length prefix and the bytes (UTF-8 string or binary data).
pub fn field(bytes: &[u8]) -> Vec<u8> {
    let mut out = (bytes.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(bytes);
    out
}

/// Concatenate byte slices.
pub fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

/// Properties: a Property Length and the property bytes.
pub fn props(content: &[u8]) -> Vec<u8> {
    cat(&[&varint(content.len() as u32), content])
}

/// Decode a packet that the codec produced, re-encode it and decode it again:
/// both decodes must agree and the encoding must be `encoded_len` bytes long.
pub fn assert_reencodes(v: ProtocolVersion, p: &Packet) {
    let bytes = encode(v, p);
    assert_eq!(
        decode_one(v, &bytes).as_ref(),
        Ok(p),
        "re-decode of {p:?} for {v}"
    );
}

/// xorshift64: a tiny deterministic PRNG so that the chunking and mutation
/// tests do the same thing on every run.
pub struct XorShift(u64);

impl XorShift {
    pub fn new(seed: u64) -> XorShift {
        // The state must never be zero.
        XorShift(seed ^ 0x9E37_79B9_7F4A_7C15 | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// Uniform-ish in `0..n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// Uniform-ish in `lo..=hi`.
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below(hi - lo + 1)
    }

    pub fn byte(&mut self) -> u8 {
        self.next_u64() as u8
    }

    /// True with probability `percent` / 100.
    pub fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
}
