//! Errors of starting and running the broker.

/// Why the broker could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BrokerError {
    /// The configuration is not usable; the message names the field and the fix.
    #[error("configuration error: {0}")]
    Config(String),
    /// The data directory cannot be opened or read back.
    #[error("{0}")]
    Store(String),
    /// A listener could not bind its address.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// The operating system's reason.
        source: std::io::Error,
    },
}
