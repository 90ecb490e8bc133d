//! Fuzz target: arbitrary bytes through the decoder, as MQTT 3.1.1 and as 5.0.
//!
//! The decoder must never panic. Every packet it decodes must take bytes from
//! the front of the buffer only, encode again (to `encoded_len` bytes) and
//! decode from that encoding to an equal packet. `NeedMore` and errors must
//! leave the buffer untouched.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use tern_proto::codec::MAX_PACKET_SIZE;
use tern_proto::{Decoded, Decoder, ProtocolVersion};

fuzz_target!(|data: &[u8]| {
    for version in [ProtocolVersion::V3_1_1, ProtocolVersion::V5] {
        let decoder = Decoder::new(version, MAX_PACKET_SIZE);
        let mut buf = BytesMut::from(data);
        // Decode packet after packet until the input runs out or is refused.
        loop {
            let before = buf.len();
            match decoder.decode(&mut buf) {
                Ok(Decoded::Packet(packet)) => {
                    assert!(buf.len() < before, "a packet consumed nothing");
                    assert_eq!(&buf[..], &data[data.len() - buf.len()..], "the rest was altered");

                    let mut encoded = BytesMut::new();
                    if let Err(e) = packet.encode(version, &mut encoded) {
                        panic!("decoded packet does not encode: {e}: {packet:?}");
                    }
                    assert_eq!(packet.encoded_len(version), Ok(encoded.len()));
                    match decoder.decode(&mut encoded) {
                        Ok(Decoded::Packet(again)) => assert_eq!(again, packet),
                        other => panic!("re-encoded packet does not decode: {other:?}: {packet:?}"),
                    }
                    assert!(encoded.is_empty(), "re-encoding left bytes over");
                }
                Ok(Decoded::NeedMore(n)) => {
                    assert!(n > 0, "NeedMore(0)");
                    assert_eq!(buf.len(), before, "NeedMore consumed bytes");
                    break;
                }
                Err(_) => {
                    assert_eq!(buf.len(), before, "an error consumed bytes");
                    break;
                }
            }
        }
    }
});
