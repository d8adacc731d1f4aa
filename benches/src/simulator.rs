//! A deterministic fleet of smart plugs.
//!
//! [`Fleet::next_second`] advances simulated time by one second and hands out one
//! [`Reading`] per plug (plus the late, out-of-order and duplicated readings that fall
//! due in that second). The same [`FleetConfig`] gives the same readings, byte for byte.
//!
//! What makes the readings look like real plugs:
//!
//! - Each plug drives one appliance ([`DeviceType`]) with on/off phases: a fridge
//!   compressor (~100 W for 6–10 min, off 10–15 min, a 3× start-up spike), a kettle
//!   (2–3 kW for 2–4 min, a few times a day), a heater on a thermostat, a TV, a PC with a
//!   fluctuating load, phone and EV chargers, a lamp. Off means standby (0.5–2 W).
//! - Mains voltage follows a daily swing and a slow random walk around 230 V; each plug
//!   adds its own offset (wiring) and measurement noise.
//! - Values have the resolution plugs report: voltage 0.1 V, power 0.1 W, current 1 mA
//!   (≈ power / (voltage × power factor)), energy 0.01 Wh. They are kept as integers in
//!   those units ([`Reading::voltage_dv`], …) so that tests can check resolution exactly
//!   and encoders print them without float formatting.
//! - Energy is a cumulative counter in Wh integrated from power; with
//!   [`FleetConfig::reset_probability`] per reading it resets to 0 (a firmware update, a
//!   factory reset).
//! - The user switches a plug's relay off now and then (1 min – 2 h): power and current
//!   are 0 while it is off; voltage is still measured.
//! - Delivery: a share of readings arrives late (ts 5 s – 5 min in the past), a share
//!   out of order (1–3 s behind), and a share is resent 1–5 s after its first delivery
//!   (same device, ts and values). See [`Delivery`].
//!
//! Nothing is allocated per reading: plug ids and the encoders' line prefixes are built
//! once, and held-back readings wait in a ring of reusable buffers.

use std::f64::consts::TAU;

use crate::rng::Rng;

/// Nanoseconds in a second.
pub const NS_PER_S: i64 = 1_000_000_000;

/// Late readings are held back this many seconds (inclusive range).
pub const LATE_DELAY_S: (u32, u32) = (5, 300);
/// Out-of-order readings are held back this many seconds (inclusive range).
pub const OUT_OF_ORDER_DELAY_S: (u32, u32) = (1, 3);
/// A duplicate is resent this many seconds after the first delivery (inclusive range).
pub const DUPLICATE_DELAY_S: (u32, u32) = (1, 5);

/// Slots in the ring of held-back readings; longer than any delay.
const RING: usize = 512;
const _: () = assert!((LATE_DELAY_S.1 + DUPLICATE_DELAY_S.1) < RING as u32);

/// How a [`Fleet`] behaves. Shares are fractions of the distinct readings, in `[0, 1]`.
#[derive(Debug, Clone, PartialEq)]
pub struct FleetConfig {
    /// Number of plugs, `plug-000000` … .
    pub plugs: u32,
    /// Same seed, same readings.
    pub seed: u64,
    /// Simulated time of the first second, in ns since the Unix epoch.
    pub start_ns: i64,
    /// Share of readings delivered late, [`LATE_DELAY_S`] after their time.
    pub late_share: f64,
    /// Share of readings resent once more, [`DUPLICATE_DELAY_S`] after the first time.
    pub duplicate_share: f64,
    /// Share of readings delivered [`OUT_OF_ORDER_DELAY_S`] behind their successors.
    pub out_of_order_share: f64,
    /// Chance per reading that the plug's energy counter resets to 0.
    pub reset_probability: f64,
    /// Chance per second that the user switches a plug's relay off (for 1 min – 2 h).
    pub relay_off_probability: f64,
}

impl Default for FleetConfig {
    fn default() -> Self {
        Self {
            plugs: 1000,
            seed: 0,
            start_ns: 1_700_000_000 * NS_PER_S,
            late_share: 0.0,
            duplicate_share: 0.0,
            out_of_order_share: 0.0,
            reset_probability: 1e-5,
            relay_off_probability: 1.0 / 86_400.0,
        }
    }
}

/// The appliance behind a plug; the `device_type` tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeviceType {
    Fridge,
    Kettle,
    Heater,
    Tv,
    Pc,
    PhoneCharger,
    EvCharger,
    Lamp,
}

impl DeviceType {
    pub const ALL: [Self; 8] = [
        Self::Fridge,
        Self::Kettle,
        Self::Heater,
        Self::Tv,
        Self::Pc,
        Self::PhoneCharger,
        Self::EvCharger,
        Self::Lamp,
    ];

    /// The tag value: `fridge`, `kettle`, `heater`, `tv`, `pc`, `phone_charger`,
    /// `ev_charger`, `lamp`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Fridge => "fridge",
            Self::Kettle => "kettle",
            Self::Heater => "heater",
            Self::Tv => "tv",
            Self::Pc => "pc",
            Self::PhoneCharger => "phone_charger",
            Self::EvCharger => "ev_charger",
            Self::Lamp => "lamp",
        }
    }

    /// Share of the fleet.
    const fn weight(self) -> f64 {
        match self {
            Self::Fridge | Self::Tv | Self::Pc | Self::PhoneCharger | Self::Lamp => 0.15,
            Self::Kettle | Self::Heater => 0.10,
            Self::EvCharger => 0.05,
        }
    }

    /// Rooms such an appliance stands in.
    const fn locations(self) -> &'static [&'static str] {
        match self {
            Self::Fridge | Self::Kettle => &["kitchen"],
            Self::Heater => &["living_room", "bedroom", "office", "bathroom"],
            Self::Tv => &["living_room", "bedroom"],
            Self::Pc => &["office", "bedroom"],
            Self::PhoneCharger => &["bedroom", "living_room", "office"],
            Self::EvCharger => &["garage"],
            Self::Lamp => &["living_room", "bedroom", "office", "hallway"],
        }
    }

    const fn profile(self) -> Profile {
        const H: u32 = 3600;
        match self {
            Self::Fridge => Profile::new((360, 600), (600, 900), (80.0, 130.0), 0.03, 0.8, 3.0),
            Self::Kettle => Profile::new((120, 240), (H, 6 * H), (2000.0, 3000.0), 0.01, 1.0, 1.0),
            Self::Heater => Profile::new((300, 900), (300, 1800), (1000.0, 2000.0), 0.01, 1.0, 1.0),
            Self::Tv => Profile::new((H, 4 * H), (2 * H, 10 * H), (60.0, 150.0), 0.08, 0.9, 1.0),
            Self::Pc => Profile::new((H, 8 * H), (2 * H, 16 * H), (60.0, 250.0), 0.15, 0.95, 1.0),
            Self::PhoneCharger => {
                Profile::new((H, 3 * H), (3 * H, 20 * H), (5.0, 18.0), 0.05, 0.6, 1.0)
            }
            Self::EvCharger => Profile::new(
                (2 * H, 8 * H),
                (10 * H, 40 * H),
                (1800.0, 2300.0),
                0.01,
                0.99,
                1.0,
            ),
            Self::Lamp => Profile::new((H, 5 * H), (4 * H, 16 * H), (8.0, 60.0), 0.01, 0.9, 1.0),
        }
    }
}

/// An appliance's on/off cycle.
#[derive(Debug, Clone, Copy)]
struct Profile {
    /// Seconds on, inclusive range.
    on_s: (u32, u32),
    /// Seconds off (standby), inclusive range.
    off_s: (u32, u32),
    /// Power while on, W.
    level_w: (f64, f64),
    /// Relative fluctuation of the power while on.
    jitter: f64,
    /// Power factor: current = power / (voltage × pf).
    pf: f64,
    /// Power multiplier for the first 2 s of an on phase (motor start-up).
    spike: f64,
}

impl Profile {
    const fn new(
        on_s: (u32, u32),
        off_s: (u32, u32),
        level_w: (f64, f64),
        jitter: f64,
        pf: f64,
        spike: f64,
    ) -> Self {
        Self {
            on_s,
            off_s,
            level_w,
            jitter,
            pf,
            spike,
        }
    }
}

/// The id of the simulated plug with this index: `plug-000007`.
pub fn plug_id(index: u32) -> String {
    format!("plug-{index:06}")
}

/// One plug's identity and tags, and the encoders' precomputed prefixes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plug {
    id: Box<str>,
    location: &'static str,
    device_type: DeviceType,
    lp_prefix: Box<[u8]>,
    json_prefix: Box<[u8]>,
}

impl Plug {
    fn new(index: u32, location: &'static str, device_type: DeviceType) -> Self {
        let id = plug_id(index);
        let lp_prefix = format!(
            "power_metrics,device_id={id},location={location},device_type={} voltage=",
            device_type.as_str()
        );
        let json_prefix = format!(
            r#"{{"device_id":"{id}","location":"{location}","device_type":"{}","ts":"#,
            device_type.as_str()
        );
        Self {
            id: id.into_boxed_str(),
            location,
            device_type,
            lp_prefix: lp_prefix.into_bytes().into_boxed_slice(),
            json_prefix: json_prefix.into_bytes().into_boxed_slice(),
        }
    }

    /// `plug-000042`.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The `location` tag: `kitchen`, `living_room`, … .
    pub fn location(&self) -> &'static str {
        self.location
    }

    pub fn device_type(&self) -> DeviceType {
        self.device_type
    }

    /// `power_metrics,device_id=…,location=…,device_type=… voltage=`
    pub(crate) fn lp_prefix(&self) -> &[u8] {
        &self.lp_prefix
    }

    /// `{"device_id":"…","location":"…","device_type":"…","ts":`
    pub(crate) fn json_prefix(&self) -> &[u8] {
        &self.json_prefix
    }
}

/// How a reading reaches the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Delivery {
    /// In the second it was taken.
    OnTime,
    /// A few seconds late, after newer readings of the same plug.
    OutOfOrder,
    /// Seconds to minutes late (a plug that lost its connection and catches up).
    Late,
    /// A resend of a reading already delivered: same device, ts and values.
    Duplicate,
}

/// One reading as a plug reports it. Values are integers in the plug's resolution;
/// the methods give them in SI units.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reading<'a> {
    pub plug: &'a Plug,
    /// Index of the plug in the fleet (`plug-000042` → 42).
    pub plug_index: u32,
    /// Simulated second the reading was taken in, counted from the fleet's start.
    /// `(plug_index, tick)` identifies a distinct reading, as `(device_id, ts)` does.
    pub tick: u64,
    /// Nanoseconds since the Unix epoch.
    pub ts: i64,
    /// Voltage in 0.1 V.
    pub voltage_dv: u32,
    /// Current in mA.
    pub current_ma: u32,
    /// Active power in 0.1 W.
    pub power_dw: u32,
    /// Cumulative energy in 0.01 Wh.
    pub energy_cwh: u64,
    pub relay_on: bool,
    pub delivery: Delivery,
}

impl Reading<'_> {
    pub fn device_id(&self) -> &str {
        self.plug.id()
    }

    /// Volts. Exactly the `f64` that parsing the encoded decimal gives.
    pub fn voltage(&self) -> f64 {
        f64::from(self.voltage_dv) / 10.0
    }

    /// Amperes.
    pub fn current(&self) -> f64 {
        f64::from(self.current_ma) / 1000.0
    }

    /// Watts.
    pub fn power(&self) -> f64 {
        f64::from(self.power_dw) / 10.0
    }

    /// Watt-hours.
    pub fn energy(&self) -> f64 {
        self.energy_cwh as f64 / 100.0
    }
}

/// A reading held back for later delivery.
#[derive(Debug, Clone, Copy)]
struct Sample {
    plug: u32,
    tick: u64,
    ts: i64,
    voltage_dv: u32,
    current_ma: u32,
    power_dw: u32,
    energy_cwh: u64,
    relay_on: bool,
    delivery: Delivery,
}

impl Sample {
    fn reading<'a>(&self, plug: &'a Plug) -> Reading<'a> {
        Reading {
            plug,
            plug_index: self.plug,
            tick: self.tick,
            ts: self.ts,
            voltage_dv: self.voltage_dv,
            current_ma: self.current_ma,
            power_dw: self.power_dw,
            energy_cwh: self.energy_cwh,
            relay_on: self.relay_on,
            delivery: self.delivery,
        }
    }
}

/// What a plug remembers from one second to the next.
#[derive(Debug, Clone)]
struct PlugState {
    profile: Profile,
    /// Offset of the plug's reports within each second.
    phase_ns: i64,
    /// Wiring: this socket's offset from the mains voltage, V.
    v_offset: f64,
    standby_w: f64,
    /// Power while on in the current phase, W.
    level_w: f64,
    appliance_on: bool,
    /// Seconds left in the current on/off phase.
    left: u32,
    /// Seconds since the current phase began.
    since: u32,
    relay_on: bool,
    /// Seconds until the user switches the relay back on.
    relay_left: u32,
    /// Energy counter in 0.1 J (one 0.1 W second); 360 of them are 0.01 Wh.
    energy_dj: u64,
}

/// A fleet of simulated plugs. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct Fleet {
    config: FleetConfig,
    plugs: Vec<Plug>,
    states: Vec<PlugState>,
    rng: Rng,
    /// Next simulated second to produce.
    tick: u64,
    /// Slowly wandering part of the mains voltage, V.
    mains_drift: f64,
    /// Held-back readings, by the tick they are due in (modulo `RING`).
    ring: Vec<Vec<Sample>>,
    pending: usize,
    late_below: u64,
    out_of_order_below: u64,
    duplicate_below: u64,
    reset_below: u64,
    relay_off_below: u64,
}

/// `p` as a threshold for `next_u64() < threshold`.
fn threshold(p: f64) -> u64 {
    if p.is_nan() || p <= 0.0 {
        0
    } else if p >= 1.0 {
        u64::MAX
    } else {
        (p * 18_446_744_073_709_551_616.0) as u64
    }
}

impl Fleet {
    pub fn new(config: FleetConfig) -> Self {
        let mut rng = Rng::new(config.seed);
        let weights = DeviceType::ALL.map(DeviceType::weight);
        let n = config.plugs as usize;
        let mut plugs = Vec::with_capacity(n);
        let mut states = Vec::with_capacity(n);
        for i in 0..config.plugs {
            let device_type = DeviceType::ALL[rng.weighted(&weights)];
            let rooms = device_type.locations();
            let location = rooms[rng.range_u32(0, rooms.len() as u32 - 1) as usize];
            plugs.push(Plug::new(i, location, device_type));
            let profile = device_type.profile();
            // Start somewhere inside a phase, so that the fleet is not in step.
            let appliance_on = rng.unit() < 0.3;
            let (lo, hi) = if appliance_on {
                profile.on_s
            } else {
                profile.off_s
            };
            let phase_len = rng.range_u32(lo, hi);
            states.push(PlugState {
                profile,
                phase_ns: i64::from(rng.range_u32(0, 999)) * 1_000_000,
                v_offset: rng.range_f64(-3.0, 3.0),
                standby_w: rng.range_f64(0.5, 2.0),
                level_w: rng.range_f64(profile.level_w.0, profile.level_w.1),
                appliance_on,
                left: rng.range_u32(0, phase_len),
                since: 1_000,
                relay_on: true,
                relay_left: 0,
                // The counter has a history: 0–500 kWh.
                energy_dj: (rng.range_f64(0.0, 500_000.0) * 36_000.0) as u64,
            });
        }
        Self {
            late_below: threshold(config.late_share),
            out_of_order_below: threshold(config.late_share + config.out_of_order_share),
            duplicate_below: threshold(config.duplicate_share),
            reset_below: threshold(config.reset_probability),
            relay_off_below: threshold(config.relay_off_probability),
            config,
            plugs,
            states,
            rng,
            tick: 0,
            mains_drift: 0.0,
            ring: vec![Vec::new(); RING],
            pending: 0,
        }
    }

    pub fn config(&self) -> &FleetConfig {
        &self.config
    }

    pub fn plugs(&self) -> &[Plug] {
        &self.plugs
    }

    /// Simulated seconds produced so far; the tick of the next [`next_second`](Self::next_second).
    pub fn tick(&self) -> u64 {
        self.tick
    }

    /// Start of the next simulated second, ns since the Unix epoch.
    pub fn now_ns(&self) -> i64 {
        self.config.start_ns + self.tick as i64 * NS_PER_S
    }

    /// Readings held back (late, out of order, duplicates) and not yet delivered.
    pub fn pending(&self) -> usize {
        self.pending
    }

    /// Simulates one second: hands `f` the held-back readings due now, then the fresh
    /// reading of every plug that is delivered on time.
    pub fn next_second(&mut self, f: &mut impl FnMut(&Reading<'_>)) {
        let tick = self.tick;
        self.deliver_due(tick, f);

        // Mains: a daily swing of ±3 V (lowest in the evening peak), a bounded random
        // walk, then per-plug offset and noise below.
        let t_s = self.config.start_ns / NS_PER_S + tick as i64;
        let day = (t_s.rem_euclid(86_400)) as f64 / 86_400.0;
        self.mains_drift = (self.mains_drift + 0.05 * self.rng.tri()).clamp(-2.0, 2.0);
        let mains = 230.0 - 3.0 * (TAU * (day - 0.8)).cos() + self.mains_drift;

        let base_ts = self.config.start_ns + tick as i64 * NS_PER_S;
        let held = self.out_of_order_below > 0 || self.duplicate_below > 0;
        let Self {
            plugs,
            states,
            rng,
            ring,
            pending,
            late_below,
            out_of_order_below,
            duplicate_below,
            reset_below,
            relay_off_below,
            ..
        } = self;
        for (i, (plug, s)) in plugs.iter().zip(states.iter_mut()).enumerate() {
            // The user's relay.
            if s.relay_left > 0 {
                s.relay_left -= 1;
                s.relay_on = s.relay_left == 0;
            } else if *relay_off_below > 0 && rng.next_u64() < *relay_off_below {
                s.relay_on = false;
                s.relay_left = rng.range_u32(60, 7200);
            }
            // The appliance's cycle.
            if s.left == 0 {
                s.appliance_on = !s.appliance_on;
                s.since = 0;
                let (lo, hi) = if s.appliance_on {
                    s.level_w = rng.range_f64(s.profile.level_w.0, s.profile.level_w.1);
                    s.profile.on_s
                } else {
                    s.profile.off_s
                };
                s.left = rng.range_u32(lo, hi);
            } else {
                s.left -= 1;
                s.since = s.since.saturating_add(1);
            }
            let noise = rng.tri();
            let power_w = if !s.relay_on {
                0.0
            } else if s.appliance_on {
                let spike = if s.since < 2 { s.profile.spike } else { 1.0 };
                s.level_w * spike * s.profile.jitter.mul_add(noise, 1.0)
            } else {
                s.standby_w * 0.05f64.mul_add(noise, 1.0)
            };
            let voltage_dv = ((mains + s.v_offset + 0.3 * rng.tri()) * 10.0).round() as u32;
            let power_dw = (power_w * 10.0).round() as u32;
            // From the reported values, as the plug's metering chip would.
            let current_ma = if power_dw == 0 {
                0
            } else {
                (f64::from(power_dw) * 1000.0 / (f64::from(voltage_dv) * s.profile.pf)).round()
                    as u32
            };
            s.energy_dj += u64::from(power_dw);
            if *reset_below > 0 && rng.next_u64() < *reset_below {
                s.energy_dj = 0;
            }
            let sample = Sample {
                plug: i as u32,
                tick,
                ts: base_ts + s.phase_ns,
                voltage_dv,
                current_ma,
                power_dw,
                energy_cwh: s.energy_dj / 360,
                relay_on: s.relay_on,
                delivery: Delivery::OnTime,
            };

            let mut delay = 0;
            let mut sample = sample;
            if held {
                let u = rng.next_u64();
                if u < *late_below {
                    delay = rng.range_u32(LATE_DELAY_S.0, LATE_DELAY_S.1);
                    sample.delivery = Delivery::Late;
                } else if u < *out_of_order_below {
                    delay = rng.range_u32(OUT_OF_ORDER_DELAY_S.0, OUT_OF_ORDER_DELAY_S.1);
                    sample.delivery = Delivery::OutOfOrder;
                }
                if *duplicate_below > 0 && rng.next_u64() < *duplicate_below {
                    let again = delay + rng.range_u32(DUPLICATE_DELAY_S.0, DUPLICATE_DELAY_S.1);
                    let dup = Sample {
                        delivery: Delivery::Duplicate,
                        ..sample
                    };
                    ring[(tick as usize + again as usize) % RING].push(dup);
                    *pending += 1;
                }
            }
            if delay == 0 {
                f(&sample.reading(plug));
            } else {
                ring[(tick as usize + delay as usize) % RING].push(sample);
                *pending += 1;
            }
        }
        self.tick += 1;
    }

    /// Delivers every held-back reading now, in the order they fall due (call at the
    /// end of a run that should leave nothing undelivered). Time does not advance.
    pub fn flush(&mut self, f: &mut impl FnMut(&Reading<'_>)) {
        for k in 0..RING as u64 {
            if self.pending == 0 {
                break;
            }
            self.deliver_due(self.tick + k, f);
        }
    }

    fn deliver_due(&mut self, tick: u64, f: &mut impl FnMut(&Reading<'_>)) {
        let slot = tick as usize % RING;
        if self.ring[slot].is_empty() {
            return;
        }
        let mut due = std::mem::take(&mut self.ring[slot]);
        for s in &due {
            f(&s.reading(&self.plugs[s.plug as usize]));
        }
        self.pending -= due.len();
        due.clear();
        self.ring[slot] = due;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threshold_edges() {
        assert_eq!(threshold(0.0), 0);
        assert_eq!(threshold(-1.0), 0);
        assert_eq!(threshold(1.0), u64::MAX);
        assert_eq!(threshold(0.5), 1 << 63);
    }

    #[test]
    fn plug_prefixes() {
        let p = Plug::new(7, "kitchen", DeviceType::Fridge);
        assert_eq!(p.id(), "plug-000007");
        assert_eq!(
            p.lp_prefix(),
            b"power_metrics,device_id=plug-000007,location=kitchen,device_type=fridge voltage="
        );
        assert_eq!(
            p.json_prefix(),
            br#"{"device_id":"plug-000007","location":"kitchen","device_type":"fridge","ts":"#
        );
    }
}
