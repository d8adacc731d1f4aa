//! Parquet encoding of a persist cycle's raw readings (rows/s): 1,000 simulated plugs
//! for 10 minutes, sorted by `(device_id, ts)` as persisting writes them, with the
//! raw files' writer properties.
//!
//! `cargo bench -p wattdb-storage --bench parquet_encode`

#![allow(clippy::unwrap_used, clippy::expect_used)]

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use wattdb_storage::files::{encode, sort_rows, writer_properties};

#[path = "../tests/support/mod.rs"]
mod support;

fn bench_encode(c: &mut Criterion) {
    let schema = support::schema();
    let batch = support::readings(1000, 600);
    let sorted = sort_rows(&schema, &[batch], "ts").unwrap();
    let rows = sorted.num_rows() as u64;
    let props = writer_properties(&schema, "ts");
    let mut g = c.benchmark_group("parquet_encode");
    g.sample_size(10);
    g.throughput(Throughput::Elements(rows));
    let size = encode(&sorted, props.clone()).unwrap().len();
    println!(
        "raw_properties: {:.2} bytes/reading",
        size as f64 / rows as f64
    );
    g.bench_function("raw_properties", |b| {
        b.iter(|| encode(&sorted, props.clone()).unwrap())
    });
    g.finish();
}

criterion_group!(benches, bench_encode);
criterion_main!(benches);
