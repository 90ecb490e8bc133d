//! Chapter 4.3 to 4.6 and 4.9 (the broker sending PUBLISH): identifiers, DUP,
//! resending, ordering, flow control.

use std::collections::HashSet;
use std::time::Duration;

use tern_proto::{Ack, Packet, QoS, ReasonCode, SubscriptionOptions};

use crate::support::*;

#[tokio::test]
async fn qos1_delivery_is_resent_only_on_reconnection() {
    let b = start().await;
    for v in [V3, V5] {
        let (mut sub, _) = Raw::connect_with(b.addr(), persistent(v, "d1")).await;
        sub.subscribe("d1/t", QoS::AtLeastOnce).await;
        let mut publ = Raw::connect(b.addr(), v, "d1-pub").await;
        for m in ["a", "b", "c"] {
            publ.publish("d1/t", m, QoS::AtLeastOnce, false).await;
        }
        // v3.1.1 [MQTT-4.3.2-1] / v5 [MQTT-4.3.2-1], v5 [MQTT-4.3.2-2]: QoS 1, DUP 0, each
        // message with its own identifier (v3.1.1 [MQTT-2.3.1-4], v5 [MQTT-2.2.1-4]).
        let first: Vec<_> = [
            sub.recv_publish().await,
            sub.recv_publish().await,
            sub.recv_publish().await,
        ]
        .into();
        assert!(first.iter().all(|p| p.qos == QoS::AtLeastOnce && !p.dup));
        let ids: HashSet<_> = first.iter().map(|p| p.packet_id.unwrap()).collect();
        assert_eq!(ids.len(), 3);
        // v5 [MQTT-4.4.0-1]: never resent while the connection lasts, however long the wait;
        // v5 [MQTT-4.3.2-3]: the messages stay unacknowledged.
        sub.expect_silence(500).await;
        sub.send(Packet::PubAck(Ack::new(first[0].packet_id.unwrap())))
            .await;
        drop(sub);
        tokio::time::sleep(Duration::from_millis(100)).await;
        // v3.1.1+v5 [MQTT-4.4.0-1], v3.1.1+v5 [MQTT-3.3.1-1]: on reconnection the unacknowledged
        // ones come again with DUP 1 and their original identifiers (v3.1.1 [MQTT-2.3.1-4]),
        // in their original order (v3.1.1 [MQTT-4.6.0-6]); v3.1.1 [MQTT-4.1.0-1],
        // v3.1.1 [MQTT-4.1.0-2] / v5 [MQTT-4.1.0-1]: the session kept them.
        let (mut sub, ack) = Raw::connect_with(b.addr(), persistent(v, "d1")).await;
        assert!(ack.session_present);
        for orig in &first[1..] {
            let again = sub.recv_publish().await;
            assert!(again.dup, "{v}");
            assert_eq!((again.packet_id, &again.payload), (orig.packet_id, &orig.payload));
            sub.ack(&again).await;
        }
        sub.expect_silence(200).await;
        sub.disconnect().await;
        end_session(b.addr(), v, "d1").await;
    }
}

#[tokio::test]
async fn qos2_delivery_after_pubrec_resends_pubrel_not_publish() {
    let b = start().await;
    for v in [V3, V5] {
        let (mut sub, _) = Raw::connect_with(b.addr(), persistent(v, "d2")).await;
        sub.subscribe("d2/t", QoS::ExactlyOnce).await;
        let mut publ = Raw::connect(b.addr(), v, "d2-pub").await;
        publ.publish("d2/t", "x", QoS::ExactlyOnce, false).await;
        // v3.1.1 [MQTT-4.3.3-1] / v5 [MQTT-4.3.3-1], v5 [MQTT-4.3.3-2]: QoS 2, DUP 0.
        let p = sub.recv_publish().await;
        assert_eq!((p.qos, p.dup), (QoS::ExactlyOnce, false));
        let id = p.packet_id.unwrap();
        // v5 [MQTT-4.3.3-3], v5 [MQTT-4.3.3-4]: the PUBREC is answered with a PUBREL carrying
        // the same identifier (v5 [MQTT-2.2.1-5], v3.1.1 [MQTT-2.3.1-6]).
        sub.send(Packet::PubRec(Ack::new(id))).await;
        let rel = sub.recv_frame().await.unwrap();
        assert_eq!(rel, vec![0x62, 0x02, (id.get() >> 8) as u8, id.get() as u8]);
        // v5 [MQTT-4.3.3-5], v5 [MQTT-4.3.3-6]: the PUBREL stays unacknowledged; on
        // reconnection the PUBREL is resent, never the PUBLISH (v3.1.1 [MQTT-4.3.3-1]).
        drop(sub);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (mut sub, _) = Raw::connect_with(b.addr(), persistent(v, "d2")).await;
        match sub.recv().await {
            Packet::PubRel(a) => assert_eq!(a.packet_id, id),
            other => panic!("expected PUBREL, got {other:?}"),
        }
        sub.send(Packet::PubComp(Ack::new(id))).await;
        sub.expect_silence(200).await;
        sub.disconnect().await;
        end_session(b.addr(), v, "d2").await;
    }
}

#[tokio::test]
async fn sent_qos2_messages_are_not_expired_v5() {
    let (b, clock) = start_clocked(|_| {}).await;
    let (mut sub, _) = Raw::connect_with(b.addr(), persistent(V5, "d-exp")).await;
    sub.subscribe("dexp/t", QoS::ExactlyOnce).await;
    let mut publ = Raw::connect(b.addr(), V5, "d-exp-pub").await;
    let mut p = publish("dexp/t", "x", QoS::ExactlyOnce, 3);
    p.properties.message_expiry_interval = Some(1);
    publ.send(Packet::Publish(p)).await;
    let first = sub.recv_publish().await;
    drop(sub);
    pass(&clock, Duration::from_millis(1500)).await;
    // v5 [MQTT-4.3.3-7]: once sent, the message is not expired: it is resent on reconnection.
    let (mut sub, _) = Raw::connect_with(b.addr(), persistent(V5, "d-exp")).await;
    let again = sub.recv_publish().await;
    assert_eq!((again.packet_id, again.dup), (first.packet_id, true));
    sub.ack(&again).await;
    sub.disconnect().await;
    end_session(b.addr(), V5, "d-exp").await;
}

#[tokio::test]
async fn messages_of_one_publisher_arrive_in_order_v5() {
    let b = start().await;
    let mut sub = Raw::connect(b.addr(), V5, "ord-sub").await;
    sub.subscribe("ord", QoS::AtLeastOnce).await;
    let mut publ = Raw::connect(b.addr(), V5, "ord-pub").await;
    for i in 1..=30u16 {
        publ.send(Packet::Publish(publish(
            "ord",
            &i.to_string(),
            QoS::AtLeastOnce,
            i,
        )))
        .await;
    }
    // v5 [MQTT-4.6.0-5], v5 [MQTT-4.6.0-6]: every topic is ordered: same order as published.
    for i in 1..=30u16 {
        let p = sub.recv_publish().await;
        assert_eq!(p.payload, i.to_string().into_bytes());
        sub.ack(&p).await;
    }
}

#[tokio::test]
async fn a_message_is_added_to_every_matching_session_even_offline() {
    let b = start().await;
    for v in [V3, V5] {
        let (mut off, _) = Raw::connect_with(b.addr(), persistent(v, "own-off")).await;
        off.subscribe("own/#", QoS::AtLeastOnce).await;
        off.disconnect().await;
        let mut on = Raw::connect(b.addr(), v, "own-on").await;
        on.subscribe("own/+", QoS::AtLeastOnce).await;
        let mut publ = Raw::connect(b.addr(), v, "own-pub").await;
        publ.publish("own/x", "m", QoS::AtLeastOnce, false).await;
        // v3.1.1 [MQTT-4.5.0-1] / v5 [MQTT-4.5.0-1]: both sessions get it; the offline one
        // keeps it (v3.1.1 [MQTT-3.1.2-5]).
        let p = on.recv_publish().await;
        on.ack(&p).await;
        let (mut off, _) = Raw::connect_with(b.addr(), persistent(v, "own-off")).await;
        let p = off.recv_publish().await;
        assert_eq!(&p.payload[..], b"m");
        off.ack(&p).await;
        off.disconnect().await;
        end_session(b.addr(), v, "own-off").await;
    }
}

#[tokio::test]
async fn receive_maximum_holds_back_only_publish_v5() {
    let b = start().await;
    let mut c = connect(V5, "rm-sub");
    c.properties.receive_maximum = Some(1);
    let (mut sub, _) = Raw::connect_with(b.addr(), c).await;
    sub.subscribe("rm/#", QoS::AtLeastOnce).await;
    let mut publ = Raw::connect(b.addr(), V5, "rm-pub").await;
    publ.publish("rm/1", "one", QoS::AtLeastOnce, false).await;
    publ.publish("rm/2", "two", QoS::AtLeastOnce, false).await;
    // v5 [MQTT-4.9.0-1], v5 [MQTT-4.9.0-2], v5 [MQTT-3.3.4-9]: a quota of one: the second QoS 1
    // message waits for the first PUBACK.
    let first = sub.recv_publish().await;
    assert_eq!(&first.payload[..], b"one");
    sub.expect_silence(200).await;
    // v5 [MQTT-3.3.4-10], v5 [MQTT-4.9.0-3]: other packets are not held back at quota zero.
    sub.sync().await;
    let ack = sub.subscribe("rm-other", QoS::AtMostOnce).await;
    assert_eq!(ack.reason_codes, vec![ReasonCode::Success]);
    sub.ack(&first).await;
    let second = sub.recv_publish().await;
    assert_eq!(&second.payload[..], b"two");
}

#[tokio::test]
async fn packets_too_large_for_the_client_are_never_sent_v5() {
    let b = start().await;
    let mut c = connect(V5, "big-sub");
    c.properties.maximum_packet_size = Some(40);
    let (mut sub, _) = Raw::connect_with(b.addr(), c).await;
    sub.subscribe("big/#", QoS::AtLeastOnce).await;
    let mut publ = Raw::connect(b.addr(), V5, "big-pub").await;
    publ.publish("big/1", &"x".repeat(100), QoS::AtLeastOnce, false)
        .await;
    publ.publish("big/2", "fits", QoS::AtLeastOnce, false).await;
    // v5 [MQTT-3.1.2-24]: nothing above 40 bytes reaches the client; v5 [MQTT-3.1.2-25]: the
    // large message is dropped as if it had been delivered, and the next one follows.
    let frame = sub.recv_frame().await.unwrap();
    assert!(frame.len() <= 40, "{} bytes", frame.len());
    assert_eq!(frame[0] & 0xF0, 0x30);
}

#[tokio::test]
async fn no_topic_alias_towards_a_client_that_did_not_allow_them_v5() {
    let b = start().await;
    let mut sub = Raw::connect(b.addr(), V5, "na-sub").await;
    sub.subscribe("na/t", QoS::AtMostOnce).await;
    let mut zero = connect(V5, "na-zero");
    zero.properties.topic_alias_maximum = Some(0);
    let (mut sub0, _) = Raw::connect_with(b.addr(), zero).await;
    sub0.subscribe("na/t", QoS::AtMostOnce).await;
    let mut publ = Raw::connect(b.addr(), V5, "na-pub").await;
    for _ in 0..3 {
        publ.publish("na/t", "x", QoS::AtMostOnce, false).await;
    }
    // v5 [MQTT-3.1.2-27]: Topic Alias Maximum absent or 0: never a Topic Alias.
    for s in [&mut sub, &mut sub0] {
        for _ in 0..3 {
            let p = s.recv_publish().await;
            assert_eq!((&p.topic[..], p.properties.topic_alias), ("na/t", None));
        }
    }
}

#[tokio::test]
async fn granted_qos_caps_the_delivery_and_is_reported_per_filter() {
    let b = start().await;
    let mut sub = Raw::connect(b.addr(), V5, "gq-sub").await;
    let ack = sub
        .subscribe_with("gq/t", SubscriptionOptions::qos(QoS::AtLeastOnce), None)
        .await;
    // v5 [MQTT-3.8.4-7]: the code is the granted QoS.
    assert_eq!(ack.reason_codes, vec![ReasonCode::GrantedQoS1]);
    let mut publ = Raw::connect(b.addr(), V5, "gq-pub").await;
    publ.publish("gq/t", "x", QoS::ExactlyOnce, false).await;
    // v5 [MQTT-3.8.4-8]: delivered at the lower of published and granted QoS.
    assert_eq!(sub.recv_publish().await.qos, QoS::AtLeastOnce);
}
