//! Protocol versions and the features that differ between them.

/// The MQTT protocol version spoken on a connection.
///
/// It is decided by the CONNECT packet (protocol name and level) and passed to
/// every encode and decode call after that.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ProtocolVersion {
    /// MQTT 3.1: protocol name `MQIsdp`, level 3.
    V3_1,
    /// MQTT 3.1.1: protocol name `MQTT`, level 4.
    V3_1_1,
    /// MQTT 5.0: protocol name `MQTT`, level 5.
    V5,
}

impl ProtocolVersion {
    /// The protocol level byte carried in CONNECT.
    pub fn level(self) -> u8 {
        match self {
            ProtocolVersion::V3_1 => 3,
            ProtocolVersion::V3_1_1 => 4,
            ProtocolVersion::V5 => 5,
        }
    }

    /// The protocol name carried in CONNECT.
    pub fn protocol_name(self) -> &'static str {
        match self {
            ProtocolVersion::V3_1 => "MQIsdp",
            _ => "MQTT",
        }
    }

    /// Whether this version carries properties and reason codes (MQTT 5.0).
    pub fn is_v5(self) -> bool {
        self == ProtocolVersion::V5
    }

    /// The version for a protocol name and level, if the pair is one we speak.
    pub fn from_name_and_level(name: &str, level: u8) -> Option<Self> {
        match (name, level) {
            ("MQIsdp", 3) => Some(ProtocolVersion::V3_1),
            ("MQTT", 4) => Some(ProtocolVersion::V3_1_1),
            ("MQTT", 5) => Some(ProtocolVersion::V5),
            _ => None,
        }
    }
}

impl std::fmt::Display for ProtocolVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ProtocolVersion::V3_1 => "3.1",
            ProtocolVersion::V3_1_1 => "3.1.1",
            ProtocolVersion::V5 => "5.0",
        })
    }
}
