//! `$SYS/cluster/...`: the cluster's totals and each node's figures, on every node.
//!
//! Each node publishes its own figures (JSON) on the core NATS subject
//! `<prefix>.node.<node>` every `sys_interval_secs`, and follows every node's. A node not
//! heard from for [`STALE_INTERVALS`] intervals is gone: its topics are deleted. After each
//! interval every node keeps, as local retained messages (as `$SYS/broker/...` is kept):
//!
//! | Topic | Payload |
//! |---|---|
//! | `$SYS/cluster/nodes` | how many nodes were heard from |
//! | `$SYS/cluster/clients/connected`, `$SYS/cluster/messages/received`, `$SYS/cluster/messages/sent`, `$SYS/cluster/subscriptions/count` | sums over those nodes |
//! | `$SYS/cluster/node/NAME/uptime`, `.../clients/connected`, `.../messages/received`, `.../messages/sent`, `.../subscriptions/count` | each node's own |
//!
//! `$SYS/broker/...` stays each node's own. Nothing of this goes through JetStream: figures
//! are for looking at, and a lost one is replaced at the next interval.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tern_broker::{Admin, Message};
use tern_proto::QoS;

/// Intervals without news after which a node is taken for gone.
pub const STALE_INTERVALS: u32 = 3;
/// Nodes followed at most (a bound on what other publishers of the subject can make us keep).
const MAX_NODES: usize = 1024;
/// Largest figures message read.
const MAX_FIGURES: usize = 4096;

/// One node's figures, as it publishes them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Figures {
    node: String,
    uptime_secs: u64,
    clients_connected: u64,
    messages_received: u64,
    messages_sent: u64,
    subscriptions: u64,
}

/// The subject node `node` publishes its figures on.
fn subject(prefix: &str, node: &str) -> String {
    format!("{prefix}.node.{node}")
}

fn own(node: &str, admin: &Admin) -> Figures {
    let s = admin.stats();
    Figures {
        node: node.to_string(),
        uptime_secs: admin.uptime().as_secs(),
        clients_connected: s.clients_connected,
        messages_received: s.messages_received,
        messages_sent: s.messages_sent,
        subscriptions: s.subscriptions as u64,
    }
}

/// Keep `value` as the retained message of `$SYS/cluster/{key}` here (an empty value
/// deletes it) and deliver it to this node's subscribers.
fn keep(admin: &Admin, key: &str, value: String) {
    let _ = admin.publish(Message::new(
        format!("$SYS/cluster/{key}"),
        value,
        QoS::AtMostOnce,
        true,
    ));
}

/// One figure of a node's.
type Figure = fn(&Figures) -> u64;

/// Each of a node's topics under `$SYS/cluster/` and its figure.
fn per_node(name: &str) -> [(String, Figure); 5] {
    [
        (format!("node/{name}/uptime"), |f| f.uptime_secs),
        (format!("node/{name}/clients/connected"), |f| f.clients_connected),
        (format!("node/{name}/messages/received"), |f| f.messages_received),
        (format!("node/{name}/messages/sent"), |f| f.messages_sent),
        (format!("node/{name}/subscriptions/count"), |f| f.subscriptions),
    ]
}

/// Publish this node's figures and keep `$SYS/cluster/...` up to date, every `interval`,
/// until the task is aborted.
pub(crate) async fn run(
    node: String,
    prefix: String,
    client: async_nats::Client,
    admin: Admin,
    interval: Duration,
) {
    let mut sub = match client.subscribe(format!("{prefix}.node.*")).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("cluster $SYS: cannot follow the other nodes: {e}");
            return;
        }
    };
    let mut heard: BTreeMap<String, (Figures, Instant)> = BTreeMap::new();
    let mut tick = tokio::time::interval(interval);
    let stale = interval * STALE_INTERVALS;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let mine = own(&node, &admin);
                if let Ok(body) = serde_json::to_vec(&mine) {
                    let _ = client.publish(subject(&prefix, &node), body.into()).await;
                }
                heard.insert(node.clone(), (mine, Instant::now()));
                let now = Instant::now();
                let gone: Vec<String> = heard
                    .iter()
                    .filter(|(_, (_, at))| now.duration_since(*at) > stale)
                    .map(|(n, _)| n.clone())
                    .collect();
                for name in gone {
                    heard.remove(&name);
                    tracing::info!(node = %name, "cluster $SYS: node not heard from; taken for gone");
                    for (key, _) in per_node(&name) {
                        keep(&admin, &key, String::new());
                    }
                }
                // Saturating: figures come from whoever publishes on the subject.
                let sum = |f: fn(&Figures) -> u64| {
                    heard.values().fold(0u64, |a, (x, _)| a.saturating_add(f(x))).to_string()
                };
                keep(&admin, "nodes", heard.len().to_string());
                keep(&admin, "clients/connected", sum(|f| f.clients_connected));
                keep(&admin, "messages/received", sum(|f| f.messages_received));
                keep(&admin, "messages/sent", sum(|f| f.messages_sent));
                keep(&admin, "subscriptions/count", sum(|f| f.subscriptions));
                for (name, (f, _)) in &heard {
                    for (key, figure) in per_node(name) {
                        keep(&admin, &key, figure(f).to_string());
                    }
                }
            }
            m = sub.next() => {
                let Some(m) = m else { return };
                if m.payload.len() > MAX_FIGURES {
                    continue;
                }
                let Ok(f) = serde_json::from_slice::<Figures>(&m.payload) else { continue };
                // The subject names the node; a message that says otherwise is not taken.
                if m.subject.as_str() != subject(&prefix, &f.node) || f.node == node {
                    continue;
                }
                if heard.len() < MAX_NODES || heard.contains_key(&f.node) {
                    heard.insert(f.node.clone(), (f, Instant::now()));
                }
            }
        }
    }
}
