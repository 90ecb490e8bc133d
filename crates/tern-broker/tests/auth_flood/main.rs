//! A flood of CONNECTs with wrong passwords (issue #18): 10,000 of them, 64 at a time, while
//! 100 clients (50 pairs) exchange QoS 1 messages. Every attacker is refused with 0x86 and
//! counted; password hashing is bounded to half the cores (`max_concurrent_hashes`), so the
//! pairs keep being served. Their round-trip latency is measured before and during the
//! flood and printed (`--nocapture`); nothing may be lost, and the p99 round trip during the
//! flood must stay under 10 ms, as the issue asks, or under 8 times the quiet p99 (measured
//! before and after the flood) when other work on the machine makes 10 ms meaningless. On the 2-core development machine
//! (debug build) it was 2.8 ms (quiet: 1.8 ms); with 16 hashes at once instead of 1 it was 43 ms.
//!
//! A test binary of its own: cargo runs test binaries one after the other, so nothing else of
//! the suite runs beside it (inside the adversarial binary, twelve attacks ran in parallel and
//! the quiet p99 alone was 11 ms).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tern_broker::security::password::{PasswordFile, MIN_ITERATIONS};
use tern_broker::{BrokerBuilder, BrokerHandle};
use tern_proto::{Connect, Packet, ProtocolVersion, QoS, ReasonCode};
use tern_testkit::raw::Raw;

const ATTACKS: usize = 10_000;
const AT_ONCE: usize = 64;
const PAIRS: usize = 50;
/// A p99 round trip slower than this means the flood starved the clients (issue #18).
const STALL: Duration = Duration::from_millis(10);
/// Longest wait for a delivery.
const PATIENCE: Duration = Duration::from_secs(20);

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Run the pairs until `stop`; each pair sends a QoS 1 message every 10 ms and records
/// the time from sending to delivery.
async fn pairs(
    addr: std::net::SocketAddr,
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<Duration>>>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    for i in 0..PAIRS {
        let topic = format!("pair/{i}");
        let mut sub = Raw::connect(addr, ProtocolVersion::V5, &format!("sub{i}")).await;
        sub.subscribe(&topic, QoS::AtLeastOnce).await;
        let mut publ = Raw::connect(addr, ProtocolVersion::V3_1_1, &format!("pub{i}")).await;
        let (stop, samples) = (stop.clone(), samples.clone());
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let payload = n.to_string();
                let t = Instant::now();
                publ.publish(&topic, &payload, QoS::AtLeastOnce, false).await;
                let p = match sub.next_within(PATIENCE).await {
                    Ok(Some(Packet::Publish(p))) => p,
                    other => panic!("pair {i}: message {n} acknowledged but not delivered: {other:?}"),
                };
                samples.lock().unwrap().push(t.elapsed());
                assert_eq!(
                    &p.payload[..],
                    payload.as_bytes(),
                    "pair {i}: lost or out of order"
                );
                sub.ack(&p).await;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }));
    }
    tasks
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_flood_does_not_starve_connected_clients() {
    let mut file = PasswordFile::default();
    file.add("alice", b"right", MIN_ITERATIONS).unwrap();
    let path = std::env::temp_dir().join(format!("tern-auth-flood-{}", std::process::id()));
    std::fs::write(&path, file.to_text()).unwrap();
    let b: BrokerHandle = BrokerBuilder::new()
        .listen("127.0.0.1:0".parse().unwrap())
        .configure(|c| {
            c.password_file = Some(path.clone());
            c.connect_timeout_secs = 60;
        })
        .bind()
        .await
        .expect("bind")
        .spawn();
    let addr = b.addr();
    let stop = Arc::new(AtomicBool::new(false));
    let samples = Arc::new(Mutex::new(Vec::new()));
    let tasks = pairs(addr, stop.clone(), samples.clone()).await;

    // Quiet: one second of round trips.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut quiet = std::mem::take(&mut *samples.lock().unwrap());
    quiet.sort();

    // The flood.
    let started = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let refused = Arc::new(AtomicUsize::new(0));
    let attackers: Vec<_> = (0..AT_ONCE)
        .map(|_| {
            let (next, refused) = (next.clone(), refused.clone());
            tokio::spawn(async move {
                while next.fetch_add(1, Ordering::Relaxed) < ATTACKS {
                    let mut c = Connect::new(ProtocolVersion::V5, "attacker");
                    c.username = Some("alice".into());
                    c.password = Some("wrong".into());
                    let (mut raw, ack) = Raw::connect_with(addr, c).await;
                    assert_eq!(ack.reason_code, ReasonCode::BadUserNameOrPassword);
                    refused.fetch_add(1, Ordering::Relaxed);
                    drop(raw.next_within(Duration::from_millis(1)).await);
                }
            })
        })
        .collect();
    for a in attackers {
        a.await.unwrap();
    }
    let flood_time = started.elapsed();
    let mut during = std::mem::take(&mut *samples.lock().unwrap());
    // Quiet again: the machine's own noise, before and after, is the baseline.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut after = std::mem::take(&mut *samples.lock().unwrap());
    after.sort();
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    during.sort();
    let _ = std::fs::remove_file(&path);

    assert_eq!(refused.load(Ordering::Relaxed), ATTACKS);
    assert_eq!(b.security().auth_failures(), ATTACKS as u64);
    let (q50, q99) = (percentile(&quiet, 0.5), percentile(&quiet, 0.99));
    let a99 = percentile(&after, 0.99);
    let (d50, d99, dmax) = (
        percentile(&during, 0.5),
        percentile(&during, 0.99),
        during.last().copied().unwrap_or_default(),
    );
    eprintln!(
        "auth flood: {ATTACKS} wrong passwords in {flood_time:?} ({:.0}/s); {PAIRS} pairs' QoS 1 round trips: \
         quiet p50 {q50:?} p99 {q99:?} ({} samples); during the flood p50 {d50:?} p99 {d99:?} max {dmax:?} ({} samples); \
         quiet after p99 {a99:?}",
        ATTACKS as f64 / flood_time.as_secs_f64(),
        quiet.len(),
        during.len()
    );
    assert!(!during.is_empty(), "no round trip completed during the flood");
    // 10 ms, unless the machine is busy with something else (its quiet p99 before or after the
    // flood is high): then 8 times that. With 16 hashes at once the p99 was 17 times the quiet one.
    let bound = STALL.max(q99.max(a99) * 8);
    assert!(
        d99 < bound,
        "p99 round trip of {d99:?} during the flood (bound {bound:?})"
    );
}
