//! Chapter 3.12 to 3.15 and 4.12, 4.13: PINGREQ, DISCONNECT, AUTH, errors.

use std::sync::Arc;

use tern_proto::{Packet, ReasonCode};

use crate::challenge::{auth_packet, Challenge};
use crate::support::*;

#[tokio::test]
async fn pingreq_is_answered_with_pingresp() {
    let b = start().await;
    for v in [V3, V5] {
        let mut c = Raw::connect(b.addr(), v, "ping").await;
        // v3.1.1+v5 [MQTT-3.12.4-1]
        c.send_hex("C0 00").await;
        c.expect_hex("D0 00").await;
    }
}

#[tokio::test]
async fn disconnect_with_reserved_bits_set_is_malformed() {
    let b = start().await;
    // v3.1.1 [MQTT-3.14.1-1]: the server disconnects the client.
    let mut c = Raw::connect(b.addr(), V3, "dflags").await;
    c.send_hex("E1 00").await;
    assert_eq!(c.expect_closed().await, None);
    // v5 [MQTT-3.14.1-1]: DISCONNECT 0x81 Malformed Packet.
    let mut c = Raw::connect(b.addr(), V5, "dflags").await;
    c.send_hex("E1 00").await;
    assert_eq!(c.expect_closed().await, Some(ReasonCode::MalformedPacket));
}

#[tokio::test]
async fn a_server_disconnect_is_its_last_packet_v5() {
    let b = start().await;
    let mut old = Raw::connect(b.addr(), V5, "taken").await;
    let _new = Raw::connect(b.addr(), V5, "taken").await;
    // v5 [MQTT-3.14.2-1]: 0x8E Session taken over, a DISCONNECT reason code;
    // v5 [MQTT-3.14.2-2]: no Session Expiry Interval from the server;
    // v5 [MQTT-3.14.4-1], v5 [MQTT-3.14.4-2], v5 [MQTT-4.13.2-1]: nothing after it, then the close.
    match old.recv().await {
        Packet::Disconnect(d) => {
            assert_eq!(d.reason(), ReasonCode::SessionTakenOver);
            assert_eq!(d.properties.session_expiry_interval, None);
        }
        p => panic!("expected DISCONNECT, got {p:?}"),
    }
    assert_eq!(old.recv_frame().await, None);
}

#[tokio::test]
async fn a_server_disconnect_fits_the_clients_maximum_packet_size_v5() {
    let b = start().await;
    let mut c = connect(V5, "dsmall");
    c.properties.maximum_packet_size = Some(8);
    let (mut c, _) = Raw::connect_with(b.addr(), c).await;
    // PUBLISH to "+" is a Protocol Error; the DISCONNECT that explains it must fit in 8 bytes:
    // v5 [MQTT-3.14.2-3], v5 [MQTT-3.14.2-4] (no Reason String or User Property that would not).
    c.send_hex("30 04 00 01 2B 00").await;
    let frame = c.recv_frame().await.unwrap();
    assert!(frame.len() <= 8, "{frame:02X?}");
    assert_eq!(&frame[..1], &[0xE0]);
    assert_eq!(c.recv_frame().await, None);
}

#[tokio::test]
async fn auth_is_checked_v5() {
    let b = start().await;
    // v5 [MQTT-3.15.1-1]: AUTH flags other than 0000: malformed.
    let mut c = Raw::connect(b.addr(), V5, "auth").await;
    c.send_hex("F1 00").await;
    assert_eq!(c.expect_closed().await, Some(ReasonCode::MalformedPacket));
    // v5 [MQTT-4.12.0-6]: no Authentication Method in CONNECT: an AUTH is a Protocol Error.
    let mut c = Raw::connect(b.addr(), V5, "auth").await;
    c.send_hex("F0 00").await;
    assert_eq!(c.expect_closed().await, Some(ReasonCode::ProtocolError));
}

/// The next AUTH: its reason code and method; also checks it fits in 64 bytes.
async fn recv_auth(c: &mut Raw) -> (Option<ReasonCode>, Option<String>) {
    match c.recv().await {
        Packet::Auth(a) => {
            assert_eq!(a.properties.reason_string, None);
            assert!(a.properties.user_properties.is_empty());
            (
                a.reason_code,
                a.properties.authentication_method.map(|m| m.to_string()),
            )
        }
        p => panic!("expected AUTH, got {p:?}"),
    }
}

#[tokio::test]
async fn enhanced_authentication_v5() {
    let b = tern_broker::BrokerBuilder::new()
        .listen("127.0.0.1:0".parse().unwrap())
        .authenticator(Arc::new(Challenge { welcome: None }))
        .bind()
        .await
        .unwrap()
        .spawn();
    let mut c = connect(V5, "authn");
    c.properties.authentication_method = Some("TEST-CHALLENGE".into());
    c.properties.authentication_data = Some("hello".into());
    c.properties.maximum_packet_size = Some(64);
    let mut raw = Raw::open(b.addr(), V5).await;
    raw.send(Packet::Connect(Box::new(c.clone()))).await;
    // v5 [MQTT-4.12.0-2]: the server's AUTH carries 0x18; v5 [MQTT-4.12.0-5]: with the method
    // of the CONNECT, as does the successful CONNACK. Each AUTH has an Authenticate Reason Code
    // (v5 [MQTT-3.15.2-1]) and no Reason String or User Property (v5 [MQTT-3.15.2-2],
    // v5 [MQTT-3.15.2-3]), so it stays within the client's 64 bytes.
    let method = Some("TEST-CHALLENGE".to_string());
    assert_eq!(
        recv_auth(&mut raw).await,
        (Some(ReasonCode::ContinueAuthentication), method.clone())
    );
    raw.send(auth_packet(ReasonCode::ContinueAuthentication, "response"))
        .await;
    match raw.recv().await {
        Packet::ConnAck(a) => {
            assert_eq!(a.reason_code, ReasonCode::Success);
            assert_eq!(a.properties.authentication_method.as_deref(), method.as_deref());
        }
        p => panic!("{p:?}"),
    }
    // v5 [MQTT-4.12.1-2]: a failed re-authentication closes the connection (DISCONNECT first).
    raw.send(auth_packet(ReasonCode::ReAuthenticate, "hello")).await;
    assert_eq!(
        recv_auth(&mut raw).await,
        (Some(ReasonCode::ContinueAuthentication), method)
    );
    raw.send(auth_packet(ReasonCode::ContinueAuthentication, "wrong"))
        .await;
    assert_eq!(raw.expect_closed().await, Some(ReasonCode::NotAuthorized));
    // v5 [MQTT-4.12.0-4]: the server rejects the authentication: CONNACK 0x87, then closed.
    c.client_id = "authn2".into();
    let mut raw = Raw::open(b.addr(), V5).await;
    raw.send(Packet::Connect(Box::new(c))).await;
    recv_auth(&mut raw).await;
    raw.send(auth_packet(ReasonCode::ContinueAuthentication, "wrong"))
        .await;
    match raw.recv().await {
        Packet::ConnAck(a) => assert_eq!(a.reason_code, ReasonCode::NotAuthorized),
        p => panic!("{p:?}"),
    }
    raw.expect_closed_silently().await;
}
