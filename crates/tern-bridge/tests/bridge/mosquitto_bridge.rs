//! Tern as the remote of a Mosquitto bridge: Mosquitto's bridges announce themselves with the
//! protocol level 0x84 (`try_private true`, its default). Tern takes such a client for a
//! bridge: it does not send the bridge back what the bridge published (so a `both` bridge
//! delivers each message once on each side), and keeps RETAIN as published.

use std::time::Duration;

use tern_client::{ProtocolVersion, QoS};

use crate::support::*;

#[tokio::test]
async fn a_mosquitto_bridge_to_tern_delivers_once_each_way() {
    let tern = tern().await;
    let port = tern.addr().port();
    let bridge = format!(
        "connection to-tern\naddress 127.0.0.1:{port}\nbridge_protocol_version mqttv311\ntry_private true\n\
         cleansession false\nrestart_timeout 1\ntopic site/# both 1\n"
    );
    let mosquitto = Mosquitto::start_with(&bridge).await;
    let v = ProtocolVersion::V3_1_1;
    let (msub, mut mevents) = client(&mosquitto.url(), "m-sub", v).await;
    msub.subscribe("site/#", QoS::AtLeastOnce).await.unwrap();
    let (tsub, mut tevents) = client(&url_of(&tern), "t-sub", v).await;
    tsub.subscribe("site/#", QoS::AtLeastOnce).await.unwrap();
    let (mpub, _m) = client(&mosquitto.url(), "m-pub", v).await;
    let (tpub, _t) = client(&url_of(&tern), "t-pub", v).await;

    // Mosquitto's bridge is connected and subscribed once a message goes through.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        mpub.publish("site/probe", "p", QoS::AtLeastOnce).await.unwrap();
        if !drain(&mut tevents, Duration::from_millis(300)).await.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "Mosquitto's bridge never delivered to Tern"
        );
    }
    drain(&mut mevents, Duration::from_millis(500)).await;
    drain(&mut tevents, Duration::from_millis(300)).await;

    mpub.publish("site/from-mosquitto", "1", QoS::AtLeastOnce)
        .await
        .unwrap();
    let at_tern = drain(&mut tevents, Duration::from_millis(700)).await;
    let at_mosquitto = drain(&mut mevents, Duration::from_millis(300)).await;
    assert_eq!(at_tern.len(), 1, "once in Tern: {at_tern:?}");
    assert_eq!(
        at_mosquitto.len(),
        1,
        "once in Mosquitto: Tern did not send the bridge its own message back (No Local for a bridge): {at_mosquitto:?}"
    );

    tpub.publish("site/from-tern", "2", QoS::AtLeastOnce)
        .await
        .unwrap();
    let at_mosquitto = drain(&mut mevents, Duration::from_millis(700)).await;
    let at_tern = drain(&mut tevents, Duration::from_millis(300)).await;
    assert_eq!(at_mosquitto.len(), 1, "once in Mosquitto: {at_mosquitto:?}");
    assert_eq!(at_tern.len(), 1, "once in Tern: {at_tern:?}");

    // What the bridge published carries the hop mark, which a 5.0 subscriber sees.
    let (v5sub, mut v5events) = client(&url_of(&tern), "t-sub5", ProtocolVersion::V5).await;
    v5sub.subscribe("site/#", QoS::AtLeastOnce).await.unwrap();
    mpub.publish("site/marked", "3", QoS::AtLeastOnce).await.unwrap();
    let m = next(&mut v5events).await;
    assert!(
        m.properties
            .user_properties
            .iter()
            .any(|(k, v)| &**k == "tern-bridge-hops" && &**v == "1"),
        "{m:?}"
    );
}
