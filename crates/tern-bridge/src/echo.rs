//! 3.1.1 remotes have no No Local: a bridge whose `in` and `out` rules overlap gets what it
//! sent back from the remote. [`Echoes`] remembers what went out on topics an `in` rule takes
//! (a hash of topic and payload, a bounded number of them) and drops one matching incoming
//! message per entry, so that local subscribers do not get each message twice.
//!
//! An identical message that another client of the remote publishes while an entry waits is
//! taken for the echo: the local subscribers still get that topic and payload once per
//! message published, so what they see is the same. An entry whose echo never comes (the
//! remote does not send it back) is evicted by newer ones.

use std::collections::VecDeque;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Mutex, PoisonError};

/// Entries kept at most.
const CAPACITY: usize = 4096;

#[derive(Debug, Default)]
pub(crate) struct Echoes {
    sent: Mutex<VecDeque<u64>>,
}

fn key(topic: &str, payload: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    topic.hash(&mut h);
    payload.hash(&mut h);
    h.finish()
}

impl Echoes {
    /// `payload` goes out on the remote `topic`, which an `in` rule takes back.
    pub(crate) fn sent(&self, topic: &str, payload: &[u8]) {
        let mut sent = self.sent.lock().unwrap_or_else(PoisonError::into_inner);
        if sent.len() == CAPACITY {
            sent.pop_front();
        }
        sent.push_back(key(topic, payload));
    }

    /// Whether the incoming message is the echo of one sent (and forget that one).
    pub(crate) fn is_echo(&self, topic: &str, payload: &[u8]) -> bool {
        let k = key(topic, payload);
        let mut sent = self.sent.lock().unwrap_or_else(PoisonError::into_inner);
        match sent.iter().position(|&s| s == k) {
            Some(i) => {
                sent.remove(i);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_sent_message_cancels_one_echo() {
        let e = Echoes::default();
        e.sent("a/b", b"x");
        e.sent("a/b", b"x");
        assert!(!e.is_echo("a/b", b"y"));
        assert!(!e.is_echo("a/c", b"x"));
        assert!(e.is_echo("a/b", b"x"));
        assert!(e.is_echo("a/b", b"x"));
        assert!(!e.is_echo("a/b", b"x"), "two sent, two echoes");
    }

    #[test]
    fn the_oldest_entries_go_first() {
        let e = Echoes::default();
        for i in 0..=CAPACITY {
            e.sent("t", i.to_string().as_bytes());
        }
        assert!(!e.is_echo("t", b"0"));
        assert!(e.is_echo("t", CAPACITY.to_string().as_bytes()));
    }
}
