//! kill -9 of `tern broker` with a bridge: the real binary runs with a `[[bridge]]` table and a
//! data directory, and is killed with SIGKILL in the middle of a stream of numbered QoS 1 (or
//! QoS 2) messages, while its remote (Mosquitto) is out of reach in some rounds and up in others. After
//! the last restart every message the local publisher got a PUBACK (PUBCOMP) for arrives at the
//! remote subscriber (v5 [MQTT-4.4.0-1]: the bridge's session resumes its unacknowledged
//! deliveries); with QoS 2, each exactly once (v5 [MQTT-4.3.3-10]: the bridge resends under the
//! same packet id, and sends PUBREL only once the broker has recorded the PUBREC).
//! `TERN_BRIDGE_CRASH_ROUNDS` sets the number of crashes (default 4).
//!
//! The remote is out of reach behind a relay that closes its connections, not stopped: Mosquitto
//! 2.0.11 restarted on its persistence sends a QoS 2 message again as PUBLISH after it has sent
//! its PUBREL, when it had more of them in flight to a subscriber than its in-flight limit (it
//! restores the rest into its queue as new), so the remote subscriber got duplicates that
//! were Mosquitto's, not the bridge's (seen in 8-round runs).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tern_testkit::relay::Relay;

use tern_client::{Client, Options, ProtocolVersion, QoS, Reconnect};

use crate::{random, Broker, TempDir};

const MOSQUITTO: &str = "/usr/sbin/mosquitto";

/// Mosquitto on a free port with persistence.
struct Mosquitto {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
}

impl Mosquitto {
    fn new(dir: PathBuf) -> Mosquitto {
        assert!(
            Path::new(MOSQUITTO).exists(),
            "{MOSQUITTO} not found: install the Debian package `mosquitto`"
        );
        std::fs::create_dir_all(&dir).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        Mosquitto {
            child: None,
            port,
            dir,
        }
    }

    async fn start(&mut self) {
        let conf = self.dir.join("mosquitto.conf");
        // As root Mosquitto would become the user `mosquitto`, which cannot write here.
        let user = std::env::var("USER").unwrap_or_else(|_| "root".into());
        std::fs::write(
            &conf,
            format!(
                "user {user}\nallow_anonymous true\npersistence true\npersistence_location {}/\nmax_queued_messages 1000000\nlistener {} 127.0.0.1\n",
                self.dir.display(),
                self.port
            ),
        )
        .unwrap();
        self.child = Some(
            Command::new(MOSQUITTO)
                .arg("-c")
                .arg(&conf)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start mosquitto"),
        );
        let addr: SocketAddr = format!("127.0.0.1:{}", self.port).parse().unwrap();
        for _ in 0..500 {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("mosquitto did not listen on {addr}");
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The `tern broker` configuration: the bridge of the issue's example, to Mosquitto, and a
/// session queue large enough that nothing of the stream is dropped while the remote is down.
fn config(remote_port: u16, qos: u8) -> String {
    format!(
        r#"sync = "always"
sys_interval_secs = 0
http = ""
max_queued_messages = 100000

[[bridge]]
name = "crash"
remote = "mqtt://127.0.0.1:{remote_port}"
client_id = "edge-bridge-crash"
version = "5"
reconnect_min_ms = 50
reconnect_max_ms = 500

[[bridge.topic]]
filter = "edge/#"
direction = "out"
qos = {qos}
remote_prefix = "site1/"
"#
    )
}

/// Publish numbered QoS 1 messages from `first` until the broker dies (or `limit` are sent);
/// returns the numbers acknowledged with PUBACK.
async fn publish_until_killed(addr: SocketAddr, first: usize, limit: usize, qos: QoS) -> Vec<usize> {
    let options = Options::new(format!("mqtt://{addr}"))
        .client_id("crash-publisher")
        .reconnect(Reconnect::disabled());
    let Ok((client, _events)) = Client::connect(options).await else {
        return Vec::new();
    };
    let mut acked = Vec::new();
    for n in first..first + limit {
        match tokio::time::timeout(
            Duration::from_secs(5),
            client.publish(format!("edge/seq/{}", n % 7), n.to_string(), qos),
        )
        .await
        {
            Ok(Ok(_)) => acked.push(n),
            _ => break,
        }
    }
    acked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bridge_loses_no_acknowledged_message_across_kill_9() {
    // The bridge's session resumes its deliveries after each restart: v5 [MQTT-4.4.0-1].
    crash_loop(QoS::AtLeastOnce).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bridge_forwards_qos2_exactly_once_across_kill_9() {
    // v5 [MQTT-4.3.3-10]: the remote takes a resent QoS 2 message for a duplicate when it
    // comes under the same packet id; v5 [MQTT-4.4.0-1] the ids are kept across restarts.
    crash_loop(QoS::ExactlyOnce).await;
}

async fn crash_loop(qos: QoS) {
    let rounds: usize = std::env::var("TERN_BRIDGE_CRASH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    let base = std::env::temp_dir().join(format!(
        "tern-bridge-crash-{}-qos{}",
        std::process::id(),
        qos as u8
    ));
    let _base = TempDir(base.clone());
    let data = TempDir(base.join("data"));
    let mut mosquitto = Mosquitto::new(base.join("mosquitto"));
    mosquitto.start().await;
    // The bridge reaches Mosquitto through the relay; the collector directly.
    let relay = Relay::start(mosquitto.port).await;
    let config_path = data.0.with_extension("toml");
    std::fs::create_dir_all(&base).unwrap();
    std::fs::write(&config_path, config(relay.port, qos as u8)).unwrap();

    // The remote subscriber: a persistent session (3.1.1 Clean Session 0), connected to
    // Mosquitto directly for the whole test.
    // A first connection Mosquitto closes while it is still starting (seen once in a full
    // run) is tried again, as the client's own reconnects would.
    let mut tries = 0;
    let (collector, mut events) = loop {
        let r = Client::connect(
            Options::new(format!("mqtt://127.0.0.1:{}", mosquitto.port))
                .client_id(format!("crash-collector-{}", qos as u8))
                .version(ProtocolVersion::V3_1_1)
                .clean_start(false)
                .reconnect(Reconnect::with_delays(
                    Duration::from_millis(50),
                    Duration::from_millis(300),
                ))
                .event_capacity(1024),
        )
        .await;
        match r {
            Ok(c) => break c,
            Err(e) if tries < 10 => {
                tries += 1;
                eprintln!("collector: {e}; connecting again");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("collector cannot connect to Mosquitto: {e}"),
        }
    };
    collector.subscribe("site1/edge/#", qos).await.unwrap();

    let mut next = random("bridge crash test");
    let mut acknowledged = Vec::new();
    for round in 0..rounds {
        // Even rounds: the remote is out of reach, everything waits in the outbox. Odd
        // rounds: it is up, and the kill comes while the bridge forwards.
        let remote_up = round % 2 == 1;
        relay.set_up(remote_up);
        let broker = Broker::start_with_config(&data.0, &config_path);
        let addr = broker.addr;
        let kill_after = Duration::from_millis(200 + next() % 400);
        let killer = tokio::spawn(async move {
            tokio::time::sleep(kill_after).await;
            broker.kill9();
        });
        let acked = publish_until_killed(addr, 1_000_000 * round, 100_000, qos).await;
        killer.await.unwrap();
        eprintln!(
            "round {round} (remote {}): killed after {kill_after:?}, {} acknowledged",
            if remote_up { "up" } else { "down" },
            acked.len()
        );
        acknowledged.extend(acked);
    }
    // The last start: no crash, the remote up; the outbox drains.
    relay.set_up(true);
    let _broker = Broker::start_with_config(&data.0, &config_path);

    let mut seen = BTreeSet::new();
    let mut duplicates = 0usize;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while acknowledged.iter().any(|n| !seen.contains(n)) {
        let Ok(Some(m)) = tokio::time::timeout_at(deadline, events.next_message()).await else {
            let missing: Vec<_> = acknowledged.iter().filter(|n| !seen.contains(*n)).collect();
            panic!(
                "{} acknowledged messages never reached the remote, e.g. {:?}",
                missing.len(),
                &missing[..missing.len().min(10)]
            );
        };
        let n: usize = m.payload_str().unwrap().parse().unwrap();
        if !seen.insert(n) {
            duplicates += 1;
        }
    }
    assert!(acknowledged.len() > rounds, "the publisher got acknowledgements");
    if qos == QoS::ExactlyOnce {
        // Duplicates sent late would arrive after the last missing one: wait a moment.
        while let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(500), events.next_message()).await
        {
            let n: usize = m.payload_str().unwrap().parse().unwrap();
            if !seen.insert(n) {
                duplicates += 1;
            }
        }
        assert_eq!(
            duplicates, 0,
            "v5 [MQTT-4.3.3-10]: QoS 2 through the bridge arrives exactly once across kill -9"
        );
    }
    eprintln!(
        "QoS {}: {rounds} kill -9, {} messages acknowledged, all at the remote ({duplicates} duplicates)",
        qos as u8,
        acknowledged.len()
    );
}

/// The configuration of the `in` test: messages of the remote's `site1/cmd/...` come in as
/// `cmd/...`.
fn config_in(remote_port: u16) -> String {
    format!(
        r#"sync = "always"
sys_interval_secs = 0
http = ""
max_queued_messages = 100000

[[bridge]]
name = "crash-in"
remote = "mqtt://127.0.0.1:{remote_port}"
client_id = "edge-bridge-crash-in"
version = "5"
reconnect_min_ms = 50
reconnect_max_ms = 500

[[bridge.topic]]
filter = "cmd/#"
direction = "in"
qos = 1
remote_prefix = "site1/"
"#
    )
}

/// A persistent local subscriber of `cmd/#` on the broker at `addr`: collects into `seen`
/// until the connection ends (the broker is killed) or `quiet` passes without a message.
async fn collect_local(addr: SocketAddr, seen: &mut BTreeSet<usize>, quiet: Duration) -> usize {
    let options = Options::new(format!("mqtt://{addr}"))
        .client_id("crash-in-local")
        .clean_start(false)
        .session_expiry(3600)
        .reconnect(Reconnect::disabled())
        .event_capacity(1024);
    let Ok((client, mut events)) = Client::connect(options).await else {
        return 0;
    };
    if client.subscribe("cmd/#", QoS::AtLeastOnce).await.is_err() {
        return 0;
    }
    let mut got = 0;
    while let Ok(Some(m)) = tokio::time::timeout(quiet, events.next_message()).await {
        seen.insert(m.payload_str().unwrap().parse().unwrap());
        got += 1;
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bridge_loses_no_message_from_the_remote_across_kill_9() {
    // A message from the remote is acknowledged to it (PUBACK) only once the broker has it in
    // its store: until then the remote keeps it and sends it again (v5 [MQTT-4.4.0-1]).
    let rounds: usize = std::env::var("TERN_BRIDGE_CRASH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    let base = std::env::temp_dir().join(format!("tern-bridge-crash-{}-in", std::process::id()));
    let _base = TempDir(base.clone());
    let data = TempDir(base.join("data"));
    let mut mosquitto = Mosquitto::new(base.join("mosquitto"));
    mosquitto.start().await;
    let config_path = data.0.with_extension("toml");
    std::fs::write(&config_path, config_in(mosquitto.port)).unwrap();

    // The remote publisher: numbered QoS 1 messages, each acknowledged by Mosquitto, for as
    // long as the rounds last.
    let (publisher, _events) = Client::connect(
        Options::new(format!("mqtt://127.0.0.1:{}", mosquitto.port))
            .client_id("crash-in-publisher")
            .version(ProtocolVersion::V3_1_1),
    )
    .await
    .unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let publishing = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut n = 0usize;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let topic = format!("site1/cmd/dev{}", n % 5);
                if publisher
                    .publish(topic, n.to_string(), QoS::AtLeastOnce)
                    .await
                    .is_ok()
                {
                    acked.push(n);
                }
                n += 1;
                if n.is_multiple_of(50) {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
            acked
        })
    };

    let mut next = random("bridge `in` crash test");
    let mut seen = BTreeSet::new();
    for round in 0..rounds {
        let broker = Broker::start_with_config(&data.0, &config_path);
        let addr = broker.addr;
        let kill_after = Duration::from_millis(200 + next() % 400);
        let killer = tokio::spawn(async move {
            tokio::time::sleep(kill_after).await;
            broker.kill9();
        });
        let got = collect_local(addr, &mut seen, Duration::from_secs(5)).await;
        killer.await.unwrap();
        eprintln!("in, round {round}: killed after {kill_after:?}, {got} received locally");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    // Messages published before the bridge had subscribed on the remote, or before the local
    // subscriber had subscribed, were not for them: the count starts at the first message
    // that came through (the remote delivers in order, and so does the bridge).
    let first = *seen.first().expect("messages came in during the rounds");
    let acknowledged: Vec<usize> = publishing
        .await
        .unwrap()
        .into_iter()
        .filter(|&n| n >= first)
        .collect();
    // The last start: the bridge takes what Mosquitto kept for it; the subscriber drains.
    let broker = Broker::start_with_config(&data.0, &config_path);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while acknowledged.iter().any(|n| !seen.contains(n)) && tokio::time::Instant::now() < deadline {
        collect_local(broker.addr, &mut seen, Duration::from_secs(2)).await;
    }
    let missing: Vec<_> = acknowledged.iter().filter(|n| !seen.contains(*n)).collect();
    assert!(
        missing.is_empty(),
        "{} messages Mosquitto acknowledged never reached the local subscriber, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    assert!(
        acknowledged.len() > rounds,
        "the remote publisher got acknowledgements"
    );
    eprintln!(
        "in: {rounds} kill -9, {} messages from the remote, all at the local subscriber",
        acknowledged.len()
    );
}
