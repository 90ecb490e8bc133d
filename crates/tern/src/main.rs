//! `tern`: the Tern MQTT broker and command-line tools.

mod cmd;
mod logging;
mod output;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// jemalloc, with background threads that purge freed pages (see docs/memory.md): glibc's
/// arenas keep what an attack made the broker allocate, jemalloc gives it back.
#[cfg(all(feature = "jemalloc", not(target_env = "msvc")))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Tern: an MQTT 3.1.1 / 5.0 broker and tools.
#[derive(Debug, Parser)]
#[command(name = "tern", version, about)]
struct Cli {
    /// Log filter, e.g. `info`, `debug`, `tern_broker=trace` (or set RUST_LOG).
    #[arg(long, global = true, default_value = "info")]
    log: String,
    /// Log format: `text` (default) or `json`, one object per line (for the broker, also
    /// `log_format` in the config file; this flag wins).
    #[arg(long = "log-format", global = true, value_name = "FORMAT")]
    log_format: Option<logging::Format>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the broker (embedded defaults: 127.0.0.1:1883, no config file needed).
    Broker(cmd::broker::Args),
    /// Publish a message (like mosquitto_pub).
    Pub(cmd::publish::Args),
    /// Subscribe and print messages (like mosquitto_sub).
    Sub(cmd::subscribe::Args),
    /// Load-test any MQTT broker: fan-in, fan-out, pairs, latency, connection storm.
    Bench(cmd::bench::Args),
    /// Manage the broker's password file: add, update or delete users.
    Passwd(cmd::passwd::Args),
    /// Show a client's packets in and out, live, from the broker's HTTP endpoint.
    Trace(cmd::trace::Args),
    /// Cluster mode: `tern cluster check` says whether the NATS servers have what Tern needs.
    Cluster(cmd::cluster::Args),
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e)
            if e.use_stderr()
                && e.kind() != clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand =>
        {
            // One line that names the flag, not clap's usage block.
            let text = e.render().to_string();
            let message: Vec<&str> = text
                .lines()
                .take_while(|l| !l.trim().is_empty() && !l.starts_with("Usage:"))
                .map(str::trim)
                .collect();
            eprintln!("{}", message.join(" "));
            return ExitCode::from(2);
        }
        Err(e) => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
    };
    let (log, format) = (cli.log.as_str(), cli.log_format);
    let text = || logging::init(log, format.unwrap_or(logging::Format::Text));
    let result = match cli.command {
        Command::Broker(args) => run_broker(args, log, format),
        Command::Pub(args) => text().and_then(|()| cmd::publish::run(args)),
        Command::Sub(args) => text().and_then(|()| cmd::subscribe::run(args)),
        Command::Bench(args) => text().and_then(|()| {
            cmd::bench::run(args)
                .map(|()| ExitCode::SUCCESS)
                .map_err(|e| e.to_string())
        }),
        Command::Passwd(args) => text().and_then(|()| cmd::passwd::run(args).map(|()| ExitCode::SUCCESS)),
        Command::Trace(args) => text().and_then(|()| cmd::trace::run(args).map(|()| ExitCode::SUCCESS)),
        Command::Cluster(args) => text().and_then(|()| cmd::cluster::run(args)),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `tern broker`: the configuration first, since it may choose the log format.
fn run_broker(
    args: cmd::broker::Args,
    log: &str,
    format: Option<logging::Format>,
) -> Result<ExitCode, String> {
    let config_file = args.config_file();
    let config = cmd::broker::config(args).map_err(|e| e.to_string())?;
    logging::init(log, format.unwrap_or(config.log_format.into()))?;
    cmd::broker::run(config, config_file)
        .map(|()| ExitCode::SUCCESS)
        .map_err(|e| e.to_string())
}
