//! Bans (file, reload, run-time API, addresses and networks), flapping detection measured
//! with a raw client, and reloading TLS certificates, keys and CRLs without a restart.

use std::time::{Duration, Instant, SystemTime};

use tern_broker::security::{AuthConfig, Ban, BanTarget, FlappingConfig};
use tern_broker::{Config, ListenerKind};
use tern_proto::ReasonCode;
use tokio::io::AsyncReadExt;

use crate::jwt::start_with;
use crate::support::*;

/// A TCP connection from `source` (any 127.0.0.0/8 address).
async fn tcp_from(source: &str, to: std::net::SocketAddr) -> tokio::net::TcpStream {
    let s = tokio::net::TcpSocket::new_v4().unwrap();
    s.bind(format!("{source}:0").parse().unwrap()).unwrap();
    s.connect(to).await.unwrap()
}

/// A banned client id or user name gets CONNACK 0x8A Banned (3.1.1: 0x05) before any password
/// is checked; a banned address is closed at accept without a word; the file is read again
/// by a reload, a broken file keeps the bans in force; bans added at run time disconnect the
/// clients they name (5.0: DISCONNECT 0x98) and end at their expiry.
#[tokio::test]
async fn ban_list_file_reload_and_api() {
    let dir = TempDir::new("bans");
    let bans = dir.file(
        "bans",
        "# test bans\nclientid banned-c\nusername eve 2099-01-01T00:00:00Z\naddress 127.0.0.2\naddress 127.0.1.0/24\nclientid old 1\n",
    );
    let pw = dir.file("passwd", &passwords(&[("eve", "e"), ("bob", "b")]));
    let b = start_with(Config {
        password_file: Some(pw),
        auth: AuthConfig {
            ban_file: Some(bans.clone()),
            ..AuthConfig::default()
        },
        ..Config::default()
    })
    .await;
    let addr = b.addr();
    for (v, id, user, pw, expected) in [
        (V5, "banned-c", None, None, ReasonCode::Banned),
        (V3, "banned-c", None, None, ReasonCode::NotAuthorized),
        // Refused before the password is looked at: a wrong one gets the same answer.
        (V5, "c1", Some("eve"), Some("wrong"), ReasonCode::Banned),
        (V5, "c1", Some("bob"), Some("b"), ReasonCode::Success),
        // An expired ban is no ban.
        (V5, "old", None, None, ReasonCode::Success),
    ] {
        let (_, rc) = connect_tcp(addr, v, id, user, pw).await;
        assert_eq!(rc, expected, "{id} {user:?}");
    }
    let failures = b.security().auth_failures();
    for source in ["127.0.0.2", "127.0.1.9"] {
        let mut s = tcp_from(source, addr).await;
        let mut buf = [0u8; 16];
        let n = tokio::time::timeout(WAIT, s.read(&mut buf))
            .await
            .unwrap()
            .unwrap_or(0);
        assert_eq!(n, 0, "{source}: closed at once");
    }
    let mut p = Peer::over(tcp_from("127.0.0.3", addr).await, V5);
    assert_eq!(
        p.connect(connect(V5, "from3", None, None)).await.reason_code,
        ReasonCode::Success
    );
    assert_eq!(
        b.security().auth_failures(),
        failures,
        "closing a banned address is no auth failure"
    );

    // Reload: the client id ban goes, an address ban comes.
    std::fs::write(&bans, "address 127.0.0.3\n").unwrap();
    b.security().reload().unwrap();
    let (_, rc) = connect_tcp(addr, V5, "banned-c", None, None).await;
    assert_eq!(rc, ReasonCode::Success);
    let mut s = tcp_from("127.0.0.3", addr).await;
    assert_eq!(
        tokio::time::timeout(WAIT, s.read(&mut [0u8; 4]))
            .await
            .unwrap()
            .unwrap_or(0),
        0
    );
    // A broken file keeps the bans in force.
    std::fs::write(&bans, "address 127.0.0.300\n").unwrap();
    let e = b.security().reload().unwrap_err();
    assert!(e.to_string().contains("line 1"), "{e}");
    assert_eq!(b.security().bans().len(), 1);

    // At run time: the connected client is disconnected, then refused until the ban expires.
    let (mut live, rc) = connect_tcp(addr, V5, "live", None, None).await;
    assert_eq!(rc, ReasonCode::Success);
    b.security().ban(Ban {
        target: BanTarget::ClientId("live".into()),
        until: Some(SystemTime::now() + Duration::from_millis(1500)),
    });
    assert_eq!(live.expect_closed().await, Some(ReasonCode::AdministrativeAction));
    let (_, rc) = connect_tcp(addr, V5, "live", None, None).await;
    assert_eq!(rc, ReasonCode::Banned);
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let (_, rc) = connect_tcp(addr, V5, "live", None, None).await;
    assert_eq!(rc, ReasonCode::Success);
    // By user name, and removed.
    let (mut bob, _) = connect_tcp(addr, V3, "bob1", Some("bob"), Some("b")).await;
    b.security().ban(Ban {
        target: BanTarget::Username("bob".into()),
        until: None,
    });
    assert_eq!(bob.expect_closed().await, None);
    assert_eq!(b.security().unban(&BanTarget::Username("bob".into())), 1);
    let (_, rc) = connect_tcp(addr, V3, "bob1", Some("bob"), Some("b")).await;
    assert_eq!(rc, ReasonCode::Success);
}

/// A client id that reconnects more than `max_connects_per_minute` times in a minute is
/// refused (CONNACK 0x9F; 3.1.1: 0x03) for `ban_secs`, doubled at the next offence; other
/// clients are not affected.
#[tokio::test]
async fn flapping_clients_are_refused_for_a_growing_period() {
    let b = start_with(Config {
        auth: AuthConfig {
            flapping: FlappingConfig {
                max_connects_per_minute: 5,
                ban_secs: 1,
                ..FlappingConfig::default()
            },
            ..AuthConfig::default()
        },
        ..Config::default()
    })
    .await;
    let addr = b.addr();
    let attempts = |id: &'static str, v, n: usize| async move {
        let mut codes = Vec::new();
        for _ in 0..n {
            codes.push(connect_tcp(addr, v, id, None, None).await.1);
        }
        codes
    };
    let codes = attempts("flap", V5, 7).await;
    assert_eq!(codes[..5], [ReasonCode::Success; 5]);
    assert_eq!(codes[5..], [ReasonCode::ConnectionRateExceeded; 2]);
    let t = Instant::now();
    assert_eq!(attempts("steady", V3, 1).await, [ReasonCode::Success]);
    assert_eq!(attempts("flap3", V3, 6).await[5], ReasonCode::ServerUnavailable);
    // After the first period: allowed again, until the next offence, refused for 2 s.
    tokio::time::sleep(Duration::from_millis(1100).saturating_sub(t.elapsed())).await;
    let codes = attempts("flap", V5, 6).await;
    assert_eq!(codes[..5], [ReasonCode::Success; 5], "{codes:?}");
    assert_eq!(codes[5], ReasonCode::ConnectionRateExceeded);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(
        attempts("flap", V5, 1).await,
        [ReasonCode::ConnectionRateExceeded],
        "2 s this time"
    );
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(attempts("flap", V5, 1).await, [ReasonCode::Success]);
}

/// The certificate a TLS client sees.
async fn served_certificate(pki: &Pki, addr: std::net::SocketAddr) -> Vec<u8> {
    let s = pki.connect(addr, None).await.unwrap();
    s.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

fn der_of(pem: &str) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .to_vec()
}

/// Replace a listener's certificate and key and reload: new handshakes get the new
/// certificate, connected clients keep working; a broken key, or a key that is not the
/// certificate's, keeps the certificate in force.
#[tokio::test]
async fn certificate_reload_without_restart() {
    let pki = Pki::new("reload");
    let b = start(|b| b.listener(pki.listener(ListenerKind::Tls, false))).await;
    let tls_addr = b.addr_of(ListenerKind::Tls).unwrap();
    assert_eq!(
        served_certificate(&pki, tls_addr).await,
        der_of(&pki.server_cert_pem)
    );
    let mut old = Peer::over(pki.connect(tls_addr, None).await.unwrap(), V5);
    assert_eq!(
        old.connect(connect(V5, "old", None, None)).await.reason_code,
        ReasonCode::Success
    );

    let (cert2, key2) = pki.server();
    std::fs::write(&pki.server_cert, &cert2).unwrap();
    std::fs::write(&pki.server_key, &key2).unwrap();
    b.security().reload().unwrap();
    assert_eq!(served_certificate(&pki, tls_addr).await, der_of(&cert2));
    old.sync().await;

    // A key that does not parse.
    std::fs::write(
        &pki.server_key,
        "-----BEGIN PRIVATE KEY-----\ngarbage\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let e = b.security().reload().unwrap_err().to_string();
    assert!(e.contains("listener[0].key"), "{e}");
    assert_eq!(served_certificate(&pki, tls_addr).await, der_of(&cert2));
    // A key that is not the certificate's.
    let (cert3, _) = pki.server();
    std::fs::write(&pki.server_cert, &cert3).unwrap();
    std::fs::write(&pki.server_key, &key2).unwrap();
    let e = b.security().reload().unwrap_err().to_string();
    assert!(e.contains("listener[0].key"), "{e}");
    assert_eq!(served_certificate(&pki, tls_addr).await, der_of(&cert2));
    old.sync().await;
    let mut p = Peer::over(pki.connect(tls_addr, None).await.unwrap(), V5);
    assert_eq!(
        p.connect(connect(V5, "new", None, None)).await.reason_code,
        ReasonCode::Success
    );
}

/// A CRL refuses the client certificates it revokes; a new CRL takes effect at reload.
#[tokio::test]
async fn revoked_client_certificates_are_refused() {
    let pki = Pki::new("crl");
    let crl = pki.dir.file("crl.pem", &pki.crl(&[1001]));
    let mut l = pki.listener(ListenerKind::Tls, true);
    l.crl_file = Some(crl.clone());
    let b = start(|b| b.listener(l)).await;
    let tls_addr = b.addr_of(ListenerKind::Tls).unwrap();
    let one = pki.client_with("one", |p| {
        p.serial_number = Some(rcgen::SerialNumber::from(1001u64))
    });
    let two = pki.client_with("two", |p| {
        p.serial_number = Some(rcgen::SerialNumber::from(1002u64))
    });
    let works = |cert: (String, String)| {
        let pki = &pki;
        async move {
            match pki.connect(tls_addr, Some(&cert)).await {
                Ok(s) => mqtt_works(s, "crl").await,
                Err(_) => false,
            }
        }
    };
    assert!(!works(one.clone()).await, "revoked");
    assert!(works(two.clone()).await);
    std::fs::write(&crl, pki.crl(&[1002])).unwrap();
    b.security().reload().unwrap();
    assert!(works(one).await);
    assert!(!works(two).await, "revoked by the new CRL");
    // A CRL file that does not parse keeps the one in force.
    std::fs::write(&crl, "not a crl").unwrap();
    assert!(b.security().reload().is_err());
}

/// `watch_interval_secs`: a changed file is reloaded without SIGHUP.
#[tokio::test]
async fn watched_files_are_reloaded_when_they_change() {
    let dir = TempDir::new("watch");
    let bans = dir.file("bans", "# none yet\n");
    let b = start_with(Config {
        auth: AuthConfig {
            ban_file: Some(bans.clone()),
            watch_interval_secs: 1,
            ..AuthConfig::default()
        },
        ..Config::default()
    })
    .await;
    let (_, rc) = connect_tcp(b.addr(), V5, "w", None, None).await;
    assert_eq!(rc, ReasonCode::Success);
    std::fs::write(&bans, "clientid w\n").unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, rc) = connect_tcp(b.addr(), V5, "w", None, None).await;
        if rc == ReasonCode::Banned {
            break;
        }
        assert!(Instant::now() < deadline, "the changed ban file was not reloaded");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `[auth.rate_limit]`: a client sending faster than its limits is read more slowly (its
/// socket is not read while it is over), and nothing it sent is lost; another client is
/// served meanwhile. Measured with a raw client writing 600 PUBLISH at once.
#[tokio::test]
async fn inbound_rate_limits_slow_the_client_down_without_loss() {
    use tern_proto::Publish;
    for (limit, count, payload, expected) in [
        // 200 packets/s, 200 at once: 600 packets take about 2 s.
        (
            tern_broker::security::RateLimitConfig {
                messages_per_sec: 200,
                ..Default::default()
            },
            600usize,
            8usize,
            Duration::from_secs(2),
        ),
        // 50,000 bytes/s: 100 messages of about 1 KB take about 1 s beyond the first 50 KB.
        (
            tern_broker::security::RateLimitConfig {
                bytes_per_sec: 50_000,
                ..Default::default()
            },
            100,
            1000,
            Duration::from_millis(1000),
        ),
    ] {
        let b = start_with(Config {
            auth: AuthConfig {
                rate_limit: limit,
                ..AuthConfig::default()
            },
            ..Config::default()
        })
        .await;
        let (mut sub, _) = connect_tcp(b.addr(), V5, "sub", None, None).await;
        assert_eq!(
            crate::acl::subscribe(&mut sub, "flood").await,
            ReasonCode::GrantedQoS1
        );
        let (mut other, _) = connect_tcp(b.addr(), V5, "other", None, None).await;
        let mut publisher = tokio::net::TcpStream::connect(b.addr()).await.unwrap();
        let mut bytes = bytes::BytesMut::new();
        tern_proto::Packet::Connect(Box::new(connect(V5, "pub", None, None)))
            .encode(V5, &mut bytes)
            .unwrap();
        for i in 0..count {
            let mut text = format!("{i:08}");
            text.push_str(&"x".repeat(payload - 8));
            tern_proto::Packet::Publish(Publish::new("flood", text))
                .encode(V5, &mut bytes)
                .unwrap();
        }
        let started = Instant::now();
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            publisher.write_all(&bytes).await.unwrap();
            publisher
        });
        let mut worst_ping = Duration::ZERO;
        for i in 0..count {
            match sub.recv().await {
                tern_proto::Packet::Publish(p) => {
                    assert!(p.payload.starts_with(format!("{i:08}").as_bytes()))
                }
                other => panic!("expected PUBLISH {i}, got {other:?}"),
            }
            if i % 50 == 0 {
                let t = Instant::now();
                other.sync().await;
                worst_ping = worst_ping.max(t.elapsed());
            }
        }
        let took = started.elapsed();
        eprintln!("rate limit {limit:?}: {count} messages of {payload} B delivered in {took:?}; other client's worst ping {worst_ping:?}");
        assert!(
            took >= expected.mul_f64(0.9),
            "{limit:?}: {took:?}, expected about {expected:?}"
        );
        assert!(
            took < expected * 2 + Duration::from_secs(1),
            "{limit:?}: {took:?}"
        );
        assert!(worst_ping < Duration::from_millis(200));
        drop(writer.await.unwrap());
    }
}
