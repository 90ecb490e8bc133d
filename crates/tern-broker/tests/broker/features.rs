//! Server capabilities advertised in CONNACK and enforced, outbound topic
//! aliases, enhanced authentication, $SYS, shutdown and connection limits.

use std::sync::Arc;
use std::time::Duration;

use tern_proto::{Connect, Packet, Publish, QoS, ReasonCode, SubscriptionOptions};

use crate::challenge::{auth_packet, Challenge};
use crate::harness::*;

#[tokio::test]
async fn disabled_features_are_advertised_and_enforced_v5() {
    let b = start_with(|c| {
        c.max_qos = 1;
        c.retain_available = false;
        c.wildcard_subscriptions = false;
        c.shared_subscriptions = false;
        c.subscription_identifiers = false;
    })
    .await;
    let (mut c, ack) = Raw::connect_with(b.addr(), Connect::new(V5, "caps")).await;
    // v5 section 3.2.2.3: Maximum QoS, Retain Available, Wildcard / Subscription Identifier /
    // Shared Subscription Available.
    assert_eq!(ack.properties.maximum_qos, Some(1));
    assert_eq!(ack.properties.retain_available, Some(0));
    assert_eq!(ack.properties.wildcard_subscription_available, Some(0));
    assert_eq!(ack.properties.subscription_identifier_available, Some(0));
    assert_eq!(ack.properties.shared_subscription_available, Some(0));
    // Granted QoS is capped at Maximum QoS.
    assert_eq!(
        c.subscribe("plain", QoS::ExactlyOnce).await.reason_codes,
        vec![ReasonCode::GrantedQoS1]
    );
    assert_eq!(
        c.subscribe("wild/+", QoS::AtMostOnce).await.reason_codes,
        vec![ReasonCode::WildcardSubscriptionsNotSupported]
    );
    assert_eq!(
        c.subscribe("$share/g/x", QoS::AtMostOnce).await.reason_codes,
        vec![ReasonCode::SharedSubscriptionsNotSupported]
    );
    // RETAIN while Retain Available is 0: DISCONNECT 0x9A.
    let mut p = Publish::new("plain", "x");
    p.retain = true;
    c.send(Packet::Publish(p)).await;
    assert_eq!(c.expect_closed().await, Some(ReasonCode::RetainNotSupported));
    // QoS above Maximum QoS: DISCONNECT 0x9B.
    let mut c = Raw::connect(b.addr(), V5, "qos2").await;
    let mut p = Publish::new("plain", "x");
    p.qos = QoS::ExactlyOnce;
    p.packet_id = Some(pid(1));
    c.send(Packet::Publish(p)).await;
    assert_eq!(c.expect_closed().await, Some(ReasonCode::QoSNotSupported));
    // Subscription Identifier while not available: DISCONNECT 0xA1.
    let mut c = Raw::connect(b.addr(), V5, "subid").await;
    c.send(Packet::Subscribe(tern_proto::Subscribe {
        packet_id: pid(2),
        properties: tern_proto::codec::SubscribeProperties {
            subscription_identifier: Some(5),
            ..Default::default()
        },
        filters: vec![("x".into(), SubscriptionOptions::default())],
    }))
    .await;
    assert_eq!(
        c.expect_closed().await,
        Some(ReasonCode::SubscriptionIdentifiersNotSupported)
    );
}

#[tokio::test]
async fn outbound_topic_aliases_are_used_when_the_client_allows_them() {
    let b = start().await;
    let mut c = Connect::new(V5, "aliased");
    c.keep_alive = 0;
    c.properties.topic_alias_maximum = Some(1);
    let (mut sub, _) = Raw::connect_with(b.addr(), c).await;
    sub.subscribe("al/#", QoS::AtMostOnce).await;
    let mut publ = Raw::connect(b.addr(), V5, "p").await;
    for t in ["al/one", "al/one", "al/two", "al/two"] {
        publ.publish(t, "x", QoS::AtMostOnce, false).await;
    }
    let first = sub.recv_publish().await;
    assert_eq!(
        (&first.topic[..], first.properties.topic_alias),
        ("al/one", Some(1))
    );
    // The second use sends only the alias, which the client maps back.
    let second = sub.recv_publish().await;
    assert_eq!((&second.topic[..], second.properties.topic_alias), ("", Some(1)));
    // The client allowed 1 alias: a new topic takes over the least recently used one, sent
    // in full with it, never an alias above the maximum (v5 [MQTT-3.1.2-26], v5 [MQTT-3.3.2-11]).
    // The client's session does the same (one alias component for both).
    let third = sub.recv_publish().await;
    assert_eq!(
        (&third.topic[..], third.properties.topic_alias),
        ("al/two", Some(1))
    );
    let fourth = sub.recv_publish().await;
    assert_eq!((&fourth.topic[..], fourth.properties.topic_alias), ("", Some(1)));
}

#[tokio::test]
async fn response_information_and_reason_strings_v5() {
    let b = start().await;
    let mut c = Connect::new(V5, "asker");
    c.properties.request_response_information = Some(1);
    let (mut raw, ack) = Raw::connect_with(b.addr(), c).await;
    assert_eq!(
        ack.properties.response_information.as_deref(),
        Some("response/asker")
    );
    // A violation is explained with a Reason String in the DISCONNECT.
    raw.send_bytes(&[0x30, 0x04, 0x00, 0x01, b'+', 0x00]).await;
    match raw.next().await {
        Some(Packet::Disconnect(d)) => {
            assert_eq!(d.reason(), ReasonCode::ProtocolError);
            assert!(d.properties.reason_string.is_some());
        }
        p => panic!("{p:?}"),
    }
}

#[tokio::test]
async fn enhanced_authentication_exchange_v5_section_4_12() {
    let b = tern_broker::BrokerBuilder::new()
        .listen("127.0.0.1:0".parse().unwrap())
        .authenticator(Arc::new(Challenge {
            welcome: Some("welcome"),
        }))
        .bind()
        .await
        .unwrap()
        .spawn();
    let mut c = Connect::new(V5, "authn");
    c.keep_alive = 0;
    c.properties.authentication_method = Some("TEST-CHALLENGE".into());
    c.properties.authentication_data = Some("hello".into());
    let mut raw = Raw::open(b.addr(), V5).await;
    raw.send(Packet::Connect(Box::new(c.clone()))).await;
    match raw.recv().await {
        Packet::Auth(a) => {
            assert_eq!(a.reason_code, Some(ReasonCode::ContinueAuthentication));
            assert_eq!(
                a.properties.authentication_data.as_deref(),
                Some(&b"challenge"[..])
            );
        }
        p => panic!("{p:?}"),
    }
    raw.send(auth_packet(ReasonCode::ContinueAuthentication, "response"))
        .await;
    match raw.recv().await {
        Packet::ConnAck(a) => {
            assert_eq!(a.reason_code, ReasonCode::Success);
            assert_eq!(
                a.properties.authentication_method.as_deref(),
                Some("TEST-CHALLENGE")
            );
            assert_eq!(a.properties.authentication_data.as_deref(), Some(&b"welcome"[..]));
        }
        p => panic!("{p:?}"),
    }
    // Re-authentication (v5 [MQTT-4.12.1-1]: same method).
    raw.send(auth_packet(ReasonCode::ReAuthenticate, "hello")).await;
    assert!(
        matches!(raw.recv().await, Packet::Auth(a) if a.reason_code == Some(ReasonCode::ContinueAuthentication))
    );
    raw.send(auth_packet(ReasonCode::ContinueAuthentication, "response"))
        .await;
    assert!(matches!(raw.recv().await, Packet::Auth(a) if a.reason_code == Some(ReasonCode::Success)));
    // A wrong answer: CONNACK 0x87.
    c.client_id = "authn2".into();
    let mut raw = Raw::open(b.addr(), V5).await;
    raw.send(Packet::Connect(Box::new(c))).await;
    assert!(matches!(raw.recv().await, Packet::Auth(_)));
    raw.send(auth_packet(ReasonCode::ContinueAuthentication, "wrong"))
        .await;
    assert!(matches!(raw.recv().await, Packet::ConnAck(a) if a.reason_code == ReasonCode::NotAuthorized));
    assert_eq!(raw.expect_closed().await, None);
}

#[tokio::test]
async fn sys_topics_are_published() {
    let b = start_with(|c| c.sys_interval_secs = 1).await;
    let mut c = Raw::connect(b.addr(), V3, "sys").await;
    c.subscribe("$SYS/broker/clients/connected", QoS::AtMostOnce)
        .await;
    let p = c.recv_publish().await;
    let n: u64 = std::str::from_utf8(&p.payload).unwrap().parse().unwrap();
    assert!(n >= 1);
    c.subscribe("$SYS/broker/version", QoS::AtMostOnce).await;
    assert!(c.recv_publish().await.payload.starts_with(b"tern "));
}

#[tokio::test]
async fn shutdown_sends_0x8b_to_v5_clients() {
    let b = start().await;
    let mut v5 = Raw::connect(b.addr(), V5, "a").await;
    let mut v3 = Raw::connect(b.addr(), V3, "b").await;
    b.shutdown().await;
    assert_eq!(v5.expect_closed().await, Some(ReasonCode::ServerShuttingDown));
    assert_eq!(v3.expect_closed().await, None);
}

#[tokio::test]
async fn connections_beyond_max_connections_get_server_busy() {
    let b = start_with(|c| c.max_connections = 2).await;
    let _a = Raw::connect(b.addr(), V3, "a").await;
    let _b = Raw::connect(b.addr(), V3, "b").await;
    let (mut c, ack) = Raw::connect_with(b.addr(), Connect::new(V5, "c")).await;
    assert_eq!(ack.reason_code, ReasonCode::ServerBusy);
    assert_eq!(c.expect_closed().await, None);
    let (_c, ack) = Raw::connect_with(b.addr(), Connect::new(V3, "d")).await;
    assert_eq!(ack.reason_code, ReasonCode::ServerUnavailable);
}

#[tokio::test]
async fn connect_rate_limit_gives_0x9f() {
    let (b, clock) = start_clocked(|c| c.max_connect_rate = 2).await;
    let mut refused = 0;
    for i in 0..6 {
        let (_c, ack) = Raw::connect_with(b.addr(), Connect::new(V5, format!("r{i}"))).await;
        if ack.reason_code == ReasonCode::ConnectionRateExceeded {
            refused += 1;
        }
    }
    assert!(refused >= 3, "only {refused} refused");
    pass(&clock, Duration::from_millis(1100)).await;
    let (_c, ack) = Raw::connect_with(b.addr(), Connect::new(V5, "later")).await;
    assert_eq!(ack.reason_code, ReasonCode::Success);
}
