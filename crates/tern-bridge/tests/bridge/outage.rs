//! Remote outage: Mosquitto is stopped in the middle of a stream of sequence-numbered QoS 1
//! messages and started again; every message the local publisher got a PUBACK for arrives at
//! the remote subscriber, and in the order published (v5 [MQTT-4.6.0-6]; the resent ones
//! after the reconnection may arrive twice, as QoS 1 allows: v5 [MQTT-4.4.0-1]).
//! `TERN_BRIDGE_OUTAGE_ROUNDS` sets the number of outages (default 2).

use std::collections::BTreeSet;

use tern_broker::{BridgeDirection, BridgeTopic};
use tern_client::{ProtocolVersion, QoS};

use crate::support::*;

/// Messages published in each half of a round.
const HALF: usize = 100;

#[tokio::test]
async fn a_remote_outage_loses_no_acknowledged_message() {
    // In order, v5 [MQTT-4.6.0-6]; the bridge resends on reconnection, v5 [MQTT-4.4.0-1].
    let rounds: usize = std::env::var("TERN_BRIDGE_OUTAGE_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    let mut mosquitto = Mosquitto::start().await;
    let broker = tern().await;
    let bridges = start_bridge(
        &broker,
        bridge("outage", &mosquitto.url(), "5")
            .topic(BridgeTopic::new("seq/#", BridgeDirection::Out).prefixes("", "edge/")),
    )
    .await;
    let v5 = ProtocolVersion::V5;
    // MQTT 3.1.1 Clean Session 0: Mosquitto keeps its session across the restart.
    let (collector, mut events) = client(&mosquitto.url(), "collector", ProtocolVersion::V3_1_1).await;
    collector.subscribe("edge/seq/#", QoS::AtLeastOnce).await.unwrap();
    let (publisher, _p) = client(&url_of(&broker), "publisher", v5).await;

    let mut acknowledged = Vec::new();
    let mut n = 0usize;
    for _ in 0..rounds {
        for phase in 0..2 {
            for _ in 0..HALF {
                // Await each PUBACK: the message counts as acknowledged only then.
                publisher
                    .publish("seq/a", n.to_string(), QoS::AtLeastOnce)
                    .await
                    .unwrap();
                acknowledged.push(n);
                n += 1;
            }
            if phase == 0 {
                mosquitto.stop();
            }
        }
        wait_for("the bridge to notice the outage", || !state(&bridges).connected).await;
        assert!(state(&bridges).outbox_messages > 0, "messages wait in the outbox");
        mosquitto.restart().await;
    }

    let mut seen = BTreeSet::new();
    let mut order = Vec::new();
    let mut duplicates = 0;
    while seen.len() < acknowledged.len() {
        let Ok(Some(m)) = tokio::time::timeout(WAIT, events.next_message()).await else {
            let missing: Vec<_> = acknowledged.iter().filter(|i| !seen.contains(*i)).collect();
            panic!("lost: {missing:?}; bridge: {:?}", state(&bridges));
        };
        let i: usize = m.payload_str().unwrap().parse().unwrap();
        if seen.insert(i) {
            order.push(i);
        } else {
            duplicates += 1;
        }
    }
    let missing: Vec<_> = acknowledged.iter().filter(|i| !seen.contains(*i)).collect();
    assert!(missing.is_empty(), "lost: {missing:?}");
    assert!(order.windows(2).all(|w| w[0] < w[1]), "out of order: {order:?}");
    wait_for("the outbox to empty", || state(&bridges).outbox_messages == 0).await;
    let s = state(&bridges);
    assert_eq!((s.dropped, s.outbox_dropped), (0, 0), "{s:?}");
    eprintln!(
        "{rounds} outages, {} messages acknowledged, all arrived, {duplicates} duplicates",
        acknowledged.len()
    );
    bridges.stop().await;
}
