//! Chapter 3.8 to 3.11: SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK.

use std::time::Duration;

use tern_proto::{Connect, QoS, ReasonCode};

use crate::support::*;

/// SUBSCRIBE id 10: "a" QoS 1, "b/#" QoS 2, "c" QoS 0, "bad#" QoS 0 (invalid).
const FILTERS: &str = "00 01 61 01 00 03 62 2F 23 02 00 01 63 00 00 04 62 61 64 23 00";

#[tokio::test]
async fn suback_has_one_code_per_filter_in_order() {
    let b = start().await;
    // v3.1.1 [MQTT-3.8.4-1], v3.1.1 [MQTT-3.8.4-2], v3.1.1 [MQTT-2.3.1-7]: a SUBACK with the
    // SUBSCRIBE's identifier; v3.1.1 [MQTT-3.8.4-4], v3.1.1 [MQTT-3.8.4-5],
    // v3.1.1 [MQTT-3.9.3-1]: one return code per filter, in order; v3.1.1 [MQTT-3.9.3-2]:
    // only 00, 01, 02 and 80.
    let mut c = Raw::connect(b.addr(), V3, "sa3").await;
    c.send_hex(&format!("82 17 00 0A {FILTERS}")).await;
    c.expect_hex("90 06 00 0A 01 02 00 80").await;
    // v5 [MQTT-3.8.4-1], v5 [MQTT-3.8.4-2], v5 [MQTT-2.2.1-6], v5 [MQTT-3.8.4-5],
    // v5 [MQTT-3.8.4-6], v5 [MQTT-3.8.4-7], v5 [MQTT-3.9.3-1], v5 [MQTT-3.9.3-2]: the same in
    // 5.0 (0x8F for the invalid filter); v5 [MQTT-3.1.2-29]: no Reason String after Request
    // Problem Information 0; v5 [MQTT-2.2.2-1]: no properties is a Property Length of 0.
    let mut c5 = connect(V5, "sa5");
    c5.properties.request_problem_information = Some(0);
    let (mut c5, _) = Raw::connect_with(b.addr(), c5).await;
    c5.send_hex(&format!("82 18 00 0A 00 {FILTERS}")).await;
    c5.expect_hex("90 07 00 0A 00 01 02 00 8F").await;
    // The granted subscriptions work.
    let mut p = Raw::connect(b.addr(), V3, "sa-pub").await;
    p.publish("b/x", "x", QoS::ExactlyOnce, false).await;
    assert_eq!(c.recv_publish().await.qos, QoS::ExactlyOnce);
    assert_eq!(c5.recv_publish().await.qos, QoS::ExactlyOnce);
}

#[tokio::test]
async fn invalid_filters_fail_one_by_one() {
    let b = start().await;
    // SUBSCRIBE id 2: "a#", "a+/b", "ok" (QoS 0 each).
    let filters = "00 02 61 23 00 00 04 61 2B 2F 62 00 00 02 6F 6B 00";
    // v3.1.1 [MQTT-4.7.1-2]: `#` last and alone in its level; v3.1.1 [MQTT-4.7.1-3]: `+` alone
    // in its level: failure (0x80) for those filters only.
    let mut c = Raw::connect(b.addr(), V3, "if3").await;
    c.send_hex(&format!("82 13 00 02 {filters}")).await;
    c.expect_hex("90 05 00 02 80 80 00").await;
    // v5 [MQTT-4.7.1-1], v5 [MQTT-4.7.1-2]: 0x8F Topic Filter invalid.
    let mut c5 = connect(V5, "if5");
    c5.properties.request_problem_information = Some(0);
    let (mut c5, _) = Raw::connect_with(b.addr(), c5).await;
    c5.send_hex(&format!("82 14 00 02 00 {filters}")).await;
    c5.expect_hex("90 06 00 02 00 8F 8F 00").await;
    // v3.1.1 [MQTT-4.7.3-1] / v5 [MQTT-4.7.3-1]: an empty filter fails too.
    c.send_hex("82 05 00 03 00 00 00").await;
    c.expect_hex("90 03 00 03 80").await;
    c5.send_hex("82 06 00 03 00 00 00 00").await;
    c5.expect_hex("90 04 00 03 00 8F").await;
    // v3.1.1 [MQTT-4.7.3-2] / v5 [MQTT-4.7.3-2]: U+0000 in a filter: malformed, closed.
    c.send_hex("82 08 00 04 00 03 61 00 62 00").await;
    assert_eq!(c.expect_closed().await, None);
    c5.send_hex("82 09 00 04 00 00 03 61 00 62 00").await;
    assert_eq!(c5.expect_closed().await, Some(ReasonCode::MalformedPacket));
}

#[tokio::test]
async fn suback_reason_string_is_left_out_when_it_would_not_fit_v5() {
    let b = start().await;
    let mut c = connect(V5, "small");
    c.properties.maximum_packet_size = Some(12);
    let (mut c, _) = Raw::connect_with(b.addr(), c).await;
    // SUBSCRIBE id 1: "bad#" QoS 0.
    c.send_hex("82 0A 00 01 00 00 04 62 61 64 23 00").await;
    // v5 [MQTT-3.9.2-1], v5 [MQTT-3.9.2-2]: the SUBACK fits in 12 bytes: no Reason String.
    let frame = c.recv_frame().await.unwrap();
    assert!(frame.len() <= 12, "{frame:02X?}");
    assert_eq!(frame, hex("90 04 00 01 00 8F"));
}

#[tokio::test]
async fn subscription_options_are_checked() {
    let b = start().await;
    // v3.1.1 [MQTT-3.8.3-4]: QoS 3, or a reserved bit, in the requested QoS byte: closed.
    for options in ["03", "04", "80"] {
        let mut c = Raw::connect(b.addr(), V3, "opt3").await;
        c.send_hex(&format!("82 06 00 01 00 01 61 {options}")).await;
        assert_eq!(c.expect_closed().await, None, "{options}");
    }
    // v5 [MQTT-3.8.3-5]: reserved bits 6 and 7: Malformed Packet.
    let mut c = Raw::connect(b.addr(), V5, "opt5").await;
    c.send_hex("82 07 00 01 00 00 01 61 C0").await;
    assert_eq!(c.expect_closed().await, Some(ReasonCode::MalformedPacket));
    // v5 [MQTT-3.8.3-4]: No Local on a shared subscription: Protocol Error.
    let mut c = Raw::connect(b.addr(), V5, "opt5").await;
    c.send_hex("82 10 00 01 00 00 0A 24 73 68 61 72 65 2F 67 2F 74 04")
        .await;
    assert_eq!(c.expect_closed().await, Some(ReasonCode::ProtocolError));
}

#[tokio::test]
async fn a_server_without_wildcard_subscriptions_refuses_them() {
    let b = start_with(|c| c.wildcard_subscriptions = false).await;
    // v3.1.1 [MQTT-3.8.3-2]: every filter with a wildcard is refused (0x80).
    let mut c = Raw::connect(b.addr(), V3, "nw").await;
    c.send_hex("82 0E 00 05 00 03 77 2F 2B 00 00 03 77 2F 61 01")
        .await;
    c.expect_hex("90 04 00 05 80 01").await;
}

#[tokio::test]
async fn resubscribing_replaces_the_subscription_and_resends_retained() {
    let b = start().await;
    for v in [V3, V5] {
        let mut publ = Raw::connect(b.addr(), v, "rs-pub").await;
        publ.publish("rs/r", "kept", QoS::AtLeastOnce, true).await;
        let mut sub = Raw::connect(b.addr(), v, "rs-sub").await;
        sub.subscribe("rs/#", QoS::AtMostOnce).await;
        assert!(sub.recv_publish().await.retain);
        // v3.1.1 [MQTT-3.8.4-3] / v5 [MQTT-3.8.4-3]: the same filter again replaces the
        // subscription; v5 [MQTT-3.8.4-4]: with Retain Handling 0 the retained message comes
        // again, and no message is lost or doubled by the replacement.
        sub.subscribe("rs/#", QoS::AtLeastOnce).await;
        let again = sub.recv_publish().await;
        assert!(again.retain);
        sub.ack(&again).await;
        publ.publish("rs/live", "x", QoS::AtLeastOnce, false).await;
        let live = sub.recv_publish().await;
        assert_eq!((live.qos, &live.payload[..]), (QoS::AtLeastOnce, &b"x"[..]));
        sub.ack(&live).await;
        sub.expect_silence(150).await;
        publ.publish("rs/r", "", QoS::AtMostOnce, true).await;
        sub.disconnect().await;
        publ.disconnect().await;
    }
}

/// UNSUBSCRIBE id 11: "u/b", "u/#", "nope".
const UNSUB: &str = "00 03 75 2F 62 00 03 75 2F 23 00 04 6E 6F 70 65";

#[tokio::test]
async fn unsubscribe_deletes_exact_matches_only_and_is_always_answered() {
    let b = start().await;
    for v in [V3, V5] {
        let mut sub = Raw::connect(b.addr(), v, "us").await;
        sub.subscribe("u/+", QoS::AtMostOnce).await;
        sub.subscribe("u/b", QoS::AtMostOnce).await;
        if v.is_v5() {
            sub.send_hex(&format!("A2 13 00 0B 00 {UNSUB}")).await;
            // v5 [MQTT-3.10.4-4], v5 [MQTT-3.10.4-5], v5 [MQTT-2.2.1-6]: UNSUBACK with the
            // identifier even for filters that matched nothing; v5 [MQTT-3.10.4-6],
            // v5 [MQTT-3.11.3-1], v5 [MQTT-3.11.3-2]: one Unsubscribe Reason Code per filter,
            // in order.
            sub.expect_hex("B0 06 00 0B 00 00 11 11").await;
        } else {
            sub.send_hex(&format!("A2 12 00 0B {UNSUB}")).await;
            // v3.1.1 [MQTT-3.10.4-4], v3.1.1 [MQTT-3.10.4-5], v3.1.1 [MQTT-3.10.4-6],
            // v3.1.1 [MQTT-2.3.1-7]: one UNSUBACK with the identifier.
            sub.expect_hex("B0 02 00 0B").await;
        }
        // v3.1.1 [MQTT-3.10.4-1] / v5 [MQTT-3.10.4-1]: "u/#" did not delete "u/+": compared
        // character by character, only "u/b" went.
        let mut publ = Raw::connect(b.addr(), v, "us-pub").await;
        publ.publish("u/b", "x", QoS::AtMostOnce, false).await;
        sub.recv_publish().await;
        sub.expect_silence(100).await;
        // v3.1.1 [MQTT-3.10.4-2] / v5 [MQTT-3.10.4-2]: after unsubscribing, nothing new is added.
        sub.send_hex(if v.is_v5() {
            "A2 08 00 0C 00 00 03 75 2F 2B"
        } else {
            "A2 07 00 0C 00 03 75 2F 2B"
        })
        .await;
        sub.recv().await;
        publ.publish("u/b", "y", QoS::AtMostOnce, false).await;
        sub.expect_silence(150).await;
    }
}

#[tokio::test]
async fn unsubscribe_completes_deliveries_already_started() {
    let b = start().await;
    for v in [V3, V5] {
        let (mut sub, _) = Raw::connect_with(b.addr(), persistent(v, "uc")).await;
        sub.subscribe("uc/t", QoS::AtLeastOnce).await;
        let mut publ = Raw::connect(b.addr(), v, "uc-pub").await;
        publ.publish("uc/t", "started", QoS::AtLeastOnce, false).await;
        let p = sub.recv_publish().await;
        sub.send_hex(if v.is_v5() {
            "A2 09 00 0D 00 00 04 75 63 2F 74"
        } else {
            "A2 08 00 0D 00 04 75 63 2F 74"
        })
        .await;
        sub.recv().await;
        drop(sub);
        tokio::time::sleep(Duration::from_millis(100)).await;
        // v3.1.1 [MQTT-3.10.4-3] / v5 [MQTT-3.10.4-3]: the QoS 1 delivery that had started is
        // completed: it is resent on reconnection.
        let (mut sub, _) = Raw::connect_with(b.addr(), persistent(v, "uc")).await;
        let again = sub.recv_publish().await;
        assert_eq!((again.packet_id, again.dup), (p.packet_id, true));
        sub.ack(&again).await;
        sub.disconnect().await;
        end_session(b.addr(), v, "uc").await;
    }
}

#[tokio::test]
async fn malformed_unsubscribe_closes_the_connection() {
    let b = start().await;
    // v3.1.1 [MQTT-3.10.1-1] / v5 [MQTT-3.10.1-1]: flags other than 0010.
    let mut c = Raw::connect(b.addr(), V3, "mu").await;
    c.send_hex("A0 05 00 01 00 01 61").await;
    assert_eq!(c.expect_closed().await, None);
    let mut c = Raw::connect(b.addr(), V5, "mu").await;
    c.send_hex("A0 06 00 01 00 00 01 61").await;
    assert_eq!(c.expect_closed().await, Some(ReasonCode::MalformedPacket));
    // v3.1.1 [MQTT-3.10.3-2] / v5 [MQTT-3.10.3-2]: no filter at all.
    let mut c = Raw::connect(b.addr(), V3, "mu").await;
    c.send_hex("A2 02 00 01").await;
    assert_eq!(c.expect_closed().await, None);
    let mut c = Raw::connect(b.addr(), V5, "mu").await;
    c.send_hex("A2 03 00 01 00").await;
    assert!(c.expect_closed().await.is_some());
}

#[tokio::test]
async fn unsuback_fits_a_small_maximum_packet_size_v5() {
    let b = start().await;
    let mut c: Connect = connect(V5, "us-small");
    c.properties.maximum_packet_size = Some(6);
    let (mut c, _) = Raw::connect_with(b.addr(), c).await;
    // v5 [MQTT-3.11.2-1], v5 [MQTT-3.11.2-2]: no Reason String or User Property that would
    // make the UNSUBACK larger than the client accepts.
    c.send_hex("A2 06 00 0E 00 00 01 7A").await;
    c.expect_hex("B0 04 00 0E 00 11").await;
}
