//! A node cut off from NATS while it runs: its connection goes through a relay that is cut
//! (`tern_testkit::relay`), then restored. The node and its clients keep running.

use std::time::{Duration, Instant};

use tern_proto::{Packet, QoS, ReasonCode};
use tern_testkit::nats::Nats;
use tern_testkit::raw::{Raw, V5};
use tern_testkit::relay::Relay;

use crate::node;
use crate::sessions::{connect, connect_patiently};

/// One NATS server; node a reaches it through a relay (carrying), with `publish_timeout_ms`;
/// node b directly.
async fn nodes_a_through_a_relay(publish_timeout_ms: u64) -> (Nats, Relay, node::Node, node::Node) {
    nodes_a_through_a_relay_with(publish_timeout_ms, 10_000).await
}

/// [`nodes_a_through_a_relay`], both nodes with `node_timeout_ms`.
async fn nodes_a_through_a_relay_with(
    publish_timeout_ms: u64,
    node_timeout_ms: u64,
) -> (Nats, Relay, node::Node, node::Node) {
    let nats = Nats::start(1, true);
    let port: u16 = nats.urls()[0].rsplit(':').next().unwrap().parse().unwrap();
    let relay = Relay::start(port).await;
    relay.set_up(true);
    let mut config_a = node::config(&nats, "a");
    config_a.nats = vec![format!("nats://127.0.0.1:{}", relay.port)];
    config_a.publish_timeout_ms = publish_timeout_ms;
    config_a.node_timeout_ms = node_timeout_ms;
    let mut config_b = node::config(&nats, "b");
    config_b.node_timeout_ms = node_timeout_ms;
    let a = node::start(&config_a).await;
    let b = node::start(&config_b).await;
    (nats, relay, a, b)
}

/// Receive `range` in order on `sub`, acknowledging each (earlier numbers that come again,
/// QoS 1 duplicates after a recovery, are skipped); at most 30 s.
async fn receive_in_order(sub: &mut Raw, range: std::ops::Range<u32>, who: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut next = range.start;
    while next < range.end {
        let left = deadline.saturating_duration_since(Instant::now());
        let m = match sub.next_within(left).await {
            Ok(Some(Packet::Publish(m))) => m,
            other => panic!("{who}: waiting for {next}, got {other:?}"),
        };
        sub.ack(&m).await;
        let Some(n) = std::str::from_utf8(&m.payload)
            .ok()
            .and_then(|t| t.parse::<u32>().ok())
        else {
            panic!("{who}: waiting for {next}, got {m:?}");
        };
        if n < next {
            continue;
        }
        assert_eq!(n, next, "{who}: {n} came before {next}");
        next += 1;
    }
}

/// A partition between a node and NATS: while node a is cut off, a QoS 1 message published
/// on it gets no PUBACK (its client is disconnected with 0x89 after `publish_timeout_ms`);
/// messages published on node b meanwhile are stored; a persistent session whose client
/// stays connected to node a gets them once a is back (its tailers go on from where they
/// were), and one whose client moves to node b during the cut finds its session there
/// (node b takes node a for gone and recovers it from the entry and the streams), gets them
/// there, and node a gives it up when it is back (closing, with 0x8E, a connection of that
/// client still open there). Nothing acknowledged is lost, and each session is held by one
/// node after the cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_from_nats_acknowledges_nothing_loses_nothing_and_gives_up_sessions_taken_meanwhile() {
    let (_nats, relay, a, b) = nodes_a_through_a_relay(3_000).await;
    let (mut stays, _) = connect(a.addr(), V5, "stays", false).await;
    stays.subscribe("cut/#", QoS::AtLeastOnce).await;
    let (mut moves, _) = connect(a.addr(), V5, "moves", false).await;
    moves.subscribe("cut/#", QoS::AtLeastOnce).await;
    // A client whose old connection to node a stays open while it connects to node b.
    let (mut twice, _) = connect(a.addr(), V5, "twice", false).await;
    twice.subscribe("twice/#", QoS::AtLeastOnce).await;
    let mut p = Raw::connect(b.addr(), V5, "cut-pub").await;
    for i in 0..10 {
        p.publish("cut/t", &i.to_string(), QoS::AtLeastOnce, false).await;
    }
    receive_in_order(&mut stays, 0..10, "stays, before the cut").await;
    receive_in_order(&mut moves, 0..10, "moves, before the cut").await;

    let mut on_a = Raw::connect(a.addr(), V5, "cut-pub-a").await;
    relay.set_up(false);
    // A QoS 1 message published on the cut-off node is not acknowledged.
    let mut m = tern_proto::Publish::new("elsewhere/a", "from a".to_string());
    m.qos = QoS::AtLeastOnce;
    m.packet_id = Some(tern_testkit::raw::pid(1));
    on_a.send(Packet::Publish(m)).await;
    match on_a.next_within(Duration::from_secs(10)).await {
        Ok(Some(Packet::Disconnect(d))) => assert_eq!(d.reason_code, Some(ReasonCode::ServerBusy), "{d:?}"),
        Ok(None) => {}
        other => panic!(
            "a PUBLISH on a node cut off from NATS: expected no PUBACK and DISCONNECT 0x89, got {other:?}"
        ),
    }
    // Stored by node b meanwhile.
    for i in 10..30 {
        p.publish("cut/t", &i.to_string(), QoS::AtLeastOnce, false).await;
    }
    // The client of `moves` goes to node b: node a does not answer, the session is
    // recovered there with what was stored for it.
    drop(moves);
    let (mut moves, ack) = connect_patiently(b.addr(), "moves").await;
    assert!(ack.session_present, "{ack:?}");
    receive_in_order(&mut moves, 10..30, "moves, on node b during the cut").await;
    // `twice` connects to node b while its connection to node a is open: node b cannot
    // tell node a to close it during the cut.
    let (_twice_on_b, ack) = connect_patiently(b.addr(), "twice").await;
    assert!(ack.session_present, "{ack:?}");

    relay.set_up(true);
    // `stays` gets what was stored during the cut once node a is back.
    receive_in_order(&mut stays, 10..30, "stays, after the cut").await;
    // Node a gives up the session node b took meanwhile.
    let deadline = Instant::now() + Duration::from_secs(30);
    while a.broker.admin().session("moves").is_some() {
        assert!(
            Instant::now() < deadline,
            "node a still holds the session node b recovered during the cut"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The old connection of `twice` is closed once node a is back, as a takeover closes it
    // on one broker (v5 [MQTT-3.1.4-3]: DISCONNECT 0x8E Session taken over).
    match twice.next_within(Duration::from_secs(30)).await {
        Ok(Some(Packet::Disconnect(d))) => {
            assert_eq!(d.reason_code, Some(ReasonCode::SessionTakenOver), "{d:?}")
        }
        other => panic!("the old connection of a session node b took during the cut: expected DISCONNECT 0x8E, got {other:?}"),
    }
    for i in 30..40 {
        p.publish("cut/t", &i.to_string(), QoS::AtLeastOnce, false).await;
    }
    receive_in_order(&mut stays, 30..40, "stays, later").await;
    receive_in_order(&mut moves, 30..40, "moves, later").await;
    // Each once: nothing else comes.
    for (sub, who) in [(&mut stays, "stays"), (&mut moves, "moves")] {
        if let Ok(Some(Packet::Publish(m))) = sub.next_within(Duration::from_millis(500)).await {
            panic!("{who}: {:?} came again", m.payload);
        }
    }
    drop((a, b));
}

/// A QoS 2 message published on a node cut off from NATS, by a client whose session keeps
/// QoS 2 state: the entry write that lists its packet id cannot be made, so no PUBREC comes
/// (DISCONNECT 0x89); the client resends it (DUP) to node b, which recovers the session and
/// stores the resend. The message must reach a subscriber once, also after node a is back
/// (before, node a stored its copy late once it was back: the subscriber got it twice; now
/// node a writes the entry again before it stores the message, finds it names node b, and
/// does not store it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_qos2_message_a_cut_off_node_could_not_list_is_delivered_once_after_its_resend_elsewhere() {
    qos2_resent_after_a_cut(false).await;
}

/// The same with the client resending to node a once it is back, where its session still
/// is: node a lists the id in the entry and stores the message, and answers the resend as a
/// duplicate (the message once, not lost). v5 [MQTT-4.3.3-10]: a repeated PUBLISH is not
/// delivered onwards again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_qos2_message_a_cut_off_node_could_not_list_is_delivered_once_after_its_resend_there() {
    qos2_resent_after_a_cut(true).await;
}

/// A QoS 2 publisher on node a (cut off from NATS through a relay) and a subscriber on
/// node b; the client resends its unanswered message to node a once it is back (`to_a`) or
/// to node b during the cut.
async fn qos2_resent_after_a_cut(to_a: bool) {
    let (_nats, relay, a, b) = nodes_a_through_a_relay(8_000).await;
    let mut sub = Raw::connect(b.addr(), V5, "q2-cut-sub").await;
    sub.subscribe("q2cut/#", QoS::ExactlyOnce).await;
    let (mut p, _) = connect(a.addr(), V5, "q2-cut-pub", false).await;
    // A first message: the session keeps QoS 2 state from here on.
    p.publish("q2cut/t", "0", QoS::ExactlyOnce, false).await;
    let got = receive_qos2(&mut sub, Duration::from_secs(10)).await;
    assert_eq!(got, vec!["0".to_string()]);

    relay.set_up(false);
    let mut m = tern_proto::Publish::new("q2cut/t", "1".to_string());
    m.qos = QoS::ExactlyOnce;
    m.packet_id = Some(tern_testkit::raw::pid(2));
    p.send(Packet::Publish(m.clone())).await;
    match p.next_within(Duration::from_secs(20)).await {
        Ok(Some(Packet::Disconnect(d))) => assert_eq!(d.reason_code, Some(ReasonCode::ServerBusy), "{d:?}"),
        Ok(None) => {}
        other => panic!("a QoS 2 PUBLISH on a node cut off from NATS: expected no PUBREC and DISCONNECT 0x89, got {other:?}"),
    }
    // The entry write that would list the id was given up by then (it is tried for 5 s,
    // the PUBREC waits 8 s).
    if to_a {
        relay.set_up(true);
    }
    let (mut p, ack) = connect_patiently(if to_a { a.addr() } else { b.addr() }, "q2-cut-pub").await;
    assert!(ack.session_present, "{ack:?}");
    m.dup = true;
    p.send(Packet::Publish(m)).await;
    match p.next_within(Duration::from_secs(10)).await {
        Ok(Some(Packet::PubRec(r))) => assert_eq!(r.packet_id, tern_testkit::raw::pid(2)),
        other => panic!("expected PUBREC 2 for the resend, got {other:?}"),
    }
    p.send(Packet::PubRel(tern_proto::Ack::new(tern_testkit::raw::pid(2))))
        .await;
    match p.next_within(Duration::from_secs(10)).await {
        Ok(Some(Packet::PubComp(c))) => assert_eq!(c.packet_id, tern_testkit::raw::pid(2)),
        other => panic!("expected PUBCOMP 2 for the resend, got {other:?}"),
    }
    relay.set_up(true);
    if !to_a {
        // Node a, back, does not store its copy: the session is node b's now.
        let deadline = Instant::now() + Duration::from_secs(30);
        while a.cluster.stats().qos2_refused == 0 {
            assert!(Instant::now() < deadline, "node a did not refuse its copy");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    p.publish("q2cut/t", "2", QoS::ExactlyOnce, false).await;
    // Node a stores again (nothing of it is stuck): a QoS 1 message published there.
    let mut on_a = Raw::connect(a.addr(), V5, "q2-cut-pub-a").await;
    on_a.publish("q2cut/a", "3", QoS::AtLeastOnce, false).await;
    let got = receive_qos2(&mut sub, Duration::from_secs(3)).await;
    assert_eq!(
        got,
        vec!["1".to_string(), "2".to_string(), "3".to_string()],
        "each message once, in order"
    );
    drop((a, b));
}

/// The payloads of the QoS 1/2 messages `sub` receives (acknowledging each, completing
/// QoS 2 ones) until none comes for `quiet`.
async fn receive_qos2(sub: &mut Raw, quiet: Duration) -> Vec<String> {
    let mut got = Vec::new();
    loop {
        match sub.next_within(quiet).await {
            Ok(Some(Packet::Publish(m))) => {
                let id = m.packet_id.expect("QoS 1 or 2");
                match m.qos {
                    QoS::ExactlyOnce => sub.send(Packet::PubRec(tern_proto::Ack::new(id))).await,
                    _ => sub.send(Packet::PubAck(tern_proto::Ack::new(id))).await,
                }
                got.push(String::from_utf8_lossy(&m.payload).into_owned());
            }
            Ok(Some(Packet::PubRel(r))) => sub.send(Packet::PubComp(tern_proto::Ack::new(r.packet_id))).await,
            Err(()) => return got,
            other => panic!("subscriber: unexpected {other:?}"),
        }
    }
}

/// A node cut off from NATS for longer than `node_timeout_ms` cannot be told from a dead one:
/// another node publishes the wills of its connections, although their clients are still
/// connected to it. Once it is back, such a connection that ends without DISCONNECT has its
/// will published again by its own node (a partition's cost, documented in docs/cluster.md,
/// "Wills when a node dies"); one that ends normally has none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_for_longer_than_the_node_timeout_has_its_connections_wills_published() {
    let (nats, relay, a, b) = nodes_a_through_a_relay_with(3_000, 1_500).await;
    let mut sub = Raw::connect(b.addr(), V5, "cut-will-sub").await;
    sub.subscribe("will/#", QoS::AtLeastOnce).await;
    let stays = crate::wills::with_will(a.addr(), "cut-stays").await;
    let leaves = crate::wills::with_will(a.addr(), "cut-leaves").await;
    // Both wills are kept in the bucket before the cut.
    let nc = async_nats::connect(nats.urls()[0].as_str()).await.expect("nats");
    let kv = async_nats::jetstream::new(nc)
        .get_key_value("tern_wills")
        .await
        .expect("bucket");
    let deadline = Instant::now() + Duration::from_secs(20);
    for id in ["cut-stays", "cut-leaves"] {
        let key: String = std::iter::once("a.".to_string())
            .chain(id.bytes().map(|b| format!("{b:02x}")))
            .collect();
        while kv.get(&key).await.ok().flatten().is_none() {
            assert!(Instant::now() < deadline, "the will of {id} is not in the bucket");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    relay.set_up(false);
    let got = wills_until(&mut sub, 2).await;
    let mut sorted = got.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        ["cut-leaves is gone", "cut-stays is gone"],
        "node b took node a for dead and published its connections' wills"
    );
    relay.set_up(true);
    // Node a is back once it stores a QoS 1 message again; its clients were connected all
    // along.
    let mut on_a = connect_patiently_clean(a.addr(), "cut-will-probe").await;
    let mut probe = tern_proto::Publish::new("elsewhere/probe", "back".to_string());
    probe.qos = QoS::AtLeastOnce;
    probe.packet_id = Some(tern_testkit::raw::pid(1));
    on_a.send(Packet::Publish(probe)).await;
    match on_a.next_within(Duration::from_secs(30)).await {
        Ok(Some(Packet::PubAck(_))) => {}
        other => panic!("node a back: expected a PUBACK, got {other:?}"),
    }
    leaves.disconnect().await;
    drop(stays);
    let again = wills_until(&mut sub, 1).await;
    assert_eq!(
        again,
        ["cut-stays is gone"],
        "once back, node a publishes the will of a connection that ends without DISCONNECT"
    );
    drop((a, b));
}

/// The wills `sub` receives until `n` came (at most 30 s), then any more within 1 s.
async fn wills_until(sub: &mut Raw, n: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut got = Vec::new();
    while got.len() < n && Instant::now() < deadline {
        got.extend(crate::wills::wills(sub, Duration::from_millis(500)).await);
    }
    got.extend(crate::wills::wills(sub, Duration::from_secs(1)).await);
    got
}

/// A clean 5.0 connection to `addr`, its CONNACK awaited up to 30 s (a node just back on
/// NATS may take a while to claim).
async fn connect_patiently_clean(addr: std::net::SocketAddr, id: &str) -> Raw {
    let mut c = tern_proto::Connect::new(V5, id);
    c.keep_alive = 0;
    let mut raw = Raw::open(addr, V5).await;
    raw.send(Packet::Connect(Box::new(c))).await;
    match raw.next_within(Duration::from_secs(30)).await {
        Ok(Some(Packet::ConnAck(a))) => assert!(!a.reason_code.is_error(), "{a:?}"),
        other => panic!("expected CONNACK, got {other:?}"),
    }
    raw
}
