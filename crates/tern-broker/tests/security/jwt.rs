//! JSON Web Tokens: real keys and tokens made by pyjwt (RSA, EC P-256, Ed25519, HMAC), the
//! configuration of issue #18 as written, a JWKS served over HTTP (and its outage), ACL
//! claims, the 5.0 method `JWT` with re-authentication, and the disconnect at expiry.

use std::time::Duration;

use serde_json::json;
use tern_broker::{BrokerBuilder, Config};
use tern_proto::{Auth, Connect, Packet, QoS, ReasonCode};

use crate::acl::{expect_message, publish, subscribe};
use crate::peers::{now, Keys, Service};
use crate::support::*;

const ISSUER: &str = "https://auth.example.com";

/// The configuration of issue #18, word for word but for the key's path.
fn issue_config(key: &std::path::Path) -> Config {
    let text = r#"
allow_anonymous = false
[auth.jwt]
algorithms = ["RS256"]
public_key_file = "/etc/tern/jwt.pem"     # or jwks_url = "https://auth.example.com/.well-known/jwks.json"
audience = "tern"
issuer = "https://auth.example.com"
"#
    .replace("/etc/tern/jwt.pem", &key.display().to_string());
    Config::from_toml(&text).expect("the issue's configuration parses")
}

/// Start a broker with `config` on one plain TCP listener on port 0.
pub async fn start_with(mut config: Config) -> tern_broker::BrokerHandle {
    init_logs();
    config.listen = vec!["127.0.0.1:0".parse().unwrap()];
    BrokerBuilder::from_config(config)
        .bind()
        .await
        .expect("bind")
        .spawn()
}

/// Claims of a good token for `sub`, with the ACL of the issue.
fn claims(sub: &str) -> serde_json::Value {
    json!({
        "sub": sub, "iss": ISSUER, "aud": "tern", "exp": now() + 3600, "iat": now(),
        "acl": {"publish": ["devices/%c/#"], "subscribe": ["devices/#"]},
    })
}

fn with(mut base: serde_json::Value, changes: serde_json::Value) -> serde_json::Value {
    for (k, v) in changes.as_object().unwrap() {
        if v.is_null() {
            base.as_object_mut().unwrap().remove(k);
        } else {
            base[k] = v.clone();
        }
    }
    base
}

/// v5 [MQTT-3.1.4-2], v5 [MQTT-3.2.2-7] / v3.1.1 [MQTT-3.2.2-5]: a token in the CONNECT
/// password is checked like a password; every bad token (expired, not yet valid, wrong
/// audience or issuer, wrong key, `alg: none`, an algorithm not configured, malformed,
/// without `exp`) is refused with CONNACK 0x86 (3.1.1: 0x04) and the connection closed.
#[tokio::test]
async fn tokens_in_the_password_with_the_issue_configuration() {
    let keys = Keys::new("jwt-rs256");
    let b = start_with(issue_config(&keys.path("rsa.pub"))).await;
    let good = claims("dev1");
    let t = keys.tokens(json!([
        {"name": "good", "alg": "RS256", "key": "rsa", "claims": good},
        {"name": "skewed", "alg": "RS256", "key": "rsa", "claims": with(good.clone(), json!({"exp": now() - 10}))},
        {"name": "expired", "alg": "RS256", "key": "rsa", "claims": with(good.clone(), json!({"exp": now() - 3600}))},
        {"name": "early", "alg": "RS256", "key": "rsa", "claims": with(good.clone(), json!({"nbf": now() + 3600}))},
        {"name": "audience", "alg": "RS256", "key": "rsa", "claims": with(good.clone(), json!({"aud": "other"}))},
        {"name": "issuer", "alg": "RS256", "key": "rsa", "claims": with(good.clone(), json!({"iss": "https://evil.example"}))},
        {"name": "no-exp", "alg": "RS256", "key": "rsa", "claims": with(good.clone(), json!({"exp": null}))},
        {"name": "wrong-key", "alg": "RS256", "key": "rsa-other", "claims": good},
        {"name": "es256", "alg": "ES256", "key": "ec", "claims": good},
        {"name": "hs256", "alg": "HS256", "key": "hmac", "claims": good},
        {"name": "none", "alg": "none", "claims": good},
        {"name": "none-upper", "alg": "none", "raw_header": {"alg": "NONE"}, "claims": good},
    ]));
    let addr = b.addr();
    // Accepted, in both versions (3.1.1 needs a user name with a password; any will do).
    for (v, id, token) in [
        (V5, "dev1", "good"),
        (V3, "dev1-3", "good"),
        (V5, "dev1-skew", "skewed"),
    ] {
        let (mut p, rc) = connect_tcp(addr, v, id, Some("dev1"), Some(&t[token])).await;
        assert_eq!(rc, ReasonCode::Success, "{token}");
        p.sync().await;
    }
    // A 5.0 client may send the token without a user name.
    let (mut p, rc) = connect_tcp(addr, V5, "nouser", None, Some(&t["good"])).await;
    assert_eq!(rc, ReasonCode::Success);
    p.sync().await;
    let mut refused = 0;
    for token in [
        "expired",
        "early",
        "audience",
        "issuer",
        "no-exp",
        "wrong-key",
        "es256",
        "hs256",
        "none",
        "none-upper",
    ] {
        for v in [V5, V3] {
            let (mut p, rc) = connect_tcp(addr, v, "bad", Some("dev1"), Some(&t[token])).await;
            assert_eq!(rc, ReasonCode::BadUserNameOrPassword, "{token} ({v:?})");
            assert_eq!(p.expect_closed().await, None, "{token}: closed after CONNACK");
            refused += 1;
        }
    }
    // Malformed tokens, and a password that is no token at all (no other source: refused too).
    for pw in [
        "eyJhbGciOiJSUzI1NiJ9.e30.AAAA",
        "eyJub3QganNvbg.e30.",
        "eyJ.x.y",
        "hunter2",
        "",
    ] {
        let (mut p, rc) = connect_tcp(addr, V5, "bad", Some("dev1"), Some(pw)).await;
        assert_eq!(rc, ReasonCode::BadUserNameOrPassword, "{pw:?}");
        assert_eq!(p.expect_closed().await, None);
        refused += 1;
    }
    // Anonymous: 0x87.
    let (_, rc) = connect_tcp(addr, V5, "anon", None, None).await;
    assert_eq!(rc, ReasonCode::NotAuthorized);
    assert_eq!(b.security().auth_failures(), refused + 1);
}

/// The token's `acl` claim is the client's access list, with `%c` replaced by its client id
/// and `%u` by its subject, applied like the ACL file: v5 SUBACK 0x87 for a filter it does not
/// cover, PUBACK 0x87 (3.1.1: a positive acknowledgement, v3.1.1 [MQTT-3.3.5-2]) and no
/// delivery for a topic it does not allow.
#[tokio::test]
async fn acl_claims_are_enforced() {
    let keys = Keys::new("jwt-acl");
    let b = start_with(issue_config(&keys.path("rsa.pub"))).await;
    let t = keys.tokens(json!([
        {"name": "dev1", "alg": "RS256", "key": "rsa", "claims": claims("dev1")},
        {"name": "user", "alg": "RS256", "key": "rsa", "claims": with(claims("alice"), json!({"acl": {"publish": ["users/%u/out"], "subscribe": ["users/%u/#"], "deny": ["users/%u/secret"]}}))},
        {"name": "badacl", "alg": "RS256", "key": "rsa", "claims": with(claims("x"), json!({"acl": {"publish": ["a/#/b"]}}))},
    ]));
    let addr = b.addr();
    let (mut dev, rc) = connect_tcp(addr, V5, "dev1", Some("dev1"), Some(&t["dev1"])).await;
    assert_eq!(rc, ReasonCode::Success);
    assert_eq!(subscribe(&mut dev, "devices/#").await, ReasonCode::GrantedQoS1);
    assert_eq!(
        subscribe(&mut dev, "devices/dev2/+").await,
        ReasonCode::GrantedQoS1
    );
    assert_eq!(subscribe(&mut dev, "#").await, ReasonCode::NotAuthorized);
    assert_eq!(subscribe(&mut dev, "other/x").await, ReasonCode::NotAuthorized);
    let ack = publish(&mut dev, "devices/dev1/temp", QoS::AtLeastOnce)
        .await
        .unwrap();
    assert_eq!(ack.reason_code, ReasonCode::Success);
    expect_message(&mut dev, "devices/dev1/temp").await;
    let ack = publish(&mut dev, "devices/dev2/temp", QoS::AtLeastOnce)
        .await
        .unwrap();
    assert_eq!(ack.reason_code, ReasonCode::NotAuthorized);
    dev.expect_silence(200).await;

    // %u is the token's subject, not the CONNECT user name; deny wins.
    let (mut alice, rc) = connect_tcp(addr, V3, "phone", Some("someone-else"), Some(&t["user"])).await;
    assert_eq!(rc, ReasonCode::Success);
    assert_eq!(
        subscribe(&mut alice, "users/alice/#").await,
        ReasonCode::GrantedQoS1
    );
    assert_eq!(
        subscribe(&mut alice, "users/someone-else/#").await,
        ReasonCode::UnspecifiedError
    );
    // 3.1.1: a denied QoS 1 PUBLISH is acknowledged and dropped.
    let ack = publish(&mut alice, "users/alice/secret", QoS::AtLeastOnce)
        .await
        .unwrap();
    assert_eq!(ack.reason_code, ReasonCode::Success);
    let ack = publish(&mut alice, "users/alice/out", QoS::AtLeastOnce)
        .await
        .unwrap();
    assert_eq!(ack.reason_code, ReasonCode::Success);
    expect_message(&mut alice, "users/alice/out").await;
    alice.expect_silence(200).await;

    // An access list that does not parse refuses the token.
    let (_, rc) = connect_tcp(addr, V5, "x", Some("x"), Some(&t["badacl"])).await;
    assert_eq!(rc, ReasonCode::BadUserNameOrPassword);
}

/// A will on a topic the token's access list does not allow refuses the connection (0x87).
#[tokio::test]
async fn will_outside_the_token_acl_is_refused() {
    let keys = Keys::new("jwt-will");
    let b = start_with(issue_config(&keys.path("rsa.pub"))).await;
    let t = keys.tokens(json!([{"name": "dev1", "alg": "RS256", "key": "rsa", "claims": claims("dev1")}]));
    for (topic, expected) in [
        ("devices/dev1/status", ReasonCode::Success),
        ("elsewhere", ReasonCode::NotAuthorized),
    ] {
        let mut c = connect(V5, "dev1", Some("dev1"), Some(&t["dev1"]));
        c.will = Some(tern_proto::Will {
            topic: topic.into(),
            payload: "gone".into(),
            qos: QoS::AtMostOnce,
            retain: false,
            properties: Default::default(),
        });
        let mut p = Peer::tcp(b.addr(), V5).await;
        assert_eq!(p.connect(c).await.reason_code, expected, "{topic}");
    }
}

/// Every algorithm family from a JWKS served over HTTP (RS256, ES256, EdDSA, chosen by
/// `kid`), HS256 from a secret file; an unknown `kid` is refused; when the JWKS service goes
/// down, the keys fetched before stay in force.
#[tokio::test]
async fn jwks_and_every_algorithm() {
    let keys = Keys::new("jwt-jwks");
    let mut service = Service::start(&keys.dir.0);
    let config = Config {
        allow_anonymous: false,
        auth: tern_broker::security::AuthConfig {
            jwt: Some(tern_broker::security::JwtConfig {
                algorithms: ["RS256", "ES256", "EdDSA", "HS256"].map(String::from).to_vec(),
                jwks_url: Some(service.url("/jwks.json")),
                jwks_refresh_secs: 1,
                secret_file: Some(keys.path("hmac.secret")),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let b = start_with(config).await;
    let good = json!({"sub": "dev", "exp": now() + 3600});
    let t = keys.tokens(json!([
        {"name": "rs", "alg": "RS256", "key": "rsa", "kid": "rsa1", "claims": good},
        {"name": "es", "alg": "ES256", "key": "ec", "kid": "ec1", "claims": good},
        {"name": "ed", "alg": "EdDSA", "key": "ed", "kid": "ed1", "claims": good},
        {"name": "ed-nokid", "alg": "EdDSA", "key": "ed", "claims": good},
        {"name": "hs", "alg": "HS256", "key": "hmac", "claims": good},
        {"name": "unknown-kid", "alg": "RS256", "key": "rsa", "kid": "rsa9", "claims": good},
        {"name": "wrong-key", "alg": "RS256", "key": "rsa-other", "kid": "rsa1", "claims": good},
    ]));
    // The first fetch happens at start; wait for it (bounded).
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (_, rc) = connect_tcp(b.addr(), V5, "probe", Some("dev"), Some(&t["rs"])).await;
        if rc == ReasonCode::Success {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the JWKS was never fetched"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let check = |expected: &'static [(&'static str, ReasonCode)]| {
        let t = t.clone();
        let addr = b.addr();
        async move {
            for (name, rc) in expected {
                let (_, got) = connect_tcp(addr, V5, name, Some("dev"), Some(&t[*name])).await;
                assert_eq!(got, *rc, "{name}");
            }
        }
    };
    const ALL: &[(&str, ReasonCode)] = &[
        ("rs", ReasonCode::Success),
        ("es", ReasonCode::Success),
        ("ed", ReasonCode::Success),
        ("ed-nokid", ReasonCode::Success),
        ("hs", ReasonCode::Success),
        ("unknown-kid", ReasonCode::BadUserNameOrPassword),
        ("wrong-key", ReasonCode::BadUserNameOrPassword),
    ];
    check(ALL).await;
    // An outage: the service answers 503, then is gone; refreshes fail, the keys stay.
    let (requests_before, _) = service.stats().await;
    std::fs::write(keys.path("jwks.down"), "").unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (requests_after, _) = service.stats().await;
    assert!(
        requests_after > requests_before,
        "the JWKS is fetched again every second"
    );
    check(ALL).await;
    service.stop();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    check(ALL).await;
}

/// v5 section 4.12 and v5 [MQTT-4.12.1-1]: the method `JWT` carries the token in the
/// Authentication Data; a re-authentication (AUTH 0x19, same method) with a fresh token
/// before expiry keeps the connection open past the first token's `exp`, and the connection
/// whose token expires without one is closed with DISCONNECT 0x87 Not authorized.
#[tokio::test]
async fn enhanced_auth_reauthentication_and_disconnect_at_expiry() {
    let keys = Keys::new("jwt-reauth");
    let mut config = issue_config(&keys.path("rsa.pub"));
    config.auth.jwt.as_mut().unwrap().leeway_secs = 0;
    let b = start_with(config).await;
    let soon = with(claims("dev1"), json!({"exp": now() + 5}));
    let later = claims("dev1");
    let t = keys.tokens(json!([
        {"name": "soon", "alg": "RS256", "key": "rsa", "claims": soon},
        {"name": "later", "alg": "RS256", "key": "rsa", "claims": later},
        {"name": "expired", "alg": "RS256", "key": "rsa", "claims": with(claims("dev1"), json!({"exp": now() - 60}))},
    ]));
    let jwt_connect = |id: &str, token: &str| {
        let mut c = Connect::new(V5, id);
        c.keep_alive = 0;
        c.properties.authentication_method = Some("JWT".into());
        c.properties.authentication_data = Some(bytes::Bytes::copy_from_slice(token.as_bytes()));
        c
    };
    // A bad token through AUTH: 0x87 (the exchange failed).
    let mut p = Peer::tcp(b.addr(), V5).await;
    assert_eq!(
        p.connect(jwt_connect("e", &t["expired"])).await.reason_code,
        ReasonCode::NotAuthorized
    );

    // Re-authenticated before expiry: still connected after it.
    let mut renewed = Peer::tcp(b.addr(), V5).await;
    let ack = renewed.connect(jwt_connect("renewed", &t["soon"])).await;
    assert_eq!(ack.reason_code, ReasonCode::Success);
    assert_eq!(ack.properties.authentication_method.as_deref(), Some("JWT"));
    let mut reauth = Auth {
        reason_code: Some(ReasonCode::ReAuthenticate),
        properties: Default::default(),
    };
    reauth.properties.authentication_method = Some("JWT".into());
    reauth.properties.authentication_data = Some(bytes::Bytes::copy_from_slice(t["later"].as_bytes()));
    renewed.send(Packet::Auth(reauth)).await;
    match renewed.recv().await {
        Packet::Auth(a) => assert_eq!(a.reason_code, Some(ReasonCode::Success)),
        other => panic!("expected AUTH 0x00, got {other:?}"),
    }
    // The password path, 5.0 and 3.1.1: closed at expiry.
    let (mut v5, rc) = connect_tcp(b.addr(), V5, "expiring5", Some("dev1"), Some(&t["soon"])).await;
    assert_eq!(rc, ReasonCode::Success);
    let (mut v3, rc) = connect_tcp(b.addr(), V3, "expiring3", Some("dev1"), Some(&t["soon"])).await;
    assert_eq!(rc, ReasonCode::Success);
    let started = std::time::Instant::now();
    match v5.next_within(Duration::from_secs(10)).await {
        Ok(Some(Packet::Disconnect(d))) => assert_eq!(d.reason(), ReasonCode::NotAuthorized),
        other => panic!("expected DISCONNECT 0x87 at expiry, got {other:?}"),
    }
    assert!(matches!(v3.next_within(Duration::from_secs(10)).await, Ok(None)));
    assert!(started.elapsed() < Duration::from_secs(7));
    // The renewed connection is still there.
    renewed.sync().await;
}

/// `cert_cn_must_match_user`: over mutual TLS, the token's subject must be the certificate's CN.
#[tokio::test]
async fn certificate_cn_must_match_the_token_subject() {
    let keys = Keys::new("jwt-mtls");
    let pki = Pki::new("jwt-mtls");
    let mut config = issue_config(&keys.path("rsa.pub"));
    config.auth.cert_cn_must_match_user = true;
    config.listen.clear();
    config
        .listeners
        .push(pki.listener(tern_broker::ListenerKind::Tls, true));
    init_logs();
    let b = BrokerBuilder::from_config(config).bind().await.unwrap().spawn();
    let t = keys.tokens(json!([
        {"name": "dev1", "alg": "RS256", "key": "rsa", "claims": claims("dev1")},
        {"name": "dev2", "alg": "RS256", "key": "rsa", "claims": claims("dev2")},
    ]));
    let cert = pki.client("dev1");
    for (token, expected) in [("dev1", ReasonCode::Success), ("dev2", ReasonCode::NotAuthorized)] {
        let io = pki.connect(b.addr(), Some(&cert)).await.unwrap();
        let mut p = Peer::over(io, V5);
        let ack = p.connect(connect(V5, token, Some("x"), Some(&t[token]))).await;
        assert_eq!(ack.reason_code, expected, "{token}");
    }
}

/// An https JWKS (the issue's `jwks_url = "https://..."`): the broker verifies the service's
/// certificate against `jwks_ca_file` and uses the keys; one whose CA it does not trust gives it
/// no keys, and tokens are refused.
#[tokio::test]
async fn jwks_over_https() {
    let keys = Keys::new("jwt-https");
    let pki = Pki::new("jwt-https");
    let service = Service::start_tls(&keys.dir.0, &pki.server_cert, &pki.server_key);
    let stranger = Pki::new("jwt-https-stranger");
    let t = keys.tokens(json!([{"name": "ed", "alg": "EdDSA", "key": "ed", "kid": "ed1", "claims": {"sub": "d", "exp": now() + 600}}]));
    for (ca, expected) in [
        (&pki.ca_file, ReasonCode::Success),
        (&stranger.ca_file, ReasonCode::BadUserNameOrPassword),
    ] {
        let config = Config {
            allow_anonymous: false,
            auth: tern_broker::security::AuthConfig {
                jwt: Some(tern_broker::security::JwtConfig {
                    algorithms: vec!["EdDSA".into()],
                    jwks_url: Some(service.https_url("/jwks.json")),
                    jwks_ca_file: Some(ca.clone()),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let b = start_with(config).await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        let mut rc;
        loop {
            rc = connect_tcp(b.addr(), V5, "d", Some("d"), Some(&t["ed"])).await.1;
            if rc == ReasonCode::Success || tokio::time::Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(rc, expected);
    }
}

/// Real clients: `mosquitto_sub` and `mosquitto_pub` (Debian's mosquitto-clients, installed by
/// scripts/test) with tokens in the password, in both protocol versions; the token's access
/// list holds for them too, and a bad token makes `mosquitto_pub` fail.
#[tokio::test]
async fn mosquitto_clients_with_tokens() {
    use std::process::{Command, Stdio};
    let keys = Keys::new("jwt-mosquitto");
    let b = start_with(issue_config(&keys.path("rsa.pub"))).await;
    let port = b.addr().port().to_string();
    let t = keys.tokens(json!([
        {"name": "sub", "alg": "RS256", "key": "rsa", "claims": claims("watcher")},
        {"name": "dev1", "alg": "RS256", "key": "rsa", "claims": claims("dev1")},
        {"name": "expired", "alg": "RS256", "key": "rsa", "claims": with(claims("dev1"), json!({"exp": now() - 3600}))},
    ]));
    let sub = Command::new("mosquitto_sub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-V",
            "mqttv5",
            "-i",
            "watcher",
            "-u",
            "watcher",
        ])
        .args([
            "-P",
            &t["sub"],
            "-t",
            "devices/#",
            "-q",
            "1",
            "-C",
            "2",
            "-W",
            "10",
            "-v",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("mosquitto_sub (apt-get install mosquitto-clients)");
    // Wait for the subscription (the broker lists it).
    let deadline = tokio::time::Instant::now() + WAIT;
    while b.session("watcher").is_none_or(|s| s.subscriptions.is_empty()) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "mosquitto_sub did not subscribe"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The broker runs on this test's runtime: the clients run on the blocking pool.
    let publish = |version: &'static str, topic: &'static str, token: &str| {
        let (port, token) = (port.clone(), token.to_string());
        tokio::task::spawn_blocking(move || {
            Command::new("mosquitto_pub")
                .args([
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &port,
                    "-V",
                    version,
                    "-i",
                    "dev1",
                    "-u",
                    "dev1",
                ])
                .args(["-P", &token, "-t", topic, "-m", "hello", "-q", "1"])
                .stderr(Stdio::null())
                .status()
                .unwrap()
                .success()
        })
    };
    assert!(publish("mqttv5", "devices/dev1/a", &t["dev1"]).await.unwrap());
    // Outside the token's access list: acknowledged with 0x87 (5.0), not delivered.
    publish("mqttv5", "devices/dev2/b", &t["dev1"]).await.unwrap();
    assert!(publish("mqttv311", "devices/dev1/c", &t["dev1"]).await.unwrap());
    assert!(!publish("mqttv5", "devices/dev1/d", &t["expired"]).await.unwrap());
    assert!(!publish("mqttv311", "devices/dev1/d", &t["expired"])
        .await
        .unwrap());
    let out = tokio::task::spawn_blocking(move || sub.wait_with_output().unwrap())
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text, "devices/dev1/a hello\ndevices/dev1/c hello\n");
}
