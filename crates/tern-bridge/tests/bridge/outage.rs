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

/// QoS 2 across outages of the remote (another Tern, restarted on its port and its store,
/// `mem.crash()` for a crash of the remote): every message arrives exactly once
/// (v5 [MQTT-4.3.3-10]: the bridge's client resumes the remote session and continues each
/// handshake where it was).
#[tokio::test]
async fn qos2_through_remote_outages_arrives_exactly_once() {
    // The remote keeps each id until PUBREL; the bridge resumes at PUBREL: v5 [MQTT-4.3.3-10].
    use std::collections::BTreeMap;
    use tern_broker::durability::InMemory;
    use tern_broker::BrokerBuilder;

    let rounds: usize = std::env::var("TERN_BRIDGE_OUTAGE_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    let mem = InMemory::new();
    let start_remote = |port: u16| {
        let mem = mem.clone();
        async move {
            BrokerBuilder::new()
                .listen(format!("127.0.0.1:{port}").parse().unwrap())
                .configure(|c| c.sys_interval_secs = 0)
                .durability(mem.clone(), mem.restart())
                .bind()
                .await
                .unwrap()
                .spawn()
        }
    };
    let mut remote = start_remote(0).await;
    let port = remote.addr().port();
    let url = url_of(&remote);
    let (collector, mut events) = client(&url, "q2-collector", ProtocolVersion::V5).await;
    collector.subscribe("edge/#", QoS::ExactlyOnce).await.unwrap();
    let broker = tern().await;
    let bridges = start_bridge(
        &broker,
        bridge("q2", &url, "5").topic(
            BridgeTopic::new("q2/#", BridgeDirection::Out)
                .prefixes("", "edge/")
                .qos(2),
        ),
    )
    .await;
    let (publisher, _p) = client(&url_of(&broker), "q2-publisher", ProtocolVersion::V5).await;
    let mut n = 0usize;
    for round in 0..rounds {
        for _ in 0..HALF {
            publisher
                .publish("q2/a", n.to_string(), QoS::ExactlyOnce)
                .await
                .unwrap();
            n += 1;
        }
        // Even rounds: a graceful stop of the remote; odd rounds: a crash (what its store had
        // not made durable is gone; it acknowledged nothing that was not).
        if round % 2 == 0 {
            remote.shutdown().await;
        } else {
            mem.crash();
            drop(remote);
        }
        for _ in 0..HALF {
            publisher
                .publish("q2/a", n.to_string(), QoS::ExactlyOnce)
                .await
                .unwrap();
            n += 1;
        }
        remote = start_remote(port).await;
    }
    let mut counts: BTreeMap<usize, usize> = BTreeMap::new();
    while counts.len() < n {
        let m = next(&mut events).await;
        assert_eq!(m.qos, QoS::ExactlyOnce);
        *counts
            .entry(m.payload_str().unwrap().parse().unwrap())
            .or_default() += 1;
    }
    // Late duplicates would come right after.
    for m in drain(&mut events, std::time::Duration::from_millis(500)).await {
        *counts
            .entry(m.payload_str().unwrap().parse().unwrap())
            .or_default() += 1;
    }
    let twice: Vec<_> = counts.iter().filter(|(_, c)| **c > 1).collect();
    assert!(twice.is_empty(), "delivered more than once: {twice:?}");
    assert_eq!(counts.len(), n);
    bridges.stop().await;
}
