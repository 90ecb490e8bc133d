//! Sessions across nodes (issue #15: "a persistent session that disconnects from node A and
//! reconnects to node B finds its subscriptions and its queued messages"; "session takeover
//! across nodes").
//!
//! The key-value bucket `<prefix>_sessions` (or, with `cluster.session_buckets` above 1, the
//! one of `<prefix>_sessions_<j>` the key falls in: [`Buckets`]) says which node holds each
//! client's session (key: the client id in hex, or `s` and its SHA-256 for long ids; value:
//! the node's name).
//! A node that a client connects to *claims* the session before it answers the CONNECT:
//! - no entry: it creates one naming itself (`create`, which fails if another node got
//!   there first: then it reads again);
//! - its own name: nothing to do, the broker attaches the session as on one node;
//! - another node's name: it writes its own name over it with the revision it read (a
//!   compare-and-swap: of two nodes claiming at once, one wins and the other reads again and
//!   claims from the winner), then asks that node, on the core NATS subject
//!   `<prefix>.ctl.<node>.take`, to give the session up. That node closes the client's
//!   connection as a takeover does (5.0: DISCONNECT 0x8E Session taken over), takes the
//!   session's state out of its broker (subscriptions, deliveries in flight with their packet
//!   ids, queue, incoming QoS 2 packet ids) and keeps it, encoded, for the claimant to fetch
//!   in pieces (`.chunk`). The session stays subscribed there meanwhile. Once the claimant
//!   has installed it (its subscriptions now route to it), it asks for the rest (`.rest`):
//!   the old node removes the session and sends what reached it since, which goes into the
//!   queue after what came first; the claimant then says `.done`. So a message published
//!   while the session moves reaches it on one node or the other; one that reached both in
//!   that moment arrives twice. With Clean Start the old session ends there instead, as on
//!   one node.
//!
//! A node answers `busy` for a client whose claim it is making itself (from the claim until
//! the session is attached there); the claimant asks again. A node that is gone from NATS
//! (no responders) is dead: the claimant recovers the session from the entry (subscriptions,
//! a floor per shard) and the shard streams. A node that does not answer in time may still
//! run: the claim fails, the entry is put back, and the client tries again. The entry is
//! deleted when the session ends on its node. See docs/cluster.md.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tern_broker::backplane::Held;
use tern_broker::durability::{Handover, InflightState, SessionSnapshot, StoredDelivery};
use tern_broker::{Admin, BackplaneMark, HandOff, Message};
use tern_proto::{ProtocolVersion, QoS, RetainHandling, SubscriptionOptions};

use crate::outbound::Outbound;
use crate::{streams, ClusterError};

/// Claims that keep meeting a changed entry give up after this many reads.
const MAX_TRIES: usize = 32;
/// How long a claim waits for the directory (JetStream) to answer.
const CLAIM_WAIT: Duration = Duration::from_secs(15);
/// How long a claimant waits for an answer from the node holding the session.
const ASK_TIMEOUT: Duration = Duration::from_secs(2);
/// How often a claimant asks again a node that is busy claiming the same client.
const BUSY_RETRIES: usize = 50;
/// Bytes of a session sent in one NATS message.
const CHUNK: usize = 256 * 1024;
/// How long a claimant waits for the rest of a session: the giver first waits for its
/// tailers (up to WAIT_CAUGHT_UP).
const REST_TIMEOUT: Duration = Duration::from_secs(12);
/// How long a session handed out waits for its claimant to fetch it.
const KEEP_GIVEN: Duration = Duration::from_secs(60);
/// Silence of a stream read while recovering a session after which the stream is looked at.
const CATCH_UP_WAIT: Duration = Duration::from_secs(3);
/// Longest a claim takes on this node (the CONNECT's own deadline is longer, so that a claim
/// that runs out fails through its own path and puts the entry back).
const CLAIM_BUDGET: Duration = Duration::from_secs(25);
/// How long a node that "no responders" answers for is asked again before it counts as dead
/// (a node moving to another NATS server is missing for a moment).
const NO_RESPONDERS_GRACE: Duration = Duration::from_secs(3);
/// Longest wait for stored messages and tailers while a session moves.
const WAIT_CAUGHT_UP: Duration = Duration::from_secs(5);
/// How long a tailer that was asked to give its hold up (`order.rs`) is waited for, after
/// [`WAIT_CAUGHT_UP`].
const GIVE_UP_WAIT: Duration = Duration::from_secs(1);
/// Tasks writing session entries.
const OP_WORKERS: usize = 16;
/// Requests of other nodes answered at once at most.
const MAX_ANSWERING: usize = 64;

/// The bucket's key of `client`'s entry.
pub(crate) fn key(client: &str) -> String {
    if client.len() <= 120 {
        let mut k = String::with_capacity(1 + 2 * client.len());
        k.push('c');
        for b in client.bytes() {
            let _ = write!(k, "{b:02x}");
        }
        return k;
    }
    let digest = ring::digest::digest(&ring::digest::SHA256, client.as_bytes());
    let mut k = String::from("s");
    for b in digest.as_ref() {
        let _ = write!(k, "{b:02x}");
    }
    k
}

/// The buckets of the session entries (`cluster.session_buckets`): each entry is in the one
/// its key falls in ([`streams::session_bucket_of`]).
#[derive(Clone)]
pub(crate) struct Buckets(Arc<[kv::Store]>);

impl Buckets {
    /// The bucket of the entry whose key is `key`.
    pub fn of(&self, key: &str) -> &kv::Store {
        let n = u16::try_from(self.0.len()).unwrap_or(u16::MAX);
        &self.0[streams::session_bucket_of(key, n)]
    }
}

/// A session bucket's description, which says how many buckets there are: a node configured
/// for another number would look for a client's entry in another bucket.
fn description(j: usize, buckets: u16) -> String {
    format!("Tern cluster: the node holding each client's session (bucket {j} of {buckets})")
}

/// The number of buckets a bucket's description says; one made before entries could be
/// spread over several says none: 1.
fn buckets_said(description: Option<&str>) -> u16 {
    description
        .and_then(|d| d.rsplit_once(" of "))
        .and_then(|(_, tail)| tail.strip_suffix(')'))
        .and_then(|n| n.parse().ok())
        .unwrap_or(1)
}

/// Check that the session entries on NATS are spread over `buckets` buckets, as this node
/// would look for them: no bucket of the other layout (one bucket, or numbered ones) nor
/// one past this layout's last exists, and those that exist say `buckets`. A node configured
/// otherwise would look for a client's entry in another bucket: it refuses to start, naming
/// the setting.
pub(crate) async fn check_layout(
    js: &jetstream::Context,
    prefix: &str,
    buckets: u16,
) -> Result<(), ClusterError> {
    let elsewhere: Vec<String> = match buckets {
        1 => vec![format!("{prefix}_sessions_0")],
        n => vec![format!("{prefix}_sessions"), format!("{prefix}_sessions_{n}")],
    };
    let mine = streams::sessions_buckets(prefix, buckets);
    for bucket in elsewhere.iter().chain(&mine) {
        let stream = format!("KV_{bucket}");
        let said = match js.get_stream(&stream).await {
            Ok(s) => buckets_said(s.cached_info().config.description.as_deref()),
            Err(e) => match e.kind() {
                jetstream::context::GetStreamErrorKind::JetStream(j)
                    if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND =>
                {
                    continue
                }
                _ => {
                    return Err(ClusterError::Unavailable {
                        stream,
                        why: format!("cannot read it: {e}"),
                    })
                }
            },
        };
        if elsewhere.contains(bucket) || said != buckets {
            return Err(ClusterError::Stream {
                stream,
                why: format!(
                    "holds session entries spread over {said} bucket(s), `cluster.session_buckets` is {buckets} (fixed once the cluster has run)"
                ),
            });
        }
    }
    Ok(())
}

/// Create the sessions' buckets, or take those there ([`check_layout`] first).
pub(crate) async fn ensure(
    js: &jetstream::Context,
    prefix: &str,
    replicas: u16,
    buckets: u16,
) -> Result<Buckets, ClusterError> {
    check_layout(js, prefix, buckets).await?;
    let mut stores = Vec::with_capacity(buckets.into());
    for (j, bucket) in streams::sessions_buckets(prefix, buckets).into_iter().enumerate() {
        let store = match js.get_key_value(&bucket).await {
            Ok(kv) => kv,
            Err(_) => js
                .create_key_value(kv::Config {
                    bucket: bucket.clone(),
                    description: description(j, buckets),
                    history: 1,
                    storage: jetstream::stream::StorageType::File,
                    num_replicas: replicas.into(),
                    ..Default::default()
                })
                .await
                .map_err(|e| ClusterError::Unavailable {
                    stream: format!("KV_{bucket}"),
                    why: format!("cannot create it: {e}"),
                })?,
        };
        stores.push(store);
    }
    Ok(Buckets(stores.into()))
}

/// How often the floors of connected sessions are looked at: one that rose since it was
/// last written is written then (a recovery re-reads what arrived after it: duplicates).
const FLOOR_EVERY: Duration = Duration::from_secs(1);
/// Floors written per look at most (each write is a read and a replicated update of the
/// session's entry); the others wait for later looks.
const FLOOR_WRITES: usize = 256;
/// No floor write starts later than this into a look (they go one after another: a slow
/// JetStream slows them down rather than piling them up; one write may retry for up to
/// [`WAIT_CAUGHT_UP`]); the others wait for later looks.
const FLOOR_WRITING: Duration = Duration::from_millis(500);
/// Position snapshots kept (one every [`SNAPSHOT_EVERY`]: ten minutes).
const SNAPSHOTS: usize = 2400;
const SNAPSHOT_EVERY: Duration = Duration::from_millis(250);

/// A client's entry in the directory (JSON).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Record {
    /// The node holding the session.
    pub node: String,
    /// Protocol level of its last connection; 0 until the session was first saved.
    #[serde(default)]
    pub version: u8,
    /// Session Expiry Interval.
    #[serde(default)]
    pub expiry: u32,
    /// Subscriptions: filter, options byte, subscription identifier (0: none).
    #[serde(default)]
    pub subs: Vec<(String, u8, u32)>,
    /// Per shard, a stream sequence such that every message the session may still need
    /// (not yet received, or unacknowledged) is after it: where a node recovering the session
    /// of a dead node reads from.
    #[serde(default)]
    pub floor: Vec<u64>,
    /// Whether its client was away when it was saved.
    #[serde(default)]
    pub offline: bool,
    /// When it was saved (wall ms).
    #[serde(default)]
    pub saved_ms: u64,
    /// QoS 2 deliveries in flight, in the order they were sent (design: `TERN_OUT`): packet
    /// id, 1 once its PUBREL goes out (0: the PUBLISH did), and the message's id (run,
    /// count: [`Message::backplane_id`]). Written before the packet goes out.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub q2: Vec<(u16, u8, u64, u64)>,
    /// QoS 2 messages delivered (PUBCOMP came) that may be after the floor: id (run, count),
    /// shard and stream sequence (shard 65,535: not known yet).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub q2done: Vec<(u64, u64, u16, u64)>,
    /// Incoming QoS 2 packet ids awaiting PUBREL (design: `TERN_Q2IN`), with the id their
    /// message is stored under: run, count, and the node whose `Nats-Msg-Id` it is. Written
    /// before the message is stored; the node is "" once the message is known to be stored
    /// (the id is then not needed). A node recovering the session asks JetStream about the
    /// others ([`Directory::stored`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub q2in: Vec<(u16, u64, u64, String)>,
}

/// Finished QoS 2 deliveries kept in a session's entry, at most; beyond, the oldest are left
/// out (one of them could then arrive twice if the session's node died).
const Q2_DONE_MAX: usize = 1024;

/// A QoS 2 delivery in flight to a session of this node.
struct Flight {
    order: u64,
    released: bool,
    /// Its message's marks; a message that came without an id (from this node's store) gets
    /// a new one at the next write.
    mark: Arc<BackplaneMark>,
}

/// A finished QoS 2 delivery, kept in the entry until the session's floor is past it.
struct Done {
    id: (u64, u64),
    /// Its message's marks (not the message: its payload is not kept for this).
    mark: Option<Arc<BackplaneMark>>,
    position: Option<(u16, u64)>,
}

impl Done {
    /// Its shard and stream sequence, when known (a message of this node learns it when
    /// JetStream stores it).
    fn position(&self) -> Option<(u16, u64)> {
        self.position.or_else(|| self.mark.as_ref()?.position())
    }
}

/// What the entry of a session of this node is to say of its QoS 2 deliveries.
#[derive(Default)]
struct Q2 {
    /// In flight, by packet id.
    flight: HashMap<u16, Flight>,
    /// Finished, oldest first.
    done: VecDeque<Done>,
    /// The order of the next delivery sent.
    next: u64,
    /// The session came from elsewhere: the finished deliveries its entry lists are still
    /// to be taken in (at the next write).
    inherit: bool,
    /// Incoming packet ids awaiting PUBREL: with the marks of a message received here
    /// (stored once its position is known), `None` for one the session came with (written as
    /// the entry says it; a restart from the store checks those with the cluster,
    /// `Directory::unstored_forgotten`).
    incoming: HashMap<u16, Option<Arc<BackplaneMark>>>,
    /// The entry as this node last wrote it, and its revision (`Directory::save`).
    written: Option<(u64, Record)>,
}

impl Record {
    fn parse(raw: &[u8]) -> Record {
        serde_json::from_slice(raw).unwrap_or_else(|_| Record {
            node: String::from_utf8_lossy(raw).into_owned(),
            ..Record::default()
        })
    }

    fn bytes(&self) -> Bytes {
        Bytes::from(serde_json::to_vec(self).unwrap_or_default())
    }
}

fn options_byte(o: &SubscriptionOptions) -> u8 {
    o.qos.as_u8()
        | u8::from(o.no_local) << 2
        | u8::from(o.retain_as_published) << 3
        | (o.retain_handling as u8) << 4
}

fn options_from(b: u8) -> SubscriptionOptions {
    SubscriptionOptions {
        qos: QoS::from_bits(b & 3).unwrap_or(QoS::AtMostOnce),
        no_local: b & 4 != 0,
        retain_as_published: b & 8 != 0,
        retain_handling: match (b >> 4) & 3 {
            1 => RetainHandling::SendIfNew,
            2 => RetainHandling::DoNotSend,
            _ => RetainHandling::SendAtSubscribe,
        },
    }
}

/// What the directory task is told.
pub(crate) enum Op {
    /// A session ended on this node.
    Ended(Arc<str>),
    /// A session's durable part changed; `floor` is where its messages go back to, when
    /// known.
    Saved {
        client: Arc<str>,
        record: Option<Record>,
        floor: Option<Vec<u64>>,
    },
}

/// Changes of entries waiting to be written: the last of each client, in order of arrival.
/// At most one per session of this node (and per session that ended lately).
#[derive(Default)]
pub(crate) struct Pending {
    ops: HashMap<Arc<str>, Op>,
    order: VecDeque<Arc<str>>,
    /// Clients whose change a connection waits for (a ticket), in the order they came: before
    /// those of `order`.
    urgent: VecDeque<Arc<str>>,
    /// The clients in `urgent` (a client with a change waiting is in `urgent` or `order`,
    /// once: it has an entry in `ops`).
    is_urgent: HashSet<Arc<str>>,
    /// Clients whose change a task is writing now.
    busy: HashSet<Arc<str>>,
    /// Tickets of [`Directory::written`] released once the client's change is written: a
    /// SUBACK waits for its ticket, so a subscription acknowledged is in the entry another
    /// node recovers the session from.
    tickets: HashMap<Arc<str>, Vec<u64>>,
}

/// How a session fetched for a claim came.
enum Fetched {
    /// From the node that held it (its token there).
    From { owner: String, token: String },
    /// Recovered from its entry and the streams, read up to `upto`.
    Recovered { record: Record, upto: Vec<u64> },
}

/// A session handed out, waiting for its claimant.
struct Given {
    client: String,
    raw: Bytes,
    at: Instant,
    /// For the first part of a handover: the session's generation, whose rest is to come.
    generation: Option<u64>,
    /// For the first part: the token of the rest, once sent.
    rest: Option<String>,
    /// For the first part: its rest is being made (the giver waits for its tailers).
    resting: bool,
}

/// What a [`Directory`] is made of.
pub(crate) struct Parts {
    pub node: String,
    pub prefix: String,
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    pub kv: Buckets,
    pub outbound: Arc<Outbound>,
    /// Per shard, the last stream sequence this node's tailer handled.
    pub positions: Arc<[AtomicU64]>,
    /// Asks the tailers to give their holds up (`order.rs`).
    pub give_up: Arc<crate::order::GiveUp>,
}

/// This node's side of the directory.
pub(crate) struct Directory {
    parts: Parts,
    /// Clients whose claim this node is making (how many at once, since when): from the
    /// claim until the session is attached here, another node asking for the session is
    /// told to wait.
    claiming: Mutex<HashMap<Arc<str>, (usize, Instant)>>,
    /// Sessions handed out, by token.
    given: Mutex<HashMap<String, Given>>,
    /// Sessions fetched and not yet installed.
    fetched: Mutex<HashMap<Arc<str>, Fetched>>,
    /// Session changes, for [`run`].
    ops: Mutex<Pending>,
    /// The numbering of the entry writes a SUBACK waits for (the outbound's: a QoS 2
    /// message may wait for one before it is stored).
    pub(crate) written: Arc<crate::outbound::Tickets>,
    /// Told when `ops` has more.
    ops_added: tokio::sync::Notify,
    /// The broker, once attached (to keep a local copy rather than recover over it).
    admin: std::sync::OnceLock<Admin>,
    /// The tailers' positions over the last minutes, newest last; `start` when the node
    /// started (the tailers began there).
    snapshots: Mutex<VecDeque<(Instant, Vec<u64>)>>,
    start: (Instant, Vec<u64>),
    /// The QoS 2 deliveries of this node's sessions that outlive their connection.
    q2: Mutex<HashMap<Arc<str>, Q2>>,
    /// Sessions fetched here lately: their floor is written once they hold no message they
    /// came with ([`refresh_floors`]), rather than at the next look at every connected session.
    settling: Mutex<HashMap<Arc<str>, Settling>>,
    /// Nodes "no responders" is heard for, by any claim of this node.
    silent: Mutex<Silences>,
    /// Entry writes given up because JetStream did not answer (`cluster_session_writes_failed`).
    pub(crate) writes_failed: AtomicU64,
}

/// The nodes "no responders" is heard for, by the claims of this node: when first and when
/// last. A silence counts from the first claim that heard it, as long as claims keep hearing
/// it (each asks every 250 ms); one not heard for [`SILENCE_BRIDGE`] starts again, and an
/// answer ends it. So when a node dies with many sessions, its clients reconnecting here wait
/// for one grace together, not one each; and a node that answered in between is never taken
/// for dead sooner than one that did not.
#[derive(Debug, Default)]
struct Silences(HashMap<String, (Instant, Instant)>);

/// Longest gap between two claims hearing "no responders" from a node for its silence to go
/// on (claims ask every 250 ms; one that waits for an answer asks again within 2.25 s, and
/// then starts a new silence).
const SILENCE_BRIDGE: Duration = Duration::from_secs(1);

impl Silences {
    /// "No responders" heard for `node` now: how long it has been silent.
    fn silent_for(&mut self, node: &str, now: Instant) -> Duration {
        let first = match self.0.get_mut(node) {
            Some((first, last)) if now.saturating_duration_since(*last) < SILENCE_BRIDGE => {
                *last = now;
                *first
            }
            _ => {
                // Nodes come and go by name: only those heard lately are kept.
                self.0
                    .retain(|_, (_, last)| now.saturating_duration_since(*last) < SILENCE_BRIDGE);
                self.0.insert(node.to_string(), (now, now));
                now
            }
        };
        now.saturating_duration_since(first)
    }

    /// `node` answered.
    fn heard(&mut self, node: &str) {
        if !self.0.is_empty() {
            self.0.remove(node);
        }
    }
}

/// A session whose floor is awaited after it came here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Settling {
    /// When its claim ended.
    since: Instant,
    /// When it is looked at next.
    next: Instant,
    /// How long until the look after that (doubling up to [`SETTLE_AT_MOST`]).
    wait: Duration,
}

impl std::fmt::Debug for Directory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Directory")
            .field("node", &self.parts.node)
            .finish_non_exhaustive()
    }
}

/// Ends a claim of this node when dropped, however the claim ends (see
/// [`Directory::claimed`]).
pub(crate) struct ClaimGuard(Arc<Directory>, Arc<str>, bool);

impl ClaimGuard {
    /// `received`: the claim fetched the session (handed over, or recovered).
    pub(crate) fn new(directory: Arc<Directory>, client: Arc<str>, received: bool) -> ClaimGuard {
        ClaimGuard(directory, client, received)
    }
}

impl Drop for ClaimGuard {
    fn drop(&mut self) {
        {
            let mut claiming = self.0.claiming.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((n, _)) = claiming.get_mut(&self.1) {
                *n -= 1;
                if *n == 0 {
                    claiming.remove(&self.1);
                }
            }
        }
        if !self.2 {
            return;
        }
        // No floor was written while the session came: one is, soon (a claim that failed
        // leaves no session here, and nothing is written for it).
        let mut settling = self.0.settling.lock().unwrap_or_else(|e| e.into_inner());
        if settling.len() < MAX_SETTLING {
            let now = Instant::now();
            settling.insert(
                self.1.clone(),
                Settling {
                    since: now,
                    next: now,
                    wait: SETTLE_EVERY,
                },
            );
        }
    }
}

/// Sessions whose floor is awaited after their claim, at most (beyond, the looks every
/// [`FLOOR_EVERY`] write theirs).
const MAX_SETTLING: usize = 100_000;

/// How long a claimed session's floor is awaited before the looks at every connected session take over.
const SETTLE_WITHIN: Duration = Duration::from_secs(60);

/// How often the floors of sessions claimed lately are looked at at first (a look is a
/// lock and a look at the session's queue; each session is written once).
const SETTLE_EVERY: Duration = Duration::from_millis(100);

/// The longest wait between two looks at a session that still holds what it came with.
const SETTLE_AT_MOST: Duration = Duration::from_millis(3200);

/// Why a request to another node got no answer.
enum Ask {
    /// Nobody listens on the node's subject: the node is gone from NATS.
    NoResponders,
    /// A timeout or another failure: the node may still run.
    Failed(String),
}

impl std::fmt::Display for Ask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ask::NoResponders => f.write_str("no responders"),
            Ask::Failed(why) => f.write_str(why),
        }
    }
}

impl Directory {
    pub(crate) fn new(parts: Parts) -> Directory {
        let start = (Instant::now(), positions(&parts.positions));
        let written = parts.outbound.entries.clone();
        Directory {
            parts,
            claiming: Mutex::default(),
            given: Mutex::default(),
            fetched: Mutex::default(),
            ops: Mutex::default(),
            written,
            ops_added: tokio::sync::Notify::new(),
            admin: std::sync::OnceLock::new(),
            snapshots: Mutex::default(),
            start,
            q2: Mutex::default(),
            settling: Mutex::default(),
            silent: Mutex::default(),
            writes_failed: AtomicU64::new(0),
        }
    }

    /// Queue a change of `client`'s entry, merged with one still waiting for it (only the
    /// last state is written; floors merged by their maximum, each being safe).
    fn enqueue(&self, client: Arc<str>, op: Op) {
        self.enqueue_with(client, op, None);
    }

    /// [`Directory::enqueue`], with a ticket to release once written.
    fn enqueue_with(&self, client: Arc<str>, op: Op, ticket: Option<u64>) {
        let mut p = self.ops.lock().unwrap_or_else(|e| e.into_inner());
        let waiting = p.ops.contains_key(&client);
        if let Some(t) = ticket {
            p.tickets.entry(client.clone()).or_default().push(t);
            // Awaited by a connection: before the changes nobody waits for, after those
            // awaited already (first come, first written: the tickets' progress has no gap).
            if !p.is_urgent.contains(&client) {
                if waiting {
                    if let Some(i) = p.order.iter().position(|c| *c == client) {
                        p.order.remove(i);
                    }
                }
                p.urgent.push_back(client.clone());
                p.is_urgent.insert(client.clone());
            }
        } else if !waiting {
            p.order.push_back(client.clone());
        }
        let merged = match (p.ops.remove(&client), op) {
            (
                Some(Op::Saved {
                    record: r0,
                    floor: f0,
                    ..
                }),
                Op::Saved {
                    client: c,
                    record,
                    floor,
                },
            ) => Op::Saved {
                client: c,
                record: record.or(r0),
                floor: match (f0, floor) {
                    (Some(a), Some(b)) if a.len() == b.len() => {
                        Some(a.iter().zip(&b).map(|(x, y)| (*x).max(*y)).collect())
                    }
                    (a, b) => b.or(a),
                },
            },
            (_, op) => op,
        };
        p.ops.insert(client, merged);
        drop(p);
        self.ops_added.notify_waiters();
    }

    /// Put back a change whose write failed, under the one that may have come meanwhile
    /// (whose record, newer, wins).
    fn requeue(&self, client: Arc<str>, record: Option<Record>, floor: Option<Vec<u64>>) {
        let mut p = self.ops.lock().unwrap_or_else(|e| e.into_inner());
        if !p.ops.contains_key(&client) {
            p.order.push_back(client.clone());
        }
        let merged = match p.ops.remove(&client) {
            Some(Op::Saved {
                client: c,
                record: r1,
                floor: f1,
            }) => Op::Saved {
                client: c,
                record: r1.or(record),
                floor: f1.or(floor),
            },
            Some(ended @ Op::Ended(_)) => ended,
            None => Op::Saved {
                client: client.clone(),
                record,
                floor,
            },
        };
        p.ops.insert(client, merged);
        drop(p);
        self.ops_added.notify_waiters();
    }

    /// The next change to write, of a client no other task is writing (marked as being
    /// written).
    fn next_op(&self) -> Option<(Arc<str>, Op, Vec<u64>)> {
        let mut p = self.ops.lock().unwrap_or_else(|e| e.into_inner());
        let client = match p.urgent.iter().position(|c| !p.busy.contains(c)) {
            Some(i) => {
                let c = p.urgent.remove(i)?;
                p.is_urgent.remove(&c);
                c
            }
            None => {
                let i = p.order.iter().position(|c| !p.busy.contains(c))?;
                p.order.remove(i)?
            }
        };
        let op = p.ops.remove(&client)?;
        let tickets = p.tickets.remove(&client).unwrap_or_default();
        p.busy.insert(client.clone());
        Some((client, op, tickets))
    }

    /// `client`'s change is written; one that came meanwhile is in the queue already.
    fn op_done(&self, client: &Arc<str>) {
        let mut p = self.ops.lock().unwrap_or_else(|e| e.into_inner());
        p.busy.remove(client);
        drop(p);
        self.ops_added.notify_waiters();
    }

    /// Whether this node's broker holds a session of `client`.
    fn holds(&self, client: &str) -> bool {
        self.admin.get().is_some_and(|a| a.session(client).is_some())
    }

    /// Whether this node is claiming `client`'s session now (a claim older than a minute is
    /// taken as abandoned).
    fn is_claiming(&self, client: &str) -> bool {
        let claiming = self.claiming.lock().unwrap_or_else(|e| e.into_inner());
        claiming
            .get(client)
            .is_some_and(|(n, since)| *n > 0 && since.elapsed() < Duration::from_secs(60))
    }

    /// Where the tailers stood at `t` (the latest snapshot taken at or before it); `None`
    /// when `t` is before this node started.
    fn positions_at(&self, t: Instant) -> Option<Vec<u64>> {
        let snapshots = self.snapshots.lock().unwrap_or_else(|e| e.into_inner());
        // Taken in time order: the last one at or before `t`.
        let after = snapshots.partition_point(|(at, _)| *at <= t);
        if let Some((_, p)) = after.checked_sub(1).and_then(|i| snapshots.get(i)) {
            return Some(p.clone());
        }
        (t >= self.start.0).then(|| self.start.1.clone())
    }

    /// The floor of `client`'s session holding `held`: what it may still need is after it.
    /// `before`: the tailers' positions read before the session was looked at (a session
    /// that held nothing then has had everything up to there). None while this node claims
    /// the session (whatever the claim's age), and while a session fetched from the
    /// directory (handed over, or recovered) is not installed yet: a copy this node held
    /// from before says nothing of it. Once installed, until its rest is in, the broker says
    /// `Held::Unknown` for it (the rest of a recovery, read from the streams up to where the
    /// tailers are, comes after the session is installed).
    fn floor(&self, client: &str, held: Held, before: Vec<u64>) -> Option<Vec<u64>> {
        let claimed = self
            .claiming
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(client)
            .is_some_and(|(n, _)| *n > 0);
        if claimed
            || self
                .fetched
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains_key(client)
        {
            return None;
        }
        match held {
            Held::Nothing => Some(before),
            Held::Since(t) => self.positions_at(t),
            Held::Placed { since, lowest } => {
                let mut floor = match since {
                    Some(t) => self.positions_at(t)?,
                    None => before,
                };
                for (k, seq) in lowest {
                    let f = floor.get_mut(usize::from(k))?;
                    *f = (*f).min(seq.saturating_sub(1));
                }
                Some(floor)
            }
            Held::Unknown => None,
        }
    }

    /// A session of this node was saved (see [`Backplane::session_saved`]).
    ///
    /// [`Backplane::session_saved`]: tern_broker::backplane::Backplane::session_saved
    pub(crate) fn saved(
        &self,
        client: &str,
        snapshot: &SessionSnapshot,
        offline: bool,
        held: Held,
        awaited: bool,
    ) -> Option<u64> {
        let record = Record {
            node: self.parts.node.clone(),
            version: snapshot.version.level(),
            expiry: snapshot.expiry_interval,
            subs: snapshot
                .subscriptions
                .iter()
                .map(|(f, o, id)| (f.clone(), options_byte(o), id.unwrap_or(0)))
                .collect(),
            floor: Vec::new(),
            offline,
            saved_ms: wall_ms(),
            // Filled in when written (`q2_into`).
            q2: Vec::new(),
            q2done: Vec::new(),
            q2in: Vec::new(),
        };
        // A SUBACK/UNSUBACK waits for the entry that has the change (`awaited`): the
        // session's subscriptions survive its node's death once acknowledged.
        let ticket = awaited.then(|| self.written.reserve());
        let op = Op::Saved {
            client: client.into(),
            record: Some(record),
            floor: self.floor(client, held, positions(&self.parts.positions)),
        };
        self.enqueue_with(client.into(), op, ticket);
        ticket
    }

    /// A QoS 2 delivery to `client`'s session reached a stage (see
    /// [`Backplane::qos2_stage`]): its entry says so before the packet goes out; the ticket
    /// of that write.
    ///
    /// [`Backplane::qos2_stage`]: tern_broker::backplane::Backplane::qos2_stage
    pub(crate) fn q2_stage(
        &self,
        client: &str,
        packet_id: u16,
        released: bool,
        message: &Arc<Message>,
    ) -> u64 {
        // The id a local message gets here is the one its stream copy carries.
        self.parts.outbound.id_of(message);
        let mark = message.backplane_mark();
        {
            let mut all = self.q2.lock().unwrap_or_else(|e| e.into_inner());
            let q = match all.get_mut(client) {
                Some(q) => q,
                // What the entry says of delivered messages is kept.
                None => all.entry(Arc::from(client)).or_insert_with(|| Q2 {
                    inherit: true,
                    ..Q2::default()
                }),
            };
            let order = q.next;
            q.next += 1;
            match q.flight.get_mut(&packet_id) {
                Some(f) if Arc::ptr_eq(&f.mark, &mark) => f.released = released,
                _ => {
                    q.flight.insert(
                        packet_id,
                        Flight {
                            order,
                            released,
                            mark,
                        },
                    );
                }
            }
        }
        self.write_awaited(client)
    }

    /// Queue a write of `client`'s entry (what it holds, with this node's QoS 2 state) that a
    /// connection waits for: its ticket.
    fn write_awaited(&self, client: &str) -> u64 {
        let ticket = self.written.reserve();
        let op = Op::Saved {
            client: client.into(),
            record: None,
            floor: None,
        };
        self.enqueue_with(client.into(), op, Some(ticket));
        ticket
    }

    /// A QoS 2 delivery to `client`'s session is finished: the entry lists its message among
    /// the delivered ones (at its next write) until the floor is past it.
    pub(crate) fn q2_done(&self, client: &str, packet_id: u16) {
        let mut all = self.q2.lock().unwrap_or_else(|e| e.into_inner());
        let Some(q) = all.get_mut(client) else { return };
        let Some(f) = q.flight.remove(&packet_id) else {
            return;
        };
        let Some(id) = f.mark.id() else { return };
        q.done.push_back(Done {
            id,
            mark: Some(f.mark),
            position: None,
        });
        if q.done.len() > Q2_DONE_MAX {
            q.done.pop_front();
        }
    }

    /// `client`'s client published a QoS 2 message with `packet_id` (see
    /// [`Backplane::qos2_received`]; under the session's lock): the marks of the message, with
    /// its id, held until the entry lists the packet id with it (so that a node recovering
    /// the session knows whether a resent PUBLISH with that id is stored already), and the
    /// ticket of that write.
    ///
    /// [`Backplane::qos2_received`]: tern_broker::backplane::Backplane::qos2_received
    pub(crate) fn q2_received(&self, client: &str, packet_id: u16) -> (Arc<BackplaneMark>, u64) {
        let mark = Arc::new(BackplaneMark::default());
        let outbound = &self.parts.outbound;
        mark.id_or(|| outbound.fresh_id());
        {
            let mut all = self.q2.lock().unwrap_or_else(|e| e.into_inner());
            let q = all.entry(Arc::from(client)).or_insert_with(|| Q2 {
                inherit: true,
                ..Q2::default()
            });
            q.incoming.insert(packet_id, Some(mark.clone()));
        }
        let ticket = self.write_awaited(client);
        mark.hold_until(ticket);
        (mark, ticket)
    }

    /// A PUBREL came for `client`'s incoming `packet_id` (see [`Backplane::qos2_released`]):
    /// the ticket of the entry write without it, which the PUBCOMP waits for.
    ///
    /// [`Backplane::qos2_released`]: tern_broker::backplane::Backplane::qos2_released
    pub(crate) fn q2_released(&self, client: &str, packet_id: u16) -> u64 {
        if let Some(q) = self.q2.lock().unwrap_or_else(|e| e.into_inner()).get_mut(client) {
            q.incoming.remove(&packet_id);
        }
        // Written even when this node's QoS 2 state did not list the id (a session that
        // came with it before this node wrote its entry): the entry may list it, and the id
        // must be gone from it before the client reuses it.
        self.write_awaited(client)
    }

    /// `client`'s session came to this node with these QoS 2 deliveries in flight (see
    /// [`Backplane::qos2_resumed`]): they replace what this node knew. Written at the next
    /// change, and before they are resent ([`Directory::q2_write`]).
    ///
    /// [`Backplane::qos2_resumed`]: tern_broker::backplane::Backplane::qos2_resumed
    pub(crate) fn q2_resumed(&self, client: &str, in_flight: &[(u16, bool, Arc<Message>)], incoming: &[u16]) {
        if in_flight.is_empty() && incoming.is_empty() {
            // What the entry says of deliveries stays (nothing to write, nothing for a
            // CONNACK to wait for).
            self.q2_forget(client);
            return;
        }
        let mut q = Q2 {
            inherit: true,
            incoming: incoming.iter().map(|id| (*id, None)).collect(),
            ..Q2::default()
        };
        for (packet_id, released, message) in in_flight {
            let order = q.next;
            q.next += 1;
            q.flight.insert(
                *packet_id,
                Flight {
                    order,
                    released: *released,
                    mark: message.backplane_mark(),
                },
            );
        }
        self.q2
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(client.into(), q);
    }

    /// The incoming QoS 2 ids of `client`'s session whose message is not stored yet (held
    /// for the entry write, or on its way to JetStream), with their messages' marks.
    fn q2_unstored(&self, client: &str) -> Vec<(u16, Arc<BackplaneMark>)> {
        let all = self.q2.lock().unwrap_or_else(|e| e.into_inner());
        let Some(q) = all.get(client) else {
            return Vec::new();
        };
        q.incoming
            .iter()
            .filter_map(|(id, mark)| Some((*id, mark.as_ref()?.clone())))
            .filter(|(_, mark)| mark.position().is_none())
            .collect()
    }

    /// `raw`, the handout of `client`'s session, once the messages of `unstored` are stored:
    /// the claimant answers a resend of one of those ids as a duplicate. Waited for briefly
    /// (the asker gives up after `ASK_TIMEOUT`); an id whose message is still not stored
    /// then leaves the handout, and its resend is stored again on the claimant (a duplicate,
    /// never a loss).
    async fn stored_first(
        &self,
        client: &str,
        raw: Bytes,
        unstored: Vec<(u16, Arc<BackplaneMark>)>,
    ) -> Bytes {
        if unstored.is_empty() {
            return raw;
        }
        let deadline = Instant::now() + ASK_TIMEOUT / 2;
        while unstored
            .iter()
            .any(|(_, m)| m.position().is_none() && !m.refused())
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let late: Vec<u16> = unstored
            .iter()
            .filter(|(_, m)| m.position().is_none())
            .map(|(id, _)| *id)
            .collect();
        if late.is_empty() {
            return raw;
        }
        let Ok(mut h) = Handover::decode(&raw) else {
            return raw;
        };
        h.qos2.retain(|id| !late.contains(id));
        tracing::warn!(client_id = client, ids = ?late, "session handed over before its QoS 2 messages were stored: their resends are taken as new");
        h.encode()
    }

    /// The session of `client` is no longer this node's.
    pub(crate) fn q2_forget(&self, client: &str) {
        self.q2.lock().unwrap_or_else(|e| e.into_inner()).remove(client);
    }

    /// Write what this node knows of `client`'s QoS 2 deliveries to its entry, if anything:
    /// the ticket of that write (a connection attached to the session waits for it before it
    /// resends them).
    pub(crate) fn q2_write(&self, client: &str) -> Option<u64> {
        let known = self
            .q2
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(client);
        known.then(|| self.write_awaited(client))
    }

    /// Whether the entry write of `ticket` was made ([`crate::outbound::Tickets::fail`]).
    pub(crate) fn kept(&self, ticket: u64) -> bool {
        self.written.was_kept(ticket)
    }

    /// The entry writes of `tickets` failed (`unanswered`: JetStream did not answer) or were
    /// not made (another node claimed the session).
    fn not_kept(&self, tickets: &[u64], unanswered: bool) {
        self.written.fail(tickets, unanswered);
    }

    /// Write `client`'s entry again as its session stands here, with the incoming QoS 2 ids
    /// it holds now (see [`crate::outbound::Outbound::relist`]): `Ok(false)` when the entry
    /// names another node (read again for a while: a read may come from a replica behind).
    pub(crate) async fn relist(&self, client: &str) -> Result<bool, String> {
        self.save(client, None, None, true).await
    }

    /// The floor of a session with QoS 2 state, as it stands now (its entry is written at
    /// every stage of a QoS 2 delivery: the floor keeps up, and the delivered messages it
    /// lists stay few).
    fn q2_floor(&self, client: &str) -> Option<Vec<u64>> {
        if !self
            .q2
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(client)
        {
            return None;
        }
        // Read before the session is looked at (see `refresh_floors`).
        let before = positions(&self.parts.positions);
        let held = self.admin.get()?.held(client)?;
        self.floor(client, held, before)
    }

    /// Put what this node knows of `client`'s QoS 2 deliveries into `record` (about to be
    /// written over `old`); without QoS 2 state here, what `old` said stays.
    fn q2_into(&self, client: &str, old: &Record, record: &mut Record) {
        let mut all = self.q2.lock().unwrap_or_else(|e| e.into_inner());
        let Some(q) = all.get_mut(client) else {
            record.q2.clone_from(&old.q2);
            record.q2done.clone_from(&old.q2done);
            // A session here without QoS 2 state has no incoming id awaiting PUBREL (one it
            // came with makes state, `q2_resumed`).
            record.q2in.clear();
            return;
        };
        if std::mem::take(&mut q.inherit) {
            // What the node the session came from had delivered, before what was delivered here.
            let mut inherited: VecDeque<Done> = old
                .q2done
                .iter()
                .map(|&(run, count, k, seq)| Done {
                    id: (run, count),
                    mark: None,
                    position: (k != u16::MAX).then_some((k, seq)),
                })
                .collect();
            inherited.append(&mut q.done);
            q.done = inherited;
        }
        let floor = &record.floor;
        q.done.retain(|d| match d.position() {
            Some((k, seq)) => floor.get(usize::from(k)).is_none_or(|f| *f < seq),
            None => true,
        });
        while q.done.len() > Q2_DONE_MAX {
            q.done.pop_front();
        }
        let mut flight: Vec<(&u16, &Flight)> = q.flight.iter().collect();
        flight.sort_by_key(|(_, f)| f.order);
        let outbound = &self.parts.outbound;
        record.q2 = flight
            .into_iter()
            .map(|(packet_id, f)| {
                // A message from this node's store whose payload record was written before
                // it had an id (one this node's client published without QoS 2 state kept in
                // the cluster) has none: a new one, which a recovery does not find; it
                // releases the packet id and reads the message again (a duplicate at worst,
                // never a message skipped).
                let (run, count) = f.mark.id_or(|| outbound.fresh_id());
                (*packet_id, u8::from(f.released), run, count)
            })
            .collect();
        record.q2done = q
            .done
            .iter()
            .map(|d| {
                let (k, seq) = d.position().unwrap_or((u16::MAX, 0));
                (d.id.0, d.id.1, k, seq)
            })
            .collect();
        let node = &self.parts.node;
        record.q2in = q
            .incoming
            .iter()
            .map(|(packet_id, mark)| match mark {
                Some(m) => match (m.id(), m.position()) {
                    // Received here, not known to be stored yet: the id it is stored under.
                    (Some((run, count)), None) => (*packet_id, run, count, node.clone()),
                    _ => (*packet_id, 0, 0, String::new()),
                },
                // The session came with it: as the entry says (one not known to be stored
                // stays so, for a recovery to ask about).
                None => old.q2in.iter().find(|e| e.0 == *packet_id).cloned().unwrap_or((
                    *packet_id,
                    0,
                    0,
                    String::new(),
                )),
            })
            .collect();
        record.q2in.sort_unstable_by_key(|e| e.0);
    }

    /// Write a saved session's entry, if it is still this node's (`record` `None`: only its
    /// floor).
    async fn save(
        &self,
        client: &str,
        record: Option<Record>,
        floor: Option<Vec<u64>>,
        awaited: bool,
    ) -> Result<bool, String> {
        let key = key(client);
        let floor = match (floor, self.q2_floor(client)) {
            (Some(a), Some(b)) if a.len() == b.len() => {
                Some(a.iter().zip(&b).map(|(x, y)| (*x).max(*y)).collect())
            }
            (a, b) => a.or(b),
        };
        // JetStream may be electing the bucket's leader: a QoS 2 delivery waits for this
        // write, so it is tried again for a while.
        let deadline = Instant::now() + WAIT_CAUGHT_UP;
        // Reads that found another node's name, for a write a connection waits for: a read
        // may come from a replica behind (a claim of this node just wrote the entry).
        let mut elsewhere = 0;
        // The entry as this node last wrote it, for a session with QoS 2 state (written at
        // every stage): written over without a read; if anyone wrote it since, the update
        // fails and the entry is read.
        let mut last = self
            .q2
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(client)
            .and_then(|q| q.written.take().filter(|_| !q.inherit));
        for _ in 0..MAX_TRIES {
            let (old, revision) = match last.take() {
                Some((revision, old)) => (old, revision),
                None => {
                    let e = match self.parts.kv.of(&key).entry(key.clone()).await {
                        Ok(e) => e,
                        Err(e) if Instant::now() < deadline => {
                            tracing::debug!(
                                client_id = client,
                                "cluster sessions: the entry cannot be read ({e}); trying again"
                            );
                            tokio::time::sleep(Duration::from_millis(250)).await;
                            continue;
                        }
                        Err(e) => return Err(e.to_string()),
                    };
                    // No entry: the session ended (nothing to recover, nothing to keep).
                    let Some(e) = e else {
                        return Ok(true);
                    };
                    if e.operation != kv::Operation::Put {
                        return Ok(true);
                    }
                    (Record::parse(&e.value), e.revision)
                }
            };
            if old.node != self.parts.node {
                if awaited && elsewhere < 3 {
                    elsewhere += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
                // Another node claimed the session: what this write says is not kept.
                return Ok(false);
            }
            let mut record = record.clone().unwrap_or_else(|| old.clone());
            // The floor only rises: each one was safe when written, and stays so.
            record.floor = match floor.as_ref() {
                Some(f) if old.floor.len() == f.len() => {
                    old.floor.iter().zip(f).map(|(a, b)| (*a).max(*b)).collect()
                }
                Some(f) if old.floor.is_empty() => f.clone(),
                _ => old.floor.clone(),
            };
            self.q2_into(client, &old, &mut record);
            match self
                .parts
                .kv
                .of(&key)
                .update(&key, record.bytes(), revision)
                .await
            {
                Ok(revision) => {
                    // Not for a session's QoS 2 state made anew meanwhile (it reads first).
                    if let Some(q) = self.q2.lock().unwrap_or_else(|e| e.into_inner()).get_mut(client) {
                        if !q.inherit && !record.offline {
                            q.written = Some((revision, record));
                        }
                    }
                    return Ok(true);
                }
                // Another writer in between (a claim, or the entry read from a replica behind):
                // read again.
                Err(e)
                    if e.kind() == kv::UpdateErrorKind::WrongLastRevision
                        || e.to_string().contains("wrong last sequence") =>
                {
                    continue
                }
                Err(e) if Instant::now() < deadline => {
                    tracing::debug!(
                        client_id = client,
                        "cluster sessions: the entry cannot be written ({e}); trying again"
                    );
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(e) => return Err(e.to_string()),
            }
        }
        Err("the entry kept changing".into())
    }

    /// Wait until every QoS 1/2 message this node's clients published so far is stored in
    /// JetStream (so that the node giving a session up sees them in its tailers).
    async fn own_messages_stored(&self) {
        let o = &self.parts.outbound;
        let target = o.submitted();
        let deadline = tokio::time::Instant::now() + WAIT_CAUGHT_UP;
        loop {
            // One reading for the test and the wait (see the broker's backplane_commit).
            let seen = o.progress.get();
            if seen >= target || o.progress.has_failed() {
                return;
            }
            if tokio::time::timeout_at(deadline, o.progress.wait_past(seen))
                .await
                .is_err()
            {
                tracing::warn!(stored = o.progress.get(), target, "cluster sessions: this node's messages are not all stored; a message may miss a session moving here");
                return;
            }
        }
    }

    /// Wait, up to [`WAIT_CAUGHT_UP`], until this node's tailers have handled the messages up
    /// to `ends` (a shard's last sequence each), before a session of a node that is gone is
    /// read from the streams up to there and installed here: a tailer still behind would hand
    /// the installed session what the read gave it already (a QoS 2 message twice; seen when
    /// a NATS server died with the session's node and this node's tailer took seconds to
    /// come back). Past the wait it goes on, saying so (duplicates possible, never a loss).
    async fn tailers_past(&self, ends: &[u64]) {
        let deadline = tokio::time::Instant::now() + WAIT_CAUGHT_UP;
        for (k, &end) in ends.iter().enumerate() {
            if !self.tailer_reaches(k, end, deadline).await {
                let at = self.parts.positions.get(k).map(|p| p.load(Ordering::Acquire));
                tracing::warn!(end, at, "cluster sessions: a tailer is behind the stream a recovered session is read from; the session may get some messages twice");
                return;
            }
        }
    }

    /// Wait until shard `k`'s tailer has handled the messages up to `end`, until `deadline`;
    /// a tailer still short then may be holding messages back for an earlier one
    /// (`order.rs`), which can take longer than a session that moves can wait: it is asked
    /// to let them go, and waited for [`GIVE_UP_WAIT`] more. Whether it got there.
    async fn tailer_reaches(&self, k: usize, end: u64, deadline: tokio::time::Instant) -> bool {
        let Some(position) = self.parts.positions.get(k) else {
            return true;
        };
        let mut deadline = deadline;
        let mut asked = false;
        while position.load(Ordering::Acquire) < end {
            if tokio::time::Instant::now() >= deadline {
                if asked {
                    return false;
                }
                self.parts.give_up.ask(k);
                asked = true;
                deadline = tokio::time::Instant::now() + GIVE_UP_WAIT;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        true
    }

    /// Wait until this node's tailers have handled every message stored so far, so that a
    /// session leaving it has received all of them here.
    async fn tailers_caught_up(&self) -> Vec<u64> {
        let deadline = tokio::time::Instant::now() + WAIT_CAUGHT_UP;
        let mut ends = positions(&self.parts.positions);
        for (k, position) in self.parts.positions.iter().enumerate() {
            let name = streams::stream_name(&self.parts.prefix, k as u16);
            let last = match self.stream_state(k).await {
                Ok(state) => state.last_sequence,
                Err(e) => {
                    tracing::warn!(stream = %name, "cluster sessions: cannot read the stream's end: {e}");
                    continue;
                }
            };
            ends[k] = ends[k].max(last);
            if !self.tailer_reaches(k, last, deadline).await {
                tracing::warn!(stream = %name, last, at = position.load(Ordering::Acquire), "cluster sessions: the tailer is behind; a message may miss a session leaving this node");
                return ends;
            }
        }
        ends
    }

    fn control(&self, node: &str, verb: &str) -> String {
        format!("{}.ctl.{node}.{verb}", self.parts.prefix)
    }

    /// Make this node the holder of `client`'s session; the session the previous holder
    /// handed over, if any (see the module documentation).
    pub(crate) async fn claim(&self, client: Arc<str>, clean_start: bool) -> Result<Option<Bytes>, String> {
        // One claim of a client at a time on this node (a client retrying its CONNECT while
        // the first is still claiming): the later one waits for the first to end.
        let budget = Instant::now() + CLAIM_BUDGET;
        loop {
            {
                let mut claiming = self.claiming.lock().unwrap_or_else(|e| e.into_inner());
                let entry = claiming.entry(client.clone()).or_insert((0, Instant::now()));
                if entry.0 == 0 || entry.1.elapsed() >= Duration::from_secs(60) || Instant::now() >= budget {
                    entry.0 += 1;
                    entry.1 = Instant::now();
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let key = key(&client);
        // Every write is a compare-and-swap; one that fails (another node, or this node's
        // own deletion of an ended session's entry, wrote meanwhile) reads again.
        // JetStream may be electing the bucket's leader (a NATS server just restarted): reads
        // and writes that fail for another reason than a changed entry are tried again for
        // up to CLAIM_WAIT, and the CONNECT waits.
        let deadline = tokio::time::Instant::now() + CLAIM_WAIT;
        let mut failed = String::new();
        let mut tries = 0;
        while tries < MAX_TRIES {
            let entry = match self.parts.kv.of(&key).entry(key.clone()).await {
                Ok(e) => e,
                Err(e) if tokio::time::Instant::now() < deadline => {
                    tracing::debug!(client_id = %client, "the session directory cannot be read ({e}); trying again");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    continue;
                }
                Err(e) => return Err(format!("the session directory cannot be read: {e}")),
            };
            let holder = match entry {
                Some(e) if e.operation == kv::Operation::Put => Some((Record::parse(&e.value), e.revision)),
                _ => None,
            };
            let written: Result<u64, String> = match &holder {
                None => {
                    let fresh = Record {
                        node: self.parts.node.clone(),
                        floor: positions(&self.parts.positions),
                        saved_ms: wall_ms(),
                        ..Record::default()
                    };
                    self.parts
                        .kv
                        .of(&key)
                        .create(&key, fresh.bytes())
                        .await
                        .map_err(|e| e.to_string())
                }
                // Its own name is written again (a new revision), so that the deletion of an
                // entry this node's session left a moment ago, which expects the old
                // revision, fails. What the entry says of the session stays until saved.
                Some((old, revision)) => {
                    let mine = Record {
                        node: self.parts.node.clone(),
                        offline: false,
                        ..old.clone()
                    };
                    self.parts
                        .kv
                        .of(&key)
                        .update(&key, mine.bytes(), *revision)
                        .await
                        .map_err(|e| e.to_string())
                }
            };
            let revision = match written {
                Ok(r) => r,
                Err(e) => {
                    let raced = e.contains("wrong last sequence") || e.contains("already exists");
                    if !raced && tokio::time::Instant::now() < deadline {
                        tracing::debug!(client_id = %client, "the session directory cannot be written ({e}); trying again");
                        tokio::time::sleep(Duration::from_millis(250)).await;
                    } else {
                        tries += 1;
                        // Another writer of the same entry (a node's save of the session, another
                        // claim): a few milliseconds apart, so that one of them gets through.
                        let jitter = u64::from(
                            std::time::SystemTime::now()
                                .duration_since(std::time::UNIX_EPOCH)
                                .map_or(0, |d| d.subsec_nanos())
                                % 20,
                        );
                        tokio::time::sleep(Duration::from_millis(jitter)).await;
                    }
                    failed = e;
                    continue;
                }
            };
            return match holder {
                Some((old, _)) if old.node != self.parts.node => {
                    let owner = old.node.clone();
                    let fetched = self
                        .fetch(&owner, &client, clean_start, old.clone(), budget)
                        .await;
                    if fetched.is_err() {
                        // The session stayed where it was: the entry says so again, so that
                        // the client's next attempt asks that node.
                        if let Err(e) = self.parts.kv.of(&key).update(&key, old.bytes(), revision).await {
                            tracing::warn!(client_id = %client, "cluster sessions: the entry was not put back: {e}");
                        }
                    } else {
                        // Another node's claim may have written over this one meanwhile and
                        // then given the session up to this node: the entry names this node,
                        // which holds the session from here on.
                        self.own_entry(&key, &client).await;
                    }
                    fetched
                }
                _ => Ok(None),
            };
        }
        Err(format!(
            "the session directory could not be written ({MAX_TRIES} tries, last: {failed})"
        ))
    }

    /// Make the entry name this node, keeping what it says of the session.
    async fn own_entry(&self, key: &str, client: &str) {
        for _ in 0..MAX_TRIES {
            let (old, revision) = match self.parts.kv.of(key).entry(key.to_string()).await {
                Ok(Some(e)) if e.operation == kv::Operation::Put => (Record::parse(&e.value), e.revision),
                Ok(_) => (Record::default(), 0),
                Err(e) => {
                    tracing::warn!(
                        client_id = client,
                        "cluster sessions: the entry cannot be read: {e}"
                    );
                    return;
                }
            };
            if old.node == self.parts.node {
                return;
            }
            let mine = Record {
                node: self.parts.node.clone(),
                offline: false,
                ..old
            };
            let written = if revision == 0 {
                self.parts
                    .kv
                    .of(key)
                    .create(key, mine.bytes())
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            } else {
                self.parts
                    .kv
                    .of(key)
                    .update(key, mine.bytes(), revision)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            };
            if written.is_ok() {
                return;
            }
        }
        tracing::warn!(
            client_id = client,
            "cluster sessions: the entry could not be made to name this node"
        );
    }

    /// Ask `owner` for `client`'s session.
    async fn fetch(
        &self,
        owner: &str,
        client: &Arc<str>,
        clean_start: bool,
        record: Record,
        budget: Instant,
    ) -> Result<Option<Bytes>, String> {
        // The Clean Start flag, this node's name and a newline (names have none), the client.
        let mut ask = Vec::with_capacity(2 + self.parts.node.len() + client.len());
        ask.push(u8::from(clean_start));
        ask.extend_from_slice(self.parts.node.as_bytes());
        ask.push(b'\n');
        ask.extend_from_slice(client.as_bytes());
        let ask = Bytes::from(ask);
        let mut answer = None;
        // This claim's own unbroken run of "no responders" (it counts even when the node is
        // too busy for claims to ask within the shared silence's bridge).
        let mut run: Option<Instant> = None;
        for _ in 0..BUSY_RETRIES {
            if Instant::now() >= budget {
                break;
            }
            let asked = self.request(owner, "take", ask.clone()).await;
            if matches!(asked, Err(Ask::NoResponders)) {
                run.get_or_insert_with(Instant::now);
            }
            match asked {
                Ok(a) if &a[..] == b"busy" => {
                    run = None;
                    self.heard(owner);
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                Ok(a) => {
                    self.heard(owner);
                    answer = Some(a);
                    break;
                }
                // Gone from NATS, or moving to another NATS server (its subscription is then
                // missing for a moment): asked again for a while before it counts as dead.
                // The silence other claims heard counts too: when a node dies with many
                // sessions, its clients reconnecting here wait for one grace, not one each.
                Err(Ask::NoResponders)
                    if self
                        .silent_for(owner)
                        .max(run.map_or(Duration::ZERO, |r| r.elapsed()))
                        < NO_RESPONDERS_GRACE =>
                {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(Ask::NoResponders) => {
                    if self.holds(client) {
                        return Ok(None);
                    }
                    tracing::warn!(client_id = %client, node = owner, "the node that held the session is gone from NATS; recovering the session from its entry and the streams");
                    return self.recover(client, clean_start, record, budget).await;
                }
                // It may still run (busy, or cut off), or have just died with NATS not yet
                // aware (its subscription still there: the request times out, and "no
                // responders" comes next): asked again within the budget. Seen in the recovery
                // bench: 218 of 10,000 CONNECTs right after a node's SIGKILL were refused.
                Err(Ask::Failed(why)) => {
                    if Instant::now() + ASK_TIMEOUT >= budget {
                        return Err(format!("node {owner} did not answer: {why}"));
                    }
                    tracing::debug!(client_id = %client, node = owner, "no answer ({why}); asking again");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
        }
        let Some(answer) = answer else {
            return Err(format!(
                "node {owner} stayed busy claiming the same client, or did not answer"
            ));
        };
        if &answer[..] == b"none" {
            // The node runs but has no such session (it restarted without it, or gave it up to
            // this node in a race): a copy held here is kept, else it is recovered.
            if self.holds(client) {
                return Ok(None);
            }
            return self.recover(client, clean_start, record, budget).await;
        }
        match self.download(owner, &answer).await? {
            Some((token, raw)) => {
                self.fetched.lock().unwrap_or_else(|e| e.into_inner()).insert(
                    client.clone(),
                    Fetched::From {
                        owner: owner.to_string(),
                        token,
                    },
                );
                tracing::info!(client_id = %client, from = owner, bytes = raw.len(), "session taken over from another node");
                Ok(Some(raw))
            }
            None => Ok(None),
        }
    }

    /// "No responders" was heard for `node` now: for how long the node has been silent, as
    /// far as this node knows ([`Silences`]).
    fn silent_for(&self, node: &str) -> Duration {
        self.silent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .silent_for(node, Instant::now())
    }

    /// `node` answered: it is not silent.
    fn heard(&self, node: &str) {
        self.silent.lock().unwrap_or_else(|e| e.into_inner()).heard(node);
    }

    /// Fetch, in pieces, what `owner` answered `moved TOKEN LEN` about; `None` for `none` or
    /// `ended`.
    async fn download(&self, owner: &str, answer: &[u8]) -> Result<Option<(String, Bytes)>, String> {
        let text = String::from_utf8_lossy(answer);
        let mut words = text.split(' ');
        match (words.next(), words.next(), words.next().map(str::parse::<usize>)) {
            (Some("none" | "ended"), _, _) => Ok(None),
            (Some("moved"), Some(token), Some(Ok(len))) => {
                let mut raw = Vec::with_capacity(len.min(64 << 20));
                while raw.len() < len {
                    let piece = format!("{token} {}", raw.len());
                    let mut tries = 0;
                    let chunk = loop {
                        match self.request(owner, "chunk", Bytes::from(piece.clone())).await {
                            Ok(c) if !c.is_empty() => break c,
                            Ok(_) => {
                                return Err(format!("node {owner} no longer has the session it handed out"))
                            }
                            Err(why) if tries < 3 => {
                                tries += 1;
                                tracing::debug!("fetching a session piece again: {why}");
                            }
                            Err(why) => {
                                return Err(format!("the session could not be fetched from {owner}: {why}"))
                            }
                        }
                    };
                    raw.extend_from_slice(&chunk);
                }
                Ok(Some((token.to_string(), Bytes::from(raw))))
            }
            _ => Err(format!("node {owner} answered {text:?}")),
        }
    }

    async fn request(&self, node: &str, verb: &str, body: Bytes) -> Result<Bytes, Ask> {
        self.request_within(node, verb, body, ASK_TIMEOUT).await
    }

    async fn request_within(
        &self,
        node: &str,
        verb: &str,
        body: Bytes,
        wait: Duration,
    ) -> Result<Bytes, Ask> {
        match tokio::time::timeout(wait, self.parts.client.request(self.control(node, verb), body)).await {
            Ok(Ok(m)) => Ok(m.payload),
            Ok(Err(e)) if e.kind() == async_nats::client::RequestErrorKind::NoResponders => {
                Err(Ask::NoResponders)
            }
            Ok(Err(e)) => Err(Ask::Failed(e.to_string())),
            Err(_) => Err(Ask::Failed(format!("no answer within {wait:?}"))),
        }
    }

    /// The claim of `client` is over (see [`Backplane::claimed`]): what it fetched is taken
    /// out at once (so nothing is left behind if the future is dropped unpolled); the future
    /// fetches the rest of a handover, and the claim ends when it completes or is dropped.
    ///
    /// [`Backplane::claimed`]: tern_broker::backplane::Backplane::claimed
    pub(crate) fn claimed(self: &Arc<Self>, client: Arc<str>) -> tern_broker::backplane::Claim {
        let fetched = self
            .fetched
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&client);
        let guard = ClaimGuard::new(self.clone(), client.clone(), fetched.is_some());
        let directory = self.clone();
        Box::pin(async move {
            let _guard = guard;
            directory.rest(client, fetched).await
        })
    }

    async fn rest(&self, client: Arc<str>, fetched: Option<Fetched>) -> Result<Option<Bytes>, String> {
        let (owner, token) = match fetched {
            None => return Ok(None),
            Some(Fetched::From { owner, token }) => (owner, token),
            Some(Fetched::Recovered { record, upto }) => {
                // What was stored since the first read, up to where the tailers (which now
                // route to the installed session) have certainly passed.
                self.own_messages_stored().await;
                let ends = self.tailers_caught_up().await;
                // Only the delivered QoS 2 messages are skipped here: one in flight is resumed
                // from the first read (or released, when it was not stored yet then).
                let q2 = Q2Ids {
                    flight: HashSet::new(),
                    done: Q2Ids::of(&record).done,
                };
                let deliveries = self
                    .catch_up(
                        &client,
                        &record,
                        &upto,
                        &ends,
                        Instant::now() + CLAIM_BUDGET,
                        &q2,
                        &mut HashMap::new(),
                        &HashSet::new(),
                    )
                    .await?;
                if deliveries.is_empty() {
                    return Ok(None);
                }
                return Ok(Some(handover(&record, deliveries).encode()));
            }
        };
        self.own_messages_stored().await;
        // The giver answers the same rest when asked again.
        let mut answer = Err(Ask::Failed(String::new()));
        for _ in 0..2 {
            answer = self
                .request_within(&owner, "rest", Bytes::from(token.clone()), REST_TIMEOUT)
                .await;
            if answer.is_ok() {
                break;
            }
        }
        let answer = answer.map_err(|e| e.to_string())?;
        let rest = self.download(&owner, &answer).await;
        if let Err(e) = self
            .parts
            .client
            .publish(self.control(&owner, "done"), Bytes::from(token))
            .await
        {
            tracing::debug!("cluster sessions: done not sent: {e}");
        }
        Ok(rest?.map(|(_, raw)| raw))
    }

    /// Rebuild the session of a node that is gone from its entry: its subscriptions, and the
    /// messages stored after its floor that they match, read from the streams.
    async fn recover(
        &self,
        client: &Arc<str>,
        clean_start: bool,
        record: Record,
        budget: Instant,
    ) -> Result<Option<Bytes>, String> {
        let expired = record.offline
            && record.expiry != u32::MAX
            && record.saved_ms.saturating_add(u64::from(record.expiry) * 1000) < wall_ms();
        if clean_start || record.version == 0 || record.expiry == 0 || expired {
            return Ok(None);
        }
        let shards = self.parts.positions.len();
        let floor = if record.floor.len() == shards {
            record.floor.clone()
        } else {
            vec![0; shards]
        };
        let mut ends = self.stream_ends(budget).await?;
        self.tailers_past(&ends).await;
        // The tailers may be further on (one that held messages back for an earlier one let
        // them go with it): what they handed to the broker before the session is installed
        // is read here too, so that each node's messages are put back in order together
        // (`order.rs`).
        for (end, at) in ends.iter_mut().zip(positions(&self.parts.positions)) {
            *end = (*end).max(at);
        }
        let q2 = Q2Ids::of(&record);
        let mut found = HashMap::new();
        let queued = self
            .catch_up(
                client,
                &record,
                &floor,
                &ends,
                budget,
                &q2,
                &mut found,
                &HashSet::new(),
            )
            .await?;
        // The QoS 2 deliveries in flight first, with their packet ids, then the queue.
        let mut deliveries = resumed(client, &record, &found);
        let in_flight = deliveries.len();
        deliveries.extend(queued);
        let incoming = self.incoming(client, &record, budget).await?;
        tracing::info!(client_id = %client, node = %record.node, subscriptions = record.subs.len(), messages = deliveries.len(), in_flight, incoming = incoming.len(), "session of a node that is gone recovered from the directory and the streams");
        let mut recovered = handover(&record, deliveries);
        recovered.qos2 = incoming;
        let raw = recovered.encode();
        self.fetched
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(client.clone(), Fetched::Recovered { record, upto: ends });
        Ok(Some(raw))
    }

    /// The incoming QoS 2 packet ids of a session whose node is gone that await their
    /// PUBREL: those its entry lists whose message is stored. One whose message is not (the
    /// node died before it stored it) is left out: the client resends that PUBLISH, and it is
    /// stored then, under a new id (v5 [MQTT-4.3.3-10]: one known would be taken for a resend
    /// of a message stored already, and not delivered).
    async fn incoming(&self, client: &str, record: &Record, deadline: Instant) -> Result<Vec<u16>, String> {
        let mut held = Vec::with_capacity(record.q2in.len());
        for (packet_id, run, count, node) in &record.q2in {
            if *packet_id == 0 || held.contains(packet_id) {
                continue;
            }
            let stored = node.is_empty()
                || {
                    loop {
                        match self.stored(client, node, (*run, *count)).await {
                            Ok(stored) => break stored,
                            Err(e) if Instant::now() < deadline => {
                                tracing::debug!(client_id = %client, "cluster sessions: is a QoS 2 message stored? Asking again: {e}");
                                tokio::time::sleep(Duration::from_millis(250)).await;
                            }
                            Err(e) => return Err(e),
                        }
                    }
                };
            if stored {
                held.push(*packet_id);
            }
        }
        Ok(held)
    }

    /// Whether the QoS 2 message `client` published with `id` (the `Nats-Msg-Id` of `node`) is
    /// stored (see [`stored`]).
    async fn stored(&self, client: &str, node: &str, id: (u64, u64)) -> Result<bool, String> {
        let p = &self.parts;
        stored(&p.js, &p.prefix, p.outbound.shards, &p.node, client, node, id).await
    }

    /// Each shard stream's last sequence, asked again until `deadline` while JetStream does
    /// not answer (a stream leader being elected after a NATS server died: seen in a
    /// fresh-clone run of the persistent-session kill loop, the CONNECT refused with 0x88).
    async fn stream_ends(&self, deadline: Instant) -> Result<Vec<u64>, String> {
        let mut ends = Vec::with_capacity(self.parts.positions.len());
        for k in 0..self.parts.positions.len() {
            let state = loop {
                match self.stream_state(k).await {
                    Ok(state) => break state,
                    Err(e) if Instant::now() < deadline => {
                        tracing::debug!("cluster sessions: shard {k}'s stream state, asking again: {e}");
                        tokio::time::sleep(Duration::from_millis(250)).await;
                    }
                    Err(e) => return Err(e),
                }
            };
            ends.push(state.last_sequence);
        }
        Ok(ends)
    }

    /// The state (first and last sequence) of shard `k`'s stream.
    async fn stream_state(&self, k: usize) -> Result<jetstream::stream::State, String> {
        let name = streams::stream_name(&self.parts.prefix, k as u16);
        let mut stream = self
            .parts
            .js
            .get_stream(&name)
            .await
            .map_err(|e| format!("{name}: {e}"))?;
        let info = stream.info().await.map_err(|e| format!("{name}: {e}"))?;
        Ok(info.state.clone())
    }

    /// The messages in each shard after `from` up to `to` that the session's subscriptions
    /// match, as its deliveries (shard after shard: one publisher's messages are in one
    /// shard, in order). Those `q2` lists as delivered are left out; those it lists in
    /// flight go to `found` instead.
    #[allow(clippy::too_many_arguments)]
    async fn catch_up(
        &self,
        client: &str,
        record: &Record,
        from: &[u64],
        to: &[u64],
        deadline: Instant,
        q2: &Q2Ids,
        found: &mut HashMap<(u64, u64), Arc<Message>>,
        has: &HashSet<(u16, u64)>,
    ) -> Result<Vec<StoredDelivery>, String> {
        let subs: Vec<(String, SubscriptionOptions, u32)> = record
            .subs
            .iter()
            .filter(|(f, _, _)| !f.starts_with("$share/"))
            .map(|(f, o, id)| (f.clone(), options_from(*o), *id))
            .collect();
        let mut out = Vec::new();
        if subs.is_empty() && q2.flight.is_empty() {
            return Ok(out);
        }
        let now = Instant::now();
        // With each delivery of a shard, its node's run and number (`order.rs`).
        let mut orders: Vec<Option<(u64, u64)>> = Vec::new();
        for (k, (&from, &to)) in from.iter().zip(to).enumerate() {
            if from >= to {
                continue;
            }
            let first = out.len();
            orders.clear();
            let name = streams::stream_name(&self.parts.prefix, k as u16);
            let prefix = streams::shard_subject(&self.parts.prefix, k as u16);
            // The next sequence to read: a read that fails (a stream leader being elected
            // after a NATS server died) starts again there, until the deadline.
            let mut next = from + 1;
            loop {
                let attempt: Result<(), String> = async {
                    let stream = self
                        .parts
                        .js
                        .get_stream(&name)
                        .await
                        .map_err(|e| format!("{name}: {e}"))?;
                    let consumer = stream
                        .create_consumer(jetstream::consumer::pull::OrderedConfig {
                            deliver_policy: jetstream::consumer::DeliverPolicy::ByStartSequence {
                                start_sequence: next,
                            },
                            ..Default::default()
                        })
                        .await
                        .map_err(|e| format!("{name}: {e}"))?;
                    let mut messages = consumer.messages().await.map_err(|e| format!("{name}: {e}"))?;
                    loop {
                        let m = match tokio::time::timeout(CATCH_UP_WAIT, messages.next()).await {
                            Ok(Some(Ok(m))) => m,
                            Ok(Some(Err(e))) => return Err(format!("{name}: {e}")),
                            Ok(None) => return Err(format!("{name}: the read ended before sequence {to}")),
                            Err(_) => {
                                // Silence: done only if what is left up to `to` is gone from the
                                // stream (removed by its limits); otherwise JetStream is slow.
                                let state = self.stream_state(k).await?;
                                if state.first_sequence > to || state.last_sequence < next {
                                    return Ok(());
                                }
                                if Instant::now() >= deadline {
                                    return Err(format!("{name}: not read up to sequence {to} in time"));
                                }
                                continue;
                            }
                        };
                        let seq = m.info().map_err(|e| format!("{name}: {e}"))?.stream_sequence;
                        if seq > to {
                            return Ok(());
                        }
                        if seq < next {
                            continue;
                        }
                        next = seq + 1;
                        // The session has it already (its node's store kept it). Looked at
                        // before `q2.flight`: a caller passes one or the other, not both. A
                        // QoS 1 pack's messages share its place, and the store cannot say
                        // which of them it holds (a count would not do: a crash can leave part
                        // of what was queued, and a second read adds copies): a pack is read
                        // again whole (duplicates, as QoS 1 allows, never a loss).
                        if crate::codec::count(m.headers.as_ref()) == 1 && has.contains(&(k as u16, seq)) {
                            if seq >= to {
                                return Ok(());
                            }
                            continue;
                        }
                        let order = crate::codec::order_of(m.headers.as_ref());
                        if let Ok((first, rest)) = crate::codec::decode_all(
                            &prefix,
                            &m.subject,
                            m.headers.as_ref(),
                            m.payload.clone(),
                        ) {
                            if first.qos == QoS::ExactlyOnce {
                                first.set_backplane_position(k as u16, seq);
                            }
                            for msg in std::iter::once(first).chain(rest) {
                                // Its place lets the session's floor rise past it once the
                                // client has it (it has no arrival time here).
                                let msg = msg.placed_at(k as u16, seq);
                                match msg.backplane_id() {
                                    Some(id) if q2.flight.contains(&id) => {
                                        found.insert(id, Arc::new(msg));
                                    }
                                    Some(id) if q2.done.contains(&id) => {}
                                    _ => {
                                        if let Some(d) = delivery(client, &subs, Arc::new(msg), now) {
                                            out.push(d);
                                            orders.push(order);
                                        }
                                    }
                                }
                            }
                        }
                        if seq >= to {
                            return Ok(());
                        }
                    }
                }
                .await;
                match attempt {
                    Ok(()) => break,
                    Err(e) if Instant::now() < deadline => {
                        tracing::debug!(client_id = %client, "cluster sessions: reading {name} again from {next}: {e}");
                        tokio::time::sleep(Duration::from_millis(250)).await;
                    }
                    Err(e) => return Err(e),
                }
            }
            // Each node's messages in the order they were sent, where JetStream stored a
            // later one first (`order.rs`).
            if let Some(read) = out.get_mut(first..) {
                crate::order::in_order(read, &orders);
            }
        }
        Ok(out)
    }

    /// The session of `client` ended on this node.
    pub(crate) fn ended(&self, client: &str) {
        self.q2_forget(client);
        let client: Arc<str> = client.into();
        self.enqueue(client.clone(), Op::Ended(client));
    }

    /// Keep `raw` for its claimant to fetch; the answer that says so. `generation`: the
    /// session handed out (its first part), whose rest is still to come.
    fn give(&self, client: String, raw: Bytes, generation: Option<u64>) -> (String, Bytes) {
        // Unique across nodes and restarts (a NUID), so that a claimant's token can only
        // name what was given to it.
        let inbox = self.parts.client.new_inbox();
        let token = inbox.rsplit('.').next().unwrap_or(&inbox).to_string();
        let len = raw.len();
        self.given.lock().unwrap_or_else(|e| e.into_inner()).insert(
            token.clone(),
            Given {
                client,
                raw,
                at: Instant::now(),
                generation,
                rest: None,
                resting: false,
            },
        );
        let answer = Bytes::from(format!("moved {token} {len}"));
        (token, answer)
    }

    /// Answer a request of another node.
    async fn answer(&self, admin: &Admin, verb: &str, body: &[u8]) -> Bytes {
        match verb {
            "take" => {
                let rest = std::str::from_utf8(body.get(1..).unwrap_or_default()).ok();
                let (Some(&flag), Some((asker, client))) =
                    (body.first(), rest.and_then(|r| r.split_once('\n')))
                else {
                    return Bytes::from_static(b"bad request");
                };
                // Claiming the same client here: the asker waits, unless both wait for each
                // other: of two nodes claiming at once, the one with the smaller name goes
                // first, the other hands over what it has (it asks again after).
                if self.is_claiming(client) && self.parts.node.as_str() < asker {
                    return Bytes::from_static(b"busy");
                }
                // An earlier handout of this client that its claimant never completed (it gave
                // up, and the client came again): its deliveries go first in this one.
                let earlier: Vec<Bytes> = {
                    let mut given = self.given.lock().unwrap_or_else(|e| e.into_inner());
                    let tokens: Vec<String> = given
                        .iter()
                        .filter(|(_, g)| {
                            g.client == client && g.generation.is_some() && g.rest.is_none() && !g.resting
                        })
                        .map(|(t, _)| t.clone())
                        .collect();
                    let mut old: Vec<(Instant, Bytes)> = tokens
                        .iter()
                        .filter_map(|t| given.remove(t))
                        .map(|g| (g.at, g.raw))
                        .collect();
                    old.sort_by_key(|(at, _)| *at);
                    old.into_iter().map(|(_, raw)| raw).collect()
                };
                match admin.hand_over(client, flag != 0) {
                    HandOff::Absent if earlier.is_empty() => Bytes::from_static(b"none"),
                    HandOff::Moved { raw, generation } => {
                        // Its QoS 2 deliveries in flight go with it (the claimant writes them).
                        let unstored = self.q2_unstored(client);
                        self.q2_forget(client);
                        let raw = self.stored_first(client, raw, unstored).await;
                        let raw = merged(earlier, raw);
                        self.give(client.to_string(), raw, Some(generation)).1
                    }
                    _ => {
                        if !earlier.is_empty() {
                            tracing::warn!(
                                client_id = client,
                                "messages of an abandoned handout dropped: the session ended"
                            );
                        }
                        Bytes::from_static(b"ended")
                    }
                }
            }
            "chunk" => {
                let text = String::from_utf8_lossy(body);
                let mut words = text.split(' ');
                let (Some(token), Some(Ok(at))) = (words.next(), words.next().map(str::parse::<usize>))
                else {
                    return Bytes::new();
                };
                let mut given = self.given.lock().unwrap_or_else(|e| e.into_inner());
                match given.get_mut(token) {
                    Some(g) if at < g.raw.len() => {
                        // Being fetched: not abandoned.
                        g.at = Instant::now();
                        g.raw.slice(at..(at + CHUNK).min(g.raw.len()))
                    }
                    _ => Bytes::new(),
                }
            }
            "rest" => {
                let token = String::from_utf8_lossy(body).into_owned();
                // Made once: a second request (the first answer was lost) gets the same rest,
                // waiting for the first to make it.
                let deadline = Instant::now() + REST_TIMEOUT;
                let (client, generation) = loop {
                    {
                        let mut given = self.given.lock().unwrap_or_else(|e| e.into_inner());
                        let Some(first) = given.get_mut(&token) else {
                            return Bytes::from_static(b"none");
                        };
                        if !first.resting && first.rest.is_none() {
                            first.resting = true;
                            first.at = Instant::now();
                            break (first.client.clone(), first.generation);
                        }
                        if let Some(t) = first.rest.clone() {
                            return match given.get(&t) {
                                Some(r) => Bytes::from(format!("moved {t} {}", r.raw.len())),
                                None => Bytes::from_static(b"none"),
                            };
                        }
                    }
                    if Instant::now() >= deadline {
                        return Bytes::from_static(b"busy");
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                };
                let _ = self.tailers_caught_up().await;
                let rest = admin.hand_over_rest(&client, generation);
                let (rest_token, answer) = match rest {
                    Some(raw) => {
                        let (t, a) = self.give(client, raw, None);
                        (Some(t), a)
                    }
                    None => (None, Bytes::from_static(b"none")),
                };
                let mut given = self.given.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(first) = given.get_mut(&token) {
                    first.resting = false;
                    // `none` is kept as an empty rest: asked again, the same answer.
                    first.rest = Some(rest_token.unwrap_or_default());
                }
                answer
            }
            "has" => {
                let client = String::from_utf8_lossy(body);
                let holds = admin.session(&client).is_some() && !self.is_claiming(&client);
                Bytes::from_static(if holds { b"yes" } else { b"no" })
            }
            "done" => {
                let token = String::from_utf8_lossy(body);
                let mut given = self.given.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(first) = given.remove(&*token) {
                    if let Some(rest) = first.rest {
                        given.remove(&rest);
                    }
                }
                Bytes::new()
            }
            _ => Bytes::from_static(b"unknown request"),
        }
    }

    /// A handout whose claimant never asked for the rest within [`KEEP_GIVEN`]. If the entry
    /// names this node again (the claimant put it back), its deliveries go back to the front
    /// of the session here; otherwise the claimant holds the session (or recovers it from the
    /// entry and the streams) and the copy left here goes.
    async fn abandoned(&self, admin: &Admin, client: &str, generation: u64, raw: Bytes) {
        let key = key(client);
        let names_me = match self.parts.kv.of(&key).entry(key.clone()).await {
            Ok(Some(e)) if e.operation == kv::Operation::Put => {
                Record::parse(&e.value).node == self.parts.node
            }
            Ok(_) => false,
            Err(e) => {
                tracing::warn!(
                    client_id = client,
                    "cluster sessions: an abandoned handout is kept for now: {e}"
                );
                return;
            }
        };
        if names_me && admin.session(client).is_some() {
            match admin.add_deliveries(client, &raw, true).await {
                Ok(n) => tracing::warn!(
                    client_id = client,
                    messages = n,
                    "a handout its claimant gave up is back in the session here"
                ),
                Err(e) => tracing::warn!(client_id = client, "an abandoned handout is lost: {e}"),
            }
        } else if admin.hand_over_rest(client, Some(generation)).is_some() {
            self.q2_forget(client);
            tracing::warn!(
                client_id = client,
                "a session handed out was never completed by its claimant; its copy here is dropped"
            );
        }
    }

    /// Drop (quietly, its connection told it was taken over) every session of this node whose
    /// entry names another node, apart from those being handed over or claimed here.
    /// Returns how many could not be looked at (the directory did not answer).
    pub(crate) async fn drop_moved(&self, admin: &Admin) -> usize {
        let mut unread = 0;
        for s in admin.sessions() {
            let client = s.client_id.as_str();
            let handing = self
                .given
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .values()
                .any(|g| g.client == client);
            if handing || self.is_claiming(client) {
                continue;
            }
            let key = key(client);
            let owner = match self.parts.kv.of(&key).entry(key.clone()).await {
                Ok(Some(e)) if e.operation == kv::Operation::Put => Record::parse(&e.value).node,
                Ok(_) => continue,
                Err(e) => {
                    tracing::warn!(
                        client_id = client,
                        "cluster sessions: the directory cannot be read: {e}"
                    );
                    unread += 1;
                    continue;
                }
            };
            if owner == self.parts.node {
                continue;
            }
            // Only once that node says it holds the session (not while its claim is under
            // way: its `take` will come here).
            match self.request(&owner, "has", Bytes::from(client.to_string())).await {
                Ok(a) if &a[..] == b"yes" => {}
                _ => continue,
            }
            if let HandOff::Moved { generation, .. } = admin.hand_over(client, false) {
                admin.hand_over_rest(client, Some(generation));
                self.q2_forget(client);
                tracing::warn!(client_id = client, node = %owner, "session dropped: another node took it while this node was away from NATS");
            }
        }
        unread
    }

    /// Delete `client`'s entry if it still names this node and the session did not start
    /// again here meanwhile.
    async fn forget(&self, admin: &Admin, client: &str) -> Result<(), String> {
        let key = key(client);
        let entry = self
            .parts
            .kv
            .of(&key)
            .entry(key.clone())
            .await
            .map_err(|e| e.to_string())?;
        let Some(e) = entry.filter(|e| e.operation == kv::Operation::Put) else {
            return Ok(());
        };
        // A claim of this node for the client writes a new revision, so the deletion below
        // fails if the client came back meanwhile.
        let claiming = self.is_claiming(client);
        if Record::parse(&e.value).node != self.parts.node || claiming || admin.session(client).is_some() {
            return Ok(());
        }
        self.parts
            .kv
            .of(&key)
            .delete_expect_revision(&key, Some(e.revision))
            .await
            .map_err(|e| e.to_string())
    }

    /// A session restored from this node's store keeps the incoming QoS 2 ids its store had,
    /// but the store may have kept one whose message JetStream had not stored when the node
    /// died (its entry lists the id before the message is stored, and the store keeps it
    /// apart): ids the entry (`None`: it could not be read) does not list, or lists with a
    /// message that is not stored ([`Directory::incoming`]), are forgotten, so that the
    /// client's resend is stored rather than answered as a duplicate. When the cluster cannot
    /// say, all are forgotten: a resend stored twice is a duplicate, one never stored a loss.
    ///
    /// The other way round, the store may not have kept yet an id whose message JetStream
    /// stored (its write was on its way when the node died): an id the entry lists with a
    /// stored message is awaited again, so that the client's resend is answered rather than
    /// stored twice (seen in the 40-round loop of the QoS 2 publisher resending to its node
    /// restarted from its store: 7 messages delivered twice). The entry is safe to follow: a
    /// PUBCOMP waits until the entry no longer lists its id (`Backplane::qos2_released`),
    /// so a listed id is not free on the client's side.
    /// Runs before the node serves clients (`Cluster::attach`).
    async fn unstored_forgotten(&self, admin: &Admin, client: &str, record: Option<&Record>) {
        let ids: Vec<u16> = match self.q2.lock().unwrap_or_else(|e| e.into_inner()).get(client) {
            Some(q) => q.incoming.keys().copied().collect(),
            None => Vec::new(),
        };
        let unkept: Vec<u16> = record
            .map(|r| {
                r.q2in
                    .iter()
                    .map(|e| e.0)
                    .filter(|id| *id != 0 && !ids.contains(id))
                    .collect()
            })
            .unwrap_or_default();
        if ids.is_empty() && unkept.is_empty() {
            return;
        }
        let held = match record {
            Some(record) => match self
                .incoming(client, record, Instant::now() + WAIT_CAUGHT_UP)
                .await
            {
                Ok(held) => held,
                Err(e) => {
                    tracing::warn!(client_id = %client, "stored session: cannot tell whether its incoming QoS 2 messages are stored ({e}); their resends are taken as new");
                    Vec::new()
                }
            },
            None => Vec::new(),
        };
        for packet_id in ids.into_iter().filter(|id| !held.contains(id)) {
            if let Some(q) = self.q2.lock().unwrap_or_else(|e| e.into_inner()).get_mut(client) {
                q.incoming.remove(&packet_id);
            }
            if admin.forget_incoming_qos2(client, packet_id) {
                tracing::info!(client_id = %client, packet_id, "stored session: an incoming QoS 2 message not known to be stored in the cluster is taken as new when it is resent");
            }
        }
        for packet_id in unkept.into_iter().filter(|id| held.contains(id)) {
            if admin.remember_incoming_qos2(client, packet_id) {
                self.q2
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .entry(client.into())
                    .or_insert_with(|| Q2 {
                        inherit: true,
                        ..Q2::default()
                    })
                    .incoming
                    .insert(packet_id, None);
                tracing::info!(client_id = %client, packet_id, "stored session: an incoming QoS 2 message the store had not kept yet is stored in the cluster; its resend is answered, not stored again");
            }
        }
    }

    /// At start: a session this node restored from its store that another node took since
    /// (while this one was down) is dropped here; one nobody took is entered as this node's.
    ///
    /// When the directory or the streams do not answer (no quorum, a leader election), the
    /// start fails: served without what was stored for it while this node was down, the
    /// session would never get those messages, and its next floor would move past them
    /// (acknowledged and lost). A node that cannot reach JetStream at all does not start
    /// either (see `guard`).
    pub(crate) async fn reconcile(&self, admin: &Admin) -> Result<(), ClusterError> {
        let _ = self.admin.set(admin.clone());
        let failed = |client_id: &str, why: String| ClusterError::StoredSession {
            client_id: client_id.to_string(),
            why,
        };
        for s in admin.sessions() {
            let key = key(&s.client_id);
            // A leader election of the bucket's stream is waited out, as at the start.
            let deadline = Instant::now() + crate::START_RETRY;
            let holder = loop {
                match self.parts.kv.of(&key).entry(key.clone()).await {
                    Ok(Some(e)) if e.operation == kv::Operation::Put => break Some(Record::parse(&e.value)),
                    Ok(_) => break None,
                    Err(_) if Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                    Err(e) => {
                        return Err(failed(
                            &s.client_id,
                            format!("the session directory cannot be read ({e})"),
                        ))
                    }
                }
            };
            match holder.map(|r| (r.node.clone(), r)) {
                Some((owner, record)) if owner == self.parts.node => {
                    // Still this node's: what was stored in the streams for it while this node
                    // was down (after its floor, up to where this run's tailers begin) joins
                    // its queue, after what the store kept. What the store kept is not read
                    // again (its payload records say where each message lies in the streams);
                    // what the client had taken since the floor is (duplicates possible).
                    self.unstored_forgotten(admin, &s.client_id, Some(&record)).await;
                    let shards = self.parts.positions.len();
                    if record.version == 0 || record.floor.len() != shards {
                        continue;
                    }
                    // The store has its QoS 2 deliveries in flight: those, and the ones
                    // delivered, are not read back.
                    let ids = Q2Ids::of(&record);
                    let q2 = Q2Ids {
                        flight: HashSet::new(),
                        done: ids.done.union(&ids.flight).copied().collect(),
                    };
                    // Read only when there is something to read, off the runtime's threads.
                    let reads =
                        !record.subs.is_empty() && record.floor.iter().zip(&self.start.1).any(|(f, t)| f < t);
                    let has = match reads {
                        true => {
                            let (admin, client) = (admin.clone(), s.client_id.clone());
                            tokio::task::spawn_blocking(move || admin.places_held(&client))
                                .await
                                .unwrap_or_default()
                        }
                        false => HashSet::new(),
                    };
                    match self
                        .catch_up(
                            &s.client_id,
                            &record,
                            &record.floor,
                            &self.start.1,
                            Instant::now() + Duration::from_secs(60),
                            &q2,
                            &mut HashMap::new(),
                            &has,
                        )
                        .await
                    {
                        Ok(d) if d.is_empty() => {}
                        Ok(d) => {
                            let n = d.len();
                            match admin
                                .add_deliveries(&s.client_id, &handover(&record, d).encode(), false)
                                .await
                            {
                                Ok(_) => {
                                    tracing::info!(client_id = %s.client_id, messages = n, "stored session: messages stored in the cluster while this node was down added")
                                }
                                Err(e) => tracing::warn!(client_id = %s.client_id, "stored session: {e}"),
                            }
                        }
                        Err(e) => {
                            return Err(failed(
                                &s.client_id,
                                format!(
                                    "what was stored for it while this node was down cannot be read ({e})"
                                ),
                            ))
                        }
                    }
                }
                Some((owner, _)) => {
                    // Quietly: the session lives on the other node.
                    let _ = admin.hand_over_rest(&s.client_id, None);
                    self.q2_forget(&s.client_id);
                    tracing::info!(client_id = %s.client_id, node = %owner, "stored session dropped: another node holds it now");
                }
                None => {
                    self.unstored_forgotten(admin, &s.client_id, None).await;
                    // Entered whole, so that it can be recovered if this node dies; where its
                    // stored messages lie in the streams is not known, so its floor is their
                    // start (a recovery would re-read them all).
                    let mine = Record {
                        node: self.parts.node.clone(),
                        version: s.protocol_version.level(),
                        expiry: s.expiry_interval,
                        subs: s
                            .subscriptions
                            .iter()
                            .map(|x| {
                                (
                                    x.filter.clone(),
                                    options_byte(&x.options),
                                    x.identifier.unwrap_or(0),
                                )
                            })
                            .collect(),
                        floor: vec![0; self.start.1.len()],
                        offline: s.connection.is_none(),
                        saved_ms: wall_ms(),
                        q2: Vec::new(),
                        q2done: Vec::new(),
                        q2in: Vec::new(),
                    };
                    if let Err(e) = self.parts.kv.of(&key).create(&key, mine.bytes()).await {
                        tracing::warn!(client_id = %s.client_id, "cluster sessions: the stored session is not entered in the directory: {e}");
                    }
                }
            }
        }
        Ok(())
    }
}

/// Answer other nodes' requests, forget the entries of ended sessions, and drop sessions
/// handed out that nobody fetched.
/// Subscribe to this node's control subject (before [`Directory::reconcile`], so that a
/// node starting is never taken for dead by a claimant: NATS would answer "no responders").
pub(crate) async fn subscribe(directory: &Directory) -> Result<async_nats::Subscriber, ClusterError> {
    let subject = directory.control(&directory.parts.node, "*");
    directory
        .parts
        .client
        .subscribe(subject.clone())
        .await
        .map_err(|e| ClusterError::Subscribe {
            subject,
            why: e.to_string(),
        })
}

pub(crate) async fn run(directory: Arc<Directory>, admin: Admin, mut requests: async_nats::Subscriber) {
    // Session changes on their own task, in order: their KV writes do not hold up answers.
    let _writers = crate::Aborting(tokio::spawn(write_entries(directory.clone(), admin.clone())));
    let answering = Arc::new(tokio::sync::Semaphore::new(MAX_ANSWERING));
    // Rests wait for the tailers: their own permits, so that takes and chunks never wait
    // behind them.
    let resting = Arc::new(tokio::sync::Semaphore::new(MAX_ANSWERING));
    let mut sweep = tokio::time::interval(Duration::from_secs(5));
    let mut snapshot = tokio::time::interval(SNAPSHOT_EVERY);
    loop {
        tokio::select! {
            m = requests.next() => {
                let Some(m) = m else { return };
                // Each answered on its own task (a `rest` waits for the tailers), at most
                // MAX_ANSWERING at once; beyond, the next request waits here.
                let slow = m.subject.ends_with(".rest");
                let pool = if slow { &resting } else { &answering };
                let Ok(permit) = pool.clone().acquire_owned().await else { return };
                let (directory, admin) = (directory.clone(), admin.clone());
                tokio::spawn(async move {
                    let verb = m.subject.rsplit('.').next().unwrap_or("").to_string();
                    let answer = directory.answer(&admin, &verb, &m.payload).await;
                    if let Some(reply) = m.reply {
                        if let Err(e) = directory.parts.client.publish(reply, answer).await {
                            tracing::debug!("cluster sessions: answer not sent: {e}");
                        }
                    }
                    drop(permit);
                });
            }
            _ = snapshot.tick() => {
                let now = positions(&directory.parts.positions);
                let mut s = directory.snapshots.lock().unwrap_or_else(|e| e.into_inner());
                if s.len() >= SNAPSHOTS {
                    s.pop_front();
                }
                s.push_back((Instant::now(), now));
            }
            _ = sweep.tick() => {
                let mut abandoned = Vec::new();
                {
                    let mut given = directory.given.lock().unwrap_or_else(|e| e.into_inner());
                    given.retain(|_, g| {
                        let keep = g.resting || g.at.elapsed() < KEEP_GIVEN;
                        if let (false, Some(generation), None) = (keep, g.generation, &g.rest) {
                            abandoned.push((g.client.clone(), generation, g.raw.clone()));
                        }
                        keep
                    });
                }
                for (client, generation, raw) in abandoned {
                    let (directory, admin) = (directory.clone(), admin.clone());
                    tokio::spawn(async move { directory.abandoned(&admin, &client, generation, raw).await });
                }
            }
        }
    }
}

/// Write the entries of saved sessions and delete those of ended ones, on [`OP_WORKERS`]
/// tasks (a KV write is a round trip), never two for one client at once; what waits is the
/// last state of each client, so a reconnect storm makes about one write per session, not one
/// per change.
async fn write_entries(directory: Arc<Directory>, admin: Admin) {
    let mut tasks = Vec::with_capacity(OP_WORKERS);
    for _ in 0..OP_WORKERS {
        let (directory, admin) = (directory.clone(), admin.clone());
        tasks.push(crate::Aborting(tokio::spawn(async move {
            loop {
                let added = directory.ops_added.notified();
                let mut added = std::pin::pin!(added);
                // Registered before the queue is looked at: an op added in between is seen.
                added.as_mut().enable();
                let Some((client, op, tickets)) = directory.next_op() else {
                    added.await;
                    continue;
                };
                // Released when the write is done or given up (logged, and the tickets marked
                // as not kept), and if this task ends on the way: what waits for them goes on
                // either way.
                let mine = tickets.clone();
                let _release = Release(&directory.written, tickets);
                match op {
                    Op::Ended(c) => {
                        if let Err(e) = directory.forget(&admin, &c).await {
                            tracing::warn!(client_id = %c, "cluster sessions: the ended session's entry stays: {e}");
                        }
                    }
                    Op::Saved { client, record, floor } => {
                        let awaited = !mine.is_empty();
                        match directory.save(&client, record.clone(), floor.clone(), awaited).await {
                            Ok(true) => {}
                            Ok(false) => directory.not_kept(&mine, false),
                            Err(e) => {
                                directory.writes_failed.fetch_add(1, Ordering::Relaxed);
                                directory.not_kept(&mine, true);
                                tracing::warn!(client_id = %client, "cluster sessions: the session's entry is not updated: {e}");
                                // Tried again with the next change (or on its own), so that a
                                // later write, which a connection may wait for, does not
                                // leave this one's subscriptions out.
                                directory.requeue(client.clone(), record, floor);
                            }
                        }
                    }
                }
                directory.op_done(&client);
            }
        })));
    }
    std::future::pending::<()>().await;
}

/// Releases its tickets when dropped.
struct Release<'a>(&'a crate::outbound::Tickets, Vec<u64>);

impl Drop for Release<'_> {
    fn drop(&mut self) {
        for t in self.1.drain(..) {
            self.0.release(t);
        }
    }
}

/// The deliveries of `earlier` handouts (oldest first), as queued, then `raw`'s.
fn merged(earlier: Vec<Bytes>, raw: Bytes) -> Bytes {
    if earlier.is_empty() {
        return raw;
    }
    let Ok(mut h) = Handover::decode(&raw) else {
        return raw;
    };
    let mut deliveries = Vec::new();
    for old in earlier {
        match Handover::decode(&old) {
            Ok(o) => deliveries.extend(o.deliveries.into_iter().map(|mut d| {
                d.stage = None;
                d
            })),
            Err(e) => tracing::warn!("an abandoned handout cannot be read: {e}"),
        }
    }
    deliveries.append(&mut h.deliveries);
    h.deliveries = deliveries;
    h.encode()
}

/// The tailers' positions now.
fn positions(p: &[AtomicU64]) -> Vec<u64> {
    p.iter().map(|a| a.load(Ordering::Acquire)).collect()
}

fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A session rebuilt from its entry, with `deliveries` queued.
fn handover(record: &Record, deliveries: Vec<StoredDelivery>) -> Handover {
    let version = match record.version {
        3 => ProtocolVersion::V3_1,
        4 => ProtocolVersion::V3_1_1,
        _ => ProtocolVersion::V5,
    };
    Handover {
        snapshot: SessionSnapshot {
            version,
            expiry_interval: record.expiry,
            disconnected_at: if record.offline {
                record.saved_ms
            } else {
                wall_ms()
            },
            subscriptions: record
                .subs
                .iter()
                .map(|(f, o, id)| (f.clone(), options_from(*o), (*id != 0).then_some(*id)))
                .collect(),
            pending_will: None,
        },
        deliveries,
        qos2: Vec::new(),
    }
}

/// Whether the QoS 2 message `client` published with `id` (the `Nats-Msg-Id` of `node`) is
/// stored in its publisher's shard stream (of `shards`). Asked by storing a placeholder
/// under that id in the stream (from node `me`): JetStream keeps one message per id within
/// its duplicate window, so the placeholder is either kept (the message was not stored, and a
/// late store of it is now a duplicate) or refused as a duplicate of the message, or of an
/// earlier placeholder (read at the sequence JetStream names). Placeholders carry
/// [`crate::codec::VOID`]: nothing delivers them.
pub(crate) async fn stored(
    js: &jetstream::Context,
    prefix: &str,
    shards: u16,
    me: &str,
    client: &str,
    node: &str,
    id: (u64, u64),
) -> Result<bool, String> {
    let k = streams::shard_of(Some(client), shards);
    let subject = crate::topic::encode_topic(&streams::shard_subject(prefix, k), "$tern/void");
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(
        async_nats::header::NATS_MESSAGE_ID,
        crate::codec::message_id(node, id).as_str(),
    );
    headers.insert(crate::codec::VOID, "1");
    headers.insert(crate::codec::NODE, me);
    let ack = js
        .publish_with_headers(subject, headers, Bytes::new())
        .await
        .map_err(|e| e.to_string())?
        .await
        .map_err(|e| e.to_string())?;
    if !ack.duplicate {
        return Ok(false);
    }
    // Gone by the stream's limits: what it was is not known; taken as not stored (a resend
    // is then stored again: a duplicate, never a loss).
    Ok(streams::message_at(js, prefix, k, ack.sequence).await? == Some(true))
}

/// The delivery of `msg` to the session of `client` with `subs`, as the broker's router
/// makes it: the highest QoS of the matching subscriptions (capped by the message's), every
/// matching subscription identifier, RETAIN kept only with Retain As Published; none when
/// nothing matches, No Local excludes it, or it expired.
fn delivery(
    client: &str,
    subs: &[(String, SubscriptionOptions, u32)],
    msg: Arc<Message>,
    now: Instant,
) -> Option<StoredDelivery> {
    if msg.is_expired(now) {
        return None;
    }
    let own = msg.publisher.as_deref() == Some(client);
    let mut qos: Option<QoS> = None;
    let mut ids = Vec::new();
    let mut retain = false;
    for (filter, o, id) in subs {
        if !tern_proto::topic::matches(&msg.topic, filter) || (o.no_local && own) {
            continue;
        }
        let q = o.qos.min(msg.qos);
        qos = Some(qos.map_or(q, |x| x.max(q)));
        if *id != 0 {
            ids.push(*id);
        }
        retain |= o.retain_as_published && msg.retain;
    }
    let qos = qos?;
    Some(StoredDelivery {
        seq: 0,
        stage: None,
        qos,
        retain,
        subscription_ids: ids,
        shared: None,
        message: msg,
        message_id: 0,
    })
}

/// The ids of the QoS 2 messages a session's entry lists in flight and delivered.
struct Q2Ids {
    flight: HashSet<(u64, u64)>,
    done: HashSet<(u64, u64)>,
}

impl Q2Ids {
    fn of(record: &Record) -> Q2Ids {
        Q2Ids {
            flight: record.q2.iter().map(|&(_, _, run, count)| (run, count)).collect(),
            done: record
                .q2done
                .iter()
                .map(|&(run, count, _, _)| (run, count))
                .collect(),
        }
    }
}

/// The QoS 2 deliveries in flight of a session whose node is gone, from its entry, with
/// their packet ids and stages [MQTT-4.4.0-1]: a PUBLISH is sent again (DUP) with its id, a
/// PUBREL again. One whose message is not in the streams (not stored when the node died, or
/// gone by the stream's limits) is released: its PUBREL frees the packet id the client may
/// hold, so that no new message is sent with it and taken for a resend (v5 [MQTT-4.3.3-10]).
fn resumed(client: &str, record: &Record, found: &HashMap<(u64, u64), Arc<Message>>) -> Vec<StoredDelivery> {
    let subs: Vec<(String, SubscriptionOptions, u32)> = record
        .subs
        .iter()
        .map(|(f, o, id)| (f.clone(), options_from(*o), *id))
        .collect();
    let now = Instant::now();
    let mut out = Vec::with_capacity(record.q2.len());
    let mut ids = HashSet::new();
    for &(packet_id, stage, run, count) in &record.q2 {
        let Some(id) = tern_proto::PacketId::new(packet_id).filter(|_| ids.insert(packet_id)) else {
            continue;
        };
        let (message, stage) = match found.get(&(run, count)) {
            Some(m) if stage == 0 => (m.clone(), InflightState::Published),
            Some(m) => (m.clone(), InflightState::Released),
            None => (
                Arc::new(Message::new(
                    "$tern/released",
                    Bytes::new(),
                    QoS::ExactlyOnce,
                    false,
                )),
                InflightState::Released,
            ),
        };
        // As the subscriptions deliver it (a shared one's message matches none of the others).
        let mut d = delivery(client, &subs, message.clone(), now).unwrap_or(StoredDelivery {
            seq: 0,
            stage: None,
            qos: QoS::ExactlyOnce,
            retain: false,
            subscription_ids: Vec::new(),
            shared: None,
            message,
            message_id: 0,
        });
        d.qos = QoS::ExactlyOnce;
        d.stage = Some((stage, id));
        out.push(d);
    }
    out
}

/// After the connection to NATS comes back, drop the sessions of this node that another node
/// took meanwhile (it found this node gone from NATS and recovered them).
pub(crate) async fn after_reconnects(
    directory: Arc<Directory>,
    admin: Admin,
    reconnected: Arc<tokio::sync::Notify>,
) {
    // The first connection, at start, was told too: nothing to look at.
    let _ = tokio::time::timeout(Duration::ZERO, reconnected.notified()).await;
    loop {
        reconnected.notified().await;
        // Other nodes' claims that were under way finish first.
        tokio::time::sleep(Duration::from_secs(1)).await;
        // A stream whose leader was on the server that went may be electing one: the
        // sessions whose entry could not be read are looked at again, for a while.
        for _ in 0..30 {
            if directory.drop_moved(&admin).await == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

/// Write the floors of this node's connected sessions that rose, looked at every
/// [`FLOOR_EVERY`] ([`FLOOR_WRITES`] a look at most: first those that got messages since
/// their last write, then those written longest ago): a floor rises as the client
/// acknowledges, and recovering the session after this node died re-reads the streams from
/// it (what its client acknowledged after the floor comes again: duplicates). An idle
/// session's floor rises too, with the streams. A session claimed here lately gets its
/// floor written soon after it holds no message it came with (an arrival time for each, or
/// nothing; looked at from [`SETTLE_EVERY`] on, see [`settle_floors`]): a session moved,
/// recovered or reconnected has had no floor written since its claim, and one that moves on
/// again (its node dies) before the next look would be read back from its old floor.
pub(crate) async fn refresh_floors(directory: Arc<Directory>, admin: Admin) {
    let mut tick = tokio::time::interval(SETTLE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut written = Written::default();
    let every = (FLOOR_EVERY.as_millis() / SETTLE_EVERY.as_millis()).max(1);
    let mut ticks: u128 = 0;
    loop {
        tick.tick().await;
        ticks += 1;
        if ticks % every != 1 {
            settle_floors(&directory, &admin, &mut written).await;
            continue;
        }
        written.looks += 1;
        // Read before the sessions are looked at: a session that held nothing then has had
        // every message up to here delivered and acknowledged (read after, it could count a
        // message the tailers brought meanwhile, still queued for the session: a recovery
        // would start past it, and it would be lost).
        let before = positions(&directory.parts.positions);
        // Off the runtime's workers: it looks at every session under its lock.
        let looked = {
            let admin = admin.clone();
            tokio::task::spawn_blocking(move || admin.held_by_connected()).await
        };
        let Ok(looked) = looked else { continue };
        let mut now = HashMap::with_capacity(written.floors.len());
        let mut rose = Vec::new();
        for (i, (client, held, queued)) in looked.into_iter().enumerate() {
            if i % 256 == 255 {
                tokio::task::yield_now().await;
            }
            let last = written.floors.remove(&client);
            let empty = held == Held::Nothing;
            match (directory.floor(&client, held, before.clone()), last) {
                (Some(floor), Some(last)) if !above(&floor, &last.floor) => {
                    now.insert(client, last);
                }
                (Some(floor), last) => {
                    let order = rank(last.as_ref(), queued, written.looks);
                    let next = Last {
                        floor,
                        look: written.looks,
                        queued: Some(queued),
                        empty,
                    };
                    rose.push((order, client, next, last));
                }
                (None, Some(last)) => {
                    now.insert(client, last);
                }
                (None, None) => {}
            }
        }
        rose.sort_by_key(|r| r.0);
        let until = Instant::now() + FLOOR_WRITING;
        for (k, (_, client, next, last)) in rose.into_iter().enumerate() {
            if k < FLOOR_WRITES && Instant::now() < until {
                match directory
                    .save(&client, None, Some(next.floor.clone()), false)
                    .await
                {
                    Ok(_) => {
                        now.insert(client, next);
                        continue;
                    }
                    Err(e) => {
                        tracing::debug!(client_id = %client, "cluster sessions: floor not written: {e}")
                    }
                }
            }
            if let Some(last) = last {
                now.insert(client, last);
            }
        }
        written.floors = now;
    }
}

/// Where a session whose floor rose comes among those to write at look `looks` (lowest
/// first): first those that got messages since their floor was written (or held some then:
/// their clients would get those again after a recovery; the others' floors rose only with
/// the streams, that is with other sessions' messages), then those written longest ago (a
/// session this look never wrote was written at its CONNECT: as if just now).
fn rank(last: Option<&Last>, queued: u64, looks: u64) -> (bool, u64) {
    let idle = last.is_some_and(|l| l.empty && l.queued == Some(queued));
    (idle, last.map_or(looks, |l| l.look))
}

/// Whether `floor` is above `last` for some shard (or has other shards): worth writing.
fn above(floor: &[u64], last: &[u64]) -> bool {
    floor.len() != last.len() || floor.iter().zip(last).any(|(f, l)| f > l)
}

/// The floors [`refresh_floors`] wrote, for this node's connected sessions.
#[derive(Debug, Default)]
struct Written {
    floors: HashMap<Arc<str>, Last>,
    /// Looks so far.
    looks: u64,
}

/// What [`refresh_floors`] last wrote of a session.
#[derive(Debug)]
struct Last {
    floor: Vec<u64>,
    /// The look it was written at.
    look: u64,
    /// How many messages had been queued for it then (`None`: not known).
    queued: Option<u64>,
    /// Whether it held none then.
    empty: bool,
}

/// Write the floor of each session claimed lately that holds no message it came with
/// (see [`refresh_floors`]), through the directory's writers; look at one that still holds
/// some again later (100 ms, doubling up to [`SETTLE_AT_MOST`]); forget those gone from
/// this node and those waited for longer than [`SETTLE_WITHIN`].
async fn settle_floors(directory: &Directory, admin: &Admin, written: &mut Written) {
    let now = Instant::now();
    let due: Vec<(Arc<str>, Settling)> = {
        let settling = directory.settling.lock().unwrap_or_else(|e| e.into_inner());
        if settling.is_empty() {
            return;
        }
        settling
            .iter()
            .filter(|(_, s)| s.next <= now)
            .map(|(c, s)| (c.clone(), *s))
            .collect()
    };
    let before = positions(&directory.parts.positions);
    let mut done = Vec::new();
    let mut later = Vec::new();
    for (i, (client, s)) in due.into_iter().enumerate() {
        if i % 256 == 255 {
            tokio::task::yield_now().await;
        }
        if now.saturating_duration_since(s.since) >= SETTLE_WITHIN {
            done.push((client, s));
            continue;
        }
        let held = match admin.held(&client) {
            Some(held @ (Held::Nothing | Held::Since(_))) => held,
            Some(_) => {
                later.push((client, s));
                continue;
            }
            None => {
                done.push((client, s));
                continue;
            }
        };
        // Claimed here again meanwhile: looked at after that claim.
        let Some(floor) = directory.floor(&client, held, before.clone()) else {
            later.push((client, s));
            continue;
        };
        if written
            .floors
            .get(&client)
            .is_none_or(|w| above(&floor, &w.floor))
        {
            written.floors.insert(
                client.clone(),
                Last {
                    floor: floor.clone(),
                    look: written.looks,
                    queued: None,
                    empty: false,
                },
            );
            directory.enqueue(
                client.clone(),
                Op::Saved {
                    client: client.clone(),
                    record: None,
                    floor: Some(floor),
                },
            );
        }
        done.push((client, s));
    }
    let mut settling = directory.settling.lock().unwrap_or_else(|e| e.into_inner());
    // A claim since then (its entry changed) waits for its own turn.
    for (client, s) in done {
        if settling.get(&client) == Some(&s) {
            settling.remove(&client);
        }
    }
    for (client, s) in later {
        if let Some(e) = settling.get_mut(&client).filter(|e| **e == s) {
            e.next = now + s.wait;
            e.wait = (s.wait * 2).min(SETTLE_AT_MOST);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floors_of_sessions_that_got_messages_are_written_before_those_that_only_rose_with_the_streams() {
        let last = |look, queued, empty| Last {
            floor: vec![1],
            look,
            queued,
            empty,
        };
        let looks = 50;
        let mut order = [
            (
                "idle, written at look 1",
                rank(Some(&last(1, Some(7), true)), 7, looks),
            ),
            (
                "got messages, written at look 40",
                rank(Some(&last(40, Some(7), true)), 9, looks),
            ),
            (
                "held some, written at look 30",
                rank(Some(&last(30, Some(7), false)), 7, looks),
            ),
            (
                "written by a settling look",
                rank(Some(&last(45, None, false)), 7, looks),
            ),
            ("never written by a look", rank(None, 3, looks)),
            (
                "idle, written at look 20",
                rank(Some(&last(20, Some(2), true)), 2, looks),
            ),
        ];
        order.sort_by_key(|(_, r)| *r);
        let names: Vec<&str> = order.iter().map(|(n, _)| *n).collect();
        assert_eq!(
            names,
            [
                "held some, written at look 30",
                "got messages, written at look 40",
                "written by a settling look",
                "never written by a look",
                "idle, written at look 1",
                "idle, written at look 20",
            ]
        );
        assert!(above(&[2, 0], &[1, 5]), "one shard above is enough");
        assert!(
            !above(&[1, 5], &[1, 5]) && !above(&[0, 5], &[1, 5]),
            "equal or below: nothing to write"
        );
        assert!(above(&[0, 0, 0], &[1, 5]), "another number of shards");
    }

    #[test]
    fn a_dead_nodes_silence_counts_once_for_every_claim_and_ends_with_an_answer() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut s = Silences::default();
        assert_eq!(s.silent_for("a", at(0)), Duration::ZERO);
        // Claims keep hearing it every 250 ms.
        for ms in (250..=3_000).step_by(250) {
            s.silent_for("a", at(ms));
        }
        // A claim that asks now counts the silence the first one heard: it need not wait.
        assert_eq!(s.silent_for("a", at(3_100)), Duration::from_millis(3_100));
        // Heard again just within the bridge: the silence goes on.
        assert_eq!(
            s.silent_for("a", at(3_100) + SILENCE_BRIDGE - Duration::from_millis(1)),
            Duration::from_millis(3_099) + SILENCE_BRIDGE
        );
        // Another node's silence is its own.
        assert_eq!(s.silent_for("b", at(3_100)), Duration::ZERO);
        // An answer ends the silence: a claim that heard "no responders" long before that
        // counts from now (a node moving between NATS servers twice is not taken for dead).
        s.heard("a");
        let t1 = at(5_000);
        assert_eq!(s.silent_for("a", t1), Duration::ZERO);
        // A silence nobody heard for a while starts again, and such nodes are forgotten.
        assert_eq!(s.silent_for("a", t1 + SILENCE_BRIDGE), Duration::ZERO);
        assert!(!s.0.contains_key("b"), "nodes not heard lately are forgotten");
    }

    /// Against a NATS server: a message stored under its id is found; an id never stored is
    /// not, again not (its placeholder is recognised), and a late store of it is refused as
    /// a duplicate.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_qos2_message_is_found_stored_by_its_id_and_a_missing_one_stays_missing() {
        let nats = tern_testkit::nats::Nats::start(1, true);
        let client = async_nats::connect(nats.urls()[0].as_str())
            .await
            .expect("connect");
        let js = jetstream::new(client);
        let prefix = "probe";
        streams::test_streams(&js, prefix, 2).await;
        let k = streams::shard_of(Some("pub"), 2);
        let subject = crate::topic::encode_topic(&streams::shard_subject(prefix, k), "t");
        let publish = |id: (u64, u64)| {
            let mut h = async_nats::HeaderMap::new();
            h.insert(
                async_nats::header::NATS_MESSAGE_ID,
                crate::codec::message_id("a", id).as_str(),
            );
            h.insert(crate::codec::QOS, "2");
            js.publish_with_headers(subject.clone(), h, Bytes::from_static(b"m"))
        };
        publish((7, 1)).await.expect("publish").await.expect("stored");
        assert_eq!(stored(&js, prefix, 2, "b", "pub", "a", (7, 1)).await, Ok(true));
        assert_eq!(stored(&js, prefix, 2, "b", "pub", "a", (7, 2)).await, Ok(false));
        assert_eq!(
            stored(&js, prefix, 2, "c", "pub", "a", (7, 2)).await,
            Ok(false),
            "asked again (another node recovering): still not stored"
        );
        let late = publish((7, 2)).await.expect("publish").await.expect("answered");
        assert!(late.duplicate, "the dead node's late store is refused");
        // The same id from another node is another message.
        assert_eq!(stored(&js, prefix, 2, "b", "pub", "b", (7, 1)).await, Ok(false));
    }

    #[test]
    fn an_entry_keeps_its_incoming_qos2_ids_and_one_written_before_them_reads_as_none() {
        let mut r = Record {
            node: "a".into(),
            version: 5,
            expiry: 600,
            ..Record::default()
        };
        r.q2in = vec![(1, 7, 9, "a".into()), (2, 0, 0, String::new())];
        let back = Record::parse(&r.bytes());
        assert_eq!(back.q2in, r.q2in);
        // Written before `q2in` existed: none awaits PUBREL.
        let old =
            br#"{"node":"a","version":5,"expiry":600,"subs":[],"floor":[3,4],"offline":false,"saved_ms":1}"#;
        let back = Record::parse(old);
        assert!(back.q2in.is_empty());
        assert_eq!(back.floor, vec![3, 4]);
        // None: the field is left out.
        let plain = Record {
            node: "a".into(),
            ..Record::default()
        };
        assert!(!String::from_utf8_lossy(&plain.bytes()).contains("q2in"));
    }
}
