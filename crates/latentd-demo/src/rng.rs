//! A tiny, seeded, platform-independent random number generator.
//!
//! SplitMix64 (Steele, Lea & Flood, 2014): 64 bits of state, integer-only
//! arithmetic, so a seed yields the same stream on every platform. Everything
//! that decides a scene draws integers from it; floating point appears only in
//! [`Rng::unit`] and [`Rng::normal`], which are built from exact operations
//! (no `ln`, `sin` or other library functions whose last bit may vary).

/// The SplitMix64 increment (the golden-ratio constant).
const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// The SplitMix64 output function: a bijective 64-bit mixer.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A SplitMix64 generator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rng {
    state: u64,
}

impl Rng {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// An independent generator for item `index` of the stream named by `seed`,
    /// so datasets can be addressed randomly: item `i` never depends on item `i - 1`.
    pub fn for_item(seed: u64, index: u64) -> Self {
        Self::new(mix(seed ^ mix(index.wrapping_add(GOLDEN))))
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(GOLDEN);
        mix(self.state)
    }

    /// A uniform integer in `0..n`, without modulo bias; 0 when `n` is 0.
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            return 0;
        }
        // Reject the top partial block so every residue is equally likely.
        let rejected = (u64::MAX % n + 1) % n;
        loop {
            let x = self.next_u64();
            if rejected == 0 || x < u64::MAX - rejected + 1 {
                return x % n;
            }
        }
    }

    /// A uniform integer in `lo..=hi`; `lo` when the range is empty.
    pub fn range(&mut self, lo: u32, hi: u32) -> u32 {
        if hi <= lo {
            return lo;
        }
        // `below` returns less than `hi - lo + 1`, so the sum fits in u32.
        lo + self.below(u64::from(hi - lo) + 1) as u32
    }

    /// True with probability `percent / 100` (always when `percent >= 100`).
    pub fn percent(&mut self, percent: u8) -> bool {
        self.below(100) < u64::from(percent)
    }

    /// A uniformly chosen element of `items`, or `None` when it is empty.
    pub fn choose<'a, T>(&mut self, items: &'a [T]) -> Option<&'a T> {
        items.get(self.below(items.len() as u64) as usize)
    }

    /// A uniform float in `[0, 1)` with 53 random bits.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// An approximately standard normal sample (Irwin–Hall: twelve uniforms
    /// minus six), exact to reproduce because it uses only additions.
    pub fn normal(&mut self) -> f64 {
        (0..12).map(|_| self.unit()).sum::<f64>() - 6.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_reference_splitmix64_stream() {
        // First outputs for seed 0 of the reference C implementation.
        let mut rng = Rng::new(0);
        assert_eq!(rng.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(rng.next_u64(), 0x6E78_9E6A_A1B9_65F4);
    }

    #[test]
    fn below_stays_in_range_and_covers_it() {
        let mut rng = Rng::new(7);
        let mut seen = [0u32; 5];
        for _ in 0..1000 {
            let x = rng.below(5) as usize;
            seen[x] += 1;
        }
        assert!(seen.iter().all(|&c| c > 150), "{seen:?}");
        assert_eq!(rng.below(0), 0);
        assert_eq!(rng.range(9, 9), 9);
        assert_eq!(rng.range(9, 3), 9);
    }

    #[test]
    fn items_are_independent_of_each_other() {
        let a = Rng::for_item(1, 5).next_u64();
        let b = Rng::for_item(1, 6).next_u64();
        let c = Rng::for_item(2, 5).next_u64();
        assert_ne!(a, b);
        assert_ne!(a, c);
        assert_eq!(a, Rng::for_item(1, 5).next_u64());
    }

    #[test]
    fn normal_has_unit_variance() {
        let mut rng = Rng::new(3);
        let n = 20_000;
        let xs: Vec<f64> = (0..n).map(|_| rng.normal()).collect();
        let mean = xs.iter().sum::<f64>() / n as f64;
        let var = xs.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n as f64;
        assert!(mean.abs() < 0.03, "{mean}");
        assert!((var - 1.0).abs() < 0.05, "{var}");
    }
}
