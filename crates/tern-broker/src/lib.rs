//! # tern-broker
//!
//! The Tern MQTT broker as a library: MQTT 3.1, 3.1.1 and 5.0 over TCP, with
//! retained messages, wills, persistent sessions, shared subscriptions and the
//! 5.0 flow-control features.
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
//! - `shared.rs`: publish, retain, subscribe and end-of-session across those.

mod config;
mod connection;
mod error;
mod message;
mod router;
mod session;
mod shared;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;

pub use config::Config;
pub use error::BrokerError;

/// Builds a broker from defaults plus changes.
#[derive(Debug, Clone, Default)]
pub struct BrokerBuilder {
    config: Config,
    listen_set: bool,
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

    /// Validate the configuration and bind every listener.
    pub async fn bind(self) -> Result<Broker, BrokerError> {
        Broker::bind(self.config).await
    }
}

/// A broker whose listeners are bound.
#[derive(Debug)]
pub struct Broker {
    shared: Arc<shared::Shared>,
    listeners: Vec<TcpListener>,
}

impl Broker {
    /// Validate `config` and bind its listeners.
    pub async fn bind(config: Config) -> Result<Broker, BrokerError> {
        config.validate()?;
        let mut listeners = Vec::new();
        for addr in &config.listen {
            let l = TcpListener::bind(addr)
                .await
                .map_err(|source| BrokerError::Bind { addr: *addr, source })?;
            listeners.push(l);
        }
        Ok(Broker {
            shared: Arc::new(shared::Shared::new(config)),
            listeners,
        })
    }

    /// The addresses actually bound (useful with port 0).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect()
    }

    /// Serve until the task is dropped.
    pub async fn run(self) {
        let limit = Arc::new(Semaphore::new(self.shared.config.max_connections));
        let mut tasks = tokio::task::JoinSet::new();
        for l in self.listeners {
            tracing::info!(addr = ?l.local_addr().ok(), "listening (mqtt over tcp)");
            tasks.spawn(accept_loop(l, self.shared.clone(), limit.clone()));
        }
        while tasks.join_next().await.is_some() {}
    }

    /// Serve on the current tokio runtime in the background; the handle stops it when dropped.
    pub fn spawn(self) -> BrokerHandle {
        let addrs = self.local_addrs();
        let task = tokio::spawn(self.run());
        BrokerHandle { addrs, task }
    }
}

/// A running broker; dropping it stops the listeners.
#[derive(Debug)]
pub struct BrokerHandle {
    addrs: Vec<SocketAddr>,
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
}

impl Drop for BrokerHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<shared::Shared>, limit: Arc<Semaphore>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // Usually EMFILE: back off instead of spinning.
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "connection refused: max_connections reached");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        tokio::spawn(async move {
            shared
                .counters
                .connections
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            connection::serve(stream, peer, shared).await;
            drop(permit);
        });
    }
}
