use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why the engine refused or failed a write.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The write queue is full: retry after a short pause.
    #[error("write queue is full ({capacity} batches waiting); retry shortly")]
    QueueFull { capacity: usize },
    /// The in-memory buffer has reached its limit: retry once persistence catches up.
    #[error("in-memory buffer is full ({bytes} bytes, limit {limit}); retry shortly")]
    BufferFull { bytes: usize, limit: usize },
    /// A WAL write or fsync failed earlier; no write is acknowledged any more.
    #[error("the write-ahead log failed and refuses further writes until restart")]
    Poisoned,
    #[error("the engine is shutting down")]
    ShuttingDown,
    #[error("write-ahead log")]
    Wal(#[from] wattdb_storage::wal::Error),
    #[error("cannot create data directory {path}")]
    DataDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("data directory is in use by another WattDB process (lock {path} is held)")]
    Locked { path: PathBuf },
    #[error("cannot start an engine thread")]
    Thread(#[source] std::io::Error),
    #[error("manifest")]
    Manifest(#[from] wattdb_storage::manifest::ManifestError),
    #[error(transparent)]
    Store(#[from] wattdb_storage::StoreError),
    #[error("encoding a Parquet file")]
    Encode(#[from] wattdb_storage::files::EncodeError),
    #[error("invalid setting: {0}")]
    Config(String),
    #[error("persistence failed: {0}")]
    Persist(String),
}

impl Error {
    /// The message and its direct cause, `message: cause`, for the answers of failed
    /// persist and compaction requests.
    pub(crate) fn with_cause(&self) -> String {
        match std::error::Error::source(self) {
            Some(cause) => format!("{self}: {cause}"),
            None => self.to_string(),
        }
    }

    /// True for refusals that a client should retry (HTTP 503 / 429, withheld PUBACK).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::QueueFull { .. } | Error::BufferFull { .. } | Error::ShuttingDown
        )
    }
}
