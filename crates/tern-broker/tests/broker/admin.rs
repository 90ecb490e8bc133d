//! The broker's public face for an embedding program or an admin API: listing sessions
//! and disconnecting clients through `BrokerHandle`.

use tern_proto::{Connect, Packet, QoS, ReasonCode, RetainHandling, SubscriptionOptions, Will};

use crate::harness::*;

#[tokio::test]
async fn sessions_list_connected_clients_and_offline_persistent_sessions() {
    let b = start().await;
    assert!(b.sessions().is_empty());
    let mut c = Connect::new(V5, "online");
    c.keep_alive = 30;
    c.username = Some("alice".into());
    let (mut online, _) = Raw::connect_with(b.addr(), c).await;
    let opts = SubscriptionOptions {
        qos: QoS::AtLeastOnce,
        no_local: true,
        retain_as_published: false,
        retain_handling: RetainHandling::DoNotSend,
    };
    online.subscribe_with("a/+", opts, Some(7)).await;
    online.subscribe("$share/g/b/#", QoS::AtMostOnce).await;

    let (mut offline, _) = Raw::connect_with(b.addr(), persistent(V3, "offline")).await;
    offline.subscribe("x/#", QoS::ExactlyOnce).await;
    offline.disconnect().await;
    let mut publ = Raw::connect(b.addr(), V5, "publisher").await;
    publ.publish("x/1", "queued", QoS::AtLeastOnce, false).await;

    let all = b.sessions();
    let ids: Vec<&str> = all.iter().map(|s| s.client_id.as_str()).collect();
    assert_eq!(ids, ["offline", "online", "publisher"]);

    let on = b.session("online").expect("listed");
    assert_eq!(on.protocol_version, V5);
    let conn = on.connection.expect("connected");
    assert_eq!(conn.username.as_deref(), Some("alice"));
    assert_eq!(conn.keep_alive, 30);
    assert_eq!(conn.listener, format!("tcp {}", b.addr()));
    assert_eq!(conn.peer.ip(), b.addr().ip());
    assert!(conn.connected_at <= std::time::SystemTime::now());
    let filters: Vec<(&str, Option<u32>)> = on
        .subscriptions
        .iter()
        .map(|s| (s.filter.as_str(), s.identifier))
        .collect();
    assert_eq!(filters, [("$share/g/b/#", None), ("a/+", Some(7))]);
    assert_eq!(on.subscriptions[1].options, opts);
    assert_eq!(on.expiry_interval, 0);

    let off = b.session("offline").expect("kept");
    assert!(off.connection.is_none());
    assert_eq!(off.protocol_version, V3);
    assert_eq!((off.queued, off.inflight), (1, 0));
    assert_eq!(off.queued_bytes, "queued".len());
    assert_eq!(
        off.expiry_interval,
        u32::MAX,
        "3.1.1 Clean Session 0 never expires"
    );

    assert!(b.session("nobody").is_none());
}

#[tokio::test]
async fn an_administrator_disconnects_a_client_and_its_will_is_published() {
    let b = start().await;
    let mut watcher = Raw::connect(b.addr(), V5, "watcher").await;
    watcher.subscribe("wills/#", QoS::AtMostOnce).await;
    let mut c = persistent(V5, "device");
    c.will = Some(Will {
        topic: "wills/device".into(),
        payload: "gone".into(),
        qos: QoS::AtMostOnce,
        retain: false,
        properties: Default::default(),
    });
    let (mut dev, _) = Raw::connect_with(b.addr(), c.clone()).await;
    dev.subscribe("cmd/#", QoS::AtLeastOnce).await;

    assert!(b.disconnect("device", false));
    // v5 section 4.13: the server says why it closes: DISCONNECT 0x98 Administrative action.
    assert_eq!(dev.expect_closed().await, Some(ReasonCode::AdministrativeAction));
    // The client did not send DISCONNECT: its will is published (v5 [MQTT-3.1.2-8]).
    let will = watcher.recv_publish().await;
    assert_eq!(&will.payload[..], b"gone");
    // Its persistent session stays, offline, with its subscription.
    let s = b.session("device").expect("kept");
    assert!(s.connection.is_none());
    assert_eq!(s.subscriptions.len(), 1);
    let (dev, ack) = Raw::connect_with(b.addr(), c.clone()).await;
    assert!(ack.session_present);

    // 3.1.1 clients get no DISCONNECT: the connection is closed.
    let (mut old, _) = Raw::connect_with(b.addr(), persistent(V3, "old")).await;
    assert!(b.disconnect("old", false));
    assert_eq!(old.expect_closed().await, None);

    // Discarding the session: connected or offline, it is gone.
    assert!(b.disconnect("device", true));
    let mut dev = dev;
    assert_eq!(dev.expect_closed().await, Some(ReasonCode::AdministrativeAction));
    watcher.recv_publish().await;
    assert!(b.session("old").is_some_and(|s| s.connection.is_none()));
    assert!(b.disconnect("old", true));
    let (_dev, ack) = Raw::connect_with(b.addr(), c).await;
    assert!(!ack.session_present);
    assert!(b.session("old").is_none());
    assert!(!b.disconnect("nobody", true));
}

/// A broker on 127.0.0.1:0 with `backplane`.
async fn start_on_backplane(
    backplane: std::sync::Arc<dyn tern_broker::backplane::Backplane>,
) -> tern_broker::BrokerHandle {
    tern_broker::BrokerBuilder::new()
        .listen("127.0.0.1:0".parse().unwrap())
        .backplane(backplane)
        .bind()
        .await
        .unwrap()
        .spawn()
}

/// A backplane that records what it hears.
#[derive(Debug, Default)]
struct Recorder(std::sync::Mutex<Vec<String>>);

impl tern_broker::backplane::Backplane for Recorder {
    fn published(&self, m: &std::sync::Arc<tern_broker::Message>) {
        let line = format!("pub {} {}", m.topic, String::from_utf8_lossy(&m.payload));
        self.0.lock().unwrap().push(line);
    }
    fn subscribed(&self, filter: &str) {
        self.0.lock().unwrap().push(format!("sub {filter}"));
    }
    fn unsubscribed(&self, filter: &str) {
        self.0.lock().unwrap().push(format!("unsub {filter}"));
    }
}

#[tokio::test]
async fn a_backplane_hears_publishes_and_subscriptions_and_brings_messages_in() {
    let rec = std::sync::Arc::new(Recorder::default());
    let b = start_on_backplane(rec.clone()).await;
    let mut sub = Raw::connect(b.addr(), V5, "sub").await;
    sub.subscribe("a/#", QoS::AtLeastOnce).await;
    sub.subscribe("$share/g/b", QoS::AtMostOnce).await;
    let mut publ = Raw::connect(b.addr(), V3, "pub").await;
    publ.publish("a/1", "local", QoS::AtLeastOnce, false).await;
    assert_eq!(&sub.recv_publish().await.payload[..], b"local");

    // A message from another node reaches local sessions and is not echoed back.
    let from_elsewhere = tern_broker::Message::new("a/2", "remote", QoS::AtLeastOnce, true);
    assert_eq!(b.publish(from_elsewhere), Ok(1));
    let p = sub.recv_publish().await;
    assert_eq!(&p.payload[..], b"remote");
    sub.ack(&p).await;
    assert!(b
        .publish(tern_broker::Message::new("a/+", "x", QoS::AtMostOnce, false))
        .is_err());
    // It was retained here too.
    let mut late = Raw::connect(b.addr(), V5, "late").await;
    late.subscribe("a/2", QoS::AtMostOnce).await;
    assert_eq!(&late.recv_publish().await.payload[..], b"remote");

    sub.send(tern_proto::Packet::Unsubscribe(tern_proto::Unsubscribe {
        packet_id: pid(8),
        properties: Default::default(),
        filters: vec!["a/#".into()],
    }))
    .await;
    assert!(matches!(sub.recv().await, tern_proto::Packet::UnsubAck(_)));
    drop(sub);
    drop(late);
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let seen = rec.0.lock().unwrap().clone();
    assert_eq!(
        seen,
        [
            "sub a/#",
            "sub $share/g/b",
            "pub a/1 local",
            "sub a/2",
            "unsub a/#",
            "unsub $share/g/b",
            "unsub a/2",
        ],
        "{seen:#?}"
    );
}

/// A backplane that records how a connection's messages reach it: in a batch, one numbered
/// QoS 0 message alone, or as any other message.
#[derive(Debug, Default)]
struct Batches(std::sync::Mutex<Vec<String>>);

impl tern_broker::backplane::Backplane for Batches {
    fn published(&self, m: &std::sync::Arc<tern_broker::Message>) {
        let line = format!("pub {}", String::from_utf8_lossy(&m.payload));
        self.0.lock().unwrap().push(line);
    }
    fn published_qos0(&self, m: &std::sync::Arc<tern_broker::Message>, _: tern_broker::backplane::Sent) {
        let line = format!("one {}", String::from_utf8_lossy(&m.payload));
        self.0.lock().unwrap().push(line);
    }
    fn published_qos0_all(
        &self,
        batch: &mut Vec<(std::sync::Arc<tern_broker::Message>, tern_broker::backplane::Sent)>,
    ) {
        let payloads: Vec<String> = batch
            .drain(..)
            .map(|(m, _)| String::from_utf8_lossy(&m.payload).into_owned())
            .collect();
        self.0
            .lock()
            .unwrap()
            .push(format!("batch {}", payloads.join(" ")));
    }
    fn subscribed(&self, _: &str) {}
    fn unsubscribed(&self, _: &str) {}
}

/// A connection hands the QoS 0 messages of one read to the backplane in one call, after
/// its local deliveries; a retained or QoS 1 message goes alone, after those before it, so
/// the backplane hears the client's messages in their order (v5 [MQTT-4.6.0-6]).
#[tokio::test]
async fn a_backplane_hears_a_reads_qos0_messages_in_one_batch_in_the_clients_order() {
    use tern_proto::Publish;
    let rec = std::sync::Arc::new(Batches::default());
    let b = start_on_backplane(rec.clone()).await;
    let mut publ = Raw::connect(b.addr(), V5, "batching").await;
    let mut bytes = Vec::new();
    let mut add = |payload: &str, qos: QoS, retain: bool| {
        let mut p = Publish::new("t", payload.to_owned());
        p.qos = qos;
        p.retain = retain;
        p.packet_id = (qos != QoS::AtMostOnce).then(|| pid(1));
        bytes.extend(tern_testkit::raw::encode(&Packet::Publish(p), V5));
    };
    for i in 1..=3 {
        add(&i.to_string(), QoS::AtMostOnce, false);
    }
    add("4", QoS::AtMostOnce, true);
    add("5", QoS::AtMostOnce, false);
    add("6", QoS::AtLeastOnce, false);
    add("7", QoS::AtMostOnce, false);
    publ.send_bytes(&bytes).await;
    assert!(matches!(publ.recv().await, Packet::PubAck(_)));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let seen = loop {
        let seen = rec.0.lock().unwrap().clone();
        if seen.iter().any(|l| l.ends_with(" 7")) || std::time::Instant::now() > deadline {
            break seen;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    };
    let order: Vec<&str> = seen.iter().flat_map(|l| l.split(' ').skip(1)).collect();
    assert_eq!(order, ["1", "2", "3", "4", "5", "6", "7"], "{seen:?}");
    assert!(
        seen.contains(&"one 4".to_owned()),
        "the retained one alone: {seen:?}"
    );
    assert!(
        seen.contains(&"pub 6".to_owned()),
        "the QoS 1 one alone: {seen:?}"
    );
    // One write of a few hundred bytes is one read on loopback.
    assert!(
        seen.contains(&"batch 1 2 3".to_owned()),
        "the first three in one call: {seen:?}"
    );
}

/// A backplane that says it is congested while `full` is set.
#[derive(Debug, Default)]
struct Congested {
    full: std::sync::atomic::AtomicBool,
    heard: std::sync::atomic::AtomicUsize,
}

impl tern_broker::backplane::Backplane for Congested {
    fn published(&self, _: &std::sync::Arc<tern_broker::Message>) {
        self.heard.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    fn subscribed(&self, _: &str) {}
    fn unsubscribed(&self, _: &str) {}
    fn congested(&self) -> bool {
        self.full.load(std::sync::atomic::Ordering::Relaxed)
    }
}

#[tokio::test]
async fn a_congested_backplane_slows_qos0_publishers_down() {
    use std::sync::atomic::Ordering;
    let bp = std::sync::Arc::new(Congested::default());
    let b = start_on_backplane(bp.clone()).await;
    let mut publ = Raw::connect(b.addr(), V5, "fast").await;
    bp.full.store(true, Ordering::Relaxed);
    // The connection asks after every few QoS 0 messages: those up to the asking one are
    // taken; then the connection is not read: the next message and the PINGREQ behind it
    // wait.
    let ask = tern_broker::backplane::QOS0_ASK_EVERY;
    for i in 0..=ask {
        publ.publish("t", &i.to_string(), QoS::AtMostOnce, false).await;
    }
    publ.send(Packet::PingReq).await;
    publ.expect_silence(300).await;
    assert_eq!(
        bp.heard.load(Ordering::Relaxed),
        ask as usize,
        "only those up to the one that asked were read"
    );
    // Another client is not held back.
    let mut other = Raw::connect(b.addr(), V5, "other").await;
    other.send(Packet::PingReq).await;
    assert_eq!(other.recv().await, Packet::PingResp);
    // Room again: the rest is read and answered.
    bp.full.store(false, Ordering::Relaxed);
    assert_eq!(publ.recv().await, Packet::PingResp);
    assert_eq!(bp.heard.load(Ordering::Relaxed), ask as usize + 1);
}

/// How far back a session's unacknowledged messages go (what a cluster records as where to
/// recover them from) is known also for a message that matched a session that is away (such a
/// message is copied out of its read buffer for all its deliveries): before, the copy had no
/// arrival time, and a session holding one could never say.
#[tokio::test]
async fn a_message_kept_for_an_offline_session_still_says_when_it_arrived() {
    let b = start().await;
    let (mut away, _) = Raw::connect_with(b.addr(), persistent(V5, "away")).await;
    away.subscribe("t/#", QoS::AtLeastOnce).await;
    away.disconnect().await;
    let (mut here, _) = Raw::connect_with(b.addr(), persistent(V5, "here")).await;
    here.subscribe("t/#", QoS::AtLeastOnce).await;
    let mut publ = Raw::connect(b.addr(), V5, "publisher").await;
    let before = std::time::Instant::now();
    publ.publish("t/1", "x", QoS::AtLeastOnce, false).await;
    // Received and not acknowledged: held.
    match here.recv().await {
        Packet::Publish(p) => assert_eq!(&p.payload[..], b"x"),
        other => panic!("expected the message, got {other:?}"),
    }
    match b.admin().held("here") {
        Some(tern_broker::backplane::Held::Since(t)) => {
            assert!(t >= before, "arrived after {before:?}: {t:?}")
        }
        other => panic!("held since the message arrived, not {other:?}"),
    }
    assert_eq!(b.session("away").expect("kept").queued, 1);
}

/// A batch from outside (`Admin::route_all`, a cluster's QoS 0 pack) with runs of messages
/// that go where the one before went: every session gets each message as routing it alone
/// would give it (one copy for overlapping filters, with both subscription identifiers,
/// v5 [MQTT-3.3.4-4]; No Local, v5 [MQTT-3.8.3-3]; RETAIN only
/// with Retain As Published, v5 [MQTT-3.3.1-12]), runs broken by another topic, publisher or
/// RETAIN, a shared subscription's member chosen per message, an away session's copy made per
/// message; each session's order kept.
#[tokio::test]
async fn a_batch_from_outside_reaches_each_session_as_one_message_at_a_time_would() {
    use tern_broker::Message;
    let b = start_with(|c| c.queue_qos0_offline = true).await;
    let opts = |qos, no_local, rap| SubscriptionOptions {
        qos,
        no_local,
        retain_as_published: rap,
        retain_handling: RetainHandling::DoNotSend,
    };
    let mut a = Raw::connect(b.addr(), V5, "a").await;
    a.subscribe_with("r/#", opts(QoS::AtMostOnce, false, true), Some(7))
        .await;
    a.subscribe_with("r/t", opts(QoS::AtMostOnce, false, false), Some(9))
        .await;
    // `p1` itself, with No Local: none of its own messages.
    let mut p1 = Raw::connect(b.addr(), V5, "p1").await;
    p1.subscribe_with("r/t", opts(QoS::AtMostOnce, true, false), None)
        .await;
    let mut members = Vec::new();
    for id in ["m1", "m2"] {
        let mut m = Raw::connect(b.addr(), V5, id).await;
        m.subscribe("$share/g/s/t", QoS::AtMostOnce).await;
        members.push(m);
    }
    let (mut away, _) = Raw::connect_with(b.addr(), persistent(V5, "away")).await;
    away.subscribe("s/t", QoS::AtLeastOnce).await;
    away.disconnect().await;

    let msg = |topic: &str, payload: &str, publisher: &str, retain: bool| {
        let mut m = Message::new(topic, payload.to_string(), QoS::AtMostOnce, retain);
        m.publisher = Some(publisher.into());
        m
    };
    let batch = vec![
        msg("r/t", "1", "p1", false),
        msg("r/t", "2", "p1", false),
        msg("r/t", "3", "p1", false),
        msg("r/u", "4", "p1", false),
        msg("r/t", "5", "p2", false),
        msg("r/t", "6", "p2", false),
        msg("r/t", "7", "p2", true),
        msg("r/t", "8", "p2", true),
        msg("s/t", "9", "p2", false),
        msg("s/t", "10", "p2", false),
        msg("s/t", "11", "p2", false),
    ];
    let routed = b.admin().route_all(batch);
    assert!(routed.iter().all(|r| r.is_ok()), "{routed:?}");

    // `a`: all 8, in order; r/t ones with both identifiers, RETAIN as published only
    // through r/# (which has Retain As Published).
    for n in 1..=8 {
        let p = a.recv_publish().await;
        assert_eq!(std::str::from_utf8(&p.payload).unwrap(), n.to_string());
        let mut ids = p.properties.subscription_identifiers.clone();
        ids.sort_unstable();
        assert_eq!(ids, if n == 4 { vec![7] } else { vec![7, 9] }, "message {n}");
        assert_eq!(p.retain, n >= 7, "message {n}");
    }
    // `p1`: only the messages of others on r/t (No Local), never retained (no RAP).
    for n in [5, 6, 7, 8] {
        let p = p1.recv_publish().await;
        assert_eq!(std::str::from_utf8(&p.payload).unwrap(), n.to_string());
        assert!(!p.retain);
    }
    p1.expect_silence(200).await;
    a.expect_silence(200).await;
    // The group: each s/t message to one member.
    let mut got = Vec::new();
    for m in &mut members {
        while let Ok(Some(Packet::Publish(p))) = m.next_within(std::time::Duration::from_millis(300)).await {
            got.push(std::str::from_utf8(&p.payload).unwrap().parse::<u32>().unwrap());
        }
    }
    got.sort_unstable();
    assert_eq!(got, [9, 10, 11]);
    // The away session kept each of them (`queue_qos0_offline`), each its own copy.
    let (mut back, _) = Raw::connect_with(b.addr(), persistent(V5, "away")).await;
    let mut kept = Vec::new();
    while let Ok(Some(Packet::Publish(p))) = back.next_within(std::time::Duration::from_millis(300)).await {
        kept.push(std::str::from_utf8(&p.payload).unwrap().parse::<u32>().unwrap());
    }
    assert_eq!(kept, [9, 10, 11]);
}

/// A backplane that keeps QoS 2 state and stores every message at once, except the first
/// QoS 2 message of a client, which it refuses as a cluster node does when another node
/// recovered the publisher's session meanwhile and found the message not stored.
#[derive(Debug, Default)]
struct RefusesOnce {
    progress: tern_broker::durability::Progress,
    submitted: std::sync::atomic::AtomicU64,
    refused: std::sync::atomic::AtomicBool,
    /// The incoming QoS 2 ids whose release it was told of.
    released: std::sync::Mutex<Vec<u16>>,
}

impl tern_broker::backplane::Backplane for RefusesOnce {
    fn published(&self, m: &std::sync::Arc<tern_broker::Message>) {
        use std::sync::atomic::Ordering;
        if m.qos == QoS::ExactlyOnce && !self.refused.swap(true, Ordering::SeqCst) {
            m.backplane_mark().refuse();
        }
        let t = self.submitted.fetch_add(1, Ordering::SeqCst) + 1;
        self.progress.advance(t);
    }
    fn subscribed(&self, _: &str) {}
    fn unsubscribed(&self, _: &str) {}
    fn progress(&self) -> Option<&tern_broker::durability::Progress> {
        Some(&self.progress)
    }
    fn submitted(&self) -> tern_broker::durability::Ticket {
        self.submitted.load(std::sync::atomic::Ordering::SeqCst)
    }
    fn keeps_qos2(&self) -> bool {
        true
    }
    fn qos2_received(
        &self,
        _: &str,
        _: u16,
    ) -> Option<(
        std::sync::Arc<tern_broker::BackplaneMark>,
        tern_broker::durability::Ticket,
    )> {
        Some((std::sync::Arc::default(), 0))
    }
    fn qos2_released(&self, _: &str, packet_id: u16) -> Option<tern_broker::durability::Ticket> {
        self.released.lock().unwrap().push(packet_id);
        None
    }
}

/// A QoS 2 message the backplane refused is not the broker's to acknowledge: no PUBREC
/// (v5 [MQTT-4.3.3-8]: PUBREC once it owns the message), the connection is closed with 0x89,
/// and the packet id is forgotten, so that the client's resend after reconnecting is taken
/// as a new message, stored and acknowledged (rather than answered as a duplicate of one
/// that was never stored: an acknowledged loss).
#[tokio::test]
async fn a_qos2_message_the_backplane_refused_gets_no_pubrec_and_its_resend_is_taken_as_new() {
    use tern_proto::{Ack, Publish};
    let bp = std::sync::Arc::new(RefusesOnce::default());
    let b = start_on_backplane(bp.clone()).await;
    let mut sub = Raw::connect(b.addr(), V5, "sub").await;
    sub.subscribe("q2/#", QoS::ExactlyOnce).await;
    let publish = |dup: bool| {
        let mut p = Publish::new("q2/t", "once");
        p.qos = QoS::ExactlyOnce;
        p.packet_id = Some(pid(5));
        p.dup = dup;
        Packet::Publish(p)
    };
    let (mut publ, _) = Raw::connect_with(b.addr(), persistent(V5, "publ")).await;
    publ.send(publish(false)).await;
    assert_eq!(
        publ.expect_closed().await,
        Some(ReasonCode::ServerBusy),
        "closed, with no PUBREC"
    );
    assert!(bp.refused.load(std::sync::atomic::Ordering::SeqCst));
    assert_eq!(
        *bp.released.lock().unwrap(),
        [5],
        "the backplane's record lets the id go too"
    );
    // Its own subscriber here had it already (routed as it came): the refusing node's
    // subscribers are the ones that can get such a message twice (docs/cluster.md).
    let first = sub.recv_publish().await;
    assert_eq!(&first.payload[..], b"once");
    sub.ack(&first).await;

    let (mut publ, ack) = Raw::connect_with(b.addr(), persistent(V5, "publ")).await;
    assert!(ack.session_present);
    publ.send(publish(true)).await;
    match publ.recv().await {
        Packet::PubRec(a) if a.packet_id == pid(5) => {}
        p => panic!("expected PUBREC 5, got {p:?}"),
    }
    // Taken as new: delivered onwards, which a repeat of a message the broker owned would
    // not be.
    let again = sub.recv_publish().await;
    assert_eq!(&again.payload[..], b"once");
    sub.ack(&again).await;
    publ.send(Packet::PubRel(Ack::new(pid(5)))).await;
    match publ.recv().await {
        Packet::PubComp(a) if a.packet_id == pid(5) => {}
        p => panic!("expected PUBCOMP 5, got {p:?}"),
    }
    assert_eq!(*bp.released.lock().unwrap(), [5, 5]);
    sub.expect_silence(100).await;
}

/// A shared message's source that says whether it keeps the message for a member that is
/// away, and counts what it is told.
#[derive(Debug)]
struct Source {
    keeps: bool,
    done: std::sync::atomic::AtomicUsize,
}

impl tern_broker::Settlement for Source {
    fn done(&self) {
        self.done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
    fn keep_while_away(&self) -> bool {
        self.keeps
    }
}

/// A message of a shared subscription queued for a member that is away is settled with its
/// source when the member has taken it, if the source keeps it that long (a cluster node:
/// the group gets it again if the node dies first); otherwise when it is queued. One the
/// away session has no room for is settled and dropped, not given back (it would come to
/// the same member again and again).
#[tokio::test]
async fn a_shared_message_for_an_away_member_is_settled_when_taken_if_its_source_keeps_it() {
    use std::sync::atomic::Ordering;
    let b = start_with(|c| c.max_queued_messages = 2).await;
    let (mut m, _) = Raw::connect_with(b.addr(), persistent(V5, "away")).await;
    m.subscribe("$share/g/s/#", QoS::AtLeastOnce).await;
    m.disconnect().await;
    let admin = b.admin();
    let source = |keeps| {
        std::sync::Arc::new(Source {
            keeps,
            done: Default::default(),
        })
    };
    let (kept, settled) = (source(true), source(false));
    for (payload, s) in [("kept", &kept), ("settled", &settled)] {
        let msg = tern_broker::Message::new("s/1", payload, QoS::AtLeastOnce, false);
        let to = admin
            .deliver_shared("$share/g/s/#", msg, Some(s.clone()), true)
            .expect("topic");
        assert!(matches!(to, tern_broker::SharedDelivery::Delivered), "{to:?}");
    }
    assert_eq!(
        kept.done.load(Ordering::SeqCst),
        0,
        "kept until the member takes it"
    );
    assert_eq!(settled.done.load(Ordering::SeqCst), 1, "settled when queued");
    let full = source(true);
    let msg = tern_broker::Message::new("s/1", "no room", QoS::AtLeastOnce, false);
    let to = admin
        .deliver_shared("$share/g/s/#", msg, Some(full.clone()), true)
        .expect("topic");
    assert!(matches!(to, tern_broker::SharedDelivery::Dropped), "{to:?}");
    assert_eq!(full.done.load(Ordering::SeqCst), 1, "settled, not given back");
    let (mut m, ack) = Raw::connect_with(b.addr(), persistent(V5, "away")).await;
    assert!(ack.session_present);
    for want in ["kept", "settled"] {
        let p = m.recv_publish().await;
        assert_eq!(&p.payload[..], want.as_bytes());
        m.ack(&p).await;
    }
    eventually("the member's PUBACK settles it", || {
        kept.done.load(Ordering::SeqCst) == 1
    })
    .await;
    assert_eq!(settled.done.load(Ordering::SeqCst), 1);
}
