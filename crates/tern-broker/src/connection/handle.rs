//! What the broker does with each packet a connected client sends.

use std::sync::Arc;
use std::time::Instant;

use tern_proto::{
    topic, Ack, PacketId, Publish, QoS, ReasonCode, RetainHandling, Role, SubAck, Subscribe, UnsubAck,
    Unsubscribe, Violation,
};
use tern_proto::{Disconnect, Packet};

use super::{Aliases, Close, Conn};
use crate::message::Message;
use crate::router::SubEntry;
use crate::security::Action;
use crate::session::InflightState;
use tern_proto::session::alias::AliasError;

impl Conn {
    pub(super) fn on_packet(&mut self, packet: Packet, now: Instant) -> Result<(), Close> {
        if !matches!(packet, Packet::PubAck(_)) {
            // PUBACKs are applied in batches; anything else sees them applied first.
            self.apply_pubacks()?;
        }
        match packet {
            Packet::Publish(p) => self.on_publish(p, now),
            Packet::PubAck(a) => self.on_puback(a),
            Packet::PubRec(a) => self.on_pubrec(a),
            Packet::PubRel(a) => self.on_pubrel(a),
            Packet::PubComp(a) => self.on_pubcomp(a),
            Packet::Subscribe(s) => self.on_subscribe(s, now),
            Packet::Unsubscribe(u) => self.on_unsubscribe(u),
            Packet::PingReq => {
                self.send(Packet::PingResp);
                Ok(())
            }
            Packet::Disconnect(d) => self.on_disconnect(d),
            Packet::Connect(_) => Err(Close::Violation(Violation::SecondConnect)),
            Packet::Auth(a) => self.on_auth(a),
            p @ (Packet::ConnAck(_) | Packet::SubAck(_) | Packet::UnsubAck(_) | Packet::PingResp) => {
                Err(Close::Violation(Violation::ServerOnlyPacket(p.packet_type())))
            }
        }
    }

    fn on_publish(&mut self, p: Publish, now: Instant) -> Result<(), Close> {
        let cfg = &self.shared.config;
        // Topic alias (v5 section 3.3.2.3.4).
        let topic = match p.properties.topic_alias {
            Some(alias) => {
                let (ours, clients) = (cfg.topic_alias_maximum, self.client_alias_maximum);
                let aliases = self.aliases.get_or_insert_with(|| Aliases::new(ours, clients));
                // An own copy when the mapping is set: a slice would keep its whole read
                // buffer alive.
                let given = match p.topic.is_empty() {
                    true => tern_proto::ByteString::new(),
                    false => tern_proto::ByteString::from(p.topic.to_string()),
                };
                match aliases.inbound.resolve(&given, alias) {
                    Ok(t) => t,
                    Err(AliasError::AboveMaximum) => {
                        return Err(Close::Violation(Violation::TopicAliasAboveMaximum {
                            alias,
                            maximum: cfg.topic_alias_maximum,
                            by: Role::Client,
                        }))
                    }
                    Err(AliasError::Unknown) => {
                        return Err(Close::Violation(Violation::TopicAliasUnknown { alias }))
                    }
                }
            }
            None => p.topic.clone(),
        };
        if !p.properties.subscription_identifiers.is_empty() {
            return Err(Close::Violation(Violation::PublishWithSubscriptionId));
        }
        if let Some(rt) = &p.properties.response_topic {
            if let Err(e) = topic::validate_topic_name(rt) {
                return Err(Close::Violation(Violation::ResponseTopicInvalid(e)));
            }
        }
        let levels = topic.split('/').count();
        if topic.len() > cfg.max_topic_length || levels > cfg.max_topic_levels {
            return Err(Close::Violation(Violation::TopicAboveLimits {
                length: topic.len(),
                levels,
                max_length: cfg.max_topic_length,
                max_levels: cfg.max_topic_levels,
            }));
        }
        // v5 section 3.2.2.3.4 / 3.2.2.3.5: above the advertised Maximum QoS, or RETAIN without Retain Available.
        if p.qos > cfg.max_qos() {
            return Err(Close::Violation(Violation::QoSNotSupported {
                qos: p.qos,
                maximum: cfg.max_qos(),
            }));
        }
        if p.retain && !cfg.retain_available {
            return Err(Close::Violation(Violation::RetainNotSupported));
        }
        let user = self.info.username.as_deref();
        if !self
            .shared
            .security
            .allows(Action::Publish, user, &self.client_id, &topic)
        {
            tracing::info!(client_id = %self.client_id, %topic, "PUBLISH denied by the ACL");
            self.deny_publish(p.qos, p.packet_id);
            return Ok(());
        }
        let qos = p.qos;
        let packet_id = p.packet_id;
        if qos != QoS::AtMostOnce {
            self.needs_commit = true;
            // A store that failed cannot keep what we would acknowledge: refuse instead.
            if let (Some(id), true) = (packet_id, self.shared.durability.failed()) {
                if !self.version.is_v5() {
                    return Err(Close::Violation(Violation::StorageFailed(
                        "the store has failed".into(),
                    )));
                }
                let ack = Ack::with_reason(id, ReasonCode::UnspecifiedError);
                self.send(if qos == QoS::AtLeastOnce {
                    Packet::PubAck(ack)
                } else {
                    Packet::PubRec(ack)
                });
                return Ok(());
            }
        }
        let msg = Arc::new(Message::from_publish(p, topic, Some(self.client_id.clone()), now));
        // The QoS 2 packet id and the copies routed to sessions are stored atomically: a
        // crash can lose both (the publisher resends) but never keep one without the other.
        let group = self.shared.durability.group();
        let result = self.publish_routed(msg, qos, packet_id);
        self.shared.durability.end_group(group);
        result
    }

    fn publish_routed(
        &mut self,
        msg: Arc<Message>,
        qos: QoS,
        packet_id: Option<PacketId>,
    ) -> Result<(), Close> {
        let cfg = &self.shared.config;
        match (qos, packet_id) {
            (QoS::AtMostOnce, _) => {
                self.route(&msg);
            }
            (QoS::AtLeastOnce, Some(id)) => {
                let n = self.route(&msg);
                self.send(Packet::PubAck(self.pub_ack(id, n)));
            }
            (QoS::ExactlyOnce, Some(id)) => {
                let fresh = {
                    let mut st = self.cell.lock();
                    if st.inbound_qos2.contains(&id.get()) {
                        false
                    } else if st.inbound_qos2.len() >= usize::from(cfg.receive_maximum) {
                        return Err(Close::Violation(Violation::ReceiveMaximumExceeded {
                            maximum: cfg.receive_maximum,
                            by: Role::Client,
                        }));
                    } else {
                        st.inbound_qos2.insert(id.get());
                        self.shared.durability.put_qos2(&st, &self.client_id, id);
                        true
                    }
                };
                // [MQTT-4.3.3-10] (v5) / 3.1.1 method B: deliver once, until PUBREL.
                let n = if fresh { self.route(&msg) } else { 1 };
                self.send(Packet::PubRec(self.pub_ack(id, n)));
            }
            (qos, None) => return Err(Close::Violation(Violation::MissingPacketId(qos))),
        }
        Ok(())
    }

    /// A PUBLISH the ACL refuses is not routed ([MQTT-3.3.5-2]). 5.0 answers
    /// PUBACK/PUBREC 0x87 Not authorized; 3.1.1 cannot say so and acknowledges as
    /// usual (the PUBREL of QoS 2 then gets its PUBCOMP like any unknown id).
    fn deny_publish(&mut self, qos: QoS, packet_id: Option<PacketId>) {
        let Some(id) = packet_id else { return };
        let ack = if self.version.is_v5() {
            Ack::with_reason(id, ReasonCode::NotAuthorized)
        } else {
            Ack::new(id)
        };
        self.send(if qos == QoS::ExactlyOnce {
            Packet::PubRec(ack)
        } else {
            Packet::PubAck(ack)
        });
    }

    fn pub_ack(&self, id: PacketId, matched: usize) -> Ack {
        if matched == 0 && self.version.is_v5() {
            Ack::with_reason(id, ReasonCode::NoMatchingSubscribers)
        } else {
            Ack::new(id)
        }
    }

    fn route(&mut self, msg: &Arc<Message>) -> usize {
        if msg.retain && !self.shared.retain(msg) {
            tracing::warn!(client_id = %self.client_id, topic = %msg.topic, "retained store full (max_retained); message not retained");
        }
        if self.shared.durability.enabled() {
            // Queued at once: the store groups a QoS 2 packet id with the copies routed
            // for it, so they must be submitted inside the group.
            return self.shared.publish(msg, &mut self.pressure);
        }
        let start = self.pending.len();
        let n = self.shared.publish_deferred(msg, &mut self.pending);
        self.pending_bytes += n * msg.payload.len();
        self.pending_messages += 1;
        let cfg = &self.shared.config;
        let full = self.pending.len() >= self.shared.deliver_batch
            || self.pending_bytes >= cfg.max_queued_bytes / 4
            || self.pending[start..].iter().any(|(cell, _)| cell.is_near_full());
        if full {
            self.deliver_pending();
        }
        n
    }

    /// Queue the deliveries collected from the packets decoded so far (before any
    /// acknowledgement for them is written, and before backpressure is checked).
    pub(super) fn deliver_pending(&mut self) {
        if !self.pending.is_empty() {
            self.shared
                .deliver_all(&mut self.pending, Some(&mut self.pressure));
        }
        self.pending_bytes = 0;
        if self.pending_messages > 0 {
            let n = std::mem::take(&mut self.pending_messages);
            self.shared
                .counters
                .messages_in
                .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        }
        // An idle connection keeps no batch space (a busy one allocates once per read).
        if self.pending.capacity() > 64 {
            self.pending = Vec::new();
        }
    }

    /// PUBACKs are collected and applied together (one session lock for all those
    /// of one read, rather than one per message): see [`Conn::apply_pubacks`].
    fn on_puback(&mut self, a: Ack) -> Result<(), Close> {
        self.pubacks.push(a.packet_id);
        if self.pubacks.len() >= MAX_PUBACK_BATCH {
            self.apply_pubacks()?;
        }
        Ok(())
    }

    /// Release the in-flight QoS 1 deliveries of the PUBACKs collected so far.
    pub(super) fn apply_pubacks(&mut self) -> Result<(), Close> {
        if self.pubacks.is_empty() {
            return Ok(());
        }
        let mut ids = std::mem::take(&mut self.pubacks);
        let result = {
            let mut st = self.cell.lock();
            self.check_attached(&st).and_then(|()| {
                for &id in &ids {
                    match st.find_inflight(id) {
                        Some(i) if st.inflight[i].out.qos == QoS::AtLeastOnce => {
                            if let Some(done) = st.remove_inflight(i) {
                                self.forget(&st, done.out.seq);
                            }
                        }
                        Some(_) => return Err(Close::Violation(Violation::PubAckForQoS2(id))),
                        None => {
                            tracing::debug!(client_id = %self.client_id, id = id.get(), "PUBACK for unknown packet id");
                        }
                    }
                }
                Ok(())
            })
        };
        ids.clear();
        // Small enough to keep; a burst's larger list is given back (idle memory).
        if ids.capacity() <= 16 {
            self.pubacks = ids;
        }
        result
    }

    fn on_pubrec(&mut self, a: Ack) -> Result<(), Close> {
        let reply = {
            let mut st = self.cell.lock();
            self.check_attached(&st)?;
            match st.find_inflight(a.packet_id) {
                Some(i) if st.inflight[i].out.qos == QoS::ExactlyOnce => {
                    if a.reason_code.is_error() {
                        // [MQTT-4.4.0-2] an error PUBREC completes the delivery.
                        if let Some(done) = st.remove_inflight(i) {
                            self.forget(&st, done.out.seq);
                        }
                        None
                    } else {
                        st.inflight[i].state = InflightState::Released;
                        let i = &st.inflight[i];
                        self.shared.durability.put_delivery(
                            &st,
                            &self.client_id,
                            &i.out,
                            InflightState::Released,
                            i.packet_id,
                        );
                        // PUBREL goes out only once the Released stage is durable: the client
                        // forgets the packet id at PUBREL, so after a crash the broker must
                        // resend PUBREL, never the PUBLISH it would take for a new message
                        // (found by the simulation, tern-sim).
                        if st.persistent && i.out.seq != 0 {
                            self.needs_commit = true;
                        }
                        Some(Ack::new(a.packet_id))
                    }
                }
                Some(_) => return Err(Close::Violation(Violation::PubRecForQoS1(a.packet_id))),
                None if self.version.is_v5() => Some(Ack::with_reason(
                    a.packet_id,
                    ReasonCode::PacketIdentifierNotFound,
                )),
                None => Some(Ack::new(a.packet_id)),
            }
        };
        if let Some(r) = reply {
            self.send(Packet::PubRel(r));
        }
        Ok(())
    }

    fn on_pubrel(&mut self, a: Ack) -> Result<(), Close> {
        let found = {
            let mut st = self.cell.lock();
            let found = st.inbound_qos2.remove(&a.packet_id.get());
            if found {
                self.shared
                    .durability
                    .forget_qos2(&st, &self.client_id, a.packet_id);
                self.needs_commit = true;
            }
            found
        };
        let reply = if found || !self.version.is_v5() {
            Ack::new(a.packet_id)
        } else {
            Ack::with_reason(a.packet_id, ReasonCode::PacketIdentifierNotFound)
        };
        self.send(Packet::PubComp(reply));
        Ok(())
    }

    fn on_pubcomp(&mut self, a: Ack) -> Result<(), Close> {
        let mut st = self.cell.lock();
        self.check_attached(&st)?;
        if let Some(i) = st.find_inflight(a.packet_id) {
            if st.inflight[i].state == InflightState::Released {
                if let Some(done) = st.remove_inflight(i) {
                    self.forget(&st, done.out.seq);
                }
            }
        }
        Ok(())
    }

    /// Delete the stored record of a finished delivery.
    pub(super) fn forget(&self, st: &crate::session::SessionState, seq: u64) {
        self.shared.durability.forget_delivery(st, &self.client_id, seq);
    }

    fn on_subscribe(&mut self, s: Subscribe, now: Instant) -> Result<(), Close> {
        // Retained messages are queued at once: what this client published before
        // the SUBSCRIBE goes first, in order.
        self.deliver_pending();
        let cfg = &self.shared.config;
        let sub_id = s.properties.subscription_identifier;
        if sub_id.is_some() && !cfg.subscription_identifiers {
            return Err(Close::Violation(Violation::SubscriptionIdentifiersNotSupported));
        }
        let mut codes = Vec::with_capacity(s.filters.len());
        let mut retained = Vec::new();
        // Filters refused by max_subscriptions_per_client and by
        // max_wildcard_subscriptions_per_client: logged once per SUBSCRIBE, not per filter.
        let mut refused = (0usize, 0usize);
        for (filter, opts) in &s.filters {
            let parsed = match topic::parse_filter(filter) {
                Ok(p)
                    if p.filter.split('/').count() <= cfg.max_topic_levels
                        && filter.len() <= cfg.max_topic_length =>
                {
                    p
                }
                _ => {
                    tracing::debug!(client_id = %self.client_id, %filter, "invalid topic filter");
                    codes.push(ReasonCode::TopicFilterInvalid);
                    continue;
                }
            };
            if parsed.share_group.is_some() && !cfg.shared_subscriptions {
                codes.push(ReasonCode::SharedSubscriptionsNotSupported);
                continue;
            }
            if topic::has_wildcards(parsed.filter) && !cfg.wildcard_subscriptions {
                codes.push(ReasonCode::WildcardSubscriptionsNotSupported);
                continue;
            }
            let user = self.info.username.as_deref();
            if !self
                .shared
                .security
                .allows(Action::Subscribe, user, &self.client_id, parsed.filter)
            {
                // SUBACK 0x87 Not authorized (3.1.1: 0x80 Failure).
                tracing::info!(client_id = %self.client_id, %filter, "SUBSCRIBE denied by the ACL");
                codes.push(cfg.denied_subscription_reason.reason_code());
                continue;
            }
            let mut opts = *opts;
            opts.qos = opts.qos.min(cfg.max_qos());
            let opts = &opts;
            let (is_new, held, wildcards) = {
                let st = self.cell.lock();
                let subs = &st.subscriptions;
                (!subs.contains_key(filter), subs.len(), subs.wildcards())
            };
            // A new filter beyond a limit: SUBACK 0x97 Quota exceeded (3.1.1: 0x80 Failure) for
            // that filter alone, v5 [MQTT-3.8.4-7] / v3.1.1 [MQTT-3.8.4-5].
            if is_new && held >= cfg.max_subscriptions_per_client {
                refused.0 += 1;
                codes.push(ReasonCode::QuotaExceeded);
                continue;
            }
            // Overlapping wildcard filters can all match one topic, and a publish costs a step
            // per matching filter: a client's wildcard filters are bounded apart.
            if is_new
                && topic::has_wildcards(parsed.filter)
                && wildcards >= cfg.max_wildcard_subscriptions_per_client
            {
                refused.1 += 1;
                codes.push(ReasonCode::QuotaExceeded);
                continue;
            }
            let entry = SubEntry {
                options: *opts,
                id: sub_id,
                session: self.cell.clone(),
                shared: parsed.share_group.map(|_| Arc::from(&**filter)),
            };
            let existed = match self.shared.subscribe(filter, &self.cell, entry) {
                Ok(existed) => existed,
                Err(e) => {
                    tracing::warn!(client_id = %self.client_id, %filter, "subscription refused: {e}");
                    codes.push(ReasonCode::QuotaExceeded);
                    continue;
                }
            };
            self.cell
                .lock()
                .subscriptions
                .insert(filter.to_string(), (*opts, sub_id));
            codes.push(ReasonCode::granted(opts.qos));
            // Retained messages are not sent for shared subscriptions (v5 section 4.8.2).
            let send = parsed.share_group.is_none()
                && match opts.retain_handling {
                    RetainHandling::SendAtSubscribe => true,
                    RetainHandling::SendIfNew => !existed,
                    RetainHandling::DoNotSend => false,
                };
            if send {
                retained.push((parsed.filter.to_string(), opts.qos));
            }
        }
        if refused.0 > 0 {
            tracing::info!(client_id = %self.client_id, refused = refused.0, limit = cfg.max_subscriptions_per_client,
                "SUBSCRIBE refused: max_subscriptions_per_client reached");
        }
        if refused.1 > 0 {
            tracing::info!(client_id = %self.client_id, refused = refused.1, limit = cfg.max_wildcard_subscriptions_per_client,
                "SUBSCRIBE refused: max_wildcard_subscriptions_per_client reached");
        }
        let mut ack = SubAck {
            packet_id: s.packet_id,
            properties: Default::default(),
            reason_codes: codes,
        };
        if self.version.is_v5() && self.problem_information && ack.reason_codes.iter().any(|c| c.is_error()) {
            ack.properties.reason_string = Some("one or more topic filters were refused".into());
        }
        self.send(Packet::SubAck(ack));
        self.shared.persist_session(&self.cell, false);
        self.needs_commit = true;
        for (filter, qos) in retained {
            self.shared.send_retained(&filter, &self.cell, qos, sub_id, now);
        }
        Ok(())
    }

    fn on_unsubscribe(&mut self, u: Unsubscribe) -> Result<(), Close> {
        let mut codes = Vec::with_capacity(u.filters.len());
        for filter in &u.filters {
            let existed = self.cell.lock().subscriptions.remove(filter).is_some();
            self.shared.unsubscribe(filter, &self.cell);
            codes.push(if existed {
                ReasonCode::Success
            } else {
                ReasonCode::NoSubscriptionExisted
            });
        }
        self.shared.persist_session(&self.cell, false);
        self.needs_commit = true;
        if !self.version.is_v5() {
            codes.clear();
        }
        let ack = UnsubAck {
            packet_id: u.packet_id,
            properties: Default::default(),
            reason_codes: codes,
        };
        self.send(Packet::UnsubAck(ack));
        Ok(())
    }

    /// Re-authentication (v5 section 4.12.1).
    fn on_auth(&mut self, a: tern_proto::Auth) -> Result<(), Close> {
        let Some(method) = self.auth_method.clone() else {
            return Err(Close::Violation(Violation::AuthWithoutMethod {
                by: Role::Client,
            }));
        };
        // The same method as in CONNECT (v5 [MQTT-4.12.0-5], [MQTT-4.12.1-1]).
        if a.properties.authentication_method.as_ref() != Some(&method) {
            return Err(Close::Violation(Violation::AuthMethodMismatch {
                expected: method,
                received: a.properties.authentication_method,
            }));
        }
        let data = a.properties.authentication_data.as_deref();
        let step = match (a.reason_code, self.reauth.as_mut()) {
            (Some(ReasonCode::ReAuthenticate), None) => {
                let Some(auth) = self.shared.authenticators.iter().find(|x| x.method() == &*method) else {
                    return Err(Close::NotAuthorized);
                };
                let mut ex = auth.begin(&self.client_id, self.info.username.as_deref());
                let step = ex.step(data);
                self.reauth = Some(ex);
                step
            }
            (Some(ReasonCode::ContinueAuthentication), Some(ex)) => ex.step(data),
            (code, _) => {
                return Err(Close::Violation(Violation::UnexpectedAuthReasonCode {
                    code: code.unwrap_or(ReasonCode::Success),
                    by: Role::Client,
                }))
            }
        };
        let mut reply = tern_proto::Auth::default();
        reply.properties.authentication_method = Some(method);
        match step {
            crate::AuthStep::Continue(d) => {
                reply.reason_code = Some(ReasonCode::ContinueAuthentication);
                reply.properties.authentication_data = Some(d);
            }
            crate::AuthStep::Success(d) => {
                self.reauth = None;
                reply.reason_code = Some(ReasonCode::Success);
                reply.properties.authentication_data = d;
            }
            crate::AuthStep::Failure => return Err(Close::NotAuthorized),
        }
        self.send(Packet::Auth(reply));
        Ok(())
    }

    fn on_disconnect(&mut self, d: Disconnect) -> Result<(), Close> {
        if let Some(expiry) = d.properties.session_expiry_interval {
            // v5 section 3.14.2.2.2: a non-zero expiry after CONNECT said 0 is a Protocol Error.
            if self.connect_expiry == 0 && expiry != 0 {
                return Err(Close::Violation(Violation::SessionExpiryAfterZero { expiry }));
            }
            // Only while this connection still holds the session: a DISCONNECT handled after a
            // new connection took the session over must not shorten the new one's expiry.
            let mut st = self.cell.lock();
            if st.conn_id == Some(self.conn_id) {
                st.expiry_interval = expiry.min(self.shared.config.max_session_expiry);
            }
        }
        Err(Close::ClientDisconnect {
            with_will: d.reason() == ReasonCode::DisconnectWithWill,
        })
    }
}

/// Most PUBACKs collected before they are applied.
const MAX_PUBACK_BATCH: usize = 256;
