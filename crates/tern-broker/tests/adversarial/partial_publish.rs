//! Partial PUBLISH flood after CONNECT: connected clients each send most of a large PUBLISH
//! and stop. The broker-wide budget closes the oldest holders (5.0: DISCONNECT 0x97) as new
//! ones arrive; the packet stall timeout closes the rest, keep-alive or not.

use std::time::Duration;

use tern_proto::ReasonCode;

use crate::support::*;

const ATTACKERS: usize = 200;
const MAX_PACKET: u32 = 64 * 1024;
const BUDGET: usize = 192 * 1024;
const TRACKED: usize = 16 * 1024;
const STALL_SECS: u64 = 30;

#[tokio::test]
async fn partial_publish_flood_is_evicted_by_the_budget_then_the_stall_timeout() {
    let b = Broker::start(|c| {
        c.max_packet_size = MAX_PACKET;
        c.max_partial_bytes = BUDGET;
        c.packet_stall_timeout_secs = STALL_SECS;
    })
    .await;
    let canary = Canary::start(b.addr()).await;
    let sampler = b.sampler();
    let mut partial = publish_head(MAX_PACKET as usize - 5);
    partial.resize(MAX_PACKET as usize * 99 / 100, b'x');
    let mut attackers = Vec::new();
    for i in 0..ATTACKERS {
        let v = version(i);
        let mut a = Raw::connect(b.addr(), v, &format!("partial-{i}")).await;
        a.send_bytes(&partial).await;
        attackers.push(a);
    }
    b.until("partial PUBLISHes evicted by the budget", |s| {
        s.partial_evictions as usize >= ATTACKERS - BUDGET / TRACKED
    })
    .await;
    canary.progress().await;
    // The survivors hold their packets in progress until the stall timeout (broker time).
    b.pass(Duration::from_secs(STALL_SECS + 1)).await;
    let mut quota = 0;
    for (i, a) in attackers.iter_mut().enumerate() {
        match a.expect_closed().await {
            Some(ReasonCode::QuotaExceeded) => quota += 1,
            None => {}
            other => panic!("attacker {i}: {other:?}"),
        }
    }
    // Every 5.0 attacker the budget evicted was told why.
    assert!(
        quota >= ATTACKERS / 2 - BUDGET / TRACKED,
        "{quota} DISCONNECT 0x97"
    );
    let end = b
        .until("every attacker's connection is gone", |s| {
            s.connections_open == CANARY_CONNECTIONS && s.sessions == CANARY_CONNECTIONS
        })
        .await;
    let peak = sampler.finish().await;
    assert!(peak.partial_bytes <= BUDGET, "{peak:?}");
    assert!(
        peak.partial_bytes > 0,
        "the flood never reached the budget: {peak:?}"
    );
    assert_eq!(end.partial_bytes, 0);
    canary.finish().await;
}
