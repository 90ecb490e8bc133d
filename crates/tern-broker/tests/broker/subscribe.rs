//! SUBSCRIBE / UNSUBSCRIBE, filters, shared subscriptions, No Local, identifiers.

use tern_proto::{Packet, QoS, ReasonCode, Subscribe, SubscriptionOptions, Unsubscribe};

use crate::harness::*;

#[tokio::test]
async fn invalid_filters_get_a_failure_code_per_filter() {
    let b = start().await;
    for v in [V3, V5] {
        let mut c = Raw::connect(b.addr(), v, "f").await;
        let s = Subscribe {
            packet_id: pid(3),
            properties: Default::default(),
            filters: vec![
                ("ok/+".into(), SubscriptionOptions::qos(QoS::AtLeastOnce)),
                ("bad/#/x".into(), SubscriptionOptions::qos(QoS::AtLeastOnce)),
                ("a+".into(), SubscriptionOptions::qos(QoS::AtMostOnce)),
            ],
        };
        c.send(Packet::Subscribe(s)).await;
        match c.recv().await {
            // v3.1.1 [MQTT-3.8.4-5] / v5 [MQTT-3.8.4-6]: one code per filter, in order
            // (v3.1.1+v5 [MQTT-3.9.3-1]); v5 0x8F Topic Filter invalid.
            Packet::SubAck(a) => {
                assert_eq!(a.packet_id, pid(3));
                assert_eq!(a.reason_codes[0], ReasonCode::GrantedQoS1);
                assert!(a.reason_codes[1].is_error());
                assert!(a.reason_codes[2].is_error());
            }
            p => panic!("{p:?}"),
        }
        c.sync().await;
    }
}

#[tokio::test]
async fn resubscribe_replaces_the_subscription_mqtt_3_8_4_3() {
    // v3.1.1 [MQTT-3.8.4-3]: the same filter again replaces the subscription.
    let b = start().await;
    let mut sub = Raw::connect(b.addr(), V3, "s").await;
    sub.subscribe("t", QoS::AtMostOnce).await;
    sub.subscribe("t", QoS::AtLeastOnce).await;
    let mut publ = Raw::connect(b.addr(), V3, "p").await;
    publ.publish("t", "x", QoS::AtLeastOnce, false).await;
    // One copy, at the new QoS.
    let p = sub.recv_publish().await;
    assert_eq!(p.qos, QoS::AtLeastOnce);
    sub.ack(&p).await;
    sub.expect_silence(200).await;
}

#[tokio::test]
async fn unsubscribe_stops_delivery_and_reports_v5_codes() {
    let b = start().await;
    let mut sub = Raw::connect(b.addr(), V5, "s").await;
    sub.subscribe("u/#", QoS::AtMostOnce).await;
    sub.send(Packet::Unsubscribe(Unsubscribe {
        packet_id: pid(8),
        properties: Default::default(),
        filters: vec!["u/#".into(), "never".into()],
    }))
    .await;
    match sub.recv().await {
        Packet::UnsubAck(a) => {
            assert_eq!(a.packet_id, pid(8));
            assert_eq!(
                a.reason_codes,
                vec![ReasonCode::Success, ReasonCode::NoSubscriptionExisted]
            );
        }
        p => panic!("{p:?}"),
    }
    let mut publ = Raw::connect(b.addr(), V5, "p").await;
    publ.publish("u/1", "x", QoS::AtMostOnce, false).await;
    sub.expect_silence(200).await;
}

#[tokio::test]
async fn no_local_v5_mqtt_3_8_3_3() {
    // v5 [MQTT-3.8.3-3]: No Local keeps our own messages away.
    let b = start().await;
    let mut c = Raw::connect(b.addr(), V5, "echo").await;
    let opts = SubscriptionOptions {
        no_local: true,
        qos: QoS::AtMostOnce,
        ..Default::default()
    };
    c.subscribe_with("chat", opts, None).await;
    c.publish("chat", "mine", QoS::AtMostOnce, false).await;
    c.sync().await;
    c.expect_silence(150).await;
    let mut other = Raw::connect(b.addr(), V5, "other").await;
    other.publish("chat", "theirs", QoS::AtMostOnce, false).await;
    assert_eq!(&c.recv_publish().await.payload[..], b"theirs");
}

#[tokio::test]
async fn subscription_identifiers_are_delivered_v5_mqtt_3_3_4_3() {
    // v5 [MQTT-3.3.4-3], v5 [MQTT-3.3.4-4]: one copy carrying both identifiers.
    let b = start().await;
    let mut c = Raw::connect(b.addr(), V5, "ids").await;
    c.subscribe_with("s/+", SubscriptionOptions::qos(QoS::AtMostOnce), Some(11))
        .await;
    c.subscribe_with("s/#", SubscriptionOptions::qos(QoS::AtMostOnce), Some(22))
        .await;
    let mut publ = Raw::connect(b.addr(), V5, "p").await;
    publ.publish("s/x", "x", QoS::AtMostOnce, false).await;
    let p = c.recv_publish().await;
    let mut ids = p.properties.subscription_identifiers.clone();
    ids.sort();
    assert_eq!(ids, vec![11, 22]);
    c.expect_silence(150).await;
}

#[tokio::test]
async fn shared_subscription_delivers_each_message_to_one_member() {
    let b = start().await;
    let mut m1 = Raw::connect(b.addr(), V5, "m1").await;
    let mut m2 = Raw::connect(b.addr(), V3, "m2").await;
    m1.subscribe("$share/g/jobs/#", QoS::AtLeastOnce).await;
    m2.subscribe("$share/g/jobs/#", QoS::AtLeastOnce).await;
    let mut publ = Raw::connect(b.addr(), V5, "p").await;
    for i in 0..10 {
        publ.publish(&format!("jobs/{i}"), "work", QoS::AtLeastOnce, false)
            .await;
    }
    let mut counts = [0, 0];
    for (i, m) in [&mut m1, &mut m2].into_iter().enumerate() {
        while let Ok(Some(Packet::Publish(p))) = m.next_within(std::time::Duration::from_millis(300)).await {
            m.ack(&p).await;
            counts[i] += 1;
        }
    }
    // Every message went to exactly one member, spread over both.
    assert_eq!(counts[0] + counts[1], 10, "{counts:?}");
    assert!(counts[0] >= 3 && counts[1] >= 3, "unfair spread {counts:?}");
}

#[tokio::test]
async fn shared_subscription_redelivers_unacknowledged_messages_of_a_leaving_member() {
    let b = start().await;
    let mut m1 = Raw::connect(b.addr(), V5, "m1").await;
    m1.subscribe("$share/g/t", QoS::AtLeastOnce).await;
    let mut publ = Raw::connect(b.addr(), V5, "p").await;
    publ.publish("t", "important", QoS::AtLeastOnce, false).await;
    let _unacked = m1.recv_publish().await;
    let mut m2 = Raw::connect(b.addr(), V5, "m2").await;
    m2.subscribe("$share/g/t", QoS::AtLeastOnce).await;
    drop(m1); // leaves without acknowledging; its session ends (clean start, expiry 0)
    let p = m2.recv_publish().await;
    assert_eq!(&p.payload[..], b"important");
}

#[tokio::test]
async fn invalid_shared_filters_get_0x8f_v5_mqtt_4_8_2_2() {
    // v5 [MQTT-4.8.2-1], v5 [MQTT-4.8.2-2]: malformed share names and filters.
    let b = start().await;
    let mut c = Raw::connect(b.addr(), V5, "c").await;
    for f in ["$share/", "$share//a", "$share/a+b/c", "$share/name"] {
        let ack = c.subscribe(f, QoS::AtMostOnce).await;
        assert_eq!(ack.reason_codes, vec![ReasonCode::TopicFilterInvalid], "{f}");
    }
}
