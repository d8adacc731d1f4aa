//! WAL append + group commit throughput.
//!
//! `cargo bench -p wattdb-storage --bench wal`

#![allow(clippy::unwrap_used, clippy::expect_used)]

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use wattdb_storage::wal::{self, WalConfig};
use wattdb_storage::{ReadingBatch, ReadingRef};

/// `rows` realistic readings from 1,000 plugs, one second apart per plug.
fn readings(rows: usize, offset: usize) -> ReadingBatch {
    let mut b = ReadingBatch::with_capacity(rows);
    let mut id = String::new();
    for i in offset..offset + rows {
        use std::fmt::Write;
        id.clear();
        let _ = write!(id, "plug-{:06}", i % 1000);
        let power = ((i * 7919) % 20000) as f64 / 10.0;
        b.push(ReadingRef {
            device_id: &id,
            ts: 1_700_000_000_000_000_000 + (i / 1000) as i64 * 1_000_000_000,
            voltage: 230.0 + ((i % 50) as f64) / 10.0,
            current: (power / 230.0 * 1000.0).round() / 1000.0,
            power,
            energy: Some(1000.0 + i as f64 / 3600.0),
            relay_on: Some(power > 0.0),
            location: None,
            device_type: None,
        });
    }
    b
}

fn bench_wal(c: &mut Criterion) {
    let mut g = c.benchmark_group("wal_group_commit");
    g.sample_size(20);
    for &batches in &[1usize, 20] {
        let rows = 5000;
        let data: Vec<ReadingBatch> = (0..batches).map(|k| readings(rows, k * rows)).collect();
        g.throughput(Throughput::Elements((rows * batches) as u64));
        let dir = tempfile::tempdir_in(
            std::env::var("WATTDB_BENCH_DIR")
                .map(std::path::PathBuf::from)
                .unwrap_or_else(|_| std::env::temp_dir()),
        )
        .unwrap();
        let config = WalConfig {
            min_next_seq: 0,
            dir: dir.path().to_owned(),
            segment_size: 256 << 20,
            faults: None,
        };
        let (mut writer, _) = wal::open(&config, |_| {}).unwrap();
        g.bench_function(
            BenchmarkId::new("batches_of_5000_per_fsync", batches),
            |b| {
                b.iter(|| {
                    for d in &data {
                        writer.append(d).unwrap();
                    }
                    writer.commit().unwrap();
                })
            },
        );
    }
    g.finish();

    let mut g = c.benchmark_group("wal_encode");
    let batch = readings(5000, 0);
    g.throughput(Throughput::Elements(5000));
    let dir = tempfile::tempdir().unwrap();
    let (mut writer, _) = wal::open(&WalConfig::new(dir.path()), |_| {}).unwrap();
    g.bench_function("append_without_fsync", |b| {
        let mut n = 0;
        b.iter(|| {
            writer.append(&batch).unwrap();
            n += 1;
            // Keep memory flat: flush now and then outside the measured work's bulk.
            if n % 256 == 0 {
                writer.commit().unwrap();
            }
        })
    });
    g.finish();
}

criterion_group!(benches, bench_wal);
criterion_main!(benches);
