//! The embedded engine: redb (one file, B-tree, ACID transactions).
//!
//! Chosen over fjall by measurement on this workload (bench/store-compare, see
//! ARCHITECTURE.md): with group commit redb stores and deletes more messages per
//! fsync, and it reads a large store back about three times faster.

use std::ops::Range;
use std::path::Path;

use bytes::Bytes;
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};

use super::{Op, StoreError};

const RETAINED: TableDefinition<&str, &[u8]> = TableDefinition::new("retained");
const SESSIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("sessions");
const MESSAGES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("messages");
const QOS2: TableDefinition<&[u8], ()> = TableDefinition::new("qos2");
/// Messages queued for persistent sessions, each stored once (payload id -> record).
const PAYLOADS: TableDefinition<u64, &[u8]> = TableDefinition::new("payloads");

/// Everything read back at start.
#[derive(Debug, Default)]
pub(crate) struct Loaded {
    pub retained: Vec<(String, Bytes)>,
    pub sessions: Vec<(String, Bytes)>,
    /// Message key (client id, 0, sequence) and record, in key order.
    pub messages: Vec<(Vec<u8>, Bytes)>,
    pub qos2: Vec<Vec<u8>>,
    /// Payload records still referred to, by id.
    pub payloads: Vec<(u64, Bytes)>,
}

fn err(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError(format!("{what}: {e}"))
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
    db: Database,
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

impl Engine {
    pub fn open(dir: &Path, clock: crate::clock::Clock) -> Result<Engine, StoreError> {
        let path = dir.join("tern.redb");
        let db = Database::create(&path).map_err(|e| err(&format!("cannot open {}", path.display()), e))?;
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
            db,
            clock,
            refs: Default::default(),
        })
    }

    /// Read everything back, count the references to each payload, and delete the payloads
    /// nothing refers to.
    pub fn load(&mut self) -> Result<Loaded, StoreError> {
        let txn = self.db.begin_read().map_err(|e| err("begin read", e))?;
        let mut l = Loaded::default();
        let t = txn.open_table(RETAINED).map_err(|e| err("open retained", e))?;
        for row in t.iter().map_err(|e| err("read retained", e))? {
            let (k, v) = row.map_err(|e| err("read retained", e))?;
            l.retained
                .push((k.value().to_string(), Bytes::copy_from_slice(v.value())));
        }
        let t = txn.open_table(SESSIONS).map_err(|e| err("open sessions", e))?;
        for row in t.iter().map_err(|e| err("read sessions", e))? {
            let (k, v) = row.map_err(|e| err("read sessions", e))?;
            l.sessions
                .push((k.value().to_string(), Bytes::copy_from_slice(v.value())));
        }
        let t = txn.open_table(MESSAGES).map_err(|e| err("open messages", e))?;
        for row in t.iter().map_err(|e| err("read messages", e))? {
            let (k, v) = row.map_err(|e| err("read messages", e))?;
            l.messages
                .push((k.value().to_vec(), Bytes::copy_from_slice(v.value())));
        }
        let t = txn.open_table(QOS2).map_err(|e| err("open qos2", e))?;
        for row in t.iter().map_err(|e| err("read qos2", e))? {
            let (k, _) = row.map_err(|e| err("read qos2", e))?;
            l.qos2.push(k.value().to_vec());
        }
        self.refs.clear();
        for (_, raw) in &l.messages {
            if let Some(id) = super::record::queued_payload_id(raw) {
                *self.refs.entry(id).or_insert(0) += 1;
            }
        }
        let mut orphans = Vec::new();
        let t = txn.open_table(PAYLOADS).map_err(|e| err("open payloads", e))?;
        for row in t.iter().map_err(|e| err("read payloads", e))? {
            let (k, v) = row.map_err(|e| err("read payloads", e))?;
            let id = k.value();
            if self.refs.contains_key(&id) {
                l.payloads.push((id, Bytes::copy_from_slice(v.value())));
            } else {
                orphans.push(id);
            }
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

    /// Apply `ops` in one transaction; `durable` syncs it to disk before returning.
    pub fn apply(&mut self, ops: &[Op], durable: bool) -> Result<(), StoreError> {
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
            let mut stamp = None;
            let mut released = Vec::new();
            for op in ops {
                let r =
                    match op {
                        Op::PutRetained(t, v) => retained.insert(t.as_str(), &v[..]).map(drop),
                        Op::DelRetained(t) => retained.remove(t.as_str()).map(drop),
                        Op::PutSession(c, v) => sessions.insert(&**c, &v[..]).map(drop),
                        Op::DelSession(c) => {
                            let range = client_range(c);
                            sessions
                                .remove(&**c)
                                .and_then(|_| {
                                    messages.retain_in(&range.start[..]..&range.end[..], |_, v| {
                                        released.extend(super::record::queued_payload_id(v));
                                        false
                                    })
                                })
                                .and_then(|_| qos2.retain_in(&range.start[..]..&range.end[..], |_, _| false))
                        }
                        Op::PutMessage(c, seq, v, p) => {
                            let key = super::record::message_key(c, *seq);
                            let old = messages
                                .insert(&key[..], &v[..])
                                .map(|old| old.and_then(|g| super::record::queued_payload_id(g.value())));
                            // The new reference is taken before the old one (a stage change of
                            // the same delivery) is released, so the payload stays.
                            let n = refs.entry(p.id).or_insert(0);
                            *n += 1;
                            let first = *n == 1;
                            old.and_then(|old| {
                                released.extend(old);
                                if first {
                                    let stamp = *stamp.get_or_insert_with(|| self.clock.stamp());
                                    payloads.insert(p.id, &super::record::payload(&p.msg, stamp)[..])?;
                                }
                                Ok(())
                            })
                        }
                        Op::DelMessage(c, seq) => messages
                            .remove(&super::record::message_key(c, *seq)[..])
                            .map(|old| {
                                released.extend(old.and_then(|g| super::record::queued_payload_id(g.value())))
                            }),
                        Op::PutQos2(c, id) => qos2.insert(&super::record::qos2_key(c, *id)[..], ()).map(drop),
                        Op::DelQos2(c, id) => qos2.remove(&super::record::qos2_key(c, *id)[..]).map(drop),
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
    use crate::message::{Message, Outgoing};
    use crate::session::InflightState;
    use crate::store::{record, Payload};

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

    fn out(body: &'static [u8]) -> Outgoing {
        let msg = Message {
            topic: "t".into(),
            payload: Bytes::from_static(body),
            qos: tern_proto::QoS::AtLeastOnce,
            retain: false,
            properties: Default::default(),
            expires_at: None,
            publisher: None,
            stored: Default::default(),
        };
        Outgoing {
            msg: Arc::new(msg),
            qos: tern_proto::QoS::AtLeastOnce,
            retain: false,
            sub_ids: Vec::new(),
            shared: None,
            seq: 1,
            commit_seq: 0,
        }
    }

    fn put(
        client: &str,
        seq: u64,
        o: &Outgoing,
        id: u64,
        state: Option<(InflightState, tern_proto::PacketId)>,
    ) -> Op {
        let p = Payload {
            id,
            msg: o.msg.clone(),
        };
        Op::PutMessage(Arc::from(client), seq, record::queued(o, state, id), p)
    }

    #[test]
    fn a_payload_is_stored_once_and_deleted_with_its_last_reference() {
        let d = dir("refs");
        let clock = crate::clock::Clock::system();
        let mut e = Engine::open(&d.0, clock.clone()).unwrap();
        e.load().unwrap();
        let o = out(b"shared payload");
        let ops: Vec<Op> = ["a", "b", "c"].iter().map(|c| put(c, 1, &o, 7, None)).collect();
        e.apply(&ops, false).unwrap();
        assert_eq!(payload_rows(&e), 1, "three sessions, one payload record");
        // A stage change rewrites the delivery: still one payload, three references.
        let sent = Some((InflightState::Published, tern_proto::PacketId::new(1).unwrap()));
        e.apply(&[put("a", 1, &o, 7, sent)], false).unwrap();
        e.apply(&[Op::DelMessage(Arc::from("a"), 1)], false).unwrap();
        e.apply(&[Op::DelSession(Arc::from("b"))], false).unwrap();
        assert_eq!(payload_rows(&e), 1, "c still refers to it");
        e.apply(&[Op::DelMessage(Arc::from("c"), 1)], false).unwrap();
        assert_eq!(payload_rows(&e), 0, "deleted with the last reference");

        // After a restart the counts are rebuilt from the queued records.
        let o2 = out(b"second");
        e.apply(&[put("a", 2, &o2, 8, None), put("b", 2, &o2, 8, None)], true)
            .unwrap();
        drop(e);
        let mut e = Engine::open(&d.0, clock).unwrap();
        let l = e.load().unwrap();
        assert_eq!(l.payloads.len(), 1);
        e.apply(&[Op::DelMessage(Arc::from("a"), 2)], false).unwrap();
        assert_eq!(payload_rows(&e), 1);
        e.apply(&[Op::DelSession(Arc::from("b"))], false).unwrap();
        assert_eq!(payload_rows(&e), 0);
    }

    #[test]
    fn payloads_nothing_refers_to_are_deleted_at_start() {
        let d = dir("orphans");
        let clock = crate::clock::Clock::system();
        let mut e = Engine::open(&d.0, clock.clone()).unwrap();
        e.load().unwrap();
        // A payload without references, as a crash of an older writer could leave.
        let txn = e.db.begin_write().unwrap();
        txn.open_table(PAYLOADS).unwrap().insert(3, &b"x"[..]).unwrap();
        txn.commit().unwrap();
        drop(e);
        let mut e = Engine::open(&d.0, clock).unwrap();
        assert!(e.load().unwrap().payloads.is_empty());
        assert_eq!(payload_rows(&e), 0);
    }
}
