//! The decoder does not copy: a PUBLISH payload, its topic and its binary
//! properties point into the allocation of the read buffer they came from.

use bytes::BytesMut;
use tern_proto::codec::{PublishProperties, MAX_PACKET_SIZE};
use tern_proto::{Bytes, Decoded, Decoder, Packet, PacketId, Publish, QoS};

use crate::support::{encode, V3_1_1, V5};

fn within(region: &std::ops::Range<usize>, bytes: &[u8]) -> bool {
    let start = bytes.as_ptr() as usize;
    region.contains(&start) && start + bytes.len() <= region.end
}

fn publish(payload: &[u8]) -> Publish {
    let mut p = Publish::new("sensors/room1/temperature", Bytes::copy_from_slice(payload));
    p.qos = QoS::AtLeastOnce;
    p.packet_id = PacketId::new(1);
    p
}

#[test]
fn publish_payload_and_topic_are_slices_of_the_read_buffer() {
    for v in [V3_1_1, V5] {
        let first = Packet::Publish(publish(&[0xA5; 64]));
        let mut second = publish(b"second payload");
        if v.is_v5() {
            second.properties = PublishProperties {
                correlation_data: Some(Bytes::from_static(b"corr")),
                content_type: Some("text/plain".into()),
                ..PublishProperties::default()
            };
        }
        let second = Packet::Publish(second);

        let mut buf = BytesMut::from(&[encode(v, &first), encode(v, &second)].concat()[..]);
        let region = {
            let start = buf.as_ptr() as usize;
            start..start + buf.len()
        };
        let decoder = Decoder::new(v, MAX_PACKET_SIZE);
        for expected in [&first, &second] {
            let Ok(Decoded::Packet(Packet::Publish(p))) = decoder.decode(&mut buf) else {
                panic!("no PUBLISH decoded for {v}");
            };
            assert_eq!(&Packet::Publish(p.clone()), expected);
            assert!(within(&region, &p.payload), "payload copied for {v}");
            assert!(within(&region, p.topic.as_bytes()), "topic copied for {v}");
            if let Some(c) = &p.properties.correlation_data {
                assert!(within(&region, c), "correlation data copied");
            }
            if let Some(c) = &p.properties.content_type {
                assert!(within(&region, c.as_bytes()), "content type copied");
            }
        }
        assert!(buf.is_empty());
    }
}
