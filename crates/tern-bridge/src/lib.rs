//! # tern-bridge
//!
//! Bridges: topics forwarded from this broker to another MQTT broker and back, each a
//! `[[bridge]]` table of the broker's configuration ([`tern_broker::BridgeConfig`]; see
//! `docs/bridge.md`). `tern broker` starts them with [`Bridges::start`].
//!
//! A bridge has two sides:
//! - local (`local.rs`): a persistent session of this broker, `$bridge/NAME`, over an
//!   in-process pipe ([`tern_broker::Internal`]). It subscribes to the `out` filters, so its
//!   session queue, written to the store with the publisher's PUBACK, is the durable
//!   outbox: a message leaves it only when the remote acknowledged it.
//! - remote (`remote.rs`): a [`tern_client::Client`] (reconnection with backoff and jitter,
//!   session resume) that publishes what goes out and subscribes to the `in` filters.
//!
//! The broker knows nothing of bridges beyond checking their tables: without `[[bridge]]`
//! it runs exactly as before, and with them a bridge costs what one subscriber costs.
//!
//! `rules.rs` maps topics between the two sides; `status.rs` publishes each bridge's state
//! under `$SYS/broker/bridge/NAME/`.

mod echo;
mod local;
mod remote;
mod rules;
mod status;

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tern_broker::{BridgeConfig, Internal};
use tokio::sync::{mpsc, watch};

/// What can stop a bridge.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BridgeError {
    /// A setting cannot be used; the message names the bridge and the key.
    #[error("{0}")]
    Config(String),
    /// The bridge's session on this broker failed.
    #[error("local session: {0}")]
    Local(String),
    /// A bridge could not start.
    #[error("bridge \"{name}\": {source}")]
    Start {
        /// The bridge's name.
        name: String,
        /// Why.
        source: Box<BridgeError>,
    },
}

/// Counters and state of one bridge, updated by its tasks.
#[derive(Debug, Default)]
struct Status {
    connected: AtomicBool,
    forwarded: AtomicU64,
    received: AtomicU64,
    dropped: AtomicU64,
    hops_exceeded: AtomicU64,
    echoes: AtomicU64,
    /// Failed connection attempts since the last connection.
    attempts: AtomicU32,
    /// The wait before the next attempt, while disconnected (ms; 0 while connected).
    backoff_ms: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl Status {
    fn set_error(&self, e: String) {
        *self.last_error.lock().unwrap_or_else(PoisonError::into_inner) = Some(e);
    }

    /// Attempt `attempt` failed (or the connection was lost); the next comes after `delay`.
    fn backing_off(&self, attempt: u32, delay: std::time::Duration) {
        self.attempts.store(attempt, Ordering::Relaxed);
        let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.backoff_ms.store(ms, Ordering::Relaxed);
    }

    fn now_connected(&self) {
        self.connected.store(true, Ordering::Relaxed);
        self.attempts.store(0, Ordering::Relaxed);
        self.backoff_ms.store(0, Ordering::Relaxed);
    }
}

/// What the tasks of one bridge share.
#[derive(Debug)]
struct Shared {
    config: BridgeConfig,
    status: Status,
    client: Mutex<Option<tern_client::Client>>,
    /// 3.1.1 remotes: what went out and may come back.
    echoes: echo::Echoes,
    /// A 3.1.1 remote accepted the bridge protocol bit (`try_private`): it sends nothing
    /// back, so there are no echoes to recognise.
    private: AtomicBool,
}

impl Shared {
    /// Whether what this bridge sends may come back from the remote (a 3.1.1 remote that
    /// does not know bridges).
    fn echoes_expected(&self) -> bool {
        !self.config.is_v5() && !self.private.load(Ordering::Relaxed)
    }
}

impl Shared {
    /// A snapshot of this bridge; the outbox is read from the broker's session.
    fn state(&self, internal: &Internal) -> BridgeState {
        let s = &self.status;
        let session = internal.session(&self.config.local_client_id());
        BridgeState {
            name: self.config.name.clone(),
            remote: self.config.remote.clone(),
            connected: s.connected.load(Ordering::Relaxed),
            forwarded: s.forwarded.load(Ordering::Relaxed),
            received: s.received.load(Ordering::Relaxed),
            dropped: s.dropped.load(Ordering::Relaxed),
            hops_exceeded: s.hops_exceeded.load(Ordering::Relaxed),
            echoes: s.echoes.load(Ordering::Relaxed),
            reconnect_attempts: s.attempts.load(Ordering::Relaxed),
            backoff_ms: s.backoff_ms.load(Ordering::Relaxed),
            outbox_messages: session.as_ref().map_or(0, |i| i.queued + i.inflight),
            outbox_bytes: session.as_ref().map_or(0, |i| i.queued_bytes),
            outbox_dropped: session.as_ref().map_or(0, |i| i.dropped),
            last_error: s
                .last_error
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        }
    }
}

/// A snapshot of one bridge.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct BridgeState {
    /// The bridge's name.
    pub name: String,
    /// The remote's URL.
    pub remote: String,
    /// Whether it is connected to the remote now.
    pub connected: bool,
    /// Messages the remote acknowledged (QoS 1/2) or was sent (QoS 0), since start.
    pub forwarded: u64,
    /// Messages from the remote published locally, since start.
    pub received: u64,
    /// Messages the remote refused (acknowledged with an error code), no rule matched, or
    /// QoS 0 messages dropped while the bridge was behind and could not wait for room.
    pub dropped: u64,
    /// Messages not sent because they had crossed `max_hops` bridges already.
    pub hops_exceeded: u64,
    /// 3.1.1 remotes: messages from the remote taken for the echo of one the bridge sent
    /// (see `docs/bridge.md`), not published locally.
    pub echoes: u64,
    /// Connection attempts that failed since the last connection (0 while connected).
    pub reconnect_attempts: u32,
    /// While disconnected: the wait before the next attempt, in milliseconds (0 while
    /// connected).
    pub backoff_ms: u64,
    /// Messages in the outbox now: queued for the bridge's session plus in flight to it.
    pub outbox_messages: usize,
    /// Payload bytes of the queued ones.
    pub outbox_bytes: usize,
    /// Messages the broker did not queue for the bridge's session because the outbox was
    /// full (`max_queued_messages` / `max_queued_bytes`), since the session began.
    pub outbox_dropped: u64,
    /// The last error (connection, refusal), if any.
    pub last_error: Option<String>,
}

/// The running bridges of a broker.
#[derive(Debug)]
pub struct Bridges {
    internal: Internal,
    bridges: Vec<Arc<Shared>>,
    /// Each bridge's task, in the order of `bridges`.
    runs: Vec<tokio::task::JoinHandle<()>>,
    /// The `$SYS` publisher.
    status: Option<tokio::task::JoinHandle<()>>,
}

impl Bridges {
    /// Start every bridge of `configs` on the current runtime; returns once each bridge's
    /// local session is open and subscribed, so that a broker that accepts clients only then
    /// forwards everything published from its start. Fails on settings that cannot work (a
    /// password file that cannot be read) and when a local session cannot be opened; an
    /// unreachable remote is retried.
    pub async fn start(internal: Internal, configs: &[BridgeConfig]) -> Result<Bridges, BridgeError> {
        let mut bridges = Vec::new();
        let mut runs = Vec::new();
        for config in configs {
            let shared = Arc::new(Shared {
                config: config.clone(),
                status: Status::default(),
                client: Mutex::new(None),
                echoes: echo::Echoes::default(),
                private: AtomicBool::new(false),
            });
            // The settings are checked before the session is opened, and the remote session
            // is resumed only if the local one was.
            remote::options(&shared, false)?;
            let rules = rules::Rules::new(config);
            let opened = local::LocalLink::open(&internal, &shared, &rules)
                .await
                .map_err(|e| BridgeError::Start {
                    name: config.name.clone(),
                    source: Box::new(e),
                })?;
            runs.push(tokio::spawn(run(shared.clone(), internal.clone(), opened)));
            bridges.push(shared);
        }
        let status = (internal.sys_interval_secs() > 0 && !bridges.is_empty())
            .then(|| tokio::spawn(status::publish_loop(internal.clone(), bridges.clone())));
        Ok(Bridges {
            internal,
            bridges,
            runs,
            status,
        })
    }

    /// A snapshot of each bridge, in configuration order.
    pub fn states(&self) -> Vec<BridgeState> {
        self.bridges.iter().map(|b| b.state(&self.internal)).collect()
    }

    /// What [`Bridges::states`] gives, callable from elsewhere for as long as the caller
    /// keeps it (the HTTP endpoint's `/metrics` and `/api/v1/bridges`).
    pub fn reporter(&self) -> impl Fn() -> Vec<BridgeState> + Send + Sync + 'static {
        let (internal, bridges) = (self.internal.clone(), self.bridges.clone());
        move || bridges.iter().map(|b| b.state(&internal)).collect()
    }

    /// Disconnect from every remote (the remote keeps the bridge's session for
    /// `session_expiry_secs`), publish locally what the client had received (for at most
    /// [`STOP_TIMEOUT`]), and stop. What is in the outboxes stays in the store.
    pub async fn stop(mut self) {
        if let Some(s) = self.status.take() {
            s.abort();
        }
        let runs = std::mem::take(&mut self.runs);
        for (b, run) in self.bridges.iter().zip(runs) {
            let client = b.client.lock().unwrap_or_else(PoisonError::into_inner).take();
            let Some(c) = client else {
                // Not connected yet: nothing received to hand over.
                run.abort();
                continue;
            };
            let _ = tokio::time::timeout(STOP_TIMEOUT, c.disconnect()).await;
            // The events end once the client has stopped and what it received was read.
            let abort = run.abort_handle();
            if tokio::time::timeout(STOP_TIMEOUT, run).await.is_err() {
                abort.abort();
            }
        }
    }
}

impl Drop for Bridges {
    /// Dropped without [`Bridges::stop`]: the bridges stop at once.
    fn drop(&mut self) {
        for run in &self.runs {
            run.abort();
        }
        if let Some(s) = &self.status {
            s.abort();
        }
    }
}

/// How long [`Bridges::stop`] waits for each bridge: its DISCONNECT, then the local publishing
/// of what its client had received.
pub const STOP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// How long to wait before opening the local session again after it ended or failed.
const LOCAL_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

/// One bridge: open the local session, connect to the remote, then move messages until the
/// remote client stops. A local session that ends (an administrator disconnected it) is
/// opened again, and so is the remote connection: the remote client's state belongs with the
/// local session's (the same packet ids on both sides), so it starts again from what the
/// remote session holds, as after a restart.
async fn run(shared: Arc<Shared>, internal: Internal, first: local::Opened) {
    let c = &shared.config;
    let rules = rules::Rules::new(c);
    // The remote client, its events, and whether its SUBSCRIBE is answered.
    let mut remote: Option<(tern_client::Client, tern_client::Events, watch::Receiver<bool>)> = None;
    let mut first = Some(first);
    loop {
        let opened = match first.take() {
            Some(opened) => Ok(opened),
            None => local::LocalLink::open(&internal, &shared, &rules).await,
        };
        let local::Opened {
            link: local,
            deliveries,
            releases,
            closed,
            session_present,
        } = match opened {
            Ok(opened) => opened,
            Err(e) => {
                tracing::error!(bridge = %c.name, "cannot open the local session: {e}");
                shared.status.set_error(e.to_string());
                tokio::time::sleep(LOCAL_RETRY).await;
                continue;
            }
        };
        let (client, events, subscribed) = match &mut remote {
            Some(r) => r,
            None => {
                let options = match remote::options(&shared, session_present) {
                    Ok(o) => o,
                    Err(e) => {
                        tracing::error!(bridge = %c.name, "{e}");
                        shared.status.set_error(e.to_string());
                        tokio::time::sleep(LOCAL_RETRY).await;
                        continue;
                    }
                };
                // A 3.1.1 remote resumes a session only with Clean Session 0 on every
                // connection: a new outbox starts the remote session afresh once, first.
                let wipe = !session_present && !c.is_v5() && !c.clean_start;
                let (client, events) = remote::connect(&shared, options, wipe).await;
                tracing::info!(bridge = %c.name, remote = %c.remote, "connected to the remote");
                shared.status.now_connected();
                *shared.client.lock().unwrap_or_else(PoisonError::into_inner) = Some(client.clone());
                let (s, r, subscriber) = (shared.clone(), rules.clone(), client.clone());
                let (subscribed_tx, subscribed) = watch::channel(false);
                tokio::spawn(async move {
                    remote::subscribe(&s, &subscriber, &r).await;
                    let _ = subscribed_tx.send(true);
                });
                remote.insert((client, events, subscribed))
            }
        };
        let mut tasks = tokio::task::JoinSet::new();
        let (acks_tx, acks_rx) = mpsc::channel(usize::from(c.max_inflight));
        tasks.spawn(remote::acknowledge(shared.clone(), acks_rx, local.clone()));
        let (released_tx, released) = watch::channel(0u64);
        tasks.spawn(remote::release(
            shared.clone(),
            client.clone(),
            releases,
            (local.clone(), released_tx, subscribed.clone()),
        ));
        let (in_tx, in_rx) = mpsc::channel(usize::from(c.max_inflight) + 16);
        tasks.spawn(remote::acknowledge_in(shared.clone(), client.clone(), in_rx));
        tasks.spawn(remote::forward(
            shared.clone(),
            client.clone(),
            rules.clone(),
            deliveries,
            local.clone(),
            (
                acks_tx,
                remote::Gates {
                    released,
                    subscribed: subscribed.clone(),
                },
            ),
        ));
        let ended = remote::receive(&shared, events, &rules, &local, closed, in_tx).await;
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
        if ended == remote::Ended::Remote {
            return;
        }
        tracing::warn!(bridge = %c.name, "the local session ended; opening it again, and the remote connection");
        if let Some((client, _, _)) = remote.take() {
            shared
                .client
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
            let _ = tokio::time::timeout(STOP_TIMEOUT, client.disconnect()).await;
        }
        shared.status.connected.store(false, Ordering::Relaxed);
        tokio::time::sleep(LOCAL_RETRY).await;
    }
}
