//! Reconnection and session resumption: through a proxy that cuts the
//! connection to our broker, and against a scripted server that checks the
//! exact packets.

use std::time::Duration;

use tern_client::{Client, CloseReason, Event, QoS, Reconnect};
use tern_proto::{Ack, ConnAck, Packet, ReasonCode, SubAck};

use crate::support::*;

fn is_connected(e: &Event) -> bool {
    matches!(e, Event::Connected { .. })
}

#[tokio::test]
async fn resumes_the_session_and_delivers_what_was_published_offline() {
    let b = broker().await;
    let proxy = Proxy::start(b.addr()).await;
    let (sub, mut sub_events) = connect(b.addr(), V5, "resume-sub").await;
    sub.subscribe("r/#", QoS::AtLeastOnce).await.unwrap();

    let opts = options(proxy.addr(), V5, "resume-pub").session_expiry(60);
    let (c, mut events) = Client::connect(opts).await.unwrap();
    wait_for(&mut events, is_connected).await;
    proxy.cut();
    match wait_for(&mut events, |e| matches!(e, Event::Disconnected { .. })).await {
        Event::Disconnected { reason } => assert_eq!(reason, CloseReason::TransportLost),
        _ => unreachable!(),
    }
    // Published while offline or reconnecting: queued, sent after the reconnection.
    let sends = tokio::spawn(async move {
        for i in 0..5 {
            c.publish(format!("r/{i}"), "queued", QoS::AtLeastOnce)
                .await
                .unwrap();
        }
        c
    });
    wait_for(&mut events, |e| matches!(e, Event::Reconnecting { .. })).await;
    match wait_for(&mut events, is_connected).await {
        Event::Connected { session_present, .. } => assert!(session_present, "session resumed"),
        _ => unreachable!(),
    }
    let c = tokio::time::timeout(WAIT, sends).await.unwrap().unwrap();
    for i in 0..5 {
        assert_eq!(&*message(&mut sub_events).await.topic, format!("r/{i}"));
    }
    c.disconnect().await.unwrap();
}

#[tokio::test]
async fn resubscribes_when_the_server_has_no_session_mqtt_3_2_2_5() {
    // v5 [MQTT-3.2.2-5]: Session Present 0: the session state is dropped and rebuilt.
    let b = broker().await;
    let proxy = Proxy::start(b.addr()).await;
    for v in [V3, V5] {
        // Session expiry 0 (5.0) / Clean Session 1 (3.1.1): the session ends with the connection.
        let (c, mut events) = Client::connect(options(proxy.addr(), v, &format!("resub-{v}")))
            .await
            .unwrap();
        c.subscribe("again/#", QoS::AtLeastOnce).await.unwrap();
        proxy.cut();
        match wait_for(&mut events, is_connected).await {
            Event::Connected { session_present, .. } => assert!(!session_present),
            _ => unreachable!(),
        }
        let (p, _pe) = connect(b.addr(), v, &format!("resub-pub-{v}")).await;
        // The re-subscription may still be on its way: publish until it arrives.
        let deadline = tokio::time::Instant::now() + WAIT;
        let got = loop {
            p.publish("again/x", "back", QoS::AtLeastOnce).await.unwrap();
            if let Ok(m) = tokio::time::timeout(Duration::from_millis(200), message(&mut events)).await {
                break m;
            }
            assert!(tokio::time::Instant::now() < deadline, "never re-subscribed");
        };
        assert_eq!(&got.payload[..], b"back");
        c.disconnect().await.unwrap();
    }
}

#[tokio::test]
async fn reconnect_disabled_stops_the_client() {
    let b = broker().await;
    let proxy = Proxy::start(b.addr()).await;
    let opts = options(proxy.addr(), V3, "once").reconnect(Reconnect::disabled());
    let (c, mut events) = Client::connect(opts).await.unwrap();
    proxy.cut();
    wait_for(&mut events, |e| matches!(e, Event::Disconnected { .. })).await;
    // The stream ends and calls fail.
    assert!(tokio::time::timeout(WAIT, events.recv()).await.unwrap().is_none());
    assert!(c.publish("a", "b", QoS::AtMostOnce).await.is_err());
}

#[tokio::test]
async fn resends_publish_with_dup_and_pubrel_in_order_mqtt_4_4_0_1() {
    // v5 [MQTT-4.4.0-1], v5 [MQTT-4.6.0-1]: unacknowledged PUBLISH and PUBREL again, in order.
    let server = FakeServer::start().await;
    let opts = options(server.addr(), V5, "resender").session_expiry(300);
    let connecting = tokio::spawn(Client::connect(opts));
    let (mut peer, first) = server.accept_with(ConnAck::new(ReasonCode::Success, false)).await;
    assert!(first.clean_start);
    let (c, mut events) = connecting.await.unwrap().unwrap();
    let c1 = c.clone();
    let q1 = tokio::spawn(async move { c1.publish("a", "1", QoS::AtLeastOnce).await });
    let Packet::Publish(p1) = peer.recv().await else {
        panic!()
    };
    let c2 = c.clone();
    let q2 = tokio::spawn(async move { c2.publish("b", "2", QoS::ExactlyOnce).await });
    let Packet::Publish(p2) = peer.recv().await else {
        panic!()
    };
    let (id1, id2) = (p1.packet_id.unwrap(), p2.packet_id.unwrap());
    peer.send(Packet::PubRec(Ack::new(id2))).await;
    assert_eq!(peer.recv().await, Packet::PubRel(Ack::new(id2)));
    drop(peer);
    wait_for(&mut events, |e| matches!(e, Event::Disconnected { .. })).await;

    // Resume: Clean Start 0, then the unacknowledged PUBLISH with DUP and the PUBREL.
    let (mut peer, again) = server.accept_with(ConnAck::new(ReasonCode::Success, true)).await;
    assert!(!again.clean_start);
    let Packet::Publish(r1) = peer.recv().await else {
        panic!()
    };
    assert!(r1.dup, "v5 [MQTT-3.3.1-1] DUP on re-delivery");
    assert_eq!((r1.packet_id, &*r1.topic), (Some(id1), "a"));
    // v5 [MQTT-4.3.3-6] the PUBLISH of b is not sent again after its PUBREL.
    assert_eq!(peer.recv().await, Packet::PubRel(Ack::new(id2)));
    peer.send(Packet::PubAck(Ack::new(id1))).await;
    peer.send(Packet::PubComp(Ack::new(id2))).await;
    assert!(q1.await.unwrap().is_ok());
    assert!(q2.await.unwrap().is_ok());
    c.disconnect().await.unwrap();
    assert_eq!(peer.expect_close().await, Some(ReasonCode::Success));
}

#[tokio::test]
async fn resubscription_is_checked_against_the_fake_server() {
    let server = FakeServer::start().await;
    let connecting = tokio::spawn(Client::connect(options(server.addr(), V3, "fake-resub")));
    let (mut peer, _) = server.accept_with(ConnAck::new(ReasonCode::Success, false)).await;
    let (c, mut events) = connecting.await.unwrap().unwrap();
    let c1 = c.clone();
    let sub = tokio::spawn(async move { c1.subscribe("x/#", QoS::AtLeastOnce).await });
    let Packet::Subscribe(s) = peer.recv().await else {
        panic!()
    };
    peer.send(Packet::SubAck(SubAck {
        packet_id: s.packet_id,
        properties: Default::default(),
        reason_codes: vec![ReasonCode::GrantedQoS1],
    }))
    .await;
    assert_eq!(sub.await.unwrap().unwrap(), QoS::AtLeastOnce);
    drop(peer);
    let (mut peer, _) = server.accept_with(ConnAck::new(ReasonCode::Success, false)).await;
    let Packet::Subscribe(again) = peer.recv().await else {
        panic!()
    };
    assert_eq!(again.filters, s.filters);
    // A refused re-subscription is reported.
    peer.send(Packet::SubAck(SubAck {
        packet_id: again.packet_id,
        properties: Default::default(),
        reason_codes: vec![ReasonCode::UnspecifiedError],
    }))
    .await;
    match wait_for(&mut events, |e| matches!(e, Event::ResubscribeFailed { .. })).await {
        Event::ResubscribeFailed { filter, .. } => assert_eq!(&*filter, "x/#"),
        _ => unreachable!(),
    }
}

#[tokio::test]
async fn keep_alive_detects_a_silent_server_within_one_and_a_half_intervals() {
    let server = FakeServer::start().await;
    let opts = options(server.addr(), V5, "pinger")
        .keep_alive(Duration::from_secs(1))
        .reconnect(Reconnect::disabled());
    let connecting = tokio::spawn(Client::connect(opts));
    let (mut peer, connect) = server.accept_with(ConnAck::new(ReasonCode::Success, false)).await;
    assert_eq!(connect.keep_alive, 1);
    let (_c, mut events) = connecting.await.unwrap().unwrap();
    let t0 = tokio::time::Instant::now();
    // Section 3.1.2.10: in the absence of other packets the client sends PINGREQ.
    assert_eq!(peer.recv().await, Packet::PingReq);
    // Exact deadlines are asserted with a virtual clock in the session tests of
    // tern-proto; these bounds leave room for a loaded machine.
    let waited = t0.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_millis(1800),
        "{waited:?}"
    );
    // No PINGRESP: the client gives up half an interval later.
    match wait_for(&mut events, |e| matches!(e, Event::Disconnected { .. })).await {
        Event::Disconnected { reason } => assert_eq!(reason, CloseReason::KeepAliveTimeout),
        _ => unreachable!(),
    }
    let dead = t0.elapsed();
    assert!(dead < Duration::from_millis(2500), "detected after {dead:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relays_releases_go_before_its_later_publishes_and_count_in_the_window_mqtt_4_9_0_2() {
    // A relay resuming after its own restart releases the ids the server may still hold, then
    // resends: v5 [MQTT-4.9.0-2], the server counts a QoS 2 message in its Receive Maximum
    // until PUBCOMP, so the releases come first and hold their places in the window.
    use tern_client::PublishOptions;
    use tern_testkit::raw::pid;
    let server = FakeServer::start().await;
    let connecting = tokio::spawn(Client::connect(
        options(server.addr(), V5, "relay").session_expiry(300),
    ));
    let mut ack = ConnAck::new(ReasonCode::Success, false);
    ack.properties.receive_maximum = Some(2);
    let (mut peer, _) = server.accept_with(ack).await;
    let (c, _events) = connecting.await.unwrap().unwrap();
    let mut pending = Vec::new();
    for round in 0..20u16 {
        let base = round * 4 + 1;
        // Two releases of ids the client does not know, then two messages of its own ids.
        pending.push(c.release(pid(base)).await.unwrap());
        pending.push(c.release(pid(base + 1)).await.unwrap());
        for id in [base + 2, base + 3] {
            let o = PublishOptions::new()
                .qos(QoS::ExactlyOnce)
                .packet_id(pid(id), true);
            pending.push(c.start_publish("relayed", id.to_string(), o).await.unwrap());
        }
        assert_eq!(peer.recv().await, Packet::PubRel(Ack::new(pid(base))));
        assert_eq!(peer.recv().await, Packet::PubRel(Ack::new(pid(base + 1))));
        // The two releases fill the window of 2: no PUBLISH until a PUBCOMP.
        peer.expect_silence(50).await;
        peer.send(Packet::PubComp(Ack::new(pid(base)))).await;
        let Packet::Publish(p) = peer.recv().await else {
            panic!("expected the first relayed PUBLISH")
        };
        assert_eq!(p.packet_id, Some(pid(base + 2)));
        peer.expect_silence(50).await;
        peer.send(Packet::PubComp(Ack::new(pid(base + 1)))).await;
        let Packet::Publish(p) = peer.recv().await else {
            panic!("expected the second relayed PUBLISH")
        };
        assert_eq!(p.packet_id, Some(pid(base + 3)));
        // PUBREL of a relayed message waits for `release`; complete both with error PUBRECs.
        for id in [base + 2, base + 3] {
            peer.send(Packet::PubRec(Ack::with_reason(
                pid(id),
                ReasonCode::QuotaExceeded,
            )))
            .await;
        }
    }
    for p in pending {
        let _ = p.outcome().await;
    }
    c.disconnect().await.unwrap();
}
