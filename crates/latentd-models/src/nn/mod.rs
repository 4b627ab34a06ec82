//! Layers shared by the UNet and the autoencoders, named and shaped like
//! their diffusers counterparts so that diffusers weights load unchanged.

pub(crate) mod activations;
mod attend;
pub mod attention;
mod batch_invariant;
pub(crate) mod blas;
pub mod conv;
mod cpu_kernels;
pub mod embeddings;
pub mod norm;
#[cfg(feature = "onednn")]
mod onednn;
pub mod ops;
pub mod resnet;
pub mod sampling;
#[cfg(any(feature = "openblas", feature = "onednn"))]
mod scratch;
mod softmax;

use candle_core::Tensor;
use candle_nn::VarBuilder;

pub use conv::Conv2d;
pub use norm::GroupNorm;

use crate::Result;

/// A `torch.nn.Conv2d` with a bias and a square kernel.
pub(crate) fn conv2d(
    vb: VarBuilder,
    in_channels: usize,
    out_channels: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
) -> Result<Conv2d> {
    Conv2d::new(vb, in_channels, out_channels, kernel, stride, padding)
}

/// A `torch.nn.GroupNorm` with affine parameters.
pub(crate) fn group_norm(
    vb: VarBuilder,
    groups: usize,
    channels: usize,
    eps: f64,
) -> Result<GroupNorm> {
    GroupNorm::new(vb, groups, channels, eps)
}

/// A projection over channels stored either as a `Linear` (`[out, in]`) or as a
/// 1x1 `Conv2d` (`[out, in, 1, 1]`); both compute the same map.
#[derive(Debug, Clone)]
pub(crate) struct Pointwise {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Pointwise {
    /// Loads a `Linear` layer (`weight` `[out, in]`, or `[out, in, 1, 1]` as a fallback).
    pub(crate) fn new(vb: VarBuilder, in_dim: usize, out_dim: usize, bias: bool) -> Result<Self> {
        Self::load(vb, in_dim, out_dim, bias, false)
    }

    /// Loads a 1x1 `Conv2d` (`weight` `[out, in, 1, 1]`, or `[out, in]` as a fallback).
    pub(crate) fn new_conv(
        vb: VarBuilder,
        in_dim: usize,
        out_dim: usize,
        bias: bool,
    ) -> Result<Self> {
        Self::load(vb, in_dim, out_dim, bias, true)
    }

    fn load(vb: VarBuilder, in_dim: usize, out_dim: usize, bias: bool, conv: bool) -> Result<Self> {
        let linear: &[usize] = &[out_dim, in_dim];
        let kernel: &[usize] = &[out_dim, in_dim, 1, 1];
        let (preferred, other) = if conv {
            (kernel, linear)
        } else {
            (linear, kernel)
        };
        let weight = match vb.get(preferred, "weight") {
            Ok(w) => w,
            Err(first) => vb.get(other, "weight").map_err(|_| first)?,
        };
        let bias = if bias {
            Some(vb.get(out_dim, "bias")?)
        } else {
            None
        };
        Ok(Self {
            weight: weight.reshape((out_dim, in_dim))?,
            bias,
        })
    }

    /// Builds a projection from tensors already in memory.
    pub(crate) fn from_parts(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self { weight, bias }
    }

    /// The weight, `[out, in]`.
    pub(crate) fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// The bias, `[out]`.
    pub(crate) fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    /// `[B, in]` -> `[B, out]`: a plain linear layer, each row's result independent of `B`.
    pub(crate) fn rows(&self, xs: &Tensor) -> Result<Tensor> {
        let w_t = self.weight.t()?;
        let ys = if blas::applies(xs, &w_t) {
            blas::matmul(&xs.unsqueeze(1)?, &w_t)?.squeeze(1)?
        } else {
            batch_invariant::matmul_batch_in_rows(xs, &w_t)?
        };
        match &self.bias {
            Some(bias) => Ok(ys.broadcast_add(bias)?),
            None => Ok(ys),
        }
    }

    /// `[B, N, in]` (contiguous) -> `[B, N, out]`: a plain linear layer, each row's
    /// result independent of `B`.
    pub(crate) fn tokens(&self, xs: &Tensor) -> Result<Tensor> {
        let (b, n, _) = xs.dims3()?;
        let w_t = self.weight.t()?;
        let xs = xs.contiguous()?;
        if blas::applies(&xs, &w_t) {
            return self.product_with_bias(&xs, &w_t);
        }
        let flat = xs.reshape((b * n, ()))?;
        let ys = batch_invariant::matmul_batch_in_rows(&flat, &w_t)?.reshape((b, n, ()))?;
        self.add_bias(ys, 2)
    }

    /// `[B, N, in]` -> `[B, N, inner]`: the projection to `[h | gate]` (`out` =
    /// `2 * inner`), then `h * gelu(gate)` (GEGLU), fused per GEMM block where the
    /// OpenBLAS products apply.
    pub(crate) fn tokens_geglu(&self, xs: &Tensor, inner: usize) -> Result<Tensor> {
        let xs = xs.contiguous()?;
        let w_t = self.weight.t()?;
        match &self.bias {
            Some(bias) if blas::applies(&xs, &w_t) => {
                blas::matmul_bias_geglu(&xs, &w_t, bias, inner)
            }
            _ => activations::geglu(&self.tokens(&xs)?, inner),
        }
    }

    /// `[B, in, N]` (channels first) -> `[B, N, out]` (tokens), reading the input
    /// through a transposed view instead of copying it.
    pub(crate) fn channels_to_tokens(&self, xs: &Tensor) -> Result<Tensor> {
        let w_t = self.weight.t()?;
        let tokens = xs.transpose(1, 2)?;
        if blas::applies(&tokens, &w_t) {
            return self.product_with_bias(&tokens, &w_t);
        }
        // One rank-2 product per row: a batched product against a broadcast
        // right-hand side would fold the batch into the rows, which is only
        // valid for row-major left-hand sides.
        let rows = (0..xs.dim(0)?)
            .map(|i| ops::matmul(&xs.get(i)?.t()?, &w_t))
            .collect::<candle_core::Result<Vec<_>>>()?;
        self.add_bias(Tensor::stack(&rows, 0)?, 2)
    }

    /// `[B, N, in]` (tokens) -> `[B, out, N]` (channels first), without a transpose copy.
    pub(crate) fn tokens_to_channels(&self, xs: &Tensor) -> Result<Tensor> {
        let b = xs.dim(0)?;
        let ys = blas::matmul(&self.weight.broadcast_left(b)?, &xs.transpose(1, 2)?)?;
        self.add_bias(ys, 1)
    }

    /// `xs x w_t` plus the bias (if any) along the last dimension, fused into the product.
    fn product_with_bias(&self, xs: &Tensor, w_t: &Tensor) -> Result<Tensor> {
        match &self.bias {
            Some(bias) => blas::matmul_bias(xs, w_t, bias),
            None => blas::matmul(xs, w_t),
        }
    }

    /// Adds the bias along `dim` of a rank-3 tensor.
    fn add_bias(&self, ys: Tensor, dim: usize) -> Result<Tensor> {
        match &self.bias {
            Some(bias) if dim == 1 => Ok(ys.broadcast_add(&bias.unsqueeze(1)?)?),
            Some(bias) => Ok(ys.broadcast_add(bias)?),
            None => Ok(ys),
        }
    }
}

/// A deterministic tensor of values in [-0.5, 0.5) for unit tests.
#[cfg(test)]
pub(crate) fn test_tensor(shape: &[usize], seed: u64) -> Tensor {
    let n: usize = shape.iter().product();
    let data: Vec<f32> = (0..n)
        .map(|i| {
            let x = (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15 ^ seed);
            ((x >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        })
        .collect();
    Tensor::from_vec(data, shape, &candle_core::Device::Cpu).unwrap()
}
