//! Chapter 3.1.2 / 3.1.3: the Will Message.

use std::time::Duration;

use tern_proto::{Connect, Disconnect, Packet, ProtocolVersion, QoS, ReasonCode, Will};

use crate::support::*;

fn with_will(v: ProtocolVersion, id: &str, topic: &str, retain: bool) -> Connect {
    let mut c = connect(v, id);
    c.will = Some(Will {
        topic: topic.into(),
        payload: "gone".into(),
        qos: QoS::AtLeastOnce,
        retain,
        properties: Default::default(),
    });
    c
}

#[tokio::test]
async fn will_retain_decides_how_the_will_is_published() {
    let b = start().await;
    for v in [V3, V5] {
        let prefix = format!("wr{}", if v.is_v5() { 5 } else { 3 });
        let mut watcher = Raw::connect(b.addr(), v, "watcher").await;
        watcher.subscribe(&format!("{prefix}/#"), QoS::AtLeastOnce).await;
        // v3.1.1 [MQTT-3.1.2-8] / v5 [MQTT-3.1.2-7], v5 [MQTT-3.1.2-8]: the will is kept and
        // published when the connection drops.
        let (plain, _) = Raw::connect_with(b.addr(), with_will(v, "wa", &format!("{prefix}/a"), false)).await;
        let (kept, _) = Raw::connect_with(b.addr(), with_will(v, "wb", &format!("{prefix}/b"), true)).await;
        drop(plain);
        drop(kept);
        for _ in 0..2 {
            let p = watcher.recv_publish().await;
            watcher.ack(&p).await;
        }
        // v3.1.1 [MQTT-3.1.2-16] / v5 [MQTT-3.1.2-14]: Will Retain 0: not retained;
        // v3.1.1 [MQTT-3.1.2-17] / v5 [MQTT-3.1.2-15]: Will Retain 1: retained.
        let mut late = Raw::connect(b.addr(), v, "late").await;
        late.subscribe(&format!("{prefix}/#"), QoS::AtMostOnce).await;
        let p = late.recv_publish().await;
        assert_eq!((p.topic.to_string(), p.retain), (format!("{prefix}/b"), true));
        late.expect_silence(150).await;
    }
}

#[tokio::test]
async fn no_will_flag_no_will() {
    let b = start().await;
    let mut watcher = Raw::connect(b.addr(), V3, "watcher").await;
    watcher.subscribe("#", QoS::AtMostOnce).await;
    let c = Raw::connect(b.addr(), V3, "no-will").await;
    drop(c);
    // v3.1.1 [MQTT-3.1.2-12]: nothing is published.
    watcher.expect_silence(300).await;
}

#[tokio::test]
async fn the_will_is_removed_once_published_or_on_normal_disconnect_v5() {
    let b = start().await;
    let mut watcher = Raw::connect(b.addr(), V5, "watcher").await;
    watcher.subscribe("wd/#", QoS::AtMostOnce).await;
    // v5 [MQTT-3.14.4-3], v5 [MQTT-3.1.2-10]: DISCONNECT 0x00 discards it.
    let (c, _) = Raw::connect_with(b.addr(), with_will(V5, "wd1", "wd/1", false)).await;
    c.disconnect().await;
    watcher.expect_silence(200).await;
    // v5 [MQTT-3.1.2-10]: once published, it is gone from the session: a later drop of a
    // connection without a will publishes nothing.
    let mut c = with_will(V5, "wd2", "wd/2", false);
    c.clean_start = false;
    c.properties.session_expiry_interval = Some(60);
    let (raw, _) = Raw::connect_with(b.addr(), c.clone()).await;
    drop(raw);
    assert_eq!(&watcher.recv_publish().await.topic[..], "wd/2");
    c.will = None;
    let (raw, ack) = Raw::connect_with(b.addr(), c).await;
    assert!(ack.session_present);
    drop(raw);
    watcher.expect_silence(300).await;
    end_session(b.addr(), V5, "wd2").await;
}

#[tokio::test]
async fn a_delayed_will_goes_out_when_the_session_ends_first_v5() {
    let b = start().await;
    let mut watcher = Raw::connect(b.addr(), V5, "watcher").await;
    watcher.subscribe("wl/#", QoS::AtMostOnce).await;
    let mut c = with_will(V5, "wl", "wl/t", false);
    if let Some(w) = &mut c.will {
        w.properties.will_delay_interval = Some(30);
    }
    c.properties.session_expiry_interval = Some(1);
    let (raw, _) = Raw::connect_with(b.addr(), c).await;
    drop(raw);
    let started = std::time::Instant::now();
    // v5 [MQTT-3.1.2-8]: the session ends after 1 s, before the 30 s delay: the will goes then.
    let p = watcher.recv_publish().await;
    assert_eq!(&p.topic[..], "wl/t");
    assert!(started.elapsed() >= Duration::from_millis(800));
}

#[tokio::test]
async fn will_user_properties_keep_their_order_v5() {
    let b = start().await;
    let mut watcher = Raw::connect(b.addr(), V5, "watcher").await;
    watcher.subscribe("wu/#", QoS::AtMostOnce).await;
    let mut c = with_will(V5, "wu", "wu/t", false);
    let props = vec![
        ("z".into(), "1".into()),
        ("a".into(), "2".into()),
        ("z".into(), "3".into()),
    ];
    if let Some(w) = &mut c.will {
        w.properties.user_properties = props.clone();
    }
    let (mut raw, _) = Raw::connect_with(b.addr(), c).await;
    raw.send(Packet::Disconnect(Disconnect::with_reason(
        ReasonCode::DisconnectWithWill,
    )))
    .await;
    // v5 [MQTT-3.1.3-10]: the will's User Properties arrive unaltered and in order.
    let p = watcher.recv_publish().await;
    assert_eq!(p.properties.user_properties, props);
}
