//! MQTT 5.0 topic aliases (section 3.3.2.3.4), both directions, for either side of a
//! connection: the client's session and the broker's connections use these same types.
//!
//! Mappings live for one network connection only ([MQTT-3.3.2-7]): both maps
//! are reset on every new connection.
//!
//! ### Invariants
//! - Inbound: at most `maximum` entries, keys in `1..=maximum`.
//! - Outbound: at most `maximum` entries; a topic has at most one alias; when
//!   all aliases are taken the least recently used one is reassigned.

use std::collections::HashMap;

use bytestring::ByteString;

/// Why an inbound PUBLISH's topic alias cannot be resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AliasError {
    /// Above the Topic Alias Maximum we sent in CONNECT ([MQTT-3.3.2-11], [MQTT-3.3.2-10]).
    AboveMaximum,
    /// An empty topic with an alias that was never mapped on this connection.
    Unknown,
}

/// Aliases the peer set for topics it sends us.
#[derive(Debug, Clone, Default)]
pub struct InboundAliases {
    maximum: u16,
    map: HashMap<u16, ByteString>,
}

impl InboundAliases {
    /// Forget every mapping; accept aliases `1..=maximum` from now on.
    pub fn reset(&mut self, maximum: u16) {
        self.maximum = maximum;
        self.map.clear();
    }

    /// The topic `alias` stands for now, without learning anything.
    pub fn peek(&self, alias: u16) -> Option<&ByteString> {
        self.map.get(&alias)
    }

    /// The topic a PUBLISH stands for, learning a new mapping when the topic is given (a
    /// caller that keeps received packets' buffers short-lived passes a copy that owns its
    /// bytes: the mapping outlives the packet).
    pub fn resolve(&mut self, topic: &ByteString, alias: u16) -> Result<ByteString, AliasError> {
        if alias == 0 || alias > self.maximum {
            return Err(AliasError::AboveMaximum);
        }
        if topic.is_empty() {
            self.map.get(&alias).cloned().ok_or(AliasError::Unknown)
        } else {
            self.map.insert(alias, topic.clone());
            Ok(topic.clone())
        }
    }
}

/// How an outgoing PUBLISH uses an alias.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AliasUse {
    /// No alias: send the topic.
    None,
    /// Send the topic and this alias, which from now on stands for it.
    Set(u16),
    /// Send an empty topic and this alias.
    Reuse(u16),
}

/// Aliases we assign for topics we send (up to the peer's Topic Alias Maximum,
/// [MQTT-3.3.2-9], [MQTT-3.2.2-17], [MQTT-3.1.2-26]).
#[derive(Debug, Clone, Default)]
pub struct OutboundAliases {
    maximum: u16,
    by_topic: HashMap<ByteString, u16>,
    /// Index `alias - 1`: the topic and the tick at which it was last used.
    slots: Vec<(ByteString, u64)>,
    tick: u64,
}

impl OutboundAliases {
    /// Forget every mapping; use aliases `1..=maximum` (0 disables them).
    pub fn reset(&mut self, maximum: u16) {
        self.maximum = maximum;
        self.by_topic.clear();
        self.slots.clear();
        self.tick = 0;
    }

    /// Undo the [`AliasUse::Set`] of `alias` whose PUBLISH was not sent after all (too large
    /// for the peer, say): the peer never learnt it, so it is free again and its topic has
    /// none.
    pub fn forget(&mut self, alias: u16) {
        let Some(slot) = usize::from(alias)
            .checked_sub(1)
            .and_then(|i| self.slots.get_mut(i))
        else {
            return;
        };
        let topic = std::mem::take(&mut slot.0);
        // Tick 0: the least recently used of all, so the next new topic takes it.
        slot.1 = 0;
        if self.by_topic.get(&topic) == Some(&alias) {
            self.by_topic.remove(&topic);
        }
    }

    /// Pick the alias for `topic`.
    pub fn assign(&mut self, topic: &ByteString) -> AliasUse {
        if self.maximum == 0 || topic.is_empty() {
            return AliasUse::None;
        }
        self.tick += 1;
        if let Some(&alias) = self.by_topic.get(topic) {
            if let Some(slot) = self.slots.get_mut(usize::from(alias) - 1) {
                slot.1 = self.tick;
            }
            return AliasUse::Reuse(alias);
        }
        let alias = if self.slots.len() < usize::from(self.maximum) {
            self.slots.push((topic.clone(), self.tick));
            self.slots.len()
        } else {
            // Reassign the least recently used alias.
            let Some((i, _)) = self.slots.iter().enumerate().min_by_key(|(_, s)| s.1) else {
                return AliasUse::None;
            };
            let old = std::mem::replace(&mut self.slots[i], (topic.clone(), self.tick));
            self.by_topic.remove(&old.0);
            i + 1
        };
        let Ok(alias) = u16::try_from(alias) else {
            return AliasUse::None;
        };
        self.by_topic.insert(topic.clone(), alias);
        AliasUse::Set(alias)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inbound_learns_resolves_and_refuses() {
        let mut a = InboundAliases::default();
        a.reset(2);
        let t: ByteString = "a/b".into();
        let empty = ByteString::new();
        assert_eq!(a.resolve(&t, 1), Ok(t.clone()));
        assert_eq!(a.resolve(&empty, 1), Ok(t));
        assert_eq!(a.resolve(&empty, 2), Err(AliasError::Unknown));
        // v5 [MQTT-3.3.2-10]: 1..=maximum accepted; above it the server broke v5 [MQTT-3.3.2-11].
        assert_eq!(a.resolve(&"x".into(), 3), Err(AliasError::AboveMaximum));
        // v5 [MQTT-3.3.2-7] mappings do not survive the connection.
        a.reset(2);
        assert_eq!(a.resolve(&empty, 1), Err(AliasError::Unknown));
    }

    #[test]
    fn outbound_assigns_reuses_and_evicts_least_recently_used() {
        let mut a = OutboundAliases::default();
        a.reset(2);
        let (x, y, z): (ByteString, ByteString, ByteString) = ("x".into(), "y".into(), "z".into());
        assert_eq!(a.assign(&x), AliasUse::Set(1));
        assert_eq!(a.assign(&y), AliasUse::Set(2));
        assert_eq!(a.assign(&x), AliasUse::Reuse(1));
        // y is now the least recently used: z takes alias 2.
        assert_eq!(a.assign(&z), AliasUse::Set(2));
        assert_eq!(a.assign(&y), AliasUse::Set(1));
        a.reset(0);
        assert_eq!(a.assign(&x), AliasUse::None);
    }

    #[test]
    fn a_forgotten_alias_is_free_again_and_its_topic_has_none() {
        let mut a = OutboundAliases::default();
        a.reset(2);
        let (x, y, z): (ByteString, ByteString, ByteString) = ("x".into(), "y".into(), "z".into());
        assert_eq!(a.assign(&x), AliasUse::Set(1));
        assert_eq!(a.assign(&y), AliasUse::Set(2));
        a.forget(1);
        // x's PUBLISH never went out: next time x is sent in full with a new alias, and the
        // freed alias is the first taken.
        assert_eq!(a.assign(&z), AliasUse::Set(1));
        assert_eq!(a.assign(&x), AliasUse::Set(2));
        assert_eq!(a.assign(&y), AliasUse::Set(1));
        a.forget(0);
        a.forget(9);
    }
}
