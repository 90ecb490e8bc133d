//! Codec benchmarks: decode and encode of a QoS 1 PUBLISH with a 64-byte
//! payload for MQTT 3.1.1 and 5.0, and of a 5.0 CONNECT with properties.
//!
//! Run with `cargo bench -p tern-proto --bench codec`. Decoding is measured on
//! a fresh buffer holding one packet (the copy into it is set-up, not timed);
//! encoding appends to a cleared buffer whose capacity is kept, as a
//! connection's write buffer would be.

use std::hint::black_box;

use bytes::BytesMut;
use criterion::{criterion_main, BatchSize, Criterion};
use tern_proto::codec::{ConnectProperties, PublishProperties, MAX_PACKET_SIZE};
use tern_proto::{Bytes, Connect, Decoder, Packet, PacketId, ProtocolVersion, Publish, QoS};

fn publish(version: ProtocolVersion) -> Packet {
    let mut p = Publish::new(
        "sensors/building-7/floor-3/room-12/temperature",
        Bytes::from(vec![0x42; 64]),
    );
    p.qos = QoS::AtLeastOnce;
    p.packet_id = PacketId::new(4711);
    if version.is_v5() {
        p.properties = PublishProperties {
            message_expiry_interval: Some(3600),
            content_type: Some("application/octet-stream".into()),
            ..PublishProperties::default()
        };
    }
    Packet::Publish(p)
}

fn connect() -> Packet {
    let mut c = Connect::new(ProtocolVersion::V5, "bench-client-0001");
    c.username = Some("user".into());
    c.password = Some(Bytes::from_static(b"secret"));
    c.properties = ConnectProperties {
        session_expiry_interval: Some(3600),
        receive_maximum: Some(100),
        maximum_packet_size: Some(1 << 20),
        topic_alias_maximum: Some(16),
        request_problem_information: Some(1),
        user_properties: vec![
            ("region".into(), "eu-west".into()),
            ("app".into(), "tern-bench".into()),
        ],
        ..ConnectProperties::default()
    };
    Packet::Connect(Box::new(c))
}

fn encoded(version: ProtocolVersion, packet: &Packet) -> Vec<u8> {
    let mut buf = BytesMut::new();
    if let Err(e) = packet.encode(version, &mut buf) {
        panic!("benchmark packet does not encode: {e}");
    }
    buf.to_vec()
}

fn bench_one(c: &mut Criterion, name: &str, version: ProtocolVersion, packet: &Packet) {
    let bytes = encoded(version, packet);
    let decoder = Decoder::new(version, MAX_PACKET_SIZE);
    c.bench_function(&format!("decode/{name}"), |b| {
        b.iter_batched(
            || BytesMut::from(&bytes[..]),
            |mut buf| black_box(decoder.decode(&mut buf)),
            BatchSize::SmallInput,
        )
    });
    let mut out = BytesMut::with_capacity(bytes.len());
    c.bench_function(&format!("encode/{name}"), |b| {
        b.iter(|| {
            out.clear();
            let r = black_box(packet).encode(version, &mut out);
            black_box((&r, &out));
        })
    });
}

fn codec(c: &mut Criterion) {
    bench_one(
        c,
        "publish_qos1_64B_v3.1.1",
        ProtocolVersion::V3_1_1,
        &publish(ProtocolVersion::V3_1_1),
    );
    bench_one(
        c,
        "publish_qos1_64B_v5",
        ProtocolVersion::V5,
        &publish(ProtocolVersion::V5),
    );
    bench_one(c, "connect_with_properties_v5", ProtocolVersion::V5, &connect());
}

/// The group lives in a private module: the `pub fn` that `criterion_group!`
/// generates then needs no documentation of its own.
mod group {
    use criterion::criterion_group;

    criterion_group!(benches, super::codec);
}

criterion_main!(group::benches);
