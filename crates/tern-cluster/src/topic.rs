//! MQTT topics and filters as NATS subjects: one rule for the QoS 0 subjects and the stream
//! subjects, total (every MQTT topic has an encoding) and reversible.
//!
//! Each MQTT level becomes exactly one NATS token:
//! - the bytes `A-Z a-z 0-9 _ -` are copied as they are;
//! - every other byte is written `=HH` (upper-case hex): `.`, space, `*`, `>`, `$`, `=`
//!   itself, control bytes and every byte of a non-ASCII character;
//! - an empty level becomes the token `=` alone (an escape is always three characters, so
//!   this is unambiguous).
//!
//! Topics beginning with `$` go under the branch `d`, the others under `u`, so that a filter
//! beginning with a wildcard never reaches a `$` topic ([MQTT-4.7.2-1]). In a filter, `+`
//! becomes `*`, and a trailing `#` becomes `>` *and* the parent subject (`a/#` matches `a`);
//! `#` alone is `u.>`.
//!
//! Examples: `sensors/t1/temp` → `u.sensors.t1.temp`; `a//b` → `u.a.=.b`; `$SYS/x` →
//! `d.=24SYS.x`; `k.v` → `u.k=2Ev`; filter `a/+/#` → `u.a.*.>` and `u.a.*`.

use std::fmt::Write as _;

/// Whether `b` is copied into a token as it is.
fn plain(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
}

/// Append the token of one MQTT level.
fn push_level(out: &mut String, level: &str) {
    if level.is_empty() {
        out.push('=');
        return;
    }
    for &b in level.as_bytes() {
        if plain(b) {
            out.push(b as char);
        } else {
            // Writing to a String cannot fail.
            let _ = write!(out, "={b:02X}");
        }
    }
}

/// The subject of `topic` (a valid MQTT topic name) under `prefix` (`prefix.u.…` or
/// `prefix.d.…`; `prefix` empty: no prefix).
pub fn encode_topic(prefix: &str, topic: &str) -> String {
    let mut out = String::with_capacity(prefix.len() + 3 + topic.len() * 2);
    if !prefix.is_empty() {
        out.push_str(prefix);
        out.push('.');
    }
    out.push_str(if topic.starts_with('$') { "d" } else { "u" });
    for level in topic.split('/') {
        out.push('.');
        push_level(&mut out, level);
    }
    out
}

/// Why a subject is not the encoding of a topic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// Neither the `u` nor the `d` branch after the prefix.
    #[error("subject {0:?} is not under the topic branches")]
    Branch(String),
    /// A token holds a character the encoding never writes, or a bad escape.
    #[error("subject token {0:?} is not an encoded topic level")]
    Token(String),
    /// The bytes are not UTF-8.
    #[error("subject decodes to bytes that are not UTF-8")]
    Utf8,
}

/// The topic of `subject`, which begins with `prefix.` (`prefix` empty: no prefix).
pub fn decode_subject(prefix: &str, subject: &str) -> Result<String, DecodeError> {
    let rest = if prefix.is_empty() {
        subject
    } else {
        subject
            .strip_prefix(prefix)
            .and_then(|r| r.strip_prefix('.'))
            .ok_or_else(|| DecodeError::Branch(subject.to_string()))?
    };
    let (branch, levels) = rest
        .split_once('.')
        .ok_or_else(|| DecodeError::Branch(subject.to_string()))?;
    if branch != "u" && branch != "d" {
        return Err(DecodeError::Branch(subject.to_string()));
    }
    let mut bytes = Vec::with_capacity(levels.len());
    for (i, token) in levels.split('.').enumerate() {
        if i > 0 {
            bytes.push(b'/');
        }
        decode_token(token, &mut bytes)?;
    }
    let topic = String::from_utf8(bytes).map_err(|_| DecodeError::Utf8)?;
    if (branch == "d") != topic.starts_with('$') {
        return Err(DecodeError::Branch(subject.to_string()));
    }
    Ok(topic)
}

fn decode_token(token: &str, out: &mut Vec<u8>) -> Result<(), DecodeError> {
    if token == "=" {
        return Ok(());
    }
    let bad = || DecodeError::Token(token.to_string());
    let t = token.as_bytes();
    if t.is_empty() {
        return Err(bad());
    }
    let mut i = 0;
    while i < t.len() {
        match t[i] {
            b'=' => {
                let hex = t.get(i + 1..i + 3).ok_or_else(bad)?;
                let hex = std::str::from_utf8(hex).map_err(|_| bad())?;
                // Only the upper-case form is written: anything else would give a second
                // subject for one topic.
                if hex.bytes().any(|c| c.is_ascii_lowercase()) {
                    return Err(bad());
                }
                let b = u8::from_str_radix(hex, 16).map_err(|_| bad())?;
                if plain(b) {
                    return Err(bad());
                }
                out.push(b);
                i += 3;
            }
            b if plain(b) => {
                out.push(b);
                i += 1;
            }
            _ => return Err(bad()),
        }
    }
    Ok(())
}

/// The subjects a NATS subscription needs to receive what `filter` (a valid MQTT filter
/// without `$share/GROUP/`) matches: one, or two for a trailing `#` (the subject with `>` and
/// its parent).
pub fn encode_filter(prefix: &str, filter: &str) -> Vec<String> {
    let mut out = String::with_capacity(prefix.len() + 3 + filter.len() * 2);
    if !prefix.is_empty() {
        out.push_str(prefix);
        out.push('.');
    }
    out.push_str(if filter.starts_with('$') { "d" } else { "u" });
    let levels: Vec<&str> = filter.split('/').collect();
    let mut parent = None;
    for (i, level) in levels.iter().enumerate() {
        match *level {
            "#" => {
                // `a/#` also matches `a`; `#` alone has no parent topic.
                if i > 0 {
                    parent = Some(out.clone());
                }
                out.push_str(".>");
            }
            "+" => out.push_str(".*"),
            l => {
                out.push('.');
                push_level(&mut out, l);
            }
        }
    }
    let mut subjects = vec![out];
    subjects.extend(parent);
    subjects
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_examples_of_the_design() {
        assert_eq!(encode_topic("", "sensors/t1/temp"), "u.sensors.t1.temp");
        assert_eq!(encode_topic("", "a//b"), "u.a.=.b");
        assert_eq!(encode_topic("", "/x"), "u.=.x");
        assert_eq!(encode_topic("", "$SYS/broker/load"), "d.=24SYS.broker.load");
        assert_eq!(encode_topic("", "k.v/öl"), "u.k=2Ev.=C3=B6l");
        assert_eq!(encode_topic("tern.t", "a b/*/>"), "tern.t.u.a=20b.=2A.=3E");
        assert_eq!(encode_filter("", "a/+/#"), vec!["u.a.*.>", "u.a.*"]);
        assert_eq!(encode_filter("", "#"), vec!["u.>"]);
        assert_eq!(encode_filter("", "$SYS/#"), vec!["d.=24SYS.>", "d.=24SYS"]);
        assert_eq!(encode_filter("p", "+"), vec!["p.u.*"]);
    }

    #[test]
    fn subjects_that_no_topic_encodes_to_are_refused() {
        for s in [
            "x.a", "u", "u.a=2e", "u.a=41", "u.a=4", "u.=2", "u.a b", "d.a", "u.=24a",
        ] {
            assert!(decode_subject("", s).is_err(), "{s}");
        }
        assert!(decode_subject("tern", "other.u.a").is_err());
        assert_eq!(decode_subject("tern", "tern.u.a.=").as_deref(), Ok("a/"));
    }
}
