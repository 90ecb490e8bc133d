//! Commands from [`crate::Client`] handles to the driver task, each with the
//! channel its outcome comes back on.

use tern_proto::codec::{SubscribeProperties, UnsubscribeProperties};
use tern_proto::session::PublishOutcome;
use tern_proto::{
    ByteString, Bytes, Disconnect, PacketId, Publish, QoS, SubAck, SubscriptionOptions, UnsubAck,
};
use tokio::sync::oneshot;

use crate::{ClientError, Message};

/// Where a command's outcome goes.
pub(crate) type Reply<T> = oneshot::Sender<Result<T, ClientError>>;

/// A publish (its own channel, so that a full window holds back publishes only,
/// [MQTT-3.3.4-8]).
#[derive(Debug)]
pub(crate) struct PublishCommand {
    pub publish: Publish,
    pub reply: Reply<PublishOutcome>,
    /// Sent under its own packet id and DUP (`PublishOptions::packet_id`).
    pub relay: bool,
}

/// SUBSCRIBE / UNSUBSCRIBE.
#[derive(Debug)]
pub(crate) enum RequestCommand {
    Subscribe {
        filters: Vec<(ByteString, SubscriptionOptions)>,
        properties: SubscribeProperties,
        reply: Reply<SubAck>,
    },
    Unsubscribe {
        filters: Vec<ByteString>,
        properties: UnsubscribeProperties,
        reply: Reply<UnsubAck>,
    },
}

/// Commands that must get through even when the other channels are held back.
#[derive(Debug)]
pub(crate) enum ControlCommand {
    Disconnect {
        disconnect: Disconnect,
        reply: oneshot::Sender<()>,
    },
    /// Acknowledge an incoming message (manual acknowledgements).
    Ack { id: PacketId, qos: QoS },
    /// Send PUBREL for a relayed QoS 2 message; `reply` at PUBCOMP.
    Release {
        id: PacketId,
        reply: Reply<PublishOutcome>,
    },
    /// Route the message with this correlation data on `topic` to `reply`.
    ExpectResponse {
        topic: ByteString,
        correlation: Bytes,
        reply: oneshot::Sender<Message>,
    },
}
