//! Subscription flood: clients sending SUBSCRIBEs with hundreds of new filters each. Beyond
//! `max_subscriptions_per_client` every new filter is refused in the SUBACK (5.0: 0x97 Quota
//! exceeded, 3.1.1: 0x80), so the subscription table stays bounded.

use tern_proto::{Packet, QoS, ReasonCode, Subscribe, SubscriptionOptions};

use crate::support::*;

const ATTACKERS: usize = 20;
const PACKETS: usize = 10;
const FILTERS: usize = 50;
const LIMIT: usize = 50;

/// v3.1.1 [MQTT-3.8.4-5], v5 [MQTT-3.8.4-6]: one code per filter, in order; those beyond the
/// per-client limit are failures.
#[tokio::test]
async fn a_subscription_flood_is_held_at_the_per_client_limit() {
    let b = Broker::start(|c| c.max_subscriptions_per_client = LIMIT).await;
    let canary = Canary::start(b.addr()).await;
    let sampler = b.sampler();
    let mut attackers = Vec::new();
    for i in 0..ATTACKERS {
        let v = version(i);
        attackers.push(Raw::connect(b.addr(), v, &format!("subflood-{i}")).await);
    }
    let mut refused = 0;
    for k in 0..PACKETS {
        for (i, a) in attackers.iter_mut().enumerate() {
            let filters = (0..FILTERS)
                .map(|f| {
                    let filter = format!("flood/{i}/{k}/{f}/+/#");
                    (filter.into(), SubscriptionOptions::qos(QoS::AtLeastOnce))
                })
                .collect();
            a.send(Packet::Subscribe(Subscribe {
                packet_id: pid(k as u16 + 1),
                properties: Default::default(),
                filters,
            }))
            .await;
        }
        for (i, a) in attackers.iter_mut().enumerate() {
            let ack = match a.recv().await {
                Packet::SubAck(ack) => ack,
                p => panic!("attacker {i}: expected SUBACK, got {p:?}"),
            };
            assert_eq!(ack.reason_codes.len(), FILTERS, "one code per filter");
            let failure = if i.is_multiple_of(2) {
                ReasonCode::QuotaExceeded
            } else {
                ReasonCode::UnspecifiedError
            };
            for (f, rc) in ack.reason_codes.iter().enumerate() {
                let n = k * FILTERS + f;
                if n < LIMIT {
                    assert_eq!(*rc, ReasonCode::GrantedQoS1, "attacker {i} filter {n}");
                } else {
                    assert_eq!(*rc, failure, "attacker {i} filter {n}");
                    refused += 1;
                }
            }
        }
        canary.progress().await;
    }
    assert_eq!(refused, ATTACKERS * (PACKETS * FILTERS - LIMIT));
    for i in 0..ATTACKERS {
        let s = b.handle.session(&format!("subflood-{i}")).unwrap();
        assert_eq!(s.subscriptions.len(), LIMIT, "attacker {i}");
    }
    let peak = sampler.finish().await;
    // The canary's one subscription, and the attackers' at the limit.
    assert!(peak.subscriptions <= 1 + ATTACKERS * LIMIT, "{peak:?}");
    for a in attackers {
        a.disconnect().await;
    }
    b.until("the attackers' subscriptions end with their sessions", |s| {
        s.subscriptions == 1 && s.sessions == CANARY_CONNECTIONS
    })
    .await;
    canary.finish().await;
}
