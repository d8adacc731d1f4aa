//! Line-protocol decoder: no panic, and every invariant of
//! `wattdb_ingest::fuzzing::line_protocol` holds (rollback, line numbers, row checks).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    wattdb_ingest::fuzzing::line_protocol(data);
});
