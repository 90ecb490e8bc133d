//! `tern cluster check`: what a Tern cluster needs from the NATS side, and whether it holds,
//! without starting a node or changing anything on NATS (no stream is created).

use std::time::Duration;

use async_nats::jetstream;

use crate::{connect_options, monitor, streams};
use tern_broker::ClusterConfig;

/// One requirement and what was found.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Finding {
    /// The requirement, in a few words.
    pub need: String,
    /// Whether it holds.
    pub ok: bool,
    /// What was found (the values, or why it could not be checked).
    pub found: String,
}

fn finding(need: &str, ok: bool, found: impl Into<String>) -> Finding {
    Finding {
        need: need.to_string(),
        ok,
        found: found.into(),
    }
}

/// Check every requirement against the NATS servers of `config` (its credentials and TLS
/// included). A requirement that cannot be checked is reported as not holding, with the
/// reason; the checks go on where they can.
pub async fn check(config: &ClusterConfig) -> Vec<Finding> {
    let mut out = Vec::new();
    if let Err(e) = config.validate() {
        out.push(finding("a valid [cluster] table", false, e));
        return out;
    }
    if config.nats.is_empty() {
        out.push(finding(
            "NATS server URLs",
            false,
            "none: give --cluster URLS or cluster.nats",
        ));
        return out;
    }
    let urls = config.nats.join(",");
    let options = match connect_options(config) {
        Ok(o) => o,
        Err(e) => {
            out.push(finding("credentials and TLS files", false, e.to_string()));
            return out;
        }
    };
    let client = match options
        .name("tern cluster check")
        .connection_timeout(Duration::from_secs(5))
        .connect(config.nats.as_slice())
        .await
    {
        Ok(c) => c,
        Err(e) => {
            out.push(finding(
                "a NATS server accepts the connection",
                false,
                format!("{urls}: {e}"),
            ));
            return out;
        }
    };
    let info = client.server_info();
    out.push(finding(
        "a NATS server accepts the connection",
        true,
        format!("{} at {}:{}", info.server_name, info.host, info.port),
    ));
    out.push(finding(
        "NATS 2.11 or later",
        monitor::version_ok(&info.version),
        format!("{} runs {}", info.server_name, info.version),
    ));

    // The monitoring endpoints: version and fsync of every server.
    if config.monitor.is_empty() {
        let (ok, found) = match (config.nats_sync_always, config.unsafe_lazy_fsync) {
            (true, _) => (
                true,
                "not visible without cluster.monitor; asserted by cluster.nats_sync_always",
            ),
            (false, true) => (true, "not checked: cluster.unsafe_lazy_fsync = true"),
            (false, false) => (
                false,
                "not visible: give cluster.monitor, or assert cluster.nats_sync_always",
            ),
        };
        out.push(finding(
            "JetStream fsyncs before acknowledging (sync_interval: always)",
            ok,
            found,
        ));
    } else {
        let mut servers = Vec::new();
        let mut all_sync = true;
        let mut all_versions = true;
        let mut answered = 0usize;
        for url in &config.monitor {
            match monitor::server(url).await {
                Ok(s) => {
                    answered += 1;
                    all_sync &= s.sync_always;
                    all_versions &= monitor::version_ok(&s.version);
                    servers.push(format!("{} {} sync_always={}", s.name, s.version, s.sync_always));
                }
                Err(e) => servers.push(format!("{url}: {e}")),
            }
        }
        let majority = answered * 2 > config.monitor.len();
        out.push(finding(
            "a majority of the monitoring endpoints answer",
            majority,
            format!("{answered} of {}", config.monitor.len()),
        ));
        out.push(finding(
            "every server runs NATS 2.11 or later",
            all_versions && answered > 0,
            servers.join("; "),
        ));
        let fsync_ok = (all_sync && answered > 0) || config.unsafe_lazy_fsync;
        let found = match (all_sync, config.unsafe_lazy_fsync) {
            (false, true) => "not on every server; allowed by cluster.unsafe_lazy_fsync".to_string(),
            _ => format!(
                "{} of the servers that answered",
                if all_sync { "all" } else { "not all" }
            ),
        };
        out.push(finding(
            "JetStream fsyncs before acknowledging (sync_interval: always)",
            fsync_ok,
            found,
        ));
        // Enough servers for the copies each stream keeps.
        let mut size = None;
        for url in &config.monitor {
            if let Ok(v) = monitor::jsz(url).await {
                size = Some(v["meta_cluster"]["cluster_size"].as_u64().unwrap_or(1));
                break;
            }
        }
        let need = "JetStream has at least cluster.replicas servers";
        match size {
            Some(n) => out.push(finding(
                need,
                n >= u64::from(config.replicas),
                format!("{n} servers, cluster.replicas = {}", config.replicas),
            )),
            None => out.push(finding(need, false, "no monitoring endpoint answered /jsz")),
        }
    }

    // JetStream and its cluster size.
    let js = jetstream::new(client.clone());
    match js.query_account().await {
        Ok(a) => out.push(finding(
            "JetStream is enabled for this account",
            true,
            format!("{} streams, {} consumers", a.streams, a.consumers),
        )),
        Err(e) => {
            out.push(finding(
                "JetStream is enabled for this account",
                false,
                e.to_string(),
            ));
            return out;
        }
    }
    // Every stream the cluster uses, if it exists, must have the configured replicas.
    let mut existing = Vec::new();
    let mut wrong = Vec::new();
    let names: Vec<String> = (0..config.shards)
        .map(|k| streams::stream_name(&config.prefix, k))
        .chain([
            format!("KV_{}", streams::retain_bucket(&config.prefix)),
            format!("KV_{}", streams::wills_bucket(&config.prefix)),
        ])
        .chain(
            streams::sessions_buckets(&config.prefix, config.session_buckets)
                .into_iter()
                .map(|b| format!("KV_{b}")),
        )
        .collect();
    for name in &names {
        if let Ok(mut s) = js.get_stream(name).await {
            match s.info().await {
                Ok(i) if i.config.num_replicas == usize::from(config.replicas) => existing.push(name.clone()),
                Ok(i) => wrong.push(format!("{name} has {} replicas", i.config.num_replicas)),
                Err(e) => wrong.push(format!("{name}: {e}")),
            }
        }
    }
    if let Err(e) = crate::sessions::check_layout(&js, &config.prefix, config.session_buckets).await {
        wrong.push(e.to_string());
    }
    let found = match (existing.is_empty(), wrong.is_empty()) {
        (_, false) => format!("{}; cluster.replicas is {}", wrong.join(", "), config.replicas),
        (true, true) => format!(
            "none yet: the first node creates {} with {} replicas",
            names.join(", "),
            config.replicas
        ),
        (false, true) => format!("{} with {} replicas", existing.join(", "), config.replicas),
    };
    out.push(finding(
        "the cluster's streams match cluster.shards, cluster.session_buckets and cluster.replicas",
        wrong.is_empty(),
        found,
    ));
    out
}
