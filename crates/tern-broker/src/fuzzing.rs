//! For fuzzing only: thin wrappers that let the `fuzz/` targets drive the
//! crate-private subscription trie and retained index. Compiled with the
//! `fuzzing` cargo feature (off by default); not part of the API, and may change
//! at any time.

use std::collections::HashMap;
use std::sync::Arc;

use tern_proto::{ProtocolVersion, SubscriptionOptions};

use crate::router::{Match, SubEntry};
use crate::session::SessionCell;

/// The broker's subscription trie, with a dummy (never connected) session per client.
#[derive(Debug, Default)]
pub struct Router {
    inner: crate::router::Router,
    sessions: HashMap<String, Arc<SessionCell>>,
}

/// A subscription that matched a topic.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Matched {
    /// The subscribing client.
    pub client: String,
    /// For a shared subscription (the one member chosen from its group), its full
    /// `$share/{group}/{filter}`.
    pub shared: Option<String>,
    /// The tag given to [`Router::subscribe`].
    pub tag: u32,
}

impl Router {
    /// Add or replace `client`'s subscription to `filter` (in share `group`, if any), tagged
    /// with `tag`; `true` when it replaced one.
    pub fn subscribe(&mut self, filter: &str, group: Option<&str>, client: &str, tag: u32) -> bool {
        let session = self
            .sessions
            .entry(client.to_owned())
            .or_insert_with(|| Arc::new(SessionCell::new(client.into(), ProtocolVersion::V5, 100)))
            .clone();
        let entry = SubEntry {
            options: SubscriptionOptions::default(),
            id: Some(tag),
            shared: group.map(|g| format!("$share/{g}/{filter}").into()),
            session: session.clone(),
        };
        // The trie is full only at 2^32 nodes, which no fuzz input reaches.
        matches!(
            self.inner.subscribe(filter, group, &session.client_id, entry),
            Ok(true)
        )
    }

    /// Remove a subscription; `true` when it existed.
    pub fn unsubscribe(&mut self, filter: &str, group: Option<&str>, client: &str) -> bool {
        self.inner.unsubscribe(filter, group, &Arc::from(client))
    }

    /// Number of subscriptions.
    pub fn len(&self) -> usize {
        self.inner.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The subscriptions `topic` is routed to, in no particular order.
    pub fn matches(&self, topic: &str) -> Vec<Matched> {
        let mut out = Vec::new();
        self.inner.for_each_match(topic, |m| {
            let (Match::Normal(e) | Match::Shared(e)) = m;
            out.push(Matched {
                client: e.session.client_id.to_string(),
                shared: e.shared.as_deref().map(str::to_owned),
                tag: e.id.unwrap_or_default(),
            });
        });
        out
    }
}

/// The retained-message index, over any value type.
#[derive(Debug)]
pub struct Retained<V>(crate::retained::RetainedStore<V>);

impl<V> Default for Retained<V> {
    fn default() -> Self {
        Retained(crate::retained::RetainedStore::new())
    }
}

impl<V: Clone> Retained<V> {
    /// Retain `value` for `topic`; returns the value it replaces.
    pub fn insert(&mut self, topic: &str, value: V) -> Option<V> {
        self.0.insert(topic, value)
    }

    /// Forget the value retained for `topic`.
    pub fn remove(&mut self, topic: &str) -> Option<V> {
        self.0.remove(topic)
    }

    /// The value retained for exactly `topic`.
    pub fn get(&self, topic: &str) -> Option<&V> {
        self.0.get(topic)
    }

    /// Number of retained values.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The values whose topic matches `filter`, in no particular order.
    pub fn matching(&self, filter: &str) -> Vec<V> {
        self.0.matching(filter)
    }
}

/// Decode `data` as a handed-over session; when it decodes, encode it again and check that
/// the second encoding decodes to the same session.
pub fn handover_round_trip(data: &[u8]) {
    let stamp = crate::clock::Clock::system().stamp();
    let Ok(h) = crate::store::record::read_handover(data, stamp) else {
        return;
    };
    let again = crate::store::record::handover(&h, stamp);
    let back = match crate::store::record::read_handover(&again, stamp) {
        Ok(b) => b,
        Err(e) => panic!("a handover encoded here does not decode: {e}"),
    };
    assert_eq!(back.deliveries.len(), h.deliveries.len());
    assert_eq!(back.qos2, h.qos2);
    assert_eq!(back.snapshot.subscriptions, h.snapshot.subscriptions);
    for (a, b) in back.deliveries.iter().zip(&h.deliveries) {
        assert_eq!(a.seq, b.seq);
        assert_eq!(a.qos, b.qos);
        assert_eq!(a.message.topic, b.message.topic);
        assert_eq!(a.message.payload, b.message.payload);
    }
}
