use super::*;

const NOW: i64 = 1_700_000_000_123_456_789;
const GOOD: &str = "power_metrics,device_id=plug-1 voltage=230.1,current=0.5,power=115";

fn decode(body: &str) -> Result<ReadingBatch, LineProtocolError> {
    decode_at(body, Precision::Ns)
}

fn decode_at(body: &str, precision: Precision) -> Result<ReadingBatch, LineProtocolError> {
    let mut batch = ReadingBatch::new();
    let n = decode_line_protocol(body.as_bytes(), precision, NOW, &mut batch)?;
    assert_eq!(n, batch.len());
    Ok(batch)
}

/// Decodes a body that must fail, checks the batch came back untouched and returns the
/// error.
fn refuse(body: impl AsRef<[u8]>) -> LineProtocolError {
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
    match decode_line_protocol(body.as_ref(), Precision::Ns, NOW, &mut batch) {
        Ok(n) => panic!("accepted {n} readings"),
        Err(e) => {
            assert_eq!(batch, before, "batch changed by a refused request");
            e
        }
    }
}

fn one(body: &str) -> ReadingBatch {
    match decode(body) {
        Ok(batch) => {
            assert_eq!(batch.len(), 1);
            batch
        }
        Err(e) => panic!("refused: {e}"),
    }
}

#[test]
fn decodes_a_full_line() {
    let b = one(
        "power_metrics,device_id=plug-1,location=kitchen,device_type=fridge \
         voltage=230.1,current=0.52,power=119.6,energy=1234.5,relay_state=true \
         1700000000000000000",
    );
    assert_eq!(
        b.get(0),
        ReadingRef {
            device_id: "plug-1",
            ts: 1_700_000_000_000_000_000,
            voltage: 230.1,
            current: 0.52,
            power: 119.6,
            energy: Some(1234.5),
            relay_on: Some(true),
            location: Some("kitchen"),
            device_type: Some("fridge"),
        }
    );
}

#[test]
fn missing_timestamp_uses_now_and_optional_values_are_none() {
    let r = one(GOOD);
    let r = r.get(0);
    assert_eq!(r.ts, NOW);
    assert_eq!(r.energy, None);
    assert_eq!(r.relay_on, None);
    assert_eq!(r.location, None);
    assert_eq!(r.device_type, None);
    // Trailing whitespace before the line end does not make a timestamp.
    assert_eq!(one(&format!("{GOOD}  \t")).get(0).ts, NOW);
}

#[test]
fn many_lines_blank_lines_comments_and_crlf() {
    let body = "# header comment\n\
                \n\
                power_metrics,device_id=a voltage=1,current=2,power=3 10\r\n\
                \x20  \t\r\n\
                \x20 # indented comment\n\
                power_metrics,device_id=b voltage=4,current=5,power=6 20\r\n\
                power_metrics,device_id=c voltage=7,current=8,power=9";
    let b = match decode(body) {
        Ok(b) => b,
        Err(e) => panic!("{e}"),
    };
    assert_eq!(b.device_id.iter().collect::<Vec<_>>(), ["a", "b", "c"]);
    assert_eq!(b.ts, [10, 20, NOW]);
    assert_eq!(b.power, [3.0, 6.0, 9.0]);
}

#[test]
fn empty_and_comment_only_bodies_decode_to_nothing() {
    for body in ["", "\n\n", "# nothing\n", "   ", "\r\n"] {
        assert!(matches!(decode(body), Ok(b) if b.is_empty()), "{body:?}");
    }
}

#[test]
fn appends_after_existing_rows() {
    let mut batch = match decode(GOOD) {
        Ok(b) => b,
        Err(e) => panic!("{e}"),
    };
    let n = decode_line_protocol(GOOD.as_bytes(), Precision::Ns, 5, &mut batch);
    assert!(matches!(n, Ok(1)));
    assert_eq!(batch.ts, [NOW, 5]);
}

#[test]
fn rollback_when_the_third_line_is_bad() {
    let body = format!("{GOOD} 1\n{GOOD} 2\n{GOOD},voltage=abc 3\n{GOOD} 4\n");
    let e = refuse(body);
    assert_eq!(e.line(), 3);
    assert!(matches!(
        &e,
        LineProtocolError::InvalidFieldValue { line: 3, field, expected: Expected::Number, found }
            if field.as_str() == "voltage" && found.as_str() == "abc"
    ));
    assert_eq!(
        e.to_string(),
        r#"line 3: field "voltage": expected a number, found "abc""#
    );
}

#[test]
fn precisions_scale_the_timestamp() {
    let cases = [
        (Precision::Ns, 1_700_000_000_000_000_000i64),
        (Precision::Us, 1_700_000_000_000_000),
        (Precision::Ms, 1_700_000_000_000),
        (Precision::S, 1_700_000_000),
    ];
    for (precision, units) in cases {
        let b = match decode_at(&format!("{GOOD} {units}"), precision) {
            Ok(b) => b,
            Err(e) => panic!("{precision}: {e}"),
        };
        assert_eq!(b.ts, [1_700_000_000_000_000_000], "{precision}");
    }
    assert!(
        matches!(decode_at(&format!("{GOOD} 2"), Precision::M), Ok(b) if b.ts == [120_000_000_000])
    );
    assert!(
        matches!(decode_at(&format!("{GOOD} 2"), Precision::H), Ok(b) if b.ts == [7_200_000_000_000])
    );
    // A missing timestamp is `now_ns` whatever the precision.
    assert!(matches!(decode_at(GOOD, Precision::S), Ok(b) if b.ts == [NOW]));
}

#[test]
fn precision_names() {
    for (name, p) in [
        ("ns", Precision::Ns),
        ("n", Precision::Ns),
        ("us", Precision::Us),
        ("u", Precision::Us),
        ("µs", Precision::Us),
        ("ms", Precision::Ms),
        ("s", Precision::S),
        ("m", Precision::M),
        ("h", Precision::H),
    ] {
        assert_eq!(name.parse::<Precision>(), Ok(p), "{name}");
    }
    for p in [
        Precision::Ns,
        Precision::Us,
        Precision::Ms,
        Precision::S,
        Precision::M,
        Precision::H,
    ] {
        assert_eq!(p.to_string().parse::<Precision>(), Ok(p));
    }
    let e = "sec".parse::<Precision>();
    assert!(matches!(&e, Err(UnknownPrecision { found }) if found.as_str() == "sec"));
    assert!(
        matches!(&e, Err(e) if e.to_string() == r#"unknown precision "sec"; expected one of ns, us, ms, s (or n, u, m, h)"#)
    );
    assert!("".parse::<Precision>().is_err());
    assert!("NS".parse::<Precision>().is_err());
    assert_eq!(Precision::default(), Precision::Ns);
}

#[test]
fn timestamp_errors() {
    let e = refuse(format!("{GOOD} -5"));
    assert!(
        matches!(&e, LineProtocolError::NegativeTimestamp { line: 1, found } if found.as_str() == "-5")
    );
    assert_eq!(
        e.to_string(),
        r#"line 1: timestamp: must not be negative, found "-5""#
    );

    let e = refuse(format!("{GOOD}\n{GOOD} 12x"));
    assert!(
        matches!(&e, LineProtocolError::InvalidTimestamp { line: 2, found } if found.as_str() == "12x")
    );
    assert!(matches!(
        refuse(format!("{GOOD} 1.5")),
        LineProtocolError::InvalidTimestamp { line: 1, .. }
    ));
    assert!(matches!(
        refuse(format!("{GOOD} -")),
        LineProtocolError::InvalidTimestamp { line: 1, .. }
    ));
    assert!(matches!(
        refuse(format!("{GOOD} +5")),
        LineProtocolError::InvalidTimestamp { line: 1, .. }
    ));

    let e = refuse(format!("{GOOD} 99999999999999999999"));
    assert!(matches!(
        e,
        LineProtocolError::TimestampOutOfRange {
            line: 1,
            precision: Precision::Ns,
            ..
        }
    ));

    // Fits at ns, overflows once scaled.
    let mut batch = ReadingBatch::new();
    let e = decode_line_protocol(
        format!("{GOOD} 9300000000").as_bytes(),
        Precision::S,
        NOW,
        &mut batch,
    );
    assert!(
        matches!(&e, Err(LineProtocolError::TimestampOutOfRange { line: 1, precision: Precision::S, found }) if found.as_str() == "9300000000")
    );
    assert!(
        matches!(&e, Err(e) if e.to_string() == r#"line 1: timestamp "9300000000" at precision s is out of range (0 to 2262-04-11)"#)
    );
    assert!(batch.is_empty());
    // The largest representable instant is fine.
    assert!(matches!(decode(&format!("{GOOD} {}", i64::MAX)), Ok(b) if b.ts == [i64::MAX]));
    assert!(matches!(decode(&format!("{GOOD} 0")), Ok(b) if b.ts == [0]));

    let e = refuse(format!("{GOOD} 123 456"));
    assert!(
        matches!(&e, LineProtocolError::TrailingText { line: 1, found } if found.as_str() == "456")
    );
    assert!(matches!(
        refuse(format!("{GOOD} 123,456")),
        LineProtocolError::TrailingText { line: 1, .. }
    ));
}

#[test]
fn measurement_errors() {
    let e = refuse(format!("{GOOD}\ncpu,host=a usage=1 1"));
    assert!(
        matches!(&e, LineProtocolError::UnknownMeasurement { line: 2, found } if found.as_str() == "cpu")
    );
    assert_eq!(
        e.to_string(),
        r#"line 2: measurement "cpu" is not accepted; expected "power_metrics""#
    );
    assert!(matches!(
        refuse(",device_id=a voltage=1"),
        LineProtocolError::MissingMeasurement { line: 1 }
    ));
    assert!(matches!(
        refuse(" \n\n power_metric voltage=1"),
        LineProtocolError::UnknownMeasurement { line: 3, .. }
    ));
    // An escape makes it a different name.
    assert!(matches!(
        refuse("power\\_metrics,device_id=a voltage=1,current=1,power=1"),
        LineProtocolError::UnknownMeasurement { line: 1, .. }
    ));
    assert!(matches!(
        refuse("power_metrics"),
        LineProtocolError::MissingFields { line: 1 }
    ));
    assert!(matches!(
        refuse("power_metrics,device_id=a"),
        LineProtocolError::MissingFields { line: 1 }
    ));
    assert!(matches!(
        refuse("power_metrics,device_id=a \r\n"),
        LineProtocolError::MissingFields { line: 1 }
    ));
    assert!(matches!(
        refuse("power_metrics,device_id=a\r\n"),
        LineProtocolError::MissingFields { line: 1 }
    ));
}

#[test]
fn tag_errors() {
    assert!(matches!(
        refuse("power_metrics,=a voltage=1"),
        LineProtocolError::EmptyTagKey { line: 1 }
    ));
    assert!(matches!(
        refuse("power_metrics, voltage=1"),
        LineProtocolError::EmptyTagKey { line: 1 }
    ));
    let e = refuse("power_metrics,location voltage=1");
    assert!(
        matches!(&e, LineProtocolError::MissingTagValue { line: 1, tag } if tag.as_str() == "location")
    );
    assert_eq!(e.to_string(), r#"line 1: tag "location": missing value"#);
    assert!(matches!(
        refuse("power_metrics,location= voltage=1"),
        LineProtocolError::MissingTagValue { line: 1, .. }
    ));
    assert!(matches!(
        refuse("power_metrics,location=,device_id=a voltage=1"),
        LineProtocolError::MissingTagValue { line: 1, .. }
    ));
    let e = refuse("power_metrics,device_id=a=b voltage=1");
    assert!(
        matches!(&e, LineProtocolError::UnescapedEquals { line: 1, tag, found } if tag.as_str() == "device_id" && found.as_str() == "a=b")
    );
}

#[test]
fn missing_required_tag_and_fields() {
    let e = refuse("power_metrics,location=x voltage=1,current=1,power=1");
    assert!(matches!(
        e,
        LineProtocolError::MissingTag {
            line: 1,
            tag: "device_id"
        }
    ));
    assert_eq!(e.to_string(), r#"line 1: missing tag "device_id""#);
    for (fields, missing) in [
        ("current=1,power=1", "voltage"),
        ("voltage=1,power=1", "current"),
        ("voltage=1,current=1", "power"),
        ("energy=1", "voltage"),
    ] {
        let e = refuse(format!("{GOOD}\n\npower_metrics,device_id=a {fields}"));
        assert!(
            matches!(e, LineProtocolError::MissingField { line: 3, field } if field == missing),
            "{fields}: {e}"
        );
    }
    assert_eq!(
        refuse("power_metrics,device_id=a voltage=1,current=1").to_string(),
        r#"line 1: missing field "power""#
    );
}

#[test]
fn invalid_device_ids() {
    let e = refuse("power_metrics,device_id=plug\\ 1 voltage=1,current=1,power=1");
    assert!(
        matches!(&e, LineProtocolError::InvalidDeviceId { line: 1, found, reason: DeviceIdError::BadChar(' ') } if found.as_str() == "plug 1")
    );
    assert_eq!(
        e.to_string(),
        r#"line 1: tag "device_id": invalid value "plug 1": device_id contains ' '; allowed are A-Z a-z 0-9 _ . : -"#
    );
    let long = "x".repeat(129);
    let e = refuse(format!(
        "power_metrics,device_id={long} voltage=1,current=1,power=1"
    ));
    assert!(
        matches!(&e, LineProtocolError::InvalidDeviceId { line: 1, reason: DeviceIdError::TooLong, found } if found.is_truncated())
    );
    assert!(matches!(
        refuse("power_metrics,device_id=plüg voltage=1,current=1,power=1"),
        LineProtocolError::InvalidDeviceId {
            reason: DeviceIdError::BadChar('ü'),
            ..
        }
    ));
}

#[test]
fn field_syntax_errors() {
    let e = refuse("power_metrics,device_id=a voltage=1,,power=1");
    assert!(matches!(e, LineProtocolError::EmptyFieldKey { line: 1 }));
    assert!(matches!(
        refuse("power_metrics,device_id=a voltage=1,"),
        LineProtocolError::EmptyFieldKey { line: 1 }
    ));
    assert!(matches!(
        refuse("power_metrics,device_id=a =1"),
        LineProtocolError::EmptyFieldKey { line: 1 }
    ));
    let e = refuse("power_metrics,device_id=a voltage");
    assert!(
        matches!(&e, LineProtocolError::MissingFieldValue { line: 1, field } if field.as_str() == "voltage")
    );
    assert_eq!(e.to_string(), r#"line 1: field "voltage": missing value"#);
    assert!(matches!(
        refuse("power_metrics,device_id=a voltage=,current=1"),
        LineProtocolError::MissingFieldValue { line: 1, .. }
    ));
    assert!(matches!(
        refuse("power_metrics,device_id=a voltage= 1"),
        LineProtocolError::MissingFieldValue { line: 1, .. }
    ));

    let e = refuse(format!("{GOOD},note=\"open\n\nstill open"));
    assert!(
        matches!(&e, LineProtocolError::UnterminatedString { line: 1, field } if field.as_str() == "note")
    );
    assert_eq!(
        e.to_string(),
        r#"line 1: field "note": unterminated string"#
    );

    let e = refuse(format!("{GOOD},note=\"a\"b"));
    assert!(
        matches!(&e, LineProtocolError::InvalidFieldValue { line: 1, expected: Expected::FieldValue, found, .. } if found.as_str() == r#"\"a\"b"#)
    );
}

#[test]
fn numeric_field_errors_name_the_field() {
    let cases = [
        ("voltage=abc", "voltage", Expected::Number),
        ("current=\"0.5\"", "current", Expected::Number),
        ("power=true", "power", Expected::Number),
        ("energy=NaN", "energy", Expected::FiniteNumber),
        ("voltage=inf", "voltage", Expected::FiniteNumber),
        ("voltage=-Infinity", "voltage", Expected::FiniteNumber),
        ("voltage=1e999", "voltage", Expected::FiniteNumber),
        ("voltage=1.5i", "voltage", Expected::Integer),
        (
            "voltage=99999999999999999999i",
            "voltage",
            Expected::Integer,
        ),
        ("voltage=-1u", "voltage", Expected::Unsigned),
        (
            "voltage=99999999999999999999u",
            "voltage",
            Expected::Unsigned,
        ),
        ("relay_state=2i", "relay_state", Expected::Boolean),
        ("relay_state=yes", "relay_state", Expected::Boolean),
        ("relay_state=\"true\"", "relay_state", Expected::Boolean),
        ("other=abc", "other", Expected::FieldValue),
        ("other=NaN", "other", Expected::FieldValue),
    ];
    for (field_set, field_name, want) in cases {
        let body = format!("{GOOD}\n{GOOD},{field_set} 1");
        let e = refuse(&body);
        assert!(
            matches!(&e, LineProtocolError::InvalidFieldValue { line: 2, field, expected, .. }
                if field.as_str() == field_name && *expected == want),
            "{field_set}: {e}"
        );
        assert!(
            e.to_string().starts_with(&format!(
                "line 2: field \"{field_name}\": expected {want}, found "
            )),
            "{e}"
        );
    }
}

#[test]
fn numeric_forms() {
    let b = one("power_metrics,device_id=a voltage=230i,current=1u,power=-1.5e2,energy=0");
    let r = b.get(0);
    assert_eq!(
        (r.voltage, r.current, r.power, r.energy),
        (230.0, 1.0, -150.0, Some(0.0))
    );
    let b = one("power_metrics,device_id=a voltage=+1,current=.5,power=5.,energy=-0.0");
    let r = b.get(0);
    assert_eq!((r.voltage, r.current, r.power), (1.0, 0.5, 5.0));
    assert!(matches!(r.energy, Some(e) if e == 0.0 && e.is_sign_negative()));
    let b = one(&format!(
        "power_metrics,device_id=a voltage={}i,current={}u,power=1E3",
        i64::MIN,
        u64::MAX
    ));
    let r = b.get(0);
    assert_eq!(
        (r.voltage, r.current, r.power),
        (i64::MIN as f64, u64::MAX as f64, 1000.0)
    );
}

#[test]
fn fast_decimal_matches_the_standard_parser() {
    let cases = [
        "0",
        "1",
        "-1",
        "230.1",
        "0.52",
        "119.6",
        "1234.5",
        "0.1",
        "0.3",
        "2.675",
        "123456789012345",
        "1234567890.12345",
        "0.00000000000001",
        "-0.0",
        "900719925474.993",
        "1.",
        ".5",
        "999999999999999",
    ];
    for s in cases {
        let fast = fast_decimal(s.as_bytes());
        let std = s.parse::<f64>().ok();
        assert!(fast.is_some(), "{s} should take the fast path");
        assert_eq!(fast.map(f64::to_bits), std.map(f64::to_bits), "{s}");
    }
    for s in [
        "1234567890123456",
        "0.000000000000001",
        "1e5",
        "-",
        ".",
        "",
        "1.2.3",
        "--1",
        "1-",
    ] {
        assert_eq!(fast_decimal(s.as_bytes()), None, "{s}");
    }
}

#[test]
fn booleans() {
    let relay = |v: &str| {
        decode(&format!("{GOOD},relay_state={v}"))
            .map(|b| b.relay_on[0])
            .map_err(|e| e.to_string())
    };
    for v in ["t", "T", "true", "True", "TRUE", "1i", "1u", "1", "1.0"] {
        assert_eq!(relay(v), Ok(Some(true)), "{v}");
    }
    for v in ["f", "F", "false", "False", "FALSE", "0i", "0u", "0", "0.0"] {
        assert_eq!(relay(v), Ok(Some(false)), "{v}");
    }
    for v in ["tRUE", "yes", "2", "-1i", "0.5", "\"t\""] {
        assert!(relay(v).is_err(), "{v}");
    }
}

#[test]
fn unknown_tags_and_fields_are_ignored_but_checked() {
    let b = one(
        "power_metrics,host=h1,device_id=a,region=eu voltage=1,current=2,power=3,\
         freq=50.0,count=3i,big=5u,on=T,name=\"x, y=z \\\"q\\\" \\\\\"",
    );
    assert_eq!(b.get(0).device_id, "a");
    assert_eq!(b.get(0).power, 3.0);
}

#[test]
fn duplicates_last_wins() {
    let b = one(
        "power_metrics,device_id=a,device_id=b,location=x,location=y voltage=1,current=2,power=3,voltage=4",
    );
    let r = b.get(0);
    assert_eq!((r.device_id, r.location, r.voltage), ("b", Some("y"), 4.0));
}

#[test]
fn escapes_in_measurement_tags_and_fields() {
    let b = one(
        "power_metrics,device_id=plug-1,location=living\\ room\\,\\ east,device_type=a\\=b\\x \
         voltage=1,current=2,power=3",
    );
    let r = b.get(0);
    assert_eq!(r.location, Some("living room, east"));
    // Only `\,` `\=` `\ ` are escapes in tags; other backslashes stay.
    assert_eq!(r.device_type, Some("a=b\\x"));

    // Escaped delimiters in unknown tag keys and values, and in field keys.
    let b = one(
        "power_metrics,my\\ tag\\=x=v\\,w,device_id=a we\\ ird\\,key=1,voltage=1,current=2,power=3",
    );
    assert_eq!(b.get(0).device_id, "a");

    // A quoted string may hold spaces, commas, equals signs, escaped quotes and
    // backslashes, and line feeds; the next line is still counted right.
    let body = format!("{GOOD},note=\"multi\nline \\\" \\\\\" 5\n{GOOD},voltage=x");
    let e = refuse(&body);
    assert_eq!(e.line(), 3, "{e}");
    let body = format!("{GOOD},note=\"multi\nline\" 5\n{GOOD} 6");
    assert!(matches!(decode(&body), Ok(b) if b.ts == [5, 6]));

    // Trailing backslash at the end of the body.
    assert!(matches!(
        refuse("power_metrics,device_id=a\\"),
        LineProtocolError::MissingFields { line: 1 }
    ));
    // An escaped tag value that turns out empty of meaning is still checked.
    assert!(matches!(
        refuse("power_metrics,device_id=\\, voltage=1,current=1,power=1"),
        LineProtocolError::InvalidDeviceId { line: 1, .. }
    ));
}

#[test]
fn tabs_and_several_spaces_between_sections() {
    let b = one("power_metrics,device_id=a  voltage=1,current=2,power=3 \t 42 ");
    assert_eq!(b.ts, [42]);
}

#[test]
fn invalid_utf8_names_the_line() {
    let mut body = format!("{GOOD}\n{GOOD}\n").into_bytes();
    body.extend_from_slice(
        b"power_metrics,device_id=a,location=\xff voltage=1,current=1,power=1\n",
    );
    let e = refuse(&body);
    assert_eq!(e, LineProtocolError::InvalidUtf8 { line: 3 });
    assert_eq!(e.to_string(), "line 3: invalid UTF-8");

    assert_eq!(
        refuse(b"# comment \xc3\n"),
        LineProtocolError::InvalidUtf8 { line: 1 }
    );
    // Inside a string that spans lines: the line of the bad byte.
    let mut body = format!("{GOOD},note=\"a\nb\n").into_bytes();
    body.extend_from_slice(b"\xfe\"");
    assert_eq!(refuse(&body), LineProtocolError::InvalidUtf8 { line: 3 });
    // An earlier bad line is reported first.
    let mut body = b"cpu x=1\n".to_vec();
    body.extend_from_slice(b"\xff\n");
    assert!(matches!(
        refuse(&body),
        LineProtocolError::UnknownMeasurement { line: 1, .. }
    ));
    // Valid multi-byte text is fine in tags and strings.
    let b = one("power_metrics,device_id=a,location=Küche voltage=1,current=2,power=3,note=\"⚡\"");
    assert_eq!(b.get(0).location, Some("Küche"));
}

#[test]
fn error_messages_truncate_long_input() {
    let long = "y".repeat(500);
    let e = refuse(format!("{long} voltage=1"));
    let message = e.to_string();
    assert!(message.len() < 150, "{message}");
    assert!(message.contains("…\""), "{message}");
    let e = refuse(format!("{GOOD},voltage={long}"));
    assert!(e.to_string().len() < 200, "{e}");
}

#[test]
fn line_accessor_matches_every_variant_message() {
    let bodies: [&[u8]; 6] = [
        b"\n\ncpu x=1",
        b"\n\npower_metrics,device_id=a voltage=1,current=1,power=1 -1",
        b"\n\npower_metrics voltage=1",
        b"\n\n\xff",
        b"\n\npower_metrics,device_id=a voltage=1,current=1,power=1 1 2",
        b"\n\npower_metrics,device_id=a voltage=1,current=1,power=1,s=\"",
    ];
    for body in bodies {
        let e = refuse(body);
        assert_eq!(e.line(), 3, "{e}");
        assert!(e.to_string().starts_with("line 3: "), "{e}");
    }
}

#[test]
fn fuzz_checks_accept_the_unit_test_inputs() {
    for body in [
        GOOD,
        "",
        "cpu x=1",
        "power_metrics,device_id=a voltage=1,current=1,power=1 9300000000",
    ] {
        crate::fuzzing::line_protocol(body.as_bytes());
    }
}

/// The shortcuts for the common spellings (measurement, known keys, plain decimals,
/// plain timestamps) decide nothing on their own: on lines with every kind of small
/// damage near them, the decoder gives the same rows or the same error as its general
/// scanners alone (checked by `fuzzing::line_protocol`, with its other invariants, at
/// every precision).
#[test]
fn shortcuts_agree_with_the_general_scanners() {
    let seeds: [&[u8]; 12] = [
        b"power_metrics,device_id=plug-000001,location=kitchen,device_type=fridge \
          voltage=231.4,current=0.512,power=98.7,energy=123456.78,relay_state=true \
          1700000000123000000\n",
        b"power_metrics,device_id=p1 voltage=230,current=-0.5,power=1.,energy=.5 1\n\
          power_metrics,device_id=p2 voltage=1i,current=2u,power=3e1 9223372036854775807\n",
        b"power_metrics,location=a\\ b,device_id=p\\,1 voltage=1,current=1,power=1,x=\"s\\\"t\" 10",
        b"power_metrics,device_type=tv,device_id=p voltage=230.1,current=0.52,power=119.6 \
          9999999999999999999\r\n# comment\n\n",
        b"power_metrics,device_id=p voltage=1234567890123456,current=123456789012345,\
          power=0.000000000000001 18446744073709551615",
        b"power_metrics,device_id=p voltage=1,current=1,power=1,relay_state=1.0 \
          12345678901234567890\n",
        b"power_metrics device_id=p voltage=1",
        b"power_metricsx,device_id=p voltage=1,current=1,power=1",
        b"power_metrics,device_id=p voltage=1,current=1,power=1 1700000000 \t\n",
        b"power_metrics,device_idx=p,device_id=q voltage=1,voltagex=2,current=1,power=1",
        b"power_metrics,device_id=p voltage=-,current=1.2.3,power=--1",
        b"power_metrics,device_id=p energy=1,voltage=1,current=1,power=1,relay_state=false",
    ];
    let splice = b",= \\\"\n\r\t-.0123456789eiuftx#\xc3\xa9\xff";
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move |n: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % n as u64) as usize
    };
    for seed in seeds {
        crate::fuzzing::line_protocol(seed);
        for _ in 0..400 {
            let mut body = seed.to_vec();
            for _ in 0..1 + next(3) {
                let at = next(body.len() + 1);
                let byte = splice[next(splice.len())];
                match next(4) {
                    0 if at < body.len() => body[at] = byte,
                    1 => body.insert(at, byte),
                    2 if at < body.len() => {
                        body.remove(at);
                    }
                    _ => body.truncate(at),
                }
            }
            crate::fuzzing::line_protocol(&body);
        }
    }
}

#[test]
fn reserves_room_for_its_lines_only_as_far_as_the_body_could_hold_them() {
    let mut batch = ReadingBatch::new();
    let body = format!("{GOOD}\n{GOOD}\n{GOOD}");
    decode_line_protocol(body.as_bytes(), Precision::Ns, NOW, &mut batch).unwrap();
    assert_eq!(batch.len(), 3);
    assert!(batch.ts.capacity() >= 3);
    // A body of nothing but line feeds holds no reading: the room taken is bounded by
    // the shortest possible line, not by the line count.
    let mut empty = ReadingBatch::new();
    let feeds = vec![b'\n'; 1 << 20];
    assert_eq!(
        decode_line_protocol(&feeds, Precision::Ns, NOW, &mut empty),
        Ok(0)
    );
    assert!(empty.ts.capacity() <= (1 << 20) / MIN_LINE_LEN + 1);
}

#[test]
fn eight_digits_takes_exactly_the_ascii_digits() {
    assert_eq!(eight_digits(b"12345678"), Some(12_345_678));
    assert_eq!(eight_digits(b"00000000"), Some(0));
    assert_eq!(eight_digits(b"99999999"), Some(99_999_999));
    assert_eq!(eight_digits(b"1234567"), None);
    for at in 0..8 {
        for byte in 0..=255u8 {
            let mut chunk = *b"50505050";
            chunk[at] = byte;
            let expected = std::str::from_utf8(&chunk)
                .ok()
                .filter(|s| s.bytes().all(|b| b.is_ascii_digit()))
                .map(|s| s.parse::<u64>().unwrap());
            assert_eq!(eight_digits(&chunk), expected, "{chunk:?}");
        }
    }
}
