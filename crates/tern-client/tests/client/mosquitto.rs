//! Interoperability: the client against the Mosquitto broker (Debian package
//! `mosquitto`), started by the test on an ephemeral port with its own config.

use tern_client::{Client, Event, PublishOptions, QoS, ReasonCode, Subscription};

use crate::support::*;

#[tokio::test]
async fn publish_and_subscribe_through_mosquitto_in_both_versions() {
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
