//! The retained-message index: topics in order, so that a SUBSCRIBE finds the retained
//! messages its filter matches by scanning only the topics that begin with the filter's
//! levels before its first wildcard, and so that a long scan can stop and resume after the
//! last topic it gave (a subscription streams a large retained set a batch at a time).
//!
//! A lookup by filter takes the literal levels before the first `+` or `#` (`site/+/state`:
//! `site`) and scans the topics that begin with them, in order, testing each with
//! [`tern_proto::topic::matches`] (which also keeps `$` topics from filters that begin with a
//! wildcard, v5 [MQTT-4.7.2-1] / v3.1.1 [MQTT-4.7.2-1]); a filter without wildcards is one
//! lookup. The unit tests, the property test and the `retained_trie` fuzz target check the
//! results against the one-topic matcher.
//!
//! ### Cost
//! A lookup costs `O(log n)` plus the topics that share the filter's literal prefix: a filter
//! that begins with a wildcard (`+/device/state`, `#`) scans every retained topic. That is
//! the price of the memory below; SUBSCRIBE, not PUBLISH, pays it.
//!
//! ### Contract
//! - Keys are valid topic names, and lookups take valid topic filters without a
//!   `$share/{ShareName}/` prefix: the caller validates them (the broker does at
//!   PUBLISH and SUBSCRIBE). Other strings never panic; what they match is
//!   unspecified.
//! - The store only indexes: limits (`max_retained`), expiry and persistence are
//!   the caller's (`Core::retain`, `Core::stream_retained`).
//!
//! ### Memory
//! One B-tree element per retained topic: the topic as a `Box<str>` (16 bytes, and its bytes
//! on the heap) and the value inline, in nodes of up to 11 elements. Nothing recurses on the
//! depth of a topic (a valid topic may have 65,536 levels).

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Bound;

use tern_proto::topic::matches;

/// Retained values (the broker's are `retained_cache::Retained`) indexed by topic name.
pub(crate) struct RetainedStore<V> {
    map: BTreeMap<Box<str>, V>,
    /// Topics added since the map was last built with full nodes ([`RetainedStore::rebuild`]).
    added: usize,
}

/// The map is rebuilt once this many topics, or a quarter of its size if more, were added
/// since it was last built.
const REBUILD_AFTER: usize = 65_536;

/// The levels of `filter` before its first wildcard level (without the `/` after them, so
/// that `a/#` finds `a`), or `None` when it has no wildcard level.
fn literal_prefix(filter: &str) -> Option<&str> {
    // The end of the literal levels so far, and where the next level starts.
    let (mut end, mut at) = (0, 0);
    for level in filter.split('/') {
        if level == "+" || level == "#" {
            return Some(&filter[..end]);
        }
        end = at + level.len();
        at = end + 1;
    }
    None
}

impl<V> RetainedStore<V> {
    /// An empty store.
    pub fn new() -> RetainedStore<V> {
        RetainedStore {
            map: BTreeMap::new(),
            added: 0,
        }
    }

    /// Number of retained values.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// The value retained for exactly `topic`.
    pub fn get(&self, topic: &str) -> Option<&V> {
        self.map.get(topic)
    }

    /// The value retained for exactly `topic`, to change in place.
    pub fn get_mut(&mut self, topic: &str) -> Option<&mut V> {
        self.map.get_mut(topic)
    }

    /// Whether a value is retained for exactly `topic`.
    pub fn contains(&self, topic: &str) -> bool {
        self.map.contains_key(topic)
    }

    /// Retain `value` for `topic`; returns the value it replaces.
    pub fn insert(&mut self, topic: &str, value: V) -> Option<V> {
        // The common case, a topic retained again, allocates nothing.
        if let Some(v) = self.map.get_mut(topic) {
            return Some(std::mem::replace(v, value));
        }
        self.map.insert(Box::from(topic), value);
        self.added += 1;
        if self.added >= REBUILD_AFTER.max(self.map.len() / 4) {
            self.rebuild();
        }
        None
    }

    /// Rebuild the map with full nodes. A B-tree grown by inserts keeps its nodes between
    /// half and fully used (topics added in order leave them half full): for a million
    /// retained topics that is tens of megabytes. `append` merges in one pass that frees the
    /// old nodes as it fills new ones, without a copy of the whole map: `O(n)`, once per
    /// quarter of growth.
    fn rebuild(&mut self) {
        self.added = 0;
        let mut old = std::mem::take(&mut self.map);
        if let Some((t, v)) = old.pop_first() {
            self.map.insert(t, v);
            self.map.append(&mut old);
        }
    }

    /// Retain each value for its topic (owned already). Into an empty store they are built
    /// at once, with full nodes (random inserts leave nodes about half full).
    pub fn extend(&mut self, entries: Vec<(Box<str>, V)>) {
        if self.map.is_empty() {
            self.map = entries.into_iter().collect();
        } else {
            self.map.extend(entries);
            self.rebuild();
        }
    }

    /// Forget the value retained for `topic`.
    pub fn remove(&mut self, topic: &str) -> Option<V> {
        self.map.remove(topic)
    }

    /// Call `f` with each topic that matches `filter` and comes after `after` (from the first
    /// when `None`), in topic order, with its value, while `f` returns `true`. Returns `true`
    /// when the scan went to the end, `false` when `f` stopped it.
    pub fn scan<'a>(
        &'a self,
        filter: &str,
        after: Option<&str>,
        mut f: impl FnMut(&'a str, &'a V) -> bool,
    ) -> bool {
        let Some(prefix) = literal_prefix(filter) else {
            // No wildcard: the topic itself.
            return match self.map.get_key_value(filter) {
                Some((t, v)) if after.is_none_or(|a| a < &**t) => {
                    f(t, v);
                    true
                }
                _ => true,
            };
        };
        let start = match after {
            Some(a) if a >= prefix => Bound::Excluded(a),
            _ => Bound::Included(prefix),
        };
        for (t, v) in self.map.range::<str, _>((start, Bound::Unbounded)) {
            if !t.starts_with(prefix) {
                break;
            }
            if matches(t, filter) && !f(t, v) {
                return false;
            }
        }
        true
    }

    /// Call `f` with every topic that matches `filter` and its value, in topic order.
    pub fn for_each_match<'a>(&'a self, filter: &str, mut f: impl FnMut(&'a str, &'a V)) {
        self.scan(filter, None, |t, v| {
            f(t, v);
            true
        });
    }

    /// The values whose topic matches `filter`, in topic order.
    #[cfg(any(test, feature = "fuzzing"))]
    pub fn matching(&self, filter: &str) -> Vec<V>
    where
        V: Clone,
    {
        let mut out = Vec::new();
        self.for_each_match(filter, |_, v| out.push(v.clone()));
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
            .field("len", &self.map.len())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

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
    fn scans_go_in_topic_order_and_resume_after_a_topic() {
        let s = store(&["a/2", "a", "a/1/x", "ab/1", "b/1", "a/3"]);
        let mut seen = Vec::new();
        assert!(s.scan("a/#", None, |t, _| {
            seen.push(t.to_string());
            true
        }));
        assert_eq!(seen, ["a", "a/1/x", "a/2", "a/3"]);
        seen.clear();
        assert!(!s.scan("a/+", Some("a/1/x"), |t, _| {
            seen.push(t.to_string());
            false
        }));
        assert_eq!(seen, ["a/2"]);
        // After a topic the filter does not match, and after the last one.
        assert_eq!(s.matching("+/1").len(), 2);
        let mut n = 0;
        assert!(s.scan("+/1", Some("ab/1"), |_, _| {
            n += 1;
            true
        }));
        assert_eq!(n, 1);
        assert!(s.scan("a/3", Some("a/3"), |_, _| unreachable!()));
    }

    #[test]
    fn rebuilding_keeps_every_topic_in_order() {
        let mut s = RetainedStore::new();
        let n = REBUILD_AFTER + 10;
        for i in (0..n).rev() {
            s.insert(&format!("t/{i:06}"), i);
        }
        assert_eq!(s.added, 10, "rebuilt once the map had grown by REBUILD_AFTER");
        assert_eq!(s.len(), n);
        assert_eq!(s.matching("t/#"), (0..n).collect::<Vec<_>>());
        assert_eq!(s.insert("t/000005", 99), Some(5));
        assert_eq!(s.remove("t/000006"), Some(6));
        assert_eq!(s.len(), n - 1);
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
            assert_eq!(s.len(), 1);
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

    /// A level: a few special ones, or one of a dozen names.
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
                        prop_assert_eq!(&got, &want, "filter {:?}", f);
                        // In topic order, and resumable after any topic, 3 at a time.
                        let mut resumed = Vec::new();
                        let mut after: Option<String> = None;
                        loop {
                            let mut n = 0;
                            let mut last = None;
                            let done = s.scan(f, after.as_deref(), |t, v| {
                                if n == 3 {
                                    return false;
                                }
                                n += 1;
                                last = Some(t.to_string());
                                resumed.push(v.clone());
                                true
                            });
                            if done {
                                break;
                            }
                            after = last;
                        }
                        prop_assert_eq!(resumed, want, "filter {:?} resumed", f);
                    }
                }
                prop_assert_eq!(s.len(), model.len());
            }
            for t in model.keys() {
                prop_assert!(s.contains(t));
                prop_assert!(s.remove(t).is_some());
            }
            prop_assert_eq!(s.len(), 0);
        }
    }
}
