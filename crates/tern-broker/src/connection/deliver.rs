//! Deliveries to the client: queued messages into the write buffer, as far as the
//! session's window, the store and the write batch allow.
//!
//! Two phases: messages are taken from the queue (and started in the session's window)
//! under the session lock, then encoded without it, so publishers enqueueing for this
//! session wait only for the short first phase.

use std::time::Instant;

use tern_proto::session::server::ServerSession;
use tern_proto::QoS;

use super::{Close, Conn, Link};
use crate::message::Outgoing;
use crate::session::SessionState;

/// Most bytes encoded into the write buffer before it is flushed.
pub(super) const WRITE_BATCH: usize = 64 * 1024;

/// A batch of deliveries taken from a session queue; kept per worker thread so that
/// [`Conn::pump`] does not allocate one per call (taken and put back within the
/// call, with no `.await` in between).
type Batch = Vec<(Outgoing, Option<tern_proto::PacketId>)>;

/// Largest batch capacity kept for reuse.
const MAX_KEPT_BATCH: usize = 4096;

thread_local! {
    /// Write batches with a client's message seen on this thread (the latency sample's clock).
    static LATENCY_SAMPLE: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
    static BATCH: std::cell::Cell<Batch> = const { std::cell::Cell::new(Vec::new()) };
}

impl Conn {
    /// Move queued messages into the write buffer while the in-flight window has
    /// room; `Ok(true)` when more are waiting for buffer space.
    pub(super) fn pump(&mut self, now: Instant) -> Result<bool, Close> {
        let (session, link) = (&mut self.session, &mut self.link);
        let cell = link.cell.clone();
        // Retained messages a SUBSCRIBE matched enter the queue as it drains.
        link.core.stream_retained(&cell, now);
        // So do messages kept on disk while the client was away.
        let not_durable = link.core.refill(&cell, now);
        let (mut batch, more) = {
            let mut st = cell.lock();
            link.check_attached(&st)?;
            take_batch(link, session, &mut st, now)
        };
        if let Some(seen) = not_durable {
            // The next ones on disk are not durable yet: come back after the next commit.
            link.waiting_for_commit = true;
            link.seen_commit = link.seen_commit.min(seen);
        }
        let mut sent = 0u64;
        // By QoS: messages and payload bytes, added to the shared counters once per batch.
        let mut by_qos = [(0u64, 0u64); 3];
        let mut sampled = false;
        // A dropped QoS 1/2 message frees its in-flight slot, and no acknowledgement
        // will come for it: the caller must pump again rather than wait.
        let mut freed = false;
        for (out, packet_id) in batch.drain(..) {
            let mut publish = out.to_publish(link.version, packet_id, false, now);
            let new_alias = session.outgoing(&mut publish);
            let mark = link.out.len();
            // [MQTT-3.1.2-25]: never send a packet above the client's Maximum Packet Size.
            let fits = match publish.encode(link.version, &mut link.out) {
                Ok(n) => session.fits(n),
                Err(_) => false,
            };
            if !fits {
                link.out.truncate(mark);
                session.unsent(new_alias);
                tracing::debug!(client_id = %link.client_id, "message dropped: larger than the client's maximum packet size");
                // Dropped for good: a backplane's shared message is not offered again.
                if let Some(s) = &out.settle {
                    s.done();
                }
                link.core
                    .metrics
                    .dropped_too_large
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let mut st = cell.lock();
                let changes = link.changes(st.persistent, st.expiry_interval > 0);
                match packet_id {
                    Some(id) => {
                        freed |= st.proto.abandon(id).is_some();
                        changes.abandoned(id, &out);
                    }
                    None => changes.forget(out.seq),
                }
                continue;
            }
            sent += 1;
            let q = &mut by_qos[crate::metrics::qos_index(out.qos)];
            q.0 += 1;
            q.1 += out.msg.payload.len() as u64;
            // The delivery latency, sampled: the first message of a client's in one write batch
            // of 16 on this thread (the histogram's counters are shared by every core).
            if let (false, Some(at)) = (sampled, out.msg.received_at) {
                sampled = true;
                if LATENCY_SAMPLE.with(|n| {
                    n.set(n.get().wrapping_add(1));
                    n.get() % 16 == 1
                }) {
                    link.core
                        .metrics
                        .delivery_latency
                        .observe(now.saturating_duration_since(at));
                }
            }
        }
        if batch.capacity() <= MAX_KEPT_BATCH {
            BATCH.with(|b| b.set(batch));
        }
        if sent > 0 {
            link.core
                .counters
                .messages_out
                .fetch_add(sent, std::sync::atomic::Ordering::Relaxed);
            link.core.metrics.sent(&by_qos);
        }
        Ok(more || freed)
    }
}

/// The first phase of [`Conn::pump`]: take what may be sent now, start QoS 1/2 deliveries in
/// the session's window (and in the store).
fn take_batch(
    link: &mut Link,
    session: &ServerSession,
    st: &mut SessionState,
    now: Instant,
) -> (Batch, bool) {
    let window = session.window();
    let committed = link.core.durability.committed();
    link.seen_commit = committed;
    let acl = link.core.security.acl();
    link.waiting_for_commit = false;
    let was_full = st.full_since.is_some();
    let queued_before = st.queued_bytes;
    let mut batch = BATCH.with(|b| b.take());
    let mut budget = WRITE_BATCH.saturating_sub(link.out.len());
    let mut more = false;
    while let Some(front) = st.queue.front() {
        if budget == 0 {
            more = true;
            break;
        }
        if front.commit_seq > committed {
            // Not durable yet: sending it now could lead to a second delivery after a crash.
            link.waiting_for_commit = true;
            break;
        }
        // [MQTT-3.3.2-5]: an expired message is not delivered. The ACL may not let this
        // client receive the topic (checked at delivery, so a reloaded ACL also stops live
        // and resumed subscriptions).
        let refused = acl.as_ref().is_some_and(|acl| {
            let user = link.info.username.as_deref();
            !acl.allows(
                crate::security::Action::Receive,
                user,
                &link.client_id,
                &front.msg.topic,
            )
        });
        if refused || front.msg.is_expired(now) {
            let m = &link.core.metrics;
            let counter = if refused {
                &m.dropped_acl_receive
            } else {
                &m.dropped_expired
            };
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if let Some(s) = &front.settle {
                s.done();
            }
            if let Some(gone) = st.pop_queued() {
                link.changes(st.persistent, false).forget(gone.seq);
            }
            continue;
        }
        let needs_id = front.qos != QoS::AtMostOnce;
        if needs_id && st.proto.inflight_len() >= window {
            break;
        }
        let Some(out) = st.pop_queued() else { break };
        budget = budget.saturating_sub(out.msg.payload.len() + out.msg.topic.len() + 8);
        let mut packet_id = None;
        if needs_id {
            let SessionState {
                proto,
                persistent,
                expiry_interval,
                ..
            } = &mut *st;
            let mut changes = link.changes(*persistent, *expiry_interval > 0);
            let started = proto.start(out.clone(), &mut changes);
            let ticket = changes.ticket;
            link.wait_for_session(ticket);
            if let Some((id, durable_first)) = started {
                // A QoS 2 delivery goes out only once its packet id is durable (in the store,
                // and with a cluster in the session's entry: `ticket`): after a crash the
                // broker must resend it with that id [MQTT-4.4.0-1], or the client, which
                // deduplicates by packet id until PUBREL, takes it for a new message.
                link.needs_commit |= durable_first;
                packet_id = Some(id);
                // A shared message's QoS 2 delivery begins: it is this member's once its
                // PUBLISH may go out (told after the commit).
                if let (Some(s), QoS::ExactlyOnce) = (&out.settle, out.qos) {
                    link.begun.push(s.clone());
                }
            }
        }
        batch.push((out, packet_id));
    }
    // The subscriber made progress: it is slow, not stalled, so the stall clock restarts;
    // publishers slowed down for it may go on once it is under half its limits. (Taking
    // the last message clears `full_since` too: `was_full` makes sure they are told.)
    if !batch.is_empty() && was_full {
        st.full_since = Some(now);
        if st.queue.len() <= link.core.config.max_queued_messages / 2 {
            st.full_since = None;
            link.cell.space.notify_waiters();
        }
    }
    link.core
        .queued
        .shrank(queued_before.saturating_sub(st.queued_bytes));
    link.cell.note_fullness(st, &link.core.config);
    // Retained messages still waiting to enter the queue, and the queue drained: come back
    // for them at once (with messages left in the queue, an acknowledgement or buffer space
    // brings the connection back).
    more |= st.queue.is_empty() && link.cell.is_streaming();
    (batch, more)
}
