//! What the client does with each packet from the server once connected:
//! the QoS flows in both directions, SUBACK/UNSUBACK, and every check of the
//! server's behaviour (RELIABILITY.md section K) that closes the connection.

use std::time::Instant;

use super::alias::AliasError;
use super::inbound::Qos2Arrival;
use super::outbound::{AckMatch, InFlight, PubRec, Queued};
use super::{ClientSession, CloseReason, Event, PublishError, PublishOutcome, RequestError};
use crate::codec::AckProperties;
use crate::packet::PacketType;
use crate::{Ack, Packet, Publish, QoS, ReasonCode, Role, SubAck, UnsubAck, Violation};

impl ClientSession {
    pub(super) fn on_packet(&mut self, now: Instant, packet: Packet) {
        match packet {
            Packet::Publish(p) => self.on_publish(now, p),
            Packet::PubAck(a) => self.on_puback(now, a),
            Packet::PubRec(a) => self.on_pubrec(now, a),
            Packet::PubRel(a) => self.on_pubrel(now, a),
            Packet::PubComp(a) => self.on_pubcomp(now, a),
            Packet::SubAck(s) => self.on_suback(now, s),
            Packet::UnsubAck(u) => self.on_unsuback(now, u),
            Packet::PingResp => {}
            Packet::Disconnect(d) => self.close(CloseReason::ServerDisconnect(d)),
            Packet::ConnAck(_) => self.violation(now, Violation::SecondConnAck),
            Packet::Auth(_) if self.auth.is_none() => {
                self.violation(now, Violation::AuthWithoutMethod { by: Role::Server })
            }
            // The client never starts a re-authentication.
            Packet::Auth(_) => self.violation(now, Violation::UnsolicitedAuth),
            other => self.violation(now, Violation::ClientOnlyPacket(other.packet_type())),
        }
    }

    /// [MQTT-3.1.2-29]: with Request Problem Information 0 the server may not send
    /// a Reason String or User Properties except in PUBLISH, CONNACK and DISCONNECT.
    fn problem_information_ok(&mut self, now: Instant, props: &AckProperties, what: PacketType) -> bool {
        if self.config.no_problem_information()
            && (props.reason_string.is_some() || !props.user_properties.is_empty())
        {
            self.violation(now, Violation::ProblemInformationNotRequested(what));
            return false;
        }
        true
    }

    fn on_publish(&mut self, now: Instant, mut p: Publish) {
        if let Some(alias) = p.properties.topic_alias {
            match self.aliases_in.resolve(&p.topic, alias) {
                Ok(t) => p.topic = t,
                Err(AliasError::AboveMaximum) => {
                    let maximum = self.config.topic_alias_maximum();
                    let by = Role::Server;
                    return self.violation(now, Violation::TopicAliasAboveMaximum { alias, maximum, by });
                }
                Err(AliasError::Unknown) => {
                    return self.violation(now, Violation::TopicAliasUnknown { alias })
                }
            }
            p.properties.topic_alias = None;
        }
        let Some(id) = p.packet_id else {
            self.events.push_back(Event::Message(p));
            return;
        };
        match p.qos {
            QoS::AtMostOnce => self.events.push_back(Event::Message(p)),
            // With manual acknowledgements, PUBACK / PUBREC wait for `ack`.
            QoS::AtLeastOnce if self.config.manual_acks => self.events.push_back(Event::Message(p)),
            QoS::AtLeastOnce => {
                // [MQTT-4.3.2-4], [MQTT-4.6.0-2]: PUBACK in the order of arrival.
                self.events.push_back(Event::Message(p));
                self.send(now, Packet::PubAck(Ack::new(id)));
            }
            QoS::ExactlyOnce => match self.inbound.on_publish(id, p.dup) {
                Qos2Arrival::Deliver if self.config.manual_acks => {
                    self.held_acks.insert(id.get());
                    self.events.push_back(Event::Message(p));
                }
                Qos2Arrival::Deliver => {
                    self.events.push_back(Event::Message(p));
                    self.send(now, Packet::PubRec(Ack::new(id)));
                }
                // Delivered and not acknowledged by the application yet: PUBREC comes then.
                Qos2Arrival::Duplicate if self.held_acks.contains(&id.get()) => {}
                Qos2Arrival::Duplicate => self.send(now, Packet::PubRec(Ack::new(id))),
                Qos2Arrival::IdInUse => {
                    let ack = if self.version.is_v5() {
                        Ack::with_reason(id, ReasonCode::PacketIdentifierInUse)
                    } else {
                        Ack::new(id)
                    };
                    self.send(now, Packet::PubRec(ack));
                }
                Qos2Arrival::QuotaExceeded => {
                    let maximum = self.config.receive_maximum();
                    let by = Role::Server;
                    self.violation(now, Violation::ReceiveMaximumExceeded { maximum, by })
                }
            },
        }
    }

    fn complete(&mut self, f: InFlight<Queued>, reason_code: ReasonCode, properties: AckProperties) {
        self.ids.release(f.id);
        self.held_releases.remove(&f.id.get());
        let result = if reason_code.is_error() {
            Err(PublishError::Rejected {
                reason_code,
                properties,
            })
        } else {
            Ok(PublishOutcome {
                reason_code,
                properties,
            })
        };
        self.events.push_back(Event::PublishDone {
            token: f.message.token,
            result,
        });
    }

    fn on_puback(&mut self, now: Instant, a: Ack) {
        if !self.problem_information_ok(now, &a.properties, PacketType::PubAck) {
            return;
        }
        match self.outbound.window().on_puback(a.packet_id) {
            AckMatch::Completed(f) => self.complete(f, a.reason_code, a.properties),
            AckMatch::WrongQoS => self.violation(now, Violation::PubAckForQoS2(a.packet_id)),
            _ => {}
        }
    }

    fn on_pubrec(&mut self, now: Instant, a: Ack) {
        if !self.problem_information_ok(now, &a.properties, PacketType::PubRec) {
            return;
        }
        let (mut relayed, mut done) = (None, None);
        let matched = self.outbound.window().on_pubrec_with(
            a.packet_id,
            a.reason_code.is_error(),
            |f| relayed = f.message.relay.then_some(f.message.token),
            |f| done = Some(f),
        );
        let id = a.packet_id;
        match matched {
            // [MQTT-4.4.0-2]: a failure code ends the flow.
            PubRec::Completed => {
                if let Some(f) = done {
                    self.complete(f, a.reason_code, a.properties);
                }
            }
            // A relayed message: PUBREL waits for `release`.
            PubRec::Released if relayed.is_some() => {
                self.held_releases.insert(id.get());
                if let Some(token) = relayed {
                    self.events.push_back(Event::PublishReceived { token });
                }
            }
            PubRec::AlreadyReleased if self.held_releases.contains(&id.get()) => {}
            // [MQTT-4.3.3-4]
            PubRec::Released | PubRec::AlreadyReleased => self.send(now, Packet::PubRel(Ack::new(id))),
            // Only QoS 1 and 2 messages are in flight.
            PubRec::WrongQoS => self.violation(now, Violation::PubRecForQoS1(id)),
            PubRec::Unknown => {
                let rel = if self.version.is_v5() {
                    Ack::with_reason(id, ReasonCode::PacketIdentifierNotFound)
                } else {
                    Ack::new(id)
                };
                self.send(now, Packet::PubRel(rel));
            }
        }
    }

    fn on_pubrel(&mut self, now: Instant, a: Ack) {
        if !self.problem_information_ok(now, &a.properties, PacketType::PubRel) {
            return;
        }
        // [MQTT-4.3.3-11]
        let known = self.inbound.on_pubrel(a.packet_id);
        let comp = if known || !self.version.is_v5() {
            Ack::new(a.packet_id)
        } else {
            Ack::with_reason(a.packet_id, ReasonCode::PacketIdentifierNotFound)
        };
        self.send(now, Packet::PubComp(comp));
    }

    fn on_pubcomp(&mut self, now: Instant, a: Ack) {
        if !self.problem_information_ok(now, &a.properties, PacketType::PubComp) {
            return;
        }
        if let AckMatch::Completed(f) = self.outbound.window().on_pubcomp(a.packet_id) {
            self.complete(f, a.reason_code, a.properties);
        }
    }

    fn on_suback(&mut self, now: Instant, s: SubAck) {
        if !self.problem_information_ok(now, &s.properties, PacketType::SubAck) {
            return;
        }
        let Some((token, sub)) = self.requests.take_subscribe(s.packet_id) else {
            return;
        };
        self.ids.release(sub.packet_id);
        if s.reason_codes.len() != sub.filters.len() {
            let v = Violation::SubAckCodeCount {
                codes: s.reason_codes.len(),
                filters: sub.filters.len(),
            };
            if let Some(token) = token {
                self.events.push_back(Event::SubscribeDone {
                    token,
                    result: Err(RequestError::Protocol(v.clone())),
                });
            }
            return self.violation(now, v);
        }
        let sub_id = sub.properties.subscription_identifier;
        for ((filter, opts), code) in sub.filters.into_iter().zip(&s.reason_codes) {
            if code.is_error() {
                self.subscriptions.removed(&filter);
                if token.is_none() {
                    self.events.push_back(Event::ResubscribeFailed {
                        filter,
                        reason_code: *code,
                    });
                }
            } else {
                self.subscriptions.granted(filter, (opts, sub_id));
            }
        }
        if let Some(token) = token {
            self.events
                .push_back(Event::SubscribeDone { token, result: Ok(s) });
        }
    }

    fn on_unsuback(&mut self, now: Instant, u: UnsubAck) {
        if !self.problem_information_ok(now, &u.properties, PacketType::UnsubAck) {
            return;
        }
        let Some((token, unsub)) = self.requests.take_unsubscribe(u.packet_id) else {
            return;
        };
        self.ids.release(unsub.packet_id);
        if self.version.is_v5() && u.reason_codes.len() != unsub.filters.len() {
            let v = Violation::UnsubAckCodeCount {
                codes: u.reason_codes.len(),
                filters: unsub.filters.len(),
            };
            if let Some(token) = token {
                self.events.push_back(Event::UnsubscribeDone {
                    token,
                    result: Err(RequestError::Protocol(v.clone())),
                });
            }
            return self.violation(now, v);
        }
        for f in &unsub.filters {
            self.subscriptions.removed(f);
        }
        if let Some(token) = token {
            self.events
                .push_back(Event::UnsubscribeDone { token, result: Ok(u) });
        }
    }
}
