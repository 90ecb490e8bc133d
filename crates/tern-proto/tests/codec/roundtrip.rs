//! Property tests: every generated packet (see `strategies`) encodes to
//! exactly `encoded_len` bytes and decodes back to itself; every strict prefix
//! of an encoding asks for more bytes without consuming any; packets written
//! back to back decode one by one.

use bytes::BytesMut;
use proptest::collection::vec;
use proptest::prelude::*;
use tern_proto::codec::MAX_PACKET_SIZE;
use tern_proto::{Decoded, Decoder, Packet, ProtocolVersion};

use crate::strategies::{packet, versioned_packet};
use crate::support::ALL_VERSIONS;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 256,
        ..ProptestConfig::default()
    }
}

fn versioned_stream() -> impl Strategy<Value = (ProtocolVersion, Vec<Packet>)> {
    proptest::sample::select(ALL_VERSIONS.to_vec()).prop_flat_map(|v| (Just(v), vec(packet(v), 1..6)))
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn decode_of_encode_is_identity((v, p) in versioned_packet()) {
        let mut buf = BytesMut::new();
        p.encode(v, &mut buf).unwrap();
        prop_assert_eq!(p.encoded_len(v), Ok(buf.len()));
        let decoded = Decoder::new(v, MAX_PACKET_SIZE).decode(&mut buf).unwrap();
        prop_assert_eq!(decoded, Decoded::Packet(p));
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn strict_prefixes_need_more_and_consume_nothing((v, p) in versioned_packet()) {
        let mut full = BytesMut::new();
        p.encode(v, &mut full).unwrap();
        let decoder = Decoder::new(v, MAX_PACKET_SIZE);
        for cut in 0..full.len() {
            let mut buf = BytesMut::from(&full[..cut]);
            match decoder.decode(&mut buf) {
                Ok(Decoded::NeedMore(n)) => {
                    prop_assert!(n > 0, "NeedMore(0) at {} of {}", cut, full.len());
                    // The hint is a lower bound: never more than what is really missing.
                    prop_assert!(cut + n <= full.len(), "NeedMore({}) at {} of {}", n, cut, full.len());
                }
                other => prop_assert!(false, "prefix {} of {}: {:?}", cut, full.len(), other),
            }
            prop_assert_eq!(&buf[..], &full[..cut]);
        }
    }

    #[test]
    fn concatenated_packets_decode_one_by_one((v, packets) in versioned_stream()) {
        let mut buf = BytesMut::new();
        let mut ends = Vec::new();
        for p in &packets {
            p.encode(v, &mut buf).unwrap();
            ends.push(buf.len());
        }
        let total = buf.len();
        let decoder = Decoder::new(v, MAX_PACKET_SIZE);
        for (p, end) in packets.iter().zip(ends) {
            prop_assert_eq!(decoder.decode(&mut buf).unwrap(), Decoded::Packet(p.clone()));
            prop_assert_eq!(buf.len(), total - end);
        }
        prop_assert_eq!(decoder.decode(&mut buf).unwrap(), Decoded::NeedMore(2));
    }
}
