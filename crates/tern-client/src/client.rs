//! [`Client`]: a cheap, cloneable handle whose calls resolve when the server
//! has acknowledged them as the protocol promises.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tern_proto::codec::{PublishProperties, SubscribeProperties, UnsubscribeProperties};
use tern_proto::session::PublishOutcome;
use tern_proto::{
    ByteString, Bytes, Disconnect, PacketId, ProtocolVersion, Publish, QoS, ReasonCode, RetainHandling,
    SubAck, SubscriptionOptions, UnsubAck,
};
use tokio::sync::{mpsc, oneshot, watch};

use crate::command::{ControlCommand, PublishCommand, Reply, RequestCommand};
use crate::driver::Driver;
use crate::{ClientError, Events, Options};

/// Options of one publish beyond topic, payload and QoS.
#[derive(Debug, Clone, Default)]
pub struct PublishOptions {
    pub(crate) qos: QoS,
    pub(crate) retain: bool,
    pub(crate) properties: PublishProperties,
    pub(crate) relay: Option<(PacketId, bool)>,
}

impl PublishOptions {
    /// QoS 0, not retained, no properties.
    pub fn new() -> PublishOptions {
        PublishOptions::default()
    }

    /// Send a QoS 1/2 message under this packet identifier and DUP flag rather than one
    /// the client picks: for a program relaying messages it keeps in its own store, which
    /// sends a message again after its own restart under the identifier it used before, so
    /// that the server recognises a QoS 2 message it already has (v5 [MQTT-4.3.3-10]). The
    /// message waits while the identifier is held by another packet of this client. A QoS 2
    /// message sent so resolves at PUBREC: the client sends PUBREL only when
    /// [`Client::release`] is called for it.
    pub fn packet_id(mut self, id: PacketId, dup: bool) -> PublishOptions {
        self.relay = Some((id, dup));
        self
    }

    /// Quality of service.
    pub fn qos(mut self, qos: QoS) -> PublishOptions {
        self.qos = qos;
        self
    }

    /// RETAIN flag.
    pub fn retain(mut self, retain: bool) -> PublishOptions {
        self.retain = retain;
        self
    }

    /// 5.0 Message Expiry Interval in seconds.
    pub fn message_expiry(mut self, seconds: u32) -> PublishOptions {
        self.properties.message_expiry_interval = Some(seconds);
        self
    }

    /// 5.0 Content Type.
    pub fn content_type(mut self, content_type: impl Into<ByteString>) -> PublishOptions {
        self.properties.content_type = Some(content_type.into());
        self
    }

    /// 5.0 Payload Format Indicator: `true` for UTF-8 text, `false` for bytes.
    pub fn utf8_payload(mut self, utf8: bool) -> PublishOptions {
        self.properties.payload_format_indicator = Some(utf8 as u8);
        self
    }

    /// 5.0 Response Topic.
    pub fn response_topic(mut self, topic: impl Into<ByteString>) -> PublishOptions {
        self.properties.response_topic = Some(topic.into());
        self
    }

    /// 5.0 Correlation Data.
    pub fn correlation_data(mut self, data: impl Into<Bytes>) -> PublishOptions {
        self.properties.correlation_data = Some(data.into());
        self
    }

    /// 5.0 User Property (repeatable, order kept).
    pub fn user_property(
        mut self,
        name: impl Into<ByteString>,
        value: impl Into<ByteString>,
    ) -> PublishOptions {
        self.properties.user_properties.push((name.into(), value.into()));
        self
    }
}

/// One SUBSCRIBE: filters with their options, and 5.0 properties.
#[derive(Debug, Clone, Default)]
pub struct Subscription {
    pub(crate) filters: Vec<(ByteString, SubscriptionOptions)>,
    pub(crate) properties: SubscribeProperties,
}

impl Subscription {
    /// A subscription to `filter` with maximum QoS `qos`.
    pub fn new(filter: impl Into<ByteString>, qos: QoS) -> Subscription {
        Subscription::default().filter(filter, SubscriptionOptions::qos(qos))
    }

    /// Add a filter with its options.
    pub fn filter(mut self, filter: impl Into<ByteString>, options: SubscriptionOptions) -> Subscription {
        self.filters.push((filter.into(), options));
        self
    }

    fn last(&mut self) -> Option<&mut SubscriptionOptions> {
        self.filters.last_mut().map(|(_, o)| o)
    }

    /// 5.0 No Local for the last filter added: do not receive our own messages.
    pub fn no_local(mut self, on: bool) -> Subscription {
        if let Some(o) = self.last() {
            o.no_local = on;
        }
        self
    }

    /// 5.0 Retain As Published for the last filter added.
    pub fn retain_as_published(mut self, on: bool) -> Subscription {
        if let Some(o) = self.last() {
            o.retain_as_published = on;
        }
        self
    }

    /// 5.0 Retain Handling for the last filter added.
    pub fn retain_handling(mut self, handling: RetainHandling) -> Subscription {
        if let Some(o) = self.last() {
            o.retain_handling = handling;
        }
        self
    }

    /// 5.0 Subscription Identifier (1..=268,435,455), for all filters of this SUBSCRIBE.
    pub fn id(mut self, id: u32) -> Subscription {
        self.properties.subscription_identifier = Some(id);
        self
    }

    /// 5.0 User Property.
    pub fn user_property(
        mut self,
        name: impl Into<ByteString>,
        value: impl Into<ByteString>,
    ) -> Subscription {
        self.properties.user_properties.push((name.into(), value.into()));
        self
    }
}

/// A publish queued by [`Client::start_publish`], not yet acknowledged as its QoS promises.
#[derive(Debug)]
pub struct PendingPublish {
    rx: oneshot::Receiver<Result<PublishOutcome, ClientError>>,
}

impl PendingPublish {
    /// Wait until the message is delivered as its QoS promises (see [`Client::publish`]).
    pub async fn outcome(self) -> Result<PublishOutcome, ClientError> {
        self.rx.await.map_err(|_| ClientError::Closed)?
    }
}

/// The channels to the driver task, shared by all clones.
#[derive(Debug)]
struct Inner {
    publish: mpsc::Sender<PublishCommand>,
    request: mpsc::Sender<RequestCommand>,
    control: mpsc::Sender<ControlCommand>,
    version: ProtocolVersion,
    client_id: watch::Receiver<ByteString>,
    inbox: tokio::sync::OnceCell<ByteString>,
    correlation: AtomicU64,
}

/// A connected MQTT client. Cheap to clone; every clone drives the same
/// connection. The connection closes when [`Client::disconnect`] is called or
/// when the last clone is dropped.
///
/// Each call waits for what its QoS promises: [`Client::publish`] with QoS 0
/// until the message is handed to the transport, QoS 1 until PUBACK, QoS 2 until
/// PUBCOMP; [`Client::subscribe`] until SUBACK. While offline, calls are queued
/// (bounded) and complete after the reconnection.
#[derive(Debug, Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl Client {
    /// Connect to the server and return the client and its event stream once
    /// the server accepted the connection (CONNACK Success). The first
    /// connection is not retried: its failure is returned. Must be called
    /// within a tokio runtime: the connection is driven by a spawned task.
    pub async fn connect(options: Options) -> Result<(Client, Events), ClientError> {
        let endpoint = options.endpoint()?;
        let config = options.to_config(&endpoint)?;
        let connector = options.connector_for(&endpoint)?;
        let version = config.connect.protocol_version;
        let (publish_tx, publish_rx) = mpsc::channel(16);
        let (request_tx, request_rx) = mpsc::channel(16);
        let (control_tx, control_rx) = mpsc::channel(4);
        let (events_tx, events_rx) = mpsc::channel(options.event_capacity);
        let (id_tx, id_rx) = watch::channel(config.connect.client_id.clone());
        let (first_tx, first_rx) = oneshot::channel();
        let driver = Driver::new(
            &options,
            connector,
            endpoint,
            config,
            crate::driver::Channels {
                publish: publish_rx,
                request: request_rx,
                control: control_rx,
                events: events_tx,
                client_id: id_tx,
            },
        );
        tokio::spawn(driver.run(first_tx));
        first_rx.await.map_err(|_| ClientError::Closed)??;
        let client = Client {
            inner: Arc::new(Inner {
                publish: publish_tx,
                request: request_tx,
                control: control_tx,
                version,
                client_id: id_rx,
                inbox: tokio::sync::OnceCell::new(),
                correlation: AtomicU64::new(0),
            }),
        };
        Ok((client, Events { rx: events_rx }))
    }

    /// The protocol version in use.
    pub fn version(&self) -> ProtocolVersion {
        self.inner.version
    }

    /// The client identifier: the configured one, or the one the server assigned (5.0).
    pub fn client_id(&self) -> ByteString {
        self.inner.client_id.borrow().clone()
    }

    async fn call<T, C>(tx: &mpsc::Sender<C>, make: impl FnOnce(Reply<T>) -> C) -> Result<T, ClientError> {
        let (reply, rx) = oneshot::channel();
        tx.send(make(reply)).await.map_err(|_| ClientError::Closed)?;
        rx.await.map_err(|_| ClientError::Closed)?
    }

    /// Publish `payload` on `topic` with `qos`; resolves when the message is
    /// delivered as the QoS promises (see the type's documentation), with the
    /// server's 5.0 reason code and properties.
    pub async fn publish(
        &self,
        topic: impl Into<ByteString>,
        payload: impl Into<Bytes>,
        qos: QoS,
    ) -> Result<PublishOutcome, ClientError> {
        self.publish_with(topic, payload, PublishOptions::new().qos(qos))
            .await
    }

    /// Publish with RETAIN and 5.0 properties.
    pub async fn publish_with(
        &self,
        topic: impl Into<ByteString>,
        payload: impl Into<Bytes>,
        options: PublishOptions,
    ) -> Result<PublishOutcome, ClientError> {
        let mut publish = Publish::new(topic, payload);
        publish.qos = options.qos;
        publish.retain = options.retain;
        publish.properties = options.properties;
        if let Some((id, dup)) = options.relay {
            publish.packet_id = Some(id);
            publish.dup = dup;
        }
        let relay = options.relay.is_some();
        Client::call(&self.inner.publish, |reply| PublishCommand {
            publish,
            reply,
            relay,
        })
        .await
    }

    /// Hand a publish to the client and return once it is queued, in call order, without
    /// waiting for the server: await [`PendingPublish::outcome`] for that. Successive calls
    /// from one task keep their order on the wire, and several can be in flight at once
    /// (a bridge forwarding a stream). Waits while the client's queue is full.
    pub async fn start_publish(
        &self,
        topic: impl Into<ByteString>,
        payload: impl Into<Bytes>,
        options: PublishOptions,
    ) -> Result<PendingPublish, ClientError> {
        let mut publish = Publish::new(topic, payload);
        publish.qos = options.qos;
        publish.retain = options.retain;
        publish.properties = options.properties;
        if let Some((id, dup)) = options.relay {
            publish.packet_id = Some(id);
            publish.dup = dup;
        }
        let relay = options.relay.is_some();
        let (reply, rx) = oneshot::channel();
        self.inner
            .publish
            .send(PublishCommand {
                publish,
                reply,
                relay,
            })
            .await
            .map_err(|_| ClientError::Closed)?;
        Ok(PendingPublish { rx })
    }

    /// Send PUBREL for the QoS 2 message sent with [`PublishOptions::packet_id`] under `id`
    /// whose PUBREC came; the returned publish resolves at PUBCOMP. An identifier the client
    /// does not know (the program restarted after it recorded the PUBREC) is released too;
    /// a 5.0 server that has completed it already answers 0x92 Packet Identifier not found
    /// ([`ClientError::Publish`] with [`tern_proto::session::PublishError::Rejected`]).
    ///
    /// A release reaches the session before the publishes its task starts after it, and is
    /// never held back by a full queue. A relaying program resuming after a restart should
    /// hand over its releases and resends in the order the messages were first sent: an
    /// identifier it releases takes a place in the window until PUBCOMP, as it does in the
    /// server's Receive Maximum, so the messages after it stay within the server's quota.
    pub async fn release(&self, id: PacketId) -> Result<PendingPublish, ClientError> {
        let (reply, rx) = oneshot::channel();
        self.inner
            .control
            .send(ControlCommand::Release { id, reply })
            .await
            .map_err(|_| ClientError::Closed)?;
        Ok(PendingPublish { rx })
    }

    /// With [`Options::manual_acks`]: acknowledge `message` (PUBACK for QoS 1, PUBREC for
    /// QoS 2; nothing for QoS 0). Call in the order the messages came.
    pub async fn ack(&self, message: &crate::Message) -> Result<(), ClientError> {
        let Some(id) = message.packet_id else {
            return Ok(());
        };
        self.inner
            .control
            .send(ControlCommand::Ack { id, qos: message.qos })
            .await
            .map_err(|_| ClientError::Closed)
    }

    /// Subscribe to one filter; returns the QoS the server granted, or
    /// [`ClientError::SubscribeRejected`] with its reason code.
    pub async fn subscribe(&self, filter: impl Into<ByteString>, qos: QoS) -> Result<QoS, ClientError> {
        let filter = filter.into();
        let ack = self
            .subscribe_with(Subscription::new(filter.clone(), qos))
            .await?;
        match ack.reason_codes.first().copied() {
            Some(ReasonCode::Success) => Ok(QoS::AtMostOnce),
            Some(ReasonCode::GrantedQoS1) => Ok(QoS::AtLeastOnce),
            Some(ReasonCode::GrantedQoS2) => Ok(QoS::ExactlyOnce),
            Some(reason_code) => Err(ClientError::SubscribeRejected { filter, reason_code }),
            None => Err(ClientError::Closed),
        }
    }

    /// Subscribe with options; the SUBACK carries one reason code per filter, in order.
    pub async fn subscribe_with(&self, subscription: Subscription) -> Result<SubAck, ClientError> {
        let Subscription { filters, properties } = subscription;
        Client::call(&self.inner.request, |reply| RequestCommand::Subscribe {
            filters,
            properties,
            reply,
        })
        .await
    }

    /// Unsubscribe from one filter ([`ClientError::UnsubscribeRejected`] if a 5.0
    /// server refuses; "No subscription existed" is not an error).
    pub async fn unsubscribe(&self, filter: impl Into<ByteString>) -> Result<(), ClientError> {
        let filter = filter.into();
        let ack = self.unsubscribe_many(vec![filter.clone()]).await?;
        match ack.reason_codes.first() {
            Some(&reason_code) if reason_code.is_error() => {
                Err(ClientError::UnsubscribeRejected { filter, reason_code })
            }
            _ => Ok(()),
        }
    }

    /// Unsubscribe from several filters; the UNSUBACK carries one reason code per filter (5.0).
    pub async fn unsubscribe_many(&self, filters: Vec<ByteString>) -> Result<UnsubAck, ClientError> {
        Client::call(&self.inner.request, |reply| RequestCommand::Unsubscribe {
            filters,
            properties: UnsubscribeProperties::default(),
            reply,
        })
        .await
    }

    /// Disconnect normally (the server discards the will) and stop the client.
    /// Queued and unacknowledged messages fail with [`ClientError::Closed`].
    pub async fn disconnect(&self) -> Result<(), ClientError> {
        self.disconnect_with(Disconnect::default()).await
    }

    /// Disconnect with a 5.0 reason code and properties (for example
    /// [`ReasonCode::DisconnectWithWill`], or a new Session Expiry Interval).
    pub async fn disconnect_with(&self, disconnect: Disconnect) -> Result<(), ClientError> {
        let (reply, rx) = oneshot::channel();
        if self
            .inner
            .control
            .send(ControlCommand::Disconnect { disconnect, reply })
            .await
            .is_err()
        {
            return Ok(());
        }
        let _ = rx.await;
        Ok(())
    }

    /// The next correlation data for [`Client::request`].
    pub(crate) fn next_correlation(&self) -> Bytes {
        let n = self.inner.correlation.fetch_add(1, Ordering::Relaxed);
        Bytes::from(n.to_be_bytes().to_vec())
    }

    pub(crate) fn inbox(&self) -> &tokio::sync::OnceCell<ByteString> {
        &self.inner.inbox
    }

    pub(crate) async fn expect_response(
        &self,
        topic: ByteString,
        correlation: Bytes,
    ) -> Result<oneshot::Receiver<crate::Message>, ClientError> {
        let (reply, rx) = oneshot::channel();
        self.inner
            .control
            .send(ControlCommand::ExpectResponse {
                topic,
                correlation,
                reply,
            })
            .await
            .map_err(|_| ClientError::Closed)?;
        Ok(rx)
    }
}
