//! Generators of packets that are valid for a protocol version and that
//! round-trip exactly (`decode(encode(p)) == p`).
//!
//! What "exactly" rules out, and why:
//! - 3.x: no properties, no reason codes other than Success, no subscription
//!   options other than QoS, and DISCONNECT without a reason code: these are
//!   5.0-only and encoding them for 3.x is `EncodeError::NotInVersion`.
//! - 3.x CONNACK and SUBACK carry 3.1.1 return codes; a 5.0 reason code is
//!   mapped to the closest return code, which decodes as a different reason
//!   code. Only the codes the mapping gives back unchanged are generated
//!   (CONNACK: 0x00, 0x84, 0x85, 0x88, 0x86, 0x87; SUBACK: 0x00, 0x01, 0x02, 0x80).
//! - 3.x UNSUBACK has no reason codes.
//! - DISCONNECT and AUTH with properties but `reason_code: None` are written
//!   with reason code Success (the properties cannot come without it), so they
//!   decode as `Some(Success)`. The generators set `Some(..)` whenever there
//!   are properties. `None` and `Some(Success)` without properties both
//!   round-trip (0 and 1 body bytes).
//! - Acknowledgements need no such care: `Ack` has no "absent" reason code.
//! - CONNECT is encoded by its own `protocol_version`, whatever version is
//!   passed to `encode`, so it is generated with any of the three versions and
//!   decodes the same on any decoder. A 3.x CONNECT has a password only with a
//!   user name (v3.1.1 [MQTT-3.1.2-22]); a 5.0 one may have either alone.
//! - PUBLISH: packet identifier present exactly when QoS > 0, DUP only with
//!   QoS > 0 (v3.1.1+v5 [MQTT-3.3.1-2]), topic a valid name without wildcards
//!   (v3.1.1+v5 [MQTT-3.3.2-2]), empty only in 5.0 with a Topic Alias.
//! - Strings never contain U+0000 (v3.1.1 [MQTT-1.5.3-2], v5 [MQTT-1.5.4-2]); property values stay in
//!   the ranges the specification allows (Receive Maximum, Maximum Packet
//!   Size, Topic Alias and Subscription Identifier non-zero; the "0 or 1"
//!   bytes 0 or 1).
//! - A `$share/` filter never has No Local (v5 [MQTT-3.8.3-4]).

use bytes::Bytes;
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use proptest::sample::select;
use proptest::strategy::{Union, ValueTree};
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use tern_proto::codec::{
    AckProperties, AuthProperties, ConnAckProperties, ConnectProperties, DisconnectProperties,
    PublishProperties, SubscribeProperties, UnsubscribeProperties, WillProperties, MAX_VARINT,
};
use tern_proto::{
    Ack, Auth, ByteString, ConnAck, Connect, Disconnect, Packet, PacketId, PacketType, ProtocolVersion,
    Publish, QoS, ReasonCode, RetainHandling, SubAck, Subscribe, SubscriptionOptions, UnsubAck, Unsubscribe,
    Will,
};

use crate::support::ALL_VERSIONS;

/// Every 5.0 reason code the specification allows in a packet of type `t`.
pub fn codes_for(t: PacketType) -> Vec<ReasonCode> {
    (0..=255u8)
        .filter_map(ReasonCode::from_u8)
        .filter(|c| c.allowed_in(t))
        .collect()
}

fn reason(t: PacketType) -> impl Strategy<Value = ReasonCode> {
    select(codes_for(t))
}

fn qos() -> impl Strategy<Value = QoS> {
    prop_oneof![
        Just(QoS::AtMostOnce),
        Just(QoS::AtLeastOnce),
        Just(QoS::ExactlyOnce)
    ]
}

fn packet_id() -> impl Strategy<Value = PacketId> {
    (1..=u16::MAX).prop_map(|n| PacketId::new(n).unwrap())
}

/// Any UTF-8 string without U+0000, including multi-byte characters.
fn text() -> impl Strategy<Value = ByteString> {
    prop_oneof!["[a-zA-Z0-9 _./-]{0,12}", "[^\\x00]{0,8}",].prop_map(ByteString::from)
}

/// A valid topic name: non-empty, no wildcards, no U+0000.
fn topic_name() -> impl Strategy<Value = ByteString> {
    prop_oneof![
        "[a-z0-9]{1,6}(/[a-z0-9]{0,6}){0,3}",
        "\\$SYS/[a-z]{1,6}",
        "[^+#\\x00]{1,8}",
    ]
    .prop_map(ByteString::from)
}

/// Topic filters: plain, with wildcards, shared. The codec leaves filter
/// validation to the receiver, so only U+0000 is excluded.
fn topic_filter() -> impl Strategy<Value = ByteString> {
    prop_oneof![
        "[a-z0-9]{1,6}(/[a-z0-9]{0,6}){0,3}",
        "([a-z]{1,4}|\\+)(/([a-z]{1,4}|\\+)){0,3}(/#)?",
        Just("#".to_string()),
        "\\$share/[a-z]{1,5}/[a-z+/#]{1,6}",
        "[^\\x00]{1,8}",
    ]
    .prop_map(ByteString::from)
}

fn binary() -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..16).prop_map(Bytes::from)
}

fn payload() -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..80).prop_map(Bytes::from)
}

fn user_properties() -> impl Strategy<Value = Vec<(ByteString, ByteString)>> {
    vec((text(), text()), 0..3)
}

fn bool01() -> impl Strategy<Value = u8> {
    0..=1u8
}

fn nonzero_u16() -> impl Strategy<Value = u16> {
    1..=u16::MAX
}

fn subscription_identifier() -> impl Strategy<Value = u32> {
    prop_oneof![1..=127u32, 128..=16_383u32, 1..=MAX_VARINT]
}

/// Half of the time no properties at all, to cover the short encodings.
fn or_empty<T: Default + Clone + std::fmt::Debug + 'static>(
    s: impl Strategy<Value = T> + 'static,
) -> BoxedStrategy<T> {
    prop_oneof![1 => Just(T::default()), 1 => s].boxed()
}

fn connect_properties() -> impl Strategy<Value = ConnectProperties> {
    (
        option::of(any::<u32>()),
        option::of(nonzero_u16()),
        option::of(1..=u32::MAX),
        option::of(any::<u16>()),
        option::of(bool01()),
        option::of(bool01()),
        option::of(text()),
        option::of(binary()),
        user_properties(),
    )
        .prop_map(|(a, b, c, d, e, f, g, h, u)| ConnectProperties {
            session_expiry_interval: a,
            receive_maximum: b,
            maximum_packet_size: c,
            topic_alias_maximum: d,
            request_response_information: e,
            request_problem_information: f,
            authentication_method: g,
            authentication_data: h,
            user_properties: u,
        })
}

fn will_properties() -> impl Strategy<Value = WillProperties> {
    (
        option::of(any::<u32>()),
        option::of(bool01()),
        option::of(any::<u32>()),
        option::of(text()),
        option::of(topic_name()),
        option::of(binary()),
        user_properties(),
    )
        .prop_map(|(a, b, c, d, e, f, u)| WillProperties {
            will_delay_interval: a,
            payload_format_indicator: b,
            message_expiry_interval: c,
            content_type: d,
            response_topic: e,
            correlation_data: f,
            user_properties: u,
        })
}

fn connack_properties() -> impl Strategy<Value = ConnAckProperties> {
    (
        (
            option::of(any::<u32>()),
            option::of(nonzero_u16()),
            option::of(bool01()),
            option::of(bool01()),
            option::of(1..=u32::MAX),
            option::of(text()),
            option::of(any::<u16>()),
            option::of(text()),
        ),
        (
            option::of(bool01()),
            option::of(bool01()),
            option::of(bool01()),
            option::of(any::<u16>()),
            option::of(text()),
            option::of(text()),
            option::of(text()),
            option::of(binary()),
        ),
        user_properties(),
    )
        .prop_map(
            |((a, b, c, d, e, f, g, h), (i, j, k, l, m, n, o, p), u)| ConnAckProperties {
                session_expiry_interval: a,
                receive_maximum: b,
                maximum_qos: c,
                retain_available: d,
                maximum_packet_size: e,
                assigned_client_identifier: f,
                topic_alias_maximum: g,
                reason_string: h,
                wildcard_subscription_available: i,
                subscription_identifier_available: j,
                shared_subscription_available: k,
                server_keep_alive: l,
                response_information: m,
                server_reference: n,
                authentication_method: o,
                authentication_data: p,
                user_properties: u,
            },
        )
}

fn publish_properties() -> impl Strategy<Value = PublishProperties> {
    (
        option::of(bool01()),
        option::of(any::<u32>()),
        option::of(nonzero_u16()),
        option::of(topic_name()),
        option::of(binary()),
        option::of(text()),
        vec(subscription_identifier(), 0..3),
        user_properties(),
    )
        .prop_map(|(a, b, c, d, e, f, s, u)| PublishProperties {
            payload_format_indicator: a,
            message_expiry_interval: b,
            topic_alias: c,
            response_topic: d,
            correlation_data: e,
            content_type: f,
            subscription_identifiers: s,
            user_properties: u,
        })
}

fn ack_properties() -> impl Strategy<Value = AckProperties> {
    (option::of(text()), user_properties()).prop_map(|(reason_string, user_properties)| AckProperties {
        reason_string,
        user_properties,
    })
}

fn subscribe_properties() -> impl Strategy<Value = SubscribeProperties> {
    (option::of(subscription_identifier()), user_properties()).prop_map(
        |(subscription_identifier, user_properties)| SubscribeProperties {
            subscription_identifier,
            user_properties,
        },
    )
}

fn unsubscribe_properties() -> impl Strategy<Value = UnsubscribeProperties> {
    user_properties().prop_map(|user_properties| UnsubscribeProperties { user_properties })
}

fn disconnect_properties() -> impl Strategy<Value = DisconnectProperties> {
    (
        option::of(any::<u32>()),
        option::of(text()),
        option::of(text()),
        user_properties(),
    )
        .prop_map(|(a, b, c, u)| DisconnectProperties {
            session_expiry_interval: a,
            reason_string: b,
            server_reference: c,
            user_properties: u,
        })
}

fn auth_properties() -> impl Strategy<Value = AuthProperties> {
    (
        option::of(text()),
        option::of(binary()),
        option::of(text()),
        user_properties(),
    )
        .prop_map(|(a, b, c, u)| AuthProperties {
            authentication_method: a,
            authentication_data: b,
            reason_string: c,
            user_properties: u,
        })
}

/// v5 properties, or the default for 3.x.
fn props_for<T: Default + Clone + std::fmt::Debug + 'static>(
    v: ProtocolVersion,
    s: impl Strategy<Value = T> + 'static,
) -> BoxedStrategy<T> {
    if v.is_v5() {
        or_empty(s)
    } else {
        Just(T::default()).boxed()
    }
}

fn will(pv: ProtocolVersion) -> impl Strategy<Value = Will> {
    (
        topic_name(),
        binary(),
        qos(),
        any::<bool>(),
        props_for(pv, will_properties()),
    )
        .prop_map(|(topic, payload, qos, retain, properties)| Will {
            topic,
            payload,
            qos,
            retain,
            properties,
        })
}

fn connect() -> impl Strategy<Value = Packet> {
    select(ALL_VERSIONS.to_vec()).prop_flat_map(|pv| {
        (
            any::<bool>(),
            any::<u16>(),
            text(),
            option::of(will(pv)),
            option::of(text()),
            option::of(binary()),
            props_for(pv, connect_properties()),
            any::<bool>(),
        )
            .prop_map(
                move |(clean_start, keep_alive, client_id, will, username, password, properties, bridge)| {
                    // v3.1.1 [MQTT-3.1.2-22]: 3.x sends a password only with a user name.
                    let password = if pv.is_v5() || username.is_some() {
                        password
                    } else {
                        None
                    };
                    Packet::Connect(Box::new(Connect {
                        protocol_version: pv,
                        clean_start,
                        keep_alive,
                        client_id,
                        will,
                        username,
                        password,
                        properties,
                        // The bridge bit of the protocol level exists before 5.0 only.
                        bridge: bridge && !pv.is_v5(),
                    }))
                },
            )
    })
}

/// CONNACK reason codes that survive the 3.1.1 return code mapping unchanged.
fn v3_connack_codes() -> Vec<ReasonCode> {
    (0..=5).filter_map(ReasonCode::from_v3_connack).collect()
}

fn v3_suback_codes() -> Vec<ReasonCode> {
    [0, 1, 2, 0x80]
        .into_iter()
        .filter_map(ReasonCode::from_v3_suback)
        .collect()
}

fn connack(v: ProtocolVersion) -> BoxedStrategy<Packet> {
    let codes = if v.is_v5() {
        codes_for(PacketType::ConnAck)
    } else {
        v3_connack_codes()
    };
    (select(codes), any::<bool>(), props_for(v, connack_properties()))
        .prop_map(|(reason_code, session_present, properties)| {
            Packet::ConnAck(ConnAck {
                // v5 [MQTT-3.2.2-6], v3.1.1 [MQTT-3.2.2-4]: Session Present only with Success.
                session_present: session_present && reason_code == ReasonCode::Success,
                reason_code,
                properties,
            })
        })
        .boxed()
}

fn publish(v: ProtocolVersion) -> BoxedStrategy<Packet> {
    (
        qos(),
        any::<bool>(),
        any::<bool>(),
        topic_name(),
        any::<bool>(),
        packet_id(),
        props_for(v, publish_properties()),
        payload(),
    )
        .prop_map(|(qos, dup, retain, topic, drop_topic, id, properties, payload)| {
            let with_id = qos != QoS::AtMostOnce;
            // 5.0 section 3.3.2.3.4: an empty topic name stands for the Topic Alias.
            let topic = if drop_topic && properties.topic_alias.is_some() {
                ByteString::new()
            } else {
                topic
            };
            Packet::Publish(Publish {
                dup: dup && with_id,
                qos,
                retain,
                topic,
                packet_id: with_id.then_some(id),
                properties,
                payload,
            })
        })
        .boxed()
}

fn ack(v: ProtocolVersion, t: PacketType) -> BoxedStrategy<Packet> {
    let body = if v.is_v5() {
        (packet_id(), reason(t), or_empty(ack_properties()))
            .prop_map(|(packet_id, reason_code, properties)| Ack {
                packet_id,
                reason_code,
                properties,
            })
            .boxed()
    } else {
        packet_id().prop_map(Ack::new).boxed()
    };
    body.prop_map(move |a| match t {
        PacketType::PubAck => Packet::PubAck(a),
        PacketType::PubRec => Packet::PubRec(a),
        PacketType::PubRel => Packet::PubRel(a),
        _ => Packet::PubComp(a),
    })
    .boxed()
}

fn subscription_options(v: ProtocolVersion) -> BoxedStrategy<SubscriptionOptions> {
    if v.is_v5() {
        (
            qos(),
            any::<bool>(),
            any::<bool>(),
            prop_oneof![
                Just(RetainHandling::SendAtSubscribe),
                Just(RetainHandling::SendIfNew),
                Just(RetainHandling::DoNotSend)
            ],
        )
            .prop_map(
                |(qos, no_local, retain_as_published, retain_handling)| SubscriptionOptions {
                    qos,
                    no_local,
                    retain_as_published,
                    retain_handling,
                },
            )
            .boxed()
    } else {
        qos().prop_map(SubscriptionOptions::qos).boxed()
    }
}

fn subscribe(v: ProtocolVersion) -> BoxedStrategy<Packet> {
    let filter = (topic_filter(), subscription_options(v)).prop_map(|(f, mut o)| {
        // v5 [MQTT-3.8.3-4]: no No Local on a shared subscription.
        if f.starts_with("$share/") {
            o.no_local = false;
        }
        (f, o)
    });
    (
        packet_id(),
        props_for(v, subscribe_properties()),
        vec(filter, 1..4),
    )
        .prop_map(|(packet_id, properties, filters)| {
            Packet::Subscribe(Subscribe {
                packet_id,
                properties,
                filters,
            })
        })
        .boxed()
}

fn suback(v: ProtocolVersion) -> BoxedStrategy<Packet> {
    let codes = if v.is_v5() {
        codes_for(PacketType::SubAck)
    } else {
        v3_suback_codes()
    };
    (
        packet_id(),
        props_for(v, ack_properties()),
        vec(select(codes), 1..5),
    )
        .prop_map(|(packet_id, properties, reason_codes)| {
            Packet::SubAck(SubAck {
                packet_id,
                properties,
                reason_codes,
            })
        })
        .boxed()
}

fn unsubscribe(v: ProtocolVersion) -> BoxedStrategy<Packet> {
    (
        packet_id(),
        props_for(v, unsubscribe_properties()),
        vec(topic_filter(), 1..4),
    )
        .prop_map(|(packet_id, properties, filters)| {
            Packet::Unsubscribe(Unsubscribe {
                packet_id,
                properties,
                filters,
            })
        })
        .boxed()
}

fn unsuback(v: ProtocolVersion) -> BoxedStrategy<Packet> {
    let codes = if v.is_v5() {
        vec(reason(PacketType::UnsubAck), 1..5).boxed()
    } else {
        Just(Vec::new()).boxed()
    };
    (packet_id(), props_for(v, ack_properties()), codes)
        .prop_map(|(packet_id, properties, reason_codes)| {
            Packet::UnsubAck(UnsubAck {
                packet_id,
                properties,
                reason_codes,
            })
        })
        .boxed()
}

fn disconnect(v: ProtocolVersion) -> BoxedStrategy<Packet> {
    if !v.is_v5() {
        return Just(Packet::Disconnect(Disconnect::default())).boxed();
    }
    (
        option::of(reason(PacketType::Disconnect)),
        or_empty(disconnect_properties()),
    )
        .prop_map(|(reason_code, properties)| {
            // Properties are written after a reason code, so they imply one.
            let reason_code = if properties.is_empty() {
                reason_code
            } else {
                Some(reason_code.unwrap_or(ReasonCode::NORMAL_DISCONNECTION))
            };
            Packet::Disconnect(Disconnect {
                reason_code,
                properties,
            })
        })
        .boxed()
}

fn auth() -> BoxedStrategy<Packet> {
    (option::of(reason(PacketType::Auth)), or_empty(auth_properties()))
        .prop_map(|(reason_code, properties)| {
            let reason_code = if properties.is_empty() {
                reason_code
            } else {
                Some(reason_code.unwrap_or(ReasonCode::Success))
            };
            Packet::Auth(Auth {
                reason_code,
                properties,
            })
        })
        .boxed()
}

/// Any packet valid for `v`, every packet type with the same weight.
pub fn packet(v: ProtocolVersion) -> BoxedStrategy<Packet> {
    let mut kinds = vec![
        connect().boxed(),
        connack(v),
        publish(v),
        ack(v, PacketType::PubAck),
        ack(v, PacketType::PubRec),
        ack(v, PacketType::PubRel),
        ack(v, PacketType::PubComp),
        subscribe(v),
        suback(v),
        unsubscribe(v),
        unsuback(v),
        Just(Packet::PingReq).boxed(),
        Just(Packet::PingResp).boxed(),
        disconnect(v),
    ];
    if v.is_v5() {
        kinds.push(auth());
    }
    Union::new(kinds).boxed()
}

/// A version and a packet valid for it.
pub fn versioned_packet() -> impl Strategy<Value = (ProtocolVersion, Packet)> {
    select(ALL_VERSIONS.to_vec()).prop_flat_map(|v| (Just(v), packet(v)))
}

/// `n` packets for `v`, the same ones for the same `seed` on every run.
pub fn sample_packets(v: ProtocolVersion, n: usize, seed: u64) -> Vec<Packet> {
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    key[8] = v.level();
    let mut runner =
        TestRunner::new_with_rng(Config::default(), TestRng::from_seed(RngAlgorithm::ChaCha, &key));
    let strategy = packet(v);
    (0..n)
        .map(|_| {
            strategy
                .new_tree(&mut runner)
                .expect("generate a packet")
                .current()
        })
        .collect()
}
