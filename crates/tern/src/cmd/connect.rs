//! Flags shared by `tern pub` and `tern sub`: where to connect, who we are,
//! the session, the will, and 5.0 message properties. Short names follow
//! mosquitto_pub / mosquitto_sub.

use std::time::Duration;

use tern_client::{LastWill, Options, ProtocolVersion, PublishOptions, QoS, Reconnect};

/// How to reach the broker and identify ourselves.
#[derive(Debug, Clone, clap::Args)]
pub struct ConnectArgs {
    /// Broker host.
    #[arg(short = 'h', long, default_value = "localhost")]
    pub host: String,
    /// Broker port.
    #[arg(short = 'p', long, default_value_t = 1883)]
    pub port: u16,
    /// Broker URL, instead of --host/--port: mqtt://[user[:password]@]host[:port], or
    /// mqtts:// (TLS), ws://host[:port][/path], wss:// (WebSocket; path /mqtt by default).
    #[arg(short = 'L', long, value_name = "URL")]
    pub url: Option<String>,
    /// TLS: trust the CA certificates of this PEM file (default: the system's). Without
    /// --url, connects with TLS to --host/--port.
    #[arg(long, value_name = "FILE")]
    pub cafile: Option<std::path::PathBuf>,
    /// TLS: client certificate chain (PEM) for servers that ask for one (needs --key).
    #[arg(long, value_name = "FILE", requires = "key")]
    pub cert: Option<std::path::PathBuf>,
    /// TLS: private key of --cert (PEM).
    #[arg(long, value_name = "FILE", requires = "cert")]
    pub key: Option<std::path::PathBuf>,
    /// TLS: the server name to send (SNI) and verify (default: the host).
    #[arg(long = "tls-server-name", value_name = "NAME")]
    pub tls_server_name: Option<String>,
    /// MQTT version: 5 (default) or 311.
    #[arg(short = 'V', long = "protocol-version", value_name = "311|5", default_value = "5", value_parser = parse_version)]
    pub version: ProtocolVersion,
    /// Client identifier (default: assigned by the broker for 5.0, generated for 3.1.1).
    #[arg(short = 'i', long = "id", value_name = "ID")]
    pub client_id: Option<String>,
    /// User name.
    #[arg(short = 'u', long)]
    pub username: Option<String>,
    /// Password (needs --username with 3.1.1).
    #[arg(short = 'P', long = "pw", value_name = "PASSWORD")]
    pub password: Option<String>,
    /// Keep-alive in seconds (0 disables it).
    #[arg(short = 'k', long, value_name = "SECS", default_value_t = 60)]
    pub keepalive: u16,
    /// Keep the session after disconnecting (Clean Start / Clean Session 0).
    #[arg(short = 'c', long = "disable-clean-session")]
    pub no_clean: bool,
    /// 5.0 Session Expiry Interval in seconds.
    #[arg(short = 'x', long = "session-expiry", value_name = "SECS")]
    pub session_expiry: Option<u32>,
    /// Seconds allowed to connect.
    #[arg(long = "connect-timeout", value_name = "SECS", default_value_t = 10)]
    pub connect_timeout: u64,
    /// Will topic.
    #[arg(long = "will-topic", value_name = "TOPIC")]
    pub will_topic: Option<String>,
    /// Will payload (requires --will-topic).
    #[arg(long = "will-payload", value_name = "MSG", requires = "will_topic")]
    pub will_payload: Option<String>,
    /// Will QoS (requires --will-topic).
    #[arg(long = "will-qos", value_name = "0|1|2", value_parser = parse_qos, requires = "will_topic")]
    pub will_qos: Option<QoS>,
    /// Retain the will (requires --will-topic).
    #[arg(long = "will-retain", requires = "will_topic")]
    pub will_retain: bool,
    /// 5.0 Will Delay Interval in seconds (requires --will-topic).
    #[arg(long = "will-delay", value_name = "SECS", requires = "will_topic")]
    pub will_delay: Option<u32>,
}

/// 5.0 properties of published messages.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct MessageProperties {
    /// 5.0 User Property NAME=VALUE (repeatable).
    #[arg(long = "user-property", value_name = "NAME=VALUE", value_parser = parse_pair)]
    pub user_properties: Vec<(String, String)>,
    /// 5.0 Content Type.
    #[arg(long = "content-type", value_name = "TYPE")]
    pub content_type: Option<String>,
    /// 5.0 Message Expiry Interval in seconds.
    #[arg(short = 'e', long = "message-expiry", value_name = "SECS")]
    pub message_expiry: Option<u32>,
    /// 5.0 Response Topic.
    #[arg(long = "response-topic", value_name = "TOPIC")]
    pub response_topic: Option<String>,
    /// 5.0 Correlation Data.
    #[arg(long = "correlation-data", value_name = "DATA")]
    pub correlation_data: Option<String>,
}

impl MessageProperties {
    /// The flag of the first property that is set, if any (they are 5.0 only).
    pub fn first_set(&self) -> Option<&'static str> {
        if !self.user_properties.is_empty() {
            Some("--user-property")
        } else if self.content_type.is_some() {
            Some("--content-type")
        } else if self.message_expiry.is_some() {
            Some("--message-expiry")
        } else if self.response_topic.is_some() {
            Some("--response-topic")
        } else if self.correlation_data.is_some() {
            Some("--correlation-data")
        } else {
            None
        }
    }

    /// Apply to publish options.
    pub fn apply(&self, mut o: PublishOptions) -> PublishOptions {
        for (k, v) in &self.user_properties {
            o = o.user_property(k.as_str(), v.as_str());
        }
        if let Some(c) = &self.content_type {
            o = o.content_type(c.as_str());
        }
        if let Some(e) = self.message_expiry {
            o = o.message_expiry(e);
        }
        if let Some(t) = &self.response_topic {
            o = o.response_topic(t.as_str());
        }
        if let Some(c) = &self.correlation_data {
            o = o.correlation_data(c.clone().into_bytes());
        }
        o
    }
}

/// Parse `-V`: 311, 3.1.1, mqttv311, 5, 5.0, mqttv5.
pub fn parse_version(s: &str) -> Result<ProtocolVersion, String> {
    match s {
        "311" | "3.1.1" | "mqttv311" | "4" => Ok(ProtocolVersion::V3_1_1),
        "5" | "5.0" | "mqttv5" => Ok(ProtocolVersion::V5),
        _ => Err("use 311 or 5".into()),
    }
}

/// Parse a QoS: 0, 1 or 2.
pub fn parse_qos(s: &str) -> Result<QoS, String> {
    s.parse::<u8>()
        .ok()
        .and_then(QoS::from_bits)
        .ok_or_else(|| "QoS must be 0, 1 or 2".into())
}

/// Parse NAME=VALUE.
pub fn parse_pair(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err("expected NAME=VALUE".into()),
    }
}

/// A one-line error naming the flag at fault.
pub fn flag_error(flag: &str, problem: impl std::fmt::Display) -> String {
    format!("{flag}: {problem}")
}

impl ConnectArgs {
    /// Client options from the flags; `role` ("pub"/"sub") names generated client ids.
    pub fn options(&self, role: &str, reconnect: bool) -> Result<Options, String> {
        let tls = self.cafile.is_some() || self.cert.is_some() || self.tls_server_name.is_some();
        let scheme = if tls { "mqtts" } else { "mqtt" };
        let url = match &self.url {
            Some(u) => u.clone(),
            None if self.host.contains(':') => format!("{scheme}://[{}]:{}", self.host, self.port),
            None => format!("{scheme}://{}:{}", self.host, self.port),
        };
        let v5 = self.version == ProtocolVersion::V5;
        if !v5 {
            if self.session_expiry.is_some() {
                return Err(flag_error("--session-expiry", "is MQTT 5.0 only; add -V 5"));
            }
            if self.will_delay.is_some() {
                return Err(flag_error("--will-delay", "is MQTT 5.0 only; add -V 5"));
            }
        }
        if self.password.is_some() && self.username.is_none() && !v5 {
            return Err(flag_error("--pw", "needs --username with MQTT 3.1.1"));
        }
        let client_id = match &self.client_id {
            Some(id) => id.clone(),
            // 3.1.1 servers may refuse empty ids: generate one like mosquitto does.
            None if !v5 => format!("tern-{role}-{}", std::process::id()),
            None => String::new(),
        };
        if self.no_clean && client_id.is_empty() {
            return Err(flag_error("--disable-clean-session", "needs --id"));
        }
        let mut o = Options::new(url)
            .version(self.version)
            .client_id(client_id)
            .keep_alive(Duration::from_secs(u64::from(self.keepalive)))
            .clean_start(!self.no_clean)
            .connect_timeout(Duration::from_secs(self.connect_timeout.max(1)))
            .reconnect(if reconnect {
                Reconnect::default()
            } else {
                Reconnect::disabled()
            });
        match (&self.username, &self.password) {
            (Some(u), Some(p)) => o = o.credentials(u.as_str(), p.clone().into_bytes()),
            (Some(u), None) => o = o.username(u.as_str()),
            (None, Some(p)) => o = o.credentials("", p.clone().into_bytes()),
            (None, None) => {}
        }
        if let Some(s) = self.session_expiry {
            o = o.session_expiry(s);
        }
        if tls {
            let mut t = tern_client::transport::TlsOptions::new();
            if let Some(ca) = &self.cafile {
                t = t.ca_file(ca);
            }
            if let (Some(cert), Some(key)) = (&self.cert, &self.key) {
                t = t.client_auth_files(cert, key);
            }
            if let Some(name) = &self.tls_server_name {
                t = t.server_name(name.as_str());
            }
            o = o.tls(t);
        }
        if let Some(topic) = &self.will_topic {
            if let Err(e) = tern_proto::topic::validate_topic_name(topic) {
                return Err(flag_error("--will-topic", e));
            }
            let mut w = LastWill::new(topic.as_str(), self.will_payload.clone().unwrap_or_default())
                .qos(self.will_qos.unwrap_or(QoS::AtMostOnce))
                .retain(self.will_retain);
            if let Some(d) = self.will_delay {
                w = w.delay(d);
            }
            o = o.will(w);
        }
        Ok(o)
    }
}

/// The runtime for a command-line client.
pub fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))
}
