//! Write-ahead log, segment format v1.
//!
//! A WAL directory holds segment files named `{id:020}.wal`, with ids increasing by one.
//! Only the newest segment is ever written; older ones are sealed (cut to the exact end
//! of their last record and fsynced before the next segment is created).
//!
//! ```text
//! segment header, 32 bytes
//!   0..8    magic  b"WATTWAL\0"
//!   8..12   format version, u32 LE = 1
//!   12..16  flags, u32 LE: bit 0 = recycled (records of an older segment may follow
//!           the end of this one's)
//!   16..24  segment id, u64 LE
//!   24..28  CRC32C of bytes 0..24, u32 LE
//!   28..32  zero
//! records, each at an 8-byte aligned offset
//!   0..4    payload length, u32 LE, > 0
//!   4..8    CRC32C over bytes 0..4 and 8..24+length, u32 LE
//!   8..16   sequence number, u64 LE, increasing by one across the whole log
//!   16..24  synced mark: the highest sequence number known durable when this record
//!           was written
//!   24..    payload (a ReadingBatch, see `codec`), then zero padding to 8 bytes
//! ```
//!
//! A new segment is preallocated (`fallocate`) so writes land in place; the unwritten
//! rest reads as zeros, and a zero length word ends the log. Each commit writes a zero
//! record header after its records (overwritten by the next commit), so the log also
//! ends cleanly in a *recycled* segment: a released segment kept as a spare
//! (`{id:020}.wal.spare`) and renamed into place, with a new header, when the log
//! rolls. Writing over blocks that are already allocated and written spares the file
//! system a metadata commit at every fsync, and the log no longer deletes a segment
//! (and discards its blocks) for each one it creates. What follows the end in a
//! recycled segment are records of an older segment: their sequence numbers are below
//! the log's, so recovery tells them from writes of this one.
//!
//! Recovery reads segments in order and stops at the first record that does not check
//! out. In the newest segment that is a torn tail — records of a group commit that never
//! completed, which were never acknowledged — *unless* a valid record further on carries
//! a synced mark at or past the damaged position: then acknowledged data was damaged,
//! and recovery fails with [`Error::Corrupt`] naming the segment and offset. Damage
//! anywhere in a sealed segment is corruption too. [`repair`] salvages every valid
//! record of damaged segments and moves the originals to `quarantine/`.

mod codec;
mod mmap;

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use tracing::{info, warn};

use crate::batch::ReadingBatch;
pub use codec::CodecError;

pub const FORMAT_VERSION: u32 = 1;
pub const MAGIC: [u8; 8] = *b"WATTWAL\0";
pub const SEGMENT_HEADER_LEN: usize = 32;
pub const RECORD_HEADER_LEN: usize = 24;
/// Largest payload a record may carry.
pub const MAX_PAYLOAD_LEN: usize = 1 << 30;
/// Header flag: the segment reuses a released one's file.
pub const FLAG_RECYCLED: u32 = 1;
const SPARE_SUFFIX: &str = ".wal.spare";

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("WAL I/O failed on {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "WAL segment {segment} is corrupt at offset {offset}: {reason}; run `wattdb wal repair --data-dir DIR` to salvage the valid records"
    )]
    Corrupt {
        segment: u64,
        offset: u64,
        reason: Damage,
    },
    #[error(
        "WAL record {seq} in segment {segment} at offset {offset} has a valid checksum but cannot be decoded"
    )]
    Payload {
        segment: u64,
        offset: u64,
        seq: u64,
        #[source]
        source: CodecError,
    },
    #[error("batch of {len} bytes is larger than the WAL record limit of {MAX_PAYLOAD_LEN} bytes")]
    RecordTooLarge { len: usize },
    #[error("the WAL writer is poisoned after a failed write or fsync; restart WattDB")]
    Poisoned,
}

/// What was wrong at the place a scan stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Damage {
    #[error("segment header is missing or invalid")]
    Header,
    #[error("record checksum mismatch")]
    Checksum,
    #[error("record length runs past the end of the segment")]
    Length,
    #[error("zero bytes where a record was expected")]
    Zeros,
    #[error("sequence number {found} is lower than the expected {expected}")]
    Sequence { expected: u64, found: u64 },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_owned(),
        source,
    }
}

/// One valid record found by a scan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordPos {
    pub offset: u64,
    pub seq: u64,
    pub synced: u64,
    payload_start: usize,
    payload_len: usize,
}

/// Where and why a scan of one segment's bytes stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScanEnd {
    /// The bytes end exactly after the last record (a sealed segment).
    Eof,
    /// A zero length word and nothing but zeros up to the next valid record, if any.
    Stopped { offset: u64, damage: Damage },
}

/// The records of one segment up to the first damage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scan {
    pub records: Vec<RecordPos>,
    pub end: ScanEnd,
}

fn pad8(n: usize) -> usize {
    (n + 7) & !7
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

fn header_bytes(segment: u64, flags: u32) -> [u8; SEGMENT_HEADER_LEN] {
    let mut h = [0u8; SEGMENT_HEADER_LEN];
    h[0..8].copy_from_slice(&MAGIC);
    h[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    h[12..16].copy_from_slice(&flags.to_le_bytes());
    h[16..24].copy_from_slice(&segment.to_le_bytes());
    let crc = crc32c::crc32c(&h[0..24]);
    h[24..28].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Checks a segment header; returns the segment id it names.
fn check_header(bytes: &[u8]) -> Option<u64> {
    let h = bytes.get(..SEGMENT_HEADER_LEN)?;
    let ok = h[0..8] == MAGIC
        && u32_at(h, 8) == FORMAT_VERSION
        && u32_at(h, 24) == crc32c::crc32c(&h[0..24]);
    ok.then(|| u64_at(h, 16))
}

/// Whether a segment's header marks it as recycled.
fn is_recycled(bytes: &[u8]) -> bool {
    check_header(bytes).is_some() && u32_at(bytes, 12) & FLAG_RECYCLED != 0
}

/// Parses the record at `offset` if it is complete and its checksum matches.
fn record_at(bytes: &[u8], offset: usize) -> Result<RecordPos, Damage> {
    let Some(head) = bytes.get(offset..offset + RECORD_HEADER_LEN) else {
        return Err(Damage::Length);
    };
    let len = u32_at(head, 0) as usize;
    let crc = u32_at(head, 4);
    if len == 0 {
        return Err(if head.iter().all(|&b| b == 0) {
            Damage::Zeros
        } else {
            Damage::Checksum
        });
    }
    let start = offset + RECORD_HEADER_LEN;
    if len > MAX_PAYLOAD_LEN || start + len > bytes.len() {
        return Err(Damage::Length);
    }
    let c = crc32c::crc32c(&head[0..4]);
    let c = crc32c::crc32c_append(c, &bytes[offset + 8..start + len]);
    if c != crc {
        return Err(Damage::Checksum);
    }
    Ok(RecordPos {
        offset: offset as u64,
        seq: u64_at(head, 8),
        synced: u64_at(head, 16),
        payload_start: start,
        payload_len: len,
    })
}

/// Reads the records of one segment's bytes up to the first damage. Never panics.
pub fn scan_segment(bytes: &[u8]) -> Scan {
    let mut records = Vec::new();
    if check_header(bytes).is_none() {
        return Scan {
            records,
            end: ScanEnd::Stopped {
                offset: 0,
                damage: Damage::Header,
            },
        };
    }
    let mut offset = SEGMENT_HEADER_LEN;
    let mut expected: Option<u64> = None;
    loop {
        if offset == bytes.len() {
            return Scan {
                records,
                end: ScanEnd::Eof,
            };
        }
        match record_at(bytes, offset) {
            Ok(rec) if expected.is_some_and(|e| rec.seq < e) => {
                let damage = Damage::Sequence {
                    expected: expected.unwrap_or_default(),
                    found: rec.seq,
                };
                return Scan {
                    records,
                    end: ScanEnd::Stopped {
                        offset: offset as u64,
                        damage,
                    },
                };
            }
            Ok(rec) => {
                expected = rec.seq.checked_add(1);
                offset = pad8(rec.payload_start + rec.payload_len);
                records.push(rec);
                if offset > bytes.len() {
                    // The padding of the last record is cut off: sealed segments end at
                    // the padded length, so treat what is there as a clean end.
                    return Scan {
                        records,
                        end: ScanEnd::Eof,
                    };
                }
            }
            Err(damage) => {
                return Scan {
                    records,
                    end: ScanEnd::Stopped {
                        offset: offset as u64,
                        damage,
                    },
                };
            }
        }
    }
}

/// Every valid record at an aligned offset at or after `from`, found by trying each
/// 8-byte boundary (used to tell a torn tail from corruption, and by repair).
fn salvage(bytes: &[u8], from: usize) -> Vec<RecordPos> {
    let mut out = Vec::new();
    let mut offset = pad8(from.max(SEGMENT_HEADER_LEN));
    while offset + RECORD_HEADER_LEN <= bytes.len() {
        match record_at(bytes, offset) {
            Ok(rec) => {
                offset = pad8(rec.payload_start + rec.payload_len);
                out.push(rec);
            }
            Err(_) => offset += 8,
        }
    }
    out
}

/// The lowest sequence number a record of this segment's log can carry: its first
/// record's, else one past the previous segment's last, else where the log resumes.
/// Anything lower in a recycled segment is left from the segment it reuses.
fn log_floor(scan: &Scan, last_seq: Option<u64>, min_next_seq: u64) -> u64 {
    scan.records
        .first()
        .map(|r| r.seq)
        .or(last_seq.map(|s| s + 1))
        .unwrap_or(min_next_seq)
}

/// Decodes a record's payload.
pub fn decode_record(bytes: &[u8], rec: &RecordPos) -> Result<ReadingBatch, CodecError> {
    codec::decode(&bytes[rec.payload_start..rec.payload_start + rec.payload_len])
}

/// Settings of a WAL directory.
#[derive(Debug, Clone)]
pub struct WalConfig {
    pub dir: PathBuf,
    /// Segments roll when the next record would not fit.
    pub segment_size: u64,
    /// Failures to inject into writes (tests of what follows a disk error).
    pub faults: Option<FaultInjector>,
    /// Sequence numbers continue from at least here, even if every segment is gone
    /// (the engine passes one past the last sequence number already persisted).
    pub min_next_seq: u64,
}

impl WalConfig {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            segment_size: 64 << 20,
            faults: None,
            min_next_seq: 0,
        }
    }
}

/// Makes the next WAL flushes fail with an I/O error, as a full or failing disk would.
/// Clones share the same counter.
#[derive(Debug, Clone, Default)]
pub struct FaultInjector(Arc<AtomicU32>);

impl FaultInjector {
    /// The next `n` write-and-fsync steps fail.
    pub fn fail_next_syncs(&self, n: u32) {
        self.0.store(n, Ordering::SeqCst);
    }

    fn take(&self) -> bool {
        self.0
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| v.checked_sub(1))
            .is_ok()
    }
}

/// What recovery found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryStats {
    pub segments: usize,
    pub records: u64,
    pub rows: u64,
    /// Bytes cut off a torn tail.
    pub truncated_bytes: u64,
}

/// A record handed to the replay callback.
#[derive(Debug)]
pub struct Replayed {
    pub segment: u64,
    pub seq: u64,
    pub batch: ReadingBatch,
}

fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:020}.wal"))
}

/// Segment ids present in `dir`, sorted (spares and unfinished `.wal.tmp` files are
/// not segments).
pub fn list_segments(dir: &Path) -> Result<Vec<u64>> {
    ids_named(dir, ".wal")
}

/// The ids of the files in `dir` named `{id}{suffix}`, sorted.
fn ids_named(dir: &Path, suffix: &str) -> Result<Vec<u64>> {
    let mut ids = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(id) = name.strip_suffix(suffix).and_then(|s| s.parse().ok()) {
            ids.push(id);
        }
    }
    ids.sort_unstable();
    Ok(ids)
}

/// Removes the `.wal.tmp` files an interrupted segment creation left (at open only:
/// the writer may be creating one while WattDB runs).
fn remove_unfinished(dir: &Path) -> Result<()> {
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        if entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.ends_with(".wal.tmp"))
        {
            let path = entry.path();
            warn!(path = %path.display(), "removing an unfinished WAL segment");
            fs::remove_file(&path).map_err(io_err(&path))?;
        }
    }
    Ok(())
}

fn spare_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:020}{SPARE_SUFFIX}"))
}

/// Ids of the spare segments in `dir`, sorted.
pub fn list_spares(dir: &Path) -> Result<Vec<u64>> {
    ids_named(dir, SPARE_SUFFIX)
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

/// Opens the WAL in `config.dir` (creating it), replays every durable record in order
/// through `on_record`, cuts off a torn tail, and returns a writer positioned in a
/// fresh segment.
pub fn open(
    config: &WalConfig,
    mut on_record: impl FnMut(Replayed),
) -> Result<(WalWriter, RecoveryStats)> {
    let dir = &config.dir;
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    remove_unfinished(dir)?;
    let ids = list_segments(dir)?;
    let mut stats = RecoveryStats::default();
    let mut last_seq: Option<u64> = None;
    for (i, &id) in ids.iter().enumerate() {
        let newest = i + 1 == ids.len();
        let path = segment_path(dir, id);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io_err(&path))?;
        let map = mmap::map_segment(&file).map_err(io_err(&path))?;
        let bytes: &[u8] = map.as_deref().unwrap_or(&[]);
        let scan = scan_segment(bytes);
        for rec in &scan.records {
            // Sequence numbers increase; a gap is left only by `repair`.
            if let Some(prev) = last_seq
                && rec.seq <= prev
            {
                return Err(Error::Corrupt {
                    segment: id,
                    offset: rec.offset,
                    reason: Damage::Sequence {
                        expected: prev + 1,
                        found: rec.seq,
                    },
                });
            }
            let batch = decode_record(bytes, rec).map_err(|source| Error::Payload {
                segment: id,
                offset: rec.offset,
                seq: rec.seq,
                source,
            })?;
            stats.records += 1;
            stats.rows += batch.len() as u64;
            last_seq = Some(rec.seq);
            on_record(Replayed {
                segment: id,
                seq: rec.seq,
                batch,
            });
        }
        stats.segments += 1;
        let ScanEnd::Stopped { offset, damage } = scan.end else {
            continue;
        };
        if !newest {
            return Err(Error::Corrupt {
                segment: id,
                offset,
                reason: damage,
            });
        }
        // The newest segment: a torn tail unless a later valid record says the damaged
        // position had already been made durable. Records of an older segment after
        // the end of a recycled one are neither: their sequence numbers are below the
        // log's.
        let last_good = scan.records.last().map(|r| r.seq).or(last_seq);
        let floor = log_floor(&scan, last_seq, config.min_next_seq);
        let later: Vec<RecordPos> = salvage(bytes, offset as usize + 8)
            .into_iter()
            .filter(|r| r.seq >= floor)
            .collect();
        if later.iter().any(|r| last_good.is_none_or(|g| r.synced > g)) {
            return Err(Error::Corrupt {
                segment: id,
                offset,
                reason: damage,
            });
        }
        let recycled = is_recycled(bytes);
        let len = bytes.len() as u64;
        drop(map);
        if damage == Damage::Header {
            warn!(
                segment = id,
                bytes = len,
                "removing a WAL segment with no valid header (interrupted creation)"
            );
            fs::remove_file(&path).map_err(io_err(&path))?;
            sync_dir(dir)?;
            stats.truncated_bytes += len;
            continue;
        }
        let torn = !later.is_empty()
            || damage != Damage::Zeros
            || !recycled && {
                // Zeros at the stop; anything non-zero after it is debris of a torn write
                // (in a recycled segment, it is the older segment's records).
                let map = mmap::map_segment(&file).map_err(io_err(&path))?;
                map.as_deref()
                    .is_some_and(|b| b[offset as usize..].iter().any(|&x| x != 0))
            };
        if torn {
            warn!(segment = id, offset, %damage, "truncating torn WAL tail (writes that were never acknowledged)");
            stats.truncated_bytes += len - offset;
        }
        file.set_len(offset).map_err(io_err(&path))?;
        file.sync_all().map_err(io_err(&path))?;
    }
    let next_segment = ids.last().map_or(0, |id| id + 1);
    let next_seq = last_seq.map_or(0, |s| s + 1).max(config.min_next_seq);
    let writer = WalWriter::create(config, next_segment, next_seq)?;
    info!(
        segments = stats.segments,
        records = stats.records,
        rows = stats.rows,
        "WAL recovered"
    );
    Ok((writer, stats))
}

/// Appends records to the newest segment. Records become durable, in order, with
/// [`WalWriter::commit`], which also makes them visible to recovery.
#[derive(Debug)]
pub struct WalWriter {
    dir: PathBuf,
    segment_size: u64,
    file: File,
    path: PathBuf,
    segment: u64,
    /// Where `pending` goes in the current file.
    write_pos: u64,
    capacity: u64,
    pending: Vec<u8>,
    next_seq: u64,
    synced_seq: Option<u64>,
    poisoned: bool,
    faults: Option<FaultInjector>,
}

impl WalWriter {
    fn create(config: &WalConfig, segment: u64, next_seq: u64) -> Result<Self> {
        let (file, path) = create_segment(&config.dir, segment, config.segment_size)?;
        Ok(Self {
            dir: config.dir.clone(),
            segment_size: config.segment_size,
            file,
            path,
            segment,
            write_pos: SEGMENT_HEADER_LEN as u64,
            capacity: config.segment_size.max(SEGMENT_HEADER_LEN as u64),
            pending: Vec::with_capacity(1 << 20),
            next_seq,
            synced_seq: next_seq.checked_sub(1),
            poisoned: false,
            faults: config.faults.clone(),
        })
    }

    /// Adds a record holding `batch`; returns its sequence number. Not durable until
    /// [`commit`](Self::commit).
    pub fn append(&mut self, batch: &ReadingBatch) -> Result<u64> {
        if self.poisoned {
            return Err(Error::Poisoned);
        }
        let start = self.pending.len();
        self.pending.resize(start + RECORD_HEADER_LEN, 0);
        codec::encode(batch, &mut self.pending);
        let len = self.pending.len() - start - RECORD_HEADER_LEN;
        if len > MAX_PAYLOAD_LEN {
            self.pending.truncate(start);
            return Err(Error::RecordTooLarge { len });
        }
        let padded = pad8(self.pending.len());
        self.pending.resize(padded, 0);
        let record_len = (padded - start) as u64;
        if self.write_pos + padded as u64 > self.capacity {
            // Move this record out of the way, flush what came before it into the
            // current segment, then roll.
            let record = self.pending.split_off(start);
            if let Err(e) = self.flush().and_then(|()| self.roll(record_len)) {
                self.poisoned = true;
                return Err(e);
            }
            self.pending = record;
        }
        let seq = self.next_seq;
        let synced = self.synced_seq.unwrap_or(0);
        let rec_start = self.pending.len() - record_len as usize;
        let rec = &mut self.pending[rec_start..];
        rec[0..4].copy_from_slice(&(len as u32).to_le_bytes());
        rec[8..16].copy_from_slice(&seq.to_le_bytes());
        rec[16..24].copy_from_slice(&synced.to_le_bytes());
        let crc = crc32c::crc32c(&rec[0..4]);
        let crc = crc32c::crc32c_append(crc, &rec[8..RECORD_HEADER_LEN + len]);
        rec[4..8].copy_from_slice(&crc.to_le_bytes());
        self.next_seq += 1;
        Ok(seq)
    }

    /// Writes every appended record and fsyncs; returns the highest durable sequence
    /// number. Any failure poisons the writer: the state of the file is unknown, so no
    /// later write may be acknowledged.
    pub fn commit(&mut self) -> Result<Option<u64>> {
        if self.poisoned {
            return Err(Error::Poisoned);
        }
        if let Err(e) = self.flush() {
            self.poisoned = true;
            return Err(e);
        }
        Ok(self.synced_seq)
    }

    fn flush(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        if self.faults.as_ref().is_some_and(FaultInjector::take) {
            return Err(Error::Io {
                path: self.path.clone(),
                source: io::Error::other("injected fault"),
            });
        }
        // A zero record header after the records ends the log here until the next
        // commit overwrites it (in a recycled segment, an older segment's records
        // follow).
        let records = self.pending.len();
        let room = self
            .capacity
            .saturating_sub(self.write_pos + records as u64);
        let marker = (RECORD_HEADER_LEN as u64).min(room) as usize;
        self.pending.resize(records + marker, 0);
        let written = self
            .file
            .write_all_at(&self.pending, self.write_pos)
            .and_then(|()| self.file.sync_data());
        self.pending.truncate(records);
        written.map_err(io_err(&self.path))?;
        self.write_pos += self.pending.len() as u64;
        self.pending.clear();
        self.synced_seq = self.next_seq.checked_sub(1);
        Ok(())
    }

    fn roll(&mut self, min_record: u64) -> Result<()> {
        self.file
            .set_len(self.write_pos)
            .map_err(io_err(&self.path))?;
        self.file.sync_all().map_err(io_err(&self.path))?;
        let next = self.segment + 1;
        let size = self
            .segment_size
            .max(SEGMENT_HEADER_LEN as u64 + min_record);
        let (file, path) = create_segment(&self.dir, next, size)?;
        info!(segment = next, "rolled WAL segment");
        self.file = file;
        self.path = path;
        self.segment = next;
        self.write_pos = SEGMENT_HEADER_LEN as u64;
        self.capacity = size;
        Ok(())
    }

    /// The segment records are currently appended to.
    pub fn segment(&self) -> u64 {
        self.segment
    }

    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    pub fn is_poisoned(&self) -> bool {
        self.poisoned
    }
}

/// Creates segment `id` of `size` bytes: a spare renamed (or a new file created) as
/// `.tmp`, preallocated, header written and fsynced, renamed into place, directory
/// fsynced.
fn create_segment(dir: &Path, id: u64, size: u64) -> Result<(File, PathBuf)> {
    let path = segment_path(dir, id);
    let tmp = path.with_extension("wal.tmp");
    let (file, flags) = match take_spare(dir, &tmp)? {
        Some(file) => (file, FLAG_RECYCLED),
        None => {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&tmp)
                .map_err(io_err(&tmp))?;
            (file, 0)
        }
    };
    let len = file.metadata().map_err(io_err(&tmp))?.len();
    if len < size {
        preallocate(&file, size).map_err(io_err(&tmp))?;
    }
    // The header, and a zero record header where the first record goes: a recycled
    // segment must not start with the records of the one it reuses.
    let mut head = [0u8; SEGMENT_HEADER_LEN + RECORD_HEADER_LEN];
    head[..SEGMENT_HEADER_LEN].copy_from_slice(&header_bytes(id, flags));
    file.write_all_at(&head, 0).map_err(io_err(&tmp))?;
    file.sync_all().map_err(io_err(&tmp))?;
    fs::rename(&tmp, &path).map_err(io_err(&path))?;
    sync_dir(dir)?;
    Ok((file, path))
}

/// Renames the oldest spare segment to `tmp` and opens it; `None` when there is none.
fn take_spare(dir: &Path, tmp: &Path) -> Result<Option<File>> {
    for id in list_spares(dir)? {
        let spare = spare_path(dir, id);
        match fs::rename(&spare, tmp) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_err(&spare)(e)),
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(tmp)
            .map_err(io_err(tmp))?;
        return Ok(Some(file));
    }
    Ok(None)
}

fn preallocate(file: &File, size: u64) -> io::Result<()> {
    file.set_len(size)?;
    // Reserve the blocks too, so writes into the segment do not allocate. Not every
    // filesystem supports it; a sparse segment still works.
    if let Err(error) = rustix::fs::fallocate(file, rustix::fs::FallocateFlags::empty(), 0, size) {
        tracing::debug!(%error, "fallocate not supported; WAL segment is sparse");
    }
    Ok(())
}

/// What [`release_segments_before`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Released {
    /// Segments kept as spares, for the writer to reuse.
    pub recycled: usize,
    /// Segments deleted.
    pub removed: usize,
}

/// Releases the segments before `segment`, whose every record has been persisted
/// elsewhere: up to `spares` spare segments are kept for the writer to reuse (renamed
/// to `{id:020}.wal.spare`), the rest are deleted.
pub fn release_segments_before(dir: &Path, segment: u64, spares: usize) -> Result<Released> {
    let mut out = Released::default();
    let mut have = list_spares(dir)?.len();
    for id in list_segments(dir)? {
        if id >= segment {
            break;
        }
        let path = segment_path(dir, id);
        if have < spares {
            let spare = spare_path(dir, id);
            fs::rename(&path, &spare).map_err(io_err(&spare))?;
            have += 1;
            out.recycled += 1;
        } else {
            fs::remove_file(&path).map_err(io_err(&path))?;
            out.removed += 1;
        }
    }
    if out != Released::default() {
        sync_dir(dir)?;
    }
    Ok(out)
}

/// What [`check`] or [`repair`] found in one damaged segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentDamage {
    pub segment: u64,
    pub offset: u64,
    pub damage: Damage,
    /// Valid records before the damage.
    pub records_before: usize,
    /// Valid records found after the damage (kept by repair).
    pub records_after: usize,
}

/// Lists damaged segments without changing anything. A clean zero tail in the newest
/// segment is not damage.
pub fn check(dir: &Path) -> Result<Vec<SegmentDamage>> {
    let ids = list_segments(dir)?;
    let mut out = Vec::new();
    let mut last_seq = None;
    for (i, &id) in ids.iter().enumerate() {
        let path = segment_path(dir, id);
        let file = File::open(&path).map_err(io_err(&path))?;
        let map = mmap::map_segment(&file).map_err(io_err(&path))?;
        let bytes: &[u8] = map.as_deref().unwrap_or(&[]);
        let scan = scan_segment(bytes);
        // Where the log resumes is not known here (the engine knows it from the
        // manifest): in a recycled segment with nothing before it, every record after
        // the end is taken as the older segment's.
        let floor = log_floor(&scan, last_seq, u64::MAX);
        last_seq = scan.records.last().map(|r| r.seq).or(last_seq);
        if let ScanEnd::Stopped { offset, damage } = scan.end {
            let later = salvage(bytes, offset as usize + 8);
            let clean_end = i + 1 == ids.len()
                && damage == Damage::Zeros
                && if is_recycled(bytes) {
                    later.iter().all(|r| r.seq < floor)
                } else {
                    later.is_empty() && bytes[offset as usize..].iter().all(|&b| b == 0)
                };
            if !clean_end {
                out.push(SegmentDamage {
                    segment: id,
                    offset,
                    damage,
                    records_before: scan.records.len(),
                    records_after: later.len(),
                });
            }
        }
    }
    Ok(out)
}

/// Rewrites every damaged segment with all its valid records (before and after the
/// damage) and moves the original to `quarantine/` beside the segments, so nothing is
/// destroyed. Run it with WattDB stopped.
pub fn repair(dir: &Path) -> Result<Vec<SegmentDamage>> {
    let damaged = check(dir)?;
    if damaged.is_empty() {
        return Ok(damaged);
    }
    let quarantine = dir.join("quarantine");
    fs::create_dir_all(&quarantine).map_err(io_err(&quarantine))?;
    for d in &damaged {
        let path = segment_path(dir, d.segment);
        let bytes = fs::read(&path).map_err(io_err(&path))?;
        let mut out = header_bytes(d.segment, 0).to_vec();
        // In log order; a record below one already kept is left from the older
        // segment a recycled one reuses.
        let mut last = None;
        for rec in salvage(&bytes, SEGMENT_HEADER_LEN) {
            if last.is_some_and(|l| rec.seq <= l) {
                continue;
            }
            last = Some(rec.seq);
            let end = pad8(rec.payload_start + rec.payload_len).min(bytes.len());
            out.extend_from_slice(&bytes[rec.offset as usize..end]);
            out.resize(pad8(out.len()), 0);
        }
        let kept = quarantine.join(format!("{:020}.wal.corrupt", d.segment));
        fs::rename(&path, &kept).map_err(io_err(&kept))?;
        let tmp = path.with_extension("wal.tmp");
        fs::write(&tmp, &out).map_err(io_err(&tmp))?;
        File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(io_err(&tmp))?;
        fs::rename(&tmp, &path).map_err(io_err(&path))?;
        warn!(segment = d.segment, offset = d.offset, damage = %d.damage, original = %kept.display(), "repaired WAL segment");
    }
    sync_dir(dir)?;
    sync_dir(&quarantine)?;
    Ok(damaged)
}

/// Fuzzing entry point: scans `data` as a segment and decodes every record found,
/// panicking on any broken invariant. Shared by the cargo-fuzz target and the corpus
/// replay test.
pub fn fuzz_check(data: &[u8]) {
    let scan = scan_segment(data);
    let mut prev_end = SEGMENT_HEADER_LEN as u64;
    for rec in &scan.records {
        assert!(rec.offset >= prev_end, "records overlap");
        assert_eq!(rec.offset % 8, 0, "record not aligned");
        prev_end = rec.offset + (RECORD_HEADER_LEN + rec.payload_len) as u64;
        assert!(prev_end <= data.len() as u64);
        if let Ok(batch) = decode_record(data, rec) {
            let mut again = Vec::new();
            codec::encode(&batch, &mut again);
            let round = codec::decode(&again);
            assert!(round.is_ok(), "re-encoded batch must decode");
        }
    }
    if let ScanEnd::Stopped { offset, .. } = scan.end {
        assert!(offset <= data.len() as u64);
    }
    for rec in salvage(data, SEGMENT_HEADER_LEN) {
        assert!(rec.offset as usize + RECORD_HEADER_LEN + rec.payload_len <= data.len());
    }
}

#[cfg(test)]
mod tests;
