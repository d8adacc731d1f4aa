//! Dashboard routes end to end: `/api/v1/series` at every resolution against a
//! straightforward computation from the raw readings (read back with SQL), across
//! the boundary between persisted rollups and buffered readings; `/api/v1/latest` and
//! `/api/v1/devices`, before and after a restart.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::support::Server;

const S: i64 = 1_000_000_000;
/// 2026-11-22T21:00:00Z: the readings run to past midnight.
const T0: i64 = 1_795_381_200 * S;

fn lp(device: &str, ts: i64, power: f64, location: &str) -> String {
    format!(
        "power_metrics,device_id={device},location={location} voltage={:.1},current={:.3},power={power:.1},relay_state=true {ts}\n",
        225.0 + (ts / S % 100) as f64 / 10.0,
        power / 230.0
    )
}

/// Readings of two plugs every 10 s for four hours; plug-b is silent from 22:20 to
/// 22:50.
fn fixture() -> Vec<(String, i64, f64)> {
    let mut out = Vec::new();
    for k in 0..4 * 360 {
        let ts = T0 + k * 10 * S;
        out.push(("plug-a".to_owned(), ts, ((k * 37) % 3000) as f64 / 10.0));
        if !(80 * 6..110 * 6).contains(&k) {
            out.push(("plug-b".to_owned(), ts, ((k * 53) % 2000) as f64 / 10.0));
        }
    }
    out
}

fn write(server: &Server, rows: &[(String, i64, f64)], location: &str) {
    let body: String = rows
        .iter()
        .map(|(d, t, p)| lp(d, *t, *p, location))
        .collect();
    let (status, text) = server.write_lp(&body);
    assert_eq!(status, 204, "{text}");
}

/// `(device, ts) → (voltage, power)` as WattDB stores them.
fn stored(server: &Server) -> BTreeMap<(String, i64), (f64, f64)> {
    server
        .sql("SELECT device_id, CAST(ts AS BIGINT) AS t, voltage, power FROM readings")
        .iter()
        .map(|r| {
            (
                (
                    r["device_id"].as_str().unwrap().to_owned(),
                    r["t"].as_i64().unwrap(),
                ),
                (r["voltage"].as_f64().unwrap(), r["power"].as_f64().unwrap()),
            )
        })
        .collect()
}

/// The series straight from the definitions: buckets of `step` from the one holding
/// `from` to the one holding `to - 1`, each aggregating the readings in it; energy by
/// the trapezoid rule over intervals of at most 300 s, booked at their end.
fn expected(
    rows: &BTreeMap<(String, i64), (f64, f64)>,
    device: &str,
    field: &str,
    agg: &str,
    from: i64,
    to: i64,
    step: i64,
) -> BTreeMap<i64, f64> {
    let first = from.div_euclid(step) * step;
    let end = (to - 1).div_euclid(step) * step + step;
    let mut cells: BTreeMap<i64, Vec<(i64, f64, f64)>> = BTreeMap::new();
    let mut prev: Option<(i64, f64)> = None;
    for ((d, t), (v, p)) in rows {
        if d != device {
            continue;
        }
        let e = match prev {
            Some((pt, pp)) if t - pt <= 300 * S => {
                (pp + p) / 2.0 * ((t - pt) as f64 / 1e9) / 3600.0
            }
            _ => 0.0,
        };
        prev = Some((*t, *p));
        if *t >= first && *t < end {
            let value = if field == "voltage" { *v } else { *p };
            cells
                .entry(t.div_euclid(step) * step)
                .or_default()
                .push((*t, value, e));
        }
    }
    cells
        .into_iter()
        .map(|(b, xs)| {
            let vals = xs.iter().map(|x| x.1);
            let v = match agg {
                "avg" => vals.sum::<f64>() / xs.len() as f64,
                "min" => vals.fold(f64::INFINITY, f64::min),
                "max" => vals.fold(f64::NEG_INFINITY, f64::max),
                "sum" => vals.sum(),
                "last" => xs.last().unwrap().1,
                "energy" => xs.iter().map(|x| x.2).sum(),
                _ => unreachable!(),
            };
            (b, v)
        })
        .collect()
}

fn rfc(ns: i64) -> String {
    chrono::DateTime::from_timestamp_nanos(ns).to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
}

fn series(server: &Server, query: &str) -> Value {
    let (status, body) = server.get(&format!("/api/v1/series?{query}"));
    assert_eq!(status, 200, "{query}: {body}");
    serde_json::from_str(&body).unwrap()
}

fn points(v: &Value, k: usize) -> Vec<(String, Option<f64>)> {
    v["series"][k]["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p[0].as_str().unwrap().to_owned(), p[1].as_f64()))
        .collect()
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

#[test]
fn series_at_every_resolution_equal_a_computation_from_raw_readings() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let rows = fixture();
    let (old, new): (Vec<_>, Vec<_>) = rows.iter().cloned().partition(|r| r.1 < T0 + 3 * 3600 * S);
    write(&server, &old, "hall");
    let (status, body) = server.post("/api/v1/admin/persist", "application/json", b"");
    assert_eq!(status, 200, "{body}");
    // The last hour stays in the buffer, with late readings and a rewrite in persisted
    // time, so the series combine rollups and raw readings.
    write(&server, &new, "hall");
    let late: Vec<_> = (0..20)
        .map(|k| {
            (
                "plug-a".to_owned(),
                T0 + 2 * 3600 * S + 5 * S + k * 10 * S,
                4000.0 + k as f64,
            )
        })
        .collect();
    write(&server, &late, "kitchen");
    let stored = stored(&server);
    assert_eq!(stored.len(), rows.len() + 20);

    let from = T0 + 7 * 60 * S + 3 * S; // not on a bucket boundary
    let to = T0 + 4 * 3600 * S;
    let cases = [
        ("10s", "raw", "avg", "power"),
        ("10s", "raw", "energy", "power"),
        ("1m", "1m", "avg", "power"),
        ("5m", "1m", "max", "voltage"),
        ("5m", "1m", "min", "power"),
        ("15m", "1m", "last", "power"),
        ("15m", "1m", "energy", "power"),
        ("1h", "1h", "sum", "power"),
        ("1h", "1h", "avg", "voltage"),
        ("1h", "1h", "energy", "power"),
        ("1d", "1d", "avg", "power"),
        ("1d", "1d", "energy", "power"),
        ("1d", "1d", "last", "power"),
    ];
    for (step, resolution, agg, field) in cases {
        let step_ns = match step {
            "10s" => 10 * S,
            "1m" => 60 * S,
            "5m" => 300 * S,
            "15m" => 900 * S,
            "1h" => 3600 * S,
            _ => 86_400 * S,
        };
        let v = series(
            &server,
            &format!(
                "device=plug-a,plug-b&from={}&to={}&step={step}&agg={agg}&fields={field}",
                rfc(from),
                rfc(to)
            ),
        );
        assert_eq!(v["resolution"], resolution, "{step} {agg}");
        for (k, device) in ["plug-a", "plug-b"].into_iter().enumerate() {
            let want = expected(&stored, device, field, agg, from, to, step_ns);
            let got = points(&v, k);
            assert_eq!(
                got.len(),
                want.len(),
                "{step} {agg} {field} {device}: {got:?}"
            );
            for ((t, g), (b, w)) in got.iter().zip(&want) {
                assert_eq!(t, &rfc(*b), "{step} {agg} {device}");
                let g = g.unwrap();
                assert!(
                    close(g, *w),
                    "{step} {agg} {field} {device} at {t}: {g}, want {w}"
                );
            }
        }
    }

    // Gap filling over plug-b's silence (22:20 to 22:50) at 10 minutes.
    let q = |fill: &str| {
        points(
            &series(
                &server,
                &format!(
                    "device=plug-b&from=2026-11-22T22:00:00Z&to=2026-11-22T23:10:00Z&step=10m&fill={fill}"
                ),
            ),
            0,
        )
    };
    let none = q("none");
    assert_eq!(none.len(), 4, "{none:?}");
    let null = q("null");
    assert_eq!(null.len(), 7);
    assert_eq!(null[2].0, "2026-11-22T22:20:00Z");
    assert!(null[2].1.is_none() && null[3].1.is_none() && null[4].1.is_none());
    let previous = q("previous");
    assert_eq!(previous[3].1, null[1].1);
    let linear = q("linear");
    let (a, b) = (null[1].1.unwrap(), null[5].1.unwrap());
    assert!(close(linear[3].1.unwrap(), a + (b - a) * 0.5), "{linear:?}");

    // Auto picks a step for at most 1,000 points, and the table that serves it.
    let v = series(
        &server,
        "device=plug-a&from=2026-11-22T21:00:00Z&to=2026-11-23T01:00:00Z",
    );
    assert_eq!(
        (v["step"].as_str(), v["resolution"].as_str()),
        (Some("30s"), Some("raw"))
    );
    let v = series(
        &server,
        "device=plug-a&from=2026-11-15T00:00:00Z&to=2026-11-23T01:00:00Z",
    );
    assert_eq!(
        (v["step"].as_str(), v["resolution"].as_str()),
        (Some("15m"), Some("1m"))
    );
    // A fixed offset moves daily buckets to local midnight, served by 1h rollups.
    let v = series(
        &server,
        "device=plug-a&from=2026-11-22T00:00:00Z&to=2026-11-24T00:00:00Z&step=1d&tz=%2B02:00&agg=energy",
    );
    assert_eq!(v["resolution"], "1h");
    let local = points(&v, 0);
    assert_eq!(local[0].0, "2026-11-21T22:00:00Z");

    // Bad parameters: 400 naming the parameter.
    for (query, needle) in [
        ("from=now-1h", "device"),
        ("device=plug-a&agg=median", "agg"),
        ("device=plug-a&fields=watts", "fields"),
        ("device=plug-a&step=10x", "step"),
        ("device=plug-a&from=yesterday", "from"),
        ("device=plug-a&tz=Mars/Olympus", "tz"),
        ("device=plug-a&from=now-30d&step=1s", "points"),
        ("device=plug-a&from=now&to=now-1h", "before"),
    ] {
        let (status, body) = server.get(&format!("/api/v1/series?{query}"));
        assert_eq!(status, 400, "{query}: {body}");
        assert!(body.contains(needle), "{query}: {body}");
    }
}

#[test]
fn latest_and_devices_come_from_the_latest_value_map_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(&dir.path().join("data"), &[]);
    let rows = fixture();
    write(&server, &rows[..rows.len() / 2], "hall");
    // A late reading does not replace a newer one; the newest reading's tags win.
    write(&server, &rows[rows.len() / 2..], "kitchen");
    write(&server, &[("plug-a".to_owned(), T0 + 5 * S, 1.0)], "attic");
    let check = |server: &Server| {
        let (status, body) = server.get("/api/v1/latest");
        assert_eq!(status, 200, "{body}");
        let latest: Value = serde_json::from_str(&body).unwrap();
        // The same from SQL: each plug's row of the greatest time.
        let want = server.sql(
            "SELECT device_id, power, location FROM readings r WHERE ts = \
             (SELECT max(ts) FROM readings x WHERE x.device_id = r.device_id) ORDER BY device_id",
        );
        assert_eq!(latest.as_array().unwrap().len(), 2, "{latest}");
        for (l, w) in latest.as_array().unwrap().iter().zip(&want) {
            assert_eq!(l["device_id"], w["device_id"]);
            assert_eq!(l["power"], w["power"], "{l}");
            assert_eq!(l["location"], "kitchen");
        }
        let (_, body) = server.get("/api/v1/latest?device=plug-b");
        let one: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(one.as_array().unwrap().len(), 1);
        assert_eq!(one[0]["ts"], rfc(T0 + (4 * 360 - 1) * 10 * S));
        let (_, body) = server.get("/api/v1/devices?prefix=plug-");
        let devices: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(devices[0]["device_id"], "plug-a");
        assert_eq!(devices[0]["first_seen"], rfc(T0));
        assert_eq!(devices[0]["last_seen"], rfc(T0 + (4 * 360 - 1) * 10 * S));
        let (status, body) = server.get("/api/v1/latest?device=bad%20id");
        assert_eq!(status, 400, "{body}");
    };
    check(&server);
    // Persisted and restarted: the WAL is released, the map comes from the rollups.
    let (status, body) = server.post("/api/v1/admin/persist", "application/json", b"");
    assert_eq!(status, 200, "{body}");
    server.restart();
    assert_eq!(server.metric("wattdb_wal_replayed_readings"), Some(0.0));
    check(&server);
}
