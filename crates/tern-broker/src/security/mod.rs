//! Authentication and authorization: the password file, the ACL file, the
//! per-listener anonymous policy, and the identity a client gets from its TLS
//! certificate or enhanced authentication.
//!
//! ## Decisions at CONNECT (`Security::authenticate`)
//! 1. A listener with `use_identity_as_username` takes the user name from the
//!    verified client certificate's subject CN; without one the client is refused
//!    (0x87 / 3.1.1 0x05; a CN that is not UTF-8 too, RELIABILITY.md B7).
//! 2. A successful 5.0 enhanced authentication (section 4.12) names the user.
//! 3. With a `password_file`, a user name needs its password: anything else is
//!    CONNACK 0x86 Bad User Name or Password (3.1.1: 0x04).
//! 4. Otherwise the client is anonymous (a user name without a password file is
//!    not checked): allowed only where `allow_anonymous` is true for the listener,
//!    else CONNACK 0x87 Not authorized (3.1.1: 0x05).
//!
//! With a password file, the broker also offers the 5.0 enhanced authentication
//! method SCRAM-SHA-256 (`scram.rs`), unless the application registered its own.
//!
//! Every refusal is counted ([`SecurityHandle::auth_failures`]) and logged with the
//! client's address, identifier and user name, never the password.
//!
//! ## Reload
//! [`SecurityHandle::reload`] (SIGHUP in `tern broker`) reads both files again; a
//! file that does not parse leaves the one in force untouched and is reported.
//! Connected clients stay connected: the new ACL applies to their next publish,
//! subscribe and delivery; the new passwords to the next CONNECT.

pub(crate) mod acl;
pub mod password;
pub(crate) mod scram;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use tern_proto::{ByteString, Connect, ReasonCode};

use crate::{BrokerError, Config};
pub(crate) use acl::{Acl, Action};
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
    passwords: RwLock<Option<Arc<PasswordFile>>>,
    acl: RwLock<Option<Arc<Acl>>>,
    auth_failures: AtomicU64,
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
        Ok(Security {
            password_path: config.password_file.clone(),
            acl_path: config.acl_file.clone(),
            passwords: RwLock::new(passwords),
            acl: RwLock::new(acl),
            auth_failures: AtomicU64::new(0),
        })
    }

    /// Read both files again; on any error nothing changes.
    pub fn reload(&self) -> Result<(), String> {
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

    /// The ACL in force (`None`: everything is allowed).
    pub fn acl(&self) -> Option<Arc<Acl>> {
        // Without an ACL file (the common case on the delivery path) no lock is taken.
        self.acl_path.as_ref()?;
        self.acl.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Whether the ACL allows `action` on `target` (always, without an ACL file).
    pub fn allows(&self, action: Action, username: Option<&str>, client_id: &str, target: &str) -> bool {
        self.acl()
            .is_none_or(|acl| acl.allows(action, username, client_id, target))
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

    /// Decide who a connecting client is (see the module documentation). `enhanced`
    /// is the identity established by an enhanced authentication exchange, if one ran.
    /// Returns the user name the ACL sees (`None`: anonymous).
    pub async fn authenticate(
        &self,
        origin: &Origin,
        c: &Connect,
        enhanced: Option<ByteString>,
    ) -> Result<Option<ByteString>, (ReasonCode, String)> {
        let refuse = |rc: ReasonCode, why: &str| Err((rc, why.to_string()));
        if origin.policy.identity_as_username {
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
        if let Some(user) = enhanced {
            return Ok(Some(user));
        }
        let passwords = self.passwords();
        match (&c.username, &c.password, passwords) {
            (Some(user), password, Some(file)) => {
                let user_s = user.to_string();
                let password = password.clone();
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
                if ok {
                    Ok(Some(user.clone()))
                } else {
                    refuse(ReasonCode::BadUserNameOrPassword, "bad user name or password")
                }
            }
            (None, Some(_), Some(_)) => {
                refuse(ReasonCode::BadUserNameOrPassword, "password without a user name")
            }
            (username, _, _) if origin.policy.allow_anonymous => Ok(username.clone()),
            (Some(_), _, None) => refuse(
                ReasonCode::BadUserNameOrPassword,
                "no password_file to check user names, and anonymous clients are not allowed",
            ),
            (None, _, _) => refuse(
                ReasonCode::NotAuthorized,
                "anonymous clients are not allowed on this listener",
            ),
        }
    }
}

/// Control of a running broker's authentication and access control, from any task.
#[derive(Debug, Clone)]
pub struct SecurityHandle(pub(crate) Arc<Security>);

impl SecurityHandle {
    /// Read the password file and the ACL file again (what `tern broker` does on
    /// SIGHUP). A file that cannot be read or parsed leaves the one in force
    /// unchanged, and the error (naming the file and line) is returned and logged.
    pub fn reload(&self) -> Result<(), BrokerError> {
        self.0.reload().map_err(|e| {
            tracing::error!("reload failed, keeping the files in force: {e}");
            BrokerError::Config(e)
        })
    }

    /// Connections refused for failed authentication since start.
    pub fn auth_failures(&self) -> u64 {
        self.0.failures()
    }
}
