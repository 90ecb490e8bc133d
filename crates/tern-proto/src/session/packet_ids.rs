//! Packet identifier allocation, for both roles: the packets a client sends, and the
//! deliveries of a server session.
//!
//! PUBLISH (QoS > 0), SUBSCRIBE and UNSUBSCRIBE share one identifier space: a
//! new packet gets an identifier that no unacknowledged packet holds
//! (v5 [MQTT-2.2.1-3], 3.1.1 [MQTT-2.3.1-2]).
//!
//! ### Invariants
//! - An identifier handed out by [`PacketIds::allocate`] is never handed out
//!   again until [`PacketIds::release`] is called for it.
//! - Memory follows use: nothing while no identifier is in use, a small hash set while
//!   few are (an in-flight window is 100 by default: a server holds one set per
//!   session, and an idle one must stay small), one bit per identifier (8 KiB) once
//!   more than [`FEW`] are. Both answer in constant time.

use crate::PacketId;

const WORDS: usize = 65536 / 64;

/// Most identifiers kept in the hash set before the set becomes a bitmap.
const FEW: usize = 256;

#[derive(Clone)]
enum Used {
    /// The identifiers in use (at most [`FEW`]).
    Few(rustc_hash::FxHashSet<u16>),
    /// One bit per identifier.
    Many(Box<[u64; WORDS]>),
}

/// The set of identifiers in use, with a rotating cursor so that a released
/// identifier is not reused immediately.
#[derive(Clone)]
pub(crate) struct PacketIds {
    used: Used,
    in_use: u32,
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

impl PacketIds {
    /// Give back the memory of the set when no identifier is in use (the cursor stays).
    pub(crate) fn shrink(&mut self) {
        if self.in_use == 0 {
            self.used = Used::Few(Default::default());
        }
    }
}

impl Default for PacketIds {
    fn default() -> Self {
        PacketIds {
            used: Used::Few(Default::default()),
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
        let id = id.get();
        match &self.used {
            Used::Few(v) => v.contains(&id),
            Used::Many(bits) => {
                let (w, b) = Self::bit(id);
                bits[w] & b != 0
            }
        }
    }

    /// How many identifiers are in use.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.in_use as usize
    }

    /// Mark `id` as used (a restored session's deliveries); `false` when it already was.
    pub(crate) fn insert(&mut self, id: PacketId) -> bool {
        if let Used::Few(v) = &self.used {
            if v.len() >= FEW && !v.contains(&id.get()) {
                let mut bits = Box::new([0u64; WORDS]);
                for &i in v {
                    let (w, b) = Self::bit(i);
                    bits[w] |= b;
                }
                self.used = Used::Many(bits);
            }
        }
        let fresh = match &mut self.used {
            Used::Few(v) => v.insert(id.get()),
            Used::Many(bits) => {
                let (w, b) = Self::bit(id.get());
                let fresh = bits[w] & b == 0;
                bits[w] |= b;
                fresh
            }
        };
        self.in_use += u32::from(fresh);
        fresh
    }

    /// A free identifier, marked as used; `None` when all 65,535 are taken.
    pub(crate) fn allocate(&mut self) -> Option<PacketId> {
        if self.in_use >= u32::from(u16::MAX) {
            return None;
        }
        let mut id = self.cursor;
        loop {
            id = id.wrapping_add(1);
            let Some(pid) = PacketId::new(id) else {
                continue;
            };
            if self.insert(pid) {
                self.cursor = id;
                return Some(pid);
            }
        }
    }

    /// Free `id` for reuse.
    pub(crate) fn release(&mut self, id: PacketId) {
        let id = id.get();
        match &mut self.used {
            Used::Few(v) => {
                if v.remove(&id) {
                    self.in_use -= 1;
                    // A burst's table is given back once it is over.
                    if v.is_empty() && v.capacity() > 16 {
                        *v = Default::default();
                    }
                }
            }
            Used::Many(bits) => {
                let (w, b) = Self::bit(id);
                if bits[w] & b != 0 {
                    bits[w] &= !b;
                    self.in_use -= 1;
                }
            }
        }
    }

    /// Free every identifier (and the memory that held them).
    pub(crate) fn clear(&mut self) {
        self.used = Used::Few(Default::default());
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

    #[test]
    fn list_and_bitmap_agree() {
        // Across the switch from the short list to the bitmap, and with releases in between.
        let mut ids = PacketIds::default();
        let mut model = std::collections::BTreeSet::new();
        for round in 0..3 * FEW {
            let id = ids.allocate().unwrap();
            assert!(model.insert(id.get()), "{id} handed out twice");
            if round % 3 == 0 {
                let gone = *model.iter().next().unwrap();
                model.remove(&gone);
                ids.release(PacketId::new(gone).unwrap());
            }
            assert_eq!(ids.len(), model.len());
        }
        for i in 1..=u16::MAX {
            assert_eq!(ids.contains(PacketId::new(i).unwrap()), model.contains(&i));
        }
        assert!(!ids.insert(PacketId::new(*model.iter().next().unwrap()).unwrap()));
    }
}
