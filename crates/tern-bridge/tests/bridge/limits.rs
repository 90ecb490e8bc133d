//! The outbox has its own limits (`max_outbox_messages`, `max_outbox_bytes`) and policy when
//! full (`outbox_full`): `block` holds local publishers back for as long as the remote is
//! away, losing nothing; `drop_oldest` keeps the newest and counts what it dropped.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tern_bridge::Bridges;
use tern_broker::{BridgeConfig, BridgeDirection, BridgeTopic, BrokerBuilder, BrokerHandle, OutboxFull};
use tern_client::{ProtocolVersion, QoS};

use crate::support::*;

/// Messages published while the remote is down.
const SENT: usize = 100;
const MAX_OUTBOX: usize = 20;
const INFLIGHT: u16 = 5;

/// A broker whose own per-session limits and backpressure timeout are small, so that a
/// bridge that kept to them would drop after 200 ms; and a bridge with an outbox of
/// `MAX_OUTBOX` messages towards the stopped `mosquitto`.
async fn broker_and_bridge(name: &str, remote: &str, full: OutboxFull) -> (BrokerHandle, Bridges) {
    let broker = BrokerBuilder::new()
        .listen("127.0.0.1:0".parse().unwrap())
        .configure(|c| {
            c.sys_interval_secs = 0;
            c.max_queued_messages = 1000;
            c.backpressure_timeout_ms = 200;
        })
        .bind()
        .await
        .unwrap()
        .spawn();
    let config: BridgeConfig = bridge(name, remote, "5")
        .topic(BridgeTopic::new("#", BridgeDirection::Out).prefixes("", "edge/"))
        .with(|c| {
            c.max_inflight = INFLIGHT;
            c.max_outbox_messages = MAX_OUTBOX;
            c.outbox_full = full;
        });
    let local_id = config.local_client_id();
    let bridges = Bridges::start(broker.internal(), &[config]).await.unwrap();
    wait_for("the bridge's local session", || {
        broker
            .session(&local_id)
            .is_some_and(|s| s.subscriptions.len() == 1)
    })
    .await;
    (broker, bridges)
}

#[tokio::test]
async fn drop_oldest_keeps_the_newest_messages_and_counts_the_others() {
    let mut mosquitto = Mosquitto::start().await;
    let (collector, mut events) = client(&mosquitto.url(), "limits-collector", ProtocolVersion::V3_1_1).await;
    collector.subscribe("edge/#", QoS::AtLeastOnce).await.unwrap();
    mosquitto.stop();
    let (broker, bridges) = broker_and_bridge("drop", &mosquitto.url(), OutboxFull::DropOldest).await;

    let (publisher, _p) = client(&url_of(&broker), "limits-publisher", ProtocolVersion::V5).await;
    // Never held back: every PUBACK comes while the remote is down.
    for n in 0..SENT {
        publisher
            .publish("seq", n.to_string(), QoS::AtLeastOnce)
            .await
            .unwrap();
    }
    let s = state(&bridges);
    assert!(!s.connected);
    assert_eq!(s.outbox_messages + s.outbox_dropped as usize, SENT, "{s:?}");
    assert!(
        s.outbox_messages <= MAX_OUTBOX + usize::from(INFLIGHT),
        "at most max_outbox_messages wait beyond those in flight: {s:?}"
    );
    let kept = s.outbox_messages;

    mosquitto.restart().await;
    let mut seen = BTreeSet::new();
    while seen.len() < kept {
        let m = next(&mut events).await;
        seen.insert(m.payload_str().unwrap().parse::<usize>().unwrap());
    }
    // The first few had gone to the bridge (in flight) before the outbox filled; of the
    // others, the newest are kept.
    let queued: Vec<usize> = seen
        .iter()
        .copied()
        .filter(|&n| n >= usize::from(INFLIGHT))
        .collect();
    let newest: Vec<usize> = (SENT - queued.len()..SENT).collect();
    assert_eq!(queued, newest, "the oldest are dropped, the newest kept");
    wait_for("the outbox to empty", || state(&bridges).outbox_messages == 0).await;
    eprintln!(
        "drop_oldest: {SENT} sent while the remote was down, {kept} kept and forwarded, {} dropped",
        SENT - kept
    );
    bridges.stop().await;
}

#[tokio::test]
async fn block_holds_publishers_back_until_the_remote_returns_and_loses_nothing() {
    let mut mosquitto = Mosquitto::start().await;
    let (collector, mut events) = client(&mosquitto.url(), "block-collector", ProtocolVersion::V3_1_1).await;
    collector.subscribe("edge/#", QoS::AtLeastOnce).await.unwrap();
    mosquitto.stop();
    let (broker, bridges) = broker_and_bridge("block", &mosquitto.url(), OutboxFull::Block).await;

    let (publisher, _p) = client(&url_of(&broker), "block-publisher", ProtocolVersion::V5).await;
    let acked = Arc::new(AtomicUsize::new(0));
    let task = {
        let acked = acked.clone();
        tokio::spawn(async move {
            for n in 0..SENT {
                publisher
                    .publish("seq", n.to_string(), QoS::AtLeastOnce)
                    .await
                    .unwrap();
                acked.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    // Far beyond the broker's backpressure timeout (200 ms): still held back, nothing dropped.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let held = acked.load(Ordering::Relaxed);
    let s = state(&bridges);
    assert!(
        held < SENT,
        "the publisher is held back while the outbox is full: {held} acknowledged"
    );
    assert!(
        held >= MAX_OUTBOX,
        "up to the limit it is not: {held} acknowledged"
    );
    assert_eq!(s.outbox_dropped, 0, "block drops nothing: {s:?}");
    assert!(
        s.outbox_messages <= 2 * MAX_OUTBOX + usize::from(INFLIGHT),
        "the outbox stays bounded: {s:?}"
    );

    mosquitto.restart().await;
    let mut seen = Vec::new();
    while seen.len() < SENT {
        let m = next(&mut events).await;
        let n: usize = m.payload_str().unwrap().parse().unwrap();
        if !seen.contains(&n) {
            seen.push(n);
        }
    }
    task.await.unwrap();
    assert_eq!(seen, (0..SENT).collect::<Vec<_>>(), "all of them, in order");
    assert_eq!(state(&bridges).outbox_dropped, 0);
    eprintln!("block: publisher held at {held} of {SENT} while the remote was down; all {SENT} forwarded");
    bridges.stop().await;
}

/// QoS 0 messages between QoS 2 ones never stall the bridge. The remote (Receive Maximum 2)
/// holds back the third QoS 2 message in the remote client's queue until a PUBCOMP, the QoS
/// 0 messages behind it fill that queue, and the window is freed only by the PUBRELs the
/// broker sends after them: the bridge must keep reading those. (When the bridge waited for
/// room for each QoS 0 message, it stopped reading, and nothing moved again.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos0_messages_behind_a_full_remote_window_do_not_stall_the_bridge() {
    // v5 [MQTT-4.9.0-2]: at most Receive Maximum QoS 1/2 messages unacknowledged, the rest
    // wait; QoS 0 messages may be dropped, QoS 2 ones all arrive exactly once.
    use tern_proto::{Ack, ConnAck, Packet, ReasonCode};
    use tern_testkit::raw::{FakeServer, WAIT};

    let remote = FakeServer::start().await;
    let broker = tern().await;
    let config = bridge("flood", &format!("mqtt://{}", remote.addr()), "5")
        .topic(BridgeTopic::new("f/#", BridgeDirection::Out).qos(2))
        .with(|c| c.max_inflight = 4);
    let bridges = Bridges::start(broker.internal(), &[config]).await.unwrap();
    let mut ack = ConnAck::new(ReasonCode::Success, false);
    ack.properties.receive_maximum = Some(2);
    let (mut peer, _) = remote.accept_with(ack).await;

    const ROUNDS: usize = 10;
    let (publisher, _) = client(&url_of(&broker), "flood-publisher", ProtocolVersion::V5).await;
    let publishing = tokio::spawn(async move {
        for round in 0..ROUNDS {
            for i in 0..4 {
                publisher
                    .publish("f/two", format!("{round}-{i}"), QoS::ExactlyOnce)
                    .await
                    .unwrap();
            }
            for _ in 0..100 {
                publisher.publish("f/zero", "0", QoS::AtMostOnce).await.unwrap();
            }
        }
    });
    let mut held = 0usize;
    let mut qos2 = Vec::new();
    let deadline = tokio::time::Instant::now() + 4 * WAIT;
    while qos2.len() < 4 * ROUNDS {
        let packet = tokio::time::timeout_at(deadline, peer.recv())
            .await
            .unwrap_or_else(|_| panic!("the bridge stalled after {} QoS 2 messages", qos2.len()));
        match packet {
            Packet::Publish(p) if p.qos == QoS::ExactlyOnce => {
                held += 1;
                assert!(held <= 2, "beyond the Receive Maximum of 2");
                qos2.push(String::from_utf8_lossy(&p.payload).into_owned());
                peer.send(Packet::PubRec(Ack::new(p.packet_id.unwrap()))).await;
            }
            Packet::Publish(_) => {}
            Packet::PubRel(r) => {
                held -= 1;
                peer.send(Packet::PubComp(Ack::new(r.packet_id))).await;
            }
            p => panic!("unexpected {p:?}"),
        }
    }
    publishing.await.unwrap();
    let expected: Vec<String> = (0..ROUNDS)
        .flat_map(|r| (0..4).map(move |i| format!("{r}-{i}")))
        .collect();
    assert_eq!(qos2, expected, "every QoS 2 message once, in order");
    bridges.stop().await;
}

/// QoS 0 messages wait for a remote that reads slowly, as for any slow subscriber (the broker
/// holds the publisher back, `backpressure_qos0`), rather than being dropped in the bridge:
/// no PUBREL is awaited, so the bridge may stop reading the broker meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos0_messages_wait_for_a_slow_remote_when_no_pubrel_is_awaited() {
    use tern_proto::{ConnAck, Packet, ReasonCode};
    use tern_testkit::raw::FakeServer;

    let remote = FakeServer::start().await;
    let broker = tern().await;
    let config = bridge("slow", &format!("mqtt://{}", remote.addr()), "5")
        .topic(BridgeTopic::new("s/#", BridgeDirection::Out).qos(0));
    let bridges = Bridges::start(broker.internal(), &[config]).await.unwrap();
    let (mut peer, _) = remote.accept_with(ConnAck::new(ReasonCode::Success, false)).await;
    // 1,000 messages of 10 kB: far more than the socket buffers, the remote client's queue
    // and the bridge's places for QoS 0 messages hold while the remote does not read.
    const SENT: usize = 1000;
    let (publisher, _) = client(&url_of(&broker), "slow-publisher", ProtocolVersion::V5).await;
    let publishing = tokio::spawn(async move {
        for n in 0..SENT {
            let payload = format!("{n:>10000}");
            publisher.publish("s/x", payload, QoS::AtMostOnce).await.unwrap();
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut got = Vec::new();
    while got.len() < SENT {
        match peer.recv().await {
            Packet::Publish(p) => got.push(
                String::from_utf8_lossy(&p.payload)
                    .trim()
                    .parse::<usize>()
                    .unwrap(),
            ),
            Packet::PingReq => panic!("{} of {SENT} arrived, then nothing", got.len()),
            p => panic!("unexpected {p:?}"),
        }
    }
    publishing.await.unwrap();
    assert_eq!(got, (0..SENT).collect::<Vec<_>>(), "every message, in order");
    assert_eq!(state(&bridges).dropped, 0);
    bridges.stop().await;
}
