//! The subscription trie: one node per filter level, with its literal children, its
//! `+` child and its `#` child kept apart; shared subscription groups; one walk per
//! published topic.
//!
//! ### Cost of a publish
//! A publish visits only the nodes whose filter prefix matches its topic. While they
//! form a single path (no `+` child on the way, the usual case) it just follows it;
//! from the first node with a `+` child on, it goes breadth first: at each level of
//! the topic it holds the list of nodes reached so far (kept per thread) and takes
//! from each the literal child for that level and the `+` child. `+` and `#`
//! children are fields, not keys of the children's map; a node's only literal child
//! (the usual case) is kept inline; names of up to 14 bytes are compared as one
//! 15-byte value prepared once per level. So a step reads one cache line, with no
//! hashing and no string comparison. Nodes live in one vector and refer to each other
//! by `u32` index, and a walk reads the memory of a batch of nodes in a tight loop
//! before handling them ([`Router::warm`]), so that their cache misses overlap
//! instead of following one another. The work is one step per matching node plus one
//! per matching subscription (an element of a contiguous list); collapsing a session's
//! overlapping subscriptions into one delivery is the caller's (`Core::collect`,
//! one probe per subscription). Many overlapping wildcard filters make both counts
//! large, which is why `max_wildcard_subscriptions_per_client` bounds them per client.
//!
//! ### Invariants
//! - A session appears at most once per (filter, share group), keyed by client
//!   identifier; a [`SubEntry`]'s `session.client_id` is the client it was
//!   subscribed under.
//! - Every node but the root has subscriptions or children: `unsubscribe` frees
//!   the nodes it leaves empty, and the node vector is rebuilt (compacted, in
//!   breadth-first order) once three quarters of it are free slots, so memory
//!   follows the live subscriptions.
//! - `nodes[0]` is the root, nobody's child; a free slot is in `free` and holds an
//!   empty node.
//! - Nothing recurses on the number of levels.

use std::borrow::Cow;
use std::cell::Cell;
use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tern_proto::SubscriptionOptions;

use crate::session::SessionCell;

/// Most literal children (or subscriptions) a node keeps in a plain list before it
/// indexes them with a hash map.
const FEW: usize = 8;

/// Below this many slots the node vector is never compacted.
const MIN_COMPACT: usize = 1024;

/// Nodes a walk handles together (see [`Router::warm`]): their memory fits the first-level cache.
const BATCH: usize = 32;

/// Largest frontier capacity (node indices) kept per thread between publishes.
const MAX_KEPT_FRONTIER: usize = 1 << 16;

thread_local! {
    /// The nodes reached at the current level of a walk and at the next one, kept per
    /// thread so that a publish allocates nothing.
    static FRONTIER: Cell<(Vec<u32>, Vec<u32>)> = const { Cell::new((Vec::new(), Vec::new())) };
}

/// One subscription of one session.
#[derive(Debug, Clone)]
pub(crate) struct SubEntry {
    pub options: SubscriptionOptions,
    pub id: Option<u32>,
    pub session: Arc<SessionCell>,
    /// For a shared subscription, its full filter (`$share/{group}/{filter}`).
    pub shared: Option<Arc<str>>,
}

/// The trie cannot take another node: it has 2^32 of them (hundreds of GiB).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the subscription trie is full (2^32 nodes)")]
pub(crate) struct TrieFull;

#[derive(Debug, Default)]
struct SharedGroup {
    members: Vec<(Arc<str>, SubEntry)>,
    next: AtomicUsize,
}

/// Index of a node in [`Router::nodes`]. The root (0) is nobody's child, so a child's
/// index is never 0.
type NodeId = NonZeroU32;

const ROOT: usize = 0;

fn node_id(index: usize) -> Option<NodeId> {
    u32::try_from(index).ok().and_then(NodeId::new)
}

fn at(id: NodeId) -> usize {
    id.get() as usize
}

/// Level names, client ids and group names are chosen by clients: the maps keep the
/// standard library's keyed hasher rather than a fast unkeyed one (no crafted collisions).
type Map<K, V> = HashMap<K, V>;

/// A literal level name as a child's key.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Key {
    /// Up to 14 bytes, zero-padded, the length in the last byte: compared as one
    /// value, with no read of other memory.
    Short([u8; 15]),
    /// Longer names, behind a thin pointer (a key is 16 bytes).
    #[allow(clippy::box_collection, reason = "a thin pointer keeps the key at 16 bytes")]
    Long(Box<Box<str>>),
}

impl Key {
    fn new(level: &str) -> Key {
        match short(level) {
            Some(b) => Key::Short(b),
            None => Key::Long(Box::new(level.into())),
        }
    }

    /// Whether this is the key of `probe`'s level.
    fn is(&self, probe: &Probe<'_>) -> bool {
        match (self, &probe.short) {
            (Key::Short(a), Some(b)) => a == b,
            (Key::Long(name), None) => ***name == *probe.name,
            _ => false,
        }
    }

    fn name(&self) -> Cow<'_, str> {
        match self {
            Key::Short(b) => String::from_utf8_lossy(&b[..usize::from(b[14])]),
            Key::Long(name) => Cow::Borrowed(name),
        }
    }
}

fn short(level: &str) -> Option<[u8; 15]> {
    let bytes = level.as_bytes();
    let len = u8::try_from(bytes.len()).ok().filter(|&n| n < 15)?;
    let mut b = [0; 15];
    b[..bytes.len()].copy_from_slice(bytes);
    b[14] = len;
    Some(b)
}

/// A topic level, prepared once for the lookups of a walk.
struct Probe<'t> {
    name: &'t str,
    short: Option<[u8; 15]>,
}

impl<'t> Probe<'t> {
    fn new(name: &'t str) -> Probe<'t> {
        Probe {
            name,
            short: short(name),
        }
    }
}

/// One level of some filters: one cache line (see `node_sizes`), aligned to one. What a
/// walk reads of a node it passes through (`children`, `plus`, `hash`) and of a node
/// where filters end (`subs`) is in that line; what few nodes need is behind `extra`.
#[derive(Debug, Default)]
#[repr(align(64))]
struct Node {
    /// Children for literal levels.
    children: Children,
    /// The child for a `+` level.
    plus: Option<NodeId>,
    /// The child for a `#` level (it has subscriptions only: nothing follows `#`).
    hash: Option<NodeId>,
    /// Ordinary subscriptions to the filter that ends here: a contiguous list, walked
    /// whole by a publish.
    subs: Vec<SubEntry>,
    /// Present while `Extra` holds something.
    extra: Option<Box<Extra>>,
}

/// The part of a node that few nodes need.
#[derive(Debug, Default)]
struct Extra {
    /// Client identifier → position in `subs`, present while there are more than
    /// `FEW / 2` (built beyond `FEW`): a filter that every client subscribes to would
    /// otherwise make each SUBSCRIBE a scan.
    index: Option<Map<Arc<str>, usize>>,
    /// Shared subscription groups on the filter that ends here, by group name.
    shared: Map<Box<str>, SharedGroup>,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.children.is_empty()
            && self.plus.is_none()
            && self.hash.is_none()
            && self.subs.is_empty()
            && self.extra.is_none()
    }

    fn child(&self, level: &str) -> Option<NodeId> {
        match level {
            "+" => self.plus,
            "#" => self.hash,
            _ => self.children.get(&Probe::new(level)),
        }
    }

    fn set_child(&mut self, level: &str, id: Option<NodeId>) {
        match level {
            "+" => self.plus = id,
            "#" => self.hash = id,
            _ => match id {
                Some(id) => self.children.insert(level, id),
                None => self.children.remove(level),
            },
        }
    }

    fn for_each_child_mut(&mut self, mut f: impl FnMut(&mut NodeId)) {
        match &mut self.children {
            Children::Zero => {}
            Children::One(_, id) => f(id),
            Children::Few(few) => few.iter_mut().for_each(|(_, id)| f(id)),
            Children::Many(map) => map.values_mut().for_each(&mut f),
        }
        self.plus.iter_mut().chain(self.hash.iter_mut()).for_each(f);
    }

    fn groups(&self) -> impl Iterator<Item = &SharedGroup> {
        self.extra.iter().flat_map(|x| x.shared.values())
    }

    fn position(&self, client: &str) -> Option<usize> {
        match self.extra.as_ref().and_then(|x| x.index.as_ref()) {
            Some(index) => index.get(client).copied(),
            None => self.subs.iter().position(|e| *e.session.client_id == *client),
        }
    }

    /// Add or replace `client`'s ordinary subscription; `true` when it replaced one.
    fn insert_sub(&mut self, client: &Arc<str>, entry: SubEntry) -> bool {
        if let Some(i) = self.position(client) {
            self.subs[i] = entry;
            return true;
        }
        self.subs.push(entry);
        let at = self.subs.len() - 1;
        let extra = self.extra.as_deref_mut();
        match extra.and_then(|x| x.index.as_mut()) {
            Some(index) => {
                index.insert(client.clone(), at);
            }
            None if self.subs.len() > FEW => {
                let index = self
                    .subs
                    .iter()
                    .enumerate()
                    .map(|(i, e)| (e.session.client_id.clone(), i))
                    .collect();
                self.extra.get_or_insert_with(Box::default).index = Some(index);
            }
            None => {}
        }
        false
    }

    /// Remove `client`'s ordinary subscription; `true` when there was one.
    fn remove_sub(&mut self, client: &str) -> bool {
        let Some(i) = self.position(client) else {
            return false;
        };
        self.subs.swap_remove(i);
        if let Some(x) = self.extra.as_deref_mut() {
            if let Some(index) = &mut x.index {
                index.remove(client);
                // The last entry took the removed one's place.
                if let Some(moved) = self.subs.get(i) {
                    if let Some(at) = index.get_mut(&*moved.session.client_id) {
                        *at = i;
                    }
                }
                if self.subs.len() <= FEW / 2 {
                    x.index = None;
                }
            }
        }
        if self.subs.capacity() > FEW && self.subs.capacity() > 4 * self.subs.len() {
            self.subs.shrink_to_fit();
        }
        self.tidy();
        true
    }

    /// Add or replace `client`'s member entry in `group`; `true` when it replaced one.
    fn insert_member(&mut self, group: &str, client: &Arc<str>, entry: SubEntry) -> bool {
        let extra = self.extra.get_or_insert_with(Box::default);
        let group = extra.shared.entry(group.into()).or_default();
        if let Some(m) = group.members.iter_mut().find(|(c, _)| c == client) {
            m.1 = entry;
            true
        } else {
            group.members.push((client.clone(), entry));
            false
        }
    }

    /// Remove `client` from `group`; `true` when it was a member.
    fn remove_member(&mut self, group: &str, client: &str) -> bool {
        let Some(extra) = self.extra.as_deref_mut() else {
            return false;
        };
        let Some(grp) = extra.shared.get_mut(group) else {
            return false;
        };
        let before = grp.members.len();
        grp.members.retain(|(c, _)| **c != *client);
        let removed = grp.members.len() != before;
        if grp.members.is_empty() {
            extra.shared.remove(group);
        }
        self.tidy();
        removed
    }

    /// Drop `extra` when it holds nothing.
    fn tidy(&mut self) {
        if self
            .extra
            .as_ref()
            .is_some_and(|x| x.index.is_none() && x.shared.is_empty())
        {
            self.extra = None;
        }
    }
}

/// A node's literal children, by level name. Most nodes have one child (a level of
/// topics that share their prefix) or none; that child is kept inline.
#[derive(Debug, Default)]
enum Children {
    #[default]
    Zero,
    One(Key, NodeId),
    /// From two to [`FEW`], in no order.
    Few(Box<[(Key, NodeId)]>),
    /// More than `FEW / 2`.
    #[allow(clippy::box_collection, reason = "a 48-byte map inline would grow every node")]
    Many(Box<Map<Box<str>, NodeId>>),
}

impl Children {
    fn is_empty(&self) -> bool {
        matches!(self, Children::Zero)
    }

    fn get(&self, probe: &Probe<'_>) -> Option<NodeId> {
        match self {
            Children::Zero => None,
            Children::One(k, id) => k.is(probe).then_some(*id),
            Children::Few(few) => few.iter().find(|(k, _)| k.is(probe)).map(|(_, id)| *id),
            Children::Many(map) => map.get(probe.name).copied(),
        }
    }

    /// Add a child the node does not have yet.
    fn insert(&mut self, level: &str, id: NodeId) {
        let key = Key::new(level);
        *self = match std::mem::take(self) {
            Children::Zero => Children::One(key, id),
            Children::One(k, i) => Children::Few(Box::new([(k, i), (key, id)])),
            Children::Few(few) if few.len() < FEW => {
                let mut entries = few.into_vec();
                entries.push((key, id));
                Children::Few(entries.into_boxed_slice())
            }
            Children::Few(few) => {
                let mut map: Map<Box<str>, NodeId> = few
                    .into_vec()
                    .into_iter()
                    .map(|(k, id)| (k.name().into(), id))
                    .collect();
                map.insert(level.into(), id);
                Children::Many(Box::new(map))
            }
            Children::Many(mut map) => {
                map.insert(level.into(), id);
                Children::Many(map)
            }
        };
    }

    fn remove(&mut self, level: &str) {
        let key = Key::new(level);
        *self = match std::mem::take(self) {
            Children::One(k, _) if k == key => Children::Zero,
            Children::Few(few) if few.iter().any(|(k, _)| *k == key) => {
                let mut entries: Vec<(Key, NodeId)> =
                    few.into_vec().into_iter().filter(|(k, _)| *k != key).collect();
                match entries.len() {
                    1 => {
                        let (k, id) = entries.swap_remove(0);
                        Children::One(k, id)
                    }
                    _ => Children::Few(entries.into_boxed_slice()),
                }
            }
            Children::Many(mut map) => {
                map.remove(level);
                if map.len() <= FEW / 2 {
                    let entries: Vec<(Key, NodeId)> =
                        map.into_iter().map(|(name, id)| (Key::new(&name), id)).collect();
                    Children::Few(entries.into_boxed_slice())
                } else {
                    if map.capacity() > 4 * map.len() {
                        map.shrink_to_fit();
                    }
                    Children::Many(map)
                }
            }
            other => other,
        };
    }
}

/// Matching subscriptions for one topic, as the router reports them.
pub(crate) enum Match<'a> {
    /// An ordinary subscription (its client is `session.client_id`).
    Normal(&'a SubEntry),
    /// The member chosen from a shared group.
    Shared(&'a SubEntry),
}

/// All subscriptions of all sessions.
#[derive(Debug)]
pub(crate) struct Router {
    /// The nodes; `nodes[ROOT]` is the root.
    nodes: Vec<Node>,
    /// Slots of `nodes` not in use.
    free: Vec<NodeId>,
    count: usize,
}

impl Default for Router {
    fn default() -> Router {
        Router {
            nodes: vec![Node::default()],
            free: Vec::new(),
            count: 0,
        }
    }
}

impl Router {
    /// Add or replace a subscription; `true` when it already existed.
    pub fn subscribe(
        &mut self,
        filter: &str,
        group: Option<&str>,
        client: &Arc<str>,
        entry: SubEntry,
    ) -> Result<bool, TrieFull> {
        debug_assert_eq!(*entry.session.client_id, **client);
        let mut node = ROOT;
        for level in filter.split('/') {
            node = match self.nodes[node].child(level) {
                Some(id) => at(id),
                None => {
                    let Some(id) = self.alloc() else {
                        // Nodes created for this filter so far are empty: free them.
                        self.prune(filter);
                        return Err(TrieFull);
                    };
                    self.nodes[node].set_child(level, Some(id));
                    at(id)
                }
            };
        }
        let node = &mut self.nodes[node];
        let existed = match group {
            None => node.insert_sub(client, entry),
            Some(g) => node.insert_member(g, client, entry),
        };
        if !existed {
            self.count += 1;
        }
        Ok(existed)
    }

    /// Remove a subscription; `true` when it existed.
    pub fn unsubscribe(&mut self, filter: &str, group: Option<&str>, client: &Arc<str>) -> bool {
        let mut node = ROOT;
        for level in filter.split('/') {
            match self.nodes[node].child(level) {
                Some(id) => node = at(id),
                None => return false,
            }
        }
        let node = &mut self.nodes[node];
        let removed = match group {
            None => node.remove_sub(client),
            Some(g) => node.remove_member(g, client),
        };
        if removed {
            self.count -= 1;
            self.prune(filter);
        }
        removed
    }

    /// Number of subscriptions.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Call `f` for every subscription matching `topic`; one member per shared group.
    /// A session with several matching filters is reported once per filter.
    pub fn for_each_match<'a>(&'a self, topic: &str, mut f: impl FnMut(Match<'a>)) {
        // [MQTT-4.7.2-1]: wildcards at the first level do not match topics beginning with `$`.
        let mut wild_ok = !topic.starts_with('$');
        let mut levels = tern_proto::topic::levels(topic);
        // While the walk follows a single path (no `+` child to take as well), it needs no
        // list of nodes: most publishes end here.
        let mut i = ROOT;
        loop {
            let node = &self.nodes[i];
            if wild_ok && node.plus.is_some() {
                break;
            }
            if wild_ok {
                // `#` matches the parent level too (`a/#` matches `a`).
                if let Some(hash) = node.hash {
                    self.emit(hash, &mut f);
                }
            }
            let Some(level) = levels.next() else {
                emit(node, &mut f);
                return;
            };
            match node.children.get(&Probe::new(level)) {
                Some(child) => i = at(child),
                None => return,
            }
            wild_ok = true;
        }
        // From the node `i`, whose next level has not been taken yet: breadth first.
        let (mut here, mut next) = FRONTIER.with(Cell::take);
        here.clear();
        here.push(i as u32);
        for level in levels {
            let probe = Probe::new(level);
            next.clear();
            for batch in here.chunks(BATCH) {
                self.warm(batch);
                for &i in batch {
                    let node = &self.nodes[i as usize];
                    if wild_ok {
                        // `#` matches the parent level too (`a/#` matches `a`): emitted
                        // before the level is consumed.
                        if let Some(hash) = node.hash {
                            self.emit(hash, &mut f);
                        }
                        if let Some(plus) = node.plus {
                            next.push(plus.get());
                        }
                    }
                    if let Some(child) = node.children.get(&probe) {
                        next.push(child.get());
                    }
                }
            }
            std::mem::swap(&mut here, &mut next);
            if here.is_empty() {
                break;
            }
            wild_ok = true;
        }
        for batch in here.chunks(BATCH) {
            self.warm(batch);
            for &i in batch {
                let node = &self.nodes[i as usize];
                if let Some(hash) = node.hash {
                    self.emit(hash, &mut f);
                }
                emit(node, &mut f);
            }
        }
        here.clear();
        next.clear();
        if here.capacity().max(next.capacity()) <= MAX_KEPT_FRONTIER {
            FRONTIER.with(|s| s.set((here, next)));
        }
    }

    /// Read what handling the nodes `batch` needs (each node, then its first literal
    /// child and its subscriptions) in two tight loops first, so that the
    /// processor has the cache misses of the whole batch in flight at once; handling
    /// then finds the memory in the cache. Without this, a publish that reaches
    /// thousands of nodes waits for one miss after another: the handling of a node is
    /// too long for the processor to run ahead to the next ones. These are ordinary
    /// loads kept by `black_box` (stable Rust has no safe prefetch instruction).
    fn warm(&self, batch: &[u32]) {
        let mut sum = 0usize;
        for &i in batch {
            sum = sum.wrapping_add(self.nodes[i as usize].subs.len());
        }
        for &i in batch {
            let node = &self.nodes[i as usize];
            if let Children::Few(few) = &node.children {
                sum = sum.wrapping_add(few.first().map_or(0, |(_, id)| id.get() as usize));
            }
            // Both ends of each subscription: one may straddle two cache lines.
            for e in &node.subs {
                sum = sum
                    .wrapping_add(e.options.qos as usize)
                    .wrapping_add(Arc::as_ptr(&e.session) as usize);
            }
        }
        std::hint::black_box(sum);
    }

    fn emit<'a>(&'a self, id: NodeId, f: &mut impl FnMut(Match<'a>)) {
        emit(&self.nodes[at(id)], f);
    }

    /// A free slot for a new (empty) node.
    fn alloc(&mut self) -> Option<NodeId> {
        if let Some(id) = self.free.pop() {
            return Some(id);
        }
        let id = node_id(self.nodes.len())?;
        self.nodes.push(Node::default());
        Some(id)
    }

    /// Free the empty nodes at the end of `filter`'s path, deepest first.
    fn prune(&mut self, filter: &str) {
        // (parent, level, child) along the path.
        let mut path = Vec::new();
        let mut parent = ROOT;
        for level in filter.split('/') {
            let Some(child) = self.nodes[parent].child(level) else {
                break;
            };
            path.push((parent, level, child));
            parent = at(child);
        }
        for (parent, level, child) in path.into_iter().rev() {
            if !self.nodes[at(child)].is_empty() {
                break;
            }
            self.nodes[parent].set_child(level, None);
            // Whatever capacity the empty node kept goes back now.
            self.nodes[at(child)] = Node::default();
            self.free.push(child);
        }
        if self.nodes.len() >= MIN_COMPACT && self.free.len() * 4 > self.nodes.len() * 3 {
            self.compact();
        }
    }

    /// Rebuild `nodes` without free slots, in breadth-first order (the order a walk
    /// visits them), and give the memory back.
    fn compact(&mut self) {
        let mut old = std::mem::take(&mut self.nodes);
        let mut nodes = Vec::with_capacity(old.len() - self.free.len());
        nodes.push(std::mem::take(&mut old[ROOT]));
        let mut i = 0;
        while i < nodes.len() {
            let mut node = std::mem::take(&mut nodes[i]);
            node.for_each_child_mut(|id| {
                nodes.push(std::mem::take(&mut old[at(*id)]));
                // A new index is below the old one, which fitted.
                if let Some(new) = node_id(nodes.len() - 1) {
                    *id = new;
                }
            });
            nodes[i] = node;
            i += 1;
        }
        self.nodes = nodes;
        self.free = Vec::new();
    }
}

fn emit<'a>(node: &'a Node, f: &mut impl FnMut(Match<'a>)) {
    for e in &node.subs {
        f(Match::Normal(e));
    }
    for g in node.groups() {
        if let Some((_, e)) = pick_member(g) {
            f(Match::Shared(e));
        }
    }
}

/// Round-robin over the group, preferring members that are connected.
fn pick_member(g: &SharedGroup) -> Option<&(Arc<str>, SubEntry)> {
    let n = g.members.len();
    if n == 0 {
        return None;
    }
    let start = g.next.fetch_add(1, Ordering::Relaxed);
    (0..n)
        .map(|i| &g.members[(start + i) % n])
        .find(|(_, e)| e.session.is_connected())
        .or_else(|| g.members.get(start % n))
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use proptest::prelude::*;
    use tern_proto::topic::matches;

    use super::*;

    fn entry(cell: &Arc<SessionCell>, tag: u32) -> SubEntry {
        SubEntry {
            options: Default::default(),
            id: Some(tag),
            session: cell.clone(),
            shared: None,
        }
    }

    /// Sessions by client identifier, made on first use.
    #[derive(Default)]
    struct Clients(BTreeMap<String, Arc<SessionCell>>);

    impl Clients {
        fn get(&mut self, id: &str) -> Arc<SessionCell> {
            self.0
                .entry(id.to_owned())
                .or_insert_with(|| {
                    Arc::new(SessionCell::new(
                        Arc::from(id),
                        tern_proto::ProtocolVersion::V5,
                        100,
                    ))
                })
                .clone()
        }
    }

    fn sub(
        r: &mut Router,
        clients: &mut Clients,
        filter: &str,
        group: Option<&str>,
        client: &str,
        tag: u32,
    ) -> bool {
        let cell = clients.get(client);
        let mut e = entry(&cell, tag);
        e.shared = group.map(|g| Arc::from(format!("$share/{g}/{filter}")));
        r.subscribe(filter, group, &cell.client_id, e).expect("room")
    }

    /// Ordinary matches as (client, tag), shared ones as (group filter, client).
    type Matched = (Vec<(String, u32)>, Vec<(String, String)>);

    /// What `topic` matches, each list sorted.
    fn matched(r: &Router, topic: &str) -> Matched {
        let mut normal = Vec::new();
        let mut shared = Vec::new();
        r.for_each_match(topic, |m| match m {
            Match::Normal(e) => normal.push((e.session.client_id.to_string(), e.id.unwrap_or_default())),
            Match::Shared(e) => shared.push((
                e.shared.as_deref().unwrap_or_default().to_owned(),
                e.session.client_id.to_string(),
            )),
        });
        normal.sort();
        shared.sort();
        (normal, shared)
    }

    /// Nodes in use, the root included.
    fn live_nodes(r: &Router) -> usize {
        r.nodes.len() - r.free.len()
    }

    #[test]
    fn node_sizes() {
        // One cache line per node; a literal child is its key and an index.
        assert_eq!(std::mem::size_of::<Node>(), 64);
        assert_eq!(std::mem::size_of::<Key>(), 16);
        assert_eq!(std::mem::size_of::<(Key, NodeId)>(), 24);
    }

    #[test]
    fn spec_examples_of_section_4_7() {
        let mut r = Router::default();
        let mut c = Clients::default();
        for (i, f) in [
            "sport/tennis/player1/#",
            "sport/#",
            "#",
            "+",
            "+/+",
            "/+",
            "sport/+",
            "$SYS/#",
            "+/monitor/Clients",
        ]
        .iter()
        .enumerate()
        {
            sub(&mut r, &mut c, f, None, &format!("c{i}"), i as u32);
        }
        let tags = |t: &str| {
            matched(&r, t)
                .0
                .into_iter()
                .map(|(_, tag)| tag)
                .collect::<BTreeSet<u32>>()
        };
        // 4.7.1.2: `#` matches the parent level and every level below.
        assert_eq!(tags("sport/tennis/player1"), BTreeSet::from([0, 1, 2]));
        assert_eq!(tags("sport/tennis/player1/ranking"), BTreeSet::from([0, 1, 2]));
        assert_eq!(tags("sport"), BTreeSet::from([1, 2, 3]));
        // 4.7.1.3: `+` matches one level, an empty one too.
        assert_eq!(tags("sport/"), BTreeSet::from([1, 2, 4, 6]));
        assert_eq!(tags("/finance"), BTreeSet::from([2, 4, 5]));
        // v3.1.1+v5 [MQTT-4.7.2-1]: wildcards at the first level do not match `$` topics.
        assert_eq!(tags("$SYS/monitor/Clients"), BTreeSet::from([7]));
        assert_eq!(tags("$SYS"), BTreeSet::from([7]));
    }

    #[test]
    fn a_session_is_reported_once_per_matching_filter() {
        let mut r = Router::default();
        let mut c = Clients::default();
        // Every filter of {a,+}^4 for one client: 16 matches, one per filter.
        for mask in 0..16u32 {
            let f: Vec<&str> = (0..4)
                .map(|i| if mask >> i & 1 == 1 { "+" } else { "a" })
                .collect();
            assert!(!sub(&mut r, &mut c, &f.join("/"), None, "one", mask));
        }
        assert!(sub(&mut r, &mut c, "a/+/a/+", None, "one", 99));
        let (normal, _) = matched(&r, "a/a/a/a");
        assert_eq!(normal.len(), 16);
        assert_eq!(r.len(), 16);
    }

    #[test]
    fn long_level_names_and_wide_nodes() {
        let mut r = Router::default();
        let mut c = Clients::default();
        // 14 bytes are kept inline, 15 on the heap; twenty siblings need the map.
        let names = ["fourteen-bytes", "fifteen-bytes-x", "ü-non-ascii-name"];
        for (i, n) in names.iter().enumerate() {
            sub(&mut r, &mut c, &format!("t/{n}"), None, "c", i as u32);
        }
        for i in 0..20 {
            sub(&mut r, &mut c, &format!("t/n{i}"), None, "c", 100 + i);
        }
        for (i, n) in names.iter().enumerate() {
            assert_eq!(matched(&r, &format!("t/{n}")).0, vec![("c".to_owned(), i as u32)]);
        }
        assert_eq!(matched(&r, "t/fifteen-bytes-").0, vec![]);
        assert_eq!(matched(&r, "t/fourteen-byte").0, vec![]);
        assert_eq!(matched(&r, "t/n19").0, vec![("c".to_owned(), 119)]);
        for i in 0..20 {
            assert!(r.unsubscribe(&format!("t/n{i}"), None, &Arc::from("c")));
        }
        assert!(matches!(
            r.nodes[at(r.nodes[ROOT].child("t").expect("t"))].children,
            Children::Few(_)
        ));
        assert_eq!(matched(&r, "t/ü-non-ascii-name").0, vec![("c".to_owned(), 2)]);
    }

    #[test]
    fn many_clients_on_one_filter_are_indexed() {
        let mut r = Router::default();
        let mut c = Clients::default();
        for i in 0..40 {
            assert!(!sub(&mut r, &mut c, "x/y", None, &format!("c{i}"), i));
        }
        assert!(sub(&mut r, &mut c, "x/y", None, "c7", 700));
        for i in (0..40).filter(|i| i % 3 != 0) {
            assert!(r.unsubscribe("x/y", None, &Arc::from(format!("c{i}").as_str())));
        }
        assert!(!r.unsubscribe("x/y", None, &Arc::from("c1")));
        let want: Vec<(String, u32)> = {
            let mut w: Vec<_> = (0..40)
                .filter(|i| i % 3 == 0)
                .map(|i| (format!("c{i}"), i))
                .collect();
            w.sort();
            w
        };
        assert_eq!(matched(&r, "x/y").0, want);
        assert!(sub(&mut r, &mut c, "x/y", None, "c39", 3900));
    }

    #[test]
    fn unsubscribing_frees_and_compacts_the_nodes() {
        let mut r = Router::default();
        let mut c = Clients::default();
        let filters: Vec<String> = (0..2000).map(|i| format!("f/{i}/+/x/#")).collect();
        for (i, f) in filters.iter().enumerate() {
            sub(&mut r, &mut c, f, None, "c", i as u32);
        }
        let grown = r.nodes.len();
        assert_eq!(live_nodes(&r), 1 + 1 + 2000 * 4);
        let client: Arc<str> = Arc::from("c");
        for f in &filters[10..] {
            assert!(r.unsubscribe(f, None, &client));
        }
        assert_eq!(live_nodes(&r), 1 + 1 + 10 * 4);
        assert!(r.nodes.len() < grown / 4, "{} slots of {grown}", r.nodes.len());
        for (i, f) in filters[..10].iter().enumerate() {
            let topic = f.replace('+', "any").replace('#', "deeper/still");
            assert_eq!(matched(&r, &topic).0, vec![("c".to_owned(), i as u32)]);
        }
        for f in &filters[..10] {
            assert!(r.unsubscribe(f, None, &client));
        }
        assert_eq!(live_nodes(&r), 1);
        assert_eq!(r.len(), 0);
    }

    /// Matching and subscription changes keep no per-level recursion: at the deepest
    /// filter the configuration allows, on a quarter of a tokio worker's 2 MiB stack,
    /// subscribing, matching, unsubscribing and dropping all work.
    #[test]
    fn the_deepest_allowed_topics_fit_in_a_small_stack() {
        let levels = crate::config::MAX_TOPIC_LEVELS;
        let run = move || {
            let mut c = Clients::default();
            let topic = vec!["a"; levels].join("/");
            let plus = vec!["+"; levels - 1].join("/") + "/#";
            let mut r = Router::default();
            sub(&mut r, &mut c, &topic, None, "deep", 1);
            sub(&mut r, &mut c, &plus, None, "deep", 2);
            sub(&mut r, &mut c, &topic, Some("g"), "deep", 3);
            let mut matched = 0;
            r.for_each_match(&topic, |_| matched += 1);
            assert_eq!(matched, 3);
            let client: Arc<str> = Arc::from("deep");
            assert!(r.unsubscribe(&topic, None, &client));
            assert!(r.unsubscribe(&plus, None, &client));
            drop(r);
        };
        std::thread::Builder::new()
            .stack_size(512 * 1024)
            .spawn(run)
            .expect("thread")
            .join()
            .expect("no stack overflow");
    }

    /// One operation of the property test.
    #[derive(Debug, Clone)]
    enum Op {
        Subscribe(String, Option<u8>, u8),
        Unsubscribe(String, Option<u8>, u8),
        Publish(String),
    }

    /// A level: a few special ones (one longer than the 14 bytes kept inline), or one of a
    /// dozen names (enough for a node to outgrow its list of [`FEW`] children).
    fn level(special: &'static [&'static str]) -> impl Strategy<Value = String> {
        prop_oneof![
            prop::sample::select(special).prop_map(str::to_owned),
            (0..12u8).prop_map(|i| format!("n{i}")),
        ]
    }

    fn topic() -> impl Strategy<Value = String> {
        let level = level(&["a", "", "$SYS", "$", "a-long-level-name-of-the-heap"]);
        prop::collection::vec(level, 1..4).prop_map(|l| l.join("/"))
    }

    fn filter() -> impl Strategy<Value = String> {
        let level = level(&["a", "", "$SYS", "+", "+", "a-long-level-name-of-the-heap"]);
        (prop::collection::vec(level, 1..4), any::<bool>()).prop_map(|(mut l, hash)| {
            if hash {
                l.push("#".to_owned());
            }
            l.join("/")
        })
    }

    fn op() -> impl Strategy<Value = Op> {
        // Twelve clients: enough for a filter's list to need its index.
        let group = prop::option::weighted(0.2, 0..2u8);
        prop_oneof![
            4 => (filter(), group.clone(), 0..12u8).prop_map(|(f, g, c)| Op::Subscribe(f, g, c)),
            2 => (filter(), group, 0..12u8).prop_map(|(f, g, c)| Op::Unsubscribe(f, g, c)),
            3 => topic().prop_map(Op::Publish),
            1 => Just(Op::Subscribe("#".into(), None, 0)),
        ]
    }

    /// (filter, share group, client) → tag.
    type Model = BTreeMap<(String, Option<String>, String), u32>;

    fn check_publish(r: &Router, model: &Model, topic: &str) -> Result<(), TestCaseError> {
        let (normal, shared) = matched(r, topic);
        let want: Vec<(String, u32)> = {
            let mut w: Vec<_> = model
                .iter()
                .filter(|((f, g, _), _)| g.is_none() && matches(topic, f))
                .map(|((_, _, c), t)| (c.clone(), *t))
                .collect();
            w.sort();
            w
        };
        prop_assert_eq!(normal, want, "topic {:?}", topic);
        // One member of each matching group.
        let mut groups: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (f, g, c) in model.keys() {
            if let Some(g) = g.as_ref().filter(|_| matches(topic, f)) {
                groups
                    .entry(format!("$share/{g}/{f}"))
                    .or_default()
                    .insert(c.clone());
            }
        }
        prop_assert_eq!(shared.len(), groups.len(), "topic {:?}: {:?}", topic, shared);
        for (group, client) in &shared {
            prop_assert!(
                groups.get(group).is_some_and(|m| m.contains(client)),
                "{group} {client}"
            );
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        /// Subscribe, unsubscribe and publish agree with a list of subscriptions searched
        /// by `topic::matches` (every ordinary subscription once, one member per share
        /// group), and removing everything leaves the root alone.
        #[test]
        fn matching_agrees_with_topic_matches(ops in prop::collection::vec(op(), 1..150)) {
            let mut r = Router::default();
            let mut c = Clients::default();
            let mut model = Model::new();
            for (tag, op) in (0u32..).zip(&ops) {
                match op {
                    Op::Subscribe(f, g, client) => {
                        let g = g.map(|g| format!("g{g}"));
                        let client = format!("c{client}");
                        let existed = sub(&mut r, &mut c, f, g.as_deref(), &client, tag);
                        prop_assert_eq!(existed, model.insert((f.clone(), g, client), tag).is_some());
                    }
                    Op::Unsubscribe(f, g, client) => {
                        let g = g.map(|g| format!("g{g}"));
                        let client = format!("c{client}");
                        let existed = r.unsubscribe(f, g.as_deref(), &Arc::from(client.as_str()));
                        prop_assert_eq!(existed, model.remove(&(f.clone(), g, client)).is_some());
                    }
                    Op::Publish(t) => check_publish(&r, &model, t)?,
                }
                prop_assert_eq!(r.len(), model.len());
            }
            for (f, g, client) in model.keys() {
                prop_assert!(r.unsubscribe(f, g.as_deref(), &Arc::from(client.as_str())));
            }
            prop_assert_eq!(r.len(), 0);
            prop_assert_eq!(live_nodes(&r), 1);
        }
    }
}
