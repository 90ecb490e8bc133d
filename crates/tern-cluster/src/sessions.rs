//! Sessions across nodes (issue #15: "a persistent session that disconnects from node A and
//! reconnects to node B finds its subscriptions and its queued messages"; "session takeover
//! across nodes").
//!
//! The key-value bucket `<prefix>_sessions` says which node holds each client's session
//! (key: the client id in hex, or `s` and its SHA-256 for long ids; value: the node's name).
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
//! A node answers `busy` for a client whose claim it is making itself; the claimant asks
//! again. A node that does not answer (dead, or gone from NATS) holds nothing any more: the
//! session starts empty on the claimant (its queued messages stayed with the dead node;
//! see docs/cluster.md). The entry is deleted when the session ends on its node.

use std::collections::{HashMap, HashSet};
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use futures_util::StreamExt;
use tern_broker::{Admin, HandOff};
use tokio::sync::mpsc;

use crate::outbound::Outbound;
use crate::{streams, ClusterError};

/// Claims that keep meeting a changed entry give up after this many reads.
const MAX_TRIES: usize = 8;
/// How long a claimant waits for an answer from the node holding the session.
const ASK_TIMEOUT: Duration = Duration::from_secs(2);
/// How often a claimant asks again a node that is busy claiming the same client.
const BUSY_RETRIES: usize = 50;
/// Bytes of a session sent in one NATS message.
const CHUNK: usize = 256 * 1024;
/// How long a session handed out waits for its claimant to fetch it.
const KEEP_GIVEN: Duration = Duration::from_secs(60);
/// Longest wait for stored messages and tailers while a session moves.
const WAIT_CAUGHT_UP: Duration = Duration::from_secs(5);
/// Session ends waiting for the directory task at most (beyond, dropped and logged).
pub(crate) const QUEUE: usize = 4096;

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

/// Create the sessions' bucket, or check the one there.
pub(crate) async fn ensure(
    js: &jetstream::Context,
    prefix: &str,
    replicas: u16,
) -> Result<kv::Store, ClusterError> {
    let bucket = streams::sessions_bucket(prefix);
    let unavailable = |why: String| ClusterError::Unavailable {
        stream: format!("KV_{bucket}"),
        why,
    };
    if let Ok(kv) = js.get_key_value(&bucket).await {
        return Ok(kv);
    }
    js.create_key_value(kv::Config {
        bucket: bucket.clone(),
        description: "Tern cluster: the node holding each client's session".into(),
        history: 1,
        storage: jetstream::stream::StorageType::File,
        num_replicas: replicas.into(),
        ..Default::default()
    })
    .await
    .map_err(|e| unavailable(format!("cannot create it: {e}")))
}

/// A session handed out, waiting for its claimant.
struct Given {
    client: String,
    raw: Bytes,
    at: Instant,
}

/// What a [`Directory`] is made of.
pub(crate) struct Parts {
    pub node: String,
    pub prefix: String,
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    pub kv: kv::Store,
    pub outbound: Arc<Outbound>,
    /// Per shard, the last stream sequence this node's tailer handled.
    pub positions: Arc<[AtomicU64]>,
}

/// This node's side of the directory.
pub(crate) struct Directory {
    parts: Parts,
    /// Clients whose claim this node is making.
    claiming: Mutex<HashSet<Arc<str>>>,
    /// Sessions handed out, by token.
    given: Mutex<HashMap<String, Given>>,
    /// Sessions fetched and not yet installed: the node that gave each and its token.
    fetched: Mutex<HashMap<Arc<str>, (String, String)>>,
    next_token: AtomicU64,
    /// Session ends, for [`run`].
    ended: mpsc::Sender<Arc<str>>,
}

impl std::fmt::Debug for Directory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Directory")
            .field("node", &self.parts.node)
            .finish_non_exhaustive()
    }
}

/// Removes a client from the claims in progress when its claim ends, however it ends.
struct Claiming<'a>(&'a Directory, Arc<str>);

impl Drop for Claiming<'_> {
    fn drop(&mut self) {
        self.0
            .claiming
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.1);
    }
}

impl Directory {
    pub(crate) fn new(parts: Parts) -> (Directory, mpsc::Receiver<Arc<str>>) {
        let (ended, rx) = mpsc::channel(QUEUE);
        let d = Directory {
            parts,
            claiming: Mutex::default(),
            given: Mutex::default(),
            fetched: Mutex::default(),
            next_token: AtomicU64::new(1),
            ended,
        };
        (d, rx)
    }

    /// Wait until every QoS 1/2 message this node's clients published so far is stored in
    /// JetStream (so that the node giving a session up sees them in its tailers).
    async fn own_messages_stored(&self) {
        let o = &self.parts.outbound;
        let target = o.submitted();
        let deadline = tokio::time::Instant::now() + WAIT_CAUGHT_UP;
        while o.progress.get() < target && !o.progress.has_failed() {
            let seen = o.progress.get();
            if tokio::time::timeout_at(deadline, o.progress.wait_past(seen))
                .await
                .is_err()
            {
                tracing::warn!(stored = o.progress.get(), target, "cluster sessions: this node's messages are not all stored; a message may miss a session moving here");
                return;
            }
        }
    }

    /// Wait until this node's tailers have handled every message stored so far, so that a
    /// session leaving it has received all of them here.
    async fn tailers_caught_up(&self) {
        let deadline = tokio::time::Instant::now() + WAIT_CAUGHT_UP;
        for (k, position) in self.parts.positions.iter().enumerate() {
            let name = streams::stream_name(&self.parts.prefix, k as u16);
            let last = match self.parts.js.get_stream(&name).await {
                Ok(mut s) => match s.info().await {
                    Ok(i) => i.state.last_sequence,
                    Err(e) => {
                        tracing::warn!(stream = %name, "cluster sessions: cannot read the stream's end: {e}");
                        continue;
                    }
                },
                Err(e) => {
                    tracing::warn!(stream = %name, "cluster sessions: cannot read the stream's end: {e}");
                    continue;
                }
            };
            while position.load(Ordering::Acquire) < last {
                if tokio::time::Instant::now() >= deadline {
                    tracing::warn!(stream = %name, last, at = position.load(Ordering::Acquire), "cluster sessions: the tailer is behind; a message may miss a session leaving this node");
                    return;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
    }

    fn control(&self, node: &str, verb: &str) -> String {
        format!("{}.ctl.{node}.{verb}", self.parts.prefix)
    }

    /// Make this node the holder of `client`'s session; the session the previous holder
    /// handed over, if any (see the module documentation).
    pub(crate) async fn claim(&self, client: Arc<str>, clean_start: bool) -> Result<Option<Bytes>, String> {
        self.claiming
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(client.clone());
        let _claiming = Claiming(self, client.clone());
        let key = key(&client);
        let me = Bytes::from(self.parts.node.clone().into_bytes());
        // Every write is a compare-and-swap; one that fails (another node, or this node's
        // own deletion of an ended session's entry, wrote meanwhile) reads again.
        let mut failed = String::new();
        for _ in 0..MAX_TRIES {
            let entry = self
                .parts
                .kv
                .entry(key.clone())
                .await
                .map_err(|e| format!("the session directory cannot be read: {e}"))?;
            let holder = match entry {
                Some(e) if e.operation == kv::Operation::Put => Some((e.value, e.revision)),
                _ => None,
            };
            let written = match &holder {
                None => self.parts.kv.create(&key, me.clone()).await.map_err(|e| e.to_string()),
                // Its own name is written again (a new revision), so that the deletion of an
                // entry this node's session left a moment ago, which expects the old
                // revision, fails.
                Some((_, revision)) => self
                    .parts
                    .kv
                    .update(&key, me.clone(), *revision)
                    .await
                    .map_err(|e| e.to_string()),
            };
            if let Err(e) = written {
                failed = e;
                continue;
            }
            return match holder {
                Some((owner, _)) if owner != me => {
                    let owner = String::from_utf8_lossy(&owner).into_owned();
                    self.fetch(&owner, &client, clean_start).await
                }
                _ => Ok(None),
            };
        }
        Err(format!(
            "the session directory could not be written ({MAX_TRIES} tries, last: {failed})"
        ))
    }

    /// Ask `owner` for `client`'s session.
    async fn fetch(
        &self,
        owner: &str,
        client: &Arc<str>,
        clean_start: bool,
    ) -> Result<Option<Bytes>, String> {
        let mut ask = Vec::with_capacity(1 + client.len());
        ask.push(u8::from(clean_start));
        ask.extend_from_slice(client.as_bytes());
        let ask = Bytes::from(ask);
        let mut answer = None;
        for _ in 0..BUSY_RETRIES {
            match self.request(owner, "take", ask.clone()).await {
                Ok(a) if &a[..] == b"busy" => tokio::time::sleep(Duration::from_millis(100)).await,
                Ok(a) => {
                    answer = Some(a);
                    break;
                }
                Err(why) => {
                    tracing::warn!(client_id = %client, node = owner, "the node that held the session does not answer ({why}); the session starts empty here");
                    return Ok(None);
                }
            }
        }
        let Some(answer) = answer else {
            return Err(format!("node {owner} stayed busy claiming the same client"));
        };
        match self.download(owner, &answer).await? {
            Some((token, raw)) => {
                self.fetched
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(client.clone(), (owner.to_string(), token));
                tracing::info!(client_id = %client, from = owner, bytes = raw.len(), "session taken over from another node");
                Ok(Some(raw))
            }
            None => Ok(None),
        }
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

    async fn request(&self, node: &str, verb: &str, body: Bytes) -> Result<Bytes, String> {
        match tokio::time::timeout(
            ASK_TIMEOUT,
            self.parts.client.request(self.control(node, verb), body),
        )
        .await
        {
            Ok(Ok(m)) => Ok(m.payload),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {ASK_TIMEOUT:?}")),
        }
    }

    /// The session fetched for `client` is installed: its giver removes it and sends what
    /// reached it since (then forgets it all).
    pub(crate) async fn claimed(&self, client: Arc<str>) -> Result<Option<Bytes>, String> {
        let fetched = self
            .fetched
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&client);
        let Some((owner, token)) = fetched else {
            return Ok(None);
        };
        self.own_messages_stored().await;
        let answer = self.request(&owner, "rest", Bytes::from(token)).await?;
        let rest = self.download(&owner, &answer).await?;
        let Some((token, raw)) = rest else {
            return Ok(None);
        };
        if let Err(e) = self
            .parts
            .client
            .publish(self.control(&owner, "done"), Bytes::from(token))
            .await
        {
            tracing::debug!("cluster sessions: done not sent: {e}");
        }
        Ok(Some(raw))
    }

    /// The session of `client` ended on this node.
    pub(crate) fn ended(&self, client: &str) {
        match self.ended.try_send(client.into()) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::warn!(
                    "cluster sessions: the directory task is behind; an ended session's entry stays"
                )
            }
            // Shutting down.
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }

    /// Keep `raw` for its claimant to fetch; the answer that says so.
    fn give(&self, client: String, raw: Bytes) -> Bytes {
        let n = self.next_token.fetch_add(1, Ordering::Relaxed);
        let token = format!("{}-{n}", std::process::id());
        let len = raw.len();
        self.given.lock().unwrap_or_else(|e| e.into_inner()).insert(
            token.clone(),
            Given {
                client,
                raw,
                at: Instant::now(),
            },
        );
        Bytes::from(format!("moved {token} {len}"))
    }

    /// Answer a request of another node.
    async fn answer(&self, admin: &Admin, verb: &str, body: &[u8]) -> Bytes {
        match verb {
            "take" => {
                let (Some(&flag), Ok(client)) = (
                    body.first(),
                    std::str::from_utf8(body.get(1..).unwrap_or_default()),
                ) else {
                    return Bytes::from_static(b"bad request");
                };
                if self
                    .claiming
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .contains(client)
                {
                    return Bytes::from_static(b"busy");
                }
                match admin.hand_over(client, flag != 0) {
                    HandOff::Absent => Bytes::from_static(b"none"),
                    HandOff::Moved(raw) => self.give(client.to_string(), raw),
                    _ => Bytes::from_static(b"ended"),
                }
            }
            "chunk" => {
                let text = String::from_utf8_lossy(body);
                let mut words = text.split(' ');
                let (Some(token), Some(Ok(at))) = (words.next(), words.next().map(str::parse::<usize>))
                else {
                    return Bytes::new();
                };
                let given = self.given.lock().unwrap_or_else(|e| e.into_inner());
                match given.get(token) {
                    Some(g) if at < g.raw.len() => g.raw.slice(at..(at + CHUNK).min(g.raw.len())),
                    _ => Bytes::new(),
                }
            }
            "rest" => {
                let token = String::from_utf8_lossy(body);
                let first = self
                    .given
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&*token);
                let Some(first) = first else {
                    return Bytes::from_static(b"none");
                };
                self.tailers_caught_up().await;
                match admin.hand_over_rest(&first.client) {
                    Some(raw) => self.give(first.client, raw),
                    None => Bytes::from_static(b"none"),
                }
            }
            "done" => {
                let token = String::from_utf8_lossy(body);
                self.given
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&*token);
                Bytes::new()
            }
            _ => Bytes::from_static(b"unknown request"),
        }
    }

    /// Delete `client`'s entry if it still names this node and the session did not start
    /// again here meanwhile.
    async fn forget(&self, admin: &Admin, client: &str) -> Result<(), String> {
        let key = key(client);
        let entry = self
            .parts
            .kv
            .entry(key.clone())
            .await
            .map_err(|e| e.to_string())?;
        let Some(e) = entry.filter(|e| e.operation == kv::Operation::Put) else {
            return Ok(());
        };
        // A claim of this node for the client writes a new revision, so the deletion below
        // fails if the client came back meanwhile.
        let claiming = self
            .claiming
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(client);
        if e.value != self.parts.node.as_bytes() || claiming || admin.session(client).is_some() {
            return Ok(());
        }
        self.parts
            .kv
            .delete_expect_revision(&key, Some(e.revision))
            .await
            .map_err(|e| e.to_string())
    }

    /// At start: a session this node restored from its store that another node took since
    /// (while this one was down) is dropped here; one nobody took is entered as this node's.
    pub(crate) async fn reconcile(&self, admin: &Admin) {
        for s in admin.sessions() {
            let key = key(&s.client_id);
            let holder = match self.parts.kv.entry(key.clone()).await {
                Ok(Some(e)) if e.operation == kv::Operation::Put => Some(e.value),
                Ok(_) => None,
                Err(e) => {
                    tracing::warn!(client_id = %s.client_id, "cluster sessions: the directory cannot be read: {e}");
                    continue;
                }
            };
            match holder {
                Some(owner) if owner == self.parts.node.as_bytes() => {}
                Some(owner) => {
                    // Quietly: the session lives on the other node.
                    let _ = admin.hand_over_rest(&s.client_id);
                    tracing::info!(client_id = %s.client_id, node = %String::from_utf8_lossy(&owner), "stored session dropped: another node holds it now");
                }
                None => {
                    if let Err(e) = self
                        .parts
                        .kv
                        .create(&key, Bytes::from(self.parts.node.clone().into_bytes()))
                        .await
                    {
                        tracing::warn!(client_id = %s.client_id, "cluster sessions: the stored session is not entered in the directory: {e}");
                    }
                }
            }
        }
    }
}

/// Answer other nodes' requests, forget the entries of ended sessions, and drop sessions
/// handed out that nobody fetched.
pub(crate) async fn run(directory: Arc<Directory>, admin: Admin, mut ended: mpsc::Receiver<Arc<str>>) {
    let subject = directory.control(&directory.parts.node, "*");
    let mut requests = loop {
        match directory.parts.client.subscribe(subject.clone()).await {
            Ok(s) => break s,
            Err(e) => {
                tracing::warn!("cluster sessions: cannot subscribe to {subject}: {e}; trying again");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    };
    let mut sweep = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            m = requests.next() => {
                let Some(m) = m else { return };
                let verb = m.subject.rsplit('.').next().unwrap_or("").to_string();
                let answer = directory.answer(&admin, &verb, &m.payload).await;
                if let Some(reply) = m.reply {
                    if let Err(e) = directory.parts.client.publish(reply, answer).await {
                        tracing::debug!("cluster sessions: answer not sent: {e}");
                    }
                }
            }
            c = ended.recv() => {
                let Some(c) = c else { return };
                if let Err(e) = directory.forget(&admin, &c).await {
                    tracing::warn!(client_id = %c, "cluster sessions: the ended session's entry stays: {e}");
                }
            }
            _ = sweep.tick() => {
                let mut given = directory.given.lock().unwrap_or_else(|e| e.into_inner());
                given.retain(|_, g| {
                    let keep = g.at.elapsed() < KEEP_GIVEN;
                    if !keep {
                        tracing::warn!(client_id = %g.client, "a session handed out was never fetched; dropped");
                    }
                    keep
                });
            }
        }
    }
}
