//! The admin API over HTTP: listings, disconnect, retained messages, publish, health, the
//! errors of bad input, and the security rules.

use std::time::Duration;

use base64::Engine as _;
use tern_client::{Event, QoS};

use crate::support::*;

#[tokio::test]
async fn health_and_broker_information() {
    let t = start().await;
    assert_eq!(get(t.http, "/healthz").await.status, 200);
    let r = get(t.http, "/readyz").await;
    assert_eq!((r.status, r.json()["status"].as_str()), (200, Some("ready")));
    let b = get(t.http, "/api/v1/broker").await.json();
    assert_eq!(b["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(b["listeners"][0]["address"], t.mqtt().to_string());
    assert_eq!(b["listeners"][0]["kind"], "tcp");
    let c = get(t.http, "/api/v1/config").await.json();
    assert_eq!(c["max_inflight"], 100);
    let spec = get(t.http, "/api/v1/openapi.json").await;
    assert_eq!(spec.status, 200);
    assert_eq!(spec.json()["openapi"].as_str().map(|v| &v[..2]), Some("3."));
}

#[tokio::test]
async fn clients_are_listed_filtered_paged_and_disconnected() {
    let t = start().await;
    let (_a, _ea) = client(&t, "sensor-1").await;
    let (_b, _eb) = client(&t, "sensor-2").await;
    let (c, mut ec) = client(&t, "actuator-1").await;
    c.subscribe("cmd/#", QoS::AtLeastOnce).await.unwrap();

    let all = get(t.http, "/api/v1/clients").await.json();
    assert_eq!(all["total"], 3);
    let ids: Vec<&str> = all["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["client_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["actuator-1", "sensor-1", "sensor-2"]);
    let page = get(t.http, "/api/v1/clients?client_id=sensor-&limit=1&offset=1")
        .await
        .json();
    assert_eq!(
        (page["total"].as_u64(), page["items"][0]["client_id"].as_str()),
        (Some(2), Some("sensor-2"))
    );
    let by_addr = get(t.http, "/api/v1/clients?address=127.0.0.1&listener=tcp")
        .await
        .json();
    assert_eq!(by_addr["total"], 3);
    assert_eq!(
        get(t.http, "/api/v1/clients?user=nobody").await.json()["total"],
        0
    );

    let one = get(t.http, "/api/v1/clients/actuator-1").await.json();
    assert_eq!(one["protocol_version"], "5.0");
    assert_eq!(one["subscriptions"][0]["filter"], "cmd/#");
    assert_eq!(one["subscriptions"][0]["qos"], 1);
    assert_eq!(
        one["connection"]["address"]
            .as_str()
            .map(|a| a.starts_with("127.0.0.1:")),
        Some(true)
    );
    let subs = get(t.http, "/api/v1/subscriptions?filter=cmd/%23").await.json();
    assert_eq!(
        (subs["total"].as_u64(), subs["items"][0]["client_id"].as_str()),
        (Some(1), Some("actuator-1"))
    );

    let kicked = request(t.http, "DELETE", "/api/v1/clients/actuator-1", &[], "").await;
    assert_eq!(kicked.status, 200, "{}", kicked.body);
    let reason = eventually(5, "the client to be disconnected", || {
        let next = ec.try_recv();
        async move {
            match next {
                Some(Event::Disconnected { reason }) => Some(reason.to_string()),
                _ => None,
            }
        }
    })
    .await;
    assert!(
        reason.contains("0x98") || reason.to_lowercase().contains("administrative"),
        "{reason}"
    );
    eventually(5, "the listing to drop it", || async {
        (get(t.http, "/api/v1/clients").await.json()["total"] == 2).then_some(())
    })
    .await;
    assert_eq!(
        request(t.http, "DELETE", "/api/v1/clients/nobody", &[], "")
            .await
            .status,
        404
    );
    assert_eq!(get(t.http, "/api/v1/clients/nobody").await.status, 404);
}

#[tokio::test]
async fn offline_sessions_are_listed_and_discarded() {
    let t = start().await;
    let (c, _e) = tern_client::Client::connect(
        tern_client::Options::new(format!("mqtt://{}", t.mqtt()))
            .client_id("keeper")
            .clean_start(false)
            .session_expiry(3600)
            .reconnect(tern_client::Reconnect::disabled()),
    )
    .await
    .unwrap();
    c.subscribe("keep/#", QoS::AtLeastOnce).await.unwrap();
    c.disconnect().await.unwrap();
    let s = eventually(5, "an offline session", || async {
        let v = get(t.http, "/api/v1/sessions?online=false").await.json();
        (v["total"] == 1).then_some(v)
    })
    .await;
    assert_eq!(s["items"][0]["client_id"], "keeper");
    assert_eq!(s["items"][0]["connected"], false);
    assert_eq!(get(t.http, "/api/v1/clients").await.json()["total"], 0);
    let r = request(
        t.http,
        "POST",
        "/api/v1/clients/keeper/disconnect",
        &[],
        "{\"discard_session\": true}",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(get(t.http, "/api/v1/sessions").await.json()["total"], 0);
}

#[tokio::test]
async fn publish_and_retained_messages() {
    let t = start().await;
    let (c, mut events) = client(&t, "listener").await;
    c.subscribe("api/#", QoS::AtLeastOnce).await.unwrap();
    let body = serde_json::json!({
        "topic": "api/1", "payload": "hello", "qos": 1, "retain": true,
        "properties": { "content_type": "text/plain", "user_properties": [["k", "v"]] }
    });
    let r = request(t.http, "POST", "/api/v1/publish", &[], &body.to_string()).await;
    assert_eq!(
        (r.status, r.json()["sessions_reached"].as_u64()),
        (200, Some(1)),
        "{}",
        r.body
    );
    let m = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Some(Event::Message(m)) = events.recv().await {
                break m;
            }
        }
    })
    .await
    .unwrap();
    assert_eq!((m.topic.as_ref(), m.payload_str()), ("api/1", Some("hello")));
    assert_eq!(m.properties.content_type.as_deref(), Some("text/plain"));

    let binary = base64::engine::general_purpose::STANDARD.encode([0u8, 159, 146, 150]);
    let body = serde_json::json!({ "topic": "api/bin", "payload": binary, "payload_encoding": "base64", "retain": true });
    assert_eq!(
        request(t.http, "POST", "/api/v1/publish", &[], &body.to_string())
            .await
            .status,
        200
    );

    let list = get(t.http, "/api/v1/retained?filter=api/%23").await.json();
    assert_eq!(list["total"], 2);
    assert_eq!(list["items"][0]["topic"], "api/1");
    assert_eq!(list["items"][0]["payload"], "hello");
    assert_eq!(list["items"][1]["payload_encoding"], "base64");
    assert_eq!(list["items"][1]["payload"], binary);
    let one = get(t.http, "/api/v1/retained/api/1").await.json();
    assert_eq!(one["content_type"], "text/plain");
    assert_eq!(
        request(t.http, "DELETE", "/api/v1/retained/api/1", &[], "")
            .await
            .status,
        200
    );
    assert_eq!(get(t.http, "/api/v1/retained/api/1").await.status, 404);
    assert_eq!(
        request(t.http, "DELETE", "/api/v1/retained/api/1", &[], "")
            .await
            .status,
        404
    );
    assert_eq!(get(t.http, "/api/v1/retained").await.json()["total"], 1);
}

#[tokio::test]
async fn bad_input_gets_the_right_4xx_as_json() {
    let t = start().await;
    let cases: [(&str, &str, &str, u16); 12] = [
        ("GET", "/api/v1/clients?limit=100000", "", 400),
        ("GET", "/api/v1/clients?limit=0", "", 400),
        ("GET", "/api/v1/clients?offset=-1", "", 400),
        ("GET", "/api/v1/clients?nonsense=1", "", 400),
        ("GET", "/api/v1/retained?filter=a/%23/b", "", 400),
        ("POST", "/api/v1/publish", "{not json", 400),
        ("POST", "/api/v1/publish", "{\"topic\": \"a/+\"}", 400),
        ("POST", "/api/v1/publish", "{\"topic\": \"a\", \"qos\": 3}", 400),
        (
            "POST",
            "/api/v1/publish",
            "{\"topic\": \"a\", \"payload\": \"!\", \"payload_encoding\": \"base64\"}",
            400,
        ),
        (
            "POST",
            "/api/v1/publish",
            "{\"topic\": \"a\", \"surprise\": 1}",
            400,
        ),
        ("GET", "/api/v1/no/such/thing", "", 404),
        ("DELETE", "/api/v1/clients/x?discard_session=maybe", "", 400),
    ];
    for (method, path, body, status) in cases {
        let r = request(t.http, method, path, &[], body).await;
        assert_eq!(r.status, status, "{method} {path} {body}: {}", r.body);
        assert!(r.json()["error"].is_string(), "{method} {path}: {}", r.body);
    }
    let r = request(
        t.http,
        "POST",
        "/api/v1/clients/x/disconnect",
        &[],
        "{\"discard\": 1}",
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.body);
    let huge = format!(
        "{{\"topic\": \"a\", \"payload\": \"{}\"}}",
        "x".repeat(5 * 1024 * 1024)
    );
    assert_eq!(
        request(t.http, "POST", "/api/v1/publish", &[], &huge)
            .await
            .status,
        413
    );
    // The broker still serves.
    assert_eq!(get(t.http, "/healthz").await.status, 200);
}

fn password_file(dir: &TempDir) -> std::path::PathBuf {
    let mut f = tern_broker::security::password::PasswordFile::default();
    f.add("alice", b"wonderland", 1000).unwrap();
    f.add("bob", b"builder", 1000).unwrap();
    let p = dir.0.join("passwords");
    f.save(&p).unwrap();
    p
}

#[tokio::test]
async fn credentials_are_required_when_configured_and_failures_are_limited() {
    let dir = TempDir::new("auth");
    let passwords = password_file(&dir);
    let tokens = dir.0.join("tokens");
    std::fs::write(&tokens, format!("# ci\n{}\n", tern_admin::hash_token("t0ken"))).unwrap();
    let t = start_with(|c, h| {
        c.password_file = Some(passwords.clone());
        h.admins = vec!["alice".into()];
        h.tokens_file = Some(tokens.clone());
    })
    .await;
    let basic = |u: &str, p: &str| {
        format!(
            "Authorization: Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
        )
    };
    // Health probes are open; everything else needs credentials.
    assert_eq!(get(t.http, "/healthz").await.status, 200);
    let r = get(t.http, "/api/v1/clients").await;
    assert_eq!(r.status, 401);
    assert!(
        r.headers.to_lowercase().contains("www-authenticate: basic"),
        "{}",
        r.headers
    );
    assert_eq!(get(t.http, "/metrics").await.status, 401);
    assert_eq!(get(t.http, "/").await.status, 401);
    let ok = request(
        t.http,
        "GET",
        "/api/v1/clients",
        &[&basic("alice", "wonderland")],
        "",
    )
    .await;
    assert_eq!(ok.status, 200);
    let token = request(t.http, "GET", "/metrics", &["Authorization: Bearer t0ken"], "").await;
    assert_eq!(token.status, 200);
    // bob has a password but is not an admin.
    assert_eq!(
        request(t.http, "GET", "/api/v1/clients", &[&basic("bob", "builder")], "")
            .await
            .status,
        401
    );
    assert_eq!(
        request(t.http, "GET", "/api/v1/clients", &[&basic("alice", "wrong")], "")
            .await
            .status,
        401
    );
    assert_eq!(
        request(
            t.http,
            "GET",
            "/api/v1/clients",
            &["Authorization: Bearer nope"],
            ""
        )
        .await
        .status,
        401
    );
    // 6 failures so far; more until the limit, then 429 even with the right password.
    for _ in 0..(tern_admin::MAX_FAILURES - 6) {
        assert_eq!(get(t.http, "/api/v1/broker").await.status, 401);
    }
    let limited = request(
        t.http,
        "GET",
        "/api/v1/clients",
        &[&basic("alice", "wonderland")],
        "",
    )
    .await;
    assert_eq!(limited.status, 429, "{}", limited.body);
    let m = request(t.http, "GET", "/healthz", &[], "").await;
    assert_eq!(m.status, 200);
}

#[tokio::test]
async fn a_public_address_without_credentials_does_not_start() {
    let broker = tern_broker::BrokerBuilder::new()
        .listen("127.0.0.1:0".parse().unwrap())
        .bind()
        .await
        .unwrap()
        .spawn();
    let mut http = tern_broker::HttpConfig::default();
    http.set_listen(Some("0.0.0.0:0".parse().unwrap()));
    let err = tern_admin::HttpServer::bind(broker.admin(), &http)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not a loopback address"), "{err}");
}

#[tokio::test]
async fn https_with_the_certificate_and_key_of_the_http_table() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = TempDir::new("https");
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    let cert = params.self_signed(&key).unwrap();
    let (cert_path, key_path) = (dir.0.join("http.pem"), dir.0.join("http.key"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    let t = start_with(|_, h| {
        h.cert = Some(cert_path.clone());
        h.key = Some(key_path.clone());
    })
    .await;

    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.der().clone()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(t.http).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = connector.connect(name, tcp).await.unwrap();
    tls.write_all(b"GET /api/v1/broker HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut raw = Vec::new();
    let _ = tls.read_to_end(&mut raw).await;
    let text = String::from_utf8_lossy(&raw);
    assert!(text.starts_with("HTTP/1.0 200"), "{text}");
    assert!(text.contains("\"version\""), "{text}");
    // Plain HTTP on the HTTPS port gets nothing useful, and the endpoint goes on serving.
    assert_ne!(get(t.http, "/healthz").await.status, 200);
    let tcp = tokio::net::TcpStream::connect(t.http).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    assert!(connector.connect(name, tcp).await.is_ok());
}

#[tokio::test]
async fn requests_a_web_page_of_another_site_could_send_are_refused() {
    let t = start().await;
    let (_c, _e) = client(&t, "victim").await;
    // A form posted by a page of another site, and a DNS name rebound to 127.0.0.1.
    let forged = request(
        t.http,
        "POST",
        "/api/v1/clients/victim/disconnect",
        &["Origin: http://evil.example"],
        "",
    )
    .await;
    assert_eq!(forged.status, 403, "{}", forged.body);
    let rebound = request(
        t.http,
        "GET",
        "/api/v1/clients",
        &["Host: evil.example:18083"],
        "",
    )
    .await;
    assert_eq!(rebound.status, 403, "{}", rebound.body);
    assert!(
        get(t.http, "/api/v1/clients/victim").await.status == 200,
        "still connected"
    );
    // The dashboard's own requests (same origin) pass.
    let origin = format!("Origin: http://{}", t.http);
    let own = request(
        t.http,
        "POST",
        "/api/v1/clients/victim/disconnect",
        &[&origin],
        "",
    )
    .await;
    assert_eq!(own.status, 200, "{}", own.body);
}

/// The ban list at run time (the access-control issue: "editable at run time ... and the admin
/// API where it exists"): a ban disconnects a connected client and refuses its next CONNECT;
/// removing it lets the client back in.
#[tokio::test]
async fn bans_are_listed_added_and_removed() {
    let t = start().await;
    let (_rogue, mut events) = client(&t, "rogue").await;
    let added = request(
        t.http,
        "POST",
        "/api/v1/bans",
        &[],
        r#"{"ban": "clientid rogue"}"#,
    )
    .await;
    assert_eq!(added.status, 201, "{}", added.body);
    eventually(5, "the banned client to be disconnected", || {
        let next = events.try_recv();
        async move { matches!(next, Some(Event::Disconnected { .. })).then_some(()) }
    })
    .await;
    let list = get(t.http, "/api/v1/bans").await.json();
    assert_eq!(list["bans"][0]["ban"], "clientid rogue");
    assert!(list["bans"][0]["until"].is_null());
    let refused = tern_client::Client::connect(
        tern_client::Options::new(format!("mqtt://{}", t.mqtt()))
            .client_id("rogue")
            .connect_timeout(Duration::from_secs(3))
            .reconnect(tern_client::Reconnect::disabled()),
    )
    .await;
    assert!(refused.is_err(), "a banned client id connected");
    // Bad input: 400, never a panic; an unknown target: 404.
    for body in [
        r#"{"ban": "nonsense x"}"#,
        r#"{"ban": "address 300.1.1.1"}"#,
        "{",
        r#"{"x": 1}"#,
    ] {
        let r = request(t.http, "POST", "/api/v1/bans", &[], body).await;
        assert_eq!(r.status, 400, "{body}: {}", r.body);
    }
    let none = request(t.http, "DELETE", "/api/v1/bans?ban=clientid%20nobody", &[], "").await;
    assert_eq!(none.status, 404);
    let removed = request(t.http, "DELETE", "/api/v1/bans?ban=clientid%20rogue", &[], "").await;
    assert_eq!(
        (removed.status, removed.json()["removed"].as_u64()),
        (200, Some(1)),
        "{}",
        removed.body
    );
    assert_eq!(
        get(t.http, "/api/v1/bans").await.json()["bans"],
        serde_json::json!([])
    );
    let (_back, _) = client(&t, "rogue").await;
}

/// `GET /api/v1/topics`: the topics clients published on, with a sample of their traffic,
/// filtered and paged; none when `http.recent_topics = 0`.
#[tokio::test]
async fn topics_seen_recently() {
    let t = start().await;
    let (c, _events) = client(&t, "recent-publisher").await;
    c.publish("recent/a", "21.5".to_string(), QoS::AtMostOnce)
        .await
        .unwrap();
    c.publish("recent/b/c", vec![0u8, 159, 146, 150], QoS::AtLeastOnce)
        .await
        .unwrap();
    c.publish("other/x", "x".repeat(1000), QoS::AtLeastOnce)
        .await
        .unwrap();
    let list = eventually(5, "two topics seen", || async {
        let l = get(t.http, "/api/v1/topics?filter=recent/%23").await.json();
        (l["total"] == 2).then_some(l)
    })
    .await;
    let items = &list["items"];
    assert_eq!(items[0]["topic"], "recent/a");
    assert_eq!(
        (items[0]["payload"].as_str(), items[0]["qos"].as_u64()),
        (Some("21.5"), Some(0))
    );
    assert_eq!(items[1]["topic"], "recent/b/c");
    assert_eq!(items[1]["payload_encoding"], "base64");
    assert_eq!(items[1]["qos"], 1);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let seen = items[0]["last_seen"].as_u64().unwrap();
    assert!(seen <= now && now - seen < 60_000, "{seen} {now}");
    // A long payload: its first 256 bytes, and its size.
    let all = get(t.http, "/api/v1/topics").await.json();
    assert_eq!(all["total"], 3);
    let other = &all["items"][0];
    assert_eq!(
        (other["topic"].as_str(), other["payload_size"].as_u64()),
        (Some("other/x"), Some(1000))
    );
    assert_eq!(
        (
            other["payload"].as_str().unwrap().len(),
            other["truncated"].as_bool()
        ),
        (256, Some(true))
    );
    assert_eq!(
        get(t.http, "/api/v1/topics?limit=1&offset=1").await.json()["items"][0]["topic"],
        "recent/a"
    );
    assert_eq!(get(t.http, "/api/v1/topics?filter=a/%23/b").await.status, 400);

    let off = start_with(|c, _| c.http.recent_topics = 0).await;
    let (c, _events) = client(&off, "unrecorded").await;
    c.publish("recent/a", "x".to_string(), QoS::AtLeastOnce)
        .await
        .unwrap();
    assert_eq!(get(off.http, "/api/v1/topics").await.json()["total"], 0);
}
