//! Encoding helpers and the exact lengths of what they write.

use bytes::{BufMut, BytesMut};

use crate::EncodeError;

/// Length on the wire of a string or binary field, or an error when it does not fit in 16 bits.
pub(crate) fn field_len(len: usize, what: &'static str) -> Result<usize, EncodeError> {
    if len > u16::MAX as usize {
        return Err(EncodeError::FieldTooLong(what));
    }
    Ok(2 + len)
}

/// Write a length-prefixed field (string or binary); its length was checked by [`field_len`].
pub(crate) fn put_field(buf: &mut BytesMut, data: &[u8]) {
    buf.put_u16(data.len() as u16);
    buf.put_slice(data);
}
