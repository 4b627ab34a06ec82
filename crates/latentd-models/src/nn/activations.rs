//! Fused CPU activations of the feed-forward layers, one pass over the data instead
//! of candle's two or three (a view, the activation, a product): GEGLU's
//! `h * gelu(gate)` (the UNet's transformers) and CLIP's `x * sigmoid(1.702 x)`.
//!
//! Used for `f32` CPU tensors that track no gradient; anything else takes the candle
//! ops. The row kernels ([`geglu_row`], [`quick_gelu_row`], [`silu_affine_row`], the
//! last for group norm + SiLU) use a branch-free `exp` and `erf` that the compiler
//! vectorises, compiled for AVX-512 and AVX2 + FMA as well as the baseline and chosen
//! at run time; candle's kernels call the scalar `expf` and `erff` per element.

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::cpu_kernels::contiguous_f32;
use super::softmax::exp;
use crate::Result;

/// Defines `$name`, which runs the `#[inline(always)]` function `$generic` compiled
/// for the best vector unit the CPU has (AVX-512, AVX2 + FMA, or the baseline).
macro_rules! multiversioned {
    ($(#[$doc:meta])* $name:ident => $generic:ident ($($arg:ident: $ty:ty),*)) => {
        $(#[$doc])*
        pub(crate) fn $name($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f")]
                unsafe fn avx512($($arg: $ty),*) {
                    $generic($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) {
                    $generic($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU has the features the function is compiled for.
                    return unsafe { avx512($($arg),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    // SAFETY: as above.
                    return unsafe { avx2($($arg),*) };
                }
            }
            $generic($($arg),*)
        }
    };
}

pub(crate) use multiversioned;

/// `erf(x)` within 6e-7 (Abramowitz and Stegun 7.1.26, 1.5e-7, plus `f32` rounding;
/// the vectorised `exp`); branch-free.
#[inline(always)]
fn erf(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / 0.327_591_1f32.mul_add(a, 1.0);
    let mut p = 1.061_405_4f32;
    p = p.mul_add(t, -1.453_152);
    p = p.mul_add(t, 1.421_413_8);
    p = p.mul_add(t, -0.284_496_74);
    p = p.mul_add(t, 0.254_829_6);
    let y = 1.0 - p * t * exp(-a * a);
    y.copysign(x)
}

/// The erf GELU, `x (1 + erf(x / sqrt 2)) / 2`.
#[inline(always)]
fn gelu(x: f32) -> f32 {
    (erf(x * std::f32::consts::FRAC_1_SQRT_2) + 1.0) * 0.5 * x
}

#[inline(always)]
fn geglu_generic(out: &mut [f32], h: &[f32], gate: &[f32]) {
    for ((o, &h), &g) in out.iter_mut().zip(h).zip(gate) {
        *o = h * gelu(g);
    }
}

#[inline(always)]
fn quick_gelu_generic(out: &mut [f32], xs: &[f32]) {
    for (o, &x) in out.iter_mut().zip(xs) {
        *o = x / (1.0 + exp(-1.702 * x));
    }
}

#[inline(always)]
fn silu_affine_generic(out: &mut [f32], xs: &[f32], scale: f32, shift: f32) {
    for (o, &x) in out.iter_mut().zip(xs) {
        let y = x.mul_add(scale, shift);
        *o = y / (1.0 + exp(-y));
    }
}

multiversioned!(
    /// `out = h * gelu(gate)`, element by element.
    geglu_row => geglu_generic(out: &mut [f32], h: &[f32], gate: &[f32])
);
multiversioned!(
    /// `out = x * sigmoid(1.702 x)`, element by element.
    quick_gelu_row => quick_gelu_generic(out: &mut [f32], xs: &[f32])
);
multiversioned!(
    /// `out = silu(x * scale + shift)`, element by element.
    silu_affine_row => silu_affine_generic(out: &mut [f32], xs: &[f32], scale: f32, shift: f32)
);

/// Elements per parallel task (big enough to pay for the hand-off).
const TASK: usize = 1 << 14;

fn fused(xs: &Tensor) -> bool {
    xs.device().is_cpu() && xs.dtype() == DType::F32 && !xs.track_op()
}

/// `[.., 2 * inner]` -> `[.., inner]`: the first half of the last dimension times the
/// erf GELU of the second (diffusers' `GEGLU` after its projection).
pub(crate) fn geglu(hs: &Tensor, inner: usize) -> Result<Tensor> {
    if fused(hs) && hs.dims().last() == Some(&(2 * inner)) && inner > 0 {
        return Ok(hs.contiguous()?.apply_op1_no_bwd(&Geglu { inner })?);
    }
    let last = hs.rank() - 1;
    let gate = hs.narrow(last, inner, inner)?.gelu_erf()?;
    Ok((hs.narrow(last, 0, inner)? * gate)?)
}

/// `x * sigmoid(1.702 x)` (CLIP's `quick_gelu`).
pub(crate) fn quick_gelu(xs: &Tensor) -> Result<Tensor> {
    if fused(xs) {
        return Ok(xs.contiguous()?.apply_op1_no_bwd(&QuickGelu)?);
    }
    Ok((xs * candle_nn::ops::sigmoid(&(xs * 1.702)?)?)?)
}

struct Geglu {
    inner: usize,
}

impl CustomOp1 for Geglu {
    fn name(&self) -> &'static str {
        "geglu"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let src = contiguous_f32(storage, layout, self.name())?;
        let inner = self.inner;
        let mut dims = layout.dims().to_vec();
        match dims.last_mut() {
            Some(last) if *last == 2 * inner => *last = inner,
            _ => candle_core::bail!("geglu: {dims:?} is not [.., {}]", 2 * inner),
        }
        let mut out = vec![0f32; src.len() / 2];
        let rows_per_task = (TASK / inner).max(1);
        out.par_chunks_mut(rows_per_task * inner)
            .zip(src.par_chunks(rows_per_task * 2 * inner))
            .for_each(|(out, src)| {
                for (out, row) in out.chunks_exact_mut(inner).zip(src.chunks_exact(2 * inner)) {
                    let (h, gate) = row.split_at(inner);
                    geglu_row(out, h, gate);
                }
            });
        Ok((CpuStorage::F32(out), Shape::from(dims)))
    }
}

struct QuickGelu;

impl CustomOp1 for QuickGelu {
    fn name(&self) -> &'static str {
        "quick-gelu"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let src = contiguous_f32(storage, layout, self.name())?;
        let mut out = vec![0f32; src.len()];
        out.par_chunks_mut(TASK)
            .zip(src.par_chunks(TASK))
            .for_each(|(out, src)| quick_gelu_row(out, src));
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::test_tensor;
    use crate::pipeline::max_abs_diff;

    #[test]
    fn erf_is_within_6e7_of_candles() {
        let mut worst = 0f32;
        let mut x = -6.0f32;
        while x < 6.0 {
            worst = worst.max((erf(x) - candle_core::cpu::erf::erf_f32(x)).abs());
            x += 0.000_37;
        }
        assert!(worst < 6e-7, "{worst}");
        assert_eq!(erf(0.0), 0.0);
        assert_eq!(erf(10.0), 1.0);
        assert_eq!(erf(-10.0), -1.0);
    }

    #[test]
    fn fused_activations_match_the_candle_ops() {
        let hs = (test_tensor(&[2, 5, 2 * 37], 1) * 8.0).unwrap();
        let fused = geglu(&hs, 37).unwrap();
        let gate = hs.narrow(2, 37, 37).unwrap().gelu_erf().unwrap();
        let reference = (hs.narrow(2, 0, 37).unwrap() * gate).unwrap();
        assert_eq!(fused.dims(), [2, 5, 37]);
        // |h| and |gate| up to 4: erf's 6e-7 scaled by at most 8.
        assert!(max_abs_diff(&fused, &reference).unwrap() < 1e-5);

        let xs = (test_tensor(&[3, 7, 41], 2) * 12.0).unwrap();
        let fused = quick_gelu(&xs).unwrap();
        let reference = (&xs * candle_nn::ops::sigmoid(&(&xs * 1.702).unwrap()).unwrap()).unwrap();
        assert!(max_abs_diff(&fused, &reference).unwrap() < 1e-5);
    }
}
