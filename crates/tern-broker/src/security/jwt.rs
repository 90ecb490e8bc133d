//! JSON Web Tokens as credentials: in the CONNECT password, or as the Authentication
//! Data of the 5.0 enhanced authentication method `JWT` (which also allows
//! re-authentication with a fresh token, section 4.12.1).
//!
//! A token is accepted when:
//! - its header names an algorithm listed in `algorithms` (`alg: none` never is: it is
//!   not an algorithm the verifier knows, so the header does not parse);
//! - its signature verifies with a configured key: the PEM `public_key_file` (RSA, EC or
//!   Ed25519), the shared `secret` (HS*), or a key of the JWKS at `jwks_url` (the one with
//!   the token's `kid`, or any of the right family when the token names none);
//! - `exp` is present (unless `require_exp = false`) and not past, `nbf` not in the
//!   future, both with `leeway_secs` of clock skew; `iss` and `aud` equal `issuer` and
//!   `audience` when those are configured.
//!
//! The user name the ACL sees is the `username_claim` (default `sub`) of the token, or the
//! CONNECT user name when the token has none. The `acl_claim` (default `acl`), when
//! present, is the client's access list, applied like `pattern` lines of the ACL file
//! (see `grants.rs`): `{"publish": ["devices/%c/#"], "subscribe": ["devices/#"]}`.
//!
//! ## JWKS
//! The key set is fetched at start and every `jwks_refresh_secs` (default 300) by the
//! security task (`Security::run`); a token whose `kid` is unknown asks for an early refresh (at most one per
//! `JWKS_MIN_REFRESH`). A fetch that fails (service down, an answer that is not a key set)
//! keeps the keys in force and is logged: an outage of the identity provider does not
//! lock out clients with valid tokens.

use std::collections::HashSet;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use super::grants::Grant;
use super::http::{HttpClient, Target};

/// Least time between two JWKS fetches asked for by unknown key ids.
const JWKS_MIN_REFRESH: Duration = Duration::from_secs(10);

/// `[auth.jwt]`: how tokens are verified.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct JwtConfig {
    /// Accepted signature algorithms: any of `HS256`, `HS384`, `HS512`, `RS256`, `RS384`,
    /// `RS512`, `PS256`, `PS384`, `PS512`, `ES256`, `ES384`, `EdDSA` (default `["RS256"]`).
    pub algorithms: Vec<String>,
    /// A PEM public key (RSA, EC or Ed25519; `PUBLIC KEY` or `RSA PUBLIC KEY`).
    pub public_key_file: Option<std::path::PathBuf>,
    /// The shared secret of HS256/384/512.
    pub secret: Option<String>,
    /// A file holding the shared secret (trailing newline ignored).
    pub secret_file: Option<std::path::PathBuf>,
    /// A JSON Web Key Set to fetch (http or https).
    pub jwks_url: Option<String>,
    /// Seconds between two fetches of the key set (default 300).
    pub jwks_refresh_secs: u64,
    /// CA certificates (PEM) of an https `jwks_url` (default: the system's roots).
    pub jwks_ca_file: Option<std::path::PathBuf>,
    /// Required `aud` (one of the token's audiences must be this).
    pub audience: Option<String>,
    /// Required `iss`.
    pub issuer: Option<String>,
    /// Clock skew allowed on `exp` and `nbf`, in seconds (default 30).
    pub leeway_secs: u64,
    /// Whether a token without `exp` is refused (default true).
    pub require_exp: bool,
    /// The claim that names the user (default `sub`).
    pub username_claim: String,
    /// The claim that carries the client's access list (default `acl`).
    pub acl_claim: String,
    /// Close the connection when its token expires (`exp` + `leeway_secs`), unless a 5.0
    /// client re-authenticated with a newer one before (default true).
    pub disconnect_on_expiry: bool,
}

impl Default for JwtConfig {
    fn default() -> JwtConfig {
        JwtConfig {
            algorithms: vec!["RS256".into()],
            public_key_file: None,
            secret: None,
            secret_file: None,
            jwks_url: None,
            jwks_refresh_secs: 300,
            jwks_ca_file: None,
            audience: None,
            issuer: None,
            leeway_secs: 30,
            require_exp: true,
            username_claim: "sub".into(),
            acl_claim: "acl".into(),
            disconnect_on_expiry: true,
        }
    }
}

/// Why a token was refused (logged; the client gets 0x86 / 0x04, or 0x87 through AUTH).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JwtError {
    /// Not three base64url parts with a JSON header naming a known algorithm.
    #[error("malformed token: {0}")]
    Malformed(String),
    /// The header's algorithm is not one of `algorithms`.
    #[error("algorithm {0} is not accepted")]
    Algorithm(String),
    /// No configured key fits the token (family or `kid`).
    #[error("no key for this token ({0})")]
    NoKey(String),
    /// The signature does not verify.
    #[error("bad signature")]
    Signature,
    /// `exp` is past.
    #[error("token expired")]
    Expired,
    /// `nbf` is in the future.
    #[error("token not valid yet (nbf)")]
    NotYetValid,
    /// Wrong or missing `aud`.
    #[error("wrong audience")]
    Audience,
    /// Wrong or missing `iss`.
    #[error("wrong issuer")]
    Issuer,
    /// A required claim is missing or has the wrong type.
    #[error("claim {0}")]
    Claim(String),
}

/// What a valid token says.
#[derive(Debug, Clone)]
pub(crate) struct Verified {
    /// The user name claim, if present.
    pub username: Option<String>,
    /// The access list claim, if present.
    pub grant: Option<Grant>,
    /// When it stops being accepted (`exp` + `leeway_secs`), if it has an `exp`.
    pub expires: Option<SystemTime>,
}

/// One verification key and the algorithms it may verify.
struct Key {
    kid: Option<String>,
    family: Family,
    key: DecodingKey,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    Hmac,
    Rsa,
    Ec,
    Ed,
}

fn family(alg: Algorithm) -> Family {
    use Algorithm::*;
    match alg {
        HS256 | HS384 | HS512 => Family::Hmac,
        RS256 | RS384 | RS512 | PS256 | PS384 | PS512 => Family::Rsa,
        ES256 | ES384 => Family::Ec,
        EdDSA => Family::Ed,
    }
}

fn parse_algorithm(name: &str) -> Result<Algorithm, String> {
    name.parse::<Algorithm>().map_err(|_| {
        format!("`auth.jwt.algorithms`: unknown algorithm {name:?} (HS256, RS256, ES256, EdDSA, ...)")
    })
}

/// The keys in force (replaced whole by a JWKS refresh).
type KeySet = Arc<Vec<Key>>;

/// A token verifier built from `[auth.jwt]`.
pub(crate) struct Jwt {
    config: JwtConfig,
    algorithms: Vec<Algorithm>,
    static_keys: Vec<Key>,
    jwks: Option<Jwks>,
}

impl std::fmt::Debug for Jwt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jwt")
            .field("algorithms", &self.algorithms)
            .field("static_keys", &self.static_keys.len())
            .field("jwks", &self.jwks.as_ref().map(|j| j.target.url()))
            .finish_non_exhaustive()
    }
}

/// The fetched key set and what its refresh task needs.
struct Jwks {
    target: Target,
    client: HttpClient,
    keys: RwLock<KeySet>,
    /// When an early refresh was last asked for.
    last_ask: std::sync::Mutex<Option<Instant>>,
    ask: Arc<tokio::sync::Notify>,
}

fn pem_key(pem: &[u8]) -> Result<(Family, DecodingKey), String> {
    if let Ok(k) = DecodingKey::from_rsa_pem(pem) {
        return Ok((Family::Rsa, k));
    }
    if let Ok(k) = DecodingKey::from_ec_pem(pem) {
        return Ok((Family::Ec, k));
    }
    if let Ok(k) = DecodingKey::from_ed_pem(pem) {
        return Ok((Family::Ed, k));
    }
    Err("not a PEM RSA, EC or Ed25519 public key".into())
}

/// The keys of a JWKS document; keys that do not parse (or are private-only types) are skipped.
fn parse_jwks(body: &[u8]) -> Result<Vec<Key>, String> {
    #[derive(Deserialize)]
    struct Set {
        keys: Vec<serde_json::Value>,
    }
    let set: Set = serde_json::from_slice(body).map_err(|e| format!("not a JWKS document: {e}"))?;
    let mut keys = Vec::new();
    for v in set.keys {
        let Ok(jwk) = serde_json::from_value::<Jwk>(v) else {
            continue;
        };
        let fam = match &jwk.algorithm {
            jsonwebtoken::jwk::AlgorithmParameters::RSA(_) => Family::Rsa,
            jsonwebtoken::jwk::AlgorithmParameters::EllipticCurve(_) => Family::Ec,
            jsonwebtoken::jwk::AlgorithmParameters::OctetKeyPair(_) => Family::Ed,
            jsonwebtoken::jwk::AlgorithmParameters::OctetKey(_) => Family::Hmac,
        };
        if let Ok(key) = DecodingKey::from_jwk(&jwk) {
            keys.push(Key {
                kid: jwk.common.key_id.clone(),
                family: fam,
                key,
            });
        }
    }
    Ok(keys)
}

impl Jwt {
    /// Check the configuration and load the key file / secret; errors name the setting.
    /// The JWKS is not fetched here: see [`Jwt::fetch_jwks`].
    pub fn new(config: &JwtConfig) -> Result<Jwt, String> {
        if config.algorithms.is_empty() {
            return Err("`auth.jwt.algorithms` is empty".into());
        }
        let algorithms = config
            .algorithms
            .iter()
            .map(|a| parse_algorithm(a))
            .collect::<Result<Vec<_>, _>>()?;
        let mut static_keys = Vec::new();
        if let Some(path) = &config.public_key_file {
            let pem = std::fs::read(path)
                .map_err(|e| format!("`auth.jwt.public_key_file` {}: {e}", path.display()))?;
            let (family, key) =
                pem_key(&pem).map_err(|e| format!("`auth.jwt.public_key_file` {}: {e}", path.display()))?;
            static_keys.push(Key {
                kid: None,
                family,
                key,
            });
        }
        let secret = match (&config.secret, &config.secret_file) {
            (Some(s), _) => Some(s.clone().into_bytes()),
            (None, Some(path)) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("`auth.jwt.secret_file` {}: {e}", path.display()))?;
                Some(text.trim_end_matches(['\r', '\n']).as_bytes().to_vec())
            }
            (None, None) => None,
        };
        if let Some(s) = secret {
            if s.is_empty() {
                return Err("`auth.jwt.secret` is empty".into());
            }
            static_keys.push(Key {
                kid: None,
                family: Family::Hmac,
                key: DecodingKey::from_secret(&s),
            });
        }
        let jwks = match &config.jwks_url {
            Some(url) => Some(Jwks {
                target: Target::parse(url).map_err(|e| format!("`auth.jwt.jwks_url`: {e}"))?,
                client: {
                    if let Some(ca) = &config.jwks_ca_file {
                        std::fs::metadata(ca)
                            .map_err(|e| format!("`auth.jwt.jwks_ca_file` {}: {e}", ca.display()))?;
                    }
                    HttpClient::new(Duration::from_secs(10), 2, config.jwks_ca_file.as_deref())
                },
                keys: RwLock::new(Arc::new(Vec::new())),
                last_ask: std::sync::Mutex::new(None),
                ask: Arc::new(tokio::sync::Notify::new()),
            }),
            None => None,
        };
        if static_keys.is_empty() && jwks.is_none() {
            return Err("`auth.jwt` needs `public_key_file`, `secret`, `secret_file` or `jwks_url`".into());
        }
        for alg in &algorithms {
            let fam = family(*alg);
            if jwks.is_none() && !static_keys.iter().any(|k| k.family == fam) {
                return Err(format!(
                    "`auth.jwt.algorithms`: {alg:?} needs a key of its kind, and none is configured"
                ));
            }
        }
        Ok(Jwt {
            config: config.clone(),
            algorithms,
            static_keys,
            jwks,
        })
    }

    /// The configuration this verifier was built from.
    pub fn config(&self) -> &JwtConfig {
        &self.config
    }

    /// Whether a password looks like a JWS compact token (three base64url parts, the first
    /// a JSON object): only those are this source's to judge; other passwords go on to the
    /// next source of the chain.
    pub fn looks_like_token(password: &[u8]) -> bool {
        let Ok(text) = std::str::from_utf8(password) else {
            return false;
        };
        let mut parts = text.split('.');
        let (Some(h), Some(_), Some(_), None) = (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return false;
        };
        // base64url of "{" begins with "ey".
        h.starts_with("ey")
            && text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'='))
    }

    /// Verify a token at `now` (wall clock).
    pub fn verify(&self, token: &str) -> Result<Verified, JwtError> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| JwtError::Malformed(e.to_string()))?;
        if !self.algorithms.contains(&header.alg) {
            return Err(JwtError::Algorithm(format!("{:?}", header.alg)));
        }
        let fam = family(header.alg);
        let mut validation = Validation::new(header.alg);
        validation.leeway = self.config.leeway_secs;
        validation.validate_nbf = true;
        validation.validate_exp = true;
        let mut required = HashSet::new();
        if self.config.require_exp {
            required.insert("exp".to_string());
        }
        validation.required_spec_claims = required;
        match &self.config.audience {
            Some(aud) => validation.set_audience(&[aud]),
            None => validation.validate_aud = false,
        }
        if let Some(iss) = &self.config.issuer {
            validation.set_issuer(&[iss]);
        }
        // Candidate keys: static ones of the family, then the JWKS's (by kid when the token has one).
        let jwks_keys = self
            .jwks
            .as_ref()
            .map(|j| j.keys.read().unwrap_or_else(|e| e.into_inner()).clone());
        let from_jwks = jwks_keys.iter().flat_map(|ks| ks.iter());
        let candidates: Vec<&Key> = self
            .static_keys
            .iter()
            .chain(from_jwks)
            .filter(|k| k.family == fam)
            .filter(|k| match (&header.kid, &k.kid) {
                (Some(want), Some(have)) => want == have,
                _ => true,
            })
            .collect();
        if candidates.is_empty() {
            if let (Some(j), Some(_)) = (&self.jwks, &header.kid) {
                j.ask_refresh();
            }
            return Err(JwtError::NoKey(match &header.kid {
                Some(kid) => format!("kid {kid:?}"),
                None => format!("{:?}", header.alg),
            }));
        }
        let mut last = JwtError::Signature;
        for key in candidates {
            match jsonwebtoken::decode::<serde_json::Value>(token, &key.key, &validation) {
                Ok(data) => return self.claims(data.claims),
                Err(e) => {
                    last = match e.kind() {
                        ErrorKind::InvalidSignature | ErrorKind::InvalidAlgorithm => JwtError::Signature,
                        ErrorKind::ExpiredSignature => JwtError::Expired,
                        ErrorKind::ImmatureSignature => JwtError::NotYetValid,
                        ErrorKind::InvalidAudience => JwtError::Audience,
                        ErrorKind::InvalidIssuer => JwtError::Issuer,
                        ErrorKind::MissingRequiredClaim(c) => JwtError::Claim(format!("{c} is missing")),
                        other => JwtError::Malformed(format!("{other:?}")),
                    };
                    // Only a bad signature may be another key's: the rest is the token's own fault.
                    if last != JwtError::Signature {
                        return Err(last);
                    }
                }
            }
        }
        Err(last)
    }

    fn claims(&self, claims: serde_json::Value) -> Result<Verified, JwtError> {
        let username = match claims.get(&self.config.username_claim) {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            Some(_) => {
                return Err(JwtError::Claim(format!(
                    "{} is not a string",
                    self.config.username_claim
                )))
            }
        };
        let grant = match claims.get(&self.config.acl_claim) {
            None | Some(serde_json::Value::Null) => None,
            Some(v) => Some(
                Grant::from_json(v)
                    .map_err(|e| JwtError::Claim(format!("{}: {e}", self.config.acl_claim)))?,
            ),
        };
        // The token is accepted until `exp` + the leeway: the connection lasts as long.
        let expires = claims
            .get("exp")
            .and_then(serde_json::Value::as_u64)
            .map(|s| UNIX_EPOCH + Duration::from_secs(s.saturating_add(self.config.leeway_secs)));
        Ok(Verified {
            username,
            grant,
            expires,
        })
    }

    /// The JWKS URL, when keys come from one.
    pub fn jwks_target(&self) -> Option<&Target> {
        self.jwks.as_ref().map(|j| &j.target)
    }

    /// Time between two fetches of the JWKS.
    pub fn jwks_refresh(&self) -> Duration {
        Duration::from_secs(self.config.jwks_refresh_secs.max(1))
    }

    /// Notified when a token names a key id the JWKS does not have.
    pub fn jwks_asked(&self) -> Option<Arc<tokio::sync::Notify>> {
        self.jwks.as_ref().map(|j| j.ask.clone())
    }

    /// Fetch the JWKS once; on any failure the keys in force stay. Returns the number of keys.
    pub async fn fetch_jwks(&self) -> Result<usize, String> {
        let Some(jwks) = &self.jwks else {
            return Ok(0);
        };
        let r = jwks.client.get(&jwks.target).await.map_err(|e| e.to_string())?;
        if r.status != 200 {
            return Err(format!("HTTP status {}", r.status));
        }
        let keys = parse_jwks(&r.body)?;
        if keys.is_empty() {
            return Err("the key set has no usable key".into());
        }
        let n = keys.len();
        *jwks.keys.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(keys);
        Ok(n)
    }
}

impl Jwks {
    fn ask_refresh(&self) {
        let mut last = self.last_ask.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if last.is_none_or(|t| now.duration_since(t) >= JWKS_MIN_REFRESH) {
            *last = Some(now);
            self.ask.notify_one();
        }
    }
}

/// Seconds since the epoch, for logs.
pub(crate) fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The 5.0 enhanced authentication method name of tokens.
pub(crate) const METHOD: &str = "JWT";

/// The enhanced authentication method `JWT`: the Authentication Data of CONNECT (or of an
/// AUTH 0x19 re-authentication) is the token. Success in one step; the token's access list
/// and expiry replace the client's, so a re-authentication with a fresh token before `exp`
/// keeps the connection open.
#[derive(Debug)]
pub(crate) struct JwtMethod {
    security: std::sync::Weak<super::Security>,
}

impl JwtMethod {
    pub fn new(security: &Arc<super::Security>) -> JwtMethod {
        JwtMethod {
            security: Arc::downgrade(security),
        }
    }
}

impl crate::Authenticator for JwtMethod {
    fn method(&self) -> &str {
        METHOD
    }

    fn begin(&self, client_id: &str, username: Option<&str>) -> Box<dyn crate::AuthExchange> {
        Box::new(JwtExchange {
            security: self.security.clone(),
            client_id: client_id.to_string(),
            username: username.map(str::to_string),
            identity: None,
        })
    }
}

struct JwtExchange {
    security: std::sync::Weak<super::Security>,
    client_id: String,
    username: Option<String>,
    identity: Option<String>,
}

impl crate::AuthExchange for JwtExchange {
    fn step(&mut self, data: Option<&[u8]>) -> crate::AuthStep {
        let Some(security) = self.security.upgrade() else {
            return crate::AuthStep::Failure;
        };
        let Some(jwt) = security.sources().jwt.clone() else {
            tracing::warn!(client_id = %self.client_id, "JWT method used, but `auth.jwt` is no longer configured");
            return crate::AuthStep::Failure;
        };
        let token = data.and_then(|d| std::str::from_utf8(d).ok()).unwrap_or("");
        match jwt.verify(token) {
            Ok(v) => {
                let user = v.username.or_else(|| self.username.clone());
                security.grants().set(
                    &self.client_id,
                    v.grant,
                    v.expires,
                    jwt.config().disconnect_on_expiry,
                );
                tracing::debug!(client_id = %self.client_id, expires = ?v.expires.map(unix_secs), "JWT accepted");
                self.identity = user;
                crate::AuthStep::Success(None)
            }
            Err(e) => {
                tracing::warn!(client_id = %self.client_id, "JWT refused: {e}");
                crate::AuthStep::Failure
            }
        }
    }

    fn identity(&self) -> Option<String> {
        self.identity.clone()
    }
}
