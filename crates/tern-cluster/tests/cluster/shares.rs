//! Shared subscriptions across nodes (issue #15, design §5): a `$share` group with members on
//! two nodes gets each message once, whichever node it was published on; a message its
//! member on one node did not acknowledge goes to a member on the other node when the first
//! member's session ends.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tern_proto::{Ack, Packet, Publish, QoS, ReasonCode};
use tern_testkit::nats::Nats;
use tern_testkit::raw::{Raw, V3, V5};

use crate::node;

/// Read what `sub` receives, answering as each QoS asks, until nothing came for `quiet`
/// (at most `within`).
async fn drain(sub: &mut Raw, quiet: Duration, within: Duration) -> Vec<Publish> {
    let deadline = Instant::now() + within;
    let mut got = Vec::new();
    while Instant::now() < deadline {
        match sub.next_within(quiet).await {
            Ok(Some(Packet::Publish(p))) => {
                match (p.qos, p.packet_id) {
                    (QoS::AtLeastOnce, Some(id)) => sub.send(Packet::PubAck(Ack::new(id))).await,
                    (QoS::ExactlyOnce, Some(id)) => sub.send(Packet::PubRec(Ack::new(id))).await,
                    _ => {}
                }
                got.push(p);
            }
            Ok(Some(Packet::PubRel(a))) => sub.send(Packet::PubComp(Ack::new(a.packet_id))).await,
            Ok(Some(p)) => panic!("unexpected {p:?}"),
            Ok(None) => panic!("connection closed"),
            Err(()) => break,
        }
    }
    got
}

fn text(p: &Publish) -> String {
    String::from_utf8_lossy(&p.payload).into_owned()
}

/// Publish QoS 0 and QoS 1 probes from each publisher until the group has received one of
/// each from each (its consumers and queue subscriptions are made after the SUBACK), then
/// drain the probes.
async fn wait_for_group(publishers: &mut [&mut Raw], members: &mut [&mut Raw]) {
    let deadline = Instant::now() + Duration::from_secs(15);
    for (i, publisher) in publishers.iter_mut().enumerate() {
        for qos in [QoS::AtMostOnce, QoS::AtLeastOnce] {
            'probe: loop {
                assert!(
                    Instant::now() < deadline,
                    "the shared group got no probe within 15 s"
                );
                publisher
                    .publish("job/probe", &format!("probe {i}"), qos, false)
                    .await;
                for m in members.iter_mut() {
                    let got = drain(m, Duration::from_millis(100), Duration::from_millis(300)).await;
                    if got
                        .iter()
                        .any(|p| text(p) == format!("probe {i}") && p.qos == qos)
                    {
                        break 'probe;
                    }
                }
            }
        }
    }
    for m in members.iter_mut() {
        drain(m, Duration::from_millis(500), Duration::from_secs(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_group_with_members_on_two_nodes_gets_each_message_once() {
    let nats = Nats::start(3, true);
    let mut config = node::config(&nats, "a");
    // A message given to a node that stopped pulling comes back after this.
    config.share_ack_wait_ms = 5_000;
    let a = node::start(&config).await;
    config.node_name = "b".into();
    let b = node::start(&config).await;

    // One member on each node, in each version.
    let mut m1 = Raw::connect(a.addr(), V5, "member-a").await;
    let mut m2 = Raw::connect(b.addr(), V3, "member-b").await;
    for m in [&mut m1, &mut m2] {
        let ack = m.subscribe("$share/workers/job/#", QoS::ExactlyOnce).await;
        assert_eq!(ack.reason_codes, vec![ReasonCode::GrantedQoS2]);
    }
    let mut pa = Raw::connect(a.addr(), V5, "publisher-a").await;
    let mut pb = Raw::connect(b.addr(), V3, "publisher-b").await;
    wait_for_group(&mut [&mut pa, &mut pb], &mut [&mut m1, &mut m2]).await;

    // 60 messages from each node, QoS 0, 1 and 2 in turn.
    let mut sent = Vec::new();
    for i in 0..60u32 {
        let qos = [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce][(i % 3) as usize];
        for (name, p) in [("a", &mut pa), ("b", &mut pb)] {
            let payload = format!("{name}-{i}");
            p.publish(&format!("job/{i}"), &payload, qos, false).await;
            sent.push(payload);
        }
    }
    let (got1, got2) = tokio::join!(
        drain(&mut m1, Duration::from_secs(2), Duration::from_secs(30)),
        drain(&mut m2, Duration::from_secs(2), Duration::from_secs(30)),
    );
    let mut times: BTreeMap<String, usize> = BTreeMap::new();
    for p in got1.iter().chain(&got2) {
        *times.entry(text(p)).or_default() += 1;
    }
    println!(
        "member on a: {} messages, member on b: {}",
        got1.len(),
        got2.len()
    );
    // v5 section 4.8.2: each message of a shared subscription goes to one member of the
    // group, here whichever node the member and the publisher are on; v5 [MQTT-4.8.2-3]: at
    // the QoS it was published with, which each member's grant (QoS 2) allows.
    for p in got1.iter().chain(&got2) {
        let i: usize = text(p)[2..].parse().expect("number");
        assert_eq!(p.qos as usize, i % 3, "{}", text(p));
    }
    let doubled: Vec<_> = times.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        doubled.is_empty(),
        "delivered to more than one member: {doubled:?}"
    );
    let missing: Vec<_> = sent.iter().filter(|s| !times.contains_key(*s)).collect();
    assert!(missing.is_empty(), "delivered to no member: {missing:?}");
    assert_eq!(times.len(), sent.len());

    // A message given to node a's broker alone (`Admin::publish`, as the cluster hands in
    // what comes from other nodes; not sent to the cluster) reaches the group's member there.
    a.broker
        .admin()
        .publish(tern_broker::Message::new(
            "job/api",
            "from the API",
            QoS::AtLeastOnce,
            false,
        ))
        .expect("valid topic");
    let api = drain(&mut m1, Duration::from_millis(500), Duration::from_secs(5)).await;
    assert_eq!(api.iter().map(text).collect::<Vec<_>>(), vec!["from the API"]);

    // A new group gets what is published right after its SUBACK, before its consumers are
    // made.
    let mut fresh = Raw::connect(b.addr(), V5, "fresh").await;
    fresh.subscribe("$share/fresh/first/#", QoS::AtLeastOnce).await;
    pa.publish("first/1", "right after", QoS::AtLeastOnce, false)
        .await;
    let first = drain(&mut fresh, Duration::from_secs(1), Duration::from_secs(10)).await;
    assert_eq!(first.iter().map(text).collect::<Vec<_>>(), vec!["right after"]);
    fresh.disconnect().await;

    // The member on b leaves: b no longer takes the group's messages. The member on a
    // receives 10 QoS 1 messages and acknowledges none.
    m2.disconnect().await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    for i in 0..10 {
        pb.publish(
            &format!("job/held/{i}"),
            &format!("held-{i}"),
            QoS::AtLeastOnce,
            false,
        )
        .await;
    }
    let mut held = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while held.len() < 10 {
        let left = deadline.saturating_duration_since(Instant::now());
        match m1.next_within(left).await {
            Ok(Some(Packet::Publish(p))) => held.push(text(&p)),
            other => panic!("{} of 10 held messages, then {other:?}", held.len()),
        }
    }
    // A member comes back on b; the member on a goes away without acknowledging: its
    // session ends, and the messages it held go to the member on b (v5 section 4.8.2: the
    // Server SHOULD send them to another member when the session ends).
    let mut m3 = Raw::connect(b.addr(), V5, "member-b2").await;
    m3.subscribe("$share/workers/job/#", QoS::AtLeastOnce).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(m1);
    let mut again: Vec<String> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while again.len() < 10 && Instant::now() < deadline {
        again.extend(
            drain(&mut m3, Duration::from_millis(500), Duration::from_secs(2))
                .await
                .iter()
                .map(text),
        );
    }
    again.sort();
    held.sort();
    assert_eq!(again, held, "the unacknowledged messages of the member that left");

    // The group's only member is on b now: what a publisher on a sends reaches it.
    for i in 0..10 {
        pa.publish(
            &format!("job/late/{i}"),
            &format!("late-{i}"),
            QoS::AtLeastOnce,
            false,
        )
        .await;
    }
    let late = drain(&mut m3, Duration::from_secs(1), Duration::from_secs(20)).await;
    let mut late: Vec<String> = late.iter().map(text).collect();
    late.sort();
    let want: Vec<String> = (0..10).map(|i| format!("late-{i}")).collect();
    assert_eq!(late, want);
}

/// A persistent member that moves to another node with shared messages it has not
/// acknowledged gets each of them once there: they are given back to the group rather than
/// handed over with the session (which would deliver them twice).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_moving_to_another_node_gets_its_unacknowledged_shared_messages_once() {
    let nats = Nats::start(3, true);
    let mut config = node::config(&nats, "a");
    let a = node::start(&config).await;
    config.node_name = "b".into();
    let b = node::start(&config).await;

    let persistent = || {
        let mut c = tern_proto::Connect::new(V5, "mover");
        c.keep_alive = 0;
        c.clean_start = false;
        c.properties.session_expiry_interval = Some(600);
        c
    };
    let (mut member, ack) = Raw::connect_with(a.addr(), persistent()).await;
    assert_eq!(ack.reason_code, ReasonCode::Success);
    member.subscribe("$share/movers/m/#", QoS::AtLeastOnce).await;
    let mut publisher = Raw::connect(b.addr(), V5, "publisher").await;
    for i in 0..5 {
        publisher
            .publish(&format!("m/{i}"), &format!("m-{i}"), QoS::AtLeastOnce, false)
            .await;
    }
    let mut held = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while held.len() < 5 {
        let left = deadline.saturating_duration_since(Instant::now());
        match member.next_within(left).await {
            Ok(Some(Packet::Publish(p))) => held.push(text(&p)),
            other => panic!("{} of 5, then {other:?}", held.len()),
        }
    }
    // The same client connects to b: its session moves there (Session Present).
    let (mut moved, ack) = Raw::connect_with(b.addr(), persistent()).await;
    assert_eq!(ack.reason_code, ReasonCode::Success);
    assert!(ack.session_present);
    let got = drain(&mut moved, Duration::from_secs(2), Duration::from_secs(30)).await;
    let mut got: Vec<String> = got.iter().map(text).collect();
    got.sort();
    held.sort();
    assert_eq!(
        got, held,
        "each unacknowledged shared message once on the new node"
    );
    // Its shared subscription works there.
    publisher.publish("m/late", "late", QoS::AtLeastOnce, false).await;
    let late = drain(&mut moved, Duration::from_secs(1), Duration::from_secs(10)).await;
    assert_eq!(late.iter().map(text).collect::<Vec<_>>(), vec!["late"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_a_member_holds_beyond_the_ack_wait_goes_to_no_other_member() {
    // v5 section 4.8.2: a message of a shared subscription goes to one member; a slow member
    // that keeps it unacknowledged longer than `share_ack_wait_ms` still has it, so JetStream
    // must not offer it again (its node says it is in progress).
    let nats = Nats::start(1, true);
    let mut config = node::config(&nats, "a");
    config.share_ack_wait_ms = 1_000;
    let a = node::start(&config).await;
    config.node_name = "b".into();
    let b = node::start(&config).await;
    let mut slow = Raw::connect(a.addr(), V5, "slow-a").await;
    let mut quick = Raw::connect(b.addr(), V5, "quick-b").await;
    for m in [&mut slow, &mut quick] {
        m.subscribe("$share/slow/job/#", QoS::AtLeastOnce).await;
    }
    let mut p = Raw::connect(a.addr(), V5, "slow-pub").await;
    wait_for_group(&mut [&mut p], &mut [&mut slow, &mut quick]).await;
    for i in 0..20 {
        p.publish(&format!("job/s/{i}"), &format!("s-{i}"), QoS::AtLeastOnce, false)
            .await;
    }
    // The slow member reads for 3.5 ack waits and acknowledges nothing meanwhile.
    let reading = async {
        let mut held = Vec::new();
        let until = Instant::now() + Duration::from_millis(3_500);
        while let Some(left) = until.checked_duration_since(Instant::now()) {
            match slow.next_within(left).await {
                Ok(Some(Packet::Publish(p))) => held.push(p),
                Ok(other) => panic!("slow member: {other:?}"),
                Err(()) => break,
            }
        }
        held
    };
    let (held, quick_got) = tokio::join!(
        reading,
        drain(
            &mut quick,
            Duration::from_millis(3_500),
            Duration::from_millis(3_500)
        )
    );
    for m in &held {
        slow.ack(m).await;
    }
    let after = drain(&mut slow, Duration::from_secs(2), Duration::from_secs(4)).await;
    let quick_after = drain(&mut quick, Duration::from_millis(500), Duration::from_secs(2)).await;
    let mut times: BTreeMap<String, usize> = BTreeMap::new();
    for m in held.iter().chain(&after).chain(&quick_got).chain(&quick_after) {
        *times.entry(text(m)).or_default() += 1;
    }
    println!(
        "slow member held {}, quick member got {}",
        held.len(),
        quick_got.len() + quick_after.len()
    );
    assert!(!held.is_empty(), "the slow member got some of the messages");
    let doubled: Vec<_> = times.iter().filter(|(_, n)| **n > 1).collect();
    assert!(doubled.is_empty(), "delivered twice: {doubled:?}");
    assert_eq!(times.len(), 20, "each message reached a member: {times:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_qos1_pack_a_full_member_cannot_take_comes_again_whole_and_nothing_is_lost() {
    // The group's only member, on node b, has a Receive Maximum of 5 and a queue of 20, and
    // does not read at first: node a stores 300 QoS 1 messages, mostly in packs
    // (`cluster.qos1_pack`). A pack whose messages do not all find room is given back
    // whole (`shares.rs`, `Part`) and comes again once the member reads (after packs given
    // later: a message given back is not in order). Every message arrives; one handed out
    // before its pack was given back comes twice (QoS 1 allows it).
    let nats = Nats::start(1, true);
    let a = node::start(&node::config(&nats, "a")).await;
    let b = node::start_configured(&node::config(&nats, "b"), |c| c.max_queued_messages = 20).await;
    let mut c = tern_proto::Connect::new(V5, "full-member");
    c.keep_alive = 0;
    c.properties.receive_maximum = Some(5);
    let (mut member, ack) = Raw::connect_with(b.addr(), c).await;
    assert_eq!(ack.reason_code, ReasonCode::Success);
    member.subscribe("$share/g/job/#", QoS::AtLeastOnce).await;
    let mut publisher = Raw::connect(a.addr(), V5, "full-pub").await;
    wait_for_group(&mut [&mut publisher], &mut [&mut member]).await;

    for round in 0..3u16 {
        let mut burst = Vec::new();
        for i in 0..100u16 {
            let mut m = Publish::new("job/x", format!("{}", round * 100 + i));
            m.qos = QoS::AtLeastOnce;
            m.packet_id = tern_proto::PacketId::new(i + 1);
            burst.extend(tern_testkit::raw::encode(&Packet::Publish(m), V5));
        }
        publisher.send_bytes(&burst).await;
        for _ in 0..100 {
            match publisher.recv().await {
                Packet::PubAck(_) => {}
                other => panic!("expected PUBACK, got {other:?}"),
            }
        }
    }
    // Packs that found no room were given back meanwhile (every 250 ms).
    tokio::time::sleep(Duration::from_secs(1)).await;
    let got = drain(&mut member, Duration::from_secs(3), Duration::from_secs(60)).await;
    let mut seen = BTreeMap::<u32, u32>::new();
    for p in &got {
        let n: u32 = text(p).parse().expect("a number");
        *seen.entry(n).or_default() += 1;
    }
    let twice = seen.values().filter(|&&c| c > 1).count();
    let stats = a.cluster.stats();
    println!(
        "{} received, {} messages, {twice} more than once; node a {stats:?}",
        got.len(),
        seen.len()
    );
    assert_eq!(seen.len(), 300, "every message arrives");
    assert!(stats.qos1_packs > 0, "nothing was packed: {stats:?}");
}
