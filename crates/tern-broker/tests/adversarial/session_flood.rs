//! Session flood: new client identifiers asking for sessions that outlive their connection,
//! far beyond `max_sessions`. Those beyond it are refused (5.0 CONNACK 0x97 Quota exceeded,
//! 3.1.1 0x03 Server unavailable) and closed; existing sessions still resume; once sessions
//! expire (broker time), new clients are accepted again.

use std::time::Duration;

use tern_proto::ReasonCode;

use crate::support::*;

const ATTACKERS: usize = 200;
const MAX_SESSIONS: usize = 50;
const EXPIRY: u32 = 3600;

fn persistent(i: usize) -> tern_proto::Connect {
    let v = version(i);
    let mut c = tern_proto::Connect::new(v, format!("session-{i}").as_str());
    c.clean_start = false;
    c.keep_alive = 0;
    if v.is_v5() {
        c.properties.session_expiry_interval = Some(EXPIRY);
    }
    c
}

/// v5 [MQTT-3.2.2-7], v3.1.1 [MQTT-3.2.2-5]: after a refusing CONNACK the connection is
/// closed; v3.1.1 [MQTT-3.2.2-4]: with Session Present 0.
#[tokio::test]
async fn a_session_flood_is_refused_beyond_max_sessions_and_existing_sessions_resume() {
    let b = Broker::start(|c| {
        c.max_sessions = MAX_SESSIONS;
        c.v3_session_expiry_secs = EXPIRY;
    })
    .await;
    let canary = Canary::start(b.addr()).await;
    let sampler = b.sampler();
    let room = MAX_SESSIONS - CANARY_CONNECTIONS;
    for i in 0..ATTACKERS {
        let (mut a, ack) = Raw::connect_with(b.addr(), persistent(i)).await;
        if i < room {
            assert_eq!(ack.reason_code, ReasonCode::Success, "attacker {i}");
            a.disconnect().await;
        } else {
            let refused = if i.is_multiple_of(2) {
                ReasonCode::QuotaExceeded
            } else {
                ReasonCode::ServerUnavailable
            };
            assert_eq!(
                (ack.reason_code, ack.session_present),
                (refused, false),
                "attacker {i}"
            );
            assert_eq!(a.expect_closed().await, None, "attacker {i}");
        }
        if i % 50 == 0 {
            canary.progress().await;
        }
    }
    assert_eq!(b.stats().sessions, MAX_SESSIONS);
    // An existing session is not a new one: it resumes.
    let (again, ack) = Raw::connect_with(b.addr(), persistent(0)).await;
    assert_eq!(
        (ack.reason_code, ack.session_present),
        (ReasonCode::Success, true)
    );
    again.disconnect().await;
    // The sessions expire (broker time); then there is room again.
    b.pass(Duration::from_secs(u64::from(EXPIRY) + 1)).await;
    b.until("the flood's sessions expired", |s| {
        s.sessions == CANARY_CONNECTIONS
    })
    .await;
    let (late, ack) = Raw::connect_with(b.addr(), persistent(ATTACKERS)).await;
    assert_eq!(ack.reason_code, ReasonCode::Success);
    late.disconnect().await;
    let peak = sampler.finish().await;
    assert!(peak.sessions <= MAX_SESSIONS, "{peak:?}");
    canary.finish().await;
}
