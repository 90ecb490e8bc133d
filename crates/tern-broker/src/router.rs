//! The subscription trie: literal, `+` and `#` children per level; shared
//! subscription groups; one walk per published topic.

use rustc_hash::FxHashMap as HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tern_proto::SubscriptionOptions;

use crate::session::SessionCell;

/// One subscription of one session.
#[derive(Debug, Clone)]
pub(crate) struct SubEntry {
    pub options: SubscriptionOptions,
    pub id: Option<u32>,
    pub session: Arc<SessionCell>,
    /// For a shared subscription, its full filter (`$share/{group}/{filter}`).
    pub shared: Option<Arc<str>>,
}

#[derive(Debug, Default)]
struct SharedGroup {
    members: Vec<(Arc<str>, SubEntry)>,
    next: AtomicUsize,
}

#[derive(Debug, Default)]
struct Node {
    children: HashMap<Box<str>, Node>,
    subs: HashMap<Arc<str>, SubEntry>,
    shared: HashMap<Box<str>, SharedGroup>,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.children.is_empty() && self.subs.is_empty() && self.shared.is_empty()
    }
}

/// Matching subscriptions for one topic, as the router reports them.
pub(crate) enum Match<'a> {
    /// An ordinary subscription.
    Normal(&'a Arc<str>, &'a SubEntry),
    /// The member chosen from a shared group.
    Shared(&'a SubEntry),
}

/// All subscriptions of all sessions.
///
/// ### Invariants
/// A session appears at most once per (filter, share group); nodes without
/// subscriptions or children are removed, so the trie's size is bounded by the
/// live subscriptions.
#[derive(Debug, Default)]
pub(crate) struct Router {
    root: Node,
    count: usize,
}

impl Router {
    /// Add or replace a subscription; `true` when it already existed.
    pub fn subscribe(
        &mut self,
        filter: &str,
        group: Option<&str>,
        client: &Arc<str>,
        entry: SubEntry,
    ) -> bool {
        let mut node = &mut self.root;
        for level in filter.split('/') {
            node = node.children.entry(level.into()).or_default();
        }
        let existed = match group {
            None => node.subs.insert(client.clone(), entry).is_some(),
            Some(g) => {
                let group = node.shared.entry(g.into()).or_default();
                if let Some(m) = group.members.iter_mut().find(|(c, _)| c == client) {
                    m.1 = entry;
                    true
                } else {
                    group.members.push((client.clone(), entry));
                    false
                }
            }
        };
        if !existed {
            self.count += 1;
        }
        existed
    }

    /// Remove a subscription; `true` when it existed.
    pub fn unsubscribe(&mut self, filter: &str, group: Option<&str>, client: &Arc<str>) -> bool {
        let levels: Vec<&str> = filter.split('/').collect();
        let removed = remove(&mut self.root, &levels, group, client);
        if removed {
            self.count -= 1;
        }
        removed
    }

    /// Number of subscriptions.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Call `f` for every subscription matching `topic`; one member per shared group.
    pub fn for_each_match<'a>(&'a self, topic: &str, mut f: impl FnMut(Match<'a>)) {
        // The level iterator is cloned at each `+` branch: no allocation per publish.
        let dollar = topic.starts_with('$');
        walk(&self.root, topic.split('/'), 0, dollar, &mut f);
    }
}

fn remove(node: &mut Node, levels: &[&str], group: Option<&str>, client: &Arc<str>) -> bool {
    let Some((first, rest)) = levels.split_first() else {
        return match group {
            None => node.subs.remove(client).is_some(),
            Some(g) => {
                let Some(grp) = node.shared.get_mut(g) else {
                    return false;
                };
                let before = grp.members.len();
                grp.members.retain(|(c, _)| c != client);
                let removed = grp.members.len() != before;
                if grp.members.is_empty() {
                    node.shared.remove(g);
                }
                removed
            }
        };
    };
    let Some(child) = node.children.get_mut(*first) else {
        return false;
    };
    let removed = remove(child, rest, group, client);
    if child.is_empty() {
        node.children.remove(*first);
    }
    removed
}

fn emit<'a>(node: &'a Node, f: &mut impl FnMut(Match<'a>)) {
    for (c, e) in &node.subs {
        f(Match::Normal(c, e));
    }
    for g in node.shared.values() {
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

fn walk<'a>(
    node: &'a Node,
    mut levels: std::str::Split<'_, char>,
    depth: usize,
    dollar: bool,
    f: &mut impl FnMut(Match<'a>),
) {
    // [MQTT-4.7.2-1]: wildcards at the first level do not match `$` topics.
    let wild_ok = !(dollar && depth == 0);
    if wild_ok {
        if let Some(hash) = node.children.get("#") {
            emit(hash, f);
        }
    }
    let Some(first) = levels.next() else {
        emit(node, f);
        return;
    };
    if let Some(child) = node.children.get(first) {
        walk(child, levels.clone(), depth + 1, dollar, f);
    }
    if wild_ok {
        if let Some(plus) = node.children.get("+") {
            walk(plus, levels, depth + 1, dollar, f);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(cell: &Arc<SessionCell>) -> SubEntry {
        SubEntry {
            options: Default::default(),
            id: None,
            session: cell.clone(),
            shared: None,
        }
    }

    /// The trie recurses once per level: at the deepest filter the configuration allows, on
    /// a quarter of a tokio worker's 2 MiB stack, subscribing, matching, unsubscribing and
    /// dropping all work.
    #[test]
    fn the_deepest_allowed_topics_fit_in_a_small_stack() {
        let levels = crate::config::MAX_TOPIC_LEVELS;
        let run = move || {
            let cell = Arc::new(SessionCell::new(
                Arc::from("deep"),
                tern_proto::ProtocolVersion::V5,
            ));
            let client: Arc<str> = Arc::from("deep");
            let topic = vec!["a"; levels].join("/");
            let plus = vec!["+"; levels - 1].join("/") + "/#";
            let mut r = Router::default();
            r.subscribe(&topic, None, &client, entry(&cell));
            r.subscribe(&plus, None, &client, entry(&cell));
            r.subscribe(&topic, Some("g"), &client, entry(&cell));
            let mut matched = 0;
            r.for_each_match(&topic, |_| matched += 1);
            assert_eq!(matched, 3);
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
}
