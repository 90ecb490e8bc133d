//! # tern-client
//!
//! An MQTT 3.1.1 and 5.0 client for tokio: connect, subscribe and publish in a
//! few lines; every call returns when the server has acknowledged it as the
//! QoS promises; the connection is kept alive and re-established by itself.
//!
//! ```no_run
//! use tern_client::{Client, Event, Options, QoS};
//!
//! # async fn run() -> Result<(), tern_client::ClientError> {
//! let (client, mut events) = Client::connect(
//!     Options::new("mqtt://broker.example.com:1883").client_id("room1").credentials("user", "password"),
//! )
//! .await?;
//! client.subscribe("sensors/temperature/#", QoS::AtLeastOnce).await?;
//! client
//!     .publish("sensors/temperature/room1", r#"{"value": 22.5, "unit": "C"}"#, QoS::AtLeastOnce)
//!     .await?;
//! while let Some(event) = events.recv().await {
//!     match event {
//!         Event::Message(m) => println!("{}: {:?}", m.topic, m.payload_str()),
//!         Event::Disconnected { reason } => println!("disconnected: {reason}"),
//!         _ => {}
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! ## What it does
//! - MQTT 3.1.1 and 5.0 ([`Options::version`]), over TCP (`mqtt://`), TLS
//!   (`mqtts://`, [`transport::TlsOptions`] for CA, client certificate and SNI),
//!   WebSocket (`ws://`) and WebSocket over TLS (`wss://`); the transport is
//!   pluggable ([`transport::Connector`]).
//! - Publishing waits for PUBACK (QoS 1) or PUBCOMP (QoS 2) and returns the 5.0
//!   reason code and properties ([`PublishOutcome`]); failures are typed
//!   ([`ClientError`], [`PublishError`]). At most the server's Receive Maximum
//!   messages are in flight; beyond it, and while offline, messages wait in a
//!   bounded queue and `publish` waits when that is full.
//! - Incoming QoS 1/2 follow the specification; a QoS 2 message is delivered once.
//! - Keep-alive pings; a dead connection is noticed within 1.5 × keep-alive.
//! - Automatic reconnection with exponential backoff and jitter ([`Reconnect`]),
//!   resuming the session: unacknowledged messages are resent with DUP, QoS 2
//!   continues at PUBREL, and subscriptions are made again when the server has
//!   no session. [`Event`]s report each transition.
//! - Events come through a bounded channel: a slow reader slows the reading of
//!   the socket, memory stays bounded.
//! - [`Client::request`] / [`Client::respond`] for 5.0 request/response;
//!   [`blocking`] for programs without an async runtime.
//!
//! ## Layout
//! The protocol — every rule about what to send and when — is the sans-IO
//! [`tern_proto::session::ClientSession`]. This crate only drives it:
//! - `client.rs`: [`Client`], the cheap cloneable handle; commands go to the
//!   driver over bounded channels with a oneshot reply each.
//! - `driver.rs`: the one task that owns the transport and the session; loops
//!   feed inputs → drain outputs → re-arm timer; reconnects.
//! - `options.rs`, `backoff.rs`: configuration and the reconnection policy.
//! - `event.rs`, `error.rs`, `command.rs`, `request.rs`, `blocking.rs`, `transport/`.

mod backoff;
pub mod blocking;
mod client;
mod command;
mod driver;
mod error;
mod event;
mod options;
mod request;
mod scram;
pub mod transport;

pub use backoff::Reconnect;
pub use client::{Client, PendingPublish, PublishOptions, Subscription};
pub use error::ClientError;
pub use event::{Event, Events, Message};
pub use options::{LastWill, Options};

pub use tern_proto::codec::{AckProperties, ConnAckProperties, PublishProperties};
pub use tern_proto::session::{CloseReason, PublishError, PublishOutcome, RequestError};
pub use tern_proto::{
    ByteString, Bytes, ConnAck, Disconnect, ProtocolVersion, QoS, ReasonCode, RetainHandling, SubAck,
    SubscriptionOptions, UnsubAck,
};
