//! A hostile server (RELIABILITY.md section K), played packet by packet.

use super::*;
use crate::DecodeError;

#[test]
fn k1_suback_with_the_wrong_number_of_codes_mqtt_3_8_4_6() {
    // v5 [MQTT-3.8.4-6]: one code per filter, or the client closes with 0x82.
    for codes in [vec![], vec![ReasonCode::Success, ReasonCode::Success]] {
        let mut h = Harness::v5();
        h.connect();
        let t =
            h.s.subscribe(
                h.now,
                vec![("a".into(), SubscriptionOptions::default())],
                Default::default(),
            )
            .unwrap();
        let Some(Packet::Subscribe(s)) = h.sent().pop() else {
            panic!()
        };
        h.recv(Packet::SubAck(SubAck {
            packet_id: s.packet_id,
            properties: Default::default(),
            reason_codes: codes,
        }));
        assert_eq!(disconnect_sent(&h.sent()), Some(ReasonCode::ProtocolError));
        let ev = h.events();
        assert!(
            matches!(&ev[0], Event::SubscribeDone { token, result: Err(RequestError::Protocol(_)) } if *token == t)
        );
        assert!(matches!(
            &ev[1],
            Event::Closed(CloseReason::ProtocolViolation { .. })
        ));
    }
}

#[test]
fn k2_session_present_after_clean_start_mqtt_3_2_2_4() {
    // v5 [MQTT-3.2.2-4]: Session Present 1 after Clean Start 1: close with 0x82.
    let mut h = Harness::v5();
    h.connect_with(ConnAck::new(ReasonCode::Success, true));
    assert_eq!(disconnect_sent(&h.sent()), Some(ReasonCode::ProtocolError));
    assert_eq!(violation_code(&h.closed_with()), ReasonCode::ProtocolError);
    assert!(!h.s.is_connected());
}

#[test]
fn k3_second_connack_mqtt_3_2_0_2_and_packets_before_connack() {
    // v5 [MQTT-3.2.0-2]: a second CONNACK, and v5 [MQTT-3.2.0-1] a PUBLISH before it, are Protocol
    // Errors.
    let mut h = Harness::v5();
    h.connect();
    h.recv(Packet::ConnAck(ConnAck::new(ReasonCode::Success, false)));
    assert_eq!(violation_code(&h.closed_with()), ReasonCode::ProtocolError);

    let mut h = Harness::v5();
    h.s.start_connect(h.now);
    h.sent();
    h.recv(Packet::Publish(qos_publish("x", QoS::AtMostOnce)));
    assert_eq!(violation_code(&h.closed_with()), ReasonCode::ProtocolError);
    assert!(!h.events().iter().any(|e| matches!(e, Event::Message(_))));
}

#[test]
fn k4_topic_alias_above_our_maximum_mqtt_3_3_2_11() {
    // v5 [MQTT-3.3.2-11]: an alias above our maximum: 0x94.
    let mut c = config(ProtocolVersion::V5);
    c.connect.properties.topic_alias_maximum = Some(2);
    let mut h = Harness::new(c);
    h.connect();
    let mut p = qos_publish("a/b", QoS::AtMostOnce);
    p.properties.topic_alias = Some(2);
    h.recv(Packet::Publish(p.clone()));
    // Resolved from the alias next time; the property is not shown to the application.
    let mut short = p.clone();
    short.topic = ByteString::new();
    h.recv(Packet::Publish(short));
    let ev = h.events();
    let mut expect = p.clone();
    expect.properties.topic_alias = None;
    assert_eq!(ev, vec![Event::Message(expect.clone()), Event::Message(expect)]);
    p.properties.topic_alias = Some(3);
    h.recv(Packet::Publish(p));
    assert_eq!(disconnect_sent(&h.sent()), Some(ReasonCode::TopicAliasInvalid));
    assert_eq!(violation_code(&h.closed_with()), ReasonCode::TopicAliasInvalid);
}

#[test]
fn k4_topic_alias_zero_mqtt_3_3_2_8_and_unknown_alias() {
    // v5 [MQTT-3.3.2-8]: alias 0: 0x94.
    let mut h = Harness::v5();
    h.connect();
    // Alias 0 is refused by the decoder; its reason code is 0x94.
    h.s.handle_decode_error(h.now, &DecodeError::TopicAliasZero);
    assert_eq!(disconnect_sent(&h.sent()), Some(ReasonCode::TopicAliasInvalid));
    h.events();

    let mut c = config(ProtocolVersion::V5);
    c.connect.properties.topic_alias_maximum = Some(5);
    let mut h = Harness::new(c);
    h.connect();
    let mut p = qos_publish("a", QoS::AtMostOnce);
    p.topic = ByteString::new();
    p.properties.topic_alias = Some(1);
    h.recv(Packet::Publish(p));
    assert_eq!(violation_code(&h.closed_with()), ReasonCode::ProtocolError);
}

#[test]
fn k5_packet_too_large_is_disconnect_0x95() {
    let mut c = config(ProtocolVersion::V5);
    c.connect.properties.maximum_packet_size = Some(512);
    let mut h = Harness::new(c);
    assert_eq!(h.s.max_incoming_packet_size(), 512);
    h.connect();
    h.s.handle_decode_error(h.now, &DecodeError::PacketTooLarge { size: 600, max: 512 });
    assert_eq!(disconnect_sent(&h.sent()), Some(ReasonCode::PacketTooLarge));
    assert_eq!(violation_code(&h.closed_with()), ReasonCode::PacketTooLarge);
}

#[test]
fn k6_reason_string_after_request_problem_information_0_mqtt_3_1_2_29() {
    // v5 [MQTT-3.1.2-29]: Reason String on an ack after Request Problem Information 0: 0x82.
    let mut c = config(ProtocolVersion::V5);
    c.connect.properties.request_problem_information = Some(0);
    let mut h = Harness::new(c);
    h.connect();
    h.publish(qos_publish("a", QoS::AtLeastOnce));
    let id = publishes(&h.sent())[0].packet_id.unwrap();
    let mut ack = Ack::new(id);
    ack.properties.reason_string = Some("details".into());
    h.recv(Packet::PubAck(ack));
    assert_eq!(disconnect_sent(&h.sent()), Some(ReasonCode::ProtocolError));
    assert_eq!(violation_code(&h.closed_with()), ReasonCode::ProtocolError);
}

#[test]
fn k7_qos2_identifier_reused_without_dup_gets_pubrec_0x91() {
    let mut h = Harness::v5();
    h.connect();
    let mut p = qos_publish("in", QoS::ExactlyOnce);
    p.packet_id = Some(pid(5));
    h.recv(Packet::Publish(p.clone()));
    h.recv(Packet::Publish(p));
    assert_eq!(
        h.sent(),
        vec![
            Packet::PubRec(Ack::new(pid(5))),
            Packet::PubRec(Ack::with_reason(pid(5), ReasonCode::PacketIdentifierInUse)),
        ]
    );
    assert_eq!(h.events().len(), 1, "delivered once");
}

#[test]
fn incoming_qos2_beyond_our_receive_maximum_is_disconnect_0x93() {
    let mut c = config(ProtocolVersion::V5);
    c.connect.properties.receive_maximum = Some(2);
    let mut h = Harness::new(c);
    h.connect();
    for n in 1..=3 {
        let mut p = qos_publish("in", QoS::ExactlyOnce);
        p.packet_id = Some(pid(n));
        h.recv(Packet::Publish(p));
    }
    assert_eq!(
        disconnect_sent(&h.sent()),
        Some(ReasonCode::ReceiveMaximumExceeded)
    );
    assert_eq!(h.s.awaiting_pubrel_len(), 2, "memory stays bounded");
}
