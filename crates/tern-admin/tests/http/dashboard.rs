//! The dashboard in headless Chromium (Debian package `chromium`, driven by playwright-core
//! from interop/browser/node_modules, which `scripts/test` installs with `npm ci`): it loads,
//! its chart of messages in moves while clients publish, it lists a connected client, its
//! topic tree shows a retained message (JSON pretty-printed) and a topic seen live, a trace
//! shows a client's PUBLISH, and its Disconnect button disconnects the client.
//!
//! `TERN_DASHBOARD_SCREENSHOT=docs/dashboard.png` also saves a picture of the overview.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use tern_client::{Event, QoS};

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_clients_charts_and_traces_and_disconnects_a_client() {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let modules = manifest.join("../../interop/browser/node_modules/playwright-core");
    assert!(
        modules.exists() && Path::new("/usr/bin/chromium").exists(),
        "/usr/bin/chromium and interop/browser/node_modules are needed: scripts/test installs them"
    );
    let t = start().await;
    let (dash, mut dash_events) = client(&t, "dash-client").await;
    dash.subscribe("dash/#", QoS::AtMostOnce).await.unwrap();
    dash.publish_with(
        "dash/retained/temp",
        "{\"t\":21}",
        tern_client::PublishOptions::new()
            .qos(QoS::AtLeastOnce)
            .retain(true),
    )
    .await
    .unwrap();
    let (tracer, _te) = client(&t, "dash-tracer").await;
    let load = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        for i in 0u64.. {
            tick.tick().await;
            let _ = dash.publish("dash/load", i.to_string(), QoS::AtMostOnce).await;
            let _ = tracer
                .publish("dash/traced", format!("{{\"n\": {i}}}"), QoS::AtLeastOnce)
                .await;
        }
    });

    let mut cmd = Command::new("node");
    cmd.arg(manifest.join("tests/dashboard.mjs"))
        .arg(format!("http://{}", t.http))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Ok(path) = std::env::var("TERN_DASHBOARD_SCREENSHOT") {
        cmd.arg(path);
    }
    let out = tokio::task::spawn_blocking(move || cmd.output().expect("node runs"))
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.lines().any(|l| l == "ok"),
        "dashboard test failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for step in [
        "loaded",
        "chart changed",
        "client shown",
        "topics shown",
        "trace shows PUBLISH",
        "kicked",
    ] {
        assert!(stdout.lines().any(|l| l == step), "{step} missing:\n{stdout}");
    }
    // The button did disconnect the client (5.0: DISCONNECT 0x98 Administrative action).
    let reason = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match dash_events.recv().await {
                Some(Event::Disconnected { reason }) => break reason.to_string(),
                Some(_) => {}
                None => break "event stream ended".to_string(),
            }
        }
    })
    .await
    .expect("the client is disconnected");
    assert!(
        reason.contains("0x98") || reason.to_lowercase().contains("administrative"),
        "{reason}"
    );
    load.abort();
}
