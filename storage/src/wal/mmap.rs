//! The one module of WattDB allowed to use `unsafe`: read-only memory maps of WAL
//! segments during recovery and repair.
//!
//! Replay reads every byte of every segment once; a map lets the checksum and the
//! decoder run straight over the page cache without copying segments into the heap.
#![allow(unsafe_code)]

use std::fs::File;
use std::io;

use memmap2::{Mmap, MmapOptions};

/// Maps `file` read-only. `None` for an empty file, which cannot be mapped.
pub(crate) fn map_segment(file: &File) -> io::Result<Option<Mmap>> {
    if file.metadata()?.len() == 0 {
        return Ok(None);
    }
    // SAFETY: the file is a WAL segment that this process opened for recovery or
    // repair before any writer exists for the directory; WattDB never writes, shrinks or
    // deletes a segment while a map of it is alive (callers drop the map before
    // truncating). Another process changing the file under us could make the bytes
    // change as we read them, which can give wrong data (caught by the checksums) but
    // not memory unsafety, since the map stays valid for its length.
    let map = unsafe { MmapOptions::new().map(file)? };
    Ok(Some(map))
}
