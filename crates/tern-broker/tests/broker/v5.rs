//! MQTT 5.0 specifics: topic aliases, message expiry, maximum packet size,
//! property forwarding, and 3.1.1 ↔ 5.0 interplay.

use std::time::Duration;

use tern_proto::{Connect, Packet, Publish, QoS, ReasonCode};

use crate::harness::*;

#[tokio::test]
async fn inbound_topic_alias_is_resolved() {
    let b = start().await;
    let mut sub = Raw::connect(b.addr(), V3, "s").await;
    sub.subscribe("alias/t", QoS::AtMostOnce).await;
    let mut publ = Raw::connect(b.addr(), V5, "p").await;
    let mut p = Publish::new("alias/t", "first");
    p.properties.topic_alias = Some(1);
    publ.send(Packet::Publish(p)).await;
    let mut p = Publish::new("", "second");
    p.properties.topic_alias = Some(1);
    publ.send(Packet::Publish(p)).await;
    assert_eq!(&sub.recv_publish().await.payload[..], b"first");
    let second = sub.recv_publish().await;
    assert_eq!(&second.topic[..], "alias/t");
    assert_eq!(&second.payload[..], b"second");
}

#[tokio::test]
async fn topic_alias_errors() {
    let b = start_with(|c| c.topic_alias_maximum = 2).await;
    // Above Topic Alias Maximum: DISCONNECT 0x94 (v5 section 3.3.2.3.4).
    let mut c = Raw::connect(b.addr(), V5, "a").await;
    let mut p = Publish::new("t", "x");
    p.properties.topic_alias = Some(3);
    c.send(Packet::Publish(p)).await;
    assert_eq!(c.expect_closed().await, Some(ReasonCode::TopicAliasInvalid));
    // Alias 0: v5 [MQTT-3.3.2-8], 0x94.
    let mut c = Raw::connect(b.addr(), V5, "b").await;
    c.send_bytes(&[0x30, 0x07, 0x00, 0x01, b't', 0x03, 0x23, 0x00, 0x00])
        .await;
    assert_eq!(c.expect_closed().await, Some(ReasonCode::TopicAliasInvalid));
    // Unknown alias with an empty topic: Protocol Error.
    let mut c = Raw::connect(b.addr(), V5, "c").await;
    let mut p = Publish::new("", "x");
    p.properties.topic_alias = Some(1);
    c.send(Packet::Publish(p)).await;
    assert_eq!(c.expect_closed().await, Some(ReasonCode::ProtocolError));
}

#[tokio::test]
async fn expired_messages_are_not_delivered_mqtt_3_3_2_5() {
    // v5 [MQTT-3.3.2-5]: a queued message that expired is not delivered.
    let (b, clock) = start_clocked(|_| {}).await;
    let mut c = Connect::new(V5, "offline");
    c.clean_start = false;
    c.keep_alive = 0;
    c.properties.session_expiry_interval = Some(60);
    let (mut sub, _) = Raw::connect_with(b.addr(), c.clone()).await;
    sub.subscribe("exp", QoS::AtLeastOnce).await;
    sub.disconnect().await;
    let mut publ = Raw::connect(b.addr(), V5, "p").await;
    let mut p = Publish::new("exp", "short");
    p.qos = QoS::AtLeastOnce;
    p.packet_id = Some(pid(1));
    p.properties.message_expiry_interval = Some(1);
    publ.send(Packet::Publish(p)).await;
    publ.recv().await;
    let mut p = Publish::new("exp", "long");
    p.qos = QoS::AtLeastOnce;
    p.packet_id = Some(pid(2));
    p.properties.message_expiry_interval = Some(100);
    publ.send(Packet::Publish(p)).await;
    publ.recv().await;
    pass(&clock, Duration::from_millis(1200)).await;
    let (mut sub, _) = Raw::connect_with(b.addr(), c).await;
    let p = sub.recv_publish().await;
    assert_eq!(&p.payload[..], b"long");
    // v5 [MQTT-3.3.2-6]: the expiry forwarded is the time left.
    assert!(p.properties.message_expiry_interval.unwrap() < 100);
    sub.ack(&p).await;
    sub.expect_silence(200).await;
}

#[tokio::test]
async fn messages_above_client_maximum_packet_size_are_dropped_mqtt_3_1_2_25() {
    // v5 [MQTT-3.1.2-24], v5 [MQTT-3.1.2-25]: too large for the client: dropped, the next one flows.
    let b = start().await;
    let mut c = Connect::new(V5, "small");
    c.keep_alive = 0;
    c.properties.maximum_packet_size = Some(64);
    let (mut sub, _) = Raw::connect_with(b.addr(), c).await;
    sub.subscribe("big", QoS::AtMostOnce).await;
    let mut publ = Raw::connect(b.addr(), V5, "p").await;
    publ.publish("big", &"x".repeat(200), QoS::AtMostOnce, false)
        .await;
    publ.publish("big", "small", QoS::AtMostOnce, false).await;
    assert_eq!(&sub.recv_publish().await.payload[..], b"small");
}

#[tokio::test]
async fn properties_are_forwarded_unchanged_and_in_order_mqtt_3_3_2_17() {
    let b = start().await;
    let mut sub = Raw::connect(b.addr(), V5, "s").await;
    sub.subscribe("props", QoS::AtMostOnce).await;
    let mut publ = Raw::connect(b.addr(), V5, "p").await;
    let mut p = Publish::new("props", "{}");
    p.properties.user_properties = vec![
        ("k".into(), "1".into()),
        ("a".into(), "2".into()),
        ("k".into(), "3".into()),
    ];
    p.properties.content_type = Some("application/json".into());
    p.properties.response_topic = Some("reply/here".into());
    p.properties.correlation_data = Some(bytes::Bytes::from_static(b"\x01\x02"));
    p.properties.payload_format_indicator = Some(1);
    publ.send(Packet::Publish(p.clone())).await;
    let got = sub.recv_publish().await;
    // v5 [MQTT-3.3.2-17] / v5 [MQTT-3.3.2-18]: user properties unaltered, order kept;
    // v5 [MQTT-3.3.2-20], v5 [MQTT-3.3.2-15], v5 [MQTT-3.3.2-16], v5 [MQTT-3.3.2-4]: Content Type,
    // Response Topic, Correlation Data and Payload Format Indicator unaltered.
    assert_eq!(got.properties.user_properties, p.properties.user_properties);
    assert_eq!(got.properties.content_type, p.properties.content_type);
    assert_eq!(got.properties.response_topic, p.properties.response_topic);
    assert_eq!(got.properties.correlation_data, p.properties.correlation_data);
    assert_eq!(got.properties.payload_format_indicator, Some(1));
}

#[tokio::test]
async fn v5_publisher_to_v3_subscriber_and_back() {
    let b = start().await;
    let mut v3 = Raw::connect(b.addr(), V3, "old").await;
    v3.subscribe("mix", QoS::ExactlyOnce).await;
    let mut v5 = Raw::connect(b.addr(), V5, "new").await;
    v5.subscribe("mix", QoS::ExactlyOnce).await;
    let mut p = Publish::new("mix", "from5");
    p.qos = QoS::AtLeastOnce;
    p.packet_id = Some(pid(3));
    p.properties.user_properties = vec![("x".into(), "y".into())];
    v5.send(Packet::Publish(p)).await;
    // The 3.1.1 subscriber gets the message without properties (its decoder would reject them).
    let got = v3.recv_publish().await;
    assert_eq!(&got.payload[..], b"from5");
    v3.ack(&got).await;
    let mut own = None;
    while own.is_none() {
        match v5.recv().await {
            Packet::Publish(p) => own = Some(p),
            Packet::PubAck(_) => {}
            p => panic!("{p:?}"),
        }
    }
    let own = own.unwrap();
    assert_eq!(own.properties.user_properties.len(), 1);
    v5.ack(&own).await;
    let mut v3_pub = Raw::connect(b.addr(), V3, "old-pub").await;
    v3_pub.publish("mix", "from3", QoS::ExactlyOnce, false).await;
    let got = v5.recv_publish().await;
    assert_eq!(&got.payload[..], b"from3");
    assert!(got.properties.user_properties.is_empty());
}

#[tokio::test]
async fn publish_with_subscription_identifier_is_a_protocol_error_mqtt_3_3_4_6() {
    // v5 [MQTT-3.3.4-6]: a client must not send a Subscription Identifier.
    let b = start().await;
    let mut c = Raw::connect(b.addr(), V5, "c").await;
    let mut p = Publish::new("t", "x");
    p.properties.subscription_identifiers = vec![1];
    c.send(Packet::Publish(p)).await;
    assert_eq!(c.expect_closed().await, Some(ReasonCode::ProtocolError));
}

#[tokio::test]
async fn too_many_unacknowledged_qos2_publishes_exceed_receive_maximum() {
    let b = start_with(|c| c.receive_maximum = 2).await;
    let mut c = Raw::connect(b.addr(), V5, "c").await;
    for id in 1..=3u16 {
        let mut p = Publish::new("t", "x");
        p.qos = QoS::ExactlyOnce;
        p.packet_id = Some(pid(id));
        c.send(Packet::Publish(p)).await;
    }
    assert!(matches!(c.recv().await, Packet::PubRec(_)));
    assert!(matches!(c.recv().await, Packet::PubRec(_)));
    // v5 section 3.3.4: DISCONNECT 0x93 Receive Maximum exceeded.
    assert_eq!(c.expect_closed().await, Some(ReasonCode::ReceiveMaximumExceeded));
}
