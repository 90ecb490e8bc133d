//! The client's settings and the limits the server announced in CONNACK.

use std::time::Duration;

use crate::codec::{ConnAckProperties, MAX_PACKET_SIZE};
use crate::{Connect, QoS};

/// Settings of a [`super::ClientSession`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ClientConfig {
    /// The CONNECT to send: protocol version, client identifier, keep-alive,
    /// clean start, will, credentials and 5.0 properties. Clean Start is used
    /// as given on the first connection only (see [`super::ClientSession::start_connect`]).
    pub connect: Connect,
    /// How long to wait for CONNACK after CONNECT (default 10 s).
    pub connect_timeout: Duration,
    /// Most QoS 1/2 messages in flight, whatever the server allows (default
    /// 65,535; 3.1.1 servers announce no Receive Maximum).
    pub max_inflight: u16,
    /// Most messages waiting to be sent (window full or offline; default 1,000).
    pub max_queued: usize,
    /// Most SUBSCRIBE/UNSUBSCRIBE waiting for an answer (default 64).
    pub max_requests: usize,
    /// Assign topic aliases to outgoing messages, up to the server's Topic
    /// Alias Maximum (5.0; default off).
    pub topic_aliases: bool,
    /// Acknowledge incoming QoS 1/2 messages only when the application calls
    /// [`super::ClientSession::ack`] (default off: PUBACK / PUBREC as each arrives). For a
    /// program that must keep a message somewhere before the server may forget it (a bridge
    /// writing it to its own store).
    pub manual_acks: bool,
}

impl ClientConfig {
    /// Defaults around a CONNECT.
    pub fn new(connect: Connect) -> ClientConfig {
        ClientConfig {
            connect,
            connect_timeout: Duration::from_secs(10),
            max_inflight: u16::MAX,
            max_queued: 1000,
            max_requests: 64,
            topic_aliases: false,
            manual_acks: false,
        }
    }

    /// Our Receive Maximum (absent means 65,535).
    pub(crate) fn receive_maximum(&self) -> u16 {
        self.connect.properties.receive_maximum.unwrap_or(u16::MAX)
    }

    /// Our Topic Alias Maximum (absent means 0).
    pub(crate) fn topic_alias_maximum(&self) -> u16 {
        self.connect.properties.topic_alias_maximum.unwrap_or(0)
    }

    /// The largest packet we accept.
    pub(crate) fn maximum_packet_size(&self) -> u32 {
        self.connect
            .properties
            .maximum_packet_size
            .unwrap_or(MAX_PACKET_SIZE)
    }

    /// Whether we asked the server not to send Reason Strings and User Properties.
    pub(crate) fn no_problem_information(&self) -> bool {
        self.connect.protocol_version.is_v5()
            && self.connect.properties.request_problem_information == Some(0)
    }
}

/// What the server allows, from CONNACK (5.0) or the 3.1.1 defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServerLimits {
    /// Receive Maximum: QoS 1/2 messages we may have in flight.
    pub receive_maximum: u16,
    /// Maximum QoS of PUBLISH we may send.
    pub maximum_qos: QoS,
    /// Whether RETAIN may be set.
    pub retain_available: bool,
    /// Largest packet the server accepts.
    pub maximum_packet_size: u32,
    /// Highest topic alias we may use.
    pub topic_alias_maximum: u16,
    /// Whether subscription identifiers are supported.
    pub subscription_identifiers: bool,
    /// Whether wildcard subscriptions are supported.
    pub wildcard_subscriptions: bool,
    /// Whether shared subscriptions are supported.
    pub shared_subscriptions: bool,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            receive_maximum: u16::MAX,
            maximum_qos: QoS::ExactlyOnce,
            retain_available: true,
            maximum_packet_size: MAX_PACKET_SIZE,
            topic_alias_maximum: 0,
            subscription_identifiers: true,
            wildcard_subscriptions: true,
            shared_subscriptions: true,
        }
    }
}

impl ServerLimits {
    /// The limits a CONNACK announces; absent properties take their defaults.
    pub fn from_connack(p: &ConnAckProperties) -> ServerLimits {
        ServerLimits {
            receive_maximum: p.receive_maximum.unwrap_or(u16::MAX),
            maximum_qos: match p.maximum_qos {
                Some(0) => QoS::AtMostOnce,
                Some(1) => QoS::AtLeastOnce,
                _ => QoS::ExactlyOnce,
            },
            retain_available: p.retain_available != Some(0),
            maximum_packet_size: p.maximum_packet_size.unwrap_or(MAX_PACKET_SIZE),
            topic_alias_maximum: p.topic_alias_maximum.unwrap_or(0),
            subscription_identifiers: p.subscription_identifier_available != Some(0),
            wildcard_subscriptions: p.wildcard_subscription_available != Some(0),
            shared_subscriptions: p.shared_subscription_available != Some(0),
        }
    }
}
