//! A hostile server (RELIABILITY.md section K): each misbehaviour ends in an
//! error and, for 5.0, a DISCONNECT with the right reason code — never a panic.

use tern_client::{Client, ClientError, CloseReason, Event, Events, QoS, Reconnect};
use tern_proto::codec::ConnAckProperties;
use tern_proto::{ConnAck, Packet, PacketId, ProtocolVersion, Publish, ReasonCode, SubAck};

use crate::support::*;

/// Connect a client (no reconnection) to the fake server; returns the server's side too.
async fn setup(
    version: ProtocolVersion,
    tweak: impl FnOnce(tern_client::Options) -> tern_client::Options,
    ack: ConnAck,
) -> (FakeServer, Peer, Client, Events) {
    let server = FakeServer::start().await;
    let opts = tweak(options(server.addr(), version, "victim").reconnect(Reconnect::disabled()));
    let connecting = tokio::spawn(Client::connect(opts));
    let (peer, _) = server.accept_with(ack).await;
    let (c, events) = connecting.await.unwrap().unwrap();
    (server, peer, c, events)
}

async fn violation(events: &mut Events) -> ReasonCode {
    match wait_for(events, |e| matches!(e, Event::Disconnected { .. })).await {
        Event::Disconnected {
            reason: CloseReason::ProtocolViolation { reason_code, .. },
        } => reason_code,
        Event::Disconnected { reason } => panic!("expected a protocol violation, got {reason:?}"),
        _ => unreachable!(),
    }
}

fn ok() -> ConnAck {
    ConnAck::new(ReasonCode::Success, false)
}

#[tokio::test]
async fn k1_suback_with_fewer_or_more_codes_than_filters_mqtt_3_8_4_6() {
    // v5 [MQTT-3.8.4-6]: a SUBACK must have one code per filter; otherwise 0x82.
    for codes in [vec![], vec![ReasonCode::GrantedQoS1, ReasonCode::GrantedQoS1]] {
        let (_s, mut peer, c, mut events) = setup(V5, |o| o, ok()).await;
        let sub = tokio::spawn(async move { c.subscribe("a/b", QoS::AtLeastOnce).await });
        let Packet::Subscribe(s) = peer.recv().await else {
            panic!()
        };
        peer.send(Packet::SubAck(SubAck {
            packet_id: s.packet_id,
            properties: Default::default(),
            reason_codes: codes,
        }))
        .await;
        assert_eq!(peer.expect_close().await, Some(ReasonCode::ProtocolError));
        let e = sub.await.unwrap().unwrap_err();
        assert!(matches!(e, ClientError::Request(_)), "{e}");
        assert_eq!(violation(&mut events).await, ReasonCode::ProtocolError);
    }
}

#[tokio::test]
async fn k2_session_present_when_the_client_has_none_mqtt_3_2_2_4() {
    // v5 [MQTT-3.2.2-4]: Session Present 1 without a session: the client closes.
    for v in [V3, V5] {
        let server = FakeServer::start().await;
        let connecting = tokio::spawn(Client::connect(options(server.addr(), v, "k2")));
        let (mut peer, connect) = server.accept_with(ConnAck::new(ReasonCode::Success, true)).await;
        assert!(connect.clean_start);
        let expected = if v == V5 {
            Some(ReasonCode::ProtocolError)
        } else {
            None
        };
        assert_eq!(peer.expect_close().await, expected);
        let e = connecting.await.unwrap().unwrap_err();
        assert!(e.to_string().contains("MQTT-3.2.2-4"), "{e}");
    }
}

#[tokio::test]
async fn k3_second_connack_mqtt_3_2_0_2() {
    // v5 [MQTT-3.2.0-2]: a second CONNACK is a Protocol Error.
    let (_s, mut peer, _c, mut events) = setup(V5, |o| o, ok()).await;
    peer.send(Packet::ConnAck(ok())).await;
    assert_eq!(peer.expect_close().await, Some(ReasonCode::ProtocolError));
    assert_eq!(violation(&mut events).await, ReasonCode::ProtocolError);
}

#[tokio::test]
async fn k3_refused_connack_followed_by_data_mqtt_3_2_2_7() {
    // v5 [MQTT-3.2.2-7], v5 [MQTT-4.13.2-1]: after a refusal the connection is closed and later
    // data is not processed.
    let server = FakeServer::start().await;
    let connecting = tokio::spawn(Client::connect(options(server.addr(), V5, "k3")));
    let mut peer = server.accept().await;
    peer.recv_connect().await;
    peer.send(Packet::ConnAck(ConnAck::new(
        ReasonCode::BadUserNameOrPassword,
        false,
    )))
    .await;
    peer.send(Packet::Publish(Publish::new("sneaky", "data"))).await;
    let e = connecting.await.unwrap().unwrap_err();
    assert!(
        matches!(
            e,
            ClientError::Refused {
                reason_code: ReasonCode::BadUserNameOrPassword,
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(
        peer.expect_close().await,
        None,
        "nothing more is sent after a refusal"
    );
}

#[tokio::test]
async fn k4_topic_alias_above_the_clients_maximum_mqtt_3_3_2_11() {
    // v5 [MQTT-3.3.2-11]: an alias above our maximum is the server's error: 0x94.
    let (_s, mut peer, _c, mut events) = setup(V5, |o| o.topic_alias_maximum(2), ok()).await;
    let mut p = Publish::new("t", "x");
    p.properties.topic_alias = Some(3);
    peer.send(Packet::Publish(p)).await;
    assert_eq!(peer.expect_close().await, Some(ReasonCode::TopicAliasInvalid));
    assert_eq!(violation(&mut events).await, ReasonCode::TopicAliasInvalid);
}

#[tokio::test]
async fn k4_topic_alias_zero_mqtt_3_3_2_8() {
    // v5 [MQTT-3.3.2-8]: Topic Alias 0 is never valid: 0x94.
    let (_s, mut peer, _c, mut events) = setup(V5, |o| o.topic_alias_maximum(2), ok()).await;
    // PUBLISH "t" with properties [0x23 Topic Alias = 0].
    peer.send_bytes(&[0x30, 0x07, 0x00, 0x01, b't', 0x03, 0x23, 0x00, 0x00])
        .await;
    assert_eq!(peer.expect_close().await, Some(ReasonCode::TopicAliasInvalid));
    assert_eq!(violation(&mut events).await, ReasonCode::TopicAliasInvalid);
}

#[tokio::test]
async fn k5_packet_above_the_clients_maximum_packet_size_mqtt_3_1_2_24() {
    // v5 [MQTT-3.1.2-24]: a packet above our Maximum Packet Size is the server's error: 0x95.
    let (_s, mut peer, _c, mut events) = setup(V5, |o| o.maximum_packet_size(128), ok()).await;
    peer.send(Packet::Publish(Publish::new("big", vec![7u8; 500])))
        .await;
    assert_eq!(peer.expect_close().await, Some(ReasonCode::PacketTooLarge));
    assert_eq!(violation(&mut events).await, ReasonCode::PacketTooLarge);
}

#[tokio::test]
async fn k6_reason_string_when_problem_information_was_refused_mqtt_3_1_2_29() {
    // v5 [MQTT-3.1.2-29]: a Reason String on a PUBACK after Request Problem Information 0.
    let (_s, mut peer, c, mut events) = setup(V5, |o| o.request_problem_information(false), ok()).await;
    let publ = tokio::spawn(async move { c.publish("a", "b", QoS::AtLeastOnce).await });
    let Packet::Publish(p) = peer.recv().await else {
        panic!()
    };
    let mut ack = tern_proto::Ack::new(p.packet_id.unwrap());
    ack.properties.reason_string = Some("you should not see this".into());
    peer.send(Packet::PubAck(ack)).await;
    assert_eq!(peer.expect_close().await, Some(ReasonCode::ProtocolError));
    assert_eq!(violation(&mut events).await, ReasonCode::ProtocolError);
    assert!(publ.await.unwrap().is_err());
}

#[tokio::test]
async fn k7_qos2_identifier_reused_without_dup_gets_pubrec_0x91() {
    let (_s, mut peer, _c, mut events) = setup(V5, |o| o, ok()).await;
    let mut p = Publish::new("q2", "once");
    p.qos = QoS::ExactlyOnce;
    p.packet_id = PacketId::new(11);
    peer.send(Packet::Publish(p.clone())).await;
    peer.send(Packet::Publish(p)).await;
    let Packet::PubRec(first) = peer.recv().await else {
        panic!()
    };
    let Packet::PubRec(second) = peer.recv().await else {
        panic!()
    };
    assert_eq!(first.reason_code, ReasonCode::Success);
    assert_eq!(second.reason_code, ReasonCode::PacketIdentifierInUse);
    message(&mut events).await;
    no_message(&mut events, std::time::Duration::from_millis(200)).await;
}

#[tokio::test]
async fn k8_malformed_bytes_never_panic() {
    let cases: &[(&str, &[u8], ReasonCode)] = &[
        ("packet type 0", &[0x00, 0x00], ReasonCode::MalformedPacket),
        (
            "PUBREL with wrong flags",
            &[0x60, 0x02, 0x00, 0x01],
            ReasonCode::MalformedPacket,
        ),
        (
            "QoS 3",
            &[0x36, 0x03, 0x00, 0x01, b'a'],
            ReasonCode::MalformedPacket,
        ),
        (
            "remaining length of 5 bytes",
            &[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F],
            ReasonCode::MalformedPacket,
        ),
        (
            "topic length beyond the packet",
            &[0x30, 0x03, 0x00, 0x09, b'a'],
            ReasonCode::MalformedPacket,
        ),
        (
            "invalid UTF-8 topic",
            &[0x30, 0x05, 0x00, 0x02, 0xC3, 0x28, 0x00],
            ReasonCode::MalformedPacket,
        ),
        (
            "wildcard in topic",
            &[0x30, 0x04, 0x00, 0x01, b'#', 0x00],
            ReasonCode::ProtocolError,
        ),
        (
            "unknown property",
            &[0x30, 0x06, 0x00, 0x01, b'a', 0x02, 0x7F, 0x00],
            ReasonCode::MalformedPacket,
        ),
        (
            "SUBSCRIBE from the server",
            &[0x82, 0x07, 0x00, 0x01, 0x00, 0x00, 0x01, b'a', 0x00],
            ReasonCode::ProtocolError,
        ),
        (
            "PINGREQ from the server",
            &[0xC0, 0x00],
            ReasonCode::ProtocolError,
        ),
    ];
    for (what, bytes, code) in cases {
        let (_s, mut peer, _c, mut events) = setup(V5, |o| o, ok()).await;
        peer.send_bytes(bytes).await;
        assert_eq!(peer.expect_close().await, Some(*code), "{what}");
        assert_eq!(violation(&mut events).await, *code, "{what}");
    }
    // 3.1.1: the same input closes the connection without a DISCONNECT.
    let (_s, mut peer, _c, mut events) = setup(V3, |o| o, ok()).await;
    peer.send_bytes(&[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F]).await;
    assert_eq!(peer.expect_close().await, None);
    violation(&mut events).await;
}

#[tokio::test]
async fn server_disconnect_is_reported_with_its_reason() {
    let (_s, mut peer, _c, mut events) = setup(V5, |o| o, ok()).await;
    let mut d = tern_proto::Disconnect::with_reason(ReasonCode::ServerShuttingDown);
    d.properties.reason_string = Some("maintenance".into());
    peer.send(Packet::Disconnect(d.clone())).await;
    match wait_for(&mut events, |e| matches!(e, Event::Disconnected { .. })).await {
        Event::Disconnected { reason } => assert_eq!(reason, CloseReason::ServerDisconnect(d)),
        _ => unreachable!(),
    }
}

#[tokio::test]
async fn server_limits_from_connack_are_respected() {
    let mut ack = ok();
    ack.properties = ConnAckProperties {
        maximum_qos: Some(1),
        retain_available: Some(0),
        receive_maximum: Some(1),
        ..Default::default()
    };
    let (_s, mut peer, c, _events) = setup(V5, |o| o, ack).await;
    let e = c.publish("a", "b", QoS::ExactlyOnce).await.unwrap_err();
    assert!(e.to_string().contains("MQTT-3.2.2-11"), "{e}");
    let e = c
        .publish_with("a", "b", tern_client::PublishOptions::new().retain(true))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("MQTT-3.2.2-14"), "{e}");
    // Receive Maximum 1: the second QoS 1 message waits for the first PUBACK.
    let c2 = c.clone();
    let both = tokio::spawn(async move {
        let a = c2.publish("a", "1", QoS::AtLeastOnce);
        let b = c2.publish("a", "2", QoS::AtLeastOnce);
        tokio::join!(a, b)
    });
    let Packet::Publish(first) = peer.recv().await else {
        panic!()
    };
    let quiet = tokio::time::timeout(std::time::Duration::from_millis(200), peer.recv()).await;
    assert!(
        quiet.is_err(),
        "v5 [MQTT-3.3.4-7] a second PUBLISH beyond Receive Maximum: {quiet:?}"
    );
    peer.send(Packet::PubAck(tern_proto::Ack::new(first.packet_id.unwrap())))
        .await;
    let Packet::Publish(second) = peer.recv().await else {
        panic!()
    };
    peer.send(Packet::PubAck(tern_proto::Ack::new(second.packet_id.unwrap())))
        .await;
    let (a, b) = both.await.unwrap();
    assert!(a.is_ok() && b.is_ok());
}
