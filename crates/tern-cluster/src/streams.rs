//! The JetStream streams of a Tern cluster, created or checked at start (never lazily on a
//! client's path): `<prefix>_msgs_<k>`, one per shard, holding every QoS 1/2 message once
//! under `<prefix>.s.<k>.<encoded topic>`; and the key-value bucket `<prefix>_retain`, one
//! retained message per encoded topic (the key), with the same headers as a message.

use std::time::Duration;

use async_nats::jetstream::{self, stream};

use crate::ClusterError;
use tern_broker::ClusterConfig;

/// How long JetStream remembers a `Nats-Msg-Id`: a publish retried within it is stored once.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(600);
/// Consumers a stream may have: one ordered consumer per node (tailer), with room.
const MAX_CONSUMERS: i32 = 1024;

/// The name of shard `k`'s stream.
pub fn stream_name(prefix: &str, k: u16) -> String {
    format!("{prefix}_msgs_{k}")
}

/// The subject prefix of shard `k` (the encoded topic follows).
pub fn shard_subject(prefix: &str, k: u16) -> String {
    format!("{prefix}.s.{k}")
}

/// What shard `k`'s stream holds at `sequence`: `Some(true)` a message, `Some(false)` a
/// placeholder (a node recovering a session stored it to learn whether a QoS 2 message was
/// stored, see `sessions::stored`), `None` nothing any more (removed by the stream's limits).
pub async fn message_at(
    js: &jetstream::Context,
    prefix: &str,
    k: u16,
    sequence: u64,
) -> Result<Option<bool>, String> {
    let name = stream_name(prefix, k);
    // Read from the stream's leader (a direct get may ask a replica that is behind).
    let stream = js
        .get_stream_no_info(&name)
        .await
        .map_err(|e| format!("{name}: {e}"))?;
    match stream.get_raw_message(sequence).await {
        Ok(m) => Ok(Some(m.headers.get(crate::codec::VOID).is_none())),
        Err(e) if e.kind() == stream::RawMessageErrorKind::NoMessageFound => Ok(None),
        Err(e) => Err(format!("{name}: {e}")),
    }
}

/// The retained messages' bucket.
pub fn retain_bucket(prefix: &str) -> String {
    format!("{prefix}_retain")
}

/// The bucket of the wills of connected clients, by node (`wills.rs`).
pub fn wills_bucket(prefix: &str) -> String {
    format!("{prefix}_wills")
}

/// The buckets naming the node that holds each client's session: `<prefix>_sessions` when
/// there is one (`cluster.session_buckets = 1`), else `<prefix>_sessions_<j>` for each `j`
/// below `buckets`.
pub fn sessions_buckets(prefix: &str, buckets: u16) -> Vec<String> {
    match buckets {
        0 | 1 => vec![format!("{prefix}_sessions")],
        n => (0..n).map(|j| format!("{prefix}_sessions_{j}")).collect(),
    }
}

/// The bucket of the session entry whose key is `key`, of `buckets`: FNV-1a, as for shards
/// (stable across builds and nodes: every node looks for a client's entry in one bucket).
pub fn session_bucket_of(key: &str, buckets: u16) -> usize {
    usize::from(shard_of(Some(key), buckets))
}

/// The subject a KV put of `bucket` is a publish to (the encoded topic follows).
pub fn retain_subject(prefix: &str) -> String {
    format!("$KV.{}", retain_bucket(prefix))
}

/// Create the retained messages' bucket, or check the one there.
pub async fn ensure_retain(js: &jetstream::Context, config: &ClusterConfig) -> Result<(), ClusterError> {
    let bucket = retain_bucket(&config.prefix);
    let fail = |why: String| ClusterError::Stream {
        stream: format!("KV_{bucket}"),
        why,
    };
    let unavailable = |why: String| ClusterError::Unavailable {
        stream: format!("KV_{bucket}"),
        why,
    };
    let store = match js.get_key_value(&bucket).await {
        Ok(s) => s,
        Err(_) => js
            .create_key_value(jetstream::kv::Config {
                bucket: bucket.clone(),
                description: "Tern cluster: retained messages by encoded topic".into(),
                history: 1,
                storage: stream::StorageType::File,
                num_replicas: config.replicas.into(),
                ..Default::default()
            })
            .await
            .map_err(|e| unavailable(format!("cannot create it: {e}")))?,
    };
    let info = store
        .status()
        .await
        .map_err(|e| unavailable(format!("cannot read it: {e}")))?;
    let replicas = info.info.config.num_replicas;
    if replicas != usize::from(config.replicas) {
        return Err(fail(format!(
            "exists with {replicas} replicas, `cluster.replicas` is {}",
            config.replicas
        )));
    }
    Ok(())
}

/// The shard of a publisher: FNV-1a of its client id (stable across builds and nodes), so
/// that one publisher's messages share one stream and keep their order.
pub fn shard_of(client_id: Option<&str>, shards: u16) -> u16 {
    let mut h: u32 = 0x811c_9dc5;
    for b in client_id.unwrap_or("").bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    (h % u32::from(shards.max(1))) as u16
}

/// Create each shard's stream, or check the one there. Returns the last sequence of each
/// (a node's tailers start after it).
pub async fn ensure(js: &jetstream::Context, config: &ClusterConfig) -> Result<Vec<u64>, ClusterError> {
    let mut last = Vec::with_capacity(config.shards.into());
    for k in 0..config.shards {
        let name = stream_name(&config.prefix, k);
        let subjects = vec![format!("{}.>", shard_subject(&config.prefix, k))];
        let fail = |why: String| ClusterError::Stream {
            stream: name.clone(),
            why,
        };
        let unavailable = |why: String| ClusterError::Unavailable {
            stream: name.clone(),
            why,
        };
        let want = stream::Config {
            name: name.clone(),
            subjects: subjects.clone(),
            storage: stream::StorageType::File,
            num_replicas: config.replicas.into(),
            retention: stream::RetentionPolicy::Limits,
            max_age: Duration::from_secs(config.retention_secs),
            duplicate_window: DUPLICATE_WINDOW.min(Duration::from_secs(config.retention_secs)),
            max_consumers: MAX_CONSUMERS,
            allow_direct: true,
            description: Some("Tern cluster: QoS 1/2 messages of one shard of publishers".into()),
            ..Default::default()
        };
        let mut s = js
            .get_or_create_stream(want)
            .await
            .map_err(|e| unavailable(format!("cannot create or read it: {e}")))?;
        let info = s
            .info()
            .await
            .map_err(|e| unavailable(format!("cannot read it: {e}")))?;
        let have = &info.config;
        if have.subjects != subjects {
            return Err(fail(format!(
                "exists with subjects {:?}, not {subjects:?} (another `cluster.prefix` or `cluster.shards`?)",
                have.subjects
            )));
        }
        if have.num_replicas != usize::from(config.replicas) {
            return Err(fail(format!(
                "exists with {} replicas, `cluster.replicas` is {}",
                have.num_replicas, config.replicas
            )));
        }
        if have.persist_mode == Some(stream::PersistenceMode::Async) {
            return Err(fail(
                "has `persist_mode: async`: JetStream would acknowledge before storing".into(),
            ));
        }
        last.push(info.state.last_sequence);
    }
    Ok(last)
}

/// Wait, until `deadline` at most, for each of the cluster's streams and buckets to have a
/// leader. Right after a stream was created, or a NATS server restarted, its Raft group may
/// have none for a moment, and a write to it fails meanwhile ("no stream found for given
/// subject": nobody answers its subject). A node waits for this before it takes clients, so
/// that their first writes (a will, a session entry) are not the ones retried. Past the
/// deadline the node goes on, saying so (every write is retried).
pub async fn await_leaders(js: &jetstream::Context, config: &ClusterConfig, deadline: tokio::time::Instant) {
    let mut names: Vec<String> = (0..config.shards)
        .map(|k| stream_name(&config.prefix, k))
        .collect();
    for bucket in [retain_bucket, wills_bucket] {
        names.push(format!("KV_{}", bucket(&config.prefix)));
    }
    for bucket in sessions_buckets(&config.prefix, config.session_buckets) {
        names.push(format!("KV_{bucket}"));
    }
    for name in names {
        loop {
            let led = match js.get_stream(&name).await {
                // No cluster: one server, which leads.
                Ok(s) => s
                    .cached_info()
                    .cluster
                    .as_ref()
                    .is_none_or(|c| c.leader.is_some()),
                Err(_) => false,
            };
            if led {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(stream = %name, "cluster start: the stream has no leader yet; going on (its writes are retried)");
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// For tests against a NATS server: shard streams `0..shards` of `prefix` with a 60 s
/// duplicate window.
#[cfg(test)]
pub(crate) async fn test_streams(js: &jetstream::Context, prefix: &str, shards: u16) {
    for k in 0..shards {
        js.create_stream(stream::Config {
            name: stream_name(prefix, k),
            subjects: vec![format!("{}.>", shard_subject(prefix, k))],
            duplicate_window: Duration::from_secs(60),
            ..Default::default()
        })
        .await
        .expect("stream");
    }
}

#[cfg(test)]
mod tests {
    use super::shard_of;

    #[test]
    fn a_publisher_always_lands_on_the_same_shard_and_all_shards_are_used() {
        assert_eq!(shard_of(Some("abc"), 3), shard_of(Some("abc"), 3));
        let mut seen = [false; 3];
        for i in 0..100 {
            seen[usize::from(shard_of(Some(&format!("c{i}")), 3))] = true;
        }
        assert_eq!(seen, [true; 3]);
        assert_eq!(shard_of(None, 1), 0);
    }

    #[test]
    fn one_session_bucket_keeps_its_old_name_and_several_are_numbered() {
        assert_eq!(super::sessions_buckets("tern", 1), ["tern_sessions"]);
        assert_eq!(
            super::sessions_buckets("t", 3),
            ["t_sessions_0", "t_sessions_1", "t_sessions_2"]
        );
        assert_eq!(super::session_bucket_of("c6162", 1), 0);
        let mut seen = [false; 8];
        for i in 0..100 {
            seen[super::session_bucket_of(&format!("c{i:02x}"), 8)] = true;
        }
        assert_eq!(seen, [true; 8], "every bucket is used");
    }
}
