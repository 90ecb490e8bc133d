//! A broker with its HTTP endpoint on ephemeral ports, MQTT clients, and a minimal HTTP
//! client (HTTP/1.0, one request per connection).

use std::net::SocketAddr;
use std::time::Duration;

use tern_admin::HttpServer;
use tern_broker::{BrokerBuilder, BrokerHandle, HttpConfig};
use tern_client::{Client, Events, Options, Reconnect};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub struct Tern {
    pub broker: BrokerHandle,
    pub http: SocketAddr,
}

impl Tern {
    pub fn mqtt(&self) -> SocketAddr {
        self.broker.addr()
    }
}

/// A broker in memory on 127.0.0.1:0 with its HTTP endpoint on 127.0.0.1:0.
pub async fn start() -> Tern {
    start_with(|_, _| {}).await
}

/// The same, with changes to the broker's configuration and the `[http]` table.
pub async fn start_with(f: impl FnOnce(&mut tern_broker::Config, &mut HttpConfig)) -> Tern {
    let mut http = HttpConfig::default();
    http.set_listen(Some("127.0.0.1:0".parse().unwrap()));
    let mut changed = None;
    let broker = BrokerBuilder::new()
        .listen("127.0.0.1:0".parse().unwrap())
        .configure(|c| {
            c.sys_interval_secs = 0;
            f(c, &mut http);
            changed = Some(http.clone());
        })
        .bind()
        .await
        .unwrap()
        .spawn();
    let http = changed.unwrap();
    let server = HttpServer::bind(broker.admin(), &http).await.unwrap();
    let addr = server.local_addr();
    tokio::spawn(server.run());
    Tern { broker, http: addr }
}

/// An MQTT 5.0 client of `t`, without reconnection.
pub async fn client(t: &Tern, id: &str) -> (Client, Events) {
    Client::connect(
        Options::new(format!("mqtt://{}", t.mqtt()))
            .client_id(id)
            .connect_timeout(Duration::from_secs(3))
            .reconnect(Reconnect::disabled()),
    )
    .await
    .unwrap()
}

/// An HTTP answer.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: String,
    pub body: String,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// One request; `headers` are extra header lines (`Name: value`).
pub async fn request(addr: SocketAddr, method: &str, path: &str, headers: &[&str], body: &str) -> Answer {
    let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
        // Not listening (yet): status 0.
        return Answer {
            status: 0,
            headers: String::new(),
            body: String::new(),
        };
    };
    let mut req = format!("{method} {path} HTTP/1.0\r\nContent-Length: {}\r\n", body.len());
    if !headers
        .iter()
        .any(|h| h.to_ascii_lowercase().starts_with("host:"))
    {
        req.push_str(&format!("Host: {addr}\r\n"));
    }
    if !body.is_empty() {
        req.push_str("Content-Type: application/json\r\n");
    }
    for h in headers {
        req.push_str(h);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut raw))
        .await
        .expect("an answer within 10 s")
        .unwrap();
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Answer {
        status,
        headers: head.to_string(),
        body: body.to_string(),
    }
}

pub async fn get(addr: SocketAddr, path: &str) -> Answer {
    request(addr, "GET", path, &[], "").await
}

/// Poll `f` every 50 ms until it gives `Some`, for at most `secs` seconds.
pub async fn eventually<T, F: std::future::Future<Output = Option<T>>>(
    secs: u64,
    what: &str,
    mut f: impl FnMut() -> F,
) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A free TCP port on 127.0.0.1 (for a child process that must be told its port).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A fresh directory under the system's temporary directory, removed on drop.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("tern-admin-{tag}-{}-{}", std::process::id(), free_port()));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child process killed on drop.
pub struct Child(pub std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
