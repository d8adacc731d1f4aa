//! Writes and reads through real HTTP.

use serde_json::Value;

use crate::support::{Server, lp_line, serve_once};

const T0: i64 = 1_700_000_000_000_000_000;

fn count(server: &Server) -> i64 {
    server.sql("SELECT count(*) AS n FROM readings")[0]["n"]
        .as_i64()
        .unwrap()
}

#[test]
fn line_protocol_write_then_sql_read() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let body = format!(
        "{}\n{}\n# a comment\n\n{}\n",
        lp_line("plug-1", T0, 100.0),
        lp_line("plug-1", T0 + 1_000_000_000, 110.0),
        "power_metrics,device_id=plug\\ 2,location=living\\,room voltage=229.5,current=1i,power=229u 1700000002"
    );
    // plug ids may not hold spaces: the whole request is refused.
    let (status, err) = server.write_lp(&body);
    assert_eq!(status, 400, "{err}");
    assert_eq!(count(&server), 0);

    let body = format!(
        "{}\n{}\n{}\n",
        lp_line("plug-1", T0, 100.0),
        lp_line("plug-1", T0 + 1_000_000_000, 110.0),
        "power_metrics,device_id=plug-2,location=living\\,room voltage=229.5,current=1i,power=229u 1700000002000000000"
    );
    let (status, body) = server.write_lp(&body);
    assert_eq!((status, body.as_str()), (204, ""));
    let rows = server.sql(
        "SELECT device_id, CAST(ts AS BIGINT) AS t, voltage, current, power, energy, relay_on, location \
         FROM readings ORDER BY device_id, ts",
    );
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[0]["device_id"], "plug-1");
    assert_eq!(rows[0]["t"], T0);
    assert_eq!(rows[1]["power"], 110.0);
    assert_eq!(rows[0]["relay_on"], true);
    assert_eq!(rows[2]["location"], "living,room");
    assert_eq!(rows[2]["current"], 1.0);
    assert_eq!(rows[2]["power"], 229.0);
    assert_eq!(rows[2]["energy"], Value::Null);
    assert_eq!(rows[2]["relay_on"], Value::Null);
}

#[test]
fn v1_write_route_precision_and_missing_timestamp() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let (status, _) = server.post(
        "/write?db=x&precision=s",
        "text/plain",
        b"power_metrics,device_id=p1 voltage=230,current=0.1,power=23 1700000000",
    );
    assert_eq!(status, 204);
    let before = wattdb_api::now_ns();
    let (status, _) = server.post(
        "/api/v2/write?org=o&bucket=b&precision=ms",
        "text/plain",
        b"power_metrics,device_id=p2 voltage=230,current=0.1,power=23",
    );
    assert_eq!(status, 204);
    let rows =
        server.sql("SELECT device_id, CAST(ts AS BIGINT) AS t FROM readings ORDER BY device_id");
    assert_eq!(rows[0]["t"], 1_700_000_000_000_000_000i64);
    let arrival = rows[1]["t"].as_i64().unwrap();
    assert!(
        arrival >= before && arrival < before + 60_000_000_000,
        "{arrival}"
    );
    let (status, body) = server.post("/api/v2/write?precision=fortnight", "text/plain", b"");
    assert_eq!(status, 400);
    assert!(body.contains("fortnight"), "{body}");
}

#[test]
fn json_readings_write_then_read() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let body = r#"[
        {"device_id": "plug-7", "ts": "2023-11-14T22:13:20Z", "voltage": 231.0, "current": 0.2, "power": 46.2, "energy": 10.5, "relay_state": true, "location": "office"},
        {"device_id": "plug-7", "ts": 1700000001, "voltage": 231.1, "current": 0.3, "power": 69.3}
    ]"#;
    let (status, err) = server.post("/api/v1/readings", "application/json", body.as_bytes());
    assert_eq!(status, 204, "{err}");
    let rows = server
        .sql("SELECT CAST(ts AS BIGINT) AS t, power, energy, location FROM readings ORDER BY ts");
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["t"], T0);
    assert_eq!(rows[0]["location"], "office");
    assert_eq!(rows[1]["t"], T0 + 1_000_000_000);
    assert_eq!(rows[1]["energy"], Value::Null);

    let bad = r#"[{"device_id": "plug-8", "voltage": 1, "current": 1, "power": 1},
                  {"device_id": "plug-8", "voltage": "high", "current": 1, "power": 1}]"#;
    let (status, body) = server.post("/api/v1/readings", "application/json", bad.as_bytes());
    assert_eq!(status, 400);
    let err: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(err["element"], 1, "{body}");
    assert!(err["error"].as_str().unwrap().contains("voltage"), "{body}");
    assert_eq!(count(&server), 2);
}

#[test]
fn every_kind_of_bad_line_is_refused_with_its_line_number_and_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let good = lp_line("plug-ok", T0, 1.0);
    let cases: &[(&str, &str)] = &[
        ("cpu,device_id=p voltage=1,current=1,power=1", "cpu"),
        (
            "power_metrics,location=x voltage=1,current=1,power=1",
            "device_id",
        ),
        ("power_metrics,device_id=p current=1,power=1", "voltage"),
        (
            "power_metrics,device_id=p voltage=abc,current=1,power=1",
            "voltage",
        ),
        (
            "power_metrics,device_id=p voltage=1,current=\"x\",power=1",
            "current",
        ),
        (
            "power_metrics,device_id=p voltage=1,current=1,power=1,relay_state=maybe",
            "relay_state",
        ),
        (
            "power_metrics,device_id=p voltage=1,current=1,power=1 notatime",
            "timestamp",
        ),
        (
            "power_metrics,device_id=p voltage=1,current=1,power=1 -5",
            "timestamp",
        ),
        (
            "power_metrics,device_id=p voltage=1,current=1,power=1 99999999999999999999",
            "timestamp",
        ),
        (
            "power_metrics,device_id=p/q voltage=1,current=1,power=1",
            "device_id",
        ),
        ("power_metrics,device_id=p", "field"),
        (
            "power_metrics,device_id=p voltage=1e999,current=1,power=1",
            "voltage",
        ),
        (
            "power_metrics,device_id=p voltage=1,current=1,power=1 1 extra",
            "",
        ),
    ];
    for (bad, needle) in cases {
        let body = format!("{good}\n{bad}\n{good}\n");
        let (status, body_text) = server.write_lp(&body);
        assert_eq!(status, 400, "{bad}: {body_text}");
        let err: Value = serde_json::from_str(&body_text).unwrap();
        assert_eq!(err["line"], 2, "{bad}: {body_text}");
        let msg = err["error"].as_str().unwrap();
        assert!(msg.starts_with("line 2"), "{bad}: {msg}");
        assert!(msg.contains(needle), "{bad}: {msg} should name {needle}");
    }
    // Invalid UTF-8 on line 2.
    let mut body = format!("{good}\n").into_bytes();
    body.extend_from_slice(b"power_metrics,device_id=\xff voltage=1,current=1,power=1\n");
    let (status, body_text) = server.post("/api/v2/write", "text/plain", &body);
    assert_eq!(status, 400);
    assert!(body_text.contains("line 2"), "{body_text}");
    assert_eq!(count(&server), 0, "a refused request must store nothing");
}

#[test]
fn oversized_body_gets_413_and_queries_are_read_only() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &["--max-body-bytes", "1024"]);
    let big: String = (0..100).map(|i| lp_line("p", T0 + i, 1.0) + "\n").collect();
    let (status, body) = server.write_lp(&big);
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("error"), "{body}");
    assert_eq!(count(&server), 0);

    for sql in [
        "DROP TABLE readings",
        "CREATE TABLE t (a INT)",
        "SET x = 1",
        "SELECT 1; SELECT 2",
    ] {
        let (status, body) = server.query(sql, "json");
        assert_eq!(status, 400, "{sql}: {body}");
    }
    let (status, body) = server.query("SELECT nope FROM readings", "json");
    assert_eq!(status, 400);
    assert!(body.contains("nope"), "{body}");
    let (status, _) = server.get("/health");
    assert_eq!(status, 200);
    let (status, _) = server.get("/no/such/route");
    assert_eq!(status, 404);
}

#[test]
fn csv_format_and_empty_results() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    assert!(server.sql("SELECT * FROM readings").is_empty());
    let (status, body) = server.query("SELECT device_id, power FROM readings", "csv");
    assert_eq!((status, body.trim()), (200, "device_id,power"));
    let lines: String = (0..3)
        .map(|i| lp_line(&format!("p{i}"), T0, i as f64) + "\n")
        .collect();
    assert_eq!(server.write_lp(&lines).0, 204);
    let (status, body) = server.query(
        "SELECT device_id, power FROM readings ORDER BY device_id",
        "csv",
    );
    assert_eq!(status, 200);
    assert_eq!(body, "device_id,power\np0,0.0\np1,1.0\np2,2.0\n");
    let (status, body) = server.query("SELECT 1", "parquet-ish");
    assert_eq!(status, 400, "{body}");
}

#[test]
fn data_survives_a_clean_restart_and_duplicates_resolve_to_the_last_write() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut server = Server::start(&data, &[]);
    assert_eq!(server.write_lp(&lp_line("p", T0, 1.0)).0, 204);
    assert_eq!(server.write_lp(&lp_line("p", T0, 2.0)).0, 204);
    server.stop();
    // A second server on the same directory while the first runs is refused.
    let server = Server::start(&data, &[]);
    let rows = server.sql("SELECT power FROM readings");
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["power"], 2.0);
    let out = serve_once(&data);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("in use by another WattDB process"));
}

#[test]
fn wal_check_and_repair_commands() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut server = Server::start(&data, &[]);
    for i in 0..3 {
        assert_eq!(server.write_lp(&lp_line("p", T0 + i, i as f64)).0, 204);
    }
    server.kill();
    // Damage the first of the three records: later records prove it was synced.
    let seg = std::fs::read_dir(data.join("wal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .min()
        .unwrap();
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[32 + 30] ^= 0x55;
    std::fs::write(&seg, &bytes).unwrap();
    let out = serve_once(&data);
    let wattdb = env!("CARGO_BIN_EXE_wattdb");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("corrupt at offset 32"), "{stderr}");
    assert!(stderr.contains("wattdb wal repair"), "{stderr}");
    let check = std::process::Command::new(wattdb)
        .args(["wal", "check", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert_eq!(check.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&check.stdout).contains("offset 32"));
    let repair = std::process::Command::new(wattdb)
        .args(["wal", "repair", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(
        repair.status.success(),
        "{}",
        String::from_utf8_lossy(&repair.stderr)
    );
    let server = Server::start(&data, &[]);
    let rows = server.sql("SELECT power FROM readings ORDER BY ts");
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["power"], 1.0);
}

#[test]
fn gzip_bodies_are_accepted_as_telegraf_sends_them() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let lines: String = (0..50)
        .map(|i| lp_line("gz", T0 + i, i as f64) + "\n")
        .collect();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(lines.as_bytes()).unwrap();
    let body = gz.finish().unwrap();
    let r = crate::support::agent()
        .post(&format!("{}/api/v2/write", server.url))
        .set("Content-Encoding", "gzip")
        .send_bytes(&body);
    assert_eq!(crate::support::response(r).0, 204);
    assert_eq!(count(&server), 50);
}

#[test]
fn metrics_count_writes_rejections_fsyncs_and_queries() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let lines: String = (0..7).map(|i| lp_line("m", T0 + i, 1.0) + "\n").collect();
    assert_eq!(server.write_lp(&lines).0, 204);
    assert_eq!(
        server.write_lp("power_metrics,device_id=m voltage=x").0,
        400
    );
    let (status, _) = server.post(
        "/api/v1/readings",
        "application/json",
        br#"{"device_id":"j","voltage":1,"current":1,"power":1}"#,
    );
    assert_eq!(status, 204);
    assert_eq!(count(&server), 8);
    let (status, text) = server.get("/metrics");
    assert_eq!(status, 200);
    for expected in [
        "wattdb_ingested_readings_total{path=\"lp\"} 7\n",
        "wattdb_ingested_readings_total{path=\"json\"} 1\n",
        "wattdb_write_requests_total{path=\"lp\"} 2\n",
        "wattdb_write_rejected_total{reason=\"bad_request\"} 1\n",
        "wattdb_wal_batches_total 2\n",
        "wattdb_wal_fsync_seconds_count 2\n",
        "wattdb_write_to_queryable_seconds_count 2\n",
        "wattdb_buffer_readings 8\n",
        "wattdb_queries_total{outcome=\"ok\"} 1\n",
        "wattdb_wal_poisoned 0\n",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in\n{text}");
    }
    assert!(text.contains("wattdb_process_resident_bytes "), "{text}");
}

/// 100 plugs × 1,000 readings.
fn many_readings(server: &Server) {
    let mut body = String::new();
    for d in 0..100 {
        for k in 0..1000i64 {
            body.push_str(&format!(
                "power_metrics,device_id=m{d} voltage=230,current=1,power={k}.5 {}\n",
                T0 + k * 1_000_000_000
            ));
        }
    }
    let (status, text) = server.write_lp(&body);
    assert_eq!(status, 204, "{text}");
}

#[test]
fn a_query_over_its_memory_limit_gets_422_and_the_server_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &["--query-memory-mib", "1"]);
    many_readings(&server);
    // One group (nothing to spill): 100,000 strings of about 25 bytes in one array.
    let (status, body) = server.query(
        "SELECT array_agg(concat(device_id, '@', CAST(ts AS VARCHAR))) AS a FROM readings",
        "json",
    );
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("memory limit"), "{body}");
    let rows = server.sql("SELECT count(*) AS n FROM readings");
    assert_eq!(rows[0]["n"], 100_000);
}

#[test]
fn a_query_past_its_deadline_gets_504_while_writes_and_queries_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &["--query-timeout-s", "1"]);
    many_readings(&server);
    // Twenty billion numbers: far more than a second of work.
    let slow = {
        let url = server.url.clone();
        std::thread::spawn(move || {
            let started = std::time::Instant::now();
            let body = serde_json::json!({
                "sql": "SELECT sum(value) AS s FROM generate_series(1, 20000000000)"
            })
            .to_string();
            let r = crate::support::response(
                crate::support::agent()
                    .post(&format!("{url}/api/v1/query"))
                    .set("Content-Type", "application/json")
                    .send_string(&body),
            );
            (r, started.elapsed())
        })
    };
    std::thread::sleep(std::time::Duration::from_millis(200));
    // Meanwhile the query runs on its own threads: writes and small queries answer.
    let (status, text) = server.write_lp(&lp_line("w1", T0, 1.0));
    assert_eq!(status, 204, "{text}");
    let ((status, body), took) = slow.join().unwrap();
    assert_eq!(status, 504, "{body}");
    assert!(body.contains("deadline"), "{body}");
    assert!(
        took < std::time::Duration::from_secs(10),
        "answered {took:?} after a 1 s deadline"
    );
    // The cancelled query no longer holds the query threads: the next one answers
    // within the same 1 s deadline.
    let rows = server.sql("SELECT count(*) AS n FROM readings");
    assert_eq!(rows[0]["n"], 100_001);
}

#[test]
fn sigterm_answers_or_refuses_every_write_in_flight_and_loses_none_it_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut server = Server::start(&data, &[]);
    let url = server.url.clone();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let url = url.clone();
            let stop = std::sync::Arc::clone(&stop);
            std::thread::spawn(move || {
                // (first ts, rows) of every acknowledged batch, and the refusals seen.
                let mut acked = Vec::new();
                let mut refused = 0;
                let mut i = 0i64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let first = T0 + (w * 1_000_000 + i * 100) * 1_000_000;
                    let body: String = (0..100)
                        .map(|k| lp_line(&format!("term-{w}"), first + k * 1_000_000, 1.0) + "\n")
                        .collect();
                    i += 1;
                    let r = crate::support::agent()
                        .post(&format!("{url}/api/v2/write"))
                        .send_string(&body);
                    match r {
                        Ok(resp) if resp.status() == 204 => acked.push(first),
                        Ok(_) | Err(ureq::Error::Status(..)) => refused += 1,
                        // The server is gone: no answer, so no promise.
                        Err(_) => break,
                    }
                }
                (acked, refused)
            })
        })
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(800));
    server.stop(); // SIGTERM; asserts a clean exit
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut acked = Vec::new();
    for w in writers {
        let (a, _refused) = w.join().unwrap();
        acked.extend(a);
    }
    assert!(!acked.is_empty());
    let server = Server::start(&data, &[]);
    // Every acknowledged batch is there, whole.
    let rows = server.sql("SELECT CAST(ts AS BIGINT) AS t FROM readings");
    let stored: std::collections::HashSet<i64> =
        rows.iter().map(|r| r["t"].as_i64().unwrap()).collect();
    for first in &acked {
        for k in 0..100 {
            assert!(
                stored.contains(&(first + k * 1_000_000)),
                "acknowledged reading lost"
            );
        }
    }
    assert_eq!(stored.len() % 100, 0, "a batch was stored in part");
}
