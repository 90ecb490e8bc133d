//! The server's rules for the CONNECT phase: whether a CONNECT is acceptable, what it is
//! granted (keep-alive, session expiry, an assigned client identifier), what CONNACK tells a
//! 5.0 client about this server, and which packets may continue an enhanced-authentication
//! exchange. Who the client is (passwords, certificates, the authenticator's steps) and where
//! its session lives are the broker's to decide, between these calls.

use crate::codec::ConnAckProperties;
use crate::{topic, Connect, Packet, ProtocolVersion, ReasonCode};

use super::ServerRules;

/// The CONNECT rules that are configuration (beyond [`ServerRules`]).
#[derive(Debug, Clone)]
pub struct ConnectRules {
    /// Longest client identifier accepted, in bytes.
    pub max_client_id_len: usize,
    /// Longest keep-alive accepted, in seconds (`u16::MAX`: any). 5.0 clients asking for more,
    /// or for none, get this as Server Keep Alive; 3.1.1 clients are refused.
    pub max_keepalive: u16,
    /// Session expiry of a 3.1.1 session with Clean Session 0 (0: it never expires, up to
    /// `max_session_expiry`).
    pub v3_session_expiry: u32,
}

impl Default for ConnectRules {
    fn default() -> Self {
        ConnectRules {
            max_client_id_len: 65_535,
            max_keepalive: u16::MAX,
            v3_session_expiry: 0,
        }
    }
}

/// What an acceptable CONNECT is granted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Granted {
    /// The keep-alive in force, in seconds.
    pub keep_alive: u16,
    /// The session expiry interval in force, in seconds (`u32::MAX`: never).
    pub session_expiry: u32,
    /// The client sent no identifier: the server assigns one ([MQTT-3.1.3-6]).
    pub assign_client_id: bool,
    /// The CONNACK properties so far (5.0): this server's capabilities and limits, and what
    /// differs from the client's request (Server Keep Alive, Session Expiry Interval).
    pub connack: ConnAckProperties,
}

/// A CONNECT the server refuses: the CONNACK reason code and why (for the log and, in 5.0,
/// the Reason String).
pub type Refusal = (ReasonCode, String);

fn refuse(rc: ReasonCode, why: &str) -> Refusal {
    (rc, why.to_string())
}

/// Check a decoded CONNECT against the server's rules and decide what it is granted.
/// `offers_method` says whether an enhanced-authentication method is one this server has
/// ([MQTT-4.12.0-1]).
pub fn check_connect(
    c: &Connect,
    rules: &ServerRules,
    connect: &ConnectRules,
    offers_method: impl Fn(&str) -> bool,
) -> Result<Granted, Refusal> {
    let v = c.protocol_version;
    if c.client_id.len() > connect.max_client_id_len {
        return Err(refuse(
            ReasonCode::ClientIdentifierNotValid,
            "client identifier too long",
        ));
    }
    // v3.1.1 [MQTT-3.1.3-8]: an empty identifier needs Clean Session; 3.1 always needs one.
    if c.client_id.is_empty()
        && (v == ProtocolVersion::V3_1 || (v == ProtocolVersion::V3_1_1 && !c.clean_start))
    {
        return Err(refuse(
            ReasonCode::ClientIdentifierNotValid,
            "[MQTT-3.1.3-8] empty client identifier without clean session",
        ));
    }
    if let Some(method) = &c.properties.authentication_method {
        if !offers_method(method) {
            return Err(refuse(
                ReasonCode::BadAuthenticationMethod,
                "unsupported authentication method",
            ));
        }
    }
    if let Some(w) = &c.will {
        if w.qos > rules.maximum_qos {
            return Err(refuse(ReasonCode::QoSNotSupported, "will QoS above max_qos"));
        }
        if w.retain && !rules.retain_available {
            return Err(refuse(
                ReasonCode::RetainNotSupported,
                "will retain while retain is not available",
            ));
        }
        let levels_ok =
            w.topic.split('/').count() <= rules.max_topic_levels && w.topic.len() <= rules.max_topic_length;
        if topic::validate_topic_name(&w.topic).is_err() || !levels_ok {
            return Err(refuse(ReasonCode::TopicNameInvalid, "invalid will topic"));
        }
        if let Some(rt) = &w.properties.response_topic {
            if topic::validate_topic_name(rt).is_err() {
                return Err(refuse(
                    ReasonCode::ProtocolError,
                    "[MQTT-3.3.2-14] will response topic has wildcards",
                ));
            }
        }
    }
    let limited = connect.max_keepalive != u16::MAX;
    let beyond = c.keep_alive == 0 || c.keep_alive > connect.max_keepalive;
    if !v.is_v5() && limited && beyond {
        return Err(refuse(
            ReasonCode::ServerUnavailable,
            "keep-alive above max_keepalive",
        ));
    }
    let mut connack = ConnAckProperties::default();
    // 5.0: a client asking for more than we allow gets Server Keep Alive (v5 [MQTT-3.2.2-21]).
    let keep_alive = match v.is_v5() && limited && beyond {
        true => {
            connack.server_keep_alive = Some(connect.max_keepalive);
            connect.max_keepalive
        }
        false => c.keep_alive,
    };
    let session_expiry = match v {
        ProtocolVersion::V5 => {
            let asked = c.properties.session_expiry_interval.unwrap_or(0);
            let granted = asked.min(rules.max_session_expiry);
            if asked > rules.max_session_expiry {
                connack.session_expiry_interval = Some(granted);
            }
            granted
        }
        _ if c.clean_start => 0,
        _ if connect.v3_session_expiry > 0 => connect.v3_session_expiry.min(rules.max_session_expiry),
        _ => rules.max_session_expiry,
    };
    if v.is_v5() {
        advertise(rules, &mut connack);
    }
    Ok(Granted {
        keep_alive,
        session_expiry,
        assign_client_id: c.client_id.is_empty(),
        connack,
    })
}

/// What a 5.0 CONNACK says about this server (v5 section 3.2.2.3): absent means "supported" /
/// QoS 2, so a capability is named only where the server differs.
fn advertise(rules: &ServerRules, p: &mut ConnAckProperties) {
    p.receive_maximum = Some(rules.receive_maximum);
    p.maximum_packet_size = Some(rules.max_packet_size);
    if rules.topic_alias_maximum > 0 {
        p.topic_alias_maximum = Some(rules.topic_alias_maximum);
    }
    if rules.maximum_qos < crate::QoS::ExactlyOnce {
        p.maximum_qos = Some(rules.maximum_qos.as_u8());
    }
    if !rules.retain_available {
        p.retain_available = Some(0);
    }
    if !rules.wildcard_subscriptions {
        p.wildcard_subscription_available = Some(0);
    }
    if !rules.subscription_identifiers {
        p.subscription_identifier_available = Some(0);
    }
    if !rules.shared_subscriptions {
        p.shared_subscription_available = Some(0);
    }
}

/// During the enhanced authentication of CONNECT (v5 section 4.12), whether `reply` continues
/// the exchange: an AUTH 0x18 Continue authentication with the same method ([MQTT-4.12.0-5]).
/// Anything else ends it, and the CONNECT is refused.
pub fn continues_auth(reply: &Packet, method: &str) -> bool {
    matches!(reply, Packet::Auth(a)
        if a.reason_code == Some(ReasonCode::ContinueAuthentication)
            && a.properties.authentication_method.as_deref() == Some(method))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{QoS, Will};

    fn will(topic: &str) -> Will {
        Will {
            topic: topic.into(),
            payload: bytes::Bytes::from_static(b"gone"),
            qos: QoS::AtMostOnce,
            retain: false,
            properties: Default::default(),
        }
    }

    fn connect(v: ProtocolVersion, id: &str) -> Connect {
        let mut c = Connect::new(v, id);
        c.keep_alive = 30;
        c
    }

    #[test]
    fn empty_client_id_needs_clean_session_in_311_mqtt_3_1_3_8() {
        // v3.1.1 [MQTT-3.1.3-8]: refused with 0x02 Identifier rejected.
        let rules = ServerRules::default();
        let mut c = connect(ProtocolVersion::V3_1_1, "");
        c.clean_start = false;
        let r = check_connect(&c, &rules, &ConnectRules::default(), |_| false);
        assert_eq!(r.unwrap_err().0, ReasonCode::ClientIdentifierNotValid);
        c.clean_start = true;
        let g = check_connect(&c, &rules, &ConnectRules::default(), |_| false).unwrap();
        assert!(g.assign_client_id);
        assert_eq!(g.session_expiry, 0);
    }

    #[test]
    fn keep_alive_and_expiry_are_granted_within_the_limits_mqtt_3_2_2_21() {
        // v5 [MQTT-3.2.2-21]: the client uses the Server Keep Alive the CONNACK gives.
        let rules = ServerRules {
            max_session_expiry: 600,
            ..ServerRules::default()
        };
        let limits = ConnectRules {
            max_keepalive: 60,
            ..ConnectRules::default()
        };
        let mut c = connect(ProtocolVersion::V5, "a");
        c.keep_alive = 0;
        c.properties.session_expiry_interval = Some(u32::MAX);
        let g = check_connect(&c, &rules, &limits, |_| false).unwrap();
        assert_eq!((g.keep_alive, g.session_expiry), (60, 600));
        assert_eq!(g.connack.server_keep_alive, Some(60));
        assert_eq!(g.connack.session_expiry_interval, Some(600));
        // 3.1.1 cannot be told: refused.
        let c = connect(ProtocolVersion::V3_1_1, "a");
        let mut c = c;
        c.keep_alive = 0;
        let r = check_connect(&c, &rules, &limits, |_| false);
        assert_eq!(r.unwrap_err().0, ReasonCode::ServerUnavailable);
    }

    #[test]
    fn will_and_method_rules() {
        let rules = ServerRules {
            maximum_qos: QoS::AtLeastOnce,
            ..ServerRules::default()
        };
        let mut c = connect(ProtocolVersion::V5, "a");
        c.will = Some(will("w/#"));
        let r = check_connect(&c, &rules, &ConnectRules::default(), |_| false);
        assert_eq!(r.unwrap_err().0, ReasonCode::TopicNameInvalid);
        let mut w = will("w");
        w.qos = QoS::ExactlyOnce;
        c.will = Some(w);
        let r = check_connect(&c, &rules, &ConnectRules::default(), |_| false);
        assert_eq!(r.unwrap_err().0, ReasonCode::QoSNotSupported);
        c.will = None;
        // v5 [MQTT-4.12.0-1]: a method the server does not offer.
        c.properties.authentication_method = Some("SCRAM-SHA-256".into());
        let r = check_connect(&c, &rules, &ConnectRules::default(), |_| false);
        assert_eq!(r.unwrap_err().0, ReasonCode::BadAuthenticationMethod);
        let g = check_connect(&c, &rules, &ConnectRules::default(), |m| m == "SCRAM-SHA-256").unwrap();
        assert_eq!(g.connack.maximum_qos, Some(1));
        assert_eq!(g.connack.receive_maximum, Some(rules.receive_maximum));
    }
}
