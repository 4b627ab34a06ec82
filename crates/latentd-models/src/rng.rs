//! A random number generator that reproduces PyTorch's CPU generator.
//!
//! `TorchRng::new(seed).randn(shape)` returns the same numbers as
//! `torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed))`, and
//! successive draws continue the generator's state exactly as torch does. This is
//! what makes a seed reproduce the image diffusers (and other torch-based tools)
//! produce on the CPU generator.
//!
//! torch draws normals in one of two ways:
//! - tensors of at least 16 elements: one float uniform per element (24 random bits
//!   of one 32-bit draw), then Box-Muller in float over blocks of 16, pairing element
//!   `j` with `j + 8`; when the size is not a multiple of 16 the last 16 elements are
//!   overwritten with 16 fresh uniforms transformed the same way;
//! - smaller tensors: one double-precision Box-Muller per pair of values, two 64-bit
//!   draws (53 bits each) per pair; the second value of a pair is cached in the
//!   generator and returned by the next small draw, even one from a later call
//!   (the 16-wide path neither uses nor clears that cache).
//!
//! The 16-wide path reproduces torch's x86-64 kernel (AVX2 / AVX-512 builds) bit for
//! bit; torch builds for other CPUs use other float math and differ from it, and from
//! this, by about 1e-6.

use candle_core::{Device, Tensor};

use crate::Result;

/// Sizes from which torch uses the vectorised 16-wide normal fill.
const FILL_BLOCK: usize = 16;

/// torch-compatible CPU random number generator (mt19937 + torch's normal sampling).
#[derive(Debug, Clone)]
pub struct TorchRng {
    engine: Mt19937,
    /// Second value of the last double-precision Box-Muller pair, not yet returned.
    cached_normal: Option<f64>,
}

impl TorchRng {
    /// A generator in the state of `torch.Generator("cpu").manual_seed(seed)`.
    pub fn new(seed: u64) -> Self {
        Self {
            engine: Mt19937::new(seed),
            cached_normal: None,
        }
    }

    /// Standard normal samples of `shape` (row-major), like `torch.randn(shape, generator=g)`.
    pub fn randn(&mut self, shape: &[usize]) -> Vec<f32> {
        let numel = shape.iter().product::<usize>();
        if numel >= FILL_BLOCK {
            self.normal_fill(numel)
        } else {
            (0..numel).map(|_| self.scalar_normal() as f32).collect()
        }
    }

    /// [`TorchRng::randn`] as an F32 tensor on `device`.
    pub fn randn_tensor(&mut self, shape: &[usize], device: &Device) -> Result<Tensor> {
        let values = self.randn(shape);
        Ok(Tensor::from_vec(values, shape, device)?)
    }

    /// A float in [0, 1) from the low 24 bits of one 32-bit draw.
    fn uniform_f32(&mut self) -> f32 {
        (self.engine.next_u32() & 0x00ff_ffff) as f32 / (1u32 << 24) as f32
    }

    /// A double in [0, 1) from the low 53 bits of one 64-bit draw (two 32-bit draws).
    fn uniform_f64(&mut self) -> f64 {
        let hi = u64::from(self.engine.next_u32());
        let lo = u64::from(self.engine.next_u32());
        ((hi << 32 | lo) & ((1u64 << 53) - 1)) as f64 / (1u64 << 53) as f64
    }

    /// One value of torch's scalar (double-precision, cached-pair) normal sampler.
    fn scalar_normal(&mut self) -> f64 {
        if let Some(value) = self.cached_normal.take() {
            return value;
        }
        let u1 = self.uniform_f64();
        let u2 = self.uniform_f64();
        let radius = (-2.0 * (-u2).ln_1p()).sqrt();
        let theta = 2.0 * std::f64::consts::PI * u1;
        self.cached_normal = Some(radius * theta.sin());
        radius * theta.cos()
    }

    /// torch's float normal fill for `numel >= 16`.
    fn normal_fill(&mut self, numel: usize) -> Vec<f32> {
        let mut data: Vec<f32> = (0..numel).map(|_| self.uniform_f32()).collect();
        for block in data.chunks_exact_mut(FILL_BLOCK) {
            box_muller_16(block);
        }
        let remainder = numel % FILL_BLOCK;
        if remainder != 0 {
            let tail = &mut data[numel - FILL_BLOCK..];
            for value in tail.iter_mut() {
                *value = self.uniform_f32();
            }
            box_muller_16(tail);
        }
        data
    }
}

/// Box-Muller in float on 16 uniforms: `data[j]` and `data[j + 8]` become a normal pair.
fn box_muller_16(data: &mut [f32]) {
    let two_pi = (2.0 * std::f64::consts::PI) as f32;
    for j in 0..FILL_BLOCK / 2 {
        let radius = (-2.0 * cephes_log(1.0 - data[j])).sqrt();
        let (sin, cos) = cephes_sincos(two_pi * data[j + 8]);
        data[j] = radius * cos;
        data[j + 8] = radius * sin;
    }
}

// torch's x86-64 build evaluates the 16-wide Box-Muller with the Cephes-derived
// `log256_ps` / `sincos256_ps` of avx_mathfun, compiled with fused multiply-adds.
// The two functions below are their per-lane equivalents, operation for operation
// (each `mul_add` is one of the compiler's contractions), so the fill path is
// bit-identical to torch rather than merely close (correctly rounded libm results
// differ from torch by up to a few 1e-6).

const LOG_POLY: [f32; 9] = [
    7.037_683_6e-2,
    -1.151_461e-1,
    1.167_699_84e-1,
    -1.242_014_1e-1,
    1.424_932_3e-1,
    -1.666_805_8e-1,
    2.000_071_4e-1,
    -2.499_999_4e-1,
    3.333_333e-1,
];

/// Natural logarithm for `x` in (0, 1], as avx_mathfun's `log256_ps` computes it.
fn cephes_log(x: f32) -> f32 {
    let x = x.max(f32::from_bits(0x0080_0000));
    let bits = x.to_bits();
    let mut e = ((bits >> 23) as i32 - 0x7f) as f32 + 1.0;
    // Mantissa scaled into [0.5, 1).
    let mut m = f32::from_bits((bits & !0x7f80_0000) | 0.5f32.to_bits());
    let below_sqrt_half = m < std::f32::consts::FRAC_1_SQRT_2;
    let tmp = if below_sqrt_half { m } else { 0.0 };
    m -= 1.0;
    if below_sqrt_half {
        e -= 1.0;
    }
    m += tmp;
    let z = m * m;
    let mut y = LOG_POLY[0];
    for &coefficient in &LOG_POLY[1..] {
        y = y.mul_add(m, coefficient);
    }
    y *= m;
    y = y.mul_add(z, e * -2.121_944_4e-4);
    y = (-z).mul_add(0.5, y);
    e.mul_add(0.693_359_4, m + y)
}

/// Sine and cosine of `x` in [0, 8192), as avx_mathfun's `sincos256_ps` computes them.
fn cephes_sincos(x: f32) -> (f32, f32) {
    const FOUR_OVER_PI: f32 = 1.273_239_5;
    // Octant index rounded up to even (x >= 0, so truncation is floor).
    let octant = (((x * FOUR_OVER_PI) as i32) + 1) & !1;
    let y = octant as f32;
    let negate_sin = octant & 4 != 0;
    let use_sin_poly = octant & 2 == 0;
    let negate_cos = !(octant - 2) & 4 != 0;
    // Extended-precision reduction x - y * pi/4.
    let x = y.mul_add(-0.785_156_25, x);
    let x = y.mul_add(-2.418_756_5e-4, x);
    let x = y.mul_add(-3.774_895e-8, x);
    let z = x * x;
    let cos_poly = 2.443_315_7e-5f32.mul_add(z, -1.388_731_6e-3);
    let cos_poly = cos_poly.mul_add(z, 4.166_664_6e-2) * z;
    let cos_poly = cos_poly.mul_add(z, -(z * 0.5)) + 1.0;
    let sin_poly = (-1.951_529_6e-4f32).mul_add(z, 8.332_161e-3);
    let sin_poly = sin_poly.mul_add(z, -1.666_665_5e-1) * z;
    let sin_poly = sin_poly.mul_add(x, x);
    let (sin, cos) = if use_sin_poly {
        (sin_poly, cos_poly)
    } else {
        (cos_poly, sin_poly)
    };
    (
        if negate_sin { -sin } else { sin },
        if negate_cos { -cos } else { cos },
    )
}

const STATE_N: usize = 624;
const STATE_M: usize = 397;
const MATRIX_A: u32 = 0x9908_b0df;
const UPPER_MASK: u32 = 0x8000_0000;
const LOWER_MASK: u32 = 0x7fff_ffff;

/// The 32-bit Mersenne Twister, seeded as torch's `at::mt19937` seeds it.
#[derive(Debug, Clone)]
struct Mt19937 {
    state: [u32; STATE_N],
    next: usize,
}

impl Mt19937 {
    /// torch keeps the 64-bit seed but initialises the state from its low 32 bits.
    fn new(seed: u64) -> Self {
        let mut state = [0u32; STATE_N];
        state[0] = (seed & 0xffff_ffff) as u32;
        for j in 1..STATE_N {
            let prev = state[j - 1];
            state[j] = 1_812_433_253u32
                .wrapping_mul(prev ^ (prev >> 30))
                .wrapping_add(j as u32);
        }
        Self {
            state,
            next: STATE_N,
        }
    }

    fn next_u32(&mut self) -> u32 {
        if self.next >= STATE_N {
            self.twist();
        }
        let mut y = self.state[self.next];
        self.next += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }

    fn twist(&mut self) {
        for i in 0..STATE_N {
            let mixed = (self.state[i] & UPPER_MASK) | (self.state[(i + 1) % STATE_N] & LOWER_MASK);
            let mag = if mixed & 1 == 1 { MATRIX_A } else { 0 };
            self.state[i] = self.state[(i + STATE_M) % STATE_N] ^ (mixed >> 1) ^ mag;
        }
        self.next = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_close(actual: &[f32], expected: &[f32]) {
        assert_eq!(actual.len(), expected.len());
        for (a, e) in actual.iter().zip(expected) {
            assert!((a - e).abs() <= 1e-6, "{actual:?} != {expected:?}");
        }
    }

    #[test]
    fn mt19937_matches_the_reference_sequence() {
        // The 10000th output of the standard mt19937 seeded with 5489 is 4123659995.
        let mut mt = Mt19937::new(5489);
        let value = (0..10_000).map(|_| mt.next_u32()).last().unwrap();
        assert_eq!(value, 4_123_659_995);
    }

    #[test]
    fn seed_zero_small_draws_match_torch() {
        // torch.randn(4, generator=torch.Generator("cpu").manual_seed(0))
        let mut rng = TorchRng::new(0);
        assert_close(
            &rng.randn(&[4]),
            &[1.540_996_6, -0.293_428_8, -2.178_789_4, 0.568_431_3],
        );
    }

    #[test]
    fn seed_zero_fill_path_matches_torch() {
        // torch.randn(16, generator=torch.Generator("cpu").manual_seed(0))[:4] and [8:12]
        let mut rng = TorchRng::new(0);
        let values = rng.randn(&[16]);
        assert_close(
            &values[..4],
            &[-1.125_839_8, -1.152_360_2, -0.250_578_6, -0.433_878_8],
        );
        assert_close(
            &values[8..12],
            &[0.322_274_9, -1.263_334_8, 0.349_983_2, 0.308_133_9],
        );
    }

    #[test]
    fn odd_small_draw_caches_the_second_value() {
        // Three values use two Box-Muller pairs; the unused second value of the last
        // pair is returned by the next small draw without consuming the engine.
        let mut split = TorchRng::new(7);
        let mut first = split.randn(&[3]);
        first.extend(split.randn(&[1]));
        let mut whole = TorchRng::new(7);
        assert_eq!(first, whole.randn(&[4]));
    }

    #[test]
    fn large_seeds_use_the_low_32_bits() {
        let mut a = TorchRng::new((1u64 << 32) + 5);
        let mut b = TorchRng::new(5);
        assert_eq!(a.randn(&[20]), b.randn(&[20]));
    }

    #[test]
    fn tensor_has_the_requested_shape() {
        let mut rng = TorchRng::new(1);
        let t = rng.randn_tensor(&[2, 3, 5], &Device::Cpu).unwrap();
        assert_eq!(t.dims(), &[2, 3, 5]);
    }
}
