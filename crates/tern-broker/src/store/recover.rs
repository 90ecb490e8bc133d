//! Rebuilding the broker's state from the store at start.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tern_proto::PacketId;

use super::record::{self, Corrupt};
use super::{Loaded, Op};
use crate::router::SubEntry;
use crate::scheduler::Due;
use crate::session::{Inflight, SessionCell};
use crate::shared::Shared;
use crate::BrokerError;

fn corrupt(table: &str, key: &str, e: Corrupt) -> BrokerError {
    BrokerError::Store(format!(
        "{e} in {table} ({key}); the data directory is damaged: restore it from a backup or move it aside to start empty"
    ))
}

/// What was restored, for the start-up log line.
#[derive(Debug, Default)]
pub(crate) struct Restored {
    pub sessions: usize,
    pub messages: usize,
    pub retained: usize,
    pub expired_sessions: usize,
    pub expired_messages: usize,
}

impl Shared {
    /// Load sessions (offline, with their subscriptions, queues, in-flight messages and
    /// QoS 2 ids) and retained messages; drop what expired while the broker was down.
    pub(crate) fn restore(self: &Arc<Self>, loaded: Loaded) -> Result<Restored, BrokerError> {
        let stamp = self.clock.stamp();
        let (now, wall) = (stamp.now, stamp.wall_ms);
        let store = self.store.clone();
        let submit = |op: Op| {
            if let Some(s) = &store {
                s.submit(op);
            }
        };
        let mut r = Restored::default();
        for (topic, raw) in &loaded.retained {
            let msg = record::read_retained(raw, stamp).map_err(|e| corrupt("retained", topic, e))?;
            if msg.is_expired(now) {
                submit(Op::DelRetained(topic.clone()));
                continue;
            }
            self.restore_retained(Arc::new(msg));
            r.retained += 1;
        }
        let mut cells: HashMap<String, Arc<SessionCell>> = HashMap::new();
        for (client, raw) in &loaded.sessions {
            let rec = record::read_session(raw, stamp).map_err(|e| corrupt("sessions", client, e))?;
            let client_id: Arc<str> = Arc::from(client.as_str());
            // A session that was connected at the crash counts as disconnected now.
            let gone_at = if rec.disconnected_at == 0 {
                wall
            } else {
                rec.disconnected_at
            };
            let expires_at = gone_at.saturating_add(u64::from(rec.expiry_interval) * 1000);
            if rec.expiry_interval != u32::MAX && expires_at <= wall {
                // It ended while we were down: its delayed will is due now, once.
                if let Some((_, will)) = &rec.pending_will {
                    self.publish_will(will);
                }
                submit(Op::DelSession(client_id));
                r.expired_sessions += 1;
                continue;
            }
            let cell = Arc::new(SessionCell::new(client_id.clone(), rec.version));
            {
                let mut st = cell.lock();
                st.expiry_interval = rec.expiry_interval;
                st.persistent = true;
                st.generation = 1;
                for (filter, options, id) in &rec.subscriptions {
                    st.subscriptions.insert(filter.clone(), (*options, *id));
                }
                if let Some((at, will)) = &rec.pending_will {
                    st.pending_will = Some(will.clone());
                    st.pending_will_at = record::from_wall(*at, stamp);
                }
            }
            for (filter, options, id) in &rec.subscriptions {
                let shared = filter.starts_with("$share/").then(|| Arc::from(filter.as_str()));
                let entry = SubEntry {
                    options: *options,
                    id: *id,
                    session: cell.clone(),
                    shared,
                };
                if let Err(e) = self.subscribe(filter, &cell, entry) {
                    // The session must not list a subscription the router does not hold.
                    cell.lock().subscriptions.remove(filter);
                    tracing::warn!(client_id = %cell.client_id, %filter, "stored subscription not restored: {e}");
                }
            }
            let (will_at, generation) = {
                let st = cell.lock();
                (st.pending_will_at, st.generation)
            };
            if let Some(at) = will_at {
                self.scheduler.schedule(at, Due::Will, &cell, generation);
            }
            if rec.expiry_interval != u32::MAX {
                let at = now + Duration::from_millis(expires_at.saturating_sub(wall));
                self.scheduler.schedule(at, Due::Expiry, &cell, generation);
            }
            self.sessions.insert(cell.clone());
            cells.insert(client.clone(), cell);
            r.sessions += 1;
        }
        for (key, raw) in &loaded.messages {
            let (client, seq) = record::split_key(key).map_err(|e| corrupt("messages", "key", e))?;
            let Some(cell) = cells.get(&*client) else {
                submit(Op::DelMessage(Arc::from(&*client), seq));
                continue;
            };
            let mut d = record::read_queued(raw, stamp).map_err(|e| corrupt("messages", &client, e))?;
            d.out.seq = seq;
            let mut st = cell.lock();
            st.next_seq = st.next_seq.max(seq + 1);
            match d.state {
                Some((state, packet_id)) => st.push_inflight(Inflight {
                    packet_id,
                    out: d.out,
                    state,
                }),
                None if d.out.msg.is_expired(now) => {
                    submit(Op::DelMessage(cell.client_id.clone(), seq));
                    r.expired_messages += 1;
                    continue;
                }
                None => {
                    st.queued_bytes += d.out.msg.payload.len();
                    st.queue.push_back(d.out);
                }
            }
            r.messages += 1;
        }
        for key in &loaded.qos2 {
            let (client, id) = record::split_key(key).map_err(|e| corrupt("qos2", "key", e))?;
            match (
                cells.get(&*client),
                u16::try_from(id).ok().and_then(PacketId::new),
            ) {
                (Some(cell), Some(id)) => {
                    cell.lock().inbound_qos2.insert(id.get());
                }
                _ => submit(Op::DelQos2(Arc::from(&*client), id as u16)),
            }
        }
        Ok(r)
    }
}
