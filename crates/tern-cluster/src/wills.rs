//! Wills of a node that dies (issue #15: "wills, also when the node holding the client dies").
//!
//! A node keeps the will of each of its connections in the key-value bucket
//! `<prefix>_wills`, key `<node>.<client id in hex>`, with the headers of a message (plus the
//! encoded topic and the Will Delay Interval), from the CONNECT until the connection ends on
//! that node (which publishes, schedules or discards the will itself, as one broker does).
//! Each node says it is alive on the core NATS subject `<prefix>.alive.<node>` every
//! `node_timeout_ms / 5`. When a node has not been heard for `node_timeout_ms` (by a node in
//! touch with NATS all that time), the live node with the smallest name (all nodes agree on
//! it while they hear each other) reads the silent node's wills, takes each with a deletion
//! marker written against the revision it read (so that a will is published once even if
//! two nodes reap at the same time) and publishes it after its delay, to its own sessions and
//! to the cluster, unless its node wrote it again meanwhile; then it marks it published. A
//! node that starts publishes the wills its previous run left (those connections died with
//! it) before it takes clients. A node back from a cut closes the connections whose wills
//! were published meanwhile, without them ([`run`], docs/cluster.md "Wills when a node
//! dies").
//!
//! Not covered: a will whose Will Delay Interval was running on a node when that node died
//! (it was no longer armed); a node that dies while it reaps another's wills leaves the rest
//! until a node starts and finds them (see docs/cluster.md).

use std::collections::{HashMap, HashSet};
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer};
use async_nats::HeaderMap;
use futures_util::StreamExt;
use tern_broker::{Admin, Message};
use tokio::sync::mpsc;

use crate::{codec, outbound::Outbound, streams, topic, ClusterError};

/// What a node's connections tell the will keeper.
#[derive(Debug)]
pub(crate) enum WillOp {
    Arm {
        client: Arc<str>,
        conn: u64,
        will: Arc<Message>,
        delay: u32,
    },
    Disarm {
        client: Arc<str>,
        conn: u64,
    },
}

/// Operations waiting for the keeper at most (beyond, they are dropped and logged).
pub(crate) const QUEUE: usize = 4096;
/// The header with the will's encoded topic.
const SUBJECT: &str = "Tern-W-Subject";
/// The header with the Will Delay Interval.
const DELAY: &str = "Tern-W-Delay";

/// The bucket's key of `client`'s will on `node`.
fn key(node: &str, client: &str) -> String {
    let mut k = String::with_capacity(node.len() + 1 + 2 * client.len());
    k.push_str(node);
    k.push('.');
    for b in client.bytes() {
        let _ = write!(k, "{b:02x}");
    }
    k
}

/// Create the wills' bucket, or check the one there.
pub(crate) async fn ensure(js: &jetstream::Context, prefix: &str, replicas: u16) -> Result<(), ClusterError> {
    let bucket = streams::wills_bucket(prefix);
    let unavailable = |why: String| ClusterError::Unavailable {
        stream: format!("KV_{bucket}"),
        why,
    };
    if js.get_key_value(&bucket).await.is_ok() {
        return Ok(());
    }
    js.create_key_value(jetstream::kv::Config {
        bucket: bucket.clone(),
        description: "Tern cluster: wills of connected clients, by node".into(),
        history: 1,
        storage: jetstream::stream::StorageType::File,
        num_replicas: replicas.into(),
        ..Default::default()
    })
    .await
    .map(|_| ())
    .map_err(|e| unavailable(format!("cannot create it: {e}")))
}

/// What the keeper works with.
pub(crate) struct Keeper {
    pub node: String,
    pub prefix: String,
    pub js: jetstream::Context,
    pub client: async_nats::Client,
    pub admin: Admin,
    pub outbound: Arc<Outbound>,
    pub timeout: Duration,
    /// When each other node was last heard, kept by a task of its own (a reap stops when
    /// the node it reaps is heard meanwhile).
    pub heard: std::sync::Mutex<HashMap<String, Instant>>,
    /// How many times this node's connection to NATS came: a reap stops when it comes
    /// again (this node was the one out of touch).
    pub connections: tokio::sync::watch::Receiver<u64>,
    /// This node's answered round trips to its NATS server: a node is judged by its silence
    /// only after this node was in touch for a whole node timeout; a gap between them
    /// ([`Keeper::back_gap`]) opens a look for its wills.
    pub in_touch: std::sync::Mutex<Touch>,
    pub counters: Arc<WillCounters>,
}

/// What the will keeper counts ([`crate::ClusterStats`]).
#[derive(Debug, Default)]
pub(crate) struct WillCounters {
    /// Wills of gone nodes published here.
    pub published: AtomicU64,
    /// Wills taken here and not published: their node wrote them again.
    pub cancelled: AtomicU64,
    /// Connections here closed: their wills were published elsewhere.
    pub closed: AtomicU64,
    /// Writes of this node's wills JetStream acknowledged.
    pub stored: AtomicU64,
}

/// This node's round trips to its NATS server, for [`Keeper::in_touch_long_enough`].
#[derive(Debug, Default)]
pub(crate) struct Touch {
    /// The first of the answered round trips since the last long gap between them.
    since: Option<Instant>,
    /// The last answered one.
    last: Option<Instant>,
    /// Long gaps between two answered ones so far: each time this node was out of touch (a
    /// partition, or the process paused) and is back.
    gaps: u64,
}

impl Touch {
    /// A round trip answered at `now`; after a gap longer than `gap`, this node is back in
    /// touch from then on.
    fn answered(&mut self, now: Instant, gap: Duration) {
        match self.last {
            Some(last) if now.duration_since(last) > gap => {
                self.since = Some(now);
                self.gaps += 1;
            }
            Some(_) => {}
            None => self.since = Some(now),
        }
        self.last = Some(now);
    }

    /// Whether, at `now`, the last round trip was answered within `gap` and the answers have
    /// come without a longer gap for more than `timeout`.
    fn long_enough(&self, now: Instant, gap: Duration, timeout: Duration) -> bool {
        let (Some(since), Some(last)) = (self.since, self.last) else {
            return false;
        };
        now.duration_since(last) <= gap && now.duration_since(since) > timeout
    }
}

impl Keeper {
    fn subject(&self, key: &str) -> String {
        format!("$KV.{}.{key}", streams::wills_bucket(&self.prefix))
    }

    /// Write `client`'s will; the revision JetStream gave it.
    async fn store(&self, client: &str, will: &Message, delay: u32) -> Result<u64, async_nats::Error> {
        let mut h = codec::headers(will, &self.node);
        h.insert(SUBJECT, topic::encode_topic(&self.prefix, &will.topic).as_str());
        h.insert(DELAY, delay.to_string().as_str());
        let subject = self.subject(&key(&self.node, client));
        let ack = self
            .js
            .publish_with_headers(subject, h, will.payload.clone())
            .await?
            .await?;
        self.counters.stored.fetch_add(1, Ordering::Relaxed);
        Ok(ack.sequence)
    }

    async fn forget(&self, client: &str) -> Result<(), async_nats::Error> {
        let kv = self.js.get_key_value(streams::wills_bucket(&self.prefix)).await?;
        kv.delete(key(&self.node, client)).await?;
        Ok(())
    }

    /// A read of the last entry of each of `node`'s keys (`headers_only`: without the
    /// wills' payloads); `None` when the bucket has none.
    async fn last_per_key(
        &self,
        node: &str,
        headers_only: bool,
    ) -> Result<Option<consumer::pull::Ordered>, async_nats::Error> {
        let bucket = streams::wills_bucket(&self.prefix);
        let mut stream = self.js.get_stream(format!("KV_{bucket}")).await?;
        if stream.info().await?.state.messages == 0 {
            return Ok(None);
        }
        let consumer = stream
            .create_consumer(consumer::pull::OrderedConfig {
                deliver_policy: consumer::DeliverPolicy::LastPerSubject,
                filter_subject: self.subject(&format!("{node}.>")),
                headers_only,
                ..Default::default()
            })
            .await?;
        if consumer.cached_info().num_pending == 0 {
            return Ok(None);
        }
        Ok(Some(consumer.messages().await?))
    }

    /// The key of a message of the bucket.
    fn key_of<'m>(&self, m: &'m async_nats::Message) -> Option<&'m str> {
        let bucket = streams::wills_bucket(&self.prefix);
        m.subject
            .as_str()
            .strip_prefix("$KV.")
            .and_then(|s| s.strip_prefix(bucket.as_str()))
            .and_then(|s| s.strip_prefix('.'))
    }

    /// Write a deletion marker saying `stage` ([`REAPING`] or [`REAPED`]) on `key`, if its
    /// last entry is still the revision `after`; the marker's revision.
    async fn mark(&self, key: &str, after: u64, stage: &str) -> Result<u64, async_nats::Error> {
        let mut h = HeaderMap::new();
        h.insert("KV-Operation", "DEL");
        h.insert("Nats-Expected-Last-Subject-Sequence", after.to_string().as_str());
        h.insert(REAP, format!("{stage} {}", self.node).as_str());
        let ack = self
            .js
            .publish_with_headers(self.subject(key), h, bytes::Bytes::new())
            .await?
            .await?;
        Ok(ack.sequence)
    }

    /// The last entry of `key`: its revision and what it is.
    async fn last(&self, key: &str) -> Result<(u64, Entry), async_nats::Error> {
        let stream = self
            .js
            .get_stream_no_info(format!("KV_{}", streams::wills_bucket(&self.prefix)))
            .await?;
        let m = stream.get_last_raw_message_by_subject(&self.subject(key)).await?;
        Ok((m.sequence, Entry::of(Some(&m.headers))))
    }

    /// Take the will at revision `at` of `key` for publishing, once: the marker's revision,
    /// or `None` when another node took it or its node wrote it again first. An answer lost
    /// on the way is looked for in the bucket.
    async fn take(&self, key: &str, at: u64) -> Result<Option<u64>, async_nats::Error> {
        match self.mark(key, at, REAPING).await {
            Ok(seq) => Ok(Some(seq)),
            Err(e) => match self.last(key).await? {
                (seq, Entry::Reaping(by)) if by == self.node && seq > at => Ok(Some(seq)),
                // Still the will read: the marker was not written (the reap is tried again).
                (seq, _) if seq == at => Err(e),
                // Taken by another node, or written again by its own.
                _ => Ok(None),
            },
        }
    }

    /// Publish, once, every will `node` left in the bucket; returns how many.
    pub(crate) async fn reap(self: &Arc<Self>, node: &str) -> Result<usize, async_nats::Error> {
        let connection = *self.connections.borrow();
        let Some(mut messages) = self.last_per_key(node, false).await? else {
            return Ok(0);
        };
        let mut published = 0;
        while let Some(m) = messages.next().await {
            let m = m?;
            let info = m.info()?;
            let (seq, left) = (info.stream_sequence, info.pending);
            // Heard again, or this node was out of touch meanwhile (its requests held up
            // until it was back): not known to be gone. (Not for this node's own previous
            // run, reaped at start.)
            let doubt = self.heard_lately(node)
                || *self.connections.borrow() != connection
                || !self.in_touch_long_enough();
            if node != self.node && doubt {
                return Err("stopped: the node is heard again, or this node was out of touch".into());
            }
            if let (Some(will), Some(key)) = (self.decode(&m.message), self.key_of(&m.message)) {
                // Marked with the revision read: a will is taken by one node only.
                if let Some(taken) = self.take(key, seq).await? {
                    self.publish_later(key.to_string(), taken, will);
                    published += 1;
                }
            }
            if left == 0 {
                break;
            }
        }
        Ok(published)
    }

    /// Whether this node has been in touch with NATS for longer than the node timeout: the
    /// silence of another node then says that node is gone, not this one.
    fn in_touch_long_enough(&self) -> bool {
        let touch = self.in_touch.lock().unwrap_or_else(|e| e.into_inner());
        touch.long_enough(Instant::now(), self.touch_gap(), self.timeout)
    }

    /// The longest time between two answered round trips of a node in touch: a third of the
    /// node timeout, at least 1 s (one slow answer under load is not a cut).
    fn touch_gap(&self) -> Duration {
        (self.timeout / 3).max(Duration::from_secs(1))
    }

    /// A gap between two answered round trips after which this node is back from out of
    /// touch: [`Self::touch_gap`], at most half the node timeout (below 3 s, a pause shorter
    /// than 1 s may have had this node taken for gone). Back, it looks for its wills
    /// published elsewhere and judges nobody for a node timeout.
    fn back_gap(&self) -> Duration {
        self.touch_gap().min(self.timeout / 2)
    }

    /// Whether `node` (another one) was heard within the node timeout.
    fn heard_lately(&self, node: &str) -> bool {
        let heard = self.heard.lock().unwrap_or_else(|e| e.into_inner());
        heard.get(node).is_some_and(|at| at.elapsed() <= self.timeout)
    }

    /// The last entry of each of this node's keys: its revision and what it is. An error
    /// unless every key was read.
    async fn mine_in_bucket(&self) -> Result<HashMap<String, (u64, Entry)>, async_nats::Error> {
        let mut found = HashMap::new();
        let Some(mut messages) = self.last_per_key(&self.node, true).await? else {
            return Ok(found);
        };
        while let Some(m) = messages.next().await {
            let m = m?;
            let info = m.info()?;
            let (seq, left) = (info.stream_sequence, info.pending);
            if let Some(key) = self.key_of(&m.message) {
                found.insert(key.to_string(), (seq, Entry::of(m.message.headers.as_ref())));
            }
            if left == 0 {
                return Ok(found);
            }
        }
        Err("the read of this node's wills ended early".into())
    }

    /// After this node was out of touch: a connection whose will another node published
    /// meanwhile (it took this node for gone; its marker says [`REAPED`]) is closed without
    /// it. A will another node took but has not published yet (its Will Delay Interval runs,
    /// or that node died) is written again, which cancels it there (its client is still
    /// connected here); so is one the bucket lost. Returns how many connections were closed.
    async fn look_back(&self, mine: &mut Mine) -> Result<usize, async_nats::Error> {
        let found = self.mine_in_bucket().await?;
        let mut reaped = Vec::new();
        let mut again = Vec::new();
        for (client, a) in &mine.armed {
            let Some(at) = a.at else { continue };
            match found.get(&key(&self.node, client)) {
                Some((seq, _)) if *seq <= at => {}
                Some((_, Entry::Will)) => {}
                Some((_, Entry::Reaped(_))) => reaped.push(client.clone()),
                Some((_, Entry::Reaping(_) | Entry::Deleted)) | None => again.push(client.clone()),
            }
        }
        for client in &reaped {
            if let Some(a) = mine.armed.remove(client) {
                if self.admin.will_published_elsewhere(client, a.conn) {
                    self.counters.closed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        for client in again {
            if let Some(a) = mine.armed.get_mut(&client) {
                a.unstored = true;
            }
        }
        self.retry(mine, usize::MAX).await;
        Ok(reaped.len())
    }

    /// Write the wills JetStream did not acknowledge, and delete those of connections that
    /// ended while that could not be done; at most `most` of each, stopping at the first
    /// failure (NATS is likely still out of reach).
    async fn retry(&self, mine: &mut Mine, most: usize) {
        for (client, a) in mine.armed.iter_mut().filter(|(_, a)| a.unstored).take(most) {
            match self.store(client, &a.will, a.delay).await {
                Ok(seq) => {
                    a.at = Some(seq);
                    a.unstored = false;
                }
                Err(_) => break,
            }
        }
        let left: Vec<Arc<str>> = mine.unforgotten.iter().take(most).cloned().collect();
        for client in left {
            if self.forget(&client).await.is_err() {
                break;
            }
            mine.unforgotten.remove(&client);
        }
    }

    /// A stored will, if the message is one (not a deletion).
    fn decode(&self, m: &async_nats::Message) -> Option<(Message, u32)> {
        let h: &HeaderMap = m.headers.as_ref()?;
        if h.get("KV-Operation").is_some() {
            return None;
        }
        let subject = h.get(SUBJECT)?.as_str().to_string();
        let delay = h.get(DELAY).and_then(|d| d.as_str().parse().ok()).unwrap_or(0);
        match codec::decode(&self.prefix, &subject, Some(h), m.payload.clone()) {
            Ok(msg) => Some((msg, delay)),
            Err(e) => {
                tracing::warn!("a stored will does not decode: {e}");
                None
            }
        }
    }

    /// Publish the will taken from `key` (marker revision `taken`) after its delay, here and
    /// to the other nodes, unless its node wrote it again meanwhile (its client is still
    /// connected there); then mark it published.
    fn publish_later(self: &Arc<Self>, key: String, taken: u64, (will, delay): (Message, u32)) {
        let keeper = self.clone();
        tokio::spawn(async move {
            if delay > 0 {
                tokio::time::sleep(Duration::from_secs(u64::from(delay))).await;
            }
            // Not readable: published (a duplicate rather than a loss).
            if let Ok((seq, _)) = keeper.last(&key).await {
                if seq != taken {
                    tracing::info!(topic = %will.topic, "not publishing a will its node wrote again (its client is connected there)");
                    keeper.counters.cancelled.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
            tracing::info!(topic = %will.topic, "publishing the will of a client of a node that is gone");
            let qos0 = will.qos == tern_proto::QoS::AtMostOnce;
            keeper.counters.published.fetch_add(1, Ordering::Relaxed);
            let _ = keeper.admin.publish_beside_backplane(will.detached());
            keeper.outbound.publish(&Arc::new(will));
            // Marked published once JetStream has stored it (a QoS 0 will, not stored, when
            // handed over): a node that finds the mark closes its connection without the
            // will. Not marked (this node died, or JetStream did not answer in time): the
            // node, back, writes the will again (a duplicate if it goes out there too).
            if !qos0 {
                let ticket = keeper.outbound.submitted();
                let out = keeper.outbound.clone();
                let stored = tokio::time::timeout(out.ack_timeout * 2, async {
                    while out.progress.get() < ticket {
                        out.progress.wait_past(out.progress.get()).await;
                    }
                })
                .await;
                if stored.is_err() {
                    return;
                }
            }
            let _ = keeper.mark(&key, taken, REAPED).await;
        });
    }
}

/// Stages of a reaper's deletion marker (header [`REAP`]).
const REAPING: &str = "reaping";
const REAPED: &str = "reaped";
/// The header of a reaper's deletion marker: the stage and the reaper's name.
const REAP: &str = "Tern-W-Reap";

/// What the last entry of a key is.
#[derive(Debug, Clone, PartialEq)]
enum Entry {
    Will,
    /// Taken by this node (named) for publishing, not published yet.
    Reaping(String),
    /// Published by this node (named).
    Reaped(String),
    /// Deleted by the will's own node, or by a node without markers.
    Deleted,
}

impl Entry {
    fn of(h: Option<&HeaderMap>) -> Entry {
        let Some(h) = h.filter(|h| h.get("KV-Operation").is_some()) else {
            return Entry::Will;
        };
        match h.get(REAP).and_then(|r| r.as_str().split_once(' ')) {
            Some((REAPING, by)) => Entry::Reaping(by.to_string()),
            Some((REAPED, by)) => Entry::Reaped(by.to_string()),
            _ => Entry::Deleted,
        }
    }
}

/// This node's wills, as its keeper knows them.
#[derive(Default)]
struct Mine {
    /// By client: the will of its connection here.
    armed: HashMap<Arc<str>, Armed>,
    /// Clients whose connection ended while their will could not be deleted from the bucket
    /// (it would be published if this node died): deleted once NATS is back.
    unforgotten: HashSet<Arc<str>>,
}

/// Nodes whose last heartbeat is kept at most.
const MAX_NODES: usize = 1024;
/// Clients kept in [`Mine::unforgotten`] at most (beyond, logged).
const MAX_UNFORGOTTEN: usize = 65_536;
/// Wills written again, and deletions made again, at each beat at most outside a look.
const RETRIES_PER_BEAT: usize = 64;
/// The first wait before a will JetStream did not acknowledge at its CONNECT is written
/// again (or one whose deletion failed when its connection ended is deleted again); it
/// doubles up to a beat while writes keep failing. A node dying meanwhile would take the
/// will with it (or leave one to be published): a write right after a stream's leader
/// changed fails for a moment only ("no stream found").
const SOON: Duration = Duration::from_millis(50);

/// A will this node keeps for one of its connections.
struct Armed {
    conn: u64,
    will: Arc<Message>,
    delay: u32,
    /// The last revision of it JetStream acknowledged (`None`: none yet).
    at: Option<u64>,
    /// To be written (again) at the next beats: JetStream did not acknowledge it, or another
    /// node took it without publishing it, or the bucket lost it.
    unstored: bool,
}

/// Keep this node's wills in the bucket, say this node is alive, and reap the wills of nodes
/// that fall silent, until the task is aborted. After this node was out of touch (its
/// connection to NATS came back, [`Keeper::connections`]; its round trips are answered again
/// after a gap, [`Keeper::back_gap`], as after a pause its connection outlived; it hears
/// again a node it had taken for gone; or a reaper says it reaped this node), it looks for its wills that another node published
/// meanwhile, at once and at each beat for twice the node timeout (a reap under way
/// elsewhere finishes meanwhile).
pub(crate) async fn run(keeper: Arc<Keeper>, mut ops: mpsc::Receiver<WillOp>) {
    let mut reconnected = keeper.connections.clone();
    let beat = (keeper.timeout / 5).max(Duration::from_millis(100));
    let alive = format!("{}.alive", keeper.prefix);
    let reaped_subject = |node: &str| format!("{}.reaped.{node}", keeper.prefix);
    let (mut sub, mut told) = match tokio::try_join!(
        keeper.client.subscribe(format!("{alive}.*")),
        keeper.client.subscribe(reaped_subject(&keeper.node)),
    ) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("cluster wills: cannot follow the other nodes: {e}");
            return;
        }
    };
    // Said from a task of its own, so that the keeper's JetStream round trips (a burst of
    // wills, a long reap) never make this node look gone.
    // Each is followed by a round trip through the server (a request it answers itself):
    // the node knows whether it is in touch ([`Touch`]).
    let heartbeat = {
        let (keeper, subject) = (keeper.clone(), format!("{alive}.{}", keeper.node));
        let touch = format!("{}.touch.{}", keeper.prefix, keeper.node);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(beat);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let _ = keeper.client.publish(subject.clone(), "".into()).await;
                // A request nobody answers: the server itself answers "no responders", a
                // round trip through it (a flush only reaches the socket).
                let answered = match tokio::time::timeout(
                    keeper.touch_gap(),
                    keeper.client.request(touch.clone(), "".into()),
                )
                .await
                {
                    Ok(Ok(_)) => true,
                    Ok(Err(e)) => e.kind() == async_nats::RequestErrorKind::NoResponders,
                    Err(_) => false,
                };
                if answered {
                    let mut t = keeper.in_touch.lock().unwrap_or_else(|e| e.into_inner());
                    t.answered(Instant::now(), keeper.back_gap());
                }
            }
        })
    };
    let _heartbeat = crate::Aborting(heartbeat);
    // Heard from a task of its own too, for [`Keeper::heard_lately`] while this one waits.
    let listener = match keeper.client.subscribe(format!("{alive}.*")).await {
        Ok(mut heard) => {
            let (keeper, alive) = (keeper.clone(), format!("{alive}."));
            tokio::spawn(async move {
                while let Some(m) = heard.next().await {
                    if let Some(node) = m.subject.as_str().strip_prefix(alive.as_str()) {
                        let mut h = keeper.heard.lock().unwrap_or_else(|e| e.into_inner());
                        // Bounded by the nodes of the cluster; a name not heard for a
                        // while goes.
                        if h.len() >= MAX_NODES {
                            h.retain(|_, at| at.elapsed() <= keeper.timeout);
                        }
                        if h.len() < MAX_NODES {
                            h.insert(node.to_string(), Instant::now());
                        }
                    }
                }
            })
        }
        Err(e) => {
            tracing::warn!("cluster wills: cannot follow the other nodes: {e}");
            return;
        }
    };
    let _listener = crate::Aborting(listener);
    let started = Instant::now();
    let mut looked_at_start = false;
    // Gone nodes whose wills are not known to be published yet: looked at again at each tick
    // by whichever node is the reaper then (one may die while it reaps).
    let mut unreaped: std::collections::BTreeSet<String> = Default::default();
    let mut seen: HashMap<String, Instant> = HashMap::new();
    // Nodes this node reaped lately, told so at each beat until then (the node, if it runs,
    // hears it once it is back).
    let mut telling: HashMap<String, Instant> = HashMap::new();
    let mut mine = Mine::default();
    // Until when to look for this node's wills published by another node.
    let mut look_until: Option<Instant> = None;
    let looking = keeper.timeout * 2;
    // Gaps in this node's touch with NATS seen so far.
    let mut gaps = 0;
    let mut tick = tokio::time::interval(beat);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // When to write again the wills whose first write failed, before the next beat.
    let (mut soon, mut soon_wait): (Option<tokio::time::Instant>, Duration) = (None, SOON);
    loop {
        let mut look_now = false;
        let retry_soon = async {
            match soon {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            changed = reconnected.changed() => {
                if changed.is_err() {
                    return;
                }
                // This node was out of touch, not the others: every node gets a timeout
                // from now before it is taken for gone (its heartbeats may not have come
                // through yet), and none taken for gone meanwhile is reaped.
                let now = Instant::now();
                for n in std::mem::take(&mut unreaped) {
                    seen.insert(n, now);
                }
                seen.values_mut().for_each(|at| *at = now);
                look_until = Some(now + looking);
                look_now = true;
            }
            op = ops.recv() => {
                let Some(op) = op else { return };
                match op {
                    WillOp::Arm { client, conn, will, delay } => {
                        let at = match keeper.store(&client, &will, delay).await {
                            Ok(seq) => Some(seq),
                            Err(e) => {
                                tracing::warn!(client_id = %client, "cluster wills: cannot keep the will (trying again): {e}");
                                soon.get_or_insert_with(|| tokio::time::Instant::now() + soon_wait);
                                None
                            }
                        };
                        mine.unforgotten.remove(&client);
                        mine.armed.insert(client, Armed { conn, will, delay, at, unstored: at.is_none() });
                    }
                    WillOp::Disarm { client, conn } => {
                        if mine.armed.get(&client).is_some_and(|a| a.conn == conn) {
                            mine.armed.remove(&client);
                            if let Err(e) = keeper.forget(&client).await {
                                if mine.unforgotten.len() < MAX_UNFORGOTTEN {
                                    tracing::warn!(client_id = %client, "cluster wills: cannot forget the will (trying again): {e}");
                                    soon.get_or_insert_with(|| tokio::time::Instant::now() + soon_wait);
                                    mine.unforgotten.insert(client);
                                } else {
                                    tracing::warn!(client_id = %client, "cluster wills: cannot forget the will: {e}");
                                }
                            }
                        }
                    }
                }
            }
            m = sub.next() => {
                let Some(m) = m else { return };
                if let Some(node) = m.subject.as_str().strip_prefix(&format!("{alive}.")) {
                    if node != keeper.node {
                        let now = Instant::now();
                        // A node heard again after a silence (or a new one): this node may
                        // have been the one out of touch.
                        if seen.insert(node.to_string(), now).is_none() && now.duration_since(started) > keeper.timeout {
                            look_until = Some(now + looking);
                            look_now = true;
                        }
                    }
                }
            }
            () = retry_soon => {
                soon = None;
                // During a look (also the one right after the node's start), a will another
                // node reaped must not be written back blindly: the look reads what was
                // reaped first, then writes the rest again.
                if look_until.is_some_and(|until| Instant::now() < until) {
                    look_now = true;
                } else {
                    keeper.retry(&mut mine, RETRIES_PER_BEAT).await;
                }
                // Up to a beat; from then on the beats write them.
                if soon_wait < beat && (!mine.unforgotten.is_empty() || mine.armed.values().any(|a| a.unstored)) {
                    soon_wait = (soon_wait * 2).min(beat);
                    soon = Some(tokio::time::Instant::now() + soon_wait);
                } else {
                    soon_wait = SOON;
                }
            }
            m = told.next() => {
                let Some(_) = m else { return };
                // Another node reaped this one's wills: a partition it did not notice.
                if look_until.is_none_or(|until| Instant::now() >= until) {
                    look_until = Some(Instant::now() + looking);
                    look_now = true;
                }
            }
            _ = tick.tick() => {
                let now = Instant::now();
                // Out of touch lately: the others' silence says nothing of them (once this
                // node is back, their heartbeats come within a beat).
                let judging = keeper.in_touch_long_enough();
                let silent: Vec<String> = seen
                    .iter()
                    .filter(|(_, at)| judging && now.duration_since(**at) > keeper.timeout)
                    .map(|(n, _)| n.clone())
                    .collect();
                for n in silent {
                    seen.remove(&n);
                    tracing::warn!(node = %n, "cluster: node not heard for {:?}; taken for gone", keeper.timeout);
                    unreaped.insert(n);
                }
                // Nodes that were gone before this one started: found once, after a timeout.
                if judging && !looked_at_start && now.duration_since(started) > keeper.timeout {
                    looked_at_start = true;
                    unreaped.extend(nodes_with_wills(&keeper).await.into_iter().filter(|n| *n != keeper.node && !seen.contains_key(n)));
                }
                // A node heard again is not gone.
                unreaped.retain(|n| !seen.contains_key(n));
                // Back in touch after a gap (also one its NATS connection outlived, such as
                // the process paused): the others may have taken this node for gone.
                let now_gaps = keeper.in_touch.lock().unwrap_or_else(|e| e.into_inner()).gaps;
                if now_gaps != gaps {
                    gaps = now_gaps;
                    look_until = Some(now + looking);
                }
                look_now = look_until.is_some_and(|until| now < until);
                if !look_now {
                    keeper.retry(&mut mine, RETRIES_PER_BEAT).await;
                }
                // The live node with the smallest name reaps.
                let reaper = seen.keys().map(String::as_str).chain(std::iter::once(keeper.node.as_str())).min();
                if judging && reaper == Some(keeper.node.as_str()) {
                    let gone: Vec<String> = unreaped.iter().cloned().collect();
                    for n in gone {
                        // Bounded (a read that stalls while NATS is away again; a long one goes
                        // on at the next beat, the wills taken so far being gone from it).
                        let reaped = tokio::time::timeout(keeper.timeout, keeper.reap(&n))
                            .await
                            .unwrap_or_else(|_| Err("took longer than the node timeout".into()));
                        match reaped {
                            Ok(k) => {
                                if k > 0 {
                                    tracing::info!(node = %n, wills = k, "cluster: published the wills of a node that is gone");
                                    telling.insert(n.clone(), now + looking);
                                }
                                unreaped.remove(&n);
                            }
                            Err(e) => tracing::warn!(node = %n, "cluster: cannot read the wills of a node that is gone (trying again): {e}"),
                        }
                    }
                }
                telling.retain(|_, until| now < *until);
                for n in telling.keys() {
                    let _ = keeper.client.publish(reaped_subject(n), "".into()).await;
                }
            }
        }
        if look_now && !(mine.armed.is_empty() && mine.unforgotten.is_empty()) {
            // Bounded: a read that stalls (NATS gone again) is tried at a later beat.
            match tokio::time::timeout(keeper.timeout, keeper.look_back(&mut mine)).await {
                Ok(Ok(0)) => {}
                Ok(Ok(k)) => tracing::warn!(
                    connections = k,
                    "cluster: another node published the wills of connections of this node (it took this node for gone); closing them"
                ),
                Ok(Err(e)) => tracing::debug!("cluster wills: cannot look for wills published elsewhere yet: {e}"),
                Err(_) => tracing::debug!("cluster wills: the look for wills published elsewhere took too long; again at the next beat"),
            }
        }
    }
}

/// The nodes that have wills in the bucket.
async fn nodes_with_wills(keeper: &Keeper) -> Vec<String> {
    let Ok(kv) = keeper
        .js
        .get_key_value(streams::wills_bucket(&keeper.prefix))
        .await
    else {
        return Vec::new();
    };
    let Ok(mut keys) = kv.keys().await else {
        return Vec::new();
    };
    let mut nodes = std::collections::BTreeSet::new();
    while let Some(Ok(k)) = keys.next().await {
        if let Some((node, _)) = k.split_once('.') {
            nodes.insert(node.to_string());
        }
    }
    nodes.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::{key, Touch};
    use std::time::{Duration, Instant};

    #[test]
    fn a_node_is_in_touch_after_answers_for_longer_than_the_timeout_and_back_after_a_gap() {
        let (gap, timeout) = (Duration::from_secs(1), Duration::from_secs(3));
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut t = Touch::default();
        assert!(!t.long_enough(t0, gap, timeout), "no answer yet");
        for ms in (0..=3_000).step_by(500) {
            t.answered(at(ms), gap);
        }
        assert!(
            !t.long_enough(at(3_000), gap, timeout),
            "in touch for the timeout, not longer"
        );
        t.answered(at(3_500), gap);
        assert!(t.long_enough(at(3_500), gap, timeout));
        assert!(
            t.long_enough(at(4_500), gap, timeout),
            "the last answer is a gap old"
        );
        assert!(!t.long_enough(at(4_600), gap, timeout), "longer: out of touch");
        assert_eq!(t.gaps, 0);
        // A pause (or a cut its connection outlived): the next answer comes 5 s later.
        t.answered(at(8_500), gap);
        assert_eq!(t.gaps, 1, "back after a gap");
        assert!(
            !t.long_enough(at(8_500), gap, timeout),
            "back, but not for long enough"
        );
        for ms in (9_000..=11_500).step_by(500) {
            t.answered(at(ms), gap);
        }
        assert!(!t.long_enough(at(11_500), gap, timeout));
        t.answered(at(12_000), gap);
        assert!(t.long_enough(at(12_000), gap, timeout));
        assert_eq!(t.gaps, 1);
    }

    #[test]
    fn keys_are_the_node_and_the_client_id_in_hex() {
        assert_eq!(key("tern-a", "c1"), "tern-a.6331");
        assert_eq!(key("n", "a.b/ü"), "n.612e622fc3bc");
    }
}
