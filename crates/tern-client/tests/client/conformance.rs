//! The client's obligations of MQTT 3.1.1 and 5.0 seen on the wire: a scripted
//! fake server (`tern_testkit::raw`) reads the exact bytes the client sends and
//! sends exact bytes back. Citations carry their version tag; docs/conformance.md
//! traces them.

use std::time::Duration;

use bytes::BytesMut;
use tern_client::{Client, Events, LastWill, Options, ProtocolVersion, QoS, Reconnect};
use tern_proto::{decode, Decoded, Packet, ReasonCode};
use tern_testkit::raw::{hex, FakeServer, Raw};

use crate::support::{url, V3, V5};

fn opts(server: &FakeServer, v: ProtocolVersion, id: &str) -> Options {
    Options::new(url(server.addr()))
        .version(v)
        .client_id(id)
        .keep_alive(Duration::from_secs(30))
        .connect_timeout(Duration::from_secs(3))
        .reconnect(Reconnect::disabled())
}

/// Start connecting `o`; return the server's side, the CONNECT bytes, and the
/// client once the CONNACK `ack` was answered.
async fn handshake(server: &FakeServer, o: Options, ack: &str) -> (Raw, Vec<u8>, Client, Events) {
    let connecting = tokio::spawn(Client::connect(o));
    let mut peer = server.accept().await;
    let connect = peer.recv_frame().await.expect("a CONNECT");
    peer.set_version(if connect[8] == 5 { V5 } else { V3 });
    peer.send_hex(ack).await;
    let (c, events) = connecting.await.unwrap().expect("connected");
    (peer, connect, c, events)
}

fn decoded(frame: &[u8], v: ProtocolVersion) -> Packet {
    let mut buf = BytesMut::from(frame);
    match decode(&mut buf, v, 1 << 20) {
        Ok(Decoded::Packet(p)) => p,
        other => panic!("cannot decode {frame:02X?}: {other:?}"),
    }
}

#[tokio::test]
async fn the_connect_packet_of_3_1_1_byte_for_byte() {
    let server = FakeServer::start().await;
    let will = LastWill::new("w/t", "bye").qos(QoS::AtLeastOnce).retain(true);
    let o = opts(&server, V3, "c1").credentials("u", "p").will(will);
    let (_peer, connect, _c, _e) = handshake(&server, o, "20 02 00 00").await;
    // v3.1.1 [MQTT-3.1.0-1]: the first packet is CONNECT; flags 0xEE: user name, password,
    // Will Retain, Will QoS 1, Will Flag, Clean Session (v3.1.1 [MQTT-3.1.2-9],
    // v3.1.1 [MQTT-3.1.2-14], v3.1.1 [MQTT-3.1.2-19], v3.1.1 [MQTT-3.1.2-21]); the payload is
    // client id, will topic, will message, user name, password, in that order
    // (v3.1.1 [MQTT-3.1.3-1], v3.1.1 [MQTT-3.1.3-3], v3.1.1 [MQTT-3.1.3-4],
    // v3.1.1 [MQTT-3.1.3-10], v3.1.1 [MQTT-3.1.3-11]), over TCP (v3.1.1 [MQTT-7.1.2-1]).
    assert_eq!(
        connect,
        hex(
            "10 1E 00 04 4D 51 54 54 04 EE 00 1E 00 02 63 31 00 03 77 2F 74 00 03 62 79 65 00 01 75 00 01 70"
        )
    );

    // No will: Will QoS, Will Retain 0 and no will fields (v3.1.1 [MQTT-3.1.2-11],
    // v3.1.1 [MQTT-3.1.2-13], v3.1.1 [MQTT-3.1.2-15]); a user name alone: no password
    // (v3.1.1 [MQTT-3.1.2-20], v3.1.1 [MQTT-3.1.2-22]); none: neither flag
    // (v3.1.1 [MQTT-3.1.2-18]).
    let o = opts(&server, V3, "c2").username("u");
    let (_peer, connect, _c, _e) = handshake(&server, o, "20 02 00 00").await;
    assert_eq!(
        connect,
        hex("10 11 00 04 4D 51 54 54 04 82 00 1E 00 02 63 32 00 01 75")
    );
    let (_peer, connect, _c, _e) = handshake(&server, opts(&server, V3, "c3"), "20 02 00 00").await;
    assert_eq!(connect, hex("10 0E 00 04 4D 51 54 54 04 02 00 1E 00 02 63 33"));
    // v3.1.1 [MQTT-3.1.3-7]: a zero-length client id only with Clean Session 1.
    let e = Client::connect(opts(&server, V3, "").clean_start(false)).await;
    assert!(e.is_err());
}

#[tokio::test]
async fn the_connect_packet_of_5_0() {
    let server = FakeServer::start().await;
    let will = LastWill::new("w/t", "bye").qos(QoS::ExactlyOnce).delay(5);
    let o = opts(&server, V5, "c1").credentials("u", "p").will(will);
    let (_peer, frame, _c, _e) = handshake(&server, o, "20 03 00 00 00").await;
    // v5 [MQTT-3.1.0-1]: CONNECT first; flags: user name, password, Will QoS 2, Will Flag,
    // Clean Start (v5 [MQTT-3.1.2-9], v5 [MQTT-3.1.2-12], v5 [MQTT-3.1.2-17],
    // v5 [MQTT-3.1.2-19]), over TCP (v5 [MQTT-4.2.0-1]).
    assert_eq!(frame[8..10], [0x05, 0xD6]);
    // v5 [MQTT-3.1.3-1], v5 [MQTT-3.1.3-3], v5 [MQTT-3.1.3-4], v5 [MQTT-3.1.3-11],
    // v5 [MQTT-3.1.3-12]: the fields decode in their order, as UTF-8 where required.
    let Packet::Connect(c) = decoded(&frame, V5) else {
        panic!()
    };
    assert_eq!(&*c.client_id, "c1");
    let w = c.will.as_ref().unwrap();
    assert_eq!(
        (&*w.topic, &w.payload[..], w.properties.will_delay_interval),
        ("w/t", &b"bye"[..], Some(5))
    );
    assert_eq!(
        (c.username.as_deref(), c.password.as_deref()),
        (Some("u"), Some(&b"p"[..]))
    );
    // None of them: v5 [MQTT-3.1.2-11], v5 [MQTT-3.1.2-13], v5 [MQTT-3.1.2-16],
    // v5 [MQTT-3.1.2-18].
    let (_peer, frame, _c, _e) = handshake(&server, opts(&server, V5, "c2"), "20 03 00 00 00").await;
    assert_eq!(frame[9], 0x02);
}

#[tokio::test]
async fn disconnect_is_the_clients_last_packet() {
    let server = FakeServer::start().await;
    for (v, ack) in [(V3, "20 02 00 00"), (V5, "20 03 00 00 00")] {
        let (mut peer, _, c, _e) = handshake(&server, opts(&server, v, "bye"), ack).await;
        c.disconnect().await.unwrap();
        // v3.1.1 [MQTT-3.14.4-1], v3.1.1 [MQTT-3.14.4-2] / v5 [MQTT-3.14.4-1],
        // v5 [MQTT-3.14.4-2], v5 [MQTT-3.14.2-1]: DISCONNECT (0x00), then nothing, then the close.
        match peer.recv().await {
            Packet::Disconnect(d) => assert_eq!(d.reason(), ReasonCode::Success),
            p => panic!("expected DISCONNECT, got {p:?}"),
        }
        assert_eq!(peer.recv_frame().await, None);
    }
}

#[tokio::test]
async fn malformed_input_closes_the_connection_v311() {
    let server = FakeServer::start().await;
    let cases = [
        // v3.1.1 [MQTT-1.5.3-1]: ill-formed UTF-8 in the topic.
        "30 04 00 02 C3 28",
        // v3.1.1 [MQTT-1.5.3-2]: U+0000.
        "30 05 00 03 61 00 62",
        // v3.1.1 [MQTT-3.3.1-4]: both QoS bits.
        "36 05 00 01 61 00 01",
        // v3.1.1 [MQTT-2.2.2-1], v3.1.1 [MQTT-2.2.2-2]: PUBREL with flags 0000.
        "60 02 00 01",
        // v3.1.1 [MQTT-4.7.1-1], v3.1.1 [MQTT-3.3.2-2]: a wildcard in a Topic Name.
        "30 03 00 01 23",
        // v3.1.1 [MQTT-4.7.3-1]: an empty Topic Name.
        "30 02 00 00",
    ];
    for bytes in cases {
        let (mut peer, _, _c, _e) = handshake(&server, opts(&server, V3, "m"), "20 02 00 00").await;
        peer.send_hex(bytes).await;
        // v3.1.1 [MQTT-4.8.0-1]: a protocol violation closes the connection (no DISCONNECT in 3.1.1).
        assert_eq!(peer.recv_frame().await, None, "{bytes}");
    }
}

#[tokio::test]
async fn a_byte_order_mark_is_kept() {
    let server = FakeServer::start().await;
    for (v, ack, publish) in [
        (V3, "20 02 00 00", "30 06 00 03 EF BB BF 78"),
        (V5, "20 03 00 00 00", "30 07 00 03 EF BB BF 00 78"),
    ] {
        let (mut peer, _, _c, mut events) = handshake(&server, opts(&server, v, "bom"), ack).await;
        peer.send_hex(publish).await;
        // v3.1.1 [MQTT-1.5.3-3] / v5 [MQTT-1.5.4-3]: U+FEFF is neither skipped nor stripped.
        let m = crate::support::message(&mut events).await;
        assert_eq!(&m.topic.as_bytes()[..], &b"\xEF\xBB\xBF"[..]);
    }
}

#[tokio::test]
async fn malformed_control_packets_get_disconnect_0x81_v5() {
    let server = FakeServer::start().await;
    let cases = [
        // v5 [MQTT-3.14.1-1]: DISCONNECT with reserved bits set.
        "E1 00",
        // v5 [MQTT-3.15.1-1]: AUTH with flags other than 0000.
        "F1 00",
        // v5 [MQTT-1.5.7-1]: a User Property whose value is not UTF-8.
        "30 0C 00 01 74 08 26 00 01 6B 00 02 C3 28",
        // v5 [MQTT-2.1.3-1], v5 [MQTT-3.6.1-1]: PUBREL with flags 0000.
        "60 02 00 01",
        // v5 [MQTT-1.5.4-1]: ill-formed UTF-8 in the topic.
        "30 05 00 02 C3 28 00",
        // v5 [MQTT-1.5.4-2]: U+0000 in the topic.
        "30 06 00 03 61 00 62 00",
        // v5 [MQTT-3.3.1-4]: both QoS bits set.
        "36 06 00 01 61 00 01 00",
    ];
    for bytes in cases {
        let (mut peer, _, _c, _e) = handshake(&server, opts(&server, V5, "m5"), "20 03 00 00 00").await;
        peer.send_hex(bytes).await;
        assert_eq!(
            peer.expect_closed().await,
            Some(ReasonCode::MalformedPacket),
            "{bytes}"
        );
    }
}

#[tokio::test]
async fn publish_subscribe_and_unsubscribe_byte_for_byte() {
    let server = FakeServer::start().await;
    for (v, ack) in [(V3, "20 02 00 00"), (V5, "20 03 00 00 00")] {
        let (mut peer, _, c, _e) = handshake(&server, opts(&server, v, "bytes"), ack).await;
        let p5 = if v.is_v5() { " 00" } else { "" };
        let add = usize::from(v.is_v5());
        // QoS 0: no identifier, DUP 0, the Topic Name first (v3.1.1 [MQTT-2.3.1-5],
        // v3.1.1 [MQTT-3.3.1-2], v3.1.1 [MQTT-4.3.1-1], v3.1.1 [MQTT-3.3.2-1] /
        // v5 [MQTT-2.2.1-2], v5 [MQTT-3.3.1-2], v5 [MQTT-4.3.1-1], v5 [MQTT-3.3.2-1]); an empty
        // property list is a Property Length of 0 (v5 [MQTT-2.2.2-1]).
        c.publish("a/b", "x", QoS::AtMostOnce).await.unwrap();
        peer.expect_hex(&format!("30 {:02X} 00 03 61 2F 62{p5} 78", 6 + add))
            .await;
        // QoS 1: a non-zero identifier, DUP 0.
        let c1 = c.clone();
        let q1 = tokio::spawn(async move { c1.publish("a/b", "y", QoS::AtLeastOnce).await });
        let frame = peer.recv_frame().await.unwrap();
        assert_eq!(frame[0], 0x32);
        let id = u16::from_be_bytes([frame[7], frame[8]]);
        assert_ne!(id, 0);
        peer.send_hex(&format!("40 02 {:02X} {:02X}", id >> 8, id & 0xFF))
            .await;
        q1.await.unwrap().unwrap();
        // SUBSCRIBE: flags 0010, a non-zero identifier, the filter as a UTF-8 string and the
        // options (v3.1.1 [MQTT-3.8.3-1], v3.1.1 [MQTT-3.8.3-3] / v5 [MQTT-3.8.3-1],
        // v5 [MQTT-3.8.3-2]).
        let c2 = c.clone();
        let sub = tokio::spawn(async move { c2.subscribe("s/+", QoS::AtLeastOnce).await });
        let frame = peer.recv_frame().await.unwrap();
        let id = [frame[2], frame[3]];
        assert_ne!(id, [0, 0]);
        assert_eq!(frame[..2], [0x82, (8 + add) as u8]);
        assert_eq!(&frame[4 + add..], &hex("00 03 73 2F 2B 01")[..]);
        peer.send_hex(&format!("90 {:02X} {:02X} {:02X}{p5} 01", 3 + add, id[0], id[1]))
            .await;
        sub.await.unwrap().unwrap();
        // UNSUBSCRIBE: flags 0010 and the filter as a UTF-8 string (v3.1.1 [MQTT-3.10.3-1],
        // v3.1.1 [MQTT-3.10.3-2] / v5 [MQTT-3.10.3-1], v5 [MQTT-3.10.3-2]).
        let c3 = c.clone();
        let unsub = tokio::spawn(async move { c3.unsubscribe("s/+").await });
        let frame = peer.recv_frame().await.unwrap();
        let id = [frame[2], frame[3]];
        assert_eq!(frame[..2], [0xA2, (7 + add) as u8]);
        assert_eq!(&frame[4 + add..], &hex("00 03 73 2F 2B")[..]);
        if v.is_v5() {
            peer.send_hex(&format!("B0 04 {:02X} {:02X} 00 00", id[0], id[1]))
                .await;
        } else {
            peer.send_hex(&format!("B0 02 {:02X} {:02X}", id[0], id[1])).await;
        }
        unsub.await.unwrap().unwrap();
    }
}

#[tokio::test]
async fn over_websocket_the_client_offers_mqtt_and_reads_binary_frames_only() {
    use std::future::poll_fn;
    use std::pin::Pin;
    use std::sync::{Arc, Mutex};

    use futures_core::Stream;
    use futures_sink::Sink;
    use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
    use tokio_tungstenite::tungstenite::http::HeaderValue;
    use tokio_tungstenite::tungstenite::Message;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let o = Options::new(format!("ws://{addr}/mqtt"))
        .version(V3)
        .client_id("wsc")
        .connect_timeout(Duration::from_secs(3))
        .reconnect(Reconnect::disabled());
    let connecting = tokio::spawn(Client::connect(o));
    let (tcp, _) = tokio::time::timeout(crate::support::WAIT, listener.accept())
        .await
        .unwrap()
        .unwrap();
    let offered = Arc::new(Mutex::new(String::new()));
    let seen = offered.clone();
    #[allow(clippy::result_large_err, reason = "the callback type is tungstenite's")]
    let callback = move |req: &Request, mut resp: Response| -> Result<Response, ErrorResponse> {
        if let Some(p) = req.headers().get("Sec-WebSocket-Protocol") {
            *seen.lock().unwrap() = p.to_str().unwrap_or("").to_string();
        }
        resp.headers_mut()
            .insert("Sec-WebSocket-Protocol", HeaderValue::from_static("mqtt"));
        Ok(resp)
    };
    let mut ws = tokio_tungstenite::accept_hdr_async(tcp, callback).await.unwrap();
    // v3.1.1+v5 [MQTT-6.0.0-3]: the client offers the subprotocol "mqtt".
    assert!(offered.lock().unwrap().split(',').any(|p| p.trim() == "mqtt"));
    type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;
    async fn recv(ws: &mut Ws) -> Option<Result<Message, tokio_tungstenite::tungstenite::Error>> {
        let fut = poll_fn(|cx| Pin::new(&mut *ws).poll_next(cx));
        tokio::time::timeout(crate::support::WAIT, fut)
            .await
            .expect("a message or the end in time")
    }
    match recv(&mut ws).await {
        Some(Ok(Message::Binary(b))) => assert_eq!(b[0], 0x10, "CONNECT in a binary message"),
        other => panic!("expected the CONNECT, got {other:?}"),
    }
    async fn send(ws: &mut Ws, m: Message) {
        poll_fn(|cx| Pin::new(&mut *ws).poll_ready(cx)).await.unwrap();
        Pin::new(&mut *ws).start_send(m).unwrap();
        poll_fn(|cx| Pin::new(&mut *ws).poll_flush(cx)).await.unwrap();
    }
    // v3.1.1+v5 [MQTT-6.0.0-2]: the CONNACK split over two messages, then two PUBLISH packets in
    // one message: the client does not assume packets and frames line up.
    send(&mut ws, Message::Binary(vec![0x20, 0x02].into())).await;
    send(&mut ws, Message::Binary(vec![0x00, 0x00].into())).await;
    let (_c, mut events) = connecting.await.unwrap().expect("connected over WebSocket");
    send(
        &mut ws,
        Message::Binary(hex("30 04 00 01 61 31 30 04 00 01 61 32").into()),
    )
    .await;
    assert_eq!(
        crate::support::message(&mut events).await.payload_str(),
        Some("1")
    );
    assert_eq!(
        crate::support::message(&mut events).await.payload_str(),
        Some("2")
    );
    // v3.1.1+v5 [MQTT-6.0.0-1]: a text message closes the connection.
    send(&mut ws, Message::Text("not mqtt".into())).await;
    crate::support::wait_for(&mut events, |e| {
        matches!(e, tern_client::Event::Disconnected { .. })
    })
    .await;
    loop {
        match recv(&mut ws).await {
            None | Some(Err(_)) | Some(Ok(Message::Close(_))) => break,
            Some(Ok(_)) => {}
        }
    }
}
