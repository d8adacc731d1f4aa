//! Replays the checked-in fuzz corpus of the WAL segment reader, so CI covers it on
//! the stable toolchain. `WATTDB_WRITE_WAL_CORPUS=1` regenerates the seed files.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use wattdb_storage::wal::{self, WalConfig};
use wattdb_storage::{ReadingBatch, ReadingRef};

fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/wal_segment")
}

#[test]
fn wal_segment_corpus_replays_without_panic() {
    if std::env::var_os("WATTDB_WRITE_WAL_CORPUS").is_some() {
        write_seed_corpus();
    }
    let mut n = 0;
    for entry in std::fs::read_dir(corpus_dir()).unwrap() {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        wal::fuzz_check(&data);
        n += 1;
    }
    assert!(n >= 10, "only {n} corpus files");
}

fn write_seed_corpus() {
    let dir = tempfile::tempdir().unwrap();
    let config = WalConfig {
        min_next_seq: 0,
        dir: dir.path().to_owned(),
        segment_size: 4096,
        faults: None,
    };
    let (mut w, _) = wal::open(&config, |_| {}).unwrap();
    for k in 0..3 {
        let mut b = ReadingBatch::new();
        for i in 0..(k + 1) {
            b.push(ReadingRef {
                device_id: &format!("plug-{i}"),
                ts: 1_700_000_000_000_000_000 + i as i64,
                voltage: 230.1,
                current: 0.5,
                power: 115.0,
                energy: (i % 2 == 0).then_some(12.5),
                relay_on: [None, Some(true), Some(false)][i % 3],
                location: (k == 1).then_some("hall"),
                device_type: (k == 2).then_some("fridge"),
            });
        }
        w.append(&b).unwrap();
        w.commit().unwrap();
    }
    drop(w);
    let seg = dir.path().join("00000000000000000000.wal");
    let full = std::fs::read(&seg).unwrap();
    let used = full
        .iter()
        .rposition(|&b| b != 0)
        .map_or(0, |p| (p + 8) & !7);
    let out = corpus_dir();
    std::fs::create_dir_all(&out).unwrap();
    let seeds: Vec<(&str, Vec<u8>)> = vec![
        ("valid_three_records", full[..used].to_vec()),
        ("valid_with_zero_tail", full[..used + 64].to_vec()),
        ("header_only", full[..32].to_vec()),
        ("empty", Vec::new()),
        ("zeros", vec![0; 256]),
        ("torn_last_record", full[..used - 5].to_vec()),
        ("torn_header", full[..20].to_vec()),
        ("flipped_payload", {
            let mut v = full[..used].to_vec();
            v[70] ^= 0x10;
            v
        }),
        ("flipped_length", {
            let mut v = full[..used].to_vec();
            v[33] ^= 0x40;
            v
        }),
        ("huge_length", {
            let mut v = full[..used].to_vec();
            v[32..36].copy_from_slice(&u32::MAX.to_le_bytes());
            v
        }),
        ("ones", vec![0xff; 128]),
    ];
    for (name, bytes) in seeds {
        std::fs::write(out.join(name), bytes).unwrap();
    }
}
