//! Peers of the bridge tests: Mosquitto as a child process (restartable on its port, with
//! persistence, so an outage keeps the remote subscriber's session), Tern in process, clients.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tern_bridge::{BridgeState, Bridges};
use tern_broker::{BridgeConfig, BrokerBuilder, BrokerHandle};
use tern_client::{Client, Events, Message, Options, ProtocolVersion, Reconnect};
use tokio::net::TcpStream;

pub const MOSQUITTO: &str = "/usr/sbin/mosquitto";
/// The longest any wait in these tests takes.
pub const WAIT: Duration = Duration::from_secs(15);

/// Mosquitto on a port of its own, persistence in a temporary directory.
pub struct Mosquitto {
    child: Option<Child>,
    pub port: u16,
    dir: PathBuf,
    /// Lines added to its configuration (a bridge of its own).
    extra: String,
}

impl Mosquitto {
    /// Start Mosquitto on a free port (found by binding port 0), or panic with how to install it.
    pub async fn start() -> Mosquitto {
        Mosquitto::start_with("").await
    }

    /// Start Mosquitto with `extra` lines in its configuration.
    pub async fn start_with(extra: &str) -> Mosquitto {
        assert!(
            std::path::Path::new(MOSQUITTO).exists(),
            "{MOSQUITTO} not found: install the Debian package `mosquitto`"
        );
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("tern-bridge-mosquitto-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut m = Mosquitto {
            child: None,
            port,
            dir,
            extra: extra.to_string(),
        };
        m.restart().await;
        m
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// Start it (again) on its port; sessions saved at the last stop are restored.
    pub async fn restart(&mut self) {
        let conf = self.dir.join("mosquitto.conf");
        // Run as root, Mosquitto would switch to the user `mosquitto`, which cannot write
        // its database in our directory: stay the user we are.
        let user = std::env::var("USER").unwrap_or_else(|_| "root".into());
        std::fs::write(
            &conf,
            format!(
                "user {user}\nallow_anonymous true\npersistence true\npersistence_location {}/\nlistener {} 127.0.0.1\n{}\n",
                self.dir.display(),
                self.port,
                self.extra
            ),
        )
        .unwrap();
        let child = Command::new(MOSQUITTO)
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start mosquitto");
        self.child = Some(child);
        let addr: SocketAddr = format!("127.0.0.1:{}", self.port).parse().unwrap();
        let deadline = tokio::time::Instant::now() + WAIT;
        while TcpStream::connect(addr).await.is_err() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "mosquitto did not listen on {addr}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stop it with SIGTERM (it saves its sessions) and wait until it has exited.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
            let _ = child.wait();
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

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A Tern broker in process on an ephemeral port, state in memory.
pub async fn tern() -> BrokerHandle {
    BrokerBuilder::new()
        .listen("127.0.0.1:0".parse().unwrap())
        .configure(|c| c.sys_interval_secs = 0)
        .bind()
        .await
        .unwrap()
        .spawn()
}

/// A bridge named `name` to `remote` that reconnects quickly.
pub fn bridge(name: &str, remote: &str, version: &str) -> BridgeConfig {
    BridgeConfig::new(name, remote).with(|c| {
        c.version = version.to_string();
        c.reconnect_min_ms = 50;
        c.reconnect_max_ms = 500;
        c.keep_alive_secs = 5;
    })
}

/// Start `config` on `broker` and wait until its local session subscribed and it is
/// connected to the remote.
pub async fn start_bridge(broker: &BrokerHandle, config: BridgeConfig) -> Bridges {
    let local_id = config.local_client_id();
    let subscriptions = config.topics.iter().filter(|t| t.direction.is_out()).count();
    let bridges = Bridges::start(broker.internal(), &[config]).await.unwrap();
    wait_for("the bridge to connect", || {
        let s = &bridges.states()[0];
        s.connected
            && broker
                .session(&local_id)
                .is_some_and(|i| i.subscriptions.len() == subscriptions)
    })
    .await;
    bridges
}

pub fn state(bridges: &Bridges) -> BridgeState {
    bridges.states().remove(0)
}

/// Poll `ready` every 10 ms until it holds; panic after [`WAIT`].
pub async fn wait_for(what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !ready() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A client of `url` (`mqtt://HOST:PORT`) with a persistent session that reconnects quickly.
pub async fn client(url: &str, id: &str, version: ProtocolVersion) -> (Client, Events) {
    let mut o = Options::new(url)
        .client_id(id)
        .version(version)
        .clean_start(false)
        .reconnect(Reconnect::with_delays(
            Duration::from_millis(50),
            Duration::from_millis(300),
        ))
        .event_capacity(1024);
    if version == ProtocolVersion::V5 {
        o = o.session_expiry(600);
    }
    Client::connect(o).await.unwrap()
}

pub fn url_of(broker: &BrokerHandle) -> String {
    format!("mqtt://{}", broker.addr())
}

/// The next message within [`WAIT`].
pub async fn next(events: &mut Events) -> Message {
    tokio::time::timeout(WAIT, events.next_message())
        .await
        .expect("a message in time")
        .expect("client running")
}

/// Messages that arrive within `quiet`, until none does.
pub async fn drain(events: &mut Events, quiet: Duration) -> Vec<Message> {
    let mut out = Vec::new();
    while let Ok(Some(m)) = tokio::time::timeout(quiet, events.next_message()).await {
        out.push(m);
    }
    out
}
