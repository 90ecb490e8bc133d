//! Who may use the HTTP endpoint.
//!
//! - Without credentials configured, only a loopback address may be served (anyone on the
//!   machine may then call it); [`Auth::load`] refuses any other address.
//! - With `admins`, HTTP Basic against those users of the password file (PBKDF2, checked on
//!   a blocking thread); with `tokens_file`, `Authorization: Bearer TOKEN` where the file
//!   holds the lowercase hex SHA-256 of each token, never the token.
//! - A wrong or missing credential gets 401 (with `WWW-Authenticate: Basic` when admins are
//!   configured, so a browser asks), is counted in `tern_http_auth_failures_total` and
//!   logged with the peer's address; after [`MAX_FAILURES`] failures from one address
//!   within [`FAILURE_WINDOW`], that address gets 429 until the window ends.
//! - Each request carries [`Who`] made it, for the log line of every mutating call.
//! - No CORS. A mutating request whose `Origin` is another site gets 403 (request forgery from
//!   a web page), and so does, on an endpoint open without credentials, a request whose `Host`
//!   is not a loopback name (DNS rebinding).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use tern_broker::HttpConfig;

use crate::{AppState, Error};

/// Failures from one address allowed within [`FAILURE_WINDOW`].
pub const MAX_FAILURES: u32 = 10;
/// The window of [`MAX_FAILURES`].
pub const FAILURE_WINDOW: Duration = Duration::from_secs(60);

/// The lowercase hex SHA-256 of `token`: what a `tokens_file` line holds.
pub fn hash_token(token: &str) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// Who made a request, for the logs.
#[derive(Debug, Clone)]
pub struct Who(pub String);

#[derive(Debug)]
pub(crate) struct Auth {
    /// No credentials: everyone on the (loopback) address.
    open: bool,
    admins: Vec<String>,
    /// SHA-256 digests of the accepted tokens.
    tokens: Vec<[u8; 32]>,
    failures: Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

fn parse_tokens(text: &str, path: &str) -> Result<Vec<[u8; 32]>, Error> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = || {
            Error::Config(format!("`http.tokens_file` {path}: line {}: expected the 64 hex digits of a token's SHA-256 (`tern http-token` prints one)", i + 1))
        };
        if line.len() != 64 {
            return Err(bad());
        }
        let mut d = [0u8; 32];
        for (j, b) in d.iter_mut().enumerate() {
            *b = u8::from_str_radix(&line[2 * j..2 * j + 2], 16).map_err(|_| bad())?;
        }
        out.push(d);
    }
    Ok(out)
}

impl Auth {
    pub fn load(config: &HttpConfig, addr: SocketAddr, has_password_file: bool) -> Result<Auth, Error> {
        if !config.has_credentials() && !addr.ip().is_loopback() {
            return Err(Error::Config(format!(
                "`http.listen` {addr} is not a loopback address: set `http.admins` (users of the password file) or `http.tokens_file`, or serve on 127.0.0.1"
            )));
        }
        if !config.admins.is_empty() && !has_password_file {
            return Err(Error::Config(
                "`http.admins` needs `password_file`, where their passwords are".into(),
            ));
        }
        let tokens = match &config.tokens_file {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .map_err(|e| Error::Config(format!("`http.tokens_file` {}: {e}", p.display())))?;
                parse_tokens(&text, &p.display().to_string())?
            }
            None => Vec::new(),
        };
        Ok(Auth {
            open: !config.has_credentials(),
            admins: config.admins.clone(),
            tokens,
            failures: Mutex::new(HashMap::new()),
        })
    }

    fn limited(&self, ip: IpAddr) -> bool {
        let mut f = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        match f.get(&ip) {
            Some((n, since)) if since.elapsed() < FAILURE_WINDOW => *n >= MAX_FAILURES,
            Some(_) => {
                f.remove(&ip);
                false
            }
            None => false,
        }
    }

    fn failed(&self, ip: IpAddr) {
        let mut f = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        // Bounded: forget expired entries when the map grows.
        if f.len() > 10_000 {
            f.retain(|_, (_, since)| since.elapsed() < FAILURE_WINDOW);
        }
        let e = f.entry(ip).or_insert((0, Instant::now()));
        if e.1.elapsed() >= FAILURE_WINDOW {
            *e = (0, Instant::now());
        }
        e.0 += 1;
    }
}

enum Credential {
    Basic(String, String),
    Bearer(String),
}

fn credential(req: &Request) -> Option<Credential> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, rest) = value.split_once(' ')?;
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(rest.trim())
            .ok()?;
        let text = String::from_utf8(decoded).ok()?;
        let (user, password) = text.split_once(':')?;
        Some(Credential::Basic(user.to_string(), password.to_string()))
    } else if scheme.eq_ignore_ascii_case("bearer") {
        Some(Credential::Bearer(rest.trim().to_string()))
    } else {
        None
    }
}

/// Whether `host` (a Host header or an Origin's authority, with or without port) names this
/// machine's loopback.
fn is_loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Refuse what a web page of another site could make a browser send here: a mutating request
/// whose `Origin` is not this endpoint (cross-site request forgery; GET and HEAD change
/// nothing), and, on an endpoint open without credentials, a `Host` that is not a loopback
/// name (a DNS name rebound to 127.0.0.1 by an attacker's page).
fn same_origin(req: &Request, open: bool) -> Result<(), &'static str> {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    if open && !host.is_empty() && !is_loopback_host(host) {
        return Err(
            "the endpoint serves loopback without credentials: use localhost or 127.0.0.1 as the host",
        );
    }
    let safe = matches!(*req.method(), axum::http::Method::GET | axum::http::Method::HEAD);
    if !safe {
        if let Some(origin) = req.headers().get(header::ORIGIN) {
            let authority = origin
                .to_str()
                .ok()
                .and_then(|o| o.split_once("://"))
                .map(|(_, a)| a.trim_end_matches('/'));
            if authority != Some(host) {
                return Err("cross-origin request refused");
            }
        }
    }
    Ok(())
}

/// Middleware: let the request through with its [`Who`], or answer 401/429.
pub(crate) async fn check(State(state): State<Arc<AppState>>, mut req: Request, next: Next) -> Response {
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0)
        .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
    let auth = &state.auth;
    if let Err(why) = same_origin(&req, auth.open) {
        tracing::warn!(%peer, path = %req.uri().path(), "HTTP request refused: {why}");
        return crate::api::ApiError::new(StatusCode::FORBIDDEN, why).into_response();
    }
    if auth.open {
        req.extensions_mut()
            .insert(Who(format!("anonymous@{}", peer.ip())));
        return next.run(req).await;
    }
    if auth.limited(peer.ip()) {
        return crate::api::ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too many failed authentications; try again later",
        )
        .into_response();
    }
    let who = match credential(&req) {
        Some(Credential::Bearer(token)) => {
            let d = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
            let ok = auth
                .tokens
                .iter()
                .any(|t| t.iter().zip(d.as_ref()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0);
            ok.then(|| Who(format!("token:{}", &hash_token(&token)[..8])))
        }
        Some(Credential::Basic(user, password)) if auth.admins.contains(&user) => {
            let admin = state.admin.clone();
            let u = user.clone();
            let ok = tokio::task::spawn_blocking(move || admin.check_password(&u, password.as_bytes()))
                .await
                .unwrap_or(false);
            ok.then_some(Who(user))
        }
        _ => None,
    };
    match who {
        Some(who) => {
            req.extensions_mut().insert(who);
            next.run(req).await
        }
        None => {
            auth.failed(peer.ip());
            state.http_metrics.auth_failures.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%peer, path = %req.uri().path(), "HTTP authentication failed");
            let mut r = crate::api::ApiError::new(StatusCode::UNAUTHORIZED, "authentication required")
                .into_response();
            if !auth.admins.is_empty() {
                r.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    header::HeaderValue::from_static("Basic realm=\"tern\", charset=\"UTF-8\""),
                );
            }
            r
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_file_holds_digests() {
        let h = hash_token("s3cret");
        assert_eq!(h.len(), 64);
        let t = parse_tokens(&format!("# ops\n{h}\n"), "t").unwrap();
        assert_eq!(t.len(), 1);
        assert!(parse_tokens("s3cret\n", "t").is_err());
    }

    #[test]
    fn loopback_hosts() {
        for h in [
            "localhost",
            "localhost:18083",
            "127.0.0.1:18083",
            "127.1.2.3",
            "[::1]:80",
            "[::1]",
        ] {
            assert!(is_loopback_host(h), "{h}");
        }
        for h in [
            "evil.example",
            "evil.example:18083",
            "10.0.0.1:18083",
            "[2001:db8::1]:1",
            "localhost.evil",
        ] {
            assert!(!is_loopback_host(h), "{h}");
        }
    }

    #[test]
    fn non_loopback_needs_credentials() {
        let mut c = HttpConfig::default();
        let public: SocketAddr = "0.0.0.0:18083".parse().unwrap();
        assert!(Auth::load(&c, public, true).is_err());
        assert!(
            Auth::load(&c, "127.0.0.1:0".parse().unwrap(), false)
                .unwrap()
                .open
        );
        assert!(Auth::load(&c, "[::1]:0".parse().unwrap(), false).unwrap().open);
        c.admins = vec!["alice".into()];
        assert!(
            Auth::load(&c, public, false).is_err(),
            "admins need a password file"
        );
        assert!(!Auth::load(&c, public, true).unwrap().open);
    }
}
