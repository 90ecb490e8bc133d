//! Crash tests: the real `tern broker` binary is killed with SIGKILL at random
//! points while a publisher sends numbered QoS 1 and QoS 2 messages to an
//! offline persistent session (most of its queue on disk only, beyond a memory window
//! of 100); after the last restart the subscriber must
//! receive every message the publisher saw acknowledged, QoS 2 exactly once
//! (RELIABILITY.md section 4, v5 [MQTT-4.3.3-10], v5 [MQTT-4.4.0-1]).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod bridge;

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tern_proto::codec::{Decoded, Decoder};
use tern_proto::{
    Ack, Connect, Packet, PacketId, ProtocolVersion, Publish, QoS, Subscribe, SubscriptionOptions,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const V5: ProtocolVersion = ProtocolVersion::V5;

struct Broker {
    child: Child,
    addr: SocketAddr,
}

impl Broker {
    fn start(dir: &Path, sync: &str) -> Broker {
        let config = dir.with_extension("toml");
        // A small memory queue: most of what waits for the offline subscriber is kept on
        // disk only (max_offline_messages) and read back after each restart.
        std::fs::write(
            &config,
            format!("sync = \"{sync}\"\nsys_interval_secs = 0\nmax_queued_messages = 100\n"),
        )
        .unwrap();
        Broker::start_with_config(dir, &config)
    }

    /// `tern broker` with the configuration file `config` and the data directory `dir`.
    fn start_with_config(dir: &Path, config: &Path) -> Broker {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tern"))
            .args(["broker", "--listen", "127.0.0.1:0", "--log", "warn", "--config"])
            .arg(config)
            .arg("--data-dir")
            .arg(dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start tern broker");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .trim()
            .rsplit(' ')
            .next()
            .unwrap()
            .parse()
            .expect("broker prints its address");
        Broker { child, addr }
    }

    fn kill9(mut self) {
        // SIGKILL: no shutdown code runs.
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Peer {
    stream: TcpStream,
    buf: BytesMut,
    decoder: Decoder,
}

impl Peer {
    async fn connect(addr: SocketAddr, id: &str) -> Option<(Peer, bool)> {
        let stream = TcpStream::connect(addr).await.ok()?;
        let mut p = Peer {
            stream,
            buf: BytesMut::new(),
            decoder: Decoder::new(V5, 1 << 24),
        };
        let mut c = Connect::new(V5, id);
        c.clean_start = false;
        c.keep_alive = 0;
        c.properties.session_expiry_interval = Some(3600);
        p.send(&Packet::Connect(Box::new(c))).await.ok()?;
        match p.recv(Duration::from_secs(5)).await? {
            Packet::ConnAck(a) if !a.reason_code.is_error() => Some((p, a.session_present)),
            _ => None,
        }
    }

    async fn send(&mut self, p: &Packet) -> std::io::Result<()> {
        let mut out = BytesMut::new();
        p.encode(V5, &mut out).unwrap();
        self.stream.write_all(&out).await
    }

    async fn recv(&mut self, wait: Duration) -> Option<Packet> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Decoded::Packet(p) = self.decoder.decode(&mut self.buf).ok()? {
                return Some(p);
            }
            match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf)).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => return None,
            }
        }
    }
}

/// One numbered message as the publisher sees it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum State {
    Unacked,
    /// QoS 2: PUBREC seen, PUBCOMP not yet.
    Received,
    Done,
}

struct Publisher {
    msgs: BTreeMap<u16, (QoS, State)>,
}

impl Publisher {
    fn publish_packet(id: u16, qos: QoS, dup: bool) -> Packet {
        let mut p = Publish::new(format!("crash/{id}"), format!("{id}"));
        p.qos = qos;
        p.packet_id = PacketId::new(id);
        p.dup = dup;
        Packet::Publish(p)
    }

    /// Connect, resend what is unfinished, then publish `new` more; stops when the broker dies.
    async fn round(&mut self, addr: SocketAddr, new: u16) {
        let Some((mut peer, _)) = Peer::connect(addr, "crash-publisher").await else {
            return;
        };
        // Resume: PUBLISH again with DUP for unacknowledged, PUBREL for received (v5 [MQTT-4.4.0-1]).
        for (&id, &(qos, state)) in &self.msgs {
            let p = match state {
                State::Unacked => Self::publish_packet(id, qos, true),
                State::Received => Packet::PubRel(Ack::new(PacketId::new(id).unwrap())),
                State::Done => continue,
            };
            if peer.send(&p).await.is_err() {
                return;
            }
        }
        let first = self.msgs.keys().next_back().map_or(1, |k| k + 1);
        for id in first..first.saturating_add(new) {
            let qos = if id % 2 == 0 {
                QoS::AtLeastOnce
            } else {
                QoS::ExactlyOnce
            };
            self.msgs.insert(id, (qos, State::Unacked));
            if peer.send(&Self::publish_packet(id, qos, false)).await.is_err() {
                return;
            }
            // Keep a window of acknowledgements flowing.
            while let Some(p) = peer
                .recv(Duration::from_millis(if id % 16 == 0 { 5 } else { 0 }))
                .await
            {
                self.on_ack(&mut peer, p).await;
            }
        }
        while let Some(p) = peer.recv(Duration::from_millis(500)).await {
            self.on_ack(&mut peer, p).await;
        }
    }

    async fn on_ack(&mut self, peer: &mut Peer, p: Packet) {
        match p {
            Packet::PubAck(a) => {
                self.msgs.get_mut(&a.packet_id.get()).unwrap().1 = State::Done;
            }
            Packet::PubRec(a) => {
                self.msgs.get_mut(&a.packet_id.get()).unwrap().1 = State::Received;
                let _ = peer.send(&Packet::PubRel(Ack::new(a.packet_id))).await;
            }
            Packet::PubComp(a) => {
                self.msgs.get_mut(&a.packet_id.get()).unwrap().1 = State::Done;
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    fn acknowledged(&self) -> Vec<u16> {
        self.msgs
            .iter()
            .filter(|(_, (_, s))| *s != State::Unacked)
            .map(|(k, _)| *k)
            .collect()
    }
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
        let _ = std::fs::remove_file(self.0.with_extension("toml"));
    }
}

/// Receive and acknowledge everything the broker sends; count deliveries per number.
async fn drain(sub: &mut Peer) -> HashMap<u16, (QoS, usize)> {
    let mut seen: HashMap<u16, (QoS, usize)> = HashMap::new();
    let started = Instant::now();
    while let Some(p) = sub.recv(Duration::from_secs(2)).await {
        match p {
            Packet::Publish(p) => {
                let n: u16 = std::str::from_utf8(&p.payload).unwrap().parse().unwrap();
                seen.entry(n).or_insert((p.qos, 0)).1 += 1;
                let id = p.packet_id.unwrap();
                match p.qos {
                    QoS::AtLeastOnce => sub.send(&Packet::PubAck(Ack::new(id))).await.unwrap(),
                    QoS::ExactlyOnce => sub.send(&Packet::PubRec(Ack::new(id))).await.unwrap(),
                    QoS::AtMostOnce => panic!("QoS 0 delivery"),
                }
            }
            Packet::PubRel(a) => sub.send(&Packet::PubComp(Ack::new(a.packet_id))).await.unwrap(),
            other => panic!("unexpected {other:?}"),
        }
        assert!(started.elapsed() < Duration::from_secs(60));
    }
    seen
}

/// A xorshift generator started from [`seed`], after printing the seed for `what` (set
/// `TERN_CRASH_SEED` to repeat a run).
fn random(what: &str) -> impl FnMut() -> u64 {
    let mut rng = seed();
    eprintln!("{what} seed {rng} (set TERN_CRASH_SEED to repeat)");
    move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    }
}

fn seed() -> u64 {
    std::env::var("TERN_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        })
}

async fn crash_test(sync: &str) {
    let dir = TempDir(std::env::temp_dir().join(format!("tern-crash-{}-{sync}", std::process::id())));
    let _ = std::fs::remove_dir_all(&dir.0);
    let mut next = random("crash test");

    // The subscriber makes its persistent session and goes away.
    let broker = Broker::start(&dir.0, sync);
    let (mut sub, _) = Peer::connect(broker.addr, "crash-subscriber").await.unwrap();
    sub.send(&Packet::Subscribe(Subscribe {
        packet_id: PacketId::new(1).unwrap(),
        properties: Default::default(),
        filters: vec![("crash/#".into(), SubscriptionOptions::qos(QoS::ExactlyOnce))],
    }))
    .await
    .unwrap();
    assert!(matches!(
        sub.recv(Duration::from_secs(5)).await,
        Some(Packet::SubAck(_))
    ));
    drop(sub);
    broker.kill9();

    let mut publisher = Publisher {
        msgs: BTreeMap::new(),
    };
    for round in 0..5 {
        let broker = Broker::start(&dir.0, sync);
        let addr = broker.addr;
        let kill_after = Duration::from_millis(30 + next() % 250);
        let killer = tokio::spawn(async move {
            tokio::time::sleep(kill_after).await;
            broker.kill9();
        });
        publisher.round(addr, 1500).await;
        killer.await.unwrap();
        eprintln!(
            "round {round}: killed after {kill_after:?}, {} acknowledged so far",
            publisher.acknowledged().len()
        );
    }
    // A last round without a crash finishes everything.
    let broker = Broker::start(&dir.0, sync);
    publisher.round(broker.addr, 0).await;
    let acknowledged = publisher.acknowledged();
    assert!(
        publisher.msgs.values().all(|(_, s)| *s == State::Done),
        "publisher could not finish"
    );

    let (mut sub, present) = Peer::connect(broker.addr, "crash-subscriber").await.unwrap();
    assert!(present, "the subscriber's session survived every crash");
    let seen = drain(&mut sub).await;
    let missing: Vec<u16> = acknowledged
        .iter()
        .copied()
        .filter(|n| !seen.contains_key(n))
        .collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged messages lost, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    for (n, (qos, count)) in &seen {
        if *qos == QoS::ExactlyOnce {
            assert_eq!(*count, 1, "QoS 2 message {n} delivered {count} times");
        }
    }
    eprintln!(
        "{} messages acknowledged, all delivered; QoS 2 exactly once",
        acknowledged.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_acknowledged_message_is_lost_across_kill_9_with_sync_always() {
    crash_test("always").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_interval_makes_changes_durable_within_the_interval() {
    // With `sync = "interval"` a crash may lose what was acknowledged within the last
    // interval (100 ms here); what is older than that must survive `kill -9`.
    let dir = TempDir(std::env::temp_dir().join(format!("tern-crash-{}-interval", std::process::id())));
    let _ = std::fs::remove_dir_all(&dir.0);
    let broker = Broker::start(&dir.0, "interval");
    let (mut sub, _) = Peer::connect(broker.addr, "interval-subscriber").await.unwrap();
    sub.send(&Packet::Subscribe(Subscribe {
        packet_id: PacketId::new(1).unwrap(),
        properties: Default::default(),
        filters: vec![("crash/#".into(), SubscriptionOptions::qos(QoS::ExactlyOnce))],
    }))
    .await
    .unwrap();
    assert!(matches!(
        sub.recv(Duration::from_secs(5)).await,
        Some(Packet::SubAck(_))
    ));
    drop(sub);
    let mut publisher = Publisher {
        msgs: BTreeMap::new(),
    };
    publisher.round(broker.addr, 20).await;
    assert!(publisher.msgs.values().all(|(_, s)| *s != State::Unacked));
    tokio::time::sleep(Duration::from_millis(400)).await;
    broker.kill9();
    let broker = Broker::start(&dir.0, "interval");
    let (mut sub, present) = Peer::connect(broker.addr, "interval-subscriber").await.unwrap();
    assert!(present);
    let seen = drain(&mut sub).await;
    assert_eq!(
        seen.len(),
        20,
        "messages acknowledged 400 ms before the crash were lost"
    );
}

/// Publish `msgs` (topic, payload) as retained QoS 1 messages with packet ids from 1 (at most
/// 65,535 at once); returns the indexes whose PUBACK came (none once the broker dies).
async fn publish_retained(peer: &mut Peer, msgs: &[(String, String)]) -> Vec<usize> {
    let mut acked = Vec::new();
    for (i, (topic, payload)) in msgs.iter().enumerate() {
        let mut p = Publish::new(topic.as_str(), payload.clone());
        p.qos = QoS::AtLeastOnce;
        p.retain = true;
        p.packet_id = PacketId::new(i as u16 + 1);
        if peer.send(&Packet::Publish(p)).await.is_err() {
            return acked;
        }
    }
    while acked.len() < msgs.len() {
        match peer.recv(Duration::from_secs(5)).await {
            Some(Packet::PubAck(a)) => acked.push(usize::from(a.packet_id.get()) - 1),
            Some(other) => panic!("unexpected {other:?}"),
            None => break,
        }
    }
    acked
}

/// v3.1.1 [MQTT-3.3.1-5] / v5 [MQTT-3.3.1-5]: a retained message whose PUBACK came stays
/// retained across `kill -9`, also when the broker dies while a subscriber to `#` streams a
/// retained set far larger than the retained cache (most of it read from the store) and
/// retained topics are being replaced. After the last restart a new subscriber gets every
/// topic, each with its last acknowledged value or a later one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_messages_survive_kill_9_while_a_subscriber_reads_them_from_disk() {
    const TOPICS: usize = 3000;
    let dir = TempDir(std::env::temp_dir().join(format!("tern-crash-retained-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(&dir.0);
    let config = dir.0.with_extension("toml");
    std::fs::write(
        &config,
        "sync = \"always\"\nsys_interval_secs = 0\nretained_cache_bytes = 65536\nmax_queued_messages = 100\n",
    )
    .unwrap();
    let mut next = random("retained crash test");
    // The last acknowledged version of each topic.
    let mut acked = vec![0u64; TOPICS];
    let mut version = 0u64;
    let broker = Broker::start_with_config(&dir.0, &config);
    let (mut p, _) = Peer::connect(broker.addr, "retainer").await.unwrap();
    for chunk in (0..TOPICS).collect::<Vec<_>>().chunks(1000) {
        version += 1;
        let msgs: Vec<_> = chunk
            .iter()
            .map(|k| (format!("state/{k}"), format!("{k}:{version}")))
            .collect();
        assert_eq!(publish_retained(&mut p, &msgs).await.len(), msgs.len());
        for k in chunk {
            acked[*k] = version;
        }
    }
    drop(p);
    broker.kill9();

    let rounds = std::env::var("TERN_CRASH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    for round in 0..rounds {
        let broker = Broker::start_with_config(&dir.0, &config);
        let addr = broker.addr;
        // A reader of everything, acknowledging as it goes.
        let (mut reader, _) = Peer::connect(addr, &format!("reader{round}")).await.unwrap();
        reader
            .send(&Packet::Subscribe(Subscribe {
                packet_id: PacketId::new(1).unwrap(),
                properties: Default::default(),
                filters: vec![("#".into(), SubscriptionOptions::qos(QoS::AtLeastOnce))],
            }))
            .await
            .unwrap();
        let reading = tokio::spawn(async move {
            let mut n = 0usize;
            while let Some(p) = reader.recv(Duration::from_secs(5)).await {
                if let Packet::Publish(p) = p {
                    n += 1;
                    if reader
                        .send(&Packet::PubAck(Ack::new(p.packet_id.unwrap())))
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
            }
            n
        });
        // Replace some topics while it reads; the broker dies meanwhile.
        let kill_after = Duration::from_millis(50 + next() % 300);
        let killer = tokio::spawn(async move {
            tokio::time::sleep(kill_after).await;
            broker.kill9();
        });
        version += 1;
        let keys: Vec<usize> = (0..500).map(|_| next() as usize % TOPICS).collect();
        let msgs: Vec<_> = keys
            .iter()
            .map(|k| (format!("state/{k}"), format!("{k}:{version}")))
            .collect();
        if let Some((mut p, _)) = Peer::connect(addr, "retainer").await {
            for i in publish_retained(&mut p, &msgs).await {
                acked[keys[i]] = version;
            }
        }
        killer.await.unwrap();
        let read = reading.await.unwrap();
        eprintln!("round {round}: killed after {kill_after:?}; the reader had {read} retained messages");
    }

    let broker = Broker::start_with_config(&dir.0, &config);
    let (mut sub, _) = Peer::connect(broker.addr, "final-reader").await.unwrap();
    sub.send(&Packet::Subscribe(Subscribe {
        packet_id: PacketId::new(1).unwrap(),
        properties: Default::default(),
        filters: vec![("state/#".into(), SubscriptionOptions::qos(QoS::AtLeastOnce))],
    }))
    .await
    .unwrap();
    let mut got: HashMap<usize, u64> = HashMap::new();
    while got.len() < TOPICS {
        match sub.recv(Duration::from_secs(10)).await {
            Some(Packet::Publish(p)) => {
                assert!(
                    p.retain,
                    "v3.1.1 [MQTT-3.3.1-8]: sent because of a new subscription: RETAIN 1"
                );
                let text = std::str::from_utf8(&p.payload).unwrap();
                let (k, v) = text.split_once(':').unwrap();
                got.insert(k.parse().unwrap(), v.parse().unwrap());
                sub.send(&Packet::PubAck(Ack::new(p.packet_id.unwrap())))
                    .await
                    .unwrap();
            }
            Some(Packet::SubAck(_)) => {}
            Some(other) => panic!("unexpected {other:?}"),
            None => break,
        }
    }
    let lost: Vec<usize> = (0..TOPICS)
        .filter(|k| got.get(k).is_none_or(|v| *v < acked[*k]))
        .collect();
    assert!(
        lost.is_empty(),
        "{} topics lost their acknowledged retained value, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(10)]
    );
}
