//! Random and mutated input: a bounded, seeded stand-in for the fuzz target
//! (`fuzz/fuzz_targets/decode.rs`) that runs on stable in CI.
//!
//! For 20,000 inputs, decoded as 3.1.1 and as 5.0, the decoder must not
//! panic; a decoded packet takes no more bytes than the buffer held and leaves
//! the rest untouched; `NeedMore` and errors leave the buffer as it was; and a
//! decoded packet re-encodes to bytes that decode to the same packet.

use std::panic::{catch_unwind, AssertUnwindSafe};

use bytes::BytesMut;
use tern_proto::codec::MAX_PACKET_SIZE;
use tern_proto::{Decoded, Decoder, ProtocolVersion};

use crate::strategies::sample_packets;
use crate::support::{assert_reencodes, encode, varint, XorShift, V3_1_1, V5};

const RANDOM_CASES: usize = 4_000;
const MUTATED_CASES: usize = 16_000;

/// What decoding one input produced, for the sanity check at the end.
#[derive(Default)]
struct Tally {
    packets: usize,
    need_more: usize,
    errors: usize,
}

/// Decode `input` to the end as `v` with the limit `max`, checking the
/// buffer contract and the re-encoding of every packet.
fn check(v: ProtocolVersion, max: u32, input: &[u8], tally: &mut Tally) {
    let run = catch_unwind(AssertUnwindSafe(|| {
        let decoder = Decoder::new(v, max);
        let mut buf = BytesMut::from(input);
        loop {
            let before = buf.to_vec();
            match decoder.decode(&mut buf) {
                Ok(Decoded::Packet(p)) => {
                    let consumed = before.len() - buf.len();
                    assert!(
                        consumed > 0 && consumed <= before.len(),
                        "consumed {consumed} of {}",
                        before.len()
                    );
                    assert!(
                        consumed as u64 <= u64::from(max),
                        "a {consumed}-byte packet passed a limit of {max}"
                    );
                    assert_eq!(
                        &buf[..],
                        &before[consumed..],
                        "the bytes after the packet changed"
                    );
                    assert_reencodes(v, &p);
                    tally.packets += 1;
                }
                Ok(Decoded::NeedMore(n)) => {
                    assert!(n > 0, "NeedMore(0)");
                    assert_eq!(&buf[..], &before[..], "NeedMore changed the buffer");
                    tally.need_more += 1;
                    return;
                }
                Err(e) => {
                    assert_eq!(&buf[..], &before[..], "error {e:?} changed the buffer");
                    let _ = e.reason_code();
                    let _ = e.to_string();
                    tally.errors += 1;
                    return;
                }
            }
        }
    }));
    if let Err(panic) = run {
        eprintln!("decoder check failed for {v} (max {max}) on input {input:02X?}");
        std::panic::resume_unwind(panic);
    }
}

/// Input that is random but framed well enough to reach the body parsers
/// most of the time: a packet type with its usual flags and a Remaining
/// Length that matches the random body.
fn random_input(rng: &mut XorShift) -> Vec<u8> {
    let body_len = rng.range(0, 40);
    let body: Vec<u8> = (0..body_len).map(|_| rng.byte()).collect();
    match rng.below(4) {
        // Pure noise.
        0 => {
            let mut out = vec![rng.byte()];
            out.extend(body);
            out
        }
        // Right framing, random body.
        1 | 2 => {
            let t = rng.range(1, 15) as u8;
            let flags = match t {
                3 => rng.byte() & 0x0B, // PUBLISH: DUP, QoS 0/1, RETAIN
                6 | 8 | 10 => 0b0010,
                _ => 0,
            };
            let mut out = vec![(t << 4) | flags];
            out.extend(varint(body.len() as u32));
            out.extend(body);
            out
        }
        // Random first byte, plausible length.
        _ => {
            let mut out = vec![rng.byte()];
            out.extend(varint(rng.range(0, 48) as u32));
            out.extend(body);
            out
        }
    }
}

/// Where the Remaining Length of a packet starting at 0 ends.
fn header_end(bytes: &[u8]) -> usize {
    let mut i = 1;
    while i < bytes.len() && i < 5 && bytes[i] & 0x80 != 0 {
        i += 1;
    }
    (i + 1).min(bytes.len())
}

/// One to three mutations of a valid encoding.
fn mutate(rng: &mut XorShift, base: &[u8]) -> Vec<u8> {
    let mut b = base.to_vec();
    for _ in 0..rng.range(1, 3) {
        if b.is_empty() {
            b.push(rng.byte());
            continue;
        }
        let at = rng.below(b.len());
        match rng.below(8) {
            // Flip one bit.
            0 | 1 => b[at] ^= 1 << rng.below(8),
            // Overwrite a byte.
            2 => b[at] = rng.byte(),
            // Insert a byte.
            3 => b.insert(at, rng.byte()),
            // Delete a byte.
            4 => {
                b.remove(at);
            }
            // Truncate.
            5 => b.truncate(at),
            // Corrupt the Remaining Length: another value, or a long varint.
            6 => {
                let end = header_end(&b);
                let rest = b.split_off(end);
                b.truncate(1);
                let new_len = match rng.below(4) {
                    0 => rest.len() as u32 + rng.range(1, 4) as u32,
                    1 => (rest.len() as u32).saturating_sub(rng.range(1, 4) as u32),
                    2 => rng.next_u64() as u32 & 0x0FFF_FFFF,
                    _ => rng.range(0, 300) as u32,
                };
                b.extend(varint(new_len));
                if rng.chance(10) {
                    // Four continuation bytes: a five-byte integer.
                    b.truncate(1);
                    b.extend([0xFF, 0xFF, 0xFF, 0xFF, 0x01]);
                }
                b.extend(rest);
            }
            // Corrupt an inner two-byte length (string, binary or packet id)
            // or a property length, keeping the outer length right.
            _ => {
                let end = header_end(&b);
                if end + 2 <= b.len() {
                    let at = rng.range(end, b.len() - 2);
                    let v = match rng.below(3) {
                        0 => 0,
                        1 => rng.range(0, b.len() + 4) as u16,
                        _ => rng.next_u64() as u16,
                    };
                    b[at..at + 2].copy_from_slice(&v.to_be_bytes());
                }
            }
        }
    }
    b
}

#[test]
fn random_and_mutated_input_never_breaks_the_decoder() {
    let mut rng = XorShift::new(0x0DEC_0DE5);
    let mut tally = Tally::default();
    let versions = [V3_1_1, V5];

    for _ in 0..RANDOM_CASES {
        let input = random_input(&mut rng);
        for v in versions {
            check(v, MAX_PACKET_SIZE, &input, &mut tally);
        }
    }

    // Valid encodings of every packet type for both versions, to mutate.
    let mut corpus = Vec::new();
    for (i, v) in versions.into_iter().enumerate() {
        for p in sample_packets(v, 250, 0xF0221 + i as u64) {
            corpus.push(encode(v, &p));
        }
    }
    for _ in 0..MUTATED_CASES {
        let mut base = corpus[rng.below(corpus.len())].clone();
        if rng.chance(15) {
            // Two packets back to back, so a mutation can hit the boundary.
            base.extend(&corpus[rng.below(corpus.len())]);
        }
        let input = mutate(&mut rng, &base);
        // Mostly no real limit; sometimes a small one, to reach PacketTooLarge.
        let max = if rng.chance(10) {
            rng.range(2, 64) as u32
        } else {
            MAX_PACKET_SIZE
        };
        for v in versions {
            check(v, max, &input, &mut tally);
        }
    }

    eprintln!(
        "robustness: {} packets decoded, {} NeedMore, {} errors",
        tally.packets, tally.need_more, tally.errors
    );
    // The inputs must exercise every outcome, or the test proves little.
    assert!(tally.packets > 1_000, "only {} packets decoded", tally.packets);
    assert!(tally.errors > 1_000, "only {} errors", tally.errors);
    assert!(tally.need_more > 1_000, "only {} NeedMore", tally.need_more);
}
