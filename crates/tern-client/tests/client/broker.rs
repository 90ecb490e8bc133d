//! The client against our broker, in process on port 0, in both protocol versions.

use std::time::Duration;

use tern_client::{
    ClientError, Event, LastWill, PublishError, PublishOptions, QoS, ReasonCode, RetainHandling, Subscription,
};
use tern_proto::Disconnect;

use crate::support::*;

#[tokio::test]
async fn publish_and_subscribe_at_every_qos_in_both_versions() {
    let b = broker().await;
    for v in [V3, V5] {
        let (sub, mut events) = connect(b.addr(), v, &format!("sub-{v}")).await;
        let (publ, _pe) = connect(b.addr(), v, &format!("pub-{v}")).await;
        assert_eq!(
            sub.subscribe("qos/#", QoS::ExactlyOnce).await.unwrap(),
            QoS::ExactlyOnce
        );
        for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
            let topic = format!("qos/{}", qos.as_u8());
            let outcome = publ.publish(topic.clone(), "hello", qos).await.unwrap();
            assert_eq!(outcome.reason_code, ReasonCode::Success);
            let m = message(&mut events).await;
            assert_eq!(
                (&*m.topic, &m.payload[..], m.qos),
                (topic.as_str(), &b"hello"[..], qos)
            );
        }
        sub.disconnect().await.unwrap();
        publ.disconnect().await.unwrap();
    }
}

#[tokio::test]
async fn publish_returns_the_v5_reason_code() {
    let b = broker().await;
    let (c, _e) = connect(b.addr(), V5, "lonely").await;
    // Section 3.4.2.1: 0x10 No matching subscribers is a success code.
    let outcome = c.publish("nobody/listens", "x", QoS::AtLeastOnce).await.unwrap();
    assert_eq!(outcome.reason_code, ReasonCode::NoMatchingSubscribers);
    let outcome = c.publish("nobody/listens", "x", QoS::ExactlyOnce).await.unwrap();
    assert_eq!(
        outcome.reason_code,
        ReasonCode::Success,
        "PUBCOMP carries the final code"
    );
}

#[tokio::test]
async fn v5_properties_travel_end_to_end_mqtt_3_3_2_17() {
    let b = broker().await;
    let (sub, mut events) = connect(b.addr(), V5, "props-sub").await;
    let (publ, _pe) = connect(b.addr(), V5, "props-pub").await;
    let ack = sub
        .subscribe_with(Subscription::new("props/+", QoS::AtLeastOnce).id(42))
        .await
        .unwrap();
    assert_eq!(ack.reason_codes, vec![ReasonCode::GrantedQoS1]);
    let opts = PublishOptions::new()
        .qos(QoS::AtLeastOnce)
        .message_expiry(120)
        .content_type("application/json")
        .utf8_payload(true)
        .response_topic("props/reply")
        .correlation_data(&b"corr-1"[..])
        .user_property("a", "1")
        .user_property("a", "2");
    publ.publish_with("props/x", r#"{"v":1}"#, opts).await.unwrap();
    let m = message(&mut events).await;
    let p = &m.properties;
    assert_eq!(p.content_type.as_deref(), Some("application/json"));
    assert_eq!(p.payload_format_indicator, Some(1));
    assert_eq!(p.response_topic.as_deref(), Some("props/reply"));
    assert_eq!(p.correlation_data.as_deref(), Some(&b"corr-1"[..]));
    // v5 [MQTT-3.3.2-17] / v5 [MQTT-3.3.2-18]: unaltered, order kept.
    assert_eq!(
        p.user_properties,
        vec![("a".into(), "1".into()), ("a".into(), "2".into())]
    );
    assert!(p.message_expiry_interval.is_some_and(|e| e <= 120));
    // v5 [MQTT-3.3.4-3]
    assert_eq!(p.subscription_identifiers, vec![42]);
}

#[tokio::test]
async fn subscription_options_no_local_and_retain_handling() {
    let b = broker().await;
    let (c, mut events) = connect(b.addr(), V5, "opts").await;
    c.publish_with("keep/me", "retained", PublishOptions::new().retain(true))
        .await
        .unwrap();
    // v5 [MQTT-3.3.1-11] Retain Handling 2: no retained messages at subscribe time.
    let sub = Subscription::new("keep/#", QoS::AtMostOnce)
        .retain_handling(RetainHandling::DoNotSend)
        .no_local(true);
    assert_eq!(
        c.subscribe_with(sub).await.unwrap().reason_codes,
        vec![ReasonCode::Success]
    );
    // v5 [MQTT-3.8.3-3] No Local: our own message does not come back.
    c.publish("keep/me", "own", QoS::AtMostOnce).await.unwrap();
    no_message(&mut events, Duration::from_millis(300)).await;
    // Retain As Published keeps the flag; the retained message arrives at subscribe.
    let sub = Subscription::new("keep/me", QoS::AtMostOnce).retain_as_published(true);
    c.subscribe_with(sub).await.unwrap();
    let m = message(&mut events).await;
    assert!(m.retain && &m.payload[..] == b"retained");
}

#[tokio::test]
async fn suback_codes_per_filter_and_unsubscribe() {
    let b = broker().await;
    let (c, mut events) = connect(b.addr(), V5, "many").await;
    let ack = c
        .subscribe_with(
            Subscription::new("a/+", QoS::AtLeastOnce)
                .filter("b/#", tern_client::SubscriptionOptions::qos(QoS::ExactlyOnce)),
        )
        .await
        .unwrap();
    assert_eq!(
        ack.reason_codes,
        vec![ReasonCode::GrantedQoS1, ReasonCode::GrantedQoS2]
    );
    // A filter the client itself knows is invalid never reaches the server.
    assert!(matches!(
        c.subscribe("a/#/b", QoS::AtMostOnce).await,
        Err(ClientError::Request(_))
    ));
    c.unsubscribe("a/+").await.unwrap();
    let ack = c
        .unsubscribe_many(vec!["a/+".into(), "b/#".into()])
        .await
        .unwrap();
    assert_eq!(
        ack.reason_codes,
        vec![ReasonCode::NoSubscriptionExisted, ReasonCode::Success]
    );
    c.publish("a/x", "gone", QoS::AtLeastOnce).await.unwrap();
    no_message(&mut events, Duration::from_millis(200)).await;
}

#[tokio::test]
async fn many_qos2_publishes_respect_the_servers_receive_maximum_mqtt_3_3_4_7() {
    // v5 [MQTT-3.3.4-7]: at most the server's Receive Maximum unacknowledged.
    // The broker allows 2 unacknowledged QoS 2 messages and disconnects with 0x93
    // beyond that: the client must hold the rest back.
    let b = broker_with(|c| c.receive_maximum = 2).await;
    let (sub, mut events) = connect(b.addr(), V5, "rm-sub").await;
    sub.subscribe("rm/#", QoS::ExactlyOnce).await.unwrap();
    let (c, mut pe) = connect(b.addr(), V5, "rm-pub").await;
    let mut set = tokio::task::JoinSet::new();
    for i in 0..20 {
        let c = c.clone();
        set.spawn(async move { c.publish(format!("rm/{i}"), "x", QoS::ExactlyOnce).await });
    }
    let results = tokio::time::timeout(WAIT, set.join_all()).await.unwrap();
    assert!(results.iter().all(|r| r.is_ok()), "{results:?}");
    for _ in 0..20 {
        message(&mut events).await;
    }
    // Still the first connection: no DISCONNECT 0x93 happened.
    assert!(pe
        .try_recv()
        .is_some_and(|e| matches!(e, Event::Connected { .. })));
    assert!(pe.try_recv().is_none());
}

#[tokio::test]
async fn automatic_topic_aliases_are_accepted_by_the_broker() {
    let b = broker().await;
    let (sub, mut events) = connect(b.addr(), V5, "alias-sub").await;
    sub.subscribe("very/long/topic/name", QoS::AtLeastOnce)
        .await
        .unwrap();
    let (c, _e) = tokio::time::timeout(
        WAIT,
        tern_client::Client::connect(options(b.addr(), V5, "alias-pub").auto_topic_alias(true)),
    )
    .await
    .unwrap()
    .unwrap();
    for i in 0..3 {
        c.publish("very/long/topic/name", format!("{i}"), QoS::AtLeastOnce)
            .await
            .unwrap();
    }
    for i in 0..3 {
        let m = message(&mut events).await;
        assert_eq!(
            (&*m.topic, m.payload_str()),
            ("very/long/topic/name", Some(&*format!("{i}")))
        );
    }
}

#[tokio::test]
async fn server_assigned_client_id_mqtt_3_2_2_16() {
    // v5 [MQTT-3.2.2-16]: an empty client id gets an Assigned Client Identifier.
    let b = broker().await;
    let (c, _e) = connect(b.addr(), V5, "").await;
    assert!(!c.client_id().is_empty());
}

#[tokio::test]
async fn will_is_published_on_disconnect_with_will() {
    let b = broker().await;
    let (watcher, mut events) = connect(b.addr(), V5, "watcher").await;
    watcher.subscribe("status/#", QoS::AtLeastOnce).await.unwrap();
    let opts = options(b.addr(), V5, "dying").will(
        LastWill::new("status/dying", "gone")
            .qos(QoS::AtLeastOnce)
            .content_type("text/plain"),
    );
    let (c, _e) = tern_client::Client::connect(opts).await.unwrap();
    c.disconnect_with(Disconnect::with_reason(ReasonCode::DisconnectWithWill))
        .await
        .unwrap();
    let m = message(&mut events).await;
    assert_eq!((&*m.topic, &m.payload[..]), ("status/dying", &b"gone"[..]));
    assert_eq!(m.properties.content_type.as_deref(), Some("text/plain"));
}

#[tokio::test]
async fn request_response_helper() {
    let b = broker().await;
    let (server, mut requests) = connect(b.addr(), V5, "responder").await;
    server.subscribe("svc/echo", QoS::AtLeastOnce).await.unwrap();
    let responder = tokio::spawn(async move {
        for _ in 0..2 {
            let req = message(&mut requests).await;
            let mut answer = b"echo:".to_vec();
            answer.extend_from_slice(&req.payload);
            server.respond(&req, answer).await.unwrap();
        }
    });
    let (c, _e) = connect(b.addr(), V5, "requester").await;
    for word in ["one", "two"] {
        let resp = c.request("svc/echo", word, WAIT).await.unwrap();
        assert_eq!(resp.payload_str(), Some(&*format!("echo:{word}")));
    }
    responder.await.unwrap();
    // No responder: a typed timeout.
    let e = c
        .request("svc/none", "x", Duration::from_millis(200))
        .await
        .unwrap_err();
    assert!(matches!(e, ClientError::Timeout(_)), "{e}");
}

#[tokio::test]
async fn slow_reader_loses_nothing_and_the_publisher_is_not_blocked_forever() {
    let b = broker().await;
    let opts = options(b.addr(), V5, "slow").event_capacity(2);
    let (sub, mut events) = tern_client::Client::connect(opts).await.unwrap();
    sub.subscribe("flood", QoS::AtLeastOnce).await.unwrap();
    let (publ, _pe) = connect(b.addr(), V5, "flooder").await;
    let n = 300;
    let sender = tokio::spawn(async move {
        for i in 0..n {
            publ.publish("flood", format!("{i}"), QoS::AtLeastOnce)
                .await
                .unwrap();
        }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    for i in 0..n {
        let m = message(&mut events).await;
        assert_eq!(m.payload_str(), Some(&*i.to_string()), "in order, none lost");
    }
    tokio::time::timeout(WAIT, sender).await.unwrap().unwrap();
}

#[tokio::test]
async fn offline_publish_beyond_the_queue_and_calls_after_disconnect() {
    let b = broker().await;
    let (c, _e) = connect(b.addr(), V3, "closing").await;
    c.disconnect().await.unwrap();
    assert!(matches!(
        c.publish("a", "b", QoS::AtMostOnce).await,
        Err(ClientError::Closed)
    ));
    assert!(matches!(
        c.subscribe("a", QoS::AtMostOnce).await,
        Err(ClientError::Closed)
    ));
}

#[tokio::test]
async fn v5_only_features_on_311_are_typed_errors() {
    let b = broker().await;
    let (c, _e) = connect(b.addr(), V3, "old").await;
    let e = c
        .publish_with("a", "b", PublishOptions::new().content_type("text/plain"))
        .await
        .unwrap_err();
    assert!(matches!(e, ClientError::Publish(PublishError::Encode(_))), "{e}");
    let e = c.request("a", "b", WAIT).await.unwrap_err();
    assert!(
        matches!(
            e,
            ClientError::InvalidOption {
                option: "version",
                ..
            }
        ),
        "{e}"
    );
}

#[tokio::test]
async fn unreachable_and_refused_connections_are_typed() {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let tls = tern_client::transport::TlsOptions::new().accept_certificate(cert.cert.pem());
    for url in [
        "mqtts://127.0.0.1:1",
        "ws://127.0.0.1:1/mqtt",
        "wss://127.0.0.1:1",
    ] {
        let e = tern_client::Client::connect(tern_client::Options::new(url).tls(tls.clone()))
            .await
            .unwrap_err();
        assert!(matches!(e, ClientError::Transport { .. }), "{url}: {e}");
    }
    // Nothing listens on this port.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let e = tern_client::Client::connect(options(port, V5, "nobody"))
        .await
        .unwrap_err();
    assert!(matches!(e, ClientError::Transport { .. }), "{e}");
    // The broker refuses anonymous clients.
    let b = broker_with(|c| c.allow_anonymous = false).await;
    let e = tern_client::Client::connect(options(b.addr(), V5, "anon"))
        .await
        .unwrap_err();
    assert!(
        matches!(e, ClientError::Refused { reason_code, .. } if reason_code.is_error()),
        "{e}"
    );
}

#[test]
fn blocking_wrapper_round_trip() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let b = rt.block_on(broker());
    let addr = b.addr();
    let (c, mut events) = tern_client::blocking::Client::connect(options(addr, V5, "blocking")).unwrap();
    assert_eq!(c.subscribe("blk", QoS::AtLeastOnce).unwrap(), QoS::AtLeastOnce);
    c.publish("blk", "sync", QoS::AtLeastOnce).unwrap();
    let got = loop {
        match events.recv_timeout(WAIT) {
            Some(Event::Message(m)) => break m,
            Some(_) => continue,
            None => panic!("no message"),
        }
    };
    assert_eq!(got.payload_str(), Some("sync"));
    c.disconnect().unwrap();
    drop(b);
}

#[tokio::test]
async fn topic_aliases_from_the_broker_are_resolved_mqtt_3_3_2_10() {
    // v5 [MQTT-3.3.2-10]: aliases within our maximum are accepted and resolved.
    let b = broker().await;
    let opts = options(b.addr(), V5, "alias-receiver").topic_alias_maximum(3);
    let (sub, mut events) = tern_client::Client::connect(opts).await.unwrap();
    sub.subscribe("aliased/#", QoS::AtMostOnce).await.unwrap();
    let (publ, _pe) = connect(b.addr(), V5, "alias-sender").await;
    for i in 0..5 {
        publ.publish(format!("aliased/{}", i % 2), "x", QoS::AtLeastOnce)
            .await
            .unwrap();
    }
    for i in 0..5 {
        let m = message(&mut events).await;
        assert_eq!(&*m.topic, format!("aliased/{}", i % 2));
        assert_eq!(m.properties.topic_alias, None, "the alias is resolved, not shown");
    }
}

#[tokio::test]
async fn messages_above_the_servers_maximum_packet_size_are_refused_locally_mqtt_3_2_2_15() {
    // v5 [MQTT-3.2.2-15]: nothing above the server's Maximum Packet Size is sent.
    let b = broker_with(|c| c.max_packet_size = 4096).await;
    let (c, mut events) = connect(b.addr(), V5, "big").await;
    let e = c
        .publish("big", vec![0u8; 8192], QoS::AtLeastOnce)
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            ClientError::Publish(PublishError::PacketTooLarge { max: 4096, .. })
        ),
        "{e}"
    );
    // Nothing was sent: the connection is still the first one.
    c.publish("big", vec![0u8; 100], QoS::AtLeastOnce).await.unwrap();
    assert!(matches!(events.try_recv(), Some(Event::Connected { .. })));
    assert!(events.try_recv().is_none());
}

#[tokio::test]
async fn the_broker_respects_our_receive_maximum_mqtt_3_3_4_9() {
    // v5 [MQTT-3.3.4-9]: the broker keeps within our Receive Maximum.
    let b = broker().await;
    // More than one unreleased QoS 2 message from the broker would make the
    // client disconnect with 0x93.
    let opts = options(b.addr(), V5, "rm-receiver").receive_maximum(1);
    let (sub, mut events) = tern_client::Client::connect(opts).await.unwrap();
    sub.subscribe("inbound/rm", QoS::ExactlyOnce).await.unwrap();
    let (publ, _pe) = connect(b.addr(), V5, "rm-sender").await;
    for i in 0..10 {
        publ.publish("inbound/rm", format!("{i}"), QoS::ExactlyOnce)
            .await
            .unwrap();
    }
    for i in 0..10 {
        match wait_for(&mut events, |e| {
            matches!(e, Event::Message(_) | Event::Disconnected { .. })
        })
        .await
        {
            Event::Message(m) => assert_eq!(m.payload_str(), Some(&*i.to_string())),
            other => panic!("{other:?}"),
        }
    }
}
