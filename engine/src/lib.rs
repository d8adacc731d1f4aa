//! WattDB engine: the write pipeline and the in-memory state that queries read.
//!
//! The engine sits between the protocol crates above it (`ingest`, `query`, `api`) and
//! the on-disk formats below it (`storage`). Its entry point is [`Engine`]: a cheap,
//! clonable handle to write readings and to read what has been acknowledged.
//!
//! ```text
//!  writers (HTTP, MQTT)                                    queries
//!        │ Engine::write(batch)                                ▲
//!        ▼                                                     │ Engine::snapshot
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
//! - [`schema`]: the `readings` schema and batch conversion.
//! - `writer`: the WAL (group commit) and apply threads.

pub mod buffer;
mod error;
pub mod histogram;
pub mod rollup;
pub mod schema;
mod writer;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use crossbeam_channel::{Sender, TrySendError};
use parking_lot::{Mutex, RwLock};
use tokio::sync::oneshot;
use tracing::info;
pub use wattdb_storage::wal::FaultInjector;
use wattdb_storage::wal::{self, WalConfig};

pub use buffer::{Buffer, LatestReading};
pub use error::{Error, Result};
pub use schema::readings_schema;
pub use wattdb_storage::{ReadingBatch, ReadingRef, validate_device_id};

/// Settings of an [`Engine`]. `Default` gives the embedded defaults.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Root of WattDB's local files; the WAL lives in `{data_dir}/wal`.
    pub data_dir: PathBuf,
    /// Size at which WAL segments roll.
    pub wal_segment_size: u64,
    /// How long the WAL writer gathers writes into one group before its fsync.
    pub group_commit_window: Duration,
    /// A group is committed at once when it reaches this many readings.
    pub max_group_rows: usize,
    /// Batches that may wait in the write queue; more are refused (backpressure).
    pub queue_capacity: usize,
    /// Memory the in-memory buffer may hold before writes are refused.
    pub max_buffer_bytes: usize,
    /// Failures to inject into WAL writes (tests of what follows a disk error).
    pub wal_faults: Option<FaultInjector>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("wattdb-data"),
            wal_segment_size: 64 << 20,
            group_commit_window: Duration::from_millis(2),
            max_group_rows: 512 * 1024,
            queue_capacity: 4096,
            max_buffer_bytes: 4 << 30,
            wal_faults: None,
        }
    }
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
}

pub(crate) struct Shared {
    pub buffer: RwLock<Buffer>,
    pub poisoned: AtomicBool,
    pub stats: EngineStats,
}

struct Inner {
    tx: Sender<writer::Msg>,
    shared: Arc<Shared>,
    config: EngineConfig,
    /// The WAL thread, then the apply thread (joined in that order).
    threads: Mutex<Vec<JoinHandle<()>>>,
    /// Held for the engine's lifetime: one process per data directory.
    _lock: std::fs::File,
}

impl Drop for Inner {
    fn drop(&mut self) {
        let _ = self.tx.send(writer::Msg::Shutdown);
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

impl Engine {
    /// Opens the data directory, replays the WAL into the buffer and starts the WAL
    /// writer thread.
    pub fn open(config: EngineConfig) -> Result<Engine> {
        std::fs::create_dir_all(&config.data_dir).map_err(|source| Error::DataDir {
            path: config.data_dir.clone(),
            source,
        })?;
        let lock = lock_data_dir(&config.data_dir)?;
        let start = Instant::now();
        let mut buffer = Buffer::new();
        let mut pending: Vec<ReadingBatch> = Vec::new();
        let mut pending_rows = 0;
        let wal_config = WalConfig {
            dir: config.data_dir.join("wal"),
            segment_size: config.wal_segment_size,
            faults: config.wal_faults.clone(),
        };
        let (wal, recovered) = wal::open(&wal_config, |r| {
            pending_rows += r.batch.len();
            pending.push(r.batch);
            if pending_rows >= REPLAY_CHUNK_ROWS {
                buffer.insert(&pending.iter().collect::<Vec<_>>());
                pending.clear();
                pending_rows = 0;
            }
        })?;
        buffer.insert(&pending.iter().collect::<Vec<_>>());
        drop(pending);
        let elapsed = start.elapsed();
        info!(
            rows = recovered.rows,
            records = recovered.records,
            segments = recovered.segments,
            ms = elapsed.as_millis() as u64,
            rows_per_s = (recovered.rows as f64 / elapsed.as_secs_f64().max(1e-9)) as u64,
            "replayed WAL into the buffer"
        );
        let shared = Arc::new(Shared {
            buffer: RwLock::new(buffer),
            poisoned: AtomicBool::new(false),
            stats: EngineStats::default(),
        });
        shared
            .stats
            .replayed_rows
            .store(recovered.rows, Ordering::Relaxed);
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
        Ok(Engine {
            inner: Arc::new(Inner {
                tx,
                shared,
                config,
                threads: Mutex::new(vec![wal_thread, apply]),
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
    /// pipeline several writes (the MQTT subscriber).
    pub fn submit(&self, batch: ReadingBatch) -> Result<oneshot::Receiver<Result<WriteReceipt>>> {
        let shared = &self.inner.shared;
        if shared.poisoned.load(Ordering::Relaxed) {
            return Err(Error::Poisoned);
        }
        let (ack, rx) = oneshot::channel();
        if batch.is_empty() {
            let _ = ack.send(Ok(WriteReceipt { seq: 0, rows: 0 }));
            return Ok(rx);
        }
        let bytes = shared.buffer.read().bytes();
        let limit = self.inner.config.max_buffer_bytes;
        if bytes >= limit {
            return Err(Error::BufferFull { bytes, limit });
        }
        let msg = writer::Msg::Write {
            batch,
            ack,
            queued: Instant::now(),
        };
        match self.inner.tx.try_send(msg) {
            Ok(()) => Ok(rx),
            Err(TrySendError::Full(_)) => Err(Error::QueueFull {
                capacity: self.inner.config.queue_capacity,
            }),
            Err(TrySendError::Disconnected(_)) => Err(Error::ShuttingDown),
        }
    }

    /// Acknowledged readings whose time may fall in `[from, to]` (nanoseconds, inclusive;
    /// `None` = unbounded). Record batches are shared, not copied.
    pub fn snapshot(&self, from: Option<i64>, to: Option<i64>) -> Vec<RecordBatch> {
        self.inner.shared.buffer.read().snapshot(from, to)
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
        for t in self.inner.threads.lock().drain(..) {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests;
