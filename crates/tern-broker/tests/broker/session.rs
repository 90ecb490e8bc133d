//! Persistent sessions: queued messages, resend on reconnect, expiry.

use std::time::Duration;

use tern_proto::{Connect, Disconnect, Packet, QoS, ReasonCode};

use crate::harness::*;

#[tokio::test]
async fn offline_session_gets_queued_qos1_and_qos2_mqtt_3_1_2_4() {
    let b = start().await;
    for v in [V3, V5] {
        let (mut sub, ack) = Raw::connect_with(b.addr(), persistent(v, "dev")).await;
        assert!(!ack.session_present);
        sub.subscribe("cmd/#", QoS::ExactlyOnce).await;
        sub.disconnect().await;

        let mut publ = Raw::connect(b.addr(), v, "ctl").await;
        publ.publish("cmd/1", "one", QoS::AtLeastOnce, false).await;
        publ.publish("cmd/2", "two", QoS::ExactlyOnce, false).await;
        publ.publish("cmd/3", "zero", QoS::AtMostOnce, false).await;

        // v3.1.1 [MQTT-3.1.2-4] / v3.1.1 [MQTT-3.2.2-2], v5 [MQTT-3.1.2-5] / v5 [MQTT-3.2.2-3]: the
        // session resumes with Session Present = 1, holding what was queued (v3.1.1 [MQTT-3.1.2-5]).
        let (mut sub, ack) = Raw::connect_with(b.addr(), persistent(v, "dev")).await;
        assert!(ack.session_present);
        let p1 = sub.recv_publish().await;
        assert_eq!((&p1.payload[..], p1.qos), (&b"one"[..], QoS::AtLeastOnce));
        sub.ack(&p1).await;
        let p2 = sub.recv_publish().await;
        assert_eq!((&p2.payload[..], p2.qos), (&b"two"[..], QoS::ExactlyOnce));
        sub.ack(&p2).await;
        // QoS 0 is not queued for offline sessions by default.
        sub.expect_silence(200).await;
        // Clean up: end the session.
        let mut c = Connect::new(v, "dev");
        c.keep_alive = 0;
        let (sub, ack) = Raw::connect_with(b.addr(), c).await;
        assert!(
            !ack.session_present,
            "v3.1.1 [MQTT-3.1.2-6] / v5 [MQTT-3.1.2-4] clean session discards state"
        );
        sub.disconnect().await;
    }
}

#[tokio::test]
async fn unacknowledged_messages_are_resent_with_dup_mqtt_4_4_0_1() {
    let b = start().await;
    for v in [V3, V5] {
        let (mut sub, _) = Raw::connect_with(b.addr(), persistent(v, "resend")).await;
        sub.subscribe("r", QoS::ExactlyOnce).await;
        let mut publ = Raw::connect(b.addr(), v, "p").await;
        publ.publish("r", "q1", QoS::AtLeastOnce, false).await;
        publ.publish("r", "q2", QoS::ExactlyOnce, false).await;
        let first = sub.recv_publish().await;
        let second = sub.recv_publish().await;
        // Acknowledge the QoS 2 message half-way (PUBREC) and then drop the connection.
        sub.send(Packet::PubRec(tern_proto::Ack::new(second.packet_id.unwrap())))
            .await;
        assert!(matches!(sub.recv().await, Packet::PubRel(_)));
        drop(sub);
        tokio::time::sleep(Duration::from_millis(100)).await;

        let (mut sub, ack) = Raw::connect_with(b.addr(), persistent(v, "resend")).await;
        assert!(ack.session_present);
        // v3.1.1+v5 [MQTT-4.4.0-1]: PUBLISH again with DUP and the same id, then PUBREL, in order.
        let again = sub.recv_publish().await;
        assert!(again.dup);
        assert_eq!(again.packet_id, first.packet_id);
        assert_eq!(again.payload, first.payload);
        match sub.recv().await {
            Packet::PubRel(a) => assert_eq!(Some(a.packet_id), second.packet_id),
            p => panic!("expected PUBREL, got {p:?}"),
        }
        sub.send(Packet::PubAck(tern_proto::Ack::new(again.packet_id.unwrap())))
            .await;
        sub.send(Packet::PubComp(tern_proto::Ack::new(second.packet_id.unwrap())))
            .await;
        sub.sync().await;
        sub.expect_silence(100).await;
        let mut c = Connect::new(v, "resend");
        c.keep_alive = 0;
        Raw::connect_with(b.addr(), c).await.0.disconnect().await;
    }
}

#[tokio::test]
async fn session_expiry_zero_ends_the_session_at_disconnect() {
    let b = start().await;
    let mut c = Connect::new(V5, "short");
    c.clean_start = false;
    c.keep_alive = 0;
    let (mut sub, _) = Raw::connect_with(b.addr(), c.clone()).await;
    sub.subscribe("s", QoS::AtLeastOnce).await;
    sub.disconnect().await;
    let (_sub, ack) = Raw::connect_with(b.addr(), c).await;
    assert!(!ack.session_present);
}

#[tokio::test]
async fn session_expiry_interval_elapses() {
    let (b, clock) = start_clocked(|_| {}).await;
    let mut c = persistent(V5, "expiring");
    c.properties.session_expiry_interval = Some(1);
    let (mut sub, _) = Raw::connect_with(b.addr(), c.clone()).await;
    sub.subscribe("s", QoS::AtLeastOnce).await;
    sub.disconnect().await;
    // Not yet: the expiry has not run out.
    pass(&clock, Duration::from_millis(900)).await;
    let (s, ack) = Raw::connect_with(b.addr(), c.clone()).await;
    assert!(ack.session_present, "the session expired too early");
    s.disconnect().await;
    pass(&clock, Duration::from_millis(1100)).await;
    let (_sub, ack) = Raw::connect_with(b.addr(), c).await;
    assert!(!ack.session_present, "the session should have expired");
}

#[tokio::test]
async fn disconnect_can_change_session_expiry() {
    let b = start().await;
    let (mut sub, _) = Raw::connect_with(b.addr(), persistent(V5, "changer")).await;
    sub.subscribe("s", QoS::AtLeastOnce).await;
    let mut d = Disconnect::default();
    d.properties.session_expiry_interval = Some(0);
    sub.send(Packet::Disconnect(d)).await;
    assert_eq!(sub.expect_closed().await, None);
    let (_sub, ack) = Raw::connect_with(b.addr(), persistent(V5, "changer")).await;
    assert!(
        !ack.session_present,
        "expiry set to 0 at DISCONNECT ends the session"
    );
}

#[tokio::test]
async fn disconnect_setting_expiry_after_zero_is_a_protocol_error() {
    let b = start().await;
    let mut c = Connect::new(V5, "zero");
    c.keep_alive = 0;
    let (mut raw, _) = Raw::connect_with(b.addr(), c).await;
    let mut d = Disconnect::default();
    d.properties.session_expiry_interval = Some(30);
    raw.send(Packet::Disconnect(d)).await;
    // v5 section 3.14.2.2.2.
    assert_eq!(raw.expect_closed().await, Some(ReasonCode::ProtocolError));
}

#[tokio::test]
async fn queue_is_bounded_per_session() {
    let b = start_with(|c| c.max_queued_messages = 5).await;
    let (mut sub, _) = Raw::connect_with(b.addr(), persistent(V3, "bounded")).await;
    sub.subscribe("flood", QoS::AtLeastOnce).await;
    sub.disconnect().await;
    let mut publ = Raw::connect(b.addr(), V3, "p").await;
    for _ in 0..20 {
        publ.publish("flood", "m", QoS::AtLeastOnce, false).await;
    }
    let (mut sub, _) = Raw::connect_with(b.addr(), persistent(V3, "bounded")).await;
    for _ in 0..5 {
        let p = sub.recv_publish().await;
        sub.ack(&p).await;
    }
    sub.expect_silence(200).await;
}

#[tokio::test]
async fn max_sessions_refuses_new_client_ids_and_lets_existing_sessions_resume() {
    let b = start_with(|c| c.max_sessions = 3).await;
    for id in ["kept-1", "kept-2"] {
        let (s, _) = Raw::connect_with(b.addr(), persistent(V5, id)).await;
        s.disconnect().await;
    }
    let _online = Raw::connect(b.addr(), V3, "online").await;
    // A fourth client identifier: 5.0 CONNACK 0x97 Quota exceeded, 3.1.1 0x03.
    let (_r, ack) = Raw::connect_with(b.addr(), persistent(V5, "fourth")).await;
    assert_eq!(ack.reason_code, ReasonCode::QuotaExceeded);
    let (_r, ack) = Raw::connect_with(b.addr(), Connect::new(V3, "fourth-v3")).await;
    assert_eq!(ack.reason_code, ReasonCode::ServerUnavailable);
    // Existing sessions resume, and a clean start on an existing id replaces it.
    let (s, ack) = Raw::connect_with(b.addr(), persistent(V5, "kept-1")).await;
    assert_eq!(
        (ack.reason_code, ack.session_present),
        (ReasonCode::Success, true)
    );
    s.disconnect().await;
    let (s, ack) = Raw::connect_with(b.addr(), Connect::new(V5, "kept-2")).await;
    assert_eq!(
        (ack.reason_code, ack.session_present),
        (ReasonCode::Success, false)
    );
    // kept-2's session ended with that clean connection: there is room again.
    s.disconnect().await;
    let (_s, ack) = Raw::connect_with(b.addr(), persistent(V5, "fourth")).await;
    assert_eq!(ack.reason_code, ReasonCode::Success);
}

#[tokio::test]
async fn v3_persistent_sessions_can_be_given_an_expiry() {
    // 3.1.1 keeps a Clean Session 0 session forever; v3_session_expiry_secs bounds it.
    let (b, clock) = start_clocked(|c| c.v3_session_expiry_secs = 600).await;
    let (s, _) = Raw::connect_with(b.addr(), persistent(V3, "old-device")).await;
    s.disconnect().await;
    assert_eq!(b.session("old-device").unwrap().expiry_interval, 600);
    pass(&clock, Duration::from_secs(599)).await;
    let (s, ack) = Raw::connect_with(b.addr(), persistent(V3, "old-device")).await;
    assert!(ack.session_present);
    s.disconnect().await;
    pass(&clock, Duration::from_secs(601)).await;
    assert!(b.session("old-device").is_none());
    let (_s, ack) = Raw::connect_with(b.addr(), persistent(V3, "old-device")).await;
    assert!(!ack.session_present);
}

#[tokio::test]
async fn the_broker_wide_queue_budget_bounds_what_offline_sessions_hold() {
    // Two offline sessions and a budget for ten 1 KiB messages in all: beyond it messages
    // are not queued (counted), an online subscriber still gets everything, and the budget
    // is given back as the sessions drain or end.
    let b = start_with(|c| c.max_queued_bytes_total = 10 * 1024).await;
    for id in ["away-1", "away-2"] {
        let (mut s, _) = Raw::connect_with(b.addr(), persistent(V5, id)).await;
        s.subscribe("fleet/#", QoS::AtLeastOnce).await;
        s.disconnect().await;
    }
    let mut online = Raw::connect(b.addr(), V5, "online").await;
    online.subscribe("fleet/#", QoS::AtLeastOnce).await;
    let mut publ = Raw::connect(b.addr(), V5, "pub").await;
    let payload = "x".repeat(1024);
    for i in 0..20 {
        publ.publish(&format!("fleet/{i}"), &payload, QoS::AtLeastOnce, false)
            .await;
        let p = online.recv_publish().await;
        assert_eq!(p.payload.len(), 1024, "the online subscriber gets every message");
        online.ack(&p).await;
    }
    let stats = b.stats();
    assert!(stats.queued_bytes <= 10 * 1024, "{stats:?}");
    let held = |id: &str| b.session(id).unwrap().queued;
    let (n1, n2) = (held("away-1"), held("away-2"));
    // Every copy for the offline sessions was either queued or refused and counted; the
    // online subscriber's message waiting to be sent counts too, so they hold 9 or 10.
    assert_eq!(n1 + n2 + stats.dropped_over_budget as usize, 2 * 20, "{stats:?}");
    assert!((9..=10).contains(&(n1 + n2)), "{stats:?}");

    // away-1 comes back and drains: its share of the budget is free again.
    let (mut s, ack) = Raw::connect_with(b.addr(), persistent(V5, "away-1")).await;
    assert!(ack.session_present);
    for _ in 0..n1 {
        let p = s.recv_publish().await;
        s.ack(&p).await;
    }
    s.expect_silence(100).await;
    assert_eq!(b.stats().queued_bytes, n2 * 1024);
    // away-2 is discarded by an administrator: nothing is left queued.
    assert!(b.disconnect("away-2", true));
    assert_eq!(b.stats().queued_bytes, 0);
}
