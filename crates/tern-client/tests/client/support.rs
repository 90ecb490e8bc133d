//! Test helpers: an in-process broker, a scripted fake server, a TCP proxy
//! that can cut connections, and Mosquitto. Every wait is bounded.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::BytesMut;
use tern_broker::{BrokerBuilder, BrokerHandle, Config};
use tern_client::{Client, Event, Events, Message, Options, ProtocolVersion, Reconnect};
use tern_proto::codec::{Decoded, Decoder};
use tern_proto::{ConnAck, Connect, Packet, ReasonCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

pub const V3: ProtocolVersion = ProtocolVersion::V3_1_1;
pub const V5: ProtocolVersion = ProtocolVersion::V5;
pub const WAIT: Duration = Duration::from_secs(5);

/// Start our broker on 127.0.0.1:0.
pub async fn broker() -> BrokerHandle {
    broker_with(|_| {}).await
}

/// Start our broker on 127.0.0.1:0 with changed settings.
pub async fn broker_with(f: impl FnOnce(&mut Config)) -> BrokerHandle {
    BrokerBuilder::new()
        .listen("127.0.0.1:0".parse().unwrap())
        .configure(f)
        .bind()
        .await
        .expect("bind broker")
        .spawn()
}

pub fn url(addr: SocketAddr) -> String {
    format!("mqtt://{addr}")
}

/// Options for a test client: short timeouts, fast reconnection.
pub fn options(addr: SocketAddr, version: ProtocolVersion, client_id: &str) -> Options {
    Options::new(url(addr))
        .version(version)
        .client_id(client_id)
        .connect_timeout(Duration::from_secs(3))
        .reconnect(Reconnect::with_delays(
            Duration::from_millis(50),
            Duration::from_millis(200),
        ))
}

pub async fn connect(addr: SocketAddr, version: ProtocolVersion, client_id: &str) -> (Client, Events) {
    tokio::time::timeout(WAIT, Client::connect(options(addr, version, client_id)))
        .await
        .expect("connect in time")
        .expect("connect")
}

/// The next event matching `pred`, skipping others.
pub async fn wait_for(events: &mut Events, mut pred: impl FnMut(&Event) -> bool) -> Event {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Err(_) => panic!("no matching event within {WAIT:?}"),
            Ok(None) => panic!("event stream ended"),
            Ok(Some(e)) if pred(&e) => return e,
            Ok(Some(_)) => {}
        }
    }
}

/// The next message.
pub async fn message(events: &mut Events) -> Message {
    match wait_for(events, |e| matches!(e, Event::Message(_))).await {
        Event::Message(m) => m,
        _ => unreachable!(),
    }
}

/// No message arrives within `d`.
pub async fn no_message(events: &mut Events, d: Duration) {
    let deadline = tokio::time::Instant::now() + d;
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Err(_) | Ok(None) => return,
            Ok(Some(Event::Message(m))) => panic!("unexpected message {m:?}"),
            Ok(Some(_)) => {}
        }
    }
}

// ----- scripted fake server -----

/// A listener on 127.0.0.1:0 that plays the server by hand.
pub struct FakeServer {
    listener: TcpListener,
}

impl FakeServer {
    pub async fn start() -> FakeServer {
        FakeServer {
            listener: TcpListener::bind("127.0.0.1:0").await.unwrap(),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap()
    }

    pub async fn accept(&self) -> Peer {
        let (stream, _) = tokio::time::timeout(WAIT, self.listener.accept())
            .await
            .expect("client connects in time")
            .unwrap();
        Peer {
            stream,
            buf: BytesMut::new(),
            decoder: Decoder::new(V3, 1 << 20),
        }
    }

    /// Accept, read CONNECT and answer with `ack`.
    pub async fn accept_with(&self, ack: ConnAck) -> (Peer, Connect) {
        let mut peer = self.accept().await;
        let connect = peer.recv_connect().await;
        peer.send(Packet::ConnAck(ack)).await;
        (peer, connect)
    }
}

/// One accepted connection.
pub struct Peer {
    stream: TcpStream,
    buf: BytesMut,
    decoder: Decoder,
}

impl Peer {
    fn version(&self) -> ProtocolVersion {
        self.decoder.version()
    }

    /// The next packet, or `None` when the client closed the connection.
    pub async fn try_recv(&mut self) -> Option<Packet> {
        loop {
            match self
                .decoder
                .decode(&mut self.buf)
                .expect("client sent a valid packet")
            {
                Decoded::Packet(p) => return Some(p),
                Decoded::NeedMore(_) => {}
            }
            let n = tokio::time::timeout(WAIT, self.stream.read_buf(&mut self.buf))
                .await
                .expect("client sends in time")
                .unwrap_or(0);
            if n == 0 {
                return None;
            }
        }
    }

    pub async fn recv(&mut self) -> Packet {
        self.try_recv().await.expect("a packet, not a close")
    }

    /// Nothing comes for `ms` milliseconds.
    pub async fn expect_silence(&mut self, ms: u64) {
        if let Ok(p) = tokio::time::timeout(Duration::from_millis(ms), self.try_recv()).await {
            panic!("expected nothing, got {p:?}");
        }
    }

    pub async fn recv_connect(&mut self) -> Connect {
        match self.recv().await {
            Packet::Connect(c) => {
                self.decoder.set_version(c.protocol_version);
                *c
            }
            p => panic!("expected CONNECT, got {p:?}"),
        }
    }

    pub async fn send(&mut self, p: Packet) {
        let mut out = BytesMut::new();
        p.encode(self.version(), &mut out).unwrap();
        self.send_bytes(&out).await;
    }

    pub async fn send_bytes(&mut self, b: &[u8]) {
        let _ = self.stream.write_all(b).await;
    }

    /// The client closes: 5.0 after DISCONNECT with a reason code (returned),
    /// 3.1.1 without sending anything. Other packets before it are skipped.
    pub async fn expect_close(&mut self) -> Option<ReasonCode> {
        let mut reason = None;
        while let Some(p) = self.try_recv().await {
            if let Packet::Disconnect(d) = p {
                reason = Some(d.reason());
            }
        }
        reason
    }
}

// ----- a proxy whose connections can be cut -----

/// Forwards 127.0.0.1:0 to `target`; [`Proxy::cut`] drops every current connection.
pub struct Proxy {
    addr: SocketAddr,
    accept: JoinHandle<()>,
    links: std::sync::Arc<std::sync::Mutex<Vec<JoinHandle<()>>>>,
}

impl Proxy {
    pub async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let links = std::sync::Arc::new(std::sync::Mutex::new(Vec::<JoinHandle<()>>::new()));
        let l2 = links.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let link = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                l2.lock().unwrap().push(link);
            }
        });
        Proxy { addr, accept, links }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Drop every open connection (both sides see the socket close).
    pub fn cut(&self) {
        for l in self.links.lock().unwrap().drain(..) {
            l.abort();
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

// ----- Mosquitto -----

/// A Mosquitto broker on an ephemeral port of 127.0.0.1, killed on drop.
pub struct Mosquitto {
    child: Child,
    pub addr: SocketAddr,
    _dir: TempDir,
}

pub struct TempDir(pub std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub const MOSQUITTO: &str = "/usr/sbin/mosquitto";

impl Mosquitto {
    /// Start Mosquitto, or `None` (with a note) when it is not installed.
    pub async fn start() -> Option<Mosquitto> {
        Mosquitto::start_with(|_, _| String::new()).await.map(|(m, _)| m)
    }

    /// Start Mosquitto with more configuration: `extra(dir, port)` gets the temporary
    /// directory and a free port for one more listener, and returns configuration
    /// lines. Returns the broker and that port.
    pub async fn start_with(extra: impl FnOnce(&std::path::Path, u16) -> String) -> Option<(Mosquitto, u16)> {
        if !std::path::Path::new(MOSQUITTO).exists() {
            eprintln!("note: {MOSQUITTO} not found; install the Debian package `mosquitto` to run this test");
            return None;
        }
        // Pick a free port by binding port 0, then hand it to Mosquitto.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = std::env::temp_dir().join(format!("tern-client-mosquitto-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let conf = dir.join("mosquitto.conf");
        let extra_port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let extra = extra(&dir, extra_port);
        std::fs::write(
            &conf,
            format!("per_listener_settings false\nallow_anonymous true\npersistence false\nlistener {port} 127.0.0.1\n{extra}"),
        )
        .unwrap();
        let child = Command::new(MOSQUITTO)
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start mosquitto");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let m = Mosquitto {
            child,
            addr,
            _dir: TempDir(dir),
        };
        let deadline = tokio::time::Instant::now() + WAIT;
        while TcpStream::connect(addr).await.is_err() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "mosquitto did not start listening on {addr}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if !extra.is_empty() {
            let extra_addr: SocketAddr = format!("127.0.0.1:{extra_port}").parse().unwrap();
            while TcpStream::connect(extra_addr).await.is_err() {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "mosquitto did not start listening on {extra_addr}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        Some((m, extra_port))
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
