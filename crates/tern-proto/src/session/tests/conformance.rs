//! The client's obligations of MQTT 3.1.1 and 5.0, checked on the sans-IO session
//! with the server played by hand. Each test cites what it checks with the version
//! tag (`v3.1.1`, `v5`); docs/conformance.md traces them.

use super::*;

const VERSIONS: [ProtocolVersion; 2] = [ProtocolVersion::V3_1_1, ProtocolVersion::V5];

/// A session that keeps its state across connections (3.1.1 Clean Session 0, 5.0 expiry).
fn persistent(v: ProtocolVersion) -> Harness {
    let mut c = config(v);
    c.connect.clean_start = false;
    if v.is_v5() {
        c.connect.properties.session_expiry_interval = Some(300);
    }
    Harness::new(c)
}

fn incoming(topic: &str, qos: QoS, id: u16) -> Publish {
    let mut p = qos_publish(topic, qos);
    p.packet_id = (qos != QoS::AtMostOnce).then(|| pid(id));
    p
}

fn messages(events: &[Event]) -> usize {
    events.iter().filter(|e| matches!(e, Event::Message(_))).count()
}

#[test]
fn sender_flows_and_resending_after_reconnection() {
    for v in VERSIONS {
        let mut h = persistent(v);
        h.connect();
        h.publish(qos_publish("a", QoS::AtLeastOnce));
        h.publish(qos_publish("b", QoS::ExactlyOnce));
        let sent = h.sent();
        let p = publishes(&sent);
        // v3.1.1 [MQTT-4.3.2-1], v3.1.1 [MQTT-4.3.3-1], v3.1.1 [MQTT-2.3.1-1],
        // v3.1.1 [MQTT-2.3.1-2] / v5 [MQTT-4.3.2-1], v5 [MQTT-4.3.2-2], v5 [MQTT-4.3.3-1],
        // v5 [MQTT-4.3.3-2], v5 [MQTT-2.2.1-3]: first sent with DUP 0 and distinct non-zero
        // identifiers.
        assert_eq!(
            (p[0].qos, p[0].dup, p[1].qos, p[1].dup),
            (QoS::AtLeastOnce, false, QoS::ExactlyOnce, false)
        );
        let (a, b) = (p[0].packet_id.unwrap(), p[1].packet_id.unwrap());
        assert_ne!(a, b);
        // v5 [MQTT-4.3.3-4], v5 [MQTT-2.2.1-5], v3.1.1 [MQTT-2.3.1-6]: PUBREL with the same
        // identifier after the PUBREC.
        h.recv(Packet::PubRec(Ack::new(b)));
        assert_eq!(h.sent(), vec![Packet::PubRel(Ack::new(b))]);
        // v5 [MQTT-4.3.2-3], v5 [MQTT-4.3.3-3], v5 [MQTT-4.3.3-5], v5 [MQTT-4.4.0-1]: both stay
        // unacknowledged, and nothing is resent while the connection lasts (only pings).
        h.advance(Duration::from_secs(25));
        assert!(h.sent().iter().all(|p| *p == Packet::PingReq));
        h.recv(Packet::PingResp);
        h.s.handle_connection_lost(h.now);
        h.events();
        // v3.1.1 [MQTT-3.1.2-4], v3.1.1 [MQTT-4.1.0-1], v3.1.1 [MQTT-4.1.0-2], v5 [MQTT-3.1.2-23],
        // v5 [MQTT-4.1.0-1]:
        // the client kept the session; v3.1.1+v5 [MQTT-3.1.3-2]: under the same identifier.
        let again = h.connect_with(ConnAck::new(ReasonCode::Success, true));
        assert_eq!(&*again.client_id, "client-1");
        // v3.1.1+v5 [MQTT-4.4.0-1], v3.1.1 [MQTT-2.3.1-3], v3.1.1+v5 [MQTT-3.3.1-1],
        // v3.1.1+v5 [MQTT-4.6.0-1]: the PUBLISH again with DUP 1 and its identifier, then the
        // PUBREL (never the PUBLISH once PUBREL was sent: v5 [MQTT-4.3.3-6]), in order.
        let resent = h.sent();
        match resent.as_slice() {
            [Packet::Publish(p), Packet::PubRel(r)] => {
                assert_eq!((p.dup, p.packet_id, &*p.topic), (true, Some(a), "a"));
                assert_eq!(r.packet_id, b);
            }
            other => panic!("{v}: unexpected resend {other:?}"),
        }
        h.recv(Packet::PubAck(Ack::new(a)));
        h.recv(Packet::PubComp(Ack::new(b)));
        assert_eq!(done(&h.events()).len(), 2);
    }
}

#[test]
fn clean_session_1_discards_the_clients_state_v311() {
    let mut h = Harness::new(config(ProtocolVersion::V3_1_1));
    h.connect();
    h.publish(qos_publish("a", QoS::AtLeastOnce));
    assert_eq!(publishes(&h.sent()).len(), 1);
    h.s.handle_connection_lost(h.now);
    h.events();
    // v3.1.1 [MQTT-3.1.2-6]: Clean Session 1 again: nothing of the old session is reused;
    // the message goes out as a new one.
    let again = h.connect_with(ConnAck::new(ReasonCode::Success, false));
    assert!(again.clean_start);
    let sent = h.sent();
    let p = publishes(&sent);
    assert_eq!(p.len(), 1);
    assert!(!p[0].dup);
}

#[test]
fn receiver_flows_answer_as_the_qos_requires() {
    for v in VERSIONS {
        let mut h = Harness::new(config(v));
        h.connect();
        // v3.1.1 [MQTT-3.3.4-1], v3.1.1 [MQTT-4.3.2-2], v3.1.1 [MQTT-2.3.1-6] /
        // v5 [MQTT-3.3.4-1], v5 [MQTT-4.3.2-4], v5 [MQTT-2.2.1-5]: PUBACK with the identifier;
        // v3.1.1+v5 [MQTT-4.5.0-2]: sent at once, whether or not the application reads it.
        h.recv(Packet::Publish(incoming("q1", QoS::AtLeastOnce, 5)));
        assert_eq!(h.sent(), vec![Packet::PubAck(Ack::new(pid(5)))]);
        // v5 [MQTT-4.3.2-5]: after the PUBACK the same identifier is a new message.
        h.recv(Packet::Publish(incoming("q1", QoS::AtLeastOnce, 5)));
        assert_eq!(h.sent(), vec![Packet::PubAck(Ack::new(pid(5)))]);
        assert_eq!(messages(&h.events()), 2);
        // v3.1.1 [MQTT-4.3.3-2] / v5 [MQTT-4.3.3-8], v5 [MQTT-4.3.3-10], v5 [MQTT-4.3.3-11],
        // v5 [MQTT-4.3.3-12]: PUBREC, PUBREC again for a repeat without a second delivery,
        // PUBCOMP for the PUBREL, then the identifier is new.
        h.recv(Packet::Publish(incoming("q2", QoS::ExactlyOnce, 6)));
        let mut dup = incoming("q2", QoS::ExactlyOnce, 6);
        dup.dup = true;
        h.recv(Packet::Publish(dup));
        assert_eq!(
            h.sent(),
            vec![Packet::PubRec(Ack::new(pid(6))), Packet::PubRec(Ack::new(pid(6)))]
        );
        assert_eq!(messages(&h.events()), 1);
        h.recv(Packet::PubRel(Ack::new(pid(6))));
        assert_eq!(h.sent(), vec![Packet::PubComp(Ack::new(pid(6)))]);
        h.recv(Packet::Publish(incoming("q2", QoS::ExactlyOnce, 6)));
        assert_eq!(h.sent(), vec![Packet::PubRec(Ack::new(pid(6)))]);
        assert_eq!(messages(&h.events()), 1);
        // QoS 0 needs no answer (v3.1.1+v5 [MQTT-3.3.4-1]).
        h.recv(Packet::Publish(incoming("q0", QoS::AtMostOnce, 0)));
        assert!(h.sent().is_empty());
    }
}

#[test]
fn acknowledgements_keep_the_order_of_arrival() {
    for v in VERSIONS {
        let mut h = Harness::new(config(v));
        h.connect();
        // v3.1.1+v5 [MQTT-4.6.0-2]: PUBACKs in the order the PUBLISH packets arrived.
        for id in [9, 3, 7] {
            h.recv(Packet::Publish(incoming("o", QoS::AtLeastOnce, id)));
        }
        let acks: Vec<Packet> = [9, 3, 7]
            .iter()
            .map(|&i| Packet::PubAck(Ack::new(pid(i))))
            .collect();
        assert_eq!(h.sent(), acks);
        // v3.1.1+v5 [MQTT-4.6.0-3]: PUBRECs in the order the PUBLISH packets arrived.
        for id in [20, 11, 15] {
            h.recv(Packet::Publish(incoming("o", QoS::ExactlyOnce, id)));
        }
        let recs: Vec<Packet> = [20, 11, 15]
            .iter()
            .map(|&i| Packet::PubRec(Ack::new(pid(i))))
            .collect();
        assert_eq!(h.sent(), recs);
        // v3.1.1+v5 [MQTT-4.6.0-4]: PUBRELs in the order the PUBRECs arrived.
        for t in ["x", "y", "z"] {
            h.publish(qos_publish(t, QoS::ExactlyOnce));
        }
        let sent = h.sent();
        let ids: Vec<PacketId> = publishes(&sent).iter().map(|p| p.packet_id.unwrap()).collect();
        for &i in &[ids[2], ids[0], ids[1]] {
            h.recv(Packet::PubRec(Ack::new(i)));
        }
        let rels: Vec<Packet> = [ids[2], ids[0], ids[1]]
            .iter()
            .map(|&i| Packet::PubRel(Ack::new(i)))
            .collect();
        assert_eq!(h.sent(), rels);
    }
}

#[test]
fn keep_alive_pingreq_when_idle_v311() {
    let mut h = Harness::new(config(ProtocolVersion::V3_1_1));
    h.connect();
    // v3.1.1 [MQTT-3.1.2-23]: never more than Keep Alive (10 s) between two packets the client
    // sends: idle, it sends PINGREQ.
    h.advance(Duration::from_secs(5));
    h.publish(qos_publish("t", QoS::AtMostOnce));
    h.sent();
    let mut last_sent = 5;
    for t in 6..=40 {
        h.advance(Duration::from_secs(1));
        let sent = h.sent();
        if !sent.is_empty() {
            assert_eq!(sent, vec![Packet::PingReq]);
            h.recv(Packet::PingResp);
            assert!(t - last_sent <= 10, "{t} - {last_sent}");
            last_sent = t;
        }
    }
    assert!(last_sent >= 30);
}

#[test]
fn requests_are_checked_before_anything_is_sent() {
    for v in VERSIONS {
        let mut h = Harness::new(config(v));
        h.connect();
        // v3.1.1 [MQTT-3.8.3-3], v3.1.1 [MQTT-3.10.3-2] / v5 [MQTT-3.8.3-2],
        // v5 [MQTT-3.10.3-2]: at least one filter.
        assert!(h.s.subscribe(h.now, vec![], Default::default()).is_err());
        assert!(h.s.unsubscribe(h.now, vec![], Default::default()).is_err());
        // v3.1.1 [MQTT-4.7.1-2], v3.1.1 [MQTT-4.7.1-3] / v5 [MQTT-4.7.1-1], v5 [MQTT-4.7.1-2]:
        // misplaced wildcards are refused; v5 [MQTT-4.8.2-1], v5 [MQTT-4.8.2-2]: so are bad
        // shared filters.
        for bad in ["a/#/b", "a#", "a+/b", "$share//t", "$share/a+b/t", "$share/name"] {
            let sub = h.s.subscribe(
                h.now,
                vec![(bad.into(), SubscriptionOptions::qos(QoS::AtMostOnce))],
                Default::default(),
            );
            assert!(sub.is_err(), "{bad}");
        }
        // v3.1.1 [MQTT-4.7.1-1] / v5 [MQTT-4.7.0-1], v3.1.1+v5 [MQTT-3.3.2-2]: no wildcard in a
        // topic name; v3.1.1+v5 [MQTT-4.7.3-1]: not empty; v3.1.1+v5 [MQTT-4.7.3-2]: no U+0000;
        // v3.1.1+v5 [MQTT-4.7.3-3]: at most 65,535 bytes.
        let long = "x".repeat(65_536);
        for bad in ["a/+", "#", "", "a\u{0}b", long.as_str()] {
            assert!(
                h.s.publish(h.now, qos_publish(bad, QoS::AtMostOnce)).is_err(),
                "{}",
                bad.len()
            );
        }
        assert!(h.sent().is_empty());
    }
}

#[test]
fn no_local_on_a_shared_subscription_is_refused_v5() {
    let mut h = Harness::v5();
    h.connect();
    let opts = SubscriptionOptions {
        no_local: true,
        ..SubscriptionOptions::qos(QoS::AtMostOnce)
    };
    // v5 [MQTT-3.8.3-4]: a Protocol Error the client does not commit.
    let r =
        h.s.subscribe(h.now, vec![("$share/g/t".into(), opts)], Default::default());
    assert!(r.is_err(), "{r:?}");
    assert!(h.sent().is_empty());
}

#[test]
fn publish_properties_are_checked_v5() {
    let mut h = Harness::v5();
    h.connect();
    // v5 [MQTT-3.3.2-14]: a Response Topic is a topic name, without wildcards.
    let mut p = qos_publish("t", QoS::AtMostOnce);
    p.properties.response_topic = Some("r/#".into());
    assert!(h.s.publish(h.now, p).is_err());
    // v5 [MQTT-3.3.2-13], v5 [MQTT-3.3.2-19], v5 [MQTT-1.5.7-1]: Response Topic, Content Type
    // and User Properties are `ByteString`s: UTF-8 by construction, and encoded as such.
    let mut p = qos_publish("t", QoS::AtMostOnce);
    p.properties.response_topic = Some("r/1".into());
    p.properties.content_type = Some("text/plain".into());
    p.properties.user_properties = vec![("k".into(), "v".into())];
    h.publish(p.clone());
    assert_eq!(publishes(&h.sent())[0].properties, p.properties);
}

#[test]
fn outgoing_topic_aliases_stay_within_the_servers_maximum_v5() {
    for server_max in [None, Some(0), Some(2)] {
        let mut c = config(ProtocolVersion::V5);
        c.topic_aliases = true;
        let mut h = Harness::new(c);
        let mut ack = ConnAck::new(ReasonCode::Success, false);
        ack.properties.topic_alias_maximum = server_max;
        h.connect_with(ack);
        h.events();
        for t in ["a", "b", "c", "a", "b", "c"] {
            h.publish(qos_publish(t, QoS::AtMostOnce));
        }
        let sent = h.sent();
        let aliases: Vec<Option<u16>> = publishes(&sent)
            .iter()
            .map(|p| p.properties.topic_alias)
            .collect();
        // v5 [MQTT-3.2.2-18]: none without a Topic Alias Maximum (or with 0);
        // v5 [MQTT-3.2.2-17], v5 [MQTT-3.3.2-9]: never above it; v5 [MQTT-3.3.2-8]: never 0.
        let max = server_max.unwrap_or(0);
        assert!(
            aliases.iter().flatten().all(|&a| a >= 1 && a <= max),
            "{server_max:?}: {aliases:?}"
        );
        if max == 0 {
            assert!(aliases.iter().all(Option::is_none));
        } else {
            assert!(aliases.iter().any(Option::is_some));
        }
    }
}

#[test]
fn the_client_waits_for_quota_but_keeps_answering_v5() {
    let mut h = Harness::v5();
    let mut ack = ConnAck::new(ReasonCode::Success, false);
    ack.properties.receive_maximum = Some(1);
    h.connect_with(ack);
    h.events();
    h.publish(qos_publish("a", QoS::AtLeastOnce));
    h.publish(qos_publish("b", QoS::AtLeastOnce));
    // v5 [MQTT-4.9.0-1], v5 [MQTT-4.9.0-2]: a quota of 1.
    assert_eq!(publishes(&h.sent()).len(), 1);
    // v5 [MQTT-4.9.0-3]: at quota zero the client still answers the server's packets.
    h.recv(Packet::Publish(incoming("in", QoS::AtLeastOnce, 40)));
    assert_eq!(h.sent(), vec![Packet::PubAck(Ack::new(pid(40)))]);
}

#[test]
fn an_auth_without_a_method_is_refused_and_never_answered_v5() {
    let mut h = Harness::v5();
    h.connect();
    h.recv(Packet::Auth(crate::Auth {
        reason_code: Some(ReasonCode::ContinueAuthentication),
        properties: Default::default(),
    }));
    // v5 [MQTT-4.12.0-7]: the client, which set no Authentication Method, sends no AUTH: it
    // closes with 0x82 (the server broke v5 [MQTT-4.12.0-6]).
    let sent = h.sent();
    assert!(!sent.iter().any(|p| matches!(p, Packet::Auth(_))));
    assert_eq!(disconnect_sent(&sent), Some(ReasonCode::ProtocolError));
}

#[test]
fn the_clients_acknowledgements_carry_nothing_extra_v5() {
    let mut h = Harness::v5();
    let mut ack = ConnAck::new(ReasonCode::Success, false);
    ack.properties.maximum_packet_size = Some(4);
    h.connect_with(ack);
    h.events();
    h.recv(Packet::Publish(incoming("a", QoS::AtLeastOnce, 1)));
    h.recv(Packet::Publish(incoming("b", QoS::ExactlyOnce, 2)));
    h.recv(Packet::PubRel(Ack::new(pid(2))));
    // v5 [MQTT-3.4.2-1], v5 [MQTT-3.5.2-1], v5 [MQTT-3.7.2-1]: Success codes;
    // v5 [MQTT-3.4.2-2], v5 [MQTT-3.4.2-3], v5 [MQTT-3.5.2-2], v5 [MQTT-3.5.2-3],
    // v5 [MQTT-3.7.2-2], v5 [MQTT-3.7.2-3]: no Reason String or User Property, so each fits
    // the server's Maximum Packet Size of 4 bytes.
    let sent = h.sent();
    assert_eq!(
        sent,
        vec![
            Packet::PubAck(Ack::new(pid(1))),
            Packet::PubRec(Ack::new(pid(2))),
            Packet::PubComp(Ack::new(pid(2)))
        ]
    );
    for p in &sent {
        assert_eq!(p.encoded_len(ProtocolVersion::V5).unwrap(), 4);
    }
    // v5 [MQTT-3.6.2-1], v5 [MQTT-3.6.2-2], v5 [MQTT-3.6.2-3]: the same for PUBREL.
    let mut h = Harness::v5();
    h.connect();
    h.publish(qos_publish("c", QoS::ExactlyOnce));
    let id = publishes(&h.sent())[0].packet_id.unwrap();
    h.recv(Packet::PubRec(Ack::new(id)));
    assert_eq!(h.sent(), vec![Packet::PubRel(Ack::new(id))]);
}

#[test]
fn a_disconnect_with_a_reason_string_fits_the_server_v5() {
    let mut h = Harness::v5();
    let mut ack = ConnAck::new(ReasonCode::Success, false);
    ack.properties.maximum_packet_size = Some(10);
    h.connect_with(ack);
    h.events();
    let mut d = Disconnect::with_reason(ReasonCode::DisconnectWithWill);
    d.properties.reason_string = Some("a reason longer than the server accepts".into());
    d.properties.user_properties = vec![("k".into(), "v".into())];
    h.s.disconnect(h.now, d);
    // v5 [MQTT-3.14.2-3], v5 [MQTT-3.14.2-4]: the Reason String and User Property go, the
    // reason code stays (v5 [MQTT-3.14.2-1]).
    let sent = h.sent();
    assert_eq!(
        sent,
        vec![Packet::Disconnect(Disconnect::with_reason(
            ReasonCode::DisconnectWithWill
        ))]
    );
    assert!(sent[0].encoded_len(ProtocolVersion::V5).unwrap() <= 10);
}

#[test]
fn message_expiry_never_breaks_a_qos2_flow_v5() {
    let mut h = persistent(ProtocolVersion::V5);
    h.connect();
    // Sending side: v5 [MQTT-4.3.3-7]: once the PUBLISH went out, expiry is not applied: after
    // the connection is lost and the expiry has passed it is still resent.
    let mut p = qos_publish("exp", QoS::ExactlyOnce);
    p.properties.message_expiry_interval = Some(1);
    h.publish(p);
    let id = publishes(&h.sent())[0].packet_id;
    h.s.handle_connection_lost(h.now);
    h.events();
    h.advance(Duration::from_secs(5));
    h.connect_with(ConnAck::new(ReasonCode::Success, true));
    let resent = h.sent();
    assert_eq!(
        publishes(&resent).first().map(|p| (p.packet_id, p.dup)),
        Some((id, true))
    );
    // Receiving side: v5 [MQTT-4.3.3-13]: the handshake goes on after the message expired.
    let mut inc = incoming("in", QoS::ExactlyOnce, 77);
    inc.properties.message_expiry_interval = Some(1);
    h.recv(Packet::Publish(inc));
    assert_eq!(h.sent(), vec![Packet::PubRec(Ack::new(pid(77)))]);
    h.advance(Duration::from_secs(3));
    h.recv(Packet::PingResp);
    h.sent();
    h.recv(Packet::PubRel(Ack::new(pid(77))));
    assert_eq!(h.sent(), vec![Packet::PubComp(Ack::new(pid(77)))]);
}

/// A toy enhanced authentication method: "first", then "answer" to "challenge".
#[derive(Debug)]
struct Toy;

impl AuthMethod for Toy {
    fn name(&self) -> &str {
        "TOY"
    }
    fn start(&mut self) -> Option<bytes::Bytes> {
        Some(bytes::Bytes::from_static(b"first"))
    }
    fn step(&mut self, data: Option<&[u8]>) -> Result<bytes::Bytes, String> {
        match data {
            Some(b"challenge") => Ok(bytes::Bytes::from_static(b"answer")),
            _ => Err("unexpected challenge".into()),
        }
    }
    fn finish(&mut self, _data: Option<&[u8]>) -> Result<(), String> {
        Ok(())
    }
}

fn toy_auth(rc: ReasonCode, method: &str, data: &'static [u8]) -> Packet {
    let mut a = crate::Auth {
        reason_code: Some(rc),
        properties: Default::default(),
    };
    a.properties.authentication_method = Some(method.into());
    a.properties.authentication_data = Some(bytes::Bytes::from_static(data));
    Packet::Auth(a)
}

#[test]
fn enhanced_authentication_as_a_client_v5() {
    let mut h = Harness::v5();
    h.s.set_auth_method(Box::new(Toy));
    h.s.start_connect(h.now);
    let sent = h.sent();
    let Some(Packet::Connect(c)) = sent.first() else {
        panic!("{sent:?}")
    };
    assert_eq!(c.properties.authentication_method.as_deref(), Some("TOY"));
    // v5 [MQTT-3.1.2-30]: until the CONNACK only AUTH (or DISCONNECT) leaves the client, even
    // with a message and a subscription waiting.
    h.publish(qos_publish("early", QoS::AtLeastOnce));
    h.s.subscribe(
        h.now,
        vec![("s".into(), SubscriptionOptions::qos(QoS::AtMostOnce))],
        Default::default(),
    )
    .unwrap();
    assert!(h.sent().is_empty());
    h.recv(toy_auth(ReasonCode::ContinueAuthentication, "TOY", b"challenge"));
    // v5 [MQTT-4.12.0-3]: the answer is AUTH 0x18 (v5 [MQTT-3.15.2-1]); v5 [MQTT-4.12.0-5]: with
    // the method of the CONNECT; v5 [MQTT-3.15.2-2], v5 [MQTT-3.15.2-3]: no Reason String or
    // User Property.
    let sent = h.sent();
    assert_eq!(
        sent,
        vec![toy_auth(ReasonCode::ContinueAuthentication, "TOY", b"answer")]
    );
    let mut ack = ConnAck::new(ReasonCode::Success, false);
    ack.properties.authentication_method = Some("TOY".into());
    h.recv(Packet::ConnAck(ack));
    let sent = h.sent();
    assert_eq!(sent.len(), 2, "{sent:?}");
    assert!(!sent.iter().any(|p| matches!(p, Packet::Auth(_))));

    // An AUTH with another method during the exchange is refused (v5 [MQTT-4.12.0-5]).
    let mut h = Harness::v5();
    h.s.set_auth_method(Box::new(Toy));
    h.s.start_connect(h.now);
    h.sent();
    h.recv(toy_auth(
        ReasonCode::ContinueAuthentication,
        "OTHER",
        b"challenge",
    ));
    assert_eq!(disconnect_sent(&h.sent()), Some(ReasonCode::ProtocolError));
}
