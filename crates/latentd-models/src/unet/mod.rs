//! diffusers' `UNet2DConditionModel` (the denoiser of Stable Diffusion 1.x / 2.x)
//! with one timestep per batch row.

pub(crate) mod blocks;
pub mod config;

use candle_core::{DType, Tensor};
use candle_nn::VarBuilder;

pub use config::UNet2DConditionConfig;

use crate::nn::embeddings::{TimestepEmbedding, Timesteps};
use crate::nn::{conv2d, group_norm, Conv2d, GroupNorm};
use crate::{Error, Result};
use blocks::{Shared, UNetBody};

/// A conditional UNet: `(noisy latents, timesteps, text context) -> prediction`.
#[derive(Debug, Clone)]
pub struct UNet2DConditionModel {
    conv_in: Conv2d,
    time_proj: Timesteps,
    time_embedding: TimestepEmbedding,
    body: UNetBody,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
    context_dim: usize,
    dtype: DType,
    config: UNet2DConditionConfig,
    span: tracing::Span,
}

impl UNet2DConditionModel {
    /// Builds the model from `cfg`, loading weights named as diffusers names them
    /// (`conv_in`, `time_embedding`, `down_blocks.*`, ...) from `vb`.
    pub fn new(vb: VarBuilder, cfg: &UNet2DConditionConfig) -> Result<Self> {
        let plan = cfg.plan()?;
        let channels = &cfg.block_out_channels;
        let shared = Shared {
            temb_channels: plan.time_embed_dim,
            groups: plan.groups,
            eps: cfg.norm_eps,
            use_linear_projection: cfg.use_linear_projection,
            downsample_padding: cfg.downsample_padding,
        };

        let body = UNetBody::new(&vb, &shared, &plan, channels, cfg.mid_block_scale_factor)?;

        let c0 = channels[0];
        Ok(Self {
            conv_in: conv2d(
                vb.pp("conv_in"),
                cfg.in_channels,
                c0,
                cfg.conv_in_kernel,
                1,
                cfg.conv_in_kernel / 2,
            )?,
            time_proj: Timesteps::new(c0, cfg.flip_sin_to_cos, cfg.freq_shift, vb.device())?,
            time_embedding: TimestepEmbedding::new(
                vb.pp("time_embedding"),
                c0,
                plan.time_embed_dim,
            )?,
            body,
            conv_norm_out: group_norm(vb.pp("conv_norm_out"), plan.groups, c0, cfg.norm_eps)?,
            conv_out: conv2d(
                vb.pp("conv_out"),
                c0,
                cfg.out_channels,
                cfg.conv_out_kernel,
                1,
                cfg.conv_out_kernel / 2,
            )?,
            context_dim: cfg.context_dim()?,
            dtype: vb.dtype(),
            config: cfg.clone(),
            span: tracing::trace_span!("unet"),
        })
    }

    /// The configuration the model was built from.
    pub fn config(&self) -> &UNet2DConditionConfig {
        &self.config
    }

    /// Predicts noise (or `v`) for each row.
    ///
    /// `sample` `[B, in_channels, h, w]` (any `h, w >= 1`), `timesteps` `[B]` (one per
    /// row, may be fractional), `context` `[B, T, cross_attention_dim]`
    /// -> `[B, out_channels, h, w]`. Rows never influence each other.
    pub fn forward(&self, sample: &Tensor, timesteps: &Tensor, context: &Tensor) -> Result<Tensor> {
        let _enter = self.span.enter();
        self.check_inputs(sample, timesteps, context)?;
        let sample = if self.config.center_input_sample {
            sample.affine(2.0, -1.0)?
        } else {
            sample.clone()
        };
        let temb = self.time_proj.forward(timesteps)?.to_dtype(self.dtype)?;
        let temb = self.time_embedding.forward(&temb)?;

        let xs = self.conv_in.forward(&sample)?;
        let xs = self.body.forward(&xs, &temb, Some(context))?;
        let xs = self.conv_norm_out.forward_silu(&xs)?;
        self.conv_out.forward(&xs)
    }

    /// Rejects inputs whose shapes or dtypes do not fit the model.
    fn check_inputs(&self, sample: &Tensor, timesteps: &Tensor, context: &Tensor) -> Result<()> {
        let invalid = |msg: String| Err(Error::InvalidArgument(msg));
        let &[b, c, h, w] = sample.dims() else {
            return invalid(format!(
                "sample must be [B, C, h, w], got {:?}",
                sample.dims()
            ));
        };
        if c != self.config.in_channels {
            return invalid(format!(
                "sample has {c} channels, the UNet expects {}",
                self.config.in_channels
            ));
        }
        if b == 0 || h == 0 || w == 0 {
            return invalid(format!("sample must not be empty, got {:?}", sample.dims()));
        }
        if timesteps.dims() != [b] {
            return invalid(format!(
                "timesteps must be [{b}] (one per row), got {:?}",
                timesteps.dims()
            ));
        }
        let &[cb, t, d] = context.dims() else {
            return invalid(format!(
                "context must be [B, T, D], got {:?}",
                context.dims()
            ));
        };
        if cb != b || t == 0 || d != self.context_dim {
            return invalid(format!(
                "context must be [{b}, T >= 1, {}], got {:?}",
                self.context_dim,
                context.dims()
            ));
        }
        for (name, tensor) in [("sample", sample), ("context", context)] {
            if tensor.dtype() != self.dtype {
                return invalid(format!(
                    "{name} is {:?}, the UNet computes in {:?}",
                    tensor.dtype(),
                    self.dtype
                ));
            }
        }
        Ok(())
    }
}
