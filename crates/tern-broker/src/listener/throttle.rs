//! Per-client inbound rate limits (`[auth.rate_limit]`): messages and bytes per second, as
//! token buckets over the MQTT byte stream of one connection. Beyond them the broker stops
//! reading that client's socket until the buckets refill: TCP flow control slows the client
//! down, and nothing it sent is dropped.
//!
//! [`Throttled`] wraps the stream a listener hands to the connection (after TLS and WebSocket,
//! so it counts MQTT bytes and packets), only when a limit is configured: connections of a
//! broker without limits keep their unwrapped, smaller task. It reads the socket into a small
//! buffer of its own (`CHUNK`, freed when drained) and hands the connection only what the
//! buckets allow, following the fixed headers (type byte, Remaining Length) to count packets;
//! the socket is read again only when that buffer is empty.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// Bytes read from the socket at once.
const CHUNK: usize = 4096;

use crate::security::RateLimitConfig;

/// A token bucket that may go into debt.
#[derive(Debug)]
struct Bucket {
    rate: f64,
    size: f64,
    tokens: f64,
}

impl Bucket {
    fn new(rate: f64, burst_secs: f64) -> Option<Bucket> {
        (rate > 0.0).then(|| Bucket {
            rate,
            size: (rate * burst_secs).max(1.0),
            tokens: (rate * burst_secs).max(1.0),
        })
    }

    fn refill(&mut self, elapsed: Duration) {
        self.tokens = (self.tokens + self.rate * elapsed.as_secs_f64()).min(self.size);
    }

    /// Whole tokens available.
    fn whole(&self) -> usize {
        if self.tokens >= 1.0 {
            self.tokens as usize
        } else {
            0
        }
    }

    /// Time until the bucket holds a whole token.
    fn wait(&self) -> Duration {
        Duration::from_secs_f64(((1.0 - self.tokens) / self.rate).max(0.0))
    }
}

/// Where the scanner is in the packet stream.
#[derive(Debug, Clone, Copy)]
enum Scan {
    /// Expecting the first byte of a packet.
    Start,
    /// In the Remaining Length: its value so far, and the multiplier of the next byte.
    Length(usize, usize),
    /// In the body: bytes left.
    Body(usize),
}

impl Scan {
    /// How many leading bytes of `bytes` may be handed over with at most `max_starts` packets
    /// beginning in them and at most `max_bytes` bytes: (bytes, packets begun).
    fn cut(self, bytes: &[u8], max_starts: usize, max_bytes: usize) -> (usize, usize) {
        let mut s = self;
        let end = bytes.len().min(max_bytes);
        let (mut i, mut starts) = (0, 0);
        while i < end {
            if let Scan::Start = s {
                if starts == max_starts {
                    break;
                }
            }
            match s {
                Scan::Body(left) => {
                    let take = left.min(end - i);
                    i += take;
                    s = if take == left {
                        Scan::Start
                    } else {
                        Scan::Body(left - take)
                    };
                }
                _ => {
                    starts += s.feed(&bytes[i..i + 1]);
                    i += 1;
                }
            }
        }
        (i, starts)
    }

    /// Follow `bytes`; returns how many packets began in them.
    fn feed(&mut self, bytes: &[u8]) -> usize {
        let mut started = 0;
        let mut i = 0;
        while i < bytes.len() {
            match *self {
                Scan::Start => {
                    started += 1;
                    *self = Scan::Length(0, 1);
                    i += 1;
                }
                Scan::Length(value, mult) => {
                    let b = bytes[i];
                    i += 1;
                    let value = value + usize::from(b & 0x7f) * mult;
                    *self = if b & 0x80 == 0 || mult >= 128 * 128 * 128 {
                        if value == 0 {
                            Scan::Start
                        } else {
                            Scan::Body(value)
                        }
                    } else {
                        Scan::Length(value, mult * 128)
                    };
                }
                Scan::Body(left) => {
                    let take = left.min(bytes.len() - i);
                    i += take;
                    *self = if take == left {
                        Scan::Start
                    } else {
                        Scan::Body(left - take)
                    };
                }
            }
        }
        started
    }
}

/// A stream whose reads are held back by the limits (see the module documentation).
pub(crate) struct Throttled<S> {
    inner: S,
    /// Read from the socket, not handed over yet (`pos..`).
    pending: Vec<u8>,
    pos: usize,
    messages: Option<Bucket>,
    bytes: Option<Bucket>,
    scan: Scan,
    last: Instant,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl<S> Throttled<S> {
    pub fn new(inner: S, config: &RateLimitConfig) -> Throttled<S> {
        let burst = if config.burst_secs > 0.0 {
            config.burst_secs
        } else {
            1.0
        };
        Throttled {
            inner,
            pending: Vec::new(),
            pos: 0,
            messages: Bucket::new(f64::from(config.messages_per_sec), burst),
            bytes: Bucket::new(config.bytes_per_sec as f64, burst),
            scan: Scan::Start,
            last: Instant::now(),
            sleep: None,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Throttled<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        loop {
            if this.pos == this.pending.len() {
                // Drained: the socket is read again (and the buffer freed meanwhile).
                let mut chunk = std::mem::take(&mut this.pending);
                chunk.resize(CHUNK, 0);
                let mut rb = ReadBuf::new(&mut chunk);
                match Pin::new(&mut this.inner).poll_read(cx, &mut rb) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Ready(Ok(())) => {}
                }
                let n = rb.filled().len();
                if n == 0 {
                    return Poll::Ready(Ok(())); // end of stream
                }
                chunk.truncate(n);
                this.pending = chunk;
                this.pos = 0;
            }
            let now = Instant::now();
            let elapsed = now.duration_since(this.last);
            this.last = now;
            for b in [&mut this.messages, &mut this.bytes].into_iter().flatten() {
                b.refill(elapsed);
            }
            let max_starts = this.messages.as_ref().map_or(usize::MAX, Bucket::whole);
            let max_bytes = this
                .bytes
                .as_ref()
                .map_or(usize::MAX, Bucket::whole)
                .min(buf.remaining());
            let (n, starts) = this.scan.cut(&this.pending[this.pos..], max_starts, max_bytes);
            if n > 0 {
                let bytes = &this.pending[this.pos..this.pos + n];
                let started = this.scan.feed(bytes);
                debug_assert_eq!(started, starts);
                buf.put_slice(bytes);
                this.pos += n;
                if this.pos == this.pending.len() {
                    this.pending = Vec::new();
                    this.pos = 0;
                }
                if let Some(b) = &mut this.bytes {
                    b.tokens -= n as f64;
                }
                if let Some(m) = &mut this.messages {
                    m.tokens -= starts as f64;
                }
                this.sleep = None;
                return Poll::Ready(Ok(()));
            }
            // Out of tokens: nothing more is read until the buckets refill.
            let wait = [&this.messages, &this.bytes]
                .into_iter()
                .flatten()
                .map(Bucket::wait)
                .max()
                .unwrap_or_default()
                .max(Duration::from_millis(1));
            let deadline = now + wait;
            match &mut this.sleep {
                Some(s) => s.as_mut().reset(deadline),
                None => this.sleep = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
            if let Some(s) = &mut this.sleep {
                if s.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Throttled<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn packets_are_counted_across_reads() {
        let mut s = Scan::Start;
        // PINGREQ, PUBLISH with 3 bytes, then a PUBLISH whose length takes two bytes (200).
        let mut bytes = vec![0xc0, 0x00, 0x30, 0x03, 1, 2, 3, 0x30, 0xc8, 0x01];
        bytes.extend(std::iter::repeat_n(0u8, 200));
        bytes.extend([0xc0, 0x00]);
        let mut total = 0;
        for chunk in bytes.chunks(3) {
            total += s.feed(chunk);
        }
        assert_eq!(total, 4);
        assert!(matches!(s, Scan::Start));
    }

    #[tokio::test]
    async fn reads_wait_for_the_buckets() {
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let config = RateLimitConfig {
            messages_per_sec: 200,
            bytes_per_sec: 0,
            burst_secs: 0.5,
        };
        let mut t = Throttled::new(server, &config);
        // 300 PINGREQs: 100 at once (the burst), then 200 per second.
        client.write_all(&[0xc0, 0x00].repeat(300)).await.unwrap();
        let started = Instant::now();
        let mut got = 0;
        let mut buf = [0u8; 8];
        while got < 600 {
            got += t.read(&mut buf).await.unwrap();
        }
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(950) && took < Duration::from_millis(1500),
            "{took:?}"
        );
    }
}
