//! Interoperability: the client against the Mosquitto broker (Debian package
//! `mosquitto`), started by the test on an ephemeral port with its own config.

use tern_client::{Client, Event, PublishOptions, QoS, ReasonCode, Subscription};

use crate::support::*;

#[tokio::test]
async fn publish_and_subscribe_through_mosquitto_in_both_versions() {
    // v3.1.1 [MQTT-7.0.0-2]: the client needs no extension to work with another broker.
    let Some(m) = Mosquitto::start().await else { return };
    for v in [V3, V5] {
        let (sub, mut events) = connect(m.addr, v, &format!("tern-sub-{v}")).await;
        let (publ, _pe) = connect(m.addr, v, &format!("tern-pub-{v}")).await;
        assert_eq!(
            sub.subscribe("interop/#", QoS::ExactlyOnce).await.unwrap(),
            QoS::ExactlyOnce
        );
        for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
            let topic = format!("interop/{v}/{}", qos.as_u8());
            publ.publish(topic.clone(), "via mosquitto", qos).await.unwrap();
            let msg = message(&mut events).await;
            assert_eq!((&*msg.topic, msg.qos), (topic.as_str(), qos));
            assert_eq!(msg.payload_str(), Some("via mosquitto"));
        }
        sub.disconnect().await.unwrap();
        publ.disconnect().await.unwrap();
    }
}

#[tokio::test]
async fn v5_properties_aliases_and_request_response_through_mosquitto() {
    let Some(m) = Mosquitto::start().await else { return };
    let (responder, mut requests) = connect(m.addr, V5, "tern-responder").await;
    let ack = responder
        .subscribe_with(Subscription::new("svc/+", QoS::AtLeastOnce).id(9))
        .await
        .unwrap();
    assert_eq!(ack.reason_codes, vec![ReasonCode::GrantedQoS1]);
    let task = tokio::spawn(async move {
        let req = message(&mut requests).await;
        assert_eq!(req.properties.subscription_identifiers, vec![9]);
        assert_eq!(req.properties.user_properties, vec![("k".into(), "v".into())]);
        responder.respond(&req, "pong").await.unwrap();
    });
    let opts = options(m.addr, V5, "tern-requester").auto_topic_alias(true);
    let (c, mut events) = Client::connect(opts).await.unwrap();
    match wait_for(&mut events, |e| matches!(e, Event::Connected { .. })).await {
        Event::Connected { connack, .. } => {
            assert!(
                connack.properties.topic_alias_maximum.is_some(),
                "mosquitto offers aliases"
            )
        }
        _ => unreachable!(),
    }
    let resp = c
        .request_with(
            "svc/ping",
            "ping",
            PublishOptions::new()
                .qos(QoS::AtLeastOnce)
                .user_property("k", "v"),
            WAIT,
        )
        .await
        .unwrap();
    assert_eq!(resp.payload_str(), Some("pong"));
    task.await.unwrap();
    // Aliased publishes are accepted by Mosquitto.
    for _ in 0..3 {
        c.publish("svc/alias/topic", "x", QoS::AtLeastOnce).await.unwrap();
    }
    c.disconnect().await.unwrap();
}

/// A CA and a certificate signed by it: (CA PEM, certificate PEM, key PEM).
fn signed(
    issuer: &rcgen::Issuer<'_, rcgen::KeyPair>,
    names: Vec<String>,
    cn: &str,
    client: bool,
) -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::new(names).unwrap();
    p.distinguished_name.push(rcgen::DnType::CommonName, cn);
    if client {
        p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    }
    (p.signed_by(&key, issuer).unwrap().pem(), key.serialize_pem())
}

/// Our client over mqtts:// against Mosquitto's TLS listener with
/// `require_certificate true`: server verified against our CA, client certificate
/// accepted; without a client certificate the connection fails.
#[tokio::test]
async fn mqtts_with_client_certificate_through_mosquitto() {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "interop CA");
    ca.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let (server_cert, server_key) = signed(&issuer, vec!["localhost".into()], "localhost", false);
    let (client_cert, client_key) = signed(&issuer, vec![], "tern-device", true);
    let ca_for_conf = ca_pem.clone();
    let Some((m, tls_port)) = Mosquitto::start_with(move |dir, port| {
        for (name, text) in [("ca.pem", &ca_for_conf), ("server.pem", &server_cert), ("server.key", &server_key)] {
            std::fs::write(dir.join(name), text).unwrap();
        }
        format!(
            "listener {port} 127.0.0.1\ncafile {0}/ca.pem\ncertfile {0}/server.pem\nkeyfile {0}/server.key\nrequire_certificate true\n",
            dir.display()
        )
    })
    .await
    else {
        return;
    };
    let url = format!("mqtts://localhost:{tls_port}");
    let opts = |id: &str, tls: tern_client::transport::TlsOptions| {
        tern_client::Options::new(url.clone())
            .client_id(id)
            .tls(tls)
            .connect_timeout(std::time::Duration::from_secs(3))
            .reconnect(tern_client::Reconnect::disabled())
    };
    let with_cert = tern_client::transport::TlsOptions::new()
        .ca_pem(ca_pem.clone())
        .client_auth_pem(client_cert, client_key);
    let (tls_client, _tls_events) = Client::connect(opts("tern-tls", with_cert)).await.unwrap();
    // A plain client on Mosquitto's TCP listener receives what the TLS client publishes.
    let (plain, mut events) = connect(m.addr, V5, "tern-plain").await;
    plain.subscribe("tls/#", QoS::AtLeastOnce).await.unwrap();
    tls_client
        .publish("tls/x", "through mosquitto tls", QoS::AtLeastOnce)
        .await
        .unwrap();
    let msg = message(&mut events).await;
    assert_eq!(msg.payload_str(), Some("through mosquitto tls"));
    tls_client.disconnect().await.unwrap();
    plain.disconnect().await.unwrap();
    // Without a client certificate Mosquitto refuses the handshake.
    let without = tern_client::transport::TlsOptions::new().ca_pem(ca_pem);
    assert!(Client::connect(opts("tern-nocert", without)).await.is_err());
}
