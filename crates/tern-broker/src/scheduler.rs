//! One timer for every offline session: the end of its Session Expiry Interval and its
//! delayed will (v5 sections 3.1.2.11.2 and 3.1.3.2.2), instead of a task per session.
//!
//! A deadline belongs to a session and a [`Due`] kind; scheduling the same kind again
//! replaces the earlier deadline, and [`Scheduler::cancel`] drops both when a connection
//! attaches or the session ends. So the scheduler holds at most two deadlines per session,
//! whatever the clients do. Each deadline carries the session's generation at the time it
//! was set: a job whose session moved on (attached again, ended) does nothing.
//!
//! [`run`] is the one task that waits for the earliest deadline, on the broker's
//! [`Clock`](crate::clock::Clock), and runs the jobs that are due.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use crate::broker_core::Core;
use crate::session::SessionCell;

/// What falls due for a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Due {
    /// Publish the pending will (its Will Delay Interval has passed).
    Will,
    /// End the session (its Session Expiry Interval has passed with no connection).
    Expiry,
}

#[derive(Debug)]
struct Job {
    due: Due,
    cell: Arc<SessionCell>,
    generation: u64,
}

/// Identifies a session's deadline of one kind (the cell's address, stable while the
/// scheduler holds the cell).
type Slot = (usize, Due);

#[derive(Debug, Default)]
struct Timers {
    /// Deadlines in order; the second key orders equal instants by insertion.
    queue: BTreeMap<(Instant, u64), Job>,
    /// Where each session's deadline of each kind sits in `queue`.
    slots: HashMap<Slot, (Instant, u64)>,
    next: u64,
}

/// The deadlines of offline sessions.
#[derive(Debug, Default)]
pub(crate) struct Scheduler {
    timers: Mutex<Timers>,
    /// Wakes [`run`] when the earliest deadline may have moved earlier.
    changed: tokio::sync::Notify,
}

fn slot(cell: &SessionCell, due: Due) -> Slot {
    (cell as *const SessionCell as usize, due)
}

impl Scheduler {
    fn lock(&self) -> MutexGuard<'_, Timers> {
        self.timers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Run `due` for `cell` at `at`, unless the session's generation is no longer
    /// `generation` by then; replaces the session's earlier deadline of that kind.
    pub fn schedule(&self, at: Instant, due: Due, cell: &Arc<SessionCell>, generation: u64) {
        let earliest = {
            let mut t = self.lock();
            let key = (at, t.next);
            t.next += 1;
            if let Some(old) = t.slots.insert(slot(cell, due), key) {
                t.queue.remove(&old);
            }
            t.queue.insert(
                key,
                Job {
                    due,
                    cell: cell.clone(),
                    generation,
                },
            );
            t.queue.keys().next() == Some(&key)
        };
        if earliest {
            self.changed.notify_one();
        }
    }

    /// Drop the session's deadlines (a connection attached, or the session ended).
    pub fn cancel(&self, cell: &SessionCell) {
        let mut t = self.lock();
        for due in [Due::Will, Due::Expiry] {
            if let Some(key) = t.slots.remove(&slot(cell, due)) {
                t.queue.remove(&key);
            }
        }
    }

    /// Deadlines held now.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.lock().queue.len()
    }

    /// Take the jobs due at `now`; also the next deadline after them.
    fn take_due(&self, now: Instant) -> (Vec<Job>, Option<Instant>) {
        let mut t = self.lock();
        let mut due = Vec::new();
        while let Some(entry) = t.queue.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let job = entry.remove();
            t.slots.remove(&slot(&job.cell, job.due));
            due.push(job);
        }
        let next = t.queue.keys().next().map(|k| k.0);
        (due, next)
    }
}

/// Run the jobs of `core.scheduler` as they fall due, until the task is dropped.
pub(crate) async fn run(core: Arc<Core>) {
    loop {
        let (jobs, next) = core.scheduler.take_due(core.clock.now());
        for job in jobs {
            fire(&core, job);
        }
        let changed = core.scheduler.changed.notified();
        match next {
            Some(at) => {
                tokio::select! {
                    biased;
                    _ = core.clock.sleep_until(at) => {}
                    _ = changed => {}
                }
            }
            None => changed.await,
        }
    }
}

fn fire(core: &Core, job: Job) {
    let Job {
        due,
        cell,
        generation,
    } = job;
    match due {
        Due::Will => {
            let will = {
                let mut st = cell.lock();
                if st.generation != generation || st.ended {
                    return;
                }
                st.pending_will_at = None;
                st.pending_will.take()
            };
            if let Some(w) = will {
                core.publish_will(&w);
                core.persist_session(&cell, true);
            }
        }
        Due::Expiry => {
            let expired = {
                let st = cell.lock();
                st.generation == generation && st.conn_id.is_none()
            };
            if expired {
                core.end_session(&cell);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn cell(id: &str) -> Arc<SessionCell> {
        Arc::new(SessionCell::new(
            Arc::from(id),
            tern_proto::ProtocolVersion::V5,
            100,
        ))
    }

    #[test]
    fn a_session_holds_at_most_one_deadline_of_each_kind() {
        let s = Scheduler::default();
        let c = cell("a");
        let t0 = Instant::now();
        for i in 0..100 {
            s.schedule(t0 + Duration::from_secs(i), Due::Expiry, &c, i);
            s.schedule(t0 + Duration::from_secs(i), Due::Will, &c, i);
        }
        assert_eq!(s.len(), 2);
        // Only the last deadlines count.
        let (due, next) = s.take_due(t0 + Duration::from_secs(98));
        assert!(due.is_empty());
        assert_eq!(next, Some(t0 + Duration::from_secs(99)));
        let (due, next) = s.take_due(t0 + Duration::from_secs(99));
        assert_eq!(due.len(), 2);
        assert!(due.iter().all(|j| j.generation == 99));
        assert_eq!((next, s.len()), (None, 0));
    }

    #[test]
    fn cancel_drops_both_kinds_and_leaves_other_sessions_alone() {
        let s = Scheduler::default();
        let (a, b) = (cell("a"), cell("b"));
        let t0 = Instant::now();
        s.schedule(t0, Due::Expiry, &a, 1);
        s.schedule(t0, Due::Will, &a, 1);
        s.schedule(t0, Due::Expiry, &b, 1);
        s.cancel(&a);
        let (due, _) = s.take_due(t0);
        assert_eq!(due.len(), 1);
        assert_eq!(&*due[0].cell.client_id, "b");
    }

    #[test]
    fn jobs_come_out_in_deadline_order() {
        let s = Scheduler::default();
        let t0 = Instant::now();
        let cells: Vec<_> = (0..5).map(|i| cell(&i.to_string())).collect();
        for (i, c) in cells.iter().enumerate().rev() {
            s.schedule(t0 + Duration::from_millis(i as u64), Due::Expiry, c, 0);
        }
        let (due, _) = s.take_due(t0 + Duration::from_secs(1));
        let order: Vec<&str> = due.iter().map(|j| &*j.cell.client_id).collect();
        assert_eq!(order, ["0", "1", "2", "3", "4"]);
    }
}
