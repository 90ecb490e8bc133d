//! The embedded engine: redb (one file, B-tree, ACID transactions).
//!
//! Chosen over fjall by measurement on this workload (bench/store-compare, see
//! ARCHITECTURE.md): with group commit redb stores and deletes more messages per
//! fsync, and it reads a large store back about three times faster.

use std::ops::Range;
use std::path::Path;

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};

use std::sync::Arc;

use super::record::{self, Corrupt};
use super::StoreError;
use crate::durability::{Change, Stored};

const RETAINED: TableDefinition<&str, &[u8]> = TableDefinition::new("retained");
const SESSIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("sessions");
const MESSAGES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("messages");
const QOS2: TableDefinition<&[u8], ()> = TableDefinition::new("qos2");
/// Messages queued for persistent sessions, each stored once (payload id -> record).
const PAYLOADS: TableDefinition<u64, &[u8]> = TableDefinition::new("payloads");

fn err(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError(format!("{what}: {e}"))
}

fn corrupt(table: &str, key: &str, e: Corrupt) -> StoreError {
    StoreError(format!(
        "{e} in {table} ({key}); the data directory is damaged: restore it from a backup or move it aside to start empty"
    ))
}

/// Reads queued deliveries back from committed transactions, beside the writer.
#[derive(Clone)]
pub(crate) struct Reader {
    db: Arc<Database>,
    clock: crate::clock::Clock,
}

impl std::fmt::Debug for Reader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Reader(redb)")
    }
}

impl Reader {
    /// The retained message of `topic`, from what is committed.
    pub fn read_retained(&self, topic: &str) -> Result<Option<Arc<crate::message::Message>>, StoreError> {
        let txn = self.db.begin_read().map_err(|e| err("begin read", e))?;
        let t = txn.open_table(RETAINED).map_err(|e| err("open retained", e))?;
        let Some(raw) = t.get(topic).map_err(|e| err("read retained", e))? else {
            return Ok(None);
        };
        let msg = record::read_retained(raw.value(), self.clock.stamp())
            .map_err(|e| corrupt("retained", topic, e))?;
        Ok(Some(Arc::new(msg)))
    }

    /// Up to `max` queued deliveries of `client` with a sequence number above `after`, in
    /// order, from what is committed.
    pub fn read_queued(
        &self,
        client: &str,
        after: u64,
        max: usize,
    ) -> Result<Vec<crate::durability::StoredDelivery>, StoreError> {
        let stamp = self.clock.stamp();
        let txn = self.db.begin_read().map_err(|e| err("begin read", e))?;
        let messages = txn.open_table(MESSAGES).map_err(|e| err("open messages", e))?;
        let payloads = txn.open_table(PAYLOADS).map_err(|e| err("open payloads", e))?;
        let from = record::message_key(client, after.saturating_add(1));
        let end = client_range(client).end;
        let mut out = Vec::new();
        for row in messages
            .range(&from[..]..&end[..])
            .map_err(|e| err("read messages", e))?
        {
            if out.len() >= max {
                break;
            }
            let (k, v) = row.map_err(|e| err("read messages", e))?;
            let (_, seq) = record::split_key(k.value()).map_err(|e| corrupt("messages", "key", e))?;
            let mut missing = None;
            let d = record::read_queued(v.value(), seq, stamp, |id| {
                let raw = match payloads.get(id) {
                    Ok(Some(raw)) => raw,
                    Ok(None) => return None,
                    Err(e) => {
                        missing = Some(err("read payloads", e));
                        return None;
                    }
                };
                let mut msg = record::read_payload(raw.value(), stamp).ok()?;
                msg.stored = crate::message::StoredId::known(id);
                Some(Arc::new(msg))
            });
            if let Some(e) = missing {
                return Err(e);
            }
            let d = d.map_err(|e| corrupt("messages", client, e))?;
            // Deliveries in flight were in memory from the start: only queued ones are read.
            if d.stage.is_none() {
                out.push(d);
            }
        }
        Ok(out)
    }
}

/// Keys of one client: `client_id 0 ..` up to `client_id 1`.
fn client_range(client: &str) -> Range<Vec<u8>> {
    let mut lo = client.as_bytes().to_vec();
    lo.push(0);
    let mut hi = client.as_bytes().to_vec();
    hi.push(1);
    lo..hi
}

pub(crate) struct Engine {
    db: Arc<Database>,
    /// For the wall-clock expiry times of payload records.
    clock: crate::clock::Clock,
    /// Payload id -> number of queued records referring to it. Kept by the writer alone, in
    /// step with the transactions it commits: a payload is written with its first reference
    /// and deleted with its last.
    refs: rustc_hash::FxHashMap<u64, u32>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Engine(redb)")
    }
}

/// What start-up reads into memory; the rest stays on disk and is read when needed.
#[derive(Debug, Clone, Copy)]
pub struct Resident {
    /// Queued (not sent) deliveries read per session (`max_queued_messages`).
    pub per_session: usize,
    /// Payload bytes of the queued deliveries read, all sessions together
    /// (`offline_cache_bytes`).
    pub queued_bytes: usize,
    /// Memory for retained messages, as `retained_cache::resident_cost` counts it
    /// (`retained_cache_bytes`).
    pub retained_bytes: usize,
}

#[cfg(test)]
impl Resident {
    /// Everything.
    pub const ALL: Resident = Resident {
        per_session: usize::MAX,
        queued_bytes: usize::MAX,
        retained_bytes: usize::MAX,
    };
}

impl Engine {
    /// Open (or create) the database in `dir`, with a page cache of `cache_bytes`.
    pub fn open(dir: &Path, clock: crate::clock::Clock, cache_bytes: usize) -> Result<Engine, StoreError> {
        let path = dir.join("tern.redb");
        let db = Database::builder()
            .set_cache_size(cache_bytes)
            .create(&path)
            .map_err(|e| err(&format!("cannot open {}", path.display()), e))?;
        // Create the tables so that reads never find them missing.
        let txn = db.begin_write().map_err(|e| err("begin", e))?;
        {
            txn.open_table(RETAINED).map_err(|e| err("open table", e))?;
            txn.open_table(SESSIONS).map_err(|e| err("open table", e))?;
            txn.open_table(MESSAGES).map_err(|e| err("open table", e))?;
            txn.open_table(QOS2).map_err(|e| err("open table", e))?;
            txn.open_table(PAYLOADS).map_err(|e| err("open table", e))?;
        }
        txn.commit().map_err(|e| err("commit", e))?;
        Ok(Engine {
            db: Arc::new(db),
            clock,
            refs: Default::default(),
        })
    }

    /// A handle that reads queued deliveries back while the writer runs.
    pub fn reader(&self) -> Reader {
        Reader {
            db: self.db.clone(),
            clock: self.clock.clone(),
        }
    }

    /// Read everything back, count the references to each payload, and delete the payloads
    /// nothing refers to. A record that does not read back is an error (never guessed at).
    /// Of the queued (not sent) deliveries, each session's first `resident.per_session` are
    /// read, as long as all of them together stay within `resident.queued_bytes` of payload;
    /// the others are counted in `Stored::spilled` and stay on disk. Retained messages beyond
    /// `resident.retained_bytes` of memory (`resident_cost`) are only described
    /// (`Stored::retained_on_disk`).
    pub fn load(&mut self, resident: Resident) -> Result<Stored, StoreError> {
        let stamp = self.clock.stamp();
        let txn = self.db.begin_read().map_err(|e| err("begin read", e))?;
        let mut l = Stored::default();
        let t = txn.open_table(RETAINED).map_err(|e| err("open retained", e))?;
        let mut retained_cost = 0;
        for row in t.iter().map_err(|e| err("read retained", e))? {
            let (k, v) = row.map_err(|e| err("read retained", e))?;
            let msg =
                record::read_retained(v.value(), stamp).map_err(|e| corrupt("retained", k.value(), e))?;
            let cost = crate::retained_cache::resident_cost(msg.topic.len(), msg.payload.len());
            if retained_cost + cost <= resident.retained_bytes {
                retained_cost += cost;
                l.retained.push(Arc::new(msg));
            } else {
                l.retained_on_disk.push(crate::durability::RetainedOnDisk {
                    topic: k.value().to_string(),
                    qos: msg.qos,
                    size: msg.payload.len(),
                    expires_at: msg.expires_at,
                });
            }
        }
        let t = txn.open_table(SESSIONS).map_err(|e| err("open sessions", e))?;
        for row in t.iter().map_err(|e| err("read sessions", e))? {
            let (k, v) = row.map_err(|e| err("read sessions", e))?;
            let rec =
                record::read_session(v.value(), stamp).map_err(|e| corrupt("sessions", k.value(), e))?;
            l.sessions.push((Arc::from(k.value()), rec));
        }
        // The size of every payload first (not its contents): what a queued delivery costs
        // in memory is known before it is kept or left on disk.
        let mut sizes: rustc_hash::FxHashMap<u64, u32> = rustc_hash::FxHashMap::default();
        let payloads_table = txn.open_table(PAYLOADS).map_err(|e| err("open payloads", e))?;
        for row in payloads_table.iter().map_err(|e| err("read payloads", e))? {
            let (k, v) = row.map_err(|e| err("read payloads", e))?;
            sizes.insert(k.value(), u32::try_from(v.value().len()).unwrap_or(u32::MAX));
        }
        // Then the deliveries, counting the references to each payload. Of each session's
        // queued deliveries, the first `per_session` are kept while all kept together stay
        // within `queued_bytes`; once one is left on disk, so are the session's later ones (in
        // order). Only the rows kept are held until their payloads are read.
        self.refs.clear();
        let mut kept: Vec<(Arc<str>, u64, Vec<u8>)> = Vec::new();
        let mut used = 0u64;
        // The client of the last row, how many of its queued deliveries were kept, and
        // whether the rest of them stays on disk.
        let mut client: Option<(Arc<str>, usize, bool)> = None;
        let placeholder = Arc::new(crate::message::Message::new(
            "",
            bytes::Bytes::new(),
            tern_proto::QoS::AtMostOnce,
            false,
        ));
        let t = txn.open_table(MESSAGES).map_err(|e| err("open messages", e))?;
        for row in t.iter().map_err(|e| err("read messages", e))? {
            let (k, v) = row.map_err(|e| err("read messages", e))?;
            let payload_id = record::queued_payload_id(v.value());
            if let Some(id) = payload_id {
                *self.refs.entry(id).or_insert(0) += 1;
            }
            let (name, seq) = record::split_key(k.value()).map_err(|e| corrupt("messages", "key", e))?;
            if client.as_ref().is_some_and(|(c, _, _)| **c != *name) {
                client = None;
            }
            let (c, read, spilling) = client.get_or_insert_with(|| (Arc::from(&*name), 0, false));
            // Whether it is queued, read without its payload.
            let queued = record::read_queued(v.value(), seq, stamp, |_| Some(placeholder.clone()))
                .map_err(|e| corrupt("messages", c, e))?
                .stage
                .is_none();
            if let (true, Some(id)) = (queued, payload_id) {
                let size = u64::from(sizes.get(&id).copied().unwrap_or(0));
                *spilling |= *read >= resident.per_session || used + size > resident.queued_bytes as u64;
                if *spilling {
                    match l.spilled.last_mut() {
                        Some((last, s)) if Arc::ptr_eq(last, c) => {
                            s.count += 1;
                            s.bytes += size;
                            s.last = seq;
                        }
                        _ => l.spilled.push((
                            c.clone(),
                            crate::durability::Spilled {
                                count: 1,
                                bytes: size,
                                after: seq.saturating_sub(1),
                                last: seq,
                            },
                        )),
                    }
                    continue;
                }
                *read += 1;
                used += size;
            }
            kept.push((c.clone(), seq, v.value().to_vec()));
        }
        drop(placeholder);
        l.max_message_id = self.refs.keys().copied().max().unwrap_or(0);
        let orphans: Vec<u64> = sizes
            .keys()
            .copied()
            .filter(|id| !self.refs.contains_key(id))
            .collect();
        drop(sizes);
        // The payloads of the deliveries kept, each read once.
        let mut payloads = rustc_hash::FxHashMap::default();
        for id in kept.iter().filter_map(|(_, _, v)| record::queued_payload_id(v)) {
            if payloads.contains_key(&id) {
                continue;
            }
            let Some(v) = payloads_table.get(id).map_err(|e| err("read payloads", e))? else {
                continue;
            };
            let mut msg = record::read_payload(v.value(), stamp)
                .map_err(|e| corrupt("payloads", &id.to_string(), e))?;
            msg.stored = crate::message::StoredId::known(id);
            payloads.insert(id, Arc::new(msg));
        }
        drop(payloads_table);
        for (client, seq, value) in kept {
            let d = record::read_queued(&value, seq, stamp, |id| payloads.get(&id).cloned())
                .map_err(|e| corrupt("messages", &client, e))?;
            l.deliveries.push((client, d));
        }
        let t = txn.open_table(QOS2).map_err(|e| err("open qos2", e))?;
        for row in t.iter().map_err(|e| err("read qos2", e))? {
            let (k, _) = row.map_err(|e| err("read qos2", e))?;
            let (client, id) = record::split_key(k.value()).map_err(|e| corrupt("qos2", "key", e))?;
            let id =
                u16::try_from(id).map_err(|_| corrupt("qos2", &client, Corrupt("packet id out of range")))?;
            l.qos2.push((Arc::from(&client[..]), id));
        }
        drop(t);
        drop(txn);
        if !orphans.is_empty() {
            let txn = self.db.begin_write().map_err(|e| err("begin write", e))?;
            {
                let mut t = txn.open_table(PAYLOADS).map_err(|e| err("open payloads", e))?;
                for id in orphans {
                    t.remove(id).map_err(|e| err("write", e))?;
                }
            }
            txn.commit().map_err(|e| err("commit", e))?;
        }
        Ok(l)
    }

    /// Encode and apply `ops` in one transaction; `durable` syncs it to disk before returning.
    pub fn apply(&mut self, ops: &[Change], durable: bool) -> Result<(), StoreError> {
        let mut txn = self.db.begin_write().map_err(|e| err("begin write", e))?;
        txn.set_durability(if durable {
            Durability::Immediate
        } else {
            Durability::None
        })
        .map_err(|e| err("set durability", e))?;
        {
            let mut retained = txn.open_table(RETAINED).map_err(|e| err("open retained", e))?;
            let mut sessions = txn.open_table(SESSIONS).map_err(|e| err("open sessions", e))?;
            let mut messages = txn.open_table(MESSAGES).map_err(|e| err("open messages", e))?;
            let mut qos2 = txn.open_table(QOS2).map_err(|e| err("open qos2", e))?;
            let mut payloads = txn.open_table(PAYLOADS).map_err(|e| err("open payloads", e))?;
            let refs = &mut self.refs;
            // Wall-clock times (message expiry, will delay) are written from the time of the commit.
            let stamp = self.clock.stamp();
            let mut released = Vec::new();
            for op in ops {
                let r = match op {
                    Change::PutRetained(m) => retained
                        .insert(&*m.topic, &record::retained(m, stamp)[..])
                        .map(drop),
                    Change::DelRetained(t) => retained.remove(t.as_str()).map(drop),
                    Change::PutSession(c, snap) => {
                        sessions.insert(&**c, &record::session(snap, stamp)[..]).map(drop)
                    }
                    Change::DelSession(c) => {
                        let range = client_range(c);
                        sessions
                            .remove(&**c)
                            .and_then(|_| {
                                messages.retain_in(&range.start[..]..&range.end[..], |_, v| {
                                    released.extend(record::queued_payload_id(v));
                                    false
                                })
                            })
                            .and_then(|_| qos2.retain_in(&range.start[..]..&range.end[..], |_, _| false))
                    }
                    Change::PutDelivery(c, d) => {
                        let key = record::message_key(c, d.seq);
                        let old = messages
                            .insert(&key[..], &record::queued(d)[..])
                            .map(|old| old.and_then(|g| record::queued_payload_id(g.value())));
                        // The new reference is taken before the old one (a stage change of
                        // the same delivery) is released, so the payload stays.
                        let n = refs.entry(d.message_id).or_insert(0);
                        *n += 1;
                        let first = *n == 1;
                        old.and_then(|old| {
                            released.extend(old);
                            if first {
                                payloads.insert(d.message_id, &record::payload(&d.message, stamp)[..])?;
                            }
                            Ok(())
                        })
                    }
                    Change::DelDelivery(c, seq) => messages
                        .remove(&record::message_key(c, *seq)[..])
                        .map(|old| released.extend(old.and_then(|g| record::queued_payload_id(g.value())))),
                    Change::PutQos2(c, id) => qos2.insert(&record::qos2_key(c, *id)[..], ()).map(drop),
                    Change::DelQos2(c, id) => qos2.remove(&record::qos2_key(c, *id)[..]).map(drop),
                };
                r.map_err(|e| err("write", e))?;
                for id in released.drain(..) {
                    if let Some(n) = refs.get_mut(&id) {
                        *n -= 1;
                        if *n == 0 {
                            refs.remove(&id);
                            payloads.remove(id).map_err(|e| err("write", e))?;
                        }
                    }
                }
            }
        }
        txn.commit().map_err(|e| err("commit", e))
    }

    /// Make every earlier commit durable.
    pub fn sync(&mut self) -> Result<(), StoreError> {
        self.apply(&[], true)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::durability::StoredDelivery;
    use crate::message::Message;
    use crate::session::InflightState;
    use bytes::Bytes;

    struct Dir(std::path::PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn dir(name: &str) -> Dir {
        let p = std::env::temp_dir().join(format!("tern-engine-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Dir(p)
    }

    fn payload_rows(e: &Engine) -> usize {
        let txn = e.db.begin_read().unwrap();
        let t = txn.open_table(PAYLOADS).unwrap();
        t.iter().unwrap().count()
    }

    fn message(body: &'static [u8]) -> Arc<Message> {
        Arc::new(Message {
            topic: "t".into(),
            payload: Bytes::from_static(body),
            qos: tern_proto::QoS::AtLeastOnce,
            retain: false,
            properties: Default::default(),
            expires_at: None,
            publisher: None,
            stored: Default::default(),
            received_at: None,
            mark: Default::default(),
            placed: 0,
        })
    }

    fn put(
        client: &str,
        seq: u64,
        m: &Arc<Message>,
        id: u64,
        stage: Option<(InflightState, tern_proto::PacketId)>,
    ) -> Change {
        let d = StoredDelivery {
            seq,
            stage,
            qos: tern_proto::QoS::AtLeastOnce,
            retain: false,
            subscription_ids: Vec::new(),
            shared: None,
            message: m.clone(),
            message_id: id,
        };
        Change::PutDelivery(Arc::from(client), d)
    }

    #[test]
    fn a_payload_is_stored_once_and_deleted_with_its_last_reference() {
        let d = dir("refs");
        let clock = crate::clock::Clock::system();
        let mut e = Engine::open(&d.0, clock.clone(), 1 << 20).unwrap();
        e.load(Resident::ALL).unwrap();
        let o = message(b"shared payload");
        let ops: Vec<Change> = ["a", "b", "c"].iter().map(|c| put(c, 1, &o, 7, None)).collect();
        e.apply(&ops, false).unwrap();
        assert_eq!(payload_rows(&e), 1, "three sessions, one payload record");
        // A stage change rewrites the delivery: still one payload, three references.
        let sent = Some((InflightState::Published, tern_proto::PacketId::new(1).unwrap()));
        e.apply(&[put("a", 1, &o, 7, sent)], false).unwrap();
        e.apply(&[Change::DelDelivery(Arc::from("a"), 1)], false).unwrap();
        e.apply(&[Change::DelSession(Arc::from("b"))], false).unwrap();
        assert_eq!(payload_rows(&e), 1, "c still refers to it");
        e.apply(&[Change::DelDelivery(Arc::from("c"), 1)], false).unwrap();
        assert_eq!(payload_rows(&e), 0, "deleted with the last reference");

        // After a restart the counts are rebuilt from the queued records.
        let o2 = message(b"second");
        e.apply(&[put("a", 2, &o2, 8, None), put("b", 2, &o2, 8, None)], true)
            .unwrap();
        drop(e);
        let mut e = Engine::open(&d.0, clock, 1 << 20).unwrap();
        let l = e.load(Resident::ALL).unwrap();
        assert_eq!(l.deliveries.len(), 2);
        assert!(
            Arc::ptr_eq(&l.deliveries[0].1.message, &l.deliveries[1].1.message),
            "read once, shared"
        );
        e.apply(&[Change::DelDelivery(Arc::from("a"), 2)], false).unwrap();
        assert_eq!(payload_rows(&e), 1);
        e.apply(&[Change::DelSession(Arc::from("b"))], false).unwrap();
        assert_eq!(payload_rows(&e), 0);
    }

    #[test]
    fn payloads_nothing_refers_to_are_deleted_at_start() {
        let d = dir("orphans");
        let clock = crate::clock::Clock::system();
        let mut e = Engine::open(&d.0, clock.clone(), 1 << 20).unwrap();
        e.load(Resident::ALL).unwrap();
        // A payload without references, as a crash of an older writer could leave.
        let txn = e.db.begin_write().unwrap();
        txn.open_table(PAYLOADS).unwrap().insert(3, &b"x"[..]).unwrap();
        txn.commit().unwrap();
        drop(e);
        let mut e = Engine::open(&d.0, clock, 1 << 20).unwrap();
        assert!(e.load(Resident::ALL).unwrap().deliveries.is_empty());
        assert_eq!(payload_rows(&e), 0);
    }
}
