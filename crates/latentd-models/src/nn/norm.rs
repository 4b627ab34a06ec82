//! `torch.nn.GroupNorm` with affine parameters, optionally fused with SiLU.

use candle_core::{DType, Tensor};
use candle_nn::{Module, VarBuilder};

use super::cpu_kernels::GroupNormSilu;
use crate::Result;

/// Group normalisation over `[B, C, ...]`; on CPU in `f32` a fused two-pass
/// kernel, elsewhere candle's `GroupNorm`.
#[derive(Debug, Clone)]
pub struct GroupNorm {
    generic: candle_nn::GroupNorm,
    /// Host copies of weight and bias for the fused CPU kernel.
    host: Option<(Vec<f32>, Vec<f32>)>,
    groups: usize,
    eps: f64,
}

impl GroupNorm {
    /// Loads `weight` and `bias` (`[channels]`) from `vb`.
    pub fn new(vb: VarBuilder, groups: usize, channels: usize, eps: f64) -> Result<Self> {
        let weight = vb.get(channels, "weight")?;
        let bias = vb.get(channels, "bias")?;
        // Trainable weights (variables) change under the optimiser, and the fused kernel
        // has no backward pass: only frozen weights get the fast host copy.
        let trainable = weight.is_variable() || bias.is_variable();
        let host = if !trainable && weight.device().is_cpu() && weight.dtype() == DType::F32 {
            Some((weight.to_vec1::<f32>()?, bias.to_vec1::<f32>()?))
        } else {
            None
        };
        Ok(Self {
            generic: candle_nn::GroupNorm::new(weight, bias, channels, groups, eps)?,
            host,
            groups,
            eps,
        })
    }

    /// Normalises `xs`.
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        self.run(xs, false)
    }

    /// Normalises `xs` and applies SiLU.
    pub fn forward_silu(&self, xs: &Tensor) -> Result<Tensor> {
        self.run(xs, true)
    }

    fn run(&self, xs: &Tensor, silu: bool) -> Result<Tensor> {
        match &self.host {
            Some((weight, bias))
                if !xs.track_op() && xs.device().is_cpu() && xs.dtype() == DType::F32 =>
            {
                let op = GroupNormSilu {
                    groups: self.groups,
                    eps: self.eps,
                    weight,
                    bias,
                    silu,
                };
                Ok(xs.contiguous()?.apply_op1_no_bwd(&op)?)
            }
            _ => {
                let ys = self.generic.forward(xs)?;
                Ok(if silu { ys.silu()? } else { ys })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use std::collections::HashMap;

    #[test]
    fn fused_kernel_matches_candle_group_norm() {
        let dev = Device::Cpu;
        let (c, groups) = (6, 3);
        let tensors = HashMap::from([
            (
                "weight".to_string(),
                Tensor::randn(1f32, 0.5, c, &dev).unwrap(),
            ),
            (
                "bias".to_string(),
                Tensor::randn(0f32, 0.5, c, &dev).unwrap(),
            ),
        ]);
        let vb = VarBuilder::from_tensors(tensors, DType::F32, &dev);
        let norm = GroupNorm::new(vb, groups, c, 1e-6).unwrap();
        assert!(norm.host.is_some());
        let xs = (Tensor::randn(0f32, 3., (2, c, 5, 7), &dev).unwrap() + 1.5).unwrap();
        let want = norm.generic.forward(&xs).unwrap();
        let max_err = |a: Tensor, b: &Tensor| crate::pipeline::max_abs_diff(&a, b).unwrap();
        assert!(max_err(norm.forward(&xs).unwrap(), &want) < 1e-5);
        let want_silu = want.silu().unwrap();
        assert!(max_err(norm.forward_silu(&xs).unwrap(), &want_silu) < 1e-5);
    }
}
