//! `GET /api/v1/series`: a dashboard series, at the coarsest resolution that serves the
//! step.
//!
//! The step (`auto` by default) picks the table: `readings_1d` when it is a whole
//! number of days in UTC, `readings_1h` for whole hours (and for days in a zone whose
//! offset is whole hours, such as `Europe/Berlin` or `+02:00`, with days of 23 and 25
//! hours at DST changes), `readings_1m` for whole minutes, else `readings`.
//! Rollup rows exist only for persisted readings, so the range splits at the oldest
//! reading not yet persisted (rounded down to the table's bucket): before it the
//! rollup rows answer, from it on the raw readings (buffer and files), aggregated the
//! same way; a step bucket that straddles the split combines both. The series is thus
//! current to the last acknowledged reading. Both are plain scans; the step buckets
//! are aggregated here.

use std::collections::BTreeMap;

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::{Float64Type, Int64Type, TimestampNanosecondType};
use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{Value, json};
use wattdb_engine::rollup::Resolution;
use wattdb_engine::rollups::tier_of;

use crate::AppState;
use crate::dashboard::rfc3339;
use crate::error::ApiError;
use crate::params::{bad, device_ids, parse_duration_ns, parse_time, sql_str};

const S: i64 = 1_000_000_000;
/// `auto` picks the smallest of these steps that gives at most this many points.
const AUTO_POINTS: i64 = 1_000;
const NICE_STEPS_S: [i64; 17] = [
    1,
    5,
    10,
    30,
    60,
    300,
    600,
    900,
    1_800,
    3_600,
    7_200,
    10_800,
    21_600,
    43_200,
    86_400,
    7 * 86_400,
    30 * 86_400,
];
/// Most points a series may have (per plug and field).
const MAX_POINTS: i64 = 20_000;
/// The longest step, about ten years (times are at most 2200, so bucket arithmetic
/// stays far from overflow).
const MAX_STEP_NS: i64 = 3_660 * 86_400 * S;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeriesQuery {
    device: Option<String>,
    from: Option<String>,
    to: Option<String>,
    step: Option<String>,
    fields: Option<String>,
    agg: Option<String>,
    fill: Option<String>,
    tz: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Agg {
    Avg,
    Min,
    Max,
    Sum,
    Last,
    Energy,
}

impl Agg {
    fn parse(s: &str) -> Result<Agg, ApiError> {
        Ok(match s {
            "avg" | "mean" => Agg::Avg,
            "min" => Agg::Min,
            "max" => Agg::Max,
            "sum" => Agg::Sum,
            "last" => Agg::Last,
            "energy" => Agg::Energy,
            _ => {
                return Err(bad(format!(
                    "agg {s:?} is not one of avg, min, max, sum, last, energy"
                )));
            }
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fill {
    None,
    Null,
    Previous,
    Linear,
}

const DAY_NS: i64 = 86_400 * S;

/// The time zone whose local time step buckets follow.
#[derive(Debug, Clone, Copy)]
enum Zone {
    /// A fixed offset east of UTC, in nanoseconds (UTC is 0).
    Fixed(i64),
    /// A named zone (IANA), whose offset changes with daylight saving time.
    Named(chrono_tz::Tz),
}

/// `UTC`, `Z`, a fixed offset `+02:00` / `-05:30`, or an IANA zone `Europe/Berlin`.
fn parse_tz(s: &str) -> Result<Zone, ApiError> {
    let s = s.trim();
    if s.eq_ignore_ascii_case("utc") || s == "Z" {
        return Ok(Zone::Fixed(0));
    }
    let err = || {
        bad(format!(
            "tz {s:?} is not UTC, a fixed offset like +02:00 or a time zone like Europe/Berlin"
        ))
    };
    let (sign, rest) = match s.as_bytes().first() {
        Some(b'+') => (1, &s[1..]),
        Some(b'-') => (-1, &s[1..]),
        _ => {
            return s
                .parse::<chrono_tz::Tz>()
                .map(Zone::Named)
                .map_err(|_| err());
        }
    };
    let (h, m) = rest.split_once(':').ok_or_else(err)?;
    let (h, m): (i64, i64) = (h.parse().map_err(|_| err())?, m.parse().map_err(|_| err())?);
    if !(0..=14).contains(&h) || !(0..60).contains(&m) {
        return Err(err());
    }
    Ok(Zone::Fixed(sign * (h * 3_600 + m * 60) * S))
}

impl Zone {
    /// Nanoseconds east of UTC at `t`.
    fn offset_at(self, t: i64) -> i64 {
        use chrono::{Offset, TimeZone};
        match self {
            Zone::Fixed(o) => o,
            Zone::Named(tz) => {
                let utc = chrono::DateTime::from_timestamp_nanos(t).naive_utc();
                i64::from(tz.offset_from_utc_datetime(&utc).fix().local_minus_utc()) * S
            }
        }
    }

    /// Start of the step bucket holding `t`: steps of whole days start at local
    /// midnight (days of 23 or 25 hours included), shorter steps at multiples of the
    /// step in local time.
    fn bucket_start(self, t: i64, step: i64) -> i64 {
        let off = self.offset_at(t);
        let local = (t + off).div_euclid(step) * step;
        match self {
            Zone::Named(tz) if step % DAY_NS == 0 => {
                let date = chrono::DateTime::from_timestamp_nanos(local).date_naive();
                let midnight = date.and_hms_opt(0, 0, 0).unwrap_or_default();
                chrono::TimeZone::from_local_datetime(&tz, &midnight)
                    .earliest()
                    .and_then(|d| d.timestamp_nanos_opt())
                    // Midnight skipped by a DST change: the bucket starts at 01:00.
                    .unwrap_or(local - off + 3_600 * S)
            }
            _ => local - off,
        }
    }

    /// Start of the bucket after the one starting at `b`.
    fn next_bucket(self, b: i64, step: i64) -> i64 {
        match self {
            // A day may be 23 or 25 hours long: land well inside the next bucket.
            Zone::Named(_) if step % DAY_NS == 0 => {
                self.bucket_start(b + step + 3 * 3_600 * S, step)
            }
            _ => self.bucket_start(b + step, step),
        }
    }

    /// The table that serves `step` over `[from, to]`: the coarsest whose buckets
    /// never straddle a step bucket.
    fn table_for(self, step: i64, from: i64, to: i64) -> Option<Resolution> {
        let offsets = [self.offset_at(from), self.offset_at(to)];
        [Resolution::Day, Resolution::Hour, Resolution::Minute]
            .into_iter()
            .find(|r| {
                let w = r.width_ns();
                step % w == 0
                    && offsets.iter().all(|o| o % w == 0)
                    // A day of a named zone is not always 24 hours.
                    && !(matches!(self, Zone::Named(_)) && *r == Resolution::Day)
            })
    }
}

/// One step bucket of one plug: partial aggregates, combinable across the two parts.
#[derive(Debug, Clone, Copy)]
struct Cell {
    n: i64,
    sum: f64,
    min: f64,
    max: f64,
    last: f64,
    last_ts: i64,
    energy: f64,
}

impl Cell {
    fn merge(&mut self, o: &Cell) {
        self.n += o.n;
        self.sum += o.sum;
        self.min = self.min.min(o.min);
        self.max = self.max.max(o.max);
        if o.last_ts > self.last_ts {
            (self.last, self.last_ts) = (o.last, o.last_ts);
        }
        self.energy += o.energy;
    }

    fn value(&self, agg: Agg) -> f64 {
        match agg {
            Agg::Avg => self.sum / self.n as f64,
            Agg::Min => self.min,
            Agg::Max => self.max,
            Agg::Sum => self.sum,
            Agg::Last => self.last,
            Agg::Energy => self.energy,
        }
    }
}

/// `GET /api/v1/series`.
pub async fn series(
    State(app): State<AppState>,
    axum::Extension(access): axum::Extension<crate::auth::Access>,
    query: Result<Query<SeriesQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) = query?;
    let now = crate::now_ns();
    let devices = device_ids(q.device.as_deref().unwrap_or(""))?;
    if devices.is_empty() {
        return Err(bad(
            "device: give one or more plug ids, comma-separated".into()
        ));
    }
    access.check_devices(devices.iter().map(String::as_str))?;
    let _slot = app.query_slot()?;
    let to = match &q.to {
        Some(t) => parse_time("to", t, now)?,
        None => now,
    };
    let from = match &q.from {
        Some(t) => parse_time("from", t, now)?,
        None => to - 86_400 * S,
    };
    if from >= to {
        return Err(bad(format!(
            "from ({}) must be before to ({})",
            rfc3339(from),
            rfc3339(to)
        )));
    }
    let agg = Agg::parse(q.agg.as_deref().unwrap_or("avg"))?;
    let fill = match q.fill.as_deref().unwrap_or("none") {
        "none" => Fill::None,
        "null" => Fill::Null,
        "previous" => Fill::Previous,
        "linear" => Fill::Linear,
        f => {
            return Err(bad(format!(
                "fill {f:?} is not one of none, null, previous, linear"
            )));
        }
    };
    let zone = parse_tz(q.tz.as_deref().unwrap_or("UTC"))?;
    let fields: Vec<&str> = match agg {
        Agg::Energy => vec!["energy_wh"],
        _ => {
            let f: Vec<&str> = q
                .fields
                .as_deref()
                .unwrap_or("power")
                .split(',')
                .map(str::trim)
                .collect();
            for x in &f {
                if !["voltage", "current", "power"].contains(x) {
                    return Err(bad(format!(
                        "fields: {x:?} is not one of voltage, current, power"
                    )));
                }
            }
            f
        }
    };
    let step = match q.step.as_deref().unwrap_or("auto") {
        "auto" => {
            let span = to - from;
            NICE_STEPS_S
                .iter()
                .map(|s| s * S)
                .find(|s| span / s <= AUTO_POINTS)
                .unwrap_or(30 * 86_400 * S)
        }
        s => parse_duration_ns(s)
            .map_err(|e| bad(format!("step: {e}")))
            .and_then(|step| {
                if step > MAX_STEP_NS {
                    Err(bad(format!("step: {s:?} is longer than 3660d")))
                } else {
                    Ok(step)
                }
            })?,
    };
    let points = (to - from) / step + 2;
    if points > MAX_POINTS {
        return Err(bad(format!(
            "{points} points per series are more than {MAX_POINTS}; use a larger step"
        )));
    }
    let table = zone.table_for(step, from, to);
    // Whole step buckets: from the one holding `from` to the one holding `to`.
    let first_bucket = zone.bucket_start(from, step);
    let end = zone.next_bucket(zone.bucket_start(to - 1, step), step);
    // Rollup rows answer the buckets that end before the oldest unpersisted reading.
    let split = match (table, app.engine.unpersisted_from()) {
        (Some(r), Some(t)) => r.bucket_start(t).clamp(first_bucket, end),
        (Some(_), None) => end,
        (None, _) => first_bucket,
    };
    let in_list = devices
        .iter()
        .map(|d| sql_str(d))
        .collect::<Vec<_>>()
        .join(", ");
    let bucket_of = |t: i64| zone.bucket_start(t, step);
    let cap = 300 * S;
    let mut cells: BTreeMap<(String, usize), BTreeMap<i64, Cell>> = BTreeMap::new();
    let mut add = |device: &str, k: usize, t: i64, cell: Cell| {
        cells
            .entry((device.to_owned(), k))
            .or_default()
            .entry(bucket_of(t))
            .and_modify(|c| c.merge(&cell))
            .or_insert(cell);
    };
    // The rollup rows come straight from the files (the page index finds the plugs'
    // rows) and are aggregated here: cheaper than planning and running a grouped
    // aggregate for the few thousand rows of a chart.
    if let Some(r) = table
        && split > first_bucket
    {
        let mut columns = vec!["device_id", "bucket", "count", "last_ts", "energy_wh"];
        let value_columns: Vec<Option<[String; 4]>> = fields
            .iter()
            .map(|f| {
                (*f != "energy_wh")
                    .then(|| ["sum", "min", "max", "last"].map(|a| format!("{f}_{a}")))
            })
            .collect();
        for c in value_columns.iter().flatten().flatten() {
            if !columns.contains(&c.as_str()) {
                columns.push(c);
            }
        }
        let deadline = app.query.deadline();
        let rows = tokio::time::timeout(
            deadline,
            app.query
                .plug_rows(tier_of(r), &devices, first_bucket, split, &columns),
        )
        .await
        .map_err(|_| ApiError::Query(wattdb_query::Error::Deadline(deadline)))??;
        if let Some(b) = rows {
            let col = |name: &str| columns.iter().position(|c| *c == name).unwrap_or(0);
            let dev = b.column(0).as_string::<i32>();
            let t = b.column(1).as_primitive::<TimestampNanosecondType>();
            let n = b.column(2).as_primitive::<Int64Type>();
            let last_ts = b.column(3).as_primitive::<TimestampNanosecondType>();
            let f = |i: usize| b.column(i).as_primitive::<Float64Type>();
            let energy = f(4);
            for (k, names) in value_columns.iter().enumerate() {
                let values = names
                    .as_ref()
                    .map(|[s, lo, hi, last]| (f(col(s)), f(col(lo)), f(col(hi)), f(col(last))));
                for i in 0..b.num_rows() {
                    let (sum, min, max, last) = match &values {
                        Some((s, lo, hi, last)) => {
                            (s.value(i), lo.value(i), hi.value(i), last.value(i))
                        }
                        // Energy: only `energy` counts.
                        None => (0.0, 0.0, 0.0, 0.0),
                    };
                    let cell = Cell {
                        n: n.value(i),
                        sum,
                        min,
                        max,
                        last,
                        last_ts: last_ts.value(i),
                        energy: energy.value(i),
                    };
                    add(dev.value(i), k, t.value(i), cell);
                }
            }
        }
    }
    if split < end {
        // Raw readings from the split on, and those up to the gap cap before it
        // (predecessors of the first intervals).
        let sql = raw_rows(&fields, &in_list, split.saturating_sub(cap), end);
        let batches = run(&app, &sql).await?;
        // Per plug: (time, batch, row).
        let mut by_plug: BTreeMap<&str, Vec<(i64, usize, usize)>> = BTreeMap::new();
        for (j, b) in batches.iter().enumerate() {
            let dev = b.column(0).as_string::<i32>();
            let t = b.column(1).as_primitive::<Int64Type>();
            for i in 0..b.num_rows() {
                by_plug
                    .entry(dev.value(i))
                    .or_default()
                    .push((t.value(i), j, i));
            }
        }
        let value = |j: usize, col: usize, i: usize| {
            batches[j]
                .column(col)
                .as_primitive::<Float64Type>()
                .value(i)
        };
        for (device, mut rows) in by_plug {
            rows.sort_by_key(|r| r.0);
            let mut prev: Option<(i64, f64)> = None;
            for (t, j, i) in rows {
                let p = value(j, 2, i);
                // The interval from the previous reading is booked at its end, as in
                // the rollups.
                let energy = match prev {
                    Some((pt, pp)) if t - pt <= cap => {
                        (pp + p) / 2.0 * ((t - pt) as f64 / 1e9) / 3600.0
                    }
                    _ => 0.0,
                };
                prev = Some((t, p));
                if t < split {
                    continue;
                }
                for k in 0..fields.len() {
                    let v = value(j, 3 + k, i);
                    let cell = Cell {
                        n: 1,
                        sum: v,
                        min: v,
                        max: v,
                        last: v,
                        last_ts: t,
                        energy,
                    };
                    add(device, k, t, cell);
                }
            }
        }
    }
    let buckets: Vec<i64> =
        std::iter::successors(Some(first_bucket), |&b| Some(zone.next_bucket(b, step)))
            .take_while(|&b| b < end)
            .collect();
    let mut series = Vec::new();
    for d in &devices {
        for (k, field) in fields.iter().enumerate() {
            let data = cells.remove(&(d.clone(), k)).unwrap_or_default();
            let values: Vec<(i64, Option<f64>)> = match fill {
                Fill::None => data.iter().map(|(b, c)| (*b, Some(c.value(agg)))).collect(),
                _ => filled(&buckets, &data, agg, fill),
            };
            let points: Vec<Value> = values
                .into_iter()
                .map(|(b, v)| json!([rfc3339(b), v.filter(|v| v.is_finite())]))
                .collect();
            series.push(json!({"device_id": d, "field": field, "points": points}));
        }
    }
    Ok(Json(json!({
        "from": rfc3339(from),
        "to": rfc3339(to),
        "step": step_name(step),
        "step_s": step / S,
        "resolution": table.map_or("raw", Resolution::name),
        "agg": q.agg.as_deref().unwrap_or("avg"),
        "series": series,
    })))
}

fn step_name(step: i64) -> String {
    let s = step / S;
    for (unit, w) in [("d", 86_400), ("h", 3_600), ("m", 60)] {
        if s % w == 0 {
            return format!("{}{unit}", s / w);
        }
    }
    format!("{s}s")
}

/// Every bucket, with the missing ones filled.
fn filled(
    buckets: &[i64],
    data: &BTreeMap<i64, Cell>,
    agg: Agg,
    fill: Fill,
) -> Vec<(i64, Option<f64>)> {
    let known: Vec<(i64, Option<f64>)> = buckets
        .iter()
        .map(|b| (*b, data.get(b).map(|c| c.value(agg))))
        .collect();
    match fill {
        Fill::None | Fill::Null => known,
        Fill::Previous => {
            let mut last = None;
            known
                .into_iter()
                .map(|(b, v)| {
                    if v.is_some() {
                        last = v;
                    }
                    (b, v.or(last))
                })
                .collect()
        }
        Fill::Linear => {
            let mut out = known;
            let mut prev: Option<usize> = None;
            for i in 0..out.len() {
                let Some(v) = out[i].1 else {
                    continue;
                };
                if let Some(p) = prev
                    && let Some(pv) = out[p].1
                {
                    let (pb, b) = (out[p].0, out[i].0);
                    for slot in &mut out[p + 1..i] {
                        let t = (slot.0 - pb) as f64 / (b - pb) as f64;
                        slot.1 = Some(pv + (v - pv) * t);
                    }
                }
                prev = Some(i);
            }
            out
        }
    }
}

/// The raw readings of the plugs with `ts` in `[from, to)`: plug, time, power, then
/// the value of each field.
fn raw_rows(fields: &[&str], devices: &str, from: i64, to: i64) -> String {
    let values: Vec<String> = fields
        .iter()
        .enumerate()
        .map(|(k, &f)| {
            let v = if f == "energy_wh" {
                "CAST(0.0 AS DOUBLE)"
            } else {
                f
            };
            format!("{v} AS v{k}")
        })
        .collect();
    format!(
        "SELECT device_id, CAST(ts AS BIGINT) AS t, power AS p, {} FROM readings \
         WHERE device_id IN ({devices}) \
         AND ts >= to_timestamp_nanos({from}) AND ts < to_timestamp_nanos({to})",
        values.join(", ")
    )
}

/// Runs `sql` under the query deadline and collects the batches.
async fn run(app: &AppState, sql: &str) -> Result<Vec<RecordBatch>, ApiError> {
    let deadline = app.query.deadline();
    let work = async {
        let mut stream = app.query.sql(sql).await.map_err(ApiError::Query)?;
        let mut out = Vec::new();
        while let Some(b) = stream.next().await {
            out.push(b.map_err(|e| ApiError::Query(wattdb_query::Error::from_execution(e)))?);
        }
        Ok(out)
    };
    tokio::time::timeout(deadline, work)
        .await
        .map_err(|_| ApiError::Query(wattdb_query::Error::Deadline(deadline)))?
}
