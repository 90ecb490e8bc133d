//! Bad input closes that one connection with the right code and leaves the
//! others alone; sizes are checked before buffering.

use tern_proto::{QoS, ReasonCode};

use crate::harness::*;

/// A subscriber and a publisher that keep working while a test misbehaves.
async fn canary(addr: std::net::SocketAddr) -> (Raw, Raw) {
    let mut sub = Raw::connect(addr, V5, "canary-sub").await;
    sub.subscribe("canary", QoS::AtLeastOnce).await;
    let publ = Raw::connect(addr, V3, "canary-pub").await;
    (sub, publ)
}

async fn canary_still_works(sub: &mut Raw, publ: &mut Raw) {
    publ.publish("canary", "alive", QoS::AtLeastOnce, false).await;
    let p = sub.recv_publish().await;
    assert_eq!(&p.payload[..], b"alive");
    sub.ack(&p).await;
}

#[tokio::test]
async fn malformed_packets_close_only_their_connection() {
    let b = start().await;
    let (mut sub, mut publ) = canary(b.addr()).await;
    // (bytes after CONNECT, expected v5 DISCONNECT reason); all of them also close a 3.1.1 connection.
    let cases: &[(&[u8], ReasonCode)] = &[
        // A1 (v5 section 1.5.5): five-byte Remaining Length.
        (&[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F], ReasonCode::MalformedPacket),
        // A8 / v3.1.1+v5 [MQTT-3.8.1-1]: SUBSCRIBE with flags 0000.
        (
            &[0x80, 0x06, 0x00, 0x01, 0x00, 0x01, b'a', 0x00],
            ReasonCode::MalformedPacket,
        ),
        // D1 / v3.1.1+v5 [MQTT-3.3.1-4]: QoS 3.
        (
            &[0x36, 0x05, 0x00, 0x01, b'a', 0x00, 0x01],
            ReasonCode::MalformedPacket,
        ),
        // D2 / v3.1.1 [MQTT-2.3.1-1], v5 [MQTT-2.2.1-3]: QoS 1 with packet identifier 0.
        (
            &[0x32, 0x06, 0x00, 0x01, b'a', 0x00, 0x00, 0x00],
            ReasonCode::ProtocolError,
        ),
        // F1 / v3.1.1 [MQTT-3.8.3-3], v5 [MQTT-3.8.3-2]: SUBSCRIBE without filters is a Protocol Error.
        (&[0x82, 0x03, 0x00, 0x01, 0x00], ReasonCode::ProtocolError),
        // B3 / v3.1.1 [MQTT-1.5.3-2], v5 [MQTT-1.5.4-2], v3.1.1+v5 [MQTT-4.7.3-2]: U+0000 in a topic.
        (
            &[0x30, 0x06, 0x00, 0x03, b'a', 0x00, b'b', 0x00],
            ReasonCode::MalformedPacket,
        ),
        // A10: CONNACK from a client.
        (&[0x20, 0x03, 0x00, 0x00, 0x00], ReasonCode::ProtocolError),
        // A9: 3.1.1-style trailing byte after a PINGREQ.
        (&[0xC0, 0x01, 0x00], ReasonCode::MalformedPacket),
    ];
    for (i, (bytes, expected)) in cases.iter().enumerate() {
        for v in [V3, V5] {
            let mut bad = Raw::connect(b.addr(), v, &format!("bad{i}")).await;
            bad.send_bytes(bytes).await;
            let got = bad.expect_closed().await;
            // v3.1.1 [MQTT-4.8.0-1]: close; v5 [MQTT-4.13.1-1]: DISCONNECT with the reason, then close.
            assert_eq!(got, v.is_v5().then_some(*expected), "case {i} {v}");
        }
        canary_still_works(&mut sub, &mut publ).await;
    }
    // G1 (5.0 only; in 3.1.1 these bytes are a payload): unknown property identifier in PUBLISH.
    let mut bad = Raw::connect(b.addr(), V5, "badprop").await;
    bad.send_bytes(&[0x30, 0x06, 0x00, 0x01, b'a', 0x02, 0x7F, 0x00])
        .await;
    assert_eq!(bad.expect_closed().await, Some(ReasonCode::MalformedPacket));
    canary_still_works(&mut sub, &mut publ).await;
}

#[tokio::test]
async fn huge_remaining_length_is_refused_from_the_fixed_header() {
    let b = start_with(|c| c.max_packet_size = 1024).await;
    let (mut sub, mut publ) = canary(b.addr()).await;
    // Before CONNECT: a 268,435,455-byte packet announced, nothing else sent.
    let mut raw = Raw::open(b.addr(), V3).await;
    raw.send_bytes(&[0x10, 0xFF, 0xFF, 0xFF, 0x7F]).await;
    assert_eq!(raw.expect_closed().await, None);
    // After CONNECT (v5): DISCONNECT 0x95 Packet too large.
    let mut raw = Raw::connect(b.addr(), V5, "big").await;
    raw.send_bytes(&[0x30, 0xFF, 0xFF, 0xFF, 0x7F]).await;
    assert_eq!(raw.expect_closed().await, Some(ReasonCode::PacketTooLarge));
    canary_still_works(&mut sub, &mut publ).await;
}

#[tokio::test]
async fn silent_connection_is_closed_after_connect_timeout() {
    let b = start_with(|c| c.connect_timeout_secs = 1).await;
    let mut raw = Raw::open(b.addr(), V3).await;
    let started = std::time::Instant::now();
    assert_eq!(raw.expect_closed().await, None);
    assert!(started.elapsed() >= std::time::Duration::from_millis(900));
}

#[tokio::test]
async fn one_byte_at_a_time_is_parsed() {
    let b = start().await;
    let (mut sub, _publ) = canary(b.addr()).await;
    let mut raw = Raw::open(b.addr(), V3).await;
    let connect = [
        0x10, 0x0D, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x00, 0x00, 0x01, b'x',
    ];
    let publish = [
        0x30, 0x0D, 0x00, 0x06, b'c', b'a', b'n', b'a', b'r', b'y', b'a', b'l', b'i', b'v', b'e',
    ];
    for byte in connect.iter().chain(publish.iter()) {
        raw.send_bytes(&[*byte]).await;
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    assert!(matches!(raw.recv().await, tern_proto::Packet::ConnAck(_)));
    assert_eq!(&sub.recv_publish().await.payload[..], b"alive");
}

#[tokio::test]
async fn many_packets_in_one_segment_are_all_handled() {
    let b = start().await;
    let mut raw = Raw::connect(b.addr(), V3, "burst").await;
    let mut bytes = Vec::new();
    for _ in 0..100 {
        bytes.extend_from_slice(&[0xC0, 0x00]); // PINGREQ
    }
    raw.send_bytes(&bytes).await;
    for _ in 0..100 {
        assert!(matches!(raw.recv().await, tern_proto::Packet::PingResp));
    }
}

#[tokio::test]
async fn ten_thousand_duplicate_qos2_publishes_are_delivered_once_e1() {
    // RELIABILITY E1 (CVE-2023-28366): the same id again and again, never PUBREL.
    let b = start().await;
    let mut sub = Raw::connect(b.addr(), V5, "sub").await;
    sub.subscribe("dup", QoS::ExactlyOnce).await;
    let mut publ = Raw::connect(b.addr(), V5, "pub").await;
    let mut bytes = Vec::new();
    for i in 0..10_000 {
        let mut p = tern_proto::Publish::new("dup", "x");
        p.qos = QoS::ExactlyOnce;
        p.packet_id = Some(pid(1));
        p.dup = i > 0;
        let mut out = bytes::BytesMut::new();
        tern_proto::Packet::Publish(p).encode(V5, &mut out).unwrap();
        bytes.extend_from_slice(&out);
    }
    publ.send_bytes(&bytes).await;
    for _ in 0..10_000 {
        assert!(matches!(publ.recv().await, tern_proto::Packet::PubRec(_)));
    }
    let p = sub.recv_publish().await;
    sub.ack(&p).await;
    sub.expect_silence(300).await;
}

#[tokio::test]
async fn a_subscriber_that_never_reads_does_not_hold_up_others() {
    let b = start_with(|c| c.max_queued_messages = 100).await;
    // The stalled subscriber: connects, subscribes, then never reads its socket.
    let mut stalled = Raw::connect(b.addr(), V3, "stalled").await;
    stalled.subscribe("firehose", QoS::AtMostOnce).await;
    let mut healthy = Raw::connect(b.addr(), V3, "healthy").await;
    healthy.subscribe("firehose/end", QoS::AtLeastOnce).await;
    let mut publ = Raw::connect(b.addr(), V3, "pub").await;
    let payload = "x".repeat(1024);
    let mut bytes = Vec::new();
    let mut out = bytes::BytesMut::new();
    tern_proto::Packet::Publish(tern_proto::Publish::new("firehose", payload))
        .encode(V3, &mut out)
        .unwrap();
    for _ in 0..20_000 {
        bytes.extend_from_slice(&out);
    }
    // 20 MB of QoS 0 towards the stalled client, far more than socket buffers hold.
    publ.send_bytes(&bytes).await;
    publ.publish("firehose/end", "done", QoS::AtLeastOnce, false)
        .await;
    let p = healthy.recv_publish().await;
    assert_eq!(&p.payload[..], b"done");
    drop(stalled);
}

/// QoS 1 PUBLISHes 1..=n on `topic` (payload and packet id: the number), encoded
/// for 5.0 back to back, to be sent in one write.
fn qos1_burst(topic: &str, n: u16) -> Vec<u8> {
    let mut bytes = Vec::new();
    for i in 1..=n {
        let mut p = tern_proto::Publish::new(topic, i.to_string());
        p.qos = QoS::AtLeastOnce;
        p.packet_id = Some(pid(i));
        bytes.extend_from_slice(&tern_testkit::raw::encode(&tern_proto::Packet::Publish(p), V5));
    }
    bytes
}

#[tokio::test]
async fn qos1_publishers_are_slowed_for_a_slow_subscriber_instead_of_losing_messages() {
    let b = start_with(|c| c.max_queued_messages = 10).await;
    let (mut sub, _) = Raw::connect_with(b.addr(), narrow_window("slow", 2)).await;
    sub.subscribe("bp", QoS::AtLeastOnce).await;
    let mut publ = Raw::connect(b.addr(), V5, "fast").await;
    // 300 QoS 1 publishes in one write: far beyond the queue of 10 + window of 2.
    publ.send_bytes(&qos1_burst("bp", 300)).await;
    let reader = tokio::spawn(async move {
        let mut n = 0;
        while n < 300 {
            let _ = publ.recv().await;
            n += 1;
        }
        publ
    });
    for i in 1..=300u16 {
        let p = sub.recv_publish().await;
        assert_eq!(p.payload, i.to_string().into_bytes(), "in order, none lost");
        sub.ack(&p).await;
        if i % 50 == 0 {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
    reader.await.unwrap();
}

#[tokio::test]
async fn a_stalled_qos1_subscriber_only_delays_the_publisher_for_the_backpressure_timeout() {
    let b = start_with(|c| {
        c.max_queued_messages = 10;
        c.backpressure_timeout_ms = 300;
    })
    .await;
    let mut stalled = Raw::connect(b.addr(), V3, "stalled").await;
    stalled.subscribe("st/#", QoS::AtLeastOnce).await;
    let mut healthy = Raw::connect(b.addr(), V3, "healthy").await;
    healthy.subscribe("st/#", QoS::AtLeastOnce).await;
    let mut publ = Raw::connect(b.addr(), V3, "pub").await;
    let started = std::time::Instant::now();
    for i in 0..100 {
        publ.publish(&format!("st/{i}"), "m", QoS::AtLeastOnce, false)
            .await;
    }
    // The stalled client never reads: after the timeout its messages are dropped.
    assert!(started.elapsed() < std::time::Duration::from_secs(4));
    for _ in 0..100 {
        let p = healthy.recv_publish().await;
        healthy.ack(&p).await;
    }
    drop(stalled);
}

/// 2,000 QoS 0 messages of 8 KiB (16 MiB) for "qos0/bp", written in one go by a task
/// (the write blocks while the broker holds the publisher back).
async fn qos0_flood(addr: std::net::SocketAddr) -> tokio::task::JoinHandle<Raw> {
    let mut publ = Raw::connect(addr, V3, "qos0-flood").await;
    let mut one = bytes::BytesMut::new();
    tern_proto::Packet::Publish(tern_proto::Publish::new("qos0/bp", "x".repeat(8192)))
        .encode(V3, &mut one)
        .unwrap();
    let bytes: Vec<u8> = one.iter().copied().cycle().take(one.len() * 2000).collect();
    tokio::spawn(async move {
        publ.send_bytes(&bytes).await;
        publ
    })
}

/// Messages received until 500 ms pass without one.
async fn count_until_quiet(sub: &mut Raw) -> usize {
    let mut n = 0;
    while let Ok(Some(p)) = sub.next_within(std::time::Duration::from_millis(500)).await {
        if matches!(p, tern_proto::Packet::Publish(_)) {
            n += 1;
        }
    }
    n
}

#[tokio::test]
async fn qos0_publishers_are_slowed_for_a_draining_subscriber_by_default() {
    let b = start_with(|c| c.max_queued_messages = 10).await;
    let mut sub = Raw::connect(b.addr(), V3, "slow0").await;
    sub.subscribe("qos0/bp", QoS::AtMostOnce).await;
    let publisher = qos0_flood(b.addr()).await;
    // Far more than the queue of 10 and the socket buffers; the subscriber starts late (its
    // queue full) but within backpressure_timeout_ms, so the publisher waits instead of losing.
    eventually("the subscriber's queue is full", || {
        b.session("slow0").is_some_and(|s| s.queued >= 10)
    })
    .await;
    assert_eq!(count_until_quiet(&mut sub).await, 2000);
    publisher.await.unwrap();
}

#[tokio::test]
async fn without_backpressure_qos0_messages_beyond_the_queue_are_dropped() {
    let b = start_with(|c| {
        c.max_queued_messages = 10;
        c.backpressure_qos0 = false;
    })
    .await;
    let mut sub = Raw::connect(b.addr(), V3, "slow0").await;
    sub.subscribe("qos0/bp", QoS::AtMostOnce).await;
    let publisher = qos0_flood(b.addr()).await;
    // The publisher is never held back: its whole write completes while nobody reads.
    let mut publ = tokio::time::timeout(std::time::Duration::from_secs(10), publisher)
        .await
        .expect("the publisher was slowed down")
        .unwrap();
    publ.sync().await;
    let n = count_until_quiet(&mut sub).await;
    assert!(
        n < 2000,
        "{n} delivered: QoS 0 beyond the queue limit must be dropped"
    );
}

#[tokio::test]
async fn many_qos1_publishers_flooding_one_slow_subscriber_lose_nothing_and_keep_order() {
    // Publishers' deliveries are queued in batches; the batches must not run past the
    // subscriber's limits into drops while it drains (v3.1.1+v5 [MQTT-4.6.0-6]: order per publisher).
    let b = start_with(|c| c.max_queued_messages = 10).await;
    let (mut sub, _) = Raw::connect_with(b.addr(), narrow_window("slow-many", 4)).await;
    sub.subscribe("many/#", QoS::AtLeastOnce).await;
    const PUBLISHERS: usize = 8;
    const EACH: u16 = 200;
    let mut readers = Vec::new();
    for n in 0..PUBLISHERS {
        let mut publ = Raw::connect(b.addr(), V5, &format!("many-{n}")).await;
        let bytes = qos1_burst(&format!("many/{n}"), EACH);
        readers.push(tokio::spawn(async move {
            publ.send_bytes(&bytes).await;
            for _ in 0..EACH {
                let _ = publ.recv().await;
            }
        }));
    }
    let mut next = [1u16; PUBLISHERS];
    for k in 0..PUBLISHERS * usize::from(EACH) {
        let p = sub.recv_publish().await;
        let n: usize = p.topic.trim_start_matches("many/").parse().unwrap();
        let i: u16 = std::str::from_utf8(&p.payload).unwrap().parse().unwrap();
        assert_eq!(i, next[n], "publisher {n}: in order, none lost");
        next[n] += 1;
        sub.ack(&p).await;
        if k % 100 == 0 {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }
    for r in readers {
        r.await.unwrap();
    }
}

#[tokio::test]
async fn a_message_dropped_for_its_size_does_not_hold_up_the_rest_of_the_queue() {
    // v5 [MQTT-3.1.2-25]: a PUBLISH above the client's Maximum Packet Size is not sent;
    // it must not keep its in-flight slot, or the queue behind it would wait forever.
    let b = start().await;
    let mut c = narrow_window("small-window", 1);
    c.properties.maximum_packet_size = Some(200);
    let (mut sub, _) = Raw::connect_with(b.addr(), c).await;
    sub.subscribe("mps/#", QoS::AtLeastOnce).await;
    let mut publ = Raw::connect(b.addr(), V5, "mps-pub").await;
    publ.publish("mps/a", "first", QoS::AtLeastOnce, false).await;
    publ.publish("mps/b", &"x".repeat(1000), QoS::AtLeastOnce, false)
        .await;
    publ.publish("mps/c", "third", QoS::AtLeastOnce, false).await;
    let first = sub.recv_publish().await;
    assert_eq!(&first.payload[..], b"first");
    sub.ack(&first).await;
    let third = sub.recv_publish().await;
    assert_eq!(&third.payload[..], b"third");
    sub.ack(&third).await;
}

#[tokio::test]
async fn the_first_packet_has_a_smaller_limit_of_its_own() {
    // Before CONNECT nobody is authenticated: `max_connect_packet_size` caps what a socket can
    // make the broker buffer, below `max_packet_size`. 5.0: CONNACK 0x95; 3.1.1: closed.
    let b = start_with(|c| {
        c.max_connect_packet_size = 1024;
        c.max_packet_size = 1 << 20;
    })
    .await;
    let (mut sub, mut publ) = canary(b.addr()).await;
    for (v, level) in [(V5, 5u8), (V3, 4u8)] {
        let mut c = Raw::open(b.addr(), v).await;
        // CONNECT announcing 2,000 bytes: fixed header, then the start of its variable header.
        let mut head = vec![
            0x10, 0xD0, 0x0F, 0x00, 0x04, b'M', b'Q', b'T', b'T', level, 0x02, 0x00, 0x00,
        ];
        head.extend_from_slice(&[0u8; 64]);
        c.send_bytes(&head).await;
        if v.is_v5() {
            c.expect_hex("20 03 00 95 00").await;
        }
        assert_eq!(c.expect_closed().await, None, "{v}");
    }
    // A CONNECT within the limit is accepted, and later packets may be larger.
    let mut big = Raw::connect(b.addr(), V5, "big-later").await;
    big.publish("big", &"x".repeat(4000), QoS::AtLeastOnce, false)
        .await;
    canary_still_works(&mut sub, &mut publ).await;
}

#[tokio::test]
async fn a_stalled_packet_in_progress_is_closed_and_a_slow_one_is_not() {
    // packet_stall_timeout_secs: no byte of a packet in progress for that long closes the
    // connection, with keep-alive off; a client that keeps sending is never cut off.
    let b = start_with(|c| c.packet_stall_timeout_secs = 1).await;
    let mut p = tern_proto::Publish::new("stall", "0123456789".repeat(10));
    p.qos = QoS::AtLeastOnce;
    p.packet_id = Some(pid(5));
    let bytes = tern_testkit::raw::encode(&tern_proto::Packet::Publish(p), V5);

    let mut stalled = Raw::connect(b.addr(), V5, "stalled").await;
    stalled.send_bytes(&bytes[..20]).await;
    let started = std::time::Instant::now();
    assert_eq!(stalled.expect_closed().await, None);
    assert!(started.elapsed() >= std::time::Duration::from_millis(900));

    let mut slow = Raw::connect(b.addr(), V5, "slow").await;
    // One byte every 100 ms: the packet takes about 11 s in all, far beyond the timeout,
    // but no gap reaches it. Only the first 15 bytes go slowly, to keep the test short.
    for chunk in bytes[..15].chunks(1) {
        slow.send_bytes(chunk).await;
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    slow.send_bytes(&bytes[15..]).await;
    match slow.recv().await {
        tern_proto::Packet::PubAck(a) => assert_eq!(a.packet_id, pid(5)),
        other => panic!("expected PUBACK, got {other:?}"),
    }
}

#[tokio::test]
async fn over_the_partial_packet_budget_the_oldest_partial_packets_are_closed() {
    // max_partial_bytes bounds what all connections together hold in packets in progress;
    // beyond it the oldest holders go (5.0: DISCONNECT 0x97 Quota exceeded), not the newest.
    let b = start_with(|c| {
        c.max_packet_size = 256 * 1024;
        c.max_partial_bytes = 1024 * 1024;
    })
    .await;
    let (mut sub, mut publ) = canary(b.addr()).await;
    // A PUBLISH announcing 250,000 bytes, of which each holder sends 200,000.
    let mut partial = vec![0x30, 0x90, 0xA1, 0x0F, 0x00, 0x01, b'p'];
    partial.resize(200_000, b'x');
    let mut holders = Vec::new();
    for i in 0..5 {
        let mut h = Raw::connect(b.addr(), V5, &format!("holder-{i}")).await;
        h.send_bytes(&partial).await;
        // Let the broker read it all: the holders must be counted in this order.
        tokio::time::sleep(std::time::Duration::from_millis(30)).await;
        holders.push(h);
    }
    // Six buffers of over 200,000 bytes do not fit in 1 MiB: the oldest holders are closed,
    // the newest keeps its packet in progress.
    let mut newest = Raw::connect(b.addr(), V5, "holder-5").await;
    newest.send_bytes(&partial).await;
    assert_eq!(holders[0].expect_closed().await, Some(ReasonCode::QuotaExceeded));
    newest.expect_silence(100).await;
    let last = holders.last_mut().unwrap();
    last.expect_silence(100).await;
    canary_still_works(&mut sub, &mut publ).await;
}

#[tokio::test]
async fn connects_in_progress_count_against_the_partial_packet_budget() {
    // Unauthenticated sockets holding most of a large CONNECT: the oldest are closed once the
    // budget runs out, and a new client still connects.
    let b = start_with(|c| {
        c.max_packet_size = 256 * 1024;
        c.max_connect_packet_size = 256 * 1024;
        c.max_partial_bytes = 1024 * 1024;
    })
    .await;
    // A 3.1.1 CONNECT announcing 250,000 bytes, 200,000 of them sent.
    let mut partial = vec![
        0x10, 0x90, 0xA1, 0x0F, 0x00, 0x04, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 0,
    ];
    partial.resize(200_000, b'x');
    let mut socks = Vec::new();
    for _ in 0..6 {
        let mut s = Raw::open(b.addr(), V3).await;
        s.send_bytes(&partial).await;
        tokio::time::sleep(std::time::Duration::from_millis(30)).await;
        socks.push(s);
    }
    socks[0].expect_closed_silently().await;
    socks[5].expect_silence(100).await;
    let c = Raw::connect(b.addr(), V5, "still-welcome").await;
    c.disconnect().await;
}

/// SUBSCRIBE to `filters` (QoS 1 each) with packet identifier `id`; the SUBACK's codes.
async fn subscribe_all(c: &mut Raw, id: u16, filters: &[&str]) -> Vec<ReasonCode> {
    let s = tern_proto::Subscribe {
        packet_id: pid(id),
        properties: Default::default(),
        filters: filters
            .iter()
            .map(|f| {
                (
                    (*f).into(),
                    tern_proto::SubscriptionOptions::qos(QoS::AtLeastOnce),
                )
            })
            .collect(),
    };
    c.send(tern_proto::Packet::Subscribe(s)).await;
    match c.recv().await {
        tern_proto::Packet::SubAck(a) => {
            assert_eq!(a.packet_id, pid(id));
            a.reason_codes
        }
        p => panic!("expected SUBACK, got {p:?}"),
    }
}

async fn unsubscribe(c: &mut Raw, filter: &str) {
    c.send(tern_proto::Packet::Unsubscribe(tern_proto::Unsubscribe {
        packet_id: pid(9),
        properties: Default::default(),
        filters: vec![filter.into()],
    }))
    .await;
    assert!(matches!(c.recv().await, tern_proto::Packet::UnsubAck(_)));
}

#[tokio::test]
async fn wildcard_filters_beyond_their_limit_get_quota_exceeded_one_by_one() {
    let b = start_with(|c| c.max_wildcard_subscriptions_per_client = 3).await;
    let mut publ = Raw::connect(b.addr(), V3, "wild-pub").await;
    let ok = ReasonCode::GrantedQoS1;
    for v in [V5, V3] {
        // 5.0: 0x97 Quota exceeded; 3.1.1 knows only 0x80 Failure.
        let quota = if v.is_v5() {
            ReasonCode::QuotaExceeded
        } else {
            ReasonCode::UnspecifiedError
        };
        let mut c = Raw::connect(b.addr(), v, "wild").await;
        // v5 [MQTT-3.8.4-6], v5 [MQTT-3.8.4-7], v5 [MQTT-3.9.3-1] / v3.1.1 [MQTT-3.8.4-5],
        // v3.1.1 [MQTT-3.9.3-1], v3.1.1 [MQTT-3.9.3-2]: one code per filter, in order, each
        // the granted QoS or a failure. Three wildcard filters fit, a shared one included;
        // exact filters do not count.
        let codes = subscribe_all(
            &mut c,
            1,
            &["w/+", "x/#", "exact/1", "$share/g/y/+", "z/+/z", "exact/2", "#"],
        )
        .await;
        assert_eq!(codes, [ok, ok, ok, ok, quota, ok, quota], "{v}");
        // The same filter again replaces its subscription: not a new one.
        assert_eq!(subscribe_all(&mut c, 2, &["w/+"]).await, [ok], "{v}");
        // A refused filter was not subscribed.
        publ.publish("z/a/z", "refused", QoS::AtMostOnce, false).await;
        publ.publish("exact/2", "granted", QoS::AtMostOnce, false).await;
        assert_eq!(&c.recv_publish().await.payload[..], b"granted", "{v}");
        // Unsubscribing a wildcard filter makes room for another.
        unsubscribe(&mut c, "x/#").await;
        assert_eq!(
            subscribe_all(&mut c, 3, &["z/+/z", "#"]).await,
            [ok, quota],
            "{v}"
        );
        // The next round's session (Clean Start, the same client identifier) starts with none.
        drop(c);
    }
}

#[tokio::test]
async fn filters_beyond_max_subscriptions_per_client_get_quota_exceeded() {
    let b = start_with(|c| c.max_subscriptions_per_client = 2).await;
    let mut c = Raw::connect(b.addr(), V5, "many").await;
    let ok = ReasonCode::GrantedQoS1;
    // v5 [MQTT-3.8.4-7]: a failure for that filter alone (0x97 Quota exceeded).
    let codes = subscribe_all(&mut c, 1, &["a", "b/+", "c", "a"]).await;
    assert_eq!(codes, [ok, ok, ReasonCode::QuotaExceeded, ok]);
}

/// With the smallest queue limits, the retained messages a SUBSCRIBE matched still enter
/// the queue, one at a time (before, half of `max_queued_messages = 1`, or of
/// `max_queued_bytes = 1`, was 0: they never did, and the connection spun at 100% CPU).
#[tokio::test]
async fn retained_messages_flow_with_the_smallest_queue_limits() {
    for bytes in [false, true] {
        let b = start_with(|c| match bytes {
            true => c.max_queued_bytes = 1,
            false => c.max_queued_messages = 1,
        })
        .await;
        let mut p = Raw::connect(b.addr(), V5, "p").await;
        for i in 0..3 {
            p.publish(&format!("r/{i}"), "x", QoS::AtLeastOnce, true).await;
        }
        let mut s = Raw::connect(b.addr(), V5, "s").await;
        s.subscribe("r/#", QoS::AtLeastOnce).await;
        let mut got = Vec::new();
        for _ in 0..3 {
            let m = s.recv_publish().await;
            got.push(m.topic.to_string());
            s.ack(&m).await;
        }
        got.sort();
        assert_eq!(got, ["r/0", "r/1", "r/2"], "max_queued_bytes = 1: {bytes}");
        s.disconnect().await;
    }
}
