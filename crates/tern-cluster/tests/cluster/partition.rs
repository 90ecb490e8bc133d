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

/// How node a is cut off from NATS.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Cut {
    /// Its connection is closed, and new ones are refused.
    Closed,
    /// Its connection stays open and carries nothing (a partition that drops packets): node
    /// a finds out by its pings going unanswered.
    Paused,
}

/// A node cut off from NATS for longer than `node_timeout_ms` cannot be told from a dead one:
/// node b publishes the wills of its connections, although their clients are still
/// connected to it. Once back, node a finds them marked published in the bucket and closes
/// those connections (DISCONNECT 0x89 Server busy, with a Reason String) without publishing
/// the wills again: each will once. A client that connects again has its will armed anew,
/// published once when that connection drops. A will whose Will Delay Interval was still
/// running on node b is written again by node a, which cancels it there: that client stays
/// connected and no will goes out. Node a, which heard nobody during the cut, reaps none of
/// node b's wills when it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_for_longer_than_the_node_timeout_closes_the_connections_whose_wills_were_published() {
    wills_across_a_cut(Cut::Closed).await;
}

/// The same across a partition that drops packets: node a's connection to NATS stays open,
/// silent, and node a leaves it for a new one after three pings without an answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_behind_a_partition_that_drops_packets_closes_the_connections_whose_wills_were_published() {
    wills_across_a_cut(Cut::Paused).await;
}

async fn wills_across_a_cut(cut: Cut) {
    let (nats, relay, a, b) = nodes_a_through_a_relay_with(3_000, 1_500).await;
    let mut sub = Raw::connect(b.addr(), V5, "cut-will-sub").await;
    sub.subscribe("will/#", QoS::AtLeastOnce).await;
    let mut stays = crate::wills::with_will(a.addr(), "cut-stays").await;
    let mut other = crate::wills::with_will(a.addr(), "cut-other").await;
    let mut delayed = crate::wills::with_will_delayed(a.addr(), "cut-delayed", 12).await;
    let mut on_b = crate::wills::with_will(b.addr(), "cut-on-b").await;
    // Both wills are kept in the bucket before the cut.
    let nc = async_nats::connect(nats.urls()[0].as_str()).await.expect("nats");
    let kv = async_nats::jetstream::new(nc)
        .get_key_value("tern_wills")
        .await
        .expect("bucket");
    for id in ["cut-stays", "cut-other", "cut-delayed"] {
        will_kept(&kv, id).await;
    }
    match cut {
        Cut::Closed => relay.set_up(false),
        Cut::Paused => relay.pause(true),
    }
    let got = wills_until(&mut sub, 2).await;
    let mut sorted = got.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        ["cut-other is gone", "cut-stays is gone"],
        "node b took node a for dead and published its connections' wills"
    );
    // Node b took the delayed will too; it waits for its delay there.
    let reaped = Instant::now();
    match cut {
        Cut::Closed => relay.set_up(true),
        Cut::Paused => relay.pause(false),
    }
    // Once back, node a closes both connections: their wills went out.
    for (c, id) in [(&mut stays, "cut-stays"), (&mut other, "cut-other")] {
        match c.next_within(Duration::from_secs(30)).await {
            Ok(Some(Packet::Disconnect(d))) => {
                assert_eq!(d.reason_code, Some(ReasonCode::ServerBusy), "{d:?}");
                let why = d.properties.reason_string.as_deref().unwrap_or_default();
                assert!(why.contains("will"), "{id}: the Reason String says why: {d:?}");
            }
            other => panic!(
                "{id}: a connection whose will node b published: expected DISCONNECT 0x89, got {other:?}"
            ),
        }
    }
    // The delayed will's client and node b's client stay connected, and no will goes out:
    // not those published, not the delayed one (past its delay on node b), not node b's.
    delayed.sync().await;
    on_b.sync().await;
    let quiet = (reaped + Duration::from_secs(15)).saturating_duration_since(Instant::now());
    assert_eq!(
        crate::wills::wills(&mut sub, quiet.max(Duration::from_secs(2))).await,
        Vec::<String>::new(),
        "no will goes out again"
    );
    delayed.sync().await;
    on_b.sync().await;
    let (sa, sb) = (a.cluster.stats(), b.cluster.stats());
    assert_eq!(
        (
            sb.wills_published,
            sb.wills_cancelled,
            sa.wills_closed,
            sa.wills_published
        ),
        (2, 1, 2, 0),
        "counted: published and cancelled by node b, closed by node a"
    );
    // The client connects again: its will is armed anew, and goes out once when it drops.
    let again = crate::wills::with_will(a.addr(), "cut-stays").await;
    will_kept(&kv, "cut-stays").await;
    drop(again);
    assert_eq!(wills_until(&mut sub, 1).await, ["cut-stays is gone"]);
    drop((a, b));
}

/// A client that ends its connection normally while its node is cut off from NATS (for less
/// than the node timeout) has no will; the node cannot delete it from the bucket then, and
/// does once it is back: when the node dies later, only the wills of the connections still
/// open go out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_will_a_cut_off_node_could_not_forget_is_not_published_when_the_node_dies_later() {
    // The node timeout is longer than the cut and NATS' reconnection delays after it (up to
    // 4 s).
    let (nats, relay, a, b) = nodes_a_through_a_relay_with(3_000, 12_000).await;
    let mut sub = Raw::connect(b.addr(), V5, "forget-sub").await;
    sub.subscribe("will/#", QoS::AtLeastOnce).await;
    let bye = crate::wills::with_will(a.addr(), "cut-bye").await;
    let _open = crate::wills::with_will(a.addr(), "cut-open").await;
    let nc = async_nats::connect(nats.urls()[0].as_str()).await.expect("nats");
    let kv = async_nats::jetstream::new(nc)
        .get_key_value("tern_wills")
        .await
        .expect("bucket");
    will_kept(&kv, "cut-bye").await;
    will_kept(&kv, "cut-open").await;
    relay.set_up(false);
    bye.disconnect().await;
    // Longer than the deletion is tried (3 s).
    tokio::time::sleep(Duration::from_millis(4_000)).await;
    relay.set_up(true);
    // Node a is back once it stores a QoS 1 message again.
    let mut on_a = connect_patiently_clean(a.addr(), "forget-probe").await;
    let mut probe = tern_proto::Publish::new("elsewhere/probe", "back".to_string());
    probe.qos = QoS::AtLeastOnce;
    probe.packet_id = Some(tern_testkit::raw::pid(1));
    on_a.send(Packet::Publish(probe)).await;
    match on_a.next_within(Duration::from_secs(30)).await {
        Ok(Some(Packet::PubAck(_))) => {}
        other => panic!("node a back: expected a PUBACK, got {other:?}"),
    }
    // The will of `cut-bye` leaves the bucket.
    let key = crate::wills::will_key("a", "cut-bye");
    let deadline = Instant::now() + Duration::from_secs(20);
    while kv.get(&key).await.ok().flatten().is_some() {
        assert!(
            Instant::now() < deadline,
            "the will of cut-bye is still in the bucket"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    crate::wills::kill(a);
    assert_eq!(
        wills_until(&mut sub, 1).await,
        ["cut-open is gone"],
        "only the will of the connection still open goes out"
    );
    drop(b);
}

/// Wait until node a keeps `id`'s will in the bucket (at most 20 s).
async fn will_kept(kv: &async_nats::jetstream::kv::Store, id: &str) {
    let key = crate::wills::will_key("a", id);
    let deadline = Instant::now() + Duration::from_secs(20);
    while kv.get(&key).await.ok().flatten().is_none() {
        assert!(Instant::now() < deadline, "the will of {id} is not in the bucket");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A node whose NATS server stops answering without closing the connection (a partition
/// that drops packets) leaves it after three unanswered pings and goes on with another
/// server of its list within seconds: it acknowledges QoS 1 messages again. (With NATS'
/// default of one ping a minute it stayed on the dead connection for two minutes or more.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_nats_server_stops_answering_goes_on_with_another_within_seconds() {
    let nats = Nats::start(3, true);
    let port: u16 = nats.urls()[0].rsplit(':').next().unwrap().parse().unwrap();
    let relay = Relay::start(port).await;
    relay.set_up(true);
    let mut config = node::config(&nats, "a");
    // Only the relayed server: the others are learnt from it (NATS tells its clients the
    // addresses of the servers of its cluster).
    config.nats = vec![format!("nats://127.0.0.1:{}", relay.port)];
    config.publish_timeout_ms = 3_000;
    let a = node::start(&config).await;
    let mut p = Raw::connect(a.addr(), V5, "stop-answering").await;
    p.publish("answering/t", "before", QoS::AtLeastOnce, false).await;
    relay.pause(true);
    let paused = Instant::now();
    let mut k = 0u16;
    loop {
        assert!(
            paused.elapsed() < Duration::from_secs(40),
            "node a still cannot store a QoS 1 message 40 s after its NATS server stopped answering"
        );
        k += 1;
        let mut m = tern_proto::Publish::new("answering/t", "after".to_string());
        m.qos = QoS::AtLeastOnce;
        m.packet_id = Some(tern_testkit::raw::pid(k));
        p.send(Packet::Publish(m)).await;
        match p.next_within(Duration::from_secs(5)).await {
            Ok(Some(Packet::PubAck(ack))) if !ack.reason_code.is_error() => break,
            // Not answered yet: another message.
            Err(()) => {}
            // Not stored in time (DISCONNECT 0x89) or refused: again on a new connection.
            _ => p = connect_patiently_clean(a.addr(), &format!("stop-answering-{k}")).await,
        }
    }
    eprintln!(
        "node a stored again {:?} after its NATS server stopped answering",
        paused.elapsed()
    );
    relay.pause(false);
    drop(a);
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
