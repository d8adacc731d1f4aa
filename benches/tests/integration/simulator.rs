use std::collections::{HashMap, HashSet};

use wattdb_benches::simulator::{LATE_DELAY_S, NS_PER_S, OUT_OF_ORDER_DELAY_S};
use wattdb_benches::{Delivery, DeviceType, Fleet, FleetConfig, encode_lp};

/// An owned copy of a reading.
#[derive(Debug, Clone, PartialEq)]
pub struct Owned {
    pub plug: u32,
    pub tick: u64,
    pub ts: i64,
    pub voltage_dv: u32,
    pub current_ma: u32,
    pub power_dw: u32,
    pub energy_cwh: u64,
    pub relay_on: bool,
    pub delivery: Delivery,
    pub device_type: DeviceType,
    /// The tick in which it was delivered.
    pub delivered: u64,
    /// Delivered by the final `flush`, early.
    pub flushed: bool,
}

/// Runs `seconds` simulated seconds and then flushes.
pub fn simulate(config: FleetConfig, seconds: u64) -> Vec<Owned> {
    let mut fleet = Fleet::new(config);
    let mut out = Vec::new();
    for _ in 0..seconds {
        let now = fleet.tick();
        fleet.next_second(&mut |r| out.push(owned(r, now, false)));
    }
    let now = fleet.tick();
    fleet.flush(&mut |r| out.push(owned(r, now, true)));
    assert_eq!(fleet.pending(), 0);
    out
}

fn owned(r: &wattdb_benches::Reading<'_>, delivered: u64, flushed: bool) -> Owned {
    Owned {
        plug: r.plug_index,
        tick: r.tick,
        ts: r.ts,
        voltage_dv: r.voltage_dv,
        current_ma: r.current_ma,
        power_dw: r.power_dw,
        energy_cwh: r.energy_cwh,
        relay_on: r.relay_on,
        delivery: r.delivery,
        device_type: r.plug.device_type(),
        delivered,
        flushed,
    }
}

fn messy(plugs: u32, seed: u64) -> FleetConfig {
    FleetConfig {
        plugs,
        seed,
        late_share: 0.02,
        duplicate_share: 0.03,
        out_of_order_share: 0.05,
        ..FleetConfig::default()
    }
}

#[test]
fn same_seed_same_readings() {
    let encode = |seed| {
        let mut fleet = Fleet::new(messy(100, seed));
        let mut body = Vec::new();
        for _ in 0..120 {
            fleet.next_second(&mut |r| encode_lp(r, &mut body));
        }
        body
    };
    let a = encode(7);
    assert!(!a.is_empty());
    assert_eq!(a, encode(7));
    assert_ne!(a, encode(8));
}

#[test]
fn ids_tags_and_timestamps() {
    let config = FleetConfig {
        plugs: 1500,
        ..FleetConfig::default()
    };
    let start = config.start_ns;
    let fleet = Fleet::new(config);
    assert_eq!(fleet.plugs()[0].id(), "plug-000000");
    assert_eq!(fleet.plugs()[1499].id(), "plug-001499");
    let types: HashSet<_> = fleet.plugs().iter().map(|p| p.device_type()).collect();
    assert_eq!(
        types.len(),
        DeviceType::ALL.len(),
        "every appliance appears"
    );
    assert!(fleet.plugs().iter().any(|p| p.location() == "kitchen"));
    assert!(
        fleet
            .plugs()
            .iter()
            .filter(|p| p.device_type() == DeviceType::Fridge)
            .all(|p| p.location() == "kitchen")
    );

    let readings = simulate(
        FleetConfig {
            plugs: 50,
            ..FleetConfig::default()
        },
        10,
    );
    assert_eq!(readings.len(), 500, "one reading per plug per second");
    for r in &readings {
        assert_eq!(r.delivery, Delivery::OnTime);
        let second_start = start + r.tick as i64 * NS_PER_S;
        assert!((second_start..second_start + NS_PER_S).contains(&r.ts));
        assert_eq!(r.ts % 1_000_000, 0, "plugs report with ms precision");
    }
}

#[test]
fn values_are_plausible_at_plug_resolution() {
    let readings = simulate(
        FleetConfig {
            plugs: 2000,
            relay_off_probability: 0.01,
            ..FleetConfig::default()
        },
        60,
    );
    let mut relay_off = 0;
    let mut big = 0;
    let mut standby = 0;
    for r in &readings {
        let v = f64::from(r.voltage_dv) / 10.0;
        assert!((215.0..=245.0).contains(&v), "voltage {v}");
        let p = f64::from(r.power_dw) / 10.0;
        assert!(p <= 3680.0 * 1.1, "power {p} beyond a 16 A plug");
        let i = f64::from(r.current_ma) / 1000.0;
        if p == 0.0 {
            assert_eq!(r.current_ma, 0);
        } else {
            // current = power / (voltage × pf), pf in [0.6, 1], at 1 mA resolution.
            let pf = p / (v * i);
            assert!(
                (0.55..=1.05).contains(&pf) || r.current_ma < 20,
                "pf {pf}: {r:?}"
            );
        }
        if !r.relay_on {
            relay_off += 1;
            assert_eq!(r.power_dw, 0);
            assert_eq!(r.current_ma, 0);
        } else if p >= 1000.0 {
            big += 1;
        } else if p <= 2.2 {
            standby += 1;
        }
    }
    assert!(relay_off > 0, "some relays are off");
    assert!(big > 0, "kettles, heaters and EV chargers draw kW");
    assert!(
        standby > readings.len() / 5,
        "most appliances are mostly on standby"
    );
}

#[test]
fn fridge_compressor_cycles() {
    let config = FleetConfig {
        plugs: 200,
        relay_off_probability: 0.0,
        ..FleetConfig::default()
    };
    let readings = simulate(config, 3600);
    let mut by_plug: HashMap<u32, Vec<&Owned>> = HashMap::new();
    for r in readings
        .iter()
        .filter(|r| r.device_type == DeviceType::Fridge)
    {
        by_plug.entry(r.plug).or_default().push(r);
    }
    assert!(!by_plug.is_empty());
    for rs in by_plug.values() {
        let on = rs.iter().filter(|r| r.power_dw >= 700).count();
        let share = on as f64 / rs.len() as f64;
        // On 6–10 min out of every 16–25 min.
        assert!((0.15..=0.6).contains(&share), "fridge on {share}");
        let starts = rs
            .windows(2)
            .filter(|w| w[0].power_dw < 50 && w[1].power_dw >= 700)
            .count();
        assert!(
            (1..=6).contains(&starts),
            "{starts} compressor starts in an hour"
        );
    }
}

#[test]
fn energy_counts_up_and_sometimes_resets() {
    let readings = simulate(
        FleetConfig {
            plugs: 100,
            reset_probability: 1e-3,
            ..messy(100, 3)
        },
        300,
    );
    let mut by_plug: HashMap<u32, Vec<&Owned>> = HashMap::new();
    for r in readings
        .iter()
        .filter(|r| r.delivery != Delivery::Duplicate)
    {
        by_plug.entry(r.plug).or_default().push(r);
    }
    let mut resets = 0;
    for rs in by_plug.values_mut() {
        rs.sort_by_key(|r| r.ts);
        assert_eq!(rs.len(), 300);
        for w in rs.windows(2) {
            if w[1].energy_cwh < w[0].energy_cwh {
                resets += 1;
                // Back to zero, plus at most one second at 3.7 kW.
                assert!(w[1].energy_cwh <= 103, "reset to {}", w[1].energy_cwh);
            } else {
                // Integrated from power: at most one second of it (+ rounding).
                let gained = (w[1].energy_cwh - w[0].energy_cwh) as f64 / 100.0;
                let wh = f64::from(w[1].power_dw) / 10.0 / 3600.0;
                assert!(gained <= wh + 0.011, "{gained} Wh from {wh} Wh");
            }
        }
    }
    // 30 000 readings at 1e-3.
    assert!((10..=60).contains(&resets), "{resets} resets");
}

#[test]
fn delivery_shares_and_delays() {
    let config = messy(500, 11);
    let start = config.start_ns;
    let seconds = 200;
    let readings = simulate(config, seconds);
    let distinct: HashSet<(u32, u64)> = readings.iter().map(|r| (r.plug, r.tick)).collect();
    assert_eq!(
        distinct.len(),
        500 * seconds as usize,
        "every reading delivered"
    );

    let count = |d| readings.iter().filter(|r| r.delivery == d).count() as f64;
    let n = distinct.len() as f64;
    let near = |got: f64, share: f64| (got / n - share).abs() <= share * 0.1;
    assert!(
        near(count(Delivery::Late), 0.02),
        "late {}",
        count(Delivery::Late)
    );
    assert!(near(count(Delivery::OutOfOrder), 0.05));
    assert!(near(count(Delivery::Duplicate), 0.03));

    let mut first: HashMap<(u32, u64), &Owned> = HashMap::new();
    for r in &readings {
        let lag = r.delivered - r.tick;
        if r.delivery == Delivery::Duplicate {
            assert!(
                first.contains_key(&(r.plug, r.tick)),
                "resent after the original"
            );
        }
        match r.delivery {
            _ if r.flushed => assert!(r.delivery != Delivery::OnTime),
            Delivery::OnTime => assert_eq!(lag, 0),
            Delivery::Late => {
                assert!((u64::from(LATE_DELAY_S.0)..=u64::from(LATE_DELAY_S.1)).contains(&lag));
            }
            Delivery::OutOfOrder => {
                let (lo, hi) = OUT_OF_ORDER_DELAY_S;
                assert!((u64::from(lo)..=u64::from(hi)).contains(&lag));
            }
            Delivery::Duplicate => {
                let orig = first[&(r.plug, r.tick)];
                assert!(
                    r.delivered > orig.delivered,
                    "resent after the first delivery"
                );
                let same = |o: &Owned| (o.ts, o.voltage_dv, o.power_dw, o.energy_cwh);
                assert_eq!(same(orig), same(r), "a resend carries the same values");
            }
        }
        if r.delivery != Delivery::Duplicate {
            assert!(first.insert((r.plug, r.tick), r).is_none());
            assert_eq!((r.ts - start) / NS_PER_S, r.tick as i64);
        }
    }
}
