//! Fuzz target: what a node reads for QoS 0 flow control from NATS (`tern_cluster::codec`):
//! any bytes as a flow control word from another node, and any `Tern-C` header value, parse
//! or are refused, never a panic; a word parsed names a valid node, at most `FLOW_LINES`
//! connections, and written again (`flow_word`) parses to the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tern_cluster::codec::{flow_word, parse_flow_word, sent_of, valid_node, FLOW_LINES, SENT};

fuzz_target!(|data: &[u8]| {
    if let Some((node, lines)) = parse_flow_word(data) {
        assert!(valid_node(node));
        assert!(lines.len() <= FLOW_LINES);
        let again = flow_word(node, &lines);
        assert_eq!(parse_flow_word(again.as_bytes()), Some((node, lines.clone())));
    }
    if let Ok(value) = std::str::from_utf8(data) {
        // A header value NATS delivers has no line break.
        if !value.contains(['\r', '\n']) {
            let mut h = async_nats::HeaderMap::new();
            h.insert(SENT, value);
            let _ = sent_of(&h);
        }
    }
});
