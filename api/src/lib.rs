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
mod dashboard;
pub mod error;
mod export;
mod live;
pub mod metrics;
pub mod mqtt;
mod params;
mod query;
mod series;
mod write;

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use serde_json::json;
use tokio::net::TcpListener;
use tower_http::decompression::RequestDecompressionLayer;
use wattdb_engine::Engine;
use wattdb_query::QueryEngine;

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
}

impl AppState {
    pub fn new(engine: Engine, query: QueryEngine) -> Self {
        Self {
            engine,
            query: Arc::new(query),
            metrics: Arc::default(),
            mqtt: None,
            export_deadline: std::time::Duration::from_secs(3600),
            live_send_timeout: std::time::Duration::from_secs(30),
        }
    }
}

/// The routes of WattDB's HTTP API.
pub fn router(state: AppState, config: &ApiConfig) -> Router {
    Router::new()
        .route("/api/v2/write", post(write::line_protocol))
        .route("/write", post(write::line_protocol))
        .route("/api/v1/readings", post(write::json_readings))
        .route("/api/v1/query", post(query::query))
        .route("/api/v1/series", get(series::series))
        .route("/api/v1/export", get(export::export))
        .route("/api/v1/live", get(live::live))
        .route("/api/v1/latest", get(dashboard::latest))
        .route("/api/v1/devices", get(dashboard::devices))
        .route("/api/v1/admin/persist", post(admin::persist))
        .route("/api/v1/admin/compact", post(admin::compact))
        .route("/api/v1/admin/expire", post(admin::expire))
        .route("/health", get(health))
        .route("/metrics", get(metrics::metrics))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(config.max_body_bytes))
        .layer(RequestDecompressionLayer::new())
        .with_state(state)
}

/// Serves the API on `listener` until `shutdown` completes, then lets in-flight
/// requests finish.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    config: &ApiConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
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

async fn not_found(uri: axum::http::Uri) -> impl IntoResponse {
    let body = json!({"error": format!("no route for {}", uri.path())});
    (StatusCode::NOT_FOUND, axum::Json(body))
}
