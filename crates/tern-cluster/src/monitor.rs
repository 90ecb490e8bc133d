//! The start-up guard: the NATS servers must be 2.11 or later and JetStream must fsync before
//! it acknowledges (`sync_interval: always`), which a NATS client cannot see: it is read from
//! each server's monitoring endpoint (`/varz`), or asserted by the operator.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::ClusterError;
use tern_broker::ClusterConfig;

/// Largest monitoring answer read.
const MAX_ANSWER: usize = 4 << 20;
/// Longest wait for one monitoring endpoint.
const MONITOR_TIMEOUT: Duration = Duration::from_secs(5);

/// Whether `version` (`2.11.0`, `v2.15.1`, `2.12.0-beta`) is at least 2.11.
pub fn version_ok(version: &str) -> bool {
    let v = version.trim_start_matches('v');
    let mut parts = v.split(['.', '-']).map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (major, minor) >= (2, 11)
}

/// Check what `config` says about fsync, against the monitoring endpoints when it names any:
/// every endpoint that answers must say `sync_always`, and more than half must answer.
/// Returns whether JetStream is known to fsync before acknowledging.
pub async fn check(
    config: &ClusterConfig,
    connected_version: &str,
    connected: &str,
) -> Result<bool, ClusterError> {
    if !version_ok(connected_version) {
        return Err(ClusterError::Version {
            server: connected.to_string(),
            version: connected_version.to_string(),
        });
    }
    if config.monitor.is_empty() {
        return match (config.nats_sync_always, config.unsafe_lazy_fsync) {
            (true, _) => Ok(true),
            (false, true) => Ok(false),
            (false, false) => Err(ClusterError::FsyncUnknown),
        };
    }
    let mut always = true;
    // A server may be down while a node starts (a rolling restart): the servers that answer
    // must all fsync, and a majority must answer.
    let mut unanswered = Vec::new();
    for url in &config.monitor {
        let s = match server(url).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("cluster start: {e}; checking the other servers");
                unanswered.push(e);
                continue;
            }
        };
        if !version_ok(&s.version) {
            return Err(ClusterError::Version {
                server: url.clone(),
                version: s.version,
            });
        }
        if !s.sync_always {
            if !config.unsafe_lazy_fsync {
                return Err(ClusterError::LazyFsync(format!("NATS server at {url}")));
            }
            always = false;
        }
    }
    if unanswered.len() * 2 >= config.monitor.len() {
        // Fewer than a majority answered: report the first that did not.
        if let Some(e) = unanswered.into_iter().next() {
            return Err(e);
        }
    }
    Ok(always)
}

/// What a NATS server's `/varz` says of what Tern needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Server {
    /// Its `server_name`.
    pub name: String,
    /// Its version.
    pub version: String,
    /// Whether JetStream fsyncs before acknowledging (`sync_interval: always`).
    pub sync_always: bool,
}

/// Read [`Server`] from the monitoring endpoint `base` (the start-up guard and `tern cluster
/// check`).
pub async fn server(base: &str) -> Result<Server, ClusterError> {
    let v = get_json(base, "/varz").await?;
    Ok(Server {
        name: v["server_name"].as_str().unwrap_or("?").to_string(),
        version: v["version"].as_str().unwrap_or("").to_string(),
        sync_always: v["jetstream"]["config"]["sync_always"].as_bool().unwrap_or(false),
    })
}

/// `/jsz` of the monitoring endpoint `base` (`tern cluster check`: the JetStream cluster size).
pub async fn jsz(base: &str) -> Result<serde_json::Value, ClusterError> {
    get_json(base, "/jsz").await
}

/// GET `path` from the monitoring endpoint `base` (`http://HOST:PORT`) as JSON.
async fn get_json(base: &str, path: &str) -> Result<serde_json::Value, ClusterError> {
    let fail = |why: String| ClusterError::Monitor {
        url: base.to_string(),
        why,
    };
    let host = base
        .strip_prefix("http://")
        .ok_or_else(|| fail("only http://HOST:PORT endpoints are supported".into()))?
        .trim_end_matches('/');
    let answer = tokio::time::timeout(MONITOR_TIMEOUT, async {
        let mut s = tokio::net::TcpStream::connect(host).await?;
        let req = format!("GET {path} HTTP/1.0\r\nHost: {host}\r\nAccept: application/json\r\n\r\n");
        s.write_all(req.as_bytes()).await?;
        let mut buf = Vec::new();
        (&mut s).take(MAX_ANSWER as u64).read_to_end(&mut buf).await?;
        Ok::<_, std::io::Error>(buf)
    })
    .await
    .map_err(|_| fail(format!("no answer within {MONITOR_TIMEOUT:?}")))?
    .map_err(|e| fail(e.to_string()))?;
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    let body_at = match resp.parse(&answer) {
        Ok(httparse::Status::Complete(n)) => n,
        _ => return Err(fail("not an HTTP answer".into())),
    };
    if resp.code != Some(200) {
        return Err(fail(format!("{path} answered HTTP {:?}", resp.code)));
    }
    serde_json::from_slice(&answer[body_at..]).map_err(|e| fail(format!("{path}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::version_ok;

    #[test]
    fn versions_from_2_11_on_are_accepted() {
        for v in ["2.11.0", "v2.15.1", "2.12.0-beta.1", "3.0.0"] {
            assert!(version_ok(v), "{v}");
        }
        for v in ["2.10.25", "v2.9.10", "", "x"] {
            assert!(!version_ok(v), "{v}");
        }
    }
}
