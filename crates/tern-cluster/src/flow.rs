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
//! - Every QoS 0 message a client publishes carries its connection's id on its node and how
//!   many QoS 0 messages that connection has published with it (`codec::SENT`,
//!   [`Sent`]).
//! - A node whose sessions a publisher's messages take to half their queue limits watches
//!   that publisher's connection ([`Teller`]): the last number it has seen, and the sessions
//!   it pressed. It tells the publisher's node, on core NATS (`<prefix>.ctl.flow.<node>`),
//!   how far the connection may go: the number seen plus the room the fullest of those
//!   sessions has left before it drops messages ([`PressedSession::room`]). The messages
//!   on their way are inside that count, so a word that comes late lets nothing more
//!   through than there is room for. As the sessions drain it says a higher number (looked
//!   at every [`LOOK_EVERY`], said at least every [`KEEP_TELLING`]).
//! - The publisher's node stops reading a connection whose count has reached the lowest
//!   number another node gave it ([`Holds::holds_back`],
//!   `Backplane::holds_back`), as it does for a full local queue; the connection looks again
//!   every 2 ms.
//! - The watch ends, and the node says so (`free`), once the sessions need no one to wait
//!   (they ended, their clients are away, or taken for stalled after
//!   `backpressure_timeout_ms`, whose messages are then dropped, as on one broker), or once
//!   the publisher has sent nothing for [`IDLE`] with the sessions at half their limits. A
//!   number not said again for [`HOLD_AT_MOST`] is forgotten (a node gone, a word lost).
//!
//! Nothing is stored and nothing waits for an answer: a word lost is a publisher held a
//! little longer, or not at all (its messages beyond the limits dropped, as QoS 0 allows).
//! The first messages of a burst go before any word can come back (at most one round trip
//! of them, which the sessions' slack up to twice their limits takes). Shared
//! subscriptions, whose messages another path delivers, are not watched.
//!
//! [`PressedSession::room`]: tern_broker::PressedSession::room

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use futures_util::StreamExt;
use tern_broker::backplane::Sent;
use tern_broker::PressedSession;

use crate::codec;

/// Longest a number is kept after the last word that said it.
pub const HOLD_AT_MOST: Duration = Duration::from_millis(500);

/// A watched connection's number is said again at least this often (well within
/// [`HOLD_AT_MOST`]).
pub const KEEP_TELLING: Duration = Duration::from_millis(100);

/// How often a node looks at the room of the sessions it watches for.
pub const LOOK_EVERY: Duration = Duration::from_millis(2);

/// A watch ends when its publisher has sent nothing for this long and its sessions are at
/// half their limits (until then its next burst is held from its first message, not one
/// round trip late).
pub const IDLE: Duration = Duration::from_secs(10);

/// Connections held, and connections watched, at most (beyond, a new one is left out: its
/// messages are dropped where there is no room, as without flow control).
const MAX_KEPT: usize = 4096;

/// Sessions one watch looks at, at most.
const MAX_SESSIONS: usize = 32;

/// Connections one word names at most.
const MAX_NAMED: usize = 512;

/// The subject on which `node` hears how far its connections may go.
pub fn subject(prefix: &str, node: &str) -> String {
    format!("{prefix}.ctl.flow.{node}")
}

/// Counters of the flow control.
#[derive(Debug, Default)]
pub struct FlowCounters {
    /// Words sent to other nodes (each naming one or more connections).
    pub told: AtomicU64,
    /// Numbers heard from other nodes (each connection named counted).
    pub heard: AtomicU64,
}

/// How far one connection may go, as one other node said.
#[derive(Debug)]
struct Limit {
    node: Box<str>,
    up_to: u64,
    until: Instant,
}

/// This node's QoS 0 connections and how far other nodes let them go.
#[derive(Debug, Default)]
pub(crate) struct Holds {
    limits: RwLock<HashMap<u64, Vec<Limit>>>,
    /// Whether `limits` has any (read on every QoS 0 publish).
    any: AtomicBool,
}

impl Holds {
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
        of.iter().any(|l| sent.count >= l.up_to && now < l.until)
    }

    /// What `node` said: per connection how far it may go, or `None`: as far as it likes.
    fn apply(&self, node: &str, said: impl IntoIterator<Item = (u64, Option<u64>)>) {
        let now = Instant::now();
        let mut limits = self.limits.write().unwrap_or_else(|e| e.into_inner());
        for (conn, up_to) in said {
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
                        limits.retain(|_, of| {
                            of.retain(|l| l.until > now);
                            !of.is_empty()
                        });
                        if limits.len() >= MAX_KEPT {
                            continue;
                        }
                    }
                    let of = limits.entry(conn).or_default();
                    let until = now + HOLD_AT_MOST;
                    match of.iter_mut().find(|l| &*l.node == node) {
                        Some(l) => {
                            l.up_to = up_to;
                            l.until = until;
                        }
                        None => of.push(Limit {
                            node: node.into(),
                            up_to,
                            until,
                        }),
                    }
                }
            }
        }
        self.any.store(!limits.is_empty(), Ordering::Release);
    }

    /// Forget the numbers not said again in time.
    fn prune(&self) {
        if !self.any.load(Ordering::Acquire) {
            return;
        }
        let now = Instant::now();
        let mut limits = self.limits.write().unwrap_or_else(|e| e.into_inner());
        limits.retain(|_, of| {
            of.retain(|l| l.until > now);
            !of.is_empty()
        });
        self.any.store(!limits.is_empty(), Ordering::Release);
    }
}

/// A connection of another node whose messages took sessions here to half their limits.
struct Watch {
    /// Those sessions.
    sessions: Vec<PressedSession>,
    /// The highest number of its messages seen here, and when.
    seen: u64,
    seen_at: Instant,
    /// The last number said, and when.
    said: Option<u64>,
    told: Instant,
}

/// The watched connections, by node and connection id there.
#[derive(Default)]
struct Watched {
    by_node: HashMap<Box<str>, HashMap<u64, Watch>>,
    /// How many there are.
    count: usize,
}

/// Per connection, how far it may go (`None`: as far as it likes).
type Said = Vec<(u64, Option<u64>)>;

/// What to say: per node, [`Said`].
type Words = HashMap<Box<str>, Said>;

/// The receiving side: how far the connections of other nodes may go, for the room of this
/// node's sessions.
pub(crate) struct Teller {
    prefix: String,
    /// This node's name.
    me: String,
    watched: Mutex<Watched>,
    /// Whether anything is watched (read for every batch of QoS 0 messages routed).
    any: AtomicBool,
    counters: Arc<FlowCounters>,
}

impl std::fmt::Debug for Teller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Teller")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// A node's name from a message's header: a subject token (as `cluster.node_name` allows).
fn valid_node(node: &str) -> bool {
    !node.is_empty()
        && node.len() <= 64
        && node
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl Teller {
    pub fn new(prefix: &str, me: &str, counters: Arc<FlowCounters>) -> Teller {
        Teller {
            prefix: prefix.to_string(),
            me: me.to_string(),
            watched: Mutex::default(),
            any: AtomicBool::new(false),
            counters,
        }
    }

    /// `batch` (core NATS, QoS 0) was routed, and `pressed` says which sessions it took to
    /// half their limits with which publisher's messages: watch those publishers'
    /// connections, and note how far the watched ones have come. Returns the first words
    /// for the new watches (to [`Teller::say`]).
    pub fn routed(&self, batch: &[async_nats::Message], pressed: &[(PressedSession, Arc<str>)]) -> Words {
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
        let mut fresh: Vec<(Box<str>, u64)> = Vec::new();
        let mut guard = self.watched.lock().unwrap_or_else(|e| e.into_inner());
        let Watched { by_node, count } = &mut *guard;
        for m in batch {
            let Some(h) = m.headers.as_ref() else { continue };
            let (Some(node), Some(sent)) = (codec::node_of(Some(h)), codec::sent_of(h)) else {
                continue;
            };
            let publisher = || {
                codec::origin_of(h)
                    .and_then(|o| pressing.iter().find(|(b, _)| b == o))
                    .map(|(_, p)| *p)
            };
            let watched = by_node.get(node).is_some_and(|of| of.contains_key(&sent.conn_id));
            let publisher = match (watched, publisher()) {
                (true, p) => p,
                (false, None) => continue,
                (false, Some(p)) => {
                    if *count >= MAX_KEPT || node == self.me || !valid_node(node) {
                        continue;
                    }
                    *count += 1;
                    fresh.push((node.into(), sent.conn_id));
                    by_node.entry(node.into()).or_default().insert(
                        sent.conn_id,
                        Watch {
                            sessions: Vec::new(),
                            seen: 0,
                            seen_at: now,
                            said: None,
                            told: now,
                        },
                    );
                    Some(p)
                }
            };
            let Some(w) = by_node.get_mut(node).and_then(|of| of.get_mut(&sent.conn_id)) else {
                continue;
            };
            w.seen = w.seen.max(sent.count);
            w.seen_at = now;
            if let Some(p) = publisher {
                for (s, _) in pressed.iter().filter(|(_, q)| q == p) {
                    if w.sessions.len() < MAX_SESSIONS && !w.sessions.iter().any(|x| x.same(s)) {
                        w.sessions.push(s.clone());
                    }
                }
            }
        }
        // New watches say their first number at once.
        for (node, conn) in fresh {
            let Some(of) = by_node.get_mut(&node) else {
                continue;
            };
            let Some(w) = of.get_mut(&conn) else { continue };
            let up_to = Self::up_to(w);
            w.said = up_to;
            w.told = now;
            if up_to.is_none() {
                of.remove(&conn);
                *count -= 1;
                if of.is_empty() {
                    by_node.remove(&node);
                }
            }
            words.entry(node).or_default().push((conn, up_to));
        }
        self.any.store(*count > 0, Ordering::Release);
        words
    }

    /// How far `w`'s connection may go now: what it has sent plus the least room of its
    /// sessions; `None` when none of them needs anyone to wait.
    fn up_to(w: &Watch) -> Option<u64> {
        let room = w.sessions.iter().filter_map(|s| s.room()).min()?;
        Some(w.seen.saturating_add(room as u64))
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
        let Watched { by_node, count } = &mut *guard;
        by_node.retain(|node, of| {
            of.retain(|conn, w| {
                let up_to = Self::up_to(w);
                let idle = now.saturating_duration_since(w.seen_at) >= IDLE
                    && w.sessions.iter().all(|s| s.has_room());
                if up_to.is_none() || idle {
                    words.entry(node.clone()).or_default().push((*conn, None));
                    *count -= 1;
                    return false;
                }
                if up_to != w.said || now.saturating_duration_since(w.told) >= KEEP_TELLING {
                    words.entry(node.clone()).or_default().push((*conn, up_to));
                    w.said = up_to;
                    w.told = now;
                }
                true
            });
            !of.is_empty()
        });
        self.any.store(*count > 0, Ordering::Release);
        words
    }

    /// Send `words`, one NATS message per node (per [`MAX_NAMED`] connections): this
    /// node's name on the first line, then `conn up_to` or `conn -` (free) per line.
    pub async fn say(&self, client: &async_nats::Client, words: Words) {
        for (node, said) in words {
            for chunk in said.chunks(MAX_NAMED) {
                let mut word = self.me.clone();
                for (conn, up_to) in chunk {
                    let _ = match up_to {
                        Some(n) => write!(word, "\n{conn} {n}"),
                        None => write!(word, "\n{conn} -"),
                    };
                }
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
        tick.tick().await;
        let words = teller.look();
        if !words.is_empty() {
            teller.say(&client, words).await;
        }
    }
}

/// Parse a word: the node that said it and, per connection, how far it may go.
fn parse(word: &[u8]) -> Option<(&str, Said)> {
    let text = std::str::from_utf8(word).ok()?;
    let mut lines = text.lines();
    let node = lines.next().filter(|n| valid_node(n))?;
    let said = lines
        .take(MAX_NAMED)
        .filter_map(|l| {
            let (conn, up_to) = l.split_once(' ')?;
            let conn = conn.parse().ok()?;
            match up_to {
                "-" => Some((conn, None)),
                n => Some((conn, Some(n.parse().ok()?))),
            }
        })
        .collect();
    Some((node, said))
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
                    match parse(&m.payload) {
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

    fn sent(conn_id: u64, count: u64) -> Sent {
        Sent { conn_id, count }
    }

    #[test]
    fn a_connection_goes_as_far_as_the_lowest_number_it_was_given_while_that_lasts() {
        let holds = Holds::default();
        assert!(!holds.holds_back(sent(1, 1_000_000)), "nothing said: free");
        holds.apply("b", [(1, Some(100)), (2, Some(50))]);
        assert!(!holds.holds_back(sent(1, 99)));
        assert!(holds.holds_back(sent(1, 100)), "at its number");
        assert!(holds.holds_back(sent(2, 60)));
        assert!(!holds.holds_back(sent(3, 60)), "only the connections named");
        holds.apply("c", [(1, Some(80))]);
        assert!(holds.holds_back(sent(1, 90)), "the lowest of two nodes");
        holds.apply("c", [(1, None)]);
        assert!(!holds.holds_back(sent(1, 90)), "c let it go; b's 100 stays");
        holds.apply("b", [(1, Some(200))]);
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

    #[test]
    fn held_connections_stay_bounded() {
        let holds = Holds::default();
        holds.apply("b", (0..MAX_KEPT as u64 + 10).map(|c| (c, Some(1))));
        assert_eq!(holds.limits.read().expect("lock").len(), MAX_KEPT);
        assert!(holds.holds_back(sent(0, 1)) && !holds.holds_back(sent(MAX_KEPT as u64 + 5, 1)));
    }

    #[test]
    fn words_parse_and_bad_ones_are_refused() {
        let (node, said) = parse(b"tern-b\n7 120\n8 -\nbad line\n9 x").expect("a word");
        assert_eq!(node, "tern-b");
        assert_eq!(said, vec![(7, Some(120)), (8, None)]);
        assert!(parse(b"").is_none());
        assert!(parse(b"a.b\n1 2").is_none(), "not a node name");
        assert!(parse(&[0xff, 0xfe]).is_none());
        let many: String = std::iter::once("b".to_string())
            .chain((0..2 * MAX_NAMED).map(|i| format!("{i} 1")))
            .collect::<Vec<_>>()
            .join("\n");
        assert_eq!(parse(many.as_bytes()).expect("a word").1.len(), MAX_NAMED);
    }
}
