//! Oversize Remaining Length: packets announcing 268,435,455 bytes, before and after CONNECT,
//! followed by a stream of their "body". The size is refused on the fixed header: nothing is
//! buffered, so the budget for partial packets never sees them.

use tern_proto::ReasonCode;
use tokio::io::AsyncWriteExt;

use crate::support::*;

const ATTACKERS: usize = 200;
const MAX_PACKET: u32 = 64 * 1024;

#[tokio::test]
async fn oversize_remaining_lengths_are_refused_on_the_fixed_header() {
    let b = Broker::start(|c| {
        c.max_packet_size = MAX_PACKET;
        c.max_connect_packet_size = 16 * 1024;
    })
    .await;
    let canary = Canary::start(b.addr()).await;
    let sampler = b.sampler();
    let junk = vec![b'x'; 64 * 1024];
    // Before CONNECT: a CONNECT of the largest size a Remaining Length can give.
    let mut socks = sockets(b.addr(), ATTACKERS / 2).await;
    for (i, s) in socks.iter_mut().enumerate() {
        let level = if i.is_multiple_of(2) { 4 } else { 5 };
        let _ = s.write_all(&connect_head(level, 268_435_455)).await;
        let _ = s.write_all(&junk).await;
    }
    // After CONNECT: a PUBLISH of that size.
    let mut connected = Vec::new();
    for i in 0..ATTACKERS / 2 {
        let v = version(i);
        let mut a = Raw::connect(b.addr(), v, &format!("oversize-{i}")).await;
        a.send_bytes(&publish_head(268_435_455)).await;
        a.send_bytes(&junk).await;
        connected.push(a);
    }
    canary.progress().await;
    for (i, s) in socks.iter_mut().enumerate() {
        let answer = closed(s).await;
        if !i.is_multiple_of(2) {
            // 5.0: CONNACK 0x95 Packet too large; 3.1.1: closed without a CONNACK.
            assert_eq!(answer, [0x20, 0x03, 0x00, 0x95, 0x00], "attacker {i}");
        } else {
            assert!(answer.is_empty(), "attacker {i}: {answer:02X?}");
        }
    }
    for (i, a) in connected.iter_mut().enumerate() {
        let expected = i.is_multiple_of(2).then_some(ReasonCode::PacketTooLarge);
        assert_eq!(a.expect_closed().await, expected, "attacker {i}");
    }
    let end = b
        .until("every attacker's connection is gone", |s| {
            s.connections_open == CANARY_CONNECTIONS && s.sessions == CANARY_CONNECTIONS
        })
        .await;
    let peak = sampler.finish().await;
    assert_eq!(peak.partial_bytes, 0, "an oversize packet was buffered: {peak:?}");
    assert_eq!(end.partial_evictions, 0);
    canary.finish().await;
}
