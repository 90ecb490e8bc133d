//! Each bridge's state as retained `$SYS/broker/bridge/NAME/...` messages, at the broker's
//! `sys_interval_secs`, beside the broker's own statistics:
//!
//! | Topic | Payload |
//! |---|---|
//! | `state` | `connected` or `disconnected` |
//! | `last_error` | the last connection error or refusal (empty: none) |
//! | `messages/forwarded`, `messages/received`, `messages/dropped`, `messages/hops_exceeded`, `messages/echoes` | counts since start |
//! | `outbox/messages`, `outbox/bytes`, `outbox/dropped` | the outbox now; what it dropped while full |
//! | `reconnect/attempts`, `reconnect/backoff_ms` | failed attempts since the last connection; the wait before the next (0 while connected) |

use std::sync::Arc;
use std::time::Duration;

use tern_broker::{Internal, Message};
use tern_proto::QoS;

use crate::Shared;

pub(crate) async fn publish_loop(internal: Internal, bridges: Vec<Arc<Shared>>) {
    let mut tick = tokio::time::interval(Duration::from_secs(internal.sys_interval_secs().max(1)));
    loop {
        tick.tick().await;
        for b in &bridges {
            let s = b.state(&internal);
            let values = [
                (
                    "state",
                    if s.connected { "connected" } else { "disconnected" }.to_string(),
                ),
                ("last_error", s.last_error.unwrap_or_default()),
                ("messages/forwarded", s.forwarded.to_string()),
                ("messages/received", s.received.to_string()),
                ("messages/dropped", s.dropped.to_string()),
                ("messages/hops_exceeded", s.hops_exceeded.to_string()),
                ("messages/echoes", s.echoes.to_string()),
                ("outbox/messages", s.outbox_messages.to_string()),
                ("outbox/bytes", s.outbox_bytes.to_string()),
                ("outbox/dropped", s.outbox_dropped.to_string()),
                ("reconnect/attempts", s.reconnect_attempts.to_string()),
                ("reconnect/backoff_ms", s.backoff_ms.to_string()),
            ];
            for (key, value) in values {
                let topic = format!("$SYS/broker/bridge/{}/{key}", s.name);
                let _ = internal.publish(Message::new(topic, value, QoS::AtMostOnce, true));
            }
        }
    }
}
