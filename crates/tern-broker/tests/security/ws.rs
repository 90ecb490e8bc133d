//! WebSocket listeners: the upgrade (path, `mqtt` subprotocol), packets split across
//! messages and several in one, the client library over ws:// and wss://, and
//! hostile input.

use std::future::poll_fn;
use std::pin::Pin;
use std::time::Duration;

use bytes::BytesMut;
use futures_core::Stream;
use futures_sink::Sink;
use tern_broker::ListenerKind;
use tern_client::transport::TlsOptions;
use tern_client::{Client, Event, Options, QoS, Reconnect};
use tern_proto::{Packet, Publish, ReasonCode, Subscribe, SubscriptionOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

use crate::support::*;

type Ws = WebSocketStream<TcpStream>;

async fn ws_open(addr: std::net::SocketAddr, path: &str, protocol: Option<&str>) -> Result<Ws, WsError> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut req = format!("ws://{addr}{path}").into_client_request().unwrap();
    if let Some(p) = protocol {
        req.headers_mut()
            .insert("Sec-WebSocket-Protocol", HeaderValue::from_str(p).unwrap());
    }
    let (ws, resp) = tokio::time::timeout(WAIT, tokio_tungstenite::client_async(req, tcp))
        .await
        .expect("handshake in time")?;
    if protocol.is_some() {
        // v3.1.1+v5 [MQTT-6.0.0-4]
        assert_eq!(resp.headers().get("Sec-WebSocket-Protocol").unwrap(), "mqtt");
    }
    Ok(ws)
}

async fn ws_send(ws: &mut Ws, m: Message) {
    poll_fn(|cx| Pin::new(&mut *ws).poll_ready(cx)).await.unwrap();
    Pin::new(&mut *ws).start_send(m).unwrap();
    poll_fn(|cx| Pin::new(&mut *ws).poll_flush(cx)).await.unwrap();
}

/// The MQTT packets of the next binary messages, until `n` have arrived.
async fn ws_packets(ws: &mut Ws, n: usize) -> Vec<Packet> {
    let decoder = tern_proto::codec::Decoder::new(V5, 1 << 20);
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while out.len() < n {
        while let tern_proto::codec::Decoded::Packet(p) = decoder.decode(&mut buf).unwrap() {
            out.push(p);
        }
        if out.len() >= n {
            break;
        }
        let next = tokio::time::timeout_at(deadline, poll_fn(|cx| Pin::new(&mut *ws).poll_next(cx)))
            .await
            .expect("packets in time");
        match next {
            Some(Ok(Message::Binary(b))) => buf.extend_from_slice(&b),
            other => panic!("expected a binary message, got {other:?}"),
        }
    }
    out
}

/// Whether the WebSocket is closed (a close frame or the end of the stream) in time.
async fn ws_closed(ws: &mut Ws) -> bool {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, poll_fn(|cx| Pin::new(&mut *ws).poll_next(cx))).await {
            Err(_) => return false,
            Ok(None) | Ok(Some(Err(_))) | Ok(Some(Ok(Message::Close(_)))) => return true,
            Ok(Some(Ok(_))) => {}
        }
    }
}

fn encode(packets: &[Packet]) -> Vec<u8> {
    let mut out = BytesMut::new();
    for p in packets {
        p.encode(V5, &mut out).unwrap();
    }
    out.to_vec()
}

/// v3.1.1+v5 [MQTT-6.0.0-2]: a packet split over several messages, and several packets in one
/// message, are both read; the server answers with binary messages.
#[tokio::test]
async fn packets_split_across_and_combined_in_messages() {
    let b = start(|b| {
        b.listener(tern_broker::ListenerConfig::new(
            ListenerKind::Ws,
            "127.0.0.1:0".parse().unwrap(),
        ))
    })
    .await;
    let addr = b.addr_of(ListenerKind::Ws).unwrap();
    let mut ws = ws_open(addr, "/mqtt", Some("mqtt")).await.unwrap();
    let connect_bytes = encode(&[Packet::Connect(Box::new(connect(V5, "ws-split", None, None)))]);
    for chunk in connect_bytes.chunks(3) {
        ws_send(&mut ws, Message::Binary(chunk.to_vec().into())).await;
    }
    assert!(
        matches!(&ws_packets(&mut ws, 1).await[0], Packet::ConnAck(a) if a.reason_code == ReasonCode::Success)
    );
    let mut m = Publish::new("ws/t", "hello");
    m.qos = QoS::AtMostOnce;
    let both = encode(&[
        Packet::Subscribe(Subscribe {
            packet_id: tern_proto::PacketId::new(1).unwrap(),
            properties: Default::default(),
            filters: vec![("ws/#".into(), SubscriptionOptions::qos(QoS::AtMostOnce))],
        }),
        Packet::Publish(m),
    ]);
    ws_send(&mut ws, Message::Binary(both.into())).await;
    let got = ws_packets(&mut ws, 2).await;
    assert!(matches!(&got[0], Packet::SubAck(_)), "{got:?}");
    assert!(
        matches!(&got[1], Packet::Publish(p) if &*p.topic == "ws/t"),
        "{got:?}"
    );
}

/// RELIABILITY.md H4: a text message (v3.1.1+v5 [MQTT-6.0.0-1]), an oversized message, a wrong
/// path, a missing `mqtt` subprotocol (v3.1.1+v5 [MQTT-6.0.0-3]), a plain HTTP request and an
/// endless request are all refused or closed, and the listener keeps serving. Refused upgrade
/// requests get an HTTP answer first: 400, 404, 426 (with the version the server speaks), 431.
#[tokio::test]
async fn hostile_websocket_input_is_closed() {
    let ws_listener = tern_broker::ListenerConfig::new(ListenerKind::Ws, "127.0.0.1:0".parse().unwrap());
    let b = start(|b| {
        b.listener(ws_listener).configure(|c| {
            c.max_packet_size = 1024;
            c.connect_timeout_secs = 1;
        })
    })
    .await;
    let addr = b.addr_of(ListenerKind::Ws).unwrap();

    let mut ws = ws_open(addr, "/mqtt", Some("mqtt")).await.unwrap();
    ws_send(&mut ws, Message::Text("hello".into())).await;
    assert!(ws_closed(&mut ws).await, "text message");

    let mut ws = ws_open(addr, "/mqtt", Some("mqtt")).await.unwrap();
    ws_send(&mut ws, Message::Binary(vec![0x10; 8192].into())).await;
    assert!(ws_closed(&mut ws).await, "oversized message");

    match ws_open(addr, "/other", Some("mqtt")).await {
        Err(WsError::Http(resp)) => assert_eq!(resp.status(), 404),
        other => panic!("wrong path: {:?}", other.map(|_| ())),
    }
    match ws_open(addr, "/mqtt", None).await {
        Err(WsError::Http(resp)) => assert_eq!(resp.status(), 400),
        other => panic!("no subprotocol: {:?}", other.map(|_| ())),
    }

    for (name, request) in [
        ("no upgrade", b"GET /mqtt HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
        ("endless", {
            let mut r = b"GET /mqtt HTTP/1.1\r\n".to_vec();
            r.extend(std::iter::repeat_n(b'a', 40 * 1024));
            r
        }),
        ("stall", b"GET /mqtt HTTP/1.1\r\n".to_vec()),
    ] {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let _ = s.write_all(&request).await;
        let mut buf = vec![0u8; 4096];
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
                Err(_) => panic!("{name}: not closed"),
                Ok(Ok(0)) | Ok(Err(_)) => break,
                Ok(Ok(_)) => {}
            }
        }
    }
    let ws = ws_open(addr, "/mqtt", Some("mqtt")).await.unwrap();
    let _ = ws;
    // Refused requests get an HTTP answer before the close.
    let upgrade =
        "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
    for (name, request, status, header) in [
        ("plain GET", "GET /mqtt HTTP/1.1\r\nHost: x\r\n\r\n".to_string(), 400, None),
        ("wrong path", "GET /other HTTP/1.1\r\nHost: x\r\n\r\n".to_string(), 404, None),
        (
            "version 8",
            format!("GET /mqtt HTTP/1.1\r\nHost: x\r\n{upgrade}Sec-WebSocket-Version: 8\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n"),
            426,
            Some("sec-websocket-version: 13"),
        ),
        (
            "huge head",
            format!("GET /mqtt HTTP/1.1\r\nX-Pad: {}\r\n\r\n", "a".repeat(20 * 1024)),
            431,
            None,
        ),
    ] {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let _ = s.write_all(request.as_bytes()).await;
        let mut answer = Vec::new();
        let read = tokio::time::timeout(WAIT, s.read_to_end(&mut answer)).await;
        assert!(read.is_ok(), "{name}: not closed");
        let text = String::from_utf8_lossy(&answer).to_lowercase();
        assert!(text.starts_with(&format!("http/1.1 {status} ")), "{name}: {text}");
        if let Some(h) = header {
            assert!(text.contains(h), "{name}: {text}");
        }
    }
    let endpoint = tern_client::transport::Endpoint {
        scheme: tern_client::transport::Scheme::Ws,
        host: "127.0.0.1".into(),
        port: addr.port(),
        path: "/mqtt".into(),
        username: None,
        password: None,
    };
    use tern_client::transport::Connector;
    let io = tern_client::transport::WsConnector::plain()
        .connect(&endpoint)
        .await
        .unwrap();
    assert!(mqtt_works(io, "after").await);
}

fn options(url: String, id: &str) -> Options {
    Options::new(url)
        .client_id(id)
        .connect_timeout(Duration::from_secs(3))
        .reconnect(Reconnect::disabled())
}

/// The client library over ws:// and wss://, with a custom path, talking to a TCP client.
#[tokio::test]
async fn client_library_over_ws_and_wss() {
    let pki = Pki::new("ws-client");
    let mut ws_listener = tern_broker::ListenerConfig::new(ListenerKind::Ws, "127.0.0.1:0".parse().unwrap());
    ws_listener.path = "/custom".into();
    let b = start(|b| {
        b.listener(ws_listener)
            .listener(pki.listener(ListenerKind::Wss, false))
    })
    .await;
    let ws = b.addr_of(ListenerKind::Ws).unwrap().port();
    let wss = b.addr_of(ListenerKind::Wss).unwrap().port();
    let tcp = b.addr_of(ListenerKind::Tcp).unwrap();
    let (watcher, mut events) = Client::connect(options(format!("mqtt://{tcp}"), "tcp-watcher"))
        .await
        .unwrap();
    watcher.subscribe("web/#", QoS::AtLeastOnce).await.unwrap();
    let (sub, mut sub_events) = Client::connect(
        options(format!("wss://localhost:{wss}"), "wss-sub")
            .tls(TlsOptions::new().ca_pem(pki.ca_pem.clone())),
    )
    .await
    .unwrap();
    sub.subscribe("tcp/#", QoS::ExactlyOnce).await.unwrap();
    let (publ, _pe) = Client::connect(options(format!("ws://127.0.0.1:{ws}/custom"), "ws-pub"))
        .await
        .unwrap();
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
        publ.publish("web/x", format!("q{}", qos.as_u8()), qos)
            .await
            .unwrap();
    }
    watcher.publish("tcp/y", "back", QoS::ExactlyOnce).await.unwrap();
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while seen.len() < 3 {
        if let Some(Event::Message(m)) = tokio::time::timeout_at(deadline, events.recv()).await.unwrap() {
            seen.push(m.payload_str().unwrap().to_string());
        }
    }
    assert_eq!(seen, ["q0", "q1", "q2"]);
    loop {
        if let Some(Event::Message(m)) = tokio::time::timeout_at(deadline, sub_events.recv())
            .await
            .unwrap()
        {
            assert_eq!(m.payload_str(), Some("back"));
            break;
        }
    }
    // The default path is /mqtt: the custom one is needed here.
    assert!(Client::connect(options(format!("ws://127.0.0.1:{ws}"), "nopath"))
        .await
        .is_err());
}

/// A client may send its first WebSocket frame (here the MQTT CONNECT) in the same write as the
/// upgrade request, without waiting for the 101: the frame is kept and read after the handshake.
#[tokio::test]
async fn a_first_frame_sent_with_the_upgrade_request_is_read() {
    let ws_listener = tern_broker::ListenerConfig::new(ListenerKind::Ws, "127.0.0.1:0".parse().unwrap());
    let b = start(|b| b.listener(ws_listener)).await;
    let addr = b.addr_of(ListenerKind::Ws).unwrap();
    let mut request = b"GET /mqtt HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
Sec-WebSocket-Protocol: mqtt\r\n\r\n"
        .to_vec();
    // A masked binary frame holding a 3.1.1 CONNECT with client id "p".
    let connect = [
        0x10, 0x0D, 0x00, 0x04, b'M', b'Q', b'T', b'T', 4, 0x02, 0x00, 0x00, 0x00, 0x01, b'p',
    ];
    let mask = [0x11, 0x22, 0x33, 0x44];
    request.extend_from_slice(&[0x82, 0x80 | connect.len() as u8]);
    request.extend_from_slice(&mask);
    request.extend(connect.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(&request).await.unwrap();
    // The 101 response, then a binary frame with CONNACK 0x00.
    let mut got = Vec::new();
    let connack = [0x82, 0x04, 0x20, 0x02, 0x00, 0x00];
    let deadline = tokio::time::Instant::now() + WAIT;
    while !got.windows(connack.len()).any(|w| w == connack) {
        let mut chunk = [0u8; 1024];
        match tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&chunk[..n]),
            other => panic!(
                "no CONNACK after the 101: {other:?}; got {:?}",
                String::from_utf8_lossy(&got)
            ),
        }
    }
    assert!(
        got.starts_with(b"HTTP/1.1 101"),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
}
