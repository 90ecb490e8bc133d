//! Access lists that come with a client's credentials (a JWT's `acl` claim, the HTTP
//! hook's answer), and the expiry of those credentials.
//!
//! A [`Grant`] is written like this, in a token or in the hook's JSON answer:
//!
//! ```json
//! {"publish": ["devices/%c/#"], "subscribe": ["devices/#"], "deny": ["devices/+/secret"]}
//! ```
//!
//! Each list is turned into `pattern` lines of the ACL file language and checked by the same
//! code (`acl.rs`): `publish` is `write`, `subscribe` is `read` (subscribe and receive),
//! `receive` only receives, `deny` wins over all. `%c` is the client id, `%u` the user
//! name, skipped for values with `+`, `#` or `/` (CVE-2017-7650). Anything not granted is
//! denied.
//!
//! ## The table
//! [`Grants`] maps a client identifier to what its connection was granted, from the
//! successful CONNECT (or 5.0 re-authentication) that set it until a later CONNECT of the
//! same client id replaces it. A client with an entry is judged by it alone; other clients
//! by the ACL file. An entry with an expiry denies everything after it, and the expiry task
//! ([`Grants::run_expiry`]) disconnects the client then. Entries of clients that are no
//! longer connected are swept by that task.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant, SystemTime};

use super::acl::{Acl, Action};

/// An access list from a credential.
#[derive(Debug, Clone)]
pub(crate) struct Grant(Arc<Acl>);

impl Grant {
    /// Parse `{"publish": [...], "subscribe": [...], "receive": [...], "deny": [...]}`
    /// (each value a list of filters, or one filter).
    pub fn from_json(v: &serde_json::Value) -> Result<Grant, String> {
        let obj = v.as_object().ok_or("not a JSON object")?;
        let mut text = String::new();
        for (key, list) in obj {
            let access = match key.as_str() {
                "publish" => "write",
                "subscribe" => "read",
                "receive" => "receive",
                "deny" => "deny",
                other => {
                    return Err(format!(
                        "unknown key {other:?} (publish, subscribe, receive, deny)"
                    ))
                }
            };
            let filters: Vec<&str> = match list {
                serde_json::Value::String(s) => vec![s.as_str()],
                serde_json::Value::Array(items) => items
                    .iter()
                    .map(|i| i.as_str().ok_or_else(|| format!("{key}: not a list of strings")))
                    .collect::<Result<_, _>>()?,
                _ => return Err(format!("{key}: not a list of strings")),
            };
            for f in filters {
                if f.contains(['\n', '\r']) || f.trim() != f {
                    return Err(format!("{key}: {f:?} is not a valid topic filter"));
                }
                text.push_str(&format!("pattern {access} {f}\n"));
            }
        }
        Acl::parse(&text)
            .map(|a| Grant(Arc::new(a)))
            .map_err(|e| e.split_once(": ").map_or(e.clone(), |(_, m)| m.to_string()))
    }

    /// Whether this grant allows `action` on `target`.
    pub fn allows(&self, action: Action, username: Option<&str>, client_id: &str, target: &str) -> bool {
        self.0.allows(action, username, client_id, target)
    }
}

#[derive(Debug, Clone)]
struct Entry {
    grant: Option<Grant>,
    expires: Option<SystemTime>,
    generation: u64,
    since: Instant,
}

/// What a client id was granted (see the module documentation).
#[derive(Debug, Default)]
pub(crate) struct Grants {
    entries: RwLock<HashMap<Box<str>, Entry>>,
    /// Entries in the table: the ACL path takes no lock while it is 0.
    len: AtomicUsize,
    generation: AtomicU64,
    /// Expiry deadlines: (when, generation) -> client id.
    deadlines: Mutex<BTreeMap<(SystemTime, u64), Box<str>>>,
    wake: tokio::sync::Notify,
}

/// A decision of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    Allow,
    Deny,
    /// The client has no entry, or one without a list: the ACL file decides.
    NotMine,
}

impl Grants {
    /// Record what `client_id`'s new connection was granted, replacing what an earlier one
    /// had. `expires` schedules the disconnect at expiry (when `disconnect` is true).
    pub fn set(&self, client_id: &str, grant: Option<Grant>, expires: Option<SystemTime>, disconnect: bool) {
        if grant.is_none() && expires.is_none() {
            self.remove(client_id);
            return;
        }
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        let entry = Entry {
            grant,
            expires,
            generation,
            since: Instant::now(),
        };
        {
            let mut map = self.entries.write().unwrap_or_else(|e| e.into_inner());
            map.insert(client_id.into(), entry);
            self.len.store(map.len(), Ordering::Release);
        }
        if let (Some(at), true) = (expires, disconnect) {
            self.deadlines
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert((at, generation), client_id.into());
            self.wake.notify_one();
        }
    }

    /// Forget `client_id`'s entry (it authenticated with a source that grants nothing).
    pub fn remove(&self, client_id: &str) {
        if self.len.load(Ordering::Acquire) == 0 {
            return;
        }
        let mut map = self.entries.write().unwrap_or_else(|e| e.into_inner());
        map.remove(client_id);
        self.len.store(map.len(), Ordering::Release);
    }

    /// Whether any client has an entry.
    pub fn is_empty(&self) -> bool {
        self.len.load(Ordering::Acquire) == 0
    }

    /// The decision for `client_id` (see [`Decision`]).
    pub fn decide(&self, action: Action, username: Option<&str>, client_id: &str, target: &str) -> Decision {
        if self.is_empty() {
            return Decision::NotMine;
        }
        let map = self.entries.read().unwrap_or_else(|e| e.into_inner());
        let Some(e) = map.get(client_id) else {
            return Decision::NotMine;
        };
        if e.expires.is_some_and(|t| t <= SystemTime::now()) {
            return Decision::Deny;
        }
        match &e.grant {
            Some(g) if g.allows(action, username, client_id, target) => Decision::Allow,
            Some(_) => Decision::Deny,
            None => Decision::NotMine,
        }
    }

    /// Whether `client_id`'s credentials have expired.
    pub fn expired(&self, client_id: &str) -> bool {
        if self.is_empty() {
            return false;
        }
        let map = self.entries.read().unwrap_or_else(|e| e.into_inner());
        map.get(client_id)
            .and_then(|e| e.expires)
            .is_some_and(|t| t <= SystemTime::now())
    }

    /// Entries whose deadline has come and that were not replaced since: they are removed
    /// and their client ids returned.
    fn take_due(&self, now: SystemTime) -> Vec<Box<str>> {
        let mut due = Vec::new();
        let mut deadlines = self.deadlines.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(entry) = deadlines.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let ((_, generation), id) = entry.remove_entry();
            let map = self.entries.read().unwrap_or_else(|e| e.into_inner());
            if map.get(&id).is_some_and(|e| e.generation == generation) {
                due.push(id);
            }
        }
        due
    }

    fn next_deadline(&self) -> Option<SystemTime> {
        self.deadlines
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .first_key_value()
            .map(|(k, _)| k.0)
    }

    /// Drop entries older than `grace` whose client `connected` says is gone.
    fn sweep(&self, grace: Duration, connected: impl Fn(&str) -> bool) {
        if self.is_empty() {
            return;
        }
        let stale: Vec<Box<str>> = {
            let map = self.entries.read().unwrap_or_else(|e| e.into_inner());
            map.iter()
                .filter(|(id, e)| e.since.elapsed() > grace && !connected(id))
                .map(|(id, _)| id.clone())
                .collect()
        };
        if !stale.is_empty() {
            let mut map = self.entries.write().unwrap_or_else(|e| e.into_inner());
            for id in stale {
                map.remove(&id);
            }
            self.len.store(map.len(), Ordering::Release);
        }
    }

    /// The expiry task: disconnects each client whose credentials expire (unless it
    /// re-authenticated meanwhile) and sweeps entries of clients that left. Ends when the
    /// broker is gone.
    pub async fn run_expiry(self: Arc<Self>, core: Weak<crate::broker_core::Core>) {
        const SWEEP: Duration = Duration::from_secs(30);
        let mut last_sweep = Instant::now();
        loop {
            let now = SystemTime::now();
            let Some(core) = core.upgrade() else { return };
            for id in self.take_due(now) {
                tracing::info!(client_id = &*id, "credentials expired: disconnecting the client");
                super::kick_expired(&core, &id);
            }
            if last_sweep.elapsed() >= SWEEP {
                last_sweep = Instant::now();
                let grace = core.config.connect_timeout() * 2;
                self.sweep(grace, |id| {
                    core.sessions
                        .get(id)
                        .is_some_and(|cell| cell.lock().conn_id.is_some())
                });
            }
            drop(core);
            let wait = self
                .next_deadline()
                .map_or(SWEEP, |t| t.duration_since(now).unwrap_or_default().min(SWEEP));
            let _ = tokio::time::timeout(wait, self.wake.notified()).await;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use Action::*;

    fn grant(v: &str) -> Result<Grant, String> {
        Grant::from_json(&serde_json::from_str(v).unwrap())
    }

    #[test]
    fn claims_are_patterns() {
        let g =
            grant(r#"{"publish": ["devices/%c/#"], "subscribe": ["devices/#"], "deny": "devices/+/secret"}"#)
                .unwrap();
        assert!(g.allows(Publish, Some("u"), "d1", "devices/d1/t"));
        assert!(!g.allows(Publish, Some("u"), "d1", "devices/d2/t"));
        assert!(g.allows(Subscribe, Some("u"), "d1", "devices/+/t"));
        assert!(g.allows(Receive, Some("u"), "d1", "devices/d2/t"));
        assert!(!g.allows(Receive, Some("u"), "d1", "devices/d2/secret"));
        assert!(!g.allows(Subscribe, Some("u"), "d1", "#"));
        // CVE-2017-7650: a client id with wildcards gets nothing from %c.
        assert!(!g.allows(Publish, Some("u"), "+", "devices/+/t"));
        let g = grant(r#"{"publish": ["users/%u"]}"#).unwrap();
        assert!(g.allows(Publish, Some("alice"), "c", "users/alice"));
        assert!(!g.allows(Publish, None, "c", "users/"));
    }

    #[test]
    fn bad_claims_are_errors() {
        for bad in [
            r#"[]"#,
            r#"{"write": ["a"]}"#,
            r#"{"publish": [1]}"#,
            r#"{"publish": ["a/#/b"]}"#,
            r#"{"publish": ["a b"]}"#,
            "{\"publish\": [\"a\\npattern readwrite #\"]}",
        ] {
            assert!(grant(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn table_decides_for_its_clients_and_expires() {
        let t = Grants::default();
        assert_eq!(t.decide(Publish, None, "c", "a"), Decision::NotMine);
        t.set("c", Some(grant(r#"{"publish": "a"}"#).unwrap()), None, false);
        assert_eq!(t.decide(Publish, None, "c", "a"), Decision::Allow);
        assert_eq!(t.decide(Publish, None, "c", "b"), Decision::Deny);
        assert_eq!(t.decide(Publish, None, "other", "b"), Decision::NotMine);
        let past = SystemTime::now() - Duration::from_secs(1);
        t.set("c", Some(grant(r#"{"publish": "a"}"#).unwrap()), Some(past), true);
        assert_eq!(t.decide(Publish, None, "c", "a"), Decision::Deny);
        assert_eq!(t.take_due(SystemTime::now()), vec![Box::<str>::from("c")]);
        // Replaced before its deadline: nothing is due.
        let soon = SystemTime::now() + Duration::from_millis(1);
        t.set("d", None, Some(soon), true);
        t.set("d", None, Some(soon + Duration::from_secs(60)), true);
        assert!(t.take_due(soon + Duration::from_secs(1)).is_empty());
        t.remove("c");
        t.remove("d");
        assert!(t.is_empty());
    }
}
