use super::*;
use crate::batch::ReadingRef;

fn batch(tag: u64, rows: usize) -> ReadingBatch {
    let mut b = ReadingBatch::new();
    for i in 0..rows {
        let id = format!("plug-{tag}-{i}");
        b.push(ReadingRef {
            device_id: &id,
            ts: 1_700_000_000_000_000_000 + (tag * 1000 + i as u64) as i64,
            voltage: 230.0 + tag as f64,
            current: 0.25,
            power: 57.5,
            energy: Some(tag as f64),
            relay_on: Some(i % 2 == 0),
            location: Some("hall"),
            device_type: None,
        });
    }
    b
}

fn replay_all(config: &WalConfig) -> Result<(Vec<(u64, ReadingBatch)>, RecoveryStats)> {
    let mut got = Vec::new();
    let (_w, stats) = open(config, |r| got.push((r.seq, r.batch)))?;
    Ok((got, stats))
}

/// Writes `n` single-commit records into a fresh WAL and returns the config.
fn wal_with(dir: &Path, n: u64, segment_size: u64) -> WalConfig {
    let config = WalConfig {
        min_next_seq: 0,
        dir: dir.to_owned(),
        segment_size,
        faults: None,
    };
    let (mut w, _) = open(&config, |_| unreachable!()).unwrap();
    for i in 0..n {
        assert_eq!(w.append(&batch(i, 3)).unwrap(), i);
        assert_eq!(w.commit().unwrap(), Some(i));
    }
    config
}

fn only_segment(dir: &Path) -> PathBuf {
    let ids = list_segments(dir).unwrap();
    segment_path(dir, ids[0])
}

#[test]
fn appends_survive_reopen_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let config = wal_with(dir.path(), 5, 1 << 20);
    let (got, stats) = replay_all(&config).unwrap();
    assert_eq!(got.len(), 5);
    for (i, (seq, b)) in got.iter().enumerate() {
        assert_eq!(*seq, i as u64);
        assert_eq!(*b, batch(i as u64, 3));
    }
    assert_eq!(stats.rows, 15);
    assert_eq!(stats.truncated_bytes, 0);
    // A second reopen sees the same, and sequence numbers continue.
    let mut seen = 0;
    let (mut w, _) = open(&config, |_| seen += 1).unwrap();
    assert_eq!(seen, 5);
    assert_eq!(w.append(&batch(9, 1)).unwrap(), 5);
}

#[test]
fn group_commit_makes_all_appended_records_durable() {
    let dir = tempfile::tempdir().unwrap();
    let config = small(dir.path());
    let (mut w, _) = open(&config, |_| {}).unwrap();
    for i in 0..10 {
        w.append(&batch(i, 2)).unwrap();
    }
    assert_eq!(w.commit().unwrap(), Some(9));
    drop(w);
    assert_eq!(replay_all(&config).unwrap().0.len(), 10);
}

#[test]
fn uncommitted_records_are_not_recovered() {
    let dir = tempfile::tempdir().unwrap();
    let config = wal_with(dir.path(), 2, 1 << 20);
    let (mut w, _) = open(&config, |_| {}).unwrap();
    w.append(&batch(7, 2)).unwrap();
    drop(w);
    assert_eq!(replay_all(&config).unwrap().0.len(), 2);
}

#[test]
fn segments_roll_at_the_size_limit() {
    let dir = tempfile::tempdir().unwrap();
    let config = wal_with(dir.path(), 40, 1024);
    let ids = list_segments(dir.path()).unwrap();
    assert!(ids.len() > 5, "expected several segments, got {ids:?}");
    let (got, _) = replay_all(&config).unwrap();
    assert_eq!(
        got.iter().map(|g| g.0).collect::<Vec<_>>(),
        (0..40).collect::<Vec<_>>()
    );
    // An oversized record gets a segment of its own size.
    let (mut w, _) = open(&config, |_| {}).unwrap();
    w.append(&batch(99, 200)).unwrap();
    w.commit().unwrap();
    drop(w);
    assert_eq!(replay_all(&config).unwrap().0.len(), 41);
}

/// Byte offset where the last record of a single-segment WAL starts, and its end.
fn last_record_span(path: &Path) -> (usize, usize) {
    let bytes = fs::read(path).unwrap();
    let scan = scan_segment(&bytes);
    let last = scan.records.last().unwrap();
    (last.offset as usize, last.payload_start + last.payload_len)
}

#[test]
fn truncation_at_every_offset_of_the_last_record_keeps_all_before() {
    let src = tempfile::tempdir().unwrap();
    wal_with(src.path(), 3, 1 << 16);
    let path = only_segment(src.path());
    let (start, end) = last_record_span(&path);
    let original = fs::read(&path).unwrap();
    for cut in start..=end {
        for zero_fill in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let mut bytes = original[..cut].to_vec();
            if zero_fill {
                bytes.resize(original.len(), 0);
            }
            fs::write(dir.path().join(path.file_name().unwrap()), &bytes).unwrap();
            let config = small(dir.path());
            let (got, _) = replay_all(&config)
                .unwrap_or_else(|e| panic!("cut {cut} zero_fill {zero_fill}: {e}"));
            // Zero-filling can restore a cut-off tail that was zeros anyway.
            let restored = zero_fill && original[cut..end].iter().all(|&b| b == 0);
            let expect = if cut == end || restored { 3 } else { 2 };
            assert_eq!(got.len(), expect, "cut {cut} zero_fill {zero_fill}");
            // Recovery sealed the tail: a second open agrees and finds no damage.
            assert_eq!(replay_all(&config).unwrap().0.len(), expect);
            assert_eq!(check(dir.path()).unwrap(), vec![]);
        }
    }
}

#[test]
fn random_bit_flips_never_panic_and_keep_records_before_the_damage() {
    use rand::{Rng, SeedableRng};
    let src = tempfile::tempdir().unwrap();
    wal_with(src.path(), 6, 1 << 16);
    let path = only_segment(src.path());
    let original = fs::read(&path).unwrap();
    let scan = scan_segment(&original);
    let used = {
        let last = scan.records.last().unwrap();
        last.payload_start + last.payload_len
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for _ in 0..300 {
        let at = rng.random_range(0..used);
        let mut bytes = original.clone();
        bytes[at] ^= 1 << rng.random_range(0..8);
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(path.file_name().unwrap()), &bytes).unwrap();
        let before = scan
            .records
            .iter()
            .filter(|r| r.payload_start + r.payload_len <= at)
            .count();
        match replay_all(&small(dir.path())) {
            Ok((got, _)) => {
                // Only damage in the last record may be taken for a torn tail.
                assert!(got.len() >= before, "flip at {at}: lost records before it");
                assert!(
                    got.len() >= 5 || at < SEGMENT_HEADER_LEN,
                    "flip at {at}: got {}",
                    got.len()
                );
                for (seq, b) in &got {
                    assert_eq!(*b, batch(*seq, 3));
                }
            }
            Err(Error::Corrupt {
                segment, offset, ..
            }) => {
                assert_eq!(segment, 0);
                assert!(
                    offset as usize <= at + 1,
                    "flip at {at} reported at {offset}"
                );
                // Repair salvages everything except the damaged record.
                let damage = repair(dir.path()).unwrap();
                assert_eq!(damage.len(), 1);
                let (got, _) = replay_all(&small(dir.path())).unwrap();
                // A damaged segment header costs no record; a damaged record costs itself.
                let expect = if at < SEGMENT_HEADER_LEN { 6 } else { 5 };
                assert_eq!(got.len(), expect, "flip at {at}");
                assert!(
                    dir.path()
                        .join("quarantine/00000000000000000000.wal.corrupt")
                        .exists()
                );
            }
            Err(e) => panic!("flip at {at}: unexpected error {e}"),
        }
    }
}

#[test]
fn damage_before_a_synced_record_is_corruption_and_names_segment_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    wal_with(dir.path(), 4, 1 << 16);
    let path = only_segment(dir.path());
    let mut bytes = fs::read(&path).unwrap();
    let second = scan_segment(&bytes).records[1];
    bytes[second.payload_start + 3] ^= 0xff;
    fs::write(&path, &bytes).unwrap();
    let err = replay_all(&small(dir.path())).unwrap_err();
    assert!(matches!(
        err,
        Error::Corrupt { segment: 0, offset, reason: Damage::Checksum } if offset == second.offset
    ));
    assert!(err.to_string().contains("wattdb wal repair"));
    let report = check(dir.path()).unwrap();
    assert_eq!(report[0].records_before, 1);
    assert_eq!(report[0].records_after, 2);
    repair(dir.path()).unwrap();
    let (got, _) = replay_all(&small(dir.path())).unwrap_err_or_seq();
    assert_eq!(got, vec![0, 2, 3]);
}

trait SeqsOrGap {
    fn unwrap_err_or_seq(self) -> (Vec<u64>, ());
}

impl SeqsOrGap for Result<(Vec<(u64, ReadingBatch)>, RecoveryStats)> {
    fn unwrap_err_or_seq(self) -> (Vec<u64>, ()) {
        match self {
            Ok((got, _)) => (got.into_iter().map(|g| g.0).collect(), ()),
            Err(e) => panic!("{e}"),
        }
    }
}

#[test]
fn zero_length_and_zero_filled_newest_segments_are_dropped() {
    for fill in [0usize, 4096] {
        let dir = tempfile::tempdir().unwrap();
        let config = wal_with(dir.path(), 3, 1 << 16);
        // Reopening seals segment 0 and starts segment 1, which then gets damaged.
        drop(open(&config, |_| {}).unwrap());
        fs::write(segment_path(dir.path(), 1), vec![0u8; fill]).unwrap();
        let (got, stats) = replay_all(&config).unwrap();
        assert_eq!(got.len(), 3, "fill {fill}");
        assert_eq!(stats.truncated_bytes, fill as u64);
        assert_eq!(list_segments(dir.path()).unwrap(), vec![0, 2]);
    }
}

#[test]
fn zero_length_sealed_segment_is_corruption_that_repair_fixes() {
    let dir = tempfile::tempdir().unwrap();
    let config = wal_with(dir.path(), 3, 1 << 16);
    // A later segment with data exists, and segment 0 is emptied.
    let (mut w, _) = open(&config, |_| {}).unwrap();
    w.append(&batch(3, 1)).unwrap();
    w.commit().unwrap();
    drop(w);
    fs::write(segment_path(dir.path(), 0), b"").unwrap();
    let err = replay_all(&config).unwrap_err();
    assert!(matches!(
        err,
        Error::Corrupt {
            segment: 0,
            offset: 0,
            reason: Damage::Header
        }
    ));
    repair(dir.path()).unwrap();
    // Records 0..3 are gone with the emptied file; the log now starts at seq 3.
    let (got, _) = replay_all(&config).unwrap();
    assert_eq!(got.iter().map(|g| g.0).collect::<Vec<_>>(), vec![3]);
}

#[test]
fn interrupted_segment_creation_leaves_no_trace() {
    let dir = tempfile::tempdir().unwrap();
    let config = wal_with(dir.path(), 1, 1 << 16);
    fs::write(dir.path().join("00000000000000000009.wal.tmp"), b"junk").unwrap();
    assert_eq!(replay_all(&config).unwrap().0.len(), 1);
    assert!(!dir.path().join("00000000000000000009.wal.tmp").exists());
}

#[test]
fn a_failed_flush_poisons_the_writer() {
    let dir = tempfile::tempdir().unwrap();
    let faults = FaultInjector::default();
    let config = WalConfig {
        min_next_seq: 0,
        faults: Some(faults.clone()),
        ..small(dir.path())
    };
    let (mut w, _) = open(&config, |_| {}).unwrap();
    w.append(&batch(0, 1)).unwrap();
    w.commit().unwrap();
    faults.fail_next_syncs(1);
    w.append(&batch(1, 1)).unwrap();
    assert!(matches!(w.commit(), Err(Error::Io { .. })));
    // Even though the fault is gone, nothing more is accepted.
    assert!(w.is_poisoned());
    assert!(matches!(w.append(&batch(2, 1)), Err(Error::Poisoned)));
    assert!(matches!(w.commit(), Err(Error::Poisoned)));
    drop(w);
    assert_eq!(replay_all(&small(dir.path())).unwrap().0.len(), 1);
}

#[test]
fn fuzz_check_accepts_real_segments_and_garbage() {
    let dir = tempfile::tempdir().unwrap();
    wal_with(dir.path(), 3, 1 << 16);
    let bytes = fs::read(only_segment(dir.path())).unwrap();
    fuzz_check(&bytes);
    for cut in 0..bytes.len().min(600) {
        fuzz_check(&bytes[..cut]);
    }
    fuzz_check(&[0xff; 100]);
}

#[test]
fn removes_segments_before_a_given_one() {
    let dir = tempfile::tempdir().unwrap();
    wal_with(dir.path(), 20, 1024);
    let ids = list_segments(dir.path()).unwrap();
    let keep_from = ids[ids.len() / 2];
    let released = release_segments_before(dir.path(), keep_from, 0).unwrap();
    assert_eq!(released.removed, ids.len() / 2);
    assert_eq!(released.recycled, 0);
    assert_eq!(list_segments(dir.path()).unwrap()[0], keep_from);
}

fn small(dir: &Path) -> WalConfig {
    WalConfig {
        min_next_seq: 0,
        dir: dir.to_owned(),
        segment_size: 1 << 16,
        faults: None,
    }
}

/// Appends and commits records `from..to` (of 40 readings each).
fn write_range(w: &mut WalWriter, from: u64, to: u64) {
    for i in from..to {
        assert_eq!(w.append(&batch(i, 40)).unwrap(), i);
        w.commit().unwrap();
    }
}

/// Appends records from `next` on until the writer has rolled into every spare, then
/// two more; returns the next sequence number.
fn write_through_spares(w: &mut WalWriter, dir: &Path, mut next: u64) -> u64 {
    while !list_spares(dir).unwrap().is_empty() {
        write_range(w, next, next + 1);
        next += 1;
    }
    write_range(w, next, next + 2);
    next + 2
}

fn segment_bytes(dir: &Path, id: u64) -> Vec<u8> {
    fs::read(segment_path(dir, id)).unwrap()
}

#[test]
fn released_segments_are_reused_and_their_records_never_come_back() {
    let dir = tempfile::tempdir().unwrap();
    let config = small(dir.path());
    let (mut w, _) = open(&config, |_| unreachable!()).unwrap();
    write_range(&mut w, 0, 200);
    let ids = list_segments(dir.path()).unwrap();
    assert!(ids.len() >= 5, "{ids:?}");
    // Persisted: everything before the segment being written (as the engine does it,
    // with the writer running).
    let current = w.segment();
    let released = release_segments_before(dir.path(), current, 2).unwrap();
    assert_eq!(released.recycled, 2);
    assert_eq!(released.removed, ids.len() - 3);
    assert_eq!(list_spares(dir.path()).unwrap().len(), 2);
    assert_eq!(list_segments(dir.path()).unwrap(), vec![current]);
    let first_kept = {
        let bytes = segment_bytes(dir.path(), current);
        scan_segment(&bytes).records[0].seq
    };
    // A few records more: the writer rolls into both spares, and the newest segment
    // is only partly written over.
    let next = write_through_spares(&mut w, dir.path(), 200);
    let newest = w.segment();
    drop(w);
    let bytes = segment_bytes(dir.path(), newest);
    assert!(is_recycled(&bytes));
    let scan = scan_segment(&bytes);
    let ScanEnd::Stopped { offset, damage } = scan.end else {
        panic!("a recycled segment ends before its file does");
    };
    assert_eq!(damage, Damage::Zeros);
    let stale = salvage(&bytes, offset as usize + 8);
    assert!(
        stale.iter().any(|r| r.seq < first_kept),
        "the older segment's records are still in the file"
    );

    let config = WalConfig {
        min_next_seq: first_kept,
        ..small(dir.path())
    };
    let (got, stats) = replay_all(&config).unwrap();
    let seqs: Vec<u64> = got.iter().map(|g| g.0).collect();
    assert_eq!(seqs, (first_kept..next).collect::<Vec<_>>());
    for (seq, b) in &got {
        assert_eq!(*b, batch(*seq, 40));
    }
    assert_eq!(stats.truncated_bytes, 0, "a clean end is not a torn tail");
    assert_eq!(check(dir.path()).unwrap(), vec![]);
}

#[test]
fn a_stop_right_after_reusing_a_spare_replays_none_of_its_old_records() {
    let dir = tempfile::tempdir().unwrap();
    let (mut w, _) = open(&small(dir.path()), |_| unreachable!()).unwrap();
    write_range(&mut w, 0, 60);
    drop(w);
    // Everything persisted and released: only spares are left.
    let released = release_segments_before(dir.path(), u64::MAX, 8).unwrap();
    assert_eq!(released.removed, 0);
    assert!(list_segments(dir.path()).unwrap().is_empty());
    let config = WalConfig {
        min_next_seq: 60,
        ..small(dir.path())
    };
    for _ in 0..2 {
        // Each open starts a segment (from a spare) and stops before writing to it.
        let mut got = Vec::new();
        let (w, stats) = open(&config, |r| got.push(r.seq)).unwrap();
        assert!(got.is_empty(), "{got:?}");
        assert_eq!(stats.truncated_bytes, 0);
        assert_eq!(w.next_seq(), 60);
    }
    assert!(is_recycled(&segment_bytes(
        dir.path(),
        *list_segments(dir.path()).unwrap().last().unwrap()
    )));
    // Written to after all that, it gives back exactly the new records.
    let (mut w, _) = open(&config, |_| unreachable!()).unwrap();
    write_range(&mut w, 60, 63);
    drop(w);
    let (got, _) = replay_all(&config).unwrap();
    assert_eq!(
        got.iter().map(|g| g.0).collect::<Vec<_>>(),
        vec![60, 61, 62]
    );
}

#[test]
fn a_torn_write_in_a_reused_segment_is_cut_without_bringing_back_old_records() {
    let dir = tempfile::tempdir().unwrap();
    let (mut w, _) = open(&small(dir.path()), |_| unreachable!()).unwrap();
    write_range(&mut w, 0, 60);
    release_segments_before(dir.path(), w.segment(), 8).unwrap();
    let next = write_through_spares(&mut w, dir.path(), 60);
    let newest = w.segment();
    drop(w);
    // The last record's write was torn: its payload's last bytes are garbage.
    let path = segment_path(dir.path(), newest);
    let mut bytes = fs::read(&path).unwrap();
    let last = *scan_segment(&bytes).records.last().unwrap();
    let end = last.payload_start + last.payload_len;
    for b in &mut bytes[end - 16..end] {
        *b ^= 0xa5;
    }
    fs::write(&path, &bytes).unwrap();
    let config = WalConfig {
        min_next_seq: 0,
        ..small(dir.path())
    };
    let mut got = Vec::new();
    let (_w, stats) = open(&config, |r| got.push(r.seq)).unwrap();
    let first = got[0];
    assert_eq!(got, (first..next - 1).collect::<Vec<_>>());
    assert_eq!(stats.truncated_bytes, bytes.len() as u64 - last.offset);
}
