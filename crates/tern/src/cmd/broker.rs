//! `tern broker`: run the broker with embedded defaults, a TOML file, or flags.

use std::net::SocketAddr;
use std::path::PathBuf;

use tern_broker::{Broker, BrokerError, Config, ListenerConfig, ListenerKind};

/// A `--listen` value: `ADDR:PORT` (plain TCP) or `mqtt://`, `mqtts://`, `ws://`,
/// `wss://` followed by `ADDR:PORT` and, for WebSocket, an optional path.
#[derive(Debug, Clone)]
struct Listen {
    kind: ListenerKind,
    addr: SocketAddr,
    path: Option<String>,
}

fn parse_listen(s: &str) -> Result<Listen, String> {
    let (kind, rest) = match s.split_once("://") {
        None => (ListenerKind::Tcp, s),
        Some(("mqtt" | "tcp", r)) => (ListenerKind::Tcp, r),
        Some(("mqtts" | "tls" | "ssl", r)) => (ListenerKind::Tls, r),
        Some(("ws", r)) => (ListenerKind::Ws, r),
        Some(("wss", r)) => (ListenerKind::Wss, r),
        Some((other, _)) => return Err(format!("unknown scheme `{other}`; use mqtt, mqtts, ws or wss")),
    };
    let (addr, path) = match rest.find('/') {
        Some(i) if kind == ListenerKind::Ws || kind == ListenerKind::Wss => {
            (&rest[..i], Some(rest[i..].to_string()))
        }
        Some(_) => return Err("only ws:// and wss:// listeners take a path".into()),
        None => (rest, None),
    };
    let addr = addr
        .parse::<SocketAddr>()
        .map_err(|_| format!("`{addr}` is not ADDR:PORT, e.g. 0.0.0.0:8883 or [::]:8883"))?;
    Ok(Listen { kind, addr, path })
}

/// Options of `tern broker`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Listener (repeatable): ADDR:PORT for MQTT over TCP, or mqtts://ADDR:PORT (TLS),
    /// ws://ADDR:PORT[/PATH] or wss://ADDR:PORT[/PATH] (WebSocket, path /mqtt by default).
    /// Replaces the config file's `listen` and `[[listener]]` tables.
    #[arg(long, value_name = "[SCHEME://]ADDR:PORT", value_parser = parse_listen)]
    listen: Vec<Listen>,
    /// PEM certificate chain for the mqtts:// and wss:// listeners of --listen.
    #[arg(long, value_name = "FILE")]
    cert: Option<PathBuf>,
    /// PEM private key for the mqtts:// and wss:// listeners of --listen.
    #[arg(long, value_name = "FILE")]
    key: Option<PathBuf>,
    /// PEM CA certificates: mqtts:// and wss:// listeners of --listen require client certificates signed by them.
    #[arg(long = "client-ca", value_name = "FILE")]
    client_ca: Option<PathBuf>,
    /// Take the user name from the client certificate's CN (needs --client-ca).
    #[arg(long = "use-identity-as-username", requires = "client_ca")]
    use_identity_as_username: bool,
    /// Password file written by `tern passwd` (replaces the config file's `password_file`).
    #[arg(long = "password-file", value_name = "FILE")]
    password_file: Option<PathBuf>,
    /// ACL file (replaces the config file's `acl_file`).
    #[arg(long = "acl-file", value_name = "FILE")]
    acl_file: Option<PathBuf>,
    /// Refuse clients without credentials on every listener (sets `allow_anonymous = false`).
    #[arg(long = "no-anonymous")]
    no_anonymous: bool,
    /// TOML configuration file; keys are those of tern_broker::Config, missing keys take defaults.
    #[arg(long, short, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Directory of the durable store (default: the config file's `data_dir`, else ./tern-data).
    #[arg(long, value_name = "DIR", conflicts_with = "in_memory")]
    data_dir: Option<PathBuf>,
    /// Keep all state in memory: nothing survives a restart.
    #[arg(long)]
    in_memory: bool,
    /// Serve metrics, the admin API and the dashboard on ADDR:PORT (default 127.0.0.1:18083;
    /// replaces the config file's `http`). A non-loopback address needs `http.admins` or
    /// `http.tokens_file`.
    #[arg(long, value_name = "ADDR:PORT", conflicts_with = "no_http")]
    http: Option<SocketAddr>,
    /// No HTTP endpoint (same as `http = ""`).
    #[arg(long = "no-http")]
    no_http: bool,
    /// Cluster mode: the NATS servers (JetStream, 2.11 or later) this node shares its state
    /// through, comma-separated `nats://HOST:PORT` (replaces the config file's `cluster.nats`;
    /// see docs/cluster.md).
    #[arg(long, value_name = "URLS", value_delimiter = ',')]
    cluster: Vec<String>,
    /// This node's name in the cluster, unique (replaces `cluster.node_name`; default: the
    /// host name).
    #[arg(long = "node-name", value_name = "NAME")]
    node_name: Option<String>,
}

impl Args {
    /// The configuration file given with `--config`, read again on SIGHUP for `[auth]`.
    pub fn config_file(&self) -> Option<PathBuf> {
        self.config.clone()
    }
}

/// The configuration `args` describe: the config file (or the embedded defaults) with the
/// flags applied.
pub fn config(args: Args) -> Result<Config, BrokerError> {
    let mut config = match &args.config {
        Some(path) => Config::from_file(path)?,
        None => Config::default(),
    };
    if !args.listen.is_empty() {
        config.listen.clear();
        config.listeners.clear();
        for l in &args.listen {
            if l.kind == ListenerKind::Tcp {
                config.listen.push(l.addr);
                continue;
            }
            let mut lc = ListenerConfig::new(l.kind, l.addr);
            if let Some(p) = &l.path {
                lc.path = p.clone();
            }
            if l.kind.is_tls() {
                if args.cert.is_none() || args.key.is_none() {
                    return Err(BrokerError::Config(
                        "--listen mqtts:// and wss:// need --cert FILE and --key FILE".into(),
                    ));
                }
                lc.cert = args.cert.clone();
                lc.key = args.key.clone();
                lc.client_ca = args.client_ca.clone();
                lc.use_identity_as_username = args.use_identity_as_username;
            }
            config.listeners.push(lc);
        }
    }
    if let Some(p) = args.password_file {
        config.password_file = Some(p);
    }
    if let Some(p) = args.acl_file {
        config.acl_file = Some(p);
    }
    if args.no_anonymous {
        config.allow_anonymous = false;
        for l in &mut config.listeners {
            l.allow_anonymous = Some(false);
        }
    }
    if let Some(addr) = args.http {
        config.http.set_listen(Some(addr));
    } else if args.no_http {
        config.http.set_listen(None);
    }
    if !args.cluster.is_empty() {
        config.cluster.get_or_insert_with(Default::default).nats = args.cluster.clone();
    }
    if let Some(name) = args.node_name {
        match config.cluster.as_mut() {
            Some(c) => c.node_name = name,
            None => {
                return Err(BrokerError::Config(
                    "--node-name needs cluster mode (--cluster URLS or a [cluster] table)".into(),
                ))
            }
        }
    }
    if args.in_memory {
        config.data_dir = None;
    } else if let Some(dir) = args.data_dir {
        config.data_dir = Some(dir);
    } else if config.data_dir.is_none() {
        config.data_dir = Some(PathBuf::from("tern-data"));
    }
    Ok(config)
}

/// Start the broker and serve until Ctrl-C or SIGTERM. On SIGHUP the security files are
/// read again, and the `[auth]` table of `config_file` when there is one.
pub fn run(config: Config, config_file: Option<PathBuf>) -> Result<(), BrokerError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| BrokerError::Config(format!("cannot start the runtime: {e}")))?;
    let config_http = config.http.clone();
    let bridge_configs = config.bridge.clone();
    rt.block_on(async {
        let (broker, _cluster) = bind(config).await?;
        for (kind, addr) in broker.listeners() {
            // Printed on stdout so scripts can learn the port when listening on port 0.
            if kind == ListenerKind::Tcp {
                println!("tern broker listening on {addr}");
            } else {
                println!("tern broker listening on {addr} ({kind})");
            }
        }
        reload_on_hangup(broker.security(), config_file);
        let mut http_bridges = None;
        if let Some(http) = start_http(&broker, &config_http).await? {
            http_bridges = Some(http.bridges());
            tokio::spawn(http.run());
        }
        // `[[bridge]]` tables: each bridge is a client of this broker and of its remote. Their
        // sessions subscribe before the listeners accept anyone, so the outbox misses nothing.
        let bridges = match bridge_configs.is_empty() {
            true => None,
            false => Some(
                tern_bridge::Bridges::start(broker.internal(), &bridge_configs)
                    .await
                    .map_err(|e| BrokerError::Config(e.to_string()))?,
            ),
        };
        if let (Some(slot), Some(b)) = (&http_bridges, &bridges) {
            let states = b.reporter();
            slot.set(move || states().into_iter().map(bridge_report).collect());
        }
        // SIGINT/SIGTERM: graceful shutdown (5.0 clients get DISCONNECT 0x8B); the bridges
        // leave their remotes first.
        broker
            .run_until(async move {
                shutdown_signal().await;
                if let Some(b) = bridges {
                    b.stop().await;
                }
            })
            .await;
        Ok(())
    })
}

/// A bridge's state as the HTTP endpoint shows it.
fn bridge_report(s: tern_bridge::BridgeState) -> tern_admin::BridgeReport {
    tern_admin::BridgeReport {
        name: s.name,
        remote: s.remote,
        connected: s.connected,
        last_error: s.last_error,
        reconnect_attempts: u64::from(s.reconnect_attempts),
        backoff_ms: s.backoff_ms,
        forwarded: s.forwarded,
        received: s.received,
        dropped: s.dropped,
        outbox_messages: s.outbox_messages as u64,
        outbox_bytes: s.outbox_bytes as u64,
        outbox_dropped: s.outbox_dropped,
    }
}

/// Bind the broker; in cluster mode, join the cluster first (its start-up checks refuse NATS
/// that would lose acknowledged messages) and deliver its messages once bound. The cluster
/// node is returned to be kept for as long as the broker runs.
async fn bind(mut config: Config) -> Result<(Broker, Option<tern_cluster::Cluster>), BrokerError> {
    let Some(cluster_config) = config.cluster.clone() else {
        return Ok((Broker::bind(config).await?, None));
    };
    let cluster = tern_cluster::Cluster::start(&cluster_config)
        .await
        .map_err(|e| BrokerError::Config(e.to_string()))?;
    let max = cluster.max_packet_size();
    if config.max_packet_size > max {
        tracing::info!(
            max_packet_size = max,
            "cluster mode: max_packet_size lowered to what NATS' max_payload can carry"
        );
        config.max_packet_size = max;
        config.max_connect_packet_size = config.max_connect_packet_size.min(max);
    }
    let broker = tern_broker::BrokerBuilder::from_config(config)
        .backplane(cluster.backplane())
        .bind()
        .await?;
    cluster
        .attach(broker.admin())
        .await
        .map_err(|e| BrokerError::Config(e.to_string()))?;
    println!("tern cluster node {} joined", cluster.node_name());
    Ok((broker, Some(cluster)))
}

/// Bind the HTTP endpoint of `config`, if any, and print its address on stdout. The default
/// address, when taken (another broker on this machine), is skipped with a warning; any other
/// address must work.
async fn start_http(
    broker: &Broker,
    config: &tern_broker::HttpConfig,
) -> Result<Option<tern_admin::HttpServer>, BrokerError> {
    if config.listen.is_none() {
        return Ok(None);
    }
    match tern_admin::HttpServer::bind(broker.admin(), config).await {
        Ok(http) => {
            // Not println!: a script that read the MQTT line may have closed our stdout.
            use std::io::Write as _;
            let scheme = if http.is_tls() { "https" } else { "http" };
            let _ = writeln!(
                std::io::stdout(),
                "tern http listening on {scheme}://{}",
                http.local_addr()
            );
            Ok(Some(http))
        }
        Err(tern_admin::Error::Bind { addr, source }) if addr == tern_broker::DEFAULT_HTTP => {
            tracing::warn!("no HTTP endpoint: cannot bind the default {addr}: {source} (set --http ADDR:PORT or --no-http)");
            Ok(None)
        }
        Err(e) => Err(BrokerError::Config(
            e.to_string()
                .trim_start_matches("configuration error: ")
                .to_string(),
        )),
    }
}

/// SIGHUP: read the password, ACL and ban files and the TLS certificates again, and the
/// `[auth]` sources from the configuration file (a broken file keeps what is in force).
fn reload_on_hangup(security: tern_broker::SecurityHandle, config_file: Option<PathBuf>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::hangup()) {
            Ok(mut hup) => {
                tokio::spawn(async move {
                    while hup.recv().await.is_some() {
                        tracing::info!("SIGHUP: reloading the security files, certificates and [auth]");
                        // A failure is logged by reload and what is in force stays.
                        let _ = security.reload();
                        if let Some(path) = &config_file {
                            match Config::from_file(path) {
                                Ok(c) => {
                                    let _ = security.reload_auth(&c.auth);
                                }
                                Err(e) => tracing::error!("SIGHUP: keeping [auth] in force: {e}"),
                            }
                        }
                    }
                });
            }
            Err(e) => tracing::warn!("cannot handle SIGHUP: {e}"),
        }
    }
    #[cfg(not(unix))]
    let _ = (security, config_file);
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
