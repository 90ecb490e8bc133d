//! Matching one topic name against one topic filter.

/// Whether `topic` (a valid topic name) matches `filter` (a valid topic filter,
/// without a `$share/` prefix).
///
/// A filter starting with a wildcard does not match a topic starting with `$`
/// ([MQTT-4.7.2-1]); `#` also matches the parent level (`sport/#` matches
/// `sport`, section 4.7.1.2).
pub fn matches(topic: &str, filter: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut t = topic.split('/');
    let mut f = filter.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(fl), Some(tl)) if fl == tl => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn spec_examples_of_section_4_7_1() {
        // Multi-level wildcard, 4.7.1.2.
        assert!(matches("sport/tennis/player1", "sport/tennis/player1/#"));
        assert!(matches("sport/tennis/player1/ranking", "sport/tennis/player1/#"));
        assert!(matches(
            "sport/tennis/player1/score/wimbledon",
            "sport/tennis/player1/#"
        ));
        assert!(matches("sport", "sport/#"));
        // Single-level wildcard, 4.7.1.3.
        assert!(matches("sport/tennis/player1", "sport/tennis/+"));
        assert!(matches("sport/tennis/player2", "sport/tennis/+"));
        assert!(!matches("sport/tennis/player1/ranking", "sport/tennis/+"));
        assert!(!matches("sport", "sport/+"));
        assert!(matches("sport/", "sport/+"));
        assert!(matches("/finance", "+/+"));
        assert!(matches("/finance", "/+"));
        assert!(!matches("/finance", "+"));
        assert!(matches("a", "#"));
        assert!(matches("a/b/c", "#"));
        assert!(!matches("a/b", "a/c"));
        assert!(!matches("a", "a/b"));
    }

    #[test]
    fn dollar_topics_mqtt_4_7_2_1() {
        // v3.1.1+v5 [MQTT-4.7.2-1]
        assert!(!matches("$SYS/broker/clients", "#"));
        assert!(!matches("$SYS/monitor/Clients", "+/monitor/Clients"));
        assert!(matches("$SYS/monitor/Clients", "$SYS/#"));
        assert!(matches("$SYS/monitor/Clients", "$SYS/monitor/+"));
    }
}
