//! paho-mqtt (PyPI) against Tern: scripted scenarios in interop/scripts/paho_suite.py.

use std::process::Command;
use std::time::Duration;

use tern_interop::{run, start_tern};

fn paho_available() -> bool {
    Command::new("python3")
        .args(["-c", "import paho.mqtt"])
        .status()
        .is_ok_and(|s| s.success())
}

async fn paho_scenario(name: &str) {
    assert!(
        paho_available(),
        "paho-mqtt is not installed; .ci/run installs it (pip install paho-mqtt)"
    );
    let broker = start_tern().await.unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/paho_suite.py");
    let mut cmd = Command::new("python3");
    cmd.args([script, "127.0.0.1", &broker.addr().port().to_string(), name]);
    let out = run(cmd, Duration::from_secs(30)).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "paho scenario {name} failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains(&format!("ok {name}")), "{stdout}\n{stderr}");
}

#[tokio::test]
async fn paho_qos_round_trips_v311() {
    paho_scenario("qos_v311").await;
}

#[tokio::test]
async fn paho_qos_round_trips_v5_with_properties() {
    paho_scenario("qos_v5").await;
}

#[tokio::test]
async fn paho_persistent_session_v311() {
    paho_scenario("persistent_v311").await;
}

#[tokio::test]
async fn paho_session_expiry_and_will_delay_v5() {
    paho_scenario("will_v5").await;
}

#[tokio::test]
async fn paho_shared_subscription_v5() {
    paho_scenario("shared_v5").await;
}

#[tokio::test]
async fn paho_retained_and_no_local_v5() {
    paho_scenario("retain_nolocal_v5").await;
}

/// paho-mqtt over TLS, WebSocket and WebSocket over TLS, both protocol versions.
#[tokio::test]
async fn paho_over_tls_ws_and_wss() {
    use tern_broker::{ListenerConfig, ListenerKind};
    assert!(
        paho_available(),
        "paho-mqtt is not installed; .ci/run installs it (pip install paho-mqtt)"
    );
    let dir = std::env::temp_dir().join(format!("tern-interop-paho-tls-{}", std::process::id()));
    // A CA file and a server certificate for localhost / 127.0.0.1.
    let pki = tern_testkit::pki::Pki::new(&dir, &["localhost", "127.0.0.1"], "paho");
    let (ca, cert, key) = (pki.ca.clone(), pki.server_cert.clone(), pki.server_key.clone());
    let any = "127.0.0.1:0".parse().unwrap();
    let tls = |kind| {
        let mut l = ListenerConfig::new(kind, any);
        l.cert = Some(cert.clone());
        l.key = Some(key.clone());
        l
    };
    let broker = tern_interop::start_tern_with(|b| {
        b.listener(tls(ListenerKind::Tls))
            .listener(ListenerConfig::new(ListenerKind::Ws, any))
            .listener(tls(ListenerKind::Wss))
    })
    .await
    .unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/paho_suite.py");
    for (transport, kind) in [
        ("tls", ListenerKind::Tls),
        ("ws", ListenerKind::Ws),
        ("wss", ListenerKind::Wss),
    ] {
        let port = broker.addr_of(kind).unwrap().port().to_string();
        for scenario in ["qos_v311", "qos_v5"] {
            let mut cmd = Command::new("python3");
            cmd.args([script, "127.0.0.1", &port, scenario])
                .env("TERN_TRANSPORT", transport)
                .env("TERN_CAFILE", &ca);
            let out = run(cmd, Duration::from_secs(30)).await;
            let stdout = String::from_utf8_lossy(&out.stdout);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(
                out.status.success() && stdout.contains(&format!("ok {scenario}")),
                "paho {scenario} over {transport} failed:\n{stdout}\n{stderr}"
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
