//! `GET /metrics`: Prometheus text format.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use wattdb_engine::histogram::Histogram;

use crate::AppState;
use crate::error::ApiError;

/// Write paths, as `path` label values.
#[derive(Debug, Clone, Copy)]
pub enum WritePath {
    LineProtocol,
    Json,
}

const PATHS: [&str; 2] = ["lp", "json"];
/// Reasons a write is rejected, as `reason` label values.
const REASONS: [&str; 7] = [
    "bad_request",
    "body",
    "backpressure",
    "auth",
    "rate_limited",
    "wal_failed",
    "internal",
];

/// Counters kept by the API layer; the engine keeps its own.
#[derive(Debug, Default)]
pub struct ApiMetrics {
    ingested: [AtomicU64; PATHS.len()],
    write_requests: [AtomicU64; PATHS.len()],
    rejected: [AtomicU64; REASONS.len()],
    queries_ok: AtomicU64,
    queries_failed: AtomicU64,
    pub query_latency: Histogram,
    /// Open `/api/v1/live` WebSockets.
    pub live_subscribers: AtomicU64,
}

impl ApiMetrics {
    pub fn write_ok(&self, path: WritePath, rows: usize) {
        self.write_requests[path as usize].fetch_add(1, Ordering::Relaxed);
        self.ingested[path as usize].fetch_add(rows as u64, Ordering::Relaxed);
    }

    pub fn write_failed(&self, path: WritePath, error: &ApiError) {
        self.write_requests[path as usize].fetch_add(1, Ordering::Relaxed);
        let i = REASONS
            .iter()
            .position(|r| *r == error.reason())
            .unwrap_or(REASONS.len() - 1);
        self.rejected[i].fetch_add(1, Ordering::Relaxed);
    }

    pub fn query_done(&self, ok: bool, elapsed: std::time::Duration) {
        let c = if ok {
            &self.queries_ok
        } else {
            &self.queries_failed
        };
        c.fetch_add(1, Ordering::Relaxed);
        self.query_latency.record(elapsed);
    }
}

pub(crate) fn metric(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

pub async fn metrics(
    State(app): State<AppState>,
    axum::Extension(access): axum::Extension<crate::auth::Access>,
) -> Response {
    if let Err(e) = access.check_fleet() {
        return e.into_response();
    }
    let m = &app.metrics;
    let e = app.engine.stats();
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let mut out = String::with_capacity(8 * 1024);

    metric(
        &mut out,
        "wattdb_ingested_readings_total",
        "counter",
        "Readings acknowledged, by write path.",
    );
    for (i, p) in PATHS.iter().enumerate() {
        let _ = writeln!(
            out,
            "wattdb_ingested_readings_total{{path=\"{p}\"}} {}",
            load(&m.ingested[i])
        );
    }
    if let Some(mqtt) = &app.mqtt {
        let _ = writeln!(
            out,
            "wattdb_ingested_readings_total{{path=\"mqtt\"}} {}",
            load(&mqtt.readings)
        );
    }
    metric(
        &mut out,
        "wattdb_write_requests_total",
        "counter",
        "Write requests, by write path.",
    );
    for (i, p) in PATHS.iter().enumerate() {
        let _ = writeln!(
            out,
            "wattdb_write_requests_total{{path=\"{p}\"}} {}",
            load(&m.write_requests[i])
        );
    }
    metric(
        &mut out,
        "wattdb_write_rejected_total",
        "counter",
        "Write requests refused, by reason.",
    );
    for (i, r) in REASONS.iter().enumerate() {
        let _ = writeln!(
            out,
            "wattdb_write_rejected_total{{reason=\"{r}\"}} {}",
            load(&m.rejected[i])
        );
    }
    metric(
        &mut out,
        "wattdb_write_queue_depth",
        "gauge",
        "Batches waiting for the WAL writer.",
    );
    let _ = writeln!(out, "wattdb_write_queue_depth {}", app.engine.queue_depth());
    metric(
        &mut out,
        "wattdb_wal_batches_total",
        "counter",
        "Batches committed to the WAL.",
    );
    let _ = writeln!(
        out,
        "wattdb_wal_batches_total {}",
        e.write_to_queryable.count()
    );
    metric(
        &mut out,
        "wattdb_wal_fsyncs_total",
        "counter",
        "WAL group commits (one write and fdatasync each).",
    );
    let _ = writeln!(out, "wattdb_wal_fsyncs_total {}", e.fsync_latency.count());
    metric(
        &mut out,
        "wattdb_wal_fsync_seconds",
        "histogram",
        "Duration of a WAL write and fdatasync.",
    );
    e.fsync_latency
        .render(&mut out, "wattdb_wal_fsync_seconds", "");
    metric(
        &mut out,
        "wattdb_write_to_queryable_seconds",
        "histogram",
        "From a batch entering the write queue to it being durable and queryable.",
    );
    e.write_to_queryable
        .render(&mut out, "wattdb_write_to_queryable_seconds", "");
    metric(
        &mut out,
        "wattdb_wal_poisoned",
        "gauge",
        "1 once a WAL write or fsync failed (writes refused until restart).",
    );
    let _ = writeln!(
        out,
        "wattdb_wal_poisoned {}",
        u8::from(app.engine.is_poisoned())
    );
    metric(
        &mut out,
        "wattdb_wal_replayed_readings",
        "gauge",
        "Readings replayed from the WAL at start.",
    );
    let _ = writeln!(
        out,
        "wattdb_wal_replayed_readings {}",
        load(&e.replayed_rows)
    );
    metric(
        &mut out,
        "wattdb_rollup_tails",
        "gauge",
        "Plugs whose rollup tail (newest persisted reading, counter value and tags, about 200 bytes each) is held in memory.",
    );
    let _ = writeln!(out, "wattdb_rollup_tails {}", load(&e.rollup_tails));
    let (rows, bytes) = app.engine.buffer_usage();
    metric(
        &mut out,
        "wattdb_buffer_readings",
        "gauge",
        "Readings held in the in-memory buffer.",
    );
    let _ = writeln!(out, "wattdb_buffer_readings {rows}");
    metric(
        &mut out,
        "wattdb_buffer_bytes",
        "gauge",
        "Memory held by the in-memory buffer.",
    );
    let _ = writeln!(out, "wattdb_buffer_bytes {bytes}");
    metric(
        &mut out,
        "wattdb_persisting_bytes",
        "gauge",
        "Memory held by readings being persisted (frozen out of the buffer).",
    );
    let _ = writeln!(out, "wattdb_persisting_bytes {}", app.engine.frozen_bytes());
    for (name, help, v) in [
        (
            "wattdb_persisted_readings_total",
            "Readings written to Parquet files and committed to the manifest.",
            &e.persisted_rows,
        ),
        (
            "wattdb_persisted_files_total",
            "Parquet files written and committed.",
            &e.persisted_files,
        ),
        (
            "wattdb_persisted_bytes_total",
            "Bytes of Parquet files written and committed.",
            &e.persisted_bytes,
        ),
        (
            "wattdb_persist_errors_total",
            "Persist cycles that failed (object store errors and timeouts included); the readings stay in the WAL and are retried.",
            &e.persist_errors,
        ),
    ] {
        metric(&mut out, name, "counter", help);
        let _ = writeln!(out, "{name} {}", load(v));
    }
    metric(
        &mut out,
        "wattdb_persist_seconds",
        "histogram",
        "Duration of a persist cycle (sort, encode, upload, manifest commit).",
    );
    e.persist_duration
        .render(&mut out, "wattdb_persist_seconds", "");
    let last = e.last_persisted_ts.load(Ordering::Relaxed);
    if last != i64::MIN {
        metric(
            &mut out,
            "wattdb_persist_lag_seconds",
            "gauge",
            "Now minus the newest reading time persisted to Parquet.",
        );
        let lag = (crate::now_ns() - last) as f64 / 1e9;
        let _ = writeln!(out, "wattdb_persist_lag_seconds {lag:.3}");
    }
    for (name, help, value) in [
        (
            "wattdb_compactions_total",
            "Compaction jobs done (each merges the small files of one partition).",
            &e.compactions,
        ),
        (
            "wattdb_compacted_files_total",
            "Parquet files replaced by compaction.",
            &e.compacted_files,
        ),
        (
            "wattdb_compaction_errors_total",
            "Compaction jobs that failed (the files stay as they were).",
            &e.compaction_errors,
        ),
        (
            "wattdb_rollup_bytes_total",
            "Bytes of rollup files (1m, 1h, 1d) written.",
            &e.rollup_bytes,
        ),
        (
            "wattdb_rollup_recomputed_plugs_total",
            "Plugs whose rollups a persist cycle recomputed from raw readings (late or rewritten readings, or the first cycle after a restart).",
            &e.rollup_recomputed_plugs,
        ),
        (
            "wattdb_rollup_new_plugs_total",
            "Plugs whose rollups a persist cycle started with nothing persisted before (no file read).",
            &e.rollup_new_plugs,
        ),
        (
            "wattdb_rollup_too_late_readings_total",
            "Readings stored raw but older than the late-data horizon, so not rolled up.",
            &e.rollup_too_late,
        ),
        (
            "wattdb_expired_files_total",
            "Parquet files removed by retention.",
            &e.expired_files,
        ),
    ] {
        metric(&mut out, name, "counter", help);
        let _ = writeln!(out, "{name} {}", load(value));
    }
    metric(
        &mut out,
        "wattdb_rollup_rows_total",
        "counter",
        "Rollup rows written, by resolution (a bucket extended or recomputed is written again).",
    );
    for (res, v) in ["1m", "1h", "1d"].iter().zip(&e.rollup_rows) {
        let _ = writeln!(
            out,
            "wattdb_rollup_rows_total{{resolution=\"{res}\"}} {}",
            load(v)
        );
    }
    metric(
        &mut out,
        "wattdb_live_subscribers",
        "gauge",
        "Open /api/v1/live WebSockets.",
    );
    let _ = writeln!(
        out,
        "wattdb_live_subscribers {}",
        app.metrics.live_subscribers.load(Ordering::Relaxed)
    );
    if let Some(c) = app.engine.store().cache_stats() {
        for (name, kind, help, value) in [
            (
                "wattdb_store_cache_hits_total",
                "counter",
                "Reads of Parquet files served from the local cache.",
                &c.hits,
            ),
            (
                "wattdb_store_cache_misses_total",
                "counter",
                "Parquet files fetched whole from the object store into the cache.",
                &c.misses,
            ),
            (
                "wattdb_store_cache_bytes",
                "gauge",
                "Bytes of Parquet files in the local cache.",
                &c.bytes,
            ),
        ] {
            metric(&mut out, name, kind, help);
            let _ = writeln!(out, "{name} {}", load(value));
        }
    }
    let manifest = app.engine.manifest();
    metric(
        &mut out,
        "wattdb_store_files",
        "gauge",
        "Live Parquet files in the manifest.",
    );
    let _ = writeln!(out, "wattdb_store_files {}", manifest.files.len());
    metric(
        &mut out,
        "wattdb_store_bytes",
        "gauge",
        "Bytes of live Parquet files in the manifest.",
    );
    let _ = writeln!(out, "wattdb_store_bytes {}", manifest.bytes());
    metric(
        &mut out,
        "wattdb_queries_total",
        "counter",
        "SQL queries, by outcome.",
    );
    let _ = writeln!(
        out,
        "wattdb_queries_total{{outcome=\"ok\"}} {}",
        load(&m.queries_ok)
    );
    let _ = writeln!(
        out,
        "wattdb_queries_total{{outcome=\"error\"}} {}",
        load(&m.queries_failed)
    );
    metric(
        &mut out,
        "wattdb_query_seconds",
        "histogram",
        "Duration of a query, from request to the last byte of the result.",
    );
    m.query_latency.render(&mut out, "wattdb_query_seconds", "");
    if let Some(mqtt) = &app.mqtt {
        crate::mqtt::render_metrics(&mut out, mqtt);
    }
    if let Some(rss) = resident_bytes() {
        metric(
            &mut out,
            "wattdb_process_resident_bytes",
            "gauge",
            "Resident memory of the WattDB process.",
        );
        let _ = writeln!(out, "wattdb_process_resident_bytes {rss}");
    }
    let mut resp = out.into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    resp
}

/// Resident set size from `/proc/self/statm` (Linux).
fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    let page = rustix::param::page_size() as u64;
    Some(pages * page)
}
