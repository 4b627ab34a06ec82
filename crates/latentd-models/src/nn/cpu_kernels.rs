//! Fused CPU kernels for the two hottest non-matmul operations of the UNet:
//! im2col for stride-1 convolutions (with its adjoint, col2im, as its backward
//! pass) and group norm (+ SiLU).
//!
//! Both are `f32`-only custom ops; callers fall back to candle's generic ops on
//! other devices and dtypes.

use candle_core::{CpuStorage, CustomOp1, Layout, Shape};
use rayon::prelude::*;

/// The `f32` data of a contiguous CPU tensor, or an error naming `op`.
pub(super) fn contiguous_f32<'a>(
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

/// Kernel tap `(i, j)` of a stride-1 `k x k` convolution with padding `p` on
/// `h x w` planes: output pixel `(y, x)` reads input pixel `(y + i - p, x + j - p)`
/// where that lies inside the plane.
#[derive(Debug, Clone, Copy)]
struct Tap {
    i: usize,
    j: usize,
    p: usize,
    h: usize,
    w: usize,
}

impl Tap {
    /// Tap `offset = i * k + j`.
    fn new(offset: usize, k: usize, p: usize, h: usize, w: usize) -> Self {
        let (i, j) = (offset / k, offset % k);
        Self { i, j, p, h, w }
    }

    /// The output columns whose input column is inside the plane.
    fn columns(self) -> std::ops::Range<usize> {
        let start = self.p.saturating_sub(self.j);
        let end = (self.w + self.p).saturating_sub(self.j).min(self.w);
        start..end.max(start)
    }

    /// The input columns those output columns read, in the same order.
    fn source_columns(self) -> std::ops::Range<usize> {
        let columns = self.columns();
        columns.start + self.j - self.p..columns.end + self.j - self.p
    }

    /// The input row that output row `y` reads, if inside the plane.
    fn source_row(self, y: usize) -> Option<usize> {
        (y + self.i).checked_sub(self.p).filter(|&row| row < self.h)
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
        im2col_into(src, (b, c, h, w), 0..h, k, p, &mut dst);
        Ok((CpuStorage::F32(dst), Shape::from((c * k * k, n))))
    }

    /// The gradient of an unfolding is the folding of its gradient ([`Col2Im`]).
    fn bwd(
        &self,
        arg: &candle_core::Tensor,
        _res: &candle_core::Tensor,
        grad_res: &candle_core::Tensor,
    ) -> candle_core::Result<Option<candle_core::Tensor>> {
        let (batch, channels, height, width) = arg.dims4()?;
        let fold = Col2Im {
            kernel: self.kernel,
            padding: self.padding,
            batch,
            channels,
            height,
            width,
        };
        Ok(Some(grad_res.contiguous()?.apply_op1_no_bwd(&fold)?))
    }
}

/// The unfolding of [`Im2Col`] for image rows `rows` of `src` (`[B, C, H, W]`,
/// contiguous) into `dst` (`[C * k * k, B * rows.len() * W]`, every element written).
pub(crate) fn im2col_into(
    src: &[f32],
    (b, c, h, w): (usize, usize, usize, usize),
    rows: std::ops::Range<usize>,
    k: usize,
    p: usize,
    dst: &mut [f32],
) {
    let n = b * rows.len() * w;
    if n == 0 {
        return;
    }
    dst.par_chunks_mut(n).enumerate().for_each(|(row, out)| {
        let ch = row / (k * k);
        let tap = Tap::new(row % (k * k), k, p, h, w);
        let columns = tap.columns();
        for bi in 0..b {
            let plane = &src[(bi * c + ch) * h * w..][..h * w];
            for (i, y) in rows.clone().enumerate() {
                let dst_row = &mut out[(bi * rows.len() + i) * w..][..w];
                match tap.source_row(y) {
                    Some(sy) if !columns.is_empty() => {
                        dst_row[..columns.start].fill(0.0);
                        dst_row[columns.clone()]
                            .copy_from_slice(&plane[sy * w..][..w][tap.source_columns()]);
                        dst_row[columns.end..].fill(0.0);
                    }
                    _ => dst_row.fill(0.0),
                }
            }
        }
    });
}

/// The adjoint of [`Im2Col`]: folds a `[C * k * k, B * H * W]` matrix back into
/// `[B, C, H, W]`, summing every entry into the input pixel it was copied from
/// (the input gradient of a convolution computed through im2col).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Col2Im {
    pub kernel: usize,
    pub padding: usize,
    pub batch: usize,
    pub channels: usize,
    pub height: usize,
    pub width: usize,
}

impl CustomOp1 for Col2Im {
    fn name(&self) -> &'static str {
        "col2im"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let src = contiguous_f32(storage, layout, self.name())?;
        let (k, p) = (self.kernel, self.padding);
        let (b, c, h, w) = (self.batch, self.channels, self.height, self.width);
        let n = b * h * w;
        if layout.shape().dims() != [c * k * k, n] || 2 * p + 1 != k {
            candle_core::bail!(
                "col2im: {:?} is not the unfolding of [{b}, {c}, {h}, {w}] by a {k}x{k} kernel with padding {p}",
                layout.shape().dims()
            );
        }
        let shape = Shape::from((b, c, h, w));
        let mut dst = vec![0f32; b * c * h * w];
        if dst.is_empty() {
            return Ok((CpuStorage::F32(dst), shape));
        }
        // Each output plane (image, channel) is written only by its own k * k rows.
        dst.par_chunks_mut(h * w)
            .enumerate()
            .for_each(|(plane, out)| {
                let (bi, ch) = (plane / c, plane % c);
                for offset in 0..k * k {
                    let tap = Tap::new(offset, k, p, h, w);
                    let row = &src[(ch * k * k + offset) * n..][..n];
                    for y in 0..h {
                        let Some(sy) = tap.source_row(y) else {
                            continue;
                        };
                        let from = &row[(bi * h + y) * w..][tap.columns()];
                        let to = &mut out[sy * w..][tap.source_columns()];
                        for (to, from) in to.iter_mut().zip(from) {
                            *to += from;
                        }
                    }
                }
            });
        Ok((CpuStorage::F32(dst), shape))
    }
}

/// Lanes of the partial sums of [`moments`]: a fixed summation order whatever the CPU.
const MOMENT_LANES: usize = 8;

/// The mean and the (biased) variance of `xs`, accumulated in `f64` in
/// [`MOMENT_LANES`] interleaved partial sums, so the loops vectorise.
#[inline(always)]
fn moments_generic(xs: &[f32], stats: &mut [f64; 2]) {
    let count = xs.len().max(1) as f64;
    let mean = lane_sum(xs, |x| x as f64) / count;
    let var = lane_sum(xs, |x| (x as f64 - mean).powi(2)) / count;
    *stats = [mean, var];
}

/// The sum of `f` over `xs` in [`MOMENT_LANES`] interleaved partial sums.
#[inline(always)]
fn lane_sum(xs: &[f32], f: impl Fn(f32) -> f64) -> f64 {
    let mut lanes = [0f64; MOMENT_LANES];
    let chunks = xs.chunks_exact(MOMENT_LANES);
    let tail: f64 = chunks.remainder().iter().map(|&x| f(x)).sum();
    for chunk in chunks {
        for (lane, &x) in lanes.iter_mut().zip(chunk) {
            *lane += f(x);
        }
    }
    lanes.iter().sum::<f64>() + tail
}

super::activations::multiversioned!(
    /// [`moments_generic`] on the best vector unit the CPU has.
    moments => moments_generic(xs: &[f32], stats: &mut [f64; 2])
);

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
                let mut stats = [0f64; 2];
                moments(xs, &mut stats);
                let [mean, var] = stats;
                let rstd = 1.0 / (var + self.eps).sqrt();
                for (c, (out, xs)) in out.chunks_mut(spatial).zip(xs.chunks(spatial)).enumerate() {
                    let scale = (rstd * self.weight[first_channel + c] as f64) as f32;
                    let shift = (self.bias[first_channel + c] as f64
                        - mean * rstd * self.weight[first_channel + c] as f64)
                        as f32;
                    if self.silu {
                        super::activations::silu_affine_row(out, xs, scale, shift);
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
