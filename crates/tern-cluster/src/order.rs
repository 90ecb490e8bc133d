//! Each publisher's order across a NATS failure.
//!
//! JetStream stores a node's messages in the order they went out, except when a first attempt
//! is lost (the connection to NATS died with it still in its write buffer, or the stream's
//! leader died before committing it) while a later one is stored: the earlier message is
//! tried again once its answer is overdue (JetStream's ack timeout, up to 5 s) and is stored
//! after the later one (docs/cluster.md, "Found by the kill loop"). So every stored message
//! carries its node's run and its number among that run's first attempts to its shard
//! (`Tern-S`, [`codec::order_of`](crate::codec::order_of)), and the readers of the streams
//! put each run's messages back in number order:
//!
//! - A tailer ([`Reorder`]) that sees a number beyond the next one it expects of that run
//!   holds that message and every later one of the stream, so that its position keeps
//!   meaning "every message up to here is delivered, none after it" (floors, recoveries and
//!   handovers rely on that). Once every missing number has come, the held messages go out,
//!   each run's in number order in the places its messages held. A missing number that does
//!   not come (its node died before storing it; a QoS 2 message refused as the duplicate of
//!   a placeholder) is given up after [`HOLD`], and so is the hold when [`HOLD_MAX`] messages
//!   are held or a session joining or leaving the node cannot wait ([`Reorder::give_up`]):
//!   the held messages then go out in the best order known, counted and logged, and a
//!   missing one that comes later goes out as it comes (late, never lost).
//! - A recovery's reads from the streams put each run's messages in number order within what
//!   they read ([`in_order`]).
//!
//! A message whose node is this one, or without the header, is never waited for.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Longest a tailer holds messages for a missing number: past JetStream's ack timeout (5 s
/// at most), after which the node tries the missing message again, with room for that
/// attempt.
pub(crate) const HOLD: Duration = Duration::from_secs(12);

/// Messages (NATS messages: a pack counts once) a tailer holds at most.
pub(crate) const HOLD_MAX: usize = 65_536;

/// Runs remembered at most while nothing is held (then forgotten all at once: the next
/// message of each sets where it stands).
const RUNS_KEPT: usize = 4096;

/// Requests to the tailers, one per shard, to give their holds up now: a session joining or
/// leaving this node waits for the tailers to pass the ends of the streams
/// (`sessions.rs`), and cannot wait for a hold that may last [`HOLD`].
#[derive(Debug)]
pub(crate) struct GiveUp {
    asked: Vec<AtomicBool>,
    told: tokio::sync::Notify,
}

impl GiveUp {
    pub fn new(shards: usize) -> GiveUp {
        GiveUp {
            asked: (0..shards).map(|_| AtomicBool::new(false)).collect(),
            told: tokio::sync::Notify::new(),
        }
    }

    /// Ask shard `k`'s tailer to give its hold up.
    pub fn ask(&self, k: usize) {
        if let Some(a) = self.asked.get(k) {
            a.store(true, Ordering::Release);
            self.told.notify_waiters();
        }
    }

    /// Whether shard `k`'s tailer was asked since it last looked.
    pub fn take(&self, k: usize) -> bool {
        self.asked.get(k).is_some_and(|a| a.swap(false, Ordering::AcqRel))
    }

    /// Told at every [`GiveUp::ask`]; enable it before [`GiveUp::take`].
    pub fn told(&self) -> tokio::sync::futures::Notified<'_> {
        self.told.notified()
    }
}

/// Where one run of a node stands at a reader.
#[derive(Debug)]
struct Run {
    /// The next number expected: every number below it has come (or was given up).
    next: u64,
    /// Numbers beyond `next` that came.
    ahead: BTreeSet<u64>,
}

/// What a tailer holds back to put each run's messages in number order (see the module
/// documentation). `T` is what is delivered.
#[derive(Debug)]
pub(crate) struct Reorder<T> {
    runs: HashMap<u64, Run>,
    /// Runs with a number missing.
    gaps: usize,
    /// Held, in stream order, with their run and number.
    held: Vec<(T, Option<(u64, u64)>)>,
    /// When the first of `held` was held.
    since: Option<Instant>,
    /// Holds begun.
    pub holds: u64,
    /// Holds given up with numbers still missing.
    pub given_up: u64,
}

impl<T> Default for Reorder<T> {
    fn default() -> Self {
        Reorder {
            runs: HashMap::new(),
            gaps: 0,
            held: Vec::new(),
            since: None,
            holds: 0,
            given_up: 0,
        }
    }
}

impl<T> Reorder<T> {
    /// Take the stream's next message (`order`: its run and number, `None` for one never
    /// waited for), at `now`; what may go out now is appended to `out`, in order.
    pub fn take(&mut self, item: T, order: Option<(u64, u64)>, now: Instant, out: &mut Vec<T>) {
        if let Some((run, n)) = order {
            if self.held.is_empty() && self.runs.len() >= RUNS_KEPT && !self.runs.contains_key(&run) {
                self.runs.clear();
            }
            let r = self.runs.entry(run).or_insert(Run {
                next: n,
                ahead: BTreeSet::new(),
            });
            let had_gap = !r.ahead.is_empty();
            if n == r.next {
                r.next += 1;
                while r.ahead.first() == Some(&r.next) {
                    r.ahead.pop_first();
                    r.next += 1;
                }
            } else if n > r.next {
                r.ahead.insert(n);
            }
            match (had_gap, r.ahead.is_empty()) {
                (false, false) => self.gaps += 1,
                (true, true) => self.gaps -= 1,
                _ => {}
            }
        }
        if self.held.is_empty() && self.gaps == 0 {
            out.push(item);
            return;
        }
        self.held.push((item, order));
        if self.since.is_none() {
            self.since = Some(now);
            self.holds += 1;
        }
        if self.gaps == 0 {
            self.release(out);
        } else if self.held.len() >= HOLD_MAX {
            self.give_up(out);
        }
    }

    /// The first message held, if any (the tailer's position stays before it).
    pub fn first_held(&self) -> Option<&T> {
        self.held.first().map(|(item, _)| item)
    }

    /// When the hold runs out ([`HOLD`]), if something is held.
    pub fn deadline(&self) -> Option<Instant> {
        self.since.map(|s| s + HOLD)
    }

    /// Give the hold up if it ran out by `now`.
    pub fn expire(&mut self, now: Instant, out: &mut Vec<T>) {
        if self.deadline().is_some_and(|d| now >= d) {
            self.give_up(out);
        }
    }

    /// Let everything held go out now, in the best order known: the missing numbers are
    /// taken as given up (one that comes later goes out as it comes).
    pub fn give_up(&mut self, out: &mut Vec<T>) {
        if self.held.is_empty() {
            return;
        }
        if self.gaps > 0 {
            self.given_up += 1;
            for r in self.runs.values_mut() {
                if let Some(&last) = r.ahead.last() {
                    r.next = last + 1;
                    r.ahead.clear();
                }
            }
            self.gaps = 0;
        }
        self.release(out);
    }

    fn release(&mut self, out: &mut Vec<T>) {
        let orders: Vec<Option<(u64, u64)>> = self.held.iter().map(|(_, o)| *o).collect();
        let mut items: Vec<T> = self.held.drain(..).map(|(item, _)| item).collect();
        in_order(&mut items, &orders);
        out.extend(items);
        self.since = None;
    }
}

/// Put each run's items in number order, in the places that run's items hold (stable: items
/// with the same number, the messages of a pack, keep their order); items without an order
/// stay where they are. `orders` goes with `items`, one for one.
pub(crate) fn in_order<T>(items: &mut [T], orders: &[Option<(u64, u64)>]) {
    let mut places: HashMap<u64, Vec<usize>> = HashMap::new();
    for (i, o) in orders.iter().enumerate().take(items.len()) {
        if let Some((run, _)) = o {
            places.entry(*run).or_default().push(i);
        }
    }
    let number = |i: usize| orders.get(i).copied().flatten().map_or(0, |(_, n)| n);
    // The item each place gets: from[place] = the place it comes from.
    let mut from: Vec<usize> = (0..items.len()).collect();
    let mut moved = false;
    for slots in places.values() {
        if slots.windows(2).all(|w| number(w[0]) <= number(w[1])) {
            continue;
        }
        let mut sorted = slots.clone();
        sorted.sort_by_key(|&i| number(i));
        for (&slot, &src) in slots.iter().zip(&sorted) {
            from[slot] = src;
        }
        moved = true;
    }
    if !moved {
        return;
    }
    // Follow each cycle of the permutation, swapping along it.
    let mut done = vec![false; items.len()];
    for start in 0..items.len() {
        if done[start] {
            continue;
        }
        let mut at = start;
        loop {
            done[at] = true;
            let src = from[at];
            if src == start {
                break;
            }
            items.swap(at, src);
            at = src;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const X: u64 = 7;
    const Y: u64 = 9;

    fn run_all(
        r: &mut Reorder<&'static str>,
        items: &[(&'static str, Option<(u64, u64)>)],
        now: Instant,
    ) -> Vec<&'static str> {
        let mut out = Vec::new();
        for &(item, order) in items {
            r.take(item, order, now, &mut out);
        }
        out
    }

    #[test]
    fn messages_in_order_go_out_at_once() {
        let mut r = Reorder::default();
        let now = Instant::now();
        let out = run_all(
            &mut r,
            &[
                ("x5", Some((X, 5))),
                ("y1", Some((Y, 1))),
                ("own", None),
                ("x6", Some((X, 6))),
            ],
            now,
        );
        assert_eq!(out, ["x5", "y1", "own", "x6"]);
        assert!(r.first_held().is_none() && r.deadline().is_none());
    }

    #[test]
    fn a_later_number_stored_first_waits_with_everything_after_it_for_the_missing_one() {
        let mut r = Reorder::default();
        let now = Instant::now();
        let mut out = run_all(&mut r, &[("x0", Some((X, 0))), ("x2", Some((X, 2)))], now);
        assert_eq!(out, ["x0"]);
        assert_eq!(r.first_held(), Some(&"x2"));
        assert_eq!(r.deadline(), Some(now + HOLD));
        // Another run's message, and one never waited for, wait behind it (the position).
        r.take("y4", Some((Y, 4)), now, &mut out);
        r.take("own", None, now, &mut out);
        r.take("x3", Some((X, 3)), now, &mut out);
        assert_eq!(out, ["x0"]);
        r.take("x1", Some((X, 1)), now, &mut out);
        assert_eq!(out, ["x0", "x1", "y4", "own", "x2", "x3"]);
        assert!(r.first_held().is_none());
        assert_eq!(r.given_up, 0);
        // A retry's second copy (a number already past) goes out as it comes.
        r.take("x1 again", Some((X, 1)), now, &mut out);
        r.take("x4", Some((X, 4)), now, &mut out);
        assert_eq!(out[6..], ["x1 again", "x4"]);
    }

    #[test]
    fn a_number_that_never_comes_is_given_up_after_the_hold_and_comes_late_if_at_all() {
        let mut r = Reorder::default();
        let now = Instant::now();
        let mut out = run_all(
            &mut r,
            &[
                ("x0", Some((X, 0))),
                ("x3", Some((X, 3))),
                ("x2", Some((X, 2))),
                ("y0", Some((Y, 0))),
            ],
            now,
        );
        assert_eq!(out, ["x0"]);
        r.expire(now + HOLD - Duration::from_millis(1), &mut out);
        assert_eq!(out, ["x0"]);
        r.expire(now + HOLD, &mut out);
        assert_eq!(out, ["x0", "x2", "x3", "y0"]);
        assert_eq!(r.given_up, 1);
        r.take("x1", Some((X, 1)), now, &mut out);
        r.take("x4", Some((X, 4)), now, &mut out);
        assert_eq!(out[4..], ["x1", "x4"]);
    }

    #[test]
    fn a_hold_ends_when_asked_or_when_too_much_is_held() {
        let mut r: Reorder<u64> = Reorder::default();
        let now = Instant::now();
        let mut out = Vec::new();
        r.take(0, Some((X, 0)), now, &mut out);
        r.take(2, Some((X, 2)), now, &mut out);
        r.give_up(&mut out);
        assert_eq!(out, [0, 2]);
        r.take(4, Some((X, 4)), now, &mut out);
        for i in 0..HOLD_MAX as u64 - 2 {
            r.take(100 + i, None, now, &mut out);
        }
        assert_eq!(out.len(), 2, "held");
        r.take(99, None, now, &mut out);
        assert_eq!(out.len(), 2 + HOLD_MAX);
        assert_eq!(r.given_up, 2);
        assert!(r.first_held().is_none());
    }

    #[test]
    fn in_order_keeps_other_runs_and_a_packs_messages_in_their_places() {
        let mut items = ["x2a", "y1", "x2b", "own", "x1", "y0"];
        let orders = [
            Some((X, 2)),
            Some((Y, 1)),
            Some((X, 2)),
            None,
            Some((X, 1)),
            Some((Y, 0)),
        ];
        in_order(&mut items, &orders);
        assert_eq!(items, ["x1", "y0", "x2a", "own", "x2b", "y1"]);
    }

    proptest! {
        /// Whatever order a run's messages are stored in, interleaved with another run's in
        /// order, everything goes out once, and each run's in number order, once all came.
        #[test]
        fn every_message_goes_out_once_and_each_runs_in_order(
            shuffled in Just((0..40u64).collect::<Vec<_>>()).prop_shuffle(),
            others in proptest::collection::vec(any::<bool>(), 40),
        ) {
            let mut r = Reorder::default();
            let now = Instant::now();
            let mut out = Vec::new();
            let mut y = 0;
            for (n, other) in shuffled.iter().zip(&others) {
                r.take((X, *n), Some((X, *n)), now, &mut out);
                if *other {
                    r.take((Y, y), Some((Y, y)), now, &mut out);
                    y += 1;
                }
            }
            r.give_up(&mut out);
            prop_assert_eq!(out.len(), 40 + y as usize);
            let xs: Vec<u64> = out.iter().filter(|(run, _)| *run == X).map(|(_, n)| *n).collect();
            let ys: Vec<u64> = out.iter().filter(|(run, _)| *run == Y).map(|(_, n)| *n).collect();
            prop_assert_eq!(ys, (0..y).collect::<Vec<_>>());
            // The first number seen sets where the run starts: what came before it goes out
            // as it came, the rest in order.
            let first = shuffled[0];
            let after: Vec<u64> = xs.iter().copied().filter(|n| *n >= first).collect();
            prop_assert_eq!(after, (first..40).collect::<Vec<_>>());
            let mut all = xs.clone();
            all.sort_unstable();
            prop_assert_eq!(all, (0..40).collect::<Vec<_>>());
        }
    }
}
