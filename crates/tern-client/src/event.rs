//! What the application receives: [`Event`]s through [`Events`], and
//! [`Message`]s among them.

use std::time::Duration;

use tern_proto::codec::PublishProperties;
use tern_proto::session::CloseReason;
use tern_proto::{ByteString, Bytes, ConnAck, PacketId, Publish, QoS, ReasonCode};
use tokio::sync::mpsc;

use crate::ClientError;

/// An application message received from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Message {
    /// Topic name (resolved from a topic alias if the server used one).
    pub topic: ByteString,
    /// Payload.
    pub payload: Bytes,
    /// QoS it was delivered with.
    pub qos: QoS,
    /// RETAIN flag: a retained message sent because of a new subscription (or,
    /// with Retain As Published, as published).
    pub retain: bool,
    /// 5.0 properties: message expiry, content type, payload format, response
    /// topic, correlation data, user properties, subscription identifiers.
    pub properties: PublishProperties,
    /// The packet identifier it came with (QoS 1/2): what [`crate::Client::ack`] answers.
    pub packet_id: Option<PacketId>,
}

impl Message {
    pub(crate) fn from_publish(p: Publish) -> Message {
        Message {
            packet_id: p.packet_id,
            topic: p.topic,
            payload: p.payload,
            qos: p.qos,
            retain: p.retain,
            properties: p.properties,
        }
    }

    /// The payload as UTF-8 text, if it is.
    pub fn payload_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.payload).ok()
    }
}

/// Something that happened to the client.
#[derive(Debug)]
#[non_exhaustive]
pub enum Event {
    /// A connection is established (also after each reconnection).
    Connected {
        /// Whether the server resumed the session.
        session_present: bool,
        /// The server's CONNACK (5.0 properties: limits, assigned client id...).
        connack: ConnAck,
    },
    /// An application message.
    Message(Message),
    /// The connection ended. Unless reconnection is off or the application
    /// disconnected, [`Event::Reconnecting`] follows.
    Disconnected {
        /// Why.
        reason: CloseReason,
    },
    /// A reconnection attempt starts after `delay`.
    Reconnecting {
        /// Attempts since the last successful connection, from 1.
        attempt: u32,
        /// The wait before this attempt.
        delay: Duration,
    },
    /// A reconnection attempt failed before CONNACK.
    ReconnectFailed {
        /// Why.
        error: ClientError,
    },
    /// After a reconnection without a session, a subscription could not be re-established.
    ResubscribeFailed {
        /// The filter.
        filter: ByteString,
        /// The SUBACK reason code.
        reason_code: ReasonCode,
    },
}

/// The stream of [`Event`]s of a client. Bounded: while it is full the client
/// stops reading from the server, so a slow reader slows the server down
/// instead of growing memory. Dropping it discards further events.
#[derive(Debug)]
pub struct Events {
    pub(crate) rx: mpsc::Receiver<Event>,
}

impl Events {
    /// The next event; `None` once the client has stopped and every event was read.
    pub async fn recv(&mut self) -> Option<Event> {
        self.rx.recv().await
    }

    /// The next event if one is ready.
    pub fn try_recv(&mut self) -> Option<Event> {
        self.rx.try_recv().ok()
    }

    /// The next application message, skipping other events; `None` when the client stopped.
    pub async fn next_message(&mut self) -> Option<Message> {
        loop {
            if let Event::Message(m) = self.rx.recv().await? {
                return Some(m);
            }
        }
    }
}
