//! Variable byte integers (v5 section 1.5.5, 3.1.1 section 2.2.3).

use bytes::BufMut;

use crate::DecodeError;

/// The largest value a variable byte integer can carry (268,435,455).
pub const MAX_VARINT: u32 = 268_435_455;

/// Outcome of reading a variable byte integer from the front of a slice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum VarInt {
    /// The value and how many bytes encoded it.
    Complete(u32, usize),
    /// The slice ends before the last byte of the integer.
    Incomplete,
}

/// Read a variable byte integer; a fifth byte is malformed (v5 section 1.5.5, 3.1.1 section 2.2.3).
/// Non-minimal encodings are accepted, as 3.1.1 does not forbid them.
pub(crate) fn read(bytes: &[u8]) -> Result<VarInt, DecodeError> {
    let mut value: u32 = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if i == 4 {
            return Err(DecodeError::VarIntTooLong);
        }
        value |= u32::from(b & 0x7F) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(VarInt::Complete(value, i + 1));
        }
    }
    if bytes.len() >= 4 {
        return Err(DecodeError::VarIntTooLong);
    }
    Ok(VarInt::Incomplete)
}

/// How many bytes `value` takes as a variable byte integer.
pub(crate) fn len(value: u32) -> usize {
    match value {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// Write `value` (at most [`MAX_VARINT`]) as a variable byte integer.
pub(crate) fn write(mut value: u32, buf: &mut impl BufMut) {
    debug_assert!(value <= MAX_VARINT);
    loop {
        let mut byte = (value & 0x7F) as u8;
        value >>= 7;
        if value > 0 {
            byte |= 0x80;
        }
        buf.put_u8(byte);
        if value == 0 {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boundaries_from_the_spec_table() {
        // v5 table 1-1 / 3.1.1 table 2.4: the edges of each length, written in the fewest
        // bytes (v5 [MQTT-1.5.5-1]).
        let cases: &[(u32, &[u8])] = &[
            (0, &[0x00]),
            (127, &[0x7F]),
            (128, &[0x80, 0x01]),
            (16_383, &[0xFF, 0x7F]),
            (16_384, &[0x80, 0x80, 0x01]),
            (2_097_151, &[0xFF, 0xFF, 0x7F]),
            (2_097_152, &[0x80, 0x80, 0x80, 0x01]),
            (268_435_455, &[0xFF, 0xFF, 0xFF, 0x7F]),
        ];
        for &(value, bytes) in cases {
            let mut out = Vec::new();
            write(value, &mut out);
            assert_eq!(out, bytes, "{value}");
            assert_eq!(len(value), bytes.len());
            assert_eq!(read(bytes), Ok(VarInt::Complete(value, bytes.len())));
            assert_eq!(read(&bytes[..bytes.len() - 1]), Ok(VarInt::Incomplete));
        }
    }

    #[test]
    fn five_bytes_are_malformed() {
        // v5 section 1.5.5 / 3.1.1 section 2.2.3: at most four bytes.
        assert_eq!(
            read(&[0xFF, 0xFF, 0xFF, 0xFF, 0x7F]),
            Err(DecodeError::VarIntTooLong)
        );
        assert_eq!(read(&[0xFF, 0xFF, 0xFF, 0xFF]), Err(DecodeError::VarIntTooLong));
    }

    #[test]
    fn non_minimal_encoding_is_accepted() {
        assert_eq!(read(&[0x80, 0x00]), Ok(VarInt::Complete(0, 2)));
    }
}
