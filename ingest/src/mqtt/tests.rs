use wattdb_storage::{DeviceIdError, ReadingRef};

use super::*;
use crate::error::Expected;
use crate::json::Found;

/// 2023-11-14T22:13:20.123456789Z.
const NOW: i64 = 1_700_000_000_123_456_789;
const SECOND: i64 = 1_000_000_000;

const SMARTPLUG: &str = "smartplug/plug-1/telemetry";
const SENSOR: &str = "tele/tasmota_A1B2C3/SENSOR";
const STATE: &str = "tele/tasmota_A1B2C3/STATE";
const SHELLY: &str = "shellyplusplugs-80646fc9c3a0/status/switch:0";

const TASMOTA_SENSOR: &str = r#"{"Time":"2024-01-01T12:00:00","ENERGY":{"TotalStartTime":"2023-06-01T10:00:00","Total":1.234,"Yesterday":0.456,"Today":0.078,"Period":0,"Power":45,"ApparentPower":50,"ReactivePower":21,"Factor":0.9,"Voltage":230,"Current":0.196}}"#;
const TASMOTA_STATE_ON: &str = r#"{"Time":"2024-01-01T12:00:00","Uptime":"0T01:02:03","UptimeSec":3723,"Heap":25,"SleepMode":"Dynamic","Sleep":50,"LoadAvg":19,"MqttCount":1,"POWER":"ON","Wifi":{"AP":1,"SSId":"home","RSSI":80,"Signal":-60}}"#;
const SHELLY_STATUS: &str = r#"{"id":0,"source":"timer","output":true,"apower":12.3,"voltage":230.1,"current":0.052,"aenergy":{"total":1234.567,"by_minute":[10.1,11.2,12.3],"minute_ts":1700000000},"temperature":{"tC":41.2,"tF":106.2}}"#;

fn sentinel() -> ReadingBatch {
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
    batch
}

/// The rows `decoder` appends for one message; panics when it refuses it.
fn accept_with(decoder: &mut MqttDecoder, topic: &str, payload: &str) -> ReadingBatch {
    let mut batch = ReadingBatch::new();
    match decoder.decode_message(topic, payload.as_bytes(), NOW, &mut batch) {
        Ok(n) => {
            assert_eq!(n, batch.len());
            batch
        }
        Err(e) => panic!("refused {payload}: {e}"),
    }
}

fn accept(topic: &str, payload: &str) -> ReadingBatch {
    accept_with(&mut MqttDecoder::default(), topic, payload)
}

/// Decodes a message that must fail, checks the batch came back untouched and returns
/// the error.
fn refuse_with(
    decoder: &mut MqttDecoder,
    topic: &str,
    payload: impl AsRef<[u8]>,
) -> MqttDecodeError {
    let mut batch = sentinel();
    let before = batch.clone();
    match decoder.decode_message(topic, payload.as_ref(), NOW, &mut batch) {
        Ok(n) => panic!("accepted {n} readings"),
        Err(e) => {
            assert_eq!(batch, before, "batch changed by a refused message");
            e
        }
    }
}

fn refuse(topic: &str, payload: impl AsRef<[u8]>) -> MqttDecodeError {
    refuse_with(&mut MqttDecoder::default(), topic, payload)
}

/// A smart-plug reading object with `extra` members appended.
fn obj(extra: &str) -> String {
    let sep = if extra.is_empty() { "" } else { ", " };
    format!(r#"{{"voltage": 230.1, "current": 0.5, "power": 115.0{sep}{extra}}}"#)
}

fn ts_of(value: &str) -> Result<i64, MqttDecodeError> {
    let mut batch = ReadingBatch::new();
    let payload = obj(&format!(r#""ts": {value}"#));
    MqttDecoder::default()
        .decode_message(SMARTPLUG, payload.as_bytes(), NOW, &mut batch)
        .map(|_| batch.ts[0])
}

fn relay_of(value: &str) -> Result<Option<bool>, MqttDecodeError> {
    let mut batch = ReadingBatch::new();
    let payload = obj(&format!(r#""relay_state": {value}"#));
    MqttDecoder::default()
        .decode_message(SMARTPLUG, payload.as_bytes(), NOW, &mut batch)
        .map(|_| batch.relay_on[0])
}

// ---- routing ----

#[test]
fn default_router_has_the_four_routes() {
    let router = TopicRouter::default();
    let specs: Vec<String> = router.routes().iter().map(Route::to_string).collect();
    assert_eq!(
        specs,
        [
            "smartplug/{device_id}/telemetry=smartplug-json",
            "tele/{device_id}/SENSOR=tasmota-sensor",
            "tele/{device_id}/STATE=tasmota-state",
            "{device_id}/status/switch:0=shelly-switch",
        ]
    );
    assert_eq!(TopicRouter::parse(&specs), Ok(router.clone()));
    assert_eq!(
        router.subscription_filters(),
        [
            "smartplug/+/telemetry",
            "tele/+/SENSOR",
            "tele/+/STATE",
            "+/status/switch:0",
        ]
    );
}

#[test]
fn routes_topics_to_formats_and_devices() {
    let router = TopicRouter::default();
    let cases = [
        (SMARTPLUG, Some((PayloadFormat::SmartPlugJson, "plug-1"))),
        (
            SENSOR,
            Some((PayloadFormat::TasmotaSensor, "tasmota_A1B2C3")),
        ),
        (STATE, Some((PayloadFormat::TasmotaState, "tasmota_A1B2C3"))),
        (
            SHELLY,
            Some((PayloadFormat::ShellySwitch, "shellyplusplugs-80646fc9c3a0")),
        ),
        (
            "smartplug//telemetry",
            Some((PayloadFormat::SmartPlugJson, "")),
        ),
        ("smartplug/a/b/telemetry", None),
        ("smartplug/plug-1/telemetry/x", None),
        ("smartplug/plug-1", None),
        ("tele/tasmota_A1B2C3/RESULT", None),
        ("shelly/status/switch:1", None),
        ("a/b/status/switch:0", None),
        ("", None),
    ];
    for (topic, want) in cases {
        let got = router.route(topic).map(|m| (m.format, m.device_id));
        assert_eq!(got, want, "{topic}");
    }
}

#[test]
fn parses_route_specifications() {
    let route: Route = " home/{device_id}/power = smartplug-json ".parse().unwrap();
    assert_eq!(route.format, PayloadFormat::SmartPlugJson);
    assert_eq!(route.to_string(), "home/{device_id}/power=smartplug-json");
    assert_eq!(
        route.pattern.device_id("home/kitchen.fridge/power"),
        Some("kitchen.fridge")
    );
    // The format follows the last '='.
    let route: Route = "a=b/{device_id}=shelly-switch".parse().unwrap();
    assert_eq!(route.pattern.subscription_filter(), "a=b/+");
    let route: Route = "{device_id}=tasmota-state".parse().unwrap();
    assert_eq!(route.pattern.device_id("plug-9"), Some("plug-9"));
    assert_eq!(route.pattern.device_id("a/plug-9"), None);

    for format in PayloadFormat::ALL {
        assert_eq!(format.name().parse(), Ok(format));
    }
}

#[test]
fn refuses_bad_route_specifications() {
    let cases = [
        ("tele/{device_id}/SENSOR", "expected PATTERN=FORMAT"),
        (
            "tele/{device_id}/SENSOR=tasmota",
            "unknown payload format \"tasmota\"",
        ),
        ("=smartplug-json", "the pattern is empty"),
        ("tele/SENSOR=tasmota-sensor", "no {device_id} level"),
        (
            "{device_id}/x/{device_id}=shelly-switch",
            "more than one {device_id}",
        ),
        ("tele/plug-{device_id}/SENSOR=tasmota-sensor", "whole level"),
        ("tele/+/SENSOR=tasmota-sensor", "contains '+'"),
        ("tele/{device_id}/#=tasmota-sensor", "contains '#'"),
        ("tele/{device}/{device_id}=tasmota-sensor", "contains '{'"),
    ];
    for (spec, want) in cases {
        match spec.parse::<Route>() {
            Ok(route) => panic!("{spec} accepted as {route}"),
            Err(e) => {
                let message = e.to_string();
                assert!(message.starts_with("route \""), "{message}");
                assert!(message.contains(want), "{spec}: {message}");
            }
        }
    }
    let long = format!("{}/{{device_id}}=smartplug-json", "x".repeat(2000));
    assert!(matches!(
        long.parse::<Route>(),
        Err(RouteError::Pattern {
            error: TopicPatternError::TooLong,
            ..
        })
    ));
    assert!(matches!(
        TopicRouter::parse(["a/{device_id}=smartplug-json", "oops"]),
        Err(RouteError::MissingFormat { .. })
    ));
}

#[test]
fn custom_routes_decode_and_first_match_wins() {
    let router = TopicRouter::parse([
        "home/{device_id}/shelly=shelly-switch",
        "home/{device_id}/{device_id}=smartplug-json",
    ]);
    assert!(router.is_err(), "two device levels must be refused");
    let router = TopicRouter::parse([
        "home/{device_id}/shelly=shelly-switch",
        "home/{device_id}/power=smartplug-json",
        "{device_id}/power=tasmota-sensor",
        "home/{device_id}/power=tasmota-sensor",
    ])
    .unwrap();
    assert_eq!(
        router.subscription_filters(),
        ["home/+/shelly", "home/+/power", "+/power"]
    );
    let mut decoder = MqttDecoder::new(MqttDecoderConfig {
        router,
        ..MqttDecoderConfig::default()
    });
    let b = accept_with(&mut decoder, "home/fridge/power", &obj(""));
    assert_eq!(b.get(0).device_id, "fridge");
    let b = accept_with(&mut decoder, "home/tv/shelly", SHELLY_STATUS);
    assert_eq!((b.get(0).device_id, b.get(0).power), ("tv", 12.3));
    let b = accept_with(&mut decoder, "garage/power", TASMOTA_SENSOR);
    assert_eq!(b.get(0).device_id, "garage");
    // The default topics are no longer routed.
    let e = refuse_with(&mut decoder, SMARTPLUG, obj(""));
    assert_eq!(e.reason(), "unknown_topic");
    assert_eq!(
        e.to_string(),
        "topic \"smartplug/plug-1/telemetry\" matches no route"
    );
}

#[test]
fn topic_device_level_is_validated() {
    let e = refuse("smartplug//telemetry", obj(""));
    assert!(matches!(
        e,
        MqttDecodeError::BadDeviceId {
            at: None,
            reason: DeviceIdError::Empty,
            ..
        }
    ));
    let e = refuse("smartplug/plug 1/telemetry", obj(""));
    assert_eq!(e.reason(), "bad_device_id");
    assert_eq!(
        e.to_string(),
        "topic: device level: invalid device id \"plug 1\": device_id contains ' '; \
         allowed are A-Z a-z 0-9 _ . : -"
    );
    let long = format!("smartplug/{}/telemetry", "p".repeat(129));
    assert!(matches!(
        refuse(&long, obj("")),
        MqttDecodeError::BadDeviceId {
            reason: DeviceIdError::TooLong,
            ..
        }
    ));
}

// ---- smartplug-json ----

#[test]
fn smartplug_single_object() {
    let b = accept(
        SMARTPLUG,
        r#"{"ts": 1700000000, "voltage": 230.1, "current": 0.52, "power": 119.6,
            "energy": 1234.5, "relay_state": true}"#,
    );
    assert_eq!(
        b.get(0),
        ReadingRef {
            device_id: "plug-1",
            ts: 1_700_000_000 * SECOND,
            voltage: 230.1,
            current: 0.52,
            power: 119.6,
            energy: Some(1234.5),
            relay_on: Some(true),
            location: None,
            device_type: None,
        }
    );
    let b = accept(SMARTPLUG, &obj(""));
    let r = b.get(0);
    assert_eq!((r.ts, r.energy, r.relay_on), (NOW, None, None));
    let b = accept(
        SMARTPLUG,
        &obj(r#""energy": null, "relay_state": null, "ts": null"#),
    );
    let r = b.get(0);
    assert_eq!((r.ts, r.energy, r.relay_on), (NOW, None, None));
}

#[test]
fn smartplug_array_with_device_overrides_and_tags() {
    let b = accept(
        "smartplug/gateway-7/telemetry",
        r#"[{"device_id": "plug-a", "ts": 1700000000000, "voltage": 230, "current": 1, "power": 230},
            {"ts": "2023-11-14T22:13:21Z", "voltage": 231, "current": 2, "power": 462,
             "location": "kitchen", "device_type": "kettle", "extra": {"nested": [1e400]}},
            {"device_id": "plug-\u0062", "voltage": 229, "current": 0, "power": 0, "relay_state": "off"}]"#,
    );
    assert_eq!(b.len(), 3);
    let ids: Vec<&str> = b.device_id.iter().collect();
    assert_eq!(ids, ["plug-a", "gateway-7", "plug-b"]);
    assert_eq!(b.ts, [1_700_000_000 * SECOND, 1_700_000_001 * SECOND, NOW]);
    assert_eq!(b.get(1).location, Some("kitchen"));
    assert_eq!(b.get(1).device_type, Some("kettle"));
    assert_eq!(b.relay_on, [None, None, Some(false)]);
    assert_eq!(accept(SMARTPLUG, "[]").len(), 0);
    assert_eq!(accept(SMARTPLUG, " [ ] ").len(), 0);
}

#[test]
fn smartplug_timestamp_units_by_magnitude() {
    let t = 1_700_000_000 * SECOND;
    assert_eq!(ts_of("1700000000").unwrap(), t);
    assert_eq!(ts_of("1700000000.25").unwrap(), t + SECOND / 4);
    assert_eq!(ts_of("1700000000000").unwrap(), t);
    assert_eq!(ts_of("1700000000000.5").unwrap(), t + 500_000);
    assert_eq!(ts_of("1700000000000000").unwrap(), t);
    assert_eq!(ts_of("1700000000000000000").unwrap(), t);
    assert_eq!(ts_of("1.7e9").unwrap(), t);
    assert_eq!(ts_of("1.7e18").unwrap(), t);
    assert_eq!(
        ts_of(r#""2023-11-14T23:13:20.5+01:00""#).unwrap(),
        t + SECOND / 2
    );
    // The edges: 2000-01-01 and a day after arrival.
    assert_eq!(ts_of("946684800").unwrap(), 946_684_800 * SECOND);
    let last = (NOW + 86_400 * SECOND).to_string();
    assert_eq!(ts_of(&last).unwrap(), NOW + 86_400 * SECOND);
}

#[test]
fn smartplug_bad_timestamps() {
    let bad = |value: &str| match ts_of(value) {
        Ok(ts) => panic!("{value} accepted as {ts}"),
        Err(e) => {
            assert_eq!(e.reason(), "bad_timestamp", "{e}");
            e.to_string()
        }
    };
    assert_eq!(
        bad("946684799"),
        "line 1, column 67: field \"ts\": 946684799 is 1999-12-31T23:59:59Z, before 2000-01-01"
    );
    assert!(bad("-5").contains("-5 is 1969-12-31T23:59:55Z, before 2000-01-01"));
    assert!(bad("0").contains("before 2000-01-01"));
    assert!(bad("1e30").contains("1e30 is outside 1677 to 2262, more than a day after"));
    assert!(bad("-1e30").contains("before 2000-01-01"));
    assert!(bad("18446744073709551615").contains("more than a day after"));
    let late = (NOW + 86_400 * SECOND + 1).to_string();
    assert!(
        bad(&late).ends_with(
            "is 2023-11-15T22:13:20.123456790Z, more than a day after the message arrived \
             (2023-11-14T22:13:20.123456789Z)"
        ),
        "{}",
        bad(&late)
    );
    assert!(bad(r#""yesterday""#).contains(
        "field \"ts\": expected an RFC 3339 time like \"2024-01-01T12:00:00Z\", found \"yesterday\""
    ));
    assert!(bad(r#""2024-01-01T12:00:00""#).contains("premature end of input"));
    assert!(bad(r#""1999-12-31T23:59:59Z""#).contains("before 2000-01-01"));
    assert!(bad(r#""9999-12-31T23:59:59Z""#).contains("outside 1677 to 2262"));
    let e = ts_of("true").unwrap_err();
    assert!(matches!(
        e,
        MqttDecodeError::WrongType {
            field: Some("ts"),
            expected: Expected::TimestampByMagnitude,
            ..
        }
    ));
}

#[test]
fn smartplug_relay_states() {
    for (value, want) in [
        ("true", Some(true)),
        ("false", Some(false)),
        (r#""on""#, Some(true)),
        (r#""ON""#, Some(true)),
        (r#""Off""#, Some(false)),
        (r#""o\u006e""#, Some(true)),
        ("1", Some(true)),
        ("0", Some(false)),
        ("1.0", Some(true)),
        ("null", None),
    ] {
        assert_eq!(relay_of(value).unwrap(), want, "{value}");
    }
    for value in [r#""yes""#, "2", "-1", r#""""#, "[]", "{}"] {
        let e = relay_of(value).unwrap_err();
        assert_eq!(e.reason(), "wrong_type", "{value}");
        assert!(
            e.to_string().contains(
                "field \"relay_state\": expected a relay state (true, false, \"on\", \"off\", 1 or 0)"
            ),
            "{e}"
        );
    }
}

#[test]
fn smartplug_array_rolls_back_on_a_bad_element() {
    let payload = r#"[{"voltage": 230, "current": 1, "power": 230},
        {"voltage": 230, "current": 1, "power": 230},
        {"voltage": 230, "current": 1, "power": "lots"}]"#;
    let e = refuse(SMARTPLUG, payload);
    assert_eq!(
        e.to_string(),
        "element 2 (line 3, column 55): field \"power\": expected a number, found \"lots\""
    );
    assert_eq!(e.position().and_then(|p| p.index), Some(2));

    let e = refuse(
        SMARTPLUG,
        r#"[{"voltage": 230, "current": 1, "power": 230}, 5]"#,
    );
    assert_eq!(
        e.to_string(),
        "element 1 (line 1, column 48): expected a reading object, found 5"
    );
    let e = refuse(
        SMARTPLUG,
        r#"[{"voltage": 230, "current": 1, "power": 230}, {"power": 1"#,
    );
    assert_eq!(e.reason(), "not_json");
    assert!(e.to_string().starts_with("element 1: not JSON: "), "{e}");
}

#[test]
fn smartplug_errors_name_element_field_and_reason() {
    let cases: [(&str, &str, &str); 12] = [
        (
            "5",
            "wrong_type",
            "line 1, column 1: expected a reading object or an array of reading objects, found 5",
        ),
        (r#""x""#, "wrong_type", "found \"x\""),
        (
            r#"{"voltage": 230, "current": 1}"#,
            "missing_field",
            "line 1, column 30: missing field \"power\"",
        ),
        (
            &obj(r#""voltage": null"#),
            "wrong_type",
            "field \"voltage\": expected a number, found null",
        ),
        (
            &obj(r#""energy": "12""#),
            "wrong_type",
            "field \"energy\": expected a number, found \"12\"",
        ),
        (
            &obj(r#""power": 1e400"#),
            "non_finite",
            "field \"power\": the number is beyond the range of a 64-bit float",
        ),
        (
            &obj(r#""device_id": "a/b""#),
            "bad_device_id",
            "field \"device_id\": invalid device id \"a/b\": device_id contains '/'",
        ),
        (
            &obj(r#""device_id": 7"#),
            "wrong_type",
            "field \"device_id\": expected a string, found 7",
        ),
        (
            &obj(r#""location": 7"#),
            "wrong_type",
            "field \"location\": expected a string, found 7",
        ),
        (
            "{\"voltage\": 230,",
            "not_json",
            "not JSON: EOF while parsing a value at line 1 column 16",
        ),
        (
            r#"{"voltage": 1, "current": 1, "power": 1} x"#,
            "not_json",
            "not JSON: trailing characters at line 1 column 42",
        ),
        (
            "",
            "not_json",
            "not JSON: EOF while parsing a value at line 1 column 0",
        ),
    ];
    for (payload, reason, want) in cases {
        let e = refuse(SMARTPLUG, payload);
        assert_eq!(e.reason(), reason, "{payload}: {e}");
        assert!(e.to_string().contains(want), "{payload}: {e}");
    }
    let e = refuse(SMARTPLUG, b"{\"voltage\": \"\xff\"}");
    assert_eq!(e.to_string(), "not JSON: invalid UTF-8 at line 1 column 14");
    assert_eq!(e.reason(), "not_json");
}

#[test]
fn limits_refuse_large_messages() {
    let mut decoder = MqttDecoder::new(MqttDecoderConfig {
        max_payload_bytes: 200,
        max_readings_per_message: 2,
        ..MqttDecoderConfig::default()
    });
    let two = format!("[{},{}]", obj(""), obj(""));
    assert_eq!(accept_with(&mut decoder, SMARTPLUG, &two).len(), 2);
    let three = format!("[{},{},{}]", obj(""), obj(""), obj(""));
    let e = refuse_with(&mut decoder, SMARTPLUG, &three);
    assert_eq!(e.reason(), "too_large");
    assert_eq!(
        e.to_string(),
        "element 2 (line 1, column 103): more than 2 readings in one message"
    );
    let e = refuse_with(&mut decoder, SMARTPLUG, " ".repeat(201));
    assert_eq!(
        e.to_string(),
        "payload of 201 bytes is over the limit of 200 bytes"
    );
    assert_eq!(e.position(), None);
}

#[test]
fn every_reason_has_a_label_and_an_example() {
    let examples: [(&str, &[u8]); 8] = [
        ("nowhere", b"{}"),
        ("smartplug/a b/telemetry", b"{}"),
        (SMARTPLUG, &[b' '; 2 << 20]),
        (SMARTPLUG, b"{"),
        (SMARTPLUG, b"[]]"),
        (SMARTPLUG, b"{}"),
        (
            SMARTPLUG,
            br#"{"voltage": 1, "current": 1, "power": -1e999}"#,
        ),
        (
            SMARTPLUG,
            br#"{"voltage": 1, "current": 1, "power": 1, "ts": 1}"#,
        ),
    ];
    let mut reasons: Vec<&str> = examples
        .iter()
        .map(|(topic, payload)| refuse(topic, payload).reason())
        .collect();
    reasons.dedup();
    // "[]]" is not JSON either: trailing characters.
    assert_eq!(
        reasons,
        [
            "unknown_topic",
            "bad_device_id",
            "too_large",
            "not_json",
            "missing_field",
            "non_finite",
            "bad_timestamp"
        ]
    );
    assert_eq!(refuse(SMARTPLUG, "true").reason(), "wrong_type");
    assert_eq!(MqttDecodeError::REASONS.len(), 8);
}

// ---- Tasmota ----

#[test]
fn tasmota_sensor_reading() {
    let b = accept(SENSOR, TASMOTA_SENSOR);
    assert_eq!(
        b.get(0),
        ReadingRef {
            device_id: "tasmota_A1B2C3",
            // Time is the plug's local time without a zone: arrival time instead.
            ts: NOW,
            voltage: 230.0,
            current: 0.196,
            power: 45.0,
            energy: Some(1234.0),
            relay_on: None,
            location: None,
            device_type: None,
        }
    );
}

#[test]
fn tasmota_sensor_first_channel_and_other_sensors() {
    let b = accept(
        SENSOR,
        r#"{"Time":"2024-01-01T12:00:00","AM2301":{"Temperature":21.5,"Humidity":40},
            "ENERGY":{"Total":[1.5,2.5],"Power":[12,34],"Voltage":231,"Current":[0.1,0.2,0.3]},
            "TempUnit":"C"}"#,
    );
    let r = b.get(0);
    assert_eq!(
        (r.power, r.voltage, r.current, r.energy),
        (12.0, 231.0, 0.1, Some(1500.0))
    );
    let b = accept(
        SENSOR,
        r#"{"ENERGY":{"Total":null,"Power":1,"Voltage":2,"Current":3}}"#,
    );
    assert_eq!(b.get(0).energy, None);
}

#[test]
fn tasmota_state_sets_relay_for_later_sensor_readings() {
    let mut decoder = MqttDecoder::default();
    assert_eq!(accept_with(&mut decoder, STATE, TASMOTA_STATE_ON).len(), 0);
    assert_eq!(decoder.relay_state("tasmota_A1B2C3"), Some(true));
    let b = accept_with(&mut decoder, SENSOR, TASMOTA_SENSOR);
    assert_eq!(b.get(0).relay_on, Some(true));

    accept_with(&mut decoder, STATE, r#"{"POWER1":"OFF","POWER2":"ON"}"#);
    let b = accept_with(&mut decoder, SENSOR, TASMOTA_SENSOR);
    assert_eq!(b.get(0).relay_on, Some(false));

    // Another plug's state does not leak; a STATE without POWER changes nothing.
    accept_with(&mut decoder, "tele/other/STATE", r#"{"POWER":"ON"}"#);
    accept_with(&mut decoder, STATE, r#"{"Uptime":"0T00:00:10"}"#);
    let b = accept_with(&mut decoder, SENSOR, TASMOTA_SENSOR);
    assert_eq!(b.get(0).relay_on, Some(false));
    let b = accept_with(&mut decoder, "tele/unknown/SENSOR", TASMOTA_SENSOR);
    assert_eq!(b.get(0).relay_on, None);

    // A refused STATE leaves the cache alone.
    let e = refuse_with(&mut decoder, STATE, r#"{"POWER":"ON","POWER1":"TOGGLE"}"#);
    assert_eq!(
        e.to_string(),
        "line 1, column 32: field \"POWER1\": expected a relay state (true, false, \"on\", \
         \"off\", 1 or 0), found \"TOGGLE\""
    );
    assert_eq!(decoder.relay_state("tasmota_A1B2C3"), Some(false));
    let e = refuse_with(&mut decoder, STATE, r#"{"POWER":"ON"} {"#);
    assert_eq!(e.reason(), "not_json");
    assert_eq!(decoder.relay_state("tasmota_A1B2C3"), Some(false));
    assert_eq!(
        refuse_with(&mut decoder, STATE, "[]").reason(),
        "wrong_type"
    );
}

#[test]
fn tasmota_relay_cache_is_bounded() {
    let mut decoder = MqttDecoder::new(MqttDecoderConfig {
        relay_cache_capacity: 8,
        ..MqttDecoderConfig::default()
    });
    for i in 0..1_000 {
        let topic = format!("tele/plug-{i}/STATE");
        accept_with(&mut decoder, &topic, r#"{"POWER":"ON"}"#);
        assert!(decoder.remembered_relays() <= 8);
    }
    assert_eq!(decoder.relay_state("plug-999"), Some(true));
    assert_eq!(decoder.relay_state("plug-0"), None);

    let mut off = MqttDecoder::new(MqttDecoderConfig {
        relay_cache_capacity: 0,
        ..MqttDecoderConfig::default()
    });
    accept_with(&mut off, STATE, TASMOTA_STATE_ON);
    assert_eq!(off.relay_state("tasmota_A1B2C3"), None);
}

#[test]
fn tasmota_sensor_errors() {
    let cases: [(&str, &str, &str); 9] = [
        (
            r#"{"Time":"2024-01-01T12:00:00","AM2301":{"Temperature":21.5}}"#,
            "missing_field",
            "line 1, column 60: missing field \"ENERGY\"",
        ),
        (
            r#"{"ENERGY":{"Power":45,"Current":0.2}}"#,
            "missing_field",
            "missing field \"ENERGY.Voltage\"",
        ),
        (
            r#"{"ENERGY":[45]}"#,
            "wrong_type",
            "line 1, column 11: field \"ENERGY\": expected an object, found an array",
        ),
        (
            r#"{"ENERGY":{"Power":"45","Voltage":230,"Current":0.2}}"#,
            "wrong_type",
            "field \"ENERGY.Power\": expected a number or an array of numbers (one per channel), found \"45\"",
        ),
        (
            r#"{"ENERGY":{"Power":[],"Voltage":230,"Current":0.2}}"#,
            "wrong_type",
            "field \"ENERGY.Power\": expected a number or an array of numbers (one per channel), found an array",
        ),
        (
            r#"{"ENERGY":{"Power":[1e999],"Voltage":230,"Current":0.2}}"#,
            "non_finite",
            "field \"ENERGY.Power\": the number is beyond the range of a 64-bit float",
        ),
        (
            r#"{"ENERGY":{"Total":1e306,"Power":1,"Voltage":230,"Current":0.2}}"#,
            "non_finite",
            "field \"ENERGY.Total\": 1e306 kWh is beyond the range of a 64-bit float in Wh",
        ),
        (
            "[]",
            "wrong_type",
            "line 1, column 2: expected an object, found an array",
        ),
        (
            r#"{"Time":"2024-01-01T12:00:00","ENERGY":{"Power":nan}}"#,
            "not_json",
            "not JSON: expected ident at line 1 column 50",
        ),
    ];
    for (payload, reason, want) in cases {
        let e = refuse(SENSOR, payload);
        assert_eq!(e.reason(), reason, "{payload}: {e}");
        assert!(e.to_string().contains(want), "{payload}: {e}");
    }
}

// ---- Shelly ----

#[test]
fn shelly_switch_reading() {
    let b = accept(SHELLY, SHELLY_STATUS);
    assert_eq!(
        b.get(0),
        ReadingRef {
            device_id: "shellyplusplugs-80646fc9c3a0",
            ts: NOW,
            voltage: 230.1,
            current: 0.052,
            power: 12.3,
            energy: Some(1234.567),
            relay_on: Some(true),
            location: None,
            device_type: None,
        }
    );
    let b = accept(
        SHELLY,
        r#"{"id":0,"output":false,"apower":0,"voltage":229,"current":0,"aenergy":null}"#,
    );
    let r = b.get(0);
    assert_eq!((r.relay_on, r.energy, r.power), (Some(false), None, 0.0));
    let b = accept(
        SHELLY,
        r#"{"apower":1,"voltage":2,"current":3,"aenergy":{"by_minute":[]}}"#,
    );
    assert_eq!((b.get(0).relay_on, b.get(0).energy), (None, None));
}

#[test]
fn shelly_switch_errors() {
    let cases: [(&str, &str, &str); 5] = [
        (
            r#"{"id":0,"output":true,"temperature":{"tC":40}}"#,
            "missing_field",
            "missing field \"apower\"",
        ),
        (
            r#"{"apower":1,"voltage":2,"current":3,"aenergy":5}"#,
            "wrong_type",
            "field \"aenergy\": expected an object, found 5",
        ),
        (
            r#"{"apower":1,"voltage":2,"current":3,"aenergy":{"total":"x"}}"#,
            "wrong_type",
            "field \"aenergy.total\": expected a number, found \"x\"",
        ),
        (
            r#"{"apower":1,"voltage":2,"current":3,"output":"maybe"}"#,
            "wrong_type",
            "field \"output\": expected a relay state",
        ),
        (
            r#"{"apower":1,"voltage":2e400,"current":3}"#,
            "non_finite",
            "field \"voltage\": the number is beyond",
        ),
    ];
    for (payload, reason, want) in cases {
        let e = refuse(SHELLY, payload);
        assert_eq!(e.reason(), reason, "{payload}: {e}");
        assert!(e.to_string().contains(want), "{payload}: {e}");
    }
}

#[test]
fn decoding_appends_after_existing_rows() {
    let mut decoder = MqttDecoder::default();
    let mut batch = sentinel();
    let n = decoder
        .decode_message(SHELLY, SHELLY_STATUS.as_bytes(), NOW, &mut batch)
        .unwrap();
    assert_eq!((n, batch.len()), (1, 2));
    assert_eq!(batch.get(0).device_id, "before");
    let n = decoder
        .decode_message(
            SMARTPLUG,
            format!("[{},{}]", obj(""), obj("")).as_bytes(),
            NOW,
            &mut batch,
        )
        .unwrap();
    assert_eq!((n, batch.len()), (2, 4));
}

#[test]
fn found_values_are_quoted_and_cut_short() {
    let long = "x".repeat(500);
    let e = relay_of(&format!("\"{long}\"")).unwrap_err();
    let message = e.to_string();
    assert!(message.len() < 300, "{message}");
    assert!(matches!(
        e,
        MqttDecodeError::WrongType {
            found: Found::String(ref s),
            ..
        } if s.is_truncated()
    ));
}
