//! Messages from the other nodes, into this node's sessions (through [`Admin::publish`]).
//!
//! - QoS 0: one core NATS subscription per distinct subject the local filters need, all in
//!   one queue group named after the node. NATS gives a queue group one copy of a message
//!   however many of its subscriptions match, so overlapping filters (`a/#` and `a/b`) bring
//!   a message in once; the broker then routes it to every local session that matches.
//!   Subscriptions follow the local filters (reference-counted) and are made by one task,
//!   so `Backplane::subscribed` never waits.
//! - QoS 1/2: one ordered consumer per shard stream (a tailer), started after the stream's
//!   last sequence at the node's start; it sees every stored message once, in stream order
//!   (an ordered consumer re-creates itself after a gap).
//!
//! Messages this node published are skipped (`Tern-N`): they reached its sessions already.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use futures_util::StreamExt;
use tern_broker::Admin;
use tokio::sync::Notify;

use crate::{codec, streams, topic};

/// Counters of the inbound side.
#[derive(Debug, Default)]
pub struct InboundCounters {
    /// Messages from other nodes delivered into this node.
    pub received: AtomicU64,
    /// NATS messages that were not Tern messages (logged).
    pub undecodable: AtomicU64,
}

/// The subjects this node's local filters need, with how many filters need each.
#[derive(Debug, Default)]
pub(crate) struct Interest {
    wanted: Mutex<HashMap<String, usize>>,
    changed: Notify,
}

impl Interest {
    fn subjects(prefix: &str, full_filter: &str) -> Vec<String> {
        let filter = match tern_proto::topic::parse_filter(full_filter) {
            Ok(p) => p.filter,
            Err(_) => return Vec::new(),
        };
        topic::encode_filter(&format!("{prefix}.t"), filter)
    }

    /// A local session subscribed to `full_filter`.
    pub fn add(&self, prefix: &str, full_filter: &str) {
        let mut w = self.wanted.lock().unwrap_or_else(|e| e.into_inner());
        let mut new = false;
        for s in Self::subjects(prefix, full_filter) {
            let n = w.entry(s).or_insert(0);
            *n += 1;
            new |= *n == 1;
        }
        drop(w);
        if new {
            self.changed.notify_one();
        }
    }

    /// A local session no longer subscribes to `full_filter`.
    pub fn remove(&self, prefix: &str, full_filter: &str) {
        let mut w = self.wanted.lock().unwrap_or_else(|e| e.into_inner());
        let mut gone = false;
        for s in Self::subjects(prefix, full_filter) {
            if let Some(n) = w.get_mut(&s) {
                *n -= 1;
                if *n == 0 {
                    w.remove(&s);
                    gone = true;
                }
            }
        }
        drop(w);
        if gone {
            self.changed.notify_one();
        }
    }

    fn snapshot(&self) -> std::collections::HashSet<String> {
        let w = self.wanted.lock().unwrap_or_else(|e| e.into_inner());
        w.keys().cloned().collect()
    }

    /// How many distinct subjects are wanted.
    pub fn len(&self) -> usize {
        self.wanted.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// What the inbound tasks share.
pub(crate) struct Inbound {
    pub node: String,
    pub prefix: String,
    pub admin: Admin,
    pub counters: Arc<InboundCounters>,
    /// Subjects subscribed on NATS now.
    pub subscribed: Arc<AtomicU64>,
}

impl Inbound {
    fn deliver(&self, prefix: &str, m: &async_nats::Message) {
        if codec::node_of(m.headers.as_ref()) == Some(self.node.as_str()) {
            return;
        }
        match codec::decode(prefix, &m.subject, m.headers.as_ref(), m.payload.clone()) {
            Ok(msg) => {
                self.counters.received.fetch_add(1, Ordering::Relaxed);
                if let Err(e) = self.admin.publish(msg) {
                    tracing::warn!(subject = %m.subject, "message from the cluster not delivered: {e}");
                }
            }
            Err(e) => {
                self.counters.undecodable.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(subject = %m.subject, "not a Tern message: {e}");
            }
        }
    }
}

/// Keep the NATS subscriptions in step with `interest` until aborted.
pub(crate) async fn follow_interest(
    inbound: Arc<Inbound>,
    client: async_nats::Client,
    interest: Arc<Interest>,
) {
    let queue = format!("{}.node.{}", inbound.prefix, inbound.node);
    let prefix = format!("{}.t", inbound.prefix);
    let mut have: HashMap<String, tokio::task::JoinHandle<()>> = HashMap::new();
    loop {
        let changed = interest.changed.notified();
        let wanted = interest.snapshot();
        have.retain(|s, task| {
            let keep = wanted.contains(s);
            if !keep {
                // Dropping the subscriber unsubscribes.
                task.abort();
            }
            keep
        });
        for s in wanted {
            if have.contains_key(&s) {
                continue;
            }
            match client.queue_subscribe(s.clone(), queue.clone()).await {
                Ok(mut sub) => {
                    let (inbound, prefix) = (inbound.clone(), prefix.clone());
                    have.insert(
                        s,
                        tokio::spawn(async move {
                            while let Some(m) = sub.next().await {
                                inbound.deliver(&prefix, &m);
                            }
                        }),
                    );
                }
                Err(e) => {
                    tracing::warn!(subject = %s, "cannot subscribe on NATS (retried on the next change): {e}")
                }
            }
        }
        inbound.subscribed.store(have.len() as u64, Ordering::Relaxed);
        // A failed subscription is retried within a second even without a change.
        let _ = tokio::time::timeout(Duration::from_secs(1), changed).await;
    }
}

/// Deliver shard `k`'s stored messages from `start` on, until aborted.
pub(crate) async fn tail(inbound: Arc<Inbound>, js: jetstream::Context, k: u16, start: u64) {
    let name = streams::stream_name(&inbound.prefix, k);
    let prefix = streams::shard_subject(&inbound.prefix, k);
    let mut next = start;
    let mut backoff = Duration::from_millis(100);
    loop {
        match tail_from(&inbound, &js, &name, &prefix, &mut next).await {
            Ok(()) => backoff = Duration::from_millis(100),
            Err(e) => {
                tracing::warn!(stream = %name, next, "tailer restarts: {e}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
}

async fn tail_from(
    inbound: &Inbound,
    js: &jetstream::Context,
    name: &str,
    prefix: &str,
    next: &mut u64,
) -> Result<(), async_nats::Error> {
    let stream = js.get_stream(name).await?;
    let consumer = stream
        .create_consumer(consumer::pull::OrderedConfig {
            deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                start_sequence: (*next).max(1),
            },
            ..Default::default()
        })
        .await?;
    let mut messages = consumer.messages().await?;
    while let Some(m) = messages.next().await {
        let m = m?;
        let seq = m.info()?.stream_sequence;
        if seq < *next {
            continue;
        }
        *next = seq + 1;
        inbound.deliver(prefix, &m.message);
    }
    Ok(())
}
