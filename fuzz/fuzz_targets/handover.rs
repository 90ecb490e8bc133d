//! Fuzz target: the record of a session handed from one cluster node to another
//! (`tern_broker::durability::Handover`), which arrives over the network.
//!
//! Any bytes either decode or are refused, without a panic and without allocating more
//! than they could hold; what decodes encodes again to a record that decodes the same.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    tern_broker::fuzzing::handover_round_trip(data);
});
