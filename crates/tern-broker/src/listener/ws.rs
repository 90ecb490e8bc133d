//! MQTT over WebSocket (MQTT 5.0 section 6): the HTTP upgrade on the configured
//! path with the `mqtt` subprotocol, and [`WsStream`], which turns binary
//! WebSocket messages into the byte stream the connection code reads.
//!
//! - Every refused request gets an HTTP answer, then the connection is closed: 404 for
//!   another path, 400 for a request that is not a WebSocket upgrade or lacks the `mqtt`
//!   subprotocol ([MQTT-6.0.0-3], [MQTT-6.0.0-4]), 426 with `Sec-WebSocket-Version: 13`
//!   for another WebSocket version, 431 for a head above [`MAX_REQUEST`].
//! - The request head is capped at [`MAX_REQUEST`] bytes and the handshake at the
//!   connect timeout, so a slow or endless request holds little.
//! - Messages and frames above the broker's maximum packet size (plus framing)
//!   are refused by tungstenite and close the connection.
//! - A text message closes the connection ([MQTT-6.0.0-1]); an MQTT packet may
//!   span messages and a message may hold several packets ([MQTT-6.0.0-2]):
//!   the stream has no message boundaries.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tern_ws::WsStream;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// Largest HTTP upgrade request head read.
const MAX_REQUEST: usize = 16 * 1024;

/// Most header lines of an upgrade request.
const MAX_HEADERS: usize = 64;

/// Why a WebSocket upgrade failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum WsError {
    #[error("{0}")]
    Handshake(#[from] tokio_tungstenite::tungstenite::Error),
    #[error("not finished within the connect timeout")]
    Timeout,
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The request was answered with an HTTP error status, then closed.
    #[error("answered HTTP {0}: {1}")]
    Refused(u16, &'static str),
}

/// An HTTP refusal: status, reason (also the body), extra header lines.
type Refusal = (StatusCode, &'static str, &'static str);

/// Accept the upgrade on `path`; the result is a byte stream.
///
/// The request head is read and checked here before tungstenite sees it, so that every
/// refusal gets an HTTP answer (tungstenite drops a request that is not an upgrade without
/// one): 404 for another path, 400 for a request that is not a WebSocket upgrade or lacks the
/// `mqtt` subprotocol, 426 with `Sec-WebSocket-Version: 13` for another protocol version, 431
/// for a head above [`MAX_REQUEST`]; then the connection is closed.
pub(crate) async fn accept<S>(
    mut stream: S,
    path: &str,
    max_packet: usize,
    timeout: Duration,
) -> Result<WsStream<Prefixed<S>>, WsError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let deadline = tokio::time::Instant::now() + timeout;
    let mut head = BytesMut::with_capacity(1024);
    let read = tokio::time::timeout_at(deadline, read_head(&mut stream, &mut head))
        .await
        .map_err(|_| WsError::Timeout)?;
    let subprotocol = match read.and_then(|()| check_head(&head, path)) {
        Ok(p) => p,
        Err((status, why, extra)) => {
            let response = format!(
                "HTTP/1.1 {} {}\r\nConnection: close\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n{extra}\r\n{why}\n",
                status.as_u16(),
                status.canonical_reason().unwrap_or(""),
                why.len() + 1,
            );
            let write = crate::connection::write_flush(&mut stream, response.as_bytes());
            let _ = tokio::time::timeout_at(deadline, write).await;
            crate::connection::close_politely(&mut stream, &mut head, true).await;
            return Err(WsError::Refused(status.as_u16(), why));
        }
    };
    #[allow(
        clippy::result_large_err,
        reason = "the callback's signature is tungstenite's; it runs once per connection"
    )]
    let answer = move |_: &Request, mut resp: Response| -> Result<Response, ErrorResponse> {
        resp.headers_mut()
            .insert("Sec-WebSocket-Protocol", HeaderValue::from_static(subprotocol));
        Ok(resp)
    };
    // Room for a maximum-size packet plus the frame header.
    let limit = max_packet.saturating_add(16);
    let config = WebSocketConfig::default()
        .max_message_size(Some(limit))
        .max_frame_size(Some(limit));
    // tungstenite reads the request again from what was read here, then the socket. It refuses
    // bytes after the head that arrive with it ("junk"), so the head is replayed alone and what
    // came after it (a client's first frame, sent without waiting for the 101) by a later read.
    let end = head_end(&head, 0).unwrap_or(head.len());
    let mut head = head.freeze();
    let rest = head.split_off(end);
    let replay = Prefixed {
        inner: stream,
        prefix: head,
        rest,
    };
    let handshake = tokio_tungstenite::accept_hdr_async_with_config(replay, answer, Some(config));
    let ws = tokio::time::timeout_at(deadline, handshake)
        .await
        .map_err(|_| WsError::Timeout)??;
    Ok(WsStream::new(ws))
}

/// Read until the end of the request head (an empty line), at most [`MAX_REQUEST`] bytes.
async fn read_head<S: AsyncRead + Unpin>(stream: &mut S, head: &mut BytesMut) -> Result<(), Refusal> {
    let mut scanned = 0;
    loop {
        if head_end(head, scanned).is_some() {
            return Ok(());
        }
        // Only new bytes are searched next time (a client sending a byte at a time).
        scanned = head.len().saturating_sub(3);
        if head.len() >= MAX_REQUEST {
            return Err((
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "the request head is too large",
                "",
            ));
        }
        head.reserve(1024.min(MAX_REQUEST - head.len()));
        let mut limited = (&mut *stream).take((MAX_REQUEST - head.len()) as u64);
        match limited.read_buf(head).await {
            Ok(0) | Err(_) => {
                return Err((StatusCode::BAD_REQUEST, "the request ended early", ""));
            }
            Ok(_) => {}
        }
    }
}

/// Where the request head ends (after its empty line), searching from `from`.
fn head_end(head: &[u8], from: usize) -> Option<usize> {
    head.get(from..)?
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| from + i + 4)
}

/// Check the request head; the subprotocol to answer with.
fn check_head(head: &[u8], path: &str) -> Result<&'static str, Refusal> {
    let bad = |why| (StatusCode::BAD_REQUEST, why, "");
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        _ => return Err(bad("not an HTTP request")),
    }
    if req.method != Some("GET") {
        return Err(bad("a WebSocket upgrade is a GET request"));
    }
    let target = req.path.unwrap_or("");
    if target.split('?').next() != Some(path) {
        return Err((StatusCode::NOT_FOUND, "no MQTT endpoint on this path", ""));
    }
    let headers: &[httparse::Header<'_>] = req.headers;
    let values = |name: &'static str| header_values(headers, name);
    let has = |name: &'static str, token: &str| values(name).any(|v| v.eq_ignore_ascii_case(token));
    if !has("Upgrade", "websocket") || !has("Connection", "upgrade") {
        return Err(bad(
            "this is a WebSocket endpoint: send an upgrade request (Upgrade: websocket)",
        ));
    }
    if values("Sec-WebSocket-Key").next().is_none() {
        return Err(bad("Sec-WebSocket-Key is missing"));
    }
    if !has("Sec-WebSocket-Version", "13") {
        return Err((
            StatusCode::UPGRADE_REQUIRED,
            "only WebSocket version 13 is supported",
            "Sec-WebSocket-Version: 13\r\n",
        ));
    }
    // [MQTT-6.0.0-3], [MQTT-6.0.0-4]: the subprotocol is `mqtt` (`mqttv3.1` for old clients).
    if has("Sec-WebSocket-Protocol", "mqtt") {
        Ok("mqtt")
    } else if has("Sec-WebSocket-Protocol", "mqttv3.1") {
        Ok("mqttv3.1")
    } else {
        Err(bad("[MQTT-6.0.0-3] the WebSocket subprotocol `mqtt` is required"))
    }
}

/// The comma-separated values of every header called `name` (any case).
fn header_values<'h>(
    headers: &'h [httparse::Header<'h>],
    name: &'static str,
) -> impl Iterator<Item = &'h str> {
    headers
        .iter()
        .filter(move |h| h.name.eq_ignore_ascii_case(name))
        .filter_map(|h| std::str::from_utf8(h.value).ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
}

/// A stream that first yields the bytes already read from it: the request head, then (by a
/// read of its own) whatever came after it.
#[derive(Debug)]
pub(crate) struct Prefixed<S> {
    inner: S,
    prefix: Bytes,
    rest: Bytes,
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.prefix.is_empty() {
            std::mem::swap(&mut this.prefix, &mut this.rest);
        }
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix.split_to(n));
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(lines: &[&str]) -> Vec<u8> {
        let mut r = lines.join("\r\n");
        r.push_str("\r\n\r\n");
        r.into_bytes()
    }

    const UPGRADE: [&str; 6] = [
        "GET /mqtt HTTP/1.1",
        "Host: x",
        "Upgrade: websocket",
        "Connection: keep-alive, Upgrade",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version: 13",
    ];

    fn with(extra: &str) -> Vec<u8> {
        let mut l = UPGRADE.to_vec();
        l.push(extra);
        request(&l)
    }

    #[test]
    fn refusals_name_the_right_status() {
        let status = |r: Vec<u8>| check_head(&r, "/mqtt").map_err(|e| e.0.as_u16());
        assert_eq!(status(with("Sec-WebSocket-Protocol: mqtt")), Ok("mqtt"));
        assert_eq!(
            status(with("Sec-WebSocket-Protocol: x, mqttv3.1")),
            Ok("mqttv3.1")
        );
        assert_eq!(status(request(&UPGRADE)), Err(400), "no subprotocol");
        assert_eq!(status(request(&["GET /mqtt HTTP/1.1", "Host: x"])), Err(400));
        assert_eq!(status(request(&["GET /other HTTP/1.1", "Host: x"])), Err(404));
        assert_eq!(status(request(&["POST /mqtt HTTP/1.1", "Host: x"])), Err(400));
        let mut v8 = UPGRADE.to_vec();
        v8[5] = "Sec-WebSocket-Version: 8";
        v8.push("Sec-WebSocket-Protocol: mqtt");
        assert_eq!(status(request(&v8)), Err(426));
        assert_eq!(status(b"\x00\x01 garbage\r\n\r\n".to_vec()), Err(400));
    }
}
