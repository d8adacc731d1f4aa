//! The two threads behind the write queue.
//!
//! The WAL thread drains the queue, appends a group of batches and commits it with one
//! fsync; it then hands the durable group to the apply thread, which inserts it into
//! the buffer and completes the acknowledgements. The two overlap: while group N is
//! being applied, group N+1 is being encoded and fsynced. Groups are applied in commit
//! order, and a write is acknowledged only once it is both durable and queryable.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use tokio::sync::oneshot;
use tracing::error;
use wattdb_storage::ReadingBatch;
use wattdb_storage::wal::WalWriter;

use crate::buffer::WalPosition;
use crate::error::{Error, Result};
use crate::{Shared, WriteReceipt};

// Messages travel by value through a preallocated queue; boxing the large variant
// would add an allocation per write for nothing.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Msg {
    Write {
        batch: ReadingBatch,
        ack: oneshot::Sender<Result<WriteReceipt>>,
        queued: Instant,
    },
    Shutdown,
}

impl Msg {
    /// The batch of a write that was not queued (only writes are ever refused).
    pub(crate) fn into_batch(self) -> ReadingBatch {
        match self {
            Msg::Write { batch, .. } => batch,
            Msg::Shutdown => ReadingBatch::new(),
        }
    }
}

pub(crate) struct WriterArgs {
    pub rx: Receiver<Msg>,
    pub wal: WalWriter,
    pub shared: Arc<Shared>,
    pub window: Duration,
    pub max_group_rows: usize,
    pub apply: Sender<Vec<Pending>>,
}

pub(crate) struct Pending {
    batch: ReadingBatch,
    queued: Instant,
    ack: oneshot::Sender<Result<WriteReceipt>>,
    seq: u64,
    segment: u64,
}

/// The WAL thread: group, append, commit, hand over.
pub(crate) fn run_wal(args: WriterArgs) {
    let WriterArgs {
        rx,
        mut wal,
        shared,
        window,
        max_group_rows,
        apply,
    } = args;
    let mut shutdown = false;
    while !shutdown {
        let mut next = match rx.recv() {
            Ok(Msg::Write { batch, ack, queued }) => Some((batch, ack, queued)),
            Ok(Msg::Shutdown) | Err(_) => break,
        };
        let deadline = Instant::now() + window;
        let mut group: Vec<Pending> = Vec::new();
        let mut rows = 0;
        loop {
            if let Some((batch, ack, queued)) = next.take() {
                rows += batch.len();
                match wal.append(&batch) {
                    Ok(seq) => group.push(Pending {
                        batch,
                        queued,
                        ack,
                        seq,
                        segment: wal.segment(),
                    }),
                    Err(e) => {
                        let _ = ack.send(Err(e.into()));
                    }
                }
            }
            if rows >= max_group_rows {
                break;
            }
            match rx.recv_deadline(deadline) {
                Ok(Msg::Write { batch, ack, queued }) => next = Some((batch, ack, queued)),
                Ok(Msg::Shutdown) | Err(RecvTimeoutError::Disconnected) => {
                    shutdown = true;
                    break;
                }
                Err(RecvTimeoutError::Timeout) => break,
            }
        }
        if group.is_empty() {
            continue;
        }
        let fsync_start = Instant::now();
        let committed = wal.commit();
        shared.stats.fsync_latency.record(fsync_start.elapsed());
        match committed {
            Ok(_) => {
                // Blocks only while the apply thread is several groups behind.
                if let Err(crossbeam_channel::SendError(group)) = apply.send(group) {
                    for p in group {
                        let _ = p.ack.send(Err(Error::ShuttingDown));
                    }
                }
            }
            Err(e) => {
                error!(error = %e, source = ?std::error::Error::source(&e), "WAL commit failed; refusing all further writes");
                shared.poisoned.store(true, Ordering::SeqCst);
                for p in group {
                    let _ = p.ack.send(Err(Error::Poisoned));
                }
            }
        }
    }
    // Whatever is still queued is refused, never dropped silently.
    while let Ok(msg) = rx.try_recv() {
        if let Msg::Write { ack, .. } = msg {
            let _ = ack.send(Err(Error::ShuttingDown));
        }
    }
}

/// The apply thread: durable groups into the buffer, then acknowledgements.
pub(crate) fn run_apply(rx: Receiver<Vec<Pending>>, shared: Arc<Shared>) {
    while let Ok(group) = rx.recv() {
        let parts: Vec<&ReadingBatch> = group.iter().map(|p| &p.batch).collect();
        let (Some(first), Some(last)) = (group.first(), group.last()) else {
            continue;
        };
        let last = WalPosition {
            segment: last.segment,
            seq: last.seq,
        };
        shared.buffer.write().insert(&parts, first.segment, last);
        let now = Instant::now();
        for p in group {
            shared
                .stats
                .write_to_queryable
                .record(now.duration_since(p.queued));
            let receipt = WriteReceipt {
                seq: p.seq,
                rows: p.batch.len(),
            };
            let _ = p.ack.send(Ok(receipt));
            // Live subscribers get the batch once it is acknowledged; without any,
            // nothing is kept. Sending never waits: a subscriber that falls behind
            // loses the oldest batches (it is told how many).
            if shared.live.receiver_count() > 0 {
                let _ = shared.live.send(Arc::new(p.batch));
            }
        }
    }
}
