//! The `[cluster]` table: the NATS servers a `tern broker` node shares its state through, and
//! how. The broker library only carries it; the `tern-cluster` crate acts on it (see
//! docs/cluster.md). Absent, the broker is a single node.
//!
//! ```toml
//! [cluster]
//! nats = ["nats://10.0.0.1:4222", "nats://10.0.0.2:4222", "nats://10.0.0.3:4222"]
//! monitor = ["http://10.0.0.1:8222", "http://10.0.0.2:8222", "http://10.0.0.3:8222"]
//! node_name = "tern-a"
//! shards = 3
//! session_buckets = 1          # key-value buckets the session entries are spread over (fixed once used)
//! replicas = 3
//! publish_timeout_ms = 10000
//! qos0_pack = 64               # QoS 0 messages in one NATS message, at most (1: each alone)
//! qos1_pack = 32               # QoS 1 messages in one stored JetStream message, at most
//! # nats_sync_always = true     # assert the fsync setting when there is no monitor URL
//! # unsafe_lazy_fsync = false
//! # user = "tern"                # NATS credentials: user and password (or password_file), token,
//! # password_file = "/etc/tern/nats.password"
//! # nkey_file = "/etc/tern/tern.nk"        # an NKey seed, or
//! # credentials_file = "/etc/tern/tern.creds"  # a user JWT and its seed (NATS' .creds file)
//! # ca_file = "/etc/tern/nats-ca.pem"      # TLS to NATS (also with tls:// URLs)
//! # cert_file = "/etc/tern/tern-a.pem"     # client certificate, when NATS verifies clients
//! # key_file = "/etc/tern/tern-a.key"
//! ```

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Cluster settings (see the module documentation).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct ClusterConfig {
    /// NATS server URLs (`nats://HOST:PORT`); at least one.
    pub nats: Vec<String>,
    /// The NATS servers' monitoring endpoints (`http://HOST:PORT`): read at start to check
    /// the version and that JetStream fsyncs before acknowledging (`sync_interval: always`).
    pub monitor: Vec<String>,
    /// This node's name, unique in the cluster (default: the host name).
    pub node_name: String,
    /// Prefix of every subject, stream and bucket name (default `"tern"`): two Tern clusters
    /// can share one NATS account.
    pub prefix: String,
    /// Streams the QoS 1/2 messages are spread over, by publisher (default 3). Fixed once the
    /// cluster has run: a node refuses to start if the streams on NATS say otherwise.
    pub shards: u16,
    /// Key-value buckets the session entries are spread over, by client id (default 1, at
    /// most 64). Each bucket is one Raft group with its own leader: more buckets spread a
    /// reconnect storm's entry writes over more NATS servers. Fixed once the cluster has run:
    /// a node refuses to start if the buckets on NATS say otherwise.
    pub session_buckets: u16,
    /// Copies JetStream keeps of each stream (default 3; 1 for a single NATS server).
    pub replicas: u16,
    /// Milliseconds a QoS 1/2 PUBLISH may wait for JetStream's acknowledgement before its
    /// publisher is disconnected (default 10,000; 5.0: DISCONNECT 0x89 Server busy).
    pub publish_timeout_ms: u64,
    /// QoS 1/2 messages handed to JetStream and not yet acknowledged, at most (default 4,096);
    /// beyond it publishers wait.
    pub max_ack_inflight: usize,
    /// Seconds a stored QoS 1/2 message is kept in its stream (default 86,400).
    pub retention_secs: u64,
    /// QoS 0 messages that may travel as one NATS message, at most (default 64, at most
    /// 1,024): those waiting together to be handed to NATS from one publisher to one topic,
    /// without properties. 1 sends each alone: for NATS applications that read Tern's QoS 0
    /// traffic, and on the upgraded nodes while nodes of a Tern without packs remain (they
    /// would take a pack for one message).
    pub qos0_pack: usize,
    /// QoS 1 messages that may be stored as one JetStream message, at most (default 32, at
    /// most 1,024): those of one publisher to one topic, without properties, expiry or
    /// RETAIN, waiting together to be stored. JetStream's cost is per stored message, so
    /// packs raise how many QoS 1 messages a cluster stores per second. A pack's messages
    /// share one place in the stream: a session recovered elsewhere may get again those of
    /// a pack it had partly acknowledged (duplicates, as QoS 1 allows). 1 stores each alone:
    /// for NATS applications that read Tern's streams, and on the upgraded nodes while nodes
    /// of a Tern without QoS 1 packs remain (they would take a pack for one message).
    pub qos1_pack: usize,
    /// The operator asserts that every NATS server runs `jetstream { sync_interval: always }`
    /// (needed when `monitor` is empty: a NATS client cannot read that setting).
    pub nats_sync_always: bool,
    /// Start even if JetStream does not fsync before acknowledging: an acknowledged message
    /// can then be lost when NATS servers lose power together (default false).
    pub unsafe_lazy_fsync: bool,
    /// Milliseconds without news of a node after which it is taken for gone and another node
    /// publishes the wills of its clients (default 10,000); each node says it is alive every
    /// fifth of it, and pings its NATS server as often (1 s to 60 s).
    pub node_timeout_ms: u64,
    /// Milliseconds after which a message of a shared subscription whose member's node died
    /// (or lost NATS) is offered to another member (default 30,000). While the member holds
    /// it, its node says so to JetStream every third of this time.
    pub share_ack_wait_ms: u64,
    /// User name on the NATS servers (with `password` or `password_file`).
    pub user: Option<String>,
    /// Its password.
    #[serde(serialize_with = "masked")]
    pub password: Option<String>,
    /// A file whose first line is the password (instead of `password`).
    #[serde(serialize_with = "masked")]
    pub password_file: Option<PathBuf>,
    /// A NATS authentication token (instead of a user name).
    #[serde(serialize_with = "masked")]
    pub token: Option<String>,
    /// A file holding an NKey seed (`SU...`, the first line that is not a comment): the node
    /// signs NATS' challenge with it (instead of a user name or token).
    #[serde(serialize_with = "masked")]
    pub nkey_file: Option<PathBuf>,
    /// A NATS credentials file (`.creds`: a user JWT and its NKey seed, as `nsc` writes
    /// them), for NATS servers in operator mode.
    #[serde(serialize_with = "masked")]
    pub credentials_file: Option<PathBuf>,
    /// Use TLS to NATS (also implied by `ca_file`, `cert_file` and `tls://` URLs).
    pub tls: bool,
    /// PEM CA certificates the NATS servers' certificates must chain to (default: the
    /// system's).
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate chain, for NATS servers that verify their clients (`verify`).
    pub cert_file: Option<PathBuf>,
    /// Its private key.
    #[serde(serialize_with = "masked")]
    pub key_file: Option<PathBuf>,
}

/// Secrets and paths to them are written as `***` (the admin API shows the configuration).
fn masked<T, S: serde::Serializer>(value: &Option<T>, s: S) -> Result<S::Ok, S::Error> {
    match value {
        Some(_) => s.serialize_some("***"),
        None => s.serialize_none(),
    }
}

impl Default for ClusterConfig {
    fn default() -> ClusterConfig {
        ClusterConfig {
            nats: Vec::new(),
            monitor: Vec::new(),
            node_name: String::new(),
            prefix: "tern".into(),
            shards: 3,
            session_buckets: 1,
            replicas: 3,
            publish_timeout_ms: 10_000,
            max_ack_inflight: 4096,
            retention_secs: 86_400,
            qos0_pack: 64,
            qos1_pack: 32,
            nats_sync_always: false,
            unsafe_lazy_fsync: false,
            node_timeout_ms: 10_000,
            share_ack_wait_ms: 30_000,
            user: None,
            password: None,
            password_file: None,
            token: None,
            nkey_file: None,
            credentials_file: None,
            tls: false,
            ca_file: None,
            cert_file: None,
            key_file: None,
        }
    }
}

impl ClusterConfig {
    /// Check the values on their own (the NATS side is checked by `tern-cluster` at start;
    /// `nats` may still come from `tern broker --cluster`).
    pub fn validate(&self) -> Result<(), String> {
        if self.shards == 0 || self.shards > 64 {
            return Err(format!("cluster.shards = {}: must be 1 to 64", self.shards));
        }
        if self.session_buckets == 0 || self.session_buckets > 64 {
            return Err(format!(
                "cluster.session_buckets = {}: must be 1 to 64",
                self.session_buckets
            ));
        }
        if self.replicas == 0 || self.replicas > 5 {
            return Err(format!(
                "cluster.replicas = {}: must be 1 to 5 (JetStream's limit)",
                self.replicas
            ));
        }
        if self.publish_timeout_ms == 0 {
            return Err("cluster.publish_timeout_ms must be above 0".into());
        }
        if self.max_ack_inflight == 0 {
            return Err("cluster.max_ack_inflight must be above 0".into());
        }
        if self.qos0_pack == 0 || self.qos0_pack > 1024 {
            return Err(format!(
                "cluster.qos0_pack = {}: must be 1 to 1024",
                self.qos0_pack
            ));
        }
        if self.qos1_pack == 0 || self.qos1_pack > 1024 {
            return Err(format!(
                "cluster.qos1_pack = {}: must be 1 to 1024",
                self.qos1_pack
            ));
        }
        if self.node_timeout_ms < 500 {
            return Err(format!(
                "cluster.node_timeout_ms = {}: at least 500",
                self.node_timeout_ms
            ));
        }
        if self.share_ack_wait_ms < 500 {
            return Err(format!(
                "cluster.share_ack_wait_ms = {}: at least 500",
                self.share_ack_wait_ms
            ));
        }
        let has_password = self.password.is_some() || self.password_file.is_some();
        if self.password.is_some() && self.password_file.is_some() {
            return Err("cluster.password and cluster.password_file: give one".into());
        }
        if self.user.is_some() != has_password {
            return Err("cluster.user and cluster.password (or password_file) go together".into());
        }
        let ways = [
            self.user.is_some(),
            self.token.is_some(),
            self.nkey_file.is_some(),
            self.credentials_file.is_some(),
        ];
        if ways.iter().filter(|w| **w).count() > 1 {
            return Err(
                "cluster.user, cluster.token, cluster.nkey_file and cluster.credentials_file: give one way to authenticate"
                    .into(),
            );
        }
        if self.cert_file.is_some() != self.key_file.is_some() {
            return Err("cluster.cert_file and cluster.key_file go together".into());
        }
        let token = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        if !token(&self.prefix) {
            return Err(format!(
                "cluster.prefix = {:?}: letters, digits, '-' and '_' only",
                self.prefix
            ));
        }
        if !self.node_name.is_empty() && !token(&self.node_name) {
            return Err(format!(
                "cluster.node_name = {:?}: letters, digits, '-' and '_' only",
                self.node_name
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::Config;

    #[test]
    fn the_cluster_table_is_read_with_defaults_and_checked() {
        let c = Config::from_toml(
            "[cluster]\nnats = [\"nats://10.0.0.1:4222\"]\nnode_name = \"tern-a\"\nshards = 4\nunsafe_lazy_fsync = true\n",
        )
        .expect("valid");
        let cluster = c.cluster.expect("[cluster]");
        assert_eq!(cluster.nats, vec!["nats://10.0.0.1:4222".to_string()]);
        assert_eq!(
            (cluster.node_name.as_str(), cluster.shards, cluster.replicas),
            ("tern-a", 4, 3)
        );
        assert_eq!(
            (cluster.publish_timeout_ms, cluster.prefix.as_str()),
            (10_000, "tern")
        );
        assert!(cluster.unsafe_lazy_fsync && !cluster.nats_sync_always);
        assert_eq!((cluster.qos0_pack, cluster.qos1_pack), (64, 32));
        assert_eq!(cluster.session_buckets, 1);
        assert!(
            Config::from_toml("").expect("empty").cluster.is_none(),
            "no table: one node"
        );

        for (bad, names) in [
            ("[cluster]\nshards = 0\n", "cluster.shards"),
            ("[cluster]\nsession_buckets = 0\n", "cluster.session_buckets"),
            ("[cluster]\nsession_buckets = 65\n", "cluster.session_buckets"),
            ("[cluster]\nreplicas = 7\n", "cluster.replicas"),
            ("[cluster]\nnode_name = \"a.b\"\n", "cluster.node_name"),
            ("[cluster]\nprefix = \"\"\n", "cluster.prefix"),
            ("[cluster]\nnatz = []\n", "natz"),
            ("[cluster]\nuser = \"tern\"\n", "cluster.password"),
            ("[cluster]\npassword = \"x\"\n", "cluster.user"),
            (
                "[cluster]\nuser = \"t\"\npassword = \"x\"\ntoken = \"y\"\n",
                "cluster.token",
            ),
            ("[cluster]\ncert_file = \"c.pem\"\n", "cluster.key_file"),
            (
                "[cluster]\ntoken = \"y\"\nnkey_file = \"t.nk\"\n",
                "cluster.nkey_file",
            ),
            (
                "[cluster]\nnkey_file = \"t.nk\"\ncredentials_file = \"t.creds\"\n",
                "cluster.credentials_file",
            ),
            ("[cluster]\nshare_ack_wait_ms = 10\n", "cluster.share_ack_wait_ms"),
            ("[cluster]\nqos0_pack = 0\n", "cluster.qos0_pack"),
            ("[cluster]\nqos0_pack = 1025\n", "cluster.qos0_pack"),
            ("[cluster]\nqos1_pack = 0\n", "cluster.qos1_pack"),
            ("[cluster]\nqos1_pack = 1025\n", "cluster.qos1_pack"),
        ] {
            let err = Config::from_toml(bad).expect_err(bad).to_string();
            assert!(err.contains(names), "{bad}: {err}");
        }
    }

    #[test]
    fn the_docker_compose_example_is_a_valid_configuration() {
        let text = include_str!("../../../deploy/cluster.toml");
        let c = Config::from_toml(text).expect("deploy/cluster.toml is valid");
        let cluster = c.cluster.expect("[cluster]");
        assert_eq!(cluster.nats.len(), 3);
        assert_eq!(cluster.monitor.len(), 3);
        assert!(cluster.validate().is_ok());
    }
}
