//! The authentication chain: `[auth]` settings, and the sources asked in their order at
//! CONNECT.
//!
//! ```toml
//! [auth]
//! chain = ["jwt", "http", "password_file"]   # the default: the configured ones, in this order
//! ```
//!
//! Each source looks at the CONNECT and either decides (accepts, naming the user and maybe
//! granting an access list; or refuses with a reason code) or passes to the next:
//! - `jwt` decides for passwords that look like a token (three base64url parts); others pass.
//!   A bad token is CONNACK 0x86 Bad User Name or Password (3.1.1: 0x04).
//! - `http` decides as the service answers (`allow`, `deny`: 0x87 / 0x05, `ignore`: pass);
//!   a service that cannot answer decides by `on_error` (`deny`: 0x88 Server unavailable /
//!   0x03, `allow`, `next`).
//! - `password_file` decides for user names it knows, and for every user name when it is
//!   the last source (a wrong or missing password: 0x86 / 0x04); unknown users pass on.
//!
//! When no source decides, the listener's anonymous policy does, as without a chain.

use std::path::PathBuf;
use std::sync::Arc;

use serde::Deserialize;
use tern_proto::{ByteString, Connect, ReasonCode};

use super::ban::FlappingConfig;
use super::grants::Grant;
use super::hook::{ConnectInfo, Hook, HookConfig, OnError, Verdict};
use super::jwt::{Jwt, JwtConfig};
use super::{Origin, Security};

/// `[auth]`: the sources beyond the password file, their order, and the protections that
/// run before them.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// The order in which sources are asked (default: `jwt`, `http`, `password_file`, those
    /// that are configured).
    pub chain: Vec<Source>,
    /// `[auth.jwt]`: tokens in the password or the 5.0 method `JWT`.
    pub jwt: Option<JwtConfig>,
    /// `[auth.http]`: the HTTP hook.
    pub http: Option<HookConfig>,
    /// The ban list file (see `docs/auth.md`); reloaded on SIGHUP.
    pub ban_file: Option<PathBuf>,
    /// `[auth.flapping]`: refuse clients that reconnect too often.
    pub flapping: FlappingConfig,
    /// `[auth.rate_limit]`: messages and bytes per second each client may send.
    pub rate_limit: RateLimitConfig,
    /// Authentication checks (password hashing, token verification, hook requests) running at
    /// once, at most (default 16); more CONNECTs wait their turn, within the connect timeout.
    pub max_concurrent_checks: usize,
    /// Of those, password hashes computed at once (PBKDF2, on the blocking pool), at most
    /// (default 0: half the cores, at least 1), so that a flood of CONNECTs with wrong
    /// passwords leaves CPU to the connected clients.
    pub max_concurrent_hashes: usize,
    /// A client with a verified certificate must authenticate as the user named by its CN
    /// (e.g. the JWT subject must equal the CN); a client without one is refused (default false).
    pub cert_cn_must_match_user: bool,
    /// Seconds between two looks at the modification times of the password, ACL and ban files
    /// and of the listeners' certificates: a change reloads them as SIGHUP does (default 0:
    /// only SIGHUP).
    pub watch_interval_secs: u64,
}

impl Default for AuthConfig {
    fn default() -> AuthConfig {
        AuthConfig {
            chain: Vec::new(),
            jwt: None,
            http: None,
            ban_file: None,
            flapping: FlappingConfig::default(),
            rate_limit: RateLimitConfig::default(),
            max_concurrent_checks: 16,
            max_concurrent_hashes: 0,
            cert_cn_must_match_user: false,
            watch_interval_secs: 0,
        }
    }
}

/// `[auth.rate_limit]`: per-client inbound limits, applied by `listener/throttle.rs` as
/// backpressure (the client's socket is not read while it is over them).
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitConfig {
    /// MQTT packets a client may send per second (0: no limit).
    pub messages_per_sec: u32,
    /// Bytes a client may send per second (0: no limit).
    pub bytes_per_sec: u64,
    /// Seconds of sending a quiet client may do at once (the buckets' size; default 1).
    pub burst_secs: f64,
}

impl Default for RateLimitConfig {
    fn default() -> RateLimitConfig {
        RateLimitConfig {
            messages_per_sec: 0,
            bytes_per_sec: 0,
            burst_secs: 1.0,
        }
    }
}

impl RateLimitConfig {
    /// Whether any limit is set.
    pub fn enabled(&self) -> bool {
        self.messages_per_sec > 0 || self.bytes_per_sec > 0
    }
}

/// An authentication source of the chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// `[auth.jwt]`.
    Jwt,
    /// `[auth.http]` `url`.
    Http,
    /// `password_file`.
    PasswordFile,
}

/// The sources built from the configuration (replaced whole by a reload).
#[derive(Debug, Default)]
pub(crate) struct Sources {
    pub order: Vec<Source>,
    pub jwt: Option<Arc<Jwt>>,
    pub hook: Option<Arc<Hook>>,
}

impl Sources {
    /// Build the sources; errors name the setting.
    pub fn new(auth: &AuthConfig, password_file: bool) -> Result<Sources, String> {
        let jwt = auth.jwt.as_ref().map(Jwt::new).transpose()?.map(Arc::new);
        let hook = auth.http.as_ref().map(Hook::new).transpose()?.map(Arc::new);
        let configured = |s: Source| match s {
            Source::Jwt => jwt.is_some(),
            Source::Http => hook.as_ref().is_some_and(|h| h.checks_connect()),
            Source::PasswordFile => password_file,
        };
        let order = if auth.chain.is_empty() {
            [Source::Jwt, Source::Http, Source::PasswordFile]
                .into_iter()
                .filter(|s| configured(*s))
                .collect()
        } else {
            for (i, s) in auth.chain.iter().enumerate() {
                if !configured(*s) {
                    return Err(format!("`auth.chain[{i}]`: {s:?} is not configured"));
                }
                if auth.chain[..i].contains(s) {
                    return Err(format!("`auth.chain[{i}]`: {s:?} is listed twice"));
                }
            }
            auth.chain.clone()
        };
        Ok(Sources { order, jwt, hook })
    }
}

/// Who a source accepted.
#[derive(Debug, Default)]
pub(crate) struct Identity {
    pub username: Option<ByteString>,
    pub grant: Option<Grant>,
    pub expires: Option<std::time::SystemTime>,
    pub disconnect_at_expiry: bool,
}

type Refusal = (ReasonCode, String);

/// What one source made of a CONNECT.
type Step = Option<Result<Identity, Refusal>>;

/// The CONNECT user name, as the broker keeps it (its own bytes).
fn connect_user(c: &Connect) -> Option<ByteString> {
    c.username.clone().map(|u| ByteString::from(u.to_string()))
}

impl Security {
    /// Run the chain (see the module documentation): `Ok(None)` when no source decided.
    pub(crate) async fn run_chain(
        &self,
        origin: &Origin,
        peer: std::net::SocketAddr,
        client_id: &str,
        c: &Connect,
    ) -> Result<Option<Identity>, Refusal> {
        let sources = self.sources();
        let last = sources.order.len().saturating_sub(1);
        for (i, source) in sources.order.iter().enumerate() {
            let step = match source {
                Source::Jwt => jwt_step(sources.jwt.as_deref(), c),
                Source::Http => match &sources.hook {
                    Some(hook) => http_step(hook, origin, peer, client_id, c).await,
                    None => None,
                },
                Source::PasswordFile => self.password_step(c, i == last).await,
            };
            if let Some(decided) = step {
                return decided.map(Some);
            }
        }
        Ok(None)
    }

    /// The password file: decides for the users it knows, and for all when it is the last source.
    async fn password_step(&self, c: &Connect, last: bool) -> Step {
        let file = self.passwords()?;
        let Some(user) = &c.username else {
            return (c.password.is_some() && last).then(|| {
                Err((
                    ReasonCode::BadUserNameOrPassword,
                    "password without a user name".into(),
                ))
            });
        };
        let user_s = user.to_string();
        if !last && !file.contains(&user_s) {
            return None;
        }
        let password = c.password.clone();
        // Hashing is bounded apart (cores / 2): a flood of bad passwords keeps a core for the
        // connected clients.
        let _hashing = self.hashing.acquire().await;
        let ok = tokio::task::spawn_blocking(move || match password {
            Some(p) => file.verify(&user_s, &p),
            None => {
                // As slow as a check, so the answer time does not tell whether the user exists.
                let _ = file.verify(&user_s, b"");
                false
            }
        })
        .await
        .unwrap_or(false);
        Some(if ok {
            Ok(Identity {
                username: connect_user(c),
                ..Identity::default()
            })
        } else {
            Err((
                ReasonCode::BadUserNameOrPassword,
                "bad user name or password".into(),
            ))
        })
    }
}

/// JWT: decides for passwords that look like a token.
fn jwt_step(jwt: Option<&Jwt>, c: &Connect) -> Step {
    let (jwt, pw) = (jwt?, c.password.as_deref()?);
    if !Jwt::looks_like_token(pw) {
        return None;
    }
    let token = std::str::from_utf8(pw).unwrap_or_default();
    Some(match jwt.verify(token) {
        Ok(v) => Ok(Identity {
            username: v.username.map(ByteString::from).or_else(|| connect_user(c)),
            grant: v.grant,
            expires: v.expires,
            disconnect_at_expiry: jwt.config().disconnect_on_expiry,
        }),
        Err(e) => Err((ReasonCode::BadUserNameOrPassword, format!("JWT refused: {e}"))),
    })
}

/// The HTTP hook: decides as the service answers, or as `on_error` says when it cannot.
async fn http_step(
    hook: &Hook,
    origin: &Origin,
    peer: std::net::SocketAddr,
    client_id: &str,
    c: &Connect,
) -> Step {
    if !hook.checks_connect() {
        return None;
    }
    let info = ConnectInfo {
        client_id,
        username: c.username.as_deref(),
        password: c.password.as_deref(),
        peer,
        cn: origin.cert_name.as_ref().and_then(|n| n.as_deref()),
        listener: &origin.policy.name,
        protocol: c.protocol_version.level(),
    };
    match hook.connect(&info).await {
        Verdict::Allow { username, grant } => Some(Ok(Identity {
            username: username.map(ByteString::from).or_else(|| connect_user(c)),
            grant,
            ..Identity::default()
        })),
        Verdict::Deny => Some(Err((
            ReasonCode::NotAuthorized,
            "refused by the HTTP auth service".into(),
        ))),
        Verdict::Ignore => None,
        Verdict::Error(e) => match hook.on_error() {
            OnError::Deny => Some(Err((
                ReasonCode::ServerUnavailable,
                format!("the HTTP auth service did not answer ({e}); on_error = deny"),
            ))),
            OnError::Allow => {
                tracing::warn!(%peer, client_id, "HTTP auth service failed ({e}); on_error = allow");
                Some(Ok(Identity {
                    username: connect_user(c),
                    ..Identity::default()
                }))
            }
            OnError::Next => {
                tracing::warn!(%peer, client_id, "HTTP auth service failed ({e}); asking the next source");
                None
            }
        },
    }
}
