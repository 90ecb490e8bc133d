//! # tern-admin
//!
//! The HTTP endpoint of `tern broker` (axum on hyper): Prometheus metrics at `/metrics`,
//! the JSON admin API under `/api/v1` (described by `/api/v1/openapi.json`), `/healthz`
//! and `/readyz`, live client traces (server-sent events), and the dashboard at `/`, whose
//! files are compiled into the binary.
//!
//! ```no_run
//! # async fn run(broker: tern_broker::Broker) -> Result<(), tern_admin::Error> {
//! let http = tern_admin::HttpServer::bind(broker.admin(), &broker.admin().config().http).await?;
//! println!("http on {}", http.local_addr());
//! tokio::spawn(http.run());
//! broker.run().await;
//! # Ok(()) }
//! ```
//!
//! ## Layout
//! - `auth.rs`: who may call (loopback without credentials, HTTP Basic against the password
//!   file's `admins`, bearer tokens stored hashed), failures counted and rate limited.
//! - `api.rs`: the `/api/v1` handlers and their JSON shapes; errors are `api::ApiError`.
//! - `metrics.rs`: the `/metrics` collector (prometheus-client), read at scrape time.
//! - `dashboard.rs`: the dashboard's files (`static/`), served from memory.
//! - `trace.rs`: a client's packets, and the messages on a filter, as server-sent events.
//! - `tls.rs`: HTTPS with `http.cert` and `http.key`.

mod api;
mod auth;
mod bridges;
mod dashboard;
mod metrics;
mod tls;
mod trace;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::routing::{get, post};
use axum::Router;
use tern_broker::{Admin, HttpConfig};

pub use auth::{hash_token, FAILURE_WINDOW, MAX_FAILURES};
pub use bridges::{BridgeReport, BridgeSlot};

/// Why the HTTP endpoint cannot start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A setting of `[http]` cannot be used; the message names it and the fix.
    #[error("configuration error: {0}")]
    Config(String),
    /// The address cannot be bound.
    #[error("cannot serve HTTP on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// What every handler shares.
#[derive(Debug)]
pub(crate) struct AppState {
    pub admin: Admin,
    pub auth: auth::Auth,
    pub http_metrics: metrics::HttpCounters,
    pub bridges: BridgeSlot,
}

/// A bound HTTP endpoint; [`HttpServer::run`] serves it.
#[derive(Debug)]
pub struct HttpServer {
    listener: tokio::net::TcpListener,
    /// HTTPS, when `http.cert` and `http.key` are given.
    tls: Option<Arc<rustls::ServerConfig>>,
    router: Router,
    addr: SocketAddr,
    bridges: BridgeSlot,
}

impl HttpServer {
    /// Check `config` against the security rules and bind its address. On a non-loopback
    /// address, credentials (`admins` or `tokens_file`) are required.
    pub async fn bind(admin: Admin, config: &HttpConfig) -> Result<HttpServer, Error> {
        let Some(addr) = config.listen else {
            return Err(Error::Config("`http.listen`: the HTTP endpoint is off".into()));
        };
        let tls = match (&config.cert, &config.key) {
            (Some(cert), Some(key)) => Some(tls::server_config(cert, key)?),
            (None, None) => None,
            _ => {
                return Err(Error::Config(
                    "`http.cert` and `http.key` go together (HTTPS)".into(),
                ))
            }
        };
        let auth = auth::Auth::load(config, addr, admin.config().password_file.is_some())?;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| Error::Bind { addr, source })?;
        let addr = listener
            .local_addr()
            .map_err(|source| Error::Bind { addr, source })?;
        let bridges = BridgeSlot::default();
        let state = Arc::new(AppState {
            admin,
            auth,
            http_metrics: metrics::HttpCounters::default(),
            bridges: bridges.clone(),
        });
        Ok(HttpServer {
            listener,
            tls,
            router: router(state),
            addr,
            bridges,
        })
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where to hand over the bridges' reports once they run (`/metrics`, `/api/v1/bridges`).
    pub fn bridges(&self) -> BridgeSlot {
        self.bridges.clone()
    }

    /// Whether it serves HTTPS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Serve until the task is dropped.
    pub async fn run(self) {
        use axum::serve::ListenerExt as _;
        let app = self.router.into_make_service_with_connect_info::<SocketAddr>();
        let served = match self.tls {
            None => axum::serve(self.listener, app).await,
            Some(config) => match tls::TlsListener::new(self.listener, config) {
                // tap_io: the peer address reaches ConnectInfo as for plain TCP.
                Ok(l) => axum::serve(l.tap_io(|_| {}), app).await,
                Err(e) => Err(e),
            },
        };
        if let Err(e) = served {
            tracing::error!("HTTP endpoint stopped: {e}");
        }
    }
}

fn router(state: Arc<AppState>) -> Router {
    let api = Router::new()
        .route("/broker", get(api::broker))
        .route("/config", get(api::config))
        .route("/stats", get(api::stats))
        .route("/bridges", get(api::bridges))
        .route("/reload", post(api::reload))
        .route("/bans", get(api::bans).post(api::ban_add).delete(api::ban_remove))
        .route("/clients", get(api::clients))
        .route("/clients/{id}", get(api::client).delete(api::kick))
        .route("/clients/{id}/disconnect", post(api::kick_post))
        .route("/sessions", get(api::sessions))
        .route("/sessions/{id}", get(api::session))
        .route("/subscriptions", get(api::subscriptions))
        .route("/shared-groups", get(api::shared_groups))
        .route("/retained", get(api::retained_list))
        .route("/topics", get(api::topics))
        .route(
            "/retained/{*topic}",
            get(api::retained_get).delete(api::retained_delete),
        )
        .route("/publish", post(api::publish))
        .route("/trace/{id}", get(trace::stream))
        .route("/watch", get(trace::watch))
        .route("/openapi.json", get(api::openapi))
        .fallback(api::not_found);
    Router::new()
        .nest("/api/v1", api)
        .route("/metrics", get(metrics::scrape))
        .merge(dashboard::routes())
        .layer(axum::middleware::from_fn_with_state(state.clone(), auth::check))
        // Health probes answer without credentials: they tell nothing.
        .route("/healthz", get(api::healthz))
        .route("/readyz", get(api::readyz))
        .layer(axum::extract::DefaultBodyLimit::max(api::MAX_BODY))
        .with_state(state)
}
