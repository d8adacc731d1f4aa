//! Dashboard routes: the latest reading of each plug, and the plugs known.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::{Extension, Json};
use chrono::{DateTime, SecondsFormat};
use serde::Deserialize;
use serde_json::{Value, json};
use wattdb_engine::LatestReading;

use crate::AppState;
use crate::auth::Access;
use crate::error::ApiError;
use crate::params::device_ids;

/// An RFC 3339 UTC time with as many fraction digits as it needs.
pub fn rfc3339(ns: i64) -> String {
    DateTime::from_timestamp_nanos(ns).to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// Which plugs: `device=a,b` (exact ids) and/or `prefix=p`; neither means all.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlugFilter {
    device: Option<String>,
    prefix: Option<String>,
}

impl PlugFilter {
    /// The chosen plugs the caller may see; 403 if it names one it may not.
    fn select(&self, app: &AppState, access: &Access) -> Result<Vec<LatestReading>, ApiError> {
        let ids: Option<Vec<String>> = self
            .device
            .as_deref()
            .filter(|d| !d.trim().is_empty())
            .map(device_ids)
            .transpose()?;
        if let Some(ids) = &ids {
            access.check_devices(ids.iter().map(String::as_str))?;
        }
        let mut out: Vec<LatestReading> = app
            .engine
            .latest(self.prefix.as_deref().unwrap_or(""))
            .into_iter()
            .filter(|l| access.allows(&l.device_id))
            .filter(|l| {
                ids.as_ref()
                    .is_none_or(|ids| ids.iter().any(|id| **id == *l.device_id))
            })
            .collect();
        out.sort_by(|a, b| a.device_id.cmp(&b.device_id));
        Ok(out)
    }
}

/// `GET /api/v1/latest`: the latest reading of each plug, from the latest-value map
/// (no table scan), sorted by plug id.
pub async fn latest(
    State(app): State<AppState>,
    Extension(access): Extension<Access>,
    query: Result<Query<PlugFilter>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(filter) = query?;
    let rows: Vec<Value> = filter
        .select(&app, &access)?
        .iter()
        .map(|l| {
            json!({
                "device_id": &*l.device_id,
                "ts": rfc3339(l.ts),
                "voltage": l.voltage,
                "current": l.current,
                "power": l.power,
                "energy": l.energy,
                "relay_on": l.relay_on,
                "location": l.location.as_deref(),
                "device_type": l.device_type.as_deref(),
            })
        })
        .collect();
    Ok(Json(Value::Array(rows)))
}

/// `GET /api/v1/devices`: every plug with its tags and the first and last time it was
/// seen, sorted by plug id.
pub async fn devices(
    State(app): State<AppState>,
    Extension(access): Extension<Access>,
    query: Result<Query<PlugFilter>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(filter) = query?;
    let rows: Vec<Value> = filter
        .select(&app, &access)?
        .iter()
        .map(|l| {
            json!({
                "device_id": &*l.device_id,
                "location": l.location.as_deref(),
                "device_type": l.device_type.as_deref(),
                "first_seen": rfc3339(l.first_ts),
                "last_seen": rfc3339(l.ts),
            })
        })
        .collect();
    Ok(Json(Value::Array(rows)))
}
