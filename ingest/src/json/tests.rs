use super::*;

const NOW: i64 = 1_700_000_000_123_456_789;

fn decode(body: &str) -> Result<ReadingBatch, JsonError> {
    let mut batch = ReadingBatch::new();
    let n = decode_json_readings(body.as_bytes(), NOW, &mut batch)?;
    assert_eq!(n, batch.len());
    Ok(batch)
}

fn accept(body: &str) -> ReadingBatch {
    match decode(body) {
        Ok(b) => b,
        Err(e) => panic!("refused: {e}"),
    }
}

/// Decodes a body that must fail, checks the batch came back untouched and returns the
/// error.
fn refuse(body: impl AsRef<[u8]>) -> JsonError {
    let mut batch = ReadingBatch::new();
    batch.push(ReadingRef {
        device_id: "before",
        ts: 7,
        voltage: 1.0,
        current: 1.0,
        power: 1.0,
        energy: None,
        relay_on: None,
        location: None,
        device_type: None,
    });
    let before = batch.clone();
    match decode_json_readings(body.as_ref(), NOW, &mut batch) {
        Ok(n) => panic!("accepted {n} readings"),
        Err(e) => {
            assert_eq!(batch, before, "batch changed by a refused request");
            e
        }
    }
}

/// A reading object with `extra` members appended.
fn obj(extra: &str) -> String {
    let sep = if extra.is_empty() { "" } else { ", " };
    format!(
        r#"{{"device_id": "plug-1", "voltage": 230.1, "current": 0.5, "power": 115.0{sep}{extra}}}"#
    )
}

fn ts_of(value: &str) -> Result<i64, JsonError> {
    decode(&obj(&format!(r#""ts": {value}"#))).map(|b| b.ts[0])
}

#[test]
fn decodes_an_array_of_full_readings() {
    let b = accept(
        r#"[{"device_id": "plug-1", "ts": 1700000000, "voltage": 230.1, "current": 0.5,
             "power": 115.0, "energy": 12.5, "relay_state": true,
             "location": "kitchen", "device_type": "fridge"},
            {"device_id": "plug-2", "voltage": 229, "current": 1, "power": 230}]"#,
    );
    assert_eq!(b.len(), 2);
    assert_eq!(
        b.get(0),
        ReadingRef {
            device_id: "plug-1",
            ts: 1_700_000_000_000_000_000,
            voltage: 230.1,
            current: 0.5,
            power: 115.0,
            energy: Some(12.5),
            relay_on: Some(true),
            location: Some("kitchen"),
            device_type: Some("fridge"),
        }
    );
    let r = b.get(1);
    assert_eq!(
        (r.device_id, r.ts, r.voltage, r.energy, r.relay_on),
        ("plug-2", NOW, 229.0, None, None)
    );
}

#[test]
fn accepts_a_single_object_and_an_empty_array() {
    let b = accept(&obj(""));
    assert_eq!(b.len(), 1);
    assert_eq!(b.get(0).device_id, "plug-1");
    assert_eq!(b.ts, [NOW]);
    assert!(accept("[]").is_empty());
    assert!(accept(" \n[ ]\n ").is_empty());
}

#[test]
fn timestamp_units_by_magnitude() {
    let cases: [(&str, i64); 9] = [
        ("0", 0),
        ("1700000000", 1_700_000_000_000_000_000),
        ("9000000000", 9_000_000_000_000_000_000),
        ("1700000000123", 1_700_000_000_123_000_000),
        ("1700000000123456", 1_700_000_000_123_456_000),
        ("1700000000123456789", 1_700_000_000_123_456_789),
        ("100000000000", 100_000_000_000_000_000),
        ("100000000000000", 100_000_000_000_000_000),
        ("100000000000000000", 100_000_000_000_000_000),
    ];
    for (value, want) in cases {
        assert!(
            matches!(ts_of(value), Ok(ts) if ts == want),
            "{value}: {:?}",
            ts_of(value)
        );
    }
}

#[test]
fn timestamp_float_seconds_and_rfc3339() {
    assert!(matches!(
        ts_of("1700000000.5"),
        Ok(1_700_000_000_500_000_000)
    ));
    assert!(matches!(ts_of("1.7e9"), Ok(1_700_000_000_000_000_000)));
    assert!(matches!(ts_of("0.000000001"), Ok(1)));
    assert!(matches!(
        ts_of(r#""2023-11-14T22:13:20Z""#),
        Ok(1_700_000_000_000_000_000)
    ));
    assert!(matches!(
        ts_of(r#""2023-11-14T23:13:20.123456789+01:00""#),
        Ok(1_700_000_000_123_456_789)
    ));
    assert!(matches!(
        ts_of(r#""2023-11-14 22:13:20Z""#),
        Ok(1_700_000_000_000_000_000)
    ));
    assert!(matches!(ts_of("null"), Ok(NOW)));
    // Escaped strings go through the scratch buffer.
    assert!(matches!(
        ts_of(r#""2023-11-14T22:13:20\u005a""#),
        Ok(1_700_000_000_000_000_000)
    ));
}

#[test]
fn timestamp_errors() {
    let at = |e: &JsonError| e.position();
    let e = refuse(obj(r#""ts": -5"#));
    assert!(matches!(
        &e,
        JsonError::InvalidTimestamp {
            problem: TimestampProblem::Negative(Found::Integer(-5)),
            ..
        }
    ));
    assert_eq!(at(&e).index, None);
    assert!(
        e.to_string()
            .ends_with(r#"field "ts": must not be before 1970, found -5"#),
        "{e}"
    );

    assert!(matches!(
        refuse(obj(r#""ts": -0.5"#)),
        JsonError::InvalidTimestamp {
            problem: TimestampProblem::Negative(Found::Float(_)),
            ..
        }
    ));
    assert!(matches!(
        refuse(obj(r#""ts": 18446744073709551615"#)),
        JsonError::InvalidTimestamp {
            problem: TimestampProblem::OutOfRange(Found::Unsigned(_)),
            ..
        }
    ));
    // 9.3e10 seconds is after 2262.
    assert!(matches!(
        refuse(obj(r#""ts": 93000000000"#)),
        JsonError::InvalidTimestamp {
            problem: TimestampProblem::OutOfRange(_),
            ..
        }
    ));
    assert!(matches!(
        refuse(obj(r#""ts": 1e300"#)),
        JsonError::InvalidTimestamp {
            problem: TimestampProblem::OutOfRange(Found::Float(_)),
            ..
        }
    ));
    assert!(matches!(
        refuse(obj(r#""ts": "1969-12-31T23:59:59Z""#)),
        JsonError::InvalidTimestamp {
            problem: TimestampProblem::Negative(Found::String(_)),
            ..
        }
    ));
    assert!(matches!(
        refuse(obj(r#""ts": "2500-01-01T00:00:00Z""#)),
        JsonError::InvalidTimestamp {
            problem: TimestampProblem::OutOfRange(Found::String(_)),
            ..
        }
    ));

    let e = refuse(obj(r#""ts": "yesterday""#));
    assert!(
        matches!(&e, JsonError::InvalidTimestamp { problem: TimestampProblem::Rfc3339 { found, .. }, .. } if found.as_str() == "yesterday")
    );
    assert!(e.to_string().contains(r#"field "ts": expected an RFC 3339 time like "2023-11-14T22:13:20Z", found "yesterday": "#), "{e}");

    let e = refuse(obj(r#""ts": true"#));
    assert!(matches!(
        e,
        JsonError::InvalidField {
            field: "ts",
            expected: Expected::Timestamp,
            found: Found::Bool(true),
            ..
        }
    ));
    assert!(matches!(
        refuse(obj(r#""ts": [1]"#)),
        JsonError::InvalidField {
            field: "ts",
            found: Found::Array,
            ..
        }
    ));
}

#[test]
fn rollback_and_element_index_when_the_third_element_is_bad() {
    let body = format!(
        "[{},\n{},\n{},\n{}]",
        obj(""),
        obj(""),
        obj(r#""voltage": "abc""#),
        obj("")
    );
    let e = refuse(&body);
    assert!(matches!(
        &e,
        JsonError::InvalidField { at: Position { index: Some(2), line: 3, .. }, field: "voltage", expected: Expected::Number, found: Found::String(s) }
            if s.as_str() == "abc"
    ));
    let column = e.position().column;
    assert_eq!(
        e.to_string(),
        format!(
            r#"element 2 (line 3, column {column}): field "voltage": expected a number, found "abc""#
        )
    );
}

#[test]
fn missing_required_fields_name_element_and_field() {
    for (field, body) in [
        ("device_id", r#"{"voltage": 1, "current": 1, "power": 1}"#),
        ("voltage", r#"{"device_id": "a", "current": 1, "power": 1}"#),
        ("current", r#"{"device_id": "a", "voltage": 1, "power": 1}"#),
        ("power", r#"{"device_id": "a", "voltage": 1, "current": 1}"#),
    ] {
        let e = refuse(format!("[{}, {body}]", obj("")));
        assert!(
            matches!(&e, JsonError::MissingField { at: Position { index: Some(1), line: 1, .. }, field: f } if *f == field),
            "{e}"
        );
        assert!(
            e.to_string().starts_with("element 1 (line 1, column "),
            "{e}"
        );
        assert!(
            e.to_string()
                .ends_with(&format!(": missing field \"{field}\"")),
            "{e}"
        );
    }
    let e = refuse(r#"{"device_id": "a"}"#);
    assert!(matches!(
        e,
        JsonError::MissingField {
            at: Position {
                index: None,
                line: 1,
                column: 18
            },
            field: "voltage"
        }
    ));
    assert_eq!(
        e.to_string(),
        r#"line 1, column 18: missing field "voltage""#
    );
}

#[test]
fn wrong_types_and_nulls() {
    let cases = [
        (
            r#""device_id": 5"#,
            "device_id",
            Expected::String,
            Found::Unsigned(5),
        ),
        (
            r#""device_id": null"#,
            "device_id",
            Expected::String,
            Found::Null,
        ),
        (
            r#""voltage": null"#,
            "voltage",
            Expected::Number,
            Found::Null,
        ),
        (
            r#""current": true"#,
            "current",
            Expected::Number,
            Found::Bool(true),
        ),
        (
            r#""power": {"w": 1}"#,
            "power",
            Expected::Number,
            Found::Object,
        ),
        (r#""energy": [1]"#, "energy", Expected::Number, Found::Array),
        (
            r#""relay_state": 2"#,
            "relay_state",
            Expected::Boolean,
            Found::Unsigned(2),
        ),
        (
            r#""relay_state": -1"#,
            "relay_state",
            Expected::Boolean,
            Found::Integer(-1),
        ),
        (
            r#""relay_state": "on""#,
            "relay_state",
            Expected::Boolean,
            Found::String("on".into()),
        ),
        (
            r#""location": 1.5"#,
            "location",
            Expected::String,
            Found::Float(1.5),
        ),
        (
            r#""device_type": false"#,
            "device_type",
            Expected::String,
            Found::Bool(false),
        ),
    ];
    for (member, field, expected, found) in cases {
        let e = refuse(format!("[{}]", obj(member)));
        assert!(
            matches!(&e, JsonError::InvalidField { at: Position { index: Some(0), .. }, field: f, expected: x, found: y }
                if *f == field && *x == expected && *y == found),
            "{member}: {e}"
        );
    }
    let b = accept(&obj(
        r#""energy": null, "relay_state": null, "location": null, "device_type": """#,
    ));
    let r = b.get(0);
    assert_eq!(
        (r.energy, r.relay_on, r.location, r.device_type),
        (None, None, None, None)
    );
}

#[test]
fn relay_state_forms() {
    for (value, want) in [
        ("true", true),
        ("false", false),
        ("1", true),
        ("0", false),
        ("1.0", true),
        ("0.0", false),
    ] {
        let b = accept(&obj(&format!(r#""relay_state": {value}"#)));
        assert_eq!(b.relay_on, [Some(want)], "{value}");
    }
}

#[test]
fn numbers_in_every_json_form() {
    let b = accept(
        r#"{"device_id": "a", "voltage": 230, "current": -1, "power": 1.5e2, "energy": 18446744073709551616}"#,
    );
    let r = b.get(0);
    assert_eq!(
        (r.voltage, r.current, r.power, r.energy),
        (230.0, -1.0, 150.0, Some(18446744073709551616.0))
    );
    // Out of f64 range: the parser refuses it.
    assert!(matches!(
        refuse(obj(r#""energy": 1e400"#)),
        JsonError::Syntax { index: None, .. }
    ));
}

#[test]
fn invalid_device_id() {
    let e = refuse(format!(
        "[{}]",
        r#"{"device_id": "plug 1", "voltage": 1, "current": 1, "power": 1}"#
    ));
    assert!(
        matches!(&e, JsonError::InvalidDeviceId { at: Position { index: Some(0), line: 1, column: 23 }, found, reason: DeviceIdError::BadChar(' ') } if found.as_str() == "plug 1")
    );
    assert_eq!(
        e.to_string(),
        r#"element 0 (line 1, column 23): field "device_id": invalid value "plug 1": device_id contains ' '; allowed are A-Z a-z 0-9 _ . : -"#
    );
    assert!(matches!(
        refuse(obj(r#""device_id": """#)),
        JsonError::InvalidDeviceId {
            reason: DeviceIdError::Empty,
            ..
        }
    ));
}

#[test]
fn escaped_strings_and_keys_are_unescaped() {
    let b = accept(
        r#"{"device_\u0069d": "plug\u002d1", "voltage": 1, "current": 2, "power": 3,
            "location": "Wohnzimmer \"S\u00fcd\"", "device_type": "tv"}"#,
    );
    let r = b.get(0);
    assert_eq!(
        (r.device_id, r.location, r.device_type),
        ("plug-1", Some("Wohnzimmer \"Süd\""), Some("tv"))
    );
}

#[test]
fn unknown_keys_are_ignored_and_duplicates_last_wins() {
    let b = accept(&obj(
        r#""extra": {"deep": [1, {"x": null}]}, "note": "hi", "voltage": 240, "location": "a", "location": "b""#,
    ));
    let r = b.get(0);
    assert_eq!((r.voltage, r.location), (240.0, Some("b")));
}

#[test]
fn not_an_array_or_object() {
    for (body, found) in [
        ("42", Found::Unsigned(42)),
        ("-1", Found::Integer(-1)),
        ("\"x\"", Found::String("x".into())),
        ("null", Found::Null),
        ("true", Found::Bool(true)),
        ("2.5", Found::Float(2.5)),
    ] {
        let e = refuse(body);
        assert!(
            matches!(&e, JsonError::NotArrayOrObject { at: Position { index: None, line: 1, .. }, found: f } if *f == found),
            "{body}: {e}"
        );
    }
    assert!(refuse("42").to_string().starts_with(
        "line 1, column 2: expected an array of readings or one reading object, found 42"
    ));
    let e = refuse(format!("[{}, 7]", obj("")));
    assert!(matches!(
        e,
        JsonError::ElementNotObject {
            at: Position { index: Some(1), .. },
            found: Found::Unsigned(7)
        }
    ));
    let e = refuse("[[]]");
    assert!(matches!(
        &e,
        JsonError::ElementNotObject {
            at: Position { index: Some(0), .. },
            found: Found::Array
        }
    ));
    assert!(
        e.to_string()
            .starts_with("element 0 (line 1, column 3): expected a reading object, found an array"),
        "{e}"
    );
}

#[test]
fn syntax_errors_carry_position() {
    let e = refuse(format!("[{},\n{}", obj(""), obj("")));
    assert!(matches!(&e, JsonError::Syntax { index: Some(_), error } if error.line() == 2));
    assert!(
        e.to_string()
            .contains("invalid JSON: EOF while parsing a list at line 2"),
        "{e}"
    );

    let e = refuse(format!("[{} {}]", obj(""), obj("")));
    assert!(
        matches!(&e, JsonError::Syntax { index: Some(1), .. }),
        "{e}"
    );
    assert!(
        e.to_string()
            .starts_with("element 1: invalid JSON: expected `,` or `]`"),
        "{e}"
    );

    let e = refuse(format!("{} x", obj("")));
    assert!(matches!(&e, JsonError::Syntax { index: None, .. }), "{e}");
    assert!(
        e.to_string()
            .starts_with("invalid JSON: trailing characters at line 1"),
        "{e}"
    );

    let e = refuse("");
    assert!(matches!(&e, JsonError::Syntax { index: None, .. }));
    assert_eq!(e.position().line, 1);
}

#[test]
fn invalid_utf8_anywhere_is_refused() {
    let e = refuse(b"[\xff]");
    assert!(matches!(
        e,
        JsonError::InvalidUtf8 {
            at: Position {
                index: None,
                line: 1,
                column: 2
            }
        }
    ));
    assert_eq!(e.to_string(), "line 1, column 2: invalid UTF-8");
    let mut body = format!("[{},\n{{\"note\": \"ab", obj("")).into_bytes();
    body.extend_from_slice(b"\xc3\"}]");
    let e = refuse(&body);
    assert!(
        matches!(
            e,
            JsonError::InvalidUtf8 {
                at: Position {
                    index: None,
                    line: 2,
                    column: 13
                }
            }
        ),
        "{e}"
    );
    // Deep nesting is skipped without recursion in unknown members and in known ones.
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    assert_eq!(accept(&obj(&format!(r#""x": {deep}"#))).len(), 1);
    let e = refuse(obj(&format!(r#""power": {deep}"#)));
    assert!(matches!(
        e,
        JsonError::InvalidField {
            field: "power",
            found: Found::Array,
            ..
        }
    ));
    // Nesting at the top level stops at serde_json's recursion limit.
    assert!(matches!(refuse(&deep), JsonError::ElementNotObject { .. }));
    let deep_objects = "{\"a\":".repeat(100_000);
    assert!(matches!(
        refuse(obj(&format!(r#""power": {deep_objects}"#))),
        JsonError::Syntax { .. }
    ));
}

#[test]
fn long_strings_are_cut_in_messages() {
    let long = "z".repeat(10_000);
    let e = refuse(obj(&format!(r#""voltage": "{long}""#)));
    assert!(e.to_string().len() < 200, "{e}");
    assert!(e.to_string().contains("…\""), "{e}");
}

#[test]
fn fuzz_checks_accept_the_unit_test_inputs() {
    for body in [
        obj("").as_str(),
        "[]",
        "42",
        "[1]",
        "{",
        &obj(r#""ts": "x""#),
    ] {
        crate::fuzzing::json_readings(body.as_bytes());
    }
}
