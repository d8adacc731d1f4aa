//! Operator routes under `/api/v1/admin`.

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::AppState;
use crate::auth::{NewToken, Scope, StoreError};
use crate::error::ApiError;
use crate::params::{bad, parse_duration_ns};

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

/// `GET /api/v1/admin/tokens`: every token, without its secret.
pub async fn list_tokens(State(app): State<AppState>) -> Result<Json<Value>, ApiError> {
    let auth = std::sync::Arc::clone(&app.auth);
    let tokens = blocking(move || auth.store().infos()).await?;
    Ok(Json(json!({ "tokens": tokens })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    name: Option<String>,
    scopes: Vec<String>,
    #[serde(default)]
    devices: Vec<String>,
    /// `30d`, `12h`…
    expires_in: Option<String>,
}

/// `POST /api/v1/admin/tokens`: creates a token; 201 with the token, shown this once.
pub async fn create_token(
    State(app): State<AppState>,
    req: Result<Json<CreateToken>, JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let Json(req) = req?;
    let scopes = req
        .scopes
        .iter()
        .map(|s| Scope::parse(s))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("scopes: {e}")))?;
    let expires_in = match &req.expires_in {
        None => None,
        Some(d) => {
            let ns = parse_duration_ns(d).map_err(|e| bad(format!("expires_in: {e}")))?;
            Some(std::time::Duration::from_nanos(ns.unsigned_abs()))
        }
    };
    let new = NewToken {
        name: req.name,
        scopes,
        devices: req.devices,
        expires_in,
    };
    let auth = std::sync::Arc::clone(&app.auth);
    let (token, info) = blocking(move || {
        let created = auth.store().create(new)?;
        auth.reload()?;
        Ok(created)
    })
    .await?;
    let mut body = serde_json::to_value(&info).unwrap_or_default();
    body["token"] = json!(token);
    Ok((StatusCode::CREATED, Json(body)))
}

/// `DELETE /api/v1/admin/tokens/{id}`: revokes a token at once; 404 if there is none.
pub async fn revoke_token(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let auth = std::sync::Arc::clone(&app.auth);
    let gone = {
        let id = id.clone();
        blocking(move || {
            let gone = auth.store().revoke(&id)?;
            auth.reload()?;
            Ok(gone)
        })
        .await?
    };
    if gone {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound(format!("no token with id {id:?}")))
    }
}

/// Runs a token file operation off the async runtime.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, ApiError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(StoreError::Invalid(msg))) => Err(bad(msg)),
        Ok(Err(e)) => Err(ApiError::Internal(e.to_string())),
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}
