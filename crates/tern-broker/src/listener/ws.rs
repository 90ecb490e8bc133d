//! MQTT over WebSocket (MQTT 5.0 section 6): the HTTP upgrade on the configured
//! path with the `mqtt` subprotocol, and [`WsStream`], which turns binary
//! WebSocket messages into the byte stream the connection code reads.
//!
//! - A request for another path is answered 404, one without the `mqtt`
//!   subprotocol 400 ([MQTT-6.0.0-3], [MQTT-6.0.0-4]); a request that is not an
//!   upgrade fails the handshake. Each closes the connection.
//! - The request is capped at [`MAX_REQUEST`] bytes and the handshake at the
//!   connect timeout, so a slow or endless request holds little.
//! - Messages and frames above the broker's maximum packet size (plus framing)
//!   are refused by tungstenite and close the connection.
//! - A text message closes the connection ([MQTT-6.0.0-1]); an MQTT packet may
//!   span messages and a message may hold several packets ([MQTT-6.0.0-2]):
//!   the stream has no message boundaries.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tern_ws::WsStream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// Largest HTTP upgrade request read.
const MAX_REQUEST: usize = 16 * 1024;

/// Why a WebSocket upgrade failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum WsError {
    #[error("{0}")]
    Handshake(#[from] tokio_tungstenite::tungstenite::Error),
    #[error("not finished within the connect timeout")]
    Timeout,
}

/// Accept the upgrade on `path`; the result is a byte stream.
pub(crate) async fn accept<S>(
    stream: S,
    path: &str,
    max_packet: usize,
    timeout: Duration,
) -> Result<WsStream<Capped<S>>, WsError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    #[allow(
        clippy::result_large_err,
        reason = "the callback's signature is tungstenite's; it runs once per connection"
    )]
    let check = |req: &Request, mut resp: Response| -> Result<Response, ErrorResponse> {
        if req.uri().path() != path {
            return Err(refusal(StatusCode::NOT_FOUND, "no MQTT endpoint on this path"));
        }
        let offered = req
            .headers()
            .get_all("Sec-WebSocket-Protocol")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .find(|p| *p == "mqtt" || *p == "mqttv3.1");
        match offered {
            Some(p) => {
                resp.headers_mut().insert(
                    "Sec-WebSocket-Protocol",
                    HeaderValue::from_static(if p == "mqtt" { "mqtt" } else { "mqttv3.1" }),
                );
                Ok(resp)
            }
            None => Err(refusal(
                StatusCode::BAD_REQUEST,
                "[MQTT-6.0.0-3] the WebSocket subprotocol `mqtt` is required",
            )),
        }
    };
    // Room for a maximum-size packet plus the frame header.
    let limit = max_packet.saturating_add(16);
    let config = WebSocketConfig::default()
        .max_message_size(Some(limit))
        .max_frame_size(Some(limit));
    let capped = Capped {
        inner: stream,
        remaining: Some(MAX_REQUEST),
    };
    let handshake = tokio_tungstenite::accept_hdr_async_with_config(capped, check, Some(config));
    let mut ws = tokio::time::timeout(timeout, handshake)
        .await
        .map_err(|_| WsError::Timeout)??;
    ws.get_mut().remaining = None;
    Ok(WsStream::new(ws))
}

fn refusal(status: StatusCode, why: &str) -> ErrorResponse {
    let mut r = ErrorResponse::new(Some(why.to_string()));
    *r.status_mut() = status;
    r
}

/// A stream whose reads fail after `remaining` bytes, while it is `Some`.
#[derive(Debug)]
pub(crate) struct Capped<S> {
    inner: S,
    remaining: Option<usize>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Capped<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let Some(left) = this.remaining else {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        };
        if left == 0 {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "HTTP upgrade request too large",
            )));
        }
        // The handshake is the only time this runs: a small copy is fine.
        let mut chunk = [0u8; 2048];
        let want = left.min(buf.remaining()).min(chunk.len());
        let mut limited = ReadBuf::new(&mut chunk[..want]);
        ready!(Pin::new(&mut this.inner).poll_read(cx, &mut limited))?;
        let n = limited.filled().len();
        buf.put_slice(limited.filled());
        this.remaining = Some(left - n);
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Capped<S> {
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
