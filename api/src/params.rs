//! Query-string parameters shared by the read routes: plug lists, times, durations.

use crate::error::ApiError;

const S: i64 = 1_000_000_000;

/// A 400 with `msg`.
pub fn bad(msg: String) -> ApiError {
    ApiError::BadRequest(msg)
}

/// The plug ids of a `device=a,b` parameter: comma-separated, blanks dropped, each
/// checked to be a valid plug id.
pub fn device_ids(param: &str) -> Result<Vec<String>, ApiError> {
    let ids: Vec<String> = param
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .map(str::to_owned)
        .collect();
    for id in &ids {
        wattdb_engine::validate_device_id(id).map_err(|e| bad(format!("device {id:?}: {e}")))?;
    }
    Ok(ids)
}

/// `s` as an SQL string literal.
pub fn sql_str(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// The latest time a parameter may name: 2200-01-01T00:00:00Z (the earliest is 1970).
/// Bounded so that bucket arithmetic never overflows.
pub const MAX_TIME_NS: i64 = 7_258_118_400 * S;

/// A time parameter: RFC 3339, `now`, or `now-DURATION` / `now+DURATION`, between 1970
/// and 2200.
pub fn parse_time(name: &str, s: &str, now: i64) -> Result<i64, ApiError> {
    let t = parse_any_time(name, s, now)?;
    if !(0..=MAX_TIME_NS).contains(&t) {
        return Err(bad(format!(
            "{name}: {s:?} is outside 1970-01-01 to 2200-01-01"
        )));
    }
    Ok(t)
}

fn parse_any_time(name: &str, s: &str, now: i64) -> Result<i64, ApiError> {
    let s = s.trim();
    if let Some(rest) = s.strip_prefix("now") {
        if rest.is_empty() {
            return Ok(now);
        }
        let (sign, d) = match rest.as_bytes()[0] {
            b'-' => (-1, &rest[1..]),
            b'+' => (1, &rest[1..]),
            _ => {
                return Err(bad(format!(
                    "{name}: {s:?} is not now, now-24h or RFC 3339"
                )));
            }
        };
        let d = parse_duration_ns(d).map_err(|e| bad(format!("{name}: {e}")))?;
        return Ok(now.saturating_add(sign * d));
    }
    chrono::DateTime::parse_from_rfc3339(s)
        .ok()
        .and_then(|t| t.timestamp_nanos_opt())
        .ok_or_else(|| {
            bad(format!(
                "{name}: {s:?} is not an RFC 3339 time (2026-11-23T10:00:00Z), now or now-24h"
            ))
        })
}

/// `30s`, `5m`, `1h`, `7d` in nanoseconds.
pub fn parse_duration_ns(s: &str) -> Result<i64, String> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: i64 = n
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 30s, 5m, 1h or 7d"))?;
    let unit_s = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => return Err(format!("{s:?}: unknown unit {unit:?}; use s, m, h, d or w")),
    };
    n.checked_mul(unit_s)
        .and_then(|x| x.checked_mul(S))
        .filter(|&x| x > 0)
        .ok_or_else(|| format!("{s:?} is not a positive duration"))
}
