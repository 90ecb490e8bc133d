//! What every attack needs: a broker on port 0 with small limits and a manual clock, a canary
//! that keeps doing QoS 1 round trips and must lose nothing, a sampler of the broker's own
//! accounting, and waits that are bounded but never asserted on.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tern_broker::{
    BrokerBuilder, BrokerHandle, BrokerStats, Config, ListenerConfig, ListenerKind, ManualClock,
};
use tern_proto::{Packet, QoS};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

pub use tern_testkit::raw::{encode, pid, Raw, V3, V5};

/// The longest any wait for the broker lasts before the test fails (a liveness bound, not a
/// measurement: nothing asserts how long anything took).
pub const PATIENCE: Duration = Duration::from_secs(20);

/// A broker on 127.0.0.1:0 whose protocol time (packet stall and keep-alive deadlines, the
/// stalled-subscriber clock, session expiry) moves only when the test advances it.
pub struct Broker {
    pub handle: Arc<BrokerHandle>,
    pub clock: ManualClock,
}

impl Broker {
    /// Start with the defaults changed by `f`.
    pub async fn start(f: impl FnOnce(&mut Config)) -> Broker {
        Broker::start_with(f, None).await
    }

    /// Start with a WebSocket listener on 127.0.0.1:0 as well (path `/mqtt`).
    pub async fn start_ws(f: impl FnOnce(&mut Config)) -> Broker {
        let ws = ListenerConfig::new(ListenerKind::Ws, "127.0.0.1:0".parse().unwrap());
        Broker::start_with(f, Some(ws)).await
    }

    async fn start_with(f: impl FnOnce(&mut Config), extra: Option<ListenerConfig>) -> Broker {
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            .with_env_filter("tern_broker=error")
            .try_init();
        let clock = ManualClock::new();
        let mut b = BrokerBuilder::new()
            .listen("127.0.0.1:0".parse().unwrap())
            .configure(f)
            .clock(clock.clone());
        if let Some(l) = extra {
            b = b.listener(l);
        }
        let handle = b.bind().await.expect("bind").spawn();
        Broker {
            handle: Arc::new(handle),
            clock,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.handle.addr()
    }

    pub fn stats(&self) -> BrokerStats {
        self.handle.stats()
    }

    /// Let `d` of protocol time pass at once.
    pub async fn pass(&self, d: Duration) {
        self.clock.advance(d);
        for _ in 0..8 {
            tokio::task::yield_now().await;
        }
    }

    /// Wait until the broker's figures satisfy `ok`; fails after [`PATIENCE`] with `what`.
    pub async fn until(&self, what: &str, ok: impl Fn(&BrokerStats) -> bool) -> BrokerStats {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let s = self.stats();
            if ok(&s) {
                return s;
            }
            assert!(tokio::time::Instant::now() < deadline, "{what}: still {s:?}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Sample the broker's figures until [`Sampler::finish`], keeping the largest of each.
    pub fn sampler(&self) -> Sampler {
        let handle = self.handle.clone();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let mut peak = Peaks::default();
            loop {
                peak.add(&handle.stats());
                if flag.load(Ordering::Relaxed) {
                    return peak;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        });
        Sampler { stop, task }
    }
}

/// The largest figures seen while sampling.
#[derive(Debug, Default, Clone, Copy)]
pub struct Peaks {
    pub connections_open: usize,
    pub sessions: usize,
    pub subscriptions: usize,
    pub partial_bytes: usize,
    pub queued_messages: usize,
    pub queued_bytes: usize,
    pub largest_queue: usize,
    pub largest_queue_bytes: usize,
    pub samples: u64,
}

impl Peaks {
    fn add(&mut self, s: &BrokerStats) {
        self.connections_open = self.connections_open.max(s.connections_open);
        self.sessions = self.sessions.max(s.sessions);
        self.subscriptions = self.subscriptions.max(s.subscriptions);
        self.partial_bytes = self.partial_bytes.max(s.partial_bytes);
        self.queued_messages = self.queued_messages.max(s.queued_messages);
        self.queued_bytes = self.queued_bytes.max(s.queued_bytes);
        self.largest_queue = self.largest_queue.max(s.largest_queue);
        self.largest_queue_bytes = self.largest_queue_bytes.max(s.largest_queue_bytes);
        self.samples += 1;
    }
}

/// Samples the broker's figures in the background.
pub struct Sampler {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Peaks>,
}

impl Sampler {
    /// Stop sampling (after one last sample) and return the peaks.
    pub async fn finish(self) -> Peaks {
        self.stop.store(true, Ordering::Relaxed);
        let peaks = self.task.await.expect("sampler");
        assert!(peaks.samples >= 2, "the sampler did not run");
        peaks
    }
}

/// A subscriber (5.0) and a publisher (3.1.1) doing QoS 1 round trips one after the other on
/// their own topic for as long as the attack lasts: each message the broker acknowledged with
/// PUBACK must reach the subscriber, in order.
pub struct Canary {
    stop: Arc<AtomicBool>,
    round_trips: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<u64>,
}

/// The canary's two connections (also sessions) and one subscription.
pub const CANARY_CONNECTIONS: usize = 2;

impl Canary {
    /// Connect and start the round trips.
    pub async fn start(addr: SocketAddr) -> Canary {
        let topic = "canary/round-trip";
        let mut sub = Raw::connect(addr, V5, "canary-sub").await;
        sub.subscribe(topic, QoS::AtLeastOnce).await;
        let mut publ = Raw::connect(addr, V3, "canary-pub").await;
        let stop = Arc::new(AtomicBool::new(false));
        let round_trips = Arc::new(AtomicU64::new(0));
        let (flag, count) = (stop.clone(), round_trips.clone());
        let task = tokio::spawn(async move {
            let mut n = 0u64;
            while !flag.load(Ordering::Relaxed) {
                n += 1;
                let payload = n.to_string();
                // Returns once the broker has acknowledged the message (PUBACK).
                publ.publish(topic, &payload, QoS::AtLeastOnce, false).await;
                let p = match sub.next_within(PATIENCE).await {
                    Ok(Some(Packet::Publish(p))) => p,
                    other => panic!("canary: message {n} was acknowledged but not delivered: {other:?}"),
                };
                assert_eq!(&p.payload[..], payload.as_bytes(), "canary: lost or out of order");
                sub.ack(&p).await;
                count.store(n, Ordering::Relaxed);
            }
            n
        });
        let c = Canary {
            stop,
            round_trips,
            task,
        };
        c.progress().await;
        c
    }

    /// Wait for two more complete round trips (the attack is under way meanwhile).
    pub async fn progress(&self) {
        let want = self.round_trips.load(Ordering::Relaxed) + 2;
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while self.round_trips.load(Ordering::Relaxed) < want {
            if self.task.is_finished() {
                break; // finish() reports its panic.
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "canary: no round trip completes"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Stop; fails if any acknowledged message was lost. Returns the round trips made.
    pub async fn finish(self) -> u64 {
        self.progress().await;
        self.stop.store(true, Ordering::Relaxed);
        match self.task.await {
            Ok(n) => n,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }
}

/// Open `n` TCP connections (no MQTT yet).
pub async fn sockets(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(TcpStream::connect(addr).await.expect("connect"));
    }
    out
}

/// Read and discard until the peer closes; what it sent before closing. Fails after
/// [`PATIENCE`].
pub async fn closed(s: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => panic!("an attacker's connection was not closed"),
            Ok(Ok(0)) | Ok(Err(_)) => return got,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// A 3.1.1 (level 4) or 5.0 (level 5) CONNECT announcing `body_len` bytes, of which only the
/// fixed header, the protocol name and level, flags and keep-alive (0) are returned.
pub fn connect_head(level: u8, body_len: usize) -> Vec<u8> {
    let mut out = vec![0x10];
    out.extend(varint(body_len));
    out.extend_from_slice(&[0x00, 0x04, b'M', b'Q', b'T', b'T', level, 0x02, 0x00, 0x00]);
    out
}

/// A PUBLISH (QoS 0, topic `t`) announcing `body_len` bytes: the fixed header and topic only.
pub fn publish_head(body_len: usize) -> Vec<u8> {
    let mut out = vec![0x30];
    out.extend(varint(body_len));
    out.extend_from_slice(&[0x00, 0x01, b't']);
    out
}

/// The Variable Byte Integer encoding of `x`.
pub fn varint(mut x: usize) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let b = (x % 128) as u8;
        x /= 128;
        out.push(if x > 0 { b | 0x80 } else { b });
        if x == 0 {
            return out;
        }
    }
}

/// The protocol version of attacker `i`: even ones speak 5.0, odd ones 3.1.1.
pub fn version(i: usize) -> tern_proto::ProtocolVersion {
    if i.is_multiple_of(2) {
        V5
    } else {
        V3
    }
}
