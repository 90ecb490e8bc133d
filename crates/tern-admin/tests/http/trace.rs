//! Live trace over HTTP: `GET /api/v1/trace/{client_id}` streams the client's packets as
//! server-sent events (`tern trace` is tested with the CLI, crates/tern/tests/cli).

use std::time::Duration;

use tern_client::QoS;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::support::*;

/// Open a trace stream; returns a reader positioned after the `started` event.
async fn open_trace(
    http: std::net::SocketAddr,
    client_id: &str,
) -> tokio::io::Lines<BufReader<tokio::net::TcpStream>> {
    let mut s = tokio::net::TcpStream::connect(http).await.unwrap();
    s.write_all(format!("GET /api/v1/trace/{client_id} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut lines = BufReader::new(s).lines();
    let first = lines.next_line().await.unwrap().unwrap();
    assert!(first.contains(" 200 "), "{first}");
    loop {
        let l = tokio::time::timeout(Duration::from_secs(5), lines.next_line())
            .await
            .expect("the started event")
            .unwrap()
            .unwrap();
        if l.starts_with("data:") && l.contains(client_id) {
            return lines;
        }
    }
}

/// The next `packet` event's JSON.
async fn next_packet(lines: &mut tokio::io::Lines<BufReader<tokio::net::TcpStream>>) -> serde_json::Value {
    loop {
        let l = tokio::time::timeout(Duration::from_secs(5), lines.next_line())
            .await
            .expect("a packet event within 5 s")
            .unwrap()
            .expect("the stream goes on");
        if let Some(data) = l.strip_prefix("data:") {
            return serde_json::from_str(data.trim()).unwrap();
        }
    }
}

#[tokio::test]
async fn a_trace_shows_the_clients_packets_in_and_out() {
    let t = start().await;
    let mut trace = open_trace(t.http, "traced").await;
    let (c, _e) = client(&t, "traced").await;
    let (other, _eo) = client(&t, "untraced").await;
    other
        .publish("elsewhere", "not shown", QoS::AtMostOnce)
        .await
        .unwrap();
    c.publish("t/1", "hello trace", QoS::AtLeastOnce).await.unwrap();
    let publish = next_packet(&mut trace).await;
    assert_eq!(publish["direction"], "in");
    assert_eq!(publish["type"], "PUBLISH");
    assert_eq!(publish["topic"], "t/1");
    assert_eq!(publish["qos"], 1);
    assert_eq!(publish["payload_size"], 11);
    assert_eq!(publish["payload_preview"]["text"], "hello trace");
    let id = publish["packet_id"].as_u64().expect("a packet id");
    let ack = next_packet(&mut trace).await;
    assert_eq!(
        (ack["direction"].as_str(), ack["type"].as_str()),
        (Some("out"), Some("PUBACK"))
    );
    assert_eq!(ack["packet_id"].as_u64(), Some(id));
    assert_eq!(ack["reason_codes"][0], 0x10, "5.0: no matching subscribers");
    assert_eq!(ack["size"], 5, "fixed header, packet id, reason code");
}

#[tokio::test]
async fn a_watch_streams_the_messages_on_matching_topics() {
    let t = start().await;
    assert_eq!(get(t.http, "/api/v1/watch?filter=a/%23/b").await.status, 400);
    assert_eq!(get(t.http, "/api/v1/watch?filter=%24share/g/a").await.status, 400);
    assert_eq!(get(t.http, "/api/v1/watch").await.status, 400);
    let mut s = tokio::net::TcpStream::connect(t.http).await.unwrap();
    s.write_all(b"GET /api/v1/watch?filter=w/%2B HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut lines = BufReader::new(s).lines();
    assert!(lines.next_line().await.unwrap().unwrap().contains(" 200 "));
    let (c, _e) = client(&t, "watched").await;
    // The watch may start after the first publishes: publish until one is seen.
    let publisher = tokio::spawn(async move {
        loop {
            c.publish("other/1", "no", QoS::AtMostOnce).await.unwrap();
            c.publish("w/1", "{\"t\": 21.5}", QoS::AtLeastOnce).await.unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let seen = next_packet(&mut lines).await;
    publisher.abort();
    assert_eq!(seen["topic"], "w/1");
    assert_eq!(seen["qos"], 1);
    assert_eq!(seen["payload"], "{\"t\": 21.5}");
}
