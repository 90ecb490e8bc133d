//! Session tests with a virtual clock: every instant is `t0` plus a duration,
//! and the server is played by hand, packet by packet.

use std::time::{Duration, Instant};

use super::*;
use crate::codec::{ConnAckProperties, PublishProperties};
use crate::{Connect, SubAck, UnsubAck};

mod conformance;
mod hostile;

struct Harness {
    s: ClientSession,
    t0: Instant,
    now: Instant,
}

fn pid(n: u16) -> PacketId {
    PacketId::new(n).unwrap()
}

fn config(v: ProtocolVersion) -> ClientConfig {
    let mut c = Connect::new(v, "client-1");
    c.keep_alive = 10;
    ClientConfig::new(c)
}

fn qos_publish(topic: &str, qos: QoS) -> Publish {
    let mut p = Publish::new(topic.to_string(), "payload");
    p.qos = qos;
    p
}

impl Harness {
    fn new(config: ClientConfig) -> Harness {
        let t0 = Instant::now();
        Harness {
            s: ClientSession::new(config),
            t0,
            now: t0,
        }
    }

    fn v5() -> Harness {
        Harness::new(config(ProtocolVersion::V5))
    }

    fn advance(&mut self, d: Duration) {
        self.now += d;
        self.s.handle_timeout(self.now);
    }

    fn sent(&mut self) -> Vec<Packet> {
        std::iter::from_fn(|| self.s.poll_transmit()).collect()
    }

    fn events(&mut self) -> Vec<Event> {
        std::iter::from_fn(|| self.s.poll_event()).collect()
    }

    fn recv(&mut self, p: Packet) {
        self.s.handle_packet(self.now, p);
    }

    /// Connect and answer CONNACK; returns the CONNECT that was sent.
    fn connect_with(&mut self, ack: ConnAck) -> Connect {
        self.s.start_connect(self.now);
        let sent = self.sent();
        let Some(Packet::Connect(c)) = sent.first().cloned() else {
            panic!("expected CONNECT first, got {sent:?}");
        };
        self.recv(Packet::ConnAck(ack));
        *c
    }

    fn connect(&mut self) -> Connect {
        let c = self.connect_with(ConnAck::new(ReasonCode::Success, false));
        let ev = self.events();
        assert!(matches!(ev.first(), Some(Event::Connected { .. })), "{ev:?}");
        c
    }

    fn publish(&mut self, p: Publish) -> Token {
        self.s.publish(self.now, p).expect("publish accepted")
    }

    fn closed_with(&mut self) -> CloseReason {
        self.events()
            .into_iter()
            .find_map(|e| match e {
                Event::Closed(r) => Some(r),
                _ => None,
            })
            .expect("connection closed")
    }
}

fn publishes(sent: &[Packet]) -> Vec<&Publish> {
    sent.iter()
        .filter_map(|p| match p {
            Packet::Publish(p) => Some(p),
            _ => None,
        })
        .collect()
}

fn done(events: &[Event]) -> Vec<(Token, Result<PublishOutcome, PublishError>)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::PublishDone { token, result } => Some((*token, result.clone())),
            _ => None,
        })
        .collect()
}

fn violation_code(r: &CloseReason) -> ReasonCode {
    match r {
        CloseReason::ProtocolViolation { reason_code, .. } => *reason_code,
        other => panic!("expected a protocol violation, got {other:?}"),
    }
}

fn disconnect_sent(sent: &[Packet]) -> Option<ReasonCode> {
    sent.iter().find_map(|p| match p {
        Packet::Disconnect(d) => Some(d.reason()),
        _ => None,
    })
}

// ----- QoS flows -----

#[test]
fn qos0_completes_when_handed_to_the_transport_mqtt_4_3_1_1() {
    // v5 [MQTT-4.3.1-1]: QoS 0, DUP 0, no identifier (v5 [MQTT-2.2.1-2]).
    let mut h = Harness::v5();
    h.connect();
    let t = h.publish(qos_publish("a/b", QoS::AtMostOnce));
    let sent = h.sent();
    let p = publishes(&sent);
    assert_eq!(p.len(), 1);
    assert!(!p[0].dup && p[0].packet_id.is_none());
    assert_eq!(done(&h.events()), vec![(t, Ok(PublishOutcome::default()))]);
}

#[test]
fn qos1_completes_on_puback_with_reason_and_properties() {
    let mut h = Harness::v5();
    h.connect();
    let t = h.publish(qos_publish("a/b", QoS::AtLeastOnce));
    let sent = h.sent();
    let id = publishes(&sent)[0].packet_id.unwrap();
    // v5 [MQTT-4.3.2-2] first transmission with DUP 0.
    assert!(!publishes(&sent)[0].dup);
    assert!(done(&h.events()).is_empty(), "not complete before PUBACK");
    let mut ack = Ack::with_reason(id, ReasonCode::NoMatchingSubscribers);
    ack.properties.reason_string = Some("nobody listens".into());
    h.recv(Packet::PubAck(ack.clone()));
    assert_eq!(
        done(&h.events()),
        vec![(
            t,
            Ok(PublishOutcome {
                reason_code: ReasonCode::NoMatchingSubscribers,
                properties: ack.properties
            })
        )]
    );
    assert_eq!(h.s.inflight_len(), 0);
}

#[test]
fn qos2_completes_on_pubcomp_after_pubrel_mqtt_4_3_3_4() {
    // v5 [MQTT-4.3.3-4]: PUBREL with the same identifier after PUBREC; done at PUBCOMP.
    let mut h = Harness::v5();
    h.connect();
    let t = h.publish(qos_publish("a/b", QoS::ExactlyOnce));
    let id = publishes(&h.sent())[0].packet_id.unwrap();
    h.recv(Packet::PubRec(Ack::new(id)));
    assert_eq!(h.sent(), vec![Packet::PubRel(Ack::new(id))]);
    assert!(done(&h.events()).is_empty(), "not complete before PUBCOMP");
    h.recv(Packet::PubComp(Ack::new(id)));
    assert_eq!(done(&h.events()), vec![(t, Ok(PublishOutcome::default()))]);
}

#[test]
fn failed_ack_is_a_typed_error_and_frees_the_slot_mqtt_4_4_0_2() {
    // v5 [MQTT-4.4.0-2]: an ack of 0x80 or more completes the message; it is not resent.
    let mut h = Harness::v5();
    h.connect();
    let t1 = h.publish(qos_publish("a", QoS::AtLeastOnce));
    let t2 = h.publish(qos_publish("b", QoS::ExactlyOnce));
    let sent = h.sent();
    let ids: Vec<PacketId> = publishes(&sent).iter().map(|p| p.packet_id.unwrap()).collect();
    h.recv(Packet::PubAck(Ack::with_reason(
        ids[0],
        ReasonCode::NotAuthorized,
    )));
    h.recv(Packet::PubRec(Ack::with_reason(
        ids[1],
        ReasonCode::QuotaExceeded,
    )));
    // No PUBREL after a failed PUBREC, and nothing is retransmitted.
    assert!(h.sent().is_empty());
    let d = done(&h.events());
    assert!(
        matches!(&d[0], (t, Err(PublishError::Rejected { reason_code: ReasonCode::NotAuthorized, .. })) if *t == t1)
    );
    assert!(
        matches!(&d[1], (t, Err(PublishError::Rejected { reason_code: ReasonCode::QuotaExceeded, .. })) if *t == t2)
    );
    assert_eq!(h.s.inflight_len(), 0);
}

#[test]
fn incoming_qos1_is_delivered_and_acknowledged_mqtt_4_3_2_4() {
    // v5 [MQTT-4.3.2-4]: PUBACK with the identifier of the PUBLISH.
    let mut h = Harness::v5();
    h.connect();
    let mut p = qos_publish("in", QoS::AtLeastOnce);
    p.packet_id = Some(pid(7));
    h.recv(Packet::Publish(p.clone()));
    assert_eq!(h.sent(), vec![Packet::PubAck(Ack::new(pid(7)))]);
    assert_eq!(h.events(), vec![Event::Message(p)]);
}

#[test]
fn incoming_qos2_is_delivered_exactly_once_mqtt_4_3_3_10() {
    // v5 [MQTT-4.3.3-10]: PUBREC for a repeat, no second delivery.
    let mut h = Harness::v5();
    h.connect();
    let mut p = qos_publish("in", QoS::ExactlyOnce);
    p.packet_id = Some(pid(9));
    h.recv(Packet::Publish(p.clone()));
    let mut again = p.clone();
    again.dup = true;
    h.recv(Packet::Publish(again));
    assert_eq!(
        h.sent(),
        vec![Packet::PubRec(Ack::new(pid(9))), Packet::PubRec(Ack::new(pid(9)))]
    );
    assert_eq!(h.events(), vec![Event::Message(p.clone())], "delivered once");
    h.recv(Packet::PubRel(Ack::new(pid(9))));
    assert_eq!(h.sent(), vec![Packet::PubComp(Ack::new(pid(9)))]);
    // v5 [MQTT-4.3.3-12] after PUBCOMP the identifier starts a new message.
    h.recv(Packet::Publish(p.clone()));
    assert_eq!(h.events(), vec![Event::Message(p)]);
}

#[test]
fn unknown_pubrel_gets_pubcomp_0x92_and_unknown_pubrec_gets_pubrel_0x92() {
    let mut h = Harness::v5();
    h.connect();
    h.recv(Packet::PubRel(Ack::new(pid(3))));
    h.recv(Packet::PubRec(Ack::new(pid(4))));
    h.recv(Packet::PubAck(Ack::new(pid(5))));
    assert_eq!(
        h.sent(),
        vec![
            Packet::PubComp(Ack::with_reason(pid(3), ReasonCode::PacketIdentifierNotFound)),
            Packet::PubRel(Ack::with_reason(pid(4), ReasonCode::PacketIdentifierNotFound)),
        ]
    );
    assert!(h.events().is_empty());
}

#[test]
fn mismatched_handshake_is_a_protocol_error() {
    let mut h = Harness::v5();
    h.connect();
    h.publish(qos_publish("a", QoS::ExactlyOnce));
    let id = publishes(&h.sent())[0].packet_id.unwrap();
    h.recv(Packet::PubAck(Ack::new(id)));
    assert_eq!(disconnect_sent(&h.sent()), Some(ReasonCode::ProtocolError));
    assert_eq!(violation_code(&h.closed_with()), ReasonCode::ProtocolError);
}

// ----- flow control -----

#[test]
fn receive_maximum_holds_publishes_back_mqtt_3_3_4_7() {
    // v5 [MQTT-3.3.4-7]: no more than the server's Receive Maximum in flight.
    let mut h = Harness::v5();
    let mut ack = ConnAck::new(ReasonCode::Success, false);
    ack.properties.receive_maximum = Some(2);
    h.connect_with(ack);
    h.events();
    let tokens: Vec<Token> = (0..5)
        .map(|i| h.publish(qos_publish(&format!("t/{i}"), QoS::AtLeastOnce)))
        .collect();
    // A QoS 0 message queued behind them keeps its place.
    h.publish(qos_publish("t/q0", QoS::AtMostOnce));
    let sent = h.sent();
    let first = publishes(&sent);
    assert_eq!(first.len(), 2, "v5 [MQTT-4.9.0-2] quota of 2");
    assert_eq!(h.s.queued_len(), 4);
    // v5 [MQTT-3.3.4-8] other packets are not delayed by the quota.
    h.s.subscribe(
        h.now,
        vec![("x".into(), SubscriptionOptions::default())],
        Default::default(),
    )
    .unwrap();
    assert!(matches!(h.sent().as_slice(), [Packet::Subscribe(_)]));
    let id = first[0].packet_id.unwrap();
    h.recv(Packet::PubAck(Ack::new(id)));
    let sent = h.sent();
    let next = publishes(&sent);
    assert_eq!(next.len(), 1);
    assert_eq!(&*next[0].topic, "t/2");
    assert_eq!(done(&h.events())[0].0, tokens[0]);
    // Acknowledge everything: the rest follows, in order, QoS 0 last.
    let mut order = vec![];
    let mut outstanding = vec![first[1].packet_id.unwrap(), next[0].packet_id.unwrap()];
    while let Some(id) = outstanding.pop() {
        h.recv(Packet::PubAck(Ack::new(id)));
        for p in publishes(&h.sent()) {
            order.push(p.topic.to_string());
            if let Some(id) = p.packet_id {
                outstanding.insert(0, id);
            }
        }
        assert!(h.s.inflight_len() <= 2);
    }
    assert_eq!(order, vec!["t/3", "t/4", "t/q0"]);
}

#[test]
fn full_queue_refuses_instead_of_dropping() {
    let mut c = config(ProtocolVersion::V5);
    c.max_queued = 2;
    let mut h = Harness::new(c);
    // Offline: messages wait in the queue.
    h.publish(qos_publish("a", QoS::AtLeastOnce));
    h.publish(qos_publish("b", QoS::AtMostOnce));
    assert!(!h.s.can_publish());
    assert_eq!(
        h.s.publish(h.now, qos_publish("c", QoS::AtLeastOnce)),
        Err(PublishError::QueueFull)
    );
    // Connecting sends them.
    h.connect();
    let sent = h.sent();
    assert_eq!(publishes(&sent).len(), 2);
    assert!(h.s.can_publish());
}

// ----- resume -----

#[test]
fn resumed_session_resends_publish_with_dup_and_pubrel_in_order_mqtt_4_4_0_1() {
    // v5 [MQTT-4.4.0-1], v5 [MQTT-4.6.0-1]: resend with original identifiers, in order.
    let mut c = config(ProtocolVersion::V5);
    c.connect.clean_start = true;
    c.connect.properties.session_expiry_interval = Some(300);
    let mut h = Harness::new(c);
    let first = h.connect();
    assert!(first.clean_start);
    h.publish(qos_publish("a", QoS::AtLeastOnce));
    h.publish(qos_publish("b", QoS::ExactlyOnce));
    h.publish(qos_publish("c", QoS::ExactlyOnce));
    let sent = h.sent();
    let ids: Vec<PacketId> = publishes(&sent).iter().map(|p| p.packet_id.unwrap()).collect();
    h.recv(Packet::PubRec(Ack::new(ids[2])));
    assert_eq!(h.sent(), vec![Packet::PubRel(Ack::new(ids[2]))]);
    h.s.handle_connection_lost(h.now);
    assert_eq!(h.closed_with(), CloseReason::TransportLost);

    h.advance(Duration::from_secs(1));
    let again = h.connect_with(ConnAck::new(ReasonCode::Success, true));
    assert!(!again.clean_start, "a reconnect resumes the session");
    let resent = h.sent();
    assert_eq!(resent.len(), 3, "{resent:?}");
    match (&resent[0], &resent[1], &resent[2]) {
        (Packet::Publish(a), Packet::Publish(b), Packet::PubRel(c)) => {
            // v5 [MQTT-3.3.1-1] DUP on re-delivery; original identifiers, original order.
            assert!(a.dup && b.dup);
            assert_eq!((&*a.topic, a.packet_id), ("a", Some(ids[0])));
            assert_eq!((&*b.topic, b.packet_id), ("b", Some(ids[1])));
            // v5 [MQTT-4.3.3-6] no PUBLISH once PUBREL was sent.
            assert_eq!(c.packet_id, ids[2]);
        }
        other => panic!("unexpected resend {other:?}"),
    }
    assert!(matches!(
        h.events().first(),
        Some(Event::Connected {
            session_present: true,
            ..
        })
    ));
}

#[test]
fn lost_session_sends_again_as_new_and_resubscribes_mqtt_3_2_2_5() {
    // v5 [MQTT-3.2.2-5]: Session Present 0 discards the client's session state.
    let mut h = Harness::v5();
    h.connect();
    let sub =
        h.s.subscribe(
            h.now,
            vec![("s/#".into(), SubscriptionOptions::qos(QoS::AtLeastOnce))],
            SubscribeProperties {
                subscription_identifier: Some(4),
                ..Default::default()
            },
        )
        .unwrap();
    let Some(Packet::Subscribe(s)) = h.sent().pop() else {
        panic!()
    };
    h.recv(Packet::SubAck(SubAck {
        packet_id: s.packet_id,
        properties: Default::default(),
        reason_codes: vec![ReasonCode::GrantedQoS1],
    }));
    assert!(
        matches!(h.events().as_slice(), [Event::SubscribeDone { token, result: Ok(_) }] if *token == sub)
    );
    let t1 = h.publish(qos_publish("a", QoS::AtLeastOnce));
    let t2 = h.publish(qos_publish("b", QoS::ExactlyOnce));
    let sent = h.sent();
    let id_b = publishes(&sent)[1].packet_id.unwrap();
    h.recv(Packet::PubRec(Ack::new(id_b)));
    h.sent();
    h.s.handle_connection_lost(h.now);
    h.events();

    h.connect_with(ConnAck::new(ReasonCode::Success, false));
    let sent = h.sent();
    let Packet::Subscribe(resub) = &sent[0] else {
        panic!("expected the re-subscription first, got {sent:?}")
    };
    assert_eq!(
        resub.filters,
        vec![("s/#".into(), SubscriptionOptions::qos(QoS::AtLeastOnce))]
    );
    assert_eq!(resub.properties.subscription_identifier, Some(4));
    let p = publishes(&sent);
    assert_eq!(p.len(), 1);
    assert!(!p[0].dup, "sent as a new message");
    assert_eq!(&*p[0].topic, "a");
    let ev = h.events();
    // The released QoS 2 message's fate is unknown.
    assert_eq!(done(&ev), vec![(t2, Err(PublishError::SessionLost))]);
    h.recv(Packet::PubAck(Ack::new(p[0].packet_id.unwrap())));
    assert_eq!(done(&h.events()), vec![(t1, Ok(PublishOutcome::default()))]);
}

#[test]
fn assigned_client_identifier_is_used_to_resume() {
    let mut c = config(ProtocolVersion::V5);
    c.connect.client_id = ByteString::new();
    let mut h = Harness::new(c);
    let mut ack = ConnAck::new(ReasonCode::Success, false);
    ack.properties.assigned_client_identifier = Some("given-1".into());
    let first = h.connect_with(ack);
    assert!(first.client_id.is_empty());
    assert_eq!(&**h.s.client_id(), "given-1");
    h.s.handle_connection_lost(h.now);
    let again = h.connect_with(ConnAck::new(ReasonCode::Success, true));
    assert_eq!(&*again.client_id, "given-1");
}

#[test]
fn mqtt311_keeps_clean_session_and_sends_no_reason_codes() {
    let mut h = Harness::new(config(ProtocolVersion::V3_1_1));
    h.connect();
    h.s.handle_connection_lost(h.now);
    let again = h.connect_with(ConnAck::new(ReasonCode::Success, false));
    assert!(again.clean_start, "3.1.1 reconnects keep Clean Session 1");
    h.events();
    // A violation closes without DISCONNECT (3.1.1 has no reason codes).
    h.recv(Packet::ConnAck(ConnAck::new(ReasonCode::Success, false)));
    assert_eq!(disconnect_sent(&h.sent()), None);
    assert_eq!(violation_code(&h.closed_with()), ReasonCode::ProtocolError);
    h.connect_with(ConnAck::new(ReasonCode::Success, false));
    h.sent();
    h.s.disconnect(h.now, Disconnect::with_reason(ReasonCode::DisconnectWithWill));
    assert_eq!(h.sent(), vec![Packet::Disconnect(Disconnect::default())]);
}

// ----- keep-alive and timeouts -----

#[test]
fn keep_alive_pings_and_detects_a_dead_connection_within_one_and_a_half_intervals() {
    let mut h = Harness::v5();
    h.connect();
    assert_eq!(h.s.poll_timeout(), Some(h.t0 + Duration::from_secs(10)));
    h.advance(Duration::from_secs(9));
    assert!(h.sent().is_empty());
    // v5 [MQTT-3.1.2-20]: nothing else to send within the keep-alive: PINGREQ.
    h.advance(Duration::from_secs(1));
    assert_eq!(h.sent(), vec![Packet::PingReq]);
    h.recv(Packet::PingResp);
    // Answered: the next ping is one interval later.
    assert_eq!(h.s.poll_timeout(), Some(h.t0 + Duration::from_secs(20)));
    h.advance(Duration::from_secs(10));
    assert_eq!(h.sent(), vec![Packet::PingReq]);
    // Silence: dead at 1.5 x keep-alive after the last packet received.
    h.advance(Duration::from_secs(4));
    assert!(h.events().is_empty());
    h.advance(Duration::from_secs(1));
    assert_eq!(h.closed_with(), CloseReason::KeepAliveTimeout);
    assert_eq!(h.s.poll_timeout(), None);
}

#[test]
fn server_keep_alive_overrides_ours_mqtt_3_2_2_21() {
    // v5 [MQTT-3.2.2-21] / v5 [MQTT-3.1.2-21]: the Server Keep Alive is used.
    let mut h = Harness::v5();
    let mut ack = ConnAck::new(ReasonCode::Success, false);
    ack.properties.server_keep_alive = Some(3);
    h.connect_with(ack);
    assert_eq!(h.s.keep_alive(), Duration::from_secs(3));
    h.advance(Duration::from_secs(3));
    assert_eq!(h.sent(), vec![Packet::PingReq]);
}

#[test]
fn connack_must_arrive_within_the_connect_timeout() {
    let mut c = config(ProtocolVersion::V5);
    c.connect_timeout = Duration::from_secs(2);
    let mut h = Harness::new(c);
    h.s.start_connect(h.now);
    h.sent();
    assert_eq!(h.s.poll_timeout(), Some(h.t0 + Duration::from_secs(2)));
    h.advance(Duration::from_secs(2));
    assert_eq!(h.closed_with(), CloseReason::ConnectTimeout);
}

#[test]
fn refused_connack_closes_and_later_data_is_ignored_mqtt_3_2_2_7() {
    // v5 [MQTT-3.2.2-7], v5 [MQTT-4.13.2-1]: a refusal ends the connection.
    let mut h = Harness::v5();
    let refused = ConnAck::new(ReasonCode::NotAuthorized, false);
    h.connect_with(refused.clone());
    assert_eq!(h.closed_with(), CloseReason::Refused(refused));
    h.recv(Packet::Publish(qos_publish("x", QoS::AtMostOnce)));
    assert!(h.events().is_empty() && h.sent().is_empty());
}

// ----- server limits and topic aliases -----

#[test]
fn server_limits_are_enforced_before_sending() {
    let mut h = Harness::v5();
    let mut ack = ConnAck::new(ReasonCode::Success, false);
    ack.properties = ConnAckProperties {
        maximum_qos: Some(1),
        retain_available: Some(0),
        maximum_packet_size: Some(64),
        ..Default::default()
    };
    h.connect_with(ack);
    // v5 [MQTT-3.2.2-11]
    assert_eq!(
        h.s.publish(h.now, qos_publish("a", QoS::ExactlyOnce)),
        Err(PublishError::QoSNotSupported {
            requested: QoS::ExactlyOnce,
            maximum: QoS::AtLeastOnce
        })
    );
    // v5 [MQTT-3.2.2-14]
    let mut r = qos_publish("a", QoS::AtMostOnce);
    r.retain = true;
    assert_eq!(h.s.publish(h.now, r), Err(PublishError::RetainNotSupported));
    // v5 [MQTT-3.2.2-15]
    let big = Publish::new("a", vec![0u8; 100]);
    assert!(matches!(
        h.s.publish(h.now, big),
        Err(PublishError::PacketTooLarge { max: 64, .. })
    ));
    // v5 [MQTT-3.3.4-6]
    let mut with_id = qos_publish("a", QoS::AtMostOnce);
    with_id.properties.subscription_identifiers = vec![1];
    assert_eq!(
        h.s.publish(h.now, with_id),
        Err(PublishError::SubscriptionIdentifier)
    );
    assert!(matches!(
        h.s.publish(h.now, qos_publish("a/+", QoS::AtMostOnce)),
        Err(PublishError::InvalidTopic(_))
    ));
    assert!(h.sent().is_empty());
}

#[test]
fn v5_properties_on_a_311_connection_are_an_encode_error() {
    let mut h = Harness::new(config(ProtocolVersion::V3_1_1));
    let mut p = qos_publish("a", QoS::AtMostOnce);
    p.properties = PublishProperties {
        content_type: Some("text/plain".into()),
        ..Default::default()
    };
    assert!(matches!(h.s.publish(h.now, p), Err(PublishError::Encode(_))));
}

#[test]
fn outgoing_topic_aliases_are_assigned_per_connection_mqtt_3_3_2_7() {
    // v5 [MQTT-3.3.2-7]: aliases start afresh on every connection.
    let mut c = config(ProtocolVersion::V5);
    c.topic_aliases = true;
    let mut h = Harness::new(c);
    let mut ack = ConnAck::new(ReasonCode::Success, false);
    ack.properties.topic_alias_maximum = Some(4);
    h.connect_with(ack.clone());
    h.publish(qos_publish("long/topic", QoS::AtMostOnce));
    h.publish(qos_publish("long/topic", QoS::AtMostOnce));
    let sent = h.sent();
    let p = publishes(&sent);
    assert_eq!(
        (&*p[0].topic, p[0].properties.topic_alias),
        ("long/topic", Some(1))
    );
    assert_eq!((&*p[1].topic, p[1].properties.topic_alias), ("", Some(1)));
    // A new connection starts without mappings.
    h.s.handle_connection_lost(h.now);
    h.connect_with(ack);
    h.publish(qos_publish("long/topic", QoS::AtMostOnce));
    let sent = h.sent();
    assert_eq!(&*publishes(&sent)[0].topic, "long/topic");
}

#[test]
fn unsubscribe_removes_the_subscription_from_resubscription() {
    let mut h = Harness::v5();
    h.connect();
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
        reason_codes: vec![ReasonCode::Success],
    }));
    h.s.unsubscribe(h.now, vec!["a".into()], Default::default())
        .unwrap();
    let Some(Packet::Unsubscribe(u)) = h.sent().pop() else {
        panic!()
    };
    h.recv(Packet::UnsubAck(UnsubAck {
        packet_id: u.packet_id,
        properties: Default::default(),
        reason_codes: vec![ReasonCode::Success],
    }));
    h.s.handle_connection_lost(h.now);
    h.connect_with(ConnAck::new(ReasonCode::Success, false));
    assert!(!h.sent().iter().any(|p| matches!(p, Packet::Subscribe(_))));
}

#[test]
fn requests_made_offline_go_out_on_connect_and_abandon_fails_everything() {
    let mut h = Harness::v5();
    let t_sub =
        h.s.subscribe(
            h.now,
            vec![("a".into(), SubscriptionOptions::default())],
            Default::default(),
        )
        .unwrap();
    let t_pub = h.publish(qos_publish("a", QoS::AtLeastOnce));
    assert!(h.sent().is_empty());
    h.connect();
    let sent = h.sent();
    assert!(matches!(sent[0], Packet::Subscribe(_)));
    assert!(matches!(sent[1], Packet::Publish(_)));
    h.s.disconnect(h.now, Disconnect::default());
    assert_eq!(h.sent(), vec![Packet::Disconnect(Disconnect::default())]);
    assert_eq!(h.closed_with(), CloseReason::LocalDisconnect);
    h.s.abandon();
    let ev = h.events();
    assert!(ev.contains(&Event::PublishDone {
        token: t_pub,
        result: Err(PublishError::Closed)
    }));
    assert!(ev.contains(&Event::SubscribeDone {
        token: t_sub,
        result: Err(RequestError::Closed)
    }));
}

// ----- relaying (publish_as / release) and manual acknowledgements -----

fn relayed(topic: &str, qos: QoS, id: u16, dup: bool) -> Publish {
    let mut p = qos_publish(topic, qos);
    p.packet_id = Some(pid(id));
    p.dup = dup;
    p
}

#[test]
fn a_relayed_qos2_keeps_its_id_and_waits_for_release_before_pubrel_mqtt_4_3_3_4() {
    let mut h = Harness::v5();
    h.connect();
    let t =
        h.s.publish_as(h.now, relayed("a", QoS::ExactlyOnce, 700, true))
            .unwrap();
    let sent = h.sent();
    let p = publishes(&sent);
    assert_eq!(
        (p[0].packet_id, p[0].dup),
        (Some(pid(700)), true),
        "the caller's id and DUP"
    );
    h.recv(Packet::PubRec(Ack::new(pid(700))));
    assert!(h.sent().is_empty(), "no PUBREL before release");
    assert_eq!(h.events(), vec![Event::PublishReceived { token: t }]);
    // A repeated PUBREC while held: still nothing.
    h.recv(Packet::PubRec(Ack::new(pid(700))));
    assert!(h.sent().is_empty());
    // A reconnection does not send the held PUBREL either.
    h.s.handle_connection_lost(h.now);
    h.connect_with(ConnAck::new(ReasonCode::Success, true));
    assert!(h.sent().is_empty(), "held PUBREL is not resent before release");
    h.events();
    // v5 [MQTT-4.3.3-4]: PUBREL with the same identifier once released; done at PUBCOMP.
    assert_eq!(h.s.release(h.now, pid(700)), Ok(t));
    assert_eq!(h.sent(), vec![Packet::PubRel(Ack::new(pid(700)))]);
    h.recv(Packet::PubComp(Ack::new(pid(700))));
    assert_eq!(done(&h.events()), vec![(t, Ok(PublishOutcome::default()))]);
    // v5 [MQTT-2.2.1-3]: the identifier is free again.
    assert!(h
        .s
        .publish_as(h.now, relayed("b", QoS::AtLeastOnce, 700, false))
        .is_ok());
}

#[test]
fn releasing_an_unknown_id_sends_pubrel_and_0x92_completes_it_mqtt_4_3_3_4() {
    // v5 [MQTT-4.3.3-4]: PUBREL for a PUBREC the caller recorded before it restarted (it knows
    // only the id, 9).
    let mut c = config(ProtocolVersion::V5);
    c.connect.clean_start = false;
    let mut h = Harness::new(c);
    let t = h.s.release(h.now, pid(9)).unwrap();
    h.connect_with(ConnAck::new(ReasonCode::Success, true));
    let sent = h.sent();
    assert_eq!(
        sent,
        vec![Packet::PubRel(Ack::new(pid(9)))],
        "PUBREL on the resumed session"
    );
    h.recv(Packet::PubComp(Ack::with_reason(
        pid(9),
        ReasonCode::PacketIdentifierNotFound,
    )));
    let d = done(&h.events());
    assert!(
        matches!(&d[..], [(tok, Err(PublishError::Rejected { reason_code: ReasonCode::PacketIdentifierNotFound, .. }))] if *tok == t),
        "{d:?}"
    );
    // Releasing an id whose PUBLISH waits for PUBREC is refused.
    h.s.publish_as(h.now, relayed("a", QoS::ExactlyOnce, 3, false))
        .unwrap();
    assert_eq!(h.s.release(h.now, pid(3)), Err(PublishError::NotReceived(3)));
}

#[test]
fn a_relayed_id_held_by_another_packet_waits_and_order_is_kept() {
    let mut h = Harness::v5();
    h.connect();
    h.s.publish_as(h.now, relayed("a", QoS::AtLeastOnce, 5, false))
        .unwrap();
    h.s.publish_as(h.now, relayed("b", QoS::AtLeastOnce, 5, false))
        .unwrap();
    h.s.publish_as(h.now, relayed("c", QoS::AtLeastOnce, 6, false))
        .unwrap();
    let sent = h.sent();
    assert_eq!(
        publishes(&sent).len(),
        1,
        "the second waits for id 5, the third behind it"
    );
    h.recv(Packet::PubAck(Ack::new(pid(5))));
    let sent = h.sent();
    let topics: Vec<&str> = publishes(&sent).iter().map(|p| &*p.topic).collect();
    assert_eq!(topics, vec!["b", "c"]);
    assert_eq!(
        h.s.publish_as(h.now, qos_publish("d", QoS::AtLeastOnce)),
        Err(PublishError::NoPacketId)
    );
}

#[test]
fn a_lost_session_sends_a_relayed_message_again_under_its_id_mqtt_3_2_2_5() {
    let mut h = Harness::v5();
    h.connect();
    h.s.publish_as(h.now, relayed("a", QoS::ExactlyOnce, 40, true))
        .unwrap();
    h.sent();
    h.s.handle_connection_lost(h.now);
    h.connect_with(ConnAck::new(ReasonCode::Success, false));
    let sent = h.sent();
    let p = publishes(&sent);
    // v5 [MQTT-3.2.2-5]: a new message, so DUP 0, under the caller's identifier.
    assert_eq!((p[0].packet_id, p[0].dup), (Some(pid(40)), false));
}

#[test]
fn manual_acks_wait_for_the_application_mqtt_4_3_2_4() {
    let mut c = config(ProtocolVersion::V5);
    c.manual_acks = true;
    let mut h = Harness::new(c);
    h.connect();
    h.recv(Packet::Publish(relayed("q1", QoS::AtLeastOnce, 1, false)));
    h.recv(Packet::Publish(relayed("q2", QoS::ExactlyOnce, 2, false)));
    assert!(h.sent().is_empty(), "nothing acknowledged before the application");
    assert_eq!(h.events().len(), 2);
    // v5 [MQTT-4.3.3-10]: a resent QoS 2 is not delivered twice, and its PUBREC still waits.
    h.recv(Packet::Publish(relayed("q2", QoS::ExactlyOnce, 2, true)));
    assert!(h.sent().is_empty() && h.events().is_empty());
    // v5 [MQTT-4.3.2-4], v5 [MQTT-4.3.3-8]: PUBACK / PUBREC once the application owns it.
    h.s.ack(h.now, pid(1), QoS::AtLeastOnce);
    h.s.ack(h.now, pid(2), QoS::ExactlyOnce);
    assert_eq!(
        h.sent(),
        vec![Packet::PubAck(Ack::new(pid(1))), Packet::PubRec(Ack::new(pid(2)))]
    );
    // Acknowledged: a resend now gets its PUBREC at once.
    h.recv(Packet::Publish(relayed("q2", QoS::ExactlyOnce, 2, true)));
    assert_eq!(h.sent(), vec![Packet::PubRec(Ack::new(pid(2)))]);
    h.recv(Packet::PubRel(Ack::new(pid(2))));
    assert_eq!(h.sent(), vec![Packet::PubComp(Ack::new(pid(2)))]);
}
