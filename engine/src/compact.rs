//! Compaction: the small files of a partition become one file, duplicates resolved.
//!
//! Each persist cycle writes a file per hour it touched, so an hour of steady ingest
//! ends up in dozens of small files. Compaction runs on the persist thread between
//! cycles (it is the one writer of the manifest, so the two never race), one bounded
//! job at a time:
//!
//! 1. **Pick**: in each partition, the files under [`CompactionConfig::small_file_bytes`]
//!    that are consecutive in rank order (no other file of the partition ranks between
//!    them) form runs, cut at [`CompactionConfig::max_rows`]. The longest run of at least
//!    [`CompactionConfig::min_files`] files is the job. Consecutive ranks are what keep
//!    last-write-wins exact: the merged file takes the highest rank of its inputs
//!    ([`FileMeta::rank`]), so every file that ranked above an input still ranks above
//!    the merged rows, and every file below still ranks below.
//! 2. **Merge**: read the inputs, sort by `(device_id, ts)`, keep the highest-ranked copy
//!    of every key (rollups: merge the rows of each plug and bucket, as
//!    [`crate::merge`] says; a partial row that has no whole row under it among the
//!    inputs stays partial), upload the result as a new file. The inputs are sorted by
//!    plug, so this goes a run of plugs at a time: the job decodes a few thousand rows
//!    of each input at once ([`READ_ROWS`]) and encodes the merged rows as they come,
//!    holding the inputs' compressed bytes and the output's, not every row decoded.
//!    `max_rows` bounds the files' size.
//! 3. **Commit** a manifest version that lists the new file instead of the inputs;
//!    queries switch in the same step.
//! 4. **Delete** the inputs after [`CompactionConfig::delete_after`], so queries planned
//!    against the previous manifest can still read them.
//!
//! A crash before 3 leaves an unlisted file (deleted as an orphan on the next start);
//! a crash after 3 leaves replaced inputs, which are also no longer listed: the same
//! clean-up deletes them.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use arrow::array::{Array, AsArray, RecordBatch, StringArray};
use tokio::sync::oneshot;
use tracing::{info, warn};
use wattdb_storage::files::{self, FileMeta, Tier};
use wattdb_storage::{ObjectPath as ObjPath, Store};

use crate::error::{Error, Result};
use crate::merge::merge_rollup_rows;
use crate::persist::View;
use crate::schema::tier_file_schema;
use crate::{PersistFaults, Shared};

/// When and how much to compact.
#[derive(Debug, Clone)]
pub struct CompactionConfig {
    /// A partition is compacted once it has a run of this many small files.
    pub min_files: usize,
    /// Files at least this large are left as they are.
    pub small_file_bytes: u64,
    /// Most rows one job holds in memory (its inputs). A rollup row, with its 25
    /// columns, counts as two.
    pub max_rows: u64,
    /// How long replaced files stay readable for queries already planned.
    pub delete_after: Duration,
}

impl Default for CompactionConfig {
    fn default() -> Self {
        Self {
            min_files: 8,
            small_file_bytes: 64 << 20,
            max_rows: 4 << 20,
            delete_after: Duration::from_secs(120),
        }
    }
}

/// What one compaction job did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CompactionReport {
    pub input_files: usize,
    pub input_rows: u64,
    pub input_bytes: u64,
    /// Rows after duplicates were resolved.
    pub rows: u64,
    pub bytes: u64,
    pub partition: String,
    pub manifest_version: u64,
}

/// The job's inputs, in rank order.
pub(crate) fn pick(files: &[FileMeta], config: &CompactionConfig) -> Option<Vec<FileMeta>> {
    fn consider<'a>(
        best: &mut Option<Vec<&'a FileMeta>>,
        run: &[&'a FileMeta],
        config: &CompactionConfig,
    ) {
        if run.len() >= config.min_files.max(2) && best.as_ref().is_none_or(|b| run.len() > b.len())
        {
            *best = Some(run.to_vec());
        }
    }
    let mut partitions: BTreeMap<(&str, files::Tier), Vec<&FileMeta>> = BTreeMap::new();
    for f in files {
        partitions
            .entry((f.partition(), f.tier))
            .or_default()
            .push(f);
    }
    let mut best: Option<Vec<&FileMeta>> = None;
    for (_, mut part) in partitions {
        part.sort_by_key(|f| f.rank());
        let mut run: Vec<&FileMeta> = Vec::new();
        let mut rows = 0;
        for f in part {
            let small = f.size < config.small_file_bytes;
            let weight = match f.tier {
                files::Tier::Raw => f.rows,
                _ => f.rows.saturating_mul(2),
            };
            if !small || rows + weight > config.max_rows {
                consider(&mut best, &run, config);
                run.clear();
                rows = 0;
            }
            if small && weight <= config.max_rows {
                rows += weight;
                run.push(f);
            }
        }
        consider(&mut best, &run, config);
    }
    best.map(|b| b.into_iter().cloned().collect())
}

/// Replaced files waiting for their deletion time.
#[derive(Debug, Default)]
pub(crate) struct Graveyard {
    files: Vec<(ObjPath, Instant)>,
}

impl Graveyard {
    /// Schedules the deletion of `paths` at `at`.
    pub fn bury(&mut self, paths: impl IntoIterator<Item = ObjPath>, at: Instant) {
        self.files.extend(paths.into_iter().map(|p| (p, at)));
    }

    /// Deletes the files whose time has come; keeps those that fail for later.
    pub async fn sweep(&mut self, store: &Store, now: Instant) {
        let mut keep = Vec::new();
        for (path, at) in self.files.drain(..) {
            if at > now {
                keep.push((path, at));
                continue;
            }
            if let Err(e) = store.delete(&path).await {
                let cause = std::error::Error::source(&e).map(ToString::to_string);
                warn!(error = %e, cause, %path, "could not delete a compacted file; will retry");
                keep.push((path, now + Duration::from_secs(30)));
            }
        }
        self.files = keep;
    }
}

/// Compaction's state on the persist thread: the settings, the replaced files waiting
/// for deletion, and the manifest version last found with nothing to compact (picking
/// again from the same manifest would find nothing again).
pub(crate) struct Compactor {
    config: CompactionConfig,
    graveyard: Graveyard,
    idle_version: Option<u64>,
}

impl Compactor {
    /// The files waiting for deletion, and how long they wait.
    pub(crate) fn graveyard(&mut self) -> (&mut Graveyard, Duration) {
        (&mut self.graveyard, self.config.delete_after)
    }

    pub(crate) fn new(config: CompactionConfig) -> Self {
        Self {
            config,
            graveyard: Graveyard::default(),
            idle_version: None,
        }
    }

    /// Runs at most one compaction job (or, when asked, jobs until none is left) and
    /// deletes replaced files whose time has come.
    pub(crate) fn step(
        &mut self,
        runtime: &tokio::runtime::Runtime,
        shared: &Shared,
        store: &Store,
        faults: Option<&PersistFaults>,
        waiters: &mut Vec<oneshot::Sender<Result<Vec<CompactionReport>>>>,
    ) {
        runtime.block_on(self.graveyard.sweep(store, Instant::now()));
        let asked = !waiters.is_empty();
        let version = shared.view.read().manifest.version;
        if !asked && self.idle_version == Some(version) {
            return;
        }
        // Asked for, compaction merges every run of two or more small files.
        let forced = CompactionConfig {
            min_files: 2,
            ..self.config.clone()
        };
        let config = if asked { &forced } else { &self.config };
        let mut reports = Vec::new();
        loop {
            let result = runtime.block_on(compact_once(
                shared,
                store,
                config,
                &mut self.graveyard,
                faults,
            ));
            match result {
                Ok(Some(report)) => {
                    reports.push(report);
                    if !asked {
                        return;
                    }
                }
                Ok(None) => {
                    if !asked {
                        self.idle_version = Some(version);
                    }
                    break;
                }
                Err(e) => {
                    shared
                        .stats
                        .compaction_errors
                        .fetch_add(1, Ordering::Relaxed);
                    warn!(error = %e, source = ?std::error::Error::source(&e), "compaction failed; the files stay as they are");
                    let detail = e.with_cause();
                    for w in waiters.drain(..) {
                        let _ = w.send(Err(Error::Persist(detail.clone())));
                    }
                    return;
                }
            }
        }
        for w in waiters.drain(..) {
            let _ = w.send(Ok(reports.clone()));
        }
    }
}

/// Runs one job if a partition needs one.
pub(crate) async fn compact_once(
    shared: &Shared,
    store: &Store,
    config: &CompactionConfig,
    graveyard: &mut Graveyard,
    faults: Option<&PersistFaults>,
) -> Result<Option<CompactionReport>> {
    let base = Arc::clone(&shared.view.read().manifest);
    let Some(inputs) = pick(&base.files, config) else {
        return Ok(None);
    };
    let started = Instant::now();
    let tier = inputs[0].tier;
    let (schema, time) = (tier_file_schema(tier), tier.time_column());
    let mut sources = Vec::with_capacity(inputs.len());
    for f in &inputs {
        let body = store.get(&f.object_path()).await?;
        sources.push(Source::new(f.rank(), files::batches(body, READ_ROWS)?));
    }
    // Plug by plug: every input is sorted by plug, so the rows of the plugs before the
    // last one each input has read are complete, and merge apart from the rest.
    let mut out: Option<files::Encoder> = None;
    let mut rows = 0u64;
    let (mut min_ts, mut max_ts) = (i64::MAX, i64::MIN);
    let (mut min_device, mut max_device) = (String::new(), String::new());
    loop {
        for s in &mut sources {
            s.fill()?;
        }
        sources.retain(|s| s.rest.is_some());
        if sources.is_empty() {
            break;
        }
        let bound: Option<String> = sources
            .iter()
            .filter(|s| !s.done)
            .filter_map(Source::last_device)
            .min()
            .map(str::to_owned);
        let ranked: Vec<(u64, RecordBatch)> = sources
            .iter_mut()
            .filter_map(|s| s.take_before(bound.as_deref()))
            .collect();
        if ranked.is_empty() {
            // Each input's rows read so far are of the plug `bound` or later: read on.
            for s in &mut sources {
                if !s.done && s.last_device() == bound.as_deref() {
                    s.grow()?;
                }
            }
            continue;
        }
        // Raw readings: the newest copy of each key wins. Rollups: the rows of each plug
        // and bucket merge (partial rows add to the rows under them).
        let merged = match tier {
            Tier::Raw => files::merge_newest(&schema, &ranked, time)?,
            _ => merge_rollup_rows(&ranked).map_err(files::EncodeError::from)?,
        };
        drop(ranked);
        if merged.num_rows() == 0 {
            continue;
        }
        let (lo, hi, first, last) = files::ranges(&merged, time)?;
        (min_ts, max_ts) = (min_ts.min(lo), max_ts.max(hi));
        if rows == 0 {
            min_device = first;
        }
        max_device = last;
        rows += merged.num_rows() as u64;
        let encoder = match &mut out {
            Some(e) => e,
            None => out.insert(files::Encoder::new(
                merged.schema(),
                files::writer_properties(&schema, time),
            )?),
        };
        encoder.write(&merged)?;
    }
    let body = match out {
        Some(e) => e,
        None => files::Encoder::new(schema.clone(), files::writer_properties(&schema, time))?,
    }
    .finish()?;
    let first = &inputs[0];
    let id = base.next_file_id;
    let partition_start = first.tier.partition_start(first.min_ts);
    let meta = FileMeta {
        id,
        tier: first.tier,
        path: first.tier.file_path(partition_start, id),
        size: body.len() as u64,
        rows,
        min_ts,
        max_ts,
        min_device,
        max_device,
        merged_rank: inputs.iter().map(FileMeta::rank).max(),
    };
    if let Some(f) = faults {
        f.check_upload()?;
    }
    store.put(&meta.object_path(), body).await?;
    let mut m = base.next();
    m.next_file_id = id + 1;
    let replaced: Vec<u64> = inputs.iter().map(|f| f.id).collect();
    m.files.retain(|f| !replaced.contains(&f.id));
    m.files.push(meta.clone());
    if let Some(f) = faults {
        f.check_commit()?;
    }
    m.commit(store).await?;
    let version = m.version;
    {
        let mut view = shared.view.write();
        *view = View {
            manifest: Arc::new(m),
            frozen: view.frozen.take(),
        };
    }
    graveyard.bury(
        inputs.iter().map(FileMeta::object_path),
        Instant::now() + config.delete_after,
    );
    let report = CompactionReport {
        input_files: inputs.len(),
        input_rows: inputs.iter().map(|f| f.rows).sum(),
        input_bytes: inputs.iter().map(|f| f.size).sum(),
        rows: meta.rows,
        bytes: meta.size,
        partition: meta.partition().to_owned(),
        manifest_version: version,
    };
    let stats = &shared.stats;
    stats.compactions.fetch_add(1, Ordering::Relaxed);
    stats
        .compacted_files
        .fetch_add(report.input_files as u64, Ordering::Relaxed);
    info!(
        partition = %report.partition,
        files = report.input_files,
        rows_in = report.input_rows,
        rows_out = report.rows,
        bytes_in = report.input_bytes,
        bytes_out = report.bytes,
        ms = started.elapsed().as_millis() as u64,
        "compacted a partition"
    );
    Ok(Some(report))
}

/// Rows a compaction job reads from an input at a time.
const READ_ROWS: usize = 16 * 1024;

/// One input of a compaction job: its rows read and not yet merged.
struct Source {
    rank: u64,
    reader: files::BatchReader,
    rest: Option<RecordBatch>,
    /// Every row of the file has been read.
    done: bool,
}

impl Source {
    fn new(rank: u64, reader: files::BatchReader) -> Self {
        Self {
            rank,
            reader,
            rest: None,
            done: false,
        }
    }

    /// Reads a batch if no rows are left unmerged (`rest` stays `None` at the end).
    fn fill(&mut self) -> Result<()> {
        while !self.done && self.rest.as_ref().is_none_or(|b| b.num_rows() == 0) {
            self.rest = self.next()?;
        }
        if self.rest.as_ref().is_some_and(|b| b.num_rows() == 0) {
            self.rest = None;
        }
        Ok(())
    }

    /// Adds the next batch to the rows left (a plug's rows run on into it).
    fn grow(&mut self) -> Result<()> {
        if let Some(next) = self.next()? {
            self.rest = Some(match self.rest.take() {
                Some(rest) => arrow::compute::concat_batches(&rest.schema(), [&rest, &next])
                    .map_err(files::EncodeError::from)?,
                None => next,
            });
        }
        Ok(())
    }

    fn next(&mut self) -> Result<Option<RecordBatch>> {
        match self.reader.next() {
            Some(b) => Ok(Some(b.map_err(files::EncodeError::from)?)),
            None => {
                self.done = true;
                Ok(None)
            }
        }
    }

    fn devices(&self) -> Option<&StringArray> {
        self.rest
            .as_ref()?
            .column_by_name("device_id")?
            .as_string_opt::<i32>()
    }

    /// The plug of the last row read.
    fn last_device(&self) -> Option<&str> {
        let d = self.devices()?;
        (!d.is_empty()).then(|| d.value(d.len() - 1))
    }

    /// Takes the rows left of plugs before `bound` (all when `None`).
    fn take_before(&mut self, bound: Option<&str>) -> Option<(u64, RecordBatch)> {
        let n = match bound {
            None => self.rest.as_ref()?.num_rows(),
            Some(bound) => {
                let d = self.devices()?;
                let (mut lo, mut hi) = (0, d.len());
                while lo < hi {
                    let mid = (lo + hi) / 2;
                    if d.value(mid) < bound {
                        lo = mid + 1;
                    } else {
                        hi = mid;
                    }
                }
                lo
            }
        };
        if n == 0 {
            return None;
        }
        let rest = self.rest.take()?;
        let taken = rest.slice(0, n);
        self.rest = Some(rest.slice(n, rest.num_rows() - n));
        Some((self.rank, taken))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wattdb_storage::files::Tier;

    fn file(id: u64, hour: i64, size: u64, rows: u64) -> FileMeta {
        let start = hour * 3_600_000_000_000;
        FileMeta {
            id,
            tier: Tier::Raw,
            path: Tier::Raw.file_path(start, id),
            size,
            rows,
            min_ts: start,
            max_ts: start + 1,
            min_device: "a".into(),
            max_device: "b".into(),
            merged_rank: None,
        }
    }

    fn ids(files: Option<Vec<FileMeta>>) -> Vec<u64> {
        files.unwrap_or_default().iter().map(|f| f.id).collect()
    }

    #[test]
    fn picks_the_longest_run_of_small_files_consecutive_in_rank() {
        let config = CompactionConfig {
            min_files: 3,
            small_file_bytes: 1000,
            max_rows: 100,
            ..CompactionConfig::default()
        };
        let files = vec![
            file(1, 0, 10, 10),
            file(2, 0, 10, 10),
            file(3, 1, 10, 10),   // another hour
            file(4, 0, 5000, 10), // large: breaks the run of hour 0
            file(5, 0, 10, 10),
            file(6, 0, 10, 10),
            file(7, 0, 10, 10),
            file(8, 1, 10, 10),
        ];
        assert_eq!(ids(pick(&files, &config)), [5, 6, 7]);
        // Too few anywhere.
        assert_eq!(ids(pick(&files[..3], &config)), Vec::<u64>::new());
        // The row cap cuts runs.
        let capped = CompactionConfig {
            max_rows: 25,
            min_files: 2,
            ..config.clone()
        };
        assert_eq!(ids(pick(&files, &capped)), [1, 2]);
        // A merged file sits at its merged rank.
        let mut merged = file(9, 0, 10, 10);
        merged.merged_rank = Some(4);
        let mut with_merged = files.clone();
        with_merged.retain(|f| f.id != 4);
        with_merged.push(merged);
        assert_eq!(ids(pick(&with_merged, &config)), [1, 2, 9, 5, 6, 7]);
    }
}
