//! `tern broker --cluster` as a process (issue #15, design §9 T6/T7 at small scale): two
//! nodes on a 3-server NATS JetStream cluster; a publisher on node A sends sequence-numbered
//! QoS 1 (or QoS 2) messages while node A is killed with SIGKILL and restarted, or a NATS server is
//! killed and restarted; a subscriber on node B must receive every message whose PUBACK the
//! publisher saw, in order; and with publishers and persistent subscribers on both nodes,
//! the three fault classes in turn (a Tern node, a NATS server, both at once).
//! Rounds: `TERN_CLUSTER_KILL_ROUNDS` (default 6).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeSet, HashMap};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tern_proto::{Ack, Packet, Publish, QoS, ReasonCode};
use tern_testkit::nats::Nats;
use tern_testkit::raw::{pid, Raw, V3, V5};

/// A `tern broker` process in cluster mode.
struct Node {
    child: Child,
    addr: SocketAddr,
}

impl Node {
    fn start(config: &Path, nats: &Nats, name: &str) -> Node {
        Node::start_in(config, nats, name, None)
    }

    /// Started with its store in `data_dir` (`None`: in memory).
    fn start_in(config: &Path, nats: &Nats, name: &str, data_dir: Option<&Path>) -> Node {
        Node::start_with(config, nats, name, data_dir, false).0
    }

    /// Started with its store in `data_dir` (`None`: in memory), and its HTTP endpoint on a
    /// free loopback port when `http` (its address returned).
    fn start_with(
        config: &Path,
        nats: &Nats,
        name: &str,
        data_dir: Option<&Path>,
        http: bool,
    ) -> (Node, Option<SocketAddr>) {
        let store: Vec<std::ffi::OsString> = match data_dir {
            Some(d) => vec!["--data-dir".into(), d.into()],
            None => vec!["--in-memory".into()],
        };
        let endpoint: &[&str] = match http {
            true => &["--http", "127.0.0.1:0"],
            false => &["--no-http"],
        };
        let child = Command::new(env!("CARGO_BIN_EXE_tern"))
            .args(["broker", "--listen", "127.0.0.1:0"])
            .args(store)
            .args(endpoint)
            .arg("--log")
            .arg(std::env::var("TERN_CLUSTER_TEST_LOG").unwrap_or_else(|_| "warn".into()))
            .arg("--config")
            .arg(config)
            .arg("--cluster")
            .arg(nats.urls().join(","))
            .args(["--node-name", name])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start tern broker");
        // Owned by a Node at once: its Drop kills the process if an assertion fails.
        let mut node = Node {
            child,
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
        };
        let mut out = BufReader::new(node.child.stdout.take().unwrap());
        let mut joined = false;
        loop {
            let mut line = String::new();
            assert!(
                out.read_line(&mut line).unwrap() > 0,
                "tern broker exited before listening"
            );
            joined |= line.starts_with(&format!("tern cluster node {name} joined"));
            if let Some(addr) = line.trim().strip_prefix("tern broker listening on ") {
                assert!(joined, "the node joins the cluster before it listens");
                node.addr = addr.parse().expect("address");
                if !http {
                    return (node, None);
                }
            }
            if let Some(addr) = line.trim().strip_prefix("tern http listening on http://") {
                assert_ne!(node.addr.port(), 0, "the MQTT address comes first");
                let addr = addr.parse().expect("http address");
                return (node, Some(addr));
            }
        }
    }

    /// SIGKILL: no shutdown code runs.
    fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Numbers the configuration files of one test process: the tests run in parallel, each with
/// its own NATS cluster, and a node restarted by one must not read the other's file.
static NEXT_CONFIG: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

fn config_file(nats: &Nats) -> PathBuf {
    config_file_with(nats, "")
}

/// [`config_file`] with more lines of the `[cluster]` table.
fn config_file_with(nats: &Nats, more: &str) -> PathBuf {
    let n = NEXT_CONFIG.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = std::env::temp_dir().join(format!("tern-cluster-{}-{n}.toml", std::process::id()));
    let monitors: Vec<String> = nats.monitors().iter().map(|m| format!("{m:?}")).collect();
    std::fs::write(
        &path,
        format!(
            "sys_interval_secs = 0\n[cluster]\nmonitor = [{}]\nshards = 2\nreplicas = 3\npublish_timeout_ms = 20000\n{more}",
            monitors.join(", ")
        ),
    )
    .unwrap();
    path
}

/// Receive for ever, acknowledging as the QoS asks; the payload numbers go to `got` in order
/// of arrival.
async fn subscriber(mut sub: Raw, got: Arc<Mutex<Vec<u64>>>) {
    loop {
        match sub.next_within(Duration::from_secs(60)).await {
            Ok(Some(Packet::Publish(p))) => {
                match (p.qos, p.packet_id) {
                    (QoS::AtLeastOnce, Some(id)) => sub.send(Packet::PubAck(Ack::new(id))).await,
                    (QoS::ExactlyOnce, Some(id)) => sub.send(Packet::PubRec(Ack::new(id))).await,
                    _ => {}
                }
                let n = std::str::from_utf8(&p.payload).unwrap().parse().unwrap();
                got.lock().unwrap().push(n);
            }
            Ok(Some(Packet::PubRel(a))) => sub.send(Packet::PubComp(Ack::new(a.packet_id))).await,
            Ok(Some(other)) => panic!("subscriber: unexpected {other:?}"),
            Ok(None) => panic!("the subscriber's node closed its connection"),
            Err(()) => {}
        }
    }
}

/// A publisher of numbered QoS 1 or 2 messages that remembers what was acknowledged (PUBACK,
/// or PUBCOMP).
struct Publisher {
    qos: QoS,
    next: u64,
    acked: BTreeSet<u64>,
}

impl Publisher {
    /// Send `n` messages (ids 1..=n) and read their PUBACKs (QoS 2: PUBREC, PUBREL, PUBCOMP);
    /// `false` when the connection closed (node killed) or an answer did not come within `wait`.
    async fn batch(&mut self, p: &mut Raw, n: u16, wait: Duration, then: impl FnOnce()) -> bool {
        let mut inflight = HashMap::new();
        for i in 1..=n {
            let mut m = Publish::new("k/seq", self.next.to_string());
            m.qos = self.qos;
            m.packet_id = Some(pid(i));
            inflight.insert(pid(i), self.next);
            self.next += 1;
            p.send(Packet::Publish(m)).await;
        }
        then();
        while !inflight.is_empty() {
            match p.next_within(wait).await {
                Ok(Some(Packet::PubAck(a) | Packet::PubComp(a))) => {
                    assert_eq!(a.reason_code, ReasonCode::Success, "{a:?}");
                    let n = inflight
                        .remove(&a.packet_id)
                        .expect("acknowledgement of a message in flight");
                    self.acked.insert(n);
                }
                Ok(Some(Packet::PubRec(a))) => {
                    assert_eq!(a.reason_code, ReasonCode::Success, "{a:?}");
                    p.send(Packet::PubRel(Ack::new(a.packet_id))).await;
                }
                Ok(Some(Packet::Disconnect(_)) | None) | Err(()) => return false,
                Ok(Some(other)) => panic!("publisher: unexpected {other:?}"),
            }
        }
        true
    }
}

/// The numbers of `arrivals` at their first arrival, in arrival order (a number that comes
/// again later, a duplicate, is left out).
fn first_arrivals(arrivals: impl Iterator<Item = u64>) -> Vec<u64> {
    let mut seen = BTreeSet::new();
    arrivals.filter(|n| seen.insert(*n)).collect()
}

/// Order violations in `seq` (numbers in arrival order), leaving out the numbers in
/// `excused`: those sent while a NATS server was killed. JetStream can store a publish whose
/// first attempt was lost after later ones of the same window (docs/cluster.md, "Found by
/// the kill loop"); the readers put them back in order ("Each publisher's order across a
/// NATS failure"), and the loops require both counts to be 0.
fn order_violations(seq: &[u64], excused: &BTreeSet<u64>) -> usize {
    let kept: Vec<u64> = seq.iter().copied().filter(|n| !excused.contains(n)).collect();
    kept.windows(2).filter(|w| w[1] <= w[0]).count()
}

/// Publish a last message on `p` and wait up to 60 s until the subscriber has it (same
/// publisher, same shard: every earlier stored message was delivered by then); stop the
/// subscriber. What it got in order, the distinct numbers, the acknowledged ones it lacks,
/// and how many arrived more than once.
async fn finish(
    publisher: &mut Publisher,
    mut p: Raw,
    got: &Arc<Mutex<Vec<u64>>>,
    receiving: tokio::task::JoinHandle<()>,
) -> (Vec<u64>, BTreeSet<u64>, Vec<u64>, usize) {
    assert!(publisher.batch(&mut p, 1, Duration::from_secs(30), || ()).await);
    let marker = publisher.next - 1;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !got.lock().unwrap().contains(&marker) {
        assert!(
            Instant::now() < deadline,
            "the last message did not arrive within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    receiving.abort();
    let got = got.lock().unwrap().clone();
    let received: BTreeSet<u64> = got.iter().copied().collect();
    let lost: Vec<u64> = publisher.acked.difference(&received).copied().collect();
    let duplicates = got.len() - received.len();
    (got, received, lost, duplicates)
}

/// A xorshift generator seeded from the clock, the seed printed with `what` (the loop's
/// name): each call gives a number below its argument.
fn seeded_random(what: &str) -> impl FnMut(u64) -> u64 {
    let mut rng = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("{what} seed {rng}");
    move |n: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n
    }
}

fn rounds() -> usize {
    std::env::var("TERN_CLUSTER_KILL_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(6)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_acknowledged_message_is_lost_when_a_tern_node_or_a_nats_server_is_killed() {
    kill_loop(QoS::AtLeastOnce).await;
}

/// The same with QoS 2: every message whose PUBCOMP came arrives, and exactly once (the
/// publisher does not resend across a kill here, so a duplicate could only come from the
/// cluster: a stored message delivered twice by a tailer).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_qos2_message_whose_pubcomp_came_is_lost_or_doubled_when_nodes_are_killed() {
    kill_loop(QoS::ExactlyOnce).await;
}

async fn kill_loop(qos: QoS) {
    let mut nats = Nats::start(3, true);
    let config = config_file(&nats);
    let mut a = Node::start(&config, &nats, "a");
    let b = Node::start(&config, &nats, "b");
    let mut sub = connect_within(b.addr, V5, "sub").await;
    sub.subscribe("k/#", qos).await;
    let got = Arc::new(Mutex::new(Vec::new()));
    let receiving = tokio::spawn(subscriber(sub, got.clone()));

    let mut rand = seeded_random("cluster kill loop");
    let mut publisher = Publisher {
        qos,
        next: 0,
        acked: BTreeSet::new(),
    };
    let started = Instant::now();
    let (mut tern_kills, mut nats_kills, mut stalls) = (0, 0, 0);
    let mut excused = BTreeSet::new();
    for round in 0..rounds() {
        let mut p = connect_within(a.addr, V3, "pub").await;
        // Some traffic, then a batch during which the fault happens.
        for _ in 0..rand(20) + 5 {
            let ok = publisher.batch(&mut p, 10, Duration::from_secs(30), || ()).await;
            if !ok {
                // The open stall of docs/cluster.md ("Found by the kill loop"): the node
                // closed the publisher with 0x89 although nothing failed in this round. Not a
                // loss (unacknowledged messages may be lost); counted, and the client
                // reconnects as a real one would.
                stalls += 1;
                eprintln!("round {round}: stall (0x89 without a fault)");
                p = connect_within(a.addr, V3, "pub").await;
            }
        }
        if round % 2 == 0 {
            let mut victim = Some(a);
            publisher
                .batch(&mut p, 10, Duration::from_secs(5), || {
                    if let Some(v) = victim.take() {
                        v.kill9()
                    }
                })
                .await;
            a = Node::start(&config, &nats, "a");
            tern_kills += 1;
        } else {
            let i = rand(nats.len() as u64) as usize;
            let nats_ref = &mut nats;
            excused.extend(publisher.next..publisher.next + 10);
            let ok = publisher
                .batch(&mut p, 10, Duration::from_secs(30), || nats_ref.kill(i))
                .await;
            assert!(ok, "round {round}: PUBACKs come while 2 of 3 NATS servers run");
            nats.restart(i);
            nats.wait_healthy();
            nats_kills += 1;
        }
    }
    // A last message after all the others, from the same publisher (same shard): once the
    // subscriber has it, every earlier message that was stored has been delivered too.
    let p = connect_within(a.addr, V3, "pub").await;
    let (got, received, lost, duplicates) = finish(&mut publisher, p, &got, receiving).await;
    // First arrivals in the publisher's order (a QoS 1 retry stored twice arrives again
    // later: a duplicate, which QoS 1 allows).
    let firsts = first_arrivals(got.iter().copied());
    let whole = order_violations(&firsts, &BTreeSet::new());
    let order_violations = order_violations(&firsts, &excused);
    eprintln!(
        "cluster kill loop, QoS {qos:?}: {} rounds ({tern_kills} tern node kills, {nats_kills} NATS server kills) in {:.1?}: \
         acknowledged {}, received {}, lost {}, duplicates {duplicates}, order violations {order_violations} \
         ({whole} counting the messages in flight when a NATS server was killed), stalls {stalls}",
        rounds(),
        started.elapsed(),
        publisher.acked.len(),
        received.len(),
        lost.len()
    );
    assert!(lost.is_empty(), "acknowledged and lost: {lost:?}");
    assert_eq!(order_violations, 0, "per-publisher order");
    assert_eq!(whole, 0, "per-publisher order, also for the messages in flight at a NATS kill (the tailers put back what JetStream stored out of order)");
    if qos == QoS::ExactlyOnce {
        assert_eq!(duplicates, 0, "QoS 2 received once");
    }
    drop(b);
    let _ = std::fs::remove_file(&config);
}

/// A persistent subscriber's connection: receive, acknowledging, until the connection ends
/// (its node was killed, or another connection took its session over); the payload
/// numbers go to `got` in order of arrival.
async fn persistent_subscriber(mut sub: Raw, got: Arc<Mutex<Vec<u64>>>) {
    loop {
        match sub.next_within(Duration::from_secs(120)).await {
            Ok(Some(Packet::Publish(p))) => {
                if let (QoS::AtLeastOnce, Some(id)) = (p.qos, p.packet_id) {
                    sub.send(Packet::PubAck(Ack::new(id))).await;
                }
                let n = std::str::from_utf8(&p.payload).unwrap().parse().unwrap();
                got.lock().unwrap().push(n);
            }
            Ok(Some(Packet::Disconnect(_)) | None) => return,
            Ok(Some(other)) => panic!("subscriber: unexpected {other:?}"),
            Err(()) => panic!("the subscriber heard nothing for 120 s"),
        }
    }
}

/// A persistent subscriber's connection that keeps a client's QoS 2 state across
/// connections, as a client does with its session (v5 section 4.3.3, "method B"): a PUBLISH
/// whose packet id it holds (PUBREC sent, no PUBREL yet) is a resend, answered and not
/// delivered again v5 [MQTT-4.3.3-10]; a PUBREL frees the id. What it delivers goes to `got`.
async fn qos2_subscriber(mut sub: Raw, got: Arc<Mutex<Vec<u64>>>, held: Arc<Mutex<BTreeSet<u16>>>) {
    loop {
        match sub.next_within(Duration::from_secs(120)).await {
            Ok(Some(Packet::Publish(p))) => {
                let n: u64 = std::str::from_utf8(&p.payload).unwrap().parse().unwrap();
                match (p.qos, p.packet_id) {
                    (QoS::AtLeastOnce, Some(id)) => {
                        got.lock().unwrap().push(n);
                        sub.send(Packet::PubAck(Ack::new(id))).await;
                    }
                    (QoS::ExactlyOnce, Some(id)) => {
                        if held.lock().unwrap().insert(id.get()) {
                            got.lock().unwrap().push(n);
                        }
                        sub.send(Packet::PubRec(Ack::new(id))).await;
                    }
                    _ => got.lock().unwrap().push(n),
                }
            }
            Ok(Some(Packet::PubRel(a))) => {
                held.lock().unwrap().remove(&a.packet_id.get());
                sub.send(Packet::PubComp(Ack::new(a.packet_id))).await;
            }
            Ok(Some(Packet::Disconnect(_)) | None) => return,
            Ok(Some(other)) => panic!("subscriber: unexpected {other:?}"),
            Err(()) => panic!("the subscriber heard nothing for 120 s"),
        }
    }
}

/// Issue #15: "shared subscriptions when a member's node is killed". A `$share` group has a
/// member on each of two nodes; each round a publisher on one node sends numbered QoS 1
/// messages while the other node is killed with SIGKILL, with its member's deliveries
/// unacknowledged or not yet sent; the killed node is restarted and its member reconnects.
/// Every message whose PUBACK the publisher saw reaches a member: those held by the killed
/// node come back to the group after `share_ack_wait_ms` (design T10). Rounds:
/// `TERN_CLUSTER_KILL_ROUNDS` (default 6), over two in three of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_group_loses_no_acknowledged_message_when_a_members_node_is_killed() {
    let nats = Nats::start(3, true);
    let config = config_file_with(&nats, "share_ack_wait_ms = 3000\n");
    let mut nodes = [
        Some(Node::start(&config, &nats, "a")),
        Some(Node::start(&config, &nats, "b")),
    ];
    let got = Arc::new(Mutex::new(Vec::new()));
    let mut members = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        let addr = n.as_ref().unwrap().addr;
        members.push(Some(join_group(addr, i, got.clone()).await));
    }
    // The group's consumers are made after the SUBACKs.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut publisher = Publisher {
        qos: QoS::AtLeastOnce,
        next: 0,
        acked: BTreeSet::new(),
    };
    let started = Instant::now();
    let rounds = (rounds() * 2 / 3).max(2);
    for round in 0..rounds {
        let victim = round % 2;
        let survivor = 1 - victim;
        let mut p = connect_within(nodes[survivor].as_ref().unwrap().addr, V3, "pub").await;
        for _ in 0..5 {
            assert!(publisher.batch(&mut p, 10, Duration::from_secs(30), || ()).await);
        }
        let mut dying = nodes[victim].take();
        let ok = publisher
            .batch(&mut p, 10, Duration::from_secs(30), || {
                if let Some(v) = dying.take() {
                    v.kill9()
                }
            })
            .await;
        assert!(ok, "round {round}: the publisher's node survives");
        // The member on the killed node lost its connection: its task ends.
        if let Some(m) = members[victim].take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), m).await;
        }
        for _ in 0..3 {
            assert!(publisher.batch(&mut p, 10, Duration::from_secs(30), || ()).await);
        }
        let node = Node::start(&config, &nats, if victim == 0 { "a" } else { "b" });
        members[victim] = Some(join_group(node.addr, victim, got.clone()).await);
        nodes[victim] = Some(node);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    // Everything acknowledged arrives within the ack wait (3 s) and the delay of a given-back
    // message, with room for a loaded machine.
    let deadline = Instant::now() + Duration::from_secs(60);
    let lost = loop {
        let received: BTreeSet<u64> = got.lock().unwrap().iter().copied().collect();
        let lost: Vec<u64> = publisher.acked.difference(&received).copied().collect();
        if lost.is_empty() || Instant::now() > deadline {
            break lost;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let all = got.lock().unwrap().clone();
    let received: BTreeSet<u64> = all.iter().copied().collect();
    eprintln!(
        "shared group kill loop: {rounds} rounds (tern node kills) in {:.1?}: acknowledged {}, received {}, lost {}, duplicates {}",
        started.elapsed(),
        publisher.acked.len(),
        received.len(),
        lost.len(),
        all.len() - received.len()
    );
    assert!(lost.is_empty(), "acknowledged and lost: {lost:?}");
    for m in members.into_iter().flatten() {
        m.abort();
    }
    drop(nodes);
    let _ = std::fs::remove_file(&config);
}

/// Issue #15's kill loops with "publishers and persistent subscribers spread over the
/// nodes": a QoS 1 publisher and a persistent subscriber (of both publishers' messages) on
/// each of the two nodes. Rounds go through the three faults in its proportions
/// (20, 20 and 10 rounds): (a) kill -9 a random Tern node, (b) kill -9 a random NATS server,
/// (c) both at once, as a, b, c, a, b in every five rounds; each during a batch of a random
/// publisher. The killed node's clients reconnect to the survivor (its
/// subscriber's session is recovered there, Session Present), the node is restarted, and
/// each client goes home at the next round (a live handover for the subscribers). Every
/// message whose PUBACK its publisher saw reaches both subscribers; the first arrivals of
/// each publisher's numbers keep its order, also those in flight at a NATS kill (counted
/// apart as well, as in the other loops); duplicates are counted (QoS 1). Rounds:
/// `TERN_CLUSTER_KILL_ROUNDS` (default 6; 50 is the whole set).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_spread_over_both_nodes_lose_nothing_acknowledged_when_nodes_and_nats_servers_are_killed() {
    spread_kill_loop(QoS::AtLeastOnce).await;
}

/// The same with QoS 2 publishers and subscriptions: every message whose PUBCOMP came
/// reaches both subscribers exactly once (each keeps its QoS 2 packet ids across its
/// connections, as a client does with its session).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos2_clients_spread_over_both_nodes_get_each_message_once_when_nodes_and_nats_servers_are_killed() {
    spread_kill_loop(QoS::ExactlyOnce).await;
}

async fn spread_kill_loop(qos: QoS) {
    let mut nats = Nats::start(3, true);
    let config = config_file(&nats);
    let names = ["a", "b"];
    let mut nodes = [
        Some(Node::start(&config, &nats, "a")),
        Some(Node::start(&config, &nats, "b")),
    ];
    let addr = |nodes: &[Option<Node>; 2], i: usize| nodes[i].as_ref().expect("running").addr;
    // Per node: its subscriber's arrivals, its receiving task, its publisher and connection.
    let got: [Arc<Mutex<Vec<u64>>>; 2] = Default::default();
    let sub_ids = ["spread-sub-a", "spread-sub-b"];
    // Each subscriber's QoS 2 packet ids awaiting PUBREL, kept across its connections.
    let held: [Arc<Mutex<BTreeSet<u16>>>; 2] = Default::default();
    let mut receiving = Vec::new();
    for i in 0..2 {
        let (mut sub, _) = connect_persistent_as(addr(&nodes, i), sub_ids[i]).await;
        sub.subscribe("k/#", qos).await;
        receiving.push(tokio::spawn(qos2_subscriber(
            sub,
            got[i].clone(),
            held[i].clone(),
        )));
    }
    // Publisher b's numbers start at a million: each publisher's order is checked apart.
    const B_FROM: u64 = 1_000_000;
    let mut publishers = [
        Publisher {
            qos,
            next: 0,
            acked: BTreeSet::new(),
        },
        Publisher {
            qos,
            next: B_FROM,
            acked: BTreeSet::new(),
        },
    ];
    let pub_ids = ["spread-pub-a", "spread-pub-b"];
    let mut conns = Vec::new();
    for (i, id) in pub_ids.iter().enumerate() {
        conns.push(connect_within(addr(&nodes, i), V3, id).await);
    }
    // Where each node's clients are now (they move to the survivor when their node dies).
    let mut on = [0usize, 1];
    let mut rand = seeded_random("spread kill loop");
    let started = Instant::now();
    let (mut tern_kills, mut nats_kills, mut stalls, mut revived) = (0, 0, 0, 0);
    // A subscriber whose connection its node closed while its node runs connects again, as
    // a client would: with QoS 2, a node closes it (0x89) when the session's entry cannot be
    // written before a PUBLISH or PUBREL goes out (a bucket electing a leader after a NATS
    // server was killed, docs/cluster.md "Sessions across nodes").
    macro_rules! revive {
        ($i:expr) => {
            if receiving[$i].is_finished() {
                let (sub, present) = connect_persistent_as(addr(&nodes, on[$i]), sub_ids[$i]).await;
                assert!(present, "{} reconnects to its session", sub_ids[$i]);
                receiving[$i] = tokio::spawn(qos2_subscriber(sub, got[$i].clone(), held[$i].clone()));
                revived += 1;
            }
        };
    }
    let mut excused = BTreeSet::new();
    for round in 0..rounds() {
        // Every other round: a subscriber also stays away a round, as a client may (its
        // session then waits on its node, which may die meanwhile).
        for i in 0..2 {
            if on[i] == i && round % 2 == 0 {
                revive!(i);
            }
        }
        // Each node's clients go home.
        for i in 0..2 {
            if on[i] != i {
                let (sub, present) = connect_persistent_as(addr(&nodes, i), sub_ids[i]).await;
                assert!(
                    present,
                    "round {round}: {} moves home with its session",
                    sub_ids[i]
                );
                // The old connection was taken over (0x8E): its task ends first, so that the
                // two never hold the client's QoS 2 ids at once.
                let _ = tokio::time::timeout(Duration::from_secs(10), &mut receiving[i]).await;
                receiving[i] = tokio::spawn(qos2_subscriber(sub, got[i].clone(), held[i].clone()));
                conns[i] = connect_within(addr(&nodes, i), V3, pub_ids[i]).await;
                on[i] = i;
            }
        }
        for _ in 0..rand(3) + 2 {
            for i in 0..2 {
                if !publishers[i]
                    .batch(&mut conns[i], 10, Duration::from_secs(30), || ())
                    .await
                {
                    stalls += 1;
                    conns[i] = connect_within(addr(&nodes, on[i]), V3, pub_ids[i]).await;
                }
            }
        }
        // (a) a Tern node, (b) a NATS server, (c) both, during a batch of a random publisher;
        // in the proportions (20, 20, 10 rounds).
        let kind = [0, 1, 2, 0, 1][round % 5];
        let victim = (kind != 1).then(|| rand(2) as usize);
        let nats_victim = (kind != 0).then(|| rand(nats.len() as u64) as usize);
        let who = rand(2) as usize;
        eprintln!(
            "spread round {round}: publisher {} at {}, node killed {victim:?}, NATS server killed {nats_victim:?}, clients on {on:?}",
            names[who], publishers[who].next
        );
        if nats_victim.is_some() {
            for p in &publishers {
                excused.extend(p.next..p.next + 20);
            }
        }
        let mut dying = victim.and_then(|v| nodes[v].take());
        let nats_ref = &mut nats;
        let ok = publishers[who]
            .batch(&mut conns[who], 10, Duration::from_secs(30), || {
                if let Some(n) = dying.take() {
                    n.kill9()
                }
                if let Some(i) = nats_victim {
                    nats_ref.kill(i);
                }
            })
            .await;
        if !ok && victim != Some(on[who]) {
            stalls += 1;
        }
        if let Some(i) = nats_victim {
            nats.restart(i);
            nats.wait_healthy();
            nats_kills += 1;
        }
        if let Some(v) = victim {
            tern_kills += 1;
            let survivor = 1 - v;
            // The killed node's clients reconnect to the survivor; its subscriber finds its
            // session there, recovered from its entry and the streams.
            for i in 0..2 {
                if on[i] == v {
                    let _ = tokio::time::timeout(Duration::from_secs(10), &mut receiving[i]).await;
                    let (sub, present) = connect_persistent_as(addr(&nodes, survivor), sub_ids[i]).await;
                    assert!(
                        present,
                        "round {round}: the session of {} is recovered on the survivor",
                        sub_ids[i]
                    );
                    receiving[i] = tokio::spawn(qos2_subscriber(sub, got[i].clone(), held[i].clone()));
                    conns[i] = connect_within(addr(&nodes, survivor), V3, pub_ids[i]).await;
                    on[i] = survivor;
                }
            }
        }
        // Traffic with the fault behind it, then the node back.
        for i in 0..2 {
            if !publishers[i]
                .batch(&mut conns[i], 10, Duration::from_secs(30), || ())
                .await
            {
                stalls += 1;
                conns[i] = connect_within(addr(&nodes, on[i]), V3, pub_ids[i]).await;
            }
        }
        if let Some(v) = victim {
            nodes[v] = Some(Node::start(&config, &nats, names[v]));
        }
    }
    // A last message from each publisher; once both subscribers have both, every earlier
    // stored message of the two has been delivered (one publisher, one shard, in order).
    for i in 0..2 {
        assert!(
            publishers[i]
                .batch(&mut conns[i], 1, Duration::from_secs(30), || ())
                .await
        );
    }
    let markers = [publishers[0].next - 1, publishers[1].next - 1];
    let deadline = Instant::now() + Duration::from_secs(60);
    for i in 0..2 {
        while !markers.iter().all(|m| got[i].lock().unwrap().contains(m)) {
            assert!(
                Instant::now() < deadline,
                "the last messages did not arrive within 60 s"
            );
            revive!(i);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    for r in &receiving {
        r.abort();
    }
    let mut failures = Vec::new();
    for (s, g) in got.iter().enumerate() {
        let g = g.lock().unwrap().clone();
        let received: BTreeSet<u64> = g.iter().copied().collect();
        for (p, publisher) in publishers.iter().enumerate() {
            let lost: Vec<u64> = publisher.acked.difference(&received).copied().collect();
            let range = |n: &u64| (*n >= B_FROM) == (p == 1);
            let firsts = first_arrivals(g.iter().copied().filter(range));
            let mine = g.iter().filter(|n| range(n)).count();
            let whole = order_violations(&firsts, &BTreeSet::new());
            let order = order_violations(&firsts, &excused);
            eprintln!(
                "spread kill loop, QoS {qos:?}, subscriber {} from publisher {}: acknowledged {}, received {}, lost {}, duplicates {}, order violations {order} ({whole} counting the messages in flight when a NATS server was killed)",
                names[s],
                names[p],
                publisher.acked.len(),
                firsts.len(),
                lost.len(),
                mine - firsts.len()
            );
            if !lost.is_empty() {
                failures.push(format!("{} lost {lost:?} of {}", sub_ids[s], pub_ids[p]));
            }
            if order > 0 || whole > 0 {
                failures.push(format!(
                    "{} got {} out of order ({order}; {whole} counting the messages in flight at a NATS kill)",
                    sub_ids[s], pub_ids[p]
                ));
            }
            if qos == QoS::ExactlyOnce && mine > firsts.len() {
                let mut once = BTreeSet::new();
                let twice: Vec<u64> = g
                    .iter()
                    .copied()
                    .filter(|n| range(n) && !once.insert(*n))
                    .collect();
                failures.push(format!(
                    "{} got some of {} twice (QoS 2): {twice:?}",
                    sub_ids[s], pub_ids[p]
                ));
            }
        }
    }
    eprintln!(
        "spread kill loop, QoS {qos:?}: {} rounds ({tern_kills} tern node kills, {nats_kills} NATS server kills) in {:.1?}, stalls {stalls}, subscribers reconnected after their node closed them {revived}",
        rounds(),
        started.elapsed()
    );
    assert!(failures.is_empty(), "{failures:?}");
    drop(nodes);
    let _ = std::fs::remove_file(&config);
}

/// A subscription acknowledged is in the session's entry (the SUBACK waits for the
/// directory write): 40 persistent sessions subscribe on node a, which is killed with SIGKILL
/// right after the last SUBACK; each client reconnects to node b, finds its session (Session
/// Present) and receives what is published to its subscription there. Before, the entries
/// were written after the SUBACK, and most of such sessions came back without subscriptions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_acknowledged_just_before_their_node_is_killed_survive_it() {
    const N: usize = 40;
    let nats = Nats::start(3, true);
    let config = config_file(&nats);
    let a = Node::start(&config, &nats, "a");
    let b = Node::start(&config, &nats, "b");
    let persistent = |i: usize| {
        let mut c = tern_proto::Connect::new(V5, format!("keep-{i}").as_str());
        c.keep_alive = 0;
        c.clean_start = false;
        c.properties.session_expiry_interval = Some(600);
        c
    };
    let mut held = Vec::new();
    for i in 0..N {
        let (mut c, ack) = connect_patiently(a.addr, persistent(i)).await;
        assert_eq!(ack.reason_code, ReasonCode::Success);
        let sub = c.subscribe(&format!("keep/{i}"), QoS::AtLeastOnce).await;
        assert_eq!(sub.reason_codes, vec![ReasonCode::GrantedQoS1]);
        held.push(c);
    }
    a.kill9();
    drop(held);
    let b_addr = b.addr;
    let mut back = Vec::new();
    for i in 0..N {
        let c = persistent(i);
        back.push(tokio::spawn(async move { connect_patiently(b_addr, c).await }));
    }
    let mut clients = Vec::new();
    for (i, t) in back.into_iter().enumerate() {
        let (c, ack) = t.await.unwrap();
        assert_eq!(ack.reason_code, ReasonCode::Success, "keep-{i}");
        assert!(
            ack.session_present,
            "keep-{i}: its session after its node was killed"
        );
        clients.push(c);
    }
    let mut p = connect_within(b_addr, V5, "keeper").await;
    for i in 0..N {
        p.publish(&format!("keep/{i}"), &i.to_string(), QoS::AtLeastOnce, false)
            .await;
    }
    for (i, c) in clients.iter_mut().enumerate() {
        match c.next_within(Duration::from_secs(20)).await {
            Ok(Some(Packet::Publish(m))) => assert_eq!(&m.payload[..], i.to_string().as_bytes()),
            other => panic!("keep-{i}: its subscription on node b: {other:?}"),
        }
    }
    drop(b);
    let _ = std::fs::remove_file(&config);
}

/// Connect member `i` of the shared group `$share/g/k/#` (QoS 1, clean session) to `addr`;
/// its task receives until the connection ends.
async fn join_group(addr: SocketAddr, i: usize, got: Arc<Mutex<Vec<u64>>>) -> tokio::task::JoinHandle<()> {
    let mut m = connect_within(addr, V5, &format!("member-{i}")).await;
    let ack = m.subscribe("$share/g/k/#", QoS::AtLeastOnce).await;
    assert_eq!(ack.reason_codes, vec![ReasonCode::GrantedQoS1]);
    tokio::spawn(persistent_subscriber(m, got))
}

/// Send `c` and wait for the CONNACK up to 30 s: a CONNECT in cluster mode waits for the
/// session directory, which can take seconds while JetStream elects a leader (a NATS server
/// just restarted, or the cluster just started on a loaded machine).
async fn connect_patiently(addr: SocketAddr, c: tern_proto::Connect) -> (Raw, tern_proto::ConnAck) {
    let mut raw = Raw::open(addr, c.protocol_version).await;
    raw.send(Packet::Connect(Box::new(c))).await;
    match raw.next_within(Duration::from_secs(30)).await {
        Ok(Some(Packet::ConnAck(a))) => (raw, a),
        other => panic!("expected CONNACK, got {other:?}"),
    }
}

/// [`Raw::connect`] with [`connect_patiently`]'s wait.
async fn connect_within(addr: SocketAddr, version: tern_proto::ProtocolVersion, id: &str) -> Raw {
    let mut c = tern_proto::Connect::new(version, id);
    c.keep_alive = 0;
    let (raw, ack) = connect_patiently(addr, c).await;
    assert_eq!(ack.reason_code, ReasonCode::Success, "CONNACK for {id}");
    raw
}

/// Connect the persistent subscriber (5.0, Session Expiry 600 s, Clean Start 0) to `addr`.
async fn connect_persistent(addr: SocketAddr) -> (Raw, bool) {
    connect_persistent_as(addr, "psub").await
}

/// Connect `id` with a persistent session (5.0, Session Expiry 600 s, Clean Start 0): the
/// connection and Session Present.
async fn connect_persistent_as(addr: SocketAddr, id: &str) -> (Raw, bool) {
    let mut c = tern_proto::Connect::new(V5, id);
    c.keep_alive = 0;
    c.clean_start = false;
    c.properties.session_expiry_interval = Some(600);
    let (raw, ack) = connect_patiently(addr, c).await;
    assert_eq!(ack.reason_code, ReasonCode::Success, "{ack:?}");
    (raw, ack.session_present)
}

/// Issue #15: "publishers and persistent subscribers spread over the nodes". Each round the
/// persistent subscriber is on the node that is then killed with SIGKILL (it moves there
/// from the other node first, a live handover, when it is not there already), while a
/// publisher on the other node sends numbered QoS 1 messages; the subscriber reconnects to
/// the surviving node, which recovers its session from the directory and the streams
/// (session present), and the killed node is restarted. Every third round a NATS server is
/// killed at the same moment (and restarted). Every acknowledged message must
/// reach the subscriber; duplicates are allowed (QoS 1), and the first arrivals of the
/// numbers keep the publisher's order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persistent_session_on_a_killed_node_loses_no_acknowledged_message() {
    persistent_kill_loop(QoS::AtLeastOnce).await;
}

/// The same with QoS 2 (publisher and subscription), exactly once: every message whose
/// PUBCOMP the publisher saw reaches the subscriber, none twice. The node recovering the
/// session resumes the deliveries the killed node had in flight with their packet ids
/// (v5 [MQTT-4.4.0-1]; the entry said which before each PUBLISH and PUBREL went out) and
/// leaves out what the subscriber had received; without that, a new message sent with an id
/// the client still held would be taken for a resend and lost (v5 [MQTT-4.3.3-10]), and the
/// messages read back from the floor would arrive twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_qos2_persistent_session_on_a_killed_node_gets_every_message_once() {
    persistent_kill_loop(QoS::ExactlyOnce).await;
}

async fn persistent_kill_loop(qos: QoS) {
    let mut nats = Nats::start(3, true);
    let config = config_file(&nats);
    let mut nodes = [
        Some(Node::start(&config, &nats, "a")),
        Some(Node::start(&config, &nats, "b")),
    ];
    let addr = |nodes: &[Option<Node>; 2], i: usize| nodes[i].as_ref().expect("running").addr;
    let names = ["a", "b"];
    let got = Arc::new(Mutex::new(Vec::new()));
    // First connection: the subscription.
    let (mut sub, _) = connect_persistent(addr(&nodes, 0)).await;
    sub.subscribe("k/#", qos).await;
    // The client's QoS 2 packet ids awaiting PUBREL, kept across its connections.
    let held = Arc::new(Mutex::new(BTreeSet::new()));
    let mut receiving = tokio::spawn(qos2_subscriber(sub, got.clone(), held.clone()));
    let mut publisher = Publisher {
        qos,
        next: 0,
        acked: BTreeSet::new(),
    };
    let started = Instant::now();
    let (mut stalls, mut nats_kills) = (0, 0);
    let mut excused = BTreeSet::new();
    let mut on = 0usize;
    for round in 0..rounds() {
        let victim = round % 2;
        let survivor = 1 - victim;
        if on != victim {
            // The session moves to the victim while its node runs.
            let (sub, present) = connect_persistent(addr(&nodes, victim)).await;
            assert!(present, "round {round}: the session moved from the running node");
            let _ = tokio::time::timeout(Duration::from_secs(10), &mut receiving).await;
            receiving = tokio::spawn(qos2_subscriber(sub, got.clone(), held.clone()));
        }
        let mut p = connect_within(addr(&nodes, survivor), V3, "pub").await;
        for _ in 0..5 {
            if !publisher.batch(&mut p, 10, Duration::from_secs(30), || ()).await {
                stalls += 1;
                p = connect_within(addr(&nodes, survivor), V3, "pub").await;
            }
        }
        // The victim dies during a batch; every third round a NATS server dies with it (both
        // fault classes at once).
        let mut victim_node = nodes[victim].take();
        let nats_victim = (round % 3 == 2).then_some((round / 3) % 3);
        if nats_victim.is_some() {
            excused.extend(publisher.next..publisher.next + 10);
        }
        let nats_ref = &mut nats;
        if !publisher
            .batch(&mut p, 10, Duration::from_secs(30), || {
                if let Some(v) = victim_node.take() {
                    v.kill9()
                }
                if let Some(i) = nats_victim {
                    nats_ref.kill(i);
                }
            })
            .await
        {
            stalls += 1;
        }
        if let Some(i) = nats_victim {
            nats.restart(i);
            nats.wait_healthy();
            nats_kills += 1;
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), &mut receiving).await;
        // The subscriber comes back on the surviving node: its session is recovered there.
        let (sub, present) = connect_persistent(addr(&nodes, survivor)).await;
        assert!(
            present,
            "round {round}: the session of the killed node is present on the other"
        );
        receiving = tokio::spawn(qos2_subscriber(sub, got.clone(), held.clone()));
        on = survivor;
        for _ in 0..3 {
            if !publisher.batch(&mut p, 10, Duration::from_secs(30), || ()).await {
                stalls += 1;
                p = connect_within(addr(&nodes, survivor), V3, "pub").await;
            }
        }
        nodes[victim] = Some(Node::start(&config, &nats, names[victim]));
    }
    // A last message after all the others (same publisher, same shard).
    let p = connect_within(addr(&nodes, on), V3, "pub").await;
    let (got, received, lost, duplicates) = finish(&mut publisher, p, &got, receiving).await;
    // First arrivals in the publisher's order.
    let firsts = first_arrivals(got.iter().copied());
    let whole = order_violations(&firsts, &BTreeSet::new());
    let order_violations = order_violations(&firsts, &excused);
    eprintln!(
        "persistent session kill loop, QoS {qos:?}: {} rounds (a node holding the session killed each round, with a NATS server {nats_kills} times) in {:.1?}: \
         acknowledged {}, received {}, lost {}, duplicates {duplicates}, order violations {order_violations} \
         ({whole} counting the messages in flight when a NATS server was killed), stalls {stalls}",
        rounds(),
        started.elapsed(),
        publisher.acked.len(),
        received.len(),
        lost.len()
    );
    assert!(lost.is_empty(), "acknowledged and lost: {lost:?}");
    assert_eq!(order_violations, 0, "first arrivals in the publisher's order");
    assert_eq!(whole, 0, "first arrivals in the publisher's order, also for the messages in flight at a NATS kill (the tailers and recoveries put back what JetStream stored out of order)");
    if qos == QoS::ExactlyOnce {
        assert_eq!(duplicates, 0, "QoS 2 received once");
    }
    let _ = std::fs::remove_file(&config);
}

/// The QoS 2 deliveries a killed node had in flight are resumed on the node that recovers
/// the session, with their packet ids: one the client never answered comes again as a
/// PUBLISH with DUP set and the same id, one it answered with PUBREC comes as the PUBREL
/// (v5 [MQTT-4.4.0-1]), and a message published meanwhile gets another id (one the client
/// holds would make it take the message for a resend, v5 [MQTT-4.3.3-10]).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos2_deliveries_in_flight_on_a_killed_node_resume_with_their_packet_ids() {
    let nats = Nats::start(3, true);
    let config = config_file(&nats);
    let a = Node::start(&config, &nats, "a");
    let b = Node::start(&config, &nats, "b");
    let (mut sub, _) = connect_persistent(a.addr).await;
    sub.subscribe("k/#", QoS::ExactlyOnce).await;
    let mut p = connect_within(b.addr, V5, "pub").await;
    p.publish("k/1", "1", QoS::ExactlyOnce, false).await;
    p.publish("k/2", "2", QoS::ExactlyOnce, false).await;
    // The first is answered (PUBREC), the second not; nothing more is read.
    let mut ids = Vec::new();
    for n in ["1", "2"] {
        match sub.next_within(Duration::from_secs(20)).await {
            Ok(Some(Packet::Publish(m))) => {
                assert_eq!(&m.payload[..], n.as_bytes());
                ids.push(m.packet_id.expect("QoS 2"));
            }
            other => panic!("expected message {n}, got {other:?}"),
        }
    }
    sub.send(Packet::PubRec(Ack::new(ids[0]))).await;
    // The PUBREL of the first goes out once the entry says so.
    match sub.next_within(Duration::from_secs(20)).await {
        Ok(Some(Packet::PubRel(r))) => assert_eq!(r.packet_id, ids[0]),
        other => panic!("expected PUBREL {}, got {other:?}", ids[0]),
    }
    a.kill9();
    p.publish("k/3", "3", QoS::ExactlyOnce, false).await;
    drop(sub);
    let (mut sub, present) = connect_persistent(b.addr).await;
    assert!(present, "the session of the killed node is recovered");
    // v5 [MQTT-4.4.0-1]: the PUBREL again, the PUBLISH again with DUP and its id, in the
    // order they were sent.
    let mut seen = Vec::new();
    while seen.len() < 3 {
        match sub.next_within(Duration::from_secs(20)).await {
            Ok(Some(Packet::PubRel(r))) => {
                seen.push(format!("PUBREL {}", r.packet_id));
                sub.send(Packet::PubComp(Ack::new(r.packet_id))).await;
            }
            Ok(Some(Packet::Publish(m))) => {
                let id = m.packet_id.expect("QoS 2");
                let n = std::str::from_utf8(&m.payload).unwrap().to_string();
                seen.push(format!("PUBLISH {n} id {id} dup {}", m.dup));
                if n == "3" {
                    assert!(
                        !ids.contains(&id),
                        "a new message with an id the client holds: {seen:?}"
                    );
                }
                sub.send(Packet::PubRec(Ack::new(id))).await;
            }
            other => panic!("after {seen:?}: {other:?}"),
        }
    }
    assert_eq!(
        seen,
        vec![
            format!("PUBREL {}", ids[0]),
            format!("PUBLISH 2 id {} dup true", ids[1]),
            seen[2].clone()
        ],
        "resumed in order with their ids"
    );
    assert!(seen[2].starts_with("PUBLISH 3 "), "{seen:?}");
    drop(b);
    let _ = std::fs::remove_file(&config);
}

/// v5 [MQTT-4.8.2-4]: a QoS 2 message of a shared subscription whose delivery to a member
/// began is completed with that member, and is no other member's. When the member's node
/// is killed, no other member gets it, however long after the group's ack wait (before:
/// JetStream offered it again to the group, and a member on the other node got it); the
/// member gets it again with its packet id where its session is recovered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_qos2_message_begun_on_a_killed_node_goes_to_no_other_member() {
    let nats = Nats::start(3, true);
    let config = config_file_with(&nats, "share_ack_wait_ms = 1000\n");
    let a = Node::start(&config, &nats, "a");
    let b = Node::start(&config, &nats, "b");
    let (mut member, _) = connect_persistent_as(a.addr, "member-a").await;
    let ack = member.subscribe("$share/g/k/#", QoS::ExactlyOnce).await;
    assert_eq!(ack.reason_codes, vec![ReasonCode::GrantedQoS2]);
    let mut p = connect_within(b.addr, V5, "pub").await;
    p.publish("k/1", "1", QoS::ExactlyOnce, false).await;
    // The only member gets it and answers nothing.
    let id = match member.next_within(Duration::from_secs(20)).await {
        Ok(Some(Packet::Publish(m))) => {
            assert_eq!(&m.payload[..], b"1");
            m.packet_id.expect("QoS 2")
        }
        other => panic!("expected the message, got {other:?}"),
    };
    let mut other = connect_within(b.addr, V5, "member-b").await;
    let ack = other.subscribe("$share/g/k/#", QoS::ExactlyOnce).await;
    assert_eq!(ack.reason_codes, vec![ReasonCode::GrantedQoS2]);
    // The node tells JetStream a round trip after the member's entry lists the delivery.
    tokio::time::sleep(Duration::from_millis(500)).await;
    a.kill9();
    // Four ack waits: long enough for JetStream to offer an unsettled message again.
    match other.next_within(Duration::from_secs(4)).await {
        Err(()) => {}
        got => panic!("another member got the message: {got:?}"),
    }
    drop(member);
    let (mut member, present) = connect_persistent_as(b.addr, "member-a").await;
    assert!(present, "the member's session is recovered");
    match member.next_within(Duration::from_secs(20)).await {
        Ok(Some(Packet::Publish(m))) => {
            assert_eq!(&m.payload[..], b"1");
            assert_eq!(m.packet_id, Some(id), "resent with its packet id");
            // v5 [MQTT-3.3.1-1]
            assert!(m.dup, "resent with DUP");
        }
        other => panic!("expected the message again, got {other:?}"),
    }
    member.send(Packet::PubRec(Ack::new(id))).await;
    match member.next_within(Duration::from_secs(20)).await {
        Ok(Some(Packet::PubRel(r))) => assert_eq!(r.packet_id, id),
        other => panic!("expected PUBREL, got {other:?}"),
    }
    member.send(Packet::PubComp(Ack::new(id))).await;
    match other.next_within(Duration::from_secs(2)).await {
        Err(()) => {}
        got => panic!("another member got the message: {got:?}"),
    }
    drop(b);
    let _ = std::fs::remove_file(&config);
}

/// A shared group's QoS 1 messages that no connected member could take are queued for a
/// member that is away (v5 section 4.8.2: the Server may queue them for a disconnected
/// member's session); its node is then killed with SIGKILL and its session recovered on the
/// other node. Each acknowledged message still reaches the group: the node kept them
/// unacknowledged to JetStream for the away member, so they are offered to the group again.
/// Before, they were acknowledged when queued and lost with the node (0 of 5 arrived).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_messages_queued_for_an_away_member_survive_its_node_being_killed() {
    let nats = Nats::start(3, true);
    let config = config_file_with(&nats, "share_ack_wait_ms = 1000\n");
    let a = Node::start(&config, &nats, "a");
    let b = Node::start(&config, &nats, "b");
    let (mut member, _) = connect_persistent_as(a.addr, "away-member").await;
    let ack = member.subscribe("$share/away/w/#", QoS::AtLeastOnce).await;
    assert_eq!(ack.reason_codes, vec![ReasonCode::GrantedQoS1]);
    // The member goes away; its session (with the shared subscription) stays on node a.
    member.disconnect().await;
    let mut p = connect_within(b.addr, V5, "away-pub").await;
    for i in 0..5 {
        p.publish(&format!("w/{i}"), &i.to_string(), QoS::AtLeastOnce, false)
            .await;
    }
    // No member is connected anywhere: from its third offer (250 ms apart) each message is
    // queued for the away member on node a.
    tokio::time::sleep(Duration::from_secs(3)).await;
    a.kill9();
    let (mut member, present) = connect_persistent_as(b.addr, "away-member").await;
    assert!(present, "the member's session is recovered on node b");
    let mut got = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while got.len() < 5 {
        let left = deadline.saturating_duration_since(Instant::now());
        match member.next_within(left).await {
            Ok(Some(Packet::Publish(m))) => {
                member.ack(&m).await;
                got.insert(String::from_utf8_lossy(&m.payload).into_owned());
            }
            other => panic!("{got:?} of the 5 acknowledged messages, then {other:?}"),
        }
    }
    drop(b);
    let _ = std::fs::remove_file(&config);
}

/// A shared group's QoS 2 delivery that began on node a, restored from a's store after a
/// SIGKILL and resent there, is found again when a dies a second time and the member's session
/// is recovered on node b: resent with its packet id and DUP, and completed. Before, the
/// delivery restored from the store got a new id, b could not find its message, released the
/// packet id with a PUBREL, and no member got the message (v5 [MQTT-4.8.2-4]: it is that
/// member's once its delivery began).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_qos2_delivery_restored_from_a_store_survives_its_node_dying_again() {
    let nats = Nats::start(3, true);
    let config = config_file_with(&nats, "share_ack_wait_ms = 1000\n");
    let dir = std::env::temp_dir().join(format!("tern-cluster-shared-store-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let a = Node::start_in(&config, &nats, "a", Some(&dir));
    let b = Node::start(&config, &nats, "b");
    let (mut member, _) = connect_persistent_as(a.addr, "member-s").await;
    let ack = member.subscribe("$share/gs/ks/#", QoS::ExactlyOnce).await;
    assert_eq!(ack.reason_codes, vec![ReasonCode::GrantedQoS2]);
    let mut p = connect_within(b.addr, V5, "pub-s").await;
    p.publish("ks/1", "1", QoS::ExactlyOnce, false).await;
    // The member gets it and answers nothing, through two deaths of node a.
    let expect_resend = |got: Result<Option<Packet>, ()>, id: Option<tern_proto::PacketId>| match got {
        Ok(Some(Packet::Publish(m))) => {
            assert_eq!(&m.payload[..], b"1");
            if let Some(id) = id {
                assert_eq!(m.packet_id, Some(id), "resent with its packet id");
                // v5 [MQTT-3.3.1-1]
                assert!(m.dup, "resent with DUP");
            }
            m.packet_id.expect("QoS 2")
        }
        other => panic!("expected the message, got {other:?}"),
    };
    let id = expect_resend(member.next_within(Duration::from_secs(20)).await, None);
    tokio::time::sleep(Duration::from_millis(500)).await;
    a.kill9();
    drop(member);
    let a = Node::start_in(&config, &nats, "a", Some(&dir));
    let (mut member, present) = connect_persistent_as(a.addr, "member-s").await;
    assert!(present, "node a restored the session from its store");
    expect_resend(member.next_within(Duration::from_secs(20)).await, Some(id));
    tokio::time::sleep(Duration::from_millis(500)).await;
    a.kill9();
    drop(member);
    let (mut member, present) = connect_persistent_as(b.addr, "member-s").await;
    assert!(present, "node b recovered the session");
    expect_resend(member.next_within(Duration::from_secs(20)).await, Some(id));
    member.send(Packet::PubRec(Ack::new(id))).await;
    match member.next_within(Duration::from_secs(20)).await {
        Ok(Some(Packet::PubRel(r))) => assert_eq!(r.packet_id, id),
        other => panic!("expected PUBREL, got {other:?}"),
    }
    member.send(Packet::PubComp(Ack::new(id))).await;
    drop(b);
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_file(&config);
}

/// `GET path` on a loopback HTTP endpoint: the response's body.
fn http_get(addr: SocketAddr, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect to the HTTP endpoint");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).expect("response");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    response
}

/// The value of the figure `name` in a `/metrics` body.
fn figure(body: &str, name: &str) -> u64 {
    body.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in\n{body}"))
}

/// The value of the figure `name` in the `/metrics` of the node whose HTTP endpoint is `http`.
async fn metric(http: SocketAddr, name: &str) -> u64 {
    let name = name.to_string();
    tokio::task::spawn_blocking(move || figure(&http_get(http, "/metrics"), &name))
        .await
        .expect("read /metrics")
}

/// A cluster node's `/metrics` shows its cluster figures (`ClusterStats`): the QoS 1 message
/// its client published, stored in JetStream; the one another node's client published,
/// delivered here; the NATS subjects its subscription needs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_nodes_metrics_show_what_crosses_the_cluster() {
    let nats = Nats::start(3, true);
    let config = config_file(&nats);
    let (a, http) = Node::start_with(&config, &nats, "a", None, true);
    let http = http.expect("node a's HTTP endpoint");
    let b = Node::start(&config, &nats, "b");
    let mut sub = connect_within(a.addr, V5, "m-sub").await;
    sub.subscribe("m/#", QoS::AtLeastOnce).await;
    let mut from_b = connect_within(b.addr, V5, "m-pub-b").await;
    let mut from_a = connect_within(a.addr, V5, "m-pub-a").await;
    from_a.publish("m/a", "a", QoS::AtLeastOnce, false).await;
    // The subscription reaches node b before its publisher's message does.
    let mut got = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !got.contains("b") {
        from_b.publish("m/b", "b", QoS::AtLeastOnce, false).await;
        let left = deadline.saturating_duration_since(Instant::now());
        while let Ok(Some(Packet::Publish(m))) = sub.next_within(left.min(Duration::from_millis(300))).await {
            sub.ack(&m).await;
            got.insert(String::from_utf8_lossy(&m.payload).into_owned());
        }
        assert!(
            Instant::now() < deadline,
            "node b's message never reached node a: {got:?}"
        );
    }
    let body = tokio::task::spawn_blocking(move || http_get(http, "/metrics"))
        .await
        .unwrap();
    let value = |name: &str| figure(&body, name);
    assert!(
        value("tern_cluster_stored_total") >= 1,
        "node a's client's message stored"
    );
    assert!(
        value("tern_cluster_received_total") >= 1,
        "node b's client's message delivered here"
    );
    assert!(value("tern_cluster_wanted_subjects") >= 1);
    assert_eq!(value("tern_cluster_qos2_refused_total"), 0);
    assert_eq!(value("tern_cluster_undecodable_total"), 0);
    assert!(body.contains("# HELP tern_cluster_qos0_dropped"), "{body}");
    drop((a, b));
    let _ = std::fs::remove_file(&config);
}

/// A QoS 2 publisher that keeps its state across connections, as a client with a persistent
/// session does (v5 sections 4.3.3, 4.4 and 4.6): a PUBLISH not answered yet is sent again
/// with DUP and its packet id, a PUBREL again once its PUBREC came, in the order they were
/// first sent. Messages are numbered; packet ids follow the numbers (`id_of`).
struct ResendingPublisher {
    next: u64,
    /// Sent, no PUBREC yet: packet id → number.
    unanswered: std::collections::BTreeMap<u16, u64>,
    /// PUBREL sent, no PUBCOMP yet.
    released: std::collections::BTreeMap<u16, u64>,
    acked: BTreeSet<u64>,
    /// PUBCOMPs with 0x92 Packet Identifier not found.
    unknown: usize,
}

impl ResendingPublisher {
    /// The packet id of message `n`: ids come back every 40 messages (at most 20 are in
    /// flight), so that an id released before a kill is soon used for a new message.
    fn id_of(n: u64) -> tern_proto::PacketId {
        pid((n % 40) as u16 + 1)
    }

    fn publish(n: u64, dup: bool) -> Packet {
        let mut m = Publish::new("k/seq", n.to_string());
        m.qos = QoS::ExactlyOnce;
        m.packet_id = Some(Self::id_of(n));
        m.dup = dup;
        Packet::Publish(m)
    }

    /// Send `n` new messages and read the answers until none is missing; with `kill`, its
    /// node is killed when that many PUBRECs came (its other messages stored or not).
    async fn batch(&mut self, p: &mut Raw, n: u64, kill: Option<(usize, Node)>) -> bool {
        for _ in 0..n {
            let m = Self::publish(self.next, false);
            self.unanswered.insert(Self::id_of(self.next).get(), self.next);
            self.next += 1;
            p.send(m).await;
        }
        self.answers_killing(p, kill).await
    }

    /// Send `n` new messages and read nothing.
    async fn send_only(&mut self, p: &mut Raw, n: u64) {
        for _ in 0..n {
            let m = Self::publish(self.next, false);
            self.unanswered.insert(Self::id_of(self.next).get(), self.next);
            self.next += 1;
            p.send(m).await;
        }
    }

    /// On a new connection: what is in flight, again.
    async fn resume(&mut self, p: &mut Raw) -> bool {
        // In the order of the messages (ids come back, so not in the order of the ids).
        let mut unanswered: Vec<u64> = self.unanswered.values().copied().collect();
        unanswered.sort_unstable();
        for n in unanswered {
            p.send(Self::publish(n, true)).await;
        }
        let mut released: Vec<u64> = self.released.values().copied().collect();
        released.sort_unstable();
        for n in released {
            p.send(Packet::PubRel(Ack::new(Self::id_of(n)))).await;
        }
        self.answers_killing(p, None).await
    }

    /// Read PUBRECs (answered with PUBREL) and PUBCOMPs until nothing is in flight; `false`
    /// when the connection ended first (its node killed) or was silent for 30 s.
    async fn answers_killing(&mut self, p: &mut Raw, mut kill: Option<(usize, Node)>) -> bool {
        while !self.unanswered.is_empty() || !self.released.is_empty() {
            match p.next_within(Duration::from_secs(30)).await {
                Ok(Some(Packet::PubRec(a))) => {
                    assert_eq!(a.reason_code, ReasonCode::Success, "{a:?}");
                    if let Some((left, node)) = kill.take() {
                        match left {
                            0 | 1 => node.kill9(),
                            _ => kill = Some((left - 1, node)),
                        }
                    }
                    if let Some(n) = self.unanswered.remove(&a.packet_id.get()) {
                        self.released.insert(a.packet_id.get(), n);
                    }
                    p.send(Packet::PubRel(Ack::new(a.packet_id))).await;
                }
                Ok(Some(Packet::PubComp(a))) => {
                    // 0x92: the node did not know the id (counted; it must not happen).
                    if a.reason_code != ReasonCode::Success {
                        assert_eq!(a.reason_code, ReasonCode::PacketIdentifierNotFound);
                        self.unknown += 1;
                    }
                    let n = self
                        .released
                        .remove(&a.packet_id.get())
                        .expect("PUBCOMP of a released message");
                    self.acked.insert(n);
                }
                Ok(Some(Packet::Disconnect(_)) | None) | Err(()) => return false,
                Ok(Some(other)) => panic!("publisher: unexpected {other:?}"),
            }
        }
        true
    }
}

/// Connect the resending QoS 2 publisher (5.0, Session Expiry 600 s, Clean Start 0).
async fn connect_resending(addr: SocketAddr) -> (Raw, bool) {
    connect_persistent_as(addr, "qpub").await
}

/// The publisher's side of QoS 2 across a node's death. A QoS 2 publisher with a persistent
/// session sends numbered messages to node a, which is killed with SIGKILL during a batch
/// (once 1 to 10 of its PUBRECs came: some of the rest stored, some not, some PUBRECs out);
/// the publisher reconnects to node b, which recovers its session, and resends what it had in
/// flight (PUBLISH with DUP and the same packet id, or PUBREL). A subscriber on b must get
/// every message exactly once: a resent message that node a had stored is not stored again
/// (v5 [MQTT-4.3.3-10]: not delivered twice to onward recipients), one it had not stored is
/// stored now, and no new message is taken for an old one (packet ids come back every 40
/// messages). Each next round the session moves back to the restarted node a by a live
/// handover while 10 messages just sent on b are unanswered (b hands their ids over once it
/// stored them; their resends to a are answered, not stored again). Rounds:
/// `TERN_CLUSTER_KILL_ROUNDS`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_qos2_publisher_resending_after_its_node_was_killed_gets_each_message_delivered_once() {
    resending_loop(false).await;
}

/// The same with node a restarted from its store (`--data-dir`) and the publisher back on
/// it: the store kept the packet ids of messages the cluster had not stored yet when the node
/// was killed; the restarted node asks JetStream and takes their resends as new.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_qos2_publisher_resending_to_its_node_restarted_from_its_store_gets_each_message_delivered_once() {
    resending_loop(true).await;
}

async fn resending_loop(from_store: bool) {
    let nats = Nats::start(3, true);
    let config = config_file(&nats);
    // Only the variant with a store touches its directory: the other variant, run beside it
    // in the same process, emptied it at its start and end, under the running node a (whose
    // restart then found no session: "the session of the killed node is found" failed in 1
    // of about 8 runs of the file).
    let dir = std::env::temp_dir().join(format!("tern-cluster-q2in-store-{}", std::process::id()));
    if from_store {
        let _ = std::fs::remove_dir_all(&dir);
    }
    let data_dir = from_store.then_some(dir.as_path());
    let mut a = Some(Node::start_in(&config, &nats, "a", data_dir));
    let b = Node::start(&config, &nats, "b");
    let mut sub = connect_within(b.addr, V5, "sub").await;
    sub.subscribe("k/#", QoS::ExactlyOnce).await;
    let got = Arc::new(Mutex::new(Vec::new()));
    let receiving = tokio::spawn(subscriber(sub, got.clone()));
    let mut publisher = ResendingPublisher {
        next: 0,
        unanswered: Default::default(),
        released: Default::default(),
        acked: BTreeSet::new(),
        unknown: 0,
    };
    let mut rand = seeded_random("QoS 2 resending publisher loop");
    let started = Instant::now();
    let (mut resent, mut reconnects, mut moved_in_flight) = (0, 0, 0);
    // The publisher's connection to node b after a recovery there.
    let mut on_b: Option<Raw> = None;
    for round in 0..rounds() {
        // On node a: from b after the first round (a live handover, with 10 messages just
        // sent on b whose answers are not read: b hands their ids over once it stored them,
        // and the client resends them to a).
        let leaving = match on_b.take() {
            Some(mut pb) => {
                publisher.send_only(&mut pb, 10).await;
                moved_in_flight += 10;
                Some(pb)
            }
            None => None,
        };
        let (mut p, present) = connect_resending(a.as_ref().expect("running").addr).await;
        drop(leaving);
        assert!(
            round == 0 || present,
            "round {round}: the session is found on node a"
        );
        if !publisher.unanswered.is_empty() {
            assert!(
                publisher.resume(&mut p).await,
                "round {round}: resent after the move"
            );
        }
        for _ in 0..5 {
            assert!(publisher.batch(&mut p, 10, None).await, "round {round}");
        }
        // Killed once 1 to 10 of the batch's PUBRECs came: some of the rest stored, some
        // PUBRELs on their way.
        let victim = a.take().expect("running");
        let done = publisher
            .batch(&mut p, 20, Some((1 + rand(10) as usize, victim)))
            .await;
        assert!(!done, "round {round}: the node was killed during the batch");
        // Whatever is in flight goes again to node b (or to node a restarted from its
        // store), until all of it is complete.
        resent += publisher.unanswered.len() + publisher.released.len();
        if from_store {
            a = Some(Node::start_in(&config, &nats, "a", data_dir));
        }
        let to = match &a {
            Some(a) => a.addr,
            None => b.addr,
        };
        let p = loop {
            let (mut p, present) = connect_resending(to).await;
            assert!(present, "round {round}: the session of the killed node is found");
            if publisher.resume(&mut p).await {
                for _ in 0..3 {
                    assert!(publisher.batch(&mut p, 10, None).await, "round {round}");
                }
                break p;
            }
            reconnects += 1;
        };
        if !from_store {
            on_b = Some(p);
            a = Some(Node::start(&config, &nats, "a"));
        }
    }
    assert_eq!(
        publisher.acked.len() as u64,
        publisher.next,
        "every message completed"
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while got.lock().unwrap().len() < publisher.next as usize && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    receiving.abort();
    let got = got.lock().unwrap().clone();
    let received: BTreeSet<u64> = got.iter().copied().collect();
    let lost: Vec<u64> = publisher.acked.difference(&received).copied().collect();
    let duplicates = got.len() - received.len();
    let order = order_violations(&got, &BTreeSet::new());
    let out_of_order: Vec<(u64, u64)> = got
        .windows(2)
        .filter(|w| w[1] <= w[0])
        .map(|w| (w[0], w[1]))
        .take(10)
        .collect();
    if let Some((_, later)) = out_of_order.first() {
        let at = got.iter().position(|n| n == later).unwrap_or(0);
        eprintln!(
            "out of order (number, then the next one received): {out_of_order:?}; around the first: {:?}",
            &got[at.saturating_sub(25)..(at + 5).min(got.len())]
        );
    }
    eprintln!(
        "QoS 2 resending publisher loop (restarted from its store: {from_store}): {} rounds in {:.1?}: acknowledged {}, resent after a kill {resent}, \
         received {}, lost {}, duplicates {duplicates}, order violations {order}, reconnects {reconnects}, \
         PUBCOMPs with 0x92 {}, moved to node a unanswered {moved_in_flight}",
        rounds(),
        started.elapsed(),
        publisher.acked.len(),
        received.len(),
        lost.len(),
        publisher.unknown
    );
    assert!(lost.is_empty(), "acknowledged and lost: {lost:?}");
    assert_eq!(duplicates, 0, "QoS 2 received once");
    assert_eq!(order, 0, "in the publisher's order");
    // A PUBCOMP with 0x92 is allowed (v5 [MQTT-4.3.3-11] asks for a PUBCOMP, whatever the
    // id): a PUBREL resent after its release was written and the PUBCOMP lost with the node.
    // A PUBREL of an id still awaited finds it (the deterministic test below).
    drop((a, b));
    if from_store {
        let _ = std::fs::remove_dir_all(&dir);
    }
    let _ = std::fs::remove_file(&config);
}

/// The incoming QoS 2 packet ids a killed node held for a publisher are known to the node
/// that recovers its session: a resent PUBLISH whose message is stored is answered and not
/// delivered again (v5 [MQTT-4.3.3-10]), the resent PUBREL completes with 0x00 rather than
/// 0x92 Packet Identifier not found (v5 [MQTT-4.3.3-11]), and an id released before the kill
/// starts a new message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos2_ids_a_killed_node_held_for_a_publisher_are_known_where_its_session_is_recovered() {
    let nats = Nats::start(3, true);
    let config = config_file(&nats);
    let a = Node::start(&config, &nats, "a");
    let b = Node::start(&config, &nats, "b");
    let mut sub = connect_within(b.addr, V5, "sub").await;
    sub.subscribe("k/#", QoS::ExactlyOnce).await;
    let got = Arc::new(Mutex::new(Vec::new()));
    let receiving = tokio::spawn(subscriber(sub, got.clone()));
    let (mut p, _) = connect_resending(a.addr).await;
    let send = |n: u64, id: u16, dup: bool| {
        let mut m = Publish::new("k/seq", n.to_string());
        m.qos = QoS::ExactlyOnce;
        m.packet_id = Some(pid(id));
        m.dup = dup;
        Packet::Publish(m)
    };
    let expect = |packet: Result<Option<Packet>, ()>, what: &str| -> Ack {
        match packet {
            Ok(Some(Packet::PubRec(a) | Packet::PubComp(a))) => a,
            other => panic!("expected {what}, got {other:?}"),
        }
    };
    // Message 1 (id 1): PUBREC, no PUBREL yet. Message 2 (id 2): complete.
    p.send(send(1, 1, false)).await;
    let rec = expect(p.next_within(Duration::from_secs(20)).await, "PUBREC 1");
    assert_eq!((rec.packet_id, rec.reason_code), (pid(1), ReasonCode::Success));
    p.send(send(2, 2, false)).await;
    let rec = expect(p.next_within(Duration::from_secs(20)).await, "PUBREC 2");
    assert_eq!(rec.packet_id, pid(2));
    p.send(Packet::PubRel(Ack::new(pid(2)))).await;
    let comp = expect(p.next_within(Duration::from_secs(20)).await, "PUBCOMP 2");
    assert_eq!((comp.packet_id, comp.reason_code), (pid(2), ReasonCode::Success));
    a.kill9();
    drop(p);
    let (mut p, present) = connect_resending(b.addr).await;
    assert!(present, "the session of the killed node is recovered");
    // The client resends PUBLISH 1 (it may not have seen the PUBREC), then its PUBREL.
    p.send(send(1, 1, true)).await;
    let rec = expect(p.next_within(Duration::from_secs(20)).await, "PUBREC 1 again");
    assert_eq!((rec.packet_id, rec.reason_code), (pid(1), ReasonCode::Success));
    p.send(Packet::PubRel(Ack::new(pid(1)))).await;
    let comp = expect(p.next_within(Duration::from_secs(20)).await, "PUBCOMP 1");
    assert_eq!(
        (comp.packet_id, comp.reason_code),
        (pid(1), ReasonCode::Success),
        "the recovering node knew id 1"
    );
    // Id 2 was released before the kill: a new message.
    p.send(send(3, 2, false)).await;
    let rec = expect(p.next_within(Duration::from_secs(20)).await, "PUBREC 3");
    assert_eq!((rec.packet_id, rec.reason_code), (pid(2), ReasonCode::Success));
    p.send(Packet::PubRel(Ack::new(pid(2)))).await;
    expect(p.next_within(Duration::from_secs(20)).await, "PUBCOMP 3");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !got.lock().unwrap().contains(&3) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    receiving.abort();
    assert_eq!(*got.lock().unwrap(), vec![1, 2, 3], "each message once, in order");
    drop(b);
    let _ = std::fs::remove_file(&config);
}

/// A node restarted from its own store after SIGKILL: the persistent session it held, offline,
/// gets what its store kept and what other nodes' publishers sent while the node was down
/// (read from the streams from the session's floor), each once: what the store kept is not
/// read again from the streams (before its payload records said where each message lies in
/// them, the 20 it kept came twice). QoS 1 packs off: each message has a place of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_restarted_from_its_store_delivers_what_was_published_while_it_was_down() {
    let duplicates = restarted_from_its_store("qos1_pack = 1\n", "single").await;
    assert_eq!(duplicates, 0, "what the store kept came again from the streams");
}

/// The same with QoS 1 packs (the default): nothing acknowledged is lost. A pack's messages
/// share one place, and the store cannot say which of them it holds, so a pack it kept is
/// read again whole (duplicates, which QoS 1 allows; 19 of 71 once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_restarted_from_its_store_with_qos1_packs_loses_nothing_acknowledged() {
    restarted_from_its_store("", "packs").await;
}

/// Run the restart-from-store scenario with `more` in the `[cluster]` table; the duplicates.
async fn restarted_from_its_store(more: &str, tag: &str) -> usize {
    let nats = Nats::start(3, true);
    let config = config_file_with(&nats, more);
    let dir = std::env::temp_dir().join(format!("tern-cluster-store-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let a = Node::start_in(&config, &nats, "a", Some(&dir));
    let b = Node::start(&config, &nats, "b");
    let (mut sub, _) = connect_persistent(a.addr).await;
    sub.subscribe("k/#", QoS::AtLeastOnce).await;
    sub.disconnect().await;
    let mut publisher = Publisher {
        qos: QoS::AtLeastOnce,
        next: 0,
        acked: BTreeSet::new(),
    };
    // Some while node a runs (queued in its store), some while it is down.
    let mut p = connect_within(b.addr, V3, "pub").await;
    assert!(publisher.batch(&mut p, 20, Duration::from_secs(30), || ()).await);
    tokio::time::sleep(Duration::from_secs(1)).await;
    a.kill9();
    for _ in 0..5 {
        assert!(publisher.batch(&mut p, 10, Duration::from_secs(30), || ()).await);
    }
    let a = Node::start_in(&config, &nats, "a", Some(&dir));
    let (sub, present) = connect_persistent(a.addr).await;
    assert!(present, "the stored session is still node a's");
    let got = Arc::new(Mutex::new(Vec::new()));
    let receiving = tokio::spawn(persistent_subscriber(sub, got.clone()));
    let (_, received, lost, duplicates) = finish(&mut publisher, p, &got, receiving).await;
    eprintln!(
        "node restarted from its store ({tag}): acknowledged {}, received {}, lost {}, duplicates {duplicates}",
        publisher.acked.len(),
        received.len(),
        lost.len()
    );
    assert!(lost.is_empty(), "acknowledged and lost: {lost:?}");
    drop((a, b));
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_file(&config);
    duplicates
}

/// `tern cluster check` against NATS servers: one line per requirement, `ok` or `FAIL`, and
/// the exit status says whether all hold.
fn cluster_check(nats: &Nats) -> (bool, String) {
    cluster_check_with(nats, &[])
}

/// [`cluster_check`] with more arguments (`--config FILE`).
fn cluster_check_with(nats: &Nats, more: &[&std::ffi::OsStr]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tern"))
        .args(["cluster", "check", "--cluster"])
        .arg(nats.urls().join(","))
        .arg("--monitor")
        .arg(nats.monitors().join(","))
        .args(more)
        .output()
        .expect("run tern cluster check");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn tern_cluster_check_says_what_nats_lacks() {
    // NATS as Tern needs it: every line ok, exit 0; the streams are not there yet.
    let nats = Nats::start(3, true);
    let (ok, text) = cluster_check(&nats);
    assert!(ok, "{text}");
    assert!(
        text.lines().all(|l| l.starts_with("ok ")),
        "one line per requirement, all ok:\n{text}"
    );
    assert!(text.contains("sync_interval: always"), "{text}");
    assert!(
        text.contains("none yet"),
        "no stream is created by the check:\n{text}"
    );
    // A node made one session bucket: a check for three says that line fails, naming the
    // setting (a node would refuse to start).
    let config = config_file(&nats);
    drop(Node::start(&config, &nats, "a"));
    let three = config.with_extension("three.toml");
    std::fs::write(&three, "[cluster]\nsession_buckets = 3\n").unwrap();
    let (ok, text) = cluster_check_with(&nats, &["--config".as_ref(), three.as_os_str()]);
    assert!(!ok, "{text}");
    let fail: Vec<&str> = text.lines().filter(|l| l.starts_with("FAIL")).collect();
    assert_eq!(fail.len(), 1, "{text}");
    assert!(fail[0].contains("cluster.session_buckets"), "{text}");
    let _ = std::fs::remove_file(&config);
    let _ = std::fs::remove_file(&three);
    drop(nats);

    // NATS' default fsync: that line fails, naming the setting, and the exit status is 1.
    let nats = Nats::start(1, false);
    let (ok, text) = cluster_check(&nats);
    assert!(!ok, "{text}");
    let fail: Vec<&str> = text.lines().filter(|l| l.starts_with("FAIL")).collect();
    assert!(fail.iter().any(|l| l.contains("sync_interval: always")), "{text}");
    // One server cannot keep 3 copies (cluster.replicas defaults to 3).
    assert!(fail.iter().any(|l| l.contains("cluster.replicas = 3")), "{text}");
    assert_eq!(fail.len(), 2, "{text}");
    assert!(text.contains("ok   NATS 2.11 or later"), "{text}");
}

/// Send `signal` (`STOP`, `CONT`) to the node's process.
fn signal(node: &Node, signal: &str) {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(node.child.id().to_string())
        .status()
        .expect("kill");
    assert!(status.success(), "kill -{signal}");
}

/// A 5.0 connection of `id` to `addr` with a QoS 1 will `ID is gone` on `will/ID`.
async fn connect_with_will(addr: SocketAddr, id: &str) -> Raw {
    let mut c = tern_proto::Connect::new(V5, id);
    c.keep_alive = 0;
    c.will = Some(tern_proto::Will {
        topic: format!("will/{id}").into(),
        payload: format!("{id} is gone").into_bytes().into(),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: Default::default(),
    });
    let (raw, ack) = connect_patiently(addr, c).await;
    assert_eq!(ack.reason_code, ReasonCode::Success, "{ack:?}");
    raw
}

/// The payloads of the QoS 1 messages `sub` receives, acknowledged, until `n` came or
/// `wait` passed, then any more within `quiet`.
async fn payloads(sub: &mut Raw, n: usize, wait: Duration, quiet: Duration) -> Vec<String> {
    let mut got = Vec::new();
    let deadline = Instant::now() + wait;
    loop {
        let left = match got.len() < n {
            true => deadline.saturating_duration_since(Instant::now()),
            false => quiet,
        };
        match sub.next_within(left).await {
            Ok(Some(Packet::Publish(m))) => {
                sub.ack(&m).await;
                got.push(String::from_utf8_lossy(&m.payload).into_owned());
            }
            Ok(Some(_)) => {}
            _ => return got,
        }
    }
}

/// Jepsen-style pause (../shared/RELIABILITY.md, "Network partition (cluster)"): node a is
/// stopped with SIGSTOP for longer than `node_timeout_ms`, then resumed with SIGCONT. Node b
/// takes it for gone and publishes its connection's will; QoS 1 messages acknowledged by b
/// meanwhile reach a persistent subscriber on a, each once and in order, once a runs again;
/// a then closes the connection whose will went out (DISCONNECT 0x89), publishes no will
/// again, and reaps none of node b's wills (it was the one out of touch).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_node_loses_nothing_acknowledged_and_each_will_goes_out_once() {
    let nats = Nats::start(3, true);
    let config = config_file_with(&nats, "node_timeout_ms = 1500\n");
    let (a, http) = Node::start_with(&config, &nats, "a", None, true);
    let http = http.expect("node a's HTTP endpoint");
    let b = Node::start(&config, &nats, "b");
    let mut watch = connect_within(b.addr, V5, "pause-watch").await;
    watch.subscribe("will/#", QoS::AtLeastOnce).await;
    let mut on_a = connect_with_will(a.addr, "pause-a").await;
    // The will is written to JetStream after the CONNACK: node a is stopped only once it is
    // there (a node stopped before would take it along, as one broker does). Failed once in
    // CI: the first write came before the bucket had a leader, and the next was a beat later.
    let deadline = Instant::now() + Duration::from_secs(30);
    while metric(http, "tern_cluster_wills_stored_total").await < 1 {
        assert!(Instant::now() < deadline, "node a never stored its client's will");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut on_b = connect_with_will(b.addr, "pause-b").await;
    let (mut psub, _) = connect_persistent_as(a.addr, "pause-sub").await;
    psub.subscribe("pause/t", QoS::AtLeastOnce).await;
    let mut p = connect_within(b.addr, V5, "pause-pub").await;
    for i in 0..10 {
        p.publish("pause/t", &i.to_string(), QoS::AtLeastOnce, false)
            .await;
    }
    let before: Vec<String> = (0..10).map(|i| i.to_string()).collect();
    assert_eq!(
        payloads(&mut psub, 10, Duration::from_secs(30), Duration::ZERO).await,
        before
    );

    signal(&a, "STOP");
    let wills = payloads(&mut watch, 1, Duration::from_secs(30), Duration::from_millis(500)).await;
    assert_eq!(wills, ["pause-a is gone"], "node b took node a for gone");
    // Acknowledged by node b while node a is stopped.
    for i in 10..30 {
        p.publish("pause/t", &i.to_string(), QoS::AtLeastOnce, false)
            .await;
    }
    signal(&a, "CONT");

    let during: Vec<String> = (10..30).map(|i| i.to_string()).collect();
    assert_eq!(
        payloads(&mut psub, 20, Duration::from_secs(30), Duration::from_millis(500)).await,
        during,
        "what was acknowledged during the pause, once and in order"
    );
    match on_a.next_within(Duration::from_secs(30)).await {
        Ok(Some(Packet::Disconnect(d))) => assert_eq!(d.reason_code, Some(ReasonCode::ServerBusy), "{d:?}"),
        other => {
            panic!("the connection whose will node b published: expected DISCONNECT 0x89, got {other:?}")
        }
    }
    assert_eq!(
        payloads(&mut watch, 0, Duration::ZERO, Duration::from_secs(3)).await,
        Vec::<String>::new(),
        "no will again, and none of node b's"
    );
    on_b.sync().await;
    // Node b's client kept its will too: dropped without DISCONNECT, it goes out once.
    drop(on_b);
    assert_eq!(
        payloads(&mut watch, 1, Duration::from_secs(30), Duration::from_secs(1)).await,
        ["pause-b is gone"]
    );
    drop((a, b));
}
