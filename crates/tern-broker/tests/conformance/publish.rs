//! Chapter 3.3 and 4.3 (the broker receiving PUBLISH), 4.7 (topic names).

use std::time::Duration;

use tern_proto::{Packet, QoS, ReasonCode, SubscriptionOptions};

use crate::support::*;

#[tokio::test]
async fn forwarded_qos0_publish_has_the_exact_form() {
    let b = start().await;
    // v3.1.1 [MQTT-3.3.2-1], v3.1.1 [MQTT-3.3.2-3]: the Topic Name comes first and is the
    // concrete topic that matched `pf/+`; v3.1.1 [MQTT-2.3.1-5], v3.1.1 [MQTT-3.3.1-2],
    // v3.1.1 [MQTT-4.3.1-1]: QoS 0, DUP 0, no packet identifier.
    let mut sub = Raw::connect(b.addr(), V3, "pf-sub3").await;
    sub.subscribe("pf/+", QoS::AtMostOnce).await;
    // The same in 5.0, where an empty property list is a Property Length of 0:
    // v5 [MQTT-3.3.2-1], v5 [MQTT-3.3.2-3], v5 [MQTT-2.2.1-2], v5 [MQTT-3.3.1-2],
    // v5 [MQTT-4.3.1-1], v5 [MQTT-2.2.2-1].
    let mut sub5 = Raw::connect(b.addr(), V5, "pf-sub5").await;
    sub5.subscribe("pf/+", QoS::AtMostOnce).await;
    let mut publ = Raw::connect(b.addr(), V3, "pf-pub").await;
    publ.send_hex("30 08 00 04 70 66 2F 61 68 69").await;
    sub.expect_hex("30 08 00 04 70 66 2F 61 68 69").await;
    sub5.expect_hex("30 09 00 04 70 66 2F 61 00 68 69").await;
    // v5 [MQTT-1.5.5-1]: a Remaining Length of 200 is written in the two bytes C8 01.
    publ.publish("pf/b", &"z".repeat(193), QoS::AtMostOnce, false)
        .await;
    let frame = sub5.recv_frame().await.unwrap();
    assert_eq!((frame[1], frame[2], frame.len()), (0xC8, 0x01, 203));
}

#[tokio::test]
async fn a_byte_order_mark_in_a_topic_is_kept() {
    let b = start().await;
    for v in [V3, V5] {
        // v3.1.1 [MQTT-1.5.3-3] / v5 [MQTT-1.5.4-3]: U+FEFF is neither skipped nor stripped:
        // "\u{FEFF}x" and "x" are different topics.
        let mut sub = Raw::connect(b.addr(), v, "bom-sub").await;
        sub.subscribe("\u{feff}x", QoS::AtMostOnce).await;
        let mut publ = Raw::connect(b.addr(), v, "bom-pub").await;
        publ.publish("x", "plain", QoS::AtMostOnce, false).await;
        publ.publish("\u{feff}x", "bom", QoS::AtMostOnce, false).await;
        let p = sub.recv_publish().await;
        assert_eq!(
            (&p.topic.as_bytes()[..], &p.payload[..]),
            (&b"\xEF\xBB\xBFx"[..], &b"bom"[..])
        );
        sub.disconnect().await;
    }
}

#[tokio::test]
async fn the_longest_topic_name_is_delivered_intact() {
    let b = start().await;
    // v3.1.1+v5 [MQTT-4.7.3-3]: a topic name may take 65,535 bytes, the most its length can say.
    let topic = format!("long/{}", "t".repeat(65_535 - 5));
    for v in [V3, V5] {
        let mut sub = Raw::connect(b.addr(), v, "long-sub").await;
        sub.subscribe("long/#", QoS::AtMostOnce).await;
        let mut publ = Raw::connect(b.addr(), v, "long-pub").await;
        publ.publish(&topic, "x", QoS::AtMostOnce, false).await;
        assert_eq!(sub.recv_publish().await.topic.len(), 65_535);
        sub.disconnect().await;
    }
}

#[tokio::test]
async fn dollar_topics_are_not_matched_by_leading_wildcards_v5() {
    let b = start().await;
    let mut all = Raw::connect(b.addr(), V5, "dl-all").await;
    all.subscribe("#", QoS::AtMostOnce).await;
    all.subscribe("+/x", QoS::AtMostOnce).await;
    let mut dollar = Raw::connect(b.addr(), V5, "dl-dollar").await;
    dollar.subscribe("$d/+", QoS::AtMostOnce).await;
    let mut publ = Raw::connect(b.addr(), V5, "dl-pub").await;
    publ.publish("$d/x", "x", QoS::AtMostOnce, false).await;
    // v5 [MQTT-4.7.2-1]: `#` and `+/x` do not match `$d/x`; `$d/+` does.
    assert_eq!(&dollar.recv_publish().await.topic[..], "$d/x");
    all.expect_silence(200).await;
}

#[tokio::test]
async fn qos1_publish_is_acknowledged_and_its_identifier_is_free_again_after_puback() {
    let b = start().await;
    for v in [V3, V5] {
        let mut sub = Raw::connect(b.addr(), v, "q1-sub").await;
        sub.subscribe("q1", QoS::AtLeastOnce).await;
        let mut publ = Raw::connect(b.addr(), v, "q1-pub").await;
        let props = if v.is_v5() { "00" } else { "" };
        let len = if v.is_v5() { "08" } else { "07" };
        // v3.1.1 [MQTT-3.3.4-1], v3.1.1 [MQTT-4.3.2-2], v3.1.1 [MQTT-2.3.1-6]: PUBACK with the
        // identifier of the PUBLISH; v5 [MQTT-3.3.4-1], v5 [MQTT-4.3.2-4], v5 [MQTT-2.2.1-5],
        // v5 [MQTT-3.4.2-1].
        publ.send_hex(&format!("32 {len} 00 02 71 31 00 07 {props} 61"))
            .await;
        publ.expect_hex("40 02 00 07").await;
        let first = sub.recv_publish().await;
        sub.ack(&first).await;
        // v3.1.1 [MQTT-4.3.2-2] / v5 [MQTT-4.3.2-5]: after the PUBACK the same identifier is a
        // new message, DUP or not; v3.1.1+v5 [MQTT-3.3.1-3]: the forwarded copy has DUP 0,
        // because it is not a retransmission.
        publ.send_hex(&format!("3A {len} 00 02 71 31 00 07 {props} 62"))
            .await;
        publ.expect_hex("40 02 00 07").await;
        let second = sub.recv_publish().await;
        assert_eq!(&second.payload[..], b"b");
        assert!(!first.dup && !second.dup);
        sub.ack(&second).await;
        sub.disconnect().await;
        publ.disconnect().await;
    }
}

#[tokio::test]
async fn qos2_publish_is_received_exactly_once() {
    let b = start().await;
    for v in [V3, V5] {
        let mut sub = Raw::connect(b.addr(), v, "q2-sub").await;
        sub.subscribe("q2", QoS::ExactlyOnce).await;
        let mut publ = Raw::connect(b.addr(), v, "q2-pub").await;
        let props = if v.is_v5() { "00" } else { "" };
        let len = if v.is_v5() { "08" } else { "07" };
        // v3.1.1 [MQTT-4.3.3-2] / v5 [MQTT-4.3.3-8], v5 [MQTT-3.5.2-1]: PUBREC with the
        // identifier; a repeat before PUBREL gets PUBREC again and is not forwarded again
        // (v5 [MQTT-4.3.3-10]).
        publ.send_hex(&format!("34 {len} 00 02 71 32 00 08 {props} 61"))
            .await;
        publ.expect_hex("50 02 00 08").await;
        publ.send_hex(&format!("3C {len} 00 02 71 32 00 08 {props} 61"))
            .await;
        publ.expect_hex("50 02 00 08").await;
        // v5 [MQTT-4.3.3-11], v5 [MQTT-3.7.2-1]: PUBCOMP with the identifier of the PUBREL.
        publ.send_hex("62 02 00 08").await;
        publ.expect_hex("70 02 00 08").await;
        let got = sub.recv_publish().await;
        sub.ack(&got).await;
        sub.expect_silence(150).await;
        // v5 [MQTT-4.3.3-12]: after PUBCOMP the identifier starts a new message.
        publ.send_hex(&format!("34 {len} 00 02 71 32 00 08 {props} 62"))
            .await;
        publ.expect_hex("50 02 00 08").await;
        publ.send_hex("62 02 00 08").await;
        publ.expect_hex("70 02 00 08").await;
        let again = sub.recv_publish().await;
        assert_eq!(&again.payload[..], b"b");
        sub.ack(&again).await;
        sub.disconnect().await;
        publ.disconnect().await;
    }
}

#[tokio::test]
async fn qos2_handshake_goes_on_after_the_message_expired_v5() {
    let (b, clock) = start_clocked(|_| {}).await;
    let mut publ = Raw::connect(b.addr(), V5, "exp-pub").await;
    // QoS 2 PUBLISH "t", id 9, Message Expiry Interval 1 s.
    publ.send_hex("34 0C 00 01 74 00 09 05 02 00 00 00 01 78").await;
    publ.expect_hex("50 03 00 09 10").await;
    pass(&clock, Duration::from_millis(1300)).await;
    // v5 [MQTT-4.3.3-13]: the message has expired, the handshake still completes.
    publ.send_hex("62 02 00 09").await;
    publ.expect_hex("70 02 00 09").await;
}

#[tokio::test]
async fn retained_messages_are_replaced_kept_and_removed() {
    let b = start().await;
    for v in [V3, V5] {
        let topic = format!("ret/{v}");
        let mut publ = Raw::connect(b.addr(), v, "ret-pub").await;
        publ.publish(&topic, "one", QoS::AtLeastOnce, true).await;
        // v3.1.1 [MQTT-3.3.1-7]: a retained QoS 0 message replaces the earlier one;
        // v5 [MQTT-3.3.1-5]: any retained message replaces it.
        publ.publish(&topic, "two", QoS::AtMostOnce, true).await;
        // v3.1.1 [MQTT-3.3.1-12] / v5 [MQTT-3.3.1-8]: without RETAIN nothing is stored or removed.
        publ.publish(&topic, "three", QoS::AtMostOnce, false).await;
        publ.sync().await;
        // v3.1.1 [MQTT-3.1.2-7]: the publisher's session ends; the retained message stays.
        publ.disconnect().await;
        let mut sub = Raw::connect(b.addr(), v, "ret-sub").await;
        sub.subscribe(&topic, QoS::ExactlyOnce).await;
        let got = sub.recv_publish().await;
        assert_eq!(
            (&got.payload[..], got.retain, got.qos),
            (&b"two"[..], true, QoS::AtMostOnce)
        );
        sub.expect_silence(100).await;
        // v5 [MQTT-3.3.1-6], v5 [MQTT-3.3.1-7]: an empty retained payload is delivered as usual
        // and removes the retained message, which later subscribers no longer get.
        let mut publ = Raw::connect(b.addr(), v, "ret-pub").await;
        publ.publish(&topic, "", QoS::AtMostOnce, true).await;
        let cleared = sub.recv_publish().await;
        assert!(cleared.payload.is_empty());
        let mut late = Raw::connect(b.addr(), v, "ret-late").await;
        late.subscribe(&topic, QoS::AtMostOnce).await;
        late.expect_silence(200).await;
    }
}

#[tokio::test]
async fn retain_as_published_0_clears_retain_on_forwarding_v5() {
    let b = start().await;
    let mut sub = Raw::connect(b.addr(), V5, "rap-sub").await;
    sub.subscribe_with("rap/t", SubscriptionOptions::qos(QoS::AtMostOnce), None)
        .await;
    let mut publ = Raw::connect(b.addr(), V5, "rap-pub").await;
    publ.publish("rap/t", "live", QoS::AtMostOnce, true).await;
    // v5 [MQTT-3.3.1-12]: Retain As Published 0: RETAIN is 0 on the forwarded message.
    let got = sub.recv_publish().await;
    assert!(!got.retain);
}

#[tokio::test]
async fn topics_are_matched_byte_for_byte_without_normalisation() {
    // v3.1.1+v5 [MQTT-4.7.3-4]: no case folding, no Unicode normalisation, no trimming.
    let b = start().await;
    for v in [V3, V5] {
        let mut sub = Raw::connect(b.addr(), v, "norm-sub").await;
        sub.subscribe("Caf\u{e9}/x", QoS::AtMostOnce).await;
        let mut publ = Raw::connect(b.addr(), v, "norm-pub").await;
        for other in [
            "caf\u{e9}/x",
            "Cafe\u{301}/x",
            "Caf\u{e9}/x/",
            "Caf\u{e9}//x",
            "Caf\u{e9}/X",
        ] {
            publ.publish(other, "no", QoS::AtMostOnce, false).await;
        }
        publ.publish("Caf\u{e9}/x", "yes", QoS::AtMostOnce, false).await;
        let got = sub.recv_publish().await;
        assert_eq!(&got.payload[..], b"yes");
        sub.expect_silence(100).await;
        sub.disconnect().await;
    }
}

#[tokio::test]
async fn invalid_topic_names_close_the_connection() {
    let b = start().await;
    // (3.1.1 bytes, 5.0 bytes after CONNECT)
    let cases = [
        // v3.1.1 [MQTT-4.7.1-1], v3.1.1 [MQTT-3.3.2-2] / v5 [MQTT-4.7.0-1], v5 [MQTT-3.3.2-2]:
        // wildcards are never in a Topic Name.
        ("30 03 00 01 23", "30 04 00 01 23 00"),
        ("30 05 00 03 61 2F 2B", "30 06 00 03 61 2F 2B 00"),
        // v3.1.1 [MQTT-4.7.3-1] / v5 [MQTT-4.7.3-1]: at least one character (no alias here).
        ("30 02 00 00", "30 03 00 00 00"),
        // v3.1.1 [MQTT-1.5.3-1] / v5 [MQTT-1.5.4-1], v3.1.1+v5 [MQTT-3.3.2-1]: UTF-8.
        ("30 04 00 02 C3 28", "30 05 00 02 C3 28 00"),
    ];
    for (v3, v5) in cases {
        let mut c = Raw::connect(b.addr(), V3, "bad-topic3").await;
        c.send_hex(v3).await;
        assert_eq!(c.expect_closed().await, None, "{v3}");
        let mut c = Raw::connect(b.addr(), V5, "bad-topic5").await;
        c.send_hex(v5).await;
        assert!(c.expect_closed().await.is_some(), "{v5}");
    }
}

#[tokio::test]
async fn publish_properties_are_checked_v5() {
    let b = start().await;
    let cases = [
        // v5 [MQTT-3.3.2-14]: a Response Topic with a wildcard.
        ("30 0A 00 01 74 06 08 00 03 61 2F 23", ReasonCode::ProtocolError),
        // v5 [MQTT-3.3.2-13]: the Response Topic is UTF-8.
        ("30 09 00 01 74 05 08 00 02 C3 28", ReasonCode::MalformedPacket),
        // v5 [MQTT-3.3.2-19]: the Content Type is UTF-8.
        ("30 09 00 01 74 05 03 00 02 C3 28", ReasonCode::MalformedPacket),
        // v5 [MQTT-1.5.7-1]: both strings of a User Property are UTF-8.
        (
            "30 0C 00 01 74 08 26 00 01 6B 00 02 C3 28",
            ReasonCode::MalformedPacket,
        ),
    ];
    for (bytes, code) in cases {
        let mut c = Raw::connect(b.addr(), V5, "props").await;
        c.send_hex(bytes).await;
        assert_eq!(c.expect_closed().await, Some(code), "{bytes}");
    }
}

#[tokio::test]
async fn overlapping_subscriptions_v5() {
    let b = start().await;
    let mut sub = Raw::connect(b.addr(), V5, "ov-sub").await;
    sub.subscribe_with("ov/+", SubscriptionOptions::qos(QoS::AtMostOnce), Some(1))
        .await;
    sub.subscribe_with("ov/#", SubscriptionOptions::qos(QoS::ExactlyOnce), Some(2))
        .await;
    let mut publ = Raw::connect(b.addr(), V5, "ov-pub").await;
    publ.publish("ov/a", "x", QoS::ExactlyOnce, false).await;
    // v5 [MQTT-3.3.4-2]: delivered respecting the highest QoS of the matching subscriptions.
    let got = sub.recv_publish().await;
    assert_eq!(got.qos, QoS::ExactlyOnce);
    sub.ack(&got).await;
    sub.expect_silence(150).await;
    // v5 [MQTT-3.3.4-5]: a shared and a non-shared subscription give separate copies, each
    // with the identifier of its own subscription.
    let mut both = Raw::connect(b.addr(), V5, "ov-both").await;
    both.subscribe_with("ov2/t", SubscriptionOptions::qos(QoS::AtMostOnce), Some(7))
        .await;
    both.subscribe_with(
        "$share/g/ov2/t",
        SubscriptionOptions::qos(QoS::AtMostOnce),
        Some(8),
    )
    .await;
    publ.publish("ov2/t", "x", QoS::AtMostOnce, false).await;
    let mut ids = vec![
        both.recv_publish().await.properties.subscription_identifiers,
        both.recv_publish().await.properties.subscription_identifiers,
    ];
    ids.sort();
    assert_eq!(ids, vec![vec![7], vec![8]]);
}

#[tokio::test]
async fn topic_aliases_up_to_the_maximum_are_accepted_and_die_with_the_connection_v5() {
    let b = start_with(|c| c.topic_alias_maximum = 2).await;
    let mut sub = Raw::connect(b.addr(), V5, "al-sub").await;
    sub.subscribe("al/#", QoS::AtMostOnce).await;
    let mut publ = Raw::connect(b.addr(), V5, "al-pub").await;
    // v5 [MQTT-3.3.2-12]: aliases 1 and 2 (the maximum) are accepted, then used alone.
    for (alias, topic) in [(1u16, "al/one"), (2, "al/two")] {
        let mut p = publish(topic, "set", QoS::AtMostOnce, 0);
        p.properties.topic_alias = Some(alias);
        publ.send(Packet::Publish(p)).await;
        let mut p = publish("", "use", QoS::AtMostOnce, 0);
        p.properties.topic_alias = Some(alias);
        publ.send(Packet::Publish(p)).await;
    }
    for topic in ["al/one", "al/one", "al/two", "al/two"] {
        assert_eq!(&sub.recv_publish().await.topic[..], topic);
    }
    publ.disconnect().await;
    // v5 [MQTT-3.3.2-7]: a new connection starts without the old mappings.
    let mut publ = Raw::connect(b.addr(), V5, "al-pub").await;
    let mut p = publish("", "stale", QoS::AtMostOnce, 0);
    p.properties.topic_alias = Some(1);
    publ.send(Packet::Publish(p)).await;
    assert_eq!(publ.expect_closed().await, Some(ReasonCode::ProtocolError));
    sub.expect_silence(100).await;
}

#[tokio::test]
async fn after_an_error_pubrec_the_identifier_is_free_again_v5() {
    let dir = std::env::temp_dir().join(format!("tern-conf-acl-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let acl = dir.join("acl");
    std::fs::write(&acl, "topic readwrite ok/#\n").unwrap();
    let b = start_with(|c| c.acl_file = Some(acl.clone())).await;
    let mut sub = Raw::connect(b.addr(), V5, "ep-sub").await;
    sub.subscribe("ok/#", QoS::AtMostOnce).await;
    let mut publ = Raw::connect(b.addr(), V5, "ep-pub").await;
    // QoS 2 to a topic the ACL denies, id 5: PUBREC 0x87 Not authorized.
    publ.send(Packet::Publish(publish("no/x", "denied", QoS::ExactlyOnce, 5)))
        .await;
    publ.expect_hex("50 03 00 05 87").await;
    // v5 [MQTT-4.3.3-9]: after a PUBREC of 0x80 or more, the same identifier is a new message.
    publ.send(Packet::Publish(publish("ok/x", "allowed", QoS::ExactlyOnce, 5)))
        .await;
    publ.expect_hex("50 02 00 05").await;
    assert_eq!(&sub.recv_publish().await.payload[..], b"allowed");
    publ.send_hex("62 02 00 05").await;
    publ.expect_hex("70 02 00 05").await;
    let _ = std::fs::remove_dir_all(&dir);
}
