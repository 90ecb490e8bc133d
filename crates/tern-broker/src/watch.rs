//! Watching a topic filter: every message routed on a matching topic (from clients, wills,
//! the admin API; `$SYS` too when the filter asks for it), for the dashboard's "watch" view.
//!
//! With no watch running, routing a message costs one relaxed load of `Watcher::on`. While
//! watches run, each routed message is matched against their filters and, where it matches,
//! its `Arc` is sent on a bounded broadcast channel (a slow reader loses messages, counted).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::broadcast;

use crate::Message;

/// Messages a watch keeps for a reader that falls behind.
const WATCH_BUFFER: usize = 1024;

type Tap = (u64, String, broadcast::Sender<Arc<Message>>);

/// The watches running now.
#[derive(Debug, Default)]
pub(crate) struct Watcher {
    active: AtomicBool,
    next: AtomicU64,
    taps: Mutex<Vec<Tap>>,
}

impl Watcher {
    /// Whether any watch runs.
    #[inline]
    pub fn on(&self) -> bool {
        self.active.load(Ordering::Relaxed)
    }

    fn taps(&self) -> std::sync::MutexGuard<'_, Vec<Tap>> {
        self.taps.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Watch `filter` (already validated) until the receiver is dropped.
    pub fn subscribe(self: &Arc<Watcher>, filter: &str) -> WatchReceiver {
        let (tx, rx) = broadcast::channel(WATCH_BUFFER);
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.taps().push((id, filter.to_string(), tx));
        self.active.store(true, Ordering::Relaxed);
        WatchReceiver {
            rx,
            id,
            watcher: self.clone(),
        }
    }

    /// Hook: `msg` is being routed.
    #[cold]
    pub fn offer(&self, msg: &Arc<Message>) {
        for (_, filter, tx) in self.taps().iter() {
            if tern_proto::topic::matches(&msg.topic, filter) {
                let _ = tx.send(msg.clone());
            }
        }
    }
}

/// A running watch; dropping it stops it.
#[derive(Debug)]
pub struct WatchReceiver {
    rx: broadcast::Receiver<Arc<Message>>,
    id: u64,
    watcher: Arc<Watcher>,
}

/// What [`WatchReceiver::recv`] gives.
#[derive(Debug)]
pub enum WatchItem {
    /// A message on a matching topic.
    Message(Arc<Message>),
    /// This many messages were lost because the reader fell behind.
    Lagged(u64),
}

impl WatchReceiver {
    /// The next message.
    pub async fn recv(&mut self) -> WatchItem {
        match self.rx.recv().await {
            Ok(m) => WatchItem::Message(m),
            Err(broadcast::error::RecvError::Lagged(n)) => WatchItem::Lagged(n),
            Err(broadcast::error::RecvError::Closed) => std::future::pending().await,
        }
    }
}

impl Drop for WatchReceiver {
    fn drop(&mut self) {
        let mut taps = self.watcher.taps();
        taps.retain(|(id, _, _)| *id != self.id);
        if taps.is_empty() {
            self.watcher.active.store(false, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_watch_sees_matching_messages_while_it_lives() {
        let w = Arc::new(Watcher::default());
        assert!(!w.on());
        let mut rx = w.subscribe("a/+");
        assert!(w.on());
        let m = |t: &str| {
            Arc::new(Message::new(
                t.to_string(),
                "x",
                tern_proto::QoS::AtMostOnce,
                false,
            ))
        };
        w.offer(&m("b/1"));
        w.offer(&m("a/1"));
        match rx.recv().await {
            WatchItem::Message(got) => assert_eq!(&*got.topic, "a/1"),
            other => panic!("{other:?}"),
        }
        drop(rx);
        assert!(!w.on());
    }
}
