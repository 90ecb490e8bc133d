//! What `tern broker` writes: one start-up line per listener on stdout, a log on stderr
//! that has no colour codes off a terminal, JSON lines on request, and configuration
//! errors that point at the line and column of the bad value.

use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::{lines_of, run, TERN, WAIT};

/// A `tern broker` whose stdout and stderr are read line by line; killed on drop.
struct Logged {
    child: Child,
    stdout: mpsc::Receiver<String>,
    stderr: mpsc::Receiver<String>,
}

impl Logged {
    fn start(args: &[&str]) -> Logged {
        let mut child = Command::new(TERN)
            .args(["broker", "--in-memory", "--log", "info"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = lines_of(child.stdout.take().unwrap());
        let stderr = lines_of(child.stderr.take().unwrap());
        Logged {
            child,
            stdout,
            stderr,
        }
    }

    /// The port of a start-up line (`tern broker listening on 127.0.0.1:PORT [(kind)]`).
    fn port_of(line: &str) -> String {
        let addr = line.split_whitespace().nth(4).expect("an address");
        addr.rsplit(':').next().unwrap().to_string()
    }

    /// Stderr lines until one contains `needle` (bounded by [`WAIT`]).
    fn log_until(&self, needle: &str) -> Vec<String> {
        let deadline = Instant::now() + WAIT;
        let mut seen = Vec::new();
        while Instant::now() < deadline {
            if let Ok(line) = self.stderr.recv_timeout(Duration::from_millis(100)) {
                let done = line.contains(needle);
                seen.push(line);
                if done {
                    return seen;
                }
            }
        }
        panic!("no log line containing {needle:?} within {WAIT:?}; got {seen:#?}");
    }

    /// `tern pub` to `port` as client `id` and user `user`.
    fn publish(port: &str, id: &str, user: &str) {
        let mut c = Command::new(TERN);
        c.args(["pub", "-h", "127.0.0.1", "-p", port, "-V", "311"])
            .args(["-i", id, "-u", user, "-t", "t", "-m", "x"]);
        assert!(run(c, None).status.success());
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn one_start_up_line_per_listener_and_no_colour_codes_off_a_terminal() {
    let b = Logged::start(&[
        "--listen",
        "127.0.0.1:0",
        "--listen",
        "ws://127.0.0.1:0",
        "--http",
        "127.0.0.1:0",
    ]);
    let first = b.stdout.recv_timeout(WAIT).expect("a start-up line");
    let second = b.stdout.recv_timeout(WAIT).expect("a start-up line");
    let third = b.stdout.recv_timeout(WAIT).expect("the HTTP endpoint's line");
    assert!(
        first.starts_with("tern broker listening on 127.0.0.1:"),
        "{first}"
    );
    assert!(second.ends_with("(ws)"), "{second}");
    assert!(
        third.starts_with("tern http listening on http://127.0.0.1:"),
        "{third}"
    );
    let port = Logged::port_of(&first);
    Logged::publish(&port, "plain-1", "alice");
    let log = b.log_until("client disconnected");
    // Nothing more on stdout: each listener was announced once, and not again in the log.
    assert!(b.stdout.recv_timeout(Duration::from_millis(200)).is_err());
    assert!(!log.iter().any(|l| l.contains("listening")), "{log:#?}");
    // Standard error is a pipe here: no ANSI escape sequences.
    assert!(!log.iter().any(|l| l.contains('\u{1b}')), "{log:#?}");
    let connected = log.iter().find(|l| l.contains("client connected")).unwrap();
    for field in [
        "client_id=\"plain-1\"",
        "username=\"alice\"",
        "version=3.1.1",
        "listener=\"tcp 127.0.0.1:",
        "peer=127.0.0.1:",
    ] {
        assert!(connected.contains(field), "{field} missing from {connected}");
    }
}

/// Checks the JSON log of a broker on `port`: every line is an object, and connection
/// events carry client id, peer, listener, protocol version and user name as fields.
fn check_json_log(b: &Logged, port: &str) {
    Logged::publish(port, "json-1", "bob");
    let log = b.log_until("client disconnected");
    let events: Vec<serde_json::Value> = log
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    for message in ["client connected", "client disconnected"] {
        let e = events
            .iter()
            .find(|e| e["message"] == message)
            .unwrap_or_else(|| panic!("no {message:?} event in {events:#?}"));
        assert_eq!(e["level"], "INFO", "{e}");
        assert_eq!(e["client_id"], "json-1", "{e}");
        assert_eq!(e["username"], "bob", "{e}");
        assert_eq!(e["version"], "3.1.1", "{e}");
        assert_eq!(e["listener"], format!("tcp 127.0.0.1:{port}"), "{e}");
        assert!(e["peer"].as_str().unwrap().starts_with("127.0.0.1:"), "{e}");
        assert!(e["timestamp"].is_string(), "{e}");
    }
}

#[test]
fn log_format_json_from_the_flag_or_the_config_file() {
    let b = Logged::start(&["--listen", "127.0.0.1:0", "--log-format", "json"]);
    let port = Logged::port_of(&b.stdout.recv_timeout(WAIT).unwrap());
    check_json_log(&b, &port);

    let dir = std::env::temp_dir().join(format!("tern-log-json-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("tern.toml");
    std::fs::write(&config, "listen = [\"127.0.0.1:0\"]\nlog_format = \"json\"\n").unwrap();
    let b = Logged::start(&["--config", config.to_str().unwrap()]);
    let port = Logged::port_of(&b.stdout.recv_timeout(WAIT).unwrap());
    check_json_log(&b, &port);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn configuration_errors_give_the_file_line_and_column() {
    let dir = std::env::temp_dir().join(format!("tern-bad-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("tern.toml");
    let path = config.to_str().unwrap();
    std::fs::write(
        &config,
        "listen = [\"127.0.0.1:0\"]\n# the window\nmax_inflight = \"big\"\n",
    )
    .unwrap();
    let out = run(
        {
            let mut c = Command::new(TERN);
            c.args(["broker", "--in-memory", "--config", path]);
            c
        },
        None,
    );
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let expected = format!("{path}:3:16: invalid type: string \"big\", expected u16");
    assert!(stderr.contains(&expected), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");

    // A value of the right type that is out of range: the key's line.
    std::fs::write(&config, "\nmax_inflight = 0\n").unwrap();
    let mut c = Command::new(TERN);
    c.args(["broker", "--in-memory", "--config", path]);
    let stderr = String::from_utf8_lossy(&run(c, None).stderr).to_string();
    assert!(stderr.contains(&format!("{path}:2: `max_inflight`")), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A raw MQTT CONNECT (3.1.1, or 5.0 with a Session Expiry Interval) without clean start;
/// returns the CONNACK's session-present flag and reason code.
fn connect_persistent(port: &str, id: &str, v5: bool) -> (bool, u8) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(format!("127.0.0.1:{port}")).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', if v5 { 5 } else { 4 }, 0, 0, 0];
    if v5 {
        body.extend_from_slice(&[5, 0x11, 0xff, 0xff, 0xff, 0xff]);
    }
    body.extend_from_slice(&(id.len() as u16).to_be_bytes());
    body.extend_from_slice(id.as_bytes());
    let mut packet = vec![0x10, body.len() as u8];
    packet.extend_from_slice(&body);
    s.write_all(&packet).unwrap();
    let mut head = [0u8; 4];
    s.read_exact(&mut head).unwrap();
    assert_eq!(head[0], 0x20, "CONNACK");
    let answer = (head[2] & 1 == 1, head[3]);
    let _ = s.write_all(&[0xe0, 0]);
    answer
}

#[test]
fn max_sessions_from_the_config_file_refuses_the_next_client_id_and_lets_existing_ones_resume() {
    let dir = std::env::temp_dir().join(format!("tern-cli-max-sessions-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("tern.toml");
    std::fs::write(&file, "listen = [\"127.0.0.1:0\"]\nmax_sessions = 1000\n").unwrap();
    let b = Logged::start(&["--config", file.to_str().unwrap()]);
    let line = b.stdout.recv_timeout(WAIT).expect("a start-up line");
    let port = Logged::port_of(&line);
    for i in 0..1000 {
        assert_eq!(
            connect_persistent(&port, &format!("dev-{i}"), i % 2 == 0),
            (false, 0)
        );
    }
    // The 1,001st client identifier: 5.0 CONNACK 0x97 Quota exceeded, 3.1.1 0x03.
    assert_eq!(connect_persistent(&port, "dev-1000", true).1, 0x97);
    assert_eq!(connect_persistent(&port, "dev-1001", false).1, 0x03);
    b.log_until("max_sessions (1000) reached");
    // Existing sessions resume.
    assert_eq!(connect_persistent(&port, "dev-7", false), (true, 0));
    assert_eq!(connect_persistent(&port, "dev-8", true), (true, 0));
    let _ = std::fs::remove_dir_all(&dir);
}
