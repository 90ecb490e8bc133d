//! Chapter 6: MQTT over WebSocket (the broker's WebSocket listener).

use std::future::poll_fn;
use std::pin::Pin;

use futures_core::Stream;
use futures_sink::Sink;
use tern_broker::{BrokerBuilder, ListenerConfig, ListenerKind};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;

use crate::support::*;

#[tokio::test]
async fn the_broker_selects_the_mqtt_subprotocol() {
    let b = BrokerBuilder::new()
        .listen("127.0.0.1:0".parse().unwrap())
        .listener(ListenerConfig::new(
            ListenerKind::Ws,
            "127.0.0.1:0".parse().unwrap(),
        ))
        .bind()
        .await
        .expect("bind")
        .spawn();
    let addr = b.addr_of(ListenerKind::Ws).expect("a WebSocket listener");
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut req = format!("ws://{addr}/mqtt").into_client_request().unwrap();
    req.headers_mut()
        .insert("Sec-WebSocket-Protocol", HeaderValue::from_static("mqtt"));
    let (mut ws, resp) =
        tokio::time::timeout(tern_testkit::raw::WAIT, tokio_tungstenite::client_async(req, tcp))
            .await
            .expect("handshake in time")
            .expect("handshake");
    // v3.1.1+v5 [MQTT-6.0.0-4]: the subprotocol selected and returned is "mqtt".
    assert_eq!(resp.headers().get("Sec-WebSocket-Protocol").unwrap(), "mqtt");
    // A CONNECT in a binary message is answered with a CONNACK in a binary message.
    let connect = hex("10 0E 00 04 4D 51 54 54 04 02 00 00 00 02 77 73");
    poll_fn(|cx| Pin::new(&mut ws).poll_ready(cx)).await.unwrap();
    Pin::new(&mut ws)
        .start_send(Message::Binary(connect.into()))
        .unwrap();
    poll_fn(|cx| Pin::new(&mut ws).poll_flush(cx)).await.unwrap();
    let answer = tokio::time::timeout(
        tern_testkit::raw::WAIT,
        poll_fn(|cx| Pin::new(&mut ws).poll_next(cx)),
    )
    .await
    .expect("CONNACK in time");
    match answer {
        Some(Ok(Message::Binary(b))) => assert_eq!(&b[..], &hex("20 02 00 00")[..]),
        other => panic!("expected a binary CONNACK, got {other:?}"),
    }
}
