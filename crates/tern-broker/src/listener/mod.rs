//! Accept loops: connection limit, connect-rate limit, and the polite refusal
//! of clients beyond them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tern_proto::codec::{Decoded, Decoder};
use tern_proto::{ConnAck, Packet, ProtocolVersion, ReasonCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::shared::Shared;
use crate::Config;

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
    pub fn new(cfg: &Config) -> Limits {
        let per_sec = f64::from(cfg.max_connect_rate);
        Limits {
            connections: Arc::new(Semaphore::new(cfg.max_connections)),
            max_connections: cfg.max_connections,
            refusals: Arc::new(Semaphore::new(MAX_PENDING_REFUSALS)),
            rate: Arc::new(Mutex::new(TokenBucket {
                tokens: per_sec,
                per_sec,
                last: Instant::now(),
            })),
        }
    }

    /// Connections being served now.
    pub fn active(&self) -> usize {
        self.max_connections - self.connections.available_permits()
    }
}

pub(crate) async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, limits: Limits) {
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
        let _ = stream.set_nodelay(true);
        let rate_ok = limits
            .rate
            .lock()
            .map(|mut b| b.take(Instant::now()))
            .unwrap_or(true);
        if !rate_ok {
            tracing::warn!(%peer, "connection refused: max_connect_rate exceeded");
            refuse(stream, &limits, ReasonCode::ConnectionRateExceeded);
            continue;
        }
        let Ok(permit) = limits.connections.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "connection refused: max_connections reached");
            refuse(stream, &limits, ReasonCode::ServerBusy);
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            shared.counters.connections.fetch_add(1, Ordering::Relaxed);
            crate::connection::serve(stream, peer, shared).await;
            drop(permit);
        });
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
            }
        }
    });
}

/// Counts bytes in both directions for `$SYS`.
pub(crate) fn count(counter: &AtomicU64, n: usize) {
    counter.fetch_add(n as u64, Ordering::Relaxed);
}
