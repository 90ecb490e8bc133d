//! # tern-cluster
//!
//! Cluster mode for the Tern broker: several `tern broker` nodes share their clients' messages
//! through NATS (core subjects for QoS 0, JetStream streams for QoS 1/2), so that a client on
//! one node reaches subscribers on every node, and a QoS 1/2 message is acknowledged to its
//! publisher only once JetStream has stored it on a quorum of NATS servers. See
//! docs/cluster.md for the design as built and what is not built yet.
//!
//! ```no_run
//! # async fn run(config: tern_broker::Config) -> Result<(), Box<dyn std::error::Error>> {
//! let cluster_config = config.cluster.clone().expect("a [cluster] table");
//! let cluster = tern_cluster::Cluster::start(&cluster_config).await?;
//! let broker = tern_broker::BrokerBuilder::from_config(config)
//!     .backplane(cluster.backplane())
//!     .bind()
//!     .await?;
//! cluster.attach(broker.admin()).await?;
//! broker.run().await;
//! # Ok(()) }
//! ```
//!
//! ## Layout
//! - `topic.rs`: MQTT topics and filters as NATS subjects (total and reversible).
//! - `codec.rs`: a broker message as NATS headers and payload, and back.
//! - `monitor.rs`: the start-up guard (NATS version, JetStream fsync setting).
//! - `check.rs`: `tern cluster check`, every requirement on the NATS side as a line.
//! - `sys.rs`: `$SYS/cluster/...`, the cluster's totals and each node's figures.
//! - `sessions.rs`: which node holds each client's session, and sessions handed from node to
//!   node when their client reconnects elsewhere (takeover across nodes).
//! - `wills.rs`: the wills of each node's connections in a bucket, node liveness, and the
//!   wills of a node that dies published by another.
//! - `streams.rs`: the shard streams, created or checked at start.
//! - `outbound.rs`: this node's clients' messages on their way to NATS; the tickets that hold
//!   acknowledgements back until JetStream has stored the message.
//! - `inbound.rs`: other nodes' messages into this node (QoS 0 subscriptions that follow the
//!   local filters, one ordered consumer per shard, the retained bucket followed in order).
//! - `shares.rs`: shared subscriptions, one member across the cluster per message (a durable
//!   consumer per group and shard, a queue group for QoS 0).

mod check;
pub mod codec;
mod error;
mod flow;
mod inbound;
mod monitor;
mod order;
mod outbound;
mod sessions;
mod shares;
mod streams;
mod sys;
pub mod topic;
mod wills;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream;
use tern_broker::backplane::Backplane;
use tern_broker::durability::{Progress, Ticket};
use tern_broker::{Admin, ClusterConfig, Message};

pub use check::{check, Finding};
pub use error::ClusterError;
pub use inbound::InboundCounters;
pub use monitor::version_ok;
pub use outbound::OutboundCounters;

/// How long start-up retries streams JetStream does not answer about.
pub(crate) const START_RETRY: Duration = Duration::from_secs(30);

/// Longest wait for the retained messages at start.
const RETAINED_LOAD: Duration = Duration::from_secs(60);

/// Bytes of NATS headers Tern adds to a message at most, besides the 5.0 properties.
const HEADER_ROOM: usize = 1024;

/// A node of a Tern cluster, connected to NATS.
pub struct Cluster {
    config: ClusterConfig,
    node: String,
    client: async_nats::Client,
    js: jetstream::Context,
    /// Each shard stream's last sequence at start: the tailers begin after it.
    start_seqs: Vec<u64>,
    fsync_always: bool,
    outbound: Arc<outbound::Outbound>,
    interest: Arc<inbound::Interest>,
    /// The shared subscriptions of this node's sessions (`shares.rs`).
    shares: Arc<shares::Shares>,
    /// A second connection to NATS, for shared subscriptions' QoS 0 messages (the first
    /// does not receive what this node publishes).
    share_client: async_nats::Client,
    inbound_counters: Arc<InboundCounters>,
    /// How far other nodes let this node's QoS 0 connections go (`flow.rs`).
    holds: Arc<flow::Holds>,
    flow_counters: Arc<flow::FlowCounters>,
    /// What the will keeper counts.
    will_counters: Arc<wills::WillCounters>,
    subscribed: Arc<AtomicU64>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// To the will keeper (`wills.rs`), which [`Cluster::attach`] starts.
    wills: tokio::sync::mpsc::Sender<wills::WillOp>,
    wills_rx: Mutex<Option<tokio::sync::mpsc::Receiver<wills::WillOp>>>,
    /// The session directory (`sessions.rs`) and, until [`Cluster::attach`], the ends of
    /// sessions it is told of.
    directory: Arc<sessions::Directory>,
    /// Per shard, the last stream sequence this node's tailer handled.
    positions: Arc<[AtomicU64]>,
    /// Asks the tailers to give their holds up (`order.rs`).
    give_up: Arc<order::GiveUp>,
    /// Notified when the connection to NATS comes back (the session directory's).
    reconnected: Arc<tokio::sync::Notify>,
    /// How many times the connection to NATS came (the will keeper's).
    connections: tokio::sync::watch::Receiver<u64>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("node", &self.node)
            .field("nats", &self.config.nats)
            .finish_non_exhaustive()
    }
}

/// The host name, made a valid node name (letters, digits, `-`, `_`).
fn default_node_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_default();
    let name: String = host
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if name.is_empty() {
        "tern".into()
    } else {
        name
    }
}

/// Credentials and TLS towards NATS, from the `[cluster]` table.
fn connect_options(config: &ClusterConfig) -> Result<async_nats::ConnectOptions, ClusterError> {
    let mut o = async_nats::ConnectOptions::new();
    let password = match (&config.password, &config.password_file) {
        (Some(p), _) => Some(p.clone()),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                ClusterError::Config(format!(
                    "cluster.password_file: cannot read {}: {e}",
                    path.display()
                ))
            })?;
            Some(text.lines().next().unwrap_or("").to_string())
        }
        (None, None) => None,
    };
    if let (Some(user), Some(password)) = (&config.user, password) {
        o = o.user_and_password(user.clone(), password);
    }
    if let Some(token) = &config.token {
        o = o.token(token.clone());
    }
    if let Some(path) = &config.nkey_file {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ClusterError::Config(format!("cluster.nkey_file: cannot read {}: {e}", path.display()))
        })?;
        // nsc writes the seed alone; a file may also have comment lines.
        let seed = text
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with("//"))
            .unwrap_or("");
        if !seed.starts_with("SU") {
            return Err(ClusterError::Config(format!(
                "cluster.nkey_file: {} holds no user NKey seed (a line starting with SU)",
                path.display()
            )));
        }
        o = o.nkey(seed.to_string());
    }
    if let Some(path) = &config.credentials_file {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ClusterError::Config(format!(
                "cluster.credentials_file: cannot read {}: {e}",
                path.display()
            ))
        })?;
        o = o.credentials(&text).map_err(|e| {
            ClusterError::Config(format!(
                "cluster.credentials_file: {} is not a NATS credentials file: {e}",
                path.display()
            ))
        })?;
    }
    let readable = |key: &str, path: &std::path::Path| {
        std::fs::metadata(path)
            .map(|_| ())
            .map_err(|e| ClusterError::Config(format!("cluster.{key}: cannot read {}: {e}", path.display())))
    };
    if let Some(ca) = &config.ca_file {
        readable("ca_file", ca)?;
        o = o.add_root_certificates(ca.clone());
    }
    if let (Some(cert), Some(key)) = (&config.cert_file, &config.key_file) {
        readable("cert_file", cert)?;
        readable("key_file", key)?;
        o = o.add_client_certificate(cert.clone(), key.clone());
    }
    let tls = config.tls || config.ca_file.is_some() || config.cert_file.is_some();
    // A server that stops answering (a partition that drops packets rather than closing the
    // connection) is left after three pings without a word from it; NATS' default of one
    // ping a minute would keep this node on a dead connection for minutes, much longer than
    // the other nodes take to think it gone.
    Ok(o.require_tls(tls)
        .ping_interval(ping_interval(config.node_timeout_ms)))
}

/// How often a node pings its NATS server: a fifth of the node timeout, 1 s to 60 s.
fn ping_interval(node_timeout_ms: u64) -> Duration {
    Duration::from_millis(node_timeout_ms / 5).clamp(Duration::from_secs(1), Duration::from_secs(60))
}

impl Cluster {
    /// Connect to NATS, check that it keeps what it acknowledges (version, fsync; see
    /// [`ClusterError`]), and create or check the streams. Nothing is delivered into the
    /// broker before [`Cluster::attach`].
    pub async fn start(config: &ClusterConfig) -> Result<Cluster, ClusterError> {
        config.validate().map_err(ClusterError::Config)?;
        if config.nats.is_empty() {
            return Err(ClusterError::Config(
                "no NATS server: give `cluster.nats` or `tern broker --cluster URLS`".into(),
            ));
        }
        let mut config = config.clone();
        if config.node_name.is_empty() {
            config.node_name = default_node_name();
        }
        let node = config.node_name.clone();
        let urls = config.nats.join(",");
        // Told when the connection to NATS comes back (sessions.rs looks at its sessions again,
        // wills.rs at its wills).
        let reconnected = Arc::new(tokio::sync::Notify::new());
        let (connected, connections) = tokio::sync::watch::channel(0u64);
        let told = (reconnected.clone(), Arc::new(connected));
        let connect = |options: async_nats::ConnectOptions| {
            let urls = urls.clone();
            let servers = config.nats.clone();
            async move {
                options
                    .connection_timeout(Duration::from_secs(5))
                    .connect(servers.as_slice())
                    .await
                    .map_err(|source| ClusterError::Connect { urls, source })
            }
        };
        let client = connect(
            connect_options(&config)?
                .event_callback(move |event| {
                    let told = told.clone();
                    async move {
                        match event {
                            async_nats::Event::Connected => {
                                told.0.notify_one();
                                told.1.send_modify(|n| *n += 1);
                            }
                            // The NATS client dropped messages of a subscription this node did
                            // not take fast enough (QoS 0 from other nodes: core NATS has no
                            // flow control).
                            async_nats::Event::SlowConsumer(sid) => {
                                tracing::warn!(
                                    sid,
                                    "cluster: a NATS subscription fell behind; its client dropped messages"
                                )
                            }
                            _ => {}
                        }
                    }
                })
                .name(format!("tern {node}"))
                // This node's own QoS 0 messages reached its sessions already.
                .no_echo(),
        )
        .await?;
        let share_client = connect(connect_options(&config)?.name(format!("tern {node} shares"))).await?;
        let info = client.server_info();
        let fsync_always = monitor::check(&config, &info.version, &info.server_name).await?;
        if !fsync_always {
            tracing::warn!(
                "cluster.unsafe_lazy_fsync: JetStream may acknowledge messages before they reach the disk"
            );
        }
        let timeout = Duration::from_millis(config.publish_timeout_ms).min(Duration::from_secs(5));
        let js = jetstream::ContextBuilder::new()
            .timeout(timeout)
            .max_ack_inflight(config.max_ack_inflight)
            .backpressure_on_inflight(true)
            .build(client.clone());
        // Right after a NATS server restarted, streams may have no leader for some seconds.
        let deadline = tokio::time::Instant::now() + START_RETRY;
        let (start_seqs, sessions_kv) = loop {
            let r = async {
                let seqs = streams::ensure(&js, &config).await?;
                streams::ensure_retain(&js, &config).await?;
                wills::ensure(&js, &config.prefix, config.replicas).await?;
                let kv =
                    sessions::ensure(&js, &config.prefix, config.replicas, config.session_buckets).await?;
                Ok::<_, ClusterError>((seqs, kv))
            }
            .await;
            match r {
                Err(e @ ClusterError::Unavailable { .. }) if tokio::time::Instant::now() < deadline => {
                    tracing::warn!("cluster start: {e}; trying again");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                r => break r?,
            }
        };
        streams::await_leaders(&js, &config, deadline).await;
        let (outbound, receivers) = outbound::Outbound::new(
            node.clone(),
            config.prefix.clone(),
            config.shards,
            Duration::from_millis(config.publish_timeout_ms),
            config.qos0_pack,
            config.qos1_pack,
        );
        let outbound = Arc::new(outbound);
        let run = tokio::spawn(outbound::run(
            outbound.clone(),
            client.clone(),
            js.clone(),
            receivers,
        ));
        tracing::info!(node = %node, nats = %urls, server = %info.server_name, version = %info.version, shards = config.shards, replicas = config.replicas, fsync_always, "cluster mode: connected to NATS");
        let (wills_tx, wills_rx) = tokio::sync::mpsc::channel(wills::QUEUE);
        let positions: Arc<[AtomicU64]> = start_seqs.iter().map(|&s| AtomicU64::new(s)).collect();
        let give_up = Arc::new(order::GiveUp::new(start_seqs.len()));
        let directory = sessions::Directory::new(sessions::Parts {
            node: node.clone(),
            prefix: config.prefix.clone(),
            client: client.clone(),
            js: js.clone(),
            kv: sessions_kv,
            outbound: outbound.clone(),
            positions: positions.clone(),
            give_up: give_up.clone(),
        });
        let directory = Arc::new(directory);
        // Weak: the directory holds the outbound half.
        let relisting = Arc::downgrade(&directory);
        let _ = outbound.relist.set(outbound::Relist {
            write: Box::new(move |client: Arc<str>| {
                let directory = relisting.clone();
                Box::pin(async move {
                    match directory.upgrade() {
                        Some(d) => d.relist(&client).await,
                        None => Err("the node is stopping".into()),
                    }
                })
            }),
        });
        let flow_counters = Arc::new(flow::FlowCounters::default());
        let holds = Arc::new(flow::Holds::new(outbound.run(), flow_counters.clone()));
        Ok(Cluster {
            reconnected,
            connections,
            positions,
            give_up,
            directory,
            wills: wills_tx,
            wills_rx: Mutex::new(Some(wills_rx)),
            config,
            node,
            client,
            js,
            start_seqs,
            fsync_always,
            outbound,
            interest: Arc::default(),
            shares: Arc::default(),
            share_client,
            inbound_counters: Arc::default(),
            holds,
            flow_counters,
            will_counters: Arc::default(),
            subscribed: Arc::default(),
            tasks: Mutex::new(vec![run]),
        })
    }

    /// The largest MQTT packet this cluster can carry: NATS' `max_payload` less room for
    /// Tern's headers, the 5.0 properties counted as their base64 text. `tern broker` lowers
    /// its `max_packet_size` to it.
    pub fn max_packet_size(&self) -> u32 {
        let payload = self.client.server_info().max_payload;
        let usable = payload.saturating_sub(HEADER_ROOM) * 3 / 4;
        u32::try_from(usable).unwrap_or(u32::MAX)
    }

    /// The backplane to give [`tern_broker::BrokerBuilder::backplane`].
    pub fn backplane(&self) -> Arc<dyn Backplane> {
        Arc::new(NodeBackplane {
            counted: self.counted(),
            outbound: self.outbound.clone(),
            interest: self.interest.clone(),
            shares: self.shares.clone(),
            prefix: self.config.prefix.clone(),
            wills: self.wills.clone(),
            directory: self.directory.clone(),
            holds: self.holds.clone(),
        })
    }

    /// Start delivering other nodes' messages into the broker behind `admin`, after loading
    /// the cluster's retained messages into it (so that a client of this node sees them from
    /// its first SUBSCRIBE). Call it before the broker serves.
    pub async fn attach(&self, admin: Admin) -> Result<(), ClusterError> {
        // The wills this node's previous run left (its connections died with it) go out
        // before it takes clients, whose wills use the same keys.
        let keeper = Arc::new(wills::Keeper {
            node: self.node.clone(),
            prefix: self.config.prefix.clone(),
            js: self.js.clone(),
            client: self.client.clone(),
            admin: admin.clone(),
            outbound: self.outbound.clone(),
            timeout: Duration::from_millis(self.config.node_timeout_ms),
            heard: Default::default(),
            connections: self.connections.clone(),
            in_touch: Default::default(),
            counters: self.will_counters.clone(),
        });
        match keeper.reap(&self.node).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                wills = n,
                "cluster: published the wills this node's previous run left"
            ),
            Err(e) => tracing::warn!("cluster: cannot read the wills this node's previous run left: {e}"),
        }
        let rx = self.wills_rx.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(rx) = rx {
            let task = tokio::spawn(wills::run(keeper, rx));
            self.tasks.lock().unwrap_or_else(|e| e.into_inner()).push(task);
        }
        // Sessions this node restored from its store that another node took meanwhile go.
        let requests = sessions::subscribe(&self.directory).await?;
        self.directory.reconcile(&admin).await?;
        let task = tokio::spawn(sessions::run(self.directory.clone(), admin.clone(), requests));
        let floors = tokio::spawn(sessions::refresh_floors(self.directory.clone(), admin.clone()));
        let reconnects = tokio::spawn(sessions::after_reconnects(
            self.directory.clone(),
            admin.clone(),
            self.reconnected.clone(),
        ));
        self.tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend([task, floors, reconnects]);
        let sys_interval = admin.config().sys_interval_secs;
        if sys_interval > 0 {
            let task = tokio::spawn(sys::run(
                self.node.clone(),
                self.config.prefix.clone(),
                self.client.clone(),
                admin.clone(),
                Duration::from_secs(sys_interval),
            ));
            self.tasks.lock().unwrap_or_else(|e| e.into_inner()).push(task);
        }
        // One teller for the ordinary subscriptions' and the shared ones' QoS 0 messages: a
        // publisher filling both is watched once.
        let teller = Arc::new(flow::Teller::new(
            &self.config.prefix,
            &self.node,
            self.flow_counters.clone(),
            self.holds.clone(),
        ));
        let shares = Arc::new(shares::Parts {
            prefix: self.config.prefix.clone(),
            shards: self.config.shards,
            ack_wait: Duration::from_millis(self.config.share_ack_wait_ms),
            admin: admin.clone(),
            client: self.share_client.clone(),
            js: self.js.clone(),
            held: Mutex::default(),
            counters: self.inbound_counters.clone(),
            teller: teller.clone(),
            words: self.client.clone(),
        });
        let task = tokio::spawn(shares::follow(shares, self.shares.clone()));
        self.tasks.lock().unwrap_or_else(|e| e.into_inner()).push(task);
        let inbound = Arc::new(inbound::Inbound {
            node: self.node.clone(),
            prefix: self.config.prefix.clone(),
            admin,
            counters: self.inbound_counters.clone(),
            subscribed: self.subscribed.clone(),
            positions: self.positions.clone(),
            teller,
            give_up: self.give_up.clone(),
        });
        let (loaded_tx, loaded) = tokio::sync::oneshot::channel();
        {
            let mut tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
            tasks.push(tokio::spawn(inbound::follow_retained(
                inbound.clone(),
                self.js.clone(),
                Some(loaded_tx),
            )));
            tasks.push(tokio::spawn(flow::watch(
                inbound.teller.clone(),
                self.client.clone(),
            )));
            tasks.push(tokio::spawn(flow::listen(
                self.client.clone(),
                flow::subject(&self.config.prefix, &self.node),
                self.holds.clone(),
                self.flow_counters.clone(),
            )));
            tasks.push(tokio::spawn(inbound::follow_interest(
                inbound.clone(),
                self.client.clone(),
                self.interest.clone(),
            )));
            for (k, last) in self.start_seqs.iter().enumerate() {
                tasks.push(tokio::spawn(inbound::tail(
                    inbound.clone(),
                    self.js.clone(),
                    k as u16,
                    last + 1,
                )));
            }
        }
        let stream = format!("KV_{}", streams::retain_bucket(&self.config.prefix));
        match tokio::time::timeout(RETAINED_LOAD, loaded).await {
            Ok(Ok(())) => Ok(()),
            _ => Err(ClusterError::Stream {
                stream,
                why: format!("the retained messages were not loaded within {RETAINED_LOAD:?}"),
            }),
        }
    }

    /// This node's name.
    pub fn node_name(&self) -> &str {
        &self.node
    }

    /// Whether the NATS servers were seen (or asserted) to fsync before acknowledging.
    pub fn fsync_always(&self) -> bool {
        self.fsync_always
    }

    /// What the node has counted.
    pub fn stats(&self) -> ClusterStats {
        self.counted().stats()
    }

    fn counted(&self) -> Counted {
        Counted {
            outbound: self.outbound.clone(),
            inbound: self.inbound_counters.clone(),
            interest: self.interest.clone(),
            subscribed: self.subscribed.clone(),
            flow: self.flow_counters.clone(),
            wills: self.will_counters.clone(),
            directory: self.directory.clone(),
        }
    }
}

/// Where a node's figures are counted ([`ClusterStats`]).
#[derive(Debug)]
struct Counted {
    outbound: Arc<outbound::Outbound>,
    inbound: Arc<InboundCounters>,
    interest: Arc<inbound::Interest>,
    subscribed: Arc<AtomicU64>,
    flow: Arc<flow::FlowCounters>,
    wills: Arc<wills::WillCounters>,
    directory: Arc<sessions::Directory>,
}

impl Counted {
    fn stats(&self) -> ClusterStats {
        let o = &self.outbound.counters;
        ClusterStats {
            qos0_sent: o.qos0_sent.load(Ordering::Relaxed),
            qos0_dropped: o.qos0_dropped.load(Ordering::Relaxed),
            qos0_packs: o.qos0_packs.load(Ordering::Relaxed),
            qos1_packs: o.qos1_packs.load(Ordering::Relaxed),
            qos1_packs_split: o.qos1_packs_split.load(Ordering::Relaxed),
            qos0_flow_told: self.flow.told.load(Ordering::Relaxed),
            qos0_flow_heard: self.flow.heard.load(Ordering::Relaxed),
            qos0_flow_held: self.flow.held.load(Ordering::Relaxed),
            stored: o.stored.load(Ordering::Relaxed),
            store_retries: o.retries.load(Ordering::Relaxed),
            qos2_refused: o.refused.load(Ordering::Relaxed),
            received: self.inbound.received.load(Ordering::Relaxed),
            undecodable: self.inbound.undecodable.load(Ordering::Relaxed),
            order_holds: self.inbound.order_holds.load(Ordering::Relaxed),
            order_given_up: self.inbound.order_given_up.load(Ordering::Relaxed),
            wanted_subjects: self.interest.len() as u64,
            subscribed_subjects: self.subscribed.load(Ordering::Relaxed),
            wills_published: self.wills.published.load(Ordering::Relaxed),
            wills_cancelled: self.wills.cancelled.load(Ordering::Relaxed),
            wills_closed: self.wills.closed.load(Ordering::Relaxed),
            wills_stored: self.wills.stored.load(Ordering::Relaxed),
            session_writes_failed: self.directory.writes_failed.load(Ordering::Relaxed),
        }
    }
}

impl ClusterStats {
    /// The figures as the metrics endpoint shows them (`tern_cluster_…`).
    pub fn figures(&self) -> Vec<tern_broker::backplane::Figure> {
        use tern_broker::backplane::Figure;
        let c = |name, help, value| Figure {
            name,
            help,
            counter: true,
            value,
        };
        let g = |name, help, value| Figure {
            name,
            help,
            counter: false,
            value,
        };
        vec![
            c(
                "cluster_qos0_sent",
                "QoS 0 messages this node published on core NATS",
                self.qos0_sent,
            ),
            c(
                "cluster_qos0_dropped",
                "QoS 0 messages, and retained QoS 0 writes, dropped on their way to NATS (queue full, or refused)",
                self.qos0_dropped,
            ),
            c(
                "cluster_qos0_packs",
                "NATS messages that carried more than one QoS 0 message",
                self.qos0_packs,
            ),
            c(
                "cluster_qos1_packs",
                "JetStream messages stored that carried more than one QoS 1 message",
                self.qos1_packs,
            ),
            c(
                "cluster_qos1_packs_split",
                "QoS 1 packs a NATS server refused as larger than its max_payload, stored one message at a time instead",
                self.qos1_packs_split,
            ),
            c(
                "cluster_qos0_flow_told",
                "Words saying how far other nodes' QoS 0 publishers may go for this node's subscribers (and this node's own, for shared subscriptions)",
                self.qos0_flow_told,
            ),
            c(
                "cluster_qos0_flow_heard",
                "Limits set on this node's QoS 0 publishers by other nodes, or by this one for shared subscriptions (one per connection named)",
                self.qos0_flow_heard,
            ),
            c(
                "cluster_qos0_flow_held",
                "Times a QoS 0 connection of this node was found held back for subscribers on other nodes (or shared subscriptions' members)",
                self.qos0_flow_held,
            ),
            c(
                "cluster_stored",
                "QoS 1/2 messages and retained writes of this node that JetStream stored",
                self.stored,
            ),
            c(
                "cluster_store_retries",
                "Attempts to store in JetStream that failed and were retried",
                self.store_retries,
            ),
            c(
                "cluster_qos2_refused",
                "QoS 2 messages not stored (not acknowledged): duplicates of another node's placeholder, or of a publisher whose session another node took before its entry listed them",
                self.qos2_refused,
            ),
            c(
                "cluster_received",
                "Messages from other nodes delivered to this node",
                self.received,
            ),
            c(
                "cluster_order_holds",
                "Times a tailer held stored messages back because a node's later message was stored before an earlier one (after a NATS failure), to deliver them in the order they were sent",
                self.order_holds,
            ),
            c(
                "cluster_order_given_up",
                "Holds given up with the earlier message still missing (its node died before storing it, or the hold ran out): the later messages went out first",
                self.order_given_up,
            ),
            c(
                "cluster_undecodable",
                "NATS messages on Tern's subjects that were not Tern messages",
                self.undecodable,
            ),
            c(
                "cluster_wills_published",
                "Wills of other nodes' clients this node published, their node taken for gone",
                self.wills_published,
            ),
            c(
                "cluster_wills_cancelled",
                "Wills of other nodes' clients this node took and did not publish: their node, back, wrote them again within their Will Delay Interval",
                self.wills_cancelled,
            ),
            c(
                "cluster_wills_closed",
                "Connections of this node closed because another node published their wills while this node was out of touch",
                self.wills_closed,
            ),
            c(
                "cluster_wills_stored",
                "Writes of this node's clients' wills JetStream acknowledged (one per CONNECT with a will, more when one is written again)",
                self.wills_stored,
            ),
            c(
                "cluster_session_writes_failed",
                "Writes of a session's entry given up because JetStream did not answer in time (the acknowledgements that waited for them were not sent; the next change writes the entry again)",
                self.session_writes_failed,
            ),
            g(
                "cluster_wanted_subjects",
                "Distinct NATS subjects this node's subscriptions need",
                self.wanted_subjects,
            ),
            g(
                "cluster_subscribed_subjects",
                "NATS subjects this node is subscribed to now",
                self.subscribed_subjects,
            ),
        ]
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for t in self.tasks.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
            t.abort();
        }
    }
}

/// A task aborted when this is dropped: a task that holds others (a follower of shared
/// subscriptions or of NATS subscriptions, the session directory's writers) ends them when it
/// ends or is aborted.
#[derive(Debug)]
pub(crate) struct Aborting(pub tokio::task::JoinHandle<()>);

impl Drop for Aborting {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What a node has counted since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClusterStats {
    /// QoS 0 messages published on core NATS.
    pub qos0_sent: u64,
    /// QoS 0 messages dropped because the queue to NATS was full or NATS refused them.
    pub qos0_dropped: u64,
    /// NATS messages that carried more than one QoS 0 message (`cluster.qos0_pack`).
    pub qos0_packs: u64,
    /// JetStream messages stored that carried more than one QoS 1 message
    /// (`cluster.qos1_pack`).
    pub qos1_packs: u64,
    /// QoS 1 packs a NATS server refused as larger than its `max_payload` (one with a smaller
    /// setting than the server the pack was made for), stored one message at a time instead.
    pub qos1_packs_split: u64,
    /// Words saying how far other nodes' QoS 0 publishers may go for this node's
    /// subscribers (flow control), and this node's own for members of shared subscriptions
    /// here.
    pub qos0_flow_told: u64,
    /// Limits set on this node's QoS 0 publishers by other nodes, or by this one for shared
    /// subscriptions (each connection named counted).
    pub qos0_flow_heard: u64,
    /// Times a QoS 0 connection of this node was found held back for subscribers on other
    /// nodes or members of shared subscriptions (after a QoS 0 message, and at each look
    /// while it waits).
    pub qos0_flow_held: u64,
    /// QoS 1/2 messages JetStream acknowledged.
    pub stored: u64,
    /// Attempts to store a message that failed and were retried.
    pub store_retries: u64,
    /// QoS 2 messages of this node's clients not stored: JetStream refused them as
    /// duplicates of a placeholder (another node had recovered the publisher's session and
    /// found them not stored: this node was taken for dead), or another node took the
    /// publisher's session before its entry could list them. Not acknowledged; their
    /// resends are new.
    pub qos2_refused: u64,
    /// Messages from other nodes delivered to this node.
    pub received: u64,
    /// NATS messages on Tern's subjects that were not Tern messages.
    pub undecodable: u64,
    /// Distinct NATS subjects the local filters need.
    pub wanted_subjects: u64,
    /// Of those, the ones subscribed on NATS now.
    pub subscribed_subjects: u64,
    /// Wills of other nodes' clients this node published (their node taken for gone).
    pub wills_published: u64,
    /// Wills this node took from a node taken for gone and did not publish: that node, back,
    /// wrote them again within their Will Delay Interval (their clients were connected).
    pub wills_cancelled: u64,
    /// Connections of this node closed (v5 DISCONNECT 0x89) because another node published
    /// their wills while this node was out of touch with NATS.
    pub wills_closed: u64,
    /// Writes of this node's clients' wills JetStream acknowledged: one per CONNECT with a
    /// will, more when one is written again (docs/cluster.md, "Wills when a node dies").
    pub wills_stored: u64,
    /// Times a tailer held stored messages back because a node's later message was stored
    /// before an earlier one, to deliver them in the order they were sent (docs/cluster.md).
    pub order_holds: u64,
    /// Holds given up with the earlier message still missing: the later ones went out first.
    pub order_given_up: u64,
    /// Writes of a session's entry given up because JetStream did not answer in time (a
    /// SUBACK or QoS 2 packet that waited for one was not sent, its connection closed with
    /// 0x89; the next change writes the entry again).
    pub session_writes_failed: u64,
}

/// The [`Backplane`] of a node: hands its clients' messages to NATS and follows its
/// sessions' filters.
#[derive(Debug)]
struct NodeBackplane {
    outbound: Arc<outbound::Outbound>,
    interest: Arc<inbound::Interest>,
    shares: Arc<shares::Shares>,
    prefix: String,
    wills: tokio::sync::mpsc::Sender<wills::WillOp>,
    directory: Arc<sessions::Directory>,
    holds: Arc<flow::Holds>,
    /// The node's figures, for the metrics endpoint.
    counted: Counted,
}

impl NodeBackplane {
    /// Hand a client's message to NATS (`sent`: a QoS 0 message's number, for flow control).
    fn hand_over(&self, message: &Arc<Message>, sent: Option<tern_broker::backplane::Sent>) {
        // `$SYS` is per node.
        if !message.topic.starts_with("$SYS/") {
            self.outbound.publish_counted(message, sent);
        }
    }

    fn to_keeper(&self, op: wills::WillOp) {
        if let Err(e) = self.wills.try_send(op) {
            tracing::warn!("cluster wills: the keeper is behind; a will change is dropped: {e}");
        }
    }
}

impl Backplane for NodeBackplane {
    fn figures(&self) -> Vec<tern_broker::backplane::Figure> {
        self.counted.stats().figures()
    }

    fn published(&self, message: &Arc<Message>) {
        self.hand_over(message, None);
    }

    fn published_qos0(&self, message: &Arc<Message>, sent: tern_broker::backplane::Sent) {
        self.hand_over(message, Some(sent));
    }

    fn published_qos0_all(&self, batch: &mut Vec<(Arc<Message>, tern_broker::backplane::Sent)>) {
        // `$SYS` is per node.
        batch.retain(|(m, _)| !m.topic.starts_with("$SYS/"));
        self.outbound.publish_qos0_all(batch);
    }

    fn holds_back(&self, sent: tern_broker::backplane::Sent) -> bool {
        self.holds.holds_back(sent)
    }

    fn holds_from(&self, conn_id: u64) -> u64 {
        self.holds.holds_from(conn_id)
    }

    fn holds_epoch(&self) -> u64 {
        self.holds.epoch()
    }

    fn retained_deleted(&self, topic: &str) {
        if !topic.starts_with("$SYS/") {
            self.outbound.delete_retained(topic);
        }
    }

    fn subscribed(&self, filter: &str) {
        if filter.starts_with("$share/") {
            self.shares.add(filter);
        } else {
            self.interest.add(&self.prefix, filter);
        }
    }

    fn unsubscribed(&self, filter: &str) {
        if filter.starts_with("$share/") {
            self.shares.remove(filter);
        } else {
            self.interest.remove(&self.prefix, filter);
        }
    }

    fn delivers_shared(&self) -> bool {
        true
    }

    fn progress(&self) -> Option<&Progress> {
        Some(&self.outbound.progress)
    }

    fn submitted(&self) -> Ticket {
        self.outbound.submitted()
    }

    fn ack_timeout(&self) -> Duration {
        self.outbound.ack_timeout
    }

    fn congested(&self) -> bool {
        self.outbound.congested()
    }

    fn will_armed(&self, client_id: &str, conn_id: u64, will: &Arc<Message>, delay_secs: u32) {
        self.to_keeper(wills::WillOp::Arm {
            client: client_id.into(),
            conn: conn_id,
            will: will.clone(),
            delay: delay_secs,
        });
    }

    fn will_disarmed(&self, client_id: &str, conn_id: u64) {
        self.to_keeper(wills::WillOp::Disarm {
            client: client_id.into(),
            conn: conn_id,
        });
    }

    fn claim(&self, client_id: &str, clean_start: bool) -> Option<tern_broker::backplane::Claim> {
        let directory = self.directory.clone();
        let client: Arc<str> = client_id.into();
        Some(Box::pin(
            async move { directory.claim(client, clean_start).await },
        ))
    }

    fn claimed(&self, client_id: &str) -> Option<tern_broker::backplane::Claim> {
        Some(self.directory.claimed(client_id.into()))
    }

    fn session_ended(&self, client_id: &str) {
        self.directory.ended(client_id);
    }

    fn session_saved(
        &self,
        client_id: &str,
        snapshot: &tern_broker::durability::SessionSnapshot,
        offline: bool,
        held: tern_broker::backplane::Held,
        awaited: bool,
    ) -> Option<Ticket> {
        self.directory.saved(client_id, snapshot, offline, held, awaited)
    }

    fn sessions_progress(&self) -> Option<&Progress> {
        Some(&self.directory.written.progress)
    }

    fn session_done(&self, ticket: Ticket) -> bool {
        self.directory.written.is_released(ticket)
    }

    fn session_kept(&self, ticket: Ticket) -> bool {
        self.directory.kept(ticket)
    }

    fn keeps_qos2(&self) -> bool {
        true
    }

    fn session_attached(&self, client_id: &str) -> Option<Ticket> {
        self.directory.q2_write(client_id)
    }

    fn qos2_stage(
        &self,
        client_id: &str,
        packet_id: u16,
        released: bool,
        message: &Arc<Message>,
    ) -> Option<Ticket> {
        Some(self.directory.q2_stage(client_id, packet_id, released, message))
    }

    fn qos2_done(&self, client_id: &str, packet_id: u16) {
        self.directory.q2_done(client_id, packet_id);
    }

    fn qos2_resumed(&self, client_id: &str, in_flight: &[(u16, bool, Arc<Message>)], incoming: &[u16]) {
        self.directory.q2_resumed(client_id, in_flight, incoming);
    }

    fn qos2_received(
        &self,
        client_id: &str,
        packet_id: u16,
    ) -> Option<(Arc<tern_broker::BackplaneMark>, Ticket)> {
        Some(self.directory.q2_received(client_id, packet_id))
    }

    fn qos2_released(&self, client_id: &str, packet_id: u16) -> Option<Ticket> {
        Some(self.directory.q2_released(client_id, packet_id))
    }
}
