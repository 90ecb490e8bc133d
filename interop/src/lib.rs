//! Helpers for the interoperability tests: start Tern in process and run an
//! external peer program with a deadline.

use std::net::SocketAddr;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use tern_broker::{BrokerBuilder, BrokerHandle};

/// Start a Tern broker on 127.0.0.1 with an ephemeral port.
pub async fn start_tern() -> Result<BrokerHandle, tern_broker::BrokerError> {
    start_tern_with(|b| b).await
}

/// Start a Tern broker on 127.0.0.1 with an ephemeral port (the first listener),
/// with more listeners or settings from `f`.
pub async fn start_tern_with(
    f: impl FnOnce(BrokerBuilder) -> BrokerBuilder,
) -> Result<BrokerHandle, tern_broker::BrokerError> {
    let addr = SocketAddr::from(([127, 0, 0, 1], 0));
    Ok(f(BrokerBuilder::new().listen(addr)).bind().await?.spawn())
}

/// Whether a program can be found on PATH (or at an absolute path).
pub fn have(program: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {program}"))
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Fail with a message telling how to install a missing peer.
pub fn require(program: &str, install: &str) {
    assert!(
        have(program),
        "{program} is not installed; .ci/run installs it ({install})"
    );
}

/// Run a command to completion on a blocking thread, killing it after `limit`.
pub async fn run(mut cmd: Command, limit: Duration) -> Output {
    tokio::task::spawn_blocking(move || {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        let started = Instant::now();
        loop {
            match child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if started.elapsed() > limit => {
                    let _ = child.kill();
                    break;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                Err(e) => panic!("wait failed: {e}"),
            }
        }
        child
            .wait_with_output()
            .unwrap_or_else(|e| panic!("cannot collect output: {e}"))
    })
    .await
    .unwrap_or_else(|e| panic!("runner thread failed: {e}"))
}

/// Start a command in the background (stdout piped), returning the child.
pub fn spawn(mut cmd: Command) -> std::process::Child {
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"))
}
