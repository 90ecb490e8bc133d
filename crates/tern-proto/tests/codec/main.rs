//! Tests of the tern-proto codec, in one binary.
//!
//! - `vectors`: byte vectors worked out by hand from the MQTT 3.1.1 and 5.0
//!   specifications for every packet type and every decode error, with the
//!   exact [`tern_proto::DecodeError`] and its reason code.
//! - `roundtrip`: property tests over generated packets that are valid for
//!   their version (decode of encode, exact length, prefixes, concatenation).
//! - `split`: the same stream fed in random-size chunks decodes to the same
//!   packets as fed at once.
//! - `robustness`: random and mutated bytes never make the decoder panic,
//!   consume bytes it was not given, or produce a packet that does not
//!   re-encode to itself.
//! - `zero_copy`: decoded payloads and strings are slices of the read buffer.
//!
//! `support` holds the shared helpers and `strategies` the packet generators.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod robustness;
mod roundtrip;
mod split;
mod strategies;
mod support;
mod vectors;
mod zero_copy;
