//! The client side of an MQTT session, sans-IO.
//!
//! [`ClientSession`] holds everything a client must remember about its session
//! and its current connection — packet identifiers, the outgoing window, QoS 2
//! messages awaiting PUBREL, subscriptions, topic aliases, keep-alive deadlines —
//! and decides every packet to send. It never touches a socket or a clock: the
//! driver feeds it decoded packets and the current time, and executes what it
//! asks for (the quinn-proto model).
//!
//! ## Call order
//! 1. Open a transport, then call [`ClientSession::start_connect`]: CONNECT is queued.
//! 2. Loop:
//!    - feed inputs: [`ClientSession::handle_packet`] for each decoded packet,
//!      [`ClientSession::handle_decode_error`] when the bytes do not decode,
//!      [`ClientSession::handle_timeout`] when the instant from
//!      [`ClientSession::poll_timeout`] has passed, and commands
//!      ([`ClientSession::publish`], [`ClientSession::subscribe`],
//!      [`ClientSession::unsubscribe`], [`ClientSession::disconnect`]);
//!    - drain outputs: [`ClientSession::poll_transmit`] until `None` (encode and
//!      write each packet in order), then [`ClientSession::poll_event`] until `None`;
//!    - re-arm the timer with [`ClientSession::poll_timeout`].
//! 3. On [`Event::Closed`] flush what was transmitted and close the transport; when
//!    the transport fails by itself call [`ClientSession::handle_connection_lost`].
//!    The session state survives: call `start_connect` again on a new transport to
//!    resume it, or [`ClientSession::abandon`] to fail everything still pending.
//!
//! ## Layout
//! - `packet_ids.rs`: identifier allocation, never reusing one in use.
//! - `auth.rs`: [`AuthMethod`], enhanced authentication (5.0) supplied by the application.
//! - `handlers.rs`: what each packet from the server does once connected.
//! - `outbound.rs`: the in-flight window (Receive Maximum quota) and the queue.
//! - `inbound.rs`: incoming QoS 2 identifiers awaiting PUBREL.
//! - `requests.rs`: SUBSCRIBE/UNSUBSCRIBE awaiting answers; granted subscriptions.
//! - `keepalive.rs`: PINGREQ schedule and dead-connection detection.
//! - `alias.rs`: topic aliases in both directions.
//! - `config.rs`, `event.rs`: settings, server limits, events and errors.
//! - `server.rs`: [`server::ServerSession`], the server's side, built from the same components.

pub mod alias;
mod auth;
mod config;
mod event;
mod handlers;
mod inbound;
mod keepalive;
mod outbound;
mod packet_ids;
mod requests;
pub mod server;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytestring::ByteString;

pub use auth::AuthMethod;
pub use config::{ClientConfig, ServerLimits};
pub use event::{CloseReason, Event, PublishError, PublishOutcome, RequestError, Token};
pub use outbound::{AckMatch, Deliverable, InFlight, PubRec, Stage, Window};

use crate::codec::{SubscribeProperties, UnsubscribeProperties};
use crate::{
    topic, Ack, ConnAck, Disconnect, Packet, PacketId, ProtocolVersion, Publish, QoS, ReasonCode, Role,
    Subscribe, SubscriptionOptions, Unsubscribe, Violation,
};
use alias::{AliasUse, InboundAliases, OutboundAliases};
use inbound::Inbound;
use keepalive::{KeepAlive, KeepAliveAction};
use outbound::Outbound;
use packet_ids::PacketIds;
use requests::{Request, RequestKind, Requests, Subscriptions};

/// Filters per SUBSCRIBE when re-establishing subscriptions.
const RESUBSCRIBE_CHUNK: usize = 64;

/// Where the current connection stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// No connection.
    Offline,
    /// CONNECT sent, waiting for CONNACK.
    Connecting,
    /// CONNACK Success received.
    Connected,
}

/// The protocol state of one MQTT client, across connections. See the module
/// documentation for the call order.
#[derive(Debug)]
pub struct ClientSession {
    config: ClientConfig,
    version: ProtocolVersion,
    phase: Phase,
    client_id: ByteString,
    /// A CONNACK Success was received at least once.
    connected_once: bool,
    /// Clean Start of the CONNECT in flight.
    sent_clean_start: bool,
    limits: ServerLimits,
    ids: PacketIds,
    outbound: Outbound,
    inbound: Inbound,
    requests: Requests,
    subscriptions: Subscriptions,
    /// Keep-alive of the current connection (set by CONNACK).
    keepalive: Option<KeepAlive>,
    connect_deadline: Option<Instant>,
    aliases_in: InboundAliases,
    aliases_out: OutboundAliases,
    transmit: VecDeque<Packet>,
    events: VecDeque<Event>,
    next_token: u64,
    /// The enhanced authentication method, if any (5.0).
    auth: Option<Box<dyn AuthMethod>>,
    /// Relayed QoS 2 publishes the server received (PUBREC) whose PUBREL waits for
    /// [`ClientSession::release`].
    held_releases: rustc_hash::FxHashSet<u16>,
    /// With `manual_acks`: incoming QoS 2 messages delivered whose PUBREC waits for
    /// [`ClientSession::ack`].
    held_acks: rustc_hash::FxHashSet<u16>,
}

impl ClientSession {
    /// A session that has not connected yet; `now` starts no timer.
    pub fn new(config: ClientConfig) -> ClientSession {
        let version = config.connect.protocol_version;
        let client_id = config.connect.client_id.clone();
        let inbound = Inbound::new(config.receive_maximum());
        let outbound = Outbound::new(config.max_queued);
        let requests = Requests::new(config.max_requests);
        ClientSession {
            version,
            phase: Phase::Offline,
            client_id,
            connected_once: false,
            sent_clean_start: config.connect.clean_start,
            limits: ServerLimits::default(),
            ids: PacketIds::default(),
            outbound,
            inbound,
            requests,
            subscriptions: Subscriptions::default(),
            keepalive: None,
            connect_deadline: None,
            aliases_in: InboundAliases::default(),
            aliases_out: OutboundAliases::default(),
            transmit: VecDeque::new(),
            events: VecDeque::new(),
            next_token: 0,
            auth: None,
            held_releases: Default::default(),
            held_acks: Default::default(),
            config,
        }
    }

    /// Authenticate every connection with this enhanced authentication method
    /// (5.0 section 4.12); see [`AuthMethod`] for the order of calls.
    pub fn set_auth_method(&mut self, method: Box<dyn AuthMethod>) {
        self.auth = Some(method);
    }

    // ----- state -----

    /// The protocol version spoken.
    pub fn version(&self) -> ProtocolVersion {
        self.version
    }

    /// Whether a CONNACK Success was received on the current connection.
    pub fn is_connected(&self) -> bool {
        self.phase == Phase::Connected
    }

    /// The client identifier: the configured one, or the one the server assigned.
    pub fn client_id(&self) -> &ByteString {
        &self.client_id
    }

    /// The limits of the server, from the last CONNACK.
    pub fn server_limits(&self) -> &ServerLimits {
        &self.limits
    }

    /// The largest packet to accept from the server (our Maximum Packet Size):
    /// configure the decoder with it.
    pub fn max_incoming_packet_size(&self) -> u32 {
        self.config.maximum_packet_size()
    }

    /// The keep-alive interval in force (the server's Server Keep Alive wins, [MQTT-3.2.2-21]).
    pub fn keep_alive(&self) -> Duration {
        self.keepalive
            .as_ref()
            .map_or(Duration::ZERO, KeepAlive::interval)
    }

    /// Unacknowledged QoS 1/2 messages.
    pub fn inflight_len(&self) -> usize {
        self.outbound.inflight_len()
    }

    /// Messages waiting to be sent.
    pub fn queued_len(&self) -> usize {
        self.outbound.pending_len()
    }

    /// Incoming QoS 2 messages delivered and awaiting PUBREL.
    pub fn awaiting_pubrel_len(&self) -> usize {
        self.inbound.len()
    }

    /// Whether [`ClientSession::publish`] would accept another message now.
    pub fn can_publish(&self) -> bool {
        self.outbound.has_room()
    }

    /// Whether [`ClientSession::subscribe`]/[`ClientSession::unsubscribe`] would accept another request now.
    pub fn can_request(&self) -> bool {
        self.requests.has_room()
    }

    // ----- outputs -----

    /// The next packet to write, in order.
    pub fn poll_transmit(&mut self) -> Option<Packet> {
        self.transmit.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`ClientSession::handle_timeout`] must be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.phase {
            Phase::Offline => None,
            Phase::Connecting => self.connect_deadline,
            Phase::Connected => self.keepalive.as_ref().and_then(KeepAlive::deadline),
        }
    }

    // ----- inputs -----

    /// A transport is open: queue CONNECT and start the connect timeout.
    ///
    /// The first connection uses the configured Clean Start. Later ones resume the
    /// session: 5.0 sends Clean Start 0 (with the assigned client identifier, if
    /// any); 3.1.1 keeps the configured Clean Session, because Clean Session 0
    /// there creates a session that never expires.
    pub fn start_connect(&mut self, now: Instant) {
        self.transmit.clear();
        let mut connect = self.config.connect.clone();
        connect.client_id = self.client_id.clone();
        if self.connected_once && self.version.is_v5() {
            connect.clean_start = false;
        }
        self.sent_clean_start = connect.clean_start;
        if let (Some(auth), true) = (self.auth.as_mut(), self.version.is_v5()) {
            connect.properties.authentication_method = Some(auth.name().into());
            connect.properties.authentication_data = auth.start();
        }
        self.phase = Phase::Connecting;
        self.connect_deadline = Some(now + self.config.connect_timeout);
        self.keepalive = None;
        self.aliases_in.reset(0);
        self.aliases_out.reset(0);
        self.requests.mark_unsent();
        self.send(now, Packet::Connect(Box::new(connect)));
    }

    /// A packet arrived from the server.
    pub fn handle_packet(&mut self, now: Instant, packet: Packet) {
        match self.phase {
            Phase::Offline => return,
            Phase::Connecting => match packet {
                Packet::ConnAck(ack) => self.on_connack(now, ack),
                Packet::Auth(a) if self.auth.is_some() => self.on_auth_exchange(now, a),
                other => self.violation(now, Violation::BeforeConnAck(other.packet_type())),
            },
            Phase::Connected => {
                if let Some(k) = &mut self.keepalive {
                    k.on_rx(now);
                }
                self.on_packet(now, packet);
            }
        }
        self.pump(now);
    }

    /// The bytes from the server do not decode: close with the error's reason code
    /// (0x81 Malformed Packet, 0x82 Protocol Error, 0x95 Packet too large, 0x94
    /// Topic Alias invalid).
    pub fn handle_decode_error(&mut self, now: Instant, error: &crate::DecodeError) {
        if self.phase != Phase::Offline {
            self.violation(now, Violation::Decode(error.clone()));
        }
    }

    /// The timer from [`ClientSession::poll_timeout`] expired (or any time has passed).
    pub fn handle_timeout(&mut self, now: Instant) {
        match self.phase {
            Phase::Offline => {}
            Phase::Connecting => {
                if self.connect_deadline.is_some_and(|d| now >= d) {
                    self.close(CloseReason::ConnectTimeout);
                }
            }
            Phase::Connected => match self.keepalive.as_mut().map(|k| k.poll(now)) {
                None | Some(KeepAliveAction::Idle) => {}
                Some(KeepAliveAction::Ping) => self.transmit.push_back(Packet::PingReq),
                Some(KeepAliveAction::Dead) => self.close(CloseReason::KeepAliveTimeout),
            },
        }
    }

    /// The transport closed or failed by itself.
    pub fn handle_connection_lost(&mut self, _now: Instant) {
        if self.phase != Phase::Offline {
            self.close(CloseReason::TransportLost);
        }
    }

    // ----- commands -----

    fn token(&mut self) -> Token {
        self.next_token += 1;
        Token(self.next_token)
    }

    /// Publish a message. The session assigns the packet identifier and manages
    /// DUP and the topic alias (any given alias is replaced). The message waits in
    /// the queue while offline or while the server's Receive Maximum is reached; its
    /// outcome comes as [`Event::PublishDone`] with the returned token.
    pub fn publish(&mut self, now: Instant, mut publish: Publish) -> Result<Token, PublishError> {
        topic::validate_topic_name(&publish.topic).map_err(PublishError::InvalidTopic)?;
        if let Some(rt) = &publish.properties.response_topic {
            topic::validate_topic_name(rt).map_err(PublishError::InvalidResponseTopic)?;
        }
        if !publish.properties.subscription_identifiers.is_empty() {
            return Err(PublishError::SubscriptionIdentifier);
        }
        publish.dup = false;
        publish.packet_id = None;
        self.enqueue(now, publish, false)
    }

    fn enqueue(&mut self, now: Instant, mut publish: Publish, relay: bool) -> Result<Token, PublishError> {
        publish.properties.topic_alias = None;
        self.check_publish(&publish)?;
        if !self.outbound.has_room() {
            return Err(PublishError::QueueFull);
        }
        let token = self.token();
        self.outbound.enqueue(token, publish, relay);
        self.pump(now);
        Ok(token)
    }

    /// Publish a QoS 1/2 message under the caller's packet identifier and DUP flag, for a
    /// program that relays messages it keeps elsewhere (a bridge resending, after its own
    /// restart, what it had sent before under the same identifier, so that the server takes
    /// a QoS 2 message it has already received for a duplicate, v5 [MQTT-4.3.3-10]). The
    /// message waits while the identifier is held by another packet. For QoS 2, the
    /// session sends no PUBREL by itself: [`Event::PublishReceived`] reports the PUBREC and
    /// [`ClientSession::release`] sends PUBREL, so that the caller can first record that
    /// the message must never be sent again. Otherwise as [`ClientSession::publish`].
    pub fn publish_as(&mut self, now: Instant, publish: Publish) -> Result<Token, PublishError> {
        if publish.qos == QoS::AtMostOnce || publish.packet_id.is_none() {
            return Err(PublishError::NoPacketId);
        }
        topic::validate_topic_name(&publish.topic).map_err(PublishError::InvalidTopic)?;
        self.enqueue(now, publish, true)
    }

    /// Send PUBREL for the QoS 2 message with `id` (see [`ClientSession::publish_as`]);
    /// [`Event::PublishDone`] comes with the returned token at PUBCOMP. An identifier the
    /// session does not know (the caller restarted after it had recorded the PUBREC) is
    /// released too: it takes a place in the window until PUBCOMP, and a 5.0 server that
    /// has forgotten it answers 0x92 Packet Identifier not found. Sent at once when
    /// connected, otherwise when the session is resumed ([MQTT-4.4.0-1]).
    pub fn release(&mut self, now: Instant, id: PacketId) -> Result<Token, PublishError> {
        if let Some(f) = self.outbound.window().get(id) {
            if f.stage != Stage::Released {
                return Err(PublishError::NotReceived(id.get()));
            }
            let token = f.message.token;
            if self.held_releases.remove(&id.get()) && self.phase == Phase::Connected {
                self.send(now, Packet::PubRel(Ack::new(id)));
            }
            return Ok(token);
        }
        if !self.ids.insert(id) {
            return Err(PublishError::NotReceived(id.get()));
        }
        let token = self.token();
        let mut publish = Publish::new("", bytes::Bytes::new());
        publish.qos = QoS::ExactlyOnce;
        publish.packet_id = Some(id);
        self.outbound.push_inflight(InFlight {
            id,
            stage: Stage::Released,
            message: outbound::Queued {
                token,
                publish,
                relay: true,
            },
        });
        if self.phase == Phase::Connected {
            self.send(now, Packet::PubRel(Ack::new(id)));
        }
        Ok(token)
    }

    /// With [`ClientConfig::manual_acks`]: the application is done with the incoming
    /// message `id` of `qos`; send its PUBACK (QoS 1) or PUBREC (QoS 2). Call in the order
    /// the messages arrived ([MQTT-4.6.0-2]). While offline nothing is sent: the server
    /// sends the message again when the session is resumed, and it is acknowledged then.
    pub fn ack(&mut self, now: Instant, id: PacketId, qos: QoS) {
        let connected = self.phase == Phase::Connected;
        match qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce if connected => self.send(now, Packet::PubAck(Ack::new(id))),
            QoS::AtLeastOnce => {}
            QoS::ExactlyOnce => {
                if self.held_acks.remove(&id.get()) && connected {
                    self.send(now, Packet::PubRec(Ack::new(id)));
                }
            }
        }
    }

    /// Check a message against the version and the server's limits (known after
    /// the first CONNACK).
    fn check_publish(&self, publish: &Publish) -> Result<(), PublishError> {
        if self.connected_once {
            if publish.qos > self.limits.maximum_qos {
                return Err(PublishError::QoSNotSupported {
                    requested: publish.qos,
                    maximum: self.limits.maximum_qos,
                });
            }
            if publish.retain && !self.limits.retain_available {
                return Err(PublishError::RetainNotSupported);
            }
        }
        let mut probe = Packet::Publish(publish.clone());
        if let Packet::Publish(p) = &mut probe {
            if p.qos != QoS::AtMostOnce {
                p.packet_id = PacketId::new(1);
            }
        }
        let size = probe.encoded_len(self.version).map_err(PublishError::Encode)?;
        if size as u64 > u64::from(self.limits.maximum_packet_size) {
            return Err(PublishError::PacketTooLarge {
                size,
                max: self.limits.maximum_packet_size,
            });
        }
        Ok(())
    }

    /// Subscribe to filters; the outcome comes as [`Event::SubscribeDone`].
    pub fn subscribe(
        &mut self,
        now: Instant,
        filters: Vec<(ByteString, SubscriptionOptions)>,
        properties: SubscribeProperties,
    ) -> Result<Token, RequestError> {
        if filters.is_empty() {
            return Err(RequestError::NoFilters);
        }
        for (f, options) in &filters {
            let parsed = topic::parse_filter(f).map_err(|error| RequestError::InvalidFilter {
                filter: f.clone(),
                error,
            })?;
            // No Local on a shared subscription is a Protocol Error (v5 [MQTT-3.8.3-4]).
            if options.no_local && parsed.share_group.is_some() {
                return Err(RequestError::NoLocalOnSharedSubscription(f.clone()));
            }
        }
        if properties.subscription_identifier.is_some()
            && self.connected_once
            && !self.limits.subscription_identifiers
        {
            return Err(RequestError::SubscriptionIdentifiersNotSupported);
        }
        let token = self.token();
        self.request(now, token, |packet_id| {
            RequestKind::Subscribe(Subscribe {
                packet_id,
                properties,
                filters,
            })
        })?;
        Ok(token)
    }

    /// Unsubscribe from filters; the outcome comes as [`Event::UnsubscribeDone`].
    pub fn unsubscribe(
        &mut self,
        now: Instant,
        filters: Vec<ByteString>,
        properties: UnsubscribeProperties,
    ) -> Result<Token, RequestError> {
        if filters.is_empty() {
            return Err(RequestError::NoFilters);
        }
        let token = self.token();
        self.request(now, token, |packet_id| {
            RequestKind::Unsubscribe(Unsubscribe {
                packet_id,
                properties,
                filters,
            })
        })?;
        Ok(token)
    }

    fn request(
        &mut self,
        now: Instant,
        token: Token,
        build: impl FnOnce(PacketId) -> RequestKind,
    ) -> Result<(), RequestError> {
        if !self.requests.has_room() {
            return Err(RequestError::QueueFull);
        }
        let id = self.ids.allocate().ok_or(RequestError::QueueFull)?;
        let kind = build(id);
        let packet = request_packet(&kind);
        if let Err(e) = packet.encoded_len(self.version) {
            self.ids.release(id);
            return Err(RequestError::Encode(e));
        }
        let sent = self.phase == Phase::Connected;
        if sent {
            self.send(now, packet);
        }
        self.requests.push(Request {
            token: Some(token),
            kind,
            sent,
        });
        Ok(())
    }

    /// Disconnect normally: DISCONNECT (5.0: with `disconnect`'s reason code and
    /// properties) and [`Event::Closed`] with [`CloseReason::LocalDisconnect`].
    /// Pending work stays; call [`ClientSession::abandon`] to fail it.
    pub fn disconnect(&mut self, now: Instant, disconnect: Disconnect) {
        match self.phase {
            Phase::Offline => {}
            Phase::Connecting => self.close(CloseReason::LocalDisconnect),
            Phase::Connected => {
                let d = if self.version.is_v5() {
                    disconnect
                } else {
                    Disconnect::default()
                };
                self.send(now, Packet::Disconnect(d));
                self.close(CloseReason::LocalDisconnect);
            }
        }
    }

    /// The session ends for good: every queued or unacknowledged publish and every
    /// unanswered request fails with `Closed`.
    pub fn abandon(&mut self) {
        for token in self.outbound.drain() {
            self.events.push_back(Event::PublishDone {
                token,
                result: Err(PublishError::Closed),
            });
        }
        for r in self.requests.drain() {
            let Some(token) = r.token else { continue };
            self.events.push_back(match r.kind {
                RequestKind::Subscribe(_) => Event::SubscribeDone {
                    token,
                    result: Err(RequestError::Closed),
                },
                RequestKind::Unsubscribe(_) => Event::UnsubscribeDone {
                    token,
                    result: Err(RequestError::Closed),
                },
            });
        }
        self.ids.clear();
    }

    // ----- internals -----

    fn send(&mut self, now: Instant, mut packet: Packet) {
        // 5.0: a Reason String or User Property the server's Maximum Packet Size has no room
        // for is left out (v5 [MQTT-3.14.2-3], [MQTT-3.4.2-2] and the like).
        if self.version.is_v5() && packet.has_diagnostics() {
            packet.fit_within(self.version, self.limits.maximum_packet_size);
        }
        if let Some(k) = &mut self.keepalive {
            k.on_tx(now);
        }
        self.transmit.push_back(packet);
    }

    /// The server broke a rule: 5.0 sends DISCONNECT with its reason code
    /// ([`Violation::reason_code`]), then close.
    fn violation(&mut self, now: Instant, violation: Violation) {
        let reason_code = violation.reason_code();
        if self.version.is_v5() {
            self.send(now, Packet::Disconnect(Disconnect::with_reason(reason_code)));
        }
        self.close(CloseReason::ProtocolViolation {
            reason_code,
            violation,
        });
    }

    fn close(&mut self, reason: CloseReason) {
        self.phase = Phase::Offline;
        self.connect_deadline = None;
        self.requests.mark_unsent();
        self.events.push_back(Event::Closed(reason));
    }

    /// AUTH 0x18 during the CONNECT phase: the next step of enhanced authentication.
    fn on_auth_exchange(&mut self, now: Instant, a: crate::Auth) {
        let Some(auth) = self.auth.as_mut() else { return };
        if a.reason_code != Some(ReasonCode::ContinueAuthentication) {
            let code = a.reason_code.unwrap_or(ReasonCode::Success);
            return self.violation(
                now,
                Violation::UnexpectedAuthReasonCode {
                    code,
                    by: Role::Server,
                },
            );
        }
        if a.properties.authentication_method.as_deref() != Some(auth.name()) {
            let expected = auth.name().into();
            let received = a.properties.authentication_method;
            return self.violation(now, Violation::AuthMethodMismatch { expected, received });
        }
        match auth.step(a.properties.authentication_data.as_deref()) {
            Ok(data) => {
                let mut reply = crate::Auth {
                    reason_code: Some(ReasonCode::ContinueAuthentication),
                    properties: Default::default(),
                };
                reply.properties.authentication_method = Some(auth.name().into());
                reply.properties.authentication_data = Some(data);
                self.send(now, Packet::Auth(reply));
            }
            Err(e) => self.violation(now, Violation::AuthenticationFailed(e)),
        }
    }

    fn on_connack(&mut self, now: Instant, ack: ConnAck) {
        if ack.reason_code.is_error() {
            // [MQTT-3.2.2-7]: the server closes after a failure code.
            self.close(CloseReason::Refused(ack));
            return;
        }
        if let (Some(auth), true) = (self.auth.as_mut(), self.version.is_v5()) {
            if let Err(e) = auth.finish(ack.properties.authentication_data.as_deref()) {
                self.violation(now, Violation::AuthenticationFailed(e));
                return;
            }
        }
        if ack.session_present && self.sent_clean_start {
            // [MQTT-3.2.2-2] requires Session Present 0 after Clean Start 1; we have
            // no session state to resume, so we must close ([MQTT-3.2.2-4]).
            self.violation(now, Violation::SessionPresentWithoutSession);
            return;
        }
        self.limits = if self.version.is_v5() {
            ServerLimits::from_connack(&ack.properties)
        } else {
            ServerLimits::default()
        };
        if let Some(id) = &ack.properties.assigned_client_identifier {
            self.client_id = id.clone();
        }
        let keep_alive = ack
            .properties
            .server_keep_alive
            .unwrap_or(self.config.connect.keep_alive);
        self.keepalive = Some(KeepAlive::new(now, Duration::from_secs(u64::from(keep_alive))));
        self.aliases_in.reset(self.config.topic_alias_maximum());
        let out_max = if self.config.topic_aliases {
            self.limits.topic_alias_maximum
        } else {
            0
        };
        self.aliases_out.reset(out_max);
        self.phase = Phase::Connected;
        self.connect_deadline = None;
        if ack.session_present {
            self.resend_inflight(now);
        } else {
            self.session_lost();
        }
        self.connected_once = true;
        self.events.push_back(Event::Connected {
            session_present: ack.session_present,
            connack: ack,
        });
        for kind in self.requests.take_unsent() {
            self.send(now, request_packet(&kind));
        }
    }

    /// Resend unacknowledged PUBLISH (DUP=1) and PUBREL in their original order
    /// with their original identifiers ([MQTT-4.4.0-1], [MQTT-4.6.0-1], [MQTT-3.3.1-1]).
    fn resend_inflight(&mut self, now: Instant) {
        let packets: Vec<Packet> = self
            .outbound
            .inflight()
            .filter(|f| !(f.stage == Stage::Released && self.held_releases.contains(&f.id.get())))
            .map(|f| match f.stage {
                Stage::Published => {
                    let mut p = f.message.publish.clone();
                    p.dup = true;
                    Packet::Publish(p)
                }
                Stage::Released => Packet::PubRel(Ack::new(f.id)),
            })
            .collect();
        for p in packets {
            self.send(now, p);
        }
    }

    /// The server has no session for us ([MQTT-3.2.2-5]): drop our session state,
    /// send unacknowledged messages again as new ones, and re-subscribe.
    fn session_lost(&mut self) {
        self.inbound.clear();
        self.held_acks.clear();
        self.held_releases.clear();
        let (ids, released) = self.outbound.requeue_unacknowledged();
        for id in ids {
            self.ids.release(id);
        }
        for f in released {
            self.events.push_back(Event::PublishDone {
                token: f.message.token,
                result: Err(PublishError::SessionLost),
            });
        }
        if self.connected_once && !self.subscriptions.is_empty() {
            for (sub_id, filters) in self.subscriptions.groups(RESUBSCRIBE_CHUNK).into_iter().rev() {
                let properties = SubscribeProperties {
                    subscription_identifier: sub_id,
                    ..Default::default()
                };
                // Internal requests are sent by on_connack with the others.
                let Some(packet_id) = self.ids.allocate() else {
                    break;
                };
                self.requests.push_front(Request {
                    token: None,
                    kind: RequestKind::Subscribe(Subscribe {
                        packet_id,
                        properties,
                        filters,
                    }),
                    sent: false,
                });
            }
        }
    }

    /// Move queued messages into the window while the quota allows
    /// ([MQTT-3.3.4-7], [MQTT-4.9.0-2]).
    fn pump(&mut self, now: Instant) {
        if self.phase != Phase::Connected {
            return;
        }
        let quota = usize::from(self.limits.receive_maximum.min(self.config.max_inflight).max(1));
        while let Some(q) = self.outbound.next_sendable(quota) {
            if let Err(e) = self.check_publish(&q.publish) {
                self.events.push_back(Event::PublishDone {
                    token: q.token,
                    result: Err(e),
                });
                continue;
            }
            if q.publish.qos == QoS::AtMostOnce {
                let wire = self.with_alias(q.publish);
                self.send(now, Packet::Publish(wire));
                self.events.push_back(Event::PublishDone {
                    token: q.token,
                    result: Ok(PublishOutcome::default()),
                });
                continue;
            }
            let id = match (q.relay, q.publish.packet_id) {
                (true, Some(id)) if self.ids.insert(id) => Some(id),
                // The caller's identifier is held by another packet: wait for it.
                (true, _) => None,
                (false, _) => self.ids.allocate(),
            };
            let Some(id) = id else {
                self.outbound.unsend(q);
                break;
            };
            let mut q = q;
            q.publish.packet_id = Some(id);
            let wire = self.with_alias(q.publish.clone());
            self.send(now, Packet::Publish(wire));
            self.outbound.push_inflight(InFlight {
                id,
                stage: Stage::Published,
                message: q,
            });
        }
    }

    /// The message as it goes on the wire on this connection: with a topic alias
    /// when they are enabled.
    fn with_alias(&mut self, mut p: Publish) -> Publish {
        match self.aliases_out.assign(&p.topic) {
            AliasUse::None => {}
            AliasUse::Set(a) => p.properties.topic_alias = Some(a),
            AliasUse::Reuse(a) => {
                p.properties.topic_alias = Some(a);
                p.topic = ByteString::new();
            }
        }
        p
    }
}

fn request_packet(kind: &RequestKind) -> Packet {
    match kind {
        RequestKind::Subscribe(s) => Packet::Subscribe(s.clone()),
        RequestKind::Unsubscribe(u) => Packet::Unsubscribe(u.clone()),
    }
}
