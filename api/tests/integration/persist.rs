//! Persistence end to end: Parquet files in the documented layout, read back by real
//! readers (pyarrow, DuckDB) on local disk and from a real S3-compatible server
//! (moto), and an object store that stops answering for a while.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::{Server, agent, lp_line, response};

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

/// Runs a Python snippet; its stdout lines.
fn python(script: &str, env: &[(&str, &str)]) -> Vec<String> {
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .envs(env.iter().copied())
        .output()
        .expect("python3 (installed by scripts/test)");
    assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
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
    let files = parquet_files(&data);
    assert_eq!(files.len(), 2, "{files:?}");
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
    assert!(metrics.contains("wattdb_store_files 2"), "{metrics}");
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
    // Compaction runs by itself once the partition has four files.
    let deadline = Instant::now() + Duration::from_secs(20);
    while server.metric("wattdb_compactions_total").unwrap_or(0.0) < 1.0 {
        assert!(Instant::now() < deadline, "{}", server.log_tail());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(server.metric("wattdb_compacted_files_total"), Some(4.0));
    assert_eq!(
        wattdb_rows(&server),
        before,
        "the same rows after the merge"
    );
    // The replaced files stay for queries in flight; the manifest lists two files.
    assert_eq!(server.metric("wattdb_store_files"), Some(2.0));
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
             t = pa.concat_tables([pq.read_table({:?} + '/' + f['path']) for f in m['files']])\n\
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
