//! `tern pub`: publish one message (argument, file, stdin or empty) or one
//! message per stdin line, then disconnect.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use tern_client::{Client, ClientError, ProtocolVersion, PublishOptions, QoS};

use super::connect::{flag_error, parse_qos, runtime, ConnectArgs, MessageProperties};

/// Options of `tern pub`.
#[derive(Debug, clap::Args)]
#[command(disable_help_flag = true)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["message", "file", "stdin_lines", "stdin_file", "null_message"])))]
pub struct Args {
    #[command(flatten)]
    connect: ConnectArgs,
    /// Topic to publish to.
    #[arg(short = 't', long, value_name = "TOPIC")]
    topic: String,
    /// Quality of service: 0, 1 or 2.
    #[arg(short = 'q', long, value_name = "0|1|2", default_value = "0", value_parser = parse_qos)]
    qos: QoS,
    /// Retain the message.
    #[arg(short = 'r', long)]
    retain: bool,
    /// The message.
    #[arg(short = 'm', long, value_name = "MSG")]
    message: Option<String>,
    /// Send the contents of a file as the message.
    #[arg(short = 'f', long, value_name = "FILE")]
    file: Option<PathBuf>,
    /// Send each line read from stdin as a message.
    #[arg(short = 'l', long = "stdin-line")]
    stdin_lines: bool,
    /// Send all of stdin as one message.
    #[arg(short = 's', long = "stdin-file")]
    stdin_file: bool,
    /// Send an empty message.
    #[arg(short = 'n', long = "null-message")]
    null_message: bool,
    #[command(flatten)]
    properties: MessageProperties,
    /// Print help.
    #[arg(long, action = clap::ArgAction::Help)]
    help: Option<bool>,
}

/// Publish and exit.
pub fn run(args: Args) -> Result<ExitCode, String> {
    if args.connect.version != ProtocolVersion::V5 {
        if let Some(flag) = args.properties.first_set() {
            return Err(flag_error(flag, "is MQTT 5.0 only; add -V 5"));
        }
    }
    if let Err(e) = tern_proto::topic::validate_topic_name(&args.topic) {
        return Err(flag_error("--topic", e));
    }
    let options = args.connect.options("pub", false)?;
    let payload: Option<Vec<u8>> = if let Some(m) = &args.message {
        Some(m.clone().into_bytes())
    } else if let Some(path) = &args.file {
        Some(std::fs::read(path).map_err(|e| flag_error("--file", format!("{}: {e}", path.display())))?)
    } else if args.stdin_file {
        let mut buf = Vec::new();
        std::io::stdin()
            .read_to_end(&mut buf)
            .map_err(|e| flag_error("--stdin-file", e))?;
        Some(buf)
    } else if args.null_message {
        Some(Vec::new())
    } else {
        None
    };
    let publish_options = args
        .properties
        .apply(PublishOptions::new().qos(args.qos).retain(args.retain));
    runtime()?.block_on(async move {
        let (client, _events) = Client::connect(options).await.map_err(describe)?;
        let result = match payload {
            Some(p) => send(&client, &args.topic, p, &publish_options).await,
            None => send_lines(&client, &args.topic, &publish_options).await,
        };
        let _ = client.disconnect().await;
        result.map(|()| ExitCode::SUCCESS)
    })
}

async fn send(
    client: &Client,
    topic: &str,
    payload: Vec<u8>,
    options: &PublishOptions,
) -> Result<(), String> {
    client
        .publish_with(topic.to_string(), payload, options.clone())
        .await
        .map(|_| ())
        .map_err(describe)
}

/// One message per stdin line. Lines are read on a thread of their own so that
/// the connection keeps being served while stdin is idle.
async fn send_lines(client: &Client, topic: &str, options: &PublishOptions) -> Result<(), String> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<std::io::Result<String>>(16);
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            let stop = line.is_err();
            if tx.blocking_send(line).is_err() || stop {
                break;
            }
        }
    });
    while let Some(line) = rx.recv().await {
        let line = line.map_err(|e| flag_error("--stdin-line", e))?;
        send(client, topic, line.into_bytes(), options).await?;
    }
    Ok(())
}

/// A one-line description of a client error.
pub fn describe(e: ClientError) -> String {
    e.to_string().replace('\n', " ")
}
