//! Messages from the other nodes, into this node's sessions (through [`Admin::publish`]).
//!
//! - QoS 0: one core NATS subscription per distinct subject the local filters need, all in
//!   one queue group named after the node. NATS gives a queue group one copy of a message
//!   however many of its subscriptions match, so overlapping filters (`a/#` and `a/b`) bring
//!   a message in once; the broker then routes it to every local session that matches.
//!   Subscriptions follow the local filters (reference-counted) and are made by one task,
//!   so `Backplane::subscribed` never waits.
//! - QoS 1/2: one ordered consumer per shard stream (a tailer), started after the stream's
//!   last sequence at the node's start; it sees every stored message once, in stream order
//!   (an ordered consumer re-creates itself after a gap), and delivers them with each
//!   node's run's messages in the order they went out (`order.rs`: where JetStream stored a
//!   later one first, it holds back until the earlier one comes).
//!
//! - Retained messages: one ordered consumer on the retained bucket's stream, from the last
//!   value of every key at start, then every change, applied to the local retained store in
//!   the bucket's order (so every node ends with the bucket's value, whichever node set it).
//!
//! Messages this node published are skipped (`Tern-N`): they reached its sessions already.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use futures_util::{FutureExt, StreamExt};
use std::time::Instant;
use tern_broker::Admin;
use tokio::sync::Notify;

use crate::order::Reorder;
use crate::{codec, streams, topic};

/// Longest a pull request of a tailer waits on the server. The client follows it with its idle
/// heartbeat (half of it) and re-creates an ordered consumer after two missed heartbeats: with
/// async-nats' defaults (30 s, 15 s) a tailer whose stream changed leader stayed silent for up
/// to 30 s (measured: a message delivered 27.9 s after its PUBACK); with 2 s it resumes within
/// a few seconds, for one pull request per shard every 2 s on an idle node.
const PULL_EXPIRY: Duration = Duration::from_secs(2);

/// Counters of the inbound side.
#[derive(Debug, Default)]
pub struct InboundCounters {
    /// Messages from other nodes delivered into this node.
    pub received: AtomicU64,
    /// NATS messages that were not Tern messages (logged).
    pub undecodable: AtomicU64,
    /// Times a tailer held stored messages back because a later one of a node's run came
    /// before an earlier one (`order.rs`).
    pub order_holds: AtomicU64,
    /// Holds given up with an earlier message still missing (logged).
    pub order_given_up: AtomicU64,
}

/// The subjects this node's local filters need, with how many filters need each.
#[derive(Debug, Default)]
pub(crate) struct Interest {
    wanted: Mutex<HashMap<String, usize>>,
    changed: Notify,
}

impl Interest {
    fn subjects(prefix: &str, full_filter: &str) -> Vec<String> {
        let filter = match tern_proto::topic::parse_filter(full_filter) {
            Ok(p) => p.filter,
            Err(_) => return Vec::new(),
        };
        topic::encode_filter(&format!("{prefix}.t"), filter)
    }

    /// A local session subscribed to `full_filter`.
    pub fn add(&self, prefix: &str, full_filter: &str) {
        let mut w = self.wanted.lock().unwrap_or_else(|e| e.into_inner());
        let mut new = false;
        for s in Self::subjects(prefix, full_filter) {
            let n = w.entry(s).or_insert(0);
            *n += 1;
            new |= *n == 1;
        }
        drop(w);
        if new {
            self.changed.notify_one();
        }
    }

    /// A local session no longer subscribes to `full_filter`.
    pub fn remove(&self, prefix: &str, full_filter: &str) {
        let mut w = self.wanted.lock().unwrap_or_else(|e| e.into_inner());
        let mut gone = false;
        for s in Self::subjects(prefix, full_filter) {
            if let Some(n) = w.get_mut(&s) {
                *n -= 1;
                if *n == 0 {
                    w.remove(&s);
                    gone = true;
                }
            }
        }
        drop(w);
        if gone {
            self.changed.notify_one();
        }
    }

    fn snapshot(&self) -> std::collections::HashSet<String> {
        let w = self.wanted.lock().unwrap_or_else(|e| e.into_inner());
        w.keys().cloned().collect()
    }

    /// How many distinct subjects are wanted.
    pub fn len(&self) -> usize {
        self.wanted.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// What the inbound tasks share.
pub(crate) struct Inbound {
    pub node: String,
    pub prefix: String,
    pub admin: Admin,
    pub counters: Arc<InboundCounters>,
    /// Subjects subscribed on NATS now.
    pub subscribed: Arc<AtomicU64>,
    /// Per shard, the last stream sequence its tailer has handled (`sessions.rs` waits on it
    /// before a session leaves this node).
    pub positions: Arc<[AtomicU64]>,
    /// Tells other nodes how far their QoS 0 publishers may go for this node's sessions
    /// (`flow.rs`).
    pub teller: Arc<crate::flow::Teller>,
    /// Asks the tailers to give their holds up (`order.rs`).
    pub give_up: Arc<crate::order::GiveUp>,
}

impl Inbound {
    /// Deliver `ms` in order, queued together (each session locked and woken once); with a
    /// stored message, its shard and stream sequence. With `pressed`, the sessions they took
    /// to half their queue limits or beyond are added to it with their messages' publishers.
    fn deliver_all<'a>(
        &self,
        prefix: &str,
        ms: impl IntoIterator<Item = (&'a async_nats::Message, Option<(u16, u64)>)>,
        pressed: Option<&mut Vec<(tern_broker::PressedSession, Arc<str>)>>,
    ) {
        let now = std::time::Instant::now();
        let decoded = ms.into_iter().filter_map(|(m, position)| {
            if codec::node_of(m.headers.as_ref()) == Some(self.node.as_str()) {
                return None;
            }
            // One message or a pack: of QoS 0 messages from core NATS, of QoS 1 messages
            // stored (which share the pack's stream sequence).
            match codec::decode_all(prefix, &m.subject, m.headers.as_ref(), m.payload.clone()) {
                // Retained state comes from the retained bucket (`follow_retained`), in one
                // order for every node; here the message is only delivered.
                Ok((mut msg, mut rest)) => {
                    if let Some((k, seq)) = position {
                        // Where a QoS 2 message is: a delivered one is left out of the
                        // session's entry once its floor is past it.
                        if msg.qos == tern_proto::QoS::ExactlyOnce {
                            msg.set_backplane_position(k, seq);
                        }
                        // A session it goes to with a live handover (which does not carry
                        // arrival times) still says how far back it holds messages.
                        msg = msg.placed_at(k, seq);
                        rest = rest.into_iter().map(|m| m.placed_at(k, seq)).collect();
                    }
                    Some(std::iter::once(msg).chain(rest))
                }
                Err(codec::CodecError::Void) => None,
                Err(e) => {
                    self.counters.undecodable.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(subject = %m.subject, "not a Tern message: {e}");
                    None
                }
            }
        });
        // Its arrival time tells how far back a session's unacknowledged messages go
        // (`sessions.rs`, the floor of a session's record).
        let decoded = decoded.flatten().map(|m| m.arrived(now));
        let results = match pressed {
            Some(p) => self.admin.route_all_pressed(decoded, p),
            None => self.admin.route_all(decoded),
        };
        for r in results {
            match r {
                Ok(_) => self.counters.received.fetch_add(1, Ordering::Relaxed),
                Err(e) => {
                    tracing::warn!("message from the cluster not delivered: {e}");
                    0
                }
            };
        }
    }
}

/// Messages a QoS 0 subscription's task, or a tailer, takes at once when more are waiting (a pack
/// counts as the messages it carries).
const BATCH: usize = 256;

/// `first` and the QoS 0 NATS messages already waiting on `stream` after it, into `batch`,
/// up to [`BATCH`] messages (a pack counts as the messages it carries): one queueing per
/// session for all of them.
pub(crate) fn with_waiting<S>(
    stream: &mut S,
    first: async_nats::Message,
    batch: &mut Vec<async_nats::Message>,
) where
    S: futures_util::Stream<Item = async_nats::Message> + Unpin,
{
    let mut messages = codec::count(first.headers.as_ref());
    batch.push(first);
    while messages < BATCH {
        match stream.next().now_or_never() {
            Some(Some(m)) => {
                messages += codec::count(m.headers.as_ref());
                batch.push(m);
            }
            _ => break,
        }
    }
}

/// Keep the NATS subscriptions in step with `interest` until aborted.
pub(crate) async fn follow_interest(
    inbound: Arc<Inbound>,
    client: async_nats::Client,
    interest: Arc<Interest>,
) {
    let queue = format!("{}.node.{}", inbound.prefix, inbound.node);
    let prefix = format!("{}.t", inbound.prefix);
    // Dropped with this task: the subscriptions' tasks are aborted, which unsubscribes.
    let mut have: HashMap<String, crate::Aborting> = HashMap::new();
    loop {
        let changed = interest.changed.notified();
        let wanted = interest.snapshot();
        have.retain(|s, _| wanted.contains(s));
        for s in wanted {
            if have.contains_key(&s) {
                continue;
            }
            match client.queue_subscribe(s.clone(), queue.clone()).await {
                Ok(mut sub) => {
                    let (inbound, prefix, client) = (inbound.clone(), prefix.clone(), client.clone());
                    have.insert(
                        s,
                        crate::Aborting(tokio::spawn(async move {
                            let mut batch = Vec::with_capacity(BATCH);
                            let mut pressed = Vec::new();
                            while let Some(m) = sub.next().await {
                                with_waiting(&mut sub, m, &mut batch);
                                // QoS 0: the publishers of messages that took sessions
                                // over their limits are held back on their nodes
                                // (`flow.rs`); what sessions cannot take beyond that is
                                // dropped, as QoS 0 allows.
                                inbound.deliver_all(
                                    &prefix,
                                    batch.iter().map(|m| (m, None)),
                                    Some(&mut pressed),
                                );
                                let words = inbound.teller.routed(&batch, &pressed, false);
                                if !words.is_empty() {
                                    inbound.teller.say(&client, words).await;
                                }
                                pressed.clear();
                                batch.clear();
                            }
                        })),
                    );
                }
                Err(e) => {
                    tracing::warn!(subject = %s, "cannot subscribe on NATS (retried on the next change): {e}")
                }
            }
        }
        inbound.subscribed.store(have.len() as u64, Ordering::Relaxed);
        // A failed subscription is retried within a second even without a change.
        let _ = tokio::time::timeout(Duration::from_secs(1), changed).await;
    }
}

/// Deliver shard `k`'s stored messages from `start` on, until aborted.
pub(crate) async fn tail(inbound: Arc<Inbound>, js: jetstream::Context, k: u16, start: u64) {
    let name = streams::stream_name(&inbound.prefix, k);
    let prefix = streams::shard_subject(&inbound.prefix, k);
    let mut next = start;
    let mut backoff = Backoff::default();
    // Kept across restarts of the consumer: what it holds comes before what it reads next.
    let mut reorder = Reorder::default();
    loop {
        let result = tail_from(&inbound, &js, &name, &prefix, k, &mut next, &mut reorder).await;
        if let Err(e) = &result {
            tracing::warn!(stream = %name, next, "tailer restarts: {e}");
        }
        backoff.after(result).await;
    }
}

/// The wait before a follower of a stream starts again: 100 ms after a failure, doubling up
/// to 2 s while failures follow each other, back to 100 ms after a run that ended well.
struct Backoff(Duration);

impl Default for Backoff {
    fn default() -> Self {
        Backoff(Duration::from_millis(100))
    }
}

impl Backoff {
    /// Wait as `result` (the run that just ended) asks.
    async fn after<E>(&mut self, result: Result<(), E>) {
        match result {
            Ok(()) => *self = Backoff::default(),
            Err(_) => {
                tokio::time::sleep(self.0).await;
                self.0 = (self.0 * 2).min(Duration::from_secs(2));
            }
        }
    }
}

/// What a tailer holds back: NATS messages with their stream sequences.
type Held = Reorder<(async_nats::Message, u64)>;

/// Deliver `batch` (what the tailer let go, in order) and say how far the tailer is: up to
/// the message before the first it holds, or the last it read.
fn deliver_tailed(
    inbound: &Inbound,
    prefix: &str,
    k: u16,
    batch: &mut Vec<(async_nats::Message, u64)>,
    reorder: &Held,
    next: u64,
    seen: &mut (u64, u64),
) {
    if (reorder.holds, reorder.given_up) != *seen {
        let c = &inbound.counters;
        if reorder.holds > seen.0 {
            c.order_holds.fetch_add(reorder.holds - seen.0, Ordering::Relaxed);
            tracing::info!(shard = k, "a tailer holds messages back: a node's later message was stored before an earlier one, which it waits for");
        }
        if reorder.given_up > seen.1 {
            c.order_given_up
                .fetch_add(reorder.given_up - seen.1, Ordering::Relaxed);
            tracing::warn!(shard = k, "a tailer let messages it held go without a node's earlier message (that node may have died before storing it; or the hold ran out, or a session moving could not wait): the later ones went out first");
        }
        *seen = (reorder.holds, reorder.given_up);
    }
    if batch.is_empty() {
        return;
    }
    inbound.deliver_all(prefix, batch.iter().map(|(m, seq)| (m, Some((k, *seq)))), None);
    batch.clear();
    let position = match reorder.first_held() {
        Some((_, seq)) => seq.saturating_sub(1),
        None => next.saturating_sub(1),
    };
    if let Some(p) = inbound.positions.get(usize::from(k)) {
        p.store(position, Ordering::Release);
    }
}

async fn tail_from(
    inbound: &Inbound,
    js: &jetstream::Context,
    name: &str,
    prefix: &str,
    k: u16,
    next: &mut u64,
    reorder: &mut Held,
) -> Result<(), async_nats::Error> {
    let stream = js.get_stream(name).await?;
    let consumer = stream
        .create_consumer(consumer::pull::OrderedConfig {
            deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                start_sequence: (*next).max(1),
            },
            max_expires: PULL_EXPIRY,
            ..Default::default()
        })
        .await?;
    let mut messages = consumer.messages().await?;
    let mut batch = Vec::with_capacity(BATCH);
    let mut seen = (reorder.holds, reorder.given_up);
    loop {
        // A hold ends when its missing messages come, when it runs out, or when a session
        // joining or leaving this node asks.
        let told = inbound.give_up.told();
        let mut told = std::pin::pin!(told);
        told.as_mut().enable();
        if inbound.give_up.take(usize::from(k)) {
            reorder.give_up(&mut batch);
        }
        reorder.expire(Instant::now(), &mut batch);
        deliver_tailed(inbound, prefix, k, &mut batch, reorder, *next, &mut seen);
        let holding = reorder.deadline();
        let wake = holding.unwrap_or_else(|| Instant::now() + PULL_EXPIRY);
        let first = tokio::select! {
            m = messages.next() => match m {
                Some(m) => m,
                None => break,
            },
            () = &mut told => continue,
            () = tokio::time::sleep_until(wake.into()), if holding.is_some() => continue,
        };
        // With what is already waiting: one queueing per session. A failure ends the loop
        // once what was taken before it is delivered (`next` is already past it).
        let mut failed: Option<async_nats::Error> = None;
        let mut ended = false;
        let mut item = Some(first);
        let now = Instant::now();
        // MQTT messages taken (a QoS 1 pack counts as the messages it carries).
        let mut taken_messages = 0;
        while let Some(r) = item.take() {
            let taken = match r {
                Ok(m) => m.info().map(|i| i.stream_sequence).map(|seq| (m, seq)),
                Err(e) => Err(e.into()),
            };
            match taken {
                Ok((m, seq)) => {
                    if seq >= *next {
                        *next = seq + 1;
                        let headers = m.message.headers.as_ref();
                        taken_messages += codec::count(headers);
                        // This node's own messages are not delivered here: never waited for.
                        let order = match codec::node_of(headers) {
                            Some(n) if n == inbound.node => None,
                            _ => codec::order_of(headers),
                        };
                        reorder.take((m.message, seq), order, now, &mut batch);
                    }
                }
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
            if taken_messages < BATCH {
                match messages.next().now_or_never() {
                    Some(Some(r)) => item = Some(r),
                    // The stream ended: what was taken is delivered, then the tailer restarts.
                    Some(None) => ended = true,
                    None => {}
                }
            }
        }
        if batch.is_empty() {
            match failed {
                Some(e) => return Err(e),
                None if ended => return Ok(()),
                None => continue,
            }
        }
        // A slow subscriber here gets these beyond its queue limits (their publishers cannot
        // be slowed down from this node): `Admin::route_all`. Before, what went beyond twice
        // its limit was dropped although the PUBACKs had gone out.
        deliver_tailed(inbound, prefix, k, &mut batch, reorder, *next, &mut seen);
        if let Some(e) = failed {
            return Err(e);
        }
        if ended {
            break;
        }
    }
    Ok(())
}

/// Keep the local retained messages in step with the retained bucket, until aborted; `loaded`
/// is sent once the values present at start are applied.
pub(crate) async fn follow_retained(
    inbound: Arc<Inbound>,
    js: jetstream::Context,
    mut loaded: Option<tokio::sync::oneshot::Sender<()>>,
) {
    let name = format!("KV_{}", streams::retain_bucket(&inbound.prefix));
    let prefix = streams::retain_subject(&inbound.prefix);
    let mut next = 0;
    let mut backoff = Backoff::default();
    loop {
        let result = retained_from(&inbound, &js, &name, &prefix, &mut next, &mut loaded).await;
        if let Err(e) = &result {
            tracing::warn!(stream = %name, next, "retained-message follower restarts: {e}");
        }
        backoff.after(result).await;
    }
}

async fn retained_from(
    inbound: &Inbound,
    js: &jetstream::Context,
    name: &str,
    prefix: &str,
    next: &mut u64,
    loaded: &mut Option<tokio::sync::oneshot::Sender<()>>,
) -> Result<(), async_nats::Error> {
    let mut stream = js.get_stream(name).await?;
    if stream.info().await?.state.messages == 0 {
        if let Some(l) = loaded.take() {
            let _ = l.send(());
        }
    }
    let deliver_policy = match *next {
        0 => consumer::DeliverPolicy::LastPerSubject,
        n => consumer::DeliverPolicy::ByStartSequence { start_sequence: n },
    };
    let consumer = stream
        .create_consumer(consumer::pull::OrderedConfig {
            deliver_policy,
            // JetStream wants a filter with "last per subject".
            filter_subject: format!("{prefix}.>"),
            max_expires: PULL_EXPIRY,
            ..Default::default()
        })
        .await?;
    let mut messages = consumer.messages().await?;
    while let Some(m) = messages.next().await {
        let m = m?;
        let info = m.info()?;
        let (seq, pending) = (info.stream_sequence, info.pending);
        if seq >= *next {
            *next = seq + 1;
            inbound.apply_retained(prefix, &m.message);
        }
        if pending == 0 {
            if let Some(l) = loaded.take() {
                let _ = l.send(());
            }
        }
    }
    Ok(())
}

impl Inbound {
    /// Set (or delete) the local retained message from a change of the retained bucket.
    fn apply_retained(&self, prefix: &str, m: &async_nats::Message) {
        let deleted = m
            .headers
            .as_ref()
            .and_then(|h| h.get("KV-Operation"))
            .is_some_and(|op| op.as_str() == "PURGE" || op.as_str() == "DEL");
        let topic = match topic::decode_subject(prefix, &m.subject) {
            Ok(t) => t,
            Err(e) => {
                self.counters.undecodable.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(subject = %m.subject, "not a retained message: {e}");
                return;
            }
        };
        tracing::debug!(node = %self.node, topic, deleted, "retained message from the bucket");
        if deleted {
            self.admin.delete_retained(&topic);
            return;
        }
        match codec::decode(prefix, &m.subject, m.headers.as_ref(), m.payload.clone()) {
            Ok(mut msg) => {
                msg.retain = true;
                // This node's own message is there already: keep that one (replacing it with
                // an equal copy would make subscribers streaming retained messages skip it).
                let own = codec::node_of(m.headers.as_ref()) == Some(self.node.as_str());
                if own
                    && self
                        .admin
                        .retained_message(&topic)
                        .is_some_and(|cur| cur.payload == msg.payload && cur.qos == msg.qos)
                {
                    return;
                }
                match self.admin.set_retained(msg) {
                    Ok(true) => {}
                    Ok(false) => tracing::warn!(
                        topic,
                        "retained message from the cluster not kept: max_retained reached"
                    ),
                    Err(e) => tracing::warn!(topic, "retained message from the cluster not kept: {e}"),
                }
            }
            Err(e) => {
                self.counters.undecodable.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(subject = %m.subject, "not a retained message: {e}");
            }
        }
    }
}
