//! Fused CPU activations of the feed-forward layers, one pass over the data instead
//! of candle's two or three (a view, the activation, a product): GEGLU's
//! `h * gelu(gate)` (the UNet's transformers) and CLIP's `x * sigmoid(1.702 x)`.
//!
//! Used for `f32` CPU tensors that track no gradient; anything else takes the candle
//! ops, with the same numerics (candle's `erf` is used for GELU).

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

use crate::Result;

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

fn contiguous_f32<'a>(
    storage: &'a CpuStorage,
    layout: &Layout,
    op: &str,
) -> candle_core::Result<&'a [f32]> {
    match (storage, layout.contiguous_offsets()) {
        (CpuStorage::F32(data), Some((start, end))) => Ok(&data[start..end]),
        _ => candle_core::bail!("{op}: the input must be contiguous f32"),
    }
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
                    for ((o, &h), &g) in out.iter_mut().zip(h).zip(gate) {
                        let gelu =
                            (candle_core::cpu::erf::erf_f32(g * std::f32::consts::FRAC_1_SQRT_2)
                                + 1.0)
                                * 0.5
                                * g;
                        *o = h * gelu;
                    }
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
            .for_each(|(out, src)| {
                for (o, &x) in out.iter_mut().zip(src) {
                    *o = x / (1.0 + (-1.702 * x).exp());
                }
            });
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::test_tensor;
    use crate::pipeline::max_abs_diff;

    #[test]
    fn fused_activations_match_the_candle_ops() {
        let hs = (test_tensor(&[2, 5, 2 * 37], 1) * 8.0).unwrap();
        let fused = geglu(&hs, 37).unwrap();
        let gate = hs.narrow(2, 37, 37).unwrap().gelu_erf().unwrap();
        let reference = (hs.narrow(2, 0, 37).unwrap() * gate).unwrap();
        assert_eq!(fused.dims(), [2, 5, 37]);
        assert!(max_abs_diff(&fused, &reference).unwrap() < 1e-6);

        let xs = (test_tensor(&[3, 7, 41], 2) * 12.0).unwrap();
        let fused = quick_gelu(&xs).unwrap();
        let reference = (&xs * candle_nn::ops::sigmoid(&(&xs * 1.702).unwrap()).unwrap()).unwrap();
        assert!(max_abs_diff(&fused, &reference).unwrap() < 1e-5);
    }
}
