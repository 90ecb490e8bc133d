//! Will flood: rounds of connections that each carry a large will and are then dropped without
//! DISCONNECT. Every will of a connection the broker accepted is published exactly once, and
//! nothing of the connections stays: sessions, connections and partial packets go back to
//! where they were.

use std::collections::HashSet;

use tern_proto::{Connect, Packet, QoS, ReasonCode};

use crate::support::*;

const ROUNDS: usize = 2;
const PER_ROUND: usize = 100;
/// Close to the largest a will payload can be (a two-byte length).
const WILL: usize = 65_000;
const MAX_PACKET: u32 = 128 * 1024;

/// v3.1.1 [MQTT-3.1.2-8], v5 [MQTT-3.1.2-8]: the will is published when the connection closes
/// without DISCONNECT, once.
#[tokio::test]
async fn a_will_flood_publishes_every_will_once_and_leaves_nothing_behind() {
    let b = Broker::start(|c| {
        c.max_packet_size = MAX_PACKET;
        c.max_connect_packet_size = MAX_PACKET;
    })
    .await;
    let canary = Canary::start(b.addr()).await;
    let mut watcher = Raw::connect(b.addr(), V5, "will-watcher").await;
    watcher.subscribe("wills/#", QoS::AtLeastOnce).await;
    let sampler = b.sampler();
    let mut seen = HashSet::new();
    for round in 0..ROUNDS {
        let mut attackers = Vec::new();
        for i in 0..PER_ROUND {
            let v = version(i);
            let id = format!("will-{round}-{i}");
            let mut c = Connect::new(v, id.as_str());
            c.keep_alive = 0;
            c.will = Some(tern_proto::Will {
                topic: format!("wills/{id}").into(),
                payload: vec![b'w'; WILL].into(),
                qos: QoS::AtLeastOnce,
                retain: false,
                properties: Default::default(),
            });
            let (a, ack) = Raw::connect_with(b.addr(), c).await;
            assert_eq!(ack.reason_code, ReasonCode::Success, "{id}");
            attackers.push(a);
        }
        // Dropped, not disconnected: every will goes out.
        drop(attackers);
        for _ in 0..PER_ROUND {
            let p = match watcher.next_within(PATIENCE).await {
                Ok(Some(Packet::Publish(p))) => p,
                other => panic!("round {round}: expected a will, got {other:?}"),
            };
            assert_eq!(p.payload.len(), WILL);
            assert!(seen.insert(p.topic.to_string()), "will {} twice", p.topic);
            watcher.ack(&p).await;
        }
        canary.progress().await;
        b.until("the round's connections and sessions are gone", |s| {
            s.connections_open == CANARY_CONNECTIONS + 1 && s.sessions == CANARY_CONNECTIONS + 1
        })
        .await;
    }
    watcher.expect_silence(100).await;
    assert_eq!(seen.len(), ROUNDS * PER_ROUND);
    let end = b.stats();
    assert_eq!(
        (end.partial_bytes, end.queued_messages, end.messages_dropped),
        (0, 0, 0),
        "{end:?}"
    );
    sampler.finish().await;
    canary.finish().await;
}
