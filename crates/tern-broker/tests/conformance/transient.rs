//! Chapter 4.8 (3.1.1): a transient error while processing a packet closes the connection.

use std::path::PathBuf;

use tern_broker::BrokerBuilder;
use tern_proto::{Packet, QoS};

use crate::support::*;

/// A tmpfs of `size` mounted on a fresh directory, unmounted and removed on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(size: &str) -> Option<Tmpfs> {
        let dir = std::env::temp_dir().join(format!("tern-conf-full-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .status()
            .is_ok_and(|s| s.success());
        if !mounted {
            assert!(
                std::env::var("CI").is_err(),
                "CI runs as root and can mount a tmpfs"
            );
            eprintln!("skipped: mounting a tmpfs needs root");
            let _ = std::fs::remove_dir_all(&dir);
            return None;
        }
        Some(Tmpfs(dir))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[tokio::test]
async fn a_store_that_cannot_keep_a_message_closes_the_3_1_1_connection() {
    let Some(fs) = Tmpfs::mount("1M") else { return };
    let data = fs.0.join("data");
    let b = BrokerBuilder::new()
        .listen("127.0.0.1:0".parse().unwrap())
        .configure(|c| {
            c.data_dir = Some(data.clone());
            c.max_queued_messages = 100_000;
            c.max_queued_bytes = 1 << 30;
        })
        .bind()
        .await
        .expect("bind")
        .spawn();
    let (mut sub, _) = Raw::connect_with(b.addr(), persistent(V3, "full-sub")).await;
    sub.subscribe("full/#", QoS::AtLeastOnce).await;
    sub.disconnect().await;
    let mut publ = Raw::connect(b.addr(), V3, "full-pub").await;
    let payload = "x".repeat(32 * 1024);
    let mut closed = false;
    for i in 1..=100u16 {
        publ.send(Packet::Publish(publish(
            &format!("full/{i}"),
            &payload,
            QoS::AtLeastOnce,
            i,
        )))
        .await;
        match publ.next().await {
            Some(Packet::PubAck(a)) => assert_eq!(a.packet_id, pid(i)),
            // v3.1.1 [MQTT-4.8.0-2]: the store cannot take it (a transient error): the
            // connection is closed, and the message is not acknowledged.
            None => {
                closed = true;
                break;
            }
            Some(p) => panic!("{p:?}"),
        }
    }
    assert!(closed, "1 MB cannot hold 100 messages of 32 KB");
    b.shutdown().await;
}
