//! One MQTT payload decoder (TasmotaState): the whole input is the payload of a message on
//! its topic; every invariant of `wattdb_ingest::fuzzing::mqtt_payload` holds.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wattdb_ingest::PayloadFormat;

fuzz_target!(|data: &[u8]| {
    wattdb_ingest::fuzzing::mqtt_format(PayloadFormat::TasmotaState, data);
});
