//! Runs the built `tern` binary: `tern pub` and `tern sub` against a broker
//! started in this process on port 0. Every wait is bounded.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use tern_broker::{BrokerBuilder, BrokerHandle};

mod logs;
mod operate;

const WAIT: Duration = Duration::from_secs(10);
const TERN: &str = env!("CARGO_BIN_EXE_tern");

/// Our broker on 127.0.0.1:0, on a runtime of its own.
struct Broker {
    handle: Option<BrokerHandle>,
    rt: tokio::runtime::Runtime,
    port: String,
}

impl Broker {
    fn start() -> Broker {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let handle = rt.block_on(async {
            BrokerBuilder::new()
                .listen("127.0.0.1:0".parse().unwrap())
                .bind()
                .await
                .unwrap()
                .spawn()
        });
        let port = handle.addr().port().to_string();
        Broker {
            handle: Some(handle),
            rt,
            port,
        }
    }

    /// `tern <cmd> -h 127.0.0.1 -p PORT args...`
    fn cmd(&self, sub: &str, args: &[&str]) -> Command {
        let mut c = Command::new(TERN);
        c.arg(sub).args(["-h", "127.0.0.1", "-p", &self.port]).args(args);
        c
    }

    /// Run `tern pub` to completion; panics unless it succeeds.
    fn publish(&self, args: &[&str]) {
        let out = run(self.cmd("pub", args), None);
        assert!(
            out.status.success(),
            "tern pub {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let handle = self.handle.take();
        self.rt.block_on(async move { drop(handle) });
    }
}

/// Run to completion with `stdin`, killing the process after [`WAIT`].
fn run(mut cmd: Command, stdin: Option<&[u8]>) -> Output {
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().unwrap();
        pipe.write_all(input).unwrap();
    }
    wait(child)
}

fn wait(mut child: Child) -> Output {
    let deadline = Instant::now() + WAIT;
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "process did not finish in {WAIT:?}; stderr: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A running `tern sub` whose stdout is read line by line.
struct Sub {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Sub {
    fn start(broker: &Broker, args: &[&str]) -> Sub {
        let mut child = broker
            .cmd("sub", args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Sub { child, lines }
    }

    /// Publish with `probe` until the subscriber prints something: it is then
    /// subscribed. Returns the first line.
    fn ready(&self, mut probe: impl FnMut()) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            probe();
            if let Ok(line) = self.lines.recv_timeout(Duration::from_millis(200)) {
                return line;
            }
            assert!(Instant::now() < deadline, "tern sub never received anything");
        }
    }

    fn line(&self) -> String {
        self.lines.recv_timeout(WAIT).expect("a line from tern sub")
    }

    /// Wait for exit; returns the status.
    fn finish(mut self) -> ExitStatus {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("tern sub did not exit in {WAIT:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Sub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn pub_to_sub_round_trip_in_both_versions() {
    let b = Broker::start();
    for v in ["311", "5"] {
        let sub = Sub::start(&b, &["-V", v, "-t", "rt/#", "-q", "1", "-C", "1", "-v"]);
        let line = sub.ready(|| b.publish(&["-V", v, "-t", "rt/x", "-q", "1", "-m", "hello world"]));
        assert_eq!(line, "rt/x hello world", "MQTT {v}");
        assert!(sub.finish().success());
    }
}

#[test]
fn qos2_with_v5_properties_printed_as_json() {
    let b = Broker::start();
    let sub = Sub::start(&b, &["-t", "j/#", "-q", "2", "-C", "1", "--json"]);
    let line = sub.ready(|| {
        b.publish(&[
            "-t",
            "j/1",
            "-q",
            "2",
            "-m",
            "{\"v\":1}",
            "--user-property",
            "a=1",
            "--user-property",
            "b=x=y",
            "--content-type",
            "application/json",
            "--message-expiry",
            "60",
            "--response-topic",
            "j/reply",
            "--correlation-data",
            "c-1",
        ])
    });
    for part in [
        r#""topic":"j/1""#,
        r#""qos":2"#,
        r#""retain":false"#,
        r#""payload":"{\"v\":1}""#,
        r#""content_type":"application/json""#,
        r#""response_topic":"j/reply""#,
        r#""correlation_data":"c-1""#,
        r#""user_properties":[["a","1"],["b","x=y"]]"#,
        r#""message_expiry_interval":"#,
    ] {
        assert!(line.contains(part), "{part} missing in {line}");
    }
    assert!(sub.finish().success());
}

#[test]
fn message_from_file_stdin_lines_stdin_file_and_null() {
    let b = Broker::start();
    let dir = std::env::temp_dir().join(format!("tern-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("payload.txt");
    std::fs::write(&file, "from a file").unwrap();

    let sub = Sub::start(&b, &["-t", "src/#", "-q", "1", "-C", "6", "-v"]);
    sub.ready(|| b.publish(&["-t", "src/probe", "-m", "p"]));
    b.publish(&["-t", "src/file", "-q", "1", "-f", file.to_str().unwrap()]);
    let out = run(
        b.cmd("pub", &["-t", "src/line", "-q", "1", "-l"]),
        Some(b"one\ntwo\n"),
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = run(b.cmd("pub", &["-t", "src/all", "-s"]), Some(b"all\nof it"));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    b.publish(&["-t", "src/null", "-n"]);
    let got: Vec<String> = (0..6).map(|_| sub.line()).collect();
    // The probe may have been received more than once before the others.
    let got: Vec<&str> = got
        .iter()
        .map(String::as_str)
        .filter(|l| *l != "src/probe p")
        .collect();
    assert_eq!(
        got[..5],
        [
            "src/file from a file",
            "src/line one",
            "src/line two",
            "src/all all",
            "of it"
        ]
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn retained_message_and_persistent_session_with_count() {
    let b = Broker::start();
    b.publish(&["-t", "ret/a", "-r", "-q", "1", "-m", "kept"]);
    // No race: the retained message is sent at subscription time.
    let sub = Sub::start(&b, &["-t", "ret/#", "-C", "1", "-v"]);
    assert_eq!(sub.line(), "ret/a kept");
    assert!(sub.finish().success());

    // -c with -x: the session (and its queued QoS 1 message) survives between runs.
    for v in ["311", "5"] {
        let id = format!("persist-{v}");
        let mut first: Vec<&str> = vec!["-V", v, "-c", "-i", &id, "-t", "queued", "-q", "1", "-W", "1"];
        if v == "5" {
            first.extend(["-x", "60"]);
        }
        let status = Sub::start(&b, &first).finish();
        assert_eq!(status.code(), Some(27), "-W expires with status 27");
        b.publish(&["-V", v, "-t", "queued", "-q", "1", "-m", "while away"]);
        let mut again = first.clone();
        again.truncate(again.len() - 2);
        let again = [again, vec!["-C", "1"]].concat();
        let sub = Sub::start(&b, &again);
        assert_eq!(sub.line(), "while away", "MQTT {v}");
        assert!(sub.finish().success());
    }
}

#[test]
fn will_is_published_when_tern_sub_dies() {
    let b = Broker::start();
    let watcher = Sub::start(&b, &["-t", "will/#", "-t", "ready", "-v"]);
    watcher.ready(|| b.publish(&["-t", "ready", "-m", "1"]));
    let dying = Sub::start(
        &b,
        &[
            "-t",
            "dying/ping",
            "--will-topic",
            "will/dying",
            "--will-payload",
            "gone",
            "--will-qos",
            "1",
        ],
    );
    dying.ready(|| b.publish(&["-t", "dying/ping", "-m", "are you there"]));
    drop(dying); // SIGKILL: no DISCONNECT, so the broker publishes the will.
    let deadline = Instant::now() + WAIT;
    loop {
        let line = watcher.line();
        if line == "will/dying gone" {
            break;
        }
        assert!(Instant::now() < deadline, "no will");
    }
}

#[test]
fn bad_arguments_give_one_line_naming_the_flag() {
    let cases: &[(&[&str], &str)] = &[
        (&["pub", "-t", "a", "-m", "x", "-q", "3"], "--qos"),
        (&["pub", "-t", "a"], "--message"),
        (&["pub", "-m", "x"], "--topic"),
        (&["pub", "-t", "a/#", "-m", "x"], "--topic"),
        (&["pub", "-t", "a", "-m", "x", "-V", "6"], "--protocol-version"),
        (&["pub", "-t", "a", "-m", "x", "-p", "port"], "--port"),
        (
            &["pub", "-t", "a", "-m", "x", "--user-property", "novalue"],
            "--user-property",
        ),
        (
            &["pub", "-t", "a", "-m", "x", "-V", "311", "--content-type", "t"],
            "--content-type",
        ),
        (
            &["pub", "-t", "a", "-m", "x", "-f", "/nonexistent/file"],
            "--file",
        ),
        (&["pub", "-t", "a", "-m", "x", "--will-qos", "1"], "--will-topic"),
        (&["sub"], "--topic"),
        (&["sub", "-t", "a/#/b"], "--topic"),
        (&["sub", "-t", "a", "-v", "--json"], "--json"),
        (&["sub", "-t", "a", "-V", "311", "--no-local"], "--no-local"),
        (&["sub", "-t", "a", "--retain-handling", "3"], "--retain-handling"),
        (&["sub", "-t", "a", "-C", "many"], "--count"),
        (&["sub", "-t", "a", "-c"], "--disable-clean-session"),
    ];
    for (args, flag) in cases {
        let out = run(
            {
                let mut c = Command::new(TERN);
                c.args(*args).args(["-p", "1"]);
                c
            },
            None,
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert_eq!(
            stderr.trim_end().lines().count(),
            1,
            "{args:?}: one line expected, got {stderr:?}"
        );
        assert!(stderr.contains(flag), "{args:?}: {stderr:?} does not name {flag}");
    }
}

#[test]
fn unreachable_broker_is_a_one_line_error() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
        .to_string();
    let mut c = Command::new(TERN);
    c.args(["pub", "-h", "127.0.0.1", "-p", &port, "-t", "a", "-m", "x"]);
    let out = run(c, None);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("cannot connect"), "{stderr}");
}

/// A `tern broker` process, killed on drop.
struct BrokerProcess {
    child: Child,
    port: String,
}

impl BrokerProcess {
    fn start(args: &[&str]) -> BrokerProcess {
        let mut child = Command::new(TERN)
            .args([
                "broker",
                "--listen",
                "127.0.0.1:0",
                "--in-memory",
                "--log",
                "warn",
            ])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let line = rx.recv_timeout(WAIT).expect("tern broker prints its address");
        let port = line.rsplit(':').next().unwrap().trim().to_string();
        BrokerProcess { child, port }
    }

    fn hangup(&self) {
        let status = Command::new("kill")
            .args(["-HUP", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// `tern pub` as `user`/`password`; whether it succeeded.
    fn publish_as(&self, user: &str, password: &str) -> bool {
        let mut c = Command::new(TERN);
        c.args([
            "pub",
            "-h",
            "127.0.0.1",
            "-p",
            &self.port,
            "-u",
            user,
            "-P",
            password,
        ])
        .args(["-t", "t", "-m", "x", "--connect-timeout", "3"]);
        run(c, None).status.success()
    }

    /// Publish until the answer is `expected` (a reload is asynchronous).
    fn eventually(&self, user: &str, password: &str, expected: bool) {
        let deadline = Instant::now() + WAIT;
        while self.publish_as(user, password) != expected {
            assert!(
                Instant::now() < deadline,
                "{user}/{password} never became {expected}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `tern passwd add/update/delete` manage the password file; `tern broker` reads it
/// again on SIGHUP without a restart.
#[test]
fn passwd_manages_users_and_sighup_reloads_them() {
    let dir = std::env::temp_dir().join(format!("tern-cli-passwd-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("passwd");
    let file_s = file.to_str().unwrap();
    let passwd = |args: &[&str], stdin: Option<&[u8]>| {
        let mut c = Command::new(TERN);
        c.arg("passwd").args(args);
        run(c, stdin)
    };
    let out = passwd(&["add", file_s, "alice", "--iterations", "1000"], Some(b"one\n"));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.starts_with("alice:$pbkdf2-sha512$i=1000$"), "{text}");
    assert!(!text.contains("one"), "{text}");
    let out = passwd(&["add", file_s, "alice", "-p", "x", "--iterations", "1000"], None);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("already exists") && err.lines().count() == 1,
        "{err}"
    );

    let broker = BrokerProcess::start(&["--password-file", file_s, "--no-anonymous"]);
    assert!(broker.publish_as("alice", "one"));
    assert!(!broker.publish_as("alice", "two"));

    let out = passwd(
        &["update", file_s, "alice", "-p", "two", "--iterations", "1000"],
        None,
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    broker.hangup();
    broker.eventually("alice", "two", true);
    assert!(!broker.publish_as("alice", "one"));

    // A broken file at SIGHUP keeps the one in force.
    std::fs::write(&file, "alice\n").unwrap();
    broker.hangup();
    std::thread::sleep(Duration::from_millis(200));
    assert!(broker.publish_as("alice", "two"));

    let out = passwd(&["add", file_s, "bob", "-p", "b", "--iterations", "1000"], None);
    assert!(!out.status.success(), "a malformed file is not rewritten");
    std::fs::remove_file(&file).unwrap();
    let out = passwd(&["add", file_s, "bob", "-p", "b", "--iterations", "1000"], None);
    assert!(out.status.success());
    let out = passwd(&["delete", file_s, "bob"], None);
    assert!(out.status.success());
    broker.hangup();
    broker.eventually("alice", "two", false);
    let _ = std::fs::remove_dir_all(&dir);
}

/// An HS256 token for `sub` signed with `secret`, made by pyjwt (installed by scripts/test).
fn hs256_token(sub: &str, secret: &str) -> String {
    let out = Command::new("python3")
        .args([
            "-c",
            "import jwt, sys; print(jwt.encode({'sub': sys.argv[1]}, sys.argv[2], algorithm='HS256'))",
            sub,
            secret,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pyjwt: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// `tern broker --config FILE` reads the `[auth]` table again on SIGHUP: a new JWT secret
/// takes effect without a restart; a file that does not parse keeps the one in force.
#[test]
fn sighup_reloads_the_auth_table() {
    let dir = std::env::temp_dir().join(format!("tern-cli-auth-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("tern.toml");
    let config = |secret: &str| {
        format!("allow_anonymous = false\n[auth.jwt]\nalgorithms = [\"HS256\"]\nsecret = \"{secret}\"\nrequire_exp = false\n")
    };
    std::fs::write(&file, config("first secret")).unwrap();
    let broker = BrokerProcess::start(&["--config", file.to_str().unwrap()]);
    let one = hs256_token("dev", "first secret");
    let two = hs256_token("dev", "second secret");
    assert!(broker.publish_as("dev", &one));
    assert!(!broker.publish_as("dev", &two));
    std::fs::write(&file, config("second secret")).unwrap();
    broker.hangup();
    broker.eventually("dev", &two, true);
    assert!(!broker.publish_as("dev", &one));
    std::fs::write(&file, "[auth.jwt]\nalgorithms = 7\n").unwrap();
    broker.hangup();
    std::thread::sleep(Duration::from_millis(200));
    assert!(broker.publish_as("dev", &two));
    let _ = std::fs::remove_dir_all(&dir);
}

/// SIGHUP reloads a TLS listener's certificate and key: a new connection sees the new
/// certificate, a connection made before keeps working, and a key that does not match its
/// certificate keeps the pair in force (logged).
#[test]
fn sighup_reloads_tls_certificates() {
    let dir = std::env::temp_dir().join(format!("tern-cli-tls-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    certificates(&dir, &["a", "b", "c"]);
    let path = |name: &str| dir.join(name).to_str().unwrap().to_string();
    let install = |cert: &str, key: &str| {
        std::fs::copy(dir.join(cert), dir.join("server.pem")).unwrap();
        std::fs::copy(dir.join(key), dir.join("server.key")).unwrap();
    };
    install("a.pem", "a.key");
    let config = dir.join("tern.toml");
    std::fs::write(
        &config,
        format!(
            "[[listener]]\nkind = \"tls\"\naddress = \"127.0.0.1:0\"\ncert = \"{}\"\nkey = \"{}\"\n",
            path("server.pem"),
            path("server.key")
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.join("broker.log")).unwrap();
    let child = Command::new(TERN)
        .args([
            "broker",
            "--config",
            &path("tern.toml"),
            "--in-memory",
            "--no-http",
            "--log",
            "info",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .unwrap();
    let mut broker = Killed(child);
    let stdout = broker.0.stdout.take().unwrap();
    let port = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .find_map(|l| {
            l.strip_suffix(" (tls)")
                .map(|a| a.rsplit(':').next().unwrap().to_string())
        })
        .expect("tern broker prints its TLS address");
    let url = format!("mqtts://127.0.0.1:{port}");
    // Connects over TLS trusting only `ca` (each certificate is its own CA).
    let publish = |ca: &str, m: &str| {
        let mut c = Command::new(TERN);
        c.args([
            "pub",
            "--url",
            &url,
            "--cafile",
            &path(ca),
            "-t",
            "t",
            "-m",
            m,
            "-q",
            "1",
        ])
        .args(["--connect-timeout", "3"]);
        run(c, None).status.success()
    };
    let hangup = || {
        let status = Command::new("kill")
            .args(["-HUP", &broker.0.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    };
    // A subscriber connected before the reload: once it has received a message, it is there.
    let mut sub = Command::new(TERN)
        .args([
            "sub",
            "--url",
            &url,
            "--cafile",
            &path("a.pem"),
            "-t",
            "t",
            "-q",
            "1",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lines = lines_of(sub.stdout.take().unwrap());
    let deadline = Instant::now() + WAIT;
    loop {
        assert!(publish("a.pem", "before"));
        if lines.recv_timeout(Duration::from_millis(200)).as_deref() == Ok("before") {
            break;
        }
        assert!(Instant::now() < deadline, "the subscriber never got a message");
    }
    assert!(!publish("b.pem", "x"), "b is not in force yet");
    install("b.pem", "b.key");
    hangup();
    let deadline = Instant::now() + WAIT;
    while !publish("b.pem", "probe") {
        assert!(
            Instant::now() < deadline,
            "the new certificate never came into force"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!publish("a.pem", "x"), "new connections see the new certificate");
    // The connection made before the reload gets the message over its old TLS session.
    let deadline = Instant::now() + WAIT;
    while lines
        .recv_timeout(WAIT)
        .expect("the old connection still receives")
        != "probe"
    {
        assert!(Instant::now() < deadline);
    }
    let _ = sub.kill();
    let _ = sub.wait();
    // A key that does not match its certificate: b stays in force, and the reason is logged.
    install("a.pem", "c.key");
    hangup();
    std::thread::sleep(Duration::from_millis(300));
    assert!(publish("b.pem", "still b"));
    assert!(!publish("a.pem", "x"));
    let text = std::fs::read_to_string(dir.join("broker.log")).unwrap();
    assert!(
        text.contains("KeyMismatch") && text.contains("keeps its certificate"),
        "{text}"
    );
    drop(broker);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Self-signed certificates for localhost and 127.0.0.1 (`certs.py`): DIR/NAME.pem and
/// DIR/NAME.key for each name.
fn certificates(dir: &std::path::Path, names: &[&str]) {
    let certs = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/cli/certs.py");
    let mut c = Command::new("python3");
    c.arg(certs).arg(dir).args(names);
    let out = run(c, None);
    assert!(
        out.status.success(),
        "certs.py: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The lines `r` gives, through a channel (a thread reads them).
fn lines_of(r: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// A child process, killed on drop.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A bad `[[bridge]]` table stops `tern broker` at start with one line naming the bridge and
/// the key.
#[test]
fn a_bad_bridge_table_stops_the_broker_with_one_line() {
    let dir = std::env::temp_dir().join(format!("tern-cli-bridge-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cases: [(&str, &str); 3] = [
        ("remote = \"amqp://h:1\"", "`remote`: unknown scheme `amqp`"),
        (
            "remote = \"mqtts://h:1\"\nca_file = \"/nonexistent/ca.pem\"",
            "`ca_file`: cannot read",
        ),
        (
            "remote = \"mqtt://h:1\"\n[[bridge.topic]]\nfilter = \"a/#/b\"\ndirection = \"out\"",
            "`topic[0].filter`",
        ),
    ];
    for (i, (table, expected)) in cases.iter().enumerate() {
        let config = dir.join(format!("bad{i}.toml"));
        let rule = if table.contains("[[bridge.topic]]") {
            ""
        } else {
            "\n[[bridge.topic]]\nfilter = \"a/#\"\ndirection = \"out\"\n"
        };
        std::fs::write(
            &config,
            format!("http = \"\"\n[[bridge]]\nname = \"cloud\"\n{table}\n{rule}"),
        )
        .unwrap();
        let mut c = Command::new(TERN);
        c.args(["broker", "--listen", "127.0.0.1:0", "--in-memory", "--config"])
            .arg(&config);
        let out = run(c, None);
        assert!(!out.status.success(), "{table}: the broker started");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
        assert!(
            stderr.contains("bridge \"cloud\"") && stderr.contains(expected),
            "{table}: {stderr}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
