//! A broker restarted on its store resumes its bridge's session: the outbox, the
//! subscriptions, and QoS 2 both ways (the ids the session may hold awaiting PUBREL are
//! released first, v5 [MQTT-4.3.3-10]).

use std::sync::Arc;

use tern_bridge::Bridges;
use tern_broker::durability::InMemory;
use tern_broker::{BridgeDirection, BridgeTopic, BrokerBuilder, BrokerHandle};
use tern_client::{ProtocolVersion, QoS};

use crate::support::*;

async fn tern_on(mem: &Arc<InMemory>) -> BrokerHandle {
    BrokerBuilder::new()
        .listen("127.0.0.1:0".parse().unwrap())
        .configure(|c| c.sys_interval_secs = 0)
        .durability(mem.clone(), mem.restart())
        .bind()
        .await
        .unwrap()
        .spawn()
}

/// A QoS 2 message each way between `a` and `b`, each arriving once.
async fn exchange(a: &BrokerHandle, b: &BrokerHandle, round: &str) {
    let v5 = ProtocolVersion::V5;
    let (sa, mut ea) = client(&url_of(a), &format!("sub-a{round}"), v5).await;
    sa.subscribe("q/#", QoS::ExactlyOnce).await.unwrap();
    let (sb, mut eb) = client(&url_of(b), &format!("sub-b{round}"), v5).await;
    sb.subscribe("q/#", QoS::ExactlyOnce).await.unwrap();
    let (pa, _) = client(&url_of(a), &format!("pub-a{round}"), v5).await;
    let (pb, _) = client(&url_of(b), &format!("pub-b{round}"), v5).await;
    pa.publish("q/from-a", round.to_string(), QoS::ExactlyOnce)
        .await
        .unwrap();
    pb.publish("q/from-b", round.to_string(), QoS::ExactlyOnce)
        .await
        .unwrap();
    for events in [&mut ea, &mut eb] {
        let mut got: Vec<_> = drain(events, std::time::Duration::from_millis(400))
            .await
            .into_iter()
            .map(|m| (m.topic.to_string(), m.payload_str().unwrap().to_string(), m.qos))
            .collect();
        got.sort();
        assert_eq!(
            got,
            [
                ("q/from-a".to_string(), round.to_string(), QoS::ExactlyOnce),
                ("q/from-b".to_string(), round.to_string(), QoS::ExactlyOnce)
            ]
        );
    }
}

#[tokio::test]
async fn a_restarted_broker_resumes_its_bridge_with_qos2_both_ways() {
    // The bridge's session is resumed, its QoS 2 ids released: v5 [MQTT-4.3.3-10].
    let b = tern().await;
    let mem = InMemory::new();
    let config = bridge("r", &url_of(&b), "5").topic(BridgeTopic::new("q/#", BridgeDirection::Both).qos(2));
    let a = tern_on(&mem).await;
    let bridges = start_bridge(&a, config.clone()).await;
    exchange(&a, &b, "1").await;
    bridges.stop().await;
    a.shutdown().await;

    let a = tern_on(&mem).await;
    assert!(
        a.session(&config.local_client_id()).is_some(),
        "the bridge's session was restored from the store"
    );
    let bridges = start_bridge(&a, config).await;
    exchange(&a, &b, "2").await;
    let s = state(&bridges);
    assert_eq!((s.forwarded, s.received, s.dropped), (1, 1, 0), "{s:?}");
    bridges.stop().await;

    // Started with other rules, the session drops the filters of the old ones.
    let changed = bridge("r", &url_of(&b), "5").topic(BridgeTopic::new("other/#", BridgeDirection::Out));
    let bridges = Bridges::start(a.internal(), std::slice::from_ref(&changed))
        .await
        .unwrap();
    wait_for("the old filter to go", || {
        a.session(&changed.local_client_id())
            .is_some_and(|s| s.subscriptions.iter().map(|s| s.filter.as_str()).eq(["other/#"]))
    })
    .await;
    bridges.stop().await;
}
