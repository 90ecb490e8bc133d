//! A blocking wrapper for programs without an async runtime.
//!
//! It owns a small tokio runtime (one worker thread) that drives the
//! connection; each call blocks the calling thread until it completes. Do not
//! call it from inside an async runtime: use [`crate::Client`] there.
//!
//! ```no_run
//! use tern_client::blocking::Client;
//! use tern_client::{Event, Options, QoS};
//!
//! let (client, mut events) = Client::connect(Options::new("mqtt://127.0.0.1:1883"))?;
//! client.subscribe("sensors/#", QoS::AtLeastOnce)?;
//! client.publish("sensors/room1", "22.5", QoS::AtLeastOnce)?;
//! while let Some(event) = events.recv() {
//!     if let Event::Message(m) = event {
//!         println!("{} {:?}", m.topic, m.payload);
//!         break;
//!     }
//! }
//! client.disconnect()?;
//! # Ok::<(), tern_client::ClientError>(())
//! ```

use std::sync::Arc;
use std::time::Duration;

use tern_proto::session::PublishOutcome;
use tern_proto::{ByteString, Bytes, QoS, SubAck};
use tokio::runtime::Runtime;

use crate::{ClientError, Event, Message, Options, PublishOptions, Subscription};

/// A blocking [`crate::Client`].
#[derive(Debug, Clone)]
pub struct Client {
    inner: crate::Client,
    rt: Arc<Runtime>,
}

/// The blocking event stream.
#[derive(Debug)]
pub struct Events {
    inner: crate::Events,
    rt: Arc<Runtime>,
}

impl Client {
    /// Connect (see [`crate::Client::connect`]).
    pub fn connect(options: Options) -> Result<(Client, Events), ClientError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("tern-client")
            .enable_all()
            .build()
            .map_err(|source| ClientError::Transport {
                addr: "tokio runtime".into(),
                source,
            })?;
        let rt = Arc::new(rt);
        let (inner, events) = rt.block_on(crate::Client::connect(options))?;
        Ok((
            Client {
                inner,
                rt: rt.clone(),
            },
            Events { inner: events, rt },
        ))
    }

    /// The async client underneath.
    pub fn as_async(&self) -> &crate::Client {
        &self.inner
    }

    /// See [`crate::Client::publish`].
    pub fn publish(
        &self,
        topic: impl Into<ByteString>,
        payload: impl Into<Bytes>,
        qos: QoS,
    ) -> Result<PublishOutcome, ClientError> {
        self.rt.block_on(self.inner.publish(topic, payload, qos))
    }

    /// See [`crate::Client::publish_with`].
    pub fn publish_with(
        &self,
        topic: impl Into<ByteString>,
        payload: impl Into<Bytes>,
        options: PublishOptions,
    ) -> Result<PublishOutcome, ClientError> {
        self.rt.block_on(self.inner.publish_with(topic, payload, options))
    }

    /// See [`crate::Client::subscribe`].
    pub fn subscribe(&self, filter: impl Into<ByteString>, qos: QoS) -> Result<QoS, ClientError> {
        self.rt.block_on(self.inner.subscribe(filter, qos))
    }

    /// See [`crate::Client::subscribe_with`].
    pub fn subscribe_with(&self, subscription: Subscription) -> Result<SubAck, ClientError> {
        self.rt.block_on(self.inner.subscribe_with(subscription))
    }

    /// See [`crate::Client::unsubscribe`].
    pub fn unsubscribe(&self, filter: impl Into<ByteString>) -> Result<(), ClientError> {
        self.rt.block_on(self.inner.unsubscribe(filter))
    }

    /// See [`crate::Client::request`].
    pub fn request(
        &self,
        topic: impl Into<ByteString>,
        payload: impl Into<Bytes>,
        timeout: Duration,
    ) -> Result<Message, ClientError> {
        self.rt.block_on(self.inner.request(topic, payload, timeout))
    }

    /// See [`crate::Client::disconnect`].
    pub fn disconnect(&self) -> Result<(), ClientError> {
        self.rt.block_on(self.inner.disconnect())
    }
}

impl Events {
    /// The next event, blocking; `None` once the client stopped.
    pub fn recv(&mut self) -> Option<Event> {
        self.rt.block_on(self.inner.recv())
    }

    /// The next event, waiting at most `timeout`.
    pub fn recv_timeout(&mut self, timeout: Duration) -> Option<Event> {
        self.rt.block_on(async {
            tokio::time::timeout(timeout, self.inner.recv())
                .await
                .ok()
                .flatten()
        })
    }
}
