//! Plain TCP (`mqtt://`).

use tokio::net::TcpStream;

use super::{ConnectFuture, Connector, Endpoint, Transport};

/// Opens TCP connections with Nagle's algorithm off.
#[derive(Debug, Clone, Copy, Default)]
pub struct TcpConnector;

impl Connector for TcpConnector {
    fn connect<'a>(&'a self, endpoint: &'a Endpoint) -> ConnectFuture<'a> {
        Box::pin(async move {
            let stream = TcpStream::connect((endpoint.host.as_str(), endpoint.port)).await?;
            stream.set_nodelay(true)?;
            Ok(Box::new(stream) as Box<dyn Transport>)
        })
    }
}
