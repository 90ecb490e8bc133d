//! The bridge's local side: an MQTT 5.0 client of this broker over an in-process pipe
//! ([`tern_broker::Internal::serve`]), with the persistent session `$bridge/NAME`.
//!
//! That session is the durable outbox. It subscribes to the `out` filters (No Local, Retain
//! As Published), so the broker queues the matching QoS 1/2 messages for it and writes them
//! to its store in the same group commit as the publisher's PUBACK. A delivery is
//! acknowledged here ([`LocalLink::done`]: PUBACK, or PUBREC then PUBCOMP) only once the
//! remote has acknowledged it; until then the broker keeps it, across restarts, and sends
//! it again (with its packet id) when the session resumes. At most `max_inflight` deliveries
//! are unacknowledged (our Receive Maximum); the rest wait in the broker's session queue,
//! within its `max_queued_messages` / `max_queued_bytes`.
//!
//! Messages from the remote are published on the same connection ([`LocalLink::publish`]),
//! so No Local keeps them from going back out through this bridge.
//!
//! Tasks: a reader (decodes what the broker sends; deliveries and releases go to the
//! forwarder and the releaser through bounded channels) and a writer (encodes the reader's
//! own answers first, then packets from a bounded channel), so that neither direction of the
//! pipe waits for the other.
//!
//! The reader is the only way in for what the broker sends the bridge: the PUBREL that frees
//! a place in the remote client's window (a QoS 2 message the remote has received holds it
//! until then, and the messages behind it hold the forwarder back), the SUBACK, and the
//! answers to what the bridge publishes. So it never waits for the writer (its answers are
//! bounded by the windows), never waits to pass on a QoS 1/2 delivery or a release (room for
//! them is kept: at most `max_inflight` are in flight), and waits for room for a QoS 0
//! message only after the SUBACK, while no PUBREL is awaited, and for at most the broker's
//! `backpressure_timeout_ms`, as the broker itself waits for a slow subscriber. Past that,
//! QoS 0 messages that find no room are dropped and counted until room frees up.
//!
//! When the broker ends the session's connection (an administrator's disconnect), the
//! reader's end is signalled and the bridge opens it again.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};

use bytes::BytesMut;
use tern_proto::codec::{Decoded, Decoder, MAX_PACKET_SIZE};
use tern_proto::{
    Ack, ByteString, Connect, Packet, PacketId, ProtocolVersion, Publish, QoS, RetainHandling, Subscribe,
    SubscriptionOptions, Unsubscribe,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, ReadHalf, WriteHalf};
use tokio::sync::{mpsc, oneshot, Notify, OwnedSemaphorePermit, Semaphore};

use crate::rules::Rules;
use crate::{BridgeError, Shared};

/// Bytes buffered in each direction of the pipe.
const PIPE_BYTES: usize = 64 * 1024;
/// Packets waiting for the writer.
const WRITE_QUEUE: usize = 256;
/// The most QoS 1/2 publishes of ours in flight (ids `1..=` this), whatever the broker's
/// Receive Maximum: the ids a resumed session is released of.
const MAX_OWN_INFLIGHT: u16 = 1024;
/// How long the broker may take to answer the SUBSCRIBE.
const SUBACK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Places in the deliveries channel for QoS 0 messages, beyond the `max_inflight` kept for
/// QoS 1/2 deliveries.
const QOS0_ROOM: usize = 64;
/// The packet ids of the SUBSCRIBE and the UNSUBSCRIBE, above those of publishes.
const SUBSCRIBE_ID: u16 = MAX_OWN_INFLIGHT + 1;
const UNSUBSCRIBE_ID: u16 = MAX_OWN_INFLIGHT + 2;

/// A message the broker delivered to the bridge's session.
#[derive(Debug)]
pub(crate) struct Delivery {
    /// As delivered (QoS, packet id, RETAIN as published, properties).
    pub publish: Publish,
    /// A QoS 0 message's place in the channel, free again once the forwarder took it.
    pub _room: Option<OwnedSemaphorePermit>,
    /// How many of the broker's PUBRELs (to [`Opened::releases`]) came before it on this
    /// session. After a restart the broker resends its deliveries in flight in the order they
    /// were first sent, PUBREL for those whose PUBREC it recorded ([MQTT-4.4.0-1]), and the
    /// remote counts the ones it holds awaiting PUBREL in its Receive Maximum: a QoS 1/2
    /// message goes to the remote client only once those releases have (see
    /// [`crate::remote::forward`]).
    pub after_releases: u64,
}

/// An open local session.
pub(crate) struct Opened {
    pub link: LocalLink,
    /// What the broker delivers to the bridge's session, in order.
    pub deliveries: mpsc::Receiver<Delivery>,
    /// Deliveries the broker released (PUBREL; it has recorded their PUBREC): their PUBCOMP
    /// waits until the remote has completed them too.
    pub releases: mpsc::Receiver<PacketId>,
    /// Fires when the broker ended the session's connection.
    pub closed: oneshot::Receiver<()>,
    /// Whether the broker had the session already (else the outbox starts empty, and so
    /// does the session on the remote).
    pub session_present: bool,
}

/// The handle the other tasks use to write to the local session.
#[derive(Debug, Clone)]
pub(crate) struct LocalLink {
    writer: mpsc::Sender<Packet>,
    /// Room in the broker's Receive Maximum for our QoS 1/2 publishes.
    window: Arc<Semaphore>,
    ids: Arc<Mutex<Ids>>,
    /// Our publishes waiting for the broker's PUBACK / PUBREC: told whether it took them.
    waiters: Arc<Mutex<HashMap<u16, oneshot::Sender<bool>>>>,
    /// QoS 2 deliveries whose remote side is finished without a PUBREL to the remote
    /// (forwarded with QoS 0 or 1, or refused): the broker's PUBREL is completed at once.
    local_only: Arc<Mutex<HashSet<u16>>>,
    /// QoS 2 deliveries the remote has received (PUBREC) whose PUBREL from the broker has
    /// not been read yet: each holds a place in the remote client's window until then.
    awaiting_release: Arc<Mutex<HashSet<u16>>>,
    /// Woken when a delivery starts awaiting its PUBREL.
    release_awaited: Arc<Notify>,
    /// Packets of the reader itself (PUBREL for our publishes, PUBCOMP for `local_only`),
    /// which the writer sends first; their number is bounded by the windows.
    answers: mpsc::UnboundedSender<Packet>,
}

/// Packet ids of our publishes in flight, taken from `1..=window` only (the broker's
/// Receive Maximum), so that the ids a previous run of the bridge may have left awaiting
/// PUBREL in the broker's store are known: [`LocalLink::open`] releases them all.
#[derive(Debug)]
struct Ids {
    window: u16,
    next: u16,
    used: HashSet<u16>,
}

impl Ids {
    /// A free id; there is one, since fewer than `window` are in flight (the semaphore).
    fn take(&mut self) -> Option<PacketId> {
        for _ in 0..self.window {
            self.next = if self.next >= self.window {
                1
            } else {
                self.next + 1
            };
            if self.used.insert(self.next) {
                return PacketId::new(self.next);
            }
        }
        None
    }

    fn free(&mut self, id: PacketId) -> bool {
        self.used.remove(&id.get())
    }
}

impl LocalLink {
    /// Connect to the broker as `client_id` (a persistent session), subscribe to the `out`
    /// filters (returns once the broker has answered), and start the reader and the writer. Deliveries come out of the returned
    /// receiver, at most `max_inflight` unacknowledged at once.
    pub(crate) async fn open(
        internal: &tern_broker::Internal,
        shared: &Arc<Shared>,
        rules: &Rules,
    ) -> Result<Opened, BridgeError> {
        let config = &shared.config;
        let client_id = &config.local_client_id();
        let max_inflight = config.max_inflight;
        let (ours, theirs) = tokio::io::duplex(PIPE_BYTES);
        internal.serve(theirs, client_id);
        let (mut rd, mut wr) = tokio::io::split(ours);
        let mut connect = Connect::new(ProtocolVersion::V5, client_id.to_string());
        connect.clean_start = false;
        connect.keep_alive = 0;
        connect.properties.session_expiry_interval = Some(u32::MAX);
        connect.properties.receive_maximum = Some(max_inflight);
        write(&mut wr, &Packet::Connect(Box::new(connect))).await?;
        let decoder = Decoder::new(ProtocolVersion::V5, MAX_PACKET_SIZE);
        let mut buf = BytesMut::with_capacity(8 * 1024);
        let connack = match read_packet(&mut rd, &decoder, &mut buf).await? {
            Some(Packet::ConnAck(c)) => c,
            other => {
                return Err(BridgeError::Local(format!(
                    "expected CONNACK from the broker, got {other:?}"
                )))
            }
        };
        if connack.reason_code.is_error() {
            return Err(BridgeError::Local(format!(
                "the broker refused the bridge's session {client_id}: {}{}",
                connack.reason_code,
                connack
                    .properties
                    .reason_string
                    .as_ref()
                    .map(|s| format!(" ({s})"))
                    .unwrap_or_default()
            )));
        }
        // The outbox's limits and what it does when full, instead of the broker's per-session
        // ones.
        internal.set_queue_limits(
            client_id,
            tern_broker::QueueLimits {
                max_messages: config.max_outbox_messages,
                max_bytes: config.max_outbox_bytes,
                when_full: match config.outbox_full {
                    tern_broker::OutboxFull::DropOldest => tern_broker::WhenFull::DropOldest,
                    _ => tern_broker::WhenFull::Block,
                },
            },
        );
        let window = connack
            .properties
            .receive_maximum
            .unwrap_or(u16::MAX)
            .min(MAX_OWN_INFLIGHT);
        // A resumed session may hold QoS 2 ids of ours awaiting PUBREL (a crash in the middle
        // of a handshake): a new message under such an id would be taken for a duplicate
        // and dropped (v5 [MQTT-4.3.3-10]). So every id we may use starts in flight, is
        // released with PUBREL, and becomes free when its PUBCOMP (0x92 when unknown) comes.
        let stale: HashSet<u16> = match connack.session_present {
            true => (1..=window).collect(),
            false => HashSet::new(),
        };
        let (writer, write_rx) = mpsc::channel(WRITE_QUEUE);
        let (answers, answers_rx) = mpsc::unbounded_channel();
        let link = LocalLink {
            writer,
            window: Arc::new(Semaphore::new(usize::from(window) - stale.len())),
            ids: Arc::new(Mutex::new(Ids {
                window,
                next: 0,
                used: stale.clone(),
            })),
            waiters: Arc::default(),
            local_only: Arc::default(),
            awaiting_release: Arc::default(),
            release_awaited: Arc::default(),
            answers,
        };
        let filters: Vec<(ByteString, SubscriptionOptions)> = rules
            .out_filters()
            .map(|(f, qos)| {
                let mut o = SubscriptionOptions::qos(qos);
                o.no_local = true;
                o.retain_as_published = true;
                o.retain_handling = RetainHandling::SendIfNew;
                (f.into(), o)
            })
            .collect();
        // Filters of an earlier configuration that the resumed session still has.
        let dropped_filters: Vec<ByteString> = match connack.session_present {
            true => internal
                .session(client_id)
                .map(|s| s.subscriptions)
                .unwrap_or_default()
                .into_iter()
                .filter(|s| !filters.iter().any(|(f, _)| &**f == s.filter.as_str()))
                .map(|s| s.filter.into())
                .collect(),
            false => Vec::new(),
        };
        // At most `max_inflight` QoS 1/2 deliveries and releases are in flight: the reader
        // never waits for room for them.
        let (deliveries, rx) = mpsc::channel(usize::from(max_inflight) + QOS0_ROOM);
        let (releases_tx, releases) = mpsc::channel(usize::from(max_inflight).max(16));
        let (link_for_reader, id_for_reader) = (link.clone(), client_id.to_string());
        let shared_for_reader = shared.clone();
        let patience = internal.backpressure_timeout();
        tokio::spawn(write_loop(wr, answers_rx, write_rx));
        let (closed_tx, closed) = oneshot::channel();
        let (subscribed_tx, subscribed) = oneshot::channel();
        tokio::spawn(async move {
            let to = ReaderOutputs {
                deliveries,
                qos0_room: Arc::new(Semaphore::new(QOS0_ROOM)),
                patience,
                releases: releases_tx,
                subscribed: Some(subscribed_tx),
                shared: shared_for_reader,
            };
            let r = read_loop(rd, decoder, buf, link_for_reader, to, id_for_reader);
            r.await;
            let _ = closed_tx.send(());
        });
        if let Some(packet_id) = PacketId::new(SUBSCRIBE_ID).filter(|_| !filters.is_empty()) {
            let subscribe = Subscribe {
                packet_id,
                properties: Default::default(),
                filters,
            };
            link.send(Packet::Subscribe(subscribe)).await?;
            // Subscribed before anything else goes on: `tern broker` accepts clients only then,
            // so nothing published after its start misses the outbox.
            match tokio::time::timeout(SUBACK_TIMEOUT, subscribed).await {
                Ok(Ok(())) => {}
                _ => {
                    return Err(BridgeError::Local(
                        "the broker did not answer the bridge's SUBSCRIBE".into(),
                    ))
                }
            }
        }
        if let Some(packet_id) = PacketId::new(UNSUBSCRIBE_ID).filter(|_| !dropped_filters.is_empty()) {
            tracing::info!(bridge = %client_id, filters = ?dropped_filters, "no longer forwarding these filters");
            let unsubscribe = Unsubscribe {
                packet_id,
                properties: Default::default(),
                filters: dropped_filters,
            };
            link.send(Packet::Unsubscribe(unsubscribe)).await?;
        }
        let mut stale: Vec<u16> = stale.into_iter().collect();
        stale.sort_unstable();
        for id in stale.into_iter().filter_map(PacketId::new) {
            link.send(Packet::PubRel(Ack::new(id))).await?;
        }
        Ok(Opened {
            link,
            deliveries: rx,
            releases,
            closed,
            session_present: connack.session_present,
        })
    }

    async fn send(&self, packet: Packet) -> Result<(), BridgeError> {
        self.writer
            .send(packet)
            .await
            .map_err(|_| BridgeError::Local("the connection to the broker ended".into()))
    }

    /// The remote has the message delivered with `id` at `qos`: acknowledge it here, so the
    /// broker removes it from the outbox (QoS 2: PUBREC now, PUBCOMP when PUBREL comes).
    pub(crate) async fn done(&self, id: PacketId, qos: QoS) -> Result<(), BridgeError> {
        match qos {
            QoS::AtMostOnce => Ok(()),
            QoS::AtLeastOnce => self.send(Packet::PubAck(Ack::new(id))).await,
            QoS::ExactlyOnce => self.send(Packet::PubRec(Ack::new(id))).await,
        }
    }

    /// The delivery `id` does not go to the remote (no rule takes it, or it crossed too many
    /// bridges): acknowledge it here at once, and complete its PUBREL here too.
    pub(crate) async fn skip(&self, id: PacketId, qos: QoS) -> Result<(), BridgeError> {
        if qos == QoS::ExactlyOnce {
            self.local_only(id);
        }
        self.done(id, qos).await
    }

    /// The remote has received the QoS 2 delivery `id` (PUBREC), and the remote client holds
    /// its place in the window until the broker's PUBREL, which the reader must now read.
    pub(crate) fn awaits_release(&self, id: PacketId) {
        self.awaiting_release
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id.get());
        self.release_awaited.notify_waiters();
    }

    /// Whether some PUBREL from the broker is awaited.
    fn release_awaited(&self) -> bool {
        !self
            .awaiting_release
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_empty()
    }

    /// A packet of the reader's: never waits.
    fn answer(&self, packet: Packet) -> bool {
        self.answers.send(packet).is_ok()
    }

    /// The QoS 2 delivery `id` is finished on the remote's side without a PUBREL there:
    /// the broker's PUBREL for it is completed at once.
    pub(crate) fn local_only(&self, id: PacketId) {
        self.local_only
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id.get());
    }

    /// The remote has completed the QoS 2 delivery `id` that the broker released: complete
    /// it here (PUBCOMP), so the broker removes it from the outbox.
    pub(crate) async fn completed_release(&self, id: PacketId) -> Result<(), BridgeError> {
        self.send(Packet::PubComp(Ack::new(id))).await
    }

    /// Publish a message from the remote to this broker; waits while the broker's Receive
    /// Maximum is used up. For QoS 1/2, the returned receiver tells whether the broker took
    /// the message (PUBACK / PUBREC, written to its store first when it keeps one), or is
    /// dropped when the session ended first.
    pub(crate) async fn publish(
        &self,
        mut publish: Publish,
    ) -> Result<Option<oneshot::Receiver<bool>>, BridgeError> {
        let mut taken = None;
        if publish.qos != QoS::AtMostOnce {
            let permit = self
                .window
                .acquire()
                .await
                .map_err(|_| BridgeError::Local("the connection to the broker ended".into()))?;
            permit.forget();
            let id = self
                .ids
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take()
                .ok_or_else(|| BridgeError::Local("no free packet id".into()))?;
            publish.packet_id = Some(id);
            let (tx, rx) = oneshot::channel();
            self.waiters
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(id.get(), tx);
            taken = Some(rx);
        }
        self.send(Packet::Publish(publish)).await?;
        Ok(taken)
    }

    /// The broker answered our publish `id`: tell its waiter whether it took the message.
    fn answered(&self, id: PacketId, took: bool) {
        let waiter = self
            .waiters
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&id.get());
        if let Some(w) = waiter {
            let _ = w.send(took);
        }
    }

    /// Our publish `id` is complete: its id and its place in the window are free again.
    fn completed(&self, id: PacketId) {
        if self.ids.lock().unwrap_or_else(PoisonError::into_inner).free(id) {
            self.window.add_permits(1);
        }
    }
}

/// Where the reader hands what the broker sends.
struct ReaderOutputs {
    deliveries: mpsc::Sender<Delivery>,
    /// Places of `deliveries` for QoS 0 messages (the rest is kept for QoS 1/2 ones).
    qos0_room: Arc<Semaphore>,
    /// How long a QoS 0 message may wait for a place (`backpressure_timeout_ms`).
    patience: std::time::Duration,
    releases: mpsc::Sender<PacketId>,
    /// Told when the SUBACK comes.
    subscribed: Option<oneshot::Sender<()>>,
    /// Where QoS 0 messages dropped here are counted.
    shared: Arc<Shared>,
}

/// Decode what the broker sends until the pipe closes.
async fn read_loop(
    mut rd: ReadHalf<DuplexStream>,
    decoder: Decoder,
    mut buf: BytesMut,
    link: LocalLink,
    to: ReaderOutputs,
    client_id: String,
) {
    let ReaderOutputs {
        deliveries,
        qos0_room,
        patience,
        releases,
        mut subscribed,
        shared,
    } = to;
    // A QoS 0 message waited `patience` for a place in vain: drop until one frees up.
    let mut overflowing = false;
    // The broker's PUBRELs passed on so far.
    let mut released = 0u64;
    loop {
        let packet = match read_packet(&mut rd, &decoder, &mut buf).await {
            Ok(Some(p)) => p,
            Ok(None) => break,
            Err(e) => {
                tracing::warn!(bridge = %client_id, "local session: {e}");
                break;
            }
        };
        let ok = match packet {
            Packet::Publish(publish) => {
                let room = match publish.qos {
                    QoS::AtMostOnce => match qos0_place(
                        &qos0_room,
                        &link,
                        &mut overflowing,
                        subscribed.is_none().then_some(patience),
                    )
                    .await
                    {
                        Some(room) => Some(room),
                        None => {
                            shared.status.dropped.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                    },
                    _ => None,
                };
                let d = Delivery {
                    publish,
                    _room: room,
                    after_releases: released,
                };
                // Never waits: there is room for every QoS 1/2 delivery in flight and for
                // every QoS 0 message holding a place.
                deliveries.send(d).await.is_ok()
            }
            // A delivery the broker released: completed at once when the remote has nothing
            // to release, otherwise once the remote has completed it (PUBREL goes to the
            // remote only now that the broker has recorded the PUBREC, so that after a crash
            // the broker resends PUBREL, never the PUBLISH the remote would take for new).
            Packet::PubRel(a) => {
                let here = link
                    .local_only
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(&a.packet_id.get());
                link.awaiting_release
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(&a.packet_id.get());
                match here {
                    true => link.answer(Packet::PubComp(Ack::new(a.packet_id))),
                    false => {
                        released += 1;
                        releases.send(a.packet_id).await.is_ok()
                    }
                }
            }
            Packet::PubRec(a) if a.reason_code.is_error() => {
                link.completed(a.packet_id);
                link.answered(a.packet_id, false);
                true
            }
            Packet::PubRec(a) => {
                link.answered(a.packet_id, true);
                link.answer(Packet::PubRel(Ack::new(a.packet_id)))
            }
            Packet::PubAck(a) => {
                link.completed(a.packet_id);
                link.answered(a.packet_id, !a.reason_code.is_error());
                true
            }
            Packet::PubComp(a) => {
                link.completed(a.packet_id);
                true
            }
            Packet::SubAck(s) => {
                for code in s.reason_codes.iter().filter(|c| c.is_error()) {
                    tracing::error!(bridge = %client_id, "the broker refused an `out` filter of the bridge: {code} (check the ACL for user {client_id})");
                }
                if let Some(tx) = subscribed.take() {
                    let _ = tx.send(());
                }
                true
            }
            Packet::Disconnect(d) => {
                tracing::info!(bridge = %client_id, reason = ?d.reason_code, "the broker closed the bridge's local session");
                false
            }
            _ => true,
        };
        if !ok {
            break;
        }
    }
    link.window.close();
    // Publishes the broker did not answer: their waiters learn that nothing was taken.
    link.waiters
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clear();
}

/// A place for a QoS 0 message in the deliveries channel; `None`: drop the message. While
/// the forwarder is behind, the reader waits for a place for at most `patience` (the broker
/// then holds its publishers back, as for any slow subscriber; `None` before the SUBACK),
/// then drops until a place frees up (`overflowing`); it never waits while a PUBREL is
/// awaited that may be behind this message.
async fn qos0_place(
    room: &Arc<Semaphore>,
    link: &LocalLink,
    overflowing: &mut bool,
    patience: Option<std::time::Duration>,
) -> Option<OwnedSemaphorePermit> {
    if let Ok(place) = room.clone().try_acquire_owned() {
        *overflowing = false;
        return Some(place);
    }
    let patience = patience.filter(|_| !*overflowing)?;
    let give_up = tokio::time::sleep(patience);
    tokio::pin!(give_up);
    loop {
        let awaited = link.release_awaited.notified();
        tokio::pin!(awaited);
        awaited.as_mut().enable();
        if link.release_awaited() {
            return None;
        }
        tokio::select! {
            place = room.clone().acquire_owned() => return place.ok(),
            _ = awaited => {}
            _ = &mut give_up => {
                *overflowing = true;
                return None;
            }
        }
    }
}

/// Write packets in order, a batch per write, until every sender is gone: the reader's
/// `answers` first, then those of `rx`.
async fn write_loop(
    mut wr: WriteHalf<DuplexStream>,
    mut answers: mpsc::UnboundedReceiver<Packet>,
    mut rx: mpsc::Receiver<Packet>,
) {
    let mut buf = BytesMut::with_capacity(8 * 1024);
    loop {
        let first = tokio::select! {
            biased;
            Some(p) = answers.recv() => p,
            p = rx.recv() => match p {
                Some(p) => p,
                None => break,
            },
        };
        let mut next = Some(first);
        while let Some(p) = next {
            if let Err(e) = p.encode(ProtocolVersion::V5, &mut buf) {
                tracing::warn!("bridge: cannot encode a packet for the broker: {e}");
            }
            next = if buf.len() < 64 * 1024 {
                answers.try_recv().or_else(|_| rx.try_recv()).ok()
            } else {
                None
            };
        }
        if wr.write_all(&buf).await.is_err() || wr.flush().await.is_err() {
            return;
        }
        buf.clear();
    }
    let _ = wr.shutdown().await;
}

async fn write(wr: &mut WriteHalf<DuplexStream>, packet: &Packet) -> Result<(), BridgeError> {
    let mut buf = BytesMut::new();
    packet
        .encode(ProtocolVersion::V5, &mut buf)
        .map_err(|e| BridgeError::Local(format!("cannot encode {:?}: {e}", packet.packet_type())))?;
    wr.write_all(&buf)
        .await
        .map_err(|e| BridgeError::Local(format!("cannot write to the broker: {e}")))
}

/// The next packet, `None` at the end of the stream.
async fn read_packet(
    rd: &mut ReadHalf<DuplexStream>,
    decoder: &Decoder,
    buf: &mut BytesMut,
) -> Result<Option<Packet>, BridgeError> {
    loop {
        match decoder.decode(buf) {
            Ok(Decoded::Packet(p)) => return Ok(Some(p)),
            Ok(Decoded::NeedMore(n)) => buf.reserve(n.max(4096)),
            Err(e) => return Err(BridgeError::Local(format!("bad packet from the broker: {e}"))),
        }
        match rd.read_buf(buf).await {
            Ok(0) => return Ok(None),
            Ok(_) => {}
            Err(e) => return Err(BridgeError::Local(format!("cannot read from the broker: {e}"))),
        }
    }
}
