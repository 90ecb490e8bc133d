//! CONNECT / CONNACK, identifiers, takeover, keep-alive.

use std::time::Duration;

use tern_proto::{Connect, Packet, ReasonCode};

use crate::harness::*;

#[tokio::test]
async fn first_packet_must_be_connect_mqtt_3_1_0_1() {
    let b = start().await;
    let mut c = Raw::open(b.addr(), V3).await;
    // v3.1.1 [MQTT-3.1.0-1] a PUBACK before CONNECT: closed, nothing sent.
    c.send_bytes(&[0x40, 0x02, 0x00, 0x01]).await;
    assert_eq!(c.expect_closed().await, None);
}

#[tokio::test]
async fn second_connect_is_a_protocol_error_mqtt_3_1_0_2() {
    // v3.1.1+v5 [MQTT-3.1.0-2]: a second CONNECT is a protocol violation.
    let b = start().await;
    for v in [V3, V5] {
        let mut c = Raw::connect(b.addr(), v, "twice").await;
        c.send(Packet::Connect(Box::new(Connect::new(v, "twice")))).await;
        let reason = c.expect_closed().await;
        // 3.1.1: just closed; 5.0: DISCONNECT 0x82 first.
        assert_eq!(reason, v.is_v5().then_some(ReasonCode::ProtocolError));
    }
}

#[tokio::test]
async fn unsupported_protocol_level_gets_connack_1_mqtt_3_1_2_2() {
    // v3.1.1 [MQTT-3.1.2-2]: CONNACK 0x01, then close.
    let b = start().await;
    let mut c = Raw::open(b.addr(), V3).await;
    // CONNECT "MQTT" level 6.
    c.send_bytes(&[
        0x10, 0x0D, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x06, 0x02, 0x00, 0x3C, 0x00, 0x01, b'a',
    ])
    .await;
    match c.next().await {
        Some(Packet::ConnAck(a)) => assert_eq!(a.reason_code, ReasonCode::UnsupportedProtocolVersion),
        p => panic!("expected CONNACK 0x01, got {p:?}"),
    }
    assert_eq!(c.expect_closed().await, None);
}

#[tokio::test]
async fn reserved_connect_flag_closes_mqtt_3_1_2_3() {
    // v3.1.1+v5 [MQTT-3.1.2-3]: the reserved flag must be 0.
    let b = start().await;
    let mut c = Raw::open(b.addr(), V3).await;
    c.send_bytes(&[
        0x10, 0x0D, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x03, 0x00, 0x3C, 0x00, 0x01, b'a',
    ])
    .await;
    assert_eq!(c.expect_closed().await, None);
    // 5.0 may answer with CONNACK 0x81 before closing (v5 [MQTT-3.2.2-7]).
    let mut c = Raw::open(b.addr(), V5).await;
    c.send_bytes(&[
        0x10, 0x0E, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0x03, 0x00, 0x3C, 0x00, 0x00, 0x01, b'a',
    ])
    .await;
    match c.next().await {
        Some(Packet::ConnAck(a)) => assert_eq!(a.reason_code, ReasonCode::MalformedPacket),
        p => panic!("expected CONNACK 0x81, got {p:?}"),
    }
    assert_eq!(c.expect_closed().await, None);
}

#[tokio::test]
async fn empty_client_id_without_clean_session_is_rejected_mqtt_3_1_3_8() {
    let b = start().await;
    let mut c = Connect::new(V3, "");
    c.clean_start = false;
    let (mut raw, ack) = Raw::connect_with(b.addr(), c).await;
    // v3.1.1 [MQTT-3.1.3-8] CONNACK 0x02 Identifier rejected, then close.
    assert_eq!(ack.reason_code, ReasonCode::ClientIdentifierNotValid);
    assert_eq!(raw.expect_closed().await, None);
}

#[tokio::test]
async fn empty_client_id_gets_an_assigned_identifier() {
    let b = start().await;
    // v3.1.1 [MQTT-3.1.3-6] 3.1.1 with clean session: accepted.
    let (_c, ack) = Raw::connect_with(b.addr(), Connect::new(V3, "")).await;
    assert_eq!(ack.reason_code, ReasonCode::Success);
    // v5 [MQTT-3.2.2-16]: the CONNACK carries the Assigned Client Identifier.
    let mut c = Connect::new(V5, "");
    c.clean_start = false;
    let (_c, ack) = Raw::connect_with(b.addr(), c).await;
    assert_eq!(ack.reason_code, ReasonCode::Success);
    let id = ack.properties.assigned_client_identifier.expect("assigned id");
    assert!(!id.is_empty());
}

#[tokio::test]
async fn connack_advertises_limits_in_v5() {
    let b = start_with(|c| {
        c.receive_maximum = 7;
        c.max_packet_size = 4096;
        c.topic_alias_maximum = 3;
    })
    .await;
    let (_c, ack) = Raw::connect_with(b.addr(), Connect::new(V5, "limits")).await;
    assert_eq!(ack.properties.receive_maximum, Some(7));
    assert_eq!(ack.properties.maximum_packet_size, Some(4096));
    assert_eq!(ack.properties.topic_alias_maximum, Some(3));
}

#[tokio::test]
async fn session_takeover_closes_the_older_connection() {
    let b = start().await;
    // v3.1.1 [MQTT-3.1.4-2]: the existing client is disconnected.
    let mut old = Raw::connect(b.addr(), V3, "same").await;
    let _new = Raw::connect(b.addr(), V3, "same").await;
    assert_eq!(old.expect_closed().await, None);
    // v5 [MQTT-3.1.4-3]: DISCONNECT 0x8E Session taken over.
    let mut old = Raw::connect(b.addr(), V5, "same5").await;
    let _new = Raw::connect(b.addr(), V5, "same5").await;
    assert_eq!(old.expect_closed().await, Some(ReasonCode::SessionTakenOver));
}

#[tokio::test]
async fn keep_alive_is_enforced_at_one_and_a_half_times() {
    let (b, clock) = start_clocked(|_| {}).await;
    let mut c5 = Connect::new(V5, "sleepy5");
    c5.keep_alive = 1;
    let (mut raw5, _) = Raw::connect_with(b.addr(), c5).await;
    let mut c3 = Connect::new(V3, "sleepy3");
    c3.keep_alive = 1;
    let (mut raw3, _) = Raw::connect_with(b.addr(), c3).await;
    // v3.1.1 [MQTT-3.1.2-24] / v5 [MQTT-3.1.2-22]: closed after 1.5 × keep-alive of silence
    // (5.0: DISCONNECT 0x8D first), not before; v5 [MQTT-3.2.2-22]: the client's value is used.
    pass(&clock, Duration::from_millis(1400)).await;
    raw5.expect_silence(50).await;
    raw3.expect_silence(50).await;
    pass(&clock, Duration::from_millis(200)).await;
    let (r5, r3) = tokio::join!(raw5.expect_closed(), raw3.expect_closed());
    assert_eq!((r5, r3), (Some(ReasonCode::KeepAliveTimeout), None));
}

#[tokio::test]
async fn pings_keep_the_connection_alive_mqtt_3_12_4_1() {
    let (b, clock) = start_clocked(|_| {}).await;
    let mut c = Connect::new(V3, "pinger");
    c.keep_alive = 1;
    let (mut raw, _) = Raw::connect_with(b.addr(), c).await;
    for _ in 0..4 {
        pass(&clock, Duration::from_millis(1000)).await;
        // v3.1.1 [MQTT-3.12.4-1] the server answers PINGREQ with PINGRESP.
        raw.sync().await;
    }
}

#[tokio::test]
async fn max_keepalive_sets_server_keep_alive_in_v5() {
    let b = start_with(|c| c.max_keepalive = 30).await;
    let mut c = Connect::new(V5, "ka");
    c.keep_alive = 600;
    let (_raw, ack) = Raw::connect_with(b.addr(), c).await;
    // v5 [MQTT-3.2.2-21]: the client must use the Server Keep Alive.
    assert_eq!(ack.properties.server_keep_alive, Some(30));
}

#[tokio::test]
async fn mqtt_3_1_is_accepted() {
    let b = start().await;
    let mut sub = Raw::connect(b.addr(), tern_proto::ProtocolVersion::V3_1, "old-client").await;
    sub.subscribe("legacy", tern_proto::QoS::AtLeastOnce).await;
    let mut publ = Raw::connect(b.addr(), V5, "new-client").await;
    publ.publish("legacy", "hi", tern_proto::QoS::AtLeastOnce, false)
        .await;
    assert_eq!(&sub.recv_publish().await.payload[..], b"hi");
}

#[tokio::test]
async fn enhanced_authentication_is_refused_with_0x8c_mqtt_4_12_0_1() {
    // v5 [MQTT-4.12.0-1]: a method the server does not offer: CONNACK 0x8C, then close.
    let b = start().await;
    let mut c = Connect::new(V5, "scram");
    c.properties.authentication_method = Some("SCRAM-SHA-1".into());
    let (mut raw, ack) = Raw::connect_with(b.addr(), c).await;
    assert_eq!(ack.reason_code, ReasonCode::BadAuthenticationMethod);
    assert_eq!(raw.expect_closed().await, None);
}
