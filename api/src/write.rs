//! Write routes: InfluxDB line protocol and JSON readings.

use axum::Extension;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use bytes::Bytes;
use serde::Deserialize;
pub use wattdb_ingest::now_ns;
use wattdb_ingest::{Precision, ReadingBatch, decode_json_readings, decode_line_protocol};

use crate::AppState;
use crate::auth::Access;
use crate::error::ApiError;
use crate::metrics::WritePath;

/// Bodies larger than this are decoded off the async runtime.
const DECODE_INLINE_BYTES: usize = 256 * 1024;

#[derive(Debug, Deserialize)]
pub struct WriteParams {
    /// `ns` (default), `us`, `ms`, `s` (v1 also `n`, `u`, `m`, `h`). `org`, `bucket`,
    /// `db` and the rest of InfluxDB's parameters are accepted and ignored.
    precision: Option<String>,
}

/// `POST /api/v2/write`, `POST /write`: line protocol; 204 once durable.
pub async fn line_protocol(
    State(app): State<AppState>,
    Extension(access): Extension<Access>,
    params: Result<Query<WriteParams>, axum::extract::rejection::QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<StatusCode, ApiError> {
    let result = match params {
        Ok(Query(params)) => write_line_protocol(&app, &access, params, body).await,
        Err(e) => Err(e.into()),
    };
    record(&app, WritePath::LineProtocol, result)
}

/// `POST /api/v1/readings`: a JSON array of readings (or one object); 204 once durable.
pub async fn json_readings(
    State(app): State<AppState>,
    Extension(access): Extension<Access>,
    body: Result<Bytes, BytesRejection>,
) -> Result<StatusCode, ApiError> {
    let result = write_json(&app, &access, body).await;
    record(&app, WritePath::Json, result)
}

fn record(
    app: &AppState,
    path: WritePath,
    result: Result<usize, ApiError>,
) -> Result<StatusCode, ApiError> {
    match result {
        Ok(rows) => {
            app.metrics.write_ok(path, rows);
            Ok(StatusCode::NO_CONTENT)
        }
        Err(e) => {
            app.metrics.write_failed(path, &e);
            Err(e)
        }
    }
}

async fn write_line_protocol(
    app: &AppState,
    access: &Access,
    params: WriteParams,
    body: Result<Bytes, BytesRejection>,
) -> Result<usize, ApiError> {
    let body = body?;
    let precision = match params.precision.as_deref() {
        None | Some("") => Precision::Ns,
        Some(p) => p.parse().map_err(ApiError::Precision)?,
    };
    let now = now_ns();
    let len = body.len();
    let decode = move || {
        let mut batch = ReadingBatch::new();
        decode_line_protocol(&body, precision, now, &mut batch)
            .map(|_| batch)
            .map_err(ApiError::LineProtocol)
    };
    let batch = run_decode(len, decode).await?;
    access.check_devices(batch.device_id.iter())?;
    Ok(app.engine.write(batch).await?.rows)
}

async fn write_json(
    app: &AppState,
    access: &Access,
    body: Result<Bytes, BytesRejection>,
) -> Result<usize, ApiError> {
    let body = body?;
    let now = now_ns();
    let len = body.len();
    let decode = move || {
        let mut batch = ReadingBatch::new();
        decode_json_readings(&body, now, &mut batch)
            .map(|_| batch)
            .map_err(ApiError::Json)
    };
    let batch = run_decode(len, decode).await?;
    access.check_devices(batch.device_id.iter())?;
    Ok(app.engine.write(batch).await?.rows)
}

/// Decodes on the async runtime when the body is small, on a blocking thread when it
/// would hold a runtime worker for long.
async fn run_decode(
    len: usize,
    decode: impl FnOnce() -> Result<ReadingBatch, ApiError> + Send + 'static,
) -> Result<ReadingBatch, ApiError> {
    if len <= DECODE_INLINE_BYTES {
        return decode();
    }
    match tokio::task::spawn_blocking(decode).await {
        Ok(r) => r,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}
