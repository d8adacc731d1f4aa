//! Invariant checks shared by the fuzz targets (`fuzz/fuzz_targets/`) and the corpus
//! replay test (`tests/integration.rs`).
//!
//! Each function decodes arbitrary bytes and panics when a decoder breaks a promise. A
//! decode error is not a failure by itself; what is checked:
//!
//! - `Ok(n)`: exactly `n` rows were appended after the rows already in the batch, every
//!   row has a valid device id, finite required values, a finite energy if any and a
//!   timestamp from 1970 on, and the body was valid UTF-8 (line protocol) or JSON that
//!   `serde_json` reads as an array of `n` elements or one object.
//! - `Err(e)`: the batch is exactly as it was on entry; the error points into the body
//!   (line protocol: a line in `1..=lines`; JSON: a line ≥ 1 and an element index within
//!   the array); its message is short and starts with its position.
//! - Decoding the same bytes twice gives the same result.
//! - Line protocol: the decoder's shortcuts for common spellings give the same result
//!   and rows as its general scanners alone (`decode_line_protocol_general`).
//! - Line protocol only: a coarser precision never accepts what nanoseconds refuse, and
//!   when it accepts, it decodes the same rows.
//! - MQTT only: the topic decides the outcome as the router says (unknown topics are
//!   refused, Tasmota STATE appends nothing, SENSOR and Shelly one reading stamped with
//!   the arrival time), reading times fall between 2000 and a day after arrival, a
//!   refusal leaves the relay cache alone, and a remembered relay state is the one the
//!   payload reported and the one the plug's next SENSOR reading carries.

use wattdb_storage::{ReadingBatch, ReadingRef, validate_device_id};

use crate::json::{JsonError, decode_json_readings};
use crate::line_protocol::{
    LineProtocolError, Precision, decode_line_protocol, decode_line_protocol_general,
};
use crate::mqtt::{MqttDecodeError, MqttDecoder, MqttDecoderConfig, PayloadFormat};

/// The arrival time handed to the decoders.
pub const NOW_NS: i64 = 1_700_000_000_000_000_000;

/// Longest acceptable error message, in characters.
pub const MAX_MESSAGE_CHARS: usize = 400;

/// Checks the line-protocol decoder on `data` at every precision.
pub fn line_protocol(data: &[u8]) {
    let lines = data.iter().filter(|&&b| b == b'\n').count() + 1;
    let ns = line_protocol_once(data, Precision::Ns, lines);
    for precision in [
        Precision::Us,
        Precision::Ms,
        Precision::S,
        Precision::M,
        Precision::H,
    ] {
        let coarse = line_protocol_once(data, precision, lines);
        match (&ns, &coarse) {
            (Ok(fine), Ok(coarse)) => {
                assert_eq!(fine.len(), coarse.len(), "row count differs at {precision}");
                assert_eq!(
                    fine.device_id, coarse.device_id,
                    "ids differ at {precision}"
                );
                assert_eq!(
                    fine.voltage, coarse.voltage,
                    "voltage differs at {precision}"
                );
                assert_eq!(
                    fine.relay_on, coarse.relay_on,
                    "relay differs at {precision}"
                );
            }
            (Err(fine), Err(coarse)) => assert!(
                coarse.line() <= fine.line(),
                "at {precision} the error is on line {} but at ns on line {}",
                coarse.line(),
                fine.line()
            ),
            (Err(fine), Ok(_)) => panic!("ns refuses ({fine}) what {precision} accepts"),
            (Ok(_), Err(_)) => {} // scaling to nanoseconds can overflow
        }
    }
}

/// Decodes `data` twice into a batch holding one row, checks the invariants and returns
/// the appended rows.
fn line_protocol_once(
    data: &[u8],
    precision: Precision,
    lines: usize,
) -> Result<ReadingBatch, LineProtocolError> {
    let mut batch = sentinel_batch();
    let before = batch.clone();
    let result = decode_line_protocol(data, precision, NOW_NS, &mut batch);
    match &result {
        Ok(n) => {
            check_appended(&before, &batch, *n);
            assert!(*n <= lines, "{n} readings from {lines} lines");
            assert!(
                std::str::from_utf8(data).is_ok(),
                "accepted a body that is not UTF-8"
            );
        }
        Err(e) => {
            assert_eq!(batch, before, "batch not restored after: {e}");
            assert!(
                (1..=lines).contains(&e.line()),
                "error line {} outside 1..={lines}: {e}",
                e.line()
            );
            let message = e.to_string();
            assert!(
                message.starts_with(&format!("line {}: ", e.line())),
                "message does not start with its line: {message}"
            );
            check_message_length(&message);
        }
    }

    let mut again = sentinel_batch();
    let second = decode_line_protocol(data, precision, NOW_NS, &mut again);
    assert_eq!(result, second, "second decode differs");
    assert_eq!(batch, again, "second decode appended different rows");

    let mut general = sentinel_batch();
    let without = decode_line_protocol_general(data, precision, NOW_NS, &mut general);
    assert_eq!(result, without, "the shortcuts change the result");
    assert_eq!(batch, general, "the shortcuts change the rows");
    result.map(|_| appended(&batch))
}

/// Checks the JSON decoder on `data`.
pub fn json_readings(data: &[u8]) {
    let mut batch = sentinel_batch();
    let before = batch.clone();
    let result = decode_json_readings(data, NOW_NS, &mut batch);
    // Strict: `Value` checks every string, where the decoder skips unknown members as
    // leniently as `IgnoredAny` (lone surrogate escapes pass there).
    let parsed = serde_json::from_slice::<serde_json::Value>(data);
    match &result {
        Ok(n) => {
            check_appended(&before, &batch, *n);
            assert!(
                std::str::from_utf8(data).is_ok(),
                "accepted a body that is not UTF-8"
            );
            let array = serde_json::from_slice::<Vec<serde::de::IgnoredAny>>(data);
            let object = serde_json::from_slice::<serde::de::IgnoredAny>(data);
            match (&array, &object) {
                (Ok(elements), _) => assert_eq!(elements.len(), *n, "element count"),
                (Err(_), Ok(_)) => assert_eq!(*n, 1, "one object, {n} readings"),
                (Err(e), Err(_)) => {
                    panic!("decoded {n} readings from a body serde_json refuses: {e}")
                }
            }
        }
        Err(e) => {
            assert_eq!(batch, before, "batch not restored after: {e}");
            let at = e.position();
            assert!(at.line >= 1, "error without a line: {e}");
            let array = serde_json::from_slice::<Vec<serde::de::IgnoredAny>>(data);
            if let (Some(index), Ok(elements)) = (at.index, &array) {
                assert!(
                    index < elements.len(),
                    "error names element {index} of {}: {e}",
                    elements.len()
                );
            }
            if matches!(e, JsonError::Syntax { .. } | JsonError::InvalidUtf8 { .. }) {
                assert!(
                    parsed.is_err(),
                    "syntax error on JSON serde_json reads: {e}"
                );
            }
            if matches!(e, JsonError::InvalidUtf8 { .. }) {
                assert!(
                    std::str::from_utf8(data).is_err(),
                    "UTF-8 error on UTF-8: {e}"
                );
            }
            let message = e.to_string();
            if !matches!(e, JsonError::Syntax { .. }) {
                assert!(
                    message.starts_with(&at.to_string()),
                    "message does not start with its position: {message}"
                );
            }
            check_message_length(&message);
        }
    }

    let mut again = sentinel_batch();
    let second = decode_json_readings(data, NOW_NS, &mut again);
    match (&result, &second) {
        (Ok(a), Ok(b)) => assert_eq!(a, b, "second decode differs"),
        (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string(), "second decode differs"),
        _ => panic!("second decode differs: {result:?} then {second:?}"),
    }
    assert_eq!(batch, again, "second decode appended different rows");
}

/// Payload limit of [`mqtt_decoder`].
pub const MQTT_MAX_PAYLOAD_BYTES: usize = 64 << 10;
/// Readings-per-message limit of [`mqtt_decoder`], low so the fuzzer reaches it.
pub const MQTT_MAX_READINGS: usize = 64;

/// The decoder the MQTT checks use: default routes, small limits.
pub fn mqtt_decoder() -> MqttDecoder {
    MqttDecoder::new(MqttDecoderConfig {
        max_payload_bytes: MQTT_MAX_PAYLOAD_BYTES,
        max_readings_per_message: MQTT_MAX_READINGS,
        relay_cache_capacity: 16,
        ..MqttDecoderConfig::default()
    })
}

/// Splits a fuzz input into an MQTT topic and payload: the topic is everything before
/// the first `\n`, the payload everything after it. Without a newline the whole input
/// is the topic and the payload is empty.
pub fn split_mqtt_input(data: &[u8]) -> (&[u8], &[u8]) {
    match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[]),
    }
}

/// The topic the single-format fuzz targets (`mqtt_smartplug`, `mqtt_tasmota_sensor`,
/// `mqtt_tasmota_state`, `mqtt_shelly`) deliver their input on.
pub fn mqtt_format_topic(format: PayloadFormat) -> &'static str {
    match format {
        PayloadFormat::SmartPlugJson => "smartplug/plug-1/telemetry",
        PayloadFormat::TasmotaSensor => "tele/tasmota_A1B2C3/SENSOR",
        PayloadFormat::TasmotaState => "tele/tasmota_A1B2C3/STATE",
        PayloadFormat::ShellySwitch => "shellyplusplugs-80646fc9c3a0/status/switch:0",
    }
}

/// Checks one payload decoder: the whole input is the payload of a message on
/// [`mqtt_format_topic`], with every invariant of [`mqtt_payload`].
pub fn mqtt_format(format: PayloadFormat, payload: &[u8]) {
    let topic = mqtt_format_topic(format);
    let mut data = Vec::with_capacity(topic.len() + 1 + payload.len());
    data.extend_from_slice(topic.as_bytes());
    data.push(b'\n');
    data.extend_from_slice(payload);
    mqtt_payload(&data);
}

/// 2000-01-01T00:00:00Z, the earliest reading time MQTT payloads may carry.
const MQTT_EARLIEST_NS: i64 = 946_684_800_000_000_000;
/// A day: how far past its arrival an MQTT reading's time may be.
const DAY_NS: i64 = 86_400_000_000_000;

/// Checks the MQTT decoder on one message, split by [`split_mqtt_input`]. Topics that
/// are not UTF-8 are skipped: MQTT topics are UTF-8 strings on the wire.
pub fn mqtt_payload(data: &[u8]) {
    let (topic, payload) = split_mqtt_input(data);
    let Ok(topic) = std::str::from_utf8(topic) else {
        return;
    };
    let mut decoder = mqtt_decoder();
    let routed = decoder.router().route(topic);
    let mut batch = sentinel_batch();
    let before = batch.clone();
    let result = decoder.decode_message(topic, payload, NOW_NS, &mut batch);
    match &result {
        Ok(n) => {
            check_appended(&before, &batch, *n);
            let Some(routed) = routed else {
                panic!("accepted a message on an unrouted topic {topic:?}");
            };
            assert!(
                validate_device_id(routed.device_id).is_ok(),
                "accepted a topic with a bad device level"
            );
            assert!(
                payload.len() <= MQTT_MAX_PAYLOAD_BYTES,
                "accepted an oversized payload"
            );
            assert!(
                std::str::from_utf8(payload).is_ok(),
                "accepted a payload that is not UTF-8"
            );
            if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(payload) {
                panic!("accepted a payload serde_json refuses: {e}");
            }
            for i in before.len()..batch.len() {
                let row = batch.get(i);
                assert!(
                    (MQTT_EARLIEST_NS..=NOW_NS + DAY_NS).contains(&row.ts),
                    "reading time {} out of range",
                    row.ts
                );
                if routed.format != PayloadFormat::SmartPlugJson {
                    assert_eq!(row.ts, NOW_NS, "firmware readings take the arrival time");
                    assert_eq!(row.device_id, routed.device_id, "device id not the topic's");
                    assert_eq!((row.location, row.device_type), (None, None), "tags");
                }
            }
            match routed.format {
                PayloadFormat::SmartPlugJson => {
                    let elements = serde_json::from_slice::<Vec<serde::de::IgnoredAny>>(payload);
                    let want = elements.map_or(1, |e| e.len());
                    assert_eq!(*n, want, "readings from {want} objects");
                    assert!(*n <= MQTT_MAX_READINGS, "{n} readings over the limit");
                }
                PayloadFormat::TasmotaSensor => {
                    assert_eq!(*n, 1, "one reading per SENSOR message");
                    assert_eq!(batch.get(before.len()).relay_on, None, "relay from nowhere");
                }
                PayloadFormat::ShellySwitch => assert_eq!(*n, 1, "one reading per status"),
                PayloadFormat::TasmotaState => {
                    assert_eq!(*n, 0, "a STATE message carries no reading");
                    check_relay_cache(&mut decoder, routed.device_id, payload);
                }
            }
        }
        Err(e) => {
            assert_eq!(batch, before, "batch not restored after: {e}");
            assert!(
                MqttDecodeError::REASONS.contains(&e.reason()),
                "unlisted reason {}",
                e.reason()
            );
            assert_eq!(
                matches!(e, MqttDecodeError::UnknownTopic { .. }),
                routed.is_none(),
                "router and decoder disagree on {topic:?}: {e}"
            );
            assert_eq!(
                decoder.remembered_relays(),
                0,
                "refused message changed the cache"
            );
            if let Some(at) = e.position() {
                assert!(at.line >= 1, "error without a line: {e}");
                let elements = serde_json::from_slice::<Vec<serde::de::IgnoredAny>>(payload);
                if let (Some(index), Ok(elements)) = (at.index, &elements) {
                    assert!(
                        index < elements.len().min(MQTT_MAX_READINGS + 1),
                        "error names element {index} of {}: {e}",
                        elements.len()
                    );
                }
                if !matches!(e, MqttDecodeError::NotJson { .. }) {
                    let message = e.to_string();
                    assert!(
                        message.starts_with(&at.to_string()),
                        "message does not start with its position: {message}"
                    );
                }
            }
            if matches!(e, MqttDecodeError::NotJson { .. }) {
                assert!(
                    serde_json::from_slice::<serde_json::Value>(payload).is_err(),
                    "not_json on JSON serde_json reads: {e}"
                );
            }
            check_message_length(&e.to_string());
        }
    }

    let mut again = sentinel_batch();
    let second = mqtt_decoder().decode_message(topic, payload, NOW_NS, &mut again);
    match (&result, &second) {
        (Ok(a), Ok(b)) => assert_eq!(a, b, "second decode differs"),
        (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string(), "second decode differs"),
        _ => panic!("second decode differs: {result:?} then {second:?}"),
    }
    assert_eq!(batch, again, "second decode appended different rows");
}

/// After an accepted STATE message: the remembered relay state is what a simple model
/// reads from the payload (when the payload is plain enough for the model), and the
/// plug's next SENSOR reading carries it.
fn check_relay_cache(decoder: &mut MqttDecoder, device_id: &str, payload: &[u8]) {
    let remembered = decoder.relay_state(device_id);
    assert!(
        decoder.remembered_relays() <= 1,
        "one STATE, several plugs remembered"
    );
    let literal_keys = payload.windows(5).filter(|w| *w == b"POWER").count();
    if let (1, Ok(serde_json::Value::Object(state))) = (
        literal_keys,
        serde_json::from_slice::<serde_json::Value>(payload),
    ) {
        let mut keys = ["POWER", "POWER1"].into_iter().filter_map(|k| state.get(k));
        if let (Some(value), None) = (keys.next(), keys.next()) {
            let model = match value {
                serde_json::Value::Bool(b) => Some(*b),
                serde_json::Value::String(s) => Some(s.eq_ignore_ascii_case("on")),
                serde_json::Value::Number(n) => Some(n.as_f64() == Some(1.0)),
                _ => None,
            };
            assert_eq!(remembered, model, "relay state remembered");
        }
    }
    let topic = format!("tele/{device_id}/SENSOR");
    let sensor = br#"{"ENERGY":{"Total":1.5,"Power":10,"Voltage":230,"Current":0.05}}"#;
    let mut batch = ReadingBatch::new();
    match decoder.decode_message(&topic, sensor, NOW_NS, &mut batch) {
        Ok(1) => assert_eq!(batch.relay_on[0], remembered, "SENSOR reading's relay"),
        other => panic!("SENSOR after STATE: {other:?}"),
    }
}

/// A batch that already holds one row, so rollback to a non-empty length is checked.
fn sentinel_batch() -> ReadingBatch {
    let mut batch = ReadingBatch::new();
    batch.push(ReadingRef {
        device_id: "sentinel",
        ts: 1,
        voltage: 1.0,
        current: 2.0,
        power: 3.0,
        energy: None,
        relay_on: Some(false),
        location: Some("here"),
        device_type: None,
    });
    batch
}

fn appended(batch: &ReadingBatch) -> ReadingBatch {
    let mut rows = ReadingBatch::new();
    for i in 1..batch.len() {
        rows.push(batch.get(i));
    }
    rows
}

fn check_appended(before: &ReadingBatch, after: &ReadingBatch, n: usize) {
    assert_eq!(
        after.len(),
        before.len() + n,
        "count differs from rows appended"
    );
    for i in 0..before.len() {
        assert_eq!(
            after.get(i),
            before.get(i),
            "row {i} that was there changed"
        );
    }
    for i in before.len()..after.len() {
        check_row(&after.get(i));
    }
}

fn check_row(row: &ReadingRef<'_>) {
    assert!(
        validate_device_id(row.device_id).is_ok(),
        "invalid device id {:?}",
        row.device_id
    );
    assert!(row.voltage.is_finite(), "voltage {}", row.voltage);
    assert!(row.current.is_finite(), "current {}", row.current);
    assert!(row.power.is_finite(), "power {}", row.power);
    assert!(
        row.energy.is_none_or(f64::is_finite),
        "energy {:?}",
        row.energy
    );
    assert!(row.ts >= 0, "timestamp {}", row.ts);
}

fn check_message_length(message: &str) {
    assert!(
        message.chars().count() <= MAX_MESSAGE_CHARS,
        "message too long ({} chars): {message}",
        message.chars().count()
    );
}
