//! The retained-message index: a trie over topic levels, so that a SUBSCRIBE
//! finds the retained messages its filter matches by walking only the matching
//! branches instead of testing every retained topic.
//!
//! A topic is split on `/`, and an empty level is a level like any other (`a//b`
//! has three levels, `/a` two). A lookup by filter follows, level by level, the
//! named child for a literal level, every child for `+`, and for `#` takes the
//! node itself (the parent level: `sport/#` matches `sport`, section 4.7.1.2)
//! and everything below it. A filter that begins with `+` or `#` skips the
//! first-level children whose name begins with `$` (v5 [MQTT-4.7.2-1] / v3.1.1
//! [MQTT-4.7.2-1]). The result is the set of values whose topic
//! [`tern_proto::topic::matches`] the filter, in no particular order; the unit
//! tests, the property test and the `retained_trie` fuzz target check exactly
//! that against the one-topic matcher.
//!
//! ### Contract
//! - Keys are valid topic names, and lookups take valid topic filters without a
//!   `$share/{ShareName}/` prefix: the caller validates them (the broker does at
//!   PUBLISH and SUBSCRIBE). Other strings never panic; what they match is
//!   unspecified.
//! - The store only indexes: limits (`max_retained`), expiry and persistence are
//!   the caller's (`Core::retain`, `Core::send_retained`).
//!
//! ### Invariants
//! - Every node but the root holds a value or has children: `remove` prunes the
//!   chain of nodes it leaves empty, so memory follows the values present, not
//!   every topic ever retained.
//! - `len` is the number of nodes holding a value.
//! - Up to [`FEW`] children live in a boxed slice sorted by level (no children:
//!   no allocation; one child: one allocation, no hash map); more live in a hash
//!   map, which goes back to a slice when it falls to `FEW / 2` children and is
//!   shrunk when it is mostly empty.
//! - Nothing recurses on the depth of a topic: a client may retain a topic of
//!   65,536 levels (`/` repeated 65,535 times), so lookups, removal and drop use
//!   explicit stacks on the heap.
//!
//! ### Memory
//! A node is 24 bytes on 64-bit targets (the boxed value 8, children 16) and
//! lives with its level name (a 16-byte `Box<str>` plus the name's bytes on the
//! heap) in its parent's slice or map. A retained topic of `k` levels that shares
//! no prefix with others costs `k` such entries; shared prefixes are stored once,
//! and its value a box of its own.

use std::collections::HashMap;
use std::fmt;

/// Most children a node keeps in a sorted slice before it moves them to a hash map.
const FEW: usize = 8;

/// A child: its level name and its node.
type Entry<V> = (Box<str>, Node<V>);

/// One topic level.
struct Node<V> {
    /// The value retained for the topic that ends at this node, boxed: most nodes of a
    /// large index are levels on the way to a value, and an unboxed `V` larger than a pointer
    /// (the broker's entry is about 80 bytes) would be paid by each of them.
    value: Option<Box<V>>,
    children: Children<V>,
}

/// A node's children, by level name.
enum Children<V> {
    /// At most [`FEW`], sorted by name.
    Few(Box<[Entry<V>]>),
    /// More than `FEW / 2`. Level names are chosen by clients, so the map keeps the
    /// standard library's keyed hasher rather than a fast unkeyed one.
    #[allow(
        clippy::box_collection,
        reason = "a 48-byte map inline would double every node"
    )]
    Many(Box<HashMap<Box<str>, Node<V>>>),
}

/// Retained values (the broker's are `Arc<Message>`) indexed by topic name.
pub(crate) struct RetainedStore<V> {
    root: Node<V>,
    len: usize,
}

impl<V> RetainedStore<V> {
    /// An empty store.
    pub fn new() -> RetainedStore<V> {
        RetainedStore {
            root: Node::default(),
            len: 0,
        }
    }

    /// Number of retained values.
    pub fn len(&self) -> usize {
        self.len
    }

    /// The value retained for exactly `topic`.
    pub fn get(&self, topic: &str) -> Option<&V> {
        let mut node = &self.root;
        for level in topic.split('/') {
            node = node.children.get(level)?;
        }
        node.value.as_deref()
    }

    /// The value retained for exactly `topic`, to change in place.
    pub fn get_mut(&mut self, topic: &str) -> Option<&mut V> {
        self.root.find_mut(topic)?.value.as_deref_mut()
    }

    /// Whether a value is retained for exactly `topic`.
    pub fn contains(&self, topic: &str) -> bool {
        self.get(topic).is_some()
    }

    /// Retain `value` for `topic`; returns the value it replaces.
    pub fn insert(&mut self, topic: &str, value: V) -> Option<V> {
        // The common case, a topic retained again, allocates nothing.
        if let Some(node) = self.root.find_mut(topic) {
            let old = match &mut node.value {
                Some(v) => Some(std::mem::replace(&mut **v, value)),
                None => {
                    node.value = Some(Box::new(value));
                    None
                }
            };
            if old.is_none() {
                self.len += 1;
            }
            return old;
        }
        let mut node = &mut self.root;
        for level in topic.split('/') {
            node = node.children.get_or_insert(level);
        }
        self.len += 1;
        node.value.replace(Box::new(value)).map(|b| *b)
    }

    /// Forget the value retained for `topic` and prune the nodes left empty.
    pub fn remove(&mut self, topic: &str) -> Option<V> {
        // `keep`: depth of the deepest node on the path that must stay (the root, a
        // node with a value or with other children). Everything below it on the
        // path exists only for this topic when the target has no children.
        let mut keep = 0;
        let mut node = &mut self.root;
        for (depth, level) in topic.split('/').enumerate() {
            if depth > 0 && (node.value.is_some() || node.children.len() > 1) {
                keep = depth;
            }
            node = node.children.get_mut(level)?;
        }
        let value = *node.value.take()?;
        self.len -= 1;
        if node.children.is_empty() {
            let mut levels = topic.split('/');
            let mut node = &mut self.root;
            for level in levels.by_ref().take(keep) {
                let Some(child) = node.children.get_mut(level) else {
                    return Some(value);
                };
                node = child;
            }
            if let Some(level) = levels.next() {
                // Dropped without recursion (see `Drop for Node`).
                drop(node.children.remove(level));
            }
        }
        Some(value)
    }

    /// Call `f` with every value whose topic matches `filter`, in no particular order.
    pub fn for_each_match<'a>(&'a self, filter: &str, mut f: impl FnMut(&'a V)) {
        // (node, the filter levels left after it, whether it is the root).
        let mut stack = vec![(&self.root, filter.split('/'), true)];
        while let Some((node, mut levels, root)) = stack.pop() {
            match levels.next() {
                None => node.value.as_deref().into_iter().for_each(&mut f),
                Some("#") => {
                    // The parent level, then everything below.
                    node.value.as_deref().into_iter().for_each(&mut f);
                    let mut below: Vec<&Node<V>> = node.children_visible(root).collect();
                    while let Some(n) = below.pop() {
                        n.value.as_deref().into_iter().for_each(&mut f);
                        below.extend(n.children.iter().map(|(_, c)| c));
                    }
                }
                Some("+") => {
                    for child in node.children_visible(root) {
                        stack.push((child, levels.clone(), false));
                    }
                }
                Some(level) => {
                    if let Some(child) = node.children.get(level) {
                        stack.push((child, levels, false));
                    }
                }
            }
        }
    }

    /// The values whose topic matches `filter`, in no particular order.
    pub fn matching(&self, filter: &str) -> Vec<V>
    where
        V: Clone,
    {
        let mut out = Vec::new();
        self.for_each_match(filter, |v| out.push(v.clone()));
        out
    }
}

impl<V> Default for RetainedStore<V> {
    fn default() -> Self {
        RetainedStore::new()
    }
}

impl<V> fmt::Debug for RetainedStore<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetainedStore")
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

impl<V> Default for Node<V> {
    fn default() -> Self {
        Node {
            value: None,
            children: Children::default(),
        }
    }
}

impl<V> Node<V> {
    fn find_mut(&mut self, topic: &str) -> Option<&mut Node<V>> {
        let mut node = self;
        for level in topic.split('/') {
            node = node.children.get_mut(level)?;
        }
        Some(node)
    }

    /// The children a wildcard level may match: at the root, not the `$` topics
    /// (v5 [MQTT-4.7.2-1] / v3.1.1 [MQTT-4.7.2-1]).
    fn children_visible(&self, root: bool) -> impl Iterator<Item = &Node<V>> + '_ {
        self.children
            .iter()
            .filter(move |(level, _)| !(root && level.starts_with('$')))
            .map(|(_, child)| child)
    }
}

impl<V> Drop for Node<V> {
    /// Drops the subtree with a heap stack: the derived drop would recurse once per level.
    fn drop(&mut self) {
        if self.children.is_empty() {
            return;
        }
        let mut stack = Vec::new();
        self.children.drain_into(&mut stack);
        while let Some(mut node) = stack.pop() {
            node.children.drain_into(&mut stack);
        }
    }
}

impl<V> Default for Children<V> {
    fn default() -> Self {
        Children::Few(Box::default())
    }
}

impl<V> Children<V> {
    fn len(&self) -> usize {
        match self {
            Children::Few(few) => few.len(),
            Children::Many(map) => map.len(),
        }
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn get(&self, level: &str) -> Option<&Node<V>> {
        match self {
            Children::Few(few) => few
                .binary_search_by(|(k, _)| (**k).cmp(level))
                .ok()
                .map(|i| &few[i].1),
            Children::Many(map) => map.get(level),
        }
    }

    fn get_mut(&mut self, level: &str) -> Option<&mut Node<V>> {
        match self {
            Children::Few(few) => few
                .binary_search_by(|(k, _)| (**k).cmp(level))
                .ok()
                .map(|i| &mut few[i].1),
            Children::Many(map) => map.get_mut(level),
        }
    }

    fn get_or_insert(&mut self, level: &str) -> &mut Node<V> {
        if let Children::Few(few) = self {
            if few.len() >= FEW && few.binary_search_by(|(k, _)| (**k).cmp(level)).is_err() {
                let entries = std::mem::take(few).into_vec();
                *self = Children::Many(Box::new(entries.into_iter().collect()));
            }
        }
        match self {
            Children::Few(few) => {
                let i = match few.binary_search_by(|(k, _)| (**k).cmp(level)) {
                    Ok(i) => i,
                    Err(i) => {
                        let mut entries = std::mem::take(few).into_vec();
                        entries.insert(i, (level.into(), Node::default()));
                        *few = entries.into_boxed_slice();
                        i
                    }
                };
                &mut few[i].1
            }
            Children::Many(map) => map.entry(level.into()).or_default(),
        }
    }

    fn remove(&mut self, level: &str) -> Option<Node<V>> {
        match self {
            Children::Few(few) => {
                let i = few.binary_search_by(|(k, _)| (**k).cmp(level)).ok()?;
                let mut entries = std::mem::take(few).into_vec();
                let (_, node) = entries.remove(i);
                *few = entries.into_boxed_slice();
                Some(node)
            }
            Children::Many(map) => {
                let node = map.remove(level)?;
                if map.len() <= FEW / 2 {
                    let mut entries: Vec<Entry<V>> = std::mem::take(&mut **map).into_iter().collect();
                    entries.sort_unstable_by(|a, b| a.0.cmp(&b.0));
                    *self = Children::Few(entries.into_boxed_slice());
                } else if map.capacity() > 4 * map.len() {
                    map.shrink_to_fit();
                }
                Some(node)
            }
        }
    }

    fn iter(&self) -> impl Iterator<Item = (&str, &Node<V>)> + '_ {
        let (few, many) = match self {
            Children::Few(few) => (&few[..], None),
            Children::Many(map) => (&[][..], Some(map.iter())),
        };
        few.iter()
            .map(|(k, n)| (&**k, n))
            .chain(many.into_iter().flatten().map(|(k, n)| (&**k, n)))
    }

    /// Move every child node into `out`, leaving no children.
    fn drain_into(&mut self, out: &mut Vec<Node<V>>) {
        match std::mem::take(self) {
            Children::Few(few) => out.extend(few.into_vec().into_iter().map(|(_, n)| n)),
            Children::Many(map) => out.extend(map.into_values()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use proptest::prelude::*;
    use tern_proto::topic::matches;

    use super::*;

    fn store(topics: &[&str]) -> RetainedStore<String> {
        let mut s = RetainedStore::new();
        for t in topics {
            s.insert(t, t.to_string());
        }
        s
    }

    fn found(s: &RetainedStore<String>, filter: &str) -> Vec<String> {
        let mut v = s.matching(filter);
        v.sort();
        v
    }

    /// Nodes other than the root, counted with an explicit stack.
    fn nodes<V>(s: &RetainedStore<V>) -> usize {
        let mut stack: Vec<&Node<V>> = s.root.children.iter().map(|(_, n)| n).collect();
        let mut n = 0;
        while let Some(node) = stack.pop() {
            n += 1;
            stack.extend(node.children.iter().map(|(_, c)| c));
        }
        n
    }

    #[test]
    fn insert_replaces_and_remove_returns() {
        let mut s = RetainedStore::new();
        assert_eq!(s.insert("a/b", 1), None);
        assert_eq!(s.insert("a/b", 2), Some(1));
        assert_eq!(s.insert("a", 3), None);
        assert_eq!(s.len(), 2);
        assert_eq!(s.get("a/b"), Some(&2));
        assert!(s.contains("a"));
        assert!(!s.contains("a/b/c"));
        assert!(!s.contains("b"));
        assert_eq!(s.remove("a/b/c"), None);
        assert_eq!(s.remove("a/b"), Some(2));
        assert_eq!(s.remove("a/b"), None);
        assert_eq!(s.len(), 1);
        assert_eq!(s.get("a"), Some(&3));
    }

    #[test]
    fn spec_examples_of_section_4_7_1() {
        let s = store(&[
            "sport",
            "sport/",
            "sport/tennis/player1",
            "sport/tennis/player1/ranking",
            "sport/tennis/player1/score/wimbledon",
            "sport/tennis/player2",
            "/finance",
            "finance",
        ]);
        // 4.7.1.2: `#` matches the parent level and everything below.
        assert_eq!(
            found(&s, "sport/tennis/player1/#"),
            [
                "sport/tennis/player1",
                "sport/tennis/player1/ranking",
                "sport/tennis/player1/score/wimbledon"
            ]
        );
        assert_eq!(found(&s, "sport/#").len(), 6);
        assert_eq!(found(&s, "#").len(), 8);
        // 4.7.1.3: `+` matches exactly one level, which may be empty.
        assert_eq!(
            found(&s, "sport/tennis/+"),
            ["sport/tennis/player1", "sport/tennis/player2"]
        );
        assert_eq!(found(&s, "sport/+"), ["sport/"]);
        assert_eq!(found(&s, "+/+"), ["/finance", "sport/"]);
        assert_eq!(found(&s, "/+"), ["/finance"]);
        assert_eq!(found(&s, "+"), ["finance", "sport"]);
        assert_eq!(found(&s, "sport/tennis"), Vec::<String>::new());
    }

    #[test]
    fn wildcards_first_do_not_match_dollar_topics_mqtt_4_7_2_1() {
        // v3.1.1+v5 [MQTT-4.7.2-1]
        let s = store(&["$SYS/broker/clients", "$SYS/monitor/Clients", "$", "a/$b"]);
        assert_eq!(found(&s, "#"), ["a/$b"]);
        assert_eq!(found(&s, "+/monitor/Clients"), Vec::<String>::new());
        assert_eq!(found(&s, "+"), Vec::<String>::new());
        assert_eq!(found(&s, "a/+"), ["a/$b"]);
        assert_eq!(
            found(&s, "$SYS/#"),
            ["$SYS/broker/clients", "$SYS/monitor/Clients"]
        );
        assert_eq!(found(&s, "$SYS/monitor/+"), ["$SYS/monitor/Clients"]);
        assert_eq!(found(&s, "$"), ["$"]);
    }

    #[test]
    fn remove_prunes_the_nodes_it_empties() {
        let mut s = store(&["a/b/c/d", "a/x"]);
        assert_eq!(nodes(&s), 5);
        s.insert("a/b", "a/b".into());
        s.remove("a/b/c/d");
        // `a/b` keeps its value; `c` and `d` are gone.
        assert_eq!(nodes(&s), 3);
        s.remove("a/b");
        s.remove("a/x");
        assert_eq!(nodes(&s), 0);
        assert_eq!(s.len(), 0);
        // A node that still has children stays, without its value.
        let mut s = store(&["a", "a/b"]);
        s.remove("a");
        assert_eq!(nodes(&s), 2);
        assert_eq!(found(&s, "a/#"), ["a/b"]);
    }

    #[test]
    fn wide_levels_move_to_a_map_and_back() {
        let topics: Vec<String> = (0..100).map(|i| format!("dev/{i}/state")).collect();
        let mut s = RetainedStore::new();
        for t in &topics {
            s.insert(t, t.clone());
        }
        assert!(matches!(
            s.root.children.get("dev").map(|n| &n.children),
            Some(Children::Many(_))
        ));
        assert_eq!(s.matching("dev/+/state").len(), 100);
        assert_eq!(s.matching("dev/42/#"), ["dev/42/state"]);
        for t in &topics[3..] {
            assert!(s.remove(t).is_some());
        }
        assert!(matches!(
            s.root.children.get("dev").map(|n| &n.children),
            Some(Children::Few(_))
        ));
        assert_eq!(found(&s, "dev/#"), ["dev/0/state", "dev/1/state", "dev/2/state"]);
        assert_eq!(nodes(&s), 7);
    }

    #[test]
    fn node_sizes() {
        // The memory figures of the module doc.
        assert_eq!(size_of::<Node<Arc<()>>>(), 24);
        assert_eq!(size_of::<Entry<Arc<()>>>(), 40);
        // Whatever the value: it is boxed.
        assert_eq!(size_of::<Node<[u8; 80]>>(), 24);
    }

    #[test]
    fn deep_topics_do_not_recurse() {
        // 65,536 levels, the most a valid topic name has, on a small stack.
        let t = std::thread::Builder::new().stack_size(128 * 1024).spawn(|| {
            let deep = "/".repeat(65_535);
            let mut s = store(&[deep.as_str(), "a"]);
            assert_eq!(s.matching("#").len(), 2);
            assert_eq!(s.matching(&deep), std::slice::from_ref(&deep));
            assert_eq!(s.matching(&format!("{deep}/#")), std::slice::from_ref(&deep));
            assert_eq!(s.remove(&deep), Some(deep.clone()));
            assert_eq!(nodes(&s), 1);
            s.insert(&deep, String::new());
            drop(s);
        });
        t.expect("spawn").join().expect("no stack overflow");
    }

    /// One operation of the property test.
    #[derive(Debug, Clone)]
    enum Op {
        Insert(String),
        Remove(String),
        Query(String),
    }

    /// A level: a few special ones, or one of a dozen names (enough for a node to
    /// outgrow its slice of [`FEW`] children).
    fn level(special: &'static [&'static str]) -> impl Strategy<Value = String> {
        prop_oneof![
            prop::sample::select(special).prop_map(str::to_owned),
            (0..12u8).prop_map(|i| format!("n{i}")),
        ]
    }

    fn topic() -> impl Strategy<Value = String> {
        let level = level(&["a", "", "$SYS", "$", "c$"]);
        prop::collection::vec(level, 1..4).prop_map(|l| l.join("/"))
    }

    fn filter() -> impl Strategy<Value = String> {
        let level = level(&["a", "", "$SYS", "$", "+", "+"]);
        (prop::collection::vec(level, 1..4), any::<bool>()).prop_map(|(mut l, hash)| {
            if hash {
                l.push("#".to_owned());
            }
            l.join("/")
        })
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => topic().prop_map(Op::Insert),
            2 => topic().prop_map(Op::Remove),
            3 => filter().prop_map(Op::Query),
            1 => Just(Op::Query("#".into())),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        /// Inserts, removes and lookups agree with a map searched by `topic::matches`,
        /// and removing everything leaves an empty trie.
        #[test]
        fn matching_agrees_with_topic_matches(ops in prop::collection::vec(op(), 1..120)) {
            let mut s = RetainedStore::new();
            let mut model: BTreeMap<String, usize> = BTreeMap::new();
            for (i, op) in ops.iter().enumerate() {
                match op {
                    Op::Insert(t) => {
                        prop_assert_eq!(s.insert(t, (t.clone(), i)), model.insert(t.clone(), i).map(|j| (t.clone(), j)));
                    }
                    Op::Remove(t) => {
                        prop_assert_eq!(s.remove(t), model.remove(t).map(|j| (t.clone(), j)));
                    }
                    Op::Query(f) => {
                        let mut got = s.matching(f);
                        got.sort();
                        let want: Vec<(String, usize)> = model
                            .iter()
                            .filter(|(t, _)| matches(t, f))
                            .map(|(t, j)| (t.clone(), *j))
                            .collect();
                        prop_assert_eq!(got, want, "filter {:?}", f);
                    }
                }
                prop_assert_eq!(s.len(), model.len());
            }
            for t in model.keys() {
                prop_assert!(s.contains(t));
                prop_assert!(s.remove(t).is_some());
            }
            prop_assert_eq!(s.len(), 0);
            prop_assert_eq!(nodes(&s), 0);
        }
    }
}
