//! `tern broker`: run the broker with embedded defaults, a TOML file, or flags.

use std::net::SocketAddr;
use std::path::PathBuf;

use tern_broker::{Broker, BrokerError, Config};

/// Options of `tern broker`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Address to listen on (repeatable); replaces the config file's `listen`.
    #[arg(long, value_name = "ADDR:PORT")]
    listen: Vec<SocketAddr>,
    /// TOML configuration file; keys are those of tern_broker::Config, missing keys take defaults.
    #[arg(long, short, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Directory of the durable store (default: the config file's `data_dir`, else ./tern-data).
    #[arg(long, value_name = "DIR", conflicts_with = "in_memory")]
    data_dir: Option<PathBuf>,
    /// Keep all state in memory: nothing survives a restart.
    #[arg(long)]
    in_memory: bool,
}

/// Start the broker and serve until Ctrl-C or SIGTERM.
pub fn run(args: Args) -> Result<(), BrokerError> {
    let mut config = match &args.config {
        Some(path) => Config::from_file(path)?,
        None => Config::default(),
    };
    if !args.listen.is_empty() {
        config.listen = args.listen;
    }
    if args.in_memory {
        config.data_dir = None;
    } else if let Some(dir) = args.data_dir {
        config.data_dir = Some(dir);
    } else if config.data_dir.is_none() {
        config.data_dir = Some(PathBuf::from("tern-data"));
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| BrokerError::Config(format!("cannot start the runtime: {e}")))?;
    rt.block_on(async {
        let broker = Broker::bind(config).await?;
        for addr in broker.local_addrs() {
            // Printed on stdout so scripts can learn the port when listening on port 0.
            println!("tern broker listening on {addr}");
        }
        // SIGINT/SIGTERM: graceful shutdown (5.0 clients get DISCONNECT 0x8B).
        broker.run_until(shutdown_signal()).await;
        Ok(())
    })
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
