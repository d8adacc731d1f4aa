//! The rollup tables the engine writes, against a recomputation from scratch.
//!
//! Random workloads go through a real engine on a local store: readings of a few plugs
//! across hour and day boundaries, with gaps longer than the cap, counter resets,
//! readings without a counter or relay state, late and out-of-order batches,
//! duplicates that rewrite a reading, persist cycles at random points, and restarts
//! (which drop the in-memory tails, so the next cycle recomputes). Afterwards the rows
//! of `readings_1m`, `readings_1h` and `readings_1d` (duplicates resolved by rank, as
//! queries resolve them) must equal [`compute`] and [`crate::rollup::roll_up`] applied
//! to the final readings, and the raw files must hold exactly those readings.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use wattdb_storage::{ReadingBatch, ReadingRef};

use super::*;
use crate::rollup::roll_up;
use crate::{Engine, EngineConfig, RetentionConfig};

const S: i64 = 1_000_000_000;
/// 2026-03-01 22:30 UTC: the workloads cross an hour boundary every hour and a day
/// boundary after 90 minutes.
const T0: i64 = 1_772_404_200 * S;

#[derive(Debug, Clone, PartialEq)]
struct Reading {
    device: String,
    s: Sample,
    location: Option<String>,
}

/// A plug's readings in time order, with the traits the issue asks for.
fn plug_readings(rng: &mut StdRng, device: &str, span_s: i64) -> Vec<Reading> {
    let mut out = Vec::new();
    let mut t = rng.random_range(0..120);
    let mut energy = rng.random_range(0.0..5000.0_f64);
    while t < span_s {
        let power = (rng.random_range(0..30_000) as f64) / 10.0;
        energy += power / 3600.0;
        if rng.random_bool(0.01) {
            energy = 0.0; // counter reset
        }
        out.push(Reading {
            device: device.to_owned(),
            s: Sample {
                ts: T0 + t * S + rng.random_range(0..1000),
                voltage: 230.0 + (rng.random_range(-50..50) as f64) / 10.0,
                current: power / 230.0,
                power,
                energy: rng
                    .random_bool(0.9)
                    .then_some((energy * 10.0).round() / 10.0),
                relay_on: match rng.random_range(0..10) {
                    0 => None,
                    1..=3 => Some(false),
                    _ => Some(true),
                },
            },
            location: rng
                .random_bool(0.5)
                .then(|| format!("room-{}", rng.random_range(0..3))),
        });
        t += match rng.random_range(0..100) {
            0..=2 => rng.random_range(301..1200), // a gap past the 300 s cap
            3..=5 => rng.random_range(100..300),
            _ => rng.random_range(1..20),
        };
    }
    out
}

fn to_batch(readings: &[Reading]) -> ReadingBatch {
    let mut b = ReadingBatch::new();
    for r in readings {
        b.push(ReadingRef {
            device_id: &r.device,
            ts: r.s.ts,
            voltage: r.s.voltage,
            current: r.s.current,
            power: r.s.power,
            energy: r.s.energy,
            relay_on: r.s.relay_on,
            location: r.location.as_deref(),
            device_type: None,
        });
    }
    b
}

fn config(dir: &std::path::Path) -> EngineConfig {
    EngineConfig {
        data_dir: dir.to_owned(),
        wal_segment_size: 1 << 20,
        persist_interval: std::time::Duration::from_secs(3600),
        retention: RetentionConfig::forever(),
        clock: crate::Clock::manual(T0 + 86_400 * S),
        ..EngineConfig::default()
    }
}

/// The live rows of a tier, one per key (raw: highest rank; rollups: merged), sorted by
/// plug and time.
async fn tier_rows(engine: &Engine, tier: Tier) -> Vec<RecordBatch> {
    let mut inputs = Vec::new();
    for f in engine.manifest().files.iter().filter(|f| f.tier == tier) {
        let body = engine.store().get(&f.object_path()).await.unwrap();
        for b in files::decode(body).unwrap() {
            inputs.push((f.rank(), b));
        }
    }
    match tier {
        Tier::Raw => {
            let schema = crate::schema::tier_schema(tier);
            vec![files::merge_newest(&schema, &inputs, tier.time_column()).unwrap()]
        }
        _ => vec![crate::merge_rollup_rows(&inputs).unwrap()],
    }
}

const REL_TOL: f64 = 1e-9;

fn close(a: f64, b: f64) -> bool {
    a == b || (a - b).abs() <= REL_TOL * a.abs().max(b.abs()).max(1.0)
}

fn same(got: &Partial, want: &Partial) -> bool {
    got.bucket == want.bucket
        && got.count == want.count
        && got.voltage_min == want.voltage_min
        && got.voltage_max == want.voltage_max
        && got.current_min == want.current_min
        && got.current_max == want.current_max
        && got.power_min == want.power_min
        && got.power_max == want.power_max
        && got.energy_first == want.energy_first
        && got.energy_last == want.energy_last
        && got.first_ts == want.first_ts
        && got.last_ts == want.last_ts
        && got.voltage_last == want.voltage_last
        && got.current_last == want.current_last
        && got.power_last == want.power_last
        && got.relay_last == want.relay_last
        && close(got.voltage_sum, want.voltage_sum)
        && close(got.current_sum, want.current_sum)
        && close(got.power_sum, want.power_sum)
        && close(got.energy_counter_wh, want.energy_counter_wh)
        && close(got.energy_wh, want.energy_wh)
        && close(got.relay_on_s, want.relay_on_s)
}

async fn check(engine: &Engine, model: &BTreeMap<(String, i64), Reading>, seed: u64) {
    // Raw files: exactly the model's readings.
    let raw = tier_rows(engine, Tier::Raw).await;
    let raw = RawRows::new(&raw[0]).unwrap();
    let got: Vec<(String, Sample)> = (0..raw.ts.len())
        .map(|i| (raw.device.value(i).to_owned(), raw.sample(i)))
        .collect();
    let want: Vec<(String, Sample)> = model.values().map(|r| (r.device.clone(), r.s)).collect();
    assert_eq!(got, want, "seed {seed}: raw readings");

    let cfg = RollupConfig::default();
    let mut by_plug: BTreeMap<&str, Vec<Sample>> = BTreeMap::new();
    for r in model.values() {
        by_plug.entry(&r.device).or_default().push(r.s);
    }
    for res in Resolution::ALL {
        let mut want: Vec<(String, Partial, Option<String>)> = Vec::new();
        for (device, samples) in &by_plug {
            let minute = compute(Resolution::Minute, None, None, samples, &cfg);
            let partials = match res {
                Resolution::Minute => minute,
                Resolution::Hour => roll_up(Resolution::Hour, &minute),
                Resolution::Day => roll_up(Resolution::Day, &roll_up(Resolution::Hour, &minute)),
            };
            for p in partials {
                let location = model[&(device.to_string(), p.last_ts)].location.clone();
                want.push((device.to_string(), p, location));
            }
        }
        let batches = tier_rows(engine, tier_of(res)).await;
        let got = batch_to_rows(&batches[0]).unwrap();
        assert_eq!(got.len(), want.len(), "seed {seed}: {res} rows");
        for (g, (device, p, location)) in got.iter().zip(&want) {
            assert!(
                &*g.device == device && same(&g.p, p),
                "seed {seed}: {res} row of {device} differs:\n got  {:?}\n want {p:?}",
                g.p
            );
            assert_eq!(
                g.location.as_deref(),
                location.as_deref(),
                "seed {seed}: tags"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollups_equal_a_recomputation_from_the_raw_readings() {
    for seed in 0..12u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        let dir = tempfile::tempdir().unwrap();
        // Cycles that sort and write their rows in one piece, and in pieces of a few
        // plugs (1: a plug each), whose recomputed plugs' rows are gathered apart.
        let config = |dir: &std::path::Path| EngineConfig {
            persist_piece_rows: [crate::persist::PIECE_ROWS, 1, 150, 600][seed as usize % 4],
            ..config(dir)
        };
        let mut engine = Engine::open(config(dir.path())).unwrap();
        // Plugs started with nothing persisted, and plugs recomputed, over every engine
        // of the run.
        let paths = |engine: &Engine| {
            let s = engine.stats();
            [
                s.rollup_new_plugs.load(Ordering::Relaxed),
                s.rollup_recomputed_plugs.load(Ordering::Relaxed),
            ]
        };
        let mut started = 0;
        let mut recomputed = 0;
        let plugs = rng.random_range(1..5);
        let span_s = rng.random_range(1_800..3 * 3_600);
        // Each plug's readings in chunks; chunks go out mostly in order, some late.
        let mut chunks: Vec<Vec<Reading>> = Vec::new();
        for p in 0..plugs {
            let readings = plug_readings(&mut rng, &format!("plug-{p}"), span_s);
            let mut i = 0;
            while i < readings.len() {
                let n = rng.random_range(1..200).min(readings.len() - i);
                chunks.push(readings[i..i + n].to_vec());
                i += n;
            }
        }
        // Interleave plugs by time, then move some chunks later (late data).
        chunks.sort_by_key(|c| c[0].s.ts);
        for _ in 0..chunks.len() / 8 {
            let from = rng.random_range(0..chunks.len());
            let to = rng.random_range(from..chunks.len());
            let c = chunks.remove(from);
            chunks.insert(to, c);
        }
        let mut model: BTreeMap<(String, i64), Reading> = BTreeMap::new();
        for chunk in chunks {
            let mut chunk = chunk;
            // Duplicates: rewrite a reading written before with other values.
            if rng.random_bool(0.2) && !model.is_empty() {
                let k = rng.random_range(0..model.len());
                let mut old = model.values().nth(k).unwrap().clone();
                old.s.power = (rng.random_range(0..30_000) as f64) / 10.0;
                old.s.energy = old.s.energy.map(|e| e + 0.1);
                chunk.push(old);
            }
            engine.write(to_batch(&chunk)).await.unwrap();
            for r in chunk {
                model.insert((r.device.clone(), r.s.ts), r);
            }
            match rng.random_range(0..20) {
                0..=2 => {
                    engine.persist().await.unwrap();
                }
                3 => {
                    // A restart: the tails are gone, the next cycle recomputes.
                    engine.persist().await.unwrap();
                    let [n, r] = paths(&engine);
                    (started, recomputed) = (started + n, recomputed + r);
                    engine.shutdown();
                    drop(engine);
                    engine = Engine::open(config(dir.path())).unwrap();
                }
                4 => {
                    // A crash: the buffer comes back from the WAL.
                    let [n, r] = paths(&engine);
                    (started, recomputed) = (started + n, recomputed + r);
                    engine.shutdown();
                    drop(engine);
                    engine = Engine::open(config(dir.path())).unwrap();
                }
                _ => {}
            }
        }
        engine.persist().await.unwrap();
        check(&engine, &model, seed).await;
        // Then each plug's first reading rewritten: persisted, so recomputed.
        let mut firsts: Vec<Reading> = Vec::new();
        for ((device, _), r) in &model {
            if firsts.last().is_none_or(|f| &f.device != device) {
                let mut r = r.clone();
                r.s.power += 1.0;
                firsts.push(r);
            }
        }
        engine.write(to_batch(&firsts)).await.unwrap();
        for r in firsts {
            model.insert((r.device.clone(), r.s.ts), r);
        }
        engine.persist().await.unwrap();
        check(&engine, &model, seed).await;
        // Compaction of every tier changes nothing.
        engine.compact().await.unwrap();
        check(&engine, &model, seed).await;
        let [n, r] = paths(&engine);
        (started, recomputed) = (started + n, recomputed + r);
        // The first cycle's plugs are new; late readings and restarts recompute.
        assert!(started > 0, "seed {seed}: no new plug was started");
        assert!(
            recomputed > 0,
            "seed {seed}: no recomputation was exercised"
        );
    }
}

/// Sum of `count` over the live rows of a rollup tier: readings covered.
async fn covered(engine: &Engine, res: Resolution) -> u64 {
    let rows = tier_rows(engine, tier_of(res)).await;
    batch_to_rows(&rows[0])
        .unwrap()
        .iter()
        .map(|r| r.p.count)
        .sum()
}

fn live(engine: &Engine, tier: Tier) -> Vec<FileMeta> {
    engine
        .manifest()
        .files
        .iter()
        .filter(|f| f.tier == tier)
        .cloned()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_expires_each_resolution_by_its_own_period_and_keeps_rollups_of_dropped_raw_data()
{
    const H: i64 = 3_600 * S;
    const D: i64 = 24 * H;
    let dir = tempfile::tempdir().unwrap();
    // Midnight UTC, so that hours and days are easy to count.
    let t0 = Resolution::Day.bucket_start(T0);
    let clock = crate::Clock::manual(t0);
    let engine = Engine::open(EngineConfig {
        retention: RetentionConfig {
            raw: Some(std::time::Duration::from_secs(2 * 3_600)),
            minute: Some(std::time::Duration::from_secs(86_400)),
            hour: Some(std::time::Duration::from_secs(10 * 86_400)),
            day: None,
        },
        clock: clock.clone(),
        compaction: crate::CompactionConfig {
            delete_after: std::time::Duration::ZERO,
            ..Default::default()
        },
        ..config(dir.path())
    })
    .unwrap();
    // One reading a minute for 6 hours: hours 0 to 5 of day 0.
    let readings: Vec<Reading> = (0..360)
        .map(|m| Reading {
            device: "plug-1".into(),
            s: Sample {
                ts: t0 + m * 60 * S,
                voltage: 230.0,
                current: 1.0,
                power: 230.0,
                energy: Some(m as f64),
                relay_on: Some(true),
            },
            location: None,
        })
        .collect();
    engine.write(to_batch(&readings)).await.unwrap();
    engine.persist().await.unwrap();
    assert_eq!(live(&engine, Tier::Raw).len(), 6);

    // 06:30: raw readings before 04:30 expire, so hours 0 to 3 (whole hours only).
    clock.set(t0 + 6 * H + 30 * 60 * S);
    let report = engine.expire().await.unwrap();
    assert_eq!(report.files, [4, 0, 0, 0]);
    assert_eq!(report.rows[0], 240);
    let raw = live(&engine, Tier::Raw);
    assert_eq!(raw.len(), 2);
    assert!(raw.iter().all(|f| f.min_ts >= t0 + 4 * H));
    // The rollups of the dropped readings are still there.
    for res in Resolution::ALL {
        assert_eq!(covered(&engine, res).await, 360, "{res}");
    }

    // A reading for 01:00, now older than the raw data kept: stored, but it does not
    // recompute rollups from the two hours of raw data left.
    let late = Reading {
        s: Sample {
            ts: t0 + H + 30 * S,
            ..readings[0].s
        },
        ..readings[0].clone()
    };
    engine.write(to_batch(&[late])).await.unwrap();
    engine.persist().await.unwrap();
    assert_eq!(engine.stats().rollup_too_late.load(Ordering::Relaxed), 1);
    for res in Resolution::ALL {
        assert_eq!(covered(&engine, res).await, 360, "{res}");
    }

    // Two days on: all raw data and day 0's 1m rows are gone; 1h and 1d stay.
    clock.set(t0 + 2 * D + H);
    engine.expire().await.unwrap();
    assert!(live(&engine, Tier::Raw).is_empty());
    assert!(live(&engine, Tier::Minute).is_empty());
    assert_eq!(covered(&engine, Resolution::Hour).await, 360);
    assert_eq!(covered(&engine, Resolution::Day).await, 360);
    // Eleven days on: 1h rows too; 1d rows are kept forever.
    clock.set(t0 + 11 * D);
    engine.expire().await.unwrap();
    assert!(live(&engine, Tier::Hour).is_empty());
    assert_eq!(covered(&engine, Resolution::Day).await, 360);
    // Expired files leave the store once their grace period is over.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let on_disk = walk(&dir.path().join("readings"));
        if on_disk.iter().all(|p| p.contains("resolution=1d")) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{on_disk:?}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p.to_string_lossy().into_owned());
            }
        }
    }
    out
}

/// A plug's rows hold one copy of each tag: shared between its rows, and with its
/// previous row (the tail's) while the tag stays the same; a changed tag is a new one.
#[test]
fn a_plugs_rows_share_its_tag_strings_with_each_other_and_its_tail() {
    let reading = |minute: i64, location: &str| Reading {
        device: "plug-1".into(),
        s: Sample {
            ts: T0 + minute * 60 * S,
            voltage: 230.0,
            current: 0.5,
            power: 100.0,
            energy: Some(minute as f64),
            relay_on: Some(true),
        },
        location: Some(location.into()),
    };
    let readings = [
        reading(0, "kitchen"),
        reading(1, "kitchen"),
        reading(2, "hall"),
    ];
    let batch = crate::schema::to_record_batch(&[&to_batch(&readings)]);
    let raw = RawRows::new(&batch).unwrap();
    let samples: Vec<Sample> = readings.iter().map(|r| r.s).collect();
    let cfg = RollupConfig::default();
    let device: Arc<str> = Arc::from("plug-1");
    let partials = compute(Resolution::Minute, None, None, &samples, &cfg);
    let earlier = Row {
        device: Arc::clone(&device),
        p: partials[0].clone(),
        location: Some(Arc::from("kitchen")),
        device_type: None,
        partial: false,
    };
    let rows = tagged(
        &device,
        &raw,
        0,
        &samples,
        partials,
        Some((&earlier.location, &earlier.device_type)),
    );
    let tags: Vec<&Arc<str>> = rows.iter().map(|r| r.location.as_ref().unwrap()).collect();
    assert_eq!(
        tags.iter().map(|t| &***t).collect::<Vec<_>>(),
        ["kitchen", "kitchen", "hall"]
    );
    let known = earlier.location.as_ref().unwrap();
    assert!(Arc::ptr_eq(tags[0], known) && Arc::ptr_eq(tags[1], known));
    assert!(rows.iter().all(|r| Arc::ptr_eq(&r.device, &device)));
    assert!(rows.iter().all(|r| r.device_type.is_none()));
}
