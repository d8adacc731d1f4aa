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

/// `POST /api/v1/admin/compact`: merges small Parquet files until no partition needs
/// it (it also runs by itself between persist cycles) and lists the jobs run.
pub async fn compact(State(app): State<AppState>) -> Result<Json<Value>, ApiError> {
    let reports = app.engine.compact().await?;
    let jobs: Vec<Value> = reports
        .iter()
        .map(|r| {
            json!({
                "partition": r.partition,
                "input_files": r.input_files,
                "input_rows": r.input_rows,
                "input_bytes": r.input_bytes,
                "rows": r.rows,
                "bytes": r.bytes,
                "manifest_version": r.manifest_version,
            })
        })
        .collect();
    Ok(Json(json!({ "jobs": jobs })))
}

/// `POST /api/v1/admin/expire`: removes the files past their resolution's retention now
/// (retention also runs by itself once a minute) and says what went, per resolution.
pub async fn expire(State(app): State<AppState>) -> Result<Json<Value>, ApiError> {
    let r = app.engine.expire().await?;
    let tiers: serde_json::Map<String, Value> = wattdb_engine::Tier::ALL
        .iter()
        .enumerate()
        .map(|(i, t)| {
            (
                t.name().to_owned(),
                json!({"files": r.files[i], "rows": r.rows[i], "bytes": r.bytes[i]}),
            )
        })
        .collect();
    Ok(Json(json!({
        "expired": tiers,
        "manifest_version": r.manifest_version,
    })))
}
