//! QoS 0/1/2 flows in both directions.

use tern_proto::{Ack, Packet, Publish, QoS, ReasonCode, SubscriptionOptions};

use crate::harness::*;

#[tokio::test]
async fn qos_flows_and_downgrade_mqtt_3_8_4_6() {
    let b = start().await;
    for v in [V3, V5] {
        for sub_qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
            let mut sub = Raw::connect(b.addr(), v, "sub").await;
            let ack = sub.subscribe("q/t", sub_qos).await;
            assert_eq!(ack.reason_codes, vec![ReasonCode::granted(sub_qos)]);
            let mut publ = Raw::connect(b.addr(), v, "pub").await;
            for pub_qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
                publ.publish("q/t", "x", pub_qos, false).await;
                let p = sub.recv_publish().await;
                // v3.1.1 [MQTT-3.8.4-6] / v5 [MQTT-3.8.4-8]: delivered at min(publish QoS, granted QoS).
                assert_eq!(p.qos, pub_qos.min(sub_qos), "{v} sub {sub_qos:?} pub {pub_qos:?}");
                assert_eq!(p.packet_id.is_some(), p.qos != QoS::AtMostOnce);
                sub.ack(&p).await;
            }
            sub.disconnect().await;
            publ.disconnect().await;
        }
    }
}

#[tokio::test]
async fn puback_no_matching_subscribers_in_v5() {
    let b = start().await;
    let mut c = Raw::connect(b.addr(), V5, "lonely").await;
    let mut p = Publish::new("nobody/listens", "x");
    p.qos = QoS::AtLeastOnce;
    p.packet_id = Some(pid(5));
    c.send(Packet::Publish(p)).await;
    match c.recv().await {
        Packet::PubAck(a) => assert_eq!(a.reason_code, ReasonCode::NoMatchingSubscribers),
        p => panic!("{p:?}"),
    }
}

#[tokio::test]
async fn qos2_duplicate_publish_is_delivered_once_mqtt_4_3_3_10() {
    let b = start().await;
    let mut sub = Raw::connect(b.addr(), V5, "sub").await;
    sub.subscribe("once", QoS::ExactlyOnce).await;
    let mut publ = Raw::connect(b.addr(), V5, "pub").await;
    for dup in [false, true, true] {
        let mut p = Publish::new("once", "payload");
        p.qos = QoS::ExactlyOnce;
        p.packet_id = Some(pid(9));
        p.dup = dup;
        publ.send(Packet::Publish(p)).await;
        // Every copy is answered with PUBREC, only the first is forwarded (v5 [MQTT-4.3.3-10]).
        assert!(matches!(publ.recv().await, Packet::PubRec(a) if a.packet_id == pid(9)));
    }
    publ.send(Packet::PubRel(Ack::new(pid(9)))).await;
    assert!(
        matches!(publ.recv().await, Packet::PubComp(a) if a.packet_id == pid(9) && a.reason_code == ReasonCode::Success)
    );
    let p = sub.recv_publish().await;
    sub.ack(&p).await;
    sub.expect_silence(200).await;
    // After PUBCOMP the same id is a new message (v5 [MQTT-4.3.3-12]).
    publ.publish("once", "again", QoS::ExactlyOnce, false).await;
    assert_eq!(&sub.recv_publish().await.payload[..], b"again");
}

#[tokio::test]
async fn pubrel_for_unknown_id_gets_pubcomp_0x92() {
    let b = start().await;
    let mut c = Raw::connect(b.addr(), V5, "c").await;
    c.send(Packet::PubRel(Ack::new(pid(42)))).await;
    match c.recv().await {
        Packet::PubComp(a) => assert_eq!(a.reason_code, ReasonCode::PacketIdentifierNotFound),
        p => panic!("{p:?}"),
    }
    let mut c = Raw::connect(b.addr(), V3, "c3").await;
    c.send(Packet::PubRel(Ack::new(pid(42)))).await;
    assert!(matches!(c.recv().await, Packet::PubComp(a) if a.packet_id == pid(42)));
}

#[tokio::test]
async fn messages_keep_their_order_per_topic_mqtt_4_6_0_5() {
    let b = start().await;
    let mut sub = Raw::connect(b.addr(), V3, "sub").await;
    sub.subscribe("ordered", QoS::AtLeastOnce).await;
    let mut publ = Raw::connect(b.addr(), V3, "pub").await;
    for i in 0..50u16 {
        let mut p = Publish::new("ordered", i.to_string());
        p.qos = QoS::AtLeastOnce;
        p.packet_id = Some(pid(i + 1));
        publ.send(Packet::Publish(p)).await;
    }
    // v3.1.1 [MQTT-4.6.0-6]: forwarded in the order received (every topic is ordered,
    // v3.1.1 [MQTT-4.6.0-5]).
    for i in 0..50u16 {
        let p = sub.recv_publish().await;
        assert_eq!(p.payload, i.to_string().into_bytes());
        sub.ack(&p).await;
    }
}

#[tokio::test]
async fn overlapping_subscriptions_deliver_once_at_max_qos_mqtt_3_3_5_1() {
    let b = start().await;
    let mut sub = Raw::connect(b.addr(), V3, "sub").await;
    sub.subscribe("a/+", QoS::AtMostOnce).await;
    sub.subscribe("a/#", QoS::AtLeastOnce).await;
    let mut publ = Raw::connect(b.addr(), V3, "pub").await;
    publ.publish("a/b", "x", QoS::ExactlyOnce, false).await;
    // v3.1.1 [MQTT-3.3.5-1]: the maximum QoS of the matching subscriptions.
    let p = sub.recv_publish().await;
    assert_eq!(p.qos, QoS::AtLeastOnce);
    sub.ack(&p).await;
    sub.expect_silence(200).await;
}

#[tokio::test]
async fn inflight_window_respects_client_receive_maximum_mqtt_3_3_4_9() {
    let b = start().await;
    let (mut sub, _) = Raw::connect_with(b.addr(), narrow_window("slow", 3)).await;
    sub.subscribe_with("w", SubscriptionOptions::qos(QoS::AtLeastOnce), None)
        .await;
    let mut publ = Raw::connect(b.addr(), V5, "fast").await;
    for _ in 0..6 {
        publ.publish("w", "m", QoS::AtLeastOnce, false).await;
    }
    // v5 [MQTT-3.3.4-9]: never more than Receive Maximum unacknowledged.
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(sub.recv_publish().await);
    }
    sub.expect_silence(200).await;
    let ids: std::collections::HashSet<_> = got.iter().map(|p| p.packet_id).collect();
    // v5 [MQTT-2.2.1-4]: identifiers in use are distinct.
    assert_eq!(ids.len(), 3);
    for p in &got {
        sub.ack(p).await;
    }
    for _ in 0..3 {
        let p = sub.recv_publish().await;
        sub.ack(&p).await;
    }
}

#[tokio::test]
async fn dollar_topics_do_not_match_leading_wildcards_mqtt_4_7_2_1() {
    // v3.1.1 [MQTT-4.7.2-1]: `#` and `+/x` do not match `$foo/x`.
    let b = start().await;
    let mut all = Raw::connect(b.addr(), V3, "all").await;
    all.subscribe("#", QoS::AtMostOnce).await;
    all.subscribe("+/x", QoS::AtMostOnce).await;
    let mut dollar = Raw::connect(b.addr(), V3, "dollar").await;
    dollar.subscribe("$foo/#", QoS::AtMostOnce).await;
    let mut publ = Raw::connect(b.addr(), V3, "pub").await;
    publ.publish("$foo/x", "secret", QoS::AtMostOnce, false).await;
    publ.sync().await;
    assert_eq!(&dollar.recv_publish().await.topic[..], "$foo/x");
    all.expect_silence(200).await;
}

#[tokio::test]
async fn pubrec_with_error_reason_ends_the_delivery_mqtt_4_4_0_2() {
    let b = start().await;
    let mut sub = Raw::connect(b.addr(), V5, "sub").await;
    sub.subscribe("e", QoS::ExactlyOnce).await;
    let mut publ = Raw::connect(b.addr(), V5, "pub").await;
    publ.publish("e", "x", QoS::ExactlyOnce, false).await;
    let p = sub.recv_publish().await;
    sub.send(Packet::PubRec(Ack::with_reason(
        p.packet_id.unwrap(),
        ReasonCode::UnspecifiedError,
    )))
    .await;
    // No PUBREL follows: the delivery is over (v5 [MQTT-4.4.0-2]).
    sub.expect_silence(200).await;
}

#[tokio::test]
async fn overlapping_filters_of_many_sessions_give_each_one_delivery_mqtt_3_3_4_2() {
    // More sessions than the router collapses by a scan (8), each with five filters that
    // all match: every session still gets one copy.
    let b = start().await;
    let filters = ["o/a/b", "o/+/b", "o/a/+", "o/#", "+/+/+"];
    let mut subs = Vec::new();
    for i in 0..12usize {
        let v = if i % 2 == 0 { V5 } else { V3 };
        let mut c = Raw::connect(b.addr(), v, &format!("ov{i}")).await;
        for (j, f) in filters.iter().enumerate() {
            // One filter at QoS 0 or 1 (both in each version), the others at 0.
            let qos = if j == i % filters.len() && i / 2 % 2 == 1 {
                QoS::AtLeastOnce
            } else {
                QoS::AtMostOnce
            };
            let id = v.is_v5().then_some(j as u32 + 1);
            c.subscribe_with(f, SubscriptionOptions::qos(qos), id).await;
        }
        subs.push(c);
    }
    let mut publ = Raw::connect(b.addr(), V5, "ov-pub").await;
    publ.publish("o/a/b", "x", QoS::ExactlyOnce, false).await;
    // Matched by `o/#` alone: the next message each session receives.
    publ.publish("o/end", "end", QoS::AtMostOnce, false).await;
    for (i, c) in subs.iter_mut().enumerate() {
        let got = c.recv_publish().await;
        // v5 [MQTT-3.3.4-2] / v3.1.1 [MQTT-3.3.5-1]: once, at the highest QoS of the
        // matching subscriptions.
        let want = if i / 2 % 2 == 1 {
            QoS::AtLeastOnce
        } else {
            QoS::AtMostOnce
        };
        assert_eq!(got.qos, want, "session {i}");
        if i % 2 == 0 {
            // v5 [MQTT-3.3.4-3]: with the identifiers of all of them.
            let mut ids = got.properties.subscription_identifiers.clone();
            ids.sort();
            assert_eq!(ids, [1, 2, 3, 4, 5], "session {i}");
        }
        c.ack(&got).await;
        assert_eq!(
            &*c.recv_publish().await.topic,
            "o/end",
            "session {i}: one copy only"
        );
    }
}
