//! MQTT over WebSocket (`ws://`, `wss://`; MQTT 5.0 section 6): the HTTP upgrade
//! offering the `mqtt` subprotocol ([MQTT-6.0.0-3]), then [`WsStream`], a byte
//! stream over binary messages: each write is one binary message ([MQTT-6.0.0-1]);
//! reads concatenate messages, so packets may span messages or share one
//! ([MQTT-6.0.0-2]). A text message from the server is an error.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes};
use futures_core::Stream;
use futures_sink::Sink;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::tls::{TlsConnector, TlsOptions};
use super::{ConnectFuture, Connector, Endpoint, Transport};
use crate::ClientError;

/// Opens WebSocket connections, over TCP (`ws://`) or TLS (`wss://`).
#[derive(Debug, Clone)]
pub struct WsConnector {
    tls: Option<TlsConnector>,
}

impl WsConnector {
    /// Plain WebSocket (`ws://`).
    pub fn plain() -> WsConnector {
        WsConnector { tls: None }
    }

    /// WebSocket over TLS (`wss://`).
    pub fn tls(options: &TlsOptions) -> Result<WsConnector, ClientError> {
        Ok(WsConnector {
            tls: Some(options.build(b"http/1.1")?),
        })
    }
}

fn other(e: impl std::error::Error + Send + Sync + 'static) -> io::Error {
    io::Error::other(e)
}

async fn upgrade<S>(stream: S, endpoint: &Endpoint, secure: bool) -> io::Result<Box<dyn Transport>>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let host = if endpoint.host.contains(':') {
        format!("[{}]", endpoint.host)
    } else {
        endpoint.host.clone()
    };
    let scheme = if secure { "wss" } else { "ws" };
    let url = format!("{scheme}://{host}:{}{}", endpoint.port, endpoint.path);
    let mut request = url.into_client_request().map_err(other)?;
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", HeaderValue::from_static("mqtt"));
    let (ws, response) = tokio_tungstenite::client_async(request, stream)
        .await
        .map_err(other)?;
    let chosen = response
        .headers()
        .get("Sec-WebSocket-Protocol")
        .and_then(|v| v.to_str().ok());
    if chosen != Some("mqtt") {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "[MQTT-6.0.0-4] the server did not select the WebSocket subprotocol `mqtt`",
        ));
    }
    Ok(Box::new(WsStream {
        ws,
        pending: Bytes::new(),
    }))
}

impl Connector for WsConnector {
    fn connect<'a>(&'a self, endpoint: &'a Endpoint) -> ConnectFuture<'a> {
        Box::pin(async move {
            match &self.tls {
                Some(tls) => upgrade(tls.open(endpoint).await?, endpoint, true).await,
                None => {
                    let tcp = TcpStream::connect((endpoint.host.as_str(), endpoint.port)).await?;
                    tcp.set_nodelay(true)?;
                    upgrade(tcp, endpoint, false).await
                }
            }
        })
    }
}

/// MQTT bytes over a WebSocket.
struct WsStream<S> {
    ws: WebSocketStream<S>,
    pending: Bytes,
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if !this.pending.is_empty() {
                let n = this.pending.len().min(buf.remaining());
                buf.put_slice(&this.pending[..n]);
                this.pending.advance(n);
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut this.ws).poll_next(cx)) {
                None | Some(Ok(Message::Close(_))) => return Poll::Ready(Ok(())),
                Some(Ok(Message::Binary(data))) => this.pending = data,
                Some(Ok(Message::Text(_))) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "[MQTT-6.0.0-1] text WebSocket message from the server",
                    )))
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Poll::Ready(Err(other(e))),
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsStream<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        ready!(Sink::<Message>::poll_ready(Pin::new(&mut self.ws), cx)).map_err(other)?;
        Pin::new(&mut self.ws)
            .start_send(Message::Binary(Bytes::copy_from_slice(buf)))
            .map_err(other)?;
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Sink::<Message>::poll_flush(Pin::new(&mut self.ws), cx).map_err(other)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Sink::<Message>::poll_close(Pin::new(&mut self.ws), cx).map_err(other)
    }
}
