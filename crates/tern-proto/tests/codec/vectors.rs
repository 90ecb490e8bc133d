//! Byte vectors worked out by hand from the MQTT 3.1.1 and 5.0 specifications.
//!
//! Each valid vector is checked both ways: the bytes decode to the struct and
//! the struct encodes to exactly the bytes. Each invalid vector is checked
//! for the exact [`DecodeError`] and for the reason code it maps to.
//! Normative statements are cited with the version they belong to (`v3.1.1`, `v5`,
//! or `v3.1.1+v5` where both number the rule the same way; see docs/conformance.md).
//! Rules that the specifications state without a number are cited by section.
//!
//! Layout comments use `|` between fields; strings are written as hex with
//! their text alongside.

use bytes::BytesMut;
use tern_proto::codec::{
    parse_fixed_header, AckProperties, AuthProperties, ConnAckProperties, ConnectProperties,
    DisconnectProperties, PropertyId, PublishProperties, SubscribeProperties, UnsubscribeProperties,
    WillProperties, ALL_PROPERTY_IDS, MAX_PACKET_SIZE,
};
use tern_proto::topic::TopicError;
use tern_proto::{
    Ack, Auth, ByteString, Bytes, ConnAck, Connect, DecodeError, Decoded, Decoder, Disconnect, EncodeError,
    Packet, PacketId, PacketType, ProtocolVersion, Publish, QoS, ReasonCode, RetainHandling, SubAck,
    Subscribe, SubscriptionOptions, UnsubAck, Unsubscribe, Will,
};

use crate::support::{
    assert_malformed, assert_protocol_error, assert_rejected, assert_vector, cat, decode_one, encode, field,
    frame, props, V3_1, V3_1_1, V5,
};

/// Bytes from hex pairs separated by white space.
fn h(hex: &str) -> Vec<u8> {
    hex.split_whitespace()
        .map(|b| u8::from_str_radix(b, 16).unwrap_or_else(|_| panic!("bad hex {b}")))
        .collect()
}

fn pid(n: u16) -> PacketId {
    PacketId::new(n).unwrap()
}

fn s(text: &str) -> ByteString {
    ByteString::from(text)
}

fn b(bytes: &'static [u8]) -> Bytes {
    Bytes::from_static(bytes)
}

/// Both 3.x versions: they share every rule the codec checks.
const V3: [ProtocolVersion; 2] = [V3_1, V3_1_1];
/// The two versions with different rules.
const BOTH: [ProtocolVersion; 2] = [V3_1_1, V5];

// ---------------------------------------------------------------------------
// Fixed header: packet type, flags, Remaining Length, maximum packet size
// ---------------------------------------------------------------------------

/// 3.1.1 section 2.2.3 / v5 section 1.5.5: the edges of each encoded length.
#[test]
fn remaining_length_boundaries() {
    let cases: [(u32, &str); 6] = [
        (127, "7F"),
        (128, "80 01"),
        (16_383, "FF 7F"),
        (16_384, "80 80 01"),
        (2_097_151, "FF FF 7F"),
        (2_097_152, "80 80 80 01"),
    ];
    for (len, header) in cases {
        let header = h(header);
        for v in BOTH {
            // PUBLISH QoS 0 | topic "t" | (v5: no properties) | payload filling the rest.
            let fixed = if v.is_v5() { 4 } else { 3 };
            let payload = vec![0x5A; len as usize - fixed];
            let mut bytes = cat(&[&[0x30], &header, &h("00 01 74")]);
            if v.is_v5() {
                bytes.push(0x00);
            }
            bytes.extend_from_slice(&payload);

            let fh = parse_fixed_header(&bytes, v).unwrap().unwrap();
            assert_eq!((fh.remaining_length, fh.header_len), (len, 1 + header.len()));
            assert_eq!(fh.packet_size(), bytes.len());

            // Only the fixed header buffered: the whole body is still missing.
            let mut partial = BytesMut::from(&bytes[..1 + header.len()]);
            assert_eq!(
                Decoder::new(v, MAX_PACKET_SIZE).decode(&mut partial),
                Ok(Decoded::NeedMore(len as usize))
            );

            let expected = Packet::Publish(Publish::new("t", payload));
            assert_vector(v, &bytes, &expected);
        }
    }
}

/// 3.1.1 section 2.2.3, v5 section 1.5.5: "The maximum number of bytes in the
/// Variable Byte Integer field is four"; a fifth byte is a Malformed Packet.
#[test]
fn five_byte_remaining_length_is_malformed() {
    for v in BOTH {
        assert_malformed(v, &h("30 FF FF FF FF 01"), DecodeError::VarIntTooLong);
        // Known as soon as the fourth byte still has its continuation bit.
        let mut four = BytesMut::from(&h("30 FF FF FF FF")[..]);
        assert_eq!(
            Decoder::new(v, MAX_PACKET_SIZE).decode(&mut four),
            Err(DecodeError::VarIntTooLong)
        );
        assert_eq!(four.len(), 5);
        // Three continuation bytes may still be followed by a last one.
        let mut three = BytesMut::from(&h("30 FF FF FF")[..]);
        assert_eq!(
            Decoder::new(v, MAX_PACKET_SIZE).decode(&mut three),
            Ok(Decoded::NeedMore(1))
        );
    }
}

/// The size limit is applied from the fixed header alone: 268,435,455 bytes
/// announced, five bytes buffered, refused with 0x95 (v5 sections 3.1.2.11.4
/// and 3.2.2.3.6: the receiver of a packet above its Maximum Packet Size uses
/// DISCONNECT with 0x95 Packet too large), and nothing consumed.
#[test]
fn maximum_packet_size_is_checked_from_the_fixed_header() {
    let header = h("30 FF FF FF 7F");
    for v in BOTH {
        let mut buf = BytesMut::from(&header[..]);
        let err = Decoder::new(v, 1024).decode(&mut buf).unwrap_err();
        assert_eq!(
            err,
            DecodeError::PacketTooLarge {
                size: 268_435_460,
                max: 1024
            }
        );
        assert_eq!(err.reason_code(), ReasonCode::PacketTooLarge);
        assert_eq!(&buf[..], &header[..]);

        // At the protocol's own limit the same header is merely incomplete.
        let mut buf = BytesMut::from(&header[..]);
        assert_eq!(
            Decoder::new(v, MAX_PACKET_SIZE).decode(&mut buf),
            Ok(Decoded::NeedMore(268_435_455))
        );
    }
}

#[test]
fn the_limit_counts_the_whole_packet() {
    // PUBACK: 4 bytes with its fixed header.
    let bytes = h("40 02 00 01");
    for v in BOTH {
        let mut buf = BytesMut::from(&bytes[..]);
        assert_eq!(
            Decoder::new(v, 4).decode(&mut buf),
            Ok(Decoded::Packet(Packet::PubAck(Ack::new(pid(1)))))
        );
        let mut buf = BytesMut::from(&bytes[..]);
        assert_eq!(
            Decoder::new(v, 3).decode(&mut buf),
            Err(DecodeError::PacketTooLarge { size: 4, max: 3 })
        );
        assert_eq!(buf.len(), 4);
    }
}

#[test]
fn incomplete_headers_need_more_and_consume_nothing() {
    let decoder = Decoder::new(V5, MAX_PACKET_SIZE);
    for (bytes, need) in [
        ("", 2),
        ("30", 1),
        ("30 80", 1),
        ("30 80 80", 1),
        ("30 05 00", 4),
        ("C0", 1),
    ] {
        let bytes = h(bytes);
        let mut buf = BytesMut::from(&bytes[..]);
        assert_eq!(
            decoder.decode(&mut buf),
            Ok(Decoded::NeedMore(need)),
            "{bytes:02X?}"
        );
        assert_eq!(&buf[..], &bytes[..]);
    }
}

/// 3.1.1 Table 2.1 / v5 Table 2-1: packet type 0 is reserved ("Forbidden").
#[test]
fn packet_type_0_is_malformed() {
    for v in [V3_1, V3_1_1, V5] {
        assert_malformed(v, &h("00 00"), DecodeError::InvalidPacketType(0));
        assert_malformed(v, &h("0F 02 00 01"), DecodeError::InvalidPacketType(0));
    }
}

/// 3.1.1 Table 2.1: type 15 is "Reserved, Forbidden"; AUTH exists only in 5.0.
#[test]
fn auth_is_not_a_3_x_packet() {
    for v in V3 {
        assert_malformed(v, &h("F0 00"), DecodeError::InvalidPacketType(15));
    }
    assert_vector(V5, &h("F0 00"), &Packet::Auth(Auth::default()));
}

/// A valid encoding of each packet type (other than PUBLISH) for `v`.
fn valid_body_of_each_type(v: ProtocolVersion) -> Vec<(PacketType, Vec<u8>)> {
    let mut out = vec![
        (
            PacketType::Connect,
            h("10 0D 00 04 4D 51 54 54 04 02 00 3C 00 01 61"),
        ),
        (
            PacketType::ConnAck,
            if v.is_v5() {
                h("20 03 00 00 00")
            } else {
                h("20 02 00 00")
            },
        ),
        (PacketType::PubAck, h("40 02 00 01")),
        (PacketType::PubRec, h("50 02 00 01")),
        (PacketType::PubRel, h("62 02 00 01")),
        (PacketType::PubComp, h("70 02 00 01")),
        (
            PacketType::Subscribe,
            if v.is_v5() {
                h("82 07 00 01 00 00 01 61 00")
            } else {
                h("82 06 00 01 00 01 61 00")
            },
        ),
        (
            PacketType::SubAck,
            if v.is_v5() {
                h("90 04 00 01 00 00")
            } else {
                h("90 03 00 01 00")
            },
        ),
        (
            PacketType::Unsubscribe,
            if v.is_v5() {
                h("A2 06 00 01 00 00 01 61")
            } else {
                h("A2 05 00 01 00 01 61")
            },
        ),
        (
            PacketType::UnsubAck,
            if v.is_v5() {
                h("B0 04 00 01 00 00")
            } else {
                h("B0 02 00 01")
            },
        ),
        (PacketType::PingReq, h("C0 00")),
        (PacketType::PingResp, h("D0 00")),
        (PacketType::Disconnect, h("E0 00")),
    ];
    if v.is_v5() {
        out.push((PacketType::Auth, h("F0 00")));
    }
    out
}

/// v3.1.1 [MQTT-2.2.2-1], v3.1.1 [MQTT-2.2.2-2]; v5 [MQTT-2.1.3-1]; and per packet
/// v3.1.1+v5 [MQTT-3.6.1-1] (PUBREL 0010), v3.1.1+v5 [MQTT-3.8.1-1] (SUBSCRIBE 0010),
/// v3.1.1+v5 [MQTT-3.10.1-1] (UNSUBSCRIBE 0010), v3.1.1+v5 [MQTT-3.14.1-1] (DISCONNECT),
/// v5 [MQTT-3.15.1-1] (AUTH 0000); every other type 0000. Any other flags are
/// a Malformed Packet.
#[test]
fn reserved_flags_must_have_their_listed_value() {
    for v in [V3_1, V3_1_1, V5] {
        for (t, bytes) in valid_body_of_each_type(v) {
            let required = match t {
                PacketType::PubRel | PacketType::Subscribe | PacketType::Unsubscribe => 0b0010,
                _ => 0b0000,
            };
            assert_eq!(bytes[0] & 0x0F, required);
            assert!(decode_one(v, &bytes).is_ok(), "{t:?} for {v}");
            for flags in (0..16u8).filter(|&f| f != required) {
                let mut bad = bytes.clone();
                bad[0] = (bad[0] & 0xF0) | flags;
                assert_malformed(v, &bad, DecodeError::InvalidFlags { packet: t, flags });
            }
        }
    }
}

// ---------------------------------------------------------------------------
// CONNECT
// ---------------------------------------------------------------------------

/// 3.1.1 CONNECT: name "MQTT", level 4, Clean Session, Keep Alive 60, client "a".
#[test]
fn connect_3_1_1_minimal() {
    // 10 0D | 00 04 "MQTT" | 04 | 02 | 00 3C | 00 01 "a"
    let bytes = h("10 0D 00 04 4D 51 54 54 04 02 00 3C 00 01 61");
    let expected = Packet::Connect(Box::new(Connect::new(V3_1_1, "a")));
    for v in [V3_1, V3_1_1, V5] {
        // CONNECT is decoded by its own protocol level, whatever the decoder expects.
        assert_vector(v, &bytes, &expected);
    }
}

/// 3.1.1 CONNECT with every flag: user name, password, will retain, will
/// QoS 1, will, clean session (flags 1110 1110 = EE), Keep Alive 10.
#[test]
fn connect_3_1_1_with_will_user_name_and_password() {
    // 10 21 | 00 04 "MQTT" | 04 | EE | 00 0A | 00 04 "tern" | 00 03 "w/t" | 00 03 "bye" | 00 01 "u" | 00 02 "pw"
    let bytes = h(
        "10 21 00 04 4D 51 54 54 04 EE 00 0A 00 04 74 65 72 6E 00 03 77 2F 74
                   00 03 62 79 65 00 01 75 00 02 70 77",
    );
    let expected = Packet::Connect(Box::new(Connect {
        protocol_version: V3_1_1,
        clean_start: true,
        keep_alive: 10,
        client_id: s("tern"),
        will: Some(Will {
            topic: s("w/t"),
            payload: b(b"bye"),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: WillProperties::default(),
        }),
        username: Some(s("u")),
        password: Some(b(b"pw")),
        properties: ConnectProperties::default(),
        bridge: false,
    }));
    assert_vector(V3_1_1, &bytes, &expected);
}

/// A bridge's CONNECT (Mosquitto's `try_private`): the protocol level with its top bit set,
/// 0x84 for 3.1.1 and 0x83 for 3.1; 5.0 has no such level (0x85 is refused).
#[test]
fn connect_of_a_bridge_sets_the_top_bit_of_the_level() {
    let mut expected = Connect::new(V3_1_1, "a");
    expected.bridge = true;
    let bytes = h("10 0D 00 04 4D 51 54 54 84 02 00 3C 00 01 61");
    assert_vector(V3_1_1, &bytes, &Packet::Connect(Box::new(expected)));
    let mut expected = Connect::new(V3_1, "a");
    expected.bridge = true;
    let bytes = h("10 0F 00 06 4D 51 49 73 64 70 83 02 00 3C 00 01 61");
    assert_vector(V3_1, &bytes, &Packet::Connect(Box::new(expected)));
    let bytes = h("10 0D 00 04 4D 51 54 54 85 02 00 3C 00 01 61");
    assert_rejected(
        V5,
        &bytes,
        DecodeError::UnsupportedProtocolLevel(0x85),
        ReasonCode::UnsupportedProtocolVersion,
    );
}

/// MQTT 3.1: protocol name "MQIsdp", level 3.
#[test]
fn connect_3_1_mqisdp() {
    // 10 0F | 00 06 "MQIsdp" | 03 | 02 | 00 3C | 00 01 "a"
    let bytes = h("10 0F 00 06 4D 51 49 73 64 70 03 02 00 3C 00 01 61");
    let expected = Packet::Connect(Box::new(Connect::new(V3_1, "a")));
    for v in [V3_1, V3_1_1, V5] {
        assert_vector(v, &bytes, &expected);
    }
}

/// 5.0 CONNECT with properties, a will with properties, and a password
/// without a user name (allowed in 5.0, section 3.1.2.9).
#[test]
fn connect_5_with_properties_and_will() {
    // 10 2D | 00 04 "MQTT" | 05 | 46 (password, will QoS 0, will, clean start) | 00 3C
    // | 0F: 11 0000001E (Session Expiry 30) 21 0014 (Receive Maximum 20) 26 "k" "v"
    // | 00 01 "a" | will properties 05: 18 00000005 (Will Delay 5) | 00 01 "w" | 00 01 "x" | 00 02 "pw"
    let bytes = h("10 2D 00 04 4D 51 54 54 05 46 00 3C
                   0F 11 00 00 00 1E 21 00 14 26 00 01 6B 00 01 76
                   00 01 61
                   05 18 00 00 00 05 00 01 77 00 01 78
                   00 02 70 77");
    let expected = Packet::Connect(Box::new(Connect {
        protocol_version: V5,
        clean_start: true,
        keep_alive: 60,
        client_id: s("a"),
        will: Some(Will {
            topic: s("w"),
            payload: b(b"x"),
            qos: QoS::AtMostOnce,
            retain: false,
            properties: WillProperties {
                will_delay_interval: Some(5),
                ..WillProperties::default()
            },
        }),
        username: None,
        password: Some(b(b"pw")),
        properties: ConnectProperties {
            session_expiry_interval: Some(30),
            receive_maximum: Some(20),
            user_properties: vec![(s("k"), s("v"))],
            ..ConnectProperties::default()
        },
        bridge: false,
    }));
    for v in [V3_1_1, V5] {
        assert_vector(v, &bytes, &expected);
    }
}

/// A 3.1.1 CONNECT with the given flags and payload after the Keep Alive.
fn connect_3(flags: u8, payload: &[u8]) -> Vec<u8> {
    frame(
        0x10,
        &cat(&[&h("00 04 4D 51 54 54 04"), &[flags], &h("00 3C"), payload]),
    )
}

/// A 5.0 CONNECT with the given flags, CONNECT properties and payload.
fn connect_5(flags: u8, properties: &[u8], payload: &[u8]) -> Vec<u8> {
    frame(
        0x10,
        &cat(&[
            &h("00 04 4D 51 54 54 05"),
            &[flags],
            &h("00 3C"),
            &props(properties),
            payload,
        ]),
    )
}

/// v3.1.1+v5 [MQTT-3.1.2-3]: the reserved flag is 0; v5: "If the reserved flag is not 0 it is a
/// Malformed Packet".
#[test]
fn connect_reserved_flag_mqtt_3_1_2_3() {
    assert_eq!(
        connect_3(0x03, &h("00 01 61")),
        h("10 0D 00 04 4D 51 54 54 04 03 00 3C 00 01 61")
    );
    assert_malformed(
        V3_1_1,
        &connect_3(0x03, &h("00 01 61")),
        DecodeError::ReservedConnectFlag,
    );
    assert_malformed(
        V5,
        &connect_5(0x03, &[], &h("00 01 61")),
        DecodeError::ReservedConnectFlag,
    );
}

/// v3.1.1 [MQTT-3.1.2-11] (Will QoS and Will Retain 0 without the Will Flag),
/// v3.1.1 [MQTT-3.1.2-13] (Will QoS), v3.1.1 [MQTT-3.1.2-15] (Will Retain); v5 [MQTT-3.1.2-11] (Will QoS), v5 [MQTT-3.1.2-13] (Will Retain).
#[test]
fn connect_will_flags_without_will_flag() {
    for flags in [0x0A, 0x12, 0x22, 0x3A] {
        assert_malformed(
            V3_1_1,
            &connect_3(flags, &h("00 01 61")),
            DecodeError::InvalidWillFlags,
        );
        assert_malformed(
            V5,
            &connect_5(flags, &[], &h("00 01 61")),
            DecodeError::InvalidWillFlags,
        );
    }
}

/// v3.1.1 [MQTT-3.1.2-14], v5 [MQTT-3.1.2-12]: Will QoS 3 ("a Malformed Packet" in 5.0).
#[test]
fn connect_will_qos_3() {
    // flags 1E: will QoS 3, will, clean | client "a" | will topic "w" | will payload "x"
    let payload = h("00 01 61 00 01 77 00 01 78");
    assert_eq!(
        connect_3(0x1E, &payload),
        h("10 13 00 04 4D 51 54 54 04 1E 00 3C 00 01 61 00 01 77 00 01 78")
    );
    assert_malformed(V3_1_1, &connect_3(0x1E, &payload), DecodeError::InvalidWillFlags);
    let payload_5 = h("00 01 61 00 00 01 77 00 01 78");
    assert_malformed(
        V5,
        &connect_5(0x1E, &[], &payload_5),
        DecodeError::InvalidWillFlags,
    );
}

/// v3.1.1 [MQTT-3.1.2-22]: no password without a user name. 5.0 allows it
/// (section 3.1.2.9).
#[test]
fn connect_password_without_user_name() {
    // flags 42: password, clean | client "a" | password "pw"
    let bytes = h("10 11 00 04 4D 51 54 54 04 42 00 3C 00 01 61 00 02 70 77");
    assert_eq!(connect_3(0x42, &h("00 01 61 00 02 70 77")), bytes);
    assert_malformed(V3_1_1, &bytes, DecodeError::PasswordWithoutUsername);

    let bytes_5 = connect_5(0x42, &[], &h("00 01 61 00 02 70 77"));
    let mut expected = Connect::new(V5, "a");
    expected.password = Some(b(b"pw"));
    assert_vector(V5, &bytes_5, &Packet::Connect(Box::new(expected)));
}

/// v3.1.1 [MQTT-3.1.2-2], v5 [MQTT-3.1.2-2]: an unsupported level is answered
/// with 0x84 Unsupported Protocol Version (3.1.1 return code 1).
#[test]
fn connect_unsupported_protocol_level() {
    for level in [0u8, 3, 6, 0xFF] {
        let mut bytes = h("10 0D 00 04 4D 51 54 54 04 02 00 3C 00 01 61");
        bytes[8] = level;
        for v in BOTH {
            assert_rejected(
                v,
                &bytes,
                DecodeError::UnsupportedProtocolLevel(level),
                ReasonCode::UnsupportedProtocolVersion,
            );
        }
    }
    // "MQIsdp" is only level 3.
    let bytes = h("10 0F 00 06 4D 51 49 73 64 70 04 02 00 3C 00 01 61");
    assert_rejected(
        V3_1_1,
        &bytes,
        DecodeError::UnsupportedProtocolLevel(4),
        ReasonCode::UnsupportedProtocolVersion,
    );
}

/// v3.1.1 [MQTT-3.1.2-1], v5 [MQTT-3.1.2-1]: the protocol name must be "MQTT"
/// (v5 allows answering 0x84 before closing).
#[test]
fn connect_wrong_protocol_name() {
    for name in ["MQTX", "mqtt", "MQT", "MQTTT"] {
        let bytes = frame(0x10, &cat(&[&field(name.as_bytes()), &h("04 02 00 3C 00 01 61")]));
        for v in BOTH {
            assert_rejected(
                v,
                &bytes,
                DecodeError::InvalidProtocolName,
                ReasonCode::UnsupportedProtocolVersion,
            );
        }
    }
}

/// Fields that run past the Remaining Length are a Malformed Packet.
#[test]
fn connect_truncated_fields() {
    // Client identifier claims 5 bytes, 1 is left.
    assert_malformed(
        V3_1_1,
        &h("10 0D 00 04 4D 51 54 54 04 02 00 3C 00 05 61"),
        DecodeError::Truncated("client identifier"),
    );
    // The packet ends after the flags.
    assert_malformed(
        V3_1_1,
        &h("10 08 00 04 4D 51 54 54 04 02"),
        DecodeError::Truncated("keep alive"),
    );
    // Will flag set, no will fields.
    assert_malformed(
        V3_1_1,
        &connect_3(0x06, &h("00 01 61")),
        DecodeError::Truncated("will topic"),
    );
    // User name flag set, no user name.
    assert_malformed(
        V3_1_1,
        &connect_3(0x82, &h("00 01 61")),
        DecodeError::Truncated("user name"),
    );
    // v5: property length beyond the packet.
    assert_malformed(
        V5,
        &h("10 13 00 04 4D 51 54 54 05 02 00 3C 20 11 00 00 00 1E 00 01 61"),
        DecodeError::Truncated("properties"),
    );
}

/// v5 section 3.1.2.11: CONNECT property rules.
#[test]
fn connect_5_property_errors() {
    let client = h("00 01 61");
    // 3.1.2.11.3: "It is a Protocol Error ... for it to have the value 0" (Receive Maximum).
    assert_protocol_error(
        V5,
        &connect_5(0x02, &h("21 00 00"), &client),
        DecodeError::InvalidPropertyValue(0x21),
    );
    // 3.1.2.11.4: Maximum Packet Size 0.
    assert_protocol_error(
        V5,
        &connect_5(0x02, &h("27 00 00 00 00"), &client),
        DecodeError::InvalidPropertyValue(0x27),
    );
    // 3.1.2.11.7: Request Problem Information other than 0 or 1.
    assert_protocol_error(
        V5,
        &connect_5(0x02, &h("17 02"), &client),
        DecodeError::InvalidPropertyValue(0x17),
    );
    // 3.1.2.11.2: Session Expiry Interval twice.
    assert_protocol_error(
        V5,
        &connect_5(0x02, &h("11 00 00 00 01 11 00 00 00 02"), &client),
        DecodeError::DuplicateProperty(0x11),
    );
    // 2.2.2.2: Topic Alias is not a CONNECT property: Malformed Packet.
    assert_malformed(
        V5,
        &connect_5(0x02, &h("23 00 01"), &client),
        DecodeError::PropertyNotAllowed {
            id: 0x23,
            context: "CONNECT",
        },
    );
    // 2.2.2.2: identifiers the specification does not define.
    assert_malformed(
        V5,
        &connect_5(0x02, &h("7F 00"), &client),
        DecodeError::UnknownProperty(0x7F),
    );
    assert_malformed(
        V5,
        &connect_5(0x02, &h("80 01 00"), &client),
        DecodeError::UnknownProperty(128),
    );
    // Session Expiry Interval is not a Will property.
    assert_malformed(
        V5,
        &connect_5(0x06, &[], &h("00 01 61 05 11 00 00 00 01 00 01 77 00 01 78")),
        DecodeError::PropertyNotAllowed {
            id: 0x11,
            context: "Will Properties",
        },
    );
}

// ---------------------------------------------------------------------------
// CONNACK
// ---------------------------------------------------------------------------

/// 3.1.1 section 3.2: Connect Acknowledge Flags, then one of six return codes.
#[test]
fn connack_3_1_1() {
    let cases = [
        ("20 02 00 00", ReasonCode::Success, false),
        ("20 02 01 00", ReasonCode::Success, true),
        ("20 02 00 01", ReasonCode::UnsupportedProtocolVersion, false),
        ("20 02 00 02", ReasonCode::ClientIdentifierNotValid, false),
        ("20 02 00 03", ReasonCode::ServerUnavailable, false),
        ("20 02 00 04", ReasonCode::BadUserNameOrPassword, false),
        ("20 02 00 05", ReasonCode::NotAuthorized, false),
    ];
    for (bytes, code, session_present) in cases {
        for v in V3 {
            assert_vector(
                v,
                &h(bytes),
                &Packet::ConnAck(ConnAck::new(code, session_present)),
            );
        }
    }
    // A 5.0 code without a 3.1.1 return code of its own is sent as the closest one.
    assert_eq!(
        encode(
            V3_1_1,
            &Packet::ConnAck(ConnAck::new(ReasonCode::BadAuthenticationMethod, false))
        ),
        h("20 02 00 04")
    );
    assert_eq!(
        encode(
            V3_1_1,
            &Packet::ConnAck(ConnAck::new(ReasonCode::QuotaExceeded, false))
        ),
        h("20 02 00 03")
    );
}

#[test]
fn connack_5() {
    assert_vector(
        V5,
        &h("20 03 00 00 00"),
        &Packet::ConnAck(ConnAck::new(ReasonCode::Success, false)),
    );
    assert_vector(
        V5,
        &h("20 03 00 87 00"),
        &Packet::ConnAck(ConnAck::new(ReasonCode::NotAuthorized, false)),
    );
    // 20 10 | 01 (session present) | 00 | 0D: 21 000A (Receive Maximum 10) 24 01 (Maximum QoS 1)
    //   12 0002 "ab" (Assigned Client Identifier) 22 0005 (Topic Alias Maximum 5)
    let bytes = h("20 10 01 00 0D 21 00 0A 24 01 12 00 02 61 62 22 00 05");
    let expected = Packet::ConnAck(ConnAck {
        session_present: true,
        reason_code: ReasonCode::Success,
        properties: ConnAckProperties {
            receive_maximum: Some(10),
            maximum_qos: Some(1),
            assigned_client_identifier: Some(s("ab")),
            topic_alias_maximum: Some(5),
            ..ConnAckProperties::default()
        },
    });
    assert_vector(V5, &bytes, &expected);
}

#[test]
fn connack_errors() {
    // 3.1.1 section 3.2.2.3: return codes 6-255 are reserved.
    for v in V3 {
        assert_protocol_error(v, &h("20 02 00 06"), DecodeError::UnknownReturnCode(6));
    }
    // v5 [MQTT-3.2.2-1]: bits 7-1 of the acknowledge flags are reserved.
    for v in BOTH {
        let bytes = if v.is_v5() {
            h("20 03 02 00 00")
        } else {
            h("20 02 02 00")
        };
        assert_malformed(
            v,
            &bytes,
            DecodeError::InvalidFlags {
                packet: PacketType::ConnAck,
                flags: 0x02,
            },
        );
    }
    // 3.1.1: no properties, so a third byte is left over.
    assert_malformed(
        V3_1_1,
        &h("20 03 00 00 00"),
        DecodeError::TrailingBytes(1, PacketType::ConnAck),
    );
    // v5: the Property Length is not optional in CONNACK.
    assert_malformed(V5, &h("20 02 00 00"), DecodeError::Truncated("property length"));
    // v5 [MQTT-3.2.2-8]: one of the CONNACK reason codes; 0x04 belongs to DISCONNECT.
    assert_protocol_error(
        V5,
        &h("20 03 00 04 00"),
        DecodeError::ReasonCodeNotAllowed {
            code: ReasonCode::DisconnectWithWill,
            packet: PacketType::ConnAck,
        },
    );
    assert_malformed(V5, &h("20 03 00 03 00"), DecodeError::UnknownReasonCode(0x03));
    // v5 3.2.2.3.4: Maximum QoS other than 0 or 1.
    assert_protocol_error(
        V5,
        &h("20 05 00 00 02 24 02"),
        DecodeError::InvalidPropertyValue(0x24),
    );
    // v5 3.2.2.3.3: Receive Maximum twice.
    assert_protocol_error(
        V5,
        &h("20 09 00 00 06 21 00 01 21 00 02"),
        DecodeError::DuplicateProperty(0x21),
    );
    // Topic Alias is a PUBLISH property.
    assert_malformed(
        V5,
        &h("20 06 00 00 03 23 00 01"),
        DecodeError::PropertyNotAllowed {
            id: 0x23,
            context: "CONNACK",
        },
    );
}

// ---------------------------------------------------------------------------
// PUBLISH
// ---------------------------------------------------------------------------

#[test]
fn publish_qos_0() {
    // 30 0A | 00 03 "a/b" | "hello"
    let expected = Packet::Publish(Publish::new("a/b", "hello"));
    for v in V3 {
        assert_vector(v, &h("30 0A 00 03 61 2F 62 68 65 6C 6C 6F"), &expected);
    }
    // v5: an empty property list (length 0) after the topic.
    assert_vector(V5, &h("30 0B 00 03 61 2F 62 00 68 65 6C 6C 6F"), &expected);
}

#[test]
fn publish_qos_1_dup_retain() {
    // 3B = 0011 1011: PUBLISH, DUP, QoS 1, RETAIN | 00 03 "a/b" | 00 07 | "hi"
    let expected = Packet::Publish(Publish {
        dup: true,
        qos: QoS::AtLeastOnce,
        retain: true,
        topic: s("a/b"),
        packet_id: Some(pid(7)),
        properties: PublishProperties::default(),
        payload: b(b"hi"),
    });
    assert_vector(V3_1_1, &h("3B 09 00 03 61 2F 62 00 07 68 69"), &expected);
    assert_vector(V5, &h("3B 0A 00 03 61 2F 62 00 07 00 68 69"), &expected);
}

#[test]
fn publish_qos_2_empty_payload() {
    // 34 | 00 01 "t" | FF FF
    let expected = Packet::Publish(Publish {
        qos: QoS::ExactlyOnce,
        packet_id: Some(pid(0xFFFF)),
        ..Publish::new("t", Bytes::new())
    });
    assert_vector(V3_1_1, &h("34 05 00 01 74 FF FF"), &expected);
    assert_vector(V5, &h("34 06 00 01 74 FF FF 00"), &expected);
}

/// v5 section 3.3.2.3: every PUBLISH property, in the order the encoder writes them.
#[test]
fn publish_5_with_every_property() {
    // 32 29 | 00 03 "a/b" | 00 0A | 20:
    //   01 01 (Payload Format UTF-8) 02 0000003C (Message Expiry 60) 23 0001 (Topic Alias 1)
    //   08 0001 "r" (Response Topic) 09 0002 0102 (Correlation Data) 03 0001 "t" (Content Type)
    //   0B 05 (Subscription Identifier 5) 26 "k" "v"
    // | "x"
    let bytes = h("32 29 00 03 61 2F 62 00 0A 20
                   01 01 02 00 00 00 3C 23 00 01 08 00 01 72 09 00 02 01 02 03 00 01 74
                   0B 05 26 00 01 6B 00 01 76
                   78");
    let expected = Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: s("a/b"),
        packet_id: Some(pid(10)),
        properties: PublishProperties {
            payload_format_indicator: Some(1),
            message_expiry_interval: Some(60),
            topic_alias: Some(1),
            response_topic: Some(s("r")),
            correlation_data: Some(b(&[1, 2])),
            content_type: Some(s("t")),
            subscription_identifiers: vec![5],
            user_properties: vec![(s("k"), s("v"))],
        },
        payload: b(b"x"),
    });
    assert_vector(V5, &bytes, &expected);
}

/// v5 section 3.3.2.3.8: a server may send several Subscription Identifiers;
/// they are Variable Byte Integers (128 = 80 01).
#[test]
fn publish_5_with_several_subscription_identifiers() {
    // 30 0B | 00 01 "t" | 05: 0B 01 0B 80 01 | "pq"
    let expected = Packet::Publish(Publish {
        properties: PublishProperties {
            subscription_identifiers: vec![1, 128],
            ..PublishProperties::default()
        },
        ..Publish::new("t", "pq")
    });
    assert_vector(V5, &h("30 0B 00 01 74 05 0B 01 0B 80 01 70 71"), &expected);
}

/// v5 section 3.3.2.3.4: a zero-length Topic Name with a Topic Alias.
#[test]
fn publish_5_empty_topic_with_topic_alias() {
    // 30 07 | 00 00 | 03: 23 0005 | "p"
    let expected = Packet::Publish(Publish {
        properties: PublishProperties {
            topic_alias: Some(5),
            ..PublishProperties::default()
        },
        ..Publish::new("", "p")
    });
    assert_vector(V5, &h("30 07 00 00 03 23 00 05 70"), &expected);
}

/// v3.1.1 [MQTT-1.5.3-3], v5 [MQTT-1.5.4-3]: EF BB BF is U+FEFF and is kept.
#[test]
fn publish_topic_keeps_a_byte_order_mark() {
    let expected = Packet::Publish(Publish::new("\u{FEFF}a", Bytes::new()));
    assert_vector(V3_1_1, &h("30 06 00 04 EF BB BF 61"), &expected);
    assert_vector(V5, &h("30 07 00 04 EF BB BF 61 00"), &expected);
    let Ok(Packet::Publish(p)) = decode_one(V5, &h("30 07 00 04 EF BB BF 61 00")) else {
        panic!("not a PUBLISH");
    };
    assert_eq!(p.topic.as_bytes()[..], h("EF BB BF 61")[..]);
}

/// v3.1.1+v5 [MQTT-3.3.1-4]: QoS bits 11 ("a Malformed Packet" in 5.0).
#[test]
fn publish_qos_3_mqtt_3_3_1_4() {
    for first in [0x36, 0x37, 0x3E, 0x3F] {
        for v in BOTH {
            assert_malformed(
                v,
                &[&[first][..], &h("07 00 03 61 2F 62 00 01")].concat(),
                DecodeError::InvalidQoS,
            );
        }
    }
}

/// v3.1.1+v5 [MQTT-3.3.1-2]: DUP is 0 for all QoS 0 messages.
#[test]
fn publish_dup_on_qos_0_mqtt_3_3_1_2() {
    for v in BOTH {
        let tail = if v.is_v5() {
            h("06 00 03 61 2F 62 00")
        } else {
            h("05 00 03 61 2F 62")
        };
        assert_malformed(v, &cat(&[&[0x38], &tail]), DecodeError::DupOnQoS0);
        assert_malformed(v, &cat(&[&[0x39], &tail]), DecodeError::DupOnQoS0);
    }
}

/// v3.1.1 [MQTT-2.3.1-1], v5 [MQTT-2.2.1-3]: a QoS > 0 PUBLISH has a non-zero Packet Identifier.
#[test]
fn publish_packet_identifier_0() {
    assert_protocol_error(
        V3_1_1,
        &h("32 07 00 03 61 2F 62 00 00"),
        DecodeError::ZeroPacketId,
    );
    assert_protocol_error(
        V3_1_1,
        &h("34 07 00 03 61 2F 62 00 00"),
        DecodeError::ZeroPacketId,
    );
    assert_protocol_error(V5, &h("32 08 00 03 61 2F 62 00 00 00"), DecodeError::ZeroPacketId);
    assert_protocol_error(V5, &h("34 08 00 03 61 2F 62 00 00 00"), DecodeError::ZeroPacketId);
}

/// v3.1.1+v5 [MQTT-3.3.2-2]: no wildcards in a Topic Name.
#[test]
fn publish_topic_with_wildcards_mqtt_3_3_2_2() {
    for topic in ["a/+", "a/#", "+", "#", "a+b"] {
        for v in BOTH {
            let mut body = field(topic.as_bytes());
            if v.is_v5() {
                body.push(0);
            }
            assert_protocol_error(
                v,
                &frame(0x30, &body),
                DecodeError::InvalidTopic(TopicError::WildcardInName),
            );
        }
    }
}

/// v3.1.1 [MQTT-4.7.3-1]: topic names are at least one character long.
/// v5 section 3.3.2.1: "It is a Protocol Error if the Topic Name is zero
/// length and there is no Topic Alias."
#[test]
fn publish_empty_topic_without_alias() {
    assert_protocol_error(
        V3_1_1,
        &h("30 03 00 00 70"),
        DecodeError::InvalidTopic(TopicError::Empty),
    );
    assert_protocol_error(
        V5,
        &h("30 04 00 00 00 70"),
        DecodeError::InvalidTopic(TopicError::Empty),
    );
    // Other properties do not stand in for the alias.
    assert_protocol_error(
        V5,
        &h("30 06 00 00 02 01 01 70"),
        DecodeError::InvalidTopic(TopicError::Empty),
    );
}

/// v5 [MQTT-3.3.2-8]: Topic Alias 0 is not allowed; 0x94 Topic Alias invalid.
#[test]
fn publish_topic_alias_0_mqtt_3_3_2_8() {
    assert_rejected(
        V5,
        &h("30 08 00 01 74 03 23 00 00 70"),
        DecodeError::TopicAliasZero,
        ReasonCode::TopicAliasInvalid,
    );
}

#[test]
fn publish_5_property_errors() {
    // 3.3.2.3.8: "It is a Protocol Error if the Subscription Identifier has a value of 0."
    assert_protocol_error(
        V5,
        &h("30 06 00 01 74 02 0B 00"),
        DecodeError::InvalidPropertyValue(0x0B),
    );
    // 3.3.2.3.4: Topic Alias twice.
    assert_protocol_error(
        V5,
        &h("30 0A 00 01 74 06 23 00 01 23 00 02"),
        DecodeError::DuplicateProperty(0x23),
    );
    // 3.3.2.3.2: Payload Format Indicator is 0 or 1.
    assert_protocol_error(
        V5,
        &h("30 06 00 01 74 02 01 02"),
        DecodeError::InvalidPropertyValue(0x01),
    );
    // Session Expiry Interval is not a PUBLISH property.
    assert_malformed(
        V5,
        &h("30 09 00 01 74 05 11 00 00 00 01"),
        DecodeError::PropertyNotAllowed {
            id: 0x11,
            context: "PUBLISH",
        },
    );
}

#[test]
fn publish_truncated_fields() {
    for v in BOTH {
        // Topic length 5, one byte left.
        assert_malformed(v, &h("30 03 00 05 61"), DecodeError::Truncated("topic name"));
        // QoS 1 without room for the Packet Identifier.
        assert_malformed(
            v,
            &h("32 04 00 01 74 00"),
            DecodeError::Truncated("packet identifier"),
        );
    }
    // v5: Property Length 9 with two bytes left.
    assert_malformed(
        V5,
        &h("30 06 00 01 74 09 11 00"),
        DecodeError::Truncated("properties"),
    );
}

// ---------------------------------------------------------------------------
// PUBACK, PUBREC, PUBREL, PUBCOMP
// ---------------------------------------------------------------------------

fn ack_packet(t: PacketType, a: Ack) -> Packet {
    match t {
        PacketType::PubAck => Packet::PubAck(a),
        PacketType::PubRec => Packet::PubRec(a),
        PacketType::PubRel => Packet::PubRel(a),
        PacketType::PubComp => Packet::PubComp(a),
        _ => unreachable!(),
    }
}

const ACKS: [(PacketType, u8); 4] = [
    (PacketType::PubAck, 0x40),
    (PacketType::PubRec, 0x50),
    (PacketType::PubRel, 0x62),
    (PacketType::PubComp, 0x70),
];

/// Remaining Length 2, the Packet Identifier only: the 3.1.1 form, and the
/// 5.0 form for Success without properties (section 3.4.2.1).
#[test]
fn acks_with_packet_identifier_only() {
    for (t, first) in ACKS {
        let bytes = [first, 0x02, 0x12, 0x34];
        for v in [V3_1, V3_1_1, V5] {
            assert_vector(v, &bytes, &ack_packet(t, Ack::new(pid(0x1234))));
        }
    }
}

/// v5 sections 3.4.2.1 to 3.7.2.1: a reason code each packet allows; with
/// Remaining Length 3 the Property Length is absent.
#[test]
fn acks_5_with_reason_codes() {
    let cases = [
        (
            PacketType::PubAck,
            "40 03 00 01 10",
            ReasonCode::NoMatchingSubscribers,
        ),
        (
            PacketType::PubRec,
            "50 03 00 01 91",
            ReasonCode::PacketIdentifierInUse,
        ),
        (
            PacketType::PubRel,
            "62 03 00 01 92",
            ReasonCode::PacketIdentifierNotFound,
        ),
        (
            PacketType::PubComp,
            "70 03 00 01 92",
            ReasonCode::PacketIdentifierNotFound,
        ),
    ];
    for (t, bytes, code) in cases {
        assert_vector(V5, &h(bytes), &ack_packet(t, Ack::with_reason(pid(1), code)));
    }
    // 40 08 | 00 01 | 80 | 04: 1F 0001 "e" (Reason String)
    let expected = Ack {
        packet_id: pid(1),
        reason_code: ReasonCode::UnspecifiedError,
        properties: AckProperties {
            reason_string: Some(s("e")),
            ..AckProperties::default()
        },
    };
    assert_vector(V5, &h("40 08 00 01 80 04 1F 00 01 65"), &Packet::PubAck(expected));
    // Success with properties: the reason code is written.
    let expected = Ack {
        properties: AckProperties {
            user_properties: vec![(s("k"), s("v"))],
            ..AckProperties::default()
        },
        ..Ack::new(pid(1))
    };
    assert_vector(
        V5,
        &h("40 0B 00 01 00 07 26 00 01 6B 00 01 76"),
        &Packet::PubAck(expected),
    );
}

/// v5: Success written out, with or without an empty Property Length, is the
/// same packet; the encoder uses the shortest form.
#[test]
fn acks_5_success_in_longer_forms() {
    for bytes in ["40 03 00 01 00", "40 04 00 01 00 00"] {
        let p = decode_one(V5, &h(bytes)).unwrap();
        assert_eq!(p, Packet::PubAck(Ack::new(pid(1))));
        assert_eq!(encode(V5, &p), h("40 02 00 01"));
    }
}

#[test]
fn ack_errors() {
    for (t, first) in ACKS {
        // 3.1.1 sections 3.4 to 3.7: Remaining Length 2, nothing after the identifier.
        for v in V3 {
            assert_malformed(
                v,
                &[first, 0x03, 0x00, 0x01, 0x00],
                DecodeError::TrailingBytes(1, t),
            );
        }
        // v3.1.1 [MQTT-2.3.1-6], v5 [MQTT-2.2.1-5]: the identifier of the PUBLISH, which is never 0.
        for v in BOTH {
            assert_protocol_error(v, &[first, 0x02, 0x00, 0x00], DecodeError::ZeroPacketId);
            assert_malformed(
                v,
                &[first, 0x01, 0x00],
                DecodeError::Truncated("packet identifier"),
            );
        }
        // v5: an undefined reason code byte.
        assert_malformed(
            V5,
            &[first, 0x03, 0x00, 0x01, 0x05],
            DecodeError::UnknownReasonCode(0x05),
        );
    }
    // v5 [MQTT-3.4.2-1], v5 [MQTT-3.5.2-1], v5 [MQTT-3.6.2-1], v5 [MQTT-3.7.2-1]: only the packet's own reason codes.
    let not_allowed = [
        (0x40, PacketType::PubAck, ReasonCode::PacketIdentifierNotFound),
        (0x50, PacketType::PubRec, ReasonCode::MalformedPacket),
        (0x62, PacketType::PubRel, ReasonCode::NoMatchingSubscribers),
        (0x70, PacketType::PubComp, ReasonCode::UnspecifiedError),
    ];
    for (first, packet, code) in not_allowed {
        assert_protocol_error(
            V5,
            &[first, 0x03, 0x00, 0x01, code.as_u8()],
            DecodeError::ReasonCodeNotAllowed { code, packet },
        );
    }
    // v5 3.4.2.2.2: Reason String twice.
    assert_protocol_error(
        V5,
        &h("40 0C 00 01 00 08 1F 00 01 61 1F 00 01 62"),
        DecodeError::DuplicateProperty(0x1F),
    );
    // 2.2.2.2: Topic Alias is not an acknowledgement property.
    assert_malformed(
        V5,
        &h("40 07 00 01 00 03 23 00 01"),
        DecodeError::PropertyNotAllowed {
            id: 0x23,
            context: "acknowledgement",
        },
    );
    assert_malformed(
        V5,
        &h("40 06 00 01 00 02 7F 00"),
        DecodeError::UnknownProperty(0x7F),
    );
}

/// A value of the right wire type for a property, to build packets with it.
fn property_value(id: PropertyId) -> Vec<u8> {
    match id.data_type() {
        "Byte" => vec![0x01],
        "Two Byte Integer" => vec![0x00, 0x01],
        "Four Byte Integer" => vec![0x00, 0x00, 0x00, 0x01],
        "Variable Byte Integer" => vec![0x01],
        "UTF-8 Encoded String" => field(b"x"),
        "Binary Data" => field(&[0x01]),
        "UTF-8 String Pair" => cat(&[&field(b"k"), &field(b"v")]),
        other => panic!("unknown data type {other}"),
    }
}

/// v5 section 2.2.2.2: "A Control Packet which contains an Identifier which is
/// not valid for its packet type ... is a Malformed Packet." An acknowledgement
/// allows only Reason String (0x1F) and User Property (0x26).
#[test]
fn every_other_property_is_malformed_in_an_ack() {
    assert_eq!(ALL_PROPERTY_IDS.len(), 27);
    for &id in ALL_PROPERTY_IDS {
        let property = cat(&[&[id as u8], &property_value(id)]);
        let bytes = frame(0x40, &cat(&[&h("00 01 00"), &props(&property)]));
        match id {
            PropertyId::ReasonString | PropertyId::UserProperty => {
                assert!(decode_one(V5, &bytes).is_ok(), "{id:?}");
            }
            _ => assert_malformed(
                V5,
                &bytes,
                DecodeError::PropertyNotAllowed {
                    id: id as u8,
                    context: "acknowledgement",
                },
            ),
        }
    }
}

// ---------------------------------------------------------------------------
// SUBSCRIBE and SUBACK
// ---------------------------------------------------------------------------

#[test]
fn subscribe_3_1_1() {
    // 82 0C | 00 0A | 00 03 "a/#" | 01 | 00 01 "+" | 02
    let expected = Packet::Subscribe(Subscribe {
        packet_id: pid(10),
        properties: SubscribeProperties::default(),
        filters: vec![
            (s("a/#"), SubscriptionOptions::qos(QoS::AtLeastOnce)),
            (s("+"), SubscriptionOptions::qos(QoS::ExactlyOnce)),
        ],
    });
    for v in V3 {
        assert_vector(v, &h("82 0C 00 0A 00 03 61 2F 23 01 00 01 2B 02"), &expected);
    }
}

/// v5 section 3.8.3.1: options 2E = Retain Handling 2, Retain As Published,
/// No Local, QoS 2; Subscription Identifier 7.
#[test]
fn subscribe_5_with_options_and_identifier() {
    // 82 0B | 00 0A | 02: 0B 07 | 00 03 "a/b" | 2E
    let expected = Packet::Subscribe(Subscribe {
        packet_id: pid(10),
        properties: SubscribeProperties {
            subscription_identifier: Some(7),
            ..SubscribeProperties::default()
        },
        filters: vec![(
            s("a/b"),
            SubscriptionOptions {
                qos: QoS::ExactlyOnce,
                no_local: true,
                retain_as_published: true,
                retain_handling: RetainHandling::DoNotSend,
            },
        )],
    });
    assert_vector(V5, &h("82 0B 00 0A 02 0B 07 00 03 61 2F 62 2E"), &expected);
}

/// v5 section 4.8.2: a shared subscription (without No Local), Retain Handling 1.
#[test]
fn subscribe_5_shared() {
    // 82 10 | 00 0B | 00 | 00 0A "$share/g/a" | 11
    let expected = Packet::Subscribe(Subscribe {
        packet_id: pid(11),
        properties: SubscribeProperties::default(),
        filters: vec![(
            s("$share/g/a"),
            SubscriptionOptions {
                qos: QoS::AtLeastOnce,
                retain_handling: RetainHandling::SendIfNew,
                ..SubscriptionOptions::default()
            },
        )],
    });
    assert_vector(
        V5,
        &h("82 10 00 0B 00 00 0A 24 73 68 61 72 65 2F 67 2F 61 11"),
        &expected,
    );
}

/// v3.1.1 [MQTT-3.8.3-3] ("a protocol violation"), v5 [MQTT-3.8.3-2] ("A
/// SUBSCRIBE packet with no Payload is a Protocol Error").
#[test]
fn subscribe_without_filters() {
    assert_protocol_error(V3_1_1, &h("82 02 00 0A"), DecodeError::EmptySubscribe);
    assert_protocol_error(V5, &h("82 03 00 0A 00"), DecodeError::EmptySubscribe);
}

/// v3.1.1 [MQTT-2.3.1-1], v5 [MQTT-2.2.1-3]: SUBSCRIBE needs a non-zero Packet Identifier.
#[test]
fn subscribe_packet_identifier_0() {
    assert_protocol_error(V3_1_1, &h("82 06 00 00 00 01 61 00"), DecodeError::ZeroPacketId);
    assert_protocol_error(V5, &h("82 07 00 00 00 00 01 61 00"), DecodeError::ZeroPacketId);
}

/// v3.1.1 [MQTT-3.8.3-4] (printed `MQTT-3-8.3-4` in the appendix): reserved bits 7-2 of the options byte must be 0
/// and QoS must be 0, 1 or 2, else the packet is malformed.
#[test]
fn subscribe_3_1_1_options_reserved_bits() {
    for bit in 2..8 {
        let bytes = frame(0x82, &cat(&[&h("00 01 00 01 61"), &[1 << bit]]));
        for v in V3 {
            assert_malformed(v, &bytes, DecodeError::InvalidSubscriptionOptions);
        }
    }
    assert_malformed(V3_1_1, &h("82 06 00 01 00 01 61 03"), DecodeError::InvalidQoS);
}

/// v5 [MQTT-3.8.3-5]: reserved bits 7-6 must be 0 (Malformed Packet).
#[test]
fn subscribe_5_options_reserved_bits_mqtt_3_8_3_5() {
    for options in [0x40, 0x80, 0xC0] {
        assert_malformed(
            V5,
            &frame(0x82, &cat(&[&h("00 01 00 00 01 61"), &[options]])),
            DecodeError::InvalidSubscriptionOptions,
        );
    }
}

/// v5 section 3.8.3.1: "It is a Protocol Error if the Maximum QoS field has
/// the value 3" and "It is a Protocol Error to send a Retain Handling value of 3".
#[test]
fn subscribe_5_maximum_qos_3_and_retain_handling_3() {
    assert_protocol_error(
        V5,
        &h("82 07 00 01 00 00 01 61 03"),
        DecodeError::InvalidSubscriptionQoS,
    );
    assert_protocol_error(
        V5,
        &h("82 07 00 01 00 00 01 61 30"),
        DecodeError::InvalidRetainHandling,
    );
}

/// v5 [MQTT-3.8.3-4]: No Local on a shared subscription is a Protocol Error.
#[test]
fn subscribe_5_no_local_on_shared_subscription_mqtt_3_8_3_4() {
    assert_protocol_error(
        V5,
        &h("82 10 00 0B 00 00 0A 24 73 68 61 72 65 2F 67 2F 61 04"),
        DecodeError::NoLocalOnSharedSubscription,
    );
}

#[test]
fn subscribe_5_property_errors() {
    // 3.8.2.1.2: Subscription Identifier 0, or twice.
    assert_protocol_error(
        V5,
        &h("82 09 00 01 02 0B 00 00 01 61 00"),
        DecodeError::InvalidPropertyValue(0x0B),
    );
    assert_protocol_error(
        V5,
        &h("82 0B 00 01 04 0B 01 0B 02 00 01 61 00"),
        DecodeError::DuplicateProperty(0x0B),
    );
    assert_malformed(
        V5,
        &h("82 0A 00 01 03 23 00 01 00 01 61 00"),
        DecodeError::PropertyNotAllowed {
            id: 0x23,
            context: "SUBSCRIBE",
        },
    );
}

#[test]
fn subscribe_truncated_options() {
    assert_malformed(
        V3_1_1,
        &h("82 05 00 01 00 01 61"),
        DecodeError::Truncated("subscription options"),
    );
    assert_malformed(
        V3_1_1,
        &h("82 05 00 01 00 04 61"),
        DecodeError::Truncated("topic filter"),
    );
}

#[test]
fn suback_3_1_1() {
    // 90 05 | 00 0A | 00 01 80: granted QoS 0, granted QoS 1, failure
    let expected = Packet::SubAck(SubAck {
        packet_id: pid(10),
        properties: AckProperties::default(),
        reason_codes: vec![
            ReasonCode::GRANTED_QOS_0,
            ReasonCode::GrantedQoS1,
            ReasonCode::UnspecifiedError,
        ],
    });
    for v in V3 {
        assert_vector(v, &h("90 05 00 0A 00 01 80"), &expected);
    }
    // Every 5.0 failure is 0x80 in 3.1.1.
    let failure = Packet::SubAck(SubAck {
        packet_id: pid(10),
        properties: AckProperties::default(),
        reason_codes: vec![ReasonCode::GrantedQoS2, ReasonCode::TopicFilterInvalid],
    });
    assert_eq!(encode(V3_1_1, &failure), h("90 04 00 0A 02 80"));
}

#[test]
fn suback_5() {
    // 90 06 | 00 0A | 00 | 02 8F A2
    let expected = Packet::SubAck(SubAck {
        packet_id: pid(10),
        properties: AckProperties::default(),
        reason_codes: vec![
            ReasonCode::GrantedQoS2,
            ReasonCode::TopicFilterInvalid,
            ReasonCode::WildcardSubscriptionsNotSupported,
        ],
    });
    assert_vector(V5, &h("90 06 00 0A 00 02 8F A2"), &expected);
    // 90 08 | 00 0A | 04: 1F 0001 "e" | 97
    let expected = Packet::SubAck(SubAck {
        packet_id: pid(10),
        properties: AckProperties {
            reason_string: Some(s("e")),
            ..AckProperties::default()
        },
        reason_codes: vec![ReasonCode::QuotaExceeded],
    });
    assert_vector(V5, &h("90 08 00 0A 04 1F 00 01 65 97"), &expected);
}

#[test]
fn suback_errors() {
    // v3.1.1 [MQTT-3.9.3-2]: return codes other than 00, 01, 02, 80 are reserved.
    for code in [0x03, 0x7F, 0x81, 0xFF] {
        assert_protocol_error(
            V3_1_1,
            &[0x90, 0x03, 0x00, 0x0A, code],
            DecodeError::UnknownReturnCode(code),
        );
    }
    // v5 [MQTT-3.9.3-2]: one of the Subscribe Reason Codes.
    assert_protocol_error(
        V5,
        &h("90 04 00 0A 00 04"),
        DecodeError::ReasonCodeNotAllowed {
            code: ReasonCode::DisconnectWithWill,
            packet: PacketType::SubAck,
        },
    );
    assert_protocol_error(
        V5,
        &h("90 04 00 0A 00 11"),
        DecodeError::ReasonCodeNotAllowed {
            code: ReasonCode::NoSubscriptionExisted,
            packet: PacketType::SubAck,
        },
    );
    // v3.1.1 [MQTT-2.3.1-7], v5 [MQTT-2.2.1-6]: the SUBSCRIBE's identifier, never 0.
    assert_protocol_error(V3_1_1, &h("90 03 00 00 00"), DecodeError::ZeroPacketId);
    assert_protocol_error(V5, &h("90 04 00 00 00 00"), DecodeError::ZeroPacketId);
}

// ---------------------------------------------------------------------------
// UNSUBSCRIBE and UNSUBACK
// ---------------------------------------------------------------------------

#[test]
fn unsubscribe_3_1_1() {
    // A2 0A | 00 0B | 00 03 "a/b" | 00 01 "#"
    let expected = Packet::Unsubscribe(Unsubscribe {
        packet_id: pid(11),
        properties: UnsubscribeProperties::default(),
        filters: vec![s("a/b"), s("#")],
    });
    for v in V3 {
        assert_vector(v, &h("A2 0A 00 0B 00 03 61 2F 62 00 01 23"), &expected);
    }
}

#[test]
fn unsubscribe_5() {
    // A2 0F | 00 0B | 07: 26 "k" "v" | 00 03 "a/b"
    let expected = Packet::Unsubscribe(Unsubscribe {
        packet_id: pid(11),
        properties: UnsubscribeProperties {
            user_properties: vec![(s("k"), s("v"))],
        },
        filters: vec![s("a/b")],
    });
    assert_vector(
        V5,
        &h("A2 0F 00 0B 07 26 00 01 6B 00 01 76 00 03 61 2F 62"),
        &expected,
    );
}

/// v3.1.1+v5 [MQTT-3.10.3-2]: at least one Topic Filter ("a protocol
/// violation" in 3.1.1, "a Protocol Error" in 5.0).
#[test]
fn unsubscribe_without_filters_mqtt_3_10_3_2() {
    assert_protocol_error(V3_1_1, &h("A2 02 00 0B"), DecodeError::EmptyUnsubscribe);
    assert_protocol_error(V5, &h("A2 03 00 0B 00"), DecodeError::EmptyUnsubscribe);
}

#[test]
fn unsubscribe_errors() {
    // v3.1.1 [MQTT-2.3.1-1], v5 [MQTT-2.2.1-3].
    assert_protocol_error(V3_1_1, &h("A2 05 00 00 00 01 61"), DecodeError::ZeroPacketId);
    assert_protocol_error(V5, &h("A2 06 00 00 00 00 01 61"), DecodeError::ZeroPacketId);
    // v5 3.10.2.1: only User Property.
    assert_malformed(
        V5,
        &h("A2 08 00 0B 02 0B 01 00 01 61"),
        DecodeError::PropertyNotAllowed {
            id: 0x0B,
            context: "UNSUBSCRIBE",
        },
    );
}

#[test]
fn unsuback() {
    let expected = Packet::UnsubAck(UnsubAck {
        packet_id: pid(11),
        properties: AckProperties::default(),
        reason_codes: vec![],
    });
    for v in V3 {
        assert_vector(v, &h("B0 02 00 0B"), &expected);
    }
    // B0 05 | 00 0B | 00 | 00 11
    let expected = Packet::UnsubAck(UnsubAck {
        packet_id: pid(11),
        properties: AckProperties::default(),
        reason_codes: vec![ReasonCode::Success, ReasonCode::NoSubscriptionExisted],
    });
    assert_vector(V5, &h("B0 05 00 0B 00 00 11"), &expected);
}

#[test]
fn unsuback_errors() {
    // 3.1.1 section 3.11: no payload.
    assert_malformed(
        V3_1_1,
        &h("B0 03 00 0B 00"),
        DecodeError::TrailingBytes(1, PacketType::UnsubAck),
    );
    // v5 [MQTT-3.11.3-2]: one of the Unsubscribe Reason Codes.
    assert_protocol_error(
        V5,
        &h("B0 04 00 0B 00 01"),
        DecodeError::ReasonCodeNotAllowed {
            code: ReasonCode::GrantedQoS1,
            packet: PacketType::UnsubAck,
        },
    );
    for v in BOTH {
        let bytes = if v.is_v5() {
            h("B0 03 00 00 00")
        } else {
            h("B0 02 00 00")
        };
        assert_protocol_error(v, &bytes, DecodeError::ZeroPacketId);
    }
}

// ---------------------------------------------------------------------------
// PINGREQ, PINGRESP, DISCONNECT, AUTH
// ---------------------------------------------------------------------------

/// Sections 3.12 and 3.13: no variable header, no payload.
#[test]
fn pingreq_and_pingresp() {
    for v in [V3_1, V3_1_1, V5] {
        assert_vector(v, &h("C0 00"), &Packet::PingReq);
        assert_vector(v, &h("D0 00"), &Packet::PingResp);
        assert_malformed(
            v,
            &h("C0 01 00"),
            DecodeError::TrailingBytes(1, PacketType::PingReq),
        );
        assert_malformed(
            v,
            &h("D0 02 00 00"),
            DecodeError::TrailingBytes(2, PacketType::PingResp),
        );
    }
}

/// 3.1.1 section 3.14: DISCONNECT has no variable header and no payload.
#[test]
fn disconnect_3_1_1() {
    for v in V3 {
        assert_vector(v, &h("E0 00"), &Packet::Disconnect(Disconnect::default()));
        assert_malformed(
            v,
            &h("E0 01 00"),
            DecodeError::TrailingBytes(1, PacketType::Disconnect),
        );
    }
}

/// v5 section 3.14.2: "If the Remaining Length is less than 1 the value of
/// 0x00 (Normal disconnection) is used"; the Property Length may be omitted
/// when the Remaining Length is less than 2.
#[test]
fn disconnect_5() {
    assert_vector(V5, &h("E0 00"), &Packet::Disconnect(Disconnect::default()));
    assert_eq!(Disconnect::default().reason(), ReasonCode::NORMAL_DISCONNECTION);
    assert_vector(
        V5,
        &h("E0 01 00"),
        &Packet::Disconnect(Disconnect::with_reason(ReasonCode::NORMAL_DISCONNECTION)),
    );
    assert_vector(
        V5,
        &h("E0 01 04"),
        &Packet::Disconnect(Disconnect::with_reason(ReasonCode::DisconnectWithWill)),
    );
    // E0 06 | 9C (Use another server) | 04: 1C 0001 "s" (Server Reference)
    let expected = Disconnect {
        reason_code: Some(ReasonCode::UseAnotherServer),
        properties: DisconnectProperties {
            server_reference: Some(s("s")),
            ..DisconnectProperties::default()
        },
    };
    assert_vector(V5, &h("E0 06 9C 04 1C 00 01 73"), &Packet::Disconnect(expected));
    // E0 0D | 00 | 0B: 11 0000003C (Session Expiry 60) 1F 0003 "bye"
    let expected = Disconnect {
        reason_code: Some(ReasonCode::NORMAL_DISCONNECTION),
        properties: DisconnectProperties {
            session_expiry_interval: Some(60),
            reason_string: Some(s("bye")),
            ..DisconnectProperties::default()
        },
    };
    assert_vector(
        V5,
        &h("E0 0D 00 0B 11 00 00 00 3C 1F 00 03 62 79 65"),
        &Packet::Disconnect(expected),
    );
    // An empty Property Length written out: same packet, shorter encoding.
    let p = decode_one(V5, &h("E0 02 00 00")).unwrap();
    assert_eq!(
        p,
        Packet::Disconnect(Disconnect::with_reason(ReasonCode::Success))
    );
    assert_eq!(encode(V5, &p), h("E0 01 00"));
}

#[test]
fn disconnect_5_errors() {
    // v5 [MQTT-3.14.2-1]: one of the DISCONNECT reason codes.
    assert_protocol_error(
        V5,
        &h("E0 01 18"),
        DecodeError::ReasonCodeNotAllowed {
            code: ReasonCode::ContinueAuthentication,
            packet: PacketType::Disconnect,
        },
    );
    assert_malformed(V5, &h("E0 01 05"), DecodeError::UnknownReasonCode(0x05));
    assert_malformed(
        V5,
        &h("E0 05 00 03 23 00 01"),
        DecodeError::PropertyNotAllowed {
            id: 0x23,
            context: "DISCONNECT",
        },
    );
}

/// v5 section 3.15.
#[test]
fn auth_5() {
    // Remaining Length 0: Success, no properties.
    assert_vector(V5, &h("F0 00"), &Packet::Auth(Auth::default()));
    assert_vector(
        V5,
        &h("F0 01 00"),
        &Packet::Auth(Auth {
            reason_code: Some(ReasonCode::Success),
            properties: AuthProperties::default(),
        }),
    );
    // F0 0F | 18 (Continue authentication) | 0D: 15 0005 "SCRAM" 16 0002 0102
    let expected = Auth {
        reason_code: Some(ReasonCode::ContinueAuthentication),
        properties: AuthProperties {
            authentication_method: Some(s("SCRAM")),
            authentication_data: Some(b(&[1, 2])),
            ..AuthProperties::default()
        },
    };
    assert_vector(
        V5,
        &h("F0 0F 18 0D 15 00 05 53 43 52 41 4D 16 00 02 01 02"),
        &Packet::Auth(expected),
    );
    // F0 0A | 19 (Re-authenticate) | 08: 15 0005 "SCRAM"
    let expected = Auth {
        reason_code: Some(ReasonCode::ReAuthenticate),
        properties: AuthProperties {
            authentication_method: Some(s("SCRAM")),
            ..AuthProperties::default()
        },
    };
    assert_vector(
        V5,
        &h("F0 0A 19 08 15 00 05 53 43 52 41 4D"),
        &Packet::Auth(expected),
    );
}

#[test]
fn auth_5_errors() {
    // v5 [MQTT-3.15.2-1]: one of the Authenticate Reason Codes.
    assert_protocol_error(
        V5,
        &h("F0 02 80 00"),
        DecodeError::ReasonCodeNotAllowed {
            code: ReasonCode::UnspecifiedError,
            packet: PacketType::Auth,
        },
    );
    // 3.15.2.2.2: Authentication Method twice.
    assert_protocol_error(
        V5,
        &h("F0 0E 18 0C 15 00 03 61 62 63 15 00 03 64 65 66"),
        DecodeError::DuplicateProperty(0x15),
    );
    assert_malformed(
        V5,
        &h("F0 07 18 05 11 00 00 00 01"),
        DecodeError::PropertyNotAllowed {
            id: 0x11,
            context: "AUTH",
        },
    );
}

// ---------------------------------------------------------------------------
// UTF-8 strings everywhere they occur
// ---------------------------------------------------------------------------

/// v3.1.1 [MQTT-1.5.3-1], v3.1.1 [MQTT-1.5.3-2]; v5 [MQTT-1.5.4-1], v5 [MQTT-1.5.4-2]:
/// ill-formed UTF-8 (C3 28), a surrogate (ED A0 80 = U+D800), an overlong
/// encoding (C0 80) and U+0000 are Malformed Packets, in every string field.
#[test]
fn utf8_errors_in_every_kind_of_string() {
    let bad: [(&[u8], DecodeError); 5] = [
        (&[0xC3, 0x28], DecodeError::InvalidUtf8),
        (&[0xED, 0xA0, 0x80], DecodeError::InvalidUtf8),
        (&[0xC0, 0x80], DecodeError::InvalidUtf8),
        (&[0x61, 0x80], DecodeError::InvalidUtf8),
        (&[0x61, 0x00, 0x62], DecodeError::NullCharacter),
    ];
    let mqtt_4 = h("00 04 4D 51 54 54 04");
    for (text, err) in bad {
        let t = field(text);
        let places: Vec<(&str, ProtocolVersion, Vec<u8>)> = vec![
            ("3.1.1 topic name", V3_1_1, frame(0x30, &cat(&[&t, b"p"]))),
            ("v5 topic name", V5, frame(0x30, &cat(&[&t, &[0x00], b"p"]))),
            (
                "client id",
                V3_1_1,
                frame(0x10, &cat(&[&mqtt_4, &h("02 00 3C"), &t])),
            ),
            (
                "protocol name",
                V3_1_1,
                frame(0x10, &cat(&[&t, &h("04 02 00 3C 00 01 61")])),
            ),
            (
                "will topic",
                V3_1_1,
                connect_3(0x06, &cat(&[&h("00 01 61"), &t, &h("00 01 78")])),
            ),
            ("user name", V3_1_1, connect_3(0x82, &cat(&[&h("00 01 61"), &t]))),
            (
                "topic filter",
                V3_1_1,
                frame(0x82, &cat(&[&h("00 01"), &t, &[0x01]])),
            ),
            (
                "unsubscribe filter",
                V3_1_1,
                frame(0xA2, &cat(&[&h("00 01"), &t])),
            ),
            (
                "reason string",
                V5,
                frame(0x40, &cat(&[&h("00 01 80"), &props(&cat(&[&[0x1F], &t]))])),
            ),
            (
                "user property name",
                V5,
                connect_5(0x02, &cat(&[&[0x26], &t, &field(b"v")]), &h("00 01 61")),
            ),
            (
                "user property value",
                V5,
                connect_5(0x02, &cat(&[&[0x26], &field(b"k"), &t]), &h("00 01 61")),
            ),
            (
                "content type",
                V5,
                frame(0x30, &cat(&[&field(b"t"), &props(&cat(&[&[0x03], &t]))])),
            ),
        ];
        for (place, v, bytes) in places {
            let got = decode_one(v, &bytes);
            assert_eq!(got, Err(err.clone()), "{place} {text:02X?}");
            assert_eq!(
                got.unwrap_err().reason_code(),
                ReasonCode::MalformedPacket,
                "{place}"
            );
        }
    }
}

#[test]
fn a_string_length_beyond_the_packet_is_malformed() {
    // User name length 0x10 with 1 byte left.
    assert_malformed(
        V3_1_1,
        &connect_3(0x82, &h("00 01 61 00 10 75")),
        DecodeError::Truncated("user name"),
    );
    // Reason String length 5, 1 byte left inside the properties.
    assert_malformed(
        V5,
        &h("40 08 00 01 80 04 1F 00 05 65"),
        DecodeError::Truncated("property string"),
    );
}

// ---------------------------------------------------------------------------
// Encoding 5.0-only features for 3.x
// ---------------------------------------------------------------------------

/// Encode must fail with `err`, write nothing, and `encoded_len` must agree.
#[track_caller]
fn assert_encode_error(v: ProtocolVersion, p: &Packet, err: EncodeError) {
    let mut buf = BytesMut::from(&[0xAA][..]);
    assert_eq!(p.encode(v, &mut buf), Err(err.clone()), "{p:?} for {v}");
    assert_eq!(&buf[..], &[0xAA], "bytes written on error");
    assert_eq!(p.encoded_len(v), Err(err));
}

#[test]
fn five_only_features_are_not_in_version_for_3_x() {
    for v in V3 {
        let nv = |what: &'static str| EncodeError::NotInVersion(what, v);
        let mut publish = Publish::new("t", "p");
        publish.properties.message_expiry_interval = Some(1);
        assert_encode_error(v, &Packet::Publish(publish), nv("PUBLISH properties"));

        for (t, _) in ACKS {
            let code = match t {
                PacketType::PubRel | PacketType::PubComp => ReasonCode::PacketIdentifierNotFound,
                _ => ReasonCode::NoMatchingSubscribers,
            };
            let p = ack_packet(t, Ack::with_reason(pid(1), code));
            assert_encode_error(v, &p, nv("acknowledgement reason code"));
            let mut a = Ack::new(pid(1));
            a.properties.reason_string = Some(s("r"));
            assert_encode_error(v, &ack_packet(t, a), nv("acknowledgement properties"));
        }

        let mut connack = ConnAck::new(ReasonCode::Success, false);
        connack.properties.maximum_qos = Some(1);
        assert_encode_error(v, &Packet::ConnAck(connack), nv("CONNACK properties"));

        let mut connect = Connect::new(v, "a");
        connect.properties.session_expiry_interval = Some(1);
        assert_encode_error(v, &Packet::Connect(Box::new(connect)), nv("CONNECT properties"));
        let mut connect = Connect::new(v, "a");
        connect.will = Some(Will {
            topic: s("w"),
            payload: Bytes::new(),
            qos: QoS::AtMostOnce,
            retain: false,
            properties: WillProperties {
                will_delay_interval: Some(1),
                ..WillProperties::default()
            },
        });
        assert_encode_error(v, &Packet::Connect(Box::new(connect)), nv("will properties"));

        let subscribe = |properties: SubscribeProperties, options: SubscriptionOptions| {
            Packet::Subscribe(Subscribe {
                packet_id: pid(1),
                properties,
                filters: vec![(s("a"), options)],
            })
        };
        let with_id = SubscribeProperties {
            subscription_identifier: Some(1),
            ..SubscribeProperties::default()
        };
        assert_encode_error(
            v,
            &subscribe(with_id, SubscriptionOptions::default()),
            nv("SUBSCRIBE properties"),
        );
        for options in [
            SubscriptionOptions {
                no_local: true,
                ..SubscriptionOptions::default()
            },
            SubscriptionOptions {
                retain_as_published: true,
                ..SubscriptionOptions::default()
            },
            SubscriptionOptions {
                retain_handling: RetainHandling::DoNotSend,
                ..SubscriptionOptions::default()
            },
        ] {
            assert_encode_error(
                v,
                &subscribe(SubscribeProperties::default(), options),
                nv("subscription options other than QoS"),
            );
        }

        let mut suback = SubAck {
            packet_id: pid(1),
            properties: AckProperties::default(),
            reason_codes: vec![ReasonCode::Success],
        };
        suback.properties.reason_string = Some(s("r"));
        assert_encode_error(v, &Packet::SubAck(suback), nv("SUBACK properties"));

        let mut unsubscribe = Unsubscribe {
            packet_id: pid(1),
            properties: UnsubscribeProperties::default(),
            filters: vec![s("a")],
        };
        unsubscribe.properties.user_properties.push((s("k"), s("v")));
        assert_encode_error(v, &Packet::Unsubscribe(unsubscribe), nv("UNSUBSCRIBE properties"));

        let mut unsuback = UnsubAck {
            packet_id: pid(1),
            properties: AckProperties::default(),
            reason_codes: vec![],
        };
        unsuback.properties.reason_string = Some(s("r"));
        assert_encode_error(v, &Packet::UnsubAck(unsuback.clone()), nv("UNSUBACK properties"));
        unsuback.properties = AckProperties::default();
        unsuback.reason_codes = vec![ReasonCode::Success];
        assert_encode_error(v, &Packet::UnsubAck(unsuback), nv("UNSUBACK reason codes"));

        assert_encode_error(
            v,
            &Packet::Disconnect(Disconnect::with_reason(ReasonCode::Success)),
            nv("DISCONNECT reason code"),
        );
        let mut disconnect = Disconnect::default();
        disconnect.properties.reason_string = Some(s("r"));
        assert_encode_error(v, &Packet::Disconnect(disconnect), nv("DISCONNECT properties"));

        assert_encode_error(v, &Packet::Auth(Auth::default()), nv("AUTH"));
    }
}

#[test]
fn other_encode_errors() {
    for v in BOTH {
        // v3.1.1 [MQTT-2.3.1-5] / v5 [MQTT-2.2.1-2]: an identifier exactly when QoS > 0.
        let mut p = Publish::new("t", "p");
        p.qos = QoS::AtLeastOnce;
        assert_encode_error(
            v,
            &Packet::Publish(p),
            EncodeError::PacketIdMismatch(QoS::AtLeastOnce),
        );
        let mut p = Publish::new("t", "p");
        p.packet_id = Some(pid(1));
        assert_encode_error(
            v,
            &Packet::Publish(p),
            EncodeError::PacketIdMismatch(QoS::AtMostOnce),
        );

        let empty = Packet::Subscribe(Subscribe {
            packet_id: pid(1),
            properties: SubscribeProperties::default(),
            filters: vec![],
        });
        assert_encode_error(v, &empty, EncodeError::Invalid("SUBSCRIBE without topic filters"));
        let empty = Packet::Unsubscribe(Unsubscribe {
            packet_id: pid(1),
            properties: UnsubscribeProperties::default(),
            filters: vec![],
        });
        assert_encode_error(
            v,
            &empty,
            EncodeError::Invalid("UNSUBSCRIBE without topic filters"),
        );

        // v3.1.1+v5 [MQTT-4.7.3-3]: at most 65,535 bytes.
        let long = Packet::Publish(Publish::new("a".repeat(65_536), "p"));
        assert_encode_error(v, &long, EncodeError::FieldTooLong("topic name"));
    }
    // v3.1.1 [MQTT-3.1.2-22].
    let mut c = Connect::new(V3_1_1, "a");
    c.password = Some(b(b"pw"));
    let p = Packet::Connect(Box::new(c));
    let mut buf = BytesMut::new();
    assert!(matches!(p.encode(V3_1_1, &mut buf), Err(EncodeError::Invalid(_))));
    assert!(buf.is_empty());
}
