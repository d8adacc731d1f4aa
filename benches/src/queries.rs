//! `wattdb query-bench`: the dashboard and analytics questions of the query issue,
//! asked over HTTP of a running WattDB, end to end (request, planning, execution,
//! encoding, response), each many times.
//!
//! The questions, about the data the server holds (for example a 7-day backfill of
//! 1,000 plugs by `wattdb loadgen --backfill 7d`), relative to the newest reading:
//!
//! - `plug_24h_1m`: one plug's last 24 h at 1 minute, average power
//!   (`GET /api/v1/series`, served by `readings_1m`);
//! - `plug_all_1h`: one plug's whole range at 1 hour (`readings_1h`);
//! - `fleet_daily_energy`: energy per plug per day for all plugs (SQL over
//!   `readings_1d`);
//! - `latest_all`: the latest reading of every plug (`GET /api/v1/latest`);
//! - `fleet_1m_last_hour`: fleet-wide total power per minute over the last hour (SQL
//!   over `readings_1m`).

use std::time::{Duration, Instant};

use serde::Serialize;

/// Settings of a query benchmark run.
#[derive(Debug, Clone)]
pub struct QueryBenchArgs {
    pub url: String,
    /// The plug of the single-plug questions; `None`: the first plug.
    pub plug: Option<String>,
    /// Timed runs per question (after two untimed ones).
    pub runs: usize,
    /// API token with the read scope.
    pub token: Option<String>,
}

/// Latencies of one question, in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct QueryTiming {
    pub name: &'static str,
    pub request: String,
    pub runs: usize,
    pub median_ms: f64,
    pub p90_ms: f64,
    pub min_ms: f64,
    /// Bytes of the last response.
    pub bytes: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct QueryBenchReport {
    pub plugs: usize,
    pub plug: String,
    pub first_seen: String,
    pub last_seen: String,
    pub queries: Vec<QueryTiming>,
}

#[derive(Debug, thiserror::Error)]
pub enum QueryBenchError {
    #[error("{request}: {message}")]
    Request { request: String, message: String },
    #[error("the server holds no plugs: load some data first (wattdb loadgen --backfill 7d)")]
    NoData,
}

enum Request {
    Get(String),
    Sql(String),
}

impl Request {
    fn describe(&self) -> String {
        match self {
            Request::Get(p) => format!("GET {p}"),
            Request::Sql(s) => format!("POST /api/v1/query {s}"),
        }
    }
}

fn call(agent: &ureq::Agent, url: &str, r: &Request) -> Result<Vec<u8>, QueryBenchError> {
    let resp = match r {
        Request::Get(path) => agent.get(&format!("{url}{path}")).call(),
        Request::Sql(sql) => agent
            .post(&format!("{url}/api/v1/query"))
            .set("Content-Type", "application/json")
            .send_string(&serde_json::json!({ "sql": sql }).to_string()),
    };
    let err = |message: String| QueryBenchError::Request {
        request: r.describe(),
        message,
    };
    match resp {
        Ok(resp) => {
            let mut body = Vec::new();
            std::io::Read::read_to_end(&mut resp.into_reader(), &mut body)
                .map_err(|e| err(e.to_string()))?;
            Ok(body)
        }
        Err(ureq::Error::Status(code, resp)) => Err(err(format!(
            "{code}: {}",
            resp.into_string().unwrap_or_default()
        ))),
        Err(e) => Err(err(e.to_string())),
    }
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Runs every question `runs` times and reports their latencies.
pub fn run(args: &QueryBenchArgs) -> Result<QueryBenchReport, QueryBenchError> {
    let agent = crate::http_agent(args.token.as_deref(), Duration::from_secs(300));
    let url = args.url.trim_end_matches('/');
    let devices: serde_json::Value =
        serde_json::from_slice(&call(&agent, url, &Request::Get("/api/v1/devices".into()))?)
            .map_err(|e| QueryBenchError::Request {
                request: "GET /api/v1/devices".into(),
                message: e.to_string(),
            })?;
    let devices = devices.as_array().cloned().unwrap_or_default();
    let first = devices.first().ok_or(QueryBenchError::NoData)?;
    let field = |d: &serde_json::Value, k: &str| d[k].as_str().unwrap_or_default().to_owned();
    let plug = args
        .plug
        .clone()
        .unwrap_or_else(|| field(first, "device_id"));
    let last_seen = devices
        .iter()
        .map(|d| field(d, "last_seen"))
        .max()
        .unwrap_or_default();
    let first_seen = devices
        .iter()
        .map(|d| field(d, "first_seen"))
        .min()
        .unwrap_or_default();
    let last = chrono::DateTime::parse_from_rfc3339(&last_seen)
        .map_err(|e| QueryBenchError::Request {
            request: "GET /api/v1/devices".into(),
            message: format!("last_seen {last_seen:?}: {e}"),
        })?
        .with_timezone(&chrono::Utc);
    let iso =
        |t: chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let end = last + chrono::Duration::seconds(1);
    let questions = [
        (
            "plug_24h_1m",
            Request::Get(format!(
                "/api/v1/series?device={plug}&from={}&to={}&step=1m&agg=avg",
                iso(end - chrono::Duration::hours(24)),
                iso(end)
            )),
        ),
        (
            "plug_all_1h",
            Request::Get(format!(
                "/api/v1/series?device={plug}&from={first_seen}&to={}&step=1h&agg=avg",
                iso(end)
            )),
        ),
        (
            "fleet_daily_energy",
            Request::Sql(
                "SELECT device_id, bucket AS day, sum(energy_wh) AS wh FROM readings_1d \
                 GROUP BY device_id, bucket ORDER BY device_id, day"
                    .into(),
            ),
        ),
        ("latest_all", Request::Get("/api/v1/latest".into())),
        (
            "fleet_1m_last_hour",
            Request::Sql(format!(
                "SELECT bucket, sum(power_sum / count) AS total_w FROM readings_1m \
                 WHERE bucket >= TIMESTAMP '{}' GROUP BY bucket ORDER BY bucket",
                iso(end - chrono::Duration::hours(1))
            )),
        ),
    ];
    let mut queries = Vec::new();
    for (name, request) in questions {
        let mut bytes = 0;
        for _ in 0..2 {
            bytes = call(&agent, url, &request)?.len();
        }
        let mut ms = Vec::with_capacity(args.runs);
        for _ in 0..args.runs.max(1) {
            let t = Instant::now();
            bytes = call(&agent, url, &request)?.len();
            ms.push(t.elapsed().as_secs_f64() * 1e3);
        }
        ms.sort_by(f64::total_cmp);
        queries.push(QueryTiming {
            name,
            request: request.describe(),
            runs: ms.len(),
            median_ms: percentile(&ms, 0.5),
            p90_ms: percentile(&ms, 0.9),
            min_ms: ms[0],
            bytes,
        });
    }
    Ok(QueryBenchReport {
        plugs: devices.len(),
        plug,
        first_seen,
        last_seen,
        queries,
    })
}

impl QueryBenchReport {
    pub fn print_human(&self) {
        println!(
            "{} plugs, {} to {}; single-plug questions about {}",
            self.plugs, self.first_seen, self.last_seen, self.plug
        );
        for q in &self.queries {
            println!(
                "{:<20} median {:>9.2} ms  p90 {:>9.2} ms  min {:>9.2} ms  {:>9} bytes  ({} runs)",
                q.name, q.median_ms, q.p90_ms, q.min_ms, q.bytes, q.runs
            );
        }
    }
}
