//! Durable state across restarts (in process, graceful restarts). Crash tests
//! with `kill -9` of the real binary are in crates/tern/tests/persistence.

use std::path::PathBuf;
use std::time::Duration;

use tern_broker::{BrokerBuilder, BrokerHandle, Clock, ManualClock};
use tern_proto::{Ack, Connect, Packet, Publish, QoS, ReasonCode, Will};

use crate::harness::*;

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("tern-test-{}-{name}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn start_in(dir: &TempDir) -> BrokerHandle {
    start_in_with(dir, Clock::system()).await
}

/// A broker on the data directory `dir`, with protocol time from `clock`.
async fn start_in_with(dir: &TempDir, clock: impl Into<Clock>) -> BrokerHandle {
    BrokerBuilder::new()
        .listen("127.0.0.1:0".parse().unwrap())
        .configure(|c| c.data_dir = Some(dir.0.clone()))
        .clock(clock)
        .bind()
        .await
        .expect("bind")
        .spawn()
}

#[tokio::test]
async fn queued_messages_subscriptions_and_retained_survive_a_restart() {
    let dir = TempDir::new("restart");
    for v in [V3, V5] {
        let b = start_in(&dir).await;
        let (mut sub, _) = Raw::connect_with(b.addr(), persistent(v, "device")).await;
        sub.subscribe("cmd/#", QoS::ExactlyOnce).await;
        sub.disconnect().await;
        let mut publ = Raw::connect(b.addr(), v, "ctl").await;
        publ.publish("cmd/a", "one", QoS::AtLeastOnce, false).await;
        publ.publish("cmd/b", "two", QoS::ExactlyOnce, false).await;
        publ.publish("state/x", "kept", QoS::AtLeastOnce, true).await;
        drop(publ);
        b.shutdown().await;

        let b = start_in(&dir).await;
        // What was restored counts in the broker-wide queue budget ("one" and "two").
        assert_eq!(b.stats().queued_bytes, 6);
        let (mut sub, ack) = Raw::connect_with(b.addr(), persistent(v, "device")).await;
        assert!(ack.session_present, "session restored");
        let p1 = sub.recv_publish().await;
        assert_eq!((&p1.payload[..], p1.qos), (&b"one"[..], QoS::AtLeastOnce));
        sub.ack(&p1).await;
        let p2 = sub.recv_publish().await;
        assert_eq!((&p2.payload[..], p2.qos), (&b"two"[..], QoS::ExactlyOnce));
        sub.ack(&p2).await;
        // The subscription itself survived: a new message still arrives.
        let mut publ = Raw::connect(b.addr(), v, "ctl").await;
        publ.publish("cmd/c", "three", QoS::AtLeastOnce, false).await;
        let p3 = sub.recv_publish().await;
        assert_eq!(&p3.payload[..], b"three");
        sub.ack(&p3).await;
        let mut late = Raw::connect(b.addr(), v, "late").await;
        late.subscribe("state/#", QoS::AtMostOnce).await;
        assert_eq!(&late.recv_publish().await.payload[..], b"kept");
        publ.publish("state/x", "", QoS::AtLeastOnce, true).await;
        // End the session so the next round starts clean.
        let (s, _) = Raw::connect_with(b.addr(), Connect::new(v, "device")).await;
        s.disconnect().await;
        sub.expect_closed().await;
        b.shutdown().await;
    }
}

#[tokio::test]
async fn in_flight_deliveries_resume_after_a_restart_mqtt_4_4_0_1() {
    // v5 [MQTT-4.4.0-1]: in-flight deliveries resume after a restart.
    let dir = TempDir::new("inflight");
    let b = start_in(&dir).await;
    let (mut sub, _) = Raw::connect_with(b.addr(), persistent(V5, "slow")).await;
    sub.subscribe("t", QoS::ExactlyOnce).await;
    let mut publ = Raw::connect(b.addr(), V5, "p").await;
    publ.publish("t", "q1", QoS::AtLeastOnce, false).await;
    publ.publish("t", "q2", QoS::ExactlyOnce, false).await;
    let first = sub.recv_publish().await;
    let second = sub.recv_publish().await;
    sub.send(Packet::PubRec(Ack::new(second.packet_id.unwrap())))
        .await;
    assert!(matches!(sub.recv().await, Packet::PubRel(_)));
    sub.sync().await;
    b.shutdown().await;

    let b = start_in(&dir).await;
    let (mut sub, ack) = Raw::connect_with(b.addr(), persistent(V5, "slow")).await;
    assert!(ack.session_present);
    let again = sub.recv_publish().await;
    assert!(again.dup);
    assert_eq!(
        (again.packet_id, &again.payload[..]),
        (first.packet_id, &b"q1"[..])
    );
    match sub.recv().await {
        Packet::PubRel(a) => assert_eq!(Some(a.packet_id), second.packet_id),
        p => panic!("expected PUBREL, got {p:?}"),
    }
    sub.send(Packet::PubAck(Ack::new(again.packet_id.unwrap()))).await;
    sub.send(Packet::PubComp(Ack::new(second.packet_id.unwrap())))
        .await;
    sub.sync().await;
    b.shutdown().await;
    // Acknowledged: gone after another restart.
    let b = start_in(&dir).await;
    let (mut sub, _) = Raw::connect_with(b.addr(), persistent(V5, "slow")).await;
    sub.expect_silence(300).await;
}

#[tokio::test]
async fn incoming_qos2_stays_exactly_once_across_a_restart_mqtt_4_3_3_10() {
    // v5 [MQTT-4.3.3-10]: a repeated QoS 2 PUBLISH after a restart is not delivered again.
    let dir = TempDir::new("qos2in");
    let b = start_in(&dir).await;
    let (mut sub, _) = Raw::connect_with(b.addr(), persistent(V5, "sub")).await;
    sub.subscribe("x", QoS::ExactlyOnce).await;
    sub.disconnect().await;
    let (mut publ, _) = Raw::connect_with(b.addr(), persistent(V5, "pub")).await;
    let mut p = Publish::new("x", "once");
    p.qos = QoS::ExactlyOnce;
    p.packet_id = Some(pid(5));
    publ.send(Packet::Publish(p.clone())).await;
    assert!(matches!(publ.recv().await, Packet::PubRec(_)));
    drop(publ);
    b.shutdown().await;

    let b = start_in(&dir).await;
    let (mut publ, ack) = Raw::connect_with(b.addr(), persistent(V5, "pub")).await;
    assert!(ack.session_present);
    // The publisher did not see PUBCOMP: it sends the PUBLISH again with DUP.
    p.dup = true;
    publ.send(Packet::Publish(p)).await;
    assert!(matches!(publ.recv().await, Packet::PubRec(_)));
    publ.send(Packet::PubRel(Ack::new(pid(5)))).await;
    match publ.recv().await {
        Packet::PubComp(a) => assert_eq!(a.reason_code, ReasonCode::Success),
        p => panic!("{p:?}"),
    }
    let (mut sub, _) = Raw::connect_with(b.addr(), persistent(V5, "sub")).await;
    let got = sub.recv_publish().await;
    assert_eq!(&got.payload[..], b"once");
    sub.ack(&got).await;
    sub.expect_silence(300).await;
}

#[tokio::test]
async fn session_expiry_counts_while_the_broker_is_down() {
    let dir = TempDir::new("expiry");
    let clock = ManualClock::new();
    let b = start_in_with(&dir, clock.clone()).await;
    let mut c = persistent(V5, "brief");
    c.properties.session_expiry_interval = Some(1);
    let (mut sub, _) = Raw::connect_with(b.addr(), c.clone()).await;
    sub.subscribe("t", QoS::AtLeastOnce).await;
    sub.disconnect().await;
    let (keep, _) = Raw::connect_with(b.addr(), persistent(V5, "durable")).await;
    keep.disconnect().await;
    b.shutdown().await;
    clock.advance(Duration::from_millis(1500));
    let b = start_in_with(&dir, clock.clone()).await;
    let (_sub, ack) = Raw::connect_with(b.addr(), c).await;
    assert!(!ack.session_present, "expired while the broker was down");
    let (_keep, ack) = Raw::connect_with(b.addr(), persistent(V5, "durable")).await;
    assert!(ack.session_present);
}

#[tokio::test]
async fn a_delayed_will_fires_after_a_restart() {
    let dir = TempDir::new("will");
    let clock = ManualClock::new();
    let b = start_in_with(&dir, clock.clone()).await;
    let mut c = persistent(V5, "dying");
    c.will = Some(Will {
        topic: "wills/dying".into(),
        payload: "gone".into(),
        qos: QoS::AtLeastOnce,
        retain: true,
        properties: tern_proto::codec::WillProperties {
            will_delay_interval: Some(2),
            ..Default::default()
        },
    });
    let (dev, _) = Raw::connect_with(b.addr(), c).await;
    drop(dev);
    eventually("the will waits for its delay", || {
        b.session("dying")
            .is_some_and(|s| s.connection.is_none() && s.will_pending)
    })
    .await;
    b.shutdown().await;
    let b = start_in_with(&dir, clock.clone()).await;
    let mut watcher = Raw::connect(b.addr(), V5, "watcher").await;
    watcher.subscribe("wills/#", QoS::AtLeastOnce).await;
    // Not before its delay, which counts from the disconnection (v5 section 3.1.3.2.2).
    watcher.expect_silence(100).await;
    pass(&clock, Duration::from_secs(2)).await;
    let p = watcher.recv_publish().await;
    assert_eq!(&p.payload[..], b"gone");
}

#[tokio::test]
async fn a_damaged_data_directory_is_refused_with_a_clear_error() {
    let dir = TempDir::new("corrupt");
    std::fs::create_dir_all(&dir.0).unwrap();
    std::fs::write(
        dir.0.join("tern.redb"),
        b"this is not a database, just garbage bytes".repeat(100),
    )
    .unwrap();
    let err = BrokerBuilder::new()
        .listen("127.0.0.1:0".parse().unwrap())
        .configure(|c| c.data_dir = Some(dir.0.clone()))
        .bind()
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("data directory"), "{err}");
}

/// Mount a small tmpfs (needs root; CI runs as root). `None` where mounting is not allowed
/// outside CI; in CI (CI=true) that is a failure.
fn small_tmpfs(dir: &TempDir, size: &str) -> Option<Mount> {
    std::fs::create_dir_all(&dir.0).unwrap();
    let ok = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(&dir.0)
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            std::env::var("CI").is_err(),
            "CI runs as root and must be able to mount a tmpfs"
        );
        eprintln!("skipping the disk-full test: mounting a tmpfs needs root");
        return None;
    }
    Some(Mount(dir.0.clone()))
}

/// Unmounts on drop, also when the test fails.
struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[tokio::test]
async fn a_full_disk_refuses_qos1_instead_of_acknowledging_it() {
    let dir = TempDir::new("full");
    let Some(_mount) = small_tmpfs(&dir, "2M") else {
        return;
    };
    let data = TempDir(dir.0.join("data"));
    let start = || async {
        BrokerBuilder::new()
            .listen("127.0.0.1:0".parse().unwrap())
            .configure(|c| {
                c.data_dir = Some(data.0.clone());
                c.max_queued_messages = 100_000;
                c.max_queued_bytes = 1 << 30;
            })
            .bind()
            .await
            .expect("bind")
            .spawn()
    };
    let b = start().await;
    let (mut sub, _) = Raw::connect_with(b.addr(), persistent(V5, "offline")).await;
    sub.subscribe("big/#", QoS::AtLeastOnce).await;
    sub.disconnect().await;
    let mut live = Raw::connect(b.addr(), V5, "live").await;
    live.subscribe("qos0", QoS::AtMostOnce).await;

    let mut publ = Raw::connect(b.addr(), V5, "pub").await;
    let payload = "x".repeat(32 * 1024);
    let mut acked = Vec::new();
    let mut refused = false;
    for i in 1..=200u16 {
        let mut p = Publish::new(format!("big/{i}"), payload.clone());
        p.qos = QoS::AtLeastOnce;
        p.packet_id = Some(pid(i));
        publ.send(Packet::Publish(p)).await;
        match publ.next().await {
            Some(Packet::PubAck(a)) if a.reason_code == ReasonCode::Success => acked.push(i),
            // Storage failed: refused with 0x80, or the connection closed without an acknowledgement.
            Some(Packet::PubAck(a)) => {
                assert!(a.reason_code.is_error(), "{a:?}");
                refused = true;
                break;
            }
            Some(Packet::Disconnect(d)) => {
                assert!(d.reason().is_error());
                refused = true;
                break;
            }
            None => {
                refused = true;
                break;
            }
            Some(p) => panic!("{p:?}"),
        }
    }
    assert!(refused, "2 MB cannot hold 200 × 32 KB");
    assert!(!acked.is_empty());
    // QoS 0 keeps flowing to connected clients.
    let mut other = Raw::connect(b.addr(), V5, "other").await;
    other.publish("qos0", "still here", QoS::AtMostOnce, false).await;
    assert_eq!(&live.recv_publish().await.payload[..], b"still here");
    drop((publ, other, live));
    b.shutdown().await;

    // Room again: everything that was acknowledged is there.
    let _ = std::process::Command::new("mount")
        .args(["-o", "remount,size=64M"])
        .arg(&dir.0)
        .status();
    let b = start().await;
    let (mut sub, ack) = Raw::connect_with(b.addr(), persistent(V5, "offline")).await;
    assert!(ack.session_present);
    let mut got = Vec::new();
    while let Ok(Some(Packet::Publish(p))) = sub.next_within(Duration::from_millis(500)).await {
        sub.ack(&p).await;
        got.push(p.topic[4..].parse::<u16>().unwrap());
    }
    for i in &acked {
        assert!(
            got.contains(i),
            "acknowledged message {i} lost (got {} of {})",
            got.len(),
            acked.len()
        );
    }
    b.shutdown().await;
    drop(data);
}

/// A broker whose durable state is `mem`, (re)started on what is durable in it.
async fn start_on(mem: &std::sync::Arc<tern_broker::durability::InMemory>) -> BrokerHandle {
    BrokerBuilder::new()
        .listen("127.0.0.1:0".parse().unwrap())
        .durability(mem.clone(), mem.restart())
        .bind()
        .await
        .expect("bind")
        .spawn()
}

#[tokio::test]
async fn a_qos1_message_for_a_persistent_session_is_acknowledged_only_once_durable() {
    // The Durability seam's contract, through another implementation than the embedded store:
    // no PUBACK before the message for the offline persistent session is durable, and after
    // a crash the broker restarts from exactly what was durable.
    let mem = tern_broker::durability::InMemory::new();
    let b = start_on(&mem).await;
    let (mut dev, _) = Raw::connect_with(b.addr(), persistent(V5, "dev")).await;
    dev.subscribe("cmd/#", QoS::AtLeastOnce).await;
    dev.disconnect().await;
    let mut publ = Raw::connect(b.addr(), V5, "ctl").await;
    publ.publish("cmd/1", "kept", QoS::AtLeastOnce, false).await;

    mem.hold(true);
    let mut p = Publish::new("cmd/2", "not acknowledged");
    p.qos = QoS::AtLeastOnce;
    p.packet_id = tern_proto::PacketId::new(9);
    publ.send(Packet::Publish(p)).await;
    publ.expect_silence(200).await;
    assert!(mem.pending() > 0);
    // Power loss before it was durable: the publisher was never told it was accepted.
    mem.crash();
    drop(publ);
    b.shutdown().await;

    let b = start_on(&mem).await;
    let (mut dev, ack) = Raw::connect_with(b.addr(), persistent(V5, "dev")).await;
    assert!(ack.session_present);
    let got = dev.recv_publish().await;
    assert_eq!(&got.payload[..], b"kept");
    dev.ack(&got).await;
    dev.expect_silence(200).await;

    // Released: the PUBACK goes out once the change is durable.
    dev.disconnect().await;
    mem.hold(true);
    let mut publ = Raw::connect(b.addr(), V5, "ctl").await;
    let mut p = Publish::new("cmd/3", "acknowledged");
    p.qos = QoS::AtLeastOnce;
    p.packet_id = tern_proto::PacketId::new(10);
    publ.send(Packet::Publish(p)).await;
    publ.expect_silence(100).await;
    mem.release();
    match publ.recv().await {
        Packet::PubAck(a) => assert_eq!(a.packet_id.get(), 10),
        p => panic!("expected PUBACK, got {p:?}"),
    }
    mem.crash();
    drop(publ);
    b.shutdown().await;
    let b = start_on(&mem).await;
    let (mut dev, _) = Raw::connect_with(b.addr(), persistent(V5, "dev")).await;
    assert_eq!(&dev.recv_publish().await.payload[..], b"acknowledged");
}

#[tokio::test]
async fn qos2_deliveries_to_a_persistent_session_stay_exactly_once_across_crashes_mqtt_4_4_0_1() {
    // Found by the simulation (tern-sim seeds 16, 17 and 157). A QoS 2 delivery is resent
    // after a crash with its original packet id v5 [MQTT-4.4.0-1], so the broker sends a PUBLISH
    // only once its packet id is durable, and a PUBREL only once the Released stage is: the
    // client forgets the id at PUBREL and would take a resent PUBLISH for a new message.
    let mem = tern_broker::durability::InMemory::new();
    let b = start_on(&mem).await;
    let (mut dev, _) = Raw::connect_with(b.addr(), persistent(V5, "dev")).await;
    dev.subscribe("cmd/#", QoS::ExactlyOnce).await;
    let mut publ = Raw::connect(b.addr(), V5, "ctl").await;
    publ.publish("cmd/1", "once", QoS::ExactlyOnce, false).await;
    let first = dev.recv_publish().await;
    let id = first.packet_id.expect("QoS 2 has a packet id");

    // PUBREC while storage holds back: no PUBREL until the Released stage is durable.
    mem.hold(true);
    dev.send(Packet::PubRec(Ack::new(id))).await;
    dev.expect_silence(200).await;
    mem.release();
    match dev.recv().await {
        Packet::PubRel(a) => assert_eq!(a.packet_id, id),
        p => panic!("expected PUBREL, got {p:?}"),
    }
    // The client completes and forgets the id; the broker crashes before PUBCOMP is durable.
    dev.send(Packet::PubComp(Ack::new(id))).await;
    mem.crash();
    drop((dev, publ));
    b.shutdown().await;

    // After the restart the broker resends PUBREL, never the PUBLISH.
    let b = start_on(&mem).await;
    let (mut dev, ack) = Raw::connect_with(b.addr(), persistent(V5, "dev")).await;
    assert!(ack.session_present);
    match dev.recv().await {
        Packet::PubRel(a) => assert_eq!(a.packet_id, id),
        p => panic!("expected PUBREL {id:?}, got {p:?}"),
    }
    dev.send(Packet::PubComp(Ack::new(id))).await;
    dev.expect_silence(200).await;
}

/// A broker on `dir` whose sessions keep `window` messages in memory and at most
/// `on_disk` more on disk while their client is away.
async fn start_spilling(dir: &TempDir, window: usize, on_disk: u64) -> BrokerHandle {
    start_unsynced(dir, move |c| {
        c.max_queued_messages = window;
        c.max_offline_messages = on_disk;
    })
    .await
}

/// A broker on the data directory `dir`, configured by `f`, whose commits are released
/// without waiting for fsync: the tests that use it are about order and memory, not power loss.
fn start_unsynced(
    dir: &TempDir,
    f: impl FnOnce(&mut tern_broker::Config) + 'static,
) -> impl std::future::Future<Output = BrokerHandle> + 'static {
    let dir = dir.0.clone();
    async move {
        BrokerBuilder::new()
            .listen("127.0.0.1:0".parse().unwrap())
            .configure(move |c| {
                c.data_dir = Some(dir);
                c.sync = tern_broker::SyncPolicy::Interval;
                f(c);
            })
            .bind()
            .await
            .expect("bind")
            .spawn()
    }
}

/// v3.1.1 [MQTT-4.6.0-6] / v5 [MQTT-4.6.0-6]: the messages queued for a session whose client
/// is away beyond what its queue holds in memory (`max_queued_messages`) wait on disk
/// (`max_offline_messages`), survive a restart (which reads only the window back), and all
/// arrive in the order they were published once the client returns.
#[tokio::test]
async fn an_offline_queue_beyond_memory_waits_on_disk_and_arrives_in_order() {
    const WINDOW: usize = 50;
    const TOTAL: usize = 600;
    for v in [V3, V5] {
        let dir = TempDir::new("spill");
        let b = start_spilling(&dir, WINDOW, 10_000).await;
        let (mut sub, _) = Raw::connect_with(b.addr(), persistent(v, "away")).await;
        sub.subscribe("spill/#", QoS::AtLeastOnce).await;
        sub.disconnect().await;
        let mut publ = Raw::connect(b.addr(), v, "ctl").await;
        for i in 0..TOTAL / 2 {
            publ.publish("spill/n", &i.to_string(), QoS::AtLeastOnce, false)
                .await;
        }
        let info = b.session("away").unwrap();
        assert_eq!(
            (info.queued, info.on_disk.0),
            (WINDOW, (TOTAL / 2 - WINDOW) as u64)
        );
        assert_eq!(info.dropped, 0);
        drop(publ);
        b.shutdown().await;

        // After a restart only the window is in memory; the rest stays on disk.
        let b = start_spilling(&dir, WINDOW, 10_000).await;
        let info = b.session("away").unwrap();
        assert_eq!(
            (info.queued, info.on_disk.0),
            (WINDOW, (TOTAL / 2 - WINDOW) as u64)
        );
        let mut publ = Raw::connect(b.addr(), v, "ctl").await;
        for i in TOTAL / 2..TOTAL {
            publ.publish("spill/n", &i.to_string(), QoS::AtLeastOnce, false)
                .await;
        }
        let (mut sub, ack) = Raw::connect_with(b.addr(), persistent(v, "away")).await;
        assert!(ack.session_present);
        for i in 0..TOTAL {
            let p = sub.recv_publish().await;
            assert_eq!(
                std::str::from_utf8(&p.payload).unwrap(),
                i.to_string(),
                "message {i}"
            );
            sub.ack(&p).await;
        }
        // Live messages go on as before once the disk is drained.
        publ.publish("spill/n", "live", QoS::AtLeastOnce, false).await;
        assert_eq!(&sub.recv_publish().await.payload[..], b"live");
        let info = b.session("away").unwrap();
        assert_eq!(info.on_disk, (0, 0));
        b.shutdown().await;
    }
}

/// `offline_cache_bytes`: the queues of all sessions that are away hold at most that much in
/// memory together, the rest waits on disk; a restart reads no more than that back; and every
/// session still gets all its messages in order when it returns (v3.1.1 [MQTT-4.6.0-6] /
/// v5 [MQTT-4.6.0-6]).
#[tokio::test]
async fn all_offline_queues_together_stay_within_offline_cache_bytes() {
    const SESSIONS: usize = 10;
    const EACH: usize = 40;
    const SIZE: usize = 1000;
    const CACHE: usize = 20 * SIZE;
    let dir = TempDir::new("offline-cache");
    let start = |dir: &TempDir| start_unsynced(dir, |c| c.offline_cache_bytes = CACHE);
    let in_memory = |b: &BrokerHandle| {
        (0..SESSIONS)
            .map(|i| {
                let info = b.session(&format!("away{i}")).unwrap();
                (info.queued_bytes, info.queued as u64 + info.on_disk.0)
            })
            .fold((0, 0), |(m, n), (a, c)| (m + a, n + c))
    };
    let b = start(&dir).await;
    for i in 0..SESSIONS {
        let (mut sub, _) = Raw::connect_with(b.addr(), persistent(V5, &format!("away{i}"))).await;
        sub.subscribe(&format!("fleet/{i}"), QoS::AtLeastOnce).await;
        sub.disconnect().await;
    }
    let mut publ = Raw::connect(b.addr(), V5, "ctl").await;
    for n in 0..EACH {
        for i in 0..SESSIONS {
            let payload = format!("{n}-{}", "x".repeat(SIZE - 1 - n.to_string().len()));
            publ.publish(&format!("fleet/{i}"), &payload, QoS::AtLeastOnce, false)
                .await;
        }
    }
    drop(publ);
    let (bytes, all) = in_memory(&b);
    assert_eq!(
        all,
        (SESSIONS * EACH) as u64,
        "every message kept, in memory or on disk"
    );
    assert!(
        bytes <= CACHE,
        "{bytes} bytes of queues in memory, offline_cache_bytes {CACHE}"
    );
    b.shutdown().await;

    let b = start(&dir).await;
    let (bytes, all) = in_memory(&b);
    assert_eq!(all, (SESSIONS * EACH) as u64, "every message restored");
    assert!(
        bytes <= CACHE,
        "after a restart: {bytes} bytes in memory, offline_cache_bytes {CACHE}"
    );
    for i in 0..SESSIONS {
        let (mut sub, ack) = Raw::connect_with(b.addr(), persistent(V5, &format!("away{i}"))).await;
        assert!(ack.session_present);
        for n in 0..EACH {
            let p = sub.recv_publish().await;
            let text = std::str::from_utf8(&p.payload).unwrap();
            assert_eq!(
                text.split('-').next(),
                Some(&*n.to_string()),
                "session {i}, message {n}"
            );
            assert_eq!(p.payload.len(), SIZE);
            sub.ack(&p).await;
        }
        sub.expect_silence(100).await;
    }
    b.shutdown().await;
}

/// Publish QoS `qos` message `payload` to `topic` with packet id 1 and return the reason code
/// of its PUBACK or PUBREC (a QoS 2 exchange is completed after a success PUBREC).
async fn publish_reason(c: &mut Raw, topic: &str, payload: &str, qos: QoS) -> ReasonCode {
    let mut p = Publish::new(topic, payload.to_string());
    p.qos = qos;
    p.packet_id = Some(pid(1));
    c.send(Packet::Publish(p)).await;
    match c.recv().await {
        Packet::PubAck(a) => a.reason_code,
        Packet::PubRec(a) => {
            if !a.reason_code.is_error() {
                c.send(Packet::PubRel(Ack::new(pid(1)))).await;
                assert!(matches!(c.recv().await, Packet::PubComp(_)));
            }
            a.reason_code
        }
        other => panic!("expected PUBACK or PUBREC, got {other:?}"),
    }
}

/// `max_offline_messages`: beyond the memory window and that many on disk, messages for a
/// session whose client is away are dropped and counted; the first ones arrive. A 5.0
/// publisher whose message every matching session dropped so is told: PUBACK (or PUBREC)
/// 0x97 Quota exceeded; after the error PUBREC its identifier starts a new message
/// (v5 [MQTT-4.3.3-9]). A 3.1.1 publisher's PUBACK cannot say so.
#[tokio::test]
async fn max_offline_messages_bounds_what_waits_on_disk() {
    let dir = TempDir::new("spill-limit");
    let b = start_spilling(&dir, 20, 30).await;
    let (mut sub, _) = Raw::connect_with(b.addr(), persistent(V5, "away")).await;
    sub.subscribe("spill/#", QoS::AtLeastOnce).await;
    sub.disconnect().await;
    let mut publ = Raw::connect(b.addr(), V5, "ctl").await;
    let mut reasons = Vec::new();
    for i in 0..100 {
        reasons.push(publish_reason(&mut publ, "spill/n", &i.to_string(), QoS::AtLeastOnce).await);
    }
    assert!(
        reasons[..50].iter().all(|r| *r == ReasonCode::Success),
        "{reasons:?}"
    );
    assert!(
        reasons[50..].iter().all(|r| *r == ReasonCode::QuotaExceeded),
        "{reasons:?}"
    );
    let info = b.session("away").unwrap();
    assert_eq!((info.queued, info.on_disk.0, info.dropped), (20, 30, 50));
    // QoS 2: PUBREC 0x97, and the same identifier is a new message at once.
    for _ in 0..2 {
        let r = publish_reason(&mut publ, "spill/n", "q2", QoS::ExactlyOnce).await;
        assert_eq!(r, ReasonCode::QuotaExceeded, "v5 [MQTT-4.3.3-9]");
    }
    let mut v3 = Raw::connect(b.addr(), V3, "ctl3").await;
    assert_eq!(
        publish_reason(&mut v3, "spill/n", "v3", QoS::AtLeastOnce).await,
        ReasonCode::Success,
        "3.1.1 has no reason code"
    );
    // Another session that has room: the message reached someone, a success.
    let (mut other, _) = Raw::connect_with(b.addr(), persistent(V5, "other")).await;
    other.subscribe("spill/#", QoS::AtLeastOnce).await;
    other.disconnect().await;
    let r = publish_reason(&mut publ, "spill/n", "both", QoS::AtLeastOnce).await;
    assert_eq!(r, ReasonCode::Success);
    let info = b.session("away").unwrap();
    assert_eq!((info.queued, info.on_disk.0, info.dropped), (20, 30, 54));
    let (mut sub, _) = Raw::connect_with(b.addr(), persistent(V5, "away")).await;
    for i in 0..50 {
        let p = sub.recv_publish().await;
        assert_eq!(std::str::from_utf8(&p.payload).unwrap(), i.to_string());
        sub.ack(&p).await;
    }
    sub.expect_silence(200).await;
}

/// v3.1.1 [MQTT-3.3.1-6] / v5 [MQTT-3.3.1-9]: every retained message reaches a new
/// subscription, also when most of them are kept on disk only (`retained_cache_bytes` far
/// below their size): they are read from the store as the subscriber's queue drains, across a
/// restart too (which reads only the cache's worth back), and the admin figures tell the
/// resident bytes apart.
#[tokio::test]
async fn retained_messages_beyond_the_cache_are_read_from_disk() {
    const N: usize = 600;
    let dir = TempDir::new("retained-disk");
    let start = |dir: &TempDir| {
        start_unsynced(dir, |c| {
            c.retained_cache_bytes = 10_000;
            c.max_queued_messages = 50;
            c.sys_interval_secs = 0;
        })
    };
    let b = start(&dir).await;
    let mut publ = Raw::connect(b.addr(), V5, "retainer").await;
    let payload = |i: usize| format!("{i:0>100}");
    for i in 0..N {
        publ.publish(&format!("r/{i:04}"), &payload(i), QoS::AtLeastOnce, true)
            .await;
    }
    // Retained again: its newer state is what a subscriber gets.
    publ.publish("r/0000", "newer", QoS::AtLeastOnce, true).await;
    // The puts become durable within the sync interval; the cache then lets the rest go.
    tokio::time::sleep(Duration::from_millis(300)).await;
    publ.publish("r/last", &payload(0), QoS::AtLeastOnce, true).await;
    let m = b.admin().metrics();
    assert!(
        m.retained_resident_bytes <= 10_100,
        "{} bytes resident",
        m.retained_resident_bytes
    );
    assert_eq!(m.retained_bytes, (N * 100 + 100 - 100 + 5) as u64);
    assert_eq!(
        &b.admin().retained_message("r/0300").unwrap().payload[..],
        payload(300).as_bytes()
    );
    drop(publ);
    let mut sub = Raw::connect(b.addr(), V5, "reader").await;
    sub.subscribe("r/#", QoS::AtLeastOnce).await;
    let mut got = std::collections::BTreeMap::new();
    for _ in 0..N + 1 {
        let p = sub.recv_publish().await;
        assert!(p.retain, "v5 [MQTT-3.3.1-9] sent with RETAIN");
        got.insert(
            p.topic.to_string(),
            String::from_utf8(p.payload.to_vec()).unwrap(),
        );
        sub.ack(&p).await;
    }
    sub.expect_silence(200).await;
    assert_eq!(got.len(), N + 1);
    assert_eq!(got["r/0000"], "newer");
    assert_eq!(got["r/0599"], payload(599));
    drop(sub);
    b.shutdown().await;
    let b = start(&dir).await;
    assert!(b.admin().metrics().retained_resident_bytes <= 10_000);
    retained_after_restart(b, N).await;
}

async fn retained_after_restart(b: BrokerHandle, n: usize) {
    let mut sub = Raw::connect(b.addr(), V3, "reader-after").await;
    sub.subscribe("r/#", QoS::AtLeastOnce).await;
    let mut count = 0;
    for _ in 0..n + 1 {
        let p = sub.recv_publish().await;
        if &*p.topic == "r/0000" {
            assert_eq!(&p.payload[..], b"newer");
        }
        count += 1;
        sub.ack(&p).await;
    }
    sub.expect_silence(200).await;
    assert_eq!(count, n + 1);
    b.shutdown().await;
}

/// A backplane that moves sessions from another broker in this process as a cluster's claim
/// does ([`tern_broker::Admin::hand_over`] there), and in the moment between the session's
/// install here and the rest's handover (`claimed`) publishes `r0..r2` on the broker it
/// leaves (what reaches it there meanwhile: the rest) and `b0..b2` here.
#[derive(Debug)]
struct Mover {
    from: tern_broker::Admin,
    /// Taken when used: a broker holds its backplane, which must not keep the broker (and
    /// its store) alive after it stops.
    here: std::sync::Mutex<Option<tern_broker::Admin>>,
    generation: std::sync::Mutex<Option<u64>>,
    /// How far back the session held messages here when its rest was asked for.
    held_before_rest: std::sync::Mutex<Option<tern_broker::backplane::Held>>,
}

impl tern_broker::backplane::Backplane for Mover {
    fn published(&self, _: &std::sync::Arc<tern_broker::Message>) {}
    fn subscribed(&self, _: &str) {}
    fn unsubscribed(&self, _: &str) {}
    fn claim(&self, client_id: &str, clean_start: bool) -> Option<tern_broker::backplane::Claim> {
        match self.from.hand_over(client_id, clean_start) {
            tern_broker::HandOff::Moved { raw, generation } => {
                *self.generation.lock().unwrap() = Some(generation);
                Some(Box::pin(async move { Ok(Some(raw)) }))
            }
            tern_broker::HandOff::Ended => Some(Box::pin(async { Ok(None) })),
            _ => None,
        }
    }
    fn claimed(&self, client_id: &str) -> Option<tern_broker::backplane::Claim> {
        let generation = self.generation.lock().unwrap().take()?;
        let here = self.here.lock().unwrap().take()?;
        *self.held_before_rest.lock().unwrap() = here.held(client_id);
        for i in 0..3 {
            // As a cluster's would be: read from its streams (a place), or from a client of
            // this broker (an arrival time).
            let m = tern_broker::Message::new("mv/t", format!("r{i}"), QoS::AtLeastOnce, false);
            assert_eq!(self.from.publish(m.placed_at(0, 20 + i)), Ok(1));
            let m = tern_broker::Message::new("mv/t", format!("b{i}"), QoS::AtLeastOnce, false);
            assert_eq!(here.publish(m.arrived(std::time::Instant::now())), Ok(1));
        }
        let rest = self.from.hand_over_rest(client_id, Some(generation));
        Some(Box::pin(async move { Ok(rest) }))
    }
}

/// A broker on `dir` whose backplane moves sessions from `from` ([`Mover`]).
async fn start_moving(dir: &TempDir, from: &BrokerHandle) -> (BrokerHandle, std::sync::Arc<Mover>) {
    let mover = std::sync::Arc::new(Mover {
        from: from.admin(),
        here: std::sync::Mutex::new(None),
        generation: std::sync::Mutex::new(None),
        held_before_rest: std::sync::Mutex::new(None),
    });
    let dir = dir.0.clone();
    let b = BrokerBuilder::new()
        .listen("127.0.0.1:0".parse().unwrap())
        .configure(move |c| c.data_dir = Some(dir))
        .backplane(mover.clone())
        .bind()
        .await
        .expect("bind")
        .spawn();
    *mover.here.lock().unwrap() = Some(b.admin());
    (b, mover)
}

/// Receive the payloads `want` in this order, the first `dups` with DUP set (resent) and
/// the others without, acknowledging each when `ack`.
async fn expect_in_order(sub: &mut Raw, want: &[&str], dups: usize, ack: bool) {
    let mut got = Vec::new();
    for i in 0..want.len() {
        let p = sub.recv_publish().await;
        assert_eq!(p.dup, i < dups, "message {i}: {:?}", p.payload);
        got.push(String::from_utf8(p.payload.to_vec()).unwrap());
        if ack {
            sub.ack(&p).await;
        }
    }
    assert_eq!(got, want);
}

/// A session moved to this broker by a backplane (a cluster's live handover): the messages
/// that reached it on the other broker while it was being installed here (the rest) go after
/// those handed over first and before those routed here since, also once this broker
/// restarts from its store, which queues by store number (before, the rest was numbered
/// after the messages routed here since: the restart sent h, b, r), whether they were in
/// flight then or still queued. v5 [MQTT-4.6.0-6]: the order of a publisher's messages holds.
#[tokio::test]
async fn messages_handed_over_in_two_parts_keep_their_order_across_a_restart_mqtt_4_6_0_6() {
    let want = ["h0", "h1", "h2", "r0", "r1", "r2", "b0", "b1", "b2"];
    for all_sent in [true, false] {
        let dir = TempDir::new("handover-order");
        let a = start().await;
        let (mut sub, _) = Raw::connect_with(a.addr(), persistent(V5, "mover")).await;
        sub.subscribe("mv/#", QoS::AtLeastOnce).await;
        sub.disconnect().await;
        for i in 0..3 {
            let m = tern_broker::Message::new("mv/t", format!("h{i}"), QoS::AtLeastOnce, false);
            assert_eq!(a.publish(m.placed_at(0, 10 + i)), Ok(1));
        }
        let (b, mover) = start_moving(&dir, &a).await;
        // Either all are sent (in flight, not acknowledged, when b stops), or one (Receive
        // Maximum 1) and the others stay queued.
        let mut c = persistent(V5, "mover");
        if !all_sent {
            c.properties.receive_maximum = Some(1);
        }
        let (mut sub, ack) = Raw::connect_with(b.addr(), c).await;
        assert!(ack.session_present, "handed over from a");
        assert!(a.session("mover").is_none(), "the rest left a");
        let sent = if all_sent { want.len() } else { 1 };
        expect_in_order(&mut sub, &want[..sent], 0, false).await;
        // How far back the messages it holds go (what a cluster writes as the session's
        // floor): not known until the rest is in (it could be older than what came first);
        // then the lowest place of those without an arrival time, per shard, and the oldest
        // arrival.
        use tern_broker::backplane::Held;
        let before_rest = mover.held_before_rest.lock().unwrap().clone();
        assert_eq!(before_rest, Some(Held::Unknown));
        match b.admin().held("mover") {
            Some(Held::Placed {
                since: Some(_),
                lowest,
            }) => assert_eq!(lowest, vec![(0, 10)]),
            other => panic!("expected the places of h0 and the arrival of b0, got {other:?}"),
        }
        drop(sub);
        b.shutdown().await;

        let b = start_in(&dir).await;
        let (mut sub, ack) = Raw::connect_with(b.addr(), persistent(V5, "mover")).await;
        assert!(ack.session_present, "restored from b's store");
        expect_in_order(&mut sub, &want, sent, true).await;
        sub.expect_silence(200).await;
        b.shutdown().await;
        a.shutdown().await;
    }
}

/// The persistent 5.0 session of client "q" on `b`, subscribed to `q/#`, with `q0..qN`
/// (`n`) published to it while its client is away.
async fn queued_while_away(b: &BrokerHandle, n: usize) {
    let (mut sub, _) = Raw::connect_with(b.addr(), persistent(V5, "q")).await;
    sub.subscribe("q/#", QoS::AtLeastOnce).await;
    sub.disconnect().await;
    for i in 0..n {
        let m = tern_broker::Message::new("q/t", format!("q{i}"), QoS::AtLeastOnce, false);
        assert_eq!(b.publish(m), Ok(1));
    }
}

/// A handout of `names` from another broker's session of client "q".
async fn handout(names: &[&str]) -> bytes::Bytes {
    let a = start().await;
    let (mut sub, _) = Raw::connect_with(a.addr(), persistent(V5, "q")).await;
    sub.subscribe("q/#", QoS::AtLeastOnce).await;
    sub.disconnect().await;
    for n in names {
        let m = tern_broker::Message::new("q/t", n.to_string(), QoS::AtLeastOnce, false);
        assert_eq!(a.publish(m), Ok(1));
    }
    let raw = match a.admin().hand_over("q", false) {
        tern_broker::HandOff::Moved { raw, .. } => raw,
        other => panic!("expected the session to move, got {other:?}"),
    };
    a.shutdown().await;
    raw
}

/// Deliveries put back into a stored session's queue (a cluster node gives back to the front
/// a handout its claimant gave up, and adds behind what its store kept the messages stored
/// in the cluster while it was down): in that order in the queue, and after a restart from
/// the store (which reads two back into memory and leaves the others on disk), also behind
/// QoS 1/2 messages waiting on disk (v5 [MQTT-4.6.0-6]).
#[tokio::test]
async fn deliveries_added_to_a_stored_queue_keep_their_place_across_a_restart_mqtt_4_6_0_6() {
    for (front, want) in [
        (true, ["f0", "f1", "q0", "q1", "q2", "q3", "q4"]),
        (false, ["q0", "q1", "q2", "q3", "q4", "f0", "f1"]),
    ] {
        for restart in [false, true] {
            let dir = TempDir::new("added");
            // Two in memory, the others on disk while the client is away.
            let start_b = || start_spilling(&dir, 2, 1_000);
            let mut b = start_b().await;
            queued_while_away(&b, 5).await;
            assert_eq!(b.session("q").map(|s| s.on_disk.0), Some(3));
            let raw = handout(&["f0", "f1"]).await;
            assert_eq!(b.admin().add_deliveries("q", &raw, front).await, Ok(2));
            if restart {
                b.shutdown().await;
                b = start_b().await;
                let on_disk = b.session("q").map(|s| s.on_disk.0);
                assert_eq!(on_disk, Some(5), "front {front}: two of seven read back");
            }
            let (mut sub, ack) = Raw::connect_with(b.addr(), persistent(V5, "q")).await;
            assert!(ack.session_present);
            expect_in_order(&mut sub, &want, 0, true).await;
            sub.expect_silence(200).await;
            b.shutdown().await;
        }
    }
}

/// A handout given back to the front of a queue while the client has a delivery in flight
/// (its store number is just below the queue's first): numbered around it, the handout
/// still comes back first after a restart, after the resent delivery (before the numbers
/// skipped those in flight, nothing fitted and it came last). v5 [MQTT-4.6.0-6].
#[tokio::test]
async fn a_handout_given_back_with_a_delivery_in_flight_keeps_its_place_across_a_restart() {
    let dir = TempDir::new("front-in-flight");
    let b = start_in(&dir).await;
    queued_while_away(&b, 3).await;
    let mut c = persistent(V5, "q");
    c.properties.receive_maximum = Some(1);
    let (mut sub, _) = Raw::connect_with(b.addr(), c).await;
    expect_in_order(&mut sub, &["q0"], 0, false).await;
    let raw = handout(&["f0", "f1"]).await;
    assert_eq!(b.admin().add_deliveries("q", &raw, true).await, Ok(2));
    drop(sub);
    b.shutdown().await;
    let b = start_in(&dir).await;
    let (mut sub, _) = Raw::connect_with(b.addr(), persistent(V5, "q")).await;
    expect_in_order(&mut sub, &["q0", "f0", "f1", "q1", "q2"], 1, true).await;
    sub.expect_silence(200).await;
    b.shutdown().await;
}

/// Deliveries added behind messages waiting on disk keep the offline limits: beyond
/// `max_offline_messages` they are dropped and counted, as any message for a session that is
/// away.
#[tokio::test]
async fn deliveries_added_behind_a_full_disk_queue_are_dropped_and_counted() {
    let dir = TempDir::new("added-full");
    // Two in memory, at most three on disk.
    let b = start_spilling(&dir, 2, 3).await;
    queued_while_away(&b, 5).await;
    assert_eq!(b.session("q").map(|s| s.on_disk.0), Some(3));
    let dropped = b.stats().messages_dropped;
    let raw = handout(&["f0", "f1"]).await;
    assert_eq!(b.admin().add_deliveries("q", &raw, false).await, Ok(0));
    assert_eq!(b.stats().messages_dropped, dropped + 2);
    let (mut sub, _) = Raw::connect_with(b.addr(), persistent(V5, "q")).await;
    expect_in_order(&mut sub, &["q0", "q1", "q2", "q3", "q4"], 0, true).await;
    sub.expect_silence(200).await;
    b.shutdown().await;
}

/// A broker on the data directory `dir`, its settings changed by `f`.
async fn start_in_configured(
    dir: &TempDir,
    f: impl FnOnce(&mut tern_broker::Config) + Send + 'static,
) -> BrokerHandle {
    let d = dir.0.clone();
    BrokerBuilder::new()
        .listen("127.0.0.1:0".parse().unwrap())
        .configure(move |c| {
            c.data_dir = Some(d);
            f(c);
        })
        .bind()
        .await
        .expect("bind")
        .spawn()
}

/// The 5.0 client "away" subscribes to `filter` at QoS 1 with a persistent session and goes
/// away.
async fn away(addr: std::net::SocketAddr, filter: &str) {
    let (mut m, _) = Raw::connect_with(addr, persistent(V5, "away")).await;
    m.subscribe(filter, QoS::AtLeastOnce).await;
    m.disconnect().await;
}

/// "away" comes back: messages "0" to `n - 1` arrive, in order, and are acknowledged.
async fn back_for(addr: std::net::SocketAddr, n: usize) {
    let (mut m, ack) = Raw::connect_with(addr, persistent(V5, "away")).await;
    assert!(ack.session_present);
    for i in 0..n {
        let p = m.recv_publish().await;
        assert_eq!(p.payload, i.to_string().as_bytes(), "in order");
        m.ack(&p).await;
    }
}

/// Counts what a shared message's source is told; keeps messages for members that are away.
#[derive(Debug, Default)]
struct KeepingSource(std::sync::atomic::AtomicUsize);

impl tern_broker::Settlement for KeepingSource {
    fn done(&self) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
    fn keep_while_away(&self) -> bool {
        true
    }
}

/// A shared message kept unsettled for a member that is away stays in memory; one its
/// session can only keep on disk (its queue spills) is settled then and kept there, rather
/// than given back to the group again and again while the member is away.
#[tokio::test]
async fn a_shared_message_an_away_member_keeps_on_disk_is_settled_when_queued() {
    use std::sync::atomic::Ordering;
    let dir = TempDir::new("away-spill");
    let b = start_in_configured(&dir, |c| c.max_queued_messages = 1).await;
    away(b.addr(), "$share/g/s/#").await;
    let source = std::sync::Arc::new(KeepingSource::default());
    for i in 0..3 {
        let msg = tern_broker::Message::new("s/1", i.to_string(), QoS::AtLeastOnce, false);
        let to = b
            .admin()
            .deliver_shared("$share/g/s/#", msg, Some(source.clone()), true)
            .expect("topic");
        assert!(matches!(to, tern_broker::SharedDelivery::Delivered), "{to:?}");
    }
    assert_eq!(
        source.0.load(Ordering::SeqCst),
        2,
        "the first in memory, unsettled; two on disk"
    );
    back_for(b.addr(), 3).await;
    eventually("the member's PUBACK settles the first", || {
        source.0.load(Ordering::SeqCst) == 3
    })
    .await;
}

/// The smallest queue limits: an away session's messages beyond one go to disk and come
/// back one at a time, in order (before, half of `max_queued_messages = 1` was 0, nothing was
/// read back, and the connection spun at 100% CPU for ever; so with `max_queued_bytes = 1`).
#[tokio::test]
async fn an_away_session_with_the_smallest_queue_limits_gets_its_messages_back_from_disk() {
    for bytes in [false, true] {
        spilled_one_at_a_time(bytes).await;
    }
}

async fn spilled_one_at_a_time(bytes: bool) {
    let dir = TempDir::new("spill-one");
    let b = start_in_configured(&dir, move |c| match bytes {
        true => c.max_queued_bytes = 1,
        false => c.max_queued_messages = 1,
    })
    .await;
    away(b.addr(), "s/#").await;
    let mut p = Raw::connect(b.addr(), V5, "p").await;
    for i in 0..3 {
        p.publish("s/1", &i.to_string(), QoS::AtLeastOnce, false).await;
    }
    back_for(b.addr(), 3).await;
}
