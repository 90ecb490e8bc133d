//! Chapter 3.4 to 3.7: PUBACK, PUBREC, PUBREL, PUBCOMP.

use std::time::Duration;

use tern_proto::{Ack, Packet, QoS, ReasonCode};

use crate::support::*;

#[tokio::test]
async fn acknowledgements_use_their_own_reason_codes_and_fit_the_client_v5() {
    let b = start().await;
    // A client that accepts packets of at most 5 bytes: every acknowledgement below fits,
    // because none carries a Reason String or User Property (v5 [MQTT-3.4.2-2],
    // v5 [MQTT-3.4.2-3], v5 [MQTT-3.5.2-2], v5 [MQTT-3.5.2-3], v5 [MQTT-3.6.2-2],
    // v5 [MQTT-3.6.2-3], v5 [MQTT-3.7.2-2], v5 [MQTT-3.7.2-3]).
    let mut c = connect(V5, "acks");
    c.properties.maximum_packet_size = Some(5);
    let (mut c, _) = Raw::connect_with(b.addr(), c).await;
    // v5 [MQTT-3.4.2-1]: PUBACK 0x10 No matching subscribers.
    c.send_hex("32 06 00 01 74 00 05 00").await;
    c.expect_hex("40 03 00 05 10").await;
    // v5 [MQTT-3.5.2-1]: PUBREC 0x10.
    c.send_hex("34 06 00 01 74 00 06 00").await;
    c.expect_hex("50 03 00 06 10").await;
    // v5 [MQTT-3.6.2-1]: a PUBREC for an unknown identifier gets PUBREL 0x92.
    c.send_hex("50 02 00 42").await;
    c.expect_hex("62 03 00 42 92").await;
    // v5 [MQTT-3.7.2-1]: a PUBREL for an unknown identifier gets PUBCOMP 0x92.
    c.send_hex("62 02 00 43").await;
    c.expect_hex("70 03 00 43 92").await;
    c.send_hex("62 02 00 06").await;
    c.expect_hex("70 02 00 06").await;
}

#[tokio::test]
async fn pubrel_with_other_flags_is_malformed() {
    let b = start().await;
    // v3.1.1 [MQTT-3.6.1-1] / v5 [MQTT-3.6.1-1]: PUBREL flags must be 0010; more generally
    // reserved flags must have their listed value (v3.1.1 [MQTT-2.2.2-1] / v5 [MQTT-2.1.3-1]),
    // and a receiver of other flags closes the connection (v3.1.1 [MQTT-2.2.2-2]): PUBREL 0000,
    // PINGREQ 0001, PUBACK 0010.
    for bytes in ["60 02 00 01", "C1 00", "42 02 00 01"] {
        let mut c = Raw::connect(b.addr(), V3, "rel").await;
        c.send_hex(bytes).await;
        assert_eq!(c.expect_closed().await, None, "{bytes}");
        let mut c = Raw::connect(b.addr(), V5, "rel").await;
        c.send_hex(bytes).await;
        assert_eq!(
            c.expect_closed().await,
            Some(ReasonCode::MalformedPacket),
            "{bytes}"
        );
    }
}

#[tokio::test]
async fn an_error_puback_completes_the_delivery_v5() {
    let b = start().await;
    let (mut sub, _) = Raw::connect_with(b.addr(), persistent(V5, "eack")).await;
    sub.subscribe("eack/t", QoS::AtLeastOnce).await;
    let mut publ = Raw::connect(b.addr(), V5, "eack-pub").await;
    publ.publish("eack/t", "x", QoS::AtLeastOnce, false).await;
    let p = sub.recv_publish().await;
    sub.send(Packet::PubAck(Ack::with_reason(
        p.packet_id.unwrap(),
        ReasonCode::ImplementationSpecificError,
    )))
    .await;
    sub.sync().await;
    drop(sub);
    tokio::time::sleep(Duration::from_millis(100)).await;
    // v5 [MQTT-4.4.0-2]: treated as acknowledged: not sent again on reconnection.
    let (mut sub, ack) = Raw::connect_with(b.addr(), persistent(V5, "eack")).await;
    assert!(ack.session_present);
    sub.expect_silence(300).await;
    sub.disconnect().await;
    end_session(b.addr(), V5, "eack").await;
}
