//! `$SYS/broker/...`: broker statistics published as retained messages at
//! `sys_interval_secs`. Wildcard subscriptions starting with `#` or `+` do not
//! see them ([MQTT-4.7.2-1]); subscribe to `$SYS/#`.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tern_proto::codec::PublishProperties;
use tern_proto::QoS;

use crate::broker_core::Core;
use crate::message::Message;

/// Publish the statistics once.
pub(crate) fn publish_once(core: &Core) {
    let c = &core.counters;
    let (subscriptions, retained) = core.sizes();
    let values: [(&str, String); 15] = [
        ("version", format!("tern {}", env!("CARGO_PKG_VERSION"))),
        ("uptime", format!("{} seconds", core.started.elapsed().as_secs())),
        (
            "clients/connected",
            c.connected.load(Ordering::Relaxed).to_string(),
        ),
        ("clients/total", c.connections.load(Ordering::Relaxed).to_string()),
        (
            "messages/received",
            c.messages_in.load(Ordering::Relaxed).to_string(),
        ),
        (
            "messages/sent",
            c.messages_out.load(Ordering::Relaxed).to_string(),
        ),
        (
            "messages/dropped",
            c.messages_dropped.load(Ordering::Relaxed).to_string(),
        ),
        ("bytes/received", c.bytes_in.load(Ordering::Relaxed).to_string()),
        ("bytes/sent", c.bytes_out.load(Ordering::Relaxed).to_string()),
        ("subscriptions/count", subscriptions.to_string()),
        ("retained messages/count", retained.to_string()),
        ("clients/auth_failures", core.security.failures().to_string()),
        // Connections closed because the budget for partial packets ran out.
        ("clients/evicted", core.partial.evictions().to_string()),
        // Payload bytes queued for all sessions together, and messages not queued because
        // that total reached max_queued_bytes_total.
        ("messages/queued_bytes", core.queued.used().to_string()),
        ("messages/dropped_over_budget", core.queued.refusals().to_string()),
    ];
    for (name, value) in values {
        let msg = Arc::new(Message {
            topic: format!("$SYS/broker/{name}").into(),
            payload: value.into(),
            qos: QoS::AtMostOnce,
            retain: true,
            properties: PublishProperties::default(),
            expires_at: None,
            publisher: None,
            stored: Default::default(),
            received_at: None,
            mark: Default::default(),
            placed: 0,
        });
        core.retain(&msg);
        core.publish_internal(&msg);
    }
}

pub(crate) async fn publish_loop(core: Arc<Core>) {
    let mut tick = tokio::time::interval(Duration::from_secs(core.config.sys_interval_secs));
    loop {
        tick.tick().await;
        publish_once(&core);
    }
}
