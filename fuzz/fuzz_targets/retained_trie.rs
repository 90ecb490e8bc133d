//! Fuzz target: the broker's retained-message index against a plain map whose
//! topics are tested one by one with `topic::matches`.
//!
//! Insert, remove and get must return what the map returns, the count must
//! follow, and every query by filter must give exactly the values whose topic
//! matches it.
#![no_main]

use std::collections::BTreeMap;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use tern_broker::fuzzing::Retained;
use tern_fuzz::Levels;
use tern_proto::topic::matches;

#[derive(Arbitrary, Debug)]
enum Op {
    Insert(Levels),
    Remove(Levels),
    Get(Levels),
    Query(Levels),
}

fuzz_target!(|ops: Vec<Op>| {
    let mut store: Retained<(String, u32)> = Retained::default();
    let mut model: BTreeMap<String, u32> = BTreeMap::new();
    for (n, op) in (0u32..).zip(ops) {
        match op {
            Op::Insert(t) => {
                let Some(t) = t.topic() else { continue };
                let old = model.insert(t.clone(), n).map(|m| (t.clone(), m));
                assert_eq!(store.insert(&t, (t.clone(), n)), old);
            }
            Op::Remove(t) => {
                let Some(t) = t.topic() else { continue };
                assert_eq!(store.remove(&t), model.remove(&t).map(|m| (t, m)));
            }
            Op::Get(t) => {
                let Some(t) = t.topic() else { continue };
                assert_eq!(store.get(&t).map(|(_, n)| *n), model.get(&t).copied());
            }
            Op::Query(f) => {
                let Some(f) = f.filter() else { continue };
                let mut got = store.matching(&f);
                got.sort();
                let want: Vec<(String, u32)> = model
                    .iter()
                    .filter(|(t, _)| matches(t, &f))
                    .map(|(t, n)| (t.clone(), *n))
                    .collect();
                assert_eq!(got, want, "filter {f:?}");
            }
        }
        assert_eq!(store.len(), model.len());
    }
    // Everything can be removed again.
    for t in model.keys() {
        assert!(store.remove(t).is_some());
    }
    assert!(store.is_empty());
});
