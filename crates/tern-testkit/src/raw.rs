//! A raw MQTT peer for tests: send exact packets or bytes, expect exact
//! packets, exact bytes or a close. It plays the client towards a broker
//! ([`Raw::open`], [`Raw::connect`]) or the server towards a client
//! ([`FakeServer::accept`]). Every wait is bounded; a failed expectation panics.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use tern_proto::codec::{Decoded, Decoder};
use tern_proto::{
    Ack, ConnAck, Connect, Packet, PacketId, ProtocolVersion, Publish, QoS, ReasonCode, SubAck, Subscribe,
    SubscriptionOptions,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// MQTT 3.1.1.
pub const V3: ProtocolVersion = ProtocolVersion::V3_1_1;
/// MQTT 5.0.
pub const V5: ProtocolVersion = ProtocolVersion::V5;
/// The longest any single wait lasts.
pub const WAIT: Duration = Duration::from_secs(5);

/// A packet identifier from a non-zero number.
pub fn pid(n: u16) -> PacketId {
    PacketId::new(n).expect("packet identifiers are non-zero")
}

/// Bytes from hex pairs separated by white space, e.g. `"30 03 00 01 61"`.
pub fn hex(text: &str) -> Vec<u8> {
    text.split_whitespace()
        .map(|b| u8::from_str_radix(b, 16).unwrap_or_else(|_| panic!("bad hex byte {b:?}")))
        .collect()
}

/// The bytes of `p` encoded for `version`.
pub fn encode(p: &Packet, version: ProtocolVersion) -> Vec<u8> {
    let mut out = BytesMut::new();
    p.encode(version, &mut out).expect("encode");
    out.to_vec()
}

/// One end of a TCP connection that speaks MQTT by hand.
pub struct Raw {
    stream: TcpStream,
    buf: BytesMut,
    decoder: Decoder,
    /// The version packets are encoded and decoded as.
    pub version: ProtocolVersion,
}

impl Raw {
    fn new(stream: TcpStream, version: ProtocolVersion) -> Raw {
        Raw {
            stream,
            buf: BytesMut::new(),
            decoder: Decoder::new(version, 300_000_000),
            version,
        }
    }

    /// Open a TCP connection without sending anything.
    pub async fn open(addr: SocketAddr, version: ProtocolVersion) -> Raw {
        let stream = tokio::time::timeout(WAIT, TcpStream::connect(addr))
            .await
            .expect("connect in time")
            .expect("connect");
        Raw::new(stream, version)
    }

    /// Connect with a clean session and no keep-alive; expect a successful CONNACK.
    pub async fn connect(addr: SocketAddr, version: ProtocolVersion, client_id: &str) -> Raw {
        let mut c = Connect::new(version, client_id);
        c.keep_alive = 0;
        let (raw, ack) = Raw::connect_with(addr, c).await;
        assert_eq!(ack.reason_code, ReasonCode::Success, "CONNACK for {client_id}");
        raw
    }

    /// Send a CONNECT and return the CONNACK.
    pub async fn connect_with(addr: SocketAddr, c: Connect) -> (Raw, ConnAck) {
        let mut raw = Raw::open(addr, c.protocol_version).await;
        raw.send(Packet::Connect(Box::new(c))).await;
        match raw.recv().await {
            Packet::ConnAck(a) => (raw, a),
            p => panic!("expected CONNACK, got {p:?}"),
        }
    }

    /// Change the version used to encode and decode (a fake server, after CONNECT).
    pub fn set_version(&mut self, version: ProtocolVersion) {
        self.version = version;
        self.decoder.set_version(version);
    }

    /// Send a packet encoded for this peer's version.
    pub async fn send(&mut self, p: Packet) {
        let bytes = encode(&p, self.version);
        self.send_bytes(&bytes).await;
    }

    /// Send exact bytes (a write error is ignored: the other side may have closed).
    pub async fn send_bytes(&mut self, b: &[u8]) {
        let _ = self.stream.write_all(b).await;
    }

    /// Send exact bytes written as hex pairs.
    pub async fn send_hex(&mut self, text: &str) {
        self.send_bytes(&hex(text)).await;
    }

    /// Read more bytes; `false` when the connection closed or `deadline` passed first.
    async fn fill(&mut self, deadline: tokio::time::Instant) -> Result<bool, ()> {
        match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf)).await {
            Err(_) => Err(()),
            Ok(Ok(0)) | Ok(Err(_)) => Ok(false),
            Ok(Ok(_)) => Ok(true),
        }
    }

    /// The next packet within `d`: `Ok(None)` when the connection closed, `Err(())` on timeout.
    pub async fn next_within(&mut self, d: Duration) -> Result<Option<Packet>, ()> {
        let deadline = tokio::time::Instant::now() + d;
        loop {
            match self.decoder.decode(&mut self.buf) {
                Ok(Decoded::Packet(p)) => {
                    if let Packet::Connect(c) = &p {
                        self.set_version(c.protocol_version);
                    }
                    return Ok(Some(p));
                }
                Ok(Decoded::NeedMore(_)) => {}
                Err(e) => panic!("the peer sent a malformed packet: {e} ({:02X?})", &self.buf[..]),
            }
            if !self.fill(deadline).await? {
                return Ok(None);
            }
        }
    }

    /// The next packet, or `None` when the connection is closed. Panics after [`WAIT`].
    pub async fn next(&mut self) -> Option<Packet> {
        self.next_within(WAIT)
            .await
            .expect("timed out waiting for a packet")
    }

    /// The next packet; panics on a close.
    pub async fn recv(&mut self) -> Packet {
        self.next()
            .await
            .expect("connection closed while waiting for a packet")
    }

    /// The next packet, which must be a PUBLISH.
    pub async fn recv_publish(&mut self) -> Publish {
        match self.recv().await {
            Packet::Publish(p) => p,
            p => panic!("expected PUBLISH, got {p:?}"),
        }
    }

    /// The exact bytes of the next packet, undecoded; `None` when the connection closed.
    pub async fn recv_frame(&mut self) -> Option<Vec<u8>> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(size) = frame_size(&self.buf) {
                if self.buf.len() >= size {
                    return Some(self.buf.split_to(size).to_vec());
                }
            }
            match self.fill(deadline).await {
                Err(()) => panic!("timed out waiting for a packet"),
                Ok(false) => {
                    assert!(
                        self.buf.is_empty(),
                        "closed inside a packet: {:02X?}",
                        &self.buf[..]
                    );
                    return None;
                }
                Ok(true) => {}
            }
        }
    }

    /// The next packet is exactly `expected` (hex pairs).
    pub async fn expect_hex(&mut self, expected: &str) {
        let got = self.recv_frame().await.expect("a packet, not a close");
        assert_eq!(got, hex(expected), "expected {expected}, got {got:02X?}");
    }

    /// Expect the connection to close; returns the DISCONNECT reason if one came first.
    pub async fn expect_closed(&mut self) -> Option<ReasonCode> {
        let mut reason = None;
        loop {
            match self.next().await {
                None => return reason,
                Some(Packet::Disconnect(d)) if reason.is_none() => reason = Some(d.reason()),
                Some(p) => panic!("expected a close, got {p:?}"),
            }
        }
    }

    /// Expect the connection to close with nothing sent at all.
    pub async fn expect_closed_silently(&mut self) {
        assert_eq!(
            self.recv_frame().await,
            None,
            "expected a close without any packet"
        );
    }

    /// Expect no packet (and no close) for `ms` milliseconds.
    pub async fn expect_silence(&mut self, ms: u64) {
        if let Ok(p) = self.next_within(Duration::from_millis(ms)).await {
            panic!("expected nothing, got {p:?}");
        }
    }

    /// Subscribe to one filter at `qos` (packet id 1000) and return the SUBACK.
    pub async fn subscribe(&mut self, filter: &str, qos: QoS) -> SubAck {
        self.subscribe_with(filter, SubscriptionOptions::qos(qos), None)
            .await
    }

    /// Subscribe with options and an optional subscription identifier.
    pub async fn subscribe_with(
        &mut self,
        filter: &str,
        options: SubscriptionOptions,
        id: Option<u32>,
    ) -> SubAck {
        let mut s = Subscribe {
            packet_id: pid(1000),
            properties: Default::default(),
            filters: vec![(filter.into(), options)],
        };
        s.properties.subscription_identifier = id;
        self.send(Packet::Subscribe(s)).await;
        match self.recv().await {
            Packet::SubAck(a) => {
                assert_eq!(a.packet_id, pid(1000));
                a
            }
            p => panic!("expected SUBACK, got {p:?}"),
        }
    }

    /// Publish (packet id 77 when QoS > 0) and complete the handshake the QoS asks for.
    pub async fn publish(&mut self, topic: &str, payload: &str, qos: QoS, retain: bool) {
        let mut p = Publish::new(topic, payload.to_string());
        p.qos = qos;
        p.retain = retain;
        p.packet_id = (qos != QoS::AtMostOnce).then(|| pid(77));
        self.send(Packet::Publish(p)).await;
        match qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => match self.recv().await {
                Packet::PubAck(a) if a.packet_id == pid(77) => {}
                p => panic!("expected PUBACK 77, got {p:?}"),
            },
            QoS::ExactlyOnce => {
                match self.recv().await {
                    Packet::PubRec(a) if a.packet_id == pid(77) => {}
                    p => panic!("expected PUBREC 77, got {p:?}"),
                }
                self.send(Packet::PubRel(Ack::new(pid(77)))).await;
                match self.recv().await {
                    Packet::PubComp(a) if a.packet_id == pid(77) => {}
                    p => panic!("expected PUBCOMP 77, got {p:?}"),
                }
            }
        }
    }

    /// Acknowledge a received PUBLISH as its QoS asks.
    pub async fn ack(&mut self, p: &Publish) {
        let Some(id) = p.packet_id else { return };
        match p.qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => self.send(Packet::PubAck(Ack::new(id))).await,
            QoS::ExactlyOnce => {
                self.send(Packet::PubRec(Ack::new(id))).await;
                match self.recv().await {
                    Packet::PubRel(a) if a.packet_id == id => {}
                    p => panic!("expected PUBREL, got {p:?}"),
                }
                self.send(Packet::PubComp(Ack::new(id))).await;
            }
        }
    }

    /// Send DISCONNECT (normal) and wait for the close.
    pub async fn disconnect(mut self) {
        self.send(Packet::Disconnect(Default::default())).await;
        assert_eq!(self.expect_closed().await, None);
    }

    /// A PINGREQ/PINGRESP round trip: everything sent before it has been processed.
    pub async fn sync(&mut self) {
        self.send(Packet::PingReq).await;
        match self.recv().await {
            Packet::PingResp => {}
            p => panic!("expected PINGRESP, got {p:?}"),
        }
    }
}

/// Size of the packet at the front of `buf`, once its fixed header is complete.
fn frame_size(buf: &[u8]) -> Option<usize> {
    let mut len = 0usize;
    for (i, b) in buf.iter().skip(1).take(4).enumerate() {
        len |= usize::from(b & 0x7F) << (7 * i);
        if b & 0x80 == 0 {
            return Some(1 + i + 1 + len);
        }
    }
    None
}

/// A listener on 127.0.0.1:0 that plays the server by hand.
pub struct FakeServer {
    listener: TcpListener,
}

impl FakeServer {
    /// Bind to an ephemeral port.
    pub async fn start() -> FakeServer {
        FakeServer {
            listener: TcpListener::bind("127.0.0.1:0").await.expect("bind"),
        }
    }

    /// Where clients should connect.
    pub fn addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("local address")
    }

    /// The next connection (decoding starts as 3.1.1 and follows the CONNECT's level).
    pub async fn accept(&self) -> Raw {
        let (stream, _) = tokio::time::timeout(WAIT, self.listener.accept())
            .await
            .expect("a client connects in time")
            .expect("accept");
        Raw::new(stream, V3)
    }

    /// Accept, read the CONNECT and answer with `ack`.
    pub async fn accept_with(&self, ack: ConnAck) -> (Raw, Connect) {
        let mut peer = self.accept().await;
        let connect = match peer.recv().await {
            Packet::Connect(c) => *c,
            p => panic!("expected CONNECT, got {p:?}"),
        };
        peer.send(Packet::ConnAck(ack)).await;
        (peer, connect)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_sizes() {
        assert_eq!(frame_size(&[0xC0]), None);
        assert_eq!(frame_size(&[0xC0, 0x00]), Some(2));
        assert_eq!(frame_size(&[0x30, 0x80, 0x01]), Some(3 + 128));
        assert_eq!(hex("30 0a"), vec![0x30, 0x0A]);
    }
}
