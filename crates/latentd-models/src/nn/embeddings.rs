//! Timestep embeddings: diffusers' `Timesteps` and `TimestepEmbedding`.

use candle_core::{DType, Device, Tensor, D};
use candle_nn::VarBuilder;

use super::Pointwise;
use crate::Result;

/// Sinusoidal embedding of (possibly fractional) timesteps, one per batch row.
///
/// Matches diffusers' `get_timestep_embedding`: frequencies
/// `exp(-ln(10000) * i / (half - downscale_freq_shift))` computed in `f32`,
/// `[sin, cos]` (or `[cos, sin]` with `flip_sin_to_cos`), zero-padded when
/// `num_channels` is odd.
#[derive(Debug, Clone)]
pub struct Timesteps {
    /// `[1, num_channels / 2]`, `f32`.
    freqs: Tensor,
    num_channels: usize,
    flip_sin_to_cos: bool,
    span: tracing::Span,
}

impl Timesteps {
    /// Builds the embedding for `num_channels` output channels.
    pub fn new(
        num_channels: usize,
        flip_sin_to_cos: bool,
        downscale_freq_shift: f64,
        device: &Device,
    ) -> Result<Self> {
        let half = num_channels / 2;
        // Same operation order and precision as torch: f32 products and quotient.
        let log_period = -(10000f64.ln()) as f32;
        let denominator = (half as f64 - downscale_freq_shift) as f32;
        let freqs: Vec<f32> = (0..half)
            .map(|i| ((log_period * i as f32) / denominator).exp())
            .collect();
        let freqs = Tensor::from_vec(freqs, (1, half), device)?;
        Ok(Self {
            freqs,
            num_channels,
            flip_sin_to_cos,
            span: tracing::trace_span!("timesteps"),
        })
    }

    /// `timesteps` `[B]` (any numeric dtype) -> `[B, num_channels]` in `f32`.
    pub fn forward(&self, timesteps: &Tensor) -> Result<Tensor> {
        let _enter = self.span.enter();
        let args = timesteps
            .to_dtype(DType::F32)?
            .unsqueeze(1)?
            .broadcast_mul(&self.freqs)?;
        let (sin, cos) = (args.sin()?, args.cos()?);
        let emb = if self.flip_sin_to_cos {
            Tensor::cat(&[cos, sin], D::Minus1)?
        } else {
            Tensor::cat(&[sin, cos], D::Minus1)?
        };
        if self.num_channels % 2 == 1 {
            Ok(emb.pad_with_zeros(D::Minus1, 0, 1)?)
        } else {
            Ok(emb)
        }
    }
}

/// Two linear layers with a SiLU between them (`linear_1`, `linear_2`).
#[derive(Debug, Clone)]
pub struct TimestepEmbedding {
    linear_1: Pointwise,
    linear_2: Pointwise,
    span: tracing::Span,
}

impl TimestepEmbedding {
    /// Maps `in_channels` to `time_embed_dim`.
    pub fn new(vb: VarBuilder, in_channels: usize, time_embed_dim: usize) -> Result<Self> {
        Ok(Self {
            linear_1: Pointwise::new(vb.pp("linear_1"), in_channels, time_embed_dim, true)?,
            linear_2: Pointwise::new(vb.pp("linear_2"), time_embed_dim, time_embed_dim, true)?,
            span: tracing::trace_span!("time-embedding"),
        })
    }

    /// `[B, in_channels]` -> `[B, time_embed_dim]`.
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let _enter = self.span.enter();
        let xs = self.linear_1.rows(xs)?.silu()?;
        self.linear_2.rows(&xs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedding_layout_and_values() {
        let emb = Timesteps::new(5, true, 1.0, &Device::Cpu).unwrap();
        let t = Tensor::new(&[0f32, 10.5], &Device::Cpu).unwrap();
        let out = emb.forward(&t).unwrap().to_vec2::<f32>().unwrap();
        // half = 2, freqs = [1, exp(-ln(1e4) / 1)] = [1, 1e-4]; [cos, sin, 0].
        let f1 = 1e-4f32;
        let expect = [
            [1.0, 1.0, 0.0, 0.0, 0.0],
            [
                10.5f32.cos(),
                (10.5 * f1).cos(),
                10.5f32.sin(),
                (10.5 * f1).sin(),
                0.0,
            ],
        ];
        for (row, want) in out.iter().zip(expect.iter()) {
            for (a, b) in row.iter().zip(want.iter()) {
                assert!((a - b).abs() < 1e-6, "{row:?} vs {want:?}");
            }
        }
    }
}
