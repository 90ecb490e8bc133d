//! What this node's clients publish, on its way to NATS: QoS 0 as core NATS messages on
//! `<prefix>.t.<topic>`, QoS 1/2 stored once in their publisher's shard stream. Stored
//! messages are numbered (tickets); [`Outbound::progress`] says up to which ticket all are
//! stored, and the broker holds each publisher's PUBACK/PUBREC until then.
//!
//! ### Queues
//! - QoS 0: a bounded channel (`QOS0_QUEUE`); when it is full the message is dropped and
//!   counted, as QoS 0 allows. Its task packs the messages that wait together and differ
//!   only in their payload into one NATS message (`codec::pack`). A retained QoS 0 message is also written to the retained
//!   bucket, unless `QOS0_QUEUE` writes wait already (dropped, counted, logged).
//! - QoS 1/2: never dropped. The hand-over channel has no fixed capacity, but its depth is
//!   bounded by the broker's flow control: a connection hands over at most one read's worth
//!   of messages (64 KiB of packets) and then waits for their acknowledgement before it reads
//!   again. Messages in flight to JetStream are capped at `cluster.max_ack_inflight` (the
//!   JetStream context waits for a permit).
//! - QoS 1 messages of one publisher to one topic, without properties, expiry or RETAIN,
//!   that wait together to be stored go as one pack (`codec::packable_stored`,
//!   `cluster.qos1_pack` at most, within NATS' `max_payload`): JetStream's cost is per
//!   stored message. Only what waits already is packed; nothing waits to make a pack.
//!   A publisher's messages keep their order: anything else of it closes its open pack.
//! - Each first attempt to store in a shard is numbered (`Tern-S`: the node's run and a
//!   count per shard, in the order they go out): where JetStream stores a later message
//!   before an earlier one (the earlier one's attempt lost with a connection or a stream
//!   leader, and tried again), readers put them back in order (`order.rs`).
//! - A publish without an answer (a stream leader died, no quorum) is retried. A QoS 2
//!   message and a retained write carry a `Nats-Msg-Id`, so JetStream stores them once
//!   (within its duplicate window); a QoS 1 message does not (a retry after a lost answer can
//!   store it twice: a duplicate, which QoS 1 allows).

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream;
use async_nats::HeaderMap;
use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt};
use tern_broker::backplane::Sent;
use tern_broker::durability::{Progress, Ticket};
use tern_broker::Message;
use tern_proto::QoS;
use tokio::sync::mpsc;

use crate::{codec, streams, topic};

/// QoS 0 messages waiting to be handed to NATS, at most.
pub const QOS0_QUEUE: usize = 65_536;

/// Longest wait for the NATS client to take a message.
const SEND_TIMEOUT: Duration = Duration::from_secs(2);

/// Longest pause between two attempts to store a message.
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// How long the message a QoS 2 duplicate names is asked for before it is taken as not
/// stored (`placed_before`).
const PLACED_WAIT: Duration = Duration::from_secs(5);

/// A message to publish: its subject, headers and payload.
pub(crate) struct Outgoing {
    pub subject: String,
    pub headers: HeaderMap,
    pub payload: Bytes,
    /// A QoS 2 message and its shard: told where it is stored
    /// ([`Message::set_backplane_position`]).
    pub placed: Option<(Arc<Message>, u16)>,
    /// Its publisher (a stored message): its messages are stored in order.
    pub from: Option<Arc<str>>,
    /// A ticket of [`Outbound::entries`] to wait for before it is stored (the entry of its
    /// publisher's session lists its packet id: [`Message::backplane_hold`]).
    pub hold: Option<Ticket>,
    /// A QoS 1 message that may be stored in one pack with its publisher's next ones to its
    /// topic (`codec::packable_stored`).
    pub packable: bool,
    /// A message for a shard stream, and which: numbered among this run's first attempts
    /// to that shard when it goes out (`codec::set_order`, `order.rs`).
    pub shard: Option<u16>,
}

/// Counters of the outbound side.
#[derive(Debug, Default)]
pub struct OutboundCounters {
    /// QoS 0 messages published on core NATS.
    pub qos0_sent: AtomicU64,
    /// QoS 0 messages dropped because the queue to NATS was full or NATS refused them.
    pub qos0_dropped: AtomicU64,
    /// NATS messages that carried more than one QoS 0 message.
    pub qos0_packs: AtomicU64,
    /// JetStream messages stored that carried more than one QoS 1 message.
    pub qos1_packs: AtomicU64,
    /// QoS 1 packs a server refused as larger than its `max_payload`, stored one message at
    /// a time instead.
    pub qos1_packs_split: AtomicU64,
    /// QoS 1/2 messages stored (acknowledged by JetStream).
    pub stored: AtomicU64,
    /// Attempts to store that failed and were retried.
    pub retries: AtomicU64,
    /// QoS 2 messages not stored: refused as duplicates of a placeholder (`placed_before`),
    /// or of a publisher whose session another node took before its entry listed them
    /// (`relisted`).
    pub refused: AtomicU64,
}

/// The node's outbound half, shared by the backplane and its tasks.
#[derive(Debug)]
pub(crate) struct Outbound {
    pub node: String,
    pub prefix: String,
    pub shards: u16,
    /// This run of the node (random): with `counter`, a unique `Nats-Msg-Id`, and the id
    /// of a QoS 2 message ([`Message::backplane_id`]).
    incarnation: u64,
    counter: AtomicU64,
    submitted: AtomicU64,
    pub progress: Progress,
    settled: Mutex<Settled>,
    stored_tx: mpsc::UnboundedSender<(Ticket, Outgoing)>,
    qos0_tx: mpsc::Sender<Qos0Out>,
    /// QoS 0 messages in `qos0_tx`, at most [`QOS0_QUEUE`].
    qos0_queued: AtomicUsize,
    pub ack_timeout: Duration,
    /// QoS 0 messages packed into one NATS message, at most (`cluster.qos0_pack`).
    qos0_pack: usize,
    /// QoS 1 messages stored as one JetStream message, at most (`cluster.qos1_pack`).
    qos1_pack: usize,
    pub counters: OutboundCounters,
    /// The numbering of the session entry writes (`sessions.rs`): a message held for one
    /// ([`Outgoing::hold`]) is stored once it is written.
    pub entries: Arc<Tickets>,
    /// Asked before storing a QoS 2 message whose own entry write failed (`sessions.rs`,
    /// set once the directory exists).
    pub relist: std::sync::OnceLock<Relist>,
}

/// See [`Outbound::relist`].
pub(crate) struct Relist {
    /// Write the publisher's entry again, with the incoming ids its session holds now:
    /// `Ok(false)` when the entry names another node.
    pub write: Box<dyn Fn(Arc<str>) -> Relisting + Send + Sync>,
}

/// One write of [`Relist::write`].
pub(crate) type Relisting = futures_util::future::BoxFuture<'static, Result<bool, String>>;

/// How long, about, a message waits for [`Relist::write`] while NATS is connected and the
/// write fails (the sessions bucket electing a leader, say; counted over the attempts that
/// fail while connected, one of which may itself retry for 5 s): then it is stored (a possible
/// duplicate rather than a stall of every store on the node). While NATS is not connected
/// nothing can be stored anyway, and it waits as long as that lasts.
const RELIST_AT_MOST: Duration = Duration::from_secs(10);

impl std::fmt::Debug for Relist {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Relist")
    }
}

/// How far tickets are stored: every one up to `upto`, and those in `done` after a gap.
#[derive(Debug, Default)]
struct Settled {
    upto: Ticket,
    done: BTreeSet<Ticket>,
}

impl Settled {
    /// `ticket` is done: the last ticket of the gap-free prefix now. Read and moved under
    /// the caller's lock: read from a `Progress`, which another caller advances after its
    /// unlock, it could be behind, and a ticket right after it would wait in `done` for ever
    /// (found by the kill loop).
    fn record(&mut self, ticket: Ticket) -> Ticket {
        self.done.insert(ticket);
        while self.done.first() == Some(&(self.upto + 1)) {
            self.done.pop_first();
            self.upto += 1;
        }
        self.upto
    }
}

/// A numbering of writes that are not messages (the session entries of `sessions.rs`) and how
/// far they are done without a gap: an acknowledgement that waits for one (a SUBACK) waits
/// for [`Tickets::progress`] to reach it.
#[derive(Debug, Default)]
pub(crate) struct Tickets {
    reserved: AtomicU64,
    pub progress: Progress,
    settled: Mutex<Settled>,
    /// Told at every release (progress may stay behind an earlier ticket).
    released: tokio::sync::Notify,
    /// Tickets whose write failed (`true`: JetStream did not answer) or was not made (the
    /// entry names another node): what waited for them must not go out as if it was. The
    /// oldest are forgotten beyond [`MAX_FAILED`] (a ticket never comes twice).
    failed: Mutex<(HashMap<Ticket, bool>, VecDeque<Ticket>)>,
}

/// Failed tickets remembered, at most.
const MAX_FAILED: usize = 4096;

impl Tickets {
    /// A ticket for the next write.
    pub fn reserve(&self) -> Ticket {
        self.reserved.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// Whether the write of `ticket` is done (or given up), whatever came before it.
    pub fn is_released(&self, ticket: Ticket) -> bool {
        let settled = self.settled.lock().unwrap_or_else(|e| e.into_inner());
        ticket <= settled.upto || settled.done.contains(&ticket)
    }

    /// The writes of `tickets` failed (`unanswered`: JetStream did not answer) or were not
    /// made (before they are released).
    pub fn fail(&self, tickets: &[Ticket], unanswered: bool) {
        if tickets.is_empty() {
            return;
        }
        let mut failed = self.failed.lock().unwrap_or_else(|e| e.into_inner());
        let (set, order) = &mut *failed;
        for t in tickets {
            if set.insert(*t, unanswered).is_none() {
                order.push_back(*t);
            }
        }
        while order.len() > MAX_FAILED {
            if let Some(t) = order.pop_front() {
                set.remove(&t);
            }
        }
    }

    /// Whether the write of `ticket`, released, was made ([`Tickets::fail`]).
    pub fn was_kept(&self, ticket: Ticket) -> bool {
        !self
            .failed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .0
            .contains_key(&ticket)
    }

    /// Whether the write of `ticket`, released, failed because JetStream did not answer.
    pub fn was_unanswered(&self, ticket: Ticket) -> bool {
        self.failed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .0
            .get(&ticket)
            .copied()
            .unwrap_or(false)
    }

    /// The write of `ticket` is done (or given up).
    pub fn release(&self, ticket: Ticket) {
        let upto = self
            .settled
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .record(ticket);
        self.progress.advance(upto);
        self.released.notify_waiters();
    }
}

/// The receiving ends, for [`run`].
pub(crate) struct Receivers {
    stored: mpsc::UnboundedReceiver<(Ticket, Outgoing)>,
    qos0: mpsc::Receiver<Qos0Out>,
}

/// A QoS 0 message for core NATS, with its number among its connection's when a client
/// published it (flow control, `flow.rs`).
type Qos0 = (Arc<Message>, Option<Sent>);

/// What the QoS 0 channel carries: a message, or those a connection decoded from one read
/// ([`Outbound::publish_qos0_all`]).
enum Qos0Out {
    One(Qos0),
    Many(Vec<Qos0>),
}

impl Outbound {
    pub fn new(
        node: String,
        prefix: String,
        shards: u16,
        ack_timeout: Duration,
        qos0_pack: usize,
        qos1_pack: usize,
    ) -> (Outbound, Receivers) {
        let (stored_tx, stored) = mpsc::unbounded_channel();
        let (qos0_tx, qos0) = mpsc::channel(QOS0_QUEUE);
        let out = Outbound {
            node,
            prefix,
            shards,
            incarnation: random_u64(),
            counter: AtomicU64::new(0),
            submitted: AtomicU64::new(0),
            progress: Progress::default(),
            settled: Mutex::default(),
            stored_tx,
            qos0_tx,
            qos0_queued: AtomicUsize::new(0),
            ack_timeout,
            qos0_pack: qos0_pack.clamp(1, codec::PACK_MAX),
            qos1_pack: qos1_pack.clamp(1, codec::PACK_MAX),
            counters: OutboundCounters::default(),
            entries: Arc::default(),
            relist: std::sync::OnceLock::new(),
        };
        (out, Receivers { stored, qos0 })
    }

    /// Whether QoS 0 messages handed over now would soon be dropped: the core NATS queue is
    /// three quarters full, or the stored writes waiting approach [`QOS0_QUEUE`] (a retained
    /// QoS 0 message needs one). Publishers of QoS 0 wait while it holds.
    pub fn congested(&self) -> bool {
        self.qos0_queued.load(Ordering::Relaxed) > QOS0_QUEUE * 3 / 4
            || self.submitted().saturating_sub(self.progress.get()) >= (QOS0_QUEUE as u64) * 3 / 4
    }

    /// This run of the node (random, drawn at start).
    pub fn run(&self) -> u64 {
        self.incarnation
    }

    /// The ticket of the last stored message handed over.
    pub fn submitted(&self) -> Ticket {
        self.submitted.load(Ordering::Acquire)
    }

    /// Hand `msg`, published by a client of this node, to NATS (never blocks).
    pub fn publish(&self, msg: &Arc<Message>) {
        self.publish_counted(msg, None);
    }

    /// Hand `n` QoS 0 messages to the task that publishes them, or drop them (counted) if
    /// [`QOS0_QUEUE`] would be exceeded.
    fn queue_qos0(&self, item: Qos0Out, n: usize) {
        let queued = self.qos0_queued.fetch_add(n, Ordering::Relaxed);
        if queued + n > QOS0_QUEUE || self.qos0_tx.try_send(item).is_err() {
            self.qos0_queued.fetch_sub(n, Ordering::Relaxed);
            self.counters.qos0_dropped.fetch_add(n as u64, Ordering::Relaxed);
        }
    }

    /// [`Outbound::publish_counted`] for QoS 0 messages of one connection that are not
    /// retained, in their order, handed to the publishing task at once; leaves `batch`
    /// empty.
    pub fn publish_qos0_all(&self, batch: &mut Vec<(Arc<Message>, Sent)>) {
        let many: Vec<Qos0> = batch.drain(..).map(|(m, sent)| (m, Some(sent))).collect();
        let n = many.len();
        if n > 0 {
            self.queue_qos0(Qos0Out::Many(many), n);
        }
    }

    /// [`Outbound::publish`], with a QoS 0 message's number among its connection's
    /// ([`Sent`]), which travels with it (`codec::SENT`).
    pub fn publish_counted(&self, msg: &Arc<Message>, sent: Option<Sent>) {
        let qos0 = msg.qos == QoS::AtMostOnce;
        // Kept in the retained bucket (key: the encoded topic), in the same order of tickets:
        // a QoS 1/2 PUBACK waits for both writes.
        if msg.retain {
            let out = self.retained_write(msg, codec::headers(msg, &self.node));
            // A QoS 0 publisher does not wait for its message to be stored, so nothing slows
            // it down: its retained writes are dropped beyond QOS0_QUEUE waiting ones.
            let waiting = self.submitted().saturating_sub(self.progress.get());
            if qos0 && waiting >= QOS0_QUEUE as u64 {
                self.counters.qos0_dropped.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(topic = %msg.topic, "retained QoS 0 message not stored in the cluster: {QOS0_QUEUE} writes wait already");
            } else {
                self.submit(out);
            }
        }
        // A QoS 0 message's headers are written by the task that publishes it (once for a
        // pack of them).
        if qos0 {
            self.queue_qos0(Qos0Out::One((msg.clone(), sent)), 1);
            return;
        }
        let headers = codec::headers(msg, &self.node);
        let k = streams::shard_of(msg.publisher.as_deref(), self.shards);
        // Only a QoS 2 message needs JetStream's deduplication (a retried publish stored
        // once): a QoS 1 message stored twice after a lost answer is a duplicate QoS 1
        // allows, and the `Nats-Msg-Id` costs each NATS server a map entry per message
        // for the duplicate window (measured: about a fifth of the cross-node QoS 1 rate).
        // The id is the message's own (a QoS 2 delivery of it on this node may have given
        // it one already): a node recovering a session finds by it which messages it read
        // back were in flight or delivered.
        let (headers, placed, hold) = if msg.qos == QoS::ExactlyOnce {
            (
                self.with_id(headers, self.id_of(msg)),
                Some((msg.clone(), k)),
                msg.backplane_hold(),
            )
        } else {
            (headers, None, None)
        };
        self.submit(Outgoing {
            subject: topic::encode_topic(&streams::shard_subject(&self.prefix, k), &msg.topic),
            headers,
            payload: msg.payload.clone(),
            placed,
            from: msg.publisher.clone(),
            hold,
            packable: codec::packable_stored(msg),
            shard: Some(k),
        });
    }

    /// The write of `msg` (retained) into the retained bucket: an empty payload purges the key.
    fn retained_write(&self, msg: &Message, mut headers: HeaderMap) -> Outgoing {
        if msg.payload.is_empty() {
            headers.insert("KV-Operation", "PURGE");
            headers.insert(async_nats::header::NATS_ROLLUP, "sub");
        }
        Outgoing {
            subject: topic::encode_topic(&streams::retain_subject(&self.prefix), &msg.topic),
            headers: self.with_id(headers, self.fresh_id()),
            payload: msg.payload.clone(),
            placed: None,
            from: None,
            hold: None,
            packable: false,
            shard: None,
        }
    }

    /// Delete the retained message of `topic` from the retained bucket (the operator deleted
    /// it on this node): the other nodes drop it too, and no message is sent.
    pub fn delete_retained(&self, topic: &str) {
        let empty = Message::new(topic.to_string(), Bytes::new(), QoS::AtMostOnce, true);
        let headers = codec::headers(&empty, &self.node);
        let out = self.retained_write(&empty, headers);
        self.submit(out);
    }

    /// `headers` with the `Nats-Msg-Id` of the message with `id`: a retried publish is
    /// stored once.
    fn with_id(&self, mut headers: HeaderMap, id: (u64, u64)) -> HeaderMap {
        headers.insert(
            async_nats::header::NATS_MESSAGE_ID,
            codec::message_id(&self.node, id).as_str(),
        );
        headers
    }

    /// An id no other message of the cluster has: this run of the node, and a count.
    pub fn fresh_id(&self) -> (u64, u64) {
        (self.incarnation, self.counter.fetch_add(1, Ordering::Relaxed))
    }

    /// The id of `msg` in the cluster, given one if it has none yet.
    pub fn id_of(&self, msg: &Message) -> (u64, u64) {
        msg.backplane_id_or(|| self.fresh_id())
    }

    /// Number `out` and hand it to the task that stores it.
    fn submit(&self, out: Outgoing) {
        // The ticket is taken and sent under one lock so that tickets enter the channel in
        // order (the JetStream publishes then go out in the order of the clients' PUBLISHes).
        let settled = self.settled.lock().unwrap_or_else(|e| e.into_inner());
        let ticket = self.submitted.load(Ordering::Relaxed) + 1;
        tracing::trace!(ticket, subject = %out.subject, "to store");
        if self.stored_tx.send((ticket, out)).is_ok() {
            self.submitted.store(ticket, Ordering::Release);
        }
        drop(settled);
    }

    /// `ticket` is stored: advance the progress over every ticket stored without a gap.
    fn settle(&self, ticket: Ticket) {
        self.counters.stored.fetch_add(1, Ordering::Relaxed);
        self.settle_uncounted(ticket);
    }

    /// `ticket` is done (stored, or refused: [`BackplaneMark::refuse`]), not counted as stored.
    ///
    /// [`BackplaneMark::refuse`]: tern_broker::BackplaneMark::refuse
    fn settle_uncounted(&self, ticket: Ticket) {
        let upto = self
            .settled
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .record(ticket);
        tracing::trace!(ticket, upto, "settled");
        self.progress.advance(upto);
    }
}

/// 64 random bits (the run of a node).
fn random_u64() -> u64 {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 8];
    // The clock and the process id if the system has no randomness to give.
    if ring::rand::SystemRandom::new().fill(&mut b).is_err() {
        return codec::wall_ms() << 20 ^ u64::from(std::process::id());
    }
    u64::from_le_bytes(b)
}

/// Hand this node's QoS 0 messages to core NATS until the node is dropped: what waits
/// together goes in packs (`codec::pack`), each within NATS' `max_payload`.
async fn send_qos0(out: Arc<Outbound>, client: async_nats::Client, mut qos0: mpsc::Receiver<Qos0Out>) {
    let subjects = format!("{}.t", out.prefix);
    // Taken a few packs at a time: connections that run at once on different threads
    // interleave their messages in the channel, and a pack takes one connection's.
    let take = out.qos0_pack.saturating_mul(QOS0_TAKE_PACKS).min(QOS0_QUEUE);
    let mut waiting = Vec::with_capacity(take);
    let mut buf = bytes::BytesMut::new();
    let add = |waiting: &mut Vec<Qos0>, item: Qos0Out| match item {
        Qos0Out::One(m) => waiting.push(m),
        Qos0Out::Many(many) => waiting.extend(many),
    };
    while let Some(item) = qos0.recv().await {
        add(&mut waiting, item);
        // What else waits, and, not full, once more after the tasks ready now had their
        // turn: a task that took each message as it came would mostly send them alone
        // (measured: most QoS 0 messages went alone in cross-node pairs, at half the rate).
        for again in [false, true] {
            if again && waiting.len() < take {
                tokio::task::yield_now().await;
            }
            while waiting.len() < take {
                match qos0.try_recv() {
                    Ok(item) => add(&mut waiting, item),
                    Err(_) => break,
                }
            }
        }
        out.qos0_queued.fetch_sub(waiting.len(), Ordering::Relaxed);
        group_by_connection(&mut waiting);
        let mut rest = &waiting[..];
        while let Some((first, first_sent)) = rest.first() {
            let subject = topic::encode_topic(&subjects, &first.topic);
            let mut headers = codec::headers(first, &out.node);
            // The messages after it that may share its NATS message: from the same
            // connection too (one number says how far the pack goes).
            let mut n = 1;
            let conn = first_sent.map(|s| s.conn_id);
            let same = |(m, sent): &Qos0| codec::packable(first, m) && sent.map(|s| s.conn_id) == conn;
            if rest.len() > 1 && same(&rest[1]) {
                let room = codec::pack_room(&headers, client.max_payload());
                let mut bytes = 4 + first.payload.len();
                for m in &rest[1..] {
                    bytes += 4 + m.0.payload.len();
                    if n == out.qos0_pack || bytes > room || !same(m) {
                        break;
                    }
                    n += 1;
                }
            }
            let (these, after) = rest.split_at(n);
            rest = after;
            if let Some(last) = these[n - 1].1 {
                codec::set_sent(&mut headers, out.incarnation, last);
            }
            if n == 1 {
                qos0_publish(&out, &client, subject, headers, first.payload.clone()).await;
                continue;
            }
            headers.insert(codec::PACK, n.to_string().as_str());
            let payload = codec::pack(these.iter().map(|(m, _)| &m.payload), &mut buf);
            match client
                .publish_with_headers(subject.clone(), headers, payload)
                .await
            {
                Ok(()) => {
                    out.counters.qos0_packs.fetch_add(1, Ordering::Relaxed);
                    out.counters.qos0_sent.fetch_add(n as u64, Ordering::Relaxed);
                }
                // NATS' `max_payload` became smaller (another server after a reconnect):
                // each alone.
                Err(e) if e.kind() == async_nats::client::PublishErrorKind::MaxPayloadExceeded => {
                    tracing::warn!(
                        subject,
                        messages = n,
                        "a QoS 0 pack is refused ({e}); sending its messages one by one"
                    );
                    for (m, sent) in these {
                        let mut headers = codec::headers(m, &out.node);
                        if let Some(s) = sent {
                            codec::set_sent(&mut headers, out.incarnation, *s);
                        }
                        qos0_publish(&out, &client, subject.clone(), headers, m.payload.clone()).await;
                    }
                }
                Err(e) => {
                    tracing::debug!("a QoS 0 pack is dropped: {e}");
                    out.counters.qos0_dropped.fetch_add(n as u64, Ordering::Relaxed);
                }
            }
        }
        waiting.clear();
    }
}

/// Packs' worth of QoS 0 messages [`send_qos0`] takes from its channel at once, at most.
const QOS0_TAKE_PACKS: usize = 8;

/// Put the messages of each connection in `batch` next to each other, each connection's in
/// the order they came, so that they can share packs. Order is kept per connection (its
/// client's messages); between clients there is none to keep, and a client's connection
/// taken over by a new one has the lower number, so its messages stay first. A message
/// without a number
/// (a will, which follows everything its client sent) stays where it is, and nothing is
/// moved past it.
fn group_by_connection(batch: &mut [Qos0]) {
    for run in batch.split_mut(|(_, sent)| sent.is_none()) {
        // Stable: a connection's messages keep their order.
        run.sort_by_key(|(_, sent)| sent.map(|s| s.conn_id));
    }
}

/// Publish one QoS 0 message, counted as sent or dropped.
async fn qos0_publish(
    out: &Outbound,
    client: &async_nats::Client,
    subject: String,
    headers: HeaderMap,
    payload: Bytes,
) {
    match client.publish_with_headers(subject, headers, payload).await {
        Ok(()) => out.counters.qos0_sent.fetch_add(1, Ordering::Relaxed),
        Err(e) => {
            tracing::debug!("a QoS 0 message is dropped: {e}");
            out.counters.qos0_dropped.fetch_add(1, Ordering::Relaxed)
        }
    };
}

/// Publish what the node hands over until the node is dropped.
pub(crate) async fn run(
    out: Arc<Outbound>,
    client: async_nats::Client,
    js: jetstream::Context,
    rx: Receivers,
) {
    let Receivers { mut stored, qos0 } = rx;
    let qos0_task = tokio::spawn(send_qos0(out.clone(), client.clone(), qos0));
    // The answers awaited (and the retries), in this task: a task per message cost more
    // than the wait itself.
    let mut waiting = FuturesUnordered::new();
    let entries = out.entries.clone();
    // Messages held for an entry write ([`Outgoing::hold`]), with those of the same publisher
    // after them, by publisher (empty unless a publisher's session keeps QoS 2 state); and
    // those to send now, in order.
    let mut held: HashMap<Arc<str>, VecDeque<(Ticket, Outgoing)>> = HashMap::new();
    // With each, whether its publisher's entry write failed for want of an answer from
    // JetStream (asked as it is taken: the failed tickets are forgotten beyond a bound). One
    // not made because another node claimed the session is stored as before: a live
    // handover waits for it and passes its id on.
    let mut ready: VecDeque<(Ticket, Outgoing, bool)> = VecDeque::new();
    let unlisted = |m: &Outgoing| m.hold.is_some_and(|t| entries.was_unanswered(t));
    // What is to be sent this round, packed (reused); the open QoS 1 pack of each publisher
    // while they are made; the buffer packs are written into.
    let mut units: VecDeque<Unit> = VecDeque::new();
    let mut open: HashMap<Arc<str>, usize> = HashMap::new();
    // The number of the next first attempt to each shard (`codec::set_order`).
    let mut numbers: Vec<u64> = vec![0; usize::from(out.shards)];
    let mut buf = bytes::BytesMut::new();
    loop {
        // Registered before the held messages are looked at: a write done after it wakes the
        // wait. A message waits for its own write only (one of another client may be slower).
        let released = entries.released.notified();
        let mut released = std::pin::pin!(released);
        if !held.is_empty() {
            released.as_mut().enable();
        }
        let written = entries.progress.get();
        // A message held behind its publisher's earlier ones or its entry write, or ready.
        let take = |ticket: Ticket,
                    m: Outgoing,
                    held: &mut HashMap<Arc<str>, VecDeque<(Ticket, Outgoing)>>,
                    ready: &mut VecDeque<(Ticket, Outgoing, bool)>| match &m.from {
            Some(from) if held.contains_key(from) || m.hold.is_some_and(|t| t > written) => {
                held.entry(from.clone()).or_default().push_back((ticket, m));
            }
            _ => {
                let failed = unlisted(&m);
                ready.push_back((ticket, m, failed));
            }
        };
        if !held.is_empty() {
            held.retain(|_, queue| {
                while queue
                    .front()
                    .is_some_and(|(_, m)| m.hold.is_none_or(|t| t <= written || entries.is_released(t)))
                {
                    if let Some((ticket, m)) = queue.pop_front() {
                        let failed = unlisted(&m);
                        ready.push_back((ticket, m, failed));
                    }
                }
                !queue.is_empty()
            });
        }
        if ready.is_empty() {
            tokio::select! {
                biased;
                Some(()) = waiting.next(), if !waiting.is_empty() => {}
                () = &mut released, if !held.is_empty() => {}
                next = stored.recv() => {
                    let Some((ticket, m)) = next else { break };
                    take(ticket, m, &mut held, &mut ready);
                }
            }
        }
        // What else waits already, so that QoS 1 messages can go in packs.
        if out.qos1_pack > 1 {
            for _ in 0..DRAIN {
                let Ok((ticket, m)) = stored.try_recv() else { break };
                take(ticket, m, &mut held, &mut ready);
            }
        }
        units.extend(
            ready
                .drain(..)
                .map(|(ticket, m, failed)| Unit::one(ticket, m, failed)),
        );
        if out.qos1_pack > 1 {
            pack_units(&mut units, &mut open, out.qos1_pack, client.max_payload());
        }
        // The entry writes made for this round of messages, by publisher.
        let mut written_again: HashMap<Arc<str>, bool> = HashMap::new();
        'units: while let Some(Unit {
            ticket,
            m,
            failed,
            more,
        }) = units.pop_front()
        {
            // A pack goes as one message; its messages are kept until its first attempt, in
            // case it has to go one by one.
            let (mut m, mut whole) = match more {
                None => (m, None),
                Some(pack) => (pack.outgoing(&m, &mut buf), Some((m, pack))),
            };
            // A QoS 2 message whose publisher's entry could not list its packet id (its
            // PUBREC was not sent): stored only once an entry lists it, and not at all when
            // another node has the session now (which takes the client's resend as new): a
            // node cut off from NATS, then back, would otherwise store it a second time.
            // Whether the session here still awaits it is not asked: the cluster's copy of
            // its ids can be emptier than the broker's (a handover that failed), and a
            // resend the broker answers as a duplicate would then never be stored.
            if let (true, Some((msg, _)), Some(from)) = (failed, &m.placed, &m.from) {
                let mark = msg.backplane_mark();
                let listed = match out.relist.get() {
                    None => true,
                    Some(r) => match written_again.get(from) {
                        Some(&mine) => mine,
                        None => {
                            let mine = relisted(r, &client, from, &mut waiting).await;
                            written_again.insert(from.clone(), mine);
                            mine
                        }
                    },
                };
                if !listed {
                    out.counters.refused.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(subject = %m.subject, ticket, client_id = %from, "a QoS 2 message whose packet id its publisher's entry could not list is not stored: another node has the session now and takes the client's resend as new");
                    mark.refuse();
                    out.settle_uncounted(ticket);
                    continue;
                }
            }
            // The first attempt goes out here, in order; waiting for its answer (and
            // retrying) happens apart, so that up to `max_ack_inflight` are in flight.
            // The answers are taken meanwhile: each holds one of those permits until it
            // is taken, and the attempt may be waiting for one.
            // A first attempt the client does not take (its queue full while it
            // reconnects, no permit within the limit) is tried again here, before any
            // later message: one that was never sent is not stored after later ones.
            // Numbered in the order first attempts go out, which is the order JetStream
            // stores them in unless one is lost while a later one is not (`order.rs`). A
            // number is used once the NATS client took the message: one it did not take
            // goes again with it, and a pack split before it went out leaves it to its first
            // message.
            let number = m.shard.and_then(|k| numbers.get_mut(usize::from(k))).map(|n| {
                codec::set_order(&mut m.headers, out.incarnation, *n);
                n
            });
            let mut backoff = Duration::from_millis(50);
            let first = loop {
                match taking_answers(send(&js, &m), &mut waiting).await {
                    Ok(ack) => break ack,
                    // A server with a smaller `max_payload` than the one the pack was made
                    // for: its messages go one by one, in order, before anything after it.
                    Err(e) if e.too_large && whole.is_some() => {
                        if let Some((first, pack)) = whole.take() {
                            out.counters.qos1_packs_split.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(subject = %m.subject, messages = pack.tickets.len() + 1, "a QoS 1 pack is refused ({e}); storing its messages one by one");
                            for u in pack.alone(ticket, first).into_iter().rev() {
                                units.push_front(u);
                            }
                        }
                        continue 'units;
                    }
                    Err(e) => {
                        out.counters.retries.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(subject = %m.subject, ticket, "a message was not handed to NATS, trying again in order: {e}");
                        taking_answers(tokio::time::sleep(backoff), &mut waiting).await;
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                    }
                }
            };
            if let Some(n) = number {
                *n += 1;
            }
            // A pack's other messages are settled with it.
            let more = whole.map(|(_, pack)| pack.tickets).unwrap_or_default();
            waiting.push(confirm(&out, &js, ticket, more, m, Ok(first)));
        }
    }
    qos0_task.abort();
}

/// Messages taken at once from the hand-over channel, at most, when QoS 1 packs are made.
const DRAIN: usize = 1024;

/// One JetStream publish of a round: a message, or the first of a QoS 1 pack with the rest.
struct Unit {
    ticket: Ticket,
    m: Outgoing,
    /// Whether its publisher's entry write failed for want of an answer (see `run`).
    failed: bool,
    more: Option<Pack>,
}

impl Unit {
    fn one(ticket: Ticket, m: Outgoing, failed: bool) -> Unit {
        Unit {
            ticket,
            m,
            failed,
            more: None,
        }
    }
}

/// The messages of a QoS 1 pack after its first: their tickets and payloads, in order.
struct Pack {
    tickets: Vec<Ticket>,
    payloads: Vec<Bytes>,
    /// What the pack's payload takes so far (each message with its length), and may take.
    bytes: usize,
    room: usize,
}

impl Pack {
    /// The pack as one message: `first`'s subject and headers, with the count, and the
    /// payloads packed (`codec::pack`).
    fn outgoing(&self, first: &Outgoing, buf: &mut bytes::BytesMut) -> Outgoing {
        let mut headers = first.headers.clone();
        headers.insert(codec::PACK, (self.tickets.len() + 1).to_string().as_str());
        let payload = codec::pack(std::iter::once(&first.payload).chain(&self.payloads), buf);
        Outgoing {
            subject: first.subject.clone(),
            headers,
            payload,
            placed: None,
            from: first.from.clone(),
            hold: None,
            packable: false,
            shard: first.shard,
        }
    }

    /// Its messages as units of their own, `first` (with `ticket`) first.
    fn alone(self, ticket: Ticket, first: Outgoing) -> Vec<Unit> {
        let like = |payload: Bytes| Outgoing {
            subject: first.subject.clone(),
            headers: first.headers.clone(),
            payload,
            placed: None,
            from: first.from.clone(),
            hold: None,
            packable: false,
            shard: first.shard,
        };
        let rest = self.tickets.into_iter().zip(self.payloads);
        std::iter::once((ticket, first.payload.clone()))
            .chain(rest)
            .map(|(t, payload)| Unit::one(t, like(payload), false))
            .collect()
    }
}

/// Make QoS 1 packs of `units` (single messages, in the order they were handed over): a
/// publisher's QoS 1 message joins its open pack when it goes to the same topic and the pack
/// has fewer than `max` messages and room within `max_payload`; otherwise it opens a new
/// one. Anything else of the publisher closes its open pack, so that its messages are
/// stored in the order it sent them; other publishers' messages may come between.
fn pack_units(
    units: &mut VecDeque<Unit>,
    open: &mut HashMap<Arc<str>, usize>,
    max: usize,
    max_payload: usize,
) {
    if units.len() < 2 {
        return;
    }
    open.clear();
    for u in std::mem::take(units) {
        let Some(from) = u.m.from.clone() else {
            units.push_back(u);
            continue;
        };
        if !u.m.packable || u.failed {
            open.remove(&from);
            units.push_back(u);
            continue;
        }
        if let Some(head) = open.get(&from).and_then(|&at| units.get_mut(at)) {
            let size = 4 + u.m.payload.len();
            let pack = head.more.get_or_insert_with(|| Pack {
                tickets: Vec::new(),
                payloads: Vec::new(),
                bytes: 4 + head.m.payload.len(),
                room: codec::pack_room(&head.m.headers, max_payload),
            });
            if head.m.subject == u.m.subject && pack.tickets.len() + 1 < max && pack.bytes + size <= pack.room
            {
                pack.bytes += size;
                pack.tickets.push(u.ticket);
                pack.payloads.push(u.m.payload);
                continue;
            }
            if pack.tickets.is_empty() {
                head.more = None;
            }
        }
        open.insert(from, units.len());
        units.push_back(u);
    }
}

/// Await `f`, taking the answers to earlier stores meanwhile (each holds one of the
/// `max_ack_inflight` permits until it is taken, and `f` may be waiting for one).
async fn taking_answers<T, F: std::future::Future<Output = ()>>(
    f: impl std::future::Future<Output = T>,
    waiting: &mut FuturesUnordered<F>,
) -> T {
    tokio::pin!(f);
    loop {
        tokio::select! {
            biased;
            r = &mut f => return r,
            Some(()) = waiting.next(), if !waiting.is_empty() => {}
        }
    }
}

/// Write `client`'s entry again with the incoming QoS 2 ids its session holds now
/// ([`Relist::write`]), trying again while it fails (the answers to earlier stores are taken
/// meanwhile): whether the entry is this node's. While NATS is connected, at most
/// [`RELIST_AT_MOST`]; then `true` (stored: a possible duplicate, never a loss).
async fn relisted<F: std::future::Future<Output = ()>>(
    relist: &Relist,
    nats: &async_nats::Client,
    client: &Arc<str>,
    waiting: &mut FuturesUnordered<F>,
) -> bool {
    let mut backoff = Duration::from_millis(50);
    let mut connected_for = Duration::ZERO;
    loop {
        let started = tokio::time::Instant::now();
        match taking_answers((relist.write)(client.clone()), waiting).await {
            Ok(mine) => return mine,
            Err(e) => {
                let connected = nats.connection_state() == async_nats::connection::State::Connected;
                if connected {
                    connected_for += started.elapsed() + backoff;
                    if connected_for >= RELIST_AT_MOST {
                        tracing::warn!(client_id = %client, "a QoS 2 message is stored although its publisher's entry could not list it ({e}): a duplicate is possible if another node has the session");
                        return true;
                    }
                }
                tracing::warn!(client_id = %client, "a QoS 2 message waits for its publisher's entry to list it: {e}");
                taking_answers(tokio::time::sleep(backoff), waiting).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// Wait for JetStream's answer to `first`, the first attempt to store `m`, retrying until it
/// is stored; then settle `ticket` and, for a QoS 1 pack, the tickets of its other messages
/// (`more`).
async fn confirm(
    out: &Outbound,
    js: &jetstream::Context,
    ticket: Ticket,
    more: Vec<Ticket>,
    m: Outgoing,
    first: Result<jetstream::context::PublishAckFuture, SendError>,
) {
    let mut attempt = first;
    let mut backoff = Duration::from_millis(50);
    let mut tries: u32 = 0;
    let mut refused = false;
    // A pack stored one message at a time (`store_alone`).
    let mut split = false;
    loop {
        let r = match attempt {
            Ok(ack) => ack.await.map_err(|e| SendError::other(e.to_string())),
            Err(e) => Err(e),
        };
        match r {
            Ok(ack) => {
                if let Some((msg, k)) = &m.placed {
                    // Only a message its publisher's entry listed ([`Outgoing::hold`]) can
                    // have had its id taken by a placeholder; any other duplicate is a retry.
                    if ack.duplicate && m.hold.is_some() && !placed_before(out, js, *k, ack.sequence).await {
                        out.counters.refused.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(subject = %m.subject, ticket, client_id = ?m.from, "a QoS 2 message is refused by JetStream as a duplicate of a placeholder: a node recovering its publisher's session found it not stored; it is not acknowledged, and its resend is stored as new");
                        msg.backplane_mark().refuse();
                        refused = true;
                    } else {
                        msg.set_backplane_position(*k, ack.sequence);
                    }
                }
                break;
            }
            Err(e) => {
                // A QoS 1 pack that a server with a smaller `max_payload` refuses when it is
                // tried again: its messages are stored one by one (after every earlier
                // message: it went again only then, below).
                if e.too_large && codec::count(Some(&m.headers)) > 1 {
                    tracing::warn!(subject = %m.subject, ticket, "a QoS 1 pack is refused ({e}); storing its messages one by one");
                    if store_alone(out, js, &m).await {
                        out.counters.qos1_packs_split.fetch_add(1, Ordering::Relaxed);
                        split = true;
                        break;
                    }
                }
                out.counters.retries.fetch_add(1, Ordering::Relaxed);
                tries += 1;
                // Logged at its 1st, 2nd, 4th, 8th... attempt.
                if tries.is_power_of_two() {
                    tracing::warn!(subject = %m.subject, ticket, tries, "JetStream did not store a message, retrying: {e}");
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                // Earlier messages first: a message goes again only once every earlier one
                // is stored (those that failed too go again first, in their order), so that
                // messages whose attempts all failed together (a server that stopped
                // answering, packs it refuses as too large) are stored in the order they came.
                // No acknowledgement passes an unstored earlier message anyway (progress is
                // gap-free), so this holds up nothing that was not held up already.
                let before = ticket.saturating_sub(1);
                while out.progress.get() < before && !out.progress.has_failed() {
                    out.progress.wait_past(out.progress.get()).await;
                }
                attempt = send(js, &m).await;
            }
        }
    }
    match refused {
        true => out.settle_uncounted(ticket),
        false => out.settle(ticket),
    }
    // A QoS 1 pack's other messages (never refused: only a QoS 2 message is).
    if !more.is_empty() && !split {
        out.counters.qos1_packs.fetch_add(1, Ordering::Relaxed);
    }
    for t in more {
        out.settle(t);
    }
}

/// Whether the QoS 2 message JetStream answered as a duplicate, of the message at `sequence`
/// of shard `k`'s stream, was stored before: by an earlier attempt of this node (a retry
/// after a lost answer), or not, when a node that took its publisher's session for one of a
/// dead node stored a placeholder under its id (a node cut off from NATS for longer than
/// the claim's grace, then back: `sessions::stored`). Asked again while JetStream does not
/// answer, for at most [`PLACED_WAIT`] (every acknowledgement on this node waits meanwhile,
/// for the gap-free progress of its stores), then taken as not stored: its resend is stored
/// again (a duplicate, never an acknowledged loss).
async fn placed_before(out: &Outbound, js: &jetstream::Context, k: u16, sequence: u64) -> bool {
    let ask = async {
        let mut backoff = Duration::from_millis(50);
        loop {
            match streams::message_at(js, &out.prefix, k, sequence).await {
                Ok(found) => return found == Some(true),
                Err(e) => {
                    tracing::debug!("is the message JetStream took for a duplicate stored? {e}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    };
    tokio::time::timeout(PLACED_WAIT, ask).await.unwrap_or(false)
}

/// Store each message of the QoS 1 pack `m` alone, in order, each until it is stored; `false`
/// (nothing stored) if `m` is not a pack as this node makes them, which never happens.
async fn store_alone(out: &Outbound, js: &jetstream::Context, m: &Outgoing) -> bool {
    let n = codec::count(Some(&m.headers));
    let Ok(parts) = codec::unpack(&m.payload, n) else {
        tracing::error!(subject = %m.subject, "a QoS 1 pack of this node does not hold what it counts");
        return false;
    };
    let mut headers = HeaderMap::new();
    for (name, values) in m.headers.iter() {
        if AsRef::<str>::as_ref(name) != codec::PACK {
            for v in values {
                headers.append(name.clone(), v.clone());
            }
        }
    }
    for payload in parts {
        let alone = Outgoing {
            subject: m.subject.clone(),
            headers: headers.clone(),
            payload,
            placed: None,
            from: m.from.clone(),
            hold: None,
            packable: false,
            // Stored again with the pack's number (its headers have it): a number already
            // past, which readers let through as it comes.
            shard: None,
        };
        let mut backoff = Duration::from_millis(50);
        loop {
            let stored = match send(js, &alone).await {
                Ok(ack) => ack.await.map_err(|e| SendError::other(e.to_string())),
                Err(e) => Err(e),
            };
            match stored {
                Ok(_) => break,
                Err(e) => {
                    out.counters.retries.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(subject = %alone.subject, "JetStream did not store a message of a pack, retrying: {e}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }
    true
}

/// Why an attempt to store a message was not handed to NATS, or not stored.
#[derive(Debug)]
struct SendError {
    text: String,
    /// Larger than the connected server's `max_payload` (nothing was sent).
    too_large: bool,
}

impl SendError {
    fn other(text: String) -> SendError {
        SendError {
            text,
            too_large: false,
        }
    }
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

/// Hand one attempt to the client. Bounded in time: while the client reconnects its queue
/// can be full, and a publish that waits for it holds up every message behind it.
async fn send(
    js: &jetstream::Context,
    m: &Outgoing,
) -> Result<jetstream::context::PublishAckFuture, SendError> {
    let publish = js.publish_with_headers(m.subject.clone(), m.headers.clone(), m.payload.clone());
    match tokio::time::timeout(SEND_TIMEOUT, publish).await {
        Ok(r) => r.map_err(|e| SendError {
            too_large: e.kind() == jetstream::context::PublishErrorKind::MaxPayloadExceeded,
            text: e.to_string(),
        }),
        Err(_) => Err(SendError::other(format!(
            "the NATS client did not take the message within {SEND_TIMEOUT:?}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A batch of QoS 0 messages is grouped by connection for packing: each connection's
    /// messages keep their order (v5 [MQTT-4.6.0-6]: order per publisher), and a message
    /// without a number (a will) is passed by nothing.
    #[test]
    fn a_batch_is_grouped_by_connection_in_each_connections_order_and_wills_stay_put() {
        let m = |payload: &str, conn: Option<u64>, count: u64| -> Qos0 {
            let msg = Arc::new(Message::new("t", payload.to_owned(), QoS::AtMostOnce, false));
            (msg, conn.map(|conn_id| Sent { conn_id, count }))
        };
        let mut batch = vec![
            m("b1", Some(2), 1),
            m("a1", Some(1), 1),
            m("b2", Some(2), 2),
            m("a2", Some(1), 2),
            m("will", None, 0),
            m("a3", Some(1), 3),
            m("c1", Some(3), 1),
            m("a4", Some(1), 4),
        ];
        group_by_connection(&mut batch);
        let order: Vec<&[u8]> = batch.iter().map(|(m, _)| &m.payload[..]).collect();
        assert_eq!(
            order,
            [&b"a1"[..], b"a2", b"b1", b"b2", b"will", b"a3", b"a4", b"c1"],
            "each connection's messages together, in their order, none past the will"
        );
    }

    /// Against a NATS server: a QoS 2 message of a node taken for dead, whose id a node
    /// recovering its publisher's session found not stored (its placeholder took the id),
    /// is refused: marked so (its PUBREC is not sent) and given no place. One answered as a
    /// duplicate of its own earlier store (a retry after a lost answer) is placed there.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_qos2_message_whose_id_a_placeholder_took_is_refused_and_a_retried_one_is_placed() {
        let nats = tern_testkit::nats::Nats::start(1, true);
        let client = async_nats::connect(nats.urls()[0].as_str())
            .await
            .expect("connect");
        let js = jetstream::new(client.clone());
        let prefix = "probe";
        streams::test_streams(&js, prefix, 2).await;
        let (out, rx) = Outbound::new("z".into(), prefix.into(), 2, Duration::from_secs(5), 1, 32);
        let out = Arc::new(out);
        let task = tokio::spawn(run(out.clone(), client.clone(), js.clone(), rx));
        // A message its publisher's entry lists (`listed`: its store waited for that write,
        // made here), or one of a session that does not outlive its connection.
        let message = |payload: &'static str, id: (u64, u64), listed: bool| {
            let mut m = Message::new("q2/t", payload, QoS::ExactlyOnce, false).with_backplane_id(id);
            m.publisher = Some("pub".into());
            if listed {
                let entry = out.entries.reserve();
                out.entries.release(entry);
                m.backplane_mark().hold_until(entry);
            }
            Arc::new(m)
        };
        let stored_all = |out: Arc<Outbound>| async move {
            let target = out.submitted();
            tokio::time::timeout(Duration::from_secs(10), async {
                while out.progress.get() < target {
                    out.progress.wait_past(out.progress.get()).await;
                }
            })
            .await
            .expect("stored in time");
        };
        // Stored, then handed over again (as a retry after a lost answer would be).
        let first = message("first", (9, 1), true);
        out.publish(&first);
        stored_all(out.clone()).await;
        let place = first.backplane_position().expect("placed");
        let again = message("first", (9, 1), true);
        out.publish(&again);
        stored_all(out.clone()).await;
        assert_eq!(
            again.backplane_position(),
            Some(place),
            "a retry is placed where its first store is"
        );
        assert!(!again.backplane_mark().refused());
        // Node r recovering the session of `pub` asks whether (9, 2) of node z is stored: its
        // placeholder takes the id. Node z, back, then stores the message late.
        assert_eq!(
            crate::sessions::stored(&js, prefix, 2, "r", "pub", "z", (9, 2)).await,
            Ok(false)
        );
        let late = message("late", (9, 2), true);
        out.publish(&late);
        stored_all(out.clone()).await;
        assert!(late.backplane_mark().refused(), "the late store is refused");
        assert_eq!(late.backplane_position(), None, "and has no place");
        assert_eq!(out.counters.refused.load(Ordering::Relaxed), 1);
        assert_eq!(
            out.counters.stored.load(Ordering::Relaxed),
            2,
            "the refused one is not counted as stored"
        );
        // Not listed, its id was never asked about: a duplicate of it is a retry.
        let unlisted = message("unlisted", (9, 1), false);
        out.publish(&unlisted);
        stored_all(out.clone()).await;
        assert_eq!(unlisted.backplane_position(), Some(place));
        assert_eq!(out.counters.refused.load(Ordering::Relaxed), 1);
        // What the stream holds: the first message once, and the placeholder.
        let k = streams::shard_of(Some("pub"), 2);
        let state = js
            .get_stream(streams::stream_name(prefix, k))
            .await
            .expect("stream")
            .info()
            .await
            .expect("info")
            .state
            .clone();
        assert_eq!(state.messages, 2);
        task.abort();
    }

    /// A stored message of `from` to `topic` as the store task gets it: QoS 1 (packable) or
    /// QoS 2.
    fn stored(from: &str, topic: &str, payload: &str, qos: QoS) -> Outgoing {
        let mut msg = Message::new(topic, payload.to_string(), qos, false);
        msg.publisher = Some(from.into());
        Outgoing {
            subject: topic::encode_topic("tern.m.0", topic),
            headers: codec::headers(&msg, "n"),
            payload: msg.payload.clone(),
            placed: None,
            from: msg.publisher.clone(),
            hold: None,
            packable: codec::packable_stored(&msg),
            shard: Some(0),
        }
    }

    /// Each unit as (tickets, payloads) in the order it would be stored.
    fn shapes(units: &VecDeque<Unit>) -> Vec<(Vec<Ticket>, Vec<String>)> {
        let text = |b: &Bytes| String::from_utf8_lossy(b).into_owned();
        units
            .iter()
            .map(|u| {
                let mut tickets = vec![u.ticket];
                let mut payloads = vec![text(&u.m.payload)];
                if let Some(p) = &u.more {
                    tickets.extend(&p.tickets);
                    payloads.extend(p.payloads.iter().map(text));
                }
                (tickets, payloads)
            })
            .collect()
    }

    #[test]
    fn qos1_packs_keep_each_publishers_order_and_their_bounds() {
        let q1 = QoS::AtLeastOnce;
        let list = [
            stored("a", "t", "a1", q1),
            stored("b", "t", "b1", q1),
            stored("a", "t", "a2", q1),
            stored("b", "t", "b2", q1),
            // Another topic: a new pack for a.
            stored("a", "u", "a3", q1),
            stored("a", "u", "a4", q1),
            // A QoS 2 message of b closes b's pack: b3 is not stored before it.
            stored("b", "t", "q2", QoS::ExactlyOnce),
            stored("b", "t", "b3", q1),
            stored("a", "u", "a5", q1),
            stored("a", "u", "a6", q1),
        ];
        let mut units: VecDeque<Unit> = list
            .into_iter()
            .enumerate()
            .map(|(i, m)| Unit::one(i as Ticket + 1, m, false))
            .collect();
        let mut open = HashMap::new();
        pack_units(&mut units, &mut open, 3, 1 << 20);
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(
            shapes(&units),
            vec![
                (vec![1, 3], s(&["a1", "a2"])),
                (vec![2, 4], s(&["b1", "b2"])),
                // At most 3 in a pack.
                (vec![5, 6, 9], s(&["a3", "a4", "a5"])),
                (vec![7], s(&["q2"])),
                (vec![8], s(&["b3"])),
                (vec![10], s(&["a6"])),
            ]
        );
        // Within `max_payload` with the headers: two 3,000-byte payloads in 8,000 bytes.
        let big = "x".repeat(3_000);
        let mut units: VecDeque<Unit> = (0..5)
            .map(|i| Unit::one(i + 1, stored("a", "t", &big, q1), false))
            .collect();
        pack_units(&mut units, &mut open, 32, 8_000);
        let sizes: Vec<usize> = shapes(&units).iter().map(|(t, _)| t.len()).collect();
        assert_eq!(
            sizes,
            vec![2, 2, 1],
            "8,000 bytes hold two 3,000-byte payloads with headers"
        );
        // A pack refused by a server with a smaller `max_payload` goes one by one, in order.
        let first = units.pop_front().expect("a pack");
        let pack = first.more.expect("packed");
        let alone = pack.alone(first.ticket, first.m);
        assert_eq!(
            alone
                .iter()
                .map(|u| (u.ticket, u.m.payload.len(), u.more.is_none()))
                .collect::<Vec<_>>(),
            vec![(1, 3_000, true), (2, 3_000, true)]
        );
        assert!(alone
            .iter()
            .all(|u| u.m.headers.get(codec::PACK).is_none() && !u.m.packable));
    }

    #[test]
    fn tickets_progress_over_the_gap_free_prefix_of_released_ones() {
        let t = Tickets::default();
        let (a, b) = (t.reserve(), t.reserve());
        assert_eq!((a, b), (1, 2));
        t.release(b);
        assert_eq!(t.progress.get(), 0, "ticket 1 is not written yet");
        t.release(a);
        assert_eq!(t.progress.get(), 2);
    }

    #[test]
    fn progress_reaches_the_last_ticket_when_neighbours_are_stored_at_the_same_moment() {
        let (out, _rx) = Outbound::new("n".into(), "tern".into(), 2, Duration::from_secs(1), 64, 32);
        let out = Arc::new(out);
        let barrier = Arc::new(std::sync::Barrier::new(2));
        const ROUNDS: u64 = 20_000;
        let threads: Vec<_> = (0..2u64)
            .map(|t| {
                let (out, barrier) = (out.clone(), barrier.clone());
                // In round r, tickets 2r+1 and 2r+2 are stored on two threads at once (the
                // order in which two JetStream acks can come); after both, progress must be
                // at 2r+2 with nothing more to come.
                std::thread::spawn(move || {
                    for r in 0..ROUNDS {
                        barrier.wait();
                        out.settle(2 * r + 1 + t);
                        barrier.wait();
                        if t == 0 {
                            assert_eq!(out.progress.get(), 2 * r + 2, "round {r}");
                        }
                        barrier.wait();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("thread");
        }
        out.settle(2 * ROUNDS + 2);
        assert_eq!(out.progress.get(), 2 * ROUNDS, "a gap holds progress back");
        out.settle(2 * ROUNDS + 1);
        assert_eq!(out.progress.get(), 2 * ROUNDS + 2);
    }
}
