//! The client's error type.

use tern_proto::session::{CloseReason, PublishError, RequestError};
use tern_proto::{ByteString, ReasonCode};

/// Everything that can go wrong with a [`crate::Client`] call.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// An option has a value that cannot be used; `option` names it.
    #[error("invalid option `{option}`: {reason}")]
    InvalidOption {
        /// The option's name (the builder method).
        option: &'static str,
        /// What is wrong and how to fix it.
        reason: String,
    },
    /// The server URL cannot be parsed.
    #[error("invalid server URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL given.
        url: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The transport could not be opened.
    #[error("cannot connect to {addr}: {source}")]
    Transport {
        /// The address tried.
        addr: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The server refused the connection (CONNACK reason code 0x80 or above).
    #[error("the server refused the connection: {reason_code}{}", reason_string.as_ref().map(|s| format!(" ({s})")).unwrap_or_default())]
    Refused {
        /// CONNACK reason code (3.1.1 return codes are mapped to 5.0 codes).
        reason_code: ReasonCode,
        /// The Reason String, if the server sent one.
        reason_string: Option<ByteString>,
    },
    /// An operation did not finish in time; names which.
    #[error("timed out: {0}")]
    Timeout(&'static str),
    /// The connection ended while connecting (for example a protocol violation
    /// by the server).
    #[error("{0}")]
    ConnectionClosed(Box<CloseReason>),
    /// A publish failed (refused by the server, invalid, above a server limit...).
    #[error(transparent)]
    Publish(#[from] PublishError),
    /// A subscribe or unsubscribe failed before the server answered it.
    #[error(transparent)]
    Request(#[from] RequestError),
    /// The server refused a subscription.
    #[error("subscription to {filter:?} refused: {reason_code}")]
    SubscribeRejected {
        /// The filter.
        filter: ByteString,
        /// The SUBACK reason code.
        reason_code: ReasonCode,
    },
    /// The server refused to unsubscribe (5.0).
    #[error("unsubscribe from {filter:?} refused: {reason_code}")]
    UnsubscribeRejected {
        /// The filter.
        filter: ByteString,
        /// The UNSUBACK reason code.
        reason_code: ReasonCode,
    },
    /// [`crate::Client::respond`] was given a message without a Response Topic.
    #[error("the message has no response topic: it is not a request")]
    NotARequest,
    /// The client was disconnected or its task ended.
    #[error("the client is closed")]
    Closed,
}

impl ClientError {
    pub(crate) fn from_close(reason: CloseReason) -> ClientError {
        match reason {
            CloseReason::Refused(ack) => ClientError::Refused {
                reason_code: ack.reason_code,
                reason_string: ack.properties.reason_string,
            },
            CloseReason::ConnectTimeout => ClientError::Timeout("no CONNACK within the connect timeout"),
            other => ClientError::ConnectionClosed(Box::new(other)),
        }
    }
}
