//! The HTTP hook: an external service asked at CONNECT (`url`) and, optionally, for ACL
//! decisions (`acl_url`).
//!
//! ## CONNECT
//! `POST url` with a JSON body:
//!
//! ```json
//! {"clientid": "d1", "username": "alice", "password": "secret", "peer": "127.0.0.1:50000",
//!  "cn": null, "listener": "tcp 127.0.0.1:1883", "protocol": 5}
//! ```
//!
//! (`password` is a string when it is UTF-8, else `password_base64` carries it.) The answer:
//! - 2xx with `{"result": "allow"}` (or an empty body): allowed. The JSON may add
//!   `"username"` (the user name the ACL sees) and `"acl"` (the client's access list, as in
//!   a JWT: `{"publish": [...], "subscribe": [...]}`);
//! - 2xx with `{"result": "deny"}`, or 401 / 403: refused (CONNACK 0x87; 3.1.1: 0x05);
//! - 2xx with `{"result": "ignore"}`, or 404: not this source's client; the next source decides;
//! - anything else (5xx, a 2xx whose body is not that JSON, a timeout, a refused connection)
//!   is an error: the request is tried `retries` more times, then `on_error` decides:
//!   `"deny"` (default; CONNACK 0x88 Server unavailable, 3.1.1: 0x03), `"allow"` or `"next"`.
//!
//! ## ACL
//! `POST acl_url` with `{"clientid", "username", "action": "publish"|"subscribe", "topic"}`
//! (for a subscription, `topic` is the filter without any `$share/GROUP/` prefix); the answer
//! as above (`allow` / `deny`; `ignore`: the ACL file decides). Answers are cached per (client
//! id, user name, action, topic) for `cache_ttl_secs`, at most `cache_size` of them; errors
//! are not cached and follow `on_error` (`next` means: the ACL file decides). An access list
//! that came with the client's credentials (JWT claims, the CONNECT answer's `acl`) decides
//! before the hook; deliveries to subscribers (`receive`) are decided by the lists and the
//! ACL file only, never by a request per message.
//!
//! CONNECT requests run on the connection's task with a timeout (`timeout_ms`), over a pool
//! of keep-alive connections (`max_idle_connections`). For an ACL question the connection
//! holds the PUBLISH or SUBSCRIBE and stops reading its socket until the answer comes (a
//! cached answer is used at once); its deliveries go on meanwhile. A slow service slows the
//! clients that wait for it, never the broker's other connections.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde::Deserialize;

use super::acl::Action;
use super::grants::Grant;
use super::http::{HttpClient, Target};

/// `[auth.http]`.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct HookConfig {
    /// Asked at CONNECT (http or https).
    pub url: Option<String>,
    /// Asked for ACL decisions (none by default).
    pub acl_url: Option<String>,
    /// Time allowed for one request, in milliseconds (default 2,000).
    pub timeout_ms: u64,
    /// Further tries after an error (default 1).
    pub retries: u32,
    /// What an error decides after the retries: `deny` (default), `allow` or `next`.
    pub on_error: OnError,
    /// Seconds an ACL answer is reused (default 60; 0: no cache).
    pub cache_ttl_secs: u64,
    /// ACL answers kept at most (default 10,000).
    pub cache_size: usize,
    /// Idle keep-alive connections kept to the service (default 16).
    pub max_idle_connections: usize,
    /// CA certificates for an https service (default: the system's).
    pub ca_file: Option<std::path::PathBuf>,
}

impl Default for HookConfig {
    fn default() -> HookConfig {
        HookConfig {
            url: None,
            acl_url: None,
            timeout_ms: 2000,
            retries: 1,
            on_error: OnError::Deny,
            cache_ttl_secs: 60,
            cache_size: 10_000,
            max_idle_connections: 16,
            ca_file: None,
        }
    }
}

/// What an unreachable or broken service decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnError {
    /// Refuse.
    Deny,
    /// Allow.
    Allow,
    /// Ask the next source (for ACL decisions: the ACL file).
    Next,
}

/// The hook's verdict.
#[derive(Debug, Clone)]
pub(crate) enum Verdict {
    Allow {
        username: Option<String>,
        grant: Option<Grant>,
    },
    Deny,
    Ignore,
    /// The service could not answer (after the retries); the configured outcome applies.
    Error(String),
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Answer {
    result: Option<String>,
    username: Option<String>,
    acl: Option<serde_json::Value>,
}

/// What a CONNECT tells the hook.
#[derive(Debug)]
pub(crate) struct ConnectInfo<'a> {
    pub client_id: &'a str,
    pub username: Option<&'a str>,
    pub password: Option<&'a [u8]>,
    pub peer: std::net::SocketAddr,
    pub cn: Option<&'a str>,
    pub listener: &'a str,
    pub protocol: u8,
}

type CacheKey = (Box<str>, Option<Box<str>>, u8, Box<str>);

/// The hook (see the module documentation).
#[derive(Debug)]
pub(crate) struct Hook {
    config: HookConfig,
    url: Option<Target>,
    acl_url: Option<Target>,
    client: Arc<HttpClient>,
    cache: Mutex<HashMap<CacheKey, (bool, Instant)>>,
}

fn parse_answer(status: u16, body: &[u8]) -> Result<Verdict, String> {
    match status {
        401 | 403 => return Ok(Verdict::Deny),
        404 => return Ok(Verdict::Ignore),
        200..=299 => {}
        s => return Err(format!("HTTP status {s}")),
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Verdict::Allow {
            username: None,
            grant: None,
        });
    }
    let a: Answer =
        serde_json::from_slice(body).map_err(|e| format!("answer is not the expected JSON: {e}"))?;
    match a.result.as_deref() {
        Some("allow") | None => {
            let grant = a
                .acl
                .as_ref()
                .map(Grant::from_json)
                .transpose()
                .map_err(|e| format!("acl: {e}"))?;
            Ok(Verdict::Allow {
                username: a.username,
                grant,
            })
        }
        Some("deny") => Ok(Verdict::Deny),
        Some("ignore") => Ok(Verdict::Ignore),
        Some(other) => Err(format!("unknown result {other:?}")),
    }
}

impl Hook {
    /// Check the configuration; errors name the setting.
    pub fn new(config: &HookConfig) -> Result<Hook, String> {
        let parse = |key: &str, url: &Option<String>| {
            url.as_deref()
                .map(Target::parse)
                .transpose()
                .map_err(|e| format!("`auth.http.{key}`: {e}"))
        };
        let url = parse("url", &config.url)?;
        let acl_url = parse("acl_url", &config.acl_url)?;
        if url.is_none() && acl_url.is_none() {
            return Err("`auth.http` needs `url` or `acl_url`".into());
        }
        if config.timeout_ms == 0 {
            return Err("`auth.http.timeout_ms` must be above 0".into());
        }
        if let Some(ca) = &config.ca_file {
            std::fs::metadata(ca).map_err(|e| format!("`auth.http.ca_file` {}: {e}", ca.display()))?;
        }
        let client = Arc::new(HttpClient::new(
            Duration::from_millis(config.timeout_ms),
            config.max_idle_connections,
            config.ca_file.as_deref(),
        ));
        Ok(Hook {
            config: config.clone(),
            url,
            acl_url,
            client,
            cache: Mutex::default(),
        })
    }

    /// Whether the hook is asked at CONNECT.
    pub fn checks_connect(&self) -> bool {
        self.url.is_some()
    }

    /// Whether the hook is asked for ACL decisions.
    pub fn checks_acl(&self) -> bool {
        self.acl_url.is_some()
    }

    /// What the service is down decides.
    pub fn on_error(&self) -> OnError {
        self.config.on_error
    }

    async fn ask(&self, target: &Target, body: &[u8]) -> Verdict {
        let mut last = String::new();
        for attempt in 0..=self.config.retries {
            match self.client.post_json(target, body).await {
                Ok(r) => match parse_answer(r.status, &r.body) {
                    Ok(v) => return v,
                    Err(e) => last = e,
                },
                Err(e) => last = e.to_string(),
            }
            tracing::debug!(url = %target.url(), attempt, "auth hook failed: {last}");
        }
        Verdict::Error(last)
    }

    /// Ask the service about a CONNECT.
    pub async fn connect(&self, c: &ConnectInfo<'_>) -> Verdict {
        let Some(target) = &self.url else {
            return Verdict::Ignore;
        };
        let mut body = serde_json::json!({
            "clientid": c.client_id,
            "username": c.username,
            "peer": c.peer.to_string(),
            "cn": c.cn,
            "listener": c.listener,
            "protocol": c.protocol,
        });
        if let Some(p) = c.password {
            match std::str::from_utf8(p) {
                Ok(s) => body["password"] = s.into(),
                Err(_) => {
                    body["password_base64"] = base64::engine::general_purpose::STANDARD.encode(p).into()
                }
            }
        }
        self.ask(target, body.to_string().as_bytes()).await
    }

    /// A cached ACL answer, if there is a fresh one.
    pub fn cached(
        &self,
        action: Action,
        username: Option<&str>,
        client_id: &str,
        topic: &str,
    ) -> Option<bool> {
        let ttl = Duration::from_secs(self.config.cache_ttl_secs);
        let key = cache_key(action, username, client_id, topic);
        let cache = self.cache.lock().ok()?;
        cache
            .get(&key)
            .filter(|(_, at)| at.elapsed() < ttl)
            .map(|(allow, _)| *allow)
    }

    /// Ask the service whether `client_id` may do `action` on `topic` (`None`: the service
    /// answered `ignore`, or failed with `on_error = "next"`).
    pub async fn acl(
        &self,
        action: Action,
        username: Option<&str>,
        client_id: &str,
        topic: &str,
    ) -> Option<bool> {
        let target = self.acl_url.as_ref()?;
        if let Some(hit) = self.cached(action, username, client_id, topic) {
            return Some(hit);
        }
        let body = serde_json::json!({
            "clientid": client_id,
            "username": username,
            "action": match action {
                Action::Publish => "publish",
                Action::Subscribe => "subscribe",
                Action::Receive => "receive",
            },
            "topic": topic,
        });
        let answer = match self.ask(target, body.to_string().as_bytes()).await {
            Verdict::Allow { .. } => true,
            Verdict::Deny => false,
            Verdict::Ignore => return None,
            Verdict::Error(e) => {
                tracing::warn!(client_id, topic, "ACL hook failed: {e}");
                return match self.config.on_error {
                    OnError::Deny => Some(false),
                    OnError::Allow => Some(true),
                    OnError::Next => None,
                };
            }
        };
        if self.config.cache_ttl_secs > 0 && self.config.cache_size > 0 {
            if let Ok(mut cache) = self.cache.lock() {
                if cache.len() >= self.config.cache_size {
                    let ttl = Duration::from_secs(self.config.cache_ttl_secs);
                    cache.retain(|_, (_, at)| at.elapsed() < ttl);
                    if cache.len() >= self.config.cache_size {
                        cache.clear();
                    }
                }
                cache.insert(
                    cache_key(action, username, client_id, topic),
                    (answer, Instant::now()),
                );
            }
        }
        Some(answer)
    }

    /// Idle keep-alive connections to the service now.
    #[cfg_attr(not(test), allow(dead_code, reason = "for tests"))]
    pub fn idle_connections(&self) -> usize {
        self.client.idle()
    }
}

fn cache_key(action: Action, username: Option<&str>, client_id: &str, topic: &str) -> CacheKey {
    let a = match action {
        Action::Publish => 0,
        Action::Subscribe => 1,
        Action::Receive => 2,
    };
    (client_id.into(), username.map(Into::into), a, topic.into())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A keep-alive HTTP service that allows topics under `ok/` and fails on `fail/`,
    /// counting requests and connections.
    async fn acl_service() -> (
        String,
        Arc<std::sync::atomic::AtomicUsize>,
        Arc<std::sync::atomic::AtomicUsize>,
    ) {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/acl", l.local_addr().unwrap());
        let (requests, connections) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (r, c) = (requests.clone(), connections.clone());
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                c.fetch_add(1, Ordering::Relaxed);
                let r = r.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut b = [0u8; 4096];
                    while let Ok(n) = s.read(&mut b).await {
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&b[..n]);
                        let text = String::from_utf8_lossy(&buf).to_string();
                        // One whole request: the head and a body of Content-Length bytes.
                        let Some((head, body)) = text.split_once("\r\n\r\n") else {
                            continue;
                        };
                        let len: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("Content-Length: "))
                            .map_or(0, |v| v.parse().unwrap());
                        if body.len() < len {
                            continue;
                        }
                        buf.clear();
                        r.fetch_add(1, Ordering::Relaxed);
                        let answer = if body.contains("\"topic\":\"fail/") {
                            "HTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n".to_string()
                        } else {
                            let result = if body.contains("\"topic\":\"ok/") {
                                "allow"
                            } else {
                                "deny"
                            };
                            let json = format!("{{\"result\":\"{result}\"}}");
                            format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{json}", json.len())
                        };
                        if s.write_all(answer.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (url, requests, connections)
    }

    #[tokio::test]
    async fn acl_answers_are_cached_and_errors_follow_on_error() {
        use std::sync::atomic::Ordering;
        let (url, requests, connections) = acl_service().await;
        let hook = Hook::new(&HookConfig {
            acl_url: Some(url),
            retries: 2,
            ..HookConfig::default()
        })
        .unwrap();
        assert!(hook.checks_acl() && !hook.checks_connect());
        assert_eq!(
            hook.acl(Action::Publish, Some("u"), "c", "ok/1").await,
            Some(true)
        );
        assert_eq!(
            hook.acl(Action::Publish, Some("u"), "c", "no/1").await,
            Some(false)
        );
        assert_eq!(requests.load(Ordering::Relaxed), 2);
        // Cached: no request.
        assert_eq!(hook.cached(Action::Publish, Some("u"), "c", "ok/1"), Some(true));
        assert_eq!(
            hook.acl(Action::Publish, Some("u"), "c", "ok/1").await,
            Some(true)
        );
        assert_eq!(requests.load(Ordering::Relaxed), 2);
        // Another action is another question.
        assert_eq!(hook.cached(Action::Subscribe, Some("u"), "c", "ok/1"), None);
        // A 500 is tried 1 + retries times, not cached, and denied (on_error = deny).
        assert_eq!(
            hook.acl(Action::Publish, Some("u"), "c", "fail/1").await,
            Some(false)
        );
        assert_eq!(requests.load(Ordering::Relaxed), 5);
        assert_eq!(hook.cached(Action::Publish, Some("u"), "c", "fail/1"), None);
        // Every request went over one keep-alive connection.
        assert_eq!(connections.load(Ordering::Relaxed), 1);
        assert_eq!(hook.idle_connections(), 1);
    }

    #[test]
    fn answers() {
        assert!(matches!(parse_answer(200, b""), Ok(Verdict::Allow { .. })));
        assert!(matches!(parse_answer(204, b""), Ok(Verdict::Allow { .. })));
        assert!(matches!(
            parse_answer(200, br#"{"result":"deny"}"#),
            Ok(Verdict::Deny)
        ));
        assert!(matches!(parse_answer(403, b"no"), Ok(Verdict::Deny)));
        assert!(matches!(parse_answer(404, b""), Ok(Verdict::Ignore)));
        assert!(matches!(
            parse_answer(200, br#"{"result":"ignore"}"#),
            Ok(Verdict::Ignore)
        ));
        assert!(parse_answer(500, b"").is_err());
        assert!(parse_answer(200, b"<html>").is_err());
        assert!(parse_answer(200, br#"{"result":"maybe"}"#).is_err());
        assert!(parse_answer(200, br#"{"result":"allow","acl":{"publish":["a/#/b"]}}"#).is_err());
        match parse_answer(
            200,
            br#"{"result":"allow","username":"u","acl":{"publish":["a"]}}"#,
        ) {
            Ok(Verdict::Allow { username, grant }) => {
                assert_eq!(username.as_deref(), Some("u"));
                assert!(grant.unwrap().allows(Action::Publish, None, "c", "a"));
            }
            other => panic!("{other:?}"),
        }
    }
}
