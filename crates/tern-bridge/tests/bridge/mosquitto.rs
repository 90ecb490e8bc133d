//! A bridge to Mosquitto, both directions, QoS 0/1/2, prefix remapping and retained messages,
//! over MQTT 5.0 and 3.1.1: the example with the remote on loopback.

use std::time::Duration;

use tern_broker::{BridgeDirection, BridgeTopic};
use tern_client::{ProtocolVersion, PublishOptions, QoS};

use crate::support::*;

async fn both_directions_with_prefixes(version: &str) {
    let mosquitto = Mosquitto::start().await;
    let broker = tern().await;
    let v = if version == "5" {
        ProtocolVersion::V5
    } else {
        ProtocolVersion::V3_1_1
    };
    let tag = version.replace('.', "");
    // As in the issue: local edge/... goes out as site1/edge/..., remote site1/cmd/... comes
    // in as cmd/...; QoS 2 allowed.
    let config = bridge(&format!("cloud{tag}"), &mosquitto.url(), version)
        .topic(
            BridgeTopic::new("edge/#", BridgeDirection::Out)
                .prefixes("", "site1/")
                .qos(2),
        )
        .topic(
            BridgeTopic::new("cmd/#", BridgeDirection::In)
                .prefixes("", "site1/")
                .qos(2),
        );
    let bridges = start_bridge(&broker, config).await;

    let (remote_sub, mut remote_events) = client(&mosquitto.url(), &format!("rsub{tag}"), v).await;
    remote_sub.subscribe("site1/#", QoS::ExactlyOnce).await.unwrap();
    let (local_sub, mut local_events) = client(&url_of(&broker), &format!("lsub{tag}"), v).await;
    local_sub.subscribe("#", QoS::ExactlyOnce).await.unwrap();
    let (local_pub, _lp) = client(&url_of(&broker), &format!("lpub{tag}"), v).await;
    let (remote_pub, _rp) = client(&mosquitto.url(), &format!("rpub{tag}"), v).await;

    // Out: each QoS, topic remapped, QoS kept.
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
        let payload = format!("out {qos:?}");
        local_pub
            .publish("edge/line1/temp", payload.clone(), qos)
            .await
            .unwrap();
        let m = next(&mut remote_events).await;
        assert_eq!(&*m.topic, "site1/edge/line1/temp");
        assert_eq!(m.payload_str(), Some(payload.as_str()));
        assert_eq!(m.qos, qos);
        let m = next(&mut local_events).await;
        assert_eq!(&*m.topic, "edge/line1/temp", "the local subscriber gets it too");
    }
    // In: each QoS, prefix removed.
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
        let payload = format!("in {qos:?}");
        remote_pub
            .publish("site1/cmd/reboot", payload.clone(), qos)
            .await
            .unwrap();
        let m = next(&mut local_events).await;
        assert_eq!(&*m.topic, "cmd/reboot");
        assert_eq!(m.payload_str(), Some(payload.as_str()));
        assert_eq!(m.qos, qos);
        let m = next(&mut remote_events).await;
        assert_eq!(&*m.topic, "site1/cmd/reboot", "the remote subscriber's own copy");
    }
    // Topics outside the rules stay where they are.
    local_pub
        .publish("cmd/local-only", "x", QoS::AtLeastOnce)
        .await
        .unwrap();
    remote_pub
        .publish("site1/edge/remote-only", "y", QoS::AtLeastOnce)
        .await
        .unwrap();
    remote_pub
        .publish("other/z", "z", QoS::AtLeastOnce)
        .await
        .unwrap();
    let local: Vec<_> = drain(&mut local_events, Duration::from_millis(300)).await;
    assert_eq!(
        local.iter().map(|m| m.topic.to_string()).collect::<Vec<_>>(),
        ["cmd/local-only"],
        "nothing of the remote's outside an `in` rule comes in"
    );
    let remote: Vec<_> = drain(&mut remote_events, Duration::from_millis(300)).await;
    assert_eq!(
        remote.iter().map(|m| m.topic.to_string()).collect::<Vec<_>>(),
        ["site1/edge/remote-only"],
        "nothing local outside an `out` rule goes out"
    );

    // Retained messages are forwarded as retained: a new remote subscriber gets it
    // (v5 [MQTT-3.3.1-13]: the bridge's local subscription is Retain As Published).
    local_pub
        .publish_with(
            "edge/state",
            "on",
            PublishOptions::new().qos(QoS::AtLeastOnce).retain(true),
        )
        .await
        .unwrap();
    let m = next(&mut remote_events).await;
    assert_eq!(&*m.topic, "site1/edge/state");
    let (late, mut late_events) = client(&mosquitto.url(), &format!("late{tag}"), v).await;
    late.subscribe("site1/edge/state", QoS::AtLeastOnce)
        .await
        .unwrap();
    let m = next(&mut late_events).await;
    assert!(m.retain, "kept as a retained message by the remote");
    assert_eq!(m.payload_str(), Some("on"));

    let s = state(&bridges);
    assert_eq!(s.forwarded, 4, "three QoS and the retained message: {s:?}");
    assert_eq!(s.received, 3, "{s:?}");
    assert_eq!((s.dropped, s.outbox_messages), (0, 0), "{s:?}");
    bridges.stop().await;
    broker.shutdown().await;
}

#[tokio::test]
async fn mosquitto_remote_both_directions_with_prefixes_v5() {
    // Retained messages reach the remote as retained: v5 [MQTT-3.3.1-13].
    both_directions_with_prefixes("5").await;
}

#[tokio::test]
async fn mosquitto_remote_both_directions_with_prefixes_v311() {
    both_directions_with_prefixes("3.1.1").await;
}

/// A 3.1.1 bridge `both` on `site/#` to Mosquitto: a message published locally reaches the
/// remote once and the local subscribers once. With `try_private` (the default) Mosquitto
/// takes the client for a bridge (protocol level 0x84) and sends it nothing back; without,
/// Mosquitto echoes it and the bridge recognises the echo.
async fn both_ways_v311(try_private: bool) {
    let mosquitto = Mosquitto::start().await;
    let broker = tern().await;
    let v = ProtocolVersion::V3_1_1;
    let tag = if try_private { "p" } else { "n" };
    let config = bridge(&format!("both{tag}"), &mosquitto.url(), "3.1.1")
        .topic(BridgeTopic::new("site/#", BridgeDirection::Both).qos(1))
        .with(|c| c.try_private = try_private);
    let bridges = start_bridge(&broker, config).await;
    let (remote_sub, mut remote_events) = client(&mosquitto.url(), &format!("bsub{tag}"), v).await;
    remote_sub.subscribe("site/#", QoS::AtLeastOnce).await.unwrap();
    let (local_sub, mut local_events) = client(&url_of(&broker), &format!("blsub{tag}"), v).await;
    local_sub.subscribe("site/#", QoS::AtLeastOnce).await.unwrap();
    let (local_pub, _lp) = client(&url_of(&broker), &format!("blpub{tag}"), v).await;
    // The remote subscription of the bridge is in place once a remote message comes in.
    let (remote_pub, _rp) = client(&mosquitto.url(), &format!("brpub{tag}"), v).await;
    wait_for("the bridge's remote subscription", || state(&bridges).connected).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    remote_pub
        .publish("site/in", "from remote", QoS::AtLeastOnce)
        .await
        .unwrap();
    assert_eq!(next(&mut local_events).await.payload_str(), Some("from remote"));
    drain(&mut remote_events, Duration::from_millis(300)).await;

    local_pub
        .publish("site/out", "from here", QoS::AtLeastOnce)
        .await
        .unwrap();
    let remote = drain(&mut remote_events, Duration::from_millis(700)).await;
    let local = drain(&mut local_events, Duration::from_millis(300)).await;
    assert_eq!(remote.len(), 1, "once at the remote: {remote:?}");
    assert_eq!(local.len(), 1, "once here: {local:?}");
    let s = state(&bridges);
    assert_eq!(s.echoes, if try_private { 0 } else { 1 }, "{s:?}");
    bridges.stop().await;
}

#[tokio::test]
async fn mosquitto_takes_a_v311_bridge_for_one_and_sends_nothing_back() {
    both_ways_v311(true).await;
    both_ways_v311(false).await;
}
