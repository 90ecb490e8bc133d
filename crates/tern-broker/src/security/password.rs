//! The password file: one `user:hash[:scram]` line per user, hashes salted and
//! slow (PBKDF2-HMAC-SHA512), in the PHC string format
//! `$pbkdf2-sha512$i=ITERATIONS$SALT$HASH` (salt and hash in unpadded base64).
//! The optional third field holds the SCRAM-SHA-256 credentials of the same
//! password (RFC 5802/7677: `$scram-sha-256$i=ITERATIONS$SALT$STOREDKEY$SERVERKEY`)
//! for MQTT 5.0 enhanced authentication; `tern passwd` writes both.
//!
//! The same code reads the file for the broker and writes it for `tern passwd`.
//! Empty lines and lines starting with `#` are ignored; any other line that is
//! not a user name, a colon and a well-formed hash is an error (a broker refuses
//! to start with it, RELIABILITY.md I2), as is a user listed twice.
//! Verification compares in constant time ([`ring::pbkdf2::verify`]), and a user
//! that does not exist costs as much time as a wrong password.

use std::collections::BTreeMap;
use std::io::Write;
use std::num::NonZeroU32;
use std::path::Path;

use base64::engine::general_purpose::STANDARD_NO_PAD;
use base64::Engine;
use ring::pbkdf2;
use ring::rand::{SecureRandom, SystemRandom};

/// PBKDF2-HMAC-SHA512 iterations of new hashes (OWASP's 2023 recommendation).
pub const DEFAULT_ITERATIONS: u32 = 210_000;
/// Fewest iterations accepted in a file.
pub const MIN_ITERATIONS: u32 = 1_000;
/// Bytes of salt in new hashes.
const SALT_LEN: usize = 16;
/// Bytes of derived key.
const HASH_LEN: usize = 64;
const SCHEME: &str = "pbkdf2-sha512";
const SCRAM_SCHEME: &str = "scram-sha-256";
/// PBKDF2-HMAC-SHA256 iterations of new SCRAM credentials (RFC 7677 asks for at least 4096).
pub const SCRAM_ITERATIONS: u32 = 4096;

/// Why a password file cannot be used or changed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PasswordError {
    /// The file cannot be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The operating system's reason.
        source: std::io::Error,
    },
    /// A line is not `user:hash`.
    #[error("line {line}: {reason}; fix the line or set the password again with `tern passwd`")]
    Malformed {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// `add` of a user that exists.
    #[error("user {0:?} already exists; use `tern passwd update`")]
    UserExists(String),
    /// `update`/`delete` of a user that does not exist.
    #[error("no user {0:?} in the password file")]
    NoSuchUser(String),
    /// A user name that cannot be stored.
    #[error("invalid user name {0:?}: it must be non-empty and contain no ':' or line break")]
    InvalidUser(String),
    /// The system random generator failed.
    #[error("cannot generate a salt")]
    Random,
}

/// One stored password hash.
#[derive(Clone, PartialEq, Eq)]
pub struct PasswordHash {
    iterations: NonZeroU32,
    salt: Vec<u8>,
    hash: Vec<u8>,
}

impl std::fmt::Debug for PasswordHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PasswordHash")
            .field("iterations", &self.iterations)
            .finish_non_exhaustive()
    }
}

impl PasswordHash {
    /// Hash `password` with a fresh random salt.
    pub fn new(password: &[u8], iterations: u32) -> Result<PasswordHash, PasswordError> {
        let iterations = NonZeroU32::new(iterations.max(MIN_ITERATIONS)).ok_or(PasswordError::Random)?;
        let mut salt = vec![0u8; SALT_LEN];
        SystemRandom::new()
            .fill(&mut salt)
            .map_err(|_| PasswordError::Random)?;
        let mut hash = vec![0u8; HASH_LEN];
        pbkdf2::derive(pbkdf2::PBKDF2_HMAC_SHA512, iterations, &salt, password, &mut hash);
        Ok(PasswordHash {
            iterations,
            salt,
            hash,
        })
    }

    /// Whether `password` matches, compared in constant time.
    pub fn verify(&self, password: &[u8]) -> bool {
        pbkdf2::verify(
            pbkdf2::PBKDF2_HMAC_SHA512,
            self.iterations,
            &self.salt,
            password,
            &self.hash,
        )
        .is_ok()
    }

    /// Parse `$pbkdf2-sha512$i=N$SALT$HASH`.
    pub fn parse(s: &str) -> Result<PasswordHash, String> {
        let mut parts = s.split('$');
        if parts.next() != Some("") {
            return Err("the hash must start with `$pbkdf2-sha512$`".into());
        }
        match parts.next() {
            Some(SCHEME) => {}
            Some(other) => return Err(format!("unknown hash scheme `{other}` (expected {SCHEME})")),
            None => return Err("missing hash".into()),
        }
        let iterations = parts
            .next()
            .and_then(|p| p.strip_prefix("i="))
            .and_then(|n| n.parse::<u32>().ok())
            .filter(|&n| n >= MIN_ITERATIONS)
            .and_then(NonZeroU32::new)
            .ok_or_else(|| format!("expected `i=ITERATIONS` with at least {MIN_ITERATIONS} iterations"))?;
        let salt = parts
            .next()
            .and_then(|b| STANDARD_NO_PAD.decode(b).ok())
            .filter(|s| s.len() >= 8)
            .ok_or("the salt is not base64 of at least 8 bytes")?;
        let hash = parts
            .next()
            .and_then(|b| STANDARD_NO_PAD.decode(b).ok())
            .filter(|h| h.len() >= 32)
            .ok_or("the hash is not base64 of at least 32 bytes")?;
        if parts.next().is_some() {
            return Err("unexpected `$` after the hash".into());
        }
        Ok(PasswordHash {
            iterations,
            salt,
            hash,
        })
    }
}

impl std::fmt::Display for PasswordHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "${SCHEME}$i={}${}${}",
            self.iterations,
            STANDARD_NO_PAD.encode(&self.salt),
            STANDARD_NO_PAD.encode(&self.hash)
        )
    }
}

/// SCRAM-SHA-256 credentials: what a server keeps to check a SCRAM proof
/// without knowing the password.
#[derive(Clone, PartialEq, Eq)]
pub struct ScramCredentials {
    /// PBKDF2-HMAC-SHA256 iterations.
    pub iterations: u32,
    /// The salt.
    pub salt: Vec<u8>,
    /// H(HMAC(SaltedPassword, "Client Key")).
    pub stored_key: Vec<u8>,
    /// HMAC(SaltedPassword, "Server Key").
    pub server_key: Vec<u8>,
}

impl std::fmt::Debug for ScramCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScramCredentials")
            .field("iterations", &self.iterations)
            .finish_non_exhaustive()
    }
}

impl ScramCredentials {
    /// Derive the credentials of `password` with a fresh salt.
    pub fn new(password: &[u8], iterations: u32) -> Result<ScramCredentials, PasswordError> {
        let mut salt = vec![0u8; SALT_LEN];
        SystemRandom::new()
            .fill(&mut salt)
            .map_err(|_| PasswordError::Random)?;
        let iterations = iterations.max(SCRAM_ITERATIONS);
        let n = NonZeroU32::new(iterations).ok_or(PasswordError::Random)?;
        let mut salted = [0u8; 32];
        pbkdf2::derive(pbkdf2::PBKDF2_HMAC_SHA256, n, &salt, password, &mut salted);
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &salted);
        let client_key = ring::hmac::sign(&key, b"Client Key");
        let stored_key = ring::digest::digest(&ring::digest::SHA256, client_key.as_ref());
        let server_key = ring::hmac::sign(&key, b"Server Key");
        Ok(ScramCredentials {
            iterations,
            salt,
            stored_key: stored_key.as_ref().to_vec(),
            server_key: server_key.as_ref().to_vec(),
        })
    }

    /// Parse `$scram-sha-256$i=N$SALT$STOREDKEY$SERVERKEY`.
    pub fn parse(s: &str) -> Result<ScramCredentials, String> {
        let parts: Vec<&str> = s.split('$').collect();
        let [empty, scheme, i, salt, stored, server] = parts.as_slice() else {
            return Err("SCRAM credentials must be `$scram-sha-256$i=N$SALT$STOREDKEY$SERVERKEY`".into());
        };
        if !empty.is_empty() || *scheme != SCRAM_SCHEME {
            return Err("SCRAM credentials must start with `$scram-sha-256$`".into());
        }
        let iterations = i
            .strip_prefix("i=")
            .and_then(|n| n.parse::<u32>().ok())
            .filter(|&n| n >= SCRAM_ITERATIONS)
            .ok_or_else(|| format!("SCRAM: expected `i=ITERATIONS` with at least {SCRAM_ITERATIONS}"))?;
        let b64 = |v: &str, what: &str, len: Option<usize>| {
            STANDARD_NO_PAD
                .decode(v)
                .ok()
                .filter(|d| len.is_none_or(|l| d.len() == l) && !d.is_empty())
                .ok_or_else(|| format!("SCRAM: the {what} is not valid base64"))
        };
        Ok(ScramCredentials {
            iterations,
            salt: b64(salt, "salt", None)?,
            stored_key: b64(stored, "stored key", Some(32))?,
            server_key: b64(server, "server key", Some(32))?,
        })
    }
}

impl std::fmt::Display for ScramCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "${SCRAM_SCHEME}$i={}${}${}${}",
            self.iterations,
            STANDARD_NO_PAD.encode(&self.salt),
            STANDARD_NO_PAD.encode(&self.stored_key),
            STANDARD_NO_PAD.encode(&self.server_key)
        )
    }
}

/// One user's line.
#[derive(Debug, Clone)]
struct Entry {
    hash: PasswordHash,
    scram: Option<ScramCredentials>,
}

impl Entry {
    fn new(password: &[u8], iterations: u32) -> Result<Entry, PasswordError> {
        Ok(Entry {
            hash: PasswordHash::new(password, iterations)?,
            scram: Some(ScramCredentials::new(password, SCRAM_ITERATIONS)?),
        })
    }
}

/// The users of a password file, by name.
#[derive(Debug, Clone, Default)]
pub struct PasswordFile {
    users: BTreeMap<String, Entry>,
}

fn check_user(user: &str) -> Result<(), PasswordError> {
    if user.is_empty() || user.contains([':', '\n', '\r']) || user.starts_with('#') {
        return Err(PasswordError::InvalidUser(user.to_string()));
    }
    Ok(())
}

impl PasswordFile {
    /// Parse the text of a password file.
    pub fn parse(text: &str) -> Result<PasswordFile, PasswordError> {
        let mut users = BTreeMap::new();
        for (i, line) in text.lines().enumerate() {
            let line_no = i + 1;
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let malformed = |reason: String| PasswordError::Malformed {
                line: line_no,
                reason,
            };
            let (user, hash) = line
                .split_once(':')
                .ok_or_else(|| malformed("expected `user:$pbkdf2-sha512$...`".into()))?;
            if user.is_empty() || user.trim() != user {
                return Err(malformed("empty user name or spaces around it".into()));
            }
            let (hash, scram) = match hash.trim_end().split_once(':') {
                Some((h, s)) => (h, Some(ScramCredentials::parse(s).map_err(malformed)?)),
                None => (hash.trim_end(), None),
            };
            let hash = PasswordHash::parse(hash).map_err(malformed)?;
            if users.insert(user.to_string(), Entry { hash, scram }).is_some() {
                return Err(malformed(format!("user {user:?} is listed twice")));
            }
        }
        Ok(PasswordFile { users })
    }

    /// Read and parse a file.
    pub fn load(path: &Path) -> Result<PasswordFile, PasswordError> {
        let text = std::fs::read_to_string(path).map_err(|source| PasswordError::Io {
            path: path.display().to_string(),
            source,
        })?;
        PasswordFile::parse(&text)
    }

    /// Read a file, or start an empty one when it does not exist.
    pub fn load_or_new(path: &Path) -> Result<PasswordFile, PasswordError> {
        if path.exists() {
            PasswordFile::load(path)
        } else {
            Ok(PasswordFile::default())
        }
    }

    /// Whether `user` exists and `password` is theirs. Unknown users take as long.
    pub fn verify(&self, user: &str, password: &[u8]) -> bool {
        match self.users.get(user) {
            Some(e) => e.hash.verify(password),
            None => {
                // As slow as a known user's check, so a reply time tells nothing.
                let iterations = self
                    .users
                    .values()
                    .next()
                    .map_or(NonZeroU32::MIN.saturating_add(DEFAULT_ITERATIONS - 1), |e| {
                        e.hash.iterations
                    });
                let decoy = PasswordHash {
                    iterations,
                    salt: vec![0x5a; SALT_LEN],
                    hash: vec![0; HASH_LEN],
                };
                let _ = decoy.verify(password);
                false
            }
        }
    }

    /// The SCRAM-SHA-256 credentials of `user`, if the file has them.
    pub fn scram(&self, user: &str) -> Option<&ScramCredentials> {
        self.users.get(user).and_then(|e| e.scram.as_ref())
    }

    /// Whether `user` is listed.
    pub fn contains(&self, user: &str) -> bool {
        self.users.contains_key(user)
    }

    /// The number of users.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// Whether there are no users.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Add a new user.
    pub fn add(&mut self, user: &str, password: &[u8], iterations: u32) -> Result<(), PasswordError> {
        check_user(user)?;
        if self.users.contains_key(user) {
            return Err(PasswordError::UserExists(user.to_string()));
        }
        self.users
            .insert(user.to_string(), Entry::new(password, iterations)?);
        Ok(())
    }

    /// Change the password of an existing user.
    pub fn update(&mut self, user: &str, password: &[u8], iterations: u32) -> Result<(), PasswordError> {
        let entry = Entry::new(password, iterations)?;
        match self.users.get_mut(user) {
            Some(e) => {
                *e = entry;
                Ok(())
            }
            None => Err(PasswordError::NoSuchUser(user.to_string())),
        }
    }

    /// Remove a user.
    pub fn delete(&mut self, user: &str) -> Result<(), PasswordError> {
        self.users
            .remove(user)
            .map(|_| ())
            .ok_or_else(|| PasswordError::NoSuchUser(user.to_string()))
    }

    /// The file's text.
    pub fn to_text(&self) -> String {
        self.users
            .iter()
            .map(|(u, e)| match &e.scram {
                Some(s) => format!("{u}:{}:{s}\n", e.hash),
                None => format!("{u}:{}\n", e.hash),
            })
            .collect()
    }

    /// Write the file atomically (a temporary file renamed over it), readable by
    /// its owner only.
    pub fn save(&self, path: &Path) -> Result<(), PasswordError> {
        let io = |source| PasswordError::Io {
            path: path.display().to_string(),
            source,
        };
        let tmp = path.with_extension("tmp-tern-passwd");
        {
            let mut opts = std::fs::OpenOptions::new();
            opts.write(true).create(true).truncate(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                opts.mode(0o600);
            }
            let mut f = opts.open(&tmp).map_err(io)?;
            f.write_all(self.to_text().as_bytes()).map_err(io)?;
            f.sync_all().map_err(io)?;
        }
        std::fs::rename(&tmp, path).map_err(io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_round_trip_and_verify() {
        let h = PasswordHash::new(b"secret", MIN_ITERATIONS).unwrap();
        let text = h.to_string();
        assert!(text.starts_with("$pbkdf2-sha512$i=1000$"), "{text}");
        let back = PasswordHash::parse(&text).unwrap();
        assert_eq!(back, h);
        assert!(back.verify(b"secret"));
        assert!(!back.verify(b"Secret"));
        assert!(!back.verify(b""));
    }

    #[test]
    fn file_add_update_delete() {
        let mut f = PasswordFile::default();
        f.add("alice", b"a", MIN_ITERATIONS).unwrap();
        f.add("bob", b"b", MIN_ITERATIONS).unwrap();
        assert!(matches!(
            f.add("bob", b"x", MIN_ITERATIONS),
            Err(PasswordError::UserExists(_))
        ));
        f.update("bob", b"b2", MIN_ITERATIONS).unwrap();
        let f = PasswordFile::parse(&f.to_text()).unwrap();
        assert!(f.scram("alice").is_some_and(|s| s.iterations == SCRAM_ITERATIONS));
        assert!(f.verify("alice", b"a"));
        assert!(f.verify("bob", b"b2"));
        assert!(!f.verify("bob", b"b"));
        assert!(!f.verify("carol", b"a"));
        let mut f = f;
        f.delete("alice").unwrap();
        assert!(!f.verify("alice", b"a"));
        assert!(matches!(f.delete("alice"), Err(PasswordError::NoSuchUser(_))));
        assert!(matches!(
            f.add("a:b", b"x", MIN_ITERATIONS),
            Err(PasswordError::InvalidUser(_))
        ));
    }

    /// RELIABILITY.md I2: a malformed line is an error, never a user without a password.
    #[test]
    fn malformed_lines_are_errors() {
        let good = PasswordHash::new(b"x", MIN_ITERATIONS).unwrap().to_string();
        for (text, line) in [
            ("alice".to_string(), 1),
            ("alice:".to_string(), 1),
            (format!("# comment\n\nalice:{good}\n bob:{good}"), 4),
            (format!("alice:{good}\nalice:{good}"), 2),
            ("alice:$pbkdf2-sha512$i=10$AAAAAAAAAAA$AAAA".to_string(), 1),
            ("alice:$argon9$x".to_string(), 1),
            (format!("alice:{good}$"), 1),
        ] {
            match PasswordFile::parse(&text) {
                Err(PasswordError::Malformed { line: l, .. }) => assert_eq!(l, line, "{text}"),
                other => panic!("{text:?}: {other:?}"),
            }
        }
        assert_eq!(
            PasswordFile::parse(&format!("# c\n\nalice:{good}\n"))
                .unwrap()
                .len(),
            1
        );
    }
}
