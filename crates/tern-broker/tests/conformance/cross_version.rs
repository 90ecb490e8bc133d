//! A 3.1.1 publisher and a 5.0 subscriber on the same topic, and the reverse: each
//! gets what its own specification promises.

use std::time::Duration;

use tern_proto::{Packet, QoS, RetainHandling, SubscriptionOptions};

use crate::support::*;

#[tokio::test]
async fn v3_publisher_to_v5_subscriber() {
    let b = start().await;
    let opts = SubscriptionOptions {
        qos: QoS::ExactlyOnce,
        retain_as_published: true,
        retain_handling: RetainHandling::SendAtSubscribe,
        ..Default::default()
    };
    let mut v5 = Raw::connect(b.addr(), V5, "x5-sub").await;
    v5.subscribe_with("x/#", opts, Some(9)).await;
    let mut v3 = Raw::connect(b.addr(), V3, "x3-pub").await;
    v3.publish("x/live", "from 3.1.1", QoS::ExactlyOnce, true).await;
    // The 5.0 subscriber: QoS 2 kept, v5 [MQTT-3.3.1-13] RETAIN as published (Retain As
    // Published 1), v5 [MQTT-3.3.4-3] its Subscription Identifier, and no property the 3.1.1
    // publisher could not have set (no expiry, no format indicator, no user properties).
    let p = v5.recv_publish().await;
    assert_eq!(
        (p.qos, p.retain, &p.payload[..]),
        (QoS::ExactlyOnce, true, &b"from 3.1.1"[..])
    );
    assert_eq!(p.properties.subscription_identifiers, vec![9]);
    assert_eq!(p.properties.message_expiry_interval, None);
    assert_eq!(p.properties.payload_format_indicator, None);
    assert!(p.properties.user_properties.is_empty());
    v5.ack(&p).await;
    // A late 5.0 subscriber gets the 3.1.1 retained message with RETAIN 1 (v5 [MQTT-3.3.1-9]).
    let mut late = Raw::connect(b.addr(), V5, "x5-late").await;
    late.subscribe("x/live", QoS::AtLeastOnce).await;
    let r = late.recv_publish().await;
    assert_eq!((r.retain, r.qos), (true, QoS::AtLeastOnce));
    late.ack(&r).await;
}

#[tokio::test]
async fn v5_publisher_to_v3_subscriber() {
    let b = start_with(|c| c.topic_alias_maximum = 4).await;
    let mut v3 = Raw::connect(b.addr(), V3, "y3-sub").await;
    v3.subscribe("y/#", QoS::ExactlyOnce).await;
    let mut v5 = Raw::connect(b.addr(), V5, "y5-pub").await;
    let mut p = publish("y/live", "from 5.0", QoS::ExactlyOnce, 4);
    p.retain = true;
    p.properties.topic_alias = Some(1);
    p.properties.user_properties = vec![("k".into(), "v".into())];
    p.properties.content_type = Some("text/plain".into());
    p.properties.response_topic = Some("y/reply".into());
    p.properties.correlation_data = Some(tern_proto::Bytes::from_static(b"id"));
    p.properties.payload_format_indicator = Some(1);
    p.properties.message_expiry_interval = Some(100);
    v5.send(Packet::Publish(p)).await;
    v5.recv().await;
    v5.send(Packet::PubRel(tern_proto::Ack::new(pid(4)))).await;
    v5.recv().await;
    // The 3.1.1 subscriber: a plain PUBLISH (its decoder would refuse properties), the topic
    // behind the alias, QoS 2, and RETAIN 0 because the subscription was already there
    // (v3.1.1 [MQTT-3.3.1-9]).
    let got = v3.recv_publish().await;
    assert_eq!(
        (&got.topic[..], got.qos, got.retain),
        ("y/live", QoS::ExactlyOnce, false)
    );
    v3.ack(&got).await;
    // A new 3.1.1 subscription gets the retained message with RETAIN 1 (v3.1.1 [MQTT-3.3.1-8]).
    let mut late = Raw::connect(b.addr(), V3, "y3-late").await;
    late.subscribe("y/live", QoS::AtMostOnce).await;
    let r = late.recv_publish().await;
    assert_eq!((r.retain, &r.payload[..]), (true, &b"from 5.0"[..]));
}

#[tokio::test]
async fn message_expiry_of_a_v5_publisher_applies_to_a_v3_session() {
    let (b, clock) = start_clocked(|_| {}).await;
    let (mut v3, _) = Raw::connect_with(b.addr(), persistent(V3, "z3")).await;
    v3.subscribe("z/#", QoS::AtLeastOnce).await;
    v3.disconnect().await;
    let mut v5 = Raw::connect(b.addr(), V5, "z5-pub").await;
    let mut short = publish("z/short", "gone", QoS::AtLeastOnce, 1);
    short.properties.message_expiry_interval = Some(1);
    v5.send(Packet::Publish(short)).await;
    v5.recv().await;
    v5.publish("z/long", "kept", QoS::AtLeastOnce, false).await;
    pass(&clock, Duration::from_millis(1500)).await;
    // v5 [MQTT-3.3.2-5]: the expired message is not delivered, whatever the subscriber speaks.
    let (mut v3, _) = Raw::connect_with(b.addr(), persistent(V3, "z3")).await;
    let p = v3.recv_publish().await;
    assert_eq!(&p.topic[..], "z/long");
    v3.ack(&p).await;
    v3.expect_silence(200).await;
    v3.disconnect().await;
    end_session(b.addr(), V3, "z3").await;
}
