//! SUBSCRIBE / UNSUBSCRIBE waiting for their answer, and the subscriptions the
//! server granted (re-established when a reconnect finds no session).
//!
//! ### Invariants
//! - At most `limit` requests from the application wait at once (internal
//!   re-subscriptions come on top, bounded by the number of subscriptions).
//! - Each request holds its packet identifier until answered or abandoned.

use std::collections::{BTreeMap, VecDeque};

use bytestring::ByteString;

use super::event::Token;
use crate::{PacketId, Subscribe, SubscriptionOptions, Unsubscribe};

/// The packet of a request.
#[derive(Debug, Clone)]
pub(crate) enum RequestKind {
    Subscribe(Subscribe),
    Unsubscribe(Unsubscribe),
}

/// A request and whether it went out on the current connection.
#[derive(Debug, Clone)]
pub(crate) struct Request {
    /// `None` for an internal re-subscription.
    pub token: Option<Token>,
    pub kind: RequestKind,
    pub sent: bool,
}

/// Requests in the order they were made.
#[derive(Debug, Clone)]
pub(crate) struct Requests {
    queue: VecDeque<Request>,
    limit: usize,
}

impl Requests {
    pub(crate) fn new(limit: usize) -> Requests {
        Requests {
            queue: VecDeque::new(),
            limit: limit.max(1),
        }
    }

    pub(crate) fn has_room(&self) -> bool {
        self.queue.iter().filter(|r| r.token.is_some()).count() < self.limit
    }

    pub(crate) fn push(&mut self, r: Request) {
        self.queue.push_back(r);
    }

    pub(crate) fn push_front(&mut self, r: Request) {
        self.queue.push_front(r);
    }

    /// Requests not yet sent on this connection, marked as sent.
    pub(crate) fn take_unsent(&mut self) -> Vec<RequestKind> {
        self.queue
            .iter_mut()
            .filter(|r| !r.sent)
            .map(|r| {
                r.sent = true;
                r.kind.clone()
            })
            .collect()
    }

    /// The connection closed: everything goes out again on the next one.
    pub(crate) fn mark_unsent(&mut self) {
        for r in &mut self.queue {
            r.sent = false;
        }
    }

    /// Remove the sent SUBSCRIBE with this identifier.
    pub(crate) fn take_subscribe(&mut self, id: PacketId) -> Option<(Option<Token>, Subscribe)> {
        let i = self
            .queue
            .iter()
            .position(|r| r.sent && matches!(&r.kind, RequestKind::Subscribe(s) if s.packet_id == id))?;
        match self.queue.remove(i) {
            Some(Request {
                token,
                kind: RequestKind::Subscribe(s),
                ..
            }) => Some((token, s)),
            _ => None,
        }
    }

    /// Remove the sent UNSUBSCRIBE with this identifier.
    pub(crate) fn take_unsubscribe(&mut self, id: PacketId) -> Option<(Option<Token>, Unsubscribe)> {
        let i = self
            .queue
            .iter()
            .position(|r| r.sent && matches!(&r.kind, RequestKind::Unsubscribe(u) if u.packet_id == id))?;
        match self.queue.remove(i) {
            Some(Request {
                token,
                kind: RequestKind::Unsubscribe(u),
                ..
            }) => Some((token, u)),
            _ => None,
        }
    }

    /// Remove everything.
    pub(crate) fn drain(&mut self) -> Vec<Request> {
        self.queue.drain(..).collect()
    }
}

/// A granted subscription: its options and Subscription Identifier.
pub(crate) type Granted = (SubscriptionOptions, Option<u32>);

/// Filters with their options.
pub(crate) type FilterList = Vec<(ByteString, SubscriptionOptions)>;

/// The subscriptions the server granted, by filter (ordered, so that
/// re-subscription is deterministic).
#[derive(Debug, Clone, Default)]
pub(crate) struct Subscriptions {
    map: BTreeMap<ByteString, Granted>,
}

impl Subscriptions {
    pub(crate) fn granted(&mut self, filter: ByteString, g: Granted) {
        self.map.insert(filter, g);
    }

    pub(crate) fn removed(&mut self, filter: &ByteString) {
        self.map.remove(filter);
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// SUBSCRIBE contents that re-establish everything: one group per
    /// Subscription Identifier, at most `chunk` filters each.
    pub(crate) fn groups(&self, chunk: usize) -> Vec<(Option<u32>, FilterList)> {
        let mut by_id: BTreeMap<Option<u32>, FilterList> = BTreeMap::new();
        for (filter, (opts, id)) in &self.map {
            by_id.entry(*id).or_default().push((filter.clone(), *opts));
        }
        let mut out = Vec::new();
        for (id, filters) in by_id {
            for c in filters.chunks(chunk.max(1)) {
                out.push((id, c.to_vec()));
            }
        }
        out
    }
}
