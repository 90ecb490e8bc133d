//! Access control: the bridge's local session is the user `$bridge/NAME` for the ACL, and no
//! client from a listener may take that session (and its outbox) over.

use std::time::Duration;

use tern_broker::{BridgeDirection, BridgeTopic, BrokerBuilder};
use tern_client::{Client, ClientError, Options, ProtocolVersion, QoS, ReasonCode};

use crate::support::*;

#[tokio::test]
async fn the_acl_applies_to_the_bridge_as_user_bridge_name() {
    let dir = std::env::temp_dir().join(format!("tern-bridge-acl-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let acl = dir.join("acl");
    std::fs::write(
        &acl,
        "topic readwrite #\nuser $bridge/acl\ntopic read allowed/#\nuser other\ntopic readwrite #\n",
    )
    .unwrap();
    let b = tern().await;
    let a = BrokerBuilder::new()
        .listen("127.0.0.1:0".parse().unwrap())
        .configure(|c| {
            c.sys_interval_secs = 0;
            c.acl_file = Some(acl.clone());
        })
        .bind()
        .await
        .unwrap()
        .spawn();
    let config = bridge("acl", &url_of(&b), "5")
        .topic(BridgeTopic::new("allowed/#", BridgeDirection::Out))
        .topic(BridgeTopic::new("denied/#", BridgeDirection::Out));
    let local_id = config.local_client_id();
    let bridges = tern_bridge::Bridges::start(a.internal(), &[config])
        .await
        .unwrap();
    wait_for("the bridge to connect", || {
        state(&bridges).connected && a.session(&local_id).is_some_and(|s| !s.subscriptions.is_empty())
    })
    .await;
    let session = a.session(&local_id).unwrap();
    let filters: Vec<_> = session.subscriptions.iter().map(|s| s.filter.as_str()).collect();
    assert_eq!(filters, ["allowed/#"], "the ACL refused the other filter");
    assert_eq!(
        session.connection.and_then(|c| c.username).as_deref(),
        Some("$bridge/acl")
    );
    let v5 = ProtocolVersion::V5;
    let (sb, mut eb) = client(&url_of(&b), "acl-sub", v5).await;
    sb.subscribe("#", QoS::AtLeastOnce).await.unwrap();
    let (pa, _) = client(&url_of(&a), "acl-pub", v5).await;
    pa.publish("denied/x", "no", QoS::AtLeastOnce).await.unwrap();
    pa.publish("allowed/x", "yes", QoS::AtLeastOnce).await.unwrap();
    let got: Vec<_> = drain(&mut eb, Duration::from_millis(400))
        .await
        .into_iter()
        .map(|m| m.topic.to_string())
        .collect();
    assert_eq!(got, ["allowed/x"]);
    bridges.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_client_cannot_take_over_a_bridge_session() {
    let a = tern().await;
    for version in [ProtocolVersion::V5, ProtocolVersion::V3_1_1] {
        let options = Options::new(url_of(&a))
            .client_id("$bridge/cloud")
            .version(version)
            .reconnect(tern_client::Reconnect::disabled());
        match Client::connect(options).await {
            Err(ClientError::Refused { reason_code, .. }) => {
                assert_eq!(reason_code, ReasonCode::ClientIdentifierNotValid, "{version:?}")
            }
            other => panic!("{version:?}: {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_bridge_session_disconnected_by_an_administrator_is_opened_again() {
    let (a, b) = (tern().await, tern().await);
    let config = bridge("kick", &url_of(&b), "5").topic(BridgeTopic::new("k/#", BridgeDirection::Out));
    let id = config.local_client_id();
    let bridges = start_bridge(&a, config).await;
    let first = a.session(&id).unwrap().connection.unwrap().connected_at;
    assert!(a.disconnect(&id, false));
    wait_for("the bridge's session to be connected again", || {
        a.session(&id)
            .and_then(|s| s.connection)
            .is_some_and(|c| c.connected_at != first)
    })
    .await;
    let v5 = ProtocolVersion::V5;
    let (sb, mut eb) = client(&url_of(&b), "kick-sub", v5).await;
    sb.subscribe("k/#", QoS::AtLeastOnce).await.unwrap();
    let (pa, _) = client(&url_of(&a), "kick-pub", v5).await;
    pa.publish("k/1", "after", QoS::AtLeastOnce).await.unwrap();
    let m = next(&mut eb).await;
    assert_eq!((&*m.topic, m.payload_str()), ("k/1", Some("after")));
    bridges.stop().await;
}
