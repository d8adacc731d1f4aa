//! Persistence: the buffer becomes Parquet files on the object store.
//!
//! One thread, `wattdb-persist`, runs a cycle every `persist_interval`, when the
//! buffer holds `persist_bytes`, or when asked ([`crate::Engine::persist`]):
//!
//! 1. **Freeze**: under the buffer lock, every row moves out of the buffer into a
//!    [`Frozen`] set that queries keep reading. Writes go on into the emptied buffer.
//! 2. **Write**: the frozen rows (duplicates already resolved) are sorted by
//!    `(device_id, ts)` a piece of plugs at a time (`persist_piece_rows`); each piece
//!    is split by hour partition and uploaded as Parquet files with new ids, and the
//!    rollup rows it changes are computed and uploaded ([`crate::rollups`]).
//! 3. **Commit**: a new manifest version listing the raw and rollup files, and the last
//!    WAL sequence number they cover, is written. In the same step queries switch from
//!    the frozen rows to the files.
//! 4. **Release**: WAL segments that hold nothing the buffer still needs are deleted.
//!
//! A crash before 3 leaves uploaded files that no manifest lists: they are never read
//! and are deleted on the next start, and the rows come back from the WAL. A failure
//! in 2 or 3 keeps the frozen rows (queryable, and in the WAL) and retries with
//! backoff; until it succeeds no new freeze happens, so the buffer grows and writes
//! get backpressure at `max_buffer_bytes` — never loss.
//!
//! Between cycles the thread applies retention ([`crate::retention`], once a minute),
//! runs one compaction job and deletes replaced files.
//!
//! Departure from "persist closed time partitions": a cycle persists *everything*
//! buffered, so the buffer's memory stays bounded however many plugs report (an open
//! hour of a million plugs would not fit). The small files this makes are merged by
//! compaction.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use crossbeam_channel::{Receiver, RecvTimeoutError};
use tokio::sync::oneshot;
use tracing::{error, info, warn};
use wattdb_storage::files::{self, FileMeta, Tier};
use wattdb_storage::manifest::{self, Manifest};
use wattdb_storage::{Store, wal};

use crate::buffer::{Frozen, SpareLists};
use crate::compact::{CompactionConfig, CompactionReport, Compactor};
use crate::error::{Error, Result};
use crate::memory;
use crate::retention::{self, Clock, RetentionConfig, RetentionReport};
use crate::rollups::{RollupSettings, Rollups, Uploads};
use crate::schema::readings_schema;
use crate::{PersistFaults, Shared};

/// At most this many rows go into one raw file.
pub const MAX_FILE_ROWS: usize = 8 << 20;

/// Rows a persist cycle sorts and writes at a time, by default
/// ([`crate::EngineConfig::persist_piece_rows`]): about 70 MiB of sorted rows next to
/// the frozen ones, where a sorted copy of a whole 352 MiB cycle doubled them.
pub const PIECE_ROWS: usize = 1 << 20;

/// What one persist cycle did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PersistReport {
    pub rows: u64,
    pub files: usize,
    pub bytes: u64,
    /// Manifest version after the cycle.
    pub manifest_version: u64,
}

impl PersistReport {
    fn add(&mut self, other: PersistReport) {
        self.rows += other.rows;
        self.files += other.files;
        self.bytes += other.bytes;
        self.manifest_version = other.manifest_version;
    }
}

/// What queries read besides the live buffer: committed files and rows being
/// persisted. Swapped as a whole, so a query sees rows either frozen or in files.
#[derive(Debug, Clone)]
pub struct View {
    pub manifest: Arc<Manifest>,
    pub frozen: Option<Arc<Frozen>>,
}

pub(crate) enum Msg {
    Now(oneshot::Sender<Result<PersistReport>>),
    /// Apply retention now.
    Expire(oneshot::Sender<Result<RetentionReport>>),
    /// Compact until no partition needs it; the reports of the jobs run.
    Compact(oneshot::Sender<Result<Vec<CompactionReport>>>),
    Shutdown,
}

pub(crate) struct PersisterArgs {
    pub rx: Receiver<Msg>,
    pub shared: Arc<Shared>,
    pub store: Store,
    pub wal: WalSegments,
    pub interval: Duration,
    pub persist_bytes: usize,
    pub piece_rows: usize,
    pub faults: Option<PersistFaults>,
    pub compaction: CompactionConfig,
    pub rollups: RollupSettings,
    pub retention: RetentionConfig,
    pub clock: Clock,
    pub runtime: tokio::runtime::Runtime,
}

/// The WAL segments a persist cycle releases: up to `spares` are kept for the writer
/// to reuse, the rest deleted.
pub(crate) struct WalSegments {
    pub dir: std::path::PathBuf,
    pub spares: usize,
}

/// Free memory goes back to the system after a cycle once the buffer grows by less
/// than `persist_bytes / QUIET_DIVISOR` a second: 5.5 MiB/s by default, about 70,000
/// readings/s (see [`memory::TrimAfterCycle`]).
const QUIET_DIVISOR: usize = 64;

/// Retention runs at most this often by itself.
const RETENTION_EVERY: Duration = Duration::from_secs(60);

/// The persist thread's loop.
pub(crate) fn run(args: PersisterArgs) {
    let PersisterArgs {
        rx,
        shared,
        store,
        wal,
        interval,
        persist_bytes,
        piece_rows,
        faults,
        compaction,
        rollups,
        retention,
        clock,
        runtime,
    } = args;
    let mut compactor = Compactor::new(compaction);
    let mut trim = memory::TrimAfterCycle::new(persist_bytes / QUIET_DIVISOR);
    let rollups = Rollups::new(rollups);
    let mut expire_waiters: Vec<oneshot::Sender<Result<RetentionReport>>> = Vec::new();
    let mut next_expiry = Instant::now();
    let mut compact_waiters: Vec<oneshot::Sender<Result<Vec<CompactionReport>>>> = Vec::new();
    let mut next_due = Instant::now() + interval;
    let mut backoff = Duration::from_millis(500);
    let mut retry_at: Option<Instant> = None;
    let mut waiters: Vec<oneshot::Sender<Result<PersistReport>>> = Vec::new();
    let mut shutdown = false;
    while !shutdown {
        match rx.recv_timeout(Duration::from_millis(250)) {
            Ok(Msg::Now(reply)) => waiters.push(reply),
            Ok(Msg::Compact(reply)) => compact_waiters.push(reply),
            Ok(Msg::Expire(reply)) => expire_waiters.push(reply),
            Ok(Msg::Shutdown) | Err(RecvTimeoutError::Disconnected) => shutdown = true,
            Err(RecvTimeoutError::Timeout) => {}
        }
        let now = Instant::now();
        let buffered = shared.buffer.read().bytes();
        let pressure = buffered >= persist_bytes;
        // Shutting down does not persist: everything buffered is durable in the WAL.
        let due = match retry_at {
            Some(t) => now >= t,
            None => !waiters.is_empty() || now >= next_due || pressure,
        };
        if shutdown {
            continue;
        }
        if !due {
            // Between cycles: free memory back to the system once writes slow down,
            // retention, one compaction job, and deletion of replaced files.
            trim.tick(now, buffered);
            if retry_at.is_none() && (!expire_waiters.is_empty() || now >= next_expiry) {
                next_expiry = now + RETENTION_EVERY;
                let (graveyard, delete_after) = compactor.graveyard();
                let result = runtime.block_on(retention::expire(
                    &shared,
                    &store,
                    &retention,
                    clock.now(),
                    graveyard,
                    delete_after,
                    faults.as_ref(),
                ));
                if let Err(e) = &result {
                    warn!(error = %e, source = ?std::error::Error::source(e), "applying retention failed; will retry");
                }
                for w in expire_waiters.drain(..) {
                    let _ = w.send(match &result {
                        Ok(r) => Ok(r.clone()),
                        Err(e) => Err(Error::Persist(e.with_cause())),
                    });
                }
            }
            if retry_at.is_none() {
                compactor.step(
                    &runtime,
                    &shared,
                    &store,
                    faults.as_ref(),
                    &mut compact_waiters,
                );
            }
            continue;
        }
        let started = Instant::now();
        let now_ns = clock.now();
        let ctx = Cycle {
            shared: &shared,
            store: &store,
            faults: faults.as_ref(),
            now: now_ns,
            raw_cutoff: retention.cutoff(Tier::Raw, now_ns),
            piece_rows,
        };
        let result = runtime.block_on(persist_all(&ctx, &rollups, &wal));
        shared.stats.persist_duration.record(started.elapsed());
        match result {
            Ok(report) => {
                if report.rows > 0 {
                    trim.cycle_done(Instant::now(), shared.buffer.read().bytes());
                    info!(
                        rows = report.rows,
                        files = report.files,
                        bytes = report.bytes,
                        manifest = report.manifest_version,
                        ms = started.elapsed().as_millis() as u64,
                        "persisted buffered readings"
                    );
                }
                for w in waiters.drain(..) {
                    let _ = w.send(Ok(report.clone()));
                }
                retry_at = None;
                backoff = Duration::from_millis(500);
                next_due = Instant::now() + interval;
            }
            Err(e) => {
                shared.stats.persist_errors.fetch_add(1, Ordering::Relaxed);
                error!(error = %e, source = ?std::error::Error::source(&e), retry_in_ms = backoff.as_millis() as u64, "persisting failed; the readings stay in the WAL and the buffer");
                let detail = e.with_cause();
                for w in waiters.drain(..) {
                    let _ = w.send(Err(Error::Persist(detail.clone())));
                }
                retry_at = Some(Instant::now() + backoff);
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
    for w in waiters.drain(..) {
        let _ = w.send(Err(Error::ShuttingDown));
    }
    for w in compact_waiters.drain(..) {
        let _ = w.send(Err(Error::ShuttingDown));
    }
    for w in expire_waiters.drain(..) {
        let _ = w.send(Err(Error::ShuttingDown));
    }
}

/// What a persist cycle works with.
struct Cycle<'a> {
    shared: &'a Shared,
    store: &'a Store,
    faults: Option<&'a PersistFaults>,
    /// The clock's time at the start of the cycle.
    now: i64,
    /// Raw files older than this expire (retention).
    raw_cutoff: Option<i64>,
    /// Rows sorted and written at a time.
    piece_rows: usize,
}

/// Persists a pending frozen set (from an earlier failed cycle), then everything in the
/// buffer now.
async fn persist_all(
    ctx: &Cycle<'_>,
    rollups: &Rollups,
    wal: &WalSegments,
) -> Result<PersistReport> {
    let shared = ctx.shared;
    let mut report = PersistReport {
        manifest_version: shared.view.read().manifest.version,
        ..Default::default()
    };
    // One freeze only: the rows that arrive while this one is written wait for the next
    // cycle. Freezing again at once made a second, small set of files per cycle (and
    // its own rollup pass, a fixed cost), for nothing under steady load.
    let pending = shared.view.read().frozen.clone();
    if let Some(frozen) = pending {
        report.add(persist_frozen(ctx, rollups, frozen).await?);
        release_wal(shared, wal);
    }
    if let Some(frozen) = freeze(shared) {
        report.add(persist_frozen(ctx, rollups, frozen).await?);
        release_wal(shared, wal);
    }
    Ok(report)
}

/// Plugs whose list room is read per hold of the buffer's read lock.
const ROOMS_PER_LOCK: usize = 16 * 1024;

/// Moves the buffer's rows into the view's frozen set.
fn freeze(shared: &Shared) -> Option<Arc<Frozen>> {
    // The plugs' next lists are made here, before the lock is taken: made by the
    // first writes after the freeze, they held up those writes' acknowledgements (40 ms
    // of page faults in the first freeze after start, at 500,000 readings/s).
    let t = Instant::now();
    let plugs = shared.buffer.read().plugs();
    let mut rooms = Vec::with_capacity(plugs);
    for start in (0..plugs).step_by(ROOMS_PER_LOCK) {
        shared
            .buffer
            .read()
            .rooms(start..start + ROOMS_PER_LOCK, &mut rooms);
    }
    let spares = SpareLists::make(&rooms);
    drop(rooms);
    tracing::debug!(
        plugs,
        ms = t.elapsed().as_millis() as u64,
        "next lists made"
    );
    // Lock order everywhere: buffer, then view.
    let mut buffer = shared.buffer.write();
    let frozen = Arc::new(buffer.freeze_with(spares)?);
    shared.frozen_bytes.store(frozen.bytes, Ordering::Relaxed);
    shared.view.write().frozen = Some(Arc::clone(&frozen));
    Some(frozen)
}

// The tails' read lock is held across the rollup uploads; see below.
#[allow(clippy::await_holding_lock)]
async fn persist_frozen(
    ctx: &Cycle<'_>,
    rollups: &Rollups,
    frozen: Arc<Frozen>,
) -> Result<PersistReport> {
    let Cycle {
        shared,
        store,
        faults,
        piece_rows,
        ..
    } = *ctx;
    let base = Arc::clone(&shared.view.read().manifest);
    let mut next_id = base.next_file_id;
    let t = Instant::now();
    let plugs = frozen.plugs();
    let mut uploads = Uploads {
        store,
        next_id: &mut next_id,
        faults,
        keep: false,
    };
    let mut new_files = Vec::new();
    let mut bytes = 0;
    let (mut sort_ms, mut raw_ms, mut rollup_ms) = (0, 0, 0);
    // Only this thread changes the tails, and only below, after this read ends:
    // holding it across the uploads blocks no one (queries only read them).
    let mut update = {
        let tails = shared.tails.read();
        let mut pass = rollups.pass(&tails, &base, Some(frozen.max_ts), ctx.now, ctx.raw_cutoff);
        // A piece at a time: the frozen rows and one sorted piece are in memory, never
        // a sorted copy of them all (a piece's raw files go to the store before the next
        // piece is sorted; compaction merges them).
        for plug_range in plugs.pieces(piece_rows) {
            let t = Instant::now();
            let piece = plugs.gather(plug_range).map_err(files::EncodeError::from)?;
            sort_ms += t.elapsed().as_millis() as u64;
            let t = Instant::now();
            let (files, b) = write_raw_files(store, &piece, &mut *uploads.next_id, faults).await?;
            new_files.extend(files);
            bytes += b;
            raw_ms += t.elapsed().as_millis() as u64;
            let t = Instant::now();
            pass.add(&mut uploads, &piece).await?;
            rollup_ms += t.elapsed().as_millis() as u64;
        }
        let t = Instant::now();
        if pass.recomputes() {
            let rows = plugs
                .gather_where(|device| pass.recomputes_plug(device))
                .map_err(files::EncodeError::from)?;
            pass.recompute(&mut uploads, &rows).await?;
        }
        let update = pass.finish(&mut uploads).await?;
        rollup_ms += t.elapsed().as_millis() as u64;
        update
    };
    tracing::debug!(
        sort_ms,
        raw_ms,
        rollup_ms,
        total_ms = t.elapsed().as_millis() as u64,
        raw_files = new_files.len(),
        rollup_files = update.files.len(),
        recomputed_plugs = update.recomputed,
        new_plugs = update.new_plugs,
        "frozen rows written"
    );
    drop(plugs);
    let mut m = base.next();
    m.next_file_id = next_id;
    m.persisted_seq = Some(frozen.max_seq.max(base.persisted_seq.unwrap_or(0)));
    m.files.extend(new_files.iter().cloned());
    m.files.extend(update.files.iter().cloned());
    if let Some(f) = faults {
        f.check_commit()?;
    }
    m.commit(store).await?;
    let version = m.version;
    {
        // The tails change with the manifest they belong to (lock order: view, tails).
        let mut view = shared.view.write();
        let mut tails = shared.tails.write();
        Rollups::apply(&mut tails, &mut update);
        shared
            .stats
            .rollup_tails
            .store(tails.len() as u64, Ordering::Relaxed);
        drop(tails);
        view.manifest = Arc::new(m);
        view.frozen = None;
    }
    shared.frozen_bytes.store(0, Ordering::Relaxed);
    let stats = &shared.stats;
    stats
        .persisted_rows
        .fetch_add(frozen.rows, Ordering::Relaxed);
    stats
        .persisted_files
        .fetch_add(new_files.len() as u64, Ordering::Relaxed);
    stats.persisted_bytes.fetch_add(bytes, Ordering::Relaxed);
    for (counter, rows) in stats.rollup_rows.iter().zip(update.rows) {
        counter.fetch_add(rows, Ordering::Relaxed);
    }
    stats
        .rollup_bytes
        .fetch_add(update.bytes, Ordering::Relaxed);
    stats
        .rollup_recomputed_plugs
        .fetch_add(update.recomputed as u64, Ordering::Relaxed);
    stats
        .rollup_new_plugs
        .fetch_add(update.new_plugs as u64, Ordering::Relaxed);
    stats
        .rollup_too_late
        .fetch_add(update.too_late, Ordering::Relaxed);
    stats
        .last_persisted_ts
        .fetch_max(frozen.max_ts, Ordering::Relaxed);
    Ok(PersistReport {
        rows: frozen.rows,
        files: new_files.len(),
        bytes,
        manifest_version: version,
    })
}

/// Partitions and uploads sorted rows as raw files; returns their metadata.
async fn write_raw_files(
    store: &Store,
    sorted: &RecordBatch,
    next_id: &mut u64,
    faults: Option<&PersistFaults>,
) -> Result<(Vec<FileMeta>, u64)> {
    let schema = readings_schema();
    let props = files::writer_properties(&schema, "ts");
    let mut encode_ms = 0;
    let mut upload_ms = 0;
    let mut out = Vec::new();
    let mut bytes = 0;
    for (start, part) in files::split_by_partition(Tier::Raw, sorted, "ts")? {
        let mut offset = 0;
        while offset < part.num_rows() {
            let len = (part.num_rows() - offset).min(MAX_FILE_ROWS);
            let slice = part.slice(offset, len);
            offset += len;
            let t = Instant::now();
            let body = files::encode(&slice, props.clone())?;
            encode_ms += t.elapsed().as_millis() as u64;
            let id = *next_id;
            *next_id += 1;
            let meta = FileMeta::describe(Tier::Raw, start, id, &slice, body.len() as u64, "ts")?;
            if let Some(f) = faults {
                f.check_upload()?;
            }
            bytes += meta.size;
            let t = Instant::now();
            store.put(&meta.object_path(), body).await?;
            upload_ms += t.elapsed().as_millis() as u64;
            out.push(meta);
        }
    }
    tracing::debug!(encode_ms, upload_ms, files = out.len(), "raw files written");
    Ok((out, bytes))
}

/// Releases WAL segments older than anything the buffer (or a pending frozen set)
/// still needs: kept as spares for the writer to reuse, or deleted.
fn release_wal(shared: &Shared, wal: &WalSegments) {
    let keep_from = {
        let buffer = shared.buffer.read();
        let view = shared.view.read();
        let frozen = view.frozen.as_ref().map(|f| f.min_segment);
        match (buffer.min_segment(), frozen) {
            (Some(b), Some(f)) => Some(b.min(f)),
            (b, f) => b.or(f),
        }
    };
    let Some(keep_from) = keep_from else {
        return;
    };
    match wal::release_segments_before(&wal.dir, keep_from, wal.spares) {
        Ok(wal::Released {
            recycled: 0,
            removed: 0,
        }) => {}
        Ok(wal::Released { recycled, removed }) => info!(
            kept_for_reuse = recycled,
            deleted = removed,
            keep_from,
            "released persisted WAL segments"
        ),
        Err(e) => warn!(error = %e, "could not release persisted WAL segments; will retry"),
    }
}

/// Loads the manifest and deletes orphaned files (startup).
pub(crate) async fn recover(store: &Store) -> Result<Manifest> {
    let m = Manifest::load(store).await?;
    let orphans = manifest::remove_orphans(store, &m).await?;
    if orphans > 0 {
        warn!(
            orphans,
            "deleted files a crash left between upload and manifest commit"
        );
    }
    Ok(m)
}
