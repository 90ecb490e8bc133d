//! `tern trace CLIENT_ID`: a client's packets in and out, live, from the broker's HTTP
//! endpoint (`GET /api/v1/trace/CLIENT_ID`, server-sent events), one line per packet,
//! until Ctrl-C. The trace stops when this command does.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

use base64::Engine as _;

/// Options of `tern trace`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The client identifier to trace (it need not be connected yet).
    client_id: String,
    /// The broker's HTTP endpoint.
    #[arg(long, value_name = "URL", default_value = "http://127.0.0.1:18083")]
    http: String,
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
    let rest = args.http.strip_prefix("http://").ok_or_else(|| {
        format!(
            "--http {}: give an http:// URL (for https, use a local proxy)",
            args.http
        )
    })?;
    let hostport = rest.trim_end_matches('/');
    let mut stream = TcpStream::connect(hostport)
        .map_err(|e| format!("cannot reach the broker's HTTP endpoint at {hostport}: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .map_err(|e| e.to_string())?;
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
    stream.write_all(request.as_bytes()).map_err(|e| e.to_string())?;
    let mut reader = BufReader::new(stream);
    let mut status = String::new();
    reader.read_line(&mut status).map_err(|e| e.to_string())?;
    let code = status.split_whitespace().nth(1).unwrap_or("");
    if code != "200" {
        return Err(format!("the broker answered {}", status.trim()));
    }
    // Skip the headers.
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).map_err(|e| e.to_string())? == 0 || h.trim().is_empty() {
            break;
        }
    }
    let stdout = std::io::stdout();
    let mut event = String::new();
    for line in reader.lines() {
        let line = match line {
            Ok(l) => l,
            // The keep-alive comes every 10 s; a minute of silence is a dead connection.
            Err(e) => return Err(format!("trace stream: {e}")),
        };
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
