//! Fuzz target: the broker's subscription trie (`Router`) against a plain list
//! of subscriptions, each tested with `topic::matches`.
//!
//! Subscribe and unsubscribe must report whether the subscription existed and
//! keep the count in step. Every publish must reach exactly the ordinary
//! subscriptions whose filter matches the topic, each with its latest tag, and
//! exactly one member of each share group whose filter matches.
#![no_main]

use std::collections::{BTreeMap, BTreeSet};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use tern_broker::fuzzing::{Matched, Router};
use tern_fuzz::Levels;
use tern_proto::topic::matches;

#[derive(Arbitrary, Debug)]
enum Op {
    Subscribe(Sub),
    Unsubscribe(Sub),
    Publish(Levels),
}

/// A subscription: a filter, maybe a share group (of three), a client (of four).
#[derive(Arbitrary, Debug)]
struct Sub {
    filter: Levels,
    group: Option<u8>,
    client: u8,
}

/// (filter, share group, client), when the filter is valid.
type Key = (String, Option<String>, String);

impl Sub {
    fn key(&self) -> Option<Key> {
        let group = self.group.map(|g| format!("g{}", g % 3));
        Some((self.filter.filter()?, group, format!("c{}", self.client % 4)))
    }
}

fuzz_target!(|ops: Vec<Op>| {
    let mut router = Router::default();
    // Subscription → its tag.
    let mut model: BTreeMap<Key, u32> = BTreeMap::new();
    for (tag, op) in (0u32..).zip(ops) {
        match op {
            Op::Subscribe(sub) => {
                let Some((filter, group, client)) = sub.key() else {
                    continue;
                };
                let existed = router.subscribe(&filter, group.as_deref(), &client, tag);
                assert_eq!(existed, model.insert((filter, group, client), tag).is_some());
            }
            Op::Unsubscribe(sub) => {
                let Some(key) = sub.key() else { continue };
                let existed = router.unsubscribe(&key.0, key.1.as_deref(), &key.2);
                assert_eq!(existed, model.remove(&key).is_some());
            }
            Op::Publish(topic) => {
                let Some(topic) = topic.topic() else { continue };
                check_publish(&router, &model, &topic);
            }
        }
        assert_eq!(router.len(), model.len());
    }
});

fn check_publish(router: &Router, model: &BTreeMap<Key, u32>, topic: &str) {
    let (shared, mut normal): (Vec<Matched>, Vec<Matched>) = router
        .matches(topic)
        .into_iter()
        .partition(|m| m.shared.is_some());
    normal.sort();
    let mut want = Vec::new();
    let mut groups: BTreeMap<String, Vec<Matched>> = BTreeMap::new();
    for ((filter, group, client), &tag) in model {
        if !matches(topic, filter) {
            continue;
        }
        let full = group.as_ref().map(|g| format!("$share/{g}/{filter}"));
        let m = Matched {
            client: client.clone(),
            shared: full.clone(),
            tag,
        };
        match full {
            None => want.push(m),
            Some(full) => groups.entry(full).or_default().push(m),
        }
    }
    want.sort();
    assert_eq!(normal, want, "topic {topic:?}");
    // One member of each matching group, and a member of that group.
    let chosen: BTreeSet<&str> = shared.iter().filter_map(|m| m.shared.as_deref()).collect();
    assert_eq!(
        chosen.len(),
        shared.len(),
        "a group chose twice for {topic:?}: {shared:?}"
    );
    assert_eq!(
        chosen.len(),
        groups.len(),
        "topic {topic:?}: {shared:?} vs {groups:?}"
    );
    for m in &shared {
        let members = m.shared.as_ref().and_then(|f| groups.get(f));
        assert!(
            members.is_some_and(|ms| ms.contains(m)),
            "topic {topic:?}: {m:?} is no member"
        );
    }
}
