//! Passwords, the anonymous policy per listener, failure counting and logging,
//! and reloading the password file.

use std::sync::{Arc, Mutex};

use tern_broker::{BrokerBuilder, ListenerConfig, ListenerKind};
use tern_proto::ReasonCode;

use crate::support::*;

/// v5 [MQTT-3.1.4-2] / 3.1.1 section 3.1.4: failed authentication is answered with
/// CONNACK 0x86/0x87 (3.1.1: 0x04/0x05) and the connection closed (v5 [MQTT-3.2.2-7],
/// v3.1.1 [MQTT-3.2.2-5]); every failure is counted.
#[tokio::test]
async fn passwords_are_checked_and_failures_counted() {
    let dir = TempDir::new("pw");
    let file = dir.file(
        "passwd",
        &passwords(&[("alice", "wonderland"), ("bob", "builder")]),
    );
    let b = start(|b| {
        b.configure(|c| {
            c.password_file = Some(file);
            c.allow_anonymous = false;
        })
    })
    .await;
    let addr = b.addr();
    let cases: [(_, _, Option<&str>, Option<&str>, ReasonCode); 8] = [
        (V5, "ok5", Some("alice"), Some("wonderland"), ReasonCode::Success),
        (V3, "ok3", Some("bob"), Some("builder"), ReasonCode::Success),
        (
            V5,
            "wrong5",
            Some("alice"),
            Some("builder"),
            ReasonCode::BadUserNameOrPassword,
        ),
        (
            V5,
            "unknown5",
            Some("carol"),
            Some("wonderland"),
            ReasonCode::BadUserNameOrPassword,
        ),
        (
            V5,
            "nopw5",
            Some("alice"),
            None,
            ReasonCode::BadUserNameOrPassword,
        ),
        (V5, "anon5", None, None, ReasonCode::NotAuthorized),
        (
            V3,
            "wrong3",
            Some("alice"),
            Some("x"),
            ReasonCode::BadUserNameOrPassword,
        ),
        (V3, "anon3", None, None, ReasonCode::NotAuthorized),
    ];
    for (v, id, user, pw, expected) in cases {
        let (mut p, rc) = connect_tcp(addr, v, id, user, pw).await;
        assert_eq!(rc, expected, "{id}");
        if rc == ReasonCode::Success {
            p.sync().await;
        } else {
            assert_eq!(p.expect_closed().await, None, "{id}: closed after CONNACK");
        }
    }
    assert_eq!(b.security().auth_failures(), 6);
}

/// v5 allows a password without a user name (v3.1.1 [MQTT-3.1.2-22] is 3.1.1 only); with a
/// password file it cannot match anybody.
#[tokio::test]
async fn password_without_user_name_is_refused_in_v5() {
    let dir = TempDir::new("pw-nouser");
    let file = dir.file("passwd", &passwords(&[("alice", "a")]));
    let b = start(|b| b.configure(|c| c.password_file = Some(file))).await;
    let (_p, rc) = connect_tcp(b.addr(), V5, "x", None, Some("a")).await;
    assert_eq!(rc, ReasonCode::BadUserNameOrPassword);
}

/// RELIABILITY.md I3: `allow_anonymous` is per listener; a listener without its own
/// setting takes the global one.
#[tokio::test]
async fn anonymous_policy_per_listener() {
    let dir = TempDir::new("anon");
    let file = dir.file("passwd", &passwords(&[("alice", "a")]));
    let any = "127.0.0.1:0".parse().unwrap();
    let mut closed = ListenerConfig::new(ListenerKind::Tcp, any);
    closed.allow_anonymous = Some(false);
    let b = start(|b| b.listener(closed).configure(|c| c.password_file = Some(file))).await;
    let open = b.local_addrs()[0];
    let closed = b.local_addrs()[1];
    let (mut p, rc) = connect_tcp(open, V5, "anon-open", None, None).await;
    assert_eq!(rc, ReasonCode::Success);
    p.sync().await;
    let (_p, rc) = connect_tcp(closed, V5, "anon-closed", None, None).await;
    assert_eq!(rc, ReasonCode::NotAuthorized);
    let (_p, rc) = connect_tcp(closed, V3, "anon-closed3", None, None).await;
    assert_eq!(rc, ReasonCode::NotAuthorized);
    let (_p, rc) = connect_tcp(closed, V5, "alice", Some("alice"), Some("a")).await;
    assert_eq!(rc, ReasonCode::Success);
    // The password file applies on the open listener too: a wrong password is not "anonymous".
    let (_p, rc) = connect_tcp(open, V5, "alice2", Some("alice"), Some("b")).await;
    assert_eq!(rc, ReasonCode::BadUserNameOrPassword);
}

/// Without a password file user names cannot be checked: with anonymous access off,
/// nobody gets in through a user name alone.
#[tokio::test]
async fn no_password_file_and_no_anonymous_refuses_user_names() {
    let b = start(|b| b.configure(|c| c.allow_anonymous = false)).await;
    let (_p, rc) = connect_tcp(b.addr(), V5, "u", Some("anyone"), Some("x")).await;
    assert_eq!(rc, ReasonCode::BadUserNameOrPassword);
    let (_p, rc) = connect_tcp(b.addr(), V3, "u3", Some("anyone"), Some("x")).await;
    assert_eq!(rc, ReasonCode::BadUserNameOrPassword);
}

/// RELIABILITY.md I2: a password file with a malformed line stops the broker with
/// one line naming the setting, the file and the line.
#[tokio::test]
async fn malformed_password_file_refuses_to_start() {
    let dir = TempDir::new("pw-bad");
    let good = passwords(&[("alice", "a")]);
    let file = dir.file("passwd", &format!("{good}bob\n"));
    let e = BrokerBuilder::new()
        .listen("127.0.0.1:0".parse().unwrap())
        .configure(|c| c.password_file = Some(file.clone()))
        .bind()
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("`password_file`") && e.contains("line 2"), "{e}");
    assert!(!e.contains('\n'), "one line: {e}");
    let missing = dir.path("missing");
    let e = BrokerBuilder::new()
        .listen("127.0.0.1:0".parse().unwrap())
        .configure(|c| c.password_file = Some(missing))
        .bind()
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("`password_file`"), "{e}");
}

/// Reload: new passwords apply to the next CONNECT, connected clients stay; a broken
/// file keeps the one in force (RELIABILITY.md H7).
#[tokio::test]
async fn reload_replaces_passwords_without_dropping_clients() {
    let dir = TempDir::new("pw-reload");
    let file = dir.file("passwd", &passwords(&[("alice", "one")]));
    let b = start(|b| {
        let file = file.clone();
        b.configure(|c| {
            c.password_file = Some(file);
            c.allow_anonymous = false;
        })
    })
    .await;
    let (mut connected, rc) = connect_tcp(b.addr(), V5, "stay", Some("alice"), Some("one")).await;
    assert_eq!(rc, ReasonCode::Success);
    write_passwords(&file, &[("alice", "two")]);
    b.security().reload().unwrap();
    connected.sync().await;
    let (_p, rc) = connect_tcp(b.addr(), V5, "old", Some("alice"), Some("one")).await;
    assert_eq!(rc, ReasonCode::BadUserNameOrPassword);
    let (_p, rc) = connect_tcp(b.addr(), V5, "new", Some("alice"), Some("two")).await;
    assert_eq!(rc, ReasonCode::Success);
    std::fs::write(&file, "alice\n").unwrap();
    let e = b.security().reload().unwrap_err().to_string();
    assert!(e.contains("line 1"), "{e}");
    let (_p, rc) = connect_tcp(b.addr(), V5, "still", Some("alice"), Some("two")).await;
    assert_eq!(rc, ReasonCode::Success);
    connected.sync().await;
}

/// A log writer the test can read.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Failures are logged with the client's address and never with the password.
#[tokio::test(flavor = "current_thread")]
async fn failures_are_logged_with_the_address_and_without_the_password() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_env_filter("tern_broker=info")
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let dir = TempDir::new("pw-log");
    let file = dir.file("passwd", &passwords(&[("alice", "a")]));
    let b = BrokerBuilder::new()
        .listen("127.0.0.1:0".parse().unwrap())
        .configure(|c| c.password_file = Some(file))
        .bind()
        .await
        .unwrap()
        .spawn();
    let mut p = Peer::tcp(b.addr(), V5).await;
    let ack = p
        .connect(connect(V5, "logged", Some("alice"), Some("Hunter2-secret")))
        .await;
    assert_eq!(ack.reason_code, ReasonCode::BadUserNameOrPassword);
    let _ = p.expect_closed().await;
    let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let line = text
        .lines()
        .find(|l| l.contains("authentication failed"))
        .unwrap_or_else(|| panic!("no log line in {text}"));
    assert!(
        line.contains("127.0.0.1:") && line.contains("logged") && line.contains("alice"),
        "{line}"
    );
    assert!(!text.contains("Hunter2-secret"), "password in the log: {text}");
}
