//! Starting a broker for a test, and small builders of packets.

use tern_broker::{BrokerBuilder, BrokerHandle, Config, ManualClock};
use tern_proto::{Connect, ProtocolVersion, Publish, QoS};
pub use tern_testkit::raw::{hex, pid, Raw, V3, V5};

/// A broker on 127.0.0.1:0 with the default settings.
pub async fn start() -> BrokerHandle {
    start_with(|_| {}).await
}

/// A broker on 127.0.0.1:0 with changed settings.
pub async fn start_with(f: impl FnOnce(&mut Config)) -> BrokerHandle {
    BrokerBuilder::new()
        .listen("127.0.0.1:0".parse().unwrap())
        .configure(f)
        .bind()
        .await
        .expect("bind")
        .spawn()
}

/// A broker on 127.0.0.1:0 whose protocol time (message and session expiry, will delays)
/// moves only with [`pass`].
pub async fn start_clocked(f: impl FnOnce(&mut Config)) -> (BrokerHandle, ManualClock) {
    let clock = ManualClock::new();
    let b = BrokerBuilder::new()
        .listen("127.0.0.1:0".parse().unwrap())
        .configure(f)
        .clock(clock.clone())
        .bind()
        .await
        .expect("bind")
        .spawn();
    (b, clock)
}

/// Let `d` of protocol time pass at once, and let the broker act on what fell due.
pub async fn pass(clock: &ManualClock, d: std::time::Duration) {
    clock.advance(d);
    for _ in 0..8 {
        tokio::task::yield_now().await;
    }
}

/// A CONNECT without keep-alive.
pub fn connect(v: ProtocolVersion, id: &str) -> Connect {
    let mut c = Connect::new(v, id);
    c.keep_alive = 0;
    c
}

/// A CONNECT for a session that outlives the connection (3.1.1 Clean Session 0,
/// 5.0 Clean Start 0 and an expiry of five minutes).
pub fn persistent(v: ProtocolVersion, id: &str) -> Connect {
    let mut c = connect(v, id);
    c.clean_start = false;
    if v.is_v5() {
        c.properties.session_expiry_interval = Some(300);
    }
    c
}

/// A PUBLISH with QoS and packet identifier.
pub fn publish(topic: &str, payload: &str, qos: QoS, id: u16) -> Publish {
    let mut p = Publish::new(topic, payload.to_string());
    p.qos = qos;
    p.packet_id = (qos != QoS::AtMostOnce).then(|| pid(id));
    p
}

/// End a persistent session: connect with a clean start and leave.
pub async fn end_session(addr: std::net::SocketAddr, v: ProtocolVersion, id: &str) {
    let (raw, _) = Raw::connect_with(addr, connect(v, id)).await;
    raw.disconnect().await;
}
