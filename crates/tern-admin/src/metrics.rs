//! `/metrics`: the broker's figures in the Prometheus (OpenMetrics) text format.
//!
//! Nothing is recorded for the endpoint on the publish path: one [`Collector`] reads
//! [`tern_broker::Admin::metrics`] (atomics the broker keeps anyway, a walk of the sessions
//! and of the retained messages) and the process's `/proc` files when scraped. Names follow
//! Prometheus' conventions: `tern_` prefix, base units (bytes, seconds), `_total` counters.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};
use tern_broker::{Admin, HistogramSnapshot};

use crate::AppState;

/// The endpoint's own counters.
#[derive(Debug, Default)]
pub(crate) struct HttpCounters {
    /// Requests refused for missing or wrong credentials.
    pub auth_failures: AtomicU64,
}

#[derive(Debug)]
struct BrokerCollector {
    state: Arc<AppState>,
}

fn counter(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    v: u64,
) -> std::fmt::Result {
    ConstCounter::new(v).encode(e.encode_descriptor(name, help, unit, MetricType::Counter)?)
}

fn gauge(e: &mut DescriptorEncoder, name: &str, help: &str, unit: Option<&Unit>, v: u64) -> std::fmt::Result {
    ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX)).encode(e.encode_descriptor(
        name,
        help,
        unit,
        MetricType::Gauge,
    )?)
}

fn gauge_f(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    v: f64,
) -> std::fmt::Result {
    ConstGauge::new(v).encode(e.encode_descriptor(name, help, unit, MetricType::Gauge)?)
}

fn histogram(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    h: &HistogramSnapshot,
) -> std::fmt::Result {
    let mut m = e.encode_descriptor(name, help, unit, MetricType::Histogram)?;
    m.encode_histogram::<prometheus_client::encoding::NoLabelSet>(h.sum, h.count, &h.buckets, None)
}

/// Resident bytes of this process (Linux), for `/metrics` and `/api/v1/stats`.
pub(crate) fn resident_memory() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// CPU seconds, resident bytes, open and maximum file descriptors of this process (Linux).
fn process() -> Option<(f64, u64, u64, Option<u64>)> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may contain spaces) in parentheses.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name; clock
    // ticks of 1/100 s (USER_HZ is 100 on Linux).
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    let rss = resident_memory()?;
    let fds = std::fs::read_dir("/proc/self/fd").ok()?.count() as u64;
    let max_fds = std::fs::read_to_string("/proc/self/limits").ok().and_then(|l| {
        l.lines()
            .find(|l| l.starts_with("Max open files"))?
            .split_whitespace()
            .nth(3)?
            .parse()
            .ok()
    });
    Some((ticks as f64 / 100.0, rss, fds, max_fds))
}

impl Collector for BrokerCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> std::fmt::Result {
        let admin: &Admin = &self.state.admin;
        let m = admin.metrics();
        let s = &m.stats;
        let e = &mut e;
        {
            let mut enc = e.encode_descriptor(
                "tern_connections",
                "Clients connected now (after CONNACK), by listener and protocol version",
                None,
                MetricType::Gauge,
            )?;
            for (listener, version, n) in &m.connections {
                let labels = [("listener", listener.as_str()), ("protocol", *version)];
                ConstGauge::new(*n as i64).encode(enc.encode_family(&labels)?)?;
            }
        }
        gauge(
            e,
            "tern_sockets_open",
            "Sockets served now, before and after CONNECT",
            None,
            s.connections_open as u64,
        )?;
        {
            let mut enc = e.encode_descriptor(
                "tern_connections_accepted",
                "Connections accepted since start, by listener",
                None,
                MetricType::Counter,
            )?;
            for (listener, n) in &m.accepted {
                let labels = [("listener", listener.as_str())];
                ConstCounter::new(*n).encode(enc.encode_family(&labels)?)?;
            }
        }
        {
            let mut enc = e.encode_descriptor(
                "tern_connections_refused",
                "Connections refused since start, by reason",
                None,
                MetricType::Counter,
            )?;
            for (reason, n) in [
                ("connect_rate", m.refused_rate),
                ("max_connections", m.refused_busy),
                ("authentication", m.auth_failures),
            ] {
                ConstCounter::new(n).encode(enc.encode_family(&[("reason", reason)])?)?;
            }
        }
        counter(
            e,
            "tern_auth_failures",
            "Clients refused for failed authentication",
            None,
            m.auth_failures,
        )?;
        gauge(
            e,
            "tern_sessions_online",
            "Sessions with a connected client",
            None,
            m.sessions_online,
        )?;
        gauge(
            e,
            "tern_sessions_offline",
            "Persistent sessions waiting for their client",
            None,
            m.sessions_offline,
        )?;
        gauge(
            e,
            "tern_subscriptions",
            "Subscriptions of all sessions",
            None,
            s.subscriptions as u64,
        )?;
        gauge(
            e,
            "tern_shared_groups",
            "Distinct $share groups (group and filter)",
            None,
            m.shared_groups,
        )?;
        gauge(
            e,
            "tern_retained_messages",
            "Retained messages",
            None,
            s.retained as u64,
        )?;
        gauge(
            e,
            "tern_retained",
            "Payload bytes of the retained messages",
            Some(&Unit::Bytes),
            m.retained_bytes,
        )?;
        gauge(
            e,
            "tern_retained_resident",
            "Memory of the retained messages held in memory: payloads, topics, structures (retained_cache_bytes)",
            Some(&Unit::Bytes),
            m.retained_resident_bytes,
        )?;
        counter(
            e,
            "tern_messages_received",
            "PUBLISH packets received (wills and API publishes included)",
            None,
            s.messages_received,
        )?;
        counter(
            e,
            "tern_messages_sent",
            "PUBLISH packets sent",
            None,
            s.messages_sent,
        )?;
        counter(
            e,
            "tern_received",
            "Bytes received on MQTT connections",
            Some(&Unit::Bytes),
            m.bytes_received,
        )?;
        counter(
            e,
            "tern_sent",
            "Bytes sent on MQTT connections",
            Some(&Unit::Bytes),
            m.bytes_sent,
        )?;
        {
            let mut enc = e.encode_descriptor(
                "tern_messages_dropped",
                "Messages not delivered, by reason",
                None,
                MetricType::Counter,
            )?;
            let queue_full = s.messages_dropped.saturating_sub(s.dropped_over_budget);
            for (reason, n) in [
                ("queue_full", queue_full),
                ("queued_bytes_total", s.dropped_over_budget),
                ("no_subscribers", m.no_subscribers),
                ("expired", m.dropped_expired),
                ("too_large_for_client", m.dropped_too_large),
                ("acl_receive", m.dropped_acl_receive),
                ("acl_publish", m.dropped_acl_publish),
            ] {
                ConstCounter::new(n).encode(enc.encode_family(&[("reason", reason)])?)?;
            }
        }
        for (name, help, unit, values) in [
            (
                "tern_client_messages_received",
                "PUBLISH packets received from clients, by QoS",
                None,
                m.received_by_qos.map(|(n, _)| n),
            ),
            (
                "tern_client_payload_received",
                "Payload bytes of the PUBLISH packets received from clients, by QoS",
                Some(&Unit::Bytes),
                m.received_by_qos.map(|(_, b)| b),
            ),
            (
                "tern_messages_sent_by_qos",
                "PUBLISH packets sent, by QoS",
                None,
                m.sent_by_qos.map(|(n, _)| n),
            ),
            (
                "tern_payload_sent",
                "Payload bytes of the PUBLISH packets sent, by QoS",
                Some(&Unit::Bytes),
                m.sent_by_qos.map(|(_, b)| b),
            ),
        ] {
            let mut enc = e.encode_descriptor(name, help, unit, MetricType::Counter)?;
            for (qos, n) in ["0", "1", "2"].into_iter().zip(values) {
                ConstCounter::new(n).encode(enc.encode_family(&[("qos", qos)])?)?;
            }
        }
        {
            let mut enc = e.encode_descriptor(
                "tern_connects",
                "Connections accepted after CONNECT since start, by protocol version",
                None,
                MetricType::Counter,
            )?;
            for (version, n) in m.connects_by_version {
                ConstCounter::new(n).encode(enc.encode_family(&[("version", version)])?)?;
            }
        }
        histogram(
            e,
            "tern_delivery_latency",
            "From a client's PUBLISH being decoded to a copy of it being written to a subscriber (sampled: the first such message of one write batch in 16 per thread)",
            Some(&Unit::Seconds),
            &m.delivery_latency,
        )?;
        counter(
            e,
            "tern_publisher_slowdowns",
            "Times a publisher was told to wait for a subscriber over its queue limits",
            None,
            m.publisher_slowdowns,
        )?;
        gauge(
            e,
            "tern_queued_messages",
            "Messages waiting in session queues",
            None,
            s.queued_messages as u64,
        )?;
        gauge(
            e,
            "tern_queued",
            "Payload bytes waiting in session queues",
            Some(&Unit::Bytes),
            s.queued_bytes as u64,
        )?;
        gauge(
            e,
            "tern_largest_queue_messages",
            "The longest queue of one session",
            None,
            s.largest_queue as u64,
        )?;
        gauge(
            e,
            "tern_inflight_messages",
            "QoS 1/2 messages sent and not yet acknowledged",
            None,
            s.inflight as u64,
        )?;
        gauge(
            e,
            "tern_partial_packets",
            "Bytes held in packets in progress (max_partial_bytes)",
            Some(&Unit::Bytes),
            s.partial_bytes as u64,
        )?;
        counter(
            e,
            "tern_partial_evictions",
            "Connections closed because max_partial_bytes ran out",
            None,
            s.partial_evictions,
        )?;
        if let Some(st) = &m.store {
            counter(
                e,
                "tern_store_commits",
                "Commits of the embedded store",
                None,
                st.commits,
            )?;
            counter(
                e,
                "tern_store_changes",
                "Changes committed (divided by commits: the batch size)",
                None,
                st.changes,
            )?;
            histogram(
                e,
                "tern_store_commit",
                "Duration of a store commit (with sync = always, mostly the fsync)",
                Some(&Unit::Seconds),
                &st.commit_seconds,
            )?;
        }
        gauge_f(
            e,
            "tern_uptime",
            "Time since the broker started",
            Some(&Unit::Seconds),
            admin.uptime().as_secs_f64(),
        )?;
        counter(
            e,
            "tern_http_auth_failures",
            "HTTP requests refused for missing or wrong credentials",
            None,
            self.state.http_metrics.auth_failures.load(Ordering::Relaxed),
        )?;
        if let Some((cpu, rss, fds, max_fds)) = process() {
            ConstCounter::new(cpu).encode(e.encode_descriptor(
                "process_cpu",
                "User and system CPU time",
                Some(&Unit::Seconds),
                MetricType::Counter,
            )?)?;
            gauge(
                e,
                "process_resident_memory",
                "Resident memory",
                Some(&Unit::Bytes),
                rss,
            )?;
            gauge(e, "process_open_fds", "Open file descriptors", None, fds)?;
            if let Some(max) = max_fds {
                gauge(e, "process_max_fds", "Limit of open file descriptors", None, max)?;
            }
        }
        bridge_metrics(e, &self.state.bridges.reports())?;
        // A cluster node's own figures (nothing on a single broker).
        for f in admin.backplane_figures() {
            let name = format!("tern_{}", f.name);
            match f.counter {
                true => counter(e, &name, f.help, None, f.value)?,
                false => gauge(e, &name, f.help, None, f.value)?,
            }
        }
        Ok(())
    }
}

/// One family per figure of the bridges, labelled by bridge (nothing without bridges).
fn bridge_metrics(e: &mut DescriptorEncoder, bridges: &[crate::BridgeReport]) -> std::fmt::Result {
    if bridges.is_empty() {
        return Ok(());
    }
    type Figure = fn(&crate::BridgeReport) -> u64;
    let families: [(&str, &str, MetricType, Figure); 8] = [
        (
            "tern_bridge_connected",
            "1 while the bridge is connected to its remote",
            MetricType::Gauge,
            |b| u64::from(b.connected),
        ),
        (
            "tern_bridge_reconnect_attempts",
            "Connection attempts to the remote that failed since the last connection",
            MetricType::Gauge,
            |b| b.reconnect_attempts,
        ),
        (
            "tern_bridge_messages_forwarded",
            "Messages forwarded to the remote (acknowledged by it at QoS 1/2)",
            MetricType::Counter,
            |b| b.forwarded,
        ),
        (
            "tern_bridge_messages_received",
            "Messages from the remote published locally",
            MetricType::Counter,
            |b| b.received,
        ),
        (
            "tern_bridge_messages_dropped",
            "Messages the remote refused or no rule matched",
            MetricType::Counter,
            |b| b.dropped,
        ),
        (
            "tern_bridge_outbox_messages",
            "Messages waiting in the bridge's outbox (queued and in flight)",
            MetricType::Gauge,
            |b| b.outbox_messages,
        ),
        (
            "tern_bridge_outbox_bytes",
            "Payload bytes waiting in the bridge's outbox",
            MetricType::Gauge,
            |b| b.outbox_bytes,
        ),
        (
            "tern_bridge_outbox_dropped",
            "Messages the bridge's outbox dropped while full",
            MetricType::Counter,
            |b| b.outbox_dropped,
        ),
    ];
    for (name, help, ty, figure) in families {
        let mut enc = e.encode_descriptor(name, help, None, ty)?;
        for b in bridges {
            let labels = [("bridge", b.name.as_str())];
            let v = figure(b);
            match ty {
                MetricType::Counter => ConstCounter::new(v).encode(enc.encode_family(&labels)?)?,
                _ => ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX))
                    .encode(enc.encode_family(&labels)?)?,
            }
        }
    }
    Ok(())
}

/// The text of `/metrics` now.
pub(crate) fn render(state: &Arc<AppState>) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(BrokerCollector { state: state.clone() }));
    let mut out = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &registry) {
        tracing::error!("cannot encode the metrics: {e}");
    }
    out
}

/// `GET /metrics`.
pub(crate) async fn scrape(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    // Walking the sessions takes their locks one by one: off the runtime's worker threads.
    let text = tokio::task::spawn_blocking(move || render(&state))
        .await
        .unwrap_or_default();
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
}
