//! Accept loops: connection limit, connect-rate limit, and the polite refusal
//! of clients beyond them; then the transport's own handshake (TLS, WebSocket)
//! turns the socket into the byte stream `connection::serve` runs MQTT on.
//!
//! - `tls.rs`: rustls server configuration from PEM files, mutual TLS, the
//!   client certificate's CN.
//! - `ws.rs`: the WebSocket upgrade (path, `mqtt` subprotocol) and the adapter
//!   from binary messages to a byte stream.
//!
//! Every handshake runs under the connect timeout, and a failed one is logged
//! with the peer's address and closed; nothing about MQTT is decided here.

pub(crate) mod throttle;
pub(crate) mod tls;
mod ws;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tern_proto::codec::{Decoded, Decoder};
use tern_proto::{ConnAck, Packet, ProtocolVersion, ReasonCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::broker_core::Core;
use crate::config::{ListenerConfig, ListenerKind};
use crate::security::{ListenerPolicy, Origin};
use crate::{BrokerError, Config};

/// A bound listener, before it serves.
#[derive(Debug)]
pub(crate) struct Bound {
    pub socket: TcpListener,
    pub endpoint: Arc<Endpoint>,
}

/// How a listener turns accepted sockets into MQTT byte streams.
pub(crate) struct Endpoint {
    pub kind: ListenerKind,
    policy: Arc<ListenerPolicy>,
    tls: Option<Arc<tls::TlsSlot>>,
    ws_path: String,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("kind", &self.kind)
            .field("policy", &self.policy)
            .field("ws_path", &self.ws_path)
            .finish_non_exhaustive()
    }
}

impl Endpoint {
    /// The endpoint of a plain `listen` address.
    pub fn tcp(cfg: &Config) -> Endpoint {
        Endpoint {
            kind: ListenerKind::Tcp,
            policy: Arc::new(ListenerPolicy {
                name: ListenerKind::Tcp.to_string().into(),
                allow_anonymous: cfg.allow_anonymous,
                identity_as_username: false,
            }),
            tls: None,
            ws_path: String::new(),
        }
    }

    /// The endpoint of `[[listener]]` number `index`; TLS material is loaded here, and
    /// errors name the field.
    pub fn new(cfg: &Config, l: &ListenerConfig, index: usize) -> Result<Endpoint, BrokerError> {
        let tls = if l.kind.is_tls() {
            Some(Arc::new(tls::TlsSlot::new(l, index)?))
        } else {
            None
        };
        Ok(Endpoint {
            kind: l.kind,
            policy: Arc::new(ListenerPolicy {
                name: l.kind.to_string().into(),
                allow_anonymous: l.allow_anonymous.unwrap_or(cfg.allow_anonymous),
                identity_as_username: l.use_identity_as_username,
            }),
            tls,
            ws_path: l.path.clone(),
        })
    }

    /// The listener's TLS configuration, which a reload replaces (tls and wss listeners).
    pub fn tls_slot(&self) -> Option<Arc<tls::TlsSlot>> {
        self.tls.clone()
    }

    /// The listener's name in logs.
    pub fn name(&self) -> &str {
        &self.policy.name
    }

    /// The same endpoint, named after the address it is bound to (for logs).
    pub fn bound_to(&self, addr: std::net::SocketAddr) -> Endpoint {
        let mut policy = (*self.policy).clone();
        policy.name = format!("{} {addr}", self.kind).into();
        Endpoint {
            kind: self.kind,
            policy: Arc::new(policy),
            tls: self.tls.clone(),
            ws_path: self.ws_path.clone(),
        }
    }

    /// The origin of a byte stream handed to the broker directly (as if it came through this
    /// listener, without its TLS or WebSocket layer).
    pub fn stream_origin(&self) -> Origin {
        Origin {
            policy: self.policy.clone(),
            cert_name: None,
        }
    }

    /// The origin of plain MQTT-over-TCP connections, `None` for listeners with a
    /// TLS or WebSocket layer (served by [`Endpoint::serve_layered`]).
    fn plain_origin(&self) -> Option<Origin> {
        (self.tls.is_none() && !self.kind.is_websocket()).then(|| Origin {
            policy: self.policy.clone(),
            cert_name: None,
        })
    }

    /// Run the TLS and/or WebSocket handshake and serve MQTT on the result.
    async fn serve_layered(&self, stream: TcpStream, peer: std::net::SocketAddr, core: Arc<Core>) {
        let timeout = core.config.connect_timeout();
        let max_frame = core.config.max_packet_size as usize;
        let kind = self.kind;
        let fail = |what: &str, e: &dyn std::fmt::Display| {
            tracing::info!(%peer, listener = %self.policy.name, "{what} failed, connection closed: {e}");
        };
        let Some(slot) = &self.tls else {
            let origin = Origin {
                policy: self.policy.clone(),
                cert_name: None,
            };
            return match ws::accept(stream, &self.ws_path, max_frame, timeout).await {
                Ok(io) => serve_limited(io, peer, core, origin).await,
                Err(e) => fail("WebSocket handshake", &e),
            };
        };
        let acceptor = slot.acceptor();
        let tls = match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return fail("TLS handshake", &e),
            Err(_) => return fail("TLS handshake", &"not finished within the connect timeout"),
        };
        let origin = Origin {
            policy: self.policy.clone(),
            cert_name: tls::peer_name(tls.get_ref().1),
        };
        if !kind.is_websocket() {
            return serve_limited(tls, peer, core, origin).await;
        }
        match ws::accept(tls, &self.ws_path, max_frame, timeout).await {
            Ok(io) => serve_limited(io, peer, core, origin).await,
            Err(e) => fail("WebSocket handshake", &e),
        }
    }
}

/// Serve MQTT on `io`, through the per-client rate limits when they are configured.
async fn serve_limited<S>(io: S, peer: std::net::SocketAddr, core: Arc<Core>, origin: Origin)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let limits = core.config.auth.rate_limit;
    if limits.enabled() {
        crate::connection::serve(throttle::Throttled::new(io, &limits), peer, core, origin).await
    } else {
        crate::connection::serve(io, peer, core, origin).await
    }
}

/// Most refusals answered at once; connections beyond are closed without a word.
const MAX_PENDING_REFUSALS: usize = 256;

/// Limits shared by every listener of one broker.
#[derive(Debug, Clone)]
pub(crate) struct Limits {
    connections: Arc<Semaphore>,
    max_connections: usize,
    refusals: Arc<Semaphore>,
    rate: Arc<Mutex<TokenBucket>>,
}

#[derive(Debug)]
struct TokenBucket {
    tokens: f64,
    per_sec: f64,
    last: Instant,
}

impl TokenBucket {
    fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.per_sec).min(self.per_sec);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

impl Limits {
    /// The limits of `cfg`; the connection rate is measured on `now`'s clock.
    pub fn new(cfg: &Config, now: Instant) -> Limits {
        let per_sec = f64::from(cfg.max_connect_rate);
        Limits {
            connections: Arc::new(Semaphore::new(cfg.max_connections)),
            max_connections: cfg.max_connections,
            refusals: Arc::new(Semaphore::new(MAX_PENDING_REFUSALS)),
            rate: Arc::new(Mutex::new(TokenBucket {
                tokens: per_sec,
                per_sec,
                last: now,
            })),
        }
    }

    /// Connections being served now.
    pub fn active(&self) -> usize {
        self.max_connections - self.connections.available_permits()
    }
}

pub(crate) async fn accept_loop(bound: Bound, core: Arc<Core>, limits: Limits) {
    let Bound {
        socket: listener,
        endpoint,
    } = bound;
    let accepted = core.metrics.listener(endpoint.name());
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // Usually EMFILE: back off instead of spinning.
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // A banned address is closed before anything else (no TLS handshake, no CONNECT).
        if core.security.banned_address(peer.ip()) {
            tracing::info!(%peer, "connection refused: the address is banned");
            drop(stream);
            continue;
        }
        let _ = stream.set_nodelay(true);
        let rate_ok = limits
            .rate
            .lock()
            .map(|mut b| b.take(core.clock.now()))
            .unwrap_or(true);
        if !rate_ok {
            tracing::warn!(%peer, "connection refused: max_connect_rate exceeded");
            core.metrics.refused_rate.fetch_add(1, Ordering::Relaxed);
            if endpoint.kind == ListenerKind::Tcp {
                refuse(stream, &limits, ReasonCode::ConnectionRateExceeded);
            }
            continue;
        }
        let Ok(permit) = limits.connections.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "connection refused: max_connections reached");
            core.metrics.refused_busy.fetch_add(1, Ordering::Relaxed);
            if endpoint.kind == ListenerKind::Tcp {
                refuse(stream, &limits, ReasonCode::ServerBusy);
            }
            continue;
        };
        core.counters.connections.fetch_add(1, Ordering::Relaxed);
        accepted.fetch_add(1, Ordering::Relaxed);
        let core = core.clone();
        // Every connection's task is as large as the future it runs: plain MQTT over TCP,
        // the common case, runs alone in its task; the much larger state of the TLS and
        // WebSocket layers is boxed, for the connections that use them.
        let limited = core.config.auth.rate_limit.enabled();
        match endpoint.plain_origin() {
            Some(origin) if limited => {
                tokio::spawn(async move {
                    Box::pin(serve_limited(stream, peer, core, origin)).await;
                    drop(permit);
                });
            }
            Some(origin) => {
                tokio::spawn(async move {
                    crate::connection::serve(stream, peer, core, origin).await;
                    drop(permit);
                });
            }
            None => {
                let endpoint = endpoint.clone();
                tokio::spawn(async move {
                    Box::pin(endpoint.serve_layered(stream, peer, core)).await;
                    drop(permit);
                });
            }
        }
    }
}

/// Read the CONNECT (briefly) to learn the version, answer with a CONNACK
/// carrying `rc` (3.1.1: 0x03 Server unavailable), and close.
fn refuse(stream: TcpStream, limits: &Limits, rc: ReasonCode) {
    let Ok(permit) = limits.refusals.clone().try_acquire_owned() else {
        return;
    };
    tokio::spawn(async move {
        let _permit = permit;
        let mut stream = stream;
        let mut buf = BytesMut::with_capacity(512);
        let decoder = Decoder::new(ProtocolVersion::V3_1_1, 4096);
        let read = async {
            loop {
                if let Ok(Decoded::Packet(Packet::Connect(c))) = decoder.decode(&mut buf) {
                    return Some(c.protocol_version);
                }
                match stream.read_buf(&mut buf).await {
                    Ok(0) | Err(_) => return None,
                    Ok(_) if buf.len() > 4096 => return None,
                    Ok(_) => {}
                }
            }
        };
        if let Ok(Some(v)) = tokio::time::timeout(Duration::from_secs(2), read).await {
            let rc = if v.is_v5() {
                rc
            } else {
                ReasonCode::ServerUnavailable
            };
            let mut out = BytesMut::new();
            if Packet::ConnAck(ConnAck::new(rc, false))
                .encode(v, &mut out)
                .is_ok()
            {
                let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(&out)).await;
                crate::connection::close_politely(&mut stream, &mut buf, true).await;
            }
        }
    });
}

/// Counts bytes in both directions for `$SYS`.
pub(crate) fn count(counter: &AtomicU64, n: usize) {
    counter.fetch_add(n as u64, Ordering::Relaxed);
}
