//! MQTT over WebSocket (`ws://`, `wss://`; MQTT 5.0 section 6): the HTTP upgrade
//! offering the `mqtt` subprotocol ([MQTT-6.0.0-3]), then [`WsStream`], a byte
//! stream over binary messages: each write is one binary message ([MQTT-6.0.0-1]);
//! reads concatenate messages, so packets may span messages or share one
//! ([MQTT-6.0.0-2]). A text message from the server is an error.

use std::io;

use tern_ws::WsStream;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

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
    Ok(Box::new(WsStream::new(ws)))
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
