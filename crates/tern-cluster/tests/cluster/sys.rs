//! `$SYS/cluster/...` (issue #15: "`$SYS` per node and cluster totals"): every node keeps
//! the cluster's totals and each node's figures; a node that stops is dropped from them.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tern_proto::{Packet, QoS};
use tern_testkit::nats::Nats;
use tern_testkit::raw::{Raw, V3, V5};

use crate::node;

/// Read `$SYS/cluster/...` on `sys` until `done` holds for what was seen (topic → payload,
/// the prefix cut), or panic after 15 s.
async fn until(
    sys: &mut Raw,
    seen: &mut HashMap<String, String>,
    done: impl Fn(&HashMap<String, String>) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !done(seen) {
        assert!(Instant::now() < deadline, "{seen:?}");
        if let Ok(Some(Packet::Publish(p))) = sys.next_within(Duration::from_millis(500)).await {
            let key = p
                .topic
                .strip_prefix("$SYS/cluster/")
                .unwrap_or(&p.topic)
                .to_string();
            seen.insert(key, String::from_utf8_lossy(&p.payload).into_owned());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_keeps_the_cluster_totals_and_drops_a_node_that_stops() {
    let nats = Nats::start(1, true);
    let every_second = |c: &mut tern_broker::Config| c.sys_interval_secs = 1;
    let a = node::start_configured(&node::config(&nats, "a"), every_second).await;
    let b = node::start_configured(&node::config(&nats, "b"), every_second).await;
    // One client on A (the reader), two on B.
    let mut sys = Raw::connect(a.addr(), V5, "sys-reader").await;
    sys.subscribe("$SYS/cluster/#", QoS::AtMostOnce).await;
    let _b1 = Raw::connect(b.addr(), V3, "b1").await;
    let _b2 = Raw::connect(b.addr(), V5, "b2").await;
    let mut seen = HashMap::new();
    until(&mut sys, &mut seen, |s| {
        s.get("nodes").map(String::as_str) == Some("2")
            && s.get("clients/connected").map(String::as_str) == Some("3")
            && s.get("node/b/clients/connected").map(String::as_str) == Some("2")
            && s.get("node/a/clients/connected").map(String::as_str) == Some("1")
    })
    .await;
    // The reader's subscription counts on A.
    assert!(
        seen.get("subscriptions/count").is_some_and(|n| n != "0"),
        "{seen:?}"
    );
    // Each node keeps its own $SYS/broker/... apart.
    let mut own = Raw::connect(b.addr(), V5, "own-reader").await;
    own.subscribe("$SYS/broker/clients/connected", QoS::AtMostOnce)
        .await;
    // (The retained value may still be from before this reader came: the next interval
    // counts it.)
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        assert!(Instant::now() < deadline, "B's $SYS/broker never said 3 clients");
        match own.next_within(Duration::from_secs(2)).await {
            Ok(Some(Packet::Publish(p))) if &p.payload[..] == b"3" => break,
            Ok(Some(Packet::Publish(_))) => {}
            other => panic!("{other:?}"),
        }
    }

    // B stops: after three intervals without news A counts one node, and B's topics go.
    drop(b);
    until(&mut sys, &mut seen, |s| {
        s.get("nodes").map(String::as_str) == Some("1")
            && s.get("node/b/clients/connected").map(String::as_str) == Some("")
            && s.get("clients/connected").map(String::as_str) == Some("1")
    })
    .await;
    drop(a);
}
