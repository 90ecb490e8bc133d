//! Retained messages across nodes (issue #15, design §3.2 "Retained", T3): set on one node,
//! read on another, also one started later; deleted on another; 5.0 Message Expiry holds.

use std::time::{Duration, Instant};

use tern_proto::{Packet, Publish, QoS};
use tern_testkit::nats::Nats;
use tern_testkit::raw::{pid, Raw, V3, V5};

use crate::node;

/// Subscribe to `filter` and return the retained messages that come within `wait`, sorted
/// by topic; v3.1.1 [MQTT-3.3.1-6]: a new subscription gets the retained messages that match.
async fn retained_on(addr: std::net::SocketAddr, client: &str, filter: &str, wait: Duration) -> Vec<Publish> {
    let mut s = Raw::connect(addr, V5, client).await;
    s.subscribe(filter, QoS::AtLeastOnce).await;
    let mut got = Vec::new();
    while let Ok(Some(Packet::Publish(p))) = s.next_within(wait).await {
        s.ack(&p).await;
        // A message that reaches this node after the SUBSCRIBE comes live (RETAIN 0): only
        // the retained ones count here.
        if p.retain {
            got.push(p);
        }
    }
    got.sort_by(|a, b| a.topic.cmp(&b.topic));
    got
}

/// Poll until the retained messages on `addr` for `filter` have the payloads `want`.
async fn eventually(addr: std::net::SocketAddr, filter: &str, want: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = retained_on(addr, "reader", filter, Duration::from_millis(300)).await;
        let payloads: Vec<String> = got
            .iter()
            .map(|p| String::from_utf8_lossy(&p.payload).into())
            .collect();
        if payloads == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "retained on {addr} for {filter}: {payloads:?}, want {want:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_messages_set_on_one_node_are_read_deleted_and_expire_on_others() {
    let nats = Nats::start(3, true);
    let a = node::start(&node::config(&nats, "a")).await;
    let b = node::start(&node::config(&nats, "b")).await;
    let mut p = Raw::connect(a.addr(), V3, "setter").await;
    // QoS 1: the PUBACK comes once the retained bucket and the stream hold it; QoS 0 too.
    p.publish("r/one", "1", QoS::AtLeastOnce, true).await;
    p.publish("r/two", "2", QoS::AtMostOnce, true).await;
    p.publish("r/one", "1b", QoS::ExactlyOnce, true).await;
    eventually(b.addr(), "r/#", &["1b", "2"]).await;

    // A node that starts later loads them before it serves.
    let c = node::start(&node::config(&nats, "c")).await;
    let got = retained_on(c.addr(), "late", "r/+", Duration::from_millis(500)).await;
    let payloads: Vec<&[u8]> = got.iter().map(|p| &p.payload[..]).collect();
    assert_eq!(payloads, vec![&b"1b"[..], &b"2"[..]]);
    assert_eq!(
        got[0].qos,
        QoS::AtLeastOnce,
        "min(retained QoS 2, subscription QoS 1)"
    );

    // Deleted on B with an empty retained message (v3.1.1 [MQTT-3.3.1-10], v5 [MQTT-3.3.1-6]): gone on A and C.
    let mut q = Raw::connect(b.addr(), V5, "deleter").await;
    q.publish("r/one", "", QoS::AtLeastOnce, true).await;
    eventually(a.addr(), "r/#", &["2"]).await;
    eventually(c.addr(), "r/#", &["2"]).await;

    // 5.0 Message Expiry: a retained message with 3 s left is not sent after it runs out
    // (v5 [MQTT-3.3.2-5]), on another node too.
    let mut m = Publish::new("r/short", "brief");
    m.qos = QoS::AtLeastOnce;
    m.retain = true;
    m.packet_id = Some(pid(5));
    m.properties.message_expiry_interval = Some(3);
    let sent = Instant::now();
    q.send(Packet::Publish(m)).await;
    assert!(matches!(q.recv().await, Packet::PubAck(_)));
    eventually(a.addr(), "r/#", &["brief", "2"]).await; // sorted by topic
    tokio::time::sleep((sent + Duration::from_millis(3100)).saturating_duration_since(Instant::now())).await;
    eventually(a.addr(), "r/#", &["2"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_apis_publish_and_retained_delete_reach_every_node() {
    // The admin API publishes as a client would: a subscriber on another node gets it, a
    // retained one is kept on every node, and deleting a retained message on one node
    // deletes it on the others (without a message to subscribers).
    let nats = Nats::start(1, true);
    let a = node::start(&node::config(&nats, "a")).await;
    let b = node::start(&node::config(&nats, "b")).await;
    let mut sub = Raw::connect(b.addr(), V5, "api-sub").await;
    sub.subscribe("api/#", QoS::AtLeastOnce).await;
    for (i, qos) in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce]
        .into_iter()
        .enumerate()
    {
        let m = tern_broker::Message::new(format!("api/{i}"), format!("m{i}"), qos, false);
        // No session on A matches: 0 there; QoS 1/2 answer once the cluster stored it.
        assert_eq!(
            a.broker.admin().publish_everywhere(m).await.expect("published"),
            0
        );
        // QoS 0 crosses on core NATS: wait for the node's subscription to be in place.
        let mut tries = 0;
        let p = loop {
            match sub
                .next_within(Duration::from_secs(if i == 0 { 1 } else { 10 }))
                .await
            {
                // A late copy of the QoS 0 message sent again below.
                Ok(Some(Packet::Publish(p))) if i > 0 && &p.payload[..] == b"m0" => {}
                Ok(Some(Packet::Publish(p))) => break p,
                other if i == 0 => {
                    assert!(matches!(other, Err(())), "{other:?}");
                    tries += 1;
                    assert!(tries < 20, "no QoS 0 message from A's admin API on B in 20 s");
                    let m = tern_broker::Message::new(format!("api/{i}"), format!("m{i}"), qos, false);
                    a.broker.admin().publish_everywhere(m).await.expect("published");
                }
                other => panic!("message {i} from A's admin API on B: {other:?}"),
            }
        };
        sub.ack(&p).await;
        assert_eq!(&p.payload[..], format!("m{i}").as_bytes());
        assert_eq!(p.qos, qos.min(QoS::AtLeastOnce));
    }
    let kept = tern_broker::Message::new("api/kept", "k", QoS::AtLeastOnce, true);
    a.broker
        .admin()
        .publish_everywhere(kept)
        .await
        .expect("published");
    let p = loop {
        match sub.next_within(Duration::from_secs(10)).await {
            // A late copy of the QoS 0 message sent again above.
            Ok(Some(Packet::Publish(p))) if &p.payload[..] == b"m0" => {}
            Ok(Some(Packet::Publish(p))) => break p,
            other => panic!("retained message from A's admin API on B: {other:?}"),
        }
    };
    sub.ack(&p).await;
    assert_eq!(&p.payload[..], b"k");
    eventually(b.addr(), "api/kept", &["k"]).await;
    // Deleted through B's admin API: gone from A too; the subscriber is not told.
    assert!(b.broker.admin().delete_retained_everywhere("api/kept"));
    eventually(a.addr(), "api/kept", &[]).await;
    assert!(a.broker.admin().retained_message("api/kept").is_none());
    sub.expect_silence(300).await;
}
