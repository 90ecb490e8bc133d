//! Handing a session to another broker and taking one in (cluster mode): when a client
//! reconnects to another node, the node that held its session gives it up here, whole
//! (subscriptions, deliveries in flight with their packet ids, the queue, incoming QoS 2
//! packet ids), and the new node installs it before it answers the CONNECT.

use std::sync::Arc;

use bytes::Bytes;
use tern_proto::{PacketId, QoS};

use crate::broker_core::Core;
use crate::durability::{Change, Handover, StoredDelivery};
use crate::message::Outgoing;
use crate::session::SessionCell;
use crate::store::record;

/// What became of a session another broker asked for.
#[derive(Debug)]
#[non_exhaustive]
pub enum HandOff {
    /// This broker holds no session for the client.
    Absent,
    /// The new connection starts clean (or the session ended with its connection): the
    /// session ended here, as on one broker, its connection told it was taken over.
    Ended,
    /// The session's state left this broker: its connection was told it was taken over, and
    /// this is that state, encoded, for the other broker; the session stays subscribed here
    /// until [`crate::Admin::hand_over_rest`] with this `generation` removes it.
    Moved {
        /// The encoded session.
        raw: Bytes,
        /// Which attachment of the session was handed over.
        generation: u64,
    },
}

/// Store numbers left free after a session's handed-over messages ([`Core::take_in`]) for
/// those that reached it on the other broker meanwhile ([`Core::take_in_rest`]), which go
/// before what is routed here from then on; far more than a session's queue can hold.
const REST_ROOM: u64 = 1 << 32;

impl Core {
    /// Give up the session of `client_id` to another broker (see [`HandOff`]). The attached
    /// connection, if any, is closed as by a takeover (5.0: DISCONNECT 0x8E), and its will
    /// treated as on one broker.
    pub(crate) fn hand_over(self: &Arc<Self>, client_id: &str, clean_start: bool) -> HandOff {
        let _attaching = self.attach_lock.lock().unwrap_or_else(|e| e.into_inner());
        let Some(cell) = self.sessions.get(client_id) else {
            return HandOff::Absent;
        };
        let resumable = {
            let st = cell.lock();
            !st.ended && st.expiry_interval > 0
        };
        let ends = clean_start || !resumable;
        let (waker, generation) = {
            let mut st = cell.lock();
            // Its timers (expiry, delayed will) no longer act on it.
            st.generation += 1;
            let waker = st.take_over(ends);
            st.kicked = None;
            // A pending delayed will: cancelled by the reconnection, sent if the session ends
            // (end_session below).
            if !ends {
                st.pending_will = None;
            }
            (waker, st.generation)
        };
        if let Some(w) = waker {
            w.notify_one();
        }
        self.scheduler.cancel(&cell);
        cell.set_connected(false);
        if ends {
            self.end_session(&cell);
            return HandOff::Ended;
        }
        // Its deliveries leave now; the session stays subscribed here until the other broker
        // has installed it and asks for the rest ([`Core::hand_over_rest`]), so that what
        // is published meanwhile reaches it on one broker or the other (or both).
        let handover = self.export(&cell);
        tracing::info!(
            client_id,
            deliveries = handover.deliveries.len(),
            "session handed to another node"
        );
        HandOff::Moved {
            raw: record::handover(&handover, self.clock.stamp()),
            generation,
        }
    }

    /// The deliveries that reached a session handed out by [`Core::hand_over`] since, and the
    /// session removed from this broker (no will, no shared redelivery: it continues on the
    /// other broker). `None` when that session is no longer here as it was handed out
    /// (`generation`: from [`HandOff::Moved`]; `None` takes any offline one).
    pub(crate) fn hand_over_rest(
        self: &Arc<Self>,
        client_id: &str,
        generation: Option<u64>,
    ) -> Option<Bytes> {
        let _attaching = self.attach_lock.lock().unwrap_or_else(|e| e.into_inner());
        let cell = self.sessions.get(client_id)?;
        {
            let st = cell.lock();
            // The client came back here meanwhile: the session is this broker's again.
            if st.conn_id.is_some() || st.ended || generation.is_some_and(|g| g != st.generation) {
                return None;
            }
        }
        let rest = self.take_out(&cell);
        Some(record::handover(&rest, self.clock.stamp()))
    }

    /// Take a session's deliveries out (in flight first, then queued, then those on disk),
    /// with its durable part and its incoming QoS 2 packet ids.
    fn export(&self, cell: &Arc<SessionCell>) -> Handover {
        let (snapshot, mut deliveries, qos2, spill) = {
            let mut st = cell.lock();
            let mut snapshot = self.snapshot(&st);
            // The reconnection that asked for it cancels a delayed will (v5 [MQTT-3.1.3-9]).
            snapshot.pending_will = None;
            let qos2: Vec<u16> = st.proto.qos2_ids().into_iter().map(PacketId::get).collect();
            tracing::debug!(client_id = %cell.client_id, in_flight = st.proto.inflight_len(), queued = st.queue.len(), spilled = st.spill.is_some(), "session exported");
            let mut deliveries: Vec<StoredDelivery> = st
                .proto
                .drain_inflight()
                .into_iter()
                .filter(|i| goes_along(&i.message, true))
                .map(|i| stored(i.message, Some((i.stage, i.id))))
                .collect();
            deliveries.extend(
                st.queue
                    .drain(..)
                    .filter(|o| goes_along(o, false))
                    .map(|o| stored(o, None)),
            );
            st.retained = None;
            cell.note_streaming(&st);
            self.queued.shrank(st.queued_bytes);
            st.queued_bytes = 0;
            let spill = st.spill.take().map(|s| s.after);
            cell.note_streaming(&st);
            (snapshot, deliveries, qos2, spill)
        };
        if let Some(after) = spill {
            // Queued messages kept on disk only: read back in order, after those in memory.
            match self.durability.read_queued(&cell.client_id, after, usize::MAX) {
                Ok(more) => deliveries.extend(more),
                Err(e) => {
                    tracing::error!(client_id = %cell.client_id, "queued messages on disk not handed over: {e}")
                }
            }
        }
        Handover {
            snapshot,
            deliveries,
            qos2,
        }
    }

    /// Remove `cell` from this broker without ending the session (no will, no shared
    /// redelivery: it continues elsewhere), returning what it held.
    fn take_out(self: &Arc<Self>, cell: &Arc<SessionCell>) -> Handover {
        let handover = self.export(cell);
        let subs: Vec<String> = {
            let mut st = cell.lock();
            st.ended = true;
            st.proto.subscriptions.drain().map(|(f, _)| f).collect()
        };
        self.scheduler.cancel(cell);
        for f in &subs {
            self.unsubscribe(f, cell);
        }
        self.sessions.remove_if_same(cell);
        self.durability.submit(Change::DelSession(cell.client_id.clone()));
        handover
    }

    /// Install a session handed over by another broker ([`Core::hand_over`] there) as an
    /// offline session of this one, replacing any copy this broker still held; the CONNECT
    /// that asked for it then resumes it (after what was written to this broker's store is
    /// durable: `Persistence::wait_submitted`). Returns the length of its queue then: where
    /// the rest ([`Core::take_in_rest`]) goes.
    pub(crate) fn take_in(
        self: &Arc<Self>,
        client_id: &Arc<str>,
        raw: &[u8],
    ) -> Result<usize, record::Corrupt> {
        let stamp = self.clock.stamp();
        let h = record::read_handover(raw, stamp)?;
        // A copy left here from before is stale: the other broker held the session since.
        if let HandOff::Moved { generation, .. } = self.hand_over(client_id, false) {
            self.hand_over_rest(client_id, Some(generation));
            tracing::warn!(client_id = %client_id, "a stale copy of the session was replaced by the one handed over");
        }
        let _attaching = self.attach_lock.lock().unwrap_or_else(|e| e.into_inner());
        let Handover {
            snapshot,
            deliveries,
            qos2,
        } = h;
        let persistent = self.durability.enabled() && snapshot.expiry_interval > 0;
        let mut queued = 0;
        // Queued before its subscriptions route to it: a message routed here meanwhile goes
        // after what the other broker held (found by a test: 52 messages published during a
        // move overtook the first 200 of their publisher).
        let fill = |cell: &Arc<SessionCell>| {
            let mut st = cell.lock();
            st.persistent = persistent;
            st.arriving = true;
            if persistent {
                self.durability
                    .submit(Change::PutSession(client_id.clone(), snapshot.clone()));
            }
            for d in deliveries {
                let stage = d.stage;
                let mut out = Outgoing::from_stored(d);
                // Numbered in this broker's order for its store.
                out.seq = 0;
                match stage {
                    Some((stage, id)) => {
                        if persistent {
                            out.seq = st.next_seq;
                            st.next_seq += 1;
                            self.durability.put_delivery(true, client_id, &out, stage, id);
                        }
                        if !st.proto.restore(id, stage, out) {
                            tracing::warn!(client_id = %client_id, id = id.get(), "handed-over delivery dropped: its packet id is taken");
                        }
                    }
                    None if out.msg.is_expired(stamp.now) => {}
                    None => {
                        self.durability.put_queued(&mut st, client_id, &mut out);
                        st.queued_bytes += out.msg.payload.len();
                        self.queued.grew(out.msg.payload.len());
                        st.queue.push_back(out);
                    }
                }
            }
            if persistent {
                // Room in the store's order for the rest, which goes after these and before
                // what is routed here from now on (see `take_in_rest`).
                st.next_seq += REST_ROOM;
            }
            for id in qos2.into_iter().filter_map(PacketId::new) {
                st.proto.restore_qos2(id);
                if persistent {
                    self.durability
                        .submit(Change::PutQos2(client_id.clone(), id.get()));
                }
            }
            queued = st.queue.len();
            tracing::debug!(client_id = %client_id, queued, in_flight = st.proto.inflight_len(), "session taken in");
            self.qos2_resumed(client_id, &st, snapshot.expiry_interval);
        };
        if self.install_session(client_id, &snapshot, stamp, fill).is_none() {
            return Ok(0);
        }
        Ok(queued)
    }

    /// The session of `client_id` taken in ([`Core::take_in`]) has all it came with: its
    /// rest is in ([`Core::take_in_rest`]), or none followed.
    pub(crate) fn rest_taken(&self, client_id: &str) {
        if let Some(cell) = self.sessions.get(client_id) {
            cell.lock().arriving = false;
        }
    }

    /// Put the deliveries that reached the session on the other broker while it was being
    /// installed here ([`Core::hand_over_rest`] there) into its queue at `at`: after those
    /// handed over first, before those routed here since. Messages routed to both brokers in
    /// that moment arrive twice, but for QoS 2 messages with a backplane id. `at` `None`:
    /// after everything the session holds, those on disk too.
    pub(crate) fn take_in_rest(
        self: &Arc<Self>,
        client_id: &str,
        raw: &[u8],
        at: Option<usize>,
    ) -> Result<usize, record::Corrupt> {
        let stamp = self.clock.stamp();
        let rest = record::read_handover(raw, stamp)?;
        let Some(cell) = self.sessions.get(client_id) else {
            return Ok(0);
        };
        let mut guard = cell.lock();
        let st = &mut *guard;
        if st.ended {
            return Ok(0);
        }
        tracing::debug!(
            client_id,
            at,
            queued = st.queue.len(),
            rest = rest.deliveries.len(),
            "rest of a session taken in"
        );
        // After messages on disk: these go there too, behind them.
        let mut to_disk = at.is_none() && st.spill.is_some();
        let mut at = at.unwrap_or(usize::MAX).min(st.queue.len());
        let mut n = 0;
        // Their store numbers go between those of their neighbours: a restart from the store
        // queues by number (before, they were numbered after what was routed here since, and
        // such a restart delivered them after it).
        let kept = rest
            .deliveries
            .iter()
            .filter(|d| d.qos != QoS::AtMostOnce)
            .count();
        let mut numbers = None;
        if self.durability.enabled() && st.persistent && kept > 0 && !to_disk && st.stored_after(at) {
            numbers = st.numbers_between(at, kept).map(Vec::into_iter);
            if numbers.is_none() {
                // Numbered after everything: in memory they would come before messages on
                // disk numbered below them, which a refill or an export reads again.
                to_disk = st.spill.is_some();
                tracing::warn!(
                    client_id,
                    at,
                    kept,
                    to_disk,
                    "no room in the store's order for messages put into a queue: they come later"
                );
            }
        }
        // A QoS 2 message that reached the session on both brokers in that moment (or that a
        // cluster read back from its streams and routed here as well) is taken once, by the
        // id the backplane gave it: QoS 2 is exactly once (v5 section 4.3.3).
        let mut have: Option<std::collections::HashSet<(u64, u64)>> = None;
        for d in rest.deliveries {
            if let (QoS::ExactlyOnce, Some(id)) = (d.qos, d.message.backplane_id()) {
                let have = have.get_or_insert_with(|| {
                    st.proto
                        .inflight()
                        .map(|f| &f.message)
                        .chain(st.queue.iter())
                        .filter(|o| o.qos == QoS::ExactlyOnce)
                        .filter_map(|o| o.msg.backplane_id())
                        .collect()
                });
                if !have.insert(id) {
                    continue;
                }
            }
            let mut out = Outgoing::from_stored(d);
            out.seq = 0;
            if out.msg.is_expired(stamp.now) {
                continue;
            }
            if to_disk && out.qos != QoS::AtMostOnce {
                let size = out.msg.payload.len() as u64;
                let room = st
                    .spill
                    .as_deref()
                    .is_some_and(|s| s.has_room(size, &self.config, &self.durability));
                if !room {
                    st.dropped += 1;
                    self.counters
                        .messages_dropped
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tracing::warn!(client_id, dropped = st.dropped, "max_offline_messages, max_offline_bytes or max_store_bytes reached: a message added behind those on disk is dropped");
                    continue;
                }
                self.durability.put_queued(st, &cell.client_id, &mut out);
                if let Some(spill) = st.spill.as_deref_mut() {
                    spill.count += 1;
                    spill.bytes += size;
                    spill.ticket = out.commit_seq;
                }
                n += 1;
                continue;
            }
            let seq = match out.qos {
                QoS::AtMostOnce => None,
                _ => numbers.as_mut().and_then(Iterator::next),
            };
            self.durability
                .put_queued_numbered(st, &cell.client_id, &mut out, seq);
            st.queued_bytes += out.msg.payload.len();
            self.queued.grew(out.msg.payload.len());
            st.queue.insert(at, out);
            at += 1;
            n += 1;
        }
        Ok(n)
    }
}

/// Whether a delivery goes with its session to another broker. One that a backplane brought
/// for a shared subscription ([`Outgoing::settle`]) stays behind and is given back to the
/// backplane (its settlement dropped), which offers it to the group again, unless it is a
/// QoS 2 delivery already started: that one is completed with the same member, there
/// (v5 [MQTT-4.8.2-4]), and its source is told it is finished.
fn goes_along(o: &Outgoing, in_flight: bool) -> bool {
    match &o.settle {
        None => true,
        Some(s) if in_flight && o.qos == QoS::ExactlyOnce => {
            s.done();
            true
        }
        Some(_) => false,
    }
}

/// A delivery as it is handed over.
fn stored(o: Outgoing, stage: Option<(crate::session::InflightState, PacketId)>) -> StoredDelivery {
    StoredDelivery {
        seq: o.seq,
        stage,
        qos: o.qos,
        retain: o.retain,
        subscription_ids: o.sub_ids,
        shared: o.shared,
        message: o.msg,
        message_id: 0,
    }
}
