//! The broker's seam to other brokers: a [`Backplane`] hears what this broker's clients publish
//! and subscribe to, and brings messages from elsewhere in through
//! [`BrokerHandle::publish`](crate::BrokerHandle::publish).
//!
//! One node has none (the publish path then pays one branch). A cluster backend forwards
//! published messages to the other nodes and follows subscription interest to receive only
//! what local sessions want; a bridge does the same towards a remote broker.
//!
//! A backplane that stores QoS 1/2 messages (a cluster) holds their acknowledgements back
//! the way a [`Durability`](crate::Durability) does: it numbers what it was handed
//! ([`Backplane::submitted`]) and says how far that is stored ([`Backplane::progress`]); a
//! publisher's PUBACK/PUBREC goes out only once progress reaches the ticket taken after its
//! message was handed over, or the connection is closed (5.0: DISCONNECT 0x89 Server busy)
//! after [`Backplane::ack_timeout`].

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::durability::{Progress, Ticket};
use crate::message::Message;

/// A claim on a client's session ([`Backplane::claim`]): the session handed over by the
/// broker that held it ([`crate::HandOff::Moved`]), `None` when it starts here, or why the
/// client cannot connect now.
pub type Claim = Pin<Box<dyn Future<Output = Result<Option<bytes::Bytes>, String>> + Send>>;

/// How far back the messages a session holds (queued, or sent and not acknowledged) go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Held {
    /// It holds none.
    Nothing,
    /// The oldest reached this broker then ([`Message::arrived`], or a client's PUBLISH).
    Since(std::time::Instant),
    /// Some of them have no time but their place in the backplane's store
    /// ([`Message::placed_at`]): the oldest arrival of the others (`since`), and for each
    /// shard that holds some of them the lowest sequence (`lowest`, one entry per shard).
    Placed {
        /// When the oldest of those with an arrival time reached this broker.
        since: Option<std::time::Instant>,
        /// (shard, lowest sequence held).
        lowest: Vec<(u16, u64)>,
    },
    /// Some of them have neither (they came from this broker's store, or from another
    /// broker without a place).
    Unknown,
}

/// Which QoS 0 message of which connection ([`Backplane::published_qos0`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sent {
    /// The connection's id on this broker (unique while the broker runs).
    pub conn_id: u64,
    /// How many QoS 0 messages the connection has handed over, this one included.
    pub count: u64,
}

/// A connection asks whether the backplane is congested ([`Backplane::congested`]) after
/// every this many of its QoS 0 messages: it goes fewer than this many past a full queue.
pub const QOS0_ASK_EVERY: u64 = 8;

/// A figure a backplane keeps, for the broker's metrics endpoint (`/metrics`, as
/// `tern_<name>`, or `tern_<name>_total` for a counter).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Figure {
    /// The metric's name after `tern_`, in Prometheus' style (`cluster_stored`).
    pub name: &'static str,
    /// One line that says what it counts (written as it is: no `\` and no line break).
    pub help: &'static str,
    /// A counter (only rises) rather than a gauge.
    pub counter: bool,
    /// Its value now.
    pub value: u64,
}

/// Where messages and subscriptions go beyond this broker. Called synchronously, on the
/// publishing or subscribing connection's task: an implementation hands the work to its own
/// tasks (through a bounded queue) and never blocks.
pub trait Backplane: Send + Sync + std::fmt::Debug {
    /// A client of this broker published `message` (a will included), after it was routed
    /// to the local sessions. Not called for messages that came in through
    /// [`BrokerHandle::publish`](crate::BrokerHandle::publish), nor for `$SYS` statistics.
    fn published(&self, message: &Arc<Message>);

    /// Like [`Backplane::published`], for a QoS 0 message of a client's connection, numbered
    /// by `sent`: a backplane with flow control carries the number along, so that a broker
    /// whose subscribers cannot keep up can say how far the connection may go
    /// ([`Backplane::holds_back`]). Default: [`Backplane::published`].
    fn published_qos0(&self, message: &Arc<Message>, sent: Sent) {
        let _ = sent;
        self.published(message);
    }

    /// [`Backplane::published_qos0`] for several messages at once, in their order (those a
    /// connection decoded from one read, none of them retained); leaves `batch` empty.
    /// Default: one call each.
    fn published_qos0_all(&self, batch: &mut Vec<(Arc<Message>, Sent)>) {
        for (message, sent) in batch.drain(..) {
            self.published_qos0(&message, sent);
        }
    }

    /// Whether the connection that has handed over `sent` QoS 0 messages is to stop reading
    /// its client for now, because subscribers of its messages elsewhere have no room for
    /// more, as one broker holds a publisher back for a full queue (default `false`). Asked
    /// after each of its QoS 0 messages that reaches [`Backplane::holds_from`], and every
    /// few milliseconds while it holds.
    fn holds_back(&self, sent: Sent) -> bool {
        let _ = sent;
        false
    }

    /// The lowest count at which [`Backplane::holds_back`] may hold connection `conn_id`
    /// back, as far as is known now (`u64::MAX`: not at all). A connection keeps the answer
    /// while [`Backplane::holds_epoch`] stays the same, and asks `holds_back` only from that
    /// count (default 0: after every message).
    fn holds_from(&self, conn_id: u64) -> u64 {
        let _ = conn_id;
        0
    }

    /// A number that changes whenever an answer of [`Backplane::holds_from`] may no longer
    /// stand (default: never).
    fn holds_epoch(&self) -> u64 {
        0
    }

    /// The operator deleted the retained message of `topic` on this broker (the admin API):
    /// delete it everywhere, without sending a message (default: nothing).
    fn retained_deleted(&self, topic: &str) {
        let _ = topic;
    }

    /// A session of this broker subscribed to `filter` (the full filter, with the
    /// `$share/GROUP/` prefix of a shared subscription).
    fn subscribed(&self, filter: &str);

    /// A session of this broker no longer subscribes to `filter` (unsubscribed, or its
    /// session ended).
    fn unsubscribed(&self, filter: &str);

    /// How far the QoS 1/2 messages handed to [`Backplane::published`] are stored, when
    /// acknowledgements must wait for it (default `None`: they do not).
    fn progress(&self) -> Option<&Progress> {
        None
    }

    /// The ticket of the last message handed over so far, in the numbering of
    /// [`Backplane::progress`]; it never goes down.
    fn submitted(&self) -> Ticket {
        0
    }

    /// Whether the backplane delivers the messages of shared subscriptions itself, so that a
    /// group with members on several brokers gets each message once (default `false`: each
    /// broker picks one of its own members). When `true`, the broker's routing leaves shared
    /// subscriptions out, and the backplane hands each message to one member through
    /// [`Admin::deliver_shared`](crate::Admin::deliver_shared).
    fn delivers_shared(&self) -> bool {
        false
    }

    /// Longest wait for [`Backplane::progress`] before the publisher is disconnected.
    fn ack_timeout(&self) -> Duration {
        Duration::from_secs(10)
    }

    /// Whether what is handed over waits beyond what the backplane can keep up with (its
    /// queue to other brokers nearly full): a connection that has just published a QoS 0
    /// message stops reading its client while this holds, as it does for a full
    /// subscriber's queue, rather than have the backplane drop messages (default `false`).
    fn congested(&self) -> bool {
        false
    }

    /// The connection `conn_id` of `client_id` has a will (`delay_secs`: its Will Delay
    /// Interval): kept elsewhere, another node can publish it if this broker dies with the
    /// connection open (default: nothing).
    fn will_armed(&self, client_id: &str, conn_id: u64, will: &Arc<Message>, delay_secs: u32) {
        let _ = (client_id, conn_id, will, delay_secs);
    }

    /// The will of connection `conn_id` of `client_id` no longer waits on this broker's
    /// death: the connection ended and this broker published it, scheduled it or discarded
    /// it (not called when the broker shuts down with the connection open).
    fn will_disarmed(&self, client_id: &str, conn_id: u64) {
        let _ = (client_id, conn_id);
    }

    /// A client connects with `client_id` (after authentication, before its session is
    /// attached): make this broker the one that holds its session, taking it from whichever
    /// broker held it, whose connection is told it was taken over. `None` (the default): the
    /// session is this broker's alone. The CONNACK waits for the claim; an error refuses the
    /// connection (5.0: 0x88 Server unavailable).
    fn claim(&self, client_id: &str, clean_start: bool) -> Option<Claim> {
        let _ = (client_id, clean_start);
        None
    }

    /// The claim [`Backplane::claim`] started is over: called once for every claim, after the
    /// session is attached here or when the connection is refused. After a handover the
    /// broker that handed the session over removes it and sends what reached it there
    /// meanwhile ([`crate::Admin::hand_over_rest`]), which goes into its queue after what
    /// came first. Default: nothing more.
    fn claimed(&self, client_id: &str) -> Option<Claim> {
        let _ = client_id;
        None
    }

    /// The session of `client_id` ended on this broker (expired, clean start, or with its
    /// connection when its expiry is 0); not called when it was handed to another broker.
    fn session_ended(&self, client_id: &str) {
        let _ = client_id;
    }

    /// The durable part of the session of `client_id`, which outlives its connection, as it
    /// stands now (at CONNECT, when its subscriptions change, and when its connection ends:
    /// `offline`), and how far back the messages it holds undelivered or unacknowledged go.
    /// Not called for sessions that end with their connection. `awaited`: an acknowledgement
    /// (SUBACK, UNSUBACK) waits until it is kept; the backplane then returns a ticket, and
    /// the acknowledgement goes out once [`Backplane::sessions_progress`] reaches it (or the
    /// connection is closed, 5.0 0x89, after [`Backplane::ack_timeout`]).
    fn session_saved(
        &self,
        client_id: &str,
        snapshot: &crate::durability::SessionSnapshot,
        offline: bool,
        held: Held,
        awaited: bool,
    ) -> Option<Ticket> {
        let _ = (client_id, snapshot, offline, held, awaited);
        None
    }

    /// How far the session changes that [`Backplane::session_saved`] gave tickets for are
    /// kept (default `None`: nothing waits for them).
    fn sessions_progress(&self) -> Option<&Progress> {
        None
    }

    /// Whether the change of `ticket` is written or given up, whatever came before it: an
    /// acknowledgement waits for its own connection's ticket, not for every earlier one of
    /// the node (one client's slow write would hold up every other client's SUBACK). A
    /// backplane whose writes of one client are made one after another, each with the
    /// client's whole state, says so per ticket, and advances [`Backplane::sessions_progress`]
    /// (or wakes its waiters) at each. Default: the progress reached it.
    fn session_done(&self, ticket: Ticket) -> bool {
        self.sessions_progress().is_none_or(|p| p.get() >= ticket)
    }

    /// Whether the change a ticket of [`Backplane::session_saved`] or
    /// [`Backplane::qos2_stage`] stands for was kept, once [`Backplane::sessions_progress`]
    /// reached it, or [`Backplane::session_done`] says it is (it may have been given up: the
    /// backplane could not write it). Asked once
    /// per ticket; when `false`, what waited for it is not sent and the connection is closed
    /// (5.0: DISCONNECT 0x89 Server busy). Default `true`.
    fn session_kept(&self, ticket: Ticket) -> bool {
        let _ = ticket;
        true
    }

    /// A connection was attached to the session of `client_id` (after its claim): the
    /// first packets written to it (the CONNACK and the deliveries it resends) wait for the
    /// returned ticket ([`Backplane::sessions_progress`], [`Backplane::session_kept`]).
    /// Default `None`.
    fn session_attached(&self, client_id: &str) -> Option<Ticket> {
        let _ = client_id;
        None
    }

    /// What the backplane counts, for the metrics endpoint (default: nothing). Read when the
    /// endpoint is scraped, off the publish path.
    fn figures(&self) -> Vec<Figure> {
        Vec::new()
    }

    /// Whether the backplane keeps the QoS 2 deliveries in flight of the sessions that
    /// outlive their connection, so that another broker taking a session over resumes them
    /// with their packet identifiers (default `false`; then the `qos2_*` methods are never
    /// called).
    fn keeps_qos2(&self) -> bool {
        false
    }

    /// A QoS 2 delivery of `message` to the session of `client_id` reached a stage: sent
    /// with `packet_id` (`released` false), or its PUBREL is about to go out (`released`).
    /// Called under the session's lock, before the packet is written; the packet waits for
    /// the returned ticket ([`Backplane::sessions_progress`]), so that a client never holds
    /// a packet identifier the backplane does not know of: after this broker's death, the
    /// broker that takes the session over resends the PUBLISH or PUBREL with that identifier
    /// [MQTT-4.4.0-1], rather than use it for another message, which the client would take
    /// for a duplicate and drop.
    fn qos2_stage(
        &self,
        client_id: &str,
        packet_id: u16,
        released: bool,
        message: &Arc<Message>,
    ) -> Option<Ticket> {
        let _ = (client_id, packet_id, released, message);
        None
    }

    /// The QoS 2 delivery of `packet_id` to the session of `client_id` is finished (PUBCOMP
    /// came, or it was given up); nothing waits for this.
    fn qos2_done(&self, client_id: &str, packet_id: u16) {
        let _ = (client_id, packet_id);
    }

    /// The session of `client_id` came to this broker (from another one, or from its store)
    /// with these QoS 2 deliveries in flight (packet id, released, message) and these
    /// incoming QoS 2 packet ids awaiting PUBREL: what the backplane knew of the session's
    /// QoS 2 state is replaced by them (before a claim of the session ends,
    /// [`Backplane::claimed`], when it came with one).
    fn qos2_resumed(&self, client_id: &str, in_flight: &[(u16, bool, Arc<Message>)], incoming: &[u16]) {
        let _ = (client_id, in_flight, incoming);
    }

    /// The client of `client_id`, whose session outlives its connection, published a QoS 2
    /// message with `packet_id`, which now awaits its PUBREL. Called under the session's lock
    /// (so that a handover of the session sees the id and the backplane's record of it
    /// together), before the message is made: the backplane returns the marks the message
    /// will carry ([`crate::BackplaneMark`]: its id, and the ticket its store waits for,
    /// [`crate::BackplaneMark::hold_until`]) and a ticket the PUBREC waits for
    /// ([`Backplane::sessions_progress`]; when it was not kept, [`Backplane::session_kept`],
    /// the connection is closed instead, 5.0: 0x89). So the backplane keeps the packet id
    /// with the message's id before it stores the message, and after this broker's death
    /// the broker taking the session over knows whether a resent PUBLISH is one it has (not
    /// to be delivered twice, v5 [MQTT-4.3.3-10]) or one it must store.
    fn qos2_received(&self, client_id: &str, packet_id: u16) -> Option<(Arc<crate::BackplaneMark>, Ticket)> {
        let _ = (client_id, packet_id);
        None
    }

    /// A PUBREL came for the incoming QoS 2 `packet_id` of the session of `client_id` (see
    /// [`Backplane::qos2_received`]): the PUBCOMP waits for the returned ticket
    /// ([`Backplane::sessions_progress`], [`Backplane::session_kept`]), so that the client
    /// never uses the id for a new message that another broker would take for a resend.
    fn qos2_released(&self, client_id: &str, packet_id: u16) -> Option<Ticket> {
        let _ = (client_id, packet_id);
        None
    }
}
