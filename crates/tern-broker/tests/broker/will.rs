//! Last Will and Testament.

use std::time::Duration;

use tern_proto::{Connect, Disconnect, Packet, QoS, ReasonCode, Will};

use crate::harness::*;

fn with_will(v: tern_proto::ProtocolVersion, id: &str, delay: Option<u32>) -> Connect {
    let mut c = Connect::new(v, id);
    c.keep_alive = 0;
    let mut w = Will {
        topic: "wills/dev".into(),
        payload: "gone".into(),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: Default::default(),
    };
    w.properties.will_delay_interval = delay;
    c.will = Some(w);
    c
}

#[tokio::test]
async fn will_is_published_on_abnormal_close_mqtt_3_1_2_8() {
    // v3.1.1+v5 [MQTT-3.1.2-8]: the will is published when the connection drops.
    let b = start().await;
    for v in [V3, V5] {
        let mut watcher = Raw::connect(b.addr(), v, "watcher").await;
        watcher.subscribe("wills/#", QoS::AtLeastOnce).await;
        let (dev, _) = Raw::connect_with(b.addr(), with_will(v, "dev", None)).await;
        drop(dev); // TCP close without DISCONNECT
        let p = watcher.recv_publish().await;
        assert_eq!(&p.payload[..], b"gone");
        assert_eq!(p.qos, QoS::AtLeastOnce);
        watcher.ack(&p).await;
        watcher.disconnect().await;
    }
}

#[tokio::test]
async fn will_is_discarded_on_disconnect_mqtt_3_1_2_10() {
    // v3.1.1 [MQTT-3.1.2-10], v3.1.1 [MQTT-3.14.4-3]: DISCONNECT removes the will.
    let b = start().await;
    let mut watcher = Raw::connect(b.addr(), V3, "watcher").await;
    watcher.subscribe("wills/#", QoS::AtLeastOnce).await;
    let (dev, _) = Raw::connect_with(b.addr(), with_will(V3, "dev", None)).await;
    dev.disconnect().await;
    watcher.expect_silence(300).await;
}

#[tokio::test]
async fn disconnect_with_will_message_publishes_it_v5() {
    let b = start().await;
    let mut watcher = Raw::connect(b.addr(), V5, "watcher").await;
    watcher.subscribe("wills/#", QoS::AtLeastOnce).await;
    let (mut dev, _) = Raw::connect_with(b.addr(), with_will(V5, "dev", None)).await;
    dev.send(Packet::Disconnect(Disconnect::with_reason(
        ReasonCode::DisconnectWithWill,
    )))
    .await;
    let p = watcher.recv_publish().await;
    assert_eq!(&p.payload[..], b"gone");
}

#[tokio::test]
async fn will_is_published_on_protocol_error_and_keepalive_timeout() {
    let (b, clock) = start_clocked(|_| {}).await;
    let mut watcher = Raw::connect(b.addr(), V5, "watcher").await;
    watcher.subscribe("wills/#", QoS::AtMostOnce).await;
    let (mut dev, _) = Raw::connect_with(b.addr(), with_will(V5, "dev", None)).await;
    dev.send_bytes(&[0x30, 0x03, 0x00, 0x01, b'#']).await; // PUBLISH to "#": protocol error
    assert!(dev.expect_closed().await.is_some());
    watcher.recv_publish().await;
    let mut c = with_will(V3, "dev2", None);
    c.keep_alive = 1;
    let (_dev, _) = Raw::connect_with(b.addr(), c).await;
    // Closed at 1.5 s: the will follows.
    pass(&clock, Duration::from_millis(1600)).await;
    let p = watcher.recv_publish().await;
    assert_eq!(&p.payload[..], b"gone");
}

#[tokio::test]
async fn will_delay_is_cancelled_by_reconnection_v5() {
    let (b, clock) = start_clocked(|_| {}).await;
    let mut watcher = Raw::connect(b.addr(), V5, "watcher").await;
    watcher.subscribe("wills/#", QoS::AtMostOnce).await;
    let mut c = with_will(V5, "delayed", Some(1));
    c.clean_start = false;
    c.properties.session_expiry_interval = Some(60);
    // DISCONNECT 0x04 asks for the will; once the broker has closed, its delay is running.
    let leave_with_will = |mut dev: Raw| async move {
        dev.send(Packet::Disconnect(Disconnect::with_reason(
            ReasonCode::DisconnectWithWill,
        )))
        .await;
        assert_eq!(dev.expect_closed().await, None);
    };
    let (dev, _) = Raw::connect_with(b.addr(), c.clone()).await;
    leave_with_will(dev).await;
    pass(&clock, Duration::from_millis(500)).await;
    // Reconnect within the delay: the will is not sent (v5 [MQTT-3.1.3-9]).
    let (dev, ack) = Raw::connect_with(b.addr(), c.clone()).await;
    assert!(ack.session_present);
    pass(&clock, Duration::from_secs(5)).await;
    watcher.expect_silence(100).await;
    // Now leave and stay away: the will comes once its second has passed, not before.
    leave_with_will(dev).await;
    pass(&clock, Duration::from_millis(900)).await;
    watcher.expect_silence(100).await;
    pass(&clock, Duration::from_millis(100)).await;
    let p = watcher.recv_publish().await;
    assert_eq!(&p.payload[..], b"gone");
}

#[tokio::test]
async fn will_retain_is_honoured() {
    let b = start().await;
    let mut c = with_will(V3, "retainer", None);
    if let Some(w) = &mut c.will {
        w.retain = true;
    }
    let (dev, _) = Raw::connect_with(b.addr(), c).await;
    drop(dev);
    // The will is published as the connection closes, before its session ends.
    eventually("the session ended", || b.session("retainer").is_none()).await;
    let mut late = Raw::connect(b.addr(), V3, "late").await;
    late.subscribe("wills/dev", QoS::AtMostOnce).await;
    let p = late.recv_publish().await;
    assert!(p.retain);
}
