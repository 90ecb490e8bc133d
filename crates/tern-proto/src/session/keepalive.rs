//! Keep-alive deadlines for a client connection (section 3.1.2.10).
//!
//! The client must send a packet at least every keep-alive interval; when it
//! has nothing else to send it sends PINGREQ (v5 [MQTT-3.1.2-22] names the
//! server's side: 1.5 × the interval). To notice a dead connection the client
//! also pings when it has *heard* nothing for one interval, and gives up when
//! nothing arrives within half an interval after that ping. A connection that
//! dies at time `t` is therefore detected by `t + 1.5 × keep-alive` at the latest.
//!
//! Time is always an argument: nothing here reads a clock.

use std::time::{Duration, Instant};

/// What the keep-alive timer asks for at a given instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeepAliveAction {
    /// Nothing to do yet.
    Idle,
    /// Send PINGREQ now.
    Ping,
    /// No answer to the last PINGREQ: the connection is dead.
    Dead,
}

/// Deadlines of one connection.
#[derive(Debug, Clone)]
pub(crate) struct KeepAlive {
    interval: Duration,
    last_tx: Instant,
    last_rx: Instant,
    ping_sent: Option<Instant>,
}

impl KeepAlive {
    /// Start the timers at `now` with `interval` (zero disables keep-alive).
    pub(crate) fn new(now: Instant, interval: Duration) -> KeepAlive {
        KeepAlive {
            interval,
            last_tx: now,
            last_rx: now,
            ping_sent: None,
        }
    }

    /// The interval in force.
    pub(crate) fn interval(&self) -> Duration {
        self.interval
    }

    /// Something was sent.
    pub(crate) fn on_tx(&mut self, now: Instant) {
        self.last_tx = now;
    }

    /// Something was received: the peer is alive.
    pub(crate) fn on_rx(&mut self, now: Instant) {
        self.last_rx = now;
        self.ping_sent = None;
    }

    /// How long to wait for an answer to PINGREQ.
    fn answer_window(&self) -> Duration {
        self.interval / 2
    }

    /// The next instant at which [`KeepAlive::poll`] has something to do.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        if self.interval.is_zero() {
            return None;
        }
        Some(match self.ping_sent {
            Some(sent) => sent + self.answer_window(),
            None => self.last_tx.min(self.last_rx) + self.interval,
        })
    }

    /// Decide at `now`; a `Ping` answer records the PINGREQ as sent.
    pub(crate) fn poll(&mut self, now: Instant) -> KeepAliveAction {
        match self.deadline() {
            Some(d) if now >= d => {
                if self.ping_sent.is_some() {
                    KeepAliveAction::Dead
                } else {
                    self.ping_sent = Some(now);
                    self.last_tx = now;
                    KeepAliveAction::Ping
                }
            }
            _ => KeepAliveAction::Idle,
        }
    }
}

/// The server's side of the rule: a connection whose client has sent nothing for one and a
/// half times its keep-alive (in seconds; 0 disables it) is closed at this instant
/// (v5 [MQTT-3.1.2-22], v3.1.1 [MQTT-3.1.2-24]).
pub(crate) fn server_deadline(last_rx: Instant, keep_alive: u16) -> Option<Instant> {
    (keep_alive != 0).then(|| last_rx + Duration::from_millis(u64::from(keep_alive) * 1500))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KA: Duration = Duration::from_secs(10);

    #[test]
    fn idle_connection_pings_every_interval() {
        let t0 = Instant::now();
        let mut ka = KeepAlive::new(t0, KA);
        assert_eq!(ka.deadline(), Some(t0 + KA));
        assert_eq!(ka.poll(t0 + KA - Duration::from_millis(1)), KeepAliveAction::Idle);
        assert_eq!(ka.poll(t0 + KA), KeepAliveAction::Ping);
        ka.on_rx(t0 + KA + Duration::from_millis(5));
        assert_eq!(ka.deadline(), Some(t0 + KA + KA));
    }

    #[test]
    fn silence_after_ping_is_death_within_one_and_a_half_intervals() {
        let t0 = Instant::now();
        let mut ka = KeepAlive::new(t0, KA);
        assert_eq!(ka.poll(t0 + KA), KeepAliveAction::Ping);
        assert_eq!(ka.deadline(), Some(t0 + KA + KA / 2));
        assert_eq!(ka.poll(t0 + KA + KA / 2), KeepAliveAction::Dead);
    }

    #[test]
    fn busy_sender_still_pings_when_it_hears_nothing() {
        let t0 = Instant::now();
        let mut ka = KeepAlive::new(t0, KA);
        // Sending every second does not postpone the check on the receive side.
        for s in 1..10 {
            ka.on_tx(t0 + Duration::from_secs(s));
        }
        assert_eq!(ka.deadline(), Some(t0 + KA));
        assert_eq!(ka.poll(t0 + KA), KeepAliveAction::Ping);
    }

    #[test]
    fn zero_disables() {
        let t0 = Instant::now();
        let mut ka = KeepAlive::new(t0, Duration::ZERO);
        assert_eq!(ka.deadline(), None);
        assert_eq!(ka.poll(t0 + Duration::from_secs(100_000)), KeepAliveAction::Idle);
    }
}
