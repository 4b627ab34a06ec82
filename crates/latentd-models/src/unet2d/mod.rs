//! diffusers' `UNet2DModel`: the unconditional denoiser (no cross-attention) of
//! the CompVis LDMs, with one timestep per batch row.

pub mod config;

use candle_core::{DType, Device, Tensor, D};
use candle_nn::VarBuilder;

pub use config::UNet2DConfig;

use crate::nn::embeddings::{TimestepEmbedding, Timesteps};
use crate::nn::{conv2d, group_norm, Conv2d, GroupNorm};
use crate::unet::blocks::{Shared, UNetBody};
use crate::{Error, Result};
use config::TimeProjKind;

/// `time_proj`: timesteps `[B]` -> features `[B, width]`.
#[derive(Debug, Clone)]
enum TimeProjection {
    /// diffusers' `Timesteps` (sinusoidal).
    Positional(Timesteps),
    /// `nn.Embedding(num_train_timesteps, width)`: `weight` `[rows, width]`.
    Learned { table: Tensor, rows: usize },
    /// `GaussianFourierProjection` with `log=True`: `weight` `[1, width / 2]`, `f32`.
    Fourier { weight: Tensor },
}

impl TimeProjection {
    fn new(vb: VarBuilder, kind: TimeProjKind, cfg: &UNet2DConfig, c0: usize) -> Result<Self> {
        Ok(match kind {
            TimeProjKind::Positional => Self::Positional(Timesteps::new(
                c0,
                cfg.flip_sin_to_cos,
                cfg.freq_shift,
                vb.device(),
            )?),
            TimeProjKind::Learned { rows } => Self::Learned {
                table: vb.get((rows, c0), "weight")?,
                rows,
            },
            TimeProjKind::Fourier => {
                // Checkpoints converted from score_sde name the weight `W`.
                let weight = match vb.get(c0, "weight") {
                    Ok(w) => w,
                    Err(first) => vb.get(c0, "W").map_err(|_| first)?,
                };
                Self::Fourier {
                    weight: weight.to_dtype(DType::F32)?.unsqueeze(0)?,
                }
            }
        })
    }

    /// Width of the features.
    fn width(kind: TimeProjKind, c0: usize) -> usize {
        match kind {
            TimeProjKind::Fourier => 2 * c0,
            TimeProjKind::Positional | TimeProjKind::Learned { .. } => c0,
        }
    }

    /// `timesteps` `[B]` -> `[B, width]` in `dtype`. Learned tables need integer
    /// timesteps in `0..rows`, Fourier features positive ones.
    fn forward(&self, timesteps: &Tensor, dtype: DType) -> Result<Tensor> {
        match self {
            Self::Positional(proj) => Ok(proj.forward(timesteps)?.to_dtype(dtype)?),
            Self::Learned { table, rows } => {
                let values = host_values(timesteps)?;
                let indices = values
                    .iter()
                    .map(|&t| {
                        if t.fract() == 0.0 && t >= 0.0 && t < *rows as f64 {
                            Ok(t as u32)
                        } else {
                            Err(Error::InvalidArgument(format!(
                                "timestep {t}: this UNet's learned time embedding takes \
                                 integers in 0..{rows}"
                            )))
                        }
                    })
                    .collect::<Result<Vec<u32>>>()?;
                let indices = Tensor::from_vec(indices, values.len(), table.device())?;
                Ok(table.index_select(&indices, 0)?.to_dtype(dtype)?)
            }
            Self::Fourier { weight } => {
                check_positive(timesteps)?;
                // x[:, None] * W[None, :] * 2 * pi, in torch's order and precision.
                let args = timesteps
                    .to_dtype(DType::F32)?
                    .log()?
                    .unsqueeze(1)?
                    .broadcast_mul(weight)?;
                let args = ((args * 2.0)? * std::f64::consts::PI)?;
                let emb = Tensor::cat(&[args.sin()?, args.cos()?], D::Minus1)?;
                Ok(emb.to_dtype(dtype)?)
            }
        }
    }
}

/// The values of `[B]` timesteps of any dtype, on the host.
fn host_values(timesteps: &Tensor) -> Result<Vec<f64>> {
    Ok(timesteps
        .to_device(&Device::Cpu)?
        .to_dtype(DType::F64)?
        .to_vec1::<f64>()?)
}

/// Fourier features embed `ln(t)` and divide the output by `t`.
fn check_positive(timesteps: &Tensor) -> Result<()> {
    match host_values(timesteps)?
        .into_iter()
        .find(|t| t.is_nan() || *t <= 0.0)
    {
        Some(t) => Err(Error::InvalidArgument(format!(
            "timestep {t}: this UNet's Fourier time embedding takes positive timesteps"
        ))),
        None => Ok(()),
    }
}

/// An unconditional UNet: `(noisy sample, timesteps) -> prediction`.
#[derive(Debug, Clone)]
pub struct UNet2DModel {
    conv_in: Conv2d,
    time_proj: TimeProjection,
    time_embedding: TimestepEmbedding,
    body: UNetBody,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
    dtype: DType,
    config: UNet2DConfig,
    span: tracing::Span,
}

impl UNet2DModel {
    /// Builds the model from `cfg`, loading weights named as diffusers names them
    /// (`conv_in`, `time_proj`, `time_embedding`, `down_blocks.*`, ...) from `vb`.
    pub fn new(vb: VarBuilder, cfg: &UNet2DConfig) -> Result<Self> {
        let plan = cfg.plan()?;
        let channels = &cfg.block_out_channels;
        let c0 = channels[0];
        let unet = &plan.unet;
        let shared = Shared {
            temb_channels: unet.time_embed_dim,
            groups: unet.groups,
            eps: cfg.norm_eps,
            use_linear_projection: false,
            downsample_padding: cfg.downsample_padding,
        };
        Ok(Self {
            conv_in: conv2d(vb.pp("conv_in"), cfg.in_channels, c0, 3, 1, 1)?,
            time_proj: TimeProjection::new(vb.pp("time_proj"), plan.time, cfg, c0)?,
            time_embedding: TimestepEmbedding::new(
                vb.pp("time_embedding"),
                TimeProjection::width(plan.time, c0),
                unet.time_embed_dim,
            )?,
            body: UNetBody::new(&vb, &shared, unet, channels, cfg.mid_block_scale_factor)?,
            conv_norm_out: group_norm(vb.pp("conv_norm_out"), unet.groups, c0, cfg.norm_eps)?,
            conv_out: conv2d(vb.pp("conv_out"), c0, cfg.out_channels, 3, 1, 1)?,
            dtype: vb.dtype(),
            config: cfg.clone(),
            span: tracing::trace_span!("unet2d"),
        })
    }

    /// The configuration the model was built from.
    pub fn config(&self) -> &UNet2DConfig {
        &self.config
    }

    /// Predicts noise (or whatever the model was trained on) for each row.
    ///
    /// `sample` `[B, in_channels, h, w]` with `h` and `w` multiples of the
    /// [downsampling factor](UNet2DConfig::downsampling_factor) (diffusers'
    /// `UNet2DModel` upsamples by plain doubling), `timesteps` `[B]` (one per row,
    /// any numeric dtype; fractional ones only with the positional and Fourier
    /// embeddings) -> `[B, out_channels, h, w]`. Rows never influence each other.
    pub fn forward(&self, sample: &Tensor, timesteps: &Tensor) -> Result<Tensor> {
        let _enter = self.span.enter();
        self.check_inputs(sample, timesteps)?;
        let sample = if self.config.center_input_sample {
            sample.affine(2.0, -1.0)?
        } else {
            sample.clone()
        };
        let temb = self.time_proj.forward(timesteps, self.dtype)?;
        let temb = self.time_embedding.forward(&temb)?;

        let xs = self.conv_in.forward(&sample)?;
        let xs = self.body.forward(&xs, &temb, None)?;
        let xs = self.conv_norm_out.forward_silu(&xs)?;
        let xs = self.conv_out.forward(&xs)?;
        match self.time_proj {
            TimeProjection::Fourier { .. } => {
                let t = timesteps.to_dtype(self.dtype)?.reshape(((), 1, 1, 1))?;
                Ok(xs.broadcast_div(&t)?)
            }
            _ => Ok(xs),
        }
    }

    /// Rejects inputs whose shapes or dtypes do not fit the model.
    fn check_inputs(&self, sample: &Tensor, timesteps: &Tensor) -> Result<()> {
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
        let f = self.config.downsampling_factor();
        if h % f != 0 || w % f != 0 {
            return invalid(format!(
                "sample is {h}x{w}; this UNet needs sides that are multiples of {f}"
            ));
        }
        if timesteps.dims() != [b] {
            return invalid(format!(
                "timesteps must be [{b}] (one per row), got {:?}",
                timesteps.dims()
            ));
        }
        if sample.dtype() != self.dtype {
            return invalid(format!(
                "sample is {:?}, the UNet computes in {:?}",
                sample.dtype(),
                self.dtype
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny(extra: &str) -> UNet2DModel {
        let json = format!(
            r#"{{"block_out_channels": [8, 16], "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
                "up_block_types": ["AttnUpBlock2D", "UpBlock2D"], "layers_per_block": 1,
                "norm_num_groups": 4, "attention_head_dim": 4 {extra}}}"#
        );
        let cfg: UNet2DConfig = serde_json::from_str(&json).unwrap();
        UNet2DModel::new(VarBuilder::zeros(DType::F32, &Device::Cpu), &cfg).unwrap()
    }

    fn sample(b: usize, h: usize, w: usize) -> Tensor {
        Tensor::ones((b, 3, h, w), DType::F32, &Device::Cpu).unwrap()
    }

    fn timesteps(ts: &[f32]) -> Tensor {
        Tensor::new(ts, &Device::Cpu).unwrap()
    }

    #[test]
    fn shapes_and_input_checks() {
        let unet = tiny("");
        let out = unet
            .forward(&sample(2, 6, 8), &timesteps(&[999., 0.5]))
            .unwrap();
        assert_eq!(out.dims(), &[2, 3, 6, 8]);
        // 7 is not a multiple of the downsampling factor 2.
        assert!(unet.forward(&sample(1, 7, 8), &timesteps(&[1.])).is_err());
        assert!(unet.forward(&sample(2, 8, 8), &timesteps(&[1.])).is_err());
        let wrong_channels = Tensor::ones((1, 4, 8, 8), DType::F32, &Device::Cpu).unwrap();
        assert!(unet.forward(&wrong_channels, &timesteps(&[1.])).is_err());
    }

    #[test]
    fn learned_time_embedding_takes_integers_in_range() {
        let unet = tiny(r#", "time_embedding_type": "learned", "num_train_timesteps": 1000"#);
        let ok = unet
            .forward(&sample(2, 4, 4), &timesteps(&[0., 999.]))
            .unwrap();
        assert_eq!(ok.dims(), &[2, 3, 4, 4]);
        let int_ok = Tensor::new(&[3i64, 7], &Device::Cpu).unwrap();
        unet.forward(&sample(2, 4, 4), &int_ok).unwrap();
        for bad in [[0.5f32, 1.], [1000., 1.], [-1., 1.], [f32::NAN, 1.]] {
            assert!(
                matches!(
                    unet.forward(&sample(2, 4, 4), &timesteps(&bad)),
                    Err(Error::InvalidArgument(_))
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn fourier_time_embedding_takes_positive_timesteps() {
        let unet = tiny(r#", "time_embedding_type": "fourier""#);
        unet.forward(&sample(2, 4, 4), &timesteps(&[0.25, 80.]))
            .unwrap();
        assert!(unet.forward(&sample(1, 4, 4), &timesteps(&[0.])).is_err());
    }
}
