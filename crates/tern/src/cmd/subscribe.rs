//! `tern sub`: subscribe to filters and print messages until a count, a
//! timeout or Ctrl-C.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use tern_client::{Client, Event, ProtocolVersion, QoS, RetainHandling, Subscription, SubscriptionOptions};

use super::connect::{flag_error, parse_qos, runtime, ConnectArgs};
use super::publish::describe;
use crate::output::{self, Format};

/// Exit status when `--timeout` expires (as mosquitto_sub).
const TIMED_OUT: u8 = 27;

/// Options of `tern sub`.
#[derive(Debug, clap::Args)]
#[command(disable_help_flag = true)]
pub struct Args {
    #[command(flatten)]
    connect: ConnectArgs,
    /// Topic filter to subscribe to (repeatable).
    #[arg(short = 't', long = "topic", value_name = "FILTER", required = true)]
    topics: Vec<String>,
    /// Maximum QoS of the subscriptions: 0, 1 or 2.
    #[arg(short = 'q', long, value_name = "0|1|2", default_value = "0", value_parser = parse_qos)]
    qos: QoS,
    /// Exit after this many messages.
    #[arg(short = 'C', long, value_name = "N")]
    count: Option<u64>,
    /// Exit after this many seconds (status 27 when it expires).
    #[arg(short = 'W', long, value_name = "SECS")]
    timeout: Option<u64>,
    /// Print `topic payload` instead of the payload.
    #[arg(short = 'v', long, conflicts_with = "json")]
    verbose: bool,
    /// Print one JSON object per message (topic, qos, retain, payload, 5.0 properties).
    #[arg(long)]
    json: bool,
    /// 5.0 No Local: do not receive messages this client publishes.
    #[arg(long = "no-local")]
    no_local: bool,
    /// 5.0 Retain As Published.
    #[arg(long = "retain-as-published")]
    retain_as_published: bool,
    /// 5.0 Retain Handling: 0 send retained, 1 only for new subscriptions, 2 never.
    #[arg(long = "retain-handling", value_name = "0|1|2", value_parser = clap::value_parser!(u8).range(0..=2))]
    retain_handling: Option<u8>,
    /// 5.0 Subscription Identifier.
    #[arg(long = "subscription-id", value_name = "ID", value_parser = clap::value_parser!(u32).range(1..=268_435_455))]
    subscription_id: Option<u32>,
    /// Print help.
    #[arg(long, action = clap::ArgAction::Help)]
    help: Option<bool>,
}

impl Args {
    fn subscription(&self) -> Result<Subscription, String> {
        let v5 = self.connect.version == ProtocolVersion::V5;
        let v5_flags = [
            ("--no-local", self.no_local),
            ("--retain-as-published", self.retain_as_published),
            ("--retain-handling", self.retain_handling.is_some()),
            ("--subscription-id", self.subscription_id.is_some()),
        ];
        if let (false, Some((flag, _))) = (v5, v5_flags.iter().find(|(_, set)| *set)) {
            return Err(flag_error(flag, "is MQTT 5.0 only; add -V 5"));
        }
        let options = SubscriptionOptions {
            qos: self.qos,
            no_local: self.no_local,
            retain_as_published: self.retain_as_published,
            retain_handling: match self.retain_handling {
                Some(1) => RetainHandling::SendIfNew,
                Some(2) => RetainHandling::DoNotSend,
                _ => RetainHandling::SendAtSubscribe,
            },
        };
        let mut s = Subscription::default();
        for t in &self.topics {
            if let Err(e) = tern_proto::topic::parse_filter(t) {
                return Err(flag_error("--topic", format!("{t:?}: {e}")));
            }
            s = s.filter(t.as_str(), options);
        }
        if let Some(id) = self.subscription_id {
            s = s.id(id);
        }
        Ok(s)
    }
}

/// Subscribe and print until done.
pub fn run(args: Args) -> Result<ExitCode, String> {
    let subscription = args.subscription()?;
    let options = args.connect.options("sub", true)?;
    let format = if args.json {
        Format::Json
    } else if args.verbose {
        Format::Verbose
    } else {
        Format::Plain
    };
    runtime()?.block_on(async move {
        let deadline = args
            .timeout
            .map(|s| tokio::time::Instant::now() + Duration::from_secs(s));
        let (client, mut events) = Client::connect(options).await.map_err(describe)?;
        let ack = client.subscribe_with(subscription).await.map_err(describe)?;
        for (code, topic) in ack.reason_codes.iter().zip(&args.topics) {
            if code.is_error() {
                let _ = client.disconnect().await;
                return Err(flag_error(
                    "--topic",
                    format!("{topic:?} refused by the broker: {code}"),
                ));
            }
        }
        let mut received = 0u64;
        let mut stdout = std::io::stdout().lock();
        let status = loop {
            if args.count.is_some_and(|n| received >= n) {
                break ExitCode::SUCCESS;
            }
            let event = tokio::select! {
                e = events.recv() => e,
                _ = sleep_until(deadline) => break ExitCode::from(TIMED_OUT),
                _ = tokio::signal::ctrl_c() => break ExitCode::SUCCESS,
            };
            match event {
                Some(Event::Message(m)) => {
                    received += 1;
                    let line = output::format(&m, format);
                    if stdout.write_all(&line).and_then(|()| stdout.flush()).is_err() {
                        // stdout closed (for example `| head`): stop quietly.
                        break ExitCode::SUCCESS;
                    }
                }
                Some(Event::Disconnected { reason }) => eprintln!("disconnected: {reason}"),
                Some(Event::ResubscribeFailed { filter, reason_code }) => {
                    eprintln!("re-subscription to {filter:?} refused: {reason_code}")
                }
                Some(_) => {}
                None => return Err("the connection ended".to_string()),
            }
        };
        let _ = client.disconnect().await;
        Ok(status)
    })
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
