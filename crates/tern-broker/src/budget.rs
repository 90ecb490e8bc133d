//! The broker-wide budgets: bytes held in partially received packets ([`PartialBudget`]) and
//! bytes queued for sessions ([`QueueBudget`]).
//!
//! Every connection may hold one packet in progress, up to `max_packet_size` (before CONNECT,
//! `max_connect_packet_size`). Thousands of sockets each holding 99 % of a large packet take
//! gigabytes, so their sum is bounded by `max_partial_bytes`. A connection whose packet in
//! progress grows past [`TRACKED`] bytes holds a [`Claim`]; small partial packets are not
//! counted (they cost nothing per read to track). When the total goes over the budget, the
//! connections holding the *oldest* claims are evicted (closed, logged, counted) until it fits
//! again: a stalled attacker's partial packets are older than a client's upload in progress.
//!
//! ### Invariants
//! - `held` is the sum of the bytes of live, not evicted claims.
//! - A claim is in `holders` while it is live and not evicted; an evicted claim's bytes were
//!   taken out of `held` when it was evicted, and are not taken out again when it is dropped.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

/// Partial packets smaller than this are not counted.
pub(crate) const TRACKED: usize = 16 * 1024;

/// What the budget and a connection share about one partial packet.
#[derive(Debug)]
struct Holder {
    /// Its place in `holders` (older claims have smaller ids).
    id: u64,
    bytes: AtomicUsize,
    evicted: AtomicBool,
    /// Wakes the connection so that it sees the eviction.
    wake: Arc<Notify>,
    budget: Arc<PartialBudget>,
}

/// The budget, shared by all connections.
#[derive(Debug)]
pub(crate) struct PartialBudget {
    limit: usize,
    held: AtomicUsize,
    /// Live claims, oldest first.
    holders: Mutex<BTreeMap<u64, Arc<Holder>>>,
    next: AtomicU64,
    /// Connections evicted since start.
    evictions: AtomicU64,
}

/// One connection's share of the budget (dropped when its packet completes or it closes);
/// one pointer, so that `Option<Claim>` costs idle connections 8 bytes.
#[derive(Debug)]
pub(crate) struct Claim(Arc<Holder>);

impl PartialBudget {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> Arc<PartialBudget> {
        Arc::new(PartialBudget {
            limit,
            held: AtomicUsize::new(0),
            holders: Mutex::new(BTreeMap::new()),
            next: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
        })
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<u64, Arc<Holder>>> {
        self.holders.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Bytes held in partial packets now (those above [`TRACKED`]). Read under the holders'
    /// lock, which every change of the total takes: never a total in the middle of an eviction,
    /// so never above the limit.
    pub fn held(&self) -> usize {
        let _holders = self.lock();
        self.held.load(Ordering::Relaxed)
    }

    /// Connections evicted since start.
    pub fn evictions(&self) -> u64 {
        self.evictions.load(Ordering::Relaxed)
    }

    /// Record that a connection holds `bytes` of a packet in progress (0 when none): creates,
    /// resizes or drops its claim; then evicts the oldest claims while over the budget.
    /// `wake` is the connection's waker, notified if it is evicted.
    pub fn hold(self: &Arc<Self>, claim: &mut Option<Claim>, bytes: usize, wake: &Arc<Notify>) {
        if bytes < TRACKED {
            // An evicted claim is kept: the connection must still see that it was evicted.
            if !evicted(claim) {
                *claim = None;
            }
            return;
        }
        let c = claim.get_or_insert_with(|| {
            let holder = Arc::new(Holder {
                id: self.next.fetch_add(1, Ordering::Relaxed),
                bytes: AtomicUsize::new(0),
                evicted: AtomicBool::new(false),
                wake: wake.clone(),
                budget: self.clone(),
            });
            self.lock().insert(holder.id, holder.clone());
            Claim(holder)
        });
        // Resizing and evicting happen under the holders' lock, so that an eviction never sees
        // a claim's new size before the total does (only large partial packets get here).
        let mut holders = self.lock();
        if c.0.evicted.load(Ordering::Relaxed) {
            return;
        }
        let before = c.0.bytes.swap(bytes, Ordering::Relaxed);
        let total = if bytes >= before {
            self.held.fetch_add(bytes - before, Ordering::Relaxed) + (bytes - before)
        } else {
            self.held.fetch_sub(before - bytes, Ordering::Relaxed) - (before - bytes)
        };
        if total > self.limit {
            self.evict_oldest(&mut holders);
        }
    }

    /// Evict the oldest claims until the total fits.
    fn evict_oldest(&self, holders: &mut BTreeMap<u64, Arc<Holder>>) {
        while self.held.load(Ordering::Relaxed) > self.limit {
            let Some((_, h)) = holders.pop_first() else { break };
            h.evicted.store(true, Ordering::Relaxed);
            let bytes = h.bytes.swap(0, Ordering::Relaxed);
            self.held.fetch_sub(bytes, Ordering::Relaxed);
            self.evictions.fetch_add(1, Ordering::Relaxed);
            h.wake.notify_one();
        }
    }
}

impl Claim {
    /// Whether the budget evicted this connection.
    pub fn evicted(&self) -> bool {
        self.0.evicted.load(Ordering::Relaxed)
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        let budget = &self.0.budget;
        let mut holders = budget.lock();
        holders.remove(&self.0.id);
        let bytes = self.0.bytes.swap(0, Ordering::Relaxed);
        budget.held.fetch_sub(bytes, Ordering::Relaxed);
    }
}

/// Whether `claim` was evicted.
pub(crate) fn evicted(claim: &Option<Claim>) -> bool {
    claim.as_ref().is_some_and(Claim::evicted)
}

/// Payload bytes queued for all sessions together (`max_queued_bytes_total`), counted per
/// queued copy as each session's own `queued_bytes` is. When it is exhausted, messages for
/// offline sessions are not queued; connected sessions keep their own limits.
///
/// Updated once per batch, not per message: a publisher's batch of deliveries to one session
/// adds what it queued, a connection's batch of sends takes out what it took. Concurrent
/// publishers may each see the same room, so the total can go beyond the budget by what they
/// queue at that moment (a batch each).
#[derive(Debug)]
pub(crate) struct QueueBudget {
    limit: usize,
    used: AtomicUsize,
    /// Messages not queued because the budget was exhausted.
    refused: AtomicU64,
}

impl QueueBudget {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> QueueBudget {
        QueueBudget {
            limit,
            used: AtomicUsize::new(0),
            refused: AtomicU64::new(0),
        }
    }

    /// Bytes that may still be queued.
    pub fn room(&self) -> usize {
        self.limit.saturating_sub(self.used.load(Ordering::Relaxed))
    }

    /// Bytes queued now, all sessions together.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// `n` more bytes were queued.
    pub fn grew(&self, n: usize) {
        if n > 0 {
            self.used.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// `n` queued bytes were taken out (sent, expired, or their session ended).
    pub fn shrank(&self, n: usize) {
        if n > 0 {
            // Never below zero, whatever a caller's mistake: the budget would open wide.
            let _ = self.used.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| {
                Some(u.saturating_sub(n))
            });
        }
    }

    /// `n` messages for `client_id` were not queued for lack of room (logged at powers of two).
    pub fn refused(&self, n: u64, client_id: &str) {
        if n == 0 {
            return;
        }
        let before = self.refused.fetch_add(n, Ordering::Relaxed);
        let after = before + n;
        if (before + 1).next_power_of_two() <= after {
            tracing::warn!(
                client_id,
                refused = after,
                limit = self.limit,
                "max_queued_bytes_total reached: not queueing messages"
            );
        }
    }

    /// Messages refused since start.
    pub fn refusals(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_partial_packets_are_not_counted_and_claims_are_returned() {
        let b = PartialBudget::new(1 << 20);
        let w = Arc::new(Notify::new());
        let mut c = None;
        b.hold(&mut c, TRACKED - 1, &w);
        assert!(c.is_none());
        b.hold(&mut c, 100_000, &w);
        b.hold(&mut c, 200_000, &w);
        assert_eq!(b.held(), 200_000);
        b.hold(&mut c, 0, &w);
        assert_eq!((b.held(), c.is_none()), (0, true));
        b.hold(&mut c, 50_000, &w);
        drop(c);
        assert_eq!(b.held(), 0);
        assert!(b.lock().is_empty());
    }

    #[test]
    fn over_the_budget_the_oldest_claims_are_evicted() {
        let b = PartialBudget::new(300_000);
        let wakers: Vec<_> = (0..4).map(|_| Arc::new(Notify::new())).collect();
        let mut claims: Vec<Option<Claim>> = (0..4).map(|_| None).collect();
        for (c, w) in claims.iter_mut().zip(&wakers).take(3) {
            b.hold(c, 100_000, w);
        }
        assert_eq!((b.held(), b.evictions()), (300_000, 0));
        // The fourth goes over: the oldest (the first) is evicted, the newest kept.
        b.hold(&mut claims[3], 100_000, &wakers[3]);
        let evicted: Vec<bool> = claims.iter().map(evicted).collect();
        assert_eq!(evicted, [true, false, false, false]);
        assert_eq!((b.held(), b.evictions()), (300_000, 1));
        // An evicted claim no longer counts, even when it grows or is dropped.
        b.hold(&mut claims[0], 900_000, &wakers[0]);
        claims[0] = None;
        assert_eq!(b.held(), 300_000);
        claims.clear();
        assert_eq!(b.held(), 0);
    }
}
