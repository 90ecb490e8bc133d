//! The `[[bridge]]` tables: links to other MQTT brokers. The broker library only carries and
//! checks them; the `tern-bridge` crate runs them (see `docs/bridge.md`).
//!
//! ```toml
//! [[bridge]]
//! name = "cloud"
//! remote = "mqtts://cloud.example.com:8883"
//! client_id = "edge-bridge-1"
//! version = "5"                 # or "3.1.1"
//!
//! [[bridge.topic]]
//! filter = "edge/#"             # local edge/... is published remotely as site1/edge/...
//! direction = "out"
//! qos = 1
//! remote_prefix = "site1/"
//! ```

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::BrokerError;

/// Which way a topic rule forwards messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum BridgeDirection {
    /// Local to remote.
    Out,
    /// Remote to local.
    In,
    /// Both ways.
    Both,
}

impl BridgeDirection {
    /// Whether local messages matching the rule go to the remote.
    pub fn is_out(self) -> bool {
        matches!(self, BridgeDirection::Out | BridgeDirection::Both)
    }

    /// Whether remote messages matching the rule come in.
    pub fn is_in(self) -> bool {
        matches!(self, BridgeDirection::In | BridgeDirection::Both)
    }
}

/// What a message for a bridge's outbox does when the outbox is full (`outbox_full`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum OutboxFull {
    /// Local publishers of the bridge's topics wait (their PUBACK withheld, their connection
    /// not read) until the outbox is down to half its limits (default): nothing is lost.
    #[default]
    Block,
    /// The oldest message in the outbox is dropped (counted) to make room for the new one.
    DropOldest,
}

/// One `[[bridge.topic]]` rule, as Mosquitto's `topic PATTERN DIRECTION QOS LOCAL REMOTE`:
/// the local topics are `local_prefix` + what `filter` matches, the remote ones `remote_prefix`
/// + the same.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct BridgeTopic {
    /// The topic filter (without prefixes), e.g. `edge/#`.
    pub filter: String,
    /// `out`, `in` or `both`.
    pub direction: BridgeDirection,
    /// The highest QoS a message is forwarded with (default 1).
    #[serde(default = "default_qos")]
    pub qos: u8,
    /// Prefix of the topic on this broker (default none).
    #[serde(default)]
    pub local_prefix: String,
    /// Prefix of the topic on the remote broker (default none).
    #[serde(default)]
    pub remote_prefix: String,
}

fn default_qos() -> u8 {
    1
}

impl BridgeTopic {
    /// A rule for `filter` in `direction` at QoS 1, without prefixes.
    pub fn new(filter: impl Into<String>, direction: BridgeDirection) -> BridgeTopic {
        BridgeTopic {
            filter: filter.into(),
            direction,
            qos: 1,
            local_prefix: String::new(),
            remote_prefix: String::new(),
        }
    }

    /// The same rule with prefixes.
    pub fn prefixes(mut self, local: impl Into<String>, remote: impl Into<String>) -> BridgeTopic {
        self.local_prefix = local.into();
        self.remote_prefix = remote.into();
        self
    }

    /// The same rule with a maximum QoS.
    pub fn qos(mut self, qos: u8) -> BridgeTopic {
        self.qos = qos;
        self
    }

    /// The filter on this broker: `local_prefix` + `filter`.
    pub fn local_filter(&self) -> String {
        format!("{}{}", self.local_prefix, self.filter)
    }

    /// The filter on the remote: `remote_prefix` + `filter`.
    pub fn remote_filter(&self) -> String {
        format!("{}{}", self.remote_prefix, self.filter)
    }
}

/// One `[[bridge]]` table.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct BridgeConfig {
    /// The bridge's name: in logs, and its local session is `$bridge/NAME`.
    pub name: String,
    /// The remote broker: `mqtt://`, `mqtts://`, `ws://` or `wss://` `host[:port][/path]`.
    pub remote: String,
    /// Client identifier on the remote (default `tern-bridge-NAME`).
    #[serde(default)]
    pub client_id: Option<String>,
    /// MQTT version towards the remote: `"5"` (default) or `"3.1.1"`.
    #[serde(default = "default_version")]
    pub version: String,
    /// User name on the remote.
    #[serde(default)]
    pub username: Option<String>,
    /// Password on the remote (prefer `password_file`).
    #[serde(default, serialize_with = "masked")]
    pub password: Option<String>,
    /// A file whose first line is the password on the remote.
    #[serde(default, serialize_with = "masked")]
    pub password_file: Option<PathBuf>,
    /// PEM CA certificates that the remote's certificate must chain to (mqtts/wss; default:
    /// the system's).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate chain (mutual TLS), with `key_file`.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file`.
    #[serde(default, serialize_with = "masked")]
    pub key_file: Option<PathBuf>,
    /// The name the remote's certificate must carry, when not the URL's host.
    #[serde(default)]
    pub server_name: Option<String>,
    /// Keep-alive towards the remote, in seconds (default 60).
    #[serde(default = "default_keep_alive")]
    pub keep_alive_secs: u16,
    /// Clean Start / Clean Session on the first connection to the remote (default false:
    /// the remote keeps the bridge's session and queues `in` messages while it is away).
    #[serde(default)]
    pub clean_start: bool,
    /// 5.0 Session Expiry Interval asked of the remote, in seconds (default 86,400).
    #[serde(default = "default_session_expiry")]
    pub session_expiry_secs: u32,
    /// Shortest wait before reconnecting to the remote, in milliseconds (default 500); it
    /// doubles, with jitter, up to `reconnect_max_ms`.
    #[serde(default = "default_reconnect_min")]
    pub reconnect_min_ms: u64,
    /// Longest wait before reconnecting, in milliseconds (default 30,000).
    #[serde(default = "default_reconnect_max")]
    pub reconnect_max_ms: u64,
    /// Messages taken from the outbox and not yet acknowledged by the remote (default 100).
    #[serde(default = "default_inflight")]
    pub max_inflight: u16,
    /// 5.0 remotes: how many bridges a message may have crossed and still go out through
    /// this one (default 1: a message that came over a bridge does not go over another).
    /// Each bridge counts itself in the User Property `tern-bridge-hops` of what it sends,
    /// so two brokers with bridges pointing at each other do not pass a message back and
    /// forth.
    #[serde(default = "default_max_hops")]
    pub max_hops: u8,
    /// Most messages waiting in the outbox beyond those in flight (default 100,000).
    #[serde(default = "default_outbox_messages")]
    pub max_outbox_messages: usize,
    /// Most payload bytes waiting in the outbox (default 64 MiB).
    #[serde(default = "default_outbox_bytes")]
    pub max_outbox_bytes: usize,
    /// 3.1.1 remotes: announce the bridge as Mosquitto's bridges do (protocol level 0x84), so
    /// that a remote that knows the convention (Tern, Mosquitto) does not send back what the
    /// bridge publishes and marks it as bridged (default true). A remote that refuses it is
    /// connected to again without it.
    #[serde(default = "default_true")]
    pub try_private: bool,
    /// When the outbox is full: `block` (default) or `drop_oldest`.
    #[serde(default)]
    pub outbox_full: OutboxFull,
    /// The topic rules, `[[bridge.topic]]` tables.
    #[serde(default, rename = "topic")]
    pub topics: Vec<BridgeTopic>,
}

/// Secrets and paths to them are written as `***` (the admin API shows the configuration).
fn masked<T, S: serde::Serializer>(value: &Option<T>, s: S) -> Result<S::Ok, S::Error> {
    match value {
        Some(_) => s.serialize_some("***"),
        None => s.serialize_none(),
    }
}

fn default_version() -> String {
    "5".to_string()
}
fn default_keep_alive() -> u16 {
    60
}
fn default_session_expiry() -> u32 {
    86_400
}
fn default_reconnect_min() -> u64 {
    500
}
fn default_reconnect_max() -> u64 {
    30_000
}
fn default_inflight() -> u16 {
    100
}
fn default_max_hops() -> u8 {
    1
}
fn default_true() -> bool {
    true
}
fn default_outbox_messages() -> usize {
    100_000
}
fn default_outbox_bytes() -> usize {
    64 * 1024 * 1024
}

impl BridgeConfig {
    /// A bridge named `name` to `remote` with default settings and no topic rules.
    pub fn new(name: impl Into<String>, remote: impl Into<String>) -> BridgeConfig {
        BridgeConfig {
            name: name.into(),
            remote: remote.into(),
            client_id: None,
            version: default_version(),
            username: None,
            password: None,
            password_file: None,
            ca_file: None,
            cert_file: None,
            key_file: None,
            server_name: None,
            keep_alive_secs: default_keep_alive(),
            clean_start: false,
            session_expiry_secs: default_session_expiry(),
            reconnect_min_ms: default_reconnect_min(),
            reconnect_max_ms: default_reconnect_max(),
            max_inflight: default_inflight(),
            max_hops: default_max_hops(),
            max_outbox_messages: default_outbox_messages(),
            max_outbox_bytes: default_outbox_bytes(),
            outbox_full: OutboxFull::Block,
            try_private: true,
            topics: Vec::new(),
        }
    }

    /// Add a topic rule.
    pub fn topic(mut self, rule: BridgeTopic) -> BridgeConfig {
        self.topics.push(rule);
        self
    }

    /// Change settings in place.
    pub fn with(mut self, f: impl FnOnce(&mut BridgeConfig)) -> BridgeConfig {
        f(&mut self);
        self
    }

    /// The client identifier of the bridge's local session on this broker.
    pub fn local_client_id(&self) -> String {
        format!("{}{}", crate::BRIDGE_CLIENT_PREFIX, self.name)
    }

    /// The client identifier on the remote.
    pub fn remote_client_id(&self) -> String {
        self.client_id
            .clone()
            .unwrap_or_else(|| format!("tern-bridge-{}", self.name))
    }

    /// Whether the remote speaks MQTT 5.0 (else 3.1.1).
    pub fn is_v5(&self) -> bool {
        self.version == "5" || self.version == "5.0"
    }

    /// Check the table; `i` is its position. Errors name the bridge and the key.
    pub(crate) fn validate(&self, i: usize) -> Result<(), BrokerError> {
        let at = if self.name.is_empty() {
            format!("bridge[{i}]")
        } else {
            format!("bridge \"{}\"", self.name)
        };
        let bad = |key: &str, fix: String| Err(BrokerError::Config(format!("{at}: `{key}`: {fix}")));
        if self.name.is_empty() || self.name.contains(['/', '+', '#']) {
            return bad(
                "name",
                "give a name without '/', '+' or '#', e.g. name = \"cloud\"".into(),
            );
        }
        let Some((scheme, rest)) = self.remote.split_once("://") else {
            return bad(
                "remote",
                format!("{:?} is not a URL; write e.g. \"mqtt://host:1883\"", self.remote),
            );
        };
        let tls = match scheme {
            "mqtt" | "tcp" | "ws" => false,
            "mqtts" | "ssl" | "tls" | "wss" => true,
            other => {
                return bad(
                    "remote",
                    format!("unknown scheme `{other}`; use mqtt, mqtts, ws or wss"),
                )
            }
        };
        if rest.is_empty() || rest.starts_with('/') || rest.starts_with(':') {
            return bad("remote", format!("{:?} has no host", self.remote));
        }
        if !self.is_v5() && self.version != "3.1.1" {
            return bad("version", format!("{:?}: use \"5\" or \"3.1.1\"", self.version));
        }
        if self.password.is_some() && self.password_file.is_some() {
            return bad(
                "password_file",
                "give `password` or `password_file`, not both".into(),
            );
        }
        let files = [
            ("password_file", &self.password_file),
            ("ca_file", &self.ca_file),
            ("cert_file", &self.cert_file),
            ("key_file", &self.key_file),
        ];
        for (key, file) in files {
            if let Some(path) = file {
                if !path.is_file() {
                    return bad(key, format!("cannot read {}", path.display()));
                }
                if key != "password_file" && !tls {
                    return bad(key, "only mqtts:// and wss:// remotes take TLS files".into());
                }
            }
        }
        if self.cert_file.is_some() != self.key_file.is_some() {
            return bad("key_file", "`cert_file` and `key_file` go together".into());
        }
        if self.server_name.is_some() && !tls {
            return bad("server_name", "only mqtts:// and wss:// remotes take it".into());
        }
        if self.max_hops == 0 {
            return bad("max_hops", "must be at least 1".into());
        }
        if self.max_outbox_messages == 0 {
            return bad("max_outbox_messages", "must be at least 1".into());
        }
        if self.max_outbox_bytes == 0 {
            return bad("max_outbox_bytes", "must be at least 1".into());
        }
        if self.max_inflight == 0 {
            return bad("max_inflight", "must be between 1 and 65535".into());
        }
        if self.reconnect_min_ms == 0 || self.reconnect_max_ms < self.reconnect_min_ms {
            return bad(
                "reconnect_min_ms",
                "must be at least 1 and at most `reconnect_max_ms`".into(),
            );
        }
        if self.topics.is_empty() {
            return bad("topic", "give at least one [[bridge.topic]] table".into());
        }
        for (j, t) in self.topics.iter().enumerate() {
            let key = |k: &str| format!("topic[{j}].{k}");
            if t.qos > 2 {
                return bad(&key("qos"), "must be 0, 1 or 2".into());
            }
            if let Err(e) = tern_proto::topic::validate_topic_filter(&t.filter) {
                return bad(&key("filter"), format!("{:?}: {e}", t.filter));
            }
            if t.filter.starts_with("$share/") {
                return bad(
                    &key("filter"),
                    "a bridge rule cannot be a shared subscription".into(),
                );
            }
            for (k, prefix) in [
                ("local_prefix", &t.local_prefix),
                ("remote_prefix", &t.remote_prefix),
            ] {
                if prefix.contains(['+', '#']) {
                    return bad(&key(k), format!("{prefix:?}: a prefix cannot hold '+' or '#'"));
                }
            }
            for f in [t.local_filter(), t.remote_filter()] {
                if let Err(e) = tern_proto::topic::validate_topic_filter(&f) {
                    return bad(&key("filter"), format!("with its prefix, {f:?}: {e}"));
                }
            }
        }
        Ok(())
    }
}

/// Check every bridge, and that names and local sessions are unique.
pub(crate) fn validate_all(bridges: &[BridgeConfig]) -> Result<(), BrokerError> {
    for (i, b) in bridges.iter().enumerate() {
        b.validate(i)?;
        if bridges[..i].iter().any(|o| o.name == b.name) {
            return Err(BrokerError::Config(format!(
                "bridge \"{}\": `name`: two bridges have this name",
                b.name
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::Config;

    /// The issue's example parses as written.
    const EXAMPLE: &str = r#"
[[bridge]]
name = "cloud"
remote = "mqtts://cloud.example.com:8883"
client_id = "edge-bridge-1"
version = "5"                 # or "3.1.1"

[[bridge.topic]]
filter = "edge/#"             # local topics edge/... are published remotely as site1/edge/...
direction = "out"
qos = 1
remote_prefix = "site1/"

[[bridge.topic]]
filter = "cmd/#"              # remote site1/cmd/... arrive locally as cmd/...
direction = "in"
qos = 1
remote_prefix = "site1/"
"#;

    #[test]
    fn the_example_parses() {
        let c = Config::from_toml(EXAMPLE).expect("valid");
        let b = &c.bridge[0];
        assert_eq!(b.name, "cloud");
        assert_eq!(b.remote_client_id(), "edge-bridge-1");
        assert!(b.is_v5());
        assert_eq!(b.topics.len(), 2);
        assert_eq!(b.topics[0].remote_filter(), "site1/edge/#");
        assert_eq!(b.topics[1].local_filter(), "cmd/#");
        assert!(b.topics[1].direction.is_in() && !b.topics[1].direction.is_out());
    }

    #[test]
    fn secrets_are_not_serialized() {
        let c = Config::from_toml(&EXAMPLE.replace(
            "version = \"5\"",
            "version = \"5\"\nusername = \"u\"\npassword = \"hunter2\"",
        ))
        .expect("valid");
        let json = serde_json::to_string(&c).expect("serializable");
        assert!(
            !json.contains("hunter2") && json.contains("\"password\":\"***\""),
            "{json}"
        );
    }

    fn error(text: &str) -> String {
        Config::from_toml(text).unwrap_err().to_string()
    }

    #[test]
    fn errors_name_the_bridge_and_the_key() {
        let e = error(&EXAMPLE.replace("mqtts://", "amqp://"));
        assert!(
            e.contains("bridge \"cloud\": `remote`: unknown scheme `amqp`"),
            "{e}"
        );
        let e = error(&EXAMPLE.replace("\"edge/#\"", "\"edge/#/x\""));
        assert!(e.contains("bridge \"cloud\": `topic[0].filter`"), "{e}");
        let e = error(&EXAMPLE.replace("version = \"5\"", "version = \"4\""));
        assert!(e.contains("`version`"), "{e}");
        let e = error(&EXAMPLE.replace(
            "version = \"5\"",
            "version = \"5\"\nca_file = \"/nonexistent/ca.pem\"",
        ));
        assert!(e.contains("`ca_file`: cannot read /nonexistent/ca.pem"), "{e}");
        let e = error(&EXAMPLE.replace(
            "qos = 1\nremote_prefix = \"site1/\"\n\n",
            "qos = 3\nremote_prefix = \"site1/\"\n\n",
        ));
        assert!(e.contains("`topic[0].qos`"), "{e}");
        let e = error(&format!("{EXAMPLE}\n[[bridge]]\nname = \"cloud\"\nremote = \"mqtt://h\"\n[[bridge.topic]]\nfilter = \"a\"\ndirection = \"in\"\n"));
        assert!(e.contains("two bridges have this name"), "{e}");
    }
}
