//! The `[http]` table: where `tern broker` serves metrics, the admin API and the dashboard,
//! and who may use them. The broker library only carries it; the `tern-admin` crate serves it.
//!
//! ```toml
//! [http]
//! listen = "0.0.0.0:18083"          # "" turns it off; `http = "ADDR:PORT"` is short for this
//! admins = ["alice"]                # users of `password_file` allowed in (HTTP Basic)
//! tokens_file = "/etc/tern/tokens"  # bearer tokens, one SHA-256 hex digest a line
//! cert = "/etc/tern/server.pem"     # TLS, as for listeners
//! key = "/etc/tern/server.key"
//! recent_topics = 10000             # topics seen recently kept for the topic tree (0: none)
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Deserializer, Serialize};

/// Default address of the HTTP endpoint.
pub const DEFAULT_HTTP: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 18083);

/// The HTTP endpoint's settings (see the module documentation).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[non_exhaustive]
pub struct HttpConfig {
    /// Address to serve on (default 127.0.0.1:18083, which `tern broker` skips with a warning
    /// when it is taken; any other address must work); `None`: no HTTP endpoint.
    pub listen: Option<SocketAddr>,
    /// Users of the password file who may use the endpoint (HTTP Basic).
    pub admins: Vec<String>,
    /// File of bearer tokens, each line the lowercase hex SHA-256 of a token (`#` comments).
    pub tokens_file: Option<PathBuf>,
    /// PEM certificate chain: serve HTTPS.
    pub cert: Option<PathBuf>,
    /// PEM private key for `cert`.
    pub key: Option<PathBuf>,
    /// Topics seen recently that the broker keeps for the admin API's topic tree (default
    /// 10,000; 0: none). Kept only while there is an HTTP endpoint.
    pub recent_topics: usize,
}

impl Default for HttpConfig {
    fn default() -> HttpConfig {
        HttpConfig {
            listen: Some(DEFAULT_HTTP),
            admins: Vec::new(),
            tokens_file: None,
            cert: None,
            key: None,
            recent_topics: DEFAULT_RECENT_TOPICS,
        }
    }
}

/// Default of [`HttpConfig::recent_topics`].
const DEFAULT_RECENT_TOPICS: usize = 10_000;

impl HttpConfig {
    /// Serve on `addr` (`None`: off).
    pub fn set_listen(&mut self, addr: Option<SocketAddr>) {
        self.listen = addr;
    }

    /// Whether credentials are configured (admins or a token file).
    pub fn has_credentials(&self) -> bool {
        !self.admins.is_empty() || self.tokens_file.is_some()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Table {
    #[serde(default)]
    listen: Option<String>,
    #[serde(default)]
    admins: Vec<String>,
    #[serde(default)]
    tokens_file: Option<PathBuf>,
    #[serde(default)]
    cert: Option<PathBuf>,
    #[serde(default)]
    key: Option<PathBuf>,
    #[serde(default = "default_recent_topics")]
    recent_topics: usize,
}

fn default_recent_topics() -> usize {
    DEFAULT_RECENT_TOPICS
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Repr {
    Addr(String),
    Table(Table),
}

fn parse_addr<E: serde::de::Error>(s: &str) -> Result<Option<SocketAddr>, E> {
    if s.is_empty() {
        return Ok(None);
    }
    s.parse().map(Some).map_err(|_| {
        E::custom(format!(
            "`http`: `{s}` is not ADDR:PORT, e.g. 127.0.0.1:18083 (\"\" turns it off)"
        ))
    })
}

impl<'de> Deserialize<'de> for HttpConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<HttpConfig, D::Error> {
        Ok(match Repr::deserialize(d)? {
            Repr::Addr(s) => HttpConfig {
                listen: parse_addr(&s)?,
                ..HttpConfig::default()
            },
            Repr::Table(t) => HttpConfig {
                listen: match t.listen {
                    Some(s) => parse_addr(&s)?,
                    None => Some(DEFAULT_HTTP),
                },
                admins: t.admins,
                tokens_file: t.tokens_file,
                cert: t.cert,
                key: t.key,
                recent_topics: t.recent_topics,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::Config;

    #[test]
    fn http_is_an_address_a_table_or_off() {
        let c = Config::from_toml("").unwrap();
        assert_eq!(c.http.listen, Some(super::DEFAULT_HTTP));
        let c = Config::from_toml("http = \"\"").unwrap();
        assert_eq!(c.http.listen, None);
        let c = Config::from_toml("http = \"0.0.0.0:9000\"").unwrap();
        assert_eq!(c.http.listen, Some("0.0.0.0:9000".parse().unwrap()));
        let c = Config::from_toml("[http]\nlisten = \"127.0.0.1:0\"\nadmins = [\"alice\"]").unwrap();
        assert_eq!(c.http.listen, Some("127.0.0.1:0".parse().unwrap()));
        assert_eq!(c.http.admins, vec!["alice".to_string()]);
        assert_eq!(c.http.recent_topics, 10_000);
        let c = Config::from_toml("[http]\nrecent_topics = 0").unwrap();
        assert_eq!(c.http.recent_topics, 0);
        assert!(Config::from_toml("http = \"nonsense\"").is_err());
        assert!(Config::from_toml("[http]\nlistn = \"127.0.0.1:0\"").is_err());
    }
}
