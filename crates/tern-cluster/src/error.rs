//! Why a node cannot join the cluster.

/// Why cluster mode cannot start; each message names the setting to look at.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterError {
    /// The `[cluster]` values are inconsistent.
    #[error("cluster configuration: {0}")]
    Config(String),
    /// No NATS server of `cluster.nats` answered.
    #[error("cannot connect to NATS ({urls}): {source}")]
    Connect {
        /// The URLs tried.
        urls: String,
        /// The client's error.
        #[source]
        source: async_nats::ConnectError,
    },
    /// A NATS server is too old for what Tern needs.
    #[error("NATS server {server} runs {version}; Tern cluster mode needs 2.11 or later")]
    Version {
        /// Server (URL or name).
        server: String,
        /// Its version.
        version: String,
    },
    /// JetStream does not fsync before acknowledging.
    #[error(
        "{0}: JetStream must run with `jetstream {{ sync_interval: always }}` on every NATS server, \
         or acknowledged messages can be lost when servers lose power together; set \
         `cluster.unsafe_lazy_fsync = true` to start anyway"
    )]
    LazyFsync(String),
    /// Nothing tells Tern how JetStream syncs.
    #[error(
        "cannot check the NATS servers' fsync setting: give their monitoring endpoints in \
         `cluster.monitor`, or assert `cluster.nats_sync_always = true` (every server runs \
         `jetstream {{ sync_interval: always }}`), or set `cluster.unsafe_lazy_fsync = true`"
    )]
    FsyncUnknown,
    /// A monitoring endpoint did not answer as NATS does.
    #[error("monitoring endpoint {url} (cluster.monitor): {why}")]
    Monitor {
        /// The endpoint.
        url: String,
        /// What went wrong.
        why: String,
    },
    /// A core NATS subscription the node needs could not be made.
    #[error("cannot subscribe to NATS subject {subject}: {why}")]
    Subscribe {
        /// The subject.
        subject: String,
        /// What NATS said.
        why: String,
    },
    /// JetStream did not answer about a stream (no leader yet, no quorum); retried at start
    /// for a while before it is returned.
    #[error("JetStream stream {stream} is not available: {why}")]
    Unavailable {
        /// The stream's name.
        stream: String,
        /// What went wrong.
        why: String,
    },
    /// A session this node restored from its store could not be reconciled with the cluster
    /// at start: the node does not serve it without what was stored for it meanwhile.
    #[error(
        "stored session {client_id:?}: {why}; not starting: start the node again once JetStream answers"
    )]
    StoredSession {
        /// The session's client identifier.
        client_id: String,
        /// What could not be read.
        why: String,
    },
    /// A stream exists with other settings.
    #[error("JetStream stream {stream}: {why}")]
    Stream {
        /// The stream's name.
        stream: String,
        /// What went wrong.
        why: String,
    },
}
