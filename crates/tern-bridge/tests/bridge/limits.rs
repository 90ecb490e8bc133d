//! The outbox is bounded by the broker's session queue limits: while the remote is down and
//! the outbox is full, local publishers are slowed down for `backpressure_timeout_ms`, then
//! new messages are dropped and counted; what was queued first reaches the remote.

use std::collections::BTreeSet;

use tern_bridge::Bridges;
use tern_broker::{BridgeDirection, BridgeTopic, BrokerBuilder};
use tern_client::{ProtocolVersion, QoS};

use crate::support::*;

/// Messages published while the remote is down.
const SENT: usize = 100;
const MAX_QUEUED: usize = 20;
const INFLIGHT: u16 = 5;

#[tokio::test]
async fn a_full_outbox_drops_the_newest_messages_and_counts_them() {
    let mut mosquitto = Mosquitto::start().await;
    let (collector, mut events) = client(&mosquitto.url(), "limits-collector", ProtocolVersion::V3_1_1).await;
    collector.subscribe("edge/#", QoS::AtLeastOnce).await.unwrap();
    mosquitto.stop();

    let broker = BrokerBuilder::new()
        .listen("127.0.0.1:0".parse().unwrap())
        .configure(|c| {
            c.sys_interval_secs = 0;
            c.max_queued_messages = MAX_QUEUED;
            c.backpressure_timeout_ms = 200;
        })
        .bind()
        .await
        .unwrap()
        .spawn();
    let config = bridge("limits", &mosquitto.url(), "5")
        .topic(BridgeTopic::new("#", BridgeDirection::Out).prefixes("", "edge/"))
        .with(|c| c.max_inflight = INFLIGHT);
    let local_id = config.local_client_id();
    let bridges = Bridges::start(broker.internal(), &[config]).await.unwrap();
    wait_for("the bridge's local session", || {
        broker
            .session(&local_id)
            .is_some_and(|s| s.subscriptions.len() == 1)
    })
    .await;

    let (publisher, _p) = client(&url_of(&broker), "limits-publisher", ProtocolVersion::V5).await;
    for n in 0..SENT {
        publisher
            .publish("seq", n.to_string(), QoS::AtLeastOnce)
            .await
            .unwrap();
    }
    let s = state(&bridges);
    assert!(!s.connected);
    assert_eq!(s.outbox_messages + s.outbox_dropped as usize, SENT, "{s:?}");
    assert!(s.outbox_dropped > 0, "{s:?}");
    assert!(
        s.outbox_messages <= 2 * MAX_QUEUED + usize::from(INFLIGHT),
        "queued beyond the limits only while publishers were slowed down: {s:?}"
    );
    let kept = s.outbox_messages;

    mosquitto.restart().await;
    let mut seen = BTreeSet::new();
    while seen.len() < kept {
        let m = next(&mut events).await;
        seen.insert(m.payload_str().unwrap().parse::<usize>().unwrap());
    }
    assert_eq!(
        seen,
        (0..kept).collect(),
        "the oldest are kept, the newest dropped"
    );
    wait_for("the outbox to empty", || state(&bridges).outbox_messages == 0).await;
    eprintln!(
        "{SENT} sent while the remote was down: {kept} kept and forwarded, {} dropped",
        SENT - kept
    );
    bridges.stop().await;
}
