//! Shared subscriptions across nodes: a `$share/GROUP/FILTER` group gets each message once,
//! whichever nodes its members are on (the broker's own routing leaves shared subscriptions
//! out in cluster mode, `Backplane::delivers_shared`).
//!
//! - QoS 1/2 messages: one durable pull consumer per group on each shard stream, named
//!   `share_<hash of the full filter>`, filtered on the group's filter, created by the first
//!   node that has a member and pulled by every node that has one. JetStream gives each
//!   message to one puller; that node hands it to one of its members
//!   ([`Admin::deliver_shared`]) and acknowledges it to JetStream only when the member has
//!   acknowledged it (PUBACK; at once for a member subscribed at QoS 0; at QoS 2 when the
//!   delivery begins: [`Settle::started`]). A message
//!   no member here can take is given back (`nak`, after [`NAK_DELAY`]) for another node; one
//!   whose member's node died comes back after `share_ack_wait_ms`; while a member holds it
//!   (a slow client, or one that went away after it was given), its node tells JetStream so
//!   every third of that time (`+WPI`), so that it does not go to another member as well. A
//!   consumer no node pulls for [`SHARE_IDLE`] is removed by JetStream: the group has ended.
//! - QoS 0 messages: a core NATS queue group per group on the filter's subjects, on a second
//!   connection of the node (the first one does not receive what the node itself publishes):
//!   NATS gives each message to one node, which hands it to one of its members.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

use async_nats::jetstream::{self, consumer, AckKind};
use bytes::Bytes;
use futures_util::StreamExt;
use tern_broker::{Admin, SharedDelivery};
use tokio::sync::Notify;

use crate::{codec, streams, topic};

/// A message given back because no member here could take it is offered again after this.
pub const NAK_DELAY: Duration = Duration::from_millis(250);

/// A group's consumer that no node pulls for this long is removed by JetStream.
pub const SHARE_IDLE: Duration = Duration::from_secs(120);

/// Messages of a group given to members and not acknowledged yet, per shard (JetStream stops
/// giving more beyond it: a group whose members do not keep up does not fill their queues).
const MAX_ACK_PENDING: i64 = 1024;

/// From its third delivery, a message is queued for a member that is not connected (a
/// persistent session) rather than given back again.
const OFFLINE_AFTER: i64 = 3;

/// Messages of a group queued for members that are away and kept unacknowledged for them
/// on this node, at most; beyond it they are acknowledged when queued
/// (`Settlement::keep_while_away`). Small beside [`AWAY_PENDING`]'s room, so that nodes that
/// read the consumer's count at the same moment cannot fill [`MAX_ACK_PENDING`] together
/// unless there are eight of them.
const AWAY_HELD: usize = (MAX_ACK_PENDING / 16) as usize;

/// A message is kept for an away member only while the group's consumer on its shard has
/// fewer than this many messages unacknowledged, all nodes together (they count against
/// [`MAX_ACK_PENDING`]: members that stay away must not stall the group's other members).
const AWAY_PENDING: usize = (MAX_ACK_PENDING / 2) as usize;

/// How long the consumer's count of unacknowledged messages is taken as current (a failed
/// read too: it is not asked again before).
const PENDING_FRESH: Duration = Duration::from_secs(1);

/// Longest wait for the consumer's count (the pull loop waits meanwhile).
const PENDING_ASK: Duration = Duration::from_millis(500);

/// Longest wait for JetStream's answer to the acknowledgement of a shared QoS 2 message whose
/// delivery began (without one it stays held, and is acknowledged again at the PUBCOMP).
const START_ACK_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest a pull request waits on the server (as the tailers').
const PULL_EXPIRY: Duration = Duration::from_secs(2);

/// The shared subscriptions of this node's sessions, with how many sessions have each.
#[derive(Debug, Default)]
pub(crate) struct Shares {
    /// Sessions with each, and when the first of them subscribed.
    wanted: Mutex<HashMap<String, (usize, SystemTime)>>,
    changed: Notify,
}

impl Shares {
    /// A local session subscribed to `full_filter` (`$share/GROUP/FILTER`).
    pub fn add(&self, full_filter: &str) {
        let mut w = self.wanted.lock().unwrap_or_else(|e| e.into_inner());
        let (n, _) = w.entry(full_filter.to_string()).or_insert((0, SystemTime::now()));
        *n += 1;
        let new = *n == 1;
        drop(w);
        if new {
            self.changed.notify_one();
        }
    }

    /// A local session no longer subscribes to `full_filter`.
    pub fn remove(&self, full_filter: &str) {
        let mut w = self.wanted.lock().unwrap_or_else(|e| e.into_inner());
        let mut gone = false;
        if let Some((n, _)) = w.get_mut(full_filter) {
            *n -= 1;
            if *n == 0 {
                w.remove(full_filter);
                gone = true;
            }
        }
        drop(w);
        if gone {
            self.changed.notify_one();
        }
    }

    fn snapshot(&self) -> HashMap<String, SystemTime> {
        let w = self.wanted.lock().unwrap_or_else(|e| e.into_inner());
        w.iter().map(|(f, (_, since))| (f.clone(), *since)).collect()
    }
}

/// What the group tasks share.
pub(crate) struct Parts {
    pub prefix: String,
    pub shards: u16,
    pub ack_wait: Duration,
    pub admin: Admin,
    /// The node's second connection (it receives the node's own QoS 0 messages).
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    /// Messages handed to connected members here: while a member holds one, JetStream is
    /// told it is in progress ([`keep_held`]).
    pub held: Mutex<Vec<Weak<Settle>>>,
    /// The node's inbound counters (NATS messages that are not Tern messages).
    pub counters: Arc<crate::inbound::InboundCounters>,
    /// Says how far the publishers of QoS 0 messages that fill members here may go.
    pub teller: Arc<crate::flow::Teller>,
    /// The node's first connection, which the teller's later words go on too (NATS keeps
    /// the order of one connection's messages only).
    pub words: async_nats::Client,
}

/// Tell JetStream every third of the ack wait that the messages members here still hold are
/// in progress, until aborted; forget those that were settled.
async fn keep_held(parts: Arc<Parts>) {
    let mut tick = tokio::time::interval(parts.ack_wait / 3);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let held: Vec<Weak<Settle>> = {
            let mut held = parts.held.lock().unwrap_or_else(|e| e.into_inner());
            held.retain(|settle| settle.upgrade().is_some_and(|s| s.holds()));
            held.clone()
        };
        for settle in held {
            // Looked at again just before: one settled meanwhile (acknowledged, or given back
            // with a nak) must not be renewed after it. Sent on the connection its
            // acknowledgement goes on.
            let Some(m) = settle.upgrade().and_then(|s| s.message()) else {
                continue;
            };
            if let Err(e) = m.ack_with(AckKind::Progress).await {
                tracing::debug!("shared message still held, not told to JetStream: {e}");
            }
        }
    }
}

/// Keep one group task per shared subscription of this node's sessions, until aborted.
pub(crate) async fn follow(parts: Arc<Parts>, shares: Arc<Shares>) {
    // Dropped with this task (the node goes away): the group tasks are aborted.
    let mut have: HashMap<String, Vec<crate::Aborting>> = HashMap::new();
    let _progress = crate::Aborting(tokio::spawn(keep_held(parts.clone())));
    loop {
        let changed = shares.changed.notified();
        let wanted = shares.snapshot();
        // Aborted when dropped: the consumer's stream stops pulling; messages this node pulled
        // and did not hand over come back after the ack wait.
        have.retain(|f, _| {
            let keep = wanted.contains_key(f);
            if !keep {
                tracing::debug!(filter = %f, "cluster: no member of the shared subscription here now");
            }
            keep
        });
        for (f, since) in wanted {
            if have.contains_key(&f) {
                continue;
            }
            let Ok(parsed) = tern_proto::topic::parse_filter(&f) else {
                continue;
            };
            let filter = parsed.filter.to_string();
            let name = consumer_name(&f);
            let mut tasks = Vec::with_capacity(usize::from(parts.shards) + 1);
            tasks.push(crate::Aborting(tokio::spawn(qos0(
                parts.clone(),
                f.clone(),
                filter.clone(),
                name.clone(),
            ))));
            let group = Arc::new(Group {
                full: f.clone(),
                filter,
                name: name.clone(),
                since,
                away: Arc::default(),
            });
            for k in 0..parts.shards {
                tasks.push(crate::Aborting(tokio::spawn(pull(
                    parts.clone(),
                    group.clone(),
                    k,
                ))));
            }
            tracing::debug!(filter = %f, consumer = %name, "cluster: following a shared subscription");
            have.insert(f, tasks);
        }
        changed.await;
    }
}

/// The group's consumer name (on every shard stream) and QoS 0 queue group: the same on
/// every node, from the full filter.
pub fn consumer_name(full_filter: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, full_filter.as_bytes());
    let hex: String = digest.as_ref()[..12].iter().map(|b| format!("{b:02x}")).collect();
    format!("share_{hex}")
}

/// The group's QoS 0 messages: a queue subscription on each of the filter's subjects.
async fn qos0(parts: Arc<Parts>, full: String, filter: String, name: String) {
    let prefix = format!("{}.t", parts.prefix);
    let queue = format!("{}_{name}", parts.prefix);
    let mut subs = Vec::new();
    for subject in topic::encode_filter(&prefix, &filter) {
        loop {
            match parts.client.queue_subscribe(subject.clone(), queue.clone()).await {
                Ok(s) => {
                    subs.push(s);
                    break;
                }
                Err(e) => {
                    tracing::warn!(
                        subject,
                        "cannot subscribe on NATS for a shared subscription; trying again: {e}"
                    );
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }
    let mut all = futures_util::stream::select_all(subs);
    let mut batch = Vec::new();
    let mut pressed = Vec::new();
    while let Some(m) = all.next().await {
        // With what is already waiting, as the ordinary subscriptions' messages are taken.
        crate::inbound::with_waiting(&mut all, m, &mut batch);
        for m in &batch {
            // One message, or a pack of QoS 0 messages: all to members on this node.
            match codec::decode_all(&prefix, &m.subject, m.headers.as_ref(), m.payload.clone()) {
                Ok((first, rest)) => {
                    for msg in std::iter::once(first).chain(rest) {
                        if let Err(e) =
                            parts
                                .admin
                                .deliver_shared_pressed(&full, msg, None, true, &mut pressed)
                        {
                            tracing::warn!(subject = %m.subject, "message of a shared subscription not delivered: {e}");
                        }
                    }
                }
                Err(e) => {
                    parts
                        .counters
                        .undecodable
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tracing::warn!(subject = %m.subject, "not a Tern message: {e}");
                }
            }
        }
        // The publishers of messages that took members to half their limits are held back
        // as for ordinary subscriptions (`flow.rs`), this node's own ones too: their
        // messages to the group come back through NATS, past the broker's own backpressure.
        let words = parts.teller.routed(&batch, &pressed, true);
        if !words.is_empty() {
            parts.teller.say(&parts.words, words).await;
        }
        pressed.clear();
        batch.clear();
    }
}

/// A shared subscription followed by this node.
struct Group {
    /// `$share/GROUP/FILTER`.
    full: String,
    filter: String,
    /// Its consumers' name.
    name: String,
    /// When its first member here subscribed: a consumer made now starts there (a message
    /// stored between the SUBACK and the consumer is the group's too).
    since: SystemTime,
    /// Its messages kept unacknowledged for members that are away ([`AWAY_HELD`]).
    away: Arc<AtomicUsize>,
}

/// How far before a group's first SUBSCRIBE its new consumer starts: room for the clocks of
/// the node and of the NATS servers to differ (an earlier message delivered to the group is
/// harmless; a later one missed would be lost).
const START_MARGIN: Duration = Duration::from_secs(2);

/// The group's QoS 1/2 messages of shard `k`, until aborted.
async fn pull(parts: Arc<Parts>, group: Arc<Group>, k: u16) {
    let mut wait = Duration::from_millis(100);
    loop {
        match pull_from(&parts, &group, k).await {
            Ok(()) => wait = Duration::from_millis(100),
            Err(e) => {
                tracing::warn!(filter = %group.full, shard = k, "shared subscription's consumer restarts: {e}");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(2));
            }
        }
    }
}

async fn pull_from(parts: &Parts, group: &Group, k: u16) -> Result<(), async_nats::Error> {
    let (full, filter, name) = (group.full.as_str(), group.filter.as_str(), group.name.as_str());
    let stream = parts
        .js
        .get_stream(streams::stream_name(&parts.prefix, k))
        .await?;
    let prefix = streams::shard_subject(&parts.prefix, k);
    let start = group
        .since
        .checked_sub(START_MARGIN)
        .unwrap_or(group.since)
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let start_time = async_nats::datetime::from_nanos(start.as_nanos() as i128)?;
    let consumer: consumer::PullConsumer = stream
        .get_or_create_consumer(
            name,
            consumer::pull::Config {
                durable_name: Some(name.to_string()),
                description: Some(format!("Tern shared subscription {full}")),
                filter_subjects: topic::encode_filter(&prefix, filter),
                deliver_policy: consumer::DeliverPolicy::ByStartTime { start_time },
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait: parts.ack_wait,
                max_ack_pending: MAX_ACK_PENDING,
                inactive_threshold: SHARE_IDLE,
                ..Default::default()
            },
        )
        .await?;
    let mut messages = consumer
        .stream()
        .expires(PULL_EXPIRY)
        .heartbeat(PULL_EXPIRY / 2)
        .messages()
        .await?;
    // The consumer's messages unacknowledged on every node, and when that was asked: read
    // only for messages offered the third time or more (those an away member may get).
    let mut pending: Option<(std::time::Instant, usize)> = None;
    while let Some(m) = messages.next().await {
        let m = m?;
        let delivered = m.info().map(|i| i.delivered).unwrap_or(1);
        let offline_ok = delivered >= OFFLINE_AFTER;
        let may_keep = offline_ok && {
            if pending.is_none_or(|(at, _)| at.elapsed() >= PENDING_FRESH) {
                // Not known: nothing is kept for away members until it is asked again.
                let n = match tokio::time::timeout(PENDING_ASK, consumer.get_info()).await {
                    Ok(Ok(info)) => info.num_ack_pending,
                    _ => usize::MAX,
                };
                pending = Some((std::time::Instant::now(), n));
            }
            pending.is_some_and(|(_, n)| n < AWAY_PENDING)
        };
        let (msg, rest) = match codec::decode_all(&prefix, &m.subject, m.headers.as_ref(), m.payload.clone())
        {
            Ok(decoded) => decoded,
            Err(e) => {
                if !matches!(e, codec::CodecError::Void) {
                    tracing::warn!(subject = %m.subject, "not a Tern message: {e}");
                }
                let _ = m.ack_with(AckKind::Term).await;
                continue;
            }
        };
        let settle = Arc::new(Settle {
            message: Arc::new(Mutex::new(Some(m))),
            away: group.away.clone(),
            kept_away: AtomicBool::new(false),
            may_keep,
            parts: AtomicUsize::new(1 + rest.len()),
        });
        // Renewed while its member holds it, also one queued for a member that is away
        // (within AWAY_HELD and AWAY_PENDING: if this node dies, JetStream offers it to the
        // group again).
        {
            let mut held = parts.held.lock().unwrap_or_else(|e| e.into_inner());
            // Settled ones go when it is full, before it grows: it stays within about twice
            // what members hold (bounded by MAX_ACK_PENDING per group and shard).
            if held.len() >= held.capacity().max(1024) {
                held.retain(|settle| settle.upgrade().is_some_and(|s| s.holds()));
            }
            held.push(Arc::downgrade(&settle));
        }
        // A QoS 1 pack's messages each go to a member, and the pack is acknowledged to
        // JetStream once every one of them is settled ([`Part`]).
        let packed = !rest.is_empty();
        for msg in std::iter::once(msg).chain(rest) {
            let part = packed.then(|| {
                Arc::new(Part {
                    whole: settle.clone(),
                    done: AtomicBool::new(false),
                })
            });
            let handed: Arc<dyn tern_broker::Settlement> = match &part {
                None => settle.clone(),
                Some(p) => p.clone(),
            };
            match parts.admin.deliver_shared(full, msg, Some(handed), offline_ok) {
                Ok(SharedDelivery::Delivered | SharedDelivery::Expired) => continue,
                // The settlement was dropped: the message is given back (or, kept for an
                // away member that had no room for it, settled: `Admin::deliver_shared`).
                Ok(_) => tracing::trace!(filter = %full, "no member here took a shared message"),
                Err(e) => {
                    tracing::warn!(filter = %full, "message of a shared subscription not delivered: {e}")
                }
            }
            // Settled all the same (queued for an away member that had no room: the session
            // keeps it): the pack goes on.
            if part.is_some_and(|p| p.done.load(Ordering::Acquire)) {
                continue;
            }
            // A pack is given back whole once one of its messages is: its rest comes again
            // with it, so it is not handed to members now, which would only make more
            // duplicates of it.
            break;
        }
    }
    Ok(())
}

/// A JetStream message handed to a member: acknowledged when the member has acknowledged
/// it, or when its QoS 2 delivery to the member began; given back (`nak`) when the delivery
/// is abandoned.
#[derive(Debug)]
pub(crate) struct Settle {
    /// The message, until it is settled.
    message: Arc<Mutex<Option<jetstream::Message>>>,
    /// The group's count of messages kept for members that are away.
    away: Arc<AtomicUsize>,
    /// Whether this one is in that count.
    kept_away: AtomicBool,
    /// Whether the group's consumer had room for one more kept for an away member when the
    /// message came ([`AWAY_PENDING`]).
    may_keep: bool,
    /// Its MQTT messages not settled yet: 1, or a QoS 1 pack's count ([`Part`]).
    parts: AtomicUsize,
}

/// One message of a QoS 1 pack handed to a member: the pack is acknowledged to JetStream
/// when all of its messages are settled, and given back (whole: the others come again,
/// duplicates QoS 1 allows) as soon as one is dropped unsettled.
#[derive(Debug)]
struct Part {
    whole: Arc<Settle>,
    done: AtomicBool,
}

impl tern_broker::Settlement for Part {
    fn done(&self) {
        if !self.done.swap(true, Ordering::AcqRel) && self.whole.parts.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.whole.finish(AckKind::Ack);
        }
    }

    fn keep_while_away(&self) -> bool {
        self.whole.keep_while_away()
    }

    fn started(&self) {
        self.whole.started();
    }
}

impl Drop for Part {
    fn drop(&mut self) {
        if !self.done.load(Ordering::Acquire) {
            self.whole.finish(AckKind::Nak(Some(NAK_DELAY)));
        }
    }
}

impl Settle {
    /// Not settled yet.
    fn holds(&self) -> bool {
        self.message.lock().unwrap_or_else(|e| e.into_inner()).is_some()
    }

    /// The message, while not settled.
    fn message(&self) -> Option<jetstream::Message> {
        self.message.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn finish(&self, kind: AckKind) {
        if self.kept_away.swap(false, Ordering::AcqRel) {
            self.away.fetch_sub(1, Ordering::AcqRel);
        }
        let m = self.message.lock().unwrap_or_else(|e| e.into_inner()).take();
        let (Some(m), Ok(rt)) = (m, tokio::runtime::Handle::try_current()) else {
            // Without a runtime (the node is going away) JetStream offers it again after the
            // ack wait.
            return;
        };
        rt.spawn(async move {
            if let Err(e) = m.ack_with(kind).await {
                tracing::debug!(
                    "acknowledgement of a shared message to JetStream failed (it comes again): {e}"
                );
            }
        });
    }
}

impl tern_broker::Settlement for Settle {
    fn done(&self) {
        self.finish(AckKind::Ack);
    }

    /// Kept for a member that is away, while the group has fewer than [`AWAY_HELD`] such
    /// messages here and fewer than [`AWAY_PENDING`] unacknowledged on its shard: before, it
    /// was acknowledged when queued, and lost for the group when this node died before the
    /// member came back and its session was recovered elsewhere.
    fn keep_while_away(&self) -> bool {
        if !self.may_keep {
            return false;
        }
        if self.kept_away.load(Ordering::Acquire) {
            return true;
        }
        let n = self.away.fetch_add(1, Ordering::AcqRel);
        if n >= AWAY_HELD {
            self.away.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        self.kept_away.store(true, Ordering::Release);
        true
    }

    /// The QoS 2 delivery began (its PUBLISH goes out; a session that outlives its
    /// connection lists it in its entry and in the node's store already, so a node that
    /// resumes the session resends it): no other member may get the message (v5
    /// [MQTT-4.8.2-4], [MQTT-4.8.2-5]), so JetStream must not offer it again if this node
    /// dies. Acknowledged with JetStream's confirmation; without one (NATS cut off) the
    /// message stays held (renewed, acknowledged again at the PUBCOMP).
    fn started(&self) {
        let (Some(m), Ok(rt)) = (self.message(), tokio::runtime::Handle::try_current()) else {
            return;
        };
        let Some(reply) = m.reply.clone() else {
            return;
        };
        let cell = self.message.clone();
        rt.spawn(async move {
            // JetStream answers an acknowledgement sent as a request once it has it. A request
            // shares the client's one reply subscription (`double_ack` would subscribe and
            // unsubscribe for each message).
            let client = m.context.client();
            let asked = client.request(reply, Bytes::from_static(b"+ACK"));
            match tokio::time::timeout(START_ACK_TIMEOUT, asked).await {
                Ok(Ok(_)) => {
                    cell.lock().unwrap_or_else(|e| e.into_inner()).take();
                }
                Ok(Err(e)) => tracing::debug!(
                    "a shared QoS 2 message whose delivery began is not settled with JetStream yet: {e}"
                ),
                Err(_) => tracing::debug!(
                    "a shared QoS 2 message whose delivery began is not settled with JetStream yet: no answer within {START_ACK_TIMEOUT:?}"
                ),
            }
        });
    }
}

impl Drop for Settle {
    fn drop(&mut self) {
        self.finish(AckKind::Nak(Some(NAK_DELAY)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_broker::Settlement;

    #[test]
    fn a_group_keeps_at_most_away_held_messages_for_members_that_are_away() {
        let away = Arc::new(AtomicUsize::new(0));
        let settle_with = |may_keep| Settle {
            message: Arc::new(Mutex::new(None)),
            away: away.clone(),
            kept_away: AtomicBool::new(false),
            may_keep,
            parts: AtomicUsize::new(1),
        };
        let settle = || settle_with(true);
        let kept: Vec<Settle> = (0..AWAY_HELD).map(|_| settle()).collect();
        assert!(kept.iter().all(|s| s.keep_while_away()));
        let over = settle();
        assert!(!over.keep_while_away(), "beyond the limit: settled when queued");
        assert_eq!(away.load(Ordering::Acquire), AWAY_HELD);
        drop(over);
        assert_eq!(away.load(Ordering::Acquire), AWAY_HELD);
        // Settled (the member took it), then dropped: counted out once.
        kept[0].done();
        assert_eq!(away.load(Ordering::Acquire), AWAY_HELD - 1);
        assert!(settle().keep_while_away(), "room again");
        // Asked twice, counted once.
        let twice = settle();
        assert!(twice.keep_while_away() && twice.keep_while_away());
        assert_eq!(away.load(Ordering::Acquire), AWAY_HELD);
        drop(twice);
        drop(kept);
        assert_eq!(away.load(Ordering::Acquire), 0);
        // The group's consumer had too many unacknowledged messages: not kept, not counted.
        let full = settle_with(false);
        assert!(!full.keep_while_away());
        assert_eq!(away.load(Ordering::Acquire), 0);
    }
}
