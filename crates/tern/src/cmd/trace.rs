//! `tern trace CLIENT_ID`: a client's packets in and out, live, from the broker's HTTP
//! endpoint (`GET /api/v1/trace/CLIENT_ID`, server-sent events), one line per packet,
//! until Ctrl-C. The trace stops when this command does. `--http` may be an `https://` URL
//! (the broker's `[http]` with `cert` and `key`); `--cafile` names the CA to trust.

use std::io::Write;
use std::time::Duration;

use tern_client::transport::{Connector, Endpoint, Scheme, TlsConnector, TlsOptions, Transport};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use base64::Engine as _;

/// Options of `tern trace`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The client identifier to trace (it need not be connected yet).
    client_id: String,
    /// The broker's HTTP endpoint (http:// or https://).
    #[arg(long, value_name = "URL", default_value = "http://127.0.0.1:18083")]
    http: String,
    /// HTTPS: trust the CA certificates of this PEM file (default: the system's).
    #[arg(long, value_name = "FILE")]
    cafile: Option<std::path::PathBuf>,
    /// Bearer token (or TERN_HTTP_TOKEN).
    #[arg(long, env = "TERN_HTTP_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// User of `http.admins`, with --password (or TERN_HTTP_PASSWORD).
    #[arg(long, short = 'u', requires = "password")]
    user: Option<String>,
    /// The user's password.
    #[arg(long, short = 'P', env = "TERN_HTTP_PASSWORD", hide_env_values = true)]
    password: Option<String>,
}

/// Percent-encode a path segment.
fn encode_segment(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// One line for a packet event (the JSON of `tern_admin`'s trace stream).
pub fn format_event(v: &serde_json::Value) -> String {
    let ms = v["at"].as_u64().unwrap_or(0);
    let secs = ms / 1000;
    let mut line = format!(
        "{:02}:{:02}:{:02}.{:03} {:<3} {}",
        (secs / 3600) % 24,
        (secs / 60) % 60,
        secs % 60,
        ms % 1000,
        v["direction"].as_str().unwrap_or("?"),
        v["type"].as_str().unwrap_or("?")
    );
    if let Some(id) = v["packet_id"].as_u64() {
        line.push_str(&format!(" id={id}"));
    }
    if let Some(q) = v["qos"].as_u64() {
        line.push_str(&format!(" qos={q}"));
    }
    if let Some(t) = v["topic"].as_str() {
        line.push_str(&format!(" topic={t}"));
    }
    if let Some(rc) = v["reason_codes"].as_array().filter(|a| !a.is_empty()) {
        let codes: Vec<String> = rc
            .iter()
            .filter_map(|c| c.as_u64())
            .map(|c| format!("0x{c:02X}"))
            .collect();
        line.push_str(&format!(" reason={}", codes.join(",")));
    }
    line.push_str(&format!(" size={}", v["size"].as_u64().unwrap_or(0)));
    if let Some(n) = v["payload_size"].as_u64() {
        let preview = &v["payload_preview"];
        let shown = match (preview["text"].as_str(), preview["base64"].as_str()) {
            (Some(t), _) => format!("{t:?}"),
            (None, Some(b)) => base64::engine::general_purpose::STANDARD
                .decode(b)
                .map(|bytes| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>())
                .unwrap_or_default(),
            _ => String::new(),
        };
        line.push_str(&format!(" payload({n})={shown}"));
    }
    line
}

/// Run until the stream ends or the process is interrupted.
pub fn run(args: Args) -> Result<(), String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?
        .block_on(trace(args))
}

/// Open the connection `url` names: (stream, `host:port` for the Host header).
async fn open(url: &str, cafile: Option<&std::path::Path>) -> Result<(Box<dyn Transport>, String), String> {
    let (tls, rest) = match (url.strip_prefix("http://"), url.strip_prefix("https://")) {
        (Some(r), _) => (false, r),
        (_, Some(r)) => (true, r),
        _ => return Err(format!("--http {url}: give an http:// or https:// URL")),
    };
    let hostport = rest.split('/').next().unwrap_or_default().to_string();
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) if !p.contains(']') => {
            (h, p.parse().map_err(|_| format!("--http {url}: bad port {p:?}"))?)
        }
        _ => (hostport.as_str(), if tls { 443 } else { 80 }),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']').to_string();
    let unreachable =
        |e: std::io::Error| format!("cannot reach the broker's HTTP endpoint at {hostport}: {e}");
    let stream: Box<dyn Transport> = if tls {
        let mut options = TlsOptions::new().alpn(&["http/1.1"]);
        if let Some(ca) = cafile {
            options = options.ca_file(ca);
        }
        let connector = TlsConnector::new(&options).map_err(|e| e.to_string())?;
        let endpoint = Endpoint {
            scheme: Scheme::Mqtts,
            host,
            port,
            path: "/".into(),
            username: None,
            password: None,
        };
        connector.connect(&endpoint).await.map_err(unreachable)?
    } else {
        Box::new(
            tokio::net::TcpStream::connect((host.as_str(), port))
                .await
                .map_err(unreachable)?,
        )
    };
    Ok((stream, hostport))
}

type Lines = tokio::io::Lines<BufReader<Box<dyn Transport>>>;

/// The next line of the stream. The keep-alive comes every 10 s: a minute of silence is a
/// dead connection.
async fn next(lines: &mut Lines) -> Result<Option<String>, String> {
    match tokio::time::timeout(Duration::from_secs(60), lines.next_line()).await {
        Ok(r) => r.map_err(|e| format!("trace stream: {e}")),
        Err(_) => Err("trace stream: nothing for 60 s".to_string()),
    }
}

async fn trace(args: Args) -> Result<(), String> {
    let (mut stream, hostport) = open(&args.http, args.cafile.as_deref()).await?;
    let auth = match (&args.token, &args.user, &args.password) {
        (Some(t), _, _) => format!("Authorization: Bearer {t}\r\n"),
        (None, Some(u), Some(p)) => format!(
            "Authorization: Basic {}\r\n",
            base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
        ),
        _ => String::new(),
    };
    // HTTP/1.0: the body is the rest of the connection, no chunked framing.
    let request = format!(
        "GET /api/v1/trace/{} HTTP/1.0\r\nHost: {hostport}\r\nAccept: text/event-stream\r\n{auth}\r\n",
        encode_segment(&args.client_id)
    );
    let io = |e: std::io::Error| format!("trace stream: {e}");
    stream.write_all(request.as_bytes()).await.map_err(io)?;
    stream.flush().await.map_err(io)?;
    let mut lines = BufReader::new(stream).lines();
    let status = next(&mut lines).await?.unwrap_or_default();
    let code = status.split_whitespace().nth(1).unwrap_or("");
    if code != "200" {
        return Err(format!("the broker answered {}", status.trim()));
    }
    // Skip the headers.
    while let Some(h) = next(&mut lines).await? {
        if h.trim().is_empty() {
            break;
        }
    }
    let stdout = std::io::stdout();
    let mut event = String::new();
    while let Some(line) = next(&mut lines).await? {
        if let Some(name) = line.strip_prefix("event:") {
            event = name.trim().to_string();
        } else if let Some(data) = line.strip_prefix("data:") {
            let v: serde_json::Value = serde_json::from_str(data.trim()).unwrap_or_default();
            let mut out = stdout.lock();
            let _ = match event.as_str() {
                "started" => writeln!(out, "tracing {} (Ctrl-C to stop)", args.client_id),
                "lagged" => writeln!(out, "... {} packets not shown (too fast)", v["lost"]),
                _ => writeln!(out, "{}", format_event(&v)),
            };
            let _ = out.flush();
        }
    }
    Ok(())
}
