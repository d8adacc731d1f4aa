//! WAL segment reader: arbitrary bytes as a segment file must never panic, and replay
//! must stop at the last record with a valid checksum (checked by `fuzz_check`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    wattdb_storage::wal::fuzz_check(data);
});
