use arrow::array::AsArray;
use arrow::datatypes::Int64Type;
use futures::TryStreamExt;
use wattdb_engine::{EngineConfig, ReadingBatch, ReadingRef};

use super::*;

async fn engine_with(rows: &[(&str, i64, f64)]) -> (tempfile::TempDir, Engine) {
    let dir = tempfile::tempdir().unwrap();
    let engine = open_engine(dir.path());
    let mut b = ReadingBatch::new();
    for &(id, ts, power) in rows {
        b.push(ReadingRef {
            device_id: id,
            ts,
            voltage: 230.0,
            current: 0.1,
            power,
            energy: None,
            relay_on: None,
            location: None,
            device_type: None,
        });
    }
    engine.write(b).await.unwrap();
    (dir, engine)
}

/// An engine on `dir` that keeps data forever (test readings have fixed dates).
fn open_engine(dir: &std::path::Path) -> Engine {
    Engine::open(EngineConfig {
        data_dir: dir.to_owned(),
        wal_segment_size: 1 << 20,
        retention: wattdb_engine::RetentionConfig::forever(),
        ..Default::default()
    })
    .unwrap()
}

async fn count(q: &QueryEngine, sql: &str) -> i64 {
    let batches: Vec<_> = q.sql(sql).await.unwrap().try_collect().await.unwrap();
    batches[0].column(0).as_primitive::<Int64Type>().value(0)
}

#[tokio::test]
async fn selects_and_filters_by_time_and_device() {
    let s = 1_000_000_000;
    let (_d, engine) = engine_with(&[("a", s, 1.0), ("a", 2 * s, 2.0), ("b", 3 * s, 3.0)]).await;
    let q = QueryEngine::new(engine, QueryConfig::default());
    assert_eq!(count(&q, "SELECT count(*) FROM readings").await, 3);
    assert_eq!(
        count(&q, "SELECT count(*) FROM readings WHERE device_id = 'a'").await,
        2
    );
    assert_eq!(
        count(
            &q,
            "SELECT count(*) FROM readings WHERE ts >= '1970-01-01T00:00:02Z' AND ts < to_timestamp(3)"
        )
        .await,
        1
    );
}

#[tokio::test]
async fn refuses_anything_but_reading_statements() {
    let (_d, engine) = engine_with(&[("a", 1, 1.0)]).await;
    let q = QueryEngine::new(engine, QueryConfig::default());
    for sql in [
        "CREATE TABLE x AS SELECT 1",
        "DROP TABLE readings",
        "INSERT INTO readings SELECT * FROM readings",
        "SET datafusion.execution.batch_size = 1",
        "SELECT 1; SELECT 2",
    ] {
        let err = q
            .sql(sql)
            .await
            .err()
            .unwrap_or_else(|| panic!("{sql} ran"));
        assert!(
            matches!(
                err,
                Error::NotReadOnly | Error::NotOneStatement(2) | Error::Plan(_)
            ),
            "{sql}: {err}"
        );
    }
    assert!(matches!(q.sql("SELEC 1").await, Err(Error::Sql(_))));
    assert!(matches!(
        q.sql("SELECT nope FROM readings").await,
        Err(Error::Plan(_))
    ));
}

#[tokio::test]
async fn a_query_over_its_memory_limit_fails_cleanly() {
    let rows: Vec<(String, i64, f64)> = (0..50_000)
        .map(|i| (format!("p{i}"), i, i as f64))
        .collect();
    let refs: Vec<(&str, i64, f64)> = rows.iter().map(|(a, b, c)| (a.as_str(), *b, *c)).collect();
    let (_d, engine) = engine_with(&refs).await;
    let q = QueryEngine::new(
        engine,
        QueryConfig {
            memory_limit: 64 * 1024,
            ..QueryConfig::default()
        },
    );
    let stream = q
        .sql("SELECT device_id, count(*) FROM readings GROUP BY device_id ORDER BY 2, 1")
        .await;
    let result = match stream {
        Ok(s) => s
            .try_collect::<Vec<_>>()
            .await
            .map_err(Error::from_execution),
        Err(e) => Err(e),
    };
    assert!(matches!(result, Err(Error::MemoryLimit(_))), "{result:?}");
}

fn reading(id: &str, ts: i64, power: f64) -> ReadingBatch {
    let mut b = ReadingBatch::new();
    b.push(ReadingRef {
        device_id: id,
        ts,
        voltage: 230.0,
        current: 0.1,
        power,
        energy: Some(ts as f64),
        relay_on: Some(true),
        location: Some("lab"),
        device_type: None,
    });
    b
}

async fn rows(q: &QueryEngine, sql: &str) -> Vec<(String, i64, f64)> {
    let batches: Vec<_> = q.sql(sql).await.unwrap().try_collect().await.unwrap();
    let mut out = Vec::new();
    for b in batches {
        let id = b.column(0).as_string::<i32>();
        let ts = b
            .column(1)
            .as_primitive::<arrow::datatypes::TimestampNanosecondType>();
        let p = b.column(2).as_primitive::<arrow::datatypes::Float64Type>();
        for i in 0..b.num_rows() {
            out.push((id.value(i).to_owned(), ts.value(i), p.value(i)));
        }
    }
    out
}

const ALL: &str = "SELECT device_id, ts, power FROM readings ORDER BY device_id, ts";

#[tokio::test]
async fn buffer_and_parquet_files_read_as_one_table_where_the_last_write_wins() {
    let dir = tempfile::tempdir().unwrap();
    let open = || open_engine(dir.path());
    let engine = open();
    for (id, ts, p) in [("a", 1, 1.0), ("a", 2, 2.0), ("a", 3, 3.0), ("b", 1, 10.0)] {
        engine.write(reading(id, ts, p)).await.unwrap();
    }
    let report = engine.persist().await.unwrap();
    assert_eq!((report.rows, report.files), (4, 1));
    assert_eq!(
        engine.buffer_usage().0,
        0,
        "persisted rows leave the buffer"
    );
    let q = QueryEngine::new(engine.clone(), QueryConfig::default());
    let expected = vec![
        ("a".to_owned(), 1, 1.0),
        ("a".to_owned(), 2, 2.0),
        ("a".to_owned(), 3, 3.0),
        ("b".to_owned(), 1, 10.0),
    ];
    assert_eq!(rows(&q, ALL).await, expected, "from the file alone");

    // A rewrite of a persisted reading (buffer beats file) and a new plug.
    engine.write(reading("a", 2, 20.0)).await.unwrap();
    engine.write(reading("c", 5, 50.0)).await.unwrap();
    let mut expected = expected;
    expected[1].2 = 20.0;
    expected.push(("c".to_owned(), 5, 50.0));
    assert_eq!(rows(&q, ALL).await, expected, "buffer over file");
    // A plug whose rows are only in the buffer: no overlap, plain union.
    assert_eq!(
        rows(
            &q,
            "SELECT device_id, ts, power FROM readings WHERE device_id = 'c'"
        )
        .await,
        vec![("c".to_owned(), 5, 50.0)]
    );

    // Persisted again: the newer file beats the older one.
    engine.persist().await.unwrap();
    let raw_files = engine
        .manifest()
        .files
        .iter()
        .filter(|f| f.tier == wattdb_engine::Tier::Raw)
        .count();
    assert_eq!(raw_files, 2);
    assert_eq!(rows(&q, ALL).await, expected, "newer file over older file");
    assert_eq!(count(&q, "SELECT count(*) FROM readings").await, 5);
    assert_eq!(
        count(
            &q,
            "SELECT count(*) FROM readings WHERE device_id = 'a' AND ts >= to_timestamp_nanos(2)"
        )
        .await,
        2
    );

    // After a restart: nothing replayed twice, the same answers.
    drop(q);
    drop(engine);
    let engine = open();
    assert_eq!(
        engine.buffer_usage().0,
        0,
        "persisted records are not replayed"
    );
    let q = QueryEngine::new(engine.clone(), QueryConfig::default());
    assert_eq!(rows(&q, ALL).await, expected);
    // Sequence numbers go on after the persisted ones: a new write still wins.
    engine.write(reading("a", 1, 100.0)).await.unwrap();
    drop(q);
    drop(engine);
    let engine = open();
    let q = QueryEngine::new(engine, QueryConfig::default());
    expected[0].2 = 100.0;
    assert_eq!(rows(&q, ALL).await, expected);
}

async fn count_for(q: &QueryEngine, sql: &str, devices: &[String]) -> i64 {
    let batches: Vec<_> = q
        .sql_for(sql, Some(devices))
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    batches[0].column(0).as_primitive::<Int64Type>().value(0)
}

#[tokio::test]
async fn a_prefix_limited_session_sees_no_other_plug_in_any_table() {
    let s = 1_000_000_000;
    let mut rows = Vec::new();
    for (i, id) in ["house1-a", "house1-b", "house2-a", "house10-a"]
        .into_iter()
        .enumerate()
    {
        for m in 0..3 {
            rows.push((id, (m * 60 + i as i64) * s, 1.0));
        }
    }
    let (_d, engine) = engine_with(&rows).await;
    engine.persist().await.unwrap();
    // And a newer reading still in the buffer.
    engine
        .write(reading("house2-a", 600 * s, 5.0))
        .await
        .unwrap();
    let q = QueryEngine::new(engine, QueryConfig::default());
    let house1 = ["house1-".to_owned()];
    for (sql, want) in [
        ("SELECT count(*) FROM readings", 6),
        (
            "SELECT count(*) FROM readings WHERE device_id = 'house2-a'",
            0,
        ),
        (
            "SELECT count(*) FROM readings r WHERE r.device_id LIKE 'house%'",
            6,
        ),
        ("SELECT count(*) FROM (SELECT * FROM readings LIMIT 100)", 6),
        (
            "SELECT count(*) FROM (SELECT device_id FROM readings LIMIT 4)",
            4,
        ),
        ("SELECT count(*) FROM readings_1m", 6),
        ("SELECT count(*) FROM readings_1h", 2),
        ("SELECT count(*) FROM readings_1d", 2),
        (
            "SELECT count(*) FROM readings a JOIN readings_1m b ON a.device_id = b.device_id",
            18,
        ),
        (
            "SELECT count(DISTINCT device_id) FROM (SELECT device_id FROM readings UNION ALL SELECT device_id FROM readings_1d)",
            2,
        ),
    ] {
        assert_eq!(count_for(&q, sql, &house1).await, want, "{sql}");
    }
    let two = ["house2-".to_owned(), "house10-".to_owned()];
    assert_eq!(
        count_for(&q, "SELECT count(*) FROM readings", &two).await,
        7
    );
    assert_eq!(count_for(&q, "SELECT count(*) FROM readings", &[]).await, 0);
    // Unlimited, every plug.
    assert_eq!(count(&q, "SELECT count(*) FROM readings").await, 13);
}

#[tokio::test]
async fn plug_rows_equal_the_rollup_table_across_rewritten_buckets() {
    let s = 1_000_000_000;
    let mut rows = Vec::new();
    for id in ["a", "b", "c"] {
        for k in 0..150 {
            rows.push((id, k * s, 10.0 + k as f64));
        }
    }
    let (_d, engine) = engine_with(&rows).await;
    engine.persist().await.unwrap();
    // Later readings of the open minute, a rewrite of a persisted one, and more.
    for (ts, power) in [
        (150 * s, 1.0),
        (151 * s, 2.0),
        (30 * s, 99.0),
        (200 * s, 3.0),
    ] {
        engine.write(reading("b", ts, power)).await.unwrap();
    }
    engine.persist().await.unwrap();
    let q = QueryEngine::new(engine, QueryConfig::default());
    let columns = ["device_id", "bucket", "count", "power_sum", "power_last"];
    for devices in [
        vec!["b".to_owned()],
        vec!["c".to_owned(), "a".to_owned()],
        vec!["zz".to_owned()],
    ] {
        for (from, to) in [(0, 3600 * s), (60 * s, 180 * s)] {
            let got = q
                .plug_rows(Tier::Minute, &devices, from, to, &columns)
                .await
                .unwrap();
            let mut got_rows: Vec<(String, i64, i64, f64, f64)> = Vec::new();
            if let Some(b) = got {
                for i in 0..b.num_rows() {
                    got_rows.push((
                        b.column(0).as_string::<i32>().value(i).to_owned(),
                        b.column(1)
                            .as_primitive::<arrow::datatypes::TimestampNanosecondType>()
                            .value(i),
                        b.column(2).as_primitive::<Int64Type>().value(i),
                        b.column(3)
                            .as_primitive::<arrow::datatypes::Float64Type>()
                            .value(i),
                        b.column(4)
                            .as_primitive::<arrow::datatypes::Float64Type>()
                            .value(i),
                    ));
                }
            }
            got_rows.sort_by(|x, y| (&x.0, x.1).cmp(&(&y.0, y.1)));
            let list: Vec<String> = devices.iter().map(|d| format!("'{d}'")).collect();
            let sql = format!(
                "SELECT device_id, CAST(bucket AS BIGINT) AS t, count, power_sum, power_last FROM readings_1m \
                 WHERE device_id IN ({}) AND bucket >= to_timestamp_nanos({from}) \
                 AND bucket < to_timestamp_nanos({to}) ORDER BY device_id, t",
                list.join(", ")
            );
            let batches: Vec<RecordBatch> = q.sql(&sql).await.unwrap().try_collect().await.unwrap();
            let mut want = Vec::new();
            for b in &batches {
                for i in 0..b.num_rows() {
                    want.push((
                        b.column(0).as_string::<i32>().value(i).to_owned(),
                        b.column(1).as_primitive::<Int64Type>().value(i),
                        b.column(2).as_primitive::<Int64Type>().value(i),
                        b.column(3)
                            .as_primitive::<arrow::datatypes::Float64Type>()
                            .value(i),
                        b.column(4)
                            .as_primitive::<arrow::datatypes::Float64Type>()
                            .value(i),
                    ));
                }
            }
            assert_eq!(got_rows, want, "{devices:?} {from}..{to}");
            if devices[0] == "b" && from == 0 {
                // The rewrite and the readings of the second cycle are in.
                assert_eq!(want.len(), 4, "{want:?}");
                assert_eq!(want[2].2, 32, "minute 2: 30 first-cycle + 2 later readings");
            }
        }
    }
}

/// Every rollup table, whole and filtered, as text (floats in full).
async fn rollup_tables(q: &QueryEngine) -> Vec<String> {
    let mut out = Vec::new();
    for t in ["readings_1m", "readings_1h", "readings_1d"] {
        for filter in [
            "",
            "WHERE device_id = 'b'",
            "WHERE device_id IN ('a', 'c') AND bucket >= to_timestamp(3600)",
        ] {
            let sql = format!("SELECT * FROM {t} {filter} ORDER BY device_id, bucket");
            let batches: Vec<RecordBatch> = q.sql(&sql).await.unwrap().try_collect().await.unwrap();
            let text = arrow::util::pretty::pretty_format_batches(&batches)
                .unwrap()
                .to_string();
            out.push(format!("{sql}\n{text}"));
        }
    }
    out
}

/// Two tables as text, equal but for the last bits of floats: sums over a bucket that
/// several persist cycles wrote add their partial rows in whatever order the query's
/// partitions meet them. The `+---+` border lines are left out: their widths follow the
/// widest cell, so a float printed one digit shorter changes them.
fn same_up_to_rounding(a: &str, b: &str) -> bool {
    let cells = |t: &str| -> Vec<String> {
        t.lines()
            .filter(|line| !line.starts_with('+'))
            .flat_map(|line| line.split('|'))
            .map(|c| c.trim().to_owned())
            .collect()
    };
    let (a, b) = (cells(a), cells(b));
    a.len() == b.len()
        && a.iter().zip(&b).all(|(x, y)| {
            x == y
                || match (x.parse::<f64>(), y.parse::<f64>()) {
                    (Ok(x), Ok(y)) => (x - y).abs() <= 1e-12 * x.abs().max(y.abs()),
                    _ => false,
                }
        })
}

#[test]
fn tables_equal_but_for_a_float_printed_one_digit_shorter_are_the_same() {
    let a = "+----+--------------------+\n| id | sum                |\n+----+--------------------+\n| a  | 123.73913043478261 |\n+----+--------------------+";
    let b = "+----+-------------------+\n| id | sum               |\n+----+-------------------+\n| a  | 123.7391304347826 |\n+----+-------------------+";
    assert!(same_up_to_rounding(a, b));
    let c = "+----+-------------------+\n| id | sum               |\n+----+-------------------+\n| a  | 123.7391304447826 |\n+----+-------------------+";
    assert!(!same_up_to_rounding(a, c));
}

/// Readings of `plugs` every 10 s over `[from, to)` seconds, with a counter.
fn stream(plugs: &[&str], from: i64, to: i64, offset: f64) -> ReadingBatch {
    let s = 1_000_000_000;
    let mut b = ReadingBatch::new();
    for (k, id) in plugs.iter().enumerate() {
        for t in (from..to).step_by(10) {
            let power = offset + 100.0 * k as f64 + (t % 70) as f64;
            b.push(ReadingRef {
                device_id: id,
                ts: t * s,
                voltage: 230.0 + (t % 3) as f64,
                current: power / 230.0,
                power,
                energy: Some(t as f64 * (k + 1) as f64 / 36.0),
                relay_on: Some(t % 1000 != 0),
                location: Some("home"),
                device_type: Some("plug"),
            });
        }
    }
    b
}

#[tokio::test]
async fn rollup_tables_include_the_readings_not_yet_persisted_as_persisting_will_write_them() {
    let dir = tempfile::tempdir().unwrap();
    let open = || open_engine(dir.path());
    // Each step writes, reads the rollup tables (not yet persisted readings included),
    // persists, and reads them again from the files: the two must be equal.
    let check = |engine: Engine, what: &'static str| async move {
        let q = QueryEngine::new(engine.clone(), QueryConfig::default());
        let live = rollup_tables(&q).await;
        let report = engine.persist().await.unwrap();
        assert!(report.rows > 0, "{what}: nothing was persisted");
        let persisted = rollup_tables(&q).await;
        for (l, p) in live.iter().zip(&persisted) {
            assert!(same_up_to_rounding(l, p), "{what}:\n{l}\n{p}");
        }
        live
    };
    let engine = open();
    // 1. A first cycle: no file, no tail; two hours of three plugs.
    engine
        .write(stream(&["a", "b", "c"], 0, 7_205, 0.0))
        .await
        .unwrap();
    let first = check(engine.clone(), "first cycle").await;
    assert!(
        first[0].contains("| a ") && first[2].contains("| c "),
        "{}",
        first[0]
    );
    // 2. In order: the open minute, hour and day continue in memory (tails).
    engine
        .write(stream(&["a", "b", "c"], 7_205, 9_000, 1.0))
        .await
        .unwrap();
    let second = check(engine.clone(), "in order").await;
    assert_ne!(first, second, "the new readings changed the rollups");
    // 3. A rewrite of a persisted reading and a late one: recomputed from the files.
    let mut late = stream(&["b"], 1_000, 1_010, 500.0);
    late.push(ReadingRef {
        device_id: "b",
        ts: 1_005 * 1_000_000_000,
        voltage: 231.0,
        current: 1.0,
        power: 230.0,
        energy: None,
        relay_on: None,
        location: Some("away"),
        device_type: None,
    });
    engine.write(late).await.unwrap();
    engine
        .write(stream(&["a", "c"], 9_000, 9_100, 2.0))
        .await
        .unwrap();
    let third = check(engine.clone(), "late and rewritten").await;
    assert_ne!(second, third);
    // 4. After a restart: readings replayed from the WAL, no tails.
    engine
        .write(stream(&["a", "b", "c", "d"], 9_100, 10_000, 3.0))
        .await
        .unwrap();
    engine.shutdown();
    drop(engine);
    let engine = open();
    check(engine.clone(), "after a restart").await;
    // Queries that end before the readings not yet persisted need none of them.
    engine
        .write(stream(&["a"], 10_000, 10_100, 4.0))
        .await
        .unwrap();
    let q = QueryEngine::new(engine.clone(), QueryConfig::default());
    assert_eq!(
        count(
            &q,
            "SELECT count(*) FROM readings_1m WHERE bucket < to_timestamp(3600)"
        )
        .await,
        3 * 60
    );
    assert_eq!(
        count(
            &q,
            "SELECT sum(count) FROM readings_1m WHERE device_id = 'a'"
        )
        .await,
        1_011,
        "every reading of a, the unpersisted ones included, once"
    );
}
