use std::collections::BTreeMap;
use std::time::Duration;

use arrow::array::AsArray;
use arrow::datatypes::Float64Type;

use super::*;

fn config(dir: &std::path::Path) -> EngineConfig {
    EngineConfig {
        data_dir: dir.to_owned(),
        wal_segment_size: 1 << 20,
        // The readings here are from 1970: retention by the wall clock would expire them.
        retention: RetentionConfig::forever(),
        ..EngineConfig::default()
    }
}

fn batch(device: &str, from: i64, n: usize) -> ReadingBatch {
    let mut b = ReadingBatch::new();
    for i in 0..n {
        b.push(ReadingRef {
            device_id: device,
            ts: from + i as i64,
            voltage: 230.0,
            current: 0.1,
            power: (from + i as i64) as f64,
            energy: None,
            relay_on: Some(true),
            location: None,
            device_type: None,
        });
    }
    b
}

fn total_rows(engine: &Engine) -> usize {
    engine
        .read_view(None, None)
        .buffer
        .iter()
        .map(|b| b.num_rows())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_are_queryable_when_acknowledged_and_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(config(dir.path())).unwrap();
    let mut tasks = Vec::new();
    for w in 0..8 {
        let engine = engine.clone();
        tasks.push(tokio::spawn(async move {
            for k in 0..50 {
                let device = format!("plug-{w}");
                let receipt = engine.write(batch(&device, k * 10, 10)).await.unwrap();
                assert_eq!(receipt.rows, 10);
                // Read your writes: the acknowledged batch is already in the buffer.
                let latest = engine.latest(&device);
                assert_eq!(latest[0].ts, k * 10 + 9);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(total_rows(&engine), 8 * 50 * 10);
    // Group commit: far fewer fsyncs than batches.
    let fsyncs = engine.stats().fsync_latency.count();
    assert!(fsyncs < 400, "{fsyncs} fsyncs for 400 batches");
    engine.shutdown();
    drop(engine);

    let engine = Engine::open(config(dir.path())).unwrap();
    assert_eq!(total_rows(&engine), 4000);
    assert_eq!(engine.stats().replayed_rows.load(Ordering::Relaxed), 4000);
    assert_eq!(engine.latest("plug-").len(), 8);
}

#[tokio::test]
async fn duplicates_resolve_to_the_last_write_after_replay_too() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(config(dir.path())).unwrap();
    engine.write(batch("a", 0, 5)).await.unwrap();
    let mut again = batch("a", 2, 1);
    again.power[0] = -7.0;
    engine.write(again).await.unwrap();
    let check = |engine: &Engine| {
        let snap = engine.read_view(None, None).buffer;
        let powers: Vec<f64> = snap
            .iter()
            .flat_map(|b| b.column(4).as_primitive::<Float64Type>().values().to_vec())
            .collect();
        assert_eq!(powers.len(), 5);
        assert!(powers.contains(&-7.0));
        assert!(!powers.contains(&2.0));
    };
    check(&engine);
    engine.shutdown();
    drop(engine);
    check(&Engine::open(config(dir.path())).unwrap());
}

#[tokio::test]
async fn a_full_queue_refuses_instead_of_blocking() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(EngineConfig {
        queue_capacity: 2,
        group_commit_window: Duration::from_millis(300),
        max_group_rows: 1,
        ..config(dir.path())
    })
    .unwrap();
    let mut accepted = Vec::new();
    let mut refused = 0;
    for i in 0..20 {
        match engine.submit(batch("q", i, 1)) {
            Ok(rx) => accepted.push(rx),
            Err(e) => {
                assert!(matches!(e, Error::QueueFull { capacity: 2 }));
                assert!(e.is_retryable());
                refused += 1;
            }
        }
    }
    assert!(refused > 0);
    // Everything accepted is acknowledged, nothing is dropped.
    for rx in accepted {
        rx.await.unwrap().unwrap();
    }
    assert_eq!(total_rows(&engine), 20 - refused);
}

#[tokio::test]
async fn a_full_buffer_refuses_writes() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(EngineConfig {
        max_buffer_bytes: 1,
        ..config(dir.path())
    })
    .unwrap();
    engine.write(batch("b", 0, 3)).await.unwrap();
    let err = engine.write(batch("b", 10, 3)).await.unwrap_err();
    assert!(matches!(err, Error::BufferFull { limit: 1, .. }));
}

#[tokio::test]
async fn writes_after_shutdown_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(config(dir.path())).unwrap();
    engine.write(batch("s", 0, 1)).await.unwrap();
    engine.shutdown();
    let err = engine.write(batch("s", 1, 1)).await.unwrap_err();
    assert!(matches!(err, Error::ShuttingDown));
}

#[tokio::test]
async fn an_fsync_failure_poisons_the_engine_and_nothing_more_is_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let faults = FaultInjector::default();
    let engine = Engine::open(EngineConfig {
        wal_faults: Some(faults.clone()),
        ..config(dir.path())
    })
    .unwrap();
    engine.write(batch("p", 0, 3)).await.unwrap();
    faults.fail_next_syncs(1);
    let err = engine.write(batch("p", 10, 1)).await.unwrap_err();
    assert!(matches!(err, Error::Poisoned));
    assert!(!err.is_retryable());
    assert!(engine.is_poisoned());
    // The fault has passed, but the writer stays poisoned.
    let err = engine.write(batch("p", 20, 1)).await.unwrap_err();
    assert!(matches!(err, Error::Poisoned));
    // The failed write never became visible.
    assert_eq!(total_rows(&engine), 3);
    engine.shutdown();
    drop(engine);
    assert_eq!(total_rows(&Engine::open(config(dir.path())).unwrap()), 3);
}

/// The raw files in the data directory.
fn files_on_disk(dir: &std::path::Path) -> Vec<String> {
    files_under(dir, "readings/resolution=raw")
}

/// The files under `sub` of the data directory.
fn files_under(dir: &std::path::Path, sub: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.join(sub)];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(dir).unwrap().to_string_lossy().into_owned());
            }
        }
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persist_writes_hive_partitioned_files_and_releases_the_wal() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(EngineConfig {
        wal_segment_size: 64 << 10,
        ..config(dir.path())
    })
    .unwrap();
    let hour = 3_600_000_000_000i64;
    // 2026-11-23T10:00Z and 11:00Z: two hour partitions.
    let t0 = 1_795_428_000_000_000_000i64;
    for k in 0..40 {
        engine.write(batch("p1", t0 + k * 100, 100)).await.unwrap();
        engine
            .write(batch("p2", t0 + hour + k * 100, 100))
            .await
            .unwrap();
    }
    let segments_before = wal::list_segments(&dir.path().join("wal")).unwrap().len();
    assert!(segments_before > 2, "{segments_before} segments");
    let report = engine.persist().await.unwrap();
    assert_eq!(report.rows, 8000);
    assert_eq!(
        files_on_disk(dir.path()),
        vec![
            "readings/resolution=raw/date=2026-11-23/hour=10/00000000000000000001.parquet",
            "readings/resolution=raw/date=2026-11-23/hour=11/00000000000000000002.parquet",
        ]
    );
    let segments_after = wal::list_segments(&dir.path().join("wal")).unwrap().len();
    assert_eq!(segments_after, 1, "only the active segment is kept");
    let m = raw_manifest(&engine);
    assert_eq!(m.rows(Tier::Raw), 8000);
    assert_eq!((m.files[0].min_ts, m.files[0].max_ts), (t0, t0 + 3999));
    assert_eq!(m.files[1].min_device, "p2");
    assert_eq!(engine.stats().persisted_rows.load(Ordering::Relaxed), 8000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_store_loses_nothing_and_a_crash_before_commit_leaves_no_orphan() {
    let dir = tempfile::tempdir().unwrap();
    let faults = PersistFaults::default();
    let open = |faults: &PersistFaults| {
        Engine::open(EngineConfig {
            persist_faults: Some(faults.clone()),
            ..config(dir.path())
        })
        .unwrap()
    };
    let engine = open(&faults);
    engine.write(batch("a", 0, 100)).await.unwrap();
    // Uploads fail: the attempt reports it; the rows stay queryable and in the WAL.
    faults.fail_next_uploads(1);
    let err = engine.persist().await.unwrap_err();
    assert!(err.to_string().contains("injected upload failure"), "{err}");
    let view = engine.read_view(None, None);
    assert_eq!(view.frozen.as_ref().map(|f| f.rows), Some(100));
    assert!(engine.frozen_bytes() > 0);
    // Writes go on meanwhile.
    engine.write(batch("b", 0, 50)).await.unwrap();
    // The store is back: the pending rows and the new ones are persisted.
    let report = engine.persist().await.unwrap();
    assert_eq!(report.rows, 150);
    assert!(engine.read_view(None, None).frozen.is_none());
    assert_eq!(engine.frozen_bytes(), 0);

    // Upload succeeds, the manifest commit never happens (a crash in between).
    engine.write(batch("c", 0, 10)).await.unwrap();
    faults.fail_next_commits(u32::MAX);
    assert!(engine.persist().await.is_err());
    let orphans = files_on_disk(dir.path());
    assert_eq!(orphans.len(), 3, "{orphans:?}");
    drop(engine);

    let engine = open(&PersistFaults::default());
    assert_eq!(
        files_on_disk(dir.path()).len(),
        2,
        "the orphan is deleted at start"
    );
    assert_eq!(engine.manifest().rows(Tier::Raw), 150);
    // The uncommitted rows come back from the WAL, once.
    assert_eq!(total_rows(&engine), 10);
    engine.persist().await.unwrap();
    assert_eq!(engine.manifest().rows(Tier::Raw), 160);
}

/// The manifest with its raw files only.
fn raw_manifest(engine: &Engine) -> Manifest {
    let mut m = (*engine.manifest()).clone();
    m.files.retain(|f| f.tier == Tier::Raw);
    m
}

/// `(device, ts, power)` of every row of the live raw files, in file order.
async fn file_rows(engine: &Engine) -> Vec<(String, i64, f64)> {
    let mut out = Vec::new();
    for f in &raw_manifest(engine).files {
        let body = engine.store().get(&f.object_path()).await.unwrap();
        for b in wattdb_storage::files::decode(body).unwrap() {
            let dev = b.column_by_name("device_id").unwrap().as_string::<i32>();
            let ts = b
                .column_by_name("ts")
                .unwrap()
                .as_primitive::<arrow::datatypes::TimestampNanosecondType>();
            let power = b
                .column_by_name("power")
                .unwrap()
                .as_primitive::<Float64Type>();
            for i in 0..b.num_rows() {
                out.push((dev.value(i).to_owned(), ts.value(i), power.value(i)));
            }
        }
    }
    out
}

/// Compacts every tier; the reports of the raw tier's jobs.
async fn raw_compactions(engine: &Engine) -> Vec<CompactionReport> {
    engine
        .compact()
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.partition.contains("resolution=raw"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_merges_small_files_keeps_the_newest_copy_and_survives_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let faults = PersistFaults::default();
    let open = || {
        Engine::open(EngineConfig {
            persist_faults: Some(faults.clone()),
            compaction: CompactionConfig {
                // Only when asked, so the test sees the files before.
                min_files: 1000,
                delete_after: Duration::ZERO,
                ..CompactionConfig::default()
            },
            ..config(dir.path())
        })
        .unwrap()
    };
    let engine = open();
    // 2026-11-23T10:00Z: five persist cycles into one hour partition.
    let t0 = 1_795_428_000_000_000_000i64;
    for k in 0..5 {
        engine.write(batch("p1", t0 + k * 100, 100)).await.unwrap();
        engine.write(batch("p2", t0 + k * 100, 100)).await.unwrap();
        if k == 3 {
            // p1's first ten readings again, with new values: they must win.
            let mut again = batch("p1", t0, 10);
            for i in 0..10 {
                again.power[i] = -1.0;
            }
            engine.write(again).await.unwrap();
        }
        engine.persist().await.unwrap();
    }
    let m = raw_manifest(&engine);
    assert_eq!(m.files.len(), 5);
    let top_rank = m.files.iter().map(FileMeta::rank).max();
    assert_eq!(
        m.rows(Tier::Raw),
        1010,
        "the rewrite is a second copy until compaction"
    );

    // The merged file is uploaded but the manifest commit fails (a crash there).
    let before = engine.manifest();
    let files_before = files_under(dir.path(), "readings").len();
    faults.fail_next_commits(1);
    assert!(engine.compact().await.is_err());
    assert_eq!(engine.manifest(), before, "nothing changed");
    assert_eq!(
        files_under(dir.path(), "readings").len(),
        files_before + 1,
        "an unlisted file"
    );

    let reports = raw_compactions(&engine).await;
    assert_eq!(reports.len(), 1);
    assert_eq!(
        (
            reports[0].input_files,
            reports[0].input_rows,
            reports[0].rows
        ),
        (5, 1010, 1000)
    );
    let m = raw_manifest(&engine);
    assert_eq!(m.files.len(), 1);
    assert_eq!(m.files[0].merged_rank, top_rank);
    let rows = file_rows(&engine).await;
    assert_eq!(rows.len(), 1000);
    let mut expected = Vec::new();
    for dev in ["p1", "p2"] {
        for i in 0..500 {
            let ts = t0 + i;
            let power = if dev == "p1" && i < 10 {
                -1.0
            } else {
                ts as f64
            };
            expected.push((dev.to_owned(), ts, power));
        }
    }
    assert_eq!(
        rows, expected,
        "sorted by plug and time, newest copy of each"
    );
    // Five files in each of raw, 1m, 1h and 1d.
    assert_eq!(engine.stats().compacted_files.load(Ordering::Relaxed), 20);

    // The replaced files go once their grace period is over (here: at once).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while files_on_disk(dir.path()).len() > 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "{:?}",
            files_on_disk(dir.path())
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A file persisted after the merge outranks it.
    engine.write(batch("p2", t0, 1)).await.unwrap();
    engine.persist().await.unwrap();
    let m = raw_manifest(&engine);
    assert!(m.files[1].rank() > m.files[0].rank());
    drop(engine);
    let engine = open();
    assert_eq!(engine.manifest().rows(Tier::Raw), 1001);
    assert_eq!(files_on_disk(dir.path()).len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_merges_plugs_whose_rows_run_across_many_read_batches() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(EngineConfig {
        compaction: CompactionConfig {
            min_files: 1000,
            ..CompactionConfig::default()
        },
        ..config(dir.path())
    })
    .unwrap();
    let t0 = 1_795_428_000_000_000_000i64;
    // Three cycles into one hour partition: one plug with a single reading, one whose
    // rows fill several of compaction's read batches, one in between; the second cycle
    // rewrites part of the long plug's rows, the third adds to them.
    let mut expected: BTreeMap<(String, i64), f64> = BTreeMap::new();
    let mut put = |b: &ReadingBatch| {
        for i in 0..b.len() {
            let r = b.get(i);
            expected.insert((r.device_id.to_owned(), r.ts), r.power);
        }
    };
    let cycles = [
        vec![
            batch("a", t0, 1),
            batch("b", t0, 40_000),
            batch("c", t0, 20_000),
        ],
        vec![{
            let mut again = batch("b", t0 + 15_000, 20_000);
            again.power.iter_mut().for_each(|p| *p = -1.0);
            again
        }],
        vec![batch("b", t0 + 40_000, 5_000), batch("c", t0 + 19_999, 2)],
    ];
    for cycle in cycles {
        for b in cycle {
            put(&b);
            engine.write(b).await.unwrap();
        }
        engine.persist().await.unwrap();
    }
    assert_eq!(raw_manifest(&engine).files.len(), 3);
    let reports = raw_compactions(&engine).await;
    assert_eq!(reports.len(), 1);
    assert_eq!(reports[0].rows, expected.len() as u64);
    let m = raw_manifest(&engine);
    assert_eq!(m.files.len(), 1);
    let f = &m.files[0];
    assert_eq!((f.min_device.as_str(), f.max_device.as_str()), ("a", "c"));
    assert_eq!((f.min_ts, f.max_ts), (t0, t0 + 44_999));
    let want: Vec<(String, i64, f64)> = expected
        .into_iter()
        .map(|((d, ts), p)| (d, ts, p))
        .collect();
    assert_eq!(file_rows(&engine).await, want);
}
