//! `tern broker`'s HTTP endpoint from the command line: the address it prints, the refusal
//! of a public address without credentials, and `tern trace`.

use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::{lines_of, run, Killed, TERN, WAIT};

/// Spawn `tern ARGS` and hand its stdout lines to a channel.
fn spawn_lines(args: &[&str]) -> (Killed, mpsc::Receiver<String>) {
    let mut child = Command::new(TERN)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let rx = lines_of(child.stdout.take().unwrap());
    (Killed(child), rx)
}

/// Lines until one contains `needle`.
fn until(rx: &mpsc::Receiver<String>, needle: &str) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) if l.contains(needle) => return l,
            Ok(_) => {}
            Err(_) => panic!("no line with {needle:?} within {WAIT:?}"),
        }
    }
}

/// `tern broker` in memory with its HTTP endpoint on free ports, and `extra` arguments; the
/// process, its MQTT port and its HTTP URL (`http://127.0.0.1:PORT`).
fn broker_with_http(extra: &[&str]) -> (Killed, String, String) {
    let mut args = vec![
        "broker",
        "--in-memory",
        "--listen",
        "127.0.0.1:0",
        "--http",
        "127.0.0.1:0",
        "--log",
        "warn",
    ];
    args.extend_from_slice(extra);
    let (broker, lines) = spawn_lines(&args);
    let mqtt = until(&lines, "tern broker listening on");
    let port = mqtt.rsplit(':').next().unwrap().trim().to_string();
    let http = until(&lines, "tern http listening on http://127.0.0.1:");
    let url = http.rsplit(' ').next().unwrap().to_string();
    (broker, port, url)
}

#[test]
fn broker_prints_its_http_address_and_tern_trace_shows_a_clients_packets() {
    let (_broker, port, url) = broker_with_http(&[]);

    let (_trace, traced) = spawn_lines(&["trace", "cli-traced", "--http", &url]);
    until(&traced, "tracing cli-traced");
    let mut c = Command::new(TERN);
    c.args([
        "pub",
        "-p",
        &port,
        "-i",
        "cli-traced",
        "-t",
        "cli/t",
        "-m",
        "seen",
        "-q",
        "1",
    ]);
    let out = run(c, None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let line = until(&traced, "PUBLISH");
    assert!(
        line.contains("in  PUBLISH") && line.contains("topic=cli/t") && line.contains("qos=1"),
        "{line}"
    );
    assert!(line.contains("payload(4)=\"seen\""), "{line}");
    let ack = until(&traced, "PUBACK");
    assert!(ack.contains("out PUBACK"), "{ack}");
}

#[test]
fn a_public_http_address_without_credentials_stops_the_broker() {
    let mut c = Command::new(TERN);
    c.args([
        "broker",
        "--in-memory",
        "--listen",
        "127.0.0.1:0",
        "--http",
        "0.0.0.0:0",
    ]);
    let started = Instant::now();
    let out = run(c, None);
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not a loopback address") && err.contains("http.admins"),
        "{err}"
    );
}

/// `tern trace --http https://... --cafile CA` against an HTTPS endpoint (`[http]` with `cert`
/// and `key`); a CA that did not sign the endpoint's certificate is a one-line error.
#[test]
fn tern_trace_over_https() {
    let dir = std::env::temp_dir().join(format!("tern-cli-trace-tls-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    super::certificates(&dir, &["http", "other"]);
    let path = |name: &str| dir.join(name).to_str().unwrap().to_string();
    std::fs::write(
        dir.join("tern.toml"),
        format!(
            "listen = [\"127.0.0.1:0\"]\n[http]\nlisten = \"127.0.0.1:0\"\ncert = \"{}\"\nkey = \"{}\"\n",
            path("http.pem"),
            path("http.key")
        ),
    )
    .unwrap();
    let config = path("tern.toml");
    let (_broker, lines) = spawn_lines(&["broker", "--in-memory", "--config", &config, "--log", "warn"]);
    let mqtt = until(&lines, "tern broker listening on");
    let port = mqtt.rsplit(':').next().unwrap().trim().to_string();
    let http = until(&lines, "tern http listening on https://127.0.0.1:");
    let url = http.rsplit(' ').next().unwrap().to_string();

    let mut c = Command::new(TERN);
    c.args(["trace", "x", "--http", &url, "--cafile", &path("other.pem")]);
    let out = run(c, None);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot reach") && err.trim_end().lines().count() == 1,
        "{err}"
    );

    let (_trace, traced) = spawn_lines(&["trace", "cli-tls", "--http", &url, "--cafile", &path("http.pem")]);
    until(&traced, "tracing cli-tls");
    let mut c = Command::new(TERN);
    c.args([
        "pub", "-p", &port, "-i", "cli-tls", "-t", "cli/tls", "-m", "over tls", "-q", "1",
    ]);
    let out = run(c, None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let line = until(&traced, "PUBLISH");
    assert!(line.contains("topic=cli/tls"), "{line}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// GET `path` from the HTTP endpoint at `url` (`http://127.0.0.1:PORT`); the body.
fn http_get(url: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let host = url.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(host).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(
        out.starts_with("HTTP/1.0 200") || out.starts_with("HTTP/1.1 200"),
        "{path}: {out}"
    );
    out.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default()
}

/// A bridge's state in `/metrics` and `GET /api/v1/bridges` (#16: "in the metrics/admin API
/// where those exist"): connected to a second `tern broker`, one QoS 1 message forwarded.
#[test]
fn bridge_state_is_in_the_metrics_and_the_admin_api() {
    let (_remote, remote_lines) =
        spawn_lines(&["broker", "--in-memory", "--listen", "127.0.0.1:0", "--no-http"]);
    let remote = until(&remote_lines, "tern broker listening on");
    let remote_port = remote.rsplit(':').next().unwrap().trim().to_string();
    let dir = std::env::temp_dir().join(format!("tern-cli-bridge-metrics-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("edge.toml");
    std::fs::write(
        &config,
        format!(
            "[[bridge]]\nname = \"cloud\"\nremote = \"mqtt://127.0.0.1:{remote_port}\"\nclient_id = \"edge-1\"\n\
             [[bridge.topic]]\nfilter = \"edge/#\"\ndirection = \"out\"\nqos = 1\n"
        ),
    )
    .unwrap();
    let (_edge, port, url) = broker_with_http(&["--config", config.to_str().unwrap()]);

    let mut c = Command::new(TERN);
    c.args(["pub", "-p", &port, "-t", "edge/t", "-m", "up", "-q", "1"]);
    let out = run(c, None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let deadline = Instant::now() + WAIT;
    let metrics = loop {
        let m = http_get(&url, "/metrics");
        if m.contains("tern_bridge_messages_forwarded_total{bridge=\"cloud\"} 1") {
            break m;
        }
        assert!(
            Instant::now() < deadline,
            "the bridge did not forward within {WAIT:?}:\n{m}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        metrics.contains("tern_bridge_connected{bridge=\"cloud\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("tern_bridge_outbox_messages{bridge=\"cloud\"} 0"),
        "{metrics}"
    );
    let api: serde_json::Value = serde_json::from_str(&http_get(&url, "/api/v1/bridges")).unwrap();
    let b = &api["items"][0];
    assert_eq!(b["name"], "cloud");
    assert_eq!(b["connected"], true);
    assert_eq!(
        (&b["reconnect_attempts"], &b["backoff_ms"]),
        (&0.into(), &0.into()),
        "{b}"
    );
    assert_eq!(b["forwarded"], 1);
    assert_eq!(b["remote"], format!("mqtt://127.0.0.1:{remote_port}"));
    let _ = std::fs::remove_dir_all(&dir);
}
