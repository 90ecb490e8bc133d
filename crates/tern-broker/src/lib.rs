//! # tern-broker
//!
//! The Tern MQTT broker as a library: MQTT 3.1, 3.1.1 and 5.0 over TCP, TLS,
//! WebSocket and WebSocket over TLS, with retained messages, wills, persistent
//! sessions, shared subscriptions, the 5.0 flow-control features, password and
//! certificate authentication, SCRAM-SHA-256 enhanced authentication and ACLs.
//!
//! ```no_run
//! # async fn run() -> Result<(), tern_broker::BrokerError> {
//! let broker = tern_broker::BrokerBuilder::new().listen("127.0.0.1:0".parse().unwrap()).bind().await?;
//! println!("listening on {:?}", broker.local_addrs());
//! broker.run().await;
//! # Ok(()) }
//! ```
//!
//! ## Layout
//! - [`Config`]: every limit with its default; TOML or [`BrokerBuilder`].
//! - `connection/`: one task per client: CONNECT phase, packet handling, delivery.
//! - `session.rs`: session state that outlives connections; the registry.
//! - `router.rs`: the subscription trie with shared groups.
//! - `retained.rs`: the retained messages, indexed by topic level for lookups by filter.
//! - `broker_core.rs`: the core (`Core`): publish, retain, subscribe and end-of-session across those.
//! - `clock.rs`: the time of protocol deadlines ([`Clock`]; [`ManualClock`] for tests).
//! - `scheduler.rs`: one timer for the session expiry and delayed wills of offline sessions.
//! - `listener/`: accept loops and the TLS / WebSocket handshakes.
//! - `security/`: password file, ACL, per-listener anonymous policy, reload.
//! - `admin.rs`: [`Admin`], operator access for an HTTP endpoint (the `tern-admin` crate);
//!   `metrics.rs`, `trace.rs`, `watch.rs`: what it reads, none of it per message when unused.

mod admin;
mod auth;
pub mod backplane;
mod bridge_config;
mod broker_core;
mod budget;
mod clock;
mod cluster_config;
mod config;
mod connection;
pub mod durability;
mod error;
mod handover;
mod http_config;
mod inspect;
mod listener;
mod message;
mod metrics;
mod recent;
mod restore;
mod retained;
mod retained_cache;
mod router;
mod scheduler;
pub mod security;
mod session;
pub use session::{QueueLimits, WhenFull};
mod store;
mod sys;
pub mod trace;
pub mod watch;

/// For the `fuzz/` targets only (cargo feature `fuzzing`): not part of the API.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

pub use admin::{Admin, MetricsSnapshot, NotReady, PressedSession, PublishError, Room, StoreSnapshot};
pub use auth::{AuthExchange, AuthStep, Authenticator};
pub use bridge_config::{BridgeConfig, BridgeDirection, BridgeTopic, OutboxFull};
pub use broker_core::SharedDelivery;
pub use clock::{Clock, ManualClock};
pub use cluster_config::ClusterConfig;
pub use config::{Config, DeniedSubscription, ListenerConfig, ListenerKind, LogFormat};
pub use durability::{Durability, Stored};
pub use error::BrokerError;
pub use handover::HandOff;
pub use http_config::{HttpConfig, DEFAULT_HTTP};
pub use inspect::{BrokerStats, ConnectionInfo, SessionInfo, SubscriptionInfo};
pub use message::{BackplaneMark, Message, Settlement};
pub use metrics::HistogramSnapshot;
pub use recent::SeenTopic;
pub use security::SecurityHandle;
pub use store::SyncPolicy;

/// Builds a broker from defaults plus changes.
#[derive(Default)]
pub struct BrokerBuilder {
    config: Config,
    listen_set: bool,
    authenticators: Vec<Arc<dyn Authenticator>>,
    clock: Clock,
    durability: Option<(Arc<dyn Durability>, Stored)>,
    backplane: Option<Arc<dyn backplane::Backplane>>,
}

impl std::fmt::Debug for BrokerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerBuilder")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl BrokerBuilder {
    /// Start from the embedded defaults ([`Config::default`]).
    pub fn new() -> BrokerBuilder {
        BrokerBuilder::default()
    }

    /// Start from a configuration.
    pub fn from_config(config: Config) -> BrokerBuilder {
        BrokerBuilder {
            config,
            listen_set: true,
            authenticators: Vec::new(),
            clock: Clock::system(),
            durability: None,
            backplane: None,
        }
    }

    /// Add a TCP listener address (the first call replaces the default 127.0.0.1:1883).
    pub fn listen(mut self, addr: SocketAddr) -> BrokerBuilder {
        if !self.listen_set {
            self.config.listen.clear();
            self.listen_set = true;
        }
        self.config.listen.push(addr);
        self
    }

    /// Change the configuration in place.
    pub fn configure(mut self, f: impl FnOnce(&mut Config)) -> BrokerBuilder {
        f(&mut self.config);
        self
    }

    /// Take the time of protocol deadlines (message and session expiry, will delays) from
    /// Keep the broker's durable state in `durability` (which holds `stored` now) instead of
    /// the embedded store of `data_dir`: the seam for other storage backends and for tests.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), tern_broker::BrokerError> {
    /// use tern_broker::{durability::InMemory, BrokerBuilder};
    /// let mem = InMemory::new();
    /// let broker = BrokerBuilder::new().durability(mem.clone(), mem.restart()).bind().await?;
    /// broker.run().await;
    /// # Ok(()) }
    /// ```
    pub fn durability(mut self, durability: Arc<dyn Durability>, stored: Stored) -> BrokerBuilder {
        self.durability = Some((durability, stored));
        self
    }

    /// Tell `backplane` what this broker's clients publish and subscribe to (a cluster, a
    /// bridge); messages from it come in through [`BrokerHandle::publish`].
    pub fn backplane(mut self, backplane: Arc<dyn backplane::Backplane>) -> BrokerBuilder {
        self.backplane = Some(backplane);
        self
    }

    /// `clock` instead of the system: a [`ManualClock`] lets a test pass an hour at once.
    pub fn clock(mut self, clock: impl Into<Clock>) -> BrokerBuilder {
        self.clock = clock.into();
        self
    }

    /// Offer an enhanced authentication method (MQTT 5.0 AUTH exchange).
    pub fn authenticator(mut self, a: Arc<dyn Authenticator>) -> BrokerBuilder {
        self.authenticators.push(a);
        self
    }

    /// Add a listener of any kind (see [`ListenerConfig`]).
    pub fn listener(mut self, listener: ListenerConfig) -> BrokerBuilder {
        if !self.listen_set {
            self.config.listen.clear();
            self.listen_set = true;
        }
        self.config.listeners.push(listener);
        self
    }

    /// Validate the configuration, load the TLS, password and ACL files, and bind
    /// every listener: first the `listen` addresses, then the `[[listener]]` tables.
    pub async fn bind(self) -> Result<Broker, BrokerError> {
        self.config.validate()?;
        let security = Arc::new(security::Security::load(&self.config)?);
        let mut authenticators = self.authenticators;
        if self.config.password_file.is_some()
            && !authenticators
                .iter()
                .any(|a| a.method() == security::scram::METHOD)
        {
            authenticators.push(Arc::new(security::scram::ScramAuthenticator::new(
                security.clone(),
            )));
        }
        if self.config.auth.jwt.is_some()
            && !authenticators.iter().any(|a| a.method() == security::jwt::METHOD)
        {
            authenticators.push(Arc::new(security::jwt::JwtMethod::new(&security)));
        }
        let mut endpoints = Vec::new();
        let tcp = Arc::new(listener::Endpoint::tcp(&self.config));
        for addr in &self.config.listen {
            endpoints.push((*addr, tcp.clone()));
        }
        for (i, l) in self.config.listeners.iter().enumerate() {
            endpoints.push((l.address, Arc::new(listener::Endpoint::new(&self.config, l, i)?)));
        }
        let mut listeners = Vec::new();
        for (addr, endpoint) in endpoints {
            let socket = bind_listener(addr, self.config.listen_backlog)
                .map_err(|source| BrokerError::Bind { addr, source })?;
            let endpoint = Arc::new(endpoint.bound_to(socket.local_addr().unwrap_or(addr)));
            listeners.push(listener::Bound { socket, endpoint });
        }
        let mut store_metrics = None;
        let (store, stored): (Option<Arc<dyn Durability>>, Option<Stored>) =
            match (self.durability, &self.config.data_dir) {
                (Some((d, stored)), _) => (Some(d), Some(stored)),
                (None, Some(dir)) => {
                    let interval = Duration::from_millis(self.config.sync_interval_ms);
                    let (s, l) = store::Store::open(
                        dir,
                        self.config.sync,
                        interval,
                        self.clock.clone(),
                        self.config.store_cache_bytes,
                        store::Resident {
                            per_session: self.config.max_queued_messages,
                            queued_bytes: self.config.offline_cache_bytes,
                            retained_bytes: self.config.retained_cache_bytes,
                        },
                    )
                    .map_err(|e| BrokerError::Store(format!("data directory {}: {e}", dir.display())))?;
                    store_metrics = Some(s.metrics.clone());
                    (Some(s), Some(l))
                }
                (None, None) => (None, None),
            };
        // Message ids go on after the highest stored (an implementation stores a message once per id).
        let first_id = stored
            .as_ref()
            .map(|s| {
                let read = s.deliveries.iter().map(|(_, d)| d.message_id).max();
                read.unwrap_or(0).max(s.max_message_id)
            })
            .map_or(1, |m| m + 1);
        let mut core = broker_core::Core::new(
            self.config,
            authenticators,
            durability::Persistence::new(store, first_id),
            security,
            self.clock,
        );
        core.shared_elsewhere = self.backplane.as_ref().is_some_and(|b| b.delivers_shared());
        core.qos2_elsewhere = self.backplane.as_ref().is_some_and(|b| b.keeps_qos2());
        core.backplane = self.backplane;
        core.store_metrics = store_metrics;
        let core = Arc::new(core);
        let tls_slots = listeners
            .iter()
            .filter_map(|l| Some((l.endpoint.name().to_string(), l.endpoint.tls_slot()?)))
            .collect();
        core.security.attach(&core, tls_slots);
        if let Some(stored) = stored {
            let started = std::time::Instant::now();
            let r = core.restore(stored);
            tracing::info!(
                sessions = r.sessions,
                messages = r.messages,
                retained = r.retained,
                expired_sessions = r.expired_sessions,
                expired_messages = r.expired_messages,
                elapsed = ?started.elapsed(),
                "state restored from the data directory"
            );
        }
        let limits = listener::Limits::new(&core.config, core.clock.now());
        Ok(Broker {
            core,
            listeners,
            limits,
        })
    }
}

/// A broker whose listeners are bound.
#[derive(Debug)]
pub struct Broker {
    core: Arc<broker_core::Core>,
    listeners: Vec<listener::Bound>,
    /// The connection limit and connect rate, shared by every listener.
    limits: listener::Limits,
}

impl Broker {
    /// Validate `config` and bind its listeners.
    pub async fn bind(config: Config) -> Result<Broker, BrokerError> {
        BrokerBuilder::from_config(config).bind().await
    }

    /// The addresses actually bound (useful with port 0).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter_map(|l| l.socket.local_addr().ok())
            .collect()
    }

    /// Each bound listener's kind and address, in the order of [`Broker::local_addrs`].
    pub fn listeners(&self) -> Vec<(ListenerKind, SocketAddr)> {
        self.listeners
            .iter()
            .filter_map(|l| Some((l.endpoint.kind, l.socket.local_addr().ok()?)))
            .collect()
    }

    /// Reload the password and ACL files, and count authentication failures.
    pub fn security(&self) -> SecurityHandle {
        SecurityHandle(self.core.security.clone())
    }

    /// Operator access (admin API, metrics, traces) to this broker once it runs.
    pub fn admin(&self) -> Admin {
        Admin::new(self.core.clone(), self.limits.clone(), self.listeners())
    }

    /// The way in for clients that are part of the broker program (a bridge's local side).
    pub fn internal(&self) -> Internal {
        Internal {
            core: self.core.clone(),
        }
    }

    /// Serve until the task is dropped.
    pub async fn run(self) {
        self.run_until(std::future::pending()).await
    }

    /// Serve until `stop` completes, then shut down gracefully: stop accepting,
    /// send 5.0 clients DISCONNECT 0x8B (Server shutting down), close every
    /// connection, and wait (at most 5 s) for the connection tasks to finish.
    pub async fn run_until(self, stop: impl Future<Output = ()>) {
        let core = self.core;
        let limits = self.limits;
        let mut tasks = tokio::task::JoinSet::new();
        for l in self.listeners {
            // Debug: the embedding program announces its listeners (`tern broker` prints one
            // line each), so that a start-up shows each listener once.
            tracing::debug!(listener = %l.endpoint.name(), "listening");
            tasks.spawn(listener::accept_loop(l, core.clone(), limits.clone()));
        }
        tasks.spawn(scheduler::run(core.clone()));
        tasks.spawn(core.security.clone().run());
        if core.config.sys_interval_secs > 0 {
            tasks.spawn(sys::publish_loop(core.clone()));
        }
        stop.await;
        tracing::info!("shutting down");
        tasks.abort_all();
        core.begin_shutdown();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while limits.active() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if core.durability.enabled() {
            let d = core.durability.clone();
            let _ = tokio::task::spawn_blocking(move || d.close()).await;
        }
    }

    /// Serve on the current tokio runtime in the background.
    pub fn spawn(self) -> BrokerHandle {
        let addrs = self.local_addrs();
        let listeners = self.listeners();
        let security = self.security();
        let core = self.core.clone();
        let stream_origin = self.listeners.first().map(|l| l.endpoint.stream_origin());
        let limits = self.limits.clone();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(self.run_until(async {
            let _ = rx.await;
        }));
        BrokerHandle {
            addrs,
            listeners,
            security,
            core,
            stream_origin,
            limits,
            stop: Some(tx),
            task,
        }
    }
}

/// A running broker. [`BrokerHandle::shutdown`] stops it gracefully; dropping the
/// handle stops it too.
#[derive(Debug)]
pub struct BrokerHandle {
    addrs: Vec<SocketAddr>,
    listeners: Vec<(ListenerKind, SocketAddr)>,
    security: SecurityHandle,
    core: Arc<broker_core::Core>,
    /// The first listener's policy, for streams handed over by [`BrokerHandle::serve_stream`].
    stream_origin: Option<security::Origin>,
    limits: listener::Limits,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl BrokerHandle {
    /// The bound listener addresses.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// The first listener's address.
    pub fn addr(&self) -> SocketAddr {
        self.addrs[0]
    }

    /// The address of the first listener of `kind`.
    pub fn addr_of(&self, kind: ListenerKind) -> Option<SocketAddr> {
        self.listeners.iter().find(|(k, _)| *k == kind).map(|(_, a)| *a)
    }

    /// Reload the password and ACL files, and count authentication failures.
    pub fn security(&self) -> &SecurityHandle {
        &self.security
    }

    /// Serve MQTT on a byte stream that did not come through a listener (an in-process
    /// client, a pipe, a simulated network), with the first listener's policy (anonymous
    /// access, authentication), on the current runtime. `peer` is what logs and the admin API
    /// show as its address.
    pub fn serve_stream<S>(&self, io: S, peer: SocketAddr)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let Some(origin) = self.stream_origin.clone() else {
            return;
        };
        let core = self.core.clone();
        core.counters
            .connections
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tokio::spawn(connection::serve(io, peer, core, origin));
    }

    /// Deliver a message that came from elsewhere (another node of a cluster, a bridge) to
    /// this broker's sessions, and keep it if it is retained, without handing it back to the
    /// [`Backplane`](backplane::Backplane). Returns how many sessions it reached, or why the
    /// topic is not a valid topic name.
    pub fn publish(&self, message: Message) -> Result<usize, tern_proto::topic::TopicError> {
        self.core.publish_from_outside(message, true)
    }

    /// The way in for clients that are part of the broker program (a bridge's local side).
    pub fn internal(&self) -> Internal {
        Internal {
            core: self.core.clone(),
        }
    }

    /// Operator access (admin API, metrics, traces) to this broker.
    pub fn admin(&self) -> Admin {
        Admin::new(self.core.clone(), self.limits.clone(), self.listeners.clone())
    }

    /// Every session, connected or not, sorted by client identifier.
    pub fn sessions(&self) -> Vec<SessionInfo> {
        self.core.session_infos()
    }

    /// The session of `client_id`, if it has one.
    pub fn session(&self, client_id: &str) -> Option<SessionInfo> {
        self.core.session_info(client_id)
    }

    /// What the broker holds now and what it has counted since start: open connections,
    /// sessions, bytes in packets in progress and queued, evictions and drops.
    pub fn stats(&self) -> BrokerStats {
        self.core.stats(self.limits.active())
    }

    /// Disconnect a client as an administrator: its connection, if any, is closed (5.0:
    /// DISCONNECT 0x98 Administrative action) and its will published; with
    /// `discard_session` its session ends too (at once if it is offline). Returns whether
    /// the client had a session.
    pub fn disconnect(&self, client_id: &str, discard_session: bool) -> bool {
        self.core.disconnect_client(client_id, discard_session)
    }

    /// Shut down gracefully and wait until it is done.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }
}

impl Drop for BrokerHandle {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Client identifiers that only [`Internal`] clients may use: bridges' sessions are
/// `$bridge/NAME`, and a client from a listener is refused such an identifier (CONNACK 0x85,
/// 3.1.1: 0x02), so it cannot take over a bridge's outbox.
pub const BRIDGE_CLIENT_PREFIX: &str = "$bridge/";

/// The listener name of [`Internal`] connections (in logs and the admin API).
pub(crate) const INTERNAL_ORIGIN: &str = "internal";

/// Serves MQTT to clients that run inside the broker's program (a bridge's local side): no
/// listener, no password; the user name is the one given to [`Internal::serve`], so the ACL
/// applies to it as to any user. Everything else (sessions, the store, limits, No Local) is
/// what a client over TCP gets. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Internal {
    core: Arc<broker_core::Core>,
}

impl Internal {
    /// Serve MQTT on `io` (one end of an in-process pipe) as user `user`, on the current
    /// runtime, until the stream ends or the broker shuts down.
    pub fn serve<S>(&self, io: S, user: &str)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let origin = security::Origin {
            policy: Arc::new(security::ListenerPolicy {
                name: INTERNAL_ORIGIN.into(),
                allow_anonymous: false,
                identity_as_username: true,
            }),
            cert_name: Some(Some(user.to_string())),
        };
        let core = self.core.clone();
        core.counters
            .connections
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let peer = SocketAddr::from(([127, 0, 0, 1], 0));
        tokio::spawn(connection::serve(io, peer, core, origin));
    }

    /// Give the session of `client_id` its own queue limits and policy when full, in place
    /// of `max_queued_messages` / `max_queued_bytes` and the backpressure timeout (a
    /// bridge's outbox), for as long as the broker runs; `false` when it has no session.
    pub fn set_queue_limits(&self, client_id: &str, limits: QueueLimits) -> bool {
        let Some(cell) = self.core.sessions.get(client_id) else {
            return false;
        };
        let mut st = cell.lock();
        st.limits = Some(Box::new(limits));
        cell.note_fullness(&st, &self.core.config);
        true
    }

    /// A snapshot of the session of `client_id` (its queued and in-flight messages, what it
    /// dropped), if it has one.
    pub fn session(&self, client_id: &str) -> Option<SessionInfo> {
        self.core.session_info(client_id)
    }

    /// Publish a message of the broker itself (a `$SYS` statistic of a bridge, say) to this
    /// broker's sessions, retained if it says so, as [`BrokerHandle::publish`] does.
    pub fn publish(&self, message: Message) -> Result<usize, tern_proto::topic::TopicError> {
        self.core.publish_from_outside(message, true)
    }

    /// Seconds between `$SYS` updates (`sys_interval_secs`; 0: none).
    pub fn sys_interval_secs(&self) -> u64 {
        self.core.config.sys_interval_secs
    }

    /// How long publishers wait for a subscriber that does not drain before its messages are
    /// dropped (`backpressure_timeout_ms`).
    pub fn backpressure_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.core.config.backpressure_timeout_ms)
    }
}

/// Bind a listening socket with room for `backlog` connections waiting to be
/// accepted (the standard library's default of 128 overflows in a reconnect storm,
/// and each dropped SYN costs that client a one-second retransmission).
fn bind_listener(addr: std::net::SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    // As the standard library does: on Windows SO_REUSEADDR would let a second
    // process bind the same port.
    #[cfg(not(windows))]
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}
