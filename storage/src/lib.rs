//! WattDB storage: the bytes at rest.
//!
//! This crate owns the on-disk formats and nothing that schedules or buffers: the
//! [`ReadingBatch`] that every layer passes around, and the write-ahead log
//! ([`wal`]) — segment format, durable appends, recovery scans and repair. It is the
//! bottom of the stack (`api → {ingest, query} → engine → storage`): the engine drives
//! a [`wal::WalWriter`] from its commit thread and replays [`wal::open`] on start.
//!
//! The WAL's memory-mapped segment reader is the only `unsafe` code in WattDB.

pub mod batch;
pub mod wal;

pub use batch::{
    DeviceIdError, MAX_DEVICE_ID_LEN, ReadingBatch, ReadingRef, StrColumn, validate_device_id,
};
