//! `/metrics` scraped by a real Prometheus server (Debian package `prometheus`, which
//! `scripts/test` installs), started here on a free loopback port with a scrape config
//! pointing at the broker's HTTP endpoint; its own HTTP API must then answer
//! `tern_connections` and a `rate()` of received messages with the right values.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use tern_client::QoS;

use crate::support::*;

const PROMETHEUS: &str = "/usr/bin/prometheus";

/// The value of an instant query's only sample, if it has one.
async fn query(prom: std::net::SocketAddr, q: &str) -> Option<f64> {
    let mut path = String::from("/api/v1/query?query=");
    for b in q.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            path.push(b as char);
        } else {
            path.push_str(&format!("%{b:02X}"));
        }
    }
    let a = request(prom, "GET", &path, &[], "").await;
    if a.status != 200 {
        return None;
    }
    let v = a.json();
    let result = v["data"]["result"].as_array()?;
    let sample = result.first()?;
    sample["value"][1].as_str()?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_connections_and_message_rate() {
    assert!(
        Path::new(PROMETHEUS).exists(),
        "{PROMETHEUS} is needed: scripts/test installs it (apt-get install prometheus)"
    );
    let t = start().await;
    let dir = TempDir::new("prometheus");
    let port = free_port();
    let config = dir.0.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: tern\n    scrape_interval: 1s\n    static_configs:\n      - targets: ['{}']\n",
            t.http
        ),
    )
    .unwrap();
    let _prom = Child(
        Command::new(PROMETHEUS)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.0.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus starts"),
    );
    let prom: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();

    // Three clients; one publishes 100 messages a second.
    let (a, _ea) = client(&t, "prom-a").await;
    let (_b, _eb) = client(&t, "prom-b").await;
    let (_c, _ec) = client(&t, "prom-c").await;
    let publisher = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        for i in 0u32.. {
            tick.tick().await;
            if a.publish("load/x", i.to_string(), QoS::AtMostOnce).await.is_err() {
                break;
            }
        }
    });

    let connections = eventually(60, "Prometheus to see 3 connections", || async {
        query(prom, "sum(tern_connections)").await.filter(|v| *v == 3.0)
    })
    .await;
    assert_eq!(connections, 3.0);
    let by_listener = query(
        prom,
        &format!(
            "tern_connections{{listener=\"tcp {}\",protocol=\"5.0\"}}",
            t.mqtt()
        ),
    )
    .await
    .expect("labelled by listener and protocol");
    assert_eq!(by_listener, 3.0);

    // 100 messages a second: the rate over 5 s of scrapes, once it covers publishing only.
    let rate = eventually(60, "a rate of about 100 messages/s", || async {
        query(prom, "rate(tern_messages_received_total[5s])")
            .await
            .filter(|r| (70.0..=130.0).contains(r))
    })
    .await;
    assert!((70.0..=130.0).contains(&rate), "{rate}");
    publisher.abort();
}

#[tokio::test]
async fn metrics_text_names_and_values() {
    let t = start().await;
    let (a, _ea) = client(&t, "m-a").await;
    a.subscribe("s/#", QoS::AtLeastOnce).await.unwrap();
    a.publish("s/1", "hello", QoS::AtLeastOnce).await.unwrap();
    a.publish("nobody/here", "x", QoS::AtLeastOnce).await.unwrap();
    a.publish_with(
        "r/1",
        "kept",
        tern_client::PublishOptions::new()
            .qos(QoS::AtLeastOnce)
            .retain(true),
    )
    .await
    .unwrap();
    let m = get(t.http, "/metrics").await;
    assert_eq!(m.status, 200);
    assert!(
        m.headers.contains("application/openmetrics-text"),
        "{}",
        m.headers
    );
    let line = |name: &str| -> f64 {
        m.body
            .lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in\n{}", m.body))
    };
    assert_eq!(
        line(&format!(
            "tern_connections{{listener=\"tcp {}\",protocol=\"5.0\"}}",
            t.mqtt()
        )),
        1.0
    );
    assert_eq!(line("tern_messages_received_total"), 3.0);
    assert_eq!(
        line("tern_messages_dropped_total{reason=\"no_subscribers\"}"),
        2.0
    );
    // By QoS, on the connection path: three QoS 1 messages in (5 + 1 + 4 payload bytes), the
    // one to s/1 delivered back to the subscriber at QoS 1; one 5.0 CONNECT.
    assert_eq!(line("tern_client_messages_received_total{qos=\"1\"}"), 3.0);
    assert_eq!(line("tern_client_messages_received_total{qos=\"0\"}"), 0.0);
    assert_eq!(line("tern_client_payload_received_bytes_total{qos=\"1\"}"), 10.0);
    assert_eq!(line("tern_messages_sent_by_qos_total{qos=\"1\"}"), 1.0);
    assert_eq!(line("tern_payload_sent_bytes_total{qos=\"1\"}"), 5.0);
    assert_eq!(line("tern_connects_total{version=\"5.0\"}"), 1.0);
    assert_eq!(line("tern_messages_dropped_total{reason=\"expired\"}"), 0.0);
    // Sampled (one write batch in 16 per thread): present, at most the one delivery.
    assert!(line("tern_delivery_latency_seconds_count") <= 1.0);
    assert!(line("tern_delivery_latency_seconds_sum") >= 0.0);
    assert_eq!(line("tern_subscriptions"), 1.0);
    assert_eq!(line("tern_retained_messages"), 1.0);
    assert_eq!(line("tern_retained_bytes"), 4.0);
    assert!(line("process_resident_memory_bytes") > 1e6);
    assert!(line("process_open_fds") > 0.0);
    assert!(m.body.trim_end().ends_with("# EOF"));
}
