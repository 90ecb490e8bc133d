//! Outgoing PUBLISH flow, for both roles: the in-flight [`Window`] (shared by the client
//! session and the server's [`super::server::ServerState`]) and, for the client, the queue of
//! messages waiting for room and the resend order when a session is resumed.
//!
//! ### Invariants
//! - A window is in the order the PUBLISH packets were first sent; that is the order they
//!   are resent in ([MQTT-4.6.0-1]).
//! - The caller never puts more than the send quota into a window ([MQTT-3.3.4-7],
//!   [MQTT-4.9.0-2]); QoS 0 messages never enter it.
//! - `pending` holds at most `max_pending` messages accepted from the
//!   application (messages taken back from `inflight` when a session is lost
//!   may go beyond it: they were accepted already and are bounded by the quota).

use std::collections::VecDeque;

use super::event::Token;
use crate::{PacketId, Publish, QoS};

/// Where an unacknowledged QoS 1/2 message stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// PUBLISH sent; waiting for PUBACK (QoS 1) or PUBREC (QoS 2).
    Published,
    /// QoS 2: PUBREC received and PUBREL sent; waiting for PUBCOMP.
    Released,
}

/// What a window needs to know of the messages it holds.
pub trait Deliverable {
    /// The QoS it was sent with (1 or 2).
    fn qos(&self) -> QoS;
}

/// One unacknowledged outgoing message.
#[derive(Debug, Clone)]
pub struct InFlight<M> {
    /// Its packet identifier.
    pub id: PacketId,
    /// Where its flow stands.
    pub stage: Stage,
    /// The message (for the client: its token and PUBLISH with the full topic, never an alias).
    pub message: M,
}

/// A message waiting to be sent.
#[derive(Debug, Clone)]
pub(crate) struct Queued {
    pub token: Token,
    pub publish: Publish,
    /// Sent with [`super::ClientSession::publish_as`]: the packet identifier is the
    /// caller's (kept when the message is sent again as new), and QoS 2 waits for
    /// [`super::ClientSession::release`] before PUBREL.
    pub relay: bool,
}

impl Deliverable for Queued {
    fn qos(&self) -> QoS {
        self.publish.qos
    }
}

/// How an acknowledgement matched the window.
#[derive(Debug)]
#[allow(
    clippy::large_enum_variant,
    reason = "returned, not stored: boxing would allocate per acknowledgement"
)]
pub enum AckMatch<M> {
    /// The flow is finished: the message left the window (returned by value: boxing it
    /// would cost an allocation per acknowledgement).
    Completed(InFlight<M>),
    /// PUBREC accepted: send PUBREL, wait for PUBCOMP.
    Released,
    /// PUBREC for a message already released: send PUBREL again.
    AlreadyReleased,
    /// The acknowledgement does not fit the message's QoS (PUBACK for QoS 2, PUBREC for QoS 1).
    WrongQoS,
    /// No message with this identifier is in flight at this stage.
    Unknown,
}

/// How a PUBREC matched the window (see [`Window::on_pubrec_with`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PubRec {
    /// An error PUBREC ended the flow: the message left the window.
    Completed,
    /// Accepted: send PUBREL, wait for PUBCOMP.
    Released,
    /// For a message already released: send PUBREL again.
    AlreadyReleased,
    /// The message is QoS 1.
    WrongQoS,
    /// No message with this identifier is in flight.
    Unknown,
}

/// Unacknowledged QoS 1/2 messages in the order they were first sent.
#[derive(Debug, Clone)]
pub struct Window<M> {
    inflight: VecDeque<InFlight<M>>,
}

impl<M> Default for Window<M> {
    fn default() -> Self {
        Window {
            inflight: VecDeque::new(),
        }
    }
}

impl<M: Deliverable> Window<M> {
    /// Give back the memory the window grew to beyond what is in flight.
    pub fn shrink(&mut self) {
        self.inflight.shrink_to_fit();
    }

    /// Unacknowledged messages.
    pub fn len(&self) -> usize {
        self.inflight.len()
    }

    /// Whether nothing is in flight.
    pub fn is_empty(&self) -> bool {
        self.inflight.is_empty()
    }

    /// Record a sent QoS 1/2 PUBLISH (or, when a session is restored, one at any stage).
    pub fn push(&mut self, f: InFlight<M>) {
        self.inflight.push_back(f);
    }

    /// The message in flight with `id`.
    pub fn get(&self, id: PacketId) -> Option<&InFlight<M>> {
        self.inflight.iter().find(|f| f.id == id)
    }

    fn position(&self, id: PacketId) -> Option<usize> {
        // Acknowledgements mostly come in the order the messages were sent: the oldest first.
        if self.inflight.front().is_some_and(|f| f.id == id) {
            return Some(0);
        }
        self.inflight.iter().position(|f| f.id == id)
    }

    /// Take the message with `id` out of the window, whatever its stage.
    pub fn remove(&mut self, id: PacketId) -> Option<InFlight<M>> {
        let i = self.position(id)?;
        self.inflight.remove(i)
    }

    fn complete(&mut self, i: usize) -> AckMatch<M> {
        match self.inflight.remove(i) {
            Some(f) => AckMatch::Completed(f),
            None => AckMatch::Unknown,
        }
    }

    /// PUBACK arrived.
    pub fn on_puback(&mut self, id: PacketId) -> AckMatch<M> {
        match self.position(id) {
            Some(i) if self.inflight[i].message.qos() == QoS::AtLeastOnce => self.complete(i),
            Some(_) => AckMatch::WrongQoS,
            None => AckMatch::Unknown,
        }
    }

    /// PUBREC arrived; `failed` when its reason code is 0x80 or above, which
    /// ends the flow ([MQTT-4.4.0-2]).
    pub fn on_pubrec(&mut self, id: PacketId, failed: bool) -> AckMatch<M> {
        let mut done = None;
        match self.on_pubrec_with(id, failed, |_| {}, |f| done = Some(f)) {
            PubRec::Completed => done.map_or(AckMatch::Unknown, AckMatch::Completed),
            PubRec::Released => AckMatch::Released,
            PubRec::AlreadyReleased => AckMatch::AlreadyReleased,
            PubRec::WrongQoS => AckMatch::WrongQoS,
            PubRec::Unknown => AckMatch::Unknown,
        }
    }

    /// PUBREC arrived, in one pass over the window: `released` is called with the message
    /// for [`PubRec::Released`] and [`PubRec::AlreadyReleased`], `completed` is given the
    /// message that left the window for [`PubRec::Completed`]. The answer is small (the
    /// message is not returned through it).
    pub fn on_pubrec_with(
        &mut self,
        id: PacketId,
        failed: bool,
        released: impl FnOnce(&InFlight<M>),
        completed: impl FnOnce(InFlight<M>),
    ) -> PubRec {
        let Some(i) = self.position(id) else {
            return PubRec::Unknown;
        };
        let f = &mut self.inflight[i];
        let r = match (f.message.qos(), f.stage) {
            (QoS::ExactlyOnce, Stage::Published) if failed => PubRec::Completed,
            (QoS::ExactlyOnce, Stage::Published) => {
                f.stage = Stage::Released;
                PubRec::Released
            }
            (QoS::ExactlyOnce, Stage::Released) => PubRec::AlreadyReleased,
            _ => PubRec::WrongQoS,
        };
        match r {
            PubRec::Released | PubRec::AlreadyReleased => released(&self.inflight[i]),
            PubRec::Completed => {
                if let Some(f) = self.inflight.remove(i) {
                    completed(f);
                }
            }
            _ => {}
        }
        r
    }

    /// PUBCOMP arrived.
    pub fn on_pubcomp(&mut self, id: PacketId) -> AckMatch<M> {
        match self.position(id) {
            Some(i) if self.inflight[i].stage == Stage::Released => self.complete(i),
            _ => AckMatch::Unknown,
        }
    }

    /// The in-flight messages in their original order, for a resumed session
    /// ([MQTT-4.4.0-1]).
    pub fn iter(&self) -> impl Iterator<Item = &InFlight<M>> {
        self.inflight.iter()
    }

    /// Take every message out, in order.
    pub fn drain(&mut self) -> impl Iterator<Item = InFlight<M>> + '_ {
        self.inflight.drain(..)
    }
}

/// The outgoing window and queue.
#[derive(Debug, Clone)]
pub(crate) struct Outbound {
    inflight: Window<Queued>,
    pending: VecDeque<Queued>,
    max_pending: usize,
}

impl Outbound {
    /// An empty window whose queue holds at most `max_pending` messages.
    pub(crate) fn new(max_pending: usize) -> Outbound {
        Outbound {
            inflight: Window::default(),
            pending: VecDeque::new(),
            max_pending: max_pending.max(1),
        }
    }

    /// Unacknowledged messages.
    pub(crate) fn inflight_len(&self) -> usize {
        self.inflight.len()
    }

    /// Messages waiting to be sent.
    pub(crate) fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// Whether another message from the application fits in the queue.
    pub(crate) fn has_room(&self) -> bool {
        self.pending.len() < self.max_pending
    }

    /// Queue a message behind the others.
    pub(crate) fn enqueue(&mut self, token: Token, publish: Publish, relay: bool) {
        self.pending.push_back(Queued {
            token,
            publish,
            relay,
        });
    }

    /// Take the next message if the window allows it: QoS 0 always, QoS 1/2
    /// while fewer than `quota` messages are in flight. Order is kept: a QoS 0
    /// message does not overtake a QoS 1 message waiting for room.
    pub(crate) fn next_sendable(&mut self, quota: usize) -> Option<Queued> {
        let front = self.pending.front()?;
        if front.publish.qos != QoS::AtMostOnce && self.inflight.len() >= quota {
            return None;
        }
        self.pending.pop_front()
    }

    /// Put a message back at the head of the queue (no identifier was free).
    pub(crate) fn unsend(&mut self, q: Queued) {
        self.pending.push_front(q);
    }

    /// Record a sent QoS 1/2 PUBLISH.
    pub(crate) fn push_inflight(&mut self, f: InFlight<Queued>) {
        self.inflight.push(f);
    }

    /// The in-flight window.
    pub(crate) fn window(&mut self) -> &mut Window<Queued> {
        &mut self.inflight
    }

    /// The in-flight messages in their original order, for a resumed session
    /// ([MQTT-4.4.0-1]).
    pub(crate) fn inflight(&self) -> impl Iterator<Item = &InFlight<Queued>> {
        self.inflight.iter()
    }

    /// The server has no session: every message still waiting for PUBACK or
    /// PUBREC goes back to the head of the queue, in order, to be sent as a new
    /// message; the messages already released are returned (their fate is
    /// unknown). The identifiers of both are returned for release.
    pub(crate) fn requeue_unacknowledged(&mut self) -> (Vec<PacketId>, Vec<InFlight<Queued>>) {
        let mut ids = Vec::with_capacity(self.inflight.len());
        let mut released = Vec::new();
        let mut again = Vec::new();
        for mut f in self.inflight.drain() {
            ids.push(f.id);
            match f.stage {
                Stage::Published => {
                    if !f.message.relay {
                        f.message.publish.packet_id = None;
                    }
                    f.message.publish.dup = false;
                    again.push(f.message);
                }
                Stage::Released => released.push(f),
            }
        }
        for q in again.into_iter().rev() {
            self.pending.push_front(q);
        }
        (ids, released)
    }

    /// Remove everything: the tokens of in-flight and queued messages.
    pub(crate) fn drain(&mut self) -> Vec<Token> {
        let mut tokens: Vec<Token> = self.inflight.drain().map(|f| f.message.token).collect();
        tokens.extend(self.pending.drain(..).map(|q| q.token));
        tokens
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publish(qos: QoS) -> Publish {
        let mut p = Publish::new("t", "x");
        p.qos = qos;
        p
    }

    fn pid(n: u16) -> PacketId {
        PacketId::new(n).unwrap()
    }

    fn send(o: &mut Outbound, quota: usize, id: u16) -> bool {
        match o.next_sendable(quota) {
            Some(q) => {
                o.push_inflight(InFlight {
                    id: pid(id),
                    stage: Stage::Published,
                    message: q,
                });
                true
            }
            None => false,
        }
    }

    #[test]
    fn window_respects_quota_and_keeps_order_mqtt_3_3_4_7() {
        // v5 [MQTT-3.3.4-7], v5 [MQTT-4.9.0-2]: no QoS>0 PUBLISH beyond the quota.
        let mut o = Outbound::new(10);
        o.enqueue(Token(1), publish(QoS::AtLeastOnce), false);
        o.enqueue(Token(2), publish(QoS::AtLeastOnce), false);
        o.enqueue(Token(3), publish(QoS::AtMostOnce), false);
        assert!(send(&mut o, 1, 1));
        // Quota 1 reached: the second QoS 1 waits and the QoS 0 behind it too.
        assert!(o.next_sendable(1).is_none());
        assert!(
            matches!(o.window().on_puback(pid(1)), AckMatch::Completed(f) if f.message.token == Token(1))
        );
        assert!(send(&mut o, 1, 2));
        assert_eq!(o.next_sendable(1).map(|q| q.token), Some(Token(3)));
    }

    #[test]
    fn qos2_flow_and_mismatched_acknowledgements() {
        let mut o = Outbound::new(10);
        o.enqueue(Token(1), publish(QoS::ExactlyOnce), false);
        o.enqueue(Token(2), publish(QoS::AtLeastOnce), false);
        assert!(send(&mut o, 10, 1));
        assert!(send(&mut o, 10, 2));
        assert!(matches!(o.window().on_puback(pid(1)), AckMatch::WrongQoS));
        assert!(matches!(o.window().on_pubrec(pid(2), false), AckMatch::WrongQoS));
        assert!(matches!(o.window().on_pubcomp(pid(1)), AckMatch::Unknown));
        assert!(matches!(o.window().on_pubrec(pid(1), false), AckMatch::Released));
        assert!(matches!(
            o.window().on_pubrec(pid(1), false),
            AckMatch::AlreadyReleased
        ));
        assert!(matches!(o.window().on_pubcomp(pid(1)), AckMatch::Completed(_)));
        assert!(matches!(o.window().on_puback(pid(9)), AckMatch::Unknown));
    }

    #[test]
    fn failed_pubrec_ends_the_flow_mqtt_4_4_0_2() {
        // v5 [MQTT-4.4.0-2]: a PUBREC of 0x80 or more ends the flow.
        let mut o = Outbound::new(10);
        o.enqueue(Token(1), publish(QoS::ExactlyOnce), false);
        assert!(send(&mut o, 10, 1));
        assert!(matches!(
            o.window().on_pubrec(pid(1), true),
            AckMatch::Completed(_)
        ));
        assert_eq!(o.inflight_len(), 0);
    }

    #[test]
    fn lost_session_requeues_in_order() {
        let mut o = Outbound::new(10);
        for t in 1..=3 {
            o.enqueue(Token(t), publish(QoS::ExactlyOnce), false);
        }
        for id in 1..=3 {
            assert!(send(&mut o, 10, id));
        }
        assert!(matches!(o.window().on_pubrec(pid(2), false), AckMatch::Released));
        o.enqueue(Token(4), publish(QoS::AtMostOnce), false);
        let (ids, released) = o.requeue_unacknowledged();
        assert_eq!(ids.len(), 3);
        assert_eq!(released.len(), 1);
        assert_eq!(released[0].message.token, Token(2));
        let order: Vec<Token> = std::iter::from_fn(|| o.next_sendable(10).map(|q| q.token)).collect();
        assert_eq!(order, vec![Token(1), Token(3), Token(4)]);
    }
}
