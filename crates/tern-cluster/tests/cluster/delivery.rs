//! Cross-node delivery (issue #15, design §4): clients on different nodes of one NATS
//! cluster exchange QoS 0/1/2 messages in 3.1.1 and 5.0, each publisher's order kept, and a
//! QoS 1/2 message is acknowledged only once JetStream has stored it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tern_proto::{Ack, Packet, ProtocolVersion, Publish, QoS, ReasonCode};
use tern_testkit::raw::{pid, Raw, V3, V5};

use crate::node;
use tern_testkit::nats::Nats;

/// Receive `n` PUBLISH packets, answering each as its QoS asks (and PUBREL with PUBCOMP).
async fn collect(sub: &mut Raw, n: usize, within: Duration) -> Vec<Publish> {
    let deadline = Instant::now() + within;
    let mut got = Vec::new();
    while got.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        let p = match sub.next_within(left).await {
            Ok(Some(p)) => p,
            other => panic!("{} of {n} messages, then {other:?}", got.len()),
        };
        match p {
            Packet::Publish(p) => {
                match (p.qos, p.packet_id) {
                    (QoS::AtLeastOnce, Some(id)) => sub.send(Packet::PubAck(Ack::new(id))).await,
                    (QoS::ExactlyOnce, Some(id)) => sub.send(Packet::PubRec(Ack::new(id))).await,
                    _ => {}
                }
                got.push(p);
            }
            Packet::PubRel(a) => sub.send(Packet::PubComp(Ack::new(a.packet_id))).await,
            p => panic!("unexpected {p:?}"),
        }
    }
    got
}

/// The number a test message carries as its payload.
fn number(p: &Publish) -> u32 {
    std::str::from_utf8(&p.payload)
        .expect("utf8")
        .parse()
        .expect("number")
}

/// Read `n` PUBACKs with Success.
async fn pubacks(publisher: &mut Raw, n: usize) {
    for k in 0..n {
        match publisher.next_within(Duration::from_secs(30)).await {
            Ok(Some(Packet::PubAck(r))) => assert_eq!(r.reason_code, ReasonCode::Success, "{r:?}"),
            other => panic!("expected {n} PUBACKs, got {other:?} after {k}"),
        }
    }
}

/// Publish QoS 0 probes on `topic` until `sub` receives one: the other node's NATS
/// subscription for the filter is then in place (it is made after the SUBACK).
async fn wait_for_interest(publisher: &mut Raw, sub: &mut Raw, topic: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        publisher.publish(topic, "probe", QoS::AtMostOnce, false).await;
        if let Ok(Some(Packet::Publish(p))) = sub.next_within(Duration::from_millis(100)).await {
            assert_eq!(&p.payload[..], b"probe");
            // Probes sent meanwhile may still arrive: drain them.
            while let Ok(Some(Packet::Publish(_))) = sub.next_within(Duration::from_millis(200)).await {}
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no NATS interest for {topic} within 5 s"
        );
    }
}

pub(crate) async fn exchange_all_qos(a: &node::Node, b: &node::Node, version: ProtocolVersion) {
    let tag = if version == V5 { "v5" } else { "v3" };
    let mut sub = Raw::connect(b.addr(), version, &format!("sub-{tag}")).await;
    let ack = sub.subscribe(&format!("x/{tag}/#"), QoS::ExactlyOnce).await;
    assert_eq!(ack.reason_codes, vec![ReasonCode::GrantedQoS2]);
    let mut publisher = Raw::connect(a.addr(), version, &format!("pub-{tag}")).await;
    wait_for_interest(&mut publisher, &mut sub, &format!("x/{tag}/probe")).await;

    // 30 messages, QoS 0, 1, 2 in turn, each waiting for its acknowledgement.
    for i in 0..30u32 {
        let qos = [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce][(i % 3) as usize];
        publisher
            .publish(&format!("x/{tag}/{i}"), &i.to_string(), qos, false)
            .await;
    }
    let got = collect(&mut sub, 30, Duration::from_secs(10)).await;
    // QoS 0 and QoS 1/2 take different paths (core NATS, the stream): each keeps its order;
    // v3.1.1+v5 [MQTT-4.6.0-6] orders messages of one topic, here every message has its own.
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
        let seq: Vec<u32> = got.iter().filter(|p| p.qos == qos).map(number).collect();
        let want: Vec<u32> = (0..30).filter(|i| (i % 3) as usize == qos as usize).collect();
        assert_eq!(seq, want, "{tag} QoS {qos:?}");
    }
    for p in &got {
        let i: u32 = std::str::from_utf8(&p.payload)
            .expect("utf8")
            .parse()
            .expect("number");
        assert_eq!(&*p.topic, format!("x/{tag}/{i}"));
        assert!(!p.retain);
    }
    // Nothing more: no duplicate; the last PUBRELs answered.
    while let Ok(Some(p)) = sub.next_within(Duration::from_millis(300)).await {
        match p {
            Packet::PubRel(a) => sub.send(Packet::PubComp(Ack::new(a.packet_id))).await,
            p => panic!("{tag}: unexpected {p:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_on_two_nodes_exchange_qos_0_1_2_in_both_versions() {
    let nats = Nats::start(3, true);
    let a = node::start(&node::config(&nats, "a")).await;
    let b = node::start(&node::config(&nats, "b")).await;
    exchange_all_qos(&a, &b, V3).await;
    exchange_all_qos(&b, &a, V5).await;
    assert!(a.cluster.stats().stored >= 20, "{:?}", a.cluster.stats());
    assert!(b.cluster.stats().received >= 20, "{:?}", b.cluster.stats());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publishers_order_holds_across_nodes_with_acknowledgements_pipelined() {
    let nats = Nats::start(3, true);
    // Node a may have 8 publishes to JetStream in flight: the 200 in flight here wait for
    // permits, which the answers taken meanwhile give back (a node that stopped taking them
    // while a publish waited for a permit stalled, then retried out of order).
    let mut config = node::config(&nats, "a");
    config.max_ack_inflight = 8;
    let a = node::start(&config).await;
    let b = node::start(&node::config(&nats, "b")).await;
    let mut local = Raw::connect(a.addr(), V3, "local").await;
    local.subscribe("o/#", QoS::AtLeastOnce).await;
    let mut remote = Raw::connect(b.addr(), V5, "remote").await;
    remote.subscribe("o/#", QoS::AtLeastOnce).await;
    // QoS 1 needs no NATS interest (every node tails every shard); two publishers, 300 each,
    // 100 in flight at a time (the broker's Receive Maximum).
    let mut p1 = Raw::connect(a.addr(), V3, "p1").await;
    let mut p2 = Raw::connect(a.addr(), V3, "p2").await;
    for batch in 0..3u16 {
        for p in [&mut p1, &mut p2] {
            for i in 0..100u16 {
                let mut m = Publish::new(format!("o/{}", i % 7), format!("{}", batch * 100 + i));
                m.qos = QoS::AtLeastOnce;
                m.packet_id = Some(pid(i + 1));
                p.send(Packet::Publish(m)).await;
            }
        }
        for p in [&mut p1, &mut p2] {
            for i in 0..100u16 {
                match p.recv().await {
                    Packet::PubAck(a) => assert_eq!(a.packet_id, pid(i + 1)),
                    other => panic!("expected PUBACK, got {other:?}"),
                }
            }
        }
    }
    for sub in [&mut local, &mut remote] {
        let got = collect(sub, 600, Duration::from_secs(20)).await;
        // Split by publisher: the payload numbers of p1 and p2 interleave, but each runs 0..300.
        let mut seen = std::collections::HashMap::<u32, u32>::new();
        for p in &got {
            let n = number(p);
            *seen.entry(n).or_default() += 1;
        }
        assert_eq!(seen.len(), 300);
        assert!(
            seen.values().all(|&c| c == 2),
            "each number twice, once per publisher"
        );
        // Per topic, and per publisher, order holds: the k-th copy of n comes after the
        // k-th copy of n-1 (two publishers with identical sequences).
        let mut firsts = Vec::new();
        let mut seconds = Vec::new();
        let mut count = std::collections::HashMap::<u32, u32>::new();
        for p in &got {
            let n = number(p);
            let c = count.entry(n).or_default();
            *c += 1;
            if *c == 1 {
                firsts.push(n)
            } else {
                seconds.push(n)
            }
        }
        assert!(firsts.windows(2).all(|w| w[0] < w[1]), "order of first copies");
        assert!(seconds.windows(2).all(|w| w[0] < w[1]), "order of second copies");
    }
}

/// Connect `client_id` (5.0, clean start) to `addr`, again every 200 ms while the node
/// answers 0x88 Server unavailable, until `deadline`.
async fn connect_once_available(addr: std::net::SocketAddr, client_id: &str, deadline: Instant) -> Raw {
    loop {
        let mut c = tern_proto::Connect::new(V5, client_id);
        c.keep_alive = 0;
        let (raw, ack) = Raw::connect_with(addr, c).await;
        match ack.reason_code {
            ReasonCode::Success => return raw,
            ReasonCode::ServerUnavailable if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            other => panic!("CONNACK for {client_id}: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_jetstream_quorum_nothing_is_acknowledged_and_the_publisher_is_told_server_busy() {
    let mut nats = Nats::start(3, true);
    let mut c = node::config(&nats, "a");
    c.publish_timeout_ms = 1500;
    let a = node::start(&c).await;
    let b = node::start(&node::config(&nats, "b")).await;
    let mut sub = Raw::connect(b.addr(), V5, "s").await;
    sub.subscribe("q", QoS::AtLeastOnce).await;
    let mut publisher = Raw::connect(a.addr(), V5, "p").await;
    publisher.publish("q", "before", QoS::AtLeastOnce, false).await;
    assert_eq!(
        &collect(&mut sub, 1, Duration::from_secs(5)).await[0].payload[..],
        b"before"
    );

    // Two of three servers gone: no quorum for any stream.
    nats.kill(1);
    nats.kill(2);
    let mut m = Publish::new("q", "during");
    m.qos = QoS::AtLeastOnce;
    m.packet_id = Some(pid(9));
    let sent = Instant::now();
    publisher.send(Packet::Publish(m)).await;
    // No PUBACK; after publish_timeout, DISCONNECT 0x89 Server busy (v5 section 3.14.2.1).
    let code = publisher.expect_closed().await;
    assert_eq!(code, Some(ReasonCode::ServerBusy));
    assert!(
        sent.elapsed() >= Duration::from_millis(1400),
        "{:?}",
        sent.elapsed()
    );

    nats.restart(1);
    nats.restart(2);
    nats.wait_healthy();
    // Once JetStream has a quorum again, publishing works: the next PUBACK comes. Until the
    // session bucket has a leader again the node answers CONNECT with 0x88 Server
    // unavailable: the client tries again.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut publisher = connect_once_available(a.addr(), "p", deadline).await;
    loop {
        let mut m = Publish::new("q", "after");
        m.qos = QoS::AtLeastOnce;
        m.packet_id = Some(pid(10));
        publisher.send(Packet::Publish(m)).await;
        match publisher.next_within(Duration::from_secs(3)).await {
            Ok(Some(Packet::PubAck(a))) if a.packet_id == pid(10) => break,
            // Not stored within publish_timeout yet (streams still electing leaders): 0x89
            // again, or no answer; try on a new connection.
            Ok(None | Some(Packet::Disconnect(_))) | Err(()) => {
                assert!(
                    Instant::now() < deadline,
                    "no PUBACK 30 s after the quorum returned"
                );
                publisher = connect_once_available(a.addr(), "p", deadline).await;
            }
            Ok(Some(other)) => panic!("unexpected {other:?}"),
        }
    }
    // The message published while there was no quorum may be stored later (the node keeps
    // retrying with the same Nats-Msg-Id): "during" is allowed, "after" must come, once the
    // other node's tailer has found the stream's new leader.
    let acked = Instant::now();
    let deadline = acked + Duration::from_secs(10);
    loop {
        let p = collect(&mut sub, 1, deadline.saturating_duration_since(Instant::now())).await;
        if &p[0].payload[..] == b"after" {
            eprintln!(
                "delivered on the other node {:?} after its PUBACK",
                acked.elapsed()
            );
            break;
        }
        assert_eq!(&p[0].payload[..], b"during");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_subscriber_on_another_node_loses_no_qos1_message() {
    // A subscriber that reads nothing for a second (slow, not stalled: under
    // backpressure_timeout_ms) while a publisher on another node sends 3,000 QoS 1
    // messages, far beyond its queue limit (200, so twice that before messages are
    // dropped). On one broker the publisher is slowed down; across nodes the subscriber's
    // node stops reading the stream until the queue has room. Before, the messages beyond
    // twice the limit were dropped although their PUBACKs had gone out
    // (v5 [MQTT-4.3.2-1]: a QoS 1 message is delivered at least once).
    let nats = Nats::start(1, true);
    let a = node::start(&node::config(&nats, "a")).await;
    let b = node::start_configured(&node::config(&nats, "b"), |c| c.max_queued_messages = 200).await;
    let mut sub = Raw::connect(b.addr(), V5, "slow").await;
    sub.subscribe("slow/#", QoS::AtLeastOnce).await;
    let total = 3_000u32;
    let publisher = tokio::spawn(async move {
        let mut p = Raw::connect(a.addr(), V3, "fast").await;
        for window in 0..total / 100 {
            for i in 0..100u16 {
                let mut m = Publish::new("slow/x", format!("{}", window * 100 + u32::from(i)));
                m.qos = QoS::AtLeastOnce;
                m.packet_id = Some(pid(i + 1));
                p.send(Packet::Publish(m)).await;
            }
            pubacks(&mut p, 100).await;
        }
        a
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    let got = collect(&mut sub, total as usize, Duration::from_secs(60)).await;
    let numbers: Vec<u32> = got.iter().map(number).collect();
    assert!(numbers.windows(2).all(|w| w[0] < w[1]), "in order, each once");
    let _a = publisher.await.expect("publisher");
    println!(
        "node b dropped {} messages",
        b.broker.admin().stats().messages_dropped
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_qos0_messages_crosses_in_packs_each_message_whole_and_in_order() {
    // One write of 600 QoS 0 PUBLISH packets: node a reads them together, and those that
    // wait together to be handed to NATS and differ only in their payload travel as one NATS
    // message (`cluster.qos0_pack`). Another topic, a message with a user property and an
    // empty payload break the runs; every message must arrive whole, with its own
    // properties, in its topic's order (v3.1.1+v5 [MQTT-4.6.0-6]).
    let nats = Nats::start(1, true);
    let a = node::start(&node::config(&nats, "a")).await;
    let b = node::start(&node::config(&nats, "b")).await;
    let mut sub = Raw::connect(b.addr(), V5, "packs-sub").await;
    sub.subscribe("k/#", QoS::AtMostOnce).await;
    let mut publisher = Raw::connect(a.addr(), V5, "packs-pub").await;
    wait_for_interest(&mut publisher, &mut sub, "k/probe").await;

    let mut burst = Vec::new();
    let mut sent = Vec::new();
    for i in 0..600u32 {
        let topic = if i % 50 == 7 { "k/u" } else { "k/t" };
        let payload = if i % 90 == 3 {
            String::new()
        } else {
            format!("{i:06}")
        };
        let mut m = Publish::new(topic, payload.clone());
        if i % 100 == 42 {
            m.properties
                .user_properties
                .push(("i".into(), i.to_string().into()));
        }
        burst.extend(tern_testkit::raw::encode(&Packet::Publish(m.clone()), V5));
        sent.push(m);
    }
    publisher.send_bytes(&burst).await;
    let got = collect(&mut sub, sent.len(), Duration::from_secs(20)).await;
    for topic in ["k/t", "k/u"] {
        let want: Vec<&Publish> = sent.iter().filter(|m| &*m.topic == topic).collect();
        let have: Vec<&Publish> = got.iter().filter(|m| &*m.topic == topic).collect();
        assert_eq!(have.len(), want.len(), "{topic}");
        for (h, w) in have.iter().zip(&want) {
            assert_eq!(h.payload, w.payload, "{topic}: in order, whole");
            assert_eq!(h.properties.user_properties, w.properties.user_properties);
        }
    }
    let stats = a.cluster.stats();
    assert!(stats.qos0_packs > 0, "nothing was packed: {stats:?}");
    assert_eq!(b.cluster.stats().undecodable, 0);
    sub.expect_silence(300).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos1_messages_stored_in_packs_reach_subscribers_and_a_shared_group_whole_and_in_order() {
    // Three writes of 100 PUBLISH packets (the broker's Receive Maximum), mostly QoS 1 to
    // one topic: node a reads each write together, and the QoS 1 messages of one publisher
    // to one topic without properties that wait together to be stored go as one JetStream
    // message (`cluster.qos1_pack`). Another topic, QoS 2 messages, user properties and
    // empty payloads break the runs. Node b's subscriber and its shared group's only member
    // get every message once, whole, with its own properties, in its topic's order
    // (v5 [MQTT-4.6.0-6]); the group's consumer acknowledges a pack once all its messages
    // are (nothing comes again).
    let nats = Nats::start(1, true);
    let a = node::start(&node::config(&nats, "a")).await;
    let mut config = node::config(&nats, "b");
    config.share_ack_wait_ms = 1000;
    let b = node::start(&config).await;
    let mut sub = Raw::connect(b.addr(), V5, "q1packs-sub").await;
    sub.subscribe("k/#", QoS::ExactlyOnce).await;
    let mut member = Raw::connect(b.addr(), V5, "q1packs-member").await;
    member.subscribe("$share/g/k/#", QoS::ExactlyOnce).await;
    let mut publisher = Raw::connect(a.addr(), V5, "q1packs-pub").await;

    let mut sent = Vec::new();
    for round in 0..3u16 {
        let mut burst = Vec::new();
        for i in 0..100u16 {
            let n = round * 100 + i;
            let topic = if n % 25 == 7 { "k/u" } else { "k/t" };
            let payload = if n % 45 == 3 {
                String::new()
            } else {
                format!("{n:06}")
            };
            let mut m = Publish::new(topic, payload);
            m.qos = if n % 40 == 11 {
                QoS::ExactlyOnce
            } else {
                QoS::AtLeastOnce
            };
            m.packet_id = Some(pid(i + 1));
            if n % 30 == 13 {
                m.properties
                    .user_properties
                    .push(("n".into(), n.to_string().into()));
            }
            burst.extend(tern_testkit::raw::encode(&Packet::Publish(m.clone()), V5));
            sent.push(m);
        }
        publisher.send_bytes(&burst).await;
        let mut settled = 0;
        while settled < 100 {
            match publisher.recv().await {
                Packet::PubAck(_) | Packet::PubComp(_) => settled += 1,
                Packet::PubRec(r) => publisher.send(Packet::PubRel(Ack::new(r.packet_id))).await,
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    for (who, client) in [("subscriber", &mut sub), ("member", &mut member)] {
        let got = collect(client, sent.len(), Duration::from_secs(20)).await;
        for topic in ["k/t", "k/u"] {
            let want: Vec<&Publish> = sent.iter().filter(|m| &*m.topic == topic).collect();
            let have: Vec<&Publish> = got.iter().filter(|m| &*m.topic == topic).collect();
            assert_eq!(have.len(), want.len(), "{who}, {topic}");
            for (h, w) in have.iter().zip(&want) {
                assert_eq!(h.payload, w.payload, "{who}, {topic}: in order, whole");
                assert_eq!(
                    (h.qos, &h.properties.user_properties),
                    (w.qos, &w.properties.user_properties)
                );
            }
        }
    }
    let stats = a.cluster.stats();
    assert!(stats.qos1_packs > 0, "nothing was packed: {stats:?}");
    assert_eq!(stats.stored, 300, "{stats:?}");
    assert_eq!(b.cluster.stats().undecodable, 0);
    println!("node a {stats:?}");
    // Beyond the group's ack wait (1 s) nothing comes again (the last QoS 2 deliveries'
    // PUBRELs aside): every pack was acknowledged once all its messages were.
    for (client, quiet) in [(&mut sub, 300), (&mut member, 2500)] {
        let until = Instant::now() + Duration::from_millis(quiet);
        while let Ok(Some(p)) = client
            .next_within(until.saturating_duration_since(Instant::now()))
            .await
        {
            match p {
                Packet::PubRel(r) => client.send(Packet::PubComp(Ack::new(r.packet_id))).await,
                other => panic!("expected nothing more, got {other:?}"),
            }
        }
    }
}

/// QoS 1 packs sent to a server that stopped answering (SIGSTOP), made for its
/// `max_payload` (1 MiB), meet a server with a smaller one (1 KiB) when they are tried again
/// (the server killed and started again so): each is refused as too large and stored one
/// message at a time, in order. Every message is acknowledged and reaches a subscriber on
/// the other node once, in the publisher's order (v5 [MQTT-4.6.0-6]). Before, such a pack
/// was retried forever and held up every store of its node; then, split, the messages of
/// the packs refused together were stored interleaved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos1_packs_a_server_with_a_smaller_max_payload_refuses_are_stored_one_by_one_in_order() {
    let mut nats = Nats::start(1, true);
    // The publisher waits about two answer timeouts (5 s each) for its PUBACKs: room for a
    // slow machine before it would be disconnected (0x89).
    let mut config = node::config(&nats, "a");
    config.publish_timeout_ms = 60_000;
    let a = node::start(&config).await;
    let b = node::start(&node::config(&nats, "b")).await;
    let mut sub = Raw::connect(b.addr(), V5, "split-sub").await;
    sub.subscribe("k/#", QoS::AtLeastOnce).await;
    let mut publisher = Raw::connect(a.addr(), V5, "split-pub").await;
    // 100 messages of 60 bytes in one write, all answered before the next write.
    let burst = |round: u16| {
        let mut bytes = Vec::new();
        let mut sent = Vec::new();
        for i in 0..100u16 {
            let mut m = Publish::new("k/t", format!("{round}-{i:04}{}", "x".repeat(54)));
            m.qos = QoS::AtLeastOnce;
            m.packet_id = Some(pid(i + 1));
            bytes.extend(tern_testkit::raw::encode(&Packet::Publish(m.clone()), V5));
            sent.push(m.payload);
        }
        (bytes, sent)
    };
    // Node a reads more at once as its reads of the publisher's socket fill (they start
    // small): after these, a write of 100 is read in one or two pieces.
    for round in 0..3 {
        let (bytes, _) = burst(round);
        publisher.send_bytes(&bytes).await;
        pubacks(&mut publisher, 100).await;
        assert_eq!(collect(&mut sub, 100, Duration::from_secs(20)).await.len(), 100);
    }

    // While the server answers nothing: what node a reads at once waits together and goes
    // in packs (of up to 32: 2 KiB or more each), not answered.
    nats.pause(0);
    let (bytes, sent) = burst(3);
    let retries = a.cluster.stats().store_retries;
    publisher.send_bytes(&bytes).await;
    // Once an answer is overdue (5 s), the packs were sent: they were made for this server.
    let deadline = Instant::now() + Duration::from_secs(30);
    while a.cluster.stats().store_retries == retries {
        assert!(
            Instant::now() < deadline,
            "nothing was sent to the stopped server"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    nats.kill(0);
    nats.restart_with(0, "max_payload: 1024");
    pubacks(&mut publisher, 100).await;
    let got = collect(&mut sub, 100, Duration::from_secs(20)).await;
    let payloads: Vec<_> = got.into_iter().map(|m| m.payload).collect();
    assert!(payloads == sent, "each message once, in the publisher's order");
    let stats = a.cluster.stats();
    assert!(stats.qos1_packs_split > 0, "no pack was refused: {stats:?}");
    println!("node a {stats:?}");
    sub.expect_silence(300).await;
}

/// Of the last 10,000 QoS 0 messages of a watched publisher, how many may be dropped all the
/// same on a loaded machine: the two-publisher test lost 16 and 34 of 10,000 in 2 of 6 runs
/// beside two busy loops, and once in a whole-suite run. The likely cause (inferred, not
/// traced): messages still on their way for longer than `flow::QUIET` while the machine
/// is busy, so that the lag rule takes what was said as seen and lets the publisher go on
/// by the session's room. The faults these tests guard against dropped 400-8,000.
const STARVED_SLACK: usize = 100;

/// One NATS server and two nodes: on node b (queue limit 100) the client `sub.0`
/// subscribed at QoS 0 to `sub.1/#` (as the only member of the shared subscription
/// `$share/GROUP/sub.1/#` with `group`), and on node a (on node b with `beside`) the client
/// `publisher`, whose QoS 0 messages reach it (`wait_for_interest`).
async fn slow_subscriber_across(
    sub: (&str, &str),
    publisher: &str,
    group: Option<&str>,
    beside: bool,
) -> (Nats, node::Node, node::Node, Raw, Raw) {
    let nats = Nats::start(1, true);
    let a = node::start(&node::config(&nats, "a")).await;
    let b = node::start_configured(&node::config(&nats, "b"), |c| c.max_queued_messages = 100).await;
    let mut s = Raw::connect(b.addr(), V3, sub.0).await;
    let filter = match group {
        Some(g) => format!("$share/{g}/{}/#", sub.1),
        None => format!("{}/#", sub.1),
    };
    s.subscribe(&filter, QoS::AtMostOnce).await;
    let mut p = Raw::connect(if beside { b.addr() } else { a.addr() }, V3, publisher).await;
    wait_for_interest(&mut p, &mut s, &format!("{}/probe", sub.1)).await;
    (nats, a, b, s, p)
}

/// Read QoS 0 messages at about 10,000 msg/s (10 ms after every 100) until none comes for
/// 2 s: per topic, the numbers received, each topic's in order.
async fn read_slowly(sub: &mut Raw) -> Vec<(String, Vec<u32>)> {
    let mut got: Vec<(String, Vec<u32>)> = Vec::new();
    let mut n = 0usize;
    while let Ok(Some(p)) = sub.next_within(Duration::from_secs(2)).await {
        let Packet::Publish(p) = p else {
            panic!("unexpected {p:?}")
        };
        let i = number(&p);
        let at = match got.iter().position(|(t, _)| *t == *p.topic) {
            Some(at) => at,
            None => {
                got.push((p.topic.to_string(), Vec::new()));
                got.len() - 1
            }
        };
        let of = &mut got[at].1;
        assert!(
            of.last().is_none_or(|&l| i > l),
            "{}: {i} after {:?}",
            p.topic,
            of.last()
        );
        of.push(i);
        n += 1;
        if n.is_multiple_of(100) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    got
}

/// Publish `total` numbered QoS 0 messages on `topic` (payload: the number, padded to `size`
/// bytes), 500 PUBLISH packets a write, with `pause` after each write.
fn spawn_burst(
    mut publisher: Raw,
    topic: &'static str,
    total: u32,
    size: usize,
    pause: Duration,
) -> tokio::task::JoinHandle<Raw> {
    tokio::spawn(async move {
        for chunk in 0..total.div_ceil(500) {
            let mut burst = Vec::new();
            for i in chunk * 500..((chunk + 1) * 500).min(total) {
                let m = Publish::new(topic, format!("{i:0size$}"));
                burst.extend(tern_testkit::raw::encode(&Packet::Publish(m), V3));
            }
            publisher.send_bytes(&burst).await;
            tokio::time::sleep(pause).await;
        }
        publisher
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_qos0_publisher_goes_only_as_far_as_a_slow_subscriber_on_another_node_has_room() {
    // On one broker a QoS 0 publisher whose subscriber is over its queue limits is slowed
    // down rather than have its messages dropped (`backpressure_qos0`). Across nodes the
    // subscriber's node tells the publisher's node how far the publisher may go: what it
    // has seen of it plus the room the subscriber has left (`flow.rs`). The publisher sends
    // about ten times as fast as the subscriber (limit 100) reads (500 messages every 5 ms
    // against about 10,000 msg/s). What it sends before the first word comes back (one
    // round trip) may still find no room; once it is watched nothing more is dropped: the
    // last 10,000 arrive whole. Without flow control about 12,000 of the 30,000 arrived
    // (8,000 of the last 20,000).
    held_back_by_a_slow_subscriber(None, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_qos0_publisher_goes_only_as_far_as_a_slow_shared_member_on_another_node_has_room() {
    // The same with the subscriber the only member of a shared subscription: its node
    // gets the group's QoS 0 messages through a NATS queue group (`shares.rs`), not the
    // ordinary subscriptions' path, and watches their publisher as well. Without it
    // 12,000 of the 30,000 arrived (4,000 of the last 10,000).
    held_back_by_a_slow_subscriber(Some("g"), false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_qos0_publisher_goes_only_as_far_as_a_slow_shared_member_on_its_own_node_has_room() {
    // Publisher and shared member on one node: in cluster mode the group's messages come
    // back through NATS, past the broker's own backpressure, so the node watches its own
    // publisher as it does another node's, and it is held back as on one broker. Without it
    // 12,000 of the 30,000 arrived (4,000 of the last 10,000).
    held_back_by_a_slow_subscriber(Some("g"), true).await;
}

/// A publisher sending 30,000 QoS 0 messages at about 100,000 msg/s to a subscriber
/// (limit 100) reading about 10,000 msg/s (see [`slow_subscriber_across`] for `group` and
/// `beside`): the subscriber's node held it back, and the last 10,000 arrive, in order.
async fn held_back_by_a_slow_subscriber(group: Option<&str>, beside: bool) {
    let (_nats, a, b, mut sub, publisher) =
        slow_subscriber_across(("held-sub", "held"), "held-pub", group, beside).await;
    let (first, total) = (20_000u32, 30_000u32);
    let sending = spawn_burst(publisher, "held/x", total, 1, Duration::from_millis(5));
    let got = read_slowly(&mut sub).await.remove(0).1;
    let _publisher = sending.await.expect("publisher");
    let (sa, sb) = (a.cluster.stats(), b.cluster.stats());
    let dropped = b.broker.admin().stats().messages_dropped;
    let second = got.iter().filter(|&&n| n >= first).count();
    println!(
        "received {} of {total} ({second} of the last {}), node b dropped {dropped}; node a {sa:?}; node b {sb:?}",
        got.len(),
        total - first
    );
    let publishers = if beside { &sb } else { &sa };
    assert!(
        sb.qos0_flow_told > 0 && publishers.qos0_flow_heard > 0 && publishers.qos0_flow_held > 0,
        "nobody was held back"
    );
    assert!(
        second + STARVED_SLACK >= (total - first) as usize,
        "the watched publisher lost {} messages",
        (total - first) as usize - second
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_stops_reading_holds_a_publisher_on_another_node_back_only_for_a_while() {
    // A subscriber that takes nothing for `backpressure_timeout_ms` is taken for stalled,
    // on one broker as across nodes: its messages are dropped and its publisher goes on,
    // so another subscriber of the same messages still gets them (all but what may find
    // no room before the first word comes back) and the publisher is not held for good.
    let nats = Nats::start(1, true);
    let a = node::start(&node::config(&nats, "a")).await;
    let b = node::start_configured(&node::config(&nats, "b"), |c| {
        c.max_queued_messages = 100;
        c.backpressure_timeout_ms = 300;
    })
    .await;
    let mut stuck = Raw::connect(b.addr(), V3, "stuck-sub").await;
    stuck.subscribe("st/#", QoS::AtMostOnce).await;
    let mut live = Raw::connect(b.addr(), V3, "live-sub").await;
    live.subscribe("st/#", QoS::AtMostOnce).await;
    let mut publisher = Raw::connect(a.addr(), V3, "st-pub").await;
    wait_for_interest(&mut publisher, &mut live, "st/probe").await;
    // 1 kB messages, about 100 MB/s: `stuck`'s socket buffers fill, and its queue after
    // them.
    let total = 20_000u32;
    let sending = spawn_burst(publisher, "st/x", total, 1000, Duration::from_millis(5));
    let (mut got, mut last) = (0u32, None);
    while let Ok(Some(p)) = live.next_within(Duration::from_secs(3)).await {
        let Packet::Publish(p) = p else {
            panic!("unexpected {p:?}")
        };
        let n = number(&p);
        assert!(last.is_none_or(|l| n > l), "in order: {n} after {last:?}");
        last = Some(n);
        got += 1;
    }
    // Held for good, node a would stop reading the publisher and its writes would block.
    let _publisher = tokio::time::timeout(Duration::from_secs(20), sending)
        .await
        .expect("the publisher was held back for good")
        .expect("publisher");
    let (sa, sb) = (a.cluster.stats(), b.cluster.stats());
    println!("live received {got} of {total}, the last {last:?}; node a {sa:?}; node b {sb:?}");
    assert!(sb.qos0_flow_told > 0, "the stalled subscriber was never watched");
    assert!(
        got >= total * 3 / 4,
        "only {got} of {total} reached the live subscriber"
    );
    drop(stuck);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_qos0_publishers_on_another_node_share_a_slow_subscribers_room() {
    // A session that two watched connections fill gives each of them half its room: given
    // all of it each, together they overran it and 400-1,000 of the last 10,000 of each
    // were dropped (without flow control, 6,500 of them).
    let (_nats, a, b, mut sub, p1) =
        slow_subscriber_across(("shared-sub", "two"), "two-pub-1", None, false).await;
    let p2 = Raw::connect(a.addr(), V3, "two-pub-2").await;
    // Each about 50,000 msg/s, five times what the subscriber reads of both together.
    let (first, total) = (10_000u32, 20_000u32);
    let sending = [
        spawn_burst(p1, "two/a", total, 1, Duration::from_millis(10)),
        spawn_burst(p2, "two/b", total, 1, Duration::from_millis(10)),
    ];
    let mut got = read_slowly(&mut sub).await;
    got.sort_unstable_by(|x, y| x.0.cmp(&y.0));
    let got: Vec<Vec<u32>> = got.into_iter().map(|(_, of)| of).collect();
    assert_eq!(got.len(), 2, "both publishers' messages arrive");
    for s in sending {
        s.await.expect("publisher");
    }
    let later: Vec<usize> = got
        .iter()
        .map(|of| of.iter().filter(|&&i| i >= first).count())
        .collect();
    println!(
        "received {} and {} of {total} each ({later:?} of the last {}); node b {:?}",
        got[0].len(),
        got[1].len(),
        total - first,
        b.cluster.stats()
    );
    assert!(a.cluster.stats().qos0_flow_held > 0, "nobody was held back");
    assert!(
        later
            .iter()
            .all(|&n| n + STARVED_SLACK >= (total - first) as usize),
        "watched publishers lost messages: {later:?} of the last {} arrived",
        total - first
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watched_publisher_whose_messages_go_elsewhere_is_not_held_back_for_long() {
    // The publisher's count counts every QoS 0 message of its connection, also those for
    // topics nobody on the watching node subscribes to: the number the watching node says
    // lags behind it. Once the subscriber has room (at half its limits) and for 100 ms
    // nothing of the publisher arrives and its number stays the same (`QUIET`), what was
    // said is taken as seen, and after three times the watch ends, rather than hold the
    // publisher back until nothing of it has arrived for 10 s (the last message came after
    // 10.0 s without that rule, after about 0.45 s with it).
    let (_nats, a, b, mut sub, publisher) =
        slow_subscriber_across(("lag-sub", "w"), "lag-pub", None, false).await;
    // Bursts the subscriber does not read at first, until the publisher is watched and held
    // (how soon the first word comes back varies with the machine's load); right after them
    // 5,000 messages nobody wants, and one the subscriber does.
    let held = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let sending = tokio::spawn({
        let held = held.clone();
        async move {
            let mut p = publisher;
            for _ in 0..40 {
                p = spawn_burst(p, "w/x", 500, 1, Duration::from_millis(5))
                    .await
                    .expect("publisher");
                if held.load(Ordering::Relaxed) {
                    break;
                }
            }
            let p = spawn_burst(p, "elsewhere/x", 5_000, 1, Duration::ZERO).await;
            let mut p = p.expect("publisher");
            p.publish("w/last", "last", QoS::AtMostOnce, false).await;
            p
        }
    });
    let watched = Instant::now() + Duration::from_secs(10);
    while a.cluster.stats().qos0_flow_held == 0 && Instant::now() < watched {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    held.store(true, Ordering::Relaxed);
    assert!(
        a.cluster.stats().qos0_flow_held > 0,
        "the publisher was never held back"
    );
    let release = Instant::now();
    let mut n = 0;
    loop {
        match sub.next_within(Duration::from_secs(15)).await {
            Ok(Some(Packet::Publish(p))) if &p.payload[..] == b"last" => break,
            Ok(Some(_)) => n += 1,
            other => panic!(
                "the last message did not arrive: {other:?} after {n} others; node a {:?}; node b {:?}",
                a.cluster.stats(),
                b.cluster.stats()
            ),
        }
    }
    let took = release.elapsed();
    let _publisher = sending.await.expect("publisher");
    println!(
        "held after {:?}; the last message arrived {took:?} after the subscriber began to read; node a {:?}",
        release - start,
        a.cluster.stats()
    );
    assert!(took < Duration::from_secs(5), "held back for {took:?}");
}
