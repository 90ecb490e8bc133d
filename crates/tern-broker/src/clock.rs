//! The broker's source of time for protocol deadlines: the CONNECT deadline (and that of an
//! enhanced-authentication exchange), message expiry, Session Expiry Interval, Will Delay
//! Interval, keep-alive, the stall timer of a packet in progress, how long a subscriber has
//! been stalled, and the wall-clock times written to the store.
//!
//! [`Clock::system`] reads the operating system's clocks. A [`ManualClock`] stands still
//! until [`ManualClock::advance`] moves it: tests and simulations use it to let an hour of
//! session expiry pass at once, without sleeping. Only timers of the transport, which bound
//! how long one socket may hold the broker and decide nothing of the protocol, keep the
//! runtime's timer: write timeouts, the WebSocket handshake, the linger after closing, and
//! the 20 ms poll of a publisher slowed down for a subscriber.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Where the broker's time comes from (cheap to clone).
#[derive(Debug, Clone, Default)]
pub struct Clock {
    manual: Option<ManualClock>,
}

impl Clock {
    /// The operating system's monotonic and wall clocks.
    pub fn system() -> Clock {
        Clock { manual: None }
    }

    /// The monotonic time now.
    pub fn now(&self) -> Instant {
        match &self.manual {
            None => Instant::now(),
            Some(m) => m.now(),
        }
    }

    /// The wall-clock time now, in milliseconds since the Unix epoch (stored times).
    pub fn wall_ms(&self) -> u64 {
        let wall = match &self.manual {
            None => SystemTime::now(),
            Some(m) => m.wall(),
        };
        wall.duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    /// Both readings at once, for code that converts deadlines to stored wall times.
    pub(crate) fn stamp(&self) -> Stamp {
        Stamp {
            now: self.now(),
            wall_ms: self.wall_ms(),
        }
    }

    /// Wait until the clock reads `at` or later.
    pub(crate) async fn sleep_until(&self, at: Instant) {
        self.wait_until(at).wait().await
    }

    /// What to wait on for `at`: the runtime's timer for the system clock, a boxed wait for a
    /// manual one. A connection keeps one in its task, so the common case stays as small as
    /// tokio's own timer.
    pub(crate) fn wait_until(&self, at: Instant) -> Wait {
        match &self.manual {
            None => Wait::Until(at.into()),
            Some(m) => {
                let m = m.clone();
                Wait::Manual(Box::pin(async move { m.sleep_until(at).await }))
            }
        }
    }
}

/// A wait on the broker's clock (see [`Clock::wait_until`]).
pub(crate) enum Wait {
    /// Nothing to wait for.
    Never,
    /// The runtime's timer.
    Until(tokio::time::Instant),
    /// A manual clock passing the deadline.
    Manual(std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>),
}

impl Wait {
    /// Wait (forever for [`Wait::Never`]).
    pub(crate) async fn wait(self) {
        match self {
            Wait::Never => std::future::pending().await,
            Wait::Until(at) => tokio::time::sleep_until(at).await,
            Wait::Manual(f) => f.await,
        }
    }
}

impl From<ManualClock> for Clock {
    fn from(m: ManualClock) -> Clock {
        Clock { manual: Some(m) }
    }
}

/// A monotonic reading and the wall-clock reading taken with it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Stamp {
    /// Monotonic time.
    pub now: Instant,
    /// Milliseconds since the Unix epoch.
    pub wall_ms: u64,
}

/// A clock that moves only when told to (cheap to clone; clones share the time).
///
/// It starts at the system's time of its creation and advances by [`ManualClock::advance`]
/// alone, monotonic and wall time together.
#[derive(Debug, Clone)]
pub struct ManualClock {
    inner: Arc<Manual>,
}

#[derive(Debug)]
struct Manual {
    start: Instant,
    start_wall: SystemTime,
    /// Nanoseconds advanced since `start`.
    elapsed: AtomicU64,
    /// Tells sleepers that the time moved.
    moved: tokio::sync::watch::Sender<u64>,
}

impl Default for ManualClock {
    fn default() -> Self {
        ManualClock::new()
    }
}

impl ManualClock {
    /// A clock standing at the system's time now.
    pub fn new() -> ManualClock {
        let (moved, _) = tokio::sync::watch::channel(0);
        ManualClock {
            inner: Arc::new(Manual {
                start: Instant::now(),
                start_wall: SystemTime::now(),
                elapsed: AtomicU64::new(0),
                moved,
            }),
        }
    }

    /// Move the clock forward by `by`; whatever falls due meanwhile runs.
    pub fn advance(&self, by: Duration) {
        let ns = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        let total = self
            .inner
            .elapsed
            .fetch_add(ns, Ordering::SeqCst)
            .saturating_add(ns);
        self.inner.moved.send_replace(total);
    }

    fn elapsed(&self) -> Duration {
        Duration::from_nanos(self.inner.elapsed.load(Ordering::SeqCst))
    }

    fn now(&self) -> Instant {
        self.inner.start + self.elapsed()
    }

    fn wall(&self) -> SystemTime {
        self.inner.start_wall + self.elapsed()
    }

    async fn sleep_until(&self, at: Instant) {
        let mut moved = self.inner.moved.subscribe();
        while self.now() < at {
            if moved.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_only_when_advanced() {
        let m = ManualClock::new();
        let c = Clock::from(m.clone());
        let (t0, w0) = (c.now(), c.wall_ms());
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(c.now(), t0);
        m.advance(Duration::from_secs(3600));
        assert_eq!(c.now() - t0, Duration::from_secs(3600));
        assert_eq!(c.wall_ms() - w0, 3_600_000);
    }

    #[tokio::test]
    async fn a_sleeper_wakes_when_the_clock_passes_its_deadline() {
        let m = ManualClock::new();
        let c = Clock::from(m.clone());
        let at = c.now() + Duration::from_secs(10);
        let sleeper = tokio::spawn({
            let c = c.clone();
            async move { c.sleep_until(at).await }
        });
        m.advance(Duration::from_secs(5));
        tokio::task::yield_now().await;
        assert!(!sleeper.is_finished());
        m.advance(Duration::from_secs(5));
        tokio::time::timeout(Duration::from_secs(5), sleeper)
            .await
            .expect("woken")
            .expect("no panic");
    }
}
