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

    // Several fields in one request (one scan serves them all): the same series as one
    // field at a time, also when a field is asked for twice.
    let range = format!("from={}&to={}", rfc(from), rfc(to));
    for (step, agg) in [("5m", "max"), ("10s", "last")] {
        let q = |fields: &str| {
            series(
                &server,
                &format!("device=plug-a,plug-b&{range}&step={step}&agg={agg}&fields={fields}"),
            )
        };
        let both = q("voltage,power,voltage");
        let (voltage, power) = (q("voltage"), q("power"));
        for (k, single) in [&voltage, &power, &voltage].into_iter().enumerate() {
            for device in 0..2 {
                assert_eq!(
                    points(&both, device * 3 + k),
                    points(single, device),
                    "{step} {agg} field {k} of plug {device}"
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
        ("device=plug-a&tz=%2B25:00", "tz"),
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

/// Fetches `path` and writes the body to `file`; the status and content type.
fn download(
    server: &Server,
    path: &str,
    body: Option<&str>,
    file: &std::path::Path,
) -> (u16, String) {
    let url = format!("{}{path}", server.url);
    let agent = crate::support::agent();
    let r = match body {
        Some(b) => agent
            .post(&url)
            .set("Content-Type", "application/json")
            .send_string(b),
        None => agent.get(&url).call(),
    };
    let resp = match r {
        Ok(r) => r,
        Err(ureq::Error::Status(code, r)) => {
            return (code, r.into_string().unwrap_or_default());
        }
        Err(e) => panic!("{path}: {e}"),
    };
    let status = resp.status();
    let content_type = resp.header("content-type").unwrap_or("").to_owned();
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut resp.into_reader(), &mut bytes).unwrap();
    std::fs::write(file, bytes).unwrap();
    (status, content_type)
}

fn python(script: &str) -> String {
    crate::support::python(script, &[]).join("\n")
}

#[test]
fn query_results_and_exports_stream_as_arrow_parquet_and_csv_that_real_readers_read() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let rows = fixture();
    let (old, new): (Vec<_>, Vec<_>) = rows.iter().cloned().partition(|r| r.1 < T0 + 2 * 3600 * S);
    write(&server, &old, "hall");
    let (status, body) = server.post("/api/v1/admin/persist", "application/json", b"");
    assert_eq!(status, 200, "{body}");
    write(&server, &new, "hall");
    // What WattDB's JSON says, to compare the other formats with.
    let want = server.sql(
        "SELECT count(*) AS n, sum(power) AS p, count(DISTINCT device_id) AS d FROM readings \
         WHERE ts >= to_timestamp_nanos(1795384800000000000)",
    );
    let (n, p) = (
        want[0]["n"].as_i64().unwrap(),
        want[0]["p"].as_f64().unwrap(),
    );
    assert!(n > 1000);
    let sql = "SELECT device_id, ts, power FROM readings WHERE ts >= to_timestamp_nanos(1795384800000000000)";
    let summary =
        "print(t.num_rows, f\"{pc.sum(t['power']).as_py():.3f}\", t.schema.field('ts').type)";

    let arrow = dir.path().join("q.arrows");
    let body = serde_json::json!({"sql": sql, "format": "arrow"}).to_string();
    let (status, ct) = download(&server, "/api/v1/query", Some(&body), &arrow);
    assert_eq!(
        (status, ct.as_str()),
        (200, "application/vnd.apache.arrow.stream")
    );
    let got = python(&format!(
        "import pyarrow as pa, pyarrow.compute as pc\nt = pa.ipc.open_stream(open({:?}, 'rb')).read_all()\n{summary}",
        arrow.display().to_string()
    ));
    assert_eq!(got, format!("{n} {p:.3} timestamp[ns, tz=UTC]"));

    let parquet = dir.path().join("q.parquet");
    let body = serde_json::json!({"sql": sql, "format": "parquet"}).to_string();
    let (status, ct) = download(&server, "/api/v1/query", Some(&body), &parquet);
    assert_eq!(
        (status, ct.as_str()),
        (200, "application/vnd.apache.parquet")
    );
    let got = python(&format!(
        "import pyarrow.parquet as pq, pyarrow.compute as pc\nt = pq.read_table({:?})\n{summary}",
        parquet.display().to_string()
    ));
    assert_eq!(got, format!("{n} {p:.3} timestamp[ns, tz=UTC]"));

    // An empty result is still a valid document in every format.
    let empty = "SELECT * FROM readings WHERE device_id = 'nobody'";
    for (format, reader) in [
        ("arrow", "pa.ipc.open_stream(open(f, 'rb')).read_all()"),
        ("parquet", "pq.read_table(f)"),
    ] {
        let file = dir.path().join(format!("empty.{format}"));
        let body = serde_json::json!({"sql": empty, "format": format}).to_string();
        assert_eq!(
            download(&server, "/api/v1/query", Some(&body), &file).0,
            200
        );
        let got = python(&format!(
            "import pyarrow as pa, pyarrow.parquet as pq\nf = {:?}\nt = {reader}\nprint(t.num_rows, t.num_columns)",
            file.display().to_string()
        ));
        assert_eq!(got, "0 9", "{format}");
    }
    let (status, csv) = server.query(empty, "csv");
    assert_eq!(status, 200);
    assert!(csv.starts_with("device_id,ts,"), "{csv}");

    // Exports: raw readings across files and buffer, and a rollup, read by DuckDB.
    let file = dir.path().join("export.parquet");
    let (status, ct) = download(
        &server,
        "/api/v1/export?from=2026-11-22T22:00:00Z&to=now&resolution=raw&format=parquet",
        None,
        &file,
    );
    assert_eq!(
        (status, ct.as_str()),
        (200, "application/vnd.apache.parquet")
    );
    let got = python(&format!(
        "import duckdb\nr = duckdb.sql(\"SELECT count(*), sum(power), count(DISTINCT device_id) FROM read_parquet('{}')\").fetchall()[0]\nprint(r[0], f'{{r[1]:.3f}}', r[2])",
        file.display()
    ));
    assert_eq!(got, format!("{n} {p:.3} 2"));
    let file = dir.path().join("export-1m.parquet");
    let (status, _) = download(
        &server,
        "/api/v1/export?from=2026-11-22T21:00:00Z&to=2026-11-22T23:00:00Z&resolution=1m&device=plug-b",
        None,
        &file,
    );
    assert_eq!(status, 200);
    let want_1m = server.sql(
        "SELECT count(*) AS n, sum(count) AS c FROM readings_1m WHERE device_id = 'plug-b' \
         AND bucket < to_timestamp_nanos(1795388400000000000)",
    );
    let got = python(&format!(
        "import duckdb\nprint(*duckdb.sql(\"SELECT count(*), sum(count), count(DISTINCT device_id) FROM read_parquet('{}')\").fetchall()[0])",
        file.display()
    ));
    assert_eq!(got, format!("{} {} 1", want_1m[0]["n"], want_1m[0]["c"]));
    let csv_file = dir.path().join("export.csv");
    let (status, ct) = download(
        &server,
        "/api/v1/export?from=2026-11-22T21:00:00Z&to=now&prefix=plug-&format=csv",
        None,
        &csv_file,
    );
    assert_eq!((status, ct.as_str()), (200, "text/csv; charset=utf-8"));
    let lines = std::fs::read_to_string(&csv_file).unwrap().lines().count();
    assert_eq!(lines, rows.len() + 1, "a header and every reading");
    for (query, needle) in [
        ("from=now-1h&resolution=5m", "resolution"),
        ("from=now-1h&format=xlsx", "format"),
        ("from=now-1h&device=bad%20id", "device"),
        ("from=soon", "from"),
        ("to=now", "from"),
    ] {
        let (status, body) = server.get(&format!("/api/v1/export?{query}"));
        assert_eq!(status, 400, "{query}: {body}");
        assert!(body.contains(needle), "{query}: {body}");
    }
}

type Socket = tungstenite::WebSocket<tungstenite::stream::MaybeTlsStream<std::net::TcpStream>>;

fn subscribe(server: &Server, query: &str) -> Socket {
    let url = format!(
        "{}/api/v1/live?{query}",
        server.url.replace("http://", "ws://")
    );
    let (ws, resp) = tungstenite::connect(url.as_str()).unwrap();
    assert_eq!(resp.status().as_u16(), 101);
    if let tungstenite::stream::MaybeTlsStream::Plain(s) = ws.get_ref() {
        s.set_read_timeout(Some(std::time::Duration::from_secs(20)))
            .unwrap();
    }
    ws
}

fn next_json(ws: &mut Socket) -> Value {
    loop {
        match ws.read().unwrap() {
            tungstenite::Message::Text(t) => return serde_json::from_str(t.as_str()).unwrap(),
            tungstenite::Message::Ping(_) | tungstenite::Message::Pong(_) => {}
            other => panic!("unexpected message {other:?}"),
        }
    }
}

#[test]
fn live_streams_acknowledged_readings_of_chosen_plugs_and_skips_for_slow_subscribers() {
    let dir = tempfile::tempdir().unwrap();
    // The slow subscriber below reads nothing while 400,000 readings are written: long
    // for a debug build on a busy machine, and it must not be disconnected meanwhile.
    let server = Server::start(&dir.path().join("data"), &["--live-send-timeout-s", "300"]);
    let mut ws = subscribe(&server, "device=plug-a");
    let rows = fixture();
    for chunk in rows[..300].chunks(100) {
        write(&server, chunk, "hall");
    }
    let want: Vec<&(String, i64, f64)> = rows[..300].iter().filter(|r| r.0 == "plug-a").collect();
    let mut got = Vec::new();
    while got.len() < want.len() {
        let msg = next_json(&mut ws);
        for r in msg.as_array().unwrap() {
            assert_eq!(r["device_id"], "plug-a", "{r}");
            got.push((
                r["ts"].as_str().unwrap().to_owned(),
                r["power"].as_f64().unwrap(),
            ));
        }
    }
    let want: Vec<(String, f64)> = want.iter().map(|r| (rfc(r.1), r.2)).collect();
    assert_eq!(got, want, "every acknowledged reading of plug-a, in order");
    assert_eq!(server.metric("wattdb_live_subscribers"), Some(1.0));

    // A subscriber that does not read: writes go on at full speed, and once it reads
    // again it is told what it missed.
    let mut slow = subscribe(&server, "prefix=plug-");
    let big: Vec<(String, i64, f64)> = (0..2000)
        .map(|k| {
            (
                format!("plug-{}", k % 50),
                T0 + 86_400 * S + k * S,
                k as f64,
            )
        })
        .collect();
    // More batches than the backlog (128) and the socket buffers hold.
    const ROUNDS: i64 = 200;
    for round in 0..ROUNDS {
        let batch: Vec<_> = big
            .iter()
            .map(|(d, t, p)| (d.clone(), t + round * 10_000 * S, *p))
            .collect();
        write(&server, &batch, "hall");
    }
    let mut skipped = 0;
    let mut readings = 0;
    loop {
        let msg = next_json(&mut slow);
        if msg["notice"] == "skipped" {
            skipped += msg["batches"].as_u64().unwrap();
            continue;
        }
        let arr = msg.as_array().unwrap();
        readings += arr.len();
        // The newest batch arrives last.
        if arr.last().unwrap()["ts"] == rfc(T0 + 86_400 * S + 1999 * S + (ROUNDS - 1) * 10_000 * S)
        {
            break;
        }
    }
    assert!(skipped > 0, "a notice of skipped batches");
    assert_eq!(
        readings as u64 + skipped * 2000,
        ROUNDS as u64 * 2000,
        "each batch either arrives or is counted as skipped"
    );
    drop(slow);
    drop(ws);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while server.metric("wattdb_live_subscribers") != Some(0.0) {
        assert!(std::time::Instant::now() < deadline);
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let (status, body) = server.get("/api/v1/live?device=bad%20id");
    assert_eq!(status, 400, "{body}");
}

/// Berlin's days, including the 25-hour day of the change back from summer time
/// (2026-10-25), each counted from local midnight to local midnight, partly from 1h
/// rollups and partly from buffered readings.
#[test]
fn daily_series_in_a_named_time_zone_follow_local_midnight_across_a_dst_change() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let dst: Vec<(String, i64, f64)> = (0..2 * 24 * 6)
        .map(|k| ("plug-dst".to_owned(), 1_792_843_200 * S + k * 600 * S, 1.0))
        .collect();
    write(&server, &dst[..150], "hall");
    let (status, body) = server.post("/api/v1/admin/persist", "application/json", b"");
    assert_eq!(status, 200, "{body}");
    write(&server, &dst[150..], "hall");
    let v = series(
        &server,
        "device=plug-dst&from=2026-10-24T00:00:00Z&to=2026-10-26T23:00:00Z&step=1d&tz=Europe/Berlin&agg=sum",
    );
    assert_eq!(v["resolution"], "1h", "{v}");
    let mut want: BTreeMap<String, f64> = BTreeMap::new();
    for (_, t, _) in &dst {
        let local =
            chrono::DateTime::from_timestamp_nanos(*t).with_timezone(&chrono_tz::Europe::Berlin);
        let midnight = chrono::TimeZone::from_local_datetime(
            &chrono_tz::Europe::Berlin,
            &local.date_naive().and_hms_opt(0, 0, 0).unwrap(),
        )
        .unwrap();
        *want
            .entry(rfc(midnight.timestamp_nanos_opt().unwrap()))
            .or_default() += 1.0;
    }
    let got: BTreeMap<String, f64> = points(&v, 0)
        .into_iter()
        .map(|(t, v)| (t, v.unwrap()))
        .collect();
    assert_eq!(got, want);
    assert_eq!(
        got.get("2026-10-24T22:00:00Z"),
        Some(&150.0),
        "25 hours of readings"
    );
}
