//! Authentication and authorization: the password file, the ACL file, JWT, the HTTP
//! hook, bans and flapping detection, the per-listener anonymous policy, and the identity
//! a client gets from its TLS certificate or enhanced authentication.
//!
//! ## Layout
//! - `mod.rs`: `Security` (what is in force, behind locks that a reload swaps),
//!   `authenticate` at CONNECT, `allows` for the ACL, reload, the background task.
//! - `chain.rs`: `[auth]` settings and the chain of sources asked in order.
//! - `jwt.rs`: token verification (key file, secret, JWKS) and the 5.0 method `JWT`.
//! - `hook.rs`: the HTTP hook; `http.rs`: the small HTTP/1.1 client it and the JWKS use.
//! - `grants.rs`: access lists that come with credentials, and their expiry.
//! - `ban.rs`: the ban list and flapping detection.
//! - `password.rs`, `acl.rs`, `scram.rs`: the password file, the ACL file, SCRAM-SHA-256.
//!
//! ## Decisions at CONNECT (`Security::authenticate`)
//! 0. A banned client id or user name: CONNACK 0x8A Banned (3.1.1: 0x05); a client id or
//!    address that reconnects too often: 0x9F Connection rate exceeded (3.1.1: 0x03). No
//!    authentication work is done for them (a banned address is closed at accept).
//! 1. A listener with `use_identity_as_username` takes the user name from the
//!    verified client certificate's subject CN; without one the client is refused
//!    (0x87 / 3.1.1 0x05; a CN that is not UTF-8 too, RELIABILITY.md B7).
//! 2. A successful 5.0 enhanced authentication (section 4.12) names the user.
//! 3. The chain (`chain.rs`): JWT, the HTTP hook and the password file, in the configured
//!    order; the first that decides accepts (maybe with an access list and an expiry) or
//!    refuses (0x86 / 3.1.1 0x04 for bad credentials).
//! 4. Otherwise the client is anonymous (a user name without a password file is
//!    not checked): allowed only where `allow_anonymous` is true for the listener,
//!    else CONNACK 0x87 Not authorized (3.1.1: 0x05).
//!
//! With a password file, the broker also offers the 5.0 enhanced authentication
//! method SCRAM-SHA-256 (`scram.rs`), and with `[auth.jwt]` the method `JWT`, unless the
//! application registered its own.
//!
//! Every refusal is counted ([`SecurityHandle::auth_failures`]) and logged with the
//! client's address, identifier and user name, never the password.
//!
//! ## Reload
//! [`SecurityHandle::reload`] (SIGHUP in `tern broker`) reads the password, ACL and ban files
//! and every TLS listener's certificate, key, client CA and CRL again; a file that does not
//! parse (or a key that does not match its certificate) leaves the one in force untouched
//! and is reported. [`SecurityHandle::reload_auth`] replaces the `[auth]` sources.
//! Connected clients stay connected: the new ACL applies to their next publish,
//! subscribe and delivery; the new passwords and certificates to the next CONNECT.

pub(crate) mod acl;
pub mod ban;
mod chain;
pub(crate) mod grants;
pub(crate) mod hook;
pub(crate) mod http;
pub mod jwt;
pub mod password;
pub(crate) mod scram;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock, Weak};

use tern_proto::{ByteString, Connect, ReasonCode};

use crate::listener::tls::TlsSlot;
use crate::{BrokerError, Config};
pub(crate) use acl::{Acl, Action};
pub use ban::{Ban, BanTarget, FlappingConfig};
pub use chain::{AuthConfig, RateLimitConfig, Source};
use chain::{Identity, Sources};
use grants::{Decision, Grants};
pub(crate) use hook::Hook;
pub use hook::{HookConfig, OnError};
pub use jwt::JwtConfig;
use password::PasswordFile;

/// How one listener treats clients (resolved from its settings and the global ones).
#[derive(Debug, Clone)]
pub(crate) struct ListenerPolicy {
    /// The listener's name in logs: its kind and bound address, e.g. `tls 0.0.0.0:8883`.
    pub name: Box<str>,
    /// Whether clients without credentials may connect.
    pub allow_anonymous: bool,
    /// Take the user name from the client certificate's CN.
    pub identity_as_username: bool,
}

/// What the transport learnt about a connection before MQTT starts.
#[derive(Debug, Clone)]
pub(crate) struct Origin {
    /// The listener's policy.
    pub policy: Arc<ListenerPolicy>,
    /// A verified client certificate: its subject CN (`None` inside when it has no
    /// UTF-8 CN); `None` when the client sent no certificate.
    pub cert_name: Option<Option<String>>,
}

/// The reloadable security state of a broker.
#[derive(Debug)]
pub(crate) struct Security {
    password_path: Option<PathBuf>,
    acl_path: Option<PathBuf>,
    ban_path: Option<PathBuf>,
    passwords: RwLock<Option<Arc<PasswordFile>>>,
    acl: RwLock<Option<Arc<Acl>>>,
    auth_failures: AtomicU64,
    /// The `[auth]` sources in force.
    sources: RwLock<Arc<Sources>>,
    /// Wakes the background task after `reload_auth` (a new JWKS to fetch).
    sources_changed: tokio::sync::Notify,
    /// Whether credentials may come with access lists (JWT or hook configured at start, or since).
    grant_sources: std::sync::atomic::AtomicBool,
    /// Whether the HTTP hook decides ACL questions (`auth.http.acl_url`): read once per
    /// PUBLISH and SUBSCRIBE, so that without it no lock is taken.
    acl_hook_on: std::sync::atomic::AtomicBool,
    grants: Arc<Grants>,
    bans: ban::BanList,
    flapping: ban::Flapping,
    /// Bounds the authentication checks running at once.
    checks: tokio::sync::Semaphore,
    /// Bounds the password hashes computed at once.
    hashing: tokio::sync::Semaphore,
    cert_cn_must_match_user: bool,
    watch_interval_secs: u64,
    /// The TLS configurations of the listeners, reloaded with the files.
    tls: Mutex<Vec<(String, Weak<TlsSlot>)>>,
    /// The broker, for disconnecting clients whose credentials expire.
    core: OnceLock<Weak<crate::broker_core::Core>>,
}

/// What the connection consults for each publish, subscription and delivery: the access
/// lists that came with credentials, then the ACL file (see [`Security::acl`]).
#[derive(Debug, Clone)]
pub(crate) struct AclView {
    file: Option<Arc<Acl>>,
    grants: Arc<Grants>,
}

impl AclView {
    /// Whether `client_id` may do `action` on `target`.
    pub fn allows(&self, action: Action, username: Option<&str>, client_id: &str, target: &str) -> bool {
        match self.grants.decide(action, username, client_id, target) {
            Decision::Allow => true,
            Decision::Deny => false,
            Decision::NotMine => self
                .file
                .as_ref()
                .is_none_or(|acl| acl.allows(action, username, client_id, target)),
        }
    }
}

fn load_bans(path: &std::path::Path) -> Result<Vec<Ban>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("`auth.ban_file` {}: cannot read it: {e}", path.display()))?;
    ban::parse_ban_file(&text).map_err(|e| format!("`auth.ban_file` {}: {e}", path.display()))
}

/// Disconnect a client whose credentials expired.
pub(crate) fn kick_expired(core: &crate::broker_core::Core, client_id: &str) {
    core.disconnect_client(client_id, false);
}

fn load_passwords(path: &std::path::Path) -> Result<PasswordFile, String> {
    PasswordFile::load(path).map_err(|e| format!("`password_file` {}: {e}", path.display()))
}

fn load_acl(path: &std::path::Path) -> Result<Acl, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("`acl_file` {}: cannot read it: {e}", path.display()))?;
    Acl::parse(&text).map_err(|e| format!("`acl_file` {}: {e}", path.display()))
}

impl Security {
    /// Load the files named by the configuration; errors name the setting.
    pub fn load(config: &Config) -> Result<Security, BrokerError> {
        let passwords = match &config.password_file {
            Some(p) => Some(Arc::new(load_passwords(p).map_err(BrokerError::Config)?)),
            None => None,
        };
        let acl = match &config.acl_file {
            Some(p) => Some(Arc::new(load_acl(p).map_err(BrokerError::Config)?)),
            None => None,
        };
        let auth = &config.auth;
        let sources = Sources::new(auth, config.password_file.is_some()).map_err(BrokerError::Config)?;
        let bans = ban::BanList::default();
        if let Some(p) = &auth.ban_file {
            bans.set_file(load_bans(p).map_err(BrokerError::Config)?);
        }
        Ok(Security {
            password_path: config.password_file.clone(),
            acl_path: config.acl_file.clone(),
            ban_path: auth.ban_file.clone(),
            passwords: RwLock::new(passwords),
            acl: RwLock::new(acl),
            auth_failures: AtomicU64::new(0),
            grant_sources: (sources.jwt.is_some() || sources.hook.is_some()).into(),
            acl_hook_on: sources.hook.as_ref().is_some_and(|h| h.checks_acl()).into(),
            sources: RwLock::new(Arc::new(sources)),
            sources_changed: tokio::sync::Notify::new(),
            grants: Arc::default(),
            bans,
            flapping: ban::Flapping::new(auth.flapping.clone()),
            checks: tokio::sync::Semaphore::new(auth.max_concurrent_checks.max(1)),
            hashing: tokio::sync::Semaphore::new(match auth.max_concurrent_hashes {
                0 => std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1)),
                n => n,
            }),
            cert_cn_must_match_user: auth.cert_cn_must_match_user,
            watch_interval_secs: auth.watch_interval_secs,
            tls: Mutex::default(),
            core: OnceLock::new(),
        })
    }

    /// Connect the security state to its broker (for disconnects at credential expiry) and
    /// to the TLS configurations it reloads.
    pub fn attach(&self, core: &Arc<crate::broker_core::Core>, tls: Vec<(String, Arc<TlsSlot>)>) {
        let _ = self.core.set(Arc::downgrade(core));
        let mut slots = self.tls.lock().unwrap_or_else(|e| e.into_inner());
        slots.extend(tls.iter().map(|(name, s)| (name.clone(), Arc::downgrade(s))));
    }

    /// The `[auth]` sources in force.
    pub(crate) fn sources(&self) -> Arc<Sources> {
        self.sources.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Replace the `[auth]` sources (JWT, hook, chain order). On error nothing changes.
    pub fn reload_auth(&self, auth: &AuthConfig) -> Result<(), String> {
        let sources = Sources::new(auth, self.password_path.is_some())?;
        if sources.jwt.is_some() || sources.hook.is_some() {
            self.grant_sources.store(true, Ordering::Release);
        }
        let acl_hook = sources.hook.as_ref().is_some_and(|h| h.checks_acl());
        *self.sources.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(sources);
        self.acl_hook_on.store(acl_hook, Ordering::Release);
        self.sources_changed.notify_one();
        tracing::info!("authentication sources reloaded");
        Ok(())
    }

    /// Whether connections from `ip` are refused at accept.
    pub fn banned_address(&self, ip: IpAddr) -> bool {
        self.bans.address(ip)
    }

    /// Read the files again (password, ACL, bans, every TLS listener's); on an error in
    /// one file nothing of that file changes, the others are still reloaded, and the errors
    /// are returned together.
    pub fn reload(&self) -> Result<(), String> {
        let mut errors = Vec::new();
        if let Err(e) = self.reload_files() {
            errors.push(e);
        }
        if let Some(p) = &self.ban_path {
            match load_bans(p) {
                Ok(b) => {
                    let n = b.len();
                    self.bans.set_file(b);
                    tracing::info!(bans = n, "ban file reloaded");
                }
                Err(e) => errors.push(e),
            }
        }
        let slots: Vec<(String, Arc<TlsSlot>)> = {
            let mut slots = self.tls.lock().unwrap_or_else(|e| e.into_inner());
            slots.retain(|(_, s)| s.strong_count() > 0);
            slots
                .iter()
                .filter_map(|(n, s)| Some((n.clone(), s.upgrade()?)))
                .collect()
        };
        for (name, slot) in slots {
            match slot.reload() {
                Ok(()) => tracing::info!(listener = %name, "TLS certificate reloaded"),
                Err(e) => errors.push(format!("{e} (listener {name} keeps its certificate)")),
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }

    /// Read the password and ACL files again; on any error nothing changes.
    fn reload_files(&self) -> Result<(), String> {
        let passwords = self.password_path.as_deref().map(load_passwords).transpose()?;
        let acl = self.acl_path.as_deref().map(load_acl).transpose()?;
        if let Some(p) = passwords {
            let users = p.len();
            *self.passwords.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(p));
            tracing::info!(users, "password file reloaded");
        }
        if let Some(a) = acl {
            *self.acl.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(a));
            tracing::info!("ACL file reloaded");
        }
        Ok(())
    }

    /// The password file in force.
    pub fn passwords(&self) -> Option<Arc<PasswordFile>> {
        self.password_path.as_ref()?;
        self.passwords.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// What decides access now (`None`: everything is allowed): the access lists that came
    /// with credentials, then the ACL file.
    pub fn acl(&self) -> Option<AclView> {
        // Without an ACL file and grant sources (the common case on the delivery path) no lock is taken.
        let file = match self.acl_path {
            Some(_) => self.acl.read().unwrap_or_else(|e| e.into_inner()).clone(),
            None => None,
        };
        if file.is_none() && !self.grant_sources.load(Ordering::Acquire) {
            return None;
        }
        Some(AclView {
            file,
            grants: self.grants.clone(),
        })
    }

    /// Whether `client_id` may do `action` on `target` (always, without an ACL file and
    /// access lists). Not for a PUBLISH or SUBSCRIBE while the HTTP hook decides ACL
    /// questions: see [`Security::acl_hook`].
    pub fn allows(&self, action: Action, username: Option<&str>, client_id: &str, target: &str) -> bool {
        self.allows_given(action, username, client_id, target, None)
    }

    /// The HTTP hook, when it decides ACL questions (`auth.http.acl_url`). The connection
    /// asks it ([`Security::ask_hook`], which awaits the service) before handing a PUBLISH or
    /// SUBSCRIBE to its session, and passes the answers to [`Security::allows_given`].
    pub(crate) fn acl_hook(&self) -> Option<Arc<hook::Hook>> {
        if !self.acl_hook_on.load(Ordering::Acquire) {
            return None;
        }
        self.sources().hook.clone().filter(|h| h.checks_acl())
    }

    /// The hook's answer about what the client's own access list leaves open (`None`: the
    /// list decides, or the hook has no opinion and the ACL file decides).
    pub(crate) async fn ask_hook(
        &self,
        hook: &hook::Hook,
        action: Action,
        username: Option<&str>,
        client_id: &str,
        target: &str,
    ) -> Option<bool> {
        match self.hook_known(hook, action, username, client_id, target) {
            Some(known) => known,
            None => hook.acl(action, username, client_id, target).await,
        }
    }

    /// What [`Security::ask_hook`] would answer, when that is known without asking: the
    /// access list decides (`Some(None)`), or the hook's cache holds the answer.
    pub(crate) fn hook_known(
        &self,
        hook: &hook::Hook,
        action: Action,
        username: Option<&str>,
        client_id: &str,
        target: &str,
    ) -> Option<Option<bool>> {
        if self.grants.decide(action, username, client_id, target) != Decision::NotMine {
            return Some(None);
        }
        hook.cached(action, username, client_id, target).map(Some)
    }

    /// As [`Security::allows`], with the HTTP hook's answer: the access list that came with
    /// the credentials decides first, then the hook, then the ACL file.
    pub(crate) fn allows_given(
        &self,
        action: Action,
        username: Option<&str>,
        client_id: &str,
        target: &str,
        hook: Option<bool>,
    ) -> bool {
        match self.grants.decide(action, username, client_id, target) {
            Decision::Allow => true,
            Decision::Deny => false,
            Decision::NotMine if hook.is_some() => hook == Some(true),
            Decision::NotMine => {
                if self.acl_path.is_none() {
                    return true;
                }
                self.acl
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .as_ref()
                    .is_none_or(|acl| acl.allows(action, username, client_id, target))
            }
        }
    }

    /// The access lists that came with credentials.
    pub(crate) fn grants(&self) -> &Grants {
        &self.grants
    }

    /// Connections refused for failed authentication since start.
    pub fn failures(&self) -> u64 {
        self.auth_failures.load(Ordering::Relaxed)
    }

    /// Count and log a refused client.
    pub fn failed(
        &self,
        peer: SocketAddr,
        client_id: &str,
        username: Option<&str>,
        rc: ReasonCode,
        why: &str,
    ) {
        self.auth_failures.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(%peer, client_id, username = username.unwrap_or(""), reason = %rc, "authentication failed: {why}");
    }

    /// Decide who a connecting client is (see the module documentation). `client_id` is
    /// the identifier the connection will have (assigned, for an empty one); `enhanced` is
    /// the identity established by an enhanced authentication exchange, if one ran.
    /// Returns the user name the ACL sees (`None`: anonymous).
    pub async fn authenticate(
        &self,
        origin: &Origin,
        peer: SocketAddr,
        client_id: &str,
        c: &Connect,
        enhanced: Option<ByteString>,
    ) -> Result<Option<ByteString>, (ReasonCode, String)> {
        let refuse = |rc: ReasonCode, why: &str| Err((rc, why.to_string()));
        // Before any work: bans and flapping.
        if let Some(what) = self.bans.client(client_id, c.username.as_deref()) {
            return refuse(ReasonCode::Banned, &format!("banned ({what})"));
        }
        if let Some(secs) = self
            .flapping
            .attempt(client_id, peer.ip(), std::time::Instant::now())
        {
            return refuse(
                ReasonCode::ConnectionRateExceeded,
                &format!("reconnecting too often (flapping); refused for {secs} s more"),
            );
        }
        let cert_cn = match &origin.cert_name {
            Some(Some(cn)) => Some(cn.as_str()),
            _ => None,
        };
        if origin.policy.identity_as_username && !self.cert_cn_must_match_user {
            self.grants.remove(client_id);
            return match &origin.cert_name {
                Some(Some(cn)) => Ok(Some(cn.as_str().into())),
                Some(None) => refuse(
                    ReasonCode::NotAuthorized,
                    "the client certificate has no UTF-8 common name (CN) to use as user name",
                ),
                None => refuse(
                    ReasonCode::NotAuthorized,
                    "no client certificate; this listener takes the user name from it",
                ),
            };
        }
        if self.cert_cn_must_match_user && origin.cert_name.is_some() && cert_cn.is_none() {
            return refuse(
                ReasonCode::NotAuthorized,
                "the client certificate has no UTF-8 common name (CN)",
            );
        }
        // CONNECT with an Authentication Method comes here only after its exchange succeeded;
        // the exchange (e.g. the `JWT` method) recorded its own access list.
        let from_exchange = c.properties.authentication_method.is_some();
        let identity = if from_exchange {
            Identity {
                username: enhanced,
                ..Identity::default()
            }
        } else {
            let _permit = self.checks.acquire().await;
            match self.run_chain(origin, peer, client_id, c).await? {
                Some(identity) => identity,
                None => self.anonymous(origin, c)?,
            }
        };
        if self.cert_cn_must_match_user && origin.cert_name.is_some() {
            if identity.username.as_deref() != cert_cn {
                return refuse(
                    ReasonCode::NotAuthorized,
                    "the user name does not match the client certificate's common name (CN)",
                );
            }
        } else if self.cert_cn_must_match_user && origin.policy.identity_as_username {
            return refuse(
                ReasonCode::NotAuthorized,
                "no client certificate; this listener takes the user name from it",
            );
        }
        // A will on a topic the new access list does not allow refuses the connection before
        // the list replaces the one of a connection that may still hold this client id.
        if let (Some(w), Some(g)) = (&c.will, &identity.grant) {
            if !g.allows(Action::Publish, identity.username.as_deref(), client_id, &w.topic) {
                return refuse(
                    ReasonCode::NotAuthorized,
                    &format!(
                        "the access list does not allow publishing the will on {:?}",
                        &*w.topic
                    ),
                );
            }
        }
        if !from_exchange {
            self.grants.set(
                client_id,
                identity.grant,
                identity.expires,
                identity.disconnect_at_expiry,
            );
        }
        Ok(identity.username)
    }

    /// The 5.0 DISCONNECT reason of a connection closed from outside (an administrator, a
    /// ban, expired credentials): 0x87 Not authorized when its credentials expired (and it did
    /// not re-authenticate), else 0x98 Administrative action. The connection calls this once,
    /// when it closes for such a reason.
    pub fn kick_reason(&self, client_id: &str) -> ReasonCode {
        if self.grants.expired(client_id) {
            ReasonCode::NotAuthorized
        } else {
            ReasonCode::AdministrativeAction
        }
    }

    /// No source decided: the listener's anonymous policy does.
    fn anonymous(&self, origin: &Origin, c: &Connect) -> Result<Identity, (ReasonCode, String)> {
        let refuse = |rc: ReasonCode, why: &str| Err((rc, why.to_string()));
        let username = match (&c.username, &c.password) {
            (username, _) if origin.policy.allow_anonymous => username.clone(),
            (Some(_), _) if self.passwords().is_some() => {
                return refuse(
                    ReasonCode::BadUserNameOrPassword,
                    "no source accepted these credentials",
                )
            }
            (Some(_), _) => {
                return refuse(
                    ReasonCode::BadUserNameOrPassword,
                    "no password_file to check user names, and anonymous clients are not allowed",
                )
            }
            (None, Some(_)) => {
                return refuse(ReasonCode::BadUserNameOrPassword, "password without a user name")
            }
            (None, None) => {
                return refuse(
                    ReasonCode::NotAuthorized,
                    "anonymous clients are not allowed on this listener",
                )
            }
        };
        Ok(Identity {
            username: username.map(|u| ByteString::from(u.to_string())),
            ..Identity::default()
        })
    }

    /// Disconnect the connected clients a new ban names.
    fn kick_banned(&self, ban: &Ban) {
        let Some(core) = self.core.get().and_then(Weak::upgrade) else {
            return;
        };
        for cell in core.sessions.all() {
            let hit = {
                let st = cell.lock();
                let Some(a) = st.attached.as_ref().filter(|_| st.conn_id.is_some()) else {
                    continue;
                };
                match &ban.target {
                    BanTarget::ClientId(id) => **id == *cell.client_id,
                    BanTarget::Username(u) => a.username.as_deref() == Some(u.as_str()),
                    BanTarget::Network { .. } => {
                        let one = ban::BanList::default();
                        one.add(ban.clone());
                        one.address(a.peer.ip())
                    }
                }
            };
            if hit {
                core.disconnect_client(&cell.client_id, false);
            }
        }
    }

    /// The background work of the security state: JWKS refreshes, disconnects at credential
    /// expiry, and (with `watch_interval_secs`) reloads when a file changes. Runs until aborted.
    pub async fn run(self: Arc<Self>) {
        let core = self.core.get().cloned().unwrap_or_default();
        tokio::join!(
            self.grants.clone().run_expiry(core),
            self.clone().jwks_loop(),
            self.clone().watch_loop(),
        );
    }

    async fn jwks_loop(self: Arc<Self>) {
        loop {
            let sources = self.sources();
            let Some(jwt) = sources.jwt.clone().filter(|j| j.jwks_target().is_some()) else {
                drop(sources);
                self.sources_changed.notified().await;
                continue;
            };
            drop(sources);
            let url = jwt.jwks_target().map(|t| t.url()).unwrap_or_default();
            match jwt.fetch_jwks().await {
                Ok(n) => tracing::info!(%url, keys = n, "JWKS fetched"),
                Err(e) => tracing::warn!(%url, "JWKS fetch failed, keeping the keys in force: {e}"),
            }
            let asked = jwt.jwks_asked();
            let every = jwt.jwks_refresh();
            drop(jwt);
            let asked = async {
                match asked {
                    Some(n) => n.notified().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = asked => {}
                _ = self.sources_changed.notified() => {}
            }
        }
    }

    async fn watch_loop(self: Arc<Self>) {
        if self.watch_interval_secs == 0 {
            return;
        }
        let every = std::time::Duration::from_secs(self.watch_interval_secs);
        let mut last = self.watched_mtimes();
        loop {
            tokio::time::sleep(every).await;
            let now = self.watched_mtimes();
            if now != last {
                last = now;
                tracing::info!("a watched file changed: reloading");
                if let Err(e) = self.reload() {
                    tracing::error!("reload failed, keeping what was in force: {e}");
                }
            }
        }
    }

    fn watched_mtimes(&self) -> Vec<Option<std::time::SystemTime>> {
        let mut paths: Vec<PathBuf> = [&self.password_path, &self.acl_path, &self.ban_path]
            .into_iter()
            .flatten()
            .cloned()
            .collect();
        for (_, slot) in self.tls.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            if let Some(s) = slot.upgrade() {
                paths.extend(s.files());
            }
        }
        paths
            .iter()
            .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
            .collect()
    }
}

/// Control of a running broker's authentication and access control, from any task.
#[derive(Debug, Clone)]
pub struct SecurityHandle(pub(crate) Arc<Security>);

impl SecurityHandle {
    /// Read the password, ACL and ban files and every TLS listener's certificate, key,
    /// client CA and CRL again (what `tern broker` does on SIGHUP). A file that cannot be
    /// read or parsed, or a key that does not match its certificate, leaves the one in force
    /// unchanged, and the error (naming the file and line) is returned and logged; the other
    /// files are still reloaded.
    pub fn reload(&self) -> Result<(), BrokerError> {
        self.0.reload().map_err(|e| {
            tracing::error!("reload failed, keeping the files in force: {e}");
            BrokerError::Config(e)
        })
    }

    /// Replace the `[auth]` sources (JWT settings and keys, the HTTP hook, the chain order),
    /// e.g. from a configuration file read again. An error keeps the sources in force.
    /// Bans, flapping limits and `max_concurrent_checks` keep their values from the start.
    pub fn reload_auth(&self, auth: &AuthConfig) -> Result<(), BrokerError> {
        self.0.reload_auth(auth).map_err(|e| {
            tracing::error!("auth reload failed, keeping the sources in force: {e}");
            BrokerError::Config(e)
        })
    }

    /// Ban a client id, user name or address (network) until `ban.until`; connected clients
    /// it names are disconnected (5.0: DISCONNECT 0x98). The ban lasts until it expires or the
    /// ban file is reloaded.
    pub fn ban(&self, ban: Ban) {
        tracing::info!(?ban, "ban added");
        self.0.bans.add(ban.clone());
        self.0.kick_banned(&ban);
    }

    /// Remove every ban of `target` (from the file too, until its next reload); returns how
    /// many there were.
    pub fn unban(&self, target: &BanTarget) -> usize {
        self.0.bans.remove(target)
    }

    /// The bans in force.
    pub fn bans(&self) -> Vec<Ban> {
        self.0.bans.list()
    }

    /// Connections refused for failed authentication since start.
    pub fn auth_failures(&self) -> u64 {
        self.0.failures()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    /// Every TOML block of docs/auth.md is a valid configuration.
    #[test]
    fn auth_doc_examples_parse() {
        let doc = include_str!("../../../../docs/auth.md");
        let mut blocks = 0;
        for part in doc.split("```toml\n").skip(1) {
            let block = &part[..part.find("```").unwrap()];
            crate::Config::from_toml(block).unwrap_or_else(|e| panic!("{e}\n{block}"));
            blocks += 1;
        }
        assert!(blocks >= 8, "{blocks} blocks");
    }
}
