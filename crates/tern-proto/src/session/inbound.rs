//! Incoming QoS 2 messages awaiting PUBREL: exactly-once delivery to the
//! application (v5 section 4.3.3, 3.1.1 section 4.3.3 "Method B").
//!
//! A QoS 2 PUBLISH is delivered when it first arrives and its identifier is
//! remembered until PUBREL; a PUBLISH with a remembered identifier is answered
//! with PUBREC again but not delivered again ([MQTT-4.3.3-10]).
//!
//! ### Invariants
//! - At most `limit` identifiers are held (our Receive Maximum): a server that
//!   sends more unreleased QoS 2 messages breaks section 4.9 and is disconnected
//!   with 0x93, so memory stays bounded.

use crate::PacketId;

/// What to do with an incoming QoS 2 PUBLISH.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Qos2Arrival {
    /// New message: deliver it and answer PUBREC.
    Deliver,
    /// A retransmission (DUP=1) of a message already delivered: PUBREC only.
    Duplicate,
    /// DUP=0 with an identifier still awaiting PUBREL: the server reused an
    /// identifier in use; PUBREC 0x91 in 5.0, no delivery.
    IdInUse,
    /// More unreleased messages than our Receive Maximum.
    QuotaExceeded,
}

/// Identifiers of incoming QoS 2 messages delivered and not yet released.
#[derive(Debug, Clone)]
pub(crate) struct Inbound {
    /// Fx hashing: no per-set random state (a server keeps one set per session) and a
    /// reproducible order.
    awaiting_rel: rustc_hash::FxHashSet<PacketId>,
    limit: u16,
}

impl Inbound {
    /// Give back the memory the set grew to.
    pub(crate) fn shrink(&mut self) {
        self.awaiting_rel.shrink_to_fit();
    }

    /// Hold at most `limit` unreleased identifiers.
    pub(crate) fn new(limit: u16) -> Inbound {
        Inbound {
            awaiting_rel: rustc_hash::FxHashSet::default(),
            limit: limit.max(1),
        }
    }

    /// Classify an incoming QoS 2 PUBLISH and remember it when it is new.
    pub(crate) fn on_publish(&mut self, id: PacketId, dup: bool) -> Qos2Arrival {
        if self.awaiting_rel.contains(&id) {
            return if dup {
                Qos2Arrival::Duplicate
            } else {
                Qos2Arrival::IdInUse
            };
        }
        if self.awaiting_rel.len() >= usize::from(self.limit) {
            return Qos2Arrival::QuotaExceeded;
        }
        self.awaiting_rel.insert(id);
        Qos2Arrival::Deliver
    }

    /// PUBREL arrived: forget `id`; `false` when it was not known.
    pub(crate) fn on_pubrel(&mut self, id: PacketId) -> bool {
        self.awaiting_rel.remove(&id)
    }

    /// An identifier read back from a stored session (beyond the limit if need be: it was
    /// accepted under the limit in force then).
    pub(crate) fn restore(&mut self, id: PacketId) {
        self.awaiting_rel.insert(id);
    }

    /// Forget everything (no session on the server).
    pub(crate) fn clear(&mut self) {
        self.awaiting_rel.clear();
    }

    /// The identifiers held, in increasing order.
    pub(crate) fn ids(&self) -> Vec<PacketId> {
        let mut ids: Vec<PacketId> = self.awaiting_rel.iter().copied().collect();
        ids.sort_unstable();
        ids
    }

    /// How many identifiers are held.
    pub(crate) fn len(&self) -> usize {
        self.awaiting_rel.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pid(n: u16) -> PacketId {
        PacketId::new(n).unwrap()
    }

    #[test]
    fn delivered_once_until_pubrel_mqtt_4_3_3_10() {
        // v5 [MQTT-4.3.3-10] / v3.1.1 [MQTT-4.3.3-2]: a repeat before PUBREL is not delivered again.
        let mut i = Inbound::new(10);
        assert_eq!(i.on_publish(pid(1), false), Qos2Arrival::Deliver);
        assert_eq!(i.on_publish(pid(1), true), Qos2Arrival::Duplicate);
        assert_eq!(i.on_publish(pid(1), false), Qos2Arrival::IdInUse);
        assert!(i.on_pubrel(pid(1)));
        assert!(!i.on_pubrel(pid(1)));
        // v5 [MQTT-4.3.3-12] after PUBCOMP the identifier starts a new publication.
        assert_eq!(i.on_publish(pid(1), false), Qos2Arrival::Deliver);
    }

    #[test]
    fn bounded_by_receive_maximum() {
        let mut i = Inbound::new(2);
        assert_eq!(i.on_publish(pid(1), false), Qos2Arrival::Deliver);
        assert_eq!(i.on_publish(pid(2), false), Qos2Arrival::Deliver);
        assert_eq!(i.on_publish(pid(3), false), Qos2Arrival::QuotaExceeded);
        assert_eq!(i.len(), 2);
    }
}
