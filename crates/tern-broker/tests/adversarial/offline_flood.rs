//! Offline queue flood: many persistent sessions subscribe to one topic and go away, then a
//! publisher floods that topic. Each session's queue stays under its own limits, and all of
//! them together under `max_queued_bytes_total`: beyond it messages for offline sessions are
//! not queued (counted in `dropped_over_budget`), while the canary, online, loses nothing.

use tern_proto::{Connect, Packet, Publish, QoS};

use crate::support::*;

const SESSIONS: usize = 100;
const BUDGET: usize = 256 * 1024;
const MESSAGES: usize = 200;
const SIZE: usize = 1024;

#[tokio::test]
async fn offline_queues_stay_under_the_broker_wide_budget() {
    let b = Broker::start(|c| {
        c.max_queued_bytes_total = BUDGET;
        c.max_queued_messages = MESSAGES;
    })
    .await;
    let canary = Canary::start(b.addr()).await;
    let sampler = b.sampler();
    for i in 0..SESSIONS {
        let v = version(i);
        let mut c = Connect::new(v, format!("away-{i}").as_str());
        c.clean_start = false;
        if v.is_v5() {
            c.properties.session_expiry_interval = Some(3600);
        }
        let (mut s, _) = Raw::connect_with(b.addr(), c).await;
        s.subscribe("flood/#", QoS::AtLeastOnce).await;
        s.disconnect().await;
    }
    let mut publ = Raw::connect(b.addr(), tern_proto::ProtocolVersion::V5, "flooder").await;
    let payload = vec![b'x'; SIZE];
    for i in 0..MESSAGES {
        let mut p = Publish::new(format!("flood/{i}").as_str(), payload.clone());
        p.qos = QoS::AtLeastOnce;
        p.packet_id = tern_proto::PacketId::new(1 + (i % 60_000) as u16);
        publ.send(Packet::Publish(p)).await;
        assert!(
            matches!(publ.recv().await, Packet::PubAck(_)),
            "message {i} acknowledged"
        );
        if i % 50 == 0 {
            canary.progress().await;
        }
    }
    let stats = b.stats();
    // Every copy was queued or refused; at most the budget (and one publisher batch) is held.
    assert!(stats.queued_bytes <= BUDGET + SIZE, "{stats:?}");
    assert!(stats.dropped_over_budget > 0, "{stats:?}");
    assert_eq!(
        stats.queued_bytes / SIZE + stats.dropped_over_budget as usize,
        SESSIONS * MESSAGES,
        "{stats:?}"
    );
    let peak = sampler.finish().await;
    assert!(peak.queued_bytes <= BUDGET + SIZE, "{peak:?}");
    canary.finish().await;
}
