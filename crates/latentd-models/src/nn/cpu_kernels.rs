//! Fused CPU kernels for the two hottest non-matmul operations of the UNet:
//! im2col for stride-1 convolutions and group norm (+ SiLU).
//!
//! Both are `f32`-only custom ops; callers fall back to candle's generic ops on
//! other devices and dtypes.

use candle_core::{CpuStorage, CustomOp1, Layout, Shape};
use rayon::prelude::*;

/// The `f32` data of a contiguous CPU tensor, or an error naming `op`.
fn contiguous_f32<'a>(
    storage: &'a CpuStorage,
    layout: &Layout,
    op: &str,
) -> candle_core::Result<&'a [f32]> {
    let CpuStorage::F32(data) = storage else {
        candle_core::bail!("{op}: only f32 is supported");
    };
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("{op}: the input must be contiguous"),
    }
}

/// Unfolds `[B, C, H, W]` into the `[C * k * k, B * H * W]` matrix of a stride-1,
/// zero-padded `k x k` convolution with "same"-style padding `p`: row
/// `(c * k + i) * k + j`, column `(b * H + y) * W + x` holds `input[b, c, y + i - p, x + j - p]`
/// (zero outside the image), so `weight.reshape(C_out, C * k * k) @ cols` is the convolution.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Im2Col {
    pub kernel: usize,
    pub padding: usize,
}

impl CustomOp1 for Im2Col {
    fn name(&self) -> &'static str {
        "im2col"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let src = contiguous_f32(storage, layout, self.name())?;
        let (b, c, h, w) = layout.shape().dims4()?;
        let (k, p) = (self.kernel, self.padding);
        if 2 * p + 1 != k {
            candle_core::bail!("im2col: padding {p} does not preserve the size for kernel {k}");
        }
        let n = b * h * w;
        let mut dst = vec![0f32; c * k * k * n];
        if n == 0 {
            return Ok((CpuStorage::F32(dst), Shape::from((c * k * k, n))));
        }
        dst.par_chunks_mut(n).enumerate().for_each(|(row, out)| {
            let (ch, i, j) = (row / (k * k), (row / k) % k, row % k);
            // Output columns x with 0 <= x + j - p < w.
            let x0 = p.saturating_sub(j);
            let x1 = (w + p).saturating_sub(j).min(w);
            if x0 >= x1 {
                return;
            }
            for bi in 0..b {
                let plane = &src[(bi * c + ch) * h * w..][..h * w];
                for y in 0..h {
                    let sy = y + i;
                    if sy < p || sy - p >= h {
                        continue;
                    }
                    let src_row = &plane[(sy - p) * w..][..w];
                    let dst_row = &mut out[(bi * h + y) * w..][..w];
                    dst_row[x0..x1].copy_from_slice(&src_row[x0 + j - p..x1 + j - p]);
                }
            }
        });
        Ok((CpuStorage::F32(dst), Shape::from((c * k * k, n))))
    }
}

/// Group normalisation of `[B, C, ...]` with a per-channel affine map, optionally
/// followed by SiLU, in two passes over the data.
#[derive(Debug, Clone)]
pub(crate) struct GroupNormSilu<'a> {
    pub groups: usize,
    pub eps: f64,
    pub weight: &'a [f32],
    pub bias: &'a [f32],
    pub silu: bool,
}

impl CustomOp1 for GroupNormSilu<'_> {
    fn name(&self) -> &'static str {
        "group-norm-silu"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let src = contiguous_f32(storage, layout, self.name())?;
        let dims = layout.shape().dims();
        if dims.len() < 2
            || dims[1] != self.weight.len()
            || self.groups == 0
            || !dims[1].is_multiple_of(self.groups)
        {
            candle_core::bail!(
                "group-norm: input {dims:?} does not have {} channels in {} groups",
                self.weight.len(),
                self.groups
            );
        }
        let channels = dims[1];
        let spatial: usize = dims[2..].iter().product();
        let per_group = channels / self.groups * spatial;
        let mut dst = vec![0f32; src.len()];
        if per_group == 0 {
            return Ok((CpuStorage::F32(dst), layout.shape().clone()));
        }
        dst.par_chunks_mut(per_group)
            .zip(src.par_chunks(per_group))
            .enumerate()
            .for_each(|(index, (out, xs))| {
                let first_channel = (index % self.groups) * (channels / self.groups);
                let count = xs.len() as f64;
                let mean = xs.iter().map(|&x| x as f64).sum::<f64>() / count;
                let var = xs.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / count;
                let rstd = 1.0 / (var + self.eps).sqrt();
                for (c, (out, xs)) in out.chunks_mut(spatial).zip(xs.chunks(spatial)).enumerate() {
                    let scale = (rstd * self.weight[first_channel + c] as f64) as f32;
                    let shift = (self.bias[first_channel + c] as f64
                        - mean * rstd * self.weight[first_channel + c] as f64)
                        as f32;
                    if self.silu {
                        for (o, &x) in out.iter_mut().zip(xs) {
                            let y = x * scale + shift;
                            *o = y / (1.0 + (-y).exp());
                        }
                    } else {
                        for (o, &x) in out.iter_mut().zip(xs) {
                            *o = x * scale + shift;
                        }
                    }
                }
            });
        Ok((CpuStorage::F32(dst), layout.shape().clone()))
    }
}
