//! The remote reached over TLS with a client certificate, and over WebSocket: another Tern
//! broker with those listeners.

use tern_broker::{
    BridgeConfig, BridgeDirection, BridgeTopic, BrokerBuilder, BrokerHandle, ListenerConfig, ListenerKind,
};
use tern_client::{ProtocolVersion, QoS};

use crate::support::*;

/// One message each way through the bridge of `a` to `b`.
/// `remote_user`: the user name the remote must know the bridge by.
async fn round_trip(a: &BrokerHandle, b: &BrokerHandle, bridge: BridgeConfig, remote_user: Option<&str>) {
    let config = bridge
        .topic(BridgeTopic::new("up/#", BridgeDirection::Out))
        .topic(BridgeTopic::new("down/#", BridgeDirection::In));
    let name = config.name.clone();
    let bridges_remote_id = config.remote_client_id();
    let bridges = start_bridge(a, config).await;
    let v5 = ProtocolVersion::V5;
    let (sa, mut ea) = client(&url_of(a), &format!("{name}-sub-a"), v5).await;
    sa.subscribe("down/#", QoS::AtLeastOnce).await.unwrap();
    let (sb, mut eb) = client(&url_of(b), &format!("{name}-sub-b"), v5).await;
    sb.subscribe("up/#", QoS::AtLeastOnce).await.unwrap();
    let (pa, _) = client(&url_of(a), &format!("{name}-pub-a"), v5).await;
    let (pb, _) = client(&url_of(b), &format!("{name}-pub-b"), v5).await;
    // The remote's in-filter subscription may still be on its way: publish until it arrives.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        pb.publish("down/cmd", "go", QoS::AtLeastOnce).await.unwrap();
        if let Ok(Some(m)) =
            tokio::time::timeout(std::time::Duration::from_millis(200), ea.next_message()).await
        {
            assert_eq!(&*m.topic, "down/cmd");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "nothing came in");
    }
    pa.publish("up/reading", "42", QoS::AtLeastOnce).await.unwrap();
    let m = next(&mut eb).await;
    assert_eq!((&*m.topic, m.payload_str()), ("up/reading", Some("42")));
    let session = b.session(&bridges_remote_id).unwrap();
    assert_eq!(
        session.connection.and_then(|c| c.username).as_deref(),
        remote_user
    );
    bridges.stop().await;
}

#[tokio::test]
async fn over_websocket_to_tern() {
    let b = BrokerBuilder::new()
        .listener(ListenerConfig::new(
            ListenerKind::Ws,
            "127.0.0.1:0".parse().unwrap(),
        ))
        .listen("127.0.0.1:0".parse().unwrap())
        .configure(|c| c.sys_interval_secs = 0)
        .bind()
        .await
        .unwrap()
        .spawn();
    let ws = b.addr_of(ListenerKind::Ws).unwrap();
    let a = tern().await;
    round_trip(&a, &b, bridge("ws", &format!("ws://{ws}/mqtt"), "5"), None).await;
}

#[tokio::test]
async fn over_tls_with_a_client_certificate_to_tern() {
    // A CA, the remote's certificate for localhost, the bridge's client certificate.
    let pki = tern_testkit::pki::Pki::new(
        &std::env::temp_dir().join(format!("tern-bridge-tls-{}", std::process::id())),
        &["localhost"],
        "edge-site-1",
    );
    let ca_file = pki.ca.clone();

    let mut tls = ListenerConfig::new(ListenerKind::Tls, "127.0.0.1:0".parse().unwrap());
    tls.cert = Some(pki.server_cert.clone());
    tls.key = Some(pki.server_key.clone());
    tls.client_ca = Some(ca_file.clone());
    tls.use_identity_as_username = true;
    let b = BrokerBuilder::new()
        .listener(tls)
        .listen("127.0.0.1:0".parse().unwrap())
        .configure(|c| c.sys_interval_secs = 0)
        .bind()
        .await
        .unwrap()
        .spawn();
    let port = b.addr_of(ListenerKind::Tls).unwrap().port();
    let a = tern().await;
    let (cert_file, key_file) = (pki.client_cert.clone(), pki.client_key.clone());
    let config = bridge("tls", &format!("mqtts://localhost:{port}"), "5").with(|c| {
        c.ca_file = Some(ca_file);
        c.cert_file = Some(cert_file);
        c.key_file = Some(key_file);
        c.client_id = Some("edge-tls".into());
    });
    // The remote knows the bridge by its certificate's CN.
    round_trip(&a, &b, config, Some("edge-site-1")).await;
}
