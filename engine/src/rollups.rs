//! The rollup tables on the object store, `readings_1m`, `readings_1h` and
//! `readings_1d`, kept up to date as persistence writes raw readings.
//!
//! [`crate::rollup`] defines the partials; this module decides which to compute and
//! writes them. It runs inside every persist cycle, after the raw files of the frozen
//! rows are uploaded and before the manifest commit, so that one commit publishes raw
//! readings together with the rollups that cover them: a crash leaves neither without
//! the other, and retention can drop raw files knowing their rollups exist.
//!
//! For each plug in the frozen rows:
//! - **In order** (the common case): every frozen reading is newer than the plug's
//!   newest persisted one. The engine keeps, per plug, that reading, the last counter
//!   value and its tags (the plug's *tail*, in memory, about 100 bytes). The new
//!   readings extend it: whole rows for the new buckets, and for the open buckets (those
//!   of the newest persisted reading) *partial* rows of what the new readings add, which
//!   readers merge with the rows under them ([`crate::merge`]). No file is read.
//! - **New plugs**: a plug with no tail that no committed file can hold (its id is
//!   outside every file's device range, as with every plug of an empty store) has
//!   nothing persisted to start from; its tail starts from its frozen readings, as an
//!   extension of nothing. No file is read.
//! - **Otherwise** (late, out-of-order or rewritten readings, or a plug with no tail yet
//!   that files may hold, as in the first cycle after a restart): the plug's partials
//!   are recomputed from raw readings, hour by hour, from the hour of its oldest frozen
//!   reading up to its newest reading. Each hour's readings come from that hour's raw
//!   files and the frozen rows,
//!   duplicates resolved by rank exactly as queries of `readings` resolve them. What
//!   the recomputation starts from: the plug's last reading in the hour before (within
//!   the gap cap), its last counter value before the hour (from the day's 1h partials
//!   so far, else from the 1d partials of earlier days), and the day's 1h partials
//!   before the hour, which together with the recomputed hours give the 1d partial.
//!   Memory: one hour of raw readings of the recomputed plugs at a time, and the rollup
//!   rows, which are uploaded in parts of [`FLUSH_ROWS`].
//!
//! A recomputed bucket is written again whole, in a new file: as with raw files, it
//! replaces the rows of lower rank; an extended open bucket gets a partial row, which
//! adds to them. Queries and compaction merge them ([`crate::merge`]) and see one row
//! per plug and bucket. 1h partials are always built from 1m partials and 1d from 1h.
//!
//! **Late-data horizon.** Readings older than [`RollupSettings::horizon`] before the
//! newest persisted reading (or before now, if that is earlier) are stored as raw
//! readings but do not change rollups when they would need a recomputation: the cost
//! of a recomputation grows with how late the reading is. The count is reported
//! (`wattdb_rollup_too_late_readings_total`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{
    Array, ArrayRef, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray,
    StringBuilder, TimestampNanosecondArray,
};
use arrow::compute::filter_record_batch;
use wattdb_storage::files::{self, EncodeError, FileMeta, Tier};
use wattdb_storage::{Manifest, Store};

use crate::PersistFaults;
use crate::error::Result;
use crate::merge::merge_rollup_rows;
use crate::rollup::{Partial, Resolution, RollupConfig, Sample, compute};
use crate::schema::{col, readings_schema, rollup_col as rc, rollup_file_schema};

/// Nanoseconds in an hour: the unit of recomputation.
const HOUR_NS: i64 = 3_600_000_000_000;

/// Rollup rows kept in memory before they are uploaded: about 64 MB of [`Row`]s (a
/// million plugs write three million rows a cycle, in about a dozen files).
pub const FLUSH_ROWS: usize = 1 << 18;

/// Settings of the rollup tables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RollupSettings {
    pub math: RollupConfig,
    /// How late a reading may be and still be rolled up when that needs a
    /// recomputation (default 3 days).
    pub horizon: Duration,
}

impl Default for RollupSettings {
    fn default() -> Self {
        Self {
            math: RollupConfig::default(),
            horizon: Duration::from_secs(3 * 86_400),
        }
    }
}

impl RollupSettings {
    /// The settings' own constraints (the gap cap must stay under an hour: the
    /// predecessor of an hour's first reading is looked for in the hour before).
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.math.gap_cap_ns >= HOUR_NS {
            return Err(format!(
                "the rollup gap cap (--rollup-gap-cap) must be under one hour, not {} s",
                self.math.gap_cap_ns / 1_000_000_000
            ));
        }
        Ok(())
    }
}

/// One row of a rollup file: a plug's partial over one bucket, with the tags of the
/// bucket's last reading.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub device: Arc<str>,
    pub p: Partial,
    pub location: Option<Arc<str>>,
    pub device_type: Option<Arc<str>>,
    /// The row covers only readings newer than those of the rows of lower rank of the
    /// same plug and bucket, and is merged into them; otherwise it replaces them.
    pub partial: bool,
}

/// What the engine keeps of a plug to extend its rollups with newer readings: its
/// newest persisted reading, which is what the next readings' partials start from.
/// The open buckets (those of `last.ts`) are in the files; the next cycle writes what
/// it adds to them as partial rows.
#[derive(Debug, Clone)]
pub(crate) struct Tail {
    /// The plug's newest persisted reading.
    last: Sample,
    /// Its newest persisted counter value.
    last_energy: Option<f64>,
    /// The tags of its newest persisted reading, shared with the rows of the cycle.
    location: Option<Arc<str>>,
    device_type: Option<Arc<str>>,
}

impl Tail {
    /// Whether `bucket` of `res` is the plug's open bucket, the one its newest persisted
    /// reading lies in.
    fn is_open(&self, res: Resolution, bucket: i64) -> bool {
        res.bucket_start(self.last.ts) == bucket
    }
}

/// The tails of the plugs persisted since the start. They live in the engine's shared
/// state, next to the manifest they belong to, so that queries can extend them too
/// ([`preview`]).
///
/// Dense: the tails (about 100 bytes each) lie side by side in one vector, and the hash
/// table maps a plug to its place ([`Indexed`]). One vector is one allocation, and a
/// cycle's new tails are another that it frees whole: a box per tail left the
/// allocator's heap fragmented after a cycle that replaced every box.
pub(crate) type Tails = Indexed<Tail>;

/// Per-plug values side by side in one vector, found through a hash table of plug ids.
#[derive(Debug)]
pub(crate) struct Indexed<T> {
    index: HashMap<Arc<str>, u32>,
    items: Vec<(Arc<str>, T)>,
}

impl<T> Default for Indexed<T> {
    fn default() -> Self {
        Self {
            index: HashMap::new(),
            items: Vec::new(),
        }
    }
}

impl<T> Indexed<T> {
    pub fn new() -> Self {
        Self::default()
    }

    fn with_capacity(n: usize) -> Self {
        Self {
            index: HashMap::with_capacity(n),
            items: Vec::with_capacity(n),
        }
    }

    /// Plugs with a value.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// The plug's id as held here, and its value.
    pub fn get_key_value(&self, device: &str) -> Option<(&Arc<str>, &T)> {
        let &i = self.index.get(device)?;
        let (k, v) = &self.items[i as usize];
        Some((k, v))
    }

    fn get(&self, device: &str) -> Option<&T> {
        self.get_key_value(device).map(|(_, v)| v)
    }

    /// Adds a plug that has no value yet; its place.
    fn push(&mut self, device: Arc<str>, value: T) -> usize {
        let i = self.items.len();
        self.index.insert(Arc::clone(&device), i as u32);
        self.items.push((device, value));
        i
    }

    /// Sets the plug's value.
    pub fn insert(&mut self, device: Arc<str>, value: T) {
        match self.index.get(&device) {
            Some(&i) => self.items[i as usize].1 = value,
            None => {
                self.push(device, value);
            }
        }
    }

    /// The plug's value, a default one if it has none.
    fn entry(&mut self, device: &Arc<str>) -> &mut T
    where
        T: Default,
    {
        let i = match self.index.get(device) {
            Some(&i) => i as usize,
            None => self.push(Arc::clone(device), T::default()),
        };
        &mut self.items[i].1
    }

    /// Every value, taken out one by one; the vector gives its memory back as it
    /// empties, so that what they become need not coexist with all of them.
    fn drain_shrinking(self) -> impl Iterator<Item = (Arc<str>, T)> {
        let mut items = self.items;
        std::iter::from_fn(move || {
            let next = items.pop();
            if items.len().is_multiple_of(65_536) {
                items.shrink_to_fit();
            }
            next
        })
    }
}

/// Computes the rollup rows of persist cycles.
#[derive(Debug, Default)]
pub(crate) struct Rollups {
    settings: RollupSettings,
}

/// The rollup files of one persist cycle, and the tails to keep once it is committed.
#[derive(Debug, Default)]
pub(crate) struct Update {
    pub files: Vec<FileMeta>,
    pub bytes: u64,
    /// Rows written per resolution (1m, 1h, 1d).
    pub rows: [u64; 3],
    /// Plugs whose rollups were recomputed from raw readings.
    pub recomputed: usize,
    /// Plugs with nothing persisted before, whose tails started in this update.
    pub new_plugs: usize,
    /// Frozen readings too late to be rolled up.
    pub too_late: u64,
    tails: Vec<(Arc<str>, Tail)>,
    /// The rows themselves, per resolution, when they are kept instead of uploaded
    /// ([`Uploads::keep`]).
    kept: [Vec<Row>; 3],
}

impl Rollups {
    pub fn new(settings: RollupSettings) -> Self {
        Self { settings }
    }

    /// Keeps the tails of a committed update (call it as the manifest with the
    /// update's files is published).
    pub fn apply(tails: &mut Tails, update: &mut Update) {
        for (device, tail) in std::mem::take(&mut update.tails) {
            tails.insert(device, tail);
        }
    }

    /// Computes and uploads the rollup rows that `sorted` (the frozen rows, sorted by
    /// `(device_id, ts)`, one row per key) changes, given the committed files of
    /// `base` and the plugs' `tails` at `base`. `now` is the current time and
    /// `raw_cutoff` the time before which raw files expire, if they do. Nothing is
    /// visible until the caller commits the returned files with the raw files.
    pub async fn update(
        &self,
        tails: &Tails,
        uploads: &mut Uploads<'_>,
        base: &Manifest,
        sorted: &RecordBatch,
        now: i64,
        raw_cutoff: Option<i64>,
    ) -> Result<Update> {
        let newest = RawRows::new(sorted)?.ts.iter().copied().max();
        let mut pass = self.pass(tails, base, newest, now, raw_cutoff);
        pass.add(uploads, sorted).await?;
        if pass.recomputes() {
            pass.recompute(uploads, sorted).await?;
        }
        pass.finish(uploads).await
    }

    /// The same in steps ([`Pass`]), for rows that come a run of plugs at a time:
    /// `newest` is the newest reading time among all of them.
    pub fn pass<'a>(
        &'a self,
        tails: &'a Tails,
        base: &'a Manifest,
        newest: Option<i64>,
        now: i64,
        raw_cutoff: Option<i64>,
    ) -> Pass<'a> {
        let newest = base
            .files
            .iter()
            .filter(|f| f.tier == Tier::Raw)
            .map(|f| f.max_ts)
            .chain(newest)
            .max()
            .unwrap_or(now);
        let horizon = i64::try_from(self.settings.horizon.as_nanos()).unwrap_or(i64::MAX);
        let mut cutoff = now.min(newest).saturating_sub(horizon);
        if let Some(c) = raw_cutoff {
            // A recomputation reads the hour before its first: keep it within raw data.
            cutoff = cutoff.max(c.saturating_add(HOUR_NS));
        }
        Pass {
            tails,
            files: &base.files,
            persisted: DeviceRanges::new(&base.files),
            math: &self.settings.math,
            cutoff,
            starts: HashMap::new(),
            update: Update::default(),
            out: Output::default(),
        }
    }
}

/// The rollups of one persist cycle, computed as its rows come, a run of plugs at a
/// time ([`Pass::add`]), in `(device_id, ts)` order throughout; then the plugs that
/// need a recomputation ([`Pass::recompute`]); then [`Pass::finish`].
pub(crate) struct Pass<'a> {
    tails: &'a Tails,
    files: &'a [FileMeta],
    persisted: DeviceRanges<'a>,
    math: &'a RollupConfig,
    /// Readings before this are too late to roll up.
    cutoff: i64,
    /// Plugs to recompute, from the hour of their oldest new reading.
    starts: HashMap<Arc<str>, i64>,
    update: Update,
    out: Output,
}

impl Pass<'_> {
    /// Extends the tails of the plugs in `sorted` (sorted by `(device_id, ts)`, one row
    /// per key, plugs after those of earlier calls), and notes the plugs to recompute.
    pub async fn add(&mut self, uploads: &mut Uploads<'_>, sorted: &RecordBatch) -> Result<()> {
        let raw = RawRows::new(sorted)?;
        for run in raw.device_runs() {
            let device = raw.device.value(run.start);
            // The tail to extend (`None`: a new plug's, from nothing), or a recomputation.
            let from = match self.tails.get_key_value(device) {
                Some((device, tail)) if raw.ts[run.start] > tail.last.ts => {
                    Some((Arc::clone(device), Some(tail)))
                }
                found => {
                    let rows = &raw.ts[run.clone()];
                    let late = rows.partition_point(|&t| t < self.cutoff);
                    self.update.too_late += late as u64;
                    if late == 0 && found.is_none() && !self.persisted.may_hold(device) {
                        self.update.new_plugs += 1;
                        Some((Arc::from(device), None))
                    } else {
                        if late < rows.len() {
                            let h0 = Resolution::Hour.bucket_start(rows[late]);
                            self.starts.insert(Arc::from(device), h0);
                        }
                        None
                    }
                }
            };
            if let Some((device, tail)) = from
                && let Some(tail) = extend(tail, &device, &raw, run, self.math, &mut self.out)
            {
                self.update.tails.push((device, tail));
            }
            if self.out.len() >= FLUSH_ROWS {
                self.out.flush(uploads, &mut self.update).await?;
            }
        }
        Ok(())
    }

    /// Whether plugs need a recomputation: then call [`Pass::recompute`] with their rows.
    pub fn recomputes(&self) -> bool {
        !self.starts.is_empty()
    }

    /// Whether [`Pass::recompute`] needs the rows of `device`.
    pub fn recomputes_plug(&self, device: &str) -> bool {
        self.starts.contains_key(device)
    }

    /// Recomputes the plugs noted by [`Pass::add`] from `rows`, which hold (at least)
    /// all their rows, sorted by `(device_id, ts)`, one per key.
    pub async fn recompute(&mut self, uploads: &mut Uploads<'_>, rows: &RecordBatch) -> Result<()> {
        self.update.recomputed = self.starts.len();
        recompute(
            uploads,
            self.files,
            rows,
            &self.starts,
            self.math,
            &mut self.out,
            &mut self.update,
        )
        .await
    }

    /// Uploads the rows still held; the files and tails to commit.
    pub async fn finish(mut self, uploads: &mut Uploads<'_>) -> Result<Update> {
        self.out.flush(uploads, &mut self.update).await?;
        Ok(self.update)
    }
}

/// Where new files go: the store, the next file id, and injected failures (tests).
pub(crate) struct Uploads<'a> {
    pub store: &'a Store,
    pub next_id: &'a mut u64,
    pub faults: Option<&'a PersistFaults>,
    /// Keep the rows in [`Update`] instead of uploading them ([`preview`]).
    pub keep: bool,
}

/// Rollup rows waiting to be uploaded, per resolution.
#[derive(Debug, Default)]
struct Output {
    rows: [Vec<Row>; 3],
}

impl Output {
    fn len(&self) -> usize {
        self.rows.iter().map(Vec::len).sum()
    }

    fn push(&mut self, res: Resolution, rows: impl IntoIterator<Item = Row>) {
        self.rows[index(res)].extend(rows);
    }

    /// Uploads the rows as files of their tiers (not yet listed in any manifest).
    async fn flush(&mut self, uploads: &mut Uploads<'_>, update: &mut Update) -> Result<()> {
        if uploads.keep {
            for (kept, rows) in update.kept.iter_mut().zip(&mut self.rows) {
                kept.append(rows);
            }
            return Ok(());
        }
        let schema = rollup_file_schema();
        let props = files::writer_properties(&schema, rc::BUCKET);
        for res in Resolution::ALL {
            let mut rows = std::mem::take(&mut self.rows[index(res)]);
            if rows.is_empty() {
                continue;
            }
            update.rows[index(res)] += rows.len() as u64;
            // Files hold rows by (device_id, bucket). The extended plugs' rows come in
            // that order already, and a stable sort of sorted runs is one pass over
            // them; recomputed plugs add their rows hour by hour.
            rows.sort_by(|a, b| {
                let device = if Arc::ptr_eq(&a.device, &b.device) {
                    std::cmp::Ordering::Equal
                } else {
                    a.device.cmp(&b.device)
                };
                device.then(a.p.bucket.cmp(&b.p.bucket))
            });
            let sorted = rows_to_batch(&rows)?;
            drop(rows);
            let tier = tier_of(res);
            for (start, part) in files::split_by_partition(tier, &sorted, rc::BUCKET)? {
                let body = files::encode(&part, props.clone())?;
                let id = *uploads.next_id;
                *uploads.next_id += 1;
                let meta =
                    FileMeta::describe(tier, start, id, &part, body.len() as u64, rc::BUCKET)?;
                if let Some(f) = uploads.faults {
                    f.check_upload()?;
                }
                uploads.store.put(&meta.object_path(), body).await?;
                update.bytes += meta.size;
                update.files.push(meta);
            }
        }
        Ok(())
    }
}

/// The rollup rows (1m, 1h, 1d) that persisting `sorted` (rows not yet persisted, sorted by
/// `(device_id, ts)`, one per key) would write on top of `base`, whose plugs' tails are
/// `tails`: computed as a persist cycle computes them, without uploading anything.
/// They are the rows of the buckets that the readings change, whole or partial as a
/// cycle writes them, so they merge with the files' rows of the same plug and bucket
/// as the files' rows merge with each other.
pub(crate) async fn preview(
    settings: &RollupSettings,
    tails: &Tails,
    store: &Store,
    base: &Manifest,
    sorted: &RecordBatch,
    now: i64,
    raw_cutoff: Option<i64>,
) -> Result<[Vec<Row>; 3]> {
    let mut next_id = base.next_file_id;
    let mut uploads = Uploads {
        store,
        next_id: &mut next_id,
        faults: None,
        keep: true,
    };
    let rollups = Rollups::new(settings.clone());
    let mut update = rollups
        .update(tails, &mut uploads, base, sorted, now, raw_cutoff)
        .await?;
    Ok(std::mem::take(&mut update.kept))
}

pub(crate) fn index(res: Resolution) -> usize {
    match res {
        Resolution::Minute => 0,
        Resolution::Hour => 1,
        Resolution::Day => 2,
    }
}

/// The store tier of a rollup resolution.
pub fn tier_of(res: Resolution) -> Tier {
    match res {
        Resolution::Minute => Tier::Minute,
        Resolution::Hour => Tier::Hour,
        Resolution::Day => Tier::Day,
    }
}

/// Extends a plug's tail with newer readings (`run` of `raw`), or starts one for a plug
/// with nothing persisted (`tail` is `None`); the new tail (`None` only if there is
/// neither a tail nor a reading).
fn extend(
    tail: Option<&Tail>,
    device: &Arc<str>,
    raw: &RawRows<'_>,
    run: Range<usize>,
    cfg: &RollupConfig,
    out: &mut Output,
) -> Option<Tail> {
    let samples: Vec<Sample> = run.clone().map(|i| raw.sample(i)).collect();
    let partials = compute(
        Resolution::Minute,
        tail.map(|t| &t.last),
        tail.and_then(|t| t.last_energy),
        &samples,
        cfg,
    );
    let minute = tagged(
        device,
        raw,
        run.start,
        &samples,
        partials,
        tail.map(|t| (&t.location, &t.device_type)),
    );
    let hour = roll_rows(Resolution::Hour, &minute);
    let day = roll_rows(Resolution::Day, &hour);
    let newest = minute
        .last()
        .map(|r| (r.location.clone(), r.device_type.clone()));
    for (res, mut rows) in Resolution::ALL.into_iter().zip([minute, hour, day]) {
        // A row of the open bucket adds the new readings to what the files hold.
        if let (Some(t), Some(first)) = (tail, rows.first_mut()) {
            first.partial = t.is_open(res, first.p.bucket);
        }
        out.push(res, rows);
    }
    let (location, device_type) = match newest {
        Some(tags) => tags,
        None => tail.map(|t| (t.location.clone(), t.device_type.clone()))?,
    };
    Some(Tail {
        last: samples.last().copied().or(tail.map(|t| t.last))?,
        last_energy: samples
            .iter()
            .rev()
            .find_map(|s| s.energy)
            .or(tail.and_then(|t| t.last_energy)),
        location,
        device_type,
    })
}

/// Folds `later` (same plug, later readings) into `row`; the tags of the later one win.
fn merge_row(row: &mut Row, later: &Row) {
    row.p.merge_from(&later.p);
    row.location.clone_from(&later.location);
    row.device_type.clone_from(&later.device_type);
}

/// [`crate::rollup::roll_up`] for rows: one plug's rows, sorted by bucket, merged into
/// rows of the coarser resolution `to`.
fn roll_rows(to: Resolution, finer: &[Row]) -> Vec<Row> {
    let mut out: Vec<Row> = Vec::new();
    for r in finer {
        let bucket = to.bucket_start(r.p.bucket);
        match out.last_mut() {
            Some(c) if c.p.bucket == bucket => merge_row(c, r),
            _ => {
                let mut row = r.clone();
                row.p.bucket = bucket;
                out.push(row);
            }
        }
    }
    out
}

/// A plug's tags (location, device type), as a row or tail holds them.
type Tags<'a> = (&'a Option<Arc<str>>, &'a Option<Arc<str>>);

/// Rows for `partials` of one plug, computed from `samples` (rows `base..` of `raw`):
/// each with the tags of its last reading, and not partial. Tags equal to `known` (the
/// plug's previous tags) share their strings, so a plug's rows and tail hold one copy
/// of each.
fn tagged(
    device: &Arc<str>,
    raw: &RawRows<'_>,
    base: usize,
    samples: &[Sample],
    partials: Vec<Partial>,
    known: Option<Tags<'_>>,
) -> Vec<Row> {
    let mut location = known.and_then(|(l, _)| l.clone());
    let mut device_type = known.and_then(|(_, t)| t.clone());
    partials
        .into_iter()
        .map(|p| {
            let i = base + samples.partition_point(|s| s.ts < p.last_ts);
            Row {
                device: Arc::clone(device),
                location: raw.tag(raw.location, i, &mut location),
                device_type: raw.tag(raw.device_type, i, &mut device_type),
                p,
                partial: false,
            }
        })
        .collect()
}

/// What a recomputation carries from one hour to the next, per plug.
#[derive(Debug, Default)]
struct Carry {
    prev: Option<Sample>,
    prev_energy: Option<f64>,
    minute: Option<Row>,
    day: Option<Row>,
}

/// Recomputes the rollups of the plugs in `starts` from the hour given for each up to
/// their newest reading; adds the plugs' new tails to `update`.
async fn recompute(
    uploads: &mut Uploads<'_>,
    files: &[FileMeta],
    frozen: &RecordBatch,
    starts: &HashMap<Arc<str>, i64>,
    cfg: &RollupConfig,
    out: &mut Output,
    update: &mut Update,
) -> Result<()> {
    let store = uploads.store;
    let devices = DeviceSet::new(starts);
    let first_hour = starts.values().copied().min().unwrap_or(0);
    let last_hour = starts.values().copied().max().unwrap_or(0);
    let day = |h: i64| Resolution::Day.bucket_start(h);
    // Side by side, as tails are ([`Tails`]).
    let mut carries: Indexed<Carry> = Indexed::with_capacity(starts.len());

    // The day so far: 1h rows from the start of each plug's day to its first hour.
    let prefix = read_rollups(
        store,
        files,
        Tier::Hour,
        &devices,
        (day(first_hour), last_hour),
        |device, bucket| {
            starts
                .get(device)
                .is_some_and(|&h| bucket >= day(h) && bucket < h)
        },
    )
    .await?;
    for row in prefix {
        let c = carries.entry(&row.device);
        c.prev_energy = row.p.energy_last.or(c.prev_energy);
        match &mut c.day {
            Some(d) => merge_row(d, &row),
            None => c.day = roll_rows(Resolution::Day, std::slice::from_ref(&row)).pop(),
        }
    }
    // The counter before the day: from the 1d rows of earlier days.
    let missing: HashMap<&str, i64> = starts
        .iter()
        .filter(|(d, _)| carries.get(d).is_none_or(|c| c.prev_energy.is_none()))
        .map(|(d, &h)| (&**d, day(h)))
        .collect();
    if !missing.is_empty() {
        let earlier = read_rollups(
            store,
            files,
            Tier::Day,
            &devices,
            (i64::MIN, day(last_hour) - 1),
            |device, bucket| missing.get(device).is_some_and(|&d| bucket < d),
        )
        .await?;
        for row in earlier.into_iter().filter(|r| r.p.energy_last.is_some()) {
            // Sorted by bucket: the last one per plug wins.
            carries.entry(&row.device).prev_energy = row.p.energy_last;
        }
    }

    // The hours to read: from the hour before each plug's first.
    let keep = |device: &str, ts: i64, hour: i64, cap: i64| {
        starts.get(device).is_some_and(|&h| {
            hour >= h || (hour == h - HOUR_NS && ts >= h.saturating_sub(cap.max(0)))
        })
    };
    let raw_files: Vec<&FileMeta> = files
        .iter()
        .filter(|f| f.tier == Tier::Raw && f.max_ts >= first_hour - HOUR_NS)
        .filter(|f| devices.may_hold(&f.min_device, &f.max_device))
        .collect();
    let mut hours: BTreeMap<i64, Vec<&FileMeta>> = BTreeMap::new();
    for f in raw_files {
        hours
            .entry(Tier::Raw.partition_start(f.min_ts))
            .or_default()
            .push(f);
    }
    let frozen_rows = {
        let raw = RawRows::new(frozen)?;
        let mask: BooleanArray = (0..frozen.num_rows())
            .map(|i| {
                let ts = raw.ts[i];
                Some(keep(
                    raw.device.value(i),
                    ts,
                    Tier::Raw.partition_start(ts),
                    cfg.gap_cap_ns,
                ))
            })
            .collect();
        filter_record_batch(frozen, &mask).map_err(EncodeError::from)?
    };
    let mut frozen_by_hour: BTreeMap<i64, RecordBatch> =
        files::split_by_partition(Tier::Raw, &frozen_rows, col::TS)?
            .into_iter()
            .filter(|(_, b)| b.num_rows() > 0)
            .collect();
    let all_hours: BTreeSet<i64> = hours
        .keys()
        .chain(frozen_by_hour.keys())
        .copied()
        .filter(|&h| h >= first_hour - HOUR_NS)
        .collect();
    let schema = readings_schema();
    for hour in all_hours {
        let mut inputs: Vec<(u64, RecordBatch)> = Vec::new();
        for f in hours.get(&hour).map(Vec::as_slice).unwrap_or_default() {
            read_selected(store, f, &mut inputs, |b| {
                let raw = RawRows::new(b)?;
                Ok((0..b.num_rows())
                    .map(|i| Some(keep(raw.device.value(i), raw.ts[i], hour, cfg.gap_cap_ns)))
                    .collect())
            })
            .await?;
        }
        if let Some(b) = frozen_by_hour.remove(&hour) {
            inputs.push((u64::MAX, b));
        }
        if inputs.is_empty() {
            continue;
        }
        let merged = files::merge_newest(&schema, &inputs, col::TS)?;
        drop(inputs);
        let raw = RawRows::new(&merged)?;
        for run in raw.device_runs() {
            let name = raw.device.value(run.start);
            let Some((device, &h0)) = starts.get_key_value(name) else {
                continue;
            };
            let c = carries.entry(device);
            if hour < h0 {
                // The reading before the plug's first hour (within the gap cap).
                let s = raw.sample(run.end - 1);
                c.prev_energy = s.energy.or(c.prev_energy);
                c.prev = Some(s);
                continue;
            }
            let samples: Vec<Sample> = run.clone().map(|i| raw.sample(i)).collect();
            let partials = compute(
                Resolution::Minute,
                c.prev.as_ref(),
                c.prev_energy,
                &samples,
                cfg,
            );
            let minute = tagged(
                device,
                &raw,
                run.start,
                &samples,
                partials,
                c.minute.as_ref().map(|r| (&r.location, &r.device_type)),
            );
            let hour_rows = roll_rows(Resolution::Hour, &minute);
            if let Some(last) = samples.last() {
                c.prev_energy = samples
                    .iter()
                    .rev()
                    .find_map(|s| s.energy)
                    .or(c.prev_energy);
                c.prev = Some(*last);
            }
            for h in &hour_rows {
                match &mut c.day {
                    Some(d) if d.p.bucket == day(h.p.bucket) => merge_row(d, h),
                    _ => {
                        let next = roll_rows(Resolution::Day, std::slice::from_ref(h)).pop();
                        if let Some(done) = std::mem::replace(&mut c.day, next) {
                            out.push(Resolution::Day, [done]);
                        }
                    }
                }
            }
            c.minute = minute.last().cloned().or(c.minute.take());
            out.push(Resolution::Minute, minute);
            out.push(Resolution::Hour, hour_rows);
        }
        if out.len() >= FLUSH_ROWS {
            out.flush(uploads, update).await?;
        }
    }
    // The carries become tails; the two vectors do not both hold all of them at once.
    update.tails.reserve(carries.len());
    for (device, c) in carries.drain_shrinking() {
        if let Some(d) = &c.day {
            out.push(Resolution::Day, [d.clone()]);
        }
        if let (Some(last), Some(m)) = (c.prev, c.minute) {
            update.tails.push((
                device,
                Tail {
                    last,
                    last_energy: c.prev_energy,
                    location: m.location,
                    device_type: m.device_type,
                },
            ));
        }
    }
    Ok(())
}

/// The device ranges of committed files, merged: a plug outside all of them has nothing
/// persisted (raw readings or rollups).
struct DeviceRanges<'a> {
    /// Disjoint `[min, max]` ranges, ascending.
    ranges: Vec<(&'a str, &'a str)>,
}

impl<'a> DeviceRanges<'a> {
    fn new(files: &'a [FileMeta]) -> Self {
        let mut all: Vec<(&str, &str)> = files
            .iter()
            .map(|f| (f.min_device.as_str(), f.max_device.as_str()))
            .collect();
        all.sort_unstable();
        let mut ranges: Vec<(&str, &str)> = Vec::new();
        for (lo, hi) in all {
            match ranges.last_mut() {
                Some(last) if lo <= last.1 => last.1 = last.1.max(hi),
                _ => ranges.push((lo, hi)),
            }
        }
        Self { ranges }
    }

    /// Whether a committed file may hold readings or rollups of `device`.
    fn may_hold(&self, device: &str) -> bool {
        let i = self.ranges.partition_point(|&(lo, _)| lo <= device);
        i > 0 && device <= self.ranges[i - 1].1
    }
}

/// The plugs of a recomputation, for pruning files by their device range.
struct DeviceSet<'a> {
    min: &'a str,
    max: &'a str,
}

impl<'a> DeviceSet<'a> {
    fn new(starts: &'a HashMap<Arc<str>, i64>) -> Self {
        let min = starts.keys().map(|d| &**d).min().unwrap_or("");
        let max = starts.keys().map(|d| &**d).max().unwrap_or("");
        Self { min, max }
    }

    fn may_hold(&self, lo: &str, hi: &str) -> bool {
        lo <= self.max && hi >= self.min
    }
}

/// The rows of `tier` with buckets in `range` (inclusive) that `wanted(device, bucket)`
/// selects, one per plug and bucket (the rows of the files merged by rank), sorted by
/// plug and bucket.
async fn read_rollups(
    store: &Store,
    files: &[FileMeta],
    tier: Tier,
    devices: &DeviceSet<'_>,
    range: (i64, i64),
    wanted: impl Fn(&str, i64) -> bool,
) -> Result<Vec<Row>> {
    let mut inputs: Vec<(u64, RecordBatch)> = Vec::new();
    for f in files.iter().filter(|f| {
        f.tier == tier
            && f.max_ts >= range.0
            && f.min_ts <= range.1
            && devices.may_hold(&f.min_device, &f.max_device)
    }) {
        read_selected(store, f, &mut inputs, |b| {
            let cols = RollupColumns::new(b)?;
            Ok((0..b.num_rows())
                .map(|i| Some(wanted(cols.device.value(i), cols.bucket.value(i))))
                .collect())
        })
        .await?;
    }
    if inputs.is_empty() {
        return Ok(Vec::new());
    }
    let merged = merge_rollup_rows(&inputs).map_err(EncodeError::from)?;
    Ok(batch_to_rows(&merged)?)
}

/// How far back the latest-value map looks in the 1d rollups after a restart.
const LATEST_WINDOW_NS: i64 = 400 * 86_400 * 1_000_000_000;

/// The latest reading of every plug in the 1d rollup rows of the last 400 days (before
/// the newest), with the first reading time found there: what the latest-value map
/// starts from after a restart, before the WAL replay adds newer readings. Reads one
/// file at a time.
pub(crate) async fn latest_from_files(
    store: &Store,
    files: &[FileMeta],
) -> Result<Vec<crate::LatestReading>> {
    let days: Vec<&FileMeta> = files.iter().filter(|f| f.tier == Tier::Day).collect();
    let Some(newest) = days.iter().map(|f| f.max_ts).max() else {
        return Ok(Vec::new());
    };
    let mut best: HashMap<Arc<str>, (Row, u64, i64)> = HashMap::new();
    for f in days
        .into_iter()
        .filter(|f| f.max_ts >= newest.saturating_sub(LATEST_WINDOW_NS))
    {
        let body = store.get(&f.object_path()).await?;
        for b in files::decode(body)? {
            for row in batch_to_rows(&b)? {
                let rank = f.rank();
                match best.get_mut(&row.device) {
                    Some((cur, cur_rank, first)) => {
                        *first = (*first).min(row.p.first_ts);
                        if (row.p.last_ts, rank) > (cur.p.last_ts, *cur_rank) {
                            // A partial row may cover readings without a counter.
                            let energy = cur.p.energy_last;
                            (*cur, *cur_rank) = (row, rank);
                            if cur.partial {
                                cur.p.energy_last = cur.p.energy_last.or(energy);
                            }
                        }
                    }
                    None => {
                        let first = row.p.first_ts;
                        best.insert(Arc::clone(&row.device), (row, rank, first));
                    }
                }
            }
        }
    }
    Ok(best
        .into_values()
        .map(|(r, _, first_ts)| crate::LatestReading {
            device_id: r.device,
            ts: r.p.last_ts,
            voltage: r.p.voltage_last,
            current: r.p.current_last,
            power: r.p.power_last,
            energy: r.p.energy_last,
            relay_on: r.p.relay_last,
            location: r.location,
            device_type: r.device_type,
            first_ts,
        })
        .collect())
}

/// Reads file `f` and appends the rows `select` keeps (a mask per decoded batch) to
/// `into`, tagged with the file's rank.
async fn read_selected(
    store: &Store,
    f: &FileMeta,
    into: &mut Vec<(u64, RecordBatch)>,
    select: impl Fn(&RecordBatch) -> Result<BooleanArray, EncodeError>,
) -> Result<()> {
    let body = store.get(&f.object_path()).await?;
    for b in files::decode(body)? {
        let b = filter_record_batch(&b, &select(&b)?).map_err(EncodeError::from)?;
        if b.num_rows() > 0 {
            into.push((f.rank(), b));
        }
    }
    Ok(())
}

/// Typed access to the columns of a batch of raw readings.
struct RawRows<'a> {
    device: &'a StringArray,
    ts: &'a [i64],
    voltage: &'a Float64Array,
    current: &'a Float64Array,
    power: &'a Float64Array,
    energy: &'a Float64Array,
    relay: &'a BooleanArray,
    location: &'a StringArray,
    device_type: &'a StringArray,
}

fn column<'a, T: 'static>(b: &'a RecordBatch, name: &'static str) -> Result<&'a T, EncodeError> {
    b.column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<T>())
        .ok_or(EncodeError::Column(name))
}

impl<'a> RawRows<'a> {
    fn new(b: &'a RecordBatch) -> Result<Self, EncodeError> {
        Ok(Self {
            device: column(b, col::DEVICE_ID)?,
            ts: column::<TimestampNanosecondArray>(b, col::TS)?.values(),
            voltage: column(b, col::VOLTAGE)?,
            current: column(b, col::CURRENT)?,
            power: column(b, col::POWER)?,
            energy: column(b, col::ENERGY)?,
            relay: column(b, col::RELAY_ON)?,
            location: column(b, col::LOCATION)?,
            device_type: column(b, col::DEVICE_TYPE)?,
        })
    }

    fn sample(&self, i: usize) -> Sample {
        Sample {
            ts: self.ts[i],
            voltage: self.voltage.value(i),
            current: self.current.value(i),
            power: self.power.value(i),
            energy: self.energy.is_valid(i).then(|| self.energy.value(i)),
            relay_on: self.relay.is_valid(i).then(|| self.relay.value(i)),
        }
    }

    /// The tag of row `i`: `known` when equal, else a new one that becomes `known`.
    fn tag(
        &self,
        column: &StringArray,
        i: usize,
        known: &mut Option<Arc<str>>,
    ) -> Option<Arc<str>> {
        if !column.is_valid(i) {
            return None;
        }
        let value = column.value(i);
        match known {
            Some(k) if &**k == value => Some(Arc::clone(k)),
            _ => Some(Arc::clone(known.insert(Arc::from(value)))),
        }
    }

    /// The row ranges of consecutive rows of one plug.
    fn device_runs(&self) -> Vec<Range<usize>> {
        let n = self.device.len();
        let mut runs = Vec::new();
        let mut start = 0;
        for i in 1..=n {
            if i == n || self.device.value(i) != self.device.value(start) {
                if start < i {
                    runs.push(start..i);
                }
                start = i;
            }
        }
        runs
    }
}

/// Typed access to the columns of a batch of rollup rows.
struct RollupColumns<'a> {
    device: &'a StringArray,
    bucket: &'a TimestampNanosecondArray,
}

impl<'a> RollupColumns<'a> {
    fn new(b: &'a RecordBatch) -> Result<Self, EncodeError> {
        Ok(Self {
            device: column(b, rc::DEVICE_ID)?,
            bucket: column(b, rc::BUCKET)?,
        })
    }
}

/// Rollup rows as a record batch of [`rollup_file_schema`].
pub fn rows_to_batch(rows: &[Row]) -> Result<RecordBatch, EncodeError> {
    let f = |get: fn(&Partial) -> f64| -> ArrayRef {
        Arc::new(Float64Array::from_iter_values(
            rows.iter().map(|r| get(&r.p)),
        ))
    };
    let time = |get: fn(&Partial) -> i64| -> ArrayRef {
        Arc::new(
            TimestampNanosecondArray::from_iter_values(rows.iter().map(|r| get(&r.p)))
                .with_timezone("UTC"),
        )
    };
    let tags = |get: fn(&Row) -> &Option<Arc<str>>| -> ArrayRef {
        let mut b = StringBuilder::new();
        for r in rows {
            b.append_option(get(r).as_deref());
        }
        Arc::new(b.finish())
    };
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| &*r.device),
        )),
        time(|p| p.bucket),
        Arc::new(Int64Array::from_iter_values(
            rows.iter().map(|r| r.p.count as i64),
        )),
        f(|p| p.voltage_min),
        f(|p| p.voltage_max),
        f(|p| p.voltage_sum),
        f(|p| p.current_min),
        f(|p| p.current_max),
        f(|p| p.current_sum),
        f(|p| p.power_min),
        f(|p| p.power_max),
        f(|p| p.power_sum),
        Arc::new(Float64Array::from_iter(
            rows.iter().map(|r| r.p.energy_first),
        )),
        Arc::new(Float64Array::from_iter(
            rows.iter().map(|r| r.p.energy_last),
        )),
        f(|p| p.energy_counter_wh),
        f(|p| p.energy_wh),
        f(|p| p.relay_on_s),
        time(|p| p.first_ts),
        time(|p| p.last_ts),
        f(|p| p.voltage_last),
        f(|p| p.current_last),
        f(|p| p.power_last),
        Arc::new(BooleanArray::from_iter(rows.iter().map(|r| r.p.relay_last))),
        tags(|r| &r.location),
        tags(|r| &r.device_type),
        Arc::new(BooleanArray::from_iter(
            rows.iter().map(|r| Some(r.partial)),
        )),
    ];
    Ok(RecordBatch::try_new(rollup_file_schema(), columns)?)
}

/// The rows of a record batch of [`rollup_file_schema`] (or [`rollup_schema`]: whole
/// rows).
pub fn batch_to_rows(b: &RecordBatch) -> Result<Vec<Row>, EncodeError> {
    let device: &StringArray = column(b, rc::DEVICE_ID)?;
    let ts = |name| column::<TimestampNanosecondArray>(b, name);
    let float = |name| column::<Float64Array>(b, name);
    let (bucket, first_ts, last_ts) = (ts(rc::BUCKET)?, ts(rc::FIRST_TS)?, ts(rc::LAST_TS)?);
    let count: &Int64Array = column(b, rc::COUNT)?;
    let v = [
        float(rc::VOLTAGE_MIN)?,
        float(rc::VOLTAGE_MAX)?,
        float(rc::VOLTAGE_SUM)?,
        float(rc::CURRENT_MIN)?,
        float(rc::CURRENT_MAX)?,
        float(rc::CURRENT_SUM)?,
        float(rc::POWER_MIN)?,
        float(rc::POWER_MAX)?,
        float(rc::POWER_SUM)?,
        float(rc::ENERGY_FIRST)?,
        float(rc::ENERGY_LAST)?,
        float(rc::ENERGY_COUNTER_WH)?,
        float(rc::ENERGY_WH)?,
        float(rc::RELAY_ON_S)?,
        float(rc::VOLTAGE_LAST)?,
        float(rc::CURRENT_LAST)?,
        float(rc::POWER_LAST)?,
    ];
    let relay_last: &BooleanArray = column(b, rc::RELAY_ON_LAST)?;
    let location: &StringArray = column(b, rc::LOCATION)?;
    let device_type: &StringArray = column(b, rc::DEVICE_TYPE)?;
    let partial: Option<&BooleanArray> = match b.schema().index_of(rc::PARTIAL) {
        Ok(_) => Some(column(b, rc::PARTIAL)?),
        Err(_) => None,
    };
    let opt = |a: &Float64Array, i: usize| a.is_valid(i).then(|| a.value(i));
    let tag = |a: &StringArray, i: usize| a.is_valid(i).then(|| Arc::from(a.value(i)));
    let mut rows = Vec::with_capacity(b.num_rows());
    let mut last_device: Option<Arc<str>> = None;
    for i in 0..b.num_rows() {
        let name = device.value(i);
        let dev = match &last_device {
            Some(d) if &**d == name => Arc::clone(d),
            _ => {
                let d: Arc<str> = Arc::from(name);
                last_device = Some(Arc::clone(&d));
                d
            }
        };
        rows.push(Row {
            device: dev,
            p: Partial {
                bucket: bucket.value(i),
                count: count.value(i).max(0) as u64,
                voltage_min: v[0].value(i),
                voltage_max: v[1].value(i),
                voltage_sum: v[2].value(i),
                current_min: v[3].value(i),
                current_max: v[4].value(i),
                current_sum: v[5].value(i),
                power_min: v[6].value(i),
                power_max: v[7].value(i),
                power_sum: v[8].value(i),
                energy_first: opt(v[9], i),
                energy_last: opt(v[10], i),
                energy_counter_wh: v[11].value(i),
                energy_wh: v[12].value(i),
                relay_on_s: v[13].value(i),
                first_ts: first_ts.value(i),
                last_ts: last_ts.value(i),
                voltage_last: v[14].value(i),
                current_last: v[15].value(i),
                power_last: v[16].value(i),
                relay_last: relay_last.is_valid(i).then(|| relay_last.value(i)),
            },
            location: tag(location, i),
            device_type: tag(device_type, i),
            partial: partial.is_some_and(|a| a.is_valid(i) && a.value(i)),
        });
    }
    Ok(rows)
}

#[cfg(test)]
mod tests;
