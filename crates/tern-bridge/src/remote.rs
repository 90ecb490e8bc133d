//! The bridge's remote side and the tasks that move messages between the two sides.
//!
//! - `forward`: takes deliveries from the local session in order, maps their topics, hands
//!   them to the remote client ([`tern_client::Client::start_publish`], order kept, many in
//!   flight) and passes each pending acknowledgement to `acknowledge`.
//! - `acknowledge`: waits for the remote's PUBACK/PUBCOMP of each message in order, then
//!   acknowledges the delivery locally (the broker removes it from the outbox). A message
//!   the remote refuses (reason code 0x80 or above, a topic or size it does not take) is
//!   acknowledged too, logged and counted as dropped: sending it again would not help.
//! - `release`: the broker's PUBREL of a QoS 2 delivery goes to the remote as PUBREL (under
//!   the same packet id), and its PUBCOMP back to the broker. It never waits for `forward`,
//!   whose messages may be waiting for the room these releases make in the remote client's
//!   window.
//! - `receive`: the remote client's events; messages of `in` rules are published locally,
//!   and `acknowledge_in` acknowledges each to the remote once the broker has taken it.
//!
//! ### Packet ids
//! A delivery goes to the remote under the packet id the broker gave it
//! ([`PublishOptions::packet_id`]), DUP included. The broker keeps each delivery and its
//! stage (sent, or PUBREC recorded) in its store until the bridge completes it, and resends
//! it with its id after a restart ([MQTT-4.4.0-1]); the remote's session, resumed, holds the
//! same ids. So a QoS 2 message the remote had received before a crash comes to it again
//! under its id, and the remote takes it for the duplicate it is (v5 [MQTT-4.3.3-10]); and
//! the remote gets PUBREL only after the broker has recorded the PUBREC (the client holds
//! PUBREL until [`Client::release`]), so the broker never resends a PUBLISH the remote has
//! already released.
//!
//! After a restart the broker resends its deliveries in flight in the order they were first
//! sent, PUBREL for those whose PUBREC it had recorded, and the remote still counts the ones
//! it holds awaiting PUBREL in its Receive Maximum. The client, started afresh, knows nothing
//! of them: a released id takes its place in its window until PUBCOMP. So `forward` hands a
//! QoS 1/2 message to the client only once `release` has handed over every PUBREL that came
//! before it ([`Delivery::after_releases`]); otherwise the resent messages overtook the
//! PUBRELs, the client went beyond the remote's quota, and Mosquitto refused one with 0x97
//! (found by the kill -9 loop). For the same reason `forward` and `release` start once the
//! remote has answered the client's SUBSCRIBE packets (or after [`SUBSCRIBED_WAIT`]): one may
//! hold a packet id that is also one of the broker's, and the client would refuse a release
//! of that id until then.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tern_client::{
    Client, ClientError, Event, Events, Options, PendingPublish, PublishOptions, Reconnect, Subscription,
};
use tern_proto::session::PublishError;
use tern_proto::{PacketId, ProtocolVersion, Publish, QoS};
use tokio::sync::{mpsc, oneshot, watch};

use crate::local::{Delivery, LocalLink};
use crate::rules::Rules;
use crate::{BridgeError, Shared};

/// The client options for the remote, from the bridge's table.
pub(crate) fn options(shared: &Shared, local_session_present: bool) -> Result<Options, BridgeError> {
    let c = &shared.config;
    let bad = |key: &str, why: String| BridgeError::Config(format!("bridge \"{}\": `{key}`: {why}", c.name));
    let mut o = Options::new(c.remote.clone())
        .client_id(c.remote_client_id())
        .version(if c.is_v5() {
            ProtocolVersion::V5
        } else {
            ProtocolVersion::V3_1_1
        })
        .keep_alive(Duration::from_secs(u64::from(c.keep_alive_secs)))
        // Resume the remote session only with the outbox it belongs with: the ids of
        // deliveries in flight are the same on both sides. (5.0: on the first connection only;
        // a 3.1.1 remote is started afresh apart, see `connect`.)
        .clean_start(c.clean_start || (c.is_v5() && !local_session_present))
        // A message from the remote is acknowledged once the broker has taken it.
        .manual_acks(true)
        .bridge_mode(c.try_private)
        .reconnect(Reconnect::with_delays(
            Duration::from_millis(c.reconnect_min_ms),
            Duration::from_millis(c.reconnect_max_ms),
        ))
        // Every delivery the local window lets through fits: taking one never waits long.
        .max_queued(usize::from(c.max_inflight) + 16);
    if c.is_v5() {
        o = o.session_expiry(c.session_expiry_secs);
    }
    let password = match (&c.password, &c.password_file) {
        (Some(p), _) => Some(p.clone()),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| bad("password_file", format!("cannot read {}: {e}", path.display())))?;
            Some(text.lines().next().unwrap_or("").to_string())
        }
        (None, None) => None,
    };
    match (&c.username, password) {
        (Some(u), Some(p)) => o = o.credentials(u.clone(), p.into_bytes()),
        (Some(u), None) => o = o.username(u.clone()),
        (None, Some(_)) => return Err(bad("username", "a password needs a user name".into())),
        (None, None) => {}
    }
    if c.ca_file.is_some() || c.cert_file.is_some() || c.server_name.is_some() {
        let mut tls = tern_client::transport::TlsOptions::new();
        if let Some(ca) = &c.ca_file {
            tls = tls.ca_file(ca.clone());
        }
        if let (Some(cert), Some(key)) = (&c.cert_file, &c.key_file) {
            tls = tls.client_auth_files(cert.clone(), key.clone());
        }
        if let Some(name) = &c.server_name {
            tls = tls.server_name(name.clone());
        }
        o = o.tls(tls);
    }
    Ok(o)
}

/// Connect to the remote, retrying with backoff and jitter until it accepts; every failure
/// (a refusal with its reason code included) is logged and kept as the last error.
/// With `wipe` (a 3.1.1 remote and a new outbox), a first connection with Clean Session 1
/// ends the session the remote may hold for the bridge, and the real one uses Clean Session 0
/// on every connection.
pub(crate) async fn connect(shared: &Shared, mut options: Options, mut wipe: bool) -> (Client, Events) {
    let c = &shared.config;
    let reconnect = tern_client::Reconnect::with_delays(
        Duration::from_millis(c.reconnect_min_ms),
        Duration::from_millis(c.reconnect_max_ms),
    );
    let mut attempt = 0u32;
    // Announcing the bridge (3.1.1, `try_private`) until the remote refuses it.
    let mut private = c.try_private && !c.is_v5();
    loop {
        let result = if wipe {
            let once = options.clone().clean_start(true).reconnect(Reconnect::disabled());
            match Client::connect(once).await {
                Ok((client, _events)) => {
                    let _ = client.disconnect().await;
                    wipe = false;
                    Client::connect(options.clone()).await
                }
                // Handled as a failed connection (a refused 0x84 included).
                Err(e) => Err(e),
            }
        } else {
            Client::connect(options.clone()).await
        };
        match result {
            Ok(pair) => {
                shared.private.store(private, Ordering::Relaxed);
                return pair;
            }
            Err(ClientError::Refused {
                reason_code: tern_proto::ReasonCode::UnsupportedProtocolVersion,
                ..
            }) if private => {
                tracing::warn!(bridge = %c.name, remote = %c.remote, "the remote refuses the bridge protocol level (try_private); connecting as a plain 3.1.1 client");
                options = options.bridge_mode(false);
                private = false;
            }
            Err(e) => {
                attempt = attempt.saturating_add(1);
                let delay = reconnect.delay_before(attempt);
                tracing::warn!(bridge = %c.name, remote = %c.remote, "cannot connect: {e}; next attempt in {delay:?}");
                shared.status.set_error(e.to_string());
                shared.status.backing_off(attempt, delay);
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// Subscribe on the remote to the `in` filters (5.0: No Local, so what this bridge sends does
/// not come back; Retain As Published, so retained messages stay retained).
pub(crate) async fn subscribe(shared: &Shared, client: &Client, rules: &Rules) {
    let v5 = shared.config.is_v5();
    for (filter, qos) in rules.in_filters() {
        let mut s = Subscription::new(filter.to_string(), qos);
        if v5 {
            s = s.no_local(true).retain_as_published(true);
        }
        match client.subscribe_with(s).await {
            Ok(ack) => {
                if let Some(code) = ack.reason_codes.iter().find(|c| c.is_error()) {
                    tracing::error!(bridge = %shared.config.name, %filter, "the remote refused the subscription: {code}");
                    shared
                        .status
                        .set_error(format!("subscription to {filter:?} refused: {code}"));
                }
            }
            Err(e) => {
                tracing::warn!(bridge = %shared.config.name, %filter, "cannot subscribe on the remote: {e}");
                shared.status.set_error(e.to_string());
            }
        }
    }
}

/// A delivery handed to the remote client, waiting for its acknowledgement.
pub(crate) struct Pending {
    id: PacketId,
    local_qos: QoS,
    remote_qos: QoS,
    outcome: PendingPublish,
}

/// How long [`forward`] and [`release`] wait for the remote to answer the client's
/// SUBSCRIBE packets (one per `in` filter).
const SUBSCRIBED_WAIT: Duration = Duration::from_secs(10);

/// What [`forward`] waits for before it hands a message to the remote client.
pub(crate) struct Gates {
    /// The releases [`release`] has handed to the client so far.
    pub released: watch::Receiver<u64>,
    /// Whether the client's SUBSCRIBE packets of the `in` rules are answered (or given up).
    pub subscribed: watch::Receiver<bool>,
}

/// Hand each local delivery to the remote, in order, until either side ends.
pub(crate) async fn forward(
    shared: Arc<Shared>,
    client: Client,
    rules: Rules,
    mut deliveries: mpsc::Receiver<Delivery>,
    local: LocalLink,
    (acks, gates): (mpsc::Sender<Pending>, Gates),
) {
    let v5 = shared.config.is_v5();
    let Gates {
        mut released,
        mut subscribed,
    } = gates;
    let _ = tokio::time::timeout(SUBSCRIBED_WAIT, subscribed.wait_for(|s| *s)).await;
    while let Some(Delivery {
        publish: p,
        after_releases,
        ..
    }) = deliveries.recv().await
    {
        let Some(route) = rules.outbound(&p.topic) else {
            // A subscription left by an earlier configuration of this bridge.
            shared.status.dropped.fetch_add(1, Ordering::Relaxed);
            if let Some(id) = p.packet_id {
                if local.skip(id, p.qos).await.is_err() {
                    return;
                }
            }
            continue;
        };
        let hops = hops(&p);
        if hops >= shared.config.max_hops {
            // It came over as many bridges as allowed (a loop of bridges, or a chain longer
            // than configured).
            shared.status.hops_exceeded.fetch_add(1, Ordering::Relaxed);
            if let Some(id) = p.packet_id {
                if local.skip(id, p.qos).await.is_err() {
                    return;
                }
            }
            continue;
        }
        let remote_qos = p.qos.min(route.qos);
        // The PUBRELs the broker sent before this message first take their places in the
        // client's window (see the module documentation).
        if remote_qos != QoS::AtMostOnce && released.wait_for(|n| *n >= after_releases).await.is_err() {
            return;
        }
        let mut o = PublishOptions::new().qos(remote_qos).retain(p.retain);
        if let (Some(id), true) = (p.packet_id, remote_qos != QoS::AtMostOnce) {
            o = o.packet_id(id, p.dup);
        }
        if v5 {
            o = with_properties(o, &p).user_property(HOPS, (hops + 1).to_string());
        }
        if shared.echoes_expected() && rules.inbound(&route.topic).is_some() {
            shared.echoes.sent(&route.topic, &p.payload);
        }
        let outcome = match client.start_publish(route.topic, p.payload, o).await {
            Ok(outcome) => outcome,
            Err(_) => return,
        };
        match p.packet_id {
            Some(id) => {
                let pending = Pending {
                    id,
                    local_qos: p.qos,
                    remote_qos,
                    outcome,
                };
                if acks.send(pending).await.is_err() {
                    return;
                }
            }
            None => {
                shared.status.forwarded.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// The User Property that counts the bridges a message crossed (set by the broker too, on
/// what a 3.1.1 bridge publishes to it).
pub(crate) const HOPS: &str = tern_proto::session::server::BRIDGE_HOPS;

/// How many bridges `p` crossed (its [`HOPS`] property; 0 without one).
fn hops(p: &Publish) -> u8 {
    p.properties
        .user_properties
        .iter()
        .rev()
        .find(|(k, _)| &**k == HOPS)
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

/// The 5.0 properties a forwarded message keeps (not the Topic Alias nor Subscription
/// Identifiers, which belong to one connection).
fn with_properties(mut o: PublishOptions, p: &Publish) -> PublishOptions {
    let props = &p.properties;
    if let Some(s) = props.message_expiry_interval {
        o = o.message_expiry(s);
    }
    if let Some(f) = props.payload_format_indicator {
        o = o.utf8_payload(f == 1);
    }
    if let Some(t) = &props.content_type {
        o = o.content_type(t.clone());
    }
    if let Some(t) = &props.response_topic {
        o = o.response_topic(t.clone());
    }
    if let Some(d) = &props.correlation_data {
        o = o.correlation_data(d.clone());
    }
    for (k, v) in props.user_properties.iter().filter(|(k, _)| &**k != HOPS) {
        o = o.user_property(k.clone(), v.clone());
    }
    o
}

/// Acknowledge each delivery locally once the remote has it, in the order they were sent.
pub(crate) async fn acknowledge(shared: Arc<Shared>, mut acks: mpsc::Receiver<Pending>, local: LocalLink) {
    while let Some(p) = acks.recv().await {
        // A QoS 2 delivery forwarded with QoS 2 and received by the remote (PUBREC) has a
        // PUBREL to pass on (`release`); otherwise the broker's PUBREL is completed here.
        let mut remote_release = p.remote_qos == QoS::ExactlyOnce;
        match p.outcome.outcome().await {
            Ok(_) => {
                if !remote_release {
                    shared.status.forwarded.fetch_add(1, Ordering::Relaxed);
                }
            }
            // The client stopped (a stop, or the local session opened again): the message
            // stays in the outbox for the next connection.
            Err(ClientError::Publish(PublishError::Closed)) => return,
            Err(ClientError::Publish(e)) => {
                tracing::warn!(bridge = %shared.config.name, "the remote did not take a message: {e}; dropped");
                shared.status.dropped.fetch_add(1, Ordering::Relaxed);
                shared.status.set_error(e.to_string());
                remote_release = false;
            }
            // The client stopped: the message stays in the outbox for the next start.
            Err(_) => return,
        }
        if p.local_qos == QoS::ExactlyOnce && !remote_release {
            local.local_only(p.id);
        }
        if p.local_qos == QoS::ExactlyOnce && remote_release {
            local.awaits_release(p.id);
        }
        if local.done(p.id, p.local_qos).await.is_err() {
            return;
        }
    }
}

/// Pass each PUBREL of the broker on to the remote, and each PUBCOMP back, in order (the
/// next PUBREL goes out without waiting for the previous PUBCOMP).
pub(crate) async fn release(
    shared: Arc<Shared>,
    client: Client,
    mut releases: mpsc::Receiver<PacketId>,
    (local, released, mut subscribed): (LocalLink, watch::Sender<u64>, watch::Receiver<bool>),
) {
    let _ = tokio::time::timeout(SUBSCRIBED_WAIT, subscribed.wait_for(|s| *s)).await;
    let (done_tx, mut done_rx) =
        mpsc::channel::<(PacketId, PendingPublish)>(usize::from(shared.config.max_inflight));
    let complete = {
        let (shared, local, client) = (shared.clone(), local.clone(), client.clone());
        async move {
            while let Some((id, mut pending)) = done_rx.recv().await {
                let mut outcome = pending.outcome().await;
                // The id is held for a moment by a SUBSCRIBE of the client: release it once
                // that is answered (completing it here would leave it held on the remote).
                while let Err(ClientError::Publish(PublishError::NotReceived(_))) = outcome {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    let Ok(again) = client.release(id).await else {
                        return;
                    };
                    pending = again;
                    outcome = pending.outcome().await;
                }
                match outcome {
                    Ok(_) => {
                        shared.status.forwarded.fetch_add(1, Ordering::Relaxed);
                    }
                    // 0x92 (the remote completed it before a restart of ours), or the remote
                    // lost its session: either way nothing more can be done for it.
                    // The client stopped: the broker sends PUBREL again next time.
                    Err(ClientError::Publish(PublishError::Closed)) => return,
                    Err(ClientError::Publish(e)) => {
                        tracing::debug!(bridge = %shared.config.name, %id, "release: {e}");
                    }
                    Err(_) => return,
                }
                if local.completed_release(id).await.is_err() {
                    return;
                }
            }
        }
    };
    let send = async move {
        while let Some(id) = releases.recv().await {
            let Ok(pending) = client.release(id).await else {
                return;
            };
            released.send_modify(|n| *n += 1);
            if done_tx.send((id, pending)).await.is_err() {
                return;
            }
        }
    };
    tokio::join!(send, complete);
}

/// A message from the remote waiting for the broker to take it, then acknowledged to the
/// remote (in the order they came, [MQTT-4.6.0-2]).
pub(crate) struct Incoming {
    message: tern_client::Message,
    /// `None`: nothing to wait for (QoS 0 here, or not published here at all).
    taken: Option<oneshot::Receiver<bool>>,
}

/// Acknowledge each message from the remote once the broker has it (its PUBACK / PUBREC
/// came, after its store commit): a crash before that leaves it unacknowledged on the
/// remote, which sends it again.
pub(crate) async fn acknowledge_in(
    shared: Arc<Shared>,
    client: Client,
    mut incoming: mpsc::Receiver<Incoming>,
) {
    while let Some(i) = incoming.recv().await {
        if let Some(taken) = i.taken {
            match taken.await {
                Ok(true) => {}
                Ok(false) => {
                    tracing::warn!(bridge = %shared.config.name, topic = %i.message.topic, "the broker refused a message from the remote; dropped");
                    shared.status.dropped.fetch_add(1, Ordering::Relaxed);
                }
                // The local session ended first: the remote sends it again.
                Err(_) => return,
            }
        }
        if client.ack(&i.message).await.is_err() {
            return;
        }
    }
}

/// How [`receive`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ended {
    /// The local session ended (the broker closed it): open it again.
    Local,
    /// The remote client stopped.
    Remote,
}

/// Follow the remote client's events (connection state; messages of `in` rules, published
/// locally) until the local session ends (`closed`) or the client stops.
pub(crate) async fn receive(
    shared: &Shared,
    events: &mut Events,
    rules: &Rules,
    local: &LocalLink,
    mut closed: oneshot::Receiver<()>,
    acks: mpsc::Sender<Incoming>,
) -> Ended {
    let name = &shared.config.name;
    let status = &shared.status;
    loop {
        let event = tokio::select! {
            _ = &mut closed => return Ended::Local,
            event = events.recv() => event,
        };
        let Some(event) = event else {
            status.connected.store(false, Ordering::Relaxed);
            return Ended::Remote;
        };
        match event {
            Event::Message(m) => {
                let route = rules.inbound(&m.topic);
                let echo = route.is_some()
                    && shared.echoes_expected()
                    && shared.echoes.is_echo(&m.topic, &m.payload);
                let Some(route) = route.filter(|_| !echo) else {
                    // Not for here (no rule takes it, or the echo of what this bridge sent):
                    // acknowledged to the remote at once, in its turn.
                    let counter = if echo { &status.echoes } else { &status.dropped };
                    counter.fetch_add(1, Ordering::Relaxed);
                    let skipped = Incoming {
                        message: m,
                        taken: None,
                    };
                    if acks.send(skipped).await.is_err() {
                        return Ended::Local;
                    }
                    continue;
                };
                let mut p = Publish::new(route.topic, m.payload.clone());
                p.qos = m.qos.min(route.qos);
                p.retain = m.retain;
                p.properties = m.properties.clone();
                p.properties.subscription_identifiers.clear();
                p.properties.topic_alias = None;
                let taken = match local.publish(p).await {
                    Ok(taken) => taken,
                    Err(_) => return Ended::Local,
                };
                if acks.send(Incoming { message: m, taken }).await.is_err() {
                    return Ended::Local;
                }
                status.received.fetch_add(1, Ordering::Relaxed);
            }
            Event::Connected { session_present, .. } => {
                tracing::info!(bridge = %name, session_present, "connected to the remote");
                status.now_connected();
            }
            Event::Reconnecting { attempt, delay } => status.backing_off(attempt, delay),
            Event::Disconnected { reason } => {
                tracing::warn!(bridge = %name, "disconnected from the remote: {reason}");
                status.connected.store(false, Ordering::Relaxed);
                status.set_error(reason.to_string());
            }
            Event::ReconnectFailed { error } => {
                tracing::warn!(bridge = %name, "cannot reconnect to the remote: {error}");
                status.set_error(error.to_string());
            }
            Event::ResubscribeFailed { filter, reason_code } => {
                tracing::error!(bridge = %name, %filter, "the remote refused the subscription again: {reason_code}");
                status.set_error(format!("subscription to {filter:?} refused: {reason_code}"));
            }
            _ => {}
        }
    }
}
