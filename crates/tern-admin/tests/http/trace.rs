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
    s.write_all(format!("GET /api/v1/trace/{client_id} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
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
