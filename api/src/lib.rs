//! WattDB API: the HTTP routes, the server, and (in `main.rs`) the `wattdb` binary.
//!
//! This crate wires the others together and holds no business logic: write routes hand
//! request bodies to the `ingest` decoders and the batches to the
//! [`Engine`](wattdb_engine::Engine); the query route hands SQL to
//! [`QueryEngine`](wattdb_query::QueryEngine) and streams the result. Errors become
//! HTTP statuses in one place, [`error::ApiError`].
//!
//! [`serve`] takes a bound listener and a shutdown future, so tests run servers on
//! port 0 and stop them when they are done.

mod admin;
pub mod auth;
mod dashboard;
pub mod error;
mod export;
mod live;
pub mod metrics;
pub mod mqtt;
mod params;
mod query;
mod series;
pub mod tls;
mod write;

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{delete, get, post};
use serde_json::json;
use tower_http::decompression::RequestDecompressionLayer;
use wattdb_engine::Engine;
use wattdb_query::QueryEngine;

use crate::auth::{Need, Scope};
use crate::error::ApiError;

pub use write::now_ns;

/// Settings of the HTTP server.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Largest accepted request body (after decompression); larger ones get 413.
    pub max_body_bytes: usize,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 16 << 20,
        }
    }
}

/// Limits on what queries a server runs at once and answers.
#[derive(Debug, Clone)]
pub struct QueryLimits {
    /// Queries (SQL, series, exports) running at once; more get 429.
    pub concurrent: usize,
    /// Rows one `POST /api/v1/query` answer may hold; a longer result is cut short
    /// with an error (exports have no such limit).
    pub max_rows: u64,
}

impl Default for QueryLimits {
    fn default() -> Self {
        Self {
            concurrent: 16,
            max_rows: 10_000_000,
        }
    }
}

/// What every handler shares.
#[derive(Debug, Clone)]
pub struct AppState {
    pub engine: Engine,
    pub query: Arc<QueryEngine>,
    pub metrics: Arc<metrics::ApiMetrics>,
    /// The MQTT subscriber's counters, when it runs.
    pub mqtt: Option<Arc<wattdb_ingest::subscriber::SubscriberStats>>,
    /// Deadline of an export (longer than that of a query).
    pub export_deadline: std::time::Duration,
    /// A live subscriber that takes no message for this long is disconnected.
    pub live_send_timeout: std::time::Duration,
    pub auth: Arc<auth::Auth>,
    /// Permits of the queries running at once.
    pub query_slots: Arc<tokio::sync::Semaphore>,
    pub limits: QueryLimits,
}

impl AppState {
    pub fn new(
        engine: Engine,
        query: QueryEngine,
        auth: Arc<auth::Auth>,
        limits: QueryLimits,
    ) -> Self {
        Self {
            engine,
            query: Arc::new(query),
            metrics: Arc::default(),
            mqtt: None,
            export_deadline: std::time::Duration::from_secs(3600),
            live_send_timeout: std::time::Duration::from_secs(30),
            auth,
            query_slots: Arc::new(tokio::sync::Semaphore::new(limits.concurrent.max(1))),
            limits,
        }
    }

    /// A permit to run a query, or 429 when as many run as the limit allows.
    pub fn query_slot(&self) -> Result<tokio::sync::OwnedSemaphorePermit, ApiError> {
        Arc::clone(&self.query_slots)
            .try_acquire_owned()
            .map_err(|_| {
                ApiError::Busy(format!(
                    "{} queries are running, the most this server runs at once; retry shortly",
                    self.limits.concurrent
                ))
            })
    }
}

/// The OpenAPI description of the routes below, served at `/api/v1/openapi.json`.
pub const OPENAPI: &str = include_str!("../openapi.json");

/// The routes of WattDB's HTTP API. Every route but `/health` needs a token; each
/// group states the scope it needs.
pub fn router(state: AppState, config: &ApiConfig) -> Router {
    let guard = |need: Need| {
        axum::middleware::from_fn_with_state((Arc::clone(&state.auth), need), auth::require)
    };
    let write = Router::new()
        .route("/api/v2/write", post(write::line_protocol))
        .route("/write", post(write::line_protocol))
        .route("/api/v1/readings", post(write::json_readings))
        .route_layer(guard(Need::Scope(Scope::Write)));
    let read = Router::new()
        .route("/api/v1/query", post(query::query))
        .route("/api/v1/series", get(series::series))
        .route("/api/v1/export", get(export::export))
        .route("/api/v1/live", get(live::live))
        .route("/api/v1/latest", get(dashboard::latest))
        .route("/api/v1/devices", get(dashboard::devices))
        .route("/metrics", get(metrics::metrics))
        .route_layer(guard(Need::Scope(Scope::Read)));
    let admin = Router::new()
        .route("/api/v1/admin/persist", post(admin::persist))
        .route("/api/v1/admin/compact", post(admin::compact))
        .route("/api/v1/admin/expire", post(admin::expire))
        .route(
            "/api/v1/admin/tokens",
            get(admin::list_tokens).post(admin::create_token),
        )
        .route("/api/v1/admin/tokens/{id}", delete(admin::revoke_token))
        .route_layer(guard(Need::Scope(Scope::Admin)));
    let any = Router::new()
        .route("/ready", get(ready))
        .route("/api/v1/openapi.json", get(openapi))
        .route_layer(guard(Need::AnyToken));
    Router::new()
        .merge(write)
        .merge(read)
        .merge(admin)
        .merge(any)
        .route("/health", get(health))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(config.max_body_bytes))
        .layer(RequestDecompressionLayer::new())
        .layer(axum::middleware::map_response(json_errors))
        .layer(axum::middleware::from_fn(request_id))
        .with_state(state)
}

/// Serves the API on `listener` (a [`tokio::net::TcpListener`], or a [`tls::TlsListener`] for
/// HTTPS) until `shutdown` completes, then lets in-flight requests finish.
pub async fn serve<L>(
    listener: L,
    state: AppState,
    config: &ApiConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()>
where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
{
    axum::serve(listener, router(state, config))
        .with_graceful_shutdown(shutdown)
        .await
}

/// `GET /health`: 200 while the engine can acknowledge writes.
async fn health(State(app): State<AppState>) -> impl IntoResponse {
    if app.engine.is_poisoned() {
        let body =
            json!({"status": "failing", "error": "the write-ahead log failed; restart WattDB"});
        (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body))
    } else {
        (StatusCode::OK, axum::Json(json!({"status": "ok"})))
    }
}

const READY_STORE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// `GET /ready`: 200 once the server can take writes and reach its object store
/// (recovery is done before the server listens); 503 naming what is not ready.
async fn ready(State(app): State<AppState>) -> impl IntoResponse {
    let wal = if app.engine.is_poisoned() {
        Err("the write-ahead log failed; restart WattDB".to_owned())
    } else {
        Ok(())
    };
    let store = match tokio::time::timeout(READY_STORE_TIMEOUT, app.engine.store().check()).await {
        Ok(r) => r.map_err(|e| error::chain(&e)),
        Err(_) => Err(format!(
            "the object store did not answer within {} s",
            READY_STORE_TIMEOUT.as_secs()
        )),
    };
    let checks = json!({
        "wal": if wal.is_ok() { "ok" } else { "failed" },
        "object_store": if store.is_ok() { "ok" } else { "unreachable" },
        "recovery": "done",
    });
    match wal.and(store) {
        Ok(()) => (
            StatusCode::OK,
            axum::Json(json!({"status": "ready", "checks": checks})),
        ),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({"status": "not_ready", "error": e, "checks": checks})),
        ),
    }
}

/// `GET /api/v1/openapi.json`.
async fn openapi() -> impl IntoResponse {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        OPENAPI,
    )
}

/// Gives every request an id (the client's `X-Request-Id` when it is a short token of
/// letters, digits, `-`, `_` or `.`; else a new one), logs within a span that carries
/// it, and answers it in `X-Request-Id`. Only the path is logged, never the query
/// string or headers.
async fn request_id(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use std::sync::atomic::{AtomicU64, Ordering};
    use tracing::Instrument;
    static NEXT: AtomicU64 = AtomicU64::new(0);
    static PREFIX: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    let given = req
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= 64
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        })
        .map(str::to_owned);
    let id = given.unwrap_or_else(|| {
        let prefix =
            *PREFIX.get_or_init(|| (now_ns() as u64 ^ u64::from(std::process::id())) as u32);
        format!("{prefix:08x}-{:08x}", NEXT.fetch_add(1, Ordering::Relaxed))
    });
    let span = tracing::info_span!(
        "request",
        id = %id,
        method = %req.method(),
        path = %req.uri().path()
    );
    let started = std::time::Instant::now();
    let mut resp = next.run(req).instrument(span.clone()).await;
    span.in_scope(|| {
        tracing::debug!(
            status = resp.status().as_u16(),
            ms = started.elapsed().as_secs_f64() * 1e3,
            "answered"
        );
    });
    if let Ok(v) = axum::http::HeaderValue::from_str(&id) {
        resp.headers_mut().insert(REQUEST_ID, v);
    }
    resp
}

const REQUEST_ID: &str = "x-request-id";

/// Error answers that axum or a layer wrote (405, 415, a WebSocket route asked
/// without upgrade headers) get the same JSON body as WattDB's own.
async fn json_errors(resp: axum::response::Response) -> axum::response::Response {
    use axum::http::header;
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let bytes = axum::body::to_bytes(body, 64 << 10)
        .await
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&bytes).trim().to_owned();
    let error = match (status, text.is_empty()) {
        (StatusCode::METHOD_NOT_ALLOWED, _) => {
            "method not allowed on this route (see /api/v1/openapi.json)".to_owned()
        }
        (StatusCode::UNSUPPORTED_MEDIA_TYPE, true) => {
            "unsupported Content-Encoding: send identity or gzip".to_owned()
        }
        (_, false) => text,
        (_, true) => status.canonical_reason().unwrap_or("error").to_lowercase(),
    };
    let mut out = (status, axum::Json(json!({ "error": error }))).into_response();
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            out.headers_mut().insert(name.clone(), value.clone());
        }
    }
    out
}

async fn not_found(uri: axum::http::Uri) -> impl IntoResponse {
    let body = json!({"error": format!("no route for {}", uri.path())});
    (StatusCode::NOT_FOUND, axum::Json(body))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    /// Every route of [`router`](super::router), with its methods, is in the OpenAPI
    /// description, and the description holds no route the router lacks.
    #[test]
    fn the_openapi_description_lists_exactly_the_routes_of_the_router() {
        let source = include_str!("lib.rs");
        let body = &source[source.find("pub fn router(").unwrap_or(0)..];
        let body = &body[..body.find("\n}\n").unwrap_or(body.len())];
        let mut routes = BTreeSet::new();
        for part in body.split(".route(").skip(1) {
            let path = part.split('"').nth(1).unwrap_or_default().to_owned();
            let call = &part[..part.find(")\n").unwrap_or(part.len())];
            for method in ["get", "post", "delete", "put", "patch"] {
                if call.contains(&format!("{method}(")) {
                    routes.insert((path.clone(), method.to_owned()));
                }
            }
        }
        let doc: serde_json::Value = serde_json::from_str(super::OPENAPI).unwrap_or_default();
        let mut documented = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().into_iter().flatten() {
            for method in item.as_object().into_iter().flatten().map(|(m, _)| m) {
                if ["get", "post", "delete", "put", "patch"].contains(&method.as_str()) {
                    documented.insert((path.clone(), method.clone()));
                }
            }
        }
        assert!(routes.len() >= 18, "{routes:?}");
        assert_eq!(routes, documented);
    }
}
