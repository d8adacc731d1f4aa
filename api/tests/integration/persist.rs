//! Persistence end to end: Parquet files in the documented layout, read back by real
//! readers (pyarrow, DuckDB) on local disk and from a real S3-compatible server
//! (moto), and an object store that stops answering for a while.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::{Server, agent, lp_line, python, response};

const HOUR: i64 = 3_600_000_000_000;
/// 2026-11-23T10:00:00Z.
const T0: i64 = 1_795_428_000_000_000_000;

/// Writes three plugs over two hours, then rewrites one reading (last write wins).
fn write_fixture(server: &Server) {
    let mut body = String::new();
    for plug in ["plug-a", "plug-b", "plug-c"] {
        for k in 0..30 {
            let ts = T0 + (k % 2) * HOUR + k * 1_000_000_000;
            body.push_str(&lp_line(plug, ts, 100.0 + k as f64));
            body.push('\n');
        }
    }
    let (status, text) = server.write_lp(&body);
    assert_eq!(status, 204, "{text}");
}

/// Rows as `device_id|ts|power` lines, sorted, from WattDB's SQL.
fn wattdb_rows(server: &Server) -> Vec<String> {
    let rows = server.sql(
        "SELECT device_id, CAST(ts AS BIGINT) AS ts, power FROM readings ORDER BY device_id, ts",
    );
    rows.iter()
        .map(|r| {
            format!(
                "{}|{}|{:.1}",
                r["device_id"].as_str().unwrap(),
                r["ts"],
                r["power"].as_f64().unwrap()
            )
        })
        .collect()
}

fn persist(server: &Server) -> (u16, Value) {
    let (status, body) = server.post("/api/v1/admin/persist", "application/json", b"");
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

const PRINT_ROWS: &str = r#"
rows = sorted((d, t, p) for d, t, p in rows)
for d, t, p in rows:
    print(f"{d}|{t}|{p:.1f}")
"#;

fn parquet_files(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.join("readings")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(root).unwrap().to_string_lossy().into_owned());
            }
        }
    }
    out.sort();
    out
}

#[test]
fn persisted_files_land_in_the_layout_and_pyarrow_and_duckdb_read_the_same_rows() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut server = Server::start(&data, &[]);
    write_fixture(&server);
    // A rewrite of a reading: the later write wins everywhere.
    let (status, _) = server.write_lp(&lp_line("plug-a", T0, 999.0));
    assert_eq!(status, 204);
    let before = wattdb_rows(&server);
    assert_eq!(before.len(), 90);

    let (status, report) = persist(&server);
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["rows"], 90, "{report}");
    let all = parquet_files(&data);
    let files: Vec<&String> = all.iter().filter(|f| f.contains("=raw/")).collect();
    assert_eq!(files.len(), 2, "{all:?}");
    for (res, dir) in [
        ("1m", "date=2026-11-23"),
        ("1h", "month=2026-11"),
        ("1d", "year=2026"),
    ] {
        let prefix = format!("readings/resolution={res}/{dir}/");
        assert_eq!(
            all.iter().filter(|f| f.starts_with(&prefix)).count(),
            1,
            "one file of the {res} rollup: {all:?}"
        );
    }
    assert!(
        files[0].starts_with("readings/resolution=raw/date=2026-11-23/hour=10/"),
        "{files:?}"
    );
    assert!(
        files[1].starts_with("readings/resolution=raw/date=2026-11-23/hour=11/"),
        "{files:?}"
    );
    assert_eq!(wattdb_rows(&server), before, "same rows from the files");

    let glob = format!("{}/readings/resolution=raw/*/*/*.parquet", data.display());
    let pyarrow = python(
        &format!(
            "import pyarrow.dataset as ds\n\
             t = ds.dataset({:?}, format='parquet', partitioning='hive').to_table()\n\
             assert t.schema.field('ts').type.tz == 'UTC', t.schema\n\
             rows = zip(t['device_id'].to_pylist(), t['ts'].cast('int64').to_pylist(), t['power'].to_pylist())\n{PRINT_ROWS}",
            format!("{}/readings/resolution=raw", data.display())
        ),
        &[],
    );
    assert_eq!(pyarrow, before, "pyarrow reads the same rows");
    let duckdb = python(
        &format!(
            "import duckdb\n\
             rows = duckdb.sql(\"SELECT device_id, epoch_ns(ts), power FROM read_parquet('{glob}', hive_partitioning=true) WHERE resolution = 'raw'\").fetchall()\n{PRINT_ROWS}"
        ),
        &[],
    );
    assert_eq!(duckdb, before, "DuckDB reads the same rows");

    // After a restart the files, not a WAL replay, answer.
    server.stop();
    let server = Server::start(&data, &[]);
    assert_eq!(wattdb_rows(&server), before);
    let (_, metrics) = server.get("/metrics");
    assert!(
        metrics.contains("wattdb_wal_replayed_readings 0"),
        "{metrics}"
    );
    // Two raw files and one file of each rollup.
    assert!(metrics.contains("wattdb_store_files 5"), "{metrics}");
}

/// A moto S3 server on a free loopback port, with one bucket.
struct Moto {
    child: Child,
    endpoint: String,
}

impl Moto {
    fn start(bucket: &str) -> Moto {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("moto_server (pip install 'moto[server]', done by scripts/test)");
        let endpoint = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            // Creating the bucket doubles as the readiness probe.
            let (status, _) = response(agent().put(&format!("{endpoint}/{bucket}")).call());
            if status == 200 {
                break;
            }
            assert!(Instant::now() < deadline, "moto did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        Moto { child, endpoint }
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok);
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        self.signal("-CONT");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const S3_ENV: [(&str, &str); 3] = [
    ("AWS_ACCESS_KEY_ID", "wattdb-test"),
    ("AWS_SECRET_ACCESS_KEY", "wattdb-test-secret"),
    ("AWS_REGION", "us-east-1"),
];

#[test]
fn compaction_leaves_one_file_per_partition_and_readers_one_copy_of_each_reading() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Server::start(&data, &["--compact-min-files", "4"]);
    write_fixture(&server);
    assert_eq!(persist(&server).0, 200);
    // Three more cycles into the 10:00 partition, each rewriting a reading.
    for (k, power) in [500.0, 600.0, 700.0].into_iter().enumerate() {
        let ts = T0 + k as i64 * 2_000_000_000;
        assert_eq!(server.write_lp(&lp_line("plug-a", ts, power)).0, 204);
        assert_eq!(persist(&server).0, 200);
    }
    let before = wattdb_rows(&server);
    assert_eq!(before.len(), 90);
    // Compaction runs by itself once a partition has four files: the raw 10:00 hour
    // and the one partition of each rollup.
    let deadline = Instant::now() + Duration::from_secs(20);
    while server.metric("wattdb_compactions_total").unwrap_or(0.0) < 4.0 {
        assert!(Instant::now() < deadline, "{}", server.log_tail());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(server.metric("wattdb_compacted_files_total"), Some(16.0));
    assert_eq!(
        wattdb_rows(&server),
        before,
        "the same rows after the merge"
    );
    // The replaced files stay for queries in flight; the manifest lists two raw files
    // and one file per rollup.
    assert_eq!(server.metric("wattdb_store_files"), Some(5.0));
    // Asked for, compaction merges any two small files: nothing is left to merge.
    let (status, body) = server.post("/api/v1/admin/compact", "application/json", b"");
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["jobs"],
        json!([])
    );

    // A reader of the compacted partition sees one copy of each reading. (Replaced
    // files linger on disk for two minutes, so read the files the manifest lists.)
    let manifest = std::fs::read_dir(data.join("catalog"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .max()
        .unwrap();
    let pyarrow = python(
        &format!(
            "import json, pyarrow.parquet as pq, pyarrow as pa\n\
             m = json.load(open({:?}))\n\
             t = pa.concat_tables([pq.read_table({:?} + '/' + f['path']) for f in m['files'] if f['tier'] == 'raw'])\n\
             rows = zip(t['device_id'].to_pylist(), t['ts'].cast('int64').to_pylist(), t['power'].to_pylist())\n{PRINT_ROWS}",
            manifest.display().to_string(),
            data.display().to_string()
        ),
        &[],
    );
    assert_eq!(pyarrow, before);
}

fn s3_server(data: &Path, moto: &Moto, extra: &[&str]) -> Server {
    let mut args = vec![
        "--s3-bucket",
        "wattdb",
        "--s3-prefix",
        "fleet-1",
        "--s3-endpoint",
        &moto.endpoint,
        "--s3-allow-http",
    ];
    args.extend_from_slice(extra);
    Server::start_with_env(data, &args, &S3_ENV)
}

#[test]
fn s3_reads_go_through_the_local_cache_and_outlast_an_outage() {
    let moto = Moto::start("wattdb");
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = s3_server(&data, &moto, &["--s3-timeout-s", "1"]);
    write_fixture(&server);
    assert_eq!(persist(&server).0, 200);
    let before = wattdb_rows(&server);
    assert_eq!(before.len(), 90);
    let misses = server.metric("wattdb_store_cache_misses_total").unwrap();
    assert_eq!(misses, 2.0, "each of the two files fetched once");
    assert!(server.metric("wattdb_store_cache_bytes").unwrap() > 0.0);
    let cached = parquet_files(&data.join("cache/fleet-1"));
    assert_eq!(
        cached.len(),
        0,
        "the cache mirrors store paths, without the prefix"
    );
    let cached = parquet_files(&data.join("cache"));
    assert_eq!(cached.len(), 2, "{cached:?}");

    // The store stops answering: the cached files still answer every query.
    moto.signal("-STOP");
    assert_eq!(wattdb_rows(&server), before);
    let filtered = server.sql("SELECT count(*) AS n FROM readings WHERE device_id = 'plug-b'");
    assert_eq!(filtered[0]["n"], 30);
    moto.signal("-CONT");
    assert!(server.metric("wattdb_store_cache_hits_total").unwrap() > 0.0);
    assert_eq!(server.metric("wattdb_store_cache_misses_total"), Some(2.0));
}

#[test]
fn s3_bucket_holds_the_layout_and_an_unreachable_store_loses_nothing() {
    let moto = Moto::start("wattdb");
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // Without the read cache, so that a query during the outage needs the store.
    let mut server = s3_server(
        &data,
        &moto,
        &["--s3-timeout-s", "1", "--s3-cache-mib", "0"],
    );
    write_fixture(&server);
    let (status, report) = persist(&server);
    assert_eq!(status, 200, "{report}\n{}", server.log_tail());
    assert_eq!(report["rows"], 90);
    assert!(
        !data.join("readings").exists(),
        "files go to the bucket, not the data directory"
    );
    let read_bucket = format!(
        "import pyarrow.dataset as ds, pyarrow.fs as fs\n\
         s3 = fs.S3FileSystem(endpoint_override={:?}, scheme='http', access_key='wattdb-test', secret_key='wattdb-test-secret', region='us-east-1')\n\
         keys = sorted(i.path for i in s3.get_file_info(fs.FileSelector('wattdb/fleet-1', recursive=True)) if i.type == fs.FileType.File)\n\
         for k in keys: print('key', k)\n\
         t = ds.dataset('wattdb/fleet-1/readings/resolution=raw', filesystem=s3, format='parquet', partitioning='hive').to_table()\n\
         rows = zip(t['device_id'].to_pylist(), t['ts'].cast('int64').to_pylist(), t['power'].to_pylist())\n{PRINT_ROWS}",
        moto.endpoint
    );
    let out = python(&read_bucket, &[]);
    let keys: Vec<&String> = out.iter().filter(|l| l.starts_with("key ")).collect();
    assert!(
        keys.iter().any(|k| k
            .starts_with("key wattdb/fleet-1/readings/resolution=raw/date=2026-11-23/hour=10/")),
        "{keys:?}"
    );
    assert!(
        keys.iter()
            .any(|k| k.starts_with("key wattdb/fleet-1/catalog/manifest-")),
        "{keys:?}"
    );
    let from_bucket: Vec<String> = out
        .iter()
        .filter(|l| !l.starts_with("key "))
        .cloned()
        .collect();
    let expected = wattdb_rows(&server);
    assert_eq!(
        from_bucket, expected,
        "pyarrow reads the bucket's rows as WattDB does"
    );

    // The store stops answering: writes are still acknowledged, persisting reports
    // 503, nothing is lost, and it catches up once the store is back.
    moto.signal("-STOP");
    let (status, _) = server.write_lp(&lp_line("plug-d", T0, 1.0));
    assert_eq!(status, 204);
    let (status, report) = persist(&server);
    assert_eq!(status, 503, "{report}");
    let (status, _) = server.write_lp(&lp_line("plug-e", T0, 2.0));
    assert_eq!(status, 204);
    // Buffered rows stay queryable meanwhile (the device filter prunes every file, so
    // the query does not need the store).
    let buffered =
        server.sql("SELECT count(*) AS n FROM readings WHERE device_id IN ('plug-d', 'plug-e')");
    assert_eq!(buffered[0]["n"], 2);
    // A query that needs the files gets 503 and says why.
    let (status, body) = server.query("SELECT count(*) AS n FROM readings", "json");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("object store"), "{body}");
    moto.signal("-CONT");
    let (status, report) = persist(&server);
    assert_eq!(status, 200, "{report}\n{}", server.log_tail());
    let (_, metrics) = server.get("/metrics");
    assert!(
        !metrics.contains("wattdb_persist_errors_total 0"),
        "{metrics}"
    );

    // Everything is in the bucket: a restart with an empty WAL replay answers it all.
    server.stop();
    let server = s3_server(&data, &moto, &[]);
    let all = wattdb_rows(&server);
    assert_eq!(all.len(), 92);
    let (_, metrics) = server.get("/metrics");
    assert!(
        metrics.contains("wattdb_wal_replayed_readings 0"),
        "{metrics}"
    );
    let out = python(&read_bucket, &[]);
    let from_bucket: Vec<String> = out.into_iter().filter(|l| !l.starts_with("key ")).collect();
    assert_eq!(from_bucket, all);
}

/// 2026-11-23T23:30:00Z: the rollup fixture crosses midnight.
const T_MIDNIGHT: i64 = 1_795_476_600_000_000_000;

/// Readings for the rollup test: three plugs every 7 s for an hour across midnight,
/// with a 10-minute gap (past the 300 s cap), a counter reset, readings without a
/// counter, relay off periods, a late batch and a rewrite. Written in several persist
/// cycles, so that buckets are extended, and recomputed for the late readings.
fn write_rollup_fixture(server: &Server) {
    let line = |plug: &str, k: i64| {
        let ts = T_MIDNIGHT + k * 7_000_000_000;
        let power = ((k * 37 + plug.len() as i64 * 11) % 2000) as f64 / 10.0;
        let energy = match plug {
            "plug-c" if k >= 300 => format!(",energy={:.1}", (k - 300) as f64 * 0.4),
            _ if k % 13 == 0 => String::new(),
            _ => format!(",energy={:.1}", 1000.0 + k as f64 * 0.4),
        };
        let relay = if (k / 50) % 3 == 2 { "false" } else { "true" };
        format!(
            "power_metrics,device_id={plug},location=lab voltage={:.1},current={:.3},power={power:.1}{energy},relay_state={relay} {ts}\n",
            228.0 + (k % 40) as f64 / 10.0,
            power / 230.0
        )
    };
    let gap = |plug: &str, k: i64| plug == "plug-b" && (200..286).contains(&k);
    let late = |k: i64| (100..110).contains(&k);
    for part in 0..4 {
        let mut body = String::new();
        for plug in ["plug-a", "plug-b", "plug-c"] {
            for k in part * 130..(part + 1) * 130 {
                if !gap(plug, k) && !late(k) {
                    body.push_str(&line(plug, k));
                }
            }
        }
        let (status, text) = server.write_lp(&body);
        assert_eq!(status, 204, "{text}");
        assert_eq!(persist(server).0, 200);
    }
    // Late readings into buckets already written, and a rewrite of one reading.
    let mut body: String = (100..110).map(|k| line("plug-a", k)).collect();
    body.push_str(&line("plug-b", 50).replace("power=", "power=1"));
    let (status, text) = server.write_lp(&body);
    assert_eq!(status, 204, "{text}");
    assert_eq!(persist(server).0, 200);
}

#[test]
fn s3_rollups_equal_what_pyarrow_reads_from_the_bucket_and_duckdb_recomputes_from_raw() {
    let moto = Moto::start("wattdb");
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = s3_server(&data, &moto, &[]);
    write_rollup_fixture(&server);
    assert!(
        server
            .metric("wattdb_rollup_recomputed_plugs_total")
            .unwrap()
            >= 2.0
    );
    // The first cycle found nothing persisted: its plugs' tails started from their
    // readings, with no file read (and the rows below still equal DuckDB's).
    assert_eq!(server.metric("wattdb_rollup_new_plugs_total"), Some(3.0));
    // Each of the fixture's three plugs keeps a tail in memory.
    assert_eq!(server.metric("wattdb_rollup_tails"), Some(3.0));
    // WattDB's rollup rows, per resolution.
    let mut wattdb = serde_json::Map::new();
    for res in ["1m", "1h", "1d"] {
        let rows = server.sql(&format!(
            "SELECT device_id, CAST(bucket AS BIGINT) AS bucket, count, voltage_min, \
             voltage_max, voltage_sum, power_min, power_max, power_sum, energy_first, \
             energy_last, energy_counter_wh, energy_wh, relay_on_s, \
             CAST(first_ts AS BIGINT) AS first_ts, CAST(last_ts AS BIGINT) AS last_ts, \
             location FROM readings_{res} ORDER BY device_id, bucket"
        ));
        assert!(!rows.is_empty(), "{res}");
        wattdb.insert(res.to_owned(), Value::Array(rows));
    }
    assert_eq!(
        wattdb["1d"].as_array().unwrap().len(),
        6,
        "3 plugs × 2 days"
    );
    let expected = dir.path().join("wattdb.json");
    std::fs::write(&expected, Value::Object(wattdb).to_string()).unwrap();
    let script = format!(
        r#"
import json, math, duckdb, pyarrow as pa, pyarrow.fs as fs, pyarrow.parquet as pq
s3 = fs.S3FileSystem(endpoint_override={endpoint:?}, scheme='http', access_key='wattdb-test', secret_key='wattdb-test-secret', region='us-east-1')
root = 'wattdb/fleet-1/'
# The live files are those the newest manifest lists; of two copies of a raw reading,
# the file of higher rank wins; the rollup rows of a plug and bucket merge (README).
names = [i.path for i in s3.get_file_info(fs.FileSelector(root + 'catalog')) if i.path.endswith('.json')]
with s3.open_input_stream(max(names)) as f:
    manifest = json.load(f)
def ranked(tier):
    parts = []
    for f in manifest['files']:
        if f['tier'] != tier:
            continue
        assert f['path'].startswith('readings/resolution=' + tier + '/'), f['path']
        t = pq.read_table(root + f['path'], filesystem=s3)
        rank = f.get('merged_rank') or f['id']
        parts.append(t.append_column('_rank', pa.array([rank] * t.num_rows, pa.int64())))
    return pa.concat_tables(parts)
def live(tier):
    t = ranked(tier)
    return duckdb.sql("SELECT * EXCLUDE (_rank) FROM t QUALIFY row_number() OVER (PARTITION BY device_id, ts ORDER BY _rank DESC) = 1").arrow().read_all()
def merged(tier):
    t = ranked(tier)
    # Cycles that extended open buckets wrote partial rows; a recomputation whole ones.
    assert t['partial'].to_pylist().count(True) > 0, tier
    assert t['partial'].to_pylist().count(False) > 0, tier
    return duckdb.sql("""
    WITH w AS (SELECT *, max(CASE WHEN partial THEN NULL ELSE _rank END)
                 OVER (PARTITION BY device_id, bucket) AS whole FROM t),
    k AS (SELECT * FROM w WHERE whole IS NULL OR _rank >= whole)
    SELECT device_id, bucket, sum(count) AS count,
      min(voltage_min) AS voltage_min, max(voltage_max) AS voltage_max, sum(voltage_sum) AS voltage_sum,
      min(power_min) AS power_min, max(power_max) AS power_max, sum(power_sum) AS power_sum,
      arg_min(energy_first, _rank) FILTER (WHERE energy_first IS NOT NULL) AS energy_first,
      arg_max(energy_last, _rank) FILTER (WHERE energy_last IS NOT NULL) AS energy_last,
      sum(energy_counter_wh) AS energy_counter_wh, sum(energy_wh) AS energy_wh,
      sum(relay_on_s) AS relay_on_s, min(first_ts) AS first_ts, max(last_ts) AS last_ts,
      (list(location ORDER BY _rank DESC))[1] AS location
    FROM k GROUP BY device_id, bucket""").arrow().read_all()
raw = live('raw')
COLS = ['device_id', 'bucket', 'count', 'voltage_min', 'voltage_max', 'voltage_sum', 'power_min', 'power_max', 'power_sum', 'energy_first', 'energy_last', 'energy_counter_wh', 'energy_wh', 'relay_on_s', 'first_ts', 'last_ts', 'location']
def recompute(width):
    # The definitions of the rollup module, in SQL: intervals booked in the bucket of
    # their end, a 300 s gap cap, counter deltas with resets.
    return duckdb.sql(f"""
    WITH r AS (
      SELECT *, epoch_ns(ts) AS t,
        lag(epoch_ns(ts)) OVER w AS pt, lag(power) OVER w AS pp, lag(relay_on) OVER w AS pr,
        last_value(energy IGNORE NULLS) OVER (PARTITION BY device_id ORDER BY ts ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS pe
      FROM raw WINDOW w AS (PARTITION BY device_id ORDER BY ts)),
    s AS (
      SELECT *,
        CASE WHEN pt IS NOT NULL AND t - pt <= 300000000000 THEN (pp + power) / 2 * ((t - pt) / 1e9) / 3600 ELSE 0 END AS e_wh,
        CASE WHEN pt IS NOT NULL AND t - pt <= 300000000000 AND pr THEN (t - pt) / 1e9 ELSE 0 END AS on_s,
        CASE WHEN energy IS NULL OR pe IS NULL THEN 0 WHEN energy >= pe THEN energy - pe ELSE energy END AS c_wh
      FROM r)
    SELECT device_id, (t // {{width}}) * {{width}} AS bucket, count(*) AS count,
      min(voltage) AS voltage_min, max(voltage) AS voltage_max, sum(voltage) AS voltage_sum,
      min(power) AS power_min, max(power) AS power_max, sum(power) AS power_sum,
      arg_min(energy, t) FILTER (WHERE energy IS NOT NULL) AS energy_first,
      arg_max(energy, t) FILTER (WHERE energy IS NOT NULL) AS energy_last,
      sum(c_wh) AS energy_counter_wh, sum(e_wh) AS energy_wh, sum(on_s) AS relay_on_s,
      min(t) AS first_ts, max(t) AS last_ts, arg_max(location, t) AS location
    FROM s GROUP BY ALL ORDER BY device_id, bucket""").fetchall()
def close(a, b):
    if isinstance(a, str) or a is None or b is None:
        return a == b
    return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-9)
def same(name, got, want):
    assert len(got) == len(want), f"{{name}}: {{len(got)}} rows, want {{len(want)}}"
    for g, w in zip(got, want):
        for c, a, b in zip(COLS, g, w):
            assert close(a, b), f"{{name}}: {{c}} is {{a}}, want {{b}} in\n{{g}}\n{{w}}"
wattdb = json.load(open({expected:?}))
for res, width in [('1m', 60), ('1h', 3600), ('1d', 86400)]:
    from_wattdb = [[r[c] for c in COLS] for r in wattdb[res]]
    files = merged(res)
    in_bucket = duckdb.sql("SELECT device_id, epoch_ns(bucket), count, voltage_min, voltage_max, voltage_sum, power_min, power_max, power_sum, energy_first, energy_last, energy_counter_wh, energy_wh, relay_on_s, epoch_ns(first_ts), epoch_ns(last_ts), location FROM files ORDER BY device_id, bucket").fetchall()
    same(res + ' files in the bucket vs WattDB', in_bucket, from_wattdb)
    same(res + ' DuckDB from raw vs WattDB', recompute(width * 1000000000), from_wattdb)
    print(res, len(from_wattdb))
"#,
        endpoint = moto.endpoint,
        expected = expected.display().to_string(),
    );
    let out = python(&script, &[]);
    assert_eq!(out.len(), 3, "{out:?}");
}
