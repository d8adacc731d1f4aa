//! The in-memory buffer: every acknowledged reading not yet persisted, as Arrow record
//! batches that queries read directly, plus the latest-value-per-plug map.
//!
//! Duplicates of `(device_id, ts)` resolve to the last write: each plug keeps its
//! reading times in order with their global row numbers, so the earlier copy is found by
//! a binary search (or not at all, in the common case of a reading newer than every
//! other of its plug), and its row number goes into a deletion set that snapshots
//! filter out. Writes go into an open chunk of Arrow builders, which becomes a record
//! batch without a copy once it holds [`CHUNK_ROWS`] rows, or before a write that would
//! make its builders grow: a stream of small writes neither becomes millions of tiny
//! batches nor is copied twice (once into a small batch, again to merge the small
//! batches).

use std::collections::BTreeSet;
use std::ops::Range;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, RecordBatch, StringBuilder};
use arrow::compute::filter_record_batch;
use hashbrown::{HashMap, HashSet};
use wattdb_storage::{ReadingBatch, files};

use crate::schema::{ReadingColumns, StrWidths, readings_schema};

/// Rows of the open chunk at which it becomes a record batch.
const CHUNK_ROWS: usize = 64 * 1024;

/// Rows whose plugs are looked up together before they are updated ([`Buffer::insert`]).
const LOOKUP_BLOCK: usize = 256;

/// Memory of one row in the open chunk besides its strings: five 8-byte values, three
/// string offsets, validity and relay bits, and the per-plug time index (16 bytes).
const OPEN_ROW_BYTES: usize = 5 * 8 + 3 * 4 + 1 + 16;

/// The latest reading of one plug, and when it was first and last seen.
#[derive(Debug, Clone, PartialEq)]
pub struct LatestReading {
    pub device_id: Arc<str>,
    pub ts: i64,
    pub voltage: f64,
    pub current: f64,
    pub power: f64,
    pub energy: Option<f64>,
    pub relay_on: Option<bool>,
    pub location: Option<Arc<str>>,
    pub device_type: Option<Arc<str>>,
    /// Smallest reading time known: in the buffer since start, or in the 1d rollups.
    pub first_ts: i64,
}

/// One plug's reading times in ascending order, each with the global row number of
/// its live copy.
#[derive(Debug, Default)]
struct PlugRows {
    ts: Vec<i64>,
    rows: Vec<u64>,
    /// Room the lists take when they first grow: [`first_room`] for a new plug, then
    /// [`next_room`] of the last persist cycle's count (0 once taken).
    room: usize,
}

/// Room of a new plug's lists: 8 to 15 entries by its key. All plugs report at the same
/// rate, so lists grown from one size by doubling would all double in the same write
/// (10,000 plugs at 500,000 readings/s: 40 ms of one write copying and faulting in
/// memory, 5 s after start); from sizes spread over one doubling, an eighth of the
/// plugs grow at a time, spread over seconds.
fn first_room(key: usize) -> usize {
    8 + key % 8
}

/// Room of a plug's lists for the next persist cycle, after a cycle of `count` readings:
/// a quarter more and up to another quarter, spread by key like [`first_room`].
fn next_room(count: usize, key: usize) -> usize {
    count + count / 4 + count / 4 * (key % 8) / 8
}

/// Lists made ahead of a freeze, outside the buffer's lock, by the thread that freezes
/// ([`Buffer::rooms`], [`SpareLists::make`], [`Buffer::freeze_with`]): the plugs' next
/// lists with their room already taken and written once, so that the writes right after
/// a freeze neither allocate nor fault in memory for them.
#[derive(Debug, Default)]
pub struct SpareLists {
    /// By plug key.
    lists: Vec<Spare>,
}

/// One plug's next lists ([`SpareLists`]); empty where the plug needs none.
#[derive(Debug, Default)]
struct Spare {
    rows: Vec<u64>,
    /// Only where the plug's own time list is too small.
    ts: Option<Vec<i64>>,
}

/// Capacity a plug's lists need for the next cycle ([`Buffer::rooms`]).
#[derive(Debug, Clone, Copy)]
pub struct Room {
    entries: u32,
    /// The plug's time list holds less: it needs a spare too.
    ts: bool,
}

/// A list with room for `entries`, its memory written once (faulted in).
fn written<T: Copy + Default>(entries: usize) -> Vec<T> {
    let mut v = Vec::with_capacity(entries);
    v.resize(entries, T::default());
    v.clear();
    v
}

impl SpareLists {
    /// Makes the lists `rooms` asks for: the slow part, for outside the lock.
    pub fn make(rooms: &[Room]) -> Self {
        let lists = rooms
            .iter()
            .map(|r| {
                let n = r.entries as usize;
                if n == 0 {
                    return Spare::default();
                }
                Spare {
                    rows: written(n),
                    ts: r.ts.then(|| written(n)),
                }
            })
            .collect();
        Self { lists }
    }

    fn take(&mut self, key: usize) -> Spare {
        self.lists
            .get_mut(key)
            .map(std::mem::take)
            .unwrap_or_default()
    }
}

impl PlugRows {
    fn new(key: usize) -> Self {
        Self {
            room: first_room(key),
            ..Self::default()
        }
    }

    /// The room this plug's lists need after the next freeze.
    fn next(&self, key: usize) -> Room {
        let entries = next_room(self.rows.len(), key);
        Room {
            entries: u32::try_from(entries).unwrap_or(u32::MAX),
            ts: self.ts.capacity() < entries,
        }
    }

    /// Empties the list for the next persist cycle and returns its row numbers.
    ///
    /// The next cycle's lists get room for this cycle's count and a quarter more or so
    /// ([`next_room`]): grown from empty by doubling, every plug's list would double at
    /// the same moments, and each doubling of all of them at once copied tens of MB
    /// within one write (15-20 ms of the apply thread every few seconds at 500,000
    /// readings/s). `spare` lists made outside the lock hold that room already; without
    /// them the room is taken at the first insert, not here, so that a freeze (which
    /// holds the buffer's lock) allocates nothing.
    fn restart(&mut self, key: usize, spare: Spare) -> Vec<u64> {
        let room = next_room(self.rows.len(), key);
        self.ts.clear();
        if let Some(ts) = spare.ts {
            self.ts = ts;
        } else if self.ts.capacity() > 2 * room {
            // A burst from one plug does not keep its memory for good.
            self.ts.shrink_to(room);
        }
        let rows = std::mem::replace(&mut self.rows, spare.rows);
        self.room = if self.rows.capacity() > 0 { 0 } else { room };
        rows
    }

    /// Makes room for at least one more entry: the last cycle's count, or double.
    #[cold]
    fn grow(&mut self) {
        let more = self.room.max(self.rows.len()).max(4);
        self.ts.reserve(more);
        self.rows.reserve(more);
        self.room = 0;
    }

    /// Records `row` as the copy of `ts`; returns the row it replaces, if any.
    fn insert(&mut self, ts: i64, row: u64) -> Option<u64> {
        if self.rows.len() == self.rows.capacity() {
            self.grow();
        }
        if self.ts.last().is_none_or(|&last| last < ts) {
            // In order: the common case, no search.
            self.ts.push(ts);
            self.rows.push(row);
            return None;
        }
        match self.ts.binary_search(&ts) {
            Ok(i) => Some(std::mem::replace(&mut self.rows[i], row)),
            Err(i) => {
                self.ts.insert(i, ts);
                self.rows.insert(i, row);
                None
            }
        }
    }
}

#[derive(Debug)]
struct Chunk {
    /// Global row number of the first row.
    first_row: u64,
    batch: RecordBatch,
    min_ts: i64,
    max_ts: i64,
    /// Oldest WAL segment holding one of its rows.
    min_segment: u64,
}

/// The rows inserted since the last chunk was sealed, in Arrow builders: they become a
/// chunk's arrays without a copy ([`OpenChunk::seal`]); a snapshot copies them.
#[derive(Debug)]
struct OpenChunk {
    first_row: u64,
    min_ts: i64,
    max_ts: i64,
    min_segment: u64,
    /// What [`Buffer::bytes`] counts for these rows.
    bytes: usize,
    /// Rows the builders hold before they would grow.
    capacity: usize,
    columns: ReadingColumns,
}

impl OpenChunk {
    fn new(first_row: u64, capacity: usize, widths: StrWidths) -> Self {
        Self {
            first_row,
            min_ts: i64::MAX,
            max_ts: i64::MIN,
            min_segment: u64::MAX,
            bytes: 0,
            capacity,
            columns: ReadingColumns::with_widths(capacity, widths),
        }
    }

    /// Appends a batch's columns; returns the bytes it adds.
    fn append(&mut self, b: &ReadingBatch) -> usize {
        self.columns.append(b);
        let added = b.len() * OPEN_ROW_BYTES
            + b.device_id.data().len()
            + b.location.data().len()
            + b.device_type.data().len();
        self.bytes += added;
        added
    }

    /// The rows as a record batch, without copying them.
    fn seal(mut self) -> Chunk {
        Chunk {
            first_row: self.first_row,
            batch: self.columns.finish(),
            min_ts: self.min_ts,
            max_ts: self.max_ts,
            min_segment: self.min_segment,
        }
    }
}

/// Where the rows of a buffer came from in the WAL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalPosition {
    pub segment: u64,
    pub seq: u64,
}

/// Rows taken out of the buffer to be persisted: duplicates resolved, still queryable
/// until the manifest that lists their files is committed.
#[derive(Debug)]
pub struct Frozen {
    pub batches: Vec<RecordBatch>,
    pub rows: u64,
    pub bytes: usize,
    pub min_ts: i64,
    pub max_ts: i64,
    /// Oldest WAL segment holding one of the rows.
    pub min_segment: u64,
    /// Every WAL record up to this sequence number is in these rows (or older files).
    pub max_seq: u64,
    /// Where each plug's live rows are, in time order: what [`Frozen::plugs`] needs.
    order: FrozenOrder,
}

/// The buffer's per-plug index, taken out with the rows it points into.
#[derive(Debug)]
struct FrozenOrder {
    /// The buffer's record batches as inserted (overwritten rows included).
    chunks: Vec<RecordBatch>,
    /// Global row number of each chunk's first row, ascending, contiguous.
    first_rows: Vec<u64>,
    /// Per plug: its id and the global row numbers of its live rows, in time order.
    plugs: Vec<(Arc<str>, Vec<u64>)>,
}

impl Frozen {
    /// The rows in `(device_id, ts)` order, one per key, in one record batch.
    pub fn sorted(&self) -> Result<RecordBatch, arrow::error::ArrowError> {
        let plugs = self.plugs();
        plugs.gather(0..plugs.len())
    }

    /// The plugs with live rows, in id order, from which [`SortedPlugs::gather`] copies
    /// the rows of any run of them in `(device_id, ts)` order: a persist cycle sorts
    /// its rows a piece at a time, never holding a second copy of them all.
    pub fn plugs(&self) -> SortedPlugs<'_> {
        let mut plugs: Vec<&(Arc<str>, Vec<u64>)> = self
            .order
            .plugs
            .iter()
            .filter(|(_, rows)| !rows.is_empty())
            .collect();
        plugs.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        SortedPlugs {
            order: &self.order,
            plugs,
        }
    }
}

/// The plugs of a [`Frozen`] set in id order ([`Frozen::plugs`]).
#[derive(Debug)]
pub struct SortedPlugs<'a> {
    order: &'a FrozenOrder,
    plugs: Vec<&'a (Arc<str>, Vec<u64>)>,
}

impl SortedPlugs<'_> {
    /// How many plugs have rows.
    pub fn len(&self) -> usize {
        self.plugs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.plugs.is_empty()
    }

    /// Consecutive runs of plugs, together all of them, each holding at most `max_rows`
    /// rows unless one plug alone holds more.
    pub fn pieces(&self, max_rows: usize) -> Vec<Range<usize>> {
        let mut pieces = Vec::new();
        let mut start = 0;
        let mut rows = 0;
        for (i, (_, plug_rows)) in self.plugs.iter().enumerate() {
            if rows > 0 && rows + plug_rows.len() > max_rows {
                pieces.push(start..i);
                start = i;
                rows = 0;
            }
            rows += plug_rows.len();
        }
        if start < self.plugs.len() {
            pieces.push(start..self.plugs.len());
        }
        pieces
    }

    /// The rows of the plugs in `range` in `(device_id, ts)` order, one per key.
    ///
    /// The buffer's index already holds each plug's rows in time order, so this only
    /// gathers: no sort over the rows, and no hashing of their device ids. The same
    /// order as [`wattdb_storage::files::sort_rows`] over [`Frozen::batches`], at a
    /// fraction of the cost.
    pub fn gather(&self, range: Range<usize>) -> Result<RecordBatch, arrow::error::ArrowError> {
        self.gather_plugs(self.plugs.get(range).unwrap_or_default())
    }

    /// The rows of the plugs whose ids `keep` accepts, as [`SortedPlugs::gather`].
    pub fn gather_where(
        &self,
        keep: impl Fn(&str) -> bool,
    ) -> Result<RecordBatch, arrow::error::ArrowError> {
        let plugs: Vec<&(Arc<str>, Vec<u64>)> = self
            .plugs
            .iter()
            .copied()
            .filter(|(id, _)| keep(id))
            .collect();
        self.gather_plugs(&plugs)
    }

    fn gather_plugs(
        &self,
        plugs: &[&(Arc<str>, Vec<u64>)],
    ) -> Result<RecordBatch, arrow::error::ArrowError> {
        let FrozenOrder {
            chunks, first_rows, ..
        } = self.order;
        let rows: usize = plugs.iter().map(|(_, rows)| rows.len()).sum();
        if rows == 0 {
            return Ok(RecordBatch::new_empty(readings_schema()));
        }
        let in_chunk = |c: usize, row: u64| {
            first_rows.get(c).is_some_and(|&first| first <= row)
                && first_rows.get(c + 1).is_none_or(|&next| row < next)
        };
        let mut order = Vec::with_capacity(rows);
        let mut c = 0;
        for (_, rows) in plugs {
            for &row in rows {
                // A plug's rows mostly ascend a chunk or two at a time.
                if !in_chunk(c, row) {
                    c = if in_chunk(c + 1, row) {
                        c + 1
                    } else {
                        first_rows.partition_point(|&f| f <= row) - 1
                    };
                }
                order.push((c, (row - first_rows[c]) as usize));
            }
        }
        // Device ids from the plugs' runs, not gathered row by row.
        let id_bytes: usize = plugs.iter().map(|(id, rows)| id.len() * rows.len()).sum();
        let mut ids = StringBuilder::with_capacity(order.len(), id_bytes);
        for (id, rows) in plugs {
            for _ in 0..rows.len() {
                ids.append_value(id);
            }
        }
        let schema = readings_schema();
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
        for (i, field) in schema.fields().iter().enumerate() {
            if field.name() == "device_id" {
                columns.push(Arc::new(ids.finish()));
                continue;
            }
            let inputs: Vec<&dyn Array> = chunks.iter().map(|c| c.column(i).as_ref()).collect();
            columns.push(files::gather(&inputs, &order)?);
        }
        RecordBatch::try_new(schema, columns)
    }
}

/// The readings held in memory. Not synchronised: the engine wraps it in a lock.
#[derive(Debug)]
pub struct Buffer {
    chunks: Vec<Chunk>,
    /// Rows inserted since the last chunk was sealed.
    open: Option<OpenChunk>,
    /// String widths of the last chunk sealed: what the next open chunk is sized by.
    widths: StrWidths,
    next_row: u64,
    /// Per plug (by dense key): reading times, sorted, and their live row numbers.
    times: Vec<PlugRows>,
    /// Plug id → dense key.
    devices: HashMap<Arc<str>, u32, foldhash::fast::FixedState>,
    latest: Vec<LatestReading>,
    deleted: BTreeSet<u64>,
    bytes: usize,
    /// WAL position of the last record inserted.
    applied: Option<WalPosition>,
    /// Row numbers below this were frozen out.
    row_base: u64,
    /// Scratch: the plug keys of the rows being inserted.
    keys: Vec<u32>,
    /// Tag values (locations, device types) of the latest readings, one shared copy
    /// each: a row's tags are checked against its plug's by pointer, not by reading
    /// the plug's copy from memory.
    tags: HashSet<Arc<str>, foldhash::fast::FixedState>,
}

/// Tag values kept shared before [`Buffer::freeze`] starts the set afresh.
const MAX_SHARED_TAGS: usize = 65_536;

/// Sets a latest reading's tag to `value`, as the shared copy in `tags`.
fn set_tag(
    tag: &mut Option<Arc<str>>,
    tags: &mut HashSet<Arc<str>, foldhash::fast::FixedState>,
    value: &str,
) {
    let shared = tags.get_or_insert_with(value, |v| Arc::from(v));
    if !tag.as_ref().is_some_and(|t| Arc::ptr_eq(t, shared)) {
        *tag = Some(Arc::clone(shared));
    }
}

impl Default for Buffer {
    fn default() -> Self {
        Self::new()
    }
}

impl Buffer {
    pub fn new() -> Self {
        Self {
            chunks: Vec::new(),
            open: None,
            widths: StrWidths::default(),
            next_row: 0,
            times: Vec::new(),
            devices: HashMap::with_hasher(foldhash::fast::FixedState::with_seed(0x5eed)),
            latest: Vec::new(),
            deleted: BTreeSet::new(),
            bytes: 0,
            applied: None,
            row_base: 0,
            keys: Vec::with_capacity(LOOKUP_BLOCK),
            tags: HashSet::with_hasher(foldhash::fast::FixedState::with_seed(0x7a95)),
        }
    }

    /// Adds readings (in write order) as one record batch. `wal` gives the WAL records
    /// they came from: the oldest segment and the newest position.
    pub fn insert(&mut self, parts: &[&ReadingBatch], min_segment: u64, last: WalPosition) {
        self.applied = Some(last);
        let rows: usize = parts.iter().map(|b| b.len()).sum();
        if rows == 0 {
            return;
        }
        let first_row = self.next_row;
        let mut row = first_row;
        let mut min_ts = i64::MAX;
        let mut max_ts = i64::MIN;
        // With thousands of plugs, a row's index entry, time list and latest reading
        // are rarely in the processor's caches: a few cache misses per row, which one
        // after another were most of this thread's time. So a block of rows is looked
        // up in tight loops of their own first (the plugs' keys, then a read of each
        // plug's entries), where the processor overlaps the misses of many rows, and
        // only then updated.
        let mut keys = std::mem::take(&mut self.keys);
        for b in parts {
            for start in (0..b.len()).step_by(LOOKUP_BLOCK) {
                let block = start..(start + LOOKUP_BLOCK).min(b.len());
                keys.clear();
                for i in block.clone() {
                    keys.push(self.device_key(b.device_id.get(i)));
                }
                self.touch(&keys);
                let Self {
                    times,
                    latest,
                    deleted,
                    tags,
                    ..
                } = self;
                for (i, &key) in block.zip(&keys) {
                    let r = b.get(i);
                    min_ts = min_ts.min(r.ts);
                    max_ts = max_ts.max(r.ts);
                    if let Some(old) = times[key as usize].insert(r.ts, row) {
                        deleted.insert(old);
                    }
                    let latest = &mut latest[key as usize];
                    latest.first_ts = latest.first_ts.min(r.ts);
                    if r.ts >= latest.ts {
                        latest.ts = r.ts;
                        latest.voltage = r.voltage;
                        latest.current = r.current;
                        latest.power = r.power;
                        latest.energy = r.energy;
                        latest.relay_on = r.relay_on;
                        if let Some(l) = r.location {
                            set_tag(&mut latest.location, tags, l);
                        }
                        if let Some(t) = r.device_type {
                            set_tag(&mut latest.device_type, tags, t);
                        }
                    }
                    row += 1;
                }
            }
        }
        self.keys = keys;
        self.next_row = row;
        // The open chunk never grows past the capacity it was made with: a write that
        // does not fit seals it first (growing would copy every column into fresh,
        // twice as large, memory). A write of CHUNK_ROWS or more into an empty open
        // chunk is sealed at once: a chunk of its own, its capacity exactly its rows.
        if self
            .open
            .as_ref()
            .is_some_and(|o| o.columns.len() + rows > o.capacity)
        {
            self.seal();
        }
        let widths = self.widths;
        let open = self
            .open
            .get_or_insert_with(|| OpenChunk::new(first_row, rows.max(CHUNK_ROWS), widths));
        for b in parts {
            self.bytes += open.append(b);
        }
        open.min_ts = open.min_ts.min(min_ts);
        open.max_ts = open.max_ts.max(max_ts);
        open.min_segment = open.min_segment.min(min_segment);
        if open.columns.len() >= CHUNK_ROWS {
            self.seal();
        }
    }

    /// Turns the open chunk into a record batch.
    fn seal(&mut self) {
        if let Some(open) = self.open.take() {
            let (counted, rows) = (open.bytes, open.columns.len());
            self.widths = open.columns.widths();
            let chunk = open.seal();
            self.bytes = self.bytes.saturating_sub(counted)
                + chunk.batch.get_array_memory_size()
                + rows * 16;
            self.chunks.push(chunk);
        }
    }

    fn device_key(&mut self, id: &str) -> u32 {
        if let Some(&k) = self.devices.get(id) {
            return k;
        }
        let k = self.latest.len() as u32;
        self.times.push(PlugRows::new(k as usize));
        let id: Arc<str> = id.into();
        self.devices.insert(Arc::clone(&id), k);
        self.latest.push(LatestReading {
            device_id: id,
            ts: i64::MIN,
            voltage: f64::NAN,
            current: f64::NAN,
            power: f64::NAN,
            energy: None,
            relay_on: None,
            location: None,
            device_type: None,
            first_ts: i64::MAX,
        });
        k
    }

    /// Reads what updating the plugs of `keys` reads, so that it is in the caches when
    /// they are updated: the loads of one plug do not wait for those of the one before.
    fn touch(&self, keys: &[u32]) {
        let mut seen = 0usize;
        for &k in keys {
            let (t, l) = (&self.times[k as usize], &self.latest[k as usize]);
            seen ^= t.ts.last().copied().unwrap_or_default() as usize
                ^ t.rows.last().copied().unwrap_or_default() as usize
                ^ l.ts as usize
                ^ l.first_ts as usize
                ^ usize::from(l.location.is_some())
                ^ usize::from(l.device_type.is_some());
        }
        std::hint::black_box(seen);
    }

    /// The live readings whose time may fall in `[from, to]` (inclusive; `None` = open),
    /// with overwritten duplicates removed. Cheap: record batches are shared.
    pub fn snapshot(&self, from: Option<i64>, to: Option<i64>) -> Vec<RecordBatch> {
        let outside =
            |min: i64, max: i64| from.is_some_and(|f| max < f) || to.is_some_and(|t| min > t);
        let mut out = Vec::with_capacity(self.chunks.len() + 1);
        for c in &self.chunks {
            if outside(c.min_ts, c.max_ts) {
                continue;
            }
            let end = c.first_row + c.batch.num_rows() as u64;
            if self.deleted.range(c.first_row..end).next().is_none() {
                out.push(c.batch.clone());
                continue;
            }
            let mut keep = vec![true; c.batch.num_rows()];
            self.unkeep_deleted(c.first_row, &mut keep);
            out.extend(Self::filtered(&c.batch, keep));
        }
        if let Some(open) = self.open.as_ref().filter(|o| !outside(o.min_ts, o.max_ts)) {
            // Copied anyway, so cut to the time range exactly.
            let batch = open.columns.finish_cloned();
            let end = open.first_row + batch.num_rows() as u64;
            if from.is_none()
                && to.is_none()
                && self.deleted.range(open.first_row..end).next().is_none()
            {
                out.push(batch);
            } else {
                let ts = batch
                    .column(1)
                    .as_primitive::<arrow::datatypes::TimestampNanosecondType>();
                let mut keep: Vec<bool> = ts
                    .values()
                    .iter()
                    .map(|&t| from.is_none_or(|f| t >= f) && to.is_none_or(|e| t <= e))
                    .collect();
                self.unkeep_deleted(open.first_row, &mut keep);
                out.extend(Self::filtered(&batch, keep));
            }
        }
        out
    }

    /// Clears `keep` (rows from `first_row` on) at the rows that were overwritten.
    fn unkeep_deleted(&self, first_row: u64, keep: &mut [bool]) {
        for &r in self.deleted.range(first_row..first_row + keep.len() as u64) {
            keep[(r - first_row) as usize] = false;
        }
    }

    /// The rows of `batch` marked to keep; `None` if none are (or filtering failed).
    fn filtered(batch: &RecordBatch, keep: Vec<bool>) -> Option<RecordBatch> {
        if !keep.contains(&true) {
            return None;
        }
        match filter_record_batch(batch, &BooleanArray::from(keep)) {
            Ok(b) => Some(b),
            Err(error) => {
                tracing::warn!(%error, "could not filter duplicates from a buffer batch");
                None
            }
        }
    }

    /// Plugs known (keys `0..plugs`).
    pub fn plugs(&self) -> usize {
        self.times.len()
    }

    /// Appends the room the lists of plugs `keys` need after the next freeze, for
    /// [`SpareLists::make`]. Reads only: callers can hold the lock for a range at a time.
    pub fn rooms(&self, keys: Range<usize>, out: &mut Vec<Room>) {
        let keys = keys.start.min(self.times.len())..keys.end.min(self.times.len());
        out.extend(
            self.times[keys.clone()]
                .iter()
                .zip(keys)
                .map(|(t, k)| t.next(k)),
        );
    }

    /// Takes every row out for persistence (keeping the latest value of each plug), or
    /// `None` when the buffer holds no rows.
    pub fn freeze(&mut self) -> Option<Frozen> {
        self.freeze_with(SpareLists::default())
    }

    /// [`Buffer::freeze`], giving the plugs the `spares` as their next lists.
    pub fn freeze_with(&mut self, mut spares: SpareLists) -> Option<Frozen> {
        self.seal();
        if self.chunks.is_empty() {
            return None;
        }
        let batches = self.snapshot(None, None);
        let frozen = Frozen {
            rows: batches.iter().map(|b| b.num_rows() as u64).sum(),
            bytes: self.bytes,
            min_ts: self
                .chunks
                .iter()
                .map(|c| c.min_ts)
                .min()
                .unwrap_or(i64::MAX),
            max_ts: self
                .chunks
                .iter()
                .map(|c| c.max_ts)
                .max()
                .unwrap_or(i64::MIN),
            min_segment: self.chunks.iter().map(|c| c.min_segment).min().unwrap_or(0),
            max_seq: self.applied.map_or(0, |p| p.seq),
            batches,
            order: FrozenOrder {
                first_rows: self.chunks.iter().map(|c| c.first_row).collect(),
                chunks: self.chunks.drain(..).map(|c| c.batch).collect(),
                plugs: self
                    .times
                    .iter_mut()
                    .zip(&self.latest)
                    .enumerate()
                    .map(|(k, (t, l))| (Arc::clone(&l.device_id), t.restart(k, spares.take(k))))
                    .collect(),
            },
        };
        self.deleted.clear();
        if self.tags.len() > MAX_SHARED_TAGS {
            self.tags.clear();
        }
        self.row_base = self.next_row;
        self.bytes = 0;
        Some(frozen)
    }

    /// Oldest WAL segment that rows in the buffer, or records not yet inserted, may
    /// come from: segments before it hold nothing the buffer still needs.
    pub fn min_segment(&self) -> Option<u64> {
        let chunks = self
            .chunks
            .iter()
            .map(|c| c.min_segment)
            .chain(self.open.as_ref().map(|o| o.min_segment))
            .min();
        match (chunks, self.applied) {
            (Some(c), Some(a)) => Some(c.min(a.segment)),
            (c, a) => c.or(a.map(|a| a.segment)),
        }
    }

    /// WAL position of the last record inserted.
    pub fn applied(&self) -> Option<WalPosition> {
        self.applied
    }

    /// Time range of the rows held (`None` when empty).
    pub fn time_range(&self) -> Option<(i64, i64)> {
        let ranges = self
            .chunks
            .iter()
            .map(|c| (c.min_ts, c.max_ts))
            .chain(self.open.as_ref().map(|o| (o.min_ts, o.max_ts)));
        let lo = ranges.clone().map(|r| r.0).min()?;
        let hi = ranges.map(|r| r.1).max()?;
        Some((lo, hi))
    }

    /// Adds latest readings known from elsewhere (the rollup files, after a restart):
    /// each replaces a plug's latest reading only if it is newer.
    pub fn seed_latest(&mut self, readings: Vec<LatestReading>) {
        for l in readings {
            let k = self.device_key(&l.device_id) as usize;
            let cur = &mut self.latest[k];
            let first_ts = cur.first_ts.min(l.first_ts);
            if l.ts > cur.ts {
                *cur = LatestReading {
                    device_id: Arc::clone(&cur.device_id),
                    ..l
                };
            }
            cur.first_ts = first_ts;
        }
    }

    /// Latest reading of every plug, in no particular order.
    pub fn latest(&self) -> &[LatestReading] {
        &self.latest
    }

    /// Live rows (after duplicate removal).
    pub fn rows(&self) -> u64 {
        self.next_row - self.row_base - self.deleted.len() as u64
    }

    /// Approximate memory held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Record batches held, the open chunk included.
    pub fn batches(&self) -> usize {
        self.chunks.len() + usize::from(self.open.is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::datatypes::{Float64Type, TimestampNanosecondType};
    use wattdb_storage::ReadingRef;

    fn one(id: &str, ts: i64, power: f64) -> ReadingBatch {
        let mut b = ReadingBatch::new();
        b.push(ReadingRef {
            device_id: id,
            ts,
            voltage: 230.0,
            current: 1.0,
            power,
            energy: None,
            relay_on: Some(ts % 2 == 0),
            location: Some("lab"),
            device_type: None,
        });
        b
    }

    impl Buffer {
        fn insert_test(&mut self, parts: &[&ReadingBatch]) {
            self.insert(parts, 0, WalPosition { segment: 0, seq: 0 });
        }
    }

    #[test]
    fn a_plugs_list_starts_the_next_cycle_with_room_for_the_last() {
        let mut p = PlugRows::default();
        for (row, ts) in (0..100).enumerate() {
            assert_eq!(p.insert(ts, row as u64), None);
        }
        // Out of order and a replaced copy still land in place.
        assert_eq!(p.insert(50, 1000), Some(50));
        assert_eq!(p.insert(-1, 1001), None);
        let rows = p.restart(0, Default::default());
        assert_eq!(rows.len(), 101);
        assert_eq!((rows[0], rows[51]), (1001, 1000));
        assert!(p.ts.is_empty() && p.rows.is_empty());

        p.insert(200, 0);
        assert!(p.rows.capacity() >= 126, "room {}", p.rows.capacity());
        assert!(p.ts.capacity() >= 126, "room {}", p.ts.capacity());
        for ts in 201..300 {
            p.insert(ts, 0);
        }
        // Past the room, the lists double as usual.
        for ts in 300..400 {
            p.insert(ts, 0);
        }
        assert_eq!(p.restart(0, Default::default()).len(), 200);

        // A quiet cycle after a busy one gives the memory back.
        p.insert(500, 0);
        assert_eq!(p.restart(0, Default::default()).len(), 1);
        assert!(p.ts.capacity() <= 8, "kept {}", p.ts.capacity());
        assert_eq!(p.restart(0, Default::default()).len(), 0);
        assert_eq!((p.rows.capacity(), p.room), (0, 0));
    }

    #[test]
    fn new_plugs_lists_grow_at_different_counts() {
        // Eight plugs filled alike: past their first insert no two grow at the same
        // count, so no write grows all of them at once.
        let mut grew_at: Vec<Vec<usize>> = Vec::new();
        for key in 0..8 {
            let mut p = PlugRows::new(key);
            let mut at = Vec::new();
            for ts in 0..600 {
                let cap = p.rows.capacity();
                p.insert(ts, 0);
                if p.rows.capacity() != cap && ts > 0 {
                    at.push(ts as usize);
                }
            }
            assert_eq!(p.ts.len(), 600);
            grew_at.push(at);
        }
        let mut all: Vec<usize> = grew_at.iter().flatten().copied().collect();
        let n = all.len();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), n, "growth counts shared: {grew_at:?}");
        assert!(n >= 8 * 5, "{grew_at:?}");
    }

    #[test]
    fn spare_lists_hold_the_next_cycle_and_keep_the_rows() {
        let mut buf = Buffer::new();
        let plugs = ["a", "b", "c"];
        for ts in 0..40 {
            for (i, id) in plugs.iter().enumerate() {
                buf.insert_test(&[&one(id, ts, (i * 1000) as f64 + ts as f64)]);
            }
        }
        let mut rooms = Vec::new();
        buf.rooms(0..2, &mut rooms);
        buf.rooms(2..100, &mut rooms);
        assert_eq!(rooms.len(), 3);
        assert!(rooms.iter().all(|r| r.entries >= 50), "{rooms:?}");
        let spares = SpareLists::make(&rooms);
        let first = buf.freeze_with(spares).unwrap().sorted().unwrap();
        assert_eq!(first.num_rows(), 120);
        let lists: Vec<*const u64> = buf.times.iter().map(|t| t.rows.as_ptr()).collect();
        for t in &buf.times {
            assert!(t.rows.is_empty() && t.rows.capacity() >= 50 && t.ts.capacity() >= 50);
            assert_eq!(t.room, 0);
        }
        // The next cycle, a duplicate included, fits the spare lists: none moved.
        for ts in 100..140 {
            for id in plugs {
                buf.insert_test(&[&one(id, ts, ts as f64)]);
            }
        }
        buf.insert_test(&[&one("b", 120, -1.0)]);
        let moved: Vec<*const u64> = buf.times.iter().map(|t| t.rows.as_ptr()).collect();
        assert_eq!(lists, moved);
        let next = buf.freeze().unwrap();
        let r = rows(&[next.sorted().unwrap()]);
        assert_eq!(r.len(), 120);
        assert_eq!(r[40 + 20], ("b".into(), 120, -1.0));
        assert_eq!(r[0], ("a".into(), 100, 100.0));
        assert_eq!(r[119], ("c".into(), 139, 139.0));
    }

    fn rows(batches: &[RecordBatch]) -> Vec<(String, i64, f64)> {
        let mut out = Vec::new();
        for b in batches {
            let ids = b.column(0).as_string::<i32>();
            let ts = b.column(1).as_primitive::<TimestampNanosecondType>();
            let p = b.column(4).as_primitive::<Float64Type>();
            for i in 0..b.num_rows() {
                out.push((ids.value(i).to_owned(), ts.value(i), p.value(i)));
            }
        }
        out.sort_by(|a, b| a.partial_cmp(b).unwrap());
        out
    }

    #[test]
    fn last_write_wins_across_and_within_batches() {
        let mut buf = Buffer::new();
        buf.insert_test(&[&one("a", 1, 10.0), &one("b", 1, 20.0)]);
        buf.insert_test(&[&one("a", 1, 11.0)]);
        buf.insert_test(&[&one("b", 1, 21.0), &one("b", 1, 22.0)]);
        assert_eq!(
            rows(&buf.snapshot(None, None)),
            vec![("a".into(), 1, 11.0), ("b".into(), 1, 22.0)]
        );
        assert_eq!(buf.rows(), 2);
    }

    #[test]
    fn frozen_rows_sorted_from_the_index_equal_a_sort_of_the_live_rows() {
        let mut buf = Buffer::new();
        // Plugs whose ids sort apart from their order of arrival; in-order, late,
        // out-of-order and rewritten readings; batches big and small (merged tails).
        let ids = ["p10", "p2", "a", "p1", "z"];
        let mut n = 0u64;
        let mut inserted = 0;
        for round in 0..60i64 {
            let mut parts = Vec::new();
            for (k, id) in ids.iter().enumerate() {
                n = n
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let ts = match n >> 61 {
                    0 => round - 7,             // late
                    1 => (n >> 40) as i64 % 50, // anywhere, often a rewrite
                    _ => round * 10 + k as i64, // in order
                };
                parts.push(one(id, ts, (n >> 33) as f64));
            }
            let refs: Vec<&ReadingBatch> = parts.iter().collect();
            let take = if round % 3 == 0 {
                refs.len()
            } else {
                1 + round as usize % 3
            };
            buf.insert_test(&refs[..take]);
            inserted += take as u64;
        }
        let live = rows(&buf.snapshot(None, None));
        let frozen = buf.freeze().unwrap();
        assert!(frozen.rows < inserted, "some readings rewrite others");
        let sorted = frozen.sorted().unwrap();
        let expected =
            wattdb_storage::files::sort_rows(&readings_schema(), &frozen.batches, "ts").unwrap();
        assert_eq!(sorted, expected);
        assert_eq!(sorted.num_rows() as u64, frozen.rows);
        assert_eq!(rows(std::slice::from_ref(&sorted)), live);
        // In pieces of whole plugs, each within its row limit unless one plug exceeds it,
        // the same rows in the same order; and the plugs picked out by id.
        let plugs = frozen.plugs();
        assert_eq!(plugs.len(), ids.len());
        for max_rows in [1, 20, 50, 90, usize::MAX] {
            let pieces = plugs.pieces(max_rows);
            let batches: Vec<RecordBatch> = pieces
                .iter()
                .map(|r| plugs.gather(r.clone()).unwrap())
                .collect();
            for (r, b) in pieces.iter().zip(&batches) {
                assert!(
                    b.num_rows() <= max_rows || r.len() == 1,
                    "{max_rows}: {r:?}"
                );
            }
            let joined = arrow::compute::concat_batches(&readings_schema(), &batches).unwrap();
            assert_eq!(joined, sorted, "pieces of at most {max_rows} rows");
        }
        assert_eq!(plugs.pieces(1).len(), ids.len());
        assert_eq!(plugs.pieces(usize::MAX).len(), 1);
        let some = plugs.gather_where(|id| id.starts_with('p')).unwrap();
        assert_eq!(
            rows(&[some]),
            rows(&[sorted])
                .into_iter()
                .filter(|r| r.0.starts_with('p'))
                .collect::<Vec<_>>()
        );
        // The buffer starts over: the next freeze holds only the new rows.
        buf.insert_test(&[&one("p2", 1_000, 1.0)]);
        let next = buf.freeze().unwrap().sorted().unwrap();
        assert_eq!(rows(&[next]), vec![("p2".into(), 1_000, 1.0)]);
    }

    #[test]
    fn many_small_inserts_are_merged_and_stay_correct() {
        let mut buf = Buffer::new();
        for i in 0..1000 {
            buf.insert_test(&[&one("p", i, i as f64)]);
        }
        assert!(buf.batches() < 100, "{} batches", buf.batches());
        buf.insert_test(&[&one("p", 500, -1.0)]);
        let r = rows(&buf.snapshot(None, None));
        assert_eq!(r.len(), 1000);
        assert_eq!(r[500], ("p".into(), 500, -1.0));
    }

    /// Every column of every row, as text (the time as 20 digits), sorted.
    fn full_rows(batches: &[RecordBatch]) -> Vec<Vec<String>> {
        let mut out = Vec::new();
        for b in batches {
            let ts = b.column(1).as_primitive::<TimestampNanosecondType>();
            for i in 0..b.num_rows() {
                let mut row: Vec<String> = b
                    .columns()
                    .iter()
                    .map(|c| match c.is_null(i) {
                        true => "NULL".to_owned(),
                        false => arrow::util::display::array_value_to_string(c, i)
                            .unwrap_or_else(|e| e.to_string()),
                    })
                    .collect();
                row[1] = format!("{:020}", ts.value(i));
                out.push(row);
            }
        }
        out.sort();
        out
    }

    #[test]
    fn open_sealed_and_big_chunks_keep_every_column_and_the_last_write() {
        // Reading k of a pass: plug k % 97 at time k / 97, with nulls and tags varied.
        // The model holds each (plug, time)'s last write as the text `full_rows` shows,
        // made without the buffer's conversion to Arrow.
        type Model = std::collections::BTreeMap<(String, i64), Vec<String>>;
        let reading = |k: u64, pass: u64, b: &mut ReadingBatch, model: &mut Model| {
            let id = format!("p{}", k % 97);
            let r = ReadingRef {
                device_id: &id,
                ts: (k / 97) as i64,
                voltage: 230.0 + (k % 10) as f64,
                current: 0.001 * k as f64,
                power: (pass * 1_000_000 + k) as f64,
                energy: (!k.is_multiple_of(3)).then_some(k as f64 * 0.5),
                relay_on: match k % 4 {
                    0 => None,
                    1 => Some(true),
                    _ => Some(false),
                },
                location: (!k.is_multiple_of(5)).then_some("lab"),
                device_type: k.is_multiple_of(2).then_some("fridge"),
            };
            b.push(r);
            let float = |v: f64| {
                arrow::util::display::array_value_to_string(
                    &arrow::array::Float64Array::from(vec![v]),
                    0,
                )
                .unwrap()
            };
            let or_null = |v: Option<String>| v.unwrap_or_else(|| "NULL".to_owned());
            let row = vec![
                id.clone(),
                format!("{:020}", r.ts),
                float(r.voltage),
                float(r.current),
                float(r.power),
                or_null(r.energy.map(float)),
                or_null(r.relay_on.map(|on| on.to_string())),
                or_null(r.location.map(str::to_owned)),
                or_null(r.device_type.map(str::to_owned)),
            ];
            model.insert((id.clone(), r.ts), row);
        };
        let mut buf = Buffer::new();
        let mut written = Model::new();
        let mut insert = |buf: &mut Buffer, ks: std::ops::Range<u64>, pass: u64| {
            let mut b = ReadingBatch::new();
            for k in ks {
                reading(k, pass, &mut b, &mut written);
            }
            buf.insert_test(&[&b]);
        };
        // Small inserts until the open chunk is sealed: before the write that would not
        // fit, so that its builders never grow (growing copies every column into
        // memory twice as large), ...
        let mut k = 0;
        while buf.chunks.is_empty() {
            insert(&mut buf, k..k + 5_000, 0);
            k += 5_000;
        }
        let fits = CHUNK_ROWS / 5_000 * 5_000;
        assert_eq!(buf.chunks[0].batch.num_rows(), fits);
        assert_eq!(buf.open.as_ref().map(|o| o.columns.len()), Some(5_000));
        let ts_bytes = buf.chunks[0].batch.column(1).to_data().buffers()[0].capacity();
        assert_eq!(ts_bytes, CHUNK_ROWS * 8, "the builders never grew");
        // ... one big enough for a chunk of its own (the open one is sealed first), ...
        insert(&mut buf, k..k + CHUNK_ROWS as u64 + 10, 0);
        k += CHUNK_ROWS as u64 + 10;
        assert_eq!((buf.chunks.len(), buf.open.is_none()), (3, true));
        // ... then small ones again, rewriting readings of the first chunk, the big one
        // and the open one.
        insert(&mut buf, k..k + 3_000, 0);
        insert(&mut buf, 100..200, 1);
        insert(&mut buf, k - 50..k + 50, 1);
        insert(&mut buf, k + 2_990..k + 3_000, 2);
        assert!(buf.open.is_some());
        assert_eq!(buf.batches(), 4);

        let mut expected: Vec<Vec<String>> = written.into_values().collect();
        expected.sort();
        assert_eq!(expected.len() as u64, k + 3_000);
        assert_eq!(full_rows(&buf.snapshot(None, None)), expected);
        assert_eq!(buf.rows(), k + 3_000);

        // A time range: sealed chunks come whole, the open one cut to the range.
        let (from, to) = ((k / 97) as i64, (k / 97) as i64 + 3);
        let in_range = |rows: Vec<Vec<String>>| -> Vec<Vec<String>> {
            rows.into_iter()
                .filter(|r| (from..=to).contains(&r[1].parse::<i64>().unwrap()))
                .collect()
        };
        let part = buf.snapshot(Some(from), Some(to));
        assert_eq!(in_range(full_rows(&part)), in_range(expected.clone()));
        let open_part = part.last().unwrap();
        assert!(
            open_part.num_rows() < 3_000,
            "the open chunk is cut to the range"
        );

        // Frozen and sorted: the same rows.
        let frozen = buf.freeze().unwrap();
        assert_eq!(frozen.rows, k + 3_000);
        assert_eq!(full_rows(&[frozen.sorted().unwrap()]), expected);
        assert_eq!((buf.batches(), buf.rows()), (0, 0));
    }

    #[test]
    fn late_and_out_of_order_duplicates_are_found() {
        let mut buf = Buffer::new();
        for ts in [10, 30, 20, 5, 40] {
            buf.insert_test(&[&one("a", ts, ts as f64)]);
        }
        // Rewrites of an old, a middle and the newest time.
        for ts in [5, 20, 40] {
            buf.insert_test(&[&one("a", ts, -(ts as f64))]);
        }
        assert_eq!(
            rows(&buf.snapshot(None, None)),
            vec![
                ("a".into(), 5, -5.0),
                ("a".into(), 10, 10.0),
                ("a".into(), 20, -20.0),
                ("a".into(), 30, 30.0),
                ("a".into(), 40, -40.0),
            ]
        );
        assert_eq!(buf.rows(), 5);
    }

    #[test]
    fn latest_keeps_newest_time_not_newest_write() {
        let mut buf = Buffer::new();
        buf.insert_test(&[&one("a", 10, 1.0)]);
        buf.insert_test(&[&one("a", 5, 2.0)]);
        let l = &buf.latest()[0];
        assert_eq!((l.ts, l.power, l.first_ts), (10, 1.0, 5));
        assert_eq!(l.location.as_deref(), Some("lab"));
    }

    #[test]
    fn snapshot_prunes_by_time_and_nulls_absent_tags() {
        let mut buf = Buffer::new();
        buf.insert_test(&[&one("a", 10, 1.0)]);
        let mut no_tag = one("b", 100, 2.0);
        no_tag.location = Default::default();
        no_tag.location.push("");
        buf.insert_test(&[&no_tag]);
        assert_eq!(buf.snapshot(Some(50), None).len(), 1);
        assert_eq!(buf.snapshot(None, Some(5)).len(), 0);
        let b = &buf.snapshot(Some(100), Some(100))[0];
        assert!(b.column(7).is_null(0));
    }

    #[test]
    fn rows_across_lookup_blocks_find_their_duplicates_and_tags() {
        // One write of several lookup blocks: 7 plugs, each plug's times written twice
        // (the second copy in a later block, with a new power), and a location that
        // changes halfway.
        let mut b = ReadingBatch::new();
        let plugs = 7;
        let times = 2 * LOOKUP_BLOCK as i64 / plugs + 5;
        for pass in 0..2 {
            for t in 0..times {
                for p in 0..plugs {
                    let id = format!("p{p}");
                    b.push(ReadingRef {
                        device_id: &id,
                        ts: t,
                        voltage: 230.0,
                        current: 1.0,
                        power: (pass * 1000 + t) as f64,
                        energy: None,
                        relay_on: None,
                        location: Some(if t < times / 2 { "hall" } else { "attic" }),
                        device_type: Some("kettle"),
                    });
                }
            }
        }
        assert!(b.len() > 2 * LOOKUP_BLOCK);
        let mut buf = Buffer::new();
        buf.insert_test(&[&b]);
        assert_eq!(buf.rows(), (plugs * times) as u64);
        let live = rows(&buf.snapshot(None, None));
        assert_eq!(live.len(), (plugs * times) as usize);
        assert!(
            live.iter()
                .all(|(_, ts, power)| *power == (1000 + ts) as f64)
        );
        assert_eq!(buf.latest().len(), plugs as usize);
        for l in buf.latest() {
            assert_eq!(l.ts, times - 1);
            assert_eq!(l.location.as_deref(), Some("attic"));
            assert_eq!(l.device_type.as_deref(), Some("kettle"));
        }
        // A later write moves one plug back.
        buf.insert_test(&[&one("p3", times, 1.0)]);
        let moved = buf.latest().iter().find(|l| &*l.device_id == "p3").unwrap();
        assert_eq!(moved.location.as_deref(), Some("lab"));
    }
}
