//! Wills of a node that dies (issue #15: "wills, also when the node holding the client dies").
//!
//! A node keeps the will of each of its connections in the key-value bucket
//! `<prefix>_wills`, key `<node>.<client id in hex>`, with the headers of a message (plus the
//! encoded topic and the Will Delay Interval), from the CONNECT until the connection ends on
//! that node (which publishes, schedules or discards the will itself, as one broker does).
//! Each node says it is alive on the core NATS subject `<prefix>.alive.<node>` every
//! `node_timeout_ms / 5`. When a node has not been heard for `node_timeout_ms`, the live
//! node with the smallest name (all nodes agree on it while they hear each other) reads the
//! silent node's wills, deletes each with the revision it read (so that a will is published
//! once even if two nodes reap at the same time) and publishes it after its delay, to its own
//! sessions and to the cluster. A node that starts publishes the wills its previous run left
//! (those connections died with it) before it takes clients.
//!
//! Not covered: a will whose Will Delay Interval was running on a node when that node died
//! (it was no longer armed); a node that dies while it reaps another's wills leaves the rest
//! until a node starts and finds them (see docs/cluster.md).

use std::collections::HashMap;
use std::fmt::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer};
use async_nats::HeaderMap;
use futures_util::StreamExt;
use tern_broker::{Admin, Message};
use tokio::sync::mpsc;

use crate::{codec, outbound::Outbound, streams, topic, ClusterError};

/// What a node's connections tell the will keeper.
#[derive(Debug)]
pub(crate) enum WillOp {
    Arm {
        client: Arc<str>,
        conn: u64,
        will: Arc<Message>,
        delay: u32,
    },
    Disarm {
        client: Arc<str>,
        conn: u64,
    },
}

/// Operations waiting for the keeper at most (beyond, they are dropped and logged).
pub(crate) const QUEUE: usize = 4096;
/// The header with the will's encoded topic.
const SUBJECT: &str = "Tern-W-Subject";
/// The header with the Will Delay Interval.
const DELAY: &str = "Tern-W-Delay";

/// The bucket's key of `client`'s will on `node`.
fn key(node: &str, client: &str) -> String {
    let mut k = String::with_capacity(node.len() + 1 + 2 * client.len());
    k.push_str(node);
    k.push('.');
    for b in client.bytes() {
        let _ = write!(k, "{b:02x}");
    }
    k
}

/// Create the wills' bucket, or check the one there.
pub(crate) async fn ensure(js: &jetstream::Context, prefix: &str, replicas: u16) -> Result<(), ClusterError> {
    let bucket = streams::wills_bucket(prefix);
    let unavailable = |why: String| ClusterError::Unavailable {
        stream: format!("KV_{bucket}"),
        why,
    };
    if js.get_key_value(&bucket).await.is_ok() {
        return Ok(());
    }
    js.create_key_value(jetstream::kv::Config {
        bucket: bucket.clone(),
        description: "Tern cluster: wills of connected clients, by node".into(),
        history: 1,
        storage: jetstream::stream::StorageType::File,
        num_replicas: replicas.into(),
        ..Default::default()
    })
    .await
    .map(|_| ())
    .map_err(|e| unavailable(format!("cannot create it: {e}")))
}

/// What the keeper works with.
pub(crate) struct Keeper {
    pub node: String,
    pub prefix: String,
    pub js: jetstream::Context,
    pub client: async_nats::Client,
    pub admin: Admin,
    pub outbound: Arc<Outbound>,
    pub timeout: Duration,
}

impl Keeper {
    fn subject(&self, key: &str) -> String {
        format!("$KV.{}.{key}", streams::wills_bucket(&self.prefix))
    }

    async fn store(&self, client: &str, will: &Message, delay: u32) -> Result<(), async_nats::Error> {
        let mut h = codec::headers(will, &self.node);
        h.insert(SUBJECT, topic::encode_topic(&self.prefix, &will.topic).as_str());
        h.insert(DELAY, delay.to_string().as_str());
        let subject = self.subject(&key(&self.node, client));
        self.js
            .publish_with_headers(subject, h, will.payload.clone())
            .await?
            .await?;
        Ok(())
    }

    async fn forget(&self, client: &str) -> Result<(), async_nats::Error> {
        let kv = self.js.get_key_value(streams::wills_bucket(&self.prefix)).await?;
        kv.delete(key(&self.node, client)).await?;
        Ok(())
    }

    /// Publish, once, every will `node` left in the bucket; returns how many.
    pub(crate) async fn reap(&self, node: &str) -> Result<usize, async_nats::Error> {
        let bucket = streams::wills_bucket(&self.prefix);
        let kv = self.js.get_key_value(&bucket).await?;
        let mut stream = self.js.get_stream(format!("KV_{bucket}")).await?;
        if stream.info().await?.state.messages == 0 {
            return Ok(0);
        }
        let consumer = stream
            .create_consumer(consumer::pull::OrderedConfig {
                deliver_policy: consumer::DeliverPolicy::LastPerSubject,
                filter_subject: self.subject(&format!("{node}.>")),
                ..Default::default()
            })
            .await?;
        let pending = consumer.cached_info().num_pending;
        if pending == 0 {
            return Ok(0);
        }
        let mut messages = consumer.messages().await?;
        let mut published = 0;
        while let Some(m) = messages.next().await {
            let m = m?;
            let info = m.info()?;
            let (seq, left) = (info.stream_sequence, info.pending);
            if let Some(will) = self.decode(&m.message) {
                let key = m
                    .message
                    .subject
                    .as_str()
                    .split_once(&format!("{bucket}."))
                    .map(|(_, k)| k.to_string());
                // The revision read: a will another node deleted meanwhile is not published twice.
                if let Some(key) = key {
                    if kv.delete_expect_revision(&key, Some(seq)).await.is_ok() {
                        self.publish_later(will);
                        published += 1;
                    }
                }
            }
            if left == 0 {
                break;
            }
        }
        Ok(published)
    }

    /// A stored will, if the message is one (not a deletion).
    fn decode(&self, m: &async_nats::Message) -> Option<(Message, u32)> {
        let h: &HeaderMap = m.headers.as_ref()?;
        if h.get("KV-Operation").is_some() {
            return None;
        }
        let subject = h.get(SUBJECT)?.as_str().to_string();
        let delay = h.get(DELAY).and_then(|d| d.as_str().parse().ok()).unwrap_or(0);
        match codec::decode(&self.prefix, &subject, Some(h), m.payload.clone()) {
            Ok(msg) => Some((msg, delay)),
            Err(e) => {
                tracing::warn!("a stored will does not decode: {e}");
                None
            }
        }
    }

    /// Publish `will` after its delay, here and to the other nodes.
    fn publish_later(&self, (will, delay): (Message, u32)) {
        let (admin, outbound) = (self.admin.clone(), self.outbound.clone());
        tokio::spawn(async move {
            if delay > 0 {
                tokio::time::sleep(Duration::from_secs(u64::from(delay))).await;
            }
            tracing::info!(topic = %will.topic, "publishing the will of a client of a node that is gone");
            let _ = admin.publish_beside_backplane(will.detached());
            outbound.publish(&Arc::new(will));
        });
    }
}

/// Keep this node's wills in the bucket, say this node is alive, and reap the wills of nodes
/// that fall silent, until the task is aborted.
pub(crate) async fn run(keeper: Keeper, mut ops: mpsc::Receiver<WillOp>) {
    let beat = (keeper.timeout / 5).max(Duration::from_millis(100));
    let alive = format!("{}.alive", keeper.prefix);
    let mut sub = match keeper.client.subscribe(format!("{alive}.*")).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("cluster wills: cannot follow the other nodes: {e}");
            return;
        }
    };
    // Said from a task of its own, so that the keeper's JetStream round trips (a burst of
    // wills, a long reap) never make this node look gone.
    let heartbeat = {
        let (client, subject) = (keeper.client.clone(), format!("{alive}.{}", keeper.node));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(beat);
            loop {
                tick.tick().await;
                let _ = client.publish(subject.clone(), "".into()).await;
            }
        })
    };
    let _heartbeat = crate::Aborting(heartbeat);
    let started = Instant::now();
    let mut looked_at_start = false;
    // Gone nodes whose wills are not known to be published yet: looked at again at each tick
    // by whichever node is the reaper then (one may die while it reaps).
    let mut unreaped: std::collections::BTreeSet<String> = Default::default();
    let mut seen: HashMap<String, Instant> = HashMap::new();
    let mut armed: HashMap<Arc<str>, u64> = HashMap::new();
    let mut tick = tokio::time::interval(beat);
    loop {
        tokio::select! {
            op = ops.recv() => {
                let Some(op) = op else { return };
                match op {
                    WillOp::Arm { client, conn, will, delay } => {
                        armed.insert(client.clone(), conn);
                        if let Err(e) = keeper.store(&client, &will, delay).await {
                            tracing::warn!(client_id = %client, "cluster wills: cannot keep the will: {e}");
                        }
                    }
                    WillOp::Disarm { client, conn } => {
                        if armed.get(&client) == Some(&conn) {
                            armed.remove(&client);
                            if let Err(e) = keeper.forget(&client).await {
                                tracing::warn!(client_id = %client, "cluster wills: cannot forget the will: {e}");
                            }
                        }
                    }
                }
            }
            m = sub.next() => {
                let Some(m) = m else { return };
                if let Some(node) = m.subject.as_str().strip_prefix(&format!("{alive}.")) {
                    if node != keeper.node {
                        seen.insert(node.to_string(), Instant::now());
                    }
                }
            }
            _ = tick.tick() => {
                let now = Instant::now();
                let silent: Vec<String> = seen
                    .iter()
                    .filter(|(_, at)| now.duration_since(**at) > keeper.timeout)
                    .map(|(n, _)| n.clone())
                    .collect();
                for n in silent {
                    seen.remove(&n);
                    tracing::warn!(node = %n, "cluster: node not heard for {:?}; taken for gone", keeper.timeout);
                    unreaped.insert(n);
                }
                // Nodes that were gone before this one started: found once, after a timeout.
                if !looked_at_start && now.duration_since(started) > keeper.timeout {
                    looked_at_start = true;
                    unreaped.extend(nodes_with_wills(&keeper).await.into_iter().filter(|n| *n != keeper.node && !seen.contains_key(n)));
                }
                // A node heard again is not gone.
                unreaped.retain(|n| !seen.contains_key(n));
                // The live node with the smallest name reaps.
                let reaper = seen.keys().map(String::as_str).chain(std::iter::once(keeper.node.as_str())).min();
                if reaper == Some(keeper.node.as_str()) {
                    let gone: Vec<String> = unreaped.iter().cloned().collect();
                    for n in gone {
                        match keeper.reap(&n).await {
                            Ok(k) => {
                                if k > 0 {
                                    tracing::info!(node = %n, wills = k, "cluster: published the wills of a node that is gone");
                                }
                                unreaped.remove(&n);
                            }
                            Err(e) => tracing::warn!(node = %n, "cluster: cannot read the wills of a node that is gone (trying again): {e}"),
                        }
                    }
                }
            }
        }
    }
}

/// The nodes that have wills in the bucket.
async fn nodes_with_wills(keeper: &Keeper) -> Vec<String> {
    let Ok(kv) = keeper
        .js
        .get_key_value(streams::wills_bucket(&keeper.prefix))
        .await
    else {
        return Vec::new();
    };
    let Ok(mut keys) = kv.keys().await else {
        return Vec::new();
    };
    let mut nodes = std::collections::BTreeSet::new();
    while let Some(Ok(k)) = keys.next().await {
        if let Some((node, _)) = k.split_once('.') {
            nodes.insert(node.to_string());
        }
    }
    nodes.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::key;

    #[test]
    fn keys_are_the_node_and_the_client_id_in_hex() {
        assert_eq!(key("tern-a", "c1"), "tern-a.6331");
        assert_eq!(key("n", "a.b/ü"), "n.612e622fc3bc");
    }
}
