//! Malformed packet flood: hundreds of connections at once, each sending one kind of bad input
//! before or after CONNECT. Each closes only its own connection (5.0: DISCONNECT with the
//! reason first), and nothing of it stays behind.

use tern_proto::ReasonCode;
use tokio::io::AsyncWriteExt;

use crate::support::*;

const ATTACKERS: usize = 200;

/// Bad input after CONNECT, and the 5.0 DISCONNECT reason it gets (3.1.1: closed).
const AFTER_CONNECT: &[(&[u8], ReasonCode)] = &[
    // Five-byte Remaining Length.
    (&[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F], ReasonCode::MalformedPacket),
    // SUBSCRIBE with reserved flags 0000.
    (
        &[0x80, 0x06, 0x00, 0x01, 0x00, 0x01, b'a', 0x00],
        ReasonCode::MalformedPacket,
    ),
    // QoS 3.
    (
        &[0x36, 0x05, 0x00, 0x01, b'a', 0x00, 0x01],
        ReasonCode::MalformedPacket,
    ),
    // QoS 1 with packet identifier 0.
    (
        &[0x32, 0x06, 0x00, 0x01, b'a', 0x00, 0x00, 0x00],
        ReasonCode::ProtocolError,
    ),
    // U+0000 in a topic.
    (
        &[0x30, 0x06, 0x00, 0x03, b'a', 0x00, b'b', 0x00],
        ReasonCode::MalformedPacket,
    ),
    // A CONNACK from a client.
    (&[0x20, 0x03, 0x00, 0x00, 0x00], ReasonCode::ProtocolError),
    // A topic length beyond the packet.
    (&[0x30, 0x04, 0x00, 0x09, b'a', b'b'], ReasonCode::MalformedPacket),
    // Packet type 0.
    (&[0x00, 0x00], ReasonCode::MalformedPacket),
];

/// Bad first packets: each is closed without a CONNACK.
const BEFORE_CONNECT: &[&[u8]] = &[
    // A PUBLISH first.
    &[0x30, 0x03, 0x00, 0x01, b'a'],
    // Not MQTT at all.
    b"GET / HTTP/1.1\r\n\r\n",
    // A CONNECT with a wrong protocol name, then one with the reserved flag set.
    &[
        0x10, 0x0C, 0x00, 0x04, b'M', b'Q', b'X', b'X', 4, 0x02, 0x00, 0x00, 0x00, 0x00,
    ],
    &[
        0x10, 0x0C, 0x00, 0x04, b'M', b'Q', b'T', b'T', 4, 0x03, 0x00, 0x00, 0x00, 0x00,
    ],
];

/// v3.1.1 [MQTT-4.8.0-1], v5 [MQTT-4.13.1-1]: a protocol violation closes the connection it
/// came on (5.0: with DISCONNECT and its reason); v3.1.1+v5 [MQTT-3.1.0-1]: a first packet
/// other than CONNECT is never answered.
#[tokio::test]
async fn a_malformed_packet_flood_closes_only_the_attackers() {
    let b = Broker::start(|_| {}).await;
    let canary = Canary::start(b.addr()).await;
    let sampler = b.sampler();
    // Everyone connects first, then all the bad packets go out together.
    let mut connected = Vec::new();
    for i in 0..ATTACKERS / 2 {
        let v = version(i);
        connected.push(Raw::connect(b.addr(), v, &format!("malformed-{i}")).await);
    }
    let mut fresh = sockets(b.addr(), ATTACKERS / 2).await;
    for (i, a) in connected.iter_mut().enumerate() {
        a.send_bytes(AFTER_CONNECT[i / 2 % AFTER_CONNECT.len()].0).await;
    }
    for (i, s) in fresh.iter_mut().enumerate() {
        let _ = s.write_all(BEFORE_CONNECT[i % BEFORE_CONNECT.len()]).await;
    }
    canary.progress().await;
    for (i, a) in connected.iter_mut().enumerate() {
        let expected = AFTER_CONNECT[i / 2 % AFTER_CONNECT.len()].1;
        let got = a.expect_closed().await;
        assert_eq!(got, i.is_multiple_of(2).then_some(expected), "attacker {i}");
    }
    for (i, s) in fresh.iter_mut().enumerate() {
        assert!(closed(s).await.is_empty(), "bad first packet {i} was answered");
    }
    let end = b
        .until("every attacker's connection is gone", |s| {
            s.connections_open == CANARY_CONNECTIONS && s.sessions == CANARY_CONNECTIONS
        })
        .await;
    let peak = sampler.finish().await;
    assert_eq!(peak.partial_bytes, 0);
    assert_eq!(end.subscriptions, 1, "only the canary's subscription is left");
    canary.finish().await;
}
