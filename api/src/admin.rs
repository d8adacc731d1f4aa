//! Operator routes under `/api/v1/admin`.

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};

use crate::AppState;
use crate::error::ApiError;

/// `POST /api/v1/admin/persist`: persists everything buffered to Parquet and answers
/// once the manifest listing it is committed (503 when the object store fails; the
/// readings stay in the WAL and are retried in the background).
pub async fn persist(State(app): State<AppState>) -> Result<Json<Value>, ApiError> {
    let r = app.engine.persist().await?;
    Ok(Json(json!({
        "rows": r.rows,
        "files": r.files,
        "bytes": r.bytes,
        "manifest_version": r.manifest_version,
    })))
}
