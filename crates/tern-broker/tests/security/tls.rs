//! TLS listeners: TLS 1.2 and 1.3, ALPN, mutual TLS, identity as user name, the
//! client library over mqtts://, configuration errors and hostile input.

use std::time::{Duration, Instant};

use tern_broker::{BrokerBuilder, ListenerKind};
use tern_client::transport::TlsOptions;
use tern_client::{Client, Event, Options, QoS, Reconnect};
use tern_proto::{Packet, ReasonCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

#[tokio::test]
async fn tls_listener_speaks_tls12_and_tls13_with_alpn() {
    let pki = Pki::new("tls-versions");
    let b = start(|b| b.listener(pki.listener(ListenerKind::Tls, false))).await;
    let addr = b.addr_of(ListenerKind::Tls).unwrap();
    for (version, alpn) in [
        (&rustls::version::TLS12, vec![]),
        (&rustls::version::TLS13, vec!["mqtt"]),
    ] {
        let config = pki.client_config(None, &[version], &alpn);
        let stream = tls_connect(addr, config).await.unwrap();
        let (_, conn) = stream.get_ref();
        assert_eq!(conn.protocol_version(), Some(version.version));
        if !alpn.is_empty() {
            assert_eq!(conn.alpn_protocol(), Some(&b"mqtt"[..]));
        }
        let mut p = Peer::over(stream, V5);
        let ack = p.connect(connect(V5, "tls-peer", None, None)).await;
        assert_eq!(ack.reason_code, ReasonCode::Success);
        p.sync().await;
    }
}

fn client_options(url: String, tls: TlsOptions, id: &str) -> Options {
    Options::new(url)
        .client_id(id)
        .tls(tls)
        .connect_timeout(Duration::from_secs(3))
        .reconnect(Reconnect::disabled())
}

async fn round_trip(sub_opts: Options, pub_opts: Options, topic: &str) {
    let (sub, mut events) = tokio::time::timeout(WAIT, Client::connect(sub_opts))
        .await
        .unwrap()
        .unwrap();
    sub.subscribe(topic, QoS::AtLeastOnce).await.unwrap();
    let (publ, _pe) = tokio::time::timeout(WAIT, Client::connect(pub_opts))
        .await
        .unwrap()
        .unwrap();
    publ.publish(topic, "over tls", QoS::AtLeastOnce).await.unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await.unwrap() {
            Some(Event::Message(m)) => {
                assert_eq!(&*m.topic, topic);
                assert_eq!(m.payload_str(), Some("over tls"));
                break;
            }
            Some(_) => {}
            None => panic!("events ended"),
        }
    }
    sub.disconnect().await.unwrap();
    publ.disconnect().await.unwrap();
}

/// The client library over mqtts:// with a custom CA, SNI and a pinned certificate.
#[tokio::test]
async fn client_library_over_mqtts() {
    let pki = Pki::new("tls-client");
    let b = start(|b| b.listener(pki.listener(ListenerKind::Tls, false))).await;
    let port = b.addr_of(ListenerKind::Tls).unwrap().port();
    let by_ca = TlsOptions::new().ca_pem(pki.ca_pem.clone());
    // By IP address with the name given for SNI and verification.
    let by_ip = TlsOptions::new()
        .ca_pem(pki.ca_pem.clone())
        .server_name("localhost");
    let pinned = TlsOptions::new().accept_certificate(pki.server_cert_pem.clone());
    round_trip(
        client_options(format!("mqtts://localhost:{port}"), by_ca, "tls-sub"),
        client_options(format!("mqtts://127.0.0.1:{port}"), by_ip, "tls-pub"),
        "tls/topic",
    )
    .await;
    round_trip(
        client_options(format!("mqtts://127.0.0.1:{port}"), pinned.clone(), "pin-sub"),
        client_options(format!("mqtts://127.0.0.1:{port}"), pinned, "pin-pub"),
        "tls/pinned",
    )
    .await;
    // An unknown CA fails the handshake.
    let stranger = Pki::new("tls-client-stranger");
    let e = Client::connect(client_options(
        format!("mqtts://localhost:{port}"),
        TlsOptions::new().ca_pem(stranger.ca_pem.clone()),
        "x",
    ))
    .await
    .unwrap_err();
    assert!(matches!(e, tern_client::ClientError::Transport { .. }), "{e}");
}

/// RELIABILITY.md H3: with mutual TLS, a client without a certificate, with one from
/// another CA or with an expired one gets no MQTT session, on tls and wss alike.
#[tokio::test]
async fn mutual_tls_refuses_missing_foreign_and_expired_certificates() {
    let pki = Pki::new("mtls");
    let b = start(|b| {
        b.listener(pki.listener(ListenerKind::Tls, true))
            .listener(pki.listener(ListenerKind::Wss, true))
    })
    .await;
    let addr = b.addr_of(ListenerKind::Tls).unwrap();
    let good = pki.client("device-1");
    let foreign = Pki::stranger("device-2");
    let expired = pki.client_with("device-3", |p| {
        p.not_before = rcgen::date_time_ymd(2000, 1, 1);
        p.not_after = rcgen::date_time_ymd(2001, 1, 1);
    });
    let stream = pki.connect(addr, Some(&good)).await.unwrap();
    assert!(mqtt_works(stream, "good").await);
    for (name, identity) in [
        ("none", None),
        ("foreign", Some(&foreign)),
        ("expired", Some(&expired)),
    ] {
        let ok = match pki.connect(addr, identity).await {
            Ok(stream) => mqtt_works(stream, name).await,
            Err(_) => false,
        };
        assert!(!ok, "{name} certificate was accepted");
    }
    // wss: the same through the client library.
    let wss = b.addr_of(ListenerKind::Wss).unwrap().port();
    let url = format!("wss://localhost:{wss}/mqtt");
    let with_cert = TlsOptions::new()
        .ca_pem(pki.ca_pem.clone())
        .client_auth_pem(good.0.clone(), good.1.clone());
    let (c, _e) = Client::connect(client_options(url.clone(), with_cert, "wss-good"))
        .await
        .unwrap();
    c.disconnect().await.unwrap();
    let without = TlsOptions::new().ca_pem(pki.ca_pem.clone());
    assert!(Client::connect(client_options(url, without, "wss-none"))
        .await
        .is_err());
}

/// use_identity_as_username: the certificate's CN is the user name the ACL sees,
/// whatever CONNECT says.
#[tokio::test]
async fn certificate_common_name_is_the_user_name() {
    let pki = Pki::new("identity");
    let acl = pki.dir.file("acl", "pattern readwrite devices/%u/#\n");
    let mut l = pki.listener(ListenerKind::Tls, true);
    l.use_identity_as_username = true;
    l.allow_anonymous = Some(false);
    let b = start(|b| b.listener(l).configure(|c| c.acl_file = Some(acl))).await;
    let addr = b.addr_of(ListenerKind::Tls).unwrap();
    let id = pki.client("sensor-1");
    let mut p = Peer::over(pki.connect(addr, Some(&id)).await.unwrap(), V5);
    let ack = p
        .connect(connect(V5, "c1", Some("somebody-else"), Some("x")))
        .await;
    assert_eq!(ack.reason_code, ReasonCode::Success);
    for (topic, expected) in [
        ("devices/sensor-1/t", ReasonCode::NoMatchingSubscribers),
        ("devices/somebody-else/t", ReasonCode::NotAuthorized),
    ] {
        let mut m = tern_proto::Publish::new(topic, "x");
        m.qos = QoS::AtLeastOnce;
        m.packet_id = tern_proto::PacketId::new(1);
        p.send(Packet::Publish(m)).await;
        match p.recv().await {
            Packet::PubAck(a) => assert_eq!(a.reason_code, expected, "{topic}"),
            other => panic!("{other:?}"),
        }
    }
}

/// RELIABILITY.md H2: missing or unusable TLS material stops the broker with one line
/// naming the field.
#[tokio::test]
async fn bad_tls_material_refuses_to_start() {
    let pki = Pki::new("tls-config");
    let garbage = pki.dir.file("garbage.pem", "not a pem file\n");
    let empty = pki.dir.file("empty.pem", "");
    let other = Pki::new("tls-config-other");
    type Change<'a> = Box<dyn Fn(&mut tern_broker::ListenerConfig) + 'a>;
    let cases: Vec<(&str, Change)> = vec![
        (
            "`listener[0].cert`",
            Box::new(|l| l.cert = Some(pki.dir.path("missing.pem"))),
        ),
        ("`listener[0].cert`", Box::new(|l| l.cert = Some(empty.clone()))),
        ("`listener[0].key`", Box::new(|l| l.key = Some(garbage.clone()))),
        (
            "`listener[0].key`",
            Box::new(|l| l.key = Some(other.server_key.clone())),
        ),
        (
            "`listener[0].client_ca`",
            Box::new(|l| l.client_ca = Some(garbage.clone())),
        ),
        ("`listener[0].key`", Box::new(|l| l.key = None)),
    ];
    for (field, change) in cases {
        let mut l = pki.listener(ListenerKind::Tls, false);
        change(&mut l);
        let e = BrokerBuilder::new()
            .listener(l)
            .bind()
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains(field), "expected {field}: {e}");
        assert!(!e.contains('\n'), "{e}");
    }
}

/// RELIABILITY.md H1: garbage, plain MQTT and a stalled handshake on a TLS port are
/// closed within the connect timeout; TLS on the plain port is closed too; the
/// broker keeps serving.
#[tokio::test]
async fn hostile_input_on_tls_and_plain_ports_is_closed() {
    let pki = Pki::new("tls-hostile");
    let b = start(|b| {
        b.listener(pki.listener(ListenerKind::Tls, false))
            .configure(|c| c.connect_timeout_secs = 1)
    })
    .await;
    let tls = b.addr_of(ListenerKind::Tls).unwrap();
    let plain = b.addr_of(ListenerKind::Tcp).unwrap();
    let mqtt_connect = {
        let mut out = bytes::BytesMut::new();
        Packet::Connect(Box::new(connect(V5, "plain", None, None)))
            .encode(V5, &mut out)
            .unwrap();
        out.to_vec()
    };
    let garbage = vec![0x16, 0x03, 0x01, 0xff, 0xff, 1, 2, 3, 4, 5, 6, 7, 8, 9];
    for (name, addr, bytes) in [
        ("garbage", tls, garbage),
        ("plain MQTT", tls, mqtt_connect),
        ("stall", tls, vec![]),
    ] {
        let started = Instant::now();
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(&bytes).await.unwrap();
        let mut buf = vec![0u8; 4096];
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
                Err(_) => panic!("{name}: not closed"),
                Ok(Ok(0)) | Ok(Err(_)) => break,
                Ok(Ok(_)) => {} // a TLS alert
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{name}: took {:?}",
            started.elapsed()
        );
    }
    // A TLS ClientHello on the plain port is not MQTT.
    let config = pki.client_config(None, &[&rustls::version::TLS13], &[]);
    assert!(tls_connect(plain, config).await.is_err());
    // Still serving.
    let stream = pki.connect(tls, None).await.unwrap();
    assert!(mqtt_works(stream, "after").await);
}
