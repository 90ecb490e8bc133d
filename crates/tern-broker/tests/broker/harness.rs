//! A raw MQTT peer for tests: send exact packets or bytes, expect exact packets
//! or a close. Every wait is bounded.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use tern_broker::{BrokerBuilder, BrokerHandle, Config};
use tern_proto::codec::{Decoded, Decoder};
use tern_proto::{
    Ack, ConnAck, Connect, Packet, PacketId, ProtocolVersion, Publish, QoS, ReasonCode, SubAck, Subscribe,
    SubscriptionOptions,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub const V3: ProtocolVersion = ProtocolVersion::V3_1_1;
pub const V5: ProtocolVersion = ProtocolVersion::V5;
const WAIT: Duration = Duration::from_secs(5);

/// Start a broker on 127.0.0.1:0.
pub async fn start() -> BrokerHandle {
    start_with(|_| {}).await
}

/// Start a broker on 127.0.0.1:0 with changed settings.
pub async fn start_with(f: impl FnOnce(&mut Config)) -> BrokerHandle {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter("tern_broker=debug")
        .try_init();
    BrokerBuilder::new()
        .listen("127.0.0.1:0".parse().unwrap())
        .configure(f)
        .bind()
        .await
        .expect("bind")
        .spawn()
}

pub fn pid(n: u16) -> PacketId {
    PacketId::new(n).unwrap()
}

pub struct Raw {
    stream: TcpStream,
    buf: BytesMut,
    decoder: Decoder,
    pub version: ProtocolVersion,
}

impl Raw {
    /// Open a TCP connection without sending anything.
    pub async fn open(addr: SocketAddr, version: ProtocolVersion) -> Raw {
        let stream = TcpStream::connect(addr).await.expect("connect");
        Raw {
            stream,
            buf: BytesMut::new(),
            decoder: Decoder::new(version, 300_000_000),
            version,
        }
    }

    /// Connect with a clean session and expect a successful CONNACK.
    pub async fn connect(addr: SocketAddr, version: ProtocolVersion, client_id: &str) -> Raw {
        let mut c = Connect::new(version, client_id);
        c.keep_alive = 0;
        let (raw, ack) = Raw::connect_with(addr, c).await;
        assert_eq!(ack.reason_code, ReasonCode::Success);
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

    pub async fn send(&mut self, p: Packet) {
        let mut out = BytesMut::new();
        p.encode(self.version, &mut out).expect("encode");
        self.stream.write_all(&out).await.expect("write");
    }

    pub async fn send_bytes(&mut self, b: &[u8]) {
        self.stream.write_all(b).await.expect("write");
    }

    /// The next packet, or `None` when the connection is closed. Panics after 5 s.
    pub async fn next(&mut self) -> Option<Packet> {
        self.next_within(WAIT)
            .await
            .expect("timed out waiting for a packet")
    }

    /// `Err(())` on timeout.
    pub async fn next_within(&mut self, d: Duration) -> Result<Option<Packet>, ()> {
        let deadline = tokio::time::Instant::now() + d;
        loop {
            match self
                .decoder
                .decode(&mut self.buf)
                .expect("broker sent a malformed packet")
            {
                Decoded::Packet(p) => return Ok(Some(p)),
                Decoded::NeedMore(_) => {}
            }
            match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf)).await {
                Err(_) => return Err(()),
                Ok(Ok(0)) | Ok(Err(_)) => return Ok(None),
                Ok(Ok(_)) => {}
            }
        }
    }

    pub async fn recv(&mut self) -> Packet {
        self.next()
            .await
            .expect("connection closed while waiting for a packet")
    }

    pub async fn recv_publish(&mut self) -> Publish {
        match self.recv().await {
            Packet::Publish(p) => p,
            p => panic!("expected PUBLISH, got {p:?}"),
        }
    }

    /// Expect the connection to close; returns the DISCONNECT reason if one came first.
    pub async fn expect_closed(&mut self) -> Option<ReasonCode> {
        let mut reason = None;
        loop {
            match self.next().await {
                None => return reason,
                Some(Packet::Disconnect(d)) => reason = Some(d.reason()),
                Some(p) => panic!("expected close, got {p:?}"),
            }
        }
    }

    /// Expect no packet for `ms` milliseconds.
    pub async fn expect_silence(&mut self, ms: u64) {
        if let Ok(p) = self.next_within(Duration::from_millis(ms)).await {
            panic!("expected nothing, got {p:?}");
        }
    }

    pub async fn subscribe(&mut self, filter: &str, qos: QoS) -> SubAck {
        self.subscribe_with(filter, SubscriptionOptions::qos(qos), None)
            .await
    }

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

    /// Publish and complete the handshake the QoS asks for.
    pub async fn publish(&mut self, topic: &str, payload: &str, qos: QoS, retain: bool) {
        let mut p = Publish::new(topic, payload.to_string());
        p.qos = qos;
        p.retain = retain;
        p.packet_id = (qos != QoS::AtMostOnce).then(|| pid(77));
        self.send(Packet::Publish(p)).await;
        match qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => {
                assert!(matches!(self.recv().await, Packet::PubAck(a) if a.packet_id == pid(77)))
            }
            QoS::ExactlyOnce => {
                assert!(matches!(self.recv().await, Packet::PubRec(a) if a.packet_id == pid(77)));
                self.send(Packet::PubRel(Ack::new(pid(77)))).await;
                assert!(matches!(self.recv().await, Packet::PubComp(a) if a.packet_id == pid(77)));
            }
        }
    }

    /// Acknowledge a received PUBLISH as its QoS asks.
    pub async fn ack(&mut self, p: &Publish) {
        match p.qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => self.send(Packet::PubAck(Ack::new(p.packet_id.unwrap()))).await,
            QoS::ExactlyOnce => {
                let id = p.packet_id.unwrap();
                self.send(Packet::PubRec(Ack::new(id))).await;
                assert!(matches!(self.recv().await, Packet::PubRel(a) if a.packet_id == id));
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
