//! Codec errors, and the one place where each is mapped to the reason code a
//! peer must receive.

use crate::packet::PacketType;
use crate::topic::TopicError;
use crate::ReasonCode;

/// Why bytes from a peer could not be decoded into a packet.
///
/// Every variant is either a *Malformed Packet* (the bytes cannot be parsed as
/// the specification describes) or a *Protocol Error* (they parse, but break a
/// rule); [`DecodeError::reason_code`] says which, and what to send the peer.
/// For MQTT 3.1.1 any of them closes the connection ([MQTT-4.8.0-1]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// A variable byte integer used more than four bytes (v5 section 1.5.5, 3.1.1 section 2.2.3).
    #[error("variable byte integer longer than 4 bytes (section 1.5.5)")]
    VarIntTooLong,
    /// The packet is larger than the maximum packet size we accept.
    #[error("packet of {size} bytes exceeds the maximum packet size of {max} bytes")]
    PacketTooLarge {
        /// Total size announced by the fixed header.
        size: u64,
        /// The limit in force.
        max: u32,
    },
    /// Packet type 0, or AUTH (15) on an MQTT 3.x connection ([MQTT-2.2.2-2]).
    #[error("[MQTT-2.2.2-2] invalid control packet type {0}")]
    InvalidPacketType(u8),
    /// Reserved flag bits of the fixed header do not have their required value.
    #[error("[MQTT-2.2.2-2] invalid fixed header flags {flags:#06b} for {packet:?}")]
    InvalidFlags {
        /// The packet type.
        packet: PacketType,
        /// The four flag bits received.
        flags: u8,
    },
    /// QoS bits set to 3 ([MQTT-3.3.1-4]).
    #[error("[MQTT-3.3.1-4] QoS 3 is not a valid quality of service")]
    InvalidQoS,
    /// DUP set on a QoS 0 PUBLISH ([MQTT-3.3.1-2]).
    #[error("[MQTT-3.3.1-2] DUP flag set on a QoS 0 PUBLISH")]
    DupOnQoS0,
    /// A field runs past the end of the packet.
    #[error("{0} runs past the end of the packet")]
    Truncated(&'static str),
    /// Bytes left over after the last field of the packet.
    #[error("{0} unexpected bytes after the end of the {1:?} packet")]
    TrailingBytes(usize, PacketType),
    /// A string is not well-formed UTF-8 ([MQTT-1.5.3-1], v5 [MQTT-1.5.4-1]).
    #[error("[MQTT-1.5.4-1] string is not well-formed UTF-8")]
    InvalidUtf8,
    /// A string contains U+0000 ([MQTT-1.5.3-2], v5 [MQTT-1.5.4-2]).
    #[error("[MQTT-1.5.4-2] string contains the null character U+0000")]
    NullCharacter,
    /// CONNECT carries a protocol name other than `MQTT` / `MQIsdp` ([MQTT-3.1.2-1]).
    #[error("[MQTT-3.1.2-1] unknown protocol name")]
    InvalidProtocolName,
    /// CONNECT carries a protocol level we do not speak ([MQTT-3.1.2-2]).
    #[error("[MQTT-3.1.2-2] unsupported protocol level {0}")]
    UnsupportedProtocolLevel(u8),
    /// CONNECT reserved flag (bit 0) is set ([MQTT-3.1.2-3]).
    #[error("[MQTT-3.1.2-3] CONNECT reserved flag is set")]
    ReservedConnectFlag,
    /// Will QoS or Will Retain set without the Will Flag, or Will QoS 3 ([MQTT-3.1.2-11], [MQTT-3.1.2-13], [MQTT-3.1.2-14]).
    #[error("[MQTT-3.1.2-11] will QoS/retain flags inconsistent with the will flag")]
    InvalidWillFlags,
    /// MQTT 3.1.1: password flag without user name flag ([MQTT-3.1.2-22]).
    #[error("[MQTT-3.1.2-22] password flag set without user name flag")]
    PasswordWithoutUsername,
    /// A packet identifier of 0 where one is required ([MQTT-2.3.1-1], v5 [MQTT-2.2.1-3]).
    #[error("[MQTT-2.2.1-3] packet identifier 0")]
    ZeroPacketId,
    /// SUBSCRIBE without any topic filter ([MQTT-3.8.3-3], v5 [MQTT-3.8.3-2]).
    #[error("[MQTT-3.8.3-2] SUBSCRIBE without topic filters")]
    EmptySubscribe,
    /// UNSUBSCRIBE without any topic filter ([MQTT-3.10.3-2]).
    #[error("[MQTT-3.10.3-2] UNSUBSCRIBE without topic filters")]
    EmptyUnsubscribe,
    /// Reserved bits of the subscription options byte are set ([MQTT-3.8.3-4], v5 [MQTT-3.8.3-5]).
    #[error("[MQTT-3.8.3-5] reserved bits set in subscription options")]
    InvalidSubscriptionOptions,
    /// v5: Maximum QoS 3 in the subscription options, a Protocol Error (section 3.8.3.1).
    /// (3.1.1 treats it as malformed: [`DecodeError::InvalidQoS`].)
    #[error("maximum QoS 3 in subscription options is a protocol error (section 3.8.3.1)")]
    InvalidSubscriptionQoS,
    /// Retain Handling 3 (v5 section 3.8.3.1).
    #[error("retain handling 3 is a protocol error (section 3.8.3.1)")]
    InvalidRetainHandling,
    /// v5: No Local on a shared subscription ([MQTT-3.8.3-4]).
    #[error("[MQTT-3.8.3-4] No Local set on a shared subscription")]
    NoLocalOnSharedSubscription,
    /// A topic name is not valid.
    #[error("invalid topic name: {0}")]
    InvalidTopic(TopicError),
    /// A property identifier the specification does not define (v5 section 2.2.2.2).
    #[error("unknown property identifier {0:#04x}")]
    UnknownProperty(u32),
    /// A defined property in a packet that may not carry it (v5 section 2.2.2.2).
    #[error("property {id:#04x} is not allowed in {context}")]
    PropertyNotAllowed {
        /// The property identifier.
        id: u8,
        /// Where it was found.
        context: &'static str,
    },
    /// A property that may appear once appeared twice.
    #[error("property {0:#04x} included more than once")]
    DuplicateProperty(u8),
    /// A property value outside its allowed range (for example Receive Maximum 0).
    #[error("property {0:#04x} has a value the specification forbids")]
    InvalidPropertyValue(u8),
    /// Topic Alias 0 ([MQTT-3.3.2-8]).
    #[error("[MQTT-3.3.2-8] topic alias 0")]
    TopicAliasZero,
    /// A byte that is not a reason code.
    #[error("unknown reason code {0:#04x}")]
    UnknownReasonCode(u8),
    /// A reason code that the specification does not allow in this packet.
    #[error("reason code {code} is not allowed in {packet:?}")]
    ReasonCodeNotAllowed {
        /// The code received.
        code: ReasonCode,
        /// The packet type.
        packet: PacketType,
    },
    /// A return code that MQTT 3.1.1 does not define.
    #[error("unknown MQTT 3.1.1 return code {0:#04x}")]
    UnknownReturnCode(u8),
}

impl DecodeError {
    /// The reason code a peer must receive for this error (v5 DISCONNECT or CONNACK).
    ///
    /// This is the single mapping from decode failures to the wire; Malformed Packet
    /// (0x81) for bytes that cannot be parsed, Protocol Error (0x82) for packets
    /// that parse but break a rule, and the specific codes the specification names.
    pub fn reason_code(&self) -> ReasonCode {
        use DecodeError::*;
        match self {
            PacketTooLarge { .. } => ReasonCode::PacketTooLarge,
            UnsupportedProtocolLevel(_) | InvalidProtocolName => ReasonCode::UnsupportedProtocolVersion,
            TopicAliasZero => ReasonCode::TopicAliasInvalid,
            ZeroPacketId
            | InvalidTopic(_)
            | DuplicateProperty(_)
            | InvalidPropertyValue(_)
            | InvalidRetainHandling
            | InvalidSubscriptionQoS
            | EmptySubscribe
            | EmptyUnsubscribe
            | NoLocalOnSharedSubscription
            | ReasonCodeNotAllowed { .. }
            | UnknownReturnCode(_) => ReasonCode::ProtocolError,
            VarIntTooLong
            | InvalidPacketType(_)
            | InvalidFlags { .. }
            | InvalidQoS
            | DupOnQoS0
            | Truncated(_)
            | TrailingBytes(..)
            | InvalidUtf8
            | NullCharacter
            | ReservedConnectFlag
            | InvalidWillFlags
            | PasswordWithoutUsername
            | InvalidSubscriptionOptions
            | UnknownProperty(_)
            | PropertyNotAllowed { .. }
            | UnknownReasonCode(_) => ReasonCode::MalformedPacket,
        }
    }
}

/// Why a packet could not be encoded for the given protocol version.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// A field or packet that exists only in another protocol version.
    #[error("{0} cannot be encoded for MQTT {1}")]
    NotInVersion(&'static str, crate::ProtocolVersion),
    /// The packet's remaining length exceeds 268,435,455 bytes.
    #[error("packet too large to encode ({0} bytes)")]
    TooLarge(usize),
    /// A string or binary field longer than 65,535 bytes.
    #[error("{0} is longer than 65,535 bytes")]
    FieldTooLong(&'static str),
    /// QoS and packet identifier disagree (QoS > 0 needs one; QoS 0 must have none).
    #[error("QoS {0:?} PUBLISH with a packet identifier mismatch")]
    PacketIdMismatch(crate::QoS),
    /// A value the specification forbids (for example an empty filter list).
    #[error("invalid {0}")]
    Invalid(&'static str),
}
