//! Fuzz target: the cluster's MQTT topic ↔ NATS subject encoding (issue #15, design §3.1).
//!
//! Every valid topic encodes to a subject NATS accepts (no empty token, no wildcard token,
//! no space or control byte) and decodes back exactly; for every valid filter, NATS'
//! matching of its encoded subjects agrees with MQTT's matching of the filter
//! (`tern_proto::topic::matches`), `$` topics and empty levels included.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use tern_cluster::topic::{decode_subject, encode_filter, encode_topic};
use tern_fuzz::Levels;
use tern_proto::topic::matches;

#[derive(Arbitrary, Debug)]
struct Input {
    topic: Levels,
    filter: Levels,
}

/// NATS subject matching: `*` one token, `>` one or more at the end.
fn nats_match(filter: &str, subject: &str) -> bool {
    let f: Vec<&str> = filter.split('.').collect();
    let s: Vec<&str> = subject.split('.').collect();
    for (i, t) in f.iter().enumerate() {
        match *t {
            ">" => return s.len() > i,
            "*" if i < s.len() => {}
            t if i < s.len() && s[i] == t => {}
            _ => return false,
        }
    }
    f.len() == s.len()
}

fuzz_target!(|input: Input| {
    let Some(topic) = input.topic.topic() else { return };
    let subject = encode_topic("tern", &topic);
    assert!(
        subject
            .split('.')
            .all(|t| !t.is_empty() && t != "*" && t != ">" && t.bytes().all(|b| b > b' ' && b != 0x7f)),
        "{topic:?} -> {subject:?} is not a valid subject"
    );
    assert_eq!(decode_subject("tern", &subject).as_deref(), Ok(topic.as_str()));
    let Some(filter) = input.filter.filter() else { return };
    let subjects = encode_filter("tern", &filter);
    assert_eq!(
        matches(&topic, &filter),
        subjects.iter().any(|f| nats_match(f, &subject)),
        "{filter:?} ({subjects:?}) against {topic:?} ({subject:?})"
    );
});
