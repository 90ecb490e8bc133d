//! [`Options`]: everything about how a client connects, as a builder.
//!
//! Nothing is checked until [`crate::Client::connect`]; then every problem is a
//! [`ClientError::InvalidOption`] naming the builder method to fix.

use std::sync::Arc;
use std::time::Duration;

use tern_proto::codec::{ConnectProperties, WillProperties};
use tern_proto::session::ClientConfig;
use tern_proto::{ByteString, Bytes, Connect, ProtocolVersion, QoS, Will};

use crate::backoff::Reconnect;
use crate::transport::{
    Connector, Endpoint, Scheme, TcpConnector, TlsConnector, TlsOptions, UrlError, WsConnector,
};
use crate::ClientError;

/// The Will Message: published by the server if the connection ends without a
/// normal DISCONNECT.
#[derive(Debug, Clone)]
pub struct LastWill {
    will: Will,
}

impl LastWill {
    /// A will on `topic` with `payload`, QoS 0, not retained.
    pub fn new(topic: impl Into<ByteString>, payload: impl Into<Bytes>) -> LastWill {
        LastWill {
            will: Will {
                topic: topic.into(),
                payload: payload.into(),
                qos: QoS::AtMostOnce,
                retain: false,
                properties: WillProperties::default(),
            },
        }
    }

    /// Will QoS.
    pub fn qos(mut self, qos: QoS) -> LastWill {
        self.will.qos = qos;
        self
    }

    /// Will Retain.
    pub fn retain(mut self, retain: bool) -> LastWill {
        self.will.retain = retain;
        self
    }

    /// 5.0 Will Delay Interval in seconds.
    pub fn delay(mut self, seconds: u32) -> LastWill {
        self.will.properties.will_delay_interval = Some(seconds);
        self
    }

    /// 5.0 Message Expiry Interval in seconds.
    pub fn message_expiry(mut self, seconds: u32) -> LastWill {
        self.will.properties.message_expiry_interval = Some(seconds);
        self
    }

    /// 5.0 Content Type.
    pub fn content_type(mut self, content_type: impl Into<ByteString>) -> LastWill {
        self.will.properties.content_type = Some(content_type.into());
        self
    }

    /// 5.0 Payload Format Indicator: the payload is UTF-8 text.
    pub fn utf8_payload(mut self) -> LastWill {
        self.will.properties.payload_format_indicator = Some(1);
        self
    }

    /// 5.0 Response Topic.
    pub fn response_topic(mut self, topic: impl Into<ByteString>) -> LastWill {
        self.will.properties.response_topic = Some(topic.into());
        self
    }

    /// 5.0 Correlation Data.
    pub fn correlation_data(mut self, data: impl Into<Bytes>) -> LastWill {
        self.will.properties.correlation_data = Some(data.into());
        self
    }

    /// 5.0 User Property (repeatable, order kept).
    pub fn user_property(mut self, name: impl Into<ByteString>, value: impl Into<ByteString>) -> LastWill {
        self.will
            .properties
            .user_properties
            .push((name.into(), value.into()));
        self
    }
}

/// How to connect: server URL, identity, session, will, 5.0 properties,
/// reconnection and queue sizes.
///
/// ```
/// use std::time::Duration;
/// use tern_client::{Options, QoS, LastWill, ProtocolVersion};
///
/// let options = Options::new("mqtt://127.0.0.1:1883")
///     .version(ProtocolVersion::V3_1_1)
///     .client_id("room1")
///     .credentials("user", "password")
///     .keep_alive(Duration::from_secs(30))
///     .will(LastWill::new("rooms/room1/status", "offline").qos(QoS::AtLeastOnce).retain(true));
/// ```
#[derive(Clone)]
pub struct Options {
    pub(crate) url: String,
    pub(crate) version: ProtocolVersion,
    pub(crate) client_id: String,
    pub(crate) username: Option<String>,
    pub(crate) password: Option<Bytes>,
    pub(crate) keep_alive: Duration,
    pub(crate) clean_start: bool,
    pub(crate) will: Option<LastWill>,
    pub(crate) properties: ConnectProperties,
    pub(crate) connect_timeout: Duration,
    pub(crate) reconnect: Reconnect,
    pub(crate) max_queued: usize,
    pub(crate) max_inflight: u16,
    pub(crate) topic_aliases: bool,
    pub(crate) manual_acks: bool,
    pub(crate) bridge_mode: bool,
    pub(crate) event_capacity: usize,
    pub(crate) connector: Option<Arc<dyn Connector>>,
    pub(crate) tls: Option<TlsOptions>,
    pub(crate) scram: Option<(String, String)>,
}

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("url", &self.url)
            .field("version", &self.version)
            .field("client_id", &self.client_id)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<hidden>"))
            .field("keep_alive", &self.keep_alive)
            .field("clean_start", &self.clean_start)
            .field("will", &self.will)
            .field("properties", &self.properties)
            .field("connect_timeout", &self.connect_timeout)
            .field("reconnect", &self.reconnect)
            .field("max_queued", &self.max_queued)
            .field("max_inflight", &self.max_inflight)
            .field("topic_aliases", &self.topic_aliases)
            .field("manual_acks", &self.manual_acks)
            .field("bridge_mode", &self.bridge_mode)
            .field("event_capacity", &self.event_capacity)
            .field("tls", &self.tls)
            .field("scram", &self.scram.as_ref().map(|(u, _)| u))
            .finish()
    }
}

impl Options {
    /// Options for the server at `url`: `mqtt://host[:port]` (TCP), `mqtts://` (TLS),
    /// `ws://host[:port][/path]` or `wss://` (WebSocket, path `/mqtt` by default).
    /// TLS trusts the system's CA certificates unless [`Options::tls`] says otherwise. Defaults: MQTT 5.0,
    /// server-assigned client id, keep-alive 60 s, clean start, connect timeout
    /// 10 s, automatic reconnection, 1,000 queued messages, 64 buffered events.
    pub fn new(url: impl Into<String>) -> Options {
        Options {
            url: url.into(),
            version: ProtocolVersion::V5,
            client_id: String::new(),
            username: None,
            password: None,
            keep_alive: Duration::from_secs(60),
            clean_start: true,
            will: None,
            properties: ConnectProperties::default(),
            connect_timeout: Duration::from_secs(10),
            reconnect: Reconnect::default(),
            max_queued: 1000,
            max_inflight: u16::MAX,
            topic_aliases: false,
            manual_acks: false,
            bridge_mode: false,
            event_capacity: 64,
            connector: None,
            tls: None,
            scram: None,
        }
    }

    /// Protocol version: [`ProtocolVersion::V5`] (default) or [`ProtocolVersion::V3_1_1`].
    pub fn version(mut self, version: ProtocolVersion) -> Options {
        self.version = version;
        self
    }

    /// Client identifier; empty (the default) lets the server assign one.
    pub fn client_id(mut self, id: impl Into<String>) -> Options {
        self.client_id = id.into();
        self
    }

    /// User name and password.
    pub fn credentials(mut self, username: impl Into<String>, password: impl Into<Bytes>) -> Options {
        self.username = Some(username.into());
        self.password = Some(password.into());
        self
    }

    /// User name without password.
    pub fn username(mut self, username: impl Into<String>) -> Options {
        self.username = Some(username.into());
        self
    }

    /// Keep-alive interval, whole seconds up to 65,535 (zero disables it).
    pub fn keep_alive(mut self, keep_alive: Duration) -> Options {
        self.keep_alive = keep_alive;
        self
    }

    /// Clean Start (5.0) / Clean Session (3.1.1) for the first connection (default true).
    pub fn clean_start(mut self, clean: bool) -> Options {
        self.clean_start = clean;
        self
    }

    /// 5.0 Session Expiry Interval in seconds (0, the default, ends the session
    /// with the connection; `u32::MAX` never expires it).
    pub fn session_expiry(mut self, seconds: u32) -> Options {
        self.properties.session_expiry_interval = Some(seconds);
        self
    }

    /// The Will Message.
    pub fn will(mut self, will: LastWill) -> Options {
        self.will = Some(will);
        self
    }

    /// 5.0 Receive Maximum: QoS 1/2 messages the server may have in flight to us (1..=65535).
    pub fn receive_maximum(mut self, n: u16) -> Options {
        self.properties.receive_maximum = Some(n);
        self
    }

    /// 5.0 Maximum Packet Size we accept; larger packets close the connection with 0x95.
    pub fn maximum_packet_size(mut self, bytes: u32) -> Options {
        self.properties.maximum_packet_size = Some(bytes);
        self
    }

    /// 5.0 Topic Alias Maximum we accept from the server (default 0: none).
    pub fn topic_alias_maximum(mut self, n: u16) -> Options {
        self.properties.topic_alias_maximum = Some(n);
        self
    }

    /// 5.0 Request Response Information.
    pub fn request_response_information(mut self, request: bool) -> Options {
        self.properties.request_response_information = Some(request as u8);
        self
    }

    /// 5.0 Request Problem Information (default true; false forbids the server to
    /// send Reason Strings and User Properties on acknowledgements).
    pub fn request_problem_information(mut self, request: bool) -> Options {
        self.properties.request_problem_information = Some(request as u8);
        self
    }

    /// 5.0 User Property of CONNECT (repeatable).
    pub fn user_property(mut self, name: impl Into<ByteString>, value: impl Into<ByteString>) -> Options {
        self.properties.user_properties.push((name.into(), value.into()));
        self
    }

    /// Time allowed to open the transport and then to receive CONNACK (default 10 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Options {
        self.connect_timeout = timeout;
        self
    }

    /// Reconnection policy ([`Reconnect::default`]: on, 0.5 s doubling to 30 s, with jitter).
    pub fn reconnect(mut self, reconnect: Reconnect) -> Options {
        self.reconnect = reconnect;
        self
    }

    /// Most publishes waiting to be sent (offline, or the server's Receive Maximum
    /// reached); beyond it `publish` waits for room.
    pub fn max_queued(mut self, n: usize) -> Options {
        self.max_queued = n;
        self
    }

    /// Most QoS 1/2 messages in flight, below the server's Receive Maximum.
    pub fn max_inflight(mut self, n: u16) -> Options {
        self.max_inflight = n;
        self
    }

    /// Use topic aliases automatically (5.0, up to the server's Topic Alias Maximum).
    pub fn auto_topic_alias(mut self, on: bool) -> Options {
        self.topic_aliases = on;
        self
    }

    /// Acknowledge incoming QoS 1/2 messages only when [`crate::Client::ack`] is called
    /// for them (default off: PUBACK or PUBREC as each arrives). The server keeps a message
    /// until then, and sends it again after a reconnection: a program that stores what it
    /// receives acknowledges once it is stored, and loses nothing if it crashes before.
    pub fn manual_acks(mut self, on: bool) -> Options {
        self.manual_acks = on;
        self
    }

    /// MQTT 3.1 / 3.1.1: announce a bridge, with the top bit of the protocol level set
    /// (0x83 / 0x84, Mosquitto's `try_private`). A server that knows the convention (Tern,
    /// Mosquitto) does not send the client back what it published and keeps RETAIN as
    /// published; one that does not refuses the connection with 0x01 Unacceptable protocol
    /// version. Ignored for 5.0, which has No Local and Retain As Published.
    pub fn bridge_mode(mut self, on: bool) -> Options {
        self.bridge_mode = on;
        self
    }

    /// Events buffered for the application; when full, the socket is not read
    /// until the application catches up (default 64).
    pub fn event_capacity(mut self, n: usize) -> Options {
        self.event_capacity = n;
        self
    }

    /// Use a custom transport instead of the one the URL's scheme selects (an
    /// in-memory pipe, a proxy...).
    pub fn connector(mut self, connector: impl Connector) -> Options {
        self.connector = Some(Arc::new(connector));
        self
    }

    /// TLS settings for `mqtts://` and `wss://`: CA certificates, client certificate,
    /// server name (SNI), a certificate to accept for tests.
    pub fn tls(mut self, tls: TlsOptions) -> Options {
        self.tls = Some(tls);
        self
    }

    /// Authenticate with SCRAM-SHA-256 (MQTT 5.0 enhanced authentication, method
    /// `SCRAM-SHA-256`): the password is never sent, and the server must prove it
    /// knows it too, or the connection is closed. Tern brokers offer it for the
    /// users of their password file.
    pub fn scram_sha256(mut self, username: impl Into<String>, password: impl Into<String>) -> Options {
        self.scram = Some((username.into(), password.into()));
        self
    }

    /// The connector for `endpoint`: the custom one, or the scheme's.
    pub(crate) fn connector_for(&self, endpoint: &Endpoint) -> Result<Arc<dyn Connector>, ClientError> {
        if let Some(c) = &self.connector {
            return Ok(c.clone());
        }
        let tls = self.tls.clone().unwrap_or_default();
        Ok(match endpoint.scheme {
            Scheme::Mqtt => {
                if self.tls.is_some() {
                    return Err(ClientError::InvalidOption {
                        option: "tls",
                        reason: "TLS settings need an mqtts:// or wss:// URL".into(),
                    });
                }
                Arc::new(TcpConnector)
            }
            Scheme::Mqtts => Arc::new(TlsConnector::new(&tls)?),
            Scheme::Ws => Arc::new(WsConnector::plain()),
            Scheme::Wss => Arc::new(WsConnector::tls(&tls)?),
        })
    }

    /// The endpoint of the URL.
    pub(crate) fn endpoint(&self) -> Result<Endpoint, ClientError> {
        match Endpoint::parse(&self.url) {
            Ok((e, _)) => Ok(e),
            Err(UrlError::UnknownScheme) => Err(ClientError::InvalidUrl {
                url: self.url.clone(),
                reason: "unknown scheme; use mqtt://, mqtts://, ws:// or wss://",
            }),
            Err(UrlError::Invalid(reason)) => Err(ClientError::InvalidUrl {
                url: self.url.clone(),
                reason,
            }),
        }
    }

    /// Check everything and build the session's configuration.
    pub(crate) fn to_config(&self, endpoint: &Endpoint) -> Result<ClientConfig, ClientError> {
        fn bad(option: &'static str, reason: impl Into<String>) -> Result<ClientConfig, ClientError> {
            Err(ClientError::InvalidOption {
                option,
                reason: reason.into(),
            })
        }
        let v = self.version;
        if !matches!(v, ProtocolVersion::V3_1_1 | ProtocolVersion::V5) {
            return bad("version", "the client speaks MQTT 3.1.1 and 5.0");
        }
        if self.client_id.len() > usize::from(u16::MAX) {
            return bad("client_id", "longer than 65,535 bytes");
        }
        if v == ProtocolVersion::V3_1_1 && self.client_id.is_empty() && !self.clean_start {
            return bad(
                "client_id",
                "MQTT 3.1.1 needs a client id when clean_start is false ([MQTT-3.1.3-7])",
            );
        }
        let keep_alive = self.keep_alive.as_secs();
        if keep_alive > u64::from(u16::MAX) {
            return bad("keep_alive", "at most 65,535 seconds");
        }
        if !v.is_v5() {
            let v5_only = [
                (
                    "session_expiry",
                    self.properties.session_expiry_interval.is_some(),
                ),
                ("receive_maximum", self.properties.receive_maximum.is_some()),
                (
                    "maximum_packet_size",
                    self.properties.maximum_packet_size.is_some(),
                ),
                (
                    "topic_alias_maximum",
                    self.properties.topic_alias_maximum.is_some(),
                ),
                (
                    "request_response_information",
                    self.properties.request_response_information.is_some(),
                ),
                (
                    "request_problem_information",
                    self.properties.request_problem_information.is_some(),
                ),
                ("user_property", !self.properties.user_properties.is_empty()),
                (
                    "will",
                    self.will.as_ref().is_some_and(|w| !w.will.properties.is_empty()),
                ),
            ];
            if let Some((name, _)) = v5_only.iter().find(|(_, set)| *set) {
                return bad(name, "is an MQTT 5.0 feature; use .version(ProtocolVersion::V5)");
            }
        }
        if self.scram.is_some() && !v.is_v5() {
            return bad(
                "scram_sha256",
                "enhanced authentication is MQTT 5.0 only; use .version(ProtocolVersion::V5)",
            );
        }
        if self.properties.receive_maximum == Some(0) {
            return bad("receive_maximum", "must be between 1 and 65,535");
        }
        if self.properties.maximum_packet_size == Some(0) {
            return bad("maximum_packet_size", "must be at least 1");
        }
        if self.max_queued == 0 {
            return bad("max_queued", "must be at least 1");
        }
        if self.max_inflight == 0 {
            return bad("max_inflight", "must be at least 1");
        }
        if self.event_capacity == 0 {
            return bad("event_capacity", "must be at least 1");
        }
        if self.connect_timeout.is_zero() {
            return bad("connect_timeout", "must be more than zero");
        }
        if let Some(w) = &self.will {
            if let Err(e) = tern_proto::topic::validate_topic_name(&w.will.topic) {
                return bad("will", format!("invalid will topic: {e}"));
            }
        }
        let mut connect = Connect::new(v, self.client_id.as_str());
        connect.keep_alive = keep_alive as u16;
        connect.clean_start = self.clean_start;
        connect.will = self.will.as_ref().map(|w| w.will.clone());
        connect.username = self
            .username
            .clone()
            .or_else(|| endpoint.username.clone())
            .map(ByteString::from);
        connect.password = self
            .password
            .clone()
            .or_else(|| endpoint.password.clone().map(Bytes::from));
        if !v.is_v5() && connect.password.is_some() && connect.username.is_none() {
            return bad("credentials", "MQTT 3.1.1 needs a user name with a password");
        }
        connect.properties = self.properties.clone();
        connect.bridge = self.bridge_mode && !v.is_v5();
        let mut config = ClientConfig::new(connect);
        config.connect_timeout = self.connect_timeout;
        config.max_queued = self.max_queued;
        config.max_inflight = self.max_inflight;
        config.topic_aliases = self.topic_aliases && v.is_v5();
        config.manual_acks = self.manual_acks;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(o: Options) -> String {
        let e = o.endpoint().and_then(|e| o.to_config(&e)).unwrap_err();
        e.to_string()
    }

    #[test]
    fn bad_options_name_the_option() {
        assert!(err(Options::new("mqtt://h").receive_maximum(0)).contains("`receive_maximum`"));
        assert!(err(Options::new("mqtt://h")
            .version(ProtocolVersion::V3_1_1)
            .session_expiry(5))
        .contains("`session_expiry`"));
        assert!(err(Options::new("mqtt://h").will(LastWill::new("a/#", "x"))).contains("`will`"));
        assert!(err(Options::new("gopher://h")).contains("unknown scheme"));
        assert!(err(Options::new("mqtt://h:port")).contains("port"));
    }

    #[test]
    fn builds_the_connect() {
        let o = Options::new("mqtt://u:p@localhost:1884")
            .client_id("c")
            .keep_alive(Duration::from_secs(5))
            .session_expiry(60)
            .will(LastWill::new("w", "gone").qos(QoS::AtLeastOnce).delay(3));
        let e = o.endpoint().unwrap();
        let c = o.to_config(&e).unwrap();
        assert_eq!(c.connect.keep_alive, 5);
        assert_eq!(c.connect.username.as_deref(), Some("u"));
        assert_eq!(c.connect.properties.session_expiry_interval, Some(60));
        let w = c.connect.will.unwrap();
        assert_eq!(
            (w.qos, w.properties.will_delay_interval),
            (QoS::AtLeastOnce, Some(3))
        );
    }
}
