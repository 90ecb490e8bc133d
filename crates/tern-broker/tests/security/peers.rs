//! Real peers for the JWT and HTTP hook tests, from `auth_peer.py` (pyjwt and cryptography,
//! installed by `scripts/test`): keys and tokens made with an independent implementation,
//! and an HTTP/1.1 service (JWKS and the hook) on a free port.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::support::TempDir;

fn script() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/security/auth_peer.py")
}

/// Seconds since 1970, now.
pub fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

/// A directory with RSA, EC P-256, Ed25519 key pairs, an HMAC secret and a JWKS.
pub struct Keys {
    pub dir: TempDir,
}

impl Keys {
    pub fn new(tag: &str) -> Keys {
        let dir = TempDir::new(tag);
        let out = Command::new("python3")
            .arg(script())
            .arg("keys")
            .arg(&dir.0)
            .output()
            .expect("python3 runs");
        assert!(
            out.status.success(),
            "auth_peer.py keys failed (is pyjwt[crypto] installed? ./scripts/test installs it): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Keys { dir }
    }

    /// Sign tokens: each spec is `{"name", "alg", "key", "claims", "kid"?}`.
    pub fn tokens(&self, specs: serde_json::Value) -> HashMap<String, String> {
        let out = Command::new("python3")
            .arg(script())
            .arg("tokens")
            .arg(&self.dir.0)
            .arg(specs.to_string())
            .output()
            .expect("python3 runs");
        assert!(
            out.status.success(),
            "auth_peer.py tokens: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    pub fn path(&self, name: &str) -> std::path::PathBuf {
        self.dir.path(name)
    }
}

/// The HTTP service of `auth_peer.py serve`, stopped on drop.
pub struct Service {
    child: Child,
    pub port: u16,
}

impl Service {
    /// Serve `dir` (its `jwks.json`) and the hook.
    pub fn start(dir: &Path) -> Service {
        Service::start_with(dir, None)
    }

    /// The same over TLS with this certificate and key (PEM files).
    pub fn start_tls(dir: &Path, cert: &Path, key: &Path) -> Service {
        Service::start_with(dir, Some((cert, key)))
    }

    fn start_with(dir: &Path, tls: Option<(&Path, &Path)>) -> Service {
        let mut cmd = Command::new("python3");
        cmd.arg(script()).arg("serve").arg(dir);
        if let Some((cert, key)) = tls {
            cmd.arg(cert).arg(key);
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 runs");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .trim()
            .strip_prefix("PORT ")
            .unwrap_or_else(|| panic!("auth_peer.py serve said {line:?}"))
            .parse()
            .unwrap();
        Service { child, port }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// The https URL of `path`, by the name the test certificates carry.
    pub fn https_url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.port)
    }

    /// `{"requests": n, "connections": n}` the service has seen.
    pub async fn stats(&self) -> (u64, u64) {
        let v = self.stats_json().await;
        (
            v["requests"].as_u64().unwrap(),
            v["connections"].as_u64().unwrap(),
        )
    }

    /// The ACL questions the service was asked, in order: (action, topic).
    pub async fn acl_asked(&self) -> Vec<(String, String)> {
        let v = self.stats_json().await;
        v["acl"]
            .as_array()
            .unwrap()
            .iter()
            .map(|q| {
                (
                    q[0].as_str().unwrap().to_string(),
                    q[1].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }

    async fn stats_json(&self) -> serde_json::Value {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .unwrap();
        s.write_all(b"GET /stats HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).await.unwrap();
        let body = text.split("\r\n\r\n").nth(1).unwrap();
        serde_json::from_str(body).unwrap()
    }

    /// Stop the service now.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.stop();
    }
}
