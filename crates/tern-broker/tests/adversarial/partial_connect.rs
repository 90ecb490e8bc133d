//! Partial CONNECT flood: unauthenticated sockets each send most of a large CONNECT and never
//! finish it. Those within `max_connect_packet_size` count against `max_partial_bytes` (the
//! oldest are closed when it runs out, the rest at the connect timeout); those announcing more
//! are refused on the fixed header, before anything is buffered.

use tokio::io::AsyncWriteExt;

use crate::support::*;

const ATTACKERS: usize = 200;
const MAX_PACKET: u32 = 64 * 1024;
const MAX_CONNECT: u32 = 32 * 1024;
/// The smallest budget the configuration accepts for this packet size (2 x 64 KiB + 64 KiB).
const BUDGET: usize = 192 * 1024;
/// Partial packets below this are not counted (see `budget.rs`): the most that can hold a
/// claim at once is `BUDGET / TRACKED`.
const TRACKED: usize = 16 * 1024;

#[tokio::test]
async fn partial_connect_flood_stays_within_the_budget_and_the_connect_limit() {
    let b = Broker::start(|c| {
        c.max_packet_size = MAX_PACKET;
        c.max_connect_packet_size = MAX_CONNECT;
        c.max_partial_bytes = BUDGET;
        // Long enough for the flood to be sent before any timeout: the budget does the closing.
        c.connect_timeout_secs = 3;
    })
    .await;
    let canary = Canary::start(b.addr()).await;
    let sampler = b.sampler();
    let mut socks = sockets(b.addr(), ATTACKERS).await;
    let mut within = 0;
    for (i, s) in socks.iter_mut().enumerate() {
        let level = if i % 4 < 2 { 4 } else { 5 };
        let data = if i.is_multiple_of(2) {
            // 99 % of a CONNECT just within the limit.
            within += 1;
            let mut d = connect_head(level, MAX_CONNECT as usize - 5);
            d.resize(MAX_CONNECT as usize * 99 / 100, b'x');
            d
        } else {
            // A CONNECT announcing 1 MiB, followed by 8 KiB of it.
            let mut d = connect_head(level, 1 << 20);
            d.resize(8 * 1024, b'x');
            d
        };
        let _ = s.write_all(&data).await;
    }
    // The oldest partial CONNECTs were closed as newer ones came: at most BUDGET / TRACKED of
    // them can have survived until the connect timeout.
    b.until("partial CONNECTs evicted by the budget", |s| {
        s.partial_evictions as usize >= within - BUDGET / TRACKED
    })
    .await;
    canary.progress().await;
    // The connect deadline runs on the broker's clock: let it pass.
    b.pass(std::time::Duration::from_secs(4)).await;
    for (i, s) in socks.iter_mut().enumerate() {
        let answer = closed(s).await;
        if !i.is_multiple_of(2) && i % 4 >= 2 {
            // 5.0: CONNACK 0x95 Packet too large, decided on the fixed header; 3.1.1: closed.
            assert_eq!(answer, [0x20, 0x03, 0x00, 0x95, 0x00], "attacker {i}");
        } else {
            assert!(answer.is_empty(), "attacker {i} got {answer:02X?}");
        }
    }
    let end = b
        .until("every attacker's connection is gone", |s| {
            s.connections_open == CANARY_CONNECTIONS && s.partial_bytes == 0
        })
        .await;
    let peak = sampler.finish().await;
    assert!(peak.partial_bytes <= BUDGET, "{peak:?}");
    assert!(
        peak.partial_bytes > 0,
        "the flood never reached the budget: {peak:?}"
    );
    assert_eq!(end.sessions, CANARY_CONNECTIONS, "no attacker got a session");
    canary.finish().await;
}
