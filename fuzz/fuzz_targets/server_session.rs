//! Fuzz target: one `ServerSession` (tern-proto) driven by an arbitrary sequence of packets
//! from the client, deliveries started by the broker, timeouts, resumes and a takeover, with
//! a host over plain collections (the quinn `streams.rs` and rustls `server.rs` fuzzers are
//! the models).
//!
//! Checked after every step, until the session closes:
//! - the delivery window never holds more than the client's quota, and its packet
//!   identifiers are distinct and non-zero;
//! - incoming QoS 2 identifiers awaiting PUBREL never exceed our Receive Maximum, and a
//!   QoS 2 message is routed at most once until its PUBREL (v5 [MQTT-4.3.3-10]);
//! - every QoS 1/2 PUBLISH accepted gets exactly one PUBACK or PUBREC with its identifier;
//! - every packet the session transmits encodes, within the client's Maximum Packet Size
//!   when it carries only diagnostics beyond it;
//! - no panic.
#![no_main]

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use tern_proto::codec::SubscribeProperties;
use tern_proto::session::server::{
    AuthAnswer, ClientLimits, Delivery, Note, Permission, Persist, Refused, ServerHost, ServerRules,
    Routed, ServerSession, ServerState, SessionClose,
};
use tern_proto::session::{Deliverable, InFlight};
use tern_proto::{
    Ack, Auth, ByteString, Disconnect, Packet, PacketId, ProtocolVersion, Publish, QoS, ReasonCode,
    Subscribe, SubscriptionOptions, Unsubscribe,
};
use tern_fuzz::Levels;

#[derive(Debug, Clone)]
struct Msg(QoS);

impl Deliverable for Msg {
    fn qos(&self) -> QoS {
        self.0
    }
}

impl Delivery for Msg {
    fn to_publish(&self, _: ProtocolVersion, id: Option<PacketId>, dup: bool, _: Instant) -> Publish {
        let mut p = Publish::new("d", "payload");
        p.qos = self.0;
        p.packet_id = id;
        p.dup = dup;
        p
    }
}

#[derive(Debug)]
enum Closed {
    Session(#[allow(dead_code)] SessionClose),
    TakenOver,
}

impl From<SessionClose> for Closed {
    fn from(c: SessionClose) -> Closed {
        Closed::Session(c)
    }
}

struct Changes;

impl Persist<Msg> for Changes {
    fn qos2_received(&mut self, _: PacketId) -> bool {
        true
    }
    fn qos2_released(&mut self, _: PacketId) -> bool {
        true
    }
    fn delivery_stage(&mut self, _: &InFlight<Msg>) -> bool {
        true
    }
    fn delivery_done(&mut self, _: &Msg) {}
    fn persistent(&self) -> bool {
        true
    }
}

struct Host {
    version: ProtocolVersion,
    state: ServerState<Msg>,
    held: bool,
    sent: Vec<Packet>,
    /// QoS 2 identifiers routed and not yet released (the model).
    routed_qos2: BTreeSet<u16>,
    /// The identifier of the QoS 2 PUBLISH being handled, if any.
    current_qos2: Option<u16>,
    deny: bool,
    subscribed: BTreeSet<String>,
    reauth: bool,
}

impl ServerHost for Host {
    type Message = Msg;
    type Close = Closed;

    fn transmit(&mut self, packet: &Packet) {
        let mut out = BytesMut::new();
        packet.encode(self.version, &mut out).expect("every packet the session sends encodes");
        self.sent.push(packet.clone());
    }
    fn allows(&mut self, _: Permission, _: &str) -> bool {
        !self.deny
    }
    fn with_state<R>(&mut self, f: impl FnOnce(&mut ServerState<Msg>, &mut dyn Persist<Msg>) -> R) -> Result<R, Closed> {
        if !self.held {
            return Err(Closed::TakenOver);
        }
        Ok(f(&mut self.state, &mut Changes))
    }
    fn route(&mut self, p: Publish, _: ByteString, _: Instant) -> Routed {
        if p.qos == QoS::ExactlyOnce {
            let id = p.packet_id.expect("QoS 2 has an identifier").get();
            assert!(self.routed_qos2.insert(id), "QoS 2 message {id} routed twice before PUBREL");
            self.current_qos2 = Some(id);
        }
        Routed::Reached(1)
    }
    fn begin_group(&mut self) {}
    fn end_group(&mut self) {}
    fn storage_failed(&self) -> bool {
        false
    }
    fn ack_when_durable(&mut self) {}
    fn subscribe(&mut self, f: &str, _: Option<&str>, _: SubscriptionOptions, _: Option<u32>) -> Result<bool, Refused> {
        Ok(!self.subscribed.insert(f.to_string()))
    }
    fn unsubscribe(&mut self, f: &str) {
        self.subscribed.remove(f);
    }
    fn send_retained(&mut self, _: &str, _: QoS, _: Option<u32>, _: Instant) {}
    fn subscriptions_changed(&mut self) {}
    fn set_session_expiry(&mut self, _: u32) {}
    fn reauthenticate(&mut self, _: &str, begin: bool, _: Option<&[u8]>) -> AuthAnswer {
        match (begin, self.reauth) {
            (true, _) => AuthAnswer::Continue(Bytes::from_static(b"more")),
            (false, true) => AuthAnswer::Success(None),
            (false, false) => AuthAnswer::Failure,
        }
    }
    fn note(&mut self, _: Note<'_>) {}
}

#[derive(Arbitrary, Debug)]
enum Op {
    Publish { topic: Levels, qos: u8, id: u16, dup: bool, retain: bool, alias: Option<u16>, sub_id: bool },
    PubAck(u16),
    PubRec(u16, bool),
    PubRel(u16),
    PubComp(u16),
    Subscribe { id: u16, filters: Vec<(Levels, u8)>, sub_id: Option<u32> },
    Unsubscribe { id: u16, filters: Vec<Levels> },
    Ping,
    Disconnect(Option<u32>, bool),
    Auth(u8, bool),
    /// The broker starts a delivery of this QoS (1 or 2) if the window has room.
    Deliver(bool),
    FlushAcks,
    Advance(u16),
    Resume,
    Deny(bool),
    TakeOver,
}

#[derive(Arbitrary, Debug)]
struct Input {
    v5: bool,
    receive_maximum: u8,
    client_receive_maximum: u8,
    alias_maximum: u8,
    keep_alive: u8,
    max_packet_size: u16,
    ops: Vec<Op>,
}

fn pid(n: u16) -> PacketId {
    PacketId::new(n.max(1)).expect("non-zero")
}

fuzz_target!(|input: Input| {
    let version = if input.v5 { ProtocolVersion::V5 } else { ProtocolVersion::V3_1_1 };
    let rules = ServerRules {
        receive_maximum: u16::from(input.receive_maximum).max(1),
        topic_alias_maximum: u16::from(input.alias_maximum % 8),
        max_inflight: 16,
        max_subscriptions: 8,
        max_wildcard_subscriptions: 4,
        ..ServerRules::default()
    };
    let client = ClientLimits {
        receive_maximum: u16::from(input.client_receive_maximum).max(1),
        max_packet_size: u32::from(input.max_packet_size).max(64),
        topic_alias_maximum: u16::from(input.alias_maximum / 8),
        problem_information: true,
        keep_alive: u16::from(input.keep_alive),
        session_expiry: 0,
        // A 3.x bridge: hop marking and forced No Local exercised too.
        bridge: input.max_packet_size % 2 == 1,
    };
    let quota = usize::from(client.receive_maximum.min(rules.max_inflight));
    let receive_maximum = usize::from(rules.receive_maximum);
    let t0 = Instant::now();
    let mut now = t0;
    let mut s = ServerSession::new(version, Arc::new(rules), client, Some("M".into()), now);
    let mut h = Host {
        version,
        state: ServerState::new(receive_maximum as u16),
        held: true,
        sent: Vec::new(),
        routed_qos2: BTreeSet::new(),
        current_qos2: None,
        deny: false,
        subscribed: BTreeSet::new(),
        reauth: false,
    };
    for op in input.ops {
        h.sent.clear();
        h.current_qos2 = None;
        let mut expect_ack = None;
        let result = match op {
            Op::Publish { topic, qos, id, dup, retain, alias, sub_id } => {
                // An empty topic name only with an alias (the decoder refuses it otherwise).
                let t = topic.topic().unwrap_or_default();
                if t.is_empty() && (alias.is_none() || !version.is_v5()) {
                    continue;
                }
                let mut p = Publish::new(t, "payload");
                p.qos = QoS::from_bits(qos % 3).unwrap_or(QoS::AtMostOnce);
                p.packet_id = (p.qos != QoS::AtMostOnce).then(|| pid(id));
                p.dup = dup && p.qos != QoS::AtMostOnce;
                p.retain = retain;
                if version.is_v5() {
                    p.properties.topic_alias = alias.map(|a| a % 10);
                    if sub_id {
                        p.properties.subscription_identifiers = vec![1];
                    }
                }
                if p.qos != QoS::AtMostOnce {
                    expect_ack = p.packet_id;
                }
                s.handle_packet(now, Packet::Publish(p), &mut h)
            }
            Op::PubAck(id) => s.handle_packet(now, Packet::PubAck(Ack::new(pid(id))), &mut h),
            Op::PubRec(id, error) => {
                let a = match error {
                    true => Ack::with_reason(pid(id), ReasonCode::QuotaExceeded),
                    false => Ack::new(pid(id)),
                };
                s.handle_packet(now, Packet::PubRec(a), &mut h)
            }
            Op::PubRel(id) => {
                let r = s.handle_packet(now, Packet::PubRel(Ack::new(pid(id))), &mut h);
                if r.is_ok() {
                    h.routed_qos2.remove(&pid(id).get());
                }
                r
            }
            Op::PubComp(id) => s.handle_packet(now, Packet::PubComp(Ack::new(pid(id))), &mut h),
            Op::Subscribe { id, filters, sub_id } => {
                let filters: Vec<_> = filters
                    .iter()
                    .take(10)
                    .map(|(f, q)| {
                        let f = f.raw();
                        let qos = QoS::from_bits(q % 3).unwrap_or(QoS::AtMostOnce);
                        (ByteString::from(f), SubscriptionOptions::qos(qos))
                    })
                    .filter(|(f, _)| !f.is_empty())
                    .collect();
                if filters.is_empty() {
                    continue;
                }
                let properties = SubscribeProperties {
                    subscription_identifier: sub_id.filter(|_| version.is_v5()).map(|i| i.clamp(1, 268_435_455)),
                    ..Default::default()
                };
                let sub = Subscribe { packet_id: pid(id), properties, filters };
                s.handle_packet(now, Packet::Subscribe(sub), &mut h)
            }
            Op::Unsubscribe { id, filters } => {
                let filters: Vec<ByteString> =
                    filters.iter().take(10).map(|f| ByteString::from(f.raw())).filter(|f| !f.is_empty()).collect();
                if filters.is_empty() {
                    continue;
                }
                let u = Unsubscribe { packet_id: pid(id), properties: Default::default(), filters };
                s.handle_packet(now, Packet::Unsubscribe(u), &mut h)
            }
            Op::Ping => s.handle_packet(now, Packet::PingReq, &mut h),
            Op::Disconnect(expiry, with_will) => {
                let mut d = Disconnect::default();
                if version.is_v5() {
                    d.properties.session_expiry_interval = expiry;
                    if with_will {
                        d.reason_code = Some(ReasonCode::DisconnectWithWill);
                    }
                }
                s.handle_packet(now, Packet::Disconnect(d), &mut h)
            }
            Op::Auth(code, ok) => {
                if !version.is_v5() {
                    continue;
                }
                h.reauth = ok;
                let mut a = Auth::default();
                a.reason_code = Some(match code % 3 {
                    0 => ReasonCode::ReAuthenticate,
                    1 => ReasonCode::ContinueAuthentication,
                    _ => ReasonCode::Success,
                });
                a.properties.authentication_method = Some(if code > 200 { "X" } else { "M" }.into());
                s.handle_packet(now, Packet::Auth(a), &mut h)
            }
            Op::Deliver(two) => {
                let qos = if two { QoS::ExactlyOnce } else { QoS::AtLeastOnce };
                if h.state.inflight_len() < s.window() {
                    let start = h.state.start(Msg(qos), &mut Changes);
                    assert!(start.is_some(), "a window within the quota always finds an identifier");
                }
                Ok(())
            }
            Op::FlushAcks => s.flush_acks(&mut h),
            Op::Advance(ms) => {
                now += Duration::from_millis(u64::from(ms) * 10);
                match s.handle_timeout(now) {
                    Some(c) => Err(c.into()),
                    None => {
                        s.handle_rx(now);
                        Ok(())
                    }
                }
            }
            Op::Resume => s.resume(now, &mut h),
            Op::Deny(d) => {
                h.deny = d;
                Ok(())
            }
            Op::TakeOver => {
                h.held = false;
                Ok(())
            }
        };
        // The window: within the quota, distinct non-zero identifiers.
        assert!(h.state.inflight_len() <= quota, "window beyond the client's quota");
        let ids: BTreeSet<u16> = h.state.inflight().map(|f| f.id.get()).collect();
        assert_eq!(ids.len(), h.state.inflight_len(), "an identifier is used twice in the window");
        assert!(h.state.qos2_len() <= receive_maximum, "more unreleased QoS 2 than our Receive Maximum");
        if let (Some(id), Ok(())) = (expect_ack, &result) {
            let acks = h
                .sent
                .iter()
                .filter(|p| matches!(p, Packet::PubAck(a) | Packet::PubRec(a) if a.packet_id == id))
                .count();
            assert_eq!(acks, 1, "a QoS 1/2 PUBLISH gets exactly one acknowledgement");
        }
        if result.is_err() {
            return;
        }
    }
});
