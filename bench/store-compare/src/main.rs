//! Tern's persistence workload on redb and fjall: QoS 1 messages appended to
//! per-session queues and deleted when acknowledged, committed with fsync in
//! groups (group commit), as the broker does with `sync = "always"`.
//!
//! Run: `cargo run --release --manifest-path bench/store-compare/Cargo.toml -- DIR`
//! Prints one line per (engine, group size): messages/s stored and acknowledged.

use std::time::{Duration, Instant};

const SESSIONS: u32 = 64;
const RECORD: usize = 160; // a 64-byte payload, topic, properties and metadata
const RUN: Duration = Duration::from_secs(3);

fn key(session: u32, seq: u64) -> [u8; 12] {
    let mut k = [0u8; 12];
    k[..4].copy_from_slice(&session.to_be_bytes());
    k[4..].copy_from_slice(&seq.to_be_bytes());
    k
}

trait Engine {
    /// Store `puts` new records and delete `dels` old ones in one durable commit.
    fn commit(&mut self, puts: &[[u8; 12]], dels: &[[u8; 12]], value: &[u8]);
    /// Read every record (recovery).
    fn scan(&self) -> usize;
}

struct Redb {
    db: redb::Database,
}

const TABLE: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("messages");

impl Engine for Redb {
    fn commit(&mut self, puts: &[[u8; 12]], dels: &[[u8; 12]], value: &[u8]) {
        let mut txn = self.db.begin_write().unwrap();
        txn.set_durability(redb::Durability::Immediate).unwrap();
        {
            let mut t = txn.open_table(TABLE).unwrap();
            for k in puts {
                t.insert(&k[..], value).unwrap();
            }
            for k in dels {
                t.remove(&k[..]).unwrap();
            }
        }
        txn.commit().unwrap();
    }
    fn scan(&self) -> usize {
        use redb::{ReadableDatabase, ReadableTable};
        let txn = self.db.begin_read().unwrap();
        match txn.open_table(TABLE) {
            Ok(t) => t.iter().unwrap().count(),
            Err(_) => 0,
        }
    }
}

struct Fjall {
    db: fjall::Database,
    ks: fjall::Keyspace,
}

impl Engine for Fjall {
    fn commit(&mut self, puts: &[[u8; 12]], dels: &[[u8; 12]], value: &[u8]) {
        let mut b = self.db.batch();
        for k in puts {
            b.insert(&self.ks, &k[..], value);
        }
        for k in dels {
            b.remove(&self.ks, &k[..]);
        }
        b.commit().unwrap();
        self.db.persist(fjall::PersistMode::SyncAll).unwrap();
    }
    fn scan(&self) -> usize {
        self.ks.iter().count()
    }
}

fn run(name: &str, e: &mut dyn Engine, group: usize) {
    let value = vec![0xAB; RECORD];
    let mut seq = 0u64;
    let mut pending: Vec<[u8; 12]> = Vec::new();
    let mut acked = 0u64;
    let mut commits = 0u64;
    let start = Instant::now();
    while start.elapsed() < RUN {
        let puts: Vec<[u8; 12]> = (0..group)
            .map(|i| {
                seq += 1;
                key(i as u32 % SESSIONS, seq)
            })
            .collect();
        // Acknowledge what the previous commit stored (the subscriber's PUBACK).
        let dels = std::mem::take(&mut pending);
        e.commit(&puts, &dels, &value);
        acked += dels.len() as u64;
        pending = puts;
        commits += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{name:6} group {group:4}: {:9.0} msg/s stored+acked, {:7.0} fsync commits/s",
        acked as f64 / secs,
        commits as f64 / secs
    );
}

fn recovery(name: &str, e: &mut dyn Engine) {
    let value = vec![0xAB; RECORD];
    let total = 200_000u64;
    let mut seq = 1_000_000_000u64;
    for _ in 0..(total / 1000) {
        let puts: Vec<[u8; 12]> = (0..1000)
            .map(|i| {
                seq += 1;
                key(i % SESSIONS, seq)
            })
            .collect();
        e.commit(&puts, &[], &value);
    }
    let start = Instant::now();
    let n = e.scan();
    println!("{name:6} recovery scan of {n} records: {:?}", start.elapsed());
}

fn main() {
    let dir = std::path::PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "/tmp/store-compare".into()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for group in [1, 16, 128] {
        let mut r = Redb { db: redb::Database::create(dir.join(format!("redb-{group}"))).unwrap() };
        run("redb", &mut r, group);
        let db = fjall::Database::builder(dir.join(format!("fjall-{group}"))).open().unwrap();
        let ks = db.keyspace("messages", fjall::KeyspaceCreateOptions::default).unwrap();
        let mut f = Fjall { db, ks };
        run("fjall", &mut f, group);
    }
    let mut r = Redb { db: redb::Database::create(dir.join("redb-rec")).unwrap() };
    recovery("redb", &mut r);
    let db = fjall::Database::builder(dir.join("fjall-rec")).open().unwrap();
    let ks = db.keyspace("messages", fjall::KeyspaceCreateOptions::default).unwrap();
    recovery("fjall", &mut Fjall { db, ks });
}
