//! One task per connection: the driver of a sans-IO
//! [`ServerSession`](tern_proto::session::server::ServerSession).
//!
//! The driver reads and decodes, feeds each packet and the time to the session, writes what
//! it encoded, and sleeps until the next input: bytes, a wake-up (a message queued, a
//! takeover, a kick, shutdown), a store commit, room at a subscriber it was slowed down
//! for, or the session's timer. Every protocol rule is the session's; what the session
//! asks of the broker is carried out by [`Link`] (`link.rs`); deliveries from the session's
//! queue are in `deliver.rs`, the end of a connection in `close.rs`, CONNECT in `connect.rs`.

mod close;
mod connect;
mod deliver;
mod link;

use std::net::SocketAddr;
use std::sync::Arc;

use crate::broker_core::Core;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tern_proto::codec::{Decoded, Decoder};
use tern_proto::session::server::ServerSession;
use tern_proto::{Packet, Violation};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::clock::Wait;
use crate::session::SessionCell;
pub(crate) use link::{Close, Link, WillState};

/// A connection after a successful CONNECT: the session's protocol state, and the broker's
/// side of it.
pub(crate) struct Conn {
    session: ServerSession,
    link: Link,
    decoder: Decoder,
    /// A PUBLISH or SUBSCRIBE waiting for the HTTP hook's ACL answers (`auth.http.acl_url`):
    /// the socket is not read meanwhile.
    held: Option<Box<Held>>,
}

/// The HTTP hook's answers for one packet: (action, topic or filter, answer).
type Answers = Vec<(crate::security::Action, Box<str>, Option<bool>)>;

/// A packet held while the HTTP hook is asked about it.
struct Held {
    packet: Packet,
    answers: std::pin::Pin<Box<dyn std::future::Future<Output = Answers> + Send>>,
}

impl Conn {
    /// Why this connection is to close, told through its session (one lock): an
    /// administrator's disconnect aimed at it, or its will published by another broker.
    fn told_to_close(&self) -> Option<Close> {
        let mut st = self.link.cell.lock();
        if st.conn_id != Some(self.link.conn_id) {
            return None;
        }
        if let Some(discard) = st.kicked.take() {
            return Some(Close::Kicked { discard });
        }
        (st.will_gone == Some(self.link.conn_id)).then_some(Close::WillGone)
    }

    /// When a packet in progress (what is left in `buf`) has waited too long for its next byte.
    fn stall_deadline(&self, buf: &BytesMut) -> Option<Instant> {
        match self.link.core.config.packet_stall_timeout() {
            Some(t) if !buf.is_empty() => Some(self.session.last_rx() + t),
            _ => None,
        }
    }

    async fn drive<S: AsyncRead + AsyncWrite + Unpin>(&mut self, io: &mut S, buf: &mut BytesMut) -> Close {
        let core = self.link.core.clone();
        let clock = &core.clock;
        if let Err(c) = self.session.resume(clock.now(), &mut self.link) {
            return c;
        }
        // Keep-alive and the stall timer run on the broker's clock (a test's ManualClock
        // passes them at once) from the session's last reception; only the slowed publisher's
        // poll uses the runtime's clock.
        let mut read_hint = MIN_READ;
        // Shutdown wakes every attached connection through its waker; one that attached
        // after that sees the flag here.
        if core.is_shutting_down() {
            return Close::Shutdown;
        }
        if let Some(close) = self.told_to_close() {
            return close;
        }
        // Bytes that arrived together with CONNECT.
        if let Err(c) = self.decode_all(buf) {
            return c;
        }
        loop {
            let more = match self.pump(clock.now()) {
                Ok(more) => more,
                Err(c) => return c,
            };
            if let Err(c) = self.commit().await {
                return c;
            }
            if !self.link.out.is_empty() {
                crate::trace::bytes_out(&core, &self.link.client_id, self.link.version, &self.link.out);
                if let Err(e) = write_flush(io, &self.link.out).await {
                    return Close::Transport(format!("write failed: {e}"));
                }
                crate::listener::count(&core.counters.bytes_out, self.link.out.len());
                self.link.out.clear();
                // Give back a buffer that a burst made large.
                if self.link.out.capacity() > 4 * deliver::WRITE_BATCH {
                    self.link.out = BytesMut::new();
                }
            }
            reserve_for_read(buf, read_hint);
            self.link.pressure.retain(|c| !c.has_room(&core.config, clock));
            if self.link.backplane_slowed {
                let sent = crate::backplane::Sent {
                    conn_id: self.link.conn_id,
                    count: self.link.qos0_sent,
                };
                self.link.backplane_slowed = core
                    .backplane
                    .as_ref()
                    .is_some_and(|b| b.congested() || b.holds_back(sent));
            }
            if self.link.pressure.is_empty() && !self.link.backplane_slowed && !buf.is_empty() {
                // Packets left buffered while this client was slowed down. If any were
                // handled (acknowledgements may have opened the in-flight window), go
                // round again to pump; a partial packet alone waits for more bytes.
                let before = buf.len();
                if let Err(c) = self.decode_all(buf) {
                    return c;
                }
                if buf.len() != before {
                    continue;
                }
            }
            // What is left in the buffer counts against the broker-wide budget for partial
            // packets once it is large (nothing to do for the small remainders of most reads).
            if buf.len() >= crate::budget::TRACKED || self.link.partial.is_some() {
                // The memory held is the buffer's capacity, not only the bytes in it.
                let held = if buf.len() >= crate::budget::TRACKED {
                    buf.capacity()
                } else {
                    0
                };
                core.partial.hold(&mut self.link.partial, held, &self.link.waker);
                if crate::budget::evicted(&self.link.partial) {
                    return Close::Evicted;
                }
            }
            let slowed = self.link.pressure.first().cloned();
            let backplane_slowed = self.link.backplane_slowed;
            // A slowed-down client's socket is not read, so its keep-alive cannot be
            // judged: the clock stops while it waits and starts again after. What is left in
            // the buffer otherwise is a packet in progress: it may wait for its next byte
            // only so long, keep-alive or not.
            let deadline = if slowed.is_some() || backplane_slowed || self.held.is_some() {
                self.session.handle_rx(clock.now());
                None
            } else {
                match (self.session.poll_timeout(), self.stall_deadline(buf)) {
                    (Some(d), Some(s)) => Some(d.min(s)),
                    (d, s) => d.or(s),
                }
            };
            // While slowed down, look at the subscriber's queue again at least every 20 ms
            // (the wake-up on its `space` can come before this task waits for it); otherwise
            // wait for the deadline on the broker's clock.
            let wait = match (&slowed, deadline) {
                (Some(_), _) => Wait::Until(tokio::time::Instant::now() + ROOM_POLL),
                // The backplane signals no room, or subscribers elsewhere have none (their
                // broker's word comes through the backplane, which wakes nothing here): look
                // again every BACKPLANE_POLL.
                (None, _) if backplane_slowed => Wait::Until(tokio::time::Instant::now() + BACKPLANE_POLL),
                (None, Some(d)) => clock.wait_until(d),
                (None, None) => Wait::Never,
            };
            // The futures of this select! live in every connection's task, idle ones
            // included: each branch is kept small (the commit wait, needed only with a
            // store, is boxed when it is used).
            tokio::select! {
                biased;
                r = io.read_buf(buf), if slowed.is_none() && !backplane_slowed && self.held.is_none() => match r {
                    Ok(0) => return Close::Transport("peer closed the connection".into()),
                    Ok(n) => {
                        // Double the next read when this one filled the space, shrink after small ones.
                        read_hint = if n >= read_hint { (read_hint * 2).min(MAX_READ) } else { (read_hint / 2).max(n).max(MIN_READ) };
                        crate::listener::count(&core.counters.bytes_in, n);
                        self.session.handle_rx(clock.now());
                        if let Err(c) = self.decode_all(buf) {
                            return c;
                        }
                    }
                    Err(e) => return Close::Transport(format!("read failed: {e}")),
                },
                _ = self.link.waker.notified() => {
                    if core.is_shutting_down() {
                        return Close::Shutdown;
                    }
                    if let Some(close) = self.told_to_close() {
                        return close;
                    }
                    if crate::budget::evicted(&self.link.partial) {
                        return Close::Evicted;
                    }
                }
                answers = held_answers(&mut self.held), if self.held.is_some() => {
                    if let Some(held) = self.held.take() {
                        if let Err(c) = self.handle_held(held.packet, answers, buf) {
                            return c;
                        }
                    }
                }
                _ = wait_commit(&core.durability, self.link.seen_commit), if self.link.waiting_for_commit => {}
                _ = wait_room(slowed.as_deref()), if slowed.is_some() => {}
                _ = wait.wait() => {
                    let now = clock.now();
                    if slowed.is_none() && self.stall_deadline(buf).is_some_and(|s| now >= s) {
                        return Close::Stalled;
                    }
                    if let Some(c) = self.session.handle_timeout(now) {
                        return c.into();
                    }
                }
                _ = std::future::ready(()), if more => {}
            }
        }
    }

    /// Wait until the store changes made so far are committed, so that the
    /// acknowledgements in `out` promise nothing the store does not hold; then the shared
    /// messages whose QoS 2 delivery began in `out` are their member's.
    async fn commit(&mut self) -> Result<(), Close> {
        let r = self.commit_changes().await;
        let begun = std::mem::take(&mut self.link.begun);
        if r.is_ok() {
            for s in begun {
                s.started();
            }
        }
        r
    }

    async fn commit_changes(&mut self) -> Result<(), Close> {
        let stored = std::mem::take(&mut self.link.needs_commit);
        // A SUBACK, or a QoS 2 delivery's PUBLISH or PUBREL, waits for the session's entry
        // in the cluster (`None` on a single node).
        let session_ticket = self.link.session_ticket.take();
        let marked = std::mem::take(&mut self.link.qos2_marked);
        if !stored && session_ticket.is_none() {
            return Ok(());
        }
        if stored {
            if let Err(e) = self.link.core.durability.wait_submitted().await {
                // Nothing that is not stored is acknowledged: drop the pending acknowledgements.
                self.link.out.clear();
                return Err(Close::Violation(Violation::StorageFailed(e.to_string())));
            }
            // One branch on a single node (no backplane).
            if self.link.core.backplane.is_some() {
                if let Err(c) = backplane_commit(self.link.core.clone()).await {
                    self.link.out.clear();
                    return Err(c);
                }
                // A QoS 2 message the backplane refused is not the session's: no PUBREC, and
                // the client's resend is a new message.
                let refused: Vec<u16> = marked
                    .iter()
                    .filter(|(_, m)| m.refused())
                    .map(|(id, _)| *id)
                    .collect();
                if !refused.is_empty() {
                    self.link.forget_refused(&refused);
                    self.link.out.clear();
                    return Err(Close::Busy(format!(
                        "the cluster did not store the QoS 2 messages {refused:?}: another node took this session meanwhile; resend them"
                    )));
                }
            }
        }
        if let Some(t) = session_ticket {
            if let Err(c) = session_commit(self.link.core.clone(), t).await {
                self.link.out.clear();
                return Err(c);
            }
        }
        // A newer connection may have taken the session over meanwhile: then nothing of it
        // goes out here any more (its deliveries are resent there) [MQTT-3.1.4-3].
        let attached = {
            let st = self.link.cell.lock();
            self.link.check_attached(&st)
        };
        if let Err(c) = attached {
            self.link.out.clear();
            return Err(c);
        }
        Ok(())
    }

    /// Handle the complete packets in `buf`; stops early (leaving the rest buffered)
    /// while a subscriber this client publishes to is over its queue limits.
    fn decode_all(&mut self, buf: &mut BytesMut) -> Result<(), Close> {
        let traced = crate::trace::before_decode(&self.link.core, &self.link.client_id, buf);
        let r = self.decode_packets(buf);
        crate::trace::after_decode(
            &self.link.core,
            &self.link.client_id,
            self.link.version,
            traced,
            buf.len(),
        );
        // Whatever was accepted or acknowledged before an error counts all the same.
        self.link.deliver_pending();
        let acks = self.session.flush_acks(&mut self.link);
        r.and(acks)
    }

    fn decode_packets(&mut self, buf: &mut BytesMut) -> Result<(), Close> {
        while self.link.pressure.is_empty() && !self.link.backplane_slowed && self.held.is_none() {
            match self.decoder.decode(buf) {
                // The packet goes straight from the decoder to the session: a packet is large,
                // and each move of it on this path is a copy.
                Ok(Decoded::Packet(p)) => match self.link.core.security.acl_hook() {
                    None => {
                        let now = self.link.core.clock.now();
                        self.session.handle_packet(now, p, &mut self.link)?
                    }
                    Some(hook) => self.handle_asking(hook, p)?,
                },
                Ok(Decoded::NeedMore(_)) => return Ok(()),
                Err(e) => return Err(Close::Violation(e.into())),
            }
        }
        Ok(())
    }
}

impl Conn {
    /// Look up the HTTP hook's answers for a PUBLISH's topic or a SUBSCRIBE's filters. When
    /// each is known (cached, or left to the client's own access list) they go to
    /// `link.acl_answers` and the packet is returned, to be handled now; otherwise the
    /// packet is held until the service answers (`None`).
    fn ask_acl(&mut self, hook: Arc<crate::security::Hook>, packet: Packet) -> Option<Packet> {
        use crate::security::Action;
        let questions: Vec<(Action, Box<str>)> = match &packet {
            Packet::Publish(p) => match self.session.publish_topic(p) {
                Some(topic) => vec![(Action::Publish, topic.into())],
                // No topic: the session refuses it.
                None => return Some(packet),
            },
            // Filters as the session asks about them (without `$share/GROUP/`); one that does
            // not parse is refused by the session without a question.
            Packet::Subscribe(s) => s
                .filters
                .iter()
                .filter_map(|(f, _)| tern_proto::topic::parse_filter(f).ok())
                .map(|f| (Action::Subscribe, f.filter.into()))
                .collect(),
            _ => return Some(packet),
        };
        let (security, user) = (&self.link.core.security, self.link.info.username.clone());
        let mut known = Vec::with_capacity(questions.len());
        for (action, topic) in &questions {
            match security.hook_known(&hook, *action, user.as_deref(), &self.link.client_id, topic) {
                Some(answer) => known.push((*action, topic.clone(), answer)),
                None => break,
            }
        }
        if known.len() == questions.len() {
            self.link.acl_answers = known;
            return Some(packet);
        }
        let (core, client_id) = (self.link.core.clone(), self.link.client_id.clone());
        let answers = Box::pin(async move {
            let mut answers = Vec::with_capacity(questions.len());
            for (action, topic) in questions {
                let answer = core
                    .security
                    .ask_hook(&hook, action, user.as_deref(), &client_id, &topic)
                    .await;
                answers.push((action, topic, answer));
            }
            answers
        });
        self.held = Some(Box::new(Held { packet, answers }));
        None
    }

    /// With the HTTP hook deciding ACL questions: handle `packet` now if its answers are
    /// known, else hold it (see [`Conn::ask_acl`]).
    #[inline(never)]
    fn handle_asking(&mut self, hook: Arc<crate::security::Hook>, packet: Packet) -> Result<(), Close> {
        let Some(packet) = self.ask_acl(hook, packet) else {
            return Ok(());
        };
        let now = self.link.core.clock.now();
        let r = self.session.handle_packet(now, packet, &mut self.link);
        self.link.acl_answers.clear();
        r
    }

    /// Handle a held packet with the hook's answers, then what was buffered behind it.
    fn handle_held(&mut self, packet: Packet, answers: Answers, buf: &mut BytesMut) -> Result<(), Close> {
        self.link.acl_answers = answers;
        let now = self.link.core.clock.now();
        let r = self.session.handle_packet(now, packet, &mut self.link);
        self.link.acl_answers.clear();
        match r {
            Ok(()) => self.decode_all(buf),
            Err(c) => {
                self.link.deliver_pending();
                let _ = self.session.flush_acks(&mut self.link);
                Err(c)
            }
        }
    }
}

/// The answers of the held packet, once the hook has given them all.
async fn held_answers(held: &mut Option<Box<Held>>) -> Answers {
    match held {
        Some(h) => h.answers.as_mut().await,
        None => std::future::pending().await,
    }
}

/// Wait until the backplane (a cluster) has stored the QoS 1/2 messages handed to it so
/// far, when it stores any; at most its `ack_timeout`.
async fn backplane_commit(core: Arc<Core>) -> Result<(), Close> {
    let Some(b) = &core.backplane else {
        return Ok(());
    };
    let Some(progress) = b.progress() else {
        return Ok(());
    };
    let target = b.submitted();
    if !reached(progress, target, b.ack_timeout()).await {
        return Err(Close::Busy(format!(
            "the cluster did not store its messages within {:?} (publish_timeout; stored up to {} of {target})",
            b.ack_timeout(),
            progress.get()
        )));
    }
    if progress.get() < target {
        return Err(Close::Violation(Violation::StorageFailed(
            "the cluster can no longer store messages".into(),
        )));
    }
    Ok(())
}

/// Wait until the backplane has kept the session change of `ticket` (a SUBSCRIBE's), at most
/// its `ack_timeout`: that ticket (the connection's latest), not every earlier one of the
/// node ([`Backplane::session_done`]).
///
/// [`Backplane::session_done`]: crate::backplane::Backplane::session_done
async fn session_commit(core: Arc<Core>, ticket: crate::durability::Ticket) -> Result<(), Close> {
    let Some(b) = &core.backplane else {
        return Ok(());
    };
    let Some(progress) = b.sessions_progress() else {
        return Ok(());
    };
    let done = async {
        loop {
            let changed = progress.next_change();
            let mut changed = std::pin::pin!(changed);
            // Registered before the test: a change in between wakes the wait.
            changed.as_mut().enable();
            if b.session_done(ticket) || progress.has_failed() {
                break;
            }
            changed.await;
        }
    };
    if tokio::time::timeout(b.ack_timeout(), Box::pin(done))
        .await
        .is_err()
    {
        return Err(Close::Busy(format!(
            "the cluster did not keep the session's state (subscriptions, QoS 2 deliveries) within {:?} (publish_timeout)",
            b.ack_timeout()
        )));
    }
    if !b.session_kept(ticket) {
        return Err(Close::Busy(
            "the cluster could not keep the session's state (subscriptions, QoS 2 deliveries)".into(),
        ));
    }
    Ok(())
}

/// Wait until `progress` reaches `target` or fails, at most `limit`; `false` when the limit
/// ran out.
pub(crate) async fn reached(
    progress: &crate::durability::Progress,
    target: crate::durability::Ticket,
    limit: Duration,
) -> bool {
    let wait = async {
        loop {
            // One reading for the test and the wait: read twice, progress could reach the
            // target in between, and the wait would then be for a ticket past it that may
            // never come ("stored up to N of N" after ack_timeout, found by the kill loops).
            let seen = progress.get();
            if seen >= target || progress.has_failed() {
                break;
            }
            progress.wait_past(seen).await;
        }
    };
    tokio::time::timeout(limit, Box::pin(wait)).await.is_ok()
}

/// Longest wait before a publisher slowed down for a subscriber looks at its queue again.
const ROOM_POLL: Duration = Duration::from_millis(20);

/// How often a publisher the backplane holds back looks whether it may go on.
const BACKPLANE_POLL: Duration = Duration::from_millis(2);

/// Wake when a slowed-for session may have room (re-checked by the caller, which
/// also polls every [`ROOM_POLL`]).
async fn wait_room(cell: Option<&SessionCell>) {
    match cell {
        // Boxed when first polled, like the commit wait: only slowed-down publishers need it.
        Some(c) => Box::pin(c.space.notified()).await,
        None => std::future::pending().await,
    }
}

/// Wait for the store's next commit. Boxed when first polled: select! creates this
/// future on every turn, and inline its state would sit in every connection's task.
async fn wait_commit(durability: &crate::durability::Persistence, seen: u64) {
    Box::pin(durability.wait_past(seen)).await
}

/// Make room for the next read, sized by how much the last reads brought (`hint`):
/// a busy connection reads up to 64 KiB at a time, an idle one keeps only a small
/// buffer (an empty buffer more than twice the size wanted is given back).
fn reserve_for_read(buf: &mut BytesMut, hint: usize) {
    if buf.is_empty() && buf.capacity() > 2 * hint.max(MIN_READ) {
        *buf = BytesMut::new();
    }
    let want = hint.clamp(MIN_READ, MAX_READ);
    if buf.capacity() - buf.len() < want / 2 {
        buf.reserve(want);
    }
}

/// Smallest and largest read sizes.
const MIN_READ: usize = 64;
const MAX_READ: usize = 64 * 1024;

/// Serve one accepted connection until it closes.
///
/// A plain function returning an `async move` block rather than an `async fn`: an
/// `async fn` keeps its arguments twice in its future (as passed, and as locals),
/// the block captures them once.
#[allow(
    clippy::manual_async_fn,
    reason = "an async fn would keep its arguments twice in every connection's task"
)]
pub(crate) fn serve<S>(
    mut io: S,
    peer: SocketAddr,
    core: Arc<Core>,
    origin: crate::security::Origin,
) -> impl std::future::Future<Output = ()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    async move {
        // Buffers start empty and grow on demand: an idle connection holds no buffer space.
        let mut buf = BytesMut::new();
        // This future lives in the task of every connection, idle ones included, so it is
        // kept small: the phases before and after `drive` are boxed (their timers and the
        // authentication exchange need room only for a moment), and so is the `Conn`
        // (inline, the compiler keeps two copies of it: the phase's result and the local).
        let opened = Box::pin(async {
            let connect = connect::read_connect(&mut io, &mut buf, &core).await?;
            connect::accept(&mut io, &mut buf, connect, &core, peer, &origin)
                .await
                .map(Box::new)
        })
        .await;
        let mut conn = match opened {
            Ok(c) => c,
            Err(r) => {
                let answered = matches!(r, connect::Refused::Answered(..));
                log_refused(peer, &origin, r);
                return Box::pin(close_politely(&mut io, &mut buf, answered)).await;
            }
        };
        let close = conn.drive(&mut io, &mut buf).await;
        // What is left unread is of no use now: a buffer that a large packet grew (an evicted
        // or stalled one) is given back before the last writes, not after.
        if buf.capacity() > MAX_READ {
            buf = BytesMut::new();
        }
        let linger = Box::pin((*conn).finish(&mut io, close)).await;
        Box::pin(close_politely(&mut io, &mut buf, linger)).await;
    }
}

/// Longest time a closing connection keeps reading (and discarding) what its peer still sends.
pub(crate) const LINGER: Duration = Duration::from_secs(2);

/// Close after the last packet (a refusing CONNACK, a DISCONNECT with its reason code) has
/// been written: shut the write side down, then, with `linger`, read and discard whatever the
/// peer still sends until it closes too, for at most [`LINGER`].
///
/// Closing a socket with unread input makes the kernel answer with a reset, which can destroy
/// the last packet before the peer reads it, and a peer that is still writing (a PUBREL for an
/// earlier PUBREC, say) would see a broken pipe instead of the reason code. Reading uses `buf`
/// (cleared before each read, and replaced by a small one if a large packet had grown it), and
/// a peer that never stops writing holds the socket for [`LINGER`] at most.
pub(crate) async fn close_politely<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
    buf: &mut BytesMut,
    linger: bool,
) {
    let _ = tokio::time::timeout(Duration::from_secs(1), io.shutdown()).await;
    if !linger {
        return;
    }
    let deadline = tokio::time::Instant::now() + LINGER;
    // A buffer that a large packet made large is given back first: thousands of closing
    // connections (an attack cut short) must not keep their buffers while they linger.
    if buf.capacity() > 4 * MIN_LINGER_READ {
        *buf = BytesMut::new();
    }
    if buf.capacity() < MIN_LINGER_READ {
        buf.reserve(MIN_LINGER_READ);
    }
    loop {
        buf.clear();
        match tokio::time::timeout_at(deadline, io.read_buf(buf)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => return,
        }
    }
}

/// Read size while lingering.
const MIN_LINGER_READ: usize = 4096;

/// Write and flush: TLS and WebSocket streams hold bytes back until flushed.
pub(crate) async fn write_flush<S: AsyncWrite + Unpin>(io: &mut S, data: &[u8]) -> std::io::Result<()> {
    io.write_all(data).await?;
    io.flush().await
}

fn log_refused(peer: SocketAddr, origin: &crate::security::Origin, r: connect::Refused) {
    let listener = &*origin.policy.name;
    match r {
        connect::Refused::Silent(why) => {
            tracing::info!(%peer, listener, "connection closed before CONNACK: {why}")
        }
        connect::Refused::Answered(rc, why) => {
            tracing::info!(%peer, listener, reason = %rc, "connection refused: {why}")
        }
    }
}
