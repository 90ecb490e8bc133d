//! Retained messages in memory up to `retained_cache_bytes`, the rest on disk only.
//!
//! The index ([`crate::retained::RetainedStore`]) keeps an entry per retained topic: its QoS,
//! size, expiry and a version, and the message itself while it is *resident*. With a store
//! that [reads back](crate::Durability::reads_back), resident payloads are bounded: once they
//! pass the budget, the oldest resident messages whose put is durable leave memory (their entry
//! stays, under its topic), and whoever needs one later (a SUBSCRIBE's stream, the admin API) reads it
//! from the store. Without such a store every message stays resident, as before.
//!
//! A version, not the `Arc`, tells whether a retained message is still the current one: a
//! SUBSCRIBE's stream may have taken an entry that has left memory since, and skips the
//! entries retained after it began (they reached the subscriber as live messages).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use tern_proto::{ByteString, QoS};

use crate::message::Message;
use crate::retained::RetainedStore;

/// What a resident retained message costs in memory, as the budget counts it: the message
/// (its struct, with the `Arc`'s counts), its topic and its payload. For small payloads the
/// struct is most of it.
pub(crate) fn resident_cost(topic: usize, payload: usize) -> usize {
    std::mem::size_of::<Message>() + 16 + topic + payload
}

/// A retained message as the index holds it (its topic is the index's key).
#[derive(Debug, Clone)]
pub(crate) struct Retained {
    /// Unique per retained message (a new message on the same topic gets a new version).
    pub version: u64,
    /// Payload bytes.
    pub size: u32,
    pub qos: QoS,
    pub expires_at: Option<Instant>,
    /// The message while resident; `None` while only the store has it.
    pub msg: Option<Arc<Message>>,
}

impl Retained {
    /// A resident entry for `msg`.
    pub fn resident(msg: Arc<Message>, version: u64) -> Retained {
        Retained {
            version,
            qos: msg.qos,
            size: u32::try_from(msg.payload.len()).unwrap_or(u32::MAX),
            expires_at: msg.expires_at,
            msg: Some(msg),
        }
    }

    /// An entry whose message only the store holds.
    pub fn on_disk(d: &crate::durability::RetainedOnDisk, version: u64) -> Retained {
        Retained {
            version,
            qos: d.qos,
            size: u32::try_from(d.size).unwrap_or(u32::MAX),
            expires_at: d.expires_at,
            msg: None,
        }
    }

    /// What it costs in memory while resident on `topic` (see [`resident_cost`]).
    pub fn cost(&self, topic: &str) -> usize {
        resident_cost(topic.len(), self.size as usize)
    }

    /// Whether its Message Expiry Interval has run out ([MQTT-3.3.2-5]).
    pub fn is_expired(&self, now: Instant) -> bool {
        self.expires_at.is_some_and(|t| now >= t)
    }
}

/// The retained index and what of it is resident.
#[derive(Debug, Default)]
pub(crate) struct RetainedIndex {
    pub store: RetainedStore<Retained>,
    /// Resident entries that may leave memory, oldest first: (topic, version, store ticket
    /// of its put). Entries replaced since stay until they reach the front or a compaction.
    order: VecDeque<(ByteString, u64, u64)>,
    /// Memory of the resident messages ([`resident_cost`]).
    resident: usize,
    next_version: u64,
}

impl RetainedIndex {
    /// A new version number.
    pub fn version(&mut self) -> u64 {
        self.next_version += 1;
        self.next_version
    }

    /// The last version given: every entry in the index has this one or an older one.
    pub fn last_version(&self) -> u64 {
        self.next_version
    }

    /// Memory of the resident messages ([`resident_cost`]).
    pub fn resident_bytes(&self) -> usize {
        self.resident
    }

    /// Put `entry` for `topic`; `ticket` is the store ticket of its put (`None`: not kept
    /// in the store, never leaves memory). Returns the entry it replaces.
    pub fn insert(&mut self, topic: &str, entry: Retained, ticket: Option<u64>) -> Option<Retained> {
        if let Some(m) = &entry.msg {
            self.resident += entry.cost(topic);
            if let Some(t) = ticket {
                self.order.push_back((m.topic.clone(), entry.version, t));
            }
        }
        let old = self.store.insert(topic, entry);
        self.forget(topic, old.as_ref());
        self.compact();
        old
    }

    /// Put back the entries read at start (their messages are durable), into an empty index.
    pub fn restore(&mut self, entries: Vec<(Box<str>, Retained)>) {
        for (topic, e) in &entries {
            if let Some(m) = &e.msg {
                self.resident += e.cost(topic);
                // Durable already: ticket 0.
                self.order.push_back((m.topic.clone(), e.version, 0));
            }
        }
        self.store.extend(entries);
    }

    /// Remove the entry of `topic`.
    pub fn remove(&mut self, topic: &str) -> Option<Retained> {
        let old = self.store.remove(topic);
        self.forget(topic, old.as_ref());
        old
    }

    fn forget(&mut self, topic: &str, old: Option<&Retained>) {
        if let Some(old) = old.filter(|o| o.msg.is_some()) {
            self.resident = self.resident.saturating_sub(old.cost(topic));
        }
    }

    /// Drop entries of `order` that no longer stand for a resident entry, once they are
    /// many (a topic retained again and again while under the budget).
    fn compact(&mut self) {
        if self.order.len() <= 2 * self.store.len() + 1024 {
            return;
        }
        let store = &self.store;
        self.order.retain(|(topic, version, _)| {
            store
                .get(topic)
                .is_some_and(|e| e.version == *version && e.msg.is_some())
        });
    }

    /// Let the oldest resident messages whose put is durable (ticket at most `durable`) leave
    /// memory until at most `budget` bytes are resident.
    pub fn evict(&mut self, budget: usize, durable: u64) {
        while self.resident > budget {
            match self.order.front() {
                Some((_, _, ticket)) if *ticket <= durable => {}
                // The oldest is not durable yet: a later call goes on.
                _ => return,
            }
            let Some((topic, version, _)) = self.order.pop_front() else {
                return;
            };
            if let Some(e) = self.store.get_mut(&topic) {
                if e.version == version && e.msg.take().is_some() {
                    self.resident = self.resident.saturating_sub(e.cost(&topic));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(topic: &str, size: usize) -> Arc<Message> {
        Arc::new(Message::new(
            topic.to_string(),
            vec![7u8; size],
            QoS::AtLeastOnce,
            true,
        ))
    }

    #[test]
    fn the_oldest_durable_messages_leave_memory_past_the_budget() {
        let mut ix = RetainedIndex::default();
        let c = resident_cost(3, 100);
        for i in 0..10 {
            let v = ix.version();
            let t = format!("t/{i}");
            ix.insert(&t, Retained::resident(msg(&t, 100), v), Some(i));
        }
        assert_eq!(ix.resident_bytes(), 10 * c);
        // Only what is durable may go: puts 0..=3.
        ix.evict(5 * c, 3);
        assert_eq!(ix.resident_bytes(), 6 * c);
        assert!(ix.store.get("t/0").unwrap().msg.is_none());
        assert!(ix.store.get("t/4").unwrap().msg.is_some());
        ix.evict(5 * c, 100);
        assert_eq!(ix.resident_bytes(), 5 * c);
        // A replaced entry's cost is forgotten; its stale place in the order is skipped.
        let v = ix.version();
        ix.insert("t/9", Retained::resident(msg("t/9", 50), v), Some(11));
        assert_eq!(ix.resident_bytes(), 4 * c + resident_cost(3, 50));
        ix.remove("t/8");
        assert_eq!(ix.resident_bytes(), 3 * c + resident_cost(3, 50));
        ix.evict(0, 100);
        assert_eq!(ix.resident_bytes(), 0);
        // Never durable (no ticket): stays.
        let v = ix.version();
        ix.insert("$SYS/x", Retained::resident(msg("$SYS/x", 10), v), None);
        ix.evict(0, u64::MAX);
        assert_eq!(ix.resident_bytes(), resident_cost(6, 10));
    }

    #[test]
    fn the_order_stays_bounded_when_one_topic_is_retained_again_and_again() {
        let mut ix = RetainedIndex::default();
        for i in 0..100_000 {
            let v = ix.version();
            ix.insert("same", Retained::resident(msg("same", 1), v), Some(i));
        }
        assert!(ix.order.len() <= 2 * ix.store.len() + 1025, "{}", ix.order.len());
    }
}
