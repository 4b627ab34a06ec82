//! Stride-1 "same" convolutions: im2col into a reused buffer, one GEMM per sample.

use std::cell::RefCell;

use candle_core::{CpuStorage, CustomOp2, Layout, Shape};

use super::gemm::{last_two, run_into, Matrix, Task};
use crate::nn::cpu_kernels::im2col_into;
use crate::nn::scratch::with_buffer;

/// Elements of unfolded input one call holds at once (64 MiB of f32).
const SCRATCH_ELEMENTS: usize = 16 << 20;

thread_local! {
    /// The unfolded input, kept between calls on the thread that makes them.
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// [`super::conv_same`].
pub(in crate::nn) struct Im2ColGemm {
    pub kernel: usize,
    pub padding: usize,
}

impl CustomOp2 for Im2ColGemm {
    fn name(&self) -> &'static str {
        "openblas-conv"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (CpuStorage::F32(x), CpuStorage::F32(weight)) = (s1, s2) else {
            candle_core::bail!("{}: only f32 is supported", self.name());
        };
        let Some((start, end)) = l1.contiguous_offsets() else {
            candle_core::bail!("{}: the input must be contiguous", self.name());
        };
        let x = &x[start..end];
        let (b, c, h, w) = l1.shape().dims4()?;
        let (k, p) = (self.kernel, self.padding);
        let depth = c * k * k;
        let a = last_two(l2, self.name())?;
        if l2.dims().len() != 2 || a.cols != depth || 2 * p + 1 != k {
            candle_core::bail!(
                "{}: weight {:?} does not fit input {:?} with a {k}x{k} kernel and padding {p}",
                self.name(),
                l2.dims(),
                l1.dims()
            );
        }
        let (m, hw) = (a.rows, h * w);
        let mut out = vec![0f32; b * m * hw];
        if out.is_empty() {
            return Ok((CpuStorage::F32(out), Shape::from((b, m, hw))));
        }
        let a_off = l2.start_offset();
        // Whole samples, as many as fit in the buffer, or else bands of image rows.
        let group = (SCRATCH_ELEMENTS / (depth * hw).max(1)).clamp(1, b);
        let band = (SCRATCH_ELEMENTS / (depth * w).max(1)).clamp(1, h);
        let whole = depth * hw <= SCRATCH_ELEMENTS;
        let len = if whole {
            depth * group * hw
        } else {
            depth * band * w
        };
        with_buffer(&SCRATCH, len, |scratch| {
            if whole {
                // One GEMM per sample.
                for first in (0..b).step_by(group) {
                    let size = group.min(b - first);
                    let n = size * hw;
                    let cols = &mut scratch[..depth * n];
                    let src = &x[first * c * hw..(first + size) * c * hw];
                    im2col_into(src, (size, c, h, w), 0..h, k, p, cols);
                    let tasks = (0..size)
                        .map(|s| Task {
                            a,
                            a_off,
                            b: Matrix::row_major(depth, hw, n),
                            b_off: s * hw,
                            c_off: (first + s) * m * hw,
                            ldc: hw,
                        })
                        .collect();
                    run_into(tasks, weight, cols, &mut out)?;
                }
            } else {
                for s in 0..b {
                    let src = &x[s * c * hw..(s + 1) * c * hw];
                    for y0 in (0..h).step_by(band) {
                        let rows = y0..(y0 + band).min(h);
                        let n = rows.len() * w;
                        let cols = &mut scratch[..depth * n];
                        im2col_into(src, (1, c, h, w), rows, k, p, cols);
                        let task = Task {
                            a,
                            a_off,
                            b: Matrix::row_major(depth, n, n),
                            b_off: 0,
                            c_off: s * m * hw + y0 * w,
                            ldc: hw,
                        };
                        run_into(vec![task], weight, cols, &mut out)?;
                    }
                }
            }
            Ok::<(), candle_core::Error>(())
        })?;
        Ok((CpuStorage::F32(out), Shape::from((b, m, hw))))
    }
}
