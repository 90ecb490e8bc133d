//! Packet identifier allocation for the packets a client sends.
//!
//! PUBLISH (QoS > 0), SUBSCRIBE and UNSUBSCRIBE share one identifier space: a
//! new packet gets an identifier that no unacknowledged packet holds
//! (v5 [MQTT-2.2.1-3], 3.1.1 [MQTT-2.3.1-2]).
//!
//! ### Invariants
//! - An identifier handed out by [`PacketIds::allocate`] is never handed out
//!   again until [`PacketIds::release`] is called for it.
//! - Memory is fixed: one bit per identifier (8 KiB).

use crate::PacketId;

const WORDS: usize = 65536 / 64;

/// The set of identifiers in use, with a rotating cursor so that a released
/// identifier is not reused immediately.
#[derive(Clone)]
pub(crate) struct PacketIds {
    used: Box<[u64; WORDS]>,
    in_use: usize,
    cursor: u16,
}

impl std::fmt::Debug for PacketIds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PacketIds")
            .field("in_use", &self.in_use)
            .field("cursor", &self.cursor)
            .finish()
    }
}

impl Default for PacketIds {
    fn default() -> Self {
        PacketIds {
            used: Box::new([0; WORDS]),
            in_use: 0,
            cursor: 0,
        }
    }
}

impl PacketIds {
    fn bit(id: u16) -> (usize, u64) {
        (usize::from(id) / 64, 1u64 << (id % 64))
    }

    /// Whether `id` is held by an unacknowledged packet.
    #[cfg(test)]
    pub(crate) fn contains(&self, id: PacketId) -> bool {
        let (w, b) = Self::bit(id.get());
        self.used[w] & b != 0
    }

    /// How many identifiers are in use.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.in_use
    }

    /// A free identifier, marked as used; `None` when all 65,535 are taken.
    pub(crate) fn allocate(&mut self) -> Option<PacketId> {
        if self.in_use >= usize::from(u16::MAX) {
            return None;
        }
        let mut id = self.cursor;
        loop {
            id = id.wrapping_add(1);
            if id == 0 {
                id = 1;
            }
            let (w, b) = Self::bit(id);
            if self.used[w] & b == 0 {
                self.used[w] |= b;
                self.in_use += 1;
                self.cursor = id;
                return PacketId::new(id);
            }
        }
    }

    /// Free `id` for reuse.
    pub(crate) fn release(&mut self, id: PacketId) {
        let (w, b) = Self::bit(id.get());
        if self.used[w] & b != 0 {
            self.used[w] &= !b;
            self.in_use -= 1;
        }
    }

    /// Free every identifier.
    pub(crate) fn clear(&mut self) {
        self.used.fill(0);
        self.in_use = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_hands_out_an_identifier_in_use_mqtt_2_2_1_3() {
        // v5 [MQTT-2.2.1-3] / v3.1.1 [MQTT-2.3.1-2]: never an identifier in use, never 0.
        let mut ids = PacketIds::default();
        let a = ids.allocate().unwrap();
        let b = ids.allocate().unwrap();
        assert_ne!(a, b);
        assert!(ids.contains(a) && ids.contains(b));
        ids.release(a);
        assert!(!ids.contains(a));
        assert_eq!(ids.len(), 1);
    }

    #[test]
    fn exhaustion_and_wrap_around() {
        let mut ids = PacketIds::default();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..65535 {
            let id = ids.allocate().unwrap();
            assert!(seen.insert(id.get()), "{id} handed out twice");
        }
        assert_eq!(ids.allocate(), None);
        let freed = PacketId::new(40_000).unwrap();
        ids.release(freed);
        assert_eq!(ids.allocate(), Some(freed));
        ids.clear();
        assert_eq!(ids.len(), 0);
        assert!(ids.allocate().is_some());
    }
}
