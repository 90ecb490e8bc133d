//! Broker configuration: every limit has a name, a default and a check.
//!
//! The same struct is read from TOML (`tern broker --config FILE`) and built in
//! code ([`crate::BrokerBuilder`]). Unknown keys are errors, so a misspelt
//! setting is reported instead of ignored.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::BrokerError;

/// Broker settings. Field names are the TOML keys.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Addresses of plain TCP listeners (default `["127.0.0.1:1883"]`).
    pub listen: Vec<SocketAddr>,
    /// Largest packet accepted from a client, in bytes, fixed header included
    /// (default 1 MiB; advertised to 5.0 clients as Maximum Packet Size).
    pub max_packet_size: u32,
    /// Seconds a new connection may take to send CONNECT (default 10).
    pub connect_timeout_secs: u64,
    /// Largest first packet (CONNECT) accepted, in bytes (default 128 KiB: a CONNECT with a
    /// 64 KiB will and its properties; never above `max_packet_size`). Before CONNECT a
    /// client is not authenticated, so what it may make the broker hold is kept small.
    pub max_connect_packet_size: u32,
    /// Seconds without a byte of a packet in progress before the connection is closed
    /// (default 30; 0 disables), whatever the keep-alive: a partial packet holds buffer
    /// space. A client that keeps sending, however slowly, is never cut off by it.
    pub packet_stall_timeout_secs: u64,
    /// Bytes all connections together may hold in partially received packets (default
    /// 256 MiB; at least 2 x `max_packet_size` + 64 KiB). Beyond it the connections holding the oldest
    /// partial packets are closed (5.0: DISCONNECT 0x97 Quota exceeded), logged and counted.
    pub max_partial_bytes: usize,
    /// Connections the kernel may hold for each listener before they are accepted
    /// (default 4,096; the kernel caps it at `net.core.somaxconn`). A full backlog
    /// drops new connection attempts, which the clients retry only after a second.
    pub listen_backlog: u32,
    /// Most simultaneous connections (default 100,000); more are refused.
    pub max_connections: usize,
    /// Receive Maximum advertised to 5.0 clients: unacknowledged QoS 2 messages a
    /// client may have in flight towards us; also the 3.1.1 cap (default 100).
    pub receive_maximum: u16,
    /// Most QoS 1/2 messages in flight towards one client (also bounded by the
    /// client's own Receive Maximum; default 100).
    pub max_inflight: u16,
    /// Messages queued for one session beyond the in-flight window (default 1,000).
    /// Beyond it, publishers are slowed down while the session's client is connected
    /// and draining (see `backpressure_timeout_ms`); otherwise new messages for the
    /// session are dropped and counted.
    pub max_queued_messages: usize,
    /// Whether QoS 0 messages are queued for offline persistent sessions (default false).
    pub queue_qos0_offline: bool,
    /// Topic Alias Maximum advertised to 5.0 clients (default 10; 0 disables).
    pub topic_alias_maximum: u16,
    /// Highest keep-alive accepted, in seconds; 5.0 clients asking for more are
    /// told this value with Server Keep Alive, 3.1.1 clients are refused
    /// (default 65,535 = no limit).
    pub max_keepalive: u16,
    /// Longest session expiry interval granted, in seconds (default 4,294,967,295 = never).
    pub max_session_expiry: u32,
    /// Session expiry of MQTT 3.1.1 (and 3.1) Clean Session 0 sessions, in seconds, which
    /// that protocol keeps forever (Mosquitto's `persistent_client_expiration`); 0 (default)
    /// keeps them forever, as the specification says.
    pub v3_session_expiry_secs: u32,
    /// Most sessions, connected or not (default 1,000,000). A new client identifier beyond
    /// it is refused (5.0: CONNACK 0x97 Quota exceeded; 3.1.1: 0x03 Server unavailable); an
    /// existing session can always be resumed.
    pub max_sessions: usize,
    /// Most subscriptions one session may hold (default 1,000).
    pub max_subscriptions_per_client: usize,
    /// Most of those whose filter has `+` or `#` (shared ones included; default 1,000). A
    /// publish costs one step per matching filter, and overlapping wildcard filters can
    /// all match one topic: this bounds what one client adds to every publish, apart from
    /// exact filters (cheap, one topic each), which may be raised for bridges and gateways.
    pub max_wildcard_subscriptions_per_client: usize,
    /// Most levels in a topic name or filter (default 128).
    pub max_topic_levels: usize,
    /// Most retained messages held (default 100,000).
    pub max_retained: usize,
    /// Longest client identifier accepted, in bytes (default 256).
    pub max_client_id_len: usize,
    /// Whether clients may connect without credentials (default true); a listener's
    /// own `allow_anonymous` overrides it.
    pub allow_anonymous: bool,
    /// Password file (`user:hash` lines written by `tern passwd`); when set, a client
    /// giving a user name must give its password. Reloaded on SIGHUP.
    pub password_file: Option<std::path::PathBuf>,
    /// ACL file (see the README's Security section); when set, everything it does
    /// not allow is denied. Reloaded on SIGHUP.
    pub acl_file: Option<std::path::PathBuf>,
    /// `[auth]`: JWT, the HTTP hook, the order of the authentication sources, bans and
    /// flapping detection (see `docs/auth.md`).
    pub auth: crate::security::AuthConfig,
    /// Further listeners, each `[[listener]]` table with its own kind (tcp, tls, ws,
    /// wss), address and settings.
    #[serde(rename = "listener")]
    pub listeners: Vec<ListenerConfig>,
    /// Highest QoS accepted from publishers and granted to subscribers (0, 1 or 2; default 2).
    pub max_qos: u8,
    /// Whether retained messages are supported (default true).
    pub retain_available: bool,
    /// Whether filters with `+`/`#` are accepted (default true).
    pub wildcard_subscriptions: bool,
    /// Whether `$share/` subscriptions are accepted (default true).
    pub shared_subscriptions: bool,
    /// Whether 5.0 Subscription Identifiers are accepted (default true).
    pub subscription_identifiers: bool,
    /// The 5.0 SUBACK code for a filter the ACL refuses: `"not_authorized"` (0x87, default) or
    /// `"unspecified_error"` (0x80), for clients written to the 3.1.1 rule that know only 0x80
    /// (MQTT 3.1.1 always gets 0x80).
    pub denied_subscription_reason: DeniedSubscription,
    /// Most payload bytes queued for one session (default 16 MiB); beyond it messages are dropped and counted.
    pub max_queued_bytes: usize,
    /// Most payload bytes queued for all sessions together, counted once per queued copy
    /// (default 1 GiB). Beyond it, messages for sessions whose client is offline are not
    /// queued (dropped, logged and counted in `$SYS/broker/messages/dropped_over_budget`),
    /// whatever their QoS; connected clients' queues keep their own limits.
    pub max_queued_bytes_total: usize,
    /// With a data directory: messages kept for one session beyond what its queue holds in
    /// memory (`max_queued_messages`, `max_queued_bytes`) while its client is away, on disk
    /// only (default 100,000; 0 keeps none beyond the memory queue). They are read back in
    /// order as its queue drains after the client returns. Beyond it, messages for the
    /// session are dropped and counted.
    pub max_offline_messages: u64,
    /// Payload bytes of those (default 64 MiB).
    pub max_offline_bytes: u64,
    /// With a data directory: memory for the queues of persistent sessions whose client is
    /// away, all together (payload bytes, default 64 MiB). While the queues of all sessions
    /// hold more than this, further messages for a session that is away are kept on disk only
    /// (within `max_offline_messages`/`max_offline_bytes`), and start-up reads at most this
    /// much of the stored queues; the rest is read back as the sessions return.
    pub offline_cache_bytes: usize,
    /// With a data directory: beyond this size of the store file, no more messages are kept
    /// on disk for sessions that are away (dropped and counted; default 8 GiB).
    pub max_store_bytes: u64,
    /// Longest topic name or filter, in bytes (default 65,535).
    pub max_topic_length: usize,
    /// Most new connections accepted per second (default 50,000); more get CONNACK
    /// 0x9F Connection rate exceeded (5.0) or 0x03 Server unavailable (3.1.1).
    pub max_connect_rate: u32,
    /// Seconds between `$SYS/broker/...` updates (default 10; 0 disables them).
    pub sys_interval_secs: u64,
    /// How long a publisher is slowed down (its socket not read) while a connected
    /// subscriber's queue is over its limits, in milliseconds (default 2,000). A
    /// subscriber that does not drain within this time is treated as stalled:
    /// messages for it are dropped and counted instead.
    pub backpressure_timeout_ms: u64,
    /// Whether QoS 0 publishers are slowed down for a draining subscriber too
    /// (default true). With false, QoS 0 messages beyond a connected subscriber's
    /// queue limits are dropped at once, and only QoS 1/2 publishers wait.
    pub backpressure_qos0: bool,
    /// Directory of the durable store; absent: state is kept in memory only
    /// (`tern broker` defaults to `./tern-data`).
    pub data_dir: Option<std::path::PathBuf>,
    /// When stored changes reach the disk: `"always"` (default; acknowledged QoS 1/2
    /// messages survive `kill -9` and power loss) or `"interval"`.
    pub sync: crate::store::SyncPolicy,
    /// With `sync = "interval"`, milliseconds between syncs (default 100): a power
    /// loss can lose up to this much acknowledged data; a crash of the process alone loses none.
    pub sync_interval_ms: u64,
    /// Memory the store may use to cache its file's pages (default 32 MiB): what is on disk
    /// beyond it (retained messages, queues of sessions that are away) is read from the file
    /// when needed, not held in memory.
    pub store_cache_bytes: usize,
    /// With a data directory: memory for retained messages (payload, topic and the message's
    /// own structure, about 300 bytes; default 64 MiB); the others are read from the store
    /// when a subscription or the admin API needs them.
    pub retained_cache_bytes: usize,
    /// Prefix of the Response Information returned to 5.0 clients that request it;
    /// the client identifier is appended (default `"response/"`).
    pub response_information_prefix: String,
    /// How the `tern` binary writes its log: `"text"` (default; colours only on a terminal) or
    /// `"json"` (one object per line, for log shippers). The library itself leaves logging to
    /// the program that embeds it.
    pub log_format: LogFormat,
    /// The HTTP endpoint of `tern broker`: metrics, admin API, dashboard (`[http]`, or
    /// `http = "ADDR:PORT"`; `http = ""` turns it off). The library does not serve it.
    pub http: crate::http_config::HttpConfig,
    /// Links to other MQTT brokers, `[[bridge]]` tables (see `docs/bridge.md`); the library
    /// only checks them, `tern broker` runs them (the `tern-bridge` crate).
    pub bridge: Vec<crate::bridge_config::BridgeConfig>,
    /// Cluster mode (`[cluster]`): the NATS servers this node shares its state through.
    /// Absent: a single node. The library only carries it (the `tern-cluster` crate acts on it).
    pub cluster: Option<crate::cluster_config::ClusterConfig>,
}

/// The SUBACK code of a subscription the ACL refuses (see [`Config::denied_subscription_reason`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum DeniedSubscription {
    /// 0x87 Not authorized.
    #[default]
    NotAuthorized,
    /// 0x80 Unspecified error.
    UnspecifiedError,
}

impl DeniedSubscription {
    /// The reason code.
    pub fn reason_code(self) -> tern_proto::ReasonCode {
        match self {
            DeniedSubscription::NotAuthorized => tern_proto::ReasonCode::NotAuthorized,
            DeniedSubscription::UnspecifiedError => tern_proto::ReasonCode::UnspecifiedError,
        }
    }
}

/// The format of log lines (see [`Config::log_format`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, with the event's fields as keys.
    Json,
}

/// The protocol a listener speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum ListenerKind {
    /// MQTT over plain TCP.
    Tcp,
    /// MQTT over TLS (rustls; TLS 1.2 and 1.3; ALPN `mqtt`).
    Tls,
    /// MQTT over WebSocket (subprotocol `mqtt`, binary frames).
    Ws,
    /// MQTT over WebSocket over TLS.
    Wss,
}

impl ListenerKind {
    /// Whether the listener needs a certificate and key.
    pub fn is_tls(self) -> bool {
        matches!(self, ListenerKind::Tls | ListenerKind::Wss)
    }

    /// Whether the listener speaks WebSocket.
    pub fn is_websocket(self) -> bool {
        matches!(self, ListenerKind::Ws | ListenerKind::Wss)
    }

    /// The kind as written in the configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            ListenerKind::Tcp => "tcp",
            ListenerKind::Tls => "tls",
            ListenerKind::Ws => "ws",
            ListenerKind::Wss => "wss",
        }
    }
}

impl std::fmt::Display for ListenerKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One `[[listener]]` table.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// `tcp`, `tls`, `ws` or `wss`.
    pub kind: ListenerKind,
    /// Address to bind, e.g. `"0.0.0.0:8883"`.
    pub address: SocketAddr,
    /// Overrides the global `allow_anonymous` for this listener.
    #[serde(default)]
    pub allow_anonymous: Option<bool>,
    /// tls/wss: PEM file with the server certificate chain (leaf first).
    #[serde(default)]
    pub cert: Option<std::path::PathBuf>,
    /// tls/wss: PEM file with the private key (PKCS#8, PKCS#1 or SEC1).
    #[serde(default)]
    pub key: Option<std::path::PathBuf>,
    /// tls/wss: PEM file of the CA(s) that client certificates must chain to (mutual TLS).
    #[serde(default)]
    pub client_ca: Option<std::path::PathBuf>,
    /// tls/wss with `client_ca`: refuse clients without a certificate (default true).
    #[serde(default)]
    pub require_client_cert: Option<bool>,
    /// Certificate revocation lists (PEM) for client certificates, with `client_ca`;
    /// reloaded with the certificates (SIGHUP).
    #[serde(default)]
    pub crl_file: Option<std::path::PathBuf>,
    /// tls/wss: the client certificate's subject CN is the user name (needs `client_ca`).
    #[serde(default)]
    pub use_identity_as_username: bool,
    /// ws/wss: the HTTP path of the WebSocket endpoint (default `/mqtt`).
    #[serde(default = "default_ws_path")]
    pub path: String,
}

fn default_ws_path() -> String {
    "/mqtt".to_string()
}

impl ListenerConfig {
    /// A listener of `kind` on `address` with default settings.
    pub fn new(kind: ListenerKind, address: SocketAddr) -> ListenerConfig {
        ListenerConfig {
            kind,
            address,
            allow_anonymous: None,
            cert: None,
            key: None,
            client_ca: None,
            require_client_cert: None,
            crl_file: None,
            use_identity_as_username: false,
            path: default_ws_path(),
        }
    }

    fn validate(&self, i: usize) -> Result<(), BrokerError> {
        let bad =
            |field: &str, fix: &str| Err(BrokerError::Config(format!("`listener[{i}].{field}`: {fix}")));
        if self.kind.is_tls() {
            if self.cert.is_none() {
                return bad(
                    "cert",
                    "a tls/wss listener needs `cert`, the PEM certificate chain file",
                );
            }
            if self.key.is_none() {
                return bad("key", "a tls/wss listener needs `key`, the PEM private key file");
            }
        } else {
            for (field, set) in [
                ("cert", self.cert.is_some()),
                ("key", self.key.is_some()),
                ("client_ca", self.client_ca.is_some()),
                ("require_client_cert", self.require_client_cert.is_some()),
                ("crl_file", self.crl_file.is_some()),
                ("use_identity_as_username", self.use_identity_as_username),
            ] {
                if set {
                    return bad(
                        field,
                        "only tls and wss listeners take TLS settings; remove it or set kind = \"tls\"",
                    );
                }
            }
        }
        if self.crl_file.is_some() && self.client_ca.is_none() {
            return bad(
                "crl_file",
                "needs `client_ca`: revocation lists are for client certificates",
            );
        }
        if self.use_identity_as_username && self.client_ca.is_none() {
            return bad(
                "use_identity_as_username",
                "needs `client_ca` to verify client certificates",
            );
        }
        if self.kind.is_websocket() && !self.path.starts_with('/') {
            return bad("path", "must start with '/', e.g. \"/mqtt\"");
        }
        Ok(())
    }
}

impl Default for Config {
    fn default() -> Config {
        Config {
            listen: vec![SocketAddr::from(([127, 0, 0, 1], 1883))],
            max_packet_size: 1024 * 1024,
            connect_timeout_secs: 10,
            max_connect_packet_size: 128 * 1024,
            packet_stall_timeout_secs: 30,
            max_partial_bytes: 256 << 20,
            listen_backlog: 4096,
            max_connections: 100_000,
            receive_maximum: 100,
            max_inflight: 100,
            max_queued_messages: 1000,
            queue_qos0_offline: false,
            topic_alias_maximum: 10,
            max_keepalive: u16::MAX,
            max_session_expiry: u32::MAX,
            v3_session_expiry_secs: 0,
            max_sessions: 1_000_000,
            max_subscriptions_per_client: 1000,
            max_wildcard_subscriptions_per_client: 1000,
            max_topic_levels: 128,
            max_retained: 100_000,
            max_client_id_len: 256,
            allow_anonymous: true,
            password_file: None,
            acl_file: None,
            auth: crate::security::AuthConfig::default(),
            listeners: Vec::new(),
            max_qos: 2,
            retain_available: true,
            wildcard_subscriptions: true,
            shared_subscriptions: true,
            subscription_identifiers: true,
            denied_subscription_reason: DeniedSubscription::NotAuthorized,
            max_queued_bytes: 16 * 1024 * 1024,
            max_queued_bytes_total: 1 << 30,
            max_offline_messages: 100_000,
            max_offline_bytes: 64 << 20,
            max_store_bytes: 8 << 30,
            max_topic_length: 65_535,
            max_connect_rate: 50_000,
            sys_interval_secs: 10,
            response_information_prefix: "response/".to_string(),
            backpressure_timeout_ms: 2000,
            backpressure_qos0: true,
            data_dir: None,
            sync: crate::store::SyncPolicy::Always,
            sync_interval_ms: 100,
            store_cache_bytes: 32 << 20,
            retained_cache_bytes: 64 << 20,
            offline_cache_bytes: 64 << 20,
            log_format: LogFormat::Text,
            http: crate::http_config::HttpConfig::default(),
            bridge: Vec::new(),
            cluster: None,
        }
    }
}

impl Config {
    /// Read a TOML file; missing keys take their defaults.
    pub fn from_file(path: &Path) -> Result<Config, BrokerError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| BrokerError::Config(format!("cannot read {}: {e}", path.display())))?;
        Config::parse(&text, &path.display().to_string())
    }

    /// Parse TOML text.
    pub fn from_toml(text: &str) -> Result<Config, BrokerError> {
        Config::parse(text, "config")
    }

    /// Parse and validate; errors begin with `origin:LINE:COLUMN:` where the bad value is
    /// known (`tern.toml:3:19: invalid type: string "big", expected u32`), `origin:LINE:`
    /// where only its key is.
    fn parse(text: &str, origin: &str) -> Result<Config, BrokerError> {
        let config: Config = toml::from_str(text).map_err(|e| {
            let message = e.message().trim().replace('\n', " ");
            let at = match e.span() {
                Some(span) => {
                    let (line, column) = line_column(text, span.start);
                    format!("{origin}:{line}:{column}")
                }
                None => origin.to_string(),
            };
            BrokerError::Config(format!("{at}: {message}"))
        })?;
        config.validate().map_err(|e| match e {
            BrokerError::Config(m) => {
                let at = key_of(&m)
                    .and_then(|key| key_line(text, key))
                    .map_or(origin.to_string(), |line| format!("{origin}:{line}"));
                BrokerError::Config(format!("{at}: {m}"))
            }
            other => other,
        })?;
        Ok(config)
    }

    /// Check that every value is usable; the error names the field and the fix.
    pub fn validate(&self) -> Result<(), BrokerError> {
        fn bad(field: &str, fix: &str) -> Result<(), BrokerError> {
            Err(BrokerError::Config(format!("`{field}`: {fix}")))
        }
        if let Some(c) = &self.cluster {
            c.validate().map_err(BrokerError::Config)?;
        }
        if self.listen.is_empty() && self.listeners.is_empty() {
            return bad(
                "listen",
                "give at least one address, e.g. listen = [\"127.0.0.1:1883\"], or a [[listener]] table",
            );
        }
        if self.max_packet_size < 64 {
            return bad("max_packet_size", "must be at least 64 bytes");
        }
        if self.max_connect_packet_size < 64 {
            return bad("max_connect_packet_size", "must be at least 64 bytes");
        }
        // One packet in progress must fit, counted by its buffer's capacity (up to about twice
        // the packet, plus a read's worth).
        if (self.max_partial_bytes as u64) < 2 * u64::from(self.max_packet_size) + 65_536 {
            return bad(
                "max_partial_bytes",
                "must be at least 2 x max_packet_size + 64 KiB (one packet in progress must fit)",
            );
        }
        if self.receive_maximum == 0 {
            return bad("receive_maximum", "must be between 1 and 65535");
        }
        if self.max_inflight == 0 {
            return bad("max_inflight", "must be between 1 and 65535");
        }
        if self.connect_timeout_secs == 0 {
            return bad("connect_timeout_secs", "must be at least 1");
        }
        if self.listen_backlog == 0 {
            return bad("listen_backlog", "must be at least 1");
        }
        if self.max_connections == 0 {
            return bad("max_connections", "must be at least 1");
        }
        if self.max_sessions == 0 {
            return bad("max_sessions", "must be at least 1");
        }
        if self.max_queued_bytes_total == 0 {
            return bad("max_queued_bytes_total", "must be at least 1");
        }
        if self.max_wildcard_subscriptions_per_client == 0 {
            return bad(
                "max_wildcard_subscriptions_per_client",
                "must be at least 1; to refuse wildcard filters, set wildcard_subscriptions = false",
            );
        }
        if self.max_topic_levels == 0 || self.max_topic_levels > MAX_TOPIC_LEVELS {
            // The cap dates from a subscription trie that recursed per level; it still bounds
            // the levels a walk steps through for one topic.
            return bad("max_topic_levels", "must be between 1 and 256");
        }
        if self.max_qos > 2 {
            return bad("max_qos", "must be 0, 1 or 2");
        }
        if self.max_connect_rate == 0 {
            return bad("max_connect_rate", "must be at least 1 connection per second");
        }
        if self.max_topic_length == 0 || self.max_topic_length > 65_535 {
            return bad("max_topic_length", "must be between 1 and 65535");
        }
        if self.sync_interval_ms == 0 {
            return bad("sync_interval_ms", "must be at least 1");
        }
        for (i, l) in self.listeners.iter().enumerate() {
            l.validate(i)?;
        }
        if self.max_client_id_len < 23 {
            return bad("max_client_id_len", "must be at least 23 ([MQTT-3.1.3-5])");
        }
        crate::bridge_config::validate_all(&self.bridge)?;
        Ok(())
    }

    pub(crate) fn connect_timeout(&self) -> Duration {
        Duration::from_secs(self.connect_timeout_secs)
    }

    /// The size limit of the first packet.
    pub(crate) fn connect_packet_limit(&self) -> u32 {
        self.max_connect_packet_size.min(self.max_packet_size)
    }

    /// How long a partial packet may go without a byte; `None`: forever.
    pub(crate) fn packet_stall_timeout(&self) -> Option<Duration> {
        (self.packet_stall_timeout_secs > 0).then(|| Duration::from_secs(self.packet_stall_timeout_secs))
    }

    pub(crate) fn backpressure_timeout(&self) -> Duration {
        Duration::from_millis(self.backpressure_timeout_ms)
    }

    pub(crate) fn max_qos(&self) -> tern_proto::QoS {
        tern_proto::QoS::from_bits(self.max_qos).unwrap_or(tern_proto::QoS::ExactlyOnce)
    }

    /// The rules of the CONNECT phase.
    pub(crate) fn connect_rules(&self) -> tern_proto::session::server::ConnectRules {
        tern_proto::session::server::ConnectRules {
            max_client_id_len: self.max_client_id_len,
            max_keepalive: self.max_keepalive,
            v3_session_expiry: self.v3_session_expiry_secs,
        }
    }

    /// The protocol rules every session of this broker enforces.
    pub(crate) fn server_rules(&self) -> tern_proto::session::server::ServerRules {
        tern_proto::session::server::ServerRules {
            receive_maximum: self.receive_maximum,
            topic_alias_maximum: self.topic_alias_maximum,
            max_packet_size: self.max_packet_size,
            maximum_qos: self.max_qos(),
            retain_available: self.retain_available,
            max_topic_length: self.max_topic_length,
            max_topic_levels: self.max_topic_levels,
            max_session_expiry: self.max_session_expiry,
            max_inflight: self.max_inflight,
            subscription_identifiers: self.subscription_identifiers,
            shared_subscriptions: self.shared_subscriptions,
            wildcard_subscriptions: self.wildcard_subscriptions,
            max_subscriptions: self.max_subscriptions_per_client,
            max_wildcard_subscriptions: self.max_wildcard_subscriptions_per_client,
            denied_subscription: self.denied_subscription_reason.reason_code(),
        }
    }
}

/// The largest `max_topic_levels` accepted.
pub(crate) const MAX_TOPIC_LEVELS: usize = 256;

/// 1-based line and column (in characters) of byte `offset` in `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

/// The key a validation message names first (`` `max_inflight`: ... ``).
fn key_of(message: &str) -> Option<&str> {
    let rest = message.strip_prefix('`')?;
    let end = rest.find('`')?;
    // `[[listener]]` 2 `cert` and the like name a table: leave those without a line.
    rest[..end]
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_')
        .then(|| &rest[..end])
}

/// The 1-based line where `key` is set at the top level of `text` (before any table).
fn key_line(text: &str, key: &str) -> Option<usize> {
    for (i, line) in text.lines().enumerate() {
        let l = line.trim_start();
        if l.starts_with('[') {
            return None;
        }
        if let Some(rest) = l.strip_prefix(key) {
            if rest.trim_start().starts_with('=') {
                return Some(i + 1);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_overrides_defaults() {
        let c = Config::from_toml("listen = [\"0.0.0.0:1884\"]\nmax_inflight = 5\n").expect("valid");
        assert_eq!(c.listen, vec![SocketAddr::from(([0, 0, 0, 0], 1884))]);
        assert_eq!(c.max_inflight, 5);
        assert_eq!(c.max_queued_messages, 1000);
    }

    #[test]
    fn listener_tables() {
        let c = Config::from_toml(
            "password_file = \"pw\"\n[[listener]]\nkind = \"wss\"\naddress = \"0.0.0.0:8443\"\n\
             cert = \"c.pem\"\nkey = \"k.pem\"\nallow_anonymous = false\n\
             [[listener]]\nkind = \"ws\"\naddress = \"127.0.0.1:8080\"\n",
        )
        .expect("valid");
        assert_eq!(c.listeners.len(), 2);
        assert_eq!(c.listeners[0].kind, ListenerKind::Wss);
        assert_eq!(c.listeners[0].allow_anonymous, Some(false));
        assert_eq!(c.listeners[1].path, "/mqtt");
        let e = Config::from_toml("[[listener]]\nkind = \"tls\"\naddress = \"0.0.0.0:8883\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("`listener[0].cert`"), "{e}");
        let e = Config::from_toml("[[listener]]\nkind = \"ws\"\naddress = \"0.0.0.0:1\"\ncert = \"c\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("`listener[0].cert`"), "{e}");
        let e = Config::from_toml("[[listener]]\nkind = \"quic\"\naddress = \"0.0.0.0:1\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("quic"), "{e}");
    }

    #[test]
    fn errors_name_the_field() {
        let e = Config::from_toml("max_inflight = 0").unwrap_err().to_string();
        assert!(e.contains("max_inflight"), "{e}");
        let e = Config::from_toml("listen_backlog = 0").unwrap_err().to_string();
        assert!(e.contains("listen_backlog"), "{e}");
        let e = Config::from_toml("max_infligth = 3").unwrap_err().to_string();
        assert!(e.contains("max_infligth"), "{e}");
        let e = Config::from_toml("listen = [\"nonsense\"]")
            .unwrap_err()
            .to_string();
        assert!(e.contains("invalid socket address"), "{e}");
    }

    /// The README lists every key with its default: that block parses, and says what
    /// `Config::default()` says (but `data_dir`, which `tern broker` sets and the library does not).
    #[test]
    fn the_readme_lists_the_defaults() {
        let readme = include_str!("../../../README.md");
        let start = readme
            .find("where it shows):\n\n```toml\n")
            .expect("the defaults block");
        let block = &readme[start..];
        let block = &block[block.find("```toml\n").expect("fence") + 8..];
        let block = &block[..block.find("```").expect("closing fence")];
        let mut parsed = Config::from_toml(block).expect("the README's defaults parse");
        parsed.data_dir = None;
        assert_eq!(format!("{parsed:?}"), format!("{:?}", Config::default()));
    }

    #[test]
    fn errors_give_the_line_and_column_of_the_bad_value() {
        let text = "listen = [\"127.0.0.1:1883\"]\n# limits\nmax_queued_bytes = \"big\"\n";
        let e = Config::from_toml(text).unwrap_err().to_string();
        assert!(
            e.ends_with("config:3:20: invalid type: string \"big\", expected usize"),
            "{e}"
        );
        // Validation errors name the key and its line.
        let e = Config::from_toml("\n\nmax_inflight = 0\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("config:3: `max_inflight`"), "{e}");
        let e = Config::from_toml("log_format = \"xml\"").unwrap_err().to_string();
        assert!(e.contains("config:1:14: unknown variant `xml`"), "{e}");
        assert_eq!(
            Config::from_toml("log_format = \"json\"").unwrap().log_format,
            LogFormat::Json
        );
    }
}
