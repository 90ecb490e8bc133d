//! A TCP relay that can be cut: while down it closes the connections it carries and every new
//! one at once, so that the peer behind it is out of reach but keeps running, with its
//! state (a bridge's remote broker, a cluster node's NATS server). It can also be paused: its
//! connections stay open and carry nothing until it resumes, as across a partition that
//! drops packets (what was sent meanwhile then arrives, as TCP would send it again).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A relay on a free loopback port to `127.0.0.1:target`; down until [`Relay::set_up`].
pub struct Relay {
    /// The port it listens on.
    pub port: u16,
    up: Arc<AtomicBool>,
    /// Whether the connections carry nothing for now.
    paused: watch::Sender<bool>,
    /// Bumped to close the connections carried so far.
    cut: watch::Sender<u64>,
    accept: tokio::task::JoinHandle<()>,
}

impl Relay {
    /// Listen on a free loopback port; carry nothing yet.
    pub async fn start(target: u16) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind a relay");
        let port = listener.local_addr().expect("relay address").port();
        let up = Arc::new(AtomicBool::new(false));
        let (cut, cuts) = watch::channel(0u64);
        let (paused, pauses) = watch::channel(false);
        let accept = {
            let up = up.clone();
            tokio::spawn(async move {
                loop {
                    let Ok((inbound, _)) = listener.accept().await else {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    };
                    // Marked before `up` is read: a cut from now on closes this connection.
                    let mut cuts = cuts.clone();
                    cuts.mark_unchanged();
                    if !up.load(Ordering::SeqCst) {
                        continue;
                    }
                    let pauses = pauses.clone();
                    tokio::spawn(async move {
                        let Ok(outbound) = TcpStream::connect(("127.0.0.1", target)).await else {
                            return;
                        };
                        let ((in_r, in_w), (out_r, out_w)) = (inbound.into_split(), outbound.into_split());
                        // Each way until its end (then the other side is told: a half close).
                        tokio::select! {
                            _ = async { tokio::join!(carry(in_r, out_w, pauses.clone()), carry(out_r, in_w, pauses)) } => {}
                            _ = cuts.changed() => {}
                        }
                    });
                }
            })
        };
        Relay {
            port,
            up,
            paused,
            cut,
            accept,
        }
    }

    /// Carry nothing and close nothing (`true`): the connections, and new ones, stay open
    /// and what is sent waits; or carry it all again (`false`).
    pub fn pause(&self, paused: bool) {
        self.paused.send_replace(paused);
    }

    /// Carry connections (`true`), or close them all and refuse new ones (`false`).
    pub fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::SeqCst);
        if !up {
            self.cut.send_modify(|n| *n += 1);
        }
    }
}

/// Copy `from` to `to` until `from` ends (then `to` is shut down for writing) or either
/// fails, reading nothing while paused (what the peer sends meanwhile waits in its socket's
/// buffers).
async fn carry(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut paused: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if paused.wait_for(|p| !*p).await.is_err() {
            return;
        }
        tokio::select! {
            read = from.read(&mut buf) => {
                let n = match read {
                    Ok(0) => {
                        let _ = to.shutdown().await;
                        return;
                    }
                    Err(_) => return,
                    Ok(n) => n,
                };
                // Read just as the pause came: held until it ends.
                if paused.wait_for(|p| !*p).await.is_err() || to.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
            _ = paused.changed() => {}
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.set_up(false);
        self.accept.abort();
    }
}
