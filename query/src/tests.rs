use arrow::array::AsArray;
use arrow::datatypes::Int64Type;
use futures::TryStreamExt;
use wattdb_engine::{EngineConfig, ReadingBatch, ReadingRef};

use super::*;

async fn engine_with(rows: &[(&str, i64, f64)]) -> (tempfile::TempDir, Engine) {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(EngineConfig {
        data_dir: dir.path().to_owned(),
        wal_segment_size: 1 << 20,
        ..Default::default()
    })
    .unwrap();
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
