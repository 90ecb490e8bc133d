//! The ban list and flapping detection: refusals decided before any authentication work.
//!
//! ## Ban file (`[auth] ban_file`)
//! One ban per line; `#` starts a comment:
//!
//! ```text
//! clientid  sensor-17
//! username  mallory          2026-12-31T00:00:00Z   # until then (UTC)
//! address   203.0.113.9
//! address   198.51.100.0/24  1798761600             # until then (seconds since 1970)
//! address   2001:db8::/32
//! ```
//!
//! A banned address is closed at accept, before a TLS handshake; a banned client id or
//! user name gets CONNACK 0x8A Banned (3.1.1: 0x05 Not authorized). Bans added at run time
//! ([`crate::SecurityHandle::ban`]) last until they expire or the file is reloaded.
//!
//! ## Flapping (`[auth.flapping]`)
//! Connection attempts are counted per client id and per address over a one-minute window.
//! Beyond `max_connects_per_minute` (per client id) or `max_connects_per_minute_per_address`, that client id or address is refused (CONNACK 0x9F
//! Connection rate exceeded; 3.1.1: 0x03) for `ban_secs`, doubled at each new offence up to
//! `max_ban_secs`; the start of each ban is logged once. The counters are bounded
//! (`MAX_TRACKED` keys; the oldest window is dropped beyond).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Deserialize;

/// What a ban names.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum BanTarget {
    /// A client identifier.
    ClientId(String),
    /// A user name.
    Username(String),
    /// An address or network: `prefix` leading bits of `addr`.
    Network {
        /// The network's address.
        addr: IpAddr,
        /// Its prefix length (32 or 128 for one address).
        prefix: u8,
    },
}

/// One ban.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ban {
    /// Who.
    pub target: BanTarget,
    /// Until when (`None`: until removed).
    pub until: Option<SystemTime>,
}

impl Ban {
    /// Parse one line of the ban file (`clientid X`, `username X`, `address A[/N]`, each with
    /// an optional expiry: RFC 3339 UTC `2026-12-31T00:00:00Z` or seconds since 1970).
    pub fn parse(line: &str) -> Result<Ban, String> {
        let mut words = line.split_whitespace();
        let (Some(kind), Some(value)) = (words.next(), words.next()) else {
            return Err("expected `clientid|username|address VALUE [UNTIL]`".into());
        };
        let until = match words.next() {
            None => None,
            Some(t) => Some(parse_time(t)?),
        };
        if words.next().is_some() {
            return Err("too many words".into());
        }
        let target = match kind {
            "clientid" => BanTarget::ClientId(value.to_string()),
            "username" => BanTarget::Username(value.to_string()),
            "address" => {
                let (a, p) = match value.split_once('/') {
                    Some((a, p)) => (a, Some(p)),
                    None => (value, None),
                };
                let addr: IpAddr = a.parse().map_err(|_| format!("{a:?} is not an IP address"))?;
                let max = if addr.is_ipv4() { 32 } else { 128 };
                let prefix = match p {
                    Some(p) => p
                        .parse::<u8>()
                        .ok()
                        .filter(|p| *p <= max)
                        .ok_or_else(|| format!("{p:?} is not a prefix length (0..={max})"))?,
                    None => max,
                };
                BanTarget::Network { addr, prefix }
            }
            other => return Err(format!("unknown kind {other:?} (clientid, username, address)")),
        };
        Ok(Ban { target, until })
    }

    fn live(&self, now: SystemTime) -> bool {
        self.until.is_none_or(|t| t > now)
    }
}

/// `2026-12-31T00:00:00Z` or seconds since 1970.
fn parse_time(t: &str) -> Result<SystemTime, String> {
    if let Ok(secs) = t.parse::<u64>() {
        return Ok(UNIX_EPOCH + Duration::from_secs(secs));
    }
    let bad = || format!("{t:?} is not a time (2026-12-31T00:00:00Z or seconds since 1970)");
    let b = t.as_bytes();
    if b.len() != 20
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
        || b[19] != b'Z'
    {
        return Err(bad());
    }
    let num = |r: std::ops::Range<usize>| t[r].parse::<i64>().map_err(|_| bad());
    let (y, m, d, hh, mm, ss) = (
        num(0..4)?,
        num(5..7)?,
        num(8..10)?,
        num(11..13)?,
        num(14..16)?,
        num(17..19)?,
    );
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || hh > 23 || mm > 59 || ss > 60 {
        return Err(bad());
    }
    // Days from 1970-01-01 (Howard Hinnant's days_from_civil).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hh * 3600 + mm * 60 + ss;
    u64::try_from(secs)
        .map(|s| UNIX_EPOCH + Duration::from_secs(s))
        .map_err(|_| bad())
}

fn in_network(ip: IpAddr, net: IpAddr, prefix: u8) -> bool {
    let ip = match (ip, net) {
        (IpAddr::V6(v6), IpAddr::V4(_)) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        _ => ip,
    };
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

/// Parse a ban file; errors name the line.
pub fn parse_ban_file(text: &str) -> Result<Vec<Ban>, String> {
    let mut bans = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        bans.push(Ban::parse(line).map_err(|e| format!("line {}: {e}", i + 1))?);
    }
    Ok(bans)
}

/// The bans in force: from the file and added at run time.
#[derive(Debug, Default)]
pub(crate) struct BanList {
    /// Whether there is any ban: the accept path takes no lock otherwise.
    any: AtomicBool,
    from_file: RwLock<Vec<Ban>>,
    added: RwLock<Vec<Ban>>,
}

impl BanList {
    fn update_any(&self) {
        let any = !self
            .from_file
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty()
            || !self.added.read().unwrap_or_else(|e| e.into_inner()).is_empty();
        self.any.store(any, Ordering::Release);
    }

    /// Replace the file's bans.
    pub fn set_file(&self, bans: Vec<Ban>) {
        *self.from_file.write().unwrap_or_else(|e| e.into_inner()) = bans;
        self.update_any();
    }

    /// Add a ban at run time.
    pub fn add(&self, ban: Ban) {
        self.added.write().unwrap_or_else(|e| e.into_inner()).push(ban);
        self.update_any();
    }

    /// Remove the run-time and file bans of `target`; returns how many were removed.
    pub fn remove(&self, target: &BanTarget) -> usize {
        let mut n = 0;
        for list in [&self.added, &self.from_file] {
            let mut l = list.write().unwrap_or_else(|e| e.into_inner());
            let before = l.len();
            l.retain(|b| &b.target != target);
            n += before - l.len();
        }
        self.update_any();
        n
    }

    /// Every ban in force.
    pub fn list(&self) -> Vec<Ban> {
        let now = SystemTime::now();
        let mut all = self.from_file.read().unwrap_or_else(|e| e.into_inner()).clone();
        all.extend(
            self.added
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .cloned(),
        );
        all.retain(|b| b.live(now));
        all
    }

    fn find(&self, f: impl Fn(&BanTarget) -> bool) -> bool {
        if !self.any.load(Ordering::Acquire) {
            return false;
        }
        let now = SystemTime::now();
        [&self.from_file, &self.added].iter().any(|list| {
            list.read()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .any(|b| b.live(now) && f(&b.target))
        })
    }

    /// Whether `ip` is banned.
    pub fn address(&self, ip: IpAddr) -> bool {
        self.find(|t| matches!(t, BanTarget::Network { addr, prefix } if in_network(ip, *addr, *prefix)))
    }

    /// Whether this client id or user name is banned: what was banned, for the log.
    pub fn client(&self, client_id: &str, username: Option<&str>) -> Option<&'static str> {
        if self.find(|t| matches!(t, BanTarget::ClientId(c) if c == client_id)) {
            return Some("client id");
        }
        let u = username?;
        self.find(|t| matches!(t, BanTarget::Username(n) if n == u))
            .then_some("user name")
    }
}

/// `[auth.flapping]`.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct FlappingConfig {
    /// CONNECTs allowed per client id in one minute (default 0: no limit).
    pub max_connects_per_minute: u32,
    /// CONNECTs allowed per address in one minute (default 0: no limit). Many clients can
    /// share an address (NAT, a gateway): set it above what they make together.
    pub max_connects_per_minute_per_address: u32,
    /// The first refusal period, in seconds (default 60); doubled at each new offence.
    pub ban_secs: u64,
    /// The longest refusal period (default 3,600).
    pub max_ban_secs: u64,
}

impl Default for FlappingConfig {
    fn default() -> FlappingConfig {
        FlappingConfig {
            max_connects_per_minute: 0,
            max_connects_per_minute_per_address: 0,
            ban_secs: 60,
            max_ban_secs: 3600,
        }
    }
}

/// Keys (client ids and addresses) tracked at most.
const MAX_TRACKED: usize = 100_000;
const WINDOW: Duration = Duration::from_secs(60);

#[derive(Debug)]
struct Track {
    window_start: Instant,
    count: u32,
    banned_until: Option<Instant>,
    offences: u32,
}

/// Connection attempts per key.
#[derive(Debug, Default)]
pub(crate) struct Flapping {
    config: FlappingConfig,
    tracks: Mutex<HashMap<String, Track>>,
}

impl Flapping {
    pub fn new(config: FlappingConfig) -> Flapping {
        Flapping {
            config,
            tracks: Mutex::default(),
        }
    }

    /// Count an attempt of `client_id` from `ip` at `now`; `Some(seconds left)` when it must be refused.
    pub fn attempt(&self, client_id: &str, ip: IpAddr, now: Instant) -> Option<u64> {
        let (max_c, max_a) = (
            self.config.max_connects_per_minute,
            self.config.max_connects_per_minute_per_address,
        );
        if max_c == 0 && max_a == 0 {
            return None;
        }
        let mut tracks = self.tracks.lock().unwrap_or_else(|e| e.into_inner());
        if tracks.len() >= MAX_TRACKED {
            tracks.retain(|_, t| {
                now.duration_since(t.window_start) < WINDOW || t.banned_until.is_some_and(|u| u > now)
            });
            if tracks.len() >= MAX_TRACKED {
                tracks.clear();
            }
        }
        let mut refused = None;
        for (key, max) in [(format!("c:{client_id}"), max_c), (format!("a:{ip}"), max_a)] {
            if max == 0 {
                continue;
            }
            let t = tracks.entry(key.clone()).or_insert(Track {
                window_start: now,
                count: 0,
                banned_until: None,
                offences: 0,
            });
            if let Some(until) = t.banned_until {
                if until > now {
                    refused = refused.max(Some(until.duration_since(now).as_secs().max(1)));
                    continue;
                }
                t.banned_until = None;
            }
            if now.duration_since(t.window_start) >= WINDOW {
                t.window_start = now;
                t.count = 0;
            }
            t.count += 1;
            if t.count > max {
                let secs = self
                    .config
                    .ban_secs
                    .saturating_mul(1 << t.offences.min(20))
                    .min(self.config.max_ban_secs)
                    .max(1);
                t.offences += 1;
                t.banned_until = Some(now + Duration::from_secs(secs));
                t.count = 0;
                t.window_start = now;
                let (kind, value) = key.split_at(2);
                let kind = if kind == "c:" { "client id" } else { "address" };
                tracing::warn!(
                    what = kind,
                    value,
                    secs,
                    "flapping: more than {max} connections in a minute, refused for {secs} s"
                );
                refused = refused.max(Some(secs));
            }
        }
        refused
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn ban_file_lines() {
        let bans = parse_ban_file(
            "# comment\nclientid sensor-17\nusername mallory 2026-12-31T00:00:00Z\naddress 10.0.0.0/8 1798761600 # c\naddress ::1\n",
        )
        .unwrap();
        assert_eq!(bans.len(), 4);
        assert_eq!(
            bans[1].until,
            Some(UNIX_EPOCH + Duration::from_secs(1_798_675_200))
        );
        for (bad, line) in [
            ("clientid\n", "line 1"),
            ("\naddress 10.0.0.0/33\n", "line 2"),
            ("user x\n", "line 1"),
            ("address 1.2.3.4 tomorrow\n", "line 1"),
        ] {
            assert!(parse_ban_file(bad).unwrap_err().starts_with(line), "{bad}");
        }
    }

    #[test]
    fn matching() {
        let l = BanList::default();
        assert!(!l.address("10.1.2.3".parse().unwrap()));
        l.set_file(
            parse_ban_file("address 10.0.0.0/8\naddress 2001:db8::/32\nclientid bad\nusername eve\n")
                .unwrap(),
        );
        assert!(l.address("10.1.2.3".parse().unwrap()));
        assert!(l.address("::ffff:10.1.2.3".parse().unwrap()));
        assert!(!l.address("11.0.0.1".parse().unwrap()));
        assert!(l.address("2001:db8::1".parse().unwrap()));
        assert!(!l.address("2001:db9::1".parse().unwrap()));
        assert_eq!(l.client("bad", None), Some("client id"));
        assert_eq!(l.client("good", Some("eve")), Some("user name"));
        assert_eq!(l.client("good", Some("bob")), None);
        l.add(Ban {
            target: BanTarget::ClientId("tmp".into()),
            until: Some(SystemTime::now() - Duration::from_secs(1)),
        });
        assert_eq!(l.client("tmp", None), None, "expired");
        assert_eq!(l.remove(&BanTarget::ClientId("bad".into())), 1);
        assert_eq!(l.client("bad", None), None);
    }

    #[test]
    fn flapping_refuses_for_growing_periods() {
        let f = Flapping::new(FlappingConfig {
            max_connects_per_minute: 3,
            max_connects_per_minute_per_address: 3,
            ban_secs: 10,
            max_ban_secs: 25,
        });
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(f.attempt("c", ip, t0), None);
        }
        assert_eq!(f.attempt("c", ip, t0), Some(10));
        assert_eq!(f.attempt("c", ip, t0 + Duration::from_secs(5)), Some(5));
        let t1 = t0 + Duration::from_secs(11);
        for _ in 0..3 {
            assert_eq!(f.attempt("c", ip, t1), None);
        }
        assert_eq!(f.attempt("c", ip, t1), Some(20), "doubled");
        let t2 = t1 + Duration::from_secs(21);
        for _ in 0..3 {
            assert_eq!(f.attempt("c", ip, t2), None);
        }
        assert_eq!(f.attempt("c", ip, t2), Some(25), "capped");
    }
}
