//! `tern`: the Tern MQTT broker and command-line tools.

mod cmd;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Tern: an MQTT 3.1.1 / 5.0 broker and tools.
#[derive(Debug, Parser)]
#[command(name = "tern", version, about)]
struct Cli {
    /// Log filter, e.g. `info`, `debug`, `tern_broker=trace` (or set RUST_LOG).
    #[arg(long, global = true, default_value = "info")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the broker (embedded defaults: 127.0.0.1:1883, no config file needed).
    Broker(cmd::broker::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = std::env::var("RUST_LOG").unwrap_or(cli.log.clone());
    let env_filter = match tracing_subscriber::EnvFilter::try_new(&filter) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("error: --log {filter:?} is not a valid log filter ({e}); try --log info");
            return ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(env_filter)
        .with_writer(std::io::stderr)
        .init();
    let result = match cli.command {
        Command::Broker(args) => cmd::broker::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
