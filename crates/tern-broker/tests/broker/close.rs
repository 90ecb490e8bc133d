//! The last packet reaches the client when the broker closes: a client that is still
//! writing when the broker gives up on it reads the reason code, not a reset.
//!
//! Each client here behaves like a single-threaded MQTT client library: it writes, then
//! looks for input, and gives up on the first write error. Closing a socket with unread
//! input makes the kernel send a reset, and such a client sees a broken pipe instead of the
//! CONNACK or DISCONNECT that says why.

use std::time::Duration;

use bytes::BytesMut;
use tern_proto::codec::{Decoded, Decoder};
use tern_proto::{Connect, Packet, ProtocolVersion, Publish, QoS, ReasonCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::*;

/// How long a test client keeps writing before it declares the reason code lost.
const WRITE_FOR: Duration = Duration::from_secs(10);

/// A client that keeps writing `filler` after `opening`, reading between writes, until the
/// broker's last packet arrives. Returns that packet, or panics when a write fails first.
async fn write_until_answered(
    addr: std::net::SocketAddr,
    version: ProtocolVersion,
    opening: &[u8],
    filler: &[u8],
    last: impl Fn(&Packet) -> bool,
) -> Packet {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    if let Err(e) = s.write_all(opening).await {
        panic!("write failed before the broker's reason code arrived: {e}");
    }
    let decoder = Decoder::new(version, 1 << 20);
    let mut buf = BytesMut::new();
    let deadline = tokio::time::Instant::now() + WRITE_FOR;
    while tokio::time::Instant::now() < deadline {
        if let Err(e) = s.write_all(filler).await {
            panic!("write failed before the broker's reason code arrived: {e}");
        }
        match tokio::time::timeout(Duration::from_millis(1), s.read_buf(&mut buf)).await {
            Err(_) => continue,
            Ok(Ok(0)) => panic!("closed before the broker's last packet was read"),
            Ok(Err(e)) => panic!("read failed before the broker's reason code arrived: {e}"),
            Ok(Ok(_)) => {}
        }
        while let Ok(Decoded::Packet(p)) = decoder.decode(&mut buf) {
            if last(&p) {
                return p;
            }
        }
    }
    panic!("no reason code within {WRITE_FOR:?}");
}

fn encode(p: Packet, v: ProtocolVersion) -> Vec<u8> {
    tern_testkit::raw::encode(&p, v)
}

/// PINGREQs: valid packets the broker no longer reads once it has decided to close.
fn pings(n: usize) -> Vec<u8> {
    [0xC0u8, 0x00].repeat(n)
}

#[tokio::test]
async fn receive_maximum_exceeded_reaches_a_client_that_keeps_writing() {
    // v5 section 3.3.4: one QoS 2 PUBLISH beyond our Receive Maximum is answered with
    // DISCONNECT 0x93, which the client must be able to read.
    let b = start_with(|c| c.receive_maximum = 5).await;
    let mut opening = encode(Packet::Connect(Box::new(Connect::new(V5, "rm-writer"))), V5);
    for id in 1..=6u16 {
        let mut p = Publish::new("t", "x");
        p.qos = QoS::ExactlyOnce;
        p.packet_id = Some(pid(id));
        opening.extend(encode(Packet::Publish(p), V5));
    }
    let last = write_until_answered(b.addr(), V5, &opening, &pings(2048), |p| {
        matches!(p, Packet::Disconnect(_))
    })
    .await;
    let Packet::Disconnect(d) = last else {
        unreachable!()
    };
    assert_eq!(d.reason(), ReasonCode::ReceiveMaximumExceeded);
}

#[tokio::test]
async fn packet_too_large_reaches_a_client_that_keeps_writing() {
    // v5 sections 3.2.2.3.6 and 4.13: a packet above the Maximum Packet Size the server
    // announced is answered with DISCONNECT 0x95, which the client must be able to read.
    let b = start_with(|c| c.max_packet_size = 1024).await;
    let mut opening = encode(Packet::Connect(Box::new(Connect::new(V5, "big-writer"))), V5);
    // A PUBLISH announcing 100,000 bytes; its body follows as the filler.
    opening.extend_from_slice(&[0x30, 0xA0, 0x8D, 0x06]);
    let last = write_until_answered(b.addr(), V5, &opening, &[0u8; 4096], |p| {
        matches!(p, Packet::Disconnect(_))
    })
    .await;
    let Packet::Disconnect(d) = last else {
        unreachable!()
    };
    assert_eq!(d.reason(), ReasonCode::PacketTooLarge);
}

#[tokio::test]
async fn a_refusing_connack_reaches_a_client_that_keeps_writing() {
    // v3.1.1 [MQTT-3.2.2-5] / v5 [MQTT-3.2.2-7]: a refusing CONNACK, then the broker closes;
    // the client reads the return code even though it wrote more behind its CONNECT.
    let b = start_with(|c| c.max_client_id_len = 23).await;
    for v in [V3, V5] {
        let opening = encode(
            Packet::Connect(Box::new(Connect::new(v, "a-client-identifier-longer-than-23"))),
            v,
        );
        let last = write_until_answered(b.addr(), v, &opening, &pings(32 * 1024), |p| {
            matches!(p, Packet::ConnAck(_))
        })
        .await;
        let Packet::ConnAck(ack) = last else {
            unreachable!()
        };
        assert_eq!(ack.reason_code, ReasonCode::ClientIdentifierNotValid, "{v}");
    }
}

#[tokio::test]
async fn a_peer_that_never_stops_writing_is_closed_all_the_same() {
    // Lingering is bounded: a client that keeps writing after DISCONNECT 0x93 (and never
    // closes) still sees the socket closed, within the linger time plus a margin.
    let b = start_with(|c| c.receive_maximum = 1).await;
    let mut s = TcpStream::connect(b.addr()).await.unwrap();
    let mut opening = encode(Packet::Connect(Box::new(Connect::new(V5, "endless"))), V5);
    for id in 1..=2u16 {
        let mut p = Publish::new("t", "x");
        p.qos = QoS::ExactlyOnce;
        p.packet_id = Some(pid(id));
        opening.extend(encode(Packet::Publish(p), V5));
    }
    s.write_all(&opening).await.unwrap();
    let (mut rd, mut wr) = s.into_split();
    let writer = tokio::spawn(async move {
        let filler = pings(512);
        let until = tokio::time::Instant::now() + Duration::from_secs(30);
        while tokio::time::Instant::now() < until {
            if wr.write_all(&filler).await.is_err() {
                return true;
            }
        }
        false
    });
    let mut sink = vec![0u8; 4096];
    let closed = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            match rd.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the broker kept a lingering socket open");
    assert!(
        tokio::time::timeout(Duration::from_secs(15), writer)
            .await
            .unwrap()
            .unwrap(),
        "writes kept succeeding after the broker closed"
    );
    // The broker still serves others.
    let c = Raw::connect(b.addr(), V5, "after").await;
    c.disconnect().await;
}
