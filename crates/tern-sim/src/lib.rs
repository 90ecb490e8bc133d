//! Deterministic simulation of the Tern broker.
//!
//! One run is one seed: the broker (its real connection code, router and sessions) runs on a
//! current-thread tokio runtime with a paused clock, so time moves only when every task waits and
//! the order of events depends on nothing but the seed. Its storage is
//! [`InMemory`], which the simulation holds back, releases
//! and crashes at seeded moments (a power loss between any two changes). Clients reach the broker
//! through in-memory byte pipes ([`BrokerHandle::serve_stream`]); the simulation resets their
//! connections, reconnects them (sometimes leaving the old connection open, so that the new one
//! takes the session over), publishes QoS 1/2 messages and retained messages in a seeded order
//! between clients, and lets virtual time pass.
//!
//! After every run it checks the invariants (see [`Failure::invariant`]):
//! - **acknowledged-not-lost**: every message acknowledged to its publisher (PUBACK, PUBREC)
//!   reaches every persistent session subscribed to it, across resets and crashes;
//! - **qos2-exactly-once**: a QoS 2 delivery reaches the receiving application once;
//! - **publisher-order**: the messages of one publisher on one topic arrive in the order sent
//!   (first deliveries; QoS 1 may repeat a message) [MQTT-4.6.0-6];
//! - **retained-model**: the retained message of each topic is the last acknowledged one or one
//!   sent after it, never an older one;
//! - **single-owner**: once a new connection of a client has its CONNACK, the connection it took
//!   the session from receives no more messages; and a persistent session is never lost.
//!
//! A failing seed is replayed with `TERN_SIM_SEED=N cargo test -p tern-sim --test seeds`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tern_broker::durability::InMemory;
use tern_broker::{BrokerBuilder, BrokerHandle, ManualClock};
use tern_proto::{
    Ack, Connect, Decoded, Decoder, Packet, PacketId, ProtocolVersion, Publish, QoS, Subscribe,
    SubscriptionOptions,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

/// A small, fast, seeded generator (SplitMix64): the only source of choices in a run.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// The generator of `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number below `n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// True with `percent` per cent probability.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// The shape of a run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Clients that publish (QoS 1 and 2, some retained).
    pub publishers: usize,
    /// Persistent sessions subscribed to every publisher's topics.
    pub subscribers: usize,
    /// Seeded actions before the final drain.
    pub steps: usize,
    /// Whether storage may crash (and the broker restart from what was durable).
    pub crashes: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            publishers: 2,
            subscribers: 2,
            steps: 80,
            crashes: true,
        }
    }
}

/// A broken invariant, with the seed that reproduces it.
#[derive(Debug, Clone)]
pub struct Failure {
    /// The seed of the run.
    pub seed: u64,
    /// Which invariant (see the crate documentation).
    pub invariant: &'static str,
    /// What was seen.
    pub detail: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "seed {}: {} broken: {}\n  replay: TERN_SIM_SEED={} cargo test -p tern-sim --test seeds",
            self.seed, self.invariant, self.detail, self.seed
        )
    }
}

/// What a run did (to check that runs exercise what they should).
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// Messages sent by publishers (first attempts).
    pub published: usize,
    /// Messages acknowledged to their publishers.
    pub acknowledged: usize,
    /// Messages delivered to subscribers (first deliveries).
    pub delivered: usize,
    /// Connections reset by the simulated network.
    pub resets: usize,
    /// Session takeovers with the old connection left open.
    pub takeovers: usize,
    /// Storage crashes (and broker restarts).
    pub crashes: usize,
    /// A digest of every packet the clients received, in order: equal digests for one seed
    /// show that the run replays exactly.
    pub digest: u64,
}

/// Run one seed.
pub fn run(seed: u64, options: &Options) -> Result<Summary, Failure> {
    if let Ok(filter) = std::env::var("TERN_SIM_TRACE") {
        if filter.contains("debug") || filter.contains("trace") {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new(format!(
                    "tern_broker={filter}"
                )))
                .without_time()
                .with_writer(std::io::stderr)
                .try_init();
        }
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .map_err(|e| Failure {
            seed,
            invariant: "setup",
            detail: format!("cannot build the runtime: {e}"),
        })?;
    rt.block_on(Sim::new(seed, options.clone()).run())
}

const PIPE: usize = 1 << 20;
/// The packet id of the simulation's SUBSCRIBE packets.
fn sub_id() -> PacketId {
    PacketId::new(1).unwrap_or_else(|| unreachable!("1 is a packet id"))
}
const MAX_PACKET: u32 = 1 << 20;

/// One simulated connection: the client's end of a byte pipe to the broker.
struct Link {
    io: DuplexStream,
    buf: BytesMut,
    decoder: Decoder,
    version: ProtocolVersion,
    /// The client has a newer connection with its CONNACK: nothing may arrive here any more.
    superseded: bool,
    open: bool,
    /// Print what is sent (`TERN_SIM_TRACE`).
    trace: bool,
}

impl Link {
    async fn send(&mut self, p: Packet) {
        if self.trace {
            eprintln!("           -> {p:?}");
        }
        let mut b = BytesMut::new();
        if p.encode(self.version, &mut b).is_err() || self.io.write_all(&b).await.is_err() {
            self.open = false;
        }
    }

    /// The packets that have arrived (without waiting for more).
    async fn receive(&mut self) -> Vec<Packet> {
        let mut out = Vec::new();
        while self.open {
            match tokio::time::timeout(Duration::ZERO, self.io.read_buf(&mut self.buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => self.open = false,
                Ok(Ok(_)) => {}
                Err(_) => break,
            }
        }
        loop {
            match self.decoder.decode(&mut self.buf) {
                Ok(Decoded::Packet(p)) => out.push(p),
                Ok(Decoded::NeedMore(_)) => break,
                Err(_) => {
                    self.open = false;
                    break;
                }
            }
        }
        out
    }
}

/// A message a publisher sent and has not finished.
#[derive(Debug, Clone)]
struct Pending {
    n: u64,
    topic: String,
    qos: QoS,
    retain: bool,
    /// PUBREC came (QoS 2): PUBREL is what is resent.
    released: bool,
}

struct Client {
    id: String,
    version: ProtocolVersion,
    publisher: bool,
    link: Option<Link>,
    stale: Vec<Link>,
    connected: bool,
    next_n: u64,
    next_pid: u16,
    inflight: BTreeMap<u16, Pending>,
    awaiting_rel: HashSet<u16>,
    sub_qos: QoS,
    /// A CONNACK came once: from then on the broker holds a session for it.
    had_session: bool,
}

/// A message's identity: publisher index and its number.
type MsgId = (usize, u64);

struct Sim {
    seed: u64,
    options: Options,
    rng: Rng,
    mem: Arc<InMemory>,
    clock: ManualClock,
    broker: Option<BrokerHandle>,
    clients: Vec<Client>,
    summary: Summary,
    failures: Vec<Failure>,
    /// Acknowledged messages: topic and QoS.
    acked: BTreeMap<MsgId, (String, QoS)>,
    /// Retained messages sent, per topic in order: number and whether acknowledged.
    retained_sent: BTreeMap<String, Vec<(u64, bool)>>,
    /// Application deliveries per subscriber index and message.
    delivered: HashMap<(usize, MsgId), u32>,
    /// The highest first-delivered number per subscriber, publisher and topic.
    last_first: HashMap<(usize, usize, String), u64>,
    next_peer: u16,
    tracing: bool,
    started: std::time::Instant,
}

impl Sim {
    fn new(seed: u64, options: Options) -> Sim {
        let mut rng = Rng::new(seed);
        let mut clients = Vec::new();
        for i in 0..options.publishers + options.subscribers {
            let publisher = i < options.publishers;
            let version = if rng.chance(50) {
                ProtocolVersion::V5
            } else {
                ProtocolVersion::V3_1_1
            };
            let sub_qos = if rng.chance(50) {
                QoS::ExactlyOnce
            } else {
                QoS::AtLeastOnce
            };
            clients.push(Client {
                id: if publisher {
                    format!("pub{i}")
                } else {
                    format!("sub{i}")
                },
                version,
                publisher,
                link: None,
                stale: Vec::new(),
                connected: false,
                next_n: 1,
                next_pid: 1,
                inflight: BTreeMap::new(),
                awaiting_rel: HashSet::new(),
                sub_qos,
                had_session: false,
            });
        }
        let clock = ManualClock::new();
        Sim {
            started: tern_broker::Clock::from(clock.clone()).now(),
            seed,
            options,
            rng,
            mem: InMemory::new(),
            clock,
            broker: None,
            clients,
            summary: Summary::default(),
            failures: Vec::new(),
            acked: BTreeMap::new(),
            retained_sent: BTreeMap::new(),
            delivered: HashMap::new(),
            last_first: HashMap::new(),
            next_peer: 1,
            tracing: std::env::var_os("TERN_SIM_TRACE").is_some(),
        }
    }

    /// With `TERN_SIM_TRACE` set, what happens is printed (to read a failing seed).
    fn trace(&self, what: impl FnOnce() -> String) {
        if self.tracing {
            let now = tern_broker::Clock::from(self.clock.clone()).now();
            eprintln!("[{:>8?}] {}", now.saturating_duration_since(self.started), what());
        }
    }

    fn fail(&mut self, invariant: &'static str, detail: String) {
        self.failures.push(Failure {
            seed: self.seed,
            invariant,
            detail,
        });
    }

    async fn start_broker(&mut self) -> Result<(), Failure> {
        let stored = self.mem.restart();
        let broker = BrokerBuilder::new()
            .listen(SocketAddr::from(([127, 0, 0, 1], 0)))
            .configure(|c| {
                c.sys_interval_secs = 0;
                c.max_queued_messages = 100_000;
                c.max_queued_bytes = 1 << 30;
            })
            .clock(self.clock.clone())
            .durability(self.mem.clone(), stored)
            .bind()
            .await
            .map_err(|e| Failure {
                seed: self.seed,
                invariant: "setup",
                detail: format!("broker: {e}"),
            })?;
        self.broker = Some(broker.spawn());
        Ok(())
    }

    /// Let the broker's tasks run until they wait, a few times, and handle what arrived.
    async fn settle(&mut self) {
        for _ in 0..4 {
            for _ in 0..16 {
                tokio::task::yield_now().await;
            }
            self.drain().await;
        }
    }

    /// Let `d` of virtual time pass (the broker's clock with it).
    async fn pass(&mut self, d: Duration) {
        self.clock.advance(d);
        tokio::time::sleep(d).await;
        self.settle().await;
    }

    async fn connect(&mut self, c: usize, keep_old: bool) {
        let Some(broker) = &self.broker else { return };
        let (mine, theirs) = tokio::io::duplex(PIPE);
        self.next_peer = self.next_peer.wrapping_add(1);
        broker.serve_stream(theirs, SocketAddr::from(([10, 0, 0, 1], self.next_peer)));
        let client = &mut self.clients[c];
        let mut link = Link {
            io: mine,
            buf: BytesMut::new(),
            decoder: Decoder::new(client.version, MAX_PACKET),
            version: client.version,
            superseded: false,
            open: true,
            trace: self.tracing,
        };
        let mut connect = Connect::new(client.version, client.id.clone());
        connect.clean_start = false;
        connect.keep_alive = 0;
        if client.version.is_v5() {
            connect.properties.session_expiry_interval = Some(u32::MAX);
        }
        link.send(Packet::Connect(Box::new(connect))).await;
        if let Some(old) = client.link.replace(link) {
            if keep_old && old.open {
                client.stale.push(old);
                self.summary.takeovers += 1;
            }
        }
        client.connected = false;
    }

    /// Handle everything that arrived on every connection.
    async fn drain(&mut self) {
        for c in 0..self.clients.len() {
            // Old connections first: what they hold was sent before the newer one's CONNACK
            // was read below.
            let mut stale = std::mem::take(&mut self.clients[c].stale);
            for link in &mut stale {
                let packets = link.receive().await;
                for p in packets {
                    if link.superseded && matches!(p, Packet::Publish(_)) {
                        let id = self.clients[c].id.clone();
                        self.fail(
                            "single-owner",
                            format!("{id}: a message reached the connection it took the session over from"),
                        );
                    }
                    self.handle(c, link, false, p).await;
                }
            }
            stale.retain(|l| l.open);
            self.clients[c].stale = stale;
            let Some(mut link) = self.clients[c].link.take() else {
                continue;
            };
            let packets = link.receive().await;
            for p in packets {
                self.handle(c, &mut link, true, p).await;
            }
            if !link.open {
                self.clients[c].connected = false;
            } else {
                self.clients[c].link = Some(link);
            }
        }
    }

    async fn handle(&mut self, c: usize, link: &mut Link, current: bool, p: Packet) {
        self.trace(|| format!("{} <- {p:?} (current link: {current})", self.clients[c].id));
        // FNV-1a over what arrived where.
        for b in format!("{c}{current}{p:?}").bytes() {
            self.summary.digest = (self.summary.digest ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
        }
        match p {
            Packet::ConnAck(ack) => {
                if ack.reason_code.is_error() {
                    link.open = false;
                    return;
                }
                if !current {
                    // The CONNACK of a connection already replaced by a newer one.
                    return;
                }
                let client = &mut self.clients[c];
                client.connected = true;
                for old in &mut client.stale {
                    old.superseded = true;
                }
                let lost = !ack.session_present && client.had_session;
                client.had_session = true;
                if lost {
                    let id = client.id.clone();
                    self.fail("single-owner", format!("{id}: its persistent session was lost"));
                }
                let client = &mut self.clients[c];
                // Resend what is not finished, in order [MQTT-4.4.0-1].
                let resend: Vec<(u16, Pending)> =
                    client.inflight.iter().map(|(k, v)| (*k, v.clone())).collect();
                for (pid, m) in resend {
                    let Some(id) = PacketId::new(pid) else { continue };
                    if m.released {
                        link.send(Packet::PubRel(Ack::new(id))).await;
                    } else {
                        let mut p = Publish::new(m.topic.clone(), format!("{c}:{}", m.n));
                        p.qos = m.qos;
                        p.retain = m.retain;
                        p.packet_id = Some(id);
                        p.dup = true;
                        link.send(Packet::Publish(p)).await;
                    }
                }
            }
            Packet::PubAck(a) => {
                if let Some(m) = self.clients[c].inflight.remove(&a.packet_id.get()) {
                    self.acknowledged(c, &m);
                }
            }
            Packet::PubRec(a) => {
                let pid = a.packet_id.get();
                let first = match self.clients[c].inflight.get_mut(&pid) {
                    Some(m) if !m.released => {
                        m.released = true;
                        Some(m.clone())
                    }
                    _ => None,
                };
                if let Some(m) = first {
                    self.acknowledged(c, &m);
                }
                link.send(Packet::PubRel(Ack::new(a.packet_id))).await;
            }
            Packet::PubComp(a) => {
                self.clients[c].inflight.remove(&a.packet_id.get());
            }
            Packet::Publish(p) => {
                let first = match (p.qos, p.packet_id) {
                    (QoS::ExactlyOnce, Some(id)) => self.clients[c].awaiting_rel.insert(id.get()),
                    _ => true,
                };
                if first {
                    self.deliver(c, &p);
                }
                match (p.qos, p.packet_id) {
                    (QoS::AtLeastOnce, Some(id)) => link.send(Packet::PubAck(Ack::new(id))).await,
                    (QoS::ExactlyOnce, Some(id)) => link.send(Packet::PubRec(Ack::new(id))).await,
                    _ => {}
                }
            }
            Packet::PubRel(a) => {
                self.clients[c].awaiting_rel.remove(&a.packet_id.get());
                link.send(Packet::PubComp(Ack::new(a.packet_id))).await;
            }
            Packet::Disconnect(_) => link.open = false,
            _ => {}
        }
    }

    fn acknowledged(&mut self, c: usize, m: &Pending) {
        self.summary.acknowledged += 1;
        if m.retain {
            if let Some(v) = self.retained_sent.get_mut(&m.topic) {
                if let Some(e) = v.iter_mut().find(|e| e.0 == m.n) {
                    e.1 = true;
                }
            }
        } else {
            self.acked.insert((c, m.n), (m.topic.clone(), m.qos));
        }
    }

    /// A message reached subscriber `c`'s application.
    fn deliver(&mut self, c: usize, p: &Publish) {
        let text = String::from_utf8_lossy(&p.payload).into_owned();
        let Some((publisher, n)) = text
            .split_once(':')
            .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)))
        else {
            return;
        };
        let count = {
            let e = self.delivered.entry((c, (publisher, n))).or_insert(0);
            *e += 1;
            *e
        };
        if count == 1 {
            self.summary.delivered += 1;
            let key = (c, publisher, p.topic.to_string());
            let last = *self.last_first.entry(key).or_insert(0);
            if n < last {
                let (id, topic) = (self.clients[c].id.clone(), p.topic.to_string());
                self.fail(
                    "publisher-order",
                    format!("{id} got message {n} of pub{publisher} on {topic} after message {last}"),
                );
            } else {
                self.last_first.insert((c, publisher, p.topic.to_string()), n);
            }
        } else if p.qos == QoS::ExactlyOnce {
            let id = self.clients[c].id.clone();
            self.fail(
                "qos2-exactly-once",
                format!("{id} got message {n} of pub{publisher} {count} times"),
            );
        }
    }

    async fn publish(&mut self, c: usize, retain: bool) {
        let client = &mut self.clients[c];
        if !client.connected || client.inflight.len() >= 8 {
            return;
        }
        let qos = if self.rng.chance(50) {
            QoS::ExactlyOnce
        } else {
            QoS::AtLeastOnce
        };
        let topic = if retain {
            format!("r/{c}/{}", self.rng.below(3))
        } else {
            format!("t/{c}/{}", qos.as_u8())
        };
        let client = &mut self.clients[c];
        let n = client.next_n;
        client.next_n += 1;
        let mut pid = client.next_pid;
        while client.inflight.contains_key(&pid) || pid == 0 {
            pid = pid.wrapping_add(1);
        }
        client.next_pid = pid.wrapping_add(1).max(1);
        client.inflight.insert(
            pid,
            Pending {
                n,
                topic: topic.clone(),
                qos,
                retain,
                released: false,
            },
        );
        if retain {
            self.retained_sent
                .entry(topic.clone())
                .or_default()
                .push((n, false));
        }
        self.summary.published += 1;
        let mut p = Publish::new(topic, format!("{c}:{n}"));
        p.qos = qos;
        p.retain = retain;
        p.packet_id = PacketId::new(pid);
        if let Some(link) = self.clients[c].link.as_mut() {
            link.send(Packet::Publish(p)).await;
        }
    }

    async fn crash(&mut self) {
        self.trace(|| "storage crash, broker restart".into());
        self.summary.crashes += 1;
        self.mem.crash();
        for c in &mut self.clients {
            c.link = None;
            c.stale.clear();
            c.connected = false;
        }
        if let Some(b) = self.broker.take() {
            b.shutdown().await;
        }
        // The old broker's connections see their pipes close and end; what they still
        // submit is lost with the crashed storage.
        tokio::time::sleep(Duration::from_secs(5)).await;
    }

    async fn setup(&mut self) -> Result<(), Failure> {
        self.start_broker().await?;
        for c in 0..self.clients.len() {
            self.connect(c, false).await;
        }
        self.settle().await;
        for c in 0..self.clients.len() {
            if self.clients[c].publisher {
                continue;
            }
            let qos = self.clients[c].sub_qos;
            let sub = Subscribe {
                packet_id: sub_id(),
                properties: Default::default(),
                filters: vec![("t/#".into(), SubscriptionOptions::qos(qos))],
            };
            if let Some(link) = self.clients[c].link.as_mut() {
                link.send(Packet::Subscribe(sub)).await;
            }
        }
        self.settle().await;
        Ok(())
    }

    async fn step(&mut self) -> Result<(), Failure> {
        let n = self.clients.len() as u64;
        let c = self.rng.below(n) as usize;
        match self.rng.below(100) {
            0..=39 => {
                let p = self.rng.below(self.options.publishers as u64) as usize;
                self.publish(p, false).await;
            }
            40..=47 => {
                let p = self.rng.below(self.options.publishers as u64) as usize;
                self.publish(p, true).await;
            }
            48..=55 => {
                // The network resets a connection: whatever was in flight on it is lost.
                if self.clients[c].link.take().is_some() {
                    self.trace(|| format!("network reset of {}", self.clients[c].id));
                    self.clients[c].connected = false;
                    self.summary.resets += 1;
                }
            }
            56..=65 => {
                if !self.clients[c].connected || self.rng.chance(30) {
                    let keep_old = self.rng.chance(50);
                    self.trace(|| {
                        format!(
                            "{} connects (old connection kept: {keep_old})",
                            self.clients[c].id
                        )
                    });
                    self.connect(c, keep_old).await;
                }
            }
            66..=73 => {
                let hold = self.rng.chance(60);
                self.trace(|| format!("storage hold: {hold}"));
                self.mem.hold(hold);
            }
            74..=79 => {
                self.trace(|| "storage release".into());
                self.mem.release();
            }
            80..=81 if self.options.crashes => {
                self.crash().await;
                self.start_broker().await?;
                for c in 0..self.clients.len() {
                    self.connect(c, false).await;
                }
            }
            _ => {
                let ms = self.rng.below(40) + 1;
                self.pass(Duration::from_millis(ms)).await;
                return Ok(());
            }
        }
        self.settle().await;
        Ok(())
    }

    /// Everyone back, storage released, until every publisher is done.
    async fn finish(&mut self) {
        self.mem.hold(false);
        for _ in 0..50 {
            for c in 0..self.clients.len() {
                if !self.clients[c].connected {
                    self.connect(c, false).await;
                }
            }
            self.pass(Duration::from_millis(20)).await;
            let done = self.clients.iter().all(|c| c.connected && c.inflight.is_empty());
            if done {
                break;
            }
        }
        for _ in 0..5 {
            self.pass(Duration::from_millis(20)).await;
        }
    }

    async fn check(&mut self) {
        if let Some(c) = self
            .clients
            .iter()
            .find(|c| !c.inflight.is_empty() || !c.connected)
        {
            let detail = format!(
                "{} did not finish: connected {}, {} messages in flight",
                c.id,
                c.connected,
                c.inflight.len()
            );
            self.fail("acknowledged-not-lost", detail);
        }
        let subscribers: Vec<usize> = (0..self.clients.len())
            .filter(|&c| !self.clients[c].publisher)
            .collect();
        let acked: Vec<(MsgId, (String, QoS))> = self.acked.iter().map(|(k, v)| (*k, v.clone())).collect();
        for s in subscribers {
            for ((p, n), (topic, _)) in &acked {
                if !self.delivered.contains_key(&(s, (*p, *n))) {
                    let id = self.clients[s].id.clone();
                    self.fail(
                        "acknowledged-not-lost",
                        format!("{id} never got message {n} of pub{p} on {topic}, acknowledged to pub{p}"),
                    );
                }
            }
        }
        self.check_retained().await;
    }

    async fn check_retained(&mut self) {
        let Some(broker) = &self.broker else { return };
        let (mine, theirs) = tokio::io::duplex(PIPE);
        broker.serve_stream(theirs, SocketAddr::from(([10, 0, 0, 2], 1)));
        let mut link = Link {
            io: mine,
            buf: BytesMut::new(),
            decoder: Decoder::new(ProtocolVersion::V5, MAX_PACKET),
            version: ProtocolVersion::V5,
            superseded: false,
            open: true,
            trace: self.tracing,
        };
        link.send(Packet::Connect(Box::new(Connect::new(
            ProtocolVersion::V5,
            "checker",
        ))))
        .await;
        link.send(Packet::Subscribe(Subscribe {
            packet_id: sub_id(),
            properties: Default::default(),
            filters: vec![("r/#".into(), SubscriptionOptions::qos(QoS::AtMostOnce))],
        }))
        .await;
        let mut seen: BTreeMap<String, u64> = BTreeMap::new();
        for _ in 0..10 {
            for _ in 0..16 {
                tokio::task::yield_now().await;
            }
            for p in link.receive().await {
                if let Packet::Publish(p) = p {
                    let text = String::from_utf8_lossy(&p.payload).into_owned();
                    if let Some(n) = text.split_once(':').and_then(|(_, n)| n.parse().ok()) {
                        seen.insert(p.topic.to_string(), n);
                    }
                }
            }
        }
        let sent = self.retained_sent.clone();
        for (topic, sends) in sent {
            let last_acked = sends.iter().rposition(|e| e.1);
            match (seen.get(&topic), last_acked) {
                (None, Some(i)) => self.fail(
                    "retained-model",
                    format!(
                        "{topic}: no retained message, but message {} was acknowledged",
                        sends[i].0
                    ),
                ),
                (Some(&n), _) => {
                    let at = sends.iter().position(|e| e.0 == n);
                    match (at, last_acked) {
                        (None, _) => self.fail(
                            "retained-model",
                            format!("{topic}: message {n} was never sent there"),
                        ),
                        (Some(at), Some(i)) if at < i => self.fail(
                            "retained-model",
                            format!(
                                "{topic}: holds message {n}, older than acknowledged message {}",
                                sends[i].0
                            ),
                        ),
                        _ => {}
                    }
                }
                (None, None) => {}
            }
        }
    }

    async fn run(mut self) -> Result<Summary, Failure> {
        self.setup().await?;
        // The subscriptions are durable before anything is published.
        self.mem.release();
        self.settle().await;
        for _ in 0..self.options.steps {
            self.step().await?;
            if !self.failures.is_empty() {
                break;
            }
        }
        if self.failures.is_empty() {
            self.finish().await;
            self.check().await;
        }
        if let Some(b) = self.broker.take() {
            b.shutdown().await;
        }
        match self.failures.first() {
            Some(f) => Err(f.clone()),
            None => Ok(self.summary),
        }
    }
}
