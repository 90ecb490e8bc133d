//! Transports: how the client gets a byte stream to the server.
//!
//! The protocol code only needs an ordered, reliable byte stream
//! ([`Transport`]); a [`Connector`] opens one for an [`Endpoint`]. Built in:
//! [`TcpConnector`] (`mqtt://`), [`TlsConnector`] (`mqtts://`, rustls) and
//! [`WsConnector`] (`ws://`, `wss://`, tokio-tungstenite), chosen by the URL's
//! scheme; TLS settings come from [`TlsOptions`]. A custom connector is set with
//! [`crate::Options::connector`].

mod tcp;
mod tls;
mod ws;

use std::future::Future;
use std::io;
use std::pin::Pin;

use tokio::io::{AsyncRead, AsyncWrite};

pub use tcp::TcpConnector;
pub use tls::{TlsConnector, TlsOptions};
pub use ws::WsConnector;

/// A byte stream to the server.
pub trait Transport: AsyncRead + AsyncWrite + Send + Unpin + 'static {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Transport for T {}

/// A future returned by [`Connector::connect`].
pub type ConnectFuture<'a> = Pin<Box<dyn Future<Output = io::Result<Box<dyn Transport>>> + Send + 'a>>;

/// Opens transports. Called again for every reconnection.
pub trait Connector: Send + Sync + 'static {
    /// Open a byte stream to `endpoint`.
    fn connect<'a>(&'a self, endpoint: &'a Endpoint) -> ConnectFuture<'a>;
}

/// The URL schemes of MQTT servers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Scheme {
    /// `mqtt://`: plain TCP (default port 1883).
    Mqtt,
    /// `mqtts://`: TLS (default port 8883).
    Mqtts,
    /// `ws://`: WebSocket (default port 80, default path `/mqtt`).
    Ws,
    /// `wss://`: WebSocket over TLS (default port 443, default path `/mqtt`).
    Wss,
}

impl Scheme {
    fn parse(s: &str) -> Option<Scheme> {
        Some(match s.to_ascii_lowercase().as_str() {
            "mqtt" | "tcp" => Scheme::Mqtt,
            "mqtts" | "ssl" | "tls" => Scheme::Mqtts,
            "ws" => Scheme::Ws,
            "wss" => Scheme::Wss,
            _ => return None,
        })
    }

    /// The port used when the URL gives none.
    pub fn default_port(self) -> u16 {
        match self {
            Scheme::Mqtt => 1883,
            Scheme::Mqtts => 8883,
            Scheme::Ws => 80,
            Scheme::Wss => 443,
        }
    }

    /// The scheme as written in URLs.
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Mqtt => "mqtt",
            Scheme::Mqtts => "mqtts",
            Scheme::Ws => "ws",
            Scheme::Wss => "wss",
        }
    }
}

/// Where the server is: scheme, host, port and (for WebSocket) path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// The scheme.
    pub scheme: Scheme,
    /// Host name or IP address (IPv6 without brackets).
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// Path (WebSocket); `/mqtt` when absent.
    pub path: String,
    /// User name from the URL's `user:password@`, if any.
    pub username: Option<String>,
    /// Password from the URL, if any.
    pub password: Option<String>,
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "{}://[{}]:{}", self.scheme.as_str(), self.host, self.port)
        } else {
            write!(f, "{}://{}:{}", self.scheme.as_str(), self.host, self.port)
        }
    }
}

/// Why a URL cannot be parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum UrlError {
    Invalid(&'static str),
    UnknownScheme,
}

impl Endpoint {
    /// Parse `scheme://[user[:password]@]host[:port][/path]`; a missing scheme means `mqtt`.
    pub(crate) fn parse(url: &str) -> Result<(Endpoint, String), UrlError> {
        let (scheme_text, rest) = match url.split_once("://") {
            Some((s, r)) => (s, r),
            None => ("mqtt", url),
        };
        let scheme = Scheme::parse(scheme_text).ok_or(UrlError::UnknownScheme)?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/mqtt"),
        };
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let (username, password) = match userinfo {
            Some(u) => match u.split_once(':') {
                Some((n, p)) => (Some(n.to_string()), Some(p.to_string())),
                None => (Some(u.to_string()), None),
            },
            None => (None, None),
        };
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or(UrlError::Invalid("unclosed '[' in host"))?;
            let port = match after.strip_prefix(':') {
                Some(p) => Some(p),
                None if after.is_empty() => None,
                None => return Err(UrlError::Invalid("unexpected text after ']'")),
            };
            (h, port)
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (hostport, None),
            }
        };
        if host.is_empty() {
            return Err(UrlError::Invalid("missing host"));
        }
        let port = match port {
            Some(p) => p
                .parse::<u16>()
                .map_err(|_| UrlError::Invalid("port is not a number from 0 to 65535"))?,
            None => scheme.default_port(),
        };
        Ok((
            Endpoint {
                scheme,
                host: host.to_string(),
                port,
                path: path.to_string(),
                username,
                password,
            },
            scheme_text.to_string(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        let (e, _) = Endpoint::parse("mqtt://broker.example.com:1884").unwrap();
        assert_eq!(
            (e.scheme, e.host.as_str(), e.port),
            (Scheme::Mqtt, "broker.example.com", 1884)
        );
        let (e, _) = Endpoint::parse("mqtt://u:p@[::1]").unwrap();
        assert_eq!((e.host.as_str(), e.port), ("::1", 1883));
        assert_eq!(
            (e.username.as_deref(), e.password.as_deref()),
            (Some("u"), Some("p"))
        );
        let (e, _) = Endpoint::parse("localhost").unwrap();
        assert_eq!((e.scheme, e.port), (Scheme::Mqtt, 1883));
        let (e, _) = Endpoint::parse("wss://h/mqtt").unwrap();
        assert_eq!((e.scheme, e.port, e.path.as_str()), (Scheme::Wss, 443, "/mqtt"));
        assert_eq!(Endpoint::parse("gopher://h"), Err(UrlError::UnknownScheme));
        assert!(Endpoint::parse("mqtt://h:99999").is_err());
        assert!(Endpoint::parse("mqtt://:1883").is_err());
    }
}
