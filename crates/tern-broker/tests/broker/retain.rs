//! Retained messages.

use std::time::Duration;

use tern_proto::{Packet, Publish, QoS, RetainHandling, SubscriptionOptions};

use crate::harness::*;

#[tokio::test]
async fn retained_message_is_stored_replaced_and_deleted() {
    let b = start().await;
    let mut publ = Raw::connect(b.addr(), V3, "p").await;
    publ.publish("state/lamp", "on", QoS::AtLeastOnce, true).await;
    publ.publish("state/lamp", "off", QoS::AtLeastOnce, true).await;
    // v3.1.1 [MQTT-3.3.1-5] stored, replacing the previous one; v3.1.1 [MQTT-3.3.1-6] / v3.1.1 [MQTT-3.3.1-8] sent on
    // subscribe with RETAIN set.
    let mut sub = Raw::connect(b.addr(), V3, "s").await;
    sub.subscribe("state/+", QoS::AtLeastOnce).await;
    let p = sub.recv_publish().await;
    assert!(p.retain);
    assert_eq!(&p.payload[..], b"off");
    sub.ack(&p).await;
    // v3.1.1 [MQTT-3.3.1-9]: forwarded to existing subscribers with RETAIN cleared (3.1.1).
    publ.publish("state/lamp", "on", QoS::AtMostOnce, true).await;
    let live = sub.recv_publish().await;
    assert!(!live.retain);
    // v3.1.1 [MQTT-3.3.1-10] an empty retained payload deletes it; v3.1.1 [MQTT-3.3.1-11] and is not stored.
    publ.publish("state/lamp", "", QoS::AtMostOnce, true).await;
    let _ = sub.recv_publish().await;
    let mut late = Raw::connect(b.addr(), V3, "late").await;
    late.subscribe("state/#", QoS::AtMostOnce).await;
    late.expect_silence(200).await;
}

#[tokio::test]
async fn retain_handling_and_retain_as_published_v5() {
    let b = start().await;
    let mut publ = Raw::connect(b.addr(), V5, "p").await;
    publ.publish("rh/x", "kept", QoS::AtMostOnce, true).await;
    publ.sync().await;

    let mut sub = Raw::connect(b.addr(), V5, "s").await;
    // Retain Handling 2: nothing at subscribe (v5 [MQTT-3.3.1-11]).
    let opts = SubscriptionOptions {
        retain_handling: RetainHandling::DoNotSend,
        ..Default::default()
    };
    sub.subscribe_with("rh/#", opts, None).await;
    sub.expect_silence(150).await;
    // Retain Handling 1: only when the subscription is new (v5 [MQTT-3.3.1-10]).
    let opts = SubscriptionOptions {
        retain_handling: RetainHandling::SendIfNew,
        ..Default::default()
    };
    sub.subscribe_with("rh/#", opts, None).await;
    sub.expect_silence(150).await;
    sub.subscribe_with("rh/+", opts, None).await;
    assert!(sub.recv_publish().await.retain);
    // Retain Handling 0: every time (v5 [MQTT-3.3.1-9]).
    let opts = SubscriptionOptions {
        retain_as_published: true,
        ..Default::default()
    };
    sub.subscribe_with("rh/x", opts, None).await;
    assert!(sub.recv_publish().await.retain);
    // Retain As Published = 1 keeps RETAIN on live forwarding (v5 [MQTT-3.3.1-13]); the other
    // subscriptions (RAP 0) collapse into the same delivery.
    publ.publish("rh/x", "live", QoS::AtMostOnce, true).await;
    let p = sub.recv_publish().await;
    assert!(p.retain);
}

#[tokio::test]
async fn retained_message_expires_v5() {
    let (b, clock) = start_clocked(|_| {}).await;
    let mut publ = Raw::connect(b.addr(), V5, "p").await;
    let mut p = Publish::new("exp/x", "soon gone");
    p.retain = true;
    p.properties.message_expiry_interval = Some(1);
    publ.send(Packet::Publish(p)).await;
    publ.sync().await;
    pass(&clock, Duration::from_millis(1200)).await;
    let mut sub = Raw::connect(b.addr(), V5, "s").await;
    sub.subscribe("exp/#", QoS::AtMostOnce).await;
    sub.expect_silence(200).await;
}

#[tokio::test]
async fn retained_message_keeps_remaining_expiry_v5_mqtt_3_3_2_6() {
    // v5 [MQTT-3.3.2-6]: the retained copy carries the time left.
    let b = start().await;
    let mut publ = Raw::connect(b.addr(), V5, "p").await;
    let mut p = Publish::new("exp/y", "later");
    p.retain = true;
    p.properties.message_expiry_interval = Some(100);
    publ.send(Packet::Publish(p)).await;
    publ.sync().await;
    let mut sub = Raw::connect(b.addr(), V5, "s").await;
    sub.subscribe("exp/y", QoS::AtMostOnce).await;
    let got = sub.recv_publish().await;
    let left = got.properties.message_expiry_interval.expect("expiry forwarded");
    assert!((98..=100).contains(&left), "{left}");
}
