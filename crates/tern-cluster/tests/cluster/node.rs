//! A Tern node in-process: a broker on a free port whose backplane is a cluster node.

use tern_broker::{BrokerBuilder, BrokerHandle, ClusterConfig};
use tern_cluster::Cluster;

use tern_testkit::nats::Nats;

/// A running node.
pub struct Node {
    pub broker: BrokerHandle,
    pub cluster: Cluster,
}

impl Node {
    /// The node's MQTT address.
    pub fn addr(&self) -> std::net::SocketAddr {
        self.broker.addr()
    }
}

/// The `[cluster]` table for a node named `name` on `nats`.
pub fn config(nats: &Nats, name: &str) -> ClusterConfig {
    let mut c = ClusterConfig::default();
    c.nats = nats.urls();
    c.monitor = nats.monitors();
    c.node_name = name.to_string();
    c.replicas = nats.urls().len().min(3) as u16;
    c.shards = 2;
    // Long enough for a JetStream acknowledgement when every test of the file runs at once,
    // each with NATS servers fsyncing, on two cores (5 s was not: a publisher was closed with
    // 0x89 now and then); the no-quorum test sets its own.
    c.publish_timeout_ms = 20_000;
    c
}

/// Start a node with `config`.
pub async fn start(config: &ClusterConfig) -> Node {
    start_configured(config, |_| {}).await
}

/// The broker of a node whose cluster part is `cluster` (started, not attached yet), with
/// its state in `store`, restored from what `store` kept; attached, it is a running node.
pub async fn start_stored(
    cluster: Cluster,
    store: &std::sync::Arc<tern_broker::durability::InMemory>,
) -> Result<Node, tern_cluster::ClusterError> {
    let builder = broker_of(&cluster, |_| {}).durability(store.clone(), store.restart());
    attach(cluster, builder).await
}

/// Start a node with `config` whose broker keeps its state in `store`, restored from what
/// `store` kept (a restart after [`InMemory::crash`](tern_broker::durability::InMemory::crash)).
pub async fn start_on_store(
    config: &ClusterConfig,
    store: &std::sync::Arc<tern_broker::durability::InMemory>,
) -> Result<Node, tern_cluster::ClusterError> {
    let cluster = Cluster::start(config).await.expect("cluster start");
    start_stored(cluster, store).await
}

/// Start a node with `config`, its broker's settings changed by `f`.
pub async fn start_configured(config: &ClusterConfig, f: impl FnOnce(&mut tern_broker::Config)) -> Node {
    // RUST_LOG=tern_cluster=debug shows what the nodes do.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let cluster = Cluster::start(config).await.expect("cluster start");
    let builder = broker_of(&cluster, f);
    attach(cluster, builder).await.expect("attach")
}

/// A broker on a free port whose backplane is `cluster`, state in memory unless the caller
/// gives it a store, its settings changed by `f`.
fn broker_of(cluster: &Cluster, f: impl FnOnce(&mut tern_broker::Config)) -> BrokerBuilder {
    let max = cluster.max_packet_size();
    BrokerBuilder::new()
        .listen("127.0.0.1:0".parse().expect("addr"))
        .configure(|c| {
            c.data_dir = None;
            c.max_packet_size = c.max_packet_size.min(max);
            f(c);
        })
        .backplane(cluster.backplane())
}

/// Bind the broker of `builder` and attach `cluster` to it: a running node.
async fn attach(cluster: Cluster, builder: BrokerBuilder) -> Result<Node, tern_cluster::ClusterError> {
    let broker = builder.bind().await.expect("bind");
    cluster.attach(broker.admin()).await?;
    Ok(Node {
        broker: broker.spawn(),
        cluster,
    })
}
