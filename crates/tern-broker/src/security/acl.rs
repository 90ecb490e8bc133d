//! The access control list: who may publish to, subscribe to and receive which
//! topics.
//!
//! ```text
//! # Rules before the first `user` line apply to anonymous clients.
//! topic read public/#
//! user alice
//! topic readwrite alice/#
//! topic deny alice/secret/#
//! # `pattern` rules apply to every client; %u is the user name, %c the client id.
//! pattern write devices/%c/status
//! pattern read users/%u/#
//! ```
//!
//! Access words (comma-separated lists allowed, e.g. `publish,receive`):
//! `publish` (alias `write`), `subscribe`, `receive`, `read` (= subscribe and
//! receive), `readwrite` (all three) and `deny` (none, and it overrides every rule
//! that allows). A missing access word means `readwrite`.
//!
//! Decisions: a PUBLISH is allowed when an applicable rule with `publish` matches
//! its topic; a SUBSCRIBE filter when a rule with `subscribe` covers every topic
//! the filter can match; a message is delivered to a client when a rule with
//! `receive` matches its topic. A `deny` rule that matches (covers, for a
//! filter) wins. Nothing else is allowed: an empty file denies everything
//! (RELIABILITY.md I1).
//!
//! `%u`/`%c` rules are skipped for a client whose user name or client id is empty
//! or contains `+`, `#` or `/`, so that those characters cannot widen a rule
//! (CVE-2017-7650).

use std::collections::HashMap;

use tern_proto::topic;

/// What a client wants to do with a topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    /// PUBLISH to a topic name (wills included).
    Publish,
    /// SUBSCRIBE with a filter.
    Subscribe,
    /// Receive a message published on a topic name.
    Receive,
}

const PUBLISH: u8 = 1;
const SUBSCRIBE: u8 = 2;
const RECEIVE: u8 = 4;
const DENY: u8 = 8;

impl Action {
    fn bit(self) -> u8 {
        match self {
            Action::Publish => PUBLISH,
            Action::Subscribe => SUBSCRIBE,
            Action::Receive => RECEIVE,
        }
    }
}

#[derive(Debug, Clone)]
struct Rule {
    access: u8,
    filter: String,
}

/// A parsed ACL file.
#[derive(Debug, Clone, Default)]
pub(crate) struct Acl {
    anonymous: Vec<Rule>,
    users: HashMap<String, Vec<Rule>>,
    patterns: Vec<Rule>,
}

fn parse_access(word: &str) -> Option<u8> {
    let mut bits = 0;
    for w in word.split(',') {
        bits |= match w {
            "publish" | "write" => PUBLISH,
            "subscribe" => SUBSCRIBE,
            "receive" => RECEIVE,
            "read" => SUBSCRIBE | RECEIVE,
            "readwrite" => PUBLISH | SUBSCRIBE | RECEIVE,
            "deny" => DENY,
            _ => return None,
        };
    }
    Some(bits)
}

/// A value substituted into a pattern must not be empty nor act as a wildcard or level separator.
fn safe_value(v: &str) -> bool {
    !v.is_empty() && !v.contains(['+', '#', '/'])
}

/// Whether every topic that `sub` can match is matched by `rule` (both valid filters).
fn covers(rule: &str, sub: &str) -> bool {
    // [MQTT-4.7.2-1]: a leading wildcard does not match topics starting with '$'.
    if sub.starts_with('$') && (rule.starts_with('+') || rule.starts_with('#')) {
        return false;
    }
    let mut r = rule.split('/');
    let mut s = sub.split('/');
    loop {
        match (r.next(), s.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(level)) if level != "#" => {}
            (Some(a), Some(b)) if a == b && a != "+" && b != "#" => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

impl Acl {
    /// Parse the text of an ACL file; errors name the line.
    pub fn parse(text: &str) -> Result<Acl, String> {
        let mut acl = Acl::default();
        let mut user: Option<String> = None;
        for (i, raw) in text.lines().enumerate() {
            let line_no = i + 1;
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (keyword, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
            let rest = rest.trim();
            let err = |what: &str| format!("line {line_no}: {what}");
            match keyword {
                "user" => {
                    if rest.is_empty() {
                        return Err(err("`user` needs a user name"));
                    }
                    user = Some(rest.to_string());
                    acl.users.entry(rest.to_string()).or_default();
                }
                "topic" | "pattern" => {
                    let (access, filter) = match rest.split_once(char::is_whitespace) {
                        Some((a, f)) => (parse_access(a), f.trim()),
                        None => (parse_access(rest), ""),
                    };
                    let (access, filter) = match access {
                        Some(bits) => (bits, filter),
                        None => (PUBLISH | SUBSCRIBE | RECEIVE, rest),
                    };
                    if filter.is_empty() {
                        return Err(err("missing topic filter"));
                    }
                    if filter.contains(char::is_whitespace) {
                        return Err(err(
                            "unknown access word (use read, write, readwrite, publish, subscribe, receive or deny) or a space in the filter",
                        ));
                    }
                    let probe = filter.replace("%u", "u").replace("%c", "c");
                    match topic::parse_filter(&probe) {
                        Ok(p) if p.share_group.is_none() => {}
                        _ => return Err(err(&format!("`{filter}` is not a valid topic filter"))),
                    }
                    let rule = Rule {
                        access,
                        filter: filter.to_string(),
                    };
                    if keyword == "pattern" {
                        acl.patterns.push(rule);
                    } else {
                        match &user {
                            Some(u) => acl.users.entry(u.clone()).or_default().push(rule),
                            None => acl.anonymous.push(rule),
                        }
                    }
                }
                other => {
                    return Err(err(&format!(
                        "unknown keyword `{other}`; use `user`, `topic` or `pattern`"
                    )))
                }
            }
        }
        Ok(acl)
    }

    /// Whether `username`/`client_id` may do `action` with `target` (a topic name for
    /// publish and receive, a filter for subscribe, without any `$share/group/`).
    pub fn allows(&self, action: Action, username: Option<&str>, client_id: &str, target: &str) -> bool {
        let own: &[Rule] = match username {
            Some(u) => self.users.get(u).map_or(&[], Vec::as_slice),
            None => &self.anonymous,
        };
        let applies = |filter: &str| match action {
            Action::Subscribe => covers(filter, target),
            Action::Publish | Action::Receive => topic::matches(target, filter),
        };
        let mut allowed = false;
        let mut consider = |access: u8, filter: &str| -> bool {
            if applies(filter) {
                if access & DENY != 0 {
                    return false;
                }
                allowed |= access & action.bit() != 0;
            }
            true
        };
        for r in own {
            if !consider(r.access, &r.filter) {
                return false;
            }
        }
        for r in &self.patterns {
            let mut filter = r.filter.clone();
            if filter.contains("%u") {
                match username {
                    Some(u) if safe_value(u) => filter = filter.replace("%u", u),
                    _ => continue,
                }
            }
            if filter.contains("%c") {
                if !safe_value(client_id) {
                    continue;
                }
                filter = filter.replace("%c", client_id);
            }
            if !consider(r.access, &filter) {
                return false;
            }
        }
        allowed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Action::*;

    const FILE: &str = "\
# anonymous
topic read public/#
user alice
topic readwrite alice/#
topic deny alice/secret/#
topic publish,receive shared/+/x
user bob
topic subscribe everything/#
pattern write devices/%c/status
pattern read users/%u/#
";

    #[test]
    fn user_rules() {
        let acl = Acl::parse(FILE).unwrap();
        assert!(acl.allows(Publish, Some("alice"), "c", "alice/a"));
        assert!(acl.allows(Subscribe, Some("alice"), "c", "alice/+/b"));
        assert!(acl.allows(Subscribe, Some("alice"), "c", "alice/#"));
        assert!(!acl.allows(Publish, Some("alice"), "c", "alice/secret/x"));
        assert!(!acl.allows(Receive, Some("alice"), "c", "alice/secret/x"));
        assert!(!acl.allows(Subscribe, Some("alice"), "c", "alice/secret/#"));
        assert!(!acl.allows(Subscribe, Some("alice"), "c", "#"));
        assert!(acl.allows(Publish, Some("alice"), "c", "shared/1/x"));
        assert!(!acl.allows(Subscribe, Some("alice"), "c", "shared/1/x"));
        assert!(!acl.allows(Publish, Some("bob"), "c", "alice/a"));
        assert!(acl.allows(Subscribe, Some("bob"), "c", "everything/a/#"));
        assert!(!acl.allows(Receive, Some("bob"), "c", "everything/a"));
        // Anonymous rules are for anonymous clients only.
        assert!(acl.allows(Subscribe, None, "c", "public/+"));
        assert!(acl.allows(Receive, None, "c", "public/a"));
        assert!(!acl.allows(Publish, None, "c", "public/a"));
        assert!(!acl.allows(Receive, Some("alice"), "c", "public/a"));
    }

    #[test]
    fn patterns_substitute_and_refuse_wildcards() {
        let acl = Acl::parse(FILE).unwrap();
        assert!(acl.allows(Publish, Some("bob"), "dev1", "devices/dev1/status"));
        assert!(!acl.allows(Publish, Some("bob"), "dev1", "devices/dev2/status"));
        assert!(acl.allows(Receive, Some("carol"), "x", "users/carol/inbox"));
        assert!(!acl.allows(Receive, None, "x", "users//inbox"));
        // CVE-2017-7650: a client id or user name with wildcards does not widen a pattern.
        assert!(!acl.allows(Publish, Some("bob"), "+", "devices/+/status"));
        assert!(!acl.allows(Subscribe, Some("#"), "x", "users/#"));
        assert!(!acl.allows(Subscribe, Some("a/b"), "x", "users/a/b/#"));
    }

    /// RELIABILITY.md I1: an empty ACL denies everything.
    #[test]
    fn empty_file_denies_all() {
        let acl = Acl::parse("# nothing\n").unwrap();
        for a in [Publish, Subscribe, Receive] {
            assert!(!acl.allows(a, Some("alice"), "c", "a"));
            assert!(!acl.allows(a, None, "c", "a"));
        }
    }

    #[test]
    fn coverage_of_filters() {
        assert!(covers("#", "a/b/#"));
        assert!(covers("a/#", "a"));
        assert!(covers("a/+", "a/+"));
        assert!(!covers("a/+", "a/#"));
        assert!(!covers("a/b", "a/+"));
        assert!(!covers("#", "$SYS/#"));
        assert!(covers("$SYS/#", "$SYS/broker/+"));
        assert!(!covers("a/+/c", "a/b"));
    }

    #[test]
    fn syntax_errors_name_the_line() {
        for (text, line) in [
            ("user\n", "line 1"),
            ("topic read\n", "line 1"),
            ("\ntopic read a/#/b\n", "line 2"),
            ("topics read a\n", "line 1"),
            ("topic read $share/g/a\n", "line 1"),
            ("topic rw a b\n", "line 1"),
        ] {
            let e = Acl::parse(text).unwrap_err();
            assert!(e.starts_with(line), "{text:?}: {e}");
        }
        // No access word: readwrite.
        let acl = Acl::parse("topic a/b\n").unwrap();
        assert!(acl.allows(Publish, None, "c", "a/b"));
    }
}
