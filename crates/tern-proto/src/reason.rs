//! MQTT 5.0 reason codes, their meanings, where each may appear, and the
//! MQTT 3.1.1 return codes they map to.

use crate::packet::PacketType;

macro_rules! reason_codes {
    ($( $(#[$m:meta])* $name:ident = $value:literal, $text:literal, [$($pt:ident),*]; )*) => {
        /// An MQTT 5.0 reason code (specification section 2.4).
        ///
        /// The value 0x00 has three names in the specification (Success, Normal
        /// disconnection, Granted QoS 0); they are the associated constants
        /// [`ReasonCode::NORMAL_DISCONNECTION`] and [`ReasonCode::GRANTED_QOS_0`].
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[non_exhaustive]
        #[repr(u8)]
        pub enum ReasonCode {
            $( $(#[$m])* $name = $value, )*
        }

        impl ReasonCode {
            /// The reason code for a byte, if it is one the specification defines.
            pub fn from_u8(value: u8) -> Option<ReasonCode> {
                match value {
                    $( $value => Some(ReasonCode::$name), )*
                    _ => None,
                }
            }

            /// The name the specification gives this code.
            pub fn name(self) -> &'static str {
                match self {
                    $( ReasonCode::$name => $text, )*
                }
            }

            /// Whether the specification allows this code in a packet of the given type.
            pub fn allowed_in(self, packet: PacketType) -> bool {
                match self {
                    $( ReasonCode::$name => matches!(packet, $(PacketType::$pt)|*), )*
                }
            }
        }
    };
}

reason_codes! {
    /// 0x00 Success (also Normal disconnection, Granted QoS 0).
    Success = 0x00, "Success", [ConnAck, PubAck, PubRec, PubRel, PubComp, SubAck, UnsubAck, Disconnect, Auth];
    /// 0x01 Granted QoS 1.
    GrantedQoS1 = 0x01, "Granted QoS 1", [SubAck];
    /// 0x02 Granted QoS 2.
    GrantedQoS2 = 0x02, "Granted QoS 2", [SubAck];
    /// 0x04 Disconnect with Will Message.
    DisconnectWithWill = 0x04, "Disconnect with Will Message", [Disconnect];
    /// 0x10 No matching subscribers.
    NoMatchingSubscribers = 0x10, "No matching subscribers", [PubAck, PubRec];
    /// 0x11 No subscription existed.
    NoSubscriptionExisted = 0x11, "No subscription existed", [UnsubAck];
    /// 0x18 Continue authentication.
    ContinueAuthentication = 0x18, "Continue authentication", [Auth];
    /// 0x19 Re-authenticate.
    ReAuthenticate = 0x19, "Re-authenticate", [Auth];
    /// 0x80 Unspecified error.
    UnspecifiedError = 0x80, "Unspecified error", [ConnAck, PubAck, PubRec, SubAck, UnsubAck, Disconnect];
    /// 0x81 Malformed Packet.
    MalformedPacket = 0x81, "Malformed Packet", [ConnAck, Disconnect];
    /// 0x82 Protocol Error.
    ProtocolError = 0x82, "Protocol Error", [ConnAck, Disconnect];
    /// 0x83 Implementation specific error.
    ImplementationSpecificError = 0x83, "Implementation specific error", [ConnAck, PubAck, PubRec, SubAck, UnsubAck, Disconnect];
    /// 0x84 Unsupported Protocol Version.
    UnsupportedProtocolVersion = 0x84, "Unsupported Protocol Version", [ConnAck];
    /// 0x85 Client Identifier not valid.
    ClientIdentifierNotValid = 0x85, "Client Identifier not valid", [ConnAck];
    /// 0x86 Bad User Name or Password.
    BadUserNameOrPassword = 0x86, "Bad User Name or Password", [ConnAck];
    /// 0x87 Not authorized.
    NotAuthorized = 0x87, "Not authorized", [ConnAck, PubAck, PubRec, SubAck, UnsubAck, Disconnect];
    /// 0x88 Server unavailable.
    ServerUnavailable = 0x88, "Server unavailable", [ConnAck];
    /// 0x89 Server busy.
    ServerBusy = 0x89, "Server busy", [ConnAck, Disconnect];
    /// 0x8A Banned.
    Banned = 0x8A, "Banned", [ConnAck];
    /// 0x8B Server shutting down.
    ServerShuttingDown = 0x8B, "Server shutting down", [Disconnect];
    /// 0x8C Bad authentication method.
    BadAuthenticationMethod = 0x8C, "Bad authentication method", [ConnAck, Disconnect];
    /// 0x8D Keep Alive timeout.
    KeepAliveTimeout = 0x8D, "Keep Alive timeout", [Disconnect];
    /// 0x8E Session taken over.
    SessionTakenOver = 0x8E, "Session taken over", [Disconnect];
    /// 0x8F Topic Filter invalid.
    TopicFilterInvalid = 0x8F, "Topic Filter invalid", [SubAck, UnsubAck, Disconnect];
    /// 0x90 Topic Name invalid.
    TopicNameInvalid = 0x90, "Topic Name invalid", [ConnAck, PubAck, PubRec, Disconnect];
    /// 0x91 Packet Identifier in use.
    PacketIdentifierInUse = 0x91, "Packet Identifier in use", [PubAck, PubRec, SubAck, UnsubAck];
    /// 0x92 Packet Identifier not found.
    PacketIdentifierNotFound = 0x92, "Packet Identifier not found", [PubRel, PubComp];
    /// 0x93 Receive Maximum exceeded.
    ReceiveMaximumExceeded = 0x93, "Receive Maximum exceeded", [Disconnect];
    /// 0x94 Topic Alias invalid.
    TopicAliasInvalid = 0x94, "Topic Alias invalid", [Disconnect];
    /// 0x95 Packet too large.
    PacketTooLarge = 0x95, "Packet too large", [ConnAck, Disconnect];
    /// 0x96 Message rate too high.
    MessageRateTooHigh = 0x96, "Message rate too high", [Disconnect];
    /// 0x97 Quota exceeded.
    QuotaExceeded = 0x97, "Quota exceeded", [ConnAck, PubAck, PubRec, SubAck, Disconnect];
    /// 0x98 Administrative action.
    AdministrativeAction = 0x98, "Administrative action", [Disconnect];
    /// 0x99 Payload format invalid.
    PayloadFormatInvalid = 0x99, "Payload format invalid", [ConnAck, PubAck, PubRec, Disconnect];
    /// 0x9A Retain not supported.
    RetainNotSupported = 0x9A, "Retain not supported", [ConnAck, Disconnect];
    /// 0x9B QoS not supported.
    QoSNotSupported = 0x9B, "QoS not supported", [ConnAck, Disconnect];
    /// 0x9C Use another server.
    UseAnotherServer = 0x9C, "Use another server", [ConnAck, Disconnect];
    /// 0x9D Server moved.
    ServerMoved = 0x9D, "Server moved", [ConnAck, Disconnect];
    /// 0x9E Shared Subscriptions not supported.
    SharedSubscriptionsNotSupported = 0x9E, "Shared Subscriptions not supported", [SubAck, Disconnect];
    /// 0x9F Connection rate exceeded.
    ConnectionRateExceeded = 0x9F, "Connection rate exceeded", [ConnAck, Disconnect];
    /// 0xA0 Maximum connect time.
    MaximumConnectTime = 0xA0, "Maximum connect time", [Disconnect];
    /// 0xA1 Subscription Identifiers not supported.
    SubscriptionIdentifiersNotSupported = 0xA1, "Subscription Identifiers not supported", [SubAck, Disconnect];
    /// 0xA2 Wildcard Subscriptions not supported.
    WildcardSubscriptionsNotSupported = 0xA2, "Wildcard Subscriptions not supported", [SubAck, Disconnect];
}

impl ReasonCode {
    /// 0x00 under its DISCONNECT name.
    pub const NORMAL_DISCONNECTION: ReasonCode = ReasonCode::Success;
    /// 0x00 under its SUBACK name.
    pub const GRANTED_QOS_0: ReasonCode = ReasonCode::Success;

    /// The byte on the wire.
    pub fn as_u8(self) -> u8 {
        self as u8
    }

    /// Whether this code reports a failure (0x80 and above).
    pub fn is_error(self) -> bool {
        self.as_u8() >= 0x80
    }

    /// The SUBACK code that grants a QoS.
    pub fn granted(qos: crate::QoS) -> ReasonCode {
        match qos {
            crate::QoS::AtMostOnce => ReasonCode::Success,
            crate::QoS::AtLeastOnce => ReasonCode::GrantedQoS1,
            crate::QoS::ExactlyOnce => ReasonCode::GrantedQoS2,
        }
    }

    /// The MQTT 3.1.1 CONNACK return code (section 3.2.2.3) that best carries this code.
    ///
    /// 3.1.1 has six return codes; every 5.0 failure maps to the closest of them
    /// (authentication failures to 4/5, version to 1, identifier to 2, the rest to 3).
    pub fn to_v3_connack(self) -> u8 {
        match self {
            ReasonCode::Success => 0,
            ReasonCode::UnsupportedProtocolVersion => 1,
            ReasonCode::ClientIdentifierNotValid => 2,
            ReasonCode::BadUserNameOrPassword | ReasonCode::BadAuthenticationMethod => 4,
            ReasonCode::NotAuthorized | ReasonCode::Banned => 5,
            _ => 3,
        }
    }

    /// The reason code for an MQTT 3.1.1 CONNACK return code (0..=5).
    pub fn from_v3_connack(code: u8) -> Option<ReasonCode> {
        Some(match code {
            0 => ReasonCode::Success,
            1 => ReasonCode::UnsupportedProtocolVersion,
            2 => ReasonCode::ClientIdentifierNotValid,
            3 => ReasonCode::ServerUnavailable,
            4 => ReasonCode::BadUserNameOrPassword,
            5 => ReasonCode::NotAuthorized,
            _ => return None,
        })
    }

    /// The MQTT 3.1.1 SUBACK return code: the granted QoS, or 0x80 for any failure.
    pub fn to_v3_suback(self) -> u8 {
        match self {
            ReasonCode::Success => 0,
            ReasonCode::GrantedQoS1 => 1,
            ReasonCode::GrantedQoS2 => 2,
            _ => 0x80,
        }
    }

    /// The reason code for an MQTT 3.1.1 SUBACK return code (0, 1, 2 or 0x80).
    pub fn from_v3_suback(code: u8) -> Option<ReasonCode> {
        Some(match code {
            0 => ReasonCode::Success,
            1 => ReasonCode::GrantedQoS1,
            2 => ReasonCode::GrantedQoS2,
            0x80 => ReasonCode::UnspecifiedError,
            _ => return None,
        })
    }
}

impl std::fmt::Display for ReasonCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "0x{:02X} {}", self.as_u8(), self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_defined_byte_round_trips() {
        let mut count = 0;
        for b in 0..=255u8 {
            if let Some(rc) = ReasonCode::from_u8(b) {
                assert_eq!(rc.as_u8(), b);
                count += 1;
            }
        }
        // Section 2.4 defines 43 distinct values.
        assert_eq!(count, 43);
    }

    #[test]
    fn allowed_lists_follow_the_spec_tables() {
        assert!(ReasonCode::PacketIdentifierNotFound.allowed_in(PacketType::PubRel));
        assert!(!ReasonCode::PacketIdentifierNotFound.allowed_in(PacketType::PubAck));
        assert!(ReasonCode::NoMatchingSubscribers.allowed_in(PacketType::PubRec));
        assert!(ReasonCode::SessionTakenOver.allowed_in(PacketType::Disconnect));
        assert!(!ReasonCode::SessionTakenOver.allowed_in(PacketType::ConnAck));
    }

    #[test]
    fn v3_mappings() {
        for c in 0..=5 {
            assert_eq!(ReasonCode::from_v3_connack(c).map(|r| r.to_v3_connack()), Some(c));
        }
        assert_eq!(ReasonCode::from_v3_connack(6), None);
        assert_eq!(ReasonCode::TopicFilterInvalid.to_v3_suback(), 0x80);
        assert_eq!(ReasonCode::from_v3_suback(3), None);
    }
}
