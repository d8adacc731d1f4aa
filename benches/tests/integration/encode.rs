use wattdb_benches::{Fleet, FleetConfig, Reading, encode_json, encode_lp};
use wattdb_ingest::{Precision, ReadingBatch, decode_json_readings, decode_line_protocol};

fn fleet() -> Fleet {
    Fleet::new(FleetConfig {
        plugs: 300,
        seed: 5,
        late_share: 0.05,
        duplicate_share: 0.05,
        out_of_order_share: 0.05,
        relay_off_probability: 0.01,
        reset_probability: 1e-3,
        ..FleetConfig::default()
    })
}

/// Encodes 30 s of the fleet with `encode`, decodes it with `decode`, and compares.
fn round_trip(
    encode: impl Fn(&Reading<'_>, &mut Vec<u8>),
    decode: impl Fn(&[u8], &mut ReadingBatch) -> usize,
) {
    let mut fleet = fleet();
    let mut body = Vec::new();
    let mut expected = Vec::new();
    for _ in 0..30 {
        fleet.next_second(&mut |r| {
            encode(r, &mut body);
            expected.push(want(r));
        });
    }
    let mut got = ReadingBatch::new();
    assert_eq!(decode(&body, &mut got), expected.len());
    assert_eq!(got.len(), expected.len());
    for (i, want) in expected.iter().enumerate() {
        assert_eq!(&decoded(&got, i), want, "reading {i}");
        let r = got.get(i);
        // The decimals on the wire are the plug's resolution.
        assert_eq!((r.voltage * 10.0).round() / 10.0, r.voltage);
        assert_eq!((r.power * 10.0).round() / 10.0, r.power);
        assert_eq!((r.current * 1000.0).round() / 1000.0, r.current);
    }
    assert!(expected.len() > 8000);
}

/// A reading as the decoders give it back (owned).
#[derive(Debug, PartialEq)]
struct Expected {
    device_id: String,
    ts: i64,
    voltage: f64,
    current: f64,
    power: f64,
    energy: Option<f64>,
    relay_on: Option<bool>,
    location: Option<String>,
    device_type: Option<String>,
}

fn want(r: &Reading<'_>) -> Expected {
    Expected {
        device_id: r.device_id().to_owned(),
        ts: r.ts,
        voltage: r.voltage(),
        current: r.current(),
        power: r.power(),
        energy: Some(r.energy()),
        relay_on: Some(r.relay_on),
        location: Some(r.plug.location().to_owned()),
        device_type: Some(r.plug.device_type().as_str().to_owned()),
    }
}

fn decoded(batch: &ReadingBatch, i: usize) -> Expected {
    let r = batch.get(i);
    Expected {
        device_id: r.device_id.to_owned(),
        ts: r.ts,
        voltage: r.voltage,
        current: r.current,
        power: r.power,
        energy: r.energy,
        relay_on: r.relay_on,
        location: r.location.map(str::to_owned),
        device_type: r.device_type.map(str::to_owned),
    }
}

#[test]
fn line_protocol_decodes_to_the_simulated_readings() {
    round_trip(encode_lp, |body, out| {
        decode_line_protocol(body, Precision::Ns, 0, out).unwrap()
    });
}

#[test]
fn json_decodes_to_the_simulated_readings() {
    round_trip(
        |r, out| {
            out.push(if out.is_empty() { b'[' } else { b',' });
            encode_json(r, out);
        },
        |body, out| {
            let mut body = body.to_vec();
            body.push(b']');
            decode_json_readings(&body, 0, out).unwrap()
        },
    );
}

#[test]
fn one_line_looks_like_influx() {
    let mut fleet = fleet();
    let mut line = Vec::new();
    let mut json = Vec::new();
    let mut first = true;
    fleet.next_second(&mut |r| {
        if first {
            encode_lp(r, &mut line);
            encode_json(r, &mut json);
            first = false;
        }
    });
    let line = String::from_utf8(line).unwrap();
    assert!(
        line.starts_with("power_metrics,device_id=plug-000000,location="),
        "{line}"
    );
    assert!(line.contains(",device_type="));
    assert!(line.contains(" voltage="));
    assert!(line.ends_with('\n'));
    let json: serde_json::Value = serde_json::from_slice(&json).unwrap();
    assert_eq!(json["device_id"], "plug-000000");
    assert!(json["ts"].is_i64());
    assert!(json["relay_state"].is_boolean());
}
