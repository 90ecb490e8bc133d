//! Each bridge's state under `$SYS/broker/bridge/NAME/`, and a remote that refuses the
//! bridge: logged with the reason code, retried with backoff, never in a tight loop.

use std::collections::HashMap;
use std::time::Duration;

use tern_bridge::Bridges;
use tern_broker::{BridgeDirection, BridgeTopic, BrokerBuilder};
use tern_client::{ProtocolVersion, QoS};

use crate::support::*;

#[tokio::test]
async fn bridge_state_is_published_under_sys() {
    let b = tern().await;
    let a = BrokerBuilder::new()
        .listen("127.0.0.1:0".parse().unwrap())
        .configure(|c| c.sys_interval_secs = 1)
        .bind()
        .await
        .unwrap()
        .spawn();
    let bridges = start_bridge(
        &a,
        bridge("st", &url_of(&b), "5").topic(BridgeTopic::new("s/#", BridgeDirection::Out)),
    )
    .await;
    let v5 = ProtocolVersion::V5;
    let (p, _) = client(&url_of(&a), "st-pub", v5).await;
    for i in 0..3 {
        p.publish("s/x", i.to_string(), QoS::AtLeastOnce).await.unwrap();
    }
    wait_for("3 forwarded", || state(&bridges).forwarded == 3).await;
    let (s, mut events) = client(&url_of(&a), "st-sys", v5).await;
    s.subscribe("$SYS/broker/bridge/st/#", QoS::AtMostOnce)
        .await
        .unwrap();
    let mut seen: HashMap<String, String> = HashMap::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while seen.get("messages/forwarded").map(String::as_str) != Some("3") {
        assert!(tokio::time::Instant::now() < deadline, "{seen:?}");
        let m = next(&mut events).await;
        let key = m
            .topic
            .strip_prefix("$SYS/broker/bridge/st/")
            .unwrap()
            .to_string();
        seen.insert(key, m.payload_str().unwrap().to_string());
    }
    assert_eq!(
        seen.get("state").map(String::as_str),
        Some("connected"),
        "{seen:?}"
    );
    assert_eq!(
        seen.get("outbox/messages").map(String::as_str),
        Some("0"),
        "{seen:?}"
    );
    bridges.stop().await;
}

#[tokio::test]
async fn a_refusing_remote_is_retried_with_backoff_and_a_password_file_is_read() {
    use tern_broker::security::password::{PasswordFile, MIN_ITERATIONS};
    let dir = std::env::temp_dir().join(format!("tern-bridge-refused-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut passwords = PasswordFile::default();
    passwords.add("edge", b"s3cret", MIN_ITERATIONS).unwrap();
    let password_file = dir.join("passwd");
    std::fs::write(&password_file, passwords.to_text()).unwrap();
    let b = BrokerBuilder::new()
        .listen("127.0.0.1:0".parse().unwrap())
        .configure(|c| {
            c.sys_interval_secs = 0;
            c.allow_anonymous = false;
            c.password_file = Some(password_file.clone());
        })
        .bind()
        .await
        .unwrap()
        .spawn();
    let a = tern().await;
    let config = bridge("refused", &url_of(&b), "5")
        .topic(BridgeTopic::new("r/#", BridgeDirection::Out))
        .with(|c| {
            c.username = Some("edge".into());
            c.password = Some("wrong".into());
            c.reconnect_min_ms = 100;
            c.reconnect_max_ms = 400;
        });
    let bridges = Bridges::start(a.internal(), &[config]).await.unwrap();
    wait_for("a refusal", || state(&bridges).last_error.is_some()).await;
    let before = b.stats().connections_total;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let attempts = b.stats().connections_total - before;
    let s = state(&bridges);
    assert!(!s.connected);
    let error = s.last_error.clone().unwrap();
    assert!(error.contains("refused the connection"), "{error}");
    // Waits of 50-100, 100-200 then 200-400 ms: at most about ten attempts in two seconds.
    assert!((2..=12).contains(&attempts), "{attempts} attempts in 2 s");
    // The backoff is in the state: attempts so far and the wait before the next one.
    assert!(s.reconnect_attempts >= 2, "{s:?}");
    assert!(
        (50..=400).contains(&s.backoff_ms),
        "within reconnect_min_ms/2 and reconnect_max_ms: {s:?}"
    );
    bridges.stop().await;

    // The right password, from a file.
    let secret = dir.join("bridge-password");
    std::fs::write(&secret, "s3cret\n").unwrap();
    let config = bridge("accepted", &url_of(&b), "5")
        .topic(BridgeTopic::new("r/#", BridgeDirection::Out))
        .with(|c| {
            c.username = Some("edge".into());
            c.password_file = Some(secret.clone());
        });
    let bridges = start_bridge(&a, config).await;
    let s = state(&bridges);
    assert_eq!(s.last_error, None);
    assert_eq!((s.reconnect_attempts, s.backoff_ms), (0, 0), "{s:?}");
    bridges.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}
