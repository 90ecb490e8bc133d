//! Quality of service levels and packet identifiers.

use std::num::NonZeroU16;

/// Quality of service of a PUBLISH or a subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum QoS {
    /// At most once (0).
    #[default]
    AtMostOnce = 0,
    /// At least once (1).
    AtLeastOnce = 1,
    /// Exactly once (2).
    ExactlyOnce = 2,
}

impl QoS {
    /// The QoS for two bits; 3 is not a QoS ([MQTT-3.3.1-4]).
    pub fn from_bits(bits: u8) -> Option<QoS> {
        match bits {
            0 => Some(QoS::AtMostOnce),
            1 => Some(QoS::AtLeastOnce),
            2 => Some(QoS::ExactlyOnce),
            _ => None,
        }
    }

    /// The numeric level.
    pub fn as_u8(self) -> u8 {
        self as u8
    }
}

/// A packet identifier: a non-zero 16-bit integer ([MQTT-2.3.1-1], v5 [MQTT-2.2.1-3]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PacketId(NonZeroU16);

impl PacketId {
    /// A packet identifier, or `None` for zero.
    pub fn new(id: u16) -> Option<PacketId> {
        NonZeroU16::new(id).map(PacketId)
    }

    /// The numeric value (never zero).
    pub fn get(self) -> u16 {
        self.0.get()
    }

    /// The identifier after this one, wrapping from 65535 to 1.
    pub fn next(self) -> PacketId {
        PacketId(self.0.checked_add(1).unwrap_or(NonZeroU16::MIN))
    }
}

impl std::fmt::Display for PacketId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}
