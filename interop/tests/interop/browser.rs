//! MQTT.js (npm) in headless Chromium (Debian package `chromium`, driven by
//! playwright-core) against Tern over WebSocket: browser → Rust client and back.
//! `.ci/run` installs Chromium and runs `npm ci` in interop/browser.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use tern_broker::{ListenerConfig, ListenerKind};
use tern_client::{Client, Event, Options, QoS, Reconnect};
use tern_interop::{have, spawn, start_tern_with};

#[tokio::test]
async fn mqtt_js_in_chromium_round_trip_over_websocket() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("browser");
    assert!(
        dir.join("node_modules/playwright-core").exists() && dir.join("node_modules/mqtt").exists(),
        "run `npm ci` in {} (.ci/run does)",
        dir.display()
    );
    assert!(
        Path::new("/usr/bin/chromium").exists() && have("node"),
        "/usr/bin/chromium and node are needed; .ci/run installs them (apt-get install chromium nodejs)"
    );
    let ws = ListenerConfig::new(ListenerKind::Ws, "127.0.0.1:0".parse().unwrap());
    let broker = start_tern_with(|b| b.listener(ws)).await.unwrap();
    let tcp = broker.addr_of(ListenerKind::Tcp).unwrap();
    let ws = broker.addr_of(ListenerKind::Ws).unwrap();
    let (rust, mut events) = Client::connect(
        Options::new(format!("mqtt://{tcp}"))
            .client_id("rust-peer")
            .connect_timeout(Duration::from_secs(3))
            .reconnect(Reconnect::disabled()),
    )
    .await
    .unwrap();
    rust.subscribe("browser/out", QoS::AtLeastOnce).await.unwrap();

    let mut cmd = Command::new("node");
    cmd.current_dir(&dir)
        .arg("roundtrip.mjs")
        .arg(format!("ws://127.0.0.1:{}/mqtt", ws.port()));
    let mut child = spawn(cmd);

    // The browser publishes once it has subscribed; the Rust client answers.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let from_browser = loop {
        match tokio::time::timeout(Duration::from_millis(200), events.recv()).await {
            Ok(Some(Event::Message(m))) => break m,
            Ok(Some(_)) => continue,
            Ok(None) => panic!("event stream ended"),
            Err(_) => {}
        }
        let exited = child.try_wait().ok().flatten().is_some();
        if exited || tokio::time::Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "no message from the browser:\n{}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    };
    assert_eq!(from_browser.payload_str(), Some("hello from the browser"));
    rust.publish("browser/in", "hello from rust", QoS::AtLeastOnce)
        .await
        .unwrap();

    let out = tokio::task::spawn_blocking(move || {
        let started = std::time::Instant::now();
        loop {
            match child.try_wait() {
                Ok(Some(_)) => break,
                _ if started.elapsed() > Duration::from_secs(30) => {
                    let _ = child.kill();
                    break;
                }
                _ => std::thread::sleep(Duration::from_millis(50)),
            }
        }
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("ok browser/in hello from rust"),
        "browser side failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    rust.disconnect().await.unwrap();
}
