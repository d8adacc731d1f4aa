//! The engine's write path: buffer insert, and concurrent writers through the queue,
//! group-committed WAL and buffer (rows/s); putting a persist cycle's rows in
//! `(device_id, ts)` order (rows/s); and the WAL replay of a start (rows/s).
//!
//! `cargo bench -p wattdb-engine --bench write_path`

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use wattdb_engine::{Buffer, Engine, EngineConfig, ReadingBatch, ReadingRef, WalPosition};

fn readings(rows: usize, offset: usize) -> ReadingBatch {
    let mut b = ReadingBatch::with_capacity(rows);
    let mut id = String::new();
    for i in offset..offset + rows {
        use std::fmt::Write;
        id.clear();
        let _ = write!(id, "plug-{:06}", i % 10_000);
        let power = ((i * 7919) % 20000) as f64 / 10.0;
        b.push(ReadingRef {
            device_id: &id,
            ts: 1_700_000_000_000_000_000 + (i / 10_000) as i64 * 1_000_000_000,
            voltage: 230.0 + ((i % 50) as f64) / 10.0,
            current: (power / 230.0 * 1000.0).round() / 1000.0,
            power,
            energy: Some(1000.0 + i as f64 / 3600.0),
            relay_on: Some(power > 0.0),
            location: Some("kitchen"),
            device_type: None,
        });
    }
    b
}

fn bench_buffer(c: &mut Criterion) {
    let mut g = c.benchmark_group("buffer_insert");
    let rows = 5000;
    g.throughput(Throughput::Elements(rows as u64));
    g.bench_function("batch_of_5000", |b| {
        b.iter_custom(|iters| {
            let batches: Vec<ReadingBatch> = (0..iters as usize)
                .map(|k| readings(rows, k * rows))
                .collect();
            let mut buffer = Buffer::new();
            let start = Instant::now();
            for batch in &batches {
                buffer.insert(&[batch], 0, WalPosition { segment: 0, seq: 0 });
            }
            start.elapsed()
        })
    });
    g.finish();
}

fn bench_engine(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut g = c.benchmark_group("engine_write");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(10));
    let writers = 8;
    let rows = 5000;
    let per_iter = writers * rows;
    g.throughput(Throughput::Elements(per_iter as u64));
    g.bench_function("8_writers_x_5000_rows", |b| {
        b.iter_custom(|iters| {
            let dir = tempfile::tempdir_in(
                std::env::var("WATTDB_BENCH_DIR")
                    .map(std::path::PathBuf::from)
                    .unwrap_or_else(|_| std::env::temp_dir()),
            )
            .unwrap();
            let engine = Engine::open(EngineConfig {
                data_dir: dir.path().to_owned(),
                ..EngineConfig::default()
            })
            .unwrap();
            let batches: Vec<Vec<ReadingBatch>> = (0..writers)
                .map(|w| {
                    (0..iters as usize)
                        .map(|k| readings(rows, (k * writers + w) * rows))
                        .collect()
                })
                .collect();
            let start = Instant::now();
            runtime.block_on(async {
                let tasks: Vec<_> = batches
                    .into_iter()
                    .map(|mine| {
                        let engine = engine.clone();
                        tokio::spawn(async move {
                            for b in mine {
                                loop {
                                    match engine.write(b.clone()).await {
                                        Ok(_) => break,
                                        Err(e) if e.is_retryable() => {
                                            tokio::task::yield_now().await
                                        }
                                        Err(e) => panic!("{e}"),
                                    }
                                }
                            }
                        })
                    })
                    .collect();
                for t in tasks {
                    t.await.unwrap();
                }
            });
            let elapsed = start.elapsed();
            engine.shutdown();
            elapsed
        })
    });
    g.finish();
}

/// Opening an engine whose WAL holds 2 M readings of 10,000 plugs (none persisted):
/// reading, checking and decoding the WAL, and rebuilding the buffer.
fn bench_replay(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir_in(
        std::env::var("WATTDB_BENCH_DIR")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|_| std::env::temp_dir()),
    )
    .unwrap();
    let config = || EngineConfig {
        data_dir: dir.path().to_owned(),
        persist_interval: Duration::from_secs(3600),
        ..EngineConfig::default()
    };
    let rows = 5000;
    let batches = 400;
    {
        let engine = Engine::open(config()).unwrap();
        runtime.block_on(async {
            for k in 0..batches {
                engine.write(readings(rows, k * rows)).await.unwrap();
            }
        });
        engine.shutdown();
    }
    let mut g = c.benchmark_group("wal_replay");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(20));
    g.throughput(Throughput::Elements((rows * batches) as u64));
    g.bench_function("2M_readings_10k_plugs", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let start = Instant::now();
                let engine = Engine::open(config()).unwrap();
                total += start.elapsed();
                assert_eq!(engine.buffer_usage().0, (rows * batches) as u64);
                engine.shutdown();
            }
            total
        })
    });
    g.finish();
}

/// A persist cycle's first step: the frozen buffer's rows in `(device_id, ts)` order,
/// from the buffer's per-plug index (what persisting does) and, for comparison, by
/// sorting the rows (integer keys, then one gather).
fn bench_persist_order(c: &mut Criterion) {
    let rows = 2_000_000;
    let mut buffer = Buffer::new();
    for k in 0..rows / 5000 {
        let batch = readings(5000, k * 5000);
        buffer.insert(&[&batch], 0, WalPosition { segment: 0, seq: 0 });
    }
    let frozen = buffer.freeze().unwrap();
    let mut g = c.benchmark_group("persist_order");
    g.sample_size(10);
    g.throughput(Throughput::Elements(rows as u64));
    g.bench_function("2M_readings_10k_plugs_from_index", |b| {
        b.iter(|| frozen.sorted().unwrap())
    });
    g.bench_function("2M_readings_10k_plugs_by_sorting", |b| {
        b.iter(|| {
            wattdb_storage::files::sort_rows(
                &wattdb_engine::readings_schema(),
                &frozen.batches,
                "ts",
            )
            .unwrap()
        })
    });
    g.finish();
}

criterion_group!(
    benches,
    bench_buffer,
    bench_engine,
    bench_persist_order,
    bench_replay
);
criterion_main!(benches);
