//! The embedded implementation of [`Durability`]: retained messages, persistent sessions,
//! their queued and in-flight messages and incoming QoS 2 packet ids, in one redb file.
//!
//! The broker submits typed [`Change`]s in the order they happen (under the session lock that
//! orders them); one writer thread encodes and applies everything pending in a single
//! transaction (group commit) and publishes the ticket it has committed. A connection that
//! must not acknowledge before its changes are durable waits for that ticket.
//!
//! A message queued for several persistent sessions is written once (a payload record) and
//! referenced by each session's queued record; the writer thread counts the references and
//! deletes a payload with its last reference, in the same transaction.
//!
//! ### Durability
//! - `sync = "always"` (default): each group commit is synced to disk before
//!   any waiter is released, so no acknowledged QoS 1/2 message is lost on
//!   `kill -9` or power loss.
//! - `sync = "interval"`: commits are written without sync and released at
//!   once; a sync runs every `sync_interval_ms`. A crash of the process loses
//!   nothing the OS already has; a power loss can lose up to the last interval.

mod engine;
pub(crate) mod record;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;

pub(crate) use engine::Engine;
pub use engine::Resident;

use crate::durability::{Change, Durability, Group, Stored, Ticket};

/// When commits reach the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SyncPolicy {
    /// Sync every group commit before acknowledging (no acknowledged message is lost).
    #[default]
    Always,
    /// Sync every `sync_interval_ms`; a power loss may lose up to one interval.
    Interval,
}

/// Why the store cannot keep data.
#[derive(Debug, Clone, thiserror::Error)]
#[error("storage error: {0}")]
pub struct StoreError(pub String);

#[derive(Debug, Default)]
struct Pending {
    ops: Vec<Change>,
    /// Sequence number of the last submitted op.
    submitted: u64,
    /// First sequence number of each open group (see [`Store::group`]).
    open_groups: Vec<u64>,
}

/// Handle to the durable store, shared by all connections.
#[derive(Debug)]
pub(crate) struct Store {
    pending: Mutex<Pending>,
    wake: std::sync::Condvar,
    committed: crate::durability::Progress,
    failed: AtomicBool,
    error: Mutex<Option<StoreError>>,
    closing: AtomicBool,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Commits, changes per commit and commit time, for the metrics endpoint.
    pub metrics: Arc<crate::metrics::StoreMetrics>,
    /// Reads queued deliveries back (offline sessions' queues beyond their window).
    reader: engine::Reader,
    /// The database file, and its size after the last commit.
    file: std::path::PathBuf,
    file_bytes: std::sync::atomic::AtomicU64,
}

impl Store {
    /// Open (or create) the store in `dir` with a page cache of `cache_bytes`, load what of
    /// its content `resident` allows into memory (the rest is described, and read when
    /// needed), and start the writer thread.
    pub fn open(
        dir: &Path,
        sync: SyncPolicy,
        interval: Duration,
        clock: crate::clock::Clock,
        cache_bytes: usize,
        resident: engine::Resident,
    ) -> Result<(Arc<Store>, Stored), StoreError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError(format!("cannot create {}: {e}", dir.display())))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
        }
        let mut engine = Engine::open(dir, clock, cache_bytes)?;
        let loaded = engine.load(resident)?;
        let file = dir.join("tern.redb");
        let store = Arc::new(Store {
            reader: engine.reader(),
            file_bytes: std::sync::atomic::AtomicU64::new(std::fs::metadata(&file).map_or(0, |m| m.len())),
            file,
            pending: Mutex::new(Pending::default()),
            wake: std::sync::Condvar::new(),
            committed: crate::durability::Progress::default(),
            failed: AtomicBool::new(false),
            error: Mutex::new(None),
            closing: AtomicBool::new(false),
            thread: Mutex::new(None),
            metrics: Arc::default(),
        });
        let s = store.clone();
        let handle = std::thread::Builder::new()
            .name("tern-store".into())
            .spawn(move || s.writer(engine, sync, interval))
            .map_err(|e| StoreError(format!("cannot start the store thread: {e}")))?;
        *store.thread.lock().unwrap_or_else(|e| e.into_inner()) = Some(handle);
        Ok((store, loaded))
    }

    /// Whether a storage error has happened (then QoS 1/2 messages must be refused).
    fn is_failed(&self) -> bool {
        self.failed.load(Ordering::Relaxed)
    }

    fn writer(&self, mut engine: Engine, sync: SyncPolicy, interval: Duration) {
        let mut last_sync = std::time::Instant::now();
        let mut unsynced = false;
        loop {
            let (ops, upto) = {
                let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
                loop {
                    // Commit up to the start of the oldest open group (groups are atomic).
                    let base = p.submitted - p.ops.len() as u64;
                    let limit = p.open_groups.iter().min().map_or(p.submitted, |s| s - 1);
                    if limit > base {
                        break;
                    }
                    if self.closing.load(Ordering::Relaxed) {
                        drop(p);
                        if let Err(e) = engine.sync() {
                            tracing::error!("{e} while closing the store");
                        }
                        return;
                    }
                    let wait = if unsynced {
                        interval.saturating_sub(last_sync.elapsed())
                    } else {
                        Duration::from_secs(3600)
                    };
                    let (g, timeout) = self.wake.wait_timeout(p, wait).unwrap_or_else(|e| e.into_inner());
                    p = g;
                    if timeout.timed_out() && unsynced && p.ops.is_empty() {
                        break;
                    }
                }
                let base = p.submitted - p.ops.len() as u64;
                let limit = p
                    .open_groups
                    .iter()
                    .min()
                    .map_or(p.submitted, |s| s - 1)
                    .max(base);
                let n = (limit - base) as usize;
                let rest = p.ops.split_off(n);
                (std::mem::replace(&mut p.ops, rest), limit)
            };
            let durable = match sync {
                SyncPolicy::Always => true,
                SyncPolicy::Interval => last_sync.elapsed() >= interval,
            };
            let started = std::time::Instant::now();
            let result = if ops.is_empty() {
                engine.sync()
            } else {
                engine.apply(&ops, durable)
            };
            self.metrics.commit(ops.len(), started.elapsed());
            match result {
                Ok(()) => {
                    if durable || ops.is_empty() {
                        last_sync = std::time::Instant::now();
                        unsynced = false;
                    } else {
                        unsynced = true;
                    }
                    if !ops.is_empty() {
                        if let Ok(m) = std::fs::metadata(&self.file) {
                            self.file_bytes.store(m.len(), Ordering::Relaxed);
                        }
                    }
                    self.committed.advance(upto);
                }
                Err(e) => {
                    tracing::error!(
                        "{e}; refusing QoS 1/2 messages from now on (nothing unsaved is acknowledged)"
                    );
                    *self.error.lock().unwrap_or_else(|e| e.into_inner()) = Some(e);
                    self.failed.store(true, Ordering::Relaxed);
                    self.committed.fail();
                }
            }
        }
    }
}

impl Durability for Store {
    fn submit(&self, change: Change) -> Ticket {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        p.ops.push(change);
        p.submitted += 1;
        let seq = p.submitted;
        drop(p);
        self.wake.notify_one();
        seq
    }

    fn group(&self) -> Group {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let start = p.submitted + 1;
        p.open_groups.push(start);
        Group::starting_at(start)
    }

    fn end_group(&self, g: Group) -> Ticket {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = p.open_groups.iter().position(|&s| s == g.first()) {
            p.open_groups.swap_remove(i);
        }
        let upto = p.submitted;
        drop(p);
        self.wake.notify_one();
        upto
    }

    fn submitted(&self) -> Ticket {
        self.pending.lock().unwrap_or_else(|e| e.into_inner()).submitted
    }

    fn progress(&self) -> &crate::durability::Progress {
        &self.committed
    }

    fn error(&self) -> Option<StoreError> {
        if !self.is_failed() {
            return None;
        }
        let e = self.error.lock().unwrap_or_else(|e| e.into_inner()).clone();
        Some(e.unwrap_or_else(|| StoreError("unknown".into())))
    }

    fn reads_back(&self) -> bool {
        true
    }

    fn read_queued(
        &self,
        client: &str,
        after: u64,
        max: usize,
    ) -> Result<Vec<crate::durability::StoredDelivery>, StoreError> {
        self.reader.read_queued(client, after, max)
    }

    fn read_retained(&self, topic: &str) -> Result<Option<Arc<crate::message::Message>>, StoreError> {
        self.reader.read_retained(topic)
    }

    fn disk_bytes(&self) -> u64 {
        self.file_bytes.load(Ordering::Relaxed)
    }

    /// Commit and sync what is pending, then close the database (blocking).
    fn close(&self) {
        self.closing.store(true, Ordering::Relaxed);
        self.wake.notify_one();
        let handle = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(h) = handle {
            let _ = h.join();
        }
    }
}
