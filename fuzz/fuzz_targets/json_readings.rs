//! JSON readings decoder: no panic, and every invariant of
//! `wattdb_ingest::fuzzing::json_readings` holds (rollback, positions, row checks).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    wattdb_ingest::fuzzing::json_readings(data);
});
