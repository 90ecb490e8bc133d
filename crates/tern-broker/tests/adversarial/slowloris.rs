//! Slowloris: sockets that open and send nothing, or dribble the first bytes of a CONNECT and
//! stop, or keep dribbling it a byte at a time. The CONNECT deadline closes them all (it runs
//! from the accept, not from the last byte), and `max_connections` bounds how many are held at
//! once; a legitimate client still connects afterwards.

use std::time::Duration;

use tokio::io::AsyncWriteExt;

use crate::support::*;

const ATTACKERS: usize = 200;
const DRIBBLERS: usize = 10;
const MAX_CONNECTIONS: usize = 64;

#[tokio::test]
async fn slowloris_sockets_are_closed_at_the_connect_deadline_and_bounded_by_max_connections() {
    let b = Broker::start(|c| {
        c.connect_timeout_secs = 1;
        c.max_connections = MAX_CONNECTIONS;
    })
    .await;
    let canary = Canary::start(b.addr()).await;
    let sampler = b.sampler();
    let connect = encode(
        &tern_proto::Packet::Connect(Box::new(tern_proto::Connect::new(V3, "dribbler"))),
        V3,
    );
    // A few sockets dribble a valid CONNECT one byte every 150 ms: it would take them over
    // two seconds to finish, and the deadline is one second after the accept.
    let mut dribblers = Vec::new();
    for s in sockets(b.addr(), DRIBBLERS).await {
        let bytes = connect.clone();
        dribblers.push(tokio::spawn(async move {
            let mut s = s;
            for byte in bytes {
                if s.write_all(&[byte]).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
            closed(&mut s).await
        }));
    }
    let mut socks = sockets(b.addr(), ATTACKERS).await;
    for (i, s) in socks.iter_mut().enumerate() {
        if !i.is_multiple_of(2) {
            // The fixed header and the start of a CONNECT, then nothing.
            let _ = s.write_all(&connect[..4]).await;
        }
    }
    canary.progress().await;
    // The connect deadline runs on the broker's clock: let it pass.
    b.pass(Duration::from_secs(2)).await;
    for s in socks.iter_mut() {
        assert!(closed(s).await.is_empty(), "an idle socket got an answer");
    }
    for d in dribblers {
        assert!(d.await.unwrap().is_empty(), "a dribbled CONNECT was answered");
    }
    let end = b
        .until("every attacker's connection is gone", |s| {
            s.connections_open == CANARY_CONNECTIONS
        })
        .await;
    let peak = sampler.finish().await;
    assert!(peak.connections_open <= MAX_CONNECTIONS, "{peak:?}");
    assert_eq!(end.sessions, CANARY_CONNECTIONS);
    // Those beyond max_connections were refused at accept and not counted.
    assert!(
        end.connections_total as usize <= MAX_CONNECTIONS + ATTACKERS,
        "{end:?}"
    );
    // The slots are free again.
    let late = Raw::connect(b.addr(), V5, "after-the-attack").await;
    late.disconnect().await;
    canary.finish().await;
}
