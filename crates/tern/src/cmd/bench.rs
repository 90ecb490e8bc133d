//! `tern bench`: an MQTT load generator for any broker.
//!
//! Scenarios: fan-in (N publishers → 1 subscriber), fan-out (1 publisher → N
//! subscribers), pairs (N publisher/subscriber pairs), latency (one pair at a
//! fixed rate, percentiles from a send timestamp in the payload) and conn (a
//! connection storm: connects per second and, with `--broker-pid`, broker
//! memory per idle connection). Messages carry (publisher, sequence, time), so
//! lost and duplicated deliveries are counted. A progress line goes to stderr
//! every second; the result is one `key=value` line on stdout.
//!
//! The generator speaks the protocol with tern-proto directly (no client
//! library in between), so that its own cost stays small next to the broker's.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{BufMut, BytesMut};
use tern_proto::codec::{Decoded, Decoder};
use tern_proto::{Ack, Connect, Packet, PacketId, ProtocolVersion, QoS, Subscribe, SubscriptionOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Options of `tern bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Broker host.
    #[arg(long, short = 'H', default_value = "127.0.0.1")]
    host: String,
    /// Broker port.
    #[arg(long, short, default_value_t = 1883)]
    port: u16,
    /// Port the subscribers connect to (default: --port): with two nodes of a cluster,
    /// publishers on one and subscribers on the other measure cross-node delivery.
    #[arg(long = "sub-port", value_name = "PORT")]
    sub_port: Option<u16>,
    /// What to run.
    #[arg(long, short, value_enum, default_value = "fan-in")]
    scenario: Scenario,
    /// Publishers (fan-in).
    #[arg(long, default_value_t = 8)]
    publishers: usize,
    /// Subscribers (fan-out).
    #[arg(long, default_value_t = 32)]
    subscribers: usize,
    /// Publisher/subscriber pairs (pairs).
    #[arg(long, default_value_t = 16)]
    pairs: usize,
    /// QoS of publishes and subscriptions (0, 1 or 2).
    #[arg(long, short, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=2))]
    qos: u8,
    /// Payload size in bytes (at least 24: publisher, sequence and timestamp).
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Protocol version: 311 or 5.
    #[arg(long = "protocol", short = 'V', default_value = "311", value_parser = parse_version)]
    version: ProtocolVersion,
    /// Unacknowledged QoS 1/2 publishes per publisher.
    #[arg(long, default_value_t = 64)]
    inflight: u16,
    /// Seconds of publishing.
    #[arg(long, short, default_value_t = 10.0)]
    duration: f64,
    /// Messages per publisher (instead of --duration).
    #[arg(long, short)]
    count: Option<u64>,
    /// Messages per second (latency scenario).
    #[arg(long, default_value_t = 5000)]
    rate: u64,
    /// Connections to open (conn scenario).
    #[arg(long, default_value_t = 10_000)]
    connections: usize,
    /// PID of the broker, to report its memory per connection (conn scenario), or to kill
    /// (move scenario with --kill-before-move).
    #[arg(long)]
    broker_pid: Option<u32>,
    /// Move scenario: kill the broker of --port (--broker-pid) with SIGKILL once the sessions
    /// are made, so that the other node recovers them rather than taking them over.
    #[arg(long, requires = "broker_pid")]
    kill_before_move: bool,
    /// Subscribers keep persistent sessions (clean session 0 / session expiry 1 h), so a
    /// broker with persistence stores every QoS 1/2 message for them.
    #[arg(long)]
    persistent: bool,
    /// Publishers keep persistent sessions too (a cluster then keeps the incoming QoS 2
    /// packet ids of each in its session's entry).
    #[arg(long)]
    persistent_publishers: bool,
    /// No progress lines.
    #[arg(long)]
    quiet: bool,
}

/// Bench scenarios.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// N publishers, one subscriber, one topic.
    FanIn,
    /// One publisher, N subscribers.
    FanOut,
    /// N publisher → subscriber pairs on their own topics.
    Pairs,
    /// One pair at a fixed rate; latency percentiles.
    Latency,
    /// Many idle connections: connects per second and broker memory.
    Conn,
    /// Reconnect storm: --connections persistent sessions made on --port (one subscription
    /// each), then all reconnected to --sub-port (another node of a cluster): reconnects per
    /// second, and how many found their session.
    Move,
}

fn parse_version(s: &str) -> Result<ProtocolVersion, String> {
    match s {
        "311" | "3.1.1" | "mqttv311" => Ok(ProtocolVersion::V3_1_1),
        "5" | "5.0" | "mqttv5" => Ok(ProtocolVersion::V5),
        _ => Err("use 311 or 5".into()),
    }
}

/// Errors of a bench run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// A connection failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The broker answered in a way the bench cannot go on with.
    #[error("{0}")]
    Protocol(String),
}

const HEADER: usize = 24;

#[derive(Default)]
struct Stats {
    sent: AtomicU64,
    received: AtomicU64,
    duplicates: AtomicU64,
    out_of_order: AtomicU64,
    /// Nanoseconds since the epoch of the last delivery.
    last_rx_ns: AtomicU64,
    latencies_us: Mutex<Vec<u32>>,
}

struct Conn {
    stream: TcpStream,
    buf: BytesMut,
    out: BytesMut,
    decoder: Decoder,
    version: ProtocolVersion,
    /// When a packet was last sent (PINGREQ after half the keep-alive of silence).
    last_tx: Instant,
    /// Session Present of its CONNACK.
    present: bool,
}

/// Keep-alive of the bench's connections, in seconds (some brokers refuse 0).
const KEEP_ALIVE: u16 = 60;

/// Keep-alive of the connection storm's idle connections, which send nothing: long
/// enough that none is closed before the broker's memory is read.
const STORM_KEEP_ALIVE: u16 = 3600;

impl Conn {
    async fn open(
        addr: SocketAddr,
        version: ProtocolVersion,
        id: &str,
        keep_alive: u16,
        persistent: bool,
    ) -> Result<Conn, BenchError> {
        Conn::open_from(addr, None, version, id, keep_alive, persistent).await
    }

    /// [`Conn::open`] from a given local address (any port).
    async fn open_from(
        addr: SocketAddr,
        local: Option<std::net::IpAddr>,
        version: ProtocolVersion,
        id: &str,
        keep_alive: u16,
        persistent: bool,
    ) -> Result<Conn, BenchError> {
        let stream = match local {
            None => TcpStream::connect(addr).await?,
            Some(ip) => {
                let socket = if ip.is_ipv4() {
                    tokio::net::TcpSocket::new_v4()?
                } else {
                    tokio::net::TcpSocket::new_v6()?
                };
                match socket.bind(SocketAddr::new(ip, 0)) {
                    Ok(()) => socket.connect(addr).await?,
                    // Only 127.0.0.1 is configured on some systems (macOS, the BSDs).
                    Err(e) if e.kind() == std::io::ErrorKind::AddrNotAvailable => {
                        TcpStream::connect(addr).await?
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        };
        stream.set_nodelay(true)?;
        let mut c = Conn {
            stream,
            buf: BytesMut::with_capacity(64 * 1024),
            out: BytesMut::with_capacity(64 * 1024),
            decoder: Decoder::new(version, 1 << 24),
            version,
            last_tx: Instant::now(),
            present: false,
        };
        let mut connect = Connect::new(version, id);
        connect.keep_alive = keep_alive;
        if persistent {
            connect.clean_start = false;
            if version.is_v5() {
                connect.properties.session_expiry_interval = Some(3600);
            }
        }
        if version.is_v5() {
            connect.properties.receive_maximum = Some(u16::MAX);
        }
        c.push(&Packet::Connect(Box::new(connect)));
        c.flush().await?;
        match c.read_packet().await? {
            Packet::ConnAck(a) if !a.reason_code.is_error() => {
                c.present = a.session_present;
                Ok(c)
            }
            p => Err(BenchError::Protocol(format!("connect refused: {p:?}"))),
        }
    }

    fn push(&mut self, p: &Packet) {
        if let Err(e) = p.encode(self.version, &mut self.out) {
            tracing::warn!("cannot encode: {e}");
        }
    }

    async fn flush(&mut self) -> Result<(), BenchError> {
        if !self.out.is_empty() {
            self.stream.write_all(&self.out).await?;
            self.out.clear();
            self.last_tx = Instant::now();
        }
        Ok(())
    }

    fn try_packet(&mut self) -> Result<Option<Packet>, BenchError> {
        match self.decoder.decode(&mut self.buf) {
            Ok(Decoded::Packet(p)) => Ok(Some(p)),
            Ok(Decoded::NeedMore(_)) => Ok(None),
            Err(e) => Err(BenchError::Protocol(format!("broker sent a bad packet: {e}"))),
        }
    }

    async fn read_more(&mut self) -> Result<(), BenchError> {
        if self.stream.read_buf(&mut self.buf).await? == 0 {
            return Err(BenchError::Protocol("broker closed the connection".into()));
        }
        Ok(())
    }

    async fn read_packet(&mut self) -> Result<Packet, BenchError> {
        loop {
            if let Some(p) = self.try_packet()? {
                return Ok(p);
            }
            self.read_more().await?;
        }
    }

    async fn subscribe(&mut self, filter: &str, qos: QoS) -> Result<(), BenchError> {
        let s = Subscribe {
            packet_id: PacketId::new(1).ok_or_else(|| BenchError::Protocol("id".into()))?,
            properties: Default::default(),
            filters: vec![(filter.into(), SubscriptionOptions::qos(qos))],
        };
        self.push(&Packet::Subscribe(s));
        self.flush().await?;
        loop {
            match self.read_packet().await? {
                Packet::SubAck(a) if a.reason_codes.iter().all(|c| !c.is_error()) => return Ok(()),
                Packet::SubAck(a) => return Err(BenchError::Protocol(format!("subscribe refused: {a:?}"))),
                _ => {}
            }
        }
    }
}

/// Append a PUBLISH straight into `out` (no per-message allocation): the generator
/// must cost little next to the broker it measures.
#[allow(clippy::too_many_arguments, reason = "the fields of one PUBLISH")]
fn put_publish(
    out: &mut BytesMut,
    version: ProtocolVersion,
    topic: &str,
    qos: QoS,
    packet_id: Option<PacketId>,
    size: usize,
    publisher: u32,
    seq: u64,
    epoch: Instant,
) {
    let size = size.max(HEADER);
    let body = 2 + topic.len() + packet_id.map_or(0, |_| 2) + usize::from(version.is_v5()) + size;
    out.reserve(body + 5);
    out.put_u8(0x30 | (qos.as_u8() << 1));
    let mut n = body;
    loop {
        let mut byte = (n & 0x7F) as u8;
        n >>= 7;
        if n > 0 {
            byte |= 0x80;
        }
        out.put_u8(byte);
        if n == 0 {
            break;
        }
    }
    out.put_u16(topic.len() as u16);
    out.put_slice(topic.as_bytes());
    if let Some(id) = packet_id {
        out.put_u16(id.get());
    }
    if version.is_v5() {
        out.put_u8(0); // no properties
    }
    out.put_u32(publisher);
    out.put_u64(seq);
    out.put_u64(epoch.elapsed().as_nanos() as u64);
    out.put_u32(0);
    out.put_bytes(b'x', size - HEADER);
}

/// Publish until `stop` (or `count`), keeping `inflight` QoS 1/2 messages outstanding.
#[allow(
    clippy::too_many_arguments,
    reason = "one call site per scenario; a struct would only rename them"
)]
async fn publisher(
    mut c: Conn,
    id: u32,
    topic: String,
    qos: QoS,
    size: usize,
    inflight: u16,
    count: Option<u64>,
    rate: Option<u64>,
    stop: Arc<AtomicBool>,
    stats: Arc<Stats>,
    epoch: Instant,
) -> Result<(), BenchError> {
    let mut seq = 0u64;
    let mut free: Vec<u16> = (1..=inflight.max(1)).rev().collect();
    let mut outstanding = 0usize;
    let started = Instant::now();
    let done = |seq: u64| stop.load(Ordering::Relaxed) || count.is_some_and(|n| seq >= n);
    loop {
        // Send a batch.
        let mut batch = 0;
        while batch < 64 && !done(seq) {
            if let Some(r) = rate {
                let due = started + Duration::from_nanos(seq * 1_000_000_000 / r.max(1));
                if Instant::now() < due {
                    if batch == 0 {
                        tokio::time::sleep_until(due.into()).await;
                    }
                    break;
                }
            }
            let packet_id = if qos == QoS::AtMostOnce {
                None
            } else {
                match free.pop() {
                    Some(id) => PacketId::new(id),
                    None => break,
                }
            };
            put_publish(
                &mut c.out, c.version, &topic, qos, packet_id, size, id, seq, epoch,
            );
            seq += 1;
            batch += 1;
            if packet_id.is_some() {
                outstanding += 1;
            }
        }
        stats.sent.fetch_add(batch, Ordering::Relaxed);
        c.flush().await?;
        if done(seq) && outstanding == 0 {
            return Ok(());
        }
        // Collect acknowledgements (wait for them only when the window is full or at the end).
        let must_wait = qos != QoS::AtMostOnce && (free.is_empty() || done(seq));
        loop {
            while let Some(p) = c.try_packet()? {
                match p {
                    Packet::PubAck(a) | Packet::PubComp(a) => {
                        free.push(a.packet_id.get());
                        outstanding -= 1;
                    }
                    Packet::PubRec(a) => c.push(&Packet::PubRel(Ack::new(a.packet_id))),
                    _ => {}
                }
            }
            c.flush().await?;
            if !must_wait || !free.is_empty() && !done(seq) || outstanding == 0 {
                break;
            }
            c.read_more().await?;
        }
        if qos == QoS::AtMostOnce || !must_wait {
            // Take in whatever is readable without waiting, then let the other
            // tasks (the subscribers above all) run before the next batch.
            match c.stream.try_read_buf(&mut c.buf) {
                Ok(0) => return Err(BenchError::Protocol("broker closed the connection".into())),
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e.into()),
            }
            tokio::task::yield_now().await;
        }
    }
}

/// Receive until `stop` and nothing arrives for a while; acknowledge; count.
async fn subscriber(
    mut c: Conn,
    stop: Arc<AtomicBool>,
    stats: Arc<Stats>,
    epoch: Instant,
    latency: bool,
) -> Result<(), BenchError> {
    // Next expected sequence number per publisher (publishers are numbered from 0).
    let mut next: Vec<u64> = Vec::new();
    let mut lat = Vec::new();
    let mut quiet_since: Option<Instant> = None;
    loop {
        while let Some(p) = c.try_packet()? {
            match p {
                Packet::Publish(p) => {
                    if p.payload.len() >= HEADER {
                        let b = &p.payload;
                        let publisher = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
                        let seq = u64::from_be_bytes([b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11]]);
                        let ts = u64::from_be_bytes([b[12], b[13], b[14], b[15], b[16], b[17], b[18], b[19]]);
                        let p = publisher as usize;
                        if next.len() <= p {
                            next.resize(p + 1, 0);
                        }
                        let expected = &mut next[p];
                        if seq < *expected {
                            stats.duplicates.fetch_add(1, Ordering::Relaxed);
                        } else {
                            if seq > *expected {
                                stats.out_of_order.fetch_add(seq - *expected, Ordering::Relaxed);
                            }
                            *expected = seq + 1;
                            stats.received.fetch_add(1, Ordering::Relaxed);
                            stats
                                .last_rx_ns
                                .fetch_max(epoch.elapsed().as_nanos() as u64, Ordering::Relaxed);
                        }
                        if latency {
                            let now = epoch.elapsed().as_nanos() as u64;
                            lat.push((now.saturating_sub(ts) / 1000).min(u64::from(u32::MAX)) as u32);
                        }
                    }
                    match (p.qos, p.packet_id) {
                        (QoS::AtLeastOnce, Some(id)) => c.push(&Packet::PubAck(Ack::new(id))),
                        (QoS::ExactlyOnce, Some(id)) => c.push(&Packet::PubRec(Ack::new(id))),
                        _ => {}
                    }
                }
                Packet::PubRel(a) => c.push(&Packet::PubComp(Ack::new(a.packet_id))),
                _ => {}
            }
        }
        if c.last_tx.elapsed() >= Duration::from_secs(u64::from(KEEP_ALIVE / 2)) {
            c.push(&Packet::PingReq);
        }
        c.flush().await?;
        // After the publishers stop, one quiet second ends the subscriber.
        match tokio::time::timeout(Duration::from_millis(200), c.read_more()).await {
            Ok(r) => {
                r?;
                quiet_since = None;
            }
            Err(_) if stop.load(Ordering::Relaxed) => {
                let since = *quiet_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= Duration::from_secs(1) {
                    break;
                }
            }
            Err(_) => {}
        }
    }
    if latency {
        if let Ok(mut l) = stats.latencies_us.lock() {
            l.extend(lat);
        }
    }
    Ok(())
}

fn percentile(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Run the bench on a new runtime.
pub fn run(args: Args) -> Result<(), BenchError> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(run_async(args))
}

async fn run_async(args: Args) -> Result<(), BenchError> {
    let addr: SocketAddr = tokio::net::lookup_host((args.host.as_str(), args.port))
        .await?
        .next()
        .ok_or_else(|| BenchError::Protocol(format!("cannot resolve --host {}", args.host)))?;
    if args.scenario == Scenario::Conn {
        return connection_storm(addr, &args).await;
    }
    if args.scenario == Scenario::Move {
        return session_move(addr, &args).await;
    }
    let qos = QoS::from_bits(args.qos).unwrap_or(QoS::AtMostOnce);
    let run_id = std::process::id();
    let epoch = Instant::now();
    let stats = Arc::new(Stats::default());
    let stop = Arc::new(AtomicBool::new(false));
    let (npub, nsub, topics): (usize, usize, Vec<String>) = match args.scenario {
        Scenario::FanIn => (args.publishers, 1, vec![format!("bench/{run_id}/fan-in")]),
        Scenario::FanOut => (1, args.subscribers, vec![format!("bench/{run_id}/fan-out")]),
        Scenario::Pairs => (
            args.pairs,
            args.pairs,
            (0..args.pairs)
                .map(|i| format!("bench/{run_id}/pair/{i}"))
                .collect(),
        ),
        Scenario::Latency => (1, 1, vec![format!("bench/{run_id}/latency")]),
        Scenario::Conn | Scenario::Move => unreachable!("handled above"),
    };
    let sub_addr = SocketAddr::new(addr.ip(), args.sub_port.unwrap_or(addr.port()));
    // Subscribers first.
    let mut subs = Vec::new();
    for i in 0..nsub {
        let mut c = Conn::open(
            sub_addr,
            args.version,
            &format!("bench-{run_id}-sub-{i}"),
            KEEP_ALIVE,
            args.persistent,
        )
        .await?;
        c.subscribe(&topics[i % topics.len()], qos).await?;
        subs.push(tokio::spawn(subscriber(
            c,
            stop.clone(),
            stats.clone(),
            epoch,
            args.scenario == Scenario::Latency,
        )));
    }
    if sub_addr != addr {
        // Another node learns of the subscriptions asynchronously (cluster mode: its NATS
        // subscriptions follow the SUBACK).
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let rate = (args.scenario == Scenario::Latency).then_some(args.rate);
    let mut pubs = Vec::new();
    for i in 0..npub {
        let c = Conn::open(
            addr,
            args.version,
            &format!("bench-{run_id}-pub-{i}"),
            KEEP_ALIVE,
            args.persistent_publishers,
        )
        .await?;
        pubs.push(tokio::spawn(publisher(
            c,
            i as u32,
            topics[i % topics.len()].clone(),
            qos,
            args.size,
            args.inflight,
            args.count,
            rate,
            stop.clone(),
            stats.clone(),
            epoch,
        )));
    }
    let started = Instant::now();
    let mut last = (0u64, 0u64);
    let deadline = (args.count.is_none()).then(|| started + Duration::from_secs_f64(args.duration));
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let sent = stats.sent.load(Ordering::Relaxed);
        let received = stats.received.load(Ordering::Relaxed);
        if !args.quiet {
            eprintln!(
                "[{:5.1}s] sent {sent} ({}/s) received {received} ({}/s)",
                started.elapsed().as_secs_f64(),
                sent - last.0,
                received - last.1
            );
        }
        last = (sent, received);
        if deadline.is_some_and(|d| Instant::now() >= d) || pubs.iter().all(|p| p.is_finished()) {
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let publish_secs = started.elapsed().as_secs_f64();
    for p in pubs {
        p.await
            .map_err(|e| BenchError::Protocol(format!("publisher task failed: {e}")))??;
    }
    for s in subs {
        s.await
            .map_err(|e| BenchError::Protocol(format!("subscriber task failed: {e}")))??;
    }
    // Deliveries per second, from the start of publishing to the last delivery.
    let start_ns = started.duration_since(epoch).as_nanos() as u64;
    let active = (stats.last_rx_ns.load(Ordering::Relaxed).saturating_sub(start_ns)) as f64 / 1e9;
    let sent = stats.sent.load(Ordering::Relaxed);
    let received = stats.received.load(Ordering::Relaxed);
    let factor = match args.scenario {
        Scenario::FanOut => nsub as u64,
        _ => 1,
    };
    let expected = sent * factor;
    let lost = expected.saturating_sub(received);
    let mut lat = stats.latencies_us.lock().map(|l| l.clone()).unwrap_or_default();
    lat.sort_unstable();
    println!(
        "result scenario={:?} protocol={} qos={} size={} publishers={npub} subscribers={nsub} seconds={publish_secs:.2} \
         sent={sent} expected={expected} received={received} lost={lost} duplicates={} rate={:.0} p50_us={} p99_us={} p999_us={}",
        args.scenario,
        args.version,
        args.qos,
        args.size,
        stats.duplicates.load(Ordering::Relaxed),
        received as f64 / active.max(0.001),
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        percentile(&lat, 0.999),
    );
    Ok(())
}

/// Open `n` persistent connections to `addr`, 256 at a time, each running `then` on its
/// connection; the number of them whose CONNACK said Session Present, and the failures.
async fn persistent_wave<F, Fut>(addr: SocketAddr, args: &Args, then: F) -> Result<(usize, usize), BenchError>
where
    F: Fn(Conn, usize) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = Result<bool, BenchError>> + Send,
{
    let sem = Arc::new(tokio::sync::Semaphore::new(256));
    let mut tasks = Vec::with_capacity(args.connections);
    for i in 0..args.connections {
        let permit = sem
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| BenchError::Protocol(e.to_string()))?;
        let (v, then) = (args.version, then.clone());
        tasks.push(tokio::spawn(async move {
            let id = format!("bench-move-{}-{i}", std::process::id());
            let r = match Conn::open(addr, v, &id, STORM_KEEP_ALIVE, true).await {
                Ok(c) => then(c, i).await,
                Err(e) => Err(e),
            };
            drop(permit);
            r
        }));
    }
    let (mut present, mut failed) = (0, 0);
    for t in tasks {
        match t.await.map_err(|e| BenchError::Protocol(e.to_string()))? {
            Ok(p) => present += usize::from(p),
            Err(e) => {
                if failed == 0 {
                    eprintln!("connection failed: {e}");
                }
                failed += 1;
            }
        }
    }
    Ok((present, failed))
}

/// The reconnect storm of [`Scenario::Move`].
async fn session_move(addr: SocketAddr, args: &Args) -> Result<(), BenchError> {
    let to = SocketAddr::new(addr.ip(), args.sub_port.unwrap_or(args.port));
    let run = std::process::id();
    let made = Instant::now();
    let (_, failed) = persistent_wave(addr, args, move |mut c, i| async move {
        c.subscribe(&format!("bench/{run}/move/{i}"), QoS::AtLeastOnce)
            .await?;
        c.push(&Packet::Disconnect(tern_proto::Disconnect::default()));
        c.flush().await?;
        Ok(false)
    })
    .await?;
    let made = made.elapsed().as_secs_f64();
    if let (true, Some(pid)) = (args.kill_before_move, args.broker_pid) {
        let killed = std::process::Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status()
            .map_err(|e| BenchError::Protocol(format!("kill -9 {pid}: {e}")))?;
        if !killed.success() {
            return Err(BenchError::Protocol(format!("kill -9 {pid}: {killed}")));
        }
    }
    let started = Instant::now();
    let (present, failed_move) = persistent_wave(to, args, |mut c, _| async move {
        c.push(&Packet::Disconnect(tern_proto::Disconnect::default()));
        c.flush().await?;
        Ok(c.present)
    })
    .await?;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "result scenario=Move protocol={} sessions={} made_seconds={made:.2} made_failed={failed} moved_seconds={secs:.2} rate={:.0} killed={} present={present} failed={failed_move}",
        args.version,
        args.connections,
        args.connections as f64 / secs,
        args.kill_before_move,
    );
    Ok(())
}

async fn connection_storm(addr: SocketAddr, args: &Args) -> Result<(), BenchError> {
    let before = args.broker_pid.and_then(rss_kib);
    let started = Instant::now();
    let sem = Arc::new(tokio::sync::Semaphore::new(256));
    let mut tasks = Vec::with_capacity(args.connections);
    for i in 0..args.connections {
        let permit = sem
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| BenchError::Protocol(e.to_string()))?;
        let v = args.version;
        // Towards a loopback broker, spread the connections over 127.0.0.2-251: from one
        // source address, the kernel's search for a free ephemeral port costs the
        // generator more than the broker spends on the whole connection.
        let local = match addr.ip() {
            std::net::IpAddr::V4(ip) if ip.is_loopback() => Some(std::net::IpAddr::V4(
                std::net::Ipv4Addr::new(127, 0, 0, 2 + (i % 250) as u8),
            )),
            _ => None,
        };
        tasks.push(tokio::spawn(async move {
            let c = Conn::open_from(
                addr,
                local,
                v,
                &format!("bench-conn-{}-{i}", std::process::id()),
                STORM_KEEP_ALIVE,
                false,
            )
            .await;
            drop(permit);
            c
        }));
    }
    // A connection the broker refuses or resets is counted, not fatal: the storm
    // reports how many were held.
    let mut conns = Vec::with_capacity(args.connections);
    let mut failed = 0usize;
    for t in tasks {
        match t.await.map_err(|e| BenchError::Protocol(e.to_string()))? {
            Ok(c) => conns.push(c),
            Err(e) => {
                if failed == 0 {
                    eprintln!("connection failed: {e}");
                }
                failed += 1;
            }
        }
    }
    let secs = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = args.broker_pid.and_then(rss_kib);
    let per_conn = match (before, after) {
        (Some(b), Some(a)) => format!(
            "{:.0}",
            (a.saturating_sub(b) * 1024) as f64 / conns.len().max(1) as f64
        ),
        _ => "n/a".into(),
    };
    println!(
        "result scenario=Conn protocol={} connections={} failed={failed} seconds={secs:.2} rate={:.0} broker_bytes_per_connection={per_conn}",
        args.version,
        conns.len(),
        conns.len() as f64 / secs
    );
    Ok(())
}
