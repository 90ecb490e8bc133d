//! The topic encoding (design §3.1): every MQTT topic round-trips through its NATS subject,
//! and an MQTT filter matches a topic exactly when NATS matches one of the filter's subjects
//! against the topic's subject (`#` and `+`: v3.1.1 [MQTT-4.7.1-2], v5 [MQTT-4.7.1-1],
//! v5 [MQTT-4.7.1-2]; `$` topics: v3.1.1+v5 [MQTT-4.7.2-1]).

use proptest::prelude::*;
use tern_cluster::topic::{decode_subject, encode_filter, encode_topic};

/// NATS subject matching: `*` is one token, a last `>` is one or more tokens.
fn nats_match(filter: &str, subject: &str) -> bool {
    let f: Vec<&str> = filter.split('.').collect();
    let s: Vec<&str> = subject.split('.').collect();
    for (i, t) in f.iter().enumerate() {
        match *t {
            ">" => return s.len() > i,
            "*" if i < s.len() => {}
            t if i < s.len() && s[i] == t => {}
            _ => return false,
        }
    }
    f.len() == s.len()
}

/// Whether every token is one NATS accepts in a published subject.
fn valid_subject(s: &str) -> bool {
    s.split('.')
        .all(|t| !t.is_empty() && t != "*" && t != ">" && t.bytes().all(|b| b > b' ' && b != 0x7f))
}

fn level() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just("$".to_string()),
        Just(".".to_string()),
        Just(" ".to_string()),
        Just("*".to_string()),
        Just(">".to_string()),
        Just("=".to_string()),
        Just("=2E".to_string()),
        Just("a".to_string()),
        Just("ö".to_string()),
        "[a-c.*> $=ö\u{7f}\t-]{1,4}",
        "\\PC{1,3}",
    ]
}

fn topic() -> impl Strategy<Value = String> {
    prop::collection::vec(level(), 1..5)
        .prop_map(|l| l.join("/"))
        .prop_filter("a topic is not empty and has no wildcard or NUL", |t| {
            !t.is_empty() && !t.contains(['+', '#', '\0'])
        })
}

/// A filter made from `topic`: some levels become `+`, maybe the tail becomes `#`.
fn filter_from(topic: &str, plus: &[bool], hash_at: Option<usize>) -> String {
    let mut levels: Vec<String> = topic
        .split('/')
        .enumerate()
        .map(|(i, l)| {
            if plus.get(i) == Some(&true) {
                "+".into()
            } else {
                l.into()
            }
        })
        .collect();
    if let Some(at) = hash_at {
        levels.truncate(at.min(levels.len()));
        levels.push("#".into());
    }
    levels.join("/")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]

    #[test]
    fn every_topic_round_trips_through_a_valid_subject(t in topic()) {
        let s = encode_topic("tern.t", &t);
        prop_assert!(valid_subject(&s), "{s}");
        let back = decode_subject("tern.t", &s);
        prop_assert_eq!(back.as_deref(), Ok(t.as_str()));
    }

    #[test]
    fn an_mqtt_filter_matches_exactly_when_nats_does(
        t in topic(),
        other in topic(),
        plus in prop::collection::vec(any::<bool>(), 5),
        hash_at in prop::option::of(0usize..5),
        use_other in any::<bool>(),
    ) {
        let base = if use_other { &other } else { &t };
        let f = filter_from(base, &plus, hash_at);
        prop_assume!(tern_proto::topic::validate_topic_filter(&f).is_ok());
        let mqtt = tern_proto::topic::matches(&t, &f);
        let subject = encode_topic("", &t);
        let nats = encode_filter("", &f).iter().any(|fs| nats_match(fs, &subject));
        prop_assert_eq!(mqtt, nats, "filter {:?} topic {:?} subjects {:?} {}", f, t, encode_filter("", &f), subject);
    }
}
