//! The ACL: publish, subscribe and receive rules, patterns, wills, reload.

use tern_proto::{Ack, Packet, Publish, QoS, ReasonCode, Subscribe, SubscriptionOptions};

use crate::support::*;

const RULES: &str = "\
user alice
topic readwrite alice/#
topic read public/#
topic deny alice/private/#
topic write all/#
user bob
topic read public/#
topic subscribe all/#
topic receive all/visible/#
pattern write clients/%c/status
pattern readwrite users/%u/#
pattern read devices/%c/#
";

async fn broker_with_acl(rules: &str) -> (tern_broker::BrokerHandle, TempDir) {
    let dir = TempDir::new("acl");
    let acl = dir.file("acl", rules);
    let pw = dir.file("passwd", &passwords(&[("alice", "a"), ("bob", "b")]));
    let b = start(|b| {
        b.configure(|c| {
            c.acl_file = Some(acl);
            c.password_file = Some(pw);
        })
    })
    .await;
    (b, dir)
}

async fn login(b: &tern_broker::BrokerHandle, v: tern_proto::ProtocolVersion, id: &str, user: &str) -> Peer {
    let pw = if user == "alice" { "a" } else { "b" };
    let (p, rc) = connect_tcp(b.addr(), v, id, Some(user), Some(pw)).await;
    assert_eq!(rc, ReasonCode::Success, "{id}");
    p
}

pub async fn subscribe(p: &mut Peer, filter: &str) -> ReasonCode {
    p.send(Packet::Subscribe(Subscribe {
        packet_id: tern_proto::PacketId::new(9).unwrap(),
        properties: Default::default(),
        filters: vec![(filter.into(), SubscriptionOptions::qos(QoS::AtLeastOnce))],
    }))
    .await;
    match p.recv().await {
        Packet::SubAck(a) => a.reason_codes[0],
        other => panic!("expected SUBACK, got {other:?}"),
    }
}

pub async fn publish(p: &mut Peer, topic: &str, qos: QoS) -> Option<Ack> {
    let mut m = Publish::new(topic, "x");
    m.qos = qos;
    m.packet_id = tern_proto::PacketId::new(5).filter(|_| qos != QoS::AtMostOnce);
    p.send(Packet::Publish(m)).await;
    match qos {
        QoS::AtMostOnce => None,
        _ => match p.recv().await {
            Packet::PubAck(a) | Packet::PubRec(a) => Some(a),
            other => panic!("expected an acknowledgement, got {other:?}"),
        },
    }
}

pub async fn expect_message(p: &mut Peer, topic: &str) {
    match p.recv().await {
        Packet::Publish(m) => {
            assert_eq!(&*m.topic, topic);
            if let Some(id) = m.packet_id {
                p.send(Packet::PubAck(Ack::new(id))).await;
            }
        }
        other => panic!("expected PUBLISH on {topic}, got {other:?}"),
    }
}

/// v3.1.1 [MQTT-3.3.5-2]: a denied PUBLISH is not delivered; 5.0 answers PUBACK/PUBREC
/// 0x87 Not authorized, 3.1.1 acknowledges normally.
#[tokio::test]
async fn denied_publish_is_not_routed() {
    let (b, _dir) = broker_with_acl(RULES).await;
    let mut watcher = login(&b, V5, "watcher", "alice").await;
    assert_eq!(subscribe(&mut watcher, "alice/#").await, ReasonCode::GrantedQoS1);
    let mut bob5 = login(&b, V5, "bob5", "bob").await;
    let mut bob3 = login(&b, V3, "bob3", "bob").await;
    assert_eq!(
        publish(&mut bob5, "alice/x", QoS::AtLeastOnce)
            .await
            .unwrap()
            .reason_code,
        ReasonCode::NotAuthorized
    );
    assert_eq!(
        publish(&mut bob5, "alice/x", QoS::ExactlyOnce)
            .await
            .unwrap()
            .reason_code,
        ReasonCode::NotAuthorized
    );
    publish(&mut bob5, "alice/x", QoS::AtMostOnce).await;
    assert_eq!(
        publish(&mut bob3, "alice/x", QoS::AtLeastOnce)
            .await
            .unwrap()
            .reason_code,
        ReasonCode::Success
    );
    let rec = publish(&mut bob3, "alice/x", QoS::ExactlyOnce).await.unwrap();
    assert_eq!(rec.reason_code, ReasonCode::Success);
    bob3.send(Packet::PubRel(Ack::new(rec.packet_id))).await;
    assert!(matches!(bob3.recv().await, Packet::PubComp(_)));
    watcher.expect_silence(200).await;
    // Allowed: delivered.
    let mut alice = login(&b, V5, "alice-pub", "alice").await;
    let ack = publish(&mut alice, "alice/x", QoS::AtLeastOnce).await.unwrap();
    assert_eq!(ack.reason_code, ReasonCode::Success);
    expect_message(&mut watcher, "alice/x").await;
    // deny wins over readwrite.
    let ack = publish(&mut alice, "alice/private/x", QoS::AtLeastOnce)
        .await
        .unwrap();
    assert_eq!(ack.reason_code, ReasonCode::NotAuthorized);
}

/// Denied SUBSCRIBE: SUBACK 0x87 (3.1.1: 0x80 Failure), per filter.
#[tokio::test]
async fn denied_subscribe_gets_failure_codes() {
    let (b, _dir) = broker_with_acl(RULES).await;
    let mut bob5 = login(&b, V5, "bob5", "bob").await;
    assert_eq!(subscribe(&mut bob5, "alice/#").await, ReasonCode::NotAuthorized);
    assert_eq!(subscribe(&mut bob5, "public/+").await, ReasonCode::GrantedQoS1);
    assert_eq!(subscribe(&mut bob5, "#").await, ReasonCode::NotAuthorized);
    assert_eq!(
        subscribe(&mut bob5, "$share/g/public/#").await,
        ReasonCode::GrantedQoS1
    );
    let mut bob3 = login(&b, V3, "bob3", "bob").await;
    // The 3.1.1 decoder maps return code 0x80 to Unspecified error.
    assert_eq!(
        subscribe(&mut bob3, "alice/#").await,
        ReasonCode::UnspecifiedError
    );
    assert_eq!(subscribe(&mut bob3, "public/a").await, ReasonCode::GrantedQoS1);
}

/// `denied_subscription_reason = "unspecified_error"`: 5.0 clients that know only the
/// 3.1.1 failure code get 0x80 for a refused filter (v5 [MQTT-3.9.3-2] lets the server choose).
#[tokio::test]
async fn denied_subscribe_can_answer_unspecified_error() {
    let dir = TempDir::new("acl-0x80");
    let acl = dir.file("acl", RULES);
    let pw = dir.file("passwd", &passwords(&[("alice", "a"), ("bob", "b")]));
    let b = start(|b| {
        b.configure(|c| {
            c.acl_file = Some(acl);
            c.password_file = Some(pw);
            c.denied_subscription_reason = tern_broker::DeniedSubscription::UnspecifiedError;
        })
    })
    .await;
    let mut bob5 = login(&b, V5, "bob5", "bob").await;
    assert_eq!(
        subscribe(&mut bob5, "alice/#").await,
        ReasonCode::UnspecifiedError
    );
    assert_eq!(subscribe(&mut bob5, "public/+").await, ReasonCode::GrantedQoS1);
}

/// `receive` is checked at delivery: a subscription may be wider than what the
/// client may read.
#[tokio::test]
async fn receive_rules_filter_deliveries() {
    let (b, _dir) = broker_with_acl(RULES).await;
    let mut bob = login(&b, V5, "bob", "bob").await;
    assert_eq!(subscribe(&mut bob, "all/#").await, ReasonCode::GrantedQoS1);
    let mut alice = login(&b, V5, "alice", "alice").await;
    publish(&mut alice, "all/hidden/1", QoS::AtLeastOnce).await;
    publish(&mut alice, "all/visible/1", QoS::AtLeastOnce).await;
    expect_message(&mut bob, "all/visible/1").await;
    bob.expect_silence(100).await;
}

/// Patterns substitute the client id and the user name; wildcards in them do not widen
/// anything (CVE-2017-7650).
#[tokio::test]
async fn patterns_use_client_id_and_user_name() {
    let (b, _dir) = broker_with_acl(RULES).await;
    let mut bob = login(&b, V5, "dev1", "bob").await;
    let ack = publish(&mut bob, "clients/dev1/status", QoS::AtLeastOnce)
        .await
        .unwrap();
    assert_eq!(ack.reason_code, ReasonCode::NoMatchingSubscribers);
    let ack = publish(&mut bob, "clients/dev2/status", QoS::AtLeastOnce)
        .await
        .unwrap();
    assert_eq!(ack.reason_code, ReasonCode::NotAuthorized);
    assert_eq!(subscribe(&mut bob, "users/bob/#").await, ReasonCode::GrantedQoS1);
    assert_eq!(
        subscribe(&mut bob, "users/alice/#").await,
        ReasonCode::NotAuthorized
    );
    let ack = publish(&mut bob, "users/bob/inbox", QoS::AtLeastOnce)
        .await
        .unwrap();
    assert_eq!(ack.reason_code, ReasonCode::Success);
    expect_message(&mut bob, "users/bob/inbox").await;
    let mut dev = login(&b, V5, "dev1", "bob").await;
    assert_eq!(
        subscribe(&mut dev, "devices/dev1/#").await,
        ReasonCode::GrantedQoS1
    );
    assert_eq!(
        subscribe(&mut dev, "devices/+/#").await,
        ReasonCode::NotAuthorized
    );
    let mut wild = login(&b, V5, "+", "bob").await;
    assert_eq!(
        subscribe(&mut wild, "devices/+/#").await,
        ReasonCode::NotAuthorized
    );
    let mut hash = login(&b, V5, "#", "bob").await;
    assert_eq!(subscribe(&mut hash, "devices/#").await, ReasonCode::NotAuthorized);
}

/// A will the client may not publish refuses the connection with 0x87.
#[tokio::test]
async fn will_on_a_denied_topic_is_refused() {
    let (b, _dir) = broker_with_acl(RULES).await;
    for (v, id) in [(V5, "w5"), (V3, "w3")] {
        let mut c = connect(v, id, Some("bob"), Some("b"));
        c.will = Some(tern_proto::Will {
            topic: "alice/will".into(),
            payload: "gone".into(),
            qos: QoS::AtMostOnce,
            retain: false,
            properties: Default::default(),
        });
        let mut p = Peer::tcp(b.addr(), v).await;
        assert_eq!(p.connect(c).await.reason_code, ReasonCode::NotAuthorized, "{id}");
    }
}

/// RELIABILITY.md I1: an empty ACL file denies everything.
#[tokio::test]
async fn empty_acl_denies_everything() {
    let (b, _dir) = broker_with_acl("# nothing allowed\n").await;
    let mut alice = login(&b, V5, "alice", "alice").await;
    assert_eq!(subscribe(&mut alice, "alice/#").await, ReasonCode::NotAuthorized);
    let ack = publish(&mut alice, "alice/x", QoS::AtLeastOnce).await.unwrap();
    assert_eq!(ack.reason_code, ReasonCode::NotAuthorized);
}

/// CVE-2021-34434 (RELIABILITY.md F13): a reloaded ACL stops deliveries on existing
/// subscriptions; a broken ACL at reload keeps the one in force (H7).
#[tokio::test]
async fn reload_revokes_live_subscriptions_and_keeps_old_on_error() {
    let dir = TempDir::new("acl-reload");
    let acl = dir.file("acl", "pattern readwrite room/#\n");
    let b = start(|b| {
        let acl = acl.clone();
        b.configure(|c| c.acl_file = Some(acl))
    })
    .await;
    let (mut sub, _) = connect_tcp(b.addr(), V5, "sub", None, None).await;
    let (mut publ, _) = connect_tcp(b.addr(), V5, "pub", None, None).await;
    assert_eq!(subscribe(&mut sub, "room/#").await, ReasonCode::GrantedQoS1);
    publish(&mut publ, "room/a", QoS::AtLeastOnce).await;
    expect_message(&mut sub, "room/a").await;
    // Broken file: nothing changes.
    std::fs::write(&acl, "topic frobnicate room/#\n").unwrap();
    assert!(b.security().reload().is_err());
    publish(&mut publ, "room/b", QoS::AtLeastOnce).await;
    expect_message(&mut sub, "room/b").await;
    // Receiving revoked: the live subscription stops delivering.
    std::fs::write(&acl, "pattern publish,subscribe room/#\n").unwrap();
    b.security().reload().unwrap();
    let ack = publish(&mut publ, "room/c", QoS::AtLeastOnce).await.unwrap();
    assert_eq!(ack.reason_code, ReasonCode::Success);
    sub.expect_silence(200).await;
}

/// An ACL syntax error stops the broker with the setting and the line.
#[tokio::test]
async fn acl_syntax_error_refuses_to_start() {
    let dir = TempDir::new("acl-bad");
    let acl = dir.file("acl", "user alice\ntopic read a/#/b\n");
    let e = tern_broker::BrokerBuilder::new()
        .listen("127.0.0.1:0".parse().unwrap())
        .configure(|c| c.acl_file = Some(acl))
        .bind()
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("`acl_file`") && e.contains("line 2"), "{e}");
}
