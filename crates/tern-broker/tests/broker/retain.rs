//! Retained messages.

use std::time::Duration;

use tern_broker::BrokerHandle;
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

/// Publish `n` retained QoS 1 messages `{prefix}/{i}` with `payload` without waiting for each
/// PUBACK, then collect the PUBACKs.
async fn retain_many(publ: &mut Raw, prefix: &str, n: usize, payload: &str) {
    for i in 0..n {
        let mut p = Publish::new(format!("{prefix}/{i}"), payload.to_string());
        p.qos = QoS::AtLeastOnce;
        p.retain = true;
        p.packet_id = Some(tern_testkit::raw::pid(1 + (i % 60_000) as u16));
        publ.send(Packet::Publish(p)).await;
    }
    for _ in 0..n {
        assert!(matches!(publ.recv().await, Packet::PubAck(_)));
    }
}

/// A filter matching far more retained messages than a session's queue holds: every one is
/// delivered, at the pace the subscriber acknowledges, none lost to the queue's limits
/// (v3.1.1 [MQTT-3.3.1-6]: the retained messages matching a new subscription are sent).
#[tokio::test]
async fn a_large_retained_set_streams_to_a_qos1_subscriber_under_flow_control() {
    const N: usize = 2_000;
    let b = start_with(|c| {
        c.max_queued_messages = 50;
        c.max_inflight = 10;
    })
    .await;
    let mut publ = Raw::connect(b.addr(), V3, "p").await;
    retain_many(&mut publ, "fleet", N, "up").await;
    let mut sub = Raw::connect(b.addr(), V3, "dashboard").await;
    sub.subscribe("fleet/#", QoS::AtLeastOnce).await;
    let mut seen = std::collections::HashSet::new();
    for _ in 0..N {
        let p = sub.recv_publish().await;
        assert!(p.retain && p.qos == QoS::AtLeastOnce);
        assert!(seen.insert(p.topic.to_string()), "{} twice", p.topic);
        sub.ack(&p).await;
    }
    assert_eq!(seen.len(), N);
    sub.expect_silence(100).await;
}

const N: usize = 300;

/// `n` retained messages `s/{i}` ("old") and a subscriber to `s/#` on a broker whose queues hold
/// 20 and whose window is 2: the first delivery is in, most of the set still waits to be
/// streamed. The broker, the publisher, the subscriber and that first PUBLISH.
async fn streaming(n: usize) -> (BrokerHandle, Raw, Raw, Publish) {
    let b = start_with(|c| {
        c.max_queued_messages = 20;
        c.max_inflight = 2;
    })
    .await;
    let mut publ = Raw::connect(b.addr(), V3, "p").await;
    retain_many(&mut publ, "s", n, "old").await;
    let mut sub = Raw::connect(b.addr(), V3, "s").await;
    sub.subscribe("s/#", QoS::AtLeastOnce).await;
    let first = sub.recv_publish().await;
    (b, publ, sub, first)
}

/// Retained messages replaced while the subscriber is still being streamed the retained set:
/// the newer state arrives live, and an older one is never sent after it.
#[tokio::test]
async fn retained_messages_replaced_during_streaming_are_not_sent_stale() {
    let (_b, mut publ, mut sub, first) = streaming(N).await;
    // Fewer than the queue holds: the live messages are not slowed down or dropped.
    const REPLACED: usize = 8;
    retain_many(&mut publ, "s", REPLACED, "new").await;
    sub.ack(&first).await;
    let mut latest: std::collections::HashMap<String, Vec<u8>> = Default::default();
    latest.insert(first.topic.to_string(), first.payload.to_vec());
    while let Ok(Some(Packet::Publish(p))) = sub.next_within(Duration::from_millis(300)).await {
        let before = latest.insert(p.topic.to_string(), p.payload.to_vec());
        assert!(
            !(before.as_deref() == Some(b"new".as_slice()) && &p.payload[..] == b"old"),
            "{}: the old retained message came after the new one",
            p.topic
        );
        sub.ack(&p).await;
    }
    assert_eq!(latest.len(), N, "every retained topic was sent");
    for i in 0..REPLACED {
        assert_eq!(
            latest[&format!("s/{i}")],
            b"new",
            "s/{i} ends at its newest state"
        );
    }
}

/// A topic retained for the first time while a subscription is still being streamed the
/// retained set, on a topic the stream has not reached yet: it reaches the subscriber once, as
/// a live message (RETAIN 0 to an established subscription, v3.1.1 [MQTT-3.3.1-9]), and not a
/// second time from the stream.
#[tokio::test]
async fn topics_retained_during_streaming_arrive_once() {
    let (_b, mut publ, mut sub, first) = streaming(N).await;
    // `s/zzz` sorts after every `s/N`: the stream is far from it.
    publ.publish("s/zzz", "late", QoS::AtLeastOnce, true).await;
    sub.ack(&first).await;
    let mut late = Vec::new();
    let mut topics = std::collections::HashSet::from([first.topic.to_string()]);
    while let Ok(Some(Packet::Publish(p))) = sub.next_within(Duration::from_millis(300)).await {
        if &*p.topic == "s/zzz" {
            late.push(p.retain);
        } else {
            topics.insert(p.topic.to_string());
        }
        sub.ack(&p).await;
    }
    assert_eq!(topics.len(), N, "every retained topic was sent");
    assert_eq!(late, [false], "v3.1.1 [MQTT-3.3.1-9]: once, live, RETAIN 0");
}
