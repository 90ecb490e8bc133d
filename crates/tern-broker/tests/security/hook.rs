//! The HTTP hook at CONNECT against a real HTTP/1.1 service (`auth_peer.py serve`, which
//! answers by user name): allow, deny, ignore, 500, garbage, a service that hangs or is
//! gone, each with the configured outcome; access lists in the answer; keep-alive
//! connections; the chain order with the password file; the broker stays responsive while
//! the service hangs.

use std::time::{Duration, Instant};

use tern_broker::security::{AuthConfig, HookConfig, OnError, Source};
use tern_broker::Config;
use tern_proto::{QoS, ReasonCode};

use crate::acl::{expect_message, publish, subscribe};
use crate::jwt::start_with;
use crate::peers::Service;
use crate::support::*;

fn hook_config(service: &Service, on_error: OnError) -> Config {
    Config {
        allow_anonymous: false,
        auth: AuthConfig {
            http: Some(HookConfig {
                url: Some(service.url("/auth")),
                timeout_ms: 300,
                retries: 1,
                on_error,
                ..HookConfig::default()
            }),
            ..AuthConfig::default()
        },
        ..Config::default()
    }
}

/// v5 [MQTT-3.2.2-7] / v3.1.1 [MQTT-3.2.2-5]: what the service answers decides, and a
/// refused client gets a CONNACK with the reason (0x87 refused, 0x88 service unavailable;
/// 3.1.1: 0x05, 0x03) and is closed.
#[tokio::test]
async fn answers_of_the_service_decide() {
    let dir = TempDir::new("hook");
    let service = Service::start(&dir.0);
    let b = start_with(hook_config(&service, OnError::Deny)).await;
    let addr = b.addr();
    for (user, password, expected) in [
        ("allow-1", "pw", ReasonCode::Success),
        ("empty", "pw", ReasonCode::Success),
        ("password", "open sesame", ReasonCode::Success),
        ("password", "wrong", ReasonCode::NotAuthorized),
        ("deny", "pw", ReasonCode::NotAuthorized),
        ("forbidden", "pw", ReasonCode::NotAuthorized),
        // Not the service's client, and no other source: as without a password file.
        ("ignore", "pw", ReasonCode::BadUserNameOrPassword),
        ("error", "pw", ReasonCode::ServerUnavailable),
        ("garbage", "pw", ReasonCode::ServerUnavailable),
        ("slow", "pw", ReasonCode::ServerUnavailable),
    ] {
        for v in [V5, V3] {
            let (mut p, rc) = connect_tcp(addr, v, "c", Some(user), Some(password)).await;
            assert_eq!(rc, expected, "{user}/{password} ({v:?})");
            if rc == ReasonCode::Success {
                p.sync().await;
            } else {
                assert_eq!(p.expect_closed().await, None, "{user}: closed after CONNACK");
            }
        }
    }
}

/// The answer's `acl` is the client's access list and its `username` the user name `%u`
/// and the ACL see.
#[tokio::test]
async fn access_list_from_the_answer() {
    let dir = TempDir::new("hook-acl");
    let service = Service::start(&dir.0);
    let b = start_with(hook_config(&service, OnError::Deny)).await;
    let (mut p, rc) = connect_tcp(b.addr(), V5, "dev7", Some("acl"), Some("pw")).await;
    assert_eq!(rc, ReasonCode::Success);
    assert_eq!(subscribe(&mut p, "hook/#").await, ReasonCode::GrantedQoS1);
    assert_eq!(subscribe(&mut p, "other/#").await, ReasonCode::NotAuthorized);
    let ack = publish(&mut p, "hook/dev7/x", QoS::AtLeastOnce).await.unwrap();
    assert_eq!(ack.reason_code, ReasonCode::Success);
    expect_message(&mut p, "hook/dev7/x").await;
    let ack = publish(&mut p, "hook/dev8/x", QoS::AtLeastOnce).await.unwrap();
    assert_eq!(ack.reason_code, ReasonCode::NotAuthorized);
    let info = b.session("dev7").unwrap();
    assert_eq!(info.connection.unwrap().username.as_deref(), Some("from-hook"));
}

/// Requests reuse keep-alive connections; while the service hangs (each CONNECT waits for
/// its timeout), connected clients are served as fast as before.
#[tokio::test]
async fn keep_alive_and_responsiveness_while_the_service_hangs() {
    let dir = TempDir::new("hook-ka");
    let service = Service::start(&dir.0);
    let b = start_with(hook_config(&service, OnError::Deny)).await;
    let addr = b.addr();
    let (requests0, connections0) = service.stats().await;
    for i in 0..20 {
        let (_, rc) = connect_tcp(addr, V5, &format!("ka{i}"), Some("allow-ka"), Some("pw")).await;
        assert_eq!(rc, ReasonCode::Success);
    }
    let (requests1, connections1) = service.stats().await;
    assert_eq!(requests1 - requests0, 20);
    assert!(
        connections1 - connections0 <= 1,
        "{} connections for 20 requests",
        connections1 - connections0
    );

    let (mut canary, rc) = connect_tcp(addr, V5, "canary", Some("allow-canary"), Some("pw")).await;
    assert_eq!(rc, ReasonCode::Success);
    assert_eq!(subscribe(&mut canary, "canary").await, ReasonCode::GrantedQoS1);
    // 20 CONNECTs wait for a hanging service...
    let hung: Vec<_> = (0..20)
        .map(|i| {
            tokio::spawn(async move {
                let id = format!("hung{i}");
                connect_tcp(addr, V5, &id, Some("slow"), Some("pw")).await.1
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(50)).await;
    // ...while the canary's round trips stay fast.
    let mut worst = Duration::ZERO;
    for _ in 0..20 {
        let t = Instant::now();
        publish(&mut canary, "canary", QoS::AtLeastOnce).await.unwrap();
        expect_message(&mut canary, "canary").await;
        worst = worst.max(t.elapsed());
    }
    eprintln!("canary: worst QoS 1 round trip of 20 while 20 CONNECTs wait for a hanging service: {worst:?}");
    assert!(
        worst < Duration::from_millis(100),
        "round trip of {worst:?} while the service hangs"
    );
    for h in hung {
        assert_eq!(h.await.unwrap(), ReasonCode::ServerUnavailable);
    }
}

/// `on_error`: a service that is gone denies (0x88), allows, or hands over to the next source.
#[tokio::test]
async fn outcome_when_the_service_is_down() {
    let dir = TempDir::new("hook-down");
    let pw = dir.file("passwd", &passwords(&[("alice", "a")]));
    let mut service = Service::start(&dir.0);
    let url = service.url("/auth");
    service.stop();
    for (on_error, user, password, expected) in [
        (OnError::Deny, "alice", "a", ReasonCode::ServerUnavailable),
        (OnError::Allow, "anyone", "x", ReasonCode::Success),
        (OnError::Next, "alice", "a", ReasonCode::Success),
        (OnError::Next, "alice", "wrong", ReasonCode::BadUserNameOrPassword),
    ] {
        let config = Config {
            allow_anonymous: false,
            password_file: Some(pw.clone()),
            auth: AuthConfig {
                chain: vec![Source::Http, Source::PasswordFile],
                http: Some(HookConfig {
                    url: Some(url.clone()),
                    timeout_ms: 300,
                    on_error,
                    ..HookConfig::default()
                }),
                ..AuthConfig::default()
            },
            ..Config::default()
        };
        let b = start_with(config).await;
        let (_, rc) = connect_tcp(b.addr(), V5, "c", Some(user), Some(password)).await;
        assert_eq!(rc, expected, "{on_error:?} {user}/{password}");
    }
}

/// The chain asks its sources in order: with the password file first, its users are checked
/// locally and the others go to the service; with the service first, users it ignores go to
/// the password file.
#[tokio::test]
async fn chain_order_with_the_password_file() {
    let dir = TempDir::new("hook-chain");
    let pw = dir.file("passwd", &passwords(&[("alice", "a"), ("deny", "d")]));
    let service = Service::start(&dir.0);
    for (chain, user, password, expected) in [
        // Password file first: "deny" is a local user, the service is not asked.
        (
            [Source::PasswordFile, Source::Http],
            "deny",
            "d",
            ReasonCode::Success,
        ),
        (
            [Source::PasswordFile, Source::Http],
            "alice",
            "wrong",
            ReasonCode::BadUserNameOrPassword,
        ),
        (
            [Source::PasswordFile, Source::Http],
            "allow-x",
            "x",
            ReasonCode::Success,
        ),
        // Service first: it refuses "deny"; it ignores "alice", whom the password file knows.
        (
            [Source::Http, Source::PasswordFile],
            "deny",
            "d",
            ReasonCode::NotAuthorized,
        ),
        (
            [Source::Http, Source::PasswordFile],
            "alice",
            "a",
            ReasonCode::Success,
        ),
        (
            [Source::Http, Source::PasswordFile],
            "alice",
            "wrong",
            ReasonCode::BadUserNameOrPassword,
        ),
    ] {
        let config = Config {
            allow_anonymous: false,
            password_file: Some(pw.clone()),
            auth: AuthConfig {
                chain: chain.to_vec(),
                http: Some(HookConfig {
                    url: Some(service.url("/auth")),
                    ..HookConfig::default()
                }),
                ..AuthConfig::default()
            },
            ..Config::default()
        };
        let b = start_with(config).await;
        let (_, rc) = connect_tcp(b.addr(), V5, "c", Some(user), Some(password)).await;
        assert_eq!(rc, expected, "{chain:?} {user}/{password}");
    }
}

/// Configuration errors name the setting.
#[tokio::test]
async fn bad_auth_configuration_is_refused_at_start() {
    for (toml, field) in [
        ("[auth.http]\ntimeout_ms = 100\n", "auth.http"),
        ("[auth.http]\nurl = \"ftp://x\"\n", "auth.http.url"),
        ("[auth]\nchain = [\"jwt\"]\n", "auth.chain[0]"),
        ("[auth.jwt]\nalgorithms = [\"RS256\"]\n", "auth.jwt"),
        (
            "[auth.jwt]\nalgorithms = [\"XY999\"]\nsecret = \"s\"\n",
            "auth.jwt.algorithms",
        ),
        (
            "[auth.jwt]\nalgorithms = [\"RS256\"]\npublic_key_file = \"/nonexistent\"\n",
            "auth.jwt.public_key_file",
        ),
        (
            "[auth.jwt]\nalgorithms = [\"RS256\"]\nsecret = \"s\"\n",
            "auth.jwt.algorithms",
        ),
        ("[auth]\nban_file = \"/nonexistent\"\n", "auth.ban_file"),
    ] {
        let config = Config::from_toml(&format!("listen = [\"127.0.0.1:0\"]\n{toml}")).unwrap();
        let e = tern_broker::BrokerBuilder::from_config(config)
            .bind()
            .await
            .unwrap_err();
        assert!(e.to_string().contains(&format!("`{field}")), "{toml}: {e}");
    }
    // Unknown keys are errors too.
    let e = Config::from_toml("[auth.jwt]\nalgorithm = [\"RS256\"]\n").unwrap_err();
    assert!(e.to_string().contains("algorithm"), "{e}");
}

/// A broker whose ACL questions go to the service's `/acl` (anonymous clients allowed).
async fn acl_hook_broker(
    service: &Service,
    on_error: OnError,
    cache_ttl_secs: u64,
) -> tern_broker::BrokerHandle {
    start_with(Config {
        allow_anonymous: true,
        auth: AuthConfig {
            http: Some(HookConfig {
                acl_url: Some(service.url("/acl")),
                timeout_ms: 300,
                retries: 1,
                on_error,
                cache_ttl_secs,
                ..HookConfig::default()
            }),
            ..AuthConfig::default()
        },
        ..Config::default()
    })
    .await
}

/// `acl_url`: the service decides each PUBLISH topic and SUBSCRIBE filter. A denied filter
/// gets SUBACK 0x87 (3.1.1: 0x80; v5 [MQTT-3.9.3-2] a reason code per filter); a denied
/// PUBLISH is not delivered (v3.1.1 [MQTT-3.3.5-2]) and gets PUBACK 0x87 in 5.0. `ignore` hands over to the ACL file (none
/// here: allowed); an error (500, garbage) follows `on_error = "deny"`.
#[tokio::test]
async fn acl_decisions_of_the_service() {
    let dir = TempDir::new("hook-aclurl");
    let service = Service::start(&dir.0);
    let b = acl_hook_broker(&service, OnError::Deny, 60).await;
    for v in [V5, V3] {
        let id = format!("acl-{v:?}");
        let (mut p, rc) = connect_tcp(b.addr(), v, &id, None, None).await;
        assert_eq!(rc, ReasonCode::Success);
        let denied_filter = if v == V5 {
            ReasonCode::NotAuthorized
        } else {
            ReasonCode::UnspecifiedError
        };
        for (filter, expected) in [
            ("ok/#", ReasonCode::GrantedQoS1),
            ("ignore/#", ReasonCode::GrantedQoS1),
            ("no/#", denied_filter),
            ("error/#", denied_filter),
            ("garbage/#", denied_filter),
            ("$share/g/ok/shared", ReasonCode::GrantedQoS1),
        ] {
            assert_eq!(subscribe(&mut p, filter).await, expected, "{filter} ({v:?})");
        }
        for (topic, allowed) in [
            ("ok/1", true),
            ("ignore/1", true),
            ("no/1", false),
            ("error/1", false),
        ] {
            let ack = publish(&mut p, topic, QoS::AtLeastOnce).await.unwrap();
            if v == V5 {
                let expected = if allowed {
                    ReasonCode::Success
                } else {
                    ReasonCode::NotAuthorized
                };
                assert_eq!(ack.reason_code, expected, "{topic}");
            }
            if allowed {
                expect_message(&mut p, topic).await;
            } else {
                p.expect_silence(100).await;
            }
        }
    }
    let asked = service.acl_asked().await;
    // The shared subscription's question is about the filter without `$share/g/`.
    assert!(
        asked.contains(&("subscribe".into(), "ok/shared".into())),
        "{asked:?}"
    );
    // Answers are cached per client: each client asked once about ok/1; an error was asked
    // 1 + retries times by each client and never cached.
    let count = |a: &str, t: &str| asked.iter().filter(|q| q.0 == a && q.1 == t).count();
    assert_eq!(count("publish", "ok/1"), 2, "{asked:?}");
    assert_eq!(count("publish", "error/1"), 4, "{asked:?}");
}

/// The topic a Topic Alias stands for is the one asked about (v5 [MQTT-3.3.2-12]: the
/// receiver substitutes the topic of the alias); a will's topic is asked at CONNECT.
#[tokio::test]
async fn acl_hook_sees_aliased_topics_and_wills() {
    let dir = TempDir::new("hook-alias");
    let service = Service::start(&dir.0);
    let b = acl_hook_broker(&service, OnError::Deny, 0).await;
    let (mut p, rc) = connect_tcp(b.addr(), V5, "alias", None, None).await;
    assert_eq!(rc, ReasonCode::Success);
    assert_eq!(subscribe(&mut p, "ok/#").await, ReasonCode::GrantedQoS1);
    let aliased = |topic: &str, id: u16| {
        let mut m = tern_proto::Publish::new(topic, "x");
        m.qos = QoS::AtLeastOnce;
        m.packet_id = tern_proto::PacketId::new(id);
        m.properties.topic_alias = Some(1);
        tern_proto::Packet::Publish(m)
    };
    for (set, expected) in [("ok/a", ReasonCode::Success), ("no/a", ReasonCode::NotAuthorized)] {
        p.send(aliased(set, 1)).await;
        let tern_proto::Packet::PubAck(a) = p.recv().await else {
            panic!("PUBACK")
        };
        assert_eq!(a.reason_code, expected, "{set}");
        if expected == ReasonCode::Success {
            expect_message(&mut p, set).await;
        }
        // The same alias without a topic: the same decision, asked again (no cache).
        p.send(aliased("", 2)).await;
        let tern_proto::Packet::PubAck(a) = p.recv().await else {
            panic!("PUBACK")
        };
        assert_eq!(a.reason_code, expected, "alias of {set}");
        if expected == ReasonCode::Success {
            expect_message(&mut p, set).await;
        }
    }
    let asked = service.acl_asked().await;
    let publishes: Vec<_> = asked
        .iter()
        .filter(|q| q.0 == "publish")
        .map(|q| q.1.as_str())
        .collect();
    assert_eq!(publishes, ["ok/a", "ok/a", "no/a", "no/a"]);

    // A will on a topic the service denies refuses the connection.
    let mut c = connect(V5, "will", None, None);
    c.will = Some(tern_proto::Will {
        topic: "no/will".into(),
        payload: bytes::Bytes::from_static(b"gone"),
        qos: QoS::AtMostOnce,
        retain: false,
        properties: Default::default(),
    });
    let mut w = Peer::tcp(b.addr(), V5).await;
    assert_eq!(w.connect(c).await.reason_code, ReasonCode::NotAuthorized);
    let mut c = connect(V5, "will2", None, None);
    c.will = Some(tern_proto::Will {
        topic: "ok/will".into(),
        payload: bytes::Bytes::from_static(b"gone"),
        qos: QoS::AtMostOnce,
        retain: false,
        properties: Default::default(),
    });
    let mut w = Peer::tcp(b.addr(), V5).await;
    assert_eq!(w.connect(c).await.reason_code, ReasonCode::Success);
}

/// While the service hangs on one client's PUBLISH, that client's later packets wait behind
/// it (in order) and its deliveries go on; other clients are not slowed.
#[tokio::test]
async fn acl_hook_holds_only_the_asking_client() {
    let dir = TempDir::new("hook-hold");
    let service = Service::start(&dir.0);
    let b = acl_hook_broker(&service, OnError::Deny, 60).await;
    let (mut slow, _) = connect_tcp(b.addr(), V5, "slow", None, None).await;
    assert_eq!(subscribe(&mut slow, "ok/#").await, ReasonCode::GrantedQoS1);
    let (mut other, _) = connect_tcp(b.addr(), V5, "other", None, None).await;
    assert_eq!(subscribe(&mut other, "ok/#").await, ReasonCode::GrantedQoS1);
    // Held for 2 × 300 ms (timeout and one retry), then denied (on_error = deny).
    let mut m = tern_proto::Publish::new("slow/x", "x");
    m.qos = QoS::AtLeastOnce;
    m.packet_id = tern_proto::PacketId::new(1);
    slow.send(tern_proto::Packet::Publish(m)).await;
    let mut m = tern_proto::Publish::new("ok/after", "x");
    m.qos = QoS::AtLeastOnce;
    m.packet_id = tern_proto::PacketId::new(2);
    slow.send(tern_proto::Packet::Publish(m)).await;
    // Meanwhile another client's round trips are fast, and the held client gets deliveries.
    let t = Instant::now();
    let ack = publish(&mut other, "ok/other", QoS::AtLeastOnce).await.unwrap();
    assert_eq!(ack.reason_code, ReasonCode::Success);
    expect_message(&mut other, "ok/other").await;
    expect_message(&mut slow, "ok/other").await;
    let fast = t.elapsed();
    assert!(
        fast < Duration::from_millis(250),
        "{fast:?} while the service hangs"
    );
    // The held PUBLISH is answered first, then the one behind it.
    let tern_proto::Packet::PubAck(a) = slow.recv().await else {
        panic!("PUBACK")
    };
    assert_eq!((a.packet_id.get(), a.reason_code), (1, ReasonCode::NotAuthorized));
    let tern_proto::Packet::PubAck(a) = slow.recv().await else {
        panic!("PUBACK")
    };
    assert_eq!((a.packet_id.get(), a.reason_code), (2, ReasonCode::Success));
    expect_message(&mut slow, "ok/after").await;
}
