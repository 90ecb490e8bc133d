//! Chapter 3.1 / 3.2: CONNECT and CONNACK.

use std::time::Duration;

use tern_proto::{Packet, QoS, ReasonCode, Will};

use crate::support::*;

/// A length-prefixed field.
fn field(s: &[u8]) -> Vec<u8> {
    let mut out = (s.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(s);
    out
}

/// A CONNECT with protocol `name`, `level`, connect `flags`, keep-alive 0 and `payload`
/// (5.0: with an empty property list).
fn raw_connect(name: &[u8], level: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut body = field(name);
    body.extend_from_slice(&[level, flags, 0, 0]);
    if level == 5 {
        body.push(0);
    }
    body.extend_from_slice(payload);
    assert!(body.len() < 128);
    let mut out = vec![0x10, body.len() as u8];
    out.extend_from_slice(&body);
    out
}

/// (Connect Acknowledge Flags, reason / return code) of a CONNACK frame.
fn connack_head(frame: &[u8]) -> (u8, u8) {
    assert_eq!(frame[0], 0x20, "expected CONNACK, got {frame:02X?}");
    (frame[2], frame[3])
}

#[tokio::test]
async fn connack_comes_first_and_short_alphanumeric_ids_are_accepted() {
    // v3.1.1 [MQTT-3.1.3-5] / v5 [MQTT-3.1.3-5]: identifiers of 1 to 23 characters from
    // 0-9a-zA-Z are accepted. v3.1.1 [MQTT-3.2.0-1] / v5 [MQTT-3.2.0-1]: the CONNACK is the
    // first packet; v3.1.1 [MQTT-3.1.4-4] / v5 [MQTT-3.1.4-5]: with return code 0;
    // v3.1.1 [MQTT-3.2.2-1] / v5 [MQTT-3.2.2-2]: Clean Session / Clean Start 1 gives Session
    // Present 0; v5 [MQTT-3.2.2-1]: the other flag bits are 0; v5 [MQTT-3.2.2-8]: a Connect
    // Reason Code. Over TCP, an ordered lossless byte stream (v3.1.1 [MQTT-7.1.1-1],
    // v5 [MQTT-4.2.0-1]).
    let b = start().await;
    for id in ["a", "Z", "0123456789abcdefghijXYZ"] {
        let mut c = Raw::open(b.addr(), V3).await;
        c.send_bytes(&raw_connect(b"MQTT", 4, 0x02, &field(id.as_bytes())))
            .await;
        c.expect_hex("20 02 00 00").await;
        c.sync().await;

        let mut c = Raw::open(b.addr(), V5).await;
        c.send_bytes(&raw_connect(b"MQTT", 5, 0x02, &field(id.as_bytes())))
            .await;
        let frame = c.recv_frame().await.unwrap();
        assert_eq!(connack_head(&frame), (0x00, 0x00), "{id}");
        c.sync().await;
    }
}

#[tokio::test]
async fn session_present_says_whether_the_session_was_kept() {
    let b = start().await;
    for v in [V3, V5] {
        // v3.1.1 [MQTT-3.2.2-3] / v5 [MQTT-3.2.2-3], v5 [MQTT-3.1.2-6]: no session yet: a new
        // one, Session Present 0.
        let (mut s, ack) = Raw::connect_with(b.addr(), persistent(v, "sp")).await;
        assert_eq!(
            (ack.session_present, ack.reason_code),
            (false, ReasonCode::Success)
        );
        s.subscribe("sp/t", QoS::AtLeastOnce).await;
        s.disconnect().await;

        // v3.1.1 [MQTT-3.1.2-4], v3.1.1 [MQTT-3.2.2-2], v3.1.1 [MQTT-3.1.4-3] / v5 [MQTT-3.1.2-5],
        // v5 [MQTT-3.1.4-4], v5 [MQTT-3.1.2-23]: the same identifier resumes the kept session,
        // Session Present 1, its subscription still in place.
        let (mut s, ack) = Raw::connect_with(b.addr(), persistent(v, "sp")).await;
        assert!(ack.session_present, "{v}");
        let mut p = Raw::connect(b.addr(), v, "sp-pub").await;
        p.publish("sp/t", "kept", QoS::AtLeastOnce, false).await;
        let got = s.recv_publish().await;
        s.ack(&got).await;
        s.disconnect().await;

        // v3.1.1+v5 [MQTT-3.1.3-2]: the state belongs to that identifier, not to others.
        let (o, ack) = Raw::connect_with(b.addr(), persistent(v, "sp-other")).await;
        assert!(!ack.session_present);
        o.disconnect().await;
        end_session(b.addr(), v, "sp-other").await;

        // v3.1.1 [MQTT-3.1.2-6] / v5 [MQTT-3.1.2-4]: a clean start discards the session:
        // Session Present 0 and the subscription is gone.
        let (mut s, ack) = Raw::connect_with(b.addr(), connect(v, "sp")).await;
        assert!(!ack.session_present);
        p.publish("sp/t", "lost", QoS::AtLeastOnce, false).await;
        s.expect_silence(200).await;
        s.disconnect().await;
        // ... and it is not reused by a later session.
        let (s, ack) = Raw::connect_with(b.addr(), persistent(v, "sp")).await;
        assert!(!ack.session_present);
        s.disconnect().await;
        end_session(b.addr(), v, "sp").await;
    }
}

/// Rounds of the clean-session race per version; `TERN_RACE_ROUNDS` raises it for longer runs.
fn race_rounds() -> usize {
    std::env::var("TERN_RACE_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200)
}

// Several worker threads, so that the broker really handles the two connections in parallel.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_clean_session_that_just_ended_is_never_resumed() {
    // v3.1.1 [MQTT-3.1.2-6]: a Clean Session 1 session lasts as long as its connection and is
    // never reused; v5 [MQTT-3.1.2-6]: Clean Start 0 without a session creates a new one (a
    // Session Expiry Interval of 0 ends the session with its connection). The client sends
    // DISCONNECT and connects again at once, without waiting for the broker to close the first
    // connection: whichever of the two the broker handles first, Session Present must be 0.
    let b = start().await;
    for v in [V3, V5] {
        for round in 0..race_rounds() {
            let id = format!("race-{round}");
            let (mut s, ack) = Raw::connect_with(b.addr(), persistent(v, &id)).await;
            assert!(!ack.session_present, "{v} round {round}: fresh id");
            s.subscribe("race/t", QoS::AtLeastOnce).await;
            s.disconnect().await;

            let (mut s, ack) = Raw::connect_with(b.addr(), connect(v, &id)).await;
            assert!(!ack.session_present, "{v} round {round}: clean start");
            s.send(Packet::Disconnect(Default::default())).await;

            let (s2, ack) = Raw::connect_with(b.addr(), persistent(v, &id)).await;
            assert!(
                !ack.session_present,
                "{v} round {round}: the clean session ended with its connection"
            );
            drop(s);
            s2.disconnect().await;
            end_session(b.addr(), v, &id).await;
        }
    }
}

#[tokio::test]
async fn a_refused_connect_is_answered_then_closed_and_nothing_after_it_is_processed() {
    let b = start_with(|c| c.max_client_id_len = 23).await;
    let mut watcher = Raw::connect(b.addr(), V5, "watcher").await;
    watcher.subscribe("leak/#", QoS::AtMostOnce).await;
    let leak = hex("30 06 00 04 6C 65 61 6B");
    let leak5 = hex("30 07 00 04 6C 65 61 6B 00");

    // v3.1.1 [MQTT-3.1.3-8]: empty identifier with Clean Session 0: return code 0x02;
    // v3.1.1 [MQTT-3.2.2-4]: Session Present 0; v3.1.1 [MQTT-3.2.2-5]: then closed;
    // v3.1.1 [MQTT-3.1.4-5]: the PUBLISH sent right behind the CONNECT is not processed.
    let mut c = Raw::open(b.addr(), V3).await;
    let mut bytes = raw_connect(b"MQTT", 4, 0x00, &field(b""));
    bytes.extend_from_slice(&leak);
    c.send_bytes(&bytes).await;
    c.expect_hex("20 02 00 02").await;
    c.expect_closed_silently().await;

    // v3.1.1 [MQTT-3.1.3-9]: an identifier the server does not accept (too long here).
    let long = b"0123456789abcdefghijklmn";
    let mut c = Raw::open(b.addr(), V3).await;
    let mut bytes = raw_connect(b"MQTT", 4, 0x02, &field(long));
    bytes.extend_from_slice(&leak);
    c.send_bytes(&bytes).await;
    c.expect_hex("20 02 00 02").await;
    c.expect_closed_silently().await;

    // v5 [MQTT-3.1.3-8], v5 [MQTT-3.1.4-2]: 0x85 Client Identifier not valid, then closed
    // (v5 [MQTT-3.2.2-7], v5 [MQTT-4.13.2-1]); v5 [MQTT-3.2.2-6]: Session Present 0;
    // v5 [MQTT-3.1.4-6]: the PUBLISH behind it is not processed.
    let mut c = Raw::open(b.addr(), V5).await;
    let mut bytes = raw_connect(b"MQTT", 5, 0x02, &field(long));
    bytes.extend_from_slice(&leak5);
    c.send_bytes(&bytes).await;
    let frame = c.recv_frame().await.unwrap();
    assert_eq!(connack_head(&frame), (0x00, 0x85));
    c.expect_closed_silently().await;

    watcher.expect_silence(300).await;
}

#[tokio::test]
async fn a_wrong_protocol_name_or_version_is_refused() {
    let b = start().await;
    // v3.1.1 [MQTT-3.1.2-1]: not "MQTT": closed, never processed under this specification.
    let mut c = Raw::open(b.addr(), V3).await;
    c.send_bytes(&raw_connect(b"MQTX", 4, 0x02, &field(b"n"))).await;
    c.expect_closed_silently().await;
    // v5 [MQTT-3.1.2-1]: a CONNACK of 0x80 or more may come first; then the close.
    let mut c = Raw::open(b.addr(), V5).await;
    c.send_bytes(&raw_connect(b"MQTX", 5, 0x02, &field(b"n"))).await;
    if let Some(frame) = c.recv_frame().await {
        assert!(connack_head(&frame).1 >= 0x80, "{frame:02X?}");
        c.expect_closed_silently().await;
    }
    // v5 [MQTT-3.1.2-2]: a version other than 5 that is not accepted: CONNACK (0x84, or
    // 0x01 in the 3.1.1 form a client of an unknown version can read), then the close.
    for level in [0u8, 2, 6, 255] {
        let mut c = Raw::open(b.addr(), V3).await;
        c.send_bytes(&raw_connect(b"MQTT", level, 0x02, &field(b"n")))
            .await;
        let frame = c.recv_frame().await.unwrap();
        assert!(
            matches!(connack_head(&frame).1, 0x01 | 0x84),
            "{level}: {frame:02X?}"
        );
        c.expect_closed_silently().await;
    }
}

#[tokio::test]
async fn a_connect_that_does_not_match_its_format_is_closed() {
    let b = start().await;
    // The Will Flag is set but the will fields are missing.
    // v3.1.1 [MQTT-3.1.4-1], v3.1.1 [MQTT-3.2.2-6]: closed without a CONNACK.
    let mut c = Raw::open(b.addr(), V3).await;
    c.send_bytes(&raw_connect(b"MQTT", 4, 0x06, &field(b"w"))).await;
    c.expect_closed_silently().await;
    // v5 [MQTT-3.1.4-1]: closed, at most after a CONNACK of 0x80 or more; never a DISCONNECT
    // (v5 [MQTT-3.14.0-1]).
    let mut c = Raw::open(b.addr(), V5).await;
    c.send_bytes(&raw_connect(b"MQTT", 5, 0x06, &field(b"w"))).await;
    if let Some(frame) = c.recv_frame().await {
        assert!(connack_head(&frame).1 >= 0x80, "{frame:02X?}");
        c.expect_closed_silently().await;
    }
}

#[tokio::test]
async fn no_disconnect_before_a_successful_connack() {
    let b = start().await;
    // v5 [MQTT-3.14.0-1], v5 [MQTT-4.13.1-1]: a PUBLISH instead of CONNECT is a Protocol
    // Error; the connection is closed without any DISCONNECT.
    let mut c = Raw::open(b.addr(), V5).await;
    c.send_hex("30 05 00 01 61 00 78").await;
    c.expect_closed_silently().await;
}

#[tokio::test]
async fn a_second_connect_gets_no_second_connack() {
    let b = start().await;
    let mut c = Raw::connect(b.addr(), V5, "twice").await;
    c.send(Packet::Connect(Box::new(connect(V5, "twice")))).await;
    // v5 [MQTT-3.2.0-2]: never a second CONNACK; v5 [MQTT-3.1.0-2]: DISCONNECT 0x82
    // (v5 [MQTT-3.14.2-1]), after which nothing is sent and the connection is closed
    // (v5 [MQTT-3.14.4-1], v5 [MQTT-3.14.4-2]).
    assert_eq!(c.expect_closed().await, Some(ReasonCode::ProtocolError));
}

#[tokio::test]
async fn capabilities_the_server_lacks_are_refused_in_connect_v5() {
    let b = start_with(|c| {
        c.max_qos = 1;
        c.retain_available = false;
    })
    .await;
    let will = |qos: QoS, retain: bool| Will {
        topic: "w/t".into(),
        payload: "x".into(),
        qos,
        retain,
        properties: Default::default(),
    };
    // v5 [MQTT-3.2.2-9]: Maximum QoS 1 is advertised; v5 [MQTT-3.2.2-10]: a SUBSCRIBE asking
    // for QoS 2 is still accepted (and granted QoS 1).
    let (mut c, ack) = Raw::connect_with(b.addr(), connect(V5, "caps")).await;
    assert_eq!(ack.properties.maximum_qos, Some(1));
    assert_eq!(
        c.subscribe("any", QoS::ExactlyOnce).await.reason_codes,
        vec![ReasonCode::GrantedQoS1]
    );
    // v5 [MQTT-3.2.2-12]: a Will QoS above it: CONNACK 0x9B, then closed.
    let mut w = connect(V5, "w-qos");
    w.will = Some(will(QoS::ExactlyOnce, false));
    let (mut c, ack) = Raw::connect_with(b.addr(), w).await;
    assert_eq!(
        (ack.reason_code, ack.session_present),
        (ReasonCode::QoSNotSupported, false)
    );
    c.expect_closed_silently().await;
    // v5 [MQTT-3.2.2-13]: Will Retain without retain support: CONNACK 0x9A, then closed.
    let mut w = connect(V5, "w-retain");
    w.will = Some(will(QoS::AtMostOnce, true));
    let (mut c, ack) = Raw::connect_with(b.addr(), w).await;
    assert_eq!(ack.reason_code, ReasonCode::RetainNotSupported);
    c.expect_closed_silently().await;
    // v5 [MQTT-3.2.2-19], v5 [MQTT-3.2.2-20]: a client accepting packets of 16 bytes at most
    // gets the refusal without a Reason String or User Property that would not fit.
    let mut w = connect(V5, "w-small");
    w.will = Some(will(QoS::ExactlyOnce, false));
    w.properties.maximum_packet_size = Some(16);
    let mut c = Raw::open(b.addr(), V5).await;
    c.send(Packet::Connect(Box::new(w))).await;
    let frame = c.recv_frame().await.unwrap();
    assert!(
        frame.len() <= 16,
        "CONNACK of {} bytes: {frame:02X?}",
        frame.len()
    );
    assert_eq!(connack_head(&frame), (0x00, 0x9B));
    c.expect_closed_silently().await;
}

#[tokio::test]
async fn connack_carries_only_what_was_asked_for_v5() {
    let b = start().await;
    // v5 [MQTT-3.1.2-28]: Request Response Information absent or 0: no Response Information.
    let (_c, ack) = Raw::connect_with(b.addr(), connect(V5, "ri-absent")).await;
    assert_eq!(ack.properties.response_information, None);
    let mut c = connect(V5, "ri-0");
    c.properties.request_response_information = Some(0);
    let (_c, ack) = Raw::connect_with(b.addr(), c).await;
    assert_eq!(ack.properties.response_information, None);
    // v5 [MQTT-4.12.0-6]: no Authentication Method in CONNECT: none in CONNACK, and no AUTH.
    assert_eq!(ack.properties.authentication_method, None);
    assert_eq!(ack.properties.authentication_data, None);
    // v5 [MQTT-3.2.2-22]: without a Server Keep Alive the client's own value applies.
    assert_eq!(ack.properties.server_keep_alive, None);
}

#[tokio::test]
async fn assigned_client_identifiers_are_unique_and_name_a_real_session_v5() {
    let b = start().await;
    let mut first = persistent(V5, "");
    first.clean_start = true;
    let (c1, a1) = Raw::connect_with(b.addr(), first.clone()).await;
    let (c2, a2) = Raw::connect_with(b.addr(), first).await;
    // v5 [MQTT-3.1.3-6], v5 [MQTT-3.2.2-16]: a unique identifier is assigned and returned.
    let id1 = a1.properties.assigned_client_identifier.expect("assigned");
    let id2 = a2.properties.assigned_client_identifier.expect("assigned");
    assert!(!id1.is_empty() && id1 != id2);
    c2.disconnect().await;
    let mut c1 = c1;
    c1.subscribe("assigned/t", QoS::AtLeastOnce).await;
    c1.disconnect().await;
    // v5 [MQTT-3.1.3-7]: the CONNECT was processed as if that identifier had been sent:
    // its session can be resumed by name.
    let (c, ack) = Raw::connect_with(b.addr(), persistent(V5, &id1)).await;
    assert!(ack.session_present);
    c.disconnect().await;
    end_session(b.addr(), V5, &id1).await;
    end_session(b.addr(), V5, &id2).await;
}

#[tokio::test]
async fn an_expired_session_is_discarded_v5() {
    let (b, clock) = start_clocked(|_| {}).await;
    let mut c = persistent(V5, "expires");
    c.properties.session_expiry_interval = Some(1);
    let (mut s, _) = Raw::connect_with(b.addr(), c.clone()).await;
    s.subscribe("e/t", QoS::AtLeastOnce).await;
    // v5 [MQTT-4.1.0-1]: the state stays while the connection is open, longer than the expiry.
    pass(&clock, Duration::from_secs(3600)).await;
    let mut p = Raw::connect(b.addr(), V5, "expires-pub").await;
    p.publish("e/t", "still here", QoS::AtLeastOnce, false).await;
    let got = s.recv_publish().await;
    s.ack(&got).await;
    s.disconnect().await;
    pass(&clock, Duration::from_millis(1500)).await;
    // v5 [MQTT-4.1.0-2]: closed and the Session Expiry Interval has passed: discarded.
    let (_s, ack) = Raw::connect_with(b.addr(), c).await;
    assert!(!ack.session_present);
}

// Several worker threads, so that the broker really handles the two connections in parallel.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_late_disconnect_does_not_shorten_the_session_of_the_connection_that_took_over() {
    // v5 [MQTT-3.1.2-5]: a session resumed with Clean Start 0 keeps the expiry its new
    // connection asked for. The old connection's DISCONNECT (Session Expiry Interval 0) may be
    // handled after the new CONNECT took the session over: it must not end the new session.
    let b = start().await;
    for round in 0..race_rounds() / 2 {
        let id = format!("late-{round}");
        let (mut old, _) = Raw::connect_with(b.addr(), persistent(V5, &id)).await;
        old.subscribe("late/t", QoS::AtLeastOnce).await;
        let mut d = tern_proto::Disconnect::default();
        d.properties.session_expiry_interval = Some(0);
        old.send(Packet::Disconnect(d)).await;
        let (new, ack) = Raw::connect_with(b.addr(), persistent(V5, &id)).await;
        drop(old);
        if ack.session_present {
            // The new connection holds the session, with its own expiry: leaving keeps it.
            new.disconnect().await;
            let (again, ack) = Raw::connect_with(b.addr(), persistent(V5, &id)).await;
            assert!(
                ack.session_present,
                "round {round}: the old DISCONNECT ended the new session"
            );
            again.disconnect().await;
        } else {
            new.disconnect().await;
        }
        end_session(b.addr(), V5, &id).await;
    }
}
