//! Bytes per reading of the raw Parquet encoding, on simulated plug readings at the
//! resolution real plugs report (0.1 V, 1 mA, 0.1 W, 0.01 Wh). Prints the figures for
//! the chosen encoding and for common defaults, and holds the chosen one to the aim of
//! 3 bytes per reading or less.
//!
//! `cargo test -p wattdb-storage --test parquet_size -- --nocapture`
#![allow(clippy::unwrap_used, clippy::expect_used)]

use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use wattdb_storage::files::{encode, sort_rows, writer_properties};

mod support;
use support::schema;

#[test]
fn raw_readings_take_at_most_three_bytes_each() {
    let batch = support::readings(100, 3600);
    // Duplicates the simulator resends are resolved by the buffer before persistence;
    // sorting alone is what the file sees here (a few extra rows only make it larger).
    let sorted = sort_rows(&schema(), &[batch], "ts").unwrap();
    let rows = sorted.num_rows() as f64;
    let size = |props: WriterProperties| encode(&sorted, props).unwrap().len() as f64 / rows;

    let chosen = size(writer_properties(&schema(), "ts"));
    let plain_zstd = size(
        WriterProperties::builder()
            .set_compression(Compression::ZSTD(ZstdLevel::try_new(3).unwrap()))
            .build(),
    );
    let arrow_default = size(WriterProperties::builder().build());
    let snappy = size(
        WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .build(),
    );
    println!("rows: {rows}");
    println!("WattDB raw encoding: {chosen:.2} B/reading");
    println!("dictionary + ZSTD(3), no per-column tuning: {plain_zstd:.2} B/reading");
    println!("dictionary + SNAPPY (pyarrow's default): {snappy:.2} B/reading");
    println!("arrow-rs default (uncompressed): {arrow_default:.2} B/reading");
    assert!(chosen <= 3.0, "{chosen:.2} B/reading");
    assert!(chosen < plain_zstd, "{chosen:.2} vs {plain_zstd:.2}");
}
