//! `torch.nn.Conv2d` with a bias and a square kernel. With the `onednn` feature,
//! float32 CPU weights that are not training variables are packed for oneDNN's
//! direct convolutions ([`super::onednn`]). Otherwise stride-1 "same" convolutions
//! on CPU in `f32` run as one im2col plus one matrix product with the weight used
//! as stored (their backward pass is a col2im and matrix products); everything
//! else goes through candle's `conv2d`.

use candle_core::{DType, Module, Tensor};
use candle_nn::{Conv2dConfig, VarBuilder};

use super::cpu_kernels::Im2Col;
use crate::Result;

/// Upper bound on the unfolded input of one matrix product, in elements
/// (256 MiB of `f32`); larger batches are split by rows.
const MAX_COLS_ELEMENTS: usize = 64 << 20;

/// A 2D convolution with bias.
#[derive(Debug, Clone)]
pub struct Conv2d {
    /// The weights packed for oneDNN; `generic` and `weight_2d` are then empty
    /// (the packed copy is the only one kept).
    #[cfg(feature = "onednn")]
    packed: Option<std::sync::Arc<super::onednn::PackedConv>>,
    generic: candle_nn::Conv2d,
    /// `[out, in * k * k]`, a view of the weight.
    weight_2d: Tensor,
    bias: Option<Tensor>,
    kernel: usize,
    stride: usize,
    padding: usize,
    /// A float32 copy for bf16 weights on the CPU, where candle has no bf16 matrix
    /// products: the convolution runs in f32 and its output is rounded back to bf16.
    upcast: Option<Box<Conv2d>>,
    span: tracing::Span,
}

impl Conv2d {
    /// Loads `weight` (`[out, in, k, k]`) and `bias` (`[out]`) from `vb`.
    pub fn new(
        vb: VarBuilder,
        in_channels: usize,
        out_channels: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
    ) -> Result<Self> {
        let cfg = Conv2dConfig {
            padding,
            stride,
            ..Default::default()
        };
        let generic = candle_nn::conv2d(in_channels, out_channels, kernel, cfg, vb)?;
        let upcast = if super::ops::is_cpu_bf16(generic.weight()) {
            let weight = generic.weight().to_dtype(DType::F32)?;
            let bias = generic.bias().map(|b| b.to_dtype(DType::F32)).transpose()?;
            let f32 = candle_nn::Conv2d::new(weight, bias, cfg);
            Some(Box::new(Self::from_generic(
                f32, kernel, stride, padding, None,
            )?))
        } else {
            None
        };
        Self::from_generic(generic, kernel, stride, padding, upcast)
    }

    fn from_generic(
        generic: candle_nn::Conv2d,
        kernel: usize,
        stride: usize,
        padding: usize,
        upcast: Option<Box<Conv2d>>,
    ) -> Result<Self> {
        #[cfg(feature = "onednn")]
        let (packed, generic) = if super::onednn::applies(generic.weight()) {
            let packed =
                super::onednn::PackedConv::new(generic.weight(), generic.bias(), stride, padding)?;
            // Keep only the packed weights: an empty tensor stands in for candle's copy.
            let empty = Tensor::zeros((0, 0, 0, 0), DType::F32, generic.weight().device())?;
            let stand_in =
                candle_nn::Conv2d::new(empty, generic.bias().cloned(), *generic.config());
            (Some(std::sync::Arc::new(packed)), stand_in)
        } else {
            (None, generic)
        };
        // `[out, in * k * k]` (empty where oneDNN holds the weights).
        let weight_2d = generic.weight().flatten_from(1)?;
        let bias = generic.bias().cloned();
        Ok(Self {
            #[cfg(feature = "onednn")]
            packed,
            generic,
            weight_2d,
            bias,
            kernel,
            stride,
            padding,
            upcast,
            span: tracing::trace_span!("conv2d"),
        })
    }

    /// Whether `xs` takes the im2col path (differentiable: training uses it too).
    fn uses_im2col(&self, xs: &Tensor) -> bool {
        self.stride == 1
            && 2 * self.padding + 1 == self.kernel
            && xs.device().is_cpu()
            && xs.dtype() == DType::F32
            && self.weight_2d.dtype() == DType::F32
    }

    /// `[B, in, H, W]` -> `[B, out, H', W']`.
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let _enter = self.span.enter();
        if let Some(f32) = &self.upcast {
            if super::ops::is_cpu_bf16(xs) {
                let ys = f32.forward(&xs.to_dtype(DType::F32)?)?;
                return Ok(ys.to_dtype(DType::BF16)?);
            }
        }
        #[cfg(feature = "onednn")]
        if let Some(packed) = &self.packed {
            return packed.forward(xs);
        }
        self.forward_limited(xs, MAX_COLS_ELEMENTS)
    }

    /// The oneDNN kernel this layer runs for an `h x w` input, where it has one.
    #[cfg(feature = "onednn")]
    pub fn onednn_kernel(&self, h: usize, w: usize) -> Result<Option<String>> {
        match &self.packed {
            Some(packed) => packed.kernel_name(h, w),
            None => Ok(None),
        }
    }

    /// [`Self::forward`] with at most `max_cols` unfolded elements per product.
    fn forward_limited(&self, xs: &Tensor, max_cols: usize) -> Result<Tensor> {
        if !self.uses_im2col(xs) {
            return self.generic_per_sample(xs);
        }
        let (b, c, h, w) = xs.dims4()?;
        let expected = self.generic.weight().dim(1)?;
        if c != expected {
            // Let candle produce its usual shape error.
            return Ok(self.generic.forward(xs)?);
        }
        if super::blas::applies(xs, &self.weight_2d) {
            let ys = super::blas::conv_same(xs, &self.weight_2d, self.kernel, self.padding)?;
            return self.finish(ys, b, h, w);
        }
        let per_row = c * self.kernel * self.kernel * h * w;
        let rows_per_chunk = (max_cols / per_row.max(1)).clamp(1, b.max(1));
        let xs = xs.contiguous()?;
        let mut outs = Vec::with_capacity(b.div_ceil(rows_per_chunk));
        for start in (0..b).step_by(rows_per_chunk) {
            let len = rows_per_chunk.min(b - start);
            outs.push(self.im2col_rows(&xs.narrow(0, start, len)?)?);
        }
        if outs.len() == 1 {
            Ok(outs.remove(0))
        } else {
            Ok(Tensor::cat(&outs, 0)?)
        }
    }

    /// candle's convolution, one sample at a time on the CPU: it folds the batch into
    /// the rows of its matrix product, where the kernel chosen (and so the rounding)
    /// would depend on how many samples share the call.
    fn generic_per_sample(&self, xs: &Tensor) -> Result<Tensor> {
        candle_per_sample(&self.generic, xs)
    }

    /// One im2col + matrix product over all rows of `xs`.
    fn im2col_rows(&self, xs: &Tensor) -> Result<Tensor> {
        let (b, _, h, w) = xs.dims4()?;
        let op = Im2Col {
            kernel: self.kernel,
            padding: self.padding,
        };
        let cols = xs.contiguous()?.apply_op1(op)?;
        // [out, B * H * W] -> [B, out, H * W] (a strided view until the bias add).
        let out_channels = self.weight_2d.dim(0)?;
        let ys = super::batch_invariant::matmul_batch_in_columns(&self.weight_2d, &cols)?
            .reshape((out_channels, b, h * w))?
            .transpose(0, 1)?;
        self.finish(ys, b, h, w)
    }

    /// `[B, out, H * W]` plus the bias, as `[B, out, H, W]`.
    fn finish(&self, ys: Tensor, b: usize, h: usize, w: usize) -> Result<Tensor> {
        let out_channels = self.weight_2d.dim(0)?;
        let ys = match &self.bias {
            Some(bias) => ys.broadcast_add(&bias.reshape((1, out_channels, 1))?)?,
            None => ys.contiguous()?,
        };
        Ok(ys.reshape((b, out_channels, h, w))?)
    }
}

/// candle's convolution `conv`, one sample at a time on the CPU (see
/// [`Conv2d::generic_per_sample`]).
pub(super) fn candle_per_sample(conv: &candle_nn::Conv2d, xs: &Tensor) -> Result<Tensor> {
    let b = xs.dim(0)?;
    if b <= 1 || !xs.device().is_cpu() {
        return Ok(conv.forward(xs)?);
    }
    let samples = (0..b)
        .map(|i| conv.forward(&xs.narrow(0, i, 1)?))
        .collect::<candle_core::Result<Vec<_>>>()?;
    Ok(Tensor::cat(&samples, 0)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::max_abs_diff;
    use candle_core::Device;
    use candle_nn::VarMap;

    #[test]
    fn im2col_path_matches_candle_conv2d() {
        let dev = Device::Cpu;
        for (cin, cout, k, stride, pad, h, w) in [
            (3, 5, 3, 1, 1, 7, 6),
            (4, 2, 1, 1, 0, 3, 5),
            (2, 3, 5, 1, 2, 4, 9),
            (3, 4, 3, 2, 1, 7, 6),
            (2, 2, 3, 1, 1, 1, 1),
            // A kernel wider than its input, as a UNet's `conv_out_kernel` can be.
            (2, 3, 7, 1, 3, 4, 4),
        ] {
            let map = VarMap::new();
            let vb = VarBuilder::from_varmap(&map, DType::F32, &dev);
            let conv = Conv2d::new(vb, cin, cout, k, stride, pad).unwrap();
            // Non-zero biases, so their placement is checked too; `set` writes in
            // place, so the layer sees the new values.
            for var in map.all_vars() {
                var.set(&Tensor::randn(0f32, 1., var.shape(), &dev).unwrap())
                    .unwrap();
            }
            let bias = conv
                .bias
                .as_ref()
                .unwrap()
                .abs()
                .unwrap()
                .sum_all()
                .unwrap();
            assert!(bias.to_scalar::<f32>().unwrap() > 0.0);
            let xs = Tensor::randn(0f32, 1., (3, cin, h, w), &dev).unwrap();
            let want = conv.generic.forward(&xs).unwrap();
            for max_cols in [1, usize::MAX] {
                let got = conv.forward_limited(&xs, max_cols).unwrap();
                assert_eq!(got.dims(), want.dims());
                let err = max_abs_diff(&got, &want).unwrap();
                assert!(err < 1e-5, "{cin}->{cout} k{k} s{stride}: {err}");
            }
        }
    }

    /// A layer loaded from plain tensors (as from a checkpoint), and candle's
    /// convolution on the same weights.
    #[cfg(feature = "onednn")]
    fn loaded(
        cin: usize,
        cout: usize,
        k: usize,
        stride: usize,
        pad: usize,
    ) -> (Conv2d, candle_nn::Conv2d) {
        let dev = Device::Cpu;
        let weight = Tensor::randn(0f32, 0.2, (cout, cin, k, k), &dev).unwrap();
        let bias = Tensor::randn(0f32, 1., cout, &dev).unwrap();
        let tensors = std::collections::HashMap::from([
            ("weight".to_string(), weight.clone()),
            ("bias".to_string(), bias.clone()),
        ]);
        let vb = VarBuilder::from_tensors(tensors, DType::F32, &dev);
        let conv = Conv2d::new(vb, cin, cout, k, stride, pad).unwrap();
        let cfg = Conv2dConfig {
            padding: pad,
            stride,
            ..Default::default()
        };
        (conv, candle_nn::Conv2d::new(weight, Some(bias), cfg))
    }

    #[cfg(feature = "onednn")]
    #[test]
    fn onednn_path_matches_candle_conv2d_and_ignores_the_batch() {
        let dev = Device::Cpu;
        for (cin, cout, k, stride, pad, h, w) in [
            (3, 5, 3, 1, 1, 7, 6),
            (4, 2, 1, 1, 0, 3, 5),
            (2, 3, 5, 1, 2, 4, 9),
            (3, 4, 3, 2, 1, 7, 6),
            (2, 2, 3, 1, 1, 1, 1),
            (2, 3, 7, 1, 3, 4, 4),
            // Several bands of output rows (for the threads, or for memory), odd
            // sizes, stride-2 downsamples, a kernel wider than a band.
            (24, 200, 3, 1, 1, 5, 3),
            (8, 24, 3, 1, 1, 40, 33),
            (16, 32, 3, 2, 1, 37, 20),
            (16, 32, 3, 2, 1, 36, 20),
            (4, 6, 7, 1, 3, 33, 9),
            (64, 16, 3, 1, 1, 190, 90),
        ] {
            let (conv, candle) = loaded(cin, cout, k, stride, pad);
            assert!(conv.packed.is_some(), "plain f32 weights are packed");
            assert!(conv.onednn_kernel(h, w).unwrap().is_some());
            let xs = Tensor::randn(0f32, 1., (3, cin, h, w), &dev).unwrap();
            let want = candle.forward(&xs).unwrap();
            let got = conv.forward(&xs).unwrap();
            assert_eq!(got.dims(), want.dims());
            let err = max_abs_diff(&got, &want).unwrap();
            assert!(err < 1e-4, "{cin}->{cout} k{k} s{stride} {h}x{w}: {err}");
            // Each sample alone gives the same bits as in the batch.
            for i in 0..3 {
                let alone = conv.forward(&xs.narrow(0, i, 1).unwrap()).unwrap();
                let in_batch = got.narrow(0, i, 1).unwrap();
                assert_eq!(max_abs_diff(&alone, &in_batch).unwrap(), 0.0);
            }
        }
    }

    #[cfg(feature = "onednn")]
    #[test]
    fn onednn_path_serves_every_input_size_with_a_fast_kernel() {
        // oneDNN's kernels want these layers' weights in other layouts at some sizes
        // (a 1x1 convolution at 8x8 and 16x16, the 2560 -> 640 one at 4x4).
        let dev = Device::Cpu;
        for (cin, cout, k, pad) in [(320, 320, 1, 0), (2560, 640, 3, 1)] {
            let (conv, candle) = loaded(cin, cout, k, 1, pad);
            for side in [1, 2, 4, 8, 16, 32, 64] {
                if cin * side * side > 320 * 32 * 32 {
                    continue;
                }
                let kernel = conv.onednn_kernel(side, side).unwrap().unwrap();
                assert!(
                    !kernel.starts_with("ref"),
                    "{cin}->{cout} at {side}: {kernel}"
                );
                let xs = Tensor::randn(0f32, 1., (1, cin, side, side), &dev).unwrap();
                let err = max_abs_diff(&conv.forward(&xs).unwrap(), &candle.forward(&xs).unwrap())
                    .unwrap();
                assert!(err < 1e-3, "{cin}->{cout} at {side}: {err}");
            }
        }
    }

    #[cfg(feature = "onednn")]
    #[test]
    fn onednn_path_falls_back_and_reports_bad_input() {
        let dev = Device::Cpu;
        let (conv, candle) = loaded(3, 4, 3, 1, 1);
        // Half-precision input runs candle's convolution on the unpacked weights.
        let xs = Tensor::randn(0f32, 1., (2, 3, 5, 5), &dev).unwrap();
        let want = candle.forward(&xs).unwrap();
        let got = conv.forward(&xs.to_dtype(DType::F16).unwrap()).unwrap();
        assert_eq!(got.dtype(), DType::F16);
        let err = max_abs_diff(&got.to_dtype(DType::F32).unwrap(), &want).unwrap();
        assert!(err < 2e-2, "{err}");
        // The wrong channel count and an input smaller than the kernel are errors.
        let wrong = Tensor::zeros((1, 5, 5, 5), DType::F32, &dev).unwrap();
        assert!(conv.forward(&wrong).is_err());
        let (wide, _) = loaded(2, 2, 5, 1, 0);
        let small = Tensor::zeros((1, 2, 3, 3), DType::F32, &dev).unwrap();
        assert!(wide.forward(&small).is_err());
        // Training variables keep candle's differentiable path.
        let map = VarMap::new();
        let vb = VarBuilder::from_varmap(&map, DType::F32, &dev);
        assert!(Conv2d::new(vb, 3, 4, 3, 1, 1).unwrap().packed.is_none());
    }

    #[test]
    fn im2col_path_has_candle_conv2d_gradients() {
        let dev = Device::Cpu;
        for (cin, cout, k, pad, h, w) in [
            (3, 5, 3, 1, 7, 6),
            (2, 3, 5, 2, 4, 9),
            (2, 2, 3, 1, 1, 1),
            (2, 3, 7, 3, 4, 4),
        ] {
            let map = VarMap::new();
            let vb = VarBuilder::from_varmap(&map, DType::F32, &dev);
            let conv = Conv2d::new(vb, cin, cout, k, 1, pad).unwrap();
            for var in map.all_vars() {
                var.set(&Tensor::randn(0f32, 1., var.shape(), &dev).unwrap())
                    .unwrap();
            }
            let xs = candle_core::Var::randn(0f32, 1., (3, cin, h, w), &dev).unwrap();
            assert!(conv.uses_im2col(xs.as_tensor()));
            let probe = Tensor::randn(0f32, 1., (3, cout, h, w), &dev).unwrap();
            let grads = |ys: Tensor| {
                let loss = (ys * &probe).unwrap().sum_all().unwrap();
                let grads = loss.backward().unwrap();
                let mut all = vec![grads.get(xs.as_tensor()).unwrap().clone()];
                for var in map.all_vars() {
                    all.push(grads.get(var.as_tensor()).unwrap().clone());
                }
                all
            };
            let want = grads(conv.generic.forward(xs.as_tensor()).unwrap());
            for max_cols in [1, usize::MAX] {
                let got = grads(conv.forward_limited(xs.as_tensor(), max_cols).unwrap());
                for (g, e) in got.iter().zip(&want) {
                    assert_eq!(g.dims(), e.dims());
                    let err = max_abs_diff(g, e).unwrap();
                    assert!(err < 1e-4, "{cin}->{cout} k{k}: gradient error {err}");
                }
            }
        }
    }
}
