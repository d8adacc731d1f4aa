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
//! - Line protocol only: a coarser precision never accepts what nanoseconds refuse, and
//!   when it accepts, it decodes the same rows.

use wattdb_storage::{ReadingBatch, ReadingRef, validate_device_id};

use crate::json::{JsonError, decode_json_readings};
use crate::line_protocol::{LineProtocolError, Precision, decode_line_protocol};

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
