//! How fast the simulator makes readings and the encoders turn them into bodies: the
//! load generator must outrun the server it measures, on one core.
//!
//! `cargo bench -p wattdb-benches --bench simulator`

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use wattdb_benches::{Fleet, FleetConfig, Reading, encode_json, encode_lp};

const PLUGS: u32 = 10_000;

fn fleet() -> Fleet {
    Fleet::new(FleetConfig {
        plugs: PLUGS,
        seed: 1,
        late_share: 0.001,
        duplicate_share: 0.001,
        out_of_order_share: 0.005,
        ..FleetConfig::default()
    })
}

/// Bytes one simulated second of the fleet encodes to.
fn bytes_per_second(encode: fn(&Reading<'_>, &mut Vec<u8>)) -> u64 {
    let mut f = fleet();
    let mut body = Vec::new();
    f.next_second(&mut |r| encode(r, &mut body));
    body.len() as u64
}

fn simulator(c: &mut Criterion) {
    let mut g = c.benchmark_group("simulator");

    g.throughput(Throughput::Elements(u64::from(PLUGS)));
    g.bench_function("generate_10k_plugs_1s", |b| {
        let mut f = fleet();
        b.iter(|| {
            let mut n = 0u64;
            f.next_second(&mut |r| n += u64::from(black_box(r).power_dw));
            n
        });
    });

    g.throughput(Throughput::Bytes(bytes_per_second(encode_lp)));
    g.bench_function("generate_and_encode_lp_10k_plugs_1s", |b| {
        let mut f = fleet();
        let mut body = Vec::with_capacity(4 << 20);
        b.iter(|| {
            body.clear();
            f.next_second(&mut |r| encode_lp(r, &mut body));
            black_box(body.len())
        });
    });

    g.throughput(Throughput::Bytes(bytes_per_second(encode_json)));
    g.bench_function("generate_and_encode_json_10k_plugs_1s", |b| {
        let mut f = fleet();
        let mut body = Vec::with_capacity(4 << 20);
        b.iter(|| {
            body.clear();
            f.next_second(&mut |r| {
                body.push(b',');
                encode_json(r, &mut body);
            });
            black_box(body.len())
        });
    });

    // Encoding alone, over readings generated once.
    let mut f = fleet();
    let mut fields = Vec::new();
    f.next_second(&mut |r| {
        fields.push((
            r.plug_index,
            r.tick,
            r.ts,
            r.voltage_dv,
            r.current_ma,
            r.power_dw,
            r.energy_cwh,
            r.relay_on,
            r.delivery,
        ))
    });
    let readings: Vec<Reading<'_>> = fields
        .iter()
        .map(
            |&(plug, tick, ts, v, i, p, e, relay_on, delivery)| Reading {
                plug: &f.plugs()[plug as usize],
                plug_index: plug,
                tick,
                ts,
                voltage_dv: v,
                current_ma: i,
                power_dw: p,
                energy_cwh: e,
                relay_on,
                delivery,
            },
        )
        .collect();
    g.throughput(Throughput::Bytes(bytes_per_second(encode_lp)));
    g.bench_function("encode_lp_10k_readings", |b| {
        let mut body = Vec::with_capacity(4 << 20);
        b.iter(|| {
            body.clear();
            for r in &readings {
                encode_lp(r, &mut body);
            }
            black_box(body.len())
        });
    });
    g.finish();
}

criterion_group!(benches, simulator);
criterion_main!(benches);
