//! Fused candle kernels with a differentiable fallback.
//!
//! candle-nn's fused `softmax_last_dim` and layer norm have no backward pass.
//! The functions here use the fused kernel for inference and a composition of
//! differentiable primitives when an input tracks gradients (training), so the
//! same model code serves both without changing inference numerics.

use candle_core::{DType, Module, Tensor, D};
use candle_nn::VarBuilder;

use crate::Result;

/// `lhs x rhs` (candle's `matmul`). candle has no CPU GEMM for bf16: there the
/// operands are multiplied in f32 and the product rounded back to bf16, as a bf16
/// GEMM that accumulates in f32 would give.
pub(crate) fn matmul(lhs: &Tensor, rhs: &Tensor) -> candle_core::Result<Tensor> {
    if is_cpu_bf16(lhs) {
        return lhs
            .to_dtype(DType::F32)?
            .matmul(&rhs.to_dtype(DType::F32)?)?
            .to_dtype(DType::BF16);
    }
    lhs.matmul(rhs)
}

/// Whether `xs` is a bf16 tensor on the CPU, where candle lacks matrix products.
pub(crate) fn is_cpu_bf16(xs: &Tensor) -> bool {
    xs.device().is_cpu() && xs.dtype() == DType::BF16
}

/// Softmax over the last dimension: fused unless `xs` tracks gradients.
pub fn softmax_last_dim(xs: &Tensor) -> candle_core::Result<Tensor> {
    if xs.track_op() {
        candle_nn::ops::softmax(xs, D::Minus1)
    } else if xs.device().is_cpu() && xs.dtype() == DType::F32 {
        xs.contiguous()?
            .apply_op1_no_bwd(&super::softmax::SoftmaxLastDim)
    } else {
        candle_nn::ops::softmax_last_dim(xs)
    }
}

/// A `torch.nn.LayerNorm` with affine parameters over the last dimension:
/// candle-nn's fused kernel for inference, a differentiable composition when
/// the input or the parameters track gradients.
#[derive(Debug, Clone)]
pub struct LayerNorm {
    fused: candle_nn::LayerNorm,
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    /// Wraps `weight` and `bias` (`[size]`).
    pub fn new(weight: Tensor, bias: Tensor, eps: f64) -> Self {
        Self {
            fused: candle_nn::LayerNorm::new(weight.clone(), bias.clone(), eps),
            weight,
            bias,
            eps,
        }
    }

    fn composed(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let dtype = xs.dtype();
        let xs = match dtype {
            DType::F16 | DType::BF16 => xs.to_dtype(DType::F32)?,
            _ => xs.clone(),
        };
        let centred = xs.broadcast_sub(&xs.mean_keepdim(D::Minus1)?)?;
        let variance = centred.sqr()?.mean_keepdim(D::Minus1)?;
        let normed = centred.broadcast_div(&(variance + self.eps)?.sqrt()?)?;
        normed
            .to_dtype(dtype)?
            .broadcast_mul(&self.weight)?
            .broadcast_add(&self.bias)
    }
}

impl Module for LayerNorm {
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        if xs.track_op() || self.weight.track_op() || self.bias.track_op() {
            self.composed(xs)
        } else {
            self.fused.forward(xs)
        }
    }
}

/// Loads a [`LayerNorm`] of `size` features (`weight` initialised to one and
/// `bias` to zero when `vb` creates variables).
pub fn layer_norm(size: usize, eps: f64, vb: VarBuilder) -> Result<LayerNorm> {
    let weight = vb.get_with_hints(size, "weight", candle_nn::Init::Const(1.))?;
    let bias = vb.get_with_hints(size, "bias", candle_nn::Init::Const(0.))?;
    Ok(LayerNorm::new(weight, bias, eps))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn input() -> Tensor {
        let values: Vec<f32> = (0..24).map(|i| ((i * 7) % 11) as f32 * 0.3 - 1.0).collect();
        Tensor::from_vec(values, (2, 3, 4), &Device::Cpu).unwrap()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        crate::pipeline::max_abs_diff(a, b).unwrap()
    }

    #[test]
    fn softmax_paths_agree_and_differentiate() {
        let xs = input();
        let var = Var::from_tensor(&xs).unwrap();
        let fused = softmax_last_dim(&xs).unwrap();
        let composed = softmax_last_dim(var.as_tensor()).unwrap();
        assert!(max_diff(&fused, &composed) < 1e-6);
        // d/dx sum(softmax(x) * c): nonzero where c varies along the row.
        let weights = Tensor::new(&[1f32, 2., 3., 4.], &Device::Cpu).unwrap();
        let loss = composed.broadcast_mul(&weights).unwrap().sum_all().unwrap();
        let grads = loss.backward().unwrap();
        let grad = grads.get(var.as_tensor()).unwrap();
        // Softmax gradients sum to zero along each row.
        let row_sums = grad.sum(D::Minus1).unwrap().abs().unwrap().max_all();
        assert!(row_sums.unwrap().to_scalar::<f32>().unwrap() < 1e-6);
        assert!(
            grad.abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
                > 1e-3
        );
    }

    #[test]
    fn layer_norm_paths_agree_and_differentiate() {
        let dev = Device::Cpu;
        let weight = Tensor::new(&[1.5f32, 0.5, -1.0, 2.0], &dev).unwrap();
        let bias = Tensor::new(&[0.1f32, -0.2, 0.3, 0.0], &dev).unwrap();
        let norm = LayerNorm::new(weight.clone(), bias.clone(), 1e-5);
        let xs = input();
        let fused = norm.forward(&xs).unwrap();
        let var = Var::from_tensor(&weight).unwrap();
        let trained = LayerNorm::new(var.as_tensor().clone(), bias, 1e-5);
        let composed = trained.forward(&xs).unwrap();
        assert!(max_diff(&fused, &composed) < 1e-5);
        let grads = composed.sum_all().unwrap().backward().unwrap();
        assert!(grads.get(var.as_tensor()).is_some());
    }
}
