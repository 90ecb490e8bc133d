//! The CONNECT phase: wait for CONNECT within the connect timeout, check it,
//! find or create the session (taking over an older connection), send CONNACK.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tern_proto::codec::{ConnAckProperties, Decoded, Decoder};
use tern_proto::{topic, ConnAck, Connect, DecodeError, Packet, ProtocolVersion, ReasonCode};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::Notify;

use super::{Conn, WillState};
use crate::message::Message;
use crate::session::{SessionCell, Takeover};
use crate::shared::Shared;

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
        let _ = tokio::time::timeout(Duration::from_secs(1), io.write_all(&out)).await;
    }
}

/// Read until the first packet is complete; it must be a CONNECT ([MQTT-3.1.0-1]).
pub(crate) async fn read_connect<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
    buf: &mut BytesMut,
    shared: &Shared,
) -> Result<Box<Connect>, Refused> {
    let decoder = Decoder::new(ProtocolVersion::V3_1_1, shared.config.max_packet_size);
    let deadline = tokio::time::Instant::now() + shared.config.connect_timeout();
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
        match tokio::time::timeout_at(deadline, io.read_buf(buf)).await {
            Err(_) => return Err(Refused::Silent("no CONNECT within the connect timeout".into())),
            Ok(Ok(0)) => return Err(Refused::Silent("closed before CONNECT".into())),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(Refused::Silent(format!("read error before CONNECT: {e}"))),
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

fn refuse(rc: ReasonCode, why: &str) -> (ReasonCode, String) {
    (rc, why.to_string())
}

/// Check a decoded CONNECT, attach the session and answer with CONNACK.
pub(crate) async fn accept<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
    connect: Box<Connect>,
    shared: &Arc<Shared>,
    peer: SocketAddr,
) -> Result<Conn, Refused> {
    let c = *connect;
    let v = c.protocol_version;
    let cfg = &shared.config;
    let mut props = ConnAckProperties::default();

    if let Err((rc, why)) = check_connect(&c, shared) {
        send_connack(io, v, ConnAck::new(rc, false)).await;
        return Err(Refused::Answered(rc, why));
    }

    // Client identifier: [MQTT-3.1.3-6..8] (3.1.1), [MQTT-3.1.3-6,7] (5.0).
    let client_id: Arc<str> = if c.client_id.is_empty() {
        let assigned: Arc<str> = format!("tern-{:016x}", shared.next_conn_id() ^ random_seed()).into();
        if v.is_v5() {
            props.assigned_client_identifier = Some(assigned.as_ref().into());
        }
        assigned
    } else {
        Arc::from(&*c.client_id)
    };

    let expiry = match v {
        ProtocolVersion::V5 => c
            .properties
            .session_expiry_interval
            .unwrap_or(0)
            .min(cfg.max_session_expiry),
        _ if c.clean_start => 0,
        _ => cfg.max_session_expiry,
    };
    if v.is_v5() && c.properties.session_expiry_interval.unwrap_or(0) > cfg.max_session_expiry {
        props.session_expiry_interval = Some(expiry);
    }

    // Keep-alive: 5.0 clients asking for more than we allow get Server Keep Alive.
    let mut keep_alive = c.keep_alive;
    if cfg.max_keepalive != u16::MAX && (keep_alive == 0 || keep_alive > cfg.max_keepalive) && v.is_v5() {
        keep_alive = cfg.max_keepalive;
        props.server_keep_alive = Some(keep_alive);
    }

    let conn_id = shared.next_conn_id();
    let waker = Arc::new(Notify::new());
    let (cell, session_present) = attach_session(shared, &client_id, v, c.clean_start, conn_id, &waker);
    {
        let mut st = cell.lock();
        st.expiry_interval = expiry;
        st.client_receive_maximum = c.properties.receive_maximum.unwrap_or(u16::MAX);
        st.client_max_packet_size = c.properties.maximum_packet_size.unwrap_or(u32::MAX);
        st.waker = Some(waker.clone());
    }

    if v.is_v5() {
        props.receive_maximum = Some(cfg.receive_maximum);
        props.maximum_packet_size = Some(cfg.max_packet_size);
        if cfg.topic_alias_maximum > 0 {
            props.topic_alias_maximum = Some(cfg.topic_alias_maximum);
        }
    }
    let ack = ConnAck {
        session_present,
        reason_code: ReasonCode::Success,
        properties: props,
    };
    send_connack(io, v, ack).await;

    let now = Instant::now();
    let will = c.will.map(|w| {
        let delay = w.properties.will_delay_interval.unwrap_or(0);
        let p = tern_proto::Publish {
            dup: false,
            qos: w.qos,
            retain: w.retain,
            topic: w.topic.clone(),
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
            payload: w.payload,
        };
        WillState {
            message: Arc::new(Message::from_publish(p, w.topic, Some(client_id.clone()), now)),
            delay,
        }
    });

    tracing::info!(%peer, client_id = %client_id, version = %v, clean_start = c.clean_start, session_present, keep_alive, "client connected");
    Ok(Conn::new(
        shared.clone(),
        cell,
        conn_id,
        v,
        client_id,
        peer,
        waker,
        keep_alive,
        will,
        expiry,
    ))
}

fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0);
    h.finish()
}

fn check_connect(c: &Connect, shared: &Shared) -> Result<(), (ReasonCode, String)> {
    let v = c.protocol_version;
    let cfg = &shared.config;
    if c.client_id.len() > cfg.max_client_id_len {
        return Err(refuse(
            ReasonCode::ClientIdentifierNotValid,
            "client identifier too long",
        ));
    }
    if c.client_id.is_empty() {
        // [MQTT-3.1.3-8]: 3.1.1 empty id needs clean session; 3.1 always needs an id.
        if v == ProtocolVersion::V3_1 || (v == ProtocolVersion::V3_1_1 && !c.clean_start) {
            return Err(refuse(
                ReasonCode::ClientIdentifierNotValid,
                "[MQTT-3.1.3-8] empty client identifier without clean session",
            ));
        }
    }
    if v.is_v5() && c.properties.authentication_method.is_some() {
        // [MQTT-4.12.0-1] no enhanced authentication method is configured.
        return Err(refuse(
            ReasonCode::BadAuthenticationMethod,
            "unsupported authentication method",
        ));
    }
    if !cfg.allow_anonymous && c.username.is_none() {
        return Err(refuse(
            ReasonCode::NotAuthorized,
            "anonymous clients are not allowed",
        ));
    }
    if let Some(w) = &c.will {
        let levels_ok = w.topic.split('/').count() <= cfg.max_topic_levels;
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
    if !v.is_v5() && cfg.max_keepalive != u16::MAX && (c.keep_alive == 0 || c.keep_alive > cfg.max_keepalive)
    {
        return Err(refuse(
            ReasonCode::ServerUnavailable,
            "keep-alive above max_keepalive",
        ));
    }
    Ok(())
}

/// Find or create the session for `client_id` and attach this connection.
///
/// An older connection on the same client id is told to go ([MQTT-3.1.4-2],
/// v5 [MQTT-3.1.4-3]); with Clean Start its session ends and a new one begins.
fn attach_session(
    shared: &Arc<Shared>,
    client_id: &Arc<str>,
    v: ProtocolVersion,
    clean_start: bool,
    conn_id: u64,
    waker: &Arc<Notify>,
) -> (Arc<SessionCell>, bool) {
    let _ = waker;
    let existing = shared.sessions.get(client_id);
    if let Some(old) = existing {
        if !clean_start && !old.lock().ended {
            let kicked = {
                let mut st = old.lock();
                let kicked = st.conn_id.map(|old_conn| {
                    st.takeover = Some(Takeover {
                        old_conn,
                        session_ended: false,
                    });
                    st.waker.take()
                });
                st.conn_id = Some(conn_id);
                st.generation += 1;
                st.version = v;
                // A pending delayed will is cancelled by the reconnection ([MQTT-3.1.3-9]).
                st.pending_will = None;
                kicked
            };
            if let Some(Some(w)) = kicked {
                w.notify_one();
            }
            old.set_connected(true);
            return (old, true);
        }
        // Clean Start: the old session ends (its connection, if any, is told to go).
        let kicked = {
            let mut st = old.lock();
            let kicked = st.conn_id.map(|old_conn| {
                st.takeover = Some(Takeover {
                    old_conn,
                    session_ended: true,
                });
                st.waker.take()
            });
            st.conn_id = None;
            kicked
        };
        if let Some(Some(w)) = kicked {
            w.notify_one();
        }
        shared.end_session(&old);
    }
    let cell = Arc::new(SessionCell::new(client_id.clone(), v));
    {
        let mut st = cell.lock();
        st.conn_id = Some(conn_id);
        st.generation = 1;
    }
    cell.set_connected(true);
    shared.sessions.insert(cell.clone());
    (cell, false)
}
