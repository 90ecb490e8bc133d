//! WebSocket bad-upgrade flood: hundreds of HTTP requests at once that are not a usable MQTT
//! upgrade. Every one is answered (400, 404, 426, 431) and closed; nothing stays open, and a
//! proper upgrade still succeeds afterwards.

use tern_broker::ListenerKind;
use tokio::io::AsyncWriteExt;

use crate::support::*;

const ATTACKERS: usize = 200;
const UPGRADE: &str =
    "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";

/// (request, status of the answer)
fn requests() -> Vec<(String, u16)> {
    vec![
        ("GET /mqtt HTTP/1.1\r\nHost: x\r\n\r\n".into(), 400),
        ("GET /other HTTP/1.1\r\nHost: x\r\n\r\n".into(), 404),
        (
            format!("GET /mqtt HTTP/1.1\r\nHost: x\r\n{UPGRADE}Sec-WebSocket-Version: 8\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n"),
            426,
        ),
        (
            format!("GET /mqtt HTTP/1.1\r\nHost: x\r\n{UPGRADE}Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: chat\r\n\r\n"),
            400,
        ),
        (format!("GET /mqtt HTTP/1.1\r\nX-Pad: {}\r\n\r\n", "a".repeat(20 * 1024)), 431),
        ("POST /mqtt HTTP/1.1\r\nHost: x\r\n\r\n".into(), 400),
    ]
}

#[tokio::test]
async fn a_flood_of_bad_websocket_upgrades_is_answered_and_closed() {
    let b = Broker::start_ws(|_| {}).await;
    let ws = b.handle.addr_of(ListenerKind::Ws).unwrap();
    let canary = Canary::start(b.addr()).await;
    let sampler = b.sampler();
    let requests = requests();
    let mut socks = sockets(ws, ATTACKERS).await;
    for (i, s) in socks.iter_mut().enumerate() {
        let _ = s.write_all(requests[i % requests.len()].0.as_bytes()).await;
    }
    canary.progress().await;
    for (i, s) in socks.iter_mut().enumerate() {
        let status = requests[i % requests.len()].1;
        let answer = String::from_utf8_lossy(&closed(s).await).to_string();
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status} ")),
            "request {i}: {answer:?}"
        );
    }
    b.until("every attacker's connection is gone", |s| {
        s.connections_open == CANARY_CONNECTIONS
    })
    .await;
    let peak = sampler.finish().await;
    assert!(peak.connections_open <= CANARY_CONNECTIONS + ATTACKERS);
    // A proper upgrade still works.
    let mut s = tokio::net::TcpStream::connect(ws).await.unwrap();
    let ok = format!("GET /mqtt HTTP/1.1\r\nHost: x\r\n{UPGRADE}Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n");
    s.write_all(ok.as_bytes()).await.unwrap();
    let mut head = vec![0u8; 12];
    tokio::io::AsyncReadExt::read_exact(&mut s, &mut head)
        .await
        .unwrap();
    assert_eq!(&head, b"HTTP/1.1 101");
    canary.finish().await;
}
