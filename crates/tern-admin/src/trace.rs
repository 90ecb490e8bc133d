//! Live streams as server-sent events, until the reader goes away (which stops them):
//! - `GET /api/v1/trace/{client_id}`: the client's packets, one JSON object per `packet`
//!   event (the client need not be connected yet);
//! - `GET /api/v1/watch?filter=F`: the messages routed on topics matching F, one JSON
//!   object per (unnamed) event.
//!
//! A reader that falls behind gets a `lagged` event with the count lost.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use axum::extract::{Path, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::Extension;
use base64::Engine as _;
use serde_json::json;
use tern_broker::trace::{Direction, TraceEvent, TraceItem};
use tern_broker::watch::WatchItem;

use crate::auth::Who;
use crate::AppState;

/// One trace event as JSON (the shape `tern trace` and the dashboard read).
pub fn event_json(e: &TraceEvent) -> serde_json::Value {
    let preview = e.payload_preview.as_ref().map(|p| match std::str::from_utf8(p) {
        Ok(t) => json!({ "text": t }),
        Err(_) => json!({ "base64": base64::engine::general_purpose::STANDARD.encode(p) }),
    });
    json!({
        "at": e.at.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0),
        "direction": match e.direction { Direction::In => "in", Direction::Out => "out" },
        "type": e.packet_type,
        "packet_id": e.packet_id,
        "qos": e.qos,
        "topic": e.topic,
        "reason_codes": e.reason_codes,
        "size": e.size,
        "payload_size": e.payload_size,
        "payload_preview": preview,
    })
}

/// The SSE stream of one client's packets.
pub async fn stream(
    State(st): State<Arc<AppState>>,
    Extension(who): Extension<Who>,
    Path(client_id): Path<String>,
) -> Sse<impl futures_core::Stream<Item = Result<Event, Infallible>>> {
    tracing::info!(who = %who.0, client_id, "admin API: trace started");
    let rx = st.admin.trace(&client_id);
    let first = Some(
        Event::default()
            .event("started")
            .data(json!({ "client_id": client_id }).to_string()),
    );
    let s = futures_util::stream::unfold((rx, first), |(mut rx, first)| async move {
        if let Some(ev) = first {
            return Some((Ok(ev), (rx, None)));
        }
        let ev = match rx.recv().await {
            TraceItem::Event(e) => Event::default().event("packet").data(event_json(&e).to_string()),
            TraceItem::Lagged(n) => Event::default()
                .event("lagged")
                .data(json!({ "lost": n }).to_string()),
        };
        Some((Ok(ev), (rx, None)))
    });
    Sse::new(s).keep_alive(KeepAlive::new().interval(Duration::from_secs(10)))
}

/// `?filter=F`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WatchQuery {
    filter: String,
}

/// The SSE stream of the messages on topics matching a filter.
pub async fn watch(
    State(st): State<Arc<AppState>>,
    Extension(who): Extension<Who>,
    q: Result<axum::extract::Query<WatchQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Sse<impl futures_core::Stream<Item = Result<Event, Infallible>>>, crate::api::ApiError> {
    let axum::extract::Query(q) = q?;
    let rx = st.admin.watch(&q.filter).map_err(|e| {
        crate::api::ApiError::new(
            axum::http::StatusCode::BAD_REQUEST,
            format!("`filter` {:?}: {e}", q.filter),
        )
    })?;
    tracing::info!(who = %who.0, filter = %q.filter, "admin API: watch started");
    let s = futures_util::stream::unfold(rx, |mut rx| async move {
        let ev = match rx.recv().await {
            WatchItem::Message(m) => {
                let mut v = crate::api::payload_json(&m.payload, PREVIEW);
                v["topic"] = json!(m.topic.to_string());
                v["qos"] = json!(m.qos as u8);
                v["retain"] = json!(m.retain);
                v["at"] = json!(std::time::SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_millis() as u64)
                    .unwrap_or(0));
                Event::default().data(v.to_string())
            }
            WatchItem::Lagged(n) => Event::default()
                .event("lagged")
                .data(json!({ "lost": n }).to_string()),
        };
        Some((Ok(ev), rx))
    });
    Ok(Sse::new(s).keep_alive(KeepAlive::new().interval(Duration::from_secs(10))))
}

/// Payload bytes shown per watched message.
const PREVIEW: usize = 1024;
