//! Rollup math: the rows of the `readings_1m`, `readings_1h` and `readings_1d` tables
//! for one plug, and which of them a batch of readings makes stale.
//!
//! Plain Rust types, no Arrow and no I/O, so that the definitions below can be tested
//! against a model; the engine converts readings to [`Sample`]s and [`Partial`]s to
//! Arrow. Nothing here knows plug ids: every function works on the readings of one plug.
//! Values are assumed finite (ingest refuses NaN and infinities).
//!
//! # Definitions
//!
//! **Buckets.** A bucket of resolution `r` is the half-open range `[b, b + width)`, where
//! `width` is [`Resolution::width_ns`] and `b` a multiple of it counted from the Unix
//! epoch. Unix time has no leap seconds, so 1d buckets are UTC calendar days.
//! [`Resolution::bucket_start`] floors, for times before 1970 too. Every 1m bucket lies
//! in exactly one 1h bucket, and every 1h bucket in exactly one 1d bucket.
//!
//! **Readings.** The readings `s_0, s_1, …` of one plug are ordered by time `t`, one
//! reading per time (a later write of the same time replaces the earlier one: last write
//! wins). `s_{i-1}` is the *predecessor* of `s_i`. `p` is power (W), `e` the energy
//! counter (Wh, optional, may reset), `relay` the relay state (optional).
//!
//! **A [`Partial`]** is one row of a rollup table: one plug, one bucket `B` that holds at
//! least one reading.
//! - `count`, `{voltage,current,power}_{min,max,sum}`: over the readings with `t` in `B`.
//!   Averages are `sum / count`.
//! - `first_ts`, `last_ts`: the times of the first and last reading in `B`.
//! - `{voltage,current,power}_last`, `relay_last`: the values of the last reading in `B`
//!   (the relay state may be `None`).
//! - `energy_first`, `energy_last`: the counter of the first and of the last reading in
//!   `B` that has one; `None` when none has.
//! - **Intervals, right attribution.** Interval `i` runs from `t_{i-1}` to `t_i` and is
//!   booked whole in the bucket of `t_i`, also when it starts in an earlier bucket. With
//!   `dt = t_i − t_{i-1}` and `dt_s` the same in seconds:
//!   - if `dt ≤ gap_cap` ([`RollupConfig::gap_cap_ns`]): `energy_wh += (p_{i-1} + p_i) / 2
//!     · dt_s / 3600` (trapezoid rule), and `relay_on_s += dt_s` if `relay_{i-1} ==
//!     Some(true)` (the relay holds its state until the next reading; unknown counts as
//!     not on);
//!   - if `dt > gap_cap`, the interval counts for nothing: data are missing.
//!
//!   The first reading of a plug has no interval.
//! - **Counter.** For a reading `i` with a counter value `e_i`, let `e_j` be the value of
//!   the nearest earlier reading that has one, however far back (the counter is
//!   cumulative, so no gap cap). `delta_i = e_i − e_j` if `e_i ≥ e_j`, else `e_i` (the
//!   counter was reset to zero and has counted up to `e_i` since). `energy_counter_wh +=
//!   delta_i` in the bucket of `t_i`. A reading without a counter value, or the plug's
//!   first one with a value, adds nothing.
//!
//! **Consequences.**
//! - A bucket's partial depends only on the readings in it, the predecessor of its first
//!   reading, and the nearest counter value before the bucket (the `e_j` of its first
//!   reading that has one). That is what [`compute`] takes.
//! - Every reading and every interval belongs to exactly one bucket at each resolution,
//!   so a coarser partial is the merge of the finer partials inside it
//!   ([`Partial::merge_from`], [`roll_up`]): sums add, min/max combine, `energy_first`
//!   comes from the earliest finer partial that has one and `energy_last` from the
//!   latest, `first_ts`/`last_ts` are the min/max. 1h partials are built from 1m and 1d
//!   from 1h, never from raw readings. This is exact in real arithmetic; in floating
//!   point, sums differ from a direct computation by rounding only (summation order).
//! - An interval that crosses a bucket boundary is not split. With the default 300 s gap
//!   cap, up to 5 minutes of energy and on-time can land in the 1m bucket (and, at the
//!   edges, the 1h or 1d bucket) after the one where they were spent. In exchange, a
//!   late reading changes at most the buckets listed below, and sums over consecutive
//!   buckets never count an interval twice or lose one.
//!
//! # Incremental maintenance
//!
//! When a batch of readings of one plug arrives (possibly late, out of order, or
//! replacing readings of the same time), exactly these 1m partials can change; in the
//! plug's timeline *after* the batch ([`dirty_buckets`]):
//! 1. the bucket of every written time (a reading there is new or replaced);
//! 2. the bucket of the successor of every written time (its interval starts at a
//!    reading that is new or replaced);
//! 3. the bucket of the first reading after every written time that has a counter value
//!    (its `e_j` may have changed: the written reading may have gained, lost or changed
//!    its value). When the readings in between have no counter value, this bucket can
//!    be far later than the successor's.
//!
//! No other partial changes: any other reading keeps its predecessor, its `e_j` and its
//! values. Each dirty 1m bucket is recomputed with [`compute`]; the dirty 1h buckets are
//! the hours of the dirty minutes ([`coarser_buckets`]), each rolled up from its 1m
//! partials, and the dirty 1d buckets the days of the dirty hours, from 1h partials.

use std::collections::BTreeSet;
use std::fmt;

const NS_PER_S: i64 = 1_000_000_000;

/// The resolution of a rollup table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Resolution {
    /// `readings_1m`, built from raw readings.
    Minute,
    /// `readings_1h`, built from 1m partials.
    Hour,
    /// `readings_1d`, built from 1h partials.
    Day,
}

impl Resolution {
    /// Finest first.
    pub const ALL: [Resolution; 3] = [Resolution::Minute, Resolution::Hour, Resolution::Day];

    pub const fn width_ns(self) -> i64 {
        match self {
            Resolution::Minute => 60 * NS_PER_S,
            Resolution::Hour => 3_600 * NS_PER_S,
            Resolution::Day => 86_400 * NS_PER_S,
        }
    }

    /// Start of the bucket holding `ts_ns`: `ts_ns` floored to a multiple of the width
    /// (so `-1` is in the bucket starting at `-width`). The buckets that would start
    /// before `i64::MIN` (the first partial bucket of the `i64` range, in 1677) start at
    /// `i64::MIN` instead.
    pub const fn bucket_start(self, ts_ns: i64) -> i64 {
        ts_ns.saturating_sub(ts_ns.rem_euclid(self.width_ns()))
    }

    /// The suffix of the table and of the `resolution=` directory: `1m`, `1h`, `1d`.
    pub const fn name(self) -> &'static str {
        match self {
            Resolution::Minute => "1m",
            Resolution::Hour => "1h",
            Resolution::Day => "1d",
        }
    }

    /// Inverse of [`Resolution::name`].
    pub fn from_name(name: &str) -> Option<Resolution> {
        Resolution::ALL.into_iter().find(|r| r.name() == name)
    }

    /// The resolution built from this one.
    pub const fn coarser(self) -> Option<Resolution> {
        match self {
            Resolution::Minute => Some(Resolution::Hour),
            Resolution::Hour => Some(Resolution::Day),
            Resolution::Day => None,
        }
    }

    /// The resolution this one is built from (`None` for 1m, built from raw readings).
    pub const fn finer(self) -> Option<Resolution> {
        match self {
            Resolution::Minute => None,
            Resolution::Hour => Some(Resolution::Minute),
            Resolution::Day => Some(Resolution::Hour),
        }
    }
}

impl fmt::Display for Resolution {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Settings of the rollup math.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RollupConfig {
    /// Longest time between two consecutive readings of a plug over which power is
    /// integrated into `energy_wh` and the relay state into `relay_on_s`; a longer
    /// interval is treated as missing data and counts for nothing. Default 300 s: plugs
    /// report every second, so this bridges reconnects and broker restarts without
    /// inventing energy across a plug that was unplugged or offline. A negative value
    /// makes every interval a gap. Changing it changes the meaning of existing partials:
    /// they must be recomputed.
    pub gap_cap_ns: i64,
}

impl Default for RollupConfig {
    fn default() -> Self {
        Self {
            gap_cap_ns: 300 * NS_PER_S,
        }
    }
}

/// One reading of one plug.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// Nanoseconds since the Unix epoch, UTC.
    pub ts: i64,
    /// V.
    pub voltage: f64,
    /// A.
    pub current: f64,
    /// Active power, W.
    pub power: f64,
    /// Cumulative energy counter, Wh; may reset.
    pub energy: Option<f64>,
    pub relay_on: Option<bool>,
}

/// One row of a rollup table: the mergeable partial aggregates of one plug over one
/// bucket. See the module documentation for the definition of each field.
#[derive(Debug, Clone, PartialEq)]
pub struct Partial {
    /// Start of the bucket, ns since the epoch.
    pub bucket: i64,
    /// Readings in the bucket (at least one).
    pub count: u64,
    pub voltage_min: f64,
    pub voltage_max: f64,
    pub voltage_sum: f64,
    pub current_min: f64,
    pub current_max: f64,
    pub current_sum: f64,
    pub power_min: f64,
    pub power_max: f64,
    pub power_sum: f64,
    /// Counter of the first reading in the bucket that has one.
    pub energy_first: Option<f64>,
    /// Counter of the last reading in the bucket that has one.
    pub energy_last: Option<f64>,
    /// Energy consumed according to the counter, resets handled, Wh.
    pub energy_counter_wh: f64,
    /// Energy integrated from power over the intervals ending in the bucket, Wh.
    pub energy_wh: f64,
    /// Time the relay was on over the intervals ending in the bucket, s.
    pub relay_on_s: f64,
    /// Time of the first reading in the bucket.
    pub first_ts: i64,
    /// Time of the last reading in the bucket.
    pub last_ts: i64,
    /// Values of the last reading in the bucket.
    pub voltage_last: f64,
    pub current_last: f64,
    pub power_last: f64,
    pub relay_last: Option<bool>,
}

/// What the interval and counter step ending at one reading add to its bucket.
#[derive(Debug, Clone, Copy, Default)]
struct Step {
    energy_wh: f64,
    relay_on_s: f64,
    energy_counter_wh: f64,
}

impl Step {
    fn new(
        prev: Option<&Sample>,
        prev_energy: Option<f64>,
        s: &Sample,
        cfg: &RollupConfig,
    ) -> Step {
        let mut step = Step::default();
        if let Some(prev) = prev {
            debug_assert!(prev.ts < s.ts, "readings must be sorted with unique times");
            // A span wider than i64 is wider than any cap.
            if let Some(dt) = s.ts.checked_sub(prev.ts)
                && dt <= cfg.gap_cap_ns
            {
                let dt_s = dt as f64 / NS_PER_S as f64;
                step.energy_wh = (prev.power + s.power) / 2.0 * dt_s / 3600.0;
                if prev.relay_on == Some(true) {
                    step.relay_on_s = dt_s;
                }
            }
        }
        if let (Some(before), Some(now)) = (prev_energy, s.energy) {
            step.energy_counter_wh = if now >= before { now - before } else { now };
        }
        step
    }
}

impl Partial {
    fn first(bucket: i64, s: &Sample, step: Step) -> Partial {
        Partial {
            bucket,
            count: 1,
            voltage_min: s.voltage,
            voltage_max: s.voltage,
            voltage_sum: s.voltage,
            current_min: s.current,
            current_max: s.current,
            current_sum: s.current,
            power_min: s.power,
            power_max: s.power,
            power_sum: s.power,
            energy_first: s.energy,
            energy_last: s.energy,
            energy_counter_wh: step.energy_counter_wh,
            energy_wh: step.energy_wh,
            relay_on_s: step.relay_on_s,
            first_ts: s.ts,
            last_ts: s.ts,
            voltage_last: s.voltage,
            current_last: s.current,
            power_last: s.power,
            relay_last: s.relay_on,
        }
    }

    fn push(&mut self, s: &Sample, step: Step) {
        debug_assert!(
            self.last_ts < s.ts,
            "readings must be sorted with unique times"
        );
        self.count += 1;
        self.voltage_min = self.voltage_min.min(s.voltage);
        self.voltage_max = self.voltage_max.max(s.voltage);
        self.voltage_sum += s.voltage;
        self.current_min = self.current_min.min(s.current);
        self.current_max = self.current_max.max(s.current);
        self.current_sum += s.current;
        self.power_min = self.power_min.min(s.power);
        self.power_max = self.power_max.max(s.power);
        self.power_sum += s.power;
        self.energy_first = self.energy_first.or(s.energy);
        self.energy_last = s.energy.or(self.energy_last);
        self.energy_counter_wh += step.energy_counter_wh;
        self.energy_wh += step.energy_wh;
        self.relay_on_s += step.relay_on_s;
        self.last_ts = s.ts;
        self.voltage_last = s.voltage;
        self.current_last = s.current;
        self.power_last = s.power;
        self.relay_last = s.relay_on;
    }

    /// Folds in the partial of the same plug over a `later` stretch of time (all its
    /// readings after this one's), as when building a coarser bucket from finer ones.
    /// `bucket` is left as it is.
    pub fn merge_from(&mut self, later: &Partial) {
        debug_assert!(self.last_ts < later.first_ts, "merge in time order");
        self.count += later.count;
        self.voltage_min = self.voltage_min.min(later.voltage_min);
        self.voltage_max = self.voltage_max.max(later.voltage_max);
        self.voltage_sum += later.voltage_sum;
        self.current_min = self.current_min.min(later.current_min);
        self.current_max = self.current_max.max(later.current_max);
        self.current_sum += later.current_sum;
        self.power_min = self.power_min.min(later.power_min);
        self.power_max = self.power_max.max(later.power_max);
        self.power_sum += later.power_sum;
        self.energy_first = self.energy_first.or(later.energy_first);
        self.energy_last = later.energy_last.or(self.energy_last);
        self.energy_counter_wh += later.energy_counter_wh;
        self.energy_wh += later.energy_wh;
        self.relay_on_s += later.relay_on_s;
        self.first_ts = self.first_ts.min(later.first_ts);
        self.last_ts = self.last_ts.max(later.last_ts);
        self.voltage_last = later.voltage_last;
        self.current_last = later.current_last;
        self.power_last = later.power_last;
        self.relay_last = later.relay_last;
    }
}

/// The partials at resolution `res` of one plug's `samples`, one per bucket that holds
/// a sample, in bucket order.
///
/// `samples` are sorted by time with unique times. `prev` is the plug's reading just
/// before `samples[0]` (its interval to `samples[0]` is booked in `samples[0]`'s bucket);
/// `prev_energy` is the counter of the nearest reading before `samples[0]` that has one
/// (`prev.energy` when that is `Some`). `None` means there is no such reading.
///
/// The engine calls it with [`Resolution::Minute`] for the samples of one dirty bucket;
/// coarser resolutions give the same partials as [`roll_up`] (up to rounding).
pub fn compute(
    res: Resolution,
    prev: Option<&Sample>,
    prev_energy: Option<f64>,
    samples: &[Sample],
    cfg: &RollupConfig,
) -> Vec<Partial> {
    debug_assert!(
        prev.and_then(|p| p.energy).is_none() || prev.and_then(|p| p.energy) == prev_energy,
        "prev_energy must be prev.energy when prev has one"
    );
    let mut out: Vec<Partial> = Vec::new();
    let mut prev = prev;
    let mut prev_energy = prev_energy;
    for s in samples {
        let step = Step::new(prev, prev_energy, s, cfg);
        let bucket = res.bucket_start(s.ts);
        match out.last_mut() {
            Some(p) if p.bucket == bucket => p.push(s, step),
            _ => out.push(Partial::first(bucket, s, step)),
        }
        prev = Some(s);
        prev_energy = s.energy.or(prev_energy);
    }
    out
}

/// Merges one plug's finer partials (sorted by bucket) into partials at resolution
/// `to`, one per coarser bucket that holds one, in bucket order.
pub fn roll_up(to: Resolution, finer: &[Partial]) -> Vec<Partial> {
    let mut out: Vec<Partial> = Vec::new();
    for p in finer {
        let bucket = to.bucket_start(p.bucket);
        match out.last_mut() {
            Some(c) if c.bucket == bucket => c.merge_from(p),
            _ => out.push(Partial {
                bucket,
                ..p.clone()
            }),
        }
    }
    out
}

/// The buckets at resolution `res` whose partials a batch of one plug's readings
/// changes (see "Incremental maintenance" in the module documentation).
///
/// `timeline` holds the plug's reading times after the batch is applied, sorted and
/// unique; `has_energy(i)` says whether the reading at `timeline[i]` has a counter
/// value; `written` holds the times the batch wrote (any order, repeats allowed), each
/// of which is in `timeline`.
///
/// Costs a binary search per written time, plus a scan for the next counter value that
/// stops at the next written time, so at most one pass over `timeline` in all.
pub fn dirty_buckets(
    res: Resolution,
    timeline: &[i64],
    has_energy: impl Fn(usize) -> bool,
    written: &[i64],
) -> BTreeSet<i64> {
    let mut at: Vec<usize> = written
        .iter()
        .filter_map(|t| {
            let i = timeline.binary_search(t);
            debug_assert!(i.is_ok(), "written time {t} is not in the timeline");
            i.ok()
        })
        .collect();
    at.sort_unstable();
    at.dedup();
    let mut dirty = BTreeSet::new();
    for (k, &i) in at.iter().enumerate() {
        dirty.insert(res.bucket_start(timeline[i]));
        if let Some(&next) = timeline.get(i + 1) {
            dirty.insert(res.bucket_start(next));
        }
        // The next reading with a counter value. Past the next written time the search
        // is that time's: it is either that reading or its next one with a value.
        let stop = at.get(k + 1).copied().unwrap_or(timeline.len());
        if let Some(j) = (i + 1..stop).find(|&j| has_energy(j)) {
            dirty.insert(res.bucket_start(timeline[j]));
        }
    }
    dirty
}

/// The buckets at resolution `to` that hold the `finer` buckets: the dirty hours of
/// dirty minutes, the dirty days of dirty hours.
pub fn coarser_buckets(to: Resolution, finer: impl IntoIterator<Item = i64>) -> BTreeSet<i64> {
    finer.into_iter().map(|b| to.bucket_start(b)).collect()
}

#[cfg(test)]
mod tests;
