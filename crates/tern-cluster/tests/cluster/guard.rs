//! The start-up guard (design §5, §8): a node refuses NATS that does not fsync before it
//! acknowledges, naming the setting, unless the operator opts into lazy fsync.

use tern_cluster::{Cluster, ClusterError};

use crate::node;
use tern_testkit::nats::Nats;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_refuses_nats_without_sync_always_and_names_the_setting() {
    let nats = Nats::start(1, false);
    let mut c = node::config(&nats, "guarded");
    let err = Cluster::start(&c).await.expect_err("lazy fsync refused");
    assert!(matches!(err, ClusterError::LazyFsync(_)), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("sync_interval: always") && text.contains("unsafe_lazy_fsync"),
        "{text}"
    );

    // Without monitoring endpoints the setting cannot be seen: the operator must assert it.
    c.monitor.clear();
    let err = Cluster::start(&c).await.expect_err("unknown fsync refused");
    assert!(matches!(err, ClusterError::FsyncUnknown), "{err:?}");
    assert!(err.to_string().contains("cluster.nats_sync_always"), "{err}");

    // The operator's explicit opt-in starts it, and says fsync is not known to happen.
    c.monitor = nats.monitors();
    c.unsafe_lazy_fsync = true;
    let cluster = Cluster::start(&c).await.expect("starts with unsafe_lazy_fsync");
    assert!(!cluster.fsync_always());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_accepts_nats_with_sync_always_and_refuses_streams_made_for_other_settings() {
    let nats = Nats::start(1, true);
    let c = node::config(&nats, "a");
    let cluster = Cluster::start(&c).await.expect("starts");
    assert!(cluster.fsync_always());
    drop(cluster);
    let mut other = c.clone();
    other.node_name = "b".into();
    other.shards = 3;
    // Shards 0 and 1 exist as wanted; a third is added.
    let _ = Cluster::start(&other).await.expect("a third shard is added");
    // A stream made with other settings is not silently used.
    let mut wrong = c.clone();
    wrong.replicas = 3;
    let err = Cluster::start(&wrong).await.expect_err("replicas differ");
    assert!(err.to_string().contains("cluster.replicas"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_starts_with_one_nats_server_of_three_down_but_not_with_two() {
    let mut nats = Nats::start(3, true);
    let c = node::config(&nats, "a");
    // Streams are made while all run.
    drop(Cluster::start(&c).await.expect("starts"));
    nats.kill(2);
    let cluster = Cluster::start(&c).await.expect("a majority answers and fsyncs");
    assert!(cluster.fsync_always());
    drop(cluster);
    nats.kill(1);
    let err = Cluster::start(&c)
        .await
        .expect_err("one of three cannot be checked");
    assert!(matches!(err, ClusterError::Monitor { .. }), "{err:?}");
    assert!(err.to_string().contains("cluster.monitor"), "{err}");
}

/// `cluster.session_buckets` is fixed once the cluster has run: a node configured for
/// another number of session buckets than NATS holds would look for a client's entry in
/// another bucket (two nodes could then both hold one session), so it refuses to start,
/// naming the setting; configured as before, it starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_refuses_session_buckets_other_than_those_on_nats_and_names_the_setting() {
    let nats = Nats::start(1, true);
    let one = node::config(&nats, "a");
    drop(Cluster::start(&one).await.expect("one bucket, as before"));
    let mut three = one.clone();
    three.session_buckets = 3;
    let err = Cluster::start(&three).await.expect_err("one bucket exists");
    let text = err.to_string();
    assert!(
        text.contains("cluster.session_buckets") && text.contains("KV_tern_sessions"),
        "{text}"
    );
    // Another prefix: three buckets made, then two and four refused, three taken.
    three.prefix = "t3".into();
    drop(Cluster::start(&three).await.expect("three buckets"));
    for n in [1, 2, 4] {
        let mut other = three.clone();
        other.session_buckets = n;
        let err = Cluster::start(&other).await.expect_err("another number");
        assert!(err.to_string().contains("cluster.session_buckets"), "{n}: {err}");
    }
    drop(Cluster::start(&three).await.expect("the same three again"));
}
