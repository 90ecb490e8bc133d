//! Rebuilding the broker's state at start from what its [`Durability`](crate::Durability) holds.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tern_proto::PacketId;

use crate::broker_core::{Core, RestoredRetained};
use crate::durability::{Change, Stored};
use crate::message::Outgoing;
use crate::router::SubEntry;
use crate::scheduler::Due;
use crate::session::SessionCell;
use crate::store::record;

/// What was restored, for the start-up log line.
#[derive(Debug, Default)]
pub(crate) struct Restored {
    pub sessions: usize,
    pub messages: usize,
    pub retained: usize,
    pub expired_sessions: usize,
    pub expired_messages: usize,
}

impl Core {
    /// Load sessions (offline, with their subscriptions, queues, in-flight messages and
    /// QoS 2 ids) and retained messages; drop what expired while the broker was down.
    pub(crate) fn restore(self: &Arc<Self>, stored: Stored) -> Restored {
        let stamp = self.clock.stamp();
        let now = stamp.now;
        let submit = |c: Change| {
            self.durability.submit(c);
        };
        let mut r = Restored::default();
        // Retained messages: resident or on disk, built into the index at once (in topic
        // order, so that its nodes are full).
        let mut retained = Vec::with_capacity(stored.retained.len() + stored.retained_on_disk.len());
        for msg in stored.retained {
            if msg.is_expired(now) {
                submit(Change::DelRetained(msg.topic.to_string()));
                continue;
            }
            retained.push(RestoredRetained::Resident(msg));
        }
        for d in stored.retained_on_disk {
            if d.expires_at.is_some_and(|t| now >= t) {
                submit(Change::DelRetained(d.topic));
                continue;
            }
            retained.push(RestoredRetained::OnDisk(d));
        }
        r.retained = retained.len();
        self.restore_retained(retained);
        let mut cells: HashMap<Arc<str>, Arc<SessionCell>> = HashMap::new();
        for (client_id, rec) in stored.sessions {
            match self.install_session(&client_id, &rec, stamp, |_| {}) {
                Some(cell) => {
                    cell.lock().persistent = true;
                    cells.insert(client_id, cell);
                    r.sessions += 1;
                }
                None => r.expired_sessions += 1,
            }
        }
        for (client, d) in stored.deliveries {
            let Some(cell) = cells.get(&client) else {
                submit(Change::DelDelivery(client, d.seq));
                continue;
            };
            let (seq, stage) = (d.seq, d.stage);
            let out = Outgoing::from_stored(d);
            let mut st = cell.lock();
            st.next_seq = st.next_seq.max(seq + 1);
            match stage {
                Some((stage, packet_id)) => {
                    if !st.proto.restore(packet_id, stage, out) {
                        // Two stored deliveries with one packet id cannot both be resent.
                        tracing::warn!(client_id = %client, id = packet_id.get(), "stored delivery dropped: its packet id is taken");
                        submit(Change::DelDelivery(client, seq));
                        continue;
                    }
                }
                None if out.msg.is_expired(now) => {
                    submit(Change::DelDelivery(client, seq));
                    r.expired_messages += 1;
                    continue;
                }
                None => {
                    st.queued_bytes += out.msg.payload.len();
                    self.queued.grew(out.msg.payload.len());
                    st.queue.push_back(out);
                }
            }
            r.messages += 1;
        }
        for (client, spilled) in stored.spilled {
            let Some(cell) = cells.get(&client) else {
                continue;
            };
            let mut st = cell.lock();
            st.next_seq = st.next_seq.max(spilled.last + 1);
            st.spill = Some(Box::new(crate::session::Spill {
                count: spilled.count,
                bytes: spilled.bytes,
                after: spilled.after,
                ticket: 0,
            }));
            cell.note_streaming(&st);
            r.messages += usize::try_from(spilled.count).unwrap_or(usize::MAX);
        }
        for (client, id) in stored.qos2 {
            match (cells.get(&client), PacketId::new(id)) {
                (Some(cell), Some(id)) => {
                    cell.lock().proto.restore_qos2(id);
                }
                _ => submit(Change::DelQos2(client, id)),
            }
        }
        // A session without QoS 2 deliveries in flight or incoming QoS 2 ids has nothing to
        // tell the backplane (and thousands of restored sessions would each cost it a write).
        for (client, cell) in &cells {
            let st = cell.lock();
            if st.proto.qos2_len() > 0
                || st
                    .proto
                    .inflight()
                    .any(|f| f.message.qos == tern_proto::QoS::ExactlyOnce)
            {
                self.qos2_resumed(client, &st, st.expiry_interval);
            }
        }
        r
    }

    /// Tell the backplane (when it keeps them) the QoS 2 deliveries in flight and the
    /// incoming QoS 2 ids of a session that came to this broker with `st` (from another
    /// broker, or from the store).
    pub(crate) fn qos2_resumed(&self, client_id: &str, st: &crate::session::SessionState, expiry: u32) {
        let Some(b) = self
            .backplane
            .as_ref()
            .filter(|_| self.qos2_elsewhere && expiry > 0)
        else {
            return;
        };
        let in_flight: Vec<(u16, bool, Arc<crate::Message>)> = st
            .proto
            .inflight()
            .filter(|f| f.message.qos == tern_proto::QoS::ExactlyOnce)
            .map(|f| {
                let released = f.stage == crate::durability::InflightState::Released;
                (f.id.get(), released, f.message.msg.clone())
            })
            .collect();
        let incoming: Vec<u16> = st.proto.qos2_ids().into_iter().map(|id| id.get()).collect();
        b.qos2_resumed(client_id, &in_flight, &incoming);
    }

    /// Create an offline session from its durable part, with its subscriptions in the
    /// router and its expiry and delayed will scheduled; `None` (and the record deleted, its
    /// delayed will published) when it expired meanwhile. `fill` runs on the new session
    /// before its subscriptions enter the router: what it queues comes before anything
    /// routed to the session.
    pub(crate) fn install_session(
        self: &Arc<Self>,
        client_id: &Arc<str>,
        rec: &crate::durability::SessionSnapshot,
        stamp: crate::clock::Stamp,
        fill: impl FnOnce(&Arc<SessionCell>),
    ) -> Option<Arc<SessionCell>> {
        let (now, wall) = (stamp.now, stamp.wall_ms);
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
            self.durability.submit(Change::DelSession(client_id.clone()));
            return None;
        }
        let cell = Arc::new(SessionCell::new(
            client_id.clone(),
            rec.version,
            self.config.receive_maximum,
        ));
        {
            let mut st = cell.lock();
            st.expiry_interval = rec.expiry_interval;
            st.generation = 1;
            for (filter, options, id) in &rec.subscriptions {
                st.proto.subscriptions.insert(filter.clone(), (*options, *id));
            }
            if let Some((at, will)) = &rec.pending_will {
                st.pending_will = Some(will.clone());
                st.pending_will_at = record::from_wall(*at, stamp);
            }
        }
        fill(&cell);
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
                cell.lock().proto.subscriptions.remove(filter);
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
        Some(cell)
    }
}
