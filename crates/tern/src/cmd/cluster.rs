//! `tern cluster check`: what a Tern cluster needs from its NATS servers, and whether it
//! holds (see docs/cluster.md). Reads the `[cluster]` table of `--config` when given; the
//! flags replace its NATS and monitoring URLs. Changes nothing on NATS.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args as ClapArgs, Subcommand};
use tern_broker::Config;

/// `tern cluster`.
#[derive(Debug, ClapArgs)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check the NATS side: reachable with the credentials and TLS given, version 2.11 or
    /// later, JetStream on and fsyncing before it acknowledges, the cluster's streams as
    /// configured. Prints one line per requirement; exits with 1 if one does not hold.
    Check(CheckArgs),
}

#[derive(Debug, ClapArgs)]
struct CheckArgs {
    /// The NATS servers, comma-separated `nats://HOST:PORT` (replaces `cluster.nats`).
    #[arg(long, value_name = "URLS", value_delimiter = ',')]
    cluster: Vec<String>,
    /// Their monitoring endpoints, comma-separated `http://HOST:PORT` (replaces
    /// `cluster.monitor`): where the fsync setting is read.
    #[arg(long, value_name = "URLS", value_delimiter = ',')]
    monitor: Vec<String>,
    /// A broker configuration file whose `[cluster]` table gives the rest (credentials, TLS,
    /// shards, replicas).
    #[arg(short, long, value_name = "FILE")]
    config: Option<PathBuf>,
}

/// Run `tern cluster ...`.
pub fn run(args: Args) -> Result<ExitCode, String> {
    let Command::Check(args) = args.command;
    let mut cluster = match &args.config {
        Some(path) => Config::from_file(path)
            .map_err(|e| e.to_string())?
            .cluster
            .unwrap_or_default(),
        None => Default::default(),
    };
    if !args.cluster.is_empty() {
        cluster.nats = args.cluster;
    }
    if !args.monitor.is_empty() {
        cluster.monitor = args.monitor;
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    let findings = runtime.block_on(tern_cluster::check(&cluster));
    let mut all = true;
    for f in &findings {
        all &= f.ok;
        println!("{:<4} {}: {}", if f.ok { "ok" } else { "FAIL" }, f.need, f.found);
    }
    Ok(if all { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
