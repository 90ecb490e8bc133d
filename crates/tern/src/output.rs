//! How `tern sub` prints messages: the payload, `topic payload` (verbose), or
//! one JSON object per line.

use std::fmt::Write as _;

use tern_client::Message;

/// Output format of `tern sub`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// The payload.
    Plain,
    /// `topic payload`.
    Verbose,
    /// One JSON object per message.
    Json,
}

/// The bytes to print for `m`, newline included.
pub fn format(m: &Message, format: Format) -> Vec<u8> {
    let mut out = Vec::with_capacity(m.payload.len() + m.topic.len() + 2);
    match format {
        Format::Plain => out.extend_from_slice(&m.payload),
        Format::Verbose => {
            out.extend_from_slice(m.topic.as_bytes());
            out.push(b' ');
            out.extend_from_slice(&m.payload);
        }
        Format::Json => out.extend_from_slice(json(m).as_bytes()),
    }
    out.push(b'\n');
    out
}

/// A JSON object: topic, qos, retain, payload (a string when it is UTF-8,
/// else `payload_hex`), and the 5.0 properties that are present.
pub fn json(m: &Message) -> String {
    let mut s = String::from("{\"topic\":");
    string(&mut s, &m.topic);
    let _ = write!(s, ",\"qos\":{},\"retain\":{}", m.qos.as_u8(), m.retain);
    bytes_field(&mut s, "payload", &m.payload);
    let p = &m.properties;
    if let Some(v) = &p.content_type {
        s.push_str(",\"content_type\":");
        string(&mut s, v);
    }
    if let Some(v) = p.payload_format_indicator {
        let _ = write!(s, ",\"payload_format_indicator\":{v}");
    }
    if let Some(v) = p.message_expiry_interval {
        let _ = write!(s, ",\"message_expiry_interval\":{v}");
    }
    if let Some(v) = &p.response_topic {
        s.push_str(",\"response_topic\":");
        string(&mut s, v);
    }
    if let Some(v) = &p.correlation_data {
        bytes_field(&mut s, "correlation_data", v);
    }
    if !p.subscription_identifiers.is_empty() {
        let ids: Vec<String> = p.subscription_identifiers.iter().map(u32::to_string).collect();
        let _ = write!(s, ",\"subscription_identifiers\":[{}]", ids.join(","));
    }
    if !p.user_properties.is_empty() {
        s.push_str(",\"user_properties\":[");
        for (i, (k, v)) in p.user_properties.iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            s.push('[');
            string(&mut s, k);
            s.push(',');
            string(&mut s, v);
            s.push(']');
        }
        s.push(']');
    }
    s.push('}');
    s
}

/// `,"name":"text"` for UTF-8, else `,"name_hex":"…"`.
fn bytes_field(s: &mut String, name: &str, b: &[u8]) {
    match std::str::from_utf8(b) {
        Ok(text) => {
            let _ = write!(s, ",\"{name}\":");
            string(s, text);
        }
        Err(_) => {
            let _ = write!(s, ",\"{name}_hex\":\"");
            for byte in b {
                let _ = write!(s, "{byte:02x}");
            }
            s.push('"');
        }
    }
}

/// A JSON string literal (RFC 8259 section 7).
fn string(s: &mut String, text: &str) {
    s.push('"');
    for c in text.chars() {
        match c {
            '"' => s.push_str("\\\""),
            '\\' => s.push_str("\\\\"),
            '\n' => s.push_str("\\n"),
            '\r' => s.push_str("\\r"),
            '\t' => s.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(s, "\\u{:04x}", c as u32);
            }
            c => s.push(c),
        }
    }
    s.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_escapes_and_hex_for_binary() {
        let mut s = String::new();
        string(&mut s, "a\"b\\c\n\u{1}é");
        assert_eq!(s, r#""a\"b\\c\n\u0001é""#);
        let mut s = String::new();
        bytes_field(&mut s, "payload", &[0xff, 0x00]);
        assert_eq!(s, r#","payload_hex":"ff00""#);
    }
}
