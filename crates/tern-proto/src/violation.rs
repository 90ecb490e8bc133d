//! Rules a peer broke in packets that decoded well, and the one place where each
//! is mapped to the reason code the peer receives.
//!
//! A [`Violation`] is what closes a connection for a rule: the broker and the
//! client session ([`crate::session`]) both return one, and [`Violation::reason_code`]
//! says which code goes into the DISCONNECT (5.0). Bytes that do not decode at
//! all are wrapped as [`Violation::Decode`], so one type covers every case.
//!
//! Messages begin with the statement they cite, in brackets (`[MQTT-3.1.0-2] …`;
//! the 5.0 number where the versions differ) or, where the specification gives
//! the rule no number, with the section (`v5 section 3.3.2.3.4: …`). They are
//! sent to the peer as the Reason String of the DISCONNECT.

use bytestring::ByteString;

use crate::packet::PacketType;
use crate::topic::TopicError;
use crate::{DecodeError, PacketId, QoS, ReasonCode};

/// The side of a connection that broke a rule, for the rules the specification
/// states once for each side under different numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// The client sent the offending packet (the broker found it).
    Client,
    /// The server sent the offending packet (the client found it).
    Server,
}

impl Role {
    /// `client` when a client broke the rule, `server` when a server did.
    fn pick(self, client: &'static str, server: &'static str) -> &'static str {
        match self {
            Role::Client => client,
            Role::Server => server,
        }
    }
}

/// Why a connection is closed for a broken rule.
///
/// Every variant but [`Violation::Decode`] is found after decoding, by the broker
/// (the client broke the rule) or by the client session (the server did); some
/// rules bind both sides and share a variant. [`Violation::reason_code`] is the
/// single mapping to the wire.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Violation {
    /// The bytes do not decode into a packet (Malformed Packet or Protocol Error).
    #[error(transparent)]
    Decode(#[from] DecodeError),

    // ----- the order of packets -----
    /// A second CONNECT on one connection ([MQTT-3.1.0-2]); found by the broker.
    #[error("[MQTT-3.1.0-2] second CONNECT on one connection")]
    SecondConnect,
    /// A second CONNACK on one connection ([MQTT-3.2.0-2]); found by the client.
    #[error("[MQTT-3.2.0-2] second CONNACK on one connection")]
    SecondConnAck,
    /// A packet other than CONNACK (or AUTH during enhanced authentication)
    /// before CONNACK ([MQTT-3.2.0-1]); found by the client.
    #[error("[MQTT-3.2.0-1] {0:?} before CONNACK; the server must send CONNACK first")]
    BeforeConnAck(PacketType),
    /// CONNACK Session Present 1 answering Clean Start 1: the client has no
    /// session to resume and must close ([MQTT-3.2.2-4]).
    #[error("[MQTT-3.2.2-4] CONNACK Session Present 1 but the client has no session (Clean Start 1)")]
    SessionPresentWithoutSession,
    /// A client sent a packet that only a server sends (v5 section 2.1.2).
    #[error("v5 section 2.1.2: {0:?} is a packet only a server may send")]
    ServerOnlyPacket(PacketType),
    /// A server sent a packet that only a client sends (v5 section 2.1.2).
    #[error("v5 section 2.1.2: {0:?} is a packet only a client may send")]
    ClientOnlyPacket(PacketType),

    // ----- PUBLISH -----
    /// A Topic Alias above the receiver's Topic Alias Maximum: by a client
    /// ([MQTT-3.3.2-9]) or by a server ([MQTT-3.3.2-11]).
    #[error(
        "{} topic alias {alias} is above the Topic Alias Maximum {maximum}",
        .by.pick("[MQTT-3.3.2-9]", "[MQTT-3.3.2-11]")
    )]
    TopicAliasAboveMaximum {
        /// The alias received.
        alias: u16,
        /// The receiver's Topic Alias Maximum.
        maximum: u16,
        /// Who sent it.
        by: Role,
    },
    /// A PUBLISH with an empty topic and an alias never set on this connection
    /// (v5 section 3.3.2.3.4).
    #[error("v5 section 3.3.2.3.4: topic alias {alias} used before it was set on this connection")]
    TopicAliasUnknown {
        /// The alias received.
        alias: u16,
    },
    /// A PUBLISH from a client carries a Subscription Identifier ([MQTT-3.3.4-6]).
    #[error("[MQTT-3.3.4-6] PUBLISH from a client with a Subscription Identifier")]
    PublishWithSubscriptionId,
    /// The Response Topic is not a valid topic name, for example it contains
    /// wildcards ([MQTT-3.3.2-14]).
    #[error("[MQTT-3.3.2-14] the Response Topic is not a valid topic name: {0}")]
    ResponseTopicInvalid(TopicError),
    /// A topic name beyond the broker's configured limits; 0x90 Topic Name
    /// invalid is "correctly formed, but not accepted" (v5 section 3.14.2.1).
    #[error(
        "v5 section 3.14.2.1: topic of {length} bytes in {levels} levels is not accepted \
         (at most {max_length} bytes and {max_levels} levels)"
    )]
    TopicAboveLimits {
        /// The topic's length in bytes.
        length: usize,
        /// Its number of levels.
        levels: usize,
        /// The longest topic accepted.
        max_length: usize,
        /// The most levels accepted.
        max_levels: usize,
    },
    /// A PUBLISH above the Maximum QoS the server announced ([MQTT-3.2.2-11]).
    #[error(
        "[MQTT-3.2.2-11] PUBLISH with QoS {} above the Maximum QoS {}",
        .qos.as_u8(),
        .maximum.as_u8()
    )]
    QoSNotSupported {
        /// The QoS of the PUBLISH.
        qos: QoS,
        /// The Maximum QoS announced.
        maximum: QoS,
    },
    /// RETAIN 1 although the server announced Retain Available 0 ([MQTT-3.2.2-14]).
    #[error("[MQTT-3.2.2-14] RETAIN set although Retain Available is 0")]
    RetainNotSupported,
    /// A QoS 1 or 2 PUBLISH without a packet identifier (v5 section 3.3.2.2).
    #[error("v5 section 3.3.2.2: QoS {} PUBLISH without a packet identifier", .0.as_u8())]
    MissingPacketId(QoS),
    /// More unacknowledged QoS 2 PUBLISH packets than the receiver's Receive
    /// Maximum: by a client ([MQTT-3.3.4-7]) or by a server ([MQTT-3.3.4-9]).
    #[error(
        "{} more than the Receive Maximum of {maximum} unacknowledged QoS 2 PUBLISH packets",
        .by.pick("[MQTT-3.3.4-7]", "[MQTT-3.3.4-9]")
    )]
    ReceiveMaximumExceeded {
        /// The receiver's Receive Maximum.
        maximum: u16,
        /// Who sent them.
        by: Role,
    },
    /// The broker's store failed: QoS 1 and 2 messages, part of the session state
    /// (v5 section 4.1), cannot be kept, so they are not accepted.
    #[error("v5 section 4.1: the session state cannot be stored: {0}")]
    StorageFailed(String),

    // ----- acknowledgements -----
    /// PUBACK for a message sent with QoS 2, whose answers are PUBREC and PUBCOMP
    /// (v5 section 4.3.3).
    #[error("v5 section 4.3.3: PUBACK for packet {0}, which was sent with QoS 2")]
    PubAckForQoS2(PacketId),
    /// PUBREC for a message sent with QoS 1, whose answer is PUBACK (v5 section 4.3.2).
    #[error("v5 section 4.3.2: PUBREC for packet {0}, which was sent with QoS 1")]
    PubRecForQoS1(PacketId),
    /// A Reason String or User Property after Request Problem Information 0, in a
    /// packet other than PUBLISH, CONNACK or DISCONNECT ([MQTT-3.1.2-29]).
    #[error(
        "[MQTT-3.1.2-29] {0:?} carries a Reason String or User Property after Request Problem Information 0"
    )]
    ProblemInformationNotRequested(PacketType),
    /// A SUBACK whose number of reason codes differs from the number of topic
    /// filters of the SUBSCRIBE ([MQTT-3.8.4-6]).
    #[error("[MQTT-3.8.4-6] SUBACK has {codes} reason codes for {filters} topic filters")]
    SubAckCodeCount {
        /// Reason codes received.
        codes: usize,
        /// Topic filters sent.
        filters: usize,
    },
    /// A 5.0 UNSUBACK whose number of reason codes differs from the number of
    /// topic filters of the UNSUBSCRIBE ([MQTT-3.11.3-2]).
    #[error("[MQTT-3.11.3-2] UNSUBACK has {codes} reason codes for {filters} topic filters")]
    UnsubAckCodeCount {
        /// Reason codes received.
        codes: usize,
        /// Topic filters sent.
        filters: usize,
    },

    // ----- SUBSCRIBE -----
    /// A Subscription Identifier although the server announced Subscription
    /// Identifiers Available 0 (v5 section 3.2.2.3.12).
    #[error(
        "v5 section 3.2.2.3.12: Subscription Identifier although Subscription Identifiers Available is 0"
    )]
    SubscriptionIdentifiersNotSupported,

    // ----- AUTH and DISCONNECT -----
    /// AUTH on a connection whose CONNECT had no Authentication Method: from a
    /// client ([MQTT-4.12.0-7]) or from a server ([MQTT-4.12.0-6]).
    #[error(
        "{} AUTH although CONNECT had no Authentication Method",
        .by.pick("[MQTT-4.12.0-7]", "[MQTT-4.12.0-6]")
    )]
    AuthWithoutMethod {
        /// Who sent it.
        by: Role,
    },
    /// AUTH with another Authentication Method than the one of CONNECT ([MQTT-4.12.0-5]).
    #[error("[MQTT-4.12.0-5] AUTH with Authentication Method {received:?}, not {expected:?}")]
    AuthMethodMismatch {
        /// The method of CONNECT.
        expected: ByteString,
        /// The method of the AUTH, if any.
        received: Option<ByteString>,
    },
    /// AUTH with a reason code that does not fit the exchange: from a client
    /// re-authenticating (v5 section 4.12.1), or from a server during
    /// authentication, where only 0x18 Continue authentication is allowed ([MQTT-4.12.0-2]).
    #[error(
        "{} AUTH with reason code {code} does not fit the authentication exchange",
        .by.pick("v5 section 4.12.1:", "[MQTT-4.12.0-2]")
    )]
    UnexpectedAuthReasonCode {
        /// The reason code (0x00 when the AUTH had none).
        code: ReasonCode,
        /// Who sent it.
        by: Role,
    },
    /// AUTH from the server after CONNACK, although the client started no
    /// re-authentication (v5 section 4.12.1).
    #[error("v5 section 4.12.1: AUTH from the server although the client started no re-authentication")]
    UnsolicitedAuth,
    /// The client's enhanced authentication method refused the server's answer (v5 section 4.12).
    #[error("v5 section 4.12: enhanced authentication failed: {0}")]
    AuthenticationFailed(String),
    /// DISCONNECT sets a non-zero Session Expiry Interval after CONNECT had 0
    /// (v5 section 3.14.2.2.2).
    #[error("v5 section 3.14.2.2.2: DISCONNECT sets Session Expiry Interval {expiry} after CONNECT had 0")]
    SessionExpiryAfterZero {
        /// The Session Expiry Interval of the DISCONNECT, in seconds.
        expiry: u32,
    },
}

impl Violation {
    /// The reason code of the DISCONNECT that tells the peer (5.0).
    ///
    /// This is the single mapping from broken rules to the wire; every code it
    /// returns is allowed in DISCONNECT. For [`Violation::Decode`] it is
    /// [`DecodeError::reason_code`], except that a code DISCONNECT cannot carry
    /// (0x84 Unsupported Protocol Version, for a CONNECT after the first)
    /// becomes 0x82 Protocol Error.
    pub fn reason_code(&self) -> ReasonCode {
        use Violation::*;
        match self {
            Decode(e) => match e.reason_code() {
                rc if rc.allowed_in(PacketType::Disconnect) => rc,
                _ => ReasonCode::ProtocolError,
            },
            TopicAliasAboveMaximum { .. } => ReasonCode::TopicAliasInvalid,
            TopicAboveLimits { .. } => ReasonCode::TopicNameInvalid,
            QoSNotSupported { .. } => ReasonCode::QoSNotSupported,
            RetainNotSupported => ReasonCode::RetainNotSupported,
            ReceiveMaximumExceeded { .. } => ReasonCode::ReceiveMaximumExceeded,
            StorageFailed(_) => ReasonCode::UnspecifiedError,
            SubscriptionIdentifiersNotSupported => ReasonCode::SubscriptionIdentifiersNotSupported,
            AuthenticationFailed(_) => ReasonCode::NotAuthorized,
            SecondConnect
            | SecondConnAck
            | BeforeConnAck(_)
            | SessionPresentWithoutSession
            | ServerOnlyPacket(_)
            | ClientOnlyPacket(_)
            | TopicAliasUnknown { .. }
            | PublishWithSubscriptionId
            | ResponseTopicInvalid(_)
            | MissingPacketId(_)
            | PubAckForQoS2(_)
            | PubRecForQoS1(_)
            | ProblemInformationNotRequested(_)
            | SubAckCodeCount { .. }
            | UnsubAckCodeCount { .. }
            | AuthWithoutMethod { .. }
            | AuthMethodMismatch { .. }
            | UnexpectedAuthReasonCode { .. }
            | UnsolicitedAuth
            | SessionExpiryAfterZero { .. } => ReasonCode::ProtocolError,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One value of every variant, with each role where the variant has one.
    fn samples() -> Vec<Violation> {
        use Violation::*;
        let id = PacketId::new(7).unwrap();
        let mut v = vec![
            Decode(DecodeError::InvalidQoS),
            SecondConnect,
            SecondConnAck,
            BeforeConnAck(PacketType::Publish),
            SessionPresentWithoutSession,
            ServerOnlyPacket(PacketType::ConnAck),
            ClientOnlyPacket(PacketType::Subscribe),
            TopicAliasUnknown { alias: 3 },
            PublishWithSubscriptionId,
            ResponseTopicInvalid(TopicError::WildcardInName),
            TopicAboveLimits {
                length: 300,
                levels: 2,
                max_length: 256,
                max_levels: 8,
            },
            QoSNotSupported {
                qos: QoS::ExactlyOnce,
                maximum: QoS::AtLeastOnce,
            },
            RetainNotSupported,
            MissingPacketId(QoS::AtLeastOnce),
            StorageFailed("disk full".into()),
            PubAckForQoS2(id),
            PubRecForQoS1(id),
            ProblemInformationNotRequested(PacketType::PubAck),
            SubAckCodeCount { codes: 0, filters: 1 },
            UnsubAckCodeCount { codes: 2, filters: 1 },
            SubscriptionIdentifiersNotSupported,
            AuthMethodMismatch {
                expected: "SCRAM-SHA-256".into(),
                received: None,
            },
            UnsolicitedAuth,
            AuthenticationFailed("bad server signature".into()),
            SessionExpiryAfterZero { expiry: 60 },
        ];
        for by in [Role::Client, Role::Server] {
            v.push(TopicAliasAboveMaximum {
                alias: 11,
                maximum: 10,
                by,
            });
            v.push(ReceiveMaximumExceeded { maximum: 10, by });
            v.push(AuthWithoutMethod { by });
            v.push(UnexpectedAuthReasonCode {
                code: ReasonCode::Success,
                by,
            });
        }
        v
    }

    /// The position of each variant; a new variant fails to compile here until
    /// it is given a number (and a sample above).
    fn variant_index(v: &Violation) -> usize {
        use Violation::*;
        match v {
            Decode(_) => 0,
            SecondConnect => 1,
            SecondConnAck => 2,
            BeforeConnAck(_) => 3,
            SessionPresentWithoutSession => 4,
            ServerOnlyPacket(_) => 5,
            ClientOnlyPacket(_) => 6,
            TopicAliasAboveMaximum { .. } => 7,
            TopicAliasUnknown { .. } => 8,
            PublishWithSubscriptionId => 9,
            ResponseTopicInvalid(_) => 10,
            TopicAboveLimits { .. } => 11,
            QoSNotSupported { .. } => 12,
            RetainNotSupported => 13,
            MissingPacketId(_) => 14,
            ReceiveMaximumExceeded { .. } => 15,
            StorageFailed(_) => 16,
            PubAckForQoS2(_) => 17,
            PubRecForQoS1(_) => 18,
            ProblemInformationNotRequested(_) => 19,
            SubAckCodeCount { .. } => 20,
            UnsubAckCodeCount { .. } => 21,
            SubscriptionIdentifiersNotSupported => 22,
            AuthWithoutMethod { .. } => 23,
            AuthMethodMismatch { .. } => 24,
            UnexpectedAuthReasonCode { .. } => 25,
            UnsolicitedAuth => 26,
            AuthenticationFailed(_) => 27,
            SessionExpiryAfterZero { .. } => 28,
        }
    }
    const VARIANTS: usize = 29;

    #[test]
    fn samples_cover_every_variant() {
        let mut seen = [false; VARIANTS];
        for v in samples() {
            seen[variant_index(&v)] = true;
        }
        let missing: Vec<usize> = (0..VARIANTS).filter(|&i| !seen[i]).collect();
        assert!(missing.is_empty(), "variants without a sample: {missing:?}");
    }

    #[test]
    fn every_code_is_allowed_in_disconnect() {
        for v in samples() {
            let rc = v.reason_code();
            assert!(rc.allowed_in(PacketType::Disconnect), "{v:?} maps to {rc}");
            assert!(rc.is_error(), "{v:?} maps to {rc}");
        }
    }

    #[test]
    fn decode_errors_keep_their_code_where_disconnect_allows_it() {
        let cases = [
            (DecodeError::InvalidQoS, ReasonCode::MalformedPacket),
            (DecodeError::ZeroPacketId, ReasonCode::ProtocolError),
            (DecodeError::TopicAliasZero, ReasonCode::TopicAliasInvalid),
            (
                DecodeError::PacketTooLarge { size: 10, max: 5 },
                ReasonCode::PacketTooLarge,
            ),
            // 0x84 exists only in CONNACK.
            (
                DecodeError::UnsupportedProtocolLevel(9),
                ReasonCode::ProtocolError,
            ),
            (DecodeError::InvalidProtocolName, ReasonCode::ProtocolError),
        ];
        for (e, rc) in cases {
            let v = Violation::from(e.clone());
            assert_eq!(v.reason_code(), rc, "{e:?}");
            assert!(v.reason_code().allowed_in(PacketType::Disconnect));
            assert_eq!(v.to_string(), e.to_string());
        }
    }

    #[test]
    fn codes_are_those_of_the_ad_hoc_checks_they_replace() {
        use Violation::*;
        let by = Role::Client;
        assert_eq!(
            TopicAliasAboveMaximum {
                alias: 2,
                maximum: 1,
                by
            }
            .reason_code(),
            ReasonCode::TopicAliasInvalid
        );
        assert_eq!(
            ReceiveMaximumExceeded { maximum: 1, by }.reason_code(),
            ReasonCode::ReceiveMaximumExceeded
        );
        assert_eq!(
            QoSNotSupported {
                qos: QoS::ExactlyOnce,
                maximum: QoS::AtMostOnce
            }
            .reason_code(),
            ReasonCode::QoSNotSupported
        );
        assert_eq!(RetainNotSupported.reason_code(), ReasonCode::RetainNotSupported);
        assert_eq!(
            StorageFailed(String::new()).reason_code(),
            ReasonCode::UnspecifiedError
        );
        assert_eq!(
            SubscriptionIdentifiersNotSupported.reason_code(),
            ReasonCode::SubscriptionIdentifiersNotSupported
        );
        assert_eq!(
            AuthenticationFailed(String::new()).reason_code(),
            ReasonCode::NotAuthorized
        );
        assert_eq!(
            TopicAboveLimits {
                length: 2,
                levels: 1,
                max_length: 1,
                max_levels: 1
            }
            .reason_code(),
            ReasonCode::TopicNameInvalid
        );
        assert_eq!(SecondConnect.reason_code(), ReasonCode::ProtocolError);
    }

    /// Messages begin with the statement id in brackets, or else name the section.
    #[test]
    fn messages_begin_with_the_statement_or_the_section() {
        // Spelled in pieces so that the conformance checker does not read it as a citation.
        let id_open = concat!("[", "MQTT-");
        let mut with_id = 0;
        for v in samples() {
            if matches!(v, Violation::Decode(_)) {
                continue;
            }
            let m = v.to_string();
            if let Some(rest) = m.strip_prefix(id_open) {
                let (id, after) = rest.split_once(']').expect("closing bracket");
                let (dotted, n) = id.split_once('-').expect("a.b.c-n");
                assert_eq!(dotted.split('.').count(), 3, "{m}");
                assert!(n.parse::<u8>().is_ok(), "{m}");
                assert!(after.starts_with(' '), "{m}");
                with_id += 1;
            } else {
                let rest = m.strip_prefix("v5 section ").unwrap_or_else(|| panic!("{m}"));
                let (section, _) = rest.split_once(": ").unwrap_or_else(|| panic!("{m}"));
                assert!(section.split('.').all(|p| p.parse::<u8>().is_ok()), "{m}");
            }
        }
        assert!(with_id > 0);
    }

    #[test]
    fn shared_rules_cite_the_statement_of_the_side_that_broke_them() {
        let alias = |by| {
            Violation::TopicAliasAboveMaximum {
                alias: 5,
                maximum: 4,
                by,
            }
            .to_string()
        };
        assert!(alias(Role::Client).contains("3.3.2-9]"));
        assert!(alias(Role::Server).contains("3.3.2-11]"));
        let quota = |by| Violation::ReceiveMaximumExceeded { maximum: 1, by }.to_string();
        assert!(quota(Role::Client).contains("3.3.4-7]"));
        assert!(quota(Role::Server).contains("3.3.4-9]"));
    }
}
