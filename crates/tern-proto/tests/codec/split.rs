//! A stream of packets fed to the decoder in chunks of random size (as a
//! socket would deliver it) decodes to the same packets as the whole stream
//! at once. Seeded, so every run feeds the same chunks.

use bytes::BytesMut;
use tern_proto::codec::MAX_PACKET_SIZE;
use tern_proto::{Decoded, Decoder, Packet, ProtocolVersion};

use crate::strategies::sample_packets;
use crate::support::{XorShift, ALL_VERSIONS};

fn stream(v: ProtocolVersion, packets: &[Packet]) -> Vec<u8> {
    let mut buf = BytesMut::new();
    for p in packets {
        p.encode(v, &mut buf).unwrap();
    }
    buf.to_vec()
}

/// Feed `bytes` in chunks whose sizes `next_chunk` picks, decoding whatever is
/// complete after each chunk.
///
/// Also holds the decoder to its hint: `NeedMore(n)` with `b` bytes buffered
/// promises that the packet at the front is at least `b + n` bytes long.
fn feed_in_chunks(v: ProtocolVersion, bytes: &[u8], mut next_chunk: impl FnMut() -> usize) -> Vec<Packet> {
    let decoder = Decoder::new(v, MAX_PACKET_SIZE);
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut pos = 0;
    // Lower bound on the size of the packet at the front of `buf`.
    let mut promised = 0;
    while pos < bytes.len() {
        let n = next_chunk().clamp(1, bytes.len() - pos);
        buf.extend_from_slice(&bytes[pos..pos + n]);
        pos += n;
        loop {
            let buffered = buf.len();
            match decoder.decode(&mut buf) {
                Ok(Decoded::Packet(p)) => {
                    let size = buffered - buf.len();
                    assert!(
                        size >= promised,
                        "a {size}-byte packet after a hint of {promised}"
                    );
                    promised = 0;
                    out.push(p);
                }
                Ok(Decoded::NeedMore(need)) => {
                    assert!(need > 0);
                    assert_eq!(buf.len(), buffered, "NeedMore consumed bytes");
                    assert!(buffered + need >= promised, "the hint went down");
                    promised = buffered + need;
                    break;
                }
                Err(e) => panic!("valid stream refused: {e:?}"),
            }
        }
    }
    assert!(buf.is_empty(), "{} bytes left over", buf.len());
    out
}

#[test]
fn random_chunks_give_the_same_packets() {
    for (i, v) in ALL_VERSIONS.into_iter().enumerate() {
        let packets = sample_packets(v, 300, 0x5EED + i as u64);
        let bytes = stream(v, &packets);

        // All at once.
        assert_eq!(feed_in_chunks(v, &bytes, || bytes.len()), packets, "{v}");

        for seed in 0..8u64 {
            let mut rng = XorShift::new(seed * 31 + i as u64);
            // Mostly small chunks, now and then a large one spanning packets.
            let chunked = feed_in_chunks(v, &bytes, || {
                if rng.chance(10) {
                    rng.range(64, 1024)
                } else {
                    rng.range(1, 8)
                }
            });
            assert_eq!(chunked, packets, "{v}, seed {seed}");
        }
    }
}

#[test]
fn one_byte_at_a_time_gives_the_same_packets() {
    for (i, v) in ALL_VERSIONS.into_iter().enumerate() {
        let packets = sample_packets(v, 100, 0xB17E + i as u64);
        let bytes = stream(v, &packets);
        assert_eq!(feed_in_chunks(v, &bytes, || 1), packets, "{v}");
    }
}
