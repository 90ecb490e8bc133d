//! kill -9 of `tern broker` with a bridge: the real binary runs with a `[[bridge]]` table and a
//! data directory, and is killed with SIGKILL in the middle of a stream of numbered QoS 1
//! messages, while its remote (Mosquitto) is down in some rounds and up in others. After the
//! last restart every message the local publisher got a PUBACK for arrives at the remote
//! subscriber (v5 [MQTT-4.4.0-1]: the bridge's session resumes its unacknowledged deliveries).
//! `TERN_BRIDGE_CRASH_ROUNDS` sets the number of crashes (default 4).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tern_client::{Client, Options, ProtocolVersion, QoS, Reconnect};

use crate::{seed, Broker, TempDir};

const MOSQUITTO: &str = "/usr/sbin/mosquitto";

/// Mosquitto on a fixed free port with persistence, stopped and started again.
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
                "user {user}\nallow_anonymous true\npersistence true\npersistence_location {}/\nlistener {} 127.0.0.1\n",
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

    /// SIGTERM: it saves its sessions.
    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill").arg("-TERM").arg(c.id().to_string()).status();
            let _ = c.wait();
        }
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
fn config(remote_port: u16) -> String {
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
qos = 1
remote_prefix = "site1/"
"#
    )
}

/// Publish numbered QoS 1 messages from `first` until the broker dies (or `limit` are sent);
/// returns the numbers acknowledged with PUBACK.
async fn publish_until_killed(addr: SocketAddr, first: usize, limit: usize) -> Vec<usize> {
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
            client.publish(format!("edge/seq/{}", n % 7), n.to_string(), QoS::AtLeastOnce),
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
    let rounds: usize = std::env::var("TERN_BRIDGE_CRASH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    let base = std::env::temp_dir().join(format!("tern-bridge-crash-{}", std::process::id()));
    let _base = TempDir(base.clone());
    let data = TempDir(base.join("data"));
    let mut mosquitto = Mosquitto::new(base.join("mosquitto"));
    mosquitto.start().await;
    let config_path = data.0.with_extension("toml");
    std::fs::create_dir_all(&base).unwrap();
    std::fs::write(&config_path, config(mosquitto.port)).unwrap();

    // The remote subscriber: a persistent session (3.1.1 Clean Session 0) kept by Mosquitto
    // across its restarts.
    let (collector, mut events) = Client::connect(
        Options::new(format!("mqtt://127.0.0.1:{}", mosquitto.port))
            .client_id("crash-collector")
            .version(ProtocolVersion::V3_1_1)
            .clean_start(false)
            .reconnect(Reconnect::with_delays(
                Duration::from_millis(50),
                Duration::from_millis(300),
            ))
            .event_capacity(1024),
    )
    .await
    .unwrap();
    collector
        .subscribe("site1/edge/#", QoS::AtLeastOnce)
        .await
        .unwrap();

    let mut rng = seed();
    eprintln!("bridge crash test seed {rng} (set TERN_CRASH_SEED to repeat)");
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut acknowledged = Vec::new();
    for round in 0..rounds {
        // Even rounds: the remote is down, everything waits in the outbox. Odd rounds: it is
        // up, and the kill comes while the bridge forwards.
        let remote_up = round % 2 == 1;
        if remote_up {
            mosquitto.start().await;
        } else {
            mosquitto.stop();
        }
        let broker = Broker::start_with_config(&data.0, &config_path);
        let addr = broker.addr;
        let kill_after = Duration::from_millis(200 + next() % 400);
        let killer = tokio::spawn(async move {
            tokio::time::sleep(kill_after).await;
            broker.kill9();
        });
        let acked = publish_until_killed(addr, 1_000_000 * round, 100_000).await;
        killer.await.unwrap();
        eprintln!(
            "round {round} (remote {}): killed after {kill_after:?}, {} acknowledged",
            if remote_up { "up" } else { "down" },
            acked.len()
        );
        acknowledged.extend(acked);
    }
    // The last start: no crash, the remote up; the outbox drains.
    mosquitto.stop();
    mosquitto.start().await;
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
    eprintln!(
        "{rounds} kill -9, {} messages acknowledged, all at the remote ({duplicates} duplicates)",
        acknowledged.len()
    );
}
