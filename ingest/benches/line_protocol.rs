//! Decoder throughput on realistic write requests: 5,000 readings from a fleet of 1,000
//! plugs, as Telegraf or the load generator would send them.
//!
//! `cargo bench -p wattdb-ingest --bench line_protocol`

use std::fmt::Write as _;
use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use wattdb_ingest::line_protocol::decode_line_protocol_general;
use wattdb_ingest::{Precision, ReadingBatch, decode_json_readings, decode_line_protocol};

const PLUGS: u64 = 1_000;
const ROWS: usize = 5_000;
const START_NS: i64 = 1_700_000_000_000_000_000;
const LOCATIONS: [&str; 6] = [
    "kitchen",
    "living_room",
    "office",
    "garage",
    "bedroom",
    "lab",
];
const DEVICE_TYPES: [&str; 5] = ["fridge", "tv", "washer", "heater", "server"];

/// A small deterministic generator (xorshift64*), so the bench needs no `rand`.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// One reading of one plug, at the plugs' resolution: 0.1 V, 1 mA, 0.1 W, 0.1 Wh.
struct Reading {
    plug: u64,
    ts: i64,
    deci_volts: u64,
    milliamps: u64,
    deci_watts: u64,
    deci_wh: u64,
    relay_on: bool,
}

fn readings() -> Vec<Reading> {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    (0..ROWS)
        .map(|i| {
            let plug = i as u64 % PLUGS;
            let milliamps = rng.below(12_000);
            let deci_volts = 2_250 + rng.below(100);
            Reading {
                plug,
                ts: START_NS
                    + (i as i64 / PLUGS as i64) * 1_000_000_000
                    + rng.below(1_000_000) as i64,
                deci_volts,
                milliamps,
                deci_watts: deci_volts * milliamps / 1_000,
                deci_wh: 10_000 + plug * 731 + rng.below(50_000),
                relay_on: milliamps > 0 || rng.below(2) == 1,
            }
        })
        .collect()
}

fn tenths(v: u64) -> String {
    format!("{}.{}", v / 10, v % 10)
}

fn line_protocol_body(readings: &[Reading]) -> Vec<u8> {
    let mut body = String::new();
    for r in readings {
        let _ = writeln!(
            body,
            "power_metrics,device_id=plug-{:06},location={},device_type={} \
             voltage={},current={}.{:03},power={},energy={},relay_state={} {}",
            r.plug,
            LOCATIONS[(r.plug % 6) as usize],
            DEVICE_TYPES[(r.plug % 5) as usize],
            tenths(r.deci_volts),
            r.milliamps / 1_000,
            r.milliamps % 1_000,
            tenths(r.deci_watts),
            tenths(r.deci_wh),
            r.relay_on,
            r.ts,
        );
    }
    body.into_bytes()
}

fn json_body(readings: &[Reading]) -> Vec<u8> {
    let mut body = String::from("[");
    for (i, r) in readings.iter().enumerate() {
        if i > 0 {
            body.push_str(",\n");
        }
        let _ = write!(
            body,
            r#"{{"device_id":"plug-{:06}","ts":{},"voltage":{},"current":{}.{:03},"power":{},"energy":{},"relay_state":{},"location":"{}","device_type":"{}"}}"#,
            r.plug,
            r.ts,
            tenths(r.deci_volts),
            r.milliamps / 1_000,
            r.milliamps % 1_000,
            tenths(r.deci_watts),
            tenths(r.deci_wh),
            r.relay_on,
            LOCATIONS[(r.plug % 6) as usize],
            DEVICE_TYPES[(r.plug % 5) as usize],
        );
    }
    body.push(']');
    body.into_bytes()
}

fn decode_lp(body: &[u8], batch: &mut ReadingBatch) -> usize {
    batch.clear();
    match decode_line_protocol(black_box(body), Precision::Ns, START_NS, batch) {
        Ok(n) => n,
        Err(e) => panic!("bench body refused: {e}"),
    }
}

fn decode_lp_general(body: &[u8], batch: &mut ReadingBatch) -> usize {
    batch.clear();
    match decode_line_protocol_general(black_box(body), Precision::Ns, START_NS, batch) {
        Ok(n) => n,
        Err(e) => panic!("bench body refused: {e}"),
    }
}

fn decode_json(body: &[u8], batch: &mut ReadingBatch) -> usize {
    batch.clear();
    match decode_json_readings(black_box(body), START_NS, batch) {
        Ok(n) => n,
        Err(e) => panic!("bench body refused: {e}"),
    }
}

/// A decoder under test: clears the batch, decodes the body, returns the row count.
type Decode = fn(&[u8], &mut ReadingBatch) -> usize;

fn bench(c: &mut Criterion) {
    let readings = readings();
    let bodies: [(&str, Vec<u8>, Decode); 3] = [
        ("line_protocol", line_protocol_body(&readings), decode_lp),
        // The same body through the general scanners alone: what the decoder's
        // shortcuts for the common spellings save.
        (
            "line_protocol_general",
            line_protocol_body(&readings),
            decode_lp_general,
        ),
        ("json", json_body(&readings), decode_json),
    ];
    let mut batch = ReadingBatch::with_capacity(ROWS);
    for (format, body, decode) in &bodies {
        assert_eq!(decode(body, &mut batch), ROWS);

        let mut bytes = c.benchmark_group(format!("{format}/bytes"));
        bytes.throughput(Throughput::Bytes(body.len() as u64));
        bytes.bench_function(BenchmarkId::new("decode", ROWS), |b| {
            b.iter(|| decode(body, &mut batch));
        });
        bytes.finish();

        let mut rows = c.benchmark_group(format!("{format}/rows"));
        rows.throughput(Throughput::Elements(ROWS as u64));
        rows.bench_function(BenchmarkId::new("decode", ROWS), |b| {
            b.iter(|| decode(body, &mut batch));
        });
        rows.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
