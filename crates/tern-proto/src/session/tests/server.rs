//! ServerSession tests: a host over plain collections, a virtual clock, packets played by
//! hand (the quinn-proto model).

use std::time::Duration;

use super::*;
use crate::codec::PublishProperties;
use crate::codec::SubscribeProperties;
use crate::session::server::Routed;
use crate::SubscriptionOptions;

/// A delivery: its QoS and topic.
#[derive(Debug, Clone, PartialEq)]
struct Msg(QoS, &'static str);

impl Deliverable for Msg {
    fn qos(&self) -> QoS {
        self.0
    }
}

impl Delivery for Msg {
    fn to_publish(&self, _: ProtocolVersion, packet_id: Option<PacketId>, dup: bool, _: Instant) -> Publish {
        let mut p = Publish::new(self.1, "x");
        p.qos = self.0;
        p.packet_id = packet_id;
        p.dup = dup;
        p
    }
}

#[derive(Debug)]
enum Closed {
    Session(SessionClose),
    TakenOver,
}

impl From<SessionClose> for Closed {
    fn from(c: SessionClose) -> Closed {
        Closed::Session(c)
    }
}

#[derive(Default)]
struct Log {
    changes: Vec<String>,
    persistent: bool,
}

impl Persist<Msg> for Log {
    fn qos2_received(&mut self, id: PacketId) -> bool {
        self.changes.push(format!("qos2+{id}"));
        self.persistent
    }
    fn qos2_released(&mut self, id: PacketId) -> bool {
        self.changes.push(format!("qos2-{id}"));
        self.persistent
    }
    fn delivery_stage(&mut self, f: &InFlight<Msg>) -> bool {
        self.changes.push(format!("stage {} {:?}", f.id, f.stage));
        self.persistent
    }
    fn delivery_done(&mut self, f: &InFlight<Msg>) {
        self.changes.push(format!("done {}", f.message.1));
    }
    fn persistent(&self) -> bool {
        self.persistent
    }
}

struct Host {
    sent: Vec<Packet>,
    routed: Vec<(String, QoS)>,
    subscribers: usize,
    /// What `route` answers instead of `Reached(subscribers)`.
    routed_as: Option<Routed>,
    state: ServerState<Msg>,
    log: Log,
    denied: Vec<&'static str>,
    held: bool,
    /// Acknowledgements waited for durability this many times.
    waits: usize,
    groups: Vec<&'static str>,
    router: Vec<String>,
    retained_sent: Vec<String>,
    expiry: Option<u32>,
}

impl Host {
    fn new() -> Host {
        Host {
            sent: Vec::new(),
            routed: Vec::new(),
            subscribers: 1,
            routed_as: None,
            state: ServerState::new(4),
            log: Log::default(),
            denied: Vec::new(),
            held: true,
            waits: 0,
            groups: Vec::new(),
            router: Vec::new(),
            retained_sent: Vec::new(),
            expiry: None,
        }
    }
    fn take(&mut self) -> Vec<Packet> {
        std::mem::take(&mut self.sent)
    }
}

impl ServerHost for Host {
    type Message = Msg;
    type Close = Closed;
    fn transmit(&mut self, packet: &Packet) {
        self.sent.push(packet.clone());
    }
    fn allows(&mut self, _: Permission, topic: &str) -> bool {
        !self.denied.contains(&topic)
    }
    fn with_state<R>(
        &mut self,
        f: impl FnOnce(&mut ServerState<Msg>, &mut dyn Persist<Msg>) -> R,
    ) -> Result<R, Closed> {
        if !self.held {
            return Err(Closed::TakenOver);
        }
        Ok(f(&mut self.state, &mut self.log))
    }
    fn route(&mut self, publish: Publish, topic: ByteString, _: Instant) -> Routed {
        self.routed.push((topic.to_string(), publish.qos));
        self.routed_as.unwrap_or(Routed::Reached(self.subscribers))
    }
    fn begin_group(&mut self) {
        self.groups.push("begin");
    }
    fn end_group(&mut self) {
        self.groups.push("end");
    }
    fn storage_failed(&self) -> bool {
        false
    }
    fn ack_when_durable(&mut self) {
        self.waits += 1;
    }
    fn subscribe(
        &mut self,
        filter: &str,
        _: Option<&str>,
        _: SubscriptionOptions,
        _: Option<u32>,
    ) -> Result<bool, Refused> {
        let existed = self.router.iter().any(|f| f == filter);
        if !existed {
            self.router.push(filter.to_string());
        }
        Ok(existed)
    }
    fn unsubscribe(&mut self, filter: &str) {
        self.router.retain(|f| f != filter);
    }
    fn send_retained(&mut self, filter: &str, _: QoS, _: Option<u32>, _: Instant) {
        self.retained_sent.push(filter.to_string());
    }
    fn subscriptions_changed(&mut self) {}
    fn set_session_expiry(&mut self, secs: u32) {
        self.expiry = Some(secs);
    }
    fn reauthenticate(&mut self, _: &str, begin: bool, _: Option<&[u8]>) -> AuthAnswer {
        match begin {
            true => AuthAnswer::Continue(Bytes::from_static(b"challenge")),
            false => AuthAnswer::Success(None),
        }
    }
    fn note(&mut self, _: Note<'_>) {}
}

fn pid(n: u16) -> PacketId {
    PacketId::new(n).unwrap()
}

fn session(v: ProtocolVersion) -> (ServerSession, Instant) {
    let rules = ServerRules {
        receive_maximum: 4,
        topic_alias_maximum: 2,
        max_subscriptions: 3,
        max_wildcard_subscriptions: 1,
        ..ServerRules::default()
    };
    let client = ClientLimits {
        receive_maximum: 2,
        max_packet_size: 1000,
        topic_alias_maximum: 0,
        problem_information: true,
        keep_alive: 10,
        session_expiry: 0,
        bridge: false,
    };
    let t0 = Instant::now();
    (
        ServerSession::new(v, Arc::new(rules), client, Some("M".into()), t0),
        t0,
    )
}

fn publish(topic: &str, qos: QoS, id: Option<u16>, dup: bool) -> Packet {
    let mut p = Publish::new(topic.to_string(), "payload");
    p.qos = qos;
    p.packet_id = id.map(pid);
    p.dup = dup;
    Packet::Publish(p)
}

fn reason(p: &Packet) -> ReasonCode {
    match p {
        Packet::PubAck(a) | Packet::PubRec(a) | Packet::PubRel(a) | Packet::PubComp(a) => a.reason_code,
        other => panic!("not an acknowledgement: {other:?}"),
    }
}

fn close_code(r: Result<(), Closed>) -> ReasonCode {
    match r {
        Err(Closed::Session(SessionClose::Violation(v))) => v.reason_code(),
        other => panic!("expected a violation, got {other:?}"),
    }
}

#[test]
fn qos1_is_routed_then_acknowledged_once_durable_mqtt_4_3_2_2() {
    // v5 [MQTT-4.3.2-2]: PUBACK for a QoS 1 PUBLISH; v5 0x10 when nobody matched.
    let (mut s, t0) = session(ProtocolVersion::V5);
    let mut h = Host::new();
    s.handle_packet(t0, publish("a", QoS::AtLeastOnce, Some(1), false), &mut h)
        .unwrap();
    assert_eq!(h.routed, vec![("a".to_string(), QoS::AtLeastOnce)]);
    assert_eq!(h.waits, 1, "a QoS 1 acknowledgement waits for the store");
    assert!(matches!(&h.take()[..], [Packet::PubAck(a)] if a.reason_code == ReasonCode::Success));
    h.subscribers = 0;
    s.handle_packet(t0, publish("a", QoS::AtLeastOnce, Some(2), false), &mut h)
        .unwrap();
    assert_eq!(reason(&h.take()[0]), ReasonCode::NoMatchingSubscribers);
}

/// A message that reached no subscription here but went on to other servers (a cluster):
/// a plain success, not 0x10 No matching subscribers, which would say there is none anywhere.
#[test]
fn a_message_that_went_to_other_servers_is_not_answered_0x10() {
    let (mut s, t0) = session(ProtocolVersion::V5);
    let mut h = Host::new();
    h.routed_as = Some(Routed::Elsewhere);
    s.handle_packet(t0, publish("a", QoS::AtLeastOnce, Some(1), false), &mut h)
        .unwrap();
    assert_eq!(reason(&h.take()[0]), ReasonCode::Success);
    s.handle_packet(t0, publish("a", QoS::ExactlyOnce, Some(2), false), &mut h)
        .unwrap();
    assert_eq!(reason(&h.take()[0]), ReasonCode::Success);
}

/// A message that every matching session dropped for a limit of what it keeps while its
/// client is away: 5.0 PUBACK/PUBREC 0x97 Quota exceeded (3.1.1 cannot say so); after the error
/// PUBREC the identifier starts a new message (v5 [MQTT-4.3.3-9]).
#[test]
fn a_message_dropped_for_a_quota_gets_0x97_in_v5() {
    let (mut s, t0) = session(ProtocolVersion::V5);
    let mut h = Host::new();
    h.routed_as = Some(Routed::OverQuota);
    s.handle_packet(t0, publish("a", QoS::AtLeastOnce, Some(1), false), &mut h)
        .unwrap();
    assert_eq!(reason(&h.take()[0]), ReasonCode::QuotaExceeded);
    s.handle_packet(t0, publish("a", QoS::ExactlyOnce, Some(2), false), &mut h)
        .unwrap();
    assert_eq!(reason(&h.take()[0]), ReasonCode::QuotaExceeded);
    assert!(h.log.changes.iter().any(|c| c == "qos2-2"), "{:?}", h.log.changes);
    h.routed_as = None;
    s.handle_packet(t0, publish("a", QoS::ExactlyOnce, Some(2), false), &mut h)
        .unwrap();
    assert_eq!(reason(&h.take()[0]), ReasonCode::Success);
    assert_eq!(
        h.routed.len(),
        3,
        "v5 [MQTT-4.3.3-9]: routed again as a new message"
    );

    let (mut s, t0) = session(ProtocolVersion::V3_1_1);
    let mut h = Host::new();
    h.routed_as = Some(Routed::OverQuota);
    s.handle_packet(t0, publish("a", QoS::AtLeastOnce, Some(1), false), &mut h)
        .unwrap();
    assert!(matches!(&h.take()[..], [Packet::PubAck(a)] if a.reason_code == ReasonCode::Success));
}

#[test]
fn qos2_is_delivered_once_until_pubrel_mqtt_4_3_3_10() {
    // v5 [MQTT-4.3.3-10]: no second delivery before PUBREL; v5 [MQTT-4.3.3-11] PUBCOMP for PUBREL.
    let (mut s, t0) = session(ProtocolVersion::V5);
    let mut h = Host::new();
    s.handle_packet(t0, publish("a", QoS::ExactlyOnce, Some(7), false), &mut h)
        .unwrap();
    s.handle_packet(t0, publish("a", QoS::ExactlyOnce, Some(7), true), &mut h)
        .unwrap();
    assert_eq!(h.routed.len(), 1);
    assert_eq!(h.log.changes, vec!["qos2+7"]);
    assert_eq!(h.groups, vec!["begin", "end", "begin", "end"]);
    let sent = h.take();
    assert_eq!(
        (reason(&sent[0]), reason(&sent[1])),
        (ReasonCode::Success, ReasonCode::Success)
    );
    // DUP=0 with an identifier awaiting PUBREL: the sender reused it (v5 [MQTT-2.2.1-3]).
    s.handle_packet(t0, publish("a", QoS::ExactlyOnce, Some(7), false), &mut h)
        .unwrap();
    assert_eq!(reason(&h.take()[0]), ReasonCode::PacketIdentifierInUse);
    assert_eq!(h.routed.len(), 1);
    s.handle_packet(t0, Packet::PubRel(Ack::new(pid(7))), &mut h)
        .unwrap();
    assert!(matches!(&h.take()[..], [Packet::PubComp(a)] if a.reason_code == ReasonCode::Success));
    // v5 [MQTT-4.3.3-12]: after PUBREL the identifier starts a new message.
    s.handle_packet(t0, publish("a", QoS::ExactlyOnce, Some(7), false), &mut h)
        .unwrap();
    assert_eq!(h.routed.len(), 2);
    // An unknown PUBREL: PUBCOMP 0x92 (5.0).
    s.handle_packet(t0, Packet::PubRel(Ack::new(pid(9))), &mut h)
        .unwrap();
    assert_eq!(
        reason(&h.take().pop().unwrap()),
        ReasonCode::PacketIdentifierNotFound
    );
}

#[test]
fn qos2_beyond_our_receive_maximum_is_0x93_mqtt_3_3_4_9() {
    // v5 [MQTT-3.3.4-9]: the client sends no more unreleased QoS 2 than our Receive Maximum.
    let (mut s, t0) = session(ProtocolVersion::V5);
    let mut h = Host::new();
    for id in 1..=4 {
        s.handle_packet(t0, publish("a", QoS::ExactlyOnce, Some(id), false), &mut h)
            .unwrap();
    }
    let r = s.handle_packet(t0, publish("a", QoS::ExactlyOnce, Some(5), false), &mut h);
    assert_eq!(close_code(r), ReasonCode::ReceiveMaximumExceeded);
}

#[test]
fn denied_publish_is_not_routed_mqtt_3_3_5_2() {
    // v3.1.1 [MQTT-3.3.5-2]: not routed; 5.0 says 0x87, 3.1.1 acknowledges as usual.
    for (v, code) in [
        (ProtocolVersion::V5, ReasonCode::NotAuthorized),
        (ProtocolVersion::V3_1_1, ReasonCode::Success),
    ] {
        let (mut s, t0) = session(v);
        let mut h = Host::new();
        h.denied.push("secret");
        s.handle_packet(t0, publish("secret", QoS::AtLeastOnce, Some(1), false), &mut h)
            .unwrap();
        assert!(h.routed.is_empty());
        assert_eq!(reason(&h.take()[0]), code);
    }
}

#[test]
fn publish_rules_close_with_their_reason_codes() {
    let (mut s, t0) = session(ProtocolVersion::V5);
    let mut h = Host::new();
    // v5 [MQTT-3.3.2-8] an unknown alias; v5 [MQTT-3.3.2-9] above our Topic Alias Maximum.
    let mut p = Publish::new("", "x");
    p.properties = PublishProperties {
        topic_alias: Some(1),
        ..Default::default()
    };
    assert_eq!(
        close_code(s.handle_packet(t0, Packet::Publish(p.clone()), &mut h)),
        ReasonCode::ProtocolError
    );
    p.properties.topic_alias = Some(3);
    p.topic = "t".into();
    assert_eq!(
        close_code(s.handle_packet(t0, Packet::Publish(p), &mut h)),
        ReasonCode::TopicAliasInvalid
    );
    // v5 [MQTT-3.3.4-6]: no Subscription Identifier in a client's PUBLISH.
    let mut p = Publish::new("t", "x");
    p.properties.subscription_identifiers = vec![1];
    assert_eq!(
        close_code(s.handle_packet(t0, Packet::Publish(p), &mut h)),
        ReasonCode::ProtocolError
    );
    // A second CONNECT (v5 [MQTT-3.1.0-2]).
    let c = crate::Connect::new(ProtocolVersion::V5, "x");
    assert_eq!(
        close_code(s.handle_packet(t0, Packet::Connect(Box::new(c)), &mut h)),
        ReasonCode::ProtocolError
    );
}

#[test]
fn an_alias_set_by_the_client_is_resolved_for_routing_mqtt_3_3_2_12() {
    // v5 [MQTT-3.3.2-12]: the receiver resolves the alias to the topic it was set with.
    let (mut s, t0) = session(ProtocolVersion::V5);
    let mut h = Host::new();
    let mut p = Publish::new("sensors/1", "x");
    p.properties.topic_alias = Some(2);
    s.handle_packet(t0, Packet::Publish(p), &mut h).unwrap();
    let mut p = Publish::new("", "y");
    p.properties.topic_alias = Some(2);
    s.handle_packet(t0, Packet::Publish(p), &mut h).unwrap();
    let topics: Vec<&str> = h.routed.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(topics, ["sensors/1", "sensors/1"]);
}

#[test]
fn deliveries_complete_on_their_acknowledgements_mqtt_4_3_3_4() {
    let (mut s, t0) = session(ProtocolVersion::V5);
    let mut h = Host::new();
    let (a, _) = h.state.start(Msg(QoS::AtLeastOnce, "one"), &mut h.log).unwrap();
    let (b, _) = h.state.start(Msg(QoS::ExactlyOnce, "two"), &mut h.log).unwrap();
    assert_ne!(a, b);
    assert_eq!(s.window(), 2, "the client's Receive Maximum bounds the window");
    // PUBACKs are applied in batches: before the next other packet, or on flush.
    s.handle_packet(t0, Packet::PubAck(Ack::new(a)), &mut h).unwrap();
    assert_eq!(h.state.inflight_len(), 2);
    s.flush_acks(&mut h).unwrap();
    assert_eq!(h.state.inflight_len(), 1);
    // A PUBACK for the QoS 2 delivery is a protocol error.
    s.handle_packet(t0, Packet::PubAck(Ack::new(b)), &mut h).unwrap();
    assert_eq!(close_code(s.flush_acks(&mut h)), ReasonCode::ProtocolError);
    // v5 [MQTT-4.3.3-4] PUBREC → PUBREL; PUBCOMP ends it.
    s.handle_packet(t0, Packet::PubRec(Ack::new(b)), &mut h).unwrap();
    assert!(matches!(&h.take()[..], [Packet::PubRel(r)] if r.packet_id == b));
    assert_eq!(h.state.inflight().next().unwrap().stage, Stage::Released);
    s.handle_packet(t0, Packet::PubComp(Ack::new(b)), &mut h).unwrap();
    assert_eq!(h.state.inflight_len(), 0);
    assert_eq!(
        h.log.changes,
        [
            "stage 1 Published",
            "stage 2 Published",
            "done one",
            "stage 2 Released",
            "done two"
        ]
    );
}

#[test]
fn an_error_pubrec_ends_the_delivery_mqtt_4_4_0_2() {
    // v5 [MQTT-4.4.0-2]: a PUBREC with a reason code of 0x80 or more completes the flow.
    let (mut s, t0) = session(ProtocolVersion::V5);
    let mut h = Host::new();
    let (id, _) = h.state.start(Msg(QoS::ExactlyOnce, "x"), &mut h.log).unwrap();
    s.handle_packet(
        t0,
        Packet::PubRec(Ack::with_reason(id, ReasonCode::QuotaExceeded)),
        &mut h,
    )
    .unwrap();
    assert!(h.take().is_empty());
    assert_eq!(h.state.inflight_len(), 0);
}

#[test]
fn resume_resends_in_order_with_dup_mqtt_4_4_0_1() {
    // v5 [MQTT-4.4.0-1]: unacknowledged PUBLISH (DUP=1) and PUBREL resent in order.
    let (mut s, t0) = session(ProtocolVersion::V5);
    let mut h = Host::new();
    h.log.persistent = true;
    let (a, wait_a) = h.state.start(Msg(QoS::ExactlyOnce, "a"), &mut h.log).unwrap();
    let (b, wait_b) = h.state.start(Msg(QoS::AtLeastOnce, "b"), &mut h.log).unwrap();
    assert!(
        wait_a && !wait_b,
        "a QoS 2 delivery waits for its identifier to be durable"
    );
    s.handle_packet(t0, Packet::PubRec(Ack::new(a)), &mut h).unwrap();
    h.take();
    s.resume(t0, &mut h).unwrap();
    let sent = h.take();
    assert!(matches!(&sent[0], Packet::PubRel(r) if r.packet_id == a));
    assert!(matches!(&sent[1], Packet::Publish(p) if p.packet_id == Some(b) && p.dup));
    // A taken-over session resends nothing here.
    h.held = false;
    assert!(matches!(s.resume(t0, &mut h), Err(Closed::TakenOver)));
}

#[test]
fn keep_alive_closes_after_one_and_a_half_intervals_mqtt_3_1_2_24() {
    // v3.1.1 [MQTT-3.1.2-24] / v5 [MQTT-3.1.2-22]: 1.5 × keep-alive without a packet.
    let (mut s, t0) = session(ProtocolVersion::V3_1_1);
    assert_eq!(s.poll_timeout(), Some(t0 + Duration::from_secs(15)));
    s.handle_rx(t0 + Duration::from_secs(10));
    assert!(s.handle_timeout(t0 + Duration::from_secs(15)).is_none());
    assert!(matches!(
        s.handle_timeout(t0 + Duration::from_secs(25)),
        Some(SessionClose::KeepAliveTimeout)
    ));
}

#[test]
fn disconnect_cannot_raise_a_zero_expiry() {
    // v5 section 3.14.2.2.2: a non-zero Session Expiry Interval after CONNECT said 0.
    let (mut s, t0) = session(ProtocolVersion::V5);
    let mut h = Host::new();
    let mut d = Disconnect::default();
    d.properties.session_expiry_interval = Some(60);
    assert_eq!(
        close_code(s.handle_packet(t0, Packet::Disconnect(d), &mut h)),
        ReasonCode::ProtocolError
    );
    assert_eq!(h.expiry, None);
    let r = s.handle_packet(
        t0,
        Packet::Disconnect(Disconnect::with_reason(ReasonCode::DisconnectWithWill)),
        &mut h,
    );
    assert!(matches!(
        r,
        Err(Closed::Session(SessionClose::Disconnect { with_will: true }))
    ));
}

#[test]
fn subscribe_limits_and_retained_handling_mqtt_3_8_4_7() {
    // v5 [MQTT-3.8.4-7]: a refused filter gets its own failure code in the SUBACK.
    let (mut s, t0) = session(ProtocolVersion::V5);
    let mut h = Host::new();
    let opts = SubscriptionOptions::qos(QoS::ExactlyOnce);
    let sub = |id: u16, filters: &[&str]| {
        Packet::Subscribe(Subscribe {
            packet_id: pid(id),
            properties: SubscribeProperties::default(),
            filters: filters
                .iter()
                .map(|f| (ByteString::from(f.to_string()), opts))
                .collect(),
        })
    };
    s.handle_packet(t0, sub(1, &["a/+", "b/#", "a/b", "bad/#/x", "c", "d"]), &mut h)
        .unwrap();
    let Packet::SubAck(ack) = &h.take()[0] else {
        panic!()
    };
    use ReasonCode::*;
    assert_eq!(
        ack.reason_codes,
        [
            GrantedQoS2,
            QuotaExceeded,
            GrantedQoS2,
            TopicFilterInvalid,
            GrantedQoS2,
            QuotaExceeded
        ]
    );
    assert!(ack.properties.reason_string.is_some());
    assert_eq!(h.retained_sent, ["a/+", "a/b", "c"]);
    assert_eq!(h.state.subscriptions.len(), 3);
    // Unsubscribing: 0x11 for a filter that was not subscribed.
    s.handle_packet(
        t0,
        Packet::Unsubscribe(Unsubscribe {
            packet_id: pid(2),
            properties: Default::default(),
            filters: vec!["c".into(), "zz".into()],
        }),
        &mut h,
    )
    .unwrap();
    let Packet::UnsubAck(ack) = &h.take()[0] else {
        panic!()
    };
    assert_eq!(ack.reason_codes, [Success, NoSubscriptionExisted]);
    assert_eq!(h.router, ["a/+", "a/b"]);
}

#[test]
fn reauthentication_follows_its_reason_codes_mqtt_4_12_1_1() {
    // v5 [MQTT-4.12.1-1]: AUTH 0x19 with the CONNECT's method starts it, 0x18 continues.
    let (mut s, t0) = session(ProtocolVersion::V5);
    let mut h = Host::new();
    let auth = |code| {
        let mut a = Auth {
            reason_code: Some(code),
            ..Default::default()
        };
        a.properties.authentication_method = Some("M".into());
        Packet::Auth(a)
    };
    s.handle_packet(t0, auth(ReasonCode::ContinueAuthentication), &mut h)
        .unwrap_err();
    s.handle_packet(t0, auth(ReasonCode::ReAuthenticate), &mut h)
        .unwrap();
    s.handle_packet(t0, auth(ReasonCode::ContinueAuthentication), &mut h)
        .unwrap();
    let codes: Vec<_> = h
        .take()
        .iter()
        .map(|p| match p {
            Packet::Auth(a) => a.reason_code,
            _ => None,
        })
        .collect();
    assert_eq!(
        codes,
        [
            Some(ReasonCode::ContinueAuthentication),
            Some(ReasonCode::Success)
        ]
    );
}

#[test]
fn deliveries_use_aliases_and_respect_the_maximum_packet_size() {
    let (mut s, _) = session(ProtocolVersion::V5);
    s.client.topic_alias_maximum = 1;
    let mut p = Publish::new("long/topic", "x");
    assert_eq!(s.outgoing(&mut p), Some(1));
    let mut q = Publish::new("long/topic", "x");
    assert_eq!(s.outgoing(&mut q), None);
    assert!(q.topic.is_empty() && q.properties.topic_alias == Some(1));
    // v5 [MQTT-3.1.2-25] nothing above the client's Maximum Packet Size.
    assert!(s.fits(1000) && !s.fits(1001));
}
