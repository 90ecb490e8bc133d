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

/// Everything read back at start.
#[derive(Debug, Default)]
pub(crate) struct Loaded {
    pub retained: Vec<(String, Bytes)>,
    pub sessions: Vec<(String, Bytes)>,
    /// Message key (client id, 0, sequence) and record, in key order.
    pub messages: Vec<(Vec<u8>, Bytes)>,
    pub qos2: Vec<Vec<u8>>,
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
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Engine(redb)")
    }
}

impl Engine {
    pub fn open(dir: &Path) -> Result<Engine, StoreError> {
        let path = dir.join("tern.redb");
        let db = Database::create(&path).map_err(|e| err(&format!("cannot open {}", path.display()), e))?;
        // Create the tables so that reads never find them missing.
        let txn = db.begin_write().map_err(|e| err("begin", e))?;
        {
            txn.open_table(RETAINED).map_err(|e| err("open table", e))?;
            txn.open_table(SESSIONS).map_err(|e| err("open table", e))?;
            txn.open_table(MESSAGES).map_err(|e| err("open table", e))?;
            txn.open_table(QOS2).map_err(|e| err("open table", e))?;
        }
        txn.commit().map_err(|e| err("commit", e))?;
        Ok(Engine { db })
    }

    pub fn load(&self) -> Result<Loaded, StoreError> {
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
            for op in ops {
                let r = match op {
                    Op::PutRetained(t, v) => retained.insert(t.as_str(), &v[..]).map(drop),
                    Op::DelRetained(t) => retained.remove(t.as_str()).map(drop),
                    Op::PutSession(c, v) => sessions.insert(&**c, &v[..]).map(drop),
                    Op::DelSession(c) => {
                        let range = client_range(c);
                        sessions
                            .remove(&**c)
                            .and_then(|_| messages.retain_in(&range.start[..]..&range.end[..], |_, _| false))
                            .and_then(|_| qos2.retain_in(&range.start[..]..&range.end[..], |_, _| false))
                    }
                    Op::PutMessage(c, seq, v) => messages
                        .insert(&super::record::message_key(c, *seq)[..], &v[..])
                        .map(drop),
                    Op::DelMessage(c, seq) => messages
                        .remove(&super::record::message_key(c, *seq)[..])
                        .map(drop),
                    Op::PutQos2(c, id) => qos2.insert(&super::record::qos2_key(c, *id)[..], ()).map(drop),
                    Op::DelQos2(c, id) => qos2.remove(&super::record::qos2_key(c, *id)[..]).map(drop),
                };
                r.map_err(|e| err("write", e))?;
            }
        }
        txn.commit().map_err(|e| err("commit", e))
    }

    /// Make every earlier commit durable.
    pub fn sync(&mut self) -> Result<(), StoreError> {
        self.apply(&[], true)
    }
}
