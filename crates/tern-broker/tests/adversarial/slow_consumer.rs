//! Slow consumer: a `#` subscriber that never reads its socket nor acknowledges anything,
//! while publishers flood QoS 1 messages. Its queue stays under twice its limits; publishers
//! are slowed down while it might still drain, and after `backpressure_timeout_ms` of broker
//! time without progress it counts as stalled: its messages are dropped (and counted) and the
//! publishers go on. Nobody else loses anything.

use std::time::Duration;

use bytes::BytesMut;
use tern_proto::{Packet, Publish, QoS};

use crate::support::*;

const PUBLISHERS: usize = 4;
const MESSAGES: usize = 500;
const PAYLOAD: usize = 1024;
const MAX_QUEUED: usize = 100;
const MAX_QUEUED_BYTES: usize = 64 * 1024;
const BACKPRESSURE_MS: u64 = 2000;
const STALLED_RECEIVE_MAXIMUM: u16 = 5;

/// `MESSAGES` QoS 1 PUBLISHes of `PAYLOAD` bytes on `topic`, packet ids 1..=MESSAGES, in one
/// buffer.
fn flood(topic: &str) -> Vec<u8> {
    let mut out = BytesMut::new();
    for n in 1..=MESSAGES {
        let mut p = Publish::new(topic, vec![b'm'; PAYLOAD]);
        p.qos = QoS::AtLeastOnce;
        p.packet_id = Some(pid(n as u16));
        Packet::Publish(p).encode(V3, &mut out).unwrap();
    }
    out.to_vec()
}

#[tokio::test]
async fn a_stalled_wildcard_subscriber_holds_a_bounded_queue_and_blocks_nobody_for_good() {
    let b = Broker::start(|c| {
        c.max_queued_messages = MAX_QUEUED;
        c.max_queued_bytes = MAX_QUEUED_BYTES;
        c.backpressure_timeout_ms = BACKPRESSURE_MS;
    })
    .await;
    let canary = Canary::start(b.addr()).await;
    let sampler = b.sampler();
    // The stalled subscriber takes everything, and never reads after its SUBACK.
    let (mut stalled, _) = Raw::connect_with(b.addr(), {
        let mut c = tern_proto::Connect::new(V5, "stalled");
        c.keep_alive = 0;
        c.properties.receive_maximum = Some(STALLED_RECEIVE_MAXIMUM);
        c
    })
    .await;
    stalled.subscribe("#", QoS::AtLeastOnce).await;
    let mut publishers = Vec::new();
    for i in 0..PUBLISHERS {
        let mut p = Raw::connect(b.addr(), V3, &format!("flooder-{i}")).await;
        let bytes = flood(&format!("flood/{i}"));
        publishers.push(tokio::spawn(async move {
            // The write blocks while the broker holds this publisher back.
            p.send_bytes(&bytes).await;
            for n in 1..=MESSAGES {
                match p.next_within(PATIENCE).await {
                    Ok(Some(Packet::PubAck(a))) => assert_eq!(a.packet_id, pid(n as u16)),
                    other => panic!("flooder {i}: expected PUBACK {n}, got {other:?}"),
                }
            }
            p
        }));
    }
    // The subscriber's queue fills: the publishers are held back while it might drain.
    b.until("the stalled subscriber's queue reaches its limit", |s| {
        s.largest_queue >= MAX_QUEUED || s.largest_queue_bytes + PAYLOAD > MAX_QUEUED_BYTES
    })
    .await;
    // No progress for the backpressure timeout (broker time): it counts as stalled.
    b.pass(Duration::from_millis(BACKPRESSURE_MS + 1)).await;
    for p in publishers {
        p.await.unwrap().disconnect().await;
    }
    canary.progress().await;
    let s = b.handle.session("stalled").unwrap();
    assert!(s.dropped > 0, "nothing was dropped for the stalled subscriber");
    assert!(s.inflight <= usize::from(STALLED_RECEIVE_MAXIMUM), "{s:?}");
    let stats = b.stats();
    assert_eq!(stats.messages_dropped, s.dropped, "the drops are counted");
    let peak = sampler.finish().await;
    assert!(peak.largest_queue <= 2 * MAX_QUEUED, "{peak:?}");
    assert!(peak.largest_queue_bytes <= 2 * MAX_QUEUED_BYTES, "{peak:?}");
    drop(stalled);
    canary.finish().await;
}
