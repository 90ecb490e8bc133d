//! What the session tells its driver: [`Event`]s, the outcome of each command,
//! and why a connection closed.

use bytestring::ByteString;

use crate::codec::AckProperties;
use crate::topic::TopicError;
use crate::{ConnAck, Disconnect, EncodeError, Publish, QoS, ReasonCode, SubAck, UnsubAck, Violation};

/// Identifies a command (publish, subscribe, unsubscribe) until its outcome
/// is reported by an [`Event`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Token(pub(crate) u64);

impl Token {
    /// The numeric value; unique within one session.
    pub fn get(self) -> u64 {
        self.0
    }
}

/// A publish that completed as its QoS promises: QoS 0 handed to the
/// transport, QoS 1 acknowledged by PUBACK, QoS 2 completed by PUBCOMP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishOutcome {
    /// The reason code of the final acknowledgement (5.0; Success otherwise).
    /// 0x10 No matching subscribers is a success.
    pub reason_code: ReasonCode,
    /// Properties of the final acknowledgement (5.0).
    pub properties: AckProperties,
}

impl Default for PublishOutcome {
    fn default() -> Self {
        PublishOutcome {
            reason_code: ReasonCode::Success,
            properties: AckProperties::default(),
        }
    }
}

/// Why a publish did not complete.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    /// The topic is not a valid topic name ([MQTT-3.3.2-2], [MQTT-4.7.3-1]).
    #[error("invalid topic name: {0}")]
    InvalidTopic(TopicError),
    /// The Response Topic is not a valid topic name ([MQTT-3.3.2-14]).
    #[error("[MQTT-3.3.2-14] invalid response topic: {0}")]
    InvalidResponseTopic(TopicError),
    /// A client may not send a Subscription Identifier ([MQTT-3.3.4-6]).
    #[error("[MQTT-3.3.4-6] a PUBLISH from a client must not carry a subscription identifier")]
    SubscriptionIdentifier,
    /// The QoS is above the server's Maximum QoS ([MQTT-3.2.2-11]).
    #[error("[MQTT-3.2.2-11] QoS {requested:?} is above the server's maximum QoS {maximum:?}")]
    QoSNotSupported {
        /// The QoS asked for.
        requested: QoS,
        /// The server's Maximum QoS.
        maximum: QoS,
    },
    /// RETAIN set but the server has Retain Available 0 ([MQTT-3.2.2-14]).
    #[error("[MQTT-3.2.2-14] the server does not support retained messages")]
    RetainNotSupported,
    /// The packet would exceed the server's Maximum Packet Size ([MQTT-3.2.2-15]).
    #[error(
        "[MQTT-3.2.2-15] the PUBLISH would be {size} bytes, above the server's maximum packet size of {max}"
    )]
    PacketTooLarge {
        /// Encoded size.
        size: usize,
        /// The server's limit.
        max: u32,
    },
    /// The message cannot be encoded for the protocol version (for example
    /// 5.0 properties on a 3.1.1 connection).
    #[error(transparent)]
    Encode(EncodeError),
    /// The server answered PUBACK, PUBREC or PUBCOMP with a failure code.
    #[error("the server refused the message: {reason_code}")]
    Rejected {
        /// The reason code (0x80 or above).
        reason_code: ReasonCode,
        /// Properties of the acknowledgement (Reason String, User Properties).
        properties: AckProperties,
    },
    /// The queue of messages waiting to be sent is full.
    #[error("the outgoing queue is full")]
    QueueFull,
    /// The server lost the session after it had acknowledged the QoS 2 PUBLISH
    /// with PUBREC: the message may or may not have been delivered.
    #[error("the server lost the session after PUBREC; delivery is unknown")]
    SessionLost,
    /// The session ended before the message completed.
    #[error("the session closed before the message was acknowledged")]
    Closed,
    /// [`super::ClientSession::publish_as`] without a packet identifier, or with QoS 0.
    #[error("a relayed publish needs QoS 1 or 2 and its packet identifier")]
    NoPacketId,
    /// [`super::ClientSession::release`] of an identifier whose PUBLISH is still waiting
    /// for PUBREC, or that a SUBSCRIBE or UNSUBSCRIBE holds.
    #[error("packet identifier {0} is not waiting for release")]
    NotReceived(u16),
}

/// Why a subscribe or unsubscribe did not complete.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// No topic filter was given ([MQTT-3.8.3-2], [MQTT-3.10.3-2]).
    #[error("at least one topic filter is required")]
    NoFilters,
    /// A topic filter is not valid (section 4.7.1, 4.8.2).
    #[error("invalid topic filter {filter:?}: {error}")]
    InvalidFilter {
        /// The filter.
        filter: ByteString,
        /// What is wrong with it.
        error: TopicError,
    },
    /// No Local was asked for on a shared subscription, which 5.0 forbids
    /// (v5 [MQTT-3.8.3-4]).
    #[error("No Local cannot be set on the shared subscription {0:?}")]
    NoLocalOnSharedSubscription(ByteString),
    /// The server said Subscription Identifier Available = 0.
    #[error("the server does not support subscription identifiers")]
    SubscriptionIdentifiersNotSupported,
    /// The packet cannot be encoded for the protocol version.
    #[error(transparent)]
    Encode(EncodeError),
    /// The server's answer broke a rule (for example a SUBACK whose number of
    /// reason codes differs from the number of filters, [MQTT-3.8.4-6]); the
    /// connection is closed for it too.
    #[error("protocol violation by the server: {0}")]
    Protocol(Violation),
    /// Too many requests are waiting for an answer.
    #[error("too many requests are waiting for an answer")]
    QueueFull,
    /// The session ended before the server answered.
    #[error("the session closed before the server answered")]
    Closed,
}

/// Why a network connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CloseReason {
    /// The server refused the connection with a CONNACK code of 0x80 or above.
    Refused(ConnAck),
    /// No CONNACK within the connect timeout.
    ConnectTimeout,
    /// No answer to PINGREQ: the connection is considered dead.
    KeepAliveTimeout,
    /// The server sent DISCONNECT.
    ServerDisconnect(Disconnect),
    /// The server broke a rule; we closed (5.0: after sending DISCONNECT with this code).
    ProtocolViolation {
        /// The reason code sent (or that would have been sent, for 3.1.1):
        /// always `violation.reason_code()`.
        reason_code: ReasonCode,
        /// The rule broken; its message cites the statement where one applies.
        violation: Violation,
    },
    /// The transport failed or the server closed it.
    TransportLost,
    /// The application asked to disconnect.
    LocalDisconnect,
}

impl std::fmt::Display for CloseReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CloseReason::Refused(a) => write!(f, "connection refused by the server: {}", a.reason_code),
            CloseReason::ConnectTimeout => f.write_str("no CONNACK within the connect timeout"),
            CloseReason::KeepAliveTimeout => f.write_str("keep-alive timeout: no answer to PINGREQ"),
            CloseReason::ServerDisconnect(d) => write!(f, "the server disconnected: {}", d.reason()),
            CloseReason::ProtocolViolation {
                reason_code,
                violation,
            } => {
                write!(f, "protocol violation by the server ({reason_code}): {violation}")
            }
            CloseReason::TransportLost => f.write_str("connection lost"),
            CloseReason::LocalDisconnect => f.write_str("disconnected by the application"),
        }
    }
}

/// Something the driver must act on, from [`super::ClientSession::poll_event`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Event {
    /// CONNACK with Success: the connection is usable.
    Connected {
        /// Whether the server resumed a session.
        session_present: bool,
        /// The whole CONNACK (5.0 properties: assigned client id, limits...).
        connack: ConnAck,
    },
    /// An application message from the server: topic resolved from its alias,
    /// Topic Alias property removed. QoS 2 messages appear once.
    Message(Publish),
    /// A QoS 2 message sent with [`super::ClientSession::publish_as`] was received by the
    /// server (PUBREC): the session sends PUBREL only when
    /// [`super::ClientSession::release`] is called, and then [`Event::PublishDone`] comes
    /// with the same token at PUBCOMP.
    PublishReceived {
        /// The command's token.
        token: Token,
    },
    /// A publish finished.
    PublishDone {
        /// The command's token.
        token: Token,
        /// Its outcome.
        result: Result<PublishOutcome, PublishError>,
    },
    /// A subscribe finished: one reason code per filter, in order.
    SubscribeDone {
        /// The command's token.
        token: Token,
        /// The SUBACK, or why there is none.
        result: Result<SubAck, RequestError>,
    },
    /// An unsubscribe finished.
    UnsubscribeDone {
        /// The command's token.
        token: Token,
        /// The UNSUBACK, or why there is none.
        result: Result<UnsubAck, RequestError>,
    },
    /// A subscription re-established after the server lost the session was refused.
    ResubscribeFailed {
        /// The filter.
        filter: ByteString,
        /// The SUBACK reason code.
        reason_code: ReasonCode,
    },
    /// The connection ended; the session state is kept for the next one.
    Closed(CloseReason),
}
