//! Where and how `tern` writes its log: standard error, text or JSON lines.

use std::io::IsTerminal;

use tern_broker::LogFormat;

/// The `--log-format` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Human-readable lines (colours only when standard error is a terminal).
    Text,
    /// One JSON object per line (timestamp, level, target, message and the event's fields),
    /// for log shippers such as Loki, Elasticsearch or journald.
    Json,
}

impl From<LogFormat> for Format {
    fn from(f: LogFormat) -> Format {
        match f {
            LogFormat::Json => Format::Json,
            _ => Format::Text,
        }
    }
}

/// Install the global subscriber: `filter` in `EnvFilter` syntax (`RUST_LOG` wins when set).
pub fn init(filter: &str, format: Format) -> Result<(), String> {
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| filter.to_string());
    let env_filter = tracing_subscriber::EnvFilter::try_new(&filter)
        .map_err(|e| format!("--log {filter:?} is not a valid log filter ({e}); try --log info"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(env_filter)
        .with_writer(std::io::stderr);
    match format {
        Format::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        Format::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .init(),
    }
    Ok(())
}
