//! A tiny, fast, seedable PRNG (wyrand). Written out here rather than taken from `rand`
//! so that a seed gives the same fleet whatever version of `rand` is in the lock file.

#[derive(Debug, Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        // Mix the seed so that nearby seeds give unrelated streams.
        let mut r = Self(seed ^ 0x9e37_79b9_7f4a_7c15);
        r.next_u64();
        r
    }

    #[inline]
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0xa076_1d64_78bd_642f);
        let t = u128::from(self.0) * u128::from(self.0 ^ 0xe703_7ed1_a0b4_28db);
        ((t >> 64) ^ t) as u64
    }

    /// Uniform in `[0, 1)`.
    #[inline]
    pub(crate) fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in `[lo, hi)`.
    #[inline]
    pub(crate) fn range_f64(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }

    /// Uniform in `lo..=hi`.
    #[inline]
    pub(crate) fn range_u32(&mut self, lo: u32, hi: u32) -> u32 {
        let span = u64::from(hi - lo) + 1;
        lo + (((self.next_u64() >> 32) * span) >> 32) as u32
    }

    /// Triangular in `(-1, 1)`, peaked at 0: cheap "noise".
    #[inline]
    pub(crate) fn tri(&mut self) -> f64 {
        let x = self.next_u64();
        let a = (x >> 32) as f64;
        let b = (x & 0xffff_ffff) as f64;
        (a - b) * (1.0 / 4_294_967_296.0)
    }

    /// Picks an index with the given weights (which need not sum to 1).
    pub(crate) fn weighted(&mut self, weights: &[f64]) -> usize {
        let total: f64 = weights.iter().sum();
        let mut x = self.unit() * total;
        for (i, w) in weights.iter().enumerate() {
            if x < *w {
                return i;
            }
            x -= w;
        }
        weights.len() - 1
    }
}
