//! `GET /api/v1/export`: a time range of one table (raw readings or a rollup), for
//! some or all plugs, streamed as Parquet, an Arrow IPC stream or CSV.
//!
//! The rows stream as the scan produces them (in no particular order), so memory does
//! not grow with the range: Parquet row groups are written out as they fill. An export
//! runs under the query memory limit and its own deadline (`--export-timeout-s`),
//! longer than the one of interactive queries.

use axum::Extension;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderValue, header};
use axum::response::Response;
use serde::Deserialize;

use crate::AppState;
use crate::auth::Access;
use crate::error::ApiError;
use crate::params::{bad, device_ids, parse_time, sql_str};
use crate::query::{Format, stream_sql};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportQuery {
    from: Option<String>,
    to: Option<String>,
    resolution: Option<String>,
    device: Option<String>,
    prefix: Option<String>,
    format: Option<String>,
}

/// `GET /api/v1/export`.
pub async fn export(
    State(app): State<AppState>,
    Extension(access): Extension<Access>,
    query: Result<Query<ExportQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query?;
    let started = std::time::Instant::now();
    let now = crate::now_ns();
    let from = match &q.from {
        Some(f) => parse_time("from", f, now)?,
        None => return Err(bad("from: the start of the range is required".into())),
    };
    let to = match &q.to {
        Some(t) => parse_time("to", t, now)?,
        None => now,
    };
    if from >= to {
        return Err(bad("from must be before to".into()));
    }
    let (table, time) = match q.resolution.as_deref().unwrap_or("raw") {
        "raw" => ("readings", "ts"),
        "1m" => ("readings_1m", "bucket"),
        "1h" => ("readings_1h", "bucket"),
        "1d" => ("readings_1d", "bucket"),
        r => {
            return Err(bad(format!(
                "resolution {r:?} is not one of raw, 1m, 1h, 1d"
            )));
        }
    };
    let format = match q.format.as_deref().unwrap_or("parquet") {
        "parquet" => Format::Parquet,
        "arrow" => Format::Arrow,
        "csv" => Format::Csv,
        f => {
            return Err(bad(format!(
                "format {f:?} is not one of parquet, arrow, csv"
            )));
        }
    };
    let mut sql = format!(
        "SELECT * FROM {table} WHERE {time} >= to_timestamp_nanos({from}) \
         AND {time} < to_timestamp_nanos({to})"
    );
    if let Some(devices) = q.device.as_deref().filter(|d| !d.trim().is_empty()) {
        let ids = device_ids(devices)?;
        access.check_devices(ids.iter().map(String::as_str))?;
        let list: Vec<String> = ids.iter().map(|d| sql_str(d)).collect();
        sql.push_str(&format!(" AND device_id IN ({})", list.join(", ")));
    }
    if let Some(p) = q.prefix.as_deref().filter(|p| !p.is_empty()) {
        if !p
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.:-".contains(&b))
        {
            return Err(bad(format!("prefix {p:?} holds characters no plug id has")));
        }
        sql.push_str(&format!(" AND starts_with(device_id, '{p}')"));
    }
    let run = crate::query::Run {
        deadline: app.export_deadline,
        max_rows: None,
        started,
    };
    let mut resp = stream_sql(&app, &access, &sql, format, run).await?;
    let name = format!(
        "attachment; filename=\"wattdb-{}-{}-{}.{}\"",
        q.resolution.as_deref().unwrap_or("raw"),
        from,
        to,
        format.extension()
    );
    if let Ok(v) = HeaderValue::from_str(&name) {
        resp.headers_mut().insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(resp)
}
