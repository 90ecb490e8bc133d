//! A small HTTP/1.1 client for the authentication services: the JWKS of the JWT source and
//! the HTTP hook. It does what those need and nothing more: GET and POST with a
//! `Content-Length` body, answers delimited by `Content-Length`, chunked encoding or the
//! end of the connection, `http://` and `https://` (rustls, the system's roots or a
//! given CA), and keep-alive connections kept in a bounded pool.
//!
//! Why not hyper or reqwest: they would add some thirty crates to the broker's build for
//! two kinds of request to one or two services; the parsing is `httparse`'s, which the
//! WebSocket listener already uses.
//!
//! Every request runs under its timeout (connecting included). A request sent on a
//! pooled connection that the service had closed meanwhile (no byte of an answer) is sent
//! again once on a fresh connection.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest answer head and body accepted.
const MAX_HEAD: usize = 16 * 1024;
const MAX_BODY: usize = 1 << 20;

/// Where requests go: scheme, host, port and path of a URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    tls: bool,
    host: String,
    port: u16,
    path: String,
}

impl Target {
    /// Parse `http://host[:port][/path]` or `https://...` (IPv6 hosts in brackets).
    pub fn parse(url: &str) -> Result<Target, String> {
        let (tls, rest) = if let Some(r) = url.strip_prefix("http://") {
            (false, r)
        } else if let Some(r) = url.strip_prefix("https://") {
            (true, r)
        } else {
            return Err(format!("{url:?} is not an http:// or https:// URL"));
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.contains('@') {
            return Err(format!("{url:?}: user information in the URL is not supported"));
        }
        let default_port = if tls { 443 } else { 80 };
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or_else(|| format!("{url:?}: unclosed `[`"))?;
            let port = match after.strip_prefix(':') {
                Some(p) => p.parse().map_err(|_| format!("{url:?}: bad port"))?,
                None if after.is_empty() => default_port,
                None => return Err(format!("{url:?}: bad authority")),
            };
            (h.to_string(), port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (
                    h.to_string(),
                    p.parse().map_err(|_| format!("{url:?}: bad port"))?,
                ),
                None => (authority.to_string(), default_port),
            }
        };
        if host.is_empty() {
            return Err(format!("{url:?}: no host"));
        }
        Ok(Target {
            tls,
            host,
            port,
            path: path.to_string(),
        })
    }

    /// The URL again, for logs.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        if self.host.contains(':') {
            format!("{scheme}://[{}]:{}{}", self.host, self.port, self.path)
        } else {
            format!("{scheme}://{}:{}{}", self.host, self.port, self.path)
        }
    }

    fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// An answer.
#[derive(Debug, Clone)]
pub(crate) struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

/// Why a request got no answer.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HttpError {
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("bad answer: {0}")]
    Protocol(String),
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

struct Conn {
    io: Box<dyn Io>,
    buf: BytesMut,
}

/// A client for one or more services, with a pool of idle connections per target.
pub(crate) struct HttpClient {
    timeout: Duration,
    max_idle: usize,
    idle: Mutex<Vec<(Target, Conn)>>,
    tls: Option<tokio_rustls::TlsConnector>,
    tls_error: Option<String>,
}

impl std::fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpClient")
            .field("timeout", &self.timeout)
            .field("max_idle", &self.max_idle)
            .finish_non_exhaustive()
    }
}

fn tls_connector(ca_file: Option<&std::path::Path>) -> Result<tokio_rustls::TlsConnector, String> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let pem = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
            for c in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
                let c = c.map_err(|e| format!("{}: {e}", path.display()))?;
                roots.add(c).map_err(|e| format!("{}: {e}", path.display()))?;
            }
        }
        None => {
            for c in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(c);
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

impl HttpClient {
    /// A client whose requests time out after `timeout` and which keeps at most `max_idle`
    /// idle connections. `https://` targets are verified against `ca_file` or the system's roots.
    pub fn new(timeout: Duration, max_idle: usize, ca_file: Option<&std::path::Path>) -> HttpClient {
        let (tls, tls_error) = match tls_connector(ca_file) {
            Ok(c) => (Some(c), None),
            Err(e) => (None, Some(e)),
        };
        HttpClient {
            timeout,
            max_idle,
            idle: Mutex::new(Vec::new()),
            tls,
            tls_error,
        }
    }

    /// GET the target.
    pub async fn get(&self, target: &Target) -> Result<Response, HttpError> {
        self.request(target, "GET", None).await
    }

    /// POST a JSON body to the target.
    pub async fn post_json(&self, target: &Target, body: &[u8]) -> Result<Response, HttpError> {
        self.request(target, "POST", Some(body)).await
    }

    /// Idle connections in the pool now.
    #[cfg_attr(not(test), allow(dead_code, reason = "for tests"))]
    pub fn idle(&self) -> usize {
        self.idle.lock().map_or(0, |v| v.len())
    }

    async fn request(
        &self,
        target: &Target,
        method: &str,
        body: Option<&[u8]>,
    ) -> Result<Response, HttpError> {
        let mut head = format!(
            "{method} {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: tern\r\nAccept: application/json\r\n",
            target.path,
            target.authority()
        );
        if let Some(b) = body {
            head.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                b.len()
            ));
        }
        head.push_str("\r\n");
        let mut wire = head.into_bytes();
        wire.extend_from_slice(body.unwrap_or_default());
        let attempt = async {
            if let Some(conn) = self.take_idle(target) {
                match exchange(conn, &wire).await {
                    Ok((r, keep)) => {
                        self.put_idle(target, keep);
                        return Ok(r);
                    }
                    // The service closed the idle connection: once more on a new one.
                    Err((HttpError::Io(_), true)) => {}
                    Err((e, _)) => return Err(e),
                }
            }
            let conn = self.open(target).await?;
            match exchange(conn, &wire).await {
                Ok((r, keep)) => {
                    self.put_idle(target, keep);
                    Ok(r)
                }
                Err((e, _)) => Err(e),
            }
        };
        tokio::time::timeout(self.timeout, attempt)
            .await
            .map_err(|_| HttpError::Timeout(self.timeout))?
    }

    fn take_idle(&self, target: &Target) -> Option<Conn> {
        let mut idle = self.idle.lock().ok()?;
        let i = idle.iter().rposition(|(t, _)| t == target)?;
        Some(idle.swap_remove(i).1)
    }

    fn put_idle(&self, target: &Target, conn: Option<Conn>) {
        let Some(conn) = conn else { return };
        if let Ok(mut idle) = self.idle.lock() {
            if idle.len() < self.max_idle {
                idle.push((target.clone(), conn));
            }
        }
    }

    async fn open(&self, target: &Target) -> Result<Conn, HttpError> {
        let tcp = TcpStream::connect((target.host.as_str(), target.port)).await?;
        let _ = tcp.set_nodelay(true);
        let io: Box<dyn Io> = if target.tls {
            let Some(tls) = &self.tls else {
                return Err(HttpError::Protocol(format!(
                    "no TLS configuration: {}",
                    self.tls_error.as_deref().unwrap_or("unknown error")
                )));
            };
            let name = rustls::pki_types::ServerName::try_from(target.host.clone())
                .map_err(|e| HttpError::Protocol(e.to_string()))?;
            Box::new(tls.connect(name, tcp).await?)
        } else {
            Box::new(tcp)
        };
        Ok(Conn {
            io,
            buf: BytesMut::with_capacity(1024),
        })
    }
}

/// Write a request and read its answer. Returns the connection when it may be used again.
/// On failure, the flag says whether nothing of an answer had arrived (a stale pooled
/// connection, worth a second try).
async fn exchange(mut conn: Conn, wire: &[u8]) -> Result<(Response, Option<Conn>), (HttpError, bool)> {
    if let Err(e) = async {
        conn.io.write_all(wire).await?;
        conn.io.flush().await
    }
    .await
    {
        return Err((e.into(), true));
    }
    conn.buf.clear();
    // The head.
    let (status, head_len, length, chunked, close) = loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        match resp.parse(&conn.buf) {
            Ok(httparse::Status::Complete(n)) => {
                let status = resp.code.unwrap_or(0);
                let mut length = None;
                let mut chunked = false;
                let mut close = resp.version == Some(0);
                for h in resp.headers.iter() {
                    let v = String::from_utf8_lossy(h.value);
                    if h.name.eq_ignore_ascii_case("content-length") {
                        length = Some(
                            v.trim()
                                .parse::<usize>()
                                .map_err(|_| (HttpError::Protocol("bad Content-Length".into()), false))?,
                        );
                    } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                        chunked = v.to_ascii_lowercase().contains("chunked");
                    } else if h.name.eq_ignore_ascii_case("connection") {
                        let v = v.to_ascii_lowercase();
                        close = v.contains("close") || (close && !v.contains("keep-alive"));
                    }
                }
                break (status, n, length, chunked, close);
            }
            Ok(httparse::Status::Partial) => {
                if conn.buf.len() > MAX_HEAD {
                    return Err((HttpError::Protocol("answer head too large".into()), false));
                }
                let fresh = conn.buf.is_empty();
                match conn.io.read_buf(&mut conn.buf).await {
                    Ok(0) => return Err((HttpError::Io(std::io::ErrorKind::UnexpectedEof.into()), fresh)),
                    Ok(_) => {}
                    Err(e) => return Err((e.into(), fresh)),
                }
            }
            Err(e) => return Err((HttpError::Protocol(format!("not HTTP: {e}")), false)),
        }
    };
    conn.buf.advance(head_len);
    let fail = |e: HttpError| (e, false);
    let body = if chunked {
        read_chunked(&mut conn).await.map_err(fail)?
    } else if let Some(n) = length {
        if n > MAX_BODY {
            return Err(fail(HttpError::Protocol("answer body too large".into())));
        }
        fill(&mut conn, n).await.map_err(fail)?;
        conn.buf.split_to(n).to_vec()
    } else if status == 204 || status == 304 || (100..200).contains(&status) {
        Vec::new()
    } else {
        // Delimited by the end of the connection.
        loop {
            if conn.buf.len() > MAX_BODY {
                return Err(fail(HttpError::Protocol("answer body too large".into())));
            }
            match conn.io.read_buf(&mut conn.buf).await {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => return Err(fail(e.into())),
            }
        }
        let body = conn.buf.split().to_vec();
        return Ok((Response { status, body }, None));
    };
    let keep = (!close && conn.buf.is_empty()).then_some(conn);
    Ok((Response { status, body }, keep))
}

/// Read until `n` bytes are buffered.
async fn fill(conn: &mut Conn, n: usize) -> Result<(), HttpError> {
    while conn.buf.len() < n {
        if conn.io.read_buf(&mut conn.buf).await? == 0 {
            return Err(HttpError::Protocol("connection closed in the answer body".into()));
        }
    }
    Ok(())
}

/// The body of a chunked answer (trailers skipped).
async fn read_chunked(conn: &mut Conn) -> Result<Vec<u8>, HttpError> {
    let mut body = Vec::new();
    loop {
        let line = read_line(conn).await?;
        let size_text = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| HttpError::Protocol(format!("bad chunk size {size_text:?}")))?;
        if size == 0 {
            // Trailers, up to the empty line.
            while !read_line(conn).await?.is_empty() {}
            return Ok(body);
        }
        if body.len() + size > MAX_BODY {
            return Err(HttpError::Protocol("answer body too large".into()));
        }
        fill(conn, size + 2).await?;
        body.extend_from_slice(&conn.buf[..size]);
        if &conn.buf[size..size + 2] != b"\r\n" {
            return Err(HttpError::Protocol("chunk not followed by CRLF".into()));
        }
        conn.buf.advance(size + 2);
    }
}

async fn read_line(conn: &mut Conn) -> Result<String, HttpError> {
    loop {
        if let Some(i) = conn.buf.windows(2).position(|w| w == b"\r\n") {
            let line = String::from_utf8_lossy(&conn.buf[..i]).into_owned();
            conn.buf.advance(i + 2);
            return Ok(line);
        }
        if conn.buf.len() > MAX_HEAD {
            return Err(HttpError::Protocol("chunk line too long".into()));
        }
        if conn.io.read_buf(&mut conn.buf).await? == 0 {
            return Err(HttpError::Protocol("connection closed in a chunked body".into()));
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn urls() {
        let t = Target::parse("http://127.0.0.1:8080/auth").unwrap();
        assert_eq!(
            (t.tls, t.host.as_str(), t.port, t.path.as_str()),
            (false, "127.0.0.1", 8080, "/auth")
        );
        let t = Target::parse("https://auth.example.com/.well-known/jwks.json").unwrap();
        assert_eq!((t.tls, t.port), (true, 443));
        let t = Target::parse("http://[::1]:9/x").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("::1", 9));
        assert_eq!(t.url(), "http://[::1]:9/x");
        assert_eq!(Target::parse("http://h").unwrap().path, "/");
        for bad in ["ftp://x", "http://", "http://h:port/", "http://u@h/"] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
    }

    /// A scripted server: answers each request with the next canned bytes.
    async fn serve(answers: Vec<&'static [u8]>) -> (std::net::SocketAddr, tokio::task::JoinHandle<usize>) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let mut accepted = 0;
            let mut answers = answers.into_iter().peekable();
            'conns: while let Ok((mut s, _)) = l.accept().await {
                accepted += 1;
                let mut buf = Vec::new();
                loop {
                    let mut b = [0u8; 4096];
                    let n = s.read(&mut b).await.unwrap_or(0);
                    if n == 0 {
                        continue 'conns;
                    }
                    buf.extend_from_slice(&b[..n]);
                    // One request per read is enough for these tests (small heads and bodies).
                    buf.clear();
                    match answers.next() {
                        Some(a) => s.write_all(a).await.unwrap(),
                        None => break 'conns,
                    }
                    if answers.peek().is_none() {
                        break 'conns;
                    }
                }
            }
            accepted
        });
        (addr, task)
    }

    #[tokio::test]
    async fn lengths_chunks_close_and_keep_alive() {
        let (addr, task) = serve(vec![
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n",
            b"HTTP/1.1 403 Forbidden\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
        ])
        .await;
        let c = HttpClient::new(Duration::from_secs(2), 4, None);
        let t = Target::parse(&format!("http://{addr}/a")).unwrap();
        let r = c.post_json(&t, b"{}").await.unwrap();
        assert_eq!((r.status, &r.body[..]), (200, &b"hello"[..]));
        assert_eq!(c.idle(), 1);
        let r = c.get(&t).await.unwrap();
        assert_eq!((r.status, &r.body[..]), (200, &b"abcde"[..]));
        let r = c.get(&t).await.unwrap();
        assert_eq!(r.status, 403);
        assert_eq!(c.idle(), 0, "Connection: close is not pooled");
        drop(c);
        // Three requests on one connection.
        assert_eq!(task.await.unwrap(), 1);
    }

    #[tokio::test]
    async fn garbage_and_silence_are_errors() {
        let (addr, _task) = serve(vec![b"SSH-2.0-OpenSSH\r\n\r\n"]).await;
        let c = HttpClient::new(Duration::from_millis(300), 4, None);
        let t = Target::parse(&format!("http://{addr}/")).unwrap();
        assert!(matches!(c.get(&t).await, Err(HttpError::Protocol(_))));
        // A listener that never answers.
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let t = Target::parse(&format!("http://{}/", l.local_addr().unwrap())).unwrap();
        assert!(matches!(c.get(&t).await, Err(HttpError::Timeout(_))));
    }
}
