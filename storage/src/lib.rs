//! WattDB storage: the bytes at rest.
//!
//! This crate owns the on-disk formats and nothing that schedules or buffers: the
//! [`ReadingBatch`] that every layer passes around; the write-ahead log ([`wal`]) —
//! segment format, durable appends, recovery scans and repair; the object store
//! ([`store`]: local disk or S3); the Parquet layout and encoding ([`files`]); and the
//! manifest that says which files are live ([`manifest`]). It is the bottom of the
//! stack (`api → {ingest, query} → engine → storage`): the engine drives a
//! [`wal::WalWriter`] from its commit thread, replays [`wal::open`] on start, and
//! persists its buffer as files listed by a [`manifest::Manifest`].
//!
//! The WAL's memory-mapped segment reader is the only `unsafe` code in WattDB.

pub mod batch;
pub mod cache;
pub mod files;
pub mod manifest;
pub mod store;
pub mod wal;

pub use batch::{
    DeviceIdError, MAX_DEVICE_ID_LEN, ReadingBatch, ReadingRef, StrColumn, validate_device_id,
};
pub use files::{FileMeta, Tier};
pub use manifest::Manifest;
pub use object_store::path::Path as ObjectPath;
pub use store::{S3Config, Store, StoreConfig, StoreError};
