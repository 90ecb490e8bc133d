//! Topics seen recently: the topics clients published on, with when each was last seen and a
//! sample of its traffic (QoS, size, the start of a payload), for the admin API's topic tree.
//! Bounded by `recent_topics` entries (the least recently seen go first), and off, costing
//! nothing, when that is 0 or the broker has no HTTP endpoint.
//!
//! Per message the publishing connection hashes the topic and looks the hash up in a small
//! direct-mapped table of its thread ([`SLOTS`] hashes): a hit, the common case, costs nothing
//! more. A miss asks the thread's exact set of topics reported in this period
//! ([`PERIOD_SECS`]); a topic new to it is kept aside (an `Arc` of the message, at most
//! [`MAX_PENDING`] per read) and added to the shared map once per read, under one lock, like
//! the per-thread message counters. The period is read once per read, not per message. So a
//! topic's `last_seen` is exact to a period, and the map's lock is taken at most once per read
//! and only when there is news. A thread reports at most [`MAX_PER_PERIOD`] topics a period.

use std::cell::RefCell;
use std::hash::{BuildHasher, Hasher};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use rustc_hash::FxHashMap;

use crate::message::Message;

/// A topic reported by a thread is not reported again for this long.
pub const PERIOD_SECS: u64 = 8;
/// Hashes in each thread's table in front of its set (a power of two).
const SLOTS: usize = 4096;
/// Topics one thread reports at most in a period.
pub const MAX_PER_PERIOD: usize = 16_384;
/// New topics one read may report; beyond them the rest waits for a later read.
const MAX_PENDING: usize = 64;
/// Bytes of payload kept as a sample.
pub const PREVIEW_BYTES: usize = 256;

/// One topic seen recently.
#[derive(Debug, Clone)]
pub struct SeenTopic {
    /// The topic name.
    pub topic: Arc<str>,
    /// When it was last seen (to `PERIOD_SECS`).
    pub last_seen: SystemTime,
    /// The sample's QoS (0, 1, 2).
    pub qos: u8,
    /// Whether the sample was published with RETAIN.
    pub retain: bool,
    /// The sample's payload size in bytes.
    pub payload_size: usize,
    /// Its first `PREVIEW_BYTES` bytes.
    pub preview: bytes::Bytes,
}

/// The broker's record of topics seen recently.
#[derive(Debug)]
pub(crate) struct RecentTopics {
    max: usize,
    started: Instant,
    /// Makes this broker's hashes its own (two brokers in one process share the threads).
    seed: u64,
    map: Mutex<FxHashMap<Arc<str>, SeenTopic>>,
}

struct Local {
    /// Hashes seen lately (a filter in front of `reported`; 0: empty).
    slots: Box<[u64; SLOTS]>,
    /// Hashes of the topics this thread reported in `period`.
    reported: rustc_hash::FxHashSet<u64>,
    period: u64,
    pending: Vec<Arc<Message>>,
    /// The broker `slots`, `reported` and `pending` are for (its seed).
    owner: u64,
}

impl Local {
    /// Forget what was reported: a new period, or another broker (a process may run several).
    fn reset(&mut self, owner: u64, period: u64) {
        if self.owner != owner {
            self.pending.clear();
        }
        self.slots.fill(0);
        self.reported.clear();
        if self.reported.capacity() > 4 * MAX_PENDING {
            self.reported.shrink_to(MAX_PENDING);
        }
        (self.owner, self.period) = (owner, period);
    }
}

thread_local! {
    static LOCAL: RefCell<Local> = RefCell::new(Local {
        slots: Box::new([0; SLOTS]),
        reported: rustc_hash::FxHashSet::default(),
        period: 0,
        pending: Vec::new(),
        owner: 0,
    });
}

impl RecentTopics {
    /// A record of at most `max` topics (`max` > 0).
    pub fn new(max: usize, seed: u64) -> RecentTopics {
        RecentTopics {
            max,
            started: Instant::now(),
            seed: seed | 1,
            map: Mutex::default(),
        }
    }

    /// A client published `msg`: note its topic if this thread has not in this period.
    #[inline]
    pub fn note(&self, msg: &Arc<Message>) {
        let mut h = rustc_hash::FxBuildHasher.build_hasher();
        h.write(msg.topic.as_bytes());
        h.write_u64(self.seed);
        let hash = h.finish() | 1;
        LOCAL.with(|l| {
            let mut l = l.borrow_mut();
            let slot = hash as usize & (SLOTS - 1);
            if l.slots[slot] != hash {
                self.note_new(&mut l, slot, hash, msg);
            }
        });
    }

    /// Not in the thread's table: report it unless the thread's set has it.
    #[cold]
    #[inline(never)]
    fn note_new(&self, l: &mut Local, slot: usize, hash: u64, msg: &Arc<Message>) {
        if l.owner != self.seed {
            l.reset(self.seed, self.period(Instant::now()));
        }
        if l.pending.len() >= MAX_PENDING || l.reported.len() >= MAX_PER_PERIOD {
            // A later read (or period) reports it.
            return;
        }
        l.slots[slot] = hash;
        if l.reported.insert(hash) {
            l.pending.push(msg.clone());
        }
    }

    fn period(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.started).as_secs() / PERIOD_SECS
    }

    /// Add this thread's news to the map, and start a new period when one began (once per
    /// read of a connection that received PUBLISH packets).
    #[inline]
    pub fn flush(&self) {
        let period = self.period(Instant::now());
        let pending = LOCAL.with(|l| {
            let mut l = l.borrow_mut();
            if l.owner != self.seed {
                return None;
            }
            let pending = (!l.pending.is_empty()).then(|| std::mem::take(&mut l.pending));
            if l.period != period {
                l.reset(self.seed, period);
            }
            pending
        });
        if let Some(mut pending) = pending {
            self.add(&pending);
            pending.clear();
            // Give the (small) vector back for the next read.
            LOCAL.with(|l| {
                let mut l = l.borrow_mut();
                if l.pending.is_empty() && l.owner == self.seed && pending.capacity() <= MAX_PENDING {
                    l.pending = pending;
                }
            });
        }
    }

    fn add(&self, messages: &[Arc<Message>]) {
        let now = SystemTime::now();
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        for m in messages {
            let sample = |topic: Arc<str>| SeenTopic {
                topic,
                last_seen: now,
                qos: m.qos as u8,
                retain: m.retain,
                payload_size: m.payload.len(),
                preview: bytes::Bytes::copy_from_slice(&m.payload[..m.payload.len().min(PREVIEW_BYTES)]),
            };
            match map.get_mut(&*m.topic) {
                Some(seen) => *seen = sample(seen.topic.clone()),
                None => {
                    let topic: Arc<str> = Arc::from(&*m.topic);
                    map.insert(topic.clone(), sample(topic));
                }
            }
        }
        if map.len() > self.max {
            // Forget the least recently seen tenth at once (amortized: a few steps per insert).
            let keep = self.max - self.max / 10;
            let mut ages: Vec<SystemTime> = map.values().map(|s| s.last_seen).collect();
            let cut = ages.len() - keep;
            let (_, nth, _) = ages.select_nth_unstable(cut);
            let cutoff = *nth;
            map.retain(|_, s| s.last_seen > cutoff);
            // Equal times at the cut: drop arbitrary ones until within bounds.
            while map.len() > keep {
                let Some(k) = map.keys().next().cloned() else {
                    break;
                };
                map.remove(&k);
            }
        }
    }

    /// The topics seen matching `filter` (a valid filter), most recent first, and the age
    /// limit: entries older than `within` are left out.
    pub fn matching(&self, filter: &str, within: Duration) -> Vec<SeenTopic> {
        let now = SystemTime::now();
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<SeenTopic> = map
            .values()
            .filter(|s| now.duration_since(s.last_seen).unwrap_or_default() <= within)
            .filter(|s| tern_proto::topic::matches(&s.topic, filter))
            .cloned()
            .collect();
        drop(map);
        out.sort_by(|a, b| a.topic.cmp(&b.topic));
        out
    }

    /// Topics held now.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.map.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(topic: &str) -> Arc<Message> {
        Arc::new(Message::new(
            topic.to_string(),
            bytes::Bytes::from_static(b"hello"),
            tern_proto::QoS::AtLeastOnce,
            false,
        ))
    }

    #[test]
    fn noted_once_per_period_and_bounded() {
        let r = RecentTopics::new(1000, 7);
        for i in 0..50 {
            r.note(&msg(&format!("a/{i}")));
            r.note(&msg(&format!("a/{i}")));
        }
        r.flush();
        assert_eq!(r.len(), 50);
        let seen = r.matching("a/#", Duration::from_secs(60));
        assert_eq!(seen.len(), 50);
        assert_eq!(&*seen[0].topic, "a/0");
        assert_eq!(&seen[0].preview[..], b"hello");
        assert!(r.matching("b/#", Duration::from_secs(60)).is_empty());
        // Beyond MAX_PENDING in one read: the rest is reported by later reads.
        let b = |r: &RecentTopics| {
            for i in 0..200 {
                r.note(&msg(&format!("b/{i}")));
            }
            r.flush();
        };
        b(&r);
        assert_eq!(r.matching("b/#", Duration::from_secs(60)).len(), MAX_PENDING);
        for _ in 0..3 {
            b(&r);
        }
        assert_eq!(r.matching("b/#", Duration::from_secs(60)).len(), 200);
        // Another period: reported again.
        let before = r.matching("a/0", Duration::from_secs(60))[0].last_seen;
        LOCAL.with(|l| l.borrow_mut().period = u64::MAX);
        r.flush();
        r.note(&msg("a/0"));
        r.flush();
        assert!(r.matching("a/0", Duration::from_secs(60))[0].last_seen > before);
    }

    #[test]
    fn the_least_recently_seen_go_first() {
        let r = RecentTopics::new(100, 9);
        for round in 0..4 {
            for i in 0..40 {
                r.note(&msg(&format!("r{round}/{i}")));
            }
            r.flush();
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(r.len() <= 100, "{}", r.len());
        assert_eq!(r.matching("r3/#", Duration::from_secs(60)).len(), 40);
        assert!(r.matching("r0/#", Duration::from_secs(60)).is_empty());
    }
}
