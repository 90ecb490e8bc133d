//! mosquitto_pub / mosquitto_sub (Debian package mosquitto-clients) against Tern.

use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tern_interop::{require, run, spawn, start_tern};

fn sub_cmd(port: u16, version: &str, args: &[&str]) -> Command {
    let mut c = Command::new("mosquitto_sub");
    c.args(["-h", "127.0.0.1", "-p", &port.to_string(), "-V", version])
        .args(args);
    c
}

fn pub_cmd(port: u16, version: &str, args: &[&str]) -> Command {
    let mut c = Command::new("mosquitto_pub");
    c.args(["-h", "127.0.0.1", "-p", &port.to_string(), "-V", version])
        .args(args);
    c
}

/// Collect a background child's stdout into a shared string.
fn watch(child: &mut std::process::Child) -> Arc<Mutex<String>> {
    use std::io::{BufRead, BufReader};
    let stdout = child.stdout.take().unwrap();
    let out = Arc::new(Mutex::new(String::new()));
    let o = out.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let mut o = o.lock().unwrap();
            o.push_str(&line.unwrap_or_default());
            o.push('\n');
        }
    });
    out
}

/// Publish a marker until a background mosquitto_sub shows it: then it has subscribed.
async fn wait_subscribed(port: u16, version: &str, topic: &str, out: &Arc<Mutex<String>>) {
    for _ in 0..50 {
        run(
            pub_cmd(port, version, &["-t", topic, "-m", "ready", "-q", "0"]),
            Duration::from_secs(5),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        if out.lock().unwrap().contains("ready") {
            return;
        }
    }
    panic!("mosquitto_sub never subscribed: {:?}", out.lock().unwrap());
}

/// Wait (bounded) for a child to exit and return what it printed.
async fn finish(mut child: std::process::Child, out: Arc<Mutex<String>>) -> String {
    for _ in 0..200 {
        if child.try_wait().ok().flatten().is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let s = out.lock().unwrap().clone();
    s
}

#[tokio::test]
async fn mosquitto_pub_to_mosquitto_sub_all_qos_both_versions() {
    // v3.1.1 [MQTT-7.0.0-2]: a third-party client needs no extension to work with Tern.
    require("mosquitto_sub", "apt-get install mosquitto-clients");
    let broker = start_tern().await.unwrap();
    let port = broker.addr().port();
    for version in ["mqttv311", "mqttv5"] {
        for qos in ["0", "1", "2"] {
            // -C 4: the "ready" marker plus three messages.
            let mut sub = spawn(sub_cmd(
                port,
                version,
                &["-t", "it/#", "-q", qos, "-v", "-C", "4", "-W", "15", "-i", "msub"],
            ));
            let lines = watch(&mut sub);
            wait_subscribed(port, version, "it/ready", &lines).await;
            for i in 0..3 {
                let out = run(
                    pub_cmd(
                        port,
                        version,
                        &["-t", &format!("it/{i}"), "-m", &format!("msg{i}"), "-q", qos],
                    ),
                    Duration::from_secs(5),
                )
                .await;
                assert!(
                    out.status.success(),
                    "mosquitto_pub failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            let out = finish(sub, lines).await;
            for i in 0..3 {
                assert!(
                    out.contains(&format!("it/{i} msg{i}")),
                    "{version} qos {qos}: missing msg{i} in {out:?}"
                );
            }
        }
    }
}

#[tokio::test]
async fn retained_message_reaches_a_later_mosquitto_sub() {
    require("mosquitto_sub", "apt-get install mosquitto-clients");
    let broker = start_tern().await.unwrap();
    let port = broker.addr().port();
    let out = run(
        pub_cmd(
            port,
            "mqttv311",
            &["-t", "home/lamp", "-m", "on", "-r", "-q", "1"],
        ),
        Duration::from_secs(5),
    )
    .await;
    assert!(out.status.success());
    for version in ["mqttv311", "mqttv5"] {
        let out = run(
            sub_cmd(port, version, &["-t", "home/#", "-v", "-C", "1", "-W", "5"]),
            Duration::from_secs(10),
        )
        .await;
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "home/lamp on",
            "{version}"
        );
    }
    // An empty retained message deletes it: the next subscriber times out with nothing.
    run(
        pub_cmd(port, "mqttv5", &["-t", "home/lamp", "-n", "-r"]),
        Duration::from_secs(5),
    )
    .await;
    let out = run(
        sub_cmd(port, "mqttv5", &["-t", "home/#", "-v", "-C", "1", "-W", "1"]),
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "");
}

#[tokio::test]
async fn mosquitto_sub_persistent_session_gets_messages_sent_while_offline() {
    require("mosquitto_sub", "apt-get install mosquitto-clients");
    let broker = start_tern().await.unwrap();
    let port = broker.addr().port();
    // Create the session: subscribe with clean session off, leave at once (-E).
    let out = run(
        sub_cmd(
            port,
            "mqttv311",
            &["-t", "offline/#", "-q", "1", "-c", "-i", "persist", "-E"],
        ),
        Duration::from_secs(5),
    )
    .await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for i in 0..3 {
        run(
            pub_cmd(
                port,
                "mqttv311",
                &["-t", "offline/x", "-m", &format!("m{i}"), "-q", "1"],
            ),
            Duration::from_secs(5),
        )
        .await;
    }
    let out = run(
        sub_cmd(
            port,
            "mqttv311",
            &[
                "-t",
                "offline/#",
                "-q",
                "1",
                "-c",
                "-i",
                "persist",
                "-C",
                "3",
                "-W",
                "5",
            ],
        ),
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "m0\nm1\nm2\n");
}

#[tokio::test]
async fn mosquitto_sub_will_is_delivered_when_a_client_is_killed() {
    require("mosquitto_sub", "apt-get install mosquitto-clients");
    let broker = start_tern().await.unwrap();
    let port = broker.addr().port();
    let mut watcher = spawn(sub_cmd(
        port,
        "mqttv5",
        &["-t", "status/#", "-v", "-C", "2", "-W", "15"],
    ));
    let lines = watch(&mut watcher);
    wait_subscribed(port, "mqttv5", "status/ready", &lines).await;
    let mut doomed = spawn(sub_cmd(
        port,
        "mqttv5",
        &[
            "-t",
            "nothing",
            "--will-topic",
            "status/doomed",
            "--will-payload",
            "offline",
            "-i",
            "doomed",
        ],
    ));
    tokio::time::sleep(Duration::from_millis(800)).await;
    let _ = doomed.kill(); // SIGKILL: no DISCONNECT is sent
    let _ = doomed.wait();
    let out = finish(watcher, lines).await;
    assert!(out.contains("status/doomed offline"), "{out:?}");
}
