//! SCRAM-SHA-256 (RFC 5802, RFC 7677) as an MQTT 5.0 enhanced authentication
//! method (section 4.12), checked against the password file's SCRAM credentials.
//!
//! The exchange, with Authentication Method `SCRAM-SHA-256`:
//! 1. CONNECT carries the client-first message `n,,n=USER,r=CNONCE`.
//! 2. AUTH 0x18 from the broker: `r=CNONCE+SNONCE,s=SALT,i=ITERATIONS`.
//! 3. AUTH 0x18 from the client: `c=biws,r=NONCE,p=PROOF`.
//! 4. CONNACK 0x00 with `v=SERVERSIGNATURE` (the client checks it), or 0x87.
//!
//! Channel binding is not offered (`n` or `y` flag only). User names are
//! compared as sent (no SASLprep). For an unknown user the broker answers with a
//! salt derived from a per-process secret and fails at the proof, so the
//! exchange does not reveal which users exist. The authenticated user is the
//! client's user name for the ACL ([`crate::AuthExchange::identity`]); a CONNECT
//! user name, if given, must be the same.

use std::sync::Arc;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bytes::Bytes;
use ring::rand::{SecureRandom, SystemRandom};
use ring::{digest, hmac};

use super::password::{ScramCredentials, SCRAM_ITERATIONS};
use super::Security;
use crate::{AuthExchange, AuthStep, Authenticator};

/// The method name.
pub(crate) const METHOD: &str = "SCRAM-SHA-256";

/// The SCRAM-SHA-256 authenticator, reading the current password file.
pub(crate) struct ScramAuthenticator {
    security: Arc<Security>,
    /// Secret for the salts of unknown users.
    secret: hmac::Key,
}

impl ScramAuthenticator {
    pub fn new(security: Arc<Security>) -> ScramAuthenticator {
        let mut secret = [0u8; 32];
        // Without randomness the decoy salts are merely predictable; nothing else depends on it.
        let _ = SystemRandom::new().fill(&mut secret);
        ScramAuthenticator {
            security,
            secret: hmac::Key::new(hmac::HMAC_SHA256, &secret),
        }
    }
}

impl Authenticator for ScramAuthenticator {
    fn method(&self) -> &str {
        METHOD
    }

    fn begin(&self, _client_id: &str, username: Option<&str>) -> Box<dyn AuthExchange> {
        Box::new(Exchange {
            security: self.security.clone(),
            secret: self.secret.clone(),
            connect_user: username.map(str::to_string),
            state: State::Start,
        })
    }
}

enum State {
    Start,
    SentFirst {
        user: String,
        creds: Option<ScramCredentials>,
        client_first_bare: String,
        server_first: String,
        nonce: String,
        gs2: String,
    },
    Done(String),
    Failed,
}

struct Exchange {
    security: Arc<Security>,
    secret: hmac::Key,
    connect_user: Option<String>,
    state: State,
}

/// `=2C` and `=3D` back to `,` and `=` (RFC 5802 section 5.1).
fn decode_name(s: &str) -> Option<String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('=') {
        out.push_str(&rest[..i]);
        match rest.get(i..i + 3) {
            Some("=2C") => out.push(','),
            Some("=3D") => out.push('='),
            _ => return None,
        }
        rest = &rest[i + 3..];
    }
    out.push_str(rest);
    (!out.is_empty()).then_some(out)
}

/// The value of attribute `key` (`key=value`) in a comma-separated message.
fn attribute(msg: &str, key: char) -> Option<&str> {
    msg.split(',').find_map(|a| {
        let mut chars = a.chars();
        (chars.next() == Some(key) && chars.next() == Some('=')).then(|| &a[2..])
    })
}

fn valid_nonce(n: &str) -> bool {
    !n.is_empty() && n.len() <= 256 && n.bytes().all(|b| (0x21..=0x7e).contains(&b) && b != b',')
}

impl Exchange {
    fn first(&mut self, data: &[u8]) -> Option<AuthStep> {
        let msg = std::str::from_utf8(data).ok()?;
        // GS2 header: no channel binding ("n") or "client supports it, server does not" ("y").
        let (gs2, bare) = if let Some(b) = msg.strip_prefix("n,,") {
            ("n,,", b)
        } else {
            ("y,,", msg.strip_prefix("y,,")?)
        };
        if bare.starts_with("m=") {
            return None;
        }
        let user = decode_name(attribute(bare, 'n')?)?;
        let cnonce = attribute(bare, 'r').filter(|n| valid_nonce(n))?;
        let creds = self.security.passwords().and_then(|f| f.scram(&user).cloned());
        let (salt, iterations) = match &creds {
            Some(c) => (c.salt.clone(), c.iterations),
            None => {
                let tag = hmac::sign(&self.secret, user.as_bytes());
                (tag.as_ref()[..16].to_vec(), SCRAM_ITERATIONS)
            }
        };
        let mut snonce = [0u8; 18];
        SystemRandom::new().fill(&mut snonce).ok()?;
        let nonce = format!("{cnonce}{}", STANDARD.encode(snonce));
        let server_first = format!("r={nonce},s={},i={iterations}", STANDARD.encode(salt));
        self.state = State::SentFirst {
            user,
            creds,
            client_first_bare: bare.to_string(),
            server_first: server_first.clone(),
            nonce,
            gs2: gs2.to_string(),
        };
        Some(AuthStep::Continue(Bytes::from(server_first)))
    }

    fn last(&mut self, data: &[u8]) -> Option<AuthStep> {
        let State::SentFirst {
            user,
            creds,
            client_first_bare,
            server_first,
            nonce,
            gs2,
        } = std::mem::replace(&mut self.state, State::Failed)
        else {
            return None;
        };
        let msg = std::str::from_utf8(data).ok()?;
        let (without_proof, proof) = msg.rsplit_once(",p=")?;
        if attribute(without_proof, 'c')? != STANDARD.encode(gs2.as_bytes()) {
            return None;
        }
        if attribute(without_proof, 'r')? != nonce {
            return None;
        }
        let proof = STANDARD.decode(proof).ok().filter(|p| p.len() == 32)?;
        let creds = creds?;
        if self.connect_user.as_deref().is_some_and(|u| u != user) {
            return None;
        }
        let auth_message = format!("{client_first_bare},{server_first},{without_proof}");
        let stored = hmac::Key::new(hmac::HMAC_SHA256, &creds.stored_key);
        let signature = hmac::sign(&stored, auth_message.as_bytes());
        let client_key: Vec<u8> = proof.iter().zip(signature.as_ref()).map(|(p, s)| p ^ s).collect();
        let computed = digest::digest(&digest::SHA256, &client_key);
        // Constant time: compare HMACs of both sides (hmac::verify compares in constant time).
        let tag = hmac::sign(&self.secret, computed.as_ref());
        hmac::verify(&self.secret, &creds.stored_key, tag.as_ref()).ok()?;
        let server_key = hmac::Key::new(hmac::HMAC_SHA256, &creds.server_key);
        let server_signature = hmac::sign(&server_key, auth_message.as_bytes());
        self.state = State::Done(user);
        Some(AuthStep::Success(Some(Bytes::from(format!(
            "v={}",
            STANDARD.encode(server_signature.as_ref())
        )))))
    }
}

impl AuthExchange for Exchange {
    fn step(&mut self, data: Option<&[u8]>) -> AuthStep {
        let data = data.unwrap_or_default();
        let step = match self.state {
            State::Start => self.first(data),
            State::SentFirst { .. } => self.last(data),
            State::Done(_) | State::Failed => None,
        };
        step.unwrap_or_else(|| {
            self.state = State::Failed;
            AuthStep::Failure
        })
    }

    fn identity(&self) -> Option<String> {
        match &self.state {
            State::Done(user) => Some(user.clone()),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_attributes() {
        assert_eq!(decode_name("a=2Cb=3Dc").as_deref(), Some("a,b=c"));
        assert_eq!(decode_name("a=2"), None);
        assert_eq!(decode_name(""), None);
        assert_eq!(attribute("n=user,r=abc", 'r'), Some("abc"));
        assert_eq!(attribute("n=user,r=abc", 's'), None);
        assert!(!valid_nonce("a,b"));
    }
}
