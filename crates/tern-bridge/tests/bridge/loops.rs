//! No loops: two Tern brokers bridged both ways on `#`, a message published on either arrives
//! once on each side and does not come back (v5 [MQTT-3.8.3-3]: the bridge's subscriptions,
//! local and remote, are No Local; over 3.1.1 the remote knows the bridge by its protocol
//! level 0x84 and does the same, or, with `try_private = false`, the bridge recognises the
//! echoes).

use std::time::Duration;

use tern_broker::{BridgeDirection, BridgeTopic};
use tern_client::{ProtocolVersion, QoS};

use crate::support::*;

/// What `events` receives until 500 ms pass without a message: (topic, payload) pairs.
async fn received(events: &mut tern_client::Events) -> Vec<(String, String)> {
    drain(events, Duration::from_millis(500))
        .await
        .into_iter()
        .map(|m| (m.topic.to_string(), m.payload_str().unwrap_or("").to_string()))
        .collect()
}

fn once(topic: &str, payload: &str) -> Vec<(String, String)> {
    vec![(topic.to_string(), payload.to_string())]
}

/// One bridge from A to B with direction `both` on `#`, over `version`.
async fn one_bridge_both_ways(version: &str, try_private: bool) {
    let (a, b) = (tern().await, tern().await);
    let bridges = start_bridge(
        &a,
        bridge("b", &url_of(&b), version)
            .topic(BridgeTopic::new("#", BridgeDirection::Both).qos(2))
            .with(|c| c.try_private = try_private),
    )
    .await;
    let v5 = ProtocolVersion::V5;
    let (sa, mut ea) = client(&url_of(&a), "sub-a", v5).await;
    sa.subscribe("#", QoS::ExactlyOnce).await.unwrap();
    let (sb, mut eb) = client(&url_of(&b), "sub-b", v5).await;
    sb.subscribe("#", QoS::ExactlyOnce).await.unwrap();
    let (pa, _) = client(&url_of(&a), "pub-a", v5).await;
    let (pb, _) = client(&url_of(&b), "pub-b", v5).await;
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
        pa.publish("t/from-a", format!("{qos:?}"), qos).await.unwrap();
        assert_eq!(received(&mut ea).await, once("t/from-a", &format!("{qos:?}")));
        assert_eq!(received(&mut eb).await, once("t/from-a", &format!("{qos:?}")));
        pb.publish("t/from-b", format!("{qos:?}"), qos).await.unwrap();
        assert_eq!(received(&mut ea).await, once("t/from-b", &format!("{qos:?}")));
        assert_eq!(received(&mut eb).await, once("t/from-b", &format!("{qos:?}")));
    }
    let s = state(&bridges);
    assert_eq!((s.forwarded, s.received), (3, 3), "{s:?}");
    // 3.1.1 without the bridge protocol level: the remote sent the bridge its own three
    // messages back, recognised as echoes. With it, the remote sends nothing back.
    let echoes = if version == "3.1.1" && !try_private { 3 } else { 0 };
    assert_eq!(s.echoes, echoes, "{s:?}");
    bridges.stop().await;
}

#[tokio::test]
async fn one_bridge_both_ways_on_everything_delivers_once_on_each_side() {
    // Both sides of the bridge subscribe with No Local: v5 [MQTT-3.8.3-3].
    one_bridge_both_ways("5", true).await;
}

#[tokio::test]
async fn one_bridge_both_ways_to_a_v311_remote_delivers_once_on_each_side() {
    // The remote takes the bridge for one (protocol level 0x84): No Local on its side.
    one_bridge_both_ways("3.1.1", true).await;
    // Without it: the echoes are recognised.
    one_bridge_both_ways("3.1.1", false).await;
}

/// A bridge on each broker towards the other, both `out` on `#`: the second does not send back
/// what the first brought (the `tern-bridge-hops` User Property, `max_hops` 1; over 3.1.1 the
/// receiving broker sets it on what a bridge, known by its protocol level 0x84, publishes).
async fn bridges_pointing_at_each_other(version: &str) {
    let (a, b) = (tern().await, tern().await);
    let to_b = start_bridge(
        &a,
        bridge("to-b", &url_of(&b), version).topic(BridgeTopic::new("#", BridgeDirection::Out)),
    )
    .await;
    let to_a = start_bridge(
        &b,
        bridge("to-a", &url_of(&a), version).topic(BridgeTopic::new("#", BridgeDirection::Out)),
    )
    .await;
    let v5 = ProtocolVersion::V5;
    let (sa, mut ea) = client(&url_of(&a), "sub-a", v5).await;
    sa.subscribe("#", QoS::AtLeastOnce).await.unwrap();
    let (sb, mut eb) = client(&url_of(&b), "sub-b", v5).await;
    sb.subscribe("#", QoS::AtLeastOnce).await.unwrap();
    let (pa, _) = client(&url_of(&a), "pub-a", v5).await;
    let (pb, _) = client(&url_of(&b), "pub-b", v5).await;
    pa.publish("t/from-a", "1", QoS::AtLeastOnce).await.unwrap();
    assert_eq!(received(&mut ea).await, once("t/from-a", "1"));
    assert_eq!(received(&mut eb).await, once("t/from-a", "1"));
    pb.publish("t/from-b", "2", QoS::AtLeastOnce).await.unwrap();
    assert_eq!(received(&mut ea).await, once("t/from-b", "2"));
    assert_eq!(received(&mut eb).await, once("t/from-b", "2"));
    for (bridges, name) in [(&to_b, "to-b"), (&to_a, "to-a")] {
        let s = state(bridges);
        assert_eq!((s.forwarded, s.hops_exceeded), (1, 1), "{name}: {s:?}");
    }
    to_b.stop().await;
    to_a.stop().await;
}

#[tokio::test]
async fn bridges_pointing_at_each_other_do_not_ping_pong() {
    bridges_pointing_at_each_other("5").await;
}

#[tokio::test]
async fn bridges_pointing_at_each_other_over_v311_do_not_ping_pong() {
    bridges_pointing_at_each_other("3.1.1").await;
}
