//! QoS 0 flow control across nodes: credit per publishing connection.
//!
//! On one broker a QoS 0 publisher whose messages take a subscriber's queue over its limits
//! is slowed down (its socket not read) until that queue has room again
//! (`backpressure_qos0`). Across nodes core NATS slows nobody down: the subscriber's node
//! dropped what its subscriber could not take, and the publisher's node spent the machine on
//! messages that were dropped (bench/RESULTS.md, "QoS 0 packs"). Words that only said
//! "hold" and "release" came too late: between two of them the publisher's node read
//! thousands of messages from the publisher's socket (bench/RESULTS.md, the same section).
//! So the receiving node gives credit instead, as a count:
//!
//! - Every QoS 0 message a client publishes carries its node's run (a random number drawn
//!   at start), its connection's id on the node and how many QoS 0 messages that
//!   connection has published with it (`codec::SENT`, [`Sent`]).
//! - A node whose sessions a publisher's messages take to half their queue limits watches
//!   that publisher's connection ([`Teller`]): the highest number it has seen, and the
//!   sessions it pressed. It tells the publisher's node, on core NATS
//!   (`<prefix>.ctl.flow.<node>`), how far the connection may go: the number seen plus the
//!   room those sessions have left before they drop messages ([`PressedSession::room`]; a
//!   session several watched connections share gives each its share). The messages on
//!   their way are inside that count, so a word that comes late lets no more through than
//!   there was room for when it was said. As the sessions drain it says a higher number
//!   (looked at every [`LOOK_EVERY`], said at least every [`KEEP_TELLING`]).
//! - The publisher's node stops reading a connection whose count has reached the lowest
//!   number another node gave it for its run ([`Holds::holds_back`],
//!   `Backplane::holds_back`), as it does for a full local queue; the connection looks again
//!   every 2 ms.
//! - The watch ends, and the node says so (`-`), once its sessions need no one to wait
//!   (they ended, their clients are away, or taken for stalled after
//!   `backpressure_timeout_ms`, whose messages are then dropped, as on one broker), once
//!   they have room and the number lagged behind the publisher's count [`LAGS`] times in a
//!   row (its count also counts messages that never come here; see [`QUIET`]), or once
//!   nothing of it arrived for [`IDLE`]. A
//!   number not said again for [`HOLD_AT_MOST`] is forgotten (a node gone, a word lost).
//!   While the publisher keeps sending, the watch lasts: watches that ended when their
//!   sessions kept up (held by them), or at the first lag, let the next round trip of
//!   messages through unheld and lost them (the pairs benchmark lost up to 17-24% instead
//!   of 2-8%).
//!
//! Nothing is stored and nothing waits for an answer: a word lost is a publisher held a
//! little longer, or not at all (its messages beyond the limits dropped, as QoS 0 allows).
//! The first messages of a burst go before any word can come back (one round trip of them;
//! what does not fit twice the sessions' limits is dropped). Shared subscriptions' QoS 0
//! messages, which come through a queue group (`shares.rs`), are watched the same way, this
//! node's own publishers' too (their words go to this node's [`Holds`] directly).
//!
//! [`PressedSession::room`]: tern_broker::PressedSession::room

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use futures_util::StreamExt;
use tern_broker::backplane::Sent;
use tern_broker::{PressedSession, Room};

use crate::codec::{self, FlowLine as Line, FLOW_LINES};

/// Longest a number is kept after the last word that said it. A word comes at least every
/// [`KEEP_TELLING`]; with 500 ms, a node whose tasks were late under load let its
/// publishers go now and then, and the pairs benchmark lost more than 10% in 6 runs of 25
/// (at most 5.5% in 8 runs with 2 s).
pub const HOLD_AT_MOST: Duration = Duration::from_secs(2);

/// A watched connection's number is said again at least this often (well within
/// [`HOLD_AT_MOST`]).
pub const KEEP_TELLING: Duration = Duration::from_millis(100);

/// How often a node looks at the room of the sessions it watches for (while it watches
/// any).
pub const LOOK_EVERY: Duration = Duration::from_millis(2);

/// A watch ends when nothing of its publisher arrived for this long.
pub const IDLE: Duration = Duration::from_secs(10);

/// When a watch's sessions are at half their limits or below and for this long nothing of
/// its publisher arrived and its number stayed the same, the number lags behind the
/// publisher's count: what was said is taken as seen (the publisher may go on by the
/// sessions' room), and after [`LAGS`] of those in a row the watch ends.
pub const QUIET: Duration = Duration::from_millis(100);

/// Lags in a row (see [`QUIET`]) after which a watch ends.
pub const LAGS: u8 = 3;

/// Connections held, and connections watched, at most (beyond, a new one is left out: its
/// messages are dropped where there is no room, as without flow control).
const MAX_KEPT: usize = 4096;

/// Nodes that may hold one connection back at once, at most (beyond, a new one is not
/// heard for it).
const MAX_NODES: usize = 16;

/// Sessions one watch looks at, at most.
const MAX_SESSIONS: usize = 32;

/// The subject on which `node` hears how far its connections may go.
pub fn subject(prefix: &str, node: &str) -> String {
    format!("{prefix}.ctl.flow.{node}")
}

/// Counters of the flow control.
#[derive(Debug, Default)]
pub struct FlowCounters {
    /// Words said to other nodes (each naming one or more connections), and to this one
    /// for its own connections (shared subscriptions' members here: not through NATS).
    pub told: AtomicU64,
    /// Numbers heard from other nodes, and from this one (each connection named counted).
    pub heard: AtomicU64,
    /// Times a connection of this node was found held back (after a QoS 0 message, and at
    /// each look while it waits).
    pub held: AtomicU64,
}

/// How far one connection may go, as one other node said.
#[derive(Debug)]
struct Limit {
    node: Box<str>,
    up_to: u64,
    until: Instant,
}

/// This node's QoS 0 connections and how far other nodes let them go.
#[derive(Debug)]
pub(crate) struct Holds {
    /// This node's run: words for connections of an earlier run are not for these.
    run: u64,
    counters: Arc<FlowCounters>,
    limits: RwLock<HashMap<u64, Vec<Limit>>>,
    /// Whether `limits` has any (read on every QoS 0 publish).
    any: AtomicBool,
    /// Raised after every change of `limits` ([`Holds::epoch`]).
    epoch: AtomicU64,
}

impl Holds {
    pub fn new(run: u64, counters: Arc<FlowCounters>) -> Holds {
        Holds {
            run,
            counters,
            limits: RwLock::default(),
            any: AtomicBool::new(false),
            epoch: AtomicU64::new(0),
        }
    }

    /// A number raised whenever the numbers kept change: what [`Holds::holds_from`]
    /// answered stands while it stays the same.
    #[inline]
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// The lowest count at which [`Holds::holds_back`] holds connection `conn_id` back now
    /// (`u64::MAX`: none).
    pub fn holds_from(&self, conn_id: u64) -> u64 {
        if !self.any.load(Ordering::Acquire) {
            return u64::MAX;
        }
        let limits = self.limits.read().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        limits.get(&conn_id).map_or(u64::MAX, |of| {
            of.iter()
                .filter(|l| now < l.until)
                .map(|l| l.up_to)
                .min()
                .unwrap_or(u64::MAX)
        })
    }

    /// Whether the connection that has published `sent` QoS 0 messages is to stop reading
    /// its client now.
    #[inline]
    pub fn holds_back(&self, sent: Sent) -> bool {
        if !self.any.load(Ordering::Acquire) {
            return false;
        }
        let limits = self.limits.read().unwrap_or_else(|e| e.into_inner());
        let Some(of) = limits.get(&sent.conn_id) else {
            return false;
        };
        let now = Instant::now();
        let held = of.iter().any(|l| sent.count >= l.up_to && now < l.until);
        if held {
            self.counters.held.fetch_add(1, Ordering::Relaxed);
        }
        held
    }

    /// What `node` said of this node's connections.
    fn apply(&self, node: &str, said: impl IntoIterator<Item = Line>) {
        let now = Instant::now();
        let mut limits = self.limits.write().unwrap_or_else(|e| e.into_inner());
        if limits.len() >= MAX_KEPT {
            forget_ended(&mut limits, now);
        }
        for (run, conn, up_to) in said {
            if run != self.run {
                continue;
            }
            match up_to {
                None => {
                    if let Some(of) = limits.get_mut(&conn) {
                        of.retain(|l| &*l.node != node);
                        if of.is_empty() {
                            limits.remove(&conn);
                        }
                    }
                }
                Some(up_to) => {
                    if limits.len() >= MAX_KEPT && !limits.contains_key(&conn) {
                        continue;
                    }
                    let of = limits.entry(conn).or_default();
                    let until = now + HOLD_AT_MOST;
                    if let Some(l) = of.iter_mut().find(|l| &*l.node == node) {
                        l.up_to = up_to;
                        l.until = until;
                    } else if of.len() < MAX_NODES {
                        of.push(Limit {
                            node: node.into(),
                            up_to,
                            until,
                        });
                    }
                }
            }
        }
        self.any.store(!limits.is_empty(), Ordering::Release);
        self.epoch.fetch_add(1, Ordering::AcqRel);
    }

    /// Forget the numbers not said again in time.
    fn prune(&self) {
        if !self.any.load(Ordering::Acquire) {
            return;
        }
        let mut limits = self.limits.write().unwrap_or_else(|e| e.into_inner());
        forget_ended(&mut limits, Instant::now());
        self.any.store(!limits.is_empty(), Ordering::Release);
        self.epoch.fetch_add(1, Ordering::AcqRel);
    }
}

/// Forget the numbers of `limits` whose time is over.
fn forget_ended(limits: &mut HashMap<u64, Vec<Limit>>, now: Instant) {
    limits.retain(|_, of| {
        of.retain(|l| l.until > now);
        !of.is_empty()
    });
}

/// A connection of another node (or of this one, for a shared subscription) whose messages
/// took sessions here to half their limits.
struct Watch {
    /// Those sessions.
    sessions: Vec<PressedSession>,
    /// The highest number of its messages seen here, and when.
    seen: u64,
    seen_at: Instant,
    /// The last number said, when it was said, and when it last changed.
    said: Option<u64>,
    told: Instant,
    said_at: Instant,
    /// Times in a row the number was found lagging behind its count (see [`QUIET`]).
    lags: u8,
}

/// Per session watched ([`PressedSession::key`]): how many watches share it, and its room.
type Rooms = HashMap<usize, (u64, Room)>;

/// The watched connections, by node, and by run and connection id there.
#[derive(Default)]
struct Watched {
    by_node: HashMap<Box<str>, HashMap<(u64, u64), Watch>>,
}

impl Watched {
    /// How many there are.
    fn len(&self) -> usize {
        self.by_node.values().map(HashMap::len).sum()
    }

    /// The [`Rooms`] of the sessions watched now (each session looked at once).
    fn rooms(&self) -> Rooms {
        let mut rooms = Rooms::new();
        for w in self.by_node.values().flat_map(|of| of.values()) {
            for s in &w.sessions {
                rooms.entry(s.key()).or_insert_with(|| (0, s.room())).0 += 1;
            }
        }
        rooms
    }
}

/// How far `w`'s connection may go now: what it has sent plus the least share of room of
/// its sessions; `None` when none of them needs anyone to wait.
fn up_to(w: &Watch, rooms: &Rooms) -> Option<u64> {
    let share = w
        .sessions
        .iter()
        .filter_map(|s| match rooms.get(&s.key()) {
            // At least one each: a share of 0 would hold every one of them back.
            Some(&(n, Room { left: Some(room), .. })) if room > 0 => Some((room as u64 / n.max(1)).max(1)),
            Some((_, Room { left: Some(_), .. })) => Some(0),
            _ => None,
        })
        .min()?;
    Some(w.seen.saturating_add(share))
}

/// What to say: per node, [`Line`]s.
type Words = HashMap<Box<str>, Vec<Line>>;

/// The receiving side: how far the connections of other nodes (and this node's own, for
/// shared subscriptions) may go, for the room of this node's sessions.
pub(crate) struct Teller {
    prefix: String,
    /// This node's name.
    me: String,
    watched: Mutex<Watched>,
    /// Whether anything is watched (read for every batch of QoS 0 messages routed).
    any: AtomicBool,
    /// Wakes the look ([`watch`]) when a first connection is watched.
    wake: tokio::sync::Notify,
    counters: Arc<FlowCounters>,
    /// This node's own connections' limits: what is said of them goes there directly (the
    /// messages of shared subscriptions, see [`Teller::routed`]).
    own: Arc<Holds>,
}

impl std::fmt::Debug for Teller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Teller")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl Teller {
    pub fn new(prefix: &str, me: &str, counters: Arc<FlowCounters>, own: Arc<Holds>) -> Teller {
        Teller {
            prefix: prefix.to_string(),
            me: me.to_string(),
            watched: Mutex::default(),
            any: AtomicBool::new(false),
            wake: tokio::sync::Notify::new(),
            counters,
            own,
        }
    }

    /// `batch` (core NATS, QoS 0) was routed, and `pressed` says which sessions it took to
    /// half their limits with which publisher's messages: watch those publishers'
    /// connections, and note how far the watched ones have come. Returns the first words
    /// for the new watches (to [`Teller::say`]). With `own`, this node's own connections
    /// are watched too (the messages of shared subscriptions, which come back to this node
    /// through NATS rather than through the broker's routing and its backpressure).
    pub fn routed(
        &self,
        batch: &[async_nats::Message],
        pressed: &[(PressedSession, Arc<str>)],
        own: bool,
    ) -> Words {
        let mut words = Words::new();
        if pressed.is_empty() && !self.any.load(Ordering::Acquire) {
            return words;
        }
        let b64 = base64::engine::general_purpose::STANDARD;
        // The pressing publishers as their messages' `Tern-O` has them.
        let mut pressing: Vec<(String, &Arc<str>)> = Vec::new();
        for (_, p) in pressed {
            if !pressing.iter().any(|(_, q)| *q == p) {
                pressing.push((b64.encode(p.as_bytes()), p));
            }
        }
        let now = Instant::now();
        let mut fresh: Vec<(Box<str>, (u64, u64))> = Vec::new();
        let mut guard = self.watched.lock().unwrap_or_else(|e| e.into_inner());
        let watched = &mut *guard;
        for m in batch {
            let Some(h) = m.headers.as_ref() else { continue };
            let (Some(node), Some((run, sent))) = (codec::node_of(Some(h)), codec::sent_of(h)) else {
                continue;
            };
            let key = (run, sent.conn_id);
            let publisher = || {
                codec::origin_of(h)
                    .and_then(|o| pressing.iter().find(|(b, _)| b == o))
                    .map(|(_, p)| *p)
            };
            let known = watched.by_node.get(node).is_some_and(|of| of.contains_key(&key));
            let publisher = match (known, publisher()) {
                (true, p) => p,
                (false, None) => continue,
                (false, Some(p)) => {
                    if watched.len() >= MAX_KEPT || (node == self.me && !own) || !codec::valid_node(node) {
                        continue;
                    }
                    fresh.push((node.into(), key));
                    watched.by_node.entry(node.into()).or_default().insert(
                        key,
                        Watch {
                            sessions: Vec::new(),
                            seen: 0,
                            seen_at: now,
                            said: None,
                            told: now,
                            said_at: now,
                            lags: 0,
                        },
                    );
                    Some(p)
                }
            };
            let Some(w) = watched.by_node.get_mut(node).and_then(|of| of.get_mut(&key)) else {
                continue;
            };
            w.seen = w.seen.max(sent.count);
            w.seen_at = now;
            w.lags = 0;
            if let Some(p) = publisher {
                for (s, _) in pressed.iter().filter(|(_, q)| q == p) {
                    if w.sessions.len() < MAX_SESSIONS && !w.sessions.iter().any(|x| x.same(s)) {
                        w.sessions.push(s.clone());
                    }
                }
            }
        }
        if !fresh.is_empty() {
            // New watches say their first number at once; one whose sessions need nobody
            // to wait (stalled, say) ends without a word.
            let rooms = watched.rooms();
            for (node, key) in fresh {
                let Some(of) = watched.by_node.get_mut(&node) else {
                    continue;
                };
                let Some(w) = of.get_mut(&key) else { continue };
                match up_to(w, &rooms) {
                    Some(n) => {
                        w.said = Some(n);
                        w.told = now;
                        words.entry(node).or_default().push((key.0, key.1, Some(n)));
                    }
                    None => {
                        of.remove(&key);
                        if of.is_empty() {
                            watched.by_node.remove(&node);
                        }
                    }
                }
            }
        }
        // Before the look is woken, under the lock: it must find `any` set.
        let any = !watched.by_node.is_empty();
        self.any.store(any, Ordering::Release);
        if any {
            self.wake.notify_one();
        }
        words
    }

    /// Say the new numbers of the watched connections, the unchanged ones every
    /// [`KEEP_TELLING`], and end the watches no longer needed.
    fn look(&self) -> Words {
        let mut words = Words::new();
        if !self.any.load(Ordering::Acquire) {
            return words;
        }
        let now = Instant::now();
        let mut guard = self.watched.lock().unwrap_or_else(|e| e.into_inner());
        let watched = &mut *guard;
        let rooms = watched.rooms();
        watched.by_node.retain(|node, of| {
            of.retain(|&(run, conn), w| {
                // Sessions that need nobody to wait any more are let go.
                w.sessions
                    .retain(|s| rooms.get(&s.key()).is_some_and(|(_, room)| room.left.is_some()));
                let mut n = up_to(w, &rooms);
                let at_half = w
                    .sessions
                    .iter()
                    .all(|s| rooms.get(&s.key()).is_none_or(|(_, room)| room.at_half));
                let quiet = now.saturating_duration_since(w.seen_at);
                // Its sessions have room, yet nothing of it comes and its number stands:
                // the number lags behind its count (messages that never come here). What
                // was said is taken as seen, so it may go on by the sessions' room; after
                // LAGS of those in a row the watch ends.
                let lagging = at_half
                    && quiet >= QUIET
                    && n == w.said
                    && now.saturating_duration_since(w.said_at) >= QUIET;
                if n.is_none() || quiet >= IDLE || (lagging && w.lags >= LAGS) {
                    words.entry(node.clone()).or_default().push((run, conn, None));
                    return false;
                }
                if lagging {
                    w.lags += 1;
                    w.seen = w.seen.max(w.said.unwrap_or(0));
                    n = up_to(w, &rooms);
                }
                if n != w.said {
                    w.said_at = now;
                }
                if n != w.said || now.saturating_duration_since(w.told) >= KEEP_TELLING {
                    words.entry(node.clone()).or_default().push((run, conn, n));
                    w.said = n;
                    w.told = now;
                }
                true
            });
            !of.is_empty()
        });
        self.any.store(!watched.by_node.is_empty(), Ordering::Release);
        words
    }

    /// Send `words`, one NATS message per node (per [`FLOW_LINES`] connections,
    /// `codec::flow_word`).
    pub async fn say(&self, client: &async_nats::Client, words: Words) {
        for (node, said) in words {
            if *node == *self.me {
                // Not through NATS: the node's connection to it does not hear itself.
                let words = said.len().div_ceil(FLOW_LINES) as u64;
                self.counters.told.fetch_add(words, Ordering::Relaxed);
                self.counters
                    .heard
                    .fetch_add(said.len() as u64, Ordering::Relaxed);
                self.own.apply(&node, said);
                continue;
            }
            for chunk in said.chunks(FLOW_LINES) {
                let word = codec::flow_word(&self.me, chunk);
                match client
                    .publish(subject(&self.prefix, &node), Bytes::from(word))
                    .await
                {
                    Ok(()) => {
                        self.counters.told.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => tracing::debug!(%node, "cluster flow control: not told: {e}"),
                }
            }
        }
    }
}

/// Say how far watched connections may go as this node's sessions drain, until aborted.
pub(crate) async fn watch(teller: Arc<Teller>, client: async_nats::Client) {
    let mut tick = tokio::time::interval(LOOK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        if !teller.any.load(Ordering::Acquire) {
            // `routed` leaves a permit when it starts a watch before this waits.
            teller.wake.notified().await;
        }
        tick.tick().await;
        let words = teller.look();
        if !words.is_empty() {
            teller.say(&client, words).await;
        }
    }
}

/// Hear how far this node's connections may go, until aborted.
pub(crate) async fn listen(
    client: async_nats::Client,
    subject: String,
    holds: Arc<Holds>,
    counters: Arc<FlowCounters>,
) {
    loop {
        let mut sub = match client.subscribe(subject.clone()).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(
                    subject,
                    "cluster flow control: cannot subscribe (trying again): {e}"
                );
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let mut tick = tokio::time::interval(HOLD_AT_MOST);
        loop {
            tokio::select! {
                m = sub.next() => {
                    let Some(m) = m else { break };
                    match codec::parse_flow_word(&m.payload) {
                        Some((node, said)) => {
                            counters.heard.fetch_add(said.len() as u64, Ordering::Relaxed);
                            holds.apply(node, said);
                        }
                        None => tracing::debug!(subject, "cluster flow control: a word not understood"),
                    }
                }
                _ = tick.tick() => holds.prune(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RUN: u64 = 77;

    fn sent(conn_id: u64, count: u64) -> Sent {
        Sent { conn_id, count }
    }

    #[test]
    fn a_connection_goes_as_far_as_the_lowest_number_it_was_given_while_that_lasts() {
        let holds = Holds::new(RUN, Arc::default());
        assert!(!holds.holds_back(sent(1, 1_000_000)), "nothing said: free");
        holds.apply("b", [(RUN, 1, Some(100)), (RUN, 2, Some(50))]);
        assert!(!holds.holds_back(sent(1, 99)));
        assert!(holds.holds_back(sent(1, 100)), "at its number");
        assert!(holds.holds_back(sent(2, 60)));
        assert!(!holds.holds_back(sent(3, 60)), "only the connections named");
        holds.apply("c", [(RUN, 1, Some(80))]);
        assert!(holds.holds_back(sent(1, 90)), "the lowest of two nodes");
        holds.apply("c", [(RUN, 1, None)]);
        assert!(!holds.holds_back(sent(1, 90)), "c let it go; b's 100 stays");
        holds.apply("b", [(RUN, 1, Some(200))]);
        assert!(!holds.holds_back(sent(1, 150)), "a higher number lets it on");
        // A number not said again is forgotten after HOLD_AT_MOST.
        for of in holds.limits.write().expect("lock").values_mut() {
            for l in of {
                l.until = Instant::now();
            }
        }
        assert!(!holds.holds_back(sent(2, 60)), "over after HOLD_AT_MOST");
        holds.prune();
        assert!(!holds.any.load(Ordering::Acquire), "forgotten");
    }

    /// A connection asks `holds_back` only from the count `holds_from` gave while the epoch
    /// stays: every change of the numbers raises it, and the answer agrees with `holds_back`.
    #[test]
    fn holds_from_names_the_count_holds_back_starts_at_and_each_change_raises_the_epoch() {
        let holds = Holds::new(RUN, Arc::default());
        assert_eq!(holds.holds_from(1), u64::MAX, "nothing said: never");
        let e0 = holds.epoch();
        holds.apply("b", [(RUN, 1, Some(100))]);
        let e1 = holds.epoch();
        assert_ne!(e0, e1);
        assert_eq!(holds.holds_from(1), 100);
        assert!(!holds.holds_back(sent(1, 99)) && holds.holds_back(sent(1, 100)));
        assert_eq!(holds.holds_from(2), u64::MAX, "another connection");
        holds.apply("c", [(RUN, 1, Some(80))]);
        assert_ne!(holds.epoch(), e1, "a lower number from another node");
        assert_eq!(holds.holds_from(1), 80, "the lowest");
        let e2 = holds.epoch();
        for of in holds.limits.write().expect("lock").values_mut() {
            for l in of {
                l.until = Instant::now();
            }
        }
        assert_eq!(holds.holds_from(1), u64::MAX, "over after HOLD_AT_MOST");
        holds.prune();
        assert_ne!(holds.epoch(), e2, "forgetting is a change too");
    }

    #[test]
    fn a_word_for_a_connection_of_an_earlier_run_of_the_node_holds_nothing_back() {
        // Connection ids start again at 1 when a node restarts: a number said for the
        // connection 5 of its previous run must not hold its new connection 5 back.
        let holds = Holds::new(RUN, Arc::default());
        holds.apply("b", [(RUN + 1, 5, Some(0))]);
        assert!(!holds.holds_back(sent(5, 1)));
        assert!(!holds.any.load(Ordering::Acquire));
    }

    #[test]
    fn held_connections_and_the_nodes_holding_one_stay_bounded() {
        let holds = Holds::new(RUN, Arc::default());
        holds.apply("b", (0..MAX_KEPT as u64 + 10).map(|c| (RUN, c, Some(1))));
        assert_eq!(holds.limits.read().expect("lock").len(), MAX_KEPT);
        assert!(holds.holds_back(sent(0, 1)) && !holds.holds_back(sent(MAX_KEPT as u64 + 5, 1)));
        for i in 0..2 * MAX_NODES {
            holds.apply(&format!("n{i}"), [(RUN, 0, Some(5))]);
        }
        assert_eq!(holds.limits.read().expect("lock")[&0].len(), MAX_NODES);
    }
}
