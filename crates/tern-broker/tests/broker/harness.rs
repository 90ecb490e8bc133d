//! Starting a broker for a test; the raw MQTT peer is `tern_testkit::raw`, shared
//! with the conformance tests.

use tern_broker::{BrokerBuilder, BrokerHandle, Config, ManualClock};
use tern_proto::{Connect, ProtocolVersion};

pub use tern_testkit::raw::{pid, Raw, V3, V5};

/// Start a broker on 127.0.0.1:0.
pub async fn start() -> BrokerHandle {
    start_with(|_| {}).await
}

/// Start a broker on 127.0.0.1:0 with changed settings.
pub async fn start_with(f: impl FnOnce(&mut Config)) -> BrokerHandle {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter("tern_broker=debug")
        .try_init();
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

/// A CONNECT that keeps its session: clean session 0 (3.1.1) or clean start 0 with a
/// one-hour Session Expiry Interval (5.0); keep-alive off.
pub fn persistent(v: ProtocolVersion, id: &str) -> Connect {
    let mut c = Connect::new(v, id);
    c.clean_start = false;
    c.keep_alive = 0;
    if v.is_v5() {
        c.properties.session_expiry_interval = Some(3600);
    }
    c
}

/// A 5.0 CONNECT with a small Receive Maximum (a slow consumer); keep-alive off.
pub fn narrow_window(id: &str, receive_maximum: u16) -> Connect {
    let mut c = Connect::new(V5, id);
    c.keep_alive = 0;
    c.properties.receive_maximum = Some(receive_maximum);
    c
}

/// Wait (in steps of 10 ms, for at most 5 s) until `cond` holds; panics with `what` if it never does.
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..500 {
        if cond() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("not within 5 s: {what}");
}
