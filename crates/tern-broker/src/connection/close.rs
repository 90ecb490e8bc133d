//! The end of a connection: the last packets, the log line, leaving the session and
//! deciding about the will.

use std::time::Duration;

use tern_proto::session::server::ServerHost;
use tern_proto::{Disconnect, Packet, ReasonCode};
use tokio::io::AsyncWrite;

use super::{write_flush, Close, Conn};
use crate::scheduler::Due;

/// Why a connection whose will another broker published is closed (its DISCONNECT's Reason
/// String, and the log's).
const WILL_GONE: &str = "this node was taken for gone by its cluster, which published the connection's will";

impl Conn {
    pub(super) async fn finish<S: AsyncWrite + Unpin>(mut self, io: &mut S, close: Close) -> bool {
        self.log_close(&close);
        // 5.0: tell the client why, where the server initiates the close (section 4.13).
        let code = match &close {
            Close::Violation(v) => Some(v.reason_code()),
            Close::KeepAliveTimeout => Some(ReasonCode::KeepAliveTimeout),
            Close::TakenOver(_) => Some(ReasonCode::SessionTakenOver),
            Close::Shutdown => Some(ReasonCode::ServerShuttingDown),
            Close::NotAuthorized => Some(ReasonCode::NotAuthorized),
            // 0x87 when the client's credentials expired, else 0x98 Administrative action.
            Close::Kicked { .. } => Some(self.link.core.security.kick_reason(&self.link.client_id)),
            Close::Evicted => Some(ReasonCode::QuotaExceeded),
            Close::Busy(_) | Close::WillGone => Some(ReasonCode::ServerBusy),
            _ => None,
        };
        // Acknowledgements already encoded go out first, then the DISCONNECT; only what the
        // store (and a cluster) keeps: one waiting for a commit goes out after it, or not at
        // all.
        if !self.link.out.is_empty() && !matches!(close, Close::Transport(_)) {
            let committed = tokio::time::timeout(Duration::from_secs(1), self.commit()).await;
            if !matches!(committed, Ok(Ok(()))) {
                self.link.out.clear();
            }
        }
        if let (true, Some(rc)) = (self.link.version.is_v5(), code) {
            let mut d = Disconnect::with_reason(rc);
            match &close {
                Close::Violation(v) => d.properties.reason_string = Some(v.to_string().into()),
                Close::WillGone => d.properties.reason_string = Some(WILL_GONE.into()),
                _ => {}
            }
            let mut p = Packet::Disconnect(d);
            self.session.fit(&mut p);
            self.link.transmit(&p);
        }
        if !self.link.out.is_empty() && !matches!(close, Close::Transport(_)) {
            let _ = tokio::time::timeout(Duration::from_secs(1), write_flush(io, &self.link.out)).await;
        }
        // The peer may still be writing; whether to wait for it before closing (see
        // [`close_politely`]). Not after its own DISCONNECT or a broken socket.
        let linger = !matches!(close, Close::Transport(_) | Close::ClientDisconnect { .. });
        self.detach(close);
        linger
    }

    /// One log event for the end of the connection, with the fields of every connection event
    /// (client id, peer address, listener, protocol version, user name).
    fn log_close(&self, close: &Close) {
        let peer = self.link.info.peer;
        let client_id = &*self.link.client_id;
        let listener = &*self.link.info.listener.name;
        let version = self.link.version;
        let username = self.link.info.username.as_deref().unwrap_or("");
        macro_rules! event {
            ($level:ident, $($rest:tt)+) => {
                tracing::$level!(%peer, client_id, listener, %version, username, $($rest)+)
            };
        }
        match close {
            Close::ClientDisconnect { .. } => event!(info, "client disconnected"),
            Close::Violation(v) => event!(warn, reason = %v.reason_code(), "closing connection: {v}"),
            Close::KeepAliveTimeout => event!(info, "keep-alive timeout"),
            Close::TakenOver(_) => event!(info, "session taken over by a new connection"),
            Close::Transport(why) => event!(info, "connection lost: {why}"),
            Close::Shutdown => event!(info, "closing: server shutting down"),
            Close::NotAuthorized => event!(warn, "re-authentication failed"),
            Close::Kicked { discard } => event!(info, discard, "disconnected by an administrator"),
            Close::Stalled => event!(warn, "closing connection: a packet in progress stalled"),
            Close::Busy(why) => event!(warn, "closing connection (server busy): {why}"),
            Close::WillGone => event!(warn, "closing connection: {WILL_GONE}"),
            Close::Evicted => event!(
                warn,
                "closing connection: the budget for partial packets (max_partial_bytes) ran out and its packet in progress was among the oldest"
            ),
        }
    }

    /// Leave the session and decide about the will ([MQTT-3.1.2-8], [MQTT-3.1.2-10]).
    fn detach(mut self, close: Close) {
        self.link
            .core
            .counters
            .connected
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        let mut will = self.link.will.take();
        {
            let mut st = self.link.cell.lock();
            if st.will_gone == Some(self.link.conn_id) {
                st.will_gone = None;
                will = None;
            }
        }
        if let (Some(b), true, false) = (
            &self.link.core.backplane,
            will.is_some(),
            matches!(close, Close::Shutdown),
        ) {
            // Decided here from now on (a shutdown leaves it to the other nodes).
            b.will_disarmed(&self.link.client_id, self.link.conn_id);
        }
        if matches!(close, Close::Shutdown) {
            // Nobody is left to receive the will; a persistent session is written
            // as disconnected now, so that its expiry runs from here after a restart.
            {
                let mut st = self.link.cell.lock();
                if st.conn_id != Some(self.link.conn_id) {
                    return;
                }
                st.conn_id = None;
                st.waker = None;
                st.attached = None;
                st.shrink();
            }
            self.link.core.persist_session(&self.link.cell, true);
            return;
        }
        if let Close::TakenOver(t) = close {
            if let Some(w) = will {
                let expiry = self.link.cell.lock().expiry_interval;
                if w.delay == 0 || t.session_ended || expiry == 0 {
                    self.link.core.publish_will(&w.message);
                }
            }
            return;
        }
        let publish_will = !matches!(close, Close::ClientDisconnect { with_will: false });
        let mut discard = matches!(close, Close::Kicked { discard: true });
        let now = self.link.core.clock.now();
        let (expiry, generation) = {
            let mut st = self.link.cell.lock();
            if st.conn_id != Some(self.link.conn_id) {
                return;
            }
            // An administrator asked to discard the session, and the client left first.
            discard |= st.kicked.take() == Some(true);
            st.conn_id = None;
            st.waker = None;
            st.attached = None;
            st.generation += 1;
            st.shrink();
            (st.expiry_interval, st.generation)
        };
        self.link.cell.set_connected(false);
        if let (true, Some(w)) = (publish_will, will) {
            if w.delay == 0 || expiry == 0 {
                self.link.core.publish_will(&w.message);
            } else {
                let at = now + Duration::from_secs(u64::from(w.delay.min(expiry)));
                {
                    let mut st = self.link.cell.lock();
                    st.pending_will = Some(w.message.clone());
                    st.pending_will_at = Some(at);
                }
                self.link
                    .core
                    .scheduler
                    .schedule(at, Due::Will, &self.link.cell, generation);
            }
        }
        if expiry == 0 || discard {
            self.link.core.end_session(&self.link.cell);
        } else {
            self.link.core.persist_session(&self.link.cell, true);
            if expiry != u32::MAX {
                let at = now + Duration::from_secs(u64::from(expiry));
                self.link
                    .core
                    .scheduler
                    .schedule(at, Due::Expiry, &self.link.cell, generation);
            }
        }
    }
}
