//! A broker restarted on its store resumes its bridge's session: the outbox, the
//! subscriptions, and QoS 2 both ways (the ids the session may hold awaiting PUBREL are
//! released first, v5 [MQTT-4.3.3-10]).

use std::sync::Arc;

use tern_bridge::Bridges;
use tern_broker::durability::InMemory;
use tern_broker::{BridgeDirection, BridgeTopic, BrokerBuilder, BrokerHandle};
use tern_client::{ProtocolVersion, QoS};

use crate::support::*;

async fn tern_on(mem: &Arc<InMemory>) -> BrokerHandle {
    BrokerBuilder::new()
        .listen("127.0.0.1:0".parse().unwrap())
        .configure(|c| c.sys_interval_secs = 0)
        .durability(mem.clone(), mem.restart())
        .bind()
        .await
        .unwrap()
        .spawn()
}

/// A QoS 2 message each way between `a` and `b`, each arriving once.
async fn exchange(a: &BrokerHandle, b: &BrokerHandle, round: &str) {
    let v5 = ProtocolVersion::V5;
    let (sa, mut ea) = client(&url_of(a), &format!("sub-a{round}"), v5).await;
    sa.subscribe("q/#", QoS::ExactlyOnce).await.unwrap();
    let (sb, mut eb) = client(&url_of(b), &format!("sub-b{round}"), v5).await;
    sb.subscribe("q/#", QoS::ExactlyOnce).await.unwrap();
    let (pa, _) = client(&url_of(a), &format!("pub-a{round}"), v5).await;
    let (pb, _) = client(&url_of(b), &format!("pub-b{round}"), v5).await;
    pa.publish("q/from-a", round.to_string(), QoS::ExactlyOnce)
        .await
        .unwrap();
    pb.publish("q/from-b", round.to_string(), QoS::ExactlyOnce)
        .await
        .unwrap();
    for events in [&mut ea, &mut eb] {
        let mut got: Vec<_> = drain(events, std::time::Duration::from_millis(400))
            .await
            .into_iter()
            .map(|m| (m.topic.to_string(), m.payload_str().unwrap().to_string(), m.qos))
            .collect();
        got.sort();
        assert_eq!(
            got,
            [
                ("q/from-a".to_string(), round.to_string(), QoS::ExactlyOnce),
                ("q/from-b".to_string(), round.to_string(), QoS::ExactlyOnce)
            ]
        );
    }
}

#[tokio::test]
async fn a_restarted_broker_resumes_its_bridge_with_qos2_both_ways() {
    // The bridge's session is resumed, its QoS 2 ids released: v5 [MQTT-4.3.3-10].
    let b = tern().await;
    let mem = InMemory::new();
    let config = bridge("r", &url_of(&b), "5").topic(BridgeTopic::new("q/#", BridgeDirection::Both).qos(2));
    let a = tern_on(&mem).await;
    let bridges = start_bridge(&a, config.clone()).await;
    exchange(&a, &b, "1").await;
    bridges.stop().await;
    a.shutdown().await;

    let a = tern_on(&mem).await;
    assert!(
        a.session(&config.local_client_id()).is_some(),
        "the bridge's session was restored from the store"
    );
    let bridges = start_bridge(&a, config).await;
    exchange(&a, &b, "2").await;
    let s = state(&bridges);
    assert_eq!((s.forwarded, s.received, s.dropped), (1, 1, 0), "{s:?}");
    bridges.stop().await;

    // Started with other rules, the session drops the filters of the old ones.
    let changed = bridge("r", &url_of(&b), "5").topic(BridgeTopic::new("other/#", BridgeDirection::Out));
    let bridges = Bridges::start(a.internal(), std::slice::from_ref(&changed))
        .await
        .unwrap();
    wait_for("the old filter to go", || {
        a.session(&changed.local_client_id())
            .is_some_and(|s| s.subscriptions.iter().map(|s| s.filter.as_str()).eq(["other/#"]))
    })
    .await;
    bridges.stop().await;
}

/// A remote that counts the QoS 2 messages it holds awaiting PUBREL in its Receive Maximum,
/// as Mosquitto does (it refuses a message beyond it with 0x97 Quota exceeded). The broker
/// recorded the PUBREC of `MAX` deliveries and then stopped before the remote had their
/// PUBREL: restarted, the bridge must release them before it sends the remote anything new.
/// (Seen in a kill -9 loop: the resent PUBLISH packets overtook the broker's PUBRELs, which
/// another task passes on, so one message got 0x97 and was lost.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_the_bridge_releases_what_the_remote_holds_before_it_sends_new_messages() {
    // v5 [MQTT-4.9.0-2]: never more QoS 1/2 PUBLISH packets unacknowledged than the
    // remote's Receive Maximum, which counts a QoS 2 message until its PUBCOMP.
    // v5 [MQTT-4.4.0-1]: the deliveries in flight are resent in their order, PUBREL for
    // those whose PUBREC came.
    use std::collections::HashSet;
    use tern_proto::{Ack, ConnAck, Packet, ReasonCode};
    use tern_testkit::raw::{FakeServer, WAIT};

    const MAX: u16 = 8;
    let connack = |present: bool| {
        let mut c = ConnAck::new(ReasonCode::Success, present);
        c.properties.receive_maximum = Some(MAX);
        c
    };
    let config = |remote: &FakeServer| {
        bridge("held", &format!("mqtt://{}", remote.addr()), "5")
            .topic(BridgeTopic::new("q/#", BridgeDirection::Out).qos(2))
    };
    let mem = InMemory::new();

    // First run: 2 * MAX messages; the remote takes the first MAX (PUBREC) and the broker
    // releases them, but the remote leaves their PUBRELs unanswered, as if they had been
    // lost with the connection.
    let remote = FakeServer::start().await;
    let a = tern_on(&mem).await;
    let bridges = Bridges::start(a.internal(), &[config(&remote)]).await.unwrap();
    let (mut peer, _) = remote.accept_with(connack(false)).await;
    let (publisher, _) = client(&url_of(&a), "held-publisher", ProtocolVersion::V5).await;
    for n in 0..2 * MAX {
        publisher
            .publish("q/x", n.to_string(), QoS::ExactlyOnce)
            .await
            .unwrap();
    }
    let mut held = HashSet::new();
    while held.len() < usize::from(MAX) {
        let p = peer.recv_publish().await;
        let id = p.packet_id.expect("QoS 2");
        held.insert(id);
        peer.send(Packet::PubRec(Ack::new(id))).await;
    }
    let mut released = HashSet::new();
    while released.len() < usize::from(MAX) {
        match peer.recv().await {
            Packet::PubRel(r) => released.insert(r.packet_id),
            p => panic!("expected PUBREL, got {p:?}"),
        };
    }
    assert_eq!(released, held);
    // The remote's window is full: nothing more comes.
    peer.expect_silence(200).await;
    bridges.stop().await;
    a.shutdown().await;
    drop(peer);

    // Restarted: the remote holds MAX messages awaiting PUBREL, so it has no room for a new
    // one until a PUBREL of the bridge completes one of them.
    let remote = FakeServer::start().await;
    let a = tern_on(&mem).await;
    let bridges = Bridges::start(a.internal(), &[config(&remote)]).await.unwrap();
    let (mut peer, _) = remote.accept_with(connack(true)).await;
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while got.len() < usize::from(MAX) || !held.is_empty() {
        let packet = tokio::time::timeout_at(deadline, peer.recv())
            .await
            .unwrap_or_else(|_| panic!("the rest in time; got {got:?}, holding {held:?}"));
        match packet {
            Packet::PubRel(r) => {
                let code = match held.remove(&r.packet_id) {
                    true => ReasonCode::Success,
                    false => ReasonCode::PacketIdentifierNotFound,
                };
                peer.send(Packet::PubComp(Ack::with_reason(r.packet_id, code)))
                    .await;
            }
            Packet::Publish(p) => {
                let id = p.packet_id.expect("QoS 2");
                if !held.contains(&id) {
                    assert!(
                        held.len() < usize::from(MAX),
                        "a new message (id {id:?}, {:?}) while the remote holds {held:?}: beyond its Receive Maximum of {MAX}",
                        p.payload
                    );
                    held.insert(id);
                    got.push(String::from_utf8_lossy(&p.payload).into_owned());
                }
                peer.send(Packet::PubRec(Ack::new(id))).await;
            }
            p => panic!("unexpected {p:?}"),
        }
    }
    let expected: Vec<String> = (MAX..2 * MAX).map(|n| n.to_string()).collect();
    assert_eq!(got, expected, "the second half, each once, in order");
    bridges.stop().await;
    a.shutdown().await;
}
