//! The WAL writer thread: drains the write queue, group-commits, fills the buffer, and
//! completes acknowledgements.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use tokio::sync::oneshot;
use tracing::error;
use wattdb_storage::ReadingBatch;
use wattdb_storage::wal::WalWriter;

use crate::error::{Error, Result};
use crate::{Shared, WriteReceipt};

// Messages travel by value through a preallocated queue; boxing the large variant
// would add an allocation per write for nothing.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Msg {
    Write {
        batch: ReadingBatch,
        ack: oneshot::Sender<Result<WriteReceipt>>,
    },
    Shutdown,
}

pub(crate) struct WriterArgs {
    pub rx: Receiver<Msg>,
    pub wal: WalWriter,
    pub shared: Arc<Shared>,
    pub window: Duration,
    pub max_group_rows: usize,
}

struct Pending {
    batch: ReadingBatch,
    ack: oneshot::Sender<Result<WriteReceipt>>,
    seq: u64,
}

pub(crate) fn run(args: WriterArgs) {
    let WriterArgs {
        rx,
        mut wal,
        shared,
        window,
        max_group_rows,
    } = args;
    let mut group: Vec<Pending> = Vec::new();
    let mut shutdown = false;
    while !shutdown {
        let first = match rx.recv() {
            Ok(Msg::Write { batch, ack }) => (batch, ack),
            Ok(Msg::Shutdown) | Err(_) => break,
        };
        let deadline = Instant::now() + window;
        let mut rows = 0;
        let mut next = Some(first);
        loop {
            if let Some((batch, ack)) = next.take() {
                rows += batch.len();
                match wal.append(&batch) {
                    Ok(seq) => group.push(Pending { batch, ack, seq }),
                    Err(e) => {
                        let _ = ack.send(Err(e.into()));
                    }
                }
            }
            if rows >= max_group_rows {
                break;
            }
            match rx.recv_deadline(deadline) {
                Ok(Msg::Write { batch, ack }) => next = Some((batch, ack)),
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
        shared
            .stats
            .fsync_nanos
            .fetch_add(fsync_start.elapsed().as_nanos() as u64, Ordering::Relaxed);
        shared.stats.fsyncs.fetch_add(1, Ordering::Relaxed);
        match committed {
            Ok(_) => {
                let parts: Vec<&ReadingBatch> = group.iter().map(|p| &p.batch).collect();
                let rows: usize = parts.iter().map(|b| b.len()).sum();
                shared.buffer.write().insert(&parts);
                shared.stats.rows.fetch_add(rows as u64, Ordering::Relaxed);
                shared
                    .stats
                    .batches
                    .fetch_add(group.len() as u64, Ordering::Relaxed);
                for p in group.drain(..) {
                    let receipt = WriteReceipt {
                        seq: p.seq,
                        rows: p.batch.len(),
                    };
                    let _ = p.ack.send(Ok(receipt));
                }
            }
            Err(e) => {
                error!(error = %e, source = ?std::error::Error::source(&e), "WAL commit failed; refusing all further writes");
                shared.poisoned.store(true, Ordering::SeqCst);
                for p in group.drain(..) {
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
