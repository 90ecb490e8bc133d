//! QoS 0 packs (`tern_cluster::codec::pack`): whatever payloads, a pack decodes back to the
//! same messages in the same order; a pack cut short or padded is refused.

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use tern_broker::Message;
use tern_cluster::codec::{decode_all, headers, pack, PACK};
use tern_proto::QoS;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn every_pack_decodes_to_its_messages_in_order(
        payloads in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..300), 1..40),
        cut in any::<prop::sample::Index>(),
    ) {
        let payloads: Vec<Bytes> = payloads.into_iter().map(Bytes::from).collect();
        let mut m = Message::new("a/ b/$c", Bytes::new(), QoS::AtMostOnce, false);
        m.publisher = Some("pub".into());
        let mut h = headers(&m, "n1");
        h.insert(PACK, payloads.len().to_string().as_str());
        let packed = pack(payloads.iter(), &mut BytesMut::new());
        let subject = tern_cluster::topic::encode_topic("tern.t", &m.topic);
        let (first, rest) = decode_all("tern.t", &subject, Some(&h), packed.clone()).expect("decodes");
        let back: Vec<Message> = std::iter::once(first).chain(rest).collect();
        prop_assert_eq!(back.len(), payloads.len());
        for (b, p) in back.iter().zip(&payloads) {
            prop_assert_eq!(&b.payload, p);
            prop_assert_eq!(&*b.topic, "a/ b/$c");
            prop_assert_eq!(b.publisher.as_deref(), Some("pub"));
            prop_assert_eq!((b.qos, b.retain), (QoS::AtMostOnce, false));
        }
        // Any shorter payload is refused, never taken for fewer or emptier messages.
        let short = packed.slice(..cut.index(packed.len()));
        prop_assert!(decode_all("tern.t", &subject, Some(&h), short).is_err());
    }
}
