//! Chapter 4.8: shared subscriptions (5.0).

use std::time::Duration;

use tern_proto::{Ack, Packet, QoS, ReasonCode};

use crate::support::*;

#[tokio::test]
async fn a_shared_subscription_respects_its_granted_qos() {
    let b = start().await;
    let mut m = Raw::connect(b.addr(), V5, "sq-m").await;
    // v5 [MQTT-4.8.2-1], v5 [MQTT-4.8.2-2]: `$share/`, a share name, `/`, a filter.
    let ack = m.subscribe("$share/grp/sq/#", QoS::AtMostOnce).await;
    assert_eq!(ack.reason_codes, vec![ReasonCode::Success]);
    let mut publ = Raw::connect(b.addr(), V5, "sq-pub").await;
    publ.publish("sq/x", "x", QoS::ExactlyOnce, false).await;
    // v5 [MQTT-4.8.2-3]: delivered at the granted QoS 0.
    assert_eq!(m.recv_publish().await.qos, QoS::AtMostOnce);
}

#[tokio::test]
async fn a_broken_qos2_shared_delivery_is_completed_with_the_same_member() {
    let b = start().await;
    let (mut m1, _) = Raw::connect_with(b.addr(), persistent(V5, "s2-m1")).await;
    m1.subscribe("$share/g/s2", QoS::ExactlyOnce).await;
    let mut publ = Raw::connect(b.addr(), V5, "s2-pub").await;
    publ.publish("s2", "once", QoS::ExactlyOnce, false).await;
    let first = m1.recv_publish().await;
    let mut m2 = Raw::connect(b.addr(), V5, "s2-m2").await;
    m2.subscribe("$share/g/s2", QoS::ExactlyOnce).await;
    drop(m1);
    tokio::time::sleep(Duration::from_millis(100)).await;
    // v5 [MQTT-4.8.2-4]: the member that started it gets it again when it comes back.
    let (mut m1, _) = Raw::connect_with(b.addr(), persistent(V5, "s2-m1")).await;
    let again = m1.recv_publish().await;
    assert_eq!((again.packet_id, again.dup), (first.packet_id, true));
    m1.ack(&again).await;
    m2.expect_silence(200).await;
    m1.disconnect().await;
    end_session(b.addr(), V5, "s2-m1").await;
}

#[tokio::test]
async fn a_qos2_shared_message_is_not_passed_on_when_its_member_session_ends() {
    let b = start().await;
    let mut m1 = Raw::connect(b.addr(), V5, "s5-m1").await;
    m1.subscribe("$share/g/s5", QoS::ExactlyOnce).await;
    let mut publ = Raw::connect(b.addr(), V5, "s5-pub").await;
    publ.publish("s5", "once", QoS::ExactlyOnce, false).await;
    let _unfinished = m1.recv_publish().await;
    let mut m2 = Raw::connect(b.addr(), V5, "s5-m2").await;
    m2.subscribe("$share/g/s5", QoS::ExactlyOnce).await;
    // m1's session ends with its connection (Session Expiry Interval 0).
    drop(m1);
    // v5 [MQTT-4.8.2-5]: the QoS 2 message is not sent to another member.
    m2.expect_silence(400).await;
}

#[tokio::test]
async fn a_shared_message_refused_by_its_member_is_discarded() {
    let b = start().await;
    let mut m1 = Raw::connect(b.addr(), V5, "s6-m1").await;
    m1.subscribe("$share/g/s6", QoS::AtLeastOnce).await;
    let mut publ = Raw::connect(b.addr(), V5, "s6-pub").await;
    publ.publish("s6", "refused", QoS::AtLeastOnce, false).await;
    let p = m1.recv_publish().await;
    let mut m2 = Raw::connect(b.addr(), V5, "s6-m2").await;
    m2.subscribe("$share/g/s6", QoS::AtLeastOnce).await;
    m1.send(Packet::PubAck(Ack::with_reason(
        p.packet_id.unwrap(),
        ReasonCode::UnspecifiedError,
    )))
    .await;
    m1.sync().await;
    drop(m1);
    // v5 [MQTT-4.8.2-6]: discarded, not offered to another member.
    m2.expect_silence(400).await;
}
