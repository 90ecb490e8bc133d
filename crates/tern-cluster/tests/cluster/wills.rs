//! Wills of a node that dies (issue #15, design §3.2 "Wills"): a client on node B with a will,
//! B killed with its connection open: the will reaches a subscriber on node A, once, after
//! `node_timeout_ms`; a client that disconnected normally before has no will published; a
//! node that restarts under its name publishes the wills its previous run left.

use std::time::{Duration, Instant};

use tern_proto::{Connect, Packet, QoS, Will};
use tern_testkit::nats::Nats;
use tern_testkit::raw::{Raw, V5};

use crate::node;

/// Connect `id` to `addr` with a QoS 1 will on `will/ID`.
pub(crate) async fn with_will(addr: std::net::SocketAddr, id: &str) -> Raw {
    with_will_delayed(addr, id, 0).await
}

/// [`with_will`] with a Will Delay Interval of `delay` seconds (and a session that outlives
/// the connection by more, so that the delay counts).
pub(crate) async fn with_will_delayed(addr: std::net::SocketAddr, id: &str, delay: u32) -> Raw {
    let mut c = Connect::new(V5, id);
    let mut will = Will {
        topic: format!("will/{id}").into(),
        payload: format!("{id} is gone").into_bytes().into(),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: Default::default(),
    };
    if delay > 0 {
        will.properties.will_delay_interval = Some(delay);
        c.properties.session_expiry_interval = Some(delay * 10);
    }
    c.will = Some(will);
    let (raw, ack) = Raw::connect_with(addr, c).await;
    assert!(!ack.reason_code.is_error(), "{ack:?}");
    raw
}

/// The key of `client`'s will on `node` in the wills' bucket (`<node>.<client id in hex>`).
pub(crate) fn will_key(node: &str, client: &str) -> String {
    std::iter::once(format!("{node}."))
        .chain(client.bytes().map(|b| format!("{b:02x}")))
        .collect()
}

/// The node dies: nothing more of it reaches NATS (its cluster tasks stop first), then its
/// broker stops.
pub(crate) fn kill(n: node::Node) {
    let node::Node { broker, cluster } = n;
    drop(cluster);
    drop(broker);
}

/// The wills `sub` receives within `wait`, acknowledged.
pub(crate) async fn wills(sub: &mut Raw, wait: Duration) -> Vec<String> {
    let mut got = Vec::new();
    let deadline = Instant::now() + wait;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match sub.next_within(left).await {
            Ok(Some(Packet::Publish(p))) => {
                sub.ack(&p).await;
                got.push(String::from_utf8_lossy(&p.payload).into_owned());
            }
            Ok(Some(_)) => {}
            _ => break,
        }
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wills_of_a_killed_node_are_published_once_by_another() {
    let nats = Nats::start(1, true);
    let config = |name: &str| {
        let mut c = node::config(&nats, name);
        c.node_timeout_ms = 1500;
        c
    };
    let a = node::start(&config("a")).await;
    let b = node::start(&config("b")).await;
    let mut sub = Raw::connect(a.addr(), V5, "watcher").await;
    sub.subscribe("will/#", QoS::AtLeastOnce).await;

    // On B: one client that leaves normally (no will, v5 [MQTT-3.1.2-10]: DISCONNECT 0x00
    // deletes it), one that is still connected when B dies.
    let leaving = with_will(b.addr(), "leaving").await;
    let _staying = with_will(b.addr(), "staying").await;
    leaving.disconnect().await;
    // The keeper has written both wills and deleted one.
    tokio::time::sleep(Duration::from_millis(500)).await;
    kill(b);
    // v5 [MQTT-3.1.2-8]: the network connection closed without DISCONNECT: the will is
    // published, here by node A, once.
    let got = wills(&mut sub, Duration::from_secs(8)).await;
    assert_eq!(
        got,
        vec!["staying is gone".to_string()],
        "A published B's will once"
    );

    // B restarts under its name before anyone reaps: it publishes what its previous run left.
    let b = node::start(&config("b")).await;
    let _again = with_will(b.addr(), "again").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    kill(b);
    let b = node::start(&config("b")).await;
    let got = wills(&mut sub, Duration::from_secs(4)).await;
    assert_eq!(
        got,
        vec!["again is gone".to_string()],
        "the restarted B published it, once"
    );
    drop(b);
    drop(a);
}

/// A will whose first write JetStream refused (here its bucket is gone for a moment; in CI,
/// a bucket just created had no leader yet) is written again within moments, not a beat
/// later: a node dying meanwhile would take it along. With a node timeout of 60 s the beat is
/// 12 s, so only the quick retry can write it within the 6 s the test waits. Once written,
/// the will goes out when its node dies (here: published by the node restarted under the
/// same name, to a watcher on node b).
/// A node's configuration with a node timeout of 60 s: a beat of 12 s, longer than the
/// tests of the quick retries wait.
fn slow_beat(nats: &Nats, name: &str) -> tern_broker::ClusterConfig {
    let mut c = node::config(nats, name);
    c.node_timeout_ms = 60_000;
    c
}

/// One NATS server; nodes a and b with [`slow_beat`]; a watcher of `will/#` on node b; a
/// JetStream context.
async fn slow_beat_nodes() -> (Nats, node::Node, node::Node, Raw, async_nats::jetstream::Context) {
    let nats = Nats::start(1, true);
    let a = node::start(&slow_beat(&nats, "a")).await;
    let b = node::start(&slow_beat(&nats, "b")).await;
    let mut sub = Raw::connect(b.addr(), V5, "watcher").await;
    sub.subscribe("will/#", QoS::AtLeastOnce).await;
    let js = async_nats::jetstream::new(async_nats::connect(nats.urls()[0].as_str()).await.expect("nats"));
    (nats, a, b, sub, js)
}

/// The wills' bucket made again (as a node makes it), after a test deleted it.
async fn wills_bucket_again(js: &async_nats::jetstream::Context) -> async_nats::jetstream::kv::Store {
    js.create_key_value(async_nats::jetstream::kv::Config {
        bucket: "tern_wills".into(),
        history: 1,
        storage: async_nats::jetstream::stream::StorageType::File,
        ..Default::default()
    })
    .await
    .expect("the wills' bucket again")
}

/// Wait up to 6 s (half a [`slow_beat`]) until `key` is in the bucket (`present`) or not;
/// its value, if it is. Panics with `late` after that.
async fn within_moments(
    kv: &async_nats::jetstream::kv::Store,
    key: &str,
    present: bool,
    late: &str,
) -> Option<bytes::Bytes> {
    let deadline = Instant::now() + Duration::from_secs(6);
    loop {
        let value = kv.get(key).await.ok().flatten();
        if value.is_some() == present {
            return value;
        }
        assert!(Instant::now() < deadline, "{late}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// v5 [MQTT-3.1.2-10] and v5 [MQTT-3.14.4-3]: a will is discarded on DISCONNECT 0x00. Its
/// deletion from the wills' bucket that failed (the bucket could not be written then) is
/// made again within moments, as a failed write is, rather than at the next beat (12 s
/// here): meanwhile its node dying would have it published. The test puts the will back
/// as it was once the bucket is there again (as if the deletion had never reached it); the
/// retry must delete it within 6 s, and the node restarted under the same name then
/// publishes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_will_whose_deletion_failed_is_deleted_again_within_moments() {
    let (nats, a, b, mut sub, js) = slow_beat_nodes().await;
    let leaving = with_will(a.addr(), "leaving").await;
    let key = will_key("a", "leaving");
    let kv = js.get_key_value("tern_wills").await.expect("the wills' bucket");
    let value = within_moments(&kv, &key, true, "the will was not written").await;
    js.delete_key_value("tern_wills")
        .await
        .expect("delete the wills' bucket");
    leaving.disconnect().await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let kv = wills_bucket_again(&js).await;
    kv.put(&key, value.expect("a value"))
        .await
        .expect("the will back as it was");
    within_moments(
        &kv,
        &key,
        false,
        "the will was not deleted again before the next beat",
    )
    .await;
    kill(a);
    let _a = node::start(&slow_beat(&nats, "a")).await;
    let got = wills(&mut sub, Duration::from_secs(8)).await;
    assert!(got.is_empty(), "a will discarded on DISCONNECT went out: {got:?}");
    drop(b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_will_whose_first_write_failed_is_written_again_within_moments() {
    let (nats, a, b, mut sub, js) = slow_beat_nodes().await;
    js.delete_key_value("tern_wills")
        .await
        .expect("delete the wills' bucket");
    let _early = with_will(a.addr(), "early").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(a.cluster.stats().wills_stored, 0, "no bucket, no will written");
    let kv = wills_bucket_again(&js).await;
    let key = will_key("a", "early");
    within_moments(
        &kv,
        &key,
        true,
        "the will was not written again before the next beat",
    )
    .await;
    assert_eq!(a.cluster.stats().wills_stored, 1);
    kill(a);
    let _a = node::start(&slow_beat(&nats, "a")).await;
    let got = wills(&mut sub, Duration::from_secs(8)).await;
    assert_eq!(got, vec!["early is gone".to_string()], "published once");
    drop(b);
}
