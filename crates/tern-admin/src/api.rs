//! `/api/v1`: the JSON admin API (described by `static/openapi.json`, served at
//! `/api/v1/openapi.json`), and `/healthz`, `/readyz`.
//!
//! Every error is `{"error": MESSAGE}` with its status: 400 for bad input (a bad query,
//! filter, topic or JSON body, a page size above [`MAX_LIMIT`]), 404 for an unknown client or
//! topic, 413 for a body above [`MAX_BODY`]. Every mutating call is logged with who made it.

use std::sync::Arc;
use std::time::UNIX_EPOCH;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tern_broker::{Message, SessionInfo};
use tern_proto::codec::PublishProperties;
use tern_proto::QoS;

use crate::auth::Who;
use crate::AppState;

/// Largest page of a listing.
pub const MAX_LIMIT: usize = 1000;
/// Default page size.
pub const DEFAULT_LIMIT: usize = 100;
/// Largest request body (a publish's payload, base64 or text).
pub const MAX_BODY: usize = 4 * 1024 * 1024;
/// Payload bytes shown in a listing of retained messages.
const PREVIEW: usize = 256;

type S = State<Arc<AppState>>;

/// An error answer: `{"error": message}` with a status.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }

    fn bad(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "error": self.message }))).into_response()
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> ApiError {
        ApiError::bad(r.body_text())
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> ApiError {
        ApiError::new(
            if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
                StatusCode::PAYLOAD_TOO_LARGE
            } else {
                StatusCode::BAD_REQUEST
            },
            r.body_text(),
        )
    }
}

type ApiResult = Result<Response, ApiError>;

fn ok(v: Value) -> ApiResult {
    Ok(Json(v).into_response())
}

/// Paging of every listing: `offset` (default 0), `limit` (default 100, at most 1000).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    #[serde(default)]
    offset: usize,
    limit: Option<usize>,
    /// Client id prefix.
    client_id: Option<String>,
    /// User name (exact).
    user: Option<String>,
    /// Listener name (`tcp 127.0.0.1:1883`) or kind (`tcp`).
    listener: Option<String>,
    /// Address prefix (`127.0.0.1`, `10.1.`).
    address: Option<String>,
    /// Sessions: only connected (`true`) or only offline (`false`).
    online: Option<bool>,
    /// Subscriptions, retained messages and topics: a topic filter.
    filter: Option<String>,
    /// Topics: only those seen in the last N seconds.
    within_secs: Option<u64>,
}

impl ListQuery {
    fn limit(&self) -> Result<usize, ApiError> {
        match self.limit {
            None => Ok(DEFAULT_LIMIT),
            Some(0) => Err(ApiError::bad("`limit` must be at least 1")),
            Some(n) if n > MAX_LIMIT => Err(ApiError::bad(format!("`limit` must be at most {MAX_LIMIT}"))),
            Some(n) => Ok(n),
        }
    }
}

fn page<T: Serialize>(all: Vec<T>, q: &ListQuery) -> ApiResult {
    let limit = q.limit()?;
    let total = all.len();
    let items: Vec<T> = all.into_iter().skip(q.offset).take(limit).collect();
    ok(json!({ "total": total, "offset": q.offset, "limit": limit, "items": items }))
}

fn version_name(s: &SessionInfo) -> &'static str {
    if s.protocol_version.is_v5() {
        "5.0"
    } else if s.protocol_version == tern_proto::ProtocolVersion::V3_1_1 {
        "3.1.1"
    } else {
        "3.1"
    }
}

fn subscriptions_json(s: &SessionInfo) -> Vec<Value> {
    s.subscriptions
        .iter()
        .map(|sub| {
            json!({
                "filter": sub.filter,
                "qos": sub.options.qos as u8,
                "no_local": sub.options.no_local,
                "retain_as_published": sub.options.retain_as_published,
                "identifier": sub.identifier,
            })
        })
        .collect()
}

/// A session (or client) as JSON; `full` adds the subscriptions.
fn session_json(s: &SessionInfo, full: bool) -> Value {
    let connection = s.connection.as_ref().map(|c| {
        json!({
            "address": c.peer.to_string(),
            "username": c.username,
            "listener": c.listener,
            "keep_alive": c.keep_alive,
            "connected_at": c.connected_at.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0),
        })
    });
    let mut v = json!({
        "client_id": s.client_id,
        "protocol_version": version_name(s),
        "connected": s.connection.is_some(),
        "connection": connection,
        "session_expiry_interval": s.expiry_interval,
        "subscriptions_count": s.subscriptions.len(),
        "inflight": s.inflight,
        "queued": s.queued,
        "queued_bytes": s.queued_bytes,
        "queued_on_disk": s.on_disk.0,
        "queued_on_disk_bytes": s.on_disk.1,
        "dropped": s.dropped,
        "will_pending": s.will_pending,
    });
    if full {
        v["subscriptions"] = Value::Array(subscriptions_json(s));
    }
    v
}

fn matches(s: &SessionInfo, q: &ListQuery) -> bool {
    if let Some(p) = &q.client_id {
        if !s.client_id.starts_with(p.as_str()) {
            return false;
        }
    }
    let c = s.connection.as_ref();
    if let Some(u) = &q.user {
        if c.and_then(|c| c.username.as_deref()) != Some(u.as_str()) {
            return false;
        }
    }
    if let Some(l) = &q.listener {
        if !c.is_some_and(|c| c.listener == *l || c.listener.split(' ').next() == Some(l.as_str())) {
            return false;
        }
    }
    if let Some(a) = &q.address {
        if !c.is_some_and(|c| c.peer.to_string().starts_with(a.as_str())) {
            return false;
        }
    }
    if let Some(online) = q.online {
        if s.connection.is_some() != online {
            return false;
        }
    }
    true
}

/// `GET /healthz`: the process answers.
pub async fn healthz() -> impl IntoResponse {
    Json(json!({ "status": "ok" }))
}

/// `GET /readyz`: listeners bound, store working, not shutting down.
pub async fn readyz(State(st): S) -> Response {
    match st.admin.ready() {
        Ok(()) => Json(json!({ "status": "ready" })).into_response(),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "not ready", "error": why.to_string() })),
        )
            .into_response(),
    }
}

fn stats_json(st: &AppState) -> Value {
    let s = st.admin.stats();
    json!({
        "connections_open": s.connections_open,
        "clients_connected": s.clients_connected,
        "connections_total": s.connections_total,
        "sessions": s.sessions,
        "subscriptions": s.subscriptions,
        "retained": s.retained,
        "messages_received": s.messages_received,
        "messages_sent": s.messages_sent,
        "messages_dropped": s.messages_dropped,
        "dropped_over_budget": s.dropped_over_budget,
        "queued_messages": s.queued_messages,
        "queued_bytes": s.queued_bytes,
        "largest_queue": s.largest_queue,
        "inflight": s.inflight,
        "partial_bytes": s.partial_bytes,
        "partial_evictions": s.partial_evictions,
        "auth_failures": st.admin.security().auth_failures(),
        "resident_memory_bytes": crate::metrics::resident_memory(),
        "uptime_seconds": st.admin.uptime().as_secs(),
    })
}

/// `GET /api/v1/stats`: the broker's figures now (the dashboard polls it).
pub async fn stats(State(st): S) -> ApiResult {
    let v = tokio::task::spawn_blocking(move || stats_json(&st))
        .await
        .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "stats failed"))?;
    ok(v)
}

/// `GET /api/v1/bridges`: each bridge's state, outbox and counts.
pub async fn bridges(State(st): S) -> ApiResult {
    let items = tokio::task::spawn_blocking(move || st.bridges.reports())
        .await
        .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "bridges failed"))?;
    ok(json!({ "items": items }))
}

/// `GET /api/v1/broker`: version, uptime, listeners, stats.
pub async fn broker(State(st): S) -> ApiResult {
    let listeners: Vec<Value> = st
        .admin
        .listeners()
        .iter()
        .map(|(k, a)| json!({ "kind": k.as_str(), "address": a.to_string() }))
        .collect();
    let version = env!("CARGO_PKG_VERSION");
    let uptime = st.admin.uptime().as_secs();
    let stats = tokio::task::spawn_blocking(move || stats_json(&st))
        .await
        .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "stats failed"))?;
    ok(json!({ "version": version, "uptime_seconds": uptime, "listeners": listeners, "stats": stats }))
}

/// Keys whose values are secrets, or paths to them, masked in `/api/v1/config`.
const SECRET_KEYS: [&str; 4] = ["key", "tokens_file", "secret", "secret_file"];

fn mask(v: &mut Value) {
    match v {
        Value::Object(m) => {
            for (k, v) in m.iter_mut() {
                if SECRET_KEYS.contains(&k.as_str()) && !v.is_null() {
                    *v = Value::String("***".into());
                } else {
                    mask(v);
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(mask),
        _ => {}
    }
}

/// `GET /api/v1/config`: the configuration in force, secrets masked.
pub async fn config(State(st): S) -> ApiResult {
    let mut v = serde_json::to_value(st.admin.config())
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    mask(&mut v);
    ok(v)
}

/// `POST /api/v1/reload`: read the password and ACL files again (the SIGHUP action).
pub async fn reload(State(st): S, Extension(who): Extension<Who>) -> ApiResult {
    tracing::info!(who = %who.0, "admin API: reload the password and ACL files");
    match st.admin.security().reload() {
        Ok(()) => ok(json!({ "reloaded": true })),
        Err(e) => Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e.to_string())),
    }
}

async fn all_sessions(st: &Arc<AppState>) -> Result<Vec<SessionInfo>, ApiError> {
    let st = st.clone();
    tokio::task::spawn_blocking(move || st.admin.sessions())
        .await
        .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "listing failed"))
}

/// `GET /api/v1/clients`: connected clients, paged and filtered.
pub async fn clients(State(st): S, q: Result<Query<ListQuery>, QueryRejection>) -> ApiResult {
    let Query(q) = q?;
    q.limit()?;
    let all = all_sessions(&st).await?;
    let items: Vec<Value> = all
        .iter()
        .filter(|s| s.connection.is_some() && matches(s, &q))
        .map(|s| session_json(s, false))
        .collect();
    page(items, &q)
}

/// `GET /api/v1/sessions`: sessions, connected or not, paged and filtered.
pub async fn sessions(State(st): S, q: Result<Query<ListQuery>, QueryRejection>) -> ApiResult {
    let Query(q) = q?;
    q.limit()?;
    let all = all_sessions(&st).await?;
    let items: Vec<Value> = all
        .iter()
        .filter(|s| matches(s, &q))
        .map(|s| session_json(s, false))
        .collect();
    page(items, &q)
}

fn one(st: &AppState, id: &str, connected: bool) -> ApiResult {
    match st.admin.session(id) {
        Some(s) if !connected || s.connection.is_some() => ok(session_json(&s, true)),
        _ => Err(ApiError::not_found(format!(
            "no {} `{id}`",
            if connected { "connected client" } else { "session" }
        ))),
    }
}

/// `GET /api/v1/clients/{id}`.
pub async fn client(State(st): S, Path(id): Path<String>) -> ApiResult {
    one(&st, &id, true)
}

/// `GET /api/v1/sessions/{id}`.
pub async fn session(State(st): S, Path(id): Path<String>) -> ApiResult {
    one(&st, &id, false)
}

/// `?discard_session=true`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KickQuery {
    #[serde(default)]
    discard_session: bool,
}

fn do_kick(st: &AppState, who: &Who, id: &str, discard: bool) -> ApiResult {
    tracing::info!(who = %who.0, client_id = id, discard_session = discard, "admin API: disconnect a client");
    if st.admin.disconnect(id, discard) {
        ok(json!({ "client_id": id, "disconnected": true, "session_discarded": discard }))
    } else {
        Err(ApiError::not_found(format!("no session `{id}`")))
    }
}

/// `DELETE /api/v1/clients/{id}[?discard_session=true]`: disconnect (5.0: DISCONNECT 0x98).
pub async fn kick(
    State(st): S,
    Extension(who): Extension<Who>,
    Path(id): Path<String>,
    q: Result<Query<KickQuery>, QueryRejection>,
) -> ApiResult {
    let Query(q) = q?;
    do_kick(&st, &who, &id, q.discard_session)
}

/// `POST /api/v1/clients/{id}/disconnect` with an optional `{"discard_session": true}`.
pub async fn kick_post(
    State(st): S,
    Extension(who): Extension<Who>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult {
    let discard = if body.iter().all(u8::is_ascii_whitespace) {
        false
    } else {
        serde_json::from_slice::<KickQuery>(&body)
            .map_err(|e| ApiError::bad(format!("body: {e}")))?
            .discard_session
    };
    do_kick(&st, &who, &id, discard)
}

/// A ban as the ban file writes it: `clientid X`, `username X` or `address A/N`.
fn ban_target(t: &tern_broker::security::ban::BanTarget) -> String {
    use tern_broker::security::ban::BanTarget;
    match t {
        BanTarget::ClientId(c) => format!("clientid {c}"),
        BanTarget::Username(u) => format!("username {u}"),
        BanTarget::Network { addr, prefix } => format!("address {addr}/{prefix}"),
        other => format!("{other:?}"),
    }
}

/// `GET /api/v1/bans`: the bans in force (from the ban file and the API), with their expiry
/// (seconds since 1970, `null`: until removed).
pub async fn bans(State(st): S) -> ApiResult {
    let list: Vec<Value> = st
        .admin
        .security()
        .bans()
        .iter()
        .map(|b| {
            let until = b
                .until
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map(|d| d.as_secs());
            json!({ "ban": ban_target(&b.target), "until": until })
        })
        .collect();
    ok(json!({ "bans": list }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BanBody {
    /// A line of the ban file: `clientid X`, `username X` or `address A[/N]`, then an optional
    /// expiry (RFC 3339 UTC or seconds since 1970).
    ban: String,
}

/// `POST /api/v1/bans` with `{"ban": "clientid X [UNTIL]"}`: ban at once; matching clients
/// that are connected are disconnected. Lasts until removed, expired, or the ban file's next
/// reload replaces the list.
pub async fn ban_add(
    State(st): S,
    Extension(who): Extension<Who>,
    body: Result<Json<BanBody>, JsonRejection>,
) -> ApiResult {
    let Json(body) = body.map_err(|e| ApiError::bad(format!("body: {}", e.body_text())))?;
    let ban =
        tern_broker::security::ban::Ban::parse(&body.ban).map_err(|e| ApiError::bad(format!("ban: {e}")))?;
    let target = ban_target(&ban.target);
    tracing::info!(who = %who.0, ban = %body.ban, "admin API: ban");
    st.admin.security().ban(ban);
    Ok((StatusCode::CREATED, Json(json!({ "banned": target }))).into_response())
}

#[derive(Deserialize)]
pub struct UnbanQuery {
    /// `clientid X`, `username X` or `address A[/N]`.
    ban: String,
}

/// `DELETE /api/v1/bans?ban=clientid%20X`: remove every ban of that target; 404 when none.
pub async fn ban_remove(
    State(st): S,
    Extension(who): Extension<Who>,
    q: Result<Query<UnbanQuery>, QueryRejection>,
) -> ApiResult {
    let Query(q) = q?;
    let ban =
        tern_broker::security::ban::Ban::parse(&q.ban).map_err(|e| ApiError::bad(format!("ban: {e}")))?;
    if ban.until.is_some() {
        return Err(ApiError::bad("ban: name the target only, without an expiry"));
    }
    let removed = st.admin.security().unban(&ban.target);
    tracing::info!(who = %who.0, ban = %q.ban, removed, "admin API: unban");
    if removed == 0 {
        return Err(ApiError::not_found(format!("no ban of `{}`", q.ban)));
    }
    ok(json!({ "removed": removed }))
}

/// `GET /api/v1/subscriptions[?client_id=PREFIX][&filter=F]`: one row per subscription;
/// `filter` keeps the subscriptions whose filter is exactly F.
pub async fn subscriptions(State(st): S, q: Result<Query<ListQuery>, QueryRejection>) -> ApiResult {
    let Query(q) = q?;
    q.limit()?;
    let all = all_sessions(&st).await?;
    let mut rows = Vec::new();
    for s in all.iter().filter(|s| matches(s, &q)) {
        for mut sub in subscriptions_json(s) {
            if q.filter.as_deref().is_some_and(|f| sub["filter"] != f) {
                continue;
            }
            sub["client_id"] = Value::String(s.client_id.clone());
            rows.push(sub);
        }
    }
    page(rows, &q)
}

/// `GET /api/v1/shared-groups`: each `$share` group with its filter and members.
pub async fn shared_groups(State(st): S) -> ApiResult {
    let all = all_sessions(&st).await?;
    let mut groups: std::collections::BTreeMap<(String, String), Vec<String>> = Default::default();
    for s in &all {
        for sub in &s.subscriptions {
            if let Some((group, filter)) = sub.filter.strip_prefix("$share/").and_then(|r| r.split_once('/'))
            {
                groups
                    .entry((group.to_string(), filter.to_string()))
                    .or_default()
                    .push(s.client_id.clone());
            }
        }
    }
    let items: Vec<Value> = groups
        .into_iter()
        .map(|((group, filter), members)| json!({ "group": group, "filter": filter, "members": members }))
        .collect();
    ok(json!({ "items": items }))
}

/// A payload as JSON: text when it is UTF-8, else base64; cut at `max` bytes.
pub(crate) fn payload_json(p: &[u8], max: usize) -> Value {
    let cut = &p[..p.len().min(max)];
    match std::str::from_utf8(cut) {
        Ok(text) => {
            json!({ "payload": text, "payload_encoding": "utf8", "payload_size": p.len(), "truncated": cut.len() < p.len() })
        }
        Err(_) => json!({
            "payload": base64::engine::general_purpose::STANDARD.encode(cut),
            "payload_encoding": "base64",
            "payload_size": p.len(),
            "truncated": cut.len() < p.len(),
        }),
    }
}

fn retained_json(m: &Message, max: usize) -> Value {
    let mut v = payload_json(&m.payload, max);
    v["topic"] = Value::String(m.topic.to_string());
    v["qos"] = json!(m.qos as u8);
    if let Some(ct) = &m.properties.content_type {
        v["content_type"] = Value::String(ct.to_string());
    }
    v
}

/// `GET /api/v1/retained?filter=F` (default `#`): retained messages by topic, paged.
pub async fn retained_list(State(st): S, q: Result<Query<ListQuery>, QueryRejection>) -> ApiResult {
    let Query(q) = q?;
    q.limit()?;
    let filter = q.filter.clone().unwrap_or_else(|| "#".into());
    let limit = q.limit()?;
    let (total, messages) = st
        .admin
        .retained(&filter, q.offset, limit)
        .map_err(|e| ApiError::bad(format!("`filter` {filter:?}: {e}")))?;
    let items: Vec<Value> = messages.iter().map(|m| retained_json(m, PREVIEW)).collect();
    ok(json!({ "total": total, "offset": q.offset, "limit": limit, "items": items }))
}

/// `GET /api/v1/topics?filter=F&within_secs=N`: topics published on recently, by topic, paged.
pub async fn topics(State(st): S, q: Result<Query<ListQuery>, QueryRejection>) -> ApiResult {
    let Query(q) = q?;
    q.limit()?;
    let filter = q.filter.clone().unwrap_or_else(|| "#".into());
    let within = std::time::Duration::from_secs(q.within_secs.unwrap_or(3600));
    let seen = st
        .admin
        .recent_topics(&filter, within)
        .map_err(|e| ApiError::bad(format!("`filter` {filter:?}: {e}")))?;
    let items: Vec<Value> = seen
        .iter()
        .map(|s| {
            // The sample is cut at a byte count: a character it splits at the end is left out.
            let preview = match std::str::from_utf8(&s.preview) {
                Err(e) if e.error_len().is_none() => &s.preview[..e.valid_up_to()],
                _ => &s.preview[..],
            };
            let mut v = payload_json(preview, PREVIEW);
            v["payload_size"] = json!(s.payload_size);
            v["truncated"] = json!(preview.len() < s.payload_size);
            v["topic"] = Value::String(s.topic.to_string());
            v["qos"] = json!(s.qos);
            v["retain"] = json!(s.retain);
            let ms = s
                .last_seen
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            v["last_seen"] = json!(ms);
            v
        })
        .collect();
    page(items, &q)
}

/// `GET /api/v1/retained/{topic}`: one retained message, whole.
pub async fn retained_get(State(st): S, Path(topic): Path<String>) -> ApiResult {
    match st.admin.retained_message(&topic) {
        Some(m) => ok(retained_json(&m, usize::MAX)),
        None => Err(ApiError::not_found(format!("no retained message on `{topic}`"))),
    }
}

/// `DELETE /api/v1/retained/{topic}`.
pub async fn retained_delete(
    State(st): S,
    Extension(who): Extension<Who>,
    Path(topic): Path<String>,
) -> ApiResult {
    tracing::info!(who = %who.0, topic, "admin API: delete a retained message");
    if st.admin.delete_retained_everywhere(&topic) {
        ok(json!({ "topic": topic, "deleted": true }))
    } else {
        Err(ApiError::not_found(format!("no retained message on `{topic}`")))
    }
}

/// The body of `POST /api/v1/publish`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishBody {
    topic: String,
    #[serde(default)]
    payload: String,
    /// `utf8` (default) or `base64`.
    #[serde(default)]
    payload_encoding: Option<String>,
    #[serde(default)]
    qos: u8,
    #[serde(default)]
    retain: bool,
    #[serde(default)]
    properties: PublishProps,
}

/// MQTT 5.0 properties of an API publish.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishProps {
    content_type: Option<String>,
    payload_format_indicator: Option<bool>,
    message_expiry_interval: Option<u32>,
    response_topic: Option<String>,
    /// base64
    correlation_data: Option<String>,
    #[serde(default)]
    user_properties: Vec<(String, String)>,
}

/// `POST /api/v1/publish`: publish a message as the broker.
pub async fn publish(
    State(st): S,
    Extension(who): Extension<Who>,
    body: Result<Json<PublishBody>, JsonRejection>,
) -> ApiResult {
    let Json(b) = body?;
    let payload: Vec<u8> = match b.payload_encoding.as_deref() {
        None | Some("utf8") => b.payload.into_bytes(),
        Some("base64") => base64::engine::general_purpose::STANDARD
            .decode(b.payload.as_bytes())
            .map_err(|e| ApiError::bad(format!("`payload`: not base64: {e}")))?,
        Some(other) => {
            return Err(ApiError::bad(format!(
                "`payload_encoding` {other:?}: use utf8 or base64"
            )))
        }
    };
    let qos = match b.qos {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        2 => QoS::ExactlyOnce,
        q => return Err(ApiError::bad(format!("`qos` {q}: use 0, 1 or 2"))),
    };
    let mut msg = Message::new(b.topic.clone(), payload, qos, b.retain);
    msg.properties = properties(b.properties)?;
    if let Some(secs) = msg.properties.message_expiry_interval {
        msg.expires_at = Some(std::time::Instant::now() + std::time::Duration::from_secs(secs.into()));
    }
    tracing::info!(who = %who.0, topic = %b.topic, qos = b.qos, retain = b.retain, "admin API: publish");
    // As a client's publish: in a cluster it reaches every node, and a QoS 1/2 message is
    // stored before the answer.
    let reached = st.admin.publish_everywhere(msg).await.map_err(|e| match e {
        tern_broker::PublishError::Topic(e) => ApiError::bad(format!("`topic` {:?}: {e}", b.topic)),
        e => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    })?;
    ok(json!({ "topic": b.topic, "sessions_reached": reached }))
}

fn properties(p: PublishProps) -> Result<PublishProperties, ApiError> {
    let mut out = PublishProperties {
        content_type: p.content_type.map(Into::into),
        payload_format_indicator: p.payload_format_indicator.map(u8::from),
        message_expiry_interval: p.message_expiry_interval,
        ..PublishProperties::default()
    };
    if let Some(t) = p.response_topic {
        tern_proto::topic::validate_topic_name(&t)
            .map_err(|e| ApiError::bad(format!("`response_topic`: {e}")))?;
        out.response_topic = Some(t.into());
    }
    if let Some(c) = p.correlation_data {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(c.as_bytes())
            .map_err(|e| ApiError::bad(format!("`correlation_data`: not base64: {e}")))?;
        out.correlation_data = Some(bytes.into());
    }
    out.user_properties = p
        .user_properties
        .into_iter()
        .map(|(k, v)| (k.into(), v.into()))
        .collect();
    Ok(out)
}

/// `GET /api/v1/openapi.json`.
pub async fn openapi() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        include_str!("../static/openapi.json"),
    )
}

/// Anything else under `/api/v1`.
pub async fn not_found() -> ApiError {
    ApiError::not_found("no such API endpoint; see /api/v1/openapi.json")
}
