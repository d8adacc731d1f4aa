//! A log-bucket latency histogram, HDR-style: exact below 128, then 64 linear
//! sub-buckets per power of two, so any recorded value is known within 1/64 (1.6 %).
//! Fixed size (about 30 KiB), no allocation per record, mergeable by adding counts.

const LINEAR: u64 = 128;
const SUB_BITS: u32 = 6;
const SUB: u64 = 1 << SUB_BITS;
/// 128 exact buckets + 64 per power of two from 2^7 to 2^63.
const BUCKETS: usize = LINEAR as usize + (64 - 7) * SUB as usize;

/// Counts of `u64` values (the load generator records microseconds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Histogram {
    counts: Box<[u64]>,
    total: u64,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

fn index(v: u64) -> usize {
    if v < LINEAR {
        return v as usize;
    }
    let e = 63 - v.leading_zeros(); // ≥ 7
    let shift = e - SUB_BITS;
    let sub = (v >> shift) - SUB; // 0..64
    LINEAR as usize + (e as usize - 7) * SUB as usize + sub as usize
}

/// The smallest and largest value that land in bucket `i`.
fn bounds(i: usize) -> (u64, u64) {
    if i < LINEAR as usize {
        return (i as u64, i as u64);
    }
    let j = i - LINEAR as usize;
    let e = (j / SUB as usize) as u32 + 7;
    let sub = (j % SUB as usize) as u64;
    let shift = e - SUB_BITS;
    let lo = (SUB + sub) << shift;
    (lo, lo + ((1u64 << shift) - 1))
}

impl Histogram {
    pub fn new() -> Self {
        Self {
            counts: vec![0; BUCKETS].into_boxed_slice(),
            total: 0,
            max: 0,
        }
    }

    pub fn record(&mut self, v: u64) {
        self.counts[index(v)] += 1;
        self.total += 1;
        self.max = self.max.max(v);
    }

    pub fn merge(&mut self, other: &Self) {
        for (a, b) in self.counts.iter_mut().zip(other.counts.iter()) {
            *a += b;
        }
        self.total += other.total;
        self.max = self.max.max(other.max);
    }

    pub fn count(&self) -> u64 {
        self.total
    }

    pub fn max(&self) -> u64 {
        self.max
    }

    /// The value at quantile `q` in `[0, 1]` (the middle of its bucket, never above the
    /// largest value recorded); 0 when empty.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                let (lo, hi) = bounds(i);
                return (lo + (hi - lo) / 2).min(self.max);
            }
        }
        self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_every_value() {
        for v in (0..5000).chain([u64::MAX, u64::MAX / 3, 1 << 40]) {
            let (lo, hi) = bounds(index(v));
            assert!(lo <= v && v <= hi, "{v} not in {lo}..={hi}");
            assert!((hi - lo) as f64 <= v as f64 / 64.0, "{v}: bucket too wide");
        }
        assert_eq!(index(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn quantiles() {
        let mut h = Histogram::new();
        assert_eq!(h.quantile(0.5), 0);
        for v in 1..=10_000 {
            h.record(v);
        }
        let close = |got: u64, want: f64| (got as f64 - want).abs() <= want / 60.0;
        assert!(close(h.quantile(0.5), 5000.0), "{}", h.quantile(0.5));
        assert!(close(h.quantile(0.99), 9900.0), "{}", h.quantile(0.99));
        assert!(close(h.quantile(0.999), 9990.0), "{}", h.quantile(0.999));
        assert_eq!(h.quantile(1.0), 10_000);
        let mut g = Histogram::new();
        g.record(1_000_000);
        h.merge(&g);
        assert_eq!(h.count(), 10_001);
        assert_eq!(h.max(), 1_000_000);
        assert_eq!(h.quantile(1.0), 1_000_000);
    }
}
