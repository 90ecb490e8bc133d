//! Fuzz target: a NATS message as a node receives it from another (`tern_cluster::codec`):
//! any subject, headers and payload decode to messages or to an error, never a panic; a pack
//! (`Tern-K`) yields exactly as many messages as it counts, each a slice of the payload; a
//! stored message's number (`Tern-S`, `order_of`) is read or refused, never a panic, and one
//! written by `set_order` reads back.
#![no_main]

use arbitrary::Arbitrary;
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use tern_cluster::codec::{count, decode_all, order_of, set_order, ORDER, PACK};

#[derive(Arbitrary, Debug)]
struct Input {
    subject: String,
    headers: Vec<(u8, String)>,
    payload: Vec<u8>,
}

/// The header names a node reads, and one it does not.
const NAMES: [&str; 10] = [
    "Tern-Q",
    "Tern-R",
    "Tern-N",
    "Tern-O",
    "Tern-X",
    "Tern-P",
    "Tern-V",
    PACK,
    ORDER,
    "Nats-Msg-Id",
];

fuzz_target!(|input: Input| {
    let mut h = async_nats::HeaderMap::new();
    for (name, value) in &input.headers {
        // A header value NATS delivers has no line break (the client would refuse it).
        if value.contains(['\r', '\n']) {
            continue;
        }
        h.insert(NAMES[usize::from(*name) % NAMES.len()], value.as_str());
    }
    if let Some((run, n)) = order_of(Some(&h)) {
        let mut again = async_nats::HeaderMap::new();
        set_order(&mut again, run, n);
        assert_eq!(order_of(Some(&again)), Some((run, n)));
    }
    let payload = Bytes::from(input.payload);
    let subject = format!("tern.t.{}", input.subject);
    if let Ok((first, rest)) = decode_all("tern.t", &subject, Some(&h), payload.clone()) {
        if h.get(PACK).is_some() {
            assert_eq!(rest.len() + 1, count(Some(&h)));
            let carried: usize = std::iter::once(&first)
                .chain(&rest)
                .map(|m| 4 + m.payload.len())
                .sum();
            assert_eq!(carried, payload.len(), "a pack's messages are its whole payload");
        } else {
            assert!(rest.is_empty());
            assert_eq!(first.payload, payload);
        }
    }
});
