//! Topic-alias abuse (5.0): clients sending aliases above the broker's Topic Alias Maximum,
//! alias 0, or an alias never mapped, after remapping every alias they may use over and over
//! with long topics. The alias map of a connection never grows past the maximum, and each
//! abuser is closed with DISCONNECT and the reason.

use tern_proto::{Packet, Publish, ReasonCode};

use crate::support::*;

const ATTACKERS: usize = 200;
const ALIAS_MAXIMUM: u16 = 5;

fn with_alias(topic: &str, alias: u16) -> Packet {
    let mut p = Publish::new(topic, "x");
    p.properties.topic_alias = Some(alias);
    Packet::Publish(p)
}

/// v5 [MQTT-3.3.2-12]: aliases 1 to the maximum are accepted (and may be remapped);
/// v5 [MQTT-3.3.2-9]: a client must not send one above the broker's maximum, and
/// v5 [MQTT-3.3.2-8]: nor 0; the broker answers both with DISCONNECT 0x94 Topic Alias invalid.
#[tokio::test]
async fn topic_alias_abuse_is_closed_with_0x94_and_the_alias_map_stays_bounded() {
    let b = Broker::start(|c| c.topic_alias_maximum = ALIAS_MAXIMUM).await;
    let canary = Canary::start(b.addr()).await;
    let sampler = b.sampler();
    let long = "a".repeat(1000);
    let mut attackers = Vec::new();
    for i in 0..ATTACKERS {
        let mut a = Raw::connect(b.addr(), V5, &format!("alias-{i}")).await;
        // Remap every permitted alias to a new long topic, ten times over.
        for round in 0..10 {
            for alias in 1..=ALIAS_MAXIMUM {
                a.send(with_alias(&format!("{long}/{i}/{round}/{alias}"), alias))
                    .await;
            }
        }
        attackers.push(a);
    }
    let mut expected = Vec::new();
    for (i, a) in attackers.iter_mut().enumerate() {
        let (packet, rc) = match i % 4 {
            0 => (with_alias("t", ALIAS_MAXIMUM + 1), ReasonCode::TopicAliasInvalid),
            1 => (with_alias("t", u16::MAX), ReasonCode::TopicAliasInvalid),
            2 => (with_alias("t", 0), ReasonCode::TopicAliasInvalid),
            // An empty topic with an alias this connection never mapped.
            _ => {
                let mut fresh = Publish::new("", "x");
                fresh.properties.topic_alias = Some(ALIAS_MAXIMUM + 1);
                (Packet::Publish(fresh), ReasonCode::TopicAliasInvalid)
            }
        };
        a.send(packet).await;
        expected.push(rc);
    }
    canary.progress().await;
    for (i, a) in attackers.iter_mut().enumerate() {
        assert_eq!(a.expect_closed().await, Some(expected[i]), "attacker {i}");
    }
    b.until("every attacker's connection is gone", |s| {
        s.connections_open == CANARY_CONNECTIONS && s.sessions == CANARY_CONNECTIONS
    })
    .await;
    sampler.finish().await;
    // A mapped alias still works for a well-behaved client, and an unmapped one does not.
    let mut ok = Raw::connect(b.addr(), V5, "alias-ok").await;
    ok.send(with_alias("fine", 1)).await;
    let mut bare = Publish::new("", "x");
    bare.properties.topic_alias = Some(1);
    ok.send(Packet::Publish(bare)).await;
    ok.sync().await;
    let mut unmapped = Publish::new("", "x");
    unmapped.properties.topic_alias = Some(2);
    ok.send(Packet::Publish(unmapped)).await;
    assert_eq!(ok.expect_closed().await, Some(ReasonCode::ProtocolError));
    canary.finish().await;
}
