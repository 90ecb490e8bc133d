//! The 5.0 subscription options and message properties across nodes (issue #15: "No Local,
//! Retain As Published, subscription identifiers, message expiry"): a subscriber on node B
//! sees a message published on node A exactly as a subscriber of one broker would.

use std::time::Duration;

use tern_proto::{Ack, Packet, Publish, QoS, ReasonCode, SubscriptionOptions};
use tern_testkit::nats::Nats;
use tern_testkit::raw::{pid, Raw, V5};

use crate::node;

/// The next PUBLISH `sub` receives within 10 s (acknowledged), skipping nothing.
async fn next_publish(sub: &mut Raw) -> Publish {
    match sub.next_within(Duration::from_secs(10)).await {
        Ok(Some(Packet::Publish(p))) => {
            if let (QoS::AtLeastOnce, Some(id)) = (p.qos, p.packet_id) {
                sub.send(Packet::PubAck(Ack::new(id))).await;
            }
            p
        }
        other => panic!("expected a PUBLISH, got {other:?}"),
    }
}

/// Publish `p` (QoS 1, packet id 9) and wait for its PUBACK: Success, not 0x10 No matching
/// subscribers, although no session of the publisher's node matches (v5 section 3.4.2.1: 0x10
/// says there is no subscriber, which a node cannot say of the others).
async fn publish(raw: &mut Raw, mut p: Publish) {
    p.qos = QoS::AtLeastOnce;
    p.packet_id = Some(pid(9));
    raw.send(Packet::Publish(p)).await;
    match raw.next_within(Duration::from_secs(20)).await {
        Ok(Some(Packet::PubAck(a))) => assert_eq!(a.reason_code, ReasonCode::Success),
        other => panic!("expected PUBACK, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_options_and_properties_hold_across_nodes() {
    let nats = Nats::start(3, true);
    let mut config = node::config(&nats, "a");
    let a = node::start(&config).await;
    config.node_name = "b".into();
    let b = node::start(&config).await;

    // On node b: one subscription with an identifier and Retain As Published, one with
    // neither, and a No Local one of a client that also publishes.
    let mut rap = Raw::connect(b.addr(), V5, "rap").await;
    let mut o = SubscriptionOptions::qos(QoS::AtLeastOnce);
    o.retain_as_published = true;
    rap.subscribe_with("opt/#", o, Some(7)).await;
    let mut plain = Raw::connect(b.addr(), V5, "plain").await;
    plain.subscribe("opt/#", QoS::AtLeastOnce).await;
    let mut local = Raw::connect(b.addr(), V5, "local").await;
    let mut o = SubscriptionOptions::qos(QoS::AtLeastOnce);
    o.no_local = true;
    local.subscribe_with("opt/#", o, None).await;
    let mut publisher = Raw::connect(a.addr(), V5, "publisher").await;
    // The other node's QoS 1 path is in place once a first message crosses.
    publish(&mut publisher, Publish::new("opt/warm", "warm")).await;
    for s in [&mut rap, &mut plain, &mut local] {
        assert_eq!(&next_publish(s).await.payload[..], b"warm");
    }

    // A retained message with every property, from node a.
    let mut p = Publish::new("opt/x", "payload");
    p.retain = true;
    p.properties.message_expiry_interval = Some(600);
    p.properties.payload_format_indicator = Some(1);
    p.properties.content_type = Some("text/plain".into());
    p.properties.response_topic = Some("reply/here".into());
    p.properties.correlation_data = Some(tern_proto::Bytes::from_static(b"\x01\x02"));
    p.properties.user_properties.push(("k".into(), "v".into()));
    publish(&mut publisher, p).await;
    let got = next_publish(&mut rap).await;
    // v5 [MQTT-3.3.1-13]: Retain As Published keeps RETAIN on a message forwarded live;
    // v5 [MQTT-3.3.1-12]: without it, RETAIN is 0.
    assert!(got.retain, "{got:?}");
    // v5 [MQTT-3.3.4-3]: the subscription's identifier goes with the message.
    assert_eq!(got.properties.subscription_identifiers, vec![7]);
    // v5 [MQTT-3.3.2-6]: the expiry forwarded is what remains of it.
    let left = got.properties.message_expiry_interval.expect("expiry forwarded");
    assert!((590..=600).contains(&left), "{left}");
    // The other properties reach the subscriber unchanged: v5 [MQTT-3.3.2-4] (payload
    // format), v5 [MQTT-3.3.2-20] (content type), v5 [MQTT-3.3.2-15] (response topic),
    // v5 [MQTT-3.3.2-16] (correlation data), v5 [MQTT-3.3.2-17] (user properties).
    assert_eq!(got.properties.payload_format_indicator, Some(1));
    assert_eq!(got.properties.content_type.as_deref(), Some("text/plain"));
    assert_eq!(got.properties.response_topic.as_deref(), Some("reply/here"));
    assert_eq!(got.properties.correlation_data.as_deref(), Some(&b"\x01\x02"[..]));
    assert_eq!(got.properties.user_properties, vec![("k".into(), "v".into())]);
    let got = next_publish(&mut plain).await;
    assert!(!got.retain, "{got:?}");
    assert!(got.properties.subscription_identifiers.is_empty());
    assert_eq!(&next_publish(&mut local).await.payload[..], b"payload");

    // v5 [MQTT-3.8.3-3]: No Local: what `local` publishes on node b does not come back to it;
    // the others, on the same node, get it.
    publish(&mut local, Publish::new("opt/own", "own")).await;
    assert_eq!(&next_publish(&mut plain).await.payload[..], b"own");
    assert_eq!(&next_publish(&mut rap).await.payload[..], b"own");
    local.expect_silence(500).await;

    // v5 [MQTT-3.3.2-5]: a message whose expiry ran out while it waited for an offline
    // persistent session on node b is not delivered; one that has time left is.
    let persistent = || {
        let mut c = tern_proto::Connect::new(V5, "away");
        c.keep_alive = 0;
        c.clean_start = false;
        c.properties.session_expiry_interval = Some(600);
        c
    };
    let (mut away, _) = Raw::connect_with(b.addr(), persistent()).await;
    away.subscribe("exp/#", QoS::AtLeastOnce).await;
    publish(&mut publisher, Publish::new("exp/warm", "warm")).await;
    assert_eq!(&next_publish(&mut away).await.payload[..], b"warm");
    away.disconnect().await;
    let mut short = Publish::new("exp/short", "short");
    short.properties.message_expiry_interval = Some(1);
    publish(&mut publisher, short).await;
    let mut long = Publish::new("exp/long", "long");
    long.properties.message_expiry_interval = Some(600);
    publish(&mut publisher, long).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (mut back, ack) = Raw::connect_with(b.addr(), persistent()).await;
    assert!(ack.session_present);
    let got = next_publish(&mut back).await;
    assert_eq!(&got.payload[..], b"long");
    back.expect_silence(500).await;
}
