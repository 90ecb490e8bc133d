//! A TCP relay that can be cut: while down it closes the connections it carries and every new
//! one at once, so that the peer behind it is out of reach but keeps running, with its
//! state (a bridge's remote broker, a cluster node's NATS server).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A relay on a free loopback port to `127.0.0.1:target`; down until [`Relay::set_up`].
pub struct Relay {
    /// The port it listens on.
    pub port: u16,
    up: Arc<AtomicBool>,
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
        let accept = {
            let up = up.clone();
            tokio::spawn(async move {
                loop {
                    let Ok((mut inbound, _)) = listener.accept().await else {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    };
                    // Marked before `up` is read: a cut from now on closes this connection.
                    let mut cuts = cuts.clone();
                    cuts.mark_unchanged();
                    if !up.load(Ordering::SeqCst) {
                        continue;
                    }
                    tokio::spawn(async move {
                        let Ok(mut outbound) = TcpStream::connect(("127.0.0.1", target)).await else {
                            return;
                        };
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                            _ = cuts.changed() => {}
                        }
                    });
                }
            })
        };
        Relay {
            port,
            up,
            cut,
            accept,
        }
    }

    /// Carry connections (`true`), or close them all and refuse new ones (`false`).
    pub fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::SeqCst);
        if !up {
            self.cut.send_modify(|n| *n += 1);
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.set_up(false);
        self.accept.abort();
    }
}
