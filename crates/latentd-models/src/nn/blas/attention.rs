//! Attention heads as GEMM tasks with a reused score buffer per pool thread.

use std::cell::RefCell;

use candle_core::{CpuStorage, CustomOp3, Layout, Shape};
use rayon::prelude::*;

use super::gemm::{filled, sgemm_into, Matrix, Output};
use crate::nn::scratch::with_buffer;
use crate::nn::softmax::softmax_in_place;

thread_local! {
    /// Score rows of one task, kept between calls on each pool thread.
    static SCORES: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// [`super::attention`].
pub(super) struct Attention {
    pub(super) heads: usize,
}

impl CustomOp3 for Attention {
    fn name(&self) -> &'static str {
        "openblas-attention"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (CpuStorage::F32(q), CpuStorage::F32(k), CpuStorage::F32(v)) = (s1, s2, s3) else {
            candle_core::bail!("{}: only f32 is supported", self.name());
        };
        let (b, l, width) = l1.shape().dims3()?;
        let (kb, t, kw) = l2.shape().dims3()?;
        let heads = self.heads;
        let shapes_fit = l3.dims() == l2.dims() && kb == b && kw == width && t > 0;
        let unit = [l1, l2, l3].iter().all(|x| x.stride()[2] == 1);
        if !shapes_fit || !unit || heads == 0 || width % heads != 0 {
            candle_core::bail!(
                "{}: q {:?}, k {:?}, v {:?} with {heads} heads do not fit",
                self.name(),
                l1.dims(),
                l2.dims(),
                l3.dims()
            );
        }
        let hd = width / heads;
        let (qs, ks, vs) = (l1.stride(), l2.stride(), l3.stride());
        let run = |base: Output| {
            (0..b * heads).into_par_iter().try_for_each(|task| {
                let (s, h) = (task / heads, task % heads);
                let q_off = l1.start_offset() + s * qs[0] + h * hd;
                let k_off = l2.start_offset() + s * ks[0] + h * hd;
                let v_off = l3.start_offset() + s * vs[0] + h * hd;
                with_buffer(&SCORES, l * t, |scores| {
                    // SAFETY (both products): offsets and strides come from the
                    // operands' layouts, `sgemm_into` checks every extent, and each
                    // task writes only its own head's columns of its own sample.
                    unsafe {
                        sgemm_into(
                            (q, q_off, Matrix::row_major(l, hd, qs[1])),
                            (k, k_off, Matrix::transposed(hd, t, ks[1])),
                            (Output::new(scores), 0, t),
                        )?;
                    }
                    scores.chunks_exact_mut(t).for_each(softmax_in_place);
                    unsafe {
                        sgemm_into(
                            (scores, 0, Matrix::row_major(l, t, t)),
                            (v, v_off, Matrix::row_major(t, hd, vs[1])),
                            (base, s * l * width + h * hd, width),
                        )
                    }
                })
            })
        };
        // SAFETY: each task's second product writes all `l` rows of its head's `hd`
        // columns of its sample (`t > 0` values are summed into each), and the
        // `b * heads` tasks cover the `b * l * width` outputs between them.
        let out = unsafe { filled(b * l * width, run)? };
        Ok((CpuStorage::F32(out), Shape::from((b, l, width))))
    }
}
