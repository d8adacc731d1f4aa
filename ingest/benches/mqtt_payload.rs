//! MQTT decoder throughput on realistic messages from a fleet of 1,000 plugs: one
//! smart-plug JSON reading per message, gateway arrays of 100 readings, Tasmota SENSOR
//! (with relay states remembered from STATE) and STATE, Shelly Gen2 switch status.
//! One decoder decodes every message of a round, as the subscriber's would.
//!
//! `cargo bench -p wattdb-ingest --bench mqtt_payload`

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use wattdb_ingest::{MqttDecoder, ReadingBatch};

const PLUGS: u64 = 1_000;
const ARRAY_LEN: u64 = 100;
const NOW_NS: i64 = 1_700_000_000_000_000_000;

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

/// One plug's values at the plugs' resolution: 0.1 V, 1 mA, 0.1 W, 0.1 Wh.
struct Values {
    deci_volts: u64,
    milliamps: u64,
    deci_watts: u64,
    deci_wh: u64,
    relay_on: bool,
}

impl Values {
    fn new(rng: &mut Rng, plug: u64) -> Self {
        let milliamps = rng.below(12_000);
        let deci_volts = 2_250 + rng.below(100);
        Self {
            deci_volts,
            milliamps,
            deci_watts: deci_volts * milliamps / 1_000,
            deci_wh: 10_000 + plug * 731 + rng.below(50_000),
            relay_on: milliamps > 0 || rng.below(2) == 1,
        }
    }

    fn volts(&self) -> String {
        tenths(self.deci_volts)
    }

    fn amps(&self) -> String {
        format!("{}.{:03}", self.milliamps / 1_000, self.milliamps % 1_000)
    }

    fn watts(&self) -> String {
        tenths(self.deci_watts)
    }
}

fn tenths(v: u64) -> String {
    format!("{}.{}", v / 10, v % 10)
}

fn smartplug_object(v: &Values, ts: i64) -> String {
    format!(
        r#"{{"ts":{},"voltage":{},"current":{},"power":{},"energy":{},"relay_state":{}}}"#,
        ts,
        v.volts(),
        v.amps(),
        v.watts(),
        tenths(v.deci_wh),
        v.relay_on,
    )
}

/// A round of messages: (topic, payload).
type Messages = Vec<(String, Vec<u8>)>;

fn smartplug_single(rng: &mut Rng) -> Messages {
    (0..PLUGS)
        .map(|plug| {
            let v = Values::new(rng, plug);
            let ts = NOW_NS / 1_000_000 - rng.below(1_000) as i64;
            (
                format!("smartplug/plug-{plug:06}/telemetry"),
                smartplug_object(&v, ts).into_bytes(),
            )
        })
        .collect()
}

fn smartplug_arrays(rng: &mut Rng) -> Messages {
    (0..PLUGS / ARRAY_LEN)
        .map(|gateway| {
            let objects: Vec<String> = (0..ARRAY_LEN)
                .map(|i| {
                    let plug = gateway * ARRAY_LEN + i;
                    let v = Values::new(rng, plug);
                    let object = smartplug_object(&v, NOW_NS / 1_000_000_000);
                    format!(r#"{{"device_id":"plug-{plug:06}",{}"#, &object[1..])
                })
                .collect();
            (
                format!("smartplug/gateway-{gateway:02}/telemetry"),
                format!("[{}]", objects.join(",")).into_bytes(),
            )
        })
        .collect()
}

fn tasmota_sensor(rng: &mut Rng) -> Messages {
    (0..PLUGS)
        .map(|plug| {
            let v = Values::new(rng, plug);
            let payload = format!(
                r#"{{"Time":"2023-11-14T23:13:20","ENERGY":{{"TotalStartTime":"2023-06-01T10:00:00","Total":{}.{:03},"Yesterday":0.456,"Today":0.078,"Period":0,"Power":{},"ApparentPower":{},"ReactivePower":21,"Factor":0.90,"Voltage":{},"Current":{}}}}}"#,
                v.deci_wh / 10_000,
                v.deci_wh / 10 % 1_000,
                v.deci_watts / 10,
                v.deci_watts / 9,
                v.deci_volts / 10,
                v.amps(),
            );
            (
                format!("tele/tasmota_{plug:06X}/SENSOR"),
                payload.into_bytes(),
            )
        })
        .collect()
}

fn tasmota_state(rng: &mut Rng) -> Messages {
    (0..PLUGS)
        .map(|plug| {
            let power = if rng.below(4) == 0 { "OFF" } else { "ON" };
            let payload = format!(
                r#"{{"Time":"2023-11-14T23:13:20","Uptime":"3T04:05:06","UptimeSec":273906,"Heap":25,"SleepMode":"Dynamic","Sleep":50,"LoadAvg":19,"MqttCount":1,"POWER":"{power}","Wifi":{{"AP":1,"SSId":"home","BSSId":"AA:BB:CC:DD:EE:FF","Channel":6,"Mode":"11n","RSSI":80,"Signal":-60,"LinkCount":1,"Downtime":"0T00:00:05"}}}}"#,
            );
            (
                format!("tele/tasmota_{plug:06X}/STATE"),
                payload.into_bytes(),
            )
        })
        .collect()
}

fn shelly_switch(rng: &mut Rng) -> Messages {
    (0..PLUGS)
        .map(|plug| {
            let v = Values::new(rng, plug);
            let payload = format!(
                r#"{{"id":0,"source":"timer","output":{},"apower":{},"voltage":{},"freq":50.0,"current":{},"pf":0.93,"aenergy":{{"total":{},"by_minute":[101.2,99.8,100.4],"minute_ts":1700000000}},"ret_aenergy":{{"total":0.000,"by_minute":[0.0,0.0,0.0],"minute_ts":1700000000}},"temperature":{{"tC":41.2,"tF":106.2}}}}"#,
                v.relay_on,
                v.watts(),
                v.volts(),
                v.amps(),
                tenths(v.deci_wh),
            );
            (
                format!("shellyplusplugs-{plug:012x}/status/switch:0"),
                payload.into_bytes(),
            )
        })
        .collect()
}

/// Decodes every message of a round into the cleared batch; returns the readings.
fn decode_round(decoder: &mut MqttDecoder, messages: &Messages, batch: &mut ReadingBatch) -> usize {
    batch.clear();
    for (topic, payload) in messages {
        if let Err(e) = decoder.decode_message(topic, black_box(payload), NOW_NS, batch) {
            panic!("bench message on {topic} refused: {e}");
        }
    }
    batch.len()
}

fn bench(c: &mut Criterion) {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut decoder = MqttDecoder::default();
    let states = tasmota_state(&mut rng);
    let cases: [(&str, Messages); 5] = [
        ("smartplug_single", smartplug_single(&mut rng)),
        ("smartplug_array100", smartplug_arrays(&mut rng)),
        ("tasmota_sensor", tasmota_sensor(&mut rng)),
        ("tasmota_state", states),
        ("shelly_switch", shelly_switch(&mut rng)),
    ];
    let mut batch = ReadingBatch::with_capacity(PLUGS as usize);
    // The SENSOR readings find every plug's relay state remembered.
    decode_round(&mut decoder, &cases[3].1, &mut batch);
    for (name, messages) in &cases {
        let readings = decode_round(&mut decoder, messages, &mut batch);
        let bytes: usize = messages.iter().map(|(_, p)| p.len()).sum();
        println!(
            "{name}: {} messages, {readings} readings, {} payload bytes per round",
            messages.len(),
            bytes
        );

        let mut group = c.benchmark_group(format!("mqtt/{name}/messages"));
        group.throughput(Throughput::Elements(messages.len() as u64));
        group.bench_function(BenchmarkId::new("decode", messages.len()), |b| {
            b.iter(|| decode_round(&mut decoder, messages, &mut batch));
        });
        group.finish();

        if readings > 0 && readings != messages.len() {
            let mut group = c.benchmark_group(format!("mqtt/{name}/readings"));
            group.throughput(Throughput::Elements(readings as u64));
            group.bench_function(BenchmarkId::new("decode", readings), |b| {
                b.iter(|| decode_round(&mut decoder, messages, &mut batch));
            });
            group.finish();
        }
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(50)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
