//! SCRAM-SHA-256 (RFC 5802, RFC 7677) for MQTT 5.0 enhanced authentication:
//! the password never crosses the connection, and the server proves it knows
//! the credentials too ([`Options::scram_sha256`](crate::Options::scram_sha256)).
//!
//! No channel binding (`n,,`); the user name is sent with `,` and `=` escaped and
//! no SASLprep.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bytes::Bytes;
use ring::rand::{SecureRandom, SystemRandom};
use ring::{digest, hmac, pbkdf2};
use tern_proto::session::AuthMethod;

/// Most PBKDF2 iterations a server may ask for (a hostile server could ask for
/// billions and stall the client).
const MAX_ITERATIONS: u32 = 1_000_000;

enum State {
    Idle,
    SentFirst { bare: String, cnonce: String },
    SentFinal { server_signature: Vec<u8> },
}

/// The client side of SCRAM-SHA-256.
pub(crate) struct ScramSha256 {
    user: String,
    password: String,
    state: State,
}

impl std::fmt::Debug for ScramSha256 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScramSha256")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

impl ScramSha256 {
    pub fn new(user: &str, password: &str) -> ScramSha256 {
        ScramSha256 {
            user: user.to_string(),
            password: password.to_string(),
            state: State::Idle,
        }
    }
}

fn attribute(msg: &str, key: char) -> Option<&str> {
    msg.split(',').find_map(|a| {
        let mut chars = a.chars();
        (chars.next() == Some(key) && chars.next() == Some('=')).then(|| &a[2..])
    })
}

impl AuthMethod for ScramSha256 {
    fn name(&self) -> &str {
        "SCRAM-SHA-256"
    }

    fn start(&mut self) -> Option<Bytes> {
        let mut raw = [0u8; 18];
        if SystemRandom::new().fill(&mut raw).is_err() {
            self.state = State::Idle;
            return None;
        }
        let cnonce = STANDARD.encode(raw);
        let name = self.user.replace('=', "=3D").replace(',', "=2C");
        let bare = format!("n={name},r={cnonce}");
        let first = format!("n,,{bare}");
        self.state = State::SentFirst { bare, cnonce };
        Some(Bytes::from(first))
    }

    fn step(&mut self, data: Option<&[u8]>) -> Result<Bytes, String> {
        let State::SentFirst { bare, cnonce } = std::mem::replace(&mut self.state, State::Idle) else {
            return Err("unexpected SCRAM message".into());
        };
        let server_first = std::str::from_utf8(data.unwrap_or_default())
            .map_err(|_| "the server's SCRAM message is not UTF-8".to_string())?;
        let nonce = attribute(server_first, 'r')
            .filter(|n| n.starts_with(cnonce.as_str()) && n.len() > cnonce.len())
            .ok_or("the server's nonce does not extend ours")?;
        let salt = attribute(server_first, 's')
            .and_then(|s| STANDARD.decode(s).ok())
            .filter(|s| !s.is_empty())
            .ok_or("missing or invalid salt")?;
        let iterations = attribute(server_first, 'i')
            .and_then(|i| i.parse::<u32>().ok())
            .filter(|&i| i <= MAX_ITERATIONS)
            .and_then(std::num::NonZeroU32::new)
            .ok_or("missing or unacceptable iteration count")?;
        let mut salted = [0u8; 32];
        pbkdf2::derive(
            pbkdf2::PBKDF2_HMAC_SHA256,
            iterations,
            &salt,
            self.password.as_bytes(),
            &mut salted,
        );
        let salted = hmac::Key::new(hmac::HMAC_SHA256, &salted);
        let client_key = hmac::sign(&salted, b"Client Key");
        let stored_key = digest::digest(&digest::SHA256, client_key.as_ref());
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("{bare},{server_first},{without_proof}");
        let signature = hmac::sign(
            &hmac::Key::new(hmac::HMAC_SHA256, stored_key.as_ref()),
            auth_message.as_bytes(),
        );
        let proof: Vec<u8> = client_key
            .as_ref()
            .iter()
            .zip(signature.as_ref())
            .map(|(k, s)| k ^ s)
            .collect();
        let server_key = hmac::sign(&salted, b"Server Key");
        let server_signature = hmac::sign(
            &hmac::Key::new(hmac::HMAC_SHA256, server_key.as_ref()),
            auth_message.as_bytes(),
        );
        self.state = State::SentFinal {
            server_signature: server_signature.as_ref().to_vec(),
        };
        Ok(Bytes::from(format!(
            "{without_proof},p={}",
            STANDARD.encode(proof)
        )))
    }

    fn finish(&mut self, data: Option<&[u8]>) -> Result<(), String> {
        let State::SentFinal { server_signature } = std::mem::replace(&mut self.state, State::Idle) else {
            return Err("the server accepted the connection before the SCRAM exchange finished".into());
        };
        let msg = std::str::from_utf8(data.unwrap_or_default()).unwrap_or_default();
        match attribute(msg, 'v').and_then(|v| STANDARD.decode(v).ok()) {
            Some(v) if v == server_signature => Ok(()),
            _ => Err("the server's SCRAM signature is wrong: it does not know the credentials".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The RFC 7677 section 3 example, with its fixed client nonce.
    #[test]
    fn rfc7677_example() {
        let mut c = ScramSha256::new("user", "pencil");
        let _ = c.start();
        let bare = "n=user,r=rOprNGfwEbeRWgbNEkqO".to_string();
        c.state = State::SentFirst {
            bare,
            cnonce: "rOprNGfwEbeRWgbNEkqO".into(),
        };
        let server_first =
            "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
        let last = c.step(Some(server_first.as_bytes())).unwrap();
        assert_eq!(
            &last[..],
            &b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="[..]
        );
        assert!(c
            .finish(Some(b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="))
            .is_ok());
    }

    #[test]
    fn a_server_that_skips_the_proof_is_refused() {
        let mut c = ScramSha256::new("user", "pencil");
        let _ = c.start();
        assert!(c.finish(None).is_err());
        let _ = c.start();
        assert!(c.step(Some(b"r=someone-else,s=AAAA,i=4096")).is_err());
    }
}
