//! MQTT message decoder: no panic, and every invariant of
//! `wattdb_ingest::fuzzing::mqtt_payload` holds (rollback, routing, relay cache,
//! reading times, positions). The input is `topic\npayload`: everything before the
//! first newline is the topic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    wattdb_ingest::fuzzing::mqtt_payload(data);
});
