//! The server side of an MQTT session, sans-IO.
//!
//! A broker keeps two things per client:
//! - [`ServerState`]: what outlives a connection and is shared with the rest of the broker
//!   (the in-flight window of deliveries with their packet identifiers, the incoming QoS 2
//!   identifiers awaiting PUBREL, the subscriptions). The broker keeps it behind its own lock.
//! - [`ServerSession`]: the protocol state of one connection (the client's limits, topic
//!   aliases both ways, keep-alive, the enhanced-authentication method, a batch of PUBACKs),
//!   owned by the task that drives the connection.
//!
//! [`ServerSession`] owns every per-session rule of the protocol once CONNECT is accepted:
//! what each packet from the client means, which acknowledgement it gets and when, how a
//! delivery is encoded for this client. It never reads a clock (`now` is an argument) and
//! never touches a socket, a lock or a store: what it needs from the broker, and what it asks
//! the broker to do, goes through the [`ServerHost`] the driver passes in, in typed calls
//! (transmit a packet, route a message, subscribe, persist a change, hold acknowledgements
//! until the store has what they promise, close with a reason).
//!
//! It shares its components with [`super::ClientSession`], the role being data: the window
//! and its acknowledgement matching ([`Window`]), packet identifiers, incoming QoS 2
//! identifiers, topic aliases (least recently used reuse) and the keep-alive rule.

mod connect;

pub use connect::{check_connect, continues_auth, ConnectRules, Granted, Refusal};

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use bytestring::ByteString;

use super::alias::{AliasError, AliasUse, InboundAliases, OutboundAliases};
use super::inbound::{Inbound, Qos2Arrival};
use super::outbound::{AckMatch, Deliverable, InFlight, PubRec, Stage, Window};
use super::packet_ids::PacketIds;
use crate::{
    topic, Ack, Auth, Disconnect, Packet, PacketId, ProtocolVersion, Publish, QoS, ReasonCode,
    RetainHandling, Role, SubAck, Subscribe, SubscriptionOptions, UnsubAck, Unsubscribe, Violation,
};

/// What the server advertised and enforces: the same for every session of a broker.
#[derive(Debug, Clone)]
pub struct ServerRules {
    /// Our Receive Maximum: unreleased incoming QoS 2 messages per session.
    pub receive_maximum: u16,
    /// Our Topic Alias Maximum.
    pub topic_alias_maximum: u16,
    /// Our Maximum Packet Size.
    pub max_packet_size: u32,
    /// The highest QoS granted and accepted.
    pub maximum_qos: QoS,
    /// Whether RETAIN is accepted.
    pub retain_available: bool,
    /// Longest topic name or filter, in bytes.
    pub max_topic_length: usize,
    /// Most levels in a topic name or filter.
    pub max_topic_levels: usize,
    /// Longest Session Expiry Interval granted, in seconds.
    pub max_session_expiry: u32,
    /// Most deliveries in flight to one client (below its own Receive Maximum).
    pub max_inflight: u16,
    /// Whether Subscription Identifiers are accepted.
    pub subscription_identifiers: bool,
    /// Whether `$share/...` filters are accepted.
    pub shared_subscriptions: bool,
    /// Whether filters with `+` or `#` are accepted.
    pub wildcard_subscriptions: bool,
    /// Most subscriptions per session.
    pub max_subscriptions: usize,
    /// Most subscriptions with wildcards per session.
    pub max_wildcard_subscriptions: usize,
    /// The SUBACK code for a filter the ACL refuses (5.0; 3.1.1 always gets 0x80).
    pub denied_subscription: ReasonCode,
}

impl Default for ServerRules {
    /// What the protocol allows, with the broker's usual bounds.
    fn default() -> Self {
        ServerRules {
            receive_maximum: 65_535,
            topic_alias_maximum: 0,
            max_packet_size: 268_435_455,
            maximum_qos: QoS::ExactlyOnce,
            retain_available: true,
            max_topic_length: 65_535,
            max_topic_levels: 128,
            max_session_expiry: u32::MAX,
            max_inflight: 100,
            subscription_identifiers: true,
            shared_subscriptions: true,
            wildcard_subscriptions: true,
            max_subscriptions: 10_000,
            max_wildcard_subscriptions: 1_000,
            denied_subscription: ReasonCode::NotAuthorized,
        }
    }
}

/// What the client announced in CONNECT about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientLimits {
    /// Its Receive Maximum (deliveries in flight towards it).
    pub receive_maximum: u16,
    /// Its Maximum Packet Size.
    pub max_packet_size: u32,
    /// Its Topic Alias Maximum (0: no aliases towards it).
    pub topic_alias_maximum: u16,
    /// Request Problem Information: reason strings on acknowledgements ([MQTT-3.1.2-29]).
    pub problem_information: bool,
    /// Keep-alive in seconds (0: none).
    pub keep_alive: u16,
    /// The Session Expiry Interval of CONNECT (the DISCONNECT rule of v5 3.14.2.2.2).
    pub session_expiry: u32,
    /// A 3.1/3.1.1 bridge ([`crate::Connect::bridge`]): its subscriptions are No Local and
    /// Retain As Published, and what it publishes carries the User Property
    /// [`BRIDGE_HOPS`] (one bridge crossed), so that a bridge of this broker does not send it
    /// on over more bridges than it allows.
    pub bridge: bool,
}

/// The User Property that counts the bridges a message has crossed (Tern's bridges set it on
/// what they send to 5.0 remotes; the server sets it on what 3.x bridges publish).
pub const BRIDGE_HOPS: &str = "tern-bridge-hops";

impl ClientLimits {
    /// From a CONNECT packet, with `keep_alive` as granted.
    pub fn from_connect(c: &crate::Connect, keep_alive: u16) -> ClientLimits {
        ClientLimits {
            receive_maximum: c.properties.receive_maximum.unwrap_or(u16::MAX),
            max_packet_size: c.properties.maximum_packet_size.unwrap_or(u32::MAX),
            topic_alias_maximum: c.properties.topic_alias_maximum.unwrap_or(0),
            problem_information: c.properties.request_problem_information != Some(0),
            keep_alive,
            session_expiry: c.properties.session_expiry_interval.unwrap_or(0),
            bridge: c.bridge && !c.protocol_version.is_v5(),
        }
    }
}

/// A message the server delivers: the window needs its QoS, resending needs its PUBLISH.
pub trait Delivery: Deliverable {
    /// The PUBLISH for this client at `now` (remaining expiry), with `packet_id` and `dup`.
    fn to_publish(
        &self,
        version: ProtocolVersion,
        packet_id: Option<PacketId>,
        dup: bool,
        now: Instant,
    ) -> Publish;
}

/// What the ACL is asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    /// Publish to a topic.
    Publish,
    /// Subscribe to a filter.
    Subscribe,
}

/// Why the session ends, as far as the protocol is concerned.
#[derive(Debug)]
pub enum SessionClose {
    /// The client sent DISCONNECT; `with_will` for reason 0x04 ([MQTT-3.14.4-3]).
    Disconnect {
        /// Publish the will anyway.
        with_will: bool,
    },
    /// The client broke a rule: DISCONNECT with [`Violation::reason_code`] (5.0), close.
    Violation(Violation),
    /// No packet within 1.5 × keep-alive ([MQTT-3.1.2-24]).
    KeepAliveTimeout,
    /// Re-authentication failed (v5 DISCONNECT 0x87).
    NotAuthorized,
}

/// A step of (re-)authentication, as the broker's authenticator answers it.
#[derive(Debug)]
pub enum AuthAnswer {
    /// Send AUTH 0x18 with this data and wait for the client's next AUTH.
    Continue(Bytes),
    /// Done: AUTH 0x00, with optional data.
    Success(Option<Bytes>),
    /// Refused.
    Failure,
}

/// The router refused a subscription (its own limits): SUBACK 0x97 Quota exceeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused;

/// Things the session tells the broker about, for its logs and counters.
#[derive(Debug)]
pub enum Note<'a> {
    /// A PUBLISH the ACL refused ([MQTT-3.3.5-2]).
    PublishDenied(&'a str),
    /// A filter the ACL refused.
    SubscribeDenied(&'a str),
    /// A filter that is not valid or above the topic limits.
    InvalidFilter(&'a str),
    /// Filters refused by `max_subscriptions` (`wildcard: false`) or
    /// `max_wildcard_subscriptions` (`wildcard: true`) in one SUBSCRIBE.
    SubscriptionsRefused {
        /// How many.
        count: usize,
        /// Which limit.
        wildcard: bool,
    },
    /// A PUBACK, PUBREC or PUBCOMP for an identifier not in flight (ignored).
    UnknownAck(PacketId),
}

/// Store changes of a session's lasting state, reported as they happen (inside
/// [`ServerHost::with_state`]). Each answers whether it wrote something that an
/// acknowledgement about to be sent depends on.
pub trait Persist<M> {
    /// An incoming QoS 2 identifier is now awaiting PUBREL.
    fn qos2_received(&mut self, id: PacketId) -> bool;
    /// PUBREL came: the identifier is forgotten.
    fn qos2_released(&mut self, id: PacketId) -> bool;
    /// A delivery reached a stage (sent with its identifier, or released).
    fn delivery_stage(&mut self, f: &InFlight<M>) -> bool;
    /// A delivery is finished (acknowledged, or refused by the client).
    fn delivery_done(&mut self, f: &InFlight<M>);
    /// Whether the session's state is kept in a store at all.
    fn persistent(&self) -> bool;
}

/// What became of a routed message, as far as its publisher's acknowledgement says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routed {
    /// It reached this many subscriptions; 0: none matched (5.0: 0x10 No matching
    /// subscribers, a success).
    Reached(usize),
    /// Every subscription it matched belongs to a session over a limit of what it may keep
    /// (for a client that is away), which dropped it (5.0: 0x97 Quota exceeded).
    OverQuota,
    /// It went on to other servers (a cluster's nodes), whose subscribers this one does not
    /// know, and no subscription here took it (none matched, or all dropped it for their
    /// quotas): a plain success (no 0x10, no 0x97).
    Elsewhere,
}

/// What a [`ServerSession`] asks of the broker. Implemented by the connection's driver over
/// the broker's core; a test implements it over plain collections.
pub trait ServerHost {
    /// The broker's delivery handle ([`ServerState`] holds them in its window).
    type Message: Delivery;
    /// How the broker closes a connection; the session's reasons are some of them.
    type Close: From<SessionClose>;

    /// Send a packet to the client (in order with every other); by reference, so that the
    /// packet is encoded where it was built instead of being moved (a packet is large).
    fn transmit(&mut self, packet: &Packet);
    /// Whether the ACL allows this client `permission` on `topic`.
    fn allows(&mut self, permission: Permission, topic: &str) -> bool;
    /// Run `f` on the session's lasting state, with the sink for its store changes. `Err`
    /// when this connection no longer holds the session (taken over).
    fn with_state<R>(
        &mut self,
        f: impl FnOnce(&mut ServerState<Self::Message>, &mut dyn Persist<Self::Message>) -> R,
    ) -> Result<R, Self::Close>;
    /// Route an accepted message (its topic resolved from any alias) to the subscribers and
    /// the retained store; what became of it, as the publisher's acknowledgement tells it.
    fn route(&mut self, publish: Publish, topic: ByteString, now: Instant) -> Routed;
    /// What is routed and stored until [`ServerHost::end_group`] is durable together or not
    /// at all (a QoS 2 identifier with the copies routed for it).
    fn begin_group(&mut self);
    /// Close the group of [`ServerHost::begin_group`].
    fn end_group(&mut self);
    /// Whether the store has failed (QoS 1/2 messages are then refused).
    fn storage_failed(&self) -> bool;
    /// The acknowledgements transmitted from now on promise what was submitted to the store
    /// so far: they go out only once it is durable.
    fn ack_when_durable(&mut self);
    /// Add a subscription to the router; `Ok(true)` when it replaced one. `Err` when the
    /// router refuses it (its limits).
    fn subscribe(
        &mut self,
        full_filter: &str,
        share_group: Option<&str>,
        options: SubscriptionOptions,
        id: Option<u32>,
    ) -> Result<bool, Refused>;
    /// Remove a subscription from the router.
    fn unsubscribe(&mut self, full_filter: &str);
    /// Queue the retained messages matching `filter` for this session.
    fn send_retained(&mut self, filter: &str, qos: QoS, id: Option<u32>, now: Instant);
    /// The subscriptions changed: keep the session record.
    fn subscriptions_changed(&mut self);
    /// The session expiry interval changed (DISCONNECT).
    fn set_session_expiry(&mut self, secs: u32);
    /// A re-authentication step (v5 section 4.12.1): `begin` for AUTH 0x19.
    fn reauthenticate(&mut self, method: &str, begin: bool, data: Option<&[u8]>) -> AuthAnswer;
    /// Something worth a log line or a counter.
    fn note(&mut self, note: Note<'_>);
}

/// A session's subscriptions, by full filter (with the `$share/{group}/` prefix for
/// shared ones), and how many of them have wildcards.
///
/// ### Invariants
/// `wildcards` is the number of filters in `map` with `+` or `#` (a share name cannot
/// hold either, so the full filter tells): every change goes through these methods.
#[derive(Debug, Default, Clone)]
pub struct Subscriptions {
    map: HashMap<String, (SubscriptionOptions, Option<u32>)>,
    wildcards: usize,
}

impl Subscriptions {
    /// Add or replace a subscription; the options and identifier it replaces.
    pub fn insert(
        &mut self,
        filter: String,
        value: (SubscriptionOptions, Option<u32>),
    ) -> Option<(SubscriptionOptions, Option<u32>)> {
        let wild = topic::has_wildcards(&filter);
        let old = self.map.insert(filter, value);
        if old.is_none() && wild {
            self.wildcards += 1;
        }
        old
    }

    /// Remove a subscription; its options and identifier.
    pub fn remove(&mut self, filter: &str) -> Option<(SubscriptionOptions, Option<u32>)> {
        let old = self.map.remove(filter);
        if old.is_some() && topic::has_wildcards(filter) {
            self.wildcards -= 1;
        }
        old
    }

    /// Remove every subscription.
    pub fn drain(&mut self) -> impl Iterator<Item = (String, (SubscriptionOptions, Option<u32>))> + '_ {
        self.wildcards = 0;
        self.map.drain()
    }

    /// Whether `filter` is subscribed.
    pub fn contains_key(&self, filter: &str) -> bool {
        self.map.contains_key(filter)
    }

    /// Number of subscriptions.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Number of subscriptions whose filter has `+` or `#`.
    pub fn wildcards(&self) -> usize {
        self.wildcards
    }

    /// Every subscription.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &(SubscriptionOptions, Option<u32>))> {
        self.map.iter()
    }
}

/// What outlives a connection: the delivery window with its packet identifiers, the
/// incoming QoS 2 identifiers awaiting PUBREL, the subscriptions.
///
/// ### Invariants
/// The identifiers in `ids` are exactly those of the window (every change of the window
/// goes through these methods).
#[derive(Debug)]
pub struct ServerState<M> {
    window: Window<M>,
    ids: PacketIds,
    inbound: Inbound,
    /// The session's subscriptions.
    pub subscriptions: Subscriptions,
}

impl<M: Delivery> ServerState<M> {
    /// Empty; at most `receive_maximum` (ours) incoming QoS 2 messages unreleased.
    pub fn new(receive_maximum: u16) -> ServerState<M> {
        ServerState {
            window: Window::default(),
            ids: PacketIds::default(),
            inbound: Inbound::new(receive_maximum),
            subscriptions: Subscriptions::default(),
        }
    }

    /// Give back the memory its collections grew to beyond what they hold: a session whose
    /// client has left is kept for long (persistent sessions), and its window and identifier
    /// sets grew while the client was connected.
    pub fn shrink(&mut self) {
        self.window.shrink();
        self.ids.shrink();
        self.inbound.shrink();
    }

    /// Deliveries in flight.
    pub fn inflight_len(&self) -> usize {
        self.window.len()
    }

    /// The deliveries in flight, in the order they were sent.
    pub fn inflight(&self) -> impl Iterator<Item = &InFlight<M>> {
        self.window.iter()
    }

    /// Start a QoS 1/2 delivery: a free identifier ([MQTT-2.2.1-3]) and a place in the
    /// window; the caller keeps the window within the client's quota. `None` only when all
    /// 65,535 identifiers are taken.
    pub fn start(&mut self, message: M, persist: &mut dyn Persist<M>) -> Option<(PacketId, bool)> {
        let id = self.ids.allocate()?;
        let f = InFlight {
            id,
            stage: Stage::Published,
            message,
        };
        let durable_first = persist.delivery_stage(&f) && f.message.qos() == QoS::ExactlyOnce;
        self.window.push(f);
        Some((id, durable_first))
    }

    /// A delivery read back from the store, at its stage and with its identifier; `false`
    /// (and nothing kept) when the identifier is already in use.
    pub fn restore(&mut self, id: PacketId, stage: Stage, message: M) -> bool {
        if !self.ids.insert(id) {
            return false;
        }
        self.window.push(InFlight { id, stage, message });
        true
    }

    /// Take a delivery out of the window (it could not be sent).
    pub fn abandon(&mut self, id: PacketId) -> Option<M> {
        let f = self.window.remove(id)?;
        self.ids.release(id);
        Some(f.message)
    }

    /// Take every delivery out of the window, in order.
    pub fn drain_inflight(&mut self) -> Vec<InFlight<M>> {
        self.ids.clear();
        self.window.drain().collect()
    }

    /// An incoming QoS 2 identifier read back from the store.
    pub fn restore_qos2(&mut self, id: PacketId) {
        self.inbound.restore(id);
    }

    /// Forget an incoming QoS 2 identifier awaiting PUBREL without a PUBREL (its message was
    /// not kept after all: the sender's resend is then a new message); whether it was there.
    pub fn forget_qos2(&mut self, id: PacketId) -> bool {
        self.inbound.on_pubrel(id)
    }

    /// The incoming QoS 2 identifiers awaiting PUBREL, in increasing order (to hand the
    /// session to another server).
    pub fn qos2_ids(&self) -> Vec<PacketId> {
        self.inbound.ids()
    }

    /// Incoming QoS 2 identifiers awaiting PUBREL.
    pub fn qos2_len(&self) -> usize {
        self.inbound.len()
    }

    fn complete(&mut self, f: &InFlight<M>, persist: &mut dyn Persist<M>) {
        self.ids.release(f.id);
        persist.delivery_done(f);
    }
}

/// Topic aliases of one connection (v5 section 3.3.2.3.4), allocated on first use.
#[derive(Debug, Default)]
struct Aliases {
    inbound: InboundAliases,
    outbound: OutboundAliases,
}

/// The protocol state of one connection of a server session. See the module documentation.
#[derive(Debug)]
pub struct ServerSession {
    version: ProtocolVersion,
    rules: Arc<ServerRules>,
    client: ClientLimits,
    /// When the client was last heard from.
    last_rx: Instant,
    /// The enhanced authentication method of CONNECT (boxed: few clients have one).
    auth_method: Option<Box<ByteString>>,
    /// A re-authentication is in progress.
    reauthenticating: bool,
    /// Allocated on first use: 3.1.1 clients, and most 5.0 ones, never use aliases.
    aliases: Option<Box<Aliases>>,
    /// PUBACKs received and not yet applied (one lock of the state for a read's worth).
    pubacks: Vec<PacketId>,
}

/// Most PUBACKs collected before they are applied.
const MAX_PUBACK_BATCH: usize = 256;

impl ServerSession {
    /// The session of a connection whose CONNECT was accepted at `now`.
    pub fn new(
        version: ProtocolVersion,
        rules: Arc<ServerRules>,
        client: ClientLimits,
        auth_method: Option<ByteString>,
        now: Instant,
    ) -> ServerSession {
        ServerSession {
            version,
            rules,
            client,
            last_rx: now,
            auth_method: auth_method.map(Box::new),
            reauthenticating: false,
            aliases: None,
            pubacks: Vec::new(),
        }
    }

    /// The protocol version of the connection.
    pub fn version(&self) -> ProtocolVersion {
        self.version
    }

    /// What the client announced.
    pub fn client(&self) -> &ClientLimits {
        &self.client
    }

    /// Most deliveries in flight to this client: its Receive Maximum, within ours.
    pub fn window(&self) -> usize {
        usize::from(self.client.receive_maximum.min(self.rules.max_inflight).max(1))
    }

    /// When the client was last heard from (or the keep-alive clock restarted).
    pub fn last_rx(&self) -> Instant {
        self.last_rx
    }

    /// Bytes arrived at `now`: the client is alive. Also called while the broker does not
    /// read the client (slowed down for a subscriber): its keep-alive cannot be judged then.
    pub fn handle_rx(&mut self, now: Instant) {
        self.last_rx = now;
    }

    /// When the connection times out without a packet: 1.5 × keep-alive after the last one
    /// ([MQTT-3.1.2-24]).
    pub fn poll_timeout(&self) -> Option<Instant> {
        super::keepalive::server_deadline(self.last_rx, self.client.keep_alive)
    }

    /// The timer of [`ServerSession::poll_timeout`] fired at `now`.
    pub fn handle_timeout(&mut self, now: Instant) -> Option<SessionClose> {
        match self.poll_timeout() {
            Some(d) if now >= d => Some(SessionClose::KeepAliveTimeout),
            _ => None,
        }
    }

    /// The topic a PUBLISH will be judged on: its own, or the one its Topic Alias stands
    /// for now (`None` when it has neither; [`ServerSession::handle_packet`] then refuses
    /// it). For a driver that looks an access decision up before handing the packet over.
    pub fn publish_topic<'a>(&'a self, p: &'a Publish) -> Option<&'a str> {
        if !p.topic.is_empty() {
            return Some(&p.topic);
        }
        let alias = p.properties.topic_alias?;
        self.aliases.as_ref()?.inbound.peek(alias).map(|t| &**t)
    }

    /// Handle one packet from the client.
    // Always inlined into the driver's decode loop: the packet is then matched where it was
    // decoded instead of being copied into the call (a packet with a PUBLISH inside is large).
    #[inline(always)]
    pub fn handle_packet<H: ServerHost>(
        &mut self,
        now: Instant,
        packet: Packet,
        host: &mut H,
    ) -> Result<(), H::Close> {
        if !matches!(packet, Packet::PubAck(_)) {
            // PUBACKs are applied in batches; anything else sees them applied first.
            self.flush_acks(host)?;
        }
        match packet {
            Packet::Publish(p) => self.on_publish(now, p, host),
            Packet::PubAck(a) => {
                self.pubacks.push(a.packet_id);
                if self.pubacks.len() >= MAX_PUBACK_BATCH {
                    self.flush_acks(host)?;
                }
                Ok(())
            }
            // Acknowledgements by identifier: the packet is not copied into the handlers.
            Packet::PubRec(a) => self.on_pubrec(a.packet_id, a.reason_code.is_error(), host),
            Packet::PubRel(a) => self.on_pubrel(a.packet_id, host),
            Packet::PubComp(a) => self.on_pubcomp(a.packet_id, host),
            Packet::Subscribe(s) => self.on_subscribe(now, s, host),
            Packet::Unsubscribe(u) => self.on_unsubscribe(u, host),
            Packet::PingReq => {
                self.send(host, Packet::PingResp);
                Ok(())
            }
            Packet::Disconnect(d) => Err(self.on_disconnect(d, host).into()),
            Packet::Connect(_) => Err(violation(Violation::SecondConnect)),
            Packet::Auth(a) => self.on_auth(a, host),
            p @ (Packet::ConnAck(_) | Packet::SubAck(_) | Packet::UnsubAck(_) | Packet::PingResp) => {
                Err(violation(Violation::ServerOnlyPacket(p.packet_type())))
            }
        }
    }

    /// Apply the PUBACKs collected so far (call after each batch of packets).
    pub fn flush_acks<H: ServerHost>(&mut self, host: &mut H) -> Result<(), H::Close> {
        if self.pubacks.is_empty() {
            return Ok(());
        }
        let mut ids = std::mem::take(&mut self.pubacks);
        let mut unknown = None;
        let result = host
            .with_state(|st, persist| {
                for &id in &ids {
                    match st.window.on_puback(id) {
                        AckMatch::Completed(f) => st.complete(&f, persist),
                        AckMatch::WrongQoS => return Err(Violation::PubAckForQoS2(id)),
                        _ => unknown = Some(id),
                    }
                }
                Ok(())
            })
            .and_then(|r| r.map_err(violation));
        if let Some(id) = unknown {
            host.note(Note::UnknownAck(id));
        }
        ids.clear();
        // Small enough to keep; a burst's larger list is given back (idle memory).
        if ids.capacity() <= 16 {
            self.pubacks = ids;
        }
        result
    }

    fn on_publish<H: ServerHost>(
        &mut self,
        now: Instant,
        mut p: Publish,
        host: &mut H,
    ) -> Result<(), H::Close> {
        if self.client.bridge {
            // It came over a bridge (3.x carries no properties of its own).
            p.properties
                .user_properties
                .push((BRIDGE_HOPS.into(), "1".into()));
        }
        // Topic alias (v5 section 3.3.2.3.4).
        let topic = match p.properties.topic_alias {
            Some(alias) => {
                let maximum = self.rules.topic_alias_maximum;
                let aliases = self.aliases(maximum);
                // An own copy when the mapping is set: a slice would keep its whole read
                // buffer alive.
                let given = match p.topic.is_empty() {
                    true => ByteString::new(),
                    false => ByteString::from(p.topic.to_string()),
                };
                match aliases.inbound.resolve(&given, alias) {
                    Ok(t) => t,
                    Err(AliasError::AboveMaximum) => {
                        return Err(violation(Violation::TopicAliasAboveMaximum {
                            alias,
                            maximum,
                            by: Role::Client,
                        }))
                    }
                    Err(AliasError::Unknown) => {
                        return Err(violation(Violation::TopicAliasUnknown { alias }))
                    }
                }
            }
            None => p.topic.clone(),
        };
        let rules = &*self.rules;
        if !p.properties.subscription_identifiers.is_empty() {
            return Err(violation(Violation::PublishWithSubscriptionId));
        }
        if let Some(rt) = &p.properties.response_topic {
            if let Err(e) = topic::validate_topic_name(rt) {
                return Err(violation(Violation::ResponseTopicInvalid(e)));
            }
        }
        // A topic has at most one level more than it has bytes: short ones need no count.
        if topic.len() > rules.max_topic_length
            || (topic.len() >= rules.max_topic_levels && topic::level_count(&topic) > rules.max_topic_levels)
        {
            return Err(violation(Violation::TopicAboveLimits {
                length: topic.len(),
                levels: topic::level_count(&topic),
                max_length: rules.max_topic_length,
                max_levels: rules.max_topic_levels,
            }));
        }
        // v5 section 3.2.2.3.4 / 3.2.2.3.5: above the advertised Maximum QoS, or RETAIN
        // without Retain Available.
        if p.qos > rules.maximum_qos {
            return Err(violation(Violation::QoSNotSupported {
                qos: p.qos,
                maximum: rules.maximum_qos,
            }));
        }
        if p.retain && !rules.retain_available {
            return Err(violation(Violation::RetainNotSupported));
        }
        let (qos, packet_id) = (p.qos, p.packet_id);
        let id = match (qos, packet_id) {
            (QoS::AtMostOnce, _) => None,
            (_, Some(id)) => Some(id),
            (qos, None) => return Err(violation(Violation::MissingPacketId(qos))),
        };
        if !host.allows(Permission::Publish, &topic) {
            host.note(Note::PublishDenied(&topic));
            self.deny_publish(qos, id, host);
            return Ok(());
        }
        let Some(id) = id else {
            host.route(p, topic, now);
            return Ok(());
        };
        // The acknowledgement promises that the message is kept.
        host.ack_when_durable();
        if host.storage_failed() {
            // A store that failed cannot keep what we would acknowledge: refuse instead.
            if !self.version.is_v5() {
                return Err(violation(Violation::StorageFailed("the store has failed".into())));
            }
            self.ack_publish(qos, Ack::with_reason(id, ReasonCode::UnspecifiedError), host);
            return Ok(());
        }
        if qos == QoS::AtLeastOnce {
            let routed = host.route(p, topic, now);
            let ack = self.pub_ack(id, routed);
            self.send(host, Packet::PubAck(ack));
            return Ok(());
        }
        // QoS 2: the identifier and the copies routed for it are stored atomically: a crash
        // can lose both (the publisher resends) but never keep one without the other.
        host.begin_group();
        let arrival = host.with_state(|st, persist| {
            let arrival = st.inbound.on_publish(id, p.dup);
            if arrival == Qos2Arrival::Deliver {
                persist.qos2_received(id);
            }
            arrival
        });
        let result = match arrival {
            Err(c) => Err(c),
            // [MQTT-4.3.3-10] (v5) / 3.1.1 method B: deliver once, until PUBREL.
            Ok(Qos2Arrival::Deliver) => {
                let routed = host.route(p, topic, now);
                let ack = self.pub_ack(id, routed);
                if ack.reason_code.is_error() {
                    // v5 [MQTT-4.3.3-9]: after an error PUBREC the identifier starts a new
                    // message (the client sends no PUBREL): free it at once.
                    host.with_state(|st, persist| {
                        if st.inbound.on_pubrel(id) {
                            persist.qos2_released(id);
                        }
                    })?;
                }
                self.send(host, Packet::PubRec(ack));
                Ok(())
            }
            Ok(Qos2Arrival::Duplicate) => {
                self.send(host, Packet::PubRec(Ack::new(id)));
                Ok(())
            }
            // A new message with an identifier still awaiting PUBREL ([MQTT-2.2.1-3] broken
            // by the sender): not delivered; 5.0 says why (0x91 Packet Identifier in use).
            Ok(Qos2Arrival::IdInUse) => {
                let ack = match self.version.is_v5() {
                    true => Ack::with_reason(id, ReasonCode::PacketIdentifierInUse),
                    false => Ack::new(id),
                };
                self.send(host, Packet::PubRec(ack));
                Ok(())
            }
            Ok(Qos2Arrival::QuotaExceeded) => Err(violation(Violation::ReceiveMaximumExceeded {
                maximum: rules.receive_maximum,
                by: Role::Client,
            })),
        };
        host.end_group();
        result
    }

    fn ack_publish<H: ServerHost>(&self, qos: QoS, ack: Ack, host: &mut H) {
        self.send(
            host,
            match qos {
                QoS::ExactlyOnce => Packet::PubRec(ack),
                _ => Packet::PubAck(ack),
            },
        );
    }

    /// A PUBLISH the ACL refuses is not routed ([MQTT-3.3.5-2]). 5.0 answers
    /// PUBACK/PUBREC 0x87 Not authorized; 3.1.1 cannot say so and acknowledges as
    /// usual (the PUBREL of QoS 2 then gets its PUBCOMP like any unknown id).
    fn deny_publish<H: ServerHost>(&self, qos: QoS, id: Option<PacketId>, host: &mut H) {
        let Some(id) = id else { return };
        let ack = match self.version.is_v5() {
            true => Ack::with_reason(id, ReasonCode::NotAuthorized),
            false => Ack::new(id),
        };
        self.ack_publish(qos, ack, host);
    }

    fn pub_ack(&self, id: PacketId, routed: Routed) -> Ack {
        match routed {
            _ if !self.version.is_v5() => Ack::new(id),
            Routed::Reached(0) => Ack::with_reason(id, ReasonCode::NoMatchingSubscribers),
            Routed::Reached(_) | Routed::Elsewhere => Ack::new(id),
            Routed::OverQuota => Ack::with_reason(id, ReasonCode::QuotaExceeded),
        }
    }

    fn on_pubrec<H: ServerHost>(&mut self, id: PacketId, failed: bool, host: &mut H) -> Result<(), H::Close> {
        let (outcome, wait) = host.with_state(|st, persist| {
            let mut wait = false;
            let mut done = None;
            let m = st.window.on_pubrec_with(
                id,
                failed,
                |f| wait = persist.delivery_stage(f),
                // [MQTT-4.4.0-2] an error PUBREC completes the delivery.
                |f| done = Some(f),
            );
            if let Some(f) = done {
                st.complete(&f, persist);
            }
            (m, wait)
        })?;
        match outcome {
            // PUBREL goes out only once the Released stage is durable: the client forgets the
            // packet id at PUBREL, so after a crash the broker must resend PUBREL, never the
            // PUBLISH it would take for a new message (found by the simulation, tern-sim).
            PubRec::Released | PubRec::AlreadyReleased => {
                if wait {
                    host.ack_when_durable();
                }
                self.send(host, Packet::PubRel(Ack::new(id)));
            }
            PubRec::WrongQoS => return Err(violation(Violation::PubRecForQoS1(id))),
            PubRec::Completed => {}
            PubRec::Unknown if failed => {}
            PubRec::Unknown => {
                // [MQTT-4.3.3-4] / v5 0x92 for an identifier not in flight.
                let rel = match self.version.is_v5() {
                    true => Ack::with_reason(id, ReasonCode::PacketIdentifierNotFound),
                    false => Ack::new(id),
                };
                self.send(host, Packet::PubRel(rel));
            }
        }
        Ok(())
    }

    fn on_pubrel<H: ServerHost>(&mut self, id: PacketId, host: &mut H) -> Result<(), H::Close> {
        // [MQTT-4.3.3-11]: PUBCOMP, whether the identifier was known or not.
        let (found, wait) = host.with_state(|st, persist| {
            let found = st.inbound.on_pubrel(id);
            (found, found && persist.qos2_released(id))
        })?;
        if wait {
            host.ack_when_durable();
        }
        let reply = match found || !self.version.is_v5() {
            true => Ack::new(id),
            false => Ack::with_reason(id, ReasonCode::PacketIdentifierNotFound),
        };
        self.send(host, Packet::PubComp(reply));
        Ok(())
    }

    fn on_pubcomp<H: ServerHost>(&mut self, id: PacketId, host: &mut H) -> Result<(), H::Close> {
        let known = host.with_state(|st, persist| match st.window.on_pubcomp(id) {
            AckMatch::Completed(f) => {
                st.complete(&f, persist);
                true
            }
            _ => false,
        })?;
        if !known {
            host.note(Note::UnknownAck(id));
        }
        Ok(())
    }

    fn on_subscribe<H: ServerHost>(
        &mut self,
        now: Instant,
        s: Subscribe,
        host: &mut H,
    ) -> Result<(), H::Close> {
        let rules = &*self.rules;
        let sub_id = s.properties.subscription_identifier;
        if sub_id.is_some() && !rules.subscription_identifiers {
            return Err(violation(Violation::SubscriptionIdentifiersNotSupported));
        }
        let mut codes = Vec::with_capacity(s.filters.len());
        let mut retained = Vec::new();
        // Filters refused by the two limits: noted once per SUBSCRIBE, not per filter.
        let mut refused = (0usize, 0usize);
        for (filter, opts) in &s.filters {
            let parsed = match topic::parse_filter(filter) {
                Ok(p)
                    if topic::level_count(p.filter) <= rules.max_topic_levels
                        && filter.len() <= rules.max_topic_length =>
                {
                    p
                }
                _ => {
                    host.note(Note::InvalidFilter(filter));
                    codes.push(ReasonCode::TopicFilterInvalid);
                    continue;
                }
            };
            if parsed.share_group.is_some() && !rules.shared_subscriptions {
                codes.push(ReasonCode::SharedSubscriptionsNotSupported);
                continue;
            }
            let wild = topic::has_wildcards(parsed.filter);
            if wild && !rules.wildcard_subscriptions {
                codes.push(ReasonCode::WildcardSubscriptionsNotSupported);
                continue;
            }
            if !host.allows(Permission::Subscribe, parsed.filter) {
                // SUBACK 0x87 Not authorized (3.1.1: 0x80 Failure).
                host.note(Note::SubscribeDenied(filter));
                codes.push(rules.denied_subscription);
                continue;
            }
            let mut opts = *opts;
            opts.qos = opts.qos.min(rules.maximum_qos);
            if self.client.bridge && parsed.share_group.is_none() {
                // A bridge does not get back what it sent, and keeps RETAIN as published
                // (the 5.0 options a 3.x bridge cannot ask for).
                opts.no_local = true;
                opts.retain_as_published = true;
            }
            let (is_new, held, wildcards) = host.with_state(|st, _| {
                let subs = &st.subscriptions;
                (!subs.contains_key(filter), subs.len(), subs.wildcards())
            })?;
            // A new filter beyond a limit: SUBACK 0x97 Quota exceeded (3.1.1: 0x80 Failure) for
            // that filter alone, v5 [MQTT-3.8.4-7] / v3.1.1 [MQTT-3.8.4-5].
            if is_new && held >= rules.max_subscriptions {
                refused.0 += 1;
                codes.push(ReasonCode::QuotaExceeded);
                continue;
            }
            // Overlapping wildcard filters can all match one topic, and a publish costs a step
            // per matching filter: a client's wildcard filters are bounded apart.
            if is_new && wild && wildcards >= rules.max_wildcard_subscriptions {
                refused.1 += 1;
                codes.push(ReasonCode::QuotaExceeded);
                continue;
            }
            let Ok(existed) = host.subscribe(filter, parsed.share_group, opts, sub_id) else {
                codes.push(ReasonCode::QuotaExceeded);
                continue;
            };
            host.with_state(|st, _| st.subscriptions.insert(filter.to_string(), (opts, sub_id)))?;
            codes.push(ReasonCode::granted(opts.qos));
            // Retained messages are not sent for shared subscriptions (v5 section 4.8.2).
            let send = parsed.share_group.is_none()
                && match opts.retain_handling {
                    RetainHandling::SendAtSubscribe => true,
                    RetainHandling::SendIfNew => !existed,
                    RetainHandling::DoNotSend => false,
                };
            if send {
                retained.push((parsed.filter.to_string(), opts.qos));
            }
        }
        for (count, wildcard) in [(refused.0, false), (refused.1, true)] {
            if count > 0 {
                host.note(Note::SubscriptionsRefused { count, wildcard });
            }
        }
        let mut ack = SubAck {
            packet_id: s.packet_id,
            properties: Default::default(),
            reason_codes: codes,
        };
        if self.version.is_v5()
            && self.client.problem_information
            && ack.reason_codes.iter().any(|c| c.is_error())
        {
            ack.properties.reason_string = Some("one or more topic filters were refused".into());
        }
        host.subscriptions_changed();
        host.ack_when_durable();
        self.send(host, Packet::SubAck(ack));
        for (filter, qos) in retained {
            host.send_retained(&filter, qos, sub_id, now);
        }
        Ok(())
    }

    fn on_unsubscribe<H: ServerHost>(&mut self, u: Unsubscribe, host: &mut H) -> Result<(), H::Close> {
        let mut codes = Vec::with_capacity(u.filters.len());
        for filter in &u.filters {
            let existed = host.with_state(|st, _| st.subscriptions.remove(filter).is_some())?;
            host.unsubscribe(filter);
            codes.push(match existed {
                true => ReasonCode::Success,
                false => ReasonCode::NoSubscriptionExisted,
            });
        }
        host.subscriptions_changed();
        host.ack_when_durable();
        if !self.version.is_v5() {
            codes.clear();
        }
        self.send(
            host,
            Packet::UnsubAck(UnsubAck {
                packet_id: u.packet_id,
                properties: Default::default(),
                reason_codes: codes,
            }),
        );
        Ok(())
    }

    /// Re-authentication (v5 section 4.12.1).
    fn on_auth<H: ServerHost>(&mut self, a: Auth, host: &mut H) -> Result<(), H::Close> {
        let Some(method) = self.auth_method.as_deref().cloned() else {
            return Err(violation(Violation::AuthWithoutMethod { by: Role::Client }));
        };
        // The same method as in CONNECT (v5 [MQTT-4.12.0-5], [MQTT-4.12.1-1]).
        if a.properties.authentication_method.as_ref() != Some(&method) {
            return Err(violation(Violation::AuthMethodMismatch {
                expected: method,
                received: a.properties.authentication_method,
            }));
        }
        let data = a.properties.authentication_data.as_deref();
        let begin = match (a.reason_code, self.reauthenticating) {
            (Some(ReasonCode::ReAuthenticate), false) => true,
            (Some(ReasonCode::ContinueAuthentication), true) => false,
            (code, _) => {
                return Err(violation(Violation::UnexpectedAuthReasonCode {
                    code: code.unwrap_or(ReasonCode::Success),
                    by: Role::Client,
                }))
            }
        };
        let mut reply = Auth::default();
        match host.reauthenticate(&method, begin, data) {
            AuthAnswer::Continue(d) => {
                self.reauthenticating = true;
                reply.reason_code = Some(ReasonCode::ContinueAuthentication);
                reply.properties.authentication_data = Some(d);
            }
            AuthAnswer::Success(d) => {
                self.reauthenticating = false;
                reply.reason_code = Some(ReasonCode::Success);
                reply.properties.authentication_data = d;
            }
            AuthAnswer::Failure => return Err(SessionClose::NotAuthorized.into()),
        }
        reply.properties.authentication_method = Some(method);
        self.send(host, Packet::Auth(reply));
        Ok(())
    }

    fn on_disconnect<H: ServerHost>(&mut self, d: Disconnect, host: &mut H) -> SessionClose {
        if let Some(expiry) = d.properties.session_expiry_interval {
            // v5 section 3.14.2.2.2: a non-zero expiry after CONNECT said 0 is a Protocol Error.
            if self.client.session_expiry == 0 && expiry != 0 {
                return SessionClose::Violation(Violation::SessionExpiryAfterZero { expiry });
            }
            host.set_session_expiry(expiry.min(self.rules.max_session_expiry));
        }
        SessionClose::Disconnect {
            with_will: d.reason() == ReasonCode::DisconnectWithWill,
        }
    }

    fn aliases(&mut self, ours: u16) -> &mut Aliases {
        let clients = self.client.topic_alias_maximum;
        self.aliases.get_or_insert_with(|| {
            let mut a = Box::<Aliases>::default();
            a.inbound.reset(ours);
            a.outbound.reset(clients);
            a
        })
    }

    /// Prepare a delivery for this client: a topic alias when it allows them (the first
    /// use of a topic sends it with a new alias, later uses only the alias). Returns the
    /// alias this call set, to undo with [`ServerSession::unsent`] if the packet is not sent.
    pub fn outgoing(&mut self, p: &mut Publish) -> Option<u16> {
        if self.client.topic_alias_maximum == 0 {
            return None;
        }
        let ours = self.rules.topic_alias_maximum;
        match self.aliases(ours).outbound.assign(&p.topic) {
            AliasUse::None => None,
            AliasUse::Reuse(alias) => {
                p.properties.topic_alias = Some(alias);
                p.topic = ByteString::new();
                None
            }
            AliasUse::Set(alias) => {
                p.properties.topic_alias = Some(alias);
                Some(alias)
            }
        }
    }

    /// Whether an encoded packet of `len` bytes may go to the client ([MQTT-3.1.2-25]).
    pub fn fits(&self, len: usize) -> bool {
        len as u64 <= u64::from(self.client.max_packet_size)
    }

    /// A delivery prepared by [`ServerSession::outgoing`] was not sent: forget the alias it set.
    pub fn unsent(&mut self, alias: Option<u16>) {
        if let (Some(alias), Some(a)) = (alias, self.aliases.as_mut()) {
            a.outbound.forget(alias);
        }
    }

    /// Send `packet`, fitted to what the client accepts.
    #[inline(always)]
    fn send<H: ServerHost>(&self, host: &mut H, mut packet: Packet) {
        self.fit(&mut packet);
        host.transmit(&packet);
    }

    /// Make a packet fit what the client accepts: a Reason String or User Property the
    /// client's Maximum Packet Size has no room for is left out (v5 [MQTT-3.9.2-1],
    /// [MQTT-3.14.2-3] and the like).
    pub fn fit(&self, packet: &mut Packet) {
        if self.version.is_v5() && packet.has_diagnostics() {
            packet.fit_within(self.version, self.client.max_packet_size);
        }
    }

    /// A resumed session: its unacknowledged deliveries again, PUBLISH with DUP or PUBREL,
    /// in their original order ([MQTT-4.4.0-1]), once the stages they reached are durable.
    pub fn resume<H: ServerHost>(&mut self, now: Instant, host: &mut H) -> Result<(), H::Close> {
        let version = self.version;
        let (packets, wait) = host.with_state(|st, persist| {
            let packets: Vec<Packet> = st
                .window
                .iter()
                .map(|f| match f.stage {
                    Stage::Published => Packet::Publish(f.message.to_publish(version, Some(f.id), true, now)),
                    Stage::Released => Packet::PubRel(Ack::new(f.id)),
                })
                .collect();
            // The stages resent here may have been reached by the connection before this one
            // and not be durable yet: resend only once they are, or a crash could make the
            // broker resend a PUBLISH the client already released (found by tern-sim).
            (packets, persist.persistent() && !st.window.is_empty())
        })?;
        if wait {
            host.ack_when_durable();
        }
        for p in packets {
            self.send(host, p);
        }
        Ok(())
    }
}

fn violation<C: From<SessionClose>>(v: Violation) -> C {
    SessionClose::Violation(v).into()
}

#[cfg(test)]
#[path = "tests/server.rs"]
mod tests;
