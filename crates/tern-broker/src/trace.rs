//! Live trace of one client's packets, for the admin API's trace stream and `tern trace`.
//!
//! With no trace running, a connection pays one relaxed load of `Tracer::on` per read and
//! per batch written, never per packet, and the packets are not touched. While at least one
//! trace runs, each read and write of every connection also looks its client id up in a small
//! map behind a mutex; the bytes of the traced clients are decoded a second time, into
//! [`TraceEvent`]s (what was read, once the connection has consumed it; what is about to be
//! written), sent on a bounded broadcast channel: a reader that falls behind loses events
//! ([`TraceReceiver::recv`] says how many), never slows the client.
//!
//! The connection code calls `before_decode` / `after_decode` around decoding a read,
//! and `bytes_out` before writing, nothing else.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use bytes::BytesMut;
use tern_proto::{Decoded, Decoder, Packet, ProtocolVersion};
use tokio::sync::broadcast;

use crate::broker_core::Core;

/// Events a trace keeps for a reader that falls behind.
const TRACE_BUFFER: usize = 1024;

/// Payload bytes shown in a trace event.
pub const PAYLOAD_PREVIEW: usize = 64;

/// Which way a traced packet went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From the client to the broker.
    In,
    /// From the broker to the client.
    Out,
}

/// One packet of a traced client, summarised.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct TraceEvent {
    /// When the broker saw it.
    pub at: SystemTime,
    /// Received or sent.
    pub direction: Direction,
    /// PUBLISH, PUBACK, SUBSCRIBE, ...
    pub packet_type: &'static str,
    /// Its packet identifier, if it has one.
    pub packet_id: Option<u16>,
    /// QoS of a PUBLISH.
    pub qos: Option<u8>,
    /// Topic of a PUBLISH, filters of a SUBSCRIBE/UNSUBSCRIBE.
    pub topic: Option<String>,
    /// Reason codes (acknowledgements, SUBACK, DISCONNECT, AUTH).
    pub reason_codes: Vec<u8>,
    /// Encoded size in bytes.
    pub size: usize,
    /// Payload size of a PUBLISH.
    pub payload_size: Option<usize>,
    /// The first [`PAYLOAD_PREVIEW`] payload bytes of a PUBLISH.
    pub payload_preview: Option<bytes::Bytes>,
}

/// The traces running now.
#[derive(Debug, Default)]
pub(crate) struct Tracer {
    active: AtomicBool,
    taps: Mutex<HashMap<String, broadcast::Sender<TraceEvent>>>,
}

impl Tracer {
    /// Whether any trace runs (one relaxed load: the whole cost of tracing when off).
    #[inline]
    pub fn on(&self) -> bool {
        self.active.load(Ordering::Relaxed)
    }

    fn taps(&self) -> std::sync::MutexGuard<'_, HashMap<String, broadcast::Sender<TraceEvent>>> {
        self.taps.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Start tracing `client_id` (it need not be connected yet).
    pub fn subscribe(self: &Arc<Tracer>, client_id: &str) -> TraceReceiver {
        let mut taps = self.taps();
        let rx = match taps.get(client_id) {
            Some(tx) => tx.subscribe(),
            None => {
                let (tx, rx) = broadcast::channel(TRACE_BUFFER);
                taps.insert(client_id.to_string(), tx);
                rx
            }
        };
        self.active.store(true, Ordering::Relaxed);
        TraceReceiver {
            rx,
            tracer: self.clone(),
            client_id: client_id.to_string(),
        }
    }

    fn sender(&self, client_id: &str) -> Option<broadcast::Sender<TraceEvent>> {
        self.taps().get(client_id).cloned()
    }
}

/// A running trace; dropping it stops it.
#[derive(Debug)]
pub struct TraceReceiver {
    rx: broadcast::Receiver<TraceEvent>,
    tracer: Arc<Tracer>,
    client_id: String,
}

/// What [`TraceReceiver::recv`] gives.
#[derive(Debug)]
pub enum TraceItem {
    /// The next packet.
    Event(TraceEvent),
    /// This many events were lost because the reader fell behind.
    Lagged(u64),
}

impl TraceReceiver {
    /// The next event of the traced client.
    pub async fn recv(&mut self) -> TraceItem {
        match self.rx.recv().await {
            Ok(e) => TraceItem::Event(e),
            Err(broadcast::error::RecvError::Lagged(n)) => TraceItem::Lagged(n),
            // The tracer keeps the sender while this receiver lives.
            Err(broadcast::error::RecvError::Closed) => std::future::pending().await,
        }
    }
}

impl Drop for TraceReceiver {
    fn drop(&mut self) {
        let mut taps = self.tracer.taps();
        // This receiver still counts: it is the last one when the count is 1.
        if taps
            .get(&self.client_id)
            .is_some_and(|tx| tx.receiver_count() <= 1)
        {
            taps.remove(&self.client_id);
        }
        if taps.is_empty() {
            self.tracer.active.store(false, Ordering::Relaxed);
        }
    }
}

/// Hook, before the packets in `buf` are decoded: a copy of `buf` when `client_id` is traced
/// (the only cost otherwise: one relaxed load per read, not per packet).
#[inline]
pub(crate) fn before_decode(core: &Core, client_id: &str, buf: &BytesMut) -> Option<bytes::Bytes> {
    if core.trace.on() {
        traced_before(core, client_id, buf)
    } else {
        None
    }
}

/// Hook, after decoding: `left` bytes of what [`before_decode`] copied were not consumed;
/// the packets before them were received.
#[inline]
pub(crate) fn after_decode(
    core: &Core,
    client_id: &str,
    version: ProtocolVersion,
    before: Option<bytes::Bytes>,
    left: usize,
) {
    if let Some(before) = before {
        traced_in(core, client_id, version, before, left);
    }
}

/// Hook: `out` (whole packets) is about to be written to `client_id`.
#[inline]
pub(crate) fn bytes_out(core: &Core, client_id: &str, version: ProtocolVersion, out: &[u8]) {
    if core.trace.on() {
        traced_out(core, client_id, version, out);
    }
}

#[cold]
fn traced_before(core: &Core, client_id: &str, buf: &BytesMut) -> Option<bytes::Bytes> {
    core.trace
        .sender(client_id)
        .map(|_| bytes::Bytes::copy_from_slice(buf))
}

#[cold]
fn traced_in(core: &Core, client_id: &str, version: ProtocolVersion, before: bytes::Bytes, left: usize) {
    let Some(tx) = core.trace.sender(client_id) else {
        return;
    };
    let consumed = before.len().saturating_sub(left);
    summarise_all(&tx, Direction::In, version, &before[..consumed]);
}

/// Send one event per whole packet in `bytes`.
fn summarise_all(
    tx: &broadcast::Sender<TraceEvent>,
    direction: Direction,
    version: ProtocolVersion,
    bytes: &[u8],
) {
    let mut buf = BytesMut::from(bytes);
    let decoder = Decoder::new(version, u32::MAX);
    loop {
        let before = buf.len();
        match decoder.decode(&mut buf) {
            Ok(Decoded::Packet(p)) => {
                let _ = tx.send(summarise(direction, &p, before - buf.len()));
            }
            _ => return,
        }
    }
}

#[cold]
fn traced_out(core: &Core, client_id: &str, version: ProtocolVersion, out: &[u8]) {
    if let Some(tx) = core.trace.sender(client_id) {
        summarise_all(&tx, Direction::Out, version, out);
    }
}

fn summarise(direction: Direction, packet: &Packet, size: usize) -> TraceEvent {
    let mut e = TraceEvent {
        at: SystemTime::now(),
        direction,
        packet_type: type_name(packet),
        packet_id: None,
        qos: None,
        topic: None,
        reason_codes: Vec::new(),
        size,
        payload_size: None,
        payload_preview: None,
    };
    match packet {
        Packet::Publish(p) => {
            e.packet_id = p.packet_id.map(|id| id.get());
            e.qos = Some(p.qos as u8);
            e.topic = Some(p.topic.to_string());
            e.payload_size = Some(p.payload.len());
            e.payload_preview = Some(p.payload.slice(..p.payload.len().min(PAYLOAD_PREVIEW)));
        }
        Packet::PubAck(a) | Packet::PubRec(a) | Packet::PubRel(a) | Packet::PubComp(a) => {
            e.packet_id = Some(a.packet_id.get());
            e.reason_codes = vec![a.reason_code.as_u8()];
        }
        Packet::Subscribe(s) => {
            e.packet_id = Some(s.packet_id.get());
            e.topic = Some(s.filters.iter().map(|(f, _)| &**f).collect::<Vec<_>>().join(" "));
        }
        Packet::Unsubscribe(u) => {
            e.packet_id = Some(u.packet_id.get());
            e.topic = Some(u.filters.iter().map(|f| &**f).collect::<Vec<_>>().join(" "));
        }
        Packet::SubAck(s) => {
            e.packet_id = Some(s.packet_id.get());
            e.reason_codes = s.reason_codes.iter().map(|r| r.as_u8()).collect();
        }
        Packet::UnsubAck(s) => {
            e.packet_id = Some(s.packet_id.get());
            e.reason_codes = s.reason_codes.iter().map(|r| r.as_u8()).collect();
        }
        Packet::ConnAck(c) => e.reason_codes = vec![c.reason_code.as_u8()],
        Packet::Disconnect(d) => e.reason_codes = d.reason_code.iter().map(|r| r.as_u8()).collect(),
        Packet::Auth(a) => e.reason_codes = a.reason_code.iter().map(|r| r.as_u8()).collect(),
        Packet::Connect(_) | Packet::PingReq | Packet::PingResp => {}
    }
    e
}

fn type_name(p: &Packet) -> &'static str {
    match p {
        Packet::Connect(_) => "CONNECT",
        Packet::ConnAck(_) => "CONNACK",
        Packet::Publish(_) => "PUBLISH",
        Packet::PubAck(_) => "PUBACK",
        Packet::PubRec(_) => "PUBREC",
        Packet::PubRel(_) => "PUBREL",
        Packet::PubComp(_) => "PUBCOMP",
        Packet::Subscribe(_) => "SUBSCRIBE",
        Packet::SubAck(_) => "SUBACK",
        Packet::Unsubscribe(_) => "UNSUBSCRIBE",
        Packet::UnsubAck(_) => "UNSUBACK",
        Packet::PingReq => "PINGREQ",
        Packet::PingResp => "PINGRESP",
        Packet::Disconnect(_) => "DISCONNECT",
        Packet::Auth(_) => "AUTH",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracing_is_on_while_a_receiver_lives() {
        let t = Arc::new(Tracer::default());
        assert!(!t.on());
        let a = t.subscribe("c");
        let b = t.subscribe("c");
        let other = t.subscribe("d");
        assert!(t.on());
        drop(a);
        assert!(t.sender("c").is_some(), "b still traces c");
        drop(b);
        assert!(t.sender("c").is_none());
        assert!(t.on(), "d is still traced");
        drop(other);
        assert!(!t.on());
    }

    #[test]
    fn outgoing_bytes_are_summarised_packet_by_packet() {
        let mut out = BytesMut::new();
        let mut p = tern_proto::Publish::new("a/b", bytes::Bytes::from(vec![7u8; 100]));
        p.qos = tern_proto::QoS::AtLeastOnce;
        p.packet_id = tern_proto::PacketId::new(3);
        Packet::Publish(p).encode(ProtocolVersion::V5, &mut out).unwrap();
        Packet::PingResp.encode(ProtocolVersion::V5, &mut out).unwrap();
        let mut buf = BytesMut::from(&out[..]);
        let d = Decoder::new(ProtocolVersion::V5, u32::MAX);
        let mut seen = Vec::new();
        while let Ok(Decoded::Packet(p)) = d.decode(&mut buf) {
            seen.push(summarise(Direction::Out, &p, 0));
        }
        assert_eq!(seen[0].packet_type, "PUBLISH");
        assert_eq!(seen[0].packet_id, Some(3));
        assert_eq!(seen[0].payload_size, Some(100));
        assert_eq!(
            seen[0].payload_preview.as_ref().map(|p| p.len()),
            Some(PAYLOAD_PREVIEW)
        );
        assert_eq!(seen[1].packet_type, "PINGRESP");
    }
}
