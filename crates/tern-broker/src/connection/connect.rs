//! The CONNECT phase: wait for CONNECT within the connect timeout, check it,
//! find or create the session (taking over an older connection), send CONNACK.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tern_proto::codec::{Decoded, Decoder};
use tern_proto::{ByteString, ConnAck, Connect, DecodeError, Packet, ProtocolVersion, ReasonCode};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::sync::Notify;

use super::{Conn, Link, WillState};
use crate::broker_core::Core;
use crate::message::Message;
use crate::session::{Attached, SessionCell};
use crate::AuthStep;
use tern_proto::session::server::{check_connect, continues_auth, ClientLimits, ServerSession};

/// Why no session was established.
#[derive(Debug)]
pub(crate) enum Refused {
    /// Nothing to answer: the peer closed, timed out or sent something that is not a CONNECT.
    Silent(String),
    /// CONNACK with this reason code was sent.
    Answered(ReasonCode, String),
}

/// The protocol level byte of a CONNECT, read from raw bytes, to pick the CONNACK format
/// when the CONNECT itself cannot be decoded.
fn peek_level(buf: &[u8]) -> Option<u8> {
    let mut i = 1;
    while i < 5 && *buf.get(i)? & 0x80 != 0 {
        i += 1;
    }
    let name_len = u16::from_be_bytes([*buf.get(i + 1)?, *buf.get(i + 2)?]) as usize;
    buf.get(i + 3 + name_len).copied()
}

async fn send_connack<S: AsyncWrite + Unpin>(io: &mut S, version: ProtocolVersion, ack: ConnAck) {
    let mut out = BytesMut::new();
    if Packet::ConnAck(ack).encode(version, &mut out).is_ok() {
        let _ = tokio::time::timeout(Duration::from_secs(1), super::write_flush(io, &out)).await;
    }
}

/// Read until the first packet is complete; it must be a CONNECT ([MQTT-3.1.0-1]).
pub(crate) async fn read_connect<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
    buf: &mut BytesMut,
    core: &Core,
) -> Result<Box<Connect>, Refused> {
    // The first packet has a limit of its own, smaller than max_packet_size: an unauthenticated
    // client holds at most that much of the broker's memory until the connect timeout.
    let decoder = Decoder::new(ProtocolVersion::V3_1_1, core.config.connect_packet_limit());
    let deadline = core.clock.now() + core.config.connect_timeout();
    // A large CONNECT in progress counts against the broker-wide budget for partial packets.
    let mut claim = None;
    let mut evict: Option<Arc<Notify>> = None;
    loop {
        match decoder.decode(buf) {
            Ok(Decoded::Packet(Packet::Connect(c))) => return Ok(c),
            Ok(Decoded::Packet(p)) => {
                return Err(Refused::Silent(format!(
                    "[MQTT-3.1.0-1] first packet was {:?}, not CONNECT",
                    p.packet_type()
                )))
            }
            Ok(Decoded::NeedMore(_)) => {}
            Err(e) => return Err(refuse_bad_connect(io, buf, e).await),
        }
        if buf.len() >= crate::budget::TRACKED {
            let wake = evict.get_or_insert_with(|| Arc::new(Notify::new()));
            core.partial.hold(&mut claim, buf.capacity(), wake);
        }
        if crate::budget::evicted(&claim) {
            return Err(Refused::Silent(
                "the budget for partial packets (max_partial_bytes) ran out and this CONNECT in progress was among the oldest".into(),
            ));
        }
        if buf.capacity() - buf.len() < 128 {
            buf.reserve(256);
        }
        let evicted = async {
            match &evict {
                Some(w) => w.notified().await,
                None => std::future::pending().await,
            }
        };
        // Biased (here and in every select! of the broker): polled in a fixed order, a run
        // on a current-thread runtime is reproducible (the simulation replays seeds).
        tokio::select! {
            biased;
            r = io.read_buf(buf) => match r {
                Ok(0) => return Err(Refused::Silent("closed before CONNECT".into())),
                Ok(_) => {}
                Err(e) => return Err(Refused::Silent(format!("read error before CONNECT: {e}"))),
            },
            () = evicted => {}
            // On the broker's clock: a test's ManualClock passes it without waiting.
            () = core.clock.sleep_until(deadline) => {
                return Err(Refused::Silent("no CONNECT within the connect timeout".into()))
            }
        }
    }
}

async fn refuse_bad_connect<S: AsyncWrite + Unpin>(io: &mut S, buf: &[u8], e: DecodeError) -> Refused {
    let level = peek_level(buf);
    let why = format!("bad CONNECT: {e}");
    match (&e, level) {
        // [MQTT-3.1.2-2]: unsupported level gets return code 0x01 in 3.1.1 form, then close.
        (DecodeError::UnsupportedProtocolLevel(_), _) => {
            send_connack(
                io,
                ProtocolVersion::V3_1_1,
                ConnAck::new(ReasonCode::UnsupportedProtocolVersion, false),
            )
            .await;
            Refused::Answered(ReasonCode::UnsupportedProtocolVersion, why)
        }
        // v5: errors in CONNECT may be reported with CONNACK >= 0x80 ([MQTT-3.2.2-7]).
        (_, Some(5)) => {
            let rc = e.reason_code();
            send_connack(io, ProtocolVersion::V5, ConnAck::new(rc, false)).await;
            Refused::Answered(rc, why)
        }
        // 3.1.1: close without CONNACK ([MQTT-3.1.4-1]).
        _ => Refused::Silent(why),
    }
}

/// Answer CONNECT `c` with a refusing CONNACK carrying `rc` (and, for 5.0, `why` as Reason String).
async fn refuse_with<S: AsyncWrite + Unpin>(io: &mut S, c: &Connect, rc: ReasonCode, why: String) -> Refused {
    let mut ack = ConnAck::new(rc, false);
    if c.protocol_version.is_v5() {
        ack.properties.reason_string = Some(why.as_str().into());
    }
    send_connack(io, c.protocol_version, fit(ack, c)).await;
    Refused::Answered(rc, why)
}

/// The CONNACK without the Reason String and User Properties the client's Maximum Packet
/// Size has no room for (v5 [MQTT-3.2.2-19], [MQTT-3.2.2-20]).
fn fit(ack: ConnAck, c: &Connect) -> ConnAck {
    let mut p = Packet::ConnAck(ack);
    p.fit_within(
        c.protocol_version,
        c.properties.maximum_packet_size.unwrap_or(u32::MAX),
    );
    match p {
        Packet::ConnAck(a) => a,
        _ => ConnAck::new(ReasonCode::UnspecifiedError, false),
    }
}

fn refuse(rc: ReasonCode, why: &str) -> (ReasonCode, String) {
    (rc, why.to_string())
}

/// Check a decoded CONNECT, attach the session and answer with CONNACK.
pub(crate) async fn accept<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
    buf: &mut BytesMut,
    connect: Box<Connect>,
    core: &Arc<Core>,
    peer: SocketAddr,
    origin: &crate::security::Origin,
) -> Result<Conn, Refused> {
    let c = *connect;
    let v = c.protocol_version;
    let cfg = &core.config;
    // The protocol's rules (tern_proto): what is acceptable and what it is granted.
    let offers = |m: &str| core.authenticators.iter().any(|a| a.method() == m);
    let granted = match check_connect(&c, &core.rules, &core.connect_rules, offers) {
        Ok(g) => g,
        Err((rc, why)) => return Err(refuse_with(io, &c, rc, why).await),
    };
    let mut props = granted.connack;

    // Client identifier: [MQTT-3.1.3-6..8] (3.1.1), [MQTT-3.1.3-6,7] (5.0).
    let client_id: Arc<str> = if granted.assign_client_id {
        let assigned: Arc<str> = format!("tern-{:016x}", core.next_conn_id() ^ random_seed()).into();
        if v.is_v5() {
            props.assigned_client_identifier = Some(assigned.as_ref().into());
        }
        assigned
    } else {
        Arc::from(&*c.client_id)
    };
    // A bridge's session ($bridge/NAME) holds its outbox: no client from a listener may take it over.
    if client_id.starts_with(crate::BRIDGE_CLIENT_PREFIX) && &*origin.policy.name != crate::INTERNAL_ORIGIN {
        let why = format!(
            "client identifiers beginning with {} are the bridges'",
            crate::BRIDGE_CLIENT_PREFIX
        );
        return Err(refuse_with(io, &c, ReasonCode::ClientIdentifierNotValid, why).await);
    }

    // Enhanced authentication (v5 section 4.12) before the session is touched.
    let mut enhanced_identity = None;
    if let Some(method) = &c.properties.authentication_method {
        match enhanced_auth(io, buf, core, &c, &client_id).await {
            Ok((data, identity)) => {
                props.authentication_method = Some(method.clone());
                props.authentication_data = data;
                enhanced_identity = identity;
            }
            Err((rc, why)) => {
                core.security
                    .failed(peer, &client_id, c.username.as_deref(), rc, &why);
                return Err(refuse_with(io, &c, rc, why).await);
            }
        }
    }

    // Who the client is: certificate, enhanced authentication, password file, or anonymous.
    let username = match core
        .security
        .authenticate(origin, peer, &client_id, &c, enhanced_identity)
        .await
    {
        Ok(u) => u,
        Err((rc, why)) => {
            core.security
                .failed(peer, &client_id, c.username.as_deref(), rc, &why);
            return Err(refuse_with(io, &c, rc, why).await);
        }
    };
    // The will is published in the client's name: it needs the right to publish there.
    if let Some(w) = &c.will {
        let action = crate::security::Action::Publish;
        let (security, user) = (&core.security, username.as_deref());
        let hook = match security.acl_hook() {
            Some(h) => security.ask_hook(&h, action, user, &client_id, &w.topic).await,
            None => None,
        };
        if !security.allows_given(action, user, &client_id, &w.topic, hook) {
            let why = format!("the ACL does not allow publishing the will on {:?}", &*w.topic);
            tracing::warn!(%peer, client_id = %client_id, "connection refused: {why}");
            return Err(refuse_with(io, &c, ReasonCode::NotAuthorized, why).await);
        }
    }

    // Cluster mode: the session may be held by another node, which hands it over (and tells
    // its connection it was taken over) before this one is attached.
    let claiming = match &core.backplane {
        Some(b) if !client_id.starts_with(crate::BRIDGE_CLIENT_PREFIX) => b.claim(&client_id, c.clean_start),
        _ => None,
    };
    let claimed = match claiming {
        None => None,
        Some(claim) => {
            match tokio::time::timeout(CLAIM_DEADLINE, claim_session(core, &client_id, claim)).await {
                Ok(Ok(at)) => Some(at),
                failed => {
                    let why = match failed {
                        Ok(Err(why)) => why,
                        _ => format!("no answer within {CLAIM_DEADLINE:?}"),
                    };
                    end_claim(core, &client_id);
                    // 3.1.1: 0x03 Server unavailable.
                    let rc = ReasonCode::ServerUnavailable;
                    let why = format!("the session could not be claimed in the cluster: {why}");
                    tracing::warn!(%peer, client_id = &*client_id, "connection refused: {why}");
                    return Err(refuse_with(io, &c, rc, why).await);
                }
            }
        }
    };

    let (expiry, keep_alive) = (granted.session_expiry, granted.keep_alive);
    let conn_id = core.next_conn_id();
    let waker = Arc::new(Notify::new());
    let attached = Arc::new(Attached {
        peer,
        // Own copies: a slice would keep the whole read buffer of the CONNECT alive for as
        // long as the connection lasts.
        username: username.map(|u| ByteString::from(u.to_string())),
        listener: origin.policy.clone(),
        keep_alive,
        connected_at_ms: core.clock.wall_ms(),
    });
    let Some((cell, session_present)) = attach_session(core, &client_id, v, c.clean_start, expiry, conn_id)
    else {
        if claimed.is_some() {
            end_claim(core, &client_id);
        }
        // A new client identifier beyond max_sessions: nothing was attached or ended.
        let rc = if v.is_v5() {
            ReasonCode::QuotaExceeded
        } else {
            ReasonCode::ServerUnavailable
        };
        let why = format!("max_sessions ({}) reached", cfg.max_sessions);
        tracing::warn!(%peer, client_id = &*client_id, "connection refused: {why}");
        return Err(refuse_with(io, &c, rc, why).await);
    };
    {
        let mut st = cell.lock();
        st.attached = Some(attached.clone());
        st.persistent = core.durability.enabled() && expiry > 0;
        st.pending_will_at = None;
        st.waker = Some(waker.clone());
    }
    core.persist_session(&cell, false);
    // A session resumed with Session Expiry 0 ends with this connection: a backplane that
    // kept it as it was must not bring it back if this broker dies (the packets after the
    // CONNACK wait for that write).
    let ending = (session_present && expiry == 0)
        .then(|| core.save_session_ending(&cell))
        .flatten();
    if let Some(at) = claimed {
        // The claim ends once the session is attached here (until then another node asking
        // for it is told to wait); with a handover, what reached the session on the other
        // node meanwhile comes now, before the CONNACK.
        finish_claim(core, &client_id, at).await;
    }

    if v.is_v5() && c.properties.request_response_information == Some(1) {
        props.response_information = Some(format!("{}{}", cfg.response_information_prefix, client_id).into());
    }
    let ack = ConnAck {
        session_present,
        reason_code: ReasonCode::Success,
        properties: props,
    };
    send_connack(io, v, fit(ack, &c)).await;

    let now = core.clock.now();
    let limits = ClientLimits::from_connect(&c, keep_alive);
    let auth_method = c
        .properties
        .authentication_method
        .as_ref()
        .map(|m| ByteString::from(m.to_string()));
    let will = c.will.map(|w| {
        let delay = w.properties.will_delay_interval.unwrap_or(0);
        let p = tern_proto::Publish {
            dup: false,
            qos: w.qos,
            retain: w.retain,
            topic: ByteString::from(w.topic.to_string()),
            packet_id: None,
            properties: tern_proto::codec::PublishProperties {
                payload_format_indicator: w.properties.payload_format_indicator,
                message_expiry_interval: w.properties.message_expiry_interval,
                response_topic: w.properties.response_topic,
                correlation_data: w.properties.correlation_data,
                content_type: w.properties.content_type,
                user_properties: w.properties.user_properties,
                ..Default::default()
            },
            payload: tern_proto::Bytes::copy_from_slice(&w.payload),
        };
        let topic = p.topic.clone();
        WillState {
            // Detached: the will lives as long as the connection and must not keep the
            // CONNECT's read buffer alive.
            message: Arc::new(Message::from_publish(p, topic, Some(client_id.clone()), now).detached()),
            delay,
        }
    });

    tracing::info!(
        %peer,
        client_id = &*client_id,
        listener = &*origin.policy.name,
        version = %v,
        username = attached.username.as_deref().unwrap_or(""),
        clean_start = c.clean_start,
        session_present,
        keep_alive,
        "client connected"
    );
    core.counters
        .connected
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    core.metrics.connected(v);
    if let (Some(b), Some(w)) = (&core.backplane, &will) {
        b.will_armed(&client_id, conn_id, &w.message, w.delay);
    }
    let session = ServerSession::new(v, core.rules.clone(), limits, auth_method, now);
    // A cluster keeps the QoS 2 deliveries this connection resends in the session's entry
    // before they go out.
    let session_ticket = core
        .backplane
        .as_ref()
        .and_then(|b| b.session_attached(&client_id))
        .max(ending);
    // Shared messages whose QoS 2 delivery began on an earlier connection (whose commit may
    // have failed): this one resends them, and they are their member's once it may.
    let begun = cell
        .lock()
        .proto
        .inflight()
        .filter(|f| f.message.qos == tern_proto::QoS::ExactlyOnce)
        .filter_map(|f| f.message.settle.clone())
        .collect();
    let link = Link {
        core: core.clone(),
        cell,
        conn_id,
        version: v,
        client_id,
        info: attached,
        waker,
        will,
        out: BytesMut::new(),
        needs_commit: false,
        session_ticket,
        begun,
        waiting_for_commit: false,
        seen_commit: 0,
        pressure: Vec::new(),
        backplane_slowed: false,
        holds_from: 0,
        holds_epoch: u64::MAX,
        qos0_sent: 0,
        pending: Vec::new(),
        qos0_later: Vec::new(),
        pending_bytes: 0,
        pending_messages: 0,
        group: None,
        qos2_received: None,
        qos2_marked: Vec::new(),
        reauth: None,
        partial: None,
        acl_answers: Vec::new(),
    };
    let decoder = Decoder::new(v, core.config.max_packet_size);
    let conn = Conn {
        session,
        link,
        decoder,
        held: None,
    };
    Ok(conn)
}

/// Longest wait of a CONNECT for the cluster to hand its session over: a backstop beyond the
/// backplane's own budget (the cluster's claims give up after 25 s and clean up).
const CLAIM_DEADLINE: std::time::Duration = std::time::Duration::from_secs(60);

/// Await a claim ([`crate::backplane::Backplane::claim`]) and install the session it brought;
/// `Some(queue length)` when one was handed over (where the rest goes).
async fn claim_session(
    core: &Arc<Core>,
    client_id: &Arc<str>,
    claim: crate::backplane::Claim,
) -> Result<Option<usize>, String> {
    let Some(raw) = claim.await? else {
        return Ok(None);
    };
    let at = core
        .take_in(client_id, &raw)
        .map_err(|e| format!("the session handed over cannot be read: {e}"))?;
    core.durability
        .wait_submitted()
        .await
        .map_err(|e| format!("the session handed over was not stored: {e}"))?;
    Ok(Some(at))
}

/// End a claim that failed (nothing more comes of it).
fn end_claim(core: &Arc<Core>, client_id: &str) {
    if let Some(rest) = core.backplane.as_ref().and_then(|b| b.claimed(client_id)) {
        drop(rest);
    }
}

/// End a claim whose session is attached: take in the rest of a handover (`at`: where).
async fn finish_claim(core: &Arc<Core>, client_id: &str, at: Option<usize>) {
    let Some(rest) = core.backplane.as_ref().and_then(|b| b.claimed(client_id)) else {
        return;
    };
    let added = match tokio::time::timeout(CLAIM_DEADLINE, rest).await {
        Ok(Ok(Some(raw))) => match at {
            Some(at) => core
                .take_in_rest(client_id, &raw, Some(at))
                .map_err(|e| e.to_string()),
            None => Ok(0),
        },
        Ok(Ok(None)) => Ok(0),
        Ok(Err(why)) => Err(why),
        Err(_) => Err(format!("no answer within {CLAIM_DEADLINE:?}")),
    };
    // A session taken in (`at`) has all it came with once its rest is in (or none came).
    if at.is_some() && added.is_ok() {
        core.rest_taken(client_id);
    }
    match added {
        Ok(0) => {}
        Ok(_) => {
            if let Err(e) = core.durability.wait_submitted().await {
                tracing::warn!(
                    client_id,
                    "the rest of the session handed over was not stored: {e}"
                );
            }
        }
        // The session goes on without it; a backplane is not told how far back what it
        // holds goes (a cluster keeps its floor where it was: duplicates rather than losses
        // if it is recovered elsewhere).
        Err(why) => tracing::warn!(
            client_id,
            "the rest of the session handed over did not come: {why}"
        ),
    }
}

/// Run the AUTH exchange of a CONNECT; on success the final Authentication Data
/// and the identity the exchange established, if it names one.
async fn enhanced_auth<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
    buf: &mut BytesMut,
    core: &Core,
    c: &Connect,
    client_id: &str,
) -> Result<(Option<tern_proto::Bytes>, Option<tern_proto::ByteString>), (ReasonCode, String)> {
    let Some(method) = c.properties.authentication_method.clone() else {
        return Ok((None, None));
    };
    let Some(auth) = core.authenticators.iter().find(|a| a.method() == &*method) else {
        return Err(refuse(
            ReasonCode::BadAuthenticationMethod,
            "unsupported authentication method",
        ));
    };
    let mut exchange = auth.begin(client_id, c.username.as_deref());
    let mut data = c.properties.authentication_data.clone();
    let decoder = Decoder::new(ProtocolVersion::V5, core.config.max_packet_size);
    let deadline = core.clock.now() + core.config.connect_timeout();
    loop {
        match exchange.step(data.as_deref()) {
            AuthStep::Success(d) => return Ok((d, exchange.identity().map(Into::into))),
            AuthStep::Failure => return Err(refuse(ReasonCode::NotAuthorized, "authentication failed")),
            AuthStep::Continue(d) => {
                let mut a = tern_proto::Auth {
                    reason_code: Some(ReasonCode::ContinueAuthentication),
                    properties: Default::default(),
                };
                a.properties.authentication_method = Some(method.clone());
                a.properties.authentication_data = Some(d);
                let mut out = BytesMut::new();
                if Packet::Auth(a).encode(ProtocolVersion::V5, &mut out).is_err()
                    || super::write_flush(io, &out).await.is_err()
                {
                    return Err(refuse(ReasonCode::UnspecifiedError, "cannot send AUTH"));
                }
                let reply = loop {
                    match decoder.decode(buf) {
                        Ok(Decoded::Packet(p)) => break p,
                        Ok(Decoded::NeedMore(_)) => {}
                        Err(e) => return Err((e.reason_code(), e.to_string())),
                    }
                    let read = tokio::select! {
                        biased;
                        r = io.read_buf(buf) => matches!(r, Ok(n) if n > 0),
                        () = core.clock.sleep_until(deadline) => false,
                    };
                    match read {
                        true => {}
                        false => {
                            return Err(refuse(
                                ReasonCode::NotAuthorized,
                                "authentication exchange abandoned",
                            ))
                        }
                    }
                };
                if !continues_auth(&reply, &method) {
                    return Err(refuse(
                        ReasonCode::ProtocolError,
                        "[MQTT-4.12.0-7] expected AUTH 0x18 with the same authentication method",
                    ));
                }
                if let Packet::Auth(a) = reply {
                    data = a.properties.authentication_data;
                }
            }
        }
    }
}

fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0);
    h.finish()
}

/// Find or create the session for `client_id` and attach this connection.
///
/// An older connection on the same client id is told to go ([MQTT-3.1.4-2],
/// v5 [MQTT-3.1.4-3]); with Clean Start its session ends and a new one begins.
fn attach_session(
    core: &Arc<Core>,
    client_id: &Arc<str>,
    v: ProtocolVersion,
    clean_start: bool,
    expiry: u32,
    conn_id: u64,
) -> Option<(Arc<SessionCell>, bool)> {
    // One attach at a time: two CONNECTs with the same new client identifier must not
    // both create a session (the second would replace the first in the registry and
    // leave its connection attached to a session nobody can find or take over).
    let _attaching = core.attach_lock.lock().unwrap_or_else(|e| e.into_inner());
    let existing = core.sessions.get(client_id);
    if existing.is_none() && core.sessions.len() >= core.config.max_sessions {
        return None;
    }
    if let Some(old) = existing {
        // A session whose expiry is 0 ends with its connection ([MQTT-3.1.2-6]): even while
        // that connection is still closing (its DISCONNECT can be behind this CONNECT), it is
        // never handed over as present. Only a session that outlives its connection resumes.
        let resumable = {
            let st = old.lock();
            !st.ended && st.expiry_interval > 0
        };
        if !clean_start && resumable {
            let kicked = {
                let mut st = old.lock();
                let kicked = st.take_over(false);
                st.conn_id = Some(conn_id);
                // An administrator's disconnect was for the old connection.
                st.kicked = None;
                st.generation += 1;
                st.version = v;
                // Set under the attach lock: a CONNECT racing this one sees at once whether
                // the session outlives this connection.
                st.expiry_interval = expiry;
                // A pending delayed will is cancelled by the reconnection ([MQTT-3.1.3-9]).
                st.pending_will = None;
                kicked
            };
            if let Some(w) = kicked {
                w.notify_one();
            }
            // Attached again: its expiry and delayed will no longer run.
            core.scheduler.cancel(&old);
            old.set_connected(true);
            return Some((old, true));
        }
        // Clean Start, or a session that ends with its connection: the old session ends (its
        // connection, if any, is told to go).
        let kicked = old.lock().take_over(true);
        if let Some(w) = kicked {
            w.notify_one();
        }
        core.end_session(&old);
    }
    let cell = Arc::new(SessionCell::new(
        client_id.clone(),
        v,
        core.config.receive_maximum,
    ));
    {
        let mut st = cell.lock();
        st.conn_id = Some(conn_id);
        st.generation = 1;
        st.expiry_interval = expiry;
    }
    cell.set_connected(true);
    core.sessions.insert(cell.clone());
    Some((cell, false))
}
