//! WattDB engine: the write pipeline and the in-memory state that queries read.
//!
//! The engine sits between the protocol crates above it (`ingest`, `query`, `api`) and
//! the on-disk formats below it (`storage`). Its entry point is [`Engine`]: a cheap,
//! clonable handle to write readings and to read what has been acknowledged.
//!
//! ```text
//!  writers (HTTP, MQTT)                                    queries
//!        │ Engine::write(batch)                                ▲
//!        ▼                                                     │ Engine::read_view
//!  bounded lock-free queue ──full──► Error::QueueFull (retry)  │
//!        │                                                     │
//!        ▼  WAL writer thread (one)                            │
//!  collect a group for `group_commit_window`                   │
//!  append records ─► one write + fdatasync                     │
//!        │  durable group                                      │
//!        ▼  apply thread (one; overlaps the next group's fsync)│
//!  insert into Buffer ─────────────────────────────────────────┘
//!        └──► ack every writer of the group
//! ```
//!
//! A write is acknowledged only after the fsync that covers it, and it is in the
//! buffer — so queryable — before its acknowledgement is sent. A failed write or fsync
//! poisons the writer: every later write is refused with [`Error::Poisoned`]. On
//! [`Engine::open`] the WAL is replayed into the buffer before the first write.
//!
//! Modules:
//! - [`buffer`]: Arrow batches of acknowledged readings, duplicate resolution (last
//!   write wins), latest value per plug.
//! - [`persist`]: the buffer to Parquet files and the manifest; WAL release.
//! - [`rollup`]: the 1m/1h/1d rollup partials and which of them a batch changes.
//! - [`rollups`]: the rollup tables, written in every persist cycle.
//! - [`retention`]: files past their resolution's retention leave the store.
//! - `compact`: small files of a partition merged into one.
//! - [`schema`]: the `readings` schema and batch conversion.
//! - `writer`: the WAL (group commit) and apply threads.

pub mod buffer;
mod compact;
mod error;
pub mod histogram;
mod memory;
mod merge;
pub mod persist;
pub mod retention;
pub mod rollup;
pub mod rollups;
pub mod schema;
mod writer;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use crossbeam_channel::{Sender, TrySendError};
use parking_lot::{Mutex, RwLock};
use tokio::sync::oneshot;
use tracing::info;
pub use wattdb_storage::wal::FaultInjector;
use wattdb_storage::wal::{self, WalConfig};

pub use buffer::{Buffer, Frozen, LatestReading, WalPosition};
pub use compact::{CompactionConfig, CompactionReport};
pub use error::{Error, Result};
pub use merge::{Rule as MergeRule, merge_rollup_rows, rule as merge_rule};
pub use persist::{PersistReport, View};
pub use retention::{Clock, RetentionConfig, RetentionReport};
pub use rollups::RollupSettings;
pub use schema::{
    readings_schema, rollup_file_schema, rollup_schema, tier_file_schema, tier_schema,
};
pub use wattdb_storage::{
    FileMeta, Manifest, ReadingBatch, ReadingRef, S3Config, Store, StoreConfig, Tier,
    validate_device_id,
};

/// Settings of an [`Engine`]. `Default` gives the embedded defaults.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Root of WattDB's local files; the WAL lives in `{data_dir}/wal`.
    pub data_dir: PathBuf,
    /// Size at which WAL segments roll.
    pub wal_segment_size: u64,
    /// Persisted WAL segments kept for reuse rather than deleted (see
    /// [`wattdb_storage::wal`]).
    pub wal_spare_segments: usize,
    /// How long the WAL writer waits for more writes to join a group before its fsync.
    /// Zero (the default) still groups: every write queued while the previous fsync ran
    /// goes into the next one.
    pub group_commit_window: Duration,
    /// A group is committed at once when it reaches this many readings.
    pub max_group_rows: usize,
    /// Batches that may wait in the write queue; more are refused (backpressure).
    pub queue_capacity: usize,
    /// Memory the in-memory buffer may hold before writes are refused.
    pub max_buffer_bytes: usize,
    /// Failures to inject into WAL writes (tests of what follows a disk error).
    pub wal_faults: Option<FaultInjector>,
    /// Where Parquet files and the manifest go; `None` = local disk, in `data_dir`.
    pub store: Option<Store>,
    /// The buffer is persisted at least this often.
    pub persist_interval: Duration,
    /// ... and as soon as it holds this much memory.
    pub persist_bytes: usize,
    /// A persist cycle sorts and writes its rows this many at a time (whole plugs; see
    /// [`persist`]), so that it never holds a second copy of all of them.
    pub persist_piece_rows: usize,
    /// Failures to inject into persistence and compaction (tests).
    pub persist_faults: Option<PersistFaults>,
    /// When small Parquet files are merged.
    pub compaction: CompactionConfig,
    /// The rollup tables' gap cap and late-data horizon.
    pub rollups: RollupSettings,
    /// How long each resolution is kept.
    pub retention: RetentionConfig,
    /// "Now", for retention and the late-data horizon.
    pub clock: Clock,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("wattdb-data"),
            wal_segment_size: 64 << 20,
            wal_spare_segments: 8,
            group_commit_window: Duration::ZERO,
            max_group_rows: 512 * 1024,
            queue_capacity: 4096,
            max_buffer_bytes: 4 << 30,
            wal_faults: None,
            store: None,
            persist_interval: Duration::from_secs(60),
            persist_bytes: 352 << 20,
            persist_piece_rows: persist::PIECE_ROWS,
            persist_faults: None,
            compaction: CompactionConfig::default(),
            rollups: RollupSettings::default(),
            retention: RetentionConfig::default(),
            clock: Clock::System,
        }
    }
}

/// Makes the next uploads or manifest commits of persistence fail, as an unreachable
/// object store would (tests).
#[derive(Debug, Clone, Default)]
pub struct PersistFaults {
    uploads: Arc<AtomicU32>,
    commits: Arc<AtomicU32>,
}

impl PersistFaults {
    pub fn fail_next_uploads(&self, n: u32) {
        self.uploads.store(n, Ordering::SeqCst);
    }

    pub fn fail_next_commits(&self, n: u32) {
        self.commits.store(n, Ordering::SeqCst);
    }

    fn take(counter: &AtomicU32) -> bool {
        counter
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }

    pub(crate) fn check_upload(&self) -> Result<()> {
        if Self::take(&self.uploads) {
            return Err(Error::Persist("injected upload failure".into()));
        }
        Ok(())
    }

    pub(crate) fn check_commit(&self) -> Result<()> {
        if Self::take(&self.commits) {
            return Err(Error::Persist("injected manifest commit failure".into()));
        }
        Ok(())
    }
}

/// A batch the engine would not queue, and why ([`Engine::offer`]).
#[derive(Debug)]
pub struct Refused {
    pub error: Error,
    pub batch: ReadingBatch,
}

/// What a durable write returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteReceipt {
    /// WAL sequence number of the record holding the batch.
    pub seq: u64,
    pub rows: usize,
}

/// Counters the engine keeps (exported as metrics by the API).
#[derive(Debug, Default)]
pub struct EngineStats {
    pub replayed_rows: AtomicU64,
    /// Duration of each WAL group commit (write + fdatasync); its count is the number
    /// of fsyncs.
    pub fsync_latency: histogram::Histogram,
    /// From a batch entering the queue to it being queryable (just before its ack); its
    /// count is the number of batches committed.
    pub write_to_queryable: histogram::Histogram,
    pub persisted_rows: AtomicU64,
    pub persisted_files: AtomicU64,
    pub persisted_bytes: AtomicU64,
    pub persist_errors: AtomicU64,
    /// Duration of each persist cycle.
    pub persist_duration: histogram::Histogram,
    /// Newest reading time persisted so far (ns; `i64::MIN` before the first).
    pub last_persisted_ts: AtomicI64,
    /// Compaction jobs done, the files they replaced, and the jobs that failed.
    pub compactions: AtomicU64,
    pub compacted_files: AtomicU64,
    pub compaction_errors: AtomicU64,
    /// Rollup rows written, per resolution (1m, 1h, 1d), and their bytes.
    pub rollup_rows: [AtomicU64; 3],
    pub rollup_bytes: AtomicU64,
    /// Plugs whose rollups a persist cycle recomputed from raw readings (late data, or
    /// the first cycle after a restart).
    pub rollup_recomputed_plugs: AtomicU64,
    /// Plugs whose rollups a persist cycle started with nothing persisted before (no
    /// file read).
    pub rollup_new_plugs: AtomicU64,
    /// Readings persisted raw but too late to change rollups.
    pub rollup_too_late: AtomicU64,
    /// Plugs whose rollup tail (about 200 bytes each) is held in memory: every plug
    /// persisted since the start.
    pub rollup_tails: AtomicU64,
    /// Files removed by retention.
    pub expired_files: AtomicU64,
}

pub(crate) struct Shared {
    pub buffer: RwLock<Buffer>,
    /// Files and rows being persisted. Lock order: `buffer` before `view`.
    pub view: RwLock<View>,
    /// Memory held by the frozen rows of `view`.
    pub frozen_bytes: AtomicUsize,
    pub poisoned: AtomicBool,
    pub stats: EngineStats,
    /// Acknowledged batches, for live subscribers ([`Engine::subscribe`]).
    pub live: tokio::sync::broadcast::Sender<Arc<ReadingBatch>>,
    /// What the rollups of each persisted plug continue from, as of `view.manifest`.
    /// Lock order: `buffer`, `view`, `tails`.
    pub tails: RwLock<rollups::Tails>,
}

/// Acknowledged batches a live subscriber may fall behind by before it loses the
/// oldest.
pub const LIVE_BACKLOG_BATCHES: usize = 128;

/// What a query reads: a consistent cut of buffer, rows being persisted and files.
#[derive(Debug, Clone)]
pub struct ReadView {
    /// Buffer rows whose time may fall in the range asked for.
    pub buffer: Vec<RecordBatch>,
    /// Time range of every buffer row (`None` when empty).
    pub buffer_range: Option<(i64, i64)>,
    pub frozen: Option<Arc<Frozen>>,
    pub manifest: Arc<Manifest>,
}

struct Inner {
    tx: Sender<writer::Msg>,
    persist_tx: Sender<persist::Msg>,
    store: Store,
    shared: Arc<Shared>,
    config: EngineConfig,
    /// The WAL thread, the apply thread, the persist thread (joined in that order).
    threads: Mutex<Vec<JoinHandle<()>>>,
    /// Held for the engine's lifetime: one process per data directory.
    _lock: std::fs::File,
}

impl Drop for Inner {
    fn drop(&mut self) {
        let _ = self.tx.send(writer::Msg::Shutdown);
        let _ = self.persist_tx.send(persist::Msg::Shutdown);
        for t in self.threads.lock().drain(..) {
            let _ = t.join();
        }
    }
}

/// Handle to a running engine. Clones share the engine; it stops when the last clone
/// is dropped or on [`Engine::shutdown`].
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("data_dir", &self.inner.config.data_dir)
            .finish_non_exhaustive()
    }
}

/// Takes an exclusive lock on `{data_dir}/LOCK`, released when the process ends.
fn lock_data_dir(dir: &std::path::Path) -> Result<std::fs::File> {
    let path = dir.join("LOCK");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| Error::DataDir {
            path: path.clone(),
            source,
        })?;
    rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive)
        .map_err(|_| Error::Locked { path })?;
    Ok(file)
}

/// Durable groups that may wait for the apply thread before the WAL thread waits.
const APPLY_QUEUE_GROUPS: usize = 4;

/// Replayed records are gathered into record batches of about this many rows.
const REPLAY_CHUNK_ROWS: usize = 64 * 1024;
/// Replayed chunks that may wait for the buffer insert.
const REPLAY_QUEUE_CHUNKS: usize = 4;

impl Engine {
    /// Opens the data directory, replays the WAL into the buffer and starts the WAL
    /// writer thread.
    pub fn open(config: EngineConfig) -> Result<Engine> {
        std::fs::create_dir_all(&config.data_dir).map_err(|source| Error::DataDir {
            path: config.data_dir.clone(),
            source,
        })?;
        config.rollups.validate().map_err(Error::Config)?;
        let lock = lock_data_dir(&config.data_dir)?;
        let store = match &config.store {
            Some(s) => s.clone(),
            None => Store::open(&StoreConfig::Local(config.data_dir.clone()))?,
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(Error::Thread)?;
        // On a thread of its own: the caller may itself be inside an async runtime.
        let (manifest, latest) = std::thread::scope(|s| {
            s.spawn(|| {
                runtime.block_on(async {
                    let m = persist::recover(&store).await?;
                    let latest = rollups::latest_from_files(&store, &m.files).await?;
                    Ok::<_, Error>((m, latest))
                })
            })
            .join()
            .unwrap_or_else(|_| Err(Error::Persist("manifest recovery panicked".into())))
        })?;
        let persisted_seq = manifest.persisted_seq;
        info!(
            store = store.description(),
            manifest = manifest.version,
            files = manifest.files.len(),
            rows = manifest.rows(Tier::Raw),
            "loaded the manifest"
        );
        let start = Instant::now();
        let mut buffer = Buffer::new();
        buffer.seed_latest(latest);
        let wal_config = WalConfig {
            dir: config.data_dir.join("wal"),
            segment_size: config.wal_segment_size,
            faults: config.wal_faults.clone(),
            min_next_seq: persisted_seq.map_or(0, |s| s + 1),
        };
        // Two threads: this one reads, checks and decodes the WAL, the other inserts
        // the records into the buffer, in order, a chunk at a time (at most
        // REPLAY_QUEUE_CHUNKS chunks wait between them).
        let (chunk_tx, chunk_rx) =
            crossbeam_channel::bounded::<(Vec<ReadingBatch>, u64, WalPosition)>(
                REPLAY_QUEUE_CHUNKS,
            );
        let (wal, recovered, skipped) = std::thread::scope(|s| {
            let inserter = s.spawn(|| {
                for (chunk, min_segment, pos) in chunk_rx {
                    buffer.insert(&chunk.iter().collect::<Vec<_>>(), min_segment, pos);
                }
            });
            let mut pending: Vec<ReadingBatch> = Vec::new();
            let mut pending_rows = 0;
            let mut pending_segment: Option<u64> = None;
            let mut skipped = 0u64;
            let mut last = None;
            let opened = wal::open(&wal_config, |r| {
                let pos = WalPosition {
                    segment: r.segment,
                    seq: r.seq,
                };
                last = Some(pos);
                if persisted_seq.is_some_and(|p| r.seq <= p) {
                    // Already in the files of the manifest.
                    skipped += r.batch.len() as u64;
                    return;
                }
                pending_segment.get_or_insert(r.segment);
                pending_rows += r.batch.len();
                pending.push(r.batch);
                if pending_rows >= REPLAY_CHUNK_ROWS {
                    let min_segment = pending_segment.take().unwrap_or(r.segment);
                    // The inserter stops only if it panicked; join reports that.
                    let _ = chunk_tx.send((std::mem::take(&mut pending), min_segment, pos));
                    pending_rows = 0;
                }
            });
            if opened.is_ok()
                && let Some(pos) = last
            {
                let min_segment = pending_segment.unwrap_or(pos.segment);
                let _ = chunk_tx.send((pending, min_segment, pos));
            }
            drop(chunk_tx);
            if inserter.join().is_err() {
                return Err(Error::Persist("WAL replay into the buffer panicked".into()));
            }
            let (wal, recovered) = opened?;
            Ok((wal, recovered, skipped))
        })?;
        let elapsed = start.elapsed();
        info!(
            rows = recovered.rows - skipped,
            already_persisted = skipped,
            records = recovered.records,
            segments = recovered.segments,
            ms = elapsed.as_millis() as u64,
            rows_per_s = (recovered.rows as f64 / elapsed.as_secs_f64().max(1e-9)) as u64,
            "replayed WAL into the buffer"
        );
        let shared = Arc::new(Shared {
            buffer: RwLock::new(buffer),
            view: RwLock::new(View {
                manifest: Arc::new(manifest),
                frozen: None,
            }),
            frozen_bytes: AtomicUsize::new(0),
            poisoned: AtomicBool::new(false),
            live: tokio::sync::broadcast::channel(LIVE_BACKLOG_BATCHES).0,
            tails: RwLock::new(rollups::Tails::new()),
            stats: EngineStats {
                last_persisted_ts: AtomicI64::new(i64::MIN),
                ..Default::default()
            },
        });
        shared
            .stats
            .replayed_rows
            .store(recovered.rows - skipped, Ordering::Relaxed);
        let (tx, rx) = crossbeam_channel::bounded(config.queue_capacity);
        let (apply_tx, apply_rx) = crossbeam_channel::bounded(APPLY_QUEUE_GROUPS);
        let apply_shared = Arc::clone(&shared);
        let apply = std::thread::Builder::new()
            .name("wattdb-apply".into())
            .spawn(move || writer::run_apply(apply_rx, apply_shared))
            .map_err(Error::Thread)?;
        let args = writer::WriterArgs {
            rx,
            wal,
            shared: Arc::clone(&shared),
            window: config.group_commit_window,
            max_group_rows: config.max_group_rows,
            apply: apply_tx,
        };
        let wal_thread = std::thread::Builder::new()
            .name("wattdb-wal".into())
            .spawn(move || writer::run_wal(args))
            .map_err(Error::Thread)?;
        let (persist_tx, persist_rx) = crossbeam_channel::unbounded();
        let persister = persist::PersisterArgs {
            rx: persist_rx,
            shared: Arc::clone(&shared),
            store: store.clone(),
            wal: persist::WalSegments {
                dir: wal_config.dir.clone(),
                spares: config.wal_spare_segments,
            },
            interval: config.persist_interval,
            persist_bytes: config.persist_bytes,
            piece_rows: config.persist_piece_rows.max(1),
            faults: config.persist_faults.clone(),
            compaction: config.compaction.clone(),
            rollups: config.rollups.clone(),
            retention: config.retention.clone(),
            clock: config.clock.clone(),
            runtime,
        };
        let persist_thread = std::thread::Builder::new()
            .name("wattdb-persist".into())
            .spawn(move || persist::run(persister))
            .map_err(Error::Thread)?;
        Ok(Engine {
            inner: Arc::new(Inner {
                tx,
                persist_tx,
                store,
                shared,
                config,
                threads: Mutex::new(vec![wal_thread, apply, persist_thread]),
                _lock: lock,
            }),
        })
    }

    /// Queues `batch` for the WAL and waits until it is durable and queryable.
    ///
    /// Refuses at once, without waiting, when the queue or the buffer is full
    /// ([`Error::is_retryable`]).
    pub async fn write(&self, batch: ReadingBatch) -> Result<WriteReceipt> {
        let rx = self.submit(batch)?;
        rx.await.unwrap_or(Err(Error::ShuttingDown))
    }

    /// Queues `batch` and returns the receiver of its acknowledgement, for callers that
    /// pipeline several writes.
    pub fn submit(&self, batch: ReadingBatch) -> Result<oneshot::Receiver<Result<WriteReceipt>>> {
        self.offer(batch).map_err(|refused| refused.error)
    }

    /// Like [`Engine::submit`], but a refused batch comes back with the error, so a
    /// caller that cannot drop it (the MQTT subscriber, which has not acknowledged its
    /// messages yet) can offer it again once the engine has room.
    pub fn offer(
        &self,
        batch: ReadingBatch,
    ) -> Result<oneshot::Receiver<Result<WriteReceipt>>, Box<Refused>> {
        let shared = &self.inner.shared;
        if shared.poisoned.load(Ordering::Relaxed) {
            return Err(Box::new(Refused {
                error: Error::Poisoned,
                batch,
            }));
        }
        let (ack, rx) = oneshot::channel();
        if batch.is_empty() {
            let _ = ack.send(Ok(WriteReceipt { seq: 0, rows: 0 }));
            return Ok(rx);
        }
        let bytes = shared.buffer.read().bytes() + shared.frozen_bytes.load(Ordering::Relaxed);
        let limit = self.inner.config.max_buffer_bytes;
        if bytes >= limit {
            return Err(Box::new(Refused {
                error: Error::BufferFull { bytes, limit },
                batch,
            }));
        }
        let msg = writer::Msg::Write {
            batch,
            ack,
            queued: Instant::now(),
        };
        match self.inner.tx.try_send(msg) {
            Ok(()) => Ok(rx),
            Err(TrySendError::Full(msg)) => Err(Box::new(Refused {
                error: Error::QueueFull {
                    capacity: self.inner.config.queue_capacity,
                },
                batch: msg.into_batch(),
            })),
            Err(TrySendError::Disconnected(msg)) => Err(Box::new(Refused {
                error: Error::ShuttingDown,
                batch: msg.into_batch(),
            })),
        }
    }

    /// What a query over `[from, to]` reads: buffer rows, rows being persisted and the
    /// committed files, all as of one instant.
    pub fn read_view(&self, from: Option<i64>, to: Option<i64>) -> ReadView {
        let shared = &self.inner.shared;
        let buffer = shared.buffer.read();
        let view = shared.view.read();
        ReadView {
            buffer: buffer.snapshot(from, to),
            buffer_range: buffer.time_range(),
            frozen: view.frozen.clone(),
            manifest: Arc::clone(&view.manifest),
        }
    }

    /// Every batch acknowledged from now on, as it is acknowledged. A receiver that
    /// falls more than [`LIVE_BACKLOG_BATCHES`] behind gets
    /// `RecvError::Lagged(skipped)` and goes on from the oldest batch kept; writers
    /// never wait for receivers.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Arc<ReadingBatch>> {
        self.inner.shared.live.subscribe()
    }

    /// The oldest reading time not yet persisted (in the buffer or being persisted):
    /// the rollup tables are complete for every bucket that ends before it.
    pub fn unpersisted_from(&self) -> Option<i64> {
        let shared = &self.inner.shared;
        oldest_unpersisted(&shared.buffer.read(), &shared.view.read())
    }

    /// The rows of the rollup table `tier` that the readings not yet persisted add or
    /// change, for the plugs in `devices` (an inclusive id range; all when `None`) and
    /// buckets up to `to` (all when `None`): the rows the next persist cycle will write,
    /// computed as it will compute them, but now. Ranked above every file, they merge
    /// with the files' rows of the same plug and bucket ([`merge_rollup_rows`]), so that a rollup table is current to the last acknowledged
    /// reading. Returned with the manifest whose files they complete: the rows hold no
    /// reading that a later manifest holds in files, and the two must go together.
    ///
    /// The cost is that of the persist cycle's rollups for the plugs asked about: for a
    /// plug already persisted since the start with its new readings in order, its
    /// tail is extended in memory, as is a new one (no file can hold it); otherwise (the
    /// first cycle after a restart, late or rewritten readings) its rows are recomputed
    /// from the hour of its oldest new reading, which reads that hour's raw files.
    pub async fn live_rollups(
        &self,
        tier: Tier,
        devices: Option<(&str, &str)>,
        to: Option<i64>,
    ) -> Result<(Arc<Manifest>, Option<RecordBatch>)> {
        let res = match tier {
            Tier::Raw => return Ok((self.manifest(), None)),
            Tier::Minute => rollup::Resolution::Minute,
            Tier::Hour => rollup::Resolution::Hour,
            Tier::Day => rollup::Resolution::Day,
        };
        let (manifest, pending) = self.unpersisted(res, devices, to)?;
        let Some((sorted, tails)) = pending else {
            return Ok((manifest, None));
        };
        let config = &self.inner.config;
        let now = config.clock.now();
        let mut rows = rollups::preview(
            &config.rollups,
            &tails,
            &self.inner.store,
            &manifest,
            &sorted,
            now,
            config.retention.cutoff(Tier::Raw, now),
        )
        .await?;
        let rows = std::mem::take(&mut rows[rollups::index(res)]);
        if rows.is_empty() {
            return Ok((manifest, None));
        }
        Ok((manifest, Some(rollups::rows_to_batch(&rows)?)))
    }

    /// For [`Engine::live_rollups`]: the manifest, and the rows not yet persisted of
    /// the plugs in `devices` (sorted, one per key) with the plugs' tails, all as of one
    /// moment; no rows when none can change a bucket up to `to`.
    #[allow(clippy::type_complexity)]
    fn unpersisted(
        &self,
        res: rollup::Resolution,
        devices: Option<(&str, &str)>,
        to: Option<i64>,
    ) -> Result<(Arc<Manifest>, Option<(RecordBatch, rollups::Tails)>)> {
        let shared = &self.inner.shared;
        // One consistent state: the rows not yet persisted, the manifest and the tails
        // that go with it (lock order: buffer, view, tails).
        let buffer = shared.buffer.read();
        let view = shared.view.read();
        let Some(oldest) = oldest_unpersisted(&buffer, &view) else {
            return Ok((Arc::clone(&view.manifest), None));
        };
        // The earliest bucket a cycle can rewrite: a recomputation starts at the hour.
        let first = res.bucket_start(rollup::Resolution::Hour.bucket_start(oldest));
        if to.is_some_and(|t| t < first) {
            return Ok((Arc::clone(&view.manifest), None));
        }
        let mut inputs: Vec<(u64, RecordBatch)> = Vec::new();
        let schema = readings_schema();
        let frozen = view.frozen.as_ref().map(|f| f.batches.clone());
        let buffered = buffer.snapshot(None, None);
        let manifest = Arc::clone(&view.manifest);
        let tails = shared.tails.read();
        drop(view);
        drop(buffer);
        for (rank, batches) in [(0, frozen.unwrap_or_default()), (1, buffered)] {
            let batches: Vec<RecordBatch> = match devices {
                Some((lo, hi)) => batches
                    .iter()
                    .map(|b| in_device_range(b, lo, hi))
                    .collect::<Result<_>>()?,
                None => batches,
            };
            if batches.iter().any(|b| b.num_rows() > 0) {
                let rows = arrow::compute::concat_batches(&schema, &batches)
                    .map_err(wattdb_storage::files::EncodeError::from)?;
                inputs.push((rank, rows));
            }
        }
        if inputs.is_empty() {
            return Ok((manifest, None));
        }
        let sorted = wattdb_storage::files::merge_newest(&schema, &inputs, schema::col::TS)?;
        drop(inputs);
        // The tails of these plugs only: the others' are not needed.
        let ids = device_ids(&sorted)?;
        let mut theirs = rollups::Tails::new();
        for i in 0..arrow::array::Array::len(ids) {
            let id = ids.value(i);
            if (i == 0 || ids.value(i - 1) != id)
                && let Some((k, v)) = tails.get_key_value(id)
            {
                theirs.insert(Arc::clone(k), v.clone());
            }
        }
        drop(tails);
        Ok((manifest, Some((sorted, theirs))))
    }

    /// The object store holding the Parquet files.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// Persists everything buffered now; returns once the manifest listing it is
    /// committed (or the attempt failed).
    pub async fn persist(&self) -> Result<PersistReport> {
        self.ask_persister(persist::Msg::Now).await
    }

    /// Merges small Parquet files now: every run of two or more (compaction also runs by
    /// itself between persist cycles, one job at a time, once a partition has
    /// [`CompactionConfig::min_files`]); the jobs' reports.
    pub async fn compact(&self) -> Result<Vec<CompactionReport>> {
        self.ask_persister(persist::Msg::Compact).await
    }

    /// Removes the files past their retention now (retention also runs by itself once
    /// a minute).
    pub async fn expire(&self) -> Result<RetentionReport> {
        self.ask_persister(persist::Msg::Expire).await
    }

    /// Sends the persist thread a request and waits for its answer.
    async fn ask_persister<T>(
        &self,
        msg: impl FnOnce(oneshot::Sender<Result<T>>) -> persist::Msg,
    ) -> Result<T> {
        let (reply, rx) = oneshot::channel();
        self.inner
            .persist_tx
            .send(msg(reply))
            .map_err(|_| Error::ShuttingDown)?;
        rx.await.unwrap_or(Err(Error::ShuttingDown))
    }

    /// Memory held by rows being persisted.
    pub fn frozen_bytes(&self) -> usize {
        self.inner.shared.frozen_bytes.load(Ordering::Relaxed)
    }

    /// The manifest version queries currently read.
    pub fn manifest(&self) -> Arc<Manifest> {
        Arc::clone(&self.inner.shared.view.read().manifest)
    }

    /// The latest reading of every plug whose id starts with `prefix` (all when empty).
    pub fn latest(&self, prefix: &str) -> Vec<LatestReading> {
        let buf = self.inner.shared.buffer.read();
        buf.latest()
            .iter()
            .filter(|l| l.device_id.starts_with(prefix))
            .cloned()
            .collect()
    }

    /// Rows currently in the buffer, and the memory they hold.
    pub fn buffer_usage(&self) -> (u64, usize) {
        let buf = self.inner.shared.buffer.read();
        (buf.rows(), buf.bytes())
    }

    pub fn stats(&self) -> &EngineStats {
        &self.inner.shared.stats
    }

    /// Batches waiting in the write queue.
    pub fn queue_depth(&self) -> usize {
        self.inner.tx.len()
    }

    pub fn is_poisoned(&self) -> bool {
        self.inner.shared.poisoned.load(Ordering::Relaxed)
    }

    pub fn config(&self) -> &EngineConfig {
        &self.inner.config
    }

    /// Stops accepting writes, commits and acknowledges what is queued, and waits for
    /// the WAL writer to finish. Later writes get [`Error::ShuttingDown`].
    pub fn shutdown(&self) {
        let _ = self.inner.tx.send(writer::Msg::Shutdown);
        let _ = self.inner.persist_tx.send(persist::Msg::Shutdown);
        for t in self.inner.threads.lock().drain(..) {
            let _ = t.join();
        }
    }
}

/// The time of the oldest reading in the buffer or being persisted.
fn oldest_unpersisted(buffer: &Buffer, view: &View) -> Option<i64> {
    let b = buffer.time_range().map(|(lo, _)| lo);
    let f = view.frozen.as_ref().map(|f| f.min_ts);
    match (b, f) {
        (Some(b), Some(f)) => Some(b.min(f)),
        (b, f) => b.or(f),
    }
}

/// The rows of `batch` (readings) whose plug id is in `lo..=hi`.
fn in_device_range(batch: &RecordBatch, lo: &str, hi: &str) -> Result<RecordBatch> {
    let keep: arrow::array::BooleanArray = device_ids(batch)?
        .iter()
        .map(|id| id.map(|id| id >= lo && id <= hi))
        .collect();
    Ok(arrow::compute::filter_record_batch(batch, &keep)
        .map_err(wattdb_storage::files::EncodeError::from)?)
}

/// The `device_id` column of readings.
fn device_ids(batch: &RecordBatch) -> Result<&arrow::array::StringArray> {
    Ok(batch
        .column_by_name(schema::col::DEVICE_ID)
        .and_then(|c| c.as_any().downcast_ref::<arrow::array::StringArray>())
        .ok_or(wattdb_storage::files::EncodeError::Column(
            schema::col::DEVICE_ID,
        ))?)
}

#[cfg(test)]
mod tests;
