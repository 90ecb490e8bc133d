//! SCRAM-SHA-256 enhanced authentication (v5 section 4.12) between the client
//! library and the broker, against the password file.

use std::time::Duration;

use tern_client::{Client, ClientError, Options, QoS, ReasonCode, Reconnect};

use crate::support::*;

fn options(addr: std::net::SocketAddr, id: &str) -> Options {
    Options::new(format!("mqtt://{addr}"))
        .client_id(id)
        .connect_timeout(Duration::from_secs(3))
        .reconnect(Reconnect::disabled())
}

async fn refused(o: Options) -> ReasonCode {
    match Client::connect(o).await {
        Err(ClientError::Refused { reason_code, .. }) => reason_code,
        other => panic!("expected a refusal, got {:?}", other.map(|_| ())),
    }
}

#[tokio::test]
async fn scram_authenticates_against_the_password_file() {
    let dir = TempDir::new("scram");
    let pw = dir.file("passwd", &passwords(&[("alice", "wonderland")]));
    let acl = dir.file("acl", "pattern readwrite users/%u/#\n");
    let b = start(|b| {
        b.configure(|c| {
            c.password_file = Some(pw);
            c.acl_file = Some(acl);
            c.allow_anonymous = false;
        })
    })
    .await;
    let addr = b.addr();
    let (c, _events) = Client::connect(options(addr, "scram-ok").scram_sha256("alice", "wonderland"))
        .await
        .unwrap();
    // The SCRAM user is the user name the ACL sees.
    let ok = c.publish("users/alice/x", "hi", QoS::AtLeastOnce).await.unwrap();
    assert!(!ok.reason_code.is_error(), "{ok:?}");
    let denied = c.publish("users/bob/x", "hi", QoS::AtLeastOnce).await;
    assert!(denied.is_err(), "{denied:?}");
    c.disconnect().await.unwrap();

    let rc = refused(options(addr, "scram-bad").scram_sha256("alice", "looking-glass")).await;
    assert_eq!(rc, ReasonCode::NotAuthorized);
    let rc = refused(options(addr, "scram-who").scram_sha256("mallory", "wonderland")).await;
    assert_eq!(rc, ReasonCode::NotAuthorized);
    // A CONNECT user name must match the SCRAM one.
    let rc = refused(
        options(addr, "scram-mix")
            .username("bob")
            .scram_sha256("alice", "wonderland"),
    )
    .await;
    assert_eq!(rc, ReasonCode::NotAuthorized);
    assert_eq!(b.security().auth_failures(), 3);
}

/// Without a password file the method is not offered: v5 [MQTT-4.12.0-1], CONNACK 0x8C.
#[tokio::test]
async fn scram_needs_a_password_file() {
    let b = start(|b| b).await;
    let rc = refused(options(b.addr(), "scram-none").scram_sha256("alice", "x")).await;
    assert_eq!(rc, ReasonCode::BadAuthenticationMethod);
}
