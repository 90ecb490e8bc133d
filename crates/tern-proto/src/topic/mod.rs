//! Topic names and topic filters: validation, shared subscriptions, matching
//! (specification section 4.7 and 4.8.2).

mod matches;

pub use matches::matches;

/// Why a topic name or topic filter is not valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TopicError {
    /// Empty topic names and filters are not allowed ([MQTT-4.7.3-1]).
    #[error("[MQTT-4.7.3-1] topic is empty")]
    Empty,
    /// A topic name contains `+` or `#` ([MQTT-3.3.2-2], [MQTT-4.7.0-1]).
    #[error("[MQTT-3.3.2-2] topic name contains a wildcard")]
    WildcardInName,
    /// `#` that is not alone in the last level ([MQTT-4.7.1-2]).
    #[error("[MQTT-4.7.1-2] '#' must be the last character and occupy a whole level")]
    MultiLevelMisplaced,
    /// `+` that does not occupy a whole level ([MQTT-4.7.1-3]).
    #[error("[MQTT-4.7.1-3] '+' must occupy a whole level")]
    SingleLevelMisplaced,
    /// A topic contains U+0000 ([MQTT-4.7.3-2]).
    #[error("[MQTT-4.7.3-2] topic contains U+0000")]
    NullCharacter,
    /// Longer than 65,535 bytes ([MQTT-4.7.3-3]).
    #[error("[MQTT-4.7.3-3] topic longer than 65,535 bytes")]
    TooLong,
    /// A shared subscription whose ShareName is empty or contains `/`, `+` or `#`
    /// ([MQTT-4.8.2-1]), or that has no filter after it ([MQTT-4.8.2-2]).
    #[error("[MQTT-4.8.2-1] invalid shared subscription")]
    InvalidShare,
}

/// Check a topic name (as in PUBLISH): not empty, no wildcards, no U+0000.
pub fn validate_topic_name(topic: &str) -> Result<(), TopicError> {
    if topic.is_empty() {
        return Err(TopicError::Empty);
    }
    if topic.len() > u16::MAX as usize {
        return Err(TopicError::TooLong);
    }
    for b in topic.bytes() {
        match b {
            b'+' | b'#' => return Err(TopicError::WildcardInName),
            0 => return Err(TopicError::NullCharacter),
            _ => {}
        }
    }
    Ok(())
}

/// Check a topic filter (without a `$share/` prefix): wildcards in whole levels,
/// `#` only last.
pub fn validate_topic_filter(filter: &str) -> Result<(), TopicError> {
    if filter.is_empty() {
        return Err(TopicError::Empty);
    }
    if filter.len() > u16::MAX as usize {
        return Err(TopicError::TooLong);
    }
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        let last = levels.peek().is_none();
        if level.as_bytes().contains(&0) {
            return Err(TopicError::NullCharacter);
        }
        if level.contains('#') && (level != "#" || !last) {
            return Err(TopicError::MultiLevelMisplaced);
        }
        if level.contains('+') && level != "+" {
            return Err(TopicError::SingleLevelMisplaced);
        }
    }
    Ok(())
}

/// A topic filter split into its share group (if any) and the filter proper.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParsedFilter<'a> {
    /// The ShareName of a `$share/{ShareName}/{filter}` subscription.
    pub share_group: Option<&'a str>,
    /// The filter that topics are matched against.
    pub filter: &'a str,
}

/// Validate a subscription's topic filter, recognising shared subscriptions
/// `$share/{ShareName}/{filter}` (v5 section 4.8.2).
pub fn parse_filter(full: &str) -> Result<ParsedFilter<'_>, TopicError> {
    if let Some(rest) = full.strip_prefix("$share/") {
        let (group, filter) = rest.split_once('/').ok_or(TopicError::InvalidShare)?;
        if group.is_empty() || group.contains(['+', '#']) || filter.is_empty() {
            return Err(TopicError::InvalidShare);
        }
        validate_topic_filter(filter)?;
        Ok(ParsedFilter {
            share_group: Some(group),
            filter,
        })
    } else if full == "$share" {
        Err(TopicError::InvalidShare)
    } else {
        validate_topic_filter(full)?;
        Ok(ParsedFilter {
            share_group: None,
            filter: full,
        })
    }
}

/// Whether a filter contains `+` or `#`.
pub fn has_wildcards(filter: &str) -> bool {
    filter.contains(['+', '#'])
}

/// The levels of a topic name or filter, as `s.split('/')` gives them (an empty string is
/// one empty level), found by a plain byte loop: faster than `split` for the few short
/// levels of a typical topic, which every publish walks.
pub fn levels(s: &str) -> Levels<'_> {
    Levels { rest: Some(s) }
}

/// Iterator of [`levels`].
#[derive(Debug, Clone)]
pub struct Levels<'a> {
    rest: Option<&'a str>,
}

impl<'a> Iterator for Levels<'a> {
    type Item = &'a str;

    #[inline]
    fn next(&mut self) -> Option<&'a str> {
        let rest = self.rest?;
        match rest.bytes().position(|b| b == b'/') {
            Some(i) => {
                // `/` is one byte: both sides of it are on character boundaries.
                self.rest = rest.get(i + 1..);
                rest.get(..i)
            }
            None => {
                self.rest = None;
                Some(rest)
            }
        }
    }
}

/// The number of levels of a topic name or filter (`s.split('/').count()`).
pub fn level_count(s: &str) -> usize {
    1 + s.bytes().filter(|&b| b == b'/').count()
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        #[test]
        fn levels_are_those_of_split(s in "[a-c/+#\u{e9}\u{1F600}]{0,24}") {
            let split: Vec<&str> = s.split('/').collect();
            proptest::prop_assert_eq!(levels(&s).collect::<Vec<_>>(), split.clone());
            proptest::prop_assert_eq!(level_count(&s), split.len());
        }
    }

    #[test]
    fn topic_names() {
        assert_eq!(validate_topic_name("a/b"), Ok(()));
        assert_eq!(validate_topic_name("/"), Ok(()));
        // v3.1.1+v5 [MQTT-4.7.3-1]
        assert_eq!(validate_topic_name(""), Err(TopicError::Empty));
        // v3.1.1+v5 [MQTT-3.3.2-2]
        assert_eq!(validate_topic_name("a/+"), Err(TopicError::WildcardInName));
        assert_eq!(validate_topic_name("a/#"), Err(TopicError::WildcardInName));
        // v3.1.1+v5 [MQTT-4.7.3-2]
        assert_eq!(validate_topic_name("a\0b"), Err(TopicError::NullCharacter));
    }

    #[test]
    fn topic_filters_follow_mqtt_4_7_1() {
        for ok in [
            "#",
            "+",
            "a/#",
            "+/+",
            "/+",
            "a/+/b",
            "sport/tennis/#",
            "+/tennis/#",
            "/",
        ] {
            assert_eq!(validate_topic_filter(ok), Ok(()), "{ok}");
        }
        // v3.1.1 [MQTT-4.7.1-2] / v5 [MQTT-4.7.1-1]
        for bad in ["a/#/b", "a#", "#/", "sport/tennis#"] {
            assert_eq!(
                validate_topic_filter(bad),
                Err(TopicError::MultiLevelMisplaced),
                "{bad}"
            );
        }
        // v3.1.1 [MQTT-4.7.1-3] / v5 [MQTT-4.7.1-2]
        for bad in ["a+/b", "+a", "sport+"] {
            assert_eq!(
                validate_topic_filter(bad),
                Err(TopicError::SingleLevelMisplaced),
                "{bad}"
            );
        }
        assert_eq!(validate_topic_filter(""), Err(TopicError::Empty));
    }

    #[test]
    fn shared_subscriptions_follow_mqtt_4_8_2() {
        assert_eq!(
            parse_filter("$share/g/a/+"),
            Ok(ParsedFilter {
                share_group: Some("g"),
                filter: "a/+"
            })
        );
        assert_eq!(
            parse_filter("a/b"),
            Ok(ParsedFilter {
                share_group: None,
                filter: "a/b"
            })
        );
        // v5 [MQTT-4.8.2-1] v5 [MQTT-4.8.2-2]
        for bad in [
            "$share/",
            "$share//a",
            "$share/a+b/c",
            "$share/name",
            "$share/na#/x",
            "$share/g/",
        ] {
            assert!(parse_filter(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_filter("$share/g/a#"), Err(TopicError::MultiLevelMisplaced));
    }
}
